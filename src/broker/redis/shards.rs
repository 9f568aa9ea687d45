//! Sharded Pub/Sub on a Redis Cluster (`REDIS_CLUSTER_URLS`).
//!
//! The channel of each stream with history carries its partition's hash tag
//! ([`channels::stream_channel`]), so all channels of a partition hash to
//! one slot. They are `SSUBSCRIBE`d on the primary that serves that slot,
//! over one connection per primary, and the supervisor owns every
//! subscription: one command never names channels of two partitions (the
//! CROSSSLOT trap of client libraries that resubscribe everything at once).
//!
//! A partition is *up* once Redis confirmed its subscriptions. It goes
//! *down*, alone, when its node's connection drops, when Redis takes its
//! subscription away unasked (`sunsubscribe`: the slot moved), when a
//! command for it is answered `MOVED`, when its subscribing takes longer
//! than `REDIS_TIMEOUT`, or when its probe does not come back: every check
//! period the instance publishes on its own probe channel in each partition
//! ([`channels::probe_channel`]) and expects the message within
//! `REDIS_TIMEOUT`, which catches a silent node (paused, or failed over
//! without closing the connection). A down partition is subscribed again on
//! the slot's current owner (the slot map is read again first); until then
//! `/ready` is 503 and its streams' readers wait, as when Redis is down.
//!
//! The connections speak RESP2 in subscribed mode: the replies are flat
//! arrays (`smessage`, `ssubscribe`, `sunsubscribe`) and errors, read here
//! by [`read_reply`]. Replies come in the order of the commands, so a
//! queue of what each command still expects tells a confirmation from an
//! unrequested `sunsubscribe`, and names the partition of an error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::channels::{PARTITIONS, partition_of_slot, probe_channel, slot, stream_channel};
use super::conn::Conn;
use super::link::LinkError;
use crate::stream::Stream;

/// What a node's connection read, tagged with the connection's id.
#[derive(Debug)]
pub struct Event {
    node: u64,
    kind: Reply,
}

/// One reply of a connection in subscribed mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    Subscribed(String),
    Unsubscribed(String),
    Error(String),
    Pong,
    /// The connection ended.
    Closed,
}

/// What an event means for the supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    /// A message to route.
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    /// Partition `p` is subscribed again: its streams may have missed
    /// messages meanwhile (catch up), then they are live.
    Up(usize, Vec<Stream>),
    /// These streams' channels are confirmed in a partition already up.
    Live(Vec<Stream>),
    /// These partitions lost their subscription.
    Down(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    Subscribing(Instant),
    Up,
}

#[derive(Debug)]
struct Part {
    /// The streams followed in this partition, by channel.
    wanted: HashMap<String, Stream>,
    /// The node it is subscribed on (or being subscribed on).
    node: Option<String>,
    state: State,
    /// Channels sent but not yet confirmed.
    pending: HashSet<String>,
    probe_sent: Option<Instant>,
}

/// A command sent to a node and the replies it still expects.
#[derive(Debug)]
struct Sent {
    partition: usize,
    subscribe: bool,
    channels: HashSet<String>,
}

struct Node {
    id: u64,
    writer: OwnedWriteHalf,
    reader: JoinHandle<()>,
    sent: VecDeque<Sent>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Every partition's subscription, and the connections to the primaries.
pub struct Shards {
    instance: String,
    username: Option<String>,
    password: Option<String>,
    timeout: Duration,
    parts: Vec<Part>,
    nodes: HashMap<String, Node>,
    /// Which node serves each partition's slot, as last read.
    owners: Vec<Option<String>>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
}

impl Shards {
    /// No subscription yet; every partition is down until [`Shards::repair`].
    /// Events of the node connections arrive on the returned receiver.
    pub fn new(
        instance: &str,
        credentials: (Option<&str>, Option<&str>),
        timeout: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let parts = (0..PARTITIONS)
            .map(|_| Part {
                wanted: HashMap::new(),
                node: None,
                state: State::Down,
                pending: HashSet::new(),
                probe_sent: None,
            })
            .collect();
        let shards = Shards {
            instance: instance.to_owned(),
            username: credentials.0.map(str::to_owned),
            password: credentials.1.map(str::to_owned),
            timeout,
            parts,
            nodes: HashMap::new(),
            owners: vec![None; PARTITIONS],
            next_id: 0,
            events,
        };
        (shards, rx)
    }

