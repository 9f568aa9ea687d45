//! Fan-out benchmark: N WebSocket clients on one server, broadcasts
//! published over HTTP, measured from this process; every server of
//! `--servers` in the same invocation, back to back.
//!
//! Servers: the floor (bench/src/bin/floor.rs: one thread, blocking
//! sockets, one precomputed frame and one `write()` per client), wsnotify
//! (plain `/ws`), the axum baseline (baseline_axum.rs) and sockudo (Pusher
//! protocol, one public channel, signed `POST /apps/{id}/events`; see
//! `just bench-peers`; it closes the connection after every API answer, so
//! each of its publishes opens one, and its latency includes that
//! connect). Each runs pinned to core `--server-cpu`; the generator, one
//! single-threaded tokio runtime, to the next core.
//!
//! For each client count, payload size, reader and repetition, each server
//! gets a fresh process and:
//! 1. N clients connect, `--connect-concurrency` handshakes at a time
//!    (**connect**: until every client has its greeting, or for sockudo its
//!    subscription's confirmation);
//! 2. after 1 s its `VmRSS` growth since before the first client ÷ N is
//!    the **RSS per idle connection**;
//! 3. `--rounds` single broadcasts, each waited for by every client
//!    (**p50/p99/max** of publish-to-receive over all N × rounds
//!    deliveries; the p99 of each round too);
//! 4. `--burst` broadcasts posted back to back, each after the previous
//!    answer (**deliveries/s** = deliveries ÷ time from the first POST to
//!    the last delivery), and the **lost** count;
//! 5. the CPU time of the server and of this generator (to the ns:
//!    schedstat, `CLOCK_PROCESS_CPUTIME_ID`), of the rest of the machine
//!    (`/proc/stat`) around phases 3 and 4, and which server threads
//!    did the work. A run during which the rest of the machine kept more
//!    than `--max-others` cores busy is discarded and run again.
//!
//! With the floor, the time each client's write returned (`GET /writes`)
//! splits every delivery's latency into the server's part (post → write
//! returned) and the generator's (write returned → frame read).
//!
//! That is the `broadcast` scenario, the default. `--scenarios` adds the
//! others, each measured against its baseline in the same invocation
//! (their method is in their files):
//! - `notify` ([`notifications`]): one `POST /notify/{user}` to each of N
//!   users, against wsnotify's own broadcast to the same clients and
//!   sockudo's private channels;
//! - `redis` ([`redis_mode`]): two wsnotify instances on one Redis, N/2
//!   clients each, against two sockudo instances with its Redis adapter;
//! - `storm` ([`storm`]): N connects with HS256 tokens against the same
//!   storm without.

mod clients;
mod notifications;
mod redis_mode;
mod report;
mod servers;
mod storm;

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::task::LocalSet;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{self, CpuMark, Proc};
use wsnotify_bench::provenance;
use wsnotify_bench::scan;
use wsnotify_bench::stats::percentiles_ms;

use crate::clients::{Reader, Tally};
use crate::report::{FloorSplit, Run};
use crate::servers::Server;

