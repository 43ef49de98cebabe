//! What each route answers.
//!
//! The router is axum's; the caller ([`Peer`]) arrives as a request
//! extension set per connection. Two layers wrap every route: callers on no
//! allow list get their 403 before any handler runs, and every answer gets
//! `Cache-Control: no-store` and is counted by status.
//!
//! A handler checks the secret's allow list before it says whether the
//! secret exists, so a restricted caller cannot enumerate names by comparing
//! 403 with 404.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::time::Instant;

use super::access::{Acl, Denials, Limits, Peer, audit, deny, too_many_waits};
use super::body::{SecretJson, error, json};
use super::watch;
use crate::config::valid_name;
use crate::store::{self, Store};

/// What the handlers share.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) store: Store,
    pub(super) acl: Arc<Acl>,
    pub(super) denials: Arc<Denials>,
    pub(super) limits: Limits,
}

/// The routes, with the default connection caps; the peer arrives as an
/// extension per connection.
pub fn router(store: Store, acl: Arc<Acl>) -> Router {
    router_with(store, acl, Limits::defaults())
}

pub(super) fn router_with(store: Store, acl: Arc<Acl>, limits: Limits) -> Router {
    let api = Api { store, acl, denials: Arc::default(), limits };
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

/// `GET /v1/secrets`: every secret this caller may read.
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
    if !api.acl.may_read(&peer, &name) {
        return deny(&api.denials, &peer, &name, "secret");
    }
    if !store.snapshot().contains_key(name.as_str()) {
        return error(StatusCode::NOT_FOUND, format!("no secret named `{name}`"));
    }
    if let Some(wait) = poll.wait {
        let Some(_slot) = api.limits.wait(peer.uid) else {
            return too_many_waits();
        };
        watch::until_newer(store, &name, wait, poll.after).await;
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

/// `GET /v1/events` (see [`watch::events`]).
async fn events(State(api): State<Api>, Extension(peer): Extension<Peer>) -> Response {
    let Some(slot) = api.limits.wait(peer.uid) else {
        return too_many_waits();
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
