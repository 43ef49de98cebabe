//! The shared test bed (real OpenBao + real PostgreSQL, from
//! `scripts/testbed.sh`) and a vaultlet daemon run as a child process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub struct Bed {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    http: reqwest::Client,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Bed {
    /// Starts a bed in a fresh temporary directory. `extra` goes to
    /// `testbed.sh up` (e.g. `--cluster`).
    pub fn up(label: &str, extra: &[&str]) -> Result<Bed> {
        let dir = std::env::temp_dir().join(format!("vaultlet-e2e-{}-{label}", std::process::id()));
        let out = std::process::Command::new(repo().join("scripts/testbed.sh"))
            .arg("up")
            .arg(&dir)
            .args(extra)
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/testbed.sh")?;
        if !out.status.success() {
            bail!("scripts/testbed.sh up failed: {}", out.status);
        }
        let env = String::from_utf8(out.stdout)?
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        Ok(Bed { dir, env, http: reqwest::Client::new() })
    }

    /// Starts a private bed (for tests that break the server) off the async runtime.
    pub async fn private(label: &str, extra: &[&str]) -> Result<PrivateBed> {
        let (label, extra) = (label.to_owned(), extra.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let bed =
            tokio::task::spawn_blocking(move || Bed::up(&label, &extra.iter().map(String::as_str).collect::<Vec<_>>()))
                .await??;
        Ok(PrivateBed(bed))
    }

    pub fn down(&self) {
        let _ = std::process::Command::new(repo().join("scripts/testbed.sh")).arg("down").arg(&self.dir).status();
    }

    /// Runs a `testbed.sh` sub-command on this bed (bao-stop, bao-start, node-kill N, …).
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(repo().join("scripts/testbed.sh"))
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .stderr(Stdio::inherit())
            .output()
            .await?;
        if !out.status.success() {
            bail!("testbed.sh {args:?} failed: {}", out.status);
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Re-reads DIR/env (bao-start changes BAO_PID).
    pub fn reload_env(&mut self) -> Result<()> {
        let text = std::fs::read_to_string(self.dir.join("env"))?;
        self.env = text.lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
        Ok(())
    }

    pub fn get(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or_else(|| panic!("bed env lacks {k}"))
    }

    pub fn addr(&self) -> &str {
        self.get("BAO_ADDR")
    }

    /// A request with the root token.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        wrap: Option<&str>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", self.get("BAO_TOKEN"));
        if let Some(w) = wrap {
            req = req.header("X-Vault-Wrap-TTL", w);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    pub async fn write(&self, path: &str, body: Value) -> Result<Value> {
        self.api(reqwest::Method::POST, path, Some(body), None).await
    }

    /// A database role with the given TTLs.
    pub async fn db_role(&self, name: &str, ttl: &str, max_ttl: &str) -> Result<()> {
        self.write(
            &format!("database/roles/{name}"),
            json!({
                "db_name": "pg",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE app TO \"{{name}}\";"],
                "revocation_statements": ["REVOKE ALL ON DATABASE app FROM \"{{name}}\"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";"],
                "default_ttl": ttl,
                "max_ttl": max_ttl,
            }),
        )
        .await
        .map(drop)
    }

    /// An AppRole with the given policy and token TTLs; writes role_id and
    /// secret_id files into `dir`. With `wrap`, the secret_id file holds a
    /// response-wrapping token.
    pub async fn approle(
        &self,
        name: &str,
        policy: &str,
        token_ttl: &str,
        token_max_ttl: &str,
        dir: &Path,
        wrap: bool,
    ) -> Result<()> {
        self.write(
            &format!("auth/approle/role/{name}"),
            json!({ "token_policies": policy, "token_ttl": token_ttl, "token_max_ttl": token_max_ttl }),
        )
        .await?;
        let rid = self.api(reqwest::Method::GET, &format!("auth/approle/role/{name}/role-id"), None, None).await?;
        std::fs::write(dir.join("role_id"), rid["data"]["role_id"].as_str().context("role_id")?)?;
        let sid = self
            .api(
                reqwest::Method::POST,
                &format!("auth/approle/role/{name}/secret-id"),
                Some(json!({})),
                wrap.then_some("120s"),
            )
            .await?;
        let v = if wrap { sid["wrap_info"]["token"].as_str() } else { sid["data"]["secret_id"].as_str() };
        std::fs::write(dir.join("secret_id"), v.context("secret_id")?)?;
        Ok(())
    }

    /// Logs in to PostgreSQL with the given credentials and runs a query.
    pub async fn pg_login(&self, user: &str, password: &str) -> Result<()> {
        self.pg().login(user, password).await
    }

    pub fn pg(&self) -> Pg {
        Pg(format!("host={} port={} dbname={}", self.get("PGHOST"), self.get("PGPORT"), self.get("PGDATABASE")))
    }
}

/// Where PostgreSQL listens (cheap to clone into background tasks).
#[derive(Clone)]
pub struct Pg(String);

impl Pg {
    pub async fn login(&self, user: &str, password: &str) -> Result<()> {
        let conn = format!("{} user={user} password={password} connect_timeout=5", self.0);
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let rows = client.simple_query("SELECT current_user").await?;
        drop(client);
        let _ = driver.await;
        let who = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .context("no row")?;
        if who != user {
            bail!("logged in as {who}, expected {user}");
        }
        Ok(())
    }
}

/// A bed of a test's own, torn down on drop.
pub struct PrivateBed(pub Bed);

impl Drop for PrivateBed {
    fn drop(&mut self) {
        self.0.down();
    }
}

impl std::ops::Deref for PrivateBed {
    type Target = Bed;
    fn deref(&self) -> &Bed {
        &self.0
    }
}

impl std::ops::DerefMut for PrivateBed {
    fn deref_mut(&mut self) -> &mut Bed {
        &mut self.0
    }
}

/// A vaultlet process.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The metrics socket every test daemon gets (unless its config has a
    /// `[metrics]` of its own): tests assert on counters, not log wording.
    pub metrics: Option<PathBuf>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vaultlet")
}

/// A per-test directory the `nobody` user can traverse.
pub fn test_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vaultlet-t-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

impl Daemon {
    /// Writes `config` to `dir/vaultlet.toml` and starts `vaultlet run`.
    pub fn start(dir: &Path, config: &str) -> Result<Daemon> {
        Self::start_with(dir, config, &["run"], &[], &[])
    }

    /// Starts `vaultlet <cmd> -c dir/vaultlet.toml [-- tail…]` with extra environment.
    pub fn start_with(dir: &Path, config: &str, cmd: &[&str], tail: &[&str], envs: &[(&str, &str)]) -> Result<Daemon> {
        Self::start_via(&[bin(), "--log", "debug"], dir, config, cmd, tail, envs)
    }

    /// Like `start_with`, with the program and its leading arguments given
    /// (a wrapper, another log level…).
    pub fn start_via(
        program: &[&str],
        dir: &Path,
        config: &str,
        cmd: &[&str],
        tail: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Daemon> {
        let cfg = dir.join("vaultlet.toml");
        let metrics = (!config.contains("[metrics]")).then(|| dir.join("metrics.sock"));
        match &metrics {
            // Appended: line numbers in config errors stay as written.
            Some(m) => std::fs::write(&cfg, format!("{config}\n[metrics]\nsocket = \"{}\"\n", m.display()))?,
            None => std::fs::write(&cfg, config)?,
        }
        let log = dir.join("vaultlet.log");
        let mut c = tokio::process::Command::new(program[0]);
        c.args(&program[1..]).args(cmd).arg("-c").arg(&cfg);
        if !tail.is_empty() {
            c.arg("--").args(tail);
        }
        let child = c
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Daemon { child, socket: dir.join("vaultlet.sock"), log, metrics })
    }

    /// Everything the daemon's metrics socket exposes.
    pub async fn metrics_text(&self) -> Result<String> {
        let path = self.metrics.as_ref().context("this daemon's config has its own [metrics]")?;
        let mut s = tokio::net::UnixStream::connect(path).await.context("metrics socket")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
        let text = String::from_utf8(buf)?;
        ensure!(text.lines().next().is_some_and(|l| l.ends_with(" 200 OK")), "metrics: {text}");
        Ok(text)
    }

    /// The value of one series (`name{labels}` exactly as exposed) from the
    /// daemon's metrics socket; 0 when the series does not exist yet.
    pub async fn counter(&self, series: &str) -> Result<f64> {
        let text = self.metrics_text().await?;
        let mut total = None;
        for l in text.lines() {
            if let Some(v) = l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')) {
                *total.get_or_insert(0.0) += v.trim().parse::<f64>().with_context(|| format!("metric line {l}"))?;
            }
        }
        Ok(total.unwrap_or(0.0))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP/1.0 request on the socket.
    pub async fn request(&self, raw: &str) -> Result<(u16, String)> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(raw.as_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
        let text = String::from_utf8(buf)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let status = head.split(' ').nth(1).context("no status")?.parse()?;
        Ok((status, body.to_owned()))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let (status, body) = self.request(&format!("GET {path} HTTP/1.0\r\n\r\n")).await?;
        Ok((status, serde_json::from_str(&body).with_context(|| format!("body of {path}: {body}"))?))
    }

    /// Waits until `/v1/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.get("/v1/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((_, v)) => last = v.to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("not ready within {within:?}: {last}\n--- log ---\n{}", self.log_text())
    }

    /// Credentials of a database secret as served now.
    pub async fn creds(&self, name: &str) -> Result<(String, String, u64)> {
        get_creds(&self.socket, name).await
    }

    /// SIGTERM, then wait for exit.
    pub async fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.signal(rustix::process::Signal::TERM)?;
        self.wait().await
    }

    pub fn signal(&self, sig: rustix::process::Signal) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).context("pid")?, sig);
        }
        Ok(())
    }

    /// Waits (up to 60 s) for the process to exit.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??)
    }
}

