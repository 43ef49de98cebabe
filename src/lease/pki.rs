//! A PKI secret: issue a certificate, re-issue it before it expires, driven
//! by the loop in [`super::leased`].
//!
//! `POST <mount>/issue/<role>` carries no lease (unless the role sets
//! `generate_lease`, and then a non-renewable one), so the certificate's own
//! `expiration` is the deadline: it is scheduled like a non-renewable lease
//! ([`schedule::next_step`]), re-issued `reissue_before` ahead of it (default
//! ⅓ of its lifetime, at most half), published at once with a new version.
//!
//! A failed re-issue keeps the current certificate served until it expires,
//! with the retry decision every secret task uses ([`super::retry`]: fast
//! for transient failures, slow for refusals such as a role that does not
//! allow the common name) and the reason in `/v1/ready`. A certificate
//! that arrives already expired, or not valid yet (`not_before` ahead of
//! this host's clock), is refused: serving it would only make every
//! handshake fail.
//!
//! A certificate cannot be renewed, nor looked up, and does not die with
//! the token that issued it. Replaced certificates are revoked after
//! `drain` only with `revoke_old = true` (each revocation grows the CRL);
//! `revoke_on_shutdown` revokes the live ones ([`Certs`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::time::Instant;

use super::leased::{self, LeasedKind, LeasedValue};
use super::retry::Class;
use super::schedule::{self, LeaseTimes};
pub use super::task::Certs;
use super::task::Cx;
use crate::config::{PkiRequest, RevokeOld, SecretSpec};
use crate::secret::Token;
use crate::store::LeaseView;
use crate::vault::{Call, Renewed, VaultError};

pub use crate::limits::PKI_FIELDS as FIELDS;

/// A certificate's time as the served `expiration`/`not_before` and the
/// error messages write it: RFC 3339 UTC, seconds (as the socket writes
/// lease ends).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why an issue did not give a usable certificate.
#[derive(Debug, thiserror::Error)]
pub(super) enum IssueError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "certificate {serial} from {what} arrived already expired (expiration {at}); check the role's ttl and both clocks"
    )]
    Expired { serial: String, what: String, at: String },
    #[error(
        "certificate {serial} from {what} is not valid before {at}, {ahead}s ahead of this host's clock; refused (clock skew?)"
    )]
    NotYetValid { serial: String, what: String, at: String, ahead: u64 },
}

impl IssueError {
    fn class(&self) -> Class {
        match self {
            IssueError::Vault(e) => Class::of(e),
            IssueError::Expired { .. } | IssueError::NotYetValid { .. } => Class::Permanent,
        }
    }
}

/// The served certificate: where it came from, its serial and times.
pub(super) struct Cert {
    mount: String,
    serial: String,
    issued_at: Instant,
    expires_at: Instant,
    /// Its lifetime when issued.
    ttl: Duration,
    /// The token generation it was issued under (it outlives that token).
    generation: u64,
}

fn unix(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

/// Runs the task for one PKI secret until shutdown.
pub(super) async fn run(cx: Cx, spec: SecretSpec, req: PkiRequest) {
    let what = format!("{}/issue/{}", req.mount, req.role);
    leased::run(cx, spec, Pki { req, what }, None).await
}

struct Pki {
    req: PkiRequest,
    /// `<mount>/issue/<role>`, for error messages.
    what: String,
}

// === impl LeasedKind for Pki ===

impl LeasedKind for Pki {
    type Value = Cert;
    type Error = IssueError;

    const WHAT: &'static str = "pki secret";
    const ENDED: &'static str = "certificate expired before it could be re-issued";
    const ENDED_FAILING: &'static str = "certificate expired while no new one could be issued";

    fn class(e: &IssueError) -> Class {
        e.class()
    }

    async fn issue(&mut self, cx: &Cx, spec: &SecretSpec, token: &Token) -> Result<Cert, IssueError> {
        let res = issue(cx, spec, &self.req, &self.what, token).await;
        cx.metrics.certificate_issued(&spec.name, &res);
        res
    }

    /// The sealed state keeps no certificates.
    fn track(&self, _: &Cx, _: &SecretSpec, _: Option<&Cert>) {}
}

// === impl LeasedValue for Cert ===

impl LeasedValue for Cert {
    const DIES_WITH_TOKEN: bool = false;
    const LOOKED_UP: bool = false;

    /// Scheduled like a non-renewable lease ending at the certificate's
    /// `notAfter`.
    fn times(&self) -> LeaseTimes {
        LeaseTimes { issued_at: self.issued_at, expires_at: self.expires_at, renewable: false, hard_end: None }
    }

    fn view(&self) -> LeaseView {
        LeaseView { expires_at: self.expires_at, ttl: self.ttl, renewable: false }
    }

    fn token(&self) -> (u64, Option<Instant>) {
        (self.generation, None)
    }

    /// A certificate outlives its token: nothing to follow.
    fn set_token_end(&mut self, _: Instant) {}

    fn renew<'a>(&'a mut self, _: &'a Cx, _: &'a SecretString) -> Option<Call<'a, Renewed>> {
        None
    }

    fn look_up<'a>(&'a self, _: &'a Cx, _: &'a SecretString) -> Option<Call<'a, ()>> {
        None
    }

    fn revoke<'a>(&'a self, cx: &'a Cx, secret: &'a str, token: &'a SecretString) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match cx.vault.pki_revoke(token, &self.mount, &self.serial).await {
                Ok(()) => tracing::info!(secret = %secret, serial = %self.serial, "revoked replaced certificate"),
                Err(e) => {
                    tracing::warn!(secret = %secret, serial = %self.serial, error = %e, "could not revoke replaced certificate; it will expire")
                }
            }
        })
    }

    /// Only to be revoked (each revocation grows the CRL): left alone, a
    /// replaced certificate needs nothing while it drains, and stays on the
    /// list `revoke_on_shutdown` revokes until it expires.
    fn drains(revoke_old: RevokeOld) -> bool {
        revoke_old == RevokeOld::Drain
    }

    /// The sealed state keeps no certificates.
    fn draining(&self, _: &Cx, _: &str, _: Option<Instant>) {}

    fn forget(&self, cx: &Cx) {
        cx.certs.remove(&self.serial);
    }

    fn withdrawn(&self, secret: &str, why: &str) {
        tracing::error!(secret = %secret, serial = %self.serial, "{why}; certificate withdrawn");
    }
}

