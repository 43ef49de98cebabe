//! Who a state file belongs to.

use serde::{Deserialize, Serialize};

/// Who the state belongs to: a file written for other servers, another
/// auth method or mount, or another role is not ours to resume (its token
/// and leases would be someone else's).
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
pub struct Identity {
    pub(super) addresses: Vec<String>,
    pub(super) namespace: Option<String>,
    /// The auth method (`approle`). Files written before there was a choice
    /// lack it, and were AppRole's.
    #[serde(default = "Identity::approle")]
    pub(super) method: String,
    pub(super) auth_mount: String,
    /// SHA-256 of whom the method logs in as (AppRole: the role_id), inside
    /// the sealed file, never logged. Stored under AppRole's name, so files
    /// written before still match.
    #[serde(rename = "role_id_sha256")]
    pub(super) login_sha256: String,
}

impl Identity {
    /// The identity of `config`, reading what its auth method identifies
    /// with (AppRole: the role_id file).
    pub fn of(config: &crate::config::Config) -> std::io::Result<Identity> {
        let method = crate::auth::method_for(&config.auth);
        let who = method.identity().map_err(std::io::Error::other)?;
        Ok(Identity {
            addresses: config.vault.addresses.iter().map(|u| u.to_string()).collect(),
            namespace: config.vault.namespace.clone(),
            method: method.name().to_owned(),
            auth_mount: method.mount().to_owned(),
            login_sha256: hex(&who),
        })
    }

    fn approle() -> String {
        "approle".into()
    }
}

/// Lowercase hex of a digest (whom the method logs in as, here; a
/// source's in [`super::fingerprint`]).
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
