//! Sealed state: what a restarted vaultlet needs to go on where it stopped.
//!
//! Without it every start logs in again and issues a new credential for
//! every secret, orphaning the leases of the previous process until they
//! expire, and a single-use (wrapped, or removed after use) secret_id cannot
//! log in a second time at all. With `[state]`, vaultlet keeps the token,
//! every held lease and every served value in one file, sealed with
//! XChaCha20-Poly1305 under a key the operator provides (`state.key_file`),
//! and on start serves what is still valid at once, then checks it with
//! Vault in the background.
//!
//! The file is `VLTSTATE` · format version · ciphertext length (u32, big
//! endian) · 24-byte random nonce · ciphertext and tag. The header is the
//! AEAD's associated data, so a flipped version byte or a changed length is
//! caught like a flipped ciphertext byte, and the length lets a file cut
//! short be told apart from a tampered one. The plaintext is JSON of the
//! private [`Sealed`] struct, built field by field from our secret types
//! (they have no `Serialize`, on purpose); it lives only in zeroized
//! buffers, and the file goes through [`crate::write::write_own_file`]
//! (atomic, mode 0600).
//!
//! What it refuses to do: crash, block, or print a secret, on a file it
//! cannot use. A wrong key or a tampered file, a truncated one, an unknown
//! format version, a file written for another server or role, and anything
//! at the path that vaultlet did not write (a symlink, a FIFO, a device,
//! another user's file, one others may write, one longer than
//! [`size_limit`]): each gives one warn line with the reason in words, a
//! counted `vaultlet_state_load_failures_total{reason}`, and a fresh start.
//! Both files are read through [`crate::write::read_own_file`] (no symlink
//! followed, nothing read before the opened file is checked, a bounded
//! read). The state's directory must belong to vaultlet's uid or root and
//! be writable by nobody else, sticky or not ([`crate::write::check_own_dir`]):
//! refused at config check (exit 64), and checked again on the opened
//! directory at every read and write. The key's directory is not checked
//! (vaultlet never writes there: systemd's credential directory, a mounted
//! secret); the key file itself must be a regular file, vaultlet's or
//! root's, mode 0600 or 0400, at most 66 bytes, or vaultlet exits 64
//! before any network I/O.
//!
//! What it does not protect against: root on the host (or whoever can read
//! the key file) can open the state, as they could read the process memory.
//! It keeps secrets off the disk in plaintext and out of backups; it is not
//! a vault.
//!
//! The decisions taken at start (keep the token? which leases resume, which
//! are revoked, which already ended?) are one pure function, [`decide`], so
//! they are tested on the paused clock without Vault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use crate::auth::AuthHandle;
use crate::config::{RevokeOld, SecretSource, SecretSpec};
use crate::ledger::Held;
use crate::secret::{Lease, LeaseId, SecretData, Token};
use crate::store::Store;

/// First bytes of every state file.
const MAGIC: &[u8; 8] = b"VLTSTATE";
/// The only format version this build reads and writes.
const VERSION: u8 = 1;
/// Magic, version, ciphertext length.
const HEADER: usize = 8 + 1 + 4;
const NONCE: usize = 24;
const TAG: usize = 16;

/// How long the writer waits after a change before writing, so a burst of
/// changes (a token renewal, then each lease renewing) costs one write.
pub const COALESCE: Duration = Duration::from_secs(1);

// === config ===

#[cfg(test)]
use crate::config::state::read_key;
pub use crate::config::state::{RawState, StateConfig, StateKey, size_limit};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === the sealed format ===

/// Why a state file was not used. The `reason` labels are a metric contract.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The AEAD refused it: another key, or a changed byte.
    #[error("wrong key, or the file was changed")]
    WrongKeyOrTampered,
    /// Shorter than its header says.
    #[error("the file is truncated")]
    Truncated,
    /// Written by another version of vaultlet, in a format this one does not read.
    #[error("unknown state format version")]
    UnknownVersion,
    /// Written for other Vault servers, another auth mount or another role.
    #[error("written for another vault address, auth mount or role_id")]
    OtherConfig,
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    /// Not a file vaultlet wrote: a symlink, a FIFO, a device, another
    /// user's file, one others may write, one longer than any state, or a
    /// directory others may change. Never read.
    #[error("{0}")]
    Unsafe(#[source] crate::write::ReadError),
}

impl LoadError {
    /// The `reason` label of `vaultlet_state_load_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::WrongKeyOrTampered => "wrong_key_or_tampered",
            LoadError::Truncated => "truncated",
            LoadError::UnknownVersion => "unknown_version",
            LoadError::OtherConfig => "other_config",
            LoadError::Unreadable(_) => "unreadable",
            LoadError::Unsafe(_) => "unsafe_file",
        }
    }
}

