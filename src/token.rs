//! What the auth task publishes: the token, the login problem, the ends
//! of recent token generations and the dead ones. The type sits below the
//! auth task so the store and the lease tasks can read it without importing
//! the task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::secret::Token;

/// Everything the auth task tells the other tasks, published as one value
/// on one `watch` channel: a change to any part wakes every watcher once.
#[derive(Clone, Debug, Default)]
pub struct AuthState {
    /// The current token, once logged in.
    pub token: Option<Arc<Token>>,
    /// Why the last login failed, until one succeeds (`/v1/ready` shows it
    /// for secrets never fetched).
    pub problem: Option<String>,
    /// The hard end of each recent token generation, once known. A lease
    /// outlives the token that created it only until that token's end, and
    /// the current token alone would let a lease task miss the end of a
    /// generation that was replaced before the task looked.
    pub ends: BTreeMap<u64, Instant>,
    /// Generations Vault confirmed dead (revoked, not just replaced): every
    /// lease they issued died with them.
    pub dead: BTreeSet<u64>,
    /// Replaced tokens not yet revoked (still used by a lease, or in grace).
    pub retired: Vec<Arc<Token>>,
}

/// A watcher of the auth state.
pub type AuthRx = watch::Receiver<AuthState>;

/// The auth task's side of the auth state.
pub type AuthTx = Arc<watch::Sender<AuthState>>;

/// The channel the auth task publishes on; the receiver may be handed out
/// (e.g. to the store) before the task starts.
pub fn channel() -> (AuthTx, AuthRx) {
    let (tx, rx) = watch::channel(AuthState::default());
    (Arc::new(tx), rx)
}
