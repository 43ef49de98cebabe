//! vaultlet: a secrets sidecar for HashiCorp Vault and OpenBao.
//!
//! It logs in with AppRole, leases dynamic database credentials and reads KV
//! secrets, keeps them fresh, and hands them to the app next to it over a
//! Unix socket and as env files.
//!
//! # Architecture
//!
//! ```text
//!   config ──► main ──► run()
//!                         │
//!   auth ── token (watch) ─┼──► lease task per secret ──► store (watch)
//!     │                    │        │  renew / replace      │
//!     └──── vault ◄────────┴────────┘                       ├──► api (socket)
//!          (the only user of vaultrs)                       └──► render (env files)
//! ```
//!
//! * [`config`] turns the TOML file into validated types; nothing else parses.
//! * [`vault`] is the wall around vaultrs; everything past it is our types.
//! * [`auth`] owns the token: login, renew-self, login again before it dies.
//! * [`lease`] runs one task per secret; [`lease::schedule`] holds the timing.
//! * [`store`] holds the current value and version of every secret.
//! * [`api`] serves the store on the socket; [`render`] writes env files.
//!
//! [`run`] wires these together and returns when `shutdown` is cancelled and
//! everything has stopped (leases revoked first, if configured).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod lease;
pub mod render;
pub mod secret;
pub mod store;
pub mod vault;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Setting up the Vault client failed.
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    /// The socket could not be created.
    #[error(transparent)]
    Socket(#[from] api::BindError),
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let vault = Arc::new(vault::Vault::new(&config.vault)?);
    let store = store::Store::new(config.secrets.iter().map(|s| s.name.as_str()));
    // Bind first, so a socket problem stops us before we lease anything.
    let bound = config.socket.as_ref().map(api::bind).transpose()?;

    let tasks = shutdown.child_token();
    let (auth, auth_task) = auth::spawn(vault.clone(), config.auth.clone(), store.clone(), tasks.clone());
    let leases = lease::Leases::default();
    let cx = lease::Cx {
        vault: vault.clone(),
        store: store.clone(),
        auth: auth.clone(),
        leases: leases.clone(),
        shutdown: tasks.clone(),
    };

    let mut set = JoinSet::new();
    for spec in config.secrets.iter().cloned() {
        set.spawn(lease::run(cx.clone(), spec));
    }
    for spec in config.env_files.iter().cloned() {
        set.spawn(render::run_env_file(spec, store.subscribe(), tasks.clone()));
    }
    if let Some(b) = bound {
        set.spawn(api::serve(b, store.clone(), tasks.clone()));
    }
    tracing::info!(secrets = config.secrets.len(), env_files = config.env_files.len(), "vaultlet started");

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    while set.join_next().await.is_some() {}
    let _ = auth_task.await;

    if config.revoke_on_shutdown {
        revoke_all(&vault, &auth, &leases).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn revoke_all(vault: &vault::Vault, auth: &auth::AuthHandle, leases: &lease::Leases) {
    let Some(token) = auth.token.borrow().clone() else { return };
    let ids = leases.take_live();
    for id in &ids {
        match tokio::time::timeout(Duration::from_secs(10), vault.revoke_lease(&token.secret, id)).await {
            Ok(Ok(())) => tracing::info!(lease = ?id, "revoked lease"),
            Ok(Err(e)) => tracing::warn!(lease = ?id, error = %e, "could not revoke lease"),
            Err(_) => tracing::warn!(lease = ?id, "revoking lease timed out"),
        }
    }
    match vault.revoke_self(&token.secret).await {
        Ok(()) => tracing::info!("revoked token"),
        Err(e) => tracing::warn!(error = %e, "could not revoke token"),
    }
}
