//! Who a state file belongs to.

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Who the state belongs to: a file written for other servers, another
/// auth mount or another role is not ours to resume (its token and leases
/// would be someone else's).
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
pub struct Identity {
    pub(super) addresses: Vec<String>,
    pub(super) namespace: Option<String>,
    pub(super) auth_mount: String,
    /// SHA-256 of the role_id (inside the sealed file; never logged).
    pub(super) role_id_sha256: String,
}

impl Identity {
    /// The identity of `config`, reading its role_id file.
    pub fn of(config: &crate::config::Config) -> std::io::Result<Identity> {
        let raw = crate::write::read_input_file(&config.auth.role_id_file, crate::write::MAX_CREDENTIAL_FILE)
            .map_err(std::io::Error::other)?;
        let role_id = raw.trim_ascii();
        Ok(Identity {
            addresses: config.vault.addresses.iter().map(|u| u.to_string()).collect(),
            namespace: config.vault.namespace.clone(),
            auth_mount: config.auth.mount.clone(),
            role_id_sha256: hex(&sha2::Sha256::digest(role_id)),
        })
    }
}

/// Lowercase hex of a digest (the role_id's here, a source's in
/// [`super::fingerprint`]).
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
