//! The TLS roots vaultlet trusts: the configured CA bundle, a system bundle
//! at fixed paths, or none for plain http.

use std::path::Path;

use zeroize::Zeroizing;

use super::error::VaultError;
use crate::config::VaultConfig;

/// Where system CA bundles are looked for when `vault.ca_cert` is unset and
/// an address is https (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE,
/// others). Fixed paths: `SSL_CERT_FILE`/`SSL_CERT_DIR` are not read.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

// === TLS roots ===

/// A PEM file (CA bundle, client certificate or key), read with the
/// bounds of [`crate::write::read_input_file`]; wiped when dropped.
pub(super) fn read_pem(path: &Path) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    crate::write::read_input_file(path, crate::write::MAX_INPUT_FILE)
        .map_err(|e| VaultError::Setup(format!("reading {}: {e}", path.display())))
}

/// The roots to trust: the `ca_cert` bundle, or the system bundle from
/// [`SYSTEM_CA_FILES`] when some address is https, or none for plain http.
pub(super) fn load_roots(cfg: &VaultConfig, system: &[&str]) -> Result<Vec<reqwest::Certificate>, VaultError> {
    let bundle = |path: &Path| -> Result<Vec<reqwest::Certificate>, VaultError> {
        let pem = read_pem(path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| VaultError::Setup(format!("{} holds no valid PEM certificate", path.display())))?;
        if certs.is_empty() {
            return Err(VaultError::Setup(format!("{} holds no certificate", path.display())));
        }
        Ok(certs)
    };
    if let Some(path) = &cfg.ca_cert {
        return bundle(path);
    }
    if !cfg.addresses.iter().any(|u| u.scheme() == "https") {
        return Ok(Vec::new());
    }
    for p in system {
        let p = Path::new(p);
        if p.is_file() {
            return bundle(p);
        }
    }
    Err(VaultError::Setup(format!(
        "no system CA certificates for https to vault: looked at {}; install the ca-certificates package \
         or set vault.ca_cert",
        system.join(", ")
    )))
}
