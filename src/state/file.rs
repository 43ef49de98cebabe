//! The sealed format: `VLTSTATE` · format version · ciphertext length ·
//! nonce · ciphertext and tag, sealed with XChaCha20-Poly1305 (see the
//! module docs of [`super`]); the plaintext structs ([`Sealed`] and its
//! parts), and why a file is not used ([`LoadError`]).

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::identity::Identity;
use crate::config::state::StateKey;

/// First bytes of every state file.
pub(super) const MAGIC: &[u8; 8] = b"VLTSTATE";
/// The only format version this build reads and writes.
const VERSION: u8 = 1;
/// Magic, version, ciphertext length.
pub(super) const HEADER: usize = 8 + 1 + 4;
const NONCE: usize = 24;
const TAG: usize = 16;

/// Why a state file was not used. The `reason` labels are a metric contract.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The AEAD refused it: another key, or a changed byte.
    #[error("wrong key, or the file was changed")]
    WrongKeyOrTampered,
    /// Shorter than its header says.
    #[error("the file is truncated")]
    Truncated,
    /// Written by another version of vaultlet, in a format this one does not read.
    #[error("unknown state format version")]
    UnknownVersion,
    /// Written for other Vault servers, another auth mount or another role.
    #[error("written for another vault address, auth mount or role_id")]
    OtherConfig,
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    /// Not a file vaultlet wrote: a symlink, a FIFO, a device, another
    /// user's file, one others may write, one longer than any state, or a
    /// directory others may change. Never read.
    #[error("{0}")]
    Unsafe(#[source] crate::write::ReadError),
}

impl LoadError {
    /// The `reason` label of `vaultlet_state_load_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::WrongKeyOrTampered => "wrong_key_or_tampered",
            LoadError::Truncated => "truncated",
            LoadError::UnknownVersion => "unknown_version",
            LoadError::OtherConfig => "other_config",
            LoadError::Unreadable(_) => "unreadable",
            LoadError::Unsafe(_) => "unsafe_file",
        }
    }
}

/// The plaintext of a state file. Built by hand from our types; dropped
/// with every secret string wiped.
#[derive(Serialize, Deserialize)]
pub(super) struct Sealed {
    pub(super) identity: Identity,
    pub(super) written_ms: u64,
    pub(super) token: Option<SealedToken>,
    pub(super) secrets: Vec<SealedSecret>,
    #[serde(default)]
    pub(super) draining: Vec<SealedDrain>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SealedToken {
    pub(super) secret: String,
    pub(super) generation: u64,
    pub(super) issued_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) hard_end_ms: Option<u64>,
    pub(super) ttl_s: u64,
    pub(super) renewable: bool,
}

impl Drop for SealedToken {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct SealedSecret {
    pub(super) name: String,
    /// [`fingerprint`] of the spec it was fetched for.
    pub(super) spec: String,
    pub(super) version: u64,
    pub(super) values: Vec<(String, String)>,
    pub(super) lease: Option<SealedLease>,
}

impl Drop for SealedSecret {
    fn drop(&mut self) {
        for (_, v) in &mut self.values {
            v.zeroize();
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct SealedLease {
    pub(super) id: String,
    pub(super) issued_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) ttl_ms: u64,
    pub(super) renewable: bool,
    pub(super) cap_ms: Option<u64>,
    pub(super) generation: u64,
    pub(super) token_end_ms: Option<u64>,
    /// The issuing token's current end: Vault revokes the lease with it.
    pub(super) token_expires_ms: Option<u64>,
    pub(super) learned_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SealedDrain {
    pub(super) secret: String,
    pub(super) spec: String,
    pub(super) lease: SealedLease,
    pub(super) drain_end_ms: u64,
}

fn cipher(key: &StateKey) -> XChaCha20Poly1305 {
    let k: &[u8; 32] = &key.0;
    XChaCha20Poly1305::new(k.into())
}

fn header(len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Seals `plaintext` under `key` with a fresh random nonce.
fn seal_bytes(plaintext: &[u8], key: &StateKey) -> Vec<u8> {
    // One allocation of the final size: encrypting in place must not grow
    // (and so copy and free unwiped) a buffer holding plaintext.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG));
    buf.extend_from_slice(plaintext);
    let nonce: [u8; NONCE] = rand::random();
    let len = u32::try_from(plaintext.len() + TAG).unwrap_or(u32::MAX);
    let head = header(len);
    let mut aad = Vec::with_capacity(HEADER + NONCE);
    aad.extend_from_slice(&head);
    aad.extend_from_slice(&nonce);
    cipher(key)
        .encrypt_in_place(&XNonce::from(nonce), &aad, &mut *buf)
        .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
    let mut out = Vec::with_capacity(aad.len() + buf.len());
    out.extend_from_slice(&aad);
    out.extend_from_slice(&buf);
    out
}

/// Opens a sealed file; the plaintext comes back in a wiped-on-drop buffer.
fn open_bytes(file: &[u8], key: &StateKey) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    if file.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(file) { LoadError::Truncated } else { LoadError::WrongKeyOrTampered });
    }
    if &file[..8] != MAGIC {
        return Err(LoadError::WrongKeyOrTampered);
    }
    if file.len() < HEADER {
        return Err(LoadError::Truncated);
    }
    if file[8] != VERSION {
        return Err(LoadError::UnknownVersion);
    }
    let len = u32::from_be_bytes([file[9], file[10], file[11], file[12]]) as usize;
    let body = &file[HEADER..];
    if body.len() < NONCE + len.max(TAG) {
        return Err(LoadError::Truncated);
    }
    if body.len() > NONCE + len || len < TAG {
        return Err(LoadError::WrongKeyOrTampered);
    }
    let aad = &file[..HEADER + NONCE];
    let nonce = XNonce::try_from(&body[..NONCE]).map_err(|_| LoadError::Truncated)?;
    let mut buf = Zeroizing::new(body[NONCE..].to_vec());
    cipher(key).decrypt_in_place(&nonce, aad, &mut *buf).map_err(|_| LoadError::WrongKeyOrTampered)?;
    Ok(buf)
}

pub(super) fn encode(s: &Sealed, key: &StateKey) -> Vec<u8> {
    let plain = crate::secret::written_once(|w| serde_json::to_writer(w, s))
        .expect("serializing plain structs to memory cannot fail");
    seal_bytes(&plain, key)
}

pub(super) fn decode(file: &[u8], key: &StateKey, identity: &Identity) -> Result<Sealed, LoadError> {
    let plain = open_bytes(file, key)?;
    // Authentic but unreadable: written by a build with another layout.
    let sealed: Sealed = serde_json::from_slice(&plain).map_err(|_| LoadError::UnknownVersion)?;
    if sealed.identity != *identity {
        return Err(LoadError::OtherConfig);
    }
    Ok(sealed)
}
