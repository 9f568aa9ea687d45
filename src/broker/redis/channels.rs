//! What wsnotify keeps in Redis and how it is named, defined once: the
//! channels, the keys, and the envelopes that travel on the channels. The
//! Lua scripts get every name from here, in `KEYS` and `ARGV`.
//!
//! [`Router`] turns one Pub/Sub message into what this instance's clients
//! get, and hands it to the node's delivery.

use serde::{Deserialize, Serialize};

use crate::delivery::{Delivery, Inbound};
use crate::stream::Stream;

/// The channel every instance subscribes to for broadcasts (seed 000).
pub const BROADCAST_CHANNEL: &str = "websocket:broadcast";
/// Prefix of the per-user channels (seed 004): `notifications:{user_id}`.
pub const NOTIFY_PREFIX: &str = "notifications:";
/// Prefix of the room channels: `rooms:{room}`.
pub const ROOM_PREFIX: &str = "rooms:";
/// Prefix of the per-instance connection-count keys.
pub const COUNT_PREFIX: &str = "wsnotify:connections:";
/// Prefix of a room's presence key: a sorted set of users by expiry.
pub const PRESENCE_PREFIX: &str = "wsnotify:presence:";
/// Prefix of the key listing the instances that hold one user in one room.
pub const HOLDERS_PREFIX: &str = "wsnotify:presence-of:";

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

/// The connection-count key of `instance`.
pub fn count_key(instance: &str) -> String {
    format!("{COUNT_PREFIX}{instance}")
}

/// `wsnotify:presence:{room}`: the users present in `room`, each scored by
/// the time (Unix ms, Redis' clock) their entry expires.
pub fn presence_key(room: &str) -> String {
    format!("{PRESENCE_PREFIX}{room}")
}

/// `wsnotify:presence-of:{len}:{room}:{user}`: the instances holding `user`
/// in `room`, scored the same way. `len`, the room's length in bytes, keeps
/// the key unambiguous whatever the user id holds.
pub fn holders_key(room: &str, user: &str) -> String {
    format!("{HOLDERS_PREFIX}{}:{room}:{user}", room.len())
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

/// What a payload on a room channel is: an instance's [`Envelope`],
/// possibly of a presence change (`presence` names it, `user` is its
/// subject), or anything else a backend published.
#[derive(Debug, Deserialize)]
struct RoomPayload {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    presence: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// Routes one instance's Pub/Sub messages to its delivery.
#[derive(Debug)]
pub struct Router {
    /// This instance's id: its own envelopes are skipped.
    instance: String,
    delivery: Delivery,
}

impl Router {
    pub fn new(instance: &str, delivery: Delivery) -> Self {
        Router {
            instance: instance.to_owned(),
            delivery,
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
    pub fn route(&self, channel: &str, payload: &[u8]) {
        if channel == BROADCAST_CHANNEL {
            // The seed's envelope has no `origin`; raw text is accepted too.
            let text = match serde_json::from_slice::<Envelope>(payload) {
                Ok(envelope) if envelope.origin.as_deref() == Some(&self.instance) => return,
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
        }
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
    fn names_are_the_documented_ones() {
        assert_eq!(channel(&Stream::User("42".into())), "notifications:42");
        assert_eq!(channel(&Stream::Room("test".into())), "rooms:test");
        assert_eq!(channel(&Stream::Broadcast), "websocket:broadcast");
        assert_eq!(presence_key("r"), "wsnotify:presence:r");
        assert_eq!(holders_key("r:1", "u"), "wsnotify:presence-of:3:r:1:u");
    }
}
