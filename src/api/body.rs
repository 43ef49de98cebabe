//! JSON bodies: built so that a secret leaves memory when its answer does.
//!
//! A body holding a secret is written into a buffer of exactly its size
//! (measured first, so it never grows and leaves copies behind in freed
//! memory) and wiped when hyper has sent it. Values are exposed only here,
//! straight into the body; nothing else in the API sees them.
//!
//! Apps read their secret in a loop, so the body of `GET /v1/secrets/{name}`
//! is kept ([`Bodies`]) and served again while nothing in it changed: the
//! same version of the same value, and the same lease figures (whole
//! seconds left, expiry second, renewability). A read then costs a lookup
//! and a reference count instead of two serializations and a date format.
//! The kept body is the same wiped-on-drop buffer; it is dropped when the
//! next read needs another one or when the store publishes a change
//! ([`Bodies::forget_stale`]), so it does not outlive the value it holds.
//!
//! Dates are RFC 3339 UTC with second precision (`humantime`, which the
//! config already uses for durations).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::time::Instant;

use crate::secret::SecretData;
use crate::store::{Entry, Snapshot};

/// `{"error": msg}` with this status.
pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json(&serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A JSON response whose buffer is wiped when hyper is done with it. The
/// size is measured first so the buffer is allocated once: growing it would
/// leave copies of secrets in freed memory.
pub(super) fn json<T: Serialize>(v: &T) -> Response {
    match wiped(v) {
        Some(body) => json_bytes(body),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `v` as JSON in a buffer of its exact size, wiped when the last copy of
/// the `Bytes` is dropped.
fn wiped<T: Serialize>(v: &T) -> Option<Bytes> {
    let buf = crate::secret::written_once(|w| serde_json::to_writer(w, v)).ok()?;
    Some(Bytes::from_owner(buf))
}

/// A 200 with this JSON body.
pub(super) fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], axum::body::Body::from(body))
        .into_response()
}

/// Serializes one secret, exposing values only into the response body.
pub(super) struct SecretJson<'a> {
    name: &'a str,
    version: u64,
    data: &'a SecretData,
    lease: Option<LeaseFigures>,
}

/// What a body says about a lease, worked out once per body (serializing
/// runs twice, see [`crate::secret::written_once`], and must write the
/// same bytes both times).
#[derive(Clone, Copy, PartialEq, Eq)]
struct LeaseFigures {
    /// Whole seconds left.
    ttl_seconds: u64,
    /// The wall-clock second the lease ends.
    expires_at: u64,
    renewable: bool,
}

impl LeaseFigures {
    fn of(entry: &Entry, now: Instant) -> Option<LeaseFigures> {
        let l = entry.lease.as_ref()?.get();
        let left = l.expires_at.saturating_duration_since(now);
        let end = SystemTime::now() + left;
        let expires_at = end.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(LeaseFigures { ttl_seconds: left.as_secs(), expires_at, renewable: l.renewable })
    }
}

impl<'a> SecretJson<'a> {
    /// The body of one secret as read at `now`.
    pub(super) fn new(name: &'a str, entry: &Entry, data: &'a SecretData, now: Instant) -> SecretJson<'a> {
        SecretJson { name, version: entry.version, data, lease: LeaseFigures::of(entry, now) }
    }

    /// The secret's name.
    pub(super) fn name(&self) -> &'a str {
        self.name
    }
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
        m.serialize_entry("version", &self.version)?;
        m.serialize_entry("data", &DataJson(self.data))?;
        if let Some(l) = self.lease {
            m.serialize_entry(
                "lease",
                &serde_json::json!({
                    "expires_at": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(l.expires_at)),
                    "ttl_seconds": l.ttl_seconds,
                    "renewable": l.renewable,
                }),
            )?;
        }
        m.end()
    }
}

// === impl Bodies ===

/// The last body served for each secret, with what it was made from.
pub(super) struct Bodies(BTreeMap<Arc<str>, Mutex<Option<Kept>>>);

struct Kept {
    version: u64,
    /// The address of the value the body was made from (only compared): a
    /// version number alone would do, but this costs nothing and cannot be
    /// fooled by a store that starts its versions again.
    value: usize,
    lease: Option<LeaseFigures>,
    body: Bytes,
}

impl Bodies {
    /// A place for each secret the store knows (names are fixed at start).
    pub(super) fn new(snap: &Snapshot) -> Bodies {
        Bodies(snap.keys().map(|n| (n.clone(), Mutex::new(None))).collect())
    }

    /// The body of `GET /v1/secrets/{name}` for this entry at `now`: the
    /// kept one when it says exactly what a new one would.
    pub(super) fn secret(&self, name: &str, entry: &Entry, data: &Arc<SecretData>, now: Instant) -> Option<Bytes> {
        let one = SecretJson::new(name, entry, data, now);
        let Some(slot) = self.0.get(name) else { return wiped(&one) };
        let mut kept = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*kept
            && k.version == one.version
            && k.value == addr(data)
            && k.lease == one.lease
        {
            return Some(k.body.clone());
        }
        let body = wiped(&one)?;
        *kept = Some(Kept { version: one.version, value: addr(data), lease: one.lease, body: body.clone() });
        Some(body)
    }

    /// Drops every kept body whose value is no longer the one published,
    /// so a replaced or withdrawn secret is not held here until its next read.
    pub(super) fn forget_stale(&self, snap: &Snapshot) {
        for (name, slot) in &self.0 {
            let mut kept = slot.lock().unwrap_or_else(|p| p.into_inner());
            let current = snap.get(name).and_then(|e| e.value.as_ref().map(|v| (e.version, addr(v))));
            if kept.as_ref().is_some_and(|k| current != Some((k.version, k.value))) {
                *kept = None;
            }
        }
    }
}

impl Bodies {
    #[cfg(test)]
    pub(super) fn is_empty_for(&self, name: &str) -> bool {
        self.0[name].lock().unwrap().is_none()
    }
}

fn addr(v: &Arc<SecretData>) -> usize {
    Arc::as_ptr(v) as usize
}

/// Formats a time as RFC 3339 UTC with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
