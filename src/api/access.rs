//! Who may use the socket, how much of it, and the record of what they read.
//!
//! Every request passes through here: the allow lists decide whether a
//! caller may connect and which secrets it may read; the caps keep one local
//! user from exhausting vaultlet's descriptors or waiters; refusals are
//! counted per uid so a caller hammering the socket gets 429 and one log
//! line per window instead of one per request; and every read or refusal
//! leaves one audit line whose format fail2ban and operators depend on.
//!
//! The audit line is written for every successful read, so it is on the hot
//! path: the parts that describe the caller (pid, executable path, escaped)
//! are worked out once per connection in [`Peer::new`], not per line.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use tokio::time::Instant;

use super::body::error;
use crate::config::{Allow, SecretSpec, SocketConfig};
use crate::metrics::{Denied, Metrics};

// === impl Acl ===

/// Who may connect, and who may read each secret.
///
/// A name that is not configured is readable by nobody: the socket answers
/// it exactly as it answers a secret the caller may not read (the same
/// 403, the same denial count and audit line), so a caller cannot tell
/// the secrets it is not allowed to read from names that do not exist.
#[derive(Debug)]
pub struct Acl {
    /// `socket.allow` plus every secret's own list: who may connect at all.
    connect: Vec<Allow>,
    /// Per configured secret: its `allow`, or `socket.allow`.
    secrets: BTreeMap<String, Vec<Allow>>,
}

impl Acl {
    /// Builds the lists from the config.
    pub fn new(socket: &SocketConfig, secrets: &[SecretSpec]) -> Acl {
        let mut connect = socket.allow.clone();
        let mut per = BTreeMap::new();
        for s in secrets {
            let list = s.allow.clone().unwrap_or_else(|| socket.allow.clone());
            for a in &list {
                if !connect.contains(a) {
                    connect.push(a.clone());
                }
            }
            per.insert(s.name.clone(), list);
        }
        Acl { connect, secrets: per }
    }

    /// Whether this caller is on any list (may connect at all).
    pub(super) fn may_connect(&self, uid: u32, gid: u32) -> bool {
        allowed(&self.connect, uid, gid)
    }

    /// Whether this caller may read this secret; false for every name
    /// that is not a configured secret.
    pub(super) fn may_read(&self, peer: &Peer, secret: &str) -> bool {
        self.secrets.get(secret).is_some_and(|list| allowed(list, peer.uid, peer.gid))
    }
}

fn allowed(allow: &[Allow], uid: u32, gid: u32) -> bool {
    allow.iter().any(|a| a.uid.is_none_or(|u| u == uid) && a.gid.is_none_or(|g| g == gid))
}

// === impl Peer ===

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Peer {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid, when the kernel tells.
    pub pid: Option<i32>,
    /// The caller's executable, when `/proc` lets us read it.
    pub exe: Option<Arc<str>>,
    /// May connect at all.
    pub allowed: bool,
    /// `pid` and `exe` as the audit line writes them.
    shown: Arc<(Box<str>, Box<str>)>,
}

impl Peer {
    /// A caller, with its audit fields prepared.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>, exe: Option<Arc<str>>, allowed: bool) -> Peer {
        let shown_pid = pid.map_or_else(|| "-".into(), |p| p.to_string().into_boxed_str());
        let shown_exe = exe.as_deref().map_or_else(|| "-".into(), |e| field(e).into_owned().into_boxed_str());
        Peer { uid, gid, pid, exe, allowed, shown: Arc::new((shown_pid, shown_exe)) }
    }
}

// === audit ===

/// One audit line per secret read or refusal, on the `vaultlet::audit` log
/// target. The format is stable (fields in this order; `-` for unknown):
///
/// ```text
/// … INFO vaultlet::audit: socket read uid=1000 gid=1000 pid=4242 exe=/usr/bin/node secret=db version=3 outcome=allowed
/// … WARN vaultlet::audit: socket read uid=65534 gid=65534 pid=4243 exe=/usr/bin/curl secret=db version=- outcome=denied
/// ```
///
/// `outcome` is `allowed`, `denied` (not on the allow list, or no such
/// secret: the two are one answer), `rate_limited` (too many denials from
/// this uid) or `unavailable`. Never a value.
///
/// `exe` and `secret` come from the caller; they are written through
/// [`audit_field`], so a path holding a newline, a space or a quote cannot
/// start a line of its own or shift the fields after it.
///
/// The line stays a tracing event with these fields (not a preformatted
/// message) so the JSON log format keeps one key per field, and the log
/// filter (`vaultlet::audit=off`) keeps working.
///
/// While the socket serves, the line is logged by the audit writer's thread
/// just after the answer has left ([`super::audit_log`]): formatting it took
/// longer than answering.
pub(super) fn audit(peer: &Peer, secret: &str, version: Option<u64>, outcome: &'static str) {
    let enabled = if outcome == "allowed" {
        tracing::enabled!(target: "vaultlet::audit", tracing::Level::INFO)
    } else {
        tracing::enabled!(target: "vaultlet::audit", tracing::Level::WARN)
    };
    if !enabled {
        return;
    }
    let record = AuditRecord {
        uid: peer.uid,
        gid: peer.gid,
        shown: peer.shown.clone(),
        secret: secret.into(),
        version,
        outcome,
    };
    super::audit_log::submit(record);
}

