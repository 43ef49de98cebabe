//! A KV secret's task: re-read it every `refresh`; the store bumps the
//! version only when the content changed. A KV secret has no lease, so it
//! is not one of the leased kinds of [`super::leased`]: nothing to renew,
//! replace, drain or revoke.
//!
//! An outage keeps the last value served (it is still the right one); a
//! secret deleted in Vault, or no longer readable with a live token, is
//! withdrawn instead ([`withdrawn_in_vault`]) and read again with the slow
//! backoff, so a secret put back is served again.

use super::retry::{self, Attempt, Backoffs, Class};
use super::schedule;
use super::task::{Cx, Failure, Watches, failed};
use crate::auth::current_token;
use crate::config::SecretSpec;
use crate::secret::SecretData;
use crate::store::Store;
use crate::vault::VaultError;

/// Runs the task for one KV secret until shutdown.
pub(super) async fn run(cx: Cx, spec: SecretSpec, mount: &str, path: &str, version: u8) {
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
