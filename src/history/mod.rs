//! History: the last messages of every stream, so that a client that comes
//! back gets what it missed, in order and exactly once, or is told that it
//! cannot.
//!
//! - [`cursor`]: positions and the `since` grammar;
//! - [`memory`]: the store of memory mode (Redis mode keeps history in Redis,
//!   `broker::redis::history`);
//! - [`gate`]: one reader's positions, which hold a stream's live messages
//!   while its history is read, drop what it has seen, and notice a gap.
//!
//! A [`Record`] is one message of a stream, rendered once for every reader:
//! as the JSON dialect's message with its position, and as that message's
//! WebSocket frame.

pub mod cursor;
pub mod gate;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use self::cursor::{CursorError, Position, Since};
use crate::protocol::json::{Reason, ServerMessage, StreamPosition};
use crate::protocol::text_frame;
use crate::stream::Stream;

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages kept per stream; 0 turns history off.
    pub size: usize,
    /// Longest a message is kept.
    pub ttl: Duration,
    /// All history together, in bytes (memory mode).
    pub max_bytes: usize,
    /// How long a stream's epoch and offset outlive its last message.
    pub meta_ttl: Duration,
}

impl Settings {
    /// Whether history is on.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// One message of a stream, as kept and as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    pub position: Position,
    /// When it was appended, Unix ms.
    pub ts: u64,
    /// The payload as published: the text of a notification or a broadcast,
    /// the `chat.delivery` JSON (without position) of a room message.
    pub body: Arc<str>,
    /// The JSON dialect's message, with `stream`, `epoch` and `offset`.
    pub json: Bytes,
    /// `json` as one WebSocket text frame.
    pub frame: Bytes,
    /// The plain-text dialect's frame (the body as it is), for the streams
    /// plain-text clients get: a user's notifications and broadcasts.
    pub text_frame: Option<Bytes>,
}

impl Record {
    /// The record of `body` at `position` in `stream`; `None` when a room
    /// message's body is not a `chat.delivery` (nothing of ours).
    pub fn new(stream: Stream, position: Position, ts: u64, body: Arc<str>) -> Option<Record> {
        let message = message(&stream, &body)?.placed(StreamPosition {
            stream: stream.to_string(),
            epoch: position.epoch.to_string(),
            offset: position.offset,
        });
        let json = Bytes::from(message.encode());
        let frame = text_frame(std::str::from_utf8(&json).unwrap_or_default());
        let text_frame = match stream {
            Stream::User(_) | Stream::Broadcast => Some(text_frame(&body)),
            Stream::Room(_) => None,
        };
        Some(Record {
            stream,
            position,
            ts,
            body,
            json,
            frame,
            text_frame,
        })
    }

    /// The bytes this record holds, for the history byte cap.
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 160;
        OVERHEAD
            + self.body.len()
            + self.json.len()
            + self.frame.len()
            + self.text_frame.as_ref().map_or(0, Bytes::len)
    }
}

/// The JSON dialect's message (without position) of a stream's `body`.
pub fn message(stream: &Stream, body: &str) -> Option<ServerMessage> {
    match stream {
        Stream::User(_) => Some(ServerMessage::notification(body)),
        Stream::Broadcast => Some(ServerMessage::broadcast(body)),
        Stream::Room(room) => match ServerMessage::decode(body) {
            Ok(message @ ServerMessage::Delivery { .. }) => match &message {
                ServerMessage::Delivery { room: r, .. } if r == &**room => Some(message),
                _ => None,
            },
            _ => None,
        },
    }
}

/// What a resume of one stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No position was given: the reader starts at the head.
    Fresh,
    /// The messages after the reader's position follow (none, if it was at
    /// the head).
    Recovered,
    /// They cannot be had; nothing is replayed.
    Lost(Reason),
}

impl Outcome {
    /// `recovered` and `reason` as the wire carries them.
    pub fn wire(self) -> (Option<bool>, Option<Reason>) {
        match self {
            Outcome::Fresh => (None, None),
            Outcome::Recovered => (Some(true), None),
            Outcome::Lost(reason) => (Some(false), Some(reason)),
        }
    }
}

/// The answer to a read of one stream's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The stream's head: live messages follow it.
    pub head: Position,
    pub outcome: Outcome,
    /// With [`Outcome::Recovered`]: the messages after the reader's
    /// position up to `head`, in order.
    pub records: Vec<Arc<Record>>,
}

/// How many messages one reader may be sent on a resume, over all its
/// streams: what its outbound queue holds.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub frames: usize,
    pub bytes: usize,
}

impl Budget {
    /// Takes `records` from the budget if they fit; `false` leaves it as it was.
    pub fn take(&mut self, records: &[Arc<Record>]) -> bool {
        let bytes: usize = records.iter().map(|r| r.frame.len()).sum();
        if records.len() > self.frames || bytes > self.bytes {
            return false;
        }
        self.frames -= records.len();
        self.bytes -= bytes;
        true
    }
}

