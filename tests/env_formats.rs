//! Each `[[env_file]] format` read back by the real reader it is named for.
//!
//! Hard values (quotes of both kinds, `$`, `${X}`, backticks, backslashes,
//! `#`, `=`, Unicode, padding, line breaks…) are rendered by vaultlet's own
//! renderer and read back by:
//!
//! * `sh`: dash (`sh`) and bash, `set -a; . FILE`;
//! * `docker`: the docker CLI's own `--env-file` parser (`docker create
//!   --env-file`, against a stand-in for the Engine API that records the
//!   environment the CLI sends: scripts/docker-env-file.py);
//! * `systemd`: systemd's own env-file parser (the one `EnvironmentFile=`
//!   uses, shared with os-release): the file is bind-mounted over
//!   /etc/os-release in a private mount namespace and each value is
//!   compared by `systemd-analyze condition ConditionOSRelease="KEY=VALUE"`;
//! * `dotenv-node`: npm `dotenv` 16.6.1 `parse()`;
//! * `dotenv-python`: python-dotenv 1.0.1 `dotenv_values()` (interpolation
//!   on, its default), with `X` set in its environment so an expansion shows.
//!
//! For every format, each value is either read back exactly or refused by
//! vaultlet, and the refused set is exactly the one `docs/outputs/files.md`
//! documents.
//! scripts/env-parsers.sh installs the two dotenv packages into the cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use secrecy::SecretString;
use vaultlet::config::EnvFormat;
use vaultlet::render::{RenderError, render_env, render_yaml};
use vaultlet::secret::SecretData;

/// (name, value). The first 13 are the hard values of the report that the
/// old quoting failed on in dotenv; the rest are line breaks and edge cases.
const VALUES: &[(&str, &str)] = &[
    ("single_quote", "it's"),
    ("double_quote", "say \"hi\""),
    ("both_quotes", "both ' and \""),
    ("dollar", "$HOME and $1"),
    ("braced_var", "pre${X}post"),
    ("backticks", "`id` and $(id)"),
    ("backslashes", "back\\slash \\\\ and \\n \\t"),
    ("hash", "# not a comment"),
    ("equals", "a=b=c"),
    ("unicode", "é€😀 ñ 中文"),
    ("padding", "  padded  "),
    ("tabs", "\tlead and trail\t"),
    ("everything", "mix '\"$`\\#= all"),
    ("newline", "line1\nINJECTED=1"),
    ("carriage_return", "a\rb"),
    ("trailing_cr", "ab\r"),
    ("empty", ""),
    ("trailing_backslash", "ends\\"),
    ("quote_at_ends", "'quoted'"),
];

/// What each format refuses (by value name); everything else must round-trip.
fn refused(format: EnvFormat) -> &'static [&'static str] {
    match format {
        EnvFormat::Sh => &[],
        EnvFormat::Docker => &["newline", "trailing_cr"],
        EnvFormat::Systemd => &[],
        EnvFormat::DotenvNode => &["everything", "trailing_backslash"],
        EnvFormat::DotenvPython => &["braced_var", "trailing_backslash"],
    }
}

fn secrets() -> BTreeMap<String, Arc<SecretData>> {
    let mut d = SecretData::default();
    for (n, v) in VALUES {
        d.insert(*n, SecretString::from(v.to_string()));
    }
    [("t".to_string(), Arc::new(d))].into()
}

fn key(name: &str) -> String {
    format!("V_{}", name.to_uppercase())
}

