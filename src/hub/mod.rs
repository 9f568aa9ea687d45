//! The local registry: which connections this process holds, and fan-out to
//! them.
//!
//! Connections live in [`SHARDS`] independently locked maps, so connects,
//! disconnects and concurrent fan-outs on different shards never wait for
//! each other, and a fan-out holds each shard's read lock only while it
//! pushes into that shard's outboxes (pushes never await). A second sharded
//! index by user makes a per-user notification cost its recipients, not the
//! whole registry; a third by room ([`rooms`]) does the same for rooms. The
//! hub reports each [`Change`] a broker acts on (a user's or room's first
//! and last local connection, a user's arrival in and departure from a
//! room) while it holds the lock of the shard that changed, so changes of
//! one user or room reach the broker in the order they happened.

mod fanout;
mod rooms;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::flusher::Flusher;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{Close, Dialect};

pub use self::fanout::{Fanout, Rendered};
use crate::stream::Stream;

/// Number of registry shards. A power of two well above the core count keeps
/// the chance that two threads want the same shard's write lock small.
pub const SHARDS: usize = 64;

/// A connection's id, unique within this process.
pub type ConnId = u64;

/// Which connections a server-wide fan-out reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every connection (WebSocket pings).
    All,
    /// Connections speaking one [`Dialect`].
    Only(Dialect),
}

impl Audience {
    fn includes(self, dialect: Dialect) -> bool {
        match self {
            Audience::All => true,
            Audience::Only(only) => only == dialect,
        }
    }
}

/// What a registration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A WebSocket client: counted, present in its rooms, swept when idle.
    Client,
    /// A reader of streams over HTTP (a long-poll, an SSE stream): it gets
    /// its user's, its rooms' and the broadcast stream's messages, and
    /// nothing else about it shows (no count, no presence, no idle sweep).
    Waiter,
}

/// One registered connection.
#[derive(Debug, Clone)]
struct Conn {
    /// The client id from `/ws/{client_id}`, the token's `sub`, or a UUID.
    user: Arc<str>,
    outbox: Arc<Outbox>,
    dialect: Dialect,
    role: Role,
}

/// One shard of the user index: each user's local connections.
type UserShard = HashMap<Arc<str>, Vec<(ConnId, Arc<Outbox>, Dialect)>>;

/// A change of what this instance holds, which the broker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first local connection that wants this stream arrived: follow it
    /// (a user's first connection, a room's first member).
    Follow(Stream),
    /// The last local connection that wanted this stream left.
    Unfollow(Stream),
    /// A user's first local connection entered a room (presence).
    Arrived { room: Arc<str>, user: Arc<str> },
    /// A user's last local connection left a room (presence).
    Departed { room: Arc<str>, user: Arc<str> },
}

/// How many frames and bytes may wait for one connection.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub frames: usize,
    /// A single larger frame still goes out.
    pub bytes: usize,
}

/// The registry of local connections.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<HashMap<ConnId, Conn>>]>,
    /// The same connections by user, sharded by a hash of the user id.
    users: Box<[RwLock<UserShard>]>,
    hasher: RandomState,
    /// The same connections by room, sharded by a hash of the room name.
    rooms: Box<[RwLock<rooms::RoomShard>]>,
    /// Told about every [`Change`] (the Redis broker); `None` in memory mode.
    watcher: Option<mpsc::UnboundedSender<Change>>,
    /// Whether the hub sends presence events to local members itself, under
    /// the room's lock: in memory mode, where it is the whole world. With a
    /// watcher, the watcher announces them (from Redis, in Redis' order).
    announces_presence: bool,
    /// Registered connections; kept beside the shards so `/connections` is
    /// one atomic load instead of 64 locks.
    count: AtomicUsize,
    next_id: AtomicU64,
    bounds: QueueBounds,
    metrics: Arc<Metrics>,
    /// Writes idle plain-text connections' frames without waking them.
    flusher: Arc<Flusher>,
    /// The clock of the outboxes' last-seen times (tokio's, so paused time
    /// drives the idle sweep in tests).
    epoch: Instant,
}

