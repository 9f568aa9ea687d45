//! The Redis scenario (`--scenarios redis`): two instances of a server on
//! one Redis, half of the N clients on each (client `i` on instance `i mod
//! 2`), every broadcast posted to the first, A.
//!
//! A private `redis-server` (no persistence: `--save '' --appendonly no`)
//! runs pinned to the server core beside both instances, and is flushed
//! before each run.
//! - **wsnotify**: two instances with `REDIS_URL`, plain `/ws` clients,
//!   `POST /broadcast` to A.
//! - **sockudo** (when `--servers` names it): two instances with its Redis
//!   adapter (`ADAPTER_DRIVER=redis`, and `REDIS_URL`, which sockudo gives
//!   to the adapter's publisher and subscriber) and its cache on the same
//!   Redis (`CACHE_DRIVER=redis`: sockudo refuses to start clustered with
//!   a node-local cache while its Ably compatibility and idempotency are
//!   on, as they are by default), clients on the one public channel,
//!   signed `POST /apps/{id}/events` to A.
//!
//! Both instances must answer `GET /ready` before the clients connect.
//! Then, as in the broadcast scenario: `--rounds` single broadcasts, each
//! waited for by every client (**p50/p99** over all deliveries, and the
//! p99 of A's clients and of B's apart), and `--burst` broadcasts posted
//! back to back, each after the previous answer (**deliveries/s** =
//! deliveries ÷ the time from the first post to the last delivery), and
//! the **lost** count. The CPU of both instances, of Redis and of the
//! generator is read around both phases. The target is ≥ 2× sockudo's
//! deliveries/s.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{self, CpuMark, CpuUse, Redis};
use wsnotify_bench::stats::{median, percentiles_ms};

use crate::clients::{self, Reader, Tally};
use crate::report::{others_cores, ratio};
use crate::servers::Server;
use crate::{Args, Measured, recorded, undisturbed, wait_received};

/// One run of one server's pair.
#[derive(Debug, Clone)]
pub struct RedisRun {
    pub server: Server,
    pub clients: usize,
    pub payload: usize,
    pub rep: usize,
    pub attempts: usize,
    pub load: String,
    pub connect_s: f64,
    /// Single broadcasts: all deliveries, A's clients', B's clients'.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub p99_a_ms: f64,
    pub p99_b_ms: f64,
    pub deliveries_per_s: f64,
    pub burst_delivered: u64,
    pub lost: u64,
    pub short_clients: usize,
    pub closed: u64,
    pub first_error: Option<String>,
    /// CPU of [A, B, Redis, generator] during the single broadcasts and
    /// the burst.
    pub rounds_cpu: CpuUse,
    pub burst_cpu: CpuUse,
}

impl RedisRun {
    /// Server-side CPU (both instances and Redis) per delivery in the
    /// burst, µs.
    fn server_us(&self) -> f64 {
        let procs = &self.burst_cpu.procs;
        (procs[0] + procs[1] + procs[2]) * 1e6 / self.burst_delivered.max(1) as f64
    }

    fn cpu_split(&self) -> String {
        let p = &self.burst_cpu.procs;
        format!("{:.2} / {:.2} / {:.2} / {:.2}", p[0], p[1], p[2], p[3])
    }

    fn line(&self) -> String {
        format!(
            "connect {:.2} s, p50/p99/max {:.1}/{:.1}/{:.1} ms (p99 A {:.1}, B {:.1}), {:.0} deliveries/s, lost {} ({} clients short, {} closed{}), burst CPU A/B/redis/generator {} s, server {:.2} µs per delivery, others {:.2} cores",
            self.connect_s,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.p99_a_ms,
            self.p99_b_ms,
            self.deliveries_per_s,
            self.lost,
            self.short_clients,
            self.closed,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}")),
            self.cpu_split(),
            self.server_us(),
            self.others_cores(),
        )
    }

    fn others_cores(&self) -> f64 {
        others_cores(&self.rounds_cpu).max(others_cores(&self.burst_cpu))
    }
}

