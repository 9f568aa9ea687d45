//! What wsnotify keeps in Redis and how it is named, defined once: the
//! channels, the keys, and the envelopes that travel on the channels. The
//! Lua scripts get every name from here, in `KEYS` and `ARGV`.
//!
//! Two families of names:
//! - the seeds' channels, live only, which any backend may publish on:
//!   `websocket:broadcast`, `notifications:{user}`, `rooms:{room}`;
//! - the keys and channel of a stream with history, all under one hash tag,
//!   the stream's partition's: `wsnotify:{TAG}:{stream}:meta` (epoch and
//!   offset), `…:log` (a Redis Stream, entry ids `0-{offset}`),
//!   `…:idem:{key}` (idempotency keys) and the channel `wsnotify:{TAG}:{stream}`.
//!   One tag per stream keeps every script on one slot of a Redis Cluster.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::stream::Stream;

/// The channel every instance subscribes to for broadcasts (seed 000).
pub const BROADCAST_CHANNEL: &str = "websocket:broadcast";
/// Prefix of the per-user channels (seed 004): `notifications:{user_id}`.
pub const NOTIFY_PREFIX: &str = "notifications:";
/// Prefix of the room channels: `rooms:{room}`.
pub const ROOM_PREFIX: &str = "rooms:";
/// The hash of every instance's connection count (field: instance id;
/// value: `count:expiry_ms`), one key so that one slot holds them all.
pub const COUNTS_KEY: &str = "wsnotify:{connections}";

/// The Pub/Sub channel of a stream.
pub fn channel(stream: &Stream) -> String {
    match stream {
        Stream::User(user) => format!("{NOTIFY_PREFIX}{user}"),
        Stream::Room(room) => room_channel(room),
        Stream::Broadcast => BROADCAST_CHANNEL.to_owned(),
    }
}

/// `rooms:{room}`.
pub fn room_channel(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// The partition of room `room`'s stream: its presence keys carry the
/// same tag as its history, so a script over one room stays on one slot.
pub fn room_partition(room: &str) -> usize {
    partition(&Stream::Room(room.into()))
}

/// `wsnotify:{TAG}:presence:{room}`: the users present in `room`, each
/// scored by the time (Unix ms, Redis' clock) their entry expires.
pub fn presence_key(room: &str) -> String {
    format!("wsnotify:{{{}}}:presence:{room}", tag(room_partition(room)))
}

/// `wsnotify:{TAG}:presence-of:{len}:{room}:{user}`: the instances holding
/// `user` in `room`, scored the same way. `len`, the room's length in
/// bytes, keeps the key unambiguous whatever the user id holds.
pub fn holders_key(room: &str, user: &str) -> String {
    format!(
        "wsnotify:{{{}}}:presence-of:{}:{room}:{user}",
        tag(room_partition(room)),
        room.len()
    )
}

/// The channel `instance` probes partition `p`'s subscription with (cluster
/// mode): a message it publishes there must come back within
/// `REDIS_TIMEOUT`, or the subscription is presumed dead.
pub fn probe_channel(p: usize, instance: &str) -> String {
    format!("wsnotify:{{{}}}:probe:{instance}", tag(p))
}

/// The partition whose tag lies in `slot`'s range.
pub fn partition_of_slot(slot: u16) -> usize {
    usize::from(slot) / (SLOTS as usize / PARTITIONS)
}

/// The JSON published on `websocket:broadcast` and `rooms:{room}` by an
/// instance. `sender_id` and `message` are the seed's keys; `origin` lets an
/// instance skip its own messages, which it delivered locally already.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub sender_id: Option<String>,
    pub message: String,
    #[serde(default)]
    pub origin: Option<String>,
}

/// Partitions of the streams: every stream's keys and channel carry its
/// partition's hash tag. Changing the count moves every stream to other
/// keys: it is a migration, not a setting.
pub const PARTITIONS: usize = 128;
/// Hash slots of Redis Cluster.
const SLOTS: u16 = 16384;

/// The partition of `stream`: CRC16 of its name, as Redis Cluster hashes
/// keys, modulo [`PARTITIONS`].
pub fn partition(stream: &Stream) -> usize {
    usize::from(crc16(stream.to_string().as_bytes())) % PARTITIONS
}

/// The hash tag of partition `p`: the shortest `p.N` whose slot lies in
/// the `p`-th of [`PARTITIONS`] equal slot ranges, so the partitions spread
/// evenly over a cluster's nodes whatever their number.
pub fn tag(partition: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let width = SLOTS as usize / PARTITIONS;
        (0..PARTITIONS)
            .map(|p| {
                (0u32..)
                    .map(|n| format!("{p}.{n}"))
                    .find(|tag| usize::from(slot(tag.as_bytes())) / width == p)
                    .unwrap_or_default()
            })
            .collect()
    });
    &tags[partition]
}

