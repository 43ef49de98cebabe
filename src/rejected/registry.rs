//! The lease tasks that take reports of a rejected credential, and what
//! they answer: the part of [`super`] the store and the lease tasks share,
//! kept below both so neither reaches up into the report handling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Reports within this long of a lookup are answered from it.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Reports per caller uid per [`CALLER_WINDOW`].
pub const CALLER_LIMIT: u32 = 20;

/// Window of [`CALLER_LIMIT`].
pub const CALLER_WINDOW: Duration = Duration::from_secs(10);

/// What the lease task found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Vault still knows the lease: the credential is not replaced.
    Valid,
    /// The lease is gone: the credential was withdrawn, a new one is on its way.
    Gone,
    /// Vault refused the lookup (403): the token is being checked; if it is
    /// dead, every credential it issued is replaced.
    TokenChecked,
    /// The lookup failed (Vault unreachable…); nothing was changed.
    Failed(String),
}

/// One report, sent to the secret's lease task.
#[derive(Debug)]
pub struct Check {
    /// Where the lease task answers.
    pub reply: oneshot::Sender<Checked>,
}

/// The lease tasks that take reports, by secret name, and the per-caller
/// report counts.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: Arc<Mutex<HashMap<String, mpsc::Sender<Check>>>>,
    callers: Arc<Mutex<HashMap<u32, (Instant, u32)>>>,
}

// === impl Registry ===

impl Registry {
    /// Called by a database secret's task: reports for `name` arrive here.
    pub fn register(&self, name: &str) -> mpsc::Receiver<Check> {
        let (tx, rx) = mpsc::channel(16);
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), tx);
        rx
    }

    pub(crate) fn task(&self, name: &str) -> Option<mpsc::Sender<Check>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Counts a report from `uid`; false once it is over its limit.
    pub(crate) fn admit(&self, uid: u32) -> bool {
        let mut m = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() > 10_000 {
            m.retain(|_, (start, _)| now.duration_since(*start) < CALLER_WINDOW);
        }
        let e = m.entry(uid).or_insert((now, 0));
        if now.duration_since(e.0) >= CALLER_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 <= CALLER_LIMIT
    }
}
