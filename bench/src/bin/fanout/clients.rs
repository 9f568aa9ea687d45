//! The generator's clients: N WebSocket connections on one single-threaded
//! runtime, each a task that counts the text frames it receives and, while
//! a single broadcast is being measured, when each arrived.
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
use wsnotify_bench::frames::{Frame, Scanner, opcode};
use wsnotify_bench::{scan, ws};

use crate::servers::Server;

/// Payload bytes the lean reader keeps with `--verify`, and while opening
/// (enough for sockudo's `subscription_succeeded`, or a JSON delivery's
/// stamp).
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
    /// Clients that completed their opening.
    pub ready: Cell<usize>,
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

/// Opens `n` clients of `server` on `addr`, `concurrency` handshakes at a
/// time, each read by `reader` into `tally`; returns once all have
/// opened (or fails on the first that cannot).
pub async fn connect_all(
    server: Server,
    addr: SocketAddr,
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
        let (tally, failed) = (tally.clone(), failed.clone());
        tokio::task::spawn_local(async move {
            let opened = match reader {
                Reader::Lean => open_lean(server, addr, i, &tally).await.map(Opened::Lean),
                Reader::Fastwebsockets => open_fastws(server, addr, i).await.map(Opened::Fastws),
            };
            drop(permit);
            match opened {
                Ok(opened) => {
                    tally.ready.set(tally.ready.get() + 1);
                    match opened {
                        Opened::Lean((stream, scanner)) => {
                            read_lean(stream, scanner, i, tally).await
                        }
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
    Lean((TcpStream, Scanner)),
    Fastws(FastwsClient),
}

/// The upgrade request's headers: `X-Client` names the client (the floor
/// reports its write times by it).
fn client_headers(i: usize) -> Vec<String> {
    vec![format!("X-Client: {i}")]
}

/// Handshake, then the server's first frame (the greeting, or sockudo's
/// `connection_established`); for sockudo also the subscription and its
/// confirmation. The scanner is left at a frame boundary.
async fn open_lean(
    server: Server,
    addr: SocketAddr,
    i: usize,
    tally: &Tally,
) -> Result<(TcpStream, Scanner)> {
    let (mut stream, rest) = ws::handshake(addr, &server.ws_path(), &client_headers(i)).await?;
    let mut scanner = Scanner::new(CAPTURE);
    let mut bytes = rest;
    let mut subscribed = server.subscription(i).is_none();
    let mut greeted = false;
    let mut chunk = [0u8; 2048];
    loop {
        let mut confirmed = false;
        let mut texts = 0;
        scanner
            .feed(&bytes, |frame| {
                if frame.opcode == opcode::TEXT {
                    texts += 1;
                    confirmed |= Server::confirms(frame.prefix);
                }
            })
            .context("opening")?;
        if texts > 0 && !greeted {
            greeted = true;
            if let Some(subscription) = server.subscription(i) {
                stream.write_all(&subscription).await?;
            }
        }
        subscribed |= confirmed;
        if greeted && subscribed && scanner.at_boundary() {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed while opening");
        }
        bytes = chunk[..n].to_vec();
    }
    scanner.set_capture(if tally.verify { CAPTURE } else { 0 });
    Ok((stream, scanner))
}

/// The lean read loop: raw reads into the shared buffer, frame headers only.
async fn read_lean(mut stream: TcpStream, mut scanner: Scanner, i: usize, tally: Rc<Tally>) {
    let verify = tally.verify;
    let why = loop {
        let read = poll_fn(|cx| {
            BUFFER.with_borrow_mut(|buffer| {
                let mut buf = ReadBuf::new(&mut buffer[..]);
                match Pin::new(&mut stream).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err.to_string())),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
                    Poll::Ready(Ok(())) => {
                        let now = now_ns();
                        let mut ended = false;
                        let fed =
                            scanner.feed(buf.filled(), |frame: Frame<'_>| match frame.opcode {
                                opcode::TEXT => {
                                    tally.delivered(i, now, verify.then_some(frame.prefix));
                                }
                                opcode::CLOSE => ended = true,
                                _ => tally.control.set(tally.control.get() + 1),
                            });
                        match fed {
                            Ok(()) => Poll::Ready(Ok(!ended)),
                            Err(bad) => {
                                tally.bad.set(tally.bad.get() + 1);
                                Poll::Ready(Err(bad.to_string()))
                            }
                        }
                    }
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
async fn open_fastws(server: Server, addr: SocketAddr, i: usize) -> Result<FastwsClient> {
    let (stream, rest) = ws::handshake(addr, &server.ws_path(), &client_headers(i)).await?;
    let (read, mut writer) = stream.into_split();
    let (mut reader, _) = after_handshake_split(
        Cursor::new(rest).chain(read),
        tokio::io::sink(),
        Role::Client,
    );
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    let mut no_obligations = |_| async { Ok::<(), std::io::Error>(()) };
    let first = reader.read_frame(&mut no_obligations).await?;
    if first.opcode != OpCode::Text {
        bail!("no greeting");
    }
    if let Some(subscription) = server.subscription(i) {
        writer.write_all(&subscription).await?;
        loop {
            let frame = reader.read_frame(&mut no_obligations).await?;
            if frame.opcode == OpCode::Text && Server::confirms(&frame.payload) {
                break;
            }
        }
    }
    Ok(FastwsClient {
        reader,
        _writer: writer,
    })
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
