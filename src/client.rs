//! A minimal client for the socket, used by `vaultlet get`.
//!
//! Speaks HTTP/1.0 so the server answers with a plain body (no chunking) and
//! closes the connection; that keeps this side free of an HTTP stack.
//!
//! With `expect_uid`, the uid of the process serving the socket (from the
//! kernel, `SO_PEERCRED`, taken when it called `listen`) must be that uid,
//! or the request is never sent: whoever replaced the socket file cannot
//! answer in vaultlet's name, and learns nothing of what was asked.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A failed `get`.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The socket is missing or refused the connection.
    #[error(
        "cannot connect to {path}: {source} (is vaultlet running, and is the path right? set --socket or VAULTLET_SOCKET)"
    )]
    Connect {
        /// The socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket is served by another uid than expected.
    #[error("{path} is served by uid {actual}, not the expected uid {expected}; request not sent")]
    WrongServer {
        /// The socket path.
        path: String,
        /// `--expect-uid`.
        expected: u32,
        /// Who listens.
        actual: u32,
    },
    /// Reading or writing failed.
    #[error("talking to vaultlet: {0}")]
    Io(#[from] std::io::Error),
    /// vaultlet answered with an error.
    #[error("vaultlet answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` field.
        message: String,
    },
    /// The answer was not what we expect.
    #[error("unexpected answer from vaultlet")]
    Malformed,
    /// The secret has no such key.
    #[error("secret `{name}` has no key `{key}` (it has: {keys})")]
    NoKey {
        /// Secret.
        name: String,
        /// Requested key.
        key: String,
        /// Available keys.
        keys: String,
    },
}

/// Fetches `/v1/secrets/{name}` and returns the JSON document.
pub fn get_secret(socket: &Path, name: &str, expect_uid: Option<u32>) -> Result<serde_json::Value, GetError> {
    request(socket, &format!("/v1/secrets/{name}"), expect_uid)
}

/// `GET /v1/ready`: `Ok` when ready; otherwise the error names the secrets
/// that are missing and why (never a value).
pub fn ready(socket: &Path, expect_uid: Option<u32>) -> Result<(), GetError> {
    request(socket, "/v1/ready", expect_uid).map(drop)
}

fn request(socket: &Path, path: &str, expect_uid: Option<u32>) -> Result<serde_json::Value, GetError> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| GetError::Connect { path: socket.display().to_string(), source: e })?;
    if let Some(expected) = expect_uid {
        let actual = rustix::net::sockopt::socket_peercred(&s).map_err(std::io::Error::from)?.uid.as_raw();
        if actual != expected {
            return Err(GetError::WrongServer { path: socket.display().to_string(), expected, actual });
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: vaultlet\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8(buf).map_err(|_| GetError::Malformed)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(GetError::Malformed)?;
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or(GetError::Malformed)?;
    let doc: serde_json::Value = serde_json::from_str(body).map_err(|_| GetError::Malformed)?;
    if status != 200 {
        let message = match doc.get("reasons").and_then(|r| r.as_array()) {
            Some(reasons) => reasons
                .iter()
                .map(|r| format!("{}: {}", r["secret"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; "),
            None => doc.get("error").and_then(|m| m.as_str()).unwrap_or("no reason given").to_owned(),
        };
        return Err(GetError::Status { status, message });
    }
    Ok(doc)
}

/// `NAME` → the whole secret as JSON; `NAME.KEY` → that value alone.
pub fn get(socket: &Path, what: &str, expect_uid: Option<u32>) -> Result<String, GetError> {
    let (name, key) = match what.split_once('.') {
        Some((n, k)) => (n, Some(k)),
        None => (what, None),
    };
    if !crate::config::valid_name(name) {
        return Err(GetError::Status { status: 400, message: format!("`{name}` is not a valid secret name") });
    }
    let doc = get_secret(socket, name, expect_uid)?;
    match key {
        None => Ok(serde_json::to_string_pretty(&doc).map_err(|_| GetError::Malformed)?),
        Some(k) => {
            let data = doc.get("data").and_then(|d| d.as_object()).ok_or(GetError::Malformed)?;
            match data.get(k).and_then(|v| v.as_str()) {
                Some(v) => Ok(v.to_owned()),
                None => Err(GetError::NoKey {
                    name: name.into(),
                    key: k.into(),
                    keys: data.keys().cloned().collect::<Vec<_>>().join(", "),
                }),
            }
        }
    }
}
