//! The operation table: every request vaultlet sends, described once.
//!
//! A [`Kind`] row gives the metric label, the words errors use, the
//! capability a 403 hint names, whether a lost answer allows sending it
//! again and whether it issues something; an [`Op`] is one such request on
//! one path, built by its constructor. A login's words come from its auth
//! method ([`LoginWords`]), which the table's row only frames.

use crate::secret::LeaseId;

/// What vaultlet may ask of Vault, each described once: the metric label,
/// the words errors use, the capability a 403 hint names, and whether a
/// lost answer allows sending it again. The path a policy must grant is
/// built by [`Op`]'s constructor for that kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Login,
    WrapLookup,
    Unwrap,
    RenewSelf,
    LookupSelf,
    RevokeSelf,
    PkiIssue,
    PkiRevoke,
    DbCreds,
    DbRole,
    LeaseRenew,
    LeaseLookup,
    LeaseRevoke,
    KvRead,
    CapabilitiesSelf,
}

/// A login needs no policy: a 403 there means bad credentials, which the
/// method names ([`LoginWords::credentials`]).
const NO_POLICY: &str = "none";

/// How errors about a login speak of its auth method: our words, given by
/// each method in [`crate::auth`], never a server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginWords {
    /// The method's name: errors about a login say "`method` login"
    /// ("AppRole login").
    pub method: &'static str,
    /// What a refused login needs checked, where other operations name a
    /// policy capability ("role_id and secret_id").
    pub credentials: &'static str,
    /// How to fix a refused login (a 400 or 403), for the error's hint.
    pub fix: &'static str,
}

/// One row of the operation table.
pub(super) struct Spec {
    /// Metric label (`vaultlet_vault_requests_total{operation=…}`); users
    /// may scrape these, so they never change.
    pub(super) name: &'static str,
    /// The HTTP method, for trace lines.
    pub(super) method: &'static str,
    /// The start of every error message about it.
    pub(super) what: &'static str,
    /// What the token's policy needs on the path.
    pub(super) capability: &'static str,
    /// Safe to send again after an answer was lost. Issuing calls are not:
    /// a lost answer may still have created a token or a credential.
    pub(super) idempotent: bool,
    /// Takes from the process-wide issue bucket first.
    pub(super) issues: bool,
}

impl Kind {
    /// Every kind, for the table's own tests.
    #[cfg(test)]
    pub(super) const ALL: [Kind; 15] = [
        Kind::Login,
        Kind::WrapLookup,
        Kind::Unwrap,
        Kind::RenewSelf,
        Kind::LookupSelf,
        Kind::RevokeSelf,
        Kind::PkiIssue,
        Kind::PkiRevoke,
        Kind::DbCreds,
        Kind::DbRole,
        Kind::LeaseRenew,
        Kind::LeaseLookup,
        Kind::LeaseRevoke,
        Kind::KvRead,
        Kind::CapabilitiesSelf,
    ];

    pub(super) const fn spec(self) -> Spec {
        const fn s(
            name: &'static str,
            method: &'static str,
            what: &'static str,
            capability: &'static str,
            idempotent: bool,
            issues: bool,
        ) -> Spec {
            Spec { name, method, what, capability, idempotent, issues }
        }
        // Label, method, error words, capability, idempotent, issues.
        match self {
            Kind::Login => s("login", "POST", "login", NO_POLICY, false, true),
            Kind::WrapLookup => s("wrap_lookup", "POST", "wrapping token lookup", "update", true, false),
            Kind::Unwrap => s("unwrap", "POST", "secret_id unwrap", "update", false, false),
            Kind::RenewSelf => s("renew_self", "POST", "token renewal", "update", true, false),
            Kind::LookupSelf => s("lookup_self", "GET", "token lookup", "read", true, false),
            Kind::RevokeSelf => s("revoke_self", "POST", "token revocation", "update", true, false),
            Kind::PkiIssue => s("pki_issue", "POST", "certificate", "update", false, true),
            Kind::PkiRevoke => s("pki_revoke", "POST", "certificate revocation", "update", true, false),
            Kind::DbCreds => s("db_creds", "GET", "database credentials", "read", false, true),
            Kind::DbRole => s("db_role", "GET", "database role", "read", true, false),
            Kind::LeaseRenew => s("lease_renew", "PUT", "lease renewal of", "update", true, false),
            Kind::LeaseLookup => s("lease_lookup", "PUT", "lease lookup of", "update", true, false),
            Kind::LeaseRevoke => s("lease_revoke", "PUT", "lease revocation of", "update", true, false),
            Kind::KvRead => s("kv_read", "GET", "kv secret", "read", true, false),
            Kind::CapabilitiesSelf => s("capabilities_self", "POST", "capability check", "update", true, false),
        }
    }
}

