//! The one loop of every leased secret: issue → renew → replace before the
//! end → drain → revoke.
//!
//! A leased secret's task holds the current value (a database credential
//! and its lease, a certificate). It sleeps until [`schedule::next_step`]
//! says, then renews it (learning its hard end when Vault caps a renewal) or
//! issues a replacement. A replacement is published at once; the value it
//! replaces is handed to [`drain`], which keeps it usable until `drain` has
//! passed and then revokes it (or lets it run out with
//! `revoke_old_after = "never"`).
//!
//! What differs between kinds is split in two, so a kind is one small file:
//!
//! * [`LeasedKind`]: how a value is issued (and published), what the sealed
//!   state tracks, and what a kind learns on the way (a database role's
//!   `max_ttl`);
//! * [`LeasedValue`]: what is held of one value, and what can be done with
//!   it once issued: its times, whether and how it renews, whether Vault can
//!   be asked if it still knows it, how it is revoked, which ledger holds it.
//!   A drain needs only this (a drain taken over from the sealed state has
//!   no kind at hand). Kinds whose value is a Vault lease share one
//!   ([`crate::ledger::Held`], in `lease/database.rs`).
//!
//! The loop itself owns the rules every kind keeps:
//!
//! * two values of one secret are issued at least [`MIN_ISSUE_INTERVAL`]
//!   apart, whatever the times say;
//! * a value that dies with its token ([`LeasedValue::DIES_WITH_TOKEN`]) is
//!   withdrawn when that token is confirmed dead, is replaced before that
//!   token's end (under the next token, not the dying one), and nothing is
//!   issued while the current token is known dead;
//! * a value Vault can look up ([`LeasedValue::LOOKED_UP`]) is looked up
//!   every `verify_every` and when the app reports a refused login
//!   ([`crate::rejected`]); one Vault no longer knows is withdrawn and
//!   replaced at once. A value resumed from the sealed state is looked up
//!   at once, and again with the fast backoff while that fails;
//! * each turn makes one attempt; a failure goes through [`retry::decide`]
//!   and [`failed`]; a held value stays served until its end, then it is
//!   withdrawn with the kind's reason.

use std::future::Future;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::retry::{self, Attempt, Backoffs, Class, Retry};
use super::schedule::{self, LeaseTimes, Step};
use super::task::{Cx, Failure, MIN_ISSUE_INTERVAL, Watches, failed};
use crate::auth::current_token;
use crate::config::{RevokeOld, SecretSpec};
use crate::rejected::{CHECK_INTERVAL, Check, Checked};
use crate::secret::Token;
use crate::store::LeaseView;
use crate::vault::{Call, Renewed, VaultError};

/// What is held of one issued value, and what can be done with it.
pub(super) trait LeasedValue: Send + Sync + 'static {
    /// Whether it dies with the token that issued it (Vault revokes a
    /// token's leases with it): then [`LeasedValue::token`] is followed.
    const DIES_WITH_TOKEN: bool;
    /// Whether Vault can be asked if it still knows it
    /// ([`LeasedValue::look_up`] answers): then it is looked up every
    /// `verify_every` and reports of a refused credential reach the task.
    const LOOKED_UP: bool;

    /// Its times, as the schedule sees them.
    fn times(&self) -> LeaseTimes;
    /// Its end and lifetime, as the store shows them.
    fn view(&self) -> LeaseView;
    /// The token generation that issued it and that token's hard end, when
    /// known (asked only when [`LeasedValue::DIES_WITH_TOKEN`]).
    fn token(&self) -> (u64, Option<Instant>);
    /// The issuing token's hard end, learned after the issue.
    fn set_token_end(&mut self, end: Instant);
    /// Renews it, moving its end (and its ledger entry) on; `None` when it
    /// cannot be renewed (its times say so too).
    fn renew<'a>(&'a mut self, cx: &'a Cx, token: &'a SecretString) -> Option<Call<'a, Renewed>>;
    /// Asks Vault whether it still knows it; `None` when Vault cannot be
    /// asked (then [`LeasedValue::LOOKED_UP`] is false).
    fn look_up<'a>(&'a self, cx: &'a Cx, token: &'a SecretString) -> Option<Call<'a, ()>>;
    /// Revokes it once replaced and drained, and logs the outcome.
    fn revoke<'a>(&'a self, cx: &'a Cx, secret: &'a str, token: &'a SecretString) -> BoxFuture<'a, ()>;
    /// Whether a replaced one gets a drain task, given `revoke_old`.
    fn drains(revoke_old: RevokeOld) -> bool;
    /// Records it as draining until `until` (or, `None`, done draining) for
    /// the sealed state; a drain taken over from the state enters the
    /// ledger here.
    fn draining(&self, cx: &Cx, secret: &str, until: Option<Instant>);
    /// Takes it off the ledger of what vaultlet holds (it ended, was
    /// revoked, or is left to run out).
    fn forget(&self, cx: &Cx);
    /// Logs that it was withdrawn, and `why`.
    fn withdrawn(&self, secret: &str, why: &str);
}

