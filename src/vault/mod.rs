//! The wall around vaultrs: the only module that touches it (vaultrs types
//! appear in no file outside `src/vault/`).
//!
//! vaultrs gives us typed requests for response unwrapping, token
//! self-management and KV. It has hazards we keep on this side of the wall:
//!
//! * its settings builder reads `VAULT_ADDR`, `VAULT_TOKEN`,
//!   `VAULT_SKIP_VERIFY`… from the environment and panics on a bad URL, so we
//!   never build a `VaultClient`: its request types (rustify endpoints) run
//!   through [`Transport`](transport::Transport), our own rustify client around our own `reqwest`
//!   client (rustls, roots we load ourselves, connect and request timeouts,
//!   no proxy variables, no redirects);
//! * its settings and responses derive `Debug` over tokens and passwords, so
//!   no vaultrs value leaves this module: every response body is parsed here
//!   into our types from [`crate::secret`], and the token string inside the
//!   per-request middleware is zeroized when it is dropped;
//! * its errors can carry raw response bodies (which may hold passwords), so
//!   [`VaultError`] is built from status codes and Vault's short `errors`
//!   strings only; those strings, and every other piece of text a server
//!   chooses (a path it names, the names in its certificate, where it
//!   redirects to), are written in double quotes with Rust's escapes, so a
//!   server cannot make a log line say something vaultlet did not (an
//!   audit line fail2ban acts on, say);
//! * its database `creds` call drops the lease (id, duration, renewable) and
//!   it has no `sys/leases/renew` or `revoke`, so those are our own rustify
//!   endpoints below, parsed with the response envelope intact; so is the
//!   login, whose body is whatever the auth method built
//!   ([`LoginRequest`], see [`crate::auth`]).
//!
//! Every operation is described once, in [`Kind`](ops::Kind)'s table: its metric
//! label, the words its errors use, the capability a 403 hint names, whether
//! it may be sent twice and whether it issues something. Each public method
//! then only says which operation, which request body and how to read the
//! answer; [`Vault::call`] applies the table (issue rate, failover, counts).
//!
//! # Why our own transport
//!
//! rustify's reqwest client reads whole bodies into memory and lets reqwest
//! follow redirects: up to ten, re-sending the login body on 307/308,
//! keeping `X-Vault-Token` across hosts and from https down to http. A
//! server (or anyone who can make one answer) could collect the token and
//! the secret_id, or make vaultlet allocate without bound. [`Transport`](transport::Transport)
//! sends with redirects off and follows a 307/308 itself only to an address
//! listed in `vault.address` (same scheme, host and port), never from https
//! to http, at most [`MAX_REDIRECTS`] hops; anything else is an error that
//! names both ends, so the next configured address is tried (OpenBao
//! standbys can also forward instead of redirecting). Bodies are streamed
//! into a buffer capped at `vault.max_response_size`, wiped when it grows
//! and when dropped.
//!
//! # What a server says is not trusted
//!
//! Every duration Vault gives is clamped to [`MIN_TTL`]..=[`MAX_TTL`] here
//! (logged once per kind), so no later arithmetic on it can overflow and no
//! zero TTL can turn the schedule into a loop. Issuing calls (logins,
//! database credentials, certificates) also take a token from a
//! process-wide bucket
//! ([`ISSUE_BURST`], then [`ISSUE_RATE`] per second), so nothing a server
//! answers can make vaultlet hammer it.
//!
//! `vault.address` may list several servers: a request that cannot connect,
//! meets a sealed/unavailable node or a redirect it will not follow, is
//! retried once on the next address, and the address that worked is
//! remembered. A request that may have reached the server (a timeout, a
//! broken response) is retried elsewhere only when it is idempotent; an
//! issuing call (login, unwrap, database credentials) is not repeated then:
//! it fails, the next address becomes current, and the caller's backoff
//! decides. A credential such a lost answer may have created is unknown to
//! vaultlet; it ends with its lease, or earlier with the token that created
//! it (old tokens are revoked once unused, see [`crate::auth`]).
//!
//! # The files
//!
//! This file holds the operations (`impl Vault`: which request, which body,
//! how to read the answer) and `impl Backend for Vault`. Below it:
//! `backend.rs` the [`Backend`] trait and our answer types; `client.rs` the
//! [`Vault`] client and `call` (failover, counts); `ops.rs` the operation
//! table; `error.rs` [`VaultError`] and how a failure is classified;
//! `endpoints.rs` our own endpoints and the response shapes; `transport.rs`
//! redirects and capped bodies; `tls.rs` the roots; `guard.rs` TTL clamps,
//! the issue rate and lease ids; `fake.rs` the scripted server of the unit
//! tests.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::PkiRequest;
use crate::secret::{LeaseId, SecretData};

