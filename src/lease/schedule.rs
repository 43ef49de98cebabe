//! When to renew, when to replace: pure functions of the clock.
//!
//! The model (`docs/rotation.md` draws it as a timeline):
//!
//! * **Renew** at about ⅔ of the time left, minus up to 10 % jitter so many
//!   sidecars do not renew in lock-step. Never right after issue: a fresh
//!   lease has its whole TTL ahead, so the first renewal comes at ⅔ of it.
//! * Each lease has a **hard end** it can never be renewed past: the role's
//!   `max_ttl` (Vault reveals it when a renewal comes back shorter than asked)
//!   and the end of the token that created it (Vault revokes a token's leases
//!   with it). Until the cap has been seen once, a secret uses the lifetime
//!   learned from its previous lease.
//! * **Replace** (issue a new credential, publish it at once) when less than
//!   `rotate_before` is left before the hard end, or before the plain end of
//!   a non-renewable lease.
//!
//! * **Verify** (look the lease up) `verify_every` after Vault last vouched
//!   for it (its issue, a renewal or a lookup), unless a renewal or
//!   replacement comes first: that request proves the lease exists anyway,
//!   so a lease renewed more often than `verify_every` costs no lookups.
//!
//! `rotate_before` defaults to ⅓ of the lease's lifetime with a 30 s floor,
//! and never more than half the lifetime: a third leaves the app as long to
//! move to the new credential as the renewal rhythm gives Vault to answer,
//! the floor covers connection pools that take a while to cycle, and the cap
//! keeps short-lived leases (seconds, in tests) from being replaced as soon
//! as they are issued.

use std::time::Duration;

use tokio::time::Instant;

/// Floor of the default `rotate_before`.
pub const ROTATE_FLOOR: Duration = Duration::from_secs(30);

/// `t + d` without the panic `Instant + Duration` has on overflow: a time
/// past what the clock can hold is as good as never.
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(crate::limits::MAX_TTL)).unwrap_or(t)
}

/// When to renew a lease ending at `expires_at`. `jitter` is in `[0, 1)`.
pub fn renew_at(now: Instant, expires_at: Instant, jitter: f64) -> Instant {
    let left = expires_at.saturating_duration_since(now);
    after(now, left.mul_f64(2.0 / 3.0 - 0.1 * jitter.clamp(0.0, 1.0)))
}

/// How long before its end a lease of `lifetime` is replaced.
pub fn rotate_before(lifetime: Duration, configured: Option<Duration>) -> Duration {
    configured.unwrap_or_else(|| (lifetime / 3).max(ROTATE_FLOOR)).min(lifetime / 2)
}

/// When to look a lease up next: `every` after Vault last vouched for it, or
/// `None` when the next step (at `step_at`) talks to Vault about it first.
/// `step_at` must be the step planned for the lease's current times, not one
/// recomputed at each wake-up: [`renew_at`] is relative to now, so replanning
/// after every lookup would push the renewal later each time.
pub fn verify_at(vouched_at: Instant, every: Duration, step_at: Instant) -> Option<Instant> {
    let at = after(vouched_at, every);
    (at < step_at).then_some(at)
}

/// What the schedule knows about one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// Issue time.
    pub issued_at: Instant,
    /// Current end.
    pub expires_at: Instant,
    /// Whether it may be renewed.
    pub renewable: bool,
    /// The end renewals cannot pass (max_ttl cap or parent token end), when known.
    pub hard_end: Option<Instant>,
}

/// The next thing to do with a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Renew it at this time.
    Renew(Instant),
    /// Issue its replacement at this time.
    Replace(Instant),
}

impl Step {
    /// When the step is due.
    pub fn at(self) -> Instant {
        match self {
            Step::Renew(t) | Step::Replace(t) => t,
        }
    }
}