    /// The partitions not subscribed right now.
    pub fn down(&self) -> Vec<usize> {
        (0..PARTITIONS)
            .filter(|&p| self.parts[p].state != State::Up)
            .collect()
    }

    /// Follows (`true`) or stops following the streams, in their
    /// partitions. A followed stream is live once its channel is confirmed
    /// ([`Outcome::Live`] or [`Outcome::Up`]); the ones no longer followed
    /// are returned, to be marked at once.
    pub async fn apply(&mut self, streams: &HashMap<Stream, bool>) -> Vec<Stream> {
        let mut subscribe: HashMap<usize, Vec<String>> = HashMap::new();
        let mut unsubscribe: HashMap<usize, Vec<String>> = HashMap::new();
        let mut gone = Vec::new();
        for (stream, &on) in streams {
            let channel = stream_channel(stream);
            let p = partition_of_slot(slot(channel.as_bytes()));
            let part = &mut self.parts[p];
            if on {
                if part
                    .wanted
                    .insert(channel.clone(), stream.clone())
                    .is_none()
                    && part.state != State::Down
                {
                    subscribe.entry(p).or_default().push(channel);
                }
            } else {
                gone.push(stream.clone());
                if part.wanted.remove(&channel).is_some() && part.state != State::Down {
                    unsubscribe.entry(p).or_default().push(channel);
                }
            }
        }
        for (p, channels) in subscribe {
            self.send(p, true, channels).await;
        }
        for (p, channels) in unsubscribe {
            self.send(p, false, channels).await;
        }
        gone
    }

    /// Sends one (S)SUBSCRIBE or SUNSUBSCRIBE of partition `p`'s channels
    /// to its node; a failed write takes the partition down (the next
    /// repair subscribes it again).
    async fn send(&mut self, p: usize, subscribe: bool, channels: Vec<String>) {
        let Some(addr) = self.parts[p].node.clone() else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&addr) else {
            self.parts[p].state = State::Down;
            return;
        };
        let mut cmd = redis::cmd(if subscribe {
            "SSUBSCRIBE"
        } else {
            "SUNSUBSCRIBE"
        });
        for channel in &channels {
            cmd.arg(channel);
        }
        let written = timeout(
            self.timeout,
            node.writer.write_all(&cmd.get_packed_command()),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            self.drop_node(&addr);
            return;
        }
        if subscribe {
            self.parts[p].pending.extend(channels.iter().cloned());
        }
        node.sent.push_back(Sent {
            partition: p,
            subscribe,
            channels: channels.into_iter().collect(),
        });
    }

    /// Subscribes every down partition again on its slot's current owner
    /// (reading the slot map first), and takes down those whose subscribing
    /// has not been confirmed within the timeout. Returns those taken down.
    pub async fn repair(&mut self, conn: &mut Conn) -> Result<Vec<usize>, LinkError> {
        let now = Instant::now();
        let stuck: Vec<usize> = (0..PARTITIONS)
            .filter(|&p| matches!(self.parts[p].state, State::Subscribing(at) if now - at > self.timeout))
            .collect();
        for &p in &stuck {
            // A node that confirms nothing is dropped: the next try connects afresh.
            if let Some(addr) = self.parts[p].node.clone() {
                self.drop_node(&addr);
            }
        }
        let down: Vec<usize> = (0..PARTITIONS)
            .filter(|&p| self.parts[p].state == State::Down)
            .collect();
        if down.is_empty() {
            return Ok(stuck);
        }
        self.owners = read_owners(conn, self.timeout).await?;
        let mut unreachable = HashSet::new();
        for p in down {
            let Some(addr) = self.owners[p].clone() else {
                continue;
            };
            if unreachable.contains(&addr) {
                continue;
            }
            if !self.nodes.contains_key(&addr) && !self.connect(&addr).await {
                unreachable.insert(addr);
                continue;
            }
            let part = &mut self.parts[p];
            part.node = Some(addr);
            part.state = State::Subscribing(Instant::now());
            part.pending.clear();
            part.probe_sent = None;
            let mut channels: Vec<String> = part.wanted.keys().cloned().collect();
            channels.push(probe_channel(p, &self.instance));
            self.send(p, true, channels).await;
        }
        Ok(stuck)
    }

