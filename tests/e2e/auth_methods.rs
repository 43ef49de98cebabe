//! Auth methods other than AppRole, against OpenBao's real ones: `jwt`
//! with a key pair made here, and `kubernetes` with a TokenReview stand-in
//! (there is no Kubernetes API server here; the stand-in is the only fake).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::TestFn;
use crate::bed::{Bed, Daemon, bin, eventually, test_dir};

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        t!(jwt_login_follows_the_rewritten_token_file),
        t!(kubernetes_login_is_reviewed_and_a_rejected_token_is_reported),
    ]
}

/// An ES256 signing key made for one test.
struct Signer(EcdsaKeyPair);

impl Signer {
    fn new() -> Result<Signer> {
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map(Signer).map_err(|_| anyhow::anyhow!("keygen"))
    }

    /// The public key as PEM (SubjectPublicKeyInfo): the fixed DER prefix of
    /// a P-256 key, then the uncompressed point.
    fn public_pem(&self) -> String {
        const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
        let mut der: Vec<u8> = (0..P256_SPKI_PREFIX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&P256_SPKI_PREFIX[i..i + 2], 16).unwrap())
            .collect();
        der.extend_from_slice(self.0.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// A compact JWT with `claims`.
    fn sign(&self, claims: &Value) -> Result<String> {
        let head = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).map_err(|_| anyhow::anyhow!("sign"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Replaces the token file as the kubelet does: a new file renamed over it.
fn write_token(path: &Path, token: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A config logging in with `auth` (an `[auth.*]` table), serving the KV
/// secret `app` from `kv_path`.
fn config(bed: &Bed, dir: &Path, auth: &str, kv_path: &str) -> String {
    format!(
        "[vault]\naddress = \"{}\"\nrequest_timeout = \"3s\"\nconnect_timeout = \"1s\"\n\n{auth}\n\
         [socket]\npath = \"{}/vaultlet.sock\"\n\n[secret.app]\nkv = {{ path = \"{kv_path}\" }}\n",
        bed.addr(),
        dir.display()
    )
}

/// `vaultlet ready` on the daemon's socket: its exit code and stderr.
async fn ready(d: &Daemon) -> Result<(Option<i32>, String)> {
    let out = tokio::process::Command::new(bin()).args(["ready", "--socket"]).arg(&d.socket).output().await?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Enables the auth method `kind` at `mount` (a name of the test's own).
async fn enable(bed: &Bed, mount: &str, kind: &str) -> Result<()> {
    bed.write(&format!("sys/auth/{mount}"), json!({ "type": kind })).await.map(drop)
}

async fn ok_logins(d: &Daemon) -> Result<f64> {
    d.counter("vaultlet_logins_total{result=\"ok\"}").await
}

async fn failed_logins(d: &Daemon) -> Result<f64> {
    d.counter("vaultlet_logins_total{result=\"error\"}").await
}

/// JWT against OpenBao's real `jwt` method: vaultlet logs in and serves a
/// KV secret; the token file rewritten while it runs is what the next
/// logins send (they keep succeeding after the first token's `exp`, and none
/// fails); an expired token is reported by `vaultlet ready` until a valid
/// one is written; the file is never deleted.
async fn jwt_login_follows_the_rewritten_token_file(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("jwt")?;
    let mount = format!("jwt-e2e-{}", std::process::id());
    let signer = Signer::new()?;
    enable(&bed, &mount, "jwt").await?;
    bed.write(
        &format!("auth/{mount}/config"),
        json!({ "jwt_validation_pubkeys": [signer.public_pem()], "bound_issuer": "https://issuer.test" }),
    )
    .await?;
    bed.write(
        &format!("auth/{mount}/role/app"),
        json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_subject": "app-1",
            "bound_audiences": ["vaultlet"],
            "token_policies": ["vaultlet-test"],
            // Short: vaultlet logs in again every few seconds.
            "token_ttl": "4s",
            "token_max_ttl": "4s",
            // The server judges `exp` strictly too.
            "expiration_leeway": -1,
        }),
    )
    .await?;
    bed.write("secret/data/t_jwt", json!({ "data": { "token": "jwt-served-5e1a" } })).await?;
    let claims = |jti: &str, exp: u64| json!({"iss": "https://issuer.test", "sub": "app-1", "aud": "vaultlet", "iat": now(), "nbf": now() - 5, "exp": exp, "jti": jti});
    let token_file = dir.join("token");
    // The first token expires soon.
    let first_exp = now() + 8;
    write_token(&token_file, &signer.sign(&claims("first", first_exp))?)?;
    let auth = format!("[auth.jwt]\nmount = \"{mount}\"\nrole = \"app\"\ntoken_file = \"{}\"\n", token_file.display());
    let cfg = config(&bed, &dir, &auth, "t_jwt");
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (st, v) = d.get("/v1/secrets/app").await?;
    ensure!(st == 200 && v["data"]["token"] == "jwt-served-5e1a", "secret served: {st} {v}");
    ensure!(ok_logins(&d).await? >= 1.0, "logged in");

    // Rewritten while vaultlet runs.
    write_token(&token_file, &signer.sign(&claims("second", now() + 600))?)?;
    // Once the first token has expired, a new login can only have used the
    // second one (vaultlet does not send an expired token, and the role
    // would refuse it).
    eventually(Duration::from_secs(30), "the first token's exp passed", || async {
        Ok((now() > first_exp).then_some(()))
    })
    .await?;
    let before = ok_logins(&d).await?;
    eventually(Duration::from_secs(60), "a login after the first token expired", || async {
        Ok((ok_logins(&d).await? > before).then_some(()))
    })
    .await?;
    ensure!(failed_logins(&d).await? == 0.0, "no login failed across the rewrite\n{}", d.log_text());
    d.stop().await?;

    // Started with an expired token: `vaultlet ready` says why, until a
    // valid token is written.
    write_token(&token_file, &signer.sign(&claims("expired", now() - 60))?)?;
    let d = Daemon::start(&dir, &cfg)?;
    let reason = eventually(Duration::from_secs(60), "ready reports the expired token", || async {
        let (code, err) = ready(&d).await?;
        Ok((code == Some(1) && err.contains("login failed") && err.contains("expired")).then_some(err))
    })
    .await?;
    ensure!(reason.contains(&token_file.display().to_string()), "the file is named: {reason}");
    ensure!(!reason.contains(&std::fs::read_to_string(&token_file)?), "the token is not shown: {reason}");
    ensure!(failed_logins(&d).await? >= 1.0, "the failed login is counted");
    write_token(&token_file, &signer.sign(&claims("renewed", now() + 600))?)?;
    eventually(Duration::from_secs(90), "ready once a valid token is written", || async {
        Ok((ready(&d).await?.0 == Some(0)).then_some(()))
    })
    .await?;
    ensure!(token_file.exists(), "the token file is never deleted");
    ensure!(!d.log_text().contains(&std::fs::read_to_string(&token_file)?), "the token is not logged");
    d.stop().await?;
    Ok(())
}

/// The service account the stand-in vouches for.
const SA_NAMESPACE: &str = "apps";
const SA_NAME: &str = "web";
const SA_UID: &str = "4c1e9a52-0b7d-4a8e-9f3c-2d6b8e1f7a10";

/// A TokenReview stand-in: `POST /apis/authentication.k8s.io/v1/tokenreviews`
/// answers `authenticated: true` with the service account's user info for
/// `good`, and `false` for any other token. Counts the reviews.
async fn token_review(listener: tokio::net::TcpListener, good: String, reviews: Arc<AtomicUsize>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let (good, reviews) = (good.clone(), reviews.clone());
        tokio::spawn(async move {
            let Ok(Some((head, body))) = read_request(&mut s).await else { return };
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let status = if !head.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews ") {
                None
            } else if token == good {
                Some(json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"),
                        "uid": SA_UID,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{SA_NAMESPACE}"), "system:authenticated"],
                    },
                    "audiences": review["spec"]["audiences"],
                }))
            } else {
                Some(json!({ "authenticated": false, "error": "invalid bearer token" }))
            };
            reviews.fetch_add(1, Ordering::SeqCst);
            let (code, body) = match status {
                Some(status) => (
                    "201 Created",
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": review["spec"], "status": status}),
                ),
                None => ("404 Not Found", json!({"kind": "Status", "code": 404})),
            };
            let body = body.to_string();
            let answer = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// One HTTP/1.1 request: its head and its body (by Content-Length).
async fn read_request(s: &mut tokio::net::TcpStream) -> Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, buf[end..end + len].to_vec())))
}

