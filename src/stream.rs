//! What a message is addressed to: one user's notifications, one room, or
//! every client. The broker follows the user and room streams an instance
//! holds connections for; the names are the ones clients see.

use std::fmt;
use std::sync::Arc;

use crate::limits::{user_id_fits, valid_room};

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

impl Stream {
    /// The stream `name` names (`user:alice`, `room:lobby`, `broadcast`),
    /// if it follows the rules for user ids and room names.
    pub fn parse(name: &str) -> Option<Stream> {
        if name == "broadcast" {
            return Some(Stream::Broadcast);
        }
        if let Some(user) = name.strip_prefix("user:") {
            return (!user.is_empty() && user_id_fits(user)).then(|| Stream::User(user.into()));
        }
        let room = name.strip_prefix("room:")?;
        valid_room(room).then(|| Stream::Room(room.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for stream in [
            Stream::User("a:b,c".into()),
            Stream::Room("team:42@eu".into()),
            Stream::Broadcast,
        ] {
            assert_eq!(Stream::parse(&stream.to_string()), Some(stream));
        }
        for bad in ["user:", "room:", "room:a b", "broadcast:x", "users:a", ""] {
            assert_eq!(Stream::parse(bad), None, "{bad}");
        }
    }
}
