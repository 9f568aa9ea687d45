//! Fan-out benchmark: N WebSocket clients on one server, broadcasts fired
//! through `POST /broadcast`, measured from this process.
//!
//! For each server (wsnotify and the axum baseline), client count and payload
//! size it reports: the time to connect N clients, the server's RSS per idle
//! connection (from `/proc`), publish-to-receive latency of single broadcasts
//! (p50/p99/max over every delivery), deliveries per second of a burst, and
//! messages lost; then the ratios wsnotify / baseline. The server is pinned
//! to one core and this generator to the other. Payloads carry a sequence
//! number and the send time (this process's monotonic clock, so no clock
//! skew), padded to the payload size.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fastwebsockets::{OpCode, Role, WebSocketRead, after_handshake_split};
use std::process::{Child, Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

#[derive(Parser, Clone)]
#[command(about = "Fan-out benchmark: wsnotify against an axum + broadcast-channel baseline")]
struct Args {
    /// Servers to measure: wsnotify, baseline (comma list).
    #[arg(long, default_value = "wsnotify,baseline", value_delimiter = ',')]
    servers: Vec<String>,
    /// Client counts (comma list).
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Payload sizes in bytes (comma list).
    #[arg(long, default_value = "64,1024", value_delimiter = ',')]
    payloads: Vec<usize>,
    /// Single broadcasts whose latency is measured, one after another.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Broadcasts fired back to back for the throughput figure.
    #[arg(long, default_value_t = 50)]
    burst: usize,
    /// Also run the slow-consumer phase: steady broadcasts per second, with
    /// and without one client that stops reading (0 = skip).
    #[arg(long, default_value_t = 0)]
    steady_rate: u32,
    /// Seconds of each steady phase.
    #[arg(long, default_value_t = 4)]
    steady_secs: u64,
    /// Core the server is pinned to; the generator takes the next one.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value = "target/release/wsnotify")]
    wsnotify_bin: String,
    #[arg(long, default_value = "target/release/baseline-axum")]
    baseline_bin: String,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

/// Monotonic time since the generator started, in nanoseconds.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What every client records.
#[derive(Default)]
struct Shared {
    received: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
    last_receive_ns: AtomicU64,
    /// Clients whose connection ended (close frame, EOF or error).
    closed: AtomicU64,
    /// Wakes stopped (slow) clients so they read again.
    resume: tokio::sync::Notify,
}

#[derive(Debug, Default, Clone)]
struct Report {
    connect_s: f64,
    rss_per_conn_kib: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    deliveries_per_s: f64,
    lost: u64,
    steady_p99_ms: Option<f64>,
    steady_slow_p99_ms: Option<f64>,
    slow_disconnected: Option<bool>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    now_ns();
    let mut results: BTreeMap<(usize, usize), BTreeMap<String, Report>> = BTreeMap::new();
    for &clients in &args.clients {
        for &payload in &args.payloads {
            for server in &args.servers {
                eprintln!("== {server}: {clients} clients, {payload} B payload");
                let report = run_one(&args, server, clients, payload)?;
                eprintln!("   {report:?}");
                results
                    .entry((clients, payload))
                    .or_default()
                    .insert(server.clone(), report);
            }
        }
    }
    print_results(&results);
    Ok(())
}

fn run_one(args: &Args, server: &str, clients: usize, payload: usize) -> Result<Report> {
    let port = free_port()?;
    let mut child = spawn_server(args, server, port)?;
    pin_self(args.server_cpu + 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(args, &child, port, clients, payload));
    drop(runtime);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn spawn_server(args: &Args, server: &str, port: u16) -> Result<Child> {
    let (bin, extra): (&str, Vec<String>) = match server {
        "wsnotify" => (
            &args.wsnotify_bin,
            vec!["--notification-interval".into(), "0".into()],
        ),
        "baseline" => (&args.baseline_bin, vec![]),
        other => bail!("unknown server {other}"),
    };
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(args.server_cpu.to_string())
        .arg(bin)
        .arg("--port")
        .arg(port.to_string())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn()
        .with_context(|| format!("start {bin} (build it with `cargo build --release --workspace`)"))
}

fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn measure(
    args: &Args,
    child: &Child,
    port: u16,
    n: usize,
    payload: usize,
) -> Result<Report> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_port(addr).await?;
    let pid = child.id();
    let shared = Arc::new(Shared::default());
    let mut report = Report::default();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid)?;
    let started = Instant::now();
    let stops = connect_all(addr, n, args.connect_concurrency, &shared).await?;
    report.connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.rss_per_conn_kib = (rss_kib(pid)? as f64 - rss_before as f64) / n as f64;

    let mut publisher = Publisher::connect(addr).await?;
    let mut expected = 0u64;
    // Latency: one broadcast at a time, each waited for by every client.
    for seq in 0..args.rounds {
        publisher.publish(seq as u64, payload).await?;
        expected += n as u64;
        wait_received(&shared, expected, Duration::from_secs(10)).await;
    }
    let (p50, p99, max) = percentiles(&mut shared.latencies_ns.lock().unwrap());
    (report.p50_ms, report.p99_ms, report.max_ms) = (p50, p99, max);

    // Throughput: a burst fired back to back.
    let first_send = now_ns();
    for seq in 0..args.burst {
        publisher
            .publish((args.rounds + seq) as u64, payload)
            .await?;
    }
    expected += (n * args.burst) as u64;
    wait_received(&shared, expected, Duration::from_secs(30)).await;
    let burst_received = shared.received.load(Ordering::Relaxed) - (n * args.rounds) as u64;
    let elapsed_s = (shared
        .last_receive_ns
        .load(Ordering::Relaxed)
        .saturating_sub(first_send)) as f64
        / 1e9;
    report.deliveries_per_s = burst_received as f64 / elapsed_s.max(1e-9);
    report.lost = expected.saturating_sub(shared.received.load(Ordering::Relaxed));

    if args.steady_rate > 0 {
        steady_phases(args, &mut publisher, &shared, &stops, payload, &mut report).await?;
    }
    Ok(report)
}

/// Steady broadcasts with everyone reading, then with client 0 not reading.
async fn steady_phases(
    args: &Args,
    publisher: &mut Publisher,
    shared: &Shared,
    stops: &[Arc<AtomicBool>],
    payload: usize,
    report: &mut Report,
) -> Result<()> {
    let mut seq = 1_000_000u64;
    for slow in [false, true] {
        if slow {
            stops[0].store(true, Ordering::Relaxed);
        }
        shared.latencies_ns.lock().unwrap().clear();
        let period = Duration::from_secs_f64(1.0 / args.steady_rate as f64);
        let mut ticker = tokio::time::interval(period);
        let until = Instant::now() + Duration::from_secs(args.steady_secs);
        while Instant::now() < until {
            ticker.tick().await;
            publisher.publish(seq, payload).await?;
            seq += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, p99, _) = percentiles(&mut shared.latencies_ns.lock().unwrap());
        if slow {
            report.steady_slow_p99_ms = Some(p99);
            // Let the slow client read again: was it cut off meanwhile?
            stops[0].store(false, Ordering::Relaxed);
            shared.resume.notify_waiters();
            tokio::time::sleep(Duration::from_secs(2)).await;
            report.slow_disconnected = Some(shared.closed.load(Ordering::Relaxed) > 0);
        } else {
            report.steady_p99_ms = Some(p99);
        }
    }
    Ok(())
}

async fn wait_for_port(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("server did not listen on {addr}")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn wait_received(shared: &Shared, expected: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn percentiles(samples: &mut [u64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
    (at(0.5), at(0.99), at(1.0))
}

/// Opens `n` clients, `concurrency` at a time; each then reads until closed.
async fn connect_all(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    shared: &Arc<Shared>,
) -> Result<Vec<Arc<AtomicBool>>> {
    let mut stops = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        if pending.len() >= concurrency {
            pending.join_next().await.context("join")???;
        }
        let stop = Arc::new(AtomicBool::new(false));
        stops.push(stop.clone());
        let shared = shared.clone();
        pending.spawn(async move {
            let reader = connect(addr, i).await?;
            tokio::spawn(read_loop(reader, shared, stop));
            anyhow::Ok(())
        });
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(stops)
}

type Reader = WebSocketRead<tokio::io::Chain<Cursor<Vec<u8>>, OwnedReadHalf>>;

/// Handshake by hand, then fastwebsockets reads; returns after the greeting.
async fn connect(addr: SocketAddr, i: usize) -> Result<(Reader, tokio::net::tcp::OwnedWriteHalf)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Client: {i}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the handshake");
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&buf[..head_end])
        );
    }
    let rest = buf.split_off(head_end);
    let (read, write) = stream.into_split();
    let (mut reader, _) = after_handshake_split(
        Cursor::new(rest).chain(read),
        tokio::io::sink(),
        Role::Client,
    );
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    let greeting = reader
        .read_frame(&mut |_| async { Ok::<(), std::io::Error>(()) })
        .await?;
    if greeting.opcode != OpCode::Text {
        bail!("no greeting");
    }
    Ok((reader, write))
}

