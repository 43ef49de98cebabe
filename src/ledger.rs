//! The ledger of leases vaultlet holds: which token generation issued each
//! (so auth knows when an old token is unused, and shutdown what to revoke)
//! and what the sealed state keeps of each. The lease tasks write it; auth,
//! the state writer and shutdown read it. It sits below all of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::secret::{Lease, LeaseId};

/// Every lease vaultlet holds (with the token generation that issued it),
/// for revocation at shutdown and to know when an old token is unused.
#[derive(Clone, Default)]
pub struct Leases(Arc<Mutex<LeaseMap>>);

#[derive(Default)]
struct LeaseMap {
    live: HashMap<LeaseId, (Instant, u64)>,
    /// Issues in flight per token generation: their lease is not known yet.
    pending: HashMap<u64, usize>,
}

/// An issue in flight under one token generation (see [`Leases::pending`]).
pub struct Pending(Leases, u64);

impl Drop for Pending {
    fn drop(&mut self) {
        let mut m = self.0.lock();
        if let Some(n) = m.pending.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.pending.remove(&self.1);
            }
        }
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks an issue under `generation` as in flight until dropped.
    pub(crate) fn pending(&self, generation: u64) -> Pending {
        *self.lock().pending.entry(generation).or_default() += 1;
        Pending(self.clone(), generation)
    }

    pub(crate) fn add(&self, id: &LeaseId, expires_at: Instant, generation: u64) {
        self.lock().live.insert(id.clone(), (expires_at, generation));
    }

    pub(crate) fn extend(&self, id: &LeaseId, expires_at: Instant) {
        if let Some(e) = self.lock().live.get_mut(id) {
            e.0 = expires_at;
        }
    }

    /// Whether a lease issued under token `generation` is still live, or
    /// an issue under it is in flight.
    pub fn uses_generation(&self, generation: u64) -> bool {
        let now = Instant::now();
        let m = self.lock();
        m.pending.contains_key(&generation) || m.live.values().any(|(end, g)| *g == generation && *end > now)
    }

    pub(crate) fn remove(&self, id: &LeaseId) {
        self.lock().live.remove(id);
    }

    /// Takes every lease that has not ended yet.
    pub fn take_live(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut m = self.lock();
        m.live.drain().filter(|(_, (end, _))| *end > now).map(|(id, _)| id).collect()
    }
}

/// A held credential's lease and what decides its schedule (also what the
/// sealed state keeps of it, see [`crate::state`]).
#[derive(Clone, Debug)]
pub struct Held {
    /// The lease.
    pub lease: Lease,
    /// Learned cap (from a capped renewal) or predicted one.
    pub cap: Option<Instant>,
    /// Token generation that issued the lease.
    pub token_generation: u64,
    /// That token's hard end, when known.
    pub token_end: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct Tracked {
    /// Database secret → its lease, the version published with it, the learned lifetime.
    pub(crate) held: BTreeMap<String, (Held, u64, Option<Duration>)>,
    /// Lease id → secret, lease, drain end.
    pub(crate) draining: BTreeMap<String, (String, Held, Instant)>,
}

/// What lease tasks hold that the store does not show (lease ids, caps,
/// issuing generations), kept for the state writer. Cheap when no state is
/// configured: a map update per issue or renewal.
#[derive(Clone, Default)]
pub struct Tracker {
    pub(crate) inner: Arc<Mutex<Tracked>>,
    pub(crate) changed: Arc<tokio::sync::Notify>,
}

impl Tracker {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the lease `secret` holds now (or that it holds none).
    pub fn set_held(&self, secret: &str, held: Option<(&Held, u64, Option<Duration>)>) {
        {
            let mut m = self.lock();
            match held {
                Some((h, v, l)) => m.held.insert(secret.to_owned(), (h.clone(), v, l)),
                None => m.held.remove(secret),
            };
        }
        self.changed.notify_one();
    }

    /// Records a replaced lease that is draining (or, `None`, that it is done).
    pub fn set_draining(&self, id: &LeaseId, entry: Option<(&str, &Held, Instant)>) {
        {
            let mut m = self.lock();
            match entry {
                Some((s, h, end)) => m.draining.insert(id.as_str().to_owned(), (s.to_owned(), h.clone(), end)),
                None => m.draining.remove(id.as_str()),
            };
        }
        self.changed.notify_one();
    }

    /// Forgets every lease (they were revoked at shutdown).
    pub(crate) fn clear_leases(&self) {
        let mut m = self.lock();
        m.held.clear();
        m.draining.clear();
    }
}
