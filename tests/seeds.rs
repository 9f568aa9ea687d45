//! The seeds' own clients and commands, run as their documents give them
//! (only host and port changed) against the real binary at its defaults
//! (history on; only the periodic notification is off, so the output is
//! the clients' own), so their users can move to wsnotify and keep their
//! clients (docs/MIGRATING.md):
//!
//! - seed 001: the simple Python `websockets` client, the reconnecting one
//!   (its three attempts, each ended by the server), and the `/health`
//!   checks with curl and jq, before and during a drain;
//! - seed 003: the PyJWT token recipe, and the websocat smoke test as a
//!   Python client sending the same frames with the same `Origin` and
//!   `?token=`, against `WS_PATH=room`: `room.joined`, the `chat.delivery`
//!   of u1, a `system.ping`; a bad token is refused;
//! - seed 004: the curl upgrade probe (400 naming the missing
//!   `Sec-WebSocket-Key`, 101 with a key, 401 first when tokens are on,
//!   404 on the nginx path `/api/v1/ws/…`), `redis-cli PUBLISH
//!   notifications:{id}` reaching that user's `/ws/notifications` client
//!   (wrapped, after its positions) and plain `/ws` client (verbatim), and
//!   what a backend's tokens need (a string `sub`; `aud` only with
//!   `JWT_AUDIENCE`).
//!
//! The clients are the files of `tests/seeds/`, each naming the seed lines
//! it came from; the one-line commands are constants below. Python is
//! Debian's `/usr/bin/python3` (the interpreter python3-websockets and
//! python3-jwt serve), or `WSNOTIFY_PYTHON`; `bash scripts/test-deps.sh`
//! installs them with curl, jq and redis-cli.

mod support;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hyper::{Method, StatusCode};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::history::{connect_following, text_of};
use support::process::Proc;
use support::redis::{Redis, wait_for_ready, wait_for_subscribers};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Split};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The longest one seed script or command may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// Seed 001, line 33: "Перевірка health check".
const HEALTH: &str = "curl http://localhost:8000/health";
/// Seed 001, line 476: "Перевірка кількості активних WebSocket з'єднань".
const ACTIVE_CONNECTIONS: &str = "curl -s http://localhost:8000/health | jq '.active_connections'";
/// Seed 001, line 273: what `watch -n 1 '…'` runs every second while the
/// server drains ("Термінал 3 - Моніторинг").
const WATCHED_HEALTH: &str = "curl -s http://localhost:8000/health | jq";
/// Seed 004, lines 93-96: "Проверить что порт 8000 слушает WebSocket".
const UPGRADE_PROBE: &str = r#"curl -i -N -H "Connection: Upgrade" \
  -H "Upgrade: websocket" \
  -H "Host: localhost:8000" \
  http://localhost:8000/api/v1/ws/notifications"#;
/// What a Celery task of seed 004 does ("публикуют уведомления в Redis канал
/// notifications:{user_id}"), as README.md writes it with redis-cli.
const WORKER_PUBLISH: &str =
    r#"redis-cli PUBLISH notifications:42 '{"type":"order.shipped","id":7}'"#;

/// The RFC 6455 sample key and the accept value it must get.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The binary as a user runs it: history at its default (the test
/// process turns it off unless asked), the periodic notification off so
/// that the clients' output is exactly theirs.
async fn start(env: &[(&str, &str)]) -> Proc {
    let history = wsnotify::config::DEFAULT_HISTORY_SIZE.to_string();
    let mut all = vec![("HISTORY_SIZE", history.as_str())];
    all.extend_from_slice(env);
    Proc::start(&all).await
}

fn python() -> String {
    std::env::var("WSNOTIFY_PYTHON").unwrap_or_else(|_| {
        let debian = "/usr/bin/python3";
        if Path::new(debian).exists() {
            debian
        } else {
            "python3"
        }
        .to_owned()
    })
}

/// A file of `tests/seeds/`.
fn seed_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/seeds")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with the seed's address replaced by the server's; the seed's must
/// be there, or nothing was pointed at the server.
fn relocated(text: &str, seed_addr: &str, addr: impl fmt::Display) -> String {
    assert!(
        text.contains(seed_addr),
        "{seed_addr} is not in the seed's text:\n{text}"
    );
    text.replace(seed_addr, &addr.to_string())
}

