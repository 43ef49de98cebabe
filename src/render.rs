//! Env files: render, encode, write atomically — only when the content changed.
//!
//! Templates are minijinja with strict undefined behaviour and debug output
//! off (so an error never carries template context). Every `{{ … }}` output
//! goes through our formatter, which writes a placeholder and keeps the real
//! value aside; the rendered text is then read line by line as `KEY=VALUE`
//! and each value is re-assembled and encoded as a whole for the reader the
//! file's `format` names, so the template author need not think about
//! quoting. Readers disagree about quotes, backslashes and `$`, so each
//! format has its own encoding ([`encode`]), proven against the real parser
//! in `tests/env_formats.rs`; a value that reader cannot hold exactly is
//! refused (the error names the key, never the value) and the old file is
//! kept:
//!
//! * `sh` (default): `'value'`, or `"value"` when it holds `'` but none of
//!   `"` `\` `$` `` ` ``, else `'it'"'"'s'`. Any value but NUL.
//! * `docker` (`docker run --env-file`): `KEY=value` verbatim; no line
//!   breaks, no trailing carriage return, lines under 64 KiB.
//! * `systemd` (`EnvironmentFile=`): `"value"` with `"` `\` `` ` `` `$`
//!   backslash-escaped; no Unicode noncharacters or U+FEFF.
//! * `dotenv-node` (npm `dotenv`): `'value'`, `` `value` `` or `"value"`,
//!   whichever quote the value lacks; `\r` only in `"…"`; no trailing `\`.
//! * `dotenv-python` (python-dotenv): `"value"` with `\\`, `\"`, `\n`, `\r`;
//!   no `${…}` (it would be expanded) and no trailing `\`.
//!
//! `[[template]]`s whose path ends in `.json` are escaped by context: a
//! value inside a JSON string is escaped as string content, a value outside
//! one becomes a JSON string of its own, so no value can add a key. `.yaml`
//! and `.yml` likewise, where YAML allows an exact escape, and refused
//! elsewhere ([`render_yaml`]). Other templates are written as rendered.
//!
//! Files are written to a temporary file in the same directory, created with
//! the final mode, fsynced, renamed over the destination, and the directory
//! is fsynced: a reader sees the old file or the new one, never half of one
//! (`src/write.rs`: unguessable temporary names, no symlink followed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minijinja::value::{Object, Value, ValueKind};
use minijinja::{Environment, UndefinedBehavior};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::{EnvFormat, FileFormat, FileSpec, SecretSource};
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
    /// The file's reader cannot hold a value exactly.
    #[error("value of {key} cannot be written for {format}: {why}")]
    Unencodable {
        /// The variable.
        key: String,
        /// The `format`.
        format: &'static str,
        /// What in the value the reader would split or alter.
        why: &'static str,
    },
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
            Some(SecretSource::Pki(_)) => {
                if let Some(f) = field
                    && !crate::lease::pki::FIELDS.contains(&f)
                {
                    return Err(format!(
                        "refers to `{name}.{f}`; pki secrets have {}",
                        crate::lease::pki::FIELDS.map(|f| format!("`{f}`")).join(", ")
                    ));
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

/// Renders an env file: every value encoded for the file's reader.
pub fn render_env(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
    format: EnvFormat,
) -> Result<Zeroizing<String>, RenderError> {
    let mut lines = Vec::new();
    for line in render_env_lines(template, secrets)? {
        lines.push(match line {
            EnvLine::Verbatim(l) => (l, None),
            EnvLine::Pair { export, key, value } => {
                let quoted = encode(format, &key, &value).map_err(|why| RenderError::Unencodable {
                    key: key.clone(),
                    format: format.name(),
                    why,
                })?;
                // docker and systemd have no `export`: docker would take
                // `export KEY` for the name and refuse the file.
                let export = export && !matches!(format, EnvFormat::Docker | EnvFormat::Systemd);
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
    let mut buf = crate::secret::written_once(|w| tpl.render_captured_to(context(secrets), w).map(drop))
        .map_err(|e| RenderError::Template(describe(&e)))?;
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(RenderError::Template("output is not UTF-8".into()))
        }
    }
}

/// A value kept aside while a template renders: (text as shown, as a JSON
/// value).
type Slot = (Zeroizing<String>, Zeroizing<String>);

/// Renders `template` with every output replaced by a placeholder; the
/// values come back beside the text, so the caller can escape each one for
/// where it landed.
fn render_slots(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<(Zeroizing<String>, Vec<Slot>), RenderError> {
    let values: Arc<Mutex<Vec<Slot>>> = Arc::default();
    let mut env = environment();
    let sink = values.clone();
    env.set_formatter(move |out, _state, value| {
        let mut v = sink.lock().unwrap_or_else(|p| p.into_inner());
        let idx = v.len();
        let shown = Zeroizing::new(value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()));
        let json = Zeroizing::new(match value.kind() {
            ValueKind::String => serde_json::to_string(shown.as_str()).unwrap_or_default(),
            ValueKind::Number | ValueKind::Bool => value.to_string(),
            ValueKind::None | ValueKind::Undefined => "null".to_owned(),
            _ => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "only strings, numbers and booleans are written into a JSON or YAML template",
                ));
            }
        });
        v.push((shown, json));
        write!(out, "{OPEN}{idx}{CLOSE}")
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write"))
    });
    let rendered =
        Zeroizing::new(env.render_str(template, context(secrets)).map_err(|e| RenderError::Template(describe(&e)))?);
    drop(env);
    let values = std::mem::take(&mut *values.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((rendered, values))
}

/// The placeholder at the start of `rest` (just after [`OPEN`]): its slot
/// and the text after it.
fn slot<'a, 'v>(rest: &'a str, values: &'v [Slot]) -> (Option<&'v Slot>, &'a str) {
    let end = rest.find(CLOSE).unwrap_or(rest.len());
    (rest[..end].parse::<usize>().ok().and_then(|i| values.get(i)), rest.get(end + 1..).unwrap_or(""))
}

/// `s` as the content of a JSON (or YAML double-quoted) string, without
/// the quotes.
fn json_body(s: &str) -> Zeroizing<String> {
    let q = Zeroizing::new(serde_json::to_string(s).unwrap_or_default());
    Zeroizing::new(q.get(1..q.len().saturating_sub(1)).unwrap_or_default().to_owned())
}

/// Renders a JSON `[[template]]`: a value inside a JSON string literal is
/// escaped as string content, a value outside one is written as a JSON
/// value of its own (a string for secrets), so the structure is the
/// template's whatever the values hold.
pub fn render_json(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Zeroizing<String>, RenderError> {
    let (rendered, values) = render_slots(template, secrets)?;
    // Room for every value in its longest form, so the buffer never grows
    // (growing would free unwiped copies of the values).
    let room = rendered.len() + values.iter().map(|(shown, json)| shown.len() + json.len()).sum::<usize>();
    let mut out = Zeroizing::new(String::with_capacity(room));
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = rendered.as_str();
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        if c == OPEN {
            let (v, after) = slot(rest, &values);
            if escaped {
                // The template's `\` would escape the value's first character.
                return Err(RenderError::Template("a value right after a backslash in a JSON string".into()));
            }
            if let Some((shown, json)) = v {
                out.push_str(if in_string { json_body(shown) } else { json.clone() }.as_str());
            }
            rest = after;
            escaped = false;
            continue;
        }
        out.push(c);
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            _ => {}
        }
    }
    Ok(out)
}

/// Renders a YAML `[[template]]`. A value may stand:
///
/// * as a whole scalar (`key: {{ v }}`, `- {{ v }}`): written as a JSON
///   string, which YAML reads as a double-quoted scalar;
/// * inside `"…"`: escaped as JSON string content (valid YAML escapes);
/// * inside `'…'`: `'` doubled; control characters refused (YAML folds
///   line breaks there);
/// * on a line of a block scalar (`|`, `>`): as it is, line breaks refused
///   (they would end the block).
///
/// Anywhere else (inside a plain scalar, in a comment) the template is
/// refused: vaultlet cannot tell what the value would become.
pub fn render_yaml(
    template: &str,
    secrets: &BTreeMap<String, Arc<SecretData>>,
) -> Result<Zeroizing<String>, RenderError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Q {
        Plain,
        Double,
        Single,
    }
    let (rendered, values) = render_slots(template, secrets)?;
    let bad = |n: usize, why: &str| RenderError::Template(format!("line {n} of the rendered YAML: {why}"));
    // Room for every value in its longest form ('…' doubles quotes), so the
    // buffer never grows (growing would free unwiped copies of the values).
    let room = rendered.len() + values.iter().map(|(shown, json)| 2 * shown.len() + json.len()).sum::<usize>();
    let mut out = Zeroizing::new(String::with_capacity(room));
    let mut q = Q::Plain;
    let mut escaped = false;
    // Indentation of the line that opened a block scalar.
    let mut block: Option<usize> = None;
    for (i, line) in rendered.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let (Q::Plain, Some(parent)) = (q, block) {
            if line.trim().is_empty() || indent > parent {
                let mut rest = line;
                while let Some(start) = rest.find(OPEN) {
                    out.push_str(&rest[..start]);
                    let (v, after) = slot(&rest[start + 1..], &values);
                    if let Some((shown, _)) = v {
                        if shown.contains(['\n', '\r']) {
                            return Err(bad(n, "a value with a line break inside a block scalar"));
                        }
                        out.push_str(shown);
                    }
                    rest = after;
                }
                out.push_str(rest);
                continue;
            }
            block = None;
        }
        let line_start = out.len();
        let mut code_end: Option<usize> = None;
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            // Where a scalar may begin: at the line's start or after an indicator.
            let so_far = &out[line_start..];
            let before = so_far.trim_end();
            let scalar_start = before.is_empty() || before.ends_with([':', '-', '?', '[', '{', ',']);
            let after_space = so_far.chars().next_back().is_none_or(char::is_whitespace);
            if c == OPEN {
                let (v, after) = slot(rest, &values);
                if escaped {
                    return Err(bad(n, "a value right after a backslash in \"…\""));
                }
                if let Some((shown, json)) = v {
                    match (code_end.is_some(), q) {
                        (true, _) => return Err(bad(n, "a value inside a comment")),
                        (false, Q::Double) => out.push_str(&json_body(shown)),
                        (false, Q::Single) => {
                            if shown.chars().any(char::is_control) {
                                return Err(bad(
                                    n,
                                    "a value with a line break or control character inside '…'; use \"…\"",
                                ));
                            }
                            out.push_str(&shown.replace('\'', "''"));
                        }
                        (false, Q::Plain) => {
                            let next = after.split('\n').next().unwrap_or_default().trim_start();
                            let scalar_end = next.is_empty() || next.starts_with(['#', ',', ']', '}', ':']);
                            if !(scalar_start && scalar_end) {
                                return Err(bad(n, "a value inside a plain scalar; put the whole scalar in \"…\""));
                            }
                            out.push_str(json);
                        }
                    }
                }
                rest = after;
                escaped = false;
                continue;
            }
            out.push(c);
            if code_end.is_some() {
                continue;
            }
            match q {
                Q::Double if escaped => escaped = false,
                Q::Double if c == '\\' => escaped = true,
                Q::Double if c == '"' => q = Q::Plain,
                Q::Single if c == '\'' => q = Q::Plain,
                Q::Plain if c == '"' && scalar_start => q = Q::Double,
                Q::Plain if c == '\'' && scalar_start => q = Q::Single,
                Q::Plain if c == '#' && after_space => {
                    code_end = Some(out.len() - 1);
                }
                _ => {}
            }
        }
        if q == Q::Plain {
            let code = out[line_start..code_end.unwrap_or(out.len())].trim_end();
            let header = code.rsplit([' ', '\t']).next().unwrap_or_default();
            let opens = header.starts_with(['|', '>'])
                && header[1..].chars().all(|c| matches!(c, '+' | '-' | '1'..='9'))
                && code[..code.len() - header.len()].trim_end().ends_with([':', '-'])
                || code == header && header.starts_with(['|', '>']);
            if opens {
                block = Some(indent);
            }
        }
    }
    Ok(out)
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

