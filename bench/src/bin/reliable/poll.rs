//! `reliable poll`: how fast a long-poll wakes up (memory mode).
//!
//! One server with history on; `--pollers` HTTP clients (users p0…) each
//! take their position with a first `GET /poll?user=pN` (no `since`), then
//! long-poll `GET /poll?user=pN&wait=25&since=<next>` in a loop, each on
//! its own keep-alive connection; `--ws` JSON WebSocket clients (users w0…)
//! on `/ws/notifications` listen beside them. Each round waits until the
//! server counts every poller as waiting (`wsnotify_long_polls_in_flight`),
//! then sends one `POST /broadcast` carrying its send time: latency is
//! publish → poll response read, and publish → WebSocket frame read, of
//! the same broadcast. Then the pollers leave and the same rounds run with
//! the WebSocket clients alone, for their latency and CPU without pollers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::OpCode;
use serde_json::Value;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::CpuMark;
use wsnotify_bench::scan::{self, uri_component};
use wsnotify_bench::stats::percentiles_ms;
use wsnotify_bench::ws;

use crate::shared::{Common, connect_many, wait_for};

#[derive(clap::Args)]
pub struct Args {
    /// Long-polling clients.
    #[arg(long, default_value_t = 1000)]
    pollers: usize,
    /// WebSocket JSON clients beside them.
    #[arg(long, default_value_t = 1000)]
    ws: usize,
    /// Broadcasts, one per round.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Broadcast payload, bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

/// Latencies of one kind of client.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    latencies_ns: std::sync::Mutex<Vec<u64>>,
    /// Poll answers without the broadcast (timeouts, empty wake-ups).
    empty: AtomicU64,
    waiting: AtomicUsize,
}

impl Tally {
    fn got(&self, sent_ns: u64, now: u64) {
        self.latencies_ns
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent_ns));
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// One phase's figures.
struct Phase {
    poll: Option<(f64, f64, f64)>,
    ws: (f64, f64, f64),
    /// Server CPU seconds per round (from the broadcast to its last delivery).
    server_cpu_per_round_ms: f64,
    empty_polls: u64,
}

pub fn run(common: &Common, args: &Args) -> Result<()> {
    let (both, alone) = common.on_generator(measure(common, args))??;
    println!();
    println!(
        "### Long-poll wake-up: {} pollers (`GET /poll?user=pN&wait=25&since=…`) and {} WebSocket JSON clients, one broadcast per round, {} rounds, {} B, memory mode",
        args.pollers, args.ws, args.rounds, args.payload
    );
    println!();
    println!("| clients | p50 (ms) | p99 (ms) | max (ms) | server CPU per broadcast (ms) |");
    println!("|---|---|---|---|---|");
    let poll = both.poll.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    println!(
        "| {} long-polls (same broadcasts as the next line) | {:.2} | {:.2} | {:.2} | {:.1} (both kinds together) |",
        args.pollers, poll.0, poll.1, poll.2, both.server_cpu_per_round_ms
    );
    println!(
        "| {} WebSockets, beside the pollers | {:.2} | {:.2} | {:.2} | |",
        args.ws, both.ws.0, both.ws.1, both.ws.2
    );
    println!(
        "| {} WebSockets alone (pollers gone) | {:.2} | {:.2} | {:.2} | {:.1} |",
        args.ws, alone.ws.0, alone.ws.1, alone.ws.2, alone.server_cpu_per_round_ms
    );
    println!();
    println!(
        "Ratios, poll / WebSocket of the same broadcasts: p50 {:.2}×, p99 {:.2}×. Server CPU of one long-poll wake-up (its answer, and the next poll up to its wait): ≈ {:.1} µs ((both − alone) ÷ pollers). Poll answers without the broadcast: {}.",
        poll.0 / both.ws.0,
        poll.1 / both.ws.1,
        (both.server_cpu_per_round_ms - alone.server_cpu_per_round_ms) * 1e3 / args.pollers as f64,
        both.empty_polls
    );
    Ok(())
}

