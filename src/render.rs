//! Env files: render, quote, write atomically — only when the content changed.
//!
//! Templates are minijinja with strict undefined behaviour and debug output
//! off (so an error never carries template context). Every `{{ … }}` output
//! goes through our formatter, which writes a placeholder and keeps the real
//! value aside; the rendered text is then read line by line as `KEY=VALUE`
//! and each value is re-assembled and quoted as a whole. That way a password
//! holding quotes, `$`, `#`, spaces or newlines survives both `set -a; .
//! file` in a POSIX shell and dotenv parsers, and the template author need
//! not think about quoting:
//!
//! * no `'` in the value → `'value'` (literal in sh, dotenv and Node's parser);
//! * `'` but none of `"` `\` `$` `` ` `` → `"value"` (literal in all three);
//! * otherwise sh-style `'it'"'"'s'`, exact for sh; dotenv parsers cannot
//!   represent such a value, so a warning names the key.
//!
//! Files are written to a temporary file in the same directory, created with
//! the final mode, fsynced, renamed over the destination, and the directory
//! is fsynced: a reader sees the old file or the new one, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minijinja::value::{Object, Value};
use minijinja::{Environment, UndefinedBehavior};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::{FileFormat, FileSpec, SecretSource};
use crate::secret::SecretData;
use crate::store::Snapshot;

/// Placeholder delimiters; templates may not contain them.
const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

/// How long to wait for more changes before writing, so that secrets that
/// change together (a re-read of several KV secrets, a burst of replacements)
/// cause one write. Short next to any lease: credentials reach the file well
/// before the old ones are revoked.
const BATCH: Duration = Duration::from_millis(250);

/// A rendering failure. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template failed (unknown key in a KV secret, …).
    #[error("template error: {0}")]
    Template(String),
    /// A line is not `KEY=VALUE`.
    #[error("line {0} of the rendered template is not KEY=VALUE (or a # comment)")]
    Line(usize),
    /// A value cannot go into an environment.
    #[error("value of {0} contains a NUL byte, which an environment cannot hold")]
    Nul(String),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The destination.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Config-time check of a template: it parses, refers only to configured
/// secrets, and only to `username`/`password` of database secrets. Returns
/// the secrets it uses.
pub fn check_template(template: &str, kinds: &BTreeMap<&str, &SecretSource>) -> Result<BTreeSet<String>, String> {
    if template.contains([OPEN, CLOSE, '\0']) {
        return Err("contains control characters \\x00-\\x02".into());
    }
    let env = environment();
    let t = env.template_from_str(template).map_err(|e| describe(&e))?;
    let mut uses = BTreeSet::new();
    for var in t.undeclared_variables(true) {
        let mut parts = var.splitn(3, '.');
        let name = parts.next().unwrap_or_default();
        let field = parts.next();
        match kinds.get(name) {
            None => {
                let known: Vec<&str> = kinds.keys().copied().collect();
                return Err(format!(
                    "refers to `{name}`, which is not a configured secret (known: {})",
                    known.join(", ")
                ));
            }
            Some(SecretSource::Database { .. }) => {
                if let Some(f) = field
                    && f != "username"
                    && f != "password"
                {
                    return Err(format!("refers to `{name}.{f}`; database secrets have `username` and `password`"));
                }
            }
            Some(SecretSource::Kv { .. }) => {}
        }
        uses.insert(name.to_owned());
    }
    if uses.is_empty() {
        return Err("uses no secret".into());
    }
    Ok(uses)
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = format!("{:?}", e.kind());
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(l) = e.line() {
        s.push_str(&format!(" (template line {l})"));
    }
    s
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_debug(false);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    env
}

/// A secret's fields as the template sees them; values are handed out one
/// lookup at a time.
struct Fields(Arc<SecretData>);

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Object for Fields {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let v = self.0.get(key.as_str()?)?;
        Some(Value::from(v.expose_secret()))
    }
}

