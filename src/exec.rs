//! `vaultlet exec`: run the app as a child with its secrets in the environment.
//!
//! For apps that cannot read a socket or a file. vaultlet runs as usual
//! (socket and files too, if configured), waits until every secret the
//! `[exec]` environment uses is available, then starts the child with that
//! environment added to its own. Signals (TERM, INT, HUP, QUIT, USR1, USR2)
//! are forwarded; when the child exits, vaultlet stops and exits with the
//! child's code (128 + signal number if it was killed), like a shell.
//!
//! When the rendered environment changes — only when it really changes, and
//! once per `debounce` window — vaultlet restarts the child (stop signal,
//! `stop_timeout`, then SIGKILL), sends it a signal, or does nothing, as
//! `on_change` says. A child that cannot be started exits 127 (not found) or
//! 126 (not executable).

use std::hash::{Hash, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::config::{Config, ExecSpec, OnChange};
use crate::render::{live_secrets, render_env_map};
use crate::store::Snapshot;

type Env = Vec<(String, Zeroizing<String>)>;

/// Runs `argv` under vaultlet and returns the exit code to leave with.
pub async fn run(config: Config, argv: Vec<String>) -> i32 {
    let Some(spec) = config.exec.clone() else {
        eprintln!("vaultlet: exec needs an [exec] table in the config");
        return 64;
    };
    let argv = if argv.is_empty() { spec.command.clone().unwrap_or_default() } else { argv };
    if argv.is_empty() {
        eprintln!("vaultlet: nothing to run: give a command after `--` or set exec.command");
        return 64;
    }
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vaultlet: cannot install signal handlers: {e}");
            return 1;
        }
    };
    let running = match crate::start(&config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "vaultlet failed to start");
            return 1;
        }
    };
    let notifier = crate::telemetry::Notifier::from_env();
    let mut rx = running.store().subscribe();

    // Wait for the first complete environment.
    let env = loop {
        if let Some(env) = render(&spec, &rx.borrow_and_update()) {
            break env;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { running.stop().await; return 1 },
            sig = signals.recv() => {
                tracing::info!(signal = sig, "signal before the app started; stopping");
                running.stop().await;
                return 128 + sig;
            }
        }
    };
    let mut child = match spawn(&argv, &env) {
        Ok(c) => c,
        Err(code) => {
            running.stop().await;
            return code;
        }
    };
    let mut current = digest(&env);
    drop(env);
    notifier.notify("READY=1\nSTATUS=running the app");

    let mut pending: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let due = pending.unwrap_or_else(Instant::now);
        tokio::select! {
            st = child.wait() => {
                let code = st.map_or(1, exit_code);
                tracing::info!(code, "app exited; stopping");
                notifier.notify("STOPPING=1");
                running.stop().await;
                return code;
            }
            sig = signals.recv() => {
                forward(&child, sig);
                if sig == libc_sig::TERM || sig == libc_sig::INT {
                    stopping = true;
                    pending = None;
                }
            }
            r = rx.changed(), if !stopping => {
                if r.is_err() {
                    continue;
                }
                let changed = render(&spec, &rx.borrow_and_update()).is_some_and(|e| digest(&e) != current);
                // Debounce: react once the environment has been stable… or
                // at the end of the window that the first change opened.
                if changed && pending.is_none() {
                    pending = Some(Instant::now() + spec.debounce);
                }
            }
            _ = tokio::time::sleep_until(due), if pending.is_some() => {
                pending = None;
                let Some(env) = render(&spec, &running.store().snapshot()) else { continue };
                let d = digest(&env);
                if d == current {
                    continue;
                }
                current = d;
                match spec.on_change {
                    OnChange::Restart => {
                        tracing::info!("environment changed; restarting the app");
                        stop_child(&mut child, &spec).await;
                        child = match spawn(&argv, &env) {
                            Ok(c) => c,
                            Err(code) => {
                                running.stop().await;
                                return code;
                            }
                        };
                    }
                    OnChange::Signal => {
                        tracing::info!(signal = spec.signal, "environment changed; signalling the app");
                        forward(&child, spec.signal);
                    }
                    OnChange::None => tracing::info!("environment changed; leaving the app alone"),
                }
            }
        }
    }
}

/// The child's environment, if every secret it uses is available.
fn render(spec: &ExecSpec, snap: &Snapshot) -> Option<Env> {
    let (secrets, _) = live_secrets(snap, &spec.uses)?;
    match render_env_map(&spec.template, &secrets) {
        Ok(env) => Some(env),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the app's environment");
            None
        }
    }
}

/// A keyed hash of the environment, so only one copy of it is ever held.
fn digest(env: &Env) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in env {
        k.hash(&mut h);
        v.as_str().hash(&mut h);
    }
    h.finish()
}

fn spawn(argv: &[String], env: &Env) -> Result<Child, i32> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v.as_str());
    }
    match cmd.spawn() {
        Ok(c) => {
            tracing::info!(program = %argv[0], pid = c.id(), "started the app");
            Ok(c)
        }
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 126,
            };
            eprintln!("vaultlet: cannot run `{}`: {e}", argv[0]);
            tracing::error!(program = %argv[0], error = %e, code, "cannot start the app");
            Err(code)
        }
    }
}

async fn stop_child(child: &mut Child, spec: &ExecSpec) {
    forward(child, spec.stop_signal);
    if tokio::time::timeout(spec.stop_timeout, child.wait()).await.is_err() {
        tracing::warn!(timeout = ?spec.stop_timeout, "app did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

fn forward(child: &Child, sig: i32) {
    let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    let Some(signal) = rustix::process::Signal::from_named_raw(sig) else { return };
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        tracing::warn!(signal = sig, error = %e, "cannot signal the app");
    }
}

fn exit_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Signal numbers (Linux).
mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
}

/// The signals forwarded to the child.
struct Signals(Vec<(i32, Signal)>);

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use libc_sig::*;
        let mut v = Vec::new();
        for (n, k) in [
            (HUP, SignalKind::hangup()),
            (INT, SignalKind::interrupt()),
            (QUIT, SignalKind::quit()),
            (USR1, SignalKind::user_defined1()),
            (USR2, SignalKind::user_defined2()),
            (TERM, SignalKind::terminate()),
        ] {
            v.push((n, signal(k)?));
        }
        Ok(Signals(v))
    }

    /// The next signal received.
    async fn recv(&mut self) -> i32 {
        let futs = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_util::future::select_all(futs).await.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn digest_sees_value_changes() {
        let a: Env = vec![("A".into(), Zeroizing::new("1".into()))];
        let b: Env = vec![("A".into(), Zeroizing::new("2".into()))];
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn child_that_cannot_start_exits_like_a_shell() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert_eq!(spawn(&["/nonexistent/app".into()], &Vec::new()).err(), Some(127));
            assert_eq!(spawn(&["/etc/hostname".into()], &Vec::new()).err(), Some(126));
        });
    }
}
