//! A database secret: credentials from `GET <mount>/creds/<role>`, with a
//! Vault lease, driven by the loop in [`super::leased`].
//!
//! What is particular to it: the role's `max_ttl` is read once, after the
//! first credential is out (so it costs start-up nothing), if the policy
//! lets us; without it the lease's cap is learned from the first capped
//! renewal. Either way the lifetime learned is remembered, so the next
//! lease is replaced in good time from the start, and it is saved with the
//! lease in the sealed state ([`crate::state`]).
//!
//! The value held is a Vault lease ([`Held`]): renewed through
//! `sys/leases/renew`, looked up through `sys/leases/lookup`, revoked
//! through `sys/leases/revoke`, entered in the ledger of leases
//! ([`crate::ledger::Leases`]) and, draining, in the sealed state. Any
//! other kind whose value is a Vault lease (a dynamic secret of another
//! engine) holds a [`Held`] too and gets all of that from here.

use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::time::Instant;

use super::leased::{self, LeasedKind, LeasedValue};
use super::retry::Class;
use super::schedule::{self, LeaseTimes};
use super::task::Cx;
use crate::config::{RevokeOld, SecretSpec};
use crate::ledger::Held;
use crate::secret::{Lease, Token};
use crate::store::LeaseView;
use crate::vault::{Call, Renewed, VaultError};

/// Runs the task for one database secret until shutdown. `resumed` is the
/// lease (and learned lifetime) taken over from the sealed state.
pub(super) async fn run(
    cx: Cx,
    spec: SecretSpec,
    mount: String,
    role: String,
    resumed: Option<(Held, Option<Duration>)>,
) {
    let version = cx.store.snapshot().get(spec.name.as_str()).map_or(0, |e| e.version);
    let (held, learned) = match resumed {
        Some((h, learned)) => {
            cx.leases.add(&h.lease.id, h.lease.expires_at, h.token_generation);
            (Some(h), learned)
        }
        None => (None, None),
    };
    // A resumed lease whose lifetime is known needs no role read either.
    let asked_max_ttl = held.is_some() && learned.is_some();
    let kind = Database { mount, role, learned, asked_max_ttl, version };
    leased::run(cx, spec, kind, held).await
}

struct Database {
    mount: String,
    role: String,
    /// Lifetime (issue → cap) learned from an earlier lease of this secret.
    learned: Option<Duration>,
    /// Whether the role's `max_ttl` was asked for.
    asked_max_ttl: bool,
    /// The store version of the held credential (for the sealed state).
    version: u64,
}

// === impl LeasedKind for Database ===

impl LeasedKind for Database {
    type Value = Held;
    type Error = VaultError;

    const WHAT: &'static str = "database secret";
    const ENDED: &'static str = "lease ended before it could be renewed or replaced";
    const ENDED_FAILING: &'static str = "lease ended while vault could not be reached";

    fn class(e: &VaultError) -> Class {
        Class::of(e)
    }

    async fn issue(&mut self, cx: &Cx, spec: &SecretSpec, token: &Token) -> Result<Held, VaultError> {
        let _pending = cx.leases.pending(token.generation);
        let creds = cx.vault.db_creds(&token.secret, &self.mount, &self.role).await?;
        cx.metrics.credential_issued(&spec.name);
        let now = Instant::now();
        let lease = Lease {
            id: creds.lease_id,
            issued_at: now,
            expires_at: schedule::after(now, creds.ttl),
            ttl: creds.ttl,
            renewable: creds.renewable,
        };
        cx.leases.add(&lease.id, lease.expires_at, token.generation);
        let held = Held {
            cap: self.learned.map(|l| schedule::after(now, l)),
            lease,
            token_generation: token.generation,
            token_end: token.hard_end,
        };
        let version = cx.store.publish(&spec.name, creds.data, Some(held.view()));
        tracing::info!(secret = %spec.name, version, lease = ?held.lease.id, ttl = ?creds.ttl, renewable = held.lease.renewable, "issued database credential");
        self.version = version;
        Ok(held)
    }

