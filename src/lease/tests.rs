//! The rules of the auth and secret tasks, proven on tokio's paused clock
//! against the scripted Vault in [`crate::vault::fake`].
//!
//! Each test boots the real auth task and the real secret tasks, lets the
//! clock run, and samples what the store serves: a credential served while
//! the fake says its lease (or its token) is dead is exactly the failure
//! these rules exist to prevent.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{Cx, Held, Leases};
use crate::config::{AppRoleConfig, RevokeOld, SecretSource, SecretSpec};
use crate::secret::Lease;
use crate::store::Store;
use crate::vault::fake::{Fail, Fake, Op, Ttls};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ttls(ttl: u64, max: Option<u64>, renewable: bool) -> Ttls {
    Ttls { ttl: s(ttl), max: max.map(s), renewable }
}

fn db(name: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        source: SecretSource::Database { mount: "database".into(), role: "app".into() },
        refresh: s(300),
        rotate_before: None,
        drain: s(30),
        revoke_old: RevokeOld::Drain,
        verify_every: s(3600),
        allow: None,
    }
}

fn kv(name: &str) -> SecretSpec {
    SecretSpec { source: SecretSource::Kv { mount: "secret".into(), path: "app".into(), version: 2 }, ..db(name) }
}

/// The auth task and the secret tasks of `specs`, against `fake`.
struct Bed {
    fake: Arc<Fake>,
    cx: Cx,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Bed {
    fn start(fake: Fake, specs: &[SecretSpec]) -> Bed {
        Bed::resume(fake, specs, None)
    }

    fn resume(fake: Fake, specs: &[SecretSpec], resumed: Option<(Held, Option<Duration>)>) -> Bed {
        let fake = Arc::new(fake);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("role_id"), "role").expect("role_id");
        std::fs::write(dir.path().join("secret_id"), "secret").expect("secret_id");
        let cfg = AppRoleConfig {
            mount: "approle".into(),
            role_id_file: dir.path().join("role_id"),
            secret_id_file: dir.path().join("secret_id"),
            secret_id_wrapped: false,
            remove_secret_id_file: false,
        };
        let channel = crate::auth::channel();
        let store = Store::new(specs.iter().map(|s| s.name.as_str())).with_auth(channel.1.clone());
        let leases = Leases::default();
        let metrics = crate::metrics::Metrics::new();
        let shutdown = CancellationToken::new();
        let (auth, _task) =
            crate::auth::spawn(fake.clone(), cfg, channel, leases.clone(), metrics.clone(), None, shutdown.clone());
        let cx = Cx {
            vault: fake.clone(),
            store,
            auth,
            leases,
            shutdown,
            certs: Default::default(),
            metrics,
            tracker: Default::default(),
            drains: Default::default(),
        };
        // As `start` does: the store serves a resumed lease's value before
        // its task runs (a user named after the lease, as the fake names them).
        if let (Some((held, _)), Some(spec)) = (&resumed, specs.first()) {
            let n = held.lease.id.as_str().rsplit('/').next().expect("lease number");
            let mut data = crate::secret::SecretData::default();
            data.insert("username", secrecy::SecretString::from(format!("user-{n}")));
            let l = &held.lease;
            let view = crate::store::LeaseView { expires_at: l.expires_at, ttl: l.ttl, renewable: l.renewable };
            cx.store.restore(&spec.name, data, 1, Some(view));
        }
        let mut resumed = resumed;
        for spec in specs {
            tokio::spawn(super::run(cx.clone(), spec.clone(), resumed.take()));
        }
        Bed { fake, cx, started: Instant::now(), _dir: dir }
    }

    fn at(&self, secs: f64) -> Instant {
        self.started + Duration::from_secs_f64(secs)
    }

    /// Seconds since the start.
    fn t(&self, at: Instant) -> f64 {
        (at - self.started).as_secs_f64()
    }

