//! Process hardening at start, before any secret is in memory.
//!
//! * not dumpable: no core files, no `ptrace` attach by same-uid processes,
//!   `/proc/PID/mem` and `environ` readable only by root;
//! * `RLIMIT_CORE` = 0, for the same reason should dumpability come back;
//! * memory locked with `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`,
//!   so secrets are never written to swap. `MCL_ONFAULT` locks pages as they
//!   are touched, so the resident size stays what vaultlet actually uses.
//!
//! * `RLIMIT_NOFILE`'s soft limit raised to its hard limit, so the socket's
//!   connection caps, not the descriptor limit, decide who is turned away.
//!
//! Locking is attempted only when it is safe: with `CAP_IPC_LOCK` (or a
//! generous `RLIMIT_MEMLOCK`). With `MCL_FUTURE` and a small limit, a later
//! allocation past the limit would fail and abort the process, which is worse
//! than swap. Without it, vaultlet warns once, saying what to change, or
//! refuses to start when `memory.require_lock = true`.

use rustix::process::{Resource, Rlimit};

/// `RLIMIT_MEMLOCK` at or above this is enough to lock safely without the capability.
const SAFE_MEMLOCK: u64 = 512 << 20;

/// What hardening achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Locked {
    /// Memory is locked.
    Yes,
    /// Not locked, and why.
    No(String),
}

/// Applies the hardening. Errors only when `require_lock` and locking failed.
pub fn harden(require_lock: bool) -> Result<Locked, String> {
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot make the process non-dumpable");
    }
    if let Err(e) = rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        tracing::warn!(error = %e, "cannot set RLIMIT_CORE to 0");
    }
    raise_nofile();
    let locked = lock_memory();
    match (&locked, require_lock) {
        (Locked::No(why), true) => Err(format!("memory.require_lock is set but memory cannot be locked: {why}")),
        (Locked::No(why), false) => {
            tracing::warn!(
                "memory not locked ({why}); secrets could be swapped out. Grant CAP_IPC_LOCK \
                 (systemd: AmbientCapabilities=CAP_IPC_LOCK) or LimitMEMLOCK=infinity, or set \
                 memory.require_lock = true to refuse to run unlocked"
            );
            Ok(locked)
        }
        (Locked::Yes, _) => {
            tracing::debug!("memory locked");
            Ok(locked)
        }
    }
}

/// Warns about each file (credential files, the config) that another user
/// could rewrite: writable by others, or in a directory writable by others
/// without the sticky bit. Whoever can rewrite a role_id or secret_id file
/// decides which AppRole vaultlet logs in as. Missing files are not
/// reported here (the login reports them).
pub fn warn_loose_files(files: &[(&str, &std::path::Path)]) {
    use std::os::unix::fs::PermissionsExt;
    for (what, path) in files {
        let loose = |p: &std::path::Path, dir: bool| {
            std::fs::metadata(p).ok().is_some_and(|m| {
                let mode = m.permissions().mode();
                mode & 0o002 != 0 && !(dir && mode & 0o1000 != 0)
            })
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if loose(path, false) || dir.is_some_and(|d| loose(d, true)) {
            tracing::warn!(
                file = %path.display(),
                "{what} can be rewritten by other users (it or its directory is world-writable); chmod o-w"
            );
        }
    }
}

/// Soft `RLIMIT_NOFILE` up to the hard limit (often 1024 → 524288).
fn raise_nofile() {
    let lim = rustix::process::getrlimit(Resource::Nofile);
    if lim.current.is_some() && lim.current != lim.maximum {
        let new = Rlimit { current: lim.maximum, maximum: lim.maximum };
        if let Err(e) = rustix::process::setrlimit(Resource::Nofile, new) {
            tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
        }
    }
}

fn lock_memory() -> Locked {
    let limit = rustix::process::getrlimit(Resource::Memlock).current;
    let has_cap = has_ipc_lock();
    if !has_cap && limit.is_some_and(|l| l < SAFE_MEMLOCK) {
        return Locked::No(format!("no CAP_IPC_LOCK and RLIMIT_MEMLOCK is {} KiB", limit.unwrap_or(0) / 1024));
    }
    use rustix::mm::MlockAllFlags as F;
    match rustix::mm::mlockall(F::CURRENT | F::FUTURE | F::ONFAULT) {
        Ok(()) => Locked::Yes,
        Err(e) => Locked::No(format!("mlockall: {e}")),
    }
}

/// Whether CAP_IPC_LOCK (bit 14) is in the effective set.
fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_makes_the_process_non_dumpable_without_core_files() {
        let locked = harden(false).expect("not required");
        assert_eq!(rustix::process::dumpable_behavior().unwrap(), rustix::process::DumpableBehavior::NotDumpable);
        assert_eq!(rustix::process::getrlimit(Resource::Core).current, Some(0));
        let nofile = rustix::process::getrlimit(Resource::Nofile);
        assert_eq!(nofile.current, nofile.maximum, "soft descriptor limit raised to the hard one");
        if has_ipc_lock() {
            assert_eq!(locked, Locked::Yes);
        }
    }
}
