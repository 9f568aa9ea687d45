//! Shared test helpers: an in-process server on port 0, real WebSocket
//! clients (tokio-tungstenite), a raw frame client for malformed input, and a
//! small HTTP client (hyper). No fixed ports, no sleeps where an event can be
//! awaited.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod history;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod resume;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsnotify::{Config, Outcome, server};

/// How long any single expected event may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    signals: mpsc::UnboundedSender<()>,
    handle: JoinHandle<Result<Outcome, wsnotify::ServerError>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with `config`.
    pub async fn start(config: Config) -> Self {
        // Server logs go to the test's captured output (shown on failure).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(filter)
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (signals, rx) = mpsc::unbounded_channel();
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        }));
        let handle = tokio::spawn(server::run(listener, config, stream));
        TestServer {
            addr,
            signals,
            handle,
        }
    }

    /// A server with the periodic notifier off, so tests see only their own
    /// traffic, and history off (see [`quiet_config`]).
    pub async fn quiet() -> Self {
        Self::start(quiet_config()).await
    }

    /// Delivers one shutdown signal (the first drains, the second forces).
    pub fn signal(&self) {
        let _ = self.signals.send(());
    }

    /// Waits for the server to return.
    pub async fn finished(self) -> Outcome {
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server did not stop")
            .unwrap()
            .expect("server failed")
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects a real WebSocket client to `path` and reads the greeting.
pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let mut ws = connect_raw(addr, path).await;
    assert_eq!(next_text(&mut ws).await, "🟢 Connected to server");
    ws
}