#[derive(Parser, Clone)]
#[command(about = "Fan-out benchmark: wsnotify against a floor server, axum and sockudo")]
pub struct Args {
    /// Scenarios, run in this order (comma list): `broadcast` (the servers
    /// of `--servers`), `notify` (per-user notifications), `redis` (two
    /// instances on one Redis), `storm` (connects with and without JWT).
    /// All but `broadcast` measure wsnotify, and sockudo where `--servers`
    /// names it.
    #[arg(long, value_enum, default_value = "broadcast", value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Servers, measured in this order in every repetition (comma list).
    #[arg(
        long,
        value_enum,
        default_value = "floor,wsnotify,axum",
        value_delimiter = ','
    )]
    servers: Vec<Server>,
    /// Client readers (comma list): `lean` parses frame headers only,
    /// `fastwebsockets` is the previous generator's per-frame method.
    #[arg(long, value_enum, default_value = "lean", value_delimiter = ',')]
    readers: Vec<Reader>,
    /// Client counts (comma list).
    #[arg(long, default_value = "10000", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Payload sizes in bytes (comma list).
    #[arg(long, default_value = "64", value_delimiter = ',')]
    payloads: Vec<usize>,
    /// Single broadcasts whose latency is measured, one after another.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Broadcasts posted back to back for the throughput figure.
    #[arg(long, default_value_t = 50)]
    burst: usize,
    /// Repetitions of the whole set, interleaved.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Check every delivery's sequence number (the lean reader then reads
    /// the first bytes of each payload too).
    #[arg(long)]
    verify: bool,
    /// A run during which the rest of the machine kept more than this many
    /// cores busy is run again (the machine is shared).
    #[arg(long, default_value_t = 0.3)]
    max_others: f64,
    /// Attempts per run before a disturbed one is kept anyway.
    #[arg(long, default_value_t = 3)]
    attempts: usize,
    /// A command run while the single broadcasts of `--attach-to` servers
    /// go on, `{pid}` replaced by the server's pid and `{gen}` by this
    /// generator's, stopped with SIGINT after the last one (e.g. `perf
    /// record -g -p {pid} -o FILE`).
    #[arg(long)]
    attach: Option<String>,
    /// Servers `--attach` applies to (comma list).
    #[arg(long, value_enum, default_value = "wsnotify", value_delimiter = ',')]
    attach_to: Vec<Server>,
    /// Core the server is pinned to; the generator takes the next one.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    #[arg(long, default_value = "target/release/wsnotify")]
    wsnotify_bin: String,
    #[arg(long, default_value = "target/release/floor")]
    floor_bin: String,
    #[arg(long, default_value = "target/release/baseline-axum")]
    axum_bin: String,
    #[arg(long, default_value = "target/peers/sockudo/bin/sockudo")]
    sockudo_bin: String,
    /// Extra environment for wsnotify (KEY=VALUE, repeatable), after the
    /// quiet settings (no ticker, no heartbeat, no idle timeout).
    #[arg(long = "wsnotify-env", value_parser = key_value)]
    wsnotify_env: Vec<(String, String)>,
    /// Extra environment for sockudo (KEY=VALUE, repeatable).
    #[arg(long = "sockudo-env", value_parser = key_value)]
    sockudo_env: Vec<(String, String)>,
    /// notify: bursts of one notification to every client, each measured
    /// (wsnotify's single broadcasts of the same run: `--rounds`).
    #[arg(long, default_value_t = 5)]
    notify_rounds: usize,
    /// notify: publisher connections a burst is spread over.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// notify: requests each publisher keeps in flight (HTTP/1.1
    /// pipelining), written in two batches of half as many.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    /// notify: channels per sockudo event (comma list, 1 to 100, sockudo's
    /// limit; each a run of its own). 1 is wsnotify's workload: one
    /// request per notification; more batches the burst.
    #[arg(long, default_value = "1,100", value_delimiter = ',')]
    sockudo_batch: Vec<usize>,
    /// redis: the redis-server binary (started on the server core).
    #[arg(long, default_value = "redis-server")]
    redis_bin: String,
    /// storm: handshakes in flight at once.
    #[arg(long, default_value_t = 1000)]
    storm_concurrency: usize,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// One broadcast to N clients, and a burst of them.
    Broadcast,
    /// `POST /notify/{user}` to each of N users.
    Notify,
    /// Two instances on one Redis.
    Redis,
    /// N connects at once, with and without a JWT.
    Storm,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text}: expected KEY=VALUE"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    now_ns();
    println!("{}", provenance(&args));
    procs::pin_thread(args.server_cpu + 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut broadcasts, mut notified, mut shared, mut storms) = (None, None, None, None);
    for &scenario in &args.scenarios {
        match scenario {
            Scenario::Broadcast => broadcasts = Some(runtime.block_on(broadcast_runs(&args))?),
            Scenario::Notify => notified = Some(runtime.block_on(notifications::runs(&args))?),
            Scenario::Redis => shared = Some(runtime.block_on(redis_mode::runs(&args))?),
            Scenario::Storm => storms = Some(runtime.block_on(storm::runs(&args))?),
        }
    }
    if let Some(runs) = broadcasts {
        report::print(&runs);
    }
    if let Some(runs) = notified {
        notifications::print(&runs);
    }
    if let Some(runs) = shared {
        redis_mode::print(&runs);
    }
    if let Some(runs) = storms {
        storm::print(&runs);
    }
    Ok(())
}

/// The broadcast scenario: every server of `--servers`, for every client
/// count, payload, reader and repetition.
async fn broadcast_runs(args: &Args) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for &clients in &args.clients {
        for &payload in &args.payloads {
            for &reader in &args.readers {
                for rep in 1..=args.repeat {
                    for &server in &args.servers {
                        let label = format!(
                            "{}: {clients} clients, {payload} B, {} reader",
                            server.name(),
                            reader.name()
                        );
                        let (run, attempts) = undisturbed(args, &label, || {
                            measure(args, server, reader, clients, payload)
                        })
                        .await?;
                        eprintln!("   {}", run.line());
                        runs.push(Run {
                            rep,
                            attempts,
                            ..run
                        });
                    }
                }
            }
        }
    }
    Ok(runs)
}

