//! What every secret task shares, whatever its kind: the context it runs
//! in ([`Cx`]), the one error-handling point of a turn ([`failed`]) and
//! what wakes a retry early ([`Watches`]). Kept apart from `lease/mod.rs`
//! so the leased loop (`lease/leased.rs`), its kinds and the KV task use it
//! without reaching up into their parent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::retry::{Backoffs, Retry};
use super::schedule;
use crate::auth::{AuthHandle, AuthRx};
use crate::ledger::Leases;
use crate::store::Store;
use crate::vault::Backend;

/// Shortest time between two credentials issued for one secret. A server
/// that answers with tiny TTLs (or lies) gets at most one issue per second
/// per secret; the test bed's 3 s leases are replaced every 1.5 s, so real
/// short leases are not slowed.
pub const MIN_ISSUE_INTERVAL: Duration = Duration::from_secs(1);

/// What every secret task needs.
#[derive(Clone)]
pub struct Cx {
    /// Vault.
    pub vault: Arc<dyn Backend>,
    /// Where values go.
    pub store: Store,
    /// The token.
    pub auth: AuthHandle,
    /// Held leases.
    pub leases: Leases,
    /// Stops the task.
    pub shutdown: CancellationToken,
    /// Held certificates (PKI secrets).
    pub certs: Certs,
    /// Counters this task moves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the sealed state keeps of each lease.
    pub tracker: crate::ledger::Tracker,
    /// The drain tasks of replaced leases and certificates, awaited at
    /// shutdown with the daemon's other tasks.
    pub drains: TaskTracker,
}

/// Certificates vaultlet holds (mount, serial, end), for `revoke_on_shutdown`.
#[derive(Clone, Default)]
pub struct Certs(Arc<Mutex<Vec<(String, String, SystemTime)>>>);

// === impl Certs ===

impl Certs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, SystemTime)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, mount: &str, serial: &str, end: SystemTime) {
        self.lock().push((mount.to_owned(), serial.to_owned(), end));
    }

    pub(super) fn remove(&self, serial: &str) {
        self.lock().retain(|(_, s, _)| s != serial);
    }

    /// Takes every certificate that has not expired yet: (mount, serial).
    pub fn take_live(&self) -> Vec<(String, String)> {
        let now = SystemTime::now();
        self.lock().drain(..).filter(|(_, _, end)| *end > now).map(|(m, s, _)| (m, s)).collect()
    }
}

/// What wakes a secret task besides its own timers: the auth state.
pub(super) struct Watches {
    /// The auth task's state (token, token ends, dead tokens).
    pub(super) auth: AuthRx,
    /// Whether a token confirmed dead ends a retry's wait (database
    /// secrets: their leases died with it).
    pub(super) deaths: bool,
}

// === impl Watches ===

impl Watches {
    /// Resolves once token `generation` is replaced (or, with `deaths`,
    /// confirmed dead); never if the auth task is gone.
    pub(super) async fn replaced(&mut self, generation: u64) {
        let deaths = self.deaths;
        let done = |s: &crate::auth::AuthState| {
            s.token.as_ref().is_some_and(|t| t.generation != generation) || (deaths && s.dead.contains(&generation))
        };
        if self.auth.wait_for(done).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A failed attempt and what [`retry::decide`] made of it.
pub(super) struct Failure<'a> {
    /// The log line's message ("database secret", "kv secret"…).
    pub(super) what: &'static str,
    /// The token generation the attempt used.
    pub(super) generation: u64,
    /// What went wrong (shown in the log and `/v1/ready`, never a secret).
    pub(super) error: &'a (dyn std::fmt::Display + Sync),
    /// What to do next.
    pub(super) retry: Retry,
}

/// The one error-handling point of a secret task's turn: a 403 is reported
/// to the auth task (which checks the token), the failure is logged once and
/// recorded as the secret's problem, then the wait `retry` asks for is slept.
/// After a 403 a new token (or one confirmed dead) ends the wait early and
/// restarts the slow backoff; `expiry`, the held value's end, ends it too.
/// False at shutdown.
pub(super) async fn failed(
    cx: &Cx,
    name: &str,
    f: Failure<'_>,
    backoffs: &mut Backoffs,
    w: &mut Watches,
    expiry: Option<Instant>,
) -> bool {
    let Some(wait) = f.retry.wait() else { return true };
    let forbidden = matches!(f.retry, Retry::NewToken(_));
    if forbidden {
        cx.auth.rejected(f.generation);
    }
    tracing::warn!(secret = %name, error = %f.error, retry_in = ?wait, "{}", f.what);
    cx.store.set_problem(name, f.error.to_string());
    let until = schedule::after(Instant::now(), wait);
    tokio::select! {
        _ = cx.shutdown.cancelled() => return false,
        _ = sleep_until(until) => {}
        // A new token (after a dead one) is worth trying at once.
        _ = w.replaced(f.generation), if forbidden => backoffs.new_token(),
        _ = sleep_until(expiry.unwrap_or(until)), if expiry.is_some_and(|e| e < until) => {}
    }
    true
}
