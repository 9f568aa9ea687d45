//! `GET /sse`: Server-Sent Events over the same selection as `/poll`.
//!
//! Every event's `id:` is the position after it (a `since` value over all
//! the selected streams), so a browser that reconnects sends it back as
//! `Last-Event-ID`, which wins over `?since=`. The stream opens with
//! `retry:` and a `position` event; a stream that cannot be recovered gets
//! an `event: reset` with its current position; an `event: ping` every
//! `HEARTBEAT_INTERVAL` keeps proxies from timing the stream out and lets a
//! client tell a quiet stream from a dead one. A gap ends the stream (the browser comes back with
//! its `Last-Event-ID`), and so does the drain, after an `event: shutdown`
//! whose `retry:` spreads the reconnects.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::poll::stream_json;
use super::reader::{Reader, Selection, allow_origin};
use super::reply::{self, ResponseBody};
use crate::config;
use crate::history::gate::Resolved;
use crate::history::{Outcome, Record, Since, merge};
use crate::node::Node;
use crate::protocol::json::{Reason, ServerMessage};
use crate::protocol::text;
use crate::query::query_param;
use crate::stream::Stream;

/// How long a browser waits before reconnecting on its own.
const RETRY_MS: u64 = 3000;
/// Events waiting for a slow client before the stream is cut.
const BUFFER: usize = 64;

/// Answers `GET /sse`: the events come from a tracked task, so the drain
/// waits for (and ends) it like a WebSocket session.
pub fn sse<B>(node: &Arc<Node>, req: Request<B>) -> Response<ResponseBody> {
    if node.shutdown().is_draining() {
        return reply::unavailable("server is shutting down; reconnect to another instance");
    }
    let selection = match Selection::of(node, &req) {
        Ok(selection) => selection,
        Err(res) => return res,
    };
    // Last-Event-ID wins; a garbage one is no position at all, never "from
    // the start": every stream is reset.
    let last_event = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned));
    let start = match last_event {
        Some(Ok(value)) => match selection.since(&value) {
            Ok(since) => Start::Resume(since),
            Err(_) => Start::Garbage,
        },
        Some(Err(_)) => Start::Garbage,
        None => match query_param(req.uri(), "since").map(|v| selection.since(&v)) {
            Some(Ok(since)) => Start::Resume(since),
            Some(Err(res)) => return res,
            None => Start::Fresh,
        },
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    let task_node = node.clone();
    node.shutdown()
        .spawn_session(async move { run(&task_node, selection, start, tx).await });
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    }));
    let mut res = Response::new(body.boxed());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx: do not buffer this response.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    allow_origin(req.headers(), &mut res);
    res
}

/// Where an SSE stream starts from.
enum Start {
    Fresh,
    Resume(Since),
    /// An unreadable `Last-Event-ID`.
    Garbage,
}

/// The stream's life: open, resume, then live events until the client
/// leaves, a gap shows, or the drain starts.
async fn run(node: &Node, selection: Selection, start: Start, tx: mpsc::Sender<Bytes>) {
    let gauge = node.metrics().sse();
    gauge.inc();
    let since = match &start {
        Start::Resume(since) => since.clone(),
        Start::Fresh | Start::Garbage => Since::default(),
    };
    let (mut reader, resolved) = Reader::start(node, &selection, &since).await;
    let ended = match resolved {
        Ok(resolved) => {
            let mut emitted = starts(&since, &resolved);
            let garbage = matches!(start, Start::Garbage);
            match open(&mut emitted, &resolved, garbage, &tx).await {
                Ok(()) => follow(node, &mut reader, &mut emitted, &tx).await,
                Err(()) => Ended::Gone,
            }
        }
        Err(_) => Ended::Gap,
    };
    match ended {
        Ended::Drained => {
            let notice = ServerMessage::Shutdown {
                message: text::SHUTDOWN_NOTICE.to_owned(),
                reconnect_after_ms: Some(node.reconnect_delay_ms()),
            };
            let retry = node.reconnect_delay_ms().max(1);
            let event = format!(
                "event: shutdown\nretry: {retry}\ndata: {}\n\n",
                notice.encode()
            );
            let _ = tx.send(Bytes::from(event)).await;
        }
        Ended::Gap => node.metrics().insufficient_state(),
        Ended::Gone => {}
    }
    gauge.dec();
}