/// Encodes a value (of variable `key`) so that the reader of `format` reads
/// it back exactly, or says why it cannot.
pub fn encode(format: EnvFormat, key: &str, v: &str) -> Result<Zeroizing<String>, &'static str> {
    let wrap = |q: char, body: &str| {
        let mut s = Zeroizing::new(String::with_capacity(body.len() + 2));
        s.push(q);
        s.push_str(body);
        s.push(q);
        s
    };
    // `"…"` with a backslash before each of `special`, and with `\n`/`\r`
    // for line breaks when `controls`.
    let escape = |v: &str, special: &[char], controls: bool| {
        // Each escape adds one character: allocate the exact size once
        // (growing would free unwiped copies of the value).
        let extra = v.chars().filter(|c| (controls && matches!(c, '\n' | '\r')) || special.contains(c)).count();
        let mut s = Zeroizing::new(String::with_capacity(v.len() + 2 + extra));
        s.push('"');
        for c in v.chars() {
            match c {
                '\n' if controls => s.push_str("\\n"),
                '\r' if controls => s.push_str("\\r"),
                c if special.contains(&c) => {
                    s.push('\\');
                    s.push(c);
                }
                c => s.push(c),
            }
        }
        s.push('"');
        s
    };
    match format {
        EnvFormat::Sh => Ok(quote(v).0),
        EnvFormat::Docker => {
            // The CLI reads lines with Go's bufio.Scanner: a line break
            // starts another variable, a final CR is dropped, and a line
            // over 64 KiB fails the whole file. Nothing else is interpreted.
            if v.contains('\n') {
                return Err("it holds a line break, which docker's env-file reader would read as another variable");
            }
            if v.ends_with('\r') {
                return Err("it ends with a carriage return, which docker's env-file reader drops");
            }
            if key.len() + 1 + v.len() >= 64 * 1024 {
                return Err("the line would be longer than the 64 KiB docker's env-file reader accepts");
            }
            Ok(Zeroizing::new(v.to_owned()))
        }
        EnvFormat::Systemd => {
            if v.chars().any(|c| c == '\u{feff}' || is_noncharacter(c)) {
                return Err("it holds a Unicode noncharacter or U+FEFF, which systemd refuses in environment files");
            }
            Ok(escape(v, &['"', '\\', '`', '$'], false))
        }
        EnvFormat::DotenvNode => {
            // dotenv matches `'…'`, `` `…` `` or `"…"` up to the first same
            // quote not preceded by `\`, turns CR into LF before parsing, and
            // unescapes only `\n` and `\r`, only inside `"…"`.
            if v.ends_with('\\') {
                return Err("it ends with a backslash, which dotenv reads as escaping the closing quote");
            }
            if !v.contains(['\'', '\r']) {
                return Ok(wrap('\'', v));
            }
            if !v.contains(['`', '\r']) {
                return Ok(wrap('`', v));
            }
            if !v.contains(['"', '\\']) {
                return Ok(escape(v, &[], true));
            }
            Err("it holds all three quotes ' ` \" (or a carriage return with \" or \\), which dotenv cannot quote")
        }
        EnvFormat::DotenvPython => {
            if v.ends_with('\\') {
                return Err("it ends with a backslash, which python-dotenv reads as escaping the closing quote");
            }
            if expands_in_python_dotenv(v) {
                return Err("it holds ${…}, which python-dotenv replaces with another variable's value");
            }
            Ok(escape(v, &['\\', '"'], true))
        }
    }
}