/// Kubernetes against OpenBao's real `kubernetes` method, whose TokenReview
/// goes to the stand-in: a token it rejects is reported by `vaultlet ready`;
/// the one it accepts logs in and the KV secret is served.
async fn kubernetes_login_is_reviewed_and_a_rejected_token_is_reported(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("k8s")?;
    let mount = format!("k8s-e2e-{}", std::process::id());
    // The cluster's service-account signing key (the method does not see it:
    // the review vouches for the token).
    let signer = Signer::new()?;
    let sa_token = |jti: &str| {
        let t = now();
        signer.sign(&json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"),
            "aud": ["vault"],
            "iat": t, "nbf": t, "exp": t + 3600, "jti": jti,
            "kubernetes.io": {
                "namespace": SA_NAMESPACE,
                "serviceaccount": { "name": SA_NAME, "uid": SA_UID },
                "pod": { "name": "web-5d8f7c9b4-x2k8q", "uid": "9b2f6c1e-3a4d-4e8f-b7a9-0c1d2e3f4a5b" },
            },
        }))
    };
    let good = sa_token("accepted")?;
    let reviews = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(token_review(listener, good.clone(), reviews.clone()));

    enable(&bed, &mount, "kubernetes").await?;
    // OpenBao wants a CA when it reads no in-cluster files; the stand-in
    // speaks plain HTTP, so any CA does: the bed's.
    let ca = bed.api(reqwest::Method::GET, "pki/cert/ca", None, None).await?;
    let ca = ca["data"]["certificate"].as_str().context("the bed's CA")?;
    bed.write(
        &format!("auth/{mount}/config"),
        json!({ "kubernetes_host": host, "kubernetes_ca_cert": format!("{ca}\n"), "disable_local_ca_jwt": true }),
    )
    .await?;
    bed.write(
        &format!("auth/{mount}/role/web"),
        json!({
            "bound_service_account_names": [SA_NAME],
            "bound_service_account_namespaces": [SA_NAMESPACE],
            "audience": "vault",
            "token_policies": ["vaultlet-test"],
            "token_ttl": "1h",
        }),
    )
    .await?;
    bed.write("secret/data/t_k8s", json!({ "data": { "token": "k8s-served-8d2c" } })).await?;

    // A token the review rejects (same shape, not the one it knows).
    let token_file = dir.join("token");
    write_token(&token_file, &sa_token("rejected")?)?;
    let auth =
        format!("[auth.kubernetes]\nmount = \"{mount}\"\nrole = \"web\"\ntoken_file = \"{}\"\n", token_file.display());
    let d = Daemon::start(&dir, &config(&bed, &dir, &auth, "t_k8s"))?;
    let reason = eventually(Duration::from_secs(60), "ready reports the rejected token", || async {
        let (code, err) = ready(&d).await?;
        Ok((code == Some(1) && err.contains("login failed") && err.contains("Kubernetes login")).then_some(err))
    })
    .await?;
    ensure!(reviews.load(Ordering::SeqCst) >= 1, "OpenBao asked the stand-in: {reason}");
    ensure!(!reason.contains(&std::fs::read_to_string(&token_file)?), "the token is not shown: {reason}");

    // The accepted token, written while vaultlet runs: the next login uses it.
    write_token(&token_file, &good)?;
    d.wait_ready(Duration::from_secs(90)).await.context("ready with the accepted token")?;
    let (st, v) = d.get("/v1/secrets/app").await?;
    ensure!(st == 200 && v["data"]["token"] == "k8s-served-8d2c", "secret served: {st} {v}");
    ensure!(ok_logins(&d).await? >= 1.0 && failed_logins(&d).await? >= 1.0, "one refused, then one login");
    ensure!(reviews.load(Ordering::SeqCst) >= 2, "the accepted token was reviewed too");
    ensure!(token_file.exists(), "the token file is never deleted");
    ensure!(!d.log_text().contains(&good), "the token is not logged");
    d.stop().await?;
    server.abort();
    Ok(())
}
