//! systemd integration: `sd_notify` readiness, stopping and watchdog.
//!
//! With `Type=notify`, systemd passes `NOTIFY_SOCKET`; vaultlet sends
//! `READY=1` once every secret is held and every file has been written, and
//! `STOPPING=1` when it begins to shut down. With `WatchdogSec=`, it sends
//! `WATCHDOG=1` at half the interval from the runtime's own timer, so a hung
//! runtime stops the pings. Without `NOTIFY_SOCKET` all of this is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where to send notifications, read once from the environment.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`: the only
    /// environment variables the daemon itself reads.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Notifications to `socket`, without a watchdog (for tests).
    #[cfg(test)]
    pub(crate) fn to_socket(socket: PathBuf) -> Notifier {
        Notifier { socket: Some(socket), watchdog: None }
    }

    /// Sends one notification (e.g. `READY=1`); errors are logged, not fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send(path, state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// Pings the watchdog until the future is dropped.
    pub async fn watchdog(self) {
        let Some(interval) = self.watchdog else { return };
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            self.notify("WATCHDOG=1");
        }
    }
}

fn send(path: &std::path::Path, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some(path), watchdog: None };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        // No socket configured: nothing happens.
        Notifier::default().notify("READY=1");
    }
}