/// A seed script or command running as a child process.
struct Script {
    what: String,
    child: Child,
    /// Lines, split by hand: a probe's stdout may hold WebSocket frames.
    stdout: Split<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

/// How a script ended: its status and what it printed after the lines read.
struct Finished {
    what: String,
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ended with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.status,
            self.stdout.join("\n"),
            self.stderr
        )
    }
}

impl Script {
    /// Runs the Python program `source` (fed on stdin, unbuffered output).
    async fn python(what: &str, source: &str, env: &[(&str, &str)]) -> Script {
        let mut cmd = Command::new(python());
        cmd.arg("-")
            .env("PYTHONUNBUFFERED", "1")
            .envs(env.iter().copied());
        let mut script = Script::spawn(what, cmd).await;
        let mut stdin = script.child.stdin.take().unwrap();
        stdin.write_all(source.as_bytes()).await.unwrap();
        drop(stdin);
        script
    }

    /// Runs `line` with bash.
    async fn shell(line: &str) -> Script {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", line]);
        Script::spawn(line, cmd).await
    }

    async fn spawn(what: &str, mut cmd: Command) -> Script {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} (bash scripts/test-deps.sh): {e}"));
        let stdout = BufReader::new(child.stdout.take().unwrap()).split(b'\n');
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        Script {
            what: what.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    /// The next line it prints, within `within`.
    async fn line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.stdout.next_segment()).await {
            Ok(Ok(Some(line))) => text(&line),
            Ok(_) => {
                let stderr = (&mut self.stderr).await.unwrap_or_default();
                panic!(
                    "{} ended before its next line; stderr:\n{stderr}",
                    self.what
                )
            }
            Err(_) => panic!("{} printed nothing for {within:?}", self.what),
        }
    }

    /// Waits for the end (at most [`SCRIPT_LIMIT`]).
    async fn finish(mut self) -> Finished {
        let what = self.what.clone();
        let rest = async {
            let mut lines = Vec::new();
            while let Some(line) = self.stdout.next_segment().await.unwrap() {
                lines.push(text(&line));
            }
            (lines, self.child.wait().await.unwrap())
        };
        let (stdout, status) = tokio::time::timeout(SCRIPT_LIMIT, rest)
            .await
            .unwrap_or_else(|_| panic!("{what} still running after {SCRIPT_LIMIT:?}"));
        let stderr = self.stderr.await.unwrap();
        Finished {
            what,
            status,
            stdout,
            stderr,
        }
    }
}

/// A line of output as text, without curl's `\r`.
fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned()
}

/// Runs a seed command line to its end.
async fn shell(line: &str) -> Finished {
    Script::shell(line).await.finish().await
}

/// The JSON a command printed (curl's body, jq's pretty print).
fn printed_json(out: &Finished) -> Value {
    assert!(out.status.success(), "the command failed: {out}");
    serde_json::from_str(&out.stdout.join("\n")).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test]
async fn seed_001s_simple_client_is_greeted_then_hears_its_message_back() {
    let server = start(&[]).await;
    let source = relocated(
        &seed_file("001_simple_client.py"),
        "localhost:8000",
        server.addr,
    );
    let out = Script::python("001_simple_client.py", &source, &[])
        .await
        .finish()
        .await;
    assert!(out.status.success(), "the seed's client failed: {out}");
    assert_eq!(
        out.stdout,
        [
            "Сервер: 🟢 Connected to server",
            "Сервер: You said: Привіт, сервере!"
        ],
        "the seed's client printed something else: {out}"
    );
}

