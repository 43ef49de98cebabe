//! What a server says is not trusted: TTLs are clamped, issuing calls are
//! rate limited, and a lease id must be a plain path before it goes into
//! one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::ops::Kind;
use crate::limits::MAX_TTL;

/// Shortest TTL taken from a server. A zero TTL would make a credential due
/// for replacement the moment it is issued.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Issuing calls (logins, database credentials, certificates) allowed at
/// once before the rate applies: enough for every secret of a large sidecar
/// to start.
pub const ISSUE_BURST: f64 = 100.0;

/// Issuing calls per second after the burst, process-wide.
pub const ISSUE_RATE: f64 = 10.0;

// === issue rate ===

/// A token bucket shared by every issuing call.
pub(super) struct IssueBucket {
    state: Mutex<(f64, tokio::time::Instant)>,
    burst: f64,
    rate: f64,
}

impl IssueBucket {
    pub(super) fn new(burst: f64, rate: f64) -> IssueBucket {
        IssueBucket { state: Mutex::new((burst, tokio::time::Instant::now())), burst, rate }
    }

    pub(super) async fn take(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rate;
                s.0 = (s.0 + refill).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

// === TTLs from the server ===

static CLAMP_LOGGED: [AtomicBool; 4] =
    [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)];

/// A server-supplied TTL in seconds, clamped to `MIN_TTL..=MAX_TTL`; the
/// first clamp of each kind is logged.
pub(super) fn server_ttl(kind: Kind, secs: u64) -> Duration {
    let d = Duration::from_secs(secs);
    let c = d.clamp(MIN_TTL, MAX_TTL);
    if c != d {
        let slot = match kind {
            Kind::Login => 0,
            Kind::RenewSelf => 1,
            Kind::DbCreds => 2,
            _ => 3,
        };
        if !CLAMP_LOGGED[slot].swap(true, Ordering::Relaxed) {
            tracing::warn!(operation = kind.spec().name, ttl_seconds = secs, clamped_to = ?c, "vault gave a TTL outside 1 s ..= 1 year; clamped");
        }
    }
    c
}

/// A lease id as Vault's path form takes it: path characters only, no `..`
/// segment, so a hostile id cannot steer renew/revoke to another endpoint.
pub(super) fn valid_lease_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('/')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !id.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
}