/// Renders the values the format accepts into one file (so a value that
/// bleeds into the next line shows), checking the refusals on the way.
fn render(format: EnvFormat, dir: &Path) -> (std::path::PathBuf, Vec<(&'static str, &'static str)>) {
    let s = secrets();
    let mut accepted = Vec::new();
    let mut refusals = Vec::new();
    for (n, v) in VALUES {
        match render_env(&format!("{}={{{{ t.{n} }}}}\n", key(n)), &s, format) {
            Ok(_) => accepted.push((*n, *v)),
            Err(RenderError::Unencodable { key: k, .. }) => {
                assert_eq!(k, key(n));
                refusals.push(*n);
            }
            Err(e) => panic!("{}: {n}: {e}", format.name()),
        }
    }
    assert_eq!(refusals, refused(format), "{}: refused values differ from the documented ones", format.name());
    let template: String =
        accepted.iter().map(|(n, _)| format!("# {n}\nexport {}={{{{ t.{n} }}}}\n", key(n))).collect();
    let text = render_env(&template, &s, format).unwrap();
    let path = dir.join(format!("{}.env", format.name()));
    std::fs::write(&path, text.as_bytes()).unwrap();
    eprintln!("{}: {} of {} values round-trip, refused: {:?}", format.name(), accepted.len(), VALUES.len(), refusals);
    (path, accepted)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_exact(format: &str, got: &BTreeMap<String, String>, accepted: &[(&str, &str)]) {
    let mut wrong = Vec::new();
    for (n, v) in accepted {
        if got.get(&key(n)).map(String::as_str) != Some(*v) {
            wrong.push(format!("{n}: wrote {v:?}, read {:?}", got.get(&key(n))));
        }
    }
    assert!(wrong.is_empty(), "{format}: values not read back exactly:\n{}", wrong.join("\n"));
    assert!(!got.contains_key("INJECTED"), "{format}: a value added a variable");
}

fn parsers() -> BTreeMap<String, String> {
    let out = run(&mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/env-parsers.sh")));
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn shell_reads(shell: &str, file: &Path, accepted: &[(&str, &str)]) -> BTreeMap<String, String> {
    let script: String = accepted.iter().map(|(n, _)| format!("printf '%s\\0' \"${}\";", key(n))).collect();
    let out = run(Command::new(shell).arg("-c").arg(format!("set -a; . \"$1\"; {script}")).arg(shell).arg(file));
    accepted.iter().map(|(n, _)| key(n)).zip(out.split('\0').map(str::to_owned)).collect()
}

#[test]
fn sh_env_file_round_trips_through_dash_and_bash() {
    let dir = tempfile::tempdir().unwrap();
    let (file, accepted) = render(EnvFormat::Sh, dir.path());
    for shell in ["sh", "bash"] {
        assert_exact(shell, &shell_reads(shell, &file, &accepted), &accepted);
    }
}

#[test]
fn docker_env_file_round_trips_through_the_docker_cli_and_cannot_inject_a_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (file, accepted) = render(EnvFormat::Docker, dir.path());
    let out = run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-env-file.py")).arg(&file));
    let list: Vec<String> = serde_json::from_str(&out).unwrap();
    let got = list.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    assert_exact("docker", &got, &accepted);
    // The attack: the same value in the old (sh) encoding, read by docker,
    // adds INJECTED=1. The docker format refuses it instead (see render()).
    let sh = render_env("A={{ t.newline }}\n", &secrets(), EnvFormat::Sh).unwrap();
    let old = dir.path().join("old.env");
    std::fs::write(&old, sh.as_bytes()).unwrap();
    let out = run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-env-file.py")).arg(&old));
    assert!(out.contains("INJECTED=1"), "the probe shows the injection it guards against: {out}");
}

/// Whether systemd's env-file parser reads `k` as `v` from `file` (see
/// the systemd test below for how).
fn systemd_reads(file: &Path, k: &str, v: &str) -> bool {
    // The condition is itself unquoted by systemd: `\` and `"` escaped
    // inside "…", `%` doubled (specifiers).
    let mut cond = String::from("ConditionOSRelease=\"");
    cond.push_str(k);
    cond.push('=');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                cond.push('\\');
                cond.push(c);
            }
            '%' => cond.push_str("%%"),
            c => cond.push(c),
        }
    }
    cond.push('"');
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", "mount --bind \"$1\" /etc/os-release && systemd-analyze condition \"$2\""])
        .arg("sh")
        .arg(file)
        .arg(&cond)
        .output()
        .expect("unshare (util-linux) and systemd-analyze (systemd)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || text.contains("Conditions failed"),
        "cannot run systemd's parser (needs root for a private mount namespace): {text}"
    );
    out.status.success()
}

#[test]
fn systemd_env_file_round_trips_through_systemds_parser() {
    let dir = tempfile::tempdir().unwrap();
    let (file, accepted) = render(EnvFormat::Systemd, dir.path());
    let check = systemd_reads;
    // The check can fail: a value that is not the one written does not match.
    assert!(!check(&file, &key("dollar"), "$HOME and $2"), "systemd's comparison must be able to fail");
    // `ConditionOSRelease=` cannot express an empty value or one that
    // starts with whitespace; those are probed with a `Z` in front (still
    // encoded by vaultlet), which keeps their trailing whitespace in play.
    let unexpressible = |v: &str| v.is_empty() || v.starts_with(char::is_whitespace);
    let mut wrong = Vec::new();
    let mut prefixed = SecretData::default();
    for (n, v) in &accepted {
        if unexpressible(v) {
            prefixed.insert(*n, SecretString::from(format!("Z{v}")));
        } else if !check(&file, &key(n), v) {
            wrong.push(*n);
        }
    }
    assert!(!check(&file, "INJECTED", "1"), "a value added a variable");
    let names: Vec<&str> = prefixed.keys().collect();
    eprintln!("systemd: probed with a leading Z: {names:?}");
    let template: String = names.iter().map(|n| format!("{}={{{{ t.{n} }}}}\n", key(n))).collect();
    let text = render_env(&template, &[("t".to_string(), Arc::new(prefixed))].into(), EnvFormat::Systemd).unwrap();
    let file2 = dir.path().join("systemd-prefixed.env");
    std::fs::write(&file2, text.as_bytes()).unwrap();
    for (n, v) in &accepted {
        if unexpressible(v) && !check(&file2, &key(n), &format!("Z{v}")) {
            wrong.push(*n);
        }
    }
    assert!(wrong.is_empty(), "systemd did not read these back exactly: {wrong:?}");
}