#[tokio::test]
async fn seed_001s_robust_client_reconnects_after_each_close_and_gives_up_after_three() {
    // Nothing from the client for 2 s: the server closes it (4000), which is
    // the seed client's ConnectionClosed; it retries after 5 s, three times.
    let server = start(&[("IDLE_TIMEOUT", "2"), ("HEARTBEAT_INTERVAL", "0")]).await;
    let source = relocated(
        &seed_file("001_robust_client.py"),
        "localhost:8000",
        server.addr,
    );
    let mut client = Script::python("001_robust_client.py", &source, &[]).await;
    // A line may follow the client's 5 s retry delay and a 2.5 s idle close.
    let wait = Duration::from_secs(10);
    assert_eq!(
        client.line(wait).await,
        "✅ Підключено (спроба 1)",
        "first attempt"
    );
    assert_eq!(
        client.line(wait).await,
        "📨 🟢 Connected to server",
        "the greeting, printed as a message"
    );
    let reply = broadcast(server.addr, "order shipped").await;
    assert_eq!(reply.status, StatusCode::OK, "broadcast: {}", reply.body);
    assert_eq!(
        client.line(wait).await,
        "📨 order shipped",
        "a broadcast reaches the seed client"
    );
    for attempt in 2..=3 {
        assert_eq!(
            client.line(wait).await,
            "⚠️ З'єднання закрито",
            "closed before attempt {attempt}"
        );
        assert_eq!(
            client.line(wait).await,
            "🔄 Повторна спроба через 5s...",
            "retry announced before attempt {attempt}"
        );
        assert_eq!(
            client.line(wait).await,
            format!("✅ Підключено (спроба {attempt})"),
            "reconnected"
        );
        assert_eq!(
            client.line(wait).await,
            "📨 🟢 Connected to server",
            "greeted again on attempt {attempt}"
        );
    }
    assert_eq!(
        client.line(wait).await,
        "⚠️ З'єднання закрито",
        "the third connection closed too"
    );
    assert_eq!(
        client.line(wait).await,
        "❌ Вичерпано спроби підключення",
        "the client gives up after its three attempts"
    );
    let out = client.finish().await;
    assert!(out.status.success(), "the client exits cleanly: {out}");
    assert!(out.stdout.is_empty(), "nothing after giving up: {out}");
    wait_for_metric(server.addr, "wsnotify_connections_opened_total 3").await;
}

#[tokio::test]
async fn seed_001s_health_checks_with_curl_and_jq_read_the_count_and_the_drain() {
    let mut server = start(&[("SHUTDOWN_TIMEOUT", "30")]).await;
    let mut clients = vec![
        connect(server.addr, "/ws/test_client_1").await,
        connect(server.addr, "/ws/test_client_2").await,
    ];
    wait_for_connections(server.addr, 2).await;

    let count = shell(&relocated(
        ACTIVE_CONNECTIONS,
        "localhost:8000",
        server.addr,
    ))
    .await;
    assert!(count.status.success(), "curl | jq failed: {count}");
    assert_eq!(count.stdout, ["2"], "jq '.active_connections': {count}");

    let health = printed_json(&shell(&relocated(HEALTH, "localhost:8000", server.addr)).await);
    assert_eq!(health["status"], "healthy", "status: {health}");
    assert_eq!(health["active_connections"], 2, "count: {health}");
    assert_eq!(
        health["shutdown_in_progress"], false,
        "not draining yet: {health}"
    );
    let timestamp = health["timestamp"].as_str().unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(timestamp).is_ok(),
        "timestamp {timestamp:?} is not an ISO 8601 / RFC 3339 time: {health}"
    );
    // Unlike the seed's example (no zone), UTC with a `Z` (docs/MIGRATING.md).
    assert!(
        timestamp.ends_with('Z'),
        "timestamp {timestamp:?} is in UTC"
    );

    // "Термінал 1 - Ініціація shutdown": the clients stay, the check sees the drain.
    server.signal(libc::SIGTERM);
    for ws in &mut clients {
        let notice = next_text(ws).await;
        assert!(
            notice.contains("shutting down"),
            "shutdown notice: {notice}"
        );
    }
    let watched = shell(&relocated(WATCHED_HEALTH, "localhost:8000", server.addr)).await;
    assert!(
        watched.stdout.len() > 1,
        "jq pretty-prints, one key per line: {watched}"
    );
    let draining = printed_json(&watched);
    assert_eq!(
        (
            &draining["status"],
            &draining["active_connections"],
            &draining["shutdown_in_progress"]
        ),
        (&json!("healthy"), &json!(2), &json!(true)),
        "seed 001's \"Health Check (під час shutdown)\": {draining}"
    );
    drop(clients);
    assert!(
        server.exit(PATIENCE).await,
        "the server exits by itself once its clients left"
    );
}

