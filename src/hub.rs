//! The local registry: which connections this process holds, and fan-out to
//! them.
//!
//! Connections live in [`SHARDS`] independently locked maps, so connects,
//! disconnects and concurrent broadcasts on different shards never wait for
//! each other, and a broadcast holds each shard's read lock only while it
//! pushes into that shard's outboxes (pushes never await). A second sharded
//! index by user makes a per-user notification cost its recipients, not the
//! whole registry, and tells the broker when a user's first connection
//! arrives and its last one leaves (to subscribe to `notifications:{user}`).
//! A third index by room does the same for rooms: a room message costs its
//! members, and the broker hears when a room opens or closes on this
//! instance (`rooms:{room}`) and when a user arrives in or departs from a room
//! (presence). In memory mode the hub is the whole world, so it sends the
//! `presence.join`/`presence.leave` events itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::message::{ServerMessage, now_ms};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Push};
use crate::protocol::{self, Close};

/// Number of registry shards. A power of two well above the core count keeps
/// the chance that two threads want the same shard's write lock small.
pub const SHARDS: usize = 64;

/// A connection's id, unique within this process.
pub type ConnId = u64;

/// Which protocol a connection speaks, which decides the fan-outs it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/ws`, `/ws/{client_id}`: the seeds' plain texts.
    Text,
    /// `/ws/rooms/{room}`: the typed JSON protocol ([`crate::message`]).
    Json,
}

/// Which connections a server-wide fan-out reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every connection (WebSocket pings).
    All,
    /// Connections of one [`Kind`].
    Only(Kind),
}

impl Audience {
    fn includes(self, kind: Kind) -> bool {
        match self {
            Audience::All => true,
            Audience::Only(only) => only == kind,
        }
    }
}

/// One registered connection.
#[derive(Debug, Clone)]
struct Conn {
    /// The client id from `/ws/{client_id}`, the token's `sub`, or a UUID.
    user: Arc<str>,
    outbox: Arc<Outbox>,
    kind: Kind,
}

/// One shard of the user index: each user's local connections.
type UserShard = HashMap<Arc<str>, Vec<(ConnId, Arc<Outbox>, Kind)>>;

/// One room's local members.
#[derive(Debug, Default)]
struct Room {
    conns: Vec<(ConnId, Arc<Outbox>, Arc<str>)>,
    /// Local connections in the room per user.
    users: HashMap<Arc<str>, usize>,
}

/// One shard of the room index.
type RoomShard = HashMap<Arc<str>, Room>;

/// A change the broker acts on: subscriptions and presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// A user's first local connection arrived.
    Joined(Arc<str>),
    /// A user's last local connection left.
    Left(Arc<str>),
    /// A room's first local connection joined it.
    Opened(Arc<str>),
    /// A room's last local connection left it.
    Closed(Arc<str>),
    /// A user's first local connection joined a room.
    Arrived { room: Arc<str>, user: Arc<str> },
    /// A user's last local connection left a room.
    Departed { room: Arc<str>, user: Arc<str> },
}

/// The registry of local connections.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<HashMap<ConnId, Conn>>]>,
    /// The same connections by user, sharded by a hash of the user id.
    users: Box<[RwLock<UserShard>]>,
    user_hasher: RandomState,
    /// The same connections by room, sharded by a hash of the room name.
    rooms: Box<[RwLock<RoomShard>]>,
    /// Told about [`Membership`] changes (the Redis broker); `None` in memory mode.
    watcher: Option<mpsc::UnboundedSender<Membership>>,
    /// Whether the hub sends presence events to local members itself:
    /// always in memory mode, and in Redis mode while Redis is unreachable.
    local_presence: AtomicBool,
    /// Registered connections; kept beside the shards so `/connections` is
    /// one atomic load instead of 64 locks.
    count: AtomicUsize,
    next_id: AtomicU64,
    queue_bound: usize,
    /// Most bytes one connection's queue may hold.
    queue_bytes: usize,
    metrics: Arc<Metrics>,
    /// The clock of the outboxes' last-seen times.
    epoch: Instant,
}

/// What a fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Connections the frame was queued for.
    pub queued: usize,
    /// Connections disconnected by this fan-out because their queue was full.
    pub overflowed: usize,
}