/// Reads a database secret from the socket every 100 ms and logs in with it,
/// like an app that reconnects all the time.
///
/// A refused login counts against vaultlet only if it ended within
/// [`PROBE_WINDOW`] of the read: vaultlet serves a credential that works
/// now, and keeps the one it replaced working for a while, not forever. On
/// a loaded machine the probe itself may stall between the read and the
/// login; such a login proves nothing and is only counted.
pub struct Prober {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Probe>,
}

/// How soon after its read a login must end for a refusal to count.
pub const PROBE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Probe {
    pub logins: u32,
    pub failures: Vec<String>,
    /// Logins that ended more than [`PROBE_WINDOW`] after their read.
    pub late: u32,
    /// (version, username, password), in the order first seen.
    pub versions: Vec<(u64, String, String)>,
}

impl Probe {
    /// Fails with every failed login (and the daemon's log) if there was
    /// one. (How many were too late to count, the tests print.)
    pub fn ensure_clean(&self, log: &str) -> Result<()> {
        if !self.failures.is_empty() {
            bail!("{} of {} logins failed: {:#?}\n{log}", self.failures.len(), self.logins, self.failures);
        }
        Ok(())
    }
}

impl Prober {
    pub fn start(socket: PathBuf, name: &str, pg: Pg) -> Prober {
        let stop = tokio_util::sync::CancellationToken::new();
        let (stop2, name) = (stop.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let mut p = Probe::default();
            while !stop2.is_cancelled() {
                let t = Instant::now();
                match get_creds(&socket, &name).await {
                    Ok((u, pw, v)) => {
                        if p.versions.last().is_none_or(|l| l.0 != v) {
                            p.versions.push((v, u.clone(), pw.clone()));
                        }
                        p.logins += 1;
                        let login = pg.login(&u, &pw).await;
                        if t.elapsed() > PROBE_WINDOW {
                            p.late += 1;
                        } else if let Err(e) = login {
                            p.failures.push(format!("{:?} v{v} {u}: {e:#}", std::time::SystemTime::now()));
                        }
                    }
                    Err(e) => p.failures.push(format!("{:?} socket: {e:#}", std::time::SystemTime::now())),
                }
                tokio::time::sleep_until(t + Duration::from_millis(100)).await;
            }
            p
        });
        Prober { stop, task }
    }

    /// Versions seen so far is not shared; callers poll the daemon instead.
    pub async fn finish(self) -> Result<Probe> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