async fn read_loop(
    (mut reader, _write): (Reader, tokio::net::tcp::OwnedWriteHalf),
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    loop {
        if stop.load(Ordering::Relaxed) {
            // A slow consumer: hold the socket without reading until resumed.
            shared.resume.notified().await;
            continue;
        }
        let frame = match reader
            .read_frame(&mut |_| async { Ok::<(), std::io::Error>(()) })
            .await
        {
            Ok(frame) => frame,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Text => {
                let now = now_ns();
                if let Some(sent) = parse_sent(&frame.payload) {
                    shared
                        .latencies_ns
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent));
                    shared.last_receive_ns.fetch_max(now, Ordering::Relaxed);
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

/// `b:<seq>:<sent_ns>:<padding>` → sent_ns.
fn parse_sent(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.strip_prefix("b:")?.split(':');
    let _seq = parts.next()?;
    parts.next()?.parse().ok()
}

/// One keep-alive HTTP/1.1 connection that POSTs broadcasts.
struct Publisher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Publisher {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    async fn publish(&mut self, seq: u64, payload: usize) -> Result<()> {
        let mut message = format!("b:{seq}:{}:", now_ns());
        if message.len() < payload {
            message.extend(std::iter::repeat_n('x', payload - message.len()));
        }
        let body = format!("{{\"message\":\"{message}\"}}");
        let request = format!(
            "POST /broadcast HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<()> {
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    bail!("broadcast refused: {head}");
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("content-length")?;
                while self.buf.len() < end + 4 + len {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("publisher connection closed");
                    }
                }
                return Ok(());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("publisher connection closed");
            }
        }
    }
}

fn print_results(results: &BTreeMap<(usize, usize), BTreeMap<String, Report>>) {
    println!();
    println!(
        "| clients | payload | server | connect (s) | RSS/conn (KiB) | p50 (ms) | p99 (ms) | max (ms) | deliveries/s | lost | steady p99 (ms) | with slow reader p99 (ms) | slow reader cut |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((clients, payload), by_server) in results {
        for (server, r) in by_server {
            println!(
                "| {clients} | {payload} B | {server} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} |",
                r.connect_s,
                r.rss_per_conn_kib,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.deliveries_per_s,
                r.lost,
                opt(r.steady_p99_ms),
                opt(r.steady_slow_p99_ms),
                r.slow_disconnected.map_or("-".into(), |b| b.to_string()),
            );
        }
    }
    println!();
    println!(
        "| clients | payload | deliveries/s ratio (wsnotify / baseline) | p99 ratio | RSS/conn ratio | connect-time ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for ((clients, payload), by_server) in results {
        if let (Some(w), Some(b)) = (by_server.get("wsnotify"), by_server.get("baseline")) {
            println!(
                "| {clients} | {payload} B | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                w.deliveries_per_s / b.deliveries_per_s,
                w.p99_ms / b.p99_ms,
                w.rss_per_conn_kib / b.rss_per_conn_kib,
                w.connect_s / b.connect_s
            );
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}
