//! The programs vaultlet starts (the `exec` app, `[[template]] command`s):
//! how their command is built and how they are tracked.
//!
//! Every one gets a clean environment (only [`DEFAULT_INHERIT`] and what
//! the config adds, never vaultlet's own variables), its own process group,
//! and, when asked, another uid and gid. vaultlet waits for each one itself;
//! as PID 1 it also reaps the orphans they leave, without taking the exit
//! status of a child it waits for. This sits below both `render` (template
//! commands) and `exec` (the app), so neither reaches up into the other.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::sync::Mutex;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// The variables a child inherits from vaultlet by default: what a program
/// needs to find its tools, its home and its locale. `LC_*` is a prefix.
pub const DEFAULT_INHERIT: &[&str] =
    &["PATH", "HOME", "LANG", "LC_*", "TZ", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR"];

use crate::limits::NEVER_INHERIT;

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Of `vars` (vaultlet's environment), the ones a child may see: on the
/// default list or `extra`, and not vaultlet's own.
pub fn inherited(vars: impl IntoIterator<Item = (OsString, OsString)>, extra: &[String]) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else { return false };
            let allowed =
                DEFAULT_INHERIT.iter().copied().chain(extra.iter().map(String::as_str)).any(|p| matches(p, k));
            allowed && !NEVER_INHERIT.iter().any(|p| matches(p, k))
        })
        .collect()
}

/// A command for a program vaultlet starts (the app, a template command):
/// a clean environment (see [`inherited`]), its own process group, and
/// another uid/gid when `user` says so (std clears the supplementary groups
/// when it changes the uid).
pub fn command(argv: &[String], extra_inherit: &[String], user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(inherited(std::env::vars_os(), extra_inherit)).process_group(0);
    if let Some((uid, gid)) = user {
        cmd.gid(gid).uid(uid);
    }
    cmd
}

/// Pids vaultlet started and waits for itself; the PID 1 reaper leaves them
/// to their `wait`.
static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Spawns `cmd` and tracks it, under the reaper's lock: a child that exits
/// at once is never mistaken for an orphan.
pub fn spawn_tracked(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tracked = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        tracked.insert(pid as i32);
    }
    Ok(child)
}

/// Forgets a pid once its child has been waited for.
pub fn untrack(pid: Option<u32>) {
    if let Some(pid) = pid {
        TRACKED.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pid as i32));
    }
}

/// As PID 1, reaps the zombies that are not vaultlet's own children: the
/// app's orphans are re-parented to us, and nobody else would wait for them.
/// `waitpid(-1)` would also take the status of the app itself (which
/// vaultlet passes on as its exit code), so zombies are found in /proc and
/// reaped one pid at a time.
pub(crate) async fn reap_orphans() {
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        tracing::warn!("cannot watch SIGCHLD; orphans of the app will not be reaped");
        return;
    };
    loop {
        let n = reap_untracked();
        if n > 0 {
            tracing::debug!(reaped = n, "reaped orphaned processes");
        }
        // Signals coalesce; a slow tick catches what a lost one left.
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

/// Reaps every zombie child of ours that is not tracked; returns how many.
fn reap_untracked() -> usize {
    let tracked = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut n = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if tracked.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if state == Some("Z")
            && ppid == Some(me)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
            && let Ok(Some(_)) = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG)
        {
            n += 1;
        }
    }
    n
}
