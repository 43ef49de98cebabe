//! The file as serde reads it: `Raw*` structs that reject unknown keys.
//!
//! serde stops at the first error of whatever it deserializes, so the file
//! is not read in one go: toml parses the document into a tree first, then
//! each top-level table, each `[secret.NAME]` and each `[[env_file]]` /
//! `[[template]]` is deserialized on its own, and a mistake in one does not
//! hide the mistakes in another. Inside a table, every value with a type of
//! its own (`types.rs`) is read through [`Checked`], which records a refusal
//! and lets serde go on, so three bad durations in one secret are three
//! errors. Only structural mistakes (an unknown key, a missing one, a wrong
//! TOML type for a plain field) end their table early; the tables that are
//! in error are remembered in [`RawConfig::broken`] so the cross-field checks
//! do not report their absence as a second mistake.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::cx::Cx;
use super::types::{Count, FileMode, HumanDuration, ListenAddress, ResponseSize, SignalName, VaultAddresses};
use super::{EnvFormat, OnChange, RevokeOld};

/// A value read as `T` where a refusal does not stop the file: the span and
/// either the value or the message (our types say what to write instead
/// and never repeat the value).
pub(crate) struct Checked<T> {
    pub span: Range<usize>,
    pub value: Result<T, String>,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A toml value is a tree of its own: reading `T` from it cannot
        // leave the surrounding deserializer half-way through anything.
        let v = Spanned::<toml::Value>::deserialize(d)?;
        let span = v.span();
        let value = T::deserialize(v.into_inner()).map_err(|e| e.message().trim().replace('\n', " "));
        Ok(Checked { span, value })
    }
}

/// The whole file, table by table; a table in error is missing here and
/// named in `broken`.
#[derive(Default)]
pub(crate) struct RawConfig {
    pub vault: Option<Spanned<RawVault>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub secret: BTreeMap<String, Spanned<RawSecret>>,
    pub socket: Option<Spanned<RawSocket>>,
    /// By position: `env_file[i]` keeps its index when an earlier one failed.
    pub env_file: Vec<Option<Spanned<RawEnvFile>>>,
    pub template: Vec<Option<Spanned<RawTemplate>>>,
    pub exec: Option<Spanned<RawExec>>,
    pub revoke_on_shutdown: bool,
    pub memory: Option<RawMemory>,
    pub metrics: Option<Spanned<RawMetrics>>,
    pub state: Option<Spanned<super::state::RawState>>,
    /// Dotted keys of the tables that are present but in error.
    pub broken: BTreeSet<String>,
}

/// The top-level keys, in the order serde listed them in its message.
const TOP: &[&str] = &[
    "vault",
    "auth",
    "secret",
    "socket",
    "env_file",
    "template",
    "exec",
    "revoke_on_shutdown",
    "memory",
    "metrics",
    "state",
];

impl RawConfig {
    /// Reads the document table by table. `None` when it is not TOML at all
    /// (one syntax error, already recorded).
    pub fn read(cx: &Cx<'_>, src: &str) -> Option<RawConfig> {
        let root = match DeTable::parse(src) {
            Ok(r) => r,
            Err(e) => {
                cx.push(cx.toml_err(&e, ""));
                return None;
            }
        };
        let mut raw = RawConfig::default();
        for (k, v) in root.into_inner() {
            let name = k.get_ref().as_ref();
            match name {
                "vault" => raw.vault = table(cx, "vault", v, &mut raw.broken),
                "auth" => raw.auth = table(cx, "auth", v, &mut raw.broken),
                "socket" => raw.socket = table(cx, "socket", v, &mut raw.broken),
                "exec" => raw.exec = table(cx, "exec", v, &mut raw.broken),
                "metrics" => raw.metrics = table(cx, "metrics", v, &mut raw.broken),
                "state" => raw.state = table(cx, "state", v, &mut raw.broken),
                "memory" => raw.memory = table::<RawMemory>(cx, "memory", v, &mut raw.broken).map(Spanned::into_inner),
                "revoke_on_shutdown" => {
                    raw.revoke_on_shutdown =
                        table::<bool>(cx, "revoke_on_shutdown", v, &mut raw.broken).is_some_and(|b| *b.get_ref())
                }
                "secret" => match (v.span(), v.into_inner()) {
                    (_, DeValue::Table(t)) => {
                        for (n, s) in t {
                            let key = format!("secret.{}", n.get_ref());
                            match part(cx, &key, s) {
                                Some(s) => drop(raw.secret.insert(n.get_ref().to_string(), s)),
                                None => drop(raw.broken.insert(key)),
                            }
                        }
                    }
                    (span, other) => {
                        raw.broken.insert("secret".into());
                        drop(part::<BTreeMap<String, RawSecret>>(cx, "secret", Spanned::new(span, other)));
                    }
                },
                "env_file" => raw.env_file = items(cx, "env_file", v, &mut raw.broken),
                "template" => raw.template = items(cx, "template", v, &mut raw.broken),
                _ => {
                    let expected: Vec<String> = TOP.iter().map(|t| format!("`{t}`")).collect();
                    cx.push(cx.error(
                        k.span(),
                        name,
                        format!("unknown field `{name}`, expected one of {}", expected.join(", ")),
                    ));
                }
            }
        }
        for (key, missing) in [("vault", raw.vault.is_none()), ("auth", raw.auth.is_none())] {
            if missing && !raw.broken.contains(key) {
                // Where serde put it: the document's first line, no key.
                cx.push(cx.error(0..1, "", format!("missing field `{key}`")));
            }
        }
        Some(raw)
    }
}

