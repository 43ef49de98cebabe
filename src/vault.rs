//! The wall around vaultrs: the only module that touches it.
//!
//! vaultrs gives us typed requests for AppRole, response unwrapping, token
//! self-management and KV. It has hazards we keep on this side of the wall:
//!
//! * its settings builder reads `VAULT_ADDR`, `VAULT_TOKEN`,
//!   `VAULT_SKIP_VERIFY`… from the environment and panics on a bad URL, so we
//!   build [`VaultClient`] by hand from its public fields around our own
//!   `reqwest` client (rustls, exclusive CA bundle, connect and request
//!   timeouts, no proxy variables);
//! * its settings and responses derive `Debug` over tokens and passwords, so
//!   no vaultrs value leaves this module: every response is converted at once
//!   into our types from [`crate::secret`], and the token strings inside the
//!   per-request client are zeroized when it is dropped;
//! * its errors can carry raw response bodies (which may hold passwords), so
//!   [`VaultError`] is built from status codes and Vault's short `errors`
//!   strings only;
//! * its database `creds` call drops the lease (id, duration, renewable) and
//!   it has no `sys/leases/renew` or `revoke`, so those three are our own
//!   rustify endpoints below, parsed with the response envelope intact.
//!
//! `vault.address` may list several servers: a request that cannot connect,
//! times out, or meets a sealed/unavailable node is retried once on the next
//! address, and the address that worked is remembered.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustify::endpoint::Endpoint;
use rustify_derive::Endpoint;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use crate::config::VaultConfig;
use crate::secret::{LeaseId, SecretData};

/// A problem talking to Vault. Never carries a response body.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No connection, a timeout, or a broken response stream.
    #[error("cannot reach vault at {addr} for {op}: {reason}")]
    Unreachable {
        /// What we were doing.
        op: String,
        /// The address tried last.
        addr: String,
        /// Transport-level cause.
        reason: String,
    },
    /// Vault answered with an error status.
    #[error("vault refused {op} ({status}): {message}{hint}")]
    Refused {
        /// What we were doing.
        op: String,
        /// HTTP status.
        status: u16,
        /// Vault's `errors` strings.
        message: String,
        /// How to fix it, when we can tell.
        hint: String,
    },
    /// The response did not have the shape we expect.
    #[error("vault answered {op} with a response vaultlet cannot read ({what})")]
    Malformed {
        /// What we were doing.
        op: String,
        /// Which part was wrong (never its content).
        what: &'static str,
    },
    /// The HTTP client could not be built (bad CA file…).
    #[error("vault client set-up: {0}")]
    Setup(String),
}

// === impl VaultError ===

impl VaultError {
    /// Whether retrying soon may help: transport failures, 5xx, 429 and
    /// Vault's 412 (a standby that has not caught up).
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 412,
            VaultError::Malformed { .. } | VaultError::Setup(_) => false,
        }
    }

    /// The HTTP status, if Vault answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 403: the token is invalid/expired, or its policy lacks a capability.
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// A renew/revoke on a lease Vault no longer knows (expired or revoked).
    pub fn is_lease_gone(&self) -> bool {
        matches!(self, VaultError::Refused { status: 400, message, .. } if message.contains("lease not found") || message.contains("invalid lease"))
    }
}

/// A successful login or renew-self.
pub struct Auth {
    /// The client token.
    pub token: SecretString,
    /// Its TTL as Vault reported it.
    pub ttl: Duration,
    /// Whether renew-self may extend it.
    pub renewable: bool,
}

/// A freshly issued database credential.
pub struct DbCreds {
    /// `username` and `password`.
    pub data: SecretData,
    /// The lease.
    pub lease_id: LeaseId,
    /// The lease TTL.
    pub ttl: Duration,
    /// Whether the lease can be renewed.
    pub renewable: bool,
}

/// The outcome of `sys/leases/renew`.
#[derive(Debug)]
pub struct Renewed {
    /// The TTL from now.
    pub ttl: Duration,
    /// Whether it can be renewed again.
    pub renewable: bool,
    /// Vault gave less than asked: the lease has reached its max TTL.
    pub capped: bool,
}

/// One operation, for error messages and policy hints.
struct Op {
    /// Metric label: login, unwrap, renew_self, db_creds, …
    kind: &'static str,
    what: String,
    capability: &'static str,
    path: String,
}

// === our own endpoints (vaultrs lacks them or drops the lease) ===

