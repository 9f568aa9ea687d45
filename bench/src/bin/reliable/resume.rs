//! `reliable resume`: the clients of a drained instance resume on another
//! one, with `since` against without (Redis mode, two instances).
//!
//! Each run (one per `--variants` entry, back to back, Redis flushed in
//! between): instances A and B on one private Redis, A started with
//! `SHUTDOWN_TIMEOUT` and `DRAIN_RECONNECT_SPREAD` as given; N JSON clients
//! on A (`/ws/notifications?user=uN`) keep the positions of their two
//! streams (`user:uN`, `broadcast`) from `stream.position` and from every
//! delivery, and check that each offset follows the last. A publisher
//! thread sends `--rate` notifications/s to random users and
//! `--broadcast-rate` broadcasts/s through B (or, with `--publish-via c`, a
//! third instance that serves no client), and keeps the offsets the
//! publishes got. After `--warmup-secs` A gets SIGTERM. Each client, on
//! `system.shutdown` (after its `reconnect_after_ms`, if any) or when its
//! connection ends, reconnects to B: with `?since=` built from its
//! positions (`since`), or without (`nosince`: it starts at the head and
//! misses what was published meanwhile). A client has resumed when both
//! its `stream.position` frames arrived from B. Once all have, the
//! publisher goes on for `--after-secs`, stops, and every client must reach
//! the offsets the publishes got.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use wsnotify_bench::clock::now_ns;
use wsnotify_bench::procs::{CpuMark, tcp_counters};
use wsnotify_bench::scan::since_query;
use wsnotify_bench::stats::{median, percentiles_ms};
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
    /// Runs, back to back (comma list of `since`, `nosince`).
    #[arg(
        long,
        value_enum,
        default_value = "since,nosince",
        value_delimiter = ','
    )]
    variants: Vec<Variant>,
    /// Notifications per second through B (to random users of the clients).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Broadcasts per second through B.
    #[arg(long, default_value_t = 5)]
    broadcast_rate: u64,
    /// Payload bytes of each publish.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds of publishing before the SIGTERM.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Seconds of publishing after every client has resumed.
    #[arg(long, default_value_t = 3.0)]
    after_secs: f64,
    /// A's `SHUTDOWN_TIMEOUT`, seconds.
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
    /// A's `DRAIN_RECONNECT_SPREAD`, seconds (0: every client reconnects at once).
    #[arg(long, default_value_t = 0.0)]
    spread: f64,
    /// `HISTORY_SIZE` of both instances.
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// The instance publishes go through: B (the one the clients move to),
    /// or C, a third instance on the same Redis that serves no client.
    #[arg(long, value_enum, default_value = "b")]
    publish_via: Via,
    /// Repetitions of the set of variants (interleaved).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Variant {
    /// Reconnect with `?since=` from the client's positions.
    Since,
    /// Reconnect without `since`: start at the head.
    Nosince,
}

/// What the clients of one run record.
struct Shared {
    /// Offsets, gaps, replays, misses, losses ([`Order::Strict`]: a
    /// client's offsets must follow each other, whatever B replays).
    tally: Tally,
    /// Time of the SIGTERM, on the generator's clock.
    sigterm_ns: AtomicU64,
    /// Per client, ns after the SIGTERM: drain notice (or close), resumed.
    noticed_ns: Mutex<Vec<u64>>,
    resumed_ns: Mutex<Vec<u64>>,
}

impl Shared {
    fn new(n: usize) -> Shared {
        Shared {
            tally: Tally::new(n, Order::Strict),
            sigterm_ns: AtomicU64::new(0),
            noticed_ns: Mutex::new(Vec::new()),
            resumed_ns: Mutex::new(Vec::new()),
        }
    }

    fn since_sigterm(&self) -> u64 {
        now_ns().saturating_sub(self.sigterm_ns.load(Ordering::Relaxed))
    }
}

