//! AppRole: a role_id and a secret_id, read from files on every login.
//!
//! Both files are read again for each login, so a rotated secret_id is
//! picked up without a restart. With `secret_id_wrapped` the secret_id file
//! holds a response-wrapping token: it is unwrapped (after Vault confirms
//! it was made by an AppRole secret-id endpoint, see
//! [`crate::vault::Backend::unwrap_secret_id`]) and the secret_id kept in
//! memory, as it is when `remove_secret_id_file` deletes the file after
//! reading: later logins reuse it while the file stays gone or unchanged. A
//! refused login forgets it, so a new file is read and unwrapped again.
//!
//! The sealed state's identity is the SHA-256 of the role_id: a state
//! written for another role is not resumed.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

use super::method::{AuthError, Method, Pending, read_secret_file};
use crate::config::AppRoleConfig;
use crate::vault::{Backend, LoginRequest, LoginWords};

/// How errors speak of an AppRole login ("AppRole login", and what to check
/// when Vault refuses it).
pub const WORDS: LoginWords = LoginWords {
    method: "AppRole",
    credentials: "role_id and secret_id",
    fix: "check the role_id and secret_id files and that the secret_id has not expired or been used up",
};

/// The AppRole method: its configuration, and the secret_id last used.
pub struct AppRole {
    cfg: AppRoleConfig,
    /// The secret_id last used, and the file content it came from.
    cached: Option<(SecretString, SecretString)>,
}

// === impl AppRole ===

impl AppRole {
    /// The method for `[auth.approle]`; reads nothing yet.
    pub fn new(cfg: AppRoleConfig) -> AppRole {
        AppRole { cfg, cached: None }
    }

    /// The secret_id for this login: the file's, unwrapped if it holds a
    /// wrapping token, or the one kept when the file is gone or unchanged.
    async fn secret_id(&mut self, vault: &dyn Backend) -> Result<SecretString, AuthError> {
        let file = match read_secret_file(&self.cfg.secret_id_file, "secret_id").await {
            Ok(v) => Some(v),
            // The file was consumed (by us, or delivered once): reuse what we had.
            Err(e) => match &self.cached {
                Some(_) => None,
                None => return Err(e),
            },
        };
        let sid = match (file, &self.cached) {
            (None, Some((sid, _))) => sid.clone(),
            (Some(raw), Some((sid, from))) if raw.expose_secret() == from.expose_secret() => sid.clone(),
            (Some(raw), _) => {
                let sid = if self.cfg.secret_id_wrapped {
                    // It travels as a header: only visible ASCII can.
                    if !raw.expose_secret().bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(AuthError::File {
                            what: "secret_id",
                            path: self.cfg.secret_id_file.display().to_string(),
                            reason: "a wrapping token is visible ASCII; this file holds something else".into(),
                        });
                    }
                    vault.unwrap_secret_id(&raw).await?
                } else {
                    raw.clone()
                };
                self.cached = Some((sid.clone(), raw));
                if self.cfg.remove_secret_id_file
                    && let Err(e) = tokio::fs::remove_file(&self.cfg.secret_id_file).await
                {
                    tracing::warn!(path = %self.cfg.secret_id_file.display(), error = %e, "could not remove the secret_id file");
                }
                sid
            }
            (None, None) => unreachable!("handled above"),
        };
        Ok(sid)
    }
}