/// One operation on one path: its [`Kind`], the path a policy must grant,
/// and the words for errors about it.
pub(super) struct Op {
    pub(super) kind: Kind,
    /// What errors call it: the kind's words, then what it acts on.
    pub(super) what: String,
    /// The policy path (a lease's path without its unique id).
    pub(super) path: String,
    /// A login's method words; `None` for every other operation.
    pub(super) login: Option<LoginWords>,
}

impl Op {
    /// `subject`, when given, follows the kind's words in error messages.
    pub(super) fn new(kind: Kind, path: String, subject: Option<&str>) -> Op {
        let spec = kind.spec();
        let what = match subject {
            Some(s) => format!("{} {s}", spec.what),
            None => spec.what.to_owned(),
        };
        Op { kind, what, path, login: None }
    }

    /// The method's name comes before the row's words ("AppRole login").
    pub(super) fn login(mount: &str, words: LoginWords) -> Op {
        let what = format!("{} {}", words.method, Kind::Login.spec().what);
        Op { kind: Kind::Login, what, path: format!("auth/{mount}/login"), login: Some(words) }
    }

    pub(super) fn wrap_lookup() -> Op {
        Op::new(Kind::WrapLookup, "sys/wrapping/lookup".into(), None)
    }

    pub(super) fn unwrap() -> Op {
        Op::new(Kind::Unwrap, "sys/wrapping/unwrap".into(), None)
    }

    pub(super) fn renew_self() -> Op {
        Op::new(Kind::RenewSelf, "auth/token/renew-self".into(), None)
    }

    pub(super) fn lookup_self() -> Op {
        Op::new(Kind::LookupSelf, "auth/token/lookup-self".into(), None)
    }

    pub(super) fn revoke_self() -> Op {
        Op::new(Kind::RevokeSelf, "auth/token/revoke-self".into(), None)
    }

    pub(super) fn pki_issue(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/issue/{role}");
        Op::new(Kind::PkiIssue, path.clone(), Some(&path))
    }

    pub(super) fn pki_revoke(mount: &str) -> Op {
        let path = format!("{mount}/revoke");
        Op::new(Kind::PkiRevoke, path.clone(), Some(&path))
    }

    pub(super) fn db_creds(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/creds/{role}");
        Op::new(Kind::DbCreds, path.clone(), Some(&path))
    }

    pub(super) fn db_role(mount: &str, role: &str) -> Op {
        let path = format!("{mount}/roles/{role}");
        Op::new(Kind::DbRole, path.clone(), Some(&path))
    }

    /// Lease paths leave out the lease's unique part: it is not secret, but
    /// a policy grants the prefix, and logs need no more.
    pub(super) fn lease_renew(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseRenew, format!("sys/leases/renew/{}", lease.path()), Some(lease.path()))
    }

    /// The lookup has no path form (see [`LookupLeaseRequest`](super::endpoints::LookupLeaseRequest)).
    pub(super) fn lease_lookup(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseLookup, "sys/leases/lookup".into(), Some(lease.path()))
    }

    pub(super) fn lease_revoke(lease: &LeaseId) -> Op {
        Op::new(Kind::LeaseRevoke, format!("sys/leases/revoke/{}", lease.path()), Some(lease.path()))
    }

    pub(super) fn kv_read(mount: &str, path: &str, version: u8) -> Op {
        let api_path = if version == 2 { format!("{mount}/data/{path}") } else { format!("{mount}/{path}") };
        Op::new(Kind::KvRead, api_path, Some(&format!("{mount}/{path}")))
    }

    /// `vaultlet policy --check` only.
    pub(super) fn capabilities_self() -> Op {
        Op::new(Kind::CapabilitiesSelf, "sys/capabilities-self".into(), None)
    }

    /// The metric label.
    pub(super) fn name(&self) -> &'static str {
        self.kind.spec().name
    }

    /// What the token's policy needs; for a login, what to check instead
    /// ("none (check role_id and secret_id)").
    pub(super) fn capability(&self) -> String {
        let cap = self.kind.spec().capability;
        match self.login {
            Some(w) => format!("{cap} (check {})", w.credentials),
            None => cap.to_owned(),
        }
    }

    pub(super) fn idempotent(&self) -> bool {
        self.kind.spec().idempotent
    }
}

