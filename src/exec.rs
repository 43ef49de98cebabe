//! `vaultlet exec`: run the app as a child with its secrets in the environment.
//!
//! For apps that cannot read a socket or a file. vaultlet runs as usual
//! (socket and files too, if configured), waits until every configured
//! secret is held and every file written — the point at which `vaultlet run`
//! says READY, so an app that also reads the socket or a file at start-up
//! finds everything there — then starts the child with its environment
//! added to its own. Signals (TERM, INT, HUP, QUIT, USR1, USR2)
//! are forwarded; when the child exits, vaultlet stops and exits with the
//! child's code (128 + signal number if it was killed), like a shell.
//!
//! When the rendered environment changes — only when it really changes, and
//! once per `debounce` window — vaultlet restarts the child (stop signal,
//! `stop_timeout`, then SIGKILL), sends it a signal, or does nothing, as
//! `on_change` says. A child that cannot be started exits 127 (not found) or
//! 126 (not executable).
//!
//! The child is the app, not a part of vaultlet, so it gets none of
//! vaultlet's powers:
//!
//! * a clean environment: only [`DEFAULT_INHERIT`] (plus `exec.inherit_env`)
//!   of vaultlet's variables, then what the config maps, and never
//!   vaultlet's own ([`NEVER_INHERIT`]: a `VAULT_TOKEN`, `$CREDENTIALS_DIRECTORY`
//!   or `NOTIFY_SOCKET` would let it act as vaultlet);
//! * with `exec.user`/`exec.group`, another uid and gid with supplementary
//!   groups cleared, so it can neither read vaultlet's credential files nor
//!   pass the socket's default allow list;
//! * no capabilities: vaultlet clears its own ambient and inheritable sets
//!   at start ([`crate::harden`]), so a child that does not run as root
//!   starts with none, whatever vaultlet was given (`CAP_IPC_LOCK` stays
//!   with vaultlet);
//! * its own process group: signals go to the whole group, so a shell
//!   wrapper's children stop too;
//! * when vaultlet is PID 1 (a container), orphans the app leaves behind are
//!   reaped, without taking the exit status vaultlet waits for.
//!
//! `[[template]] command`s get the same environment rules ([`command`]).

use std::hash::{Hash, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::process::Child;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::{Config, ExecSpec, OnChange};
use crate::render::{live_secrets, render_env_map};
use crate::store::Snapshot;
use crate::supervise::Job;

type Env = Vec<(String, Zeroizing<String>)>;

pub use crate::limits::{NEVER_INHERIT, own_variable};
use crate::process::reap_orphans;
pub use crate::process::{DEFAULT_INHERIT, command, inherited, spawn_tracked, untrack};

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
    // Signals go to the app, and vaultlet stops when the app exits: nothing
    // else cancels the daemon.
    let app = async move |job: Job<'_>| app(job, &spec, &argv, &mut signals).await;
    match crate::supervise::supervise(&config, CancellationToken::new(), app).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "vaultlet failed to start");
            1
        }
    }
}

