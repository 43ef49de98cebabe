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
//! caller not on the allow list gets 403 for every request on that
//! connection and one log line with its uid, gid and pid.
//!
//! The socket file is created under a temporary name, given its mode, then
//! renamed into place, so it is never reachable with a looser mode. A stale
//! socket (nobody listening) is replaced; a live one or a non-socket file at
//! the path is an error. The file is removed at shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
use crate::secret::SecretData;
use crate::store::{self, Entry, Store};

/// A bound socket, ready to serve.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    acl: Arc<Acl>,
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
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// Another process is serving on it.
    #[error("{0} is in use by another process")]
    InUse(String),
    /// I/O failure.
    #[error("socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Creates the socket file with its mode, replacing a stale one.
pub fn bind(cfg: &SocketConfig, secrets: &[SecretSpec]) -> Result<Bound, BindError> {
    let path = &cfg.path;
    let shown = path.display().to_string();
    let io = |source| BindError::Io { path: shown.clone(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(shown));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(Bound { listener, path: path.clone(), acl: Arc::new(Acl::new(cfg, secrets)) })
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
fn audit(peer: &Peer, secret: &str, version: Option<u64>, outcome: &'static str) {
    let pid = peer.pid.map_or("-".to_string(), |p| p.to_string());
    let exe = peer.exe.as_deref().unwrap_or("-");
    let version = version.map_or("-".to_string(), |v| v.to_string());
    if outcome == "allowed" {
        tracing::info!(target: "vaultlet::audit", uid = peer.uid, gid = peer.gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    } else {
        tracing::warn!(target: "vaultlet::audit", uid = peer.uid, gid = peer.gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    }
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
fn deny(denials: &Denials, peer: &Peer, secret: &str, reason: &'static str) -> Response {
    let n = denials.record(peer.uid);
    if n > DENY_LIMIT {
        crate::metrics::inc("vaultlet_socket_denied_total", &[("reason", "rate_limited")]);
        if n == DENY_LIMIT + 1 {
            audit(peer, secret, None, "rate_limited");
        }
        return error(StatusCode::TOO_MANY_REQUESTS, "too many refused requests; slow down");
    }
    crate::metrics::inc("vaultlet_socket_denied_total", &[("reason", reason)]);
    audit(peer, secret, None, "denied");
    let msg = if reason == "socket" {
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
}

fn allowed(allow: &[Allow], uid: u32, gid: u32) -> bool {
    allow.iter().any(|a| a.uid.is_none_or(|u| u == uid) && a.gid.is_none_or(|g| g == gid))
}

/// Serves until shutdown, then removes the socket file.
pub async fn serve(bound: Bound, store: Store, shutdown: CancellationToken) {
    let Bound { listener, path, acl } = bound;
    let app = router(store, acl.clone());
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
        if !peer.allowed {
            tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "caller not on any allow list; answering 403");
        }
        let svc = TowerToHyperService::new(app.clone().layer(Extension(peer)));
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
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
    conns.abort_all();
    remove_socket(&path);
}

fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The routes; the peer arrives as an extension per connection.
pub fn router(store: Store, acl: Arc<Acl>) -> Router {
    let api = Api { store, acl, denials: Arc::default() };
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
        .layer(axum::middleware::map_response(no_store))
        .with_state(api)
}

async fn check_peer(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.allowed { next.run(req).await } else { deny(&api.denials, &peer, "-", "socket") }
}

async fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::metrics::socket_status(res.status().as_u16());
    res
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json(&serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A JSON response whose buffer is wiped when hyper is done with it. The
/// size is measured first so the buffer is allocated once: growing it would
/// leave copies of secrets in freed memory.
fn json<T: Serialize>(v: &T) -> Response {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    if serde_json::to_writer(&mut count, v).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(count.0));
    if serde_json::to_writer(&mut *buf, v).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
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
        return deny(&api.denials, &peer, &name, "secret");
    }
    if !store.snapshot().contains_key(name.as_str()) {
        return error(StatusCode::NOT_FOUND, format!("no secret named `{name}`"));
    }
    if let Some(wait) = poll.wait {
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
        return deny(&api.denials, &peer, &name, "secret");
    }
    match crate::rejected::report(&api.store, peer.uid, &name, q.as_deref()).await {
        Ok(a) => json(&serde_json::json!({ "name": name, "version": a.version, "replaced": a.replaced })),
        Err(e) => error(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST), e.to_string()),
    }
}

/// `GET /v1/events`: server-sent events, one per version change.
async fn events(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let store = api.store.clone();
    let acl = api.acl.clone();
    use axum::response::sse::{Event, KeepAlive, Sse};
    /// What each subscriber last told its client, per secret.
    struct St {
        rx: tokio::sync::watch::Receiver<store::Snapshot>,
        told: std::collections::BTreeMap<Arc<str>, Option<u64>>,
        queue: std::collections::VecDeque<Event>,
    }
    let st = St { rx: store.subscribe(), told: Default::default(), queue: Default::default() };
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
            let cfg =
                SocketConfig { path: path.clone(), mode: 0o600, allow: vec![Allow { uid: Some(uid), gid: None }] };
            let store = Store::new(["db", "api"]);
            let mut d = SecretData::default();
            d.insert("password", SecretString::from("fuzz-secret-value".to_string()));
            store.publish("db", d, None);
            let bound = {
                let _in_runtime = rt.enter();
                bind(&cfg, &[]).unwrap()
            };
            rt.spawn(serve(bound, store, CancellationToken::new()));
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
