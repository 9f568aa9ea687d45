//! Presence in Redis (seed 003: entries with a TTL), shared by every
//! instance, and the follower that keeps this instance's entries in step
//! with its hub.
//!
//! Two sorted sets per room ([`channels::presence_key`],
//! [`channels::holders_key`]) are scored by the time (Unix ms, Redis' clock)
//! an entry expires. Lua scripts keep them consistent and decide atomically
//! who announces what: the instance that records a user nobody held
//! announces the join, the one that removes a user's last holder announces
//! the leave, and the one whose sweep finds an expired entry (an instance
//! died) announces that leave; each happens exactly once. The scripts
//! publish these announcements themselves on the room's channel, in the same
//! atomic step as the change, so no failure between the two can leave Redis
//! changed and the other instances uninformed, and every instance, this one
//! included, delivers them from its subscription in Redis' one order. Key
//! lifetimes are only ever extended, so instances with different
//! `PRESENCE_TTL`s do not cut each other's entries short. Times come from
//! Redis' `TIME`, so instance clocks need not agree (Redis 5 or later).
//!
//! Every key a script touches comes in `KEYS`, every channel in `ARGV`, both
//! named by [`channels`]. A room's keys carry its partition's hash tag, and
//! each call takes up to [`CHUNK`] pairs or rooms of one partition, so that
//! on a Redis Cluster every call stays on one slot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::conn::Conn;
use redis::Script;
use tokio::time::timeout;

use super::RedisBroker;
use super::channels::{holders_key, presence_key, room_channel, room_partition};
use super::error::LinkError;
use super::subscriptions::Subscriptions;
use crate::delivery::Inbound;
use crate::hub::Change;
use crate::protocol::json::{ServerMessage, now_ms};
use crate::stream::Stream;

/// Pairs or rooms per script call.
pub const CHUNK: usize = 256;

/// Publishes a presence change on the room's channel: the `presence.join`
/// or `presence.leave` message in the instances' envelope, with `presence`
/// and `user` beside it for routing (see [`Router`](super::inbound::Router)). ARGV[1] is
/// the instance in every script that uses it.
macro_rules! announce_lua {
    () => {
        r#"
local function announce(kind, channel, room, user, now)
  local event = cjson.encode({type = 'presence.' .. kind, room = room, user = user, ts = now})
  redis.call('PUBLISH', channel, cjson.encode({message = event, origin = ARGV[1],
    presence = kind, user = user}))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#
    };
}

