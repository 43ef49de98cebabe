//! The Vault client: one HTTP client, the configured addresses, and
//! [`Vault::call`], which applies the operation table to every request
//! (issue rate, requests in flight, failover, metrics).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestError;
use secrecy::{ExposeSecret, SecretString};
use vaultrs::api::EndpointMiddleware;
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use super::backend::Auth;
use super::endpoints::Envelope;
use super::error::{ErrorBody, VaultError, classify, malformed};
use super::guard::{ISSUE_BURST, ISSUE_RATE, IssueBucket, server_ttl};
use super::ops::Op;
use super::tls::{SYSTEM_CA_FILES, load_roots, read_pem};
use super::transport::{RedirectRefused, Transport};
use crate::config::VaultConfig;

/// The Vault connection: one HTTP client, one or more server addresses.
pub struct Vault {
    http: reqwest::Client,
    addrs: Arc<[reqwest::Url]>,
    current: AtomicUsize,
    namespace: Option<String>,
    limit: usize,
    /// Requests in flight at once. Thousands of secrets starting together
    /// queue here instead of opening thousands of connections.
    in_flight: tokio::sync::Semaphore,
    issues: IssueBucket,
    /// Where request counts and latencies go.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Most requests vaultlet sends to Vault at the same time.
const MAX_IN_FLIGHT: usize = 32;

// === impl Vault ===

impl Vault {
    /// Builds the HTTP client. Reads the CA file; no network I/O.
    pub fn new(cfg: &VaultConfig) -> Result<Vault, VaultError> {
        Self::with_system_roots(cfg, SYSTEM_CA_FILES)
    }

