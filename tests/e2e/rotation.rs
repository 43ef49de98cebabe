//! Rotation, token death, outages and request economy, against the real
//! servers. Tests that break the server get a bed of their own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::bed::{Bed, Daemon, Prober, eventually, test_dir};
use crate::tests::config;

/// TTL 3 s, max 10 s: for at least 10 rotations, the credential read from
/// the socket every 100 ms always logs in; each replaced credential still
/// works after the switch, and stops working once its drain (4 s) has
/// passed and it was revoked — before its own end (5 s after the switch).
pub async fn prober_sees_no_failed_login_across_ten_rotations(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("rotation")?;
    bed.db_role("t_rot", "3s", "10s").await?;
    bed.approle("t_rot", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let cfg = config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_rot\" }\ndrain = \"4s\"\n");
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let prober = Prober::start(d.socket.clone(), "db", bed.pg());

    let (mut user, mut pass, first) = d.creds("db").await?;
    let mut last = first;
    // Replaced credentials that logged in after the switch, and those whose
    // login ended too late to tell (a loaded machine's slow login).
    let (mut old_still_good, mut unchecked) = (0, 0);
    // The served lease's end, rounded down to the second (it ends within
    // the next one).
    let mut lease_end = std::time::SystemTime::UNIX_EPOCH;
    // The latest replaced credential, and a time before its switch: when the
    // read that still served it was sent (monotonic and wall clock).
    let mut switched = None;
    let mut asked_before = (tokio::time::Instant::now(), std::time::SystemTime::now());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(200);
    while last < first + 10 {
        ensure!(tokio::time::Instant::now() < deadline, "only {} rotations in 200 s\n{}", last - first, d.log_text());
        let asked = (tokio::time::Instant::now(), std::time::SystemTime::now());
        let (st, v) = d.get("/v1/secrets/db").await?;
        ensure!(st == 200, "db served throughout: {st} {v}");
        let version = v["version"].as_u64().context("version")?;
        if version != last {
            // The old version was still served at `asked_before`: past its
            // lease's last second, the switch came too late. Only the first
            // lease may end that early (its cap is learned late, at its last
            // renewal).
            ensure!(
                asked_before.1 < lease_end || last == first,
                "v{last} was replaced less than a second before its lease ended\n{}",
                d.log_text()
            );
            // The replaced credential keeps working through its drain and
            // until its own end (drain never extends a lease past its cap). A
            // refusal proves a bug only if the login ended within both.
            let login = bed.pg_login(&user, &pass).await;
            let in_drain = tokio::time::Instant::now() < asked_before.0 + Duration::from_millis(3500)
                && std::time::SystemTime::now() < lease_end;
            match login {
                Ok(()) => old_still_good += 1,
                Err(e) if in_drain && auth_refused(&e) => {
                    bail!("v{last} refused during its drain: {e:#}\n{}", d.log_text())
                }
                Err(_) => unchecked += 1,
            }
            switched = Some((user.clone(), pass.clone(), asked_before.0));
            last = version;
        }
        asked_before = asked;
        user = v["data"]["username"].as_str().context("username")?.to_owned();
        pass = v["data"]["password"].as_str().context("password")?.to_owned();
        let end = v["lease"]["expires_at"].as_str().context("lease.expires_at")?;
        lease_end = humantime::parse_rfc3339(end).context("lease.expires_at is RFC 3339")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "  rotation: {old_still_good} replaced credentials logged in after the switch, {unchecked} too late to tell"
    );
    ensure!(old_still_good >= 3, "only {old_still_good} replaced credentials checked ({unchecked} too late to tell)");
    let probe = prober.finish().await?;
    probe.ensure_clean(&d.log_text())?;
    // The last replaced credential stops working once its drain (4 s) is
    // over, not before: PostgreSQL refuses its password no sooner than 4 s
    // after a time the switch had not happened yet (3.5 s allows for
    // clocks). A login that fails for another reason (a loaded server's
    // timeout) proves nothing either way.
    let (old_u, old_p, before_switch) = switched.context("no rotation seen")?;
    let refused_at = eventually(Duration::from_secs(30), "replaced credential refused after its drain", || {
        let (pg, u, p) = (bed.pg(), old_u.clone(), old_p.clone());
        async move {
            let Err(e) = pg.login(&u, &p).await else { return Ok(None) };
            Ok(auth_refused(&e).then(tokio::time::Instant::now))
        }
    })
    .await?;
    ensure!(
        refused_at >= before_switch + Duration::from_millis(3500),
        "the replaced credential must work through its drain (refused {:?} after the last read before the switch)",
        refused_at - before_switch
    );
    // Revoked, not merely left to expire: the server confirmed a revocation
    // for every replaced lease but possibly the first (its cap was learned
    // late, so it may have run out during its drain).
    // The last replaced leases are revoked only once their drain (4 s) has
    // passed: wait for the count instead of reading it once.
    let series = "vaultlet_vault_requests_total{operation=\"lease_revoke\",result=\"ok\"}";
    let revoked = eventually(Duration::from_secs(60), "a revocation for every replaced credential", || async {
        let revoked = d.counter(series).await? as u64;
        Ok((revoked + 1 >= old_still_good).then_some(revoked))
    })
    .await
    .with_context(|| format!("{old_still_good} replaced credentials"))?;
    println!("  prober: {revoked} revocations for {old_still_good} replaced credentials");
    let metrics = d.metrics_text().await?;
    let renewed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vaultlet_lease_renewals_total{secret=\"db\",result=\"ok\"} "))
        .context(format!("no successful renewal in the metrics:\n{metrics}"))?
        .trim()
        .parse()?;
    ensure!(renewed >= 1, "no renewal happened");
    println!(
        "  prober: {} rotations, {} logins ({} too slow to count), {} failures",
        probe.versions.len() - 1,
        probe.logins,
        probe.late,
        probe.failures.len()
    );
    d.stop().await?;
    Ok(())
}

