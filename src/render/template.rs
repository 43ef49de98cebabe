//! `[[template]]` files: the template's output, with each value escaped for
//! where it lands, so no value can change the file's structure.
//!
//! Templates whose path ends in `.json` are escaped by context: a value
//! inside a JSON string is escaped as string content, a value outside one
//! becomes a JSON string of its own, so no value can add a key. `.yaml` and
//! `.yml` likewise, where YAML allows an exact escape, and refused elsewhere
//! ([`render_yaml`]). Other templates are written as rendered
//! ([`render_raw`]).
//!
//! Every `{{ … }}` output goes through our formatter, which writes a
//! placeholder and keeps the real value aside; each buffer that holds a value
//! is allocated once at its final size, so no unwiped copy is freed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value, ValueKind};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::RenderError;
use crate::config::templates::{CLOSE, OPEN, describe, environment};
use crate::secret::SecretData;

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

pub(super) fn context(secrets: &BTreeMap<String, Arc<SecretData>>) -> BTreeMap<&str, Value> {
    secrets.iter().map(|(n, d)| (n.as_str(), Value::from_object(Fields(d.clone())))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_secrets as secrets;

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
}
