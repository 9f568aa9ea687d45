//! The per-user notification scenario (`--scenarios notify`), seed 004's
//! workload: N clients, each its own user on a channel of its own, and one
//! notification to each of them in a burst.
//!
//! - **wsnotify**: client `i` connects to `/ws/u{i}`, the plain protocol,
//!   where the client id is the user, so `POST /notify/u{i}` reaches it
//!   verbatim (docs/PROTOCOL.md, WebSocket endpoints); one request per
//!   notification.
//! - **sockudo** (when `--servers` names it): client `i` subscribes to
//!   `private-user-{i}` with the `auth` an app's auth endpoint would sign
//!   (`key:hex(HMAC-SHA256(secret, "socket_id:channel"))`, the socket id
//!   from its `connection_established`); notifications are signed `POST
//!   /apps/{id}/events` with `--sockudo-batch` channels each: 1 is
//!   wsnotify's workload, one request per notification; up to 100
//!   (sockudo's limit) batches them, every channel of an event getting the
//!   same data. Each batch size is a run of its own.
//!
//! A burst spreads its requests over `--publishers` keep-alive connections
//! (request `r` on connection `r mod P`), each keeping up to `--pipeline`
//! requests in flight (HTTP/1.1 pipelining, written in batches of half as
//! many, one write each). sockudo closes the connection after every API
//! answer, which rules out both keep-alive and pipelining: it gets the
//! same number of requests in flight as P × `--pipeline` publishers, each
//! sending one request at a time on a new connection (its send time is
//! taken before that connection is opened: a backend publishing to
//! sockudo pays for it too). A notification's send time is when its request was
//! written, its arrival when its client read it; a client gets exactly one
//! notification per burst, so no payload is read. **notifications/s** = N ×
//! bursts ÷ the bursts' time from the first request written to the last
//! notification read; **p50/p99** are over every notification of every
//! burst. The publishers share the generator's core with the clients.
//!
//! The baseline is wsnotify's own broadcast at the same size, in the same
//! process and to the same clients: `--rounds` single `POST /broadcast`s,
//! interleaved with the `--notify-rounds` bursts, each waited for by every
//! client (as in the broadcast scenario). The target is a burst's p99 ≤
//! 1.2× that broadcast's p99, and ≥ 3× sockudo's notifications/s.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::future::try_join_all;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{self, CpuMark, CpuUse};
use wsnotify_bench::pusher;
use wsnotify_bench::stats::{median, percentiles_ms};

use crate::clients::{self, Opening, Reader, Step, Tally};
use crate::report::{accumulate, others_cores, ratio};
use crate::servers::{Server, pusher_step, sockudo_app};
use crate::{Args, Measured, recorded, undisturbed};

/// Longest wait for one burst's (or broadcast's) last delivery.
const BURST_LIMIT: Duration = Duration::from_secs(30);

/// wsnotify's client `i`: user `u{i}` on the plain protocol, ready at its
/// greeting.
struct WsnotifyUsers;

impl Opening for WsnotifyUsers {
    fn path(&self, i: usize) -> String {
        format!("/ws/{}", user(i))
    }

    fn on_text(&self, _: usize, _: &[u8]) -> Step {
        Step::Ready
    }
}

/// sockudo's client `i`: subscribed to `private-user-{i}`.
struct SockudoUsers {
    app: pusher::App,
}

impl Opening for SockudoUsers {
    fn path(&self, _: usize) -> String {
        self.app.ws_path()
    }

    fn on_text(&self, i: usize, payload: &[u8]) -> Step {
        pusher_step(i, payload, || {
            let channel = private_channel(i);
            let socket_id = pusher::socket_id(payload).unwrap_or_default();
            pusher::subscribe_private(&channel, &self.app.channel_auth(socket_id, &channel))
        })
    }
}

fn user(i: usize) -> String {
    format!("u{i}")
}

fn private_channel(i: usize) -> String {
    format!("private-user-{i}")
}