/// Unicode noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF).
fn is_noncharacter(c: char) -> bool {
    let c = c as u32;
    (0xfdd0..=0xfdef).contains(&c) || c & 0xfffe == 0xfffe
}

/// Whether python-dotenv's interpolation (`\$\{([^}:]*)(?::-([^}]*))?\}`,
/// on in `load_dotenv` by default, in every kind of quotes) would replace
/// part of `v`.
fn expands_in_python_dotenv(v: &str) -> bool {
    v.match_indices("${").any(|(i, _)| {
        let rest = &v[i + 2..];
        let name_end = rest.find(['}', ':']).unwrap_or(rest.len());
        match rest[name_end..].chars().next() {
            Some('}') => true,
            Some(':') => rest[name_end..].starts_with(":-") && rest[name_end + 2..].contains('}'),
            _ => false,
        }
    })
}

/// Quotes a value for sh; the bool says whether dotenv parsers would also
/// read it back exactly (they do not share sh's `'"'"'`).
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

/// Writes `bytes` to `path` atomically with `mode` (and owner/group when
/// given); see [`crate::write`] for what a shared directory cannot do to it.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<()> {
    crate::write::write_file(path, bytes, mode, owner, group).map_err(Into::into)
}

/// Secrets by name, as templates see them.
pub type Secrets = BTreeMap<String, Arc<SecretData>>;

