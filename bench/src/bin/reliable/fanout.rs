//! `reliable fanout`: broadcast fan-out to N clients with history on
//! (`HISTORY_SIZE=100`) against history off (`HISTORY_SIZE=0`).
//!
//! Each run starts a fresh server (in Redis mode on a flushed private
//! Redis), connects N clients, then
//! 1. sends `--rounds` single broadcasts, each waited for by every client
//!    (p50/p99/max of publish-to-receive over all deliveries);
//! 2. fires `--burst` broadcasts back to back (deliveries/s = deliveries ÷
//!    time from the first POST to the last delivery), reading the CPU time
//!    of the server (and Redis) and the generator around it.
//!
//! Variants (`--variants`):
//! - `plain-off`, `plain-on`: plain `/ws` clients, which get `POST
//!   /broadcast` either way: the like-for-like comparison (with history on
//!   each broadcast is also appended to the `broadcast` stream);
//! - `json-on`: JSON clients on `/ws/notifications?user=uN`, which get
//!   `{"type":"broadcast",…,"stream","epoch","offset"}` and whose offsets
//!   are checked for gaps. With history off JSON clients get no broadcast at
//!   all, so `json-off` does not exist; `json-on` is compared with
//!   `plain-off` (what the same broadcast cost before) and `plain-on`.
//!
//! One repetition runs every variant back to back; `--repeat` repetitions
//! interleave, and each on/off ratio is taken within a repetition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fastwebsockets::OpCode;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{CpuMark, EventCounter, Redis};
use wsnotify_bench::scan;
use wsnotify_bench::stats::{median, percentiles_ms};
use wsnotify_bench::ws;

use crate::shared::{Common, Mode, cell, connect_many, wait_for};

#[derive(clap::Args)]
pub struct Args {
    /// Clients per run.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Broadcast payload sizes in bytes (comma list).
    #[arg(long, default_value = "64,1024", value_delimiter = ',')]
    payloads: Vec<usize>,
    /// Broker modes (comma list).
    #[arg(
        long,
        value_enum,
        default_value = "memory,redis",
        value_delimiter = ','
    )]
    modes: Vec<Mode>,
    /// Variants, run back to back in this order (comma list).
    #[arg(
        long,
        value_enum,
        default_value = "plain-off,plain-on,json-on",
        value_delimiter = ','
    )]
    variants: Vec<Variant>,
    /// Single broadcasts whose latency is measured.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Broadcasts fired back to back for the deliveries/s figure.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Repetitions of the whole set of variants.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Connections firing the burst at once, each `burst / publishers`
    /// broadcasts back to back (1: one after the other, as `fanout` does).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// A run during whose burst the rest of the machine (neither the
    /// server, Redis nor the generator) kept more than this many cores busy
    /// is discarded and run again (the machine is shared).
    #[arg(long, default_value_t = 0.5)]
    max_others: f64,
    /// Attempts per run before a disturbed one is kept anyway.
    #[arg(long, default_value_t = 4)]
    attempts: usize,
    /// Count the server's write/writev calls during the burst with `perf
    /// stat` (tracepoints; needs perf and root).
    #[arg(long)]
    syscalls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Variant {
    PlainOff,
    PlainOn,
    JsonOn,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::PlainOff => "plain /ws, HISTORY_SIZE=0",
            Variant::PlainOn => "plain /ws, HISTORY_SIZE=100",
            Variant::JsonOn => "JSON /ws/notifications, HISTORY_SIZE=100",
        }
    }

    fn history(self) -> usize {
        match self {
            Variant::PlainOff => 0,
            Variant::PlainOn | Variant::JsonOn => 100,
        }
    }

    fn json(self) -> bool {
        self == Variant::JsonOn
    }
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
struct Report {
    connect_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    deliveries_per_s: f64,
    lost: u64,
    /// JSON clients: deliveries whose offset was not the previous one + 1.
    gaps: u64,
    /// CPU seconds during the burst, and the burst's wall time.
    server_cpu_s: f64,
    redis_cpu_s: f64,
    generator_cpu_s: f64,
    /// Everything else on the machine meanwhile.
    others_cpu_s: f64,
    /// Interrupt time of the machine (mostly loopback receives).
    interrupts_s: f64,
    burst_wall_s: f64,
    burst_deliveries: u64,
    /// The server's write + writev calls during the burst (`--syscalls`).
    writes: Option<u64>,
    /// Runs it took to get one undisturbed by the rest of the machine.
    attempts: usize,
}

