//! `GET /poll?since=…&rooms=a,b&wait=N`: the HTTP fallback. It answers the
//! messages after `since` of the caller's streams (see [`super::reader`]),
//! the position to send next time, and whether every stream could be
//! recovered; with `wait`, it long-polls until the first message.
//!
//! Without `since` it answers only the current positions: a client takes
//! them first, then loads its state elsewhere, and misses nothing between.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::reader::{Reader, Selection, allow_origin};
use super::reply::{self, ResponseBody};
use crate::history::gate::Resolved;
use crate::history::{Outcome, Record, Since, merge};
use crate::node::Node;
use crate::query::query_param;
use crate::stream::Stream;

/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// Answers one poll.
pub async fn poll<B>(node: &Node, req: Request<B>) -> Response<ResponseBody> {
    if node.shutdown().is_draining() {
        return reply::unavailable("server is shutting down; poll another instance");
    }
    let selection = match Selection::of(node, &req) {
        Ok(selection) => selection,
        Err(res) => return res,
    };
    let given = query_param(req.uri(), "since");
    let since = match given.as_deref().map(|v| selection.since(v)).transpose() {
        Ok(since) => since,
        Err(res) => return res,
    };
    let wait = match query_param(req.uri(), "wait").map(|w| wait(&w)).transpose() {
        Ok(wait) => wait.unwrap_or(Duration::ZERO),
        Err(res) => return res,
    };
    let _in_flight = Gauge::up(node, false);
    let answer = answer(node, &selection, since, wait).await;
    let mut res = reply::json_ok(answer);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    allow_origin(req.headers(), &mut res);
    res
}

/// `wait` in seconds, clamped to `0 ..= 25`.
fn wait(value: &str) -> Result<Duration, Response<ResponseBody>> {
    let secs: f64 = value.trim().parse().map_err(|_| {
        reply::error(
            StatusCode::BAD_REQUEST,
            &format!("wait {value:?} is not a number of seconds"),
        )
    })?;
    if secs.is_nan() {
        return Err(reply::error(
            StatusCode::BAD_REQUEST,
            "wait is not a number",
        ));
    }
    Ok(Duration::from_secs_f64(
        secs.clamp(0.0, MAX_WAIT.as_secs_f64()),
    ))
}

async fn answer(node: &Node, selection: &Selection, since: Option<Since>, wait: Duration) -> Value {
    let resuming = since.is_some();
    let since = since.unwrap_or_default();
    let (mut reader, resolved) = Reader::start(node, selection, &since).await;
    let Ok(resolved) = resolved else {
        // A gap among the messages that came while reading: the next poll
        // from the same position reads them from history.
        return json!({ "messages": [], "next": since.to_string(), "recovered": true, "streams": [] });
    };
    let mut lists: Vec<Vec<Arc<Record>>> = Vec::new();
    if resuming {
        lists = resolved.iter().map(|(_, r)| r.records.clone()).collect();
    }
    let waiting = resuming && wait > Duration::ZERO && lists.iter().all(Vec::is_empty);
    if waiting {
        let _long = Gauge::up(node, true);
        let until = tokio::time::Instant::now() + wait;
        lists = vec![live(node, &mut reader, until).await];
    }
    let lost = resolved.iter().find_map(|(_, r)| match r.outcome {
        Outcome::Lost(reason) => Some(reason),
        Outcome::Fresh | Outcome::Recovered => None,
    });
    let mut body = json!({
        "messages": merged(&lists),
        "next": reader.gate.positions().to_string(),
        "recovered": lost.is_none(),
        "streams": resolved.iter().map(|(s, r)| stream_json(s, r)).collect::<Vec<_>>(),
    });
    if let Some(reason) = lost {
        body["reason"] = json!(reason);
    }
    body
}

/// Waits until `until` for live messages; answers at the first ones, or at
/// once when the drain starts or a gap shows.
async fn live(node: &Node, reader: &mut Reader, until: tokio::time::Instant) -> Vec<Arc<Record>> {
    let outbox = reader.reg.outbox().clone();
    loop {
        match reader.take() {
            Ok(records) if !records.is_empty() => return records,
            Ok(_) => {}
            Err(_) => return Vec::new(),
        }
        tokio::select! {
            _ = outbox.ready() => {}
            _ = tokio::time::sleep_until(until) => return Vec::new(),
            _ = node.shutdown().draining() => return Vec::new(),
            _ = outbox.killed() => return Vec::new(),
        }
    }
}

/// The messages of several streams as JSON, oldest first.
fn merged(lists: &[Vec<Arc<Record>>]) -> Vec<Value> {
    merge(lists)
        .iter()
        .map(|record| serde_json::from_slice(&record.json).unwrap_or(Value::Null))
        .collect()
}

/// One stream's line of `streams`.
pub fn stream_json(stream: &Stream, resolved: &Resolved) -> Value {
    let (recovered, reason) = resolved.outcome.wire();
    let mut line = json!({
        "stream": stream.to_string(),
        "epoch": &*resolved.head.epoch,
        "offset": resolved.head.offset,
    });
    if let Some(recovered) = recovered {
        line["recovered"] = json!(recovered);
    }
    if let Some(reason) = reason {
        line["reason"] = json!(reason);
    }
    line
}

/// Keeps a poll counted in a gauge while it lives.
struct Gauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Gauge<'a> {
    fn up(node: &'a Node, long: bool) -> Self {
        let gauge = node.metrics().polls(long);
        gauge.inc();
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