/// Decides a resume from the stream's state: its `epoch`, its `head`
/// offset, and `first`, the offset of the oldest message still kept
/// (`head + 1` when none is). `limit` is the most messages that may be
/// replayed.
pub fn judge(
    since: Option<&Position>,
    epoch: &str,
    head: u64,
    first: u64,
    limit: usize,
) -> Outcome {
    let Some(since) = since else {
        return Outcome::Fresh;
    };
    if since.epoch.is_empty() || &*since.epoch != epoch || since.offset > head {
        // An offset beyond the head under the same epoch means the history
        // went back (a restored snapshot): what the reader saw is gone.
        return Outcome::Lost(Reason::EpochChanged);
    }
    if since.offset == head {
        return Outcome::Recovered;
    }
    if since.offset + 1 < first {
        return Outcome::Lost(Reason::TooOld);
    }
    if (head - since.offset) as usize > limit {
        return Outcome::Lost(Reason::Limit);
    }
    Outcome::Recovered
}

/// The messages of several streams as one sequence: oldest first by time,
/// each stream's in offset order (ties within a millisecond keep the
/// order of `lists`).
pub fn merge(lists: &[Vec<Arc<Record>>]) -> Vec<Arc<Record>> {
    let total = lists.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut heads = vec![0usize; lists.len()];
    while let Some(i) = (0..lists.len())
        .filter(|&i| heads[i] < lists[i].len())
        .min_by_key(|&i| lists[i][heads[i]].ts)
    {
        out.push(lists[i][heads[i]].clone());
        heads[i] += 1;
    }
    out
}

/// A new random epoch: 12 lowercase hex digits.
pub fn new_epoch() -> Arc<str> {
    let bits = uuid::Uuid::new_v4().as_u128();
    format!("{:012x}", (bits & 0xffff_ffff_ffff) as u64).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> Position {
        Position::new(epoch, offset)
    }

    #[test]
    fn each_case_of_a_resume() {
        let judge = |since: Option<Position>| judge(since.as_ref(), "e", 10, 6, 4);
        assert_eq!(judge(None), Outcome::Fresh);
        assert_eq!(judge(Some(at("e", 10))), Outcome::Recovered);
        assert_eq!(judge(Some(at("e", 6))), Outcome::Recovered);
        assert_eq!(judge(Some(at("e", 5))), Outcome::Lost(Reason::Limit));
        assert_eq!(judge(Some(at("e", 4))), Outcome::Lost(Reason::TooOld));
        assert_eq!(
            judge(Some(at("x", 10))),
            Outcome::Lost(Reason::EpochChanged)
        );
        assert_eq!(judge(Some(at("", 10))), Outcome::Lost(Reason::EpochChanged));
        assert_eq!(
            judge(Some(at("e", 11))),
            Outcome::Lost(Reason::EpochChanged)
        );
        // The reader has seen everything kept before the first message.
        assert_eq!(judge_at(Some(at("e", 5)), 10, 6, 100), Outcome::Recovered);
    }

    fn judge_at(since: Option<Position>, head: u64, first: u64, limit: usize) -> Outcome {
        judge(since.as_ref(), "e", head, first, limit)
    }

    #[test]
    fn records_carry_their_position_in_every_rendering() {
        let record = Record::new(
            Stream::User("u1".into()),
            at("abc", 3),
            1,
            r#"{"order":7}"#.into(),
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&record.json).unwrap(),
            r#"{"type":"notification","data":{"order":7},"stream":"user:u1","epoch":"abc","offset":3}"#
        );
        assert_eq!(&record.frame[2..], &record.json[..]);
        assert_eq!(&record.text_frame.unwrap()[2..], br#"{"order":7}"#);
        let delivery = ServerMessage::delivery("r", "a", "hi").encode();
        let room = Record::new(Stream::Room("r".into()), at("e", 1), 1, delivery.into()).unwrap();
        assert!(room.text_frame.is_none());
        let decoded = ServerMessage::decode(std::str::from_utf8(&room.json).unwrap()).unwrap();
        assert_eq!(decoded.at().unwrap().stream, "room:r");
        // A room message of another room, or not ours at all, is no record.
        let other = ServerMessage::delivery("s", "a", "hi").encode();
        assert!(Record::new(Stream::Room("r".into()), at("e", 1), 1, other.into()).is_none());
        assert!(Record::new(Stream::Room("r".into()), at("e", 1), 1, "x".into()).is_none());
    }

    #[test]
    fn epochs_are_twelve_hex_digits() {
        let epoch = new_epoch();
        assert_eq!(epoch.len(), 12);
        assert!(
            epoch
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(epoch, new_epoch());
    }
}
