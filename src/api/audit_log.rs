//! Where audit lines go: stderr, logged and written after the answer.
//!
//! Every read leaves an audit line, and both formatting it and writing it
//! to stderr took longer than everything else a read does (measured in
//! `bench/run.sh --only socket --profile`). So while the socket serves, a
//! request only queues the line's fields ([`submit`]); a thread of its own,
//! woken by the first record, waits [`BATCH`] for more, logs each record
//! through the same tracing formatter as every other line (same bytes, same
//! filters, text or JSON) into a buffer, and writes the buffer in one call.
//! A line reaches stderr well within a millisecond of its answer (its
//! timestamp is when it was logged), a steady stream of reads costs one
//! write and one wake-up per batch, and the socket's thread neither formats
//! nor waits on stderr. The batch is short on purpose: with 2 ms batches
//! the burst of formatting at each wake-up delayed the socket's thread and
//! tripled its p99 latency at 8 connections.
//!
//! No line is lost or reordered: records are logged in the order they were
//! queued, by one logger at a time, and their lines written in that order;
//! while no flusher runs (before the socket serves, after it stops) lines
//! are logged and written at once, after whatever still waits. When the
//! socket stops, everything queued is logged and written before the flusher
//! goes away. If stderr stops accepting (a full pipe), the queue stops
//! growing at [`MAX_RECORDS`] and the buffer at [`MAX_PENDING`]; requests
//! then log their lines themselves, waiting like any other logger.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

use tracing_subscriber::fmt::writer::EitherWriter;

/// The log writer the binary installs: stderr, with audit lines deferred
/// while the socket serves.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EitherWriter<std::io::Stderr, AuditLine>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::A(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        if meta.target() == "vaultlet::audit" { EitherWriter::B(AuditLine) } else { EitherWriter::A(std::io::stderr()) }
    }
}

/// How long the flusher gathers lines before writing them.
const BATCH: std::time::Duration = std::time::Duration::from_micros(200);

/// The audit thread's nice value (the process's is usually 0).
const AUDIT_NICE: i32 = 10;

/// Beyond this many buffered bytes, lines are written by whoever logs them.
const MAX_PENDING: usize = 1 << 20;

/// Beyond this many queued records, requests log their own lines.
const MAX_RECORDS: usize = 16 * 1024;

struct Pending {
    /// Records not logged yet, oldest first.
    records: Vec<AuditRecord>,
    /// Lines logged, not written yet.
    buf: Vec<u8>,
    /// A flusher thread is running and will log `records` and write `buf`.
    flusher: bool,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending { records: Vec::new(), buf: Vec::new(), flusher: false });
