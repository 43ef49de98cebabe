//! The docs against the code: what `docs/` promises exists, and what the
//! code has is in `docs/`.
//!
//! * metrics: the names the registry exposes (every family moved once, state
//!   on) against the table in `docs/observability.md`, and every metric name
//!   written in the docs or the alert rules;
//! * configuration keys: [`vaultlet::config::keys`], built from the loader's
//!   own structs, against the tables in `docs/configuration.md`, and every
//!   dotted key written in the docs;
//! * the command line: the flags, variables and commands `vaultlet --help`
//!   prints against `docs/cli.md`, and every `vaultlet …` command line in the
//!   docs;
//! * test names the docs cite exist; the table of container and systemd
//!   tests is the list the scripts run;
//! * every relative link between the docs reaches a file and a heading.
//!
//! Each check goes both ways where both ways mean something, and each
//! failure names the page and the item to add or remove.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use vaultlet::metrics::{Denied, Metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The docs a reader walks: README.md and every page under docs/.
fn doc_pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    files_under(&root().join("docs"), "md", &mut out);
    out
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() && name != "node_modules" && name != "target" && !name.starts_with('.') {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The text of every inline code span of `text` (fenced blocks left out),
/// as CommonMark reads them: a run of backticks opens a span that the next
/// run of the same length closes, across line breaks.
fn code_spans(text: &str) -> Vec<String> {
    let prose = prose_lines(text).join("\n");
    let b = prose.as_bytes();
    let run = |at: usize| b[at..].iter().take_while(|&&c| c == b'`').count();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'`' {
            i += 1;
            continue;
        }
        let n = run(i);
        let start = i + n;
        let mut j = start;
        let close = loop {
            match b[j..].iter().position(|&c| c == b'`') {
                None => break None,
                Some(k) if run(j + k) == n => break Some(j + k),
                Some(k) => j += k + run(j + k),
            }
        };
        match close {
            Some(end) => {
                out.push(prose[start..end].replace('\n', " ").trim().to_string());
                i = end + n;
            }
            None => i = start,
        }
    }
    out
}

/// The lines outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    lines_by_fence(text, false)
}

/// The lines inside fenced code blocks.
fn fenced_lines(text: &str) -> Vec<&str> {
    lines_by_fence(text, true)
}

/// The lines inside (`inside`) or outside fenced code blocks; the fences
/// themselves are neither.
fn lines_by_fence(text: &str, inside: bool) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            fenced == inside
        })
        .collect()
}

/// The rows of every table whose header's first cell is `first`, as cells.
fn table_rows(text: &str, first: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in prose_lines(text) {
        let Some(row) = line.trim().strip_prefix('|') else {
            inside = false;
            continue;
        };
        let cells: Vec<String> = row.trim_end_matches('|').split(" | ").map(|c| c.trim().to_string()).collect();
        if cells[0] == first {
            inside = true;
        } else if inside && !cells[0].starts_with("---") {
            out.push(cells);
        }
    }
    out
}

/// The code spans of one table cell.
fn spans_in(cell: &str) -> Vec<String> {
    code_spans(&format!("{cell}\n"))
}

/// Both directions of a comparison, as one message naming what to change.
fn compare(what: &str, code: &BTreeSet<String>, docs: &BTreeSet<String>, page: &str) {
    let undocumented: Vec<_> = code.difference(docs).collect();
    let phantom: Vec<_> = docs.difference(code).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "{what}: in the code but not in {page}: {undocumented:?}; in {page} but not in the code: {phantom:?}"
    );
}

// === metrics ===