    /// Opens a connection to the primary at `addr`; whether it worked.
    async fn connect(&mut self, addr: &str) -> bool {
        let opened = timeout(
            self.timeout,
            open(addr, self.username.as_deref(), self.password.as_deref()),
        )
        .await;
        let (reader, writer) = match opened {
            Ok(Ok(halves)) => halves,
            Ok(Err(err)) => {
                tracing::debug!(%err, addr, "cannot connect to a cluster node for shard channels");
                return false;
            }
            Err(_) => return false,
        };
        self.next_id += 1;
        let id = self.next_id;
        let events = self.events.clone();
        let reader = tokio::spawn(async move {
            let mut reader = BufReader::new(reader);
            loop {
                let kind = read_reply(&mut reader).await.unwrap_or(Reply::Closed);
                let closed = kind == Reply::Closed;
                if events.send(Event { node: id, kind }).is_err() || closed {
                    return;
                }
            }
        });
        self.nodes.insert(
            addr.to_owned(),
            Node {
                id,
                writer,
                reader,
                sent: VecDeque::new(),
            },
        );
        true
    }

    /// Forgets the connection to `addr`; its partitions are down.
    fn drop_node(&mut self, addr: &str) -> Vec<usize> {
        self.nodes.remove(addr);
        let mut down = Vec::new();
        for (p, part) in self.parts.iter_mut().enumerate() {
            if part.node.as_deref() == Some(addr) {
                part.node = None;
                if part.state != State::Down {
                    part.state = State::Down;
                    down.push(p);
                }
            }
        }
        down
    }

    fn take_down(&mut self, p: usize) -> Outcome {
        let part = &mut self.parts[p];
        if part.state == State::Down {
            return Outcome::Nothing;
        }
        part.state = State::Down;
        Outcome::Down(vec![p])
    }