#[tokio::test]
async fn seed_003s_token_and_smoke_test_get_u1s_delivery_and_a_system_ping() {
    let server = start(&[
        ("WS_PATH", "room"),
        ("JWT_SECRET", "change-me"),
        ("ALLOWED_ORIGINS", "http://localhost:8000"),
        ("HEARTBEAT_INTERVAL", "1"),
    ])
    .await;
    let token = Script::python("003_token.py", &seed_file("003_token.py"), &[])
        .await
        .finish()
        .await;
    assert!(token.status.success(), "the token recipe failed: {token}");
    assert_eq!(token.stdout.len(), 1, "one token: {token}");
    let token = token.stdout[0].clone();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let source = relocated(
        &seed_file("003_smoke_client.py"),
        "127.0.0.1:8000",
        server.addr,
    );
    let out = Script::python("003_smoke_client.py", &source, &[("TOKEN", &token)])
        .await
        .finish()
        .await;
    assert!(out.status.success(), "the smoke test failed: {out}");
    let frames: Vec<Value> = out
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        frames.first(),
        Some(&json!({"type": "room.joined", "room": "test", "users": ["u1"]})),
        "/ws/test is room test of the JSON protocol, joined as the token's sub: {out}"
    );
    let delivery = frames
        .iter()
        .find(|f| f["type"] == "chat.delivery")
        .unwrap_or_else(|| panic!("no chat.delivery: {out}"));
    assert_eq!(
        (&delivery["room"], &delivery["user"], &delivery["text"]),
        (&json!("test"), &json!("u1"), &json!("hi")),
        "the seed's expected delivery: {out}"
    );
    assert!(
        delivery["id"].as_str().is_some_and(|id| !id.is_empty()),
        "an id: {delivery}"
    );
    assert_recent(delivery["ts"].as_u64().expect("ts in Unix ms"));
    // History is on by default: the delivery has a position, and each
    // stream the connection follows was announced with stream.position.
    assert_eq!(
        delivery["stream"], "room:test",
        "the delivery's position: {delivery}"
    );
    let positions: BTreeSet<&str> = frames
        .iter()
        .filter(|f| f["type"] == "stream.position")
        .filter_map(|f| f["stream"].as_str())
        .collect();
    assert_eq!(
        positions,
        BTreeSet::from(["user:u1", "broadcast", "room:test"]),
        "the positions of the connection's streams: {out}"
    );
    let ping = frames
        .iter()
        .find(|f| f["type"] == "system.ping")
        .unwrap_or_else(|| panic!("no system.ping: {out}"));
    assert!(ping["ts"].is_u64(), "system.ping carries ts: {ping}");

    // One name is taken: /ws/notifications stays the JSON connection
    // without a room (docs/MIGRATING.md, seed 003), whatever WS_PATH says.
    let mut req = format!("ws://{}/ws/notifications?token={token}", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "http://localhost:8000".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("/ws/notifications with the seed's token and Origin");
    let first: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(
        (&first["type"], &first["stream"]),
        (&json!("stream.position"), &json!("user:u1")),
        "no room.joined: /ws/notifications is not a room called notifications"
    );

    // The token is checked: the same client with a bad one is refused.
    let refused = Script::python("003_smoke_client.py", &source, &[("TOKEN", "not-a-jwt")])
        .await
        .finish()
        .await;
    assert!(
        !refused.status.success(),
        "a bad token must fail: {refused}"
    );
    assert!(
        refused.stderr.contains("HTTP 401"),
        "refused with 401 before the upgrade: {refused}"
    );
}

