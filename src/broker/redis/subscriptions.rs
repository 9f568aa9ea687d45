//! What the supervisor is subscribed to: the plain subscriber's channels
//! (the seeds' and, on one Redis, the streams' own) and, on a cluster with
//! history, the shard subscriptions; and the script that keeps each
//! instance's connection count.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::PubSubSink;
use tokio::time::timeout;

use super::channels;
use super::error::LinkError;
use super::shards::Shards;
use crate::stream::Stream;

/// Channels per SUBSCRIBE command.
pub const SUBSCRIBE_CHUNK: usize = 512;

/// Keeps each instance's connection count: `set` (with a ttl), `del`, or
/// `sum` of the others' unexpired counts (expired ones are dropped). KEYS:
/// the counts hash. ARGV: op, instance[, count, ttl_ms].
pub(super) const COUNTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'set' then
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. ':' .. (now + ttl))
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 0
end
if ARGV[1] == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 0
end
local sum = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local count, expiry = string.match(all[i + 1], '^(%d+):(%d+)$')
  if (not expiry) or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[2] then
    sum = sum + tonumber(count)
  end
end
return sum
";

/// The subscriptions: the plain subscriber connection's sending half and,
/// on a cluster with history, the shard subscriptions.
pub(super) struct Subscriptions {
    pub sink: PubSubSink,
    /// Whether streams have history, so a channel of their own as well.
    pub history: bool,
    /// Cluster mode with history: the streams' channels are sharded.
    pub shards: Option<Shards>,
}

impl Subscriptions {
    /// The plain channels of `stream`: the seeds' (live, open to any
    /// publisher) and, with history on one Redis, the stream's own.
    pub fn channels(&self, stream: &Stream) -> impl Iterator<Item = String> {
        let own = (self.history && self.shards.is_none()).then(|| channels::stream_channel(stream));
        std::iter::once(channels::channel(stream)).chain(own)
    }

    /// Subscribes to the streams marked `true` and unsubscribes from the
    /// others, in chunks, within `limit`. Returns the streams whose
    /// liveness changes now: all of them with one Redis; on a cluster the
    /// ones no longer followed (a followed one is live once its partition
    /// confirms its channel).
    pub async fn apply(
        &mut self,
        streams: &HashMap<Stream, bool>,
        limit: Duration,
    ) -> Result<Vec<(Stream, bool)>, LinkError> {
        let names = |wanted: bool| {
            streams
                .iter()
                .filter(|(_, on)| **on == wanted)
                .flat_map(|(stream, _)| self.channels(stream))
                .collect::<Vec<_>>()
        };
        let (on, off) = (names(true), names(false));
        let work = async {
            for chunk in on.chunks(SUBSCRIBE_CHUNK) {
                self.sink.subscribe(chunk).await?;
            }
            for chunk in off.chunks(SUBSCRIBE_CHUNK) {
                self.sink.unsubscribe(chunk).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        match timeout(limit, work).await {
            Ok(result) => result?,
            Err(_) => return Err(LinkError::Timeout("SUBSCRIBE")),
        }
        Ok(match &mut self.shards {
            Some(shards) => shards
                .apply(streams)
                .await
                .into_iter()
                .map(|stream| (stream, false))
                .collect(),
            None => streams.iter().map(|(s, on)| (s.clone(), *on)).collect(),
        })
    }
}
