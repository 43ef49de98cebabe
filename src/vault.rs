//! The wall around vaultrs: the only module that touches it.
//!
//! vaultrs gives us typed requests for AppRole, response unwrapping, token
//! self-management and KV. It has hazards we keep on this side of the wall:
//!
//! * its settings builder reads `VAULT_ADDR`, `VAULT_TOKEN`,
//!   `VAULT_SKIP_VERIFY`… from the environment and panics on a bad URL, so we
//!   never build a `VaultClient`: its request types (rustify endpoints) run
//!   through [`Transport`], our own rustify client around our own `reqwest`
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
//!   endpoints below, parsed with the response envelope intact.
//!
//! Every operation is described once, in [`Kind`]'s table: its metric
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
//! the secret_id, or make vaultlet allocate without bound. [`Transport`]
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

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestError;
use rustify_derive::Endpoint;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use vaultrs::api::EndpointMiddleware;
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use crate::config::{PkiRequest, VaultConfig};
use crate::secret::{LeaseId, SecretData};

#[cfg(test)]
pub mod fake;

pub use crate::limits::{DEFAULT_MAX_RESPONSE, MAX_TTL};

/// Redirect hops followed for one request (standby → active is one).
pub const MAX_REDIRECTS: usize = 2;

/// Shortest TTL taken from a server. A zero TTL would make a credential due
/// for replacement the moment it is issued.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Issuing calls (logins, database credentials, certificates) allowed at
/// once before the rate applies: enough for every secret of a large sidecar
/// to start.
pub const ISSUE_BURST: f64 = 100.0;

/// Issuing calls per second after the burst, process-wide.
pub const ISSUE_RATE: f64 = 10.0;

/// Where system CA bundles are looked for when `vault.ca_cert` is unset and
/// an address is https (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE,
/// others). Fixed paths: `SSL_CERT_FILE`/`SSL_CERT_DIR` are not read.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

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
        /// Transport-level cause: `timed out`, or the cause's own text
        /// quoted and escaped (it can hold a server's words: the names in
        /// its certificate, a redirect's target).
        reason: String,
    },
    /// Vault answered with an error status.
    #[error("vault refused {op} ({status}): {}{hint}", Said(.message))]
    Refused {
        /// What we were doing.
        op: String,
        /// HTTP status.
        status: u16,
        /// What the server said (Vault's `errors` strings), as it said it
        /// but for control characters and a length cap; empty when it said
        /// nothing. Written quoted and escaped: it is the server's text.
        message: String,
        /// How to fix it, when we can tell (our words).
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
    /// The answer was larger than `vault.max_response_size`.
    #[error("vault answered {op} with more than {limit} bytes (vault.max_response_size); not read")]
    TooLarge {
        /// What we were doing.
        op: String,
        /// The cap in bytes.
        limit: usize,
    },
    /// The HTTP client could not be built (bad CA file…).
    #[error("vault client set-up: {0}")]
    Setup(String),
}

/// A server's words in an error: quoted and escaped as Rust's `{:?}`
/// does (quotes, backslashes, control and invisible line-breaking
/// characters), so no reader of the line takes them for its structure;
/// `no reason given` when there are none.
struct Said<'a>(&'a str);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() { f.write_str("no reason given") } else { write!(f, "{:?}", self.0) }
    }
}

// === impl VaultError ===

impl VaultError {
    /// Whether retrying soon may help: transport failures, 5xx, 429 and
    /// Vault's 412 (a standby that has not caught up).
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 412,
            VaultError::Malformed { .. } | VaultError::TooLarge { .. } | VaultError::Setup(_) => false,
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

/// An issued certificate. `Debug` shows key names and the serial only.
#[derive(Debug)]
pub struct PkiCert {
    /// `certificate`, `private_key`, `issuing_ca`, `ca_chain`, `serial_number`.
    pub data: SecretData,
    /// The serial number (not secret), for logs and revocation.
    pub serial: String,
    /// Unix seconds, as Vault says.
    pub not_before: Option<i64>,
    /// Unix seconds, as Vault says.
    pub expiration: i64,
    /// Only when the role sets `generate_lease` (never renewable).
    pub lease: Option<LeaseId>,
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

/// What vaultlet may ask of Vault, each described once: the metric label,
/// the words errors use, the capability a 403 hint names, and whether a
/// lost answer allows sending it again. The path a policy must grant is
/// built by [`Op`]'s constructor for that kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Login,
    WrapLookup,
    Unwrap,
    RenewSelf,
    LookupSelf,
    RevokeSelf,
    PkiIssue,
    PkiRevoke,
    DbCreds,
    DbRole,
    LeaseRenew,
    LeaseLookup,
    LeaseRevoke,
    KvRead,
}

/// A login needs no policy: a 403 there means bad credentials.
const CREDENTIALS: &str = "none (check role_id and secret_id)";

/// One row of the operation table.
struct Spec {
    /// Metric label (`vaultlet_vault_requests_total{operation=…}`); users
    /// may scrape these, so they never change.
    name: &'static str,
    /// The HTTP method, for trace lines.
    method: &'static str,
    /// The start of every error message about it.
    what: &'static str,
    /// What the token's policy needs on the path.
    capability: &'static str,
    /// Safe to send again after an answer was lost. Issuing calls are not:
    /// a lost answer may still have created a token or a credential.
    idempotent: bool,
    /// Takes from the process-wide issue bucket first.
    issues: bool,
}

impl Kind {
    /// Every kind, for the table's own tests.
    #[cfg(test)]
    const ALL: [Kind; 14] = [
        Kind::Login,
        Kind::WrapLookup,
        Kind::Unwrap,
        Kind::RenewSelf,
        Kind::LookupSelf,
        Kind::RevokeSelf,
        Kind::PkiIssue,
        Kind::PkiRevoke,
        Kind::DbCreds,
        Kind::DbRole,
        Kind::LeaseRenew,
        Kind::LeaseLookup,
        Kind::LeaseRevoke,
        Kind::KvRead,
    ];

