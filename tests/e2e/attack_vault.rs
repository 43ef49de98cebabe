//! What vaultlet's Vault token may do to Vault, against the real OpenBao:
//! the shipped policy reaches only the leases of the configured role.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

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
        t!(shipped_policy_cannot_renew_or_revoke_a_foreign_lease),
        t!(scoped_policy_still_renews_and_revokes_own_leases),
        t!(unscoped_lease_policy_from_before_keeps_working_with_a_warning),
        t!(replaced_token_is_revoked_once_no_lease_uses_it),
    ]
}

/// A request with `token`; returns the status and the body.
async fn call(bed: &Bed, token: &str, method: reqwest::Method, path: &str, body: Value) -> Result<(u16, Value)> {
    let res = reqwest::Client::new()
        .request(method, format!("{}/v1/{path}", bed.addr()))
        .header("X-Vault-Token", token)
        .json(&body)
        .send()
        .await?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    Ok((status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? }))
}

async fn approle_login(bed: &Bed, dir: &Path) -> Result<String> {
    let role_id = std::fs::read_to_string(dir.join("role_id"))?;
    let secret_id = std::fs::read_to_string(dir.join("secret_id"))?;
    let (st, v) = call(
        bed,
        "",
        reqwest::Method::POST,
        "auth/approle/login",
        json!({ "role_id": role_id.trim(), "secret_id": secret_id.trim() }),
    )
    .await?;
    ensure!(st == 200, "login: {st} {v}");
    Ok(v["auth"]["client_token"].as_str().context("client_token")?.to_owned())
}

/// Root's view of a lease: `Some(data)` while it exists.
async fn lookup(bed: &Bed, lease: &str) -> Result<Option<Value>> {
    let (st, v) =
        call(bed, bed.get("BAO_TOKEN"), reqwest::Method::PUT, "sys/leases/lookup", json!({ "lease_id": lease }))
            .await?;
    Ok((st == 200).then(|| v["data"].clone()))
}

/// The attack from the review: with a token holding only
/// policies/vaultlet.hcl, renew and revoke a lease root created under
/// another role, with the lease id in the body (the old form the policy
/// used to allow) and in the path. Every attempt must be refused and the
/// lease must still work; the token's own lease stays renewable/revocable.
async fn shipped_policy_cannot_renew_or_revoke_a_foreign_lease(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("foreign-lease")?;
    let dir_default = dir.join("with-default");
    std::fs::create_dir_all(&dir_default)?;
    bed.db_role("t_foreign", "10m", "1h").await?;
    // `vaultlet` is policies/vaultlet.hcl as the test bed loaded it. As
    // policies/README.md says, the role drops Vault's built-in "default"
    // policy, which lets every token renew any lease by id in the body.
    bed.approle("t_foreign_attacker", "vaultlet", "10m", "1h", &dir, false).await?;
    bed.write("auth/approle/role/t_foreign_attacker", json!({ "token_no_default_policy": true })).await?;
    let token = approle_login(&bed, &dir).await?;
    // With "default" still attached, revocation is refused all the same.
    bed.approle("t_foreign_attacker_default", "vaultlet", "10m", "1h", &dir_default, false).await?;
    let token_default = approle_login(&bed, &dir_default).await?;

    let foreign = bed.api(reqwest::Method::GET, "database/creds/t_foreign", None, None).await?;
    let foreign_id = foreign["lease_id"].as_str().context("foreign lease_id")?.to_owned();
    let (fuser, fpass) = (
        foreign["data"]["username"].as_str().unwrap_or_default(),
        foreign["data"]["password"].as_str().unwrap_or_default(),
    );

    let revokes = [
        ("sys/leases/revoke".to_owned(), json!({ "lease_id": foreign_id })),
        (format!("sys/leases/revoke/{foreign_id}"), json!({})),
        ("sys/leases/revoke-prefix/database/creds/t_foreign".to_owned(), json!({})),
    ];
    let renews = [
        ("sys/leases/renew".to_owned(), json!({ "lease_id": foreign_id, "increment": 60 })),
        (format!("sys/leases/renew/{foreign_id}"), json!({ "increment": 60 })),
    ];
    let attempts =
        revokes.iter().chain(renews.iter()).map(|a| (&token, a)).chain(revokes.iter().map(|a| (&token_default, a)));
    let mut refused = 0;
    for (t, (path, body)) in attempts {
        let (st, v) = call(&bed, t, reqwest::Method::PUT, path, body.clone()).await?;
        ensure!(st == 403, "PUT {path} with the shipped policy answered {st} {v}, not 403");
        refused += 1;
    }
    ensure!(lookup(&bed, &foreign_id).await?.is_some(), "the foreign lease is gone");
    bed.pg_login(fuser, fpass).await.context("the foreign credential must still log in")?;

    // The token's own lease, under database/creds/api: renew and revoke in path form.
    let (st, own) = call(&bed, &token, reqwest::Method::GET, "database/creds/api", json!({})).await?;
    ensure!(st == 200, "issue: {st} {own}");
    let own_id = own["lease_id"].as_str().context("own lease_id")?;
    let (st, v) =
        call(&bed, &token, reqwest::Method::PUT, &format!("sys/leases/renew/{own_id}"), json!({ "increment": 60 }))
            .await?;
    ensure!(st == 200, "renewing its own lease: {st} {v}");
    let (st, v) = call(&bed, &token, reqwest::Method::PUT, &format!("sys/leases/revoke/{own_id}"), json!({})).await?;
    ensure!(st == 204 || st == 200, "revoking its own lease: {st} {v}");
    ensure!(lookup(&bed, own_id).await?.is_none(), "its own lease survived revocation");
    println!("  {refused} of 8 attempts on a foreign lease refused (403); own lease renewed and revoked");
    Ok(())
}

