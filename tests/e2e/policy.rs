//! The policy `vaultlet policy` writes, tried on the real server: a token
//! holding only that policy (no `default`) does every step of a full run,
//! and a token missing any one capability of it fails some step.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::time::Instant;

use crate::TestFn;
use crate::bed::{Bed, Daemon, bin, test_dir};

macro_rules! t {
    ($f:ident) => {
        (stringify!($f), (|b| Box::pin($f(b))) as TestFn)
    };
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        t!(generated_policy_is_enough_for_every_step_and_each_capability_in_it_is_needed),
        t!(policy_check_names_each_capability_the_token_lacks),
    ]
}

/// Every operation a full run performs, by its metric label.
const STEPS: [&str; 9] = [
    "login",
    "db_creds",
    "db_role",
    "lease_renew",
    "lease_lookup",
    "lease_revoke",
    "renew_self",
    "kv_read",
    "pki_issue",
];

/// One scenario's configuration: a database secret (lease TTL 6 s, so it is
/// renewed; looked up every second; max TTL 14 s, so it is replaced at 6 s
/// and the old lease revoked a second later), KV v2 and KV v1 secrets (the v1 one
/// re-read every second), a certificate, and revocation of everything at
/// shutdown. `mount` is an AppRole mount of the scenario's own, so the
/// tokens it leaves behind can be listed.
fn scenario_config(bed: &Bed, dir: &Path, mount: &str, role: &str) -> String {
    format!(
        r#"revoke_on_shutdown = true

[vault]
address = "{addr}"
request_timeout = "5s"

[auth.approle]
mount = "{mount}"
role_id_file = "{dir}/role_id"
secret_id_file = "{dir}/secret_id"

[socket]
path = "{dir}/vaultlet.sock"

[secret.db]
database = {{ mount = "database", role = "{role}" }}
verify_every = "1s"
rotate_before = "8s"
drain = "1s"

[secret.app]
kv = {{ mount = "secret", path = "api" }}

[secret.legacy]
kv = {{ mount = "kv", path = "api", version = 1 }}
refresh = "1s"

[secret.tls]
pki = {{ role = "internal", common_name = "localhost", ttl = "1h" }}
"#,
        addr = bed.addr(),
        dir = dir.display()
    )
}

/// The `path` stanzas of an HCL policy as written by `vaultlet policy`.
fn stanzas(hcl: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in hcl.lines() {
        if line.starts_with("path ") {
            cur = Some(String::new());
        }
        if let Some(s) = &mut cur {
            s.push_str(line);
            s.push('\n');
            if line == "}" {
                out.push(cur.take().unwrap_or_default());
            }
        }
    }
    out
}

/// `hcl` with one capability taken out: `(policy, what was taken)` for
/// each capability of each stanza (a stanza left with none is dropped).
fn mutants(hcl: &str) -> Vec<(String, String)> {
    let all = stanzas(hcl);
    let mut out = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let path = s.lines().next().unwrap_or_default().trim_end_matches(" {").to_owned();
        let caps_line = s.lines().find(|l| l.trim_start().starts_with("capabilities = ")).unwrap_or_default();
        let caps: Vec<&str> = caps_line
            .split_once('[')
            .map(|(_, r)| r.trim_end_matches(']'))
            .unwrap_or_default()
            .split(", ")
            .filter(|c| !c.is_empty())
            .collect();
        for c in &caps {
            let rest: Vec<&str> = caps.iter().copied().filter(|x| x != c).collect();
            let replaced = if rest.is_empty() {
                String::new()
            } else {
                s.replace(caps_line, &format!("  capabilities = [{}]", rest.join(", ")))
            };
            let mut policy = String::new();
            for (j, other) in all.iter().enumerate() {
                policy.push_str(if i == j { &replaced } else { other });
            }
            out.push((policy, format!("{c} on {path}")));
        }
    }
    out
}

