//! The daemon's lifecycle, start to stop and start again, proven on tokio's
//! paused clock against the scripted Vault in [`crate::vault::fake`].
//!
//! Each test loads a configuration from TOML as `vaultlet run` does, starts
//! it with [`start_with`] on the fake, and checks one rule of the whole:
//! when it is ready, what stopping revokes and how fast, and what a restart
//! from the sealed state asks of Vault.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::{Instant, sleep, timeout};

use super::{REVOKE_DEADLINE, start_with};
use crate::config::Config;
use crate::store::Store;
use crate::vault::fake::{Fail, Fake, Op};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A private directory holding the AppRole files.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("role_id"), "role").expect("role_id");
    std::fs::write(dir.path().join("secret_id"), "secret").expect("secret_id");
    dir
}

/// The configuration `top` (top-level keys), `[vault]`, `[auth.approle]`
/// with the files of `dir`, then `tables`, loaded as `vaultlet run` loads it.
fn config(dir: &Path, top: &str, tables: &str) -> Config {
    let src = format!(
        "{top}\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[auth.approle]\n\
         role_id_file = \"{d}/role_id\"\nsecret_id_file = \"{d}/secret_id\"\n{tables}",
        d = dir.display()
    );
    match Config::from_toml(Path::new("vaultlet.toml"), &src, 1000) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("the test's configuration does not load: {e}"),
    }
}

/// What `store` serves for `name` now, as (key, value) pairs.
fn served(store: &Store, name: &str) -> Option<Vec<(String, String)>> {
    let snap = store.snapshot();
    let value = snap.get(name)?.live(Instant::now())?.clone();
    Some(value.iter().map(|(k, v)| (k.to_owned(), v.expose_secret().to_owned())).collect())
}

/// An `[[env_file]]` at `path` with `template` (every run needs an output).
fn env_file(path: &Path, template: &str) -> String {
    format!("[[env_file]]\npath = \"{}\"\ntemplate = \"\"\"\n{template}\n\"\"\"\n", path.display())
}

/// The leases the fake issued.
fn issued(fake: &Fake) -> BTreeSet<String> {
    fake.calls_of(Op::DbCreds).into_iter().filter_map(|c| c.lease).collect()
}

/// `vaultlet run` and `exec` say READY when [`super::Running::ready`]
/// returns: not before every secret is held. Here the env file needs only
/// the KV secret and is written at once; the database secret fails three
/// times before its credential comes, and `ready` waits for it.
#[tokio::test(start_paused = true)]
async fn ready_only_once_every_secret_is_held() {
    let dir = dir();
    let env = dir.path().join("app.env");
    let tables = format!(
        "[secret.api]\nkv = {{ path = \"api\" }}\n[secret.db]\ndatabase = {{ role = \"app\" }}\n{}",
        env_file(&env, "KEY={{ api.key }}")
    );
    let config = config(dir.path(), "", &tables);
    let fake = Arc::new(Fake::new());
    fake.fail(Op::DbCreds, Fail::Transient, 3);
    let mut running = start_with(&config, fake.clone()).expect("start");
    let store = running.store().clone();

    timeout(s(600), running.ready()).await.expect("not ready 10 minutes after the credential could be had");
    // Sampled before any other task runs again.
    let missing = store.not_ready(Instant::now());

    assert!(missing.is_empty(), "ready while these were missing: {missing:?}");
    assert_eq!(fake.count(Op::DbCreds), 4, "three failures, then the credential");
    assert!(env.exists(), "the env file");
    running.stop().await;
}

