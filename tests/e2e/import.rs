//! `vaultlet import env` against the real server: a `.env` file moves into
//! Vault, and vaultlet writes it back for the app's own reader.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::TestFn;
use crate::bed::{Bed, Daemon, bin, eventually, test_dir};

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![t!(import_env_moves_a_dotenv_file_into_vault_and_the_app_reads_the_same_variables)]
}

/// The app's `.env`, as a Node app has it (npm `dotenv`).
const DOTENV: &str = "# the API's settings\n\
DATABASE_URL=postgres://api:pa55@db.internal:5432/app?sslmode=require\n\
STRIPE_KEY='sk_live_51H with spaces'\n\
GREETING=\"hello #1\"\n\
EMPTY=\n\
export NODE_ENV=production\n";

/// What npm `dotenv` (the copy scripts/env-parsers.sh installs) reads from `file`.
fn node_dotenv(file: &Path) -> Result<serde_json::Value> {
    let parsers =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/env-parsers.sh")).output()?;
    ensure!(parsers.status.success(), "scripts/env-parsers.sh: {}", String::from_utf8_lossy(&parsers.stderr));
    let text = String::from_utf8(parsers.stdout)?;
    let module = text.lines().find_map(|l| l.strip_prefix("NODE_DOTENV=")).context("NODE_DOTENV")?.to_owned();
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg("const d = require(process.argv[1]); const fs = require('fs'); process.stdout.write(JSON.stringify(d.parse(fs.readFileSync(process.argv[2]))))")
        .arg(module)
        .arg(file)
        .output()?;
    ensure!(out.status.success(), "node dotenv: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `vaultlet import env … --apply` with the operator's (root) token: the
/// values land in one KV v2 secret, exactly; the output names keys but no
/// value; vaultlet.toml, vaultlet.hcl, role_id and secret_id are written
/// (0600 for what is secret). vaultlet then runs from that configuration
/// under that policy alone and writes the file back, mode 0600, and npm
/// `dotenv` reads the same variables from it as from the original. A second
/// import to the same path is refused and replaces nothing; a file with a
/// line readers disagree about is refused by line and key (exit 64) and
/// nothing at all is written.
async fn import_env_moves_a_dotenv_file_into_vault_and_the_app_reads_the_same_variables(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("import-env")?;
    let env_file = dir.join("app.env");
    std::fs::write(&env_file, DOTENV)?;
    let before = node_dotenv(&env_file)?;
    let kv = format!("secret/imported/{}", std::process::id());
    let import = |out: &Path, file: &Path, kv: &str, extra: &[&str]| {
        std::process::Command::new(bin())
            .args(["import", "env"])
            .arg(file)
            .args(["--kv", kv, "--format", "dotenv-node", "--role", "t_import", "--vault", bed.addr(), "--out"])
            .arg(out)
            .args(extra)
            .env("VAULT_TOKEN", bed.get("BAO_TOKEN"))
            .output()
    };
    let out = dir.join("vaultlet");
    let run = import(&out, &env_file, &kv, &["--apply"])?;
    let (stdout, stderr) = (String::from_utf8(run.stdout)?, String::from_utf8_lossy(&run.stderr).to_string());
    ensure!(run.status.success(), "import env: {:?}\n{stdout}\n{stderr}", run.status);
    for value in ["pa55", "sk_live", "hello", "production"] {
        ensure!(!stdout.contains(value) && !stderr.contains(value), "a value was printed: {stdout}\n{stderr}");
    }
    ensure!(stdout.contains("DATABASE_URL, STRIPE_KEY, GREETING, EMPTY, NODE_ENV"), "keys shown: {stdout}");
    let stored = bed.api(reqwest::Method::GET, &kv.replacen('/', "/data/", 1), None, None).await?;
    ensure!(stored["data"]["data"] == before, "in Vault: {} vs the reader's {before}", stored["data"]["data"]);
    for (f, mode) in [("vaultlet.toml", 0o600), ("vaultlet.hcl", 0o644), ("role_id", 0o600), ("secret_id", 0o600)] {
        let m = std::fs::metadata(out.join(f)).with_context(|| f.to_owned())?.permissions().mode() & 0o777;
        ensure!(m == mode, "{f}: mode {m:o}");
    }

    // The app's file now comes from vaultlet.
    std::fs::remove_file(&env_file)?;
    let config = std::fs::read_to_string(out.join("vaultlet.toml"))?;
    let d = Daemon::start(&out, &config)?;
    eventually(Duration::from_secs(60), "the env file written back", || async { Ok(env_file.exists().then_some(())) })
        .await
        .with_context(|| d.log_text())?;
    let mode = std::fs::metadata(&env_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "env file mode {mode:o}");
    let after = node_dotenv(&env_file)?;
    ensure!(after == before, "dotenv reads {after} from vaultlet's file, {before} from the original");
    d.stop().await?;

    // Again to the same path: refused, the secret keeps version 1.
    std::fs::write(&env_file, "DATABASE_URL=other\n")?;
    let again = import(&dir.join("again"), &env_file, &kv, &[])?;
    ensure!(again.status.code() == Some(1), "second import: {again:?}");
    ensure!(String::from_utf8_lossy(&again.stderr).contains("exists in Vault already"), "{again:?}");
    let stored = bed.api(reqwest::Method::GET, &kv.replacen('/', "/data/", 1), None, None).await?;
    ensure!(stored["data"]["metadata"]["version"] == 1 && stored["data"]["data"] == before, "replaced: {stored}");
    ensure!(!dir.join("again").join("vaultlet.toml").exists(), "a config was written for a refused import");

    // A line dotenv and a shell read differently: nothing written anywhere.
    let bad = dir.join("bad.env");
    std::fs::write(&bad, "A=1\nSECRET=two words\n")?;
    let refused = import(&dir.join("bad"), &bad, "secret/imported/bad", &[])?;
    let text = String::from_utf8_lossy(&refused.stderr).to_string();
    ensure!(refused.status.code() == Some(64), "bad line: {refused:?}");
    ensure!(text.contains(&format!("{}:line 2: SECRET:", bad.display())) && !text.contains("two words"), "{text}");
    ensure!(!dir.join("bad").exists(), "files were written for a refused import");
    let nothing = bed.api(reqwest::Method::GET, "secret/data/imported/bad", None, None).await;
    ensure!(nothing.is_err(), "a secret was written for a refused import: {nothing:?}");
    Ok(())
}
