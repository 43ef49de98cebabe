//! A Vault that lies: fake HTTP(S) servers on 127.0.0.1 and 127.0.0.2 that
//! redirect, answer absurd TTLs or endless bodies, against the vaultlet
//! library (redirects) and the vaultlet binary (everything that could kill
//! or run away with the process). The real OpenBao cannot be made to do
//! any of this.

#[path = "support/fail2ban.rs"]
mod fail2ban;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use vaultlet::config::VaultConfig;
use vaultlet::vault::{LoginRequest, Vault};

const ROLE_ID: &str = "role-id-7f3a9c";
const SECRET_ID: &str = "secret-id-d41d8cd98f00b204e980";
const TOKEN: &str = "hvs.fake-token-5d41402abc4b2a76b9719d911017c592";

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    token: Option<String>,
    body: String,
}

/// What to answer: status, extra headers, body.
enum Answer {
    Json(u16, Vec<(String, String)>, String),
    /// `n` bytes of a JSON-looking body, no Content-Length, until EOF.
    Endless(usize),
    /// No answer for this long, then the connection closes.
    Hang(Duration),
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(ip: &str, tls: bool, handler: Handler) -> Result<Fake> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let acceptor = if tls { Some(tls_acceptor()?) } else { None };
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().unwrap() += 1;
                let (s, h, acceptor) = (s.clone(), handler.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = serve_one(tls, s, h).await;
                            }
                        }
                        None => {
                            let _ = serve_one(stream, s, h).await;
                        }
                    }
                });
            }
        });
        Ok(Fake { addr, seen, connections, task })
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tls_acceptor() -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(fixtures().join("hostile-server.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(fixtures().join("hostile-server.key"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Reads requests on one connection (keep-alive) and answers each.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default().to_owned();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut len = 0usize;
        let mut token = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-vault-token" => token = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut rest = buf.split_off(head_end + 4);
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        buf = rest.split_off(len);
        let req = Seen { method, path, token, body: String::from_utf8_lossy(&rest).to_string() };
        seen.lock().unwrap().push(req.clone());
        match handler(&req) {
            Answer::Json(status, headers, body) => {
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                if !body.is_empty() {
                    out.push_str("Content-Type: application/json\r\n");
                }
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                s.write_all(out.as_bytes()).await?;
            }
            Answer::Hang(d) => {
                tokio::time::sleep(d).await;
                return Ok(());
            }
            Answer::Endless(n) => {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n").await?;
                s.write_all(b"{\"auth\":{\"client_token\":\"").await?;
                let chunk = vec![b'a'; 64 << 10];
                let mut sent = 0;
                while sent < n {
                    s.write_all(&chunk).await?;
                    sent += chunk.len();
                }
                return Ok(());
            }
        }
    }
}

fn ok(body: serde_json::Value) -> Answer {
    Answer::Json(200, vec![], body.to_string())
}

fn login_answer(ttl: u64) -> Answer {
    ok(json!({ "auth": { "client_token": TOKEN, "lease_duration": ttl, "renewable": true } }))
}