mod backend;
mod client;
mod endpoints;
mod error;
mod guard;
mod ops;
mod tls;
mod transport;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod tests;

pub use crate::limits::{DEFAULT_MAX_RESPONSE, MAX_TTL};
pub use backend::{Auth, Backend, Call, DbCreds, LoginRequest, PkiCert, Renewed};
pub use client::Vault;
pub use error::VaultError;
pub use guard::{ISSUE_BURST, ISSUE_RATE, MIN_TTL};
pub use ops::{Grant, LoginWords, grants};
pub use tls::SYSTEM_CA_FILES;
pub use transport::{MAX_REDIRECTS, RedirectRefused, redirect_target};

use client::{auth_from, parse, raw};
use endpoints::{
    CapabilitiesSelfRequest, DbCredsData, DbCredsRequest, DbRoleData, DbRoleRequest, Envelope, Kv2Data,
    LoginEndpoint, LookupLeaseRequest, PkiIssueData, PkiIssueRequest, PkiRevokeRequest, RenewLeaseBodyRequest,
    RenewLeaseRequest, RevokeLeaseBodyRequest, RevokeLeaseRequest, SecretIdData, WrapLookupData, unscoped_fallback,
};
use error::malformed;
use error::truncate;
use guard::{server_ttl, valid_lease_id};
use ops::Op;

// === impl Vault: the operations ===

impl Vault {
    /// `POST auth/<mount>/login` with the body an auth method built.
    pub async fn login(&self, mount: &str, request: &LoginRequest) -> Result<Auth, VaultError> {
        let op = Op::login(mount, request.words());
        let json = request.body();
        let json = &json;
        let body = self
            .call(&op, None, |c| async move {
                raw(&c, LoginEndpoint { mount: mount.to_owned(), body: json.to_vec() }).await
            })
            .await?;
        auth_from(&op, &body)
    }

    /// Unwraps a response-wrapped secret_id after checking that the wrapping
    /// token was really created by an AppRole secret-id endpoint.
    pub async fn unwrap_secret_id(&self, wrapping_token: &SecretString) -> Result<SecretString, VaultError> {
        let op = Op::wrap_lookup();
        let body = self
            .call(&op, Some(wrapping_token), |c| async move {
                let req = vaultrs::api::sys::requests::WrappingLookupRequest {
                    token: wrapping_token.expose_secret().to_owned(),
                };
                raw(&c, req).await
            })
            .await?;
        let env: Envelope<WrapLookupData> = parse(&op, &body)?;
        let path = env.data.map(|d| d.creation_path).unwrap_or_default();
        // `…/secret-id` or `…/custom-secret-id`: the two AppRole endpoints
        // that mint a secret_id.
        if !(path.starts_with("auth/") && (path.ends_with("/secret-id") || path.ends_with("/custom-secret-id"))) {
            // The path is the server's word: the message, quoted.
            let mut shown = path.clone();
            shown.retain(|c| !c.is_control());
            truncate(&mut shown, 200);
            return Err(VaultError::Refused {
                op: op.what,
                status: 400,
                message: shown,
                hint: " — the wrapping token was created by that path, not by an AppRole secret-id endpoint; \
                       refusing it"
                    .into(),
            });
        }
        // OpenBao wants the wrapping token as the request's token, not in the body.
        let op = Op::unwrap();
        let body = self
            .call(&op, Some(wrapping_token), |c| async move {
                raw(&c, vaultrs::api::sys::requests::UnwrapRequest { token: None }).await
            })
            .await?;
        let env: Envelope<SecretIdData> = parse(&op, &body)?;
        let Some(data) = env.data else { return Err(malformed(&op, "no data")) };
        Ok(SecretString::from(data.secret_id.clone()))
    }

