//! What `reliable resume` and `reliable storm` share: the drain they both
//! stage and the clients that live through it.
//!
//! Instances A and B (and C, if publishes go through a third one) on one
//! Redis with history on; A gets SIGTERM. A publisher thread sends
//! notifications to random users and broadcasts, and keeps the offsets its
//! publishes got (the [`Heads`]). N JSON clients on A
//! (`/ws/notifications?user=uN`) keep the positions of their two streams
//! (`user:uN`, `broadcast`) from `stream.position` and from every delivery
//! ([`Streams`]), check that each offset follows the last, and move to B
//! when A drains them; what they saw is added up in a [`Tally`]. At the
//! end every client must reach the heads.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::OpCode;
use tokio::sync::Semaphore;
use wsnotify_bench::clock::{now_ns, stamped};
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{Proc, Redis, tcp_counters};
use wsnotify_bench::scan::{self, Position};
use wsnotify_bench::ws;

use crate::shared::{Common, wait_for};

/// Runs `one` on each of `variants` in turn, `repeat` times over (the
/// runs of one repetition back to back), on the generator and one private
/// Redis flushed before each run; `title` names a run on stderr from its
/// variant and repetition (from 1). Answers the reports in run order.
pub fn repetitions<V: Copy, R: Debug>(
    common: &Common,
    repeat: usize,
    variants: &[V],
    title: impl Fn(V, usize) -> String,
    one: impl AsyncFn(&Redis, V) -> Result<R>,
) -> Result<Vec<(V, R)>> {
    let mut reports = Vec::new();
    common.on_generator(async {
        let redis = common.redis().await?;
        for rep in 0..repeat {
            for &variant in variants {
                redis.flush().await?;
                eprintln!("== {}", title(variant, rep + 1));
                let report = one(&redis, variant).await?;
                eprintln!("   {report:?}");
                reports.push((variant, report));
            }
        }
        anyhow::Ok(())
    })??;
    Ok(reports)
}

/// Where publishes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    B,
    C,
}

