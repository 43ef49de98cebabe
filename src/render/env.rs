//! Env files and `vaultlet exec` environments: `KEY=VALUE` lines, each
//! value encoded for the reader that will parse it.
//!
//! Every `{{ … }}` output goes through our formatter, which writes a
//! placeholder and keeps the real value aside; the rendered text is then
//! read line by line as `KEY=VALUE` and each value is re-assembled and
//! encoded as a whole for the reader the file's `format` names, so the
//! template author need not think about quoting. Readers disagree about
//! quotes, backslashes and `$`, so each format has its own encoding
//! ([`encode`]), proven against the real parser in `tests/env_formats.rs`; a
//! value that reader cannot hold exactly is refused (the error names the
//! key, never the value) and the old file is kept:
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::RenderError;
use super::template::context;
use crate::config::EnvFormat;
use crate::config::templates::{CLOSE, OPEN, describe, environment, is_env_key};
use crate::secret::SecretData;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_secrets as secrets;

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

    #[test]
    fn bad_lines_are_rejected() {
        let s = secrets(&[("api", "k", "v")]);
        assert!(matches!(render_env("just text {{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
        assert!(matches!(render_env("# {{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
        assert!(matches!(render_env("1A={{ api.k }}\n", &s, EnvFormat::Sh), Err(RenderError::Line(1))));
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
}
