//! A small HTTP/1.1 load generator for Unix sockets, and a trivial server to
//! check that the generator is not the bottleneck.
//!
//! ```text
//! loadgen bench --socket PATH --path /v1/secrets/db [--header 'K: V']... \
//!               [--conns 8] [--duration 10] [--warmup 0.5] [--threads 1]
//! loadgen serve --socket PATH [--body-bytes 300]
//! ```
//!
//! `bench` opens `--conns` keep-alive connections, each sending one GET at a
//! time (no pipelining) for `--duration` seconds after a `--warmup` whose
//! requests are not counted. It prints one JSON line: requests, errors,
//! requests/s, latency percentiles in microseconds, and the generator's own
//! CPU time (from /proc/self/schedstat) so a reader can tell whether it was
//! saturated.
//!
//! `serve` answers every request on a connection with a fixed 200 JSON body,
//! on one thread: the fastest server this machine can have, so the rate the
//! generator reaches against it is the generator's ceiling.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

fn usage() -> ExitCode {
    eprintln!(
        "usage: loadgen bench --socket PATH --path URLPATH [--header 'K: V']... [--conns N] [--duration S] [--warmup S] [--threads N]\n       loadgen serve --socket PATH [--body-bytes N]"
    );
    ExitCode::from(2)
}

struct BenchArgs {
    socket: PathBuf,
    path: String,
    headers: Vec<String>,
    conns: usize,
    duration: f64,
    warmup: f64,
    threads: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { return usage() };
    let mut socket = None;
    let mut b = BenchArgs {
        socket: PathBuf::new(),
        path: String::new(),
        headers: Vec::new(),
        conns: 1,
        duration: 10.0,
        warmup: 0.5,
        threads: 1,
    };
    let mut body_bytes = 300usize;
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else { return usage() };
        let ok = match flag.as_str() {
            "--socket" => {
                socket = Some(PathBuf::from(v));
                true
            }
            "--path" => {
                b.path = v.clone();
                true
            }
            "--header" => {
                b.headers.push(v.clone());
                true
            }
            "--conns" => v.parse().map(|n| b.conns = n).is_ok(),
            "--duration" => v.parse().map(|n| b.duration = n).is_ok(),
            "--warmup" => v.parse().map(|n| b.warmup = n).is_ok(),
            "--threads" => v.parse().map(|n| b.threads = n).is_ok(),
            "--body-bytes" => v.parse().map(|n| body_bytes = n).is_ok(),
            _ => false,
        };
        if !ok {
            return usage();
        }
    }
    let Some(socket) = socket else { return usage() };
    match cmd.as_str() {
        "bench" if !b.path.is_empty() && b.conns > 0 && b.threads > 0 => {
            b.socket = socket;
            let rt = if b.threads == 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(b.threads).enable_all().build()
            };
            match rt.expect("tokio runtime").block_on(bench(b)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "serve" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            if let Err(e) = rt.block_on(serve(socket, body_bytes)) {
                eprintln!("loadgen: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

/// CPU time of this process (all threads), in seconds.
fn cpu_seconds() -> f64 {
    // schedstat: "<ns on cpu> <ns waiting> <timeslices>" (summed over threads
    // only for the thread group leader in /proc/self/stat; schedstat of the
    // leader is the leader alone, so sum the tasks).
    let mut total = 0u64;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total as f64 / 1e9
}

#[derive(Default)]
struct ConnStats {
    /// Latency of each counted request, in microseconds.
    lat_us: Vec<u32>,
    errors: u64,
    non_200: u64,
    bytes: u64,
}

async fn bench(a: BenchArgs) -> Result<String, String> {
    let mut req = format!("GET {} HTTP/1.1\r\nHost: localhost\r\n", a.path);
    for h in &a.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let req: &'static [u8] = Box::leak(req.into_bytes().into_boxed_slice());

    // Connect everything first, so connection set-up is not measured.
    let mut streams = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        streams.push(UnixStream::connect(&a.socket).await.map_err(|e| format!("connect {}: {e}", a.socket.display()))?);
    }
    let start = Instant::now();
    let count_from = start + Duration::from_secs_f64(a.warmup);
    let end = count_from + Duration::from_secs_f64(a.duration);
    let mut tasks = tokio::task::JoinSet::new();
    let path: &'static std::path::Path = Box::leak(a.socket.clone().into_boxed_path());
    for s in streams {
        tasks.spawn(conn_loop(s, path, req, count_from, end));
    }
    // Our own CPU time from when counting starts.
    tokio::time::sleep_until(count_from.into()).await;
    let cpu_at_count = cpu_seconds();
    let mut all = ConnStats::default();
    while let Some(r) = tasks.join_next().await {
        let s = r.map_err(|e| format!("connection task: {e}"))?;
        all.lat_us.extend_from_slice(&s.lat_us);
        all.errors += s.errors;
        all.non_200 += s.non_200;
        all.bytes += s.bytes;
    }
    let cpu = cpu_seconds() - cpu_at_count;
    let secs = a.duration;
    all.lat_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.lat_us.is_empty() {
            return 0;
        }
        let i = ((all.lat_us.len() as f64 - 1.0) * p).round() as usize;
        all.lat_us[i]
    };
    let n = all.lat_us.len();
    Ok(format!(
        "{{\"requests\":{n},\"errors\":{},\"non_200\":{},\"seconds\":{secs},\"rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"bytes\":{},\"conns\":{},\"threads\":{},\"cpu_s\":{:.3},\"cpu_pct\":{:.1}}}",
        all.errors,
        all.non_200,
        n as f64 / secs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        all.bytes,
        a.conns,
        a.threads,
        cpu,
        100.0 * cpu / secs,
    ))
}

async fn conn_loop(
    mut s: UnixStream,
    path: &'static std::path::Path,
    req: &'static [u8],
    count_from: Instant,
    end: Instant,
) -> ConnStats {
    let mut st = ConnStats { lat_us: Vec::with_capacity(1 << 16), ..Default::default() };
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let res = async {
            s.write_all(req).await?;
            read_response(&mut s, &mut buf).await
        }
        .await;
        let t1 = Instant::now();
        match res {
            Ok((status, n)) => {
                if t0 >= count_from {
                    st.lat_us.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    st.bytes += n as u64;
                    if status != 200 {
                        st.non_200 += 1;
                    }
                }
            }
            Err(_) => {
                // Count it and reconnect: a server may close a keep-alive
                // connection at any time.
                st.errors += 1;
                match UnixStream::connect(path).await {
                    Ok(n) => s = n,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
    st
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one response (Content-Length or chunked). `buf` may hold the start
/// of it already and keeps nothing after it (no pipelining). Returns the
/// status and the number of bytes of the whole response.
async fn read_response(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, usize)> {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    if chunked {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                fill(s, buf).await?;
            };
            let size_str = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| bad("bad chunk size"))?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                fill(s, buf).await?;
            }
            pos = need;
            if size == 0 {
                return Ok((status, pos));
            }
        }
    }
    let total = head_end + content_length.unwrap_or(0);
    while buf.len() < total {
        fill(s, buf).await?;
    }
    Ok((status, total))
}

async fn fill(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve(path: PathBuf, body_bytes: usize) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let mut body = String::from("{\"data\":\"");
    while body.len() + 2 < body_bytes {
        body.push('x');
    }
    body.push_str("\"}");
    let resp: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // Answer every complete request head in the buffer.
                while let Some(i) = find(&buf, b"\r\n\r\n") {
                    buf.drain(..i + 4);
                    if s.write_all(resp).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}
