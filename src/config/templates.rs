//! Template checks at load time: each template parses, names only
//! configured secrets, and only fields those secrets have.
//!
//! It exists so a typo in a template is a config error (exit 64, with key
//! and line) instead of a file that never appears. It also owns the template
//! language itself, the minijinja [`environment`] and the placeholder
//! characters, so the check and the renderers in `src/render/` cannot
//! disagree about what a template means: render depends on this module,
//! never the other way round, which is what keeps config free of render.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, UndefinedBehavior};

use super::SecretSource;

/// Placeholder delimiters the renderers write in place of each value;
/// templates may not contain them.
pub const OPEN: char = '\u{1}';
/// See [`OPEN`].
pub const CLOSE: char = '\u{2}';

/// What fields a secret offers to templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `username` and `password`.
    Database,
    /// The fields of [`crate::limits::PKI_FIELDS`].
    Pki,
    /// Whatever keys the KV secret holds (known only at run time), or a
    /// secret whose own table is in error: not checked, so one mistake is
    /// not reported again by every template that uses the secret.
    Any,
}

impl Shape {
    /// The shape of a configured secret.
    pub fn of(source: &SecretSource) -> Shape {
        match source {
            SecretSource::Database { .. } => Shape::Database,
            SecretSource::Pki(_) => Shape::Pki,
            SecretSource::Kv { .. } => Shape::Any,
        }
    }
}

/// Config-time check of a template: it parses, refers only to configured
/// secrets, and only to `username`/`password` of database secrets. Returns
/// the secrets it uses.
pub fn check_template(template: &str, kinds: &BTreeMap<&str, Shape>) -> Result<BTreeSet<String>, String> {
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
            Some(Shape::Database) => {
                if let Some(f) = field
                    && f != "username"
                    && f != "password"
                {
                    return Err(format!("refers to `{name}.{f}`; database secrets have `username` and `password`"));
                }
            }
            Some(Shape::Pki) => {
                if let Some(f) = field
                    && !crate::limits::PKI_FIELDS.contains(&f)
                {
                    return Err(format!(
                        "refers to `{name}.{f}`; pki secrets have {}",
                        crate::limits::PKI_FIELDS.map(|f| format!("`{f}`")).join(", ")
                    ));
                }
            }
            Some(Shape::Any) => {}
        }
        uses.insert(name.to_owned());
    }
    if uses.is_empty() {
        return Err("uses no secret".into());
    }
    Ok(uses)
}

/// A minijinja error as text: its kind, detail and template line, never
/// the template context (debug output is off).
pub fn describe(e: &minijinja::Error) -> String {
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

/// The template language: strict undefined behaviour (a missing key is an
/// error, not an empty string), debug output off (an error never carries
/// template context), trailing newline kept.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_debug(false);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    env
}

/// A valid environment variable name.
pub fn is_env_key(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}
