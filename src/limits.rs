//! Numbers and names shared by the config checks and the parts they check.
//!
//! A leaf: it uses nothing of the crate, so `config` can check a value
//! against the same limit the task that uses it enforces, without importing
//! that task.

use std::time::Duration;

/// Default cap on a response body (`vault.max_response_size`). Vault's
/// answers to what vaultlet asks are a few KiB; a large KV secret fits.
pub const DEFAULT_MAX_RESPONSE: usize = 1 << 20;

/// Longest TTL taken from a server: a year. Longer values are clamped.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The fields a PKI secret has on the socket and in templates.
pub const PKI_FIELDS: [&str; 7] =
    ["certificate", "private_key", "issuing_ca", "ca_chain", "serial_number", "expiration", "not_before"];

/// vaultlet's own variables, never passed on whatever the config says:
/// Vault/OpenBao client settings (a token, an address), vaultlet's config
/// and socket, systemd's credentials and the service-manager sockets (with
/// `NOTIFY_SOCKET` the app could tell systemd that vaultlet is ready or
/// stopping). `*` ends a prefix.
pub const NEVER_INHERIT: &[&str] =
    &["VAULT_*", "BAO_*", "VAULTLET_*", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_*", "LISTEN_*"];

/// The [`NEVER_INHERIT`] entry that `name` (a name or a `PREFIX*`) falls
/// under, if any.
pub fn own_variable(name: &str) -> Option<&'static str> {
    let bare = name.strip_suffix('*').unwrap_or(name);
    NEVER_INHERIT.iter().copied().find(|p| match p.strip_suffix('*') {
        Some(prefix) => bare.starts_with(prefix),
        None => name == *p,
    })
}