/// Keeps a connection registered; dropping it unregisters the connection
/// and takes it out of every room it joined.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    id: ConnId,
    user: Arc<str>,
    outbox: Arc<Outbox>,
    dialect: Dialect,
    role: Role,
    rooms: Vec<Arc<str>>,
}

impl Registration {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// This connection's user.
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }

    /// The dialect this connection speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// This connection's outbound queue.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Lets the hub's [`Flusher`] write this connection's frames to
    /// `socket` directly while its session is idle. Only for connections
    /// whose outbox holds frames alone (plain text): a JSON connection's
    /// records pass its session's gate first.
    pub fn write_through(&self, socket: Arc<TcpStream>) {
        self.hub.flusher.start();
        self.outbox
            .attach(socket, self.hub.flusher.backlog(self.id));
    }

    /// The rooms this connection is in, in joining order.
    pub fn rooms(&self) -> &[Arc<str>] {
        &self.rooms
    }

    /// Whether this connection is in `room`.
    pub fn is_in(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| &**r == room)
    }

    /// Adds this connection to `room` and queues its `room.joined`: the
    /// room's local members at that instant plus `remote` (those other
    /// instances hold) plus this user. Already in: only the roster is sent
    /// again, and the answer is `false`.
    pub fn join(&mut self, room: &str, remote: &[String]) -> bool {
        if self.is_in(room) {
            if self.role == Role::Client {
                self.hub
                    .resend_roster(room, &self.user, &self.outbox, remote);
            }
            return false;
        }
        let room: Arc<str> = room.into();
        self.hub.add_to_room(
            room.clone(),
            self.id,
            &self.user,
            &self.outbox,
            self.role,
            remote,
        );
        self.rooms.push(room);
        true
    }

    /// Takes this connection out of `room`; `false` if it was not in.
    pub fn leave(&mut self, room: &str) -> bool {
        let Some(at) = self.rooms.iter().position(|r| &**r == room) else {
            return false;
        };
        let room = self.rooms.remove(at);
        self.hub
            .remove_from_room(room, self.id, &self.user, self.role);
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.outbox.close();
        for room in std::mem::take(&mut self.rooms) {
            self.hub
                .remove_from_room(room, self.id, &self.user, self.role);
        }
        self.hub.remove(self.id);
    }
}

