//! History in Redis: each stream is one Redis Stream of its messages
//! (entry ids `0-{offset}`) and a small hash of its epoch and head offset,
//! under one hash tag ([`channels::stream_keys`]).
//!
//! Two scripts do all of it, each atomically on one slot:
//! - [`APPEND`] creates the epoch if there is none, takes the next offset,
//!   adds the message (`XADD MAXLEN ~`), renews the expiries, and publishes
//!   it on the stream's channel, so there is one order per stream whichever
//!   instance published; with an idempotency key seen before, it answers the
//!   first position instead. Given the position this instance last saw
//!   (the *fence*), a head behind it under the same epoch means the history
//!   went back, and the epoch is rotated first.
//! - [`READ`] answers a reader's position: the head, and the messages after
//!   the position when all of them are still kept (count, age, contiguity),
//!   else why not. A position beyond the head under the same epoch is the
//!   other sign of a rollback, and rotates the epoch.

use std::sync::Arc;
use std::time::Duration;

use super::conn::Conn;
use redis::{Script, Value};
use tokio::time::timeout;

use super::channels::{self, stream_keys};
use super::error::LinkError;
use crate::history::{Budget, Outcome, Position, Read, Record, Settings, new_epoch};
use crate::protocol::json::Reason;
use crate::stream::Stream;

/// How long an idempotency key is remembered, in ms.
const IDEMPOTENCY_TTL_MS: u64 = 300_000;

/// KEYS: meta, log[, idem]. ARGV: epoch if new, body, size, ttl_ms,
/// meta_ttl_ms, channel, fence epoch (or ''), fence offset, idem_ttl_ms,
/// the publishing command (`PUBLISH`, or `SPUBLISH` on a cluster: the
/// channel shares the keys' slot). Returns {epoch, offset, ts, receivers,
/// duplicate}.
const APPEND: &str = r"
local meta, log, idem = KEYS[1], KEYS[2], KEYS[3]
if idem then
  local seen = redis.call('HMGET', idem, 'e', 'o', 't')
  if seen[1] then return {seen[1], tonumber(seen[2]), tonumber(seen[3]), 0, 1} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', meta, 'e', 'o')
local epoch, head = state[1], tonumber(state[2] or '0')
if (not epoch) or (ARGV[7] ~= '' and epoch == ARGV[7] and head < tonumber(ARGV[8])) then
  epoch = ARGV[1]
  head = 0
  redis.call('DEL', log)
end
head = head + 1
redis.call('HSET', meta, 'e', epoch, 'o', head)
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], '0-' .. head, 't', now, 'b', ARGV[2])
redis.call('PEXPIRE', log, ARGV[4])
local receivers = redis.call(ARGV[10], ARGV[6],
  cjson.encode({e = epoch, o = head, t = now, b = ARGV[2]}))
if idem then
  redis.call('HSET', idem, 'e', epoch, 'o', head, 't', now)
  redis.call('PEXPIRE', idem, ARGV[9])
end
return {epoch, head, now, receivers, 0}
";

/// KEYS: meta, log. ARGV: epoch if new, since epoch, since offset (''
/// without a position), size, ttl_ms, meta_ttl_ms, limit. Returns {epoch,
/// head, verdict, offset, ts, body, offset, ts, body, …}; the verdict is
/// fresh, ok, epoch_changed, too_old or limit, the messages come with ok.
const READ: &str = r"
local meta, log = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', meta, 'e', 'o')
local epoch, head = state[1], tonumber(state[2] or '0')
local function rotate()
  epoch = ARGV[1]
  head = 0
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', log)
end
if not epoch then rotate() end
redis.call('PEXPIRE', meta, ARGV[6])
if ARGV[3] == '' then return {epoch, head, 'fresh'} end
local since = tonumber(ARGV[3])
if ARGV[2] == '' or ARGV[2] ~= epoch then return {epoch, head, 'epoch_changed'} end
if since > head then
  rotate()
  return {epoch, head, 'epoch_changed'}
end
if since == head then return {epoch, head, 'ok'} end
local floor = head - tonumber(ARGV[4]) + 1
if since + 1 < floor then return {epoch, head, 'too_old'} end
local want = head - since
local oldest = now - tonumber(ARGV[5])
local count = want
if want > tonumber(ARGV[7]) then count = 1 end
local entries = redis.call('XRANGE', log, '(0-' .. since, '+', 'COUNT', count)
if #entries == 0 or entries[1][1] ~= '0-' .. (since + 1) then return {epoch, head, 'too_old'} end
if want > tonumber(ARGV[7]) then
  if tonumber(entries[1][2][2]) < oldest then return {epoch, head, 'too_old'} end
  return {epoch, head, 'limit'}
