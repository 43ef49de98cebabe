//! One task per configured secret: fetch → publish → renew → replace.
//!
//! A database secret's task holds the current credential and its lease. It
//! sleeps until [`schedule::next_step`] says, then renews (learning the
//! lease's hard end when Vault caps the renewal) or issues a replacement.
//! A replacement is published at once; the lease it replaces is handed to a
//! drain task that keeps it renewed until `drain` has passed and then revokes
//! it (or just lets it run out with `revoke_old_after = "never"`).
//!
//! Whatever the lease times say, two credentials of one secret are issued at
//! least [`MIN_ISSUE_INTERVAL`] apart, so a server answering tiny TTLs cannot
//! make vaultlet hammer it (the issue bucket in [`crate::vault`] caps all
//! secrets together).
//!
//! A lease can also die behind vaultlet's back: an operator revokes it, or
//! revokes the token that created it (Vault revokes a token's leases with
//! it). Three things notice that well before the next renewal:
//!
//! * the task looks its lease up (`sys/leases/lookup`) every `verify_every`;
//!   a lease Vault no longer knows is withdrawn and replaced at once, a
//!   lookup that fails for any other reason changes nothing;
//! * the auth task confirms a dead token ([`crate::auth::AuthState::dead`]): every
//!   credential issued under it is withdrawn and replaced as soon as the new
//!   token is there, and a 403 retry waits for that token, not for the slow
//!   backoff;
//! * the app reports a refused login (`POST /v1/secrets/{name}/rejected`,
//!   see [`crate::rejected`]): the task looks the lease up at once.
//!
//! After a restart with `[state]`, a task may start with a lease taken over
//! from the sealed state ([`crate::state`]): its value is served already, no
//! credential is issued while it lives, and it is looked up at once (gone →
//! replaced at once, like a lease revoked behind our back). Leases that were
//! draining are handed to [`drain`] again with their old drain end.
//!
//! A KV secret's task re-reads it every `refresh`; the store bumps the
//! version only when the content changed.
//!
//! Errors never revoke or drop anything that is still valid. Each loop turn
//! makes one attempt; what follows a failure is decided in one place,
//! [`retry::decide`], for every task here and the auth task. A failure is
//! logged once, recorded as the secret's `problem` (shown by `/v1/ready`)
//! and retried with capped backoff: fast for transient failures (connection
//! refused, 5xx, sealed), slow for refusals a human must fix (403, unknown
//! role), at once with a new token after a 403. A held value stays served
//! until its lease ends; then it is withdrawn.
//!
//! The tasks talk to Vault through [`crate::vault::Backend`], so the tests
//! below drive them against a scripted server on tokio's paused clock.

pub mod pki;
pub mod retry;
pub mod schedule;
mod task;

use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::auth::current_token;
use crate::config::{RevokeOld, SecretSource, SecretSpec};
use crate::rejected::{CHECK_INTERVAL, Check, Checked};
use crate::secret::{Lease, LeaseId, SecretData};
use crate::store::{LeaseView, Store};
use crate::vault::VaultError;
use retry::{Attempt, Backoffs, Class, Retry};
use schedule::{LeaseTimes, Step};

pub use crate::ledger::{Held, Leases, Pending};
pub use task::{Certs, Cx, MIN_ISSUE_INTERVAL};
use task::{Failure, Watches, failed};

/// Runs the task for one secret until shutdown. `resumed` is the lease (and
/// learned lifetime) a database secret takes over from the sealed state:
/// it is served already, and looked up with Vault at once.
pub async fn run(cx: Cx, spec: SecretSpec, resumed: Option<(Held, Option<Duration>)>) {
    match spec.source.clone() {
        SecretSource::Database { mount, role } => Database::new(cx, spec, resumed).run(&mount, &role).await,
        SecretSource::Kv { mount, path, version } => run_kv(cx, spec, &mount, &path, version).await,
        SecretSource::Pki(req) => pki::run(cx, spec, req).await,
    }
}

/// What the task wakes up to do.
enum Wake {
    /// The scheduled renewal or replacement.
    Step,
    /// The `verify_every` lookup.
    Verify,
}

