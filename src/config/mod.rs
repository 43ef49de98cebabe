//! The configuration file: raw TOML → validated [`Config`].
//!
//! Loading happens in steps, the way ripgrep turns flags into arguments:
//!
//! * `raw.rs`: serde reads each table of the file into `Raw*` structs that
//!   reject unknown keys, one table at a time so one mistake does not hide
//!   the next;
//! * [`types`]: every value with a spelling of its own (durations, modes,
//!   signals, addresses, sizes, the string options) is a type that refuses
//!   a bad spelling as serde reads it;
//! * `check.rs`: what no single value can know (keys that go together,
//!   files that must exist, paths rendered twice);
//! * [`templates`]: each template against the configured secrets.
//!
//! The result is the [`Config`] the rest of the program uses, plus warnings
//! for the binary to print ([`Loaded`]); nothing downstream re-validates,
//! and nothing here touches the network.
//!
//! A bad file yields [`ConfigErrors`]: every problem found, in file order,
//! each naming the file, the line and the dotted key. Messages never quote
//! values from the file: the config holds no credentials itself (they live
//! in the files it points to), but an error message is the wrong place to
//! find out that someone pasted one in.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod check;
mod cx;
pub(crate) use cx::Cx;
mod raw;
pub use raw::{ConfigKey, keys};
pub mod state;
pub mod templates;
pub mod types;

/// Default path of the socket.
pub const DEFAULT_SOCKET: &str = "/run/vaultlet/vaultlet.sock";

/// Default `verify_every`: one `sys/leases/lookup` per database secret per
/// minute. A revoked lease is noticed within this bound; a minute keeps the
/// cost at about a third of a renewal rhythm for hour-long leases, and far
/// below the request budget of one sidecar (see `docs/rotation.md`).
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
    /// How to log in: the one `[auth.*]` method.
    pub auth: AuthConfig,
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
    pub state: Option<state::StateConfig>,
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

/// `[auth.*]`: the auth method vaultlet logs in with, exactly one. Each
/// variant is one method in [`crate::auth`] (its own file there).
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// `[auth.approle]`
    AppRole(AppRoleConfig),
    /// `[auth.jwt]`
    Jwt(JwtConfig),
    /// `[auth.kubernetes]`: the JWT login with the pod's service-account token.
    Kubernetes(JwtConfig),
}

impl From<AppRoleConfig> for AuthConfig {
    fn from(c: AppRoleConfig) -> AuthConfig {
        AuthConfig::AppRole(c)
    }
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

/// `[auth.jwt]` and `[auth.kubernetes]`: a role and the file holding the
/// signed token (the two differ only in their defaults).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Auth mount, default `jwt` (or `kubernetes`).
    pub mount: String,
    /// The Vault role to log in as.
    pub role: String,
    /// File holding the token, re-read on every login and never deleted.
    pub token_file: PathBuf,
}

/// Where the kubelet puts a pod's service-account token.
pub const KUBERNETES_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// What to do with the lease a replacement took over from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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

#[cfg(test)]
impl SecretSpec {
    /// A KV secret `name` with default timings, readable by `allow` (or the
    /// socket's list): for tests that need a configured secret.
    pub(crate) fn kv_for_test(name: &str, allow: Option<Vec<Allow>>) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            source: SecretSource::Kv { mount: "secret".into(), path: name.into(), version: 2 },
            refresh: Duration::from_secs(300),
            rotate_before: None,
            drain: Duration::from_secs(30),
            revoke_old: RevokeOld::Drain,
            verify_every: Duration::from_secs(3600),
            allow,
        }
    }
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

/// How the sealed state ([`crate::state`]) carries a secret of a source
/// across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Its lease and value: a live lease is taken over, no new one issued.
    Lease,
    /// Its value, served again at once (re-read on the usual schedule).
    Value,
    /// Nothing: issued anew at start (a certificate's key is not saved).
    Fresh,
}

