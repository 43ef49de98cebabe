//! Writes the state file after changes (coalesced) and once at shutdown,
//! from what the tasks hold ([`Tracker`]), the store and the auth state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::file::{Sealed, SealedDrain, SealedLease, SealedSecret, SealedToken, encode};
use super::identity::Identity;
use super::resume::{Clock, fingerprint};
use crate::auth::AuthHandle;
use crate::config::state::StateConfig;
use crate::config::{Resume, SecretSpec};
use crate::ledger::{Held, Tracker};
use crate::store::Store;

/// How long the writer waits after a change before writing, so a burst of
/// changes (a token renewal, then each lease renewing) costs one write.
pub const COALESCE: Duration = Duration::from_secs(1);

/// Writes the state file: after changes (coalesced) and once at shutdown.
#[derive(Clone)]
pub struct Writer {
    cfg: StateConfig,
    identity: Identity,
    specs: Vec<SecretSpec>,
    store: Store,
    auth: AuthHandle,
    tracker: Tracker,
    metrics: Arc<crate::metrics::Metrics>,
    /// The last write error, so a failing disk logs once per new error.
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// A writer for `cfg`.
    pub fn new(
        cfg: StateConfig,
        identity: Identity,
        specs: Vec<SecretSpec>,
        store: Store,
        auth: AuthHandle,
        tracker: Tracker,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Writer {
        Writer { cfg, identity, specs, store, auth, tracker, metrics, last_error: Arc::default() }
    }

    /// Builds the plaintext from what the tasks hold now. `live` false
    /// leaves out the token and every lease (they were revoked).
    fn sealed(&self, clock: Clock, live: bool) -> Sealed {
        let w = |t: Instant| clock.to_wall(t);
        let token = self.auth.current();
        let token = token.filter(|t| live && !self.auth.is_dead(t.generation) && t.expires_at > clock.now);
        let token_expires = |g: u64| match &token {
            Some(t) if t.generation == g => Some(t.expires_at),
            _ => self.auth.token_expiry(g),
        };
        let lease = |h: &Held, learned: Option<Duration>| SealedLease {
            id: h.lease.id.as_str().to_owned(),
            issued_ms: w(h.lease.issued_at),
            expires_ms: w(h.lease.expires_at),
            ttl_ms: u64::try_from(h.lease.ttl.as_millis()).unwrap_or(u64::MAX),
            renewable: h.lease.renewable,
            cap_ms: h.cap.map(w),
            generation: h.token_generation,
            token_end_ms: h.token_end.map(w),
            token_expires_ms: token_expires(h.token_generation).map(w),
            learned_ms: learned.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        };
        let tracked = self.tracker.lock();
        let snap = self.store.snapshot();
        let mut secrets = Vec::new();
        for spec in &self.specs {
            let Some(entry) = snap.get(spec.name.as_str()) else { continue };
            let Some(value) = entry.live(clock.now) else { continue };
            let sealed_lease = match spec.source.resume() {
                Resume::Lease if live => match tracked.held.get(&spec.name) {
                    // Only the value published with this very lease.
                    Some((h, v, l)) if *v == entry.version && h.lease.expires_at > clock.now => Some(lease(h, *l)),
                    _ => continue,
                },
                Resume::Value => None,
                Resume::Lease | Resume::Fresh => continue,
            };
            secrets.push(SealedSecret {
                name: spec.name.clone(),
                spec: fingerprint(&spec.source),
                version: entry.version,
                values: value.iter().map(|(k, v)| (k.to_owned(), v.expose_secret().to_owned())).collect(),
                lease: sealed_lease,
            });
        }
        let draining = if live {
            tracked
                .draining
                .values()
                .filter(|(_, h, _)| h.lease.expires_at > clock.now)
                .filter_map(|(name, h, end)| {
                    let spec = self.specs.iter().find(|s| &s.name == name)?;
                    Some(SealedDrain {
                        secret: name.clone(),
                        spec: fingerprint(&spec.source),
                        lease: lease(h, None),
                        drain_end_ms: w(*end),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let token = token.map(|t| SealedToken {
            secret: t.secret.expose_secret().to_owned(),
            generation: t.generation,
            issued_ms: w(t.issued_at),
            expires_ms: w(t.expires_at),
            hard_end_ms: t.hard_end.map(w),
            ttl_s: t.ttl.as_secs(),
            renewable: t.renewable,
        });
        Sealed { identity: self.identity.clone(), written_ms: clock.wall_ms, token, secrets, draining }
    }

    /// Seals and writes what the tasks hold now.
    pub async fn write(&self, live: bool) {
        let bytes = encode(&self.sealed(Clock::now(), live), &self.cfg.key);
        let path = self.cfg.path.clone();
        let res = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                crate::write::ensure_dir(dir)?;
            }
            crate::write::write_own_file(&path, &bytes, "the state file")
        })
        .await;
        let err = match res {
            Ok(Ok(())) => {
                self.metrics.state_write(true);
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if err.is_some() {
            self.metrics.state_write(false);
        }
        // Every failure is counted; the same failure again is not logged again.
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &err
            && last.as_ref() != Some(e)
        {
            tracing::warn!(path = %self.cfg.path.display(), error = %e, "could not write the state file");
        }
        *last = err;
    }

    /// Final write at shutdown; `revoked` when the leases and token were
    /// revoked (they must not be resumed).
    pub async fn finish(&self, revoked: bool) {
        if revoked {
            self.tracker.clear_leases();
        }
        self.write(!revoked).await;
    }

    /// Writes after every change (token, store, leases), coalescing what
    /// happens within [`COALESCE`], until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut store_rx = self.store.subscribe();
        let mut token_rx = self.auth.watch();
        let changed = self.tracker.changed.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.notified() => {}
                r = store_rx.changed() => if r.is_err() { return },
                r = token_rx.changed() => if r.is_err() { return },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(COALESCE) => {}
            }
            store_rx.borrow_and_update();
            token_rx.borrow_and_update();
            self.write(true).await;
        }
    }
}