/// Kernel counters read around the reconnect storm.
pub const TCP: &[&str] = &["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

/// Each [`TCP`] counter's growth since `before` was read.
pub fn tcp_since(before: &[u64]) -> Vec<u64> {
    tcp_counters(TCP)
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect()
}

/// The instances of one run: A, the one drained; B, the one its clients
/// move to; C, which serves no client, if publishes go through it.
pub struct Instances {
    pub a: Proc,
    pub b: Proc,
    pub c: Option<Proc>,
}

impl Instances {
    /// Starts B, A (with `SHUTDOWN_TIMEOUT` and `DRAIN_RECONNECT_SPREAD` as
    /// given) and C if `via` says so, all on the Redis at `redis_url` with
    /// `HISTORY_SIZE=history`, and waits until each is ready (its Redis
    /// link up).
    pub async fn start(
        common: &Common,
        redis_url: &str,
        history: usize,
        shutdown_timeout: u64,
        spread: f64,
        via: Via,
    ) -> Result<Instances> {
        let envs = |extra: &[(&'static str, String)]| {
            let mut all: Vec<(&str, String)> = vec![
                ("REDIS_URL", redis_url.to_owned()),
                ("HISTORY_SIZE", history.to_string()),
            ];
            all.extend(extra.iter().cloned());
            all
        };
        let b = common.server("B", &envs(&[])).await?;
        let a = common
            .server(
                "A",
                &envs(&[
                    ("SHUTDOWN_TIMEOUT", shutdown_timeout.to_string()),
                    ("DRAIN_RECONNECT_SPREAD", spread.to_string()),
                ]),
            )
            .await?;
        let c = match via {
            Via::B => None,
            Via::C => Some(common.server("C", &envs(&[])).await?),
        };
        for server in [Some(&a), Some(&b), c.as_ref()].into_iter().flatten() {
            server.wait_ready().await?;
        }
        Ok(Instances { a, b, c })
    }

    /// Where the publisher sends.
    pub fn publish_to(&self) -> SocketAddr {
        self.c.as_ref().map_or(self.b.addr, |c| c.addr)
    }
}

/// A after its SIGTERM, and when it exited as far as the polls saw.
pub struct Drained {
    pub a: Proc,
    /// The SIGTERM, on the generator's clock and as an instant.
    pub sigterm_ns: u64,
    pub sigterm: Instant,
    /// From the SIGTERM to the first poll that found A gone.
    pub exit: Option<Duration>,
}

impl Drained {
    /// Sends A its SIGTERM.
    pub fn start(a: Proc) -> Drained {
        let sigterm_ns = now_ns();
        let sigterm = Instant::now();
        a.terminate();
        Drained {
            a,
            sigterm_ns,
            sigterm,
            exit: None,
        }
    }

    /// Sleeps `step` at a time until `done` holds or `until` passes,
    /// looking after each sleep whether A has exited (which also reaps it,
    /// so that its CPU time stays readable).
    pub async fn watch(&mut self, until: Instant, step: Duration, mut done: impl FnMut() -> bool) {
        while !done() && Instant::now() < until {
            if self.exit.is_none() && self.a.exited().is_some() {
                self.exit = Some(self.sigterm.elapsed());
            }
            tokio::time::sleep(step).await;
        }
    }

    /// Seconds from the SIGTERM to A's exit, NaN if it was not seen.
    pub fn exit_s(&self) -> f64 {
        self.exit.map_or(f64::NAN, |d| d.as_secs_f64())
    }
}

/// What the publisher's replies said: the head of every stream.
#[derive(Default)]
pub struct Heads {
    pub users: BTreeMap<usize, u64>,
    pub broadcast: u64,
    pub published: u64,
    pub failed: u64,
    /// When each publish was answered (generator clock), whether it was a
    /// broadcast, and how long it took (ns).
    pub answered: Vec<(u64, bool, u64)>,
}

/// What the publisher sends: notifications/s to random users `u0…`,
/// broadcasts/s among them, payload bytes.
pub struct Plan {
    pub rate: u64,
    pub broadcast_rate: u64,
    pub users: usize,
    pub payload: usize,
}

/// The publisher, on its own thread and runtime (pinned to the generator's
/// core), so that the reconnect storm does not stall its clock.
pub struct Publisher {
    heads: Arc<Mutex<Heads>>,
    /// Set to stop it (and whatever else was given the flag).
    pub stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Publisher {
    /// Starts publishing `plan` to `addr`.
    pub fn spawn(common: &Common, plan: Plan, addr: SocketAddr) -> Publisher {
        let heads = Arc::new(Mutex::new(Heads::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = publish(common, plan, addr, heads.clone(), stop.clone());
        Publisher {
            heads,
            stop,
            thread,
        }
    }

    /// Stops the publisher, waits for its thread, and answers the heads
    /// its publishes got.
    pub fn finish(self) -> Result<Heads> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
        Ok(std::mem::take(&mut *self.heads.lock().unwrap()))
    }
}

/// The publisher's thread: publishes `plan` to `addr` until `stop`, and
/// keeps what the replies said in `heads`.
fn publish(
    common: &Common,
    plan: Plan,
    addr: SocketAddr,
    heads: Arc<Mutex<Heads>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    let (rate, broadcasts, users, payload) =
        (plan.rate, plan.broadcast_rate, plan.users, plan.payload);
    common.generator_thread(move || async move {
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
}

/// Stream slots of a client.
pub const USER: usize = 0;
pub const BROADCAST: usize = 1;

/// What a client makes of a delivery whose offset is not the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A gap, whatever the offset, and the client's position from then on
    /// (a replayed duplicate is a gap too).
    Strict,
    /// At or below the last offset: a duplicate, dropped, as wsnotify.js
    /// drops it; past the next one: a gap.
    Dedup,
}

/// What the clients of one run record.
pub struct Tally {
    order: Order,
    /// Per client: the offset reached on each stream (USER, BROADCAST).
    pub offsets: Vec<[AtomicU64; 2]>,
    /// Clients whose positions on A came.
    pub ready: AtomicUsize,
    /// Clients whose positions on B came.
    pub resumed: AtomicUsize,
    /// Deliveries whose offset did not follow the last one.
    pub gaps: AtomicU64,
    /// Deliveries at or below the last offset (with [`Order::Dedup`]).
    pub duplicates: AtomicU64,
    /// Messages B replayed after `recovered: true` (head − position).
    pub replayed: AtomicU64,
    /// Messages skipped by starting at the head (a resume without `since`).
    pub missed: AtomicU64,
    /// Streams B said it could not recover, by reason.
    pub lost: Mutex<BTreeMap<String, u64>>,
    /// Closes of A without a drain notice.
    pub closed_without_notice: AtomicU64,
    pub failures: AtomicU64,
}

impl Tally {
    pub fn new(n: usize, order: Order) -> Tally {
        Tally {
            order,
            offsets: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            ready: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            gaps: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            lost: Mutex::new(BTreeMap::new()),
            closed_without_notice: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Counts client `i`'s end in `err`; the first five are printed.
    pub fn failed(&self, i: usize, err: anyhow::Error) {
        if self.failures.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("   client {i}: {err:#}");
        }
    }

    /// Waits (a minute at most) until each of the `n` clients is on A or
    /// has failed; fails unless all are on A.
    pub async fn all_on_a(&self, n: usize) -> Result<()> {
        let connected = wait_for(Duration::from_secs(60), || {
            self.ready.load(Ordering::Relaxed) + self.failures.load(Ordering::Relaxed) as usize >= n
        })
        .await;
        if !connected || self.failures.load(Ordering::Relaxed) > 0 {
            bail!(
                "only {} of {n} clients connected to A",
                self.ready.load(Ordering::Relaxed)
            );
        }
        eprintln!("   {n} clients on A");
        Ok(())
    }

    /// Waits (15 s at most) until every client has reached the `heads` on
    /// both its streams; answers how many have.
    pub async fn complete(&self, heads: &Heads) -> usize {
        let complete = || {
            self.offsets
                .iter()
                .enumerate()
                .filter(|(i, o)| {
                    o[BROADCAST].load(Ordering::Relaxed) >= heads.broadcast
                        && o[USER].load(Ordering::Relaxed)
                            >= heads.users.get(i).copied().unwrap_or(0)
                })
                .count()
        };
        let n = self.offsets.len();
        wait_for(Duration::from_secs(15), || complete() == n).await;
        complete()
    }

    /// The streams not recovered, as a table cell: `reason: count, …`, or 0.
    pub fn lost_cell(lost: &BTreeMap<String, u64>) -> String {
        if lost.is_empty() {
            return "0".into();
        }
        let lost: Vec<String> = lost.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        lost.join(", ")
    }
}

/// Client `i`'s two streams (name, epoch and offset reached), and the
/// tally it adds to.
pub struct Streams<'a> {
    pub at: [Position; 2],
    i: usize,
    tally: &'a Tally,
}

impl<'a> Streams<'a> {
    /// User `u{i}`'s streams, at offset 0 of no epoch yet.
    pub fn new(i: usize, tally: &'a Tally) -> Streams<'a> {
        let position = |stream: String| Position {
            stream,
            epoch: String::new(),
            offset: 0,
        };
        Streams {
            at: [position(format!("user:u{i}")), position("broadcast".into())],
            i,
            tally,
        }
    }

    /// The client's WebSocket path.
    pub fn path(&self) -> String {
        format!("/ws/notifications?user=u{}", self.i)
    }

    /// Connects to A (while holding one of `permits`) and reads the
    /// positions; the client is then ready.
    pub async fn join_a(&mut self, a: SocketAddr, permits: &Semaphore) -> Result<ws::Client> {
        let mut on_a = {
            let _permit = permits.acquire().await?;
            ws::connect(a, &self.path()).await?
        };
        self.opening(&mut on_a, false).await?;
        self.tally.ready.fetch_add(1, Ordering::Relaxed);
        Ok(on_a)
    }

    /// Reads A's deliveries until the drain notice (`system.shutdown`) or
    /// the end of the connection, counting an end without a notice; answers
    /// the notice's `reconnect_after_ms`, if it had one.
    pub async fn until_notice(&mut self, on_a: &mut ws::Client) -> Option<u64> {
        let mut hint = None;
        let mut noticed = false;
        while let Ok(frame) = ws::read_frame(&mut on_a.reader).await {
            match frame.opcode {
                OpCode::Text if scan::is_type(&frame.payload, b"system.shutdown") => {
                    hint = scan::u64_field(&frame.payload, b"reconnect_after_ms");
                    noticed = true;
                    break;
                }
                OpCode::Text => self.delivered(&frame.payload),
                OpCode::Close => break,
                _ => {}
            }
        }
        if !noticed {
            self.tally
                .closed_without_notice
                .fetch_add(1, Ordering::Relaxed);
        }
        hint
    }

    /// Reads B's deliveries until the connection fails; B closing it is
    /// an error.
    pub async fn follow_b(&mut self, on_b: &mut ws::Client) -> Result<()> {
        while let Ok(frame) = ws::read_frame(&mut on_b.reader).await {
            match frame.opcode {
                OpCode::Text => self.delivered(&frame.payload),
                OpCode::Close => bail!("B closed the connection"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads frames until both `stream.position` frames came (a replay may
    /// come between them) and takes what they say: with `recovered: true`
    /// the messages after the client's position follow (counted as
    /// replayed); `recovered: false` is a stream lost, by its reason; no
    /// `recovered` at all while `resuming` means the client starts at the
    /// head, and what lies between is missed. Answers when the first frame
    /// arrived (generator clock).
    pub async fn opening(&mut self, client: &mut ws::Client, resuming: bool) -> Result<u64> {
        let mut seen = [false; 2];
        let mut first = None;
        while !(seen[USER] && seen[BROADCAST]) {
            let frame = ws::read_frame(&mut client.reader).await?;
            first.get_or_insert_with(now_ns);
            match frame.opcode {
                OpCode::Text => {}
                OpCode::Close => bail!("closed before its positions"),
                _ => continue,
            }
            let text = &frame.payload[..];
            if !scan::is_type(text, b"stream.position") {
                self.delivered(text);
                continue;
            }
            let slot = if scan::str_field(text, b"stream") == Some(b"broadcast") {
                BROADCAST
            } else {
                USER
            };
            seen[slot] = true;
            let head = scan::last_u64_field(text, b"offset").context("a position's offset")?;
            let epoch =
                String::from_utf8_lossy(scan::str_field(text, b"epoch").unwrap_or_default());
            let at = &mut self.at[slot];
            let gap = head.saturating_sub(at.offset);
            match scan::find(text, b"\"recovered\":") {
                Some(_) if scan::find(text, b"\"recovered\":true").is_some() => {
                    self.tally.replayed.fetch_add(gap, Ordering::Relaxed);
                    continue;
                }
                Some(_) => {
                    let reason = scan::str_field(text, b"reason").unwrap_or(b"?");
                    *self
                        .tally
                        .lost
                        .lock()
                        .unwrap()
                        .entry(String::from_utf8_lossy(reason).into_owned())
                        .or_default() += 1;
                }
                None if resuming => {
                    self.tally.missed.fetch_add(gap, Ordering::Relaxed);
                }
                None => {}
            }
            at.epoch = epoch.into_owned();
            at.offset = head;
            self.tally.offsets[self.i][slot].store(head, Ordering::Relaxed);
        }
        Ok(first.unwrap_or_else(now_ns))
    }

    /// A delivery of one of the client's streams: its offset must follow
    /// the last one (see [`Order`] for one that does not).
    pub fn delivered(&mut self, text: &[u8]) {
        let slot = match scan::str_field(text, b"stream") {
            Some(b"broadcast") => BROADCAST,
            Some(_) => USER,
            None => return,
        };
        let Some(offset) = scan::last_u64_field(text, b"offset") else {
            return;
        };
        let at = &mut self.at[slot];
        if self.tally.order == Order::Dedup && offset <= at.offset {
            self.tally.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if offset != at.offset + 1 {
            self.tally.gaps.fetch_add(1, Ordering::Relaxed);
        }
        at.offset = offset;
        self.tally.offsets[self.i][slot].store(offset, Ordering::Relaxed);
    }
}
