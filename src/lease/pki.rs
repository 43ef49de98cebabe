//! A PKI secret's task: issue a certificate, re-issue it before it expires.
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
//! allow the common name) and the reason in `/v1/ready`. A certificate that arrives already expired, or not
//! valid yet (`not_before` ahead of this host's clock), is refused: serving
//! it would only make every handshake fail.
//!
//! Replaced certificates are revoked after `drain` only with
//! `revoke_old = true` (each revocation grows the CRL); `revoke_on_shutdown`
//! revokes the live ones ([`Certs`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use tokio::time::{Instant, sleep_until};

use super::retry::{self, Attempt, Backoffs, Class};
use super::schedule::{self, LeaseTimes};
pub use super::task::Certs;
use super::task::{Cx, Failure, MIN_ISSUE_INTERVAL, Watches, failed};
use crate::auth::current_token;
use crate::config::{PkiRequest, RevokeOld, SecretSpec};
use crate::store::LeaseView;
use crate::vault::VaultError;

pub use crate::limits::PKI_FIELDS as FIELDS;

/// A certificate's time as the served `expiration`/`not_before` and the
/// error messages write it: RFC 3339 UTC, seconds (as the socket writes
/// lease ends).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why an issue did not give a usable certificate.
#[derive(Debug, thiserror::Error)]
enum IssueError {
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

/// The served certificate's times and serial.
struct Held {
    serial: String,
    issued_at: Instant,
    expires_at: Instant,
}

fn unix(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

/// Runs the task for one PKI secret until shutdown.
pub async fn run(cx: Cx, spec: SecretSpec, req: PkiRequest) {
    let name = spec.name.clone();
    let what = format!("{}/issue/{}", req.mount, req.role);
    let mut w = Watches { auth: cx.auth.watch(), deaths: false };
    let mut cur: Option<Held> = None;
    let mut last_issue: Option<Instant> = None;
    let mut backoffs = Backoffs::default();
    loop {
        let Some(token) = current_token(&mut w.auth, &cx.shutdown).await else { return };
        let now = Instant::now();
        let mut at = match &cur {
            None => now,
            Some(h) => {
                let times =
                    LeaseTimes { issued_at: h.issued_at, expires_at: h.expires_at, renewable: false, hard_end: None };
                schedule::next_step(now, times, spec.rotate_before, schedule::jitter()).at()
            }
        };
        if let Some(last) = last_issue {
            at = at.max(schedule::after(last, MIN_ISSUE_INTERVAL));
        }
        let expiry = cur.as_ref().map(|h| h.expires_at);
        tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            _ = w.auth.changed() => continue,
            _ = sleep_until(at) => {}
            _ = sleep_until(expiry.unwrap_or(at)), if expiry.is_some_and(|e| e < at) => {
                expired(&cx, &name, &mut cur, "certificate expired before it could be re-issued");
                continue;
            }
        }
        if w.auth.has_changed().unwrap_or(false) {
            continue;
        }
        last_issue = Some(Instant::now());
        let res = tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            r = issue(&cx, &spec, &req, &what, &token.secret) => r,
        };
        cx.metrics.certificate_issued(&name, &res);
        let e = match res {
            Ok(held) => {
                backoffs.reset();
                if let Some(old) = cur.replace(held)
                    && spec.revoke_old == RevokeOld::Drain
                {
                    let drain = drain(cx.clone(), spec.clone(), req.mount.clone(), old);
                    cx.drains.spawn(tracing::Instrument::instrument(drain, tracing::Span::current()));
                }
                continue;
            }
            Err(e) => e,
        };
        let retry = retry::decide(e.class(), Attempt::Secret, &mut backoffs);
        let failure = Failure { what: "pki secret", generation: token.generation, error: &e, retry };
        let expiry = cur.as_ref().map(|h| h.expires_at);
        if !failed(&cx, &name, failure, &mut backoffs, &mut w, expiry).await {
            return;
        }
        if cur.as_ref().is_some_and(|h| h.expires_at <= Instant::now()) {
            expired(&cx, &name, &mut cur, "certificate expired while no new one could be issued");
        }
    }
}

fn expired(cx: &Cx, name: &str, cur: &mut Option<Held>, why: &str) {
    if let Some(h) = cur.take() {
        cx.certs.remove(&h.serial);
        tracing::error!(secret = %name, serial = %h.serial, "{why}; certificate withdrawn");
    }
    cx.store.withdraw(name, why.to_owned());
}

async fn issue(
    cx: &Cx,
    spec: &SecretSpec,
    req: &PkiRequest,
    what: &str,
    token: &SecretString,
) -> Result<Held, IssueError> {
    let mut cert = cx.vault.pki_issue(token, req).await?;
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
    Ok(Held { serial: cert.serial, issued_at: now, expires_at })
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

/// Lets a replaced certificate serve `drain` longer, then revokes it.
async fn drain(cx: Cx, spec: SecretSpec, mount: String, old: Held) {
    let until = schedule::after(Instant::now(), spec.drain);
    if old.expires_at <= until {
        // It expires before the drain ends: revoking it would only grow the CRL.
        tokio::select! {
            _ = cx.shutdown.cancelled() => {}
            _ = sleep_until(old.expires_at) => cx.certs.remove(&old.serial),
        }
        return;
    }
    tokio::select! {
        _ = cx.shutdown.cancelled() => return,
        _ = sleep_until(until) => {}
    }
    let mut token_rx = cx.auth.watch();
    let Some(token) = current_token(&mut token_rx, &cx.shutdown).await else { return };
    match cx.vault.pki_revoke(&token.secret, &mount, &old.serial).await {
        Ok(()) => tracing::info!(secret = %spec.name, serial = %old.serial, "revoked replaced certificate"),
        Err(e) => {
            tracing::warn!(secret = %spec.name, serial = %old.serial, error = %e, "could not revoke replaced certificate; it will expire")
        }
    }
    cx.certs.remove(&old.serial);
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