/// A measurement the rest of the machine may have disturbed.
pub trait Measured {
    /// The cores the rest of the machine kept busy meanwhile; `None`: keep
    /// the run whatever they were.
    fn others(&self) -> Option<f64>;
}

impl Measured for Run {
    fn others(&self) -> Option<f64> {
        self.attached.is_none().then(|| self.others_cores())
    }
}

/// Runs `measure`, in a `LocalSet` of its own (every client it spawned
/// ends with it), again while the rest of the machine kept more than
/// `--max-others` cores busy, at most `--attempts` times; answers the run
/// kept and the attempts it took.
pub async fn undisturbed<R: Measured, F: Future<Output = Result<R>>>(
    args: &Args,
    label: &str,
    measure: impl Fn() -> F,
) -> Result<(R, usize)> {
    let mut tries = 0;
    loop {
        tries += 1;
        eprintln!(
            "== {label}, attempt {tries}, load average {}",
            procs::loadavg()
        );
        let local = LocalSet::new();
        let run = local
            .run_until(measure())
            .await
            .with_context(|| format!("{label}: run"))?;
        drop(local);
        match run.others() {
            Some(others) if others > args.max_others && tries < args.attempts => {
                eprintln!(
                    "   discarded: the rest of the machine kept {others:.2} cores busy; again in 10 s"
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            _ => return Ok((run, tries)),
        }
    }
}

/// Runs `publish` with every delivery's arrival recorded, then waits until
/// `expected` deliveries were counted in all (or `limit` passed); answers
/// what `publish` did and the (client, arrival) of every delivery
/// meanwhile.
pub async fn recorded<T>(
    tally: &Tally,
    expected: u64,
    limit: Duration,
    publish: impl Future<Output = Result<T>>,
) -> Result<(T, Vec<(u32, u64)>)> {
    tally.arrivals.borrow_mut().clear();
    tally.recording.set(true);
    let done = publish.await;
    if done.is_ok() {
        wait_received(tally, expected, limit).await;
    }
    tally.recording.set(false);
    let arrivals = std::mem::take(&mut *tally.arrivals.borrow_mut());
    Ok((done?, arrivals))
}

async fn measure(
    args: &Args,
    server: Server,
    reader: Reader,
    n: usize,
    payload: usize,
) -> Result<Run> {
    let load = procs::loadavg();
    let proc = server.start(args).await?;
    let pid = proc.pid();
    let tally = Rc::new(Tally::new(n, args.verify));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc.rss_kib()?;
    let started = now_ns();
    clients::connect_all(
        Rc::new(server),
        &[proc.addr],
        n,
        args.connect_concurrency,
        reader,
        &tally,
    )
    .await?;
    let connect_s = (now_ns() - started) as f64 / 1e9;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_per_conn_kib = (proc.rss_kib()? as f64 - rss_before as f64) / n as f64;

    let mut publisher = Conn::connect(proc.addr).await?;
    let attached = match &args.attach {
        Some(cmd) if args.attach_to.contains(&server) => Some(attach(cmd, pid)?),
        _ => None,
    };
    let threads_before = procs::thread_cpu(pid);
    let mark = |procs: &Proc| CpuMark::take_exact(&[Some(procs.pid()), Some(0)]);

    // Single broadcasts, one at a time.
    let mut latencies = Vec::with_capacity(n * args.rounds);
    let mut round_p99s = Vec::with_capacity(args.rounds);
    let mut split = (server == Server::Floor).then(FloorSplit::default);
    let mut expected = 0u64;
    let before = mark(&proc);
    for seq in 0..args.rounds {
        let message = stamped('b', seq as u64, payload);
        let sent = scan::stamp(message.as_bytes()).map_or(now_ns(), |(_, _, sent)| sent);
        expected += n as u64;
        let publish = server.publish(&mut publisher, &message);
        let (reply, arrivals) =
            recorded(&tally, expected, Duration::from_secs(10), publish).await?;
        let mut round: Vec<u64> = arrivals
            .iter()
            .map(|&(_, at)| at.saturating_sub(sent))
            .collect();
        round_p99s.push(percentiles_ms(&mut round).1);
        latencies.extend(round);
        if let Some(split) = split.as_mut() {
            let writes = publisher.request("GET", "/writes", None).await?;
            split.add_round(sent, &reply.body, &writes.body, &arrivals);
        }
    }
    let rounds_cpu = mark(&proc).since(&before);
    let rounds_delivered = tally.received.get();
    let attached = attached.map(stop_attached).transpose()?;

    // The burst.
    let before = mark(&proc);
    let first_post = now_ns();
    for seq in 0..args.burst {
        let message = stamped('b', (args.rounds + seq) as u64, payload);
        server.publish(&mut publisher, &message).await?;
    }
    expected += (n * args.burst) as u64;
    wait_received(&tally, expected, Duration::from_secs(60)).await;
    let burst_cpu = mark(&proc).since(&before);
    let burst_delivered = tally.received.get() - rounds_delivered;
    let burst_s = tally.last_ns.get().saturating_sub(first_post) as f64 / 1e9;
    let threads = busy_threads(&threads_before, &procs::thread_cpu(pid));

    let (p50_ms, p99_ms, max_ms) = percentiles_ms(&mut latencies);
    let each = (args.rounds + args.burst) as u32;
    Ok(Run {
        server,
        reader,
        clients: n,
        payload,
        rep: 0,
        attempts: 1,
        load,
        connect_s,
        rss_per_conn_kib,
        p50_ms,
        p99_ms,
        max_ms,
        round_p99s,
        deliveries_per_s: burst_delivered as f64 / burst_s.max(1e-9),
        lost: expected.saturating_sub(tally.received.get()),
        short_clients: tally.short_clients(each),
        bad: tally.bad.get(),
        gaps: tally.gaps.get(),
        control: tally.control.get(),
        closed: tally.closed.get(),
        first_error: tally.first_error.borrow().clone(),
        rounds_delivered,
        rounds_cpu,
        burst_delivered,
        burst_cpu,
        threads,
        split,
        attached,
    })
}

/// Waits until `expected` deliveries were counted, or `limit` passed.
pub async fn wait_received(tally: &Tally, expected: u64, limit: Duration) {
    let deadline = now_ns() + limit.as_nanos() as u64;
    while tally.received.get() < expected && now_ns() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The server threads that used CPU between two readings: `name ×count
/// (seconds)`, busiest first.
pub fn busy_threads(before: &[(u64, String, f64)], after: &[(u64, String, f64)]) -> String {
    let mut by_name: Vec<(String, usize, f64)> = Vec::new();
    for (tid, name, cpu) in after {
        let earlier = before.iter().find(|t| t.0 == *tid).map_or(0.0, |t| t.2);
        let used = cpu - earlier;
        if used <= 0.0 {
            continue;
        }
        match by_name.iter_mut().find(|t| t.0 == *name) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += used;
            }
            None => by_name.push((name.clone(), 1, used)),
        }
    }
    by_name.sort_by(|a, b| b.2.total_cmp(&a.2));
    by_name
        .iter()
        .map(|(name, count, cpu)| format!("{name} ×{count} ({cpu:.2} s)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts `--attach`'s command for `pid`.
fn attach(cmd: &str, pid: u32) -> Result<Child> {
    let cmd = cmd
        .replace("{pid}", &pid.to_string())
        .replace("{gen}", &std::process::id().to_string());
    eprintln!("   attaching: {cmd}");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdin(Stdio::null())
        .spawn()
        .context("start the --attach command")?;
    // perf needs a moment before it samples.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// Stops an attached command with SIGINT; its exit status.
fn stop_attached(mut child: Child) -> Result<String> {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    let interrupted = status.code() == Some(130) || status.signal() == Some(libc::SIGINT);
    if !status.success() && !interrupted {
        bail!("the --attach command failed: {status}");
    }
    Ok(status.to_string())
}

/// The command line, the commit, the binaries' build times, the machine's
/// load at the start.
fn provenance(args: &Args) -> String {
    let built = |bin: &str| {
        provenance::built_unix_s(bin).map_or("missing".into(), |s| format!("built {s} (Unix s)"))
    };
    let bins: Vec<String> = args
        .servers
        .iter()
        .map(|s| {
            let bin = match s {
                Server::Floor => &args.floor_bin,
                Server::Wsnotify => &args.wsnotify_bin,
                Server::Axum => &args.axum_bin,
                Server::Sockudo => &args.sockudo_bin,
            };
            format!("{bin} {}", built(bin))
        })
        .collect();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "`fanout {}` — commit {}; {}; load average {}",
        argv.join(" "),
        provenance::commit(),
        bins.join("; "),
        procs::loadavg()
    )
}
