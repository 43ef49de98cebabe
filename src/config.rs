//! The configuration file: raw TOML → validated [`Config`].
//!
//! Loading happens in two steps, the way ripgrep turns flags into arguments:
//! serde reads the file into `Raw*` structs that reject unknown keys, then
//! [`Config::from_toml`] checks what serde cannot (durations, modes, template
//! references, paths) and builds the types the rest of the program uses.
//! Nothing downstream re-validates.
//!
//! Every error names the file, the line and the dotted key. Messages never
//! quote values from the file: the config holds no credentials itself (they
//! live in the files it points to), but an error message is the wrong place
//! to find out that someone pasted one in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Default path of the socket.
pub const DEFAULT_SOCKET: &str = "/run/vaultlet/vaultlet.sock";

/// Default `verify_every`: one `sys/leases/lookup` per database secret per
/// minute. A revoked lease is noticed within this bound; a minute keeps the
/// cost at about a third of a renewal rhythm for hour-long leases, and far
/// below the request budget of one sidecar (see the README).
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(60);
/// Shortest `verify_every` (tests use 2 s).
pub const MIN_VERIFY_EVERY: Duration = Duration::from_secs(1);
/// Longest `verify_every`.
pub const MAX_VERIFY_EVERY: Duration = Duration::from_secs(3600);

/// A configuration problem: where it is and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `secret.db.database.role`.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach Vault.
    pub vault: VaultConfig,
    /// How to log in.
    pub auth: AppRoleConfig,
    /// The secrets to keep, sorted by name.
    pub secrets: Vec<SecretSpec>,
    /// The socket to serve them on, if any.
    pub socket: Option<SocketConfig>,
    /// Env files (`[[env_file]]`) and file templates (`[[template]]`) to render.
    pub files: Vec<FileSpec>,
    /// `vaultlet exec`: how to run the app.
    pub exec: Option<ExecSpec>,
    /// Revoke leases and the token on SIGTERM/SIGINT.
    pub revoke_on_shutdown: bool,
    /// Refuse to run when memory cannot be locked.
    pub require_memory_lock: bool,
    /// Where to serve Prometheus metrics (off by default).
    pub metrics: Option<MetricsListen>,
    /// `[state]`: the sealed state file and its key (off by default).
    pub state: Option<crate::state::StateConfig>,
}

/// `[metrics]`: a TCP address or a Unix socket of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// `listen = "127.0.0.1:9102"`.
    Tcp(std::net::SocketAddr),
    /// `socket = "/run/vaultlet/metrics.sock"`, with its mode.
    Unix(PathBuf, u32),
}

/// `[vault]`
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// One or more server addresses, tried in order on connection failure.
    pub addresses: Vec<reqwest::Url>,
    /// PEM bundle that replaces the system roots for TLS to Vault.
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for a whole request.
    pub request_timeout: Duration,
    /// Client certificate and key (PEM) for TLS client authentication.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Largest response body read from Vault, in bytes.
    pub max_response_size: usize,
}

/// `[auth.approle]`
#[derive(Debug, Clone)]
pub struct AppRoleConfig {
    /// Auth mount, default `approle`.
    pub mount: String,
    /// File holding the role_id (re-read on every login).
    pub role_id_file: PathBuf,
    /// File holding the secret_id, or a wrapping token for it.
    pub secret_id_file: PathBuf,
    /// The secret_id file holds a response-wrapping token.
    pub secret_id_wrapped: bool,
    /// Delete the secret_id file after reading it.
    pub remove_secret_id_file: bool,
}

/// What to do with the lease a replacement took over from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOld {
    /// Revoke it once `drain` has passed (or let it expire if sooner).
    Drain,
    /// Never revoke it; it expires on its own.
    Never,
}

/// One `[secret.NAME]` table. Where a secret comes from and how it is kept,
/// never its value: `Debug` is safe to derive.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// The name clients and templates use.
    pub name: String,
    /// Where it comes from.
    pub source: SecretSource,
    /// KV: how often to re-read.
    pub refresh: Duration,
    /// Database: issue a replacement when the lease has less than this left.
    /// `None` means the default (see `lease::schedule::rotate_before`).
    pub rotate_before: Option<Duration>,
    /// How long a replaced lease stays valid before it is revoked.
    pub drain: Duration,
    /// Whether replaced leases are revoked.
    pub revoke_old: RevokeOld,
    /// Database: how often the held lease is checked with `sys/leases/lookup`,
    /// so a lease revoked behind vaultlet's back is noticed within this bound.
    pub verify_every: Duration,
    /// Who may read it on the socket; `None` means the socket's allow list.
    pub allow: Option<Vec<Allow>>,
}

/// Where a secret comes from (mounts, roles, paths; no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `GET <mount>/creds/<role>`: a leased username/password.
    Database {
        /// Secrets engine mount.
        mount: String,
        /// Role name.
        role: String,
    },
    /// `POST <mount>/issue/<role>`: a TLS certificate and its private key.
    Pki(PkiRequest),
    /// A KV secret.
    Kv {
        /// Secrets engine mount.
        mount: String,
        /// Path under the mount.
        path: String,
        /// 1 or 2.
        version: u8,
    },
}

/// What a PKI secret asks Vault for (names only; the key is made by Vault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiRequest {
    /// Secrets engine mount, default `pki`.
    pub mount: String,
    /// Role name.
    pub role: String,
    /// The certificate's common name.
    pub common_name: String,
    /// DNS subject alternative names.
    pub alt_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_sans: Vec<std::net::IpAddr>,
    /// Requested lifetime; `None` means the role's default.
    pub ttl: Option<Duration>,
}

/// `[socket]`
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Where to create the socket.
    pub path: PathBuf,
    /// File mode of the socket.
    pub mode: u32,
    /// Who may connect.
    pub allow: Vec<Allow>,
    /// Open connections at most, all callers together.
    pub max_connections: usize,
    /// Open connections at most per caller uid.
    pub max_connections_per_uid: usize,
    /// Long-polls and event streams at most per caller uid.
    pub max_waits_per_uid: usize,
}

/// Default `socket.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `socket.max_connections_per_uid`.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 128;
/// Default `socket.max_waits_per_uid`.
pub const DEFAULT_MAX_WAITS_PER_UID: usize = 32;

/// One allow-list entry: a caller matches when every given field matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Peer uid.
    pub uid: Option<u32>,
    /// Peer primary gid.
    pub gid: Option<u32>,
}

/// How a rendered file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `[[env_file]]`: `KEY=VALUE` lines, each value encoded by vaultlet for
    /// the reader the format names.
    Env(EnvFormat),
    /// `[[template]]`: the template's output, with values escaped as the
    /// destination's syntax needs (JSON for `.json`) or raw.
    Raw,
}

/// The reader an `[[env_file]]` is written for (`format = "…"`). Each one
/// reads quotes and backslashes differently, so each gets its own encoding,
/// and a value its reader cannot hold exactly is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvFormat {
    /// `set -a; . file` in a POSIX shell (the default).
    Sh,
    /// `docker run --env-file`: `KEY=VALUE` verbatim, one per line.
    Docker,
    /// systemd's `EnvironmentFile=`.
    Systemd,
    /// npm `dotenv` (16.x).
    DotenvNode,
    /// python-dotenv (1.x, with its default interpolation).
    DotenvPython,
}