/// Keeps a connection registered; dropping it unregisters the connection
/// and takes it out of every room it joined.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    id: ConnId,
    user: Arc<str>,
    outbox: Arc<Outbox>,
    kind: Kind,
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

    /// The protocol this connection speaks.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// This connection's outbound queue.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
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
            self.hub
                .resend_roster(room, &self.user, &self.outbox, remote);
            return false;
        }
        let room: Arc<str> = room.into();
        self.hub
            .add_to_room(room.clone(), self.id, &self.user, &self.outbox, remote);
        self.rooms.push(room);
        true
    }

    /// Takes this connection out of `room`; `false` if it was not in.
    pub fn leave(&mut self, room: &str) -> bool {
        let Some(at) = self.rooms.iter().position(|r| &**r == room) else {
            return false;
        };
        let room = self.rooms.remove(at);
        self.hub.remove_from_room(room, self.id, &self.user);
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.outbox.close();
        for room in std::mem::take(&mut self.rooms) {
            self.hub.remove_from_room(room, self.id, &self.user);
        }
        self.hub.remove(self.id);
    }
}

impl Hub {
    /// An empty hub whose connections queue at most `queue_bound` frames.
    pub fn new(queue_bound: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            user_hasher: RandomState::new(),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            watcher: None,
            local_presence: AtomicBool::new(true),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            queue_bound,
            queue_bytes: usize::MAX,
            metrics,
            epoch: Instant::now(),
        }
    }

    /// Registers a plain-text connection of `user`; see [`Hub::register_as`].
    pub fn register(self: &Arc<Self>, user: Arc<str>, greeting: Option<Bytes>) -> Registration {
        self.register_as(Kind::Text, user, greeting)
    }

    /// Registers a connection of `user` speaking `kind`.
    ///
    /// `greeting` is queued before the connection becomes visible to any
    /// fan-out, so it is always the first frame the client receives.
    pub fn register_as(
        self: &Arc<Self>,
        kind: Kind,
        user: Arc<str>,
        greeting: Option<Bytes>,
    ) -> Registration {
        let (id, outbox) = self.new_outbox();
        if let Some(greeting) = greeting {
            outbox.push(greeting);
        }
        self.enlist(id, kind, user, outbox, Vec::new())
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
        self.add_to_room(room.clone(), id, &user, &outbox, remote);
        self.enlist(id, Kind::Json, user, outbox, vec![room])
    }

    fn new_outbox(&self) -> (ConnId, Arc<Outbox>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.queue_bound, self.queue_bytes));
        outbox.touch(self.now_ms());
        (id, outbox)
    }

    /// Makes a connection visible to every fan-out.
    fn enlist(
        self: &Arc<Self>,
        id: ConnId,
        kind: Kind,
        user: Arc<str>,
        outbox: Arc<Outbox>,
        rooms: Vec<Arc<str>>,
    ) -> Registration {
        let conn = Conn {
            user: user.clone(),
            outbox: outbox.clone(),
            kind,
        };
        write(&self.shards[shard(id)]).insert(id, conn);
        self.add_to_user(user.clone(), id, outbox.clone(), kind);
        let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.connection_opened(now);
        Registration {
            hub: self.clone(),
            id,
            user,
            outbox,
            kind,
            rooms,
        }
    }

    /// A hub whose connections queue at most `bytes` bytes (unbounded by
    /// default; the server sets `OUTBOUND_QUEUE_BYTES`).
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// A hub that reports [`Membership`] changes to `watcher`, which then
    /// announces presence (see [`Hub::set_local_presence`]).
    pub fn with_watcher(mut self, watcher: mpsc::UnboundedSender<Membership>) -> Self {
        self.watcher = Some(watcher);
        self.local_presence = AtomicBool::new(false);
        self
    }

    /// Makes the hub send presence events to local members itself (`true`:
    /// the watcher cannot, Redis being unreachable) or leave them to the
    /// watcher (`false`).
    pub fn set_local_presence(&self, on: bool) {
        self.local_presence.store(on, Ordering::Relaxed);
    }

    fn announces_presence(&self) -> bool {
        self.local_presence.load(Ordering::Relaxed)
    }

    fn remove(&self, id: ConnId) {
        let Some(conn) = write(&self.shards[shard(id)]).remove(&id) else {
            return;
        };
        self.remove_from_user(conn.user, id);
        let now = self.count.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.connection_closed(now);
    }

    fn user_shard(&self, user: &str) -> &RwLock<UserShard> {
        &self.users[self.user_hasher.hash_one(user) as usize % SHARDS]
    }

    // The watcher is told while the user's shard is locked, so a Joined and
    // the Left that follows it can never be reported in the wrong order.
    fn add_to_user(&self, user: Arc<str>, id: ConnId, outbox: Arc<Outbox>, kind: Kind) {
        let mut users = write(self.user_shard(&user));
        let conns = users.entry(user.clone()).or_default();
        conns.push((id, outbox, kind));
        if conns.len() == 1 {
            self.tell(Membership::Joined(user));
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
            self.tell(Membership::Left(user));
        }
    }

    fn room_shard(&self, room: &str) -> &RwLock<RoomShard> {
        &self.rooms[self.user_hasher.hash_one(room) as usize % SHARDS]
    }

    // Everything below happens under the room's write lock: the roster a
    // joiner gets and the presence events the members get form one order, so
    // a joiner learns of every other member exactly once, from its roster or
    // from a later event, and never keeps one that left.
    fn add_to_room(
        &self,
        room: Arc<str>,
        id: ConnId,
        user: &Arc<str>,
        outbox: &Arc<Outbox>,
        remote: &[String],
    ) {
        let mut rooms = write(self.room_shard(&room));
        let entry = rooms.entry(room.clone()).or_default();
        outbox.push(roster(&room, entry, Some(user), remote));
        entry.conns.push((id, outbox.clone(), user.clone()));
        if entry.conns.len() == 1 {
            self.tell(Membership::Opened(room.clone()));
        }
        let count = entry.users.entry(user.clone()).or_default();
        *count += 1;
        if *count > 1 {
            return;
        }
        self.tell(Membership::Arrived {
            room: room.clone(),
            user: user.clone(),
        });
        if self.announces_presence() {
            let event = ServerMessage::PresenceJoin {
                room: room.to_string(),
                user: user.to_string(),
                ts: now_ms(),
            };
            self.push_to_members(&room, entry, &event.frame(), Skip::User(user));
        }
    }

    fn remove_from_room(&self, room: Arc<str>, id: ConnId, user: &Arc<str>) {
        let mut rooms = write(self.room_shard(&room));
        let Some(entry) = rooms.get_mut(&room) else {
            return;
        };
        entry.conns.retain(|(conn, _, _)| *conn != id);
        match entry.users.get_mut(user) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                entry.users.remove(user);
                self.tell(Membership::Departed {
                    room: room.clone(),
                    user: user.clone(),
                });
                if self.announces_presence() {
                    let event = ServerMessage::PresenceLeave {
                        room: room.to_string(),
                        user: user.to_string(),
                        ts: now_ms(),
                    };
                    self.push_to_members(&room, entry, &event.frame(), Skip::User(user));
                }
            }
            None => {}
        }
        if entry.conns.is_empty() {
            rooms.remove(&room);
            self.tell(Membership::Closed(room));
        }
    }

    /// Re-sends `room.joined` to a connection already in `room`.
    fn resend_roster(&self, room: &str, user: &str, outbox: &Outbox, remote: &[String]) {
        if let Some(entry) = read(self.room_shard(room)).get(room) {
            outbox.push(roster(room, entry, Some(user), remote));
        }
    }

    /// Sends every local member of `room` a fresh `room.joined`: the local
    /// members plus `remote`. After a Redis outage, events were lost; the
    /// roster resets what the clients believe.
    pub fn resync_room(&self, room: &str, remote: &[String]) -> Fanout {
        match read(self.room_shard(room)).get(room) {
            Some(entry) => {
                let frame = roster(room, entry, None, remote);
                self.push_to_members(room, entry, &frame, Skip::Nobody)
            }
            None => Fanout::default(),
        }
    }

    /// The users with a local connection in `room`, sorted.
    pub fn room_users(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = read(self.room_shard(room))
            .get(room)
            .map(|entry| entry.users.keys().map(|u| u.to_string()).collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Every room with at least one local connection.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms
            .iter()
            .flat_map(|shard| read(shard).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Every (room, user) pair present on this instance.
    pub fn presences(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.rooms
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .flat_map(|(room, entry)| {
                        entry.users.keys().map(|user| (room.clone(), user.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Queues `frame` for every local member of `room` but `except`.
    pub fn send_to_room(&self, room: &str, frame: &Bytes, except: Option<ConnId>) -> Fanout {
        let skip = except.map_or(Skip::Nobody, Skip::Conn);
        match read(self.room_shard(room)).get(room) {
            Some(entry) => self.push_to_members(room, entry, frame, skip),
            None => Fanout::default(),
        }
    }

    /// Queues the presence event `frame` about `user` for every local member
    /// of `room` but `user`'s own connections: nobody hears of themselves.
    pub fn send_presence(&self, room: &str, frame: &Bytes, user: &str) -> Fanout {
        match read(self.room_shard(room)).get(room) {
            Some(entry) => self.push_to_members(room, entry, frame, Skip::User(user)),
            None => Fanout::default(),
        }
    }

    fn push_to_members(&self, room: &str, entry: &Room, frame: &Bytes, skip: Skip<'_>) -> Fanout {
        self.timed(|fanout| {
            let members = entry.conns.iter().filter(|(id, _, user)| match skip {
                Skip::Nobody => true,
                Skip::Conn(except) => *id != except,
                Skip::User(except) => &**user != except,
            });
            for (id, outbox, _) in members {
                fanout.record(outbox.push(frame.clone()), *id, room);
            }
        })
    }

    /// Runs one fan-out and records its time and overflows in the metrics.
    fn timed(&self, fan_out: impl FnOnce(&mut Fanout)) -> Fanout {
        let started = Instant::now();
        let mut fanout = Fanout::default();
        fan_out(&mut fanout);
        self.metrics.fanout(started.elapsed(), fanout.overflowed);
        fanout
    }

    fn tell(&self, change: Membership) {
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
            for conn in read(shard).values() {
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

    /// Connections registered right now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `frame` for every plain-text connection but `except`: the
    /// seeds' broadcasts, which JSON clients could not parse.
    pub fn broadcast(&self, frame: &Bytes, except: Option<ConnId>) -> Fanout {
        self.fan_out(frame, |id, conn| {
            Some(id) != except && conn.kind == Kind::Text
        })
    }

    /// Queues `frame` for every connection in `audience`.
    pub fn broadcast_to(&self, audience: Audience, frame: &Bytes) -> Fanout {
        self.fan_out(frame, |_, conn| audience.includes(conn.kind))
    }

    /// Sends the notification `text` to every connection of `user`: as is to
    /// plain-text connections, as a `notification` message to JSON ones.
    pub fn send_to_user(&self, user: &str, text: &str) -> Fanout {
        self.timed(|fanout| {
            let users = read(self.user_shard(user));
            let Some(conns) = users.get(user) else {
                return;
            };
            let mut plain = None;
            let mut json = None;
            for (id, outbox, kind) in conns {
                let frame = match kind {
                    Kind::Text => plain.get_or_insert_with(|| protocol::text_frame(text)),
                    Kind::Json => {
                        json.get_or_insert_with(|| ServerMessage::notification(text).frame())
                    }
                };
                fanout.record(outbox.push(frame.clone()), *id, user);
            }
        })
    }

    fn fan_out(&self, frame: &Bytes, wanted: impl Fn(ConnId, &Conn) -> bool) -> Fanout {
        self.timed(|fanout| {
            for shard in self.shards.iter() {
                let conns = read(shard);
                for (&id, conn) in conns.iter().filter(|(id, conn)| wanted(**id, conn)) {
                    fanout.record(conn.outbox.push(frame.clone()), id, &conn.user);
                }
            }
        })
    }
}

impl Fanout {
    /// Counts one push; `to` names the fan-out's target (a user, a room)
    /// for the log.
    fn record(&mut self, push: Push, id: ConnId, to: &str) {
        match push {
            Push::Queued => self.queued += 1,
            Push::Overflowed => {
                self.overflowed += 1;
                tracing::warn!(
                    conn = id,
                    to,
                    "slow consumer: outbound queue full, disconnecting"
                );
            }
            Push::Closed => {}
        }
    }
}

/// Which members of a room a fan-out leaves out.
#[derive(Debug, Clone, Copy)]
enum Skip<'a> {
    Nobody,
    Conn(ConnId),
    /// Every connection of this user.
    User(&'a str),
}

/// The `room.joined` frame for `user` (if any) entering a room whose local
/// members are `entry`'s and whose members elsewhere are `remote`.
fn roster(room: &str, entry: &Room, user: Option<&str>, remote: &[String]) -> Bytes {
    let mut users: Vec<String> = entry
        .users
        .keys()
        .map(|u| u.to_string())
        .chain(remote.iter().cloned())
        .chain(user.map(str::to_owned))
        .collect();
    users.sort();
    users.dedup();
    ServerMessage::Joined {
        room: room.to_owned(),
        users,
    }
    .frame()
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

    fn hub(bound: usize) -> Arc<Hub> {
        Arc::new(Hub::new(bound, Arc::new(Metrics::new())))
    }

    fn drained(reg: &Registration) -> VecDeque<Bytes> {
        let mut out = VecDeque::new();
        reg.outbox().drain_into(&mut out);
        out
    }

    #[test]
    fn broadcast_skips_the_sender_and_shares_bytes() {
        let hub = hub(4);
        let regs: Vec<_> = (0..100)
            .map(|i| hub.register(format!("u{i}").into(), None))
            .collect();
        let frame = Bytes::from_static(b"frame");
        let fanout = hub.broadcast(&frame, Some(regs[0].id()));
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
        let reg = hub.register("a".into(), Some(Bytes::from_static(b"hello")));
        hub.broadcast(&Bytes::from_static(b"news"), None);
        assert_eq!(
            drained(&reg),
            [Bytes::from_static(b"hello"), Bytes::from_static(b"news")]
        );
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let hub = hub(4);
        let a = hub.register("a".into(), None);
        let b = hub.register("a".into(), None);
        assert_eq!(hub.len(), 2);
        assert_eq!(hub.send_to_user("a", "x").queued, 2);
        drop(a);
        assert_eq!(hub.len(), 1);
        drop(b);
        assert!(hub.is_empty());
    }

    #[test]
    fn the_watcher_hears_first_joins_and_last_leaves() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(4, Arc::new(Metrics::new())).with_watcher(tx));
        let a1 = hub.register("a".into(), None);
        let a2 = hub.register("a".into(), None);
        let b = hub.register("b".into(), None);
        assert_eq!(hub.users().len(), 2);
        drop(a1);
        drop(b);
        drop(a2);
        let heard: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            heard,
            [
                Membership::Joined("a".into()),
                Membership::Joined("b".into()),
                Membership::Left("b".into()),
                Membership::Left("a".into()),
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
        let mut a = hub.register_as(Kind::Json, "a".into(), None);
        let mut b = hub.register_as(Kind::Json, "b".into(), None);
        let mut b2 = hub.register_as(Kind::Json, "b".into(), None);
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

        let fanout = hub.send_to_room("r", &protocol::text_frame("x"), Some(a.id()));
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
        hub.broadcast_to(Audience::All, &protocol::ping_frame());
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
        let hub = Arc::new(Hub::new(4, Arc::new(Metrics::new())).with_watcher(tx));
        let mut a = hub.register_as(Kind::Json, "a".into(), None);
        a.join("r", &[]);
        drop(a);
        let heard: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            heard,
            [
                Membership::Joined("a".into()),
                Membership::Opened("r".into()),
                Membership::Arrived {
                    room: "r".into(),
                    user: "a".into(),
                },
                Membership::Departed {
                    room: "r".into(),
                    user: "a".into()
                },
                Membership::Closed("r".into()),
                Membership::Left("a".into()),
            ]
        );
    }

    #[test]
    fn plain_broadcasts_skip_json_connections_and_notifications_are_wrapped() {
        let hub = hub(4);
        let text = hub.register("u".into(), None);
        let json = hub.register_as(Kind::Json, "u".into(), None);
        assert_eq!(hub.broadcast(&protocol::text_frame("t"), None).queued, 1);
        let ping = protocol::ping_frame();
        assert_eq!(hub.broadcast_to(Audience::All, &ping).queued, 2);
        assert_eq!(hub.send_to_user("u", "hello").queued, 2);
        assert_eq!(texts(&text).last().unwrap(), "hello");
        assert_eq!(
            texts(&json).last().unwrap(),
            r#"{"type":"notification","data":"hello"}"#
        );
    }

    #[test]
    fn a_full_queue_overflows_only_that_connection() {
        let hub = hub(1);
        let slow = hub.register("slow".into(), None);
        let fast = hub.register("fast".into(), None);
        hub.broadcast(&Bytes::from_static(b"1"), None);
        drained(&fast);
        let fanout = hub.broadcast(&Bytes::from_static(b"2"), None);
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