/// One line of a rendered env template.
pub enum EnvLine {
    /// A comment or blank line, kept as written.
    Verbatim(String),
    /// `KEY=VALUE`, with the value assembled from template text and secrets.
    Pair {
        /// Written with `export `.
        export: bool,
        /// The variable name.
        key: String,
        /// The unquoted value.
        value: Zeroizing<String>,
    },
}

fn context(secrets: &BTreeMap<String, Arc<SecretData>>) -> BTreeMap<&str, Value> {
    secrets.iter().map(|(n, d)| (n.as_str(), Value::from_object(Fields(d.clone())))).collect()
}

/// Renders an env template into lines; values are not quoted yet.
pub fn render_env_lines(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Vec<EnvLine>, RenderError> {
    let values: Arc<Mutex<Vec<Zeroizing<String>>>> = Arc::default();
    let mut env = environment();
    let sink = values.clone();
    env.set_formatter(move |out, _state, value| {
        let mut v = sink.lock().unwrap_or_else(|p| p.into_inner());
        let idx = v.len();
        v.push(Zeroizing::new(value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string())));
        write!(out, "{OPEN}{idx}{CLOSE}")
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write"))
    });
    let rendered =
        Zeroizing::new(env.render_str(template, context(secrets)).map_err(|e| RenderError::Template(describe(&e)))?);
    drop(env);
    let values = std::mem::take(&mut *values.lock().unwrap_or_else(|p| p.into_inner()));

    let mut out = Vec::new();
    let mut lines: Vec<&str> = rendered.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    for (i, line) in lines.into_iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            if line.contains(OPEN) {
                return Err(RenderError::Line(i + 1));
            }
            out.push(EnvLine::Verbatim(line.to_owned()));
            continue;
        }
        let (export, rest) = match trimmed.strip_prefix("export ") {
            Some(r) => (true, r.trim_start()),
            None => (false, trimmed),
        };
        let Some((key, raw)) = rest.split_once('=') else { return Err(RenderError::Line(i + 1)) };
        let key = key.trim_end();
        if !is_env_key(key) {
            return Err(RenderError::Line(i + 1));
        }
        let value = expand(strip_quotes(raw.trim()), &values);
        if value.contains('\0') {
            return Err(RenderError::Nul(key.to_owned()));
        }
        out.push(EnvLine::Pair { export, key: key.to_owned(), value });
    }
    Ok(out)
}