impl EnvFormat {
    /// The config spellings, in the order the README lists them.
    pub const ALL: [(&'static str, EnvFormat); 5] = [
        ("sh", EnvFormat::Sh),
        ("docker", EnvFormat::Docker),
        ("systemd", EnvFormat::Systemd),
        ("dotenv-node", EnvFormat::DotenvNode),
        ("dotenv-python", EnvFormat::DotenvPython),
    ];

    /// The config spelling.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("sh", |(n, _)| n)
    }
}

/// One `[[env_file]]` or `[[template]]`.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Destination.
    pub path: PathBuf,
    /// minijinja template.
    pub template: String,
    /// Env lines or raw text.
    pub format: FileFormat,
    /// File mode.
    pub mode: u32,
    /// Owner uid to set (needs privileges).
    pub owner: Option<u32>,
    /// Group gid to set.
    pub group: Option<u32>,
    /// Command run (without a shell) after each change.
    pub command: Option<Vec<String>>,
    /// Limit for `command`.
    pub command_timeout: Duration,
    /// Variables `command` inherits beyond the default list.
    pub inherit_env: Vec<String>,
    /// Secrets the template refers to.
    pub uses: BTreeSet<String>,
    /// `[[template]] bundle = "NAME"`: files of one bundle switch together
    /// (see [`crate::write::write_group`]).
    pub bundle: Option<String>,
}

/// What `vaultlet exec` does when the app's environment changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop the child gracefully and start it again with the new environment.
    Restart,
    /// Send it a signal (the app re-reads its secrets itself).
    Signal,
    /// Leave it alone.
    None,
}

/// `[exec]`
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Env template for the child (the `env` mapping is folded into it).
    pub template: String,
    /// Default command when none follows `--`.
    pub command: Option<Vec<String>>,
    /// Reaction to a changed environment.
    pub on_change: OnChange,
    /// Signal for `on_change = "signal"`.
    pub signal: i32,
    /// Signal that asks the child to stop (restart and shutdown).
    pub stop_signal: i32,
    /// How long the child gets to stop before SIGKILL.
    pub stop_timeout: Duration,
    /// Changes within this window cause one reaction.
    pub debounce: Duration,
    /// Variables the child inherits beyond the default list.
    pub inherit_env: Vec<String>,
    /// Run the child as this uid and gid (supplementary groups cleared).
    pub user: Option<(u32, u32)>,
    /// Secrets the environment uses.
    pub uses: BTreeSet<String>,
}

// === raw structs (serde) ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    vault: Spanned<RawVault>,
    auth: Spanned<RawAuth>,
    #[serde(default)]
    secret: BTreeMap<String, Spanned<RawSecret>>,
    socket: Option<Spanned<RawSocket>>,
    #[serde(default)]
    env_file: Vec<Spanned<RawEnvFile>>,
    #[serde(default)]
    template: Vec<Spanned<RawTemplate>>,
    exec: Option<Spanned<RawExec>>,
    #[serde(default)]
    revoke_on_shutdown: bool,
    memory: Option<RawMemory>,
    metrics: Option<Spanned<RawMetrics>>,
    state: Option<Spanned<crate::state::RawState>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    #[serde(default)]
    require_lock: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    socket: Option<PathBuf>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: Spanned<OneOrMany>,
    ca_cert: Option<Spanned<PathBuf>>,
    namespace: Option<String>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    allow_insecure_http: bool,
    max_response_size: Option<Spanned<RawSize>>,
}

/// A size: bytes as a number, or a string like `"512KiB"`, `"4MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    approle: Spanned<RawAppRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppRole {
    mount: Option<String>,
    role_id_file: Spanned<PathBuf>,
    secret_id_file: Spanned<PathBuf>,
    #[serde(default)]
    secret_id_wrapped: bool,
    #[serde(default)]
    remove_secret_id_file: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    database: Option<RawDatabase>,
    kv: Option<RawKv>,
    pki: Option<Spanned<RawPki>>,
    refresh: Option<Spanned<String>>,
    rotate_before: Option<Spanned<String>>,
    reissue_before: Option<Spanned<String>>,
    revoke_old: Option<Spanned<bool>>,
    drain: Option<Spanned<String>>,
    revoke_old_after: Option<Spanned<String>>,
    verify_every: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<RawAllow>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default = "default_db_mount")]
    mount: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPki {
    #[serde(default = "default_pki_mount")]
    mount: Spanned<String>,
    role: Spanned<String>,
    common_name: Spanned<String>,
    #[serde(default)]
    alt_names: Vec<Spanned<String>>,
    #[serde(default)]
    ip_sans: Vec<Spanned<String>>,
    ttl: Option<Spanned<String>>,
}

fn default_pki_mount() -> Spanned<String> {
    Spanned::new(0..0, "pki".into())
}

fn default_db_mount() -> String {
    "database".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    #[serde(default = "default_kv_mount")]
    mount: String,
    path: String,
    #[serde(default = "default_kv_version")]
    version: Spanned<u8>,
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_kv_version() -> Spanned<u8> {
    Spanned::new(0..0, 2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    path: Option<PathBuf>,
    mode: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<RawAllow>>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_uid: Option<Spanned<i64>>,
    max_waits_per_uid: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvFile {
    path: PathBuf,
    template: Spanned<String>,
    mode: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    path: PathBuf,
    template: Option<Spanned<String>>,
    source: Option<Spanned<PathBuf>>,
    mode: Option<Spanned<String>>,
    owner: Option<u32>,
    group: Option<u32>,
    command: Option<Spanned<Vec<String>>>,
    command_timeout: Option<Spanned<String>>,
    inherit_env: Option<Spanned<Vec<String>>>,
    bundle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    template: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    on_change: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
    debounce: Option<Spanned<String>>,
    inherit_env: Option<Spanned<Vec<String>>>,
    user: Option<Spanned<u32>>,
    group: Option<Spanned<u32>>,
}

// === impl Config ===

impl Config {
    /// Reads and validates a config file. No network I/O.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        // systemd's LoadCredential= puts role_id/secret_id in a directory
        // named by this variable; the config may refer to it.
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::parse(path, &src, current_uid(), credentials)
    }

    /// Validates config text. `uid` is the default socket allow-list entry.
    pub fn from_toml(file: &Path, src: &str, uid: u32) -> Result<Config, ConfigError> {
        Self::parse(file, src, uid, None)
    }

    fn parse(file: &Path, src: &str, uid: u32, credentials: Option<PathBuf>) -> Result<Config, ConfigError> {
        let cx = Cx { file, src, credentials };
        let de = toml::de::Deserializer::parse(src).map_err(|e| cx.toml_err(&e, ""))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            cx.toml_err(e.inner(), if key == "." { "" } else { &key })
        })?;
        cx.validate(raw, uid)
    }
}

fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

