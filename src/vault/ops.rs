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
    pub(super) const ALL: [Kind; 14] = [
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
