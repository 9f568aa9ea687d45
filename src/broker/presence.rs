//! Presence in Redis (seed 003: entries with a TTL), shared by every instance.
//!
//! - `wsnotify:presence:{room}`: a sorted set of users, each scored by the
//!   time (Unix ms, Redis' clock) its entry expires.
//! - `wsnotify:presence-of:{len}:{room}:{user}`: the instances holding that
//!   user in that room, scored the same way (`len`, the room's length in
//!   bytes, keeps the key unambiguous).
//!
//! Lua scripts keep the two consistent and decide atomically who announces
//! what: the instance that records a user nobody held announces
//! `presence.join`, the one that removes a user's last holder announces
//! `presence.leave`, and the one whose sweep finds an expired entry (an
//! instance died) announces its `presence.leave`; each happens exactly once.
//! The scripts publish these announcements themselves on `rooms:{room}`, in
//! the same atomic step as the change, so no failure between the two can
//! leave Redis changed and the other instances uninformed, and every
//! instance, this one included, delivers them from its subscription in
//! Redis' one order. Key lifetimes are only ever extended, so instances
//! with different `PRESENCE_TTL`s do not cut each other's entries short.
//! Times come from Redis' `TIME`, so instance clocks need not agree. Every
//! script takes many pairs or rooms at once, so a batch costs one round trip
//! per [`CHUNK`] items, each bounded by the command timeout.
//!
//! The scripts build their keys themselves: they need Redis 5 or later (for
//! `TIME` before writes) and a single Redis, not Redis Cluster.

use std::time::Duration;

use redis::Script;
use redis::aio::MultiplexedConnection;
use tokio::time::timeout;

/// Pairs or rooms per script call.
pub const CHUNK: usize = 256;

/// Publishes a `presence.join`/`presence.leave` on `rooms:{room}` in this
/// instance's envelope (ARGV[1] is the instance in every script that uses it).
macro_rules! announce_lua {
    () => {
        r#"
local function announce(kind, room, user, now)
  local event = '{"type":"presence.' .. kind .. '","room":' .. cjson.encode(room)
    .. ',"user":' .. cjson.encode(user) .. ',"ts":' .. string.format('%d', now) .. '}'
  redis.call('PUBLISH', 'rooms:' .. room,
    '{"message":' .. cjson.encode(event) .. ',"origin":' .. cjson.encode(ARGV[1]) .. '}')
end
"#
    };
}

/// Adds or refreshes this instance's entries. ARGV: instance, ttl_ms, then
/// room/user pairs. Announces and returns the pairs no instance held before
/// (flat).
const REFRESH: &str = concat!(
    announce_lua!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local deadline = now + ttl
local arrived = {}
for i = 3, #ARGV, 2 do
  local room, user = ARGV[i], ARGV[i + 1]
  local rk = 'wsnotify:presence:' .. room
  local uk = 'wsnotify:presence-of:' .. string.len(room) .. ':' .. room .. ':' .. user
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
    announce('join', room, user, now)
  end
end
return arrived
"
);

/// Removes the expired users of rooms. ARGV: instance, then rooms.
/// Announces and returns the removed room/user pairs (flat).
const SWEEP: &str = concat!(
    announce_lua!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local departed = {}
for i = 2, #ARGV do
  local rk = 'wsnotify:presence:' .. ARGV[i]
  local gone = redis.call('ZRANGEBYSCORE', rk, '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now)
    for _, user in ipairs(gone) do
      departed[#departed + 1] = ARGV[i]
      departed[#departed + 1] = user
      announce('leave', ARGV[i], user, now)
    end
  end
end
return departed
"
);

/// Removes this instance's entries. ARGV: instance, then room/user pairs.
/// Announces and returns the pairs no instance holds any more (flat); for
/// the others the room's score becomes the latest expiry of the remaining
/// holders.
const LEAVE: &str = concat!(
    announce_lua!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = {}
for i = 2, #ARGV, 2 do
  local room, user = ARGV[i], ARGV[i + 1]
  local rk = 'wsnotify:presence:' .. room
  local uk = 'wsnotify:presence-of:' .. string.len(room) .. ':' .. room .. ':' .. user
  redis.call('ZREM', uk, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', uk, '-inf', now)
  local top = redis.call('ZRANGE', uk, -1, -1, 'WITHSCORES')
  if #top == 0 then
    if redis.call('ZREM', rk, user) == 1 then
      gone[#gone + 1] = room
      gone[#gone + 1] = user
      announce('leave', room, user, now)
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

/// The users present in rooms. ARGV: rooms. Returns one list per room.
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lists = {}
for i = 1, #ARGV do
  lists[i] = redis.call('ZRANGEBYSCORE', 'wsnotify:presence:' .. ARGV[i], '(' .. now, '+inf')
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
    /// pairs no instance held before, whose `presence.join` the script has
    /// published.
    pub async fn refresh<R: AsRef<str>, U: AsRef<str>>(
        &self,
        conn: &mut MultiplexedConnection,
        pairs: &[(R, U)],
    ) -> Result<Pairs, String> {
        let mut arrived = Pairs::new();
        for chunk in pairs.chunks(CHUNK) {
            let mut call = self.refresh.prepare_invoke();
            call.arg(&self.instance).arg(self.ttl_ms);
            for (room, user) in chunk {
                call.arg(room.as_ref()).arg(user.as_ref());
            }
            arrived.extend(paired(self.run(call.invoke_async(conn)).await?));
        }
        Ok(arrived)
    }

    /// Removes the expired entries of `rooms`; returns them (their
    /// `presence.leave` is published). Run after [`PresenceStore::refresh`],
    /// so this instance's own entries are fresh.
    pub async fn sweep<R: AsRef<str>>(
        &self,
        conn: &mut MultiplexedConnection,
        rooms: &[R],
    ) -> Result<Pairs, String> {
        let mut departed = Pairs::new();
        for chunk in rooms.chunks(CHUNK) {
            let mut call = self.sweep.prepare_invoke();
            call.arg(&self.instance);
            for room in chunk {
                call.arg(room.as_ref());
            }
            departed.extend(paired(self.run(call.invoke_async(conn)).await?));
        }
        Ok(departed)
    }

    /// Withdraws this instance's entries for `pairs`; returns those no
    /// instance holds any more (their `presence.leave` is published).
    pub async fn leave<R: AsRef<str>, U: AsRef<str>>(
        &self,
        conn: &mut MultiplexedConnection,
        pairs: &[(R, U)],
    ) -> Result<Pairs, String> {
        let mut gone = Pairs::new();
        for chunk in pairs.chunks(CHUNK) {
            let mut call = self.leave.prepare_invoke();
            call.arg(&self.instance);
            for (room, user) in chunk {
                call.arg(room.as_ref()).arg(user.as_ref());
            }
            gone.extend(paired(self.run(call.invoke_async(conn)).await?));
        }
        Ok(gone)
    }

    /// The users present in each of `rooms`, in the same order.
    pub async fn list<R: AsRef<str>>(
        &self,
        conn: &mut MultiplexedConnection,
        rooms: &[R],
    ) -> Result<Vec<Vec<String>>, String> {
        let mut lists = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(CHUNK) {
            let mut call = self.list.prepare_invoke();
            for room in chunk {
                call.arg(room.as_ref());
            }
            let chunk_lists: Vec<Vec<String>> = self.run(call.invoke_async(conn)).await?;
            lists.extend(chunk_lists);
        }
        Ok(lists)
    }

    async fn run<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "a presence script took longer than {:?}",
                self.timeout
            )),
        }
    }
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
}