/// [`part`] for a top-level key, remembered in `broken` when in error.
fn table<T: DeserializeOwned>(
    cx: &Cx<'_>,
    key: &str,
    v: Spanned<DeValue<'_>>,
    broken: &mut BTreeSet<String>,
) -> Option<Spanned<T>> {
    let r = part(cx, key, v);
    if r.is_none() {
        broken.insert(key.to_owned());
    }
    r
}

/// Deserializes one table (or value) on its own; an error is recorded under
/// `key` plus serde's path inside it.
fn part<T: DeserializeOwned>(cx: &Cx<'_>, key: &str, v: Spanned<DeValue<'_>>) -> Option<Spanned<T>> {
    let span = v.span();
    match serde_path_to_error::deserialize::<_, T>(ValueDeserializer::from(v)) {
        Ok(t) => Some(Spanned::new(span, t)),
        Err(e) => {
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let full = match path.as_str() {
                "." | "" => key.to_owned(),
                p if p.starts_with('[') => format!("{key}{p}"),
                p => format!("{key}.{p}"),
            };
            cx.push(cx.toml_err(e.inner(), &full));
            None
        }
    }
}

/// An array of tables, element by element, so `[[env_file]]` 2 is checked
/// even when 1 is in error.
fn items<T: DeserializeOwned>(
    cx: &Cx<'_>,
    key: &str,
    v: Spanned<DeValue<'_>>,
    broken: &mut BTreeSet<String>,
) -> Vec<Option<Spanned<T>>> {
    let span = v.span();
    match v.into_inner() {
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let r = part(cx, &format!("{key}[{i}]"), item.clone());
                if r.is_none() {
                    broken.insert(key.to_owned());
                }
                r
            })
            .collect(),
        other => {
            broken.insert(key.to_owned());
            // Not an array: serde's own message ("expected a sequence").
            drop(part::<Vec<T>>(cx, key, Spanned::new(span, other)));
            Vec::new()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemory {
    #[serde(default)]
    pub require_lock: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<Checked<ListenAddress>>,
    pub socket: Option<PathBuf>,
    pub mode: Option<Checked<FileMode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    pub address: Checked<VaultAddresses>,
    pub ca_cert: Option<Spanned<PathBuf>>,
    pub namespace: Option<Spanned<String>>,
    pub connect_timeout: Option<Checked<HumanDuration>>,
    pub request_timeout: Option<Checked<HumanDuration>>,
    pub client_cert: Option<Spanned<PathBuf>>,
    pub client_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub allow_insecure_http: bool,
    pub max_response_size: Option<Checked<ResponseSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub approle: Option<Spanned<RawAppRole>>,
    pub jwt: Option<Spanned<RawJwt>>,
    pub kubernetes: Option<Spanned<RawJwt>>,
}

/// The auth methods `[auth]` may hold (`approle`…), as its keys.
pub(crate) fn auth_methods() -> &'static [&'static str] {
    fields_of::<RawAuth>()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppRole {
    pub mount: Option<String>,
    pub role_id_file: Spanned<PathBuf>,
    pub secret_id_file: Spanned<PathBuf>,
    #[serde(default)]
    pub secret_id_wrapped: bool,
    #[serde(default)]
    pub remove_secret_id_file: bool,
}

/// `[auth.jwt]` and `[auth.kubernetes]` (whose `token_file` has a default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub mount: Option<Spanned<String>>,
    pub role: Spanned<String>,
    pub token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub database: Option<RawDatabase>,
    pub kv: Option<RawKv>,
    pub pki: Option<Spanned<RawPki>>,
    pub refresh: Option<Checked<HumanDuration>>,
    pub rotate_before: Option<Checked<HumanDuration>>,
    pub reissue_before: Option<Checked<HumanDuration>>,
    pub revoke_old: Option<Checked<bool>>,
    pub drain: Option<Checked<HumanDuration>>,
    pub revoke_old_after: Option<Checked<RevokeOld>>,
    pub verify_every: Option<Checked<HumanDuration>>,
    pub allow: Option<Vec<Spanned<RawAllow>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    #[serde(default = "default_db_mount")]
    pub mount: String,
    pub role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPki {
    #[serde(default = "default_pki_mount")]
    pub mount: Spanned<String>,
    pub role: Spanned<String>,
    pub common_name: Spanned<String>,
    #[serde(default)]
    pub alt_names: Vec<Spanned<String>>,
    #[serde(default)]
    pub ip_sans: Vec<Spanned<String>>,
    pub ttl: Option<Checked<HumanDuration>>,
}

fn default_pki_mount() -> Spanned<String> {
    Spanned::new(0..0, "pki".into())
}

fn default_db_mount() -> String {
    "database".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKv {
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    pub path: String,
    #[serde(default = "default_kv_version")]
    pub version: Spanned<u8>,
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_kv_version() -> Spanned<u8> {
    Spanned::new(0..0, 2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSocket {
    pub path: Option<PathBuf>,
    pub mode: Option<Checked<FileMode>>,
    pub allow: Option<Vec<Spanned<RawAllow>>>,
    pub max_connections: Option<Checked<Count>>,
    pub max_connections_per_uid: Option<Checked<Count>>,
    pub max_waits_per_uid: Option<Checked<Count>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvFile {
    pub path: PathBuf,
    pub template: Spanned<String>,
    pub mode: Option<Checked<FileMode>>,
    pub format: Option<Checked<EnvFormat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTemplate {
    pub path: PathBuf,
    pub template: Option<Spanned<String>>,
    pub source: Option<Spanned<PathBuf>>,
    pub mode: Option<Checked<FileMode>>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub command: Option<Spanned<Vec<String>>>,
    pub command_timeout: Option<Checked<HumanDuration>>,
    pub inherit_env: Option<Spanned<Vec<String>>>,
    pub bundle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExec {
    pub template: Option<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub on_change: Option<Checked<OnChange>>,
    pub signal: Option<Checked<SignalName>>,
    pub stop_signal: Option<Checked<SignalName>>,
    pub stop_timeout: Option<Checked<HumanDuration>>,
    pub debounce: Option<Checked<HumanDuration>>,
    pub inherit_env: Option<Spanned<Vec<String>>>,
    pub user: Option<Spanned<u32>>,
    pub group: Option<Spanned<u32>>,
}

// === the accepted keys ===

/// One key a configuration file may hold, dotted: `vault.address`,
/// `secret.NAME.database.role`, `env_file.path`. `NAME` stands for a name
/// the user picks (a secret, an `exec.env` variable); the entries of
/// `[[env_file]]`, `[[template]]` and the `allow` lists take no index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigKey {
    /// The dotted path.
    pub path: String,
    /// A table (or array of tables, or map) holding more keys, rather than
    /// a value.
    pub table: bool,
}

/// Every key the loader accepts, tables first then their keys, in the order
/// serde knows them. The keys of each table are the field names its `Raw*`
/// struct hands serde (the same list `deny_unknown_fields` checks against),
/// and the top level is `TOP`, so a key added to the loader appears here
/// by itself; only a new nested table needs a line in `nested`.
pub fn keys() -> Vec<ConfigKey> {
    fn walk(path: String, out: &mut Vec<ConfigKey>) {
        match nested(&path) {
            Some(fields) => {
                out.push(ConfigKey { path: path.clone(), table: true });
                for f in fields {
                    walk(format!("{path}.{f}"), out);
                }
            }
            None => out.push(ConfigKey { path, table: false }),
        }
    }
    let mut out = Vec::new();
    for top in TOP {
        walk((*top).to_owned(), &mut out);
    }
    out
}

/// The keys of the table at `path`, or `None` for a value: the nesting that
/// [`RawConfig::read`] and the `Raw*` field types spell out.
fn nested(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "vault" => fields_of::<RawVault>(),
        "auth" => fields_of::<RawAuth>(),
        "auth.approle" => fields_of::<RawAppRole>(),
        "auth.jwt" | "auth.kubernetes" => fields_of::<RawJwt>(),
        "secret" | "exec.env" => &["NAME"],
        "secret.NAME" => fields_of::<RawSecret>(),
        "secret.NAME.database" => fields_of::<RawDatabase>(),
        "secret.NAME.kv" => fields_of::<RawKv>(),
        "secret.NAME.pki" => fields_of::<RawPki>(),
        "secret.NAME.allow" | "socket.allow" => fields_of::<RawAllow>(),
        "socket" => fields_of::<RawSocket>(),
        "env_file" => fields_of::<RawEnvFile>(),
        "template" => fields_of::<RawTemplate>(),
        "exec" => fields_of::<RawExec>(),
        "memory" => fields_of::<RawMemory>(),
        "metrics" => fields_of::<RawMetrics>(),
        "state" => fields_of::<super::state::RawState>(),
        _ => return None,
    })
}

/// The field names serde's derived `Deserialize` for `T` accepts: it hands
/// them to `deserialize_struct`, where this deserializer takes them and
/// stops.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};

    struct Fields<'a>(&'a std::cell::Cell<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, value::Error> {
            self.0.set(fields);
            Err(value::Error::custom("fields taken"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let fields = std::cell::Cell::new(&[][..]);
    let _: Result<T, _> = T::deserialize(Fields(&fields));
    fields.get()
}
