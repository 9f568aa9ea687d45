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
//! The connections speak RESP2 in subscribed mode, read by
//! [`super::resp`]. Replies come in the order of the commands, so a
//! queue of what each command still expects tells a confirmation from an
//! unrequested `sunsubscribe`, and names the partition of an error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::channels::{PARTITIONS, partition_of_slot, probe_channel, slot, stream_channel};
use super::conn::Conn;
use super::error::LinkError;
use super::resp::{Reply, open, read_reply};
use super::topology::read_owners;
use crate::stream::Stream;

/// What a node's connection read, tagged with the connection's id.
#[derive(Debug)]
pub struct Event {
    node: u64,
    kind: Reply,
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