    const fn spec(self) -> Spec {
        const fn s(
            name: &'static str,
            method: &'static str,
            what: &'static str,
            capability: &'static str,
            idempotent: bool,
            issues: bool,
        ) -> Spec {
            Spec { name, method, what, capability, idempotent, issues }
        }
        // Label, method, error words, capability, idempotent, issues.
        match self {
            Kind::Login => s("login", "POST", "AppRole login", CREDENTIALS, false, true),
            Kind::WrapLookup => s("wrap_lookup", "POST", "wrapping token lookup", "update", true, false),
            Kind::Unwrap => s("unwrap", "POST", "secret_id unwrap", "update", false, false),
            Kind::RenewSelf => s("renew_self", "POST", "token renewal", "update", true, false),
            Kind::LookupSelf => s("lookup_self", "GET", "token lookup", "read", true, false),
            Kind::RevokeSelf => s("revoke_self", "POST", "token revocation", "update", true, false),
            Kind::PkiIssue => s("pki_issue", "POST", "certificate", "update", false, true),
            Kind::PkiRevoke => s("pki_revoke", "POST", "certificate revocation", "update", true, false),
            Kind::DbCreds => s("db_creds", "GET", "database credentials", "read", false, true),
            Kind::DbRole => s("db_role", "GET", "database role", "read", true, false),
            Kind::LeaseRenew => s("lease_renew", "PUT", "lease renewal of", "update", true, false),
            Kind::LeaseLookup => s("lease_lookup", "PUT", "lease lookup of", "update", true, false),
            Kind::LeaseRevoke => s("lease_revoke", "PUT", "lease revocation of", "update", true, false),
            Kind::KvRead => s("kv_read", "GET", "kv secret", "read", true, false),
        }
    }
}

/// One operation on one path: its [`Kind`], the path a policy must grant,
/// and the words for errors about it.
struct Op {
    kind: Kind,
    /// What errors call it: the kind's words, then what it acts on.
    what: String,
    /// The policy path (a lease's path without its unique id).
    path: String,
}

impl Op {
    /// `subject`, when given, follows the kind's words in error messages.
    fn new(kind: Kind, path: String, subject: Option<&str>) -> Op {
        let spec = kind.spec();
        let what = match subject {
            Some(s) => format!("{} {s}", spec.what),
            None => spec.what.to_owned(),
        };
        Op { kind, what, path }
    }

    fn login(mount: &str) -> Op {
        Op::new(Kind::Login, format!("auth/{mount}/login"), None)
    }

    fn wrap_lookup() -> Op {
        Op::new(Kind::WrapLookup, "sys/wrapping/lookup".into(), None)
    }

    fn unwrap() -> Op {
        Op::new(Kind::Unwrap, "sys/wrapping/unwrap".into(), None)
    }

    fn renew_self() -> Op {
        Op::new(Kind::RenewSelf, "auth/token/renew-self".into(), None)
    }

    fn lookup_self() -> Op {
        Op::new(Kind::LookupSelf, "auth/token/lookup-self".into(), None)
    }

    fn revoke_self() -> Op {
        Op::new(Kind::RevokeSelf, "auth/token/revoke-self".into(), None)
    }

    fn pki_issue(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/issue/{role}");
        Op::new(Kind::PkiIssue, path.clone(), Some(&path))
    }

    fn pki_revoke(mount: &str) -> Op {
        let path = format!("{mount}/revoke");
        Op::new(Kind::PkiRevoke, path.clone(), Some(&path))
    }

    fn db_creds(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/creds/{role}");
        Op::new(Kind::DbCreds, path.clone(), Some(&path))
    }

    fn db_role(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/roles/{role}");
        Op::new(Kind::DbRole, path.clone(), Some(&path))
    }

    /// Lease paths leave out the lease's unique part: it is not secret, but
    /// a policy grants the prefix, and logs need no more.
    fn lease_renew(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseRenew, format!("sys/leases/renew/{}", lease.path()), Some(lease.path()))
    }

    /// The lookup has no path form (see [`LookupLeaseRequest`]).
    fn lease_lookup(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseLookup, "sys/leases/lookup".into(), Some(lease.path()))
    }

    fn lease_revoke(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseRevoke, format!("sys/leases/revoke/{}", lease.path()), Some(lease.path()))
    }

    fn kv_read(mount: &str, path: &str, version: u8) -> Op {
        let api_path = if version == 2 { format!("{mount}/data/{path}") } else { format!("{mount}/{path}") };
        Op::new(Kind::KvRead, api_path, Some(&format!("{mount}/{path}")))
    }

    /// The metric label.
    fn name(&self) -> &'static str {
        self.kind.spec().name
    }

    fn capability(&self) -> &'static str {
        self.kind.spec().capability
    }

    fn idempotent(&self) -> bool {
        self.kind.spec().idempotent
    }
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

