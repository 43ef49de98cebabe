//! Imports point down: the files of `src/` form no import loop.
//!
//! Every file of the library is a node; a file that names an item of another
//! file (`crate::a::b`, `use crate::{…}`, `super::x`) has an edge to it.
//! Comments, string literals and `#[cfg(test)]` items (and files declared
//! under `#[cfg(test)]`) are left out. A module's own file (`foo.rs` or
//! `foo/mod.rs`) sits above its children: its references down to them are
//! not edges, but a child naming its parent is. The graph must have no
//! cycle; when it has one, the test prints it.
//!
//! The layers, bottom to top (also in docs/architecture.md):
//!
//! 1. `limits`, `secret`, `write`, `harden`, `telemetry`, `process`
//! 2. `config` (`cx`, `types`, `state`, `raw`, `templates`, `check`), `client`
//! 3. `metrics` counters, `vault` (`ops`, `transport`, `error`, `guard`, `tls`,
//!    `endpoints`, `backend`, `client`, then `mod.rs`)
//! 4. `lease::schedule`, `lease::retry`, `ledger`, `token`
//! 5. `auth` (`method`, `approle`, `jwt`, then `mod.rs`)
//! 6. `rejected`, `store` (then `metrics` reads the store for its gauges)
//! 7. `lease` (`task`, `leased`, then `database`, `pki`, `kv`, then `mod.rs`)
//! 8. `state` (`identity`, `file`, `resume`, `writer`, then `mod.rs`)
//! 9. `render`, `api`
//! 10. `daemon`, then `supervise`, then `exec`; `policy` (above `config`
//!     and `vault`, for the `policy` command), then `import`; `lib` only declares
//!
//! A path through a re-export counts as a path to the re-exporting file,
//! so a loop through a re-export would go unseen: `exec` names
//! `crate::render::keyed_hasher` (defined in `render/file.rs`), which is why
//! the programs both start live below them both, in `process`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One token of cleaned source: an identifier or one punctuation character
/// (`::` is one token).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Punct(&'static str),
    Other,
}

/// Tokens of `src`, without comments, string, byte-string and char
/// literals.
fn tokens(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
            || c == b'b' && b.get(i + 1) == Some(&b'r') && matches!(b.get(i + 2), Some(b'#') | Some(b'"'))
        {
            // Raw string: r"…", r#"…"#, br"…".
            i += if c == b'b' { 2 } else { 1 };
            let mut hashes = 0;
            while b.get(i) == Some(&b'#') {
                hashes += 1;
                i += 1;
            }
            if b.get(i) != Some(&b'"') {
                // `r#ident`: a raw identifier.
                out.push(Tok::Other);
                continue;
            }
            i += 1;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == b'"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&b'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push(Tok::Other);
        } else if c == b'"' || c == b'b' && b.get(i + 1) == Some(&b'"') {
            i += if c == b'b' { 2 } else { 1 };
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == b'\'' || c == b'b' && b.get(i + 1) == Some(&b'\'') {
            // A char literal, or a lifetime (`'a` with no closing quote).
            let start = if c == b'b' { i + 1 } else { i };
            if b.get(start + 1) == Some(&b'\\') {
                let mut j = start + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
            } else {
                let ch_len = src[start + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(start + 1 + ch_len) == Some(&b'\'') {
                    i = start + 2 + ch_len;
                } else {
                    i = start + 1; // lifetime: its name follows as an identifier
                }
            }
            out.push(Tok::Other);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[s..i].to_string()));
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Tok::Punct("::"));
            i += 2;
        } else {
            out.push(match c {
                b'{' => Tok::Punct("{"),
                b'}' => Tok::Punct("}"),
                b'(' => Tok::Punct("("),
                b')' => Tok::Punct(")"),
                b'[' => Tok::Punct("["),
                b']' => Tok::Punct("]"),
                b';' => Tok::Punct(";"),
                b',' => Tok::Punct(","),
                b'#' => Tok::Punct("#"),
                b'*' => Tok::Punct("*"),
                c if c.is_ascii_whitespace() => {
                    i += 1;
                    continue;
                }
                _ => Tok::Other,
            });
            i += 1;
        }
    }
    out
}