#[test]
fn dotenv_node_env_file_round_trips_through_npm_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    let (file, accepted) = render(EnvFormat::DotenvNode, dir.path());
    let p = parsers();
    let out = run(Command::new("node")
        .arg("-e")
        .arg("const d = require(process.argv[1]); const fs = require('fs'); process.stdout.write(JSON.stringify(d.parse(fs.readFileSync(process.argv[2]))))")
        .arg(&p["NODE_DOTENV"])
        .arg(&file));
    assert_exact("dotenv-node", &serde_json::from_str(&out).unwrap(), &accepted);
}

#[test]
fn dotenv_python_env_file_round_trips_through_python_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    let (file, accepted) = render(EnvFormat::DotenvPython, dir.path());
    let p = parsers();
    let out = run(Command::new("python3")
        .arg("-c")
        .arg("import sys, json; sys.path.insert(0, sys.argv[1]); from dotenv import dotenv_values; sys.stdout.write(json.dumps(dotenv_values(sys.argv[2])))")
        .arg(&p["PYTHON_DOTENV"])
        .arg(&file)
        .env("X", "EXPANDED"));
    let got: BTreeMap<String, Option<String>> = serde_json::from_str(&out).unwrap();
    let got = got.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
    assert_exact("dotenv-python", &got, &accepted);
}

/// A YAML template: every value lands as the exact string the template
/// puts it in, read by PyYAML, and none adds a key; where vaultlet cannot
/// escape a value (inside a plain scalar, a comment, a line break in '…' or
/// a block scalar) the template is refused.
#[test]
fn yaml_template_values_cannot_add_keys_and_round_trip_through_pyyaml() {
    let dir = tempfile::tempdir().unwrap();
    let template = "# settings\nname: {{ t.v }}\nquoted: \"pre {{ t.v }} post\"\nsingle: 'pre {{ t.w }} post'\n\
                    list:\n  - {{ t.v }}\nflow: {a: {{ t.v }}, b: \"x{{ t.v }}\"}\nblock: |\n  line {{ t.w }}\nrole: user\n";
    let mut values: Vec<&str> = VALUES.iter().map(|(_, v)| *v).collect();
    values.extend([
        "x\nadmin: true",
        "x\", \"admin\": true, \"y\": \"",
        "a: b",
        "- item",
        "{x: 1}",
        "' quote",
        "&anchor *alias !tag",
    ]);
    let mut files = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut d = SecretData::default();
        d.insert("v", SecretString::from(v.to_string()));
        // '…' and block scalars cannot hold control characters.
        let w: String = v.chars().filter(|c| !c.is_control()).collect();
        d.insert("w", SecretString::from(w.clone()));
        let text = render_yaml(template, &[("t".to_string(), Arc::new(d))].into())
            .unwrap_or_else(|e| panic!("value {i}: {e}"));
        let f = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&f, text.as_bytes()).unwrap();
        files.push((f, v.to_string(), w));
    }
    let p = parsers();
    let out = run(Command::new("python3")
        .arg("-c")
        .arg("import sys, json; sys.path.insert(0, sys.argv[1]); import yaml; print(json.dumps([yaml.safe_load(open(f, encoding='utf-8')) for f in sys.argv[2:]]))")
        .arg(&p["PYYAML"])
        .args(files.iter().map(|(f, _, _)| f)));
    let docs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for ((_, v, w), doc) in files.iter().zip(&docs) {
        let want = serde_json::json!({
            "name": v, "quoted": format!("pre {v} post"), "single": format!("pre {w} post"),
            "list": [v], "flow": {"a": v, "b": format!("x{v}")}, "block": format!("line {w}\n"), "role": "user",
        });
        assert_eq!(doc, &want, "value {v:?}");
    }
    eprintln!("yaml: {} values round-trip in every position", docs.len());
    // Where no escaping is exact, the template is refused.
    let one = |tpl: &str, v: &str| {
        let mut d = SecretData::default();
        d.insert("v", SecretString::from(v.to_string()));
        render_yaml(tpl, &[("t".to_string(), Arc::new(d))].into())
    };
    for (tpl, v) in [
        ("url: http://{{ t.v }}/x\n", "h"),
        ("# {{ t.v }}\n", "x"),
        ("a: 'x{{ t.v }}'\n", "l1\nadmin: true"),
        ("a: |\n  {{ t.v }}\n", "l1\nadmin: true"),
    ] {
        assert!(matches!(one(tpl, v), Err(RenderError::Template(_))), "{tpl:?} with {v:?} must be refused");
    }
}