    /// The lease of the database credential `name` serves now, if any.
    fn served(&self, name: &str) -> Option<String> {
        let snap = self.cx.store.snapshot();
        let v = snap.get(name)?.live(Instant::now())?.clone();
        let user = v.get("username")?.expose_secret().to_owned();
        Some(format!("database/creds/app/{}", user.strip_prefix("user-")?))
    }

    /// Steps the clock to `until` in quarter seconds, checking at each step
    /// that what `name` serves is alive in Vault; returns the leases served
    /// with the time each was first seen.
    async fn watch(&self, name: &str, until: Instant) -> Vec<(String, Instant)> {
        self.watch_with(name, until, true).await
    }

    /// [`Bed::watch`], without the liveness check when `strict` is false (a
    /// lease revoked behind vaultlet's back is served until it notices).
    async fn watch_with(&self, name: &str, until: Instant, strict: bool) -> Vec<(String, Instant)> {
        let mut seen: Vec<(String, Instant)> = Vec::new();
        while Instant::now() < until {
            sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            if let Some(l) = self.served(name) {
                let alive = !strict || self.fake.lease_alive(&l, now);
                assert!(alive, "at {:.2}s {name} serves {l}, which Vault has ended", self.t(now));
                if seen.last().is_none_or(|(last, _)| *last != l) {
                    seen.push((l, now));
                }
            }
        }
        seen
    }

