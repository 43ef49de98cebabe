//! Attacks through what vaultlet starts or renders: the `exec` child and
//! template commands must not inherit vaultlet's powers, signals must reach
//! the whole app, orphans must be reaped when vaultlet is PID 1, and secret
//! values must not add variables to env files or keys to JSON templates.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

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
        t!(exec_child_and_template_command_never_see_vaultlets_own_variables),
        t!(exec_user_cannot_read_the_secret_id_file_nor_a_secret_on_the_socket),
        t!(exec_child_and_template_command_start_without_vaultlets_capabilities),
        t!(exec_app_gets_a_secret_its_environment_does_not_name_on_its_first_read),
        t!(stop_signal_reaches_the_apps_grandchildren),
        t!(orphans_of_the_app_are_reaped_when_vaultlet_is_pid_1),
        t!(kv_value_cannot_inject_a_variable_into_a_docker_env_file_nor_a_key_into_json),
    ]
}

/// A directory anyone may write into (for a child running as another uid).
fn open_dir(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))?;
    Ok(d)
}

/// `env -0` output as a map.
fn read_env(path: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(None) };
    if !bytes.ends_with(b"\0") {
        return Ok(None);
    }
    let text = String::from_utf8(bytes)?;
    Ok(Some(text.split('\0').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()))
}

/// Variables vaultlet itself is given (some it uses, some it must not pass on).
const OWN: &[(&str, &str)] = &[
    ("VAULT_TOKEN", "s.vaultlets-own-token"),
    ("VAULT_ADDR", "http://127.0.0.1:1"),
    ("BAO_TOKEN", "s.vaultlets-own-bao-token"),
    ("VAULTLET_LOG_FORMAT", "text"),
    ("VAULTLET_SOCKET", "/nonexistent/vaultlet.sock"),
    ("WATCHDOG_USEC", "60000000"),
    ("WATCHDOG_PID", "1"),
    ("LISTEN_FDS", "1"),
    ("LISTEN_PID", "1"),
];