/// A hasher under keys drawn at random once per process: digests of
/// rendered content can be compared inside the process but say nothing to
/// anyone who sees one (unlike `DefaultHasher::new()`, whose keys are fixed).
pub fn keyed_hasher() -> impl Hasher {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(std::collections::hash_map::RandomState::new).build_hasher()
}

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
                        run_command(cmd, &spec.inherit_env, spec.command_timeout, &spec.path).await;
                    }
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    if let Some(msg) = first_time(&mut last_error, &e) {
                        tracing::error!(path = %spec.path.display(), error = %msg, "file not written");
                    }
                }
            }
        }
        if !next_change(&mut rx, &shutdown, written.is_some()).await {
            return;
        }
    }
}

/// The error's message if it differs from the last one, so a file that
/// keeps failing the same way is logged once, not on every change.
fn first_time(last: &mut Option<String>, e: &impl std::fmt::Display) -> Option<String> {
    let msg = e.to_string();
    if last.as_ref() == Some(&msg) {
        return None;
    }
    *last = Some(msg.clone());
    Some(msg)
}

/// Waits for the next change of the secrets and, once something has been
/// written, for the batch window too, so secrets that change together are
/// written once (nothing is written until every secret is there, so the
/// first write does not wait). `false` at shutdown.
async fn next_change(rx: &mut watch::Receiver<Snapshot>, shutdown: &CancellationToken, batch: bool) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        r = rx.changed() => if r.is_err() { return false },
    }
    if batch {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(BATCH) => {}
        }
    }
    true
}

