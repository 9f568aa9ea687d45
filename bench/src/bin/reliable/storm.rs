//! `reliable storm`: the reconnect storm a drain sends to the surviving
//! instance, with the drain's spread hint against without it (issue 11).
//!
//! Each run (one per `--spreads` entry, back to back, Redis flushed in
//! between): instances A and B on one private Redis (history on, so the
//! clients resume across instances), A started with
//! `DRAIN_RECONNECT_SPREAD` = the run's spread and a `SHUTDOWN_TIMEOUT`
//! longer than it. N JSON clients on A (`/ws/notifications?user=uN`) keep
//! the positions of their two streams, as `reliable resume` does, while a
//! publisher thread sends `--rate` notifications/s and `--broadcast-rate`
//! broadcasts/s through a third instance C (`--publish-via c`, so that B's
//! figures are the storm's alone) or through B. After `--warmup-secs` A
//! gets SIGTERM. Each client then does what wsnotify.js does:
//!
//! - with a hint (`system.shutdown` carries `reconnect_after_ms`): it stays
//!   on A, still reading, until its delay has passed, then opens B with
//!   `?since=` from its positions and closes A once B's positions came (the
//!   library's swap: the new transport first, then the old one ends);
//! - without (spread 0, no `reconnect_after_ms`): it closes A and opens B at
//!   once: every client of A arrives at B in the same instant, the storm a
//!   client that reconnects on the notice (or on the final 1001) makes.
//!
//! Measured on the surviving instance B:
//! - **accepts/s**: the clients' upgrades to B completed (101 read) in
//!   `--bucket-ms` buckets after the SIGTERM, peak bucket ÷ bucket width;
//!   beside it, the same from B's own `wsnotify_connections_opened_total`
//!   sampled every bucket by a thread of its own (with B's CPU time, from
//!   `/proc/PID/task/*/schedstat`, for B's busiest bucket), and the
//!   attempts/s the clients offered (their reconnect starts);
//! - **connect time**: from the start of the handshake to B (TCP connect)
//!   to the client's first frame from B (its first `stream.position`, the
//!   JSON protocol's greeting), p50 / p99 / max;
//! - losses: offsets not following the last one (gaps), duplicates (the
//!   dedup wsnotify.js does by offset), streams B could not recover, and at
//!   the end whether every client reached the offsets the publishes got;
//!   and the kernel's listen-queue counters meanwhile.
//!
//! The generator opens at most `--connect-concurrency` connections to A at
//! a time, but does not throttle the reconnects unless
//! `--reconnect-concurrency` is set: real clients are not throttled.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::OpCode;
use tokio::sync::Semaphore;
use wsnotify_bench::clock::now_ns;
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{run_time_s, tcp_counters};
use wsnotify_bench::scan::since_query;
use wsnotify_bench::stats::{median, percentiles_ms, ratio};
use wsnotify_bench::ws;

use crate::drain::{
    Drained, Instances, Order, Plan, Publisher, Streams, TCP, Tally, Via, repetitions, tcp_since,
};
use crate::shared::{Common, cell};

#[derive(clap::Args)]
pub struct Args {
    /// Clients on the drained instance.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// A's `DRAIN_RECONNECT_SPREAD` of each run, seconds, run back to back
    /// in this order (comma list; 0: no hint, every client at once).
    #[arg(long, default_value = "10,0", value_delimiter = ',')]
    spreads: Vec<f64>,
    /// Repetitions of the set of spreads (interleaved).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Notifications per second (to random users of the clients).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 2)]
    broadcast_rate: u64,
    /// Payload bytes of each publish.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// The instance publishes go through: C, a third instance on the same
    /// Redis that serves no client, or B (then B also serves them).
    #[arg(long, value_enum, default_value = "c")]
    publish_via: Via,
    /// Seconds of publishing before the SIGTERM.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds of publishing after every client has resumed.
    #[arg(long, default_value_t = 2.0)]
    after_secs: f64,
    /// A's `SHUTDOWN_TIMEOUT`, seconds: must exceed every spread, so that
    /// the clients leave by themselves.
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
    /// `HISTORY_SIZE` of the instances.
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// Width of the accept-rate buckets and B's sampling period, ms.
    #[arg(long, default_value_t = 100)]
    bucket_ms: u64,
    /// Reconnects to B in flight at once (0: no limit, as real clients).
    #[arg(long, default_value_t = 0)]
    reconnect_concurrency: usize,
}

