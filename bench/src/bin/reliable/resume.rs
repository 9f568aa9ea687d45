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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::OpCode;
use tokio::sync::Semaphore;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{CpuMark, pin_thread, tcp_counters};
use wsnotify_bench::scan::{self, Position, since_query};
use wsnotify_bench::stats::{median, percentiles_ms};
use wsnotify_bench::ws;

use crate::fanout::wait_ready;
use crate::shared::{Common, cell, wait_for};

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

/// Where publishes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Via {
    B,
    C,
}

/// Stream slots of a client.
const USER: usize = 0;
const BROADCAST: usize = 1;

/// What the clients of one run record.
struct Shared {
    /// Per client: the offset reached on each stream (USER, BROADCAST).
    offsets: Vec<[AtomicU64; 2]>,
    ready: AtomicUsize,
    resumed: AtomicUsize,
    /// Deliveries whose offset did not follow the last one.
    gaps: AtomicU64,
    /// Messages B replayed after `recovered: true` (head − position).
    replayed: AtomicU64,
    /// Messages skipped by starting at the head (no `since`).
    missed: AtomicU64,
    /// Streams B said it could not recover, by reason.
    lost: Mutex<BTreeMap<String, u64>>,
    /// Time of the SIGTERM, on the generator's clock.
    sigterm_ns: AtomicU64,
    /// Per client, ns after the SIGTERM: drain notice (or close), resumed.
    noticed_ns: Mutex<Vec<u64>>,
    resumed_ns: Mutex<Vec<u64>>,
    /// Closes without a drain notice.
    closed_without_notice: AtomicU64,
    failures: AtomicU64,
    delivered: AtomicU64,
}

