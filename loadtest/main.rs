//! Goose load scenarios against a running wsnotify.
//!
//! ```text
//! cargo run --release --bin loadtest -- --host http://127.0.0.1:8050 \
//!     -u 1000 -r 100 -t 60s --report-file report.html
//! ```
//!
//! Every flag is goose's own (`--help` lists them). Worth knowing:
//!
//! * `-r` is `--increase-rate`, users started per second; goose 0.19 has no
//!   `--hatch-rate`.
//! * goose resets its metrics once every user has started, which throws away
//!   the `ws_connect` timings of the on-start connects; `--no-reset-metrics`
//!   keeps them.
//! * `--scenarios chatters,listeners` runs only those scenarios. goose matches
//!   machine names, which drop the underscore: the reconnect storm is
//!   `reconnectstorm`, the room chatters `roomchatters` (`--scenarios-list`
//!   prints them all).
//! * `--host` defaults to `http://127.0.0.1:8050`; WebSockets go to the same
//!   host with `ws://` (`wss://` for an `https://` host is not supported).
//!
//! Scenarios (weights in brackets decide how the users are shared out):
//!
//! * `chatters` [2]: every 1–5 s send a text and time the `You said: <text>`
//!   round trip: `WS ws_echo`, a failure after 5 s without it.
//! * `listeners` [6]: hold a connection as user `lt-<n>` and take in what
//!   arrives; payloads stamped by the publishers give the publish-to-receive
//!   latency, `WS ws_broadcast_latency` and `WS ws_notify_latency`.
//! * `publishers` [1]: `POST /broadcast` with `lt:<unix_micros>:<seq>` and
//!   `POST /notify/lt-<n>` with `ltn:<unix_micros>:<seq>`, through goose's
//!   HTTP client so goose times them (`POST /notify/{user}` in the report).
//! * `reconnect_storm` [1]: connect, read the greeting, drop the socket,
//!   again every 0.1–0.5 s.
//! * `room_chatters` [2]: join `/ws/rooms/lt-<n % 10>` as `rc-<n>` (the
//!   typed JSON protocol), and every 1–5 s send a `chat.message` and time
//!   its `chat.delivery` coming back: `WS ws_room_echo`. Each line also
//!   reaches the other members of the room, about a tenth of these users.
//!
//! `WS ws_connect` is the time from starting the TCP connect to holding the
//! greeting (`🟢 Connected to server`): what a client waits before the
//! connection is any use. Chatters and listeners connect in an on-start
//! transaction and reconnect in their next transaction if the connection is
//! lost; both are recorded.
//!
//! goose 0.19 has no WebSocket client, so each user keeps its own
//! tokio-tungstenite connection in its goose session data and reports
//! timings with `GooseUser::record_custom_request_duration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use goose::prelude::*;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// The first frame the server sends on every connection.
const GREETING: &str = "🟢 Connected to server";
/// goose's method column for the WebSocket timings; no whitespace allowed.
const WS: &str = "WS";
/// Longest wait for the TCP connect, the upgrade and the greeting together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the echo of a chatter's text before it counts as failed.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one listener transaction takes in frames. Short, so that a user
/// notices the end of the load test quickly; back to back, so nothing waits.
const DRAIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest wait for the server's answer to our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed reconnect, so a dead server is not hammered in a loop
/// by the listeners, which have no wait time.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Listener ids handed out so far: listeners are `lt-0`, `lt-1`, … and the
/// publishers notify `lt-<seq % LISTENERS>`, so a notification finds a user.
static LISTENERS: AtomicUsize = AtomicUsize::new(0);
/// Sequence number of the publishers' payloads, unique across publishers.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// Sequence number of the chatters' texts, unique so an echo is unambiguous.
static CHATTED: AtomicU64 = AtomicU64::new(0);
/// Rooms the room chatters share out: `lt-0` … `lt-9`.
const ROOMS: usize = 10;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Failure = Box<TransactionError>;

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    GooseAttack::initialize()?
        .set_default(GooseDefault::Host, "http://127.0.0.1:8050")?
        .register_scenario(chatters()?)
        .register_scenario(listeners()?)
        .register_scenario(publishers()?)
        .register_scenario(reconnect_storm()?)
        .register_scenario(room_chatters()?)
        .execute()
        .await?;
    Ok(())
}

