//! One WebSocket's life, from the greeting to the close: a single `select!`
//! over the client's frames, the connection's outbox, and the shutdown. The
//! JSON dialect's messages, and the resume of its streams, are in [`json`].
//!
//! Reading uses fastwebsockets' [`WebSocketRead`]. Its `read_frame` is not
//! cancel-safe (a frame half-read when another arm wins would be lost), so the
//! reader lives inside a stream whose pending read survives across loop turns.
//! Writing bypasses fastwebsockets' writer on purpose: frames arrive already
//! encoded (see [`crate::protocol::encode`]) and shared by every recipient, so
//! the session hands them to one `writev` per wake-up, without copying them.
//! The session is generic over the IO, so the unit tests below drive it over
//! a duplex pipe with paused time. It reaches the server only through the
//! [`Node`].

mod json;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{Cursor, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use fastwebsockets::{Role, WebSocketError, WebSocketRead, after_handshake_split};
use futures_util::{Stream, StreamExt};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Chain};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::history::Since;
use crate::history::gate::{Admit, Gate};
use crate::limits::{ERROR_BURST, ERROR_REFILL_PER_SEC};
use crate::node::{Node, Registration};
use crate::outbox::{Item, MAX_IOVECS};
use crate::protocol::{self, Assembler, Close, Dialect, Event, Inbound, text};
use crate::shutdown::CLOSE_GRACE;

/// How a session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// The plain-text dialect: greeting, `You said:`/`New message:`,
    /// broadcasts.
    Text,
    /// The JSON dialect, in `room` if one is given (`/ws/rooms/{room}`;
    /// `/ws/notifications` has none), resuming from `since` (the raw
    /// query value; a bad one is answered with `system.error`).
    Json {
        room: Option<String>,
        since: Option<String>,
    },
}

/// Why the session loop ended.
#[derive(Debug)]
enum Ending {
    /// The peer is gone (EOF, reset, failed write): nothing more can be sent.
    Gone,
    /// The client sent a close frame with this code: echo it.
    Echo(u16),
    /// The server closes: send this close frame and wait briefly for the answer.
    Close(Close),
    /// The server closes while a write was cut short (kill, forced close):
    /// only the rest of the begun frame goes before the close frame. Frames
    /// queued after it are dropped, not sent, so the client never gets a
    /// later message behind a gap.
    Cut(Close),
}

/// One connection's state between its socket and the node.
struct Session<'a> {
    node: &'a Node,
    reg: Registration,
    /// The streams it follows (JSON dialect with history), and where.
    gate: Gate,
    /// Positions the client gave for rooms it has not joined yet; a later
    /// `room.join` without `since` uses them.
    saved: Since,
    /// Frames to write, in order.
    pending: VecDeque<Bytes>,
    /// What was taken from the outbox, before the gate decides on it.
    taken: VecDeque<Item>,
    /// The JSON dialect's error budget.
    errors: TokenBucket,
}

