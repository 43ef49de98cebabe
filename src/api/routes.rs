//! What each route answers.
//!
//! The router is axum's; the caller ([`Peer`]) arrives as a request
//! extension set per connection. Two layers wrap every route: callers on no
//! allow list get their 403 before any handler runs, and every answer gets
//! `Cache-Control: no-store` and is counted by status.
//!
//! The read apps make in a loop skips the router ([`Conn`]).
//!
//! A name that is not configured gets the answer of a secret the caller
//! may not read: [`Acl::may_read`] is false for it, so every route that
//! takes a name (plain read, long-poll, fast path, `rejected`) refuses it
//! through the same [`deny`] — same 403 and message, same denial count
//! and rate limit, same audit line — before looking anything up or
//! waiting. The routes that take no name (list, events, ready) only ever
//! name secrets the caller may read.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::future::{self, Either, Ready};
use hyper::body::Incoming;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::time::Instant;

use super::access::{Acl, Denials, Limits, Peer, audit, deny, too_many_waits};
use super::body::{Bodies, SecretJson, error, json, json_bytes};
use super::watch;
use crate::config::valid_name;
use crate::metrics::{Denied, Metrics};
use crate::secret::SecretData;
use crate::store::{Entry, Store};

/// What the handlers share.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) store: Store,
    pub(super) acl: Arc<Acl>,
    pub(super) denials: Arc<Denials>,
    pub(super) limits: Limits,
    pub(super) bodies: Arc<Bodies>,
    pub(super) metrics: Arc<Metrics>,
}

impl Api {
    pub(super) fn new(store: Store, acl: Arc<Acl>, limits: Limits, metrics: Arc<Metrics>) -> Api {
        let bodies = Arc::new(Bodies::new(&store.snapshot()));
        Api { store, acl, denials: Arc::default(), limits, bodies, metrics }
    }

    /// Every route, for requests the fast path ([`Conn`]) leaves to axum.
    pub(super) fn router(&self) -> Router {
        Router::new()
            .route("/v1/secrets", get(list))
            .route("/v1/secrets/{name}", get(one))
            .route("/v1/secrets/{name}/rejected", axum::routing::post(rejected))
            .route("/v1/events", get(events))
            .route("/v1/health", get(health))
            .route("/v1/ready", get(ready))
            .fallback(|| async {
                error(StatusCode::NOT_FOUND, "no such route; see /v1/secrets, /v1/health, /v1/ready")
            })
            .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported") })
            .layer(axum::middleware::from_fn_with_state(self.clone(), check_peer))
            .layer(axum::middleware::map_response_with_state(self.clone(), no_store))
            .with_state(self.clone())
    }
}

/// The routes, with the default connection caps; the peer arrives as an
/// extension per connection.
pub fn router(store: Store, acl: Arc<Acl>, metrics: Arc<Metrics>) -> Router {
    Api::new(store, acl, Limits::defaults(), metrics).router()
}

// === impl Conn ===

/// The service of one connection: answers a plain read of a secret this
/// caller may read and that is available (`GET /v1/secrets/{name}`, no
/// query) itself, and hands every other request to the router with the
/// peer attached.
///
/// Apps read in a loop, so that one answer is most of the socket's work;
/// going round axum's routing, extractors and two middleware layers for it
/// cost more than building the answer. The fast path answers only when the
/// router would answer 200 with the same bytes and headers (the same
/// handler code decides: [`secret_response`], [`audit`]); anything it is
/// not sure of — a refused caller, a bad or unknown name, a query, an
/// unavailable secret, another method — goes to the router, which does
/// all the checks and logs itself.
pub(super) struct Conn {
    api: Api,
    peer: Peer,
    router: TowerToHyperService<Router>,
}

impl Conn {
    pub(super) fn new(api: Api, router: Router, peer: Peer) -> Conn {
        Conn { api, peer, router: TowerToHyperService::new(router) }
    }