async fn get_creds(socket: &Path, name: &str) -> Result<(String, String, u64)> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET /v1/secrets/{name} HTTP/1.0\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{}: {body}", head.lines().next().unwrap_or_default());
    }
    let v: Value = serde_json::from_str(body)?;
    Ok((
        v["data"]["username"].as_str().context("username")?.to_owned(),
        v["data"]["password"].as_str().context("password")?.to_owned(),
        v["version"].as_u64().context("version")?,
    ))
}

/// A loopback TCP port that is free now, for a server the test starts
/// (vaultlet's metrics listener, a TLS OpenBao). It is picked outside the
/// kernel's ephemeral range, so no outgoing connection takes it before the
/// server binds it, and reserved in the test bed's port registry
/// (`scripts/testbed.sh` keeps it, under its lock, for the beds it starts)
/// in the name of the shared bed, so no bed started meanwhile picks it
/// either; `down` of the shared bed releases it. Another program may still
/// bind it first, so a caller whose server fails to bind picks again.
pub fn free_port() -> Result<u16> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp/.cache"));
    let reg = cache.join("vaultlet-testbed/ports");
    std::fs::create_dir_all(&reg)?;
    let lock = std::fs::File::create(reg.join(".lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    let owner = std::env::temp_dir().join(format!("vaultlet-e2e-{}-shared", std::process::id()));
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut r = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (lo, hi) = (r.next().unwrap_or(32768), r.next().unwrap_or(60999));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for i in 0..20_000u32 {
        // Every port from 10000 up, in a scrambled order.
        let port = 10_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 55_536) as u16;
        let entry = reg.join(port.to_string());
        if (lo..=hi).contains(&port) || entry.exists() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            std::fs::write(&entry, format!("{}\n", owner.display()))?;
            return Ok(port);
        }
    }
    bail!("no free port outside the ephemeral range {lo}-{hi}")
}

/// Polls `f` until it returns `Ok(Some(_))`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last = String::from("never checked");
    while Instant::now() < deadline {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met".into(),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what}: not within {within:?} (last: {last})")
}
