//! Prometheus metrics, in the text exposition format, on a listener of their
//! own (TCP address or Unix socket; off unless `[metrics]` is configured).
//!
//! Every counter and histogram is declared once, in [`Metrics`], with its
//! help text in [`Metrics::register`]; the daemon makes one set and hands it
//! to the tasks that move it (the Vault client, auth, each secret task, the
//! socket), and `prometheus-client` does the exposition. Gauges about
//! secrets (seconds until each lease ends, versions, readiness) are computed
//! from the store at scrape time, so they are never stale. No label ever
//! holds a value: only secret names, operations, statuses and results.
//!
//! The names are an interface (alert rules in `examples/prometheus` and the
//! tests read them); log lines are not. The list of every metric, its type
//! and labels is the table in `docs/observability.md`; `tests/docs.rs` fails
//! when that table and [`Metrics::register`] disagree.
//!
//! # Who can scrape, and what it costs
//!
//! The page holds no value, but it names every configured secret with its
//! version, availability and lease or certificate expiry. Whoever can
//! connect can read it: on a TCP address that is every local user (and
//! every host that reaches the address), so the config check warns about
//! `metrics.listen` and recommends `metrics.socket`, whose file mode
//! (`metrics.mode`, default 0600) decides who may connect.
//!
//! Whoever can connect must not be able to take vaultlet's descriptors:
//! at most [`MAX_CONNECTIONS`] metrics connections are open at once (a
//! connection over the cap is accepted and closed at once), each serves one
//! request (no keep-alive) and lives at most [`CONNECTION_LIFETIME`],
//! however slowly its client sends or reads. A flood of metrics connections
//! therefore holds a fixed number of descriptors, and the API socket keeps
//! the rest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsListen;
use crate::store::Store;

/// Metrics connections open at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest a metrics connection lives: to send its request, and to read
/// the answer. A scrape takes milliseconds.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Longest a metrics connection may take to send its request's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// `result="ok"|"error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    result: &'static str,
}

/// `secret="…"`: the secret's name from the config, never its value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Secret {
    secret: Arc<str>,
}

/// `secret="…",result="ok"|"error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretOutcome {
    secret: Arc<str>,
    result: &'static str,
}

/// `operation="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    operation: &'static str,
}

/// `operation="…",result="ok"|"error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationOutcome {
    operation: &'static str,
    result: &'static str,
}

/// `file="…"`: a rendered file's path from the config (never its content).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct File {
    file: Arc<str>,
}

/// `file="…",result="ok"|"error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileOutcome {
    file: Arc<str>,
    result: &'static str,
}

/// `bundle="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Bundle {
    bundle: Arc<str>,
}

/// `status="…"` (HTTP status of a socket answer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    status: u16,
}

/// `reason="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    reason: &'static str,
}

/// Why the socket refused a caller (`vaultlet_socket_denied_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The caller may not use the socket at all.
    Socket,
    /// The caller may not read the secret it asked for.
    Secret,
    /// Too many requests from this caller.
    RateLimited,
    /// Too many connections from this uid.
    ConnectionLimitUid,
    /// Too many connections in all.
    ConnectionLimit,
    /// Too many long-polls parked by this uid.
    WaitLimit,
}

impl Denied {
    /// The `reason` label (stable: alerts match on it).
    pub fn label(self) -> &'static str {
        match self {
            Denied::Socket => "socket",
            Denied::Secret => "secret",
            Denied::RateLimited => "rate_limited",
            Denied::ConnectionLimitUid => "connection_limit_uid",
            Denied::ConnectionLimit => "connection_limit",
            Denied::WaitLimit => "wait_limit",
        }
    }
}