pub use super::audit_log::audit_field;
use super::audit_log::{AuditRecord, field};

// === impl Denials ===

/// Denials per uid in a sliding window; past the limit, callers get 429
/// and the log gets one line per window instead of one per request.
#[derive(Default)]
pub(super) struct Denials(Mutex<HashMap<u32, (Instant, u32)>>);

/// The window refusals (and connections over a cap) are counted in.
pub(super) const DENY_WINDOW: Duration = Duration::from_secs(10);
const DENY_LIMIT: u32 = 10;

impl Denials {
    /// Records a denial; returns how many this uid had in the window.
    fn record(&self, uid: u32) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() > 10_000 {
            m.retain(|_, (start, _)| now.duration_since(*start) < DENY_WINDOW);
        }
        let e = m.entry(uid).or_insert((now, 0));
        if now.duration_since(e.0) >= DENY_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1
    }
}

/// Counts and logs a refusal; the response to send. `reason` is `socket`
/// (on no allow list) or `secret` (not on this secret's list, or no secret
/// of that name: the message fits both and says nothing about the secret).
pub(super) fn deny(denials: &Denials, metrics: &Metrics, peer: &Peer, secret: &str, reason: Denied) -> Response {
    let n = denials.record(peer.uid);
    if n > DENY_LIMIT {
        metrics.socket_denied(Denied::RateLimited);
        if n == DENY_LIMIT + 1 {
            audit(peer, secret, None, "rate_limited");
        }
        return error(StatusCode::TOO_MANY_REQUESTS, "too many refused requests; slow down");
    }
    metrics.socket_denied(reason);
    audit(peer, secret, None, "denied");
    let msg = if reason == Denied::Socket {
        "caller is not allowed to use this socket".to_string()
    } else {
        format!("no secret `{secret}` readable by uid {}", peer.uid)
    };
    error(StatusCode::FORBIDDEN, msg)
}

// === impl Limits ===

/// Open connections and waiting requests, counted per uid against the
/// `[socket]` caps. Counts go down when the guards drop.
#[derive(Clone)]
pub(super) struct Limits(Arc<LimitsInner>);

struct LimitsInner {
    max_connections: usize,
    per_uid: usize,
    waits_per_uid: usize,
    counts: Mutex<Counts>,
}

/// Open connections in total, and per bucket: (connections, waits).
type Counts = (usize, HashMap<Bucket, (usize, usize)>);

/// Whose budget a connection counts against: its uid when it is on an allow
/// list; one shared budget for every caller on none (they get nothing but a
/// 403), so a thousand refused uids cannot fill the global cap either.
pub(super) type Bucket = Option<u32>;

/// Which cap a connection or a wait ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Over {
    Total,
    Uid,
}

impl Limits {
    pub(super) fn new(cfg: &SocketConfig) -> Limits {
        Limits::with(cfg.max_connections, cfg.max_connections_per_uid, cfg.max_waits_per_uid)
    }

