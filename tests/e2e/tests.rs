//! The end-to-end tests themselves.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::TestFn;
use crate::apps::*;
use crate::bed::{Bed, Daemon, bin, eventually, test_dir};
use crate::rotation::*;
use crate::security::*;

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    let mut v = vec![
        t!(core_slice_with_shipped_policy),
        t!(kv_change_bumps_version_and_rewrites_env_file),
        t!(long_poll_and_events_announce_new_versions),
        t!(prober_sees_no_failed_login_across_ten_rotations),
        t!(token_death_and_relogin_lose_no_login),
        t!(outage_freeze_and_restart_keep_serving),
        t!(vault_load_has_no_wasted_requests),
        t!(failover_to_new_leader_loses_no_login),
        t!(revoke_on_shutdown_kills_credentials),
        t!(caller_not_on_allow_list_gets_403),
        t!(check_rejects_broken_configs_with_exit_64),
        t!(wrapped_secret_id_is_unwrapped_and_removed),
        t!(refused_login_is_reported_by_ready),
        t!(exec_runs_the_app_with_secrets_and_restarts_on_change),
        t!(file_template_renders_and_runs_its_command),
        t!(systemd_notify_ready_and_stopping),
        t!(per_secret_acl_audit_and_rate_limit),
        t!(hidden_secrets_and_made_up_names_get_one_answer),
        t!(metrics_report_leases_and_requests),
        t!(modes_owner_and_memory_hold_under_permissive_umask),
        t!(no_secret_in_logs_at_trace_level),
        t!(tls_verifies_against_the_configured_ca_only),
    ];
    v.extend(crate::attack_local::all());
    v.extend(crate::attack_exec::all());
    v.extend(crate::attack_vault::all());
    v.extend(crate::pki::all());
    v.extend(crate::policy::all());
    v.extend(crate::import::all());
    v.extend(crate::revocation::all());
    v.extend(crate::restart::all());
    v.extend(crate::auth_methods::all());
    v
}

/// Broad policy for the per-test AppRoles (the shipped least-privilege policy
/// is exercised by `core_slice_with_shipped_policy`).
pub const TEST_POLICY: &str = r#"
path "database/creds/*" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["read"] }
path "kv/*" { capabilities = ["read"] }
path "sys/leases/renew/database/creds/*" { capabilities = ["update"] }
path "sys/leases/revoke/database/creds/*" { capabilities = ["update"] }
path "sys/leases/lookup" {
  capabilities = ["update"]
  allowed_parameters = { "lease_id" = ["database/creds/*"] }
}
"#;

pub async fn prepare(bed: &Bed) -> Result<()> {
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": TEST_POLICY })).await?;
    Ok(())
}

pub fn config(bed: &Bed, dir: &Path, body: &str) -> String {
    format!(
        r#"
[vault]
address = "{addr}"
request_timeout = "3s"
connect_timeout = "1s"

[auth.approle]
role_id_file = "{dir}/role_id"
secret_id_file = "{dir}/secret_id"

[socket]
path = "{dir}/vaultlet.sock"

{body}
"#,
        addr = bed.addr(),
        dir = dir.display()
    )
}

