//! A scripted Vault for the unit tests of the auth and secret tasks.
//!
//! It keeps what a real server keeps about what it handed out, so a test
//! scripts only what differs from a healthy server:
//!
//! * tokens and leases carry the TTL, max TTL and renewability the test set
//!   ([`Fake::token_ttls`], [`Fake::lease_ttls`]); a renewal never passes the
//!   max TTL and says so (`capped`), as OpenBao does;
//! * a lease dies with the token that issued it, a dead token gets 403 on
//!   everything, a dead lease 400 `lease not found`;
//! * failures are scripted per operation ([`Fake::fail`], queued, one per
//!   call), for a span of time ([`Fake::outage`]: connection refused on
//!   everything), or for good ([`Fake::deny`]: a policy without the
//!   capability, 403 with a live token); an operator can revoke a token or a
//!   lease behind the tasks' back ([`Fake::revoke_token`]);
//! * a revocation can hang, never answering ([`Fake::hang`]).
//!
//! Every call is recorded with `tokio::time::Instant::now()` (the paused
//! clock in the tests), the token number and the lease it named, so tests
//! assert what was called when. Tokens are `fake-token-N`, leases
//! `database/creds/app/N`: nothing here is secret.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::{Auth, Backend, Call, DbCreds, LoginRequest, PkiCert, Renewed, VaultError};
use crate::config::PkiRequest;
use crate::secret::{LeaseId, SecretData};

/// One operation of [`Backend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `login`.
    Login,
    /// `unwrap_secret_id`.
    Unwrap,
    /// `renew_self`.
    RenewSelf,
    /// `lookup_self`.
    LookupSelf,
    /// `revoke_self`.
    RevokeSelf,
    /// `db_creds`.
    DbCreds,
    /// `db_role_max_ttl`.
    DbRole,
    /// `renew_lease`.
    RenewLease,
    /// `lookup_lease`.
    LookupLease,
    /// `revoke_lease`.
    RevokeLease,
    /// `kv`.
    Kv,
    /// `pki_issue`.
    PkiIssue,
    /// `pki_revoke`.
    PkiRevoke,
}

/// A class of failure the fake can answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// Connection refused.
    Transient,
    /// 503 (sealed, standby): transient too.
    Unavailable,
    /// 403 permission denied.
    Forbidden,
    /// 404.
    NotFound,
    /// An answer vaultlet cannot read.
    Malformed,
    /// 400 `lease not found`.
    LeaseGone,
}

// === impl Fail ===

impl Fail {
    /// The error as [`super::Vault`] would build it.
    pub fn error(self, op: Op) -> VaultError {
        let op = format!("{op:?}");
        let refused = |status, message: &str| VaultError::Refused {
            op: op.clone(),
            status,
            message: message.to_owned(),
            hint: String::new(),
        };
        match self {
            Fail::Transient => VaultError::Unreachable {
                op: op.clone(),
                addr: "http://fake".into(),
                reason: "connection refused".into(),
            },
            Fail::Unavailable => refused(503, "Vault is sealed"),
            Fail::Forbidden => refused(403, "permission denied"),
            Fail::NotFound => refused(404, ""),
            Fail::Malformed => VaultError::Malformed { op: op.clone(), what: "no data" },
            Fail::LeaseGone => refused(400, "lease not found"),
        }
    }
}

/// What a token or lease is handed out with.
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    /// TTL at issue, and the increment a renewal gets.
    pub ttl: Duration,
    /// The end renewals cannot pass, counted from issue.
    pub max: Option<Duration>,
    /// Whether it can be renewed.
    pub renewable: bool,
}

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Called {
    /// Which operation.
    pub op: Op,
    /// When (tokio's clock).
    pub at: Instant,
    /// The number of the token it was made with (`fake-token-N`), if any.
    pub token: Option<u64>,
    /// The lease it named (renew, lookup, revoke) or issued (creds).
    pub lease: Option<String>,
}

struct Handed {
    owner: Option<u64>,
    issued_at: Instant,
    expires_at: Instant,
    hard_end: Option<Instant>,
    renewable: bool,
    revoked: bool,
}

impl Handed {
    fn new(t: Ttls, owner: Option<u64>) -> Handed {
        let now = Instant::now();
        let hard_end = t.max.map(|m| now + m);
        let expires_at = hard_end.map_or(now + t.ttl, |h| h.min(now + t.ttl));
        Handed { owner, issued_at: now, expires_at, hard_end, renewable: t.renewable, revoked: false }
    }

    fn ended(&self, now: Instant) -> bool {
        self.revoked || now >= self.expires_at
    }

