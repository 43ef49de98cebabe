//! Debian's `fail2ban-regex` with `examples/fail2ban/vaultlet.conf`, run
//! over a vaultlet log: which uids would fail2ban act on? Shared by the e2e
//! tests (real audit lines) and the hostile-Vault tests (lines a server
//! writes into). `scripts/test.sh` installs the `fail2ban` package.

use std::path::Path;

use anyhow::{Context, Result, ensure};

/// The host fail2ban reports for `uid`: it reads the number as an IPv4
/// address (uid 65534 is 0.0.255.254).
pub fn uid_as_host(uid: u32) -> String {
    std::net::Ipv4Addr::from(uid).to_string()
}

/// Every match of the shipped filter in `log`, as the hosts fail2ban reads
/// (one per matched line; see [`uid_as_host`]).
pub async fn fail2ban_hosts(log: &Path) -> Result<Vec<String>> {
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fail2ban/vaultlet.conf");
    let out = tokio::process::Command::new("fail2ban-regex")
        .args(["--print-all-matched", "--out", "ip"])
        .arg(log)
        .arg(&filter)
        .output()
        .await
        .context("fail2ban-regex (Debian package fail2ban; scripts/test.sh installs it)")?;
    ensure!(out.status.success(), "fail2ban-regex: {out:?}");
    let hosts = String::from_utf8_lossy(&out.stdout);
    Ok(hosts.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}