/// The lease id goes in the path, so a policy can scope renewal to the
/// configured prefixes (`sys/leases/renew/database/creds/api/*`); with the id
/// in the body, `update` on `sys/leases/renew` covers every lease in Vault.
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/renew/{self.lease_id}", method = "PUT", response = "serde_json::Value")]
struct RenewLeaseRequest {
    #[endpoint(skip)]
    lease_id: String,
    increment: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/revoke/{self.lease_id}", method = "PUT", response = "serde_json::Value")]
struct RevokeLeaseRequest {
    #[endpoint(skip)]
    lease_id: String,
}

/// `sys/leases/lookup` has no path form (`sys/leases/lookup/<prefix>` is the
/// root-only LIST), so the id travels in the body; the shipped policy scopes
/// it with `allowed_parameters` instead (see policies/README.md).
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/lookup", method = "PUT", response = "serde_json::Value")]
struct LookupLeaseRequest {
    lease_id: String,
}

/// The unscoped forms, lease id in the body: only for policies written
/// before vaultlet used the path forms (see [`Vault::renew_lease`]).
#[derive(Endpoint)]
#[endpoint(path = "sys/leases/renew", method = "PUT", response = "serde_json::Value")]
struct RenewLeaseBodyRequest {
    lease_id: String,
    increment: u64,
}

#[derive(Endpoint)]
#[endpoint(path = "sys/leases/revoke", method = "PUT", response = "serde_json::Value")]
struct RevokeLeaseBodyRequest {
    lease_id: String,
}

static UNSCOPED_WARNED: AtomicBool = AtomicBool::new(false);

/// After a 403 on a path form: the old body form, for policies that grant
/// only plain `sys/leases/renew|revoke`. Warns once when that works.
async fn unscoped_fallback<F, Fut>(first: VaultError, f: F) -> Result<Zeroizing<Vec<u8>>, VaultError>
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
    #[serde(default)]
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl Drop for AuthData {
    fn drop(&mut self) {
        self.client_token.zeroize();
    }
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

/// `POST <mount>/issue/<role>`. Lists go comma-joined, as Vault's API
/// takes them; `ttl` empty means the role's default.
#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/issue/{self.role}", method = "POST", response = "serde_json::Value")]
struct PkiIssueRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
    common_name: String,
    alt_names: String,
    ip_sans: String,
    ttl: String,
}

/// `POST <mount>/revoke` by serial number.
#[derive(Endpoint)]
#[endpoint(path = "{self.mount}/revoke", method = "POST", response = "serde_json::Value")]
struct PkiRevokeRequest {
    #[endpoint(skip)]
    mount: String,
    serial_number: String,
}

#[derive(Deserialize)]
struct PkiIssueData {
    certificate: String,
    private_key: String,
    #[serde(default)]
    issuing_ca: String,
    #[serde(default)]
    ca_chain: Vec<String>,
    serial_number: String,
    expiration: i64,
    #[serde(default)]
    not_before: Option<i64>,
}

impl Drop for PkiIssueData {
    fn drop(&mut self) {
        self.private_key.zeroize();
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

#[derive(Deserialize)]
struct WrapLookupData {
    #[serde(default)]
    creation_path: String,
}

#[derive(Deserialize)]
struct Kv2Data {
    data: Option<BTreeMap<String, serde_json::Value>>,
}

/// The per-request middleware (token, namespace, `/v1` prefix), with its
/// copy of the token wiped on drop.
struct Conn {
    middle: EndpointMiddleware,
    transport: Transport,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.middle.token.zeroize();
    }
}

// === Transport: redirects and body size under our control ===

/// The HTTP side of one request: our rustify client (see the module doc).
struct Transport {
    http: reqwest::Client,
    base: String,
    /// Every configured address: the only places a redirect may lead.
    allowed: Arc<[reqwest::Url]>,
    limit: usize,
}

/// A redirect vaultlet will not follow.
#[derive(Debug, thiserror::Error)]
#[error("redirected from {from} to {to}, not followed: {why}")]
pub struct RedirectRefused {
    from: String,
    to: String,
    why: &'static str,
}

/// A body over the cap.
#[derive(Debug, thiserror::Error)]
#[error("response larger than {0} bytes")]
struct BodyTooLarge(usize);

/// `scheme://host:port` of a URL, for logs (no path, no query).
fn origin(u: &reqwest::Url) -> String {
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
}

/// Where a redirect from `from` with `Location: location` may go: only to a
/// configured address, never from https to http.
pub fn redirect_target(
    from: &reqwest::Url,
    location: &str,
    allowed: &[reqwest::Url],
) -> Result<reqwest::Url, RedirectRefused> {
    let refuse = |to: String, why| RedirectRefused { from: origin(from), to, why };
    let to = from.join(location).map_err(|_| refuse("an unreadable location".into(), "not a URL"))?;
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(refuse(origin(&to), "it would leave https"));
    }
    let same = |a: &reqwest::Url| {
        a.scheme() == to.scheme()
            && a.host_str() == to.host_str()
            && a.port_or_known_default() == to.port_or_known_default()
    };
    if !allowed.iter().any(same) {
        return Err(refuse(
            origin(&to),
            "not an address in vault.address (add it there, or let standbys forward requests)",
        ));
    }
    Ok(to)
}

/// Appends to a buffer that is wiped when it grows (a plain `Vec` would
/// leave the old allocation's bytes behind) and never passes `limit`.
fn push_capped(buf: &mut Zeroizing<Vec<u8>>, chunk: &[u8], limit: usize) -> Result<(), BodyTooLarge> {
    let need = buf.len().checked_add(chunk.len()).filter(|n| *n <= limit).ok_or(BodyTooLarge(limit))?;
    if need > buf.capacity() {
        let cap = need.max(buf.capacity().saturating_mul(2)).min(limit).max(need);
        let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

/// Reads a body, refusing more than `limit` bytes (announced or streamed).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Zeroizing<Vec<u8>>, RestError> {
    let too_large = || RestError::ResponseError { source: anyhow::Error::new(BodyTooLarge(limit)) };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(resp.content_length().map_or(4096, |n| n as usize)));
    while let Some(chunk) = resp.chunk().await.map_err(|e| RestError::ResponseError { source: e.into() })? {
        push_capped(&mut buf, &chunk, limit).map_err(|_| too_large())?;
    }
    Ok(buf)
}

impl Transport {
    async fn send_inner(&self, req: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, RestError> {
        let (parts, body) = req.into_parts();
        let body = Zeroizing::new(body);
        let method = parts.method.clone();
        let mut url: reqwest::Url =
            parts.uri.to_string().parse().map_err(|e| RestError::GenericError { source: anyhow::Error::new(e) })?;
        let mut hops = 0;
        loop {
            let mut req = reqwest::Request::new(method.clone(), url.clone());
            *req.headers_mut() = parts.headers.clone();
            *req.body_mut() = Some(body.to_vec().into());
            let resp = self.http.execute(req).await.map_err(|e| RestError::RequestError {
                source: e.into(),
                url: origin(&url),
                method: method.to_string(),
            })?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
                let next = match location {
                    // Only 307/308 keep the method and body, as Vault's standbys send.
                    Some(l) if matches!(status.as_u16(), 307 | 308) => redirect_target(&url, l, &self.allowed),
                    Some(l) => Err(RedirectRefused {
                        from: origin(&url),
                        to: url.join(l).map(|u| origin(&u)).unwrap_or_else(|_| "an unreadable location".into()),
                        why: "only 307/308 redirects are followed",
                    }),
                    None => Err(RedirectRefused { from: origin(&url), to: "nowhere".into(), why: "no Location" }),
                };
                let next = next.and_then(|n| {
                    if hops < MAX_REDIRECTS {
                        Ok(n)
                    } else {
                        Err(RedirectRefused { from: origin(&url), to: origin(&n), why: "too many redirects" })
                    }
                });
                match next {
                    Ok(n) => {
                        tracing::debug!(from = %origin(&url), to = %origin(&n), "following vault redirect");
                        hops += 1;
                        url = n;
                        continue;
                    }
                    Err(e) => {
                        return Err(RestError::RequestError {
                            source: anyhow::Error::new(e),
                            url: origin(&url),
                            method: method.to_string(),
                        });
                    }
                }
            }
            let mut out = http::Response::builder().status(status.as_u16());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let mut body = read_capped(resp, self.limit).await?;
            return out
                .body(std::mem::take(&mut *body))
                .map_err(|e| RestError::ResponseError { source: anyhow::Error::new(e) });
        }
    }
}

impl rustify::client::Client for Transport {
    fn send<'a, 'b>(
        &'a self,
        req: http::Request<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, RestError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send_inner(req))
    }

