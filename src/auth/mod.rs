//! Login and token upkeep, the same for every auth method.
//!
//! One task owns the token. It logs in with the configured method (a
//! [`Method`]: `approle.rs`, reading the role_id and secret_id files on
//! every login and unwrapping a response-wrapped secret_id first when
//! configured; `jwt.rs`, reading a signed token from its file on every
//! login, for the `jwt` and `kubernetes` methods), renews the token at ⅔ of
//! its TTL and logs in again *before* the token reaches the end renewals
//! can no longer move (its max TTL, or the TTL of a non-renewable token).
//! What differs between methods (the login's body, the files read, whom the
//! sealed state belongs to) is the method's, behind the trait in
//! `method.rs`; the task itself names none.
//!
//! Everything it knows that others need is one [`AuthState`] on one `watch`
//! channel: the current token, why the last login failed, the hard end of
//! each recent generation, the generations Vault confirmed dead and the
//! replaced tokens not revoked yet. Other tasks only read it; they talk back
//! through one call, [`AuthHandle::rejected`].
//!
//! A new login does not disturb the secrets: lease tasks keep what they hold.
//! They do read the token's hard end from the state, because Vault revokes
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
//! new login). A dead token is recorded in the state ([`AuthState::dead`],
//! which wakes the lease tasks): Vault revoked every lease the token created
//! along with it, so those credentials are withdrawn and replaced as soon as
//! the new token is there, not at their next renewal.
//!
//! The task talks to Vault through [`crate::vault::Backend`]; each turn makes
//! one attempt (a login, a renewal) and what follows a failure is decided by
//! [`crate::lease::retry::decide`], as for the secret tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::lease::retry::{self, Attempt, Backoffs, Class, Retry};
use crate::lease::schedule::{self, after};
use crate::ledger::Leases;
use crate::secret::Token;
use crate::vault::Backend;

pub mod approle;
pub mod jwt;
mod method;

pub use method::{AuthError, Method, Pending};

/// Shortest time between two logins.
pub const MIN_LOGIN_INTERVAL: Duration = Duration::from_secs(1);

pub use crate::token::{AuthRx, AuthState, AuthTx, channel};

/// How often a replaced token is checked for leases still using it.
const RETIRE_CHECK: Duration = Duration::from_secs(2);

/// A replaced token is kept at least this long: lease tasks see the new
/// token only at their next turn (issues in flight are tracked exactly).
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Generations remembered in [`AuthState::ends`] and [`AuthState::dead`];
/// older ones ended long ago.
const KEEP_GENERATIONS: usize = 8;

/// The other tasks' side of the auth task.
#[derive(Clone)]
pub struct AuthHandle {
    state: AuthRx,
    rejected: mpsc::UnboundedSender<u64>,
}

// === impl AuthHandle ===

impl AuthHandle {
    /// A watcher of the auth state (token, problem, ends, deaths).
    pub fn watch(&self) -> AuthRx {
        self.state.clone()
    }

    /// The current token, if logged in.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.state.borrow().token.clone()
    }

    /// The hard end of token `generation`, if known.
    pub fn token_end(&self, generation: u64) -> Option<Instant> {
        self.state.borrow().ends.get(&generation).copied()
    }

    /// The current end of token `generation`, if it is the current token or
    /// a replaced one not revoked yet (the sealed state saves it with each
    /// lease: Vault revokes a lease with its token).
    pub fn token_expiry(&self, generation: u64) -> Option<Instant> {
        let s = self.state.borrow();
        let current = s.token.iter().find(|t| t.generation == generation);
        current.or_else(|| s.retired.iter().find(|t| t.generation == generation)).map(|t| t.expires_at)
    }

    /// Replaced tokens not revoked yet (for revocation at shutdown).
    pub fn retired(&self) -> Vec<Arc<Token>> {
        self.state.borrow().retired.clone()
    }

    /// Whether Vault confirmed token `generation` dead (its leases died with it).
    pub fn is_dead(&self, generation: u64) -> bool {
        self.state.borrow().dead.contains(&generation)
    }

    /// Reports that Vault answered 403 to a request made with token `generation`.
    pub fn rejected(&self, generation: u64) {
        let _ = self.rejected.send(generation);
    }
}

// === impl AuthState (the auth task's changes) ===

impl AuthState {
    fn set_end(&mut self, generation: u64, end: Instant) {
        self.ends.insert(generation, end);
        while self.ends.len() > KEEP_GENERATIONS {
            self.ends.pop_first();
        }
    }

    fn mark_dead(&mut self, generation: u64) {
        self.dead.insert(generation);
        while self.dead.len() > KEEP_GENERATIONS {
            self.dead.pop_first();
        }
    }

    /// Takes `generation` off the retired list; false if already taken.
    fn unretire(&mut self, generation: u64) -> bool {
        let before = self.retired.len();
        self.retired.retain(|t| t.generation != generation);
        self.retired.len() != before
    }
}

