//! From a state file to a start: both clocks read at once ([`Clock`]), what
//! was saved in this process's types ([`Saved`]), and the one pure decision
//! of what is resumed, revoked or forgotten ([`decide`]), tested on the
//! paused clock without Vault.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use sha2::Digest;
use tokio::time::Instant;

use super::file::{Sealed, SealedLease};
use super::identity::hex;
use crate::config::{Resume, RevokeOld, SecretSource, SecretSpec};
use crate::ledger::Held;
use crate::secret::{Lease, LeaseId, SecretData, Token};

// === times ===

/// One reading of both clocks: instants are process-local, the file needs
/// wall-clock times that mean the same after a restart.
#[derive(Clone, Copy)]
pub struct Clock {
    /// The monotonic reading.
    pub now: Instant,
    /// The same moment, milliseconds since the UNIX epoch.
    pub wall_ms: u64,
}

impl Clock {
    /// Both clocks now.
    pub fn now() -> Clock {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Clock { now: Instant::now(), wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX) }
    }

    pub(super) fn to_wall(self, t: Instant) -> u64 {
        if t >= self.now {
            let d = u64::try_from((t - self.now).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_add(d)
        } else {
            let d = u64::try_from((self.now - t).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_sub(d)
        }
    }

    /// `now + (ms - wall_now)`, saturating: a time before what the monotonic
    /// clock can express (an issue time before boot) becomes `now`.
    pub(super) fn to_instant(self, ms: u64) -> Instant {
        if ms >= self.wall_ms {
            crate::lease::schedule::after(self.now, Duration::from_millis(ms - self.wall_ms))
        } else {
            self.now.checked_sub(Duration::from_millis(self.wall_ms - ms)).unwrap_or(self.now)
        }
    }
}

// === what was saved, in our types ===

/// A saved lease, in this process's clock.
#[derive(Clone, Debug)]
pub struct SavedLease {
    /// The lease as the task held it.
    pub held: Held,
    /// The issuing token's end when saved (the lease dies with it).
    pub token_expires: Option<Instant>,
    /// The lifetime learned from a capped renewal.
    pub learned: Option<Duration>,
}

/// A saved secret.
pub struct SavedSecret {
    /// Its name.
    pub name: String,
    /// Fingerprint of the spec it was fetched for.
    pub spec: String,
    /// Its version.
    pub version: u64,
    /// Its value.
    pub data: SecretData,
    /// Its lease (database secrets).
    pub lease: Option<SavedLease>,
}

/// A replaced lease that was still draining.
pub struct SavedDrain {
    /// The secret it belonged to.
    pub name: String,
    /// Fingerprint of that secret's spec.
    pub spec: String,
    /// The lease.
    pub lease: SavedLease,
    /// When it was due to be revoked.
    pub drain_end: Instant,
}

/// Everything a state file held.
#[derive(Default)]
pub struct Saved {
    /// The token.
    pub token: Option<Token>,
    /// The secrets.
    pub secrets: Vec<SavedSecret>,
    /// Replaced leases still draining.
    pub draining: Vec<SavedDrain>,
}

fn lease_from(l: &SealedLease, c: Clock) -> SavedLease {
    let ms = |v: u64| c.to_instant(v);
    SavedLease {
        held: Held {
            lease: Lease {
                id: LeaseId::new(l.id.clone()),
                issued_at: ms(l.issued_ms),
                expires_at: ms(l.expires_ms),
                ttl: Duration::from_millis(l.ttl_ms),
                renewable: l.renewable,
            },
            cap: l.cap_ms.map(ms),
            token_generation: l.generation,
            token_end: l.token_end_ms.map(ms),
        },
        token_expires: l.token_expires_ms.map(ms),
        learned: l.learned_ms.map(Duration::from_millis),
    }
}

pub(super) fn saved_from(mut s: Sealed, c: Clock) -> Saved {
    let ms = |v: u64| c.to_instant(v);
    let token = s.token.as_mut().map(|t| Token {
        secret: SecretString::from(std::mem::take(&mut t.secret)),
        generation: t.generation,
        issued_at: ms(t.issued_ms),
        ttl: Duration::from_secs(t.ttl_s),
        expires_at: ms(t.expires_ms),
        hard_end: t.hard_end_ms.map(ms),
        renewable: t.renewable,
    });
    let secrets = s
        .secrets
        .iter_mut()
        .map(|x| SavedSecret {
            name: x.name.clone(),
            spec: x.spec.clone(),
            version: x.version,
            data: SecretData::new(
                x.values.iter_mut().map(|(k, v)| (k.clone(), SecretString::from(std::mem::take(v)))).collect(),
            ),
            lease: x.lease.as_ref().map(|l| lease_from(l, c)),
        })
        .collect();
    let draining = s
        .draining
        .iter()
        .map(|d| SavedDrain {
            name: d.secret.clone(),
            spec: d.spec.clone(),
            lease: lease_from(&d.lease, c),
            drain_end: ms(d.drain_end_ms),
        })
        .collect();
    Saved { token, secrets, draining }
}

/// A digest of where a secret comes from (never of a value): a saved lease
/// is resumed only for the very source it was issued from.
pub fn fingerprint(source: &SecretSource) -> String {
    hex(&sha2::Sha256::digest(source.canonical().as_bytes()))
}

// === resume decisions ===

/// A secret served from state at start.
pub struct Resumed {
    /// The version it had (kept, so watchers see no change).
    pub version: u64,
    /// The value.
    pub data: SecretData,
    /// Database secrets: the lease the task takes over, and the learned lifetime.
    pub lease: Option<(Held, Option<Duration>)>,
}

/// What a start does with a state file.
#[derive(Default)]
pub struct Plan {
    /// The token to go on with (no login while it lives).
    pub token: Option<Token>,
    /// Secrets served at once, by name.
    pub secrets: BTreeMap<String, Resumed>,
    /// Replaced leases to keep draining: secret name, lease, drain end.
    pub draining: Vec<(String, Held, Instant)>,
    /// Leases Vault still holds that nothing will use: revoke them.
    pub revoke: Vec<LeaseId>,
    /// Leases that ended (or died with their token) while vaultlet was down.
    pub ended: usize,
}

/// Decides, at `now`, what of `saved` is resumed for the secrets `specs`.
///
/// * The token is kept while it has not ended.
/// * A lease lives while neither it nor its issuing token has ended (Vault
///   revokes a token's leases with it; a lease of the saved token whose
///   token ended is gone too).
/// * A live lease is resumed only for a secret of the same name and the same
///   source; a live lease nothing will use is to be revoked.
/// * A KV value is served again for the same name and source.
/// * PKI secrets start fresh.
pub fn decide(saved: Saved, specs: &[SecretSpec], now: Instant) -> Plan {
    let mut plan = Plan::default();
    let token_alive = |t: &Token| t.expires_at > now && t.hard_end.is_none_or(|h| h > now);
    let kept = saved.token.filter(token_alive);
    let saved_gen = kept.as_ref().map(|t| t.generation);
    let lease_alive = |l: &SavedLease| {
        l.held.lease.expires_at > now
            && l.token_expires.is_none_or(|t| t > now)
            && l.held.token_end.is_none_or(|t| t > now)
    };
    let spec_of = |name: &str, fp: &str| specs.iter().find(|s| s.name == name && fingerprint(&s.source) == fp);
    for s in saved.secrets {
        let spec = spec_of(&s.name, &s.spec);
        match (s.lease, spec.map(|x| x.source.resume())) {
            (Some(mut l), Some(Resume::Lease)) if lease_alive(&l) => {
                if Some(l.held.token_generation) != saved_gen {
                    // An older token: nobody renews it, so its current end is
                    // the end of this lease too.
                    l.held.token_end = match (l.held.token_end, l.token_expires) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                plan.secrets.insert(
                    s.name.clone(),
                    Resumed { version: s.version, data: s.data, lease: Some((l.held, l.learned)) },
                );
            }
            (Some(l), _) if lease_alive(&l) => plan.revoke.push(l.held.lease.id),
            (Some(_), _) => plan.ended += 1,
            (None, Some(Resume::Value)) => {
                plan.secrets.insert(s.name.clone(), Resumed { version: s.version, data: s.data, lease: None });
            }
            (None, _) => {}
        }
    }
    for d in saved.draining {
        let spec = spec_of(&d.name, &d.spec);
        if !lease_alive(&d.lease) {
            plan.ended += 1;
        } else if spec.is_some() && d.drain_end > now {
            plan.draining.push((d.name, d.lease.held, d.drain_end));
        } else if spec.is_none_or(|s| s.revoke_old == RevokeOld::Drain) {
            plan.revoke.push(d.lease.held.lease.id);
        }
    }
    plan.token = kept;
    plan
}
