//! The generator's clients: N WebSocket connections on one single-threaded
//! runtime, each a task that counts the text frames it receives and, while
//! a single broadcast is being measured, when each arrived.
//!
//! How a client opens is an [`Opening`]: the path and headers of its
//! upgrade, and what it answers to the server's first text frames (read
//! whole) until it is ready: the greeting for wsnotify and the floor,
//! `connection_established` then a subscription and its confirmation for
//! sockudo. When each client started, got its 101 and was ready is kept
//! ([`OpenTimes`]).
//!
//! Two readers, selected by `--readers`:
//! - **lean** (the default): after the handshake the task reads the raw
//!   socket into one buffer shared by every client (a connection holds no
//!   buffer of its own) and cuts it into frames by their headers alone
//!   ([`wsnotify_bench::frames`]); payloads are skipped unread. A delivery's
//!   latency is its arrival time minus the time the broadcast was posted:
//!   single broadcasts are sent one at a time, so every frame that arrives
//!   meanwhile is that broadcast. With `--verify` it also reads each
//!   payload's stamp and checks that every client sees every sequence
//!   number once, in order.
//! - **fastwebsockets**: the previous generator's method: fastwebsockets'
//!   `read_frame` per frame, the payload checked as UTF-8 and its stamp
//!   parsed for the send time.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastwebsockets::{OpCode, Role, after_handshake_split};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wsnotify_bench::clock::now_ns;
use wsnotify_bench::frames::{Frame, Scanner, opcode, whole_frame};
use wsnotify_bench::{scan, ws};

/// Payload bytes the lean reader keeps with `--verify` (enough for a JSON
/// delivery's stamp).
const CAPTURE: usize = 96;
/// The lean reader's shared read buffer.
const SHARED_BUFFER: usize = 64 * 1024;

thread_local! {
    /// One read buffer for every lean client: the runtime is single-threaded
    /// and a read is consumed before its task yields.
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SHARED_BUFFER].into_boxed_slice());
}

/// How the clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Reader {
    Lean,
    Fastwebsockets,
}

impl Reader {
    pub fn name(self) -> &'static str {
        match self {
            Reader::Lean => "lean",
            Reader::Fastwebsockets => "fastwebsockets",
        }
    }
}

/// How a client opens its connection.
pub trait Opening {
    /// The path (with its query) client `i` upgrades on.
    fn path(&self, i: usize) -> String;

    /// The upgrade request's extra headers (`Name: value`): `X-Client`
    /// names the client (the floor reports its write times by it).
    fn headers(&self, i: usize) -> Vec<String> {
        vec![format!("X-Client: {i}")]
    }

    /// What client `i` does with a text frame (`payload`, whole) the
    /// server sent while it opens.
    fn on_text(&self, i: usize, payload: &[u8]) -> Step;
}

/// A client's next step while it opens.
pub enum Step {
    /// Read on.
    Wait,
    /// Write this (a masked client frame), then read on.
    Send(Vec<u8>),
    /// Open: every text frame from now on counts.
    Ready,
    /// Refused by the server: the run fails.
    Fail(String),
}

/// When one client started its handshake, got its 101 and was ready
/// (generator clock, ns).
#[derive(Debug, Clone, Copy)]
pub struct OpenTimes {
    pub start: u64,
    pub upgraded: u64,
    pub ready: u64,
}

/// What the clients of one run record, shared by their tasks.
pub struct Tally {
    /// Text frames received after opening, per client.
    pub counts: Vec<Cell<u32>>,
    /// Their sum.
    pub received: Cell<u64>,
    /// When the last one arrived (generator clock, ns).
    pub last_ns: Cell<u64>,
    /// While set, each delivery's (client, arrival) goes to `arrivals`.
    pub recording: Cell<bool>,
    pub arrivals: RefCell<Vec<(u32, u64)>>,
    /// Clients that completed their opening, and when each did.
    pub ready: Cell<usize>,
    pub opened: RefCell<Vec<OpenTimes>>,
    /// Clients whose connection ended, and why the first one did.
    pub closed: Cell<u64>,
    pub first_error: RefCell<Option<String>>,
    /// Frames that were not a server frame header (the stream out of step).
    pub bad: Cell<u64>,
    /// With `--verify`: the last sequence number per client, and deliveries
    /// whose number was not the previous one + 1 (or had no stamp).
    verify: bool,
    last_seq: Vec<Cell<u64>>,
    pub gaps: Cell<u64>,
    /// Frames other than text (pings, closes).
    pub control: Cell<u64>,
}

/// No sequence number seen yet.
const NO_SEQ: u64 = u64::MAX;

impl Tally {
    pub fn new(clients: usize, verify: bool) -> Tally {
        Tally {
            counts: (0..clients).map(|_| Cell::new(0)).collect(),
            received: Cell::new(0),
            last_ns: Cell::new(0),
            recording: Cell::new(false),
            arrivals: RefCell::new(Vec::new()),
            ready: Cell::new(0),
            opened: RefCell::new(Vec::with_capacity(clients)),
            closed: Cell::new(0),
            first_error: RefCell::new(None),
            bad: Cell::new(0),
            verify,
            last_seq: (0..clients).map(|_| Cell::new(NO_SEQ)).collect(),
            gaps: Cell::new(0),
            control: Cell::new(0),
        }
    }