impl Measured for RedisRun {
    fn others(&self) -> Option<f64> {
        Some(self.others_cores())
    }
}

/// Every run of the scenario: wsnotify's pair, and sockudo's when
/// `--servers` names it, for every client count, payload and repetition,
/// on one private Redis.
pub async fn runs(args: &Args) -> Result<Vec<RedisRun>> {
    let redis = Redis::start(&args.redis_bin, args.server_cpu)
        .await
        .context("start redis-server (Debian: apt-get install redis-server)")?;
    let mut servers = vec![Server::Wsnotify];
    if args.servers.contains(&Server::Sockudo) {
        servers.push(Server::Sockudo);
    }
    let mut runs = Vec::new();
    for &clients in &args.clients {
        for &payload in &args.payloads {
            for rep in 1..=args.repeat {
                for &server in &servers {
                    let label = format!(
                        "redis, {}: two instances, {clients} clients, {payload} B",
                        server.name()
                    );
                    let (run, attempts) = undisturbed(args, &label, || {
                        measure(args, &redis, server, clients, payload)
                    })
                    .await?;
                    eprintln!("   {}", run.line());
                    runs.push(RedisRun {
                        rep,
                        attempts,
                        ..run
                    });
                }
            }
        }
    }
    Ok(runs)
}

/// The environment that puts an instance on `redis`.
fn on_redis(server: Server, redis: &Redis) -> Vec<(String, String)> {
    let url = ("REDIS_URL".to_owned(), redis.url());
    match server {
        Server::Sockudo => vec![
            ("ADAPTER_DRIVER".into(), "redis".into()),
            ("CACHE_DRIVER".into(), "redis".into()),
            url,
        ],
        _ => vec![url],
    }
}

async fn measure(
    args: &Args,
    redis: &Redis,
    server: Server,
    n: usize,
    payload: usize,
) -> Result<RedisRun> {
    let load = procs::loadavg();
    redis.flush().await?;
    let envs = on_redis(server, redis);
    let a = server.start_with(args, &envs).await?;
    let b = server.start_with(args, &envs).await?;
    a.wait_ready().await?;
    b.wait_ready().await?;
    let tally = Rc::new(Tally::new(n, false));
    let started = now_ns();
    clients::connect_all(
        Rc::new(server),
        &[a.addr, b.addr],
        n,
        args.connect_concurrency,
        Reader::Lean,
        &tally,
    )
    .await?;
    let connect_s = (now_ns() - started) as f64 / 1e9;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut publisher = Conn::connect(a.addr).await?;
    let pids = [
        Some(a.pid()),
        Some(b.pid()),
        Some(redis.proc.pid()),
        Some(0),
    ];
    let mark = || CpuMark::take_exact(&pids);

    // Single broadcasts, one at a time.
    let mut all = Vec::with_capacity(n * args.rounds);
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    let mut expected = 0u64;
    let before = mark();
    for seq in 0..args.rounds {
        let message = stamped('b', seq as u64, payload);
        let sent = now_ns();
        expected += n as u64;
        let publish = server.publish(&mut publisher, &message);
        let (_, arrivals) = recorded(&tally, expected, Duration::from_secs(10), publish).await?;
        for (client, at) in arrivals {
            let latency = at.saturating_sub(sent);
            all.push(latency);
            if client % 2 == 0 {
                on_a.push(latency);
            } else {
                on_b.push(latency);
            }
        }
    }
    let rounds_cpu = mark().since(&before);
    let rounds_delivered = tally.received.get();

    // The burst.
    let before = mark();
    let first_post = now_ns();
    for seq in 0..args.burst {
        let message = stamped('b', (args.rounds + seq) as u64, payload);
        server.publish(&mut publisher, &message).await?;
    }
    expected += (n * args.burst) as u64;
    wait_received(&tally, expected, Duration::from_secs(60)).await;
    let burst_cpu = mark().since(&before);
    let burst_delivered = tally.received.get() - rounds_delivered;
    let burst_s = tally.last_ns.get().saturating_sub(first_post) as f64 / 1e9;

    let (p50_ms, p99_ms, max_ms) = percentiles_ms(&mut all);
    Ok(RedisRun {
        server,
        clients: n,
        payload,
        rep: 0,
        attempts: 1,
        load,
        connect_s,
        p50_ms,
        p99_ms,
        max_ms,
        p99_a_ms: percentiles_ms(&mut on_a).1,
        p99_b_ms: percentiles_ms(&mut on_b).1,
        deliveries_per_s: burst_delivered as f64 / burst_s.max(1e-9),
        burst_delivered,
        lost: expected.saturating_sub(tally.received.get()),
        short_clients: tally.short_clients((args.rounds + args.burst) as u32),
        closed: tally.closed.get(),
        first_error: tally.first_error.borrow().clone(),
        rounds_cpu,
        burst_cpu,
    })
}

