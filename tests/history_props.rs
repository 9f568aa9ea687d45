//! A property of the whole promise, in memory mode: random interleavings of
//! publishes, disconnects, resumes over WebSocket, polls, history overflows
//! and server restarts, checked against a model of what each client must
//! see. For every client and stream, the offsets it saw are contiguous, or
//! the break is preceded by `recovered: false` (or a fresh start) for that
//! stream; nothing comes twice; and a client that resumes reaches the head.

mod support;

use std::collections::HashMap;

use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::history::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsnotify::Config;
use wsnotify::protocol::json::ServerMessage;

/// Messages kept per stream: small, so overflows happen.
const SIZE: usize = 4;
const CLIENTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A notification to client `usize`'s user, or a broadcast (`None`).
    Publish(Option<usize>),
    Disconnect(usize),
    /// Reconnect over WebSocket with the client's positions.
    Resume(usize),
    /// One poll with the client's positions (while it is away).
    Poll(usize),
    /// More than `SIZE` messages at once to one stream.
    Overflow(Option<usize>),
    /// The server restarts: every stream gets a new epoch.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        6 => proptest::option::of(client.clone()).prop_map(Op::Publish),
        2 => client.clone().prop_map(Op::Disconnect),
        2 => client.clone().prop_map(Op::Resume),
        2 => client.clone().prop_map(Op::Poll),
        1 => proptest::option::of(client).prop_map(Op::Overflow),
        1 => Just(Op::Restart),
    ]
}

/// What one client knows of one stream.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Its position: epoch and last offset.
    at: Option<At>,
    /// A break is allowed before the next message (after `recovered:
    /// false`, or a fresh start).
    may_jump: bool,
}

struct Client {
    user: String,
    ws: Option<Ws>,
    streams: HashMap<String, Seen>,
}

impl Client {
    fn streams(&self) -> [String; 2] {
        [format!("user:{}", self.user), "broadcast".to_owned()]
    }

    fn since(&self) -> Option<String> {
        let known: Vec<At> = self
            .streams()
            .iter()
            .filter_map(|s| self.streams.get(s).and_then(|seen| seen.at.clone()))
            .collect();
        (!known.is_empty()).then(|| since(&known))
    }

    /// A `stream.position` (or a poll's per-stream line): recovered keeps the
    /// position (the missed messages follow it), anything else moves it to
    /// the head and allows the break.
    fn positioned(&mut self, at: At, recovered: Option<bool>) -> Result<(), TestCaseError> {
        let seen = self.streams.entry(at.stream.clone()).or_default();
        match recovered {
            Some(true) => {
                let own = seen.at.as_ref().map(|a| a.epoch.clone());
                prop_assert_eq!(
                    own.as_deref(),
                    Some(at.epoch.as_str()),
                    "recovered under another epoch"
                );
            }
            _ => {
                seen.at = Some(at);
                seen.may_jump = true;
            }
        }
        Ok(())
    }

    /// One message of a stream.
    fn got(&mut self, at: &At) -> Result<(), TestCaseError> {
        let seen = self.streams.entry(at.stream.clone()).or_default();
        if let Some(last) = &seen.at
            && !seen.may_jump
        {
            prop_assert_eq!(
                &last.epoch,
                &at.epoch,
                "{}: epoch changed silently",
                at.stream
            );
            prop_assert_eq!(
                at.offset,
                last.offset + 1,
                "{}: offsets not contiguous",
                at.stream
            );
        }
        seen.at = Some(at.clone());
        seen.may_jump = false;
        Ok(())
    }
}

/// The model's heads: the position each stream has reached.
type Heads = HashMap<String, At>;

/// Reads `client`'s socket until it has reached every head it follows.
async fn catch_up(client: &mut Client, heads: &Heads) -> Result<(), TestCaseError> {
    loop {
        let behind = client.streams().iter().any(|s| {
            let seen = client.streams.get(s).and_then(|seen| seen.at.as_ref());
            match (heads.get(s), seen) {
                (Some(head), Some(at)) => at != head,
                (Some(_), None) => true,
                (None, _) => false,
            }
        });
        if !behind {
            return Ok(());
        }
        let Some(ws) = client.ws.as_mut() else {
            return Ok(());
        };
        let next = tokio::time::timeout(PATIENCE, ws.next()).await;
        let text = match next {
            Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => {
                return Err(TestCaseError::fail(format!(
                    "{} stalled: {other:?}",
                    client.user
                )));
            }
        };
        match ServerMessage::decode(&text).unwrap() {
            ServerMessage::Position {
                stream,
                epoch,
                offset,
                recovered,
                ..
            } => {
                client.positioned(At::new(&stream, &epoch, offset), recovered)?;
            }
            message => {
                if let Some(at) = message.at() {
                    client.got(&At::new(&at.stream, &at.epoch, at.offset))?;
                }
            }
        }
    }
}