/// The app's life under the supervisor: wait until everything is ready,
/// start it, pass signals on, act on changes; its exit code once it exits.
async fn app(mut job: Job<'_>, spec: &ExecSpec, argv: &[String], signals: &mut Signals) -> i32 {
    let mut rx = job.store().subscribe();
    if rustix::process::getpid().is_init() {
        tokio::spawn(reap_orphans());
    }

    // The app may read any secret on the socket or in a file as it starts,
    // not only those its environment names: it starts when `run` would say
    // READY (every secret held, every file written), as Vault Agent's exec
    // waits for every template.
    tokio::select! {
        () = job.every_secret_ready() => {}
        sig = signals.recv() => {
            tracing::info!(signal = sig, "signal before the app started; stopping");
            return 128 + sig;
        }
    }
    let env = loop {
        if let Some(env) = render(spec, &rx.borrow_and_update()) {
            break env;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return 1 },
            sig = signals.recv() => {
                tracing::info!(signal = sig, "signal before the app started; stopping");
                return 128 + sig;
            }
        }
    };
    let mut child = match spawn(argv, &env, spec) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut current = digest(&env);
    drop(env);
    job.ready("running the app");

    let mut pending: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let due = pending.unwrap_or_else(Instant::now);
        tokio::select! {
            st = child.wait() => {
                untrack(child.id());
                let code = st.map_or(1, exit_code);
                tracing::info!(code, "app exited; stopping");
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
                let changed = render(spec, &rx.borrow_and_update()).is_some_and(|e| digest(&e) != current);
                // Debounce: react once the environment has been stable… or
                // at the end of the window that the first change opened.
                if changed && pending.is_none() {
                    pending = Some(Instant::now() + spec.debounce);
                }
            }
            _ = tokio::time::sleep_until(due), if pending.is_some() => {
                pending = None;
                let Some(env) = render(spec, &job.store().snapshot()) else { continue };
                let d = digest(&env);
                if d == current {
                    continue;
                }
                current = d;
                match spec.on_change {
                    OnChange::Restart => {
                        tracing::info!("environment changed; restarting the app");
                        stop_child(&mut child, spec).await;
                        child = match spawn(argv, &env, spec) {
                            Ok(c) => c,
                            Err(code) => return code,
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

/// A hash of the environment under this process's random key, so only one
/// copy of it is ever held and the digest says nothing outside the process.
fn digest(env: &Env) -> u64 {
    let mut h = crate::render::keyed_hasher();
    for (k, v) in env {
        k.hash(&mut h);
        v.as_str().hash(&mut h);
    }
    h.finish()
}

fn spawn(argv: &[String], env: &Env, spec: &ExecSpec) -> Result<Child, i32> {
    let mut cmd = command(argv, &spec.inherit_env, spec.user);
    for (k, v) in env {
        cmd.env(k, v.as_str());
    }
    match spawn_tracked(&mut cmd) {
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
    let pid = child.id();
    forward(child, spec.stop_signal);
    if tokio::time::timeout(spec.stop_timeout, child.wait()).await.is_err() {
        tracing::warn!(timeout = ?spec.stop_timeout, "app did not stop in time; killing it");
        forward(child, 9);
        let _ = child.kill().await;
    }
    untrack(pid);
}

/// Signals the child's process group (it leads its own), or the child alone
/// if the group is gone.
fn forward(child: &Child, sig: i32) {
    let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    let Some(signal) = rustix::process::Signal::from_named_raw(sig) else { return };
    if rustix::process::kill_process_group(pid, signal).is_ok() {
        return;
    }
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
    use std::collections::BTreeSet;
    use std::ffi::OsString;

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
        let spec = ExecSpec {
            template: String::new(),
            command: None,
            on_change: OnChange::None,
            signal: 1,
            stop_signal: 15,
            stop_timeout: std::time::Duration::from_secs(1),
            debounce: std::time::Duration::from_secs(1),
            inherit_env: Vec::new(),
            user: None,
            uses: BTreeSet::new(),
        };
        rt.block_on(async {
            assert_eq!(spawn(&["/nonexistent/app".into()], &Vec::new(), &spec).err(), Some(127));
            assert_eq!(spawn(&["/etc/hostname".into()], &Vec::new(), &spec).err(), Some(126));
        });
    }

    /// An app may read, as it starts, a secret its environment does not
    /// name (over the socket, from a file): it starts only once every
    /// secret is held, when `run` would say READY. Here the database secret,
    /// which the environment does not use, arrives five failed attempts
    /// after the KV secret it does use.
    #[tokio::test(start_paused = true)]
    async fn the_app_starts_only_once_every_secret_is_held() {
        use crate::vault::fake::{Fail, Fake, Op};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("role_id"), "role").unwrap();
        std::fs::write(dir.path().join("secret_id"), "secret").unwrap();
        let src = format!(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\n[auth.approle]\nrole_id_file = \"{d}/role_id\"\n\
             secret_id_file = \"{d}/secret_id\"\n[secret.api]\nkv = {{ path = \"api\" }}\n\
             [secret.db]\ndatabase = {{ role = \"app\" }}\n[exec]\nenv = {{ KEY = \"api.key\" }}\n",
            d = dir.path().display()
        );
        let config = Config::from_toml(std::path::Path::new("v.toml"), &src, 1000).expect("config").config;
        let spec = config.exec.clone().expect("[exec]");
        let fake = std::sync::Arc::new(Fake::new());
        fake.fail(Op::DbCreds, Fail::Transient, 5);
        let mut running = crate::daemon::start_with(&config, fake.clone()).expect("start");
        let store = running.store().clone();
        let notify = dir.path().join("notify");
        let ready = tokio::net::UnixDatagram::bind(&notify).unwrap();
        let notifier = crate::telemetry::Notifier::to_socket(notify);
        // A signal nobody sends: the test process keeps its own handlers.
        let mut signals = Signals(vec![(28, signal(SignalKind::window_change()).unwrap())]);
        let argv = ["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];

        let app = app(Job::new(&mut running, &notifier), &spec, &argv, &mut signals);
        // READY follows the start of the app at once; what the store lacks
        // then, the app could not have read.
        let started = async {
            let mut buf = [0u8; 64];
            let n = ready.recv(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"READY=1"), "{:?}", String::from_utf8_lossy(&buf[..n]));
            store.not_ready(Instant::now())
        };
        let (code, missing) = tokio::join!(app, started);
        assert!(missing.is_empty(), "the app started while these were missing: {missing:?}");
        assert_eq!(code, 3, "the app ran");
        assert_eq!(fake.count(Op::DbCreds), 6, "the database secret came late");
        running.stop().await;
    }

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names.iter().map(|n| (OsString::from(n), OsString::from("v"))).collect()
    }

    fn names(v: Vec<(OsString, OsString)>) -> Vec<String> {
        v.into_iter().map(|(k, _)| k.into_string().unwrap()).collect()
    }

    #[test]
    fn vaultlets_own_variables_are_never_inherited() {
        let all = vars(&[
            "PATH",
            "LC_ALL",
            "VAULT_TOKEN",
            "VAULT_ADDR",
            "BAO_TOKEN",
            "VAULTLET_CONFIG",
            "CREDENTIALS_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "LISTEN_FDS",
            "NODE_ENV",
            "AWS_SECRET_ACCESS_KEY",
        ]);
        assert_eq!(names(inherited(all.clone(), &[])), ["PATH", "LC_ALL"]);
        assert_eq!(names(inherited(all.clone(), &["NODE_ENV".into()])), ["PATH", "LC_ALL", "NODE_ENV"]);
        // Even a catch-all leaves vaultlet's own out.
        assert_eq!(names(inherited(all, &["*".into()])), ["PATH", "LC_ALL", "NODE_ENV", "AWS_SECRET_ACCESS_KEY"]);
    }

    #[test]
    fn own_variables_are_recognised_by_name_and_prefix() {
        assert_eq!(own_variable("VAULT_TOKEN"), Some("VAULT_*"));
        assert_eq!(own_variable("VAULT_T*"), Some("VAULT_*"));
        assert_eq!(own_variable("NOTIFY_SOCKET"), Some("NOTIFY_SOCKET"));
        assert_eq!(own_variable("NODE_ENV"), None);
        assert_eq!(own_variable("V*"), None, "broader patterns are filtered at run time instead");
    }
}