/// Lines `vaultlet import env` must read exactly as each real reader does.
const IMPORT_LINES: &[(&str, &str)] = &[
    ("I_URL", "postgres://u:p@db:5432/app?sslmode=require"),
    ("I_PLAIN", "abc-DEF_1.2/3:4@5%6+7,8=9^"),
    ("I_SINGLE", "'two words # not a comment'"),
    ("I_DOUBLE", "\"a#b and 'single'\""),
    ("I_EMPTY", ""),
];

/// Lines it must refuse for every reader but docker (which takes any line
/// as it is): each one reads differently in at least two readers.
const IMPORT_REFUSED: &[&str] =
    &["I_SPACE=two words", "I_DOLLAR=$HOME", "I_HASH=a #b", "I_BSLASH=a\\b", "I_TILDE=~/x", "I_INNER='it'\\''s'"];

/// What the real reader of `format` reads from `file`, for `keys`.
fn reader_reads(format: EnvFormat, file: &Path, keys: &[&str]) -> BTreeMap<String, String> {
    let p = || parsers();
    match format {
        EnvFormat::Sh => {
            let script: String = keys.iter().map(|k| format!("printf '%s\\0' \"${k}\";")).collect();
            let out = run(Command::new("sh").arg("-c").arg(format!("set -a; . \"$1\"; {script}")).arg("sh").arg(file));
            keys.iter().map(|k| k.to_string()).zip(out.split('\0').map(str::to_owned)).collect()
        }
        EnvFormat::Docker => {
            let out = run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-env-file.py")).arg(file));
            let list: Vec<String> = serde_json::from_str(&out).unwrap();
            list.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
        }
        EnvFormat::DotenvNode => serde_json::from_str(&run(Command::new("node")
            .arg("-e")
            .arg("const d = require(process.argv[1]); const fs = require('fs'); process.stdout.write(JSON.stringify(d.parse(fs.readFileSync(process.argv[2]))))")
            .arg(&p()["NODE_DOTENV"])
            .arg(file)))
        .unwrap(),
        EnvFormat::DotenvPython => {
            let out = run(Command::new("python3")
                .arg("-c")
                .arg("import sys, json; sys.path.insert(0, sys.argv[1]); from dotenv import dotenv_values; sys.stdout.write(json.dumps(dotenv_values(sys.argv[2])))")
                .arg(&p()["PYTHON_DOTENV"])
                .arg(file));
            let got: BTreeMap<String, Option<String>> = serde_json::from_str(&out).unwrap();
            got.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()
        }
        EnvFormat::Systemd => unreachable!("systemd is asked value by value"),
    }
}

/// `vaultlet import env` reads an existing `.env` as its real reader does:
/// for every format, each sample line gives the value the reader gives
/// (docker: the line as it is, quotes included), and the lines readers
/// disagree about are refused (by line and key) instead of guessed.
#[test]
fn import_reads_each_line_as_the_real_reader_does_or_refuses_it() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    for (_, format) in EnvFormat::ALL {
        let text: String = IMPORT_LINES.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let file = dir.path().join(format!("import-{}.env", format.name()));
        std::fs::write(&file, &text).unwrap();
        let parsed = vaultlet::import::env::parse(&text, format);
        assert!(parsed.refused.is_empty(), "{}: {:?}", format.name(), parsed.refused);
        let ours: BTreeMap<String, String> =
            parsed.vars.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_owned())).collect();
        let keys: Vec<&str> = IMPORT_LINES.iter().map(|(k, _)| *k).collect();
        if format == EnvFormat::Systemd {
            for (k, v) in &ours {
                // An empty value cannot be written as a condition (see above).
                if !v.is_empty() {
                    assert!(systemd_reads(&file, k, v), "systemd: {k} is not read as import reads it");
                }
            }
            assert!(!systemd_reads(&file, "I_URL", "postgres"), "systemd's comparison must be able to fail");
        } else {
            let theirs = reader_reads(format, &file, &keys);
            for k in &keys {
                assert_eq!(ours.get(*k), theirs.get(*k), "{}: {k}: import vs the real reader", format.name());
            }
        }
        if format != EnvFormat::Docker {
            for line in IMPORT_REFUSED {
                let p = vaultlet::import::env::parse(&format!("A=1\n{line}\n"), format);
                assert_eq!(p.refused.len(), 1, "{}: {line} was not refused", format.name());
                assert_eq!(p.refused[0].line, 2);
            }
        }
    }
}