#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/creds/{self.role}", response = "serde_json::Value")]
struct DbCredsRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/roles/{self.role}", response = "serde_json::Value")]
struct DbRoleRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

#[derive(Deserialize)]
struct DbRoleData {
    #[serde(default)]
    max_ttl: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/renew", method = "PUT", response = "serde_json::Value")]
struct RenewLeaseRequest {
    lease_id: String,
    increment: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/revoke", method = "PUT", response = "serde_json::Value")]
struct RevokeLeaseRequest {
    lease_id: String,
}

/// The response envelope, kept whole (vaultrs's `exec_with_result` strips it).
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    data: Option<T>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct DbCredsData {
    username: String,
    password: String,
}

impl Drop for DbCredsData {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

#[derive(Deserialize)]
struct SecretIdData {
    secret_id: String,
}

impl Drop for SecretIdData {
    fn drop(&mut self) {
        self.secret_id.zeroize();
    }
}

/// A vaultrs client for one request, with its copies of the token wiped on
/// drop (vaultrs stores the token as plain `String`s in two places).
struct Conn(VaultClient);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.settings.token.zeroize();
        self.0.middle.token.zeroize();
    }
}

/// The Vault connection: one HTTP client, one or more server addresses.
pub struct Vault {
    http: reqwest::Client,
    addrs: Vec<reqwest::Url>,
    current: AtomicUsize,
    namespace: Option<String>,
    /// Requests in flight at once. Thousands of secrets starting together
    /// queue here instead of opening thousands of connections.
    in_flight: tokio::sync::Semaphore,
}

/// Most requests vaultlet sends to Vault at the same time.
const MAX_IN_FLIGHT: usize = 32;

// === impl Vault ===

impl Vault {
    /// Builds the HTTP client. Reads the CA file; no network I/O.
    pub fn new(cfg: &VaultConfig) -> Result<Vault, VaultError> {
        let mut b = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .no_proxy()
            // Few idle connections: a sidecar's requests come in small bursts.
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("vaultlet/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path).map_err(|e| VaultError::Setup(format!("reading {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|_| VaultError::Setup(format!("{} holds no valid PEM certificate", path.display())))?;
            if certs.is_empty() {
                return Err(VaultError::Setup(format!("{} holds no certificate", path.display())));
            }
            // Exclusive: the configured CA replaces the system roots.
            b = b.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &cfg.client_cert {
            let mut pem =
                std::fs::read(cert).map_err(|e| VaultError::Setup(format!("reading {}: {e}", cert.display())))?;
            let mut k = std::fs::read(key).map_err(|e| VaultError::Setup(format!("reading {}: {e}", key.display())))?;
            pem.push(b'\n');
            pem.extend_from_slice(&k);
            k.zeroize();
            let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                VaultError::Setup(format!("{} / {} are not a PEM certificate and key", cert.display(), key.display()))
            });
            pem.zeroize();
            b = b.identity(id?);
        }
        let http = b.build().map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Vault {
            http,
            addrs: cfg.addresses.clone(),
            current: AtomicUsize::new(0),
            namespace: cfg.namespace.clone(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    fn conn(&self, addr: &reqwest::Url, token: &str) -> Conn {
        let base = addr.as_str().trim_end_matches('/');
        Conn(VaultClient {
            http: rustify::clients::reqwest::Client::new(base, self.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_owned(),
                version: "v1".into(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            settings: VaultClientSettings {
                address: addr.clone(),
                ca_certs: Vec::new(),
                identity: None,
                timeout: None,
                token: token.to_owned(),
                verify: true,
                version: 1,
                wrapping: false,
                namespace: self.namespace.clone(),
                proxy: None,
            },
        })
    }

    /// Runs one request, moving to the next address when this one cannot
    /// serve it. `f` gets its own client per attempt.
    async fn call<T, F, Fut>(&self, op: &Op, token: Option<&SecretString>, f: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let token = token.map(|t| t.expose_secret()).unwrap_or("");
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addrs.len() {
            let idx = (start + i) % self.addrs.len();
            let addr = &self.addrs[idx];
            let conn = Arc::new(self.conn(addr, token));
            let started = std::time::Instant::now();
            tracing::trace!(operation = %op.kind, path = %op.path, address = %addr, "vault request");
            // Boxed: the HTTP stack's futures are large, and keeping them out
            // of every caller's state keeps idle secret tasks small.
            let res = Box::pin(f(conn)).await;
            tracing::trace!(operation = %op.kind, ok = res.is_ok(), took = ?started.elapsed(), "vault response");
            crate::metrics::vault_request(op.kind, started.elapsed(), res.is_ok());
            match res {
                Ok(v) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                        tracing::info!(address = %addr, "switched to vault server");
                    }
                    return Ok(v);
                }
                Err(e) => {
                    let e = classify(op, addr, e);
                    // Try another server only when this one could not serve
                    // the request at all.
                    let next = matches!(e, VaultError::Unreachable { .. })
                        || matches!(e.status(), Some(500..=599) | Some(429) | Some(412));
                    if !next {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one address is configured"))
    }

    /// `POST auth/<mount>/login`.
    pub async fn login_approle(
        &self,
        mount: &str,
        role_id: &SecretString,
        secret_id: &SecretString,
    ) -> Result<Auth, VaultError> {
        let op = Op {
            kind: "login",
            what: "AppRole login".into(),
            capability: "none (check role_id and secret_id)",
            path: format!("auth/{mount}/login"),
        };
        let info = self
            .call(&op, None, |c| async move {
                vaultrs::auth::approle::login(&c.0, mount, role_id.expose_secret(), secret_id.expose_secret()).await
            })
            .await?;
        auth_from(&op, info)
    }

    /// Unwraps a response-wrapped secret_id after checking that the wrapping
    /// token was really created by an AppRole secret-id endpoint.
    pub async fn unwrap_secret_id(&self, wrapping_token: &SecretString) -> Result<SecretString, VaultError> {
        let op = Op {
            kind: "wrap_lookup",
            what: "wrapping token lookup".into(),
            capability: "update",
            path: "sys/wrapping/lookup".into(),
        };
        let info = self
            .call(&op, Some(wrapping_token), |c| async move {
                vaultrs::sys::wrapping::lookup(&c.0, wrapping_token.expose_secret()).await
            })
            .await?;
        let path = info.creation_path;
        // `…/secret-id` or `…/custom-secret-id`: the two AppRole endpoints
        // that mint a secret_id.
        if !(path.starts_with("auth/") && (path.ends_with("/secret-id") || path.ends_with("/custom-secret-id"))) {
            return Err(VaultError::Refused {
                op: op.what,
                status: 400,
                message: format!(
                    "wrapping token was created by `{path}`, not an AppRole secret-id endpoint; refusing it"
                ),
                hint: String::new(),
            });
        }
        // OpenBao wants the wrapping token as the request's token, not in the body.
        let op = Op {
            kind: "unwrap",
            what: "secret_id unwrap".into(),
            capability: "update",
            path: "sys/wrapping/unwrap".into(),
        };
        let data: SecretIdData = self
            .call(&op, Some(wrapping_token), |c| async move { vaultrs::sys::wrapping::unwrap(&c.0, None).await })
            .await?;
        Ok(SecretString::from(data.secret_id.clone()))
    }

    /// `POST auth/token/renew-self`.
    pub async fn renew_self(&self, token: &SecretString, increment: Duration) -> Result<Auth, VaultError> {
        let op = Op {
            kind: "renew_self",
            what: "token renewal".into(),
            capability: "update",
            path: "auth/token/renew-self".into(),
        };
        let inc = format!("{}s", increment.as_secs().max(1));
        let inc = inc.as_str();
        let info =
            self.call(&op, Some(token), |c| async move { vaultrs::token::renew_self(&c.0, Some(inc)).await }).await?;
        auth_from(&op, info)
    }

    /// `GET auth/token/lookup-self`: is the token still valid?
    pub async fn lookup_self(&self, token: &SecretString) -> Result<(), VaultError> {
        let op = Op {
            kind: "lookup_self",
            what: "token lookup".into(),
            capability: "read",
            path: "auth/token/lookup-self".into(),
        };
        self.call(&op, Some(token), |c| async move { vaultrs::token::lookup_self(&c.0).await }).await.map(drop)
    }

    /// `POST auth/token/revoke-self`.
    pub async fn revoke_self(&self, token: &SecretString) -> Result<(), VaultError> {
        let op = Op {
            kind: "revoke_self",
            what: "token revocation".into(),
            capability: "update",
            path: "auth/token/revoke-self".into(),
        };
        self.call(&op, Some(token), |c| async move { vaultrs::token::revoke_self(&c.0).await }).await
    }

    /// `GET <mount>/creds/<role>`, keeping the lease.
    pub async fn db_creds(&self, token: &SecretString, mount: &str, role: &str) -> Result<DbCreds, VaultError> {
        let op = Op {
            kind: "db_creds",
            what: format!("database credentials {mount}/creds/{role}"),
            capability: "read",
            path: format!("{mount}/creds/{role}"),
        };
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, DbCredsRequest { mount: mount.to_owned(), role: role.to_owned() }).await
            })
            .await?;
        let env: Envelope<DbCredsData> = parse(&op, &body)?;
        let Some(d) = env.data else { return Err(malformed(&op, "no data")) };
        if env.lease_id.is_empty() {
            return Err(malformed(&op, "no lease_id"));
        }
        let mut data = SecretData::default();
        data.insert("username", SecretString::from(d.username.clone()));
        data.insert("password", SecretString::from(d.password.clone()));
        Ok(DbCreds {
            data,
            lease_id: LeaseId::new(env.lease_id),
            ttl: Duration::from_secs(env.lease_duration),
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
        let op = Op {
            kind: "db_role",
            what: format!("database role {mount}/roles/{role}"),
            capability: "read",
            path: format!("{mount}/roles/{role}"),
        };
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(&c, DbRoleRequest { mount: mount.to_owned(), role: role.to_owned() }).await
            })
            .await?;
        let env: Envelope<DbRoleData> = parse(&op, &body)?;
        Ok(env.data.map(|d| d.max_ttl).filter(|t| *t > 0).map(Duration::from_secs))
    }

    /// `PUT sys/leases/renew`.
    pub async fn renew_lease(
        &self,
        token: &SecretString,
        lease: &LeaseId,
        increment: Duration,
    ) -> Result<Renewed, VaultError> {
        let op = Op {
            kind: "lease_renew",
            what: format!("lease renewal of {}", lease.path()),
            capability: "update",
            path: "sys/leases/renew".into(),
        };
        let body = self
            .call(&op, Some(token), |c| async move {
                raw(
                    &c,
                    RenewLeaseRequest { lease_id: lease.as_str().to_owned(), increment: increment.as_secs().max(1) },
                )
                .await
            })
            .await?;
        let env: Envelope<serde::de::IgnoredAny> = parse(&op, &body)?;
        let ttl = Duration::from_secs(env.lease_duration);
        // OpenBao grants exactly the increment unless max_ttl is in the way,
        // and then also says so in a warning.
        let warned = env.warnings.iter().flatten().any(|w| w.contains("max_ttl") || w.contains("capped"));
        Ok(Renewed { ttl, renewable: env.renewable, capped: ttl < increment || warned })
    }

    /// `PUT sys/leases/revoke`.
    pub async fn revoke_lease(&self, token: &SecretString, lease: &LeaseId) -> Result<(), VaultError> {
        let op = Op {
            kind: "lease_revoke",
            what: format!("lease revocation of {}", lease.path()),
            capability: "update",
            path: "sys/leases/revoke".into(),
        };
        self.call(&op, Some(token), |c| async move {
            raw(&c, RevokeLeaseRequest { lease_id: lease.as_str().to_owned() }).await
        })
        .await
        .map(drop)
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
        let (api_path, what) = if version == 2 {
            (format!("{mount}/data/{path}"), format!("kv secret {mount}/{path}"))
        } else {
            (format!("{mount}/{path}"), format!("kv secret {mount}/{path}"))
        };
        let op = Op { kind: "kv_read", what, capability: "read", path: api_path };
        let map: BTreeMap<String, serde_json::Value> = if version == 2 {
            self.call(&op, Some(token), |c| async move { vaultrs::kv2::read(&c.0, mount, path).await }).await?
        } else {
            self.call(&op, Some(token), |c| async move { vaultrs::kv1::get(&c.0, mount, path).await }).await?
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

/// Executes one of our endpoints, returning the body (wiped on drop).
async fn raw<E: Endpoint>(c: &Conn, e: E) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let res = e.with_middleware(&c.0.middle).exec(&c.0.http).await?;
    Ok(Zeroizing::new(res.response.into_body()))
}

fn parse<T: serde::de::DeserializeOwned>(op: &Op, body: &[u8]) -> Result<T, VaultError> {
    serde_json::from_slice(body).map_err(|_| malformed(op, "not the expected JSON"))
}

fn malformed(op: &Op, what: &'static str) -> VaultError {
    VaultError::Malformed { op: op.what.clone(), what }
}

fn auth_from(op: &Op, mut info: vaultrs::api::AuthInfo) -> Result<Auth, VaultError> {
    let token = SecretString::from(std::mem::take(&mut info.client_token));
    // The token goes into a header on every request; vaultrs would panic
    // building one from anything but visible ASCII.
    let t = token.expose_secret();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(op, "a client token that is not visible ASCII"));
    }
    Ok(Auth { token, ttl: Duration::from_secs(info.lease_duration), renewable: info.renewable })
}

/// Vault's error JSON: `{"errors": ["…"]}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// Turns a vaultrs/rustify error into ours, dropping any response body except
/// Vault's short `errors` strings.
fn classify(op: &Op, addr: &reqwest::Url, e: ClientError) -> VaultError {
    use rustify::errors::ClientError as R;
    let status_err = |status: u16, errors: Vec<String>| {
        let mut message = errors.join("; ");
        message.retain(|c| !c.is_control());
        truncate(&mut message, 300);
        if message.is_empty() {
            message = "no reason given".into();
        }
        let hint = match status {
            403 if op.capability != "none (check role_id and secret_id)" => {
                format!(" — the token's policy needs `{}` on `{}` (or the token has expired)", op.capability, op.path)
            }
            400 | 403 if op.path.starts_with("auth/") && op.path.ends_with("/login") => {
                " — check the role_id and secret_id files and that the secret_id has not expired or been used up".into()
            }
            503 => " — the server is sealed or unavailable".into(),
            _ => String::new(),
        };
        VaultError::Refused { op: op.what.clone(), status, message, hint }
    };
    let rest = match e {
        ClientError::APIError { code, errors } => return status_err(code, errors),
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            return malformed(op, "empty response");
        }
        ClientError::JsonParseError { .. } | ClientError::ResponseWrapError => return malformed(op, "unexpected JSON"),
        ClientError::RestClientError { source } => source,
        _ => return VaultError::Setup(format!("{} failed before sending", op.what)),
    };
    match rest {
        R::ServerResponseError { code, content } => {
            let errors = content
                .as_deref()
                .and_then(|c| serde_json::from_str::<ErrorBody>(c).ok())
                .map(|b| b.errors)
                .unwrap_or_default();
            status_err(code, errors)
        }
        R::RequestError { source, .. } | R::ResponseError { source } => VaultError::Unreachable {
            op: op.what.clone(),
            addr: addr.to_string(),
            reason: transport_reason(source.as_ref()),
        },
        R::ResponseParseError { .. } | R::ResponseConversionError { .. } => malformed(op, "unexpected JSON"),
        _ => VaultError::Setup(format!("{} could not be built", op.what)),
    }
}

/// Shortens a message to at most `max` bytes on a character boundary
/// (`String::truncate` panics inside a multi-byte character).
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(r) = e.downcast_ref::<reqwest::Error>()
        && r.is_timeout()
    {
        return "timed out".into();
    }
    // The innermost cause is the informative one ("Connection refused").
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let mut s = cur.to_string();
    truncate(&mut s, 200);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Op {
        Op {
            kind: "db_creds",
            what: "database credentials database/creds/api".into(),
            capability: "read",
            path: "database/creds/api".into(),
        }
    }

    #[test]
    fn forbidden_names_missing_capability() {
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 403, errors: vec!["permission denied".into()] },
        );
        let msg = e.to_string();
        assert!(msg.contains("`read` on `database/creds/api`"), "{msg}");
        assert!(!e.is_transient());
        assert!(e.is_forbidden());
    }

    #[test]
    fn bodies_never_reach_errors() {
        let body = r#"{"data":{"password":"p4ssw0rd-SECRET"},"oops"#;
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::RestClientError {
                source: rustify::errors::ClientError::ResponseParseError {
                    source: anyhow::anyhow!("eof"),
                    content: Some(body.into()),
                },
            },
        );
        assert!(!format!("{e} {e:?}").contains("p4ssw0rd"));
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code: 502, content: Some(body.into()) },
            },
        );
        assert!(!format!("{e} {e:?}").contains("p4ssw0rd"));
        assert!(e.is_transient());
    }

    #[test]
    fn long_multibyte_errors_are_cut_without_panicking() {
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 500, errors: vec![format!("a{}", "é".repeat(400))] },
        );
        assert!(e.to_string().len() < 1000);
    }

    #[test]
    fn lease_gone_is_recognised() {
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 400, errors: vec!["lease not found".into()] },
        );
        assert!(e.is_lease_gone());
    }
}