fn outcome<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every counter and histogram vaultlet keeps, declared once (with its help
/// text in [`Metrics::register`]). One instance per daemon, created by
/// [`crate::start`] and handed to the tasks that update it, so two daemons in
/// one process (the tests) never mix their counts. Cloning shares the values.
#[derive(Clone, Debug)]
pub struct Metrics {
    logins: Family<Outcome, Counter>,
    token_renewals: Family<Outcome, Counter>,
    lease_renewals: Family<SecretOutcome, Counter>,
    lease_lookups: Family<SecretOutcome, Counter>,
    credentials_issued: Family<Secret, Counter>,
    kv_reads: Family<SecretOutcome, Counter>,
    certificates_issued: Family<SecretOutcome, Counter>,
    vault_requests: Family<OperationOutcome, Counter>,
    vault_request_duration: Family<Operation, Histogram, fn() -> Histogram>,
    socket_requests: Family<Status, Counter>,
    socket_denied: Family<Reason, Counter>,
    state_resumed: Gauge,
    state_load_failures: Family<Reason, Counter>,
    state_writes: Counter,
    state_write_failures: Counter,
    file_writes: Family<File, Counter>,
    bundle_switches: Family<Bundle, Counter>,
    file_commands: Family<FileOutcome, Counter>,
    /// secret → the served certificate's `notAfter` (PKI secrets); turned
    /// into seconds left at scrape time.
    cert_ends: Arc<Mutex<BTreeMap<Arc<str>, std::time::SystemTime>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            logins: Family::default(),
            token_renewals: Family::default(),
            lease_renewals: Family::default(),
            lease_lookups: Family::default(),
            credentials_issued: Family::default(),
            kv_reads: Family::default(),
            certificates_issued: Family::default(),
            vault_requests: Family::default(),
            vault_request_duration: Family::new_with_constructor(histogram),
            socket_requests: Family::default(),
            socket_denied: Family::default(),
            state_resumed: Gauge::default(),
            state_load_failures: Family::default(),
            state_writes: Counter::default(),
            state_write_failures: Counter::default(),
            file_writes: Family::default(),
            bundle_switches: Family::default(),
            file_commands: Family::default(),
            cert_ends: Arc::default(),
        }
    }
}

impl Metrics {
    /// A fresh set, all zero.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// One login attempt.
    pub fn login<T, E>(&self, r: &Result<T, E>) {
        self.logins.get_or_create(&Outcome { result: outcome(r) }).inc();
    }

    /// One `renew-self` of the token.
    pub fn token_renewal<T, E>(&self, r: &Result<T, E>) {
        self.token_renewals.get_or_create(&Outcome { result: outcome(r) }).inc();
    }

    /// One lease renewal for `secret`.
    pub fn lease_renewal<T, E>(&self, secret: &str, r: &Result<T, E>) {
        self.lease_renewals.get_or_create(&SecretOutcome { secret: secret.into(), result: outcome(r) }).inc();
    }

    /// One lease lookup for `secret` (`verify_every`, reported credentials).
    pub fn lease_lookup<T, E>(&self, secret: &str, r: &Result<T, E>) {
        self.lease_lookups.get_or_create(&SecretOutcome { secret: secret.into(), result: outcome(r) }).inc();
    }

    /// A rendered file (env file or template) written with new content.
    pub fn file_written(&self, path: &std::path::Path) {
        self.file_writes.get_or_create(&File { file: path.display().to_string().into() }).inc();
    }

    /// A file bundle switched to a new directory of files.
    pub fn bundle_switched(&self, bundle: &str) {
        self.bundle_switches.get_or_create(&Bundle { bundle: bundle.into() }).inc();
    }

    /// An after-change command run for `path` (ok: exited 0 in time).
    pub fn file_command(&self, path: &std::path::Path, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.file_commands.get_or_create(&FileOutcome { file: path.display().to_string().into(), result }).inc();
    }

    /// One credential issued for `secret` (first issue or replacement).
    pub fn credential_issued(&self, secret: &str) {
        self.credentials_issued.get_or_create(&Secret { secret: secret.into() }).inc();
    }

    /// One KV read for `secret`.
    pub fn kv_read<T, E>(&self, secret: &str, r: &Result<T, E>) {
        self.kv_reads.get_or_create(&SecretOutcome { secret: secret.into(), result: outcome(r) }).inc();
    }

    /// One certificate request for `secret`.
    pub fn certificate_issued<T, E>(&self, secret: &str, r: &Result<T, E>) {
        self.certificates_issued.get_or_create(&SecretOutcome { secret: secret.into(), result: outcome(r) }).inc();
    }

