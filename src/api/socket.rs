//! The socket file and its connections.
//!
//! The socket file is bound in a private directory, given its mode, then
//! renamed into place (`src/write.rs`), so it is never reachable with a
//! looser mode. A stale socket (connecting is refused) is replaced; a live
//! one, one that cannot be probed, or a non-socket file at the path is an
//! error. At shutdown the file is removed only if it is still ours.
//!
//! The peer's uid/gid come from the kernel when the connection is accepted; a
//! caller not on the allow list gets one 403 and the connection is closed
//! (no keep-alive, 2 s to send its request). Open connections are capped
//! globally and per uid (callers on no allow list share one budget), and
//! long-polls and event streams per uid: a connection over a cap is
//! answered 503 and closed at once, so a local user flooding the socket
//! runs out of its own budget, never vaultlet's descriptors, and allowed
//! callers keep being served. Accept errors (EMFILE…) back off and are
//! logged once a minute, not once per attempt.
//!
//! At shutdown the listener closes first; each open connection is told to
//! finish the request it is serving and close (2 s each, 2.5 s in all);
//! whatever is still open after that is cut.
//!
//! The socket runs on a thread of its own with a single-threaded runtime.
//! On the daemon's two-worker runtime every read woke a second worker
//! (tokio wakes an idle worker to look for work whenever one gets some),
//! and the context switches that cost took more CPU than answering
//! (`bench/run.sh --only socket --profile`). On its own thread a read is
//! one wake-up from epoll, as in a hand-written server, and the lease tasks
//! never wait behind a burst of reads. Everything the handlers share with
//! the rest of the daemon (the store's watch, the rejection channels) works
//! across runtimes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access::{Acl, Bucket, DENY_WINDOW, Limits, Over, Peer};
use super::routes::{Api, Conn};
use crate::config::{SecretSpec, SocketConfig};
use crate::metrics::{Denied, Metrics};
use crate::store::Store;

/// A bound socket, ready to serve.
pub struct Bound {
    /// Registered with the runtime that serves it, in [`serve`].
    listener: std::os::unix::net::UnixListener,
    file: crate::write::SocketFile,
    acl: Arc<Acl>,
    limits: Limits,
}

/// Why the socket could not be set up.
pub use crate::write::PlaceError as BindError;

/// Creates the socket file with its mode, replacing a stale one.
pub fn bind(cfg: &SocketConfig, secrets: &[SecretSpec]) -> Result<Bound, BindError> {
    let (std_listener, file) = crate::write::bind_socket(&cfg.path, cfg.mode)?;
    let io = |source| BindError::Io { path: cfg.path.display().to_string(), source };
    std_listener.set_nonblocking(true).map_err(io)?;
    Ok(Bound { listener: std_listener, file, acl: Arc::new(Acl::new(cfg, secrets)), limits: Limits::new(cfg) })
}

/// How long a caller not on any allow list has to send its one request.
const REFUSED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an open connection has, once shutdown begins, to finish the
/// request it is serving; and how long all of them have together.
const DRAIN_EACH: Duration = Duration::from_secs(2);
const DRAIN_ALL: Duration = Duration::from_millis(2500);

/// Serves until shutdown, then removes the socket file if it is still ours.
/// The work happens on a thread of its own (see the module docs); a panic
/// there is a panic of this task.
pub async fn serve(bound: Bound, store: Store, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let (done, finished) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("vaultlet-socket".into()).spawn(move || {
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(serve_here(bound, store, metrics, shutdown)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the socket's runtime; the socket does not answer")
                    }
                },
            ));
        let _ = done.send(res);
    });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start the socket's thread; the socket does not answer");
        return;
    }
    if let Ok(Err(panic)) = finished.await {
        std::panic::resume_unwind(panic);
    }
}

/// The accept loop, on the runtime that runs it.
async fn serve_here(bound: Bound, store: Store, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let Bound { listener, file, acl, limits } = bound;
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the socket");
            return;
        }
    };
    // Dropped last (declared first): lines logged while draining are written too.
    let _audit = super::audit_log::start();
    let api = Api::new(store.clone(), acl.clone(), limits.clone(), metrics.clone());
    let app = api.router();
    let mut changes = store.subscribe();
    let mut conns = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut accept_log = Sparse::new(Duration::from_secs(60));
    let mut over_log: HashMap<Bucket, Sparse> = HashMap::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = Duration::ZERO;
                    s
                }
                Err(e) => {
                    // Out of descriptors (or memory): retrying at once would
                    // spin and log the same line thousands of times.
                    if let Some(skipped) = accept_log.due() {
                        tracing::warn!(error = %e, skipped, "accept failed; backing off");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            Ok(()) = changes.changed() => {
                api.bodies.forget_stale(&changes.borrow_and_update());
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer::new(
                c.uid(),
                c.gid(),
                c.pid(),
                c.pid()
                    .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
                    .map(|e| e.to_string_lossy().into()),
                acl.may_connect(c.uid(), c.gid()),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                continue;
            }
        };
        let slot = match limits.connect(peer.uid, peer.allowed) {
            Ok(slot) => slot,
            Err(over) => {
                let reason = match over {
                    Over::Uid => Denied::ConnectionLimitUid,
                    Over::Total => Denied::ConnectionLimit,
                };
                metrics.socket_denied(reason);
                metrics.socket_status(503);
                if over_log.len() > 10_000 {
                    over_log.clear();
                }
                if let Some(skipped) =
                    over_log.entry(peer.allowed.then_some(peer.uid)).or_insert_with(|| Sparse::new(DENY_WINDOW)).due()
                {
                    tracing::warn!(
                        uid = peer.uid,
                        gid = peer.gid,
                        skipped,
                        cap = reason.label(),
                        "too many connections; closing new ones"
                    );
                }
                // Best effort, never waits: the caller learns why, and the
                // descriptor is closed at once. (tokio's try_write would
                // refuse: a fresh socket has no readiness yet.)
                use rustix::net::SendFlags;
                let _ = rustix::net::send(&stream, OVER_CAP, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
                continue;
            }
        };
        let refused = !peer.allowed;
        let svc = Conn::new(api.clone(), app.clone(), peer);
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(if refused { REFUSED_HEADER_TIMEOUT } else { Duration::from_secs(10) })
                // A refused caller gets its one 403 with `Connection: close`.
                .keep_alive(!refused)
                .max_buf_size(16 * 1024)
                // Answer a client that closed its write side after the request.
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_EACH, conn).await;
                }
            }
        });
    }
    // Each connection finishes the request it is serving (DRAIN_EACH
    // above); whatever is left after DRAIN_ALL is cut.
    let drained = tokio::time::timeout(DRAIN_ALL, async { while conns.join_next().await.is_some() {} });
    if drained.await.is_err() {
        conns.abort_all();
    }
    file.remove();
}

