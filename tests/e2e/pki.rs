//! PKI secrets against the bed's real OpenBao PKI engine (`pki/`, role
//! `internal`) and a real nginx reloaded by vaultlet's after-change command.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_rustls::rustls;

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
        t!(pki_nginx_serves_reissued_certificates_with_no_failed_handshake_and_no_mismatched_pair),
        t!(pki_role_refusing_the_common_name_is_reported_by_ready_and_retried_slowly),
        t!(pki_private_key_never_reaches_the_log_at_trace_level),
        t!(pki_certificates_are_revoked_by_serial_only_when_asked),
    ]
}

/// (certificate, key) as read from the files together.
type Pairs = HashSet<(String, String)>;

const PKI_POLICY: &str = r#"
path "pki/issue/internal" { capabilities = ["update"] }
path "pki/revoke" { capabilities = ["update"] }
"#;

async fn pki_approle(bed: &Bed, name: &str, dir: &Path) -> Result<()> {
    bed.write("sys/policies/acl/vaultlet-pki-test", json!({ "policy": PKI_POLICY })).await?;
    bed.approle(name, "vaultlet-pki-test", "1h", "4h", dir, false).await
}

/// The certificate and key served on the socket now, with the version.
async fn served(d: &Daemon, name: &str) -> Result<(u64, String, String)> {
    let (status, v) = d.get(&format!("/v1/secrets/{name}")).await?;
    ensure!(status == 200, "GET /v1/secrets/{name}: {status} {v}");
    let f = |k: &str| v["data"][k].as_str().map(str::to_owned).with_context(|| format!("no {k} in {}", v["data"]));
    Ok((v["version"].as_u64().context("version")?, f("certificate")?, f("private_key")?))
}

async fn get_json(socket: &Path, path: &str) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    Ok(serde_json::from_str(body)?)
}

fn tls_client(ca_file: &str) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// One verified handshake with nginx on its unix socket, as `localhost`;
/// the DER of the certificate the server presented.
async fn handshake(tls: &tokio_rustls::TlsConnector, socket: &Path) -> Result<Vec<u8>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let name = ServerName::try_from("localhost")?;
    let s = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, stream)).await??;
    let (_, conn) = s.get_ref();
    Ok(conn.peer_certificates().and_then(|c| c.first()).context("no peer certificate")?.as_ref().to_vec())
}

fn der(pem: &str) -> Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.as_ref().to_vec())
}

struct Nginx {
    prefix: PathBuf,
    conf: PathBuf,
    /// Where it listens: a unix socket, so no port can be taken before it binds.
    socket: PathBuf,
}

impl Nginx {
    fn args(&self) -> Vec<String> {
        vec!["-p".into(), self.prefix.display().to_string(), "-c".into(), self.conf.display().to_string()]
    }

