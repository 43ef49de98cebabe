//! The running daemon: [`start`] wires the tasks together (auth, one per
//! secret, files, socket, metrics, the state writer); [`Running::stop`]
//! stops them and revokes what is held, if configured. `supervise` drives
//! this for `vaultlet run` and `vaultlet exec`. [`start_with`] does the same
//! against any [`vault::Backend`]: the tests run the whole lifecycle on the
//! scripted fake and tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{api, auth, config, lease, metrics, render, state, store, vault};

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

/// The running daemon: its tasks and what they share.
pub struct Running {
    vault: Arc<dyn vault::Backend>,
    store: store::Store,
    auth: auth::AuthHandle,
    leases: lease::Leases,
    certs: lease::pki::Certs,
    tasks: CancellationToken,
    set: JoinSet<()>,
    /// Drain tasks (spawned by the secret tasks as they replace leases).
    drains: tokio_util::task::TaskTracker,
    auth_task: tokio::task::JoinHandle<()>,
    first_writes: Vec<tokio::sync::oneshot::Receiver<()>>,
    revoke_on_shutdown: bool,
    state: Option<state::Writer>,
}

/// Starts every task: auth, one per secret, files, socket. Fails only on
/// local set-up problems (TLS files, the socket path).
pub fn start(config: &Config) -> Result<Running, RunError> {
    let metrics = metrics::Metrics::new();
    let vault: Arc<dyn vault::Backend> = Arc::new(vault::Vault::new(&config.vault)?.with_metrics(metrics.clone()));
    start_on(config, vault, metrics)
}

/// [`start`] against the given Vault: any [`vault::Backend`] (the scripted
/// fake, in the unit tests). Every task, the files, the socket and the
/// sealed state are those of [`start`]; only what answers for Vault differs
/// (and the per-request Vault metrics, which [`start`]'s client records).
pub fn start_with(config: &Config, vault: Arc<dyn vault::Backend>) -> Result<Running, RunError> {
    start_on(config, vault, metrics::Metrics::new())
}