    /// What one event of a node connection means.
    pub fn on_event(&mut self, event: Event) -> Outcome {
        let Some(addr) = self
            .nodes
            .iter()
            .find(|(_, node)| node.id == event.node)
            .map(|(addr, _)| addr.clone())
        else {
            return Outcome::Nothing; // a connection since dropped
        };
        match event.kind {
            Reply::Message { channel, payload } => {
                if let Some(p) = self.probe_of(&channel) {
                    self.parts[p].probe_sent = None;
                    return Outcome::Nothing;
                }
                Outcome::Message { channel, payload }
            }
            Reply::Subscribed(channel) => self.confirmed(&addr, channel),
            Reply::Unsubscribed(channel) => {
                let node = self.nodes.get_mut(&addr).expect("found above");
                if let Some(front) = node.sent.front_mut()
                    && !front.subscribe
                    && front.channels.remove(&channel)
                {
                    if front.channels.is_empty() {
                        node.sent.pop_front();
                    }
                    return Outcome::Nothing;
                }
                // Unasked: the slot moved away (or the node stopped serving it).
                let p = partition_of_slot(slot(channel.as_bytes()));
                tracing::warn!(
                    partition = p,
                    channel,
                    node = addr,
                    "Redis dropped a shard subscription (slot moved); resubscribing the partition"
                );
                self.take_down(p)
            }
            Reply::Error(message) => {
                let node = self.nodes.get_mut(&addr).expect("found above");
                let failed = node.sent.pop_front().map(|sent| sent.partition);
                // MOVED names the slot, so the partition, even if the queue did not.
                let moved = message
                    .strip_prefix("MOVED ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|s| s.parse::<u16>().ok())
                    .map(partition_of_slot);
                match moved.or(failed) {
                    Some(p) => {
                        tracing::warn!(
                            partition = p,
                            node = addr,
                            error = message,
                            "a shard subscription was refused; resubscribing the partition"
                        );
                        self.take_down(p)
                    }
                    None => Outcome::Nothing,
                }
            }
            Reply::Pong => Outcome::Nothing,
            Reply::Closed => {
                let down = self.drop_node(&addr);
                tracing::warn!(
                    node = addr,
                    partitions = down.len(),
                    "a cluster node's shard connection closed"
                );
                Outcome::Down(down)
            }
        }
    }

    fn confirmed(&mut self, addr: &str, channel: String) -> Outcome {
        if let Some(node) = self.nodes.get_mut(addr)
            && let Some(front) = node.sent.front_mut()
            && front.subscribe
            && front.channels.remove(&channel)
            && front.channels.is_empty()
        {
            node.sent.pop_front();
        }
        let p = partition_of_slot(slot(channel.as_bytes()));
        let part = &mut self.parts[p];
        part.pending.remove(&channel);
        match part.state {
            State::Subscribing(_) if part.pending.is_empty() => {
                part.state = State::Up;
                Outcome::Up(p, part.wanted.values().cloned().collect())
            }
            State::Up => match part.wanted.get(&channel) {
                Some(stream) => Outcome::Live(vec![stream.clone()]),
                None => Outcome::Nothing,
            },
            _ => Outcome::Nothing,
        }
    }

    fn probe_of(&self, channel: &str) -> Option<usize> {
        let p = partition_of_slot(slot(channel.as_bytes()));
        (channel == probe_channel(p, &self.instance)).then_some(p)
    }

    /// Takes down the partitions whose last probe did not come back within
    /// the timeout, and returns them.
    pub fn silent(&mut self) -> Vec<usize> {
        let now = Instant::now();
        let mut silent = Vec::new();
        for (p, part) in self.parts.iter_mut().enumerate() {
            if part.state == State::Up && part.probe_sent.is_some_and(|at| now - at > self.timeout)
            {
                part.state = State::Down;
                part.probe_sent = None;
                silent.push(p);
                tracing::debug!(partition = p, node = ?part.node, "a partition's probe did not come back; resubscribing it");
            }
        }
        silent
    }

    /// Publishes a probe in every partition that is up and has none on the
    /// way ([`Shards::silent`] looks for the echoes).
    pub async fn probe(&mut self, conn: &Conn) {
        let now = Instant::now();
        let mut sends = Vec::new();
        for (p, part) in self.parts.iter_mut().enumerate() {
            if part.state != State::Up || part.probe_sent.is_some() {
                continue;
            }
            part.probe_sent = Some(now);
            let mut conn = conn.clone();
            let channel = probe_channel(p, &self.instance);
            sends.push(async move {
                let _ = redis::cmd("SPUBLISH")
                    .arg(channel)
                    .arg("probe")
                    .query_async::<()>(&mut conn)
                    .await;
            });
        }
        let _ = timeout(self.timeout, futures_util::future::join_all(sends)).await;
    }

    /// The streams followed in partition `p`.
    pub fn streams(&self, p: usize) -> Vec<Stream> {
        self.parts[p].wanted.values().cloned().collect()
    }
}

/// Connects to `addr` (`host:port`) and authenticates.
async fn open(
    addr: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> std::io::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    if let Some(password) = password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = username {
            auth.arg(user);
        }
        auth.arg(password);
        writer.write_all(&auth.get_packed_command()).await?;
        if let Reply::Error(err) = read_reply(&mut reader).await? {
            return Err(std::io::Error::other(err));
        }
    }
    // Nothing was read past the AUTH reply: the buffer is empty.
    Ok((reader.into_inner(), writer))
}

/// Reads one reply of a connection in subscribed mode (RESP2).
pub async fn read_reply<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Reply> {
    let line = read_line(reader).await?;
    let (kind, rest) = split_type(&line)?;
    match kind {
        "-" => Ok(Reply::Error(rest.to_owned())),
        "+" if rest.eq_ignore_ascii_case("PONG") => Ok(Reply::Pong),
        "+" | ":" => Ok(Reply::Pong),
        "*" => {
            let n: usize = rest.parse().map_err(|_| bad("array length"))?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_item(reader).await?);
            }
            Ok(classify(items))
        }
        _ => Err(bad("reply type")),
    }
}

/// An array element: a bulk string, or an integer as its digits.
async fn read_item<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Vec<u8>> {
    let line = read_line(reader).await?;
    let (kind, rest) = split_type(&line)?;
    match kind {
        ":" | "+" => Ok(rest.as_bytes().to_vec()),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
            if len < 0 {
                return Ok(Vec::new());
            }
            // Nothing wsnotify publishes is near this (messages are at most
            // 16 MiB); a larger length is a broken stream, not an allocation.
            if len > 64 << 20 {
                return Err(bad("bulk length"));
            }
            let mut bytes = vec![0u8; len as usize + 2];
            reader.read_exact(&mut bytes).await?;
            bytes.truncate(len as usize);
            Ok(bytes)
        }
        _ => Err(bad("array element")),
    }
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(bad("empty line"));
    }
    Ok(line)
}