    /// Renews by `increment` (capped at the hard end); the TTL from now and
    /// whether it was capped.
    fn renew(&mut self, increment: Duration) -> (Duration, bool) {
        let now = Instant::now();
        let want = now + increment;
        let end = self.hard_end.map_or(want, |h| h.min(want));
        self.expires_at = end;
        // Vault speaks whole seconds; the client never takes less than one.
        let ttl = Duration::from_secs((end - now).as_secs()).max(super::MIN_TTL);
        (ttl, end < want)
    }
}

struct Inner {
    token_ttls: Ttls,
    lease_ttls: Ttls,
    role_max_ttl: Option<Duration>,
    kv: BTreeMap<String, String>,
    /// Token N is `tokens[N - 1]`.
    tokens: Vec<Handed>,
    /// Lease N is `leases[N - 1]`.
    leases: Vec<Handed>,
    script: BTreeMap<String, VecDeque<Fail>>,
    outages: Vec<(Instant, Instant)>,
    denied: HashSet<Op>,
    /// Calls of each op still to hang.
    hangs: HashMap<Op, usize>,
    calls: Vec<Called>,
}

/// The scripted server. Cheap to share: `Arc<Fake>` is an `Arc<dyn Backend>`.
pub struct Fake(Mutex<Inner>);

fn token_number(t: &SecretString) -> Option<u64> {
    t.expose_secret().strip_prefix("fake-token-")?.parse().ok()
}

fn lease_number(id: &str) -> Option<usize> {
    id.strip_prefix("database/creds/app/")?.parse().ok()
}

// === impl Fake ===

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