impl Held {
    fn times(&self) -> LeaseTimes {
        let hard_end = match (self.cap, self.token_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LeaseTimes {
            issued_at: self.lease.issued_at,
            expires_at: self.lease.expires_at,
            renewable: self.lease.renewable,
            hard_end,
        }
    }

    fn view(&self) -> LeaseView {
        LeaseView { expires_at: self.lease.expires_at, ttl: self.lease.ttl, renewable: self.lease.renewable }
    }
}

struct Database {
    cx: Cx,
    spec: SecretSpec,
    cur: Option<Held>,
    /// When the last credential was issued (or asked for).
    last_issue: Option<Instant>,
    /// Lifetime (issue → cap) learned from an earlier lease of this secret.
    learned: Option<Duration>,
    backoffs: Backoffs,
    /// When Vault last vouched for the held lease (issue, renewal, lookup).
    vouched_at: Option<Instant>,
    /// The step planned for the held lease's times.
    plan: Option<(LeaseTimes, Step)>,
    /// The last lookup a report asked for: when, for which lease, and what
    /// it found. Reports within [`CHECK_INTERVAL`] of it about the same
    /// lease get its answer, whatever it was, so a Vault that refuses or
    /// fails lookups is not asked again for every report.
    last_check: Option<(Instant, LeaseId, Checked)>,
    /// The store version of the held credential (for the sealed state).
    version: u64,
    /// A lease resumed from state is looked up at once, and again with the
    /// transient backoff while that fails (Vault down at start): until Vault
    /// has vouched for it once, a lease revoked while vaultlet was down is
    /// replaced as soon as Vault answers, not a `verify_every` later.
    verify_resumed: Option<Instant>,
}

impl Database {
    fn new(cx: Cx, spec: SecretSpec, resumed: Option<(Held, Option<Duration>)>) -> Self {
        let version = cx.store.snapshot().get(spec.name.as_str()).map_or(0, |e| e.version);
        let (cur, learned) = match resumed {
            Some((h, learned)) => {
                cx.leases.add(&h.lease.id, h.lease.expires_at, h.token_generation);
                (Some(h), learned)
            }
            None => (None, None),
        };
        let db = Database {
            verify_resumed: cur.is_some().then(Instant::now),
            version,
            cx,
            spec,
            cur,
            last_issue: None,
            learned,
            backoffs: Backoffs::default(),
            vouched_at: None,
            plan: None,
            last_check: None,
        };
        db.track();
        db
    }

    /// Tells the sealed state what is held now.
    fn track(&self) {
        self.cx.tracker.set_held(&self.spec.name, self.cur.as_ref().map(|h| (h, self.version, self.learned)));
    }