    /// Records the end of the certificate a PKI secret now serves.
    pub fn cert_expiry(&self, secret: &str, end: std::time::SystemTime) {
        self.cert_ends.lock().unwrap_or_else(|p| p.into_inner()).insert(Arc::from(secret), end);
    }

    /// One request to Vault: its count and latency.
    pub fn vault_request(&self, operation: &'static str, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.vault_requests.get_or_create(&OperationOutcome { operation, result }).inc();
        self.vault_request_duration.get_or_create(&Operation { operation }).observe(took.as_secs_f64());
    }

    /// One socket answer, by status code.
    pub fn socket_status(&self, status: u16) {
        self.socket_requests.get_or_create(&Status { status }).inc();
    }

    /// One refused socket caller.
    pub fn socket_denied(&self, why: Denied) {
        self.socket_denied.get_or_create(&Reason { reason: why.label() }).inc();
    }

    /// How many secrets were served from the sealed state at start.
    pub fn state_resumed(&self, n: usize) {
        self.state_resumed.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A state file that could not be used; `reason` is one of
    /// `wrong_key_or_tampered`, `truncated`, `unknown_version`,
    /// `other_config`, `unreadable`, `unsafe_file`.
    pub fn state_load_failure(&self, reason: &'static str) {
        self.state_load_failures.get_or_create(&Reason { reason }).inc();
    }

    /// One state file write, done or failed.
    pub fn state_write(&self, ok: bool) {
        if ok {
            self.state_writes.inc()
        } else {
            self.state_write_failures.inc()
        };
    }

    /// The registry to expose: every metric above, with its help text, plus
    /// the gauges computed from `store` at scrape time. The `vaultlet_state_*`
    /// metrics are there only with `[state]` configured.
    pub fn register(&self, store: Store, with_state: bool) -> Registry {
        let mut r = Registry::default();
        // Counter names are given without `_total`: the encoder adds it.
        r.register("vaultlet_logins", "Logins to Vault, by result", self.logins.clone());
        r.register("vaultlet_token_renewals", "Token renew-self calls, by result", self.token_renewals.clone());
        r.register("vaultlet_lease_renewals", "Lease renewals, by secret and result", self.lease_renewals.clone());
        r.register(
            "vaultlet_lease_lookups",
            "Lease lookups (verify_every and reported credentials), by secret and result",
            self.lease_lookups.clone(),
        );
        r.register(
            "vaultlet_credentials_issued",
            "Database credentials issued (first issue and every replacement), by secret",
            self.credentials_issued.clone(),
        );
        r.register("vaultlet_kv_reads", "KV reads, by secret and result", self.kv_reads.clone());
        r.register(
            "vaultlet_certificates_issued",
            "PKI certificates requested, by secret and result",
            self.certificates_issued.clone(),
        );
        r.register(
            "vaultlet_vault_requests",
            "Requests to Vault, by operation and result",
            self.vault_requests.clone(),
        );
        r.register(
            "vaultlet_vault_request_duration_seconds",
            "Latency of requests to Vault, by operation",
            self.vault_request_duration.clone(),
        );
        r.register("vaultlet_socket_requests", "Answers on the socket, by HTTP status", self.socket_requests.clone());
        r.register(
            "vaultlet_socket_denied",
            "Socket callers refused, by reason (socket, secret, rate_limited, connection_limit_uid, connection_limit, wait_limit)",
            self.socket_denied.clone(),
        );
        r.register(
            "vaultlet_file_writes",
            "Env files and templates written with new content, by file",
            self.file_writes.clone(),
        );
        r.register(
            "vaultlet_bundle_switches",
            "File bundles switched to a new set of files, by bundle",
            self.bundle_switches.clone(),
        );
        r.register(
            "vaultlet_file_commands",
            "After-change commands run, by file and result (error: failed, timed out or not started)",
            self.file_commands.clone(),
        );
        if with_state {
            r.register(
                "vaultlet_state_resumed_secrets",
                "Secrets served from the sealed state file at start",
                self.state_resumed.clone(),
            );
            r.register(
                "vaultlet_state_load_failures",
                "State files not used, by reason (wrong_key_or_tampered, truncated, unknown_version, other_config, unreadable, unsafe_file)",
                self.state_load_failures.clone(),
            );
            r.register("vaultlet_state_writes", "State file writes", self.state_writes.clone());
            r.register(
                "vaultlet_state_write_failures",
                "State file writes that failed",
                self.state_write_failures.clone(),
            );
        }
        r.register_collector(Box::new(StoreGauges { store, cert_ends: self.cert_ends.clone() }));
        r
    }
}

/// Gauges about secrets, computed from the store at scrape time so they are
/// never stale.
struct StoreGauges {
    store: Store,
    cert_ends: Arc<Mutex<BTreeMap<Arc<str>, std::time::SystemTime>>>,
}

impl std::fmt::Debug for StoreGauges {
    // Never the values: only that this is the store's collector.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreGauges")
    }
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Arc<str>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (secret, v) in rows {
        let labels = Secret { secret };
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StoreGauges {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.store.snapshot();
        let now = Instant::now();
        let leased: Vec<_> =
            snap.iter().filter_map(|(n, e)| e.live(now).and(e.lease.as_ref().map(|l| (n.clone(), l.get())))).collect();
        gauge(
            &mut enc,
            "vaultlet_secret_lease_expiry_seconds",
            "Seconds until the served credential's lease ends.",
            leased.iter().map(|(n, l)| (n.clone(), l.expires_at.saturating_duration_since(now).as_secs_f64())),
        )?;
        let wall = std::time::SystemTime::now();
        let cert_ends = self.cert_ends.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gauge(
            &mut enc,
            "vaultlet_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (PKI secrets).",
            cert_ends
                .into_iter()
                .filter(|(n, _)| snap.get(n).is_some_and(|e| e.live(now).is_some()))
                .map(|(n, end)| (n, end.duration_since(wall).unwrap_or_default().as_secs_f64())),
        )?;
        gauge(
            &mut enc,
            "vaultlet_secret_lease_ttl_seconds",
            "The TTL the served credential's lease was issued with.",
            leased.iter().map(|(n, l)| (n.clone(), l.ttl.as_secs_f64())),
        )?;
        gauge(
            &mut enc,
            "vaultlet_secret_version",
            "Version of each secret's content (moves only when the content changes).",
            snap.iter().map(|(n, e)| (n.clone(), e.version as f64)),
        )?;
        gauge(
            &mut enc,
            "vaultlet_secret_available",
            "1 when the secret is served, 0 when missing or expired.",
            snap.iter().map(|(n, e)| (n.clone(), if e.live(now).is_some() { 1.0 } else { 0.0 })),
        )?;
        let ready = self.store.not_ready(now).is_empty();
        let m =
            enc.encode_descriptor("vaultlet_ready", "1 when every secret is available.", None, MetricType::Gauge)?;
        ConstGauge::new(i64::from(ready)).encode(m)
    }
}

/// The exposition text (Prometheus text format 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// Serves `GET /metrics` until shutdown.
pub async fn serve(listen: MetricsListen, registry: Registry, shutdown: CancellationToken) {
    let registry = Arc::new(registry);
    let caps = Caps { connections: MAX_CONNECTIONS, header: HEADER_TIMEOUT, lifetime: CONNECTION_LIFETIME };
    match listen {
        MetricsListen::Tcp(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics listening");
                accept_loop(|| l.accept(), registry, caps, shutdown).await
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
                    accept_loop(|| l.accept(), registry, caps, shutdown).await;
                    file.remove();
                }
                Err(e) => tracing::error!(error = %e, "cannot listen for metrics"),
            }
        }
    }
}

