//! `reliable memory`: what history costs in memory (memory mode).
//!
//! 1. **Idle connections**: N JSON clients on `/ws/notifications?user=uN`
//!    (and, for reference, N plain `/ws` clients) connect and stay idle;
//!    the server's RSS growth ÷ N with `HISTORY_SIZE=100` against
//!    `HISTORY_SIZE=0`, back to back.
//! 2. **Publish flood**: for `--flood-minutes`, `--publishers` keep-alive
//!    connections send `POST /notify/u{i mod users}` with 1 KiB payloads as
//!    fast as the server answers, every `--broadcast-every`-th request a
//!    `POST /broadcast`, while `--listeners` JSON clients (users u0…) read
//!    what they get. Every `--sample-secs` the server's VmRSS and
//!    `wsnotify_history_{bytes,entries,streams}` are sampled, with the
//!    publish rate and the server's CPU in the window. The same flood runs
//!    with history on (default `HISTORY_MAX_BYTES`, 64 MiB) and off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fastwebsockets::OpCode;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{CpuMark, peak_rss_kib};
use wsnotify_bench::scan;
use wsnotify_bench::stats::{median, percentiles_ms};
use wsnotify_bench::ws;

use crate::shared::{Common, cell, connect_many};

#[derive(clap::Args)]
pub struct Args {
    /// Idle clients per idle run (0 skips the idle part).
    #[arg(long, default_value_t = 10_000)]
    idle_clients: usize,
    /// Repetitions of the idle runs.
    #[arg(long, default_value_t = 2)]
    idle_repeat: usize,
    /// Minutes of each flood (0 skips the flood). The recorded figure is 10.
    #[arg(long, default_value_t = 10.0)]
    flood_minutes: f64,
    /// `HISTORY_SIZE` of each flood, run one after the other (comma list).
    #[arg(long, default_value = "100,0", value_delimiter = ',')]
    flood_history: Vec<usize>,
    /// Distinct users notified, round robin.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Payload of each notification and broadcast, bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Every this many requests one is a broadcast.
    #[arg(long, default_value_t = 100)]
    broadcast_every: u64,
    /// Concurrent publishing connections.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Requests per second over all publishers (0: as fast as answered).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// JSON clients (users u0, u1, …) reading during the flood.
    #[arg(long, default_value_t = 1000)]
    listeners: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Extra server settings for the flood, `KEY=VALUE` (e.g. HISTORY_MAX_BYTES=…).
    #[arg(long)]
    flood_env: Vec<String>,
}

pub fn run(common: &Common, args: &Args) -> Result<()> {
    common.on_generator(async {
        if args.idle_clients > 0 {
            idle(common, args).await?;
        }
        if args.flood_minutes > 0.0 {
            for &history in &args.flood_history {
                flood(common, args, history).await?;
            }
        }
        anyhow::Ok(())
    })?
}