/// Serves one upgraded WebSocket for `user` until it closes. With `socket`
/// (the TCP stream under `writer`), a plain-text session's frames are
/// written through by the hub's flusher while the session is idle.
pub async fn run<R, W>(
    node: Arc<Node>,
    (reader, mut writer): (R, W),
    socket: Option<Arc<TcpStream>>,
    user: Arc<str>,
    opening: Opening,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let registration = match &opening {
        Opening::Text => node.connect_text(user.clone()),
        Opening::Json { room, .. } => node.connect_json(user.clone(), room.as_deref()).await,
    };
    let id = registration.id();
    if let Some(socket) = socket
        && registration.dialect() == Dialect::Text
    {
        registration.write_through(socket);
    }
    tracing::debug!(conn = id, %user, active = node.local_connections(), "client connected");
    let mut inbound = pin!(frames(reader, node.config().max_message_size));
    let mut session = Session {
        node: &node,
        reg: registration,
        gate: Gate::new(node.config().outbound_queue),
        saved: Since::default(),
        pending: VecDeque::new(),
        taken: VecDeque::new(),
        errors: TokenBucket::new(ERROR_REFILL_PER_SEC, ERROR_BURST),
    };
    let ending = match opening {
        // Boxed: a JSON opening's future is large and runs once, so it need
        // not be part of every connection's future for its whole life.
        Opening::Json { room, since } => match Box::pin(session.open(room.as_deref(), since)).await
        {
            Ok(()) => session.converse(inbound.as_mut(), &mut writer).await,
            Err(ending) => ending,
        },
        Opening::Text => session.converse(inbound.as_mut(), &mut writer).await,
    };
    let Session {
        reg, mut pending, ..
    } = session;
    // From here on only this task writes; a frame the flusher began is
    // finished first.
    if let Some(front) = reg.outbox().claim() {
        pending.push_front(front);
    }
    if matches!(ending, Ending::Close(_)) {
        // What the last turn queued (a `system.error` for the message that
        // spent the error budget, say) goes out before the close frame.
        // A killed outbox holds nothing; `close` bounds the time it takes.
        let mut rest = VecDeque::new();
        reg.outbox().drain_into(&mut rest);
        pending.extend(rest.into_iter().filter_map(|item| match item {
            Item::Frame(frame) => Some(frame),
            Item::Record(_) => None,
        }));
    }
    if matches!(ending, Ending::Close(Close::InsufficientState)) {
        node.metrics().insufficient_state();
    }
    drop(reg);
    close(ending, pending, inbound, &mut writer).await;
    tracing::debug!(conn = id, %user, active = node.local_connections(), "client disconnected");
}

