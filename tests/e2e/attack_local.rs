//! Attacks by another user on the same host: flooding the socket, replacing
//! it, planting files and symlinks in shared directories, forging audit
//! lines. The attacker is uid 65534 (`nobody`), the victim root's vaultlet
//! (or a vaultlet running as an unprivileged uid, where root's powers would
//! hide the attack).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::TestFn;
use crate::bed::free_port;
use crate::bed::{Bed, Daemon, bin, eventually, test_dir};
use crate::fail2ban::{fail2ban_hosts, uid_as_host};
use crate::tests::config;

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        t!(flood_by_a_refused_uid_does_not_starve_allowed_callers),
        t!(socket_dir_made_under_umask_000_cannot_be_hijacked_by_another_user),
        t!(dirs_writable_by_others_are_refused_for_sockets_and_files),
        t!(files_planted_at_guessable_names_by_another_user_do_not_block),
        t!(symlinks_at_the_env_file_and_temp_names_do_not_redirect_writes),
        t!(permission_denied_on_connect_does_not_delete_a_live_socket),
        t!(exit_leaves_a_socket_that_replaced_ours),
        t!(expect_uid_refuses_a_socket_served_by_another_uid),
        t!(caller_paths_cannot_forge_audit_lines_or_dodge_fail2ban),
        t!(accept_errors_under_descriptor_exhaustion_are_logged_once),
        t!(metrics_socket_never_deletes_a_file_at_its_path),
        t!(idle_metrics_connections_cannot_take_the_api_sockets_descriptors),
        t!(credential_files_writable_by_others_are_warned_about),
    ]
}

const PYTHON: &str = "/usr/bin/python3";

/// `setpriv` as uid 65534 with gid 0 (so a 0660 root:root socket admits it).
fn as_nobody(program: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=0", "--clear-groups", program]);
    c
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    chmod(&p, 0o755)?;
    Ok(p)
}

async fn get_value(socket: &Path, what: &str, extra: &[&str]) -> Result<std::process::Output> {
    Ok(tokio::process::Command::new(bin()).args(["get", what, "--socket"]).arg(socket).args(extra).output().await?)
}

const API_SECRET: &str = "[secret.api]\nkv = { path = \"api\" }\n";

/// Opens connections as fast as it can for `secs` seconds and holds up to
/// 3000 of them; every tenth sends a request it never reads. First, one
/// request whose answer is read to the end: is it answered, and closed?
const FLOOD: &str = r#"
import json, resource, socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path)
s.sendall(b"GET /v1/secrets/api HTTP/1.1\r\nHost: x\r\n\r\n")
data, closed = b"", False
try:
    while True:
        b = s.recv(65536)
        if not b:
            closed = True
            break
        data += b
except socket.timeout:
    pass