/// Prints every run, then the medians with their ratios.
pub fn print(runs: &[RedisRun]) {
    println!("\n### Redis mode, two instances: every run\n");
    println!(
        "| clients (both instances) | payload | server | rep | tries | load (1/5/15 min) | connect (s) | p50 (ms) | p99 (ms) | max (ms) | p99 on A / on B (ms) | deliveries/s | lost | burst CPU A / B / Redis / generator (s) | server+Redis µs/delivery (burst) | rest of machine (cores) |"
    );
    println!("|{}", "---|".repeat(16));
    for r in runs {
        println!(
            "| {} | {} B | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} | {} | {} | {:.2} | {:.2} |",
            r.clients,
            r.payload,
            r.server.name(),
            r.rep,
            r.attempts,
            r.load,
            r.connect_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.p99_a_ms,
            r.p99_b_ms,
            r.deliveries_per_s,
            r.lost,
            r.cpu_split(),
            r.server_us(),
            r.others_cores(),
        );
    }

    let mut cells: BTreeMap<(usize, usize), BTreeMap<Server, Vec<&RedisRun>>> = BTreeMap::new();
    for r in runs {
        cells
            .entry((r.clients, r.payload))
            .or_default()
            .entry(r.server)
            .or_default()
            .push(r);
    }
    let med = |runs: &[&RedisRun], f: fn(&RedisRun) -> f64| {
        median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    println!(
        "\n### Redis mode, two instances: medians over repetitions, and ratios (same invocation)\n"
    );
    println!("Target: wsnotify's deliveries/s ≥ 2× sockudo-on-Redis'.\n");
    println!(
        "| clients (both instances) | payload | server | runs | p50 (ms) | p99 (ms) | p99 ÷ wsnotify's | p99 on A / on B (ms) | deliveries/s | wsnotify's ÷ this | lost | server+Redis µs/delivery (burst) |"
    );
    println!("|{}", "---|".repeat(12));
    for ((clients, payload), by_server) in &cells {
        let of = |s: Server, f: fn(&RedisRun) -> f64| {
            by_server.get(&s).map_or(f64::NAN, |rs| med(rs, f))
        };
        let own_rate = of(Server::Wsnotify, |r| r.deliveries_per_s);
        let own_p99 = of(Server::Wsnotify, |r| r.p99_ms);
        for (server, rs) in by_server {
            let p99 = med(rs, |r| r.p99_ms);
            let rate = med(rs, |r| r.deliveries_per_s);
            println!(
                "| {clients} | {payload} B | {} | {} | {:.1} | {p99:.1} | {} | {:.1} / {:.1} | {rate:.0} | {} | {} | {:.2} |",
                server.name(),
                rs.len(),
                med(rs, |r| r.p50_ms),
                ratio(p99, own_p99),
                med(rs, |r| r.p99_a_ms),
                med(rs, |r| r.p99_b_ms),
                ratio(own_rate, rate),
                rs.iter().map(|r| r.lost).sum::<u64>(),
                med(rs, |r| r.server_us()),
            );
        }
    }
}