/// Connects `client` with its positions and reads up to the heads.
async fn resume(
    server: &TestServer,
    client: &mut Client,
    heads: &Heads,
) -> Result<(), TestCaseError> {
    let path = match client.since() {
        Some(since) => format!("/ws/notifications?user={}&since={since}", client.user),
        None => format!("/ws/notifications?user={}", client.user),
    };
    client.ws = Some(connect_raw(server.addr, &path).await);
    // Both streams' positions come first (a fresh one may be behind no head).
    let mut positions = 0;
    while positions < 2 {
        let ws = client.ws.as_mut().unwrap();
        let message = next_json_or_position(ws).await;
        match message {
            ServerMessage::Position {
                stream,
                epoch,
                offset,
                recovered,
                ..
            } => {
                positions += 1;
                client.positioned(At::new(&stream, &epoch, offset), recovered)?;
            }
            message => {
                if let Some(at) = message.at() {
                    client.got(&At::new(&at.stream, &at.epoch, at.offset))?;
                }
            }
        }
    }
    catch_up(client, heads).await
}

/// One poll from the client's positions.
async fn poll_once(server: &TestServer, client: &mut Client) -> Result<(), TestCaseError> {
    let query = match client.since() {
        Some(since) => format!("user={}&since={since}", client.user),
        None => format!("user={}", client.user),
    };
    let answer = poll(server.addr, &query).await.json();
    for line in answer["streams"].as_array().unwrap() {
        let at = At::new(
            line["stream"].as_str().unwrap(),
            line["epoch"].as_str().unwrap(),
            line["offset"].as_u64().unwrap(),
        );
        let recovered = line["recovered"].as_bool();
        if recovered == Some(true) {
            continue; // the messages below carry the stream on
        }
        client.positioned(at, recovered)?;
    }
    for message in answer["messages"].as_array().unwrap() {
        let at = At::new(
            message["stream"].as_str().unwrap(),
            message["epoch"].as_str().unwrap(),
            message["offset"].as_u64().unwrap(),
        );
        client.got(&at)?;
    }
    Ok(())
}

async fn publish(server: &TestServer, clients: &[Client], to: Option<usize>, heads: &mut Heads) {
    let at = match to {
        Some(c) => notify(server.addr, &clients[c].user, "x").await,
        None => broadcast_at(server.addr, "x").await,
    };
    heads.insert(at.stream.clone(), at);
}

fn config() -> Config {
    Config {
        history_size: SIZE,
        ..history_config()
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut server = TestServer::start(config()).await;
    let mut heads = Heads::new();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client {
            user: format!("c{i}"),
            ws: None,
            streams: HashMap::new(),
        })
        .collect();
    for client in &mut clients {
        resume(&server, client, &heads).await?;
    }
    for op in ops {
        match op {
            Op::Publish(to) => publish(&server, &clients, to, &mut heads).await,
            Op::Overflow(to) => {
                for _ in 0..=SIZE {
                    publish(&server, &clients, to, &mut heads).await;
                }
            }
            Op::Disconnect(c) => clients[c].ws = None,
            Op::Resume(c) if clients[c].ws.is_none() => {
                resume(&server, &mut clients[c], &heads).await?
            }
            Op::Poll(c) if clients[c].ws.is_none() => poll_once(&server, &mut clients[c]).await?,
            Op::Resume(_) | Op::Poll(_) => {}
            Op::Restart => {
                for client in &mut clients {
                    client.ws = None;
                }
                server.signal();
                server.finished().await;
                server = TestServer::start(config()).await;
                heads.clear();
            }
        }
        for client in clients.iter_mut().filter(|c| c.ws.is_some()) {
            catch_up(client, &heads).await?;
        }
    }
    // In the end every client comes back and reaches the head of each
    // stream, contiguously since its last announced break.
    for client in &mut clients {
        client.ws = None;
        resume(&server, client, &heads).await?;
        for stream in client.streams() {
            if let Some(head) = heads.get(&stream) {
                let at = client.streams.get(&stream).and_then(|s| s.at.clone());
                prop_assert_eq!(at.as_ref(), Some(head), "{} did not reach the head", stream);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: live_cases(24),
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_client_sees_each_stream_contiguously_or_is_told(ops in proptest::collection::vec(op(), 1..40)) {
        block_on(run(ops))?;
    }
}

#[test]
fn the_model_catches_a_silent_gap() {
    // The checker itself: a jump without a break announced fails.
    let mut client = Client {
        user: "m".into(),
        ws: None,
        streams: HashMap::new(),
    };
    client.positioned(At::new("user:m", "e", 0), None).unwrap();
    client.got(&At::new("user:m", "e", 1)).unwrap();
    assert!(client.got(&At::new("user:m", "e", 3)).is_err());
    assert!(client.got(&At::new("user:m", "f", 4)).is_err());
    client
        .positioned(At::new("user:m", "f", 9), Some(false))
        .unwrap();
    client.got(&At::new("user:m", "f", 10)).unwrap();
}