/// Every metric name the registry exposes, as a scrape shows it (counters
/// with `_total`), with every family moved once so none is left out as
/// empty; and the scrape itself.
fn exposed_metrics() -> (BTreeSet<String>, String) {
    let m = Metrics::new();
    let ok = Ok::<(), ()>(());
    m.login(&ok);
    m.token_renewal(&ok);
    m.lease_renewal("db", &ok);
    m.lease_lookup("db", &ok);
    m.credential_issued("db");
    m.kv_read("db", &ok);
    m.certificate_issued("db", &ok);
    m.cert_expiry("db", SystemTime::now() + Duration::from_secs(60));
    m.vault_request("db_creds", Duration::from_millis(1), true);
    m.socket_status(200);
    m.socket_denied(Denied::Socket);
    m.state_resumed(1);
    m.state_load_failure("truncated");
    m.state_write(true);
    m.state_write(false);
    m.file_written(std::path::Path::new("/run/app.env"));
    m.bundle_switched("tls");
    m.file_command(std::path::Path::new("/run/app.env"), true);
    let registry = m.register(vaultlet::store::Store::new(["db"]), true);
    let text = vaultlet::metrics::render(&registry);
    let exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();

    // A family nothing above moved would be missing from the scrape (the
    // encoder skips empty ones) and so from this check: every name the
    // registry holds must have been exposed. The registry's Debug output is
    // the only public list of what was registered.
    let registered: Vec<String> = format!("{registry:?}")
        .split("name: \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|n| n.starts_with("vaultlet_"))
        .map(str::to_string)
        .collect();
    assert!(registered.iter().any(|n| n == "vaultlet_logins"), "cannot read the registered names: {registered:?}");
    for name in &registered {
        assert!(
            exposed.contains(name) || exposed.contains(&format!("{name}_total")),
            "{name} is registered but was not exposed: record it once in exposed_metrics()"
        );
    }
    (exposed, text)
}

/// Every `vaultlet_…` word of `text`, histogram series reduced to the
/// histogram's name.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("vaultlet_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let word = &tail[..end];
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || c == '.') {
            let word = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
            out.insert(word.trim_end_matches('_').to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

#[test]
fn every_metric_the_registry_exposes_is_in_the_docs_table_and_no_other() {
    let (code, _) = exposed_metrics();
    let page = read("docs/observability.md");
    let table: BTreeSet<String> = table_rows(&page, "metric")
        .iter()
        .flat_map(|r| spans_in(&r[0]))
        .filter(|s| s.starts_with("vaultlet_"))
        .collect();
    compare("metrics", &code, &table, "docs/observability.md's table");

    // Names written anywhere else (prose, alert rules) must exist too.
    let mut sources: Vec<PathBuf> = doc_pages();
    sources.push(root().join("examples/prometheus/alerts.yml"));
    for p in sources {
        let text = std::fs::read_to_string(&p).unwrap();
        let spans = if p.extension().is_some_and(|e| e == "md") { code_spans(&text).join("\n") } else { text };
        for word in metric_words(&spans) {
            assert!(code.contains(&word), "{}: `{word}` is not a metric vaultlet exposes", rel(&p));
        }
    }
}

// === configuration keys ===

/// Dotted words in the docs that start like a key but name files.
const FILE_EXTENSIONS: &[&str] =
    &["rs", "md", "sh", "py", "toml", "yml", "yaml", "hcl", "json", "service", "conf", "sock"];

/// Dotted words in the docs that start like a key but are host names.
const NOT_KEYS: &[&str] = &["vault.internal"];

#[test]
fn every_config_key_the_loader_accepts_is_documented_and_no_other() {
    let keys = vaultlet::config::keys();
    assert!(keys.iter().all(|k| !k.path.ends_with('.')), "{keys:?}");
    // A table whose struct's fields could not be read would look empty.
    for k in keys.iter().filter(|k| k.table) {
        let prefix = format!("{}.", k.path);
        assert!(keys.iter().any(|c| c.path.starts_with(&prefix)), "table {} has no keys", k.path);
    }
    let all: BTreeSet<String> = keys.iter().map(|k| k.path.clone()).collect();
    let leaves: BTreeSet<String> = keys.iter().filter(|k| !k.table).map(|k| k.path.clone()).collect();

    let page = read("docs/configuration.md");
    let documented: BTreeSet<String> = table_rows(&page, "key").iter().flat_map(|r| spans_in(&r[0])).collect();
    let undocumented: Vec<_> = leaves.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&all).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "config keys: accepted by the loader but not in docs/configuration.md's tables: {undocumented:?}; \
         in those tables but not accepted by the loader: {phantom:?}"
    );

    // A dotted key written anywhere in the docs must be one the loader takes
    // (`secret.db.drain` is read as `secret.NAME.drain`).
    let tops: BTreeSet<&str> = keys.iter().map(|k| k.path.split('.').next().unwrap()).collect();
    for p in doc_pages() {
        for span in code_spans(&std::fs::read_to_string(&p).unwrap()) {
            let Some((top, _)) = span.split_once('.') else { continue };
            let last = span.rsplit('.').next().unwrap_or_default();
            if !tops.contains(top)
                || !span.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                || FILE_EXTENSIONS.contains(&last)
                || NOT_KEYS.contains(&span.as_str())
            {
                continue;
            }
            let parts: Vec<&str> = span.split('.').collect();
            let generic = match (parts[0], parts.len()) {
                ("secret", n) if n >= 2 => {
                    format!("secret.NAME{}", parts[2..].iter().map(|s| format!(".{s}")).collect::<String>())
                }
                ("exec", 3) if parts[1] == "env" => "exec.env.NAME".to_string(),
                _ => span.clone(),
            };
            assert!(all.contains(&generic), "{}: `{span}` is not a key the loader accepts", rel(&p));
        }
    }
}