/// `ready` waits for every file's first write too, not only for the
/// secrets in it. Here the env file's directory is a regular file when the
/// secrets come, so its write fails; only once the test puts a directory
/// there (and the KV secret changes, which makes the file task try again)
/// is it written, and only then is the daemon ready.
#[tokio::test(start_paused = true)]
async fn ready_only_once_every_file_is_written() {
    let dir = dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out/");
    let env = out.join("app.env");
    let tables = format!(
        "[secret.api]\nkv = {{ path = \"api\" }}\nrefresh = \"1m\"\n[secret.db]\ndatabase = {{ role = \"app\" }}\n{}",
        env_file(&env, "KEY={{ api.key }}\nPGUSER={{ db.username }}")
    );
    let config = config(dir.path(), "", &tables);
    // Loaded with the directory there; started without it.
    std::fs::remove_dir(&out).expect("rm out/");
    std::fs::write(&out, "not a directory").expect("out");
    let fake = Arc::new(Fake::new());
    let mut running = start_with(&config, fake.clone()).expect("start");
    let store = running.store().clone();

    let ready = async {
        timeout(s(600), running.ready()).await.expect("not ready 10 minutes after the file could be written");
        (Instant::now(), env.exists())
    };
    let unblock = async {
        let deadline = Instant::now() + s(60);
        while !store.not_ready(Instant::now()).is_empty() {
            assert!(Instant::now() < deadline, "the secrets never came");
            sleep(Duration::from_millis(250)).await;
        }
        // Every secret is held; the file cannot be written yet.
        std::fs::remove_file(&out).expect("rm out");
        std::fs::create_dir(&out).expect("out/");
        fake.kv_value("key", "v2");
        Instant::now()
    };
    let ((ready_at, written), unblocked_at) = tokio::join!(ready, unblock);

    assert!(ready_at >= unblocked_at, "ready {:?} before the file could be written", unblocked_at - ready_at);
    assert!(written, "ready before the env file was written");
    running.stop().await;
}

/// With `revoke_on_shutdown`, stop revokes every lease held, then the
/// token, all within [`REVOKE_DEADLINE`]; a Vault that hangs on one lease's
/// revocation and refuses another's still gets the token's, which takes the
/// leases with it.
#[tokio::test(start_paused = true)]
async fn stop_revokes_every_lease_and_the_token_within_the_deadline_even_when_vault_hangs() {
    let dir = dir();
    let tables = format!(
        "[secret.db]\ndatabase = {{ role = \"app\" }}\n[secret.reports]\ndatabase = {{ role = \"reports\" }}\n{}",
        env_file(&dir.path().join("app.env"), "PGUSER={{ db.username }}\nREPORTS={{ reports.username }}")
    );
    let config = config(dir.path(), "revoke_on_shutdown = true", &tables);
    let fake = Arc::new(Fake::new());
    fake.hang(Op::RevokeLease, 1).fail(Op::RevokeLease, Fail::Unavailable, 1);
    let mut running = start_with(&config, fake.clone()).expect("start");
    timeout(s(60), running.ready()).await.expect("ready");
    let held = issued(&fake);
    assert_eq!(held.len(), 2, "{held:?}");

    let stopping = Instant::now();
    timeout(REVOKE_DEADLINE * 2, running.stop()).await.expect("stop still running at twice its deadline");
    let took = stopping.elapsed();

    assert!(took <= REVOKE_DEADLINE, "stop took {took:?}");
    let revoked: BTreeSet<String> = fake.calls_of(Op::RevokeLease).into_iter().filter_map(|c| c.lease).collect();
    assert_eq!(revoked, held, "every lease held is revoked");
    let tokens: Vec<Option<u64>> = fake.calls_of(Op::RevokeSelf).into_iter().map(|c| c.token).collect();
    assert_eq!(tokens, [Some(1)], "the token is revoked, once");
    for c in fake.calls().into_iter().filter(|c| matches!(c.op, Op::RevokeLease | Op::RevokeSelf)) {
        assert!(c.at - stopping <= REVOKE_DEADLINE, "{:?} sent {:?} after stop began", c.op, c.at - stopping);
    }
    let now = Instant::now();
    assert!(held.iter().all(|l| !fake.lease_alive(l, now)), "a lease outlived its revoked token");
}

