//! The seam between the tasks and Vault: the [`Backend`] trait and the
//! answers it gives, all our own types.
//!
//! The tasks hold an `Arc<dyn Backend>`: the real client
//! ([`super::client::Vault`]) in the daemon, a scripted fake in the unit
//! tests. Nothing here names vaultrs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::error::VaultError;
use super::ops::LoginWords;
use crate::config::PkiRequest;
use crate::secret::{LeaseId, SecretData};

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

/// The body of `POST auth/<mount>/login` as an auth method builds it: named
/// fields of secret text, turned into one JSON object only when sent, in a
/// buffer wiped after use. No `Debug`: it holds credentials.
///
/// Its fields are private so a method may add what it needs without
/// changing the others: a method that logs in with the TLS client
/// certificate (`cert`) will hand the certificate over here, for the client
/// to present on this one request.
pub struct LoginRequest {
    words: LoginWords,
    fields: Vec<(&'static str, SecretString)>,
}

impl LoginRequest {
    /// An empty body for the method that `words` describe.
    pub fn new(words: LoginWords) -> LoginRequest {
        LoginRequest { words, fields: Vec::new() }
    }

    /// Adds the field `name` (`role_id`, `secret_id`, `jwt`…).
    pub fn field(mut self, name: &'static str, value: SecretString) -> LoginRequest {
        self.fields.push((name, value));
        self
    }

    /// How errors about this login speak of its method.
    pub fn words(&self) -> LoginWords {
        self.words
    }

    /// The JSON object, written once into a buffer of its exact size.
    pub(crate) fn body(&self) -> Zeroizing<Vec<u8>> {
        struct Fields<'a>(&'a [(&'static str, SecretString)]);
        impl serde::Serialize for Fields<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v.expose_secret())))
            }
        }
        crate::secret::written_once(|w| serde_json::to_writer(w, &Fields(&self.fields)))
            .expect("serializing strings to memory cannot fail")
    }
}

/// A request to Vault in flight, boxed so [`Backend`] can be used as
/// `dyn Backend`.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, VaultError>> + Send + 'a>>;

/// What the auth and secret tasks ask of Vault, and nothing else.
///
/// The tasks hold an `Arc<dyn Backend>`: [`Vault`](super::Vault) in the daemon, a scripted
/// fake in the unit tests, so the rules about re-login, capped renewals,
/// outages and drains can be driven on tokio's paused clock. Every answer is
/// one of our own types and every failure a [`VaultError`], whose class
/// ([`VaultError::is_transient`], [`VaultError::is_forbidden`],
/// [`VaultError::is_lease_gone`]) decides what the caller does next.
pub trait Backend: Send + Sync {
    /// `POST auth/<mount>/login` with the body an auth method built.
    fn login<'a>(&'a self, mount: &'a str, request: &'a LoginRequest) -> Call<'a, Auth>;
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