/// When one reconnect to B reached each step, generator clock (ns).
#[derive(Debug, Clone, Copy)]
struct Timing {
    start: u64,
    upgraded: u64,
    first_frame: u64,
    resumed: u64,
}

/// What the clients of one run record.
struct Shared {
    /// Offsets, gaps, duplicates, replays, losses ([`Order::Dedup`]: a
    /// client drops what it already has, as wsnotify.js does).
    tally: Tally,
    timings: Mutex<Vec<Timing>>,
    hints_ms: Mutex<Vec<u64>>,
    /// A closed the connection before the client's hint had passed.
    closed_before_hint: AtomicU64,
    /// Failed attempts to reach B (each retried after 500 ms).
    connect_errors: AtomicU64,
}

impl Shared {
    fn new(n: usize) -> Shared {
        Shared {
            tally: Tally::new(n, Order::Dedup),
            timings: Mutex::new(Vec::new()),
            hints_ms: Mutex::new(Vec::new()),
            closed_before_hint: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
        }
    }
}

/// One sample of B: when (generator clock), `wsnotify_connections_opened_total`,
/// `wsnotify_active_connections`, CPU seconds so far.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    opened: f64,
    active: f64,
    cpu_s: f64,
}

/// One run's figures.
#[derive(Debug, Default)]
struct Report {
    spread: f64,
    /// Hints received: count, min, max, mean (ms).
    hints: (usize, f64, f64, f64),
    peak_attempts: f64,
    peak_accepts: f64,
    peak_accepts_b: f64,
    /// Start of the handshake → first frame (ms).
    connect: (f64, f64, f64),
    /// Start of the handshake → 101 (ms).
    upgrade: (f64, f64, f64),
    resumed_after: (f64, f64, f64),
    all_resumed_s: f64,
    b_cpu_peak: f64,
    b_cpu_s: f64,
    b_active_peak: f64,
    /// Upgrades completed per second after the SIGTERM.
    per_second: Vec<usize>,
    tcp: Vec<u64>,
    replayed: u64,
    gaps: u64,
    duplicates: u64,
    lost: BTreeMap<String, u64>,
    complete: usize,
    closed_without_notice: u64,
    closed_before_hint: u64,
    connect_errors: u64,
    failures: u64,
    a_exit_s: f64,
    published: u64,
    publish_failed: u64,
}

pub fn run(common: &Common, args: &Args) -> Result<()> {
    let longest = args.spreads.iter().copied().fold(0.0, f64::max);
    if longest >= args.shutdown_timeout as f64 {
        bail!(
            "--shutdown-timeout {} must exceed the longest spread ({longest} s)",
            args.shutdown_timeout
        );
    }
    let runs = repetitions(
        common,
        args.repeat,
        &args.spreads,
        |spread, rep| {
            format!(
                "storm, DRAIN_RECONNECT_SPREAD={spread}, {} clients, repetition {rep}",
                args.clients
            )
        },
        async |redis, spread| run_one(common, args, &redis.url(), spread).await,
    )?;
    let reports: Vec<Report> = runs.into_iter().map(|(_, report)| report).collect();
    print_results(args, &reports);
    Ok(())
}