/// Runs a file's after-change command. Its output is not captured: it goes
/// to vaultlet's own stdout/stderr, and vaultlet logs only the exit status.
async fn run_command(cmd: &[String], inherit_env: &[String], timeout: Duration, path: &Path) {
    let mut command = crate::exec::command(cmd, inherit_env, None);
    let mut child = match crate::exec::spawn_tracked(command.kill_on_drop(true)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(path = %path.display(), command = %cmd[0], error = %e, "cannot run after-change command");
            return;
        }
    };
    let pid = child.id();
    let _untrack = Untrack(pid);
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
            // It leads its own process group: whatever it started goes too.
            if let Some(p) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            tracing::warn!(path = %path.display(), command = %cmd[0], ?timeout, "after-change command timed out; killed");
        }
    }
}

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Forgets a tracked pid however the wait ends.
struct Untrack(Option<u32>);

impl Drop for Untrack {
    fn drop(&mut self) {
        crate::exec::untrack(self.0);
    }
}

fn render_text(spec: &FileSpec, secrets: &BTreeMap<String, Arc<SecretData>>) -> Result<Zeroizing<String>, RenderError> {
    Ok(match spec.format {
        FileFormat::Env(format) => render_env(&spec.template, secrets, format)?,
        FileFormat::Raw if has_extension(&spec.path, &["json"]) => render_json(&spec.template, secrets)?,
        FileFormat::Raw if has_extension(&spec.path, &["yaml", "yml"]) => render_yaml(&spec.template, secrets)?,
        FileFormat::Raw => render_raw(&spec.template, secrets)?,
    })
}

