//! Where audit lines go: stderr, written after the answer instead of before.
//!
//! Every read leaves an audit line, and writing it to stderr is a system
//! call that took longer than everything else a read does (measured in
//! `bench/run.sh --only socket`). So lines on the `vaultlet::audit` target
//! are formatted by the same tracing formatter as every other line (same
//! bytes, same filters, text or JSON), but instead of being written by the
//! request that logs them they are appended to a buffer and written by a
//! task the request wakes. That task runs once the answer is on its way, and
//! under load it writes many lines in one call.
//!
//! No line is lost or reordered: lines are written in the order they were
//! logged, one writer at a time; while no flusher runs (before the socket
//! serves, after it stops, or without a socket) lines
//! are written at once, as before; when the socket stops, whatever is
//! buffered is written before the flusher goes away. If stderr stops
//! accepting (a full pipe), the buffer stops growing at [`MAX_PENDING`] and
//! requests write their lines themselves, waiting like any other logger.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
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

/// Beyond this many buffered bytes, requests write their own lines.
const MAX_PENDING: usize = 1 << 20;

struct Pending {
    buf: Vec<u8>,
    /// A flusher task is running and will write `buf`.
    flusher: bool,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending { buf: Vec::new(), flusher: false });
/// Held while bytes go to stderr, so lines leave in the order they came.
static WRITING: Mutex<()> = Mutex::new(());
static WAKE: Notify = Notify::const_new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
pub(super) fn start() -> Flusher {
    lock(&PENDING).flusher = true;
    let task = tokio::spawn(async {
        loop {
            WAKE.notified().await;
            flush();
        }
    });
    Flusher(task)
}

/// The running flusher; dropping it writes every buffered line.
pub(super) struct Flusher(tokio::task::JoinHandle<()>);

impl Drop for Flusher {
    fn drop(&mut self) {
        self.0.abort();
        lock(&PENDING).flusher = false;
        flush();
    }
}
