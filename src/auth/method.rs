//! The seam between the token task and the ways of logging in.
//!
//! An auth method knows what the token task does not: how to build the body
//! of its login (reading its credential files again on every login, asking
//! Vault first if it must, as a wrapped secret_id needs), which credential
//! files it reads (start-up warns about those that others could rewrite),
//! and whom it logs in as (a digest: the sealed state resumes only for the
//! same one). Everything after the login (renewal, re-login before the
//! token's end, the 403 check, revocation of replaced tokens) is the same
//! for every method and lives in the token task, `auth/mod.rs`.
//!
//! The shape is OpenBao's agent's (`AuthMethod.Authenticate` returns the
//! login path and body; one package per method): one trait, one file per
//! method. A new method is a file beside `approle.rs`, a variant of
//! [`crate::config::AuthConfig`] with its raw table, and one line in
//! [`crate::auth::method_for`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use secrecy::SecretString;

use crate::lease::retry::Class;
use crate::vault::{Backend, LoginRequest, VaultError};

/// A method's work in flight (reading files, asking Vault), boxed so the
/// method can be a `Box<dyn Method>`.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, AuthError>> + Send + 'a>>;

/// One way of logging in to Vault. The token task owns one, chosen by the
/// configuration ([`crate::auth::method_for`]).
pub trait Method: Send + Sync {
    /// The method's key in the configuration (`[auth.approle]`) and in the
    /// sealed state's identity: `approle`.
    fn name(&self) -> &'static str;

    /// Where it is mounted: the login goes to `auth/<mount>/login`.
    fn mount(&self) -> &str;

    /// The body of the next login, from the credential files as they are
    /// now (they may have been rotated since the last one).
    fn login_request<'a>(&'a mut self, vault: &'a dyn Backend) -> Pending<'a, LoginRequest>;

    /// Vault refused the last login, not for a passing reason: forget
    /// whatever was kept for the next one.
    fn refused(&mut self) {}

    /// The files it reads credentials from, each with the configuration key
    /// that names it (for the start-up warning about loose permissions).
    fn credential_files(&self) -> Vec<(&'static str, &Path)>;

    /// SHA-256 of whom it logs in as (AppRole: the role_id; JWT and
    /// Kubernetes: the role and the token's issuer and subject), for the sealed
    /// state's identity: a state written for another role is not resumed.
    /// Reads the files; the digest is never logged.
    fn identity(&self) -> Result<[u8; 32], AuthError>;
}

/// Why a login could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A credential file could not be read (its content is never shown).
    #[error("cannot read {what} file {path}: {reason}")]
    File {
        /// role_id, secret_id or token.
        what: &'static str,
        /// The file.
        path: String,
        /// The I/O reason.
        reason: String,
    },
    /// A credential file was read but holds nothing to log in with (an
    /// expired or malformed token); its content is never shown.
    #[error("{what} file {path} is not usable: {reason}")]
    Unusable {
        /// token.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Vault refused or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl AuthError {
    /// What kind of failure it is, for [`crate::lease::retry::decide`].
    pub(super) fn class(&self) -> Class {
        match self {
            AuthError::File { .. } | AuthError::Unusable { .. } => Class::Permanent,
            AuthError::Vault(e) => Class::of(e),
        }
    }
}

/// Reads one credential file (`what` names it in errors): one line of
/// visible text, trimmed; read again on every login.
pub(super) async fn read_secret_file(path: &Path, what: &'static str) -> Result<SecretString, AuthError> {
    let err = |reason: String| AuthError::File { what, path: path.display().to_string(), reason };
    let owned = path.to_owned();
    let bytes =
        tokio::task::spawn_blocking(move || crate::write::read_input_file(&owned, crate::write::MAX_CREDENTIAL_FILE))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(e.to_string()))?;
    let s = std::str::from_utf8(&bytes).map(|s| s.trim().to_owned());
    let s = s.map_err(|_| err("not UTF-8 text".into()))?;
    if s.is_empty() {
        return Err(err("file is empty".into()));
    }
    if s.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("contains spaces or control characters".into()));
    }
    Ok(SecretString::from(s))
}
