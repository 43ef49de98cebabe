//! vaultlet: a secrets sidecar for HashiCorp Vault and OpenBao.
//!
//! It logs in (AppRole, JWT or Kubernetes), leases dynamic database
//! credentials and reads KV secrets, keeps them fresh, and hands them to the
//! app next to it over a Unix socket and as env files.
//!
//! # Architecture
//!
//! How the parts below talk to each other is drawn in
//! `docs/architecture.md`, with a tour of the source files.
//!
//! * [`config`] turns the TOML file into validated types; nothing else parses.
//! * [`vault`] is the wall around vaultrs; everything past it is our types.
//!   The tasks hold it as `Arc<dyn vault::Backend>`, so their rules are
//!   tested against a scripted server on tokio's paused clock.
//! * [`auth`] owns the token: login, renew-self, login again before it dies.
//!   It publishes one [`auth::AuthState`] (token, login problem, token ends,
//!   dead tokens); the others only read it, and report a 403 back.
//! * [`lease`] runs one task per secret: every leased kind (database, PKI)
//!   runs one loop, KV its own re-read; [`lease::schedule`] holds the timing
//!   and [`lease::retry`] the one decision of what follows a failure. A
//!   replaced lease is drained by a task of its own, awaited at shutdown.
//! * [`store`] holds the current value and version of every secret.
//! * [`api`] serves the store on the socket; [`render`] writes env files.
//! * [`state`] (optional) seals the token, leases and values to a file and,
//!   on the next start, hands them back before any task talks to Vault.
//! * [`supervise`] is the one lifecycle of `vaultlet run` and `vaultlet
//!   exec`: start, readiness, sd_notify (watchdog included), shutdown and
//!   revocation; [`exec`] adds only the app.
//!
//! [`daemon`] wires these together ([`start`], or [`start_with`] on any
//! [`vault::Backend`]); [`run`] supervises them until `shutdown`
//! is cancelled and everything has stopped (leases revoked first, if
//! configured).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod harden;
pub mod import;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod rejected;
pub mod render;
pub mod secret;
pub mod state;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod token;
pub mod vault;
pub mod write;

pub use config::Config;
pub use daemon::{REVOKE_DEADLINE, RunError, Running, start, start_with};
pub use supervise::run;