impl Session<'_> {
    /// The session loop proper: returns as soon as the connection must end.
    ///
    /// On return `pending` holds at most one frame: the rest of a frame whose
    /// write was interrupted, which must go out before anything else.
    async fn converse<S, W>(&mut self, mut inbound: std::pin::Pin<&mut S>, writer: &mut W) -> Ending
    where
        S: Stream<Item = Result<Inbound, WebSocketError>>,
        W: AsyncWrite + Unpin,
    {
        let node = self.node;
        let outbox = self.reg.outbox().clone();
        let outbox = &outbox;
        let mut assembler = Assembler::new(node.config().max_message_size);
        let rate = f64::from(node.config().rate_limit);
        let mut budget = TokenBucket::new(rate, rate);
        let mut notified = false;
        // Created once and pinned: re-creating these futures on every wake-up
        // re-registered their waiters each time (seen in the fan-out profile).
        let killed = outbox.killed();
        let forced = node.shutdown().forced();
        let draining = node.shutdown().draining();
        let ready = outbox.ready();
        tokio::pin!(killed, forced, draining, ready);
        // What the opening queued goes out first.
        if !self.pending.is_empty()
            && let Some(ending) = flush(node, &self.reg, writer, &mut self.pending).await
        {
            return ending;
        }
        loop {
            tokio::select! {
                biased;
                _ = &mut killed => return Ending::Close(kill_reason(&self.reg)),
                _ = &mut forced => return Ending::Close(Close::GoingAway),
                _ = &mut draining, if !notified => {
                    notified = true;
                    outbox.push(node.shutdown_notice(self.reg.dialect()));
                }
                _ = &mut ready => {
                    // A push between here and the next poll leaves a permit.
                    ready.set(outbox.ready());
                    if let Err(ending) = self.take_outbox() {
                        return ending;
                    }
                    if let Some(ending) = flush(node, &self.reg, writer, &mut self.pending).await {
                        return ending;
                    }
                }
                frame = inbound.next() => {
                    let event = match frame {
                        Some(Ok(frame)) => {
                            outbox.touch(node.now_ms());
                            assembler.push(frame)
                        }
                        Some(Err(err)) => return read_failed(&err),
                        None => return Ending::Gone,
                    };
                    if matches!(event, Event::Text(_) | Event::Ping(_)) && !budget.spend() {
                        return Ending::Close(Close::RateLimited);
                    }
                    let ending = match (event, self.reg.dialect()) {
                        // Boxed for the same reason: rare, and large.
                        (Event::Text(text), Dialect::Json) => Box::pin(self.on_message(&text)).await,
                        (event, _) => self.on_event(event),
                    };
                    if let Some(ending) = ending {
                        return ending;
                    }
                    // An answer may have been queued here directly.
                    if !self.pending.is_empty()
                        && let Some(ending) = flush(node, &self.reg, writer, &mut self.pending).await
                    {
                        return ending;
                    }
                }
            }
        }
    }

    /// Moves what the outbox holds to `pending`, through the gate: a
    /// stream's message goes out only if it is the next one.
    fn take_outbox(&mut self) -> Result<(), Ending> {
        self.reg.outbox().drain_into(&mut self.taken);
        while let Some(item) = self.taken.pop_front() {
            let record = match item {
                Item::Frame(frame) => {
                    self.pending.push_back(frame);
                    continue;
                }
                Item::Record(record) => record,
            };
            match self.gate.admit(&record) {
                Ok(Admit::Pass) => self.pending.push_back(record.frame.clone()),
                Ok(Admit::Drop | Admit::Held) => {}
                Ok(Admit::Gap) => {
                    tracing::debug!(conn = self.reg.id(), stream = %record.stream, "gap in a stream; closing with 4010");
                    return Err(Ending::Close(Close::InsufficientState));
                }
                Err(_overflow) => return Err(Ending::Close(Close::SlowConsumer)),
            }
        }
        Ok(())
    }

    /// Acts on one classified inbound frame; `Some` ends the session.
    fn on_event(&mut self, event: Event) -> Option<Ending> {
        match event {
            Event::Text(said) => {
                self.node.metrics().message_received();
                self.reg
                    .outbox()
                    .push(protocol::text_frame(&text::you_said(&said)));
                self.node.relay(&said, self.reg.id());
                None
            }
            Event::Ping(payload) => {
                self.reg.outbox().push(protocol::pong_frame(&payload));
                None
            }
            Event::Nothing => None,
            Event::ClientClose(code) => Some(Ending::Echo(code)),
            Event::Violation(close) => Some(Ending::Close(close)),
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. A
/// rate of 0 never runs out.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// tokio's clock, so paused time drives it in tests.
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes one message from the budget; `false` when it is spent.
    fn spend(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Why the hub killed this connection (overflow, or idle).
fn kill_reason(reg: &Registration) -> Close {
    reg.outbox().killed_for().unwrap_or(Close::SlowConsumer)
}

fn read_failed(err: &WebSocketError) -> Ending {
    match Close::for_read_error(err) {
        Some(close) => {
            tracing::debug!(%err, code = close.code(), "closing on a bad frame");
            Ending::Close(close)
        }
        None => Ending::Gone,
    }
}

/// Writes every pending frame; a kill or forced close interrupts a write
/// blocked on a client that stopped reading. `Some` ends the session.
async fn flush<W>(
    node: &Node,
    reg: &Registration,
    writer: &mut W,
    pending: &mut VecDeque<Bytes>,
) -> Option<Ending>
where
    W: AsyncWrite + Unpin,
{
    if let Some(front) = reg.outbox().claim() {
        pending.push_front(front);
    }
    let count = pending.len();
    tokio::select! {
        // The write usually completes at once; the stop arms are only
        // polled when it has to wait.
        biased;
        written = write_frames(writer, pending) => match written {
            Ok(()) => {
                node.metrics().delivered(count);
                reg.outbox().release();
                None
            }
            Err(_) => Some(Ending::Gone),
        },
        _ = reg.outbox().killed() => Some(interrupted(pending, kill_reason(reg))),
        _ = node.shutdown().forced() => Some(interrupted(pending, Close::GoingAway)),
    }
}

/// Ends a session whose write was cut short: the front frame may be
/// half-written, so only it is kept, to be finished before the close frame.
fn interrupted(pending: &mut VecDeque<Bytes>, close: Close) -> Ending {
    pending.truncate(1);
    Ending::Cut(close)
}

/// Writes `frames` with as few `writev` calls as the socket allows.
async fn write_frames<W>(writer: &mut W, frames: &mut VecDeque<Bytes>) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while !frames.is_empty() {
        // The slices live on the stack of each poll, not in the session's
        // future across the await: 1 KiB less per connection.
        let mut written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = frames
                .iter()
                .zip(slices.iter_mut())
                .map(|(frame, slice)| *slice = IoSlice::new(frame))
                .count();
            Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            if front.len() <= written {
                written -= front.len();
                frames.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    writer.flush().await
}

/// Ends the connection the way `ending` asks, after writing `frames` (the
/// tail of an interrupted frame, then whatever was still queued), never for
/// longer than the close grace per step, then shuts the socket down.
async fn close<S, W>(
    ending: Ending,
    mut frames: VecDeque<Bytes>,
    mut inbound: std::pin::Pin<&mut S>,
    writer: &mut W,
) where
    S: Stream<Item = Result<Inbound, WebSocketError>>,
    W: AsyncWrite + Unpin,
{
    let frame = match ending {
        Ending::Gone => return,
        Ending::Echo(code) => protocol::close_echo(code),
        Ending::Close(close) | Ending::Cut(close) => close.frame(),
    };
    let initiated = matches!(ending, Ending::Close(_) | Ending::Cut(_));
    frames.push_back(frame);
    let sent = timeout(CLOSE_GRACE, write_frames(writer, &mut frames)).await;
    if initiated && matches!(sent, Ok(Ok(()))) {
        // Wait for the client's close frame (or EOF), skipping data frames.
        let answered = async {
            while let Some(Ok(frame)) = inbound.next().await {
                if frame.opcode == fastwebsockets::OpCode::Close {
                    break;
                }
            }
        };
        let _ = timeout(CLOSE_GRACE, answered).await;
    }
    let _ = timeout(CLOSE_GRACE, writer.shutdown()).await;
}

/// The client's frames as a stream. The read in progress is stored in the
/// stream, so dropping a `next()` future in `select!` loses nothing. The
/// stream ends after the first error.
///
/// fastwebsockets gives every reader an 8 KiB buffer. Most notification
/// clients only listen, so the reader is built when the client's first byte
/// arrives: an idle connection never holds that buffer.
fn frames<R>(io: R, max_message_size: usize) -> impl Stream<Item = Result<Inbound, WebSocketError>>
where
    R: AsyncRead + Unpin,
{
    futures_util::stream::unfold(Reading::Idle(io), move |state| async move {
        let mut reader = match state {
            Reading::Idle(io) => reader(io, max_message_size).await?,
            Reading::Active(reader) => reader,
            Reading::Done => return None,
        };
        // Never called: auto-pong and auto-close are off.
        let mut no_obligations = |_| async { Ok::<(), Infallible>(()) };
        let read = reader
            .read_frame(&mut no_obligations)
            .await
            .map(Inbound::from_frame);
        let next = if read.is_ok() {
            Reading::Active(reader)
        } else {
            Reading::Done
        };
        Some((read, next))
    })
}

/// The state of [`frames`].
enum Reading<R> {
    /// Nothing received yet: no reader, no buffer.
    Idle(R),
    Active(WebSocketRead<Chain<Cursor<[u8; 1]>, R>>),
    Done,
}

/// Waits for the client's first byte, then builds the reader around it.
/// `None` when the client leaves (or fails) before sending anything.
async fn reader<R>(
    mut io: R,
    max_message_size: usize,
) -> Option<WebSocketRead<Chain<Cursor<[u8; 1]>, R>>>
where
    R: AsyncRead + Unpin,
{
    let mut first = [0u8; 1];
    match io.read(&mut first).await {
        Ok(1) => {}
        _ => return None,
    }
    let (mut reader, _) = after_handshake_split(
        AsyncReadExt::chain(Cursor::new(first), io),
        tokio::io::sink(),
        Role::Server,
    );
    // Pings and closes are answered by the session through the outbox, so
    // the reader never needs a writer; the size check allows exactly
    // MAX_MESSAGE_SIZE.
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    reader.set_max_message_size(max_message_size.saturating_add(1));
    Some(reader)
}

#[cfg(test)]
mod tests {
    //! The session alone, over an in-memory pipe, with tokio's clock paused:
    //! no sockets, no sleeps, and timers (the error budget's refill, the
    //! drain's deadline) driven by advancing time.

    use std::time::Duration;

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::Config;

    /// The client's end of the pipe.
    struct Client {
        read: ReadHalf<DuplexStream>,
        write: WriteHalf<DuplexStream>,
    }

    impl Client {
        /// Sends one masked text frame.
        async fn send(&mut self, text: &str) {
            let mask = [1u8, 2, 3, 4];
            let payload = text.as_bytes();
            assert!(payload.len() < 126, "the test client sends short frames");
            let mut frame = vec![0x81, 0x80 | payload.len() as u8];
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            self.write.write_all(&frame).await.unwrap();
        }

        /// Reads one server frame: (opcode, payload).
        async fn frame(&mut self) -> (u8, Vec<u8>) {
            let mut head = [0u8; 2];
            self.read.read_exact(&mut head).await.unwrap();
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.read.read_exact(&mut n).await.unwrap();
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.read.read_exact(&mut n).await.unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.read.read_exact(&mut payload).await.unwrap();
            (head[0] & 0x0f, payload)
        }

        /// The next text frame's text.
        async fn text(&mut self) -> String {
            let (opcode, payload) = self.frame().await;
            assert_eq!(opcode, 0x1, "expected a text frame");
            String::from_utf8(payload).unwrap()
        }

        /// Reads until the close frame; returns its code.
        async fn close_code(&mut self) -> u16 {
            loop {
                let (opcode, payload) = self.frame().await;
                if opcode == 0x8 {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
            }
        }
    }

    /// No tickers, and history off: most tests here are about the dialect
    /// itself (the last ones turn history on).
    fn config() -> Config {
        Config {
            notification_interval: Duration::ZERO,
            heartbeat_interval: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            history_size: 0,
            ..Config::default()
        }
    }

    /// A node and one tracked session of `user` on it, as the upgrade
    /// starts it.
    fn start(config: Config, opening: Opening) -> (Arc<Node>, Client) {
        start_on(Node::new(config).unwrap(), opening)
    }

    /// One more tracked session on `node`.
    fn start_on(node: Arc<Node>, opening: Opening) -> (Arc<Node>, Client) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let (read, write) = tokio::io::split(client);
        let session = run(
            node.clone(),
            (server_read, server_write),
            None,
            "u1".into(),
            opening,
        );
        node.shutdown().spawn_session(session);
        (node, Client { read, write })
    }

    /// Starts the drain as a SIGTERM would; the handle gives its outcome.
    fn drain(node: &Arc<Node>) -> JoinHandle<crate::shutdown::Outcome> {
        let node = node.clone();
        tokio::spawn(async move { node.drain(futures_util::stream::pending()).await })
    }

    #[tokio::test(start_paused = true)]
    async fn greets_echoes_and_answers_the_close() {
        let (_node, mut client) = start(config(), Opening::Text);
        assert_eq!(client.text().await, text::CONNECTED);
        client.send("hello").await;
        assert_eq!(client.text().await, "You said: hello");
        // A close frame with 1000 is echoed.
        client
            .write
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
            .await
            .unwrap();
        assert_eq!(client.close_code().await, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_error_budget_refills_with_time_and_then_runs_out() {
        let opening = Opening::Json {
            room: Some("r".into()),
            since: None,
        };
        let (_node, mut client) = start(config(), opening);
        assert!(client.text().await.contains(r#""type":"room.joined""#));
        for _ in 0..ERROR_BURST as usize {
            client.send("not json").await;
            assert!(client.text().await.contains(r#""code":"invalid_json""#));
        }
        // A second later one more error is allowed ...
        tokio::time::advance(Duration::from_millis(1_001)).await;
        client.send("not json").await;
        assert!(client.text().await.contains(r#""code":"invalid_json""#));
        // ... and the next one, with the budget empty, is answered and closes.
        client.send("not json").await;
        assert!(client.text().await.contains(r#""code":"invalid_json""#));
        assert_eq!(client.close_code().await, Close::Abuse.code());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_notice_then_the_forced_close_at_the_deadline() {
        let config = Config {
            shutdown_timeout: Duration::from_secs(30),
            ..config()
        };
        let (node, mut client) = start(config, Opening::Text);
        assert_eq!(client.text().await, text::CONNECTED);
        let started = tokio::time::Instant::now();
        let outcome = drain(&node);
        assert_eq!(client.text().await, text::SHUTDOWN_NOTICE);
        // The client stays; at the deadline it is closed with 1001.
        assert_eq!(client.close_code().await, Close::GoingAway.code());
        assert!(started.elapsed() >= Duration::from_secs(30));
        match outcome.await.unwrap() {
            crate::shutdown::Outcome::Forced { remaining, .. } => assert_eq!(remaining, 1),
            other => panic!("expected a forced close, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_cut_short_by_the_forced_close_sends_no_later_frame() {
        let config = Config {
            shutdown_timeout: Duration::from_secs(5),
            ..config()
        };
        let node = Node::new(config).unwrap();
        // A pipe smaller than two messages: the session's write blocks.
        let (client, server) = tokio::io::duplex(4096);
        let (read, write) = tokio::io::split(client);
        let session = run(
            node.clone(),
            tokio::io::split(server),
            None,
            "u1".into(),
            Opening::Text,
        );
        node.shutdown().spawn_session(session);
        let mut client = Client { read, write };
        assert_eq!(client.text().await, text::CONNECTED);
        let message = |i: usize| format!("m{i}{}", "x".repeat(3000));
        // Three taken at once (the session writes one and a part, and
        // blocks), a fourth queued behind them.
        for i in 0..3 {
            node.relay(&message(i), 0);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        node.relay(&message(3), 0);
        // The deadline passes with the client not reading: 1001 cuts the
        // write; the client reads again within the close's grace.
        let outcome = drain(&node);
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let mut seen = Vec::new();
        let code = loop {
            let (opcode, payload) = client.frame().await;
            match opcode {
                0x1 => seen.push(String::from_utf8(payload).unwrap()),
                0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
                other => panic!("unexpected opcode {other}"),
            }
        };
        assert_eq!(code, Close::GoingAway.code());
        // Whatever arrived is a prefix of what was sent: no later message
        // behind a dropped one.
        for (i, got) in seen.iter().enumerate() {
            assert_eq!(got, &format!("New message: {}", message(i)), "message {i}");
        }
        assert!(
            seen.len() >= 2,
            "the begun message is finished: {}",
            seen.len()
        );
        outcome.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_during_the_drain_ends_it() {
        let opening = Opening::Json {
            room: Some("r".into()),
            since: None,
        };
        let (node, mut client) = start(config(), opening);
        client.text().await; // room.joined
        let outcome = drain(&node);
        assert!(client.text().await.contains(r#""type":"system.shutdown""#));
        drop(client);
        assert!(matches!(
            outcome.await.unwrap(),
            crate::shutdown::Outcome::Drained(_)
        ));
    }

    /// A JSON session `path`-like opening from `since` (a raw value).
    fn json(since: Option<String>) -> Opening {
        Opening::Json { room: None, since }
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_session_resumes_from_history_until_the_ttl_has_passed() {
        let config = Config {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..config()
        };
        let node = Node::new(config.clone()).unwrap();
        let stream = crate::stream::Stream::User("u1".into());
        let first = node
            .publish(&stream, "one", None)
            .await
            .unwrap()
            .at
            .unwrap();
        node.publish(&stream, "two", None).await.unwrap();
        let given = format!("user:u1~{}~0", first.epoch);
        let (client_node, mut client) = start_on(node.clone(), json(Some(given.clone())));
        let position = client.text().await;
        assert!(
            position.contains(r#""stream":"user:u1""#) && position.contains(r#""recovered":true"#),
            "{position}"
        );
        assert!(client.text().await.contains(r#""data":"one""#));
        assert!(client.text().await.contains(r#""data":"two""#));
        assert!(client.text().await.contains(r#""stream":"broadcast""#));
        drop(client_node);
        // A minute later (paused time) the messages are gone: too_old.
        tokio::time::advance(Duration::from_secs(61)).await;
        let (_, mut late) = start_on(node, json(Some(given)));
        let position = late.text().await;
        assert!(
            position.contains(r#""recovered":false,"reason":"too_old""#),
            "{position}"
        );
    }
}