/// Who the state belongs to: a file written for other servers, another
/// auth method or mount, or another role is not ours to resume (its token
/// and leases would be someone else's).
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
pub struct Identity {
    addresses: Vec<String>,
    namespace: Option<String>,
    /// The auth method (`approle`). Files written before there was a choice
    /// lack it, and were AppRole's.
    #[serde(default = "Identity::approle")]
    method: String,
    auth_mount: String,
    /// SHA-256 of whom the method logs in as (AppRole: the role_id), inside
    /// the sealed file, never logged. Stored under AppRole's name, so files
    /// written before still match.
    #[serde(rename = "role_id_sha256")]
    login_sha256: String,
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

/// The plaintext of a state file. Built by hand from our types; dropped
/// with every secret string wiped.
#[derive(Serialize, Deserialize)]
struct Sealed {
    identity: Identity,
    written_ms: u64,
    token: Option<SealedToken>,
    secrets: Vec<SealedSecret>,
    #[serde(default)]
    draining: Vec<SealedDrain>,
}

#[derive(Serialize, Deserialize)]
struct SealedToken {
    secret: String,
    generation: u64,
    issued_ms: u64,
    expires_ms: u64,
    hard_end_ms: Option<u64>,
    ttl_s: u64,
    renewable: bool,
}

impl Drop for SealedToken {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct SealedSecret {
    name: String,
    /// [`fingerprint`] of the spec it was fetched for.
    spec: String,
    version: u64,
    values: Vec<(String, String)>,
    lease: Option<SealedLease>,
}

impl Drop for SealedSecret {
    fn drop(&mut self) {
        for (_, v) in &mut self.values {
            v.zeroize();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SealedLease {
    id: String,
    issued_ms: u64,
    expires_ms: u64,
    ttl_ms: u64,
    renewable: bool,
    cap_ms: Option<u64>,
    generation: u64,
    token_end_ms: Option<u64>,
    /// The issuing token's current end: Vault revokes the lease with it.
    token_expires_ms: Option<u64>,
    learned_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SealedDrain {
    secret: String,
    spec: String,
    lease: SealedLease,
    drain_end_ms: u64,
}

fn cipher(key: &StateKey) -> XChaCha20Poly1305 {
    let k: &[u8; 32] = &key.0;
    XChaCha20Poly1305::new(k.into())
}

fn header(len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Seals `plaintext` under `key` with a fresh random nonce.
fn seal_bytes(plaintext: &[u8], key: &StateKey) -> Vec<u8> {
    // One allocation of the final size: encrypting in place must not grow
    // (and so copy and free unwiped) a buffer holding plaintext.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG));
    buf.extend_from_slice(plaintext);
    let nonce: [u8; NONCE] = rand::random();
    let len = u32::try_from(plaintext.len() + TAG).unwrap_or(u32::MAX);
    let head = header(len);
    let mut aad = Vec::with_capacity(HEADER + NONCE);
    aad.extend_from_slice(&head);
    aad.extend_from_slice(&nonce);
    cipher(key)
        .encrypt_in_place(&XNonce::from(nonce), &aad, &mut *buf)
        .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
    let mut out = Vec::with_capacity(aad.len() + buf.len());
    out.extend_from_slice(&aad);
    out.extend_from_slice(&buf);
    out
}

/// Opens a sealed file; the plaintext comes back in a wiped-on-drop buffer.
fn open_bytes(file: &[u8], key: &StateKey) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    if file.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(file) { LoadError::Truncated } else { LoadError::WrongKeyOrTampered });
    }
    if &file[..8] != MAGIC {
        return Err(LoadError::WrongKeyOrTampered);
    }
    if file.len() < HEADER {
        return Err(LoadError::Truncated);
    }
    if file[8] != VERSION {
        return Err(LoadError::UnknownVersion);
    }
    let len = u32::from_be_bytes([file[9], file[10], file[11], file[12]]) as usize;
    let body = &file[HEADER..];
    if body.len() < NONCE + len.max(TAG) {
        return Err(LoadError::Truncated);
    }
    if body.len() > NONCE + len || len < TAG {
        return Err(LoadError::WrongKeyOrTampered);
    }
    let aad = &file[..HEADER + NONCE];
    let nonce = XNonce::try_from(&body[..NONCE]).map_err(|_| LoadError::Truncated)?;
    let mut buf = Zeroizing::new(body[NONCE..].to_vec());
    cipher(key).decrypt_in_place(&nonce, aad, &mut *buf).map_err(|_| LoadError::WrongKeyOrTampered)?;
    Ok(buf)
}

fn encode(s: &Sealed, key: &StateKey) -> Vec<u8> {
    let plain = crate::secret::written_once(|w| serde_json::to_writer(w, s))
        .expect("serializing plain structs to memory cannot fail");
    seal_bytes(&plain, key)
}

fn decode(file: &[u8], key: &StateKey, identity: &Identity) -> Result<Sealed, LoadError> {
    let plain = open_bytes(file, key)?;
    // Authentic but unreadable: written by a build with another layout.
    let sealed: Sealed = serde_json::from_slice(&plain).map_err(|_| LoadError::UnknownVersion)?;
    if sealed.identity != *identity {
        return Err(LoadError::OtherConfig);
    }
    Ok(sealed)
}

// === times ===

/// One reading of both clocks: instants are process-local, the file needs
/// wall-clock times that mean the same after a restart.
#[derive(Clone, Copy)]
pub struct Clock {
    /// The monotonic reading.
    pub now: Instant,
    /// The same moment, milliseconds since the UNIX epoch.
    pub wall_ms: u64,
}

impl Clock {
    /// Both clocks now.
    pub fn now() -> Clock {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Clock { now: Instant::now(), wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX) }
    }

    fn to_wall(self, t: Instant) -> u64 {
        if t >= self.now {
            let d = u64::try_from((t - self.now).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_add(d)
        } else {
            let d = u64::try_from((self.now - t).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_sub(d)
        }
    }

    /// `now + (ms - wall_now)`, saturating: a time before what the monotonic
    /// clock can express (an issue time before boot) becomes `now`.
    fn to_instant(self, ms: u64) -> Instant {
        if ms >= self.wall_ms {
            crate::lease::schedule::after(self.now, Duration::from_millis(ms - self.wall_ms))
        } else {
            self.now.checked_sub(Duration::from_millis(self.wall_ms - ms)).unwrap_or(self.now)
        }
    }
}

// === what was saved, in our types ===

/// A saved lease, in this process's clock.
#[derive(Clone, Debug)]
pub struct SavedLease {
    /// The lease as the task held it.
    pub held: Held,
    /// The issuing token's end when saved (the lease dies with it).
    pub token_expires: Option<Instant>,
    /// The lifetime learned from a capped renewal.
    pub learned: Option<Duration>,
}

/// A saved secret.
pub struct SavedSecret {
    /// Its name.
    pub name: String,
    /// Fingerprint of the spec it was fetched for.
    pub spec: String,
    /// Its version.
    pub version: u64,
    /// Its value.
    pub data: SecretData,
    /// Its lease (database secrets).
    pub lease: Option<SavedLease>,
}

/// A replaced lease that was still draining.
pub struct SavedDrain {
    /// The secret it belonged to.
    pub name: String,
    /// Fingerprint of that secret's spec.
    pub spec: String,
    /// The lease.
    pub lease: SavedLease,
    /// When it was due to be revoked.
    pub drain_end: Instant,
}

/// Everything a state file held.
#[derive(Default)]
pub struct Saved {
    /// The token.
    pub token: Option<Token>,
    /// The secrets.
    pub secrets: Vec<SavedSecret>,
    /// Replaced leases still draining.
    pub draining: Vec<SavedDrain>,
}

fn lease_from(l: &SealedLease, c: Clock) -> SavedLease {
    let ms = |v: u64| c.to_instant(v);
    SavedLease {
        held: Held {
            lease: Lease {
                id: LeaseId::new(l.id.clone()),
                issued_at: ms(l.issued_ms),
                expires_at: ms(l.expires_ms),
                ttl: Duration::from_millis(l.ttl_ms),
                renewable: l.renewable,
            },
            cap: l.cap_ms.map(ms),
            token_generation: l.generation,
            token_end: l.token_end_ms.map(ms),
        },
        token_expires: l.token_expires_ms.map(ms),
        learned: l.learned_ms.map(Duration::from_millis),
    }
}

fn saved_from(mut s: Sealed, c: Clock) -> Saved {
    let ms = |v: u64| c.to_instant(v);
    let token = s.token.as_mut().map(|t| Token {
        secret: SecretString::from(std::mem::take(&mut t.secret)),
        generation: t.generation,
        issued_at: ms(t.issued_ms),
        ttl: Duration::from_secs(t.ttl_s),
        expires_at: ms(t.expires_ms),
        hard_end: t.hard_end_ms.map(ms),
        renewable: t.renewable,
    });
    let secrets = s
        .secrets
        .iter_mut()
        .map(|x| SavedSecret {
            name: x.name.clone(),
            spec: x.spec.clone(),
            version: x.version,
            data: SecretData::new(
                x.values.iter_mut().map(|(k, v)| (k.clone(), SecretString::from(std::mem::take(v)))).collect(),
            ),
            lease: x.lease.as_ref().map(|l| lease_from(l, c)),
        })
        .collect();
    let draining = s
        .draining
        .iter()
        .map(|d| SavedDrain {
            name: d.secret.clone(),
            spec: d.spec.clone(),
            lease: lease_from(&d.lease, c),
            drain_end: ms(d.drain_end_ms),
        })
        .collect();
    Saved { token, secrets, draining }
}

/// A digest of where a secret comes from (never of a value): a saved lease
/// is resumed only for the very source it was issued from.
pub fn fingerprint(source: &SecretSource) -> String {
    let canonical = match source {
        SecretSource::Database { mount, role } => format!("database\0{mount}\0{role}"),
        SecretSource::Kv { mount, path, version } => format!("kv\0{mount}\0{path}\0{version}"),
        SecretSource::Pki(r) => format!("pki\0{}\0{}\0{}", r.mount, r.role, r.common_name),
    };
    hex(&sha2::Sha256::digest(canonical.as_bytes()))
}

// === resume decisions ===

/// A secret served from state at start.
pub struct Resumed {
    /// The version it had (kept, so watchers see no change).
    pub version: u64,
    /// The value.
    pub data: SecretData,
    /// Database secrets: the lease the task takes over, and the learned lifetime.
    pub lease: Option<(Held, Option<Duration>)>,
}

/// What a start does with a state file.
#[derive(Default)]
pub struct Plan {
    /// The token to go on with (no login while it lives).
    pub token: Option<Token>,
    /// Secrets served at once, by name.
    pub secrets: BTreeMap<String, Resumed>,
    /// Replaced leases to keep draining: secret name, lease, drain end.
    pub draining: Vec<(String, Held, Instant)>,
    /// Leases Vault still holds that nothing will use: revoke them.
    pub revoke: Vec<LeaseId>,
    /// Leases that ended (or died with their token) while vaultlet was down.
    pub ended: usize,
}

/// Decides, at `now`, what of `saved` is resumed for the secrets `specs`.
///
/// * The token is kept while it has not ended.
/// * A lease lives while neither it nor its issuing token has ended (Vault
///   revokes a token's leases with it; a lease of the saved token whose
///   token ended is gone too).
/// * A live lease is resumed only for a secret of the same name and the same
///   source; a live lease nothing will use is to be revoked.
/// * A KV value is served again for the same name and source.
/// * PKI secrets start fresh.
pub fn decide(saved: Saved, specs: &[SecretSpec], now: Instant) -> Plan {
    let mut plan = Plan::default();
    let token_alive = |t: &Token| t.expires_at > now && t.hard_end.is_none_or(|h| h > now);
    let kept = saved.token.filter(token_alive);
    let saved_gen = kept.as_ref().map(|t| t.generation);
    let lease_alive = |l: &SavedLease| {
        l.held.lease.expires_at > now
            && l.token_expires.is_none_or(|t| t > now)
            && l.held.token_end.is_none_or(|t| t > now)
    };
    let spec_of = |name: &str, fp: &str| specs.iter().find(|s| s.name == name && fingerprint(&s.source) == fp);
    for s in saved.secrets {
        let spec = spec_of(&s.name, &s.spec);
        match (s.lease, spec.map(|x| &x.source)) {
            (Some(mut l), Some(SecretSource::Database { .. })) if lease_alive(&l) => {
                if Some(l.held.token_generation) != saved_gen {
                    // An older token: nobody renews it, so its current end is
                    // the end of this lease too.
                    l.held.token_end = match (l.held.token_end, l.token_expires) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                plan.secrets.insert(
                    s.name.clone(),
                    Resumed { version: s.version, data: s.data, lease: Some((l.held, l.learned)) },
                );
            }
            (Some(l), _) if lease_alive(&l) => plan.revoke.push(l.held.lease.id),
            (Some(_), _) => plan.ended += 1,
            (None, Some(SecretSource::Kv { .. })) => {
                plan.secrets.insert(s.name.clone(), Resumed { version: s.version, data: s.data, lease: None });
            }
            (None, _) => {}
        }
    }
    for d in saved.draining {
        let spec = spec_of(&d.name, &d.spec);
        if !lease_alive(&d.lease) {
            plan.ended += 1;
        } else if spec.is_some() && d.drain_end > now {
            plan.draining.push((d.name, d.lease.held, d.drain_end));
        } else if spec.is_none_or(|s| s.revoke_old == RevokeOld::Drain) {
            plan.revoke.push(d.lease.held.lease.id);
        }
    }
    plan.token = kept;
    plan
}

// === loading ===

/// Reads, opens and checks the state file; `Ok(None)` when there is none
/// yet (the first start).
pub fn read(cfg: &StateConfig, identity: &Identity, clock: Clock) -> Result<Option<Saved>, LoadError> {
    use crate::write::ReadError;
    // vaultlet writes it 0600; group read is harmless (it is sealed), a
    // writer other than vaultlet is not.
    let rules = crate::write::OwnFile {
        what: "the state file",
        forbidden_mode: 0o022,
        max_len: cfg.max_len,
        private_dir: true,
    };
    let file = match crate::write::read_own_file(&cfg.path, &rules) {
        Ok(f) => f,
        Err(ReadError::Missing) => return Ok(None),
        Err(ReadError::Io(e)) => return Err(LoadError::Unreadable(e)),
        Err(e) => return Err(LoadError::Unsafe(e)),
    };
    Ok(Some(saved_from(decode(&file, &cfg.key, identity)?, clock)))
}

/// Loads the state and decides what to resume; a file that cannot be used
/// is reported in one warn line and counted, and the start is fresh.
pub fn load(cfg: &StateConfig, identity: &Identity, specs: &[SecretSpec], metrics: &crate::metrics::Metrics) -> Plan {
    let clock = Clock::now();
    match read(cfg, identity, clock) {
        Ok(Some(saved)) => decide(saved, specs, clock.now),
        Ok(None) => {
            tracing::info!(path = %cfg.path.display(), "no state file yet; starting fresh");
            Plan::default()
        }
        Err(e) => {
            metrics.state_load_failure(e.reason());
            tracing::warn!("state file {} not used ({e}); starting fresh", cfg.path.display());
            Plan::default()
        }
    }
}

// === what the tasks hold, for the writer ===

pub use crate::ledger::Tracker;

// === writing ===

/// Writes the state file: after changes (coalesced) and once at shutdown.
#[derive(Clone)]
pub struct Writer {
    cfg: StateConfig,
    identity: Identity,
    specs: Vec<SecretSpec>,
    store: Store,
    auth: AuthHandle,
    tracker: Tracker,
    metrics: Arc<crate::metrics::Metrics>,
    /// The last write error, so a failing disk logs once per new error.
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// A writer for `cfg`.
    pub fn new(
        cfg: StateConfig,
        identity: Identity,
        specs: Vec<SecretSpec>,
        store: Store,
        auth: AuthHandle,
        tracker: Tracker,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Writer {
        Writer { cfg, identity, specs, store, auth, tracker, metrics, last_error: Arc::default() }
    }

    /// Builds the plaintext from what the tasks hold now. `live` false
    /// leaves out the token and every lease (they were revoked).
    fn sealed(&self, clock: Clock, live: bool) -> Sealed {
        let w = |t: Instant| clock.to_wall(t);
        let token = self.auth.current();
        let token = token.filter(|t| live && !self.auth.is_dead(t.generation) && t.expires_at > clock.now);
        let token_expires = |g: u64| match &token {
            Some(t) if t.generation == g => Some(t.expires_at),
            _ => self.auth.token_expiry(g),
        };
        let lease = |h: &Held, learned: Option<Duration>| SealedLease {
            id: h.lease.id.as_str().to_owned(),
            issued_ms: w(h.lease.issued_at),
            expires_ms: w(h.lease.expires_at),
            ttl_ms: u64::try_from(h.lease.ttl.as_millis()).unwrap_or(u64::MAX),
            renewable: h.lease.renewable,
            cap_ms: h.cap.map(w),
            generation: h.token_generation,
            token_end_ms: h.token_end.map(w),
            token_expires_ms: token_expires(h.token_generation).map(w),
            learned_ms: learned.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        };
        let tracked = self.tracker.lock();
        let snap = self.store.snapshot();
        let mut secrets = Vec::new();
        for spec in &self.specs {
            let Some(entry) = snap.get(spec.name.as_str()) else { continue };
            let Some(value) = entry.live(clock.now) else { continue };
            let sealed_lease = match &spec.source {
                SecretSource::Database { .. } if live => match tracked.held.get(&spec.name) {
                    // Only the value published with this very lease.
                    Some((h, v, l)) if *v == entry.version && h.lease.expires_at > clock.now => Some(lease(h, *l)),
                    _ => continue,
                },
                SecretSource::Kv { .. } => None,
                _ => continue,
            };
            secrets.push(SealedSecret {
                name: spec.name.clone(),
                spec: fingerprint(&spec.source),
                version: entry.version,
                values: value.iter().map(|(k, v)| (k.to_owned(), v.expose_secret().to_owned())).collect(),
                lease: sealed_lease,
            });
        }
        let draining = if live {
            tracked
                .draining
                .values()
                .filter(|(_, h, _)| h.lease.expires_at > clock.now)
                .filter_map(|(name, h, end)| {
                    let spec = self.specs.iter().find(|s| &s.name == name)?;
                    Some(SealedDrain {
                        secret: name.clone(),
                        spec: fingerprint(&spec.source),
                        lease: lease(h, None),
                        drain_end_ms: w(*end),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let token = token.map(|t| SealedToken {
            secret: t.secret.expose_secret().to_owned(),
            generation: t.generation,
            issued_ms: w(t.issued_at),
            expires_ms: w(t.expires_at),
            hard_end_ms: t.hard_end.map(w),
            ttl_s: t.ttl.as_secs(),
            renewable: t.renewable,
        });
        Sealed { identity: self.identity.clone(), written_ms: clock.wall_ms, token, secrets, draining }
    }

    /// Seals and writes what the tasks hold now.
    pub async fn write(&self, live: bool) {
        let bytes = encode(&self.sealed(Clock::now(), live), &self.cfg.key);
        let path = self.cfg.path.clone();
        let res = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                crate::write::ensure_dir(dir)?;
            }
            crate::write::write_own_file(&path, &bytes, "the state file")
        })
        .await;
        let err = match res {
            Ok(Ok(())) => {
                self.metrics.state_write(true);
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if err.is_some() {
            self.metrics.state_write(false);
        }
        // Every failure is counted; the same failure again is not logged again.
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &err
            && last.as_ref() != Some(e)
        {
            tracing::warn!(path = %self.cfg.path.display(), error = %e, "could not write the state file");
        }
        *last = err;
    }

    /// Final write at shutdown; `revoked` when the leases and token were
    /// revoked (they must not be resumed).
    pub async fn finish(&self, revoked: bool) {
        if revoked {
            self.tracker.clear_leases();
        }
        self.write(!revoked).await;
    }

    /// Writes after every change (token, store, leases), coalescing what
    /// happens within [`COALESCE`], until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut store_rx = self.store.subscribe();
        let mut token_rx = self.auth.watch();
        let changed = self.tracker.changed.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.notified() => {}
                r = store_rx.changed() => if r.is_err() { return },
                r = token_rx.changed() => if r.is_err() { return },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(COALESCE) => {}
            }
            store_rx.borrow_and_update();
            token_rx.borrow_and_update();
            self.write(true).await;
        }
    }
}

/// Revokes (with the saved token) the leases a restart cannot resume, or
/// names them in one line when that is not possible.
pub async fn revoke_unresumable(vault: Arc<dyn crate::vault::Backend>, token: Option<SecretString>, ids: Vec<LeaseId>) {
    if ids.is_empty() {
        return;
    }
    let mut left = Vec::new();
    match token {
        None => left = ids,
        Some(token) => {
            for id in ids {
                match vault.revoke_lease(&token, &id).await {
                    Ok(()) => tracing::info!(lease = ?id, "revoked a lease from the state file that is no longer used"),
                    Err(_) => left.push(id),
                }
            }
        }
    }
    if !left.is_empty() {
        // By path only, like every other lease in the log (`LeaseId`'s Debug).
        tracing::warn!(
            leases = ?left,
            "leases from the state file are no longer used and could not be revoked; they end on their own"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn key(b: u8) -> StateKey {
        StateKey::from_bytes([b; 32])
    }

    fn identity() -> Identity {
        Identity {
            addresses: vec!["http://127.0.0.1:8200/".into()],
            namespace: None,
            method: "approle".into(),
            auth_mount: "approle".into(),
            login_sha256: hex(&sha2::Sha256::digest(b"role")),
        }
    }

    fn db_spec(name: &str, role: &str) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            source: SecretSource::Database { mount: "database".into(), role: role.into() },
            refresh: Duration::from_secs(300),
            rotate_before: None,
            drain: Duration::from_secs(60),
            revoke_old: RevokeOld::Drain,
            verify_every: Duration::from_secs(60),
            allow: None,
        }
    }

    fn kv_spec(name: &str, path: &str) -> SecretSpec {
        SecretSpec {
            source: SecretSource::Kv { mount: "secret".into(), path: path.into(), version: 2 },
            ..db_spec(name, "x")
        }
    }

    fn sample() -> Sealed {
        Sealed {
            identity: identity(),
            written_ms: 1_000,
            token: Some(SealedToken {
                secret: "s.the-token-value".into(),
                generation: 3,
                issued_ms: 500,
                expires_ms: 60_000,
                hard_end_ms: None,
                ttl_s: 60,
                renewable: true,
            }),
            secrets: vec![SealedSecret {
                name: "db".into(),
                spec: fingerprint(&db_spec("db", "api").source),
                version: 4,
                values: vec![("password".into(), "hunter2-secret".into()), ("username".into(), "v-user".into())],
                lease: None,
            }],
            draining: vec![],
        }
    }

    #[test]
    fn seals_and_opens_without_plaintext() {
        let file = encode(&sample(), &key(7));
        for needle in ["hunter2-secret", "s.the-token-value", "v-user", "password"] {
            assert!(!file.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in the file");
        }
        assert_eq!(&file[..8], MAGIC);
        let back = decode(&file, &key(7), &identity()).expect("opens");
        assert_eq!(back.token.as_ref().map(|t| t.secret.as_str()), Some("s.the-token-value"));
        assert_eq!(back.secrets[0].values[0].1, "hunter2-secret");
        // A fresh nonce each time: two writes of the same state differ.
        assert_ne!(encode(&sample(), &key(7)), file);
    }

    #[test]
    fn each_bad_file_has_its_reason() {
        let file = encode(&sample(), &key(7));
        let reason = |f: &[u8], k: &StateKey| decode(f, k, &identity()).err().map(|e| e.reason());
        assert_eq!(reason(&file, &key(8)), Some("wrong_key_or_tampered"));
        for i in [20, 40, file.len() - 1] {
            let mut t = file.clone();
            t[i] ^= 1;
            assert_eq!(reason(&t, &key(7)), Some("wrong_key_or_tampered"), "byte {i}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(reason(&longer, &key(7)), Some("wrong_key_or_tampered"));
        for cut in [0, 3, 8, 12, 30, file.len() - 1] {
            assert_eq!(reason(&file[..cut], &key(7)), Some("truncated"), "cut at {cut}");
        }
        let mut v = file.clone();
        v[8] = 9;
        assert_eq!(reason(&v, &key(7)), Some("unknown_version"));
        // The length is authenticated: changing it (to the real body size,
        // even) is a tampering, not a truncation.
        let mut l = file.clone();
        l.pop();
        let shorter = u32::from_be_bytes([l[9], l[10], l[11], l[12]]) - 1;
        l[9..HEADER].copy_from_slice(&shorter.to_be_bytes());
        assert_eq!(reason(&l, &key(7)), Some("wrong_key_or_tampered"));
        let mut other = identity();
        other.login_sha256 = hex(&sha2::Sha256::digest(b"another role"));
        assert_eq!(decode(&file, &key(7), &other).err().map(|e| e.reason()), Some("other_config"));
        assert_eq!(reason(b"not a state file at all", &key(7)), Some("wrong_key_or_tampered"));
    }

    #[test]
    fn a_missing_file_is_a_first_start_and_a_directory_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = state_cfg(dir.path());
        assert!(matches!(read(&cfg, &identity(), Clock::now()), Ok(None)), "missing = first start");
        let nested = StateConfig { path: dir.path().join("not-yet").join("state"), ..cfg.clone() };
        assert!(matches!(read(&nested, &identity(), Clock::now()), Ok(None)), "no directory yet = first start");
        std::fs::create_dir(&cfg.path).unwrap();
        assert_eq!(read(&cfg, &identity(), Clock::now()).err().map(|e| e.reason()), Some("unsafe_file"));
    }

    fn state_cfg(dir: &Path) -> StateConfig {
        StateConfig { path: dir.join("state"), key: key(1), max_len: size_limit(1, 1 << 20) }
    }

    /// A good state file for [`identity`] under `key(1)` at `path`, mode 0600.
    fn good_state(path: &Path) -> Vec<u8> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = encode(&sample(), &key(1));
        std::fs::write(path, &bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        bytes
    }

    /// `read` on a thread of its own, waited for with a generous deadline:
    /// a read that blocks fails the test instead of hanging it. `Ok(true)`:
    /// the state was read.
    fn read_within(cfg: &StateConfig) -> Result<bool, &'static str> {
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read(&cfg, &identity(), Clock::now()).map(|s| s.is_some()).map_err(|e| e.reason()));
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("reading the state file blocked")
    }

    #[test]
    fn a_fifo_at_the_state_path_is_a_fresh_start_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = state_cfg(dir.path());
        rustix::fs::mknodat(rustix::fs::CWD, &cfg.path, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"));
        // `load` (what a start does): one counted failure, a fresh plan.
        let metrics = crate::metrics::Metrics::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let m = metrics.clone();
        std::thread::spawn(move || {
            let plan = load(&cfg, &identity(), &[], &m);
            let _ = tx.send((plan.token.is_none(), plan.secrets.is_empty()));
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("load blocked"), (true, true));
        let text = crate::metrics::render(&metrics.register(Store::new([]), true));
        assert!(text.contains("vaultlet_state_load_failures_total{reason=\"unsafe_file\"} 1\n"), "{text}");
    }

    #[test]
    fn a_symlink_at_the_state_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = StateConfig { path: dir.path().join("real"), ..state_cfg(dir.path()) };
        good_state(&real.path);
        assert_eq!(read_within(&real), Ok(true), "the target itself is a good state file");
        let cfg = state_cfg(dir.path());
        std::os::unix::fs::symlink(&real.path, &cfg.path).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"), "a link to a good state file");
        std::fs::remove_file(&cfg.path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &cfg.path).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"), "a link to /dev/zero");
    }

    #[test]
    fn a_state_file_of_another_user_or_that_others_may_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = state_cfg(dir.path());
        good_state(&cfg.path);
        assert_eq!(read_within(&cfg), Ok(true));
        let owner = rustix::process::geteuid().as_raw();
        std::os::unix::fs::chown(&cfg.path, Some(65534), None).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"), "owned by uid 65534");
        std::os::unix::fs::chown(&cfg.path, Some(owner), None).unwrap();
        for mode in [0o620, 0o602, 0o666] {
            std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_within(&cfg), Err("unsafe_file"), "mode {mode:o}");
        }
        // Reading it does no harm: it is sealed.
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_within(&cfg), Ok(true), "mode 640");
    }

    #[test]
    fn an_oversized_state_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = state_cfg(dir.path());
        let len = good_state(&cfg.path).len() as u64;
        cfg.max_len = len - 1;
        assert_eq!(read_within(&cfg), Err("unsafe_file"));
        cfg.max_len = len;
        assert_eq!(read_within(&cfg), Ok(true), "exactly at the limit");
        assert_eq!(size_limit(3, 1 << 20), 4 << 20, "1 MiB and one answer per secret");
    }

    /// A config with `[state]` at `state` and the key at `key`.
    fn config_text(state: &Path, key: &Path) -> String {
        format!(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\n[auth.approle]\nrole_id_file = \"/etc/hostname\"\n\
             secret_id_file = \"/run/x/secret_id\"\n[secret.db]\ndatabase = {{ mount = \"database\", role = \"api\" }}\n\
             [socket]\n[state]\npath = \"{}\"\nkey_file = \"{}\"\n",
            state.display(),
            key.display()
        )
    }

    #[test]
    fn a_state_directory_others_may_change_is_refused_at_check_and_at_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, [9u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let check = |state: &Path| {
            crate::Config::from_toml(Path::new("v.toml"), &config_text(state, &key), 1000)
                .map(|_| ())
                .map_err(|e| (e.0[0].key.clone(), e.0[0].line, e.0[0].message.clone(), e.0.len()))
        };
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        for mode in [0o1777, 0o777] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
            for path in [shared.join("state"), shared.join("sub").join("state")] {
                let (k, line, msg, n) = check(&path).expect_err("a directory others may write");
                assert_eq!((k.as_str(), line, n), ("state.path", Some(10), 1), "{msg}");
                assert!(msg.contains("writable by other users"), "{msg}");
            }
        }
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&shared, Some(65534), None).unwrap();
        let (_, _, msg, _) = check(&shared.join("state")).expect_err("another user's directory");
        assert!(msg.contains("uid 65534"), "{msg}");
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        check(&mine.join("state")).expect("a private directory");
        check(&mine.join("not").join("yet").join("state")).expect("created by vaultlet, under a private one");
        // Changed after the check: the read and the write refuse it too.
        let cfg = state_cfg(&mine);
        good_state(&cfg.path);
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"));
        let e = crate::write::write_own_file(&cfg.path, b"x", "the state file").unwrap_err();
        assert!(matches!(e, crate::write::PlaceError::UnsafeDir { .. }), "{e}");
    }