    /// [`Vault::new`] with the system bundle looked for at `system`.
    pub fn with_system_roots(cfg: &VaultConfig, system: &[&str]) -> Result<Vault, VaultError> {
        let mut b = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .no_proxy()
            // Transport follows the redirects it may; reqwest follows none.
            .redirect(reqwest::redirect::Policy::none())
            // Few idle connections: a sidecar's requests come in small bursts.
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("vaultlet/", env!("CARGO_PKG_VERSION")));
        // Always exclusive: with only reqwest's defaults, SSL_CERT_FILE and
        // SSL_CERT_DIR in the environment would replace the system roots.
        b = b.tls_certs_only(load_roots(cfg, system)?);
        if let Some((cert, key)) = &cfg.client_cert {
            let k = read_pem(key)?;
            let mut pem = read_pem(cert)?.to_vec();
            pem.push(b'\n');
            pem.extend_from_slice(&k);
            drop(k);
            let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                VaultError::Setup(format!("{} / {} are not a PEM certificate and key", cert.display(), key.display()))
            });
            pem.zeroize();
            b = b.identity(id?);
        }
        let http = b.build().map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Vault {
            http,
            addrs: cfg.addresses.clone().into(),
            current: AtomicUsize::new(0),
            namespace: cfg.namespace.clone(),
            limit: cfg.max_response_size,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            issues: IssueBucket::new(ISSUE_BURST, ISSUE_RATE),
            metrics: crate::metrics::Metrics::new(),
        })
    }

    /// Counts this client's requests into `metrics` (the daemon's set)
    /// instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Vault {
        self.metrics = metrics;
        self
    }

    fn conn(&self, addr: &reqwest::Url, token: &str) -> Conn {
        let base = addr.as_str().trim_end_matches('/');
        Conn {
            middle: EndpointMiddleware {
                token: token.to_owned(),
                version: "v1".into(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            transport: Transport {
                http: self.http.clone(),
                base: base.to_owned(),
                allowed: self.addrs.clone(),
                limit: self.limit,
            },
        }
    }

    /// Runs one request, moving to the next address when this one cannot
    /// serve it. `f` gets its own client per attempt.
    pub(super) async fn call<T, F, Fut>(&self, op: &Op, token: Option<&SecretString>, f: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        if op.kind.spec().issues {
            self.issues.take().await;
        }
        let token = token.map(|t| t.expose_secret()).unwrap_or("");
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addrs.len() {
            let idx = (start + i) % self.addrs.len();
            let addr = &self.addrs[idx];
            let conn = Arc::new(self.conn(addr, token));
            let started = std::time::Instant::now();
            tracing::trace!(operation = op.name(), method = op.kind.spec().method, path = %op.path, address = %addr, "vault request");
            // Boxed: the HTTP stack's futures are large, and keeping them out
            // of every caller's state keeps idle secret tasks small.
            let res = Box::pin(f(conn)).await;
            tracing::trace!(operation = op.name(), ok = res.is_ok(), took = ?started.elapsed(), "vault response");
            self.metrics.vault_request(op.name(), started.elapsed(), res.is_ok());
            match res {
                Ok(v) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                        tracing::info!(address = %addr, "switched to vault server");
                    }
                    return Ok(v);
                }
                Err(e) => {
                    let unsent = surely_unsent(&e);
                    let e = classify(op, addr, e);
                    // Try another server only when this one could not serve
                    // the request at all.
                    let next = matches!(e, VaultError::Unreachable { .. })
                        || matches!(e.status(), Some(500..=599) | Some(429) | Some(412));
                    if !next {
                        return Err(e);
                    }
                    if !op.idempotent() && !unsent && matches!(e, VaultError::Unreachable { .. }) {
                        // It may have been issued: do not issue again now,
                        // but let the caller's next attempt go elsewhere.
                        if self.addrs.len() > 1 {
                            self.current.store((idx + 1) % self.addrs.len(), Ordering::Relaxed);
                        }
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one address is configured"))
    }
}

/// The per-request middleware (token, namespace, `/v1` prefix), with its
/// copy of the token wiped on drop.
pub(super) struct Conn {
    middle: EndpointMiddleware,
    transport: Transport,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.middle.token.zeroize();
    }
}

/// Executes an endpoint through our transport, returning the body (wiped on
/// drop). Error statuses become `APIError` with Vault's `errors` strings.
pub(super) async fn raw<E: Endpoint>(c: &Conn, e: E) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let res = e.with_middleware(&c.middle).exec(&c.transport).await;
    match res {
        Ok(r) => Ok(Zeroizing::new(r.response.into_body())),
        Err(RestError::ServerResponseError { code, content }) => {
            let content = content.map(Zeroizing::new);
            let errors = content
                .as_deref()
                .and_then(|c| serde_json::from_str::<ErrorBody>(c).ok())
                .map(|b| b.errors)
                .unwrap_or_default();
            Err(ClientError::APIError { code, errors })
        }
        Err(e) => Err(ClientError::RestClientError { source: e }),
    }
}

/// Whether a failed request surely never reached a server: no connection,
/// or a redirect we did not follow (the server that answered did nothing).
fn surely_unsent(e: &ClientError) -> bool {
    let ClientError::RestClientError { source: RestError::RequestError { source, .. } } = e else { return false };
    if source.downcast_ref::<RedirectRefused>().is_some() {
        return true;
    }
    source.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_connect())
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(op: &Op, body: &[u8]) -> Result<T, VaultError> {
    serde_json::from_slice(body).map_err(|_| malformed(op, "not the expected JSON"))
}

pub(super) fn auth_from(op: &Op, body: &[u8]) -> Result<Auth, VaultError> {
    let env: Envelope<serde::de::IgnoredAny> = parse(op, body)?;
    let Some(mut info) = env.auth else { return Err(malformed(op, "no auth")) };
    let token = SecretString::from(std::mem::take(&mut info.client_token));
    // The token goes into a header on every request; the HTTP stack refuses
    // (or vaultrs panics on) anything but visible ASCII.
    let t = token.expose_secret();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(op, "a client token that is not visible ASCII"));
    }
    Ok(Auth { token, ttl: server_ttl(op.kind, info.lease_duration), renewable: info.renewable })
}