/// The method `[auth.*]` configures. The one place that knows every method.
pub fn method_for(cfg: &AuthConfig) -> Box<dyn Method> {
    match cfg {
        AuthConfig::AppRole(c) => Box::new(approle::AppRole::new(c.clone())),
        AuthConfig::Jwt(c) => Box::new(jwt::JwtLogin::jwt(c.clone())),
        AuthConfig::Kubernetes(c) => Box::new(jwt::JwtLogin::kubernetes(c.clone())),
    }
}

/// Starts the auth task; returns the handle other tasks use. A `resumed`
/// token (from the sealed state) is used at once, without a login, and
/// checked with `lookup-self` in the background: a dead one takes the
/// dead-token path (log in again, its leases replaced at once). It logs in
/// with the method `auth` configures (a bare [`crate::config::AppRoleConfig`]
/// is AppRole's).
pub fn spawn(
    vault: Arc<dyn Backend>,
    auth: impl Into<AuthConfig>,
    (tx, rx): (AuthTx, AuthRx),
    leases: Leases,
    metrics: Arc<crate::metrics::Metrics>,
    resumed: Option<Token>,
    shutdown: CancellationToken,
) -> (AuthHandle, tokio::task::JoinHandle<()>) {
    let (rej_tx, rej_rx) = mpsc::unbounded_channel();
    let handle = AuthHandle { state: rx, rejected: rej_tx };
    let task = Task {
        vault,
        method: method_for(&auth.into()),
        leases,
        metrics,
        handle: handle.clone(),
        tx,
        rejected: rej_rx,
        shutdown,
        generation: 0,
        learned_life: None,
        backoffs: Backoffs::default(),
        last_login: None,
    };
    let task = tokio::spawn(run(task, resumed));
    (handle, task)
}

/// Revokes a replaced token once no live lease was issued under it.
async fn retire(vault: Arc<dyn Backend>, leases: Leases, tx: AuthTx, old: Arc<Token>, shutdown: CancellationToken) {
    let mut at = after(Instant::now(), RETIRE_GRACE);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep_until(at) => {}
        }
        if old.expires_at <= Instant::now() {
            tx.send_if_modified(|s| s.unretire(old.generation));
            return;
        }
        if !leases.uses_generation(old.generation) {
            break;
        }
        at = after(Instant::now(), RETIRE_CHECK);
    }
    if !tx.send_if_modified(|s| s.unretire(old.generation)) {
        return;
    }
    match vault.revoke_self(&old.secret).await {
        Ok(()) => tracing::info!(generation = old.generation, "revoked a replaced token no lease uses any more"),
        Err(e) => tracing::debug!(generation = old.generation, error = %e, "could not revoke a replaced token"),
    }
}

/// The auth task between two turns.
struct Task {
    vault: Arc<dyn Backend>,
    method: Box<dyn Method>,
    leases: Leases,
    metrics: Arc<crate::metrics::Metrics>,
    /// Its own handle: a resumed token is checked like a reported 403.
    handle: AuthHandle,
    tx: AuthTx,
    rejected: mpsc::UnboundedReceiver<u64>,
    shutdown: CancellationToken,
    generation: u64,
    /// A token's life from login to the end renew-self cannot pass, learned
    /// from the previous token (Vault only reveals it by capping a renewal).
    learned_life: Option<Duration>,
    backoffs: Backoffs,
    last_login: Option<Instant>,
}

/// Logs in (or takes the resumed token), publishes the token, keeps it
/// alive until it must be replaced, and again, until shutdown.
async fn run(mut task: Task, mut resumed: Option<Token>) {
    let mut previous: Option<Arc<Token>> = None;
    loop {
        let token = match resumed.take() {
            Some(t) => task.resume(t),
            None => match task.log_in().await {
                Some(t) => t,
                None => return,
            },
        };
        let old = previous.take();
        task.tx.send_modify(|s| {
            if let Some(end) = token.hard_end {
                s.set_end(token.generation, end);
            }
            s.token = Some(Arc::new(token.clone()));
            s.retired.extend(old.clone());
        });
        if let Some(old) = old {
            let (vault, leases, tx) = (task.vault.clone(), task.leases.clone(), task.tx.clone());
            tokio::spawn(retire(vault, leases, tx, old, task.shutdown.clone()));
        }
        let Some(token) = task.keep_alive(token).await else { return };
        previous = Some(Arc::new(token));
    }
}

// === impl Task ===

impl Task {
    /// Takes over a token from the sealed state; it is checked with
    /// `lookup-self` in the keep-alive loop, as for a 403.
    fn resume(&mut self, t: Token) -> Token {
        self.generation = t.generation;
        if t.renewable
            && let Some(end) = t.hard_end
        {
            self.learned_life = Some(end.saturating_duration_since(t.issued_at));
        }
        tracing::info!(generation = self.generation, "using the token from the state file; checking it with vault");
        self.handle.rejected(self.generation);
        t
    }