    #[test]
    fn a_key_file_that_is_a_link_a_fifo_another_users_or_too_long_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, [5u8; 32]).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(**read_key(&good).unwrap().0, [5u8; 32]);
        let within = |p: &Path| {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = p.to_owned();
            std::thread::spawn(move || drop(tx.send(read_key(&p).map(drop))));
            rx.recv_timeout(Duration::from_secs(30)).expect("reading the key blocked")
        };
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = within(&link).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = within(&zero).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
        let e = within(&fifo).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        let theirs = dir.path().join("theirs");
        std::fs::copy(&good, &theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = within(&theirs).unwrap_err();
        assert!(e.contains("uid 65534"), "{e}");
        let long = dir.path().join("long");
        std::fs::write(&long, [b'a'; 4096]).unwrap();
        std::fs::set_permissions(&long, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = within(&long).unwrap_err();
        assert!(e.contains("more than 66 bytes"), "{e}");
        // 64 hex characters and CR LF is the longest good key.
        std::fs::write(&long, format!("{}\r\n", "ab".repeat(32))).unwrap();
        assert_eq!(**read_key(&long).unwrap().0, [0xab; 32]);
    }

    #[test]
    fn key_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let put = |bytes: &[u8], mode: u32| {
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put(&[5u8; 32], 0o600);
        assert_eq!(**read_key(&p).unwrap().0, [5u8; 32]);
        put(format!("{}\n", "ab".repeat(32)).as_bytes(), 0o400);
        assert_eq!(**read_key(&p).unwrap().0, [0xab; 32]);
        put(&[5u8; 32], 0o640);
        assert!(read_key(&p).unwrap_err().contains("group or others"));
        put(&[5u8; 32], 0o602);
        assert!(read_key(&p).unwrap_err().contains("group or others"));
        put(&[5u8; 31], 0o600);
        let e = read_key(&p).unwrap_err();
        assert!(e.contains("32 raw bytes") && e.contains("31 bytes"), "{e}");
        put("zz".repeat(32).as_bytes(), 0o600);
        assert!(read_key(&p).unwrap_err().contains("64 hex"));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(read_key(&p).unwrap_err(), "file not found");
        assert!(!format!("{:?}", key(0x41)).contains("65"), "Debug shows no key bytes");
    }

    #[test]
    fn a_bad_key_file_is_a_config_error_naming_key_and_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, [9u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = config_text(&dir.path().join("state"), &key);
        let load = || crate::Config::from_toml(Path::new("v.toml"), &src, 1000);
        let e = load().expect_err("a group-readable key is refused");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!((e.0[0].key.as_str(), e.0[0].line), ("state.key_file", Some(11)), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load().expect("a 0600 key loads").config;
        assert!(c.state.is_some());
        assert!(!format!("{c:?}").contains("9, 9"), "the key is not in Debug");
        let without = crate::Config::from_toml(Path::new("v.toml"), src.split("[state]").next().unwrap(), 1000);
        assert!(without.unwrap().config.state.is_none(), "no [state], no state");
    }

    #[tokio::test(start_paused = true)]
    async fn times_round_trip_through_the_wall_clock() {
        let c = Clock { now: Instant::now(), wall_ms: 10_000_000 };
        let later = Instant::now() + Duration::from_secs(42);
        assert_eq!(c.to_wall(later), 10_042_000);
        assert_eq!(c.to_instant(10_042_000), later);
        // After a restart 30 s later, the same wall time is 12 s ahead.
        let c2 = Clock { now: Instant::now(), wall_ms: 10_030_000 };
        assert_eq!(c2.to_instant(10_042_000) - Instant::now(), Duration::from_secs(12));
        assert!(c2.to_instant(10_000_000) <= Instant::now(), "the past stays past");
    }

    fn data(v: &str) -> SecretData {
        let mut d = SecretData::default();
        d.insert("password", SecretString::from(v.to_owned()));
        d
    }

    fn held(id: &str, ends_in: u64, generation: u64) -> Held {
        let now = Instant::now();
        Held {
            lease: Lease {
                id: LeaseId::new(format!("database/creds/api/{id}")),
                issued_at: now,
                expires_at: now + Duration::from_secs(ends_in),
                ttl: Duration::from_secs(ends_in),
                renewable: true,
            },
            cap: None,
            token_generation: generation,
            token_end: None,
        }
    }

    fn token(generation: u64, ends_in: u64) -> Token {
        let now = Instant::now();
        Token {
            secret: SecretString::from("t".to_owned()),
            generation,
            issued_at: now,
            ttl: Duration::from_secs(ends_in),
            expires_at: now + Duration::from_secs(ends_in),
            hard_end: None,
            renewable: true,
        }
    }

    fn saved_db(name: &str, spec: &SecretSpec, h: Held, token_expires: Option<Instant>) -> SavedSecret {
        SavedSecret {
            name: name.into(),
            spec: fingerprint(&spec.source),
            version: 7,
            data: data("pw"),
            lease: Some(SavedLease { held: h, token_expires, learned: None }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resume_keeps_what_lives_and_revokes_what_nothing_uses() {
        let api = db_spec("api", "api");
        let kv = kv_spec("cfg", "app/cfg");
        let t_end = Some(Instant::now() + Duration::from_secs(100));
        let saved = Saved {
            token: Some(token(5, 100)),
            secrets: vec![
                saved_db("api", &api, held("a", 60, 5), t_end),
                // Its secret was removed from the config.
                saved_db("gone", &db_spec("gone", "gone"), held("b", 60, 5), t_end),
                // Same name, another role: not this lease's secret any more.
                saved_db("report", &db_spec("report", "old-role"), held("c", 60, 5), t_end),
                // Ended while we were down.
                saved_db("short", &db_spec("short", "short"), held("d", 5, 5), t_end),
                SavedSecret {
                    name: "cfg".into(),
                    spec: fingerprint(&kv.source),
                    version: 2,
                    data: data("x"),
                    lease: None,
                },
            ],
            draining: vec![],
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        let specs = [api, kv, db_spec("report", "new-role"), db_spec("short", "short")];
        let plan = decide(saved, &specs, Instant::now());
        assert_eq!(plan.token.as_ref().map(|t| t.generation), Some(5));
        let mut names: Vec<_> = plan.secrets.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["api", "cfg"]);
        assert_eq!(plan.secrets["api"].version, 7, "versions do not move");
        assert!(plan.secrets["cfg"].lease.is_none());
        let revoked: Vec<_> = plan.revoke.iter().map(|i| i.as_str().rsplit('/').next().unwrap().to_owned()).collect();
        assert_eq!(revoked, ["b", "c"]);
        assert_eq!(plan.ended, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_token_takes_its_leases_with_it() {
        let api = db_spec("api", "api");
        let t_end = Some(Instant::now() + Duration::from_secs(30));
        let saved = Saved {
            token: Some(token(2, 30)),
            secrets: vec![saved_db("api", &api, held("a", 3600, 2), t_end)],
            draining: vec![],
        };
        tokio::time::advance(Duration::from_secs(31)).await;
        let plan = decide(saved, &[api], Instant::now());
        assert!(plan.token.is_none(), "expired token: log in");
        assert!(plan.secrets.is_empty(), "its lease died with it");
        assert!(plan.revoke.is_empty());
        assert_eq!(plan.ended, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_of_an_older_token_ends_with_that_token() {
        let api = db_spec("api", "api");
        let old_end = Instant::now() + Duration::from_secs(40);
        let saved = Saved {
            token: Some(token(3, 100)),
            secrets: vec![saved_db("api", &api, held("a", 3600, 2), Some(old_end))],
            draining: vec![],
        };
        let plan = decide(saved, &[api], Instant::now());
        let (h, _) = plan.secrets["api"].lease.clone().unwrap();
        assert_eq!(h.token_end, Some(old_end), "replaced before the old token ends");
    }

    #[tokio::test(start_paused = true)]
    async fn draining_leases_keep_draining_or_are_revoked() {
        let api = db_spec("api", "api");
        let mk = |id: &str, name: &str, drain_in: u64| SavedDrain {
            name: name.into(),
            spec: fingerprint(&api.source),
            lease: SavedLease { held: held(id, 600, 1), token_expires: None, learned: None },
            drain_end: Instant::now() + Duration::from_secs(drain_in),
        };
        let saved = Saved {
            token: None,
            secrets: vec![],
            draining: vec![mk("keep", "api", 60), mk("over", "api", 5), mk("orphan", "removed", 60)],
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        let plan = decide(saved, &[api], Instant::now());
        assert_eq!(plan.draining.len(), 1);
        assert!(plan.draining[0].1.lease.id.as_str().ends_with("/keep"));
        let revoked: Vec<_> = plan.revoke.iter().map(|i| i.as_str().rsplit('/').next().unwrap().to_owned()).collect();
        assert_eq!(revoked, ["over", "orphan"]);
    }
}
