//! The fixed limits and naming rules every part of the server applies the
//! same way: user ids, room names, rooms per connection, the JSON error
//! budget. Each rule and the sentence that explains it live here once;
//! this module imports nothing of the crate.

/// Longest user id, in bytes: a `/ws/{client_id}`, a token's `sub`, a
/// room connection's `?user=`, `POST /notify/{user_id}`, a publisher's
/// `user`.
pub const MAX_USER_ID: usize = 256;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// The room naming rule, as error messages state it.
pub const ROOM_RULE: &str = "1 to 128 letters, digits or _ - . : @";

/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 64;

/// Invalid messages a JSON client may send in a burst before it is closed
/// with 1008 ...
pub const ERROR_BURST: f64 = 10.0;
/// ... and how many more per second it earns back.
pub const ERROR_REFILL_PER_SEC: f64 = 1.0;

/// Whether `id` is short enough to be a user id (any bytes, at most
/// [`MAX_USER_ID`]).
pub fn user_id_fits(id: &str) -> bool {
    id.len() <= MAX_USER_ID
}

/// `"{what} longer than 256 bytes"`, the refusal of a user id that does
/// not fit.
pub fn user_id_too_long(what: &str) -> String {
    format!("{what} longer than {MAX_USER_ID} bytes")
}

/// Whether `name` is a valid room name: 1 ..= [`MAX_ROOM_NAME`] bytes of
/// ASCII letters, digits and `_ - . : @` ([`ROOM_RULE`]). The same rule
/// holds for the URL path, the JSON messages and the Redis channel
/// `rooms:{room}`.
pub fn valid_room(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

/// `"invalid room name: <rule>"`, the refusal of a bad room name over HTTP.
pub fn invalid_room() -> String {
    format!("invalid room name: {ROOM_RULE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_text_states_the_limit() {
        assert!(ROOM_RULE.starts_with(&format!("1 to {MAX_ROOM_NAME} ")));
        assert!(valid_room("team:42@eu_1.x-y"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room(&"r".repeat(MAX_ROOM_NAME + 1)));
        assert!(valid_room(&"r".repeat(MAX_ROOM_NAME)));
        assert!(user_id_fits(&"u".repeat(MAX_USER_ID)));
        assert!(!user_id_fits(&"u".repeat(MAX_USER_ID + 1)));
        assert_eq!(
            user_id_too_long("client_id"),
            "client_id longer than 256 bytes"
        );
    }
}
