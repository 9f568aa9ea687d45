//! A client that resumes: the JSON WebSocket protocol with `since`,
//! following the drain notice's reconnect hint to the next address, and
//! checking every stream's offsets as it goes (a gap fails the test).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsnotify::protocol::json::ServerMessage;

use super::connect_raw;
use super::history::{At, since, text_of};

/// Published so far, per stream name: the texts, in order; the final
/// lists once the publisher is done.
pub type Published = watch::Receiver<Option<HashMap<String, Vec<String>>>>;

/// What one client got, per stream, in order.
pub type Got = HashMap<String, Vec<String>>;

/// Whether `got` holds everything published on `streams`.
pub fn complete(got: &Got, published: &Published, streams: &[String]) -> bool {
    let done = published.borrow();
    let Some(all) = done.as_ref() else {
        return false;
    };
    streams
        .iter()
        .all(|s| got.get(s).map_or(0, Vec::len) >= all.get(s).map_or(0, Vec::len))
}

/// A WebSocket client of `user`: on the drain notice it waits for the
/// hint, then resumes on `fallback`.
pub async fn ws_client(
    first: SocketAddr,
    fallback: SocketAddr,
    user: String,
    published: Published,
) -> Got {
    let streams = vec![format!("user:{user}"), "broadcast".to_owned()];
    let mut positions: HashMap<String, At> = HashMap::new();
    let mut got = Got::new();
    let mut addr = first;
    loop {
        let mut known: Vec<At> = positions.values().cloned().collect();
        known.sort_by(|a, b| a.stream.cmp(&b.stream));
        let path = if known.is_empty() {
            format!("/ws/notifications?user={user}")
        } else {
            format!("/ws/notifications?user={user}&since={}", since(&known))
        };
        let mut ws = connect_raw(addr, &path).await;
        loop {
            if complete(&got, &published, &streams) {
                return got;
            }
            let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            let Ok(next) = next else { continue };
            let text = match next {
                Some(Ok(Message::Text(text))) => text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => break, // closed: resume elsewhere
            };
            match ServerMessage::decode(&text).unwrap() {
                ServerMessage::Position {
                    stream,
                    epoch,
                    offset,
                    recovered,
                    reason,
                } => {
                    assert_ne!(
                        recovered,
                        Some(false),
                        "{user}: {stream} not recovered: {reason:?}"
                    );
                    // Recovered: the missed messages follow from where the
                    // client was; otherwise it starts at the head.
                    if recovered != Some(true) {
                        positions.insert(stream.clone(), At::new(&stream, &epoch, offset));
                    }
                }
                ServerMessage::Shutdown {
                    reconnect_after_ms, ..
                } => {
                    let hint = reconnect_after_ms.expect("a JSON client gets the hint");
                    tokio::time::sleep(Duration::from_millis(hint)).await;
                    break;
                }
                message => {
                    let Some(at) = message.at() else { continue };
                    let last = positions.get_mut(&at.stream).expect("a position first");
                    assert_eq!(at.offset, last.offset + 1, "{user}: a gap in {}", at.stream);
                    last.offset = at.offset;
                    got.entry(at.stream.clone())
                        .or_default()
                        .push(text_of(&message));
                }
            }
        }
        addr = fallback;
    }
}
