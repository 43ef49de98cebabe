//! What to do after a failed attempt: decided once, here, for every loop.
//!
//! The auth task and every secret task (database, KV, PKI, drain) make one
//! attempt per turn and hand a failure to [`decide`]. The answer depends on
//! the failure's [`Class`] and on what was attempted ([`Attempt`]), never on
//! the wording of an error:
//!
//! * a transient failure (connection refused, 5xx, 429, sealed) is retried
//!   after the fast backoff; one a human must fix (an unknown role, an answer
//!   vaultlet cannot read) after the slow one;
//! * a 403 on a secret may mean the token is dead: the task reports it to the
//!   auth task (which checks with `lookup-self`) and retries after the slow
//!   backoff, or at once when a new token arrives ([`Retry::NewToken`]). A
//!   403 from a missing capability thus costs one slow retry per backoff, and
//!   a revoked token no more than the re-login;
//! * a held lease Vault no longer knows is withdrawn and replaced (or,
//!   draining, dropped) instead of retried ([`Retry::Gone`]);
//! * a token renewal that cannot succeed before the token ends becomes a new
//!   login ([`Retry::Relogin`]);
//! * a draining lease keeps its own rhythm: a failed renewal is tried again
//!   at the next turn of its schedule ([`Retry::Schedule`]).
//!
//! A success resets both backoffs ([`Backoffs::reset`]).

use std::time::Duration;

use super::schedule::{self, Backoff};
use crate::vault::VaultError;

/// A failure, as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Fixes itself: connection refused, timeouts, 5xx, 429, 412.
    Transient,
    /// 403: a dead token, or a policy without the capability.
    Forbidden,
    /// The lease is not known to Vault any more (revoked or expired).
    Gone,
    /// A human must fix it: unknown role, bad file, unreadable answer.
    Permanent,
}

// === impl Class ===

impl Class {
    /// The class of a Vault error.
    pub fn of(e: &VaultError) -> Class {
        if e.is_lease_gone() {
            Class::Gone
        } else if e.is_forbidden() {
            Class::Forbidden
        } else if e.is_transient() {
            Class::Transient
        } else {
            Class::Permanent
        }
    }
}

/// What was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A login, with any auth method.
    Login,
    /// A token renew-self; `alive` while the token has not expired.
    TokenRenewal {
        /// The token is still valid (a retry can still save it).
        alive: bool,
    },
    /// Issuing or reading a secret (database credentials, KV, a certificate).
    Secret,
    /// Renewing the lease a secret's task holds.
    Lease,
    /// Renewing a replaced lease that is draining.
    Drain,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this wait.
    After(Duration),
    /// The token may be dead: report it, and try again after this wait or as
    /// soon as a new token arrives, whichever comes first.
    NewToken(Duration),
    /// The token cannot be kept: log in again now.
    Relogin,
    /// The lease is gone: withdraw and replace it (or stop draining it).
    Gone,
    /// Nothing extra: the schedule's next turn tries again.
    Schedule,
}

// === impl Retry ===

impl Retry {
    /// The wait before the next attempt, if there is one.
    pub fn wait(self) -> Option<Duration> {
        match self {
            Retry::After(d) | Retry::NewToken(d) => Some(d),
            Retry::Relogin | Retry::Gone | Retry::Schedule => None,
        }
    }
}

/// The fast and the slow backoff of one loop.
#[derive(Debug)]
pub struct Backoffs {
    transient: Backoff,
    permanent: Backoff,
}

impl Default for Backoffs {
    fn default() -> Self {
        Backoffs { transient: Backoff::transient(), permanent: Backoff::permanent() }
    }
}

// === impl Backoffs ===

impl Backoffs {
    /// After a success: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.transient.reset();
        self.permanent.reset();
    }

    /// A new token is worth trying at once: the slow backoff starts over.
    pub fn new_token(&mut self) {
        self.permanent.reset();
    }

    /// The next fast wait (also used to look a resumed lease up again).
    pub fn transient(&mut self, jitter: f64) -> Duration {
        self.transient.next(jitter)
    }

    fn permanent(&mut self, jitter: f64) -> Duration {
        self.permanent.next(jitter)
    }
}

/// Decides what follows a failure of class `class` during `attempt`.
pub fn decide(class: Class, attempt: Attempt, b: &mut Backoffs) -> Retry {
    decide_with(class, attempt, b, schedule::jitter())
}

