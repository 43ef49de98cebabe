//! Restarts with sealed state (`[state]`), against the real servers: a
//! restarted vaultlet serves what it held, at once, without a new login or
//! a new credential while they live; whatever died while it was down is
//! replaced at start; a bad state file is a fresh start, never a crash; the
//! file never holds a served value in clear, and a key file others can read
//! is refused before any network I/O.
//!
//! Requests are counted with vaultlet's own counters (`vaultlet_vault_requests_total`
//! by operation, on the metrics socket every test daemon gets) and, where a
//! test has a bed of its own, with the server's audit log.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::TestFn;
use crate::bed::{Bed, Daemon, bin, eventually, test_dir};
use crate::tests::config;

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        t!(kill_9_restart_serves_the_same_credential_with_no_login_or_issue),
        t!(restart_while_openbao_is_down_serves_from_state_then_renews_the_same_lease),
        t!(single_use_wrapped_secret_id_restart_works_while_the_token_lives),
        t!(lease_revoked_while_down_is_replaced_at_start),
        t!(token_revoked_while_down_means_new_login_and_every_lease_replaced),
        t!(bad_state_file_is_a_fresh_start_with_one_warning_and_no_secret),
        t!(fifo_planted_at_the_state_path_is_a_fresh_start_and_sigterm_stops_it),
        t!(state_file_holds_no_served_value_in_clear_and_is_0600),
        t!(loose_or_bad_state_key_file_is_exit_64_before_network_io),
        t!(versions_do_not_move_across_a_restart),
        t!(leases_revoked_on_shutdown_are_not_resumed),
        t!(lease_of_a_secret_removed_from_config_is_revoked_at_start),
    ]
}

// === helpers ===

/// The `[state]` block: the sealed file and its key, both in the test's directory.
fn state_block(dir: &Path) -> String {
    format!("\n[state]\npath = \"{d}/vaultlet.state\"\nkey_file = \"{d}/state.key\"\n", d = dir.display())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("vaultlet.state")
}

/// Writes `bytes` to `path` with `mode`, whatever the umask.
fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn random_key() -> Result<[u8; 32]> {
    let mut k = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut k)?;
    Ok(k)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh 32-byte key in `dir/state.key` (mode 0600); returns it.
fn new_key(dir: &Path) -> Result<[u8; 32]> {
    let k = random_key()?;
    write_mode(&dir.join("state.key"), &k, 0o600)?;
    Ok(k)
}

/// Sum of every sample whose line starts with `prefix` (a metric name with
/// the start of its labels, e.g. `vaultlet_vault_requests_total{operation="login",`);
/// 0 when there is none (counters appear on first use).
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

fn requests(text: &str, operation: &str) -> f64 {
    sum(text, &format!("vaultlet_vault_requests_total{{operation=\"{operation}\","))
}

/// Waits until the metrics say `prefix` reached `at_least`.
async fn metric_reaches(d: &Daemon, prefix: &str, at_least: f64, within: Duration) -> Result<String> {
    eventually(within, &format!("{prefix} >= {at_least}"), || async {
        let text = d.metrics_text().await?;
        Ok((sum(&text, prefix) >= at_least).then_some(text))
    })
    .await
    .with_context(|| d.log_text())
}