    async fn run(mut self, mount: &str, role: &str) {
        let name = self.spec.name.clone();
        let mut w = Watches { auth: self.cx.auth.watch(), deaths: true };
        let mut checks = self.cx.store.rejections().register(&name);
        // A resumed lease whose lifetime is known needs no role read either.
        let mut asked_max_ttl = self.verify_resumed.is_some() && self.learned.is_some();
        loop {
            let Some(token) = current_token(&mut w.auth, &self.cx.shutdown).await else { return };
            if self.cur.as_ref().is_some_and(|h| self.cx.auth.is_dead(h.token_generation)) {
                // Vault revoked the lease with its token.
                self.expired("its token was revoked");
            }
            if self.cx.auth.is_dead(token.generation) {
                // The auth task is logging in again; nothing works until then.
                tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return,
                    _ = w.auth.changed() => {}
                    Some(c) = checks.recv() => self.answer(c, Checked::Gone),
                }
                continue;
            }
            if !asked_max_ttl && self.cur.is_some() {
                // Once, after the first credential is out (so it costs start-up
                // nothing): the role's max_ttl, if the policy lets us read it.
                // Without it the cap is learned from the first capped renewal.
                asked_max_ttl = true;
                let read = tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return,
                    r = self.cx.vault.db_role_max_ttl(&token.secret, mount, role) => r,
                };
                match read {
                    Ok(Some(max)) => {
                        tracing::debug!(secret = %name, max_ttl = ?max, "read the role's max_ttl");
                        self.learned = Some(max);
                        if let Some(h) = self.cur.as_mut() {
                            h.cap = Some(schedule::after(h.lease.issued_at, max));
                        }
                        self.track();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(secret = %name, error = %e, "role max_ttl not readable; will learn it from renewals")
                    }
                }
            }
            // Follow the hard end of the token our lease was issued under.
            if let Some(h) = self.cur.as_mut()
                && let Some(end) = self.cx.auth.token_end(h.token_generation)
                && h.token_end != Some(end)
            {
                h.token_end = Some(end);
                // The sealed state saves it with the lease.
                self.track();
            }
            let now = Instant::now();
            let step = match &self.cur {
                None => Step::Replace(now),
                // Planned once per lease state: waking for a lookup or a
                // report must not move the renewal (see `schedule::verify_at`).
                Some(h) => match self.plan {
                    Some((times, step)) if times == h.times() => step,
                    _ => {
                        let step = schedule::next_step(now, h.times(), self.spec.rotate_before, schedule::jitter());
                        self.plan = Some((h.times(), step));
                        step
                    }
                },
            };
            // Whatever the lease times say, issues of one secret are spaced.
            let step = match (step, self.last_issue) {
                (Step::Replace(t), Some(last)) => Step::Replace(t.max(schedule::after(last, MIN_ISSUE_INTERVAL))),
                (s, _) => s,
            };
            let expiry = self.cur.as_ref().map(|h| h.lease.expires_at);
            let verify_at = if let Some(at) = self.verify_resumed {
                Some(at)
            } else {
                self.vouched_at.and_then(|t| schedule::verify_at(t, self.spec.verify_every, step.at()))
            };
            let wake = tokio::select! {
                _ = self.cx.shutdown.cancelled() => return,
                // A new token, a token end learned, a token confirmed dead.
                _ = w.auth.changed() => continue,
                Some(c) = checks.recv() => {
                    let shutdown = self.cx.shutdown.clone();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        found = self.check(&token, true) => self.answer(c, found),
                    }
                    continue;
                }
                _ = sleep_until(step.at()) => Wake::Step,
                _ = sleep_until(verify_at.unwrap_or(step.at())), if self.cur.is_some() && verify_at.is_some() => Wake::Verify,
                _ = sleep_until(expiry.unwrap_or(step.at())), if expiry.is_some_and(|e| e < step.at()) => {
                    self.expired("lease ended before it could be renewed or replaced");
                    continue;
                }
            };
            if let Wake::Verify = wake {
                // Errors change nothing here: the renewal rhythm handles them.
                let shutdown = self.cx.shutdown.clone();
                let found = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    found = self.check(&token, false) => found,
                };
                self.verify_resumed = match (self.verify_resumed, found) {
                    (Some(_), Checked::Failed(_)) => {
                        Some(schedule::after(Instant::now(), self.backoffs.transient(schedule::jitter())))
                    }
                    _ => None,
                };
                continue;
            }
            // A new token may have arrived at the same moment the step fell
            // due (select! picks either): decide again with it, or a
            // replacement would be issued under the token that is about to
            // die, and die with it.
            if w.auth.has_changed().unwrap_or(false) {
                continue;
            }
            // A replacement due because the issuing token is about to die
            // would, issued under that same token, die with it. The auth task
            // is logging in again by then: wait for the new token (at most
            // until the old one ends) and issue under it.
            if let (Step::Replace(_), Some(h)) = (step, &self.cur)
                && h.token_generation == token.generation
                && let Some(end) = h.token_end
                && h.cap.is_none_or(|cap| end <= cap)
                && end > Instant::now()
            {
                tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return,
                    _ = w.auth.changed() => continue,
                    _ = sleep_until(end) => {}
                }
            }
            let shutdown = self.cx.shutdown.clone();
            let attempt = match step {
                Step::Replace(_) => Attempt::Secret,
                Step::Renew(_) => Attempt::Lease,
            };
            let res = async {
                match step {
                    Step::Replace(_) => self.issue(&token, mount, role).await,
                    Step::Renew(_) => self.renew(&token).await,
                }
            };
            // A request in flight (or queued) does not hold up shutdown.
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = res => r,
            };
            // Whatever happened, the next step is planned afresh.
            self.plan = None;
            let e = match res {
                Ok(()) => {
                    self.backoffs.reset();
                    continue;
                }
                Err(e) => e,
            };
            let retry = retry::decide(Class::of(&e), attempt, &mut self.backoffs);
            if retry == Retry::Gone {
                // Revoked behind our back (or its token died): replace now.
                self.expired("lease was revoked");
                continue;
            }
            let failure = Failure { what: "database secret", generation: token.generation, error: &e, retry };
            let expiry = self.cur.as_ref().map(|h| h.lease.expires_at);
            if !failed(&self.cx, &name, failure, &mut self.backoffs, &mut w, expiry).await {
                return;
            }
            if self.cur.as_ref().is_some_and(|h| h.lease.expires_at <= Instant::now()) {
                self.expired("lease ended while vault could not be reached");
            }
        }
    }

    /// Looks the held lease up; a lease Vault no longer knows is withdrawn,
    /// so the next turn replaces it. Reports get at most one lookup per
    /// [`CHECK_INTERVAL`] and lease, whatever it found (the scheduled
    /// lookups do not count: a report right after one must still look).
    async fn check(&mut self, token: &crate::secret::Token, reported: bool) -> Checked {
        let Some(h) = self.cur.as_ref() else { return Checked::Gone };
        let id = h.lease.id.clone();
        let now = Instant::now();
        if reported
            && let Some((at, of, found)) = &self.last_check
            && *of == id
            && now < schedule::after(*at, CHECK_INTERVAL)
        {
            return found.clone();
        }
        let found = self.look_up(token, &id).await;
        if reported {
            self.last_check = Some((Instant::now(), id, found.clone()));
        }
        found
    }

    /// One `sys/leases/lookup` of the held lease `id`, and what follows.
    async fn look_up(&mut self, token: &crate::secret::Token, id: &LeaseId) -> Checked {
        let res = self.cx.vault.lookup_lease(&token.secret, id).await;
        self.cx.metrics.lease_lookup(&self.spec.name, &res);
        // A failed lookup is not tried again before the next turn either.
        self.vouched_at = Some(Instant::now());
        let e = match res {
            Ok(()) => return Checked::Valid,
            Err(e) => e,
        };
        // A lookup is never retried by itself: the renewal rhythm carries on.
        match Class::of(&e) {
            Class::Gone => {
                self.expired("lease was revoked");
                Checked::Gone
            }
            Class::Forbidden => {
                tracing::warn!(secret = %self.spec.name, error = %e, "lease lookup refused; checking the token");
                self.cx.auth.rejected(token.generation);
                Checked::TokenChecked
            }
            Class::Transient | Class::Permanent => {
                tracing::warn!(secret = %self.spec.name, error = %e, "lease lookup failed; the credential stays served");
                Checked::Failed(e.to_string())
            }
        }
    }

    fn answer(&self, c: Check, found: Checked) {
        let _ = c.reply.send(found);
    }

    fn expired(&mut self, why: &str) {
        if let Some(h) = self.cur.take() {
            self.cx.leases.remove(&h.lease.id);
            tracing::error!(secret = %self.spec.name, lease = ?h.lease.id, "{why}; credential withdrawn");
        }
        self.cx.store.withdraw(&self.spec.name, why.to_owned());
        self.track();
    }

    async fn issue(&mut self, token: &crate::secret::Token, mount: &str, role: &str) -> Result<(), VaultError> {
        self.last_issue = Some(Instant::now());
        let _pending = self.cx.leases.pending(token.generation);
        let creds = self.cx.vault.db_creds(&token.secret, mount, role).await?;
        self.cx.metrics.credential_issued(&self.spec.name);
        let now = Instant::now();
        let lease = Lease {
            id: creds.lease_id,
            issued_at: now,
            expires_at: schedule::after(now, creds.ttl),
            ttl: creds.ttl,
            renewable: creds.renewable,
        };
        self.cx.leases.add(&lease.id, lease.expires_at, token.generation);
        let held = Held {
            cap: self.learned.map(|l| schedule::after(now, l)),
            lease,
            token_generation: token.generation,
            token_end: token.hard_end,
        };
        let version = self.cx.store.publish(&self.spec.name, creds.data, Some(held.view()));
        self.vouched_at = Some(now);
        self.verify_resumed = None;
        tracing::info!(secret = %self.spec.name, version, lease = ?held.lease.id, ttl = ?creds.ttl, renewable = held.lease.renewable, "issued database credential");
        self.version = version;
        if let Some(old) = self.cur.replace(held) {
            let drain_end = schedule::after(Instant::now(), self.spec.drain);
            let drain = drain(self.cx.clone(), self.spec.clone(), old, drain_end);
            self.cx.drains.spawn(drain.instrument(tracing::Span::current()));
        }
        self.track();
        Ok(())
    }

    async fn renew(&mut self, token: &crate::secret::Token) -> Result<(), VaultError> {
        let Some(h) = self.cur.as_mut() else { return Ok(()) };
        let res = self.cx.vault.renew_lease(&token.secret, &h.lease.id, h.lease.ttl).await;
        self.cx.metrics.lease_renewal(&self.spec.name, &res);
        match res {
            Ok(r) => {
                let now = Instant::now();
                h.lease.expires_at = schedule::after(now, r.ttl);
                h.lease.renewable = r.renewable;
                if r.capped {
                    // Capped: this is the role's max_ttl. Remember the lifetime
                    // so the next lease is replaced in good time from the start.
                    h.cap = Some(h.lease.expires_at);
                    self.learned = Some(h.lease.expires_at - h.lease.issued_at);
                }
                self.cx.leases.extend(&h.lease.id, h.lease.expires_at);
                self.cx.store.update_lease(&self.spec.name, h.view());
                self.vouched_at = Some(now);
                self.verify_resumed = None;
                self.track();
                tracing::debug!(secret = %self.spec.name, ttl = ?r.ttl, "renewed lease");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Keeps a replaced lease usable until `drain_end`, then revokes it (or
/// lets it run out). Also takes over leases that were draining when the
/// previous process stopped (see [`crate::state`]).
pub async fn drain(cx: Cx, spec: SecretSpec, mut old: Held, drain_end: Instant) {
    let mut token_rx = cx.auth.watch();
    cx.leases.add(&old.lease.id, old.lease.expires_at, old.token_generation);
    cx.tracker.set_draining(&old.lease.id, Some((&spec.name, &old, drain_end)));
    loop {
        let now = Instant::now();
        if old.lease.expires_at <= now {
            cx.leases.remove(&old.lease.id);
            cx.tracker.set_draining(&old.lease.id, None);
            return;
        }
        if now >= drain_end {
            if spec.revoke_old == RevokeOld::Drain {
                let Some(token) = current_token(&mut token_rx, &cx.shutdown).await else { return };
                match cx.vault.revoke_lease(&token.secret, &old.lease.id).await {
                    Ok(()) => tracing::info!(secret = %spec.name, lease = ?old.lease.id, "revoked replaced credential"),
                    Err(e) => {
                        tracing::warn!(secret = %spec.name, error = %e, "could not revoke replaced credential; it will expire")
                    }
                }
            }
            cx.leases.remove(&old.lease.id);
            cx.tracker.set_draining(&old.lease.id, None);
            return;
        }
        let times = old.times();
        let can_extend = times.renewable && times.hard_end.is_none_or(|h| old.lease.expires_at < h);
        let wake = if can_extend && old.lease.expires_at < drain_end {
            schedule::renew_at(now, old.lease.expires_at, schedule::jitter()).min(drain_end)
        } else {
            drain_end.min(old.lease.expires_at)
        };
        tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            _ = sleep_until(wake) => {}
        }
        if Instant::now() >= drain_end || !can_extend {
            continue;
        }
        let Some(token) = current_token(&mut token_rx, &cx.shutdown).await else { return };
        let res = tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            r = cx.vault.renew_lease(&token.secret, &old.lease.id, old.lease.ttl) => r,
        };
        match res {
            Ok(r) => {
                let now = Instant::now();
                old.lease.expires_at = schedule::after(now, r.ttl);
                if r.capped {
                    old.cap = Some(old.lease.expires_at);
                }
                cx.leases.extend(&old.lease.id, old.lease.expires_at);
                cx.tracker.set_draining(&old.lease.id, Some((&spec.name, &old, drain_end)));
            }
            // No backoff of its own: the drain's schedule is its rhythm.
            Err(e) => match retry::decide(Class::of(&e), Attempt::Drain, &mut Backoffs::default()) {
                Retry::Gone => {
                    cx.leases.remove(&old.lease.id);
                    cx.tracker.set_draining(&old.lease.id, None);
                    return;
                }
                _ => tracing::debug!(secret = %spec.name, error = %e, "renewing a draining lease failed"),
            },
        }
    }
}

async fn run_kv(cx: Cx, spec: SecretSpec, mount: &str, path: &str, version: u8) {
    let mut w = Watches { auth: cx.auth.watch(), deaths: false };
    let mut backoffs = Backoffs::default();
    loop {
        let Some(token) = current_token(&mut w.auth, &cx.shutdown).await else { return };
        let res = tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            r = cx.vault.kv(&token.secret, mount, path, version) => r,
        };
        cx.metrics.kv_read(&spec.name, &res);
        let e = match res {
            Ok(data) => {
                backoffs.reset();
                let keys: Vec<&str> = data.keys().collect();
                tracing::debug!(secret = %spec.name, ?keys, "read kv secret");
                publish_kv(&cx.store, &spec.name, data);
                // Up to 10 % early so many sidecars spread their reads.
                let wait = spec.refresh.mul_f64(1.0 - 0.1 * schedule::jitter());
                tokio::select! {
                    _ = cx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            Err(e) => e,
        };
        let mut class = Class::of(&e);
        let withdrawn = withdrawn_in_vault(&cx, &token.secret, &e, &mut class).await.map(|why| {
            let problem = format!("{why} in vault: {e}");
            cx.store.withdraw(&spec.name, problem.clone());
            problem
        });
        let retry = retry::decide(class, Attempt::Secret, &mut backoffs);
        let error: &(dyn std::fmt::Display + Sync) = match &withdrawn {
            Some(problem) => problem,
            None => &e,
        };
        let failure = Failure { what: "kv secret", generation: token.generation, error, retry };
        if !failed(&cx, &spec.name, failure, &mut backoffs, &mut w, None).await {
            return;
        }
    }
}

/// Whether a failed KV read is the operator's word rather than an outage:
/// the secret was deleted (404), or the token may no longer read it while
/// the token itself lives (403, and `lookup-self` still works). Either way
/// the value is withdrawn instead of served on: "errors never revoke" holds
/// for outages, where the last value is still the right one, not for a
/// secret someone removed or took away. The read goes on being retried
/// (slow backoff), so a secret put back is served again.
///
/// A 403 confirmed here with a live token is a missing capability: `class`
/// becomes [`Class::Permanent`], so the auth task is not asked to check the
/// token a second time. A 403 whose `lookup-self` also fails keeps its class
/// (a dead token: a new login, then a retry) and the value is kept until
/// the retry under the new token says more.
async fn withdrawn_in_vault(
    cx: &Cx,
    token: &secrecy::SecretString,
    e: &VaultError,
    class: &mut Class,
) -> Option<&'static str> {
    match e.status()? {
        404 => Some("deleted"),
        403 => {
            let alive = tokio::select! {
                _ = cx.shutdown.cancelled() => return None,
                r = cx.vault.lookup_self(token) => r.is_ok(),
            };
            alive.then(|| {
                *class = Class::Permanent;
                "not readable any more (403 with a live token)"
            })
        }
        _ => None,
    }
}

fn publish_kv(store: &Store, name: &str, data: SecretData) {
    let before = store.snapshot().get(name).map_or(0, |e| e.version);
    let v = store.publish(name, data, None);
    if v != before {
        tracing::info!(secret = %name, version = v, "kv secret changed");
    }
}

#[cfg(test)]
mod tests;