/// Keeps the files of one `bundle` up to date until shutdown: all are
/// rendered from one snapshot and switched together by
/// [`crate::write::write_group`]; each distinct after-change command runs
/// once per switch, after it.
pub async fn run_bundle(
    bundle: String,
    specs: Vec<FileSpec>,
    mut rx: watch::Receiver<Snapshot>,
    shutdown: CancellationToken,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let uses: BTreeSet<String> = specs.iter().flat_map(|s| s.uses.iter().cloned()).collect();
    let dir = specs[0].path.parent().unwrap_or(Path::new("/")).to_owned();
    let mut commands: Vec<&FileSpec> = Vec::new();
    for s in &specs {
        if s.command.is_some() && !commands.iter().any(|c| c.command == s.command) {
            commands.push(s);
        }
    }
    let mut written: Option<u64> = None;
    let mut last_error: Option<String> = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some((secrets, versions)) = live_secrets(&snap, &uses) {
            match render_and_switch(&bundle, &dir, &specs, &secrets, &mut written).await {
                Ok(true) => {
                    tracing::info!(bundle = %bundle, dir = %dir.display(), files = specs.len(), versions = %versions.join(","), "switched file bundle");
                    last_error = None;
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                    for c in &commands {
                        if let Some(cmd) = &c.command {
                            run_command(cmd, &c.inherit_env, c.command_timeout, &c.path).await;
                        }
                    }
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    if let Some(msg) = first_time(&mut last_error, &e) {
                        tracing::error!(bundle = %bundle, error = %msg, "file bundle not written");
                    }
                }
            }
        }
        if !next_change(&mut rx, &shutdown, written.is_some()).await {
            return;
        }
    }
}

async fn render_and_switch(
    bundle: &str,
    dir: &Path,
    specs: &[FileSpec],
    secrets: &BTreeMap<String, Arc<SecretData>>,
    written: &mut Option<u64>,
) -> Result<bool, RenderError> {
    let mut texts = Vec::with_capacity(specs.len());
    let mut h = keyed_hasher();
    for s in specs {
        let t = render_text(s, secrets)?;
        t.hash(&mut h);
        texts.push(t);
    }
    let digest = h.finish();
    if *written == Some(digest) {
        return Ok(false);
    }
    let meta: Vec<_> =
        specs.iter().map(|s| (s.path.file_name().unwrap_or_default().to_owned(), s.mode, s.owner, s.group)).collect();
    let (b, d) = (bundle.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        let files: Vec<_> = meta
            .iter()
            .zip(&texts)
            .map(|((name, mode, owner, group), t)| crate::write::GroupFile {
                name,
                bytes: t.as_bytes(),
                mode: *mode,
                owner: *owner,
                group: *group,
            })
            .collect();
        crate::write::write_group(&d, &b, &files)
    })
    .await
    .map_err(|e| RenderError::Io { path: dir.display().to_string(), source: std::io::Error::other(e) })?
    .map_err(|e| RenderError::Io { path: dir.display().to_string(), source: e.into() })?;
    *written = Some(digest);
    Ok(true)
}