impl Shared {
    fn new(n: usize) -> Shared {
        Shared {
            offsets: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            ready: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            gaps: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            lost: Mutex::new(BTreeMap::new()),
            sigterm_ns: AtomicU64::new(0),
            noticed_ns: Mutex::new(Vec::new()),
            resumed_ns: Mutex::new(Vec::new()),
            closed_without_notice: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    fn since_sigterm(&self) -> u64 {
        now_ns().saturating_sub(self.sigterm_ns.load(Ordering::Relaxed))
    }
}

/// What the publisher's replies said: the head of every stream.
#[derive(Default)]
pub(crate) struct Heads {
    pub users: BTreeMap<usize, u64>,
    pub broadcast: u64,
    pub published: u64,
    pub failed: u64,
    /// When each publish was answered (generator clock), and whether it
    /// was a broadcast.
    pub answered: Vec<(u64, bool, u64)>,
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

/// Kernel counters read around the reconnect storm.
pub(crate) const TCP: &[&str] = &["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

pub fn run(common: &Common, args: &Args) -> Result<()> {
    let mut reports = Vec::new();
    common.on_generator(async {
        let redis = common.redis().await?;
        for rep in 0..args.repeat {
            for &variant in &args.variants {
                redis.flush().await?;
                eprintln!(
                    "== resume, {variant:?}, {} clients, repetition {}",
                    args.clients,
                    rep + 1
                );
                let report = run_one(common, args, &redis.url(), redis.proc.pid(), variant).await?;
                eprintln!("   {report:?}");
                reports.push((variant, report));
            }
        }
        anyhow::Ok(())
    })??;
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
    let history = args.history.to_string();
    let b = common
        .server(
            "B",
            &[
                ("REDIS_URL", redis_url.to_owned()),
                ("HISTORY_SIZE", history.clone()),
            ],
        )
        .await?;
    let mut a = common
        .server(
            "A",
            &[
                ("REDIS_URL", redis_url.to_owned()),
                ("HISTORY_SIZE", history),
                ("SHUTDOWN_TIMEOUT", args.shutdown_timeout.to_string()),
                ("DRAIN_RECONNECT_SPREAD", args.spread.to_string()),
            ],
        )
        .await?;
    wait_ready(&a).await?;
    wait_ready(&b).await?;
    // A third instance that only takes publishes, if asked for.
    let c = match args.publish_via {
        Via::B => None,
        Via::C => {
            let c = common
                .server(
                    "C",
                    &[
                        ("REDIS_URL", redis_url.to_owned()),
                        ("HISTORY_SIZE", args.history.to_string()),
                    ],
                )
                .await?;
            wait_ready(&c).await?;
            Some(c)
        }
    };
    let publish_to = c.as_ref().map_or(b.addr, |c| c.addr);

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
    let connected = wait_for(Duration::from_secs(60), || {
        shared.ready.load(Ordering::Relaxed) + shared.failures.load(Ordering::Relaxed) as usize >= n
    })
    .await;
    if !connected || shared.failures.load(Ordering::Relaxed) > 0 {
        bail!(
            "only {} of {n} clients connected to A",
            shared.ready.load(Ordering::Relaxed)
        );
    }
    eprintln!("   {n} clients on A");

    let heads = Arc::new(Mutex::new(Heads::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Plan {
        rate: args.rate,
        broadcast_rate: args.broadcast_rate,
        users: args.clients,
        payload: args.payload,
    };
    let publisher = spawn_publisher(common, plan, publish_to, heads.clone(), stop.clone());
    let publish_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;

    let pids = [Some(a.pid()), Some(b.pid()), Some(redis_pid), Some(0)];
    let cpu_before = CpuMark::take(&pids);
    let a_cpu_before = a.cpu_s();
    let tcp_before = tcp_counters(TCP);
    shared.sigterm_ns.store(now_ns(), Ordering::Relaxed);
    let sigterm = Instant::now();
    a.terminate();
    let mut report = Report::default();
    let mut a_exit = None;
    let limit = Instant::now() + Duration::from_secs(args.shutdown_timeout + 30);
    while shared.resumed.load(Ordering::Relaxed) < n && Instant::now() < limit {
        if a_exit.is_none() && a.exited().is_some() {
            a_exit = Some(sigterm.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_after = CpuMark::take(&pids);
    report.cpu_a_s = a.cpu_s() - a_cpu_before;
    let tcp_after = tcp_counters(TCP);
    report.tcp = tcp_after
        .iter()
        .zip(&tcp_before)
        .map(|(a, b)| a - b)
        .collect();
    report.window_s = sigterm.elapsed().as_secs_f64();
    let after = Instant::now() + Duration::from_secs_f64(args.after_secs);
    while Instant::now() < after {
        if a_exit.is_none() && a.exited().is_some() {
            a_exit = Some(sigterm.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    let publish_s = publish_started.elapsed().as_secs_f64();

    // Every client must reach the heads the publishes got.
    let heads = std::mem::take(&mut *heads.lock().unwrap());
    let complete = |shared: &Shared| -> usize {
        (0..n)
            .filter(|&i| {
                let o = &shared.offsets[i];
                o[BROADCAST].load(Ordering::Relaxed) >= heads.broadcast
                    && o[USER].load(Ordering::Relaxed) >= heads.users.get(&i).copied().unwrap_or(0)
            })
            .count()
    };
    wait_for(Duration::from_secs(15), || complete(&shared) == n).await;
    report.complete = complete(&shared);
    if a_exit.is_none() {
        let deadline = Instant::now() + Duration::from_secs(args.shutdown_timeout + 5);
        while a.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a_exit = a.exited().map(|_| sigterm.elapsed());
    }

    report.notice = percentiles_ms(&mut shared.noticed_ns.lock().unwrap());
    let mut resumed = shared.resumed_ns.lock().unwrap();
    report.resumed = percentiles_ms(&mut resumed);
    report.all_resumed_s = resumed.last().map_or(f64::NAN, |&ns| ns as f64 / 1e9);
    report.resumed_clients = resumed.len();
    drop(resumed);
    report.replayed = shared.replayed.load(Ordering::Relaxed);
    report.missed = shared.missed.load(Ordering::Relaxed);
    report.lost = shared.lost.lock().unwrap().clone();
    report.gaps = shared.gaps.load(Ordering::Relaxed);
    report.closed_without_notice = shared.closed_without_notice.load(Ordering::Relaxed);
    report.failures = shared.failures.load(Ordering::Relaxed);
    report.a_exit_s = a_exit.map_or(f64::NAN, |d| d.as_secs_f64());
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
    drop(a);
    drop(b);
    drop(c);
    Ok(report)
}

/// What the publisher sends: notifications/s to random users `u0…`,
/// broadcasts/s among them, payload bytes.
pub(crate) struct Plan {
    pub rate: u64,
    pub broadcast_rate: u64,
    pub users: usize,
    pub payload: usize,
}

/// The publisher, on its own thread and runtime (pinned to the generator's
/// core), so that the reconnect storm does not stall its clock.
pub(crate) fn spawn_publisher(
    common: &Common,
    plan: Plan,
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Heads>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    let cpu = common.generator_cpu();
    let (rate, broadcasts, users, payload) =
        (plan.rate, plan.broadcast_rate, plan.users, plan.payload);
    std::thread::spawn(move || {
        pin_thread(cpu);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut conn = Conn::connect(addr).await?;
            let total = (rate + broadcasts).max(1);
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / total as f64));
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                // Broadcasts spread evenly among the notifications.
                let broadcast = broadcasts > 0 && (i * broadcasts) % total < broadcasts;
                let user = {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % users as u64) as usize
                };
                let sent = now_ns();
                let placed = if broadcast {
                    conn.broadcast(&stamped('b', i, payload)).await
                } else {
                    conn.notify(&format!("u{user}"), &stamped('n', i, payload))
                        .await
                };
                match placed {
                    Ok(Some(at)) => {
                        let answered = now_ns();
                        let mut heads = heads.lock().unwrap();
                        heads.published += 1;
                        heads.answered.push((answered, broadcast, answered - sent));
                        if broadcast {
                            heads.broadcast = heads.broadcast.max(at.offset);
                        } else {
                            let head = heads.users.entry(user).or_default();
                            *head = (*head).max(at.offset);
                        }
                    }
                    Ok(None) => bail!("a publish without a position: is history on?"),
                    Err(err) => {
                        heads.lock().unwrap().failed += 1;
                        eprintln!("   publish failed: {err:#}");
                        conn = Conn::connect(addr).await?;
                    }
                }
                i += 1;
            }
            anyhow::Ok(())
        })
    })
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
    if let Err(err) = client_life(i, a, b, variant, &shared, &permits).await
        && shared.failures.fetch_add(1, Ordering::Relaxed) < 5
    {
        eprintln!("   client {i}: {err:#}");
    }
}

/// A client's two streams: name, epoch and offset reached.
struct Streams {
    at: [Position; 2],
}

async fn client_life(
    i: usize,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    variant: Variant,
    shared: &Shared,
    permits: &Semaphore,
) -> Result<()> {
    let user = format!("u{i}");
    let path = format!("/ws/notifications?user={user}");
    let mut streams = Streams {
        at: [
            Position {
                stream: format!("user:{user}"),
                epoch: String::new(),
                offset: 0,
            },
            Position {
                stream: "broadcast".into(),
                epoch: String::new(),
                offset: 0,
            },
        ],
    };

    let mut on_a = {
        let _permit = permits.acquire().await?;
        ws::connect(a, &path).await?
    };
    opening(&mut on_a, &mut streams, i, shared, false).await?;
    shared.ready.fetch_add(1, Ordering::Relaxed);

    // On A until the drain notice or the end of the connection.
    let mut hint_ms = 0;
    let mut noticed = false;
    while let Ok(frame) = ws::read_frame(&mut on_a.reader).await {
        match frame.opcode {
            OpCode::Text if scan::is_type(&frame.payload, b"system.shutdown") => {
                hint_ms = scan::u64_field(&frame.payload, b"reconnect_after_ms").unwrap_or(0);
                noticed = true;
                break;
            }
            OpCode::Text => delivered(&frame.payload, &mut streams, i, shared),
            OpCode::Close => break,
            _ => {}
        }
    }
    shared
        .noticed_ns
        .lock()
        .unwrap()
        .push(shared.since_sigterm());
    if !noticed {
        shared.closed_without_notice.fetch_add(1, Ordering::Relaxed);
    }
    drop(on_a);
    if hint_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hint_ms)).await;
    }

    let path = match variant {
        Variant::Since => format!("{path}&since={}", since_query(&streams.at)),
        Variant::Nosince => path,
    };
    let mut on_b = {
        let _permit = permits.acquire().await?;
        ws::connect(b, &path).await.context("connect to B")?
    };
    opening(&mut on_b, &mut streams, i, shared, true).await?;
    shared
        .resumed_ns
        .lock()
        .unwrap()
        .push(shared.since_sigterm());
    shared.resumed.fetch_add(1, Ordering::Relaxed);
    while let Ok(frame) = ws::read_frame(&mut on_b.reader).await {
        match frame.opcode {
            OpCode::Text => delivered(&frame.payload, &mut streams, i, shared),
            OpCode::Close => bail!("B closed the connection"),
            _ => {}
        }
    }
    Ok(())
}

/// Reads frames until both `stream.position` frames came (a replay may
/// come between them), and takes what they say.
async fn opening(
    client: &mut ws::Client,
    streams: &mut Streams,
    i: usize,
    shared: &Shared,
    resuming: bool,
) -> Result<()> {
    let mut seen = [false; 2];
    while !(seen[USER] && seen[BROADCAST]) {
        let frame = ws::read_frame(&mut client.reader).await?;
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => bail!("closed before its positions"),
            _ => continue,
        }
        let text = &frame.payload[..];
        if !scan::is_type(text, b"stream.position") {
            delivered(text, streams, i, shared);
            continue;
        }
        let slot = if scan::str_field(text, b"stream") == Some(b"broadcast") {
            BROADCAST
        } else {
            USER
        };
        seen[slot] = true;
        let head = scan::last_u64_field(text, b"offset").context("a position's offset")?;
        let epoch = String::from_utf8_lossy(scan::str_field(text, b"epoch").unwrap_or_default());
        let at = &mut streams.at[slot];
        let gap = head.saturating_sub(at.offset);
        match scan::find(text, b"\"recovered\":") {
            // Recovered: the messages after our position follow.
            Some(_) if scan::find(text, b"\"recovered\":true").is_some() => {
                shared.replayed.fetch_add(gap, Ordering::Relaxed);
                continue;
            }
            Some(_) => {
                let reason = scan::str_field(text, b"reason").unwrap_or(b"?");
                *shared
                    .lost
                    .lock()
                    .unwrap()
                    .entry(String::from_utf8_lossy(reason).into_owned())
                    .or_default() += 1;
            }
            None if resuming => {
                shared.missed.fetch_add(gap, Ordering::Relaxed);
            }
            None => {}
        }
        at.epoch = epoch.into_owned();
        at.offset = head;
        shared.offsets[i][slot].store(head, Ordering::Relaxed);
    }
    Ok(())
}

/// A delivery of one of the client's streams: its offset must follow.
fn delivered(text: &[u8], streams: &mut Streams, i: usize, shared: &Shared) {
    let slot = match scan::str_field(text, b"stream") {
        Some(b"broadcast") => BROADCAST,
        Some(_) => USER,
        None => return,
    };
    let Some(offset) = scan::last_u64_field(text, b"offset") else {
        return;
    };
    let at = &mut streams.at[slot];
    if offset != at.offset + 1 {
        shared.gaps.fetch_add(1, Ordering::Relaxed);
    }
    at.offset = offset;
    shared.offsets[i][slot].store(offset, Ordering::Relaxed);
    shared.delivered.fetch_add(1, Ordering::Relaxed);
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
        let lost: Vec<String> = r.lost.iter().map(|(k, v)| format!("{k}: {v}")).collect();
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
            if lost.is_empty() {
                "0".into()
            } else {
                lost.join(", ")
            },
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
