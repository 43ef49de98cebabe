//! Transport: redirects and body size under our control.
//!
//! Our rustify client around our own `reqwest` client (see the module doc
//! of [`crate::vault`], "Why our own transport"): redirects are followed
//! only to a configured address and never from https to http, bodies are
//! read into a capped buffer that is wiped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustify::errors::ClientError as RestError;
use zeroize::Zeroizing;

/// Redirect hops followed for one request (standby → active is one).
pub const MAX_REDIRECTS: usize = 2;

/// The HTTP side of one request: our rustify client (see the module doc).
pub(super) struct Transport {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    /// Every configured address: the only places a redirect may lead.
    pub(super) allowed: Arc<[reqwest::Url]>,
    pub(super) limit: usize,
}

/// A redirect vaultlet will not follow.
#[derive(Debug, thiserror::Error)]
#[error("redirected from {from} to {to}, not followed: {why}")]
pub struct RedirectRefused {
    from: String,
    to: String,
    why: &'static str,
}

/// A body over the cap.
#[derive(Debug, thiserror::Error)]
#[error("response larger than {0} bytes")]
pub(super) struct BodyTooLarge(pub(super) usize);

/// `scheme://host:port` of a URL, for logs (no path, no query).
fn origin(u: &reqwest::Url) -> String {
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
}

/// Where a redirect from `from` with `Location: location` may go: only to a
/// configured address, never from https to http.
pub fn redirect_target(
    from: &reqwest::Url,
    location: &str,
    allowed: &[reqwest::Url],
) -> Result<reqwest::Url, RedirectRefused> {
    let refuse = |to: String, why| RedirectRefused { from: origin(from), to, why };
    let to = from.join(location).map_err(|_| refuse("an unreadable location".into(), "not a URL"))?;
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(refuse(origin(&to), "it would leave https"));
    }
    let same = |a: &reqwest::Url| {
        a.scheme() == to.scheme()
            && a.host_str() == to.host_str()
            && a.port_or_known_default() == to.port_or_known_default()
    };
    if !allowed.iter().any(same) {
        return Err(refuse(
            origin(&to),
            "not an address in vault.address (add it there, or let standbys forward requests)",
        ));
    }
    Ok(to)
}

/// Appends to a buffer that is wiped when it grows (a plain `Vec` would
/// leave the old allocation's bytes behind) and never passes `limit`.
pub(super) fn push_capped(buf: &mut Zeroizing<Vec<u8>>, chunk: &[u8], limit: usize) -> Result<(), BodyTooLarge> {
    let need = buf.len().checked_add(chunk.len()).filter(|n| *n <= limit).ok_or(BodyTooLarge(limit))?;
    if need > buf.capacity() {
        let cap = need.max(buf.capacity().saturating_mul(2)).min(limit).max(need);
        let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

/// Reads a body, refusing more than `limit` bytes (announced or streamed).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Zeroizing<Vec<u8>>, RestError> {
    let too_large = || RestError::ResponseError { source: anyhow::Error::new(BodyTooLarge(limit)) };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(resp.content_length().map_or(4096, |n| n as usize)));
    while let Some(chunk) = resp.chunk().await.map_err(|e| RestError::ResponseError { source: e.into() })? {
        push_capped(&mut buf, &chunk, limit).map_err(|_| too_large())?;
    }
    Ok(buf)
}

impl Transport {
    async fn send_inner(&self, req: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, RestError> {
        let (parts, body) = req.into_parts();
        let body = Zeroizing::new(body);
        let method = parts.method.clone();
        let mut url: reqwest::Url =
            parts.uri.to_string().parse().map_err(|e| RestError::GenericError { source: anyhow::Error::new(e) })?;
        let mut hops = 0;
        loop {
            let mut req = reqwest::Request::new(method.clone(), url.clone());
            *req.headers_mut() = parts.headers.clone();
            *req.body_mut() = Some(body.to_vec().into());
            let resp = self.http.execute(req).await.map_err(|e| RestError::RequestError {
                source: e.into(),
                url: origin(&url),
                method: method.to_string(),
            })?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
                let next = match location {
                    // Only 307/308 keep the method and body, as Vault's standbys send.
                    Some(l) if matches!(status.as_u16(), 307 | 308) => redirect_target(&url, l, &self.allowed),
                    Some(l) => Err(RedirectRefused {
                        from: origin(&url),
                        to: url.join(l).map(|u| origin(&u)).unwrap_or_else(|_| "an unreadable location".into()),
                        why: "only 307/308 redirects are followed",
                    }),
                    None => Err(RedirectRefused { from: origin(&url), to: "nowhere".into(), why: "no Location" }),
                };
                let next = next.and_then(|n| {
                    if hops < MAX_REDIRECTS {
                        Ok(n)
                    } else {
                        Err(RedirectRefused { from: origin(&url), to: origin(&n), why: "too many redirects" })
                    }
                });
                match next {
                    Ok(n) => {
                        tracing::debug!(from = %origin(&url), to = %origin(&n), "following vault redirect");
                        hops += 1;
                        url = n;
                        continue;
                    }
                    Err(e) => {
                        return Err(RestError::RequestError {
                            source: anyhow::Error::new(e),
                            url: origin(&url),
                            method: method.to_string(),
                        });
                    }
                }
            }
            let mut out = http::Response::builder().status(status.as_u16());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let mut body = read_capped(resp, self.limit).await?;
            return out
                .body(std::mem::take(&mut *body))
                .map_err(|e| RestError::ResponseError { source: anyhow::Error::new(e) });
        }
    }
}

impl rustify::client::Client for Transport {
    fn send<'a, 'b>(
        &'a self,
        req: http::Request<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, RestError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send_inner(req))
    }

    fn base(&self) -> &str {
        &self.base
    }
}
