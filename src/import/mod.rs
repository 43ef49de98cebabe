//! `vaultlet import`: bring an existing set-up over in one command.
//!
//! `vaultlet import env FILE` takes the `.env` file an app reads today
//! ([`env`] reads it the way the app's reader does, or refuses the lines it
//! cannot be sure of), writes its values to one KV v2 secret with the
//! operator's token, and writes a vaultlet configuration whose
//! `[[env_file]]` puts the same variables back in the same file, for the
//! same reader: the app changes nothing. Next to it go the least-privilege
//! policy ([`crate::policy`]) and the AppRole set-up, printed as commands
//! or, with `--apply`, done.
//!
//! Nothing is written until every line has been read and the plan is
//! complete; a refused line is an error naming the file and line (exit 64).
//! Values are never printed or logged: the plan shows keys only.

pub mod env;

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::EnvFormat;

/// What `vaultlet import env` was asked to do.
#[derive(Debug, Clone)]
pub struct EnvImport {
    /// The `.env` file (its absolute path is where vaultlet will write).
    pub file: PathBuf,
    /// The reader the app uses.
    pub format: EnvFormat,
    /// KV v2 mount and path to write the values to.
    pub kv_mount: String,
    /// Path under the mount.
    pub kv_path: String,
    /// The secret's name in vaultlet's configuration.
    pub name: String,
    /// The Vault address for the configuration and the writes.
    pub address: String,
    /// Where vaultlet.toml, vaultlet.hcl (and role_id, secret_id with
    /// `--apply`) are written.
    pub out: PathBuf,
    /// The AppRole role (and policy) name.
    pub role: String,
    /// The AppRole mount.
    pub approle_mount: String,
    /// CIDRs the secret_id and token are bound to (none: unbound).
    pub cidrs: Vec<String>,
}

/// The files `vaultlet import env` writes, by name in `out`.
pub struct Plan {
    /// vaultlet.toml
    pub config: String,
    /// vaultlet.hcl
    pub policy: String,
    /// The AppRole set-up, as commands an operator can run.
    pub commands: String,
    /// The variables, in file order (keys only are ever shown).
    pub keys: Vec<String>,
}

impl EnvImport {
    /// `--kv MOUNT/PATH` split at its first `/`.
    pub fn split_kv(kv: &str) -> Option<(String, String)> {
        let (m, p) = kv.trim_matches('/').split_once('/')?;
        (!m.is_empty() && !p.is_empty()).then(|| (m.to_owned(), p.to_owned()))
    }

    /// The configuration, policy and commands for `keys`.
    pub fn plan(&self, keys: Vec<String>) -> Plan {
        let out = self.out.display();
        let template: String = keys.iter().map(|k| format!("{k}={{{{ {}.{k} }}}}\n", self.name)).collect();
        let config = format!(
            r#"# Written by `vaultlet import env {file}`.
# The variables of {file} now live in Vault at {mount}/{path} (KV v2);
# vaultlet writes them back to the same file, for the same reader
# ({format}), with mode 0600. Delete any other copy of the old file.

[vault]
address = "{address}"{insecure}

[auth.approle]
mount = "{approle_mount}"
role_id_file = "{out}/role_id"
secret_id_file = "{out}/secret_id"

[secret.{name}]
kv = {{ mount = "{mount}", path = "{path}" }}

[[env_file]]
path = "{file}"
format = "{format}"
template = """
{template}"""
"#,
            file = self.file.display(),
            mount = self.kv_mount,
            path = self.kv_path,
            format = self.format.name(),
            address = self.address,
            approle_mount = self.approle_mount,
            name = self.name,
            insecure = if self.address.starts_with("http://") {
                "\n# Plain HTTP: tokens and secrets travel unencrypted. Use https:// outside a test bed.\nallow_insecure_http = true"
            } else {
                ""
            },
        );
        let mut commands = String::new();
        let bound = if self.cidrs.is_empty() {
            String::new()
        } else {
            let c = self.cidrs.join(",");
            format!(" \\\n    secret_id_bound_cidrs={c} token_bound_cidrs={c}")
        };
        let role = &self.role;
        let m = &self.approle_mount;
        let _ = write!(
            commands,
            "bao policy write {role} {out}/vaultlet.hcl\n\
             bao write auth/{m}/role/{role} token_policies={role} token_no_default_policy=true \\\n    \
             token_ttl=1h token_max_ttl=24h secret_id_num_uses=0 secret_id_ttl=0{bound}\n\
             bao read -field=role_id auth/{m}/role/{role}/role-id > {out}/role_id\n\
             bao write -f -field=secret_id auth/{m}/role/{role}/secret-id > {out}/secret_id\n\
             chmod 0600 {out}/role_id {out}/secret_id\n"
        );
        Plan { config, policy: String::new(), commands, keys }
    }
}

