//! AppRole login and token upkeep.
//!
//! One task owns the token. It logs in (reading the role_id and secret_id
//! files on every login, unwrapping a response-wrapped secret_id first when
//! configured), publishes the token on a `watch` channel, renews it at ⅔ of
//! its TTL and logs in again *before* the token reaches the end renewals can
//! no longer move (its max TTL, or the TTL of a non-renewable token).
//!
//! A new login does not disturb the secrets: lease tasks keep what they hold.
//! They do read the token's hard end from this channel, because Vault revokes
//! a token's leases with it; that is how they know to replace credentials
//! issued under a token that is about to die.
//!
//! A token replaced by a new login is revoked (`revoke-self`) once no live
//! lease issued under it remains: Vault revokes a token's leases with it, so
//! revoking it at once would kill the credentials still served or draining.
//! A token that ends by itself first is just let go.
//!
//! Logins are at least [`MIN_LOGIN_INTERVAL`] apart whatever TTL Vault
//! gives, and every login takes from the process-wide issue bucket in
//! [`crate::vault`].
//!
//! Other tasks report a 403 through [`AuthHandle::rejected`]; the task then
//! checks the token with `lookup-self` and logs in again only if the token
//! itself is dead (a 403 from a missing policy capability is not fixed by a
//! new login). A dead token is recorded ([`AuthHandle::is_dead`]) and lease
//! tasks are woken ([`AuthHandle::deaths`]): Vault revoked every lease the
//! token created along with it, so those credentials are withdrawn and
//! replaced as soon as the new token is there, not at their next renewal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::AppRoleConfig;
use crate::lease::Leases;
use crate::lease::schedule::{self, Backoff, after};
use crate::secret::Token;
use crate::store::Store;
use crate::vault::{Vault, VaultError};

/// Shortest time between two logins.
pub const MIN_LOGIN_INTERVAL: Duration = Duration::from_secs(1);

/// How often a replaced token is checked for leases still using it.
const RETIRE_CHECK: Duration = Duration::from_secs(2);

/// A replaced token is kept at least this long: lease tasks see the new
/// token only at their next turn (issues in flight are tracked exactly).
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// What lease tasks hold: the current token, if logged in.
pub type TokenRx = watch::Receiver<Option<Arc<Token>>>;

/// The other tasks' side of the auth task.
#[derive(Clone)]
pub struct AuthHandle {
    /// The current token.
    pub token: TokenRx,
    rejected: mpsc::UnboundedSender<u64>,
    /// The hard end of each token generation once known. A lease outlives
    /// the token that created it only until that token's end, and the watch
    /// channel alone would let a lease task miss the end of a generation
    /// that was replaced before the task looked.
    ends: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Instant>>>,
    /// Replaced tokens not yet revoked (still used by a lease, or in grace).
    retired: Arc<std::sync::Mutex<Vec<Arc<Token>>>>,
    /// Generations Vault confirmed dead (revoked, not just replaced).
    dead: Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    /// Bumped on every confirmed death, to wake lease tasks.
    deaths: Arc<watch::Sender<u64>>,
}