async fn issue(cx: &Cx, spec: &SecretSpec, req: &PkiRequest, what: &str, token: &Token) -> Result<Cert, IssueError> {
    let mut cert = cx.vault.pki_issue(&token.secret, req).await?;
    let (now_sys, now) = (SystemTime::now(), Instant::now());
    let (left, not_before) = check_times(&cert.serial, what, now_sys, cert.not_before, cert.expiration)?;
    let end = unix(cert.expiration);
    let left = left.min(crate::limits::MAX_TTL);
    cert.data.insert("expiration", SecretString::from(rfc3339(end)));
    cert.data.insert("not_before", SecretString::from(not_before.map(rfc3339).unwrap_or_default()));
    let expires_at = schedule::after(now, left);
    let view = LeaseView { expires_at, ttl: left, renewable: false };
    cx.certs.add(&req.mount, &cert.serial, end);
    cx.metrics.cert_expiry(&spec.name, end);
    let version = cx.store.publish(&spec.name, cert.data, Some(view));
    tracing::info!(secret = %spec.name, version, serial = %cert.serial, ttl = ?left, lease = ?cert.lease, "issued certificate");
    Ok(Cert {
        mount: req.mount.clone(),
        serial: cert.serial,
        issued_at: now,
        expires_at,
        ttl: left,
        generation: token.generation,
    })
}

/// How long a certificate issued at `now` has left, and its `not_before`;
/// refuses one already expired or not valid yet.
fn check_times(
    serial: &str,
    what: &str,
    now: SystemTime,
    not_before: Option<i64>,
    expiration: i64,
) -> Result<(Duration, Option<SystemTime>), IssueError> {
    let end = unix(expiration);
    let left = end.duration_since(now).unwrap_or_default();
    if left.is_zero() {
        return Err(IssueError::Expired { serial: serial.to_owned(), what: what.to_owned(), at: rfc3339(end) });
    }
    let not_before = not_before.map(unix);
    if let Some(nb) = not_before
        && let Ok(ahead) = nb.duration_since(now)
        && !ahead.is_zero()
    {
        return Err(IssueError::NotYetValid {
            serial: serial.to_owned(),
            what: what.to_owned(),
            at: rfc3339(nb),
            ahead: ahead.as_secs().max(1),
        });
    }
    Ok((left, not_before))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000;

    fn check(nb: Option<i64>, exp: i64) -> Result<Duration, String> {
        check_times("0a:0b", "pki/issue/internal", unix(NOW), nb, exp).map(|(l, _)| l).map_err(|e| e.to_string())
    }

    #[test]
    fn certificate_already_expired_is_refused_with_a_clear_message() {
        let e = check(Some(NOW - 60), NOW - 1).unwrap_err();
        assert!(e.contains("0a:0b") && e.contains("already expired") && e.contains("2026-11-18T11:06:39Z"), "{e}");
        assert!(check(Some(NOW - 60), NOW).is_err(), "expiring this very second is expired");
    }

    #[test]
    fn certificate_not_valid_yet_is_refused_with_a_clear_message() {
        let e = check(Some(NOW + 90), NOW + 3600).unwrap_err();
        assert!(e.contains("not valid before 2026-11-18T11:08:10Z") && e.contains("90s ahead"), "{e}");
    }

    #[test]
    fn valid_certificate_has_its_time_left() {
        assert_eq!(check(Some(NOW - 30), NOW + 6).unwrap(), Duration::from_secs(6));
        assert_eq!(check(None, NOW + 6).unwrap(), Duration::from_secs(6));
        assert_eq!(check(Some(NOW), NOW + 6).unwrap(), Duration::from_secs(6));
    }
}