    async fn learn(&mut self, cx: &Cx, spec: &SecretSpec, token: &Token, held: &mut Held) -> bool {
        if self.asked_max_ttl {
            return false;
        }
        // Once, after the first credential is out: the role's max_ttl, if
        // the policy lets us read it.
        self.asked_max_ttl = true;
        match cx.vault.db_role_max_ttl(&token.secret, &self.mount, &self.role).await {
            Ok(Some(max)) => {
                tracing::debug!(secret = %spec.name, max_ttl = ?max, "read the role's max_ttl");
                self.learned = Some(max);
                held.cap = Some(schedule::after(held.lease.issued_at, max));
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(secret = %spec.name, error = %e, "role max_ttl not readable; will learn it from renewals");
                false
            }
        }
    }

    fn renewed(&mut self, held: &Held, r: &Renewed) {
        if r.capped {
            // Capped: this is the role's max_ttl. Remember the lifetime
            // so the next lease is replaced in good time from the start.
            self.learned = Some(held.lease.expires_at - held.lease.issued_at);
        }
    }

    fn track(&self, cx: &Cx, spec: &SecretSpec, held: Option<&Held>) {
        cx.tracker.set_held(&spec.name, held.map(|h| (h, self.version, self.learned)));
    }
}

// === impl LeasedValue for Held (a Vault lease) ===

impl LeasedValue for Held {
    const DIES_WITH_TOKEN: bool = true;
    const LOOKED_UP: bool = true;

    fn times(&self) -> LeaseTimes {
        let hard_end = match (self.cap, self.token_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LeaseTimes {
            issued_at: self.lease.issued_at,
            expires_at: self.lease.expires_at,
            renewable: self.lease.renewable,
            hard_end,
        }
    }

    fn view(&self) -> LeaseView {
        LeaseView { expires_at: self.lease.expires_at, ttl: self.lease.ttl, renewable: self.lease.renewable }
    }

    fn token(&self) -> (u64, Option<Instant>) {
        (self.token_generation, self.token_end)
    }

    fn set_token_end(&mut self, end: Instant) {
        self.token_end = Some(end);
    }

    fn renew<'a>(&'a mut self, cx: &'a Cx, token: &'a SecretString) -> Option<Call<'a, Renewed>> {
        Some(Box::pin(async move {
            let r = cx.vault.renew_lease(token, &self.lease.id, self.lease.ttl).await?;
            self.lease.expires_at = schedule::after(Instant::now(), r.ttl);
            self.lease.renewable = r.renewable;
            if r.capped {
                self.cap = Some(self.lease.expires_at);
            }
            cx.leases.extend(&self.lease.id, self.lease.expires_at);
            Ok(r)
        }))
    }

    fn look_up<'a>(&'a self, cx: &'a Cx, token: &'a SecretString) -> Option<Call<'a, ()>> {
        Some(cx.vault.lookup_lease(token, &self.lease.id))
    }

    fn revoke<'a>(&'a self, cx: &'a Cx, secret: &'a str, token: &'a SecretString) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match cx.vault.revoke_lease(token, &self.lease.id).await {
                Ok(()) => tracing::info!(secret = %secret, lease = ?self.lease.id, "revoked replaced credential"),
                Err(e) => {
                    tracing::warn!(secret = %secret, error = %e, "could not revoke replaced credential; it will expire")
                }
            }
        })
    }

    /// Always: a replaced lease is kept renewed while it drains, even when
    /// it is left to run out afterwards.
    fn drains(_: RevokeOld) -> bool {
        true
    }

    fn draining(&self, cx: &Cx, secret: &str, until: Option<Instant>) {
        if until.is_some() {
            cx.leases.add(&self.lease.id, self.lease.expires_at, self.token_generation);
        }
        cx.tracker.set_draining(&self.lease.id, until.map(|end| (secret, self, end)));
    }

    fn forget(&self, cx: &Cx) {
        cx.leases.remove(&self.lease.id);
    }

    fn withdrawn(&self, secret: &str, why: &str) {
        tracing::error!(secret = %secret, lease = ?self.lease.id, "{why}; credential withdrawn");
    }
}