impl AuthHandle {
    /// The hard end of token `generation`, if known.
    pub fn token_end(&self, generation: u64) -> Option<Instant> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner()).get(&generation).copied()
    }

    fn set_token_end(&self, generation: u64, end: Instant) {
        let mut m = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(generation, end);
        // Keep the last few generations; older ones have ended long ago.
        while m.len() > 8 {
            m.pop_first();
        }
    }

    /// The current end of token `generation`, if it is the current token or
    /// a replaced one not revoked yet (the sealed state saves it with each
    /// lease: Vault revokes a lease with its token).
    pub fn token_expiry(&self, generation: u64) -> Option<Instant> {
        if let Some(t) = self.token.borrow().as_ref().filter(|t| t.generation == generation) {
            return Some(t.expires_at);
        }
        let v = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().find(|t| t.generation == generation).map(|t| t.expires_at)
    }

    /// Replaced tokens not revoked yet (for revocation at shutdown).
    pub fn take_retired(&self) -> Vec<Arc<Token>> {
        std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn retire(&self, t: Arc<Token>) {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }

    /// Takes `generation` off the retired list; false if already taken.
    fn unretire(&self, generation: u64) -> bool {
        let mut v = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let before = v.len();
        v.retain(|t| t.generation != generation);
        v.len() != before
    }

    /// Whether Vault confirmed token `generation` dead (its leases died with it).
    pub fn is_dead(&self, generation: u64) -> bool {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).contains(&generation)
    }

    /// A receiver that changes whenever a token is confirmed dead.
    pub fn deaths(&self) -> watch::Receiver<u64> {
        self.deaths.subscribe()
    }

    fn mark_dead(&self, generation: u64) {
        {
            let mut d = self.dead.lock().unwrap_or_else(|p| p.into_inner());
            d.insert(generation);
            while d.len() > 8 {
                d.pop_first();
            }
        }
        self.deaths.send_modify(|n| *n += 1);
    }

    /// Reports that Vault answered 403 to a request made with token `generation`.
    pub fn rejected(&self, generation: u64) {
        let _ = self.rejected.send(generation);
    }
}

/// Why a login could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A credential file could not be read (its content is never shown).
    #[error("cannot read {what} file {path}: {reason}")]
    File {
        /// role_id or secret_id.
        what: &'static str,
        /// The file.
        path: String,
        /// The I/O reason.
        reason: String,
    },
    /// Vault refused or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl AuthError {
    fn is_transient(&self) -> bool {
        match self {
            AuthError::File { .. } => false,
            AuthError::Vault(e) => e.is_transient(),
        }
    }
}

/// Starts the auth task; returns the handle other tasks use. A `resumed`
/// token (from the sealed state) is used at once, without a login, and
/// checked with `lookup-self` in the background: a dead one takes the
/// dead-token path (log in again, its leases replaced at once).
pub fn spawn(
    vault: Arc<Vault>,
    cfg: AppRoleConfig,
    store: Store,
    leases: Leases,
    metrics: Arc<crate::metrics::Metrics>,
    resumed: Option<Token>,
    shutdown: CancellationToken,
) -> (AuthHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let (rej_tx, rej_rx) = mpsc::unbounded_channel();
    let handle = AuthHandle {
        token: rx,
        rejected: rej_tx,
        ends: Arc::default(),
        retired: Arc::default(),
        dead: Arc::default(),
        deaths: Arc::new(watch::channel(0).0),
    };
    let task = tokio::spawn(run(vault, cfg, store, leases, metrics, handle.clone(), tx, rej_rx, resumed, shutdown));
    (handle, task)
}

/// Reads role_id / secret_id on every login, remembering an unwrapped or
/// deleted secret_id so later logins still work.
struct Credentials {
    cfg: AppRoleConfig,
    /// The secret_id last used, and the file content it came from.
    cached: Option<(SecretString, SecretString)>,
}

impl Credentials {
    async fn secret_id(&mut self, vault: &Vault) -> Result<SecretString, AuthError> {
        let file = match read_secret_file(&self.cfg.secret_id_file, "secret_id").await {
            Ok(v) => Some(v),
            // The file was consumed (by us, or delivered once): reuse what we had.
            Err(e) => match &self.cached {
                Some(_) => None,
                None => return Err(e),
            },
        };
        let sid = match (file, &self.cached) {
            (None, Some((sid, _))) => sid.clone(),
            (Some(raw), Some((sid, from))) if raw.expose_secret() == from.expose_secret() => sid.clone(),
            (Some(raw), _) => {
                let sid = if self.cfg.secret_id_wrapped {
                    // It travels as a header: only visible ASCII can.
                    if !raw.expose_secret().bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(AuthError::File {
                            what: "secret_id",
                            path: self.cfg.secret_id_file.display().to_string(),
                            reason: "a wrapping token is visible ASCII; this file holds something else".into(),
                        });
                    }
                    vault.unwrap_secret_id(&raw).await?
                } else {
                    raw.clone()
                };
                self.cached = Some((sid.clone(), raw));
                if self.cfg.remove_secret_id_file
                    && let Err(e) = tokio::fs::remove_file(&self.cfg.secret_id_file).await
                {
                    tracing::warn!(path = %self.cfg.secret_id_file.display(), error = %e, "could not remove the secret_id file");
                }
                sid
            }
            (None, None) => unreachable!("handled above"),
        };
        Ok(sid)
    }

    async fn login(&mut self, vault: &Vault) -> Result<crate::vault::Auth, AuthError> {
        let role_id = read_secret_file(&self.cfg.role_id_file, "role_id").await?;
        let secret_id = self.secret_id(vault).await?;
        let res = vault.login_approle(&self.cfg.mount, &role_id, &secret_id).await;
        if matches!(&res, Err(e) if !e.is_transient()) {
            // A refused secret_id is not worth retrying from memory.
            self.cached = None;
        }
        Ok(res?)
    }
}