/// A well-behaved Vault, except for what `creds_ttl` / `login_ttl` say.
fn vault_like(login_ttl: u64, creds_ttl: u64, renewable: bool) -> Handler {
    let n = Arc::new(Mutex::new(0u64));
    Arc::new(move |r: &Seen| {
        let p = r.path.as_str();
        if p.ends_with("/auth/approle/login") {
            login_answer(login_ttl)
        } else if p.contains("/database/creds/") {
            let mut n = n.lock().unwrap();
            *n += 1;
            ok(json!({
                "lease_id": format!("database/creds/api/lease{n}"),
                "lease_duration": creds_ttl,
                "renewable": renewable,
                "data": { "username": format!("v-user-{n}"), "password": "pw-Xy7" },
            }))
        } else if p.contains("/sys/leases/renew/") {
            ok(json!({ "lease_id": "x", "lease_duration": creds_ttl, "renewable": renewable }))
        } else if p.contains("/auth/token/renew-self") {
            login_answer(login_ttl)
        } else if p.contains("/database/roles/") {
            Answer::Json(403, vec![], r#"{"errors":["permission denied"]}"#.into())
        } else if p.contains("/secret/data/") {
            ok(json!({ "data": { "data": { "v": "kv-value" } } }))
        } else {
            ok(json!({}))
        }
    })
}

fn vault_config(addrs: &[String], ca: Option<PathBuf>) -> VaultConfig {
    VaultConfig {
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ca_cert: ca,
        namespace: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        client_cert: None,
        max_response_size: vaultlet::vault::DEFAULT_MAX_RESPONSE,
    }
}

fn s(v: &str) -> SecretString {
    SecretString::from(v.to_owned())
}

/// The body of an AppRole login, as the AppRole method builds it.
fn approle_login() -> LoginRequest {
    LoginRequest::new(vaultlet::auth::approle::WORDS).field("role_id", s(ROLE_ID)).field("secret_id", s(SECRET_ID))
}

/// Every request `A` gets is answered `307` to the same path on `to`.
fn redirect_to(to: String) -> Handler {
    Arc::new(move |r: &Seen| Answer::Json(307, vec![("Location".into(), format!("{to}{}", r.path))], String::new()))
}

fn mentions_secret(seen: &[Seen]) -> bool {
    seen.iter().any(|r| r.token.is_some() || r.body.contains(SECRET_ID) || r.body.contains(ROLE_ID))
}

// === redirects ===

#[tokio::test]
async fn redirect_to_another_host_never_sees_the_token_nor_the_login_body() -> Result<()> {
    let other = Fake::start("127.0.0.2", false, vault_like(3600, 60, true)).await?;
    let a = Fake::start("127.0.0.1", false, redirect_to(other.url("http"))).await?;
    let vault = Vault::new(&vault_config(&[a.url("http")], None))?;

    let login = vault.login("approle", &approle_login()).await;
    let kv = vault.kv(&s(TOKEN), "secret", "api", 2).await;
    let Err(e) = login else { bail!("login through a redirect to an unconfigured host succeeded") };
    let msg = e.to_string();
    ensure!(msg.contains("not followed") && msg.contains("127.0.0.2"), "unclear error: {msg}");
    ensure!(!msg.contains(SECRET_ID) && !msg.contains(ROLE_ID), "error leaks a credential: {msg}");
    ensure!(kv.is_err(), "kv read through a redirect to an unconfigured host succeeded");
    // The attack was tried: A redirected both requests.
    ensure!(a.seen().len() == 2, "A saw {:?}", a.seen());
    ensure!(other.connections() == 0, "the other host got {} connections: {:?}", other.connections(), other.seen());
    ensure!(!mentions_secret(&other.seen()));
    println!("redirect refused: {msg}");
    Ok(())
}

#[tokio::test]
async fn https_to_http_downgrade_is_refused_even_to_a_configured_address() -> Result<()> {
    // B is configured too (loopback http is allowed), so only the downgrade
    // rule stands between the redirect and the token. A redirects to a path
    // B marks, so a followed redirect shows in B's log.
    let b = Fake::start("127.0.0.2", false, vault_like(3600, 60, true)).await?;
    let target = format!("{}/redirected", b.url("http"));
    let a = Fake::start("127.0.0.1", true, redirect_to(target)).await?;
    let a_url = a.url("https");
    let vault = Vault::new(&vault_config(&[a_url.clone(), b.url("http")], Some(fixtures().join("hostile-ca.pem"))))?;

    let res = vault.login("approle", &approle_login()).await;
    ensure!(!a.seen().is_empty(), "A (https) never got the request");
    let followed: Vec<_> = b.seen().into_iter().filter(|r| r.path.starts_with("/redirected")).collect();
    ensure!(followed.is_empty(), "the https→http redirect was followed: {followed:?}");
    // B got the login only as the next configured address, at its own path.
    ensure!(res.is_ok(), "failover to the next configured address failed: {:?}", res.err().map(|e| e.to_string()));
    ensure!(b.seen().iter().all(|r| r.path == "/v1/auth/approle/login"), "{:?}", b.seen());
    println!("A saw {} request(s), B {} (none redirected)", a.seen().len(), b.seen().len());
    Ok(())
}

#[tokio::test]
async fn redirect_to_another_configured_address_still_works() -> Result<()> {
    let b = Fake::start("127.0.0.2", false, vault_like(3600, 60, true)).await?;
    let a = Fake::start("127.0.0.1", false, redirect_to(b.url("http"))).await?;
    let vault = Vault::new(&vault_config(&[a.url("http"), b.url("http")], None))?;

    let auth = vault.login("approle", &approle_login()).await?;
    ensure!(auth.ttl == Duration::from_secs(3600));
    vault.kv(&s(TOKEN), "secret", "api", 2).await?;
    // Followed each time: A stays the current address and sees both; had
    // the redirect been refused, the second request would go to B directly.
    ensure!(a.seen().len() == 2, "A saw {:?}", a.seen());
    let bs = b.seen();
    ensure!(bs.len() == 2, "B saw {bs:?}");
    ensure!(bs[0].method == "POST" && bs[0].body.contains(SECRET_ID), "307 keeps the login body: {:?}", bs[0]);
    ensure!(bs[1].token.as_deref() == Some(TOKEN), "the token reaches the configured address");
    Ok(())
}

// === the binary against a lying Vault ===

struct Daemon {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(vault: &str, secret: &str) -> Result<Daemon> {
        Self::start_with(vault, "", secret, &[])
    }

    fn start_with(vault: &str, top: &str, secret: &str, env: &[(&str, &str)]) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("role_id"), ROLE_ID)?;
        std::fs::write(d.join("secret_id"), SECRET_ID)?;
        let cfg = format!(
            "{top}\n[vault]\naddress = \"{vault}\"\nrequest_timeout = \"5s\"\nconnect_timeout = \"1s\"\n\
             [auth.approle]\nrole_id_file = \"{p}/role_id\"\nsecret_id_file = \"{p}/secret_id\"\n\
             [socket]\npath = \"{p}/vaultlet.sock\"\n{secret}\n",
            p = d.display()
        );
        std::fs::write(d.join("vaultlet.toml"), cfg)?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultlet"))
            .args(["--log", "debug", "run", "-c"])
            .arg(d.join("vaultlet.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log"))?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Daemon { child, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("vaultlet exited ({st}):\n{}", self.log());
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        get(&self.dir.path().join("vaultlet.sock"), path).await
    }

    /// Polls until `GET /v1/secrets/<name>` answers 200; returns the body.
    async fn served(&mut self, name: &str, within: Duration) -> Result<serde_json::Value> {
        let end = tokio::time::Instant::now() + within;
        let mut last = String::new();
        while tokio::time::Instant::now() < end {
            self.alive()?;
            match self.get(&format!("/v1/secrets/{name}")).await {
                Ok((200, v)) => return Ok(v),
                Ok((st, v)) => last = format!("{st} {v}"),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{name} not served within {within:?} (last: {last})\n{}", self.log())
    }

    fn vm_hwm_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
    }
}

async fn get(socket: &Path, path: &str) -> Result<(u16, serde_json::Value)> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null)))
}

