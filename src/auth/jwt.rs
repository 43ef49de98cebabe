//! JWT and Kubernetes: a role and a signed token, read from a file on every
//! login.
//!
//! Both methods log in with `{"role": …, "jwt": …}`; they differ only in
//! their name, their default mount and where the token usually lives (the
//! Kubernetes one is the pod's projected service-account token, which
//! OpenBao's `kubernetes` method has the cluster review).
//!
//! The token file is read again for every login and never deleted: the
//! kubelet (or whatever issues the token) rewrites it in place before it
//! expires, and the next login takes the new one. Vault Agent deletes the
//! file after reading by default (`remove_jwt_after_reading`); every real
//! configuration turns that off, so there is no such option here.
//!
//! A token whose `exp` claim has passed (by this host's clock) is not sent:
//! the login fails with an error naming the file and saying how long ago it
//! expired, and is retried like any refused login, so a rewritten file is
//! picked up at the next attempt. The claims are read without checking the
//! signature, for that and for the sealed state's identity only; Vault is
//! the one that verifies the token.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;
use zeroize::Zeroizing;

use super::method::{AuthError, Method, Pending, read_secret_file};
use crate::config::JwtConfig;
use crate::vault::{Backend, LoginRequest, LoginWords};

/// How errors speak of a JWT login.
pub const JWT_WORDS: LoginWords = LoginWords {
    method: "JWT",
    credentials: "the role and the token",
    fix: "check the role and that the token file holds a current token whose claims the role accepts",
};

/// How errors speak of a Kubernetes login.
pub const KUBERNETES_WORDS: LoginWords = LoginWords {
    method: "Kubernetes",
    credentials: "the role and the service-account token",
    fix: "check the role and that the token file holds a current service-account token of the \
          service account and namespace the role is bound to",
};

/// What tells the two methods apart.
struct Kind {
    name: &'static str,
    words: LoginWords,
    /// The configuration key of the token file, for the loose-file warning.
    token_key: &'static str,
}

const JWT: Kind = Kind { name: "jwt", words: JWT_WORDS, token_key: "auth.jwt.token_file" };
const KUBERNETES: Kind = Kind { name: "kubernetes", words: KUBERNETES_WORDS, token_key: "auth.kubernetes.token_file" };

/// The JWT or the Kubernetes method: its configuration; nothing is kept
/// between logins.
pub struct JwtLogin {
    kind: &'static Kind,
    cfg: JwtConfig,
}

// === impl JwtLogin ===

impl JwtLogin {
    /// The method for `[auth.jwt]`; reads nothing yet.
    pub fn jwt(cfg: JwtConfig) -> JwtLogin {
        JwtLogin { kind: &JWT, cfg }
    }

    /// The method for `[auth.kubernetes]`; reads nothing yet.
    pub fn kubernetes(cfg: JwtConfig) -> JwtLogin {
        JwtLogin { kind: &KUBERNETES, cfg }
    }

    fn file_error(&self, reason: String) -> AuthError {
        AuthError::File { what: "token", path: self.cfg.token_file.display().to_string(), reason }
    }

    fn unusable(&self, reason: String) -> AuthError {
        AuthError::Unusable { what: "token", path: self.cfg.token_file.display().to_string(), reason }
    }
}

impl Method for JwtLogin {
    fn name(&self) -> &'static str {
        self.kind.name
    }

    fn mount(&self) -> &str {
        &self.cfg.mount
    }

    fn login_request<'a>(&'a mut self, _vault: &'a dyn Backend) -> Pending<'a, LoginRequest> {
        Box::pin(async move {
            let token = read_secret_file(&self.cfg.token_file, "token").await?;
            let claims = Claims::of(token.expose_secret()).map_err(|e| self.unusable(e.into()))?;
            if let Some(ago) = claims.expired_for(SystemTime::now()) {
                return Err(self.unusable(format!(
                    "the token expired {}s ago (its `exp` claim); the file must be rewritten with a current one",
                    ago.as_secs()
                )));
            }
            let role = SecretString::from(self.cfg.role.clone());
            Ok(LoginRequest::new(self.kind.words).field("role", role).field("jwt", token))
        })
    }

    fn credential_files(&self) -> Vec<(&'static str, &Path)> {
        vec![(self.kind.token_key, &self.cfg.token_file)]
    }

    /// The role, and the token's issuer and subject (`iss`, `sub`). The
    /// token itself changes at every rotation (new `jti`, `iat`, `exp`), so
    /// its digest would turn every restart after a rotation into a fresh
    /// start; the role with the issuer and subject (for Kubernetes
    /// `system:serviceaccount:NS:NAME`) names the same login across
    /// rotations, and a token for another workload is another identity.
    /// Reading them costs one file read and one base64 decode: the claims
    /// are read anyway for the expiry check.
    fn identity(&self) -> Result<[u8; 32], AuthError> {
        let path = &self.cfg.token_file;
        let raw = crate::write::read_input_file(path, crate::write::MAX_CREDENTIAL_FILE)
            .map_err(|e| self.file_error(e.to_string()))?;
        let raw = Zeroizing::new(raw);
        let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| self.file_error("not UTF-8 text".into()))?;
        let claims = Claims::of(text).map_err(|e| self.unusable(e.into()))?;
        let mut h = sha2::Sha256::new();
        // Each part with its length first: no two triples hash alike.
        for part in [self.cfg.role.as_str(), claims.iss.as_deref().unwrap_or(""), claims.sub.as_deref().unwrap_or("")] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Ok(h.finalize().into())
    }
}