fn chatters() -> Result<Scenario, GooseError> {
    Ok(scenario!("chatters")
        .set_weight(2)?
        .set_wait_time(Duration::from_secs(1), Duration::from_secs(5))?
        .register_transaction(
            transaction!(connect_chatter)
                .set_name("connect")
                .set_on_start(),
        )
        .register_transaction(transaction!(chat).set_name("chat"))
        .register_transaction(
            transaction!(disconnect)
                .set_name("disconnect")
                .set_on_stop(),
        ))
}

fn room_chatters() -> Result<Scenario, GooseError> {
    Ok(scenario!("room_chatters")
        .set_weight(2)?
        .set_wait_time(Duration::from_secs(1), Duration::from_secs(5))?
        .register_transaction(
            transaction!(connect_room_chatter)
                .set_name("connect")
                .set_on_start(),
        )
        .register_transaction(transaction!(room_chat).set_name("room_chat"))
        .register_transaction(
            transaction!(disconnect)
                .set_name("disconnect")
                .set_on_stop(),
        ))
}

fn listeners() -> Result<Scenario, GooseError> {
    // No wait time: the drain transaction itself waits for frames.
    Ok(scenario!("listeners")
        .set_weight(6)?
        .register_transaction(
            transaction!(connect_listener)
                .set_name("connect")
                .set_on_start(),
        )
        .register_transaction(transaction!(listen).set_name("listen"))
        .register_transaction(
            transaction!(disconnect)
                .set_name("disconnect")
                .set_on_stop(),
        ))
}

fn publishers() -> Result<Scenario, GooseError> {
    // Each broadcast reaches every connected client, so the publishers' pace
    // multiplies into the listeners' load: one publish every 1–3 s each.
    Ok(scenario!("publishers")
        .set_weight(1)?
        .set_wait_time(Duration::from_secs(1), Duration::from_secs(3))?
        .register_transaction(transaction!(broadcast).set_name("broadcast"))
        .register_transaction(transaction!(notify).set_name("notify")))
}

fn reconnect_storm() -> Result<Scenario, GooseError> {
    // A short pause between reconnects: without one a few users open tens of
    // thousands of sockets a second and run the client machine out of ports
    // (each dropped socket sits in TIME_WAIT) rather than load the server.
    Ok(scenario!("reconnect_storm")
        .set_weight(1)?
        .set_wait_time(Duration::from_millis(100), Duration::from_millis(500))?
        .register_transaction(transaction!(reconnect).set_name("reconnect")))
}

// ---------------------------------------------------------------- transactions

/// On start: connect as chatter `chat-<user index>`.
async fn connect_chatter(user: &mut GooseUser) -> TransactionResult {
    let id = format!("chat-{}", user.weighted_users_index);
    let session = Session::new(user, format!("/ws/{id}"), id, Greeting::Text);
    let conn = session.checkout(user).await?;
    session.keep(conn).await;
    Ok(())
}

/// On start: connect as listener `lt-<n>`, the ids the publishers notify.
async fn connect_listener(user: &mut GooseUser) -> TransactionResult {
    let id = format!("lt-{}", LISTENERS.fetch_add(1, Ordering::Relaxed));
    let session = Session::new(user, format!("/ws/{id}"), id, Greeting::Text);
    let conn = session.checkout(user).await?;
    session.keep(conn).await;
    Ok(())
}

/// On start: join room `lt-<n % ROOMS>` as `rc-<n>`.
async fn connect_room_chatter(user: &mut GooseUser) -> TransactionResult {
    let n = user.weighted_users_index;
    let id = format!("rc-{n}");
    let path = format!("/ws/rooms/lt-{}?user={id}", n % ROOMS);
    let session = Session::new(user, path, id, Greeting::Roster);
    let conn = session.checkout(user).await?;
    session.keep(conn).await;
    Ok(())
}

/// Sends one text and times its `You said:` echo, skipping any other frame.
async fn chat(user: &mut GooseUser) -> TransactionResult {
    let session = Session::of(user)?;
    let seq = CHATTED.fetch_add(1, Ordering::Relaxed);
    let text = format!("{}:{seq}", session.client_id);
    let echo = format!("You said: {text}");
    round_trip(user, &session, "ws_echo", &text, |frame| frame == echo).await
}

