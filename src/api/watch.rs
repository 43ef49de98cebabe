//! Requests that wait for a change: long-polls and server-sent events.
//!
//! Apps that want to hear about a rotation instead of polling either hold a
//! `GET /v1/secrets/{name}?wait=…&after=N` open until a newer version is out,
//! or subscribe to `GET /v1/events`. Both watch the store's snapshot channel,
//! so they wake on a change and cost nothing while nothing changes. Each
//! holds a wait slot ([`Limits::wait`](super::access::Limits::wait)) for
//! as long as it waits, so one uid cannot park unbounded requests.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::access::{Acl, Peer, Slot};
use crate::store::{Snapshot, Store};

/// Longest a long-poll may wait.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(300);

/// `?wait=30s&after=N`.
pub(super) struct Poll {
    pub(super) wait: Option<Duration>,
    pub(super) after: Option<u64>,
}

/// Parses the query of `GET /v1/secrets/{name}`; the message is the 400's.
pub(super) fn parse_poll(q: Option<&str>) -> Result<Poll, &'static str> {
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

/// Long-poll: returns once a version other than `after` is available (any
/// version without `after`), or when `wait` is over. A version below
/// `after` means vaultlet restarted since the client's last answer
/// (versions start again at 1): that answers too.
pub(super) async fn until_newer(store: &Store, name: &str, wait: Duration, after: Option<u64>) {
    let deadline = Instant::now() + wait;
    let mut rx = store.subscribe();
    loop {
        let snap = rx.borrow_and_update().clone();
        let entry = &snap[name];
        if entry.live(Instant::now()).is_some() && after.is_none_or(|a| entry.version != a) {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// `GET /v1/events`: server-sent events, one per version change of each
/// secret this caller may read. `slot` is held for as long as the stream.
pub(super) fn events(store: Store, acl: Arc<Acl>, peer: Peer, slot: Slot) -> Response {
    /// What each subscriber last told its client, per secret.
    struct St {
        rx: tokio::sync::watch::Receiver<Snapshot>,
        told: BTreeMap<Arc<str>, Option<u64>>,
        queue: VecDeque<Event>,
        /// Held for as long as the stream lives.
        _slot: Slot,
    }
    let st = St { rx: store.subscribe(), told: Default::default(), queue: Default::default(), _slot: slot };
    let stream = futures_util::stream::unfold((st, store), move |(mut st, store)| {
        let (acl, peer) = (acl.clone(), peer.clone());
        async move {
            loop {
                if let Some(ev) = st.queue.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), (st, store)));
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
                        Some(v) => Event::default()
                            .event("secret")
                            .data(serde_json::json!({ "name": name, "version": v }).to_string()),
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