/// Renders an env file: every value quoted for sh and dotenv.
pub fn render_env(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Zeroizing<String>, RenderError> {
    let mut lines = Vec::new();
    for line in render_env_lines(template, secrets)? {
        lines.push(match line {
            EnvLine::Verbatim(l) => (l, None),
            EnvLine::Pair { export, key, value } => {
                let (quoted, portable) = quote(&value);
                if !portable {
                    tracing::warn!(
                        key,
                        "value holds ' together with \" \\ $ or `: written for sh; dotenv parsers will not read it exactly"
                    );
                }
                (if export { format!("export {key}=") } else { format!("{key}=") }, Some(quoted))
            }
        });
    }
    // One allocation of the final size: a growing String frees its old
    // buffers unwiped, each holding the values written so far.
    let len = lines.iter().map(|(l, q)| l.len() + q.as_ref().map_or(0, |q| q.len()) + 1).sum();
    let mut out = Zeroizing::new(String::with_capacity(len));
    for (l, q) in &lines {
        out.push_str(l);
        if let Some(q) = q {
            out.push_str(q);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Renders the environment of a child process (`vaultlet exec`).
pub fn render_env_map(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Vec<(String, Zeroizing<String>)>, RenderError> {
    Ok(render_env_lines(template, secrets)?
        .into_iter()
        .filter_map(|l| match l {
            EnvLine::Pair { key, value, .. } => Some((key, value)),
            EnvLine::Verbatim(_) => None,
        })
        .collect())
}

/// Renders a `[[template]]` file: the template's output as it is.
pub fn render_raw(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Zeroizing<String>, RenderError> {
    let env = environment();
    let tpl = env.template_from_str(template).map_err(|e| RenderError::Template(describe(&e)))?;
    // minijinja's own output String grows as it renders and frees its old
    // buffers unwiped: measure the output first, then render into one
    // allocation of that size.
    let mut count = Count(0);
    tpl.render_captured_to(context(secrets), &mut count).map_err(|e| RenderError::Template(describe(&e)))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(count.0));
    tpl.render_captured_to(context(secrets), &mut *buf).map_err(|e| RenderError::Template(describe(&e)))?;
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(RenderError::Template("output is not UTF-8".into()))
        }
    }
}

/// Counts bytes written, to size a buffer before filling it.
struct Count(usize);

impl Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A valid environment variable name.
pub fn is_env_key(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn strip_quotes(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

fn expand(raw: &str, values: &[Zeroizing<String>]) -> Zeroizing<String> {
    // Two passes, the first only measuring, so the value is built in one
    // allocation (growing would free unwiped partial copies).
    let walk = |out: &mut dyn FnMut(&str)| {
        let mut rest = raw;
        while let Some(start) = rest.find(OPEN) {
            out(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find(CLOSE).unwrap_or(after.len());
            if let Some(v) = after[..end].parse::<usize>().ok().and_then(|i| values.get(i)) {
                out(v);
            }
            rest = after.get(end + 1..).unwrap_or("");
        }
        out(rest);
    };
    let mut len = 0;
    walk(&mut |s| len += s.len());
    let mut out = Zeroizing::new(String::with_capacity(len));
    walk(&mut |s| out.push_str(s));
    out
}

/// Quotes a value for sh and dotenv; the bool says whether dotenv parsers
/// read it back exactly.
pub fn quote(v: &str) -> (Zeroizing<String>, bool) {
    // Each form is built in one allocation of its exact size: growing would
    // free unwiped copies of the value.
    let quotes = v.matches('\'').count();
    if quotes == 0 || !v.contains(['"', '\\', '$', '`']) {
        let mark = if quotes == 0 { '\'' } else { '"' };
        let mut q = Zeroizing::new(String::with_capacity(v.len() + 2));
        q.push(mark);
        q.push_str(v);
        q.push(mark);
        return (q, true);
    }
    let mut q = Zeroizing::new(String::with_capacity(v.len() + 2 + 4 * quotes));
    q.push('\'');
    for c in v.chars() {
        if c == '\'' {
            q.push_str("'\"'\"'");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    (q, false)
}

/// Writes `bytes` to `path` atomically with `mode` (and owner/group when given).
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.vaultlet-{}", std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; set exactly what was asked.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if owner.is_some() || group.is_some() {
            std::os::unix::fs::fchown(&f, owner, group)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Secrets by name, as templates see them.
pub type Secrets = BTreeMap<String, Arc<SecretData>>;

/// The live values of `uses` in `snap`, with their versions for logs; `None`
/// until every one of them is available.
pub fn live_secrets(snap: &Snapshot, uses: &BTreeSet<String>) -> Option<(Secrets, Vec<String>)> {
    let now = Instant::now();
    let mut secrets = BTreeMap::new();
    let mut versions = Vec::new();
    for name in uses {
        let e = snap.get(name.as_str())?;
        secrets.insert(name.clone(), e.live(now)?.clone());
        versions.push(format!("{name}@{}", e.version));
    }
    Some((secrets, versions))
}

/// Keeps one file up to date until shutdown. `first` is told after the
/// first successful write.
pub async fn run_file(
    spec: FileSpec,
    mut rx: watch::Receiver<Snapshot>,
    shutdown: CancellationToken,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut written: Option<u64> = None;
    let mut last_error: Option<String> = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some((secrets, versions)) = live_secrets(&snap, &spec.uses) {
            match render_and_write(&spec, &secrets, &mut written).await {
                Ok(true) => {
                    tracing::info!(path = %spec.path.display(), versions = %versions.join(","), "wrote file");
                    last_error = None;
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                    if let Some(cmd) = &spec.command {
                        run_command(cmd, spec.command_timeout, &spec.path).await;
                    }
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::error!(path = %spec.path.display(), error = %msg, "file not written");
                    }
                    last_error = Some(msg);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        // Batch: secrets that change together are written once. Not before
        // the first write: nothing is written until every secret is there.
        if written.is_some() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BATCH) => {}
            }
        }
    }
}

/// Runs a file's after-change command. Its output is not captured: it goes
/// to vaultlet's own stdout/stderr, and vaultlet logs only the exit status.
async fn run_command(cmd: &[String], timeout: Duration, path: &Path) {
    let mut child = match tokio::process::Command::new(&cmd[0]).args(&cmd[1..]).kill_on_drop(true).spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(path = %path.display(), command = %cmd[0], error = %e, "cannot run after-change command");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => {
            tracing::info!(path = %path.display(), command = %cmd[0], "after-change command ran")
        }
        Ok(Ok(st)) => {
            tracing::warn!(path = %path.display(), command = %cmd[0], status = %st, "after-change command failed")
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), command = %cmd[0], error = %e, "after-change command failed")
        }
        Err(_) => {
            let _ = child.kill().await;
            tracing::warn!(path = %path.display(), command = %cmd[0], ?timeout, "after-change command timed out; killed");
        }
    }
}

async fn render_and_write(
    spec: &FileSpec,
    secrets: &BTreeMap<String, Arc<SecretData>>,
    written: &mut Option<u64>,
) -> Result<bool, RenderError> {
    let text = match spec.format {
        FileFormat::Env => render_env(&spec.template, secrets)?,
        FileFormat::Raw => render_raw(&spec.template, secrets)?,
    };
    // Compare by a keyed hash so we do not keep a second copy of the content.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let digest = h.finish();
    if *written == Some(digest) {
        return Ok(false);
    }
    let (path, mode, owner, group) = (spec.path.clone(), spec.mode, spec.owner, spec.group);
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_atomic(&p, text.as_bytes(), mode, owner, group))
        .await
        .map_err(|e| RenderError::Io { path: path.display().to_string(), source: std::io::Error::other(e) })?
        .map_err(|e| RenderError::Io { path: path.display().to_string(), source: e })?;
    *written = Some(digest);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn secrets(pairs: &[(&str, &str, &str)]) -> BTreeMap<String, Arc<SecretData>> {
        let mut m: BTreeMap<String, SecretData> = BTreeMap::new();
        for (n, k, v) in pairs {
            m.entry(n.to_string()).or_default().insert(*k, SecretString::from(v.to_string()));
        }
        m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
    }

    #[test]
    fn composes_and_quotes_whole_values() {
        let s = secrets(&[("db", "username", "v-api-1"), ("db", "password", "p@ss word$`\\"), ("api", "k", "it's")]);
        let out = render_env(
            "# comment\nURL=postgresql://{{ db.username }}:{{ db.password }}@db/x\nexport K=\"{{ api.k }}\"\n",
            &s,
        )
        .unwrap();
        assert_eq!(out.as_str(), "# comment\nURL='postgresql://v-api-1:p@ss word$`\\@db/x'\nexport K=\"it's\"\n");
    }

    /// A buffer that grows is reallocated and its old block freed without
    /// being wiped, leaving the secret written so far in free memory. Every
    /// buffer that holds a rendered secret must therefore be allocated once at
    /// its final size, which shows as capacity == length (growth doubles).
    #[test]
    fn rendered_secrets_are_built_in_one_allocation_of_their_final_size() {
        let long = "Zq7-".repeat(40);
        let nasty = format!("{long}'\"$`\\'{long}");
        let s = secrets(&[("a", "k", &long), ("a", "n", &nasty)]);
        let env = render_env("# c\nA=x{{ a.k }}y\nexport B={{ a.n }}\nC=-{{ a.k }}-{{ a.k }}-\n", &s).unwrap();
        assert!(env.contains(&long));
        assert_eq!(env.capacity(), env.len(), "env file");
        for line in render_env_lines("A=x{{ a.k }}y\nB={{ a.n }}\n", &s).unwrap() {
            if let EnvLine::Pair { value, .. } = line {
                assert!(value.contains(&long));
                assert_eq!(value.capacity(), value.len(), "expanded value");
                let (q, _) = quote(&value);
                assert_eq!(q.capacity(), q.len(), "quoted value");
            }
        }
        for v in [long.as_str(), "it's", nasty.as_str()] {
            let (q, _) = quote(v);
            assert_eq!(q.capacity(), q.len(), "quote of a {}-byte value", v.len());
        }
        let raw = render_raw(
            "{\"k\": \"{{ a.k }}\", \"k2\": \"{{ a.k }}\"}\n{% for i in range(3) %}{{ a.k }}{% endfor %}\n",
            &s,
        )
        .unwrap();
        assert!(raw.contains(&long));
        assert_eq!(raw.capacity(), raw.len(), "template file");
    }

    #[test]
    fn unknown_kv_key_is_an_error_without_values() {
        let s = secrets(&[("api", "k", "topsecret")]);
        let e = render_env("A={{ api.missing }}\n", &s).unwrap_err().to_string();
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn raw_templates_render_as_written_and_env_maps_are_unquoted() {
        let s = secrets(&[("db", "username", "u"), ("db", "password", "p'\"w")]);
        let out = render_raw("{\"user\": \"{{ db.username }}\", \"n\": {{ 1 + 1 }}}\n", &s).unwrap();
        assert_eq!(out.as_str(), "{\"user\": \"u\", \"n\": 2}\n");
        let map = render_env_map("# c\nPGUSER={{ db.username }}\nPGPASSWORD={{ db.password }}\n", &s).unwrap();
        let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("PGUSER", "u"), ("PGPASSWORD", "p'\"w")]);
    }

    #[test]
    fn bad_lines_are_rejected() {
        let s = secrets(&[("api", "k", "v")]);
        assert!(matches!(render_env("just text {{ api.k }}\n", &s), Err(RenderError::Line(1))));
        assert!(matches!(render_env("# {{ api.k }}\n", &s), Err(RenderError::Line(1))));
        assert!(matches!(render_env("1A={{ api.k }}\n", &s), Err(RenderError::Line(1))));
    }

    /// Every printable and whitespace character survives `set -a; . file` in sh.
    #[test]
    fn every_character_survives_sh() {
        let mut nasty: String = (1u8..=127).map(char::from).filter(|c| *c != '\r').collect();
        nasty.push_str("é€😀");
        for v in [nasty.clone(), nasty.replace('\'', ""), nasty.replace(['"', '\\', '$', '`'], ""), "plain".to_string()]
        {
            let (q, _) = quote(&v);
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("env");
            std::fs::write(&file, format!("X={}\n", q.as_str())).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("set -a; . \"$1\"; printf %s \"$X\"")
                .arg("sh")
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_close_together_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        let store = crate::store::Store::new(["a", "b"]);
        let data = |v: &str| {
            let mut d = SecretData::default();
            d.insert("k", SecretString::from(v.to_string()));
            d
        };
        store.publish("a", data("1"), None);
        store.publish("b", data("1"), None);
        let spec = FileSpec {
            path: path.clone(),
            template: "A={{ a.k }}\nB={{ b.k }}\n".into(),
            format: FileFormat::Env,
            mode: 0o600,
            owner: None,
            group: None,
            command: None,
            command_timeout: Duration::from_secs(1),
            uses: ["a".to_string(), "b".to_string()].into(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_file(spec, store.subscribe(), shutdown.clone(), None));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        while read().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Two changes 100 ms apart: one write with both.
        store.publish("a", data("2"), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(), "A='1'\nB='1'\n", "nothing written inside the batch window");
        store.publish("b", data("2"), None);
        while read() != "A='2'\nB='2'\n" {
            assert!(read() != "A='2'\nB='1'\n", "half-batched write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(std::fs::metadata(&path).unwrap().modified().unwrap() >= first);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn atomic_write_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        write_atomic(&p, b"A='1'\n", 0o640, None, None).unwrap();
        write_atomic(&p, b"A='2'\n", 0o600, None, None).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A='2'\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }
}