async fn run_one(common: &Common, args: &Args, redis_url: &str, spread: f64) -> Result<Report> {
    let servers = Instances::start(
        common,
        redis_url,
        args.history,
        args.shutdown_timeout,
        spread,
        args.publish_via,
    )
    .await?;
    let publish_to = servers.publish_to();
    let Instances { a, b, c } = servers;

    let n = args.clients;
    let shared = Arc::new(Shared::new(n));
    let permits = Arc::new(Semaphore::new(common.connect_concurrency));
    let reconnect_permits = (args.reconnect_concurrency > 0)
        .then(|| Arc::new(Semaphore::new(args.reconnect_concurrency)));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(client(
                i,
                a.addr,
                b.addr,
                shared.clone(),
                permits.clone(),
                reconnect_permits.clone(),
            ))
        })
        .collect();
    shared.tally.all_on_a(n).await?;

    let plan = Plan {
        rate: args.rate,
        broadcast_rate: args.broadcast_rate,
        users: n,
        payload: args.payload,
    };
    let publisher = Publisher::spawn(common, plan, publish_to);
    let sampler = spawn_sampler(
        common,
        b.addr,
        b.pid(),
        args.bucket_ms,
        publisher.stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;

    let tcp_before = tcp_counters(TCP);
    let mut drained = Drained::start(a);
    let limit = Instant::now() + Duration::from_secs(args.shutdown_timeout + 30);
    let tally = &shared.tally;
    drained
        .watch(limit, Duration::from_millis(1), || {
            tally.resumed.load(Ordering::Relaxed)
                + (tally.failures.load(Ordering::Relaxed) as usize)
                >= n
        })
        .await;
    let all_resumed = drained.sigterm.elapsed();
    let tcp = tcp_since(&tcp_before);
    let after = Instant::now() + Duration::from_secs_f64(args.after_secs);
    drained
        .watch(after, Duration::from_millis(5), || false)
        .await;
    // Stops the sampler too.
    let heads = publisher.finish()?;
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))??;

    // Every client must reach the heads the publishes got.
    let complete = tally.complete(&heads).await;

    let mut report = Report {
        spread,
        all_resumed_s: all_resumed.as_secs_f64(),
        tcp,
        complete,
        a_exit_s: drained.exit_s(),
        published: heads.published,
        publish_failed: heads.failed,
        ..Report::default()
    };
    figures(
        &mut report,
        &shared,
        drained.sigterm_ns,
        all_resumed,
        &samples,
        args,
    );
    for client in clients {
        client.abort();
    }
    drop((drained, b, c));
    Ok(report)
}

/// The report's figures from what the clients and the sampler recorded.
fn figures(
    report: &mut Report,
    shared: &Shared,
    sigterm_ns: u64,
    all_resumed: Duration,
    samples: &[Sample],
    args: &Args,
) {
    let bucket_ns = args.bucket_ms * 1_000_000;
    let bucket_s = args.bucket_ms as f64 / 1e3;
    let timings = shared.timings.lock().unwrap().clone();
    let peak = |of: fn(&Timing) -> u64| {
        let mut buckets = BTreeMap::<u64, usize>::new();
        for t in &timings {
            *buckets
                .entry(of(t).saturating_sub(sigterm_ns) / bucket_ns)
                .or_default() += 1;
        }
        buckets.values().copied().max().unwrap_or(0) as f64 / bucket_s
    };
    report.peak_attempts = peak(|t| t.start);
    report.peak_accepts = peak(|t| t.upgraded);
    let seconds = (all_resumed.as_secs_f64().ceil() as usize).max(1);
    report.per_second = vec![0; seconds];
    for t in &timings {
        let s = (t.upgraded.saturating_sub(sigterm_ns) / 1_000_000_000) as usize;
        if let Some(count) = report.per_second.get_mut(s.min(seconds - 1)) {
            *count += 1;
        }
    }
    let of = |f: fn(&Timing) -> u64| {
        let mut v: Vec<u64> = timings.iter().map(f).collect();
        percentiles_ms(&mut v)
    };
    report.connect = of(|t| t.first_frame - t.start);
    report.upgrade = of(|t| t.upgraded - t.start);
    let mut resumed: Vec<u64> = timings
        .iter()
        .map(|t| t.resumed.saturating_sub(sigterm_ns))
        .collect();
    report.resumed_after = percentiles_ms(&mut resumed);

    // B's own view: the busiest interval between two samples in the window.
    let window = sigterm_ns..sigterm_ns + all_resumed.as_nanos() as u64 + bucket_ns;
    let in_window: Vec<&Sample> = samples.iter().filter(|s| window.contains(&s.at)).collect();
    for pair in in_window.windows(2) {
        let dt = (pair[1].at - pair[0].at) as f64 / 1e9;
        report.peak_accepts_b = report
            .peak_accepts_b
            .max((pair[1].opened - pair[0].opened) / dt);
        report.b_cpu_peak = report.b_cpu_peak.max((pair[1].cpu_s - pair[0].cpu_s) / dt);
    }
    if let (Some(first), Some(last)) = (in_window.first(), in_window.last()) {
        report.b_cpu_s = last.cpu_s - first.cpu_s;
    }
    report.b_active_peak = samples.iter().map(|s| s.active).fold(0.0, f64::max);

    let hints = shared.hints_ms.lock().unwrap();
    if !hints.is_empty() {
        let min = *hints.iter().min().unwrap() as f64;
        let max = *hints.iter().max().unwrap() as f64;
        let mean = hints.iter().sum::<u64>() as f64 / hints.len() as f64;
        report.hints = (hints.len(), min, max, mean);
    }
    let tally = &shared.tally;
    report.replayed = tally.replayed.load(Ordering::Relaxed);
    report.gaps = tally.gaps.load(Ordering::Relaxed);
    report.duplicates = tally.duplicates.load(Ordering::Relaxed);
    report.lost = tally.lost.lock().unwrap().clone();
    report.closed_without_notice = tally.closed_without_notice.load(Ordering::Relaxed);
    report.closed_before_hint = shared.closed_before_hint.load(Ordering::Relaxed);
    report.connect_errors = shared.connect_errors.load(Ordering::Relaxed);
    report.failures = tally.failures.load(Ordering::Relaxed);
}

