//! Our own types for secret material.
//!
//! Everything that leaves the `vault` module is converted into these types at
//! once. They hold values in [`SecretString`], print only their shape in
//! `Debug` (key names, never values) and deliberately do not implement
//! `Serialize`: the one place that writes values out (the socket API) has to
//! call `expose_secret` explicitly.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// The key/value pairs of one secret: a KV secret's map, or a database
/// credential's `username` and `password`.
#[derive(Clone, Default)]
pub struct SecretData {
    values: BTreeMap<String, SecretString>,
}

// === impl SecretData ===

impl SecretData {
    /// Builds a map from already-protected values.
    pub fn new(values: BTreeMap<String, SecretString>) -> Self {
        Self { values }
    }

    /// Inserts one value.
    pub fn insert(&mut self, key: impl Into<String>, value: SecretString) {
        self.values.insert(key.into(), value);
    }

    /// Looks up one value.
    pub fn get(&self, key: &str) -> Option<&SecretString> {
        self.values.get(key)
    }

    /// Iterates over the pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The key names (safe to log).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Whether both maps hold the same keys and values. Used to decide
    /// whether a re-read KV secret changed; the comparison never leaves this
    /// function.
    pub fn same_as(&self, other: &SecretData) -> bool {
        self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(other.values.iter())
                .all(|(a, b)| a.0 == b.0 && a.1.expose_secret().as_bytes() == b.1.expose_secret().as_bytes())
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for k in self.values.keys() {
            m.entry(k, &"***");
        }
        m.finish()
    }
}

/// A lease identifier as Vault returns it (`database/creds/api/AbC…`).
///
/// Lease ids are not credentials (using one needs a token allowed to renew or
/// revoke it), but they are not for logs either: `Debug` shows only the path
/// part before the random suffix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(String);

// === impl LeaseId ===

impl LeaseId {
    /// Wraps a lease id from a Vault response.
    pub fn new(id: String) -> Self {
        Self(id)
    }

    /// The full id, for the renew/revoke requests.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id without its random suffix, safe for logs.
    pub fn path(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(p, _)| p)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/…", self.path())
    }
}

/// What Vault told us about a lease, in our clock.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The lease id, used to renew and revoke.
    pub id: LeaseId,
    /// When the lease was issued.
    pub issued_at: Instant,
    /// The current end of the lease (moves forward with each renewal).
    pub expires_at: Instant,
    /// The TTL the lease was issued with; renewals ask for this increment.
    pub ttl: std::time::Duration,
    /// Whether Vault allows renewing it.
    pub renewable: bool,
}

/// A Vault token and what we know about its life.
#[derive(Clone)]
pub struct Token {
    /// The token itself.
    pub secret: SecretString,
    /// Counts logins; leases remember the generation that issued them.
    pub generation: u64,
    /// When it was issued (login).
    pub issued_at: Instant,
    /// The TTL it was issued with; renewals ask for this increment.
    pub ttl: std::time::Duration,
    /// The current end of the token (moves with renew-self).
    pub expires_at: Instant,
    /// The end renew-self cannot move past, once Vault has told us (a renewal
    /// that came back shorter than asked), or the end of a non-renewable token.
    pub hard_end: Option<Instant>,
    /// Whether renew-self may extend it.
    pub renewable: bool,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"***")
            .field("generation", &self.generation)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// Writes with `fill` twice: once only counting bytes, then into a buffer
/// of exactly that size. A buffer that grows is reallocated and its old
/// block freed unwiped, leaving the secret written so far behind; this one
/// is allocated once and wiped on drop. `fill` must write the same bytes
/// both times.
pub fn written_once<E>(
    mut fill: impl FnMut(&mut dyn std::io::Write) -> Result<(), E>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, E> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    fill(&mut count)?;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(count.0));
    fill(&mut *buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_values() {
        let mut d = SecretData::default();
        d.insert("password", SecretString::from("hunter2-very-secret".to_string()));
        let shown = format!("{d:?}");
        assert!(shown.contains("password"));
        assert!(!shown.contains("hunter2"), "{shown}");

        let t = Token {
            secret: SecretString::from("s.tokenvalue".to_string()),
            generation: 1,
            issued_at: Instant::now(),
            ttl: std::time::Duration::from_secs(1),
            expires_at: Instant::now(),
            hard_end: None,
            renewable: true,
        };
        assert!(!format!("{t:?}").contains("tokenvalue"));

        let id = LeaseId::new("database/creds/api/Xyz123".into());
        assert_eq!(format!("{id:?}"), "database/creds/api/…");
    }

    #[test]
    fn same_as_compares_values() {
        let mk = |v: &str| {
            let mut d = SecretData::default();
            d.insert("k", SecretString::from(v.to_string()));
            d
        };
        assert!(mk("a").same_as(&mk("a")));
        assert!(!mk("a").same_as(&mk("b")));
        assert!(!mk("a").same_as(&SecretData::default()));
    }
}