// === the command line ===

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vaultlet")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "vaultlet {args:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The words of `text` that look like long flags (`--name`).
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        let name: String =
            text[i + 2..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
        {
            out.insert(format!("--{name}"));
        }
    }
    out
}

/// What one `--help` offers: its flags (long and short) and variables.
#[derive(Default)]
struct Offered {
    flags: BTreeSet<String>,
    vars: BTreeSet<String>,
}

fn offered(text: &str) -> Offered {
    let mut o = Offered::default();
    let options = text.split("Options:").nth(1).unwrap_or_default();
    for line in options.lines() {
        let t = line.trim_start();
        if let Some(short) = t.strip_prefix('-').filter(|s| !s.starts_with('-')) {
            o.flags.insert(format!("-{}", &short[..1]));
        }
        if t.starts_with('-') {
            let head = t.split("  ").next().unwrap_or_default();
            o.flags.extend(long_flags(head));
        }
        for var in line.split("[env: ").skip(1).filter_map(|s| s.split('=').next()) {
            o.vars.insert(var.to_string());
        }
    }
    o
}

fn commands() -> Vec<String> {
    subcommands(&help(&[]))
}

/// The commands a `--help` text lists (`vaultlet import` has its own).
fn subcommands(help: &str) -> Vec<String> {
    let list = help.split("Commands:").nth(1).and_then(|s| s.split("\n\n").next()).unwrap_or_default();
    list.lines().filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(str::to_string).collect()
}

#[test]
fn every_cli_flag_variable_and_command_is_documented_and_no_other() {
    let page = read("docs/cli.md");
    let commands = commands();
    assert!(commands.iter().any(|c| c == "run"), "cannot read the commands of `vaultlet --help`: {commands:?}");
    let global = offered(&help(&[]));
    let mut flags = global.flags.clone();
    let mut vars = global.vars.clone();
    let mut per_command = Vec::new();
    for c in &commands {
        let text = help(&[c]);
        let mut o = offered(&text);
        // A command's own commands (`import env`): their flags count as
        // the command's.
        for sub in subcommands(&text) {
            let s = offered(&help(&[c, &sub]));
            o.flags.extend(s.flags);
            o.vars.extend(s.vars);
        }
        flags.extend(o.flags.iter().cloned());
        vars.extend(o.vars.iter().cloned());
        per_command.push((c.clone(), o.flags));
    }

    let spans = code_spans(&page);
    let doc_flags: BTreeSet<String> = long_flags(&page)
        .into_iter()
        .chain(spans.iter().filter(|s| s.len() == 2 && s.starts_with('-') && *s != "--").cloned())
        .collect();
    compare("flags", &flags, &doc_flags, "docs/cli.md");
    let doc_vars: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.starts_with("VAULTLET_") && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .cloned()
        .collect();
    compare("variables", &vars, &doc_vars, "docs/cli.md");
    let doc_commands: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| s.strip_prefix("vaultlet "))
        // `vaultlet import env`: the command is `import`.
        .map(|s| s.split(' ').next().unwrap_or_default())
        .filter(|s| s.chars().all(|c| c.is_ascii_lowercase()))
        .map(str::to_string)
        .collect();
    compare("commands", &commands.iter().cloned().collect(), &doc_commands, "docs/cli.md");

    // Every `vaultlet <command> …` written in the docs uses a command that
    // exists and only flags that command takes (an `exec` app's own flags,
    // after `--`, are the app's).
    for p in doc_pages() {
        let text = std::fs::read_to_string(&p).unwrap();
        let lines = code_spans(&text).into_iter().chain(fenced_lines(&text).into_iter().map(|l| l.trim().to_string()));
        for line in lines {
            let Some(rest) = line.strip_prefix("vaultlet ") else { continue };
            let rest = rest.split(" -- ").next().unwrap_or_default();
            let rest = rest.split(" #").next().unwrap_or_default();
            let words: Vec<&str> = rest.split_whitespace().collect();
            let Some(word) = words.iter().find(|w| !w.starts_with('-')) else { continue };
            if word.starts_with('<') || *word == "…" {
                continue; // a placeholder: `vaultlet <command> --help`, `vaultlet …`
            }
            let Some((_, taken)) = per_command.iter().find(|(c, _)| c == word) else {
                panic!("{}: `vaultlet {rest}` uses a command vaultlet does not have", rel(&p));
            };
            for flag in long_flags(rest) {
                assert!(
                    taken.contains(&flag) || global.flags.contains(&flag),
                    "{}: `vaultlet {word}` does not take {flag} (in `vaultlet {rest}`)",
                    rel(&p)
                );
            }
        }
    }
}