enum Ended {
    Gone,
    Gap,
    Drained,
}

/// Where each stream stands before its first event: the client's own
/// position when its messages follow, else the head.
fn starts(since: &Since, resolved: &[(Stream, Resolved)]) -> Since {
    let mut starts = Since::default();
    for (stream, settled) in resolved {
        let start = match (settled.outcome, since.get(stream)) {
            (Outcome::Recovered, Some(given)) => given.clone(),
            _ => settled.head.clone(),
        };
        starts.set(stream.clone(), start);
    }
    starts
}

/// `retry:`, the `position` event, a `reset` per lost stream, then the
/// missed messages (and those that came meanwhile).
async fn open(
    emitted: &mut Since,
    resolved: &[(Stream, Resolved)],
    garbage: bool,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), ()> {
    let mut head = format!("retry: {RETRY_MS}\n\n");
    let streams: Vec<_> = resolved.iter().map(|(s, r)| stream_json(s, r)).collect();
    let data = json!({ "next": emitted.to_string(), "streams": streams });
    write_event(&mut head, Some("position"), emitted, &data.to_string());
    for (stream, settled) in resolved {
        let reason = match settled.outcome {
            Outcome::Lost(reason) => Some(reason),
            _ if garbage => Some(Reason::InvalidCursor),
            _ => None,
        };
        if let Some(reason) = reason {
            let data = json!({
                "stream": stream.to_string(),
                "epoch": &*settled.head.epoch,
                "offset": settled.head.offset,
                "reason": reason,
            });
            write_event(&mut head, Some("reset"), emitted, &data.to_string());
        }
    }
    tx.send(Bytes::from(head)).await.map_err(|_| ())?;
    let lists: Vec<_> = resolved.iter().map(|(_, r)| r.records.clone()).collect();
    send_records(emitted, &merge(&lists), tx).await
}

/// Live events until the client leaves, a gap shows, or the drain.
async fn follow(
    node: &Node,
    reader: &mut Reader,
    emitted: &mut Since,
    tx: &mpsc::Sender<Bytes>,
) -> Ended {
    let outbox = reader.reg.outbox().clone();
    let beat = config::enabled(node.config().heartbeat_interval).unwrap_or(Duration::MAX);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    loop {
        tokio::select! {
            biased;
            _ = node.shutdown().draining() => return Ended::Drained,
            _ = tx.closed() => return Ended::Gone,
            _ = outbox.killed() => return Ended::Gone,
            _ = outbox.ready() => {
                let Ok(records) = reader.take() else {
                    return Ended::Gap;
                };
                if send_records(emitted, &records, tx).await.is_err() {
                    return Ended::Gone;
                }
            }
            _ = heartbeat.tick() => {
                if tx.send(Bytes::from_static(b"event: ping\ndata: {}\n\n")).await.is_err() {
                    return Ended::Gone;
                }
            }
        }
    }
}

/// One event per record; `emitted` moves past each.
async fn send_records(
    emitted: &mut Since,
    records: &[Arc<Record>],
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), ()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut events = String::new();
    for record in records {
        emitted.set(record.stream.clone(), record.position.clone());
        let data = std::str::from_utf8(&record.json).unwrap_or_default();
        write_event(&mut events, None, emitted, data);
    }
    tx.send(Bytes::from(events)).await.map_err(|_| ())
}

/// Appends one event; `data` is one line (JSON has no raw newlines).
fn write_event(out: &mut String, event: Option<&str>, id: &Since, data: &str) {
    if let Some(event) = event {
        let _ = writeln!(out, "event: {event}");
    }
    let _ = writeln!(out, "id: {id}");
    let _ = writeln!(out, "data: {data}\n");
}