    fn fast<B>(&self, req: &Request<B>) -> Option<Response> {
        if req.method() != Method::GET || !self.peer.allowed || req.uri().query().is_some() {
            return None;
        }
        // A valid name is letters, digits and `_`: nothing to percent-decode,
        // no `/`, so this is the segment axum's `{name}` would match.
        let name = req.uri().path().strip_prefix("/v1/secrets/")?;
        if !valid_name(name) || !self.api.acl.may_read(&self.peer, name) {
            return None;
        }
        let snap = self.api.store.snapshot();
        let entry = snap.get(name)?;
        let now = Instant::now();
        let data = entry.live(now)?;
        audit(&self.peer, name, Some(entry.version), "allowed");
        let mut res = secret_response(&self.api, name, entry, data, now);
        no_store_sync(&self.api.metrics, &mut res);
        // axum's router sets it last from the body's size; so does this.
        if let Some(n) = axum::body::HttpBody::size_hint(res.body()).exact() {
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Some(res)
    }
}

impl hyper::service::Service<Request<Incoming>> for Conn {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, TowerToHyperServiceFuture<Router, Request<Incoming>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(res) = self.fast(&req) {
            return Either::Left(future::ready(Ok(res)));
        }
        req.extensions_mut().insert(self.peer.clone());
        Either::Right(self.router.call(req))
    }
}

/// The 200 of `GET /v1/secrets/{name}` (without the headers every route
/// gets): the kept body when it still says the same.
fn secret_response(api: &Api, name: &str, entry: &Entry, data: &Arc<SecretData>, now: Instant) -> Response {
    let Some(body) = api.bodies.secret(name, entry, data, now) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut res = json_bytes(body);
    res.headers_mut().insert("x-vaultlet-version", HeaderValue::from(entry.version));
    res
}

async fn check_peer(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.allowed { next.run(req).await } else { deny(&api.denials, &api.metrics, &peer, "-", Denied::Socket) }
}

async fn no_store(State(api): State<Api>, mut res: Response) -> Response {
    no_store_sync(&api.metrics, &mut res);
    res
}

/// What every answer gets: `Cache-Control: no-store`, and a count by status.
fn no_store_sync(metrics: &Metrics, res: &mut Response) {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    metrics.socket_status(res.status().as_u16());
}

/// `GET /v1/secrets`: every secret this caller may read.
async fn list(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let snap = api.store.snapshot();
    let now = Instant::now();
    let visible: Vec<&Arc<str>> = snap.keys().filter(|n| api.acl.may_read(&peer, n)).collect();
    struct All<'a>(Vec<SecretJson<'a>>);
    impl Serialize for All<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for one in &self.0 {
                m.serialize_entry(one.name(), one)?;
            }
            m.end()
        }
    }
    // Built before serializing: serializing runs twice and must write the
    // same bytes both times, whatever the clock does in between.
    let all = All(visible
        .iter()
        .filter_map(|name| {
            let entry = &snap[&***name];
            entry.live(now).map(|data| SecretJson::new(name, entry, data, now))
        })
        .collect());
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
    json(&Body { secrets: all, unavailable })
}

/// Whether `peer` may read the secret `name` and it is in the store. The
/// store holds every configured secret, so this is [`Acl::may_read`]; a
/// name missing from either is refused the same way.
fn readable(api: &Api, peer: &Peer, name: &str) -> bool {
    api.acl.may_read(peer, name) && api.store.snapshot().contains_key(name)
}