/// What one kind of leased secret does its own way.
pub(super) trait LeasedKind: Send + Sync + 'static {
    /// What is held of one value.
    type Value: LeasedValue;
    /// Why an issue failed.
    type Error: std::fmt::Display + From<VaultError> + Send + Sync;

    /// Names the kind in the log line of a failed attempt.
    const WHAT: &'static str;
    /// Why the value was withdrawn when it ended before its next step.
    const ENDED: &'static str;
    /// Why the value was withdrawn when it ended while attempts failed.
    const ENDED_FAILING: &'static str;

    /// The class of a failed issue, for [`retry::decide`].
    fn class(e: &Self::Error) -> Class;

    /// Issues a new value under `token`, enters it in its ledger and
    /// publishes it. The loop hands the value it replaces to [`drain`].
    fn issue<'a>(
        &'a mut self,
        cx: &'a Cx,
        spec: &'a SecretSpec,
        token: &'a Token,
    ) -> impl Future<Output = Result<Self::Value, Self::Error>> + Send + 'a;

    /// Called at each turn while a value is held: a kind may learn about
    /// it from Vault (a database role's `max_ttl`). True when `held` changed.
    /// Nothing to learn, by default.
    fn learn<'a>(
        &'a mut self,
        cx: &'a Cx,
        spec: &'a SecretSpec,
        token: &'a Token,
        held: &'a mut Self::Value,
    ) -> impl Future<Output = bool> + Send + 'a {
        let _ = (cx, spec, token, held);
        std::future::ready(false)
    }

    /// After a renewal of `held` answered `r`; nothing, by default.
    fn renewed(&mut self, held: &Self::Value, r: &Renewed) {
        let _ = (held, r);
    }

    /// Tells the sealed state what is held now.
    fn track(&self, cx: &Cx, spec: &SecretSpec, held: Option<&Self::Value>);
}

/// Runs the task of one leased secret until shutdown. `resumed` is a value
/// taken over from the sealed state: it is served already (and entered in
/// its ledger), and looked up with Vault at once.
pub(super) async fn run<K: LeasedKind>(cx: Cx, spec: SecretSpec, kind: K, resumed: Option<K::Value>) {
    Leased::new(cx, spec, kind, resumed).run().await
}

/// What the task wakes up to do.
enum Wake {
    /// The scheduled renewal or replacement.
    Step,
    /// The `verify_every` lookup.
    Verify,
}

struct Leased<K: LeasedKind> {
    cx: Cx,
    spec: SecretSpec,
    kind: K,
    cur: Option<K::Value>,
    /// When the last value was issued (or asked for).
    last_issue: Option<Instant>,
    backoffs: Backoffs,
    /// When Vault last vouched for the held value (issue, renewal, lookup).
    vouched_at: Option<Instant>,
    /// The step planned for the held value's times.
    plan: Option<(LeaseTimes, Step)>,
    /// The last lookup a report asked for of the held value: when, and what
    /// it found (forgotten when the value changes). Reports within
    /// [`CHECK_INTERVAL`] of it get its answer, whatever it was, so a Vault
    /// that refuses or fails lookups is not asked again for every report.
    last_check: Option<(Instant, Checked)>,
    /// A value resumed from state is looked up at once, and again with the
    /// transient backoff while that fails (Vault down at start): until Vault
    /// has vouched for it once, a value revoked while vaultlet was down is
    /// replaced as soon as Vault answers, not a `verify_every` later.
    verify_resumed: Option<Instant>,
}