/// Decides the next step for a lease.
pub fn next_step(now: Instant, l: LeaseTimes, configured: Option<Duration>, jitter: f64) -> Step {
    // The moment the credential will stop working for sure.
    let end = if l.renewable { l.hard_end } else { Some(l.hard_end.map_or(l.expires_at, |h| h.min(l.expires_at))) };
    let replace = end.map(|end| {
        let lifetime = end.saturating_duration_since(l.issued_at);
        end.checked_sub(rotate_before(lifetime, configured)).unwrap_or(now).max(now)
    });
    let renew = renew_at(now, l.expires_at, jitter);
    match replace {
        Some(r) if !l.renewable || r <= renew => Step::Replace(r),
        // Renewing cannot help once the lease is at its hard end.
        _ if l.hard_end.is_some_and(|h| l.expires_at >= h) => Step::Replace(replace.unwrap_or(now)),
        _ => Step::Renew(renew),
    }
}

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// For errors that fix themselves: connection refused, 5xx, sealed.
    pub fn transient() -> Backoff {
        Backoff { base: Duration::from_millis(250), cap: Duration::from_secs(5), attempt: 0 }
    }

    /// For refusals a human must fix: permission denied, unknown role.
    pub fn permanent() -> Backoff {
        Backoff { base: Duration::from_secs(5), cap: Duration::from_secs(60), attempt: 0 }
    }

    /// The wait before the next attempt; `jitter` in `[0, 1)`. The result
    /// lies in `[d/2, d]` where `d` doubles per attempt up to the cap.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let d = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random number in `[0, 1)` for the jitter arguments above.
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_two_thirds_never_at_issue() {
        let now = Instant::now();
        let l = LeaseTimes { issued_at: now, expires_at: now + s(30), renewable: true, hard_end: None };
        assert_eq!(next_step(now, l, None, 0.0), Step::Renew(now + s(20)));
        // Jitter only ever brings the renewal earlier, by at most 10 % of the time left.
        let Step::Renew(t) = next_step(now, l, None, 0.999) else { panic!() };
        assert!(t >= now + s(17) && t <= now + s(20), "{:?}", t - now);
    }

    #[tokio::test(start_paused = true)]
    async fn replaces_before_the_cap_once_known() {
        let now = Instant::now();
        // Issued 60 s ago, capped at 100 s lifetime: rotate_before = 33.3 s (a third).
        let l = LeaseTimes {
            issued_at: now - s(60),
            expires_at: now + s(20),
            renewable: true,
            hard_end: Some(now + s(40)),
        };
        assert_eq!(next_step(now, l, None, 0.0), Step::Replace(now + s(40) - s(100) / 3));
        // Capped at 10 s: half the lifetime, 5 s; already inside it → now.
        let l =
            LeaseTimes { issued_at: now - s(8), expires_at: now + s(2), renewable: true, hard_end: Some(now + s(2)) };
        assert_eq!(next_step(now, l, None, 0.0), Step::Replace(now));
        // Long lease: 24 h lifetime → rotate 8 h before the end; renew until then.
        let l =
            LeaseTimes { issued_at: now, expires_at: now + s(3600), renewable: true, hard_end: Some(now + s(86400)) };
        assert_eq!(next_step(now, l, None, 0.0), Step::Renew(now + s(2400)));
        let later = now + s(86400 - 8 * 3600 - 100);
        let l = LeaseTimes { expires_at: later + s(3600), ..l };
        assert_eq!(next_step(later, l, None, 0.0), Step::Replace(now + s(16 * 3600)));
    }

    #[tokio::test(start_paused = true)]
    async fn configured_rotate_before_wins_up_to_half_life() {
        let now = Instant::now();
        let l = LeaseTimes { issued_at: now, expires_at: now + s(600), renewable: false, hard_end: None };
        assert_eq!(next_step(now, l, Some(s(60)), 0.0), Step::Replace(now + s(540)));
        assert_eq!(next_step(now, l, Some(s(3600)), 0.0), Step::Replace(now + s(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn non_renewable_is_replaced_not_renewed() {
        let now = Instant::now();
        let l = LeaseTimes { issued_at: now, expires_at: now + s(90), renewable: false, hard_end: None };
        assert_eq!(next_step(now, l, None, 0.0), Step::Replace(now + s(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn parent_token_end_pulls_replacement_forward() {
        let now = Instant::now();
        // The lease could live a day, but its token dies in 10 minutes.
        let l = LeaseTimes { issued_at: now, expires_at: now + s(3600), renewable: true, hard_end: Some(now + s(600)) };
        assert_eq!(next_step(now, l, None, 0.0), Step::Replace(now + s(400)));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_durations_never_overflow_the_clock() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
        let far = after(now, Duration::MAX);
        let l = LeaseTimes { issued_at: now, expires_at: far, renewable: true, hard_end: Some(far) };
        let step = next_step(now, l, None, 0.5);
        assert!(step.at() >= now);
        let l = LeaseTimes { renewable: false, hard_end: None, ..l };
        assert!(next_step(now, l, Some(Duration::MAX), 0.999).at() >= now);
    }

    #[tokio::test(start_paused = true)]
    async fn verify_cadence_follows_the_last_word_from_vault() {
        let issued = Instant::now();
        let l = LeaseTimes { issued_at: issued, expires_at: issued + s(3600), renewable: true, hard_end: None };
        let every = s(60);
        // An hour-long lease renews at 40 min: a lookup every minute until then.
        let mut vouched = issued;
        let mut lookups = 0;
        // The step is planned once per lease state: waking up for a lookup
        // must not move the renewal (⅔ of the time left would drift later).
        let step = next_step(Instant::now(), l, None, 0.0).at();
        while let Some(at) = verify_at(vouched, every, step) {
            tokio::time::sleep_until(at).await;
            lookups += 1;
            vouched = Instant::now();
        }
        assert_eq!(lookups, 39, "one lookup a minute before the renewal at 40 min");
        assert!(Instant::now() - issued <= s(40 * 60), "a revoked lease is noticed within verify_every");
        // A lease renewed more often than verify_every needs no lookup at all.
        let now = Instant::now();
        let short = LeaseTimes { issued_at: now, expires_at: now + s(30), renewable: true, hard_end: None };
        assert_eq!(verify_at(now, every, next_step(now, short, None, 0.0).at()), None);
        // A 2 s cadence (as in the tests) on a 60 s lease: due 2 s after the last word.
        let l = LeaseTimes { issued_at: now, expires_at: now + s(60), renewable: true, hard_end: None };
        assert_eq!(verify_at(now, s(2), next_step(now, l, None, 0.0).at()), Some(now + s(2)));
    }

    #[test]
    fn rotate_before_defaults() {
        assert_eq!(rotate_before(s(86400), None), s(28800));
        assert_eq!(rotate_before(s(90), None), s(30));
        assert_eq!(rotate_before(s(10), None), s(5));
    }

    #[test]
    fn backoff_grows_to_cap() {
        let mut b = Backoff::transient();
        let waits: Vec<_> = (0..8).map(|_| b.next(0.999)).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert!(*waits.last().unwrap() <= s(5));
        assert!(waits[0] >= Duration::from_millis(125));
        b.reset();
        assert!(b.next(0.0) <= Duration::from_millis(250));
    }
}