pub(crate) struct Cx<'a> {
    file: &'a Path,
    src: &'a str,
    /// `$CREDENTIALS_DIRECTORY`, when systemd set it.
    credentials: Option<PathBuf>,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())].matches('\n').count() + 1
    }

    pub(crate) fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.to_owned(),
            line: (span != (0..0)).then(|| self.line(span.start)),
            key: key.to_owned(),
            message: msg.into(),
        })
    }

    /// Keeps toml's message (it names the problem, e.g. "unknown field `x`,
    /// expected one of …") but not its excerpt of the offending line.
    fn toml_err(&self, e: &toml::de::Error, key: &str) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: e.span().map(|s| self.line(s.start)),
            key: key.to_owned(),
            message: e.message().trim().replace('\n', " "),
        }
    }

    fn duration(&self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => match parse_duration(s.get_ref()) {
                Some(d) if !d.is_zero() => Ok(d),
                Some(_) => self.err(s.span(), key, "must be greater than zero"),
                None => self.err(s.span(), key, "not a duration; write e.g. \"30s\", \"5m\", \"1h30m\""),
            },
        }
    }

    fn count(&self, v: &Option<Spanned<i64>>, key: &str, default: usize) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(c) if (1..=1_000_000).contains(&c) => Ok(c),
                _ => self.err(n.span(), key, "must be a whole number from 1 to 1000000"),
            },
        }
    }

    /// `vault.max_response_size`: 4 KiB ..= 64 MiB, default 1 MiB.
    fn max_response_size(&self, v: &Option<Spanned<RawSize>>) -> Result<usize, ConfigError> {
        const KEY: &str = "vault.max_response_size";
        let Some(v) = v else { return Ok(crate::vault::DEFAULT_MAX_RESPONSE) };
        let n = match v.get_ref() {
            RawSize::Bytes(n) => Some(*n),
            RawSize::Text(t) => {
                let t = t.trim();
                let (num, mult) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("B", 1)]
                    .iter()
                    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
                    .unwrap_or((t, 1));
                num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
            }
        };
        match n {
            Some(n) if ((4 << 10)..=(64 << 20)).contains(&n) => Ok(n as usize),
            Some(_) => self.err(v.span(), KEY, "must be between 4KiB and 64MiB"),
            None => self.err(v.span(), KEY, "not a size; write e.g. \"1MiB\", \"512KiB\" or a number of bytes"),
        }
    }

    fn mode(&self, v: &Option<Spanned<String>>, key: &str, default: u32) -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => match u32::from_str_radix(s.get_ref().trim_start_matches("0o"), 8) {
                Ok(m) if m <= 0o777 && m & 0o7 == 0 => Ok(m),
                Ok(m) if m <= 0o777 => {
                    self.err(s.span(), key, "must not grant access to others (last digit must be 0)")
                }
                _ => self.err(s.span(), key, "not an octal file mode; write e.g. \"0600\""),
            },
        }
    }

    fn validate(&self, raw: RawConfig, uid: u32) -> Result<Config, ConfigError> {
        let vault = self.vault(raw.vault)?;
        let auth = self.auth(raw.auth)?;

        let mut secrets = Vec::new();
        for (name, s) in raw.secret {
            secrets.push(self.secret(name, s)?);
        }

        let socket = match raw.socket {
            None => None,
            Some(s) => {
                let span = s.span();
                let s = s.into_inner();
                let path = s.path.unwrap_or_else(|| DEFAULT_SOCKET.into());
                if !path.is_absolute() {
                    return self.err(span, "socket.path", "must be an absolute path");
                }
                let mode = self.mode(&s.mode, "socket.mode", 0o600)?;
                let allow = match s.allow {
                    None => vec![Allow { uid: Some(uid), gid: None }],
                    Some(list) => self.allow_list(list, "socket.allow")?,
                };
                let max_connections =
                    self.count(&s.max_connections, "socket.max_connections", DEFAULT_MAX_CONNECTIONS)?;
                let max_connections_per_uid = self.count(
                    &s.max_connections_per_uid,
                    "socket.max_connections_per_uid",
                    DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections),
                )?;
                let max_waits_per_uid = self.count(
                    &s.max_waits_per_uid,
                    "socket.max_waits_per_uid",
                    DEFAULT_MAX_WAITS_PER_UID.min(max_connections_per_uid),
                )?;
                Some(SocketConfig { path, mode, allow, max_connections, max_connections_per_uid, max_waits_per_uid })
            }
        };

        let kinds: BTreeMap<&str, &SecretSource> = secrets.iter().map(|s| (s.name.as_str(), &s.source)).collect();
        let mut files = Vec::new();
        for (i, e) in raw.env_file.into_iter().enumerate() {
            let span = e.span();
            let e = e.into_inner();
            let key = format!("env_file[{i}]");
            if !e.path.is_absolute() {
                return self.err(span, &format!("{key}.path"), "must be an absolute path");
            }
            let mode = self.mode(&e.mode, &format!("{key}.mode"), 0o600)?;
            let format = match &e.format {
                None => EnvFormat::Sh,
                Some(f) => match EnvFormat::ALL.iter().find(|(n, _)| *n == f.get_ref().as_str()) {
                    Some((_, fmt)) => *fmt,
                    None => {
                        let names: Vec<&str> = EnvFormat::ALL.iter().map(|(n, _)| *n).collect();
                        return self.err(
                            f.span(),
                            &format!("{key}.format"),
                            format!("must be one of {}", names.join(", ")),
                        );
                    }
                },
            };
            let tspan = e.template.span();
            let template = e.template.into_inner();
            let uses = crate::render::check_template(&template, &kinds)
                .or_else(|msg| self.err(tspan, &format!("{key}.template"), msg))?;
            files.push(FileSpec {
                path: e.path,
                template,
                format: FileFormat::Env(format),
                mode,
                owner: None,
                group: None,
                command: None,
                command_timeout: Duration::from_secs(30),
                inherit_env: Vec::new(),
                uses,
                bundle: None,
            });
        }
        for (i, t) in raw.template.into_iter().enumerate() {
            let span = t.span();
            let t = t.into_inner();
            let key = format!("template[{i}]");
            if !t.path.is_absolute() {
                return self.err(span, &format!("{key}.path"), "must be an absolute path");
            }
            let mode = self.mode(&t.mode, &format!("{key}.mode"), 0o600)?;
            let (tspan, template, tkey) = match (t.template, t.source) {
                (Some(inline), None) => (inline.span(), inline.into_inner(), format!("{key}.template")),
                (None, Some(src)) => {
                    let text = std::fs::read_to_string(src.get_ref())
                        .or_else(|e| self.err(src.span(), &format!("{key}.source"), format!("cannot read: {e}")))?;
                    (src.span(), text, format!("{key}.source"))
                }
                _ => return self.err(span, &key, "needs exactly one of `template` (inline) or `source` (a file)"),
            };
            let uses = crate::render::check_template(&template, &kinds).or_else(|msg| self.err(tspan, &tkey, msg))?;
            let command = match t.command {
                Some(c) if c.get_ref().is_empty() => {
                    return self.err(c.span(), &format!("{key}.command"), "must name a program: [\"prog\", \"arg\"…]");
                }
                c => c.map(Spanned::into_inner),
            };
            let command_timeout =
                self.duration(&t.command_timeout, &format!("{key}.command_timeout"), Duration::from_secs(30))?;
            let inherit_env = self.inherit_env(&t.inherit_env, &format!("{key}.inherit_env"))?;
            if let Some(b) = &t.bundle {
                let n = b.get_ref();
                if n.is_empty() || !n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
                    return self.err(b.span(), &format!("{key}.bundle"), "letters, digits, `-` and `_` only");
                }
                // One directory: one symlink switch covers the whole bundle.
                let dir = t.path.parent();
                if let Some(other) = files.iter().find(|f| f.bundle.as_ref() == Some(n) && f.path.parent() != dir) {
                    return self.err(
                        b.span(),
                        &format!("{key}.bundle"),
                        format!("files of one bundle must share a directory; {} is elsewhere", other.path.display()),
                    );
                }
            }
            files.push(FileSpec {
                path: t.path,
                template,
                format: FileFormat::Raw,
                mode,
                owner: t.owner,
                group: t.group,
                command,
                command_timeout,
                inherit_env,
                uses,
                bundle: t.bundle.map(Spanned::into_inner),
            });
        }
        let mut seen = BTreeSet::new();
        for f in &files {
            if !seen.insert(&f.path) {
                return self.err(0..0, "env_file", format!("{} is rendered twice", f.path.display()));
            }
        }
        let exec = raw.exec.map(|e| self.exec(e, &kinds)).transpose()?;

        if secrets.is_empty() {
            return self.err(0..0, "secret", "no secrets configured; add a [secret.NAME] table");
        }
        if socket.is_none() && files.is_empty() && exec.is_none() {
            return self.err(0..0, "socket", "nothing to serve secrets with; add [socket], [[env_file]] or [exec]");
        }

        let metrics = raw.metrics.map(|m| self.metrics(m)).transpose()?;
        let state = raw.state.map(|s| crate::state::validate(self, s)).transpose()?;
        Ok(Config {
            vault,
            auth,
            secrets,
            socket,
            files,
            exec,
            revoke_on_shutdown: raw.revoke_on_shutdown,
            require_memory_lock: raw.memory.is_some_and(|m| m.require_lock),
            metrics,
            state,
        })
    }

    fn exec(&self, e: Spanned<RawExec>, kinds: &BTreeMap<&str, &SecretSource>) -> Result<ExecSpec, ConfigError> {
        let span = e.span();
        let e = e.into_inner();
        let mut template = String::new();
        let mut tspan = span.clone();
        if let Some(t) = e.template {
            tspan = t.span();
            template = t.into_inner();
            if !template.is_empty() && !template.ends_with('\n') {
                template.push('\n');
            }
        }
        // The mapping is sugar for template lines.
        for (var, reference) in &e.env {
            let key = format!("exec.env.{var}");
            if !crate::render::is_env_key(var) {
                return self.err(reference.span(), &key, "not a valid environment variable name");
            }
            let r = reference.get_ref();
            let valid =
                r.split_once('.').is_some_and(|(n, k)| valid_name(n) && !k.is_empty() && !k.contains(['{', '}']));
            if !valid {
                return self.err(reference.span(), &key, "must be `secret.key`, e.g. \"db.password\"");
            }
            crate::render::check_template(&format!("{{{{ {r} }}}}"), kinds)
                .or_else(|msg| self.err(reference.span(), &key, msg))?;
            template.push_str(&format!("{var}={{{{ {r} }}}}\n"));
        }
        if template.is_empty() {
            return self.err(span, "exec", "needs `template` or an `env` mapping");
        }
        let uses =
            crate::render::check_template(&template, kinds).or_else(|msg| self.err(tspan, "exec.template", msg))?;
        let on_change = match e.on_change.as_ref().map(|v| (v.span(), v.get_ref().as_str())) {
            None | Some((_, "restart")) => OnChange::Restart,
            Some((_, "signal")) => OnChange::Signal,
            Some((_, "none")) => OnChange::None,
            Some((sp, _)) => return self.err(sp, "exec.on_change", "must be \"restart\", \"signal\" or \"none\""),
        };
        let signal = self.signal(&e.signal, "exec.signal", "SIGHUP")?;
        let stop_signal = self.signal(&e.stop_signal, "exec.stop_signal", "SIGTERM")?;
        let command = match e.command {
            Some(c) if c.get_ref().is_empty() => {
                return self.err(c.span(), "exec.command", "must name a program: [\"node\", \"server.js\"]");
            }
            c => c.map(Spanned::into_inner),
        };
        // Both or neither: a uid change alone would keep vaultlet's group,
        // a gid change alone its supplementary groups.
        let user = match (e.user, e.group) {
            (None, None) => None,
            (Some(u), Some(g)) => Some((u.into_inner(), g.into_inner())),
            (Some(u), None) => return self.err(u.span(), "exec.user", "needs exec.group too (a numeric gid)"),
            (None, Some(g)) => return self.err(g.span(), "exec.group", "needs exec.user too (a numeric uid)"),
        };
        Ok(ExecSpec {
            template,
            command,
            on_change,
            signal,
            stop_signal,
            stop_timeout: self.duration(&e.stop_timeout, "exec.stop_timeout", Duration::from_secs(10))?,
            debounce: self.duration(&e.debounce, "exec.debounce", Duration::from_secs(1))?,
            inherit_env: self.inherit_env(&e.inherit_env, "exec.inherit_env")?,
            user,
            uses,
        })
    }

    /// Names (or `PREFIX*`) of variables to pass on; vaultlet's own are refused.
    fn inherit_env(&self, v: &Option<Spanned<Vec<String>>>, key: &str) -> Result<Vec<String>, ConfigError> {
        let Some(list) = v else { return Ok(Vec::new()) };
        for (i, name) in list.get_ref().iter().enumerate() {
            let bare = name.strip_suffix('*').unwrap_or(name);
            if name != "*" && !crate::render::is_env_key(bare) {
                return self.err(
                    list.span(),
                    &format!("{key}[{i}]"),
                    "must be a variable name, or a prefix ending in `*` (e.g. \"LC_*\")",
                );
            }
            if let Some(own) = crate::exec::own_variable(name) {
                return self.err(
                    list.span(),
                    &format!("{key}[{i}]"),
                    format!("{own} is vaultlet's own and is never passed on; map what the app needs in `env`"),
                );
            }
        }
        Ok(list.get_ref().clone())
    }

    fn allow_list(&self, list: Vec<Spanned<RawAllow>>, key: &str) -> Result<Vec<Allow>, ConfigError> {
        let mut out = Vec::new();
        for (i, a) in list.into_iter().enumerate() {
            let span = a.span();
            let a = a.into_inner();
            if a.uid.is_none() && a.gid.is_none() {
                return self.err(span, &format!("{key}[{i}]"), "needs `uid`, `gid` or both");
            }
            out.push(Allow { uid: a.uid, gid: a.gid });
        }
        Ok(out)
    }

    fn metrics(&self, m: Spanned<RawMetrics>) -> Result<MetricsListen, ConfigError> {
        let span = m.span();
        let m = m.into_inner();
        match (m.listen, m.socket) {
            (Some(l), None) => l
                .get_ref()
                .parse()
                .map(MetricsListen::Tcp)
                .or_else(|_| self.err(l.span(), "metrics.listen", "not an address like \"127.0.0.1:9102\"")),
            (None, Some(p)) => {
                if !p.is_absolute() {
                    return self.err(span, "metrics.socket", "must be an absolute path");
                }
                Ok(MetricsListen::Unix(p, self.mode(&m.mode, "metrics.mode", 0o600)?))
            }
            _ => {
                self.err(span, "metrics", "needs exactly one of `listen` (TCP address) or `socket` (Unix socket path)")
            }
        }
    }

    fn signal(&self, v: &Option<Spanned<String>>, key: &str, default: &str) -> Result<i32, ConfigError> {
        let (span, name) = match v {
            Some(s) => (s.span(), s.get_ref().as_str()),
            None => (0..0, default),
        };
        signal_number(name).map_or_else(
            || {
                self.err(
                    span,
                    key,
                    "not a signal vaultlet forwards; use SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1 or SIGUSR2",
                )
            },
            Ok,
        )
    }

    fn vault(&self, v: Spanned<RawVault>) -> Result<VaultConfig, ConfigError> {
        let v = v.into_inner();
        let aspan = v.address.span();
        let list = match v.address.into_inner() {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(l) => l,
        };
        if list.is_empty() {
            return self.err(aspan, "vault.address", "needs at least one address");
        }
        let mut addresses = Vec::new();
        for a in list {
            match reqwest::Url::parse(&a) {
                Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {
                    if u.scheme() == "http" && !is_loopback(&u) {
                        if !v.allow_insecure_http {
                            return self.err(
                                aspan,
                                "vault.address",
                                "plain http to a non-loopback Vault would send tokens in clear; use https \
                                 (or set vault.allow_insecure_http = true if you really must)",
                            );
                        }
                        eprintln!(
                            "vaultlet: WARNING: vault.allow_insecure_http: tokens and secrets to {u} travel unencrypted"
                        );
                    }
                    addresses.push(u)
                }
                _ => {
                    return self.err(aspan, "vault.address", "not an http(s) URL like \"https://vault.internal:8200\"");
                }
            }
        }
        let ca_cert = match v.ca_cert {
            None => None,
            Some(p) => {
                if !p.get_ref().is_file() {
                    return self.err(p.span(), "vault.ca_cert", "file not found");
                }
                Some(p.into_inner())
            }
        };
        if let Some(ns) = &v.namespace
            && !ns.bytes().all(|b| b.is_ascii_graphic())
        {
            return self.err(0..0, "vault.namespace", "must be visible ASCII (it is sent as a header)");
        }
        let client_cert = match (v.client_cert, v.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (key, p) in [("vault.client_cert", &c), ("vault.client_key", &k)] {
                    if !p.get_ref().is_file() {
                        return self.err(p.span(), key, "file not found");
                    }
                }
                Some((c.into_inner(), k.into_inner()))
            }
            (Some(c), None) => return self.err(c.span(), "vault.client_key", "client_cert needs client_key"),
            (None, Some(k)) => return self.err(k.span(), "vault.client_cert", "client_key needs client_cert"),
        };
        Ok(VaultConfig {
            addresses,
            ca_cert,
            client_cert,
            namespace: v.namespace,
            connect_timeout: self.duration(&v.connect_timeout, "vault.connect_timeout", Duration::from_secs(5))?,
            request_timeout: self.duration(&v.request_timeout, "vault.request_timeout", Duration::from_secs(15))?,
            max_response_size: self.max_response_size(&v.max_response_size)?,
        })
    }

    /// Expands a leading `$CREDENTIALS_DIRECTORY` (or `${…}`). Unset (or not
    /// absolute), the path would be read relative to the working directory,
    /// where anyone who controls it could plant a role_id: refused.
    pub(crate) fn credential_path(&self, p: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = p.get_ref().to_string_lossy();
        for prefix in ["$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                return match &self.credentials {
                    Some(dir) if dir.is_absolute() => Ok(dir.join(rest)),
                    _ => self.err(
                        p.span(),
                        key,
                        "starts with $CREDENTIALS_DIRECTORY, which is not set to an absolute path \
                         (systemd sets it with LoadCredential=; outside the unit, set it or write the full path)",
                    ),
                };
            }
        }
        if !p.get_ref().is_absolute() {
            return self.err(p.span(), key, "must be an absolute path (or start with $CREDENTIALS_DIRECTORY/)");
        }
        Ok(p.get_ref().clone())
    }

    fn auth(&self, a: Spanned<RawAuth>) -> Result<AppRoleConfig, ConfigError> {
        let a = a.into_inner().approle.into_inner();
        let role_id_file = self.credential_path(&a.role_id_file, "auth.approle.role_id_file")?;
        let secret_id_file = self.credential_path(&a.secret_id_file, "auth.approle.secret_id_file")?;
        // The secret_id file may legitimately be missing at start when it is
        // delivered later (and it is removed after use with
        // remove_secret_id_file); the role_id file must be there.
        if !role_id_file.is_file() {
            return self.err(a.role_id_file.span(), "auth.approle.role_id_file", "file not found");
        }
        Ok(AppRoleConfig {
            mount: a.mount.unwrap_or_else(|| "approle".into()),
            role_id_file,
            secret_id_file,
            secret_id_wrapped: a.secret_id_wrapped,
            remove_secret_id_file: a.remove_secret_id_file,
        })
    }

    fn secret(&self, name: String, s: Spanned<RawSecret>) -> Result<SecretSpec, ConfigError> {
        let span = s.span();
        let s = s.into_inner();
        let key = format!("secret.{name}");
        if !valid_name(&name) {
            return self.err(span, &key, "secret names are letters, digits and `_`, starting with a letter");
        }
        let source = match (s.database, s.kv, s.pki) {
            (Some(d), None, None) => SecretSource::Database { mount: d.mount, role: d.role },
            (None, None, Some(p)) => SecretSource::Pki(self.pki(&key, p)?),
            (None, Some(k), None) => {
                let version = *k.version.get_ref();
                if version != 1 && version != 2 {
                    return self.err(k.version.span(), &format!("{key}.kv.version"), "must be 1 or 2");
                }
                SecretSource::Kv { mount: k.mount, path: k.path, version }
            }
            _ => return self.err(span, &key, "needs exactly one of `database = {…}`, `kv = {…}` or `pki = {…}`"),
        };
        let is_db = matches!(source, SecretSource::Database { .. });
        let is_pki = matches!(source, SecretSource::Pki(_));
        let refresh = self.duration(&s.refresh, &format!("{key}.refresh"), Duration::from_secs(300))?;
        let rotate_before = match &s.rotate_before {
            None => None,
            Some(_) => Some(self.duration(&s.rotate_before, &format!("{key}.rotate_before"), Duration::ZERO)?),
        };
        // A certificate is re-issued where a credential is replaced: the
        // same schedule, under the name PKI users look for.
        let rotate_before = match &s.reissue_before {
            None => rotate_before,
            Some(v) => {
                let d = self.duration(&s.reissue_before, &format!("{key}.reissue_before"), Duration::ZERO)?;
                if let SecretSource::Pki(PkiRequest { ttl: Some(ttl), .. }) = &source
                    && d >= *ttl
                {
                    return self.err(v.span(), &format!("{key}.reissue_before"), "must be shorter than pki.ttl");
                }
                Some(d)
            }
        };
        let drain = self.duration(&s.drain, &format!("{key}.drain"), Duration::from_secs(60))?;
        let verify_every = self.duration(&s.verify_every, &format!("{key}.verify_every"), DEFAULT_VERIFY_EVERY)?;
        if s.verify_every.is_some() && !(MIN_VERIFY_EVERY..=MAX_VERIFY_EVERY).contains(&verify_every) {
            let sp = s.verify_every.as_ref().map_or(0..0, |v| v.span());
            return self.err(sp, &format!("{key}.verify_every"), "must be between 1s and 1h");
        }
        let revoke_old = match s.revoke_old_after.as_ref().map(|v| (v.span(), v.get_ref().as_str())) {
            // Revoking a certificate grows the CRL: opt-in for PKI.
            None if is_pki => {
                if s.revoke_old.as_ref().is_some_and(|v| *v.get_ref()) {
                    RevokeOld::Drain
                } else {
                    RevokeOld::Never
                }
            }
            None | Some((_, "drain")) => RevokeOld::Drain,
            Some((_, "never")) => RevokeOld::Never,
            Some((sp, _)) => return self.err(sp, &format!("{key}.revoke_old_after"), "must be \"drain\" or \"never\""),
        };
        for (k, v) in [
            ("rotate_before", &s.rotate_before),
            ("revoke_old_after", &s.revoke_old_after),
            ("verify_every", &s.verify_every),
        ] {
            if let (false, Some(v)) = (is_db, v) {
                let hint = if is_pki { "; PKI secrets use reissue_before and revoke_old" } else { "" };
                return self.err(v.span(), &format!("{key}.{k}"), format!("only applies to database secrets{hint}"));
            }
        }
        if let (false, false, Some(v)) = (is_db, is_pki, &s.drain) {
            return self.err(v.span(), &format!("{key}.drain"), "only applies to database and pki secrets");
        }
        if let (false, Some(v)) = (is_pki, &s.reissue_before) {
            return self.err(v.span(), &format!("{key}.reissue_before"), "only applies to pki secrets");
        }
        if let (false, Some(v)) = (is_pki, &s.revoke_old) {
            return self.err(v.span(), &format!("{key}.revoke_old"), "only applies to pki secrets");
        }
        if let (true, Some(v)) = (is_pki, &s.refresh) {
            return self.err(
                v.span(),
                &format!("{key}.refresh"),
                "only applies to kv secrets; pki secrets follow their certificate",
            );
        }
        if let (true, Some(v)) = (is_db, &s.refresh) {
            return self.err(
                v.span(),
                &format!("{key}.refresh"),
                "only applies to kv secrets; database secrets follow their lease",
            );
        }
        let allow = s.allow.map(|l| self.allow_list(l, &format!("{key}.allow"))).transpose()?;
        Ok(SecretSpec { name, source, refresh, rotate_before, drain, revoke_old, verify_every, allow })
    }
}