    fn stop(&self) {
        self.cx.shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn a_capped_renewal_is_replaced_rotate_before_ahead_of_the_hard_end() {
    let fake = Fake::new();
    // A 70 s lease capped at 100 s; the role's max_ttl is not readable, so
    // the cap is learned from the first renewal (at about 45 s).
    fake.lease_ttls(ttls(70, Some(100), true)).deny(Op::DbRole);
    let spec = SecretSpec { rotate_before: Some(s(20)), drain: s(5), ..db("db") };
    let bed = Bed::start(fake, std::slice::from_ref(&spec));
    let seen = bed.watch("db", bed.at(130.0)).await;
    let renewals = bed.fake.calls_of(Op::RenewLease);
    assert!(renewals.iter().any(|c| c.lease.as_deref() == Some("database/creds/app/1")), "lease 1 was renewed");
    let issues = bed.fake.calls_of(Op::DbCreds);
    assert!(issues.len() >= 2, "the capped lease was replaced: {issues:?}");
    let replaced = bed.t(issues[1].at);
    // Vault speaks whole seconds: the cap is known to within one.
    assert!((79.0..81.0).contains(&replaced), "replaced at {replaced:.2}s, not 20 s before the 100 s cap");
    assert_eq!(seen.first().map(|(l, _)| l.as_str()), Some("database/creds/app/1"));
    assert!(seen.iter().any(|(l, _)| l == "database/creds/app/2"), "the replacement is served: {seen:?}");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn leases_issued_under_a_token_are_replaced_before_that_token_dies() {
    let fake = Fake::new();
    // The token's max TTL (120 s) is learned from its first renewal; the
    // lease itself could live an hour, but dies with its token.
    fake.token_ttls(ttls(3600, Some(120), true)).lease_ttls(ttls(3600, None, true));
    let bed = Bed::start(fake, &[db("db")]);
    let seen = bed.watch("db", bed.at(200.0)).await;
    let token1_end = bed.fake.token_expires_at(1).expect("token 1");
    let under_2 = bed.fake.calls_of(Op::DbCreds).into_iter().find(|c| c.token == Some(2));
    let under_2 = under_2.expect("a credential was issued under the second token");
    assert!(under_2.at < token1_end, "replaced at {:.2}s, after token 1 died", bed.t(under_2.at));
    assert_eq!(bed.fake.lease_owner(&seen[1].0), Some(2), "{seen:?}");
    // Served without a gap: the replacement was out before the old one died.
    assert!(seen[1].1 < token1_end, "{seen:?}");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_403_from_a_missing_capability_does_not_log_in_again() {
    let fake = Fake::new();
    // The policy does not allow reading the credentials at all.
    fake.deny(Op::DbCreds);
    let bed = Bed::start(fake, &[db("db")]);
    sleep_until(bed.at(120.0)).await;
    // The slow backoff (5 s doubling to 60 s, each wait at least half its
    // step) allows at most 7 attempts in 120 s: at 0 and by 2.5, 7.5, 17.5,
    // 37.5, 67.5 and 97.5 s. The fast one (250 ms to 5 s) would make dozens.
    let attempts = bed.fake.count(Op::DbCreds);
    assert!((3..=7).contains(&attempts), "retried with the slow backoff: {attempts} attempts in 120 s");
    assert!(bed.fake.count(Op::LookupSelf) >= 1, "the 403 made the auth task check its token");
    assert_eq!(bed.fake.count(Op::Login), 1, "a live token is not replaced for a missing capability");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_403_with_a_dead_token_logs_in_again_and_retries_at_once() {
    let fake = Fake::new();
    fake.lease_ttls(ttls(30, None, true));
    let bed = Bed::start(fake, &[db("db")]);
    sleep_until(bed.at(5.0)).await;
    // An operator revokes the token (and with it the lease).
    bed.fake.revoke_token(1);
    let seen = bed.watch_with("db", bed.at(40.0), false).await;
    assert_eq!(bed.fake.count(Op::Login), 2, "the dead token was replaced once");
    let refused = bed.fake.calls_of(Op::RenewLease).into_iter().find(|c| c.token == Some(1));
    let refused = refused.expect("the renewal under the dead token");
    let reissued = bed.fake.calls_of(Op::DbCreds).into_iter().find(|c| c.token == Some(2)).expect("a new credential");
    let waited = reissued.at - refused.at;
    assert!(waited <= s(2), "the new credential came {waited:?} after the 403: it waited for the slow backoff");
    assert!(seen.iter().any(|(l, _)| bed.fake.lease_owner(l) == Some(2)), "{seen:?}");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn during_an_outage_a_value_is_served_until_its_lease_ends_and_then_withdrawn() {
    let fake = Fake::new();
    fake.lease_ttls(ttls(30, None, true));
    let bed = Bed::start(fake, &[db("db")]);
    bed.fake.outage(bed.at(5.0), bed.at(100.0));
    sleep_until(bed.at(29.5)).await;
    assert_eq!(bed.served("db").as_deref(), Some("database/creds/app/1"), "served while its lease lasts");
    assert!(bed.fake.count(Op::RenewLease) >= 2, "the renewal was tried and retried during the outage");
    sleep_until(bed.at(30.5)).await;
    assert_eq!(bed.served("db"), None);
    let snap = bed.cx.store.snapshot();
    let entry = snap.get("db").expect("db");
    assert!(entry.value.is_none(), "the value is withdrawn, not just past its end");
    assert!(entry.problem.is_some(), "with the reason");
    // Back once Vault is: a new credential, served again.
    sleep_until(bed.at(110.0)).await;
    assert_eq!(bed.served("db").as_deref(), Some("database/creds/app/2"));
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_drain_keeps_the_old_lease_renewed_and_revokes_it_after_drain() {
    let fake = Fake::new();
    // 10 s leases capped at 60 s (the role says so): replaced at 40 s, and
    // renewed every few seconds, also while draining.
    fake.lease_ttls(ttls(10, Some(60), true)).role_max_ttl(Some(s(60)));
    let spec = SecretSpec { rotate_before: Some(s(20)), drain: s(15), ..db("db") };
    let bed = Bed::start(fake, std::slice::from_ref(&spec));
    let old = "database/creds/app/1";
    sleep_until(bed.at(40.5)).await;
    assert_eq!(bed.served("db").as_deref(), Some("database/creds/app/2"), "replaced at 40 s");
    let replaced = bed.fake.calls_of(Op::DbCreds)[1].at;
    // Until the drain ends (55 s) the old lease must stay usable: without a
    // renewal it would end within 10 s of the replacement.
    while Instant::now() < replaced + s(15) - Duration::from_millis(250) {
        sleep(Duration::from_millis(250)).await;
        assert!(bed.fake.lease_alive(old, Instant::now()), "at {:.2}s the draining lease died", bed.t(Instant::now()));
    }
    sleep_until(bed.at(57.0)).await;
    let renewed = bed.fake.calls_of(Op::RenewLease);
    assert!(renewed.iter().any(|c| c.lease.as_deref() == Some(old) && c.at > replaced), "renewed while draining");
    let revoked = bed.fake.calls_of(Op::RevokeLease);
    let revoked = revoked.iter().find(|c| c.lease.as_deref() == Some(old)).expect("the old lease was revoked");
    let after = revoked.at - replaced;
    assert!(after >= s(15) && after < s(16), "revoked {after:?} after the replacement, not after drain");
    assert!(!bed.fake.lease_alive(old, Instant::now()));
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_relogin_refetches_nothing() {
    let fake = Fake::new();
    // renew-self is not allowed: the auth task logs in again at ⅔ of the
    // token's 60 s (the old token stays valid until its end).
    fake.token_ttls(ttls(60, None, true)).deny(Op::RenewSelf);
    let bed = Bed::start(fake, &[db("db"), kv("kv")]);
    sleep_until(bed.at(55.0)).await;
    assert_eq!(bed.fake.count(Op::Login), 2, "logged in again");
    assert_eq!(bed.fake.count(Op::DbCreds), 1, "no new database credential for a new token");
    assert_eq!(bed.fake.count(Op::Kv), 1, "no KV read for a new token");
    assert_eq!(bed.served("db").as_deref(), Some("database/creds/app/1"));
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_looked_up_every_verify_every_until_its_renewal() {
    let fake = Fake::new();
    let spec = SecretSpec { verify_every: s(60), ..db("db") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(630.0)).await;
    let lookups = bed.fake.calls_of(Op::LookupLease);
    assert_eq!(lookups.len(), 10, "one lookup a minute: {:?}", lookups.iter().map(|c| bed.t(c.at)).collect::<Vec<_>>());
    for (i, c) in lookups.iter().enumerate() {
        let t = bed.t(c.at);
        assert!((t - 60.0 * (i + 1) as f64).abs() < 1.0, "lookup {i} at {t:.2}s");
    }
    assert_eq!(bed.fake.count(Op::RenewLease), 0, "an hour-long lease renews at 40 min");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_lease_revoked_behind_our_back_is_replaced_at_the_next_lookup() {
    let fake = Fake::new();
    let spec = SecretSpec { verify_every: s(10), ..db("db") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(3.0)).await;
    // An operator revokes the lease (not the token).
    let token = secrecy::SecretString::from("fake-token-1");
    let lease = crate::secret::LeaseId::new("database/creds/app/1".into());
    crate::vault::Backend::revoke_lease(&*bed.fake, &token, &lease).await.expect("revoke");
    let seen = bed.watch_with("db", bed.at(12.0), false).await;
    assert_eq!(seen.last().map(|(l, _)| l.as_str()), Some("database/creds/app/2"), "{seen:?}");
    let issued = bed.fake.calls_of(Op::DbCreds)[1].at;
    assert!(bed.t(issued) <= 10.5, "replaced at {:.2}s, more than verify_every after", bed.t(issued));
    assert_eq!(bed.fake.count(Op::Login), 1, "a revoked lease is not a dead token");
    bed.stop();
}

/// A lease a previous process left in the sealed state, as `start` hands
/// it to the task (the store already serves its value).
fn resumed(id: &str) -> (Held, Option<Duration>) {
    let now = Instant::now();
    let lease = Lease {
        id: crate::secret::LeaseId::new(id.into()),
        issued_at: now,
        expires_at: now + s(3600),
        ttl: s(3600),
        renewable: true,
    };
    (Held { lease, cap: None, token_generation: 0, token_end: None }, None)
}

#[tokio::test(start_paused = true)]
async fn a_resumed_lease_vault_still_knows_is_kept() {
    // The previous process's token and lease, known to the fake.
    let fake = Fake::new();
    {
        use crate::vault::Backend;
        let role = secrecy::SecretString::from("role");
        let auth = fake.login_approle("approle", &role, &role).await.expect("login");
        let creds = fake.db_creds(&auth.token, "database", "app").await.expect("creds");
        assert_eq!(creds.lease_id.as_str(), "database/creds/app/1");
    }
    let bed = Bed::resume(fake, &[db("db")], Some(resumed("database/creds/app/1")));
    sleep_until(bed.at(30.0)).await;
    let lookups = bed.fake.calls_of(Op::LookupLease);
    assert!(lookups.first().is_some_and(|c| bed.t(c.at) < 1.0), "looked up at once: {lookups:?}");
    assert_eq!(lookups.len(), 1, "then only every verify_every");
    assert_eq!(bed.fake.count(Op::DbCreds), 1, "a lease Vault knows is not replaced");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_resumed_lease_vault_has_forgotten_is_replaced_at_once() {
    let bed = Bed::resume(Fake::new(), &[db("db")], Some(resumed("database/creds/app/7")));
    // Served from the state at once, though Vault no longer knows it…
    assert_eq!(bed.served("db").as_deref(), Some("database/creds/app/7"));
    let seen = bed.watch_with("db", bed.at(5.0), false).await;
    let issued = bed.fake.calls_of(Op::DbCreds);
    assert!(issued.first().is_some_and(|c| bed.t(c.at) < 1.0), "replaced at once: {issued:?}");
    // …and replaced as soon as the lookup says so.
    assert_eq!(seen.first().map(|(l, _)| l.as_str()), Some("database/creds/app/1"), "{seen:?}");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_resumed_lease_is_looked_up_again_fast_while_vault_is_down() {
    let fake = Fake::new();
    fake.fail(Op::LookupLease, Fail::Transient, 3);
    let bed = Bed::resume(fake, &[db("db")], Some(resumed("database/creds/app/7")));
    sleep_until(bed.at(10.0)).await;
    let lookups = bed.fake.calls_of(Op::LookupLease);
    assert_eq!(lookups.len(), 4, "three failures, then the answer: {lookups:?}");
    assert!(bed.t(lookups[3].at) < 5.0, "with the transient backoff, not verify_every");
    assert_eq!(bed.fake.count(Op::DbCreds), 1, "replaced once Vault said it is gone");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_login_failure_is_published_until_a_login_works() {
    let fake = Fake::new();
    fake.fail(Op::Login, Fail::Forbidden, 2);
    let bed = Bed::start(fake, &[kv("kv")]);
    sleep(Duration::from_millis(100)).await;
    let auth = bed.cx.auth.watch();
    assert!(auth.borrow().problem.as_deref().is_some_and(|p| p.contains("permission denied")));
    let why = bed.cx.store.not_ready(Instant::now());
    assert!(why[0].1.contains("login failed"), "/v1/ready names the login problem: {why:?}");
    sleep_until(bed.at(30.0)).await;
    assert_eq!(bed.fake.count(Op::Login), 3, "two refusals (slow backoff), then a login");
    assert_eq!(auth.borrow().problem, None, "cleared by the login that worked");
    assert!(bed.cx.store.not_ready(Instant::now()).is_empty());
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_drain_in_progress_is_awaited_at_shutdown_and_leaves_its_lease_to_revoke() {
    let fake = Fake::new();
    fake.lease_ttls(ttls(10, Some(60), true)).role_max_ttl(Some(s(60)));
    let spec = SecretSpec { rotate_before: Some(s(20)), drain: s(15), ..db("db") };
    let bed = Bed::start(fake, std::slice::from_ref(&spec));
    sleep_until(bed.at(45.0)).await;
    assert_eq!(bed.cx.drains.len(), 1, "the replaced lease drains in the tracker");
    bed.stop();
    bed.cx.drains.close();
    tokio::time::timeout(s(1), bed.cx.drains.wait()).await.expect("drains stop at shutdown");
    let live = bed.cx.leases.take_live();
    assert!(live.iter().any(|l| l.as_str() == "database/creds/app/1"), "left for revoke_on_shutdown: {live:?}");
    assert_eq!(bed.fake.count(Op::RevokeLease), 0);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_token_is_revoked_only_once_no_lease_uses_it() {
    let fake = Fake::new();
    // Token max TTL 120 s: logged in again at about 80 s, when the lease is
    // replaced too; the old lease drains 10 s, and only then may its token go.
    fake.token_ttls(ttls(3600, Some(120), true)).lease_ttls(ttls(3600, None, true));
    let spec = SecretSpec { drain: s(10), ..db("db") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(110.0)).await;
    assert_eq!(bed.fake.count(Op::Login), 2);
    let calls = bed.fake.calls();
    let lease =
        calls.iter().position(|c| c.op == Op::RevokeLease && c.lease.as_deref() == Some("database/creds/app/1"));
    let lease = lease.expect("the old lease was revoked after its drain");
    let token = calls.iter().position(|c| c.op == Op::RevokeSelf && c.token == Some(1));
    let token = token.expect("the old token was revoked");
    // In call order: on the paused clock both can fall on the same instant.
    assert!(token > lease, "the token went first: its lease would have died with it");
    let after = calls[token].at - calls[lease].at;
    assert!(after <= s(3), "revoked {after:?} after its last lease");
    assert!(bed.fake.lease_alive("database/creds/app/2", Instant::now()), "the new lease lives under the new token");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_kv_read_refused_with_a_dead_token_is_retried_at_once_under_the_new_one() {
    let fake = Fake::new();
    let spec = SecretSpec { refresh: s(10), ..kv("kv") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(5.0)).await;
    bed.fake.revoke_token(1);
    sleep_until(bed.at(20.0)).await;
    let reads = bed.fake.calls_of(Op::Kv);
    let refused = reads.iter().find(|c| c.token == Some(1) && bed.t(c.at) > 5.0).expect("a read with the dead token");
    let retried = reads.iter().find(|c| c.token == Some(2)).expect("a read with the new token");
    let waited = retried.at - refused.at;
    assert!(waited <= s(2), "retried {waited:?} after the 403, not at once after the new login");
    assert_eq!(bed.fake.count(Op::Login), 2);
    assert!(bed.cx.store.snapshot()["kv"].value.is_some(), "the KV value is still served");
    bed.stop();
}

fn pki(name: &str) -> SecretSpec {
    let req = crate::config::PkiRequest {
        mount: "pki".into(),
        role: "internal".into(),
        common_name: "app.internal".into(),
        alt_names: Vec::new(),
        ip_sans: Vec::new(),
        ttl: None,
    };
    SecretSpec { source: SecretSource::Pki(req), revoke_old: RevokeOld::Never, ..db(name) }
}

#[tokio::test(start_paused = true)]
async fn a_certificate_is_reissued_before_it_expires_and_served_until_its_end_during_an_outage() {
    let fake = Fake::new();
    // 90 s certificates: re-issued at 60 s (⅓ before the end).
    fake.lease_ttls(ttls(90, None, false));
    let bed = Bed::start(fake, &[pki("tls")]);
    sleep_until(bed.at(61.0)).await;
    let issues = bed.fake.calls_of(Op::PkiIssue);
    assert_eq!(issues.len(), 2, "re-issued once");
    assert!((59.0..61.0).contains(&bed.t(issues[1].at)), "re-issued at {:.2}s", bed.t(issues[1].at));
    // Vault goes away: the second certificate (to about 150 s) stays served
    // while it is valid, then is withdrawn.
    bed.fake.outage(bed.at(61.0), bed.at(1000.0));
    sleep_until(bed.at(148.0)).await;
    assert!(bed.cx.store.snapshot()["tls"].live(Instant::now()).is_some(), "served until it expires");
    assert!(bed.fake.count(Op::PkiIssue) > 3, "re-issue retried during the outage");
    sleep_until(bed.at(152.0)).await;
    assert!(bed.cx.store.snapshot()["tls"].value.is_none(), "withdrawn once expired");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_kv_secret_deleted_in_vault_is_withdrawn_and_served_again_once_put_back() {
    let fake = Fake::new();
    let spec = SecretSpec { refresh: s(10), ..kv("kv") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(1.0)).await;
    assert!(bed.cx.store.snapshot()["kv"].value.is_some(), "served after the first read");
    // Deleted in Vault: the next two reads get 404, then it is back.
    bed.fake.fail(Op::Kv, Fail::NotFound, 2);
    sleep_until(bed.at(11.0)).await;
    assert!(bed.cx.store.snapshot()["kv"].value.is_none(), "a deleted secret is no longer served");
    assert_eq!(bed.fake.count(Op::Login), 1, "a 404 is not a dead token");
    let mut back = None;
    while Instant::now() < bed.at(600.0) {
        sleep(Duration::from_millis(500)).await;
        if bed.cx.store.snapshot()["kv"].value.is_some() {
            back = Some(Instant::now());
            break;
        }
    }
    assert!(back.is_some(), "put back in Vault, it is served again");
    assert_eq!(bed.fake.count(Op::Kv), 4, "read, two 404s, read");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn a_kv_secret_refused_with_a_live_token_is_withdrawn_without_a_new_login() {
    let fake = Fake::new();
    let spec = SecretSpec { refresh: s(10), ..kv("kv") };
    let bed = Bed::start(fake, &[spec]);
    sleep_until(bed.at(1.0)).await;
    assert!(bed.cx.store.snapshot()["kv"].value.is_some(), "served after the first read");
    // The operator takes the capability away (once): the token lives on.
    bed.fake.fail(Op::Kv, Fail::Forbidden, 1);
    sleep_until(bed.at(11.0)).await;
    assert!(bed.cx.store.snapshot()["kv"].value.is_none(), "access taken away: no longer served");
    assert_eq!(bed.fake.count(Op::LookupSelf), 1, "the token was checked once, by the KV task");
    sleep_until(bed.at(600.0)).await;
    assert!(bed.cx.store.snapshot()["kv"].value.is_some(), "access given back: served again");
    assert_eq!(bed.fake.count(Op::Login), 1, "a live token is not replaced");
    bed.stop();
}

#[tokio::test(start_paused = true)]
async fn reports_while_lookups_fail_cost_one_lookup_per_check_interval() {
    let fake = Fake::new();
    let bed = Bed::start(fake, &[db("db")]);
    sleep_until(bed.at(1.0)).await;
    let version = bed.cx.store.snapshot()["db"].version;
    let query = format!("version={version}");
    bed.fake.fail(Op::LookupLease, Fail::Unavailable, 1000);
    // Ten reports at once, from ten callers.
    let reports: Vec<_> =
        (0..10).map(|uid| crate::rejected::report(&bed.cx.store, 1000 + uid, "db", Some(query.as_str()))).collect();
    let answers = futures_util::future::join_all(reports).await;
    assert!(answers.iter().all(|a| a.is_err()), "a failed lookup is no answer");
    assert_eq!(bed.fake.count(Op::LookupLease), 1, "one lookup for ten reports");
    // Once CHECK_INTERVAL has passed, a report looks again.
    sleep(crate::rejected::CHECK_INTERVAL).await;
    let _ = crate::rejected::report(&bed.cx.store, 999, "db", Some(query.as_str())).await;
    assert_eq!(bed.fake.count(Op::LookupLease), 2, "a new lookup after CHECK_INTERVAL");
    assert_eq!(bed.fake.count(Op::LookupSelf), 0, "a 503 is not a token problem");
    bed.stop();
}
