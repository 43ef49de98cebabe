//! Our own rustify endpoints (vaultrs lacks them or drops the lease) and
//! the response shapes we parse, with every secret field wiped on drop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use rustify_derive::Endpoint;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::error::VaultError;

/// `POST auth/<mount>/login` with the JSON body an auth method built
/// ([`super::backend::LoginRequest`]), sent as it is.
#[derive(Endpoint)]
#[endpoint(path = "auth/{self.mount}/login", method = "POST", response = "serde_json::Value")]
pub(super) struct LoginEndpoint {
    #[endpoint(skip)]
    pub(super) mount: String,
    #[endpoint(raw)]
    pub(super) body: Vec<u8>,
}

impl Drop for LoginEndpoint {
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/creds/{self.role}", response = "serde_json::Value")]
pub(super) struct DbCredsRequest {
    #[endpoint(skip)]
    pub(super) mount: String,
    #[endpoint(skip)]
    pub(super) role: String,
}

#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/roles/{self.role}", response = "serde_json::Value")]
pub(super) struct DbRoleRequest {
    #[endpoint(skip)]
    pub(super) mount: String,
    #[endpoint(skip)]
    pub(super) role: String,
}

/// What the request's token may do on each path (`vaultlet policy --check`).
#[derive(Endpoint)]
#[endpoint(path = "sys/capabilities-self", method = "POST", response = "serde_json::Value")]
pub(super) struct CapabilitiesSelfRequest {
    pub(super) paths: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct DbRoleData {
    #[serde(default)]
    pub(super) max_ttl: u64,
}

/// The lease id goes in the path, so a policy can scope renewal to the
/// configured prefixes (`sys/leases/renew/database/creds/api/*`); with the id
/// in the body, `update` on `sys/leases/renew` covers every lease in Vault.
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/renew/{self.lease_id}", method = "PUT", response = "serde_json::Value")]
pub(super) struct RenewLeaseRequest {
    #[endpoint(skip)]
    pub(super) lease_id: String,
    pub(super) increment: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/revoke/{self.lease_id}", method = "PUT", response = "serde_json::Value")]
pub(super) struct RevokeLeaseRequest {
    #[endpoint(skip)]
    pub(super) lease_id: String,
}

/// `sys/leases/lookup` has no path form (`sys/leases/lookup/<prefix>` is the
/// root-only LIST), so the id travels in the body; the shipped policy scopes
/// it with `allowed_parameters` instead (see policies/README.md).
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/lookup", method = "PUT", response = "serde_json::Value")]
pub(super) struct LookupLeaseRequest {
    pub(super) lease_id: String,
}

/// The unscoped forms, lease id in the body: only for policies written
/// before vaultlet used the path forms (see [`Vault::renew_lease`](super::Vault::renew_lease)).
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/renew", method = "PUT", response = "serde_json::Value")]
pub(super) struct RenewLeaseBodyRequest {
    pub(super) lease_id: String,
    pub(super) increment: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/revoke", method = "PUT", response = "serde_json::Value")]
pub(super) struct RevokeLeaseBodyRequest {
    pub(super) lease_id: String,
}

static UNSCOPED_WARNED: AtomicBool = AtomicBool::new(false);

/// After a 403 on a path form: the old body form, for policies that grant
/// only plain `sys/leases/renew|revoke`. Warns once when that works.
pub(super) async fn unscoped_fallback<F, Fut>(first: VaultError, f: F) -> Result<Zeroizing<Vec<u8>>, VaultError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Zeroizing<Vec<u8>>, VaultError>>,
{
    match f().await {
        Ok(body) => {
            if !UNSCOPED_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the token's policy allows lease renew/revoke only in the unscoped form (lease id in the body), \
                     which covers every lease in Vault; grant sys/leases/renew/<mount>/creds/<role>/* and \
                     sys/leases/revoke/<mount>/creds/<role>/* instead (see policies/README.md)"
                );
            }
            Ok(body)
        }
        Err(_) => Err(first),
    }
}

/// The response envelope, kept whole (vaultrs's `exec_with_result` strips it).
#[derive(Deserialize)]
pub(super) struct Envelope<T> {
    #[serde(default)]
    pub(super) lease_id: String,
    #[serde(default)]
    pub(super) lease_duration: u64,
    #[serde(default)]
    pub(super) renewable: bool,
    pub(super) data: Option<T>,
    #[serde(default)]
    pub(super) warnings: Option<Vec<String>>,
    #[serde(default)]
    pub(super) auth: Option<AuthData>,
}

#[derive(Deserialize)]
pub(super) struct AuthData {
    pub(super) client_token: String,
    #[serde(default)]
    pub(super) lease_duration: u64,
    #[serde(default)]
    pub(super) renewable: bool,
}

impl Drop for AuthData {
    fn drop(&mut self) {
        self.client_token.zeroize();
    }
}

#[derive(Deserialize)]
pub(super) struct DbCredsData {
    pub(super) username: String,
    pub(super) password: String,
}

impl Drop for DbCredsData {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

/// `POST <mount>/issue/<role>`. Lists go comma-joined, as Vault's API
/// takes them; `ttl` empty means the role's default.
#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/issue/{self.role}", method = "POST", response = "serde_json::Value")]
pub(super) struct PkiIssueRequest {
    #[endpoint(skip)]
    pub(super) mount: String,
    #[endpoint(skip)]
    pub(super) role: String,
    pub(super) common_name: String,
    pub(super) alt_names: String,
    pub(super) ip_sans: String,
    pub(super) ttl: String,
}

/// `POST <mount>/revoke` by serial number.
#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/revoke", method = "POST", response = "serde_json::Value")]
pub(super) struct PkiRevokeRequest {
    #[endpoint(skip)]
    pub(super) mount: String,
    pub(super) serial_number: String,
}

#[derive(Deserialize)]
pub(super) struct PkiIssueData {
    pub(super) certificate: String,
    pub(super) private_key: String,
    #[serde(default)]
    pub(super) issuing_ca: String,
    #[serde(default)]
    pub(super) ca_chain: Vec<String>,
    pub(super) serial_number: String,
    pub(super) expiration: i64,
    #[serde(default)]
    pub(super) not_before: Option<i64>,
}

impl Drop for PkiIssueData {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

#[derive(Deserialize)]
pub(super) struct SecretIdData {
    pub(super) secret_id: String,
}

impl Drop for SecretIdData {
    fn drop(&mut self) {
        self.secret_id.zeroize();
    }
}

#[derive(Deserialize)]
pub(super) struct WrapLookupData {
    #[serde(default)]
    pub(super) creation_path: String,
}

#[derive(Deserialize)]
pub(super) struct Kv2Data {
    pub(super) data: Option<BTreeMap<String, serde_json::Value>>,
}