/// A reply line's type byte and the rest.
fn split_type(line: &str) -> std::io::Result<(&str, &str)> {
    if !line.is_char_boundary(1) {
        return Err(bad("reply type"));
    }
    Ok(line.split_at(1))
}

fn classify(items: Vec<Vec<u8>>) -> Reply {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match items.as_slice() {
        [kind, channel, payload]
            if kind.eq_ignore_ascii_case(b"smessage") || kind.eq_ignore_ascii_case(b"message") =>
        {
            Reply::Message {
                channel: text(channel),
                payload: payload.clone(),
            }
        }
        [kind, channel, _] if kind.eq_ignore_ascii_case(b"ssubscribe") => {
            Reply::Subscribed(text(channel))
        }
        [kind, channel, _] if kind.eq_ignore_ascii_case(b"sunsubscribe") => {
            Reply::Unsubscribed(text(channel))
        }
        _ => Reply::Pong,
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad RESP {what}"))
}

/// The primary serving each partition's slot, from `CLUSTER SLOTS`
/// (`[[start, end, [host, port, …], replicas…], …]`).
async fn read_owners(conn: &mut Conn, limit: Duration) -> Result<Vec<Option<String>>, LinkError> {
    let reply: redis::Value =
        match timeout(limit, redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await {
            Ok(reply) => reply?,
            Err(_) => return Err(LinkError::Timeout("CLUSTER SLOTS")),
        };
    let ranges = owners_of(&reply).ok_or(LinkError::Reply("CLUSTER SLOTS"))?;
    Ok((0..PARTITIONS)
        .map(|p| {
            let tag_slot = slot(super::channels::tag(p).as_bytes());
            ranges
                .iter()
                .find(|(start, end, _)| (*start..=*end).contains(&tag_slot))
                .map(|(_, _, addr)| addr.clone())
        })
        .collect())
}

/// `(start, end, "host:port")` of each range of a `CLUSTER SLOTS` reply.
fn owners_of(reply: &redis::Value) -> Option<Vec<(u16, u16, String)>> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let Value::Array(primary) = fields.get(2)? else {
                return None;
            };
            let host = text(primary.first()?)?;
            let port = match primary.get(1)? {
                Value::Int(n) => *n,
                _ => return None,
            };
            Some((
                int(fields.first()?)?,
                int(fields.get(1)?)?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    async fn replies(bytes: &[u8]) -> Vec<Reply> {
        let mut reader = BufReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match read_reply(&mut reader).await {
                Ok(reply) => out.push(reply),
                Err(err) => {
                    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn subscribed_mode_replies_are_read() {
        let wire = b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n\
            *3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$6\r\na\r\nb\xffc\r\n\
            *3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n\
            -MOVED 3999 127.0.0.1:7002\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(
            replies(wire).await,
            [
                Reply::Subscribed("ch".into()),
                Reply::Message {
                    channel: "ch".into(),
                    payload: b"a\r\nb\xffc".to_vec(),
                },
                Reply::Unsubscribed("ch".into()),
                Reply::Error("MOVED 3999 127.0.0.1:7002".into()),
                Reply::Pong,
            ]
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let wires: [&[u8]; 5] = [
            b"?\r\n",
            b"*x\r\n",
            b"*1\r\n$-x\r\n",
            b"\r\n",
            "\u{e9}t\r\n".as_bytes(),
        ];
        for wire in wires {
            let mut reader = BufReader::new(wire);
            assert!(read_reply(&mut reader).await.is_err(), "{wire:?}");
        }
    }

    #[test]
    fn cluster_slots_name_each_ranges_primary() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |port: i64| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        assert_eq!(
            owners_of(&reply).unwrap(),
            [
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "127.0.0.1:7001".to_owned())
            ]
        );
        assert_eq!(owners_of(&Value::Int(1)), None);
    }
}