/// Connects without reading anything.
pub async fn connect_raw(addr: SocketAddr, path: &str) -> Ws {
    let (ws, res) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("WebSocket connect");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next text message, skipping pings and pongs.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match next_message(ws).await {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next message of any kind.
pub async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("timed out waiting for a message")
        .expect("stream ended")
        .expect("WebSocket error")
}

/// Reads until the server's close frame and returns it.
pub async fn close_frame(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("error before close frame: {err}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Sends a text message.
pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Asserts that nothing arrives for a short while.
pub async fn assert_silent(ws: &mut Ws) {
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
        panic!("expected silence, got {msg:?}");
    }
}

/// An HTTP response, body as text.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request over a fresh connection.
pub async fn http(addr: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
    http_with(addr, method, path, body, &[]).await
}

/// Like [`http`], with extra headers.
pub async fn http_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("HTTP timeout")
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `POST /broadcast` with `{"message": message}`.
pub async fn broadcast(addr: SocketAddr, message: &str) -> Reply {
    let body = serde_json::json!({ "message": message }).to_string();
    http(addr, Method::POST, "/broadcast", &body).await
}

/// A client that writes raw frames, for input a well-behaved library refuses to send.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Frame opcodes for [`RawWs::send_frame`].
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
}

impl RawWs {
    /// Performs the handshake by hand and reads the greeting.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut raw = Self::handshake(addr, path).await;
        let (opcode, payload) = raw.read_frame().await.expect("greeting");
        assert_eq!(
            (opcode, payload.as_slice()),
            (op::TEXT, "🟢 Connected to server".as_bytes())
        );
        raw
    }

    /// Performs the handshake by hand and reads nothing after the 101 (room
    /// connections start with `room.joined`, not the greeting).
    pub async fn handshake(addr: SocketAddr, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Fragments go out as they are written, not held back by Nagle.
        stream.set_nodelay(true).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(pos) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            assert!(
                raw.fill().await > 0,
                "connection closed during the handshake"
            );
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        raw.buf.drain(..head_end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("timed out reading")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Writes one masked frame with `first_byte` = FIN/RSV bits | opcode.
    pub async fn send_raw(&mut self, first_byte: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first_byte];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // The server may close before reading everything; that is the point of some tests.
        let _ = self.stream.write_all(&frame).await;
    }

    /// Writes bytes as they are.
    pub async fn send_raw_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(((fin as u8) << 7) | opcode, payload).await
    }

    /// Sends `text` as a text frame and continuations cut at `cuts` (sorted
    /// offsets), with a ping carrying `ping.1` right after fragment `ping.0`.
    pub async fn send_fragmented(
        &mut self,
        text: &[u8],
        cuts: &[usize],
        ping: Option<&(usize, Vec<u8>)>,
    ) {
        let mut parts = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for &cut in cuts {
            parts.push(&text[start..cut]);
            start = cut;
        }
        parts.push(&text[start..]);
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { op::TEXT } else { op::CONTINUATION };
            self.send_frame(i == last, opcode, part).await;
            if let Some((after, payload)) = ping
                && *after == i
            {
                self.send_frame(true, op::PING, payload).await;
            }
        }
    }

    /// Reads one server frame: `(opcode, payload)`, or `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((len, header)) = parse_len(&self.buf)
                && self.buf.len() >= header + len
            {
                let opcode = self.buf[0] & 0x0f;
                let payload = self.buf[header..header + len].to_vec();
                self.buf.drain(..header + len);
                return Some((opcode, payload));
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Reads frames until a close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == op::CLOSE {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

fn parse_len(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    match buf[1] & 0x7f {
        126 if buf.len() >= 4 => Some((u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)),
        127 if buf.len() >= 10 => Some((
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        )),
        126 | 127 => None,
        n => Some((n as usize, 2)),
    }
}

/// Polls `/metrics` until `line` appears (metrics are updated asynchronously).
pub async fn wait_for_metric(addr: SocketAddr, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = http(addr, Method::GET, "/metrics", "").await.body;
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric `{line}` never appeared:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/connections` reports `n`.
pub async fn wait_for_connections(addr: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now =
            http(addr, Method::GET, "/connections", "").await.json()["active_connections"].as_u64();
        if now == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "active_connections stayed {now:?}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Half-closes a raw client's TCP connection: the server reads EOF after the
/// bytes already sent, and the client can still read everything it answers.
pub async fn shutdown_write(raw: &mut RawWs) {
    let _ = raw.stream.shutdown().await;
}

/// Joins `room` as `user` over `/ws/rooms/{room}?user=` (a server without
/// tokens) and returns the socket with the `room.joined` roster.
pub async fn join_room(addr: SocketAddr, room: &str, user: &str) -> (Ws, Vec<String>) {
    let mut ws = connect_raw(addr, &format!("/ws/rooms/{room}?user={user}")).await;
    match next_json(&mut ws).await {
        wsnotify::protocol::json::ServerMessage::Joined {
            room: joined,
            users,
        } => {
            assert_eq!(joined, room);
            (ws, users)
        }
        other => panic!("expected room.joined, got {other:?}"),
    }
}

/// The next JSON-protocol message, skipping `system.ping` heartbeats and
/// the `stream.position` of each stream a connection starts following
/// (the tests of history read those with [`next_json_or_position`]).
pub async fn next_json(ws: &mut Ws) -> wsnotify::protocol::json::ServerMessage {
    loop {
        let message = next_json_or_position(ws).await;
        if !matches!(
            message,
            wsnotify::protocol::json::ServerMessage::Position { .. }
        ) {
            return message;
        }
    }
}

/// The next JSON-protocol message, skipping only `system.ping`.
pub async fn next_json_or_position(ws: &mut Ws) -> wsnotify::protocol::json::ServerMessage {
    loop {
        let text = next_text(ws).await;
        let message = wsnotify::protocol::json::ServerMessage::decode(&text)
            .unwrap_or_else(|err| panic!("not a server message ({err}): {text}"));
        if !matches!(
            message,
            wsnotify::protocol::json::ServerMessage::Ping { .. }
        ) {
            return message;
        }
    }
}

/// Sends a client message of the JSON protocol.
pub async fn send_json(ws: &mut Ws, message: &wsnotify::protocol::json::ClientMessage) {
    send(ws, &message.encode()).await;
}

/// Asserts `ts` (Unix ms) is the server's time of a moment ago.
pub fn assert_recent(ts: u64) {
    let now = wsnotify::protocol::json::now_ms();
    assert!(
        ts <= now && now - ts < 2 * PATIENCE.as_millis() as u64,
        "ts {ts} is not recent (now {now})"
    );
}

/// Reads the `chat.delivery` of `text` said by `user` in `room`; returns its
/// `id` and `ts`.
pub async fn expect_delivery(ws: &mut Ws, room: &str, user: &str, text: &str) -> (String, u64) {
    match next_json(ws).await {
        wsnotify::protocol::json::ServerMessage::Delivery {
            room: r,
            user: u,
            text: t,
            id,
            ts,
            ..
        } => {
            assert_eq!((r.as_str(), u.as_str(), t.as_str()), (room, user, text));
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "id {id:?} is no UUID");
            assert_recent(ts);
            (id, ts)
        }
        other => panic!("expected chat.delivery of {text:?} by {user} in {room}, got {other:?}"),
    }
}

/// The HTTP refusal of an upgrade: status, headers, JSON body.
pub async fn refusal(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body))
            });
            (res.status(), res.headers().clone(), json)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// An upgrade request for `path` with extra headers.
pub fn upgrade_request(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut req = server.url(path).into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    req
}

/// Kills `child` and everything it started (it must have been spawned with
/// `process_group(0)`): nginx's workers and chromedriver's Chromium outlive
/// a SIGKILL of their parent alone, and would hold the test's output open.
pub fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: killpg(2) on our own child's group has no memory effects.
        unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Cases of a live property: `PROPTEST_CASES` if set, else `default`.
pub fn live_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Runs `future` on a fresh runtime: nothing of one case outlives it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A configuration with the periodic notifier off, so clients see only
/// what the test sends, and history off: the suites of the live contract
/// check exactly what `HISTORY_SIZE=0` promises to keep (today's behaviour
/// before history existed). History's own suites use [`history_config`].
pub fn quiet_config() -> Config {
    Config {
        notification_interval: Duration::ZERO,
        history_size: 0,
        ..Config::default()
    }
}

/// [`quiet_config`] with history on, at its defaults.
pub fn history_config() -> Config {
    Config {
        history_size: wsnotify::config::DEFAULT_HISTORY_SIZE,
        ..quiet_config()
    }
}

/// A file of `fixtures/`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `chat.message` of `text` in `room`.
pub fn chat(room: &str, text: &str) -> wsnotify::protocol::json::ClientMessage {
    wsnotify::protocol::json::ClientMessage::ChatMessage {
        room: room.into(),
        text: text.into(),
    }
}

/// `room.join` of `room`.
pub fn join(room: &str) -> wsnotify::protocol::json::ClientMessage {
    wsnotify::protocol::json::ClientMessage::RoomJoin {
        room: room.into(),
        since: None,
    }
}

/// `room.leave` of `room`.
pub fn leave(room: &str) -> wsnotify::protocol::json::ClientMessage {
    wsnotify::protocol::json::ClientMessage::RoomLeave { room: room.into() }
}

/// `GET /rooms/{room}/presence`, expected 200 with a JSON body.
pub async fn presence(addr: SocketAddr, room: &str) -> serde_json::Value {
    let reply = http(addr, Method::GET, &format!("/rooms/{room}/presence"), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json()
}

/// A frame a raw client read, for failure messages.
pub fn show(frame: Option<&(u8, Vec<u8>)>) -> String {
    match frame {
        None => "the end of the connection".into(),
        Some((op::CLOSE, payload)) if payload.len() >= 2 => format!(
            "close {} {:?}",
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..])
        ),
        Some((opcode, payload)) => match std::str::from_utf8(payload) {
            Ok(text) => format!("opcode {opcode:#x} {text:?}"),
            Err(_) => format!("opcode {opcode:#x} {payload:?}"),
        },
    }
}

/// The raw client's next frame is exactly `opcode` with `payload`.
pub async fn expect_frame(
    raw: &mut RawWs,
    opcode: u8,
    payload: &[u8],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let got = raw.read_frame().await;
    let want = Some((opcode, payload.to_vec()));
    if got != want {
        return Err(proptest::test_runner::TestCaseError::fail(format!(
            "fuzzer expected {}, got {}",
            show(want.as_ref()),
            show(got.as_ref())
        )));
    }
    Ok(())
}
