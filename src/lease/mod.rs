//! One task per configured secret: fetch → publish → renew → replace.
//!
//! Every leased secret — a database credential with its lease, a PKI
//! certificate — runs the one loop in [`leased`]: issue, renew, replace
//! before the end, drain the replaced value, revoke it. A kind supplies
//! only what differs (`database.rs`, `pki.rs`): how a value is issued, and
//! whether and how it renews, is looked up, is revoked and is kept in the
//! sealed state. A KV secret has no lease: its task (`kv.rs`) re-reads it
//! every `refresh`.
//!
//! Whatever the lease times say, two credentials of one secret are issued at
//! least [`MIN_ISSUE_INTERVAL`] apart, so a server answering tiny TTLs cannot
//! make vaultlet hammer it (the issue bucket in [`crate::vault`] caps all
//! secrets together).
//!
//! A lease can also die behind vaultlet's back: an operator revokes it, or
//! revokes the token that created it (Vault revokes a token's leases with
//! it). Three things notice that well before the next renewal:
//!
//! * the task looks its lease up (`sys/leases/lookup`) every `verify_every`;
//!   a lease Vault no longer knows is withdrawn and replaced at once, a
//!   lookup that fails for any other reason changes nothing;
//! * the auth task confirms a dead token ([`crate::auth::AuthState::dead`]): every
//!   credential issued under it is withdrawn and replaced as soon as the new
//!   token is there, and a 403 retry waits for that token, not for the slow
//!   backoff;
//! * the app reports a refused login (`POST /v1/secrets/{name}/rejected`,
//!   see [`crate::rejected`]): the task looks the lease up at once.
//!
//! After a restart with `[state]`, a task may start with a lease taken over
//! from the sealed state ([`crate::state`]): its value is served already, no
//! credential is issued while it lives, and it is looked up at once (gone →
//! replaced at once, like a lease revoked behind our back). Leases that were
//! draining are handed to [`drain`] again with their old drain end.
//!
//! Errors never revoke or drop anything that is still valid. Each loop turn
//! makes one attempt; what follows a failure is decided in one place,
//! [`retry::decide`], for every task here and the auth task. A failure is
//! logged once, recorded as the secret's `problem` (shown by `/v1/ready`)
//! and retried with capped backoff: fast for transient failures (connection
//! refused, 5xx, sealed), slow for refusals a human must fix (403, unknown
//! role), at once with a new token after a 403. A held value stays served
//! until its lease ends; then it is withdrawn.
//!
//! The tasks talk to Vault through [`crate::vault::Backend`], so the tests
//! below drive them against a scripted server on tokio's paused clock.

mod database;
mod kv;
mod leased;
pub mod pki;
pub mod retry;
pub mod schedule;
mod task;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{SecretSource, SecretSpec};

pub use crate::ledger::{Held, Leases, Pending};
pub use task::{Certs, Cx, MIN_ISSUE_INTERVAL};

/// Runs the task for one secret until shutdown. `resumed` is the lease (and
/// learned lifetime) a database secret takes over from the sealed state:
/// it is served already, and looked up with Vault at once.
///
/// A new leased kind is one more arm here, starting its file's `run`.
pub async fn run(cx: Cx, spec: SecretSpec, resumed: Option<(Held, Option<Duration>)>) {
    match spec.source.clone() {
        SecretSource::Database { mount, role } => database::run(cx, spec, mount, role, resumed).await,
        SecretSource::Kv { mount, path, version } => kv::run(cx, spec, &mount, &path, version).await,
        SecretSource::Pki(req) => pki::run(cx, spec, req).await,
    }
}

/// Keeps a replaced lease usable until `drain_end`, then revokes it (or
/// lets it run out). Also takes over leases that were draining when the
/// previous process stopped (see [`crate::state`]).
pub async fn drain(cx: Cx, spec: SecretSpec, old: Held, drain_end: Instant) {
    leased::drain(cx, spec, old, drain_end).await
}

#[cfg(test)]
mod tests;
