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
//! * the ambient and inheritable capability sets cleared, so what vaultlet
//!   is given (`AmbientCapabilities=CAP_IPC_LOCK` in the systemd unit) stays
//!   with vaultlet: a program it starts as a non-root user (the `exec` app,
//!   a template command) starts with no capabilities at all. vaultlet keeps
//!   its permitted and effective sets (it needs `CAP_IPC_LOCK` for as long
//!   as it allocates). Capabilities belong to a thread and a new thread
//!   copies its creator's: this runs before the runtime starts any thread,
//!   so the thread that spawns a child has them cleared too.
//!
//!   The bounding set and `no_new_privs` are left alone: they do not hand
//!   vaultlet's capabilities on, and setting them would take from the app
//!   what the system grants it (setuid or file-capability programs such
//!   as `ping` or `sudo`). The systemd unit sets `NoNewPrivileges=yes` and
//!   a one-capability bounding set, which its children inherit anyway.
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
    keep_capabilities_to_ourselves();
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
/// without the sticky bit. Whoever can rewrite a role_id, secret_id or
/// token file decides whom vaultlet logs in as. Missing files are not
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

/// Clears the calling thread's ambient and inheritable capability sets
/// (see the module docs); permitted and effective stay. Must run before any
/// other thread is started, as [`harden`] does.
pub fn keep_capabilities_to_ourselves() {
    use rustix::thread::{CapabilitySet, capabilities, clear_ambient_capability_set, set_capabilities};
    // First on its own: a seccomp filter that refuses capset (systemd's
    // @privileged) still allows prctl. EINVAL: a kernel without ambient
    // capabilities (before 4.3) has none to hand on.
    if let Err(e) = clear_ambient_capability_set()
        && e != rustix::io::Errno::INVAL
    {
        tracing::warn!(error = %e, "cannot clear the ambient capabilities; programs vaultlet starts may inherit them");
    }
    match capabilities(None) {
        Ok(sets) if sets.inheritable.is_empty() => {}
        Ok(sets) => {
            if let Err(e) =
                set_capabilities(None, rustix::thread::CapabilitySets { inheritable: CapabilitySet::empty(), ..sets })
            {
                tracing::warn!(
                    error = %e,
                    inheritable = ?sets.inheritable,
                    "cannot clear the inheritable capabilities; programs vaultlet starts keep them in their \
                     inheritable set (usable only by a program with file capabilities). Under a seccomp filter \
                     without capset, allow it (systemd: SystemCallFilter=capset)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the capability sets"),
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

    #[test]
    fn ambient_and_inheritable_capabilities_are_cleared_and_the_rest_kept() {
        use rustix::thread::{CapabilitySet, capabilities, capability_is_in_ambient_set, set_capabilities};
        // On a thread of its own: capabilities belong to a thread.
        std::thread::spawn(|| {
            let before = capabilities(None).unwrap();
            if !before.permitted.contains(CapabilitySet::IPC_LOCK) {
                eprintln!("skipped: CAP_IPC_LOCK is not permitted here");
                return;
            }
            // As systemd's AmbientCapabilities=CAP_IPC_LOCK leaves it.
            let inheritable = before.inheritable | CapabilitySet::IPC_LOCK;
            set_capabilities(None, rustix::thread::CapabilitySets { inheritable, ..before }).unwrap();
            rustix::thread::configure_capability_in_ambient_set(CapabilitySet::IPC_LOCK, true).unwrap();
            assert!(capability_is_in_ambient_set(CapabilitySet::IPC_LOCK).unwrap());
            keep_capabilities_to_ourselves();
            let after = capabilities(None).unwrap();
            assert!(!capability_is_in_ambient_set(CapabilitySet::IPC_LOCK).unwrap(), "ambient cleared");
            assert!(after.inheritable.is_empty(), "inheritable cleared: {:?}", after.inheritable);
            assert_eq!((after.permitted, after.effective), (before.permitted, before.effective), "the rest kept");
        })
        .join()
        .unwrap();
    }
}
