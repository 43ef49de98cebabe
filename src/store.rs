//! The current snapshot of every secret.
//!
//! Lease and KV tasks publish into the store; the socket API and the
//! renderers read it. A snapshot is an immutable map behind an `Arc`, handed
//! out through a `watch` channel, so readers never block writers and a
//! renderer sees every change as one new value.
//!
//! Each secret carries a version that moves only when its *content* changes
//! (a renewal does not bump it), and a `problem` string saying why it is not
//! available or not fresh. Expiry is checked by readers against the clock:
//! a secret whose lease has ended is never served, even if its task has not
//! got round to withdrawing it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::secret::SecretData;

/// One secret as readers see it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Bumped on every content change; 0 until the first value arrives.
    pub version: u64,
    /// The current value, if any.
    pub value: Option<Arc<SecretData>>,
    /// Lease end and renewability (database secrets). Shared with the
    /// lease task, which updates it in place on renewal.
    pub lease: Option<Arc<LeaseCell>>,
    /// Why the secret is missing, stale or at risk; `None` when all is well.
    pub problem: Option<String>,
}

/// The parts of a lease a reader needs.
#[derive(Clone, Copy, Debug)]
pub struct LeaseView {
    /// When the served credential stops working.
    pub expires_at: Instant,
    /// The TTL the lease was issued with.
    pub ttl: std::time::Duration,
    /// Whether it can still be renewed.
    pub renewable: bool,
}

/// A lease's current view, updated in place by renewals: a renewal changes
/// neither content nor version, so it neither copies the snapshot nor wakes
/// readers — O(1) whatever the number of secrets.
#[derive(Debug)]
pub struct LeaseCell(std::sync::Mutex<LeaseView>);

impl LeaseCell {
    /// The current view.
    pub fn get(&self) -> LeaseView {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, v: LeaseView) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

// === impl Entry ===

impl Entry {
    /// The value, if it exists and its lease has not ended at `now`.
    pub fn live(&self, now: Instant) -> Option<&Arc<SecretData>> {
        match (&self.value, &self.lease) {
            (Some(_), Some(l)) if l.get().expires_at <= now => None,
            (v, _) => v.as_ref(),
        }
    }

    /// Why this secret cannot be served at `now`, if it cannot.
    pub fn unavailable(&self, now: Instant) -> Option<String> {
        if self.live(now).is_some() {
            return None;
        }
        Some(match (&self.value, &self.problem) {
            (Some(_), Some(p)) => format!("lease expired ({p})"),
            (Some(_), None) => "lease expired".into(),
            (None, Some(p)) => format!("not fetched yet: {p}"),
            (None, None) => "not fetched yet".into(),
        })
    }
}

/// All secrets, by name. Cloning the map to publish a change copies only
/// pointers (names and entries are shared).
pub type Snapshot = Arc<BTreeMap<Arc<str>, Arc<Entry>>>;

/// The writer side; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: Arc<watch::Sender<Snapshot>>,
    /// The auth task's state: why vaultlet cannot log in, if it cannot, is
    /// the reason a secret that was never fetched is missing.
    auth: crate::token::AuthRx,
    /// Where reports of a rejected credential go (database secrets).
    rejections: crate::rejected::registry::Registry,
}

// === impl Store ===

