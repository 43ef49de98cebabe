//! `POST /v1/secrets/{name}/rejected?version=N`: the app says the database
//! refused the credential it was given.
//!
//! A refused login is the first sign of a lease revoked behind vaultlet's
//! back (an operator's `bao lease revoke`, or a token revoked with all its
//! leases). The report makes the secret's task look the lease up at once
//! instead of at its next `verify_every` turn; if Vault no longer knows it,
//! the credential is withdrawn and replaced, and the answer carries the new
//! version as soon as it is published. A credential that still checks out
//! is not replaced: a refused login can also be a typo in the app or a
//! database that lost a role on its own, and replacing on every report would
//! let any allowed caller make vaultlet issue credentials at will.
//!
//! What a report can cost is bounded: the lease task answers reports that
//! come within [`CHECK_INTERVAL`] of its last lookup from that lookup, and
//! each caller uid may report [`CALLER_LIMIT`] times per [`CALLER_WINDOW`].
//! Only callers allowed to read the secret may report it (checked in
//! [`crate::api`] before anything here runs; a name that is not configured
//! is refused there like a secret the caller may not read).

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::store::Store;

pub(crate) mod registry;
pub use registry::{CALLER_LIMIT, CALLER_WINDOW, CHECK_INTERVAL, Check, Checked, Registry};

/// Longest a report waits for the replacement to be published.
pub const REPLACE_WAIT: Duration = Duration::from_secs(15);

/// The answer: the version to use now, and whether it differs from the one
/// reported (`replaced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Answer {
    /// The current version.
    pub version: u64,
    /// Whether it is another credential than the reported one.
    pub replaced: bool,
}

/// Why a report was not answered with a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Bad query.
    #[error("{0}")]
    BadRequest(String),
    /// No such secret. The socket never gets here with such a name: it
    /// refuses it first, as it refuses a secret the caller may not read.
    #[error("no secret named `{0}`")]
    NotFound(String),
    /// Caller over its limit.
    #[error("too many reports; slow down")]
    TooMany,
    /// No usable credential (yet).
    #[error("{0}")]
    Unavailable(String),
}

impl Refused {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refused::BadRequest(_) => 400,
            Refused::NotFound(_) => 404,
            Refused::TooMany => 429,
            Refused::Unavailable(_) => 503,
        }
    }
}

fn parse_version(q: Option<&str>) -> Result<u64, Refused> {
    let mut version = None;
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        match pair.split_once('=') {
            Some(("version", v)) => {
                version = Some(v.parse().map_err(|_| {
                    Refused::BadRequest("`version` must be the version number the credential came with".into())
                })?)
            }
            _ => return Err(Refused::BadRequest("unknown query parameter; use `version`".into())),
        }
    }
    version.ok_or_else(|| {
        Refused::BadRequest("`version` is required: the version the refused credential came with".into())
    })
}

/// Handles a report by caller `uid` (already allowed to read `name`).
pub async fn report(store: &Store, uid: u32, name: &str, query: Option<&str>) -> Result<Answer, Refused> {
    let reported = parse_version(query)?;
    let Some(entry) = store.snapshot().get(name).cloned() else { return Err(Refused::NotFound(name.to_owned())) };
    let Some(task) = store.rejections().task(name) else {
        return Err(Refused::BadRequest(format!(
            "`{name}` is not a database secret; only leased credentials can be reported"
        )));
    };
    if !store.rejections().admit(uid) {
        return Err(Refused::TooMany);
    }
    let live = entry.live(Instant::now()).is_some();
    if reported != entry.version && live {
        // The caller holds an older credential (or one from before a
        // restart): the current one is its answer.
        return Ok(Answer { version: entry.version, replaced: true });
    }
    if reported != entry.version || !live {
        return newer_than(store, name, reported, REPLACE_WAIT).await;
    }
    let (tx, rx) = oneshot::channel();
    // The task takes reports between its own requests; a full queue waits
    // like a slow answer does.
    let asked = async {
        task.send(Check { reply: tx }).await.ok()?;
        rx.await.ok()
    };
    let checked = match tokio::time::timeout(REPLACE_WAIT, asked).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(Refused::Unavailable("vaultlet is shutting down".into())),
        Err(_) => return Err(Refused::Unavailable("the lease could not be checked in time".into())),
    };
    tracing::info!(secret = %name, uid, version = reported, outcome = ?checked, "app reported a rejected credential");
    match checked {
        Checked::Valid => Ok(Answer { version: entry.version, replaced: false }),
        Checked::Gone => newer_than(store, name, reported, REPLACE_WAIT).await,
        // Whether the token is dead is known within a round trip; if it is
        // not, the same credential stands.
        Checked::TokenChecked => match newer_than(store, name, reported, Duration::from_secs(5)).await {
            Err(Refused::Unavailable(_)) if store.snapshot()[name].version == reported => {
                Ok(Answer { version: reported, replaced: false })
            }
            r => r,
        },
        Checked::Failed(why) => Err(Refused::Unavailable(format!("could not check the lease: {why}"))),
    }
}

