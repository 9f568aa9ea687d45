//! `reliable cluster`: per-user notifications across instances on one
//! Redis (`REDIS_URL`) against a 3-primary Redis Cluster
//! (`REDIS_CLUSTER_URLS`), with the Pub/Sub load of each Redis node
//! (issue 14).
//!
//! Both brokers are started once: a private `redis-server`, and six
//! `redis-server --cluster-enabled yes` joined by `redis-cli --cluster
//! create … --cluster-replicas 1` (see [`wsnotify_bench::redis_cluster`]).
//! Each run (one per `--modes` entry, back to back, the broker flushed in
//! between) starts `--instances` wsnotify instances on the broker (history
//! on: a notification is appended by a script that `PUBLISH`es it, or
//! `SPUBLISH`es it on a cluster, on its stream's channel), and connects
//! `--clients` JSON clients (`/ws/notifications?user=uK`) over `--users`
//! users: connection c is user c mod users, its copy k = c div users on
//! instance (user + k) mod instances, so a user's two connections sit on
//! two different instances and every notification crosses the broker.
//! Notification s goes to a pseudo-random user (a hash of s), as `POST
//! /notify/{user}` with a payload carrying s and its send time; each of
//! `--publishers` keep-alive publishers holds a connection to every
//! instance and posts its requests to them round-robin. Two phases:
//!
//! 1. **paced**: `--rate` notifications/s for `--paced-secs` (p50/p99 of
//!    publish → frame at a load both brokers carry);
//! 2. **burst**: `--notifications` notifications, each publisher posting
//!    the next one as soon as the last is answered: notifications/s =
//!    notifications ÷ time from the first POST to the last delivery; a
//!    notification is delivered when every connection of its user read it.
//!
//! Every client checks that its stream's offsets follow one another (gaps)
//! and the deliveries are counted per notification (lost, duplicates).
//! Around the burst each Redis node's `INFO commandstats` and `INFO stats`
//! are read (`SPUBLISH`, `PUBLISH`, `EVALSHA` calls, commands processed,
//! shard channels) with its CPU time (`/proc/PID/task/*/schedstat`): on
//! this 2-core machine the cluster cannot show its scaling, but the share
//! each primary takes shows how the load spreads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::OpCode;
use tokio::task::JoinSet;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{CpuMark, Proc};
use wsnotify_bench::redis_cluster::{RedisCluster, calls, info, query};
use wsnotify_bench::scan;
use wsnotify_bench::stats::{median, percentiles_ms, ratio};
use wsnotify_bench::ws;

use crate::shared::{Common, connect_many, wait_for};

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket clients, over all instances.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Users the clients belong to (clients ÷ users connections each).
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    /// wsnotify instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Brokers, run back to back in this order (comma list).
    #[arg(
        long,
        value_enum,
        default_value = "redis,cluster",
        value_delimiter = ','
    )]
    modes: Vec<Broker>,
    /// Notifications of the burst.
    #[arg(long, default_value_t = 30_000)]
    notifications: usize,
    /// Publishing connections (each with a connection to every instance).
    #[arg(long, default_value_t = 6)]
    publishers: usize,
    /// Notifications/s of the paced phase (0: none).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Seconds of the paced phase.
    #[arg(long, default_value_t = 5.0)]
    paced_secs: f64,
    /// Payload bytes of each notification.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// `HISTORY_SIZE` of the instances (0: notifications go through the
    /// seeds' classic `notifications:{user}` channel instead of a stream's).
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// Repetitions of the set of modes (interleaved).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, default_value = "redis-cli")]
    redis_cli_bin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Broker {
    /// One `redis-server`, `REDIS_URL`.
    Redis,
    /// Three primaries and three replicas, `REDIS_CLUSTER_URLS`.
    Cluster,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "one Redis",
            Broker::Cluster => "Redis Cluster, 3 primaries",
        }
    }
}

