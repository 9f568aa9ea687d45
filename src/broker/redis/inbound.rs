//! The inbound router: one Pub/Sub message in, what this instance's
//! clients get out, handed to the node's delivery.
//!
//! For the streams with history it also remembers the last position it saw
//! of each one ([`Seen`]): the append script fences with it, a reconnect
//! compares with it, and a message that goes back under the same epoch (a
//! replica promoted, a snapshot restored) is caught here instead of reaching
//! clients that already had that offset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::channels::{
    Appended, BROADCAST_CHANNEL, Envelope, NOTIFY_PREFIX, ROOM_PREFIX, RoomPayload,
    stream_of_channel,
};
use crate::delivery::{Delivery, Inbound};
use crate::history::{Position, Record};
use crate::stream::Stream;

/// The last position this instance saw of a stream, and that message's
/// time in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub position: Position,
    pub ts: u64,
}

/// The time of a head a read found rather than a message received.
pub const UNKNOWN_TS: u64 = u64::MAX;

/// The last positions seen, of the streams this instance follows.
#[derive(Debug, Default)]
pub struct Seen {
    last: Mutex<HashMap<Stream, Last>>,
}

/// What routing a message found that the supervisor must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Nothing,
    /// `stream` went back: a message at or before the last position seen,
    /// newer than it. Its history was rolled back; the position seen is the
    /// fence.
    Rollback(Stream, Position),
}

impl Seen {
    /// The last position seen of `stream`.
    pub fn get(&self, stream: &Stream) -> Option<Last> {
        self.lock().get(stream).cloned()
    }

    /// Records `position` as seen unless a later one of the same epoch was.
    /// `ts` is the message's time in Redis, or [`UNKNOWN_TS`] for a head a
    /// read found (no evidence against a message that arrives after it).
    pub fn note(&self, stream: &Stream, position: &Position, ts: u64) {
        let mut last = self.lock();
        match last.get_mut(stream) {
            Some(seen) if seen.position.epoch == position.epoch => {
                if position.offset > seen.position.offset {
                    seen.position.offset = position.offset;
                    seen.ts = ts;
                }
            }
            _ => {
                last.insert(
                    stream.clone(),
                    Last {
                        position: position.clone(),
                        ts,
                    },
                );
            }
        }
    }

    /// Forgets `stream` (no local reader follows it any more).
    pub fn forget(&self, stream: &Stream) {
        self.lock().remove(stream);
    }

    /// Every stream seen, with its last position.
    pub fn all(&self) -> Vec<(Stream, Last)> {
        self.lock()
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Stream, Last>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Routes one instance's Pub/Sub messages to its delivery.
#[derive(Debug)]
pub struct Router {
    /// This instance's id: its own envelopes are skipped.
    instance: String,
    delivery: Delivery,
    pub seen: Arc<Seen>,
}

impl Router {
    pub fn new(instance: &str, delivery: Delivery) -> Self {
        Router {
            instance: instance.to_owned(),
            delivery,
            seen: Arc::default(),
        }
    }

    /// The envelope of `text` published by this instance.
    pub fn envelope(&self, text: &str, sender: Option<String>) -> String {
        let envelope = Envelope {
            sender_id: sender,
            message: text.to_owned(),
            origin: Some(self.instance.clone()),
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Delivers the message `payload` received on `channel` to the local
    /// clients it is for.
    pub fn route(&self, channel: &str, payload: &[u8]) -> Found {
        if channel == BROADCAST_CHANNEL {
            // The seed's envelope has no `origin`; raw text is accepted too.
            let text = match serde_json::from_slice::<Envelope>(payload) {
                Ok(envelope) if envelope.origin.as_deref() == Some(&self.instance) => {
                    return Found::Nothing;
                }
                Ok(envelope) => envelope.message,
                Err(_) => String::from_utf8_lossy(payload).into_owned(),
            };
            self.delivery.deliver(Inbound::Broadcast {
                text: &text,
                except: None,
            });
        } else if let Some(user) = channel.strip_prefix(NOTIFY_PREFIX) {
            let text = String::from_utf8_lossy(payload);
            self.delivery.deliver(Inbound::User { user, text: &text });
        } else if let Some(room) = channel.strip_prefix(ROOM_PREFIX) {
            self.route_room(room, payload);
        } else if let Some(stream) = stream_of_channel(channel) {
            return self.route_record(stream, payload);
        }
        Found::Nothing
    }

    /// Room messages are JSON themselves: only an envelope with an `origin`
    /// is one of ours, and only one with `presence` is a presence change;
    /// anything else goes to the members as it is. Presence changes, this
    /// instance's included, are delivered from the subscription, so every
    /// member everywhere gets them in Redis' one order.
    fn route_room(&self, room: &str, payload: &[u8]) {
        let (text, own) = match serde_json::from_slice::<RoomPayload>(payload) {
            Ok(RoomPayload {
                message: Some(message),
                origin: Some(origin),
                presence,
                user,
            }) => {
                if let (Some(_), Some(user)) = (presence, user) {
                    self.delivery.deliver(Inbound::Presence {
                        room,
                        user: &user,
                        text: &message,
                    });
                    return;
                }
                let own = origin == self.instance;
                (message, own)
            }
            _ => (String::from_utf8_lossy(payload).into_owned(), false),
        };
        // Our own room messages went to local members already.
        if !own {
            self.delivery.deliver(Inbound::Room {
                room,
                text: &text,
                except: None,
            });
        }
    }

    /// An appended message of a stream with history: every instance,
    /// this one included, delivers it from here, in Redis' order.
    fn route_record(&self, stream: Stream, payload: &[u8]) -> Found {
        let Ok(appended) = serde_json::from_slice::<Appended>(payload) else {
            tracing::warn!(%stream, "a message on a stream channel is not an append; dropped");
            return Found::Nothing;
        };
        let position = Position::new(appended.epoch, appended.offset);
        let ts = appended.ts as u64;
        if let Some(last) = self.seen.get(&stream)
            && last.position.epoch == position.epoch
            && position.offset <= last.position.offset
            && ts > last.ts
        {
            tracing::warn!(
                %stream,
                seen = last.position.offset,
                got = position.offset,
                "a stream went back under the same epoch (replica promoted or snapshot restored)"
            );
            return Found::Rollback(stream, last.position);
        }
        self.seen.note(&stream, &position, ts);
        match Record::new(stream.clone(), position, ts, appended.body.into()) {
            Some(record) => {
                self.delivery.deliver(Inbound::Record(&Arc::new(record)));
            }
            None => {
                tracing::warn!(%stream, "an appended room message is not a chat.delivery; dropped")
            }
        }
        Found::Nothing
    }
}
