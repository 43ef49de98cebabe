//! Where audit lines go: stderr, written after the answer instead of before.
//!
//! Every read leaves an audit line, and writing it to stderr is a system
//! call that took longer than everything else a read does (measured in
//! `bench/run.sh --only socket`). So lines on the `vaultlet::audit` target
//! are formatted by the same tracing formatter as every other line (same
//! bytes, same filters, text or JSON), but instead of being written by the
//! request that logs them they are appended to a buffer and written by a
//! thread of their own, which the first line wakes. That thread waits
//! [`BATCH`] for more lines and writes them in one call: a line reaches
//! stderr a few milliseconds after its answer, a steady stream of reads
//! costs one write (and one wake-up) per batch instead of one per read, and
//! the socket's thread never waits on stderr.
//!
//! No line is lost or reordered: lines are written in the order they were
//! logged, one writer at a time; while no flusher runs (before the socket
//! serves, after it stops, or without a socket) lines are written at once,
//! as before; when the socket stops, whatever is buffered is written before
//! the flusher goes away. If stderr stops accepting (a full pipe), the
//! buffer stops growing at [`MAX_PENDING`] and requests write their lines
//! themselves, waiting like any other logger.

use std::io::Write;
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
const BATCH: std::time::Duration = std::time::Duration::from_millis(2);

/// Beyond this many buffered bytes, requests write their own lines.
const MAX_PENDING: usize = 1 << 20;

struct Pending {
    buf: Vec<u8>,
    /// A flusher thread is running and will write `buf`.
    flusher: bool,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending { buf: Vec::new(), flusher: false });
/// Signalled when `buf` stops being empty, and when the flusher must stop.
static WAKE: Condvar = Condvar::new();
/// Held while bytes go to stderr, so lines leave in the order they came.
static WRITING: Mutex<()> = Mutex::new(());

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
/// Without a thread (the system refused one) lines are written at once.
pub(super) fn start() -> Flusher {
    lock(&PENDING).flusher = true;
    let thread = std::thread::Builder::new().name("vaultlet-audit".into()).spawn(|| {
        loop {
            let mut p = lock(&PENDING);
            while p.flusher && p.buf.is_empty() {
                p = WAKE.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if !p.flusher {
                return;
            }
            drop(p);
            std::thread::sleep(BATCH);
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
        flush();
    }
}