// === tests the docs name ===

/// The names of every test a script or a test file defines: `fn NAME`
/// (Rust), `def NAME` (Python), `pass NAME` (the deploy scripts).
fn defined_tests() -> BTreeSet<String> {
    let mut files = Vec::new();
    for (dir, ext) in [("src", "rs"), ("tests", "rs"), ("scripts", "py"), ("scripts", "sh")] {
        files_under(&root().join(dir), ext, &mut files);
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for kw in ["fn ", "def ", "pass "] {
            for (i, _) in text.match_indices(kw) {
                let name: String =
                    text[i + kw.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_test_the_docs_cite_exists() {
    let defined = defined_tests();
    // Long snake case words that are not tests: config keys and the names
    // and label values of metrics (the scrape's help text lists those).
    let key_words: BTreeSet<String> = vaultlet::config::keys()
        .iter()
        .flat_map(|k| k.path.split('.').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let (_, scrape) = exposed_metrics();
    for p in doc_pages() {
        for span in code_spans(&std::fs::read_to_string(&p).unwrap()) {
            let looks_like_a_test = span.matches('_').count() >= 3
                && span.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !key_words.contains(&span)
                && !scrape.contains(&span);
            if looks_like_a_test {
                assert!(defined.contains(&span), "{}: test `{span}` does not exist", rel(&p));
            }
        }
    }
}

#[test]
fn deploy_test_table_lists_exactly_the_tests_the_scripts_run() {
    let mut scripts = vec![root().join("scripts/test-deploy.sh")];
    files_under(&root().join("scripts/deploy"), "sh", &mut scripts);
    let mut run = BTreeSet::new();
    for s in scripts {
        for line in std::fs::read_to_string(&s).unwrap().lines() {
            if let Some(name) = line.trim_start().strip_prefix("pass ").and_then(|r| r.split_whitespace().next()) {
                run.insert(name.to_string());
            }
        }
    }
    assert!(!run.is_empty(), "no `pass NAME` found in the deploy scripts");
    let page = read("docs/testing.md");
    let section = page.split("## Containers and systemd").nth(1).expect("docs/testing.md: Containers and systemd");
    let listed: BTreeSet<String> = table_rows(section, "test").iter().flat_map(|r| spans_in(&r[0])).collect();
    compare("container and systemd tests", &run, &listed, "docs/testing.md");
}

// === links ===

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(h) = line.strip_prefix('#') else { continue };
        let base = slug(h.trim_start_matches('#'));
        let mut s = base.clone();
        let mut n = 0;
        while seen.contains(&s) {
            n += 1;
            s = format!("{base}-{n}");
        }
        seen.insert(s);
    }
    seen
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut pages = doc_pages();
    for dir in ["examples", "policies", "clients", "bench"] {
        let mut md = Vec::new();
        files_under(&root().join(dir), "md", &mut md);
        pages.extend(md.into_iter().filter(|p| p.file_name().is_some_and(|n| n == "README.md")));
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for line in prose_lines(&text) {
            for target in line.split("](").skip(1).filter_map(|s| s.split(')').next()) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
                if !path.exists() {
                    broken.push(format!("{}: {target} (no such file)", rel(page)));
                    continue;
                }
                if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                    let target_text = std::fs::read_to_string(&path).unwrap();
                    if !anchors(&target_text).contains(anchor) {
                        broken.push(format!("{}: {target} (no such heading)", rel(page)));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