/// [`start_with`], counting into `metrics` (which [`start`]'s Vault client
/// counts into too).
fn start_on(
    config: &Config,
    vault: Arc<dyn vault::Backend>,
    metrics: Arc<metrics::Metrics>,
) -> Result<Running, RunError> {
    // The auth state is read by the store (a login problem is why a secret
    // never fetched is missing), so its channel exists before either.
    let (auth_tx, auth_rx) = auth::channel();
    let store = store::Store::new(config.secrets.iter().map(|s| s.name.as_str())).with_auth(auth_rx.clone());
    // Bind first, so a socket problem stops us before we lease anything.
    let bound = config.socket.as_ref().map(|s| api::bind(s, &config.secrets)).transpose()?;

    // The sealed state is read and decided on before any task starts, so
    // what it holds is served before Vault is asked anything.
    let (plan, identity) = match &config.state {
        None => (state::Plan::default(), None),
        Some(s) => match state::Identity::of(config) {
            Ok(id) => (state::load(s, &id, &config.secrets, &metrics), Some(id)),
            Err(e) => {
                metrics.state_load_failure("unreadable");
                tracing::warn!("state file {} not used ({e}); starting fresh", s.path.display());
                (state::Plan::default(), None)
            }
        },
    };
    let mut resumed_leases = std::collections::BTreeMap::new();
    let resumed = plan.secrets.len();
    for (name, r) in plan.secrets {
        let view = r.lease.as_ref().map(|(h, _)| store::LeaseView {
            expires_at: h.lease.expires_at,
            ttl: h.lease.ttl,
            renewable: h.lease.renewable,
        });
        store.restore(&name, r.data, r.version, view);
        if let Some(l) = r.lease {
            resumed_leases.insert(name, l);
        }
    }
    if config.state.is_some() {
        metrics.state_resumed(resumed);
        if resumed > 0 || plan.token.is_some() {
            tracing::info!(
                secrets = resumed,
                token_reused = plan.token.is_some(),
                ended = plan.ended,
                "resumed {resumed} secrets from the state file ({})",
                if plan.token.is_some() { "token reused" } else { "new login" }
            );
        }
    }
    let saved_token = plan.token.as_ref().map(|t| t.secret.clone());

    let tasks = CancellationToken::new();
    let leases = lease::Leases::default();
    let (auth, auth_task) = auth::spawn(
        vault.clone(),
        config.auth.clone(),
        (auth_tx, auth_rx),
        leases.clone(),
        metrics.clone(),
        plan.token,
        tasks.clone(),
    );
    let cx = lease::Cx {
        vault: vault.clone(),
        store: store.clone(),
        auth: auth.clone(),
        leases: leases.clone(),
        shutdown: tasks.clone(),
        certs: lease::pki::Certs::default(),
        metrics: metrics.clone(),
        tracker: state::Tracker::default(),
        drains: tokio_util::task::TaskTracker::new(),
    };
    let certs = cx.certs.clone();
    let drains = cx.drains.clone();

    let mut set = JoinSet::new();
    for spec in config.secrets.iter().cloned() {
        let resumed = resumed_leases.remove(&spec.name);
        // Every line a secret's task logs — including those from the Vault
        // client it calls — carries the secret's name.
        let span = tracing::info_span!("secret", name = %spec.name);
        set.spawn(tracing::Instrument::instrument(lease::run(cx.clone(), spec, resumed), span));
    }
    for (name, held, drain_end) in plan.draining {
        if let Some(spec) = config.secrets.iter().find(|s| s.name == name) {
            let span = tracing::info_span!("secret", name = %spec.name);
            let drain = lease::drain(cx.clone(), spec.clone(), held, drain_end);
            drains.spawn(tracing::Instrument::instrument(drain, span));
        }
    }
    tokio::spawn(state::revoke_unresumable(vault.clone(), saved_token, plan.revoke));
    let state = match (&config.state, identity) {
        (Some(s), Some(id)) => {
            let w = state::Writer::new(
                s.clone(),
                id,
                config.secrets.clone(),
                store.clone(),
                auth.clone(),
                cx.tracker.clone(),
                metrics.clone(),
            );
            set.spawn(w.clone().run(tasks.clone()));
            Some(w)
        }
        _ => None,
    };
    let mut first_writes = Vec::new();
    let mut bundles: std::collections::BTreeMap<String, Vec<config::FileSpec>> = Default::default();
    for spec in config.files.iter().filter(|f| f.bundle.is_some()) {
        bundles.entry(spec.bundle.clone().unwrap_or_default()).or_default().push(spec.clone());
    }
    for (bundle, specs) in bundles {
        let (tx, rx) = tokio::sync::oneshot::channel();
        first_writes.push(rx);
        set.spawn(render::run_bundle(bundle, specs, store.subscribe(), metrics.clone(), tasks.clone(), Some(tx)));
    }
    for spec in config.files.iter().filter(|f| f.bundle.is_none()).cloned() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        first_writes.push(rx);
        set.spawn(render::run_file(spec, store.subscribe(), metrics.clone(), tasks.clone(), Some(tx)));
    }
    if let Some(b) = bound {
        set.spawn(api::serve(b, store.clone(), metrics.clone(), tasks.clone()));
    }
    if let Some(m) = config.metrics.clone() {
        set.spawn(metrics::serve(m, metrics.register(store.clone(), config.state.is_some()), tasks.clone()));
    }
    tracing::info!(secrets = config.secrets.len(), files = config.files.len(), "vaultlet started");
    Ok(Running {
        vault,
        store,
        auth,
        leases,
        certs,
        tasks,
        set,
        drains,
        auth_task,
        first_writes,
        revoke_on_shutdown: config.revoke_on_shutdown,
        state,
    })
}