/// Waits until a live version other than `reported` is published.
async fn newer_than(store: &Store, name: &str, reported: u64, wait: Duration) -> Result<Answer, Refused> {
    let deadline = Instant::now() + wait;
    let mut rx = store.subscribe();
    loop {
        let snap = rx.borrow_and_update().clone();
        let entry = &snap[name];
        let now = Instant::now();
        if entry.live(now).is_some() && entry.version != reported {
            return Ok(Answer { version: entry.version, replaced: true });
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Err(Refused::Unavailable("vaultlet is shutting down".into())) },
            _ = tokio::time::sleep_until(deadline) => {
                let reason = store.unavailable(entry, now).unwrap_or_else(|| "no replacement yet".into());
                return Err(Refused::Unavailable(format!("no new credential yet: {reason}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_required_and_numeric() {
        assert_eq!(parse_version(Some("version=7")), Ok(7));
        assert!(matches!(parse_version(None), Err(Refused::BadRequest(_))));
        assert!(matches!(parse_version(Some("version=x")), Err(Refused::BadRequest(_))));
        assert!(matches!(parse_version(Some("version=1&wait=3s")), Err(Refused::BadRequest(_))));
    }

    fn creds(user: &str) -> crate::secret::SecretData {
        let mut d = crate::secret::SecretData::default();
        d.insert("username", secrecy::SecretString::from(user.to_owned()));
        d
    }

    fn lease() -> crate::store::LeaseView {
        crate::store::LeaseView {
            expires_at: Instant::now() + Duration::from_secs(60),
            ttl: Duration::from_secs(60),
            renewable: true,
        }
    }

    /// A stand-in lease task: answers each report with `found`, and on
    /// `Gone` withdraws and publishes a replacement a little later.
    fn task(store: &Store, found: Checked) -> tokio::task::JoinHandle<usize> {
        let mut rx = store.rejections().register("db");
        let store = store.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(c) = rx.recv().await {
                n += 1;
                let _ = c.reply.send(found.clone());
                if found == Checked::Gone {
                    store.withdraw("db", "lease was revoked".into());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    store.publish("db", creds(&format!("u{n}")), Some(lease()));
                }
            }
            n
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_credential_is_kept_and_a_gone_one_answers_with_its_replacement() {
        let store = Store::new(["db", "kv"]);
        store.publish("db", creds("u0"), Some(lease()));
        let t = task(&store, Checked::Valid);
        let a = report(&store, 1000, "db", Some("version=1")).await.unwrap();
        assert_eq!(a, Answer { version: 1, replaced: false });
        t.abort();

        let store = Store::new(["db", "kv"]);
        store.publish("db", creds("u0"), Some(lease()));
        let t = task(&store, Checked::Gone);
        let started = Instant::now();
        let a = report(&store, 1000, "db", Some("version=1")).await.unwrap();
        assert_eq!(a, Answer { version: 2, replaced: true });
        assert!(started.elapsed() >= Duration::from_millis(300), "answered once the replacement was published");
        // An older version answers at once, without asking the task.
        let a = report(&store, 1000, "db", Some("version=1")).await.unwrap();
        assert_eq!(a, Answer { version: 2, replaced: true });
        assert!(matches!(report(&store, 1000, "kv", Some("version=1")).await, Err(Refused::BadRequest(_))));
        assert!(matches!(report(&store, 1000, "nope", Some("version=1")).await, Err(Refused::NotFound(_))));
        t.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_changes_nothing_and_says_so() {
        let store = Store::new(["db"]);
        store.publish("db", creds("u0"), Some(lease()));
        let _t = task(&store, Checked::Failed("vault unreachable".into()));
        let e = report(&store, 1000, "db", Some("version=1")).await.unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(e.to_string().contains("vault unreachable"), "{e}");
        assert_eq!(store.snapshot()["db"].version, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_over_its_limit_is_refused_then_let_in_again() {
        let r = Registry::default();
        for _ in 0..CALLER_LIMIT {
            assert!(r.admit(1000));
        }
        assert!(!r.admit(1000), "the report past the limit is refused");
        assert!(r.admit(1001), "another caller is not affected");
        tokio::time::advance(CALLER_WINDOW).await;
        assert!(r.admit(1000), "a new window admits again");
    }
}
