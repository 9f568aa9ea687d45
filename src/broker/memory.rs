//! The embedded broker: one process, nothing else to run. Every message is
//! delivered straight to this process's hub.

use std::sync::Arc;

use crate::hub::{ConnId, Fanout, Hub};
use crate::protocol;

/// Delivers to the local hub only.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    /// A broker over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }

    /// Sends `text` to every local connection but `except`.
    pub fn broadcast(&self, text: &str, except: Option<ConnId>) -> Fanout {
        self.hub.broadcast(&protocol::text_frame(text), except)
    }

    /// Sends `text` to every local member of `room` but `except`.
    pub fn publish_room(&self, room: &str, text: &str, except: Option<ConnId>) -> Fanout {
        self.hub
            .send_to_room(room, &protocol::text_frame(text), except)
    }

    /// The users in `room`, sorted.
    pub fn presence(&self, room: &str) -> Vec<String> {
        self.hub.room_users(room)
    }

    /// Sends `text` to every local connection of `user`.
    pub fn notify(&self, user: &str, text: &str) -> Fanout {
        self.hub.send_to_user(user, text)
    }
}