/// One run: one server, one batch size.
#[derive(Debug, Clone)]
pub struct NotifyRun {
    pub server: Server,
    /// Channels per sockudo event (1 for wsnotify).
    pub batch: usize,
    pub clients: usize,
    pub payload: usize,
    pub rep: usize,
    pub attempts: usize,
    pub load: String,
    pub connect_s: f64,
    /// The bursts: N × bursts, and their time from the first request
    /// written to the last notification read.
    pub notified: u64,
    pub bursts_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Per burst, from its first request written: its last answer, its
    /// last notification read (ms).
    pub answered_ms: Vec<f64>,
    pub delivered_ms: Vec<f64>,
    /// wsnotify's single broadcasts to the same clients.
    pub broadcast: Option<Broadcasts>,
    pub lost: u64,
    pub closed: u64,
    pub first_error: Option<String>,
    /// CPU of [server, generator] during the bursts.
    pub cpu: CpuUse,
}

/// The baseline: single broadcasts to the run's clients.
#[derive(Debug, Clone)]
pub struct Broadcasts {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Deliveries ÷ the time from each post to its last delivery.
    pub deliveries_per_s: f64,
}

impl NotifyRun {
    fn per_s(&self) -> f64 {
        self.notified as f64 / self.bursts_s.max(1e-9)
    }

    fn us_each(&self, proc: usize) -> f64 {
        self.cpu.procs[proc] * 1e6 / self.notified.max(1) as f64
    }

    fn label(&self) -> String {
        match self.server {
            Server::Sockudo => format!(
                "private-user-N, {} channel{} per signed event, a new connection per request",
                self.batch,
                if self.batch == 1 { "" } else { "s" }
            ),
            _ => "POST /notify/{user}, one per request".into(),
        }
    }

    fn line(&self) -> String {
        format!(
            "connect {:.2} s, {:.0} notifications/s, p50/p99/max {:.1}/{:.1}/{:.1} ms{}, lost {} ({} closed{}), server {:.2} / generator {:.2} µs per notification, others {:.2} cores",
            self.connect_s,
            self.per_s(),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.broadcast.as_ref().map_or(String::new(), |b| format!(
                "; broadcast p50/p99 {:.1}/{:.1} ms",
                b.p50_ms, b.p99_ms
            )),
            self.lost,
            self.closed,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}")),
            self.us_each(0),
            self.us_each(1),
            others_cores(&self.cpu),
        )
    }
}

impl Measured for NotifyRun {
    fn others(&self) -> Option<f64> {
        Some(others_cores(&self.cpu))
    }
}