    /// Logs in, never more often than [`MIN_LOGIN_INTERVAL`], until it
    /// works; `None` at shutdown.
    async fn log_in(&mut self) -> Option<Token> {
        let shutdown = self.shutdown.clone();
        loop {
            if let Some(t) = self.last_login {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = sleep_until(after(t, MIN_LOGIN_INTERVAL)) => {}
                }
            }
            self.last_login = Some(Instant::now());
            let res = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = self.login() => r,
            };
            self.metrics.login(&res);
            match res {
                Ok(token) => {
                    self.backoffs.reset();
                    self.tx.send_if_modified(|s| s.problem.take().is_some());
                    tracing::info!(generation = token.generation, ttl = ?token.ttl, renewable = token.renewable, "logged in");
                    return Some(token);
                }
                Err(e) => {
                    // A failed login is always retried after a backoff.
                    let wait = retry::decide(e.class(), Attempt::Login, &mut self.backoffs).wait().unwrap_or_default();
                    tracing::error!(error = %e, retry_in = ?wait, "login failed");
                    let problem = Some(e.to_string());
                    self.tx.send_if_modified(|s| std::mem::replace(&mut s.problem, problem.clone()) != problem);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One login: the new token, one generation on.
    async fn login(&mut self) -> Result<Token, AuthError> {
        let request = self.method.login_request(&*self.vault).await?;
        let res = self.vault.login(self.method.mount(), &request).await;
        if matches!(&res, Err(e) if !e.is_transient()) {
            self.method.refused();
        }
        let auth = res?;
        self.generation += 1;
        let now = Instant::now();
        Ok(Token {
            secret: auth.token,
            generation: self.generation,
            issued_at: now,
            ttl: auth.ttl,
            expires_at: after(now, auth.ttl),
            hard_end: if auth.renewable {
                self.learned_life.map(|l| after(now, l))
            } else {
                Some(after(now, auth.ttl))
            },
            renewable: auth.renewable,
        })
    }

    /// Whether Vault refuses `lookup-self` too: the token itself is dead
    /// (a 403 elsewhere may only be a missing capability).
    async fn is_dead(&self, token: &Token) -> bool {
        matches!(self.vault.lookup_self(&token.secret).await, Err(e) if e.is_forbidden())
    }

    /// Renews `token` until it must be replaced (or is dead) and returns it;
    /// `None` at shutdown.
    async fn keep_alive(&mut self, mut token: Token) -> Option<Token> {
        let shutdown = self.shutdown.clone();
        let generation = token.generation;
        // Renewals ask for the TTL the token was issued with.
        let initial_ttl = token.ttl;
        loop {
            let step = schedule::next_step(
                Instant::now(),
                schedule::LeaseTimes {
                    issued_at: token.issued_at,
                    expires_at: token.expires_at,
                    renewable: token.renewable,
                    hard_end: token.hard_end,
                },
                None,
                schedule::jitter(),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                Some(g) = self.rejected.recv() => {
                    if g == generation && self.is_dead(&token).await {
                        tracing::warn!(generation, "token rejected by vault (revoked); its leases died with it; logging in again");
                        self.tx.send_modify(|s| s.mark_dead(generation));
                        return Some(token);
                    }
                    continue;
                }
                _ = sleep_until(step.at()) => {}
            }
            if matches!(step, schedule::Step::Replace(_)) {
                tracing::info!(generation, "token nears its end; logging in again");
                return Some(token);
            }
            let res = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = self.vault.renew_self(&token.secret, initial_ttl) => r,
            };
            self.metrics.token_renewal(&res);
            let e = match res {
                Ok(a) => {
                    let now = Instant::now();
                    token.expires_at = after(now, a.ttl);
                    token.renewable = a.renewable;
                    let capped = a.ttl < initial_ttl || !a.renewable;
                    if capped {
                        // Vault capped the renewal: this is the token's max TTL.
                        token.hard_end = Some(token.expires_at);
                        self.learned_life = Some(token.expires_at - token.issued_at);
                    }
                    self.backoffs.reset();
                    tracing::debug!(generation, ttl = ?a.ttl, "token renewed");
                    self.tx.send_modify(|s| {
                        if capped {
                            s.set_end(generation, token.expires_at);
                        }
                        s.token = Some(Arc::new(token.clone()));
                    });
                    continue;
                }
                Err(e) => e,
            };
            let alive = Instant::now() < token.expires_at;
            match retry::decide(Class::of(&e), Attempt::TokenRenewal { alive }, &mut self.backoffs) {
                Retry::After(wait) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "token renewal failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                _ => {
                    tracing::warn!(error = %e, "token cannot be renewed; logging in again");
                    if e.is_forbidden() && self.is_dead(&token).await {
                        self.tx.send_modify(|s| s.mark_dead(generation));
                    }
                    return Some(token);
                }
            }
        }
    }
}

/// Waits until a token is available (or shutdown).
pub async fn current_token(rx: &mut AuthRx, shutdown: &CancellationToken) -> Option<Arc<Token>> {
    loop {
        if let Some(t) = rx.borrow_and_update().token.clone() {
            return Some(t);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = rx.changed() => if r.is_err() { return None },
        }
    }
}