/// Without `revoke_on_shutdown`, stop revokes nothing: the leases and the
/// token live on (for the next start, or until their TTL).
#[tokio::test(start_paused = true)]
async fn stop_without_revoke_on_shutdown_revokes_nothing() {
    let dir = dir();
    let tables = format!(
        "[secret.db]\ndatabase = {{ role = \"app\" }}\n{}",
        env_file(&dir.path().join("app.env"), "PGUSER={{ db.username }}")
    );
    let config = config(dir.path(), "revoke_on_shutdown = false", &tables);
    let fake = Arc::new(Fake::new());
    let mut running = start_with(&config, fake.clone()).expect("start");
    timeout(s(60), running.ready()).await.expect("ready");

    timeout(REVOKE_DEADLINE * 2, running.stop()).await.expect("stop still running at twice the revocation deadline");

    assert_eq!(fake.count(Op::RevokeLease), 0, "a lease was revoked");
    assert_eq!(fake.count(Op::RevokeSelf), 0, "the token was revoked");
    let now = Instant::now();
    assert!(issued(&fake).iter().all(|l| fake.lease_alive(l, now)), "a lease ended at stop");
}

/// A restart from the sealed state goes on with the token and the lease
/// the first run held: no login, no new credential, the same value served.
/// The second run is watched until it first looks up or renews the lease
/// (`verify_every` after the start): a login it made would have come
/// before, and that call would carry the new token.
#[tokio::test(start_paused = true)]
async fn a_restart_from_the_sealed_state_makes_no_login_and_issues_no_credential() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dir();
    let state = dir.path().join("vaultlet.state");
    let key = dir.path().join("state.key");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).expect("key");
    std::io::Write::write_all(&mut f, &[7u8; 32]).expect("key");
    let tables = format!(
        "[secret.db]\ndatabase = {{ role = \"app\" }}\n[secret.api]\nkv = {{ path = \"api\" }}\n\
         [state]\npath = \"{}\"\nkey_file = \"{}\"\n{}",
        state.display(),
        key.display(),
        env_file(&dir.path().join("app.env"), "PGUSER={{ db.username }}\nKEY={{ api.key }}")
    );
    let config = config(dir.path(), "revoke_on_shutdown = false", &tables);
    let fake = Arc::new(Fake::new());

    let mut first = start_with(&config, fake.clone()).expect("first start");
    timeout(s(60), first.ready()).await.expect("first ready");
    let before = served(first.store(), "db").expect("the first run serves db");
    let deadline = Instant::now() + s(60);
    while !state.exists() {
        assert!(Instant::now() < deadline, "the first run wrote no state file");
        sleep(Duration::from_millis(100)).await;
    }
    first.stop().await;
    assert_eq!((fake.count(Op::Login), fake.count(Op::DbCreds)), (1, 1), "the first run");
    let restarted = Instant::now();

    let mut second = start_with(&config, fake.clone()).expect("second start");
    timeout(s(60), second.ready()).await.expect("second ready");
    let deadline = Instant::now() + s(600);
    let on_the_lease =
        |c: &crate::vault::fake::Called| matches!(c.op, Op::LookupLease | Op::RenewLease) && c.at >= restarted;
    let first_use = loop {
        if let Some(c) = fake.calls().into_iter().find(on_the_lease) {
            break c;
        }
        assert!(Instant::now() < deadline, "the second run never looked up or renewed its lease");
        sleep(Duration::from_millis(250)).await;
    };

    assert_eq!(fake.count(Op::Login), 1, "the second run logged in");
    assert_eq!(fake.count(Op::DbCreds), 1, "the second run issued a credential");
    assert_eq!(first_use.token, Some(1), "the second run used another token than the first");
    let after = served(second.store(), "db");
    assert!(after.as_ref() == Some(&before), "the second run serves another credential than the first");
    second.stop().await;
}