/// Waits for the next report of a refused credential; never, for a value
/// Vault cannot look up (the task takes no reports).
async fn next_check(checks: &mut Option<mpsc::Receiver<Check>>) -> Option<Check> {
    match checks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

// === impl Leased ===

impl<K: LeasedKind> Leased<K> {
    fn new(cx: Cx, spec: SecretSpec, kind: K, resumed: Option<K::Value>) -> Self {
        let task = Leased {
            verify_resumed: resumed.is_some().then(Instant::now),
            cx,
            spec,
            kind,
            cur: resumed,
            last_issue: None,
            backoffs: Backoffs::default(),
            vouched_at: None,
            plan: None,
            last_check: None,
        };
        task.track();
        task
    }

    /// Tells the sealed state what is held now.
    fn track(&self) {
        self.kind.track(&self.cx, &self.spec, self.cur.as_ref());
    }

    async fn run(mut self) {
        let name = self.spec.name.clone();
        let dies_with_token = <K::Value as LeasedValue>::DIES_WITH_TOKEN;
        let looked_up = <K::Value as LeasedValue>::LOOKED_UP;
        let mut w = Watches { auth: self.cx.auth.watch(), deaths: dies_with_token };
        let mut checks = looked_up.then(|| self.cx.store.rejections().register(&name));
        loop {
            let Some(token) = current_token(&mut w.auth, &self.cx.shutdown).await else { return };
            if dies_with_token && self.cur.as_ref().is_some_and(|h| self.cx.auth.is_dead(h.token().0)) {
                // Vault revoked the lease with its token.
                self.expired("its token was revoked");
            }
            if dies_with_token && self.cx.auth.is_dead(token.generation) {
                // The auth task is logging in again; nothing works until then.
                tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return,
                    _ = w.auth.changed() => {}
                    Some(c) = next_check(&mut checks) => answer(c, Checked::Gone),
                }
                continue;
            }
            if let Some(h) = self.cur.as_mut() {
                let learned = tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return,
                    changed = self.kind.learn(&self.cx, &self.spec, &token, h) => changed,
                };
                if learned {
                    self.track();
                }
            }
            // Follow the hard end of the token the value was issued under.
            if dies_with_token
                && let Some(h) = self.cur.as_mut()
                && let (generation, known) = h.token()
                && let Some(end) = self.cx.auth.token_end(generation)
                && known != Some(end)
            {
                h.set_token_end(end);
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
            let expiry = self.cur.as_ref().map(|h| h.times().expires_at);
            let verify_at = if !looked_up {
                None
            } else if let Some(at) = self.verify_resumed {
                Some(at)
            } else {
                self.vouched_at.and_then(|t| schedule::verify_at(t, self.spec.verify_every, step.at()))
            };
            let wake = tokio::select! {
                _ = self.cx.shutdown.cancelled() => return,
                // A new token, a token end learned, a token confirmed dead.
                _ = w.auth.changed() => continue,
                Some(c) = next_check(&mut checks) => {
                    let shutdown = self.cx.shutdown.clone();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        found = self.check(&token, true) => answer(c, found),
                    }
                    continue;
                }
                _ = sleep_until(step.at()) => Wake::Step,
                _ = sleep_until(verify_at.unwrap_or(step.at())), if self.cur.is_some() && verify_at.is_some() => Wake::Verify,
                _ = sleep_until(expiry.unwrap_or(step.at())), if expiry.is_some_and(|e| e < step.at()) => {
                    self.expired(K::ENDED);
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
            if dies_with_token
                && let (Step::Replace(_), Some(h)) = (step, &self.cur)
                && let (generation, Some(end)) = h.token()
                && generation == token.generation
                // The token's end, not the lease's own cap, is what ends it.
                && h.times().hard_end == Some(end)
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
                    Step::Replace(_) => self.issue(&token).await,
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
            let retry = retry::decide(K::class(&e), attempt, &mut self.backoffs);
            if retry == Retry::Gone {
                // Revoked behind our back (or its token died): replace now.
                self.expired("lease was revoked");
                continue;
            }
            let failure = Failure { what: K::WHAT, generation: token.generation, error: &e, retry };
            let expiry = self.cur.as_ref().map(|h| h.times().expires_at);
            if !failed(&self.cx, &name, failure, &mut self.backoffs, &mut w, expiry).await {
                return;
            }
            if self.cur.as_ref().is_some_and(|h| h.times().expires_at <= Instant::now()) {
                self.expired(K::ENDED_FAILING);
            }
        }
    }

    /// Looks the held value up; one Vault no longer knows is withdrawn, so
    /// the next turn replaces it. Reports get at most one lookup per
    /// [`CHECK_INTERVAL`] and value, whatever it found (the scheduled
    /// lookups do not count: a report right after one must still look).
    async fn check(&mut self, token: &Token, reported: bool) -> Checked {
        if self.cur.is_none() {
            return Checked::Gone;
        }
        let now = Instant::now();
        if reported
            && let Some((at, found)) = &self.last_check
            && now < schedule::after(*at, CHECK_INTERVAL)
        {
            return found.clone();
        }
        let found = self.look_up(token).await;
        if reported {
            self.last_check = Some((Instant::now(), found.clone()));
        }
        found
    }

    /// One lookup of the held value, and what follows.
    async fn look_up(&mut self, token: &Token) -> Checked {
        let Some(h) = self.cur.as_ref() else { return Checked::Gone };
        // A value Vault cannot be asked about is never looked up.
        let Some(call) = h.look_up(&self.cx, &token.secret) else { return Checked::Valid };
        let res = call.await;
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

    /// Withdraws the held value (if any) for `why`: the next turn replaces it.
    fn expired(&mut self, why: &str) {
        if let Some(h) = self.cur.take() {
            h.forget(&self.cx);
            h.withdrawn(&self.spec.name, why);
        }
        self.last_check = None;
        self.cx.store.withdraw(&self.spec.name, why.to_owned());
        self.track();
    }

    /// Issues a replacement; the value it replaces is drained.
    async fn issue(&mut self, token: &Token) -> Result<(), K::Error> {
        self.last_issue = Some(Instant::now());
        let held = self.kind.issue(&self.cx, &self.spec, token).await?;
        self.vouched_at = Some(Instant::now());
        self.verify_resumed = None;
        self.last_check = None;
        if let Some(old) = self.cur.replace(held)
            && K::Value::drains(self.spec.revoke_old)
        {
            let drain_end = schedule::after(Instant::now(), self.spec.drain);
            let drain = drain(self.cx.clone(), self.spec.clone(), old, drain_end);
            self.cx.drains.spawn(drain.instrument(tracing::Span::current()));
        }
        self.track();
        Ok(())
    }

    /// Renews the held value.
    async fn renew(&mut self, token: &Token) -> Result<(), K::Error> {
        let Some(h) = self.cur.as_mut() else { return Ok(()) };
        let Some(call) = h.renew(&self.cx, &token.secret) else { return Ok(()) };
        let res = call.await;
        self.cx.metrics.lease_renewal(&self.spec.name, &res);
        let r = res?;
        self.kind.renewed(h, &r);
        self.cx.store.update_lease(&self.spec.name, h.view());
        self.vouched_at = Some(Instant::now());
        self.verify_resumed = None;
        self.track();
        tracing::debug!(secret = %self.spec.name, ttl = ?r.ttl, "renewed lease");
        Ok(())
    }
}

fn answer(c: Check, found: Checked) {
    let _ = c.reply.send(found);
}

/// Keeps a replaced value usable until `drain_end` (renewing it if it can
/// be), then revokes it (or lets it run out). Also takes over leases that
/// were draining when the previous process stopped (see [`crate::state`]).
pub(super) async fn drain<V: LeasedValue>(cx: Cx, spec: SecretSpec, mut old: V, drain_end: Instant) {
    let mut token_rx = cx.auth.watch();
    old.draining(&cx, &spec.name, Some(drain_end));
    loop {
        let now = Instant::now();
        let times = old.times();
        if times.expires_at <= now {
            old.forget(&cx);
            old.draining(&cx, &spec.name, None);
            return;
        }
        if now >= drain_end {
            if spec.revoke_old == RevokeOld::Drain {
                let Some(token) = current_token(&mut token_rx, &cx.shutdown).await else { return };
                old.revoke(&cx, &spec.name, &token.secret).await;
            }
            old.forget(&cx);
            old.draining(&cx, &spec.name, None);
            return;
        }
        let can_extend = times.renewable && times.hard_end.is_none_or(|h| times.expires_at < h);
        let wake = if can_extend && times.expires_at < drain_end {
            schedule::renew_at(now, times.expires_at, schedule::jitter()).min(drain_end)
        } else {
            drain_end.min(times.expires_at)
        };
        tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            _ = sleep_until(wake) => {}
        }
        if Instant::now() >= drain_end || !can_extend {
            continue;
        }
        let Some(token) = current_token(&mut token_rx, &cx.shutdown).await else { return };
        let Some(call) = old.renew(&cx, &token.secret) else { continue };
        let res = tokio::select! {
            _ = cx.shutdown.cancelled() => return,
            r = call => r,
        };
        match res {
            Ok(_) => old.draining(&cx, &spec.name, Some(drain_end)),
            // No backoff of its own: the drain's schedule is its rhythm.
            Err(e) => match retry::decide(Class::of(&e), Attempt::Drain, &mut Backoffs::default()) {
                Retry::Gone => {
                    old.forget(&cx);
                    old.draining(&cx, &spec.name, None);
                    return;
                }
                _ => tracing::debug!(secret = %spec.name, error = %e, "renewing a draining lease failed"),
            },
        }
    }
}