/// Adds or refreshes this instance's entries. KEYS: presence key, holders
/// key per pair. ARGV: instance, ttl_ms, then room, user, channel per pair.
/// Announces and returns the pairs no instance held before (flat).
const REFRESH: &str = concat!(
    announce_lua!(),
    r"
local ttl = tonumber(ARGV[2])
local deadline = now + ttl
local arrived = {}
for i = 1, #KEYS / 2 do
  local rk, uk = KEYS[2 * i - 1], KEYS[2 * i]
  local room, user, channel = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  redis.call('ZREMRANGEBYSCORE', uk, '-inf', now)
  local before = redis.call('ZCARD', uk)
  redis.call('ZADD', uk, deadline, ARGV[1])
  if redis.call('PTTL', uk) < ttl then redis.call('PEXPIRE', uk, ttl) end
  local score = redis.call('ZSCORE', rk, user)
  if (not score) or tonumber(score) < deadline then
    redis.call('ZADD', rk, deadline, user)
  end
  if redis.call('PTTL', rk) < ttl then redis.call('PEXPIRE', rk, ttl) end
  if before == 0 then
    arrived[#arrived + 1] = room
    arrived[#arrived + 1] = user
    announce('join', channel, room, user, now)
  end
end
return arrived
"
);

/// Removes the expired users of rooms. KEYS: presence key per room. ARGV:
/// instance, then room, channel per room. Announces and returns the removed
/// room/user pairs (flat).
const SWEEP: &str = concat!(
    announce_lua!(),
    r"
local departed = {}
for i = 1, #KEYS do
  local room, channel = ARGV[2 * i], ARGV[2 * i + 1]
  local gone = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    for _, user in ipairs(gone) do
      departed[#departed + 1] = room
      departed[#departed + 1] = user
      announce('leave', channel, room, user, now)
    end
  end
end
return departed
"
);

/// Removes this instance's entries. KEYS and ARGV as for [`REFRESH`], less
/// the ttl (ARGV[2] is unused). Announces and returns the pairs no instance
/// holds any more (flat); for the others the room's score becomes the
/// latest expiry of the remaining holders.
const LEAVE: &str = concat!(
    announce_lua!(),
    r"
local gone = {}
for i = 1, #KEYS / 2 do
  local rk, uk = KEYS[2 * i - 1], KEYS[2 * i]
  local room, user, channel = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  redis.call('ZREM', uk, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', uk, '-inf', now)
  local top = redis.call('ZRANGE', uk, -1, -1, 'WITHSCORES')
  if #top == 0 then
    if redis.call('ZREM', rk, user) == 1 then
      gone[#gone + 1] = room
      gone[#gone + 1] = user
      announce('leave', channel, room, user, now)
    end
  else
    redis.call('ZADD', rk, top[2], user)
    local left = tonumber(top[2]) - now
    if redis.call('PTTL', rk) < left then redis.call('PEXPIRE', rk, left) end
  end
end
return gone
"
);

/// The users present in rooms. KEYS: presence key per room. Returns one
/// list per room.
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lists = {}
for i = 1, #KEYS do
  lists[i] = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. now, '+inf')
end
return lists
";

/// Room/user pairs.
pub type Pairs = Vec<(String, String)>;

/// This instance's handle on the presence keys.
#[derive(Debug)]
pub struct PresenceStore {
    instance: String,
    ttl_ms: u64,
    /// Longest wait for one script call.
    timeout: Duration,
    refresh: Script,
    sweep: Script,
    leave: Script,
    list: Script,
}

impl PresenceStore {
    /// The store of `instance`, whose entries live `ttl` unless refreshed.
    pub fn new(instance: &str, ttl: Duration, timeout: Duration) -> Self {
        PresenceStore {
            instance: instance.to_owned(),
            ttl_ms: ttl.as_millis().max(1) as u64,
            timeout,
            refresh: Script::new(REFRESH),
            sweep: Script::new(SWEEP),
            leave: Script::new(LEAVE),
            list: Script::new(LIST),
        }
    }

    /// Records (or refreshes) that this instance holds `pairs`; returns the
    /// pairs no instance held before, whose join the script has published.
    pub async fn refresh<R: AsRef<str>, U: AsRef<str>>(
        &self,
        conn: &mut Conn,
        pairs: &[(R, U)],
    ) -> Result<Pairs, LinkError> {
        self.per_pair(&self.refresh, conn, pairs).await
    }

    /// Withdraws this instance's entries for `pairs`; returns those no
    /// instance holds any more (their leave is published).
    pub async fn leave<R: AsRef<str>, U: AsRef<str>>(
        &self,
        conn: &mut Conn,
        pairs: &[(R, U)],
    ) -> Result<Pairs, LinkError> {
        self.per_pair(&self.leave, conn, pairs).await
    }

    async fn per_pair<R: AsRef<str>, U: AsRef<str>>(
        &self,
        script: &Script,
        conn: &mut Conn,
        pairs: &[(R, U)],
    ) -> Result<Pairs, LinkError> {
        let mut changed = Pairs::new();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(r, u)| (r.as_ref(), u.as_ref()))
            .collect();
        for chunk in per_partition(&pairs, |(room, _)| room) {
            let mut call = script.prepare_invoke();
            call.arg(&self.instance).arg(self.ttl_ms);
            for (room, user) in chunk {
                call.key(presence_key(room)).key(holders_key(room, user));
                call.arg(room).arg(user).arg(room_channel(room));
            }
            changed.extend(paired(self.run(call.invoke_async(conn)).await?));
        }
        Ok(changed)
    }

    /// Removes the expired entries of `rooms`; returns them (their leave is
    /// published). Run after [`PresenceStore::refresh`], so this instance's
    /// own entries are fresh.
    pub async fn sweep<R: AsRef<str>>(
        &self,
        conn: &mut Conn,
        rooms: &[R],
    ) -> Result<Pairs, LinkError> {
        let mut departed = Pairs::new();
        let rooms: Vec<&str> = rooms.iter().map(AsRef::as_ref).collect();
        for chunk in per_partition(&rooms, |room| room) {
            let mut call = self.sweep.prepare_invoke();
            call.arg(&self.instance);
            for room in chunk {
                call.key(presence_key(room))
                    .arg(room)
                    .arg(room_channel(room));
            }
            departed.extend(paired(self.run(call.invoke_async(conn)).await?));
        }
        Ok(departed)
    }

    /// The users present in each of `rooms`, in the same order.
    pub async fn list<R: AsRef<str>>(
        &self,
        conn: &mut Conn,
        rooms: &[R],
    ) -> Result<Vec<Vec<String>>, LinkError> {
        let mut lists: HashMap<&str, Vec<String>> = HashMap::with_capacity(rooms.len());
        let names: Vec<&str> = rooms.iter().map(AsRef::as_ref).collect();
        for chunk in per_partition(&names, |room| room) {
            let mut call = self.list.prepare_invoke();
            for room in &chunk {
                call.key(presence_key(room));
            }
            let chunk_lists: Vec<Vec<String>> = self.run(call.invoke_async(conn)).await?;
            lists.extend(chunk.iter().copied().zip(chunk_lists));
        }
        Ok(names
            .iter()
            .map(|room| lists.get(room).cloned().unwrap_or_default())
            .collect())
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LinkError> {
        match timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LinkError::Timeout("a presence script")),
        }
    }
}

/// `items` grouped by their room's partition, in chunks of at most
/// [`CHUNK`]: every chunk's keys share one hash slot.
fn per_partition<'a, T: Copy>(items: &'a [T], room: impl Fn(T) -> &'a str) -> Vec<Vec<T>> {
    let mut groups: HashMap<usize, Vec<T>> = HashMap::new();
    for &item in items {
        groups
            .entry(room_partition(room(item)))
            .or_default()
            .push(item);
    }
    groups
        .into_values()
        .flat_map(|group| group.chunks(CHUNK).map(<[T]>::to_vec).collect::<Vec<_>>())
        .collect()
}

/// A flat room, user, room, user, … list as pairs.
fn paired(flat: Vec<String>) -> Pairs {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(room), Some(user)) = (items.next(), items.next()) {
        pairs.push((room, user));
    }
    pairs
}

/// A batch of hub changes reduced to each stream's and each room/user
/// pair's final state: a user who arrived and left within the batch was
/// never announced, so nothing is sent for them.
#[derive(Debug, Default)]
struct Batch {
    streams: HashMap<Stream, bool>,
    pairs: HashMap<(Arc<str>, Arc<str>), bool>,
}

impl Batch {
    fn of(changes: Vec<Change>) -> Self {
        let mut batch = Batch::default();
        for change in changes {
            match change {
                Change::Follow(stream) => batch.streams.insert(stream, true),
                Change::Unfollow(stream) => batch.streams.insert(stream, false),
                Change::Arrived { room, user } => batch.pairs.insert((room, user), true),
                Change::Departed { room, user } => batch.pairs.insert((room, user), false),
            };
        }
        batch
    }

    /// The arrivals and departures, as pairs.
    fn split_pairs(self) -> (Pairs, Pairs) {
        let (mut arrived, mut departed) = (Pairs::new(), Pairs::new());
        for ((room, user), on) in self.pairs {
            let pair = (room.to_string(), user.to_string());
            if on {
                arrived.push(pair)
            } else {
                departed.push(pair)
            }
        }
        (arrived, departed)
    }
}

/// The follower: how the supervisor keeps Redis in step with the hub.
impl RedisBroker {
    /// Follows a batch of the hub's changes. Subscriptions come first, so a
    /// room's channel is followed before the scripts announce its arrivals
    /// on it.
    pub(super) async fn follow(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &mut Conn,
        changes: Vec<Change>,
    ) -> Result<(), LinkError> {
        let mut batch = Batch::of(changes);
        let streams = std::mem::take(&mut batch.streams);
        let changed = subscriptions.apply(&streams, self.settings.timeout).await?;
        self.mark_live(changed);
        let (arrived, departed) = batch.split_pairs();
        // Recorded before the script runs (it may change Redis and still
        // fail to answer); forgotten only once withdrawn. An extra entry
        // costs one LEAVE that changes nothing.
        self.record(arrived.iter().cloned());
        self.presence.refresh(conn, &arrived).await?;
        self.presence.leave(conn, &departed).await?;
        self.forget(departed);
        Ok(())
    }

    /// While Redis is unreachable, local members hear of each other's
    /// arrivals and departures from this instance directly; the changes are
    /// recorded in Redis by the first refresh after the outage.
    pub(super) fn announce_locally(&self, changes: &[Change]) {
        for change in changes {
            let (room, user, joined) = match change {
                Change::Arrived { room, user } => (room, user, true),
                Change::Departed { room, user } => (room, user, false),
                Change::Follow(_) | Change::Unfollow(_) => continue,
            };
            let (room_name, user_name, ts) = (room.to_string(), user.to_string(), now_ms());
            let event = if joined {
                ServerMessage::PresenceJoin {
                    room: room_name,
                    user: user_name,
                    ts,
                }
            } else {
                ServerMessage::PresenceLeave {
                    room: room_name,
                    user: user_name,
                    ts,
                }
            };
            self.delivery.deliver(Inbound::Presence {
                room,
                user,
                text: &event.encode(),
            });
        }
    }

    fn record(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pairs);
    }

    fn forget(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        for pair in pairs {
            recorded.remove(&pair);
        }
    }

    /// Withdraws the entries of departures this instance missed, refreshes
    /// every entry it holds, then sweeps the rooms it holds for entries that
    /// expired (an instance that died). The scripts announce what changed:
    /// missed and swept users leave, users whose entries had expired here
    /// (a Redis outage) rejoin.
    pub(super) async fn refresh_presence(&self, conn: &mut Conn) -> Result<(), LinkError> {
        let held: HashSet<(String, String)> = self
            .hub
            .presences()
            .into_iter()
            .map(|(room, user)| (room.to_string(), user.to_string()))
            .collect();
        // Departures this instance missed (Redis was down when they came,
        // or a batch failed).
        let missed: Vec<(String, String)> = {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            recorded.difference(&held).cloned().collect()
        };
        let held: Vec<(String, String)> = held.into_iter().collect();
        self.record(held.iter().cloned());
        self.presence.leave(conn, &missed).await?;
        self.forget(missed);
        self.presence.refresh(conn, &held).await?;
        for (room, user) in self.presence.sweep(conn, &self.hub.rooms()).await? {
            tracing::debug!(room, user, "presence expired");
        }
        Ok(())
    }

    /// Withdraws every entry this instance recorded: it is going away.
    pub(super) async fn withdraw_all(&self, conn: &mut Conn) -> Result<(), LinkError> {
        let all: Vec<_> = {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            recorded.iter().cloned().collect()
        };
        self.presence.leave(conn, &all).await.map(|_| ())
    }

    /// Sends every local room a fresh `room.joined` from Redis' list: events
    /// published while this instance was cut off are lost (Pub/Sub keeps
    /// nothing), and entries that expired meanwhile were swept by nobody.
    /// Runs after the first refresh of each link, and after a failed list.
    pub(super) async fn resync_rosters(&self, conn: &mut Conn) -> Result<(), LinkError> {
        let rooms = self.hub.rooms();
        let lists = self.presence.list(conn, &rooms).await?;
        for (room, listed) in rooms.iter().zip(lists) {
            self.hub.resync_room(room, &listed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_lists_pair_up() {
        let flat = ["r", "a", "r", "b"].map(String::from).to_vec();
        assert_eq!(
            paired(flat),
            [("r".into(), "a".into()), ("r".into(), "b".into())]
        );
        assert!(paired(vec!["odd".into()]).is_empty());
    }

    #[test]
    fn a_batch_keeps_each_final_state() {
        let (r, a): (Arc<str>, Arc<str>) = ("r".into(), "a".into());
        let batch = Batch::of(vec![
            Change::Follow(Stream::Room(r.clone())),
            Change::Arrived {
                room: r.clone(),
                user: a.clone(),
            },
            Change::Departed {
                room: r.clone(),
                user: a.clone(),
            },
            Change::Unfollow(Stream::Room(r.clone())),
            Change::Follow(Stream::User(a.clone())),
        ]);
        assert!(!batch.streams[&Stream::Room(r.clone())]);
        assert!(batch.streams[&Stream::User(a.clone())]);
        let (arrived, departed) = batch.split_pairs();
        assert!(arrived.is_empty());
        assert_eq!(departed, [("r".to_owned(), "a".to_owned())]);
    }
}