/// The idle part: RSS per connection, history on against off.
async fn idle(common: &Common, args: &Args) -> Result<()> {
    let kinds = [(true, 0), (true, 100), (false, 0), (false, 100)];
    let mut rows: Vec<(bool, usize, f64, f64, f64)> = Vec::new();
    for rep in 0..args.idle_repeat {
        for (json, history) in kinds {
            let server = common
                .server("wsnotify", &[("HISTORY_SIZE", history.to_string())])
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = server.rss_kib()?;
            let addr = server.addr;
            let opening = match (json, history) {
                (true, 0) => 0,
                (true, _) => 2,
                (false, _) => 1,
            };
            let clients = connect_many(
                args.idle_clients,
                common.connect_concurrency,
                |i| async move {
                    let path = if json {
                        format!("/ws/notifications?user=u{i}")
                    } else {
                        "/ws".to_owned()
                    };
                    let mut client = ws::connect(addr, &path).await?;
                    for _ in 0..opening {
                        let frame = ws::read_frame(&mut client.reader).await?;
                        if frame.opcode != OpCode::Text {
                            bail!("client {i}: no opening frame");
                        }
                    }
                    anyhow::Ok(client)
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = server.rss_kib()?;
            let mut metrics = Conn::connect(addr).await?;
            let m = metrics
                .metrics(&["wsnotify_history_streams", "wsnotify_history_bytes"])
                .await?;
            let per_conn = (after as f64 - before as f64) / args.idle_clients as f64;
            eprintln!(
                "== idle, repetition {}, {} clients, HISTORY_SIZE={history}: {per_conn:.2} KiB/conn (RSS {before} → {after} KiB), history {} streams, {} bytes",
                rep + 1,
                if json { "JSON" } else { "plain" },
                m[0],
                m[1]
            );
            rows.push((json, history, per_conn, m[0], m[1]));
            drop(clients);
            drop(server);
        }
    }
    println!();
    println!(
        "### Idle connections: server RSS growth per connection ({} clients, {} repetitions, back to back)",
        args.idle_clients, args.idle_repeat
    );
    println!();
    println!(
        "| clients | HISTORY_SIZE | RSS/conn (KiB), each repetition | median | vs HISTORY_SIZE=0 | history streams | history bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for json in [true, false] {
        let of = |history: usize| -> Vec<&(bool, usize, f64, f64, f64)> {
            rows.iter()
                .filter(|r| r.0 == json && r.1 == history)
                .collect()
        };
        let base = median(&of(0).iter().map(|r| r.2).collect::<Vec<_>>());
        for history in [0, 100] {
            let runs = of(history);
            let values: Vec<f64> = runs.iter().map(|r| r.2).collect();
            let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
            let last = runs.last().map_or((f64::NAN, f64::NAN), |r| (r.3, r.4));
            println!(
                "| {} | {history} | {} | {:.2} | {:.2}× | {} | {} |",
                if json {
                    "JSON /ws/notifications?user=uN"
                } else {
                    "plain /ws"
                },
                each.join(", "),
                median(&values),
                median(&values) / base,
                cell(last.0, 0),
                cell(last.1, 0),
            );
        }
    }
    Ok(())
}

/// What the flood's publishers and listeners count.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    latencies_ns: std::sync::Mutex<Vec<u64>>,
    delivered: AtomicU64,
    gaps: AtomicU64,
}

/// One sample of the flood.
struct Sample {
    at_s: f64,
    rss_kib: u64,
    history_bytes: f64,
    history_entries: f64,
    history_streams: f64,
    requests_per_s: f64,
    p99_ms: f64,
    server_cpu: f64,
    /// Everything but the server (the generator included), in cores.
    others_cpu: f64,
    delivered_per_s: f64,
}

async fn flood(common: &Common, args: &Args, history: usize) -> Result<()> {
    let mut envs = vec![("HISTORY_SIZE", history.to_string())];
    for setting in &args.flood_env {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--flood-env wants KEY=VALUE, not {setting}"))?;
        envs.push((key, value.to_owned()));
    }
    let server = common.server("wsnotify", &envs).await?;
    let cap = env_value(&args.flood_env, "HISTORY_MAX_BYTES").unwrap_or(64 << 20);
    eprintln!(
        "== flood, HISTORY_SIZE={history}, {} min, {} users, {} B, {} publishers, {} listeners",
        args.flood_minutes, args.users, args.payload, args.publishers, args.listeners
    );
    let counters = Arc::new(Counters::default());
    let addr = server.addr;
    let listeners = connect_many(args.listeners, common.connect_concurrency, |i| {
        let counters = counters.clone();
        async move {
            let client = ws::connect(addr, &format!("/ws/notifications?user=u{i}")).await?;
            Ok(tokio::spawn(listen(client, counters)))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = server.rss_kib()?;

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let conn = Conn::connect(addr).await?;
        publishers.push(tokio::spawn(publish(
            conn,
            args.flood(),
            next.clone(),
            stop.clone(),
            counters.clone(),
        )));
    }

    let mut metrics = Conn::connect(addr).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.flood_minutes * 60.0);
    let mut samples = Vec::new();
    let mut mark = CpuMark::take(&[Some(server.pid())]);
    let mut last_requests = 0;
    let mut last_delivered = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(args.sample_secs));
    tick.tick().await;
    while Instant::now() < until {
        tick.tick().await;
        let now_mark = CpuMark::take(&[Some(server.pid())]);
        let used = now_mark.since(&mark);
        let wall = used.wall_s;
        mark = now_mark;
        let requests = counters.requests.load(Ordering::Relaxed);
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let (_, p99, _) = percentiles_ms(&mut std::mem::take(
            &mut *counters.latencies_ns.lock().unwrap(),
        ));
        let m = metrics
            .metrics(&[
                "wsnotify_history_bytes",
                "wsnotify_history_entries",
                "wsnotify_history_streams",
            ])
            .await?;
        let sample = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_kib: server.rss_kib()?,
            history_bytes: m[0],
            history_entries: m[1],
            history_streams: m[2],
            requests_per_s: (requests - last_requests) as f64 / wall,
            p99_ms: p99,
            server_cpu: used.procs[0] / wall,
            others_cpu: used.others_s() / wall,
            delivered_per_s: (delivered - last_delivered) as f64 / wall,
        };
        last_requests = requests;
        last_delivered = delivered;
        eprintln!(
            "   t={:.0}s RSS {} KiB, history {:.0} B / {:.0} entries / {:.0} streams, {:.0} req/s (p99 {:.1} ms), server CPU {:.0} %",
            sample.at_s,
            sample.rss_kib,
            sample.history_bytes,
            sample.history_entries,
            sample.history_streams,
            sample.requests_per_s,
            sample.p99_ms,
            sample.server_cpu * 100.0
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        let _ = publisher.await;
    }
    let peak = peak_rss_kib(server.pid())?;
    for listener in &listeners {
        listener.abort();
    }
    report_flood(args, history, cap, rss_start, peak, &samples, &counters);
    drop(server);
    Ok(())
}

fn env_value(envs: &[String], key: &str) -> Option<usize> {
    envs.iter()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// What a publisher needs of the arguments.
#[derive(Clone)]
struct Flood {
    users: usize,
    payload: usize,
    broadcast_every: u64,
    /// Pause between one publisher's requests (zero: none).
    period: Duration,
}

impl Args {
    fn flood(&self) -> Flood {
        let period = if self.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.publishers as f64 / self.rate as f64)
        };
        Flood {
            users: self.users,
            payload: self.payload,
            broadcast_every: self.broadcast_every.max(1),
            period,
        }
    }
}