/// Starts vaultlet and polls `/v1/ready` every millisecond; returns the
/// daemon and the time from just before the spawn to the first 200.
async fn start_timed(dir: &Path, cfg: &str, within: Duration) -> Result<(Daemon, Duration)> {
    let t = std::time::Instant::now();
    let mut d = Daemon::start(dir, cfg)?;
    loop {
        if let Ok((200, _)) = d.get("/v1/ready").await {
            return Ok((d, t.elapsed()));
        }
        if let Some(st) = d.child.try_wait()? {
            bail!("exited before it was ready: {st}\n--- log ---\n{}", d.log_text());
        }
        if t.elapsed() > within {
            bail!("not ready within {within:?}\n--- log ---\n{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// SIGKILL, then wait for the process to be gone.
async fn kill_9(mut d: Daemon) -> Result<Daemon> {
    d.signal(rustix::process::Signal::KILL)?;
    let st = d.wait().await?;
    ensure!(!st.success(), "killed process exit: {st}");
    Ok(d)
}

/// Revokes the token an AppRole role's login made (found through its
/// accessor's metadata), as an operator would with `bao token revoke`:
/// the token's leases go with it. Only this role's token, so other tests
/// on the shared bed keep theirs.
async fn revoke_token_of_role(bed: &Bed, role: &str) -> Result<usize> {
    let list = reqwest::Method::from_bytes(b"LIST")?;
    let v = bed.api(list, "auth/token/accessors", None, None).await?;
    let mut revoked = 0;
    for acc in v["data"]["keys"].as_array().context("no accessors")?.iter().filter_map(Value::as_str) {
        let Ok(info) = bed.write("auth/token/lookup-accessor", json!({ "accessor": acc })).await else { continue };
        if info["data"]["meta"]["role_name"].as_str() == Some(role) {
            bed.write("auth/token/revoke-accessor", json!({ "accessor": acc })).await?;
            revoked += 1;
        }
    }
    ensure!(revoked > 0, "no token of AppRole role {role} found");
    Ok(revoked)
}

/// Waits until PostgreSQL refuses `user`.
async fn refused(bed: &Bed, user: &str, pass: &str, within: Duration) -> Result<()> {
    eventually(within, &format!("PostgreSQL refuses {user}"), || async {
        Ok(bed.pg_login(user, pass).await.is_err().then_some(()))
    })
    .await
}

/// Every value a served secret holds, for grepping files and logs.
async fn served_values(d: &Daemon, names: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        let (st, v) = d.get(&format!("/v1/secrets/{n}")).await?;
        ensure!(st == 200, "{n}: {st} {v}");
        for (_, val) in v["data"].as_object().context("data")? {
            if let Some(s) = val.as_str() {
                out.push(s.to_owned());
            }
        }
    }
    Ok(out)
}

/// Fails if `text` holds any of `values` (long enough to be unambiguous).
fn holds_none(what: &str, text: &[u8], values: &[String]) -> Result<()> {
    for v in values.iter().filter(|v| v.len() >= 6) {
        for form in [v.clone(), hex(v.as_bytes())] {
            ensure!(
                !text.windows(form.len()).any(|w| w == form.as_bytes()),
                "{what} holds a served value in clear (a value of {} bytes)",
                v.len()
            );
        }
    }
    Ok(())
}

// === tests ===

/// Steady state, `kill -9`, restart with the very same config: the same
/// credential is served (and logs in), and the new process makes no login
/// and no `database/creds` request, by its own counters and by the server's
/// audit log, once it has verified the token and the lease in the
/// background. (How fast it is ready is printed, not asserted: a loaded
/// machine makes milliseconds seconds; `bench/` measures it.)
pub async fn kill_9_restart_serves_the_same_credential_with_no_login_or_issue(_shared: Arc<Bed>) -> Result<()> {
    let bed = Bed::private("restart-kill", &[]).await?;
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": crate::tests::TEST_POLICY })).await?;
    let audit = bed.dir.join("audit.log");
    bed.write("sys/audit/file", json!({ "type": "file", "options": { "file_path": audit.display().to_string() } }))
        .await?;
    let dir = test_dir("restart-kill")?;
    bed.db_role("t_rs_kill", "1h", "24h").await?;
    bed.approle("t_rs_kill", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let cfg =
        format!("{}{}", config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rs_kill\" }\n"), state_block(&dir),);
    let (d, fresh) = start_timed(&dir, &cfg, Duration::from_secs(60)).await?;
    let (user, pass, version) = d.creds("db").await?;
    bed.pg_login(&user, &pass).await?;
    // The only secret is held, so any write from now on holds it.
    metric_reaches(&d, "vaultlet_state_writes_total", 1.0, Duration::from_secs(60)).await?;
    ensure!(state_path(&dir).exists(), "state file written");
    let _d = kill_9(d).await?;

    let skip = std::fs::read_to_string(&audit)?.lines().count();
    let (d, took) = start_timed(&dir, &cfg, Duration::from_secs(60)).await?;
    let (u2, p2, v2) = d.creds("db").await?;
    ensure!(
        u2 == user && p2 == pass && v2 == version,
        "the same credential and version after kill -9\n{}",
        d.log_text()
    );
    bed.pg_login(&u2, &p2).await.context("the resumed credential logs in")?;
    // The background checks ran (token and lease looked up) ...
    let m = metric_reaches(
        &d,
        "vaultlet_vault_requests_total{operation=\"lease_lookup\",result=\"ok\"}",
        1.0,
        Duration::from_secs(60),
    )
    .await?;
    let m = if requests(&m, "lookup_self") >= 1.0 {
        m
    } else {
        metric_reaches(
            &d,
            "vaultlet_vault_requests_total{operation=\"lookup_self\",result=\"ok\"}",
            1.0,
            Duration::from_secs(60),
        )
        .await?
    };
    // ... and found everything alive: nothing re-issued, no login.
    ensure!(requests(&m, "login") == 0.0, "no login while the token lives:\n{m}");
    ensure!(requests(&m, "db_creds") == 0.0, "no new credential while the lease lives:\n{m}");
    ensure!(sum(&m, "vaultlet_state_resumed_secrets") == 1.0, "one secret resumed:\n{m}");
    let reqs = crate::rotation::vaultlet_requests(&audit, skip)?;
    let count = |p: &str| reqs.iter().filter(|(path, _)| path == p).count();
    ensure!(count("auth/approle/login") == 0, "audit log: logins by the new process: {reqs:?}");
    ensure!(count("database/creds/t_rs_kill") == 0, "audit log: credentials issued to the new process: {reqs:?}");
    ensure!(d.creds("db").await?.0 == user, "still the same credential after the checks");
    let paths: Vec<&str> = reqs.iter().map(|(p, _)| p.as_str()).collect();
    println!(
        "  kill -9 restart: ready {:.1} ms after spawn from state (fresh start: {:.1} ms); audited requests \
         from the new process: {paths:?} (0 logins, 0 issues)",
        took.as_secs_f64() * 1000.0,
        fresh.as_secs_f64() * 1000.0,
    );
    d.stop().await?;
    Ok(())
}

/// SIGTERM, OpenBao stopped, restart: ready from state with the server
/// down, the credential logs in; once OpenBao is back the same lease is
/// renewed (renewal counter moves), never replaced (same user, same version,
/// no issue, no login). The lease lasts a minute: stopping and starting
/// OpenBao on a loaded machine must not outlast it.
pub async fn restart_while_openbao_is_down_serves_from_state_then_renews_the_same_lease(
    _shared: Arc<Bed>,
) -> Result<()> {
    let mut bed = Bed::private("restart-down", &[]).await?;
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": crate::tests::TEST_POLICY })).await?;
    let dir = test_dir("restart-down")?;
    bed.db_role("t_rs_down", "60s", "10m").await?;
    bed.approle("t_rs_down", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rs_down\" }\n[secret.api]\nkv = { path = \"api\" }\n")
            .replace("request_timeout = \"3s\"", "request_timeout = \"2s\""),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, pass, version) = d.creds("db").await?;
    let (_, kv) = d.get("/v1/secrets/api").await?;
    ensure!(d.stop().await?.success(), "clean stop");

    bed.ctl(&["bao-stop"]).await?;
    let (d, took) = start_timed(&dir, &cfg, Duration::from_secs(60)).await?;
    let (u2, p2, v2) = d.creds("db").await?;
    ensure!(u2 == user && p2 == pass && v2 == version, "served from state while OpenBao is down");
    bed.pg_login(&u2, &p2).await.context("the resumed credential logs in while OpenBao is down")?;
    let (st, kv2) = d.get("/v1/secrets/api").await?;
    ensure!(st == 200 && kv2["data"] == kv["data"] && kv2["version"] == kv["version"], "KV from state: {kv2}");
    println!("  restart with OpenBao down: ready {:.1} ms after spawn", took.as_secs_f64() * 1000.0);

    bed.ctl(&["bao-start"]).await?;
    bed.reload_env()?;
    let m =
        metric_reaches(&d, "vaultlet_lease_renewals_total{secret=\"db\",result=\"ok\"}", 1.0, Duration::from_secs(120))
            .await?;
    ensure!(requests(&m, "db_creds") == 0.0, "renewed, not replaced:\n{m}");
    ensure!(requests(&m, "login") == 0.0, "the saved token was kept:\n{m}");
    let (u3, p3, v3) = d.creds("db").await?;
    ensure!(u3 == user && v3 == version, "same user and version after OpenBao returned (v{version} → v{v3})");
    bed.pg_login(&u3, &p3).await.context("the renewed credential logs in")?;
    ensure!(d.get("/v1/ready").await?.0 == 200, "ready throughout");
    d.stop().await?;
    Ok(())
}

/// A single-use, response-wrapped secret_id that vaultlet removes after use:
/// once used, no login is possible any more, yet a restart serves again
/// (from the saved token) without one.
pub async fn single_use_wrapped_secret_id_restart_works_while_the_token_lives(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-wrap")?;
    bed.db_role("t_rs_wrap", "1h", "24h").await?;
    bed.approle("t_rs_wrap", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("auth/approle/role/t_rs_wrap", json!({ "secret_id_num_uses": 1 })).await?;
    let secret_id = format!("wrapped-single-use-{}", std::process::id());
    let wrapped = bed
        .api(
            reqwest::Method::POST,
            "auth/approle/role/t_rs_wrap/custom-secret-id",
            Some(json!({ "secret_id": secret_id, "num_uses": 1 })),
            Some("120s"),
        )
        .await?;
    let wrapping = wrapped["wrap_info"]["token"].as_str().context("wrapping token")?.to_owned();
    std::fs::write(dir.join("secret_id"), &wrapping)?;
    new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rs_wrap\" }\n[secret.api]\nkv = { path = \"api\" }\n")
            .replace("secret_id_file = ", "secret_id_wrapped = true\nremove_secret_id_file = true\nsecret_id_file = "),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    ensure!(!dir.join("secret_id").exists(), "the secret_id file is removed after use");
    let (user, pass, _) = d.creds("db").await?;
    ensure!(d.stop().await?.success(), "clean stop");
    // The secret_id is used up: nobody could log in with it again.
    let left = bed.write("auth/approle/role/t_rs_wrap/secret-id/lookup", json!({ "secret_id": secret_id })).await;
    ensure!(matches!(&left, Ok(Value::Null)), "the single-use secret_id must be gone after one login: {left:?}");

    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (u2, p2, _) = d.creds("db").await?;
    ensure!(u2 == user && p2 == pass, "the same credential after the restart");
    bed.pg_login(&u2, &p2).await?;
    let m = metric_reaches(
        &d,
        "vaultlet_vault_requests_total{operation=\"lookup_self\",result=\"ok\"}",
        1.0,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(requests(&m, "login") == 0.0 && requests(&m, "unwrap") == 0.0, "no login, no unwrap:\n{m}");
    ensure!(d.get("/v1/ready").await?.0 == 200, "still ready after the token check\n{}", d.log_text());
    let log = d.log_text();
    ensure!(!log.contains(&secret_id) && !log.contains(&wrapping), "secret_id or wrapping token in the log");
    d.stop().await?;
    Ok(())
}

/// The lease of the served credential is revoked while vaultlet is down:
/// at start it is found gone and replaced at once (new user that logs in,
/// the old one refused), under the saved token (no login).
pub async fn lease_revoked_while_down_is_replaced_at_start(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-lease")?;
    bed.db_role("t_rs_lease", "1h", "24h").await?;
    bed.approle("t_rs_lease", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rs_lease\" }\nverify_every = \"1h\"\n"),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, pass, version) = d.creds("db").await?;
    ensure!(d.stop().await?.success(), "clean stop");
    crate::revocation::revoke_lease_of(&bed, "t_rs_lease", &user, &pass).await?;

    let d = Daemon::start(&dir, &cfg)?;
    let started = Instant::now();
    // verify_every and the lease are an hour: only the check at start can
    // notice within the minute (the time taken is printed, not asserted).
    let v2 = eventually(Duration::from_secs(60), "a working replacement", || async {
        let Ok((u, p, v)) = d.creds("db").await else { return Ok(None) };
        Ok((u != user && bed.pg_login(&u, &p).await.is_ok()).then_some(v))
    })
    .await
    .with_context(|| d.log_text())?;
    let took = started.elapsed();
    ensure!(v2 > version, "the replacement is a new version (v{version} → v{v2})");
    ensure!(bed.pg_login(&user, &pass).await.is_err(), "the revoked credential stays refused");
    let m = d.metrics_text().await?;
    ensure!(requests(&m, "login") == 0.0, "the token lives: no login:\n{m}");
    println!("  lease revoked while down: working replacement {:.2} s after spawn", took.as_secs_f64());
    d.stop().await?;
    Ok(())
}

/// vaultlet's token is revoked while it is down (its leases die with it):
/// at start it logs in again and replaces every lease, none served for long.
pub async fn token_revoked_while_down_means_new_login_and_every_lease_replaced(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-token")?;
    bed.db_role("t_rs_tok_a", "1h", "24h").await?;
    bed.db_role("t_rs_tok_b", "1h", "24h").await?;
    bed.approle("t_rs_tok", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(
            &bed,
            &dir,
            "[secret.a]\ndatabase = { role = \"t_rs_tok_a\" }\nverify_every = \"1h\"\n\
             [secret.b]\ndatabase = { role = \"t_rs_tok_b\" }\nverify_every = \"1h\"\n"
        ),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (ua, pa, _) = d.creds("a").await?;
    let (ub, pb, _) = d.creds("b").await?;
    ensure!(d.stop().await?.success(), "clean stop");
    revoke_token_of_role(&bed, "t_rs_tok").await?;
    refused(&bed, &ua, &pa, Duration::from_secs(30)).await?;
    refused(&bed, &ub, &pb, Duration::from_secs(30)).await?;

    let d = Daemon::start(&dir, &cfg)?;
    let started = Instant::now();
    // The leases are an hour: only the checks at start can notice within
    // the minute (the time taken is printed, not asserted).
    for (name, old) in [("a", &ua), ("b", &ub)] {
        eventually(Duration::from_secs(60), &format!("a working replacement for {name}"), || async {
            let Ok((u, p, _)) = d.creds(name).await else { return Ok(None) };
            Ok((u != *old && bed.pg_login(&u, &p).await.is_ok()).then_some(()))
        })
        .await
        .with_context(|| d.log_text())?;
    }
    let took = started.elapsed();
    let m = d.metrics_text().await?;
    ensure!(sum(&m, "vaultlet_vault_requests_total{operation=\"login\",result=\"ok\"}") == 1.0, "one new login:\n{m}");
    ensure!(
        sum(&m, "vaultlet_vault_requests_total{operation=\"db_creds\",result=\"ok\"}") == 2.0,
        "both leases replaced, once each:\n{m}"
    );
    println!("  token revoked while down: both credentials replaced {:.2} s after spawn", took.as_secs_f64());
    d.stop().await?;
    Ok(())
}

/// Flipped byte, cut file, wrong key, unknown format version, a state file
/// of another AppRole role: each time the daemon starts fresh (new login,
/// ready, serving), logs exactly one warning saying why, counts the reason,
/// and never prints a secret.
pub async fn bad_state_file_is_a_fresh_start_with_one_warning_and_no_secret(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-bad")?;
    bed.db_role("t_rs_bad", "1h", "24h").await?;
    bed.approle("t_rs_bad", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let key = new_key(&dir)?;
    let body = "[secret.db]\ndatabase = { role = \"t_rs_bad\" }\n[secret.api]\nkv = { path = \"api\" }\n";
    let cfg = || format!("{}{}", config(&bed, &dir, body), state_block(&dir));
    let d = Daemon::start(&dir, &cfg())?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let mut secrets = served_values(&d, &["db", "api"]).await?;
    ensure!(d.stop().await?.success(), "clean stop");
    let good = std::fs::read(state_path(&dir))?;
    ensure!(good.starts_with(b"VLTSTATE") && good.len() > 64, "state file format: {} bytes", good.len());
    secrets.push(hex(&key));
    secrets.push(std::fs::read_to_string(dir.join("role_id"))?.trim().to_owned());
    secrets.push(std::fs::read_to_string(dir.join("secret_id"))?.trim().to_owned());

    // Another role's state: same server, other role_id.
    let other = test_dir("restart-bad-other")?;
    bed.approle("t_rs_bad_other", "vaultlet-test", "1h", "4h", &other, false).await?;

    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x01;
    let mut version = good.clone();
    version[8] = 0xee;
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("flipped byte", flipped, &["wrong_key_or_tampered"]),
        ("cut in the header", good[..20].to_vec(), &["truncated"]),
        ("empty", Vec::new(), &["truncated"]),
        // A cut ciphertext cannot be told from a tampered one by the AEAD.
        ("cut in half", good[..good.len() / 2].to_vec(), &["truncated", "wrong_key_or_tampered"]),
        ("unknown version", version, &["unknown_version"]),
        ("wrong key", good.clone(), &["wrong_key_or_tampered"]),
        ("other role", good.clone(), &["other_config"]),
    ];
    for (label, bytes, reasons) in cases {
        write_mode(&state_path(&dir), &bytes, 0o600)?;
        let mut text = cfg();
        match label {
            "wrong key" => {
                new_key(&dir)?;
            }
            "other role" => {
                text = text.replace(&format!("{}/role_id", dir.display()), &format!("{}/role_id", other.display()));
                text = text.replace(&format!("{}/secret_id", dir.display()), &format!("{}/secret_id", other.display()));
            }
            _ => {}
        }
        let d = Daemon::start(&dir, &text)?;
        d.wait_ready(Duration::from_secs(60)).await.with_context(|| format!("{label}: fresh start"))?;
        let m = d.metrics_text().await?;
        let counted: Vec<_> =
            reasons.iter().map(|r| sum(&m, &format!("vaultlet_state_load_failures_total{{reason=\"{r}\"}}"))).collect();
        ensure!(counted.iter().sum::<f64>() == 1.0, "{label}: one load failure counted as {reasons:?}:\n{m}");
        ensure!(sum(&m, "vaultlet_state_load_failures_total") == 1.0, "{label}: no other reason counted:\n{m}");
        ensure!(sum(&m, "vaultlet_state_resumed_secrets") == 0.0, "{label}: nothing resumed:\n{m}");
        ensure!(requests(&m, "login") >= 1.0, "{label}: a fresh start logs in:\n{m}");
        let log = d.log_text();
        let warnings: Vec<&str> =
            log.lines().filter(|l| l.contains("not used") && l.contains("starting fresh")).collect();
        ensure!(warnings.len() == 1, "{label}: exactly one warning, got {warnings:#?}\n{log}");
        ensure!(warnings[0].contains("WARN"), "{label}: the line is a warning: {}", warnings[0]);
        println!("  {label}: {}", warnings[0].trim());
        let mut all = secrets.clone();
        all.extend(served_values(&d, &["db", "api"]).await?);
        holds_none(&format!("{label}: the log"), log.as_bytes(), &all)?;
        ensure!(d.get("/v1/health").await?.0 == 200, "{label}: still up");
        ensure!(d.stop().await?.success(), "{label}: clean stop\n{log}");
        if label == "wrong key" {
            write_mode(&dir.join("state.key"), &key, 0o600)?;
        }
    }
    Ok(())
}

/// Another user's FIFO at `state.path` (planted before the start): vaultlet
/// used to block opening it, never became ready and ignored SIGTERM. Now
/// it is not read: one counted `unsafe_file`, a fresh start, ready, the
/// FIFO replaced by a sealed file at the first write, and SIGTERM stops it.
pub async fn fifo_planted_at_the_state_path_is_a_fresh_start_and_sigterm_stops_it(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-fifo")?;
    bed.approle("t_rs_fifo", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let fifo = state_path(&dir);
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o666), 0)?;
    std::os::unix::fs::chown(&fifo, Some(65534), Some(65534))?;
    let cfg = format!("{}{}", config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n"), state_block(&dir));
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(30)).await.context("ready despite the FIFO")?;
    let m = d.metrics_text().await?;
    ensure!(
        sum(&m, "vaultlet_state_load_failures_total{reason=\"unsafe_file\"}") == 1.0,
        "one unsafe_file counted:\n{m}"
    );
    ensure!(sum(&m, "vaultlet_state_load_failures_total") == 1.0, "no other reason:\n{m}");
    let log = d.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("not used") && l.contains("FIFO")).collect();
    ensure!(warnings.len() == 1, "one warning naming the FIFO, got {warnings:#?}\n{log}");
    metric_reaches(&d, "vaultlet_state_writes_total", 1.0, Duration::from_secs(30)).await?;
    let meta = std::fs::symlink_metadata(&fifo)?;
    ensure!(meta.file_type().is_file(), "the FIFO was replaced by the sealed file: {:?}", meta.file_type());
    ensure!(std::fs::read(&fifo)?.starts_with(b"VLTSTATE"), "a sealed state file");
    let t = Instant::now();
    let st = d.stop().await.context("stops on SIGTERM")?;
    ensure!(st.success(), "clean stop: {st}");
    println!("  ready with a FIFO at state.path; stopped {:?} after SIGTERM", t.elapsed());
    Ok(())
}

/// The sealed file, while the daemon runs and after it stopped, holds none
/// of the served values (usernames, passwords, KV values) nor the key, in
/// clear or hex; it has mode 0600.
pub async fn state_file_holds_no_served_value_in_clear_and_is_0600(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-plain")?;
    bed.db_role("t_rs_plain", "1h", "24h").await?;
    bed.approle("t_rs_plain", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let marker = format!("plain-kv-value-{}-xyzzy", std::process::id());
    bed.write("secret/data/t_rs_plain", json!({ "data": { "token": marker, "other": "second-kv-value-4711" } }))
        .await?;
    bed.write("kv/t_rs_plain", json!({ "v1key": "kv-one-value-0815" })).await?;
    let key = new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(
            &bed,
            &dir,
            "[secret.db]\ndatabase = { role = \"t_rs_plain\" }\n[secret.app]\nkv = { path = \"t_rs_plain\" }\n\
             [secret.old]\nkv = { mount = \"kv\", path = \"t_rs_plain\", version = 1 }\n"
        ),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let mut values = served_values(&d, &["db", "app", "old"]).await?;
    ensure!(values.contains(&marker) && values.contains(&"kv-one-value-0815".to_owned()), "served: {values:?}");
    values.push(hex(&key));
    metric_reaches(&d, "vaultlet_state_writes_total", 1.0, Duration::from_secs(60)).await?;
    let check = |when: &str| -> Result<()> {
        let path = state_path(&dir);
        let meta = std::fs::metadata(&path).with_context(|| format!("{when}: state file"))?;
        ensure!(meta.permissions().mode() & 0o777 == 0o600, "{when}: mode {:o}", meta.permissions().mode() & 0o777);
        let bytes = std::fs::read(&path)?;
        ensure!(bytes.len() > 64, "{when}: a state file of {} bytes", bytes.len());
        holds_none(&format!("{when}: the state file"), &bytes, &values)?;
        ensure!(!bytes.windows(key.len()).any(|w| w == key), "{when}: the raw key is in the state file");
        Ok(())
    };
    check("while running")?;
    ensure!(d.stop().await?.success(), "clean stop");
    check("after shutdown")?;
    // The file is the daemon's: it resumes from it (so it really holds the values).
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let again = served_values(&d, &["db", "app", "old"]).await?;
    ensure!(values.starts_with(&again), "the same values served from the sealed file");
    let m = d.metrics_text().await?;
    ensure!(sum(&m, "vaultlet_state_resumed_secrets") == 3.0, "three secrets resumed:\n{m}");
    d.stop().await?;
    Ok(())
}

/// A key file readable or writable by group or others, missing, or of the
/// wrong size: `check` and `run` exit 64 naming `state.key_file` and the
/// line, print no key byte, and make no connection to the (listening)
/// Vault address. 32 raw bytes, 64 hex chars with a newline and a
/// `$CREDENTIALS_DIRECTORY` path pass.
pub async fn loose_or_bad_state_key_file_is_exit_64_before_network_io(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-key")?;
    std::fs::write(dir.join("role_id"), "x")?;
    std::fs::write(dir.join("secret_id"), "y")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = format!("http://{}", listener.local_addr()?);
    let cfg =
        config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n").replace(bed.addr(), &addr) + &state_block(&dir);
    let path = dir.join("vaultlet.toml");
    std::fs::write(&path, &cfg)?;
    let key_line = cfg.lines().position(|l| l.starts_with("key_file")).context("key_file line")? + 1;
    let key = random_key()?;
    let key_file = dir.join("state.key");

    let run = |cmd: &'static str, envs: Vec<(String, String)>| {
        let path = path.clone();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(bin()).args([cmd, "-c"]).arg(&path).envs(envs).output(),
            )
            .await??;
            anyhow::Ok(out)
        }
    };
    let mut hex_nl = hex(&key).into_bytes();
    hex_nl.push(b'\n');
    for (label, bytes, mode) in [("32 raw bytes", key.to_vec(), 0o600), ("64 hex chars", hex_nl.clone(), 0o400)] {
        write_mode(&key_file, &bytes, mode)?;
        let out = run("check", vec![]).await?;
        ensure!(out.status.success(), "{label}: a good key passes `check`: {out:?}");
    }
    // systemd's credential directory, as for role_id / secret_id.
    let creds = test_dir("restart-key-creds")?;
    write_mode(&creds.join("state-key"), &key, 0o600)?;
    std::fs::write(&path, cfg.replace(&format!("{}/state.key", dir.display()), "$CREDENTIALS_DIRECTORY/state-key"))?;
    let out = run("check", vec![("CREDENTIALS_DIRECTORY".into(), creds.display().to_string())]).await?;
    ensure!(out.status.success(), "$CREDENTIALS_DIRECTORY/state-key passes: {out:?}");
    std::fs::write(&path, &cfg)?;

    let mut hex63 = hex(&key).into_bytes();
    hex63.pop();
    let cases: Vec<(&str, Option<Vec<u8>>, u32)> = vec![
        ("readable by others", Some(key.to_vec()), 0o604),
        ("readable by the group", Some(key.to_vec()), 0o640),
        ("writable by the group", Some(key.to_vec()), 0o620),
        ("writable by others", Some(key.to_vec()), 0o602),
        ("missing", None, 0o600),
        ("31 bytes", Some(key[..31].to_vec()), 0o600),
        ("33 bytes", Some([&key[..], b"x"].concat()), 0o600),
        ("63 hex chars", Some(hex63), 0o600),
        ("64 chars, not hex", Some(b"zz".repeat(32)), 0o600),
    ];
    for (label, bytes, mode) in cases {
        let _ = std::fs::remove_file(&key_file);
        if let Some(b) = &bytes {
            write_mode(&key_file, b, mode)?;
        }
        for cmd in ["check", "run"] {
            let out = run(cmd, vec![]).await?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(out.status.code() == Some(64), "{label}, {cmd}: exit {:?}: {err}", out.status.code());
            ensure!(err.contains("`state.key_file`"), "{label}, {cmd}: must name `state.key_file`: {err}");
            ensure!(
                err.contains(&format!("vaultlet.toml:{key_line}")),
                "{label}, {cmd}: file and line {key_line}: {err}"
            );
            ensure!(!err.contains(&hex(&key)[..16]), "{label}, {cmd}: key bytes in the message");
        }
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => {
            bail!("a connection to the Vault address from {peer}: a bad key file must stop before network I/O")
        }
        Err(e) => bail!("accept: {e}"),
    }
    ensure!(!dir.join("vaultlet.sock").exists(), "a bad key file must not create the socket");
    Ok(())
}