    fn stop(&self) {
        let _ = std::process::Command::new(nginx_bin())
            .args(self.args())
            .args(["-s", "stop"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nginx_bin() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().find(|p| Path::new(p).exists()).unwrap_or(&"nginx").to_string()
}

/// nginx on a unix socket, serving `tls/tls.crt` + `tls/tls.key`.
fn nginx_config(dir: &Path) -> Result<Nginx> {
    let prefix = dir.join("nginx");
    let socket = prefix.join("nginx.sock");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    let tls = dir.join("tls");
    std::fs::write(
        &conf,
        format!(
            r#"
daemon on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen unix:{s} ssl;
        ssl_certificate {t}/tls.crt;
        ssl_certificate_key {t}/tls.key;
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
            p = prefix.display(),
            s = socket.display(),
            t = tls.display()
        ),
    )?;
    Ok(Nginx { prefix, conf, socket })
}

/// ≥ 3 re-issues of a 12 s certificate: nginx (reloaded by the after-change
/// command) completes every verified handshake, 100 ms apart, and serves
/// each new certificate; the certificate and key files, read in a tight
/// loop, are always a pair that was issued together.
async fn pki_nginx_serves_reissued_certificates_with_no_failed_handshake_and_no_mismatched_pair(
    bed: Arc<Bed>,
) -> Result<()> {
    let dir = test_dir("pki-nginx")?;
    pki_approle(&bed, "t_pki_nginx", &dir).await?;
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let nginx = nginx_config(&dir)?;
    let a = nginx.args().join(" ");
    let reload = format!("{n} {a} -s reload 2>/dev/null || {n} {a}", n = nginx_bin());
    let body = format!(
        r#"
[secret.tls]
pki = {{ role = "internal", common_name = "localhost", ip_sans = ["127.0.0.1"], ttl = "12s" }}

[[template]]
path = "{t}/tls.crt"
template = "{{{{ tls.certificate }}}}\n{{{{ tls.ca_chain }}}}\n"
mode = "0640"
bundle = "tls"
command = ["/bin/sh", "-c", "{reload}"]

[[template]]
path = "{t}/tls.key"
template = "{{{{ tls.private_key }}}}\n"
bundle = "tls"

[[template]]
path = "{t}/ca.pem"
template = "{{{{ tls.issuing_ca }}}}\n"
mode = "0640"
bundle = "tls"
"#,
        t = tls.display()
    );
    let d = Daemon::start(&dir, &config(&bed, &dir, &body))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // The socket is ready once the certificate is held; the files and nginx
    // (started by the first after-change command) follow.
    let client = tls_client(bed.get("PKI_CA_FILE"))?;
    eventually(Duration::from_secs(60), "first bundle switch and nginx up", || async {
        Ok((tls.join(".vaultlet-tls").exists() && handshake(&client, &nginx.socket).await.is_ok()).then_some(()))
    })
    .await?;

    // Pairs issued together, as the socket serves them: certificate → key.
    let issued: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (v0, c0, k0) = served(&d, "tls").await?;
    issued.lock().unwrap().insert(c0, k0);
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (issued, stop, sock) = (issued.clone(), stop.clone(), d.socket.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.is_cancelled() {
                match get_json(&sock, "/v1/secrets/tls").await {
                    Ok(v) => {
                        let (c, k) = (v["data"]["certificate"].as_str(), v["data"]["private_key"].as_str());
                        if let (Some(c), Some(k)) = (c, k) {
                            issued.lock().unwrap().insert(c.to_owned(), k.to_owned());
                        }
                    }
                    Err(e) => failures.push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        })
    };
    // Files: read cert and key in a tight loop; a read between which the
    // bundle link did not move saw one moment of the directory.
    let prober = {
        let (stop, tls) = (stop.clone(), tls.clone());
        tokio::task::spawn_blocking(move || -> Result<(u64, u64, Pairs)> {
            let (mut reads, mut straddled, mut pairs) = (0u64, 0u64, HashSet::new());
            let link = tls.join(".vaultlet-tls");
            while !stop.is_cancelled() {
                let l1 = std::fs::read_link(&link)?;
                let crt = std::fs::read_to_string(tls.join("tls.crt"))?;
                let key = std::fs::read_to_string(tls.join("tls.key"))?;
                let l2 = std::fs::read_link(&link)?;
                reads += 1;
                if l1 != l2 {
                    straddled += 1;
                    continue;
                }
                let end = "-----END CERTIFICATE-----";
                let leaf = &crt[..crt.find(end).context("no certificate in tls.crt")? + end.len()];
                pairs.insert((leaf.to_owned(), key.trim_end().to_owned()));
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok((reads, straddled, pairs))
        })
    };
    let (mut handshakes, mut failed, mut served_certs) = (0u32, Vec::new(), Vec::<Vec<u8>>::new());
    let t0 = Instant::now();
    let mut version = v0;
    while t0.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        handshakes += 1;
        match handshake(&client, &nginx.socket).await {
            Ok(c) => {
                if served_certs.last() != Some(&c) {
                    served_certs.push(c);
                }
            }
            Err(e) => failed.push(format!("{:.1}s: {e:#}", t0.elapsed().as_secs_f64())),
        }
        if let Ok((v, _, _)) = served(&d, "tls").await {
            version = v;
        }
        // ≥ 4 re-issues seen by the client, over two lifetimes at least.
        if served_certs.len() >= 5 && t0.elapsed() > Duration::from_secs(24) {
            break;
        }
        tokio::time::sleep_until(t + Duration::from_millis(100)).await;
    }
    stop.cancel();
    let watch_failures = watcher.await?;
    let (reads, straddled, pairs) = prober.await??;
    // Every switch runs the bundle's one command after it: wait until the
    // counters agree (the last switch's command may still be running).
    let counts = || async {
        let text = d.metrics_text().await?;
        let sum = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        let ok: f64 = text
            .lines()
            .filter(|l| l.starts_with("vaultlet_file_commands_total{") && l.contains("result=\"ok\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        anyhow::Ok((sum("vaultlet_bundle_switches_total{"), sum("vaultlet_file_commands_total{"), ok))
    };
    let settled = eventually(Duration::from_secs(60), "a command run for every switch", || async {
        let (switches, commands, ok) = counts().await?;
        Ok((switches == commands).then_some((switches, commands, ok)))
    })
    .await;
    let log = d.log_text();
    d.stop().await?;
    let nginx_log = std::fs::read_to_string(nginx.prefix.join("logs/error.log")).unwrap_or_default();
    drop(nginx);

    println!(
        "  pki nginx: versions {v0}..{version}, {} certificates served, {handshakes} handshakes, {} failed; {reads} file reads ({straddled} across a switch), {} distinct pairs",
        served_certs.len(),
        failed.len(),
        pairs.len()
    );
    ensure!(failed.is_empty(), "failed handshakes: {failed:#?}\n--- nginx ---\n{nginx_log}\n--- vaultlet ---\n{log}");
    ensure!(watch_failures.is_empty(), "socket reads failed: {watch_failures:?}");
    ensure!(version >= v0 + 3, "only {} re-issues in 120 s\n{log}", version - v0);
    ensure!(served_certs.len() >= 4, "nginx served {} distinct certificates", served_certs.len());
    let issued = issued.lock().unwrap().clone();
    let issued_der: Vec<Vec<u8>> = issued.keys().map(|c| der(c)).collect::<Result<_>>()?;
    for c in &served_certs {
        ensure!(issued_der.contains(c), "nginx served a certificate that was never issued");
    }
    ensure!(reads > 1000 && pairs.len() >= 4, "the file probe ran: {reads} reads, {} pairs", pairs.len());
    for (crt, key) in &pairs {
        match issued.get(crt.as_str()) {
            Some(k) if k.trim_end() == key => {}
            Some(_) => bail!("tls.crt and tls.key on disk were not issued together"),
            None => bail!("tls.crt on disk holds a certificate the socket never served"),
        }
    }
    let (switches, commands, ok) = settled.with_context(|| log.clone())?;
    ensure!(switches >= 4.0 && ok == commands, "{switches} switches, {commands} commands run ({ok} ran fine)\n{log}");
    Ok(())
}

/// A role that does not allow the common name: `/v1/ready` says why, and
/// the refusal is retried with the slow backoff (5 s and up), not hammered.
async fn pki_role_refusing_the_common_name_is_reported_by_ready_and_retried_slowly(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("pki-refused")?;
    pki_approle(&bed, "t_pki_refused", &dir).await?;
    let body = r#"
[secret.tls]
pki = { role = "internal", common_name = "www.evil.example", ttl = "1h" }
"#;
    let d = Daemon::start(&dir, &config(&bed, &dir, body))?;
    let started = Instant::now();
    let reason = eventually(Duration::from_secs(60), "ready reports the refusal", || async {
        let (status, v) = d.get("/v1/ready").await?;
        let text = v.to_string();
        Ok((status == 503 && text.contains("not allowed by this role")).then_some(text))
    })
    .await?;
    // Attempts by the issue counter, over 13 s from the start at least and
    // until the second one.
    let refused = "vaultlet_certificates_issued_total{secret=\"tls\",result=\"error\"}";
    eventually(Duration::from_secs(60), "a second attempt", || async {
        Ok((d.counter(refused).await? >= 2.0).then_some(()))
    })
    .await?;
    tokio::time::sleep_until(started + Duration::from_secs(13)).await;
    let attempts = d.counter(refused).await? as usize;
    let secs = started.elapsed().as_secs_f64();
    d.stop().await?;
    println!("  pki refused: ready said {reason}; {attempts} attempts in {secs:.0}s");
    ensure!(reason.contains("tls"), "ready names the secret: {reason}");
    // The slow backoff (5 s doubling, up to half of it jitter) starts the
    // attempts after the first no sooner than these; the fast one (0.25 s
    // doubling to 5 s) would make 8 or more in 13 s.
    let most = 1 + [2.5, 7.5, 17.5, 37.5, 77.5, 137.5].iter().filter(|at| **at <= secs).count();
    ensure!((2..=most).contains(&attempts), "{attempts} attempts in {secs:.0} s (at most {most})");
    Ok(())
}

/// Private keys never reach the log, even at trace level for every crate.
async fn pki_private_key_never_reaches_the_log_at_trace_level(bed: Arc<Bed>) -> Result<()> {
    let trace = [bin(), "--log", "trace,vaultrs=trace,rustify=trace,reqwest=trace,hyper=trace,hyper_util=trace"];
    let dir = test_dir("pki-leak")?;
    pki_approle(&bed, "t_pki_leak", &dir).await?;
    let key_file = dir.join("tls.key");
    let body = format!(
        r#"
[secret.tls]
pki = {{ role = "internal", common_name = "localhost", ttl = "4s" }}
revoke_old = true
drain = "1s"

[[template]]
path = "{}"
template = "{{{{ tls.private_key }}}}"
bundle = "tls"
"#,
        key_file.display()
    );
    let d = Daemon::start_via(&trace, &dir, &config(&bed, &dir, &body), &["run"], &[], &[])?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Until two re-issues (4 s certificates) and a revoked replacement.
    let mut keys: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < 3 || !d.log_text().contains("replaced certificate") {
        ensure!(Instant::now() < deadline, "{} keys and no revocation in 60 s\n{}", keys.len(), d.log_text());
        if let Ok((_, _, k)) = served(&d, "tls").await
            && !keys.contains(&k)
        {
            keys.push(k);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log_path = d.log.clone();
    d.stop().await?;
    let log = std::fs::read_to_string(log_path)?;
    ensure!(keys.len() >= 3, "re-issued: {} keys", keys.len());
    // Revocation attempts are in the trace too (OpenBao declines a 4 s
    // certificate this close to its end, which is logged as well).
    ensure!(log.contains("TRACE") && log.contains("replaced certificate"), "trace run covered revocation");
    for k in &keys {
        // Every base64 line of the key body: 64 characters of randomness.
        for line in k.lines().filter(|l| !l.starts_with("-----") && l.len() >= 32) {
            ensure!(!log.contains(line), "a private key line reached the log");
        }
    }
    Ok(())
}

/// With `revoke_old = true` each replaced certificate is revoked after
/// `drain`, and `revoke_on_shutdown` revokes the last one; without them
/// nothing is revoked (revocation grows the CRL).
async fn pki_certificates_are_revoked_by_serial_only_when_asked(bed: Arc<Bed>) -> Result<()> {
    let on = test_dir("pki-revoke-on")?;
    let off = test_dir("pki-revoke-off")?;
    pki_approle(&bed, "t_pki_revoke_on", &on).await?;
    pki_approle(&bed, "t_pki_revoke_off", &off).await?;
    let secret = |extra: &str| {
        // OpenBao declines to revoke a certificate about to expire (200 with
        // a warning): re-issue with 10 s left, revoke 1 s later.
        format!(
            "[secret.tls]\npki = {{ role = \"internal\", common_name = \"localhost\", ttl = \"20s\" }}\nreissue_before = \"15s\"\n{extra}"
        )
    };
    let d_on = Daemon::start(
        &on,
        &format!("revoke_on_shutdown = true\n{}", config(&bed, &on, &secret("revoke_old = true\ndrain = \"1s\"\n"))),
    )?;
    let d_off = Daemon::start(&off, &config(&bed, &off, &secret("")))?;
    d_on.wait_ready(Duration::from_secs(60)).await?;
    d_off.wait_ready(Duration::from_secs(60)).await?;
    // Until each has re-issued once (every 10 s).
    let (mut s_on, mut s_off) = (Vec::<String>::new(), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while s_on.len() < 2 || s_off.len() < 2 {
        ensure!(Instant::now() < deadline, "re-issues in 90 s: {} and {}", s_on.len(), s_off.len());
        for (d, list) in [(&d_on, &mut s_on), (&d_off, &mut s_off)] {
            let (_, v) = d.get("/v1/secrets/tls").await?;
            if let Some(sn) = v["data"]["serial_number"].as_str()
                && !list.iter().any(|x| x == sn)
            {
                list.push(sn.to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The certificate's time left, next to the lease gauges.
    let text = d_on.metrics_text().await?;
    let left: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("vaultlet_certificate_expiry_seconds{secret=\"tls\"} "))
        .with_context(|| format!("no certificate expiry gauge:\n{text}"))?
        .parse()?;
    ensure!(left > 0.0 && left <= 20.0, "certificate expiry gauge {left}");
    ensure!(
        text.contains("vaultlet_certificates_issued_total{secret=\"tls\",result=\"ok\"}"),
        "issue counter:\n{text}"
    );
    let log_on = d_on.log_text();
    d_on.stop().await?;
    d_off.stop().await?;
    let revoked = |sn: String| {
        let bed = bed.clone();
        async move {
            let v = bed.api(reqwest::Method::GET, &format!("pki/cert/{sn}"), None, None).await?;
            Ok::<bool, anyhow::Error>(v["data"]["revocation_time"].as_i64().context("revocation_time")? > 0)
        }
    };
    let (mut n_on, mut n_off, mut not_revoked) = (0, 0, Vec::new());
    for sn in &s_on {
        if revoked(sn.clone()).await? {
            n_on += 1;
        } else {
            not_revoked.push(sn.clone());
        }
    }
    for sn in &s_off {
        n_off += usize::from(revoked(sn.clone()).await?);
    }
    println!("  pki metrics: vaultlet_certificate_expiry_seconds{{secret=\"tls\"}} {left:.1}");
    println!(
        "  pki revoke: with revoke_old+revoke_on_shutdown {n_on}/{} revoked; without {n_off}/{} revoked",
        s_on.len(),
        s_off.len()
    );
    // reissue_before is capped at half the lifetime: a re-issue every 10 s.
    ensure!(s_on.len() >= 2 && s_off.len() >= 2, "re-issues: {} and {}", s_on.len(), s_off.len());
    ensure!(n_on == s_on.len(), "{n_on} of {} certificates revoked; not: {not_revoked:?}\n{log_on}", s_on.len());
    ensure!(n_off == 0, "{n_off} certificates revoked without revoke_old / revoke_on_shutdown");
    Ok(())
}
