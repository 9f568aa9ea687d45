//! The hub's room index: each room's local members, the `room.joined`
//! rosters, and, in memory mode, the presence events.
//!
//! Everything that changes a room happens under that room's shard write
//! lock: the roster a joiner gets and the presence events the members get
//! form one order, so a joiner learns of every other member exactly once,
//! from its roster or from a later event, and never keeps one that left.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;

use super::{Change, ConnId, Fanout, Hub, Role, SHARDS, read, write};
use crate::outbox::{Item, Outbox};
use crate::protocol::json::{ServerMessage, now_ms};
use crate::stream::Stream;

/// One room's local members.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// Every connection in the room, waiters included.
    conns: Vec<(ConnId, Arc<Outbox>, Arc<str>)>,
    /// Local client connections in the room per user: presence.
    users: HashMap<Arc<str>, usize>,
}

/// One shard of the room index.
pub(super) type RoomShard = HashMap<Arc<str>, Room>;

/// Which members of a room a fan-out leaves out.
#[derive(Debug, Clone, Copy)]
enum Skip<'a> {
    Nobody,
    Conn(ConnId),
    /// Every connection of this user.
    User(&'a str),
}

impl Hub {
    fn room_shard(&self, room: &str) -> &std::sync::RwLock<RoomShard> {
        &self.rooms[self.hasher.hash_one(room) as usize % SHARDS]
    }

    pub(super) fn add_to_room(
        &self,
        room: Arc<str>,
        id: ConnId,
        user: &Arc<str>,
        outbox: &Arc<Outbox>,
        role: Role,
        remote: &[String],
    ) {
        let mut rooms = write(self.room_shard(&room));
        let entry = rooms.entry(room.clone()).or_default();
        if role == Role::Client {
            outbox.push(roster(&room, entry, Some(user), remote));
        }
        entry.conns.push((id, outbox.clone(), user.clone()));
        if entry.conns.len() == 1 {
            self.tell(Change::Follow(Stream::Room(room.clone())));
        }
        if role == Role::Waiter {
            return;
        }
        let count = entry.users.entry(user.clone()).or_default();
        *count += 1;
        if *count > 1 {
            return;
        }
        self.tell(Change::Arrived {
            room: room.clone(),
            user: user.clone(),
        });
        if self.announces_presence {
            let event = ServerMessage::PresenceJoin {
                room: room.to_string(),
                user: user.to_string(),
                ts: now_ms(),
            };
            self.push_to_members(&room, entry, &event.frame().into(), Skip::User(user));
        }
    }

    pub(super) fn remove_from_room(&self, room: Arc<str>, id: ConnId, user: &Arc<str>, role: Role) {
        let mut rooms = write(self.room_shard(&room));
        let Some(entry) = rooms.get_mut(&room) else {
            return;
        };
        entry.conns.retain(|(conn, _, _)| *conn != id);
        let presence = match role {
            Role::Client => entry.users.get_mut(user),
            Role::Waiter => None,
        };
        match presence {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                entry.users.remove(user);
                self.tell(Change::Departed {
                    room: room.clone(),
                    user: user.clone(),
                });
                if self.announces_presence {
                    let event = ServerMessage::PresenceLeave {
                        room: room.to_string(),
                        user: user.to_string(),
                        ts: now_ms(),
                    };
                    self.push_to_members(&room, entry, &event.frame().into(), Skip::User(user));
                }
            }
            None => {}
        }
        if entry.conns.is_empty() {
            rooms.remove(&room);
            self.tell(Change::Unfollow(Stream::Room(room)));
        }
    }

    /// Re-sends `room.joined` to a connection already in `room`.
    pub(super) fn resend_roster(
        &self,
        room: &str,
        user: &str,
        outbox: &Arc<Outbox>,
        remote: &[String],
    ) {
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
                self.push_to_members(room, entry, &frame.into(), Skip::Nobody)
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

    /// Queues `item` for every local member of `room` but `except`.
    pub fn send_to_room(&self, room: &str, item: &Item, except: Option<ConnId>) -> Fanout {
        let skip = except.map_or(Skip::Nobody, Skip::Conn);
        match read(self.room_shard(room)).get(room) {
            Some(entry) => self.push_to_members(room, entry, item, skip),
            None => Fanout::default(),
        }
    }

    /// The outboxes of every local member of `room`.
    pub(super) fn room_outboxes(&self, room: &str) -> Vec<Arc<Outbox>> {
        read(self.room_shard(room))
            .get(room)
            .map(|entry| entry.conns.iter().map(|(_, o, _)| o.clone()).collect())
            .unwrap_or_default()
    }

    /// Queues the presence event `frame` about `user` for every local member
    /// of `room` but `user`'s own connections: nobody hears of themselves.
    pub fn send_presence(&self, room: &str, frame: &Bytes, user: &str) -> Fanout {
        let item = Item::Frame(frame.clone());
        match read(self.room_shard(room)).get(room) {
            Some(entry) => self.push_to_members(room, entry, &item, Skip::User(user)),
            None => Fanout::default(),
        }
    }

    fn push_to_members(&self, room: &str, entry: &Room, item: &Item, skip: Skip<'_>) -> Fanout {
        self.timed(|fanout| {
            let members = entry.conns.iter().filter(|(id, _, user)| match skip {
                Skip::Nobody => true,
                Skip::Conn(except) => *id != except,
                Skip::User(except) => &**user != except,
            });
            for (id, outbox, _) in members {
                fanout.record(outbox.push(item.clone()), *id, room);
            }
        })
    }
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