/// Whether PostgreSQL refused the login's credentials (wrong password, a
/// dropped or expired role), rather than failing for another reason.
pub fn auth_refused(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.chain().filter_map(|c| c.downcast_ref::<tokio_postgres::Error>()).any(|e| {
        e.code()
            .is_some_and(|c| *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    })
}

/// The token dies every 12 s (token_max_ttl) while the database role allows
/// 60 s: vaultlet logs in again before each death, replaces the credentials
/// issued under the dying token in time, and does not re-read the KV secret.
pub async fn token_death_and_relogin_lose_no_login(bed: Arc<Bed>) -> Result<()> {
    let dir = test_dir("tokendeath")?;
    bed.db_role("t_tok", "5s", "60s").await?;
    bed.approle("t_tok", "vaultlet-test", "4s", "12s", &dir, false).await?;
    let d = Daemon::start(
        &dir,
        &config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_tok\" }\n[secret.api]\nkv = { path = \"api\" }\n"),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let prober = Prober::start(d.socket.clone(), "db", bed.pg());
    // Three token lifetimes.
    eventually(Duration::from_secs(120), "three logins", || async {
        Ok((d.counter("vaultlet_logins_total{result=\"ok\"}").await? >= 4.0).then_some(()))
    })
    .await?;
    let probe = prober.finish().await?;
    probe.ensure_clean(&d.log_text())?;
    let log = d.log_text();
    let kv_reads = d.counter("vaultlet_kv_reads_total{secret=\"api\",result=\"ok\"}").await?;
    ensure!(kv_reads == 1.0, "a re-login must not re-read KV: {kv_reads} reads\n{log}");
    ensure!(probe.versions.len() >= 2, "credentials under a dying token must be replaced:\n{log}");
    println!(
        "  token death: {} logins ({} too slow to count), {} credentials, 0 failures",
        probe.logins,
        probe.late,
        probe.versions.len()
    );
    d.stop().await?;
    Ok(())
}

/// Freeze OpenBao (SIGSTOP) across a renewal's due time and the request
/// timeout, then stop it across the next renewal's due time and start it
/// again on the same storage: vaultlet serves the same, unexpired
/// credential throughout (every login works) and keeps renewing the same
/// lease afterwards.
///
/// The lease lasts 90 s and is renewed 51-60 s after its issue or last
/// renewal. Each outage ends 25 s before the lease would (5 s after the
/// latest due time, whatever the test's own delays), which leaves OpenBao's
/// restart and vaultlet's backoff (5 s at most) 25 s on a loaded machine.
pub async fn outage_freeze_and_restart_keep_serving(_shared: Arc<Bed>) -> Result<()> {
    let mut bed = Bed::private("outage", &[]).await?;
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": crate::tests::TEST_POLICY })).await?;
    let dir = test_dir("outage")?;
    bed.db_role("t_out", "90s", "1h").await?;
    bed.approle("t_out", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let d = Daemon::start(
        &dir,
        &config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_out\" }\n[secret.api]\nkv = { path = \"api\" }\n")
            .replace("request_timeout = \"3s\"", "request_timeout = \"2s\""),
    )?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (_, _, version) = d.creds("db").await?;
    let prober = Prober::start(d.socket.clone(), "db", bed.pg());

    // The served lease's end, as the socket says it (whole seconds, down).
    let lease_end = || async {
        let (_, v) = d.get("/v1/secrets/db").await?;
        let end = v["lease"]["expires_at"].as_str().context("lease.expires_at")?;
        anyhow::Ok(humantime::parse_rfc3339(end).context("lease.expires_at is RFC 3339")?)
    };
    // Sleeps until `secs` before `end` (wall clock).
    let until_before = |end: std::time::SystemTime, secs: u64| {
        let at = end - Duration::from_secs(secs);
        tokio::time::sleep(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
    };
    // Waits until a renewal moved the lease's end past `end`.
    let renewed_after = |end: std::time::SystemTime| {
        let lease_end = &lease_end;
        async move {
            eventually(Duration::from_secs(120), "a renewal", || async {
                let now = lease_end().await?;
                Ok((now > end).then_some(now))
            })
            .await
        }
    };

    // 1. Frozen server: requests hang until the request timeout.
    let pid = bed.get("BAO_PID").parse::<i32>()?;
    let signal =
        |sig| rustix::process::kill_process(rustix::process::Pid::from_raw(pid).context("pid")?, sig).context("kill");
    let end = lease_end().await?;
    signal(rustix::process::Signal::STOP)?;
    until_before(end, 25).await;
    ensure!(d.get("/v1/ready").await?.0 == 200, "still ready while the server is frozen");
    signal(rustix::process::Signal::CONT)?;
    let thawed = tokio::time::Instant::now();
    let end = renewed_after(end).await.with_context(|| d.log_text())?;
    let freeze_recovery = thawed.elapsed();

    // 2. Stopped server, restarted on the same storage and unsealed.
    bed.ctl(&["bao-stop"]).await?;
    until_before(end, 25).await;
    ensure!(d.get("/v1/ready").await?.0 == 200, "still ready while the server is down");
    bed.ctl(&["bao-start"]).await?;
    bed.reload_env()?;
    let back = tokio::time::Instant::now();
    renewed_after(end).await.with_context(|| d.log_text())?;
    let restart_recovery = back.elapsed();
    println!("  outage: renewed {freeze_recovery:.1?} after the thaw, {restart_recovery:.1?} after the restart");

    let probe = prober.finish().await?;
    probe.ensure_clean(&d.log_text())?;
    let (_, _, after) = d.creds("db").await?;
    ensure!(after == version, "the lease survived the outages (version {version} → {after})");
    let log = d.log_text();
    ensure!(log.contains("timed out"), "the freeze was noticed as timeouts:\n{log}");
    ensure!(log.contains("Connection refused"), "the stop was noticed as refused connections:\n{log}");
    ensure!(!log.contains("revoked"), "nothing revoked because of an outage:\n{log}");
    d.stop().await?;
    Ok(())
}

/// Requests counted from the server's audit log over 60 s with 1 KV + 1
/// database secret (TTL 10 s, max 40 s): one login, one KV read, no renewal
/// right after an issue, and no more renewals than the ⅔ rhythm needs.
pub async fn vault_load_has_no_wasted_requests(_shared: Arc<Bed>) -> Result<()> {
    // The audit timestamps are turned into seconds since the epoch; a run
    // across midnight must still order them.
    ensure!(parse_time("1970-01-01T00:00:01Z")? == 1.0 && parse_time("2000-03-01T00:00:00Z")? == 951_868_800.0);
    ensure!(parse_time("2026-12-01T00:00:00.5Z")? - parse_time("2026-11-30T23:59:59.5Z")? == 1.0);
    let bed = Bed::private("load", &[]).await?;
    // The test policy plus the optional read of the role (its max_ttl): every
    // request vaultlet makes is then one it needs.
    let policy = format!("{}\npath \"database/roles/*\" {{ capabilities = [\"read\"] }}\n", crate::tests::TEST_POLICY);
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": policy })).await?;
    let audit = bed.dir.join("audit.log");
    bed.write("sys/audit/file", json!({ "type": "file", "options": { "file_path": audit.display().to_string() } }))
        .await?;
    let dir = test_dir("load")?;
    bed.db_role("t_load", "10s", "40s").await?;
    bed.approle("t_load", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let skip = std::fs::read_to_string(&audit)?.lines().count();
    let window = Duration::from_secs(60);
    let d = Daemon::start(
        &dir,
        &config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_load\" }\n[secret.api]\nkv = { path = \"api\" }\n"),
    )?;
    tokio::time::sleep(window).await;
    let reqs = vaultlet_requests(&audit, skip)?;
    d.stop().await?;

    let count = |p: &str| reqs.iter().filter(|(path, _)| path == p).count();
    let mut by_path = std::collections::BTreeMap::new();
    for (p, _) in &reqs {
        *by_path.entry(p.as_str()).or_insert(0) += 1;
    }
    println!("  vault load over {window:?}: {} requests {by_path:?}", reqs.len());
    ensure!(count("auth/approle/login") == 1, "one login: {by_path:?}");
    ensure!(count("secret/data/api") == 1, "KV read once (refresh 5m): {by_path:?}");
    ensure!(count("database/roles/t_load") == 1, "max_ttl read once: {by_path:?}");
    let issues = count("database/creds/t_load");
    ensure!((2..=3).contains(&issues), "a replacement before max_ttl 40 s, no more: {by_path:?}");
    // Renewals every ~⅔ of 10 s (jitter up to 10 % earlier): at most one per 5.5 s.
    ensure!(count("sys/leases/renew") <= 60 / 5 + 1, "renewals: {by_path:?}");
    // No renewal in the 2 s after an issue.
    for (i, (p, t)) in reqs.iter().enumerate() {
        if p == "database/creds/t_load" {
            let early =
                reqs[i + 1..].iter().take_while(|r| r.1 - t < 2.0).filter(|r| r.0 == "sys/leases/renew").count();
            ensure!(early == 0, "a renewal right after an issue: {reqs:?}");
        }
    }
    // Nothing else was asked: every request is one of the kinds above, or
    // the revocation of a replaced credential after its drain.
    let expected = [
        "auth/approle/login",
        "secret/data/api",
        "database/roles/t_load",
        "database/creds/t_load",
        "sys/leases/renew",
        "sys/leases/revoke",
    ];
    let other: Vec<&str> = by_path.keys().copied().filter(|p| !expected.contains(p)).collect();
    ensure!(other.is_empty(), "unexpected requests {other:?}: {by_path:?}");
    ensure!(reqs.len() <= 3 + issues + 13, "total {}: {by_path:?}", reqs.len());
    Ok(())
}

/// (path, seconds since epoch) of the requests vaultlet made (not the root
/// token's set-up calls).
pub fn vaultlet_requests(audit: &Path, skip: usize) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(audit)?.lines().skip(skip) {
        let v: Value = serde_json::from_str(line)?;
        if v["type"] != "request" {
            continue;
        }
        let mut path = v["request"]["path"].as_str().unwrap_or_default().to_owned();
        // Lease operations carry the lease id in the path; group them.
        for op in ["sys/leases/renew", "sys/leases/revoke"] {
            if path.starts_with(&format!("{op}/")) {
                path = op.to_owned();
            }
        }
        let who = v["auth"]["display_name"].as_str().unwrap_or_default();
        if who == "root" || (who.is_empty() && path != "auth/approle/login") {
            continue;
        }
        let t = v["time"].as_str().context("audit entry without time")?;
        out.push((path, parse_time(t)?));
    }
    Ok(out)
}

/// `2026-11-26T10:41:42.123456Z` → seconds since the Unix epoch (so a run
/// across midnight still orders and diffs correctly).
fn parse_time(t: &str) -> Result<f64> {
    let (date, time) = t.trim_end_matches('Z').split_once('T').with_context(|| format!("timestamp {t}"))?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>().with_context(|| format!("date {t}"))?;
    let h: Vec<f64> = time.split(':').map(str::parse).collect::<Result<_, _>>().with_context(|| format!("time {t}"))?;
    ensure!(d.len() == 3 && h.len() == 3, "timestamp {t}");
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Ok(days as f64 * 86_400.0 + h[0] * 3600.0 + h[1] * 60.0 + h[2])
}

/// A 3-node raft cluster: kill the active node while vaultlet renews a
/// short lease through it. vaultlet moves to another address, keeps
/// renewing, and the prober sees no failed login.
pub async fn failover_to_new_leader_loses_no_login(_shared: Arc<Bed>) -> Result<()> {
    let bed = Bed::private("cluster", &["--cluster"]).await?;
    bed.write("sys/policies/acl/vaultlet-test", json!({ "policy": crate::tests::TEST_POLICY })).await?;
    let dir = test_dir("failover")?;
    // Renewed every 10 s, 5 s before its end: a new leader (2-3 s) comes
    // well within that, even on a loaded machine.
    bed.db_role("t_fail", "15s", "10m").await?;
    bed.approle("t_fail", "vaultlet-test", "1h", "4h", &dir, false).await?;
    let addrs: Vec<String> = bed.get("BAO_ADDRS").split(',').map(|a| format!("\"{a}\"")).collect();
    let cfg = config(&bed, &dir, "[secret.db]\ndatabase = { role = \"t_fail\" }\n")
        .replace(&format!("address = \"{}\"", bed.addr()), &format!("address = [{}]", addrs.join(", ")));
    let d = Daemon::start(&dir, &cfg)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let prober = Prober::start(d.socket.clone(), "db", bed.pg());
    let (_, _, version) = d.creds("db").await?;

    let active = bed.ctl(&["active"]).await?;
    let node = bed
        .get("BAO_ADDRS")
        .split(',')
        .position(|a| a == active)
        .context(format!("active node {active} among BAO_ADDRS"))?
        + 1;
    bed.ctl(&["node-kill", &node.to_string()]).await?;
    let killed = tokio::time::Instant::now();
    let renewals = d.log_text().matches("renewed lease").count();
    eventually(Duration::from_secs(90), "renewals continue after the failover", || async {
        Ok((d.log_text().matches("renewed lease").count() >= renewals + 2).then_some(()))
    })
    .await?;
    let took = killed.elapsed();
    let new_active = bed.ctl(&["active"]).await?;
    ensure!(new_active != active, "a new leader: {new_active}");
    let probe = prober.finish().await?;
    probe.ensure_clean(&d.log_text())?;
    let (_, _, after) = d.creds("db").await?;
    ensure!(after == version, "the lease survived the failover (version {version} → {after})");
    println!(
        "  failover: {} logins ({} too slow to count), 0 failures, two renewals {took:.1?} after killing the leader",
        probe.logins, probe.late
    );
    d.stop().await?;
    Ok(())
}