/// One run's figures.
#[derive(Debug, Default)]
struct Report {
    notice: (f64, f64, f64),
    resumed: (f64, f64, f64),
    all_resumed_s: f64,
    resumed_clients: usize,
    replayed: u64,
    missed: u64,
    lost: BTreeMap<String, u64>,
    gaps: u64,
    complete: usize,
    closed_without_notice: u64,
    failures: u64,
    a_exit_s: f64,
    published: u64,
    publish_failed: u64,
    publish_rate: f64,
    cpu_b_s: f64,
    cpu_a_s: f64,
    cpu_redis_s: f64,
    cpu_generator_s: f64,
    cpu_others_s: f64,
    window_s: f64,
    /// Publishes answered between the SIGTERM and the last resume.
    window_notifications: u64,
    window_broadcasts: u64,
    /// From the SIGTERM to a second after the last resume: the longest
    /// time without a publish answered, and the slowest publish.
    publish_stall_ms: f64,
    publish_slowest_ms: f64,
    /// [`TCP`] counters' growth from the SIGTERM until all resumed.
    tcp: Vec<u64>,
}

pub fn run(common: &Common, args: &Args) -> Result<()> {
    let reports = repetitions(
        common,
        args.repeat,
        &args.variants,
        |variant, rep| {
            format!(
                "resume, {variant:?}, {} clients, repetition {rep}",
                args.clients
            )
        },
        async |redis, variant| run_one(common, args, &redis.url(), redis.proc.pid(), variant).await,
    )?;
    print_results(args, &reports);
    Ok(())
}

async fn run_one(
    common: &Common,
    args: &Args,
    redis_url: &str,
    redis_pid: u32,
    variant: Variant,
) -> Result<Report> {
    let servers = Instances::start(
        common,
        redis_url,
        args.history,
        args.shutdown_timeout,
        args.spread,
        args.publish_via,
    )
    .await?;
    let publish_to = servers.publish_to();
    let Instances { a, b, c } = servers;

    let n = args.clients;
    let shared = Arc::new(Shared::new(n));
    let permits = Arc::new(Semaphore::new(common.connect_concurrency));
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(tokio::spawn(client(
            i,
            a.addr,
            b.addr,
            variant,
            shared.clone(),
            permits.clone(),
        )));
    }
    shared.tally.all_on_a(n).await?;

    let plan = Plan {
        rate: args.rate,
        broadcast_rate: args.broadcast_rate,
        users: args.clients,
        payload: args.payload,
    };
    let publisher = Publisher::spawn(common, plan, publish_to);
    let publish_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;

    let pids = [Some(a.pid()), Some(b.pid()), Some(redis_pid), Some(0)];
    let cpu_before = CpuMark::take(&pids);
    let a_cpu_before = a.cpu_s();
    let tcp_before = tcp_counters(TCP);
    let mut drained = Drained::start(a);
    shared
        .sigterm_ns
        .store(drained.sigterm_ns, Ordering::Relaxed);
    let mut report = Report::default();
    let limit = Instant::now() + Duration::from_secs(args.shutdown_timeout + 30);
    drained
        .watch(limit, Duration::from_millis(1), || {
            shared.tally.resumed.load(Ordering::Relaxed) >= n
        })
        .await;
    let cpu_after = CpuMark::take(&pids);
    report.cpu_a_s = drained.a.cpu_s() - a_cpu_before;
    report.tcp = tcp_since(&tcp_before);
    report.window_s = drained.sigterm.elapsed().as_secs_f64();
    let after = Instant::now() + Duration::from_secs_f64(args.after_secs);
    drained
        .watch(after, Duration::from_millis(5), || false)
        .await;
    let heads = publisher.finish()?;
    let publish_s = publish_started.elapsed().as_secs_f64();

    // Every client must reach the heads the publishes got.
    report.complete = shared.tally.complete(&heads).await;
    if drained.exit.is_none() {
        let deadline = Instant::now() + Duration::from_secs(args.shutdown_timeout + 5);
        while drained.a.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drained.exit = drained.a.exited().map(|_| drained.sigterm.elapsed());
    }

    report.notice = percentiles_ms(&mut shared.noticed_ns.lock().unwrap());
    let mut resumed = shared.resumed_ns.lock().unwrap();
    report.resumed = percentiles_ms(&mut resumed);
    report.all_resumed_s = resumed.last().map_or(f64::NAN, |&ns| ns as f64 / 1e9);
    report.resumed_clients = resumed.len();
    drop(resumed);
    let tally = &shared.tally;
    report.replayed = tally.replayed.load(Ordering::Relaxed);
    report.missed = tally.missed.load(Ordering::Relaxed);
    report.lost = tally.lost.lock().unwrap().clone();
    report.gaps = tally.gaps.load(Ordering::Relaxed);
    report.closed_without_notice = tally.closed_without_notice.load(Ordering::Relaxed);
    report.failures = tally.failures.load(Ordering::Relaxed);
    report.a_exit_s = drained.exit_s();
    report.published = heads.published;
    report.publish_failed = heads.failed;
    report.publish_rate = heads.published as f64 / publish_s;
    // What was published while the clients moved: what a resume must replay.
    let from = shared.sigterm_ns.load(Ordering::Relaxed);
    let to = from + (report.window_s * 1e9) as u64;
    let mut last = from;
    for &(at, broadcast, took) in &heads.answered {
        if (from..=to + 1_000_000_000).contains(&at) {
            report.publish_stall_ms = report.publish_stall_ms.max((at - last) as f64 / 1e6);
            report.publish_slowest_ms = report.publish_slowest_ms.max(took as f64 / 1e6);
            last = at;
        }
        if (from..=to).contains(&at) {
            if broadcast {
                report.window_broadcasts += 1;
            } else {
                report.window_notifications += 1;
            }
        }
    }
    let used = cpu_after.since(&cpu_before);
    (report.cpu_b_s, report.cpu_redis_s, report.cpu_generator_s) =
        (used.procs[1], used.procs[2], used.procs[3]);
    // A's share comes from its own reading: it may have exited meanwhile.
    report.cpu_others_s = used.machine_s
        - report.cpu_a_s
        - report.cpu_b_s
        - report.cpu_redis_s
        - report.cpu_generator_s;

    for client in clients {
        client.abort();
    }
    drop(drained);
    drop(b);
    drop(c);
    Ok(report)
}