/// Samples B's `/metrics` and CPU time every `period_ms` on a thread and
/// runtime of its own (pinned to the generator's core), so that the storm
/// on the generator's runtime does not delay the samples.
fn spawn_sampler(
    common: &Common,
    addr: SocketAddr,
    pid: u32,
    period_ms: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Sample>>> {
    common.generator_thread(move || async move {
        let mut conn = Conn::connect(addr).await?;
        let mut ticker = tokio::time::interval(Duration::from_millis(period_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let values = conn
                .metrics(&[
                    "wsnotify_connections_opened_total",
                    "wsnotify_active_connections",
                ])
                .await
                .context("B's /metrics")?;
            samples.push(Sample {
                at: now_ns(),
                opened: values[0],
                active: values[1],
                cpu_s: run_time_s(pid),
            });
        }
        anyhow::Ok(samples)
    })
}

async fn client(
    i: usize,
    a: SocketAddr,
    b: SocketAddr,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    reconnect_permits: Option<Arc<Semaphore>>,
) {
    if let Err(err) = client_life(i, a, b, &shared, &permits, reconnect_permits.as_deref()).await {
        shared.tally.failed(i, err);
    }
}

/// A client: on A until the drain (and its hint), then on B.
async fn client_life(
    i: usize,
    a: SocketAddr,
    b: SocketAddr,
    shared: &Shared,
    permits: &Semaphore,
    reconnect_permits: Option<&Semaphore>,
) -> Result<()> {
    let mut streams = Streams::new(i, &shared.tally);
    let mut on_a = streams.join_a(a, permits).await?;

    // On A until the drain notice or the end of the connection.
    let hint = streams.until_notice(&mut on_a).await;
    let mut keep_a = None;
    match hint {
        // wsnotify.js: stay, then swap to a new connection.
        Some(ms) => {
            shared.hints_ms.lock().unwrap().push(ms);
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    frame = ws::read_frame(&mut on_a.reader) => match frame {
                        Ok(frame) if frame.opcode == OpCode::Text => {
                            streams.delivered(&frame.payload)
                        }
                        Ok(frame) if frame.opcode != OpCode::Close => {}
                        _ => {
                            shared.closed_before_hint.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    },
                }
            }
            keep_a = Some(on_a);
        }
        None => drop(on_a),
    }

    let path = format!("{}&since={}", streams.path(), since_query(&streams.at));
    let permit = match reconnect_permits {
        Some(permits) => Some(permits.acquire().await?),
        None => None,
    };
    let start = now_ns();
    let mut attempts = 0;
    let mut on_b = loop {
        match ws::connect(b, &path).await {
            Ok(client) => break client,
            Err(err) if attempts < 5 => {
                attempts += 1;
                if shared.connect_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("   client {i}: connect to B: {err:#} (retried in 500 ms)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err).context("connect to B"),
        }
    };
    let upgraded = now_ns();
    let first_frame = streams.opening(&mut on_b, true).await?;
    let resumed = now_ns();
    drop(permit);
    drop(keep_a);
    shared.timings.lock().unwrap().push(Timing {
        start,
        upgraded,
        first_frame,
        resumed,
    });
    shared.tally.resumed.fetch_add(1, Ordering::Relaxed);
    streams.follow_b(&mut on_b).await
}

fn print_results(args: &Args, reports: &[Report]) {
    println!();
    println!(
        "### Reconnect storm: {} JSON clients drained from A (SIGTERM, SHUTDOWN_TIMEOUT={}) resume on B (Redis, HISTORY_SIZE={}); {} notifications/s + {} broadcasts/s through {:?}; reconnects in flight: {}",
        args.clients,
        args.shutdown_timeout,
        args.history,
        args.rate,
        args.broadcast_rate,
        args.publish_via,
        match args.reconnect_concurrency {
            0 => "unlimited".to_owned(),
            n => n.to_string(),
        }
    );
    println!();
    println!(
        "| DRAIN_RECONNECT_SPREAD (s) | hints: clients, min–max (mean) s | peak attempts/s ({ms} ms) | **peak accepts/s on B** (clients, {ms} ms) | peak accepts/s on B (its /metrics, {ms} ms) | **connect p50 / p99 / max (ms)**, handshake → first frame | 101 p50 / p99 (ms) | resumed p50 / p99 (ms after SIGTERM) | all resumed (s) | B CPU: busiest {ms} ms / s in window | B connections, peak | {} | replayed | gaps | duplicates | not recovered | complete | A exited (s) | published (failed) |",
        TCP.join(" / "),
        ms = args.bucket_ms
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let tcp: Vec<String> = r.tcp.iter().map(|v| format!("+{v}")).collect();
        println!(
            "| {} | {} | {:.0} | **{:.0}** | {:.0} | **{:.0} / {:.0} / {:.0}** | {:.0} / {:.0} | {:.0} / {:.0} | {} | {:.0} % / {:.2} | {:.0} | {} | {} | {} | {} | {} | {} / {} | {} | {} ({}) |",
            r.spread,
            if r.hints.0 == 0 {
                "none".to_owned()
            } else {
                format!(
                    "{}, {:.2}–{:.2} ({:.2})",
                    r.hints.0,
                    r.hints.1 / 1e3,
                    r.hints.2 / 1e3,
                    r.hints.3 / 1e3
                )
            },
            r.peak_attempts,
            r.peak_accepts,
            r.peak_accepts_b,
            r.connect.0,
            r.connect.1,
            r.connect.2,
            r.upgrade.0,
            r.upgrade.1,
            r.resumed_after.0,
            r.resumed_after.1,
            cell(r.all_resumed_s, 2),
            r.b_cpu_peak * 100.0,
            r.b_cpu_s,
            r.b_active_peak,
            tcp.join(" / "),
            r.replayed,
            r.gaps,
            r.duplicates,
            Tally::lost_cell(&r.lost),
            r.complete,
            args.clients,
            cell(r.a_exit_s, 2),
            r.published,
            r.publish_failed,
        );
    }
    println!();
    for r in reports {
        println!(
            "spread {} s: upgrades to B per second after the SIGTERM: {:?}; {} closed without a drain notice, {} closed by A before their hint, {} failed connects to B (retried), {} client failures",
            r.spread,
            r.per_second,
            r.closed_without_notice,
            r.closed_before_hint,
            r.connect_errors,
            r.failures
        );
    }
    // Ratios within each repetition, to the spread-0 run of the set.
    let set = args.spreads.len();
    let Some(base) = args.spreads.iter().position(|&s| s == 0.0) else {
        return;
    };
    let sets: Vec<&[Report]> = reports.chunks(set).filter(|c| c.len() == set).collect();
    println!();
    for (k, &spread) in args.spreads.iter().enumerate() {
        if k == base {
            continue;
        }
        let per = |f: fn(&Report) -> f64| -> Vec<String> {
            sets.iter().map(|c| ratio(f(&c[k]), f(&c[base]))).collect()
        };
        let med = |f: fn(&Report) -> f64, j: usize| {
            median(&sets.iter().map(|c| f(&c[j])).collect::<Vec<_>>())
        };
        println!(
            "Spread {spread} s against 0, medians over {} repetitions: peak accepts/s {:.0} against {:.0} ({}), connect p99 {:.0} against {:.0} ms ({}), all resumed {:.2} against {:.2} s. Per repetition, peak accepts/s {}; connect p99 {}; B's busiest {} ms {}.",
            sets.len(),
            med(|r| r.peak_accepts, k),
            med(|r| r.peak_accepts, base),
            ratio(med(|r| r.peak_accepts, k), med(|r| r.peak_accepts, base)),
            med(|r| r.connect.1, k),
            med(|r| r.connect.1, base),
            ratio(med(|r| r.connect.1, k), med(|r| r.connect.1, base)),
            med(|r| r.all_resumed_s, k),
            med(|r| r.all_resumed_s, base),
            per(|r| r.peak_accepts).join(", "),
            per(|r| r.connect.1).join(", "),
            args.bucket_ms,
            per(|r| r.b_cpu_peak).join(", "),
        );
    }
}