    /// `POST auth/token/renew-self`.
    pub async fn renew_self(&self, token: &SecretString, increment: Duration) -> Result<Auth, VaultError> {
        let op = Op::renew_self();
        let inc = format!("{}s", increment.as_secs().max(1));
        let inc = inc.as_str();
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, vaultrs::api::token::requests::RenewTokenSelfRequest { increment: Some(inc.to_owned()) }).await
            })
            .await?;
        auth_from(&op, &body)
    }

    /// `GET auth/token/lookup-self`: is the token still valid?
    pub async fn lookup_self(&self, token: &SecretString) -> Result<(), VaultError> {
        let op = Op::lookup_self();
        self.call(&op, Some(token), |c| async move {
            raw(&c, vaultrs::api::token::requests::LookupTokenSelfRequest {}).await
        })
        .await
        .map(drop)
    }

    /// `POST auth/token/revoke-self`.
    pub async fn revoke_self(&self, token: &SecretString) -> Result<(), VaultError> {
        let op = Op::revoke_self();
        self.call(&op, Some(token), |c| async move {
            raw(&c, vaultrs::api::token::requests::RevokeTokenSelfRequest {}).await
        })
        .await
        .map(drop)
    }

    /// `POST <mount>/issue/<role>`: a new certificate and private key.
    pub async fn pki_issue(&self, token: &SecretString, req: &PkiRequest) -> Result<PkiCert, VaultError> {
        let op = Op::pki_issue(&req.mount, &req.role);
        let join = |v: &[String]| v.join(",");
        let ips: Vec<String> = req.ip_sans.iter().map(|ip| ip.to_string()).collect();
        let ttl = req.ttl.map(|t| format!("{}s", t.as_secs())).unwrap_or_default();
        let body = self
            .call(&op, Some(token), |c| {
                let e = PkiIssueRequest {
                    mount: req.mount.clone(),
                    role: req.role.clone(),
                    common_name: req.common_name.clone(),
                    alt_names: join(&req.alt_names),
                    ip_sans: join(&ips),
                    ttl: ttl.clone(),
                };
                async move { raw(&c, e).await }
            })
            .await?;
        let env: Envelope<PkiIssueData> = parse(&op, &body)?;
        let Some(d) = env.data.as_ref() else { return Err(malformed(&op, "no data")) };
        if !d.certificate.starts_with("-----BEGIN CERTIFICATE-----") {
            return Err(malformed(&op, "a certificate that is not PEM"));
        }
        if !d.private_key.starts_with("-----BEGIN ") || d.private_key.contains("CERTIFICATE") {
            return Err(malformed(&op, "a private key that is not PEM"));
        }
        if d.serial_number.is_empty() || !d.serial_number.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(malformed(&op, "a serial number that is not hex"));
        }
        let chain = if d.ca_chain.is_empty() { d.issuing_ca.clone() } else { d.ca_chain.join("\n") };
        let mut data = SecretData::default();
        data.insert("certificate", SecretString::from(d.certificate.clone()));
        data.insert("private_key", SecretString::from(d.private_key.clone()));
        data.insert("issuing_ca", SecretString::from(d.issuing_ca.clone()));
        data.insert("ca_chain", SecretString::from(chain));
        data.insert("serial_number", SecretString::from(d.serial_number.clone()));
        Ok(PkiCert {
            data,
            serial: d.serial_number.clone(),
            not_before: d.not_before,
            expiration: d.expiration,
            lease: (!env.lease_id.is_empty() && valid_lease_id(&env.lease_id))
                .then(|| LeaseId::new(env.lease_id.clone())),
        })
    }

    /// `POST <mount>/revoke` by serial number.
    pub async fn pki_revoke(&self, token: &SecretString, mount: &str, serial: &str) -> Result<(), VaultError> {
        let op = Op::pki_revoke(mount);
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, PkiRevokeRequest { mount: mount.to_owned(), serial_number: serial.to_owned() }).await
            })
            .await?;
        // OpenBao answers 200 with only a warning when it declines (e.g. a
        // certificate it counts as expired): that is not a revocation.
        let env: Envelope<serde_json::Value> = parse(&op, &body)?;
        match env.data.as_ref().and_then(|d| d.get("revocation_time")).and_then(|t| t.as_i64()) {
            Some(t) if t > 0 => Ok(()),
            _ => Err(malformed(&op, "no revocation_time (Vault declined with a warning, e.g. already expired)")),
        }
    }

    /// `GET <mount>/creds/<role>`, keeping the lease.
    pub async fn db_creds(&self, token: &SecretString, mount: &str, role: &str) -> Result<DbCreds, VaultError> {
        let op = Op::db_creds(mount, role);
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, DbCredsRequest { mount: mount.to_owned(), role: role.to_owned() }).await
            })
            .await?;
        let env: Envelope<DbCredsData> = parse(&op, &body)?;
        let Some(d) = env.data.as_ref() else { return Err(malformed(&op, "no data")) };
        if env.lease_id.is_empty() {
            return Err(malformed(&op, "no lease_id"));
        }
        if !valid_lease_id(&env.lease_id) {
            return Err(malformed(&op, "a lease_id that is not a plain path"));
        }
        let mut data = SecretData::default();
        data.insert("username", SecretString::from(d.username.clone()));
        data.insert("password", SecretString::from(d.password.clone()));
        Ok(DbCreds {
            data,
            lease_id: LeaseId::new(env.lease_id.clone()),
            ttl: server_ttl(op.kind, env.lease_duration),
            renewable: env.renewable,
        })
    }

    /// `GET <mount>/roles/<role>`: the role's `max_ttl`, so the first lease
    /// can be replaced in good time. Optional: needs `read` on the role,
    /// which the least-privilege policy may leave out; 0 (the mount's
    /// default) gives `None`.
    pub async fn db_role_max_ttl(
        &self,
        token: &SecretString,
        mount: &str,
        role: &str,
    ) -> Result<Option<Duration>, VaultError> {
        let op = Op::db_role(mount, role);
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, DbRoleRequest { mount: mount.to_owned(), role: role.to_owned() }).await
            })
            .await?;
        let env: Envelope<DbRoleData> = parse(&op, &body)?;
        Ok(env.data.map(|d| d.max_ttl).filter(|t| *t > 0).map(|t| server_ttl(op.kind, t)))
    }

    /// `POST sys/capabilities-self`: the capabilities `token` has on each of
    /// `paths` (for `vaultlet policy --check`; the tasks never need it).
    pub async fn capabilities_self(
        &self,
        token: &SecretString,
        paths: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, VaultError> {
        let op = Op::capabilities_self();
        let body = self
            .call(&op, Some(token), |c| async move { raw(&c, CapabilitiesSelfRequest { paths: paths.to_vec() }).await })
            .await?;
        let env: Envelope<BTreeMap<String, serde_json::Value>> = parse(&op, &body)?;
        let Some(data) = env.data else { return Err(malformed(&op, "no data")) };
        let caps = |v: &serde_json::Value| {
            v.as_array().map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect::<Vec<_>>())
        };
        Ok(paths.iter().map(|p| (p.clone(), data.get(p).and_then(caps).unwrap_or_default())).collect())
    }

    /// `PUT sys/leases/renew/<lease_id>`.
    pub async fn renew_lease(
        &self,
        token: &SecretString,
        lease: &LeaseId,
        increment: Duration,
    ) -> Result<Renewed, VaultError> {
        let op = Op::lease_renew(lease);
        if !valid_lease_id(lease.as_str()) {
            return Err(malformed(&op, "a lease_id that is not a plain path"));
        }
        let inc = increment.as_secs().max(1);
        let id = lease.as_str();
        let body = match self
            .call(&op, Some(token), |c| async move {
                raw(&c, RenewLeaseRequest { lease_id: id.to_owned(), increment: inc }).await
            })
            .await
        {
            Err(e) if e.is_forbidden() => {
                unscoped_fallback(e, || {
                    self.call(&op, Some(token), |c| async move {
                        raw(&c, RenewLeaseBodyRequest { lease_id: id.to_owned(), increment: inc }).await
                    })
                })
                .await?
            }
            r => r?,
        };
        let env: Envelope<serde::de::IgnoredAny> = parse(&op, &body)?;
        let ttl = server_ttl(op.kind, env.lease_duration);
        // OpenBao grants exactly the increment unless max_ttl is in the way,
        // and then also says so in a warning.
        let warned = env.warnings.iter().flatten().any(|w| w.contains("max_ttl") || w.contains("capped"));
        Ok(Renewed { ttl, renewable: env.renewable, capped: ttl < increment || warned })
    }

    /// `PUT sys/leases/lookup` with `{"lease_id": …}`: whether Vault still
    /// knows the lease. A revoked or expired one answers 400 `invalid lease`
    /// ([`VaultError::is_lease_gone`]); nothing is issued or extended.
    pub async fn lookup_lease(&self, token: &SecretString, lease: &LeaseId) -> Result<(), VaultError> {
        let op = Op::lease_lookup(lease);
        if !valid_lease_id(lease.as_str()) {
            return Err(malformed(&op, "a lease_id that is not a plain path"));
        }
        let id = lease.as_str();
        self.call(&op, Some(token), |c| async move { raw(&c, LookupLeaseRequest { lease_id: id.to_owned() }).await })
            .await
            .map(drop)
    }

    /// `PUT sys/leases/revoke/<lease_id>`.
    pub async fn revoke_lease(&self, token: &SecretString, lease: &LeaseId) -> Result<(), VaultError> {
        let op = Op::lease_revoke(lease);
        if !valid_lease_id(lease.as_str()) {
            return Err(malformed(&op, "a lease_id that is not a plain path"));
        }
        let id = lease.as_str();
        match self
            .call(&op, Some(token), |c| async move { raw(&c, RevokeLeaseRequest { lease_id: id.to_owned() }).await })
            .await
        {
            Err(e) if e.is_forbidden() => unscoped_fallback(e, || {
                self.call(&op, Some(token), |c| async move {
                    raw(&c, RevokeLeaseBodyRequest { lease_id: id.to_owned() }).await
                })
            })
            .await
            .map(drop),
            r => r.map(drop),
        }
    }

    /// Reads a KV secret (v1 or v2) as a map of strings; non-string values
    /// are kept as their JSON text.
    pub async fn kv(
        &self,
        token: &SecretString,
        mount: &str,
        path: &str,
        version: u8,
    ) -> Result<SecretData, VaultError> {
        let op = Op::kv_read(mount, path, version);
        let map: BTreeMap<String, serde_json::Value> = if version == 2 {
            let body = self
                .call(&op, Some(token), |c| async move {
                    raw(
                        &c,
                        vaultrs::api::kv2::requests::ReadSecretRequest {
                            mount: mount.to_owned(),
                            path: path.to_owned(),
                            version: None,
                        },
                    )
                    .await
                })
                .await?;
            let env: Envelope<Kv2Data> = parse(&op, &body)?;
            env.data.and_then(|d| d.data).ok_or_else(|| malformed(&op, "no data"))?
        } else {
            let body = self
                .call(&op, Some(token), |c| async move {
                    raw(
                        &c,
                        vaultrs::api::kv1::requests::GetSecretRequest {
                            mount: mount.to_owned(),
                            path: path.to_owned(),
                        },
                    )
                    .await
                })
                .await?;
            let env: Envelope<BTreeMap<String, serde_json::Value>> = parse(&op, &body)?;
            env.data.ok_or_else(|| malformed(&op, "no data"))?
        };
        let mut data = SecretData::default();
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(k, SecretString::from(s));
        }
        Ok(data)
    }
}

