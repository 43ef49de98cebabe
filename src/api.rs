//! The Unix socket: HTTP/1.1 + JSON, callers checked by `SO_PEERCRED`.
//!
//! Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/secrets` | `{"secrets": {name: secret}, "unavailable": {name: reason}}` |
//! | `GET /v1/secrets/{name}` | `{"name", "version", "data": {…}, "lease": {"expires_at", "ttl_seconds", "renewable"}}` (no `lease` for KV) |
//! | `GET /v1/secrets/{name}?wait=30s&after=N` | long-poll: answers once a version newer than `N` is available, or when the wait (at most 5 min) is over |
//! | `POST /v1/secrets/{name}/rejected?version=N` | the app's database refused version `N`: the lease is checked at once and replaced if gone; `{"name", "version", "replaced"}` once the version to use is published (see [`crate::rejected`]) |
//! | `GET /v1/events` | server-sent events: `secret` `{"name", "version"}` per available secret and per change, `unavailable` `{"name", "reason"}` |
//! | `GET /v1/health` | `{"status": "ok"}` while the process runs |
//! | `GET /v1/ready` | 200 `{"ready": true}` once every secret is held and unexpired, else 503 with reasons |
//!
//! Errors are `{"error": "…"}` with 400/403/404/405/429/503; no error ever
//! holds a value. Every response carries `Cache-Control: no-store`.
//!
//! The peer's uid/gid come from the kernel when the connection is accepted; a
//! caller not on the allow list gets one 403 and the connection is closed
//! (no keep-alive, 2 s to send its request). Open connections are capped
//! globally and per uid (callers on no allow list share one budget), and
//! long-polls and event streams per uid: a connection over a cap is
//! answered 503 and closed at once, so a local user flooding the socket
//! runs out of its own budget, never vaultlet's descriptors, and allowed
//! callers keep being served. Accept errors (EMFILE…) back off and are
//! logged once a minute, not once per attempt.
//!
//! The socket file is bound in a private directory, given its mode, then
//! renamed into place (`src/write.rs`), so it is never reachable with a
//! looser mode. A stale socket (connecting is refused) is replaced; a live
//! one, one that cannot be probed, or a non-socket file at the path is an
//! error. At shutdown the file is removed only if it is still ours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use secrecy::ExposeSecret;
use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use crate::config::{Allow, SecretSpec, SocketConfig, valid_name};
use crate::metrics::{Denied, Metrics};
use crate::secret::SecretData;
use crate::store::{self, Entry, Store};

/// A bound socket, ready to serve.
pub struct Bound {
    listener: UnixListener,
    file: crate::write::SocketFile,
    acl: Arc<Acl>,
    limits: Limits,
}

/// Who may connect, and who may read each secret.
#[derive(Debug)]
pub struct Acl {
    /// `socket.allow` plus every secret's own list: who may connect at all.
    connect: Vec<Allow>,
    /// `socket.allow`: who may read a secret without a list of its own.
    socket: Vec<Allow>,
    /// Per secret: its `allow`, or `socket.allow`.
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
        Acl { connect, socket: socket.allow.clone(), secrets: per }
    }

    fn may_read(&self, peer: &Peer, secret: &str) -> bool {
        allowed(self.secrets.get(secret).unwrap_or(&self.socket), peer.uid, peer.gid)
    }
}

/// Why the socket could not be set up.
pub use crate::write::PlaceError as BindError;

/// Creates the socket file with its mode, replacing a stale one.
pub fn bind(cfg: &SocketConfig, secrets: &[SecretSpec]) -> Result<Bound, BindError> {
    let (std_listener, file) = crate::write::bind_socket(&cfg.path, cfg.mode)?;
    let io = |source| BindError::Io { path: cfg.path.display().to_string(), source };
    std_listener.set_nonblocking(true).map_err(io)?;
    let listener = UnixListener::from_std(std_listener).map_err(io)?;
    Ok(Bound { listener, file, acl: Arc::new(Acl::new(cfg, secrets)), limits: Limits::new(cfg) })
}

// === impl Limits ===