/// Says one line in the room and times its `chat.delivery` coming back.
async fn room_chat(user: &mut GooseUser) -> TransactionResult {
    let session = Session::of(user)?;
    let seq = CHATTED.fetch_add(1, Ordering::Relaxed);
    let text = format!("{}:{seq}", session.client_id);
    let room = format!("lt-{}", user.weighted_users_index % ROOMS);
    let message = json!({ "type": "chat.message", "room": room, "text": text }).to_string();
    // Our own encoding puts `"text"` after `"user"`: a substring is enough.
    let needle = format!(r#""text":"{text}""#);
    round_trip(user, &session, "ws_room_echo", &message, |frame| {
        frame.starts_with(r#"{"type":"chat.delivery""#) && frame.contains(&needle)
    })
    .await
}

/// Sends `message` and records as `name` the time until the frame `answer`
/// accepts arrives, skipping any other frame.
async fn round_trip(
    user: &mut GooseUser,
    session: &Session,
    name: &str,
    message: &str,
    answer: impl Fn(&str) -> bool,
) -> TransactionResult {
    let mut conn = session.checkout(user).await?;
    let sent = Instant::now();
    let echo = match conn.send(message).await {
        Ok(()) => conn.wait_for(answer, sent + ECHO_TIMEOUT).await,
        Err(lost) => Err(lost),
    };
    match echo {
        Ok(arrived) => {
            session.keep(conn).await;
            record(user, name, arrived.duration_since(sent), None).await
        }
        Err(Wait::TimedOut) => {
            // A late echo is skipped by the next wait; the socket stays.
            session.keep(conn).await;
            record(user, name, sent.elapsed(), Some("echo timed out")).await?;
            Err(fail(format!("no echo within {ECHO_TIMEOUT:?}")))
        }
        Err(Wait::Lost(why)) => {
            // `conn` is dropped here; the next transaction reconnects.
            record(user, name, sent.elapsed(), Some(&why)).await?;
            Err(fail(why))
        }
    }
}

/// Takes in frames for `DRAIN_WINDOW`, timing the publishers' stamped ones.
async fn listen(user: &mut GooseUser) -> TransactionResult {
    let session = Session::of(user)?;
    let mut conn = match session.checkout(user).await {
        Ok(conn) => conn,
        Err(failure) => {
            tokio::time::sleep(RETRY_PAUSE).await;
            return Err(failure);
        }
    };
    let deadline = Instant::now() + DRAIN_WINDOW;
    loop {
        match conn.next_frame(deadline).await {
            Ok(frame) => {
                if let Some((name, latency)) = publish_latency(&frame) {
                    record(user, name, latency, None).await?;
                }
            }
            Err(Wait::TimedOut) => break,
            Err(Wait::Lost(why)) => return Err(fail(why)),
        }
    }
    session.keep(conn).await;
    Ok(())
}

/// On stop: close the connection politely, so the server sees a 1000 close
/// rather than a vanished client.
async fn disconnect(user: &mut GooseUser) -> TransactionResult {
    if let Some(session) = user.get_session_data::<Session>().cloned()
        && let Some(conn) = session.conn.lock().await.take()
    {
        conn.close().await;
    }
    Ok(())
}

/// `POST /broadcast` with a stamped payload every client receives verbatim.
async fn broadcast(user: &mut GooseUser) -> TransactionResult {
    let body = json!({ "message": stamp("lt") });
    user.post_json("/broadcast", &body).await?;
    Ok(())
}

/// `POST /notify/lt-<n>` with a stamped payload for one listener's sockets.
/// All targets share one name in the report, `/notify/{user}`.
async fn notify(user: &mut GooseUser) -> TransactionResult {
    let body = json!({ "message": stamp("ltn") });
    let listeners = LISTENERS.load(Ordering::Relaxed).max(1) as u64;
    let target = PUBLISHED.load(Ordering::Relaxed) % listeners;
    let path = format!("/notify/lt-{target}");
    let builder = user.get_request_builder(&GooseMethod::Post, &path)?;
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path(path.as_str())
        .name("/notify/{user}")
        .set_request_builder(builder.json(&body))
        .build();
    user.request(request).await?;
    Ok(())
}

/// Connects, takes the greeting (timed as `ws_connect`) and drops the
/// socket without a close frame, as a client whose network vanished: the
/// server has to notice the end of the socket and forget the client.
async fn reconnect(user: &mut GooseUser) -> TransactionResult {
    let id = format!("storm-{}", user.weighted_users_index);
    let ws = open_recorded(user, &format!("/ws/{id}"), Greeting::Text).await?;
    drop(ws);
    Ok(())
}

// ---------------------------------------------------------------- session

/// One user's WebSocket, kept in its goose session data.
///
/// goose wants session data to be `Clone + Send + Sync` and a socket is not
/// `Clone`, hence the `Arc<Mutex<…>>`. goose runs one transaction of a user
/// at a time, so the lock is never contended: a transaction takes the
/// connection out, and hands it back only while it is healthy. A connection
/// that failed is simply dropped, and the next transaction reconnects.
#[derive(Clone)]
struct Session {
    /// The path to connect to (`/ws/<id>` or `/ws/rooms/<room>?user=<id>`).
    path: Arc<str>,
    client_id: Arc<str>,
    greeting: Greeting,
    conn: Arc<Mutex<Option<Conn>>>,
}

/// What the first frame of a connection must be.
#[derive(Clone, Copy)]
enum Greeting {
    /// `🟢 Connected to server` (`/ws`).
    Text,
    /// `{"type":"room.joined",…}` (`/ws/rooms/{room}`).
    Roster,
}

impl Greeting {
    fn accepts(self, text: &str) -> bool {
        match self {
            Greeting::Text => text == GREETING,
            Greeting::Roster => text.starts_with(r#"{"type":"room.joined""#),
        }
    }
}

impl Session {
    /// A new, unconnected session of `client_id` on `path`, stored in `user`.
    fn new(user: &mut GooseUser, path: String, client_id: String, greeting: Greeting) -> Session {
        let session = Session {
            path: path.into(),
            client_id: client_id.into(),
            greeting,
            conn: Arc::new(Mutex::new(None)),
        };
        user.set_session_data(session.clone());
        session
    }

    /// The session the on-start transaction stored.
    fn of(user: &GooseUser) -> Result<Session, Failure> {
        user.get_session_data::<Session>()
            .cloned()
            .ok_or_else(|| fail("no session: the on-start transaction did not run"))
    }

    /// Takes the connection out, opening a new one (timed) if there is none.
    async fn checkout(&self, user: &mut GooseUser) -> Result<Conn, Failure> {
        if let Some(conn) = self.conn.lock().await.take() {
            return Ok(conn);
        }
        let ws = open_recorded(user, &self.path, self.greeting).await?;
        Ok(Conn::start(ws))
    }

    /// Hands a healthy connection back for the next transaction.
    async fn keep(&self, conn: Conn) {
        *self.conn.lock().await = Some(conn);
    }
}

/// An open connection: the writing half, and the frames a reader task takes
/// off the socket.
///
/// The reader runs all the time, also while a chatter sleeps between
/// transactions. Otherwise broadcasts would pile up unread, the server would
/// cut the user off as a slow consumer (close 4008), and every frame would
/// carry the time it waited for the next transaction. It stamps each frame on
/// arrival, so the latencies do not include how late a transaction looks.
struct Conn {
    sink: SplitSink<Ws, Message>,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    reader: JoinHandle<()>,
}

/// What the reader task passes on.
enum Inbound {
    Text(Frame),
    /// The connection ended; why, for the error log.
    Ended(String),
}

/// A text frame and when it arrived.
struct Frame {
    text: Utf8Bytes,
    at: Instant,
    unix_micros: u64,
}

/// Why a wait for a frame ended without one.
enum Wait {
    TimedOut,
    Lost(String),
}

impl Conn {
    fn start(ws: Ws) -> Conn {
        let (sink, stream) = ws.split();
        let (tx, inbox) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(stream, tx));
        Conn {
            sink,
            inbox,
            reader,
        }
    }

    async fn send(&mut self, text: &str) -> Result<(), Wait> {
        match self.sink.send(Message::text(text)).await {
            Ok(()) => Ok(()),
            // The usual cause is that the server closed the connection while
            // the user slept; the reader then holds the better reason.
            Err(e) => Err(Wait::Lost(
                self.end_reason()
                    .unwrap_or_else(|| format!("send failed: {e}")),
            )),
        }
    }

    /// Why the reader stopped, if it did, skipping the frames before.
    fn end_reason(&mut self) -> Option<String> {
        while let Ok(inbound) = self.inbox.try_recv() {
            if let Inbound::Ended(why) = inbound {
                return Some(why);
            }
        }
        None
    }

    /// The next text frame, if one arrives before `deadline`.
    async fn next_frame(&mut self, deadline: Instant) -> Result<Frame, Wait> {
        match timeout_at(deadline, self.inbox.recv()).await {
            Err(_elapsed) => Err(Wait::TimedOut),
            Ok(Some(Inbound::Text(frame))) => Ok(frame),
            Ok(Some(Inbound::Ended(why))) => Err(Wait::Lost(why)),
            Ok(None) => Err(Wait::Lost("reader task stopped".into())),
        }
    }

    /// When the first frame `expected` accepts arrived; every other frame
    /// is skipped.
    async fn wait_for(
        &mut self,
        expected: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<Instant, Wait> {
        loop {
            let frame = self.next_frame(deadline).await?;
            if expected(frame.text.as_str()) {
                return Ok(frame.at);
            }
        }
    }

    /// Sends a close frame and waits a little for the server's answer, which
    /// ends the reader. Errors do not matter any more: the test is over.
    async fn close(mut self) {
        if self.sink.send(Message::Close(None)).await.is_ok() {
            let _ = timeout(CLOSE_TIMEOUT, &mut self.reader).await;
        }
    }
}

impl Drop for Conn {
    /// Stops the reader, which owns the reading half: with both halves gone
    /// the socket closes.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: passes text frames on, stamped, until the socket ends.
/// Pings are answered by tungstenite itself; binary frames are not expected.
async fn read_frames(mut stream: SplitStream<Ws>, tx: mpsc::UnboundedSender<Inbound>) {
    let why = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame = Frame {
                    text,
                    at: Instant::now(),
                    unix_micros: unix_micros(),
                };
                if tx.send(Inbound::Text(frame)).is_err() {
                    return; // the connection was dropped
                }
            }
            Some(Ok(Message::Close(Some(close)))) => {
                break format!("closed by the server: {} {}", close.code, close.reason);
            }
            Some(Ok(Message::Close(None))) => break "closed by the server".to_string(),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("read failed: {e}"),
            None => break "socket ended".to_string(),
        }
    };
    let _ = tx.send(Inbound::Ended(why));
}

// ---------------------------------------------------------------- connecting

/// Opens the WebSocket at `path` and records the time to the greeting as
/// `ws_connect`, a failure if there is no greeting.
async fn open_recorded(
    user: &mut GooseUser,
    path: &str,
    greeting: Greeting,
) -> Result<Ws, Failure> {
    let url = ws_url(user, path)?;
    let started = Instant::now();
    let opened = match timeout(CONNECT_TIMEOUT, open(&url, greeting)).await {
        Ok(opened) => opened,
        Err(_elapsed) => Err(format!("no greeting within {CONNECT_TIMEOUT:?}")),
    };
    let error = opened.as_ref().err().map(String::as_str);
    record(user, "ws_connect", started.elapsed(), error).await?;
    opened.map_err(fail)
}

/// Connects and reads the greeting, which must be the first text frame.
async fn open(url: &str, greeting: Greeting) -> Result<Ws, String> {
    let (mut ws, _response) = connect_async(url)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if greeting.accepts(text.as_str()) => return Ok(ws),
            Some(Ok(Message::Text(text))) => {
                return Err(format!("first frame is not the greeting: {text}"));
            }
            Some(Ok(Message::Close(close))) => return Err(format!("closed: {close:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read failed: {e}")),
            None => return Err("socket ended before the greeting".to_string()),
        }
    }
}

