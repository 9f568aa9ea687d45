//! Helpers of the history tests: JSON clients that resume, positions, the
//! `since` a client builds, `/poll`, and a small SSE client over a raw
//! socket.

use std::net::SocketAddr;

use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wsnotify::protocol::json::{Reason, ServerMessage};

use super::{PATIENCE, Reply, Ws, connect_raw, http, http_with, next_json_or_position};

/// One stream position as a client keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub stream: String,
    pub epoch: String,
    pub offset: u64,
}

impl At {
    pub fn new(stream: &str, epoch: &str, offset: u64) -> Self {
        At {
            stream: stream.to_owned(),
            epoch: epoch.to_owned(),
            offset,
        }
    }
}

/// The `since` value of `positions` (the grammar of docs/PROTOCOL.md),
/// URL-encoded for a query.
pub fn since(positions: &[At]) -> String {
    let raw: Vec<String> = positions
        .iter()
        .map(|p| format!("{}~{}~{}", p.stream, p.epoch, p.offset))
        .collect();
    encode(&raw.join(","))
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `stream.position`: where, and how a resume went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub at: At,
    pub recovered: Option<bool>,
    pub reason: Option<Reason>,
}

/// Reads messages until a `stream.position`; panics on anything else but
/// rosters and presence.
pub async fn expect_position(ws: &mut Ws) -> Resumed {
    loop {
        match next_json_or_position(ws).await {
            ServerMessage::Position {
                stream,
                epoch,
                offset,
                recovered,
                reason,
            } => {
                return Resumed {
                    at: At {
                        stream,
                        epoch,
                        offset,
                    },
                    recovered,
                    reason,
                };
            }
            ServerMessage::Joined { .. }
            | ServerMessage::PresenceJoin { .. }
            | ServerMessage::PresenceLeave { .. } => continue,
            other => panic!("expected stream.position, got {other:?}"),
        }
    }
}

/// Connects a JSON client to `path` and reads the `stream.position` of each
/// of its `streams` (the user's, `broadcast`, the room's, in that order).
pub async fn connect_following(addr: SocketAddr, path: &str, streams: usize) -> (Ws, Vec<Resumed>) {
    let mut ws = connect_raw(addr, path).await;
    let mut resumed = Vec::new();
    for _ in 0..streams {
        resumed.push(expect_position(&mut ws).await);
    }
    (ws, resumed)
}

/// The next message that carries a stream position, with it.
pub async fn next_placed(ws: &mut Ws) -> (At, ServerMessage) {
    loop {
        let message = next_json_or_position(ws).await;
        if let Some(at) = message.at() {
            let at = At::new(&at.stream, &at.epoch, at.offset);
            return (at, message);
        }
        if let ServerMessage::Position { .. } = message {
            panic!("an unexpected stream.position: {message:?}");
        }
    }
}

/// The text a placed message carries: a notification's or broadcast's
/// `data` (as a string), a delivery's `text`.
pub fn text_of(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Notification { data, .. } | ServerMessage::Broadcast { data, .. } => {
            match data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        ServerMessage::Delivery { text, .. } => text.clone(),
        other => panic!("not a placed message: {other:?}"),
    }
}

/// `POST /notify/{user}` of `text`, expected 200; its position.
pub async fn notify(addr: SocketAddr, user: &str, text: &str) -> At {
    let body = serde_json::json!({ "message": text }).to_string();
    let reply = http(addr, Method::POST, &format!("/notify/{user}"), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    position_of(&reply)
}

/// `POST /broadcast` of `text`, expected 200; its position.
pub async fn broadcast_at(addr: SocketAddr, text: &str) -> At {
    let body = serde_json::json!({ "message": text }).to_string();
    let reply = http(addr, Method::POST, "/broadcast", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    position_of(&reply)
}

/// `POST /rooms/{room}/publish` of `text`, expected 200; its position.
pub async fn publish_room(addr: SocketAddr, room: &str, text: &str) -> At {
    let body = serde_json::json!({ "text": text }).to_string();
    let reply = http(addr, Method::POST, &format!("/rooms/{room}/publish"), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    position_of(&reply)
}

/// The position a publish answer carries.
pub fn position_of(reply: &Reply) -> At {
    let body = reply.json();
    At::new(
        body["stream"].as_str().expect("stream"),
        body["epoch"].as_str().expect("epoch"),
        body["offset"].as_u64().expect("offset"),
    )
}

/// `GET /poll?{query}`.
pub async fn poll(addr: SocketAddr, query: &str) -> Reply {
    http(addr, Method::GET, &format!("/poll?{query}"), "").await
}

/// `POST` with an `Idempotency-Key`.
pub async fn post_with_key(addr: SocketAddr, path: &str, body: &str, key: &str) -> Reply {
    http_with(addr, Method::POST, path, body, &[("idempotency-key", key)]).await
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// A client of `GET /sse` over a raw socket.
pub struct Sse {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The event being read, kept across a cancelled read.
    partial: Option<Event>,
}

impl Sse {
    /// `GET {path}` with `headers`; reads the response head.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        let status_line = next_line(&mut lines).await.expect("a status line");
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut head = Vec::new();
        loop {
            let line = next_line(&mut lines).await.expect("headers");
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            head.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        Sse {
            lines,
            status,
            headers: head,
            partial: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event (chunked transfer framing is skipped: hex chunk
    /// sizes never look like `field: value`); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let line = next_line(&mut self.lines).await?;
            if line.is_empty() {
                if let Some(event) = self.partial.take() {
                    return Some(event);
                }
                continue;
            }
            let Some((field, value)) = line.split_once(':') else {
                // A chunk size; `0` is the last chunk: the stream ended.
                if line == "0" {
                    return None;
                }
                continue;
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            let event = self.partial.get_or_insert_with(Event::default);
            match field {
                "event" => event.event = Some(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                "data" => event.data.push_str(value),
                "retry" => event.retry = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// The next event that is not a heartbeat, or `Err` if none came
    /// within `wait` (what was half-read is kept).
    pub async fn next_event_within(
        &mut self,
        wait: std::time::Duration,
    ) -> Result<Option<Event>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, self.next_event()).await
    }

    /// The next event that is not a heartbeat.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            let event = self.next().await?;
            if event.event.as_deref() != Some("ping") {
                return Some(event);
            }
        }
    }
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<TcpStream>>) -> Option<String> {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("timed out reading the event stream")
        .ok()
        .flatten()
}