impl Fake {
    /// A healthy server: hour-long renewable tokens and leases, no max TTL.
    pub fn new() -> Fake {
        let hour = Ttls { ttl: Duration::from_secs(3600), max: None, renewable: true };
        Fake(Mutex::new(Inner {
            token_ttls: hour,
            lease_ttls: hour,
            role_max_ttl: None,
            kv: BTreeMap::from([("key".to_owned(), "v1".to_owned())]),
            tokens: Vec::new(),
            leases: Vec::new(),
            script: BTreeMap::new(),
            outages: Vec::new(),
            denied: HashSet::new(),
            hangs: HashMap::new(),
            calls: Vec::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What logins hand out from now on.
    pub fn token_ttls(&self, t: Ttls) -> &Self {
        self.lock().token_ttls = t;
        self
    }

    /// What database credentials are issued with from now on.
    pub fn lease_ttls(&self, t: Ttls) -> &Self {
        self.lock().lease_ttls = t;
        self
    }

    /// What reading the database role answers (`None`: no max_ttl set).
    pub fn role_max_ttl(&self, max: Option<Duration>) -> &Self {
        self.lock().role_max_ttl = max;
        self
    }

    /// The KV secret's content from now on.
    pub fn kv_value(&self, key: &str, value: &str) -> &Self {
        self.lock().kv = BTreeMap::from([(key.to_owned(), value.to_owned())]);
        self
    }

    /// The next `n` calls of `op` fail with `fail`.
    pub fn fail(&self, op: Op, fail: Fail, n: usize) -> &Self {
        let mut g = self.lock();
        let q = g.script.entry(format!("{op:?}")).or_default();
        q.extend(std::iter::repeat_n(fail, n));
        drop(g);
        self
    }

    /// Every call from `from` until `until` fails as if the server were down.
    pub fn outage(&self, from: Instant, until: Instant) -> &Self {
        self.lock().outages.push((from, until));
        self
    }

    /// The policy lacks the capability for `op`: 403 with a live token.
    pub fn deny(&self, op: Op) -> &Self {
        self.lock().denied.insert(op);
        self
    }

    /// The next `n` calls of `op` never answer, and change nothing. Only
    /// the revocations (`RevokeLease`, `RevokeSelf`, `PkiRevoke`) hang.
    pub fn hang(&self, op: Op, n: usize) -> &Self {
        *self.lock().hangs.entry(op).or_default() += n;
        self
    }

    /// An operator revokes token `n` (and with it every lease it issued).
    pub fn revoke_token(&self, n: u64) {
        if let Some(t) = self.lock().tokens.get_mut(n as usize - 1) {
            t.revoked = true;
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Called> {
        self.lock().calls.clone()
    }

    /// The calls of `op` so far.
    pub fn calls_of(&self, op: Op) -> Vec<Called> {
        self.lock().calls.iter().filter(|c| c.op == op).cloned().collect()
    }

    /// How many times `op` was called.
    pub fn count(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|c| c.op == op).count()
    }

    /// Whether lease `id` works at `now` (not ended, its token alive).
    pub fn lease_alive(&self, id: &str, now: Instant) -> bool {
        let g = self.lock();
        let Some(n) = lease_number(id) else {
            return false;
        };
        g.leases.get(n - 1).is_some_and(|l| g.alive(l, now))
    }

    /// The current end of token `n` (moves with renew-self, up to its max TTL).
    pub fn token_expires_at(&self, n: u64) -> Option<Instant> {
        self.lock().tokens.get(n as usize - 1).map(|t| t.expires_at)
    }

    /// The token lease `id` was issued under.
    pub fn lease_owner(&self, id: &str) -> Option<u64> {
        let n = lease_number(id)?;
        self.lock().leases.get(n - 1)?.owner
    }

    /// Logs in as the AppRole method would, for a test that needs a token
    /// before any task runs.
    pub async fn login_approle(
        &self,
        mount: &str,
        role_id: &SecretString,
        secret_id: &SecretString,
    ) -> Result<Auth, VaultError> {
        let request = LoginRequest::new(crate::auth::approle::WORDS)
            .field("role_id", role_id.clone())
            .field("secret_id", secret_id.clone());
        self.login(mount, &request).await
    }

    /// Records the call, then fails it with a scripted failure, an outage,
    /// a dead token or a denied capability, in that order; `Ok` lets the
    /// operation answer.
    fn enter(&self, op: Op, token: Option<&SecretString>, lease: Option<&LeaseId>) -> Result<(), VaultError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.calls.push(Called {
            op,
            at: now,
            token: token.and_then(token_number),
            lease: lease.map(|l| l.as_str().to_owned()),
        });
        if let Some(f) = g.script.get_mut(&format!("{op:?}")).and_then(VecDeque::pop_front) {
            return Err(f.error(op));
        }
        if g.outages.iter().any(|(a, b)| *a <= now && now < *b) {
            return Err(Fail::Transient.error(op));
        }
        if let Some(t) = token {
            let ok = token_number(t).and_then(|n| g.tokens.get(n as usize - 1)).is_some_and(|t| !t.ended(now));
            // An unwrap is made with the wrapping token, not ours.
            if !ok && op != Op::Unwrap {
                return Err(Fail::Forbidden.error(op));
            }
        }
        if g.denied.contains(&op) {
            return Err(Fail::Forbidden.error(op));
        }
        Ok(())
    }

    /// Whether this call is one [`Fake::hang`] scripted; if so, it is
    /// recorded (as [`Fake::enter`] records) and taken off the script.
    fn hung(&self, op: Op, token: &SecretString, lease: Option<&LeaseId>) -> bool {
        let mut g = self.lock();
        match g.hangs.get_mut(&op) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return false,
        }
        let call =
            Called { op, at: Instant::now(), token: token_number(token), lease: lease.map(|l| l.as_str().to_owned()) };
        g.calls.push(call);
        true
    }

    /// The lease a call names, if it is still alive.
    fn live_lease(&self, op: Op, lease: &LeaseId) -> Result<usize, VaultError> {
        let now = Instant::now();
        let g = self.lock();
        match lease_number(lease.as_str()) {
            Some(n) if g.leases.get(n - 1).is_some_and(|l| g.alive(l, now)) => Ok(n - 1),
            _ => Err(Fail::LeaseGone.error(op)),
        }
    }
}

impl Inner {
    /// A lease lives while it has not ended and neither has its token.
    fn alive(&self, l: &Handed, now: Instant) -> bool {
        !l.ended(now) && l.owner.is_none_or(|o| self.tokens.get(o as usize - 1).is_some_and(|t| !t.ended(now)))
    }
}

fn ready<'a, T: Send + 'a>(r: Result<T, VaultError>) -> Call<'a, T> {
    Box::pin(std::future::ready(r))
}

/// A call that never answers.
fn never<'a, T: Send + 'a>() -> Call<'a, T> {
    Box::pin(std::future::pending())
}

// === impl Backend for Fake ===

impl Backend for Fake {
    fn login<'a>(&'a self, _mount: &'a str, _request: &'a LoginRequest) -> Call<'a, Auth> {
        ready(self.enter(Op::Login, None, None).map(|()| {
            let mut g = self.lock();
            let t = Handed::new(g.token_ttls, None);
            let (ttl, renewable) = (t.expires_at - t.issued_at, t.renewable);
            g.tokens.push(t);
            Auth { token: SecretString::from(format!("fake-token-{}", g.tokens.len())), ttl, renewable }
        }))
    }

    fn unwrap_secret_id<'a>(&'a self, wrapping_token: &'a SecretString) -> Call<'a, SecretString> {
        ready(self.enter(Op::Unwrap, Some(wrapping_token), None).map(|()| SecretString::from("unwrapped-secret-id")))
    }

    fn renew_self<'a>(&'a self, token: &'a SecretString, increment: Duration) -> Call<'a, Auth> {
        ready(self.enter(Op::RenewSelf, Some(token), None).map(|()| {
            let mut g = self.lock();
            let t = &mut g.tokens[token_number(token).unwrap_or(1) as usize - 1];
            let (ttl, _) = t.renew(increment);
            Auth { token: token.clone(), ttl, renewable: t.renewable }
        }))
    }

    fn lookup_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()> {
        ready(self.enter(Op::LookupSelf, Some(token), None))
    }

    fn revoke_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()> {
        if self.hung(Op::RevokeSelf, token, None) {
            return never();
        }
        ready(self.enter(Op::RevokeSelf, Some(token), None).map(|()| {
            if let Some(n) = token_number(token) {
                self.revoke_token(n);
            }
        }))
    }

    fn db_creds<'a>(&'a self, token: &'a SecretString, _mount: &'a str, _role: &'a str) -> Call<'a, DbCreds> {
        let r = self.enter(Op::DbCreds, Some(token), None).map(|()| {
            let mut g = self.lock();
            let l = Handed::new(g.lease_ttls, token_number(token));
            let ttl = l.expires_at - l.issued_at;
            let renewable = l.renewable;
            g.leases.push(l);
            let n = g.leases.len();
            let id = format!("database/creds/app/{n}");
            if let Some(c) = g.calls.last_mut() {
                c.lease = Some(id.clone());
            }
            let mut data = SecretData::default();
            data.insert("username", SecretString::from(format!("user-{n}")));
            data.insert("password", SecretString::from(format!("password-{n}")));
            DbCreds { data, lease_id: LeaseId::new(id), ttl, renewable }
        });
        ready(r)
    }

    fn db_role_max_ttl<'a>(
        &'a self,
        token: &'a SecretString,
        _mount: &'a str,
        _role: &'a str,
    ) -> Call<'a, Option<Duration>> {
        ready(self.enter(Op::DbRole, Some(token), None).map(|()| self.lock().role_max_ttl))
    }

    fn renew_lease<'a>(
        &'a self,
        token: &'a SecretString,
        lease: &'a LeaseId,
        increment: Duration,
    ) -> Call<'a, Renewed> {
        let r = self.enter(Op::RenewLease, Some(token), Some(lease)).and_then(|()| {
            let i = self.live_lease(Op::RenewLease, lease)?;
            let mut g = self.lock();
            let l = &mut g.leases[i];
            if !l.renewable {
                return Err(VaultError::Refused {
                    op: "RenewLease".into(),
                    status: 400,
                    message: "lease is not renewable".into(),
                    hint: String::new(),
                });
            }
            let (ttl, capped) = l.renew(increment);
            Ok(Renewed { ttl, renewable: l.renewable, capped })
        });
        ready(r)
    }

    fn lookup_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()> {
        ready(self.enter(Op::LookupLease, Some(token), Some(lease)).and_then(|()| {
            self.live_lease(Op::LookupLease, lease).map(drop).map_err(|_| VaultError::Refused {
                op: "LookupLease".into(),
                status: 400,
                message: "invalid lease".into(),
                hint: String::new(),
            })
        }))
    }

    fn revoke_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()> {
        if self.hung(Op::RevokeLease, token, Some(lease)) {
            return never();
        }
        ready(self.enter(Op::RevokeLease, Some(token), Some(lease)).map(|()| {
            if let Some(n) = lease_number(lease.as_str())
                && let Some(l) = self.lock().leases.get_mut(n - 1)
            {
                l.revoked = true;
            }
        }))
    }

    fn kv<'a>(
        &'a self,
        token: &'a SecretString,
        _mount: &'a str,
        _path: &'a str,
        _version: u8,
    ) -> Call<'a, SecretData> {
        ready(self.enter(Op::Kv, Some(token), None).map(|()| {
            let mut data = SecretData::default();
            for (k, v) in &self.lock().kv {
                data.insert(k.clone(), SecretString::from(v.clone()));
            }
            data
        }))
    }

    fn pki_issue<'a>(&'a self, token: &'a SecretString, _req: &'a PkiRequest) -> Call<'a, PkiCert> {
        ready(self.enter(Op::PkiIssue, Some(token), None).map(|()| {
            let g = self.lock();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            let serial = format!("0a:{:02x}", g.calls.len() % 256);
            let mut data = SecretData::default();
            data.insert("certificate", SecretString::from("-----BEGIN CERTIFICATE-----\nfake\n"));
            data.insert("serial_number", SecretString::from(serial.clone()));
            PkiCert {
                data,
                serial,
                not_before: Some(now - 1),
                expiration: now + g.lease_ttls.ttl.as_secs() as i64,
                lease: None,
            }
        }))
    }

    fn pki_revoke<'a>(&'a self, token: &'a SecretString, _mount: &'a str, _serial: &'a str) -> Call<'a, ()> {
        if self.hung(Op::PkiRevoke, token, None) {
            return never();
        }
        ready(self.enter(Op::PkiRevoke, Some(token), None))
    }
}