/// One publishing connection: requests one after the other until `stop`.
async fn publish(
    mut conn: Conn,
    flood: Flood,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let mut ticker = (!flood.period.is_zero()).then(|| tokio::time::interval(flood.period));
    while !stop.load(Ordering::Relaxed) {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let sent = now_ns();
        let result = if i % flood.broadcast_every == flood.broadcast_every - 1 {
            conn.broadcast(&stamped('b', i, flood.payload)).await
        } else {
            let user = format!("u{}", i % flood.users as u64);
            conn.notify(&user, &stamped('n', i, flood.payload)).await
        };
        match result {
            Ok(_) => {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                counters.latencies_ns.lock().unwrap().push(now_ns() - sent);
            }
            Err(err) => {
                if counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("   publish failed: {err:#}");
                }
                match Conn::connect(conn.addr()).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
}

/// A listener: counts deliveries, and offsets that do not follow.
async fn listen(mut client: ws::Client, counters: Arc<Counters>) {
    // Last offset per stream: [user, broadcast].
    let mut last: [Option<u64>; 2] = [None, None];
    while let Ok(frame) = ws::read_frame(&mut client.reader).await {
        if frame.opcode == OpCode::Close {
            break;
        }
        if frame.opcode != OpCode::Text {
            continue;
        }
        let text = &frame.payload[..];
        let slot = match scan::str_field(text, b"stream") {
            Some(b"broadcast") => 1,
            Some(_) => 0,
            None => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let Some(offset) = scan::last_u64_field(text, b"offset") else {
            continue;
        };
        if scan::is_type(text, b"stream.position") {
            last[slot] = Some(offset);
            continue;
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(prev) = last[slot]
            && offset != prev + 1
        {
            counters.gaps.fetch_add(1, Ordering::Relaxed);
        }
        last[slot] = Some(offset);
    }
}

fn report_flood(
    args: &Args,
    history: usize,
    cap: usize,
    rss_start: u64,
    peak: u64,
    samples: &[Sample],
    counters: &Counters,
) {
    println!();
    println!(
        "### Flood, HISTORY_SIZE={history}: {} min, `POST /notify/u{{0..{}}}` with {} B (every {}th a `POST /broadcast`), {} publishers, {} listeners; RSS before the flood {} KiB",
        args.flood_minutes,
        args.users - 1,
        args.payload,
        args.broadcast_every,
        args.publishers,
        args.listeners,
        rss_start
    );
    println!();
    println!(
        "| t (s) | VmRSS (KiB) | history bytes | ≤ cap | history entries | history streams | requests/s | request p99 (ms) | server CPU | rest of the machine (generator incl.) | listener deliveries/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for s in samples {
        println!(
            "| {:.0} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} % | {:.0} % | {:.0} |",
            s.at_s,
            s.rss_kib,
            cell(s.history_bytes, 0),
            if s.history_bytes.is_nan() || s.history_bytes <= cap as f64 {
                "yes"
            } else {
                "**no**"
            },
            cell(s.history_entries, 0),
            cell(s.history_streams, 0),
            s.requests_per_s,
            s.p99_ms,
            s.server_cpu * 100.0,
            s.others_cpu * 100.0,
            s.delivered_per_s,
        );
    }
    let max_bytes = samples.iter().map(|s| s.history_bytes).fold(0.0, f64::max);
    let half = samples.len() / 2;
    let rss_mid = samples.get(half).map_or(0, |s| s.rss_kib);
    let rss_end = samples.last().map_or(0, |s| s.rss_kib);
    let mid_s = samples.get(half).map_or(0.0, |s| s.at_s);
    let end_s = samples.last().map_or(0.0, |s| s.at_s);
    let slope = (rss_end as f64 - rss_mid as f64) / ((end_s - mid_s) / 60.0).max(1e-9);
    let requests = counters.requests.load(Ordering::Relaxed);
    println!();
    println!(
        "Summary HISTORY_SIZE={history}: {requests} requests ({} failed), mean {:.0}/s; history bytes max {max_bytes:.0} of cap {cap} ({:.1} %); VmRSS {rss_start} KiB before, {rss_mid} KiB at {mid_s:.0} s, {rss_end} KiB at {end_s:.0} s (second half: {slope:+.0} KiB/min), peak (VmHWM) {peak} KiB; listener gaps {}",
        counters.errors.load(Ordering::Relaxed),
        requests as f64 / end_s.max(1e-9),
        100.0 * max_bytes / cap as f64,
        counters.gaps.load(Ordering::Relaxed),
    );
}