    fn base(&self) -> &str {
        &self.base
    }
}

// === issue rate ===

/// A token bucket shared by every issuing call.
struct IssueBucket {
    state: Mutex<(f64, tokio::time::Instant)>,
    burst: f64,
    rate: f64,
}

impl IssueBucket {
    fn new(burst: f64, rate: f64) -> IssueBucket {
        IssueBucket { state: Mutex::new((burst, tokio::time::Instant::now())), burst, rate }
    }

    async fn take(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rate;
                s.0 = (s.0 + refill).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

// === TTLs from the server ===

static CLAMP_LOGGED: [AtomicBool; 4] =
    [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)];

/// A server-supplied TTL in seconds, clamped to `MIN_TTL..=MAX_TTL`; the
/// first clamp of each kind is logged.
fn server_ttl(kind: Kind, secs: u64) -> Duration {
    let d = Duration::from_secs(secs);
    let c = d.clamp(MIN_TTL, MAX_TTL);
    if c != d {
        let slot = match kind {
            Kind::Login => 0,
            Kind::RenewSelf => 1,
            Kind::DbCreds => 2,
            _ => 3,
        };
        if !CLAMP_LOGGED[slot].swap(true, Ordering::Relaxed) {
            tracing::warn!(operation = kind.spec().name, ttl_seconds = secs, clamped_to = ?c, "vault gave a TTL outside 1 s ..= 1 year; clamped");
        }
    }
    c
}

/// A lease id as Vault's path form takes it: path characters only, no `..`
/// segment, so a hostile id cannot steer renew/revoke to another endpoint.
fn valid_lease_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('/')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !id.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

// === TLS roots ===

/// A PEM file (CA bundle, client certificate or key), read with the
/// bounds of [`crate::write::read_input_file`]; wiped when dropped.
fn read_pem(path: &Path) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    crate::write::read_input_file(path, crate::write::MAX_INPUT_FILE)
        .map_err(|e| VaultError::Setup(format!("reading {}: {e}", path.display())))
}

