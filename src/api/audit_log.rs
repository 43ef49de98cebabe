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

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

use super::access::AuditRecord;
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
