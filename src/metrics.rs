//! Prometheus metrics, in the text exposition format, on a listener of their
//! own (TCP address or Unix socket; off unless `[metrics]` is configured).
//!
//! Counters and the request-latency histogram live in one process-wide
//! registry; gauges about secrets (seconds until each lease ends, versions,
//! readiness) are computed from the store at scrape time, so they are never
//! stale. No label ever holds a value: only secret names, operations and
//! results.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `vaultlet_logins_total` | counter | `result` |
//! | `vaultlet_token_renewals_total` | counter | `result` |
//! | `vaultlet_lease_renewals_total` | counter | `secret`, `result` |
//! | `vaultlet_lease_lookups_total` | counter | `secret`, `result` (`verify_every` and reported credentials) |
//! | `vaultlet_credentials_issued_total` | counter | `secret` (first issue and every replacement) |
//! | `vaultlet_kv_reads_total` | counter | `secret`, `result` |
//! | `vaultlet_vault_request_duration_seconds` | histogram | `operation` |
//! | `vaultlet_vault_requests_total` | counter | `operation`, `result` |
//! | `vaultlet_socket_requests_total` | counter | `status` |
//! | `vaultlet_socket_denied_total` | counter | `reason` (`socket`, `secret`, `rate_limited`, `connection_limit_uid`, `connection_limit`, `wait_limit`) |
//! | `vaultlet_secret_lease_expiry_seconds` | gauge | `secret`: seconds until the served credential's lease ends |
//! | `vaultlet_secret_lease_ttl_seconds` | gauge | `secret`: the TTL the lease was issued with |
//! | `vaultlet_certificate_expiry_seconds` | gauge | `secret`: seconds until the served certificate's `notAfter` (PKI secrets) |
//! | `vaultlet_certificates_issued_total` | counter | `secret`, `result` |
//! | `vaultlet_secret_version` | gauge | `secret` |
//! | `vaultlet_secret_available` | gauge | `secret`: 1 when served, 0 when missing or expired |
//! | `vaultlet_ready` | gauge | 1 when every secret is available |
//! | `vaultlet_state_resumed_secrets` | gauge | secrets served from the sealed state at start |
//! | `vaultlet_state_load_failures_total` | counter | `reason` (`wrong_key_or_tampered`, `truncated`, `unknown_version`, `other_config`, `unreadable`) |
//! | `vaultlet_state_writes_total` | counter | state file writes |
//! | `vaultlet_state_write_failures_total` | counter | state file writes that failed |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsListen;
use crate::store::Store;

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Default)]
struct Registry {
    counters: BTreeMap<Key, u64>,
    /// operation → (bucket counts, sum, count)
    latency: BTreeMap<&'static str, ([u64; BUCKETS.len()], f64, u64)>,
    /// secret → the served certificate's end (PKI secrets).
    cert_ends: BTreeMap<Arc<str>, std::time::SystemTime>,
    /// Process-wide gauges set once in a while (no labels).
    gauges: BTreeMap<&'static str, f64>,
}

/// Sets a gauge without labels.
pub fn set_gauge(name: &'static str, v: f64) {
    registry().gauges.insert(name, v);
}

/// Records the end of the certificate a PKI secret now serves.
pub fn cert_expiry(secret: &str, end: std::time::SystemTime) {
    registry().cert_ends.insert(Arc::from(secret), end);
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Socket answers by status code, on the hot path: no lock, no allocation.
static SOCKET_STATUS: [std::sync::atomic::AtomicU64; 600] = [const { std::sync::atomic::AtomicU64::new(0) }; 600];

/// Counts one socket answer.
pub fn socket_status(code: u16) {
    if let Some(c) = SOCKET_STATUS.get(usize::from(code)) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds one to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &str)]) {
    let key = (name, labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect());
    *registry().counters.entry(key).or_default() += 1;
}

/// `ok` or `error`, for `result` labels.
pub fn result<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