/// Versions survive a restart: a KV secret at version 3 and a database
/// secret come back with the same versions; the background re-read of
/// unchanged KV content does not bump it, so a long-poll parked on the
/// current version waits out its time and an event stream announces the
/// very same versions.
pub async fn versions_do_not_move_across_a_restart(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-version")?;
    bed.db_role("t_rs_ver", "1h", "24h").await?;
    bed.approle("t_rs_ver", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_rs_ver", json!({ "data": { "v": "one" } })).await?;
    new_key(&dir)?;
    let cfg = format!(
        "{}{}",
        config(
            &bed,
            &dir,
            "[secret.db]\ndatabase = { role = \"t_rs_ver\" }\n[secret.app]\nkv = { path = \"t_rs_ver\" }\nrefresh = \"1s\"\n"
        ),
        state_block(&dir),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Move the KV secret to version 3, so a restart that numbered afresh shows.
    for v in ["two", "three"] {
        bed.write("secret/data/t_rs_ver", json!({ "data": { "v": v } })).await?;
        eventually(Duration::from_secs(60), &format!("KV value {v} served"), || async {
            let (_, j) = d.get("/v1/secrets/app").await?;
            Ok((j["data"]["v"] == v).then_some(()))
        })
        .await?;
    }
    let (_, app) = d.get("/v1/secrets/app").await?;
    let kv_version = app["version"].as_u64().context("version")?;
    ensure!(kv_version >= 3, "KV version {kv_version}");
    let (user, _, db_version) = d.creds("db").await?;
    ensure!(d.stop().await?.success(), "clean stop");

    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (_, app2) = d.get("/v1/secrets/app").await?;
    ensure!(app2["version"] == json!(kv_version) && app2["data"] == app["data"], "KV after restart: {app2}");
    let (u2, _, v2) = d.creds("db").await?;
    ensure!(u2 == user && v2 == db_version, "db v{db_version} → v{v2}");
    // The KV secret was re-read from Vault (refresh 1 s) at least twice,
    // unchanged: no new version.
    metric_reaches(&d, "vaultlet_kv_reads_total{secret=\"app\",result=\"ok\"}", 2.0, Duration::from_secs(60)).await?;
    let t = Instant::now();
    let (st, v) = d.get(&format!("/v1/secrets/app?wait=2s&after={kv_version}")).await?;
    ensure!(
        st == 200 && v["version"] == json!(kv_version) && t.elapsed() >= Duration::from_millis(1900),
        "a long-poll on the current version waits it out: {st} {v} after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let (st, v) = d.get(&format!("/v1/secrets/db?wait=1s&after={db_version}")).await?;
    ensure!(st == 200 && v["version"] == json!(db_version) && t.elapsed() >= Duration::from_millis(900), "db: {v}");
    // The event stream announces the restored versions.
    let mut ev = tokio::net::UnixStream::connect(&d.socket).await?;
    tokio::io::AsyncWriteExt::write_all(&mut ev, b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let (want_app, want_db) =
        (format!(r#"{{"name":"app","version":{kv_version}}}"#), format!(r#"{{"name":"db","version":{db_version}}}"#));
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains(&want_app) && seen.contains(&want_db)) {
        let n =
            tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut ev, &mut buf)).await??;
        ensure!(n > 0, "event stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    d.stop().await?;
    Ok(())
}

/// `revoke_on_shutdown = true` with state: the revoked leases are not
/// resumed at the next start (that would serve a dead credential); a new,
/// working one is issued.
pub async fn leases_revoked_on_shutdown_are_not_resumed(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-revoked")?;
    bed.db_role("t_rs_rvk", "1h", "24h").await?;
    bed.approle("t_rs_rvk", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let cfg = format!(
        "revoke_on_shutdown = true\n{}{}",
        config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rs_rvk\" }\nverify_every = \"1h\"\n"),
        state_block(&dir)
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, pass, _) = d.creds("db").await?;
    ensure!(d.stop().await?.success(), "clean stop");
    refused(&bed, &user, &pass, Duration::from_secs(30)).await?;
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Ready means served: the first credential served must already be a new one.
    let (u2, p2, _) = d.creds("db").await?;
    ensure!(u2 != user, "a credential revoked at shutdown was served again\n{}", d.log_text());
    bed.pg_login(&u2, &p2).await?;
    d.stop().await?;
    Ok(())
}

/// A secret removed from the config between two runs: its saved lease
/// cannot be resumed, so it is revoked at start with the saved token (its
/// credential stops logging in), while the other secret is resumed.
pub async fn lease_of_a_secret_removed_from_config_is_revoked_at_start(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("restart-removed")?;
    bed.db_role("t_rs_keep", "1h", "24h").await?;
    bed.db_role("t_rs_gone", "1h", "24h").await?;
    bed.approle("t_rs_rm", "vaultlet-test", "1h", "4h", &dir, false).await?;
    new_key(&dir)?;
    let keep = "[secret.keep]\ndatabase = { role = \"t_rs_keep\" }\n";
    let gone = "[secret.gone]\ndatabase = { role = \"t_rs_gone\" }\n";
    let d = Daemon::start(&dir, &format!("{}{}", config(&bed, &dir, &format!("{keep}{gone}")), state_block(&dir)))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (ku, kp, _) = d.creds("keep").await?;
    let (gu, gp, _) = d.creds("gone").await?;
    ensure!(d.stop().await?.success(), "clean stop");
    bed.pg_login(&gu, &gp).await.context("the lease lives before the restart")?;

    let d = Daemon::start(&dir, &format!("{}{}", config(&bed, &dir, keep), state_block(&dir)))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    ensure!(d.creds("keep").await?.0 == ku, "the kept secret is resumed");
    bed.pg_login(&ku, &kp).await?;
    refused(&bed, &gu, &gp, Duration::from_secs(30)).await.with_context(|| d.log_text())?;
    d.stop().await?;
    Ok(())
}