// === impl Backend for Vault ===

impl Backend for Vault {
    fn login<'a>(&'a self, mount: &'a str, request: &'a LoginRequest) -> Call<'a, Auth> {
        Box::pin(Vault::login(self, mount, request))
    }
    fn unwrap_secret_id<'a>(&'a self, wrapping_token: &'a SecretString) -> Call<'a, SecretString> {
        Box::pin(Vault::unwrap_secret_id(self, wrapping_token))
    }
    fn renew_self<'a>(&'a self, token: &'a SecretString, increment: Duration) -> Call<'a, Auth> {
        Box::pin(Vault::renew_self(self, token, increment))
    }
    fn lookup_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()> {
        Box::pin(Vault::lookup_self(self, token))
    }
    fn revoke_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()> {
        Box::pin(Vault::revoke_self(self, token))
    }
    fn db_creds<'a>(&'a self, token: &'a SecretString, mount: &'a str, role: &'a str) -> Call<'a, DbCreds> {
        Box::pin(Vault::db_creds(self, token, mount, role))
    }
    fn db_role_max_ttl<'a>(
        &'a self,
        token: &'a SecretString,
        mount: &'a str,
        role: &'a str,
    ) -> Call<'a, Option<Duration>> {
        Box::pin(Vault::db_role_max_ttl(self, token, mount, role))
    }
    fn renew_lease<'a>(
        &'a self,
        token: &'a SecretString,
        lease: &'a LeaseId,
        increment: Duration,
    ) -> Call<'a, Renewed> {
        Box::pin(Vault::renew_lease(self, token, lease, increment))
    }
    fn lookup_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()> {
        Box::pin(Vault::lookup_lease(self, token, lease))
    }
    fn revoke_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()> {
        Box::pin(Vault::revoke_lease(self, token, lease))
    }
    fn kv<'a>(&'a self, token: &'a SecretString, mount: &'a str, path: &'a str, version: u8) -> Call<'a, SecretData> {
        Box::pin(Vault::kv(self, token, mount, path, version))
    }
    fn pki_issue<'a>(&'a self, token: &'a SecretString, req: &'a PkiRequest) -> Call<'a, PkiCert> {
        Box::pin(Vault::pki_issue(self, token, req))
    }
    fn pki_revoke<'a>(&'a self, token: &'a SecretString, mount: &'a str, serial: &'a str) -> Call<'a, ()> {
        Box::pin(Vault::pki_revoke(self, token, mount, serial))
    }
}
