//! JSON bodies: built so that a secret leaves memory when its answer does.
//!
//! A body holding a secret is written into a buffer of exactly its size
//! (measured first, so it never grows and leaves copies behind in freed
//! memory) and wiped when hyper has sent it. Values are exposed only here,
//! straight into the body; nothing else in the API sees them.
//!
//! Dates are RFC 3339 UTC with second precision, formatted by hand: a
//! date crate for one format is not worth the dependency.

use std::time::SystemTime;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::time::Instant;

use crate::secret::SecretData;
use crate::store::Entry;

/// `{"error": msg}` with this status.
pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json(&serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A JSON response whose buffer is wiped when hyper is done with it. The
/// size is measured first so the buffer is allocated once: growing it would
/// leave copies of secrets in freed memory.
pub(super) fn json<T: Serialize>(v: &T) -> Response {
    let Ok(buf) = crate::secret::written_once(|w| serde_json::to_writer(w, v)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = axum::body::Body::from(axum::body::Bytes::from_owner(buf));
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Serializes one secret, exposing values only into the response body.
pub(super) struct SecretJson<'a> {
    pub(super) name: &'a str,
    pub(super) entry: &'a Entry,
    pub(super) data: &'a SecretData,
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
    use std::time::Duration;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