/// The status line, the headers and the body curl -i printed.
fn curl_reply(out: &Finished) -> (String, Vec<String>, String) {
    let blank = out.stdout.iter().position(String::is_empty);
    let head = &out.stdout[..blank.unwrap_or(out.stdout.len())];
    let body = blank.map(|b| out.stdout[b + 1..].join("\n"));
    let status = head.first().cloned().unwrap_or_default();
    let headers = head
        .iter()
        .skip(1)
        .map(|h| h.to_ascii_lowercase())
        .collect();
    (status, headers, body.unwrap_or_default())
}

#[tokio::test]
async fn seed_004s_curl_probe_gets_400_naming_the_key_and_101_with_one() {
    let server = start(&[]).await;
    let probe = relocated(
        &relocated(
            UPGRADE_PROBE,
            "http://localhost:8000/api/v1/ws/",
            format!("http://{}/ws/", server.addr),
        ),
        "localhost:8000",
        server.addr,
    );
    let out = shell(&probe).await;
    assert!(out.status.success(), "curl failed: {out}");
    let (status, headers, body) = curl_reply(&out);
    assert_eq!(
        status, "HTTP/1.1 400 Bad Request",
        "the probe's answer: {out}"
    );
    assert!(
        headers.contains(&"content-type: application/json".to_owned()),
        "a JSON body: {out}"
    );
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("({e}) {out}"));
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("bad WebSocket handshake") && error.contains("Sec-WebSocket-Key"),
        "the error names the missing Sec-WebSocket-Key: {body}"
    );

    // With a key (and the version) the same probe is upgraded; curl then
    // waits on the open socket until --max-time.
    let keyed = format!(
        "{probe} -H 'Sec-WebSocket-Key: {SAMPLE_KEY}' -H 'Sec-WebSocket-Version: 13' --max-time 1"
    );
    let out = shell(&keyed).await;
    assert!(
        matches!(out.status.code(), Some(0 | 28)),
        "curl ends by itself or at --max-time (28), not with a connection error: {out}"
    );
    let (status, headers, _) = curl_reply(&out);
    assert_eq!(
        status, "HTTP/1.1 101 Switching Protocols",
        "upgraded: {out}"
    );
    assert!(
        headers.contains(&format!("sec-websocket-accept: {SAMPLE_ACCEPT}").to_ascii_lowercase()),
        "the RFC 6455 accept value of the sample key: {out}"
    );

    // With tokens on (seed 004 authenticates its users) the probe learns
    // that first: 401 before the handshake's headers are looked at.
    let guarded = start(&[("JWT_SECRET", "seed-004-secret")]).await;
    let out = shell(&relocated(&probe, &server.addr.to_string(), guarded.addr)).await;
    let (status, _, body) = curl_reply(&out);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "tokens on: {out}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).ok(),
        Some(json!({"error": "missing token"})),
        "the 401's body: {out}"
    );

    // The seed's "connect to the backend directly" keeps nginx's prefix;
    // wsnotify itself serves the path without it.
    let direct = relocated(UPGRADE_PROBE, "localhost:8000", server.addr);
    let out = shell(&direct).await;
    assert_eq!(
        curl_reply(&out).0,
        "HTTP/1.1 404 Not Found",
        "/api/v1/ws/… is nginx's path, not wsnotify's: {out}"
    );
}

/// The refusal of `/ws/notifications?token=` with `claims` signed by `secret`.
async fn refused_token(server: &Proc, secret: &str, claims: Value) -> (StatusCode, Value) {
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let req = format!("ws://{}/ws/notifications?token={token}", server.addr)
        .into_client_request()
        .unwrap();
    let (status, _, body) = refusal(req).await;
    (status, body)
}