impl Store {
    /// A store that knows every configured name from the start, so readiness
    /// can report what is missing.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Store {
        let map = names
            .into_iter()
            .map(|n| (Arc::from(n), Arc::new(Entry { version: 0, value: None, lease: None, problem: None })))
            .collect();
        let (tx, _) = watch::channel(Arc::new(map));
        Store { tx: Arc::new(tx), auth: crate::token::channel().1, rejections: Default::default() }
    }

    /// The lease tasks that take reports of a rejected credential.
    pub fn rejections(&self) -> &crate::rejected::registry::Registry {
        &self.rejections
    }

    /// A receiver of snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    fn modify(&self, name: &str, f: impl FnOnce(&mut Entry) -> bool) {
        self.tx.send_if_modified(|snap| {
            let mut map = (**snap).clone();
            let Some(e) = map.get_mut(name) else { return false };
            if !f(Arc::make_mut(e)) {
                return false;
            }
            *snap = Arc::new(map);
            true
        });
    }

    /// Publishes a new value. The version moves only if the content differs
    /// from what is held (or the held one has expired). Returns the version.
    pub fn publish(&self, name: &str, data: SecretData, lease: Option<LeaseView>) -> u64 {
        let mut version = 0;
        let now = Instant::now();
        self.modify(name, |e| {
            let same = e.live(now).is_some_and(|cur| cur.same_as(&data));
            if !same {
                e.version += 1;
                e.value = Some(Arc::new(data));
            }
            e.lease = lease.map(|l| Arc::new(LeaseCell(std::sync::Mutex::new(l))));
            e.problem = None;
            version = e.version;
            true
        });
        version
    }

    /// Serves a value saved by the previous process (see [`crate::state`])
    /// at the version it had then, so long-polls and SSE watchers that
    /// already hold that version see no change.
    pub fn restore(&self, name: &str, data: SecretData, version: u64, lease: Option<LeaseView>) {
        self.modify(name, |e| {
            e.version = version;
            e.value = Some(Arc::new(data));
            e.lease = lease.map(|l| Arc::new(LeaseCell(std::sync::Mutex::new(l))));
            e.problem = None;
            true
        });
    }

    /// Records a renewal: new end, same content, same version. Updates the
    /// shared cell; the snapshot is copied only to clear a recorded problem.
    pub fn update_lease(&self, name: &str, lease: LeaseView) {
        let (cell, had_problem) = {
            let snap = self.tx.borrow();
            match snap.get(name) {
                Some(e) => (e.lease.clone(), e.problem.is_some()),
                None => return,
            }
        };
        match cell {
            Some(c) => c.set(lease),
            None => {
                self.modify(name, |e| {
                    e.lease = Some(Arc::new(LeaseCell(std::sync::Mutex::new(lease))));
                    true
                });
            }
        }
        if had_problem {
            self.modify(name, |e| e.problem.take().is_some());
        }
    }

    /// Records why the secret is not fresh; the held value stays served while
    /// its lease lasts.
    pub fn set_problem(&self, name: &str, problem: String) {
        self.modify(name, |e| {
            if e.problem.as_deref() == Some(problem.as_str()) {
                return false;
            }
            e.problem = Some(problem);
            true
        });
    }

    /// Reads login failures from the auth task's state `auth` (see
    /// [`crate::token::channel`]); set before the store is cloned.
    pub fn with_auth(mut self, auth: crate::token::AuthRx) -> Store {
        self.auth = auth;
        self
    }

    /// Why `entry` cannot be served at `now`, if it cannot, including a login
    /// failure for secrets never fetched.
    pub fn unavailable(&self, entry: &Entry, now: Instant) -> Option<String> {
        let reason = entry.unavailable(now)?;
        if entry.value.is_none()
            && entry.problem.is_none()
            && let Some(p) = self.auth.borrow().problem.as_ref()
        {
            return Some(format!("{reason}: login failed: {p}"));
        }
        Some(reason)
    }

    /// Readiness: every secret held and unexpired. Returns the reasons otherwise.
    pub fn not_ready(&self, now: Instant) -> Vec<(String, String)> {
        let snap = self.snapshot();
        snap.iter().filter_map(|(n, e)| self.unavailable(e, now).map(|r| (n.to_string(), r))).collect()
    }

    /// Removes the value (its lease has ended or was revoked).
    pub fn withdraw(&self, name: &str, reason: String) {
        self.modify(name, |e| {
            if e.value.is_none() && e.problem.as_deref() == Some(reason.as_str()) {
                return false;
            }
            e.value = None;
            e.lease = None;
            e.problem = Some(reason);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::time::Duration;

    fn data(v: &str) -> SecretData {
        let mut d = SecretData::default();
        d.insert("k", SecretString::from(v.to_string()));
        d
    }

    #[tokio::test(start_paused = true)]
    async fn version_moves_only_on_change() {
        let s = Store::new(["a"]);
        assert_eq!(s.publish("a", data("1"), None), 1);
        assert_eq!(s.publish("a", data("1"), None), 1);
        assert_eq!(s.publish("a", data("2"), None), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn restored_value_keeps_its_version() {
        let s = Store::new(["a"]);
        s.restore("a", data("1"), 41, None);
        assert_eq!(s.snapshot()["a"].version, 41);
        assert!(s.not_ready(Instant::now()).is_empty(), "a restored value makes the secret ready");
        assert_eq!(s.publish("a", data("1"), None), 41, "the same content read again does not move it");
        assert_eq!(s.publish("a", data("2"), None), 42);
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_updates_in_place_without_waking_readers() {
        let s = Store::new(["db", "other"]);
        let view = |secs| LeaseView {
            expires_at: Instant::now() + Duration::from_secs(secs),
            ttl: Duration::from_secs(10),
            renewable: true,
        };
        s.publish("db", data("x"), Some(view(10)));
        let mut rx = s.subscribe();
        rx.borrow_and_update();
        let before = s.snapshot();
        s.update_lease("db", view(25));
        assert!(!rx.has_changed().unwrap(), "a renewal wakes no reader");
        assert!(Arc::ptr_eq(&before, &s.snapshot()), "and copies no snapshot");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(s.snapshot()["db"].live(Instant::now()).is_some(), "served until the renewed end");
        // A renewal after an error clears the problem (that one is visible).
        s.set_problem("db", "vault unreachable".into());
        rx.borrow_and_update();
        s.update_lease("db", view(10));
        assert!(rx.has_changed().unwrap());
        assert!(s.snapshot()["db"].problem.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_is_not_served_and_not_ready() {
        let (auth, rx) = crate::auth::channel();
        let s = Store::new(["db"]).with_auth(rx);
        assert_eq!(s.not_ready(Instant::now()).len(), 1);
        assert!(!s.not_ready(Instant::now())[0].1.contains("login failed"));
        auth.send_modify(|a| a.problem = Some("vault refused AppRole login".into()));
        assert!(s.not_ready(Instant::now())[0].1.contains("login failed: vault refused"));
        let end = Instant::now() + Duration::from_secs(10);
        s.publish("db", data("x"), Some(LeaseView { expires_at: end, ttl: Duration::from_secs(10), renewable: true }));
        assert!(s.not_ready(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(11)).await;
        let snap = s.snapshot();
        assert!(snap["db"].live(Instant::now()).is_none());
        let r = s.not_ready(Instant::now());
        assert_eq!(r[0].1, "lease expired");
    }
}