fn sh_env(file: &Path, vars: &[&str]) -> Result<Vec<String>> {
    let script =
        format!("set -a; . \"$1\"; {}", vars.iter().map(|v| format!("printf '%s\\0' \"${v}\";")).collect::<String>());
    let out = std::process::Command::new("sh").arg("-c").arg(script).arg("sh").arg(file).output()?;
    ensure!(out.status.success(), "sh could not source {}", file.display());
    Ok(String::from_utf8(out.stdout)?.split('\0').filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

/// The slice a user sees first: the bed's AppRole with the shipped policy,
/// a leased PostgreSQL credential that logs in, KV v2 and v1 values on the
/// socket and in the env file, `vaultlet get`, error answers, clean stop.
async fn core_slice_with_shipped_policy(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("core")?;
    std::fs::copy(bed.get("ROLE_ID_FILE"), dir.join("role_id"))?;
    std::fs::copy(bed.get("SECRET_ID_FILE"), dir.join("secret_id"))?;
    let env_path = dir.join("app.env");
    let d = Daemon::start(
        &dir,
        &config(
            &bed,
            &dir,
            &format!(
                r#"
[secret.db]
database = {{ mount = "database", role = "api" }}
[secret.api]
kv = {{ mount = "secret", path = "api" }}
[secret.legacy]
kv = {{ mount = "kv", path = "api", version = 1 }}

[[env_file]]
path = "{}"
template = """
DATABASE_URL=postgresql://{{{{ db.username }}}}:{{{{ db.password }}}}@127.0.0.1:{}/app
STRIPE_KEY={{{{ api.stripe_key }}}}
SMTP_PASSWORD={{{{ legacy.smtp_password }}}}
"""
"#,
                env_path.display(),
                bed.get("PGPORT")
            ),
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;

    // Leased credentials log in to PostgreSQL.
    let (user, pass, _) = d.creds("db").await?;
    bed.pg_login(&user, &pass).await.context("served database credentials must log in")?;
    let (_, doc) = d.get("/v1/secrets/db").await?;
    ensure!(doc["lease"]["renewable"] == json!(true), "lease shown: {}", doc["lease"]);
    ensure!(doc["lease"]["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')), "expires_at: {}", doc["lease"]);

    // KV v2 and v1 reach the socket, without a lease.
    let (st, api) = d.get("/v1/secrets/api").await?;
    ensure!(st == 200 && api["data"]["stripe_key"] == "sk_test_demo123" && api["version"] == 1, "{api}");
    ensure!(api.get("lease").is_none(), "kv has no lease: {api}");
    let (_, legacy) = d.get("/v1/secrets/legacy").await?;
    ensure!(legacy["data"]["smtp_password"] == "smtp_demo456", "{legacy}");
    let (_, all) = d.get("/v1/secrets").await?;
    let names: Vec<_> = all["secrets"].as_object().context("secrets map")?.keys().cloned().collect();
    ensure!(names == ["api", "db", "legacy"], "{names:?}");

    // The env file: mode 0600, and sh reads back exactly what the socket serves.
    let file = eventually(Duration::from_secs(30), "env file", || async { Ok(env_path.exists().then_some(())) }).await;
    file?;
    let mode = std::fs::metadata(&env_path)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "env file mode {mode:o}");
    let vals = sh_env(&env_path, &["DATABASE_URL", "STRIPE_KEY", "SMTP_PASSWORD"])?;
    ensure!(
        vals == [
            format!("postgresql://{user}:{pass}@127.0.0.1:{}/app", bed.get("PGPORT")),
            "sk_test_demo123".into(),
            "smtp_demo456".into()
        ],
        "env file values differ from the socket"
    );

    // `vaultlet ready` for health checks: exit 0, prints nothing.
    let out = tokio::process::Command::new(bin()).args(["ready", "--socket"]).arg(&d.socket).output().await?;
    ensure!(out.status.success() && out.stdout.is_empty(), "ready: {out:?}");

    // `vaultlet get` for shell scripts.
    let out =
        tokio::process::Command::new(bin()).args(["get", "api.stripe_key", "--socket"]).arg(&d.socket).output().await?;
    ensure!(out.status.success() && out.stdout == b"sk_test_demo123\n", "get: {:?}", out);
    // A name that is not configured is answered like a secret the caller
    // may not read.
    let out = tokio::process::Command::new(bin()).args(["get", "nope", "--socket"]).arg(&d.socket).output().await?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("403"), "get nope: {:?}", out);

    // Error answers: JSON, right status, no-store everywhere.
    let (st, body) = d.request("GET /v1/secrets/nope HTTP/1.0\r\n\r\n").await?;
    ensure!(st == 403 && body.contains("\"error\""), "{st} {body}");
    let (st, _) = d.request("GET /v1/secrets/..%2Fetc HTTP/1.0\r\n\r\n").await?;
    ensure!(st == 400, "bad name: {st}");
    let (st, _) = d.request("POST /v1/secrets/db HTTP/1.0\r\nContent-Length: 0\r\n\r\n").await?;
    ensure!(st == 405, "POST: {st}");
    let (st, _) = d.request("GET /v2/whatever HTTP/1.0\r\n\r\n").await?;
    ensure!(st == 404, "unknown route: {st}");
    let mut s = tokio::net::UnixStream::connect(&d.socket).await?;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /v1/secrets/db HTTP/1.0\r\n\r\n").await?;
    let mut raw = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut raw).await?;
    ensure!(raw.to_ascii_lowercase().contains("cache-control: no-store"), "no-store header missing");
    let (st, _) = d.request("THIS IS NOT HTTP\r\n\r\n").await.context("garbage must get an answer")?;
    ensure!(st == 400, "garbage: {st}");
    let huge = format!("GET /v1/health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    // The server answers before it has read everything and closes, so the
    // rest of the write may fail; the answer must still arrive.
    let mut s = tokio::net::UnixStream::connect(&d.socket).await?;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, huge.as_bytes()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await? {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e).context("a huge header must get an answer"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"), "huge header: {answer}");
    let (st, _) = d.get("/v1/health").await?;
    ensure!(st == 200, "still healthy after bad input");

    let log = d.log_text();
    ensure!(
        d.counter("vaultlet_vault_requests_total{operation=\"db_role\",result=\"ok\"}").await? >= 1.0,
        "the shipped policy lets vaultlet read max_ttl"
    );
    ensure!(!log.contains(&pass), "password in the log");
    ensure!(!log.contains("sk_test_demo123"), "kv value in the log");
    let socket = d.socket.clone();
    let st = d.stop().await?;
    ensure!(st.success(), "exit status {st}");
    ensure!(!socket.exists(), "socket removed on exit");
    Ok(())
}

/// A KV secret re-read every second: unchanged re-reads keep version 1; a
/// changed value bumps it and rewrites the env file once (a new file renamed
/// into place, read back by `sh`).
async fn kv_change_bumps_version_and_rewrites_env_file(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("kv")?;
    bed.approle("t_kv", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_kv", json!({ "data": { "token": "first-value" } })).await?;
    let env_path = dir.join("kv.env");
    let d = Daemon::start(
        &dir,
        &config(
            &bed,
            &dir,
            &format!(
                "[secret.app]\nkv = {{ path = \"t_kv\" }}\nrefresh = \"1s\"\n[[env_file]]\npath = \"{}\"\ntemplate = \"TOKEN={{{{ app.token }}}}\\n\"\n",
                env_path.display()
            ),
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Several re-reads of unchanged content keep version 1.
    let reads = "vaultlet_kv_reads_total{secret=\"app\",result=\"ok\"}";
    eventually(Duration::from_secs(60), "three kv reads", || async {
        Ok((d.counter(reads).await? >= 3.0).then_some(()))
    })
    .await?;
    let (_, v) = d.get("/v1/secrets/app").await?;
    ensure!(v["version"] == 1, "unchanged content must not bump the version: {v}");
    // Each write is a new file renamed into place: a new inode.
    let written = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&env_path)?);

    bed.write("secret/data/t_kv", json!({ "data": { "token": "second 'value' $x" } })).await?;
    eventually(Duration::from_secs(60), "version 2", || async {
        let (_, v) = d.get("/v1/secrets/app").await?;
        Ok((v["version"] == 2 && v["data"]["token"] == "second 'value' $x").then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(30), "env file rewritten", || async {
        let vals = sh_env(&env_path, &["TOKEN"])?;
        Ok((vals == ["second 'value' $x"]).then_some(()))
    })
    .await?;
    ensure!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&env_path)?) != written,
        "the env file was replaced, not edited in place"
    );
    // The write is counted once the file is in place: wait for it, then
    // for two more reads of the unchanged value, which must not write again.
    let writes = format!("vaultlet_file_writes_total{{file=\"{}\"}}", env_path.display());
    eventually(Duration::from_secs(30), "the rewrite counted", || async {
        Ok((d.counter(&writes).await? >= 2.0).then_some(()))
    })
    .await?;
    let seen = d.counter(reads).await?;
    eventually(Duration::from_secs(60), "two more reads", || async {
        Ok((d.counter(reads).await? >= seen + 2.0).then_some(()))
    })
    .await?;
    ensure!(d.counter(&writes).await? == 2.0, "env file written once per change");
    d.stop().await?;
    Ok(())
}

/// Long-polls answer at once when a newer version than `after` exists, on
/// the change when one is parked, or with the current version when the wait
/// runs out; `/v1/events` announces the current version, then the new one.
async fn long_poll_and_events_announce_new_versions(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("poll")?;
    bed.approle("t_poll", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_poll", json!({ "data": { "v": "one" } })).await?;
    // Two waits per uid: the event stream and one parked long-poll. A third
    // is refused (429), which shows the parked one is really waiting.
    let cfg = config(&bed, &dir, "[secret.app]\nkv = { path = \"t_poll\" }\nrefresh = \"1s\"\n")
        .replace("[socket]\n", "[socket]\nmax_waits_per_uid = 2\n");
    let d = Daemon::start(&dir, &cfg)?;
    eventually(Duration::from_secs(30), "socket", || async { Ok(d.socket.exists().then_some(())) }).await?;
    // Without `after`, `wait` waits for the secret to become available.
    let (st, v) = d.get("/v1/secrets/app?wait=30s").await?;
    ensure!(st == 200 && v["version"] == 1, "{st} {v}");
    // A newer version than `after` exists: immediate answer.
    let (st, v) = d.get("/v1/secrets/app?wait=30s&after=0").await?;
    ensure!(st == 200 && v["version"] == 1, "{st} {v}");
    // Nothing newer: the wait runs out and the current version comes back.
    let t = tokio::time::Instant::now();
    let (st, v) = d.get("/v1/secrets/app?wait=1s&after=1").await?;
    ensure!(st == 200 && v["version"] == 1 && t.elapsed() >= Duration::from_millis(900), "{st} {v} {:?}", t.elapsed());
    let (st, _) = d.get("/v1/secrets/app?wait=soon").await?;
    ensure!(st == 400, "bad wait: {st}");
    // `after` from before a restart (above the current version): at once,
    // not when the minute is up.
    let t = tokio::time::Instant::now();
    let (st, v) = d.get("/v1/secrets/app?wait=60s&after=99").await?;
    ensure!(st == 200 && v["version"] == 1 && t.elapsed() < Duration::from_secs(30), "{st} {v} {:?}", t.elapsed());

    // Events: the current version at once, then the change.
    let mut ev = tokio::net::UnixStream::connect(&d.socket).await?;
    tokio::io::AsyncWriteExt::write_all(&mut ev, b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(r#"{"name":"app","version":1}"#) {
        let n =
            tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut ev, &mut buf)).await??;
        ensure!(n > 0, "event stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    ensure!(seen.contains("text/event-stream"), "{seen}");

    // A long-poll parked on version 1 wakes up when the value changes.
    let socket = d.socket.clone();
    let spawn_poll = || {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&socket).await?;
            tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /v1/secrets/app?wait=60s&after=1 HTTP/1.0\r\n\r\n")
                .await?;
            let mut out = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await?;
            anyhow::Ok((tokio::time::Instant::now(), out))
        })
    };
    let mut poll = spawn_poll();
    // Prove it is parked: the wait budget is full, so a third wait is
    // refused. A probe that came first held the poll's slot for its 1 ms
    // (the poll is then refused, and sent again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        ensure!(tokio::time::Instant::now() < deadline, "the long-poll never parked\n{}", d.log_text());
        if poll.is_finished() {
            let (_, out) = poll.await??;
            ensure!(out.contains(" 429 "), "the long-poll answered before the change: {out}");
            poll = spawn_poll();
        }
        let (st, _) = d.get("/v1/secrets/app?wait=1ms&after=1").await?;
        if st == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(!poll.is_finished(), "the long-poll must still be waiting before the change");
    let changed_at = tokio::time::Instant::now();
    bed.write("secret/data/t_poll", json!({ "data": { "v": "two" } })).await?;
    let (answered, out) = tokio::time::timeout(Duration::from_secs(90), poll).await???;
    ensure!(out.contains(r#""version":2"#) && out.contains("x-vaultlet-version: 2"), "{out}");
    // Woken by the change, not by the end of its minute.
    ensure!(
        answered - changed_at < Duration::from_secs(30),
        "long-poll answered {:?} after the change",
        answered - changed_at
    );
    while !seen.contains(r#"{"name":"app","version":2}"#) {
        let n =
            tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut ev, &mut buf)).await??;
        ensure!(n > 0, "event stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    d.stop().await?;
    Ok(())
}

/// `revoke_on_shutdown = true`: after SIGTERM the leased credentials no longer
/// log in to PostgreSQL.
async fn revoke_on_shutdown_kills_credentials(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("revoke")?;
    bed.db_role("t_revoke", "1h", "2h").await?;
    bed.approle("t_revoke", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(
        &dir,
        &format!(
            "revoke_on_shutdown = true\n{}",
            config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_revoke\" }\n")
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, pass, _) = d.creds("db").await?;
    bed.pg_login(&user, &pass).await?;
    let log = d.log.clone();
    let st = d.stop().await?;
    ensure!(st.success(), "exit {st}");
    match bed.pg_login(&user, &pass).await {
        Ok(()) => bail!("credentials still work after revoke_on_shutdown:\n{}", std::fs::read_to_string(log)?),
        Err(_) => Ok(()),
    }
}

/// A `nobody` caller that can connect to the socket but is on no allow list
/// gets 403 and no value, and the refusal is logged with its uid; the
/// allowed caller still reads.
async fn caller_not_on_allow_list_gets_403(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("peer")?;
    bed.approle("t_peer", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n")
        .replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // uid nobody, gid root: the 0660 root:root socket lets it connect; the
    // allow list (default: vaultlet's own uid, root) does not let it read.
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups", bin(), "get", "api", "--socket"])
        .arg(&d.socket)
        .output()
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("403"), "nobody must get 403: {out:?}");
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("sk_test"), "no secret for nobody");
    eventually(Duration::from_secs(30), "denial logged with uid", || async {
        Ok(d.log_text().contains("uid=65534").then_some(()))
    })
    .await?;
    // The allowed caller (root) still reads it.
    let out =
        tokio::process::Command::new(bin()).args(["get", "api.stripe_key", "--socket"]).arg(&d.socket).output().await?;
    ensure!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&d.socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o660, "socket mode {mode:o}");
    d.stop().await?;
    Ok(())
}

/// `check` and `run` exit 64 naming the file, the line and the key for seven
/// broken configs, report every error of a config with three mistakes (one
/// line each), and create no socket.
async fn check_rejects_broken_configs_with_exit_64(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("check")?;
    std::fs::write(dir.join("role_id"), "x")?;
    let good =
        config(&bed, &dir, "[secret.db]\ndatabase = { role = \"api\" }\n[secret.api]\nkv = { path = \"api\" }\n");
    let cases: Vec<(String, &str)> = vec![
        (good.replace("[secret.db]\n", "[secret.db]\nttl = \"1h\"\n"), "secret.db.ttl"),
        (good.replace("request_timeout = \"3s\"", "request_timeout = \"soon\""), "vault.request_timeout"),
        (good.replace("request_timeout = \"3s\"", "request_timeout = 3"), "vault.request_timeout"),
        (
            format!("{good}[[env_file]]\npath = \"/tmp/x.env\"\ntemplate = \"A={{{{ nosuch.key }}}}\"\n"),
            "env_file[0].template",
        ),
        (good.replace("role_id\"", "missing_role_id\""), "auth.approle.role_id_file"),
        (good.replace("[socket]\n", "[socket]\nmode = \"0666\"\n"), "socket.mode"),
        (good.replace("[vault]\n", "[vault]\nadress = \"x\"\n"), "vault.adress"),
    ];
    let out = tokio::process::Command::new(bin())
        .args(["check", "-c"])
        .arg({
            std::fs::write(dir.join("good.toml"), &good)?;
            dir.join("good.toml")
        })
        .output()
        .await?;
    ensure!(out.status.success(), "good config must pass: {out:?}");
    for (i, (cfg, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, cfg)?;
        for cmd in ["check", "run"] {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(bin()).args([cmd, "-c"]).arg(&path).output(),
            )
            .await??;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(out.status.code() == Some(64), "{cmd} bad{i}: exit {:?}: {err}", out.status.code());
            ensure!(err.contains(&format!("`{key}`")), "{cmd} bad{i}: message must name `{key}`: {err}");
            ensure!(err.contains(&format!("bad{i}.toml:")), "{cmd} bad{i}: message must name file and line: {err}");
        }
    }
    // Several mistakes at once: every one is reported, one line each.
    let all = good
        .replace("[secret.db]\n", "[secret.db]\nttl = \"1h\"\n")
        .replace("request_timeout = \"3s\"", "request_timeout = \"soon\"")
        .replace("[socket]\n", "[socket]\nmode = \"0666\"\n");
    std::fs::write(dir.join("all.toml"), &all)?;
    let out = tokio::process::Command::new(bin()).args(["check", "-c"]).arg(dir.join("all.toml")).output().await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(64), "all: exit {:?}: {err}", out.status.code());
    ensure!(err.lines().count() == 3, "three errors, one line each: {err}");
    for key in ["secret.db.ttl", "vault.request_timeout", "socket.mode"] {
        ensure!(err.contains(&format!("`{key}`")), "all: `{key}` is named: {err}");
    }
    ensure!(!dir.join("vaultlet.sock").exists(), "a bad config must not create the socket");
    Ok(())
}

/// A response-wrapped secret_id is unwrapped and used, its file removed after
/// use; neither the wrapping token, the secret_id nor the role_id reaches the
/// log at trace level.
async fn wrapped_secret_id_is_unwrapped_and_removed(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("wrap")?;
    bed.approle("t_wrap", "vaultlet-test", "1h", "4h", &dir, false).await?;
    // A secret_id of our choosing, response-wrapped: the test knows the
    // value vaultlet unwraps and can look for it in the log.
    let secret_id = format!("wrapped-sid-{}", std::process::id());
    let wrapped = bed
        .api(
            reqwest::Method::POST,
            "auth/approle/role/t_wrap/custom-secret-id",
            Some(json!({ "secret_id": secret_id })),
            Some("120s"),
        )
        .await?;
    let wrapping = wrapped["wrap_info"]["token"].as_str().context("wrapping token")?.to_owned();
    std::fs::write(dir.join("secret_id"), &wrapping)?;
    let cfg = config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n");
    let cfg =
        cfg.replace("secret_id_file = ", "secret_id_wrapped = true\nremove_secret_id_file = true\nsecret_id_file = ");
    let d = Daemon::start_via(&[bin(), "--log", "trace"], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    ensure!(!dir.join("secret_id").exists(), "secret_id file must be removed after use");
    let log = d.log_text();
    let role_id = std::fs::read_to_string(dir.join("role_id"))?;
    ensure!(!log.contains(role_id.trim()), "role_id in log");
    ensure!(!log.contains(&secret_id), "unwrapped secret_id in log");
    ensure!(!log.contains(&wrapping), "wrapping token in log");
    d.stop().await?;
    Ok(())
}

/// A wrong secret_id: `vaultlet ready` exits 1, `/v1/ready` names the refused
/// AppRole login, the login is counted as an error, and the secret_id is
/// echoed neither there nor in the log.
async fn refused_login_is_reported_by_ready(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("badlogin")?;
    bed.approle("t_badlogin", "vaultlet-test", "1h", "4h", &dir, false).await?;
    std::fs::write(dir.join("secret_id"), "00000000-0000-0000-0000-000000000000")?;
    let d = Daemon::start(&dir, &config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n"))?;
    eventually(Duration::from_secs(30), "socket", || async { Ok(d.socket.exists().then_some(())) }).await?;
    let out = tokio::process::Command::new(bin()).args(["ready", "--socket"]).arg(&d.socket).output().await?;
    ensure!(out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("api"), "ready: {out:?}");
    let reason = eventually(Duration::from_secs(60), "ready names the login failure", || async {
        let (st, v) = d.get("/v1/ready").await?;
        let r = v["reasons"][0]["reason"].as_str().unwrap_or_default().to_owned();
        Ok((st == 503 && r.contains("login failed")).then_some(r))
    })
    .await?;
    ensure!(reason.contains("AppRole login"), "{reason}");
    ensure!(!reason.contains("00000000-0000"), "secret_id must not be echoed: {reason}");
    ensure!(d.counter("vaultlet_logins_total{result=\"error\"}").await? >= 1.0, "the refused login is counted");
    ensure!(!d.log_text().contains("00000000-0000"), "secret_id in the log");
    d.stop().await?;
    Ok(())
}