/// Every run of the scenario: wsnotify, and sockudo per batch size when
/// `--servers` names it, for every client count, payload and repetition.
pub async fn runs(args: &Args) -> Result<Vec<NotifyRun>> {
    let mut cells = vec![(Server::Wsnotify, 1)];
    if args.servers.contains(&Server::Sockudo) {
        for &batch in &args.sockudo_batch {
            if !(1..=100).contains(&batch) {
                bail!("--sockudo-batch {batch}: sockudo takes 1 to 100 channels per event");
            }
            cells.push((Server::Sockudo, batch));
        }
    }
    let mut runs = Vec::new();
    for &clients in &args.clients {
        for &payload in &args.payloads {
            for rep in 1..=args.repeat {
                for &(server, batch) in &cells {
                    let label = format!(
                        "notify, {}: {clients} users, {payload} B, {batch} per request",
                        server.name()
                    );
                    let (run, attempts) = undisturbed(args, &label, || {
                        measure(args, server, batch, clients, payload)
                    })
                    .await?;
                    eprintln!("   {}", run.line());
                    runs.push(NotifyRun {
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

async fn measure(
    args: &Args,
    server: Server,
    batch: usize,
    n: usize,
    payload: usize,
) -> Result<NotifyRun> {
    let load = procs::loadavg();
    let proc = server.start(args).await?;
    let opening: Rc<dyn Opening> = match server {
        Server::Sockudo => Rc::new(SockudoUsers { app: sockudo_app() }),
        _ => Rc::new(WsnotifyUsers),
    };
    let tally = Rc::new(Tally::new(n, false));
    let started = now_ns();
    clients::connect_all(
        opening,
        &[proc.addr],
        n,
        args.connect_concurrency,
        Reader::Lean,
        &tally,
    )
    .await?;
    let connect_s = (now_ns() - started) as f64 / 1e9;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut conns = Vec::new();
    for _ in 0..publishers(server, args) {
        conns.push(Conn::connect(proc.addr).await?);
    }
    let with_broadcasts = server == Server::Wsnotify;
    let broadcast_rounds = if with_broadcasts { args.rounds } else { 0 };
    let mut expected = 0u64;
    let mut seq = 0u64;
    let mut latencies = Vec::with_capacity(n * args.notify_rounds);
    let (mut notified, mut bursts_s) = (0u64, 0.0);
    let (mut answered_ms, mut delivered_ms) = (Vec::new(), Vec::new());
    let mut broadcast_latencies = Vec::new();
    let (mut broadcast_delivered, mut broadcast_s) = (0u64, 0.0);
    let mut cpu = CpuUse::default();
    let pids = [Some(proc.pid()), Some(0)];
    for round in 0..broadcast_rounds.max(args.notify_rounds) {
        if round < broadcast_rounds {
            let message = stamped('b', seq, payload);
            seq += 1;
            expected += n as u64;
            let sent = now_ns();
            let publish = server.publish(&mut conns[0], &message);
            let (_, arrivals) = recorded(&tally, expected, BURST_LIMIT, publish).await?;
            let last = arrivals.iter().map(|a| a.1).max().unwrap_or(sent);
            broadcast_delivered += arrivals.len() as u64;
            broadcast_s += last.saturating_sub(sent) as f64 / 1e9;
            broadcast_latencies.extend(arrivals.iter().map(|a| a.1.saturating_sub(sent)));
        }
        if round < args.notify_rounds {
            let sent: Vec<Cell<u64>> = (0..n).map(|_| Cell::new(0)).collect();
            expected += n as u64;
            let before = CpuMark::take_exact(&pids);
            let publish = burst(server, &mut conns, args, batch, seq, payload, &sent);
            let (last_answer, arrivals) = recorded(&tally, expected, BURST_LIMIT, publish).await?;
            accumulate(&mut cpu, CpuMark::take_exact(&pids).since(&before));
            seq += 1;
            let first = sent.iter().map(Cell::get).min().unwrap_or(0);
            let last = arrivals.iter().map(|a| a.1).max().unwrap_or(first);
            notified += arrivals.len() as u64;
            bursts_s += last.saturating_sub(first) as f64 / 1e9;
            answered_ms.push(last_answer.saturating_sub(first) as f64 / 1e6);
            delivered_ms.push(last.saturating_sub(first) as f64 / 1e6);
            latencies.extend(
                arrivals
                    .iter()
                    .map(|&(client, at)| at.saturating_sub(sent[client as usize].get())),
            );
        }
    }
    let (p50_ms, p99_ms, max_ms) = percentiles_ms(&mut latencies);
    let broadcast = with_broadcasts.then(|| {
        let (p50_ms, p99_ms, max_ms) = percentiles_ms(&mut broadcast_latencies);
        Broadcasts {
            p50_ms,
            p99_ms,
            max_ms,
            deliveries_per_s: broadcast_delivered as f64 / f64::max(broadcast_s, 1e-9),
        }
    });
    Ok(NotifyRun {
        server,
        batch,
        clients: n,
        payload,
        rep: 0,
        attempts: 1,
        load,
        connect_s,
        notified,
        bursts_s,
        p50_ms,
        p99_ms,
        max_ms,
        answered_ms,
        delivered_ms,
        broadcast,
        lost: expected.saturating_sub(tally.received.get()),
        closed: tally.closed.get(),
        first_error: tally.first_error.borrow().clone(),
        cpu,
    })
}

/// The publisher connections of a burst: `--publishers`, or for a server
/// that closes every connection one per request in flight.
fn publishers(server: Server, args: &Args) -> usize {
    if server.keeps_connections() {
        args.publishers.max(1)
    } else {
        args.publishers.max(1) * args.pipeline.max(1)
    }
}

/// One burst: a notification to every user, `batch` users per request,
/// spread over `conns`; each user's send time goes to `sent`. Answers when
/// the last answer came.
async fn burst(
    server: Server,
    conns: &mut [Conn],
    args: &Args,
    batch: usize,
    seq: u64,
    payload: usize,
    sent: &[Cell<u64>],
) -> Result<u64> {
    let (n, publishers) = (sent.len(), conns.len());
    // Requests per write, and writes waiting for their answers at most.
    let plan = if server.keeps_connections() {
        (args.pipeline.max(1).div_ceil(2), 2)
    } else {
        (1, 1)
    };
    let shares = conns.iter_mut().enumerate().map(|(p, conn)| {
        let users = share(p, publishers, n, batch);
        publish_share(server, conn, users, plan, seq, payload, sent)
    });
    let lasts = try_join_all(shares).await?;
    Ok(lasts.into_iter().max().unwrap_or(0))
}

/// The users of publisher `p`'s requests: request `r` notifies users `r ×
/// batch ..(r + 1) × batch`, and publisher `p` of `publishers` sends
/// requests `p, p + publishers, …`.
fn share(
    p: usize,
    publishers: usize,
    n: usize,
    batch: usize,
) -> impl Iterator<Item = Range<usize>> {
    (p..n.div_ceil(batch))
        .step_by(publishers)
        .map(move |r| r * batch..((r + 1) * batch).min(n))
}

/// One publisher's share of a burst: a request per range of users, `plan.0`
/// requests per write, and the next write as soon as fewer than `plan.1`
/// wait for their answers (with two, the server always has the next batch
/// to read); when the last answer came.
async fn publish_share(
    server: Server,
    conn: &mut Conn,
    requests: impl Iterator<Item = Range<usize>>,
    (per_write, writes): (usize, usize),
    seq: u64,
    payload: usize,
    sent: &[Cell<u64>],
) -> Result<u64> {
    let mut requests = requests.peekable();
    let mut waiting = std::collections::VecDeque::new();
    let mut wire = Vec::new();
    loop {
        while waiting.len() < writes && requests.peek().is_some() {
            wire.clear();
            let users: Vec<Range<usize>> = requests.by_ref().take(per_write).collect();
            for range in &users {
                let (path, body) = request(server, range.clone(), seq, payload);
                conn.encode(&mut wire, "POST", &path, Some(&body));
            }
            let at = now_ns();
            users
                .iter()
                .flat_map(Range::clone)
                .for_each(|user| sent[user].set(at));
            conn.write(&wire).await?;
            waiting.push_back(users.len());
        }
        let Some(count) = waiting.pop_front() else {
            return Ok(now_ns());
        };
        for _ in 0..count {
            answered(server, conn).await?;
        }
    }
}

/// Reads one answer, which must be a 200.
async fn answered(server: Server, conn: &mut Conn) -> Result<()> {
    let reply = conn.reply().await?;
    if reply.status != 200 {
        bail!(
            "{} refused a notification: {} {}",
            server.name(),
            reply.status,
            reply.text()
        );
    }
    Ok(())
}

/// The path and body of the request notifying `users`.
fn request(server: Server, users: Range<usize>, seq: u64, payload: usize) -> (String, String) {
    let message = stamped('n', seq, payload);
    match server {
        Server::Sockudo => {
            let channels: Vec<String> = users.map(private_channel).collect();
            let body = pusher::event_body_to_many("notification", &channels, &message);
            (sockudo_app().events_path(&body), body)
        }
        _ => (
            format!("/notify/{}", user(users.start)),
            format!(r#"{{"message":"{message}"}}"#),
        ),
    }
}

type Cell2 = (usize, usize);

/// Prints every run, then the medians with their ratios.
pub fn print(runs: &[NotifyRun]) {
    println!("\n### Per-user notifications: every run\n");
    println!(
        "| users | payload | server | published as | rep | tries | load (1/5/15 min) | connect (s) | notifications/s | p50 (ms) | p99 (ms) | max (ms) | wsnotify broadcast p50 / p99 / max (ms) | lost | server µs/notification | generator µs/notification | generator cores (bursts) | rest of machine (cores) |"
    );
    println!("|{}", "---|".repeat(18));
    for r in runs {
        println!(
            "| {} | {} B | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.clients,
            r.payload,
            r.server.name(),
            r.label(),
            r.rep,
            r.attempts,
            r.load,
            r.connect_s,
            r.per_s(),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.broadcast.as_ref().map_or("-".into(), |b| format!(
                "{:.1} / {:.1} / {:.1}",
                b.p50_ms, b.p99_ms, b.max_ms
            )),
            r.lost,
            r.us_each(0),
            r.us_each(1),
            r.cpu.procs[1] / r.cpu.wall_s.max(1e-9),
            others_cores(&r.cpu),
        );
    }

    let mut cells: BTreeMap<Cell2, BTreeMap<(Server, usize), Vec<&NotifyRun>>> = BTreeMap::new();
    for r in runs {
        cells
            .entry((r.clients, r.payload))
            .or_default()
            .entry((r.server, r.batch))
            .or_default()
            .push(r);
    }
    let med = |runs: &[&NotifyRun], f: &dyn Fn(&NotifyRun) -> f64| {
        median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    println!(
        "\n### Per-user notifications: medians over repetitions, and ratios (same invocation)\n"
    );
    println!(
        "Targets: notifications/s ≥ 3× sockudo's; notify p99 ≤ 1.2× wsnotify's broadcast p99 to the same clients.\n"
    );
    println!(
        "| users | payload | server | published as | runs | notifications/s (broadcast: deliveries/s) | wsnotify's ÷ this | p50 (ms) | p99 (ms) | p99 ÷ wsnotify broadcast p99 | burst: last answer / last read (ms after its first request) | lost | server µs/notification |"
    );
    println!("|{}", "---|".repeat(13));
    for ((clients, payload), by_server) in &cells {
        let wsnotify = by_server.get(&(Server::Wsnotify, 1));
        let of = |f: &dyn Fn(&NotifyRun) -> f64| wsnotify.map_or(f64::NAN, |rs| med(rs, f));
        let own_rate = of(&|r| r.per_s());
        let broadcast_p99 = of(&|r| r.broadcast.as_ref().map_or(f64::NAN, |b| b.p99_ms));
        for ((server, _), rs) in by_server {
            let p99 = med(rs, &|r| r.p99_ms);
            let rate = med(rs, &|r| r.per_s());
            println!(
                "| {clients} | {payload} B | {} | {} | {} | {rate:.0} | {} | {:.1} | {p99:.1} | {} | {:.1} / {:.1} | {} | {:.2} |",
                server.name(),
                rs[0].label(),
                rs.len(),
                ratio(own_rate, rate),
                med(rs, &|r| r.p50_ms),
                ratio(p99, broadcast_p99),
                med(rs, &|r| median(&r.answered_ms)),
                med(rs, &|r| median(&r.delivered_ms)),
                rs.iter().map(|r| r.lost).sum::<u64>(),
                med(rs, &|r| r.us_each(0)),
            );
        }
        if let Some(rs) = wsnotify {
            let b =
                |f: fn(&Broadcasts) -> f64| med(rs, &|r| r.broadcast.as_ref().map_or(f64::NAN, f));
            println!(
                "| {clients} | {payload} B | wsnotify | POST /broadcast to the same clients (baseline) | {} | {:.0} | - | {:.1} | {:.1} | 1.00× | - | - | - |",
                rs.len(),
                b(|b| b.deliveries_per_s),
                b(|b| b.p50_ms),
                b(|b| b.p99_ms),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_covers_every_user_once_over_the_publishers() {
        for (n, batch, publishers) in [(10, 1, 4), (10, 3, 4), (250, 100, 4), (7, 100, 2)] {
            let mut seen = vec![0; n];
            for p in 0..publishers {
                for users in share(p, publishers, n, batch) {
                    assert!(users.len() <= batch);
                    users.for_each(|user| seen[user] += 1);
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{n} {batch} {publishers}");
        }
    }
}