    /// Clients that received fewer than `each` text frames.
    pub fn short_clients(&self, each: u32) -> usize {
        self.counts.iter().filter(|c| c.get() < each).count()
    }

    /// Counts one text frame of `client` that arrived at `now`; `stamp`
    /// is its payload's first bytes when they are checked.
    fn delivered(&self, client: usize, now: u64, stamp: Option<&[u8]>) {
        let count = &self.counts[client];
        count.set(count.get() + 1);
        self.received.set(self.received.get() + 1);
        if now > self.last_ns.get() {
            self.last_ns.set(now);
        }
        if self.recording.get() {
            self.arrivals.borrow_mut().push((client as u32, now));
        }
        if let Some(prefix) = stamp {
            let last = &self.last_seq[client];
            match stamp_seq(prefix) {
                Some(seq) if last.get() == NO_SEQ || seq == last.get() + 1 => last.set(seq),
                Some(seq) => {
                    self.gaps.set(self.gaps.get() + 1);
                    last.set(seq);
                }
                None => self.gaps.set(self.gaps.get() + 1),
            }
        }
    }

    fn ended(&self, why: Option<String>) {
        self.closed.set(self.closed.get() + 1);
        if let Some(why) = why {
            self.first_error.borrow_mut().get_or_insert(why);
        }
    }
}

/// The sequence number of a generator stamp at the start of a payload, or
/// inside a JSON delivery's `data` (`b:<seq>:<sent_ns>:…`).
fn stamp_seq(prefix: &[u8]) -> Option<u64> {
    scan::stamp(prefix).map(|(_, seq, _)| seq)
}

/// The send time of a stamped payload.
fn stamp_sent(payload: &[u8]) -> Option<u64> {
    scan::stamp(payload).map(|(_, _, sent)| sent)
}