/// vaultlet itself, with the shipped policy adapted to its role (as
/// policies/README.md says), renews its lease and revokes it at shutdown.
async fn scoped_policy_still_renews_and_revokes_own_leases(bed: Arc<Bed>) -> Result<()> {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/vaultlet.hcl"))?;
    let policy = shipped.replace("database/creds/api", "database/creds/t_scoped");
    ensure!(policy.contains("sys/leases/renew/database/creds/t_scoped/*"), "policy shape changed:\n{policy}");
    let log = renews_and_revokes_own_lease(&bed, "t_scoped", &policy, true).await?;
    ensure!(!log.contains("unscoped form"), "the scoped policy fell back to the body form:\n{log}");
    Ok(())
}

/// A policy written for earlier versions (plain `sys/leases/renew` and
/// `revoke`, lease id in the body) keeps working, with a warning to update it.
async fn unscoped_lease_policy_from_before_keeps_working_with_a_warning(bed: Arc<Bed>) -> Result<()> {
    let policy = r#"
path "database/creds/t_unscoped" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"#;
    let log = renews_and_revokes_own_lease(&bed, "t_unscoped", policy, false).await?;
    ensure!(log.contains("unscoped form"), "no warning about the unscoped policy:\n{log}");
    Ok(())
}

/// Runs vaultlet with `policy` on database role `role` (TTL 10 s): its lease
/// must be renewed, and revoked at shutdown. Returns the log.
async fn renews_and_revokes_own_lease(bed: &Bed, role: &str, policy: &str, no_default: bool) -> Result<String> {
    let dir = test_dir(role)?;
    bed.write(&format!("sys/policies/acl/{role}"), json!({ "policy": policy })).await?;
    bed.db_role(role, "10s", "5m").await?;
    bed.approle(role, role, "10m", "1h", &dir, false).await?;
    if no_default {
        bed.write(&format!("auth/approle/role/{role}"), json!({ "token_no_default_policy": true })).await?;
    }
    let d = Daemon::start(
        &dir,
        &format!(
            "revoke_on_shutdown = true\n{}",
            config(bed, &dir, &format!("[secret.db]\ndatabase = {{ role = \"{role}\" }}\n"))
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (user, pass, _) = d.creds("db").await?;
    let keys = bed
        .api(reqwest::Method::GET, &format!("sys/leases/lookup/database/creds/{role}?list=true"), None, None)
        .await?;
    let keys: Vec<String> = keys["data"]["keys"]
        .as_array()
        .context("lease keys")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    ensure!(keys.len() == 1, "leases: {keys:?}");
    let lease = format!("database/creds/{role}/{}", keys[0]);
    eventually(Duration::from_secs(60), "vaultlet renews its lease", || async {
        Ok(lookup(bed, &lease).await?.filter(|l| !l["last_renewal"].is_null()).map(drop))
    })
    .await
    .with_context(|| d.log_text())?;
    bed.pg_login(&user, &pass).await?;
    let log = d.log.clone();
    let st = d.stop().await?;
    let text = std::fs::read_to_string(log)?;
    ensure!(st.success(), "exit {st}");
    if lookup(bed, &lease).await?.is_some() {
        bail!("lease not revoked at shutdown:\n{text}");
    }
    ensure!(bed.pg_login(&user, &pass).await.is_err(), "credential still logs in after revocation");
    Ok(text)
}

/// Accessors of the live tokens of AppRole role `role`, with their expiry
/// (seconds since the epoch).
async fn role_tokens(bed: &Bed, role: &str) -> Result<Vec<(String, f64)>> {
    let list = bed.api(reqwest::Method::GET, "auth/token/accessors?list=true", None, None).await?;
    let mut out = Vec::new();
    for a in list["data"]["keys"].as_array().context("accessors")? {
        let a = a.as_str().context("accessor")?;
        let Ok(v) = bed.write("auth/token/lookup-accessor", json!({ "accessor": a })).await else { continue };
        if v["data"]["meta"]["role_name"] == role {
            let exp = v["data"]["expire_time"].as_str().unwrap_or_default();
            out.push((a.to_owned(), epoch(exp)));
        }
    }
    Ok(out)
}

/// `2026-12-01T19:50:00.123456789Z` → seconds since the epoch (UTC).
fn epoch(t: &str) -> f64 {
    let (date, time) = t.split_once('T').unwrap_or(("1970-01-01", "00:00:00Z"));
    let mut d = date.split('-').map(|x| x.parse::<i64>().unwrap_or(0));
    let (y, m, day) = (d.next().unwrap_or(1970), d.next().unwrap_or(1), d.next().unwrap_or(1));
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = time.trim_end_matches('Z').split(':').fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
    days as f64 * 86400.0 + secs
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Before: every re-login left the old token alive until its max TTL. Now
/// the replaced token is revoked as soon as no lease issued under it is
/// served or draining — before it would have expired — and the credential
/// served meanwhile keeps working.
async fn replaced_token_is_revoked_once_no_lease_uses_it(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("retire")?;
    bed.db_role("t_retire", "1h", "2h").await?;
    // The token's max TTL forces a re-login at ⅔ of 60 s; its leases are
    // replaced before it ends, the old one drains 1 s and is revoked, well
    // before the old token's end even on a loaded machine.
    bed.approle("t_retire", "vaultlet-test", "60s", "60s", &dir, false).await?;
    let d = Daemon::start(
        &dir,
        &config(
            &bed,
            &dir,
            "[secret.db]\ndatabase = { role = \"t_retire\" }\ndrain = \"1s\"\nrotate_before = \"20s\"\n",
        ),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let first = role_tokens(&bed, "t_retire").await?;
    ensure!(first.len() == 1, "tokens at start: {first:?}");
    let (old, old_expiry) = first[0].clone();
    // Gone by `t`: the server no longer knew the token when it answered a
    // lookup sent before `t` (an answer of some other error says nothing).
    let t = eventually(Duration::from_secs(120), "the replaced token is revoked", || async {
        let (st, _) = call(
            &bed,
            bed.get("BAO_TOKEN"),
            reqwest::Method::POST,
            "auth/token/lookup-accessor",
            json!({ "accessor": old }),
        )
        .await?;
        Ok((st == 400 || st == 403).then(now_epoch))
    })
    .await
    .with_context(|| d.log_text())?;
    let now = role_tokens(&bed, "t_retire").await?;
    ensure!(now.len() == 1 && now[0].0 != old, "a new token replaced it: {now:?}");
    ensure!(
        t < old_expiry - 0.5,
        "the old token only expired (gone {:.1} s after its expiry)\n{}",
        t - old_expiry,
        d.log_text()
    );
    let (user, pass, _) = d.creds("db").await?;
    bed.pg_login(&user, &pass).await.context("the served credential must outlive the old token")?;
    println!("  old token revoked {:.1} s before it would have expired", old_expiry - t);
    d.stop().await?;
    Ok(())
}