/// What the clients record, per notification and in total.
struct Tally {
    /// Per notification: deliveries expected (its user's connections),
    /// deliveries read, and when the last one was.
    expected: Vec<u32>,
    received: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
    /// Publish → frame, per phase (paced, burst).
    latencies_ns: [Mutex<Vec<u64>>; 2],
    paced: usize,
    /// Notifications every connection of the user read, per phase.
    complete: [AtomicU64; 2],
    gaps: AtomicU64,
    duplicates: AtomicU64,
}

/// One Redis node's counters at one instant.
#[derive(Debug, Clone, Default)]
struct NodeStats {
    spublish: u64,
    publish: u64,
    scripts: u64,
    commands: u64,
    shard_channels: u64,
    channels: u64,
    cpu_s: f64,
}

/// One node's load during the burst.
#[derive(Debug, Clone)]
struct NodeLoad {
    port: u16,
    role: &'static str,
    slots: String,
    delta: NodeStats,
}

/// One run's figures.
#[derive(Debug, Default)]
struct Report {
    paced_sent: usize,
    /// Notifications/s the paced phase achieved.
    paced_rate: f64,
    paced: (f64, f64, f64),
    burst: (f64, f64, f64),
    notifications_per_s: f64,
    deliveries_per_s: f64,
    burst_wall_s: f64,
    /// Burst notifications every connection of the user read.
    complete: usize,
    lost: u64,
    duplicates: u64,
    gaps: u64,
    publish_failed: u64,
    servers_cpu_s: f64,
    redis_cpu_s: f64,
    generator_cpu_s: f64,
    others_cpu_s: f64,
    nodes: Vec<NodeLoad>,
}

pub fn run(common: &Common, args: &Args) -> Result<()> {
    if args.users == 0 || args.clients < args.users || args.instances == 0 {
        bail!("need users ≥ 1, clients ≥ users and instances ≥ 1");
    }
    let mut reports = Vec::new();
    common.on_generator(async {
        let redis = match args.modes.contains(&Broker::Redis) {
            true => Some(common.redis().await?),
            false => None,
        };
        let cluster = match args.modes.contains(&Broker::Cluster) {
            true => {
                let cluster =
                    RedisCluster::start(&common.redis_bin, &args.redis_cli_bin, common.server_cpu)
                        .await
                        .context("start a Redis Cluster")?;
                eprintln!("   Redis Cluster: {}", cluster.seeds());
                Some(cluster)
            }
            false => None,
        };
        for rep in 0..args.repeat {
            for &mode in &args.modes {
                eprintln!(
                    "== cluster, {}, {} clients / {} users on {} instances, repetition {}",
                    mode.name(),
                    args.clients,
                    args.users,
                    args.instances,
                    rep + 1
                );
                let report = match mode {
                    Broker::Redis => {
                        let redis = redis.as_ref().context("no Redis")?;
                        redis.flush().await?;
                        let nodes = [(&redis.proc, "single", String::from("all"))];
                        run_one(common, args, ("REDIS_URL", redis.url()), &nodes).await?
                    }
                    Broker::Cluster => {
                        let cluster = cluster.as_ref().context("no cluster")?;
                        cluster.flush().await?;
                        let slots = cluster.slots().await?;
                        let nodes: Vec<(&Proc, &str, String)> = cluster
                            .primaries()
                            .map(|n| {
                                let s = slots.get(&n.port()).cloned().unwrap_or_default();
                                (&n.proc, "primary", s)
                            })
                            .chain(
                                cluster
                                    .replicas()
                                    .map(|n| (&n.proc, "replica", String::new())),
                            )
                            .collect();
                        let seeds = ("REDIS_CLUSTER_URLS", cluster.seeds());
                        run_one(common, args, seeds, &nodes).await?
                    }
                };
                eprintln!("   {report:?}");
                reports.push((mode, report));
            }
        }
        anyhow::Ok(())
    })??;
    print_results(args, &reports);
    Ok(())
}

/// The user of notification `seq` (splitmix64 of it).
fn user_of(seq: u64, users: usize) -> usize {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % users as u64) as usize
}