/// The few claims vaultlet reads from a token's payload (unverified).
#[derive(serde::Deserialize, Default)]
struct Claims {
    exp: Option<f64>,
    iss: Option<String>,
    sub: Option<String>,
}

// === impl Claims ===

impl Claims {
    /// The claims of a compact JWT (`header.payload.signature`). The errors
    /// never quote the token.
    fn of(token: &str) -> Result<Claims, &'static str> {
        const NOT_A_JWT: &str = "not a JWT (three base64url parts joined by dots)";
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(NOT_A_JWT);
        };
        let json =
            base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).map_err(|_| NOT_A_JWT)?;
        let json = Zeroizing::new(json);
        serde_json::from_slice(&json).map_err(|_| "the token's payload is not a JSON object of claims")
    }

    /// How long ago the token expired, if its `exp` has passed at `now`.
    fn expired_for(&self, now: SystemTime) -> Option<Duration> {
        let exp = UNIX_EPOCH + Duration::try_from_secs_f64(self.exp?).ok()?;
        now.duration_since(exp).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vault::fake::Fake;

    fn config(dir: &Path) -> JwtConfig {
        JwtConfig { mount: "jwt".into(), role: "app".into(), token_file: dir.join("token") }
    }

    /// An unsigned token with these claims (vaultlet never checks the signature).
    fn token(claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", b64(&json!({"alg": "ES256", "typ": "JWT"})), b64(&claims))
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn body(req: &LoginRequest) -> serde_json::Value {
        serde_json::from_slice(&req.body()).expect("JSON")
    }

    #[tokio::test]
    async fn the_token_file_is_read_again_for_every_login_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = token(json!({"sub": "app", "exp": now() + 600, "jti": "1"}));
        std::fs::write(dir.path().join("token"), format!("{first}\n")).unwrap();
        let (fake, mut m) = (Fake::new(), JwtLogin::jwt(config(dir.path())));
        let req = m.login_request(&fake).await.expect("request");
        assert_eq!(body(&req), json!({"role": "app", "jwt": first}));
        assert_eq!(req.words(), JWT_WORDS);
        // Rewritten in place: the next login sends the new one.
        let second = token(json!({"sub": "app", "exp": now() + 600, "jti": "2"}));
        std::fs::write(dir.path().join("token"), &second).unwrap();
        assert_eq!(body(&m.login_request(&fake).await.expect("request"))["jwt"], second);
        assert!(dir.path().join("token").exists(), "never deleted");
    }

    #[tokio::test]
    async fn a_missing_empty_expired_or_malformed_token_is_refused_before_vault_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, mut m) = (Fake::new(), JwtLogin::kubernetes(config(dir.path())));
        let path = dir.path().join("token");
        let expired = token(json!({"sub": "app", "exp": now() - 30}));
        for (content, says) in [
            (None, "not found"),
            (Some(String::new()), "empty"),
            (Some(expired.clone()), "expired"),
            (Some("a.b".into()), "not a JWT"),
            (Some("a.!!!.c".into()), "not a JWT"),
            (Some(format!("a.{}.c", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]"))), "payload"),
        ] {
            if let Some(c) = &content {
                std::fs::write(&path, c).unwrap();
            }
            let Err(e @ (AuthError::File { what: "token", .. } | AuthError::Unusable { what: "token", .. })) =
                m.login_request(&fake).await
            else {
                panic!("accepted: {content:?}")
            };
            assert!(e.to_string().contains(says), "{e}");
            assert!(!e.to_string().contains(&expired), "the token is never shown: {e}");
        }
        // Without `exp` (a legacy service-account token) it is Vault's to judge.
        std::fs::write(&path, token(json!({"sub": "app"}))).unwrap();
        assert!(m.login_request(&fake).await.is_ok());
    }

    #[test]
    fn the_identity_is_the_role_issuer_and_subject_not_the_rotating_token() {
        let dir = tempfile::tempdir().unwrap();
        let write = |claims| std::fs::write(dir.path().join("token"), token(claims)).unwrap();
        let m = JwtLogin::kubernetes(config(dir.path()));
        let sub = "system:serviceaccount:ns:app";
        write(json!({"iss": "k8s", "sub": sub, "exp": 1, "jti": "1"}));
        let first = m.identity().expect("identity");
        write(json!({"iss": "k8s", "sub": sub, "exp": 2, "jti": "2"}));
        assert_eq!(m.identity().expect("identity"), first, "a rotated token is the same login");
        write(json!({"iss": "k8s", "sub": "system:serviceaccount:ns:other", "exp": 2}));
        assert_ne!(m.identity().expect("identity"), first, "another subject");
        write(json!({"iss": "k8s", "sub": sub}));
        let other_role = JwtLogin::kubernetes(JwtConfig { role: "other".into(), ..config(dir.path()) });
        assert_ne!(other_role.identity().expect("identity"), first, "another role");
        assert_eq!((m.name(), JwtLogin::jwt(config(dir.path())).name()), ("kubernetes", "jwt"));
        assert_eq!(m.credential_files(), [("auth.kubernetes.token_file", dir.path().join("token").as_path())]);
    }
}