impl Hub {
    /// An empty hub whose connections queue at most `bounds`; it announces
    /// presence itself until given a watcher.
    pub fn new(bounds: QueueBounds, metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            watcher: None,
            announces_presence: true,
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            bounds,
            flusher: Arc::new(Flusher::new(metrics.clone())),
            metrics,
            epoch: Instant::now(),
        }
    }

    /// A hub that reports every [`Change`] to `watcher`, which then also
    /// announces presence.
    pub fn with_watcher(mut self, watcher: mpsc::UnboundedSender<Change>) -> Self {
        self.watcher = Some(watcher);
        self.announces_presence = false;
        self
    }

    /// Registers a connection of `user` speaking `dialect`.
    ///
    /// `greeting` is queued before the connection becomes visible to any
    /// fan-out, so it is always the first frame the client receives.
    pub fn register(
        self: &Arc<Self>,
        dialect: Dialect,
        user: Arc<str>,
        greeting: Option<Bytes>,
    ) -> Registration {
        let (id, outbox) = self.new_outbox();
        if let Some(greeting) = greeting {
            outbox.push(greeting);
        }
        self.enlist(id, dialect, Role::Client, user, outbox, Vec::new())
    }

    /// Registers a [`Role::Waiter`] of `user`: it follows the user's
    /// stream and `broadcast` at once, and rooms it is made to join.
    pub fn register_waiter(self: &Arc<Self>, user: Arc<str>) -> Registration {
        let (id, outbox) = self.new_outbox();
        self.enlist(id, Dialect::Json, Role::Waiter, user, outbox, Vec::new())
    }

    /// Registers a JSON connection of `user` that starts in `room`; its
    /// first frame is the room's `room.joined` (see [`Registration::join`]).
    pub fn register_in_room(
        self: &Arc<Self>,
        user: Arc<str>,
        room: &str,
        remote: &[String],
    ) -> Registration {
        let (id, outbox) = self.new_outbox();
        let room: Arc<str> = room.into();
        self.add_to_room(room.clone(), id, &user, &outbox, Role::Client, remote);
        self.enlist(id, Dialect::Json, Role::Client, user, outbox, vec![room])
    }

    fn new_outbox(&self) -> (ConnId, Arc<Outbox>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.bounds.frames, self.bounds.bytes));
        outbox.touch(self.now_ms());
        (id, outbox)
    }

    /// Makes a connection visible to every fan-out.
    fn enlist(
        self: &Arc<Self>,
        id: ConnId,
        dialect: Dialect,
        role: Role,
        user: Arc<str>,
        outbox: Arc<Outbox>,
        rooms: Vec<Arc<str>>,
    ) -> Registration {
        let conn = Conn {
            user: user.clone(),
            outbox: outbox.clone(),
            dialect,
            role,
        };
        write(&self.shards[shard(id)]).insert(id, conn);
        self.add_to_user(user.clone(), id, outbox.clone(), dialect);
        if role == Role::Client {
            let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics.connection_opened(now);
        }
        Registration {
            hub: self.clone(),
            id,
            user,
            outbox,
            dialect,
            role,
            rooms,
        }
    }

    fn remove(&self, id: ConnId) {
        let Some(conn) = write(&self.shards[shard(id)]).remove(&id) else {
            return;
        };
        self.remove_from_user(conn.user, id);
        if conn.role == Role::Client {
            let now = self.count.fetch_sub(1, Ordering::Relaxed) - 1;
            self.metrics.connection_closed(now);
        }
    }

    fn user_shard(&self, user: &str) -> &RwLock<UserShard> {
        &self.users[self.hasher.hash_one(user) as usize % SHARDS]
    }

    // The watcher is told while the user's shard is locked, so a Follow and
    // the Unfollow that follows it can never be reported in the wrong order.
    fn add_to_user(&self, user: Arc<str>, id: ConnId, outbox: Arc<Outbox>, dialect: Dialect) {
        let mut users = write(self.user_shard(&user));
        let conns = users.entry(user.clone()).or_default();
        conns.push((id, outbox, dialect));
        if conns.len() == 1 {
            self.tell(Change::Follow(Stream::User(user)));
        }
    }

    fn remove_from_user(&self, user: Arc<str>, id: ConnId) {
        let mut users = write(self.user_shard(&user));
        let Some(conns) = users.get_mut(&user) else {
            return;
        };
        conns.retain(|(conn, _, _)| *conn != id);
        if conns.is_empty() {
            users.remove(&user);
            self.tell(Change::Unfollow(Stream::User(user)));
        }
    }

    fn tell(&self, change: Change) {
        if let Some(watcher) = &self.watcher {
            // Closed only when the broker has stopped, at exit: nothing to tell.
            let _ = watcher.send(change);
        }
    }

    /// Milliseconds on the hub's clock, for [`Outbox::touch`].
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Kills every connection that has sent nothing for `idle`; returns how
    /// many. One sweep over the shards replaces a timer per connection.
    pub fn sweep_idle(&self, idle: Duration) -> usize {
        let cutoff = self.now_ms().saturating_sub(idle.as_millis() as u64);
        let mut killed = 0;
        for shard in self.shards.iter() {
            for conn in read(shard).values().filter(|c| c.role == Role::Client) {
                if conn.outbox.last_seen_ms() < cutoff && conn.outbox.kill(Close::IdleTimeout) {
                    killed += 1;
                }
            }
        }
        killed
    }

    /// Every user with at least one local connection.
    pub fn users(&self) -> Vec<Arc<str>> {
        self.users
            .iter()
            .flat_map(|shard| read(shard).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Client connections registered right now (waiters not counted).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shard(id: ConnId) -> usize {
    (id as usize) % SHARDS
}

// A poisoned lock only means another thread panicked mid-insert or mid-remove
// of a HashMap entry, which leaves the map consistent: keep serving.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::outbox::Item;
    use crate::protocol::{self, json::ServerMessage};

    fn bounds(frames: usize) -> QueueBounds {
        QueueBounds {
            frames,
            bytes: usize::MAX,
        }
    }

    fn hub(frames: usize) -> Arc<Hub> {
        Arc::new(Hub::new(bounds(frames), Arc::new(Metrics::new())))
    }

    fn text_only() -> Audience {
        Audience::Only(Dialect::Text)
    }

    /// The two renderings of a notification `text`.
    fn notify(hub: &Hub, user: &str, text: &str) -> Fanout {
        let json = Item::Frame(ServerMessage::notification(text).frame());
        let plain = Item::Frame(protocol::text_frame(text));
        let rendered = Rendered {
            text: Some(&plain),
            json: Some(&json),
        };
        hub.send_to_user(user, rendered)
    }

    fn drained(reg: &Registration) -> VecDeque<Bytes> {
        let mut out = VecDeque::new();
        reg.outbox().drain_into(&mut out);
        out.into_iter()
            .map(|item| match item {
                Item::Frame(frame) => frame,
                Item::Record(record) => record.frame.clone(),
            })
            .collect()
    }

    #[test]
    fn broadcast_skips_the_sender_and_shares_bytes() {
        let hub = hub(4);
        let regs: Vec<_> = (0..100)
            .map(|i| hub.register(Dialect::Text, format!("u{i}").into(), None))
            .collect();
        let frame = Bytes::from_static(b"frame");
        let fanout = hub.send_to_audience(text_only(), &frame, Some(regs[0].id()));
        assert_eq!(
            fanout,
            Fanout {
                queued: 99,
                overflowed: 0
            }
        );
        assert!(drained(&regs[0]).is_empty());
        let got = drained(&regs[1]);
        assert_eq!(
            got[0].as_ptr(),
            frame.as_ptr(),
            "recipients share one buffer"
        );
    }

    #[test]
    fn the_greeting_is_queued_before_any_broadcast_can_reach_the_connection() {
        let hub = hub(4);
        let reg = hub.register(
            Dialect::Text,
            "a".into(),
            Some(Bytes::from_static(b"hello")),
        );
        hub.send_to_audience(text_only(), &Bytes::from_static(b"news"), None);
        assert_eq!(
            drained(&reg),
            [Bytes::from_static(b"hello"), Bytes::from_static(b"news")]
        );
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let hub = hub(4);
        let a = hub.register(Dialect::Text, "a".into(), None);
        let b = hub.register(Dialect::Text, "a".into(), None);
        assert_eq!(hub.len(), 2);
        assert_eq!(notify(&hub, "a", "x").queued, 2);
        drop(a);
        assert_eq!(hub.len(), 1);
        drop(b);
        assert!(hub.is_empty());
    }

    #[test]
    fn the_watcher_hears_first_joins_and_last_leaves() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(bounds(4), Arc::new(Metrics::new())).with_watcher(tx));
        let a1 = hub.register(Dialect::Text, "a".into(), None);
        let a2 = hub.register(Dialect::Text, "a".into(), None);
        let b = hub.register(Dialect::Text, "b".into(), None);
        assert_eq!(hub.users().len(), 2);
        drop(a1);
        drop(b);
        drop(a2);
        let heard: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            heard,
            [
                Change::Follow(Stream::User("a".into())),
                Change::Follow(Stream::User("b".into())),
                Change::Unfollow(Stream::User("b".into())),
                Change::Unfollow(Stream::User("a".into())),
            ]
        );
        assert!(hub.users().is_empty());
    }

    fn texts(reg: &Registration) -> Vec<String> {
        drained(reg)
            .iter()
            .map(|frame| String::from_utf8_lossy(&frame[2..]).into_owned())
            .collect()
    }

    #[test]
    fn rooms_reach_their_members_and_announce_presence_in_memory_mode() {
        let hub = hub(8);
        let mut a = hub.register(Dialect::Json, "a".into(), None);
        let mut b = hub.register(Dialect::Json, "b".into(), None);
        let mut b2 = hub.register(Dialect::Json, "b".into(), None);
        assert!(a.join("r", &[]));
        assert_eq!(
            texts(&a),
            [r#"{"type":"room.joined","room":"r","users":["a"]}"#]
        );
        assert!(!a.join("r", &["z".into()]), "joining twice is a no-op");
        assert_eq!(
            texts(&a),
            [r#"{"type":"room.joined","room":"r","users":["a","z"]}"#],
            "but the roster is sent again, with the remote members"
        );
        b.join("r", &[]);
        b2.join("r", &[]);
        assert_eq!(
            texts(&b),
            [r#"{"type":"room.joined","room":"r","users":["a","b"]}"#],
            "no presence.join about oneself"
        );
        let heard = texts(&a);
        assert_eq!(
            heard.len(),
            1,
            "b's second connection is not a new arrival: {heard:?}"
        );
        assert!(heard[0].contains(r#""type":"presence.join","room":"r","user":"b""#));
        assert_eq!(hub.room_users("r"), ["a", "b"]);

        let fanout = hub.send_to_room("r", &protocol::text_frame("x").into(), Some(a.id()));
        assert_eq!(fanout.queued, 2);
        drained(&b);
        drained(&b2);
        drop(b);
        assert_eq!(texts(&a), Vec::<String>::new(), "b is still present via b2");
        assert!(b2.leave("r"));
        assert!(!b2.leave("r"));
        let heard = texts(&a);
        assert!(heard[0].contains(r#""type":"presence.leave","room":"r","user":"b""#));
        drop(a);
        assert!(hub.rooms().is_empty());
        assert!(hub.presences().is_empty());
    }

    #[test]
    fn a_connection_registered_in_a_room_gets_the_roster_first() {
        let hub = hub(8);
        let _a = hub.register_in_room("a".into(), "r", &[]);
        let b = hub.register_in_room("b".into(), "r", &["remote".into()]);
        hub.send_to_audience(Audience::All, &protocol::ping_frame(), None);
        let got = drained(&b);
        assert_eq!(got.len(), 2);
        assert_eq!(
            String::from_utf8_lossy(&got[0][2..]),
            r#"{"type":"room.joined","room":"r","users":["a","b","remote"]}"#
        );
        assert_eq!(b.rooms(), [Arc::from("r")]);
    }

    #[test]
    fn the_watcher_hears_rooms_open_and_close_and_presence_change() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(bounds(4), Arc::new(Metrics::new())).with_watcher(tx));
        let mut a = hub.register(Dialect::Json, "a".into(), None);
        a.join("r", &[]);
        drop(a);
        let heard: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            heard,
            [
                Change::Follow(Stream::User("a".into())),
                Change::Follow(Stream::Room("r".into())),
                Change::Arrived {
                    room: "r".into(),
                    user: "a".into(),
                },
                Change::Departed {
                    room: "r".into(),
                    user: "a".into()
                },
                Change::Unfollow(Stream::Room("r".into())),
                Change::Unfollow(Stream::User("a".into())),
            ]
        );
    }

    #[test]
    fn plain_broadcasts_skip_json_connections_and_notifications_are_wrapped() {
        let hub = hub(4);
        let text = hub.register(Dialect::Text, "u".into(), None);
        let json = hub.register(Dialect::Json, "u".into(), None);
        assert_eq!(
            hub.send_to_audience(text_only(), &protocol::text_frame("t"), None)
                .queued,
            1
        );
        let ping = protocol::ping_frame();
        assert_eq!(hub.send_to_audience(Audience::All, &ping, None).queued, 2);
        assert_eq!(notify(&hub, "u", "hello").queued, 2);
        assert_eq!(texts(&text).last().unwrap(), "hello");
        assert_eq!(
            texts(&json).last().unwrap(),
            r#"{"type":"notification","data":"hello"}"#
        );
    }

    #[test]
    fn a_full_queue_overflows_only_that_connection() {
        let hub = hub(1);
        let slow = hub.register(Dialect::Text, "slow".into(), None);
        let fast = hub.register(Dialect::Text, "fast".into(), None);
        hub.send_to_audience(text_only(), &Bytes::from_static(b"1"), None);
        drained(&fast);
        let fanout = hub.send_to_audience(text_only(), &Bytes::from_static(b"2"), None);
        assert_eq!(
            fanout,
            Fanout {
                queued: 1,
                overflowed: 1
            }
        );
        assert_eq!(slow.outbox().killed_for(), Some(Close::SlowConsumer));
        assert_eq!(drained(&fast).len(), 1);
    }
}
