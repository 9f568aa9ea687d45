//! Local delivery: how a message meant for this instance's clients reaches
//! them, whichever instance it was published on. Brokers hand every inbound
//! message here ([`Delivery::deliver`]), so each kind of message is rendered
//! for its dialects and fanned out in one place.

use std::sync::Arc;

use crate::history::Record;
use crate::hub::{Audience, ConnId, Fanout, Hub, Rendered};
use crate::outbox::Item;
use crate::protocol::json::ServerMessage;
use crate::protocol::{self, Dialect};

/// A message for this instance's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A message of a stream's history, with its position.
    Record(&'a Arc<Record>),
    /// A seed text for every plain-text client but `except` (`POST
    /// /broadcast`, `New message:` relays, seed publishers).
    Broadcast {
        text: &'a str,
        except: Option<ConnId>,
    },
    /// A notification for every connection of `user`: verbatim to
    /// plain-text connections, as `notification` to JSON ones.
    User { user: &'a str, text: &'a str },
    /// A JSON message (or whatever a backend published) for every member of
    /// `room` but `except`.
    Room {
        room: &'a str,
        text: &'a str,
        except: Option<ConnId>,
    },
    /// A `presence.join`/`presence.leave` about `user` (JSON in `text`) for
    /// the other members of `room`.
    Presence {
        room: &'a str,
        user: &'a str,
        text: &'a str,
    },
}

/// Delivers inbound messages to the local hub.
#[derive(Debug, Clone)]
pub struct Delivery {
    hub: Arc<Hub>,
}

impl Delivery {
    /// Delivery into `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Delivery { hub }
    }

    /// Renders `inbound` for the dialects that get it and queues it for its
    /// local recipients.
    pub fn deliver(&self, inbound: Inbound<'_>) -> Fanout {
        match inbound {
            Inbound::Record(record) => self.hub.send_record(record),
            Inbound::Broadcast { text, except } => self.hub.send_to_audience(
                Audience::Only(Dialect::Text),
                &protocol::text_frame(text),
                except,
            ),
            Inbound::User { user, text } => {
                let plain = Item::Frame(protocol::text_frame(text));
                let json = Item::Frame(ServerMessage::notification(text).frame());
                let rendered = Rendered {
                    text: Some(&plain),
                    json: Some(&json),
                };
                self.hub.send_to_user(user, rendered)
            }
            Inbound::Room { room, text, except } => {
                let frame = Item::Frame(protocol::text_frame(text));
                self.hub.send_to_room(room, &frame, except)
            }
            Inbound::Presence { room, user, text } => {
                self.hub
                    .send_presence(room, &protocol::text_frame(text), user)
            }
        }
    }
}