/// `GET /v1/secrets/{name}`, optionally a long-poll.
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
    let poll = match watch::parse_poll(q.as_deref()) {
        Ok(p) => p,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    if !readable(&api, &peer, &name) {
        return deny(&api.denials, &api.metrics, &peer, &name, Denied::Secret);
    }
    if let Some(wait) = poll.wait {
        let Some(_slot) = api.limits.wait(peer.uid) else {
            return too_many_waits(&api.metrics);
        };
        watch::until_newer(store, &name, wait, poll.after).await;
    }
    let snap = store.snapshot();
    let entry = &snap[name.as_str()];
    let now = Instant::now();
    match entry.live(now) {
        Some(data) => {
            audit(&peer, &name, Some(entry.version), "allowed");
            secret_response(&api, &name, entry, data, now)
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
    if !readable(&api, &peer, &name) {
        return deny(&api.denials, &api.metrics, &peer, &name, Denied::Secret);
    }
    match crate::rejected::report(&api.store, peer.uid, &name, q.as_deref()).await {
        Ok(a) => json(&serde_json::json!({ "name": name, "version": a.version, "replaced": a.replaced })),
        Err(e) => error(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST), e.to_string()),
    }
}

/// `GET /v1/events` (see [`watch::events`]).
async fn events(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let Some(slot) = api.limits.wait(peer.uid) else {
        return too_many_waits(&api.metrics);
    };
    watch::events(api.store.clone(), api.acl.clone(), peer, slot)
}

async fn health() -> Response {
    json(&serde_json::json!({ "status": "ok" }))
}

/// `GET /v1/ready`: readiness is global; the reasons name only secrets
/// this caller may read.
async fn ready(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let reasons = api.store.not_ready(Instant::now());
    if reasons.is_empty() {
        return json(&serde_json::json!({ "ready": true }));
    }
    let list: Vec<_> = reasons
        .into_iter()
        .filter(|(s, _)| api.acl.may_read(&peer, s))
        .map(|(s, r)| serde_json::json!({ "secret": s, "reason": r }))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, json(&serde_json::json!({ "ready": false, "reasons": list }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Allow, SecretSpec, SocketConfig};
    use crate::store::LeaseView;
    use axum::body::Body;
    use hyper::service::Service as _;
    use secrecy::SecretString;
    use std::time::Duration;

    fn api(allow_uid: u32) -> Api {
        let cfg = SocketConfig {
            path: "/x".into(),
            mode: 0o600,
            allow: vec![Allow { uid: Some(allow_uid), gid: None }],
            max_connections: 8,
            max_connections_per_uid: 8,
            max_waits_per_uid: 1,
        };
        let store = Store::new(["db", "kv", "hidden"]);
        let mut d = SecretData::default();
        d.insert("username", SecretString::from("v-user".to_string()));
        d.insert("password", SecretString::from("pw-\"quoted\"".to_string()));
        let lease = LeaseView {
            expires_at: Instant::now() + Duration::from_secs(3600),
            ttl: Duration::from_secs(3600),
            renewable: true,
        };
        store.publish("db", d, Some(lease));
        let mut k = SecretData::default();
        k.insert("value", SecretString::from("kv-value".to_string()));
        store.publish("kv", k, None);
        let mut h = SecretData::default();
        h.insert("value", SecretString::from("hidden-value".to_string()));
        store.publish("hidden", h, None);
        let secrets = [
            SecretSpec::kv_for_test("db", None),
            SecretSpec::kv_for_test("kv", None),
            // Readable only by uid 4242.
            SecretSpec::kv_for_test("hidden", Some(vec![Allow { uid: Some(4242), gid: None }])),
        ];
        Api::new(store, Arc::new(Acl::new(&cfg, &secrets)), Limits::new(&cfg), crate::metrics::Metrics::new())
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder().method("GET").uri(path).body(Body::empty()).unwrap()
    }

    /// Status, headers (in order) and body.
    async fn parts(res: Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let status = res.status().as_u16();
        let headers = res.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec();
        (status, headers, body)
    }

    async fn via_router(api: &Api, peer: &Peer, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut req = get(path);
        req.extensions_mut().insert(peer.clone());
        parts(TowerToHyperService::new(api.router()).call(req).await.unwrap()).await
    }

    #[tokio::test]
    async fn the_fast_read_answers_what_the_router_answers() {
        let api = api(1000);
        let peer = Peer::new(1000, 1000, Some(1), None, true);
        let conn = Conn::new(api.clone(), api.router(), peer.clone());
        for path in ["/v1/secrets/db", "/v1/secrets/kv"] {
            let fast = parts(conn.fast(&get(path)).expect("a plain read takes the fast path")).await;
            let slow = via_router(&api, &peer, path).await;
            assert_eq!(fast, slow, "{path}");
            assert_eq!(fast.0, 200);
            assert!(fast.1.contains(&("cache-control".into(), "no-store".into())), "{:?}", fast.1);
            assert!(fast.1.contains(&("x-vaultlet-version".into(), "1".into())), "{:?}", fast.1);
            let v: serde_json::Value = serde_json::from_slice(&fast.2).unwrap();
            assert_eq!(v["name"], path.rsplit('/').next().unwrap());
        }
        let db: serde_json::Value =
            serde_json::from_slice(&parts(conn.fast(&get("/v1/secrets/db")).unwrap()).await.2).unwrap();
        assert_eq!(db["lease"]["renewable"], true);
        assert!(db["lease"]["ttl_seconds"].as_u64().unwrap() > 3590, "{db}");
    }

    #[tokio::test]
    async fn everything_but_a_plain_allowed_read_goes_to_the_router() {
        let api = api(1000);
        let ok = Conn::new(api.clone(), api.router(), Peer::new(1000, 1000, None, None, true));
        for path in [
            "/v1/secrets/nope",
            "/v1/secrets/db?wait=1s",
            "/v1/secrets/d%62",
            "/v1/secrets/db/",
            "/v1/secrets",
            "/v1/health",
        ] {
            assert!(ok.fast(&get(path)).is_none(), "{path}");
        }
        let head = Request::builder().method("HEAD").uri("/v1/secrets/db").body(Body::empty()).unwrap();
        assert!(ok.fast(&head).is_none());
        // Not on the list for this secret, or on no list at all.
        let other = Conn::new(api.clone(), api.router(), Peer::new(2000, 2000, None, None, true));
        assert!(other.fast(&get("/v1/secrets/db")).is_none());
        let refused = Conn::new(api.clone(), api.router(), Peer::new(1000, 1000, None, None, false));
        assert!(refused.fast(&get("/v1/secrets/db")).is_none());
        // Withdrawn: the router answers 503.
        api.store.withdraw("db", "gone".into());
        assert!(ok.fast(&get("/v1/secrets/db")).is_none());
    }

    /// What the connection answers: the fast path when it takes the
    /// request, else the router (as [`Conn::call`] does).
    async fn via_conn(conn: &Conn, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let res = match conn.fast(&req) {
            Some(res) => res,
            None => {
                let mut req = req;
                req.extensions_mut().insert(conn.peer.clone());
                TowerToHyperService::new(conn.api.router()).call(req).await.unwrap()
            }
        };
        parts(res).await
    }

    // On the paused clock: the denial window cannot run out between two
    // requests, and any wait before an answer would show as time passed.
    #[tokio::test(start_paused = true)]
    async fn a_name_that_is_not_configured_is_answered_like_a_secret_the_caller_may_not_read() {
        let api = api(1000);
        let conn = Conn::new(api.clone(), api.router(), Peer::new(1000, 1000, None, None, true));
        // Names of one length: the answers must be the same bytes once the
        // name in them is swapped.
        let (hidden, made_up) = ("hidden", "nosuch");
        let routes = [
            ("GET", "/v1/secrets/NAME"),
            ("GET", "/v1/secrets/NAME?wait=5m&after=1"),
            ("POST", "/v1/secrets/NAME/rejected?version=1"),
        ];
        let mut statuses = Vec::new();
        let started = Instant::now();
        // Each pair is two denials in a row (the limit, 10, is even), so
        // both members fall on the same side of it: 403s, then 429s.
        for round in 0..4 {
            for (method, path) in routes {
                let ask = |name: &str| {
                    let path = path.replace("NAME", name);
                    let conn = &conn;
                    async move {
                        tokio::time::timeout(Duration::from_secs(10), via_conn(conn, method, &path))
                            .await
                            .expect("answered at once")
                    }
                };
                let a = ask(hidden).await;
                let mut b = ask(made_up).await;
                b.2 = String::from_utf8(b.2).unwrap().replace(made_up, hidden).into_bytes();
                assert_eq!(a, b, "round {round}: {method} {path}");
                assert!(!String::from_utf8_lossy(&a.2).contains("hidden-value"));
                statuses.push(a.0);
            }
        }
        assert_eq!(Instant::now(), started, "an answer waited");
        assert_eq!(statuses[..3], [403, 403, 403], "{statuses:?}");
        assert!(statuses[6..].iter().all(|s| *s == 429), "the rate limit answers both alike: {statuses:?}");
        // The uid allowed to read it does read it: it is configured.
        let owner = Conn::new(api.clone(), api.router(), Peer::new(4242, 4242, None, None, true));
        assert_eq!(via_conn(&owner, "GET", "/v1/secrets/hidden").await.0, 200);
        assert_eq!(via_conn(&owner, "GET", "/v1/secrets/nosuch").await.0, 403);
    }

    #[tokio::test]
    async fn a_kept_body_is_reused_until_the_secret_changes() {
        let api = api(1000);
        let now = Instant::now();
        let body = |api: &Api| {
            let snap = api.store.snapshot();
            let e = snap["kv"].clone();
            api.bodies.secret("kv", &e, e.live(now).unwrap(), now).unwrap()
        };
        let (a, b) = (body(&api), body(&api));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same buffer, not a new serialization");
        let mut k = SecretData::default();
        k.insert("value", SecretString::from("kv-value-2".to_string()));
        api.store.publish("kv", k, None);
        let c = body(&api);
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert!(String::from_utf8_lossy(&c).contains("kv-value-2"));
        // A change in the store drops bodies of values no longer published.
        api.store.withdraw("kv", "gone".into());
        api.bodies.forget_stale(&api.store.snapshot());
        assert!(api.bodies.is_empty_for("kv"));
    }
}