end
if #entries ~= want then return {epoch, head, 'too_old'} end
local out = {epoch, head, 'ok'}
for i, entry in ipairs(entries) do
  local fields = {}
  for j = 1, #entry[2], 2 do fields[entry[2][j]] = entry[2][j + 1] end
  if tonumber(fields['t']) < oldest then return {epoch, head, 'too_old'} end
  if entry[1] ~= '0-' .. (since + i) then return {epoch, head, 'too_old'} end
  out[#out + 1] = since + i
  out[#out + 1] = fields['t']
  out[#out + 1] = fields['b']
end
return out
";

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub position: Position,
    pub ts: u64,
    /// Instances subscribed to the stream's channel.
    pub receivers: usize,
    /// The idempotency key was seen: nothing was appended.
    pub duplicate: bool,
}

/// This instance's handle on the history keys.
#[derive(Debug)]
pub struct RedisHistory {
    settings: Settings,
    /// Longest wait for one script call.
    timeout: Duration,
    append: Script,
    read: Script,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    publish: &'static str,
}

impl RedisHistory {
    /// `sharded`: on a cluster, appends are published with `SPUBLISH`.
    pub fn new(settings: Settings, timeout: Duration, sharded: bool) -> Self {
        RedisHistory {
            settings,
            timeout,
            append: Script::new(APPEND),
            read: Script::new(READ),
            publish: if sharded { "SPUBLISH" } else { "PUBLISH" },
        }
    }

    /// Appends `body` to `stream` (see [`APPEND`]); `fence` is the last
    /// position this instance saw of it.
    pub async fn append(
        &self,
        conn: &mut Conn,
        stream: &Stream,
        body: &str,
        key: Option<&str>,
        fence: Option<&Position>,
    ) -> Result<Appended, LinkError> {
        let (meta, log, idem) = stream_keys(stream, key);
        let mut call = self.append.prepare_invoke();
        call.key(meta).key(log);
        if let Some(idem) = idem {
            call.key(idem);
        }
        call.arg(&*new_epoch())
            .arg(body)
            .arg(self.settings.size)
            .arg(millis(self.settings.ttl))
            .arg(millis(self.settings.meta_ttl))
            .arg(channels::stream_channel(stream))
            .arg(fence.map_or("", |f| &*f.epoch))
            .arg(fence.map_or(0, |f| f.offset))
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(self.publish);
        let (epoch, offset, ts, receivers, duplicate): (String, u64, u64, usize, u8) =
            self.run(call.invoke_async(conn)).await?;
        Ok(Appended {
            position: Position::new(epoch, offset),
            ts,
            receivers,
            duplicate: duplicate == 1,
        })
    }

    /// Reads `stream` after `since` (see [`READ`]); replayed messages are
    /// taken from `budget`, and a replay that does not fit it is
    /// [`Reason::Limit`].
    pub async fn read(
        &self,
        conn: &mut Conn,
        stream: &Stream,
        since: Option<&Position>,
        budget: &mut Budget,
    ) -> Result<Read, LinkError> {
        let (meta, log, _) = stream_keys(stream, None);
        let mut call = self.read.prepare_invoke();
        call.key(meta).key(log);
        call.arg(&*new_epoch())
            .arg(since.map_or("", |p| &*p.epoch))
            .arg(since.map_or(String::new(), |p| p.offset.to_string()))
            .arg(self.settings.size)
            .arg(millis(self.settings.ttl))
            .arg(millis(self.settings.meta_ttl))
            .arg(budget.frames);
        let reply: Vec<Value> = self.run(call.invoke_async(conn)).await?;
        let mut read = decode_read(stream, &reply)?;
        if read.outcome == Outcome::Recovered && !budget.take(&read.records) {
            read.outcome = Outcome::Lost(Reason::Limit);
            read.records.clear();
        }
        Ok(read)
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LinkError> {
        match timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LinkError::Timeout("a history script")),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().max(1) as u64
}

/// The [`Read`] of a [`READ`] reply.
fn decode_read(stream: &Stream, reply: &[Value]) -> Result<Read, LinkError> {
    let text = |value: &Value| -> Result<String, LinkError> {
        redis::from_redis_value::<String>(value.clone())
            .map_err(|_| LinkError::Reply("a history read gave a non-string"))
    };
    let number = |value: &Value| -> Result<u64, LinkError> {
        redis::from_redis_value::<u64>(value.clone())
            .map_err(|_| LinkError::Reply("a history read gave a non-number"))
    };
    let [epoch, head, verdict, rest @ ..] = reply else {
        return Err(LinkError::Reply("a history read answered too little"));
    };
    let head = Position::new(text(epoch)?, number(head)?);
    let outcome = match text(verdict)?.as_str() {
        "fresh" => Outcome::Fresh,
        "ok" => Outcome::Recovered,
        "epoch_changed" => Outcome::Lost(Reason::EpochChanged),
        "too_old" => Outcome::Lost(Reason::TooOld),
        "limit" => Outcome::Lost(Reason::Limit),
        _ => return Err(LinkError::Reply("a history read gave an unknown verdict")),
    };
    let mut records = Vec::with_capacity(rest.len() / 3);
    for entry in rest.chunks_exact(3) {
        let position = Position::new(head.epoch.clone(), number(&entry[0])?);
        let body: Arc<str> = text(&entry[2])?.into();
        match Record::new(stream.clone(), position, number(&entry[1])?, body) {
            Some(record) => records.push(Arc::new(record)),
            // Not ours: the replay would have a hole, so it is not one.
            None => {
                return Ok(Read {
                    head,
                    outcome: Outcome::Lost(Reason::TooOld),
                    records: Vec::new(),
                });
            }
        }
    }
    Ok(Read {
        head,
        outcome,
        records,
    })
}