impl SecretSource {
    /// How a restart with `[state]` treats it; the state's code asks this,
    /// never the variant, so a new kind says it here, next to its variant.
    pub fn resume(&self) -> Resume {
        match self {
            SecretSource::Database { .. } => Resume::Lease,
            SecretSource::Kv { .. } => Resume::Value,
            SecretSource::Pki(_) => Resume::Fresh,
        }
    }

    /// What identifies the source (never a value), for the sealed state's
    /// fingerprint: a saved lease is resumed only for the very source it
    /// was issued from. Changing a kind's text makes old state files of
    /// that kind start fresh.
    pub fn canonical(&self) -> String {
        match self {
            SecretSource::Database { mount, role } => format!("database\0{mount}\0{role}"),
            SecretSource::Kv { mount, path, version } => format!("kv\0{mount}\0{path}\0{version}"),
            SecretSource::Pki(r) => format!("pki\0{}\0{}\0{}", r.mount, r.role, r.common_name),
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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
    /// The config spellings, in the order `docs/outputs/files.md` lists them.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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

// === impl Config ===

/// A config that loaded, and what it loaded with that deserves a word.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Settings that are allowed but weaken something (for the binary to print).
    pub warnings: Vec<Warning>,
}

/// An allowed but risky setting, e.g. `vault.allow_insecure_http` in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Dotted key.
    pub key: String,
    /// What it means.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in the file, in file order (never empty).
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One problem per line, each in [`ConfigError`]'s format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file, reporting every problem in it. No
    /// network I/O.
    pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
        let src = read_config(path)?;
        // systemd's LoadCredential= puts role_id/secret_id in a directory
        // named by this variable; the config may refer to it.
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::parse(path, &src, current_uid(), credentials)
    }

    /// Validates config text. `uid` is the default socket allow-list entry.
    pub fn from_toml(file: &Path, src: &str, uid: u32) -> Result<Loaded, ConfigErrors> {
        Self::parse(file, src, uid, None)
    }

    /// Like [`Config::load`], but the files a run reads (role_id, CA,
    /// client certificate) need not exist yet: for `vaultlet policy` and
    /// `vaultlet import`, which come before they are provisioned.
    pub fn load_unprovisioned(path: &Path) -> Result<Loaded, ConfigErrors> {
        let src = read_config(path)?;
        Self::from_toml_unprovisioned(path, &src, current_uid())
    }

    /// [`Config::from_toml`] for a configuration whose files are not
    /// provisioned yet (see [`Config::load_unprovisioned`]).
    pub fn from_toml_unprovisioned(file: &Path, src: &str, uid: u32) -> Result<Loaded, ConfigErrors> {
        let mut cx = Cx::new(file, src, std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from));
        cx.provisioned = false;
        let config = raw::RawConfig::read(&cx, src).and_then(|raw| cx.validate(raw, uid));
        cx.finish(config)
    }

    fn parse(file: &Path, src: &str, uid: u32, credentials: Option<PathBuf>) -> Result<Loaded, ConfigErrors> {
        let cx = Cx::new(file, src, credentials);
        let config = raw::RawConfig::read(&cx, src).and_then(|raw| cx.validate(raw, uid));
        cx.finish(config)
    }
}

/// The config file's text, or the one error saying why it cannot be read.
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    read_text(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })
}

/// A config file or template source as text: a regular file of at most
/// [`crate::write::MAX_INPUT_FILE`] bytes (a FIFO or device at the path is
/// refused, not waited on or read without end).
fn read_text(path: &Path) -> Result<String, String> {
    let bytes = crate::write::read_input_file(path, crate::write::MAX_INPUT_FILE).map_err(|e| e.to_string())?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8 text".to_owned())
}

fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
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