/// Open connections and waiting requests, counted per uid against the
/// `[socket]` caps. Counts go down when the guards drop.
#[derive(Clone)]
struct Limits(Arc<LimitsInner>);

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
type Bucket = Option<u32>;

/// Which cap a connection or a wait ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    Total,
    Uid,
}

impl Limits {
    fn new(cfg: &SocketConfig) -> Limits {
        Limits(Arc::new(LimitsInner {
            max_connections: cfg.max_connections,
            per_uid: cfg.max_connections_per_uid,
            waits_per_uid: cfg.max_waits_per_uid,
            counts: Mutex::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connect(&self, uid: u32, allowed: bool) -> Result<Slot, Over> {
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

    fn wait(&self, uid: u32) -> Option<Slot> {
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
struct Slot {
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

/// Logs a repeating event at most once per interval, with how many were
/// left out in between.
struct Sparse {
    every: Duration,
    last: Option<Instant>,
    skipped: u64,
}

impl Sparse {
    fn new(every: Duration) -> Sparse {
        Sparse { every, last: None, skipped: 0 }
    }

    /// `Some(skipped since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

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
/// `outcome` is `allowed`, `denied` (not on the allow list), `rate_limited`
/// (too many denials from this uid) or `unavailable`. Never a value.
///
/// `exe` and `secret` come from the caller; they are written through
/// [`audit_field`], so a path holding a newline, a space or a quote cannot
/// start a line of its own or shift the fields after it.
fn audit(peer: &Peer, secret: &str, version: Option<u64>, outcome: &'static str) {
    let pid = peer.pid.map_or("-".to_string(), |p| p.to_string());
    let exe = peer.exe.as_deref().map_or("-".to_string(), audit_field);
    let secret = audit_field(secret);
    let version = version.map_or("-".to_string(), |v| v.to_string());
    if outcome == "allowed" {
        tracing::info!(target: "vaultlet::audit", uid = peer.uid, gid = peer.gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    } else {
        tracing::warn!(target: "vaultlet::audit", uid = peer.uid, gid = peer.gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    }
}

/// A caller-controlled value as one audit field: as it is when it is
/// printable ASCII without spaces, quotes or backslashes; otherwise in
/// double quotes with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{…}` for every
/// other control or invisible line-breaking character. Bytes that are not
/// UTF-8 reach here as U+FFFD (the path is read lossily).
pub fn audit_field(v: &str) -> String {
    let bare = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if bare {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Denials per uid in a sliding window; past the limit, callers get 429
/// and the log gets one line per window instead of one per request.
#[derive(Default)]
struct Denials(std::sync::Mutex<std::collections::HashMap<u32, (Instant, u32)>>);

const DENY_WINDOW: Duration = Duration::from_secs(10);
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

/// Counts and logs a refusal; the response to send.
fn deny(api: &Api, peer: &Peer, secret: &str, reason: Denied) -> Response {
    let n = api.denials.record(peer.uid);
    if n > DENY_LIMIT {
        api.metrics.socket_denied(Denied::RateLimited);
        if n == DENY_LIMIT + 1 {
            audit(peer, secret, None, "rate_limited");
        }
        return error(StatusCode::TOO_MANY_REQUESTS, "too many refused requests; slow down");
    }
    api.metrics.socket_denied(reason);
    audit(peer, secret, None, "denied");
    let msg = if reason == Denied::Socket {
        "caller is not allowed to use this socket".to_string()
    } else {
        format!("caller uid {} may not read `{secret}`", peer.uid)
    };
    error(StatusCode::FORBIDDEN, msg)
}

/// What the handlers share.
#[derive(Clone)]
struct Api {
    store: Store,
    acl: Arc<Acl>,
    denials: Arc<Denials>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

fn allowed(allow: &[Allow], uid: u32, gid: u32) -> bool {
    allow.iter().any(|a| a.uid.is_none_or(|u| u == uid) && a.gid.is_none_or(|g| g == gid))
}

/// How long a caller not on any allow list has to send its one request.
const REFUSED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until shutdown, then removes the socket file if it is still ours.
pub async fn serve(bound: Bound, store: Store, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let Bound { listener, file, acl, limits } = bound;
    let app = router_with(store, acl.clone(), limits.clone(), metrics.clone());
    let mut conns = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut accept_log = Sparse::new(Duration::from_secs(60));
    let mut over_log: HashMap<Bucket, Sparse> = HashMap::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = Duration::ZERO;
                    s
                }
                Err(e) => {
                    // Out of descriptors (or memory): retrying at once would
                    // spin and log the same line thousands of times.
                    if let Some(skipped) = accept_log.due() {
                        tracing::warn!(error = %e, skipped, "accept failed; backing off");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
                exe: c
                    .pid()
                    .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
                    .map(|e| e.to_string_lossy().into()),
                allowed: allowed(&acl.connect, c.uid(), c.gid()),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                continue;
            }
        };
        let slot = match limits.connect(peer.uid, peer.allowed) {
            Ok(slot) => slot,
            Err(over) => {
                let reason = match over {
                    Over::Uid => Denied::ConnectionLimitUid,
                    Over::Total => Denied::ConnectionLimit,
                };
                metrics.socket_denied(reason);
                metrics.socket_status(503);
                if over_log.len() > 10_000 {
                    over_log.clear();
                }
                if let Some(skipped) =
                    over_log.entry(peer.allowed.then_some(peer.uid)).or_insert_with(|| Sparse::new(DENY_WINDOW)).due()
                {
                    tracing::warn!(
                        uid = peer.uid,
                        gid = peer.gid,
                        skipped,
                        cap = reason.label(),
                        "too many connections; closing new ones"
                    );
                }
                // Best effort, never waits: the caller learns why, and the
                // descriptor is closed at once. (tokio's try_write would
                // refuse: a fresh socket has no readiness yet.)
                use rustix::net::SendFlags;
                let _ = rustix::net::send(&stream, OVER_CAP, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
                continue;
            }
        };
        let refused = !peer.allowed;
        let svc = TowerToHyperService::new(app.clone().layer(Extension(peer)));
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(if refused { REFUSED_HEADER_TIMEOUT } else { Duration::from_secs(10) })
                // A refused caller gets its one 403 with `Connection: close`.
                .keep_alive(!refused)
                .max_buf_size(16 * 1024)
                // Answer a client that closed its write side after the request.
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    // Each connection finishes the request it is serving (its own 2 s
    // deadline above); whatever is left after that is cut.
    let drained =
        tokio::time::timeout(Duration::from_millis(2500), async { while conns.join_next().await.is_some() {} });
    if drained.await.is_err() {
        conns.abort_all();
    }
    file.remove();
}

/// The answer to a connection over a cap.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 37\r\n\r\n{\"error\":\"too many open connections\"}";

/// The routes; the peer arrives as an extension per connection.
pub fn router(store: Store, acl: Arc<Acl>, metrics: Arc<Metrics>) -> Router {
    let limits = Limits(Arc::new(LimitsInner {
        max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
        per_uid: crate::config::DEFAULT_MAX_CONNECTIONS_PER_UID,
        waits_per_uid: crate::config::DEFAULT_MAX_WAITS_PER_UID,
        counts: Mutex::default(),
    }));
    router_with(store, acl, limits, metrics)
}

fn router_with(store: Store, acl: Arc<Acl>, limits: Limits, metrics: Arc<Metrics>) -> Router {
    let api = Api { store, acl, denials: Arc::default(), limits, metrics };
    Router::new()
        .route("/v1/secrets", get(list))
        .route("/v1/secrets/{name}", get(one))
        .route("/v1/secrets/{name}/rejected", axum::routing::post(rejected))
        .route("/v1/events", get(events))
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; see /v1/secrets, /v1/health, /v1/ready") })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported") })
        .layer(axum::middleware::from_fn_with_state(api.clone(), check_peer))
        .layer(axum::middleware::map_response_with_state(api.clone(), no_store))
        .with_state(api)
}

async fn check_peer(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.allowed { next.run(req).await } else { deny(&api, &peer, "-", Denied::Socket) }
}

async fn no_store(State(api): State<Api>, mut res: Response) -> Response {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    api.metrics.socket_status(res.status().as_u16());
    res
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json(&serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A JSON response whose buffer is wiped when hyper is done with it. The
/// size is measured first so the buffer is allocated once: growing it would
/// leave copies of secrets in freed memory.
fn json<T: Serialize>(v: &T) -> Response {
    let Ok(buf) = crate::secret::written_once(|w| serde_json::to_writer(w, v)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = axum::body::Body::from(axum::body::Bytes::from_owner(buf));
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Serializes one secret, exposing values only into the response body.
struct SecretJson<'a> {
    name: &'a str,
    entry: &'a Entry,
    data: &'a SecretData,
}

struct DataJson<'a>(&'a SecretData);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0.iter() {
            m.serialize_entry(k, v.expose_secret())?;
        }
        m.end()
    }
}

impl Serialize for SecretJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", self.name)?;
        m.serialize_entry("version", &self.entry.version)?;
        m.serialize_entry("data", &DataJson(self.data))?;
        if let Some(l) = self.entry.lease.as_ref().map(|c| c.get()) {
            let left = l.expires_at.saturating_duration_since(Instant::now());
            m.serialize_entry(
                "lease",
                &serde_json::json!({
                    "expires_at": rfc3339(SystemTime::now() + left),
                    "ttl_seconds": left.as_secs(),
                    "renewable": l.renewable,
                }),
            )?;
        }
        m.end()
    }
}

async fn list(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let snap = api.store.snapshot();
    let now = Instant::now();
    let visible: Vec<&Arc<str>> = snap.keys().filter(|n| api.acl.may_read(&peer, n)).collect();
    struct All<'a>(&'a store::Snapshot, &'a [&'a Arc<str>], Instant);
    impl Serialize for All<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for name in self.1 {
                let entry = &self.0[&***name];
                if let Some(data) = entry.live(self.2) {
                    m.serialize_entry(name, &SecretJson { name, entry, data })?;
                }
            }
            m.end()
        }
    }
    for name in &visible {
        let e = &snap[&***name];
        if e.live(now).is_some() {
            audit(&peer, name, Some(e.version), "allowed");
        }
    }
    let unavailable: serde_json::Map<String, serde_json::Value> = visible
        .iter()
        .filter_map(|n| api.store.unavailable(&snap[&***n], now).map(|r| (n.to_string(), r.into())))
        .collect();
    #[derive(serde::Serialize)]
    struct Body<'a> {
        secrets: All<'a>,
        unavailable: serde_json::Map<String, serde_json::Value>,
    }
    json(&Body { secrets: All(&snap, &visible, now), unavailable })
}

/// Longest a long-poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `?wait=30s&after=N`.
struct Poll {
    wait: Option<Duration>,
    after: Option<u64>,
}

fn parse_poll(q: Option<&str>) -> Result<Poll, &'static str> {
    let mut p = Poll { wait: None, after: None };
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait" => {
                p.wait =
                    Some(crate::config::parse_duration(v).ok_or("`wait` must be a duration like 30s")?.min(MAX_WAIT))
            }
            "after" => p.after = Some(v.parse().map_err(|_| "`after` must be a version number")?),
            _ => return Err("unknown query parameter; use `wait` and `after`"),
        }
    }
    Ok(p)
}

