//! Env files and templates: render, encode, write atomically — only when
//! the content changed.
//!
//! Rendering is split by concern, each in its own file:
//!
//! * [`template`]: `[[template]]` files, their values escaped for the
//!   destination's syntax (JSON, YAML) or written as rendered;
//! * [`env`]: `KEY=VALUE` files and `vaultlet exec` environments, each value
//!   encoded for the reader the file's `format` names;
//! * [`file`]: the task that keeps one file (or one bundle of files) up to
//!   date, writing through the one atomic writer in [`crate::write`].
//!
//! The template language itself (the minijinja environment, the
//! placeholders) and the load-time checks live in
//! [`crate::config::templates`], so what the config accepts is what these
//! modules render. Errors ([`RenderError`]) name a key or a line, never a
//! value.

pub mod env;
pub mod file;
pub mod template;

pub use crate::config::templates::is_env_key;
pub use env::{EnvLine, encode, quote, render_env, render_env_lines, render_env_map};
pub use file::{Secrets, keyed_hasher, live_secrets, run_bundle, run_file, write_atomic};
pub use template::{render_json, render_raw, render_yaml};

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

/// Secrets for tests: (name, key, value) triples.
#[cfg(test)]
pub(crate) fn test_secrets(
    pairs: &[(&str, &str, &str)],
) -> std::collections::BTreeMap<String, std::sync::Arc<crate::secret::SecretData>> {
    use crate::secret::SecretData;
    use secrecy::SecretString;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    let mut m: BTreeMap<String, SecretData> = BTreeMap::new();
    for (n, k, v) in pairs {
        m.entry(n.to_string()).or_default().insert(*k, SecretString::from(v.to_string()));
    }
    m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnvFormat;
    use test_secrets as secrets;

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
}
