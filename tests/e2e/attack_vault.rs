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
    let dir = test_dir("scoped-policy")?;
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/vaultlet.hcl"))?;
    let policy = shipped.replace("database/creds/api", "database/creds/t_scoped");
    ensure!(policy.contains("sys/leases/renew/database/creds/t_scoped/*"), "policy shape changed:\n{policy}");
    bed.write("sys/policies/acl/vaultlet-scoped", json!({ "policy": policy })).await?;
    bed.db_role("t_scoped", "4s", "1m").await?;
    bed.approle("t_scoped", "vaultlet-scoped", "10m", "1h", &dir, false).await?;
    bed.write("auth/approle/role/t_scoped", json!({ "token_no_default_policy": true })).await?;
    let d = Daemon::start(
        &dir,
        &format!(
            "revoke_on_shutdown = true\n{}",
            config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_scoped\" }\n")
        ),
    )?;
    d.wait_ready(Duration::from_secs(30)).await?;
    let (user, pass, _) = d.creds("db").await?;
    let keys = bed.api(reqwest::Method::GET, "sys/leases/lookup/database/creds/t_scoped?list=true", None, None).await?;
    let keys: Vec<String> = keys["data"]["keys"]
        .as_array()
        .context("lease keys")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    ensure!(keys.len() == 1, "leases: {keys:?}");
    let lease = format!("database/creds/t_scoped/{}", keys[0]);
    eventually(Duration::from_secs(15), "vaultlet renews its lease", || async {
        Ok(lookup(&bed, &lease).await?.filter(|l| !l["last_renewal"].is_null()).map(drop))
    })
    .await
    .with_context(|| d.log_text())?;
    bed.pg_login(&user, &pass).await?;
    let log = d.log.clone();
    let st = d.stop().await?;
    ensure!(st.success(), "exit {st}");
    if lookup(&bed, &lease).await?.is_some() {
        bail!("lease not revoked at shutdown:\n{}", std::fs::read_to_string(log)?);
    }
    ensure!(bed.pg_login(&user, &pass).await.is_err(), "credential still logs in after revocation");
    Ok(())
}
