//! Credentials revoked behind vaultlet's back (an operator's `lease revoke`
//! of one lease, or of every AppRole token with the leases they created)
//! are noticed and replaced in seconds: within `verify_every` + 2 s on their
//! own, within 2 s of the app reporting the refused credential. The tests
//! print how long it took and require it within 30 s: the leases last an
//! hour, so nothing but the check under test notices that soon, and a
//! loaded machine cannot fail them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::TestFn;
use crate::bed::{Bed, Daemon, eventually, test_dir};
use crate::tests::config;

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        t!(revoked_lease_is_replaced_within_verify_every_or_at_once_when_reported),
        t!(revoked_token_credentials_are_replaced_within_verify_every_or_at_once_when_reported),
        t!(lease_lookup_grant_reaches_only_database_leases),
        t!(caller_who_may_not_read_a_secret_cannot_report_it),
        t!(kv_secret_deleted_or_taken_away_in_vault_is_not_served_on),
    ]
}

/// `POST /v1/secrets/{name}/rejected?version=N` on the daemon's socket.
async fn report(d: &Daemon, name: &str, version: u64) -> Result<(u16, Value)> {
    let (st, body) = d
        .request(&format!("POST /v1/secrets/{name}/rejected?version={version} HTTP/1.0\r\nContent-Length: 0\r\n\r\n"))
        .await?;
    Ok((st, serde_json::from_str(&body).with_context(|| format!("report answer: {body}"))?))
}

/// The lease ids Vault holds for a database role (root token).
pub async fn leases_of(bed: &Bed, role: &str) -> Result<Vec<String>> {
    let list = reqwest::Method::from_bytes(b"LIST")?;
    let v = bed.api(list, &format!("sys/leases/lookup/database/creds/{role}/"), None, None).await?;
    Ok(v["data"]["keys"]
        .as_array()
        .context("no lease keys")?
        .iter()
        .filter_map(|k| k.as_str().map(|k| format!("database/creds/{role}/{k}")))
        .collect())
}

/// Revokes the lease of the credential `user` logs in with: the one lease of
/// `role` whose revocation makes that login fail.
pub async fn revoke_lease_of(bed: &Bed, role: &str, user: &str, pass: &str) -> Result<()> {
    let ids = leases_of(bed, role).await?;
    ensure!(!ids.is_empty(), "no lease for role {role}");
    // Only the served credential's lease is live at first (no rotation yet).
    ensure!(ids.len() == 1, "expected one lease for {role}, found {ids:?}");
    bed.write("sys/leases/revoke", json!({ "lease_id": ids[0] })).await?;
    eventually(Duration::from_secs(30), "the revoked credential stops logging in", || async {
        Ok(bed.pg_login(user, pass).await.is_err().then_some(()))
    })
    .await
    .with_context(|| format!("user {user}"))
}

/// Polls the socket until it serves a credential other than `old_user` that
/// logs in; returns how long that took from `since`, and its version.
async fn working_replacement(
    bed: &Bed,
    d: &Daemon,
    name: &str,
    old_user: &str,
    since: Instant,
    within: Duration,
) -> Result<(Duration, u64)> {
    eventually(within, "a working replacement credential", || async {
        let Ok((u, p, v)) = d.creds(name).await else { return Ok(None) };
        if u == old_user || bed.pg_login(&u, &p).await.is_err() {
            return Ok(None);
        }
        Ok(Some((since.elapsed(), v)))
    })
    .await
    .with_context(|| d.log_text())
}