/// Opens `n` clients as `opening` says, client `i` on `addrs[i %
/// addrs.len()]`, `concurrency` handshakes at a time, each read by
/// `reader` into `tally`; returns once all have opened (or fails on the
/// first that cannot).
pub async fn connect_all(
    opening: Rc<dyn Opening>,
    addrs: &[SocketAddr],
    n: usize,
    concurrency: usize,
    reader: Reader,
    tally: &Rc<Tally>,
) -> Result<()> {
    let gate = std::sync::Arc::new(Semaphore::new(concurrency));
    let failed: Rc<RefCell<Option<anyhow::Error>>> = Rc::default();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        if let Some(err) = failed.borrow_mut().take() {
            return Err(err);
        }
        let (tally, failed, opening) = (tally.clone(), failed.clone(), opening.clone());
        let addr = addrs[i % addrs.len()];
        tokio::task::spawn_local(async move {
            let start = now_ns();
            let opened = match reader {
                Reader::Lean => open_lean(&*opening, addr, i)
                    .await
                    .map(|(at, client)| (at, Opened::Lean(client))),
                Reader::Fastwebsockets => open_fastws(&*opening, addr, i)
                    .await
                    .map(|(at, client)| (at, Opened::Fastws(client))),
            };
            drop(permit);
            match opened {
                Ok((upgraded, opened)) => {
                    tally.ready.set(tally.ready.get() + 1);
                    tally.opened.borrow_mut().push(OpenTimes {
                        start,
                        upgraded,
                        ready: now_ns(),
                    });
                    match opened {
                        Opened::Lean(lean) => read_lean(lean, i, tally).await,
                        Opened::Fastws(reader) => read_fastws(reader, i, tally).await,
                    }
                }
                Err(err) => {
                    failed
                        .borrow_mut()
                        .get_or_insert(err.context(format!("client {i}")));
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.ready.get() < n {
        if let Some(err) = failed.borrow_mut().take() {
            return Err(err);
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} clients opened in 60 s", tally.ready.get());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// An opened client, as its reader holds it.
enum Opened {
    Lean(LeanClient),
    Fastws(FastwsClient),
}

/// What the lean reader keeps: the socket, and what the server sent after
/// the frame that made the client ready (fed to a fresh scanner first).
struct LeanClient {
    stream: TcpStream,
    rest: Vec<u8>,
}

/// Handshake, then the opening: the server's frames read whole, each
/// text frame given to `opening`, until it says the client is ready.
/// Answers when the 101 came.
async fn open_lean(opening: &dyn Opening, addr: SocketAddr, i: usize) -> Result<(u64, LeanClient)> {
    let (mut stream, mut bytes) =
        ws::handshake(addr, &opening.path(i), &opening.headers(i)).await?;
    let upgraded = now_ns();
    let mut chunk = [0u8; 2048];
    loop {
        while let Some((frame, used)) = whole_frame(&bytes).context("opening")? {
            let step = if frame.opcode == opcode::TEXT {
                opening.on_text(i, frame.prefix)
            } else {
                Step::Wait
            };
            bytes.drain(..used);
            match step {
                Step::Wait => {}
                Step::Send(frame) => stream.write_all(&frame).await?,
                Step::Ready => {
                    return Ok((
                        upgraded,
                        LeanClient {
                            stream,
                            rest: bytes,
                        },
                    ));
                }
                Step::Fail(why) => bail!("{why}"),
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed while opening");
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Counts the frames of `bytes` (read at `now`) of client `i`: `Ok(false)`
/// once it was closed.
fn count_frames(
    scanner: &mut Scanner,
    bytes: &[u8],
    now: u64,
    i: usize,
    tally: &Tally,
) -> Result<bool, String> {
    let verify = tally.verify;
    let mut ended = false;
    let fed = scanner.feed(bytes, |frame: Frame<'_>| match frame.opcode {
        opcode::TEXT => tally.delivered(i, now, verify.then_some(frame.prefix)),
        opcode::CLOSE => ended = true,
        _ => tally.control.set(tally.control.get() + 1),
    });
    match fed {
        Ok(()) => Ok(!ended),
        Err(bad) => {
            tally.bad.set(tally.bad.get() + 1);
            Err(bad.to_string())
        }
    }
}

/// The lean read loop: raw reads into the shared buffer, frame headers only.
async fn read_lean(client: LeanClient, i: usize, tally: Rc<Tally>) {
    let LeanClient { mut stream, rest } = client;
    let mut scanner = Scanner::new(if tally.verify { CAPTURE } else { 0 });
    if !rest.is_empty() {
        match count_frames(&mut scanner, &rest, now_ns(), i, &tally) {
            Ok(true) => {}
            Ok(false) => return tally.ended(None),
            Err(why) => return tally.ended(Some(why)),
        }
    }
    drop(rest);
    let why = loop {
        let read = poll_fn(|cx| {
            BUFFER.with_borrow_mut(|buffer| {
                let mut buf = ReadBuf::new(&mut buffer[..]);
                match Pin::new(&mut stream).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err.to_string())),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
                    Poll::Ready(Ok(())) => Poll::Ready(count_frames(
                        &mut scanner,
                        buf.filled(),
                        now_ns(),
                        i,
                        &tally,
                    )),
                }
            })
        })
        .await;
        match read {
            Ok(true) => {}
            Ok(false) => break None,
            Err(why) => break Some(why),
        }
    };
    tally.ended(why);
}

type FastwsReader = fastwebsockets::WebSocketRead<
    tokio::io::Chain<Cursor<Vec<u8>>, tokio::net::tcp::OwnedReadHalf>,
>;

/// What the fastwebsockets reader keeps: the read half, and the write half
/// that holds the socket open.
struct FastwsClient {
    reader: FastwsReader,
    _writer: tokio::net::tcp::OwnedWriteHalf,
}

/// As [`open_lean`], with fastwebsockets reading.
async fn open_fastws(
    opening: &dyn Opening,
    addr: SocketAddr,
    i: usize,
) -> Result<(u64, FastwsClient)> {
    let (stream, rest) = ws::handshake(addr, &opening.path(i), &opening.headers(i)).await?;
    let upgraded = now_ns();
    let (read, mut writer) = stream.into_split();
    let (mut reader, _) = after_handshake_split(
        Cursor::new(rest).chain(read),
        tokio::io::sink(),
        Role::Client,
    );
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    let mut no_obligations = |_| async { Ok::<(), std::io::Error>(()) };
    loop {
        let frame = reader.read_frame(&mut no_obligations).await?;
        if frame.opcode != OpCode::Text {
            continue;
        }
        match opening.on_text(i, &frame.payload) {
            Step::Wait => {}
            Step::Send(frame) => writer.write_all(&frame).await?,
            Step::Ready => break,
            Step::Fail(why) => bail!("{why}"),
        }
    }
    Ok((
        upgraded,
        FastwsClient {
            reader,
            _writer: writer,
        },
    ))
}

/// The fastwebsockets read loop: one `read_frame` per frame, the payload
/// validated as UTF-8 and its stamp parsed.
async fn read_fastws(mut client: FastwsClient, i: usize, tally: Rc<Tally>) {
    let mut no_obligations = |_| async { Ok::<(), std::io::Error>(()) };
    let why = loop {
        let frame = match client.reader.read_frame(&mut no_obligations).await {
            Ok(frame) => frame,
            Err(err) => break Some(err.to_string()),
        };
        match frame.opcode {
            OpCode::Text => {
                let now = now_ns();
                let stamped = std::str::from_utf8(&frame.payload)
                    .ok()
                    .and_then(|text| stamp_sent(text.as_bytes()));
                if stamped.is_some() {
                    let stamp = tally.verify.then_some(&frame.payload[..]);
                    tally.delivered(i, now, stamp);
                } else {
                    tally.control.set(tally.control.get() + 1);
                }
            }
            OpCode::Close => break None,
            _ => tally.control.set(tally.control.get() + 1),
        }
    };
    tally.ended(why);
}