/// Attack 5: The child saw VAULT_TOKEN, CREDENTIALS_DIRECTORY, VAULTLET_CONFIG; a
/// template command inherited the same. Now both see the default list, what
/// `inherit_env` adds and what the config maps, and none of vaultlet's own.
async fn exec_child_and_template_command_never_see_vaultlets_own_variables(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-env")?;
    bed.approle("t_xenv", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_xenv", json!({ "data": { "token": "mapped-value" } })).await?;
    let (child_env, hook_env) = (dir.join("child.env"), dir.join("hook.env"));
    let notify = dir.join("notify.sock");
    let _rx = tokio::net::UnixDatagram::bind(&notify)?;
    let cfg = config(
        &bed,
        &dir,
        &format!(
            r#"
[secret.app]
kv = {{ path = "t_xenv" }}
[exec]
env = {{ APP_TOKEN = "app.token" }}
inherit_env = ["NODE_ENV"]
[[template]]
path = "{dir}/app.conf"
template = "token={{{{ app.token }}}}\n"
command = ["sh", "-c", "env -0 > {hook}.tmp && mv {hook}.tmp {hook}"]
inherit_env = ["HOOK_ONLY"]
"#,
            dir = dir.display(),
            hook = hook_env.display()
        ),
    );
    let cfg_path = dir.join("vaultlet.toml");
    let mut envs: Vec<(&str, &str)> = OWN.to_vec();
    let (cfg_s, dir_s, notify_s) =
        (cfg_path.display().to_string(), dir.display().to_string(), notify.display().to_string());
    envs.extend([
        ("VAULTLET_CONFIG", cfg_s.as_str()),
        ("CREDENTIALS_DIRECTORY", dir_s.as_str()),
        ("NOTIFY_SOCKET", notify_s.as_str()),
        ("NODE_ENV", "production"),
        ("HOOK_ONLY", "for-the-hook"),
        ("UNLISTED_SECRET", "not-on-any-list"),
        ("LC_TIME", "C"),
    ]);
    let script = format!("env -0 > {0}.tmp && mv {0}.tmp {0}; while :; do sleep 0.1; done", child_env.display());
    let d = Daemon::start_with(&dir, &cfg, &["exec"], &["sh", "-c", &script], &envs)?;
    let child =
        eventually(Duration::from_secs(60), "the child wrote its environment", || async { read_env(&child_env) })
            .await
            .with_context(|| d.log_text())?;
    let hook = eventually(Duration::from_secs(60), "the template command wrote its environment", || async {
        read_env(&hook_env)
    })
    .await
    .with_context(|| d.log_text())?;
    for (who, env) in [("exec child", &child), ("template command", &hook)] {
        let leaked: Vec<&String> = env
            .keys()
            .filter(|k| {
                k.starts_with("VAULT")
                    || k.starts_with("BAO_")
                    || k.starts_with("WATCHDOG_")
                    || k.starts_with("LISTEN_")
                    || *k == "CREDENTIALS_DIRECTORY"
                    || *k == "NOTIFY_SOCKET"
                    || *k == "UNLISTED_SECRET"
            })
            .collect();
        ensure!(leaked.is_empty(), "{who} inherited {leaked:?}");
        ensure!(env.get("PATH").is_some_and(|p| !p.is_empty()), "{who} keeps PATH: {env:?}");
        ensure!(env.get("LC_TIME").map(String::as_str) == Some("C"), "{who} keeps LC_*: {env:?}");
    }
    ensure!(child.get("APP_TOKEN").map(String::as_str) == Some("mapped-value"), "the mapped secret: {child:?}");
    ensure!(child.get("NODE_ENV").map(String::as_str) == Some("production"), "exec.inherit_env: {child:?}");
    ensure!(!child.contains_key("HOOK_ONLY"), "template.inherit_env is the template's: {child:?}");
    ensure!(hook.get("HOOK_ONLY").map(String::as_str) == Some("for-the-hook"), "template.inherit_env: {hook:?}");
    ensure!(!hook.contains_key("NODE_ENV") && !hook.contains_key("APP_TOKEN"), "exec's are exec's: {hook:?}");
    d.stop().await?;
    Ok(())
}

/// Attack 5: Running as vaultlet's uid, the child read the AppRole secret_id file
/// and a secret over the socket. With exec.user it can do neither; the
/// same child without exec.user shows the attack the setting stops. (The
/// child reads `app`, which its environment does not name, once, as it
/// starts: exec starts it only once every secret is held, see
/// `exec_app_gets_a_secret_its_environment_does_not_name_on_its_first_read`.)
async fn exec_user_cannot_read_the_secret_id_file_nor_a_secret_on_the_socket(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-user")?;
    bed.approle("t_xuser", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_xuser", json!({ "data": { "token": "only-via-socket" } })).await?;
    std::fs::set_permissions(dir.join("secret_id"), std::fs::Permissions::from_mode(0o600))?;
    let out = open_dir(&dir, "out")?;
    // The socket admits group 0, so only the allow list (vaultlet's uid)
    // stands between a uid-65534, gid-0 child and the secret.
    let base = config(
        &bed,
        &dir,
        "[secret.app]\nkv = { path = \"t_xuser\" }\n[secret.other]\nkv = { path = \"api\" }\n[exec]\nenv = { OTHER = \"other.stripe_key\" }\n",
    )
    .replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let script = |tag: &str| {
        format!(
            "o={out}/{tag}; id -u > $o.uid; if cat {sid} > /dev/null 2>&1; then echo read > $o.sid; else echo denied > $o.sid; fi; \
             {bin} get app.token --socket {sock} > $o.get 2>&1; echo $? > $o.rc; while :; do sleep 0.1; done",
            out = out.display(),
            sid = dir.join("secret_id").display(),
            bin = bin(),
            sock = dir.join("vaultlet.sock").display(),
        )
    };
    let run = |cfg: String, tag: &'static str| {
        let dir = dir.clone();
        let out = out.clone();
        let script = script(tag);
        async move {
            let d = Daemon::start_with(&dir, &cfg, &["exec"], &["sh", "-c", &script], &[])?;
            let rc_file = out.join(format!("{tag}.rc"));
            eventually(Duration::from_secs(60), "the child tried both", || async {
                Ok(std::fs::read_to_string(&rc_file).ok().filter(|s| s.ends_with('\n')).map(drop))
            })
            .await
            .with_context(|| d.log_text())?;
            let read = |ext: &str| std::fs::read_to_string(out.join(format!("{tag}.{ext}"))).unwrap_or_default();
            let r = (read("uid"), read("sid"), read("get"), read("rc"));
            d.stop().await?;
            anyhow::Ok(r)
        }
    };
    // Without exec.user: the attack works (the child is vaultlet's uid).
    let (uid, sid, get, rc) = run(base.clone(), "same").await?;
    ensure!(uid.trim() == "0" && sid.trim() == "read", "as vaultlet's uid the child reads secret_id: {uid} {sid}");
    ensure!(rc.trim() == "0" && get.trim() == "only-via-socket", "and the socket serves it: {rc} {get}");
    // With exec.user = 65534: neither.
    let cfg = base.replace("[exec]\n", "[exec]\nuser = 65534\ngroup = 0\n");
    let (uid, sid, get, rc) = run(cfg, "other").await?;
    ensure!(uid.trim() == "65534", "the child runs as 65534: {uid}");
    ensure!(sid.trim() == "denied", "the child cannot read the secret_id file: {sid}");
    ensure!(rc.trim() != "0" && get.contains("403"), "the socket refuses it with 403: rc {rc} {get}");
    ensure!(!get.contains("only-via-socket"), "no value reached it: {get}");
    Ok(())
}

/// The `Cap*` lines of a `/proc/PID/status`, by name, as numbers.
fn caps(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap"))
        .filter_map(|(k, v)| Some((k.to_owned(), u64::from_str_radix(v.trim(), 16).ok()?)))
        .collect()
}

const CAP_IPC_LOCK: u64 = 1 << 14;

/// Issue 17: run as the systemd unit runs it (a non-root user with
/// `AmbientCapabilities=CAP_IPC_LOCK`), vaultlet handed CAP_IPC_LOCK on:
/// the `exec` app and a template command started with CapPrm = CapEff =
/// CapAmb = 0x4000. Now both start with no capability in any set, while
/// vaultlet itself still holds CAP_IPC_LOCK (so the test cannot pass for
/// want of a capability to hand on).
async fn exec_child_and_template_command_start_without_vaultlets_capabilities(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-caps")?;
    bed.approle("t_xcaps", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_xcaps", json!({ "data": { "token": "caps-value" } })).await?;
    // vaultlet runs as 65534: its directory and credential files are its own.
    for p in [dir.clone(), dir.join("role_id"), dir.join("secret_id")] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).with_context(|| format!("chown {}", p.display()))?;
    }
    let (child_caps, hook_caps) = (dir.join("child.caps"), dir.join("hook.caps"));
    // The shell's own status, read by builtins (a `grep` would show its own).
    let dump = |out: &Path| {
        format!(
            "while read -r l; do case $l in Cap*) echo \"$l\";; esac; done < /proc/self/status > {0}.tmp && mv {0}.tmp {0}",
            out.display()
        )
    };
    let cfg = config(
        &bed,
        &dir,
        &format!(
            "[secret.app]\nkv = {{ path = \"t_xcaps\" }}\n[exec]\nenv = {{ APP_TOKEN = \"app.token\" }}\n\
             [[template]]\npath = \"{conf}\"\ntemplate = \"token={{{{ app.token }}}}\\n\"\ncommand = [\"sh\", \"-c\", {hook:?}]\n",
            conf = dir.join("app.conf").display(),
            hook = dump(&hook_caps),
        ),
    );
    let script = format!("{}; while :; do sleep 0.1; done", dump(&child_caps));
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+ipc_lock",
        "--ambient-caps=+ipc_lock",
        bin(),
        "--log",
        "debug",
    ];
    let d = Daemon::start_via(&setpriv, &dir, &cfg, &["exec"], &["sh", "-c", &script], &[])?;
    let read = |p: &Path| {
        let p = p.to_owned();
        async move { Ok(std::fs::read_to_string(&p).ok().map(|s| caps(&s)).filter(|c| c.contains_key("CapAmb"))) }
    };
    let child = eventually(Duration::from_secs(30), "the child wrote its capabilities", || read(&child_caps))
        .await
        .with_context(|| d.log_text())?;
    let hook = eventually(Duration::from_secs(15), "the template command wrote its capabilities", || read(&hook_caps))
        .await
        .with_context(|| d.log_text())?;
    // vaultlet itself: uid 65534 holding CAP_IPC_LOCK, as under the unit.
    let pid = d.child.id().context("pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")),
        "vaultlet runs as 65534:\n{status}"
    );
    let own = caps(&status);
    ensure!(
        own.get("CapEff").is_some_and(|c| c & CAP_IPC_LOCK != 0),
        "vaultlet holds CAP_IPC_LOCK, so there was something to hand on: {own:x?}"
    );
    for (who, c) in [("exec child", &child), ("template command", &hook)] {
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            ensure!(c.get(set) == Some(&0), "{who}: {set} is {:x?}, not 0 ({c:x?})", c.get(set));
        }
    }
    ensure!(own.get("CapAmb") == Some(&0) && own.get("CapInh") == Some(&0), "vaultlet keeps it to itself: {own:x?}");
    println!("  vaultlet CapEff {:#x}; child and template command: no capabilities", own["CapEff"]);
    d.stop().await?;
    Ok(())
}