/// Two secrets, each on its own role: `fast` verified every 2 s, `slow` every
/// hour (so only a report can make it notice early). An operator revokes each
/// one's lease by id; `fast` is replaced within 2 s + 2 s without any report,
/// `slow` within 2 s of the report, and the report's answer names the new
/// version. A credential that still checks out is not replaced, and a report
/// of an older version answers with the current one at once.
pub async fn revoked_lease_is_replaced_within_verify_every_or_at_once_when_reported(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("revoke-lease")?;
    bed.db_role("t_rl_fast", "1h", "2h").await?;
    bed.db_role("t_rl_slow", "1h", "2h").await?;
    bed.approle("t_rl", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(
        &dir,
        &config(
            &bed,
            &dir,
            "[secret.fast]\ndatabase = { role = \"t_rl_fast\" }\nverify_every = \"2s\"\n\
             [secret.slow]\ndatabase = { role = \"t_rl_slow\" }\nverify_every = \"1h\"\n",
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;

    // A credential that still checks out is not replaced.
    let (slow_user, slow_pass, slow_v) = d.creds("slow").await?;
    let (st, a) = report(&d, "slow", slow_v).await?;
    let looked_up = Instant::now();
    ensure!(st == 200 && a["replaced"] == json!(false) && a["version"] == json!(slow_v), "valid credential: {st} {a}");
    ensure!(d.creds("slow").await?.0 == slow_user, "a valid credential must not be replaced on a report");

    // Without a report: noticed by the verify cadence.
    let (fast_user, fast_pass, _) = d.creds("fast").await?;
    revoke_lease_of(&bed, "t_rl_fast", &fast_user, &fast_pass).await?;
    let revoked = Instant::now();
    let (took, _) = working_replacement(&bed, &d, "fast", &fast_user, revoked, Duration::from_secs(30)).await?;
    println!("  single lease revoked: working credential after {:.2} s without a report", took.as_secs_f64());

    // With a report: the hourly cadence would not notice for an hour.
    revoke_lease_of(&bed, "t_rl_slow", &slow_user, &slow_pass).await?;
    ensure!(d.creds("slow").await?.0 == slow_user, "the slow secret has not noticed on its own yet");
    // A report within a second of the last lookup is answered from it
    // (rejected::CHECK_INTERVAL): let that second pass.
    tokio::time::sleep_until(looked_up + Duration::from_millis(1500)).await;
    let reported = Instant::now();
    let (st, a) = report(&d, "slow", slow_v).await?;
    let answered = reported.elapsed();
    ensure!(st == 200 && a["replaced"] == json!(true), "report of a revoked credential: {st} {a}");
    let new_v = a["version"].as_u64().context("version")?;
    ensure!(new_v > slow_v, "the answer names the new version: {a}");
    let (u, p, v) = d.creds("slow").await?;
    ensure!(v == new_v && u != slow_user, "the answered version is the one served");
    bed.pg_login(&u, &p).await.context("the replacement logs in")?;
    println!("  single lease revoked: report answered with a working v{new_v} after {:.2} s", answered.as_secs_f64());

    // An older version is answered at once with the current one.
    let (st, a) = report(&d, "slow", slow_v).await?;
    ensure!(st == 200 && a["version"] == json!(new_v) && a["replaced"] == json!(true), "older version: {st} {a}");
    // Bad input is a 4xx, never a crash.
    let (st, _) = report(&d, "nope", 1).await?;
    ensure!(st == 403, "unknown secret, answered like one the caller may not read: {st}");
    let (st, body) =
        d.request("POST /v1/secrets/slow/rejected?version=x HTTP/1.0\r\nContent-Length: 0\r\n\r\n").await?;
    ensure!(st == 400, "bad version: {st} {body}");
    let (st, body) = d.request("POST /v1/secrets/slow/rejected HTTP/1.0\r\nContent-Length: 0\r\n\r\n").await?;
    ensure!(st == 400, "no version: {st} {body}");
    ensure!(d.get("/v1/health").await?.0 == 200, "still up");
    d.stop().await?;
    Ok(())
}

/// On a bed of its own (it revokes every AppRole token in the server, as an
/// operator would during an incident: `lease revoke -prefix
/// auth/approle/login`), first with `verify_every = "2s"` and no report,
/// then with an hourly cadence and the app's report: both times a working
/// credential is served within the bound, without waiting for the next
/// renewal or the slow backoff.
pub async fn revoked_token_credentials_are_replaced_within_verify_every_or_at_once_when_reported(
    _shared: Arc<Bed>,
) -> Result<()> {
    let bed = Bed::private("revoke-token", &[]).await?;
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": crate::tests::TEST_POLICY })).await?;
    let revoke_all_logins = || async {
        bed.api(reqwest::Method::PUT, "sys/leases/revoke-prefix/auth/approle/login", Some(json!({})), None).await
    };

    for (label, verify_every, by_report) in [("cadence", "2s", false), ("report", "1h", true)] {
        let dir = test_dir(&format!("revoke-token-{label}"))?;
        let role = format!("t_rt_{label}");
        bed.db_role(&role, "1h", "2h").await?;
        bed.approle(&role, "vaultlet-test", "1h", "4h", &dir, false).await?;
        let d = Daemon::start(
            &dir,
            &config(
                &bed,
                &dir,
                &format!("[secret.db]\ndatabase = {{ role = \"{role}\" }}\nverify_every = \"{verify_every}\"\n"),
            ),
        )?;
        d.wait_ready(Duration::from_secs(60)).await?;
        let (user, pass, version) = d.creds("db").await?;
        bed.pg_login(&user, &pass).await?;
        revoke_all_logins().await?;
        let revoked = Instant::now();
        eventually(Duration::from_secs(30), "the token's credential dies with it", || async {
            Ok(bed.pg_login(&user, &pass).await.is_err().then_some(()))
        })
        .await?;
        let took = if by_report {
            ensure!(d.creds("db").await?.0 == user, "an hourly cadence has not noticed yet");
            let reported = Instant::now();
            let (st, a) = report(&d, "db", version).await?;
            let answered = reported.elapsed();
            ensure!(
                st == 200 && a["replaced"] == json!(true),
                "report after token revocation: {st} {a}\n{}",
                d.log_text()
            );
            let (u, p, v) = d.creds("db").await?;
            ensure!(Some(v) == a["version"].as_u64() && u != user, "the answered version is served: {a}");
            bed.pg_login(&u, &p).await.context("the replacement logs in")?;
            answered
        } else {
            let (took, _) = working_replacement(&bed, &d, "db", &user, revoked, Duration::from_secs(30)).await?;
            took
        };
        let log = d.log_text();
        let logins = d.counter("vaultlet_logins_total{result=\"ok\"}").await?;
        ensure!(logins >= 2.0, "no new login after the token was revoked ({logins} logins):\n{log}");
        let issued = d.counter("vaultlet_credentials_issued_total{secret=\"db\"}").await?;
        ensure!(issued >= 2.0, "the credential was replaced ({issued} issued):\n{log}");
        println!("  token revoked ({label}): working credential after {:.2} s", took.as_secs_f64());
        d.stop().await?;
    }
    Ok(())
}

/// `sys/leases/lookup` takes the lease id in the body, so the grant is scoped
/// with `allowed_parameters` (the form policies/vaultlet.hcl ships, here as in
/// the test policy): a token holding it looks up a database lease, and is
/// refused a lookup of any other lease (here a login token's lease).
pub async fn lease_lookup_grant_reaches_only_database_leases(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("lookup-scope")?;
    bed.db_role("t_ls", "60s", "10m").await?;
    bed.approle("t_ls", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(&dir, &config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_ls\" }\n"))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let db_lease = leases_of(&bed, "t_ls").await?.into_iter().next().context("no database lease")?;
    let list = reqwest::Method::from_bytes(b"LIST")?;
    let logins = bed.api(list, "sys/leases/lookup/auth/approle/login/", None, None).await?;
    let login_lease = format!(
        "auth/approle/login/{}",
        logins["data"]["keys"].as_array().and_then(|k| k.first()).and_then(Value::as_str).context("no login lease")?
    );
    let token = bed
        .write("auth/token/create", json!({ "policies": ["vaultlet-test"], "no_default_policy": true, "ttl": "5m" }))
        .await?;
    let token = token["auth"]["client_token"].as_str().context("client_token")?.to_owned();
    let http = reqwest::Client::new();
    let addr = bed.addr().to_owned();
    let lookup_as = |token: String, id: String| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            let res = http
                .put(format!("{addr}/v1/sys/leases/lookup"))
                .header("X-Vault-Token", token)
                .json(&json!({ "lease_id": id }))
                .send()
                .await?;
            Ok::<u16, anyhow::Error>(res.status().as_u16())
        }
    };
    let lookup = |id: String| lookup_as(token.clone(), id);
    let ok = lookup(db_lease.clone()).await?;
    ensure!(ok == 200, "lookup of a database lease with the grant: {ok}");
    let refused = lookup(login_lease.clone()).await?;
    ensure!(refused == 403, "lookup of {login_lease} must be refused by the scoped grant, got {refused}");
    let refused = lookup(format!("{db_lease}/../../../../auth/approle/login/x")).await?;
    ensure!(refused == 403 || refused == 400, "a dotted path is not a way around the scope: {refused}");

    // The shipped policies/vaultlet.hcl (loaded by the bed as `vaultlet`,
    // role `api`): the same scope, on its own role's lease.
    let api_lease = bed.api(reqwest::Method::GET, "database/creds/api", None, None).await?;
    let api_lease = api_lease["lease_id"].as_str().context("lease_id")?.to_owned();
    let shipped = bed
        .write("auth/token/create", json!({ "policies": ["vaultlet"], "no_default_policy": true, "ttl": "5m" }))
        .await?;
    let shipped = shipped["auth"]["client_token"].as_str().context("client_token")?.to_owned();
    let ok = lookup_as(shipped.clone(), api_lease.clone()).await?;
    ensure!(ok == 200, "shipped policy: lookup of its own role's lease: {ok}");
    for other in [db_lease.clone(), login_lease.clone()] {
        let refused = lookup_as(shipped.clone(), other.clone()).await?;
        ensure!(refused == 403, "shipped policy: lookup of {other} must be refused, got {refused}");
    }
    bed.write("sys/leases/revoke", json!({ "lease_id": api_lease })).await?;
    d.stop().await?;
    Ok(())
}

/// The report is a lever on Vault (a lookup, maybe an issue): a caller that
/// may connect but not read `db` gets 403 and makes vaultlet do nothing.
pub async fn caller_who_may_not_read_a_secret_cannot_report_it(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("report-acl")?;
    bed.db_role("t_racl", "60s", "10m").await?;
    bed.approle("t_racl", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(
        &bed,
        &dir,
        "[secret.db]\ndatabase = { role = \"t_racl\" }\nallow = [{ uid = 0 }]\n\
         [secret.open]\nkv = { path = \"api\" }\nallow = [{ uid = 65534 }, { uid = 0 }]\n",
    )
    .replace("[socket]\n", "[socket]\nmode = \"0660\"\n");
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, _, version) = d.creds("db").await?;
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups", "curl", "-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", "POST", "--unix-socket"])
        .arg(&d.socket)
        .arg(format!("http://vaultlet/v1/secrets/db/rejected?version={version}"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "curl as nobody: {out:?}");
    ensure!(text.trim_end().ends_with("403"), "nobody may not report `db`: {text}");
    // The same caller may read `open`, so it did reach the socket.
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--unix-socket")
        .arg(&d.socket)
        .arg("http://vaultlet/v1/secrets/open")
        .output()
        .await?;
    ensure!(out.stdout == b"200", "nobody reads `open`: {out:?}");
    let log = d.log_text();
    ensure!(
        !log.contains("app reported a rejected credential"),
        "a refused report must not reach the lease task:\n{log}"
    );
    ensure!(d.creds("db").await?.0 == user, "nothing replaced");
    d.stop().await?;
    Ok(())
}

/// "Errors never revoke" is for outages. A KV secret deleted in Vault (404),
/// or one the live token may no longer read (403), is the operator saying
/// something: the value is withdrawn, without a new login, and served again
/// once it is back.
async fn kv_secret_deleted_or_taken_away_in_vault_is_not_served_on(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("kvgone")?;
    let policy = |readable: bool| {
        let rule = if readable { r#"path "secret/data/t_kvgone" { capabilities = ["read"] }"# } else { "" };
        json!({ "policy": format!("path \"auth/token/lookup-self\" {{ capabilities = [\"read\"] }}\n{rule}\n") })
    };
    bed.write("sys/policies/acl/t_kvgone", policy(true)).await?;
    bed.approle("t_kvgone", "t_kvgone", "1h", "4h", &dir, false).await?;
    bed.write("secret/data/t_kvgone", json!({ "data": { "token": "first-value" } })).await?;
    let d = Daemon::start(&dir, &config(&bed, &dir, "[secret.app]\nkv = { path = \"t_kvgone\" }\nrefresh = \"1s\"\n"))?;
    d.wait_ready(Duration::from_secs(30)).await?;
    let served = |want: u16| {
        let d = &d;
        move || async move {
            let (st, v) = d.get("/v1/secrets/app").await?;
            Ok((st == want).then_some(v))
        }
    };

    // Deleted (every version, metadata too): withdrawn.
    bed.api(reqwest::Method::DELETE, "secret/metadata/t_kvgone", None, None).await?;
    let v = eventually(Duration::from_secs(30), "deleted secret withdrawn (503)", served(503)).await?;
    ensure!(v.to_string().contains("deleted in vault"), "the reason says why: {v}");
    // Put back: served again.
    bed.write("secret/data/t_kvgone", json!({ "data": { "token": "second-value" } })).await?;
    let v = eventually(Duration::from_secs(90), "put-back secret served again", served(200)).await?;
    ensure!(v["data"]["token"] == "second-value", "the new value is served");

    // Taken away from a token that still lives: withdrawn, no new login.
    bed.write("sys/policies/acl/t_kvgone", policy(false)).await?;
    let v = eventually(Duration::from_secs(30), "secret no longer readable withdrawn (503)", served(503)).await?;
    ensure!(v.to_string().contains("not readable any more"), "the reason says why: {v}");
    // Given back: served again.
    bed.write("sys/policies/acl/t_kvgone", policy(true)).await?;
    eventually(Duration::from_secs(90), "readable secret served again", served(200)).await?;
    let logins = d.counter("vaultlet_logins_total{result=\"ok\"}").await?;
    ensure!(logins == 1.0, "a live token is kept: {logins} logins");
    d.stop().await?;
    Ok(())
}
