//! Getting secrets into apps: `vaultlet exec`, file templates, systemd notify.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::bed::{Bed, Daemon, eventually, test_dir};
use crate::tests::config;

/// exec: the child sees the secret in its environment, is restarted (once)
/// when it changes, gets forwarded signals, and its exit code comes back.
pub async fn exec_runs_the_app_with_secrets_and_restarts_on_change(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("exec")?;
    bed.approle("t_exec", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_exec", json!({ "data": { "token": "exec-tok-1st-7f3a" } })).await?;
    let out = dir.join("out");
    let cfg = config(
        &bed,
        &dir,
        "[secret.app]\nkv = { path = \"t_exec\" }\nrefresh = \"1s\"\n[exec]\nenv = { APP_TOKEN = \"app.token\" }\ndebounce = \"500ms\"\n",
    );
    // Prints its token once per start; exits 42 on SIGTERM.
    let script = format!("echo \"$APP_TOKEN\" >> {}; trap 'exit 42' TERM; while :; do sleep 0.05; done", out.display());
    let mut d = Daemon::start_with(&dir, &cfg, &["exec"], &["sh", "-c", &script], &[])?;
    let lines = || std::fs::read_to_string(&out).unwrap_or_default();
    eventually(Duration::from_secs(60), "app started with the secret", || async {
        Ok((lines() == "exec-tok-1st-7f3a\n").then_some(()))
    })
    .await?;
    bed.write("secret/data/t_exec", json!({ "data": { "token": "exec-tok-2nd-9c1e" } })).await?;
    eventually(Duration::from_secs(60), "app restarted with the new secret", || async {
        Ok((lines() == "exec-tok-1st-7f3a\nexec-tok-2nd-9c1e\n").then_some(()))
    })
    .await?;
    // Unchanged re-reads do not restart it.
    let read = "vaultlet_kv_reads_total{secret=\"app\",result=\"ok\"}";
    let reads = d.counter(read).await?;
    eventually(Duration::from_secs(60), "more reads", || async {
        Ok((d.counter(read).await? >= reads + 3.0).then_some(()))
    })
    .await?;
    ensure!(lines() == "exec-tok-1st-7f3a\nexec-tok-2nd-9c1e\n", "restarted without a change: {}", lines());
    // SIGTERM goes to the app; its exit code comes back.
    d.signal(rustix::process::Signal::TERM)?;
    let st = d.wait().await?;
    ensure!(st.code() == Some(42), "exit code passed through: {st}\n{}", d.log_text());
    ensure!(!d.log_text().contains("exec-tok-"), "the secret is not logged");

    // A program that cannot start: 127, like a shell.
    let mut d = Daemon::start_with(&dir, &cfg, &["exec"], &["/nonexistent/app"], &[])?;
    let st = d.wait().await?;
    ensure!(st.code() == Some(127), "missing program: {st}");
    Ok(())
}

/// A raw template: rendered as written (JSON here), with its mode, and its
/// after-change command runs once per change.
pub async fn file_template_renders_and_runs_its_command(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("template")?;
    bed.approle("t_tmpl", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let (file, hook) = (dir.join("app.json"), dir.join("hook"));
    let cfg = config(
        &bed,
        &dir,
        &format!(
            r#"
[secret.api]
kv = {{ path = "api" }}
[[template]]
path = "{}"
mode = "0640"
template = '{{"stripe": "{{{{ api.stripe_key }}}}", "keys": {{{{ api|length }}}}}}'
command = ["sh", "-c", "echo ran >> {}"]
"#,
            file.display(),
            hook.display()
        ),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "hook ran", || async { Ok(hook.exists().then_some(())) }).await?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    ensure!(v["stripe"] == "sk_test_demo123", "{v}");
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o640, "mode {mode:o}");
    ensure!(std::fs::read_to_string(&hook)? == "ran\n", "hook once");
    d.stop().await?;
    Ok(())
}

/// With NOTIFY_SOCKET set, vaultlet sends READY=1 once secrets and files are
/// in place, and STOPPING=1 on SIGTERM.
pub async fn systemd_notify_ready_and_stopping(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("notify")?;
    bed.approle("t_notify", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let sock = dir.join("notify.sock");
    let rx = tokio::net::UnixDatagram::bind(&sock)?;
    let env_file = dir.join("app.env");
    let cfg = config(
        &bed,
        &dir,
        &format!(
            "[secret.api]\nkv = {{ path = \"api\" }}\n[[env_file]]\npath = \"{}\"\ntemplate = \"K={{{{ api.stripe_key }}}}\"\n",
            env_file.display()
        ),
    );
    let mut d = Daemon::start_with(&dir, &cfg, &["run"], &[], &[("NOTIFY_SOCKET", sock.to_str().unwrap_or_default())])?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(60), rx.recv(&mut buf)).await??;
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    ensure!(msg.starts_with("READY=1"), "{msg}");
    ensure!(env_file.exists(), "READY only after the env file is written");
    d.signal(rustix::process::Signal::TERM)?;
    let n = tokio::time::timeout(Duration::from_secs(30), rx.recv(&mut buf)).await??;
    ensure!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    // The next daemon uses the same socket path: only once this one is gone.
    let st = d.wait().await?;
    ensure!(st.success(), "run stops cleanly: {st}\n{}", d.log_text());

    // `vaultlet exec` under `WatchdogSec=` (here 400 ms): ready, then
    // pinging the watchdog while the app runs (it used to ping nothing, so
    // systemd killed it).
    let exec_cfg =
        config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n[exec]\nenv = { K = \"api.stripe_key\" }\n");
    let mut d = Daemon::start_with(
        &dir,
        &exec_cfg,
        &["exec"],
        &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"],
        &[("NOTIFY_SOCKET", sock.to_str().unwrap_or_default()), ("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "")],
    )?;
    // Pings may come before READY=1 too (systemd takes them at any time):
    // wait for READY=1, then for three pings after it.
    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pings_after_ready = |seen: &[String]| match seen.iter().position(|m| m.starts_with("READY=1")) {
        Some(i) => seen[i + 1..].iter().filter(|m| m.starts_with("WATCHDOG=1")).count(),
        None => 0,
    };
    while pings_after_ready(&seen) < 3 {
        let n = tokio::time::timeout_at(deadline, rx.recv(&mut buf)).await.with_context(|| {
            format!(
                "vaultlet exec did not say READY=1 and ping the watchdog 3 times after; got {seen:?}\n{}",
                d.log_text()
            )
        })??;
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    d.signal(rustix::process::Signal::TERM)?;
    let st = d.wait().await?;
    ensure!(st.code() == Some(0), "app's exit code: {st}");
    Ok(())
}