async fn run_one(
    common: &Common,
    args: &Args,
    broker: (&'static str, String),
    nodes: &[(&Proc, &'static str, String)],
) -> Result<Report> {
    let envs = [broker, ("HISTORY_SIZE", args.history.to_string())];
    let mut servers = Vec::new();
    for k in 0..args.instances {
        servers.push(common.server(&format!("W{}", k + 1), &envs).await?);
    }
    for server in &servers {
        server.wait_ready().await?;
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();

    let paced = (args.rate as f64 * args.paced_secs) as usize;
    let total = paced + args.notifications;
    let (users, instances) = (args.users, args.instances);
    let expected = |seq: u64| {
        let user = user_of(seq, users);
        (args.clients / users + usize::from(user < args.clients % users)) as u32
    };
    let tally = Arc::new(Tally {
        expected: (0..total as u64).map(expected).collect(),
        received: (0..total).map(|_| AtomicU32::new(0)).collect(),
        last_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        latencies_ns: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        paced,
        complete: [AtomicU64::new(0), AtomicU64::new(0)],
        gaps: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
    });
    let started = Instant::now();
    let history = args.history > 0;
    let readers = connect_many(args.clients, common.connect_concurrency, |c| {
        let (tally, addrs) = (tally.clone(), addrs.clone());
        async move {
            let user = c % users;
            let addr = addrs[(user + c / users) % instances];
            let mut client = ws::connect(addr, &format!("/ws/notifications?user=u{user}")).await?;
            let offset = if history {
                opening(&mut client).await?
            } else {
                0
            };
            anyhow::Ok(tokio::spawn(read_loop(
                client,
                tally,
                history.then_some(offset),
            )))
        }
    })
    .await?;
    eprintln!(
        "   {} clients connected in {:.1} s",
        args.clients,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut report = Report::default();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..args.publishers.max(1) {
        let mut conns = Vec::new();
        for &addr in &addrs {
            conns.push(Conn::connect(addr).await?);
        }
        publishers.push(conns);
    }
    if paced > 0 {
        let each = Duration::from_secs_f64(args.publishers.max(1) as f64 / args.rate as f64);
        let paced_start = Instant::now();
        publishers = publish(publishers, &next, paced as u64, Some(each), args, &failed).await?;
        report.paced_rate = paced as f64 / paced_start.elapsed().as_secs_f64();
        let tally = &tally;
        wait_for(Duration::from_secs(15), || {
            tally.complete[0].load(Ordering::Relaxed) >= paced as u64
        })
        .await;
        report.paced_sent = next.load(Ordering::Relaxed) as usize;
    }

    let before: Vec<NodeStats> = read_all(nodes).await?;
    let pids: Vec<Option<u32>> = servers
        .iter()
        .map(|s| Some(s.pid()))
        .chain(nodes.iter().map(|n| Some(n.0.pid())))
        .chain([Some(0)])
        .collect();
    let cpu_before = CpuMark::take_exact(&pids);
    let first_post = now_ns();
    publish(publishers, &next, total as u64, None, args, &failed).await?;
    let burst = paced as u64..total as u64;
    {
        let tally = &tally;
        wait_for(Duration::from_secs(30), || {
            tally.complete[1].load(Ordering::Relaxed) >= args.notifications as u64
        })
        .await;
    }
    let cpu_after = CpuMark::take_exact(&pids);
    let after = read_all(nodes).await?;

    let last = burst
        .clone()
        .map(|s| tally.last_ns[s as usize].load(Ordering::Relaxed))
        .max()
        .unwrap_or(first_post);
    report.burst_wall_s = last.saturating_sub(first_post) as f64 / 1e9;
    let mut delivered = 0u64;
    for s in burst.clone() {
        let got = tally.received[s as usize].load(Ordering::Relaxed);
        delivered += u64::from(got.min(tally.expected[s as usize]));
        report.lost += u64::from(tally.expected[s as usize].saturating_sub(got));
        report.complete += usize::from(got >= tally.expected[s as usize]);
    }
    for s in 0..paced as u64 {
        report.lost += u64::from(
            tally.expected[s as usize]
                .saturating_sub(tally.received[s as usize].load(Ordering::Relaxed)),
        );
    }
    report.notifications_per_s = report.complete as f64 / report.burst_wall_s.max(1e-9);
    report.deliveries_per_s = delivered as f64 / report.burst_wall_s.max(1e-9);
    report.paced = percentiles_ms(&mut tally.latencies_ns[0].lock().unwrap());
    report.burst = percentiles_ms(&mut tally.latencies_ns[1].lock().unwrap());
    report.gaps = tally.gaps.load(Ordering::Relaxed);
    report.duplicates = tally.duplicates.load(Ordering::Relaxed);
    report.publish_failed = failed.load(Ordering::Relaxed);
    let used = cpu_after.since(&cpu_before);
    let k = servers.len();
    report.servers_cpu_s = used.procs[..k].iter().sum();
    report.redis_cpu_s = used.procs[k..k + nodes.len()].iter().sum();
    report.generator_cpu_s = used.procs[k + nodes.len()];
    report.others_cpu_s = used.others_s();
    report.nodes = nodes
        .iter()
        .zip(before.iter().zip(&after))
        .enumerate()
        .map(|(j, ((proc, role, slots), (b, a)))| NodeLoad {
            port: proc.addr.port(),
            role,
            slots: slots.clone(),
            delta: NodeStats {
                spublish: a.spublish - b.spublish,
                publish: a.publish - b.publish,
                scripts: a.scripts - b.scripts,
                commands: a.commands - b.commands,
                shard_channels: a.shard_channels,
                channels: a.channels,
                cpu_s: used.procs[k + j],
            },
        })
        .collect();
    for reader in readers {
        reader.abort();
    }
    drop(servers);
    Ok(report)
}

/// Posts notifications `next..until` (numbers taken from `next`) from
/// every publisher at once, each to its instances in turn; paced at one
/// per `each` per publisher, or back to back. Answers the publishers.
async fn publish(
    publishers: Vec<Vec<Conn>>,
    next: &Arc<AtomicU64>,
    until: u64,
    each: Option<Duration>,
    args: &Args,
    failed: &Arc<AtomicU64>,
) -> Result<Vec<Vec<Conn>>> {
    let mut tasks = JoinSet::new();
    for (p, mut conns) in publishers.into_iter().enumerate() {
        let (next, failed) = (next.clone(), failed.clone());
        let (users, payload) = (args.users, args.payload);
        tasks.spawn(async move {
            let mut ticker = each.map(|d| {
                let mut t = tokio::time::interval(d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut turn = p;
            loop {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= until {
                    next.fetch_min(until, Ordering::Relaxed);
                    break;
                }
                turn = (turn + 1) % conns.len();
                let user = format!("u{}", user_of(seq, users));
                if let Err(err) = conns[turn].notify(&user, &stamped('n', seq, payload)).await {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("   publish {seq} failed: {err:#}");
                    }
                    conns[turn] = Conn::connect(conns[turn].addr()).await?;
                }
            }
            anyhow::Ok((p, conns))
        });
    }
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        back.push(done??);
    }
    back.sort_by_key(|(p, _)| *p);
    Ok(back.into_iter().map(|(_, conns)| conns).collect())
}

/// Reads a client's two `stream.position` frames; answers its user
/// stream's offset.
async fn opening(client: &mut ws::Client) -> Result<u64> {
    let mut user_offset = None;
    let mut seen = 0;
    while seen < 2 {
        let frame = ws::read_frame(&mut client.reader).await?;
        match frame.opcode {
            OpCode::Text if scan::is_type(&frame.payload, b"stream.position") => {
                seen += 1;
                if scan::str_field(&frame.payload, b"stream") != Some(b"broadcast") {
                    user_offset = scan::last_u64_field(&frame.payload, b"offset");
                }
            }
            OpCode::Close => bail!("closed before its positions"),
            _ => {}
        }
    }
    user_offset.context("no position of the user stream")
}

/// A client's deliveries: offsets must follow, each stamp is counted.
/// `offset`: the stream's position (history on), else no offset checks.
async fn read_loop(mut client: ws::Client, tally: Arc<Tally>, mut offset: Option<u64>) {
    while let Ok(frame) = ws::read_frame(&mut client.reader).await {
        if frame.opcode != OpCode::Text || !scan::is_type(&frame.payload, b"notification") {
            continue;
        }
        let now = now_ns();
        if let Some(last) = offset.as_mut()
            && let Some(at) = scan::last_u64_field(&frame.payload, b"offset")
        {
            if at <= *last {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if at != *last + 1 {
                tally.gaps.fetch_add(1, Ordering::Relaxed);
            }
            *last = at;
        }
        let Some((b'n', seq, sent)) = scan::stamp(&frame.payload) else {
            continue;
        };
        let Some(received) = tally.received.get(seq as usize) else {
            continue;
        };
        let phase = usize::from(seq as usize >= tally.paced);
        let got = received.fetch_add(1, Ordering::Relaxed) + 1;
        if got == tally.expected[seq as usize] {
            tally.complete[phase].fetch_add(1, Ordering::Relaxed);
        } else if got > tally.expected[seq as usize] {
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        tally.last_ns[seq as usize].fetch_max(now, Ordering::Relaxed);
        tally.latencies_ns[phase]
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
    }
}

/// Every node's counters now.
async fn read_all(nodes: &[(&Proc, &str, String)]) -> Result<Vec<NodeStats>> {
    let mut out = Vec::new();
    for (proc, _, _) in nodes {
        let commands = info(&query(proc.addr, &["INFO", "commandstats"]).await?);
        let stats = info(&query(proc.addr, &["INFO", "stats"]).await?);
        let number = |name: &str| stats.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.push(NodeStats {
            spublish: calls(&commands, "spublish"),
            publish: calls(&commands, "publish"),
            scripts: calls(&commands, "evalsha") + calls(&commands, "eval"),
            commands: number("total_commands_processed"),
            shard_channels: number("pubsubshard_channels"),
            channels: number("pubsub_channels"),
            cpu_s: wsnotify_bench::procs::run_time_s(proc.pid()),
        });
    }
    Ok(out)
}

fn print_results(args: &Args, reports: &[(Broker, Report)]) {
    println!();
    println!(
        "### Cross-instance notifications: {} JSON clients of {} users on {} instances (each user's connections on different instances), `POST /notify/{{user}}` round-robin over the instances by {} publishers, HISTORY_SIZE={}, {} B",
        args.clients, args.users, args.instances, args.publishers, args.history, args.payload
    );
    println!();
    println!(
        "| broker | paced at {}/s: sent (achieved/s), p50 / p99 / max (ms) | **burst: notifications/s** delivered ({} notifications) | deliveries/s | burst p50 / **p99** / max (ms) | complete | lost | duplicates | gaps | publish failures | CPU s in the burst: instances / Redis nodes / generator / rest of the machine (burst s) |",
        args.rate, args.notifications
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, r) in reports {
        println!(
            "| {} | {} ({:.0}), {:.1} / {:.1} / {:.1} | **{:.0}** | {:.0} | {:.1} / **{:.1}** / {:.1} | {} / {} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} ({:.2}) |",
            mode.name(),
            r.paced_sent,
            r.paced_rate,
            r.paced.0,
            r.paced.1,
            r.paced.2,
            r.notifications_per_s,
            r.deliveries_per_s,
            r.burst.0,
            r.burst.1,
            r.burst.2,
            r.complete,
            args.notifications,
            r.lost,
            r.duplicates,
            r.gaps,
            r.publish_failed,
            r.servers_cpu_s,
            r.redis_cpu_s,
            r.generator_cpu_s,
            r.others_cpu_s,
            r.burst_wall_s,
        );
    }
    println!();
    println!("Per Redis node during the burst (deltas; channels as at the end):");
    println!();
    println!(
        "| run | broker | node | role | slots | SPUBLISH | PUBLISH | scripts (EVALSHA) | commands | share of the primaries' commands | commands/s | shard channels / channels | CPU s (% of one core) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, (mode, r)) in reports.iter().enumerate() {
        let primaries: u64 = r
            .nodes
            .iter()
            .filter(|n| n.role != "replica")
            .map(|n| n.delta.commands)
            .sum();
        for n in &r.nodes {
            let d = &n.delta;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} / {} | {:.2} ({:.0} %) |",
                run + 1,
                mode.name(),
                n.port,
                n.role,
                if n.slots.is_empty() { "-" } else { &n.slots },
                d.spublish,
                d.publish,
                d.scripts,
                d.commands,
                if n.role == "replica" {
                    "-".to_owned()
                } else {
                    format!(
                        "{:.1} %",
                        d.commands as f64 * 100.0 / primaries.max(1) as f64
                    )
                },
                d.commands as f64 / r.burst_wall_s.max(1e-9),
                d.shard_channels,
                d.channels,
                d.cpu_s,
                d.cpu_s * 100.0 / r.burst_wall_s.max(1e-9),
            );
        }
    }
    // Cluster against one Redis, within each repetition.
    let set = args.modes.len();
    let (Some(one), Some(many)) = (
        args.modes.iter().position(|m| *m == Broker::Redis),
        args.modes.iter().position(|m| *m == Broker::Cluster),
    ) else {
        return;
    };
    let sets: Vec<&[(Broker, Report)]> = reports.chunks(set).filter(|c| c.len() == set).collect();
    let per = |f: fn(&Report) -> f64| -> Vec<String> {
        sets.iter()
            .map(|c| ratio(f(&c[many].1), f(&c[one].1)))
            .collect()
    };
    let med = |f: fn(&Report) -> f64, j: usize| {
        median(&sets.iter().map(|c| f(&c[j].1)).collect::<Vec<_>>())
    };
    // The busiest primary's share of the primaries' commands (1/3 = even).
    let busiest = |r: &Report| {
        let primaries: Vec<u64> = r
            .nodes
            .iter()
            .filter(|n| n.role == "primary")
            .map(|n| n.delta.commands)
            .collect();
        *primaries.iter().max().unwrap_or(&0) as f64 / primaries.iter().sum::<u64>().max(1) as f64
    };
    println!();
    println!(
        "Medians over {} repetitions, cluster against one Redis: burst notifications/s {:.0} against {:.0} ({}), burst p99 {:.1} against {:.1} ms ({}), paced p99 {:.1} against {:.1} ms ({}); Redis CPU in the burst {:.2} against {:.2} s; the busiest primary took {:.1} % of the primaries' commands. Per repetition: notifications/s {}; burst p99 {}; paced p99 {}.",
        sets.len(),
        med(|r| r.notifications_per_s, many),
        med(|r| r.notifications_per_s, one),
        ratio(
            med(|r| r.notifications_per_s, many),
            med(|r| r.notifications_per_s, one)
        ),
        med(|r| r.burst.1, many),
        med(|r| r.burst.1, one),
        ratio(med(|r| r.burst.1, many), med(|r| r.burst.1, one)),
        med(|r| r.paced.1, many),
        med(|r| r.paced.1, one),
        ratio(med(|r| r.paced.1, many), med(|r| r.paced.1, one)),
        med(|r| r.redis_cpu_s, many),
        med(|r| r.redis_cpu_s, one),
        median(
            &sets
                .iter()
                .map(|c| busiest(&c[many].1) * 100.0)
                .collect::<Vec<_>>()
        ),
        per(|r| r.notifications_per_s).join(", "),
        per(|r| r.burst.1).join(", "),
        per(|r| r.paced.1).join(", "),
    );
}