/// One client: on A until the drain, then on B.
async fn client(
    i: usize,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    variant: Variant,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) {
    if let Err(err) = client_life(i, a, b, variant, &shared, &permits).await {
        shared.tally.failed(i, err);
    }
}

async fn client_life(
    i: usize,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    variant: Variant,
    shared: &Shared,
    permits: &Semaphore,
) -> Result<()> {
    let mut streams = Streams::new(i, &shared.tally);
    let mut on_a = streams.join_a(a, permits).await?;

    // On A until the drain notice or the end of the connection.
    let hint_ms = streams.until_notice(&mut on_a).await.unwrap_or(0);
    shared
        .noticed_ns
        .lock()
        .unwrap()
        .push(shared.since_sigterm());
    drop(on_a);
    if hint_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hint_ms)).await;
    }

    let path = match variant {
        Variant::Since => format!("{}&since={}", streams.path(), since_query(&streams.at)),
        Variant::Nosince => streams.path(),
    };
    let mut on_b = {
        let _permit = permits.acquire().await?;
        ws::connect(b, &path).await.context("connect to B")?
    };
    streams.opening(&mut on_b, true).await?;
    shared
        .resumed_ns
        .lock()
        .unwrap()
        .push(shared.since_sigterm());
    shared.tally.resumed.fetch_add(1, Ordering::Relaxed);
    streams.follow_b(&mut on_b).await
}