async fn one(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    UrlPath(name): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let store = &api.store;
    if !valid_name(&name) {
        return error(StatusCode::BAD_REQUEST, "invalid secret name");
    }
    let poll = match parse_poll(q.as_deref()) {
        Ok(p) => p,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    // Refuse before saying whether the name exists, so a restricted caller
    // cannot enumerate secrets by comparing 403 with 404.
    if !api.acl.may_read(&peer, &name) {
        return deny(&api, &peer, &name, Denied::Secret);
    }
    if !store.snapshot().contains_key(name.as_str()) {
        return error(StatusCode::NOT_FOUND, format!("no secret named `{name}`"));
    }
    if let Some(wait) = poll.wait {
        let Some(_slot) = api.limits.wait(peer.uid) else {
            return too_many_waits(&api.metrics);
        };
        // Long-poll: answer once a version newer than `after` is available
        // (any version without `after`), or when the wait is over.
        let deadline = Instant::now() + wait;
        let mut rx = store.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            let entry = &snap[name.as_str()];
            // A version below `after` means vaultlet restarted since the
            // client's last answer (versions start again at 1): answer too.
            if entry.live(Instant::now()).is_some() && poll.after.is_none_or(|a| entry.version != a) {
                break;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let snap = store.snapshot();
    let entry = &snap[name.as_str()];
    let now = Instant::now();
    match entry.live(now) {
        Some(data) => {
            audit(&peer, &name, Some(entry.version), "allowed");
            let mut res = json(&SecretJson { name: &name, entry, data });
            res.headers_mut().insert("x-vaultlet-version", HeaderValue::from(entry.version));
            res
        }
        None => {
            audit(&peer, &name, None, "unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, store.unavailable(entry, now).unwrap_or_default())
        }
    }
}

/// `POST /v1/secrets/{name}/rejected?version=N` (logic in [`crate::rejected`]).
async fn rejected(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    UrlPath(name): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Response {
    if !valid_name(&name) {
        return error(StatusCode::BAD_REQUEST, "invalid secret name");
    }
    if !api.acl.may_read(&peer, &name) {
        return deny(&api, &peer, &name, Denied::Secret);
    }
    match crate::rejected::report(&api.store, peer.uid, &name, q.as_deref()).await {
        Ok(a) => json(&serde_json::json!({ "name": name, "version": a.version, "replaced": a.replaced })),
        Err(e) => error(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST), e.to_string()),
    }
}

/// `GET /v1/events`: server-sent events, one per version change.
async fn events(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let Some(slot) = api.limits.wait(peer.uid) else {
        return too_many_waits(&api.metrics);
    };
    let store = api.store.clone();
    let acl = api.acl.clone();
    use axum::response::sse::{Event, KeepAlive, Sse};
    /// What each subscriber last told its client, per secret.
    struct St {
        rx: tokio::sync::watch::Receiver<store::Snapshot>,
        told: std::collections::BTreeMap<Arc<str>, Option<u64>>,
        queue: std::collections::VecDeque<Event>,
        /// Held for as long as the stream lives.
        _slot: Slot,
    }
    let st = St { rx: store.subscribe(), told: Default::default(), queue: Default::default(), _slot: slot };
    let stream = futures_util::stream::unfold((st, store), move |(mut st, store)| {
        let (acl, peer) = (acl.clone(), peer.clone());
        async move {
            loop {
                if let Some(ev) = st.queue.pop_front() {
                    return Some((Ok::<_, std::convert::Infallible>(ev), (st, store)));
                }
                let snap = st.rx.borrow_and_update().clone();
                let now = Instant::now();
                for (name, entry) in snap.iter().filter(|(n, _)| acl.may_read(&peer, n)) {
                    let now_v = entry.live(now).map(|_| entry.version);
                    let before = st.told.get(name).copied().flatten();
                    if now_v == before && st.told.contains_key(name) {
                        continue;
                    }
                    let ev = match now_v {
                    Some(v) => Event::default().event("secret").data(serde_json::json!({ "name": name, "version": v }).to_string()),
                    None if before.is_some() => Event::default().event("unavailable").data(
                        serde_json::json!({ "name": name, "reason": store.unavailable(entry, now).unwrap_or_default() })
                            .to_string(),
                    ),
                    None => {
                        st.told.insert(name.clone(), None);
                        continue;
                    }
                };
                    st.told.insert(name.clone(), now_v);
                    st.queue.push_back(ev);
                }
                if st.queue.is_empty() && st.rx.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")).into_response()
}

fn too_many_waits(metrics: &Metrics) -> Response {
    metrics.socket_denied(Denied::WaitLimit);
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many long-polls and event streams from this uid (socket.max_waits_per_uid)",
    )
}

async fn health() -> Response {
    json(&serde_json::json!({ "status": "ok" }))
}

async fn ready(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let reasons = api.store.not_ready(Instant::now());
    if reasons.is_empty() {
        return json(&serde_json::json!({ "ready": true }));
    }
    // Readiness is global; the reasons name only secrets this caller may read.
    let list: Vec<_> = reasons
        .into_iter()
        .filter(|(s, _)| api.acl.may_read(&peer, s))
        .map(|(s, r)| serde_json::json!({ "secret": s, "reason": r }))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, json(&serde_json::json!({ "ready": false, "reasons": list }))).into_response()
}

/// Formats a time as RFC 3339 UTC with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
    }

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
    fn connection_caps_count_per_uid_and_in_total() {
        let cfg = SocketConfig {
            path: "/x".into(),
            mode: 0o600,
            allow: vec![],
            max_connections: 3,
            max_connections_per_uid: 2,
            max_waits_per_uid: 1,
        };
        let l = Limits::new(&cfg);
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
        let l = Limits::new(&cfg);
        let _r1 = l.connect(100, false).unwrap();
        let _r2 = l.connect(101, false).unwrap();
        assert_eq!(l.connect(102, false).err(), Some(Over::Uid));
        let _ok = l.connect(7, true).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_events_are_logged_once_per_interval() {
        let mut s = Sparse::new(Duration::from_secs(60));
        assert_eq!(s.due(), Some(0));
        for _ in 0..500 {
            assert_eq!(s.due(), None);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.due(), Some(500));
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

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;
    use secrecy::SecretString;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One server for all cases: a runtime thread serving a socket with one
    /// secret, like the real daemon.
    fn server() -> &'static (tokio::runtime::Runtime, PathBuf) {
        static S: OnceLock<(tokio::runtime::Runtime, PathBuf)> = OnceLock::new();
        S.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap().keep();
            let path = dir.join("fuzz.sock");
            let uid = rustix::process::getuid().as_raw();
            let cfg = SocketConfig {
                path: path.clone(),
                mode: 0o600,
                allow: vec![Allow { uid: Some(uid), gid: None }],
                max_connections: 64,
                max_connections_per_uid: 64,
                max_waits_per_uid: 8,
            };
            let store = Store::new(["db", "api"]);
            let mut d = SecretData::default();
            d.insert("password", SecretString::from("fuzz-secret-value".to_string()));
            store.publish("db", d, None);
            let bound = {
                let _in_runtime = rt.enter();
                bind(&cfg, &[]).unwrap()
            };
            rt.spawn(serve(bound, store, crate::metrics::Metrics::new(), CancellationToken::new()));
            (rt, path)
        })
    }

    /// Sends `bytes`, half-closes, reads the answer; returns the status line's code.
    fn exchange(bytes: &[u8]) -> Option<u16> {
        let (rt, path) = server();
        rt.block_on(async {
            let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
                .await
                .expect("the server must answer or close, not hang");
            r.ok()?;
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("fuzz-secret-value") || text.starts_with("HTTP/1.1 200"), "{text}");
            text.split(' ').nth(1).and_then(|c| c.parse().ok())
        })
    }

    fn healthy() {
        assert_eq!(exchange(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some(200));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Raw bytes: an answer below 500, or a closed connection.
        #[test]
        fn arbitrary_bytes_get_4xx_or_close(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Some(code) = exchange(&bytes) {
                prop_assert!(code < 500 || code == 503, "status {code}");
            }
        }

        /// Well-formed requests with arbitrary methods, paths and headers.
        #[test]
        fn arbitrary_requests_get_sane_answers(
            method in "(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|[A-Z]{1,10})",
            path in "/(v1/(secrets(/[ -~]{0,60})?|events|ready|health)|[ -~]{0,80})",
            header in "[A-Za-z-]{1,20}",
            value in "[ -~]{0,200}",
        ) {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\nConnection: close\r\n\r\n");
            if path.starts_with("/v1/events") && method == "GET" {
                return Ok(()); // a stream: never ends by itself
            }
            if let Some(code) = exchange(req.as_bytes()) {
                prop_assert!(code < 500 || code == 503, "{method} {path}: {code}");
            }
        }
    }

    #[test]
    fn still_healthy_after_fuzzing() {
        for _ in 0..50 {
            let _ = exchange(b"\x00\xff GET /v1/secrets/%zz HTTP/9.9\r\n\r\n");
        }
        let _ = exchange(format!("GET /v1/health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100_000)).as_bytes());
        healthy();
        assert_eq!(exchange(b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some(200));
    }
}