/// The tracepoints `--syscalls` counts.
const SYSCALLS: &[&str] = &["syscalls:sys_enter_writev", "syscalls:sys_enter_write"];

impl Report {
    fn server_us_per_delivery(&self) -> f64 {
        (self.server_cpu_s + self.redis_cpu_s) * 1e6 / self.burst_deliveries as f64
    }
}

/// What every client records.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    last_receive_ns: AtomicU64,
    gaps: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
}

type Key = (Mode, usize, Variant);

pub fn run(common: &Common, args: &Args) -> Result<()> {
    let mut results: BTreeMap<Key, Vec<Report>> = BTreeMap::new();
    common.on_generator(async {
        for &mode in &args.modes {
            let redis = match mode {
                Mode::Memory => None,
                Mode::Redis => Some(common.redis().await?),
            };
            for rep in 0..args.repeat {
                for &payload in &args.payloads {
                    for &variant in &args.variants {
                        eprintln!(
                            "== {} mode, {} B, {}, repetition {}",
                            mode.name(),
                            payload,
                            variant.name(),
                            rep + 1
                        );
                        let mut report;
                        let mut attempt = 1;
                        loop {
                            report =
                                run_one(common, args, redis.as_ref(), variant, payload).await?;
                            eprintln!("   {report:?}");
                            let others = report.others_cpu_s / report.burst_wall_s;
                            if others <= args.max_others || attempt >= args.attempts {
                                break;
                            }
                            eprintln!(
                                "   discarded: the rest of the machine kept {others:.2} cores busy; again in 10 s"
                            );
                            attempt += 1;
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        report.attempts = attempt;
                        results
                            .entry((mode, payload, variant))
                            .or_default()
                            .push(report);
                    }
                }
            }
        }
        anyhow::Ok(())
    })??;
    print_results(args, &results);
    Ok(())
}

async fn run_one(
    common: &Common,
    args: &Args,
    redis: Option<&Redis>,
    variant: Variant,
    payload: usize,
) -> Result<Report> {
    let mut envs = vec![("HISTORY_SIZE", variant.history().to_string())];
    if let Some(redis) = redis {
        redis.flush().await?;
        envs.push(("REDIS_URL", redis.url()));
    }
    let server = common.server("wsnotify", &envs).await?;
    if redis.is_some() {
        // The subscriber connects in the background: wait for /ready.
        server.wait_ready().await?;
    }
    let tally = Arc::new(Tally::default());
    let mut report = Report::default();

    let started = Instant::now();
    let n = args.clients;
    let addr = server.addr;
    connect_many(n, common.connect_concurrency, |i| {
        let tally = tally.clone();
        async move {
            let (client, position) = open(addr, variant, i).await?;
            tokio::spawn(read_loop(client, tally, variant.json().then_some(position)));
            anyhow::Ok(())
        }
    })
    .await?;
    report.connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut publisher = Conn::connect(server.addr).await?;
    let mut expected = 0u64;
    for seq in 0..args.rounds {
        publisher
            .broadcast(&stamped('b', seq as u64, payload))
            .await?;
        expected += n as u64;
        let tally = &tally;
        wait_for(Duration::from_secs(10), || {
            tally.received.load(Ordering::Relaxed) >= expected
        })
        .await;
    }
    (report.p50_ms, report.p99_ms, report.max_ms) =
        percentiles_ms(&mut tally.latencies_ns.lock().unwrap());
    let before_burst = tally.received.load(Ordering::Relaxed);

    let pids = [
        Some(server.pid()),
        redis.map(|r| r.proc.pid()),
        Some(0), // the generator itself
    ];
    let counter = if args.syscalls {
        Some(EventCounter::start(server.pid(), SYSCALLS).await?)
    } else {
        None
    };
    let cpu_before = CpuMark::take(&pids);
    let first_send = now_ns();
    let burst = burst(server.addr, publisher, args, payload).await?;
    expected += (n * burst) as u64;
    {
        let tally = &tally;
        wait_for(Duration::from_secs(60), || {
            tally.received.load(Ordering::Relaxed) >= expected
        })
        .await;
    }
    let cpu_after = CpuMark::take(&pids);
    if let Some(counter) = counter {
        let counts = counter.stop()?;
        report.writes = Some(counts.iter().sum());
    }
    let received = tally.received.load(Ordering::Relaxed);
    report.burst_deliveries = received - before_burst;
    report.burst_wall_s = tally
        .last_receive_ns
        .load(Ordering::Relaxed)
        .saturating_sub(first_send) as f64
        / 1e9;
    report.deliveries_per_s = report.burst_deliveries as f64 / report.burst_wall_s.max(1e-9);
    report.lost = expected.saturating_sub(received);
    report.gaps = tally.gaps.load(Ordering::Relaxed);
    let used = cpu_after.since(&cpu_before);
    (
        report.server_cpu_s,
        report.redis_cpu_s,
        report.generator_cpu_s,
    ) = (used.procs[0], used.procs[1], used.procs[2]);
    report.others_cpu_s = used.others_s();
    report.interrupts_s = used.interrupts_s;
    drop(server);
    Ok(report)
}

/// Fires the burst: `--burst` broadcasts over `--publishers` connections
/// at once (the first one being `first`); answers how many were sent.
async fn burst(
    addr: std::net::SocketAddr,
    first: Conn,
    args: &Args,
    payload: usize,
) -> Result<usize> {
    let publishers = args.publishers.max(1);
    let each = args.burst / publishers;
    let mut tasks = tokio::task::JoinSet::new();
    let mut first = Some(first);
    for p in 0..publishers {
        let conn = match first.take() {
            Some(conn) => conn,
            None => Conn::connect(addr).await?,
        };
        let start = (args.rounds + p * each) as u64;
        tasks.spawn(async move {
            let mut conn = conn;
            for seq in start..start + each as u64 {
                conn.broadcast(&stamped('b', seq, payload)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(each * publishers)
}

/// Connects client `i` and reads its opening: the greeting (plain), or
/// its two `stream.position` frames (JSON with history). Returns the
/// `broadcast` stream's offset for JSON clients.
async fn open(addr: std::net::SocketAddr, variant: Variant, i: usize) -> Result<(ws::Client, u64)> {
    let path = if variant.json() {
        format!("/ws/notifications?user=u{i}")
    } else {
        "/ws".to_owned()
    };
    let mut client = ws::connect(addr, &path).await?;
    let mut broadcast_offset = 0;
    let opening = if variant.json() { 2 } else { 1 };
    for _ in 0..opening {
        let frame = ws::read_frame(&mut client.reader).await?;
        if frame.opcode != OpCode::Text {
            bail!("client {i}: expected its opening frames");
        }
        let text = &frame.payload[..];
        if variant.json() {
            if !scan::is_type(text, b"stream.position") {
                bail!("client {i}: {}", String::from_utf8_lossy(text));
            }
            if scan::str_field(text, b"stream") == Some(b"broadcast") {
                broadcast_offset = scan::last_u64_field(text, b"offset").unwrap_or(0);
            }
        }
    }
    Ok((client, broadcast_offset))
}

/// Reads deliveries until the connection ends; JSON clients (`offset` is
/// their broadcast position) check that each offset follows the last.
async fn read_loop(mut client: ws::Client, tally: Arc<Tally>, mut offset: Option<u64>) {
    while let Ok(frame) = ws::read_frame(&mut client.reader).await {
        match frame.opcode {
            OpCode::Text => {
                let now = now_ns();
                let Some((b'b', _, sent)) = scan::stamp(&frame.payload) else {
                    continue;
                };
                if let Some(last) = offset.as_mut() {
                    let at = scan::last_u64_field(&frame.payload, b"offset").unwrap_or(0);
                    if at != *last + 1 {
                        tally.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    *last = at;
                }
                tally
                    .latencies_ns
                    .lock()
                    .unwrap()
                    .push(now.saturating_sub(sent));
                tally.last_receive_ns.fetch_max(now, Ordering::Relaxed);
                tally.received.fetch_add(1, Ordering::Relaxed);
            }
            OpCode::Close => break,
            _ => {}
        }
    }
}

fn print_results(args: &Args, results: &BTreeMap<Key, Vec<Report>>) {
    println!();
    println!(
        "### Runs ({} clients, {} rounds, burst of {} over {} publishing connection(s))",
        args.clients, args.rounds, args.burst, args.publishers
    );
    println!();
    println!(
        "| mode | payload | variant | rep | connect (s) | p50 (ms) | p99 (ms) | max (ms) | deliveries/s | lost | gaps | server+redis CPU in burst (s) | burst wall (s) | server µs/delivery | redis CPU (s) | generator CPU (s) | softirq, machine (s) | rest of the machine (s) | deliveries per write(v) call | attempts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((mode, payload, variant), reports) in results {
        for (rep, r) in reports.iter().enumerate() {
            println!(
                "| {} | {payload} B | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                mode.name(),
                variant.name(),
                rep + 1,
                r.connect_s,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.deliveries_per_s,
                r.lost,
                r.gaps,
                r.server_cpu_s + r.redis_cpu_s,
                r.burst_wall_s,
                r.server_us_per_delivery(),
                r.redis_cpu_s,
                r.generator_cpu_s,
                r.interrupts_s,
                r.others_cpu_s,
                r.writes.map_or("-".into(), |w| format!(
                    "{:.2}",
                    r.burst_deliveries as f64 / w as f64
                )),
                r.attempts,
            );
        }
    }

    println!();
    println!("### Medians over the repetitions, and ratios within each repetition");
    println!();
    println!(
        "| mode | payload | variant | deliveries/s (median) | p50 (ms) | p99 (ms) | server µs/delivery | vs plain-off: deliveries/s ratio (median; min–max) | p99 ratio (median) | µs/delivery ratio (median) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let modes: Vec<Mode> = args.modes.clone();
    for mode in modes {
        for &payload in &args.payloads {
            let base = results.get(&(mode, payload, Variant::PlainOff));
            for &variant in &args.variants {
                let Some(reports) = results.get(&(mode, payload, variant)) else {
                    continue;
                };
                let of = |f: fn(&Report) -> f64| median(&reports.iter().map(f).collect::<Vec<_>>());
                let paired = |f: fn(&Report) -> f64| -> Vec<f64> {
                    match base {
                        Some(base) => reports.iter().zip(base).map(|(r, b)| f(r) / f(b)).collect(),
                        None => Vec::new(),
                    }
                };
                let tput = paired(|r| r.deliveries_per_s);
                let (lo, hi) = tput
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                println!(
                    "| {} | {payload} B | {} | {:.0} | {:.2} | {:.2} | {:.3} | {}× ({}–{}) | {}× | {}× |",
                    mode.name(),
                    variant.name(),
                    of(|r| r.deliveries_per_s),
                    of(|r| r.p50_ms),
                    of(|r| r.p99_ms),
                    of(Report::server_us_per_delivery),
                    cell(median(&tput), 2),
                    cell(lo, 2),
                    cell(hi, 2),
                    cell(median(&paired(|r| r.p99_ms)), 2),
                    cell(median(&paired(Report::server_us_per_delivery)), 2),
                );
            }
        }
    }
}
