//! `[state]`: the sealed state file's config, read and checked with the
//! rest of the file. The state file itself (format, load, writer) is
//! [`crate::state`]; this part sits in `config` so the checks need nothing
//! above them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

/// The longest key file: 64 hex characters and a CR LF.
const KEY_MAX: u64 = 66;
/// What a state file holds besides the values: identity, token, lease
/// details, the sealing overhead. Far more than any real file needs.
const STATE_BASE: u64 = 1 << 20;

/// The longest state file read: [`STATE_BASE`] plus, per configured secret,
/// the largest answer Vault may send (`vault.max_response_size`), which
/// bounds the value the file holds for it. Anything longer was not written
/// by vaultlet for this configuration and is not read past this bound.
pub fn size_limit(secrets: usize, max_response: usize) -> u64 {
    STATE_BASE.saturating_add((secrets as u64).saturating_mul(max_response as u64))
}

/// `[state]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    path: Spanned<PathBuf>,
    key_file: Spanned<PathBuf>,
}

/// The 32-byte sealing key. Never printed, wiped on drop.
#[derive(Clone)]
pub struct StateKey(pub(crate) Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(...)")
    }
}

impl StateKey {
    /// A key from its raw bytes (tests, and the key file).
    pub fn from_bytes(b: [u8; 32]) -> StateKey {
        StateKey(Arc::new(Zeroizing::new(b)))
    }
}

/// `[state]`, validated: where the sealed file goes and the key, read at
/// load time so a bad key file stops vaultlet before any network I/O.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The sealed file.
    pub path: PathBuf,
    /// The key.
    pub key: StateKey,
    /// The longest file read ([`size_limit`]).
    pub max_len: u64,
}

/// Validates `[state]` (called from `config::check`); `max_len` is the
/// [`size_limit`] of the configuration.
pub(crate) fn validate(cx: &crate::config::Cx<'_>, raw: Spanned<RawState>, max_len: u64) -> Option<StateConfig> {
    let raw = raw.into_inner();
    let path = raw.path.get_ref().clone();
    if !path.is_absolute() {
        return cx.err(raw.path.span(), "state.path", "must be an absolute path");
    }
    if path.is_dir() {
        return cx.err(raw.path.span(), "state.path", "is a directory; name the file the state goes in");
    }
    if let Err(e) = crate::write::check_own_dir(&path, "the state file") {
        return cx.err(raw.path.span(), "state.path", e.to_string());
    }
    let key_path = cx.credential_path(&raw.key_file, "state.key_file")?;
    let key = match read_key(&key_path) {
        Ok(k) => k,
        Err(msg) => return cx.err(raw.key_file.span(), "state.key_file", msg),
    };
    Some(StateConfig { path, key, max_len })
}

/// Reads a key file: exactly 32 raw bytes, or 64 hex characters with an
/// optional trailing newline; a regular file (not a symlink), vaultlet's
/// or root's, mode 0600 or 0400. The message never quotes the content.
pub(crate) fn read_key(path: &Path) -> Result<StateKey, String> {
    use crate::write::ReadError;
    let rules = crate::write::OwnFile { what: "the key", forbidden_mode: 0o077, max_len: KEY_MAX, private_dir: false };
    let bytes = crate::write::read_own_file(path, &rules).map_err(|e| match e {
        ReadError::Mode(mode) => {
            format!("mode {mode:04o} lets group or others read or change the key; chmod 0400 (or 0600) it")
        }
        ReadError::NotRegular("a symbolic link") => {
            "is a symbolic link; name the key file itself (vaultlet does not follow a link to its key)".into()
        }
        ReadError::TooLong(max) => {
            format!("must hold exactly 32 raw bytes or 64 hex characters (it holds more than {max} bytes)")
        }
        e => e.to_string(),
    })?;
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        key.copy_from_slice(&bytes);
        return Ok(StateKey(Arc::new(key)));
    }
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
        for (i, pair) in text.chunks(2).enumerate() {
            key[i] = (hex_val(pair[0]) << 4) | hex_val(pair[1]);
        }
        return Ok(StateKey(Arc::new(key)));
    }
    Err(format!(
        "must hold exactly 32 raw bytes or 64 hex characters (it holds {} bytes); make one with `head -c 32 /dev/urandom`",
        bytes.len()
    ))
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}