    /// The caps `[socket]` has when it sets none.
    pub(super) fn defaults() -> Limits {
        use crate::config::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_MAX_WAITS_PER_UID};
        Limits::with(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_MAX_WAITS_PER_UID)
    }

    fn with(max_connections: usize, per_uid: usize, waits_per_uid: usize) -> Limits {
        Limits(Arc::new(LimitsInner { max_connections, per_uid, waits_per_uid, counts: Mutex::default() }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection from `uid`, unless a cap is reached.
    pub(super) fn connect(&self, uid: u32, allowed: bool) -> Result<Slot, Over> {
        let bucket = allowed.then_some(uid);
        let mut c = self.lock();
        let (total, per) = &mut *c;
        let mine = per.entry(bucket).or_default();
        if mine.0 >= self.0.per_uid {
            return Err(Over::Uid);
        }
        if *total >= self.0.max_connections {
            return Err(Over::Total);
        }
        mine.0 += 1;
        *total += 1;
        Ok(Slot { limits: self.clone(), bucket, wait: false })
    }

    /// A place for one more long-poll or event stream from `uid`.
    pub(super) fn wait(&self, uid: u32) -> Option<Slot> {
        let mut c = self.lock();
        let mine = c.1.entry(Some(uid)).or_default();
        if mine.1 >= self.0.waits_per_uid {
            return None;
        }
        mine.1 += 1;
        Some(Slot { limits: self.clone(), bucket: Some(uid), wait: true })
    }
}

/// One counted connection or wait; gives its place back on drop.
pub(super) struct Slot {
    limits: Limits,
    bucket: Bucket,
    wait: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        let (total, per) = &mut *c;
        if let Some(mine) = per.get_mut(&self.bucket) {
            if self.wait {
                mine.1 = mine.1.saturating_sub(1);
            } else {
                mine.0 = mine.0.saturating_sub(1);
                *total = total.saturating_sub(1);
            }
            if *mine == (0, 0) {
                per.remove(&self.bucket);
            }
        }
    }
}

/// The 429 for a caller over `socket.max_waits_per_uid`.
pub(super) fn too_many_waits(metrics: &Metrics) -> Response {
    metrics.socket_denied(Denied::WaitLimit);
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many long-polls and event streams from this uid (socket.max_waits_per_uid)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::audit_log::OrDash;

    #[test]
    fn audit_fields_from_callers_cannot_forge_a_line() {
        assert_eq!(audit_field("/usr/bin/node"), "/usr/bin/node");
        assert_eq!(audit_field(""), "\"\"");
        let forged = "/tmp/x\n2026-11-26T10:41:42Z  INFO vaultlet::audit: socket read uid=0 outcome=allowed";
        let f = audit_field(forged);
        assert!(!f.contains('\n') && f.starts_with('"') && f.ends_with('"'), "{f}");
        assert_eq!(audit_field("/tmp/a b\"c\\d\te\u{7}\u{2028}"), "\"/tmp/a b\\\"c\\\\d\\te\\u{7}\\u{2028}\"");
        // Whatever the input, the field is one token: quoted, no raw control
        // character, and no unescaped quote inside.
        for s in ["a\"b", "\\\"", "x\r\ny", "\u{1b}[31m", "é ü"] {
            let f = audit_field(s);
            assert!(!f.chars().any(char::is_control), "{f:?}");
            let inner = &f[1..f.len() - 1];
            let mut esc = false;
            for c in inner.chars() {
                assert!(esc || c != '"', "unescaped quote in {f}");
                esc = !esc && c == '\\';
            }
        }
    }

    #[test]
    fn a_peer_carries_its_audit_fields_escaped_once() {
        let p = Peer::new(1, 2, Some(42), Some("/opt/my app/bin".into()), true);
        assert_eq!((&*p.shown.0, &*p.shown.1), ("42", "\"/opt/my app/bin\""));
        let p = Peer::new(1, 2, None, None, false);
        assert_eq!((&*p.shown.0, &*p.shown.1), ("-", "-"));
        assert_eq!(OrDash(Some(7)).to_string(), "7");
        assert_eq!(OrDash(None).to_string(), "-");
    }

    #[test]
    fn connection_caps_count_per_uid_and_in_total() {
        let l = Limits::with(3, 2, 1);
        let a1 = l.connect(7, true).unwrap();
        let _a2 = l.connect(7, true).unwrap();
        assert_eq!(l.connect(7, true).err(), Some(Over::Uid));
        let _b1 = l.connect(8, true).unwrap();
        assert_eq!(l.connect(9, true).err(), Some(Over::Total));
        drop(a1);
        let _a3 = l.connect(7, true).unwrap();
        let w = l.wait(7).unwrap();
        assert!(l.wait(7).is_none());
        assert!(l.wait(8).is_some());
        drop(w);
        assert!(l.wait(7).is_some());
        // Callers on no allow list share one budget, whatever their uids.
        let l = Limits::with(3, 2, 1);
        let _r1 = l.connect(100, false).unwrap();
        let _r2 = l.connect(101, false).unwrap();
        assert_eq!(l.connect(102, false).err(), Some(Over::Uid));
        let _ok = l.connect(7, true).unwrap();
    }

    #[test]
    fn allow_list_matches_all_given_fields() {
        let allow = [Allow { uid: Some(1000), gid: None }, Allow { uid: None, gid: Some(50) }];
        assert!(allowed(&allow, 1000, 1));
        assert!(allowed(&allow, 5, 50));
        assert!(!allowed(&allow, 5, 5));
        let both = [Allow { uid: Some(1), gid: Some(2) }];
        assert!(!allowed(&both, 1, 3));
    }
}