impl Method for AppRole {
    fn name(&self) -> &'static str {
        "approle"
    }

    fn mount(&self) -> &str {
        &self.cfg.mount
    }

    fn login_request<'a>(&'a mut self, vault: &'a dyn Backend) -> Pending<'a, LoginRequest> {
        Box::pin(async move {
            let role_id = read_secret_file(&self.cfg.role_id_file, "role_id").await?;
            let secret_id = self.secret_id(vault).await?;
            Ok(LoginRequest::new(WORDS).field("role_id", role_id).field("secret_id", secret_id))
        })
    }

    fn refused(&mut self) {
        // A refused secret_id is not worth retrying from memory.
        self.cached = None;
    }

    fn credential_files(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("auth.approle.role_id_file", &self.cfg.role_id_file),
            ("auth.approle.secret_id_file", &self.cfg.secret_id_file),
        ]
    }

    fn identity(&self) -> Result<[u8; 32], AuthError> {
        let path = &self.cfg.role_id_file;
        let raw = crate::write::read_input_file(path, crate::write::MAX_CREDENTIAL_FILE).map_err(|e| {
            AuthError::File { what: "role_id", path: path.display().to_string(), reason: e.to_string() }
        })?;
        Ok(sha2::Sha256::digest(raw.trim_ascii()).into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vault::fake::{Fake, Op};

    fn config(dir: &Path, wrapped: bool, remove: bool) -> AppRoleConfig {
        AppRoleConfig {
            mount: "approle".into(),
            role_id_file: dir.join("role_id"),
            secret_id_file: dir.join("secret_id"),
            secret_id_wrapped: wrapped,
            remove_secret_id_file: remove,
        }
    }

    fn body(req: &LoginRequest) -> serde_json::Value {
        serde_json::from_slice(&req.body()).expect("JSON")
    }

    #[tokio::test]
    async fn both_files_are_read_again_for_every_login() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("role_id"), "role-1\n").unwrap();
        std::fs::write(dir.path().join("secret_id"), "sid-1").unwrap();
        let (fake, mut m) = (Fake::new(), AppRole::new(config(dir.path(), false, false)));
        let first = m.login_request(&fake).await.expect("request");
        assert_eq!(body(&first), json!({"role_id": "role-1", "secret_id": "sid-1"}));
        assert_eq!(first.words(), WORDS);
        // Rotated on disk: the next login sends the new ones.
        std::fs::write(dir.path().join("role_id"), "role-2").unwrap();
        std::fs::write(dir.path().join("secret_id"), "sid-2").unwrap();
        let second = m.login_request(&fake).await.expect("request");
        assert_eq!(body(&second), json!({"role_id": "role-2", "secret_id": "sid-2"}));
        assert_eq!(fake.count(Op::Unwrap), 0);
    }

    #[tokio::test]
    async fn a_wrapped_secret_id_is_unwrapped_once_and_forgotten_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("role_id"), "role").unwrap();
        std::fs::write(dir.path().join("secret_id"), "wrapping-token").unwrap();
        let (fake, mut m) = (Fake::new(), AppRole::new(config(dir.path(), true, true)));
        let first = m.login_request(&fake).await.expect("request");
        assert_eq!(body(&first)["secret_id"], "unwrapped-secret-id");
        assert!(!dir.path().join("secret_id").exists(), "removed once read");
        // The file is gone: the unwrapped secret_id is kept for re-logins.
        let again = m.login_request(&fake).await.expect("request");
        assert_eq!(body(&again)["secret_id"], "unwrapped-secret-id");
        assert_eq!(fake.count(Op::Unwrap), 1, "a wrapping token is single-use");
        // Vault refused it: nothing is left to log in with.
        m.refused();
        let Err(AuthError::File { what, .. }) = m.login_request(&fake).await else {
            panic!("logged in with a refused secret_id")
        };
        assert_eq!(what, "secret_id");
    }

    /// A state file's identity as vaultlet wrote it before it had more than
    /// one auth method: the same role still resumes it.
    #[test]
    fn the_identity_is_the_one_earlier_state_files_hold() {
        let dir = tempfile::tempdir().unwrap();
        let role_id = dir.path().join("role_id");
        std::fs::write(&role_id, "role\n").unwrap();
        let toml = format!(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\n[auth.approle]\nrole_id_file = \"{}\"\n\
             secret_id_file = \"/run/x/secret_id\"\n[secret.a]\nkv = {{ path = \"a\" }}\n[socket]\n",
            role_id.display()
        );
        let config = crate::Config::from_toml(Path::new("v.toml"), &toml, 1000).expect("valid").config;
        let digest: String = sha2::Sha256::digest(b"role").iter().map(|b| format!("{b:02x}")).collect();
        let earlier = json!({
            "addresses": ["http://127.0.0.1:8200/"],
            "namespace": null,
            "auth_mount": "approle",
            "role_id_sha256": digest,
        });
        let now = crate::state::Identity::of(&config).expect("identity");
        assert_eq!(serde_json::from_value::<crate::state::Identity>(earlier).expect("reads"), now);
        // Another role is another identity.
        std::fs::write(&role_id, "another role").unwrap();
        assert_ne!(crate::state::Identity::of(&config).expect("identity"), now);
    }
}