pub use types::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `src`; a refused config must have exactly one error (so a
    /// mistake is never reported twice, or again by what depends on it).
    fn load(src: &str) -> Result<Config, ConfigError> {
        one(Config::from_toml(Path::new("vaultlet.toml"), src, 1000))
    }

    fn one(r: Result<Loaded, ConfigErrors>) -> Result<Config, ConfigError> {
        match r {
            Ok(l) => Ok(l.config),
            Err(mut e) => {
                assert_eq!(e.0.len(), 1, "one error expected:\n{e}");
                Err(e.0.remove(0))
            }
        }
    }

    fn parse_in(src: &str, credentials: Option<PathBuf>) -> Result<Config, ConfigError> {
        one(Config::parse(Path::new("v.toml"), src, 0, credentials))
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

    #[test]
    fn an_auth_table_without_a_method_is_named() {
        let src = GOOD.replace(
            "[auth.approle]\nrole_id_file = \"/etc/hostname\"\nsecret_id_file = \"/run/vaultlet/secret_id\"\n",
            "[auth]\n",
        );
        assert_ne!(src, GOOD);
        let e = expect_err(&src, "auth", 4);
        assert!(e.message.contains("no auth method") && e.message.contains("[auth.approle]"), "{e}");
        // An unknown method is an unknown key, as before.
        let e = expect_err(&GOOD.replace("[auth.approle]", "[auth.ldap]"), "auth.ldap", 4);
        assert!(e.message.contains("`approle`"), "{e}");
    }

    const APPROLE: &str =
        "[auth.approle]\nrole_id_file = \"/etc/hostname\"\nsecret_id_file = \"/run/vaultlet/secret_id\"\n";

    /// GOOD with `auth` in place of its `[auth.approle]` table (which starts on line 4).
    fn with_auth(auth: &str) -> String {
        let src = GOOD.replace(APPROLE, auth);
        assert_ne!(src, GOOD);
        src
    }

    #[test]
    fn jwt_and_kubernetes_load_with_their_defaults() {
        let c = load(&with_auth("[auth.jwt]\nrole = \"app\"\ntoken_file = \"/run/vaultlet/jwt\"\n")).unwrap();
        let AuthConfig::Jwt(j) = &c.auth else { panic!("not JWT: {:?}", c.auth) };
        assert_eq!((j.mount.as_str(), j.role.as_str()), ("jwt", "app"));
        assert_eq!(j.token_file, Path::new("/run/vaultlet/jwt"));
        let c = load(&with_auth("[auth.kubernetes]\nrole = \"app\"\nmount = \"k8s/prod\"\n")).unwrap();
        let AuthConfig::Kubernetes(k) = &c.auth else { panic!("not Kubernetes: {:?}", c.auth) };
        assert_eq!((k.mount.as_str(), k.role.as_str()), ("k8s/prod", "app"));
        assert_eq!(k.token_file, Path::new(KUBERNETES_TOKEN_FILE));
        // The token file need not exist yet: a missing token is a login error.
        let c = load(&with_auth("[auth.jwt]\nrole = \"app\"\ntoken_file = \"/nonexistent/jwt\"\n")).unwrap();
        assert!(matches!(c.auth, AuthConfig::Jwt(_)));
    }

    #[test]
    fn bad_jwt_and_kubernetes_values_are_named_with_line() {
        for method in ["jwt", "kubernetes"] {
            let t = |body: &str| with_auth(&format!("[auth.{method}]\n{body}"));
            let key = |k: &str| format!("auth.{method}.{k}");
            let file = "token_file = \"/run/vaultlet/jwt\"\n";
            expect_err(&t(&format!("role = \"\"\n{file}")), &key("role"), 5);
            expect_err(&t(&format!("role = \"a/../b\"\n{file}")), &key("role"), 5);
            expect_err(&t(&format!("role = 3\n{file}")), &key("role"), 5);
            expect_err(&t(&format!("role = \"app\"\nmount = \"../sys\"\n{file}")), &key("mount"), 6);
            expect_err(&t(&format!("role = \"app\"\nmount = \"\"\n{file}")), &key("mount"), 6);
            expect_err(&t("role = \"app\"\ntoken_file = \"relative/jwt\"\n"), &key("token_file"), 6);
            expect_err(&t("role = \"app\"\ntoken_file = [\"/a\"]\n"), &key("token_file"), 6);
            expect_err(
                &t(&format!("role = \"app\"\n{file}remove_jwt_after_reading = true\n")),
                &key("remove_jwt_after_reading"),
                7,
            );
            let e = load(&t(file)).unwrap_err();
            assert!(e.message.contains("role") && e.key.starts_with(&format!("auth.{method}")), "{e}");
        }
        // Only the Kubernetes method knows where the token is by default.
        let e = expect_err(&with_auth("[auth.jwt]\nrole = \"app\"\n"), "auth.jwt.token_file", 4);
        assert!(e.message.contains("missing"), "{e}");
    }

    #[test]
    fn two_auth_methods_at_once_are_an_error_naming_auth() {
        let both = format!("{APPROLE}[auth.kubernetes]\nrole = \"app\"\n");
        let e = load(&GOOD.replace(APPROLE, &both)).unwrap_err();
        assert_eq!(e.key, "auth", "{e}");
        assert!(e.message.contains("more than one auth method"), "{e}");
        let both = "[auth.jwt]\nrole = \"a\"\ntoken_file = \"/run/t\"\n[auth.kubernetes]\nrole = \"a\"\n";
        assert_eq!(load(&with_auth(both)).unwrap_err().key, "auth");
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
        expect_err(&with_pki(PKI, "reissue_before = \"1 fortnight\"\n"), "secret.tls.reissue_before", 13);
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
        let src = include_str!("../../examples/vaultlet.toml").replace("/run/vaultlet/role_id", "/etc/hostname");
        let c = load(&src).unwrap_or_else(|e| panic!("examples/vaultlet.toml: {e}"));
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.socket.unwrap().allow.len(), 2);
    }

    #[test]
    fn unset_credentials_directory_is_refused_not_read_from_the_working_dir() {
        let src = GOOD
            .replace("/etc/hostname", "$CREDENTIALS_DIRECTORY/role_id")
            .replace("/run/vaultlet/secret_id", "${CREDENTIALS_DIRECTORY}/secret_id");
        // Both paths use it: both are named.
        let errors = Config::from_toml(Path::new("vaultlet.toml"), &src, 1000).unwrap_err();
        let keys: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            [("auth.approle.role_id_file", Some(5)), ("auth.approle.secret_id_file", Some(6))],
            "{errors}"
        );
        assert!(errors.iter().all(|e| e.message.contains("CREDENTIALS_DIRECTORY")), "{errors}");
        let errors = Config::parse(Path::new("v.toml"), &src, 0, Some("relative/dir".into())).unwrap_err();
        assert_eq!(errors.0[0].key, "auth.approle.role_id_file", "{errors}");
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
        let e = parse_in(&src, Some(dir.path().to_owned())).unwrap_err();
        assert_eq!(e.key, "auth.approle.role_id_file");
        std::fs::write(dir.path().join("role_id"), "r").unwrap();
        let c = parse_in(&src, Some(dir.path().to_owned())).unwrap();
        let AuthConfig::AppRole(a) = &c.auth else { panic!("not AppRole") };
        assert_eq!(a.role_id_file, dir.path().join("role_id"));
        assert_eq!(a.secret_id_file, dir.path().join("secret_id"));
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
        // humantime reads spaces between a number and its unit.
        assert_eq!(parse_duration("5 m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn every_error_in_the_file_is_reported_with_its_key_and_line() {
        // Nine distinct mistakes in six tables: bad values, a structural
        // error in one secret, a key in the wrong place, a missing file.
        let src = GOOD
            .replace("address = \"http://127.0.0.1:8200\"", "address = \"http://127.0.0.1:8200\"\nrequest_timeout = \"soon\"")
            .replace("/etc/hostname", "/nonexistent/role_id")
            .replace("[secret.db]\n", "[secret.db]\nverify_every = \"2h\"\ndrain = \"later\"\n")
            .replace("[secret.api]\n", "[secret.api]\nrefresh = \"0s\"\nverify_every = \"5s\"\n")
            .replace(
                "[socket]\n",
                "[secret.broken]\nkv = { path = \"x\" }\nttl = \"1h\"\n[socket]\nmode = \"0644\"\nmax_connections = 0\n",
            );
        let errors = Config::from_toml(Path::new("vaultlet.toml"), &src, 1000).unwrap_err();
        let got: Vec<(Option<usize>, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(4), "vault.request_timeout"),
                (Some(6), "auth.approle.role_id_file"),
                (Some(9), "secret.db.verify_every"),
                (Some(10), "secret.db.drain"),
                (Some(13), "secret.api.refresh"),
                (Some(14), "secret.api.verify_every"),
                (Some(18), "secret.broken.ttl"),
                (Some(20), "socket.mode"),
                (Some(21), "socket.max_connections"),
            ],
            "\n{errors}"
        );
        assert!(errors.0[0].message.contains("not a duration"), "{errors}");
        assert!(errors.0[4].message.contains("greater than zero"), "{errors}");
        assert!(errors.0[5].message.contains("only applies to database secrets"), "{errors}");
        // One line each, in the single-error format.
        let text = errors.to_string();
        assert_eq!(text.lines().count(), 9, "{text}");
        assert!(text.lines().all(|l| l.starts_with("vaultlet.toml:")), "{text}");
        assert!(!text.contains("soon") && !text.contains("later"), "values are not echoed: {text}");
    }

    #[test]
    fn a_broken_secret_is_not_reported_again_by_the_templates_that_use_it() {
        // `db` has an unknown key; the env file that uses db.password must
        // not add "not a configured secret".
        let src = GOOD.replace("[secret.db]\n", "[secret.db]\nttl = \"1h\"\n");
        let e = load(&src).unwrap_err();
        assert_eq!(e.key, "secret.db.ttl", "{e}");
        // The same for a broken [socket]: not "nothing to serve secrets with".
        let src = GOOD.replace("[[env_file]]", "[[x]]").replace("[socket]\n", "[socket]\nbogus = 1\n");
        let errors = Config::from_toml(Path::new("v.toml"), &src, 1000).unwrap_err();
        assert!(errors.iter().all(|e| e.key != "socket" || !e.message.contains("nothing to serve")), "{errors}");
    }

    #[test]
    fn insecure_http_is_a_warning_returned_not_printed() {
        let src = GOOD
            .replace("http://127.0.0.1:8200", "http://vault.example.com:8200")
            .replace("[auth.approle]", "allow_insecure_http = true\n[auth.approle]");
        let loaded = Config::from_toml(Path::new("v.toml"), &src, 1000).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].key, "vault.allow_insecure_http");
        assert!(loaded.warnings[0].to_string().contains("travel unencrypted"), "{}", loaded.warnings[0]);
        assert!(Config::from_toml(Path::new("v.toml"), GOOD, 1000).unwrap().warnings.is_empty());
    }

    #[test]
    fn metrics_on_tcp_warn_that_every_local_user_can_read_the_names() {
        let with = |m: &str| GOOD.to_owned() + m;
        let loaded =
            Config::from_toml(Path::new("v.toml"), &with("[metrics]\nlisten = \"127.0.0.1:9102\"\n"), 1000).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(loaded.warnings[0].key, "metrics.listen");
        let w = loaded.warnings[0].to_string();
        assert!(w.contains("every local user") && w.contains("metrics.socket"), "{w}");
        let loaded =
            Config::from_toml(Path::new("v.toml"), &with("[metrics]\nlisten = \"0.0.0.0:9102\"\n"), 1000).unwrap();
        assert!(
            loaded.warnings[0].to_string().contains("every host that reaches 0.0.0.0:9102"),
            "{}",
            loaded.warnings[0]
        );
        let loaded =
            Config::from_toml(Path::new("v.toml"), &with("[metrics]\nsocket = \"/run/v/metrics.sock\"\n"), 1000)
                .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = include_str!("../../examples/vaultlet.toml");

    fn check(src: &str) {
        let lines = src.lines().count() + 1;
        match Config::from_toml(Path::new("fuzz.toml"), src, 1000) {
            Ok(_) => {}
            Err(errors) => {
                assert!(!errors.0.is_empty());
                for e in errors.iter() {
                    assert!(e.line.is_none_or(|l| l >= 1 && l <= lines), "line {:?} of {lines}: {e}", e.line);
                    assert!(!e.message.is_empty());
                }
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
