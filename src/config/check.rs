//! What no single value can check: the raw tables (`raw.rs`) → [`Config`].
//!
//! Values have already been read by their own types (`types.rs`); this is
//! what is left: keys that only make sense together (`client_cert` needs
//! `client_key`, `verify_every` only for database secrets, `reissue_before`
//! shorter than `pki.ttl`), files that must exist, templates against the
//! configured secrets (`templates.rs`), paths rendered twice, and whether
//! anything serves the secrets at all.
//!
//! Every check records its error and goes on: a step returns `None` when it
//! (or a value it needs) is in error, and the [`Config`] is built only when
//! nothing was recorded. No check here reads the network.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    Checked, RawAllow, RawAppRole, RawAuth, RawConfig, RawEnvFile, RawExec, RawJwt, RawMetrics, RawPki, RawSecret,
    RawSocket, RawTemplate, RawVault, auth_methods,
};
use super::templates::{Shape, check_template, is_env_key};
use super::types::HumanDuration;
use super::*;

impl Cx<'_> {
    /// A [`Checked`] value, `default` when absent; `None` (recorded) when
    /// its type refused it.
    fn value<T: Clone>(&self, v: &Option<Checked<T>>, key: &str, default: T) -> Option<T> {
        match v {
            None => Some(default),
            Some(c) => self.checked(c, key),
        }
    }

    fn checked<T: Clone>(&self, c: &Checked<T>, key: &str) -> Option<T> {
        match &c.value {
            Ok(v) => Some(v.clone()),
            Err(msg) => self.err(c.span.clone(), key, msg.clone()),
        }
    }

    fn duration(&self, v: &Option<Checked<HumanDuration>>, key: &str, default: Duration) -> Option<Duration> {
        self.value(v, key, HumanDuration(default)).map(|d| d.0)
    }

    fn mode(&self, v: &Option<Checked<types::FileMode>>, key: &str, default: u32) -> Option<u32> {
        self.value(v, key, types::FileMode(default)).map(|m| m.0)
    }

    pub fn validate(&self, raw: RawConfig, uid: u32) -> Option<Config> {
        let vault = raw.vault.and_then(|v| self.vault(v));
        let auth = raw.auth.and_then(|a| self.auth(a));

        let mut secrets = Vec::new();
        // Secrets whose table is in error still exist for the templates that
        // name them: their one mistake is reported once.
        let mut shapes: BTreeMap<String, Shape> =
            raw.broken.iter().filter_map(|k| k.strip_prefix("secret.")).map(|n| (n.to_owned(), Shape::Any)).collect();
        for (name, s) in raw.secret {
            match self.secret(name.clone(), s) {
                Some(spec) => {
                    shapes.insert(name, Shape::of(&spec.source));
                    secrets.push(spec);
                }
                None => drop(shapes.insert(name, Shape::Any)),
            }
        }
        let kinds: BTreeMap<&str, Shape> = shapes.iter().map(|(n, s)| (n.as_str(), *s)).collect();

        let has_socket = raw.socket.is_some() || raw.broken.contains("socket");
        let socket = match raw.socket {
            None => Some(None),
            Some(s) => self.socket(s, uid).map(Some),
        };

        let mut files = Vec::new();
        let mut files_ok = true;
        let has_files = !raw.env_file.is_empty() || !raw.template.is_empty();
        for (i, e) in raw.env_file.into_iter().enumerate() {
            match e.and_then(|e| self.env_file(i, e, &kinds)) {
                Some(f) => files.push(f),
                None => files_ok = false,
            }
        }
        for (i, t) in raw.template.into_iter().enumerate() {
            match t.and_then(|t| self.template(i, t, &kinds, &files)) {
                Some(f) => files.push(f),
                None => files_ok = false,
            }
        }
        let mut seen = BTreeSet::new();
        for f in &files {
            if !seen.insert(&f.path) {
                files_ok =
                    self.err::<()>(0..0, "env_file", format!("{} is rendered twice", f.path.display())).is_some();
            }
        }
        let has_exec = raw.exec.is_some() || raw.broken.contains("exec");
        let exec = match raw.exec {
            None => Some(None),
            Some(e) => self.exec(e, &kinds).map(Some),
        };

        if shapes.is_empty() && !raw.broken.contains("secret") {
            self.err::<()>(0..0, "secret", "no secrets configured; add a [secret.NAME] table");
        }
        if !has_socket && !has_files && !has_exec {
            self.err::<()>(0..0, "socket", "nothing to serve secrets with; add [socket], [[env_file]] or [exec]");
        }

        let metrics = match raw.metrics {
            None => Some(None),
            Some(m) => self.metrics(m).map(Some),
        };
        let state = match raw.state {
            None => Some(None),
            Some(s) => {
                let max_response = vault.as_ref().map_or(crate::limits::DEFAULT_MAX_RESPONSE, |v| v.max_response_size);
                super::state::validate(self, s, super::state::size_limit(secrets.len(), max_response)).map(Some)
            }
        };
        Some(Config {
            vault: vault?,
            auth: auth?,
            secrets,
            socket: socket?,
            files: files_ok.then_some(files)?,
            exec: exec?,
            revoke_on_shutdown: raw.revoke_on_shutdown,
            require_memory_lock: raw.memory.is_some_and(|m| m.require_lock),
            metrics: metrics?,
            state: state?,
        })
    }

    fn socket(&self, s: Spanned<RawSocket>, uid: u32) -> Option<SocketConfig> {
        let span = s.span();
        let s = s.into_inner();
        let path = s.path.unwrap_or_else(|| DEFAULT_SOCKET.into());
        let path =
            if path.is_absolute() { Some(path) } else { self.err(span, "socket.path", "must be an absolute path") };
        let mode = self.mode(&s.mode, "socket.mode", 0o600);
        let allow = match s.allow {
            None => Some(vec![Allow { uid: Some(uid), gid: None }]),
            Some(list) => self.allow_list(list, "socket.allow"),
        };
        let count = |v: &Option<Checked<types::Count>>, key: &str, default: usize| {
            self.value(v, key, types::Count(default)).map(|c| c.0)
        };
        let max_connections = count(&s.max_connections, "socket.max_connections", DEFAULT_MAX_CONNECTIONS);
        // The per-uid defaults never exceed the limit above them.
        let max_connections_per_uid = count(
            &s.max_connections_per_uid,
            "socket.max_connections_per_uid",
            DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)),
        );
        let max_waits_per_uid = count(
            &s.max_waits_per_uid,
            "socket.max_waits_per_uid",
            DEFAULT_MAX_WAITS_PER_UID.min(max_connections_per_uid.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_UID)),
        );
        Some(SocketConfig {
            path: path?,
            mode: mode?,
            allow: allow?,
            max_connections: max_connections?,
            max_connections_per_uid: max_connections_per_uid?,
            max_waits_per_uid: max_waits_per_uid?,
        })
    }

    fn env_file(&self, i: usize, e: Spanned<RawEnvFile>, kinds: &BTreeMap<&str, Shape>) -> Option<FileSpec> {
        let span = e.span();
        let e = e.into_inner();
        let key = format!("env_file[{i}]");
        let path = if e.path.is_absolute() {
            Some(e.path)
        } else {
            self.err(span, &format!("{key}.path"), "must be an absolute path")
        };
        let mode = self.mode(&e.mode, &format!("{key}.mode"), 0o600);
        let format = self.value(&e.format, &format!("{key}.format"), EnvFormat::Sh);
        let tspan = e.template.span();
        let template = e.template.into_inner();
        let uses =
            check_template(&template, kinds).map_or_else(|msg| self.err(tspan, &format!("{key}.template"), msg), Some);
        Some(FileSpec {
            path: path?,
            template,
            format: FileFormat::Env(format?),
            mode: mode?,
            owner: None,
            group: None,
            command: None,
            command_timeout: Duration::from_secs(30),
            inherit_env: Vec::new(),
            uses: uses?,
            bundle: None,
        })
    }

    fn template(
        &self,
        i: usize,
        t: Spanned<RawTemplate>,
        kinds: &BTreeMap<&str, Shape>,
        files: &[FileSpec],
    ) -> Option<FileSpec> {
        let span = t.span();
        let t = t.into_inner();
        let key = format!("template[{i}]");
        let path_ok = t.path.is_absolute()
            || self.err::<()>(span.clone(), &format!("{key}.path"), "must be an absolute path").is_some();
        let mode = self.mode(&t.mode, &format!("{key}.mode"), 0o600);
        let text = match (t.template, t.source) {
            (Some(inline), None) => Some((inline.span(), inline.into_inner(), format!("{key}.template"))),
            (None, Some(src)) => match super::read_text(src.get_ref()) {
                Ok(text) => Some((src.span(), text, format!("{key}.source"))),
                Err(e) => self.err(src.span(), &format!("{key}.source"), format!("cannot read: {e}")),
            },
            _ => self.err(span, &key, "needs exactly one of `template` (inline) or `source` (a file)"),
        };
        let (template, uses) = match text {
            Some((tspan, template, tkey)) => {
                let uses = check_template(&template, kinds).map_or_else(|msg| self.err(tspan, &tkey, msg), Some);
                (Some(template), uses)
            }
            None => (None, None),
        };
        let command = match t.command {
            Some(c) if c.get_ref().is_empty() => {
                self.err(c.span(), &format!("{key}.command"), "must name a program: [\"prog\", \"arg\"…]")
            }
            c => Some(c.map(Spanned::into_inner)),
        };
        let command_timeout =
            self.duration(&t.command_timeout, &format!("{key}.command_timeout"), Duration::from_secs(30));
        let inherit_env = self.inherit_env(&t.inherit_env, &format!("{key}.inherit_env"));
        let mut bundle_ok = true;
        if let Some(b) = &t.bundle {
            let n = b.get_ref();
            if n.is_empty() || !n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
                bundle_ok =
                    self.err::<()>(b.span(), &format!("{key}.bundle"), "letters, digits, `-` and `_` only").is_some();
            }
            // One directory: one symlink switch covers the whole bundle.
            let dir = t.path.parent();
            if let Some(other) = files.iter().find(|f| f.bundle.as_ref() == Some(n) && f.path.parent() != dir) {
                bundle_ok = self
                    .err::<()>(
                        b.span(),
                        &format!("{key}.bundle"),
                        format!("files of one bundle must share a directory; {} is elsewhere", other.path.display()),
                    )
                    .is_some();
            }
        }
        if !(path_ok && bundle_ok) {
            return None;
        }
        Some(FileSpec {
            path: t.path,
            template: template?,
            format: FileFormat::Raw,
            mode: mode?,
            owner: t.owner,
            group: t.group,
            command: command?,
            command_timeout: command_timeout?,
            inherit_env: inherit_env?,
            uses: uses?,
            bundle: t.bundle.map(Spanned::into_inner),
        })
    }

    fn exec(&self, e: Spanned<RawExec>, kinds: &BTreeMap<&str, Shape>) -> Option<ExecSpec> {
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
        let mut env_ok = true;
        for (var, reference) in &e.env {
            let key = format!("exec.env.{var}");
            if !is_env_key(var) {
                env_ok = self.err::<()>(reference.span(), &key, "not a valid environment variable name").is_some();
                continue;
            }
            let r = reference.get_ref();
            let valid =
                r.split_once('.').is_some_and(|(n, k)| valid_name(n) && !k.is_empty() && !k.contains(['{', '}']));
            if !valid {
                env_ok = self.err::<()>(reference.span(), &key, "must be `secret.key`, e.g. \"db.password\"").is_some();
                continue;
            }
            if let Err(msg) = check_template(&format!("{{{{ {r} }}}}"), kinds) {
                env_ok = self.err::<()>(reference.span(), &key, msg).is_some();
                continue;
            }
            template.push_str(&format!("{var}={{{{ {r} }}}}\n"));
        }
        let uses = if !env_ok {
            None
        } else if template.is_empty() {
            self.err(span, "exec", "needs `template` or an `env` mapping")
        } else {
            check_template(&template, kinds).map_or_else(|msg| self.err(tspan, "exec.template", msg), Some)
        };
        let on_change = self.value(&e.on_change, "exec.on_change", OnChange::Restart);
        let signal = self.value(&e.signal, "exec.signal", types::SignalName(1)).map(|s| s.0);
        let stop_signal = self.value(&e.stop_signal, "exec.stop_signal", types::SignalName(15)).map(|s| s.0);
        let command = match e.command {
            Some(c) if c.get_ref().is_empty() => {
                self.err(c.span(), "exec.command", "must name a program: [\"node\", \"server.js\"]")
            }
            c => Some(c.map(Spanned::into_inner)),
        };
        // Both or neither: a uid change alone would keep vaultlet's group,
        // a gid change alone its supplementary groups.
        let user = match (e.user, e.group) {
            (None, None) => Some(None),
            (Some(u), Some(g)) => Some(Some((u.into_inner(), g.into_inner()))),
            (Some(u), None) => self.err(u.span(), "exec.user", "needs exec.group too (a numeric gid)"),
            (None, Some(g)) => self.err(g.span(), "exec.group", "needs exec.user too (a numeric uid)"),
        };
        let stop_timeout = self.duration(&e.stop_timeout, "exec.stop_timeout", Duration::from_secs(10));
        let debounce = self.duration(&e.debounce, "exec.debounce", Duration::from_secs(1));
        let inherit_env = self.inherit_env(&e.inherit_env, "exec.inherit_env");
        Some(ExecSpec {
            template,
            command: command?,
            on_change: on_change?,
            signal: signal?,
            stop_signal: stop_signal?,
            stop_timeout: stop_timeout?,
            debounce: debounce?,
            inherit_env: inherit_env?,
            user: user?,
            uses: uses?,
        })
    }

    /// Names (or `PREFIX*`) of variables to pass on; vaultlet's own are refused.
    fn inherit_env(&self, v: &Option<Spanned<Vec<String>>>, key: &str) -> Option<Vec<String>> {
        let Some(list) = v else { return Some(Vec::new()) };
        let mut ok = true;
        for (i, name) in list.get_ref().iter().enumerate() {
            let bare = name.strip_suffix('*').unwrap_or(name);
            if name != "*" && !is_env_key(bare) {
                ok = self
                    .err::<()>(
                        list.span(),
                        &format!("{key}[{i}]"),
                        "must be a variable name, or a prefix ending in `*` (e.g. \"LC_*\")",
                    )
                    .is_some();
            } else if let Some(own) = crate::limits::own_variable(name) {
                ok = self
                    .err::<()>(
                        list.span(),
                        &format!("{key}[{i}]"),
                        format!("{own} is vaultlet's own and is never passed on; map what the app needs in `env`"),
                    )
                    .is_some();
            }
        }
        ok.then(|| list.get_ref().clone())
    }

    fn allow_list(&self, list: Vec<Spanned<RawAllow>>, key: &str) -> Option<Vec<Allow>> {
        let mut out = Some(Vec::new());
        for (i, a) in list.into_iter().enumerate() {
            let span = a.span();
            let a = a.into_inner();
            if a.uid.is_none() && a.gid.is_none() {
                out = self.err(span, &format!("{key}[{i}]"), "needs `uid`, `gid` or both");
            } else if let Some(o) = &mut out {
                o.push(Allow { uid: a.uid, gid: a.gid });
            }
        }
        out
    }

    fn metrics(&self, m: Spanned<RawMetrics>) -> Option<MetricsListen> {
        let span = m.span();
        let m = m.into_inner();
        match (m.listen, m.socket) {
            (Some(l), None) => {
                let addr = self.checked(&l, "metrics.listen")?.0;
                let who = if addr.ip().is_loopback() {
                    "every local user".to_owned()
                } else {
                    format!("every local user and every host that reaches {addr}")
                };
                self.warn(
                    "metrics.listen",
                    format!(
                        "{who} can read the metrics page (every secret's name, version and expiry; no values); \
                         use metrics.socket instead: its mode (metrics.mode, default 0600) decides who may"
                    ),
                );
                Some(MetricsListen::Tcp(addr))
            }
            (None, Some(p)) => {
                let mode = self.mode(&m.mode, "metrics.mode", 0o600);
                if !p.is_absolute() {
                    return self.err(span, "metrics.socket", "must be an absolute path");
                }
                Some(MetricsListen::Unix(p, mode?))
            }
            _ => {
                self.err(span, "metrics", "needs exactly one of `listen` (TCP address) or `socket` (Unix socket path)")
            }
        }
    }

    fn vault(&self, v: Spanned<RawVault>) -> Option<VaultConfig> {
        let v = v.into_inner();
        let aspan = v.address.span.clone();
        let addresses = self.checked(&v.address, "vault.address").and_then(|a| {
            for u in a.0.iter().filter(|u| u.scheme() == "http" && !is_loopback(u)) {
                if !v.allow_insecure_http {
                    return self.err(
                        aspan,
                        "vault.address",
                        "plain http to a non-loopback Vault would send tokens in clear; use https \
                         (or set vault.allow_insecure_http = true if you really must)",
                    );
                }
                self.warn("vault.allow_insecure_http", format!("tokens and secrets to {u} travel unencrypted"));
            }
            Some(a.0)
        });
        let ca_cert = match v.ca_cert {
            None => Some(None),
            Some(p) if self.provisioned && !p.get_ref().is_file() => {
                self.err(p.span(), "vault.ca_cert", "file not found")
            }
            Some(p) => Some(Some(p.into_inner())),
        };
        let namespace = match v.namespace {
            Some(ns) if !ns.get_ref().bytes().all(|b| b.is_ascii_graphic()) => {
                self.err(ns.span(), "vault.namespace", "must be visible ASCII (it is sent as a header)")
            }
            ns => Some(ns.map(Spanned::into_inner)),
        };
        let client_cert = match (v.client_cert, v.client_key) {
            (None, None) => Some(None),
            (Some(c), Some(k)) => {
                let mut ok = true;
                for (key, p) in [("vault.client_cert", &c), ("vault.client_key", &k)] {
                    if self.provisioned && !p.get_ref().is_file() {
                        ok = self.err::<()>(p.span(), key, "file not found").is_some();
                    }
                }
                ok.then(|| Some((c.into_inner(), k.into_inner())))
            }
            (Some(c), None) => self.err(c.span(), "vault.client_key", "client_cert needs client_key"),
            (None, Some(k)) => self.err(k.span(), "vault.client_cert", "client_key needs client_cert"),
        };
        let connect_timeout = self.duration(&v.connect_timeout, "vault.connect_timeout", Duration::from_secs(5));
        let request_timeout = self.duration(&v.request_timeout, "vault.request_timeout", Duration::from_secs(15));
        let max_response_size = self
            .value(
                &v.max_response_size,
                "vault.max_response_size",
                types::ResponseSize(crate::limits::DEFAULT_MAX_RESPONSE),
            )
            .map(|s| s.0);
        Some(VaultConfig {
            addresses: addresses?,
            ca_cert: ca_cert?,
            client_cert: client_cert?,
            namespace: namespace?,
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            max_response_size: max_response_size?,
        })
    }

    /// Expands a leading `$CREDENTIALS_DIRECTORY` (or `${…}`). Unset (or not
    /// absolute), the path would be read relative to the working directory,
    /// where anyone who controls it could plant a role_id: refused.
    pub(crate) fn credential_path(&self, p: &Spanned<PathBuf>, key: &str) -> Option<PathBuf> {
        let s = p.get_ref().to_string_lossy();
        for prefix in ["$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                return match &self.credentials {
                    Some(dir) if dir.is_absolute() => Some(dir.join(rest)),
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
        Some(p.get_ref().clone())
    }

    /// The one auth method `[auth]` names.
    fn auth(&self, a: Spanned<RawAuth>) -> Option<AuthConfig> {
        let span = a.span();
        // Every method: a line each.
        let RawAuth { approle, jwt, kubernetes } = a.into_inner();
        let mut methods = Vec::new();
        if let Some(r) = approle {
            methods.push(self.approle(r.into_inner()).map(AuthConfig::AppRole));
        }
        if let Some(r) = jwt {
            methods.push(self.jwt(r, "jwt", None).map(AuthConfig::Jwt));
        }
        if let Some(r) = kubernetes {
            methods.push(self.jwt(r, "kubernetes", Some(KUBERNETES_TOKEN_FILE)).map(AuthConfig::Kubernetes));
        }
        match methods.len() {
            0 => {
                let tables: Vec<String> = auth_methods().iter().map(|m| format!("[auth.{m}]")).collect();
                self.err(span, "auth", format!("no auth method: add one of {}", tables.join(", ")))
            }
            1 => methods.pop().flatten(),
            _ => self.err(span, "auth", "more than one auth method: vaultlet logs in with one"),
        }
    }

    fn approle(&self, a: RawAppRole) -> Option<AppRoleConfig> {
        // The secret_id file may legitimately be missing at start when it is
        // delivered later (and it is removed after use with
        // remove_secret_id_file); the role_id file must be there.
        let role_id_file = self.credential_path(&a.role_id_file, "auth.approle.role_id_file").and_then(|p| {
            if p.is_file() || !self.provisioned {
                Some(p)
            } else {
                self.err(a.role_id_file.span(), "auth.approle.role_id_file", "file not found")
            }
        });
        let secret_id_file = self.credential_path(&a.secret_id_file, "auth.approle.secret_id_file");
        Some(AppRoleConfig {
            mount: a.mount.unwrap_or_else(|| "approle".into()),
            role_id_file: role_id_file?,
            secret_id_file: secret_id_file?,
            secret_id_wrapped: a.secret_id_wrapped,
            remove_secret_id_file: a.remove_secret_id_file,
        })
    }

    /// `[auth.jwt]` or `[auth.kubernetes]` (`method`), whose `token_file`
    /// has `default_file` or must be given. The file need not exist yet: a
    /// missing token is a login error, retried, not a config error (the
    /// kubelet or an identity provider may write it after vaultlet starts).
    fn jwt(&self, a: Spanned<RawJwt>, method: &str, default_file: Option<&str>) -> Option<JwtConfig> {
        let span = a.span();
        let a = a.into_inner();
        let key = |k: &str| format!("auth.{method}.{k}");
        let mount = match &a.mount {
            None => Some(method.to_owned()),
            Some(m) if !m.get_ref().is_empty() && m.get_ref().split('/').all(valid_path_segment) => {
                Some(m.get_ref().clone())
            }
            Some(m) => self.err(m.span(), &key("mount"), "not a mount path (letters, digits, `-_.`, `/`)"),
        };
        // The role travels in the login's body, not its path; Vault's role
        // names are path segments all the same.
        let role = match valid_path_segment(a.role.get_ref()) {
            true => Some(a.role.get_ref().clone()),
            false => self.err(a.role.span(), &key("role"), "not a role name (letters, digits, `-_.`)"),
        };
        let token_file = match (&a.token_file, default_file) {
            (Some(p), _) => self.credential_path(p, &key("token_file")),
            (None, Some(d)) => Some(PathBuf::from(d)),
            (None, None) => self.err(span, &key("token_file"), "missing: the file that holds the token"),
        };
        Some(JwtConfig { mount: mount?, role: role?, token_file: token_file? })
    }

    fn secret(&self, name: String, s: Spanned<RawSecret>) -> Option<SecretSpec> {
        let span = s.span();
        let s = s.into_inner();
        let key = format!("secret.{name}");
        if !valid_name(&name) {
            return self.err(span, &key, "secret names are letters, digits and `_`, starting with a letter");
        }
        let (is_db, is_pki) = (s.database.is_some(), s.pki.is_some());
        let source = match (s.database, s.kv, s.pki) {
            (Some(d), None, None) => Some(SecretSource::Database { mount: d.mount, role: d.role }),
            (None, None, Some(p)) => self.pki(&key, p).map(SecretSource::Pki),
            (None, Some(k), None) => {
                let version = *k.version.get_ref();
                if version != 1 && version != 2 {
                    self.err(k.version.span(), &format!("{key}.kv.version"), "must be 1 or 2")
                } else {
                    Some(SecretSource::Kv { mount: k.mount, path: k.path, version })
                }
            }
            _ => return self.err(span, &key, "needs exactly one of `database = {…}`, `kv = {…}` or `pki = {…}`"),
        };
        let at = |k: &str| format!("{key}.{k}");
        let refresh = self.duration(&s.refresh, &at("refresh"), Duration::from_secs(300));
        let rotate_before = s.rotate_before.as_ref().map(|c| self.checked(c, &at("rotate_before")).map(|d| d.0));
        // A certificate is re-issued where a credential is replaced: the
        // same schedule, under the name PKI users look for.
        let rotate_before = match &s.reissue_before {
            None => rotate_before.map_or(Some(None), |r| r.map(Some)),
            Some(c) => self.checked(c, &at("reissue_before")).and_then(|d| match &source {
                Some(SecretSource::Pki(PkiRequest { ttl: Some(ttl), .. })) if d.0 >= *ttl => {
                    self.err(c.span.clone(), &at("reissue_before"), "must be shorter than pki.ttl")
                }
                _ => Some(Some(d.0)),
            }),
        };
        let drain = self.duration(&s.drain, &at("drain"), Duration::from_secs(60));
        let verify_every = self.duration(&s.verify_every, &at("verify_every"), DEFAULT_VERIFY_EVERY).and_then(|d| {
            match &s.verify_every {
                Some(c) if !(MIN_VERIFY_EVERY..=MAX_VERIFY_EVERY).contains(&d) => {
                    self.err(c.span.clone(), &at("verify_every"), "must be between 1s and 1h")
                }
                _ => Some(d),
            }
        });
        let revoke_old = match &s.revoke_old_after {
            // Revoking a certificate grows the CRL: opt-in for PKI.
            None if is_pki => match &s.revoke_old {
                Some(c) => {
                    self.checked(c, &at("revoke_old")).map(|b| if b { RevokeOld::Drain } else { RevokeOld::Never })
                }
                None => Some(RevokeOld::Never),
            },
            None => Some(RevokeOld::Drain),
            Some(c) => self.checked(c, &at("revoke_old_after")),
        };
        let mut ok = true;
        let mut misplaced = |k: &str, span: Range<usize>, msg: String| {
            ok = self.err::<()>(span, &at(k), msg).is_some();
        };
        for (k, v) in [
            ("rotate_before", s.rotate_before.as_ref().map(|c| c.span.clone())),
            ("revoke_old_after", s.revoke_old_after.as_ref().map(|c| c.span.clone())),
            ("verify_every", s.verify_every.as_ref().map(|c| c.span.clone())),
        ] {
            if let (false, Some(sp)) = (is_db, v) {
                let hint = if is_pki { "; PKI secrets use reissue_before and revoke_old" } else { "" };
                misplaced(k, sp, format!("only applies to database secrets{hint}"));
            }
        }
        if let (false, false, Some(c)) = (is_db, is_pki, &s.drain) {
            misplaced("drain", c.span.clone(), "only applies to database and pki secrets".into());
        }
        if let (false, Some(c)) = (is_pki, &s.reissue_before) {
            misplaced("reissue_before", c.span.clone(), "only applies to pki secrets".into());
        }
        if let (false, Some(c)) = (is_pki, &s.revoke_old) {
            misplaced("revoke_old", c.span.clone(), "only applies to pki secrets".into());
        }
        if let (true, Some(c)) = (is_pki, &s.refresh) {
            misplaced(
                "refresh",
                c.span.clone(),
                "only applies to kv secrets; pki secrets follow their certificate".into(),
            );
        }
        if let (true, Some(c)) = (is_db, &s.refresh) {
            misplaced(
                "refresh",
                c.span.clone(),
                "only applies to kv secrets; database secrets follow their lease".into(),
            );
        }
        let allow = match s.allow {
            None => Some(None),
            Some(l) => self.allow_list(l, &at("allow")).map(Some),
        };
        if !ok {
            return None;
        }
        Some(SecretSpec {
            name,
            source: source?,
            refresh: refresh?,
            rotate_before: rotate_before?,
            drain: drain?,
            revoke_old: revoke_old?,
            verify_every: verify_every?,
            allow: allow?,
        })
    }

    fn pki(&self, key: &str, p: Spanned<RawPki>) -> Option<PkiRequest> {
        let p = p.into_inner();
        let key = format!("{key}.pki");
        let mut ok = true;
        let mount = p.mount.get_ref();
        if mount.is_empty() || !mount.split('/').all(valid_path_segment) {
            ok &= self
                .err::<()>(p.mount.span(), &format!("{key}.mount"), "not a mount path (letters, digits, `-_.`, `/`)")
                .is_some();
        }
        if !valid_path_segment(p.role.get_ref()) {
            ok &= self
                .err::<()>(p.role.span(), &format!("{key}.role"), "not a role name (letters, digits, `-_.`)")
                .is_some();
        }
        if !valid_host_name(p.common_name.get_ref()) {
            ok &= self.err::<()>(p.common_name.span(), &format!("{key}.common_name"), "not a DNS name").is_some();
        }
        let mut alt_names = Vec::new();
        for a in &p.alt_names {
            if !valid_host_name(a.get_ref()) {
                ok &= self
                    .err::<()>(a.span(), &format!("{key}.alt_names"), format!("`{}` is not a DNS name", a.get_ref()))
                    .is_some();
            }
            alt_names.push(a.get_ref().clone());
        }
        let mut ip_sans = Vec::new();
        for a in &p.ip_sans {
            match a.get_ref().parse::<std::net::IpAddr>() {
                Ok(ip) => ip_sans.push(ip),
                Err(_) => {
                    ok &= self
                        .err::<()>(
                            a.span(),
                            &format!("{key}.ip_sans"),
                            format!("`{}` is not an IP address", a.get_ref()),
                        )
                        .is_some();
                }
            }
        }
        let ttl = match &p.ttl {
            None => Some(None),
            Some(c) => self.checked(c, &format!("{key}.ttl")).map(|d| Some(d.0)),
        };
        if !ok {
            return None;
        }
        Some(PkiRequest {
            mount: mount.clone(),
            role: p.role.into_inner(),
            common_name: p.common_name.into_inner(),
            alt_names,
            ip_sans,
            ttl: ttl?,
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