/// `ws://host<path>` for goose's `http://host` (`--host`).
fn ws_url(user: &GooseUser, path: &str) -> Result<String, Failure> {
    let http = user.build_url(path)?;
    if let Some(rest) = http.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else if let Some(rest) = http.strip_prefix("https://") {
        Ok(format!("wss://{rest}"))
    } else {
        Err(fail(format!(
            "--host must be http:// or https://, not {http}"
        )))
    }
}

// ---------------------------------------------------------------- metrics

/// Records one WebSocket timing in goose's request metrics, method `WS`.
async fn record(
    user: &mut GooseUser,
    name: &str,
    took: Duration,
    error: Option<&str>,
) -> TransactionResult {
    user.record_custom_request_duration(WS, name, took, error.is_none(), None, error)
        .await
}

/// A publisher's payload: `<prefix>:<unix_micros>:<seq>`.
fn stamp(prefix: &str) -> String {
    let seq = PUBLISHED.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}:{}:{seq}", unix_micros())
}

/// For a publisher's payload, the metric it feeds and the time from the
/// publish to the frame's arrival. The clocks agree when the publishers and
/// listeners run in one process, as here.
fn publish_latency(frame: &Frame) -> Option<(&'static str, Duration)> {
    let text = frame.text.as_str();
    let (name, rest) = if let Some(rest) = text.strip_prefix("lt:") {
        ("ws_broadcast_latency", rest)
    } else if let Some(rest) = text.strip_prefix("ltn:") {
        ("ws_notify_latency", rest)
    } else {
        return None; // chat relays, periodic notifications, …
    };
    let sent: u64 = rest.split(':').next()?.parse().ok()?;
    let micros = frame.unix_micros.saturating_sub(sent);
    Some((name, Duration::from_micros(micros)))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

fn fail(why: impl Into<String>) -> Failure {
    Box::new(TransactionError::Custom(why.into()))
}