/// Signalled when `records` or `buf` stops being empty, and when the
/// flusher must stop.
static WAKE: Condvar = Condvar::new();
/// Held while queued records are logged, so they are logged in order.
static LOGGING: Mutex<()> = Mutex::new(());
/// Held while bytes go to stderr, so lines leave in the order they came.
static WRITING: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues an audit record for the flusher, or (no flusher, or a full
/// queue) logs it now, after every record still queued.
pub(super) fn submit(record: AuditRecord) {
    let mut p = lock(&PENDING);
    if p.flusher && p.records.len() < MAX_RECORDS {
        let wake = p.records.is_empty() && p.buf.is_empty();
        p.records.push(record);
        drop(p);
        if wake {
            WAKE.notify_one();
        }
        return;
    }
    drop(p);
    let _l = lock(&LOGGING);
    let waiting = std::mem::take(&mut lock(&PENDING).records);
    for r in &waiting {
        r.log();
    }
    record.log();
}

/// Logs every queued record, in order.
fn log_queued() {
    let _l = lock(&LOGGING);
    let waiting = std::mem::take(&mut lock(&PENDING).records);
    for r in &waiting {
        r.log();
    }
}

/// Writes whatever is buffered, in order.
fn flush() {
    let _w = lock(&WRITING);
    let buf = std::mem::take(&mut lock(&PENDING).buf);
    if !buf.is_empty() {
        let _ = std::io::stderr().write_all(&buf);
    }
}

/// One audit line on its way to stderr.
pub struct AuditLine;

impl Write for AuditLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut p = lock(&PENDING);
        if p.flusher && p.buf.len() < MAX_PENDING {
            let wake = p.buf.is_empty();
            p.buf.extend_from_slice(b);
            drop(p);
            if wake {
                WAKE.notify_one();
            }
            return Ok(b.len());
        }
        // No flusher, or it cannot keep up: write it now, after what is
        // buffered.
        drop(p);
        let _w = lock(&WRITING);
        let buf = std::mem::take(&mut lock(&PENDING).buf);
        let mut err = std::io::stderr();
        let _ = err.write_all(&buf);
        err.write_all(b)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the flusher until the guard is dropped; then writes what is left.
/// Without a thread (the system refused one) lines are written at once.
pub(super) fn start() -> Flusher {
    lock(&PENDING).flusher = true;
    let thread = std::thread::Builder::new().name("vaultlet-audit".into()).spawn(|| {
        // Formatting a batch is a burst of work that can wait: when CPUs
        // are short, the socket's thread goes first (Linux sets the nice
        // value of the calling thread). Lines are still written, a little
        // later.
        let _ = rustix::process::setpriority_process(None, AUDIT_NICE);
        loop {
            let mut p = lock(&PENDING);
            while p.flusher && p.records.is_empty() && p.buf.is_empty() {
                p = WAKE.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if !p.flusher {
                return;
            }
            drop(p);
            std::thread::sleep(BATCH);
            log_queued();
            flush();
        }
    });
    if thread.is_err() {
        lock(&PENDING).flusher = false;
    }
    Flusher(thread.ok())
}

/// The running flusher; dropping it writes every buffered line.
pub(super) struct Flusher(Option<std::thread::JoinHandle<()>>);

impl Drop for Flusher {
    fn drop(&mut self) {
        lock(&PENDING).flusher = false;
        WAKE.notify_all();
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
        log_queued();
        flush();
    }
}

/// An audit line's fields, for logging later on another thread.
pub(super) struct AuditRecord {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) shown: Arc<(Box<str>, Box<str>)>,
    pub(super) secret: Box<str>,
    pub(super) version: Option<u64>,
    pub(super) outcome: &'static str,
}

impl AuditRecord {
    /// Logs the line.
    pub(super) fn log(&self) {
        log_audit(self.uid, self.gid, &self.shown, &self.secret, self.version, self.outcome);
    }
}

fn log_audit(
    uid: u32,
    gid: u32,
    shown: &(Box<str>, Box<str>),
    secret: &str,
    version: Option<u64>,
    outcome: &'static str,
) {
    let (pid, exe) = (&*shown.0, &*shown.1);
    let secret = field(secret);
    let version = OrDash(version);
    if outcome == "allowed" {
        tracing::info!(target: "vaultlet::audit", uid, gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    } else {
        tracing::warn!(target: "vaultlet::audit", uid, gid, pid = %pid, exe = %exe, secret = %secret, version = %version, outcome = %outcome, "socket read");
    }
}

/// A number, or `-` when there is none; formatted where the line is written
/// instead of into a `String` first.
pub(super) struct OrDash(pub(super) Option<u64>);

impl fmt::Display for OrDash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => fmt::Display::fmt(&v, f),
            None => f.write_str("-"),
        }
    }
}

/// A caller-controlled value as one audit field: as it is when it is
/// printable ASCII without spaces, quotes or backslashes; otherwise in
/// double quotes with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{…}` for every
/// other control or invisible line-breaking character. Bytes that are not
/// UTF-8 reach here as U+FFFD (the path is read lossily).
pub fn audit_field(v: &str) -> String {
    field(v).into_owned()
}

/// [`audit_field`], borrowing the value when it needs no quoting (the
/// usual case: a secret name, an executable path without spaces).
pub(super) fn field(v: &str) -> Cow<'_, str> {
    let bare = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if bare {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}