const DB: &str = "[secret.db]\ndatabase = { role = \"api\" }\n";

fn count(seen: &[Seen], part: &str) -> usize {
    seen.iter().filter(|r| r.path.contains(part)).count()
}

#[tokio::test]
async fn login_ttl_of_2_pow_64_minus_1_neither_kills_the_process_nor_stops_serving() -> Result<()> {
    let fake = Fake::start("127.0.0.1", false, vault_like(u64::MAX, 60, true)).await?;
    let mut d = Daemon::start(&fake.url("http"), DB)?;
    let v = d.served("db", Duration::from_secs(60)).await?;
    ensure!(v["data"]["username"] == "v-user-1", "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.alive()?;
    let log = d.log();
    ensure!(log.contains("clamped") && log.contains("login"), "no clamp logged:\n{log}");
    ensure!(count(&fake.seen(), "/auth/approle/login") == 1, "{:?}", fake.seen());
    Ok(())
}

#[tokio::test]
async fn credential_ttl_of_2_pow_64_minus_1_neither_kills_the_process_nor_stops_serving() -> Result<()> {
    let fake = Fake::start("127.0.0.1", false, vault_like(3600, u64::MAX, true)).await?;
    let mut d = Daemon::start(&fake.url("http"), DB)?;
    let v = d.served("db", Duration::from_secs(60)).await?;
    ensure!(v["data"]["username"] == "v-user-1", "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.alive()?;
    // Still serving, the same credential: a year-long lease is not replaced.
    let v = d.served("db", Duration::from_secs(60)).await?;
    ensure!(v["data"]["username"] == "v-user-1", "{v}");
    let log = d.log();
    ensure!(log.contains("clamped") && log.contains("db_creds"), "no clamp logged:\n{log}");
    Ok(())
}

#[tokio::test]
async fn credential_ttl_zero_does_not_start_an_issue_storm() -> Result<()> {
    let fake = Fake::start("127.0.0.1", false, vault_like(3600, 0, false)).await?;
    let mut d = Daemon::start(&fake.url("http"), DB)?;
    d.served("db", Duration::from_secs(60)).await?;
    let first = fake.seen().len();
    let t = tokio::time::Instant::now();
    // It keeps issuing (the credential is replaced, not dropped): until 3
    // more issues, and at least 6 s, at most a minute.
    let (issues, secs) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.alive()?;
        let issues = count(&fake.seen()[first..], "/database/creds/");
        let secs = t.elapsed().as_secs_f64();
        if issues >= 3 && secs >= 6.0 {
            break (issues, secs);
        }
        ensure!(secs < 60.0, "only {issues} issues in {secs:.1} s");
    };
    println!("TTL 0: {issues} credentials issued in {secs:.1} s (before the fix: 140 in 6 s)");
    // One issue per MIN_ISSUE_INTERVAL (1 s) at most, plus one in flight.
    ensure!(issues <= secs.ceil() as usize + 1, "{issues} issues in {secs:.1} s");
    Ok(())
}

#[tokio::test]
async fn huge_login_answer_is_refused_with_bounded_memory() -> Result<()> {
    const HUGE: usize = 200 << 20;
    let handler: Handler =
        Arc::new(
            |r: &Seen| {
                if r.path.ends_with("/auth/approle/login") { Answer::Endless(HUGE) } else { ok(json!({})) }
            },
        );
    let fake = Fake::start("127.0.0.1", false, handler).await?;
    let mut d = Daemon::start(&fake.url("http"), DB)?;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        d.alive()?;
        let (st, v) = d.get("/v1/ready").await.unwrap_or((0, serde_json::Value::Null));
        let text = v.to_string();
        if st == 503 && text.contains("more than 1048576 bytes") {
            ensure!(text.contains("AppRole login"), "error does not name the operation: {text}");
            ensure!(!text.contains("aaaaaaaa"), "error carries the body: {text}");
            break;
        }
        ensure!(tokio::time::Instant::now() < end, "no size error within 60 s: {st} {text}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hwm = d.vm_hwm_kib()?;
    println!("200 MiB login answer: refused, peak RSS {} MiB (before the fix: 608 MiB)", hwm / 1024);
    ensure!(hwm < 96 * 1024, "peak RSS {hwm} KiB");
    ensure!(!d.log().contains("aaaaaaaa"), "the body reached the log");
    Ok(())
}

// === failover and shutdown ===

#[tokio::test]
async fn timed_out_credential_issue_is_not_repeated_on_the_next_address() -> Result<()> {
    // A's hang outlasts the request timeout; the timeout leaves B (served on
    // this same runtime) slack to answer on a loaded machine.
    let hang: Handler = Arc::new(|_: &Seen| Answer::Hang(Duration::from_secs(60)));
    let a = Fake::start("127.0.0.1", false, hang).await?;
    let b = Fake::start("127.0.0.2", false, vault_like(3600, 60, true)).await?;
    let mut cfg = vault_config(&[a.url("http"), b.url("http")], None);
    cfg.request_timeout = Duration::from_secs(3);
    let vault = Vault::new(&cfg)?;

    // A got the issue and never answered: it may have issued a credential,
    // so it is not issued again on B within the same call.
    let first = vault.db_creds(&s(TOKEN), "database", "api").await;
    ensure!(first.is_err(), "a timed-out issue came back as a success");
    ensure!(count(&a.seen(), "/database/creds/") == 1, "A: {:?}", a.seen());
    ensure!(count(&b.seen(), "/database/creds/") == 0, "the issue was repeated on B: {:?}", b.seen());
    // The caller's next attempt goes to the next address.
    let second = vault.db_creds(&s(TOKEN), "database", "api").await?;
    ensure!(second.lease_id.as_str() == "database/creds/api/lease1");
    ensure!(count(&a.seen(), "/database/creds/") == 1, "A: {:?}", a.seen());
    // An idempotent read is retried on the next address at once.
    let a2 = Fake::start("127.0.0.1", false, Arc::new(|_: &Seen| Answer::Hang(Duration::from_secs(60)))).await?;
    let mut cfg = vault_config(&[a2.url("http"), b.url("http")], None);
    cfg.request_timeout = Duration::from_secs(3);
    let vault = Vault::new(&cfg)?;
    vault.kv(&s(TOKEN), "secret", "api", 2).await?;
    ensure!(count(&b.seen(), "/secret/data/") == 1, "B: {:?}", b.seen());
    // Connection refused: surely not sent, so even an issue moves on at once.
    // The port stays bound (not listening) so nobody else can take it.
    let held = tokio::net::TcpSocket::new_v4()?;
    held.bind("127.0.0.1:0".parse()?)?;
    let closed = held.local_addr()?;
    let vault = Vault::new(&vault_config(&[format!("http://{closed}"), b.url("http")], None))?;
    vault.db_creds(&s(TOKEN), "database", "api").await?;
    ensure!(count(&b.seen(), "/database/creds/") == 2, "B: {:?}", b.seen());
    Ok(())
}

#[tokio::test]
async fn shutdown_revocation_against_a_hanging_vault_ends_within_the_deadline() -> Result<()> {
    let normal = vault_like(3600, 600, true);
    let handler: Handler = Arc::new(move |r: &Seen| {
        if r.path.contains("/sys/leases/revoke") || r.path.contains("/auth/token/revoke-self") {
            Answer::Hang(Duration::from_secs(60))
        } else {
            normal(r)
        }
    });
    let fake = Fake::start("127.0.0.1", false, handler).await?;
    let secrets = (1..=3).map(|i| format!("[secret.db{i}]\ndatabase = {{ role = \"api\" }}\n")).collect::<String>();
    let mut d = Daemon::start_with(&fake.url("http"), "revoke_on_shutdown = true", &secrets, &[])?;
    for i in 1..=3 {
        d.served(&format!("db{i}"), Duration::from_secs(60)).await?;
    }
    let pid = rustix::process::Pid::from_raw(d.child.id().context("exited")? as i32).context("pid")?;
    let t = tokio::time::Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let st = tokio::time::timeout(Duration::from_secs(60), d.child.wait()).await??;
    let took = t.elapsed();
    let seen = fake.seen();
    println!(
        "shutdown against a hanging vault: {took:?}, {} lease revocations sent",
        count(&seen, "/sys/leases/revoke/")
    );
    ensure!(st.success(), "exit {st}:\n{}", d.log());
    ensure!(count(&seen, "/sys/leases/revoke/") == 3, "every lease revocation was sent: {seen:?}");
    ensure!(count(&seen, "/auth/token/revoke-self") >= 1, "the token revocation was sent: {seen:?}");
    // 5 s deadline for everything; before the fix 10 s per lease, one at a
    // time (30 s and more). The bound leaves a loaded machine its slack.
    ensure!(took < Duration::from_secs(20), "stopping took {took:?}");
    Ok(())
}

// === TLS roots ===

#[tokio::test]
async fn ssl_cert_file_in_the_environment_adds_no_trusted_root() -> Result<()> {
    let fake = Fake::start("127.0.0.1", true, vault_like(3600, 60, true)).await?;
    let ca = fixtures().join("hostile-ca.pem");
    let ca_s = ca.display().to_string();
    let kv = "[secret.app]\nkv = { path = \"api\" }\n";
    // SSL_CERT_FILE / SSL_CERT_DIR name the fake's CA; vault.ca_cert is unset.
    let fixtures_dir = fixtures().display().to_string();
    let env = [("SSL_CERT_FILE", ca_s.as_str()), ("SSL_CERT_DIR", fixtures_dir.as_str())];
    let mut d = Daemon::start_with(&fake.url("https"), "", kv, &env)?;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let reason = loop {
        d.alive()?;
        if let Ok((503, v)) = d.get("/v1/ready").await {
            let r = v.to_string();
            if r.contains("login failed") {
                break r;
            }
        }
        ensure!(tokio::time::Instant::now() < end, "no login failure within 60 s:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(reason.to_lowercase().contains("cert"), "not a certificate error: {reason}");
    ensure!(fake.seen().is_empty(), "a request got through TLS: {:?}", fake.seen());
    drop(d);
    // Control: the same CA given as vault.ca_cert is trusted.
    let with_ca = format!("{}\"\nca_cert = \"{ca_s}", fake.url("https"));
    let mut d = Daemon::start_with(&with_ca, "", kv, &[])?;
    let v = d.served("app", Duration::from_secs(60)).await?;
    ensure!(v["data"]["v"] == "kv-value", "{v}");
    Ok(())
}

// === lease verification ===

/// A lookup that fails without saying the lease is gone (5xx, or hanging
/// past the request timeout) must not withdraw or replace a credential:
/// only Vault's "invalid lease" means revoked.
#[tokio::test]
async fn failing_lease_lookups_neither_withdraw_nor_replace_the_credential() -> Result<()> {
    let inner = vault_like(3600, 60, true);
    let lookups = Arc::new(Mutex::new(0u32));
    let l = lookups.clone();
    let handler: Handler = Arc::new(move |r: &Seen| {
        if r.path.ends_with("/sys/leases/lookup") {
            let mut n = l.lock().unwrap();
            *n += 1;
            return if n.is_multiple_of(3) {
                Answer::Hang(Duration::from_secs(7))
            } else {
                Answer::Json(500, vec![], r#"{"errors":["internal error"]}"#.into())
            };
        }
        inner(r)
    });
    let fake = Fake::start("127.0.0.1", false, handler).await?;
    let mut d =
        Daemon::start(&fake.url("http"), "[secret.db]\ndatabase = { role = \"api\" }\nverify_every = \"1s\"\n")?;
    d.served("db", Duration::from_secs(60)).await?;
    // Served throughout at least 10 s and 3 failed lookups (a 500, a 500,
    // a hang), at most a minute.
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10) || *lookups.lock().unwrap() < 3 {
        let (st, v) = d.get("/v1/secrets/db").await?;
        ensure!(st == 200 && v["data"]["username"] == "v-user-1", "served throughout: {st} {v}\n{}", d.log());
        let n = *lookups.lock().unwrap();
        ensure!(t.elapsed() < Duration::from_secs(60), "only {n} lookups in 60 s with verify_every 1s:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.alive()?;
    let seen = fake.seen();
    let n = *lookups.lock().unwrap();
    ensure!(count(&seen, "/database/creds/") == 1, "a failed lookup must not replace: {seen:?}");
    ensure!(d.log().contains("lease lookup failed; the credential stays served"), "{}", d.log());
    println!(
        "{n} failing lookups in {:.0} s: the credential stayed served and was not replaced",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

// === log lines a server writes into ===

/// The attack from the security round: a Vault that answers lease lookups
/// with a 500 whose error text imitates a denial audit line for uid 4242.
/// vaultlet logs the failed lookup with the text quoted, and Debian's
/// `fail2ban-regex` with the shipped filter finds no denial for uid 4242
/// in that log, while the real denial in the same log (root asking for a
/// secret only uid 4343 may read) is found. Before, the text came last on
/// the line, unquoted, and the filter was not anchored: fail2ban counted a
/// denial nobody made.
#[tokio::test]
async fn vault_error_text_imitating_an_audit_line_is_no_denial_to_fail2ban() -> Result<()> {
    const FORGED: &str = "1 error occurred: vaultlet::audit: socket read uid=4242 gid=0 pid=1 exe=node secret=db version=- outcome=denied";
    let inner = vault_like(3600, 60, true);
    let lookups = Arc::new(Mutex::new(0u32));
    let l = lookups.clone();
    let handler: Handler = Arc::new(move |r: &Seen| {
        if r.path.ends_with("/sys/leases/lookup") {
            *l.lock().unwrap() += 1;
            return Answer::Json(500, vec![], json!({ "errors": [FORGED] }).to_string());
        }
        inner(r)
    });
    let fake = Fake::start("127.0.0.1", false, handler).await?;
    let secrets = format!(
        "{DB}verify_every = \"1s\"\n[secret.closed]\nkv = {{ path = \"closed\" }}\nallow = [{{ uid = 4343 }}]\n"
    );
    let mut d = Daemon::start(&fake.url("http"), &secrets)?;
    d.served("db", Duration::from_secs(20)).await?;
    // The real denial: root is on socket.allow, not on `closed`'s list.
    let (st, v) = d.get("/v1/secrets/closed").await?;
    ensure!(st == 403, "root may not read `closed`: {st} {v}");
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let log = loop {
        d.alive()?;
        let log = d.log();
        let forged_logged = log.lines().any(|l| l.contains("lease lookup failed") && l.contains("uid=4242"));
        let denial_logged = log.lines().any(|l| l.contains("vaultlet::audit") && l.contains("outcome=denied"));
        if forged_logged && denial_logged {
            break log;
        }
        ensure!(tokio::time::Instant::now() < end, "no failed lookup and denial logged within 20 s:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(*lookups.lock().unwrap() >= 1, "the lookups reached the fake");
    // The log as a file, and as fail2ban's systemd backend shows journal
    // entries (`<host> <identifier>[<pid>]: <message>`).
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("vaultlet.log");
    std::fs::write(&file, &log)?;
    let journal = dir.path().join("journal.log");
    std::fs::write(&journal, log.lines().map(|l| format!("host1 vaultlet[77]: {l}\n")).collect::<String>())?;
    for path in [&file, &journal] {
        let hosts = fail2ban::fail2ban_hosts(path).await?;
        println!("fail2ban-regex over {}: {hosts:?}", path.display());
        ensure!(!hosts.contains(&fail2ban::uid_as_host(4242)), "a denial nobody made was found: {hosts:?}\n{log}");
        ensure!(
            hosts == [fail2ban::uid_as_host(0)],
            "the one real denial is found, and nothing else: {hosts:?}\n{log}"
        );
    }
    Ok(())
}