/// Writes `bytes` to a new file `path` with `mode` (never over an
/// existing one).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Does what `plan` says: the KV secret first (only if nothing is at its
/// path yet), then the files in `job.out`, then with `apply` the policy,
/// the AppRole role and its role_id and secret_id files. Returns one line
/// per thing done.
pub async fn apply_env(
    config: &crate::config::Config,
    job: &EnvImport,
    plan: &Plan,
    vars: &[(String, SecretString)],
    token: &SecretString,
    apply: bool,
) -> Result<Vec<String>, String> {
    let vault = crate::vault::Vault::new(&config.vault).map_err(|e| e.to_string())?;
    let mut done = Vec::new();
    let body = kv2_body(vars);
    let path = format!("{}/data/{}", job.kv_mount, job.kv_path);
    vault.operator_write(token, &path, body).await.map_err(|e| {
        let exists = e.to_string().contains("check-and-set");
        if exists {
            format!("{}/{} exists in Vault already; nothing was written (give another --kv)", job.kv_mount, job.kv_path)
        } else {
            e.to_string()
        }
    })?;
    done.push(format!("wrote {} keys to {}/{} (KV v2, version 1)", vars.len(), job.kv_mount, job.kv_path));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&job.out)
        .map_err(|e| format!("{}: {e}", job.out.display()))?;
    let (toml, hcl) = (job.out.join("vaultlet.toml"), job.out.join("vaultlet.hcl"));
    write_new(&toml, plan.config.as_bytes(), 0o600)?;
    write_new(&hcl, plan.policy.as_bytes(), 0o644)?;
    done.push(format!("wrote {} and {}", toml.display(), hcl.display()));
    if !apply {
        return Ok(done);
    }
    let json = |v: serde_json::Value| Zeroizing::new(v.to_string().into_bytes());
    let (m, role) = (&job.approle_mount, &job.role);
    vault
        .operator_write(token, &format!("sys/policies/acl/{role}"), json(serde_json::json!({ "policy": plan.policy })))
        .await
        .map_err(|e| e.to_string())?;
    let mut settings = serde_json::json!({
        "token_policies": role,
        "token_no_default_policy": true,
        "token_ttl": "1h",
        "token_max_ttl": "24h",
        "secret_id_num_uses": 0,
        "secret_id_ttl": 0,
    });
    if !job.cidrs.is_empty() {
        settings["secret_id_bound_cidrs"] = job.cidrs.clone().into();
        settings["token_bound_cidrs"] = job.cidrs.clone().into();
    }
    vault.operator_write(token, &format!("auth/{m}/role/{role}"), json(settings)).await.map_err(|e| e.to_string())?;
    done.push(format!("wrote policy {role} and AppRole role auth/{m}/role/{role}"));
    let data = vault.operator_read(token, &format!("auth/{m}/role/{role}/role-id")).await.map_err(|e| e.to_string())?;
    let role_id = data["role_id"].as_str().ok_or("the role-id answer has no role_id")?;
    let secret_id = vault.operator_secret_id(token, m, role).await.map_err(|e| e.to_string())?;
    write_new(&job.out.join("role_id"), role_id.as_bytes(), 0o600)?;
    write_new(&job.out.join("secret_id"), secret_id.expose_secret().as_bytes(), 0o600)?;
    done.push(format!(
        "wrote {} and {} (mode 0600)",
        job.out.join("role_id").display(),
        job.out.join("secret_id").display()
    ));
    Ok(done)
}

/// Reads `path` as text for the import: a regular file of bounded size.
pub fn read_env_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let bytes = crate::write::read_input_file(path, crate::write::MAX_INPUT_FILE).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8 text".to_owned())?;
    Ok(Zeroizing::new(text))
}

/// The JSON body of a KV v2 write of `vars`, in one wiped buffer, with
/// `cas = 0`: written only if the path holds no secret yet, so an import
/// never replaces someone's secret.
pub fn kv2_body(vars: &[(String, SecretString)]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(
        16 + vars.iter().map(|(k, v)| k.len() + v.expose_secret().len() * 6 + 8).sum::<usize>(),
    ));
    body.extend_from_slice(b"{\"options\":{\"cas\":0},\"data\":{");
    for (i, (k, v)) in vars.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        json_string(&mut body, k);
        body.push(b':');
        json_string(&mut body, v.expose_secret());
    }
    body.extend_from_slice(b"}}");
    body
}

/// `s` as a JSON string, appended without any intermediate copy.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_body_is_json_that_reads_back_to_the_values() {
        let vars = vec![
            ("A".to_string(), SecretString::from("say \"hi\"\\ \n\u{1} ü")),
            ("B".to_string(), SecretString::from("")),
        ];
        let body = kv2_body(&vars);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["data"]["A"], "say \"hi\"\\ \n\u{1} ü");
        assert_eq!(v["data"]["B"], "");
        assert_eq!(v["options"]["cas"], 0);
    }

    #[test]
    fn kv_argument_needs_a_mount_and_a_path() {
        assert_eq!(EnvImport::split_kv("secret/apps/api"), Some(("secret".into(), "apps/api".into())));
        assert_eq!(EnvImport::split_kv("secret"), None);
        assert_eq!(EnvImport::split_kv("/secret/"), None);
    }
}