/// [`decide`] with the jitter given (tests).
pub fn decide_with(class: Class, attempt: Attempt, b: &mut Backoffs, jitter: f64) -> Retry {
    match (attempt, class) {
        (Attempt::TokenRenewal { alive: true }, Class::Transient) => Retry::After(b.transient(jitter)),
        (Attempt::TokenRenewal { .. }, _) => Retry::Relogin,
        (Attempt::Lease | Attempt::Drain, Class::Gone) => Retry::Gone,
        (Attempt::Drain, _) => Retry::Schedule,
        (Attempt::Secret | Attempt::Lease, Class::Forbidden) => Retry::NewToken(b.permanent(jitter)),
        (_, Class::Transient) => Retry::After(b.transient(jitter)),
        (Attempt::Login | Attempt::Secret | Attempt::Lease, _) => Retry::After(b.permanent(jitter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn transient_failures_retry_fast_and_refusals_slow() {
        let mut b = Backoffs::default();
        for attempt in [Attempt::Login, Attempt::Secret, Attempt::Lease] {
            let Retry::After(fast) = decide_with(Class::Transient, attempt, &mut b, 0.999) else { panic!() };
            assert!(fast <= Duration::from_millis(250), "{fast:?}");
            let Retry::After(slow) = decide_with(Class::Permanent, attempt, &mut b, 0.999) else { panic!() };
            assert!(slow >= Duration::from_millis(2500) && slow <= s(5), "{slow:?}");
            b.reset();
        }
    }

    #[test]
    fn a_forbidden_secret_waits_for_a_new_token_but_a_forbidden_login_does_not() {
        let mut b = Backoffs::default();
        assert!(matches!(decide_with(Class::Forbidden, Attempt::Secret, &mut b, 0.0), Retry::NewToken(_)));
        assert!(matches!(decide_with(Class::Forbidden, Attempt::Login, &mut b, 0.0), Retry::After(_)));
    }

    #[test]
    fn a_new_token_restarts_the_slow_backoff_only() {
        let mut b = Backoffs::default();
        for _ in 0..5 {
            decide_with(Class::Forbidden, Attempt::Secret, &mut b, 0.999);
            decide_with(Class::Transient, Attempt::Secret, &mut b, 0.999);
        }
        b.new_token();
        assert_eq!(decide_with(Class::Forbidden, Attempt::Secret, &mut b, 1.0), Retry::NewToken(s(5)));
        assert_eq!(decide_with(Class::Transient, Attempt::Secret, &mut b, 1.0), Retry::After(s(5)));
    }

    #[test]
    fn a_token_renewal_is_retried_only_while_the_token_lives_and_only_if_transient() {
        let mut b = Backoffs::default();
        let alive = Attempt::TokenRenewal { alive: true };
        assert!(matches!(decide_with(Class::Transient, alive, &mut b, 0.0), Retry::After(_)));
        for class in [Class::Forbidden, Class::Permanent, Class::Gone] {
            assert_eq!(decide_with(class, alive, &mut b, 0.0), Retry::Relogin, "{class:?}");
        }
        let dead = Attempt::TokenRenewal { alive: false };
        assert_eq!(decide_with(Class::Transient, dead, &mut b, 0.0), Retry::Relogin);
    }

    #[test]
    fn a_gone_lease_is_replaced_not_retried_and_a_drain_keeps_its_schedule() {
        let mut b = Backoffs::default();
        assert_eq!(decide_with(Class::Gone, Attempt::Lease, &mut b, 0.0), Retry::Gone);
        assert_eq!(decide_with(Class::Gone, Attempt::Drain, &mut b, 0.0), Retry::Gone);
        // Only a held lease can be gone; an issue or a read is not retried at once.
        assert!(matches!(decide_with(Class::Gone, Attempt::Secret, &mut b, 0.0), Retry::After(_)));
        assert!(matches!(decide_with(Class::Forbidden, Attempt::Lease, &mut b, 0.0), Retry::NewToken(_)));
        for class in [Class::Transient, Class::Forbidden, Class::Permanent] {
            assert_eq!(decide_with(class, Attempt::Drain, &mut b, 0.0), Retry::Schedule, "{class:?}");
        }
    }

    #[test]
    fn classes_follow_the_status_not_the_wording() {
        use crate::vault::fake::{Fail, Op};
        assert_eq!(Class::of(&Fail::Transient.error(Op::Kv)), Class::Transient);
        assert_eq!(Class::of(&Fail::Unavailable.error(Op::Kv)), Class::Transient);
        assert_eq!(Class::of(&Fail::Forbidden.error(Op::Kv)), Class::Forbidden);
        assert_eq!(Class::of(&Fail::LeaseGone.error(Op::RenewLease)), Class::Gone);
        assert_eq!(Class::of(&Fail::NotFound.error(Op::Kv)), Class::Permanent);
        assert_eq!(Class::of(&Fail::Malformed.error(Op::Kv)), Class::Permanent);
    }
}