/// What went wrong in one run; empty when every step worked.
async fn run_under(bed: &Bed, label: &str, hcl: &str) -> Result<Vec<String>> {
    let dir = test_dir(&format!("policy-{label}"))?;
    let (mount, role, policy) = (format!("ar-{label}"), format!("t_pol_{label}"), format!("pol-{label}"));
    bed.write(&format!("sys/auth/{mount}"), json!({ "type": "approle" })).await?;
    bed.db_role(&role, "6s", "14s").await?;
    bed.write(&format!("sys/policies/acl/{policy}"), json!({ "policy": hcl })).await?;
    bed.write(
        &format!("auth/{mount}/role/{role}"),
        json!({
            "token_policies": policy,
            "token_no_default_policy": true,
            "token_ttl": "4s",
            "token_max_ttl": "1h",
        }),
    )
    .await?;
    let rid = bed.api(reqwest::Method::GET, &format!("auth/{mount}/role/{role}/role-id"), None, None).await?;
    std::fs::write(dir.join("role_id"), rid["data"]["role_id"].as_str().context("role_id")?)?;
    let sid = bed.write(&format!("auth/{mount}/role/{role}/secret-id"), json!({})).await?;
    std::fs::write(dir.join("secret_id"), sid["data"]["secret_id"].as_str().context("secret_id")?)?;

    let mut d = Daemon::start(&dir, &scenario_config(bed, &dir, &mount, &role))?;
    let mut failed = Vec::new();
    // Waits until every step has worked at least once, or one has failed.
    let errors = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("vaultlet_vault_requests_total{") && l.contains("result=\"error\""))
            .filter(|l| !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect()
    };
    let ok = |text: &str, op: &str| {
        text.lines().any(|l| {
            l.starts_with(&format!("vaultlet_vault_requests_total{{operation=\"{op}\",result=\"ok\"}}"))
                && !l.ends_with(" 0")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reported = false;
    let mut serial = None;
    loop {
        let text = d.metrics_text().await.unwrap_or_default();
        let errs = errors(&text);
        if !errs.is_empty() {
            failed.extend(errs);
            break;
        }
        if serial.is_none()
            && let Ok((200, v)) = d.get("/v1/secrets/tls").await
        {
            serial = v["data"]["serial_number"].as_str().map(str::to_owned);
        }
        // The app reports a refused login: a lookup of the lease follows.
        if !reported && ok(&text, "lease_lookup") {
            let (_, _, version) = d.creds("db").await?;
            let (status, body) = d
                .request(&format!(
                    "POST /v1/secrets/db/rejected?version={version} HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
                ))
                .await?;
            ensure!(status < 300, "POST …/rejected: {status} {body}");
            reported = true;
        }
        let missing: Vec<&str> = STEPS.iter().copied().filter(|op| !ok(&text, op)).collect();
        if missing.is_empty() && serial.is_some() && reported {
            break;
        }
        if Instant::now() > deadline {
            failed.push(format!("steps never done: {missing:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if failed.is_empty() {
        // The served credential logs in. It is replaced every ~6 s and the
        // old one revoked a second later: a login that fails while the
        // version moved on is tried again with the new one.
        let mut attempts = 0;
        loop {
            let (user, pass, version) = d.creds("db").await?;
            match bed.pg_login(&user, &pass).await {
                Ok(()) => break,
                Err(e) => {
                    attempts += 1;
                    let (_, _, now) = d.creds("db").await?;
                    ensure!(
                        now != version && attempts < 5,
                        "the credential of version {version} does not log in: {e:#}"
                    );
                }
            }
        }
        // The KV v1 grant is taken away: the 403 that follows is checked
        // with lookup-self, which finds the token alive (no new login).
        let without_kv: String = stanzas(hcl).into_iter().filter(|s| !s.starts_with("path \"kv/api\"")).collect();
        bed.write(&format!("sys/policies/acl/{policy}"), json!({ "policy": without_kv })).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = d.metrics_text().await.unwrap_or_default();
            let other: Vec<String> =
                errors(&text).into_iter().filter(|l| !l.contains("operation=\"kv_read\"")).collect();
            if !other.is_empty() {
                failed.extend(other);
                break;
            }
            if ok(&text, "lookup_self") {
                let logins = d.counter("vaultlet_logins_total{result=\"ok\"}").await?;
                if logins != 1.0 {
                    failed.push(format!("{logins} logins after a 403 on one secret"));
                }
                break;
            }
            if Instant::now() > deadline {
                failed.push("no lookup-self after the 403 on kv/api".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Shutdown revokes the lease, the certificate and the token.
    d.signal(rustix::process::Signal::TERM)?;
    let status = tokio::time::timeout(Duration::from_secs(30), d.wait()).await.context("exit after SIGTERM")??;
    ensure!(status.success() || !failed.is_empty(), "exit {status}\n{}", d.log_text());
    let list = |prefix: String| async move {
        let v =
            bed.api(reqwest::Method::from_bytes(b"LIST")?, &format!("sys/leases/lookup/{prefix}"), None, None).await;
        Ok::<usize, anyhow::Error>(match v {
            Ok(v) => v["data"]["keys"].as_array().map_or(0, Vec::len),
            // 404: no lease under the prefix.
            Err(e) if e.to_string().contains("404") => 0,
            Err(e) => return Err(e),
        })
    };
    let leases = list(format!("database/creds/{role}/")).await?;
    if leases > 0 {
        failed.push(format!("{leases} database leases left after shutdown"));
    }
    let tokens = list(format!("auth/{mount}/login/")).await?;
    if tokens > 0 {
        failed.push(format!("{tokens} tokens left after shutdown"));
    }
    match serial {
        Some(sn) => {
            let v = bed.api(reqwest::Method::GET, &format!("pki/cert/{sn}"), None, None).await?;
            if v["data"]["revocation_time"].as_i64().unwrap_or(0) == 0 {
                failed.push("the certificate is not revoked after shutdown".into());
            }
        }
        None if failed.is_empty() => failed.push("no certificate was served".into()),
        None => {}
    }
    if !failed.is_empty() {
        failed.push(format!("--- log ---\n{}", d.log_text().lines().rev().take(15).collect::<Vec<_>>().join("\n")));
    }
    Ok(failed)
}

/// The generated policy runs everything (login, issue, renew, verify_every,
/// `…/rejected`, a replacement and the revocation of the lease it replaced, PKI, a 403 checked with lookup-self, revocation of every
/// lease, certificate and token at shutdown) with `token_no_default_policy`;
/// each of its capabilities taken out alone makes some step fail. A grant
/// the generator adds without need, or one it forgets, fails this test.
async fn generated_policy_is_enough_for_every_step_and_each_capability_in_it_is_needed(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("policy-gen")?;
    // The configuration the policy is generated from is the scenario's own,
    // for a mount and role name every run shares the shape of.
    std::fs::write(dir.join("role_id"), "x")?;
    let cfg = dir.join("vaultlet.toml");
    let hcl_for = |label: &str| -> Result<String> {
        std::fs::write(&cfg, scenario_config(&bed, &dir, &format!("ar-{label}"), &format!("t_pol_{label}")))?;
        let out = std::process::Command::new(bin()).args(["policy", "-c"]).arg(&cfg).output()?;
        ensure!(out.status.success(), "vaultlet policy: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let full = hcl_for("full")?;
    ensure!(!full.contains("auth/ar-full"), "a login needs no grant:\n{full}");
    let mut runs = vec![("full".to_string(), full.clone(), String::new())];
    for (i, (_, taken)) in mutants(&full).into_iter().enumerate() {
        let label = format!("m{i}");
        // Same shape, this run's role in the paths.
        let hcl = hcl_for(&label)?;
        let (policy, taken_here) = mutants(&hcl).swap_remove(i);
        ensure!(taken_here.replace(&label, "full") == taken, "mutant {i}: {taken_here} vs {taken}");
        runs.push((label, policy, taken));
    }
    ensure!(runs.len() >= 12, "only {} capabilities in the policy:\n{full}", runs.len() - 1);
    let results =
        futures_util::future::join_all(runs.iter().map(|(label, policy, _)| run_under(&bed, label, policy))).await;
    let mut report = Vec::new();
    for ((label, _, taken), r) in runs.iter().zip(results) {
        let failed = r.with_context(|| format!("run {label}"))?;
        if label == "full" {
            if !failed.is_empty() {
                bail!("under the generated policy alone, steps failed:\n{}\n--- policy ---\n{full}", failed.join("\n"));
            }
        } else if failed.is_empty() {
            report.push(format!("without {taken} every step still worked"));
        } else {
            println!("  policy: without {taken}: {}", failed[0]);
        }
    }
    ensure!(report.is_empty(), "the policy grants more than needed:\n{}", report.join("\n"));
    Ok(())
}

/// `vaultlet policy --check` asks the server what the token in VAULT_TOKEN
/// may do: a token holding the generated policy passes (exit 0), one whose
/// policy lacks the KV v1 stanza is told exactly that (exit 1), and without
/// a token it is a usage error (exit 64) that prints no policy.
async fn policy_check_names_each_capability_the_token_lacks(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("policy-check")?;
    std::fs::write(dir.join("role_id"), "x")?;
    let cfg = dir.join("vaultlet.toml");
    std::fs::write(&cfg, scenario_config(&bed, &dir, "approle", "t_pol_check"))?;
    let policy = |args: &[&str], token: Option<&str>| {
        let mut c = std::process::Command::new(bin());
        c.arg("policy").arg("-c").arg(&cfg).args(args).env_remove("VAULT_TOKEN").env_remove("BAO_TOKEN");
        if let Some(t) = token {
            c.env("VAULT_TOKEN", t);
        }
        c.output()
    };
    let full = String::from_utf8(policy(&[], None)?.stdout)?;
    let without_kv: String = stanzas(&full).into_iter().filter(|s| !s.starts_with("path \"kv/api\"")).collect();
    // The token being checked asks about itself: it needs the one grant
    // `default` would give, and nothing else beyond the policy under test.
    let ask = "path \"sys/capabilities-self\" { capabilities = [\"update\"] }";
    bed.write("sys/policies/acl/pol-check-ask", json!({ "policy": ask })).await?;
    let mut tokens = Vec::new();
    for (name, hcl) in [("pol-check-full", &full), ("pol-check-part", &without_kv)] {
        bed.write(&format!("sys/policies/acl/{name}"), json!({ "policy": hcl })).await?;
        let t = bed
            .write(
                "auth/token/create",
                json!({ "policies": [name, "pol-check-ask"], "no_default_policy": true, "ttl": "10m" }),
            )
            .await?;
        tokens.push(t["auth"]["client_token"].as_str().context("client_token")?.to_owned());
    }
    let ok = policy(&["--check"], Some(&tokens[0]))?;
    ensure!(ok.status.code() == Some(0), "full policy: {ok:?}");
    let part = policy(&["--check"], Some(&tokens[1]))?;
    let out = String::from_utf8(part.stdout)?;
    ensure!(part.status.code() == Some(1), "policy without kv/api: {:?} {out}", part.status);
    ensure!(out == "missing: \"read\" on \"kv/api\"\n", "what --check names: {out:?}");
    let none = policy(&["--check"], None)?;
    ensure!(none.status.code() == Some(64) && none.stdout.is_empty(), "no token: {none:?}");
    let text = String::from_utf8_lossy(&none.stderr);
    ensure!(text.contains("VAULT_TOKEN"), "no token: {text}");
    Ok(())
}
