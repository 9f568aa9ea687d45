//! A client that resumes: the JSON WebSocket protocol with `since`,
//! reconnecting after every close (on the drain notice, after its reconnect
//! hint, to the next address), and checking every stream's offsets as it
//! goes: a gap or a repeat fails the test unless the server said
//! `recovered: false` for that stream first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsnotify::protocol::json::{Reason, ServerMessage};

use super::history::{At, since, text_of};

/// Published so far, per stream name: the texts, in order; the final
/// lists once the publisher is done.
pub type Published = watch::Receiver<Option<HashMap<String, Vec<String>>>>;

/// What one client got, per stream, in order.
pub type Got = HashMap<String, Vec<String>>;

/// Whom a [`follow`] client connects to, and what it tolerates.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Where it connects first.
    pub first: SocketAddr,
    /// Where it goes after a drain notice.
    pub fallback: SocketAddr,
    /// The path, with its query (`since` is added).
    pub path: String,
    /// The streams it waits to have the last message of.
    pub streams: Vec<String>,
    /// Whether `recovered: false` is allowed (a primary killed may lose
    /// writes: the client must be told, and then may miss messages).
    pub told_ok: bool,
    /// Counted once the client has a position in every one of its streams:
    /// from then on everything published is its to get (see [`positioned`]).
    pub positioned: Option<Arc<AtomicUsize>>,
}

/// Waits until `count` clients have counted themselves positioned: a
/// client without `since` starts at each stream's head, so what is published
/// before it has its positions is not its to get.
pub async fn positioned(count: &AtomicUsize, clients: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::SeqCst) < clients {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {clients} clients got their positions",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a [`follow`] client ended with.
#[derive(Debug, Default)]
pub struct Followed {
    pub texts: Got,
    /// Every `recovered: false`: stream and reason.
    pub told: Vec<(String, Option<Reason>)>,
    pub connections: usize,
}

/// Whether `got` holds as many messages as were published on `streams`.
pub fn complete(got: &Got, published: &Published, streams: &[String]) -> bool {
    let done = published.borrow();
    let Some(all) = done.as_ref() else {
        return false;
    };
    streams
        .iter()
        .all(|s| got.get(s).map_or(0, Vec::len) >= all.get(s).map_or(0, Vec::len))
}

/// Whether `got` has the last message published on each of `streams`.
fn done(got: &Got, published: &Published, streams: &[String]) -> bool {
    let published = published.borrow();
    let Some(all) = published.as_ref() else {
        return false;
    };
    streams
        .iter()
        .all(|s| got.get(s).and_then(|t| t.last()) == all.get(s).and_then(|t| t.last()))
}

/// Runs the client until it has the last message of each of its streams.
pub async fn follow(follow: Follow, published: Published) -> Followed {
    let mut out = Followed::default();
    let mut positions: HashMap<String, At> = HashMap::new();
    let mut counted = false;
    let mut addr = follow.first;
    loop {
        let mut known: Vec<At> = positions.values().cloned().collect();
        known.sort_by(|a, b| a.stream.cmp(&b.stream));
        let sep = if follow.path.contains('?') { '&' } else { '?' };
        let url = match known.is_empty() {
            true => follow.path.clone(),
            false => format!("{}{sep}since={}", follow.path, since(&known)),
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}{url}")).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        out.connections += 1;
        loop {
            if done(&out.texts, &published, &follow.streams) {
                return out;
            }
            let next = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
            let text = match next {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break, // closed (4010, a drain, the instance gone): resume
            };
            match ServerMessage::decode(&text).unwrap() {
                ServerMessage::Position {
                    stream,
                    epoch,
                    offset,
                    recovered,
                    reason,
                } => {
                    if recovered == Some(false) {
                        assert!(follow.told_ok, "{url}: {stream} not recovered: {reason:?}");
                        out.told.push((stream.clone(), reason));
                    }
                    // Recovered: the missed messages follow from where the
                    // client was; otherwise it starts at the head.
                    if recovered != Some(true) {
                        positions.insert(stream.clone(), At::new(&stream, &epoch, offset));
                    }
                    if !counted && follow.streams.iter().all(|s| positions.contains_key(s)) {
                        counted = true;
                        if let Some(count) = &follow.positioned {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                ServerMessage::Shutdown {
                    reconnect_after_ms, ..
                } => {
                    let hint = reconnect_after_ms.expect("a JSON client gets the hint");
                    tokio::time::sleep(Duration::from_millis(hint)).await;
                    addr = follow.fallback;
                    break;
                }
                message => {
                    let Some(at) = message.at() else { continue };
                    let last = positions.get_mut(&at.stream).expect("a position first");
                    assert_eq!(
                        (at.epoch.as_str(), at.offset),
                        (last.epoch.as_str(), last.offset + 1),
                        "{url}: a gap or a repeat in {} without being told",
                        at.stream
                    );
                    last.offset = at.offset;
                    out.texts
                        .entry(at.stream.clone())
                        .or_default()
                        .push(text_of(&message));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket client of `user` (its notifications and the broadcasts)
/// that must never be told anything was lost: on the drain notice it waits
/// for the hint, then resumes on `fallback`.
pub async fn ws_client(
    first: SocketAddr,
    fallback: SocketAddr,
    user: String,
    published: Published,
    positioned: Option<Arc<AtomicUsize>>,
) -> Got {
    let streams = vec![format!("user:{user}"), "broadcast".to_owned()];
    let path = format!("/ws/notifications?user={user}");
    let follow_me = Follow {
        first,
        fallback,
        path,
        streams,
        told_ok: false,
        positioned,
    };
    follow(follow_me, published).await.texts
}

/// `POST path` with `body` and idempotency key `key` through `addr`, again
/// after each 503 (history unavailable: Redis, or a cluster partition,
/// moving) until it is taken, for at most `limit`.
pub async fn publish_until_taken(
    addr: SocketAddr,
    path: &str,
    body: &str,
    key: &str,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let reply = super::history::post_with_key(addr, path, body, key).await;
        if reply.status == hyper::StatusCode::OK {
            return;
        }
        assert_eq!(
            reply.status,
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never took {key}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