fn print_results(args: &Args, reports: &[(Variant, Report)]) {
    println!();
    println!(
        "### Resume after a drain: {} JSON clients, A drained with SIGTERM (SHUTDOWN_TIMEOUT={}, DRAIN_RECONNECT_SPREAD={}), {} notifications/s + {} broadcasts/s through {:?}",
        args.clients,
        args.shutdown_timeout,
        args.spread,
        args.rate,
        args.broadcast_rate,
        args.publish_via
    );
    println!();
    println!(
        "| reconnect | drain notice p50 / max (ms after SIGTERM) | resumed p50 / p99 / max (ms after SIGTERM) | all resumed (s) | replayed | missed (started at head) | not recovered | gaps | clients complete at the end | A exited (s) | published (failed), rate/s | CPU s from SIGTERM to all resumed: A / B / Redis / generator / rest of the machine (window s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (variant, r) in reports {
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {} ({} clients) | {} | {} | {} | {} | {} / {} | {} | {} ({}), {:.0} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} ({:.2}) |",
            match variant {
                Variant::Since => "with `since`",
                Variant::Nosince => "without `since`",
            },
            r.notice.0,
            r.notice.2,
            r.resumed.0,
            r.resumed.1,
            r.resumed.2,
            cell(r.all_resumed_s, 2),
            r.resumed_clients,
            r.replayed,
            r.missed,
            Tally::lost_cell(&r.lost),
            r.gaps,
            r.complete,
            args.clients,
            cell(r.a_exit_s, 2),
            r.published,
            r.publish_failed,
            r.publish_rate,
            r.cpu_a_s,
            r.cpu_b_s,
            r.cpu_redis_s,
            r.cpu_generator_s,
            r.cpu_others_s,
            r.window_s,
        );
    }
    println!();
    for (variant, r) in reports {
        let tcp: Vec<String> = TCP
            .iter()
            .zip(&r.tcp)
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        println!(
            "{variant:?}: published from SIGTERM to all resumed: {} notifications, {} broadcasts (longest pause between publish answers {:.0} ms, slowest publish {:.0} ms); {} clients closed without a drain notice, {} client failures; kernel (machine-wide) meanwhile: {}",
            r.window_notifications,
            r.window_broadcasts,
            r.publish_stall_ms,
            r.publish_slowest_ms,
            r.closed_without_notice,
            r.failures,
            tcp.join(", ")
        );
    }
    // Ratios within each repetition: runs come in sets of the variants.
    let set = args.variants.len();
    if let (Some(with), Some(without)) = (
        args.variants.iter().position(|v| *v == Variant::Since),
        args.variants.iter().position(|v| *v == Variant::Nosince),
    ) {
        let pairs: Vec<(&Report, &Report)> = reports
            .chunks(set)
            .filter(|c| c.len() == set)
            .map(|c| (&c[with].1, &c[without].1))
            .collect();
        let of = |f: fn(&Report) -> f64| -> Vec<String> {
            pairs
                .iter()
                .map(|(w, wo)| format!("{:.2}×", f(w) / f(wo)))
                .collect()
        };
        let median_of = |f: fn(&Report) -> f64, variant: Variant| {
            median(
                &reports
                    .iter()
                    .filter(|(v, _)| *v == variant)
                    .map(|(_, r)| f(r))
                    .collect::<Vec<_>>(),
            )
        };
        println!();
        println!(
            "Medians over {} repetitions: all resumed {:.2} s with `since`, {:.2} s without; resumed p50 {:.0} / {:.0} ms, p99 {:.0} / {:.0} ms.",
            pairs.len(),
            median_of(|r| r.all_resumed_s, Variant::Since),
            median_of(|r| r.all_resumed_s, Variant::Nosince),
            median_of(|r| r.resumed.0, Variant::Since),
            median_of(|r| r.resumed.0, Variant::Nosince),
            median_of(|r| r.resumed.1, Variant::Since),
            median_of(|r| r.resumed.1, Variant::Nosince),
        );
        println!(
            "Ratios with / without `since`, per repetition: all resumed {}; resumed p99 {}.",
            of(|r| r.all_resumed_s).join(", "),
            of(|r| r.resumed.1).join(", "),
        );
    }
}