async fn render_and_write(
    spec: &FileSpec,
    secrets: &BTreeMap<String, Arc<SecretData>>,
    written: &mut Option<u64>,
) -> Result<bool, RenderError> {
    let text = render_text(spec, secrets)?;
    // Compare by a keyed hash so we do not keep a second copy of the content.
    let mut h = keyed_hasher();
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
    use std::os::unix::fs::PermissionsExt;

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
            EnvFormat::Sh,
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
        let env =
            render_env("# c\nA=x{{ a.k }}y\nexport B={{ a.n }}\nC=-{{ a.k }}-{{ a.k }}-\n", &s, EnvFormat::Sh).unwrap();
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
            for format in [EnvFormat::Systemd, EnvFormat::DotenvNode, EnvFormat::DotenvPython] {
                let with_escapes = format!("{v}\n\"\\\"\\{long}x");
                if let Ok(e) = encode(format, "K", &with_escapes) {
                    assert_eq!(e.capacity(), e.len(), "{} encoding", format.name());
                }
            }
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
        let e = render_env("A={{ api.missing }}\n", &s, EnvFormat::Sh).unwrap_err().to_string();
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
        // Constant lines pass too (how an exec app learns the socket path).
        let map =
            render_env_map("VAULTLET_SOCKET=/run/vaultlet/vaultlet.sock\nPGUSER={{ db.username }}\n", &s).unwrap();
        assert_eq!(map[0].0, "VAULTLET_SOCKET");
        assert_eq!(map[0].1.as_str(), "/run/vaultlet/vaultlet.sock");
    }

    #[test]
    fn bad_lines_are_rejected() {
        let s = secrets(&[("api", "k", "v")]);
        assert!(matches!(render_env("just text {{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
        assert!(matches!(render_env("# {{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
        assert!(matches!(render_env("1A={{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
    }

    #[test]
    fn content_digests_are_keyed_per_process_not_fixed() {
        let digest = |mut h: Box<dyn Hasher>| {
            "same content".hash(&mut h);
            h.finish()
        };
        assert_eq!(digest(Box::new(keyed_hasher())), digest(Box::new(keyed_hasher())), "stable within the process");
        assert_ne!(
            digest(Box::new(keyed_hasher())),
            digest(Box::new(std::collections::hash_map::DefaultHasher::new())),
            "not DefaultHasher's fixed keys"
        );
    }

    #[test]
    fn json_template_value_cannot_add_a_top_level_key() {
        let evil = "x\", \"admin\": true, \"y\": \"";
        let s = secrets(&[("api", "k", evil)]);
        let out = render_json(
            "{\"stripe\": \"{{ api.k }}\", \"bare\": {{ api.k }}, \"url\": \"k={{ api.k }};\", \"n\": {{ 1 + 1 }}}\n",
            &s,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("admin").is_none(), "{}", out.as_str());
        assert_eq!(v["stripe"], evil);
        assert_eq!(v["bare"], evil);
        assert_eq!(v["url"], format!("k={evil};"));
        assert_eq!(v["n"], 2);
        // A template backslash just before a value would eat its escaping.
        assert!(render_json("{\"a\": \"\\{{ api.k }}\"}", &s).is_err());
    }

    #[test]
    fn docker_env_file_refuses_a_line_break_instead_of_injecting_a_variable() {
        let s = secrets(&[("api", "k", "v\nINJECTED=1")]);
        let e = render_env("A={{ api.k }}\n", &s, EnvFormat::Docker).unwrap_err();
        assert!(matches!(&e, RenderError::Unencodable { key, format: "docker", .. } if key == "A"), "{e}");
        assert!(!e.to_string().contains("INJECTED"), "the value is not in the error: {e}");
        // sh holds it exactly (proven by sh in tests/env_formats.rs).
        assert!(render_env("A={{ api.k }}\n", &s, EnvFormat::Sh).is_ok());
    }

    #[test]
    fn python_dotenv_interpolation_is_refused_only_where_it_would_expand() {
        for v in ["${X}", "a${HOME}b", "${X:-d}"] {
            assert!(expands_in_python_dotenv(v), "{v}");
        }
        for v in ["$X", "${", "${X", "${X:d}", "$ {X}"] {
            assert!(!expands_in_python_dotenv(v), "{v}");
        }
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
            format: FileFormat::Env(EnvFormat::Sh),
            mode: 0o600,
            owner: None,
            group: None,
            command: None,
            command_timeout: Duration::from_secs(1),
            inherit_env: Vec::new(),
            uses: ["a".to_string(), "b".to_string()].into(),
            bundle: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_file(spec, store.subscribe(), shutdown.clone(), None));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        while read().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every write is a new file renamed into place: a new inode.
        let first = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        // Two changes 100 ms apart: one write with both.
        store.publish("a", data("2"), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(), "A='1'\nB='1'\n", "nothing written inside the batch window");
        store.publish("b", data("2"), None);
        while read() != "A='2'\nB='2'\n" {
            assert!(read() != "A='2'\nB='1'\n", "half-batched write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
            first,
            "the file was replaced, not edited in place"
        );
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