/// One thing a token's policy must allow for vaultlet to do its work: the
/// path and capability of one [`Kind`] of request, for one secret or for the
/// token itself. [`grants`] lists them for a configuration; `vaultlet
/// policy` prints them as HCL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The request as sent, for the comment (`PUT sys/leases/renew/<lease_id>`).
    pub request: String,
    /// The policy path (a glob ending in `*` for lease paths).
    pub path: String,
    /// The capability needed on it.
    pub capability: &'static str,
    /// For a call whose lease id travels in the body (the lookup): the
    /// `lease_id` values to allow (`allowed_parameters`).
    pub lease_ids: Option<String>,
    /// Why and when vaultlet sends it.
    pub purpose: &'static str,
    /// The secret that needs it; `None` for the token's own calls.
    pub secret: Option<String>,
}

impl Grant {
    fn new(kind: Kind, path: String, shown: String, secret: Option<&str>, purpose: &'static str) -> Grant {
        let spec = kind.spec();
        Grant {
            request: format!("{} {shown}", spec.method),
            path,
            capability: spec.capability,
            lease_ids: None,
            purpose,
            secret: secret.map(str::to_owned),
        }
    }

    fn of(op: Op, secret: Option<&str>, purpose: &'static str) -> Grant {
        Grant::new(op.kind, op.path.clone(), op.path, secret, purpose)
    }
}

/// Every grant `config` needs, and no other: the token's own calls, then
/// each secret's, in the order of the configuration. Calls made with
/// another token (a login, the unwrap of a wrapped secret_id) need none.
///
/// This is the one place that says which operations a secret kind performs;
/// a new kind adds its rows here, so `vaultlet policy` and the test that
/// runs vaultlet under exactly this policy follow.
pub fn grants(config: &crate::config::Config) -> Vec<Grant> {
    use crate::config::{RevokeOld, SecretSource};

    let mut out = vec![
        Grant::of(Op::renew_self(), None, "keeps the token alive"),
        Grant::of(Op::lookup_self(), None, "checks whether the token is still alive after a 403"),
        Grant::of(
            Op::revoke_self(),
            None,
            "gives up a token replaced by a new login once its leases are gone, and the token at shutdown",
        ),
    ];
    // A replaced lease or certificate is revoked after its drain, the live
    // ones at shutdown, and leases in a state file that cannot be resumed at
    // start.
    let revokes = |s: &crate::config::SecretSpec, state: bool| {
        s.revoke_old == RevokeOld::Drain || config.revoke_on_shutdown || state
    };
    for s in &config.secrets {
        let name = Some(s.name.as_str());
        match &s.source {
            SecretSource::Database { mount, role } => {
                let creds = format!("{mount}/creds/{role}");
                out.push(Grant::of(Op::db_creds(mount, role), name, "issues the credentials"));
                out.push(Grant::of(
                    Op::db_role(mount, role),
                    name,
                    "reads the role's max_ttl once at start, so the first credential is replaced before it",
                ));
                out.push(Grant::new(
                    Kind::LeaseRenew,
                    format!("sys/leases/renew/{creds}/*"),
                    "sys/leases/renew/<lease_id>".into(),
                    name,
                    "renews the credentials' leases",
                ));
                let mut lookup = Grant::new(
                    Kind::LeaseLookup,
                    "sys/leases/lookup".into(),
                    "sys/leases/lookup {\"lease_id\": …}".into(),
                    name,
                    "checks that the held lease still exists (every verify_every, when the app reports a refused login, after a restart)",
                );
                lookup.lease_ids = Some(format!("{creds}/*"));
                out.push(lookup);
                if revokes(s, config.state.is_some()) {
                    out.push(Grant::new(
                        Kind::LeaseRevoke,
                        format!("sys/leases/revoke/{creds}/*"),
                        "sys/leases/revoke/<lease_id>".into(),
                        name,
                        "revokes replaced leases after their drain, live ones at shutdown (revoke_on_shutdown) and those of a state file it cannot resume",
                    ));
                }
            }
            SecretSource::Pki(req) => {
                out.push(Grant::of(Op::pki_issue(&req.mount, &req.role), name, "issues the certificate and its key"));
                if revokes(s, false) {
                    out.push(Grant::of(
                        Op::pki_revoke(&req.mount),
                        name,
                        "revokes replaced certificates after their drain (revoke_old) and live ones at shutdown (revoke_on_shutdown)",
                    ));
                }
            }
            SecretSource::Kv { mount, path, version } => {
                out.push(Grant::of(Op::kv_read(mount, path, *version), name, "reads the secret every refresh"));
            }
        }
    }
    out
}