/// The answer to a connection over a cap.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 37\r\n\r\n{\"error\":\"too many open connections\"}";

// === impl Sparse ===

/// Logs a repeating event at most once per interval, with how many were
/// left out in between.
struct Sparse {
    every: Duration,
    last: Option<Instant>,
    skipped: u64,
}

impl Sparse {
    fn new(every: Duration) -> Sparse {
        Sparse { every, last: None, skipped: 0 }
    }

    /// `Some(skipped since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_events_are_logged_once_per_interval() {
        let mut s = Sparse::new(Duration::from_secs(60));
        assert_eq!(s.due(), Some(0));
        for _ in 0..500 {
            assert_eq!(s.due(), None);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.due(), Some(500));
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use crate::config::Allow;
    use crate::secret::SecretData;
    use proptest::prelude::*;
    use secrecy::SecretString;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One server for all cases: a runtime thread serving a socket with one
    /// secret, like the real daemon.
    fn server() -> &'static (tokio::runtime::Runtime, PathBuf) {
        static S: OnceLock<(tokio::runtime::Runtime, PathBuf)> = OnceLock::new();
        S.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap().keep();
            let path = dir.join("fuzz.sock");
            let uid = rustix::process::getuid().as_raw();
            let cfg = SocketConfig {
                path: path.clone(),
                mode: 0o600,
                allow: vec![Allow { uid: Some(uid), gid: None }],
                max_connections: 64,
                max_connections_per_uid: 64,
                max_waits_per_uid: 8,
            };
            let store = Store::new(["db", "api"]);
            let mut d = SecretData::default();
            d.insert("password", SecretString::from("fuzz-secret-value".to_string()));
            store.publish("db", d, None);
            let bound = {
                let _in_runtime = rt.enter();
                bind(&cfg, &[SecretSpec::kv_for_test("db", None), SecretSpec::kv_for_test("api", None)]).unwrap()
            };
            rt.spawn(serve(bound, store, crate::metrics::Metrics::new(), CancellationToken::new()));
            (rt, path)
        })
    }

    /// Sends `bytes`, half-closes, reads the answer; returns the status line's code.
    fn exchange(bytes: &[u8]) -> Option<u16> {
        let (rt, path) = server();
        rt.block_on(async {
            let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
                .await
                .expect("the server must answer or close, not hang");
            r.ok()?;
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("fuzz-secret-value") || text.starts_with("HTTP/1.1 200"), "{text}");
            text.split(' ').nth(1).and_then(|c| c.parse().ok())
        })
    }

    fn healthy() {
        assert_eq!(exchange(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some(200));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Raw bytes: an answer below 500, or a closed connection.
        #[test]
        fn arbitrary_bytes_get_4xx_or_close(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Some(code) = exchange(&bytes) {
                prop_assert!(code < 500 || code == 503, "status {code}");
            }
        }

        /// Well-formed requests with arbitrary methods, paths and headers.
        #[test]
        fn arbitrary_requests_get_sane_answers(
            method in "(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|[A-Z]{1,10})",
            path in "/(v1/(secrets(/[ -~]{0,60})?|events|ready|health)|[ -~]{0,80})",
            header in "[A-Za-z-]{1,20}",
            value in "[ -~]{0,200}",
        ) {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\nConnection: close\r\n\r\n");
            if path.starts_with("/v1/events") && method == "GET" {
                return Ok(()); // a stream: never ends by itself
            }
            if let Some(code) = exchange(req.as_bytes()) {
                prop_assert!(code < 500 || code == 503, "{method} {path}: {code}");
            }
        }
    }

    #[test]
    fn still_healthy_after_fuzzing() {
        for _ in 0..50 {
            let _ = exchange(b"\x00\xff GET /v1/secrets/%zz HTTP/9.9\r\n\r\n");
        }
        let _ = exchange(format!("GET /v1/health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100_000)).as_bytes());
        healthy();
        assert_eq!(exchange(b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some(200));
    }
}