/// The roots to trust: the `ca_cert` bundle, or the system bundle from
/// [`SYSTEM_CA_FILES`] when some address is https, or none for plain http.
fn load_roots(cfg: &VaultConfig, system: &[&str]) -> Result<Vec<reqwest::Certificate>, VaultError> {
    let bundle = |path: &Path| -> Result<Vec<reqwest::Certificate>, VaultError> {
        let pem = read_pem(path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| VaultError::Setup(format!("{} holds no valid PEM certificate", path.display())))?;
        if certs.is_empty() {
            return Err(VaultError::Setup(format!("{} holds no certificate", path.display())));
        }
        Ok(certs)
    };
    if let Some(path) = &cfg.ca_cert {
        return bundle(path);
    }
    if !cfg.addresses.iter().any(|u| u.scheme() == "https") {
        return Ok(Vec::new());
    }
    for p in system {
        let p = Path::new(p);
        if p.is_file() {
            return bundle(p);
        }
    }
    Err(VaultError::Setup(format!(
        "no system CA certificates for https to vault: looked at {}; install the ca-certificates package \
         or set vault.ca_cert",
        system.join(", ")
    )))
}

/// The Vault connection: one HTTP client, one or more server addresses.
pub struct Vault {
    http: reqwest::Client,
    addrs: Arc<[reqwest::Url]>,
    current: AtomicUsize,
    namespace: Option<String>,
    limit: usize,
    /// Requests in flight at once. Thousands of secrets starting together
    /// queue here instead of opening thousands of connections.
    in_flight: tokio::sync::Semaphore,
    issues: IssueBucket,
    /// Where request counts and latencies go.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Most requests vaultlet sends to Vault at the same time.
const MAX_IN_FLIGHT: usize = 32;

// === impl Vault ===

impl Vault {
    /// Builds the HTTP client. Reads the CA file; no network I/O.
    pub fn new(cfg: &VaultConfig) -> Result<Vault, VaultError> {
        Self::with_system_roots(cfg, SYSTEM_CA_FILES)
    }