impl Cx<'_> {
    fn pki(&self, key: &str, p: Spanned<RawPki>) -> Result<PkiRequest, ConfigError> {
        let p = p.into_inner();
        let key = format!("{key}.pki");
        let mount = p.mount.get_ref();
        if mount.is_empty() || !mount.split('/').all(valid_path_segment) {
            return self.err(p.mount.span(), &format!("{key}.mount"), "not a mount path (letters, digits, `-_.`, `/`)");
        }
        if !valid_path_segment(p.role.get_ref()) {
            return self.err(p.role.span(), &format!("{key}.role"), "not a role name (letters, digits, `-_.`)");
        }
        if !valid_host_name(p.common_name.get_ref()) {
            return self.err(p.common_name.span(), &format!("{key}.common_name"), "not a DNS name");
        }
        let mut alt_names = Vec::new();
        for a in &p.alt_names {
            if !valid_host_name(a.get_ref()) {
                return self.err(a.span(), &format!("{key}.alt_names"), format!("`{}` is not a DNS name", a.get_ref()));
            }
            alt_names.push(a.get_ref().clone());
        }
        let mut ip_sans = Vec::new();
        for a in &p.ip_sans {
            match a.get_ref().parse::<std::net::IpAddr>() {
                Ok(ip) => ip_sans.push(ip),
                Err(_) => {
                    return self.err(
                        a.span(),
                        &format!("{key}.ip_sans"),
                        format!("`{}` is not an IP address", a.get_ref()),
                    );
                }
            }
        }
        let ttl = match &p.ttl {
            None => None,
            Some(_) => Some(self.duration(&p.ttl, &format!("{key}.ttl"), Duration::ZERO)?),
        };
        Ok(PkiRequest {
            mount: mount.clone(),
            role: p.role.into_inner(),
            common_name: p.common_name.into_inner(),
            alt_names,
            ip_sans,
            ttl,
        })
    }
}