async fn measure(common: &Common, args: &Args) -> Result<(Phase, Phase)> {
    let server = common
        .server("wsnotify", &[("HISTORY_SIZE", "100".into())])
        .await?;
    let addr = server.addr;
    let ws_tally = Arc::new(Tally::default());
    connect_many(args.ws, common.connect_concurrency, |i| {
        let tally = ws_tally.clone();
        async move {
            let mut client = ws::connect(addr, &format!("/ws/notifications?user=w{i}")).await?;
            for _ in 0..2 {
                let frame = ws::read_frame(&mut client.reader).await?;
                if !scan::is_type(&frame.payload, b"stream.position") {
                    bail!("w{i}: expected its positions");
                }
            }
            tokio::spawn(listen(client, tally));
            anyhow::Ok(())
        }
    })
    .await?;

    let poll_tally = Arc::new(Tally::default());
    let pollers = connect_many(args.pollers, common.connect_concurrency, |i| {
        let tally = poll_tally.clone();
        async move {
            let mut conn = Conn::connect(addr).await?;
            let first = conn
                .request("GET", &format!("/poll?user=p{i}"), None)
                .await?;
            let next = next_of(&first.body).with_context(|| format!("p{i}: {}", first.text()))?;
            anyhow::Ok(tokio::spawn(long_poll(conn, i, next, tally)))
        }
    })
    .await?;

    let mut metrics = Conn::connect(addr).await?;
    let both = rounds(args, &server, &mut metrics, Some(&poll_tally), &ws_tally, 0).await?;
    for poller in pollers {
        poller.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws_tally.latencies_ns.lock().unwrap().clear();
    let alone = rounds(
        args,
        &server,
        &mut metrics,
        None,
        &ws_tally,
        args.rounds as u64,
    )
    .await?;
    Ok((both, alone))
}

/// `--rounds` broadcasts, each once every poller waits, each waited for
/// by every client.
async fn rounds(
    args: &Args,
    server: &wsnotify_bench::procs::Proc,
    metrics: &mut Conn,
    polls: Option<&Arc<Tally>>,
    ws: &Arc<Tally>,
    first_seq: u64,
) -> Result<Phase> {
    let mut publisher = Conn::connect(server.addr).await?;
    let mut cpu_ms = Vec::new();
    let ws_start = ws.received.load(Ordering::Relaxed);
    for round in 0..args.rounds as u64 {
        if polls.is_some() {
            all_waiting(metrics, args.pollers).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = CpuMark::take(&[Some(server.pid())]);
        publisher
            .broadcast(&stamped('b', first_seq + round, args.payload))
            .await?;
        let want_ws = ws_start + (round + 1) * args.ws as u64;
        let want_polls = (round + 1) * args.pollers as u64;
        let done = wait_for(Duration::from_secs(20), || {
            ws.received.load(Ordering::Relaxed) >= want_ws
                && polls.is_none_or(|p| p.received.load(Ordering::Relaxed) >= want_polls)
        })
        .await;
        if !done {
            bail!("round {round}: not every client got the broadcast");
        }
        // The round's cost includes every poller's next poll, up to its wait.
        if polls.is_some() {
            all_waiting(metrics, args.pollers).await?;
        }
        let used = CpuMark::take(&[Some(server.pid())]).since(&before);
        cpu_ms.push(used.procs[0] * 1e3);
    }
    Ok(Phase {
        poll: polls.map(|p| percentiles_ms(&mut p.latencies_ns.lock().unwrap())),
        ws: percentiles_ms(&mut ws.latencies_ns.lock().unwrap()),
        server_cpu_per_round_ms: cpu_ms.iter().sum::<f64>() / cpu_ms.len().max(1) as f64,
        empty_polls: polls.map_or(0, |p| p.empty.load(Ordering::Relaxed)),
    })
}

/// Waits until the server counts `pollers` long-polls waiting.
async fn all_waiting(metrics: &mut Conn, pollers: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = metrics.metrics(&["wsnotify_long_polls_in_flight"]).await?[0];
        if waiting as usize >= pollers {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {waiting} of {pollers} pollers waiting");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `next` of a poll answer.
fn next_of(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    answer["next"].as_str().map(str::to_owned)
}

/// One poller: long-polls from `next` until aborted.
async fn long_poll(mut conn: Conn, i: usize, mut next: String, tally: Arc<Tally>) -> Result<()> {
    loop {
        let path = format!("/poll?user=p{i}&wait=25&since={}", uri_component(&next));
        conn.send("GET", &path, None).await?;
        tally.waiting.fetch_add(1, Ordering::Relaxed);
        let reply = conn.reply().await?;
        let now = now_ns();
        tally.waiting.fetch_sub(1, Ordering::Relaxed);
        if reply.status != 200 {
            bail!("p{i}: poll answered {}: {}", reply.status, reply.text());
        }
        let answer: Value = serde_json::from_slice(&reply.body)?;
        let mut got = false;
        for message in answer["messages"].as_array().into_iter().flatten() {
            if let Some((b'b', _, sent)) = message["data"]
                .as_str()
                .and_then(|data| scan::stamp(data.as_bytes()))
            {
                tally.got(sent, now);
                got = true;
            }
        }
        if !got {
            tally.empty.fetch_add(1, Ordering::Relaxed);
        }
        next = answer["next"]
            .as_str()
            .context("a poll answer without next")?
            .to_owned();
    }
}

/// A WebSocket client: records each broadcast's latency.
async fn listen(mut client: ws::Client, tally: Arc<Tally>) {
    while let Ok(frame) = ws::read_frame(&mut client.reader).await {
        match frame.opcode {
            OpCode::Text => {
                if let Some((b'b', _, sent)) = scan::stamp(&frame.payload) {
                    tally.got(sent, now_ns());
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
}
