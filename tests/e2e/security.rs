//! What vaultlet must never do, and what it must always account for.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bed::{Bed, Daemon, bin, eventually, free_port, test_dir};
use crate::tests::config;

/// Runs `vaultlet get` as uid `nobody` (gid root, so the 0660 socket admits it).
async fn get_as_nobody(socket: &Path, what: &str) -> Result<std::process::Output> {
    Ok(tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups", bin(), "get", what, "--socket"])
        .arg(socket)
        .output()
        .await?)
}

/// Per-secret allow lists: `nobody` reads `open` but not `closed`; every read
/// and refusal leaves one audit line (with uid, pid, executable, never a
/// value); repeated refusals are rate-limited with 429.
pub async fn per_secret_acl_audit_and_rate_limit(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("acl")?;
    bed.approle("t_acl", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(
        &bed,
        &dir,
        "[secret.open]\nkv = { path = \"api\" }\nallow = [{ uid = 65534 }, { uid = 0 }]\n[secret.closed]\nkv = { path = \"api\" }\n",
    )
    .replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    let out = get_as_nobody(&d.socket, "open.stripe_key").await?;
    ensure!(out.status.success() && out.stdout == b"sk_test_demo123\n", "nobody reads `open`: {out:?}");
    let out = get_as_nobody(&d.socket, "closed").await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("403") && err.contains("closed"),
        "nobody may not read `closed`: {err}"
    );

    // Names it may not read, known or not, are refused alike (no enumeration).
    let out = get_as_nobody(&d.socket, "no_such_secret").await?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("403"), "unknown name for a restricted caller: {out:?}");

    // The list shows nobody only what it may read.
    let list = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups", "curl", "-s", "--unix-socket"])
        .arg(&d.socket)
        .arg("http://vaultlet/v1/secrets")
        .output()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).context("list as nobody")?;
    let names: Vec<_> = v["secrets"].as_object().context("secrets")?.keys().cloned().collect();
    ensure!(names == ["open"], "nobody sees only `open`: {names:?}");
    // Root (the default list) sees both.
    let (_, v) = d.get("/v1/secrets").await?;
    ensure!(v["secrets"].as_object().map(|m| m.len()) == Some(2), "{v}");

    // Audit lines are written by a thread of their own, after the answer.
    let line = |log: &str, secret: &str, outcome: &str| {
        log.lines()
            .find(|l| {
                l.contains("vaultlet::audit")
                    && l.contains("uid=65534")
                    && l.contains(&format!("secret={secret} "))
                    && l.contains(&format!("outcome={outcome}"))
            })
            .map(str::to_owned)
    };
    let (allowed, _) = eventually(Duration::from_secs(30), "audit lines of the read and the refusal", || async {
        let log = d.log_text();
        Ok(line(&log, "open", "allowed").zip(line(&log, "closed", "denied")))
    })
    .await
    .with_context(|| d.log_text())?;
    ensure!(allowed.contains(&format!("exe={}", bin())), "executable in the audit line: {allowed}");
    ensure!(allowed.contains("version=1") && allowed.contains("pid="), "{allowed}");
    ensure!(!d.log_text().contains("sk_test_demo123"), "no value in any log line");

    // Refusals are rate-limited: past 10 in 10 s, 429. Twelve at once, so
    // a slow machine cannot spread them over two windows.
    let refusals = futures_util::future::join_all((0..12).map(|_| get_as_nobody(&d.socket, "closed"))).await;
    let mut answers = Vec::new();
    for out in refusals {
        answers.push(String::from_utf8_lossy(&out?.stderr).into_owned());
    }
    ensure!(answers.iter().any(|a| a.contains("429")), "after many refusals: {answers:?}");
    eventually(Duration::from_secs(30), "rate-limit audit line", || async {
        Ok(d.log_text().contains("outcome=rate_limited").then_some(()))
    })
    .await?;
    d.stop().await?;
    Ok(())
}

/// Asks the socket (argv[1]) for `closed` and for `nosuch`, one after the
/// other, on every route that takes a name, four rounds; prints each pair
/// of answers (status, headers but `date`, body) and how long it all took.
/// One process, so the batch takes milliseconds, not a process per request.
const ASK_PAIRS: &str = r#"
import json, socket, sys, time
path = sys.argv[1]
routes = [("GET", "/v1/secrets/NAME"), ("GET", "/v1/secrets/NAME?wait=5m&after=1"),
          ("POST", "/v1/secrets/NAME/rejected?version=1")]