/// How many metrics connections may be open, and for how long.
#[derive(Clone, Copy, Debug)]
struct Caps {
    connections: usize,
    header: Duration,
    lifetime: Duration,
}

async fn accept_loop<S, Addr, A, F>(accept: F, registry: Arc<Registry>, caps: Caps, shutdown: CancellationToken)
where
    F: Fn() -> A,
    A: std::future::Future<Output = std::io::Result<(S, Addr)>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let open = Arc::new(tokio::sync::Semaphore::new(caps.connections));
    let mut warned: Option<Instant> = None;
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so its descriptor is free again.
            drop(stream);
            if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60)) {
                warned = Some(Instant::now());
                tracing::warn!(cap = caps.connections, "too many metrics connections; closing new ones");
            }
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (200, render(&registry))
                    } else {
                        (404, "see /metrics\n".to_string())
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(axum::body::Body::from(body))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(caps.header)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // Whatever the client does (sends nothing, never reads the
            // answer), the connection and its descriptor end here.
            let _ = tokio::time::timeout(caps.lifetime, conn).await;
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
        let m = Metrics::new();
        m.login(&Ok::<(), ()>(()));
        m.vault_request("db_creds", Duration::from_millis(30), true);
        m.socket_denied(Denied::WaitLimit);
        let text = render(&m.register(store.clone(), false));
        assert!(text.contains("vaultlet_logins_total{result=\"ok\"}"), "{text}");
        assert!(text.contains("vaultlet_vault_request_duration_seconds_bucket{operation=\"db_creds\",le=\"0.05\"} 1"));
        assert!(text.contains("vaultlet_secret_lease_expiry_seconds{secret=\"db\"} 90"), "{text}");
        assert!(text.contains("vaultlet_secret_lease_ttl_seconds{secret=\"db\"} 120"));
        assert!(text.contains("vaultlet_ready 1"));
        assert!(text.contains("vaultlet_socket_denied_total{reason=\"wait_limit\"} 1"), "{text}");
        assert!(text.contains("# HELP vaultlet_logins_total Logins to Vault"), "{text}");
        assert!(!text.contains("p4ss"));
    }

    /// Serves a registry on 127.0.0.1 with `caps`; its address.
    async fn listen(caps: Caps) -> (std::net::SocketAddr, CancellationToken) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let registry = Arc::new(Metrics::new().register(Store::new(["db"]), false));
        let s = stop.clone();
        tokio::spawn(async move { accept_loop(|| l.accept(), registry, caps, s).await });
        (addr, stop)
    }

    /// Sends a scrape on `s` and reads the answer to the end; the status line.
    async fn scrape(mut s: tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("one request, then the connection closes")
            .unwrap();
        String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_owned()
    }

    /// Whether the server closed `s` (reads end) within a generous deadline.
    async fn closed_by_server(s: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn metrics_connections_over_the_cap_are_closed_at_once() {
        let (addr, stop) =
            listen(Caps { connections: 4, header: Duration::from_secs(60), lifetime: Duration::from_secs(60) }).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: these find the four places taken by idle
        // connections, and are closed without waiting for anything.
        for _ in 0..20 {
            let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert!(closed_by_server(&mut over).await, "a connection over the cap stays open");
        }
        // A held connection still scrapes; its place is then free again.
        assert_eq!(scrape(held.pop().unwrap()).await, "HTTP/1.1 200 OK");
        assert_eq!(scrape(tokio::net::TcpStream::connect(addr).await.unwrap()).await, "HTTP/1.1 200 OK");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_metrics_connection_is_closed_after_its_lifetime() {
        let (addr, stop) =
            listen(Caps { connections: 1, header: Duration::from_secs(60), lifetime: Duration::from_millis(300) })
                .await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut idle).await, "an idle connection outlives its lifetime");
        // Its place is free: the one connection allowed scrapes.
        assert_eq!(scrape(tokio::net::TcpStream::connect(addr).await.unwrap()).await, "HTTP/1.1 200 OK");
        stop.cancel();
    }

    #[test]
    fn two_daemons_in_one_process_keep_their_own_counts() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.credential_issued("db");
        let text = render(&b.register(Store::new(["db"]), false));
        assert!(!text.contains("vaultlet_credentials_issued_total{secret=\"db\"}"), "{text}");
        let text = render(&a.register(Store::new(["db"]), false));
        assert!(text.contains("vaultlet_credentials_issued_total{secret=\"db\"} 1"), "{text}");
    }
}