/// An app that reads, as it starts, a secret its environment does not name
/// got 503 "not fetched yet" when that secret came after the ones its
/// environment uses. Here it comes late for sure: its KV path is written
/// only once vaultlet has been told it does not exist and serves the other
/// one. The app must not have started by then, and its one read gets it.
async fn exec_app_gets_a_secret_its_environment_does_not_name_on_its_first_read(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-late")?;
    bed.approle("t_xlate", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(
        &bed,
        &dir,
        "[secret.api]\nkv = { path = \"api\" }\n[secret.late]\nkv = { path = \"t_xlate_late\" }\n\
         [exec]\nenv = { K = \"api.stripe_key\" }\n",
    );
    let (got, rc) = (dir.join("app.get"), dir.join("app.rc"));
    let script = format!(
        "{bin} get late.token --socket {sock} > {got} 2>&1; echo $? > {rc}.tmp && mv {rc}.tmp {rc}; \
         while :; do sleep 0.1; done",
        bin = bin(),
        sock = dir.join("vaultlet.sock").display(),
        got = got.display(),
        rc = rc.display(),
    );
    let d = Daemon::start_with(&dir, &cfg, &["exec"], &["sh", "-c", &script], &[])?;
    eventually(Duration::from_secs(60), "`late` refused (404) while `api` is served", || async {
        let refused = d.counter("vaultlet_kv_reads_total{secret=\"late\",result=\"error\"}").await? >= 1.0;
        Ok((refused && d.get("/v1/secrets/api").await?.0 == 200).then_some(()))
    })
    .await
    .with_context(|| d.log_text())?;
    ensure!(!rc.exists(), "the app started before `late` was held\n{}", d.log_text());
    bed.write("secret/data/t_xlate_late", json!({ "data": { "token": "came-late" } })).await?;
    let code = eventually(Duration::from_secs(120), "the app read `late`", || async {
        Ok(std::fs::read_to_string(&rc).ok().filter(|s| s.ends_with('\n')))
    })
    .await
    .with_context(|| d.log_text())?;
    let answer = std::fs::read_to_string(&got)?;
    ensure!(code.trim() == "0" && answer == "came-late\n", "the app's first read failed: exit {code}");
    d.stop().await?;
    Ok(())
}

/// Attack 5: Signals went to the child only: a shell wrapper died and the app it
/// started kept running. Now the stop signal reaches the whole group.
async fn stop_signal_reaches_the_apps_grandchildren(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-group")?;
    bed.approle("t_xgroup", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n[exec]\nenv = { K = \"api.stripe_key\" }\n");
    let (up, got) = (dir.join("gc.up"), dir.join("gc.term"));
    let inner = format!(
        "trap 'echo got-term > {got}; exit 0' TERM; echo $$ > {up}; while :; do sleep 0.05; done",
        got = got.display(),
        up = up.display()
    );
    // The wrapper starts the app in the background and waits, as many
    // entrypoint scripts do.
    let script = format!("sh -c \"{}\" & wait", inner.replace('"', "\\\"").replace('$', "\\$"));
    let mut d = Daemon::start_with(&dir, &cfg, &["exec"], &["sh", "-c", &script], &[])?;
    let pid: i32 = eventually(Duration::from_secs(60), "the grandchild started", || async {
        Ok(std::fs::read_to_string(&up).ok().and_then(|s| s.trim().parse().ok()))
    })
    .await
    .with_context(|| d.log_text())?;
    d.signal(rustix::process::Signal::TERM)?;
    d.wait().await?;
    let reached = eventually(Duration::from_secs(30), "the grandchild got SIGTERM", || async {
        Ok(std::fs::read_to_string(&got).ok().filter(|s| s.trim() == "got-term").map(drop))
    })
    .await;
    if reached.is_err()
        && let Some(p) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    reached
}

/// Attack 5: As PID 1 (a container), vaultlet must reap the orphans the app leaves:
/// here the app double-forks a `sleep` that exits while re-parented to
/// vaultlet, and still get the app's own exit status. Run in a PID
/// namespace of its own, where vaultlet is PID 1.
async fn orphans_of_the_app_are_reaped_when_vaultlet_is_pid_1(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-pid1")?;
    bed.approle("t_xpid1", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, "[secret.api]\nkv = { path = \"api\" }\n[exec]\nenv = { K = \"api.stripe_key\" }\n");
    let (report, pid1) = (dir.join("zombies"), dir.join("pid1"));
    // Prints PID 1's name as the app sees it, makes 5 orphans that exit
    // soon, then polls (up to 5 s) until none of them is alive or a zombie
    // under PID 1, and reports how many zombies are left.
    let script = format!(
        "cat /proc/1/comm > {pid1}; for i in 1 2 3 4 5; do sh -c 'sleep 0.2 &'; done; \
         count() {{ z=0; l=0; for f in /proc/[0-9]*; do s=$(sed 's/.*) //' $f/stat 2>/dev/null) || continue; \
         set -- $s; [ \"$2\" = 1 ] || continue; if [ \"$1\" = Z ]; then z=$((z+1)); \
         elif [ \"$(cat $f/comm 2>/dev/null)\" = sleep ]; then l=$((l+1)); fi; done; }}; \
         t=0; count; while [ $((z+l)) -gt 0 ] && [ $t -lt 50 ]; do sleep 0.1; t=$((t+1)); count; done; \
         echo $z > {report}.tmp; mv {report}.tmp {report}; exit 7",
        pid1 = pid1.display(),
        report = report.display()
    );
    let d = Daemon::start_via(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", bin(), "--log", "debug"],
        &dir,
        &cfg,
        &["exec"],
        &["sh", "-c", &script],
        &[],
    )?;
    let n: u32 = eventually(Duration::from_secs(60), "the app counted zombies", || async {
        Ok(std::fs::read_to_string(&report).ok().and_then(|s| s.trim().parse().ok()))
    })
    .await
    .with_context(|| d.log_text())?;
    let comm = std::fs::read_to_string(&pid1)?;
    ensure!(comm.trim() == "vaultlet", "vaultlet is PID 1 in the namespace: {comm}");
    ensure!(n == 0, "{n} zombies left under PID 1\n{}", d.log_text());
    // The reaper did not take the app's own status: its code comes back
    // (through unshare, which exits with vaultlet's).
    let mut d = d;
    let st = d.wait().await?;
    ensure!(st.code() == Some(7), "the app's exit code passes through PID 1: {st}\n{}", d.log_text());
    Ok(())
}

/// Attack 8: A KV value with a line break gave a docker `--env-file` reader an
/// extra `INJECTED=1`, and a KV value put `"admin": true` at the top level
/// of a JSON template. Now the docker env file refuses the value (naming
/// file and key, keeping the old file) and the JSON value stays a string.
async fn kv_value_cannot_inject_a_variable_into_a_docker_env_file_nor_a_key_into_json(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("x-inject")?;
    bed.approle("t_xinject", "vaultlet-test", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_xinject", json!({ "data": { "line": "benign", "json": "benign" } })).await?;
    let (envf, jsonf) = (dir.join("app.env"), dir.join("app.json"));
    let cfg = config(
        &bed,
        &dir,
        &format!(
            r#"
[secret.app]
kv = {{ path = "t_xinject" }}
refresh = "1s"
[[env_file]]
path = "{env}"
format = "docker"
template = "LINE={{{{ app.line }}}}\n"
[[template]]
path = "{json}"
template = '{{"name": "{{{{ app.json }}}}", "role": "user"}}'
"#,
            env = envf.display(),
            json = jsonf.display()
        ),
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "files written", || async {
        Ok((std::fs::read_to_string(&envf).ok().as_deref() == Some("LINE=benign\n") && jsonf.exists()).then_some(()))
    })
    .await?;
    let evil_json = "x\", \"admin\": true, \"y\": \"";
    bed.write("secret/data/t_xinject", json!({ "data": { "line": "a\nINJECTED=1", "json": evil_json } })).await?;
    let v: serde_json::Value = eventually(Duration::from_secs(60), "the JSON template re-rendered", || async {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&jsonf)?)?;
        Ok((v["name"] != "benign").then_some(v))
    })
    .await
    .with_context(|| d.log_text())?;
    ensure!(v.get("admin").is_none(), "a value added a key: {v}");
    ensure!(v["name"] == evil_json && v["role"] == "user", "the value is the name, exactly: {v}");
    eventually(Duration::from_secs(30), "the refusal is logged with file and key", || async {
        let log = d.log_text();
        Ok(log
            .lines()
            .any(|l| l.contains("file not written") && l.contains(&envf.display().to_string()) && l.contains("LINE"))
            .then_some(()))
    })
    .await?;
    ensure!(std::fs::read_to_string(&envf)? == "LINE=benign\n", "the old env file is kept");
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-env-file.py"))
        .arg(&envf)
        .output()
        .await?;
    ensure!(out.status.success(), "docker CLI read the file: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(String::from_utf8(out.stdout)? == "[\"LINE=benign\"]", "docker sees only LINE");
    ensure!(!d.log_text().contains("INJECTED"), "the value is not logged");
    d.stop().await?;
    Ok(())
}