def ask(method, target):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(("%s %s HTTP/1.0\r\nContent-Length: 0\r\n\r\n" % (method, target)).encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = sorted(l for l in lines[1:] if not l.lower().startswith("date:"))
    return [int(lines[0].split(" ")[1]), headers, body]
start = time.monotonic()
pairs = []
for _ in range(4):
    for method, target in routes:
        pairs.append([method, target, ask(method, target.replace("NAME", "closed")),
                      ask(method, target.replace("NAME", "nosuch"))])
print(json.dumps({"seconds": time.monotonic() - start, "pairs": pairs}))
"#;

/// The attack from the security round: a caller on `socket.allow` but not
/// on `closed`'s own list. For every request that takes a name, the answer
/// for `closed` and for a name that is not configured (`nosuch`, the same
/// length) is the same status, headers and body once the name is swapped,
/// before and after the denial rate limit; both are counted and audited as
/// denials. Before, made-up names got 404 and configured ones 403, so the
/// difference listed the secrets.
pub async fn hidden_secrets_and_made_up_names_get_one_answer(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("enumerate")?;
    bed.approle("t_enumerate", "vaultlet-test", "1h", "4h", &dir, false).await?;
    // Several restricted uids: a batch slower than the rate limiter's
    // window (10 s, on a loaded machine) is repeated by a uid with a fresh
    // count instead of waiting for the window to pass.
    let uids = [65534u32, 65533, 65532];
    let cfg = config(
        &bed,
        &dir,
        "[secret.open]\nkv = { path = \"api\" }\n[secret.closed]\nkv = { path = \"api\" }\nallow = [{ uid = 0 }]\n",
    )
    .replace(
        "[socket]\n",
        "[socket]\nmode = \"0660\"\nallow = [{ uid = 0 }, { uid = 65534 }, { uid = 65533 }, { uid = 65532 }]\n",
    );
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(30)).await?;
    let script = dir.join("ask_pairs.py");
    std::fs::write(&script, ASK_PAIRS)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    let denied = "vaultlet_socket_denied_total{reason=\"secret\"}";
    let mut done = None;
    for uid in uids {
        let before = d.counter(denied).await?;
        let out = tokio::process::Command::new("setpriv")
            .args([&format!("--reuid={uid}"), "--regid=0", "--clear-groups", "/usr/bin/python3"])
            .arg(&script)
            .arg(&d.socket)
            .output()
            .await?;
        ensure!(out.status.success(), "uid {uid} asking: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let secs = report["seconds"].as_f64().context("seconds")?;
        if secs < 9.0 {
            done = Some((uid, before, report));
            break;
        }
        println!(
            "uid {uid}: the batch took {secs:.1} s, longer than the rate limiter's window; again with another uid"
        );
    }
    let (uid, before, report) = done.context("no batch of 24 requests ran within 9 s")?;
    let mut statuses = Vec::new();
    for pair in report["pairs"].as_array().context("pairs")? {
        let (closed, mut nosuch) = (pair[2].clone(), pair[3].clone());
        nosuch[2] = nosuch[2].as_str().context("body")?.replace("nosuch", "closed").into();
        ensure!(closed == nosuch, "{} {}: `closed` {closed}, `nosuch` {}", pair[0], pair[1], pair[3]);
        statuses.push(closed[0].as_u64().context("status")?);
    }
    println!("uid {uid}: answers to `closed` and `nosuch` alike: {statuses:?}");
    ensure!(statuses[..3] == [403, 403, 403] && statuses[6..].iter().all(|s| *s == 429), "{statuses:?}");
    ensure!(
        d.counter(denied).await? - before == 10.0,
        "ten denials counted before the rate limit, for both names alike"
    );
    eventually(Duration::from_secs(5), "audit lines", || async {
        let log = d.log_text();
        let denied = |name: &str| {
            log.lines().any(|l| {
                l.contains("vaultlet::audit")
                    && l.contains(&format!("uid={uid} "))
                    && l.contains(&format!("secret={name} "))
                    && l.ends_with("outcome=denied")
            })
        };
        Ok((denied("closed") && denied("nosuch")).then_some(()))
    })
    .await?;
    d.stop().await?;
    Ok(())
}

/// `[metrics]`: Prometheus text with login and request counters, latency
/// histogram, and seconds until each lease ends.
pub async fn metrics_report_leases_and_requests(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("metrics")?;
    bed.db_role("t_metrics", "1h", "2h").await?;
    bed.approle("t_metrics", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let body = "[secret.db]\ndatabase = { role = \"t_metrics\" }\n[secret.api]\nkv = { path = \"api\" }\n";
    // Another program may bind the port between the pick and vaultlet's
    // bind: then pick another.
    let mut attempt = 0;
    let (d, port) = loop {
        attempt += 1;
        let port = free_port()?;
        let d =
            Daemon::start(&dir, &format!("{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n", config(&bed, &dir, body)))?;
        d.wait_ready(Duration::from_secs(60)).await?;
        let listening = eventually(Duration::from_secs(30), "the metrics listener", || async {
            if d.log_text().contains("cannot listen for metrics") {
                return Ok(Some(false));
            }
            let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else { return Ok(None) };
            Ok(r.text().await.is_ok_and(|t| t.contains("vaultlet_ready")).then_some(true))
        })
        .await?;
        if listening {
            break (d, port);
        }
        ensure!(attempt < 5, "no port for the metrics listener:\n{}", d.log_text());
        d.stop().await?;
    };
    let (_, _, _) = d.creds("db").await?;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
    for want in [
        "vaultlet_logins_total{result=\"ok\"} 1",
        "vaultlet_credentials_issued_total{secret=\"db\"} 1",
        "vaultlet_kv_reads_total{secret=\"api\",result=\"ok\"}",
        "vaultlet_vault_request_duration_seconds_bucket{operation=\"db_creds\",le=\"+Inf\"} 1",
        "vaultlet_secret_lease_ttl_seconds{secret=\"db\"} 3600",
        "vaultlet_socket_requests_total{status=\"200\"}",
        "vaultlet_ready 1",
    ] {
        ensure!(text.contains(want), "metrics lack `{want}`:\n{text}");
    }
    let expiry: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("vaultlet_secret_lease_expiry_seconds{secret=\"db\"} "))
        .context("expiry gauge")?
        .parse()?;
    ensure!((3500.0..=3600.0).contains(&expiry), "expiry {expiry}");
    let (_, _, pass) = {
        let (u, p, v) = d.creds("db").await?;
        (u, v, p)
    };
    ensure!(!text.contains(&pass), "no value in metrics");
    d.stop().await?;
    Ok(())
}

/// With umask 000, the socket, env file and template still get exactly the
/// configured modes (and owner); the process has no core limit and locked
/// memory.
pub async fn modes_owner_and_memory_hold_under_permissive_umask(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("umask")?;
    bed.approle("t_umask", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let wrapper = dir.join("umask000.sh");
    std::fs::write(&wrapper, "#!/bin/sh\numask 000\nexec \"$@\"\n")?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let (env, tmpl) = (dir.join("app.env"), dir.join("app.conf"));
    let cfg = config(
        &bed,
        &dir,
        &format!(
            "[secret.api]\nkv = {{ path = \"api\" }}\n[[env_file]]\npath = \"{}\"\ntemplate = \"K={{{{ api.stripe_key }}}}\"\n[[template]]\npath = \"{}\"\nmode = \"0640\"\nowner = 65534\ngroup = 65534\ntemplate = \"key {{{{ api.stripe_key }}}}\"\n",
            env.display(),
            tmpl.display()
        ),
    );
    let d = Daemon::start_via(
        &[wrapper.to_str().context("path")?, bin(), "--log", "debug"],
        &dir,
        &cfg,
        &["run"],
        &[],
        &[],
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "files", || async { Ok((env.exists() && tmpl.exists()).then_some(())) })
        .await?;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    ensure!(mode(&d.socket)? == 0o600, "socket {:o}", mode(&d.socket)?);
    ensure!(mode(&env)? == 0o600, "env file {:o}", mode(&env)?);
    ensure!(mode(&tmpl)? == 0o640, "template {:o}", mode(&tmpl)?);
    let meta = std::fs::metadata(&tmpl)?;
    ensure!(meta.uid() == 65534 && meta.gid() == 65534, "owner {}:{}", meta.uid(), meta.gid());

    let pid = d.child.id().context("pid")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).context("core limit")?;
    ensure!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let vmlck: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmLck")?;
    ensure!(vmlck > 0, "memory locked (running as root): VmLck {vmlck} kB");
    d.stop().await?;
    Ok(())
}

/// A fake Vault that answers every path with `body` for `status`, to see
/// what vaultlet does with responses the real server will not send.
async fn fake_vault(answers: Vec<(&'static str, u16, String)>) -> Result<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let (status, body) = answers
                    .iter()
                    .find(|(p, _, _)| path.contains(p))
                    .map(|(_, st, b)| (*st, b.clone()))
                    .unwrap_or((404, "{\"errors\":[]}".into()));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// The whole daemon at trace level (vaultrs and the HTTP stack asked for
/// trace too) through a refused login, a login, KV reads, database issues,
/// renewals and rotations, and against a fake server whose responses are
/// malformed but full of secrets: no secret value appears in any output.
pub async fn no_secret_in_logs_at_trace_level(bed: Arc<Bed>) -> Result<()> {
    let trace = [bin(), "--log", "trace,vaultrs=trace,rustify=trace,reqwest=trace,hyper=trace,hyper_util=trace"];
    // 1. Real server.
    let dir = test_dir("leak")?;
    bed.db_role("t_leak", "3s", "8s").await?;
    bed.approle("t_leak", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let secret_id = std::fs::read_to_string(dir.join("secret_id"))?;
    let role_id = std::fs::read_to_string(dir.join("role_id"))?;
    std::fs::write(dir.join("secret_id"), "11111111-2222-3333-4444-555555555555")?;
    bed.write("secret/data/t_leak", json!({ "data": { "token": "kv-value-Zq8wX1" } })).await?;
    let env = dir.join("app.env");
    let cfg = config(
        &bed,
        &dir,
        &format!(
            "[secret.db]\ndatabase = {{ role = \"t_leak\" }}\n[secret.app]\nkv = {{ path = \"t_leak\" }}\nrefresh = \"1s\"\n[[env_file]]\npath = \"{}\"\ntemplate = \"P={{{{ db.password }}}}\\nT={{{{ app.token }}}}\"\n",
            env.display()
        ),
    );
    let d = Daemon::start_via(&trace, &dir, &cfg, &["run"], &[], &[])?;
    eventually(Duration::from_secs(60), "refused login", || async {
        Ok((d.counter("vaultlet_logins_total{result=\"error\"}").await.unwrap_or(0.0) >= 1.0).then_some(()))
    })
    .await?;
    std::fs::write(dir.join("secret_id"), &secret_id)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Until a rotation (max TTL 8 s) and a renewal (TTL 3 s) happened.
    let mut passwords = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while passwords.len() < 2
        || d.counter("vaultlet_lease_renewals_total{secret=\"db\",result=\"ok\"}").await.unwrap_or(0.0) < 1.0
    {
        ensure!(tokio::time::Instant::now() < deadline, "no rotation and renewal in 120 s\n{}", d.log_text());
        if let Ok((_, p, _)) = d.creds("db").await
            && !passwords.contains(&p)
        {
            passwords.push(p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A token of the same shape as vaultlet's, to know what one looks like.
    let login =
        bed.write("auth/approle/login", json!({ "role_id": role_id.trim(), "secret_id": secret_id.trim() })).await?;
    let sample = login["auth"]["client_token"].as_str().context("token")?.to_owned();
    let prefix = &sample[..sample.find('.').map_or(0, |i| i + 1)];
    d.stop().await?;
    let log = std::fs::read_to_string(dir.join("vaultlet.log"))?;
    ensure!(log.contains("renewed lease") && log.contains("TRACE"), "trace run covered renewals");
    let mut values: Vec<String> = passwords.clone();
    values.extend([
        secret_id.trim().to_owned(),
        role_id.trim().to_owned(),
        "kv-value-Zq8wX1".into(),
        "sk_test_demo123".into(),
    ]);
    for v in &values {
        ensure!(!log.contains(v.as_str()), "a secret value reached the log ({} chars)", v.len());
    }
    if !prefix.is_empty() {
        let leaked = log
            .match_indices(prefix)
            .any(|(i, _)| log[i + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).count() >= 20);
        ensure!(!leaked, "something shaped like a token ({prefix}…) is in the log");
    }

    // 2. Malformed responses carrying secrets.
    let dir = test_dir("leak-fake")?;
    std::fs::write(dir.join("role_id"), "LEAKYROLEID-5d2e")?;
    std::fs::write(dir.join("secret_id"), "LEAKYSECRETID-8b41")?;
    let addr = fake_vault(vec![
        ("auth/approle/login", 200, r#"{"request_id":"r","lease_id":"","lease_duration":0,"renewable":false,"data":null,"auth":{"client_token":"s.LEAKYTOKENabcdefghijklmnop","lease_duration":3600,"renewable":true,"accessor":"a","policies":[],"token_policies":[],"entity_id":"","token_type":"service","orphan":true}}"#.into()),
        ("creds/", 200, r#"{"lease_id":"database/creds/x/1","lease_duration":60,"renewable":true,"data":{"username":"u","password":"LEAKYPASSWORD-123"#.into()),
        ("secret/data/", 500, r#"<html>upstream error; last body: {"password":"LEAKY-HTML-PASSWORD"}</html>"#.into()),
    ])
    .await?;
    let cfg = format!(
        "[vault]\naddress = \"{addr}\"\nrequest_timeout = \"2s\"\n[auth.approle]\nrole_id_file = \"{d}/role_id\"\nsecret_id_file = \"{d}/secret_id\"\n[socket]\npath = \"{d}/vaultlet.sock\"\n[secret.db]\ndatabase = {{ role = \"x\" }}\n[secret.api]\nkv = {{ path = \"x\" }}\n",
        d = dir.display()
    );
    for format in ["text", "json"] {
        let d =
            Daemon::start_via(&[trace[0], trace[1], trace[2], "--log-format", format], &dir, &cfg, &["run"], &[], &[])?;
        eventually(Duration::from_secs(60), "malformed answers seen", || async {
            let log = d.log_text();
            Ok((log.contains("cannot read") && log.contains("500")).then_some(()))
        })
        .await?;
        d.stop().await?;
        let log = std::fs::read_to_string(dir.join("vaultlet.log"))?;
        for leak in ["LEAKYPASSWORD", "LEAKY-HTML", "LEAKYSECRETID", "LEAKYROLEID", "LEAKYTOKEN"] {
            ensure!(!log.contains(leak), "{format} log holds `{leak}`");
        }
        if format == "json" {
            for l in log.lines() {
                serde_json::from_str::<serde_json::Value>(l).with_context(|| format!("not JSON: {l}"))?;
            }
        }
    }
    Ok(())
}

/// TLS to a real OpenBao (dev mode with its own CA): with `ca_cert` vaultlet
/// verifies and works; without it the server is refused, and
/// `VAULT_SKIP_VERIFY` / `VAULT_CACERT` in the environment change nothing;
/// plain http to a remote address needs `allow_insecure_http`.
pub async fn tls_verifies_against_the_configured_ca_only(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("tls")?;
    let certs = dir.join("certs");
    let ca = certs.join("vault-ca.pem");
    // Another program may bind the port between the pick and the server's
    // bind: the server then exits, and another port is picked.
    let mut attempt = 0;
    let (mut server, addr, http) = loop {
        attempt += 1;
        let _ = std::fs::remove_dir_all(&certs);
        std::fs::create_dir_all(&certs)?;
        let port = free_port()?;
        let mut server = tokio::process::Command::new(bed.get("BAO_BIN"))
            .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=tlsroot", "-dev-no-store-token"])
            .arg(format!("-dev-tls-cert-dir={}", certs.display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env_clear()
            .env("HOME", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("bao.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        let addr = format!("https://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let up = loop {
            if let Some(st) = server.try_wait()? {
                break Err(st);
            }
            // The CA file may still be half written.
            let client = std::fs::read(&ca)
                .ok()
                .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).ok())
                .and_then(|roots| reqwest::Client::builder().tls_certs_only(roots).build().ok());
            if let Some(http) = client {
                let health = http.get(format!("{addr}/v1/sys/health")).send().await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    break Ok(http);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let _ = server.kill().await;
                bail!("TLS dev server: no answer within 60 s:\n{}", std::fs::read_to_string(dir.join("bao.log"))?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match up {
            Ok(http) => break (server, addr, http),
            Err(st) if attempt < 5 => println!("  TLS dev server on port {port} exited ({st}); another port"),
            Err(st) => bail!("TLS dev server exited ({st}):\n{}", std::fs::read_to_string(dir.join("bao.log"))?),
        }
    };
    let result = async {
        let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
            http.request(method, format!("{addr}/v1/{path}")).header("X-Vault-Token", "tlsroot").json(&body).send()
        };
        call(reqwest::Method::POST, "sys/auth/approle", json!({ "type": "approle" })).await?.error_for_status()?;
        call(reqwest::Method::POST, "sys/policies/acl/kv", json!({ "policy": "path \"secret/data/*\" { capabilities = [\"read\"] }" })).await?.error_for_status()?;
        call(reqwest::Method::POST, "auth/approle/role/tls", json!({ "token_policies": "kv" })).await?.error_for_status()?;
        call(reqwest::Method::POST, "secret/data/tls", json!({ "data": { "v": "over-tls" } })).await?.error_for_status()?;
        let rid: serde_json::Value = call(reqwest::Method::GET, "auth/approle/role/tls/role-id", json!({})).await?.json().await?;
        let sid: serde_json::Value = call(reqwest::Method::POST, "auth/approle/role/tls/secret-id", json!({})).await?.json().await?;
        std::fs::write(dir.join("role_id"), rid["data"]["role_id"].as_str().context("role_id")?)?;
        std::fs::write(dir.join("secret_id"), sid["data"]["secret_id"].as_str().context("secret_id")?)?;

        let base = format!(
            "[vault]\naddress = \"{addr}\"\nrequest_timeout = \"3s\"\n[auth.approle]\nrole_id_file = \"{d}/role_id\"\nsecret_id_file = \"{d}/secret_id\"\n[socket]\npath = \"{d}/vaultlet.sock\"\n[secret.app]\nkv = {{ path = \"tls\" }}\n",
            d = dir.display()
        );
        // With the CA: verified and served.
        let d = Daemon::start(&dir, &base.replace("request_timeout", &format!("ca_cert = \"{}\"\nrequest_timeout", ca.display())))?;
        d.wait_ready(Duration::from_secs(60)).await?;
        let (_, v) = d.get("/v1/secrets/app").await?;
        ensure!(v["data"]["v"] == "over-tls", "{v}");
        d.stop().await?;
        // Without it, even with VAULT_SKIP_VERIFY / VAULT_CACERT set: refused.
        let ca_str = ca.display().to_string();
        let d = Daemon::start_with(&dir, &base, &["run"], &[], &[("VAULT_SKIP_VERIFY", "true"), ("VAULT_CACERT", &ca_str), ("VAULT_ADDR", "http://127.0.0.1:1")])?;
        let reason = eventually(Duration::from_secs(60), "login refused over unverified TLS", || async {
            let (st, v) = d.get("/v1/ready").await?;
            let r = v["reasons"][0]["reason"].as_str().unwrap_or_default().to_owned();
            Ok((st == 503 && r.contains("login failed")).then_some(r))
        })
        .await?;
        ensure!(reason.contains("cannot reach vault") && reason.to_lowercase().contains("cert"), "{reason}");
        d.stop().await?;
        // Plain http to a non-loopback address needs the explicit opt-in.
        let remote = base.replace(&addr, "http://10.255.255.1:8200");
        std::fs::write(dir.join("remote.toml"), &remote)?;
        let out = tokio::process::Command::new(bin()).args(["check", "-c"]).arg(dir.join("remote.toml")).output().await?;
        ensure!(out.status.code() == Some(64), "http to a remote vault: {out:?}");
        std::fs::write(dir.join("remote.toml"), remote.replace("[vault]\n", "[vault]\nallow_insecure_http = true\n"))?;
        let out = tokio::process::Command::new(bin()).args(["check", "-c"]).arg(dir.join("remote.toml")).output().await?;
        ensure!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("WARNING"), "{out:?}");
        anyhow::Ok(())
    }
    .await;
    let _ = server.kill().await;
    result
}