impl Running {
    /// The secrets.
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Waits until every secret is held and every file written once.
    pub async fn ready(&mut self) {
        for rx in std::mem::take(&mut self.first_writes) {
            let _ = rx.await;
        }
        let mut rx = self.store.subscribe();
        while !self.store.not_ready(tokio::time::Instant::now()).is_empty() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops every task, then revokes leases and the token if configured.
    pub async fn stop(mut self) {
        self.tasks.cancel();
        while self.set.join_next().await.is_some() {}
        let _ = self.auth_task.await;
        // Drains stop at once, but one may be revoking its lease: let that
        // finish (bounded), so the revocations below do not race it.
        self.drains.close();
        if tokio::time::timeout(REVOKE_DEADLINE, self.drains.wait()).await.is_err() {
            tracing::warn!("a replaced lease's revocation did not finish in time");
        }
        if self.revoke_on_shutdown {
            revoke_all(&*self.vault, &self.auth, &self.leases, &self.certs).await;
        }
        // After revocation: what was revoked must not be resumed.
        if let Some(w) = &self.state {
            w.finish(self.revoke_on_shutdown).await;
        }
        tracing::info!("stopped");
    }
}

/// Everything revocation at shutdown may take: well inside systemd's
/// default `TimeoutStopSec` (90 s) and a container runtime's 10 s grace.
pub const REVOKE_DEADLINE: Duration = Duration::from_secs(5);

/// Revokes every live lease at once, then the tokens, all under one
/// deadline: the leases first, because revoking a token revokes its leases
/// but Vault then does it in the background, after we have exited. The
/// tokens keep the last 1.5 s of it, so a Vault that hangs on lease
/// revocations still gets them (and with them, the leases).
async fn revoke_all(
    vault: &dyn vault::Backend,
    auth: &auth::AuthHandle,
    leases: &lease::Leases,
    certs: &lease::pki::Certs,
) {
    let start = tokio::time::Instant::now();
    let deadline = start + REVOKE_DEADLINE;
    let leases_deadline = deadline - Duration::from_millis(1500);
    let Some(token) = auth.current() else { return };
    let ids = leases.take_live();
    let revokes = ids.iter().map(|id| {
        let secret = &token.secret;
        async move {
            match tokio::time::timeout_at(leases_deadline, vault.revoke_lease(secret, id)).await {
                Ok(Ok(())) => tracing::info!(lease = ?id, "revoked lease"),
                Ok(Err(e)) => tracing::warn!(lease = ?id, error = %e, "could not revoke lease"),
                Err(_) => tracing::warn!(lease = ?id, "revoking lease timed out"),
            }
        }
    });
    futures_util::future::join_all(revokes).await;
    let certs = certs.take_live();
    let revokes = certs.iter().map(|(mount, serial)| {
        let secret = &token.secret;
        async move {
            match tokio::time::timeout_at(leases_deadline, vault.pki_revoke(secret, mount, serial)).await {
                Ok(Ok(())) => tracing::info!(%serial, "revoked certificate"),
                Ok(Err(e)) => tracing::warn!(%serial, error = %e, "could not revoke certificate"),
                Err(_) => tracing::warn!(%serial, "revoking certificate timed out"),
            }
        }
    });
    futures_util::future::join_all(revokes).await;
    let mut tokens = auth.retired();
    tokens.push(token);
    let revokes = tokens.iter().map(|t| async move {
        match tokio::time::timeout_at(deadline, vault.revoke_self(&t.secret)).await {
            Ok(Ok(())) => tracing::info!(generation = t.generation, "revoked token"),
            Ok(Err(e)) => tracing::warn!(generation = t.generation, error = %e, "could not revoke token"),
            Err(_) => tracing::warn!(generation = t.generation, "revoking the token timed out"),
        }
    });
    futures_util::future::join_all(revokes).await;
}

#[cfg(test)]
mod tests;