fn is(t: Option<&Tok>, p: &str) -> bool {
    matches!(t, Some(Tok::Punct(q)) if *q == p)
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Index just past the bracket group that opens at `i`.
fn skip_group(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct("{" | "(" | "[") => depth += 1,
            Tok::Punct("}" | ")" | "]") => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Drops every item under `#[cfg(test)]`; returns the names of modules it
/// declared that way (`#[cfg(test)] mod x;`), whose files are test-only.
fn strip_test_items(toks: Vec<Tok>) -> (Vec<Tok>, Vec<String>) {
    let mut out = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let cfg_test = is(toks.get(i), "#")
            && is(toks.get(i + 1), "[")
            && ident(toks.get(i + 2)) == Some("cfg")
            && is(toks.get(i + 3), "(")
            && ident(toks.get(i + 4)) == Some("test")
            && is(toks.get(i + 5), ")")
            && is(toks.get(i + 6), "]");
        if !cfg_test {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        i += 7;
        // Further attributes, then the item: up to its `;` or its body.
        while is(toks.get(i), "#") {
            i = skip_group(&toks, i + 1);
        }
        let mut j = i;
        while j < toks.len() {
            if ident(toks.get(j)) == Some("mod") && is(toks.get(j + 2), ";") {
                test_mods.push(ident(toks.get(j + 1)).unwrap_or_default().to_string());
            }
            match &toks[j] {
                Tok::Punct(";") => {
                    j += 1;
                    break;
                }
                Tok::Punct("{") => {
                    j = skip_group(&toks, j);
                    break;
                }
                Tok::Punct("(" | "[") => j = skip_group(&toks, j),
                _ => j += 1,
            }
        }
        i = j;
    }
    (out, test_mods)
}

/// Expands the use tree starting at `i` (after `use`) into full paths
/// (each a list of segments, `*` and `self` kept), appended to `out`;
/// returns the index after it.
fn use_tree(toks: &[Tok], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    if is(toks.get(i), "::") {
        i += 1;
    }
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) if s != "as" => {
                path.push(s.clone());
                i += 1;
                if is(toks.get(i), "::") {
                    i += 1;
                    continue;
                }
                if ident(toks.get(i)) == Some("as") {
                    i += 2;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Punct("*")) => {
                out.push(path);
                return i + 1;
            }
            Some(Tok::Punct("{")) => {
                i += 1;
                while !is(toks.get(i), "}") && i < toks.len() {
                    i = use_tree(toks, i, path.clone(), out);
                    if is(toks.get(i), ",") {
                        i += 1;
                    }
                }
                return i + 1;
            }
            _ => return i,
        }
    }
}

/// One library file: its module path and what it names.
struct File {
    module: Vec<String>,
    /// Paths as written (first segment `crate`, `super`, `self` or a child).
    /// Each path as written, with the inline module it is written in and
    /// whether it is a re-export (`pub use`).
    paths: Vec<(Vec<String>, Vec<String>, bool)>,
    test_mods: Vec<String>,
}