/// Records one Vault request.
pub fn vault_request(operation: &'static str, took: Duration, ok: bool) {
    inc("vaultlet_vault_requests_total", &[("operation", operation), ("result", if ok { "ok" } else { "error" })]);
    let secs = took.as_secs_f64();
    let mut r = registry();
    let h = r.latency.entry(operation).or_insert(([0; BUCKETS.len()], 0.0, 0));
    for (i, b) in BUCKETS.iter().enumerate() {
        if secs <= *b {
            h.0[i] += 1;
        }
    }
    h.1 += secs;
    h.2 += 1;
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(l: &[(&str, String)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The exposition text.
pub fn render(store: &Store) -> String {
    let mut out = String::new();
    {
        let r = registry();
        let mut last = "";
        for ((name, l), v) in &r.counters {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", labels(l));
        }
        for (name, v) in &r.gauges {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(out, "# TYPE vaultlet_socket_requests_total counter");
        for (code, c) in SOCKET_STATUS.iter().enumerate() {
            let n = c.load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "vaultlet_socket_requests_total{{status=\"{code}\"}} {n}");
            }
        }
        if !r.latency.is_empty() {
            let name = "vaultlet_vault_request_duration_seconds";
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (op, (buckets, sum, count)) in &r.latency {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{{operation=\"{op}\",le=\"{b}\"}} {}", buckets[i]);
                }
                let _ = writeln!(out, "{name}_bucket{{operation=\"{op}\",le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{operation=\"{op}\"}} {sum}");
                let _ = writeln!(out, "{name}_count{{operation=\"{op}\"}} {count}");
            }
        }
    }
    let cert_ends = registry().cert_ends.clone();
    let snap = store.snapshot();
    let now = Instant::now();
    let mut gauge = |name: &str, rows: Vec<(Arc<str>, f64)>| {
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (secret, v) in rows {
            let _ = writeln!(out, "{name}{{secret=\"{}\"}} {v}", escape(&secret));
        }
    };
    let leased: Vec<_> =
        snap.iter().filter_map(|(n, e)| e.live(now).and(e.lease.as_ref().map(|l| (n.clone(), l.get())))).collect();
    gauge(
        "vaultlet_secret_lease_expiry_seconds",
        leased.iter().map(|(n, l)| (n.clone(), l.expires_at.saturating_duration_since(now).as_secs_f64())).collect(),
    );
    let wall = std::time::SystemTime::now();
    gauge(
        "vaultlet_certificate_expiry_seconds",
        cert_ends
            .into_iter()
            .filter(|(n, _)| snap.get(n).is_some_and(|e| e.live(now).is_some()))
            .map(|(n, end)| (n, end.duration_since(wall).unwrap_or_default().as_secs_f64()))
            .collect(),
    );
    gauge("vaultlet_secret_lease_ttl_seconds", leased.iter().map(|(n, l)| (n.clone(), l.ttl.as_secs_f64())).collect());
    gauge("vaultlet_secret_version", snap.iter().map(|(n, e)| (n.clone(), e.version as f64)).collect());
    gauge(
        "vaultlet_secret_available",
        snap.iter().map(|(n, e)| (n.clone(), if e.live(now).is_some() { 1.0 } else { 0.0 })).collect(),
    );
    let ready = store.not_ready(now).is_empty();
    let _ = writeln!(out, "# TYPE vaultlet_ready gauge\nvaultlet_ready {}", u8::from(ready));
    out
}

/// Serves `GET /metrics` until shutdown.
pub async fn serve(listen: MetricsListen, store: Store, shutdown: CancellationToken) {
    match listen {
        MetricsListen::Tcp(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics listening");
                accept_loop(|| l.accept(), store, shutdown).await
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot listen for metrics"),
        },
        MetricsListen::Unix(path, mode) => {
            // The same rules as the API socket: a file someone else put at
            // the path is never deleted, and only our socket is removed.
            let bound = crate::write::bind_socket(&path, mode).and_then(|(l, file)| {
                let io = |source| crate::write::PlaceError::Io { path: path.display().to_string(), source };
                l.set_nonblocking(true).map_err(io)?;
                Ok((tokio::net::UnixListener::from_std(l).map_err(io)?, file))
            });
            match bound {
                Ok((l, file)) => {
                    tracing::info!(path = %path.display(), "metrics listening");
                    accept_loop(|| l.accept(), store, shutdown).await;
                    file.remove();
                }
                Err(e) => tracing::error!(error = %e, "cannot listen for metrics"),
            }
        }
    }
}

async fn accept_loop<S, Addr, A, F>(accept: F, store: Store, shutdown: CancellationToken)
where
    F: Fn() -> A,
    A: std::future::Future<Output = std::io::Result<(S, Addr)>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (200, render(&store))
                    } else {
                        (404, "see /metrics\n".to_string())
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(axum::body::Body::from(body))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[tokio::test(start_paused = true)]
    async fn exposition_has_counters_histogram_and_lease_gauges() {
        let store = Store::new(["db"]);
        let mut d = crate::secret::SecretData::default();
        d.insert("password", SecretString::from("p4ss-never-in-metrics".to_string()));
        let now = Instant::now();
        store.publish(
            "db",
            d,
            Some(crate::store::LeaseView {
                expires_at: now + Duration::from_secs(90),
                ttl: Duration::from_secs(120),
                renewable: true,
            }),
        );
        inc("vaultlet_logins_total", &[("result", "ok")]);
        vault_request("db_creds", Duration::from_millis(30), true);
        let text = render(&store);
        assert!(text.contains("vaultlet_logins_total{result=\"ok\"}"), "{text}");
        assert!(text.contains("vaultlet_vault_request_duration_seconds_bucket{operation=\"db_creds\",le=\"0.05\"} 1"));
        assert!(text.contains("vaultlet_secret_lease_expiry_seconds{secret=\"db\"} 90"), "{text}");
        assert!(text.contains("vaultlet_secret_lease_ttl_seconds{secret=\"db\"} 120"));
        assert!(text.contains("vaultlet_ready 1"));
        assert!(!text.contains("p4ss"));
    }
}
