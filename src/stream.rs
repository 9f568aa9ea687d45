//! What a message is addressed to: one user's notifications, one room, or
//! every client. The broker follows the user and room streams an instance
//! holds connections for; the names are the ones clients see.

use std::fmt;
use std::sync::Arc;

/// A named flow of messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// `user:{id}`: the notifications of one user, on every connection of theirs.
    User(Arc<str>),
    /// `room:{name}`: the chat of one room, to its members.
    Room(Arc<str>),
    /// `broadcast`: `POST /broadcast`, to every client.
    Broadcast,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::User(user) => write!(f, "user:{user}"),
            Stream::Room(room) => write!(f, "room:{room}"),
            Stream::Broadcast => f.write_str("broadcast"),
        }
    }
}