/// A mount or role path segment: what Vault accepts, and nothing that could
/// walk to another path (`..`, `?`, `#`, `%`).
fn valid_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS name (optionally a `*.` wildcard): labels of letters, digits and
/// `-`, at most 253 bytes.
fn valid_host_name(s: &str) -> bool {
    let body = s.strip_prefix("*.").unwrap_or(s);
    !body.is_empty()
        && s.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_loopback(u: &reqwest::Url) -> bool {
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => {
            h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// The signals `[exec]` may name, by name (with or without `SIG`).
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("SIG") {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

/// Secret names become template variables and URL segments.
pub fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic()) && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2d"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("vaultlet.toml"), src, 1000)
    }

    const GOOD: &str = r#"
[vault]
address = "http://127.0.0.1:8200"
[auth.approle]
role_id_file = "/etc/hostname"
secret_id_file = "/run/vaultlet/secret_id"
[secret.db]
database = { mount = "database", role = "api" }
[secret.api]
kv = { mount = "secret", path = "api" }
[socket]
path = "/run/vaultlet/vaultlet.sock"
[[env_file]]
path = "/run/vaultlet/app.env"
template = "DATABASE_URL=postgresql://{{ db.username }}:{{ db.password }}@db/saas\nSTRIPE={{ api.stripe_key }}\n"
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.secrets[0].name, "api");
        assert_eq!(c.secrets[0].refresh, Duration::from_secs(300));
        let s = c.socket.unwrap();
        assert_eq!(s.mode, 0o600);
        assert_eq!(s.allow, vec![Allow { uid: Some(1000), gid: None }]);
        assert_eq!(c.files[0].mode, 0o600);
        assert_eq!(c.files[0].uses.iter().collect::<Vec<_>>(), ["api", "db"]);
        assert_eq!(c.vault.request_timeout, Duration::from_secs(15));
    }

    fn expect_err(src: &str, key: &str, line: usize) -> ConfigError {
        let e = load(src).expect_err("config should be rejected");
        assert_eq!(e.key, key, "{e}");
        assert_eq!(e.line, Some(line), "{e}");
        e
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let src = GOOD.replace("[secret.db]\n", "[secret.db]\nttl = \"1h\"\n");
        let e = expect_err(&src, "secret.db.ttl", 8);
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn socket_caps_default_and_bad_ones_are_named_with_line() {
        let s = load(GOOD).unwrap().socket.unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_uid, s.max_waits_per_uid), (1024, 128, 32));
        let src = GOOD.replace("[socket]\n", "[socket]\nmax_connections = 10\nmax_waits_per_uid = 3\n");
        let s = load(&src).unwrap().socket.unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_uid, s.max_waits_per_uid), (10, 10, 3));
        let src = GOOD.replace("[socket]\n", "[socket]\nmax_connections_per_uid = 0\n");
        expect_err(&src, "socket.max_connections_per_uid", 12);
        let src = GOOD.replace("[socket]\n", "[socket]\nmax_connections = -5\n");
        expect_err(&src, "socket.max_connections", 12);
    }

    #[test]
    fn wrong_type_is_named_with_line() {
        let src = GOOD.replace("[socket]\n", "[socket]\nallow = [{ uid = \"root\" }]\n");
        expect_err(&src, "socket.allow[0].uid", 12);
    }

    #[test]
    fn bad_duration_is_named() {
        let src = GOOD.replace("path = \"api\" }\n", "path = \"api\" }\nrefresh = \"5 parsecs\"\n");
        let e = expect_err(&src, "secret.api.refresh", 11);
        assert!(e.message.contains("duration"));
        assert!(!e.to_string().contains("parsecs"), "values are not echoed: {e}");
    }

    #[test]
    fn template_with_unknown_secret_is_named() {
        let src = GOOD.replace("{{ api.stripe_key }}", "{{ stripe.key }}");
        let e = expect_err(&src, "env_file[0].template", 15);
        assert!(e.message.contains("stripe"), "{e}");
    }

    #[test]
    fn template_with_unknown_db_field_is_named() {
        let src = GOOD.replace("{{ db.password }}", "{{ db.pasword }}");
        let e = expect_err(&src, "env_file[0].template", 15);
        assert!(e.message.contains("pasword"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let src = GOOD.replace("role_id_file = \"/etc/hostname\"\n", "");
        let e = load(&src).unwrap_err();
        assert!(e.message.contains("role_id_file"), "{e}");
    }

    #[test]
    fn plain_http_to_remote_vault_is_refused() {
        let src = GOOD.replace("http://127.0.0.1:8200", "http://vault.example.com:8200");
        expect_err(&src, "vault.address", 3);
    }

    #[test]
    fn world_readable_mode_is_refused() {
        let src = GOOD.replace("path = \"/run/vaultlet/app.env\"", "path = \"/run/vaultlet/app.env\"\nmode = \"0644\"");
        expect_err(&src, "env_file[0].mode", 15);
    }

    #[test]
    fn missing_role_id_file_is_named() {
        let src = GOOD.replace("/etc/hostname", "/nonexistent/role_id");
        expect_err(&src, "auth.approle.role_id_file", 5);
    }

    fn with_pki(pki: &str, extra: &str) -> String {
        GOOD.replace("[socket]\n", &format!("[secret.tls]\npki = {{ {pki} }}\n{extra}[socket]\n"))
    }

    const PKI: &str = r#"role = "internal", common_name = "api.vaultlet.internal", alt_names = ["localhost"], ip_sans = ["127.0.0.1", "::1"], ttl = "72h""#;

    #[test]
    fn pki_secret_loads_with_defaults() {
        let c = load(&with_pki(PKI, "")).unwrap();
        let s = c.secrets.iter().find(|s| s.name == "tls").unwrap();
        let SecretSource::Pki(r) = &s.source else { panic!("not pki: {:?}", s.source) };
        assert_eq!((r.mount.as_str(), r.role.as_str()), ("pki", "internal"));
        assert_eq!(r.alt_names, ["localhost"]);
        assert_eq!(r.ip_sans, ["127.0.0.1".parse::<std::net::IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(r.ttl, Some(Duration::from_secs(72 * 3600)));
        assert_eq!(s.rotate_before, None);
        // Revoking grows the CRL: off unless asked for.
        assert_eq!(s.revoke_old, RevokeOld::Never);
        let c = load(&with_pki(PKI, "reissue_before = \"24h\"\nrevoke_old = true\ndrain = \"5m\"\n")).unwrap();
        let s = c.secrets.iter().find(|s| s.name == "tls").unwrap();
        assert_eq!(s.rotate_before, Some(Duration::from_secs(24 * 3600)));
        assert_eq!((s.revoke_old, s.drain), (RevokeOld::Drain, Duration::from_secs(300)));
    }

    #[test]
    fn bad_pki_settings_are_named_with_line() {
        let e = expect_err(&with_pki(&PKI.replace("\"::1\"", "\"localhost\""), ""), "secret.tls.pki.ip_sans", 12);
        assert!(e.message.contains("`localhost` is not an IP address"), "{e}");
        expect_err(&with_pki(&PKI.replace("72h", "soon"), ""), "secret.tls.pki.ttl", 12);
        expect_err(&with_pki(&PKI.replace("\"internal\"", "\"../sys\""), ""), "secret.tls.pki.role", 12);
        expect_err(&with_pki(&format!("mount = \"pki/../sys\", {PKI}"), ""), "secret.tls.pki.mount", 12);
        expect_err(
            &with_pki(&PKI.replace("api.vaultlet.internal", "api vaultlet"), ""),
            "secret.tls.pki.common_name",
            12,
        );
        expect_err(&with_pki(&PKI.replace("[\"localhost\"]", "[\"-x.example\"]"), ""), "secret.tls.pki.alt_names", 12);
        let e = expect_err(&with_pki(PKI, "reissue_before = \"72h\"\n"), "secret.tls.reissue_before", 13);
        assert!(e.message.contains("shorter than pki.ttl"), "{e}");
        expect_err(&with_pki(PKI, "reissue_before = \"1 day\"\n"), "secret.tls.reissue_before", 13);
        let e = expect_err(&with_pki(PKI, "rotate_before = \"1h\"\n"), "secret.tls.rotate_before", 13);
        assert!(e.message.contains("reissue_before"), "{e}");
        expect_err(&with_pki(PKI, "refresh = \"1h\"\n"), "secret.tls.refresh", 13);
        expect_err(&with_pki(PKI, "revoke_old = \"yes\"\n"), "secret.tls.revoke_old", 13);
        let src = GOOD.replace("[secret.db]\n", "[secret.db]\nreissue_before = \"1h\"\n");
        expect_err(&src, "secret.db.reissue_before", 8);
        let src = GOOD.replace("[secret.api]\n", "[secret.api]\ndrain = \"1h\"\n");
        expect_err(&src, "secret.api.drain", 10);
    }

    #[test]
    fn pki_template_fields_are_checked() {
        let t = "[[template]]\npath = \"/run/vaultlet/tls.key\"\ntemplate = \"{{ tls.private_key }}{{ tls.certificate }}\"\n";
        load(&format!("{}{t}", with_pki(PKI, ""))).unwrap();
        let bad = t.replace("tls.certificate", "tls.password");
        let e = load(&format!("{}{bad}", with_pki(PKI, ""))).unwrap_err();
        assert!(e.message.contains("pki secrets have"), "{e}");
    }

    #[test]
    fn bundle_files_share_a_directory_and_a_plain_name() {
        let t = |p: &str, b: &str| {
            format!("[[template]]\npath = \"{p}\"\ntemplate = \"{{{{ tls.certificate }}}}\"\nbundle = \"{b}\"\n")
        };
        let base = with_pki(PKI, "");
        let c = load(&format!("{base}{}{}", t("/run/tls/a.crt", "tls"), t("/run/tls/a.key", "tls"))).unwrap();
        assert_eq!(c.files.iter().filter(|f| f.bundle.as_deref() == Some("tls")).count(), 2);
        let lines = base.lines().count();
        let e = expect_err(
            &format!("{base}{}{}", t("/run/tls/a.crt", "tls"), t("/run/x/a.key", "tls")),
            "template[1].bundle",
            lines + 8,
        );
        assert!(e.message.contains("share a directory"), "{e}");
        expect_err(&format!("{base}{}", t("/run/tls/a.crt", "../x")), "template[0].bundle", lines + 4);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = load("[vault\naddress = 1").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let src = include_str!("../examples/vaultlet.toml").replace("/run/vaultlet/role_id", "/etc/hostname");
        let c = load(&src).unwrap_or_else(|e| panic!("examples/vaultlet.toml: {e}"));
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.socket.unwrap().allow.len(), 2);
    }

    #[test]
    fn unset_credentials_directory_is_refused_not_read_from_the_working_dir() {
        let src = GOOD
            .replace("/etc/hostname", "$CREDENTIALS_DIRECTORY/role_id")
            .replace("/run/vaultlet/secret_id", "${CREDENTIALS_DIRECTORY}/secret_id");
        let e = expect_err(&src, "auth.approle.role_id_file", 5);
        assert!(e.message.contains("CREDENTIALS_DIRECTORY"), "{e}");
        let e = Config::parse(Path::new("v.toml"), &src, 0, Some("relative/dir".into())).unwrap_err();
        assert_eq!(e.key, "auth.approle.role_id_file", "{e}");
        // Only the secret_id path uses it: still named.
        let src2 = GOOD.replace("/run/vaultlet/secret_id", "${CREDENTIALS_DIRECTORY}/secret_id");
        expect_err(&src2, "auth.approle.secret_id_file", 6);
    }

    #[test]
    fn exec_keys_are_checked_with_key_and_line() {
        let exec = |body: &str| format!("{GOOD}[exec]\nenv = {{ K = \"api.stripe_key\" }}\n{body}");
        let e = expect_err(&exec("inherit_env = [\"NODE_ENV\", \"VAULT_TOKEN\"]\n"), "exec.inherit_env[1]", 18);
        assert!(e.message.contains("VAULT_*"), "{e}");
        expect_err(&exec("inherit_env = [\"CREDENTIALS_DIRECTORY\"]\n"), "exec.inherit_env[0]", 18);
        expect_err(&exec("inherit_env = [\"NOT A NAME\"]\n"), "exec.inherit_env[0]", 18);
        expect_err(&exec("user = 65534\n"), "exec.user", 18);
        expect_err(&exec("group = 65534\n"), "exec.group", 18);
        let c = load(&exec("inherit_env = [\"NODE_ENV\", \"LC_*\"]\nuser = 65534\ngroup = 0\n")).unwrap();
        let x = c.exec.unwrap();
        assert_eq!(x.inherit_env, ["NODE_ENV", "LC_*"]);
        assert_eq!(x.user, Some((65534, 0)));
    }

    #[test]
    fn env_file_format_is_checked() {
        let src =
            GOOD.replace("path = \"/run/vaultlet/app.env\"", "path = \"/run/vaultlet/app.env\"\nformat = \"dotenv\"");
        let e = expect_err(&src, "env_file[0].format", 15);
        assert!(e.message.contains("dotenv-node"), "the choices are listed: {e}");
        let src =
            GOOD.replace("path = \"/run/vaultlet/app.env\"", "path = \"/run/vaultlet/app.env\"\nformat = \"docker\"");
        assert_eq!(load(&src).unwrap().files[0].format, FileFormat::Env(EnvFormat::Docker));
        assert_eq!(load(GOOD).unwrap().files[0].format, FileFormat::Env(EnvFormat::Sh), "sh by default");
    }

    #[test]
    fn credentials_directory_is_expanded() {
        let src = GOOD
            .replace("/etc/hostname", "$CREDENTIALS_DIRECTORY/role_id")
            .replace("/run/vaultlet/secret_id", "${CREDENTIALS_DIRECTORY}/secret_id");
        // Inside the unit: expanded, and the role_id file must exist.
        let dir = tempfile::tempdir().unwrap();
        let e = Config::parse(Path::new("v.toml"), &src, 0, Some(dir.path().to_owned())).unwrap_err();
        assert_eq!(e.key, "auth.approle.role_id_file");
        std::fs::write(dir.path().join("role_id"), "r").unwrap();
        let c = Config::parse(Path::new("v.toml"), &src, 0, Some(dir.path().to_owned())).unwrap();
        assert_eq!(c.auth.role_id_file, dir.path().join("role_id"));
        assert_eq!(c.auth.secret_id_file, dir.path().join("secret_id"));
    }

    #[test]
    fn max_response_size_takes_bytes_or_units_within_bounds() {
        assert_eq!(load(GOOD).unwrap().vault.max_response_size, 1 << 20);
        let with = |v: &str| GOOD.replace("[auth.approle]", &format!("max_response_size = {v}\n[auth.approle]"));
        assert_eq!(load(&with("\"512KiB\"")).unwrap().vault.max_response_size, 512 << 10);
        assert_eq!(load(&with("\"4MiB\"")).unwrap().vault.max_response_size, 4 << 20);
        assert_eq!(load(&with("65536")).unwrap().vault.max_response_size, 65536);
        for bad in ["\"1KiB\"", "\"65MiB\"", "\"lots\"", "0", "\"99999999999999999999MiB\""] {
            expect_err(&with(bad), "vault.max_response_size", 4);
        }
    }

    #[test]
    fn verify_every_defaults_to_a_minute_and_is_bounded() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.secrets[1].name, "db");
        assert_eq!(c.secrets[1].verify_every, DEFAULT_VERIFY_EVERY);
        assert!(DEFAULT_VERIFY_EVERY <= Duration::from_secs(60));
        let with = |v: &str| GOOD.replace("[secret.db]\n", &format!("[secret.db]\nverify_every = {v}\n"));
        assert_eq!(load(&with("\"2s\"")).unwrap().secrets[1].verify_every, Duration::from_secs(2));
        for bad in ["\"500ms\"", "\"2h\"", "\"soon\"", "\"0s\""] {
            expect_err(&with(bad), "secret.db.verify_every", 8);
        }
        let kv = GOOD.replace("[secret.api]\n", "[secret.api]\nverify_every = \"5s\"\n");
        let e = expect_err(&kv, "secret.api.verify_every", 10);
        assert!(e.message.contains("only applies to database secrets"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("5 m"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration(""), None);
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = include_str!("../examples/vaultlet.toml");

    fn check(src: &str) {
        let lines = src.lines().count() + 1;
        match Config::from_toml(Path::new("fuzz.toml"), src, 1000) {
            Ok(_) => {}
            Err(e) => {
                assert!(e.line.is_none_or(|l| l >= 1 && l <= lines), "line {:?} of {lines}: {e}", e.line);
                assert!(!e.message.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary text: an error or a config, never a panic.
        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,400}") {
            check(&src);
        }

        /// The shipped example with bytes deleted, inserted or lines swapped.
        #[test]
        fn mutated_example_never_panics(
            cut in 0usize..BASE.len(),
            len in 0usize..40,
            insert in "[\\[\\]{}=\"'a-z0-9._ \\n#]{0,12}",
            swap in 0usize..80,
        ) {
            let base = BASE.replace("/run/vaultlet/role_id", "/etc/hostname");
            let cut = cut.min(base.len());
            let mut s = String::new();
            let mut end = (cut + len).min(base.len());
            while !base.is_char_boundary(end) { end -= 1; }
            let mut start = cut.min(end);
            while !base.is_char_boundary(start) { start -= 1; }
            s.push_str(&base[..start]);
            s.push_str(&insert);
            s.push_str(&base[end..]);
            check(&s);
            let mut lines: Vec<&str> = base.lines().collect();
            let n = lines.len();
            lines.swap(swap % n, (swap * 7 + 3) % n);
            check(&lines.join("\n"));
        }
    }
}
