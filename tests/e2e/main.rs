//! End-to-end tests against a real OpenBao and a real PostgreSQL.
//!
//! One test bed (scripts/testbed.sh) is shared by all tests; each test makes
//! its own AppRole, database role and vaultlet process, so they run side by
//! side. Run with `cargo test --test e2e` (or `scripts/test.sh`); pass a
//! substring to run only matching tests: `cargo test --test e2e -- rotation`.

mod apps;
mod attack_exec;
mod attack_local;
mod attack_vault;
mod auth_methods;
mod bed;
#[path = "../support/fail2ban.rs"]
mod fail2ban;
mod import;
mod pki;
mod policy;
mod restart;
mod revocation;
mod rotation;
mod security;
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bed::Bed;

type TestFn = fn(Arc<Bed>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Tests that must not share the machine with the others: the floods load
/// it on purpose.
const ALONE: &[&str] = &[
    "flood_by_a_refused_uid_does_not_starve_allowed_callers",
    "accept_errors_under_descriptor_exhaustion_are_logged_once",
    "idle_metrics_connections_cannot_take_the_api_sockets_descriptors",
];

/// Runs `tests` side by side; each result with its name and seconds.
async fn run_all(bed: &Arc<Bed>, tests: Vec<(&'static str, TestFn)>) -> Vec<(String, anyhow::Result<()>, f64)> {
    let mut set = tokio::task::JoinSet::new();
    for (name, f) in tests {
        let bed = bed.clone();
        set.spawn(async move {
            let t = Instant::now();
            // Far above any test's own deadlines: only a hang gets here.
            let r = tokio::time::timeout(std::time::Duration::from_secs(600), f(bed))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after 600 s")));
            let secs = t.elapsed().as_secs_f64();
            match &r {
                Ok(()) => println!("test {name} ... ok ({secs:.1}s)"),
                Err(e) => println!("test {name} ... FAILED ({secs:.1}s)\n{e:#}\n"),
            }
            (name.to_string(), r, secs)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => out.push(r),
            Err(e) => out.push(("<panicked>".into(), Err(anyhow::anyhow!("test panicked: {e}")), 0.0)),
        }
    }
    out
}

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let all = tests::all();
    let selected: Vec<(&str, TestFn)> =
        all.into_iter().filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str()))).collect();
    if std::env::args().any(|a| a == "--list") {
        for (n, _) in &selected {
            println!("{n}: test");
        }
        return;
    }
    if selected.is_empty() {
        println!("no e2e test matches {filters:?}");
        return;
    }

    let bed = match Bed::up("shared", &[]) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("e2e: cannot start the test bed: {e:#}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let results = rt.block_on(async {
        if let Err(e) = tests::prepare(&bed).await {
            return vec![("prepare".to_string(), Err(e), 0.0)];
        }
        // Tests that load the whole machine on purpose (floods, descriptor
        // exhaustion) run after the others, one at a time, so they cannot
        // starve the timing of rotation and outage tests.
        let (alone, together): (Vec<_>, Vec<_>) = selected.into_iter().partition(|(n, _)| ALONE.contains(n));
        let mut out = run_all(&bed, together).await;
        for t in alone {
            out.extend(run_all(&bed, vec![t]).await);
        }
        out
    });
    drop(rt);
    bed.down();
    let failed: Vec<_> = results.iter().filter(|r| r.1.is_err()).map(|r| r.0.clone()).collect();
    println!(
        "\ne2e: {} passed, {} failed in {:.1}s",
        results.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