    /// [`Vault::new`] with the system bundle looked for at `system`.
    pub fn with_system_roots(cfg: &VaultConfig, system: &[&str]) -> Result<Vault, VaultError> {
        let mut b = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .no_proxy()
            // Transport follows the redirects it may; reqwest follows none.
            .redirect(reqwest::redirect::Policy::none())
            // Few idle connections: a sidecar's requests come in small bursts.
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("vaultlet/", env!("CARGO_PKG_VERSION")));
        // Always exclusive: with only reqwest's defaults, SSL_CERT_FILE and
        // SSL_CERT_DIR in the environment would replace the system roots.
        b = b.tls_certs_only(load_roots(cfg, system)?);
        if let Some((cert, key)) = &cfg.client_cert {
            let k = read_pem(key)?;
            let mut pem = read_pem(cert)?.to_vec();
            pem.push(b'\n');
            pem.extend_from_slice(&k);
            drop(k);
            let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                VaultError::Setup(format!("{} / {} are not a PEM certificate and key", cert.display(), key.display()))
            });
            pem.zeroize();
            b = b.identity(id?);
        }
        let http = b.build().map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Vault {
            http,
            addrs: cfg.addresses.clone().into(),
            current: AtomicUsize::new(0),
            namespace: cfg.namespace.clone(),
            limit: cfg.max_response_size,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            issues: IssueBucket::new(ISSUE_BURST, ISSUE_RATE),
            metrics: crate::metrics::Metrics::new(),
        })
    }

    /// Counts this client's requests into `metrics` (the daemon's set)
    /// instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Vault {
        self.metrics = metrics;
        self
    }

    fn conn(&self, addr: &reqwest::Url, token: &str) -> Conn {
        let base = addr.as_str().trim_end_matches('/');
        Conn {
            middle: EndpointMiddleware {
                token: token.to_owned(),
                version: "v1".into(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            transport: Transport {
                http: self.http.clone(),
                base: base.to_owned(),
                allowed: self.addrs.clone(),
                limit: self.limit,
            },
        }
    }

    /// Runs one request, moving to the next address when this one cannot
    /// serve it. `f` gets its own client per attempt.
    async fn call<T, F, Fut>(&self, op: &Op, token: Option<&SecretString>, f: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        if op.kind.spec().issues {
            self.issues.take().await;
        }
        let token = token.map(|t| t.expose_secret()).unwrap_or("");
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addrs.len() {
            let idx = (start + i) % self.addrs.len();
            let addr = &self.addrs[idx];
            let conn = Arc::new(self.conn(addr, token));
            let started = std::time::Instant::now();
            tracing::trace!(operation = op.name(), method = op.kind.spec().method, path = %op.path, address = %addr, "vault request");
            // Boxed: the HTTP stack's futures are large, and keeping them out
            // of every caller's state keeps idle secret tasks small.
            let res = Box::pin(f(conn)).await;
            tracing::trace!(operation = op.name(), ok = res.is_ok(), took = ?started.elapsed(), "vault response");
            self.metrics.vault_request(op.name(), started.elapsed(), res.is_ok());
            match res {
                Ok(v) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                        tracing::info!(address = %addr, "switched to vault server");
                    }
                    return Ok(v);
                }
                Err(e) => {
                    let unsent = surely_unsent(&e);
                    let e = classify(op, addr, e);
                    // Try another server only when this one could not serve
                    // the request at all.
                    let next = matches!(e, VaultError::Unreachable { .. })
                        || matches!(e.status(), Some(500..=599) | Some(429) | Some(412));
                    if !next {
                        return Err(e);
                    }
                    if !op.idempotent() && !unsent && matches!(e, VaultError::Unreachable { .. }) {
                        // It may have been issued: do not issue again now,
                        // but let the caller's next attempt go elsewhere.
                        if self.addrs.len() > 1 {
                            self.current.store((idx + 1) % self.addrs.len(), Ordering::Relaxed);
                        }
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
        let op = Op::login(mount);
        let body = self
            .call(&op, None, |c| async move {
                let req = vaultrs::api::auth::approle::requests::LoginWithApproleRequest {
                    mount: mount.to_owned(),
                    role_id: role_id.expose_secret().to_owned(),
                    secret_id: secret_id.expose_secret().to_owned(),
                };
                raw(&c, req).await
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

/// A request to Vault in flight, boxed so [`Backend`] can be used as
/// `dyn Backend`.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, VaultError>> + Send + 'a>>;

/// What the auth and secret tasks ask of Vault, and nothing else.
///
/// The tasks hold an `Arc<dyn Backend>`: [`Vault`] in the daemon, a scripted
/// fake in the unit tests, so the rules about re-login, capped renewals,
/// outages and drains can be driven on tokio's paused clock. Every answer is
/// one of our own types and every failure a [`VaultError`], whose class
/// ([`VaultError::is_transient`], [`VaultError::is_forbidden`],
/// [`VaultError::is_lease_gone`]) decides what the caller does next.
pub trait Backend: Send + Sync {
    /// `POST auth/<mount>/login` with a role_id and secret_id.
    fn login_approle<'a>(
        &'a self,
        mount: &'a str,
        role_id: &'a SecretString,
        secret_id: &'a SecretString,
    ) -> Call<'a, Auth>;
    /// Unwraps a response-wrapped secret_id (after checking where it came from).
    fn unwrap_secret_id<'a>(&'a self, wrapping_token: &'a SecretString) -> Call<'a, SecretString>;
    /// `POST auth/token/renew-self`.
    fn renew_self<'a>(&'a self, token: &'a SecretString, increment: Duration) -> Call<'a, Auth>;
    /// `GET auth/token/lookup-self`: is the token still valid?
    fn lookup_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()>;
    /// `POST auth/token/revoke-self`.
    fn revoke_self<'a>(&'a self, token: &'a SecretString) -> Call<'a, ()>;
    /// `GET <mount>/creds/<role>`, keeping the lease.
    fn db_creds<'a>(&'a self, token: &'a SecretString, mount: &'a str, role: &'a str) -> Call<'a, DbCreds>;
    /// The database role's `max_ttl`, when the policy lets us read it.
    fn db_role_max_ttl<'a>(
        &'a self,
        token: &'a SecretString,
        mount: &'a str,
        role: &'a str,
    ) -> Call<'a, Option<Duration>>;
    /// `PUT sys/leases/renew`.
    fn renew_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId, increment: Duration)
    -> Call<'a, Renewed>;
    /// `PUT sys/leases/lookup`: whether Vault still knows the lease.
    fn lookup_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()>;
    /// `PUT sys/leases/revoke`.
    fn revoke_lease<'a>(&'a self, token: &'a SecretString, lease: &'a LeaseId) -> Call<'a, ()>;
    /// Reads a KV secret (v1 or v2).
    fn kv<'a>(&'a self, token: &'a SecretString, mount: &'a str, path: &'a str, version: u8) -> Call<'a, SecretData>;
    /// `POST <mount>/issue/<role>`.
    fn pki_issue<'a>(&'a self, token: &'a SecretString, req: &'a PkiRequest) -> Call<'a, PkiCert>;
    /// `POST <mount>/revoke` by serial number.
    fn pki_revoke<'a>(&'a self, token: &'a SecretString, mount: &'a str, serial: &'a str) -> Call<'a, ()>;
}

// === impl Backend for Vault ===

impl Backend for Vault {
    fn login_approle<'a>(
        &'a self,
        mount: &'a str,
        role_id: &'a SecretString,
        secret_id: &'a SecretString,
    ) -> Call<'a, Auth> {
        Box::pin(Vault::login_approle(self, mount, role_id, secret_id))
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

/// Executes an endpoint through our transport, returning the body (wiped on
/// drop). Error statuses become `APIError` with Vault's `errors` strings.
async fn raw<E: Endpoint>(c: &Conn, e: E) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let res = e.with_middleware(&c.middle).exec(&c.transport).await;
    match res {
        Ok(r) => Ok(Zeroizing::new(r.response.into_body())),
        Err(RestError::ServerResponseError { code, content }) => {
            let content = content.map(Zeroizing::new);
            let errors = content
                .as_deref()
                .and_then(|c| serde_json::from_str::<ErrorBody>(c).ok())
                .map(|b| b.errors)
                .unwrap_or_default();
            Err(ClientError::APIError { code, errors })
        }
        Err(e) => Err(ClientError::RestClientError { source: e }),
    }
}

/// Whether a failed request surely never reached a server: no connection,
/// or a redirect we did not follow (the server that answered did nothing).
fn surely_unsent(e: &ClientError) -> bool {
    let ClientError::RestClientError { source: RestError::RequestError { source, .. } } = e else { return false };
    if source.downcast_ref::<RedirectRefused>().is_some() {
        return true;
    }
    source.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_connect())
}

