//! One lifecycle for `vaultlet run` and `vaultlet exec`.
//!
//! Both commands run the same daemon, and systemd or a container runtime
//! must see the same thing from either: `READY=1` once there is something to
//! use, `WATCHDOG=1` for as long as the process lives (stopping included),
//! `STOPPING=1` when it begins to shut down, and revocation of leases and
//! tokens (when configured) before it exits. `exec` used to copy this
//! sequence and lost the watchdog on the way, so under `WatchdogSec=`
//! systemd killed it; with one supervisor, a step added here is added to
//! both.
//!
//! Only the part between "started" and "stopping" differs, and that is the
//! job handed to [`supervise`]: `run` waits until every secret is held and
//! every file written, says so, and waits for `shutdown`; `exec` waits for
//! the same, starts the app and returns its exit code when it exits (see
//! [`crate::exec`]). The job says when it is ready
//! ([`Job::ready`]); the supervisor does everything else.

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Config;
use crate::daemon::{RunError, Running};
use crate::telemetry::Notifier;

/// What a job may use of the running daemon.
pub struct Job<'a> {
    running: &'a mut Running,
    notifier: &'a Notifier,
}

impl<'a> Job<'a> {
    /// A job on a daemon started without [`supervise`] (for tests).
    #[cfg(test)]
    pub(crate) fn new(running: &'a mut Running, notifier: &'a Notifier) -> Job<'a> {
        Job { running, notifier }
    }

    /// The secrets.
    pub fn store(&self) -> &crate::store::Store {
        self.running.store()
    }

    /// Waits until every secret is held and every file written once.
    pub async fn every_secret_ready(&mut self) {
        self.running.ready().await;
    }

    /// Tells systemd (when it asks) that the service is ready, with `status`
    /// as the line `systemctl status` shows.
    pub fn ready(&self, status: &str) {
        self.notifier.notify(&format!("READY=1\nSTATUS={status}"));
    }
}

/// Starts the daemon, runs `job` until it returns an exit code or
/// `shutdown` is cancelled (exit code 0), then stops every task, revokes
/// leases and tokens if configured, and returns the code. Fails only when
/// the daemon cannot start (local set-up: TLS files, the socket path).
pub async fn supervise<J>(config: &Config, shutdown: CancellationToken, job: J) -> Result<i32, RunError>
where
    J: AsyncFnOnce(Job<'_>) -> i32,
{
    let notifier = Notifier::from_env();
    let mut running = crate::daemon::start(config)?;
    // With `WatchdogSec=`, systemd kills a service that stops pinging: the
    // pings run until this function returns, so a slow revocation at
    // shutdown is not mistaken for a hang.
    let _watchdog = AbortOnDropHandle::new(tokio::spawn(notifier.clone().watchdog()));
    let code = tokio::select! {
        code = job(Job { running: &mut running, notifier: &notifier }) => code,
        _ = shutdown.cancelled() => 0,
    };
    tracing::info!(code, "shutting down");
    notifier.notify("STOPPING=1");
    running.stop().await;
    Ok(code)
}

/// Runs the daemon until `shutdown` is cancelled, telling systemd (when it
/// asks) once it is ready and when it stops.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let serve = async |mut job: Job<'_>| -> i32 {
        job.every_secret_ready().await;
        tracing::info!("ready: every secret held, every file written");
        job.ready("serving secrets");
        // Until `shutdown`: the daemon's tasks do the work.
        std::future::pending().await
    };
    supervise(&config, shutdown, serve).await.map(drop)
}
