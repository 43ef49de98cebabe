//! What goes wrong talking to Vault, as vaultlet says it.
//!
//! [`VaultError`] is built from status codes and Vault's short `errors`
//! strings only, never from a response body (which may hold passwords).
//! Everything a server chooses to say (its `errors`, the innermost cause of
//! a transport failure) is written quoted and escaped ([`Said`]), so a
//! server cannot make a log line say something vaultlet did not.

use serde::Deserialize;
use vaultrs::error::ClientError;

use super::ops::Op;
use super::transport::BodyTooLarge;

/// A problem talking to Vault. Never carries a response body.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No connection, a timeout, or a broken response stream.
    #[error("cannot reach vault at {addr} for {op}: {reason}")]
    Unreachable {
        /// What we were doing.
        op: String,
        /// The address tried last.
        addr: String,
        /// Transport-level cause: `timed out`, or the cause's own text
        /// quoted and escaped (it can hold a server's words: the names in
        /// its certificate, a redirect's target).
        reason: String,
    },
    /// Vault answered with an error status.
    #[error("vault refused {op} ({status}): {}{hint}", Said(.message))]
    Refused {
        /// What we were doing.
        op: String,
        /// HTTP status.
        status: u16,
        /// What the server said (Vault's `errors` strings), as it said it
        /// but for control characters and a length cap; empty when it said
        /// nothing. Written quoted and escaped: it is the server's text.
        message: String,
        /// How to fix it, when we can tell (our words).
        hint: String,
    },
    /// The response did not have the shape we expect.
    #[error("vault answered {op} with a response vaultlet cannot read ({what})")]
    Malformed {
        /// What we were doing.
        op: String,
        /// Which part was wrong (never its content).
        what: &'static str,
    },
    /// The answer was larger than `vault.max_response_size`.
    #[error("vault answered {op} with more than {limit} bytes (vault.max_response_size); not read")]
    TooLarge {
        /// What we were doing.
        op: String,
        /// The cap in bytes.
        limit: usize,
    },
    /// The HTTP client could not be built (bad CA file…).
    #[error("vault client set-up: {0}")]
    Setup(String),
}

/// A server's words in an error: quoted and escaped as Rust's `{:?}`
/// does (quotes, backslashes, control and invisible line-breaking
/// characters), so no reader of the line takes them for its structure;
/// `no reason given` when there are none.
struct Said<'a>(&'a str);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() { f.write_str("no reason given") } else { write!(f, "{:?}", self.0) }
    }
}

// === impl VaultError ===

impl VaultError {
    /// Whether retrying soon may help: transport failures, 5xx, 429 and
    /// Vault's 412 (a standby that has not caught up).
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 412,
            VaultError::Malformed { .. } | VaultError::TooLarge { .. } | VaultError::Setup(_) => false,
        }
    }

    /// The HTTP status, if Vault answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 403: the token is invalid/expired, or its policy lacks a capability.
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// A renew/revoke on a lease Vault no longer knows (expired or revoked).
    pub fn is_lease_gone(&self) -> bool {
        matches!(self, VaultError::Refused { status: 400, message, .. } if message.contains("lease not found") || message.contains("invalid lease"))
    }
}
/// The error for an answer without the expected shape.
pub(super) fn malformed(op: &Op, what: &'static str) -> VaultError {
    VaultError::Malformed { op: op.what.clone(), what }
}

/// Vault's error JSON: `{"errors": ["…"]}`.
#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

/// Turns a vaultrs/rustify error into ours, dropping any response body except
/// Vault's short `errors` strings.
pub(super) fn classify(op: &Op, addr: &reqwest::Url, e: ClientError) -> VaultError {
    use rustify::errors::ClientError as R;
    let status_err = |status: u16, errors: Vec<String>| {
        let mut message = errors.join("; ");
        message.retain(|c| !c.is_control());
        truncate(&mut message, 300);
        let hint = match (status, op.login) {
            // A refused login: the method says what to check.
            (400 | 403, Some(words)) => format!(" — {}", words.fix),
            (403, None) => {
                format!(" — the token's policy needs `{}` on `{}` (or the token has expired)", op.capability(), op.path)
            }
            (503, _) => " — the server is sealed or unavailable".into(),
            _ => String::new(),
        };
        VaultError::Refused { op: op.what.clone(), status, message, hint }
    };
    let rest = match e {
        ClientError::APIError { code, errors } => return status_err(code, errors),
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            return malformed(op, "empty response");
        }
        ClientError::JsonParseError { .. } | ClientError::ResponseWrapError => return malformed(op, "unexpected JSON"),
        ClientError::RestClientError { source } => source,
        _ => return VaultError::Setup(format!("{} failed before sending", op.what)),
    };
    match rest {
        R::ServerResponseError { code, content } => {
            let errors = content
                .as_deref()
                .and_then(|c| serde_json::from_str::<ErrorBody>(c).ok())
                .map(|b| b.errors)
                .unwrap_or_default();
            status_err(code, errors)
        }
        R::ResponseError { source } if source.downcast_ref::<BodyTooLarge>().is_some() => {
            let limit = source.downcast_ref::<BodyTooLarge>().map_or(0, |b| b.0);
            VaultError::TooLarge { op: op.what.clone(), limit }
        }
        R::RequestError { source, .. } | R::ResponseError { source } => VaultError::Unreachable {
            op: op.what.clone(),
            addr: addr.to_string(),
            reason: transport_reason(source.as_ref()),
        },
        R::ResponseParseError { .. } | R::ResponseConversionError { .. } => malformed(op, "unexpected JSON"),
        _ => VaultError::Setup(format!("{} could not be built", op.what)),
    }
}

/// Shortens a message to at most `max` bytes on a character boundary
/// (`String::truncate` panics inside a multi-byte character).
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

pub(super) fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(r) = e.downcast_ref::<reqwest::Error>()
        && r.is_timeout()
    {
        return "timed out".into();
    }
    // The innermost cause is the informative one ("Connection refused").
    // It may hold a server's words (the names in its certificate, where it
    // redirected to): quoted, like everything a server says.
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let mut s = cur.to_string();
    truncate(&mut s, 200);
    Said(&s).to_string()
}
