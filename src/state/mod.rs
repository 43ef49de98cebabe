//! Sealed state: what a restarted vaultlet needs to go on where it stopped.
//!
//! Without it every start logs in again and issues a new credential for
//! every secret, orphaning the leases of the previous process until they
//! expire, and a single-use (wrapped, or removed after use) secret_id cannot
//! log in a second time at all. With `[state]`, vaultlet keeps the token,
//! every held lease and every served value in one file, sealed with
//! XChaCha20-Poly1305 under a key the operator provides (`state.key_file`),
//! and on start serves what is still valid at once, then checks it with
//! Vault in the background.
//!
//! The file is `VLTSTATE` · format version · ciphertext length (u32, big
//! endian) · 24-byte random nonce · ciphertext and tag. The header is the
//! AEAD's associated data, so a flipped version byte or a changed length is
//! caught like a flipped ciphertext byte, and the length lets a file cut
//! short be told apart from a tampered one. The plaintext is JSON of the
//! private `Sealed` struct (`state/file.rs`), built field by field from our secret types
//! (they have no `Serialize`, on purpose); it lives only in zeroized
//! buffers, and the file goes through [`crate::write::write_own_file`]
//! (atomic, mode 0600).
//!
//! What it refuses to do: crash, block, or print a secret, on a file it
//! cannot use. A wrong key or a tampered file, a truncated one, an unknown
//! format version, a file written for another server or role, and anything
//! at the path that vaultlet did not write (a symlink, a FIFO, a device,
//! another user's file, one others may write, one longer than
//! [`size_limit`]): each gives one warn line with the reason in words, a
//! counted `vaultlet_state_load_failures_total{reason}`, and a fresh start.
//! Both files are read through [`crate::write::read_own_file`] (no symlink
//! followed, nothing read before the opened file is checked, a bounded
//! read). The state's directory must belong to vaultlet's uid or root and
//! be writable by nobody else, sticky or not ([`crate::write::check_own_dir`]):
//! refused at config check (exit 64), and checked again on the opened
//! directory at every read and write. The key's directory is not checked
//! (vaultlet never writes there: systemd's credential directory, a mounted
//! secret); the key file itself must be a regular file, vaultlet's or
//! root's, mode 0600 or 0400, at most 66 bytes, or vaultlet exits 64
//! before any network I/O.
//!
//! What it does not protect against: root on the host (or whoever can read
//! the key file) can open the state, as they could read the process memory.
//! It keeps secrets off the disk in plaintext and out of backups; it is not
//! a vault.
//!
//! The decisions taken at start (keep the token? which leases resume, which
//! are revoked, which already ended?) are one pure function, [`decide`], so
//! they are tested on the paused clock without Vault.
//!
//! The parts: `file.rs` the sealed format, `identity.rs` whom a file
//! belongs to, `resume.rs` the clocks and the resume decisions, `writer.rs`
//! the writer; reading and loading at start are here.

mod file;
mod identity;
mod resume;
mod writer;

use std::sync::Arc;

use secrecy::SecretString;

use crate::config::SecretSpec;
use crate::secret::LeaseId;
use file::decode;
use resume::saved_from;

pub use crate::config::state::{RawState, StateConfig, StateKey, size_limit};
pub use crate::ledger::Tracker;
pub use file::LoadError;
pub use identity::Identity;
pub use resume::{Clock, Plan, Resumed, Saved, SavedDrain, SavedLease, SavedSecret, decide, fingerprint};
pub use writer::{COALESCE, Writer};

// === loading ===

/// Reads, opens and checks the state file; `Ok(None)` when there is none
/// yet (the first start).
pub fn read(cfg: &StateConfig, identity: &Identity, clock: Clock) -> Result<Option<Saved>, LoadError> {
    use crate::write::ReadError;
    // vaultlet writes it 0600; group read is harmless (it is sealed), a
    // writer other than vaultlet is not.
    let rules = crate::write::OwnFile {
        what: "the state file",
        forbidden_mode: 0o022,
        max_len: cfg.max_len,
        private_dir: true,
    };
    let file = match crate::write::read_own_file(&cfg.path, &rules) {
        Ok(f) => f,
        Err(ReadError::Missing) => return Ok(None),
        Err(ReadError::Io(e)) => return Err(LoadError::Unreadable(e)),
        Err(e) => return Err(LoadError::Unsafe(e)),
    };
    Ok(Some(saved_from(decode(&file, &cfg.key, identity)?, clock)))
}

/// Loads the state and decides what to resume; a file that cannot be used
/// is reported in one warn line and counted, and the start is fresh.
pub fn load(cfg: &StateConfig, identity: &Identity, specs: &[SecretSpec], metrics: &crate::metrics::Metrics) -> Plan {
    let clock = Clock::now();
    match read(cfg, identity, clock) {
        Ok(Some(saved)) => decide(saved, specs, clock.now),
        Ok(None) => {
            tracing::info!(path = %cfg.path.display(), "no state file yet; starting fresh");
            Plan::default()
        }
        Err(e) => {
            metrics.state_load_failure(e.reason());
            tracing::warn!("state file {} not used ({e}); starting fresh", cfg.path.display());
            Plan::default()
        }
    }
}

/// Revokes (with the saved token) the leases a restart cannot resume, or
/// names them in one line when that is not possible.
pub async fn revoke_unresumable(vault: Arc<dyn crate::vault::Backend>, token: Option<SecretString>, ids: Vec<LeaseId>) {
    if ids.is_empty() {
        return;
    }
    let mut left = Vec::new();
    match token {
        None => left = ids,
        Some(token) => {
            for id in ids {
                match vault.revoke_lease(&token, &id).await {
                    Ok(()) => tracing::info!(lease = ?id, "revoked a lease from the state file that is no longer used"),
                    Err(_) => left.push(id),
                }
            }
        }
    }
    if !left.is_empty() {
        // By path only, like every other lease in the log (`LeaseId`'s Debug).
        tracing::warn!(
            leases = ?left,
            "leases from the state file are no longer used and could not be revoked; they end on their own"
        );
    }
}

#[cfg(test)]
mod tests;
