//! Reading an existing `.env` file the way its reader does.
//!
//! Readers disagree about quotes, backslashes, `$`, `#` and whitespace (the
//! table is in `docs/outputs/files.md`), so a line is read only when its
//! meaning for the named reader is certain, and refused otherwise with its
//! line number, its key and why — never its value. What is accepted:
//!
//! * blank lines and comments (`#` first on the line);
//! * `KEY=VALUE` with `KEY` a variable name and nothing around `=`;
//!   `export KEY=…` where the reader knows `export` (sh, both dotenvs);
//! * `docker`: the value is the rest of the line, as it is (the docker CLI
//!   strips no quote and expands nothing);
//! * the other readers: an empty value; an unquoted value of letters,
//!   digits and `_-./:@%+,=?^` only; `'…'` with no `'` or `\` inside;
//!   `"…"` with none of `"` `\` `$` `` ` `` inside. These read the same in
//!   every one of them, and anything else (spaces, `#`, `$`, backslashes,
//!   a quote inside, a line that continues) reads differently in one.
//!
//! `tests/env_formats.rs` reads every accepted sample with the real reader
//! and compares.

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::config::EnvFormat;
use crate::config::templates::is_env_key;

/// A line that cannot be imported: where and why (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 1-based line number.
    pub line: usize,
    /// The variable, when the line got that far.
    pub key: Option<String>,
    /// Why.
    pub why: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "line {}: {k}: {}", self.line, self.why),
            None => write!(f, "line {}: {}", self.line, self.why),
        }
    }
}

/// What a `.env` file holds: its variables in file order, and the lines
/// that could not be read with certainty (a key set twice among them:
/// which one wins is the reader's business, and a typo more often than not).
pub struct Parsed {
    /// `(key, value)` in the order first seen.
    pub vars: Vec<(String, SecretString)>,
    /// Lines refused; importing needs this empty.
    pub refused: Vec<Refused>,
}

/// Unquoted characters every reader takes as they are.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:@%+,=?^".contains(c)
}

/// The value of `raw` (the text after `=`) as `format`'s reader reads it.
fn value(format: EnvFormat, raw: &str) -> Result<Zeroizing<String>, &'static str> {
    if format == EnvFormat::Docker {
        if raw.ends_with('\r') {
            return Err("ends with a carriage return");
        }
        return Ok(Zeroizing::new(raw.to_owned()));
    }
    let inner = |q: char, forbidden: &str| -> Result<Zeroizing<String>, &'static str> {
        let body = raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)).ok_or("a quote that does not end the line")?;
        if body.chars().any(|c| forbidden.contains(c) || c.is_control()) {
            return Err("a quoted value with a quote, a backslash, `$`, a backtick or a control character in it \
                        (readers disagree about those)");
        }
        Ok(Zeroizing::new(body.to_owned()))
    };
    match raw.chars().next() {
        None => Ok(Zeroizing::new(String::new())),
        Some('\'') => inner('\'', "'\\"),
        Some('"') => inner('"', "\"\\$`"),
        Some(_) if raw.chars().all(plain) => Ok(Zeroizing::new(raw.to_owned())),
        Some(_) => Err("an unquoted value with characters readers treat differently (spaces, `#`, `$`, `~`, \
                        backslashes, quotes…); put it in '…'"),
    }
}

/// Reads `text` as `format`'s reader would.
pub fn parse(text: &str, format: EnvFormat) -> Parsed {
    let mut vars: Vec<(String, SecretString)> = Vec::new();
    let mut refused = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.len() != line.len() {
            refused.push(Refused { line: n, key: None, why: "leading whitespace (readers disagree about it)" });
            continue;
        }
        let rest = match line.strip_prefix("export ") {
            Some(_) if matches!(format, EnvFormat::Docker | EnvFormat::Systemd) => {
                refused.push(Refused { line: n, key: None, why: "`export` is not understood by this reader" });
                continue;
            }
            Some(r) => r,
            None => line,
        };
        let Some((key, raw)) = rest.split_once('=') else {
            refused.push(Refused { line: n, key: None, why: "not a KEY=VALUE line" });
            continue;
        };
        if !is_env_key(key) {
            refused.push(Refused { line: n, key: None, why: "not a variable name before `=` (or spaces around it)" });
            continue;
        }
        match value(format, raw) {
            Ok(v) => {
                if vars.iter().any(|(k, _)| k == key) {
                    refused.push(Refused { line: n, key: Some(key.to_owned()), why: "set a second time" });
                } else {
                    vars.push((key.to_owned(), SecretString::from(v.to_string())));
                }
            }
            Err(why) => refused.push(Refused { line: n, key: Some(key.to_owned()), why }),
        }
    }
    Parsed { vars, refused }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn read(text: &str, format: EnvFormat) -> (Vec<(String, String)>, Vec<String>) {
        let p = parse(text, format);
        (
            p.vars.into_iter().map(|(k, v)| (k, v.expose_secret().to_owned())).collect(),
            p.refused.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn plain_and_quoted_values_read_as_every_reader_reads_them() {
        let text =
            "# comment\n\nA=postgres://u:p@db:5432/app?sslmode=require\nB='two words'\nC=\"x#y\"\nD=\nexport E=1\n";
        let (vars, refused) = read(text, EnvFormat::Sh);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            vars,
            [
                ("A".to_string(), "postgres://u:p@db:5432/app?sslmode=require".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "x#y".into()),
                ("D".into(), String::new()),
                ("E".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn docker_takes_the_rest_of_the_line_as_it_is() {
        let (vars, refused) = read("A='quoted' stays\nB=$HOME\\n\nexport C=1\n", EnvFormat::Docker);
        assert_eq!(vars, [("A".to_string(), "'quoted' stays".to_string()), ("B".into(), "$HOME\\n".into())]);
        assert_eq!(refused, ["line 3: `export` is not understood by this reader"]);
    }

    #[test]
    fn lines_readers_disagree_about_are_refused_by_line_and_key_without_the_value() {
        let text = "A=two words\nB=$HOME\nC='qqq\\'s'\nD=\"a\\nb\"\nE=x #c\n F=1\nG = 1\nH=~/x\nnot a line\nI='open\n";
        let (vars, refused) = read(text, EnvFormat::DotenvNode);
        assert!(vars.is_empty(), "{vars:?}");
        let lines: Vec<&str> = refused.iter().map(|r| r.split(':').next().unwrap_or_default()).collect();
        assert_eq!(
            lines,
            ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 10"]
        );
        for (r, secret) in refused.iter().zip(["two words", "$HOME", "qqq", "a\\nb", "x #c"]) {
            assert!(!r.contains(secret), "the value is in the message: {r}");
        }
    }

    #[test]
    fn a_key_set_twice_is_refused_at_its_second_line() {
        let (vars, refused) = read("A=1\nB=2\nA=3\n", EnvFormat::DotenvPython);
        assert_eq!(vars, [("A".to_string(), "1".to_string()), ("B".into(), "2".into())]);
        assert_eq!(refused, ["line 3: A: set a second time"]);
    }
}