fn read(path: &Path, module: Vec<String>) -> File {
    let src = std::fs::read_to_string(path).unwrap();
    let (toks, test_mods) = strip_test_items(tokens(&src));
    let mut children = BTreeSet::new();
    let mut paths = Vec::new();
    // Inline (non-test) modules: (name, brace depth at which it closes).
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        let here = || {
            let mut m = module.clone();
            m.extend(inline.iter().map(|(n, _)| n.clone()));
            m
        };
        match &toks[i] {
            Tok::Punct("{") => depth += 1,
            Tok::Punct("}") => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let Some(name) = ident(toks.get(i + 1)) {
                    if is(toks.get(i + 2), ";") {
                        children.insert(name.to_string());
                    } else if is(toks.get(i + 2), "{") {
                        inline.push((name.to_string(), depth));
                        depth += 1;
                        i += 3;
                        continue;
                    }
                }
            }
            Tok::Ident(k) if k == "use" => {
                let reexport = ident(i.checked_sub(1).and_then(|p| toks.get(p))) == Some("pub")
                    || is(i.checked_sub(1).and_then(|p| toks.get(p)), ")")
                        && ident(i.checked_sub(4).and_then(|p| toks.get(p))) == Some("pub");
                let mut trees = Vec::new();
                i = use_tree(&toks, i + 1, Vec::new(), &mut trees);
                paths.extend(trees.into_iter().map(|t| (here(), t, reexport)));
                continue;
            }
            Tok::Ident(first) if !is(i.checked_sub(1).and_then(|p| toks.get(p)), "::") => {
                let starts = ["crate", "super", "self"].contains(&first.as_str()) || children.contains(first);
                if starts && is(toks.get(i + 1), "::") {
                    let mut path = vec![first.clone()];
                    let mut j = i + 1;
                    while is(toks.get(j), "::") {
                        match ident(toks.get(j + 1)) {
                            Some(s) => path.push(s.to_string()),
                            None => break,
                        }
                        j += 2;
                    }
                    paths.push((here(), path, false));
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    File { module, paths, test_mods }
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The files of the library and the edges between them.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    let mut files = Vec::new();
    for p in paths {
        let rel = p.strip_prefix(src).unwrap().with_extension("");
        let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        match module.as_slice() {
            [m] if m == "main" => continue, // the binary: a crate of its own
            [m] if m == "lib" => module.clear(),
            _ => {}
        }
        files.push(read(&p, module));
    }
    // Files declared under `#[cfg(test)]`, and their descendants, are tests.
    let test_only: Vec<Vec<String>> =
        files.iter().flat_map(|f| f.test_mods.iter().map(|m| [f.module.clone(), vec![m.clone()]].concat())).collect();
    files.retain(|f| !test_only.iter().any(|t| f.module.starts_with(t)));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let name = |m: &[String]| if m.is_empty() { "lib".to_string() } else { m.join("::") };

    let mut edges = BTreeMap::new();
    for f in &files {
        let mut out = BTreeSet::new();
        for (scope, path, reexport) in &f.paths {
            // To a path from the crate root.
            let mut abs = Vec::new();
            let mut rest = path.as_slice();
            match rest.first().map(String::as_str) {
                Some("crate") => rest = &rest[1..],
                Some("super") => {
                    abs = scope.clone();
                    while rest.first().is_some_and(|s| s == "super") {
                        abs.pop();
                        rest = &rest[1..];
                    }
                }
                Some("self") => {
                    abs = scope.clone();
                    rest = &rest[1..];
                }
                Some(_) if !path.is_empty() => abs = scope.clone(), // a child module
                _ => continue,
            }
            // `use` paths that start with an outside crate are not ours.
            if path[0] != "crate"
                && path[0] != "super"
                && path[0] != "self"
                && !modules.contains(&[scope.clone(), vec![path[0].clone()]].concat())
            {
                continue;
            }
            abs.extend(rest.iter().filter(|s| *s != "self").cloned());
            // The deepest file the path reaches.
            let target = (0..=abs.len()).rev().map(|n| &abs[..n]).find(|p| modules.contains(*p)).unwrap();
            let reexport_down = *reexport && target.starts_with(&f.module);
            if target != f.module.as_slice() && !reexport_down {
                out.insert(name(target));
            }
        }
        edges.insert(name(&f.module), out);
    }
    edges
}

/// A cycle of `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        mark.insert(n, Mark::Open);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match mark.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|s| *s == m).unwrap();
                    let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, edges, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n, Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in edges.keys() {
        if mark.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(n, edges, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Edges of loops not yet taken apart, left out of the check (each closes
/// a loop the rest of the graph does not): remove a line once its loop is
/// gone. Any other loop fails the test.
const KNOWN: &[(&str, &str)] = &[
    // `config/mod.rs` reads and checks through its children, which name
    // its types (`Config`, `EnvFormat`, …) back.
    ("config", "config::raw"),
    ("config", "config::state"),
];

#[test]
fn imports_point_down() {
    let mut edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (from, to) in KNOWN {
        assert!(edges.get_mut(*from).is_some_and(|e| e.remove(*to)), "{from} -> {to} is gone: take it off KNOWN");
    }
    if let Some(cycle) = find_cycle(&edges) {
        let mut why = String::new();
        for n in &cycle[..cycle.len() - 1] {
            why.push_str(&format!("\n  {n} -> {}", edges[n].iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        panic!("the files of src/ import in a loop: {}{why}", cycle.join(" -> "));
    }
}

#[test]
fn a_loop_is_found() {
    let edges: BTreeMap<String, BTreeSet<String>> =
        [("a", &["b"][..]), ("b", &["c"][..]), ("c", &["a"][..]), ("d", &["a"][..])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn references_are_read_from_code_only() {
    let src = r##"
        //! [`crate::x`] in a doc comment
        use crate::{a::{self, b::C}, d as e};
        use super::f::*;
        /* crate::g */ fn h() -> &'static str { let _ = 'c'; crate::i::J::k(); "crate::l" }
        #[cfg(test)]
        mod tests { use crate::m; }
        mod inner { use super::n; }
    "##;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.rs");
    std::fs::write(&p, src).unwrap();
    let f = read(&p, vec!["top".into(), "p".into()]);
    let got: BTreeSet<String> = f.paths.iter().map(|(s, p, _)| format!("{}:{}", s.join("::"), p.join("::"))).collect();
    let want: BTreeSet<String> = [
        "top::p:crate::a::self",
        "top::p:crate::a::b::C",
        "top::p:crate::d",
        "top::p:super::f",
        "top::p:crate::i::J::k",
        "top::p::inner:super::n",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
}