/// The key or channel prefix of `stream`'s history: `wsnotify:{TAG}:{stream}`.
pub fn stream_base(stream: &Stream) -> String {
    format!("wsnotify:{{{}}}:{stream}", tag(partition(stream)))
}

/// The channel a stream's appended messages are published on.
pub fn stream_channel(stream: &Stream) -> String {
    stream_base(stream)
}

/// The stream a history channel belongs to, if `channel` is one.
pub fn stream_of_channel(channel: &str) -> Option<Stream> {
    let rest = channel.strip_prefix("wsnotify:{")?;
    let (_, name) = rest.split_once("}:")?;
    Stream::parse(name)
}

/// `…:meta`, `…:log` and, with an idempotency key, `…:idem:{key}`.
pub fn stream_keys(stream: &Stream, key: Option<&str>) -> (String, String, Option<String>) {
    let base = stream_base(stream);
    let idem = key.map(|key| format!("{base}:idem:{key}"));
    (format!("{base}:meta"), format!("{base}:log"), idem)
}

/// The slot Redis Cluster gives `key`: CRC16 of its hash tag (the first
/// non-empty `{…}`) or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// CRC16/XMODEM, the checksum of Redis Cluster's key slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// What a stream's channel carries: an appended message with its position
/// and Redis' time (Unix ms), published by the append script.
#[derive(Debug, Clone, Deserialize)]
pub struct Appended {
    #[serde(rename = "e")]
    pub epoch: String,
    #[serde(rename = "o")]
    pub offset: u64,
    /// cjson may write a number as a float.
    #[serde(rename = "t")]
    pub ts: f64,
    #[serde(rename = "b")]
    pub body: String,
}

/// What a payload on a room channel is: an instance's [`Envelope`],
/// possibly of a presence change (`presence` names it, `user` is its
/// subject), or anything else a backend published.
#[derive(Debug, Deserialize)]
pub struct RoomPayload {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub presence: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn envelopes_keep_the_seed_keys() {
        let envelope = Envelope {
            sender_id: Some("a".into()),
            message: "hi".into(),
            origin: Some("o".into()),
        };
        let json: Value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            json,
            json!({"sender_id": "a", "message": "hi", "origin": "o"})
        );
        let seed: Envelope = serde_json::from_str(r#"{"sender_id":"x","message":"m"}"#).unwrap();
        assert_eq!((seed.message.as_str(), seed.origin), ("m", None));
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from the Redis Cluster specification and redis-cli.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 0x31c3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
    }

    #[test]
    fn partition_tags_spread_over_the_slots_and_keys_share_them() {
        let width = 16384 / PARTITIONS;
        for p in 0..PARTITIONS {
            assert_eq!(
                usize::from(slot(tag(p).as_bytes())) / width,
                p,
                "{}",
                tag(p)
            );
        }
        let stream = Stream::User("a}:{b".into());
        let (meta, log, idem) = stream_keys(&stream, Some("k"));
        let channel = stream_channel(&stream);
        let slots: Vec<u16> = [&meta, &log, idem.as_ref().unwrap(), &channel]
            .iter()
            .map(|k| slot(k.as_bytes()))
            .collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
        assert_eq!(stream_of_channel(&channel), Some(stream));
        assert_eq!(stream_of_channel("notifications:a"), None);
    }

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!(channel(&Stream::User("42".into())), "notifications:42");
        assert_eq!(channel(&Stream::Room("test".into())), "rooms:test");
        assert_eq!(channel(&Stream::Broadcast), "websocket:broadcast");
        let t = tag(room_partition("r"));
        assert_eq!(presence_key("r"), format!("wsnotify:{{{t}}}:presence:r"));
        let t = tag(room_partition("r:1"));
        assert_eq!(
            holders_key("r:1", "u"),
            format!("wsnotify:{{{t}}}:presence-of:3:r:1:u")
        );
        // A room's presence keys, history and channel share one slot.
        let room = Stream::Room("lobby".into());
        let slots = [
            presence_key("lobby"),
            holders_key("lobby", "x"),
            stream_channel(&room),
        ]
        .map(|k| slot(k.as_bytes()));
        assert!(slots.iter().all(|s| *s == slots[0]), "{slots:?}");
        assert_eq!(partition_of_slot(slots[0]), partition(&room));
        assert_eq!(partition_of_slot(slot(probe_channel(7, "i").as_bytes())), 7);
    }
}