s.close()
held, opened, failed, over = [], 0, 0, []
end = time.time() + secs
while time.time() < end:
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(0.2)
    try:
        c.connect(path)
    except OSError:
        failed += 1
        c.close()
        time.sleep(0.002)
        continue
    opened += 1
    if opened in (500, 1000, 1500):
        # Far past any per-uid cap: what does a connection over it hear?
        try:
            over.append(c.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
        except OSError as e:
            over.append(str(e))
    if opened % 10 == 0:
        try:
            c.send(b"GET /v1/secrets/api HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
    held.append(c)
    if len(held) > 3000:
        held.pop(0).close()
    time.sleep(0.0003)
print(json.dumps({"status": data.split(b"\r\n", 1)[0].decode("latin-1"), "closed": closed,
                  "opened": opened, "failed": failed, "over_cap": over}))
"#;

/// A uid on no allow list floods the socket with connections it holds open
/// while root reads 20 times: every read succeeds, the refused caller's
/// request is answered 403 and its connection closed, the caps engage, and
/// the log stays small. vaultlet runs with 512 descriptors, fewer than the
/// flood opens, so without the caps it would run out of them.
async fn flood_by_a_refused_uid_does_not_starve_allowed_callers(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("flood")?;
    bed.approle("t_flood", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg =
        config(&bed, &dir, API_SECRET).replace("[socket]\n", "[socket]\nmode = \"0660\"\nmax_waits_per_uid = 2\n");
    let d =
        Daemon::start_via(&["prlimit", "--nofile=512:512", bin(), "--log", "info"], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let script = write_script(&dir, "flood.py", FLOOD)?;
    let before = d.log_text().lines().count();

    let flood = as_nobody(PYTHON).arg(&script).arg(&d.socket).arg("12").output();
    let reads = async {
        // Once the flood is on (its connections hit the per-uid cap).
        eventually(Duration::from_secs(30), "the flood reaches the per-uid cap", || async {
            let n = d.counter("vaultlet_socket_denied_total{reason=\"connection_limit_uid\"}").await?;
            Ok((n >= 1.0).then_some(()))
        })
        .await?;
        let mut failures = Vec::new();
        for i in 0..20 {
            let out = get_value(&d.socket, "api.stripe_key", &[]).await?;
            if !(out.status.success() && out.stdout == b"sk_test_demo123\n") {
                failures.push(format!("read {i}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::Ok(failures)
    };
    let (flood, failures) = tokio::join!(flood, reads);
    let (flood, failures) = (flood?, failures?);
    let report: serde_json::Value = serde_json::from_slice(&flood.stdout)
        .with_context(|| format!("flood report: {}", String::from_utf8_lossy(&flood.stderr)))?;
    println!("flood: {report}; root reads failed: {}", failures.len());
    let log = d.log_text();
    ensure!(failures.is_empty(), "allowed reads failed during the flood: {failures:#?}\n{log}");
    ensure!(report["opened"].as_u64().unwrap_or(0) >= 1000, "the flood must open connections: {report}");
    ensure!(report["status"].as_str().is_some_and(|s| s.contains(" 403")), "refused request answered: {report}");
    ensure!(report["closed"] == true, "refused connection closed after its answer: {report}");
    ensure!(
        d.counter("vaultlet_socket_denied_total{reason=\"connection_limit_uid\"}").await? >= 1.0,
        "the per-uid cap engaged:\n{log}"
    );
    let over = report["over_cap"].as_array().context("over_cap")?;
    ensure!(
        over.iter().any(|a| a.as_str().is_some_and(|s| s.contains(" 503"))),
        "a connection over the cap is told 503: {report}"
    );
    // Root's own 20 reads leave one audit line each; everything else is
    // the flood's doing.
    let lines = log.lines().skip(before).filter(|l| !(l.contains(" uid=0 ") && l.contains("outcome=allowed"))).count();
    println!("log lines caused by the flood: {lines}");
    ensure!(lines < 40, "log stays small under a flood: {lines} lines\n{log}");
    ensure!(!log.contains("accept failed"), "no descriptor exhaustion:\n{log}");

    // Long-polls per uid are capped too: of three at once from one uid with
    // max_waits_per_uid = 2, exactly one is told 429 and two wait it out.
    let poll = "GET /v1/secrets/api?wait=10s&after=1 HTTP/1.0\r\n\r\n";
    let (a, b, c) = tokio::join!(d.request(poll), d.request(poll), d.request(poll));
    let mut codes = vec![a?.0, b?.0, c?.0];
    codes.sort();
    println!("three long-polls from one uid: {codes:?}");
    ensure!(codes == [200, 200, 429], "max_waits_per_uid = 2: {codes:?}");
    d.stop().await?;
    Ok(())
}

/// A fake vaultlet: binds `evil` next to the target, renames it over the
/// target, and answers every request with `attacker-value`. Prints what
/// worked.
const HIJACK: &str = r#"
import json, os, socket, sys, threading, time
target = sys.argv[1]
evil = os.path.join(os.path.dirname(target), "evil.sock")
out = {}
try:
    srv = socket.socket(socket.AF_UNIX); srv.bind(evil); srv.listen(16); out["bind"] = "ok"
except OSError as e:
    out["bind"] = str(e)
    srv = None
try:
    os.rename(evil, target); out["rename"] = "ok"
except OSError as e:
    out["rename"] = str(e)
try:
    os.unlink(target); out["unlink"] = "ok"
except OSError as e:
    out["unlink"] = str(e)
print(json.dumps(out), flush=True)
body = b'{"name":"api","version":1,"data":{"stripe_key":"attacker-value"}}'
if srv is not None:
    srv.settimeout(float(sys.argv[2]))
    try:
        while True:
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            c.close()
    except OSError:
        pass
"#;

/// With umask 000, the socket directories vaultlet creates are 0750 at most,
/// so `nobody` can neither put its own socket there, rename it over the
/// live one, nor unlink it; root's `vaultlet get` keeps reading the real
/// value.
async fn socket_dir_made_under_umask_000_cannot_be_hijacked_by_another_user(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("hijack")?;
    bed.approle("t_hijack", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let wrapper = write_script(&dir, "umask000.sh", "#!/bin/sh\numask 000\nexec \"$@\"\n")?;
    let sock = dir.join("run").join("vaultlet").join("vaultlet.sock");
    let cfg = config(&bed, &dir, API_SECRET)
        .replace(&format!("path = \"{}/vaultlet.sock\"", dir.display()), &format!("path = \"{}\"", sock.display()));
    ensure!(cfg.contains(&sock.display().to_string()), "socket path moved into a missing directory");
    let d = Daemon::start_via(&[wrapper.to_str().context("path")?, bin()], &dir, &cfg, &["run"], &[], &[])?;
    let d = Daemon { socket: sock.clone(), ..d };
    d.wait_ready(Duration::from_secs(60)).await?;
    for created in [dir.join("run"), dir.join("run").join("vaultlet")] {
        let mode = std::fs::metadata(&created)?.permissions().mode() & 0o7777;
        println!("{}: {mode:o}", created.display());
        ensure!(mode & 0o027 == 0, "{} created with mode {mode:o} under umask 000", created.display());
    }
    let script = write_script(&dir, "hijack.py", HIJACK)?;
    let mut attacker = as_nobody(PYTHON)
        .arg(&script)
        .arg(&sock)
        .arg("5")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    let stdout = attacker.stdout.take().context("stdout")?;
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line).await?;
    println!("attacker: {}", line.trim());
    let out = get_value(&sock, "api.stripe_key", &[]).await?;
    ensure!(out.status.success() && out.stdout == b"sk_test_demo123\n", "root reads the real value: {out:?} ({line})");
    let v: serde_json::Value = serde_json::from_str(&line)?;
    ensure!(v["rename"] != "ok" && v["unlink"] != "ok", "nobody must not replace or remove the socket: {v}");
    let _ = attacker.kill().await;
    d.stop().await?;
    Ok(())
}

/// A socket directory or an env-file directory writable by other users is
/// refused with a message that says why: world-writable without the sticky
/// bit always, and a sticky one for the socket when another user owns it.
async fn dirs_writable_by_others_are_refused_for_sockets_and_files(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("opendir")?;
    bed.approle("t_opendir", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let open = dir.join("open");
    std::fs::create_dir(&open)?;
    chmod(&open, 0o777)?;
    let sticky_theirs = dir.join("sticky");
    std::fs::create_dir(&sticky_theirs)?;
    chown(&sticky_theirs, 65534, 65534)?;
    chmod(&sticky_theirs, 0o1777)?;
    let base = config(&bed, &dir, API_SECRET);
    let default_sock = format!("path = \"{}/vaultlet.sock\"", dir.display());
    for (label, sock_dir, want) in [
        ("0777", &open, "writable by other users without the sticky bit"),
        ("1777 owned by nobody", &sticky_theirs, "writable by other users and owned by another user"),
    ] {
        let sock = sock_dir.join("vaultlet.sock");
        let cfg = base.replace(&default_sock, &format!("path = \"{}\"", sock.display()));
        let mut d = Daemon::start_via(&[bin()], &dir, &cfg, &["run"], &[], &[])?;
        let st = d.wait().await?;
        let log = d.log_text();
        println!("socket in {label}: exit {:?}", st.code());
        ensure!(st.code() == Some(1), "socket in a {label} dir: exit {:?}\n{log}", st.code());
        ensure!(log.contains(want), "socket in a {label} dir: the reason is given:\n{log}");
        ensure!(std::fs::read_dir(sock_dir)?.count() == 0, "nothing created in the {label} dir");
    }
    // An env file in a 0777 directory is not written; the log says why.
    let env = open.join("app.env");
    let cfg = format!("{base}[[env_file]]\npath = \"{}\"\ntemplate = \"K={{{{ api.stripe_key }}}}\"\n", env.display());
    let d = Daemon::start_via(&[bin()], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "refusal logged", || async {
        Ok(d.log_text().contains("writable by other users without the sticky bit").then_some(()))
    })
    .await?;
    ensure!(std::fs::read_dir(&open)?.count() == 0, "nothing written in the 0777 dir");
    d.stop().await?;
    Ok(())
}

/// Waits for a file named `go` in its directory, then execs the rest: the
/// test knows the daemon's pid (the wrapper's) before the daemon runs.
const GATE: &str = "#!/bin/sh\nwhile [ ! -e \"$(dirname \"$0\")/go\" ]; do sleep 0.02; done\nexec \"$@\"\n";

/// Every name an attacker can derive from the daemon's pid, for the socket
/// and the env file (the names earlier versions used), plus the target
/// name's obvious variants.
fn guessable(name: &str, pid: u32) -> Vec<String> {
    vec![
        format!(".{name}.{pid}"),
        format!(".{name}.vaultlet-{pid}"),
        format!(".{name}.tmp"),
        format!(".{name}.vaultlet"),
        format!("{name}.tmp"),
        format!(".{name}.1"),
        format!(".{name}.vaultlet-1"),
    ]
}

/// In a sticky shared directory (1777, root's), `nobody` pre-creates empty
/// files at every name derivable from vaultlet's pid; vaultlet runs as
/// another unprivileged uid, which cannot remove them. The socket still
/// comes up and the env file is still written.
async fn files_planted_at_guessable_names_by_another_user_do_not_block(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("plant")?;
    bed.approle("t_plant", "vaultlet-test", "1h", "4h", &dir, false).await?;
    for f in ["role_id", "secret_id"] {
        chmod(&dir.join(f), 0o644)?;
    }
    let shared = dir.join("shared");
    std::fs::create_dir(&shared)?;
    chmod(&shared, 0o1777)?;
    let (sock, env) = (shared.join("vaultlet.sock"), shared.join("app.env"));
    let cfg = config(&bed, &dir, API_SECRET)
        .replace(&format!("path = \"{}/vaultlet.sock\"", dir.display()), &format!("path = \"{}\"", sock.display()))
        .replace("[socket]\n", "[socket]\nallow = [{ uid = 0 }]\n");
    let cfg = format!("{cfg}[[env_file]]\npath = \"{}\"\ntemplate = \"K={{{{ api.stripe_key }}}}\"\n", env.display());
    let gate = write_script(&dir, "gate.sh", GATE)?;
    let d = Daemon::start_via(
        &["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", gate.to_str().context("path")?, bin()],
        &dir,
        &cfg,
        &["run"],
        &[],
        &[],
    )?;
    chmod(&dir.join("vaultlet.toml"), 0o644)?;
    let d = Daemon { socket: sock.clone(), ..d };
    let pid = d.child.id().context("pid")?;
    let mut names = guessable("vaultlet.sock", pid);
    names.extend(guessable("app.env", pid));
    let touch = as_nobody("sh")
        .arg("-c")
        .arg("cd \"$1\" && shift && for n in \"$@\"; do : > \"$n\" || exit 1; done")
        .arg("sh")
        .arg(&shared)
        .args(&names)
        .status()
        .await?;
    ensure!(touch.success(), "nobody planted its files");
    for n in &names {
        ensure!(std::fs::metadata(shared.join(n))?.uid() == 65534, "{n} is nobody's");
    }
    std::fs::write(dir.join("go"), "")?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "env file", || async { Ok(env.exists().then_some(())) }).await?;
    let meta = std::fs::metadata(&env)?;
    ensure!(meta.uid() == 4242 && meta.permissions().mode() & 0o777 == 0o600, "env file is vaultlet's, 0600");
    ensure!(std::fs::read_to_string(&env)?.contains("sk_test_demo123"), "env file written");
    let out = get_value(&sock, "api.stripe_key", &[]).await?;
    ensure!(out.status.success() && out.stdout == b"sk_test_demo123\n", "socket serves: {out:?}");
    println!("{} planted names, socket and env file in place", names.len());
    d.stop().await?;
    Ok(())
}

/// In a sticky shared directory, `nobody` points a symlink at the env file's
/// path and at every guessable temporary name, all to a root-owned file:
/// vaultlet (root) replaces the link with its own file, and the target's
/// content and mode stay as they were.
async fn symlinks_at_the_env_file_and_temp_names_do_not_redirect_writes(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("symlink")?;
    bed.approle("t_symlink", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let shared = dir.join("shared");
    std::fs::create_dir(&shared)?;
    chmod(&shared, 0o1777)?;
    let victim = dir.join("victim.conf");
    std::fs::write(&victim, "root's own config\n")?;
    chmod(&victim, 0o600)?;
    let (sock, env) = (shared.join("vaultlet.sock"), shared.join("app.env"));
    let cfg = config(&bed, &dir, API_SECRET)
        .replace(&format!("path = \"{}/vaultlet.sock\"", dir.display()), &format!("path = \"{}\"", sock.display()));
    let cfg = format!("{cfg}[[env_file]]\npath = \"{}\"\ntemplate = \"K={{{{ api.stripe_key }}}}\"\n", env.display());
    let gate = write_script(&dir, "gate.sh", GATE)?;
    let d = Daemon::start_via(&[gate.to_str().context("path")?, bin()], &dir, &cfg, &["run"], &[], &[])?;
    let d = Daemon { socket: sock.clone(), ..d };
    let pid = d.child.id().context("pid")?;
    let mut names = guessable("vaultlet.sock", pid);
    names.extend(guessable("app.env", pid));
    names.push("app.env".into());
    let link = as_nobody("sh")
        .arg("-c")
        .arg("v=\"$1\"; cd \"$2\" && shift 2 && for n in \"$@\"; do ln -s \"$v\" \"$n\" || exit 1; done")
        .arg("sh")
        .arg(&victim)
        .arg(&shared)
        .args(&names)
        .status()
        .await?;
    ensure!(link.success(), "nobody planted its symlinks");
    ensure!(std::fs::symlink_metadata(&env)?.file_type().is_symlink(), "the env file path starts as a symlink");
    std::fs::write(dir.join("go"), "")?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "env file replaced", || async {
        Ok(std::fs::symlink_metadata(&env)?.file_type().is_file().then_some(()))
    })
    .await?;
    ensure!(std::fs::read_to_string(&victim)? == "root's own config\n", "the symlink's target was not written");
    let mode = std::fs::metadata(&victim)?.permissions().mode() & 0o7777;
    ensure!(mode == 0o600, "the symlink's target keeps its mode: {mode:o}");
    let meta = std::fs::symlink_metadata(&env)?;
    ensure!(meta.uid() == 0 && meta.permissions().mode() & 0o777 == 0o600, "the env file is root's own 0600 file");
    ensure!(std::fs::read_to_string(&env)?.contains("sk_test_demo123"), "env file holds the value");
    d.stop().await?;
    Ok(())
}

/// A second vaultlet that may not connect to the live socket (EACCES)
/// must not take it for stale and delete it, even though it may write the
/// directory: it stops with the reason, and the first one keeps serving.
async fn permission_denied_on_connect_does_not_delete_a_live_socket(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("eacces")?;
    bed.approle("t_eacces", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let run = dir.join("run");
    std::fs::create_dir(&run)?;
    chown(&run, 65534, 65534)?;
    chmod(&run, 0o755)?;
    let sock = run.join("vaultlet.sock");
    let cfg = config(&bed, &dir, API_SECRET)
        .replace(&format!("path = \"{}/vaultlet.sock\"", dir.display()), &format!("path = \"{}\"", sock.display()));
    let d = Daemon::start(&dir, &cfg)?;
    let d = Daemon { socket: sock.clone(), ..d };
    d.wait_ready(Duration::from_secs(60)).await?;
    let ino = std::fs::symlink_metadata(&sock)?.ino();

    let second_dir = test_dir("eacces2")?;
    let second_cfg = second_dir.join("vaultlet.toml");
    std::fs::write(&second_cfg, &cfg)?;
    chmod(&second_cfg, 0o644)?;
    let second = as_nobody(bin()).arg("run").arg("-c").arg(&second_cfg).kill_on_drop(true).output();
    // A second vaultlet that took the socket over would run on: give up on it.
    let out = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .context("the second vaultlet must stop at once, not take the socket over")??;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("second vaultlet as nobody: exit {:?}", out.status.code());
    ensure!(out.status.code() == Some(1), "second vaultlet stops: {out:?}");
    ensure!(err.contains("may be live") && err.contains("ermission denied"), "it says why: {err}");
    ensure!(std::fs::symlink_metadata(&sock)?.ino() == ino, "the live socket is still there");
    let out = get_value(&sock, "api.stripe_key", &[]).await?;
    ensure!(out.status.success() && out.stdout == b"sk_test_demo123\n", "and still serves: {out:?}");
    d.stop().await?;
    Ok(())
}

/// If the socket path holds another socket by the time vaultlet exits
/// (replaced by someone else), vaultlet leaves it alone; its own socket
/// is removed.
async fn exit_leaves_a_socket_that_replaced_ours(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("replaced")?;
    bed.approle("t_replaced", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, API_SECRET);
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let other = dir.join("other.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&other)?;
    std::fs::rename(&other, &d.socket)?;
    let ino = std::fs::symlink_metadata(&d.socket)?.ino();
    let sock = d.socket.clone();
    let st = d.stop().await?;
    ensure!(st.success(), "clean stop: {st:?}");
    let after = std::fs::symlink_metadata(&sock).context("the replacement must still be there")?;
    ensure!(after.ino() == ino, "the replacement is untouched");
    std::fs::remove_file(&sock)?;

    // Its own socket is removed.
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    d.stop().await?;
    ensure!(std::fs::symlink_metadata(&sock).is_err(), "vaultlet removes its own socket");
    Ok(())
}

/// A fake server run by `nobody`: logs, per connection, how many bytes it
/// received, and answers with `attacker-value` when asked something.
const FAKE: &str = r#"
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); os.chmod(path, 0o666); srv.listen(8)
print("listening", flush=True)
body = b'{"name":"api","version":1,"data":{"stripe_key":"attacker-value"}}'
n = 0
while True:
    c, _ = srv.accept()
    n += 1
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            b = c.recv(65536)
            if not b:
                break
            data += b
    except OSError:
        pass
    with open(log, "a") as f:
        f.write("%d %d\n" % (n, len(data)))
    if data:
        try:
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
    c.close()
"#;

/// `vaultlet get --expect-uid 0` against a socket served by `nobody`
/// refuses and sends nothing (the fake server logs an empty connection
/// between two real requests); without the flag the fake value comes back,
/// which is the attack the flag stops. Against the real socket it reads.
async fn expect_uid_refuses_a_socket_served_by_another_uid(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("expectuid")?;
    bed.approle("t_expectuid", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(&dir, &config(&bed, &dir, API_SECRET))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs)?;
    chown(&theirs, 65534, 65534)?;
    let (fake_sock, fake_log) = (theirs.join("vaultlet.sock"), theirs.join("requests.log"));
    let script = write_script(&dir, "fake.py", FAKE)?;
    let mut fake = as_nobody(PYTHON)
        .arg(&script)
        .arg(&fake_sock)
        .arg(&fake_log)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    let stdout = fake.stdout.take().context("stdout")?;
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line).await?;
    ensure!(line.trim() == "listening", "fake server up: {line}");

    let plain = get_value(&fake_sock, "api.stripe_key", &[]).await?;
    ensure!(plain.stdout == b"attacker-value\n", "without the flag the fake answers: {plain:?}");
    let checked = get_value(&fake_sock, "api.stripe_key", &["--expect-uid", "0"]).await?;
    let err = String::from_utf8_lossy(&checked.stderr);
    println!("with --expect-uid 0: exit {:?}: {}", checked.status.code(), err.trim());
    ensure!(!checked.status.success() && checked.stdout.is_empty(), "refused: {checked:?}");
    ensure!(err.contains("served by uid 65534"), "says who serves it: {err}");
    let ready = tokio::process::Command::new(bin())
        .args(["ready", "--expect-uid", "0", "--socket"])
        .arg(&fake_sock)
        .output()
        .await?;
    ensure!(!ready.status.success(), "ready refuses too: {ready:?}");
    let again = get_value(&fake_sock, "api.stripe_key", &[]).await?;
    ensure!(again.stdout == b"attacker-value\n", "{again:?}");
    let log = std::fs::read_to_string(&fake_log)?;
    ensure!(log.lines().count() == 4, "four connections: {log}");
    let got: Vec<u64> = log.lines().filter_map(|l| l.split(' ').nth(1)?.parse().ok()).collect();
    ensure!(got[0] > 0 && got[1] == 0 && got[2] == 0 && got[3] > 0, "no request sent when refused: {log}");

    let real = get_value(&d.socket, "api.stripe_key", &["--expect-uid", "0"]).await?;
    ensure!(real.status.success() && real.stdout == b"sk_test_demo123\n", "{real:?}");
    let ready = tokio::process::Command::new(bin())
        .args(["ready", "--expect-uid", "0", "--socket"])
        .arg(&d.socket)
        .output()
        .await?;
    ensure!(ready.status.success(), "{ready:?}");
    let _ = fake.kill().await;
    d.stop().await?;
    Ok(())
}

/// Names for copies of curl: a space, a quote, a newline that tries to
/// write a whole `outcome=allowed` line for uid 4242, and a quote trick
/// that tries to make the fail2ban filter read uid 4343.
fn hostile_names() -> Vec<String> {
    vec![
        "cu rl".into(),
        "cu\"rl".into(),
        "x secret=api version=1 outcome=allowed\n2026-12-01T00:00:00.000000Z  INFO vaultlet::audit: socket read uid=4242 gid=0 pid=1 exe=node secret=api version=1 outcome=allowed".into(),
        "y vaultlet::audit: socket read uid=4343 gid=0 pid=1 exe=\"z".into(),
        "tab\there\u{7}".into(),
    ]
}

/// Runs every hostile copy of curl once as `nobody` (not on the allow list)
/// against `socket`.
async fn deny_from_hostile_paths(bins: &[PathBuf], socket: &Path) -> Result<()> {
    for b in bins {
        let out = as_nobody(b.to_str().context("utf-8 path")?)
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
            .arg(socket)
            .arg("http://vaultlet/v1/secrets/api")
            .output()
            .await?;
        ensure!(out.stdout == b"403", "{}: refused with 403: {out:?}", b.display());
    }
    Ok(())
}

/// A caller whose executable path holds a newline, spaces or quotes cannot
/// add or alter audit lines: the text log has exactly one audit line per
/// refusal, each naming uid 65534; the JSON log stays one valid object per
/// line; and Debian's `fail2ban-regex` with `examples/fail2ban/vaultlet.conf`
/// matches every refusal, always for uid 65534.
async fn caller_paths_cannot_forge_audit_lines_or_dodge_fail2ban(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("forge")?;
    bed.approle("t_forge", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let bins_dir = dir.join("bins");
    std::fs::create_dir(&bins_dir)?;
    chmod(&bins_dir, 0o755)?;
    let mut bins = vec![PathBuf::from("/usr/bin/curl")];
    for n in hostile_names() {
        let p = bins_dir.join(&n);
        std::fs::copy("/usr/bin/curl", &p)?;
        chmod(&p, 0o755)?;
        bins.push(p);
    }
    let cfg = config(&bed, &dir, API_SECRET).replace("[socket]\n", "[socket]\nmode = \"0660\"\n");

    // Text log.
    let d = Daemon::start_via(&[bin(), "--log", "info"], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    deny_from_hostile_paths(&bins, &d.socket).await?;
    let log_path = d.log.clone();
    d.stop().await?;
    let text = std::fs::read_to_string(&log_path)?;
    let audit: Vec<&str> = text.lines().filter(|l| l.contains("vaultlet::audit")).collect();
    ensure!(audit.len() == bins.len(), "one audit line per refusal ({}), got {}:\n{text}", bins.len(), audit.len());
    for l in &audit {
        let first_uid = l.split("uid=").nth(1).and_then(|r| r.split(' ').next());
        ensure!(first_uid == Some("65534"), "audit line for another uid: {l}");
        ensure!(l.trim_end().ends_with("outcome=denied"), "the line ends with its real outcome: {l}");
    }
    ensure!(!text.lines().any(|l| l.starts_with("2026-12-01T00:00:00")), "forged line in the log:\n{text}");

    // fail2ban-regex, from Debian's package, against that log.
    let hosts = fail2ban_hosts(&log_path).await?;
    println!("fail2ban-regex matched {} of {} refusals: {hosts:?}", hosts.len(), bins.len());
    ensure!(hosts.len() == bins.len(), "fail2ban matches every refusal: {hosts:?}\n{text}");
    ensure!(hosts.iter().all(|h| *h == uid_as_host(65534)), "always for the real uid: {hosts:?}");

    // JSON log: every line one valid object, the audit ones for uid 65534.
    let json_dir = test_dir("forge-json")?;
    for f in ["role_id", "secret_id"] {
        std::fs::copy(dir.join(f), json_dir.join(f))?;
    }
    let cfg = config(&bed, &json_dir, API_SECRET).replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let d = Daemon::start_via(&[bin(), "--log", "info", "--log-format", "json"], &json_dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    deny_from_hostile_paths(&bins, &d.socket).await?;
    let log_path = d.log.clone();
    d.stop().await?;
    let text = std::fs::read_to_string(&log_path)?;
    let mut audits = 0;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
        if v["target"] == "vaultlet::audit" {
            audits += 1;
            ensure!(v["uid"] == 65534 && v["outcome"] == "denied", "{v}");
        }
    }
    ensure!(audits == bins.len(), "one JSON audit line per refusal: {audits}");
    Ok(())
}

/// With so few descriptors (48) that a flood does exhaust them, accept
/// errors back off and are logged once (per minute), not once per attempt;
/// once the flood is over, root reads again.
async fn accept_errors_under_descriptor_exhaustion_are_logged_once(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("emfile")?;
    bed.approle("t_emfile", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, API_SECRET).replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let d = Daemon::start_via(&["prlimit", "--nofile=48:48", bin(), "--log", "info"], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let script = write_script(&dir, "flood.py", FLOOD)?;
    let flood = as_nobody(PYTHON).arg(&script).arg(&d.socket).arg("6").output().await?;
    ensure!(flood.status.success(), "flood: {flood:?}");
    let log = d.log_text();
    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    println!("accept-failure lines after a 6 s flood at 48 descriptors: {failures}");
    ensure!(failures >= 1, "descriptors must have run out for this test to mean anything:\n{log}");
    ensure!(failures == 1, "accept errors logged once, not per attempt: {failures}\n{log}");
    let ok = eventually(Duration::from_secs(60), "root reads again after the flood", || async {
        let out = get_value(&d.socket, "api.stripe_key", &[]).await?;
        Ok((out.status.success() && out.stdout == b"sk_test_demo123\n").then_some(()))
    })
    .await;
    ok?;
    d.stop().await?;
    Ok(())
}

/// A regular file at the metrics socket's path is left alone (metrics are
/// off, with the reason), and a metrics socket vaultlet made is removed at
/// exit only while it is still its own.
async fn metrics_socket_never_deletes_a_file_at_its_path(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("metricsock")?;
    bed.approle("t_metricsock", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let path = dir.join("metrics.sock");
    std::fs::write(&path, "not a socket\n")?;
    let cfg = format!("{}\n[metrics]\nsocket = \"{}\"\n", config(&bed, &dir, API_SECRET), path.display());
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "metrics refusal logged", || async {
        Ok(d.log_text().contains("exists and is not a socket").then_some(()))
    })
    .await?;
    d.stop().await?;
    ensure!(std::fs::read_to_string(&path)? == "not a socket\n", "the file at the metrics path is untouched");

    std::fs::remove_file(&path)?;
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "metrics socket", || async {
        Ok(std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()).then_some(()))
    })
    .await?;
    let other = dir.join("other.sock");
    let _theirs = std::os::unix::net::UnixListener::bind(&other)?;
    std::fs::rename(&other, &path)?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    d.stop().await?;
    ensure!(std::fs::symlink_metadata(&path)?.ino() == ino, "a metrics socket someone else put there stays");
    Ok(())
}

/// Opens TCP connections to 127.0.0.1:PORT and holds up to 3000 of them
/// without sending a byte, until stdin closes; says `flooding` once it has
/// opened twice the descriptors vaultlet has, then keeps opening. Prints
/// how many it opened.
const METRICS_FLOOD: &str = r#"
import json, resource, select, socket, sys, time
port, limit = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, opened, failed, told = [], 0, 0, False
while not select.select([sys.stdin], [], [], 0)[0]:
    c = socket.socket()
    c.settimeout(0.2)
    try:
        c.connect(("127.0.0.1", port))
    except OSError:
        failed += 1
        c.close()
        time.sleep(0.002)
        continue
    opened += 1
    held.append(c)
    if len(held) > 3000:
        held.pop(0).close()
    if opened >= 2 * limit and not told:
        print("flooding", flush=True)
        told = True
    time.sleep(0.0005)
for c in held:
    c.close()
print(json.dumps({"opened": opened, "failed": failed}), flush=True)
"#;

/// The attack from the security round: a uid that may not use the API
/// socket holds idle connections to `metrics.listen`, far more than the
/// descriptors vaultlet has (512). Every read by an allowed caller on the
/// API socket meanwhile succeeds, and once the flood is over a scrape
/// works again. Before the metrics listener had a connection cap, the idle
/// connections took every descriptor and the API socket's accept failed
/// with "Too many open files".
async fn idle_metrics_connections_cannot_take_the_api_sockets_descriptors(bed: Arc<Bed>) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    const LIMIT: u32 = 512;
    let dir = test_dir("metricsflood")?;
    bed.approle("t_metricsflood", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let port = free_port()?;
    let cfg = format!("{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n", config(&bed, &dir, API_SECRET));
    let nofile = format!("--nofile={LIMIT}:{LIMIT}");
    let d = Daemon::start_via(&["prlimit", &nofile, bin(), "--log", "info"], &dir, &cfg, &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(30)).await?;
    let scrape = || async {
        let res = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?;
        anyhow::Ok((res.status().as_u16(), res.text().await?))
    };
    let (st, text) = scrape().await?;
    ensure!(st == 200 && text.contains("vaultlet_ready 1"), "scrape before the flood: {st}\n{text}");

    let script = write_script(&dir, "metrics_flood.py", METRICS_FLOOD)?;
    let mut flood = as_nobody(PYTHON)
        .arg(&script)
        .arg(port.to_string())
        .arg(LIMIT.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = tokio::io::BufReader::new(flood.stdout.take().context("flood stdout")?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), out.read_line(&mut line))
        .await
        .context("the flood never opened twice vaultlet's descriptors")??;
    ensure!(line.trim() == "flooding", "flood: {line}");
    let mut failures = Vec::new();
    for i in 0..20 {
        let read = get_value(&d.socket, "api.stripe_key", &[]).await?;
        if !(read.status.success() && read.stdout == b"sk_test_demo123\n") {
            failures.push(format!("read {i}: {}", String::from_utf8_lossy(&read.stderr).trim()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flood.stdin.take());
    let mut report = String::new();
    tokio::time::timeout(Duration::from_secs(30), out.read_to_string(&mut report)).await??;
    let _ = flood.wait().await;
    let report: serde_json::Value = serde_json::from_str(report.trim()).with_context(|| format!("report: {report}"))?;
    println!("metrics flood: {report}; allowed reads that failed meanwhile: {}", failures.len());
    let log = d.log_text();
    ensure!(report["opened"].as_u64().unwrap_or(0) >= u64::from(2 * LIMIT), "the flood opened too few: {report}");
    ensure!(failures.is_empty(), "allowed reads failed during the metrics flood: {failures:#?}\n{log}");
    ensure!(!log.contains("accept failed"), "the API socket ran out of descriptors:\n{log}");
    let again = eventually(Duration::from_secs(20), "a scrape after the flood", || async {
        Ok(scrape().await.ok().filter(|(st, text)| *st == 200 && text.contains("vaultlet_ready 1")))
    })
    .await;
    again?;
    d.stop().await?;
    Ok(())
}

/// A secret_id file anyone may rewrite decides which AppRole vaultlet logs
/// in as: vaultlet says so at start, naming the key.
async fn credential_files_writable_by_others_are_warned_about(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("loosecred")?;
    bed.approle("t_loosecred", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(&dir, &config(&bed, &dir, API_SECRET))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    d.stop().await?;
    let before = std::fs::read_to_string(dir.join("vaultlet.log"))?;
    ensure!(!before.contains("can be rewritten by other users"), "no warning for 0644 files:\n{before}");
    chmod(&dir.join("secret_id"), 0o666)?;
    let d = Daemon::start(&dir, &config(&bed, &dir, API_SECRET))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("can be rewritten by other users")).map(str::to_owned);
    let line = line.with_context(|| format!("warning for a 0666 secret_id file:\n{log}"))?;
    ensure!(line.contains("auth.approle.secret_id_file") && !line.contains("role_id_file"), "names the key: {line}");
    d.stop().await?;
    Ok(())
}