fn parse<T: serde::de::DeserializeOwned>(op: &Op, body: &[u8]) -> Result<T, VaultError> {
    serde_json::from_slice(body).map_err(|_| malformed(op, "not the expected JSON"))
}

fn malformed(op: &Op, what: &'static str) -> VaultError {
    VaultError::Malformed { op: op.what.clone(), what }
}

fn auth_from(op: &Op, body: &[u8]) -> Result<Auth, VaultError> {
    let env: Envelope<serde::de::IgnoredAny> = parse(op, body)?;
    let Some(mut info) = env.auth else { return Err(malformed(op, "no auth")) };
    let token = SecretString::from(std::mem::take(&mut info.client_token));
    // The token goes into a header on every request; the HTTP stack refuses
    // (or vaultrs panics on) anything but visible ASCII.
    let t = token.expose_secret();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(op, "a client token that is not visible ASCII"));
    }
    Ok(Auth { token, ttl: server_ttl(op.kind, info.lease_duration), renewable: info.renewable })
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
        let hint = match status {
            403 if op.capability() != CREDENTIALS => {
                format!(" — the token's policy needs `{}` on `{}` (or the token has expired)", op.capability(), op.path)
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
        R::ResponseError { source } if source.downcast_ref::<BodyTooLarge>().is_some() => {
            let limit = source.downcast_ref::<BodyTooLarge>().map_or(0, |b| b.0);
            VaultError::TooLarge { op: op.what.clone(), limit }
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
    // It may hold a server's words (the names in its certificate, where it
    // redirected to): quoted, like everything a server says.
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let mut s = cur.to_string();
    truncate(&mut s, 200);
    Said(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Op {
        Op::db_creds("database", "api")
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

    /// A server's `errors` text imitating an audit line, with quotes,
    /// backslashes and invisible line breaks: the error shows it as one
    /// quoted, escaped string that ends the message, never as bare words.
    #[test]
    fn a_servers_error_text_is_quoted_and_escaped() {
        let forged = "x\" vaultlet::audit: socket read uid=4242 gid=0 pid=1 exe=node secret=db version=- \
                      outcome=denied\u{2028}\\\u{202e}";
        let e = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 500, errors: vec![forged.into(), "second\nline".into()] },
        );
        let msg = e.to_string();
        let (_, said) = msg.split_once("(500): ").expect(&msg);
        assert!(said.starts_with('"') && said.ends_with('"'), "{msg}");
        assert!(!msg.ends_with("outcome=denied"), "{msg}");
        assert!(!msg.contains(['\u{2028}', '\u{202e}', '\n']), "{msg:?}");
        // Inside the quotes, every quote is escaped.
        let inner = &said[1..said.len() - 1];
        let mut escaped = false;
        for c in inner.chars() {
            assert!(escaped || c != '"', "an unescaped quote ends the server's text early: {msg}");
            escaped = !escaped && c == '\\';
        }
        // What callers match on still matches.
        assert!(msg.contains("vaultlet::audit"), "the text is kept, quoted: {msg}");
        let gone = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 400, errors: vec!["lease not found".into()] },
        );
        assert!(gone.is_lease_gone(), "{gone}");
        assert!(gone.to_string().ends_with("(400): \"lease not found\""), "{gone}");
        let silent = classify(
            &op(),
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code: 502, errors: vec![] },
        );
        assert!(silent.to_string().ends_with("(502): no reason given"), "{silent}");
    }

    #[test]
    fn a_transport_cause_is_quoted() {
        let e = std::io::Error::other("certificate not valid for name \"vault\"; outcome=denied");
        let r = transport_reason(&e);
        assert_eq!(r, r#""certificate not valid for name \"vault\"; outcome=denied""#);
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

    const TEST_CA: &str = include_str!("../tests/fixtures/hostile-ca.pem");

    fn url(s: &str) -> reqwest::Url {
        s.parse().unwrap()
    }

    #[test]
    fn redirect_is_followed_only_to_a_configured_address_and_never_down_to_http() {
        let allowed = [url("https://a.example:8200"), url("https://b.example:8200"), url("http://127.0.0.1:8200")];
        let from = url("https://a.example:8200/v1/auth/approle/login");
        let ok = redirect_target(&from, "https://b.example:8200/v1/auth/approle/login", &allowed).unwrap();
        assert_eq!(ok.as_str(), "https://b.example:8200/v1/auth/approle/login");
        // Relative locations stay on the same origin.
        assert!(redirect_target(&from, "/v1/x", &allowed).is_ok());
        for bad in [
            "https://evil.example:8200/v1/auth/approle/login",
            "https://b.example:8201/v1/x",
            "http://a.example:8200/v1/x",
            // Configured, but plain http reached from https: a downgrade.
            "http://127.0.0.1:8200/v1/x",
            "//evil.example/v1/x",
        ] {
            let e = redirect_target(&from, bad, &allowed).unwrap_err();
            assert!(e.to_string().contains("not followed"), "{bad}: {e}");
        }
        let e = redirect_target(&from, "http://127.0.0.1:8200/v1/x", &allowed).unwrap_err();
        assert!(e.to_string().contains("leave https"), "{e}");
    }

    #[test]
    fn body_cap_refuses_one_byte_more_and_keeps_what_fits() {
        let mut buf = Zeroizing::new(Vec::new());
        for _ in 0..4 {
            push_capped(&mut buf, &[7u8; 256], 1024).unwrap();
        }
        assert_eq!(buf.len(), 1024);
        assert!(buf.capacity() <= 1024);
        assert!(push_capped(&mut buf, &[1], 1024).is_err());
        assert_eq!(buf.len(), 1024);
    }

    #[test]
    fn absurd_ttls_are_clamped() {
        assert_eq!(server_ttl(Kind::DbCreds, u64::MAX), MAX_TTL);
        assert_eq!(server_ttl(Kind::DbCreds, 0), MIN_TTL);
        assert_eq!(server_ttl(Kind::Login, 3600), Duration::from_secs(3600));
    }

    #[test]
    fn lease_ids_that_would_steer_the_path_are_refused() {
        assert!(valid_lease_id("database/creds/api/AbC.12-x_y"));
        for bad in
            ["", "/database/creds/api/x", "database/../../auth/token/revoke-self", "a//b", "a/b?c", "a/b#c", "a b"]
        {
            assert!(!valid_lease_id(bad), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn issue_bucket_caps_the_rate_after_the_burst() {
        let b = IssueBucket::new(5.0, 10.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..25 {
            b.take().await;
        }
        // 5 at once, then 20 at 10 per second.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100), "{took:?}");
    }

    fn cfg(addr: &str, ca: Option<&str>) -> VaultConfig {
        VaultConfig {
            addresses: vec![url(addr)],
            ca_cert: ca.map(Into::into),
            namespace: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            client_cert: None,
            max_response_size: DEFAULT_MAX_RESPONSE,
        }
    }

    #[test]
    fn missing_system_ca_certificates_name_the_paths_and_the_fix() {
        let nowhere = ["/nonexistent/vaultlet-test/ca.crt", "/nonexistent/vaultlet-test/cert.pem"];
        let Err(e) = Vault::with_system_roots(&cfg("https://vault.example:8200", None), &nowhere) else {
            panic!("built a client with no roots")
        };
        let msg = e.to_string();
        assert!(msg.contains(nowhere[0]) && msg.contains(nowhere[1]), "{msg}");
        assert!(msg.contains("ca-certificates") && msg.contains("vault.ca_cert"), "{msg}");
        // Plain http to loopback needs no roots at all.
        assert!(Vault::with_system_roots(&cfg("http://127.0.0.1:8200", None), &nowhere).is_ok());
    }

    #[test]
    fn configured_ca_needs_no_system_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let nowhere = ["/nonexistent/vaultlet-test/ca.crt"];
        let c = cfg("https://vault.example:8200", Some(ca.to_str().unwrap()));
        assert!(Vault::with_system_roots(&c, &nowhere).is_ok());
    }

    #[test]
    fn operation_names_are_the_published_metric_labels() {
        // Users scrape these label values: renaming one breaks dashboards.
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.spec().name).collect();
        assert_eq!(
            names,
            [
                "login",
                "wrap_lookup",
                "unwrap",
                "renew_self",
                "lookup_self",
                "revoke_self",
                "pki_issue",
                "pki_revoke",
                "db_creds",
                "db_role",
                "lease_renew",
                "lease_lookup",
                "lease_revoke",
                "kv_read",
            ]
        );
    }

    #[test]
    fn issuing_operations_are_never_sent_twice() {
        for k in Kind::ALL {
            let s = k.spec();
            if s.issues {
                assert!(!s.idempotent, "{}", s.name);
            }
        }
        // Unwrapping is single-use although it issues nothing new.
        assert!(!Kind::Unwrap.spec().idempotent);
        assert_eq!(Kind::ALL.iter().filter(|k| k.spec().issues).count(), 3);
    }

    #[test]
    fn error_words_name_what_was_acted_on() {
        let lease = LeaseId::new("database/creds/api/AbC123".into());
        assert_eq!(Op::lease_renew(&lease).what, "lease renewal of database/creds/api");
        assert_eq!(Op::lease_renew(&lease).path, "sys/leases/renew/database/creds/api");
        assert_eq!(Op::lease_lookup(&lease).path, "sys/leases/lookup");
        assert_eq!(Op::kv_read("secret", "app", 2).path, "secret/data/app");
        assert_eq!(Op::kv_read("kv", "app", 1).path, "kv/app");
        assert_eq!(Op::kv_read("secret", "app", 2).what, "kv secret secret/app");
        assert_eq!(Op::pki_issue("pki", "web").what, "certificate pki/issue/web");
        assert_eq!(Op::login("approle").what, "AppRole login");
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