async fn read_secret_file(path: &Path, what: &'static str) -> Result<SecretString, AuthError> {
    let err = |reason: String| AuthError::File { what, path: path.display().to_string(), reason };
    let mut bytes = tokio::fs::read(path).await.map_err(|e| err(e.to_string()))?;
    let s = std::str::from_utf8(&bytes).map(|s| s.trim().to_owned());
    zeroize::Zeroize::zeroize(&mut bytes);
    let s = s.map_err(|_| err("not UTF-8 text".into()))?;
    if s.is_empty() {
        return Err(err("file is empty".into()));
    }
    if s.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("contains spaces or control characters".into()));
    }
    Ok(SecretString::from(s))
}

/// Revokes a replaced token once no live lease was issued under it.
async fn retire(vault: Arc<Vault>, leases: Leases, handle: AuthHandle, old: Arc<Token>, shutdown: CancellationToken) {
    handle.retire(old.clone());
    let mut at = after(Instant::now(), RETIRE_GRACE);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep_until(at) => {}
        }
        if old.expires_at <= Instant::now() {
            handle.unretire(old.generation);
            return;
        }
        if !leases.uses_generation(old.generation) {
            break;
        }
        at = after(Instant::now(), RETIRE_CHECK);
    }
    if !handle.unretire(old.generation) {
        return;
    }
    match vault.revoke_self(&old.secret).await {
        Ok(()) => tracing::info!(generation = old.generation, "revoked a replaced token no lease uses any more"),
        Err(e) => tracing::debug!(generation = old.generation, error = %e, "could not revoke a replaced token"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    vault: Arc<Vault>,
    cfg: AppRoleConfig,
    store: Store,
    leases: Leases,
    metrics: Arc<crate::metrics::Metrics>,
    handle: AuthHandle,
    tx: watch::Sender<Option<Arc<Token>>>,
    mut rejected: mpsc::UnboundedReceiver<u64>,
    mut resumed: Option<Token>,
    shutdown: CancellationToken,
) {
    let mut creds = Credentials { cfg, cached: None };
    let mut generation = 0u64;
    // A token's life from login to the end renew-self cannot pass, learned
    // from the previous token (Vault only reveals it by capping a renewal).
    let mut learned_life: Option<Duration> = None;
    let mut transient = Backoff::transient();
    let mut permanent = Backoff::permanent();
    let mut last_login: Option<Instant> = None;
    let mut previous: Option<Arc<Token>> = None;
    loop {
        let (mut token, issued_at, initial_ttl) = match resumed.take() {
            Some(t) => {
                generation = t.generation;
                if t.renewable
                    && let Some(end) = t.hard_end
                {
                    learned_life = Some(end.saturating_duration_since(t.issued_at));
                }
                tracing::info!(generation, "using the token from the state file; checking it with vault");
                // The check below, in the keep-alive loop, as for a 403.
                handle.rejected(generation);
                let (at, ttl) = (t.issued_at, t.ttl);
                (t, at, ttl)
            }
            None => {
                // --- log in, never more often than MIN_LOGIN_INTERVAL ---
                if let Some(t) = last_login {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = sleep_until(after(t, MIN_LOGIN_INTERVAL)) => {}
                    }
                }
                last_login = Some(Instant::now());
                let res = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = creds.login(&vault) => r,
                };
                metrics.login(&res);
                let auth = match res {
                    Ok(a) => a,
                    Err(e) => {
                        let wait = if e.is_transient() {
                            transient.next(schedule::jitter())
                        } else {
                            permanent.next(schedule::jitter())
                        };
                        tracing::error!(error = %e, retry_in = ?wait, "login failed");
                        store.set_login_problem(Some(e.to_string()));
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                };
                transient.reset();
                permanent.reset();
                store.set_login_problem(None);
                generation += 1;
                let now = Instant::now();
                let initial_ttl = auth.ttl;
                let token = Token {
                    secret: auth.token,
                    generation,
                    issued_at: now,
                    ttl: auth.ttl,
                    expires_at: after(now, auth.ttl),
                    hard_end: if auth.renewable {
                        learned_life.map(|l| after(now, l))
                    } else {
                        Some(after(now, auth.ttl))
                    },
                    renewable: auth.renewable,
                };
                tracing::info!(generation, ttl = ?auth.ttl, renewable = auth.renewable, "logged in");
                let issued_at = now;
                (token, issued_at, initial_ttl)
            }
        };
        if let Some(end) = token.hard_end {
            handle.set_token_end(generation, end);
        }
        tx.send_replace(Some(Arc::new(token.clone())));
        if let Some(old) = previous.take() {
            tokio::spawn(retire(vault.clone(), leases.clone(), handle.clone(), old, shutdown.clone()));
        }

        // --- keep it alive until it must be replaced ---
        loop {
            let step = schedule::next_step(
                Instant::now(),
                schedule::LeaseTimes {
                    issued_at,
                    expires_at: token.expires_at,
                    renewable: token.renewable,
                    hard_end: token.hard_end,
                },
                None,
                schedule::jitter(),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(g) = rejected.recv() => {
                    if g != generation {
                        continue;
                    }
                    match vault.lookup_self(&token.secret).await {
                        Err(e) if e.is_forbidden() => {
                            tracing::warn!(generation, "token rejected by vault (revoked); its leases died with it; logging in again");
                            handle.mark_dead(generation);
                            break;
                        }
                        _ => continue,
                    }
                }
                _ = sleep_until(step.at()) => {}
            }
            if matches!(step, schedule::Step::Replace(_)) {
                tracing::info!(generation, "token nears its end; logging in again");
                break;
            }
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = vault.renew_self(&token.secret, initial_ttl) => r,
            };
            metrics.token_renewal(&res);
            match res {
                Ok(a) => {
                    let now = Instant::now();
                    token.expires_at = after(now, a.ttl);
                    token.renewable = a.renewable;
                    if a.ttl < initial_ttl || !a.renewable {
                        // Vault capped the renewal: this is the token's max TTL.
                        token.hard_end = Some(token.expires_at);
                        learned_life = Some(token.expires_at - issued_at);
                        handle.set_token_end(generation, token.expires_at);
                    }
                    transient.reset();
                    tracing::debug!(generation, ttl = ?a.ttl, "token renewed");
                    tx.send_replace(Some(Arc::new(token.clone())));
                }
                Err(e) if e.is_transient() && Instant::now() < token.expires_at => {
                    let wait = transient.next(schedule::jitter());
                    tracing::warn!(error = %e, retry_in = ?wait, "token renewal failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token cannot be renewed; logging in again");
                    // A 403 may be a policy without renew-self; only a
                    // lookup-self refused too says the token itself is gone.
                    if e.is_forbidden() && matches!(vault.lookup_self(&token.secret).await, Err(e) if e.is_forbidden())
                    {
                        handle.mark_dead(generation);
                    }
                    break;
                }
            }
        }
        previous = Some(Arc::new(token));
    }
}

/// Waits until a token is available (or shutdown).
pub async fn current_token(rx: &mut TokenRx, shutdown: &CancellationToken) -> Option<Arc<Token>> {
    loop {
        if let Some(t) = rx.borrow_and_update().clone() {
            return Some(t);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = rx.changed() => if r.is_err() { return None },
        }
    }
}