#[tokio::test]
async fn seed_004s_backend_tokens_may_carry_a_numeric_sub_and_an_audience_only_if_configured() {
    let secret = "seed-004-secret";
    let server = start(&[("JWT_SECRET", secret)]).await;
    // A numeric user id is that user, in decimal: /notify/42 reaches it.
    let token = encode(
        &Header::default(),
        &json!({"sub": 42}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    // Its positions first: a notification posted before its opening read
    // the heads would be before its start, not its to get.
    let (mut numeric, _) =
        connect_following(server.addr, &format!("/ws/notifications?token={token}"), 2).await;
    let reply = http(
        server.addr,
        Method::POST,
        "/notify/42",
        r#"{"message":"for 42"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        text_of(&next_json(&mut numeric).await),
        "for 42",
        "sub 42 is user 42"
    );
    assert_eq!(
        refused_token(&server, secret, json!({"sub": 4.2})).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid claim: sub"})
        ),
        "a fraction is no user id"
    );
    assert_eq!(
        refused_token(&server, secret, json!({"sub": "42", "aud": "planner"})).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid claim: aud"})
        ),
        "a token naming an audience is refused while JWT_AUDIENCE is unset"
    );
    let with_audience = start(&[("JWT_SECRET", secret), ("JWT_AUDIENCE", "planner")]).await;
    let token = encode(
        &Header::default(),
        &json!({"sub": "42", "aud": "planner"}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let url = format!("ws://{}/ws/notifications?token={token}", with_audience.addr);
    let (_ws, res) = tokio_tungstenite::connect_async(url)
        .await
        .expect("with JWT_AUDIENCE=planner the token is accepted");
    assert_eq!(
        res.status(),
        StatusCode::SWITCHING_PROTOCOLS,
        "upgraded with the audience configured"
    );
}

#[tokio::test]
async fn seed_004s_redis_cli_publish_on_notifications_reaches_that_users_clients() {
    let redis = Redis::start().await;
    let secret = "seed-004-secret";
    let server = start(&[("REDIS_URL", &redis.url()), ("JWT_SECRET", secret)]).await;
    wait_for_ready(server.addr, StatusCode::OK).await;
    let token = encode(
        &Header::default(),
        &json!({"sub": "42"}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();

    // The frontend's WebSocket (seed 004) and a plain-text client of the same user.
    let source = relocated(
        &seed_file("004_notifications_client.py"),
        "127.0.0.1:8000",
        server.addr,
    );
    let mut frontend =
        Script::python("004_notifications_client.py", &source, &[("TOKEN", &token)]).await;
    assert_eq!(
        frontend.line(PATIENCE).await,
        "connected",
        "the client connects with ?token="
    );
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut plain, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("plain client");
    assert_eq!(
        next_text(&mut plain).await,
        "🟢 Connected to server",
        "plain greeting"
    );
    wait_for_subscribers(&redis, "notifications:42", 1).await;

    let publish = relocated(
        WORKER_PUBLISH,
        "redis-cli ",
        format!("redis-cli -h 127.0.0.1 -p {} ", redis.port),
    );
    let published = shell(&publish).await;
    assert!(published.status.success(), "redis-cli failed: {published}");
    assert_eq!(
        published.stdout,
        ["1"],
        "one subscriber: the instance, not each client: {published}"
    );

    let out = frontend.finish().await;
    assert!(
        out.status.success(),
        "the client got its notification: {out}"
    );
    let frames: Vec<Value> = out
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let (notification, before) = frames.split_last().expect("frames");
    assert_eq!(
        notification,
        &json!({"type": "notification", "data": {"type": "order.shipped", "id": 7}}),
        "/ws/notifications wraps the payload as a notification, live only (no position): {out}"
    );
    let positions: BTreeSet<&str> = before
        .iter()
        .map(|f| {
            assert_eq!(
                f["type"], "stream.position",
                "only positions come first: {out}"
            );
            f["stream"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        positions,
        BTreeSet::from(["user:42", "broadcast"]),
        "the streams of user 42 were announced first: {out}"
    );
    assert_eq!(
        next_text(&mut plain).await,
        r#"{"type":"order.shipped","id":7}"#,
        "a plain /ws client of user 42 gets the payload verbatim"
    );
}

#[test]
fn the_dependency_script_is_valid_bash_and_installs_what_these_tests_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-deps.sh");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash -n");
    assert!(
        check.status.success(),
        "bash -n {}: {}",
        script.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    for entry in [
        "[curl]=curl",
        "[jq]=jq",
        "[redis-cli]=redis-tools",
        "[websockets]=python3-websockets",
        "[jwt]=python3-jwt",
        "/usr/bin/python3 -c \"import $module\"",
    ] {
        assert!(text.contains(entry), "scripts/test-deps.sh lacks {entry}");
    }
}
