//! The typed JSON dialect (seed 003), spoken on `/ws/rooms/{room}`: what a
//! client may send ([`ClientMessage`]), what the server sends
//! ([`ServerMessage`]), and the typed errors ([`ErrorCode`]) a bad message
//! gets back as `system.error`, on a connection that stays open.
//!
//! Every message is a JSON object whose `type` names it. Client messages are
//! decoded by hand rather than by a derived `Deserialize`, so each failure has
//! a stable error code (`missing_field`, `unknown_type`, …) a client can act
//! on, instead of serde's prose.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{ROOM_RULE, valid_room};

/// Milliseconds since the Unix epoch, the unit of every `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message a client sends on a room connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// `{"type":"chat.message","room":"test","text":"hi"}`: say `text` to
    /// every member of `room` (one the connection is in).
    #[serde(rename = "chat.message")]
    ChatMessage { room: String, text: String },
    /// `{"type":"room.join","room":"r"}`: also receive `r`'s messages;
    /// `since` (a `since` value naming `room:r`) resumes its history.
    #[serde(rename = "room.join")]
    RoomJoin {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// `{"type":"room.leave","room":"r"}`: stop receiving `r`'s messages.
    #[serde(rename = "room.leave")]
    RoomLeave { room: String },
    /// `{"type":"system.ping","ts":…}`: answered with `system.pong` carrying
    /// the same `ts` (or the server's time when absent).
    #[serde(rename = "system.ping")]
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// `{"type":"system.pong","ts":…}`: an answer to the server's
    /// `system.ping`; any frame keeps the connection alive, this one too.
    #[serde(rename = "system.pong")]
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
}

/// The error codes of `system.error`. The connection stays open after each;
/// repeated errors count towards the abuse limit (close 1008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not JSON, or not a JSON object.
    InvalidJson,
    /// `type` names no client message.
    UnknownType,
    /// A required field (`type`, `room`, `text`) is absent.
    MissingField,
    /// A field has the wrong JSON type (or `text` is empty).
    InvalidField,
    /// `text` is longer than `MAX_TEXT_LENGTH` characters.
    TextTooLong,
    /// The room name breaks the naming rule.
    InvalidRoom,
    /// `chat.message` or `room.leave` for a room the connection is not in.
    NotInRoom,
    /// `room.join` beyond the per-connection room limit.
    TooManyRooms,
    /// A `since` value that does not follow the grammar.
    InvalidCursor,
    /// A `since` position for a stream this connection may not read
    /// (another user's, or another room than the one joined).
    ForbiddenStream,
    /// The message could not be published now (history on and Redis
    /// unreachable): nothing was sent; send it again later.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for documentation checks and tests.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::TextTooLong,
        ErrorCode::InvalidRoom,
        ErrorCode::NotInRoom,
        ErrorCode::TooManyRooms,
        ErrorCode::InvalidCursor,
        ErrorCode::ForbiddenStream,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::ForbiddenStream => "forbidden_stream",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Why a client message was refused: its code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    /// The `system.error` message carrying this error.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl ClientMessage {
    /// The message's JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one client message; `max_text` is the longest `text`, in
    /// characters. Never panics: every failure is a typed [`ProtocolError`].
    pub fn decode(text: &str, max_text: usize) -> Result<Self, ProtocolError> {
        let value: Value = serde_json::from_str(text).map_err(|err| {
            ProtocolError::new(ErrorCode::InvalidJson, format!("not JSON: {err}"))
        })?;
        let Value::Object(fields) = value else {
            return Err(ProtocolError::new(
                ErrorCode::InvalidJson,
                "expected a JSON object with a \"type\" field",
            ));
        };
        let kind = string(&fields, "type")?;
        match kind {
            "chat.message" => {
                let room = room(&fields)?;
                let text = string(&fields, "text")?;
                if text.is_empty() {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidField,
                        "\"text\" must not be empty",
                    ));
                }
                let chars = text.chars().count();
                if chars > max_text {
                    return Err(ProtocolError::new(
                        ErrorCode::TextTooLong,
                        format!("\"text\" has {chars} characters; the limit is {max_text}"),
                    ));
                }
                Ok(ClientMessage::ChatMessage {
                    room,
                    text: text.to_owned(),
                })
            }
            "room.join" => Ok(ClientMessage::RoomJoin {
                room: room(&fields)?,
                since: optional_string(&fields, "since")?,
            }),
            "room.leave" => Ok(ClientMessage::RoomLeave {
                room: room(&fields)?,
            }),
            "system.ping" => Ok(ClientMessage::Ping {
                ts: timestamp(&fields)?,
            }),
            "system.pong" => Ok(ClientMessage::Pong {
                ts: timestamp(&fields)?,
            }),
            other => Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown type {:?}; expected chat.message, room.join, room.leave, system.ping or system.pong",
                    clip(other)
                ),
            )),
        }
    }
}

/// The string field `name`, required.
fn string<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, ProtocolError> {
    match fields.get(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ProtocolError::new(
            ErrorCode::MissingField,
            format!("missing field \"{name}\""),
        )),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("\"{name}\" must be a string"),
        )),
    }
}

/// The string field `name`, optional.
fn optional_string(
    fields: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ProtocolError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("\"{name}\" must be a string"),
        )),
    }
}

/// The required `room` field, checked against the naming rule.
fn room(fields: &Map<String, Value>) -> Result<String, ProtocolError> {
    let room = string(fields, "room")?;
    if !valid_room(room) {
        return Err(ProtocolError::new(
            ErrorCode::InvalidRoom,
            format!("invalid room name {:?}: {ROOM_RULE}", clip(room)),
        ));
    }
    Ok(room.to_owned())
}

/// The optional `ts` field: a non-negative integer when present.
fn timestamp(fields: &Map<String, Value>) -> Result<Option<u64>, ProtocolError> {
    match fields.get("ts") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::InvalidField,
                "\"ts\" must be a non-negative integer",
            )
        }),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            "\"ts\" must be a number",
        )),
    }
}

/// At most 64 characters of a client's string, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Where a message stands in its stream: the fields every delivery of a
/// stream carries while history is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// `user:{id}`, `room:{name}` or `broadcast`.
    pub stream: String,
    pub epoch: String,
    pub offset: u64,
}

/// Why a stream could not be resumed (`recovered: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The stream's history was lost since your position was given (a
    /// restart in memory mode, Redis lost its data or rolled back, the
    /// stream's metadata expired), or the position had no epoch.
    EpochChanged,
    /// A message after your position is no longer kept (beyond
    /// `HISTORY_SIZE`, older than `HISTORY_TTL`, or evicted under
    /// `HISTORY_MAX_BYTES`).
    TooOld,
    /// The messages you missed would not fit in one answer (the connection's
    /// outbound queue).
    Limit,
    /// History cannot be read right now (Redis unreachable); your position
    /// stands and nothing was replayed.
    Unavailable,
    /// The position could not be read at all (a garbage `Last-Event-ID`).
    InvalidCursor,
}

impl Reason {
    /// Every reason, for documentation checks and metrics.
    pub const ALL: [Reason; 5] = [
        Reason::EpochChanged,
        Reason::TooOld,
        Reason::Limit,
        Reason::Unavailable,
        Reason::InvalidCursor,
    ];

    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EpochChanged => "epoch_changed",
            Reason::TooOld => "too_old",
            Reason::Limit => "limit",
            Reason::Unavailable => "unavailable",
            Reason::InvalidCursor => "invalid_cursor",
        }
    }
}

/// A message the server sends on a JSON connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// A chat line, to every member of `room` on every instance, the sender
    /// included. `id` is unique; `ts` is the server's time in Unix ms.
    #[serde(rename = "chat.delivery")]
    Delivery {
        room: String,
        user: String,
        text: String,
        id: String,
        ts: u64,
        #[serde(flatten)]
        at: Option<StreamPosition>,
    },
    /// The connection is now in `room`; `users` are the room's members
    /// online at that moment (this user included).
    #[serde(rename = "room.joined")]
    Joined { room: String, users: Vec<String> },
    /// The connection has left `room`.
    #[serde(rename = "room.left")]
    Left { room: String },
    /// `user` came online in `room` (their first connection to it, anywhere).
    #[serde(rename = "presence.join")]
    PresenceJoin { room: String, user: String, ts: u64 },
    /// `user` went offline in `room` (their last connection left, or their
    /// instance stopped refreshing for `PRESENCE_TTL`).
    #[serde(rename = "presence.leave")]
    PresenceLeave { room: String, user: String, ts: u64 },
    /// A notification for this connection's user (`POST /notify/{user}` or
    /// `PUBLISH notifications:{user}`): `data` is the published payload,
    /// parsed when it is JSON, else the text.
    #[serde(rename = "notification")]
    Notification {
        data: Value,
        #[serde(flatten)]
        at: Option<StreamPosition>,
    },
    /// A `POST /broadcast` (`data` as for `notification`).
    #[serde(rename = "broadcast")]
    Broadcast {
        data: Value,
        #[serde(flatten)]
        at: Option<StreamPosition>,
    },
    /// Where a stream stands as this connection starts following it: live
    /// messages follow `offset`. After a resume, `recovered` says whether the
    /// messages after the client's position follow (then exactly those come
    /// next) or could not be (`reason`; nothing is replayed).
    #[serde(rename = "stream.position")]
    Position {
        stream: String,
        epoch: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
    },
    /// The heartbeat, every `HEARTBEAT_INTERVAL`.
    #[serde(rename = "system.ping")]
    Ping { ts: u64 },
    /// The answer to a client's `system.ping`.
    #[serde(rename = "system.pong")]
    Pong { ts: u64 },
    /// A message was refused; the connection stays open.
    #[serde(rename = "system.error")]
    Error { code: ErrorCode, message: String },
    /// The server is draining: finish up and reconnect later, possibly to
    /// another instance.
    #[serde(rename = "system.shutdown")]
    Shutdown {
        message: String,
        /// When to reconnect, drawn per client across
        /// `DRAIN_RECONNECT_SPREAD`, so leaving clients spread out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconnect_after_ms: Option<u64>,
    },
}

impl ServerMessage {
    /// A new `chat.delivery` with a fresh id and the current time.
    pub fn delivery(room: &str, user: &str, text: &str) -> Self {
        ServerMessage::Delivery {
            room: room.to_owned(),
            user: user.to_owned(),
            text: text.to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            ts: now_ms(),
            at: None,
        }
    }

    /// The `notification` carrying a published `payload`.
    pub fn notification(payload: &str) -> Self {
        ServerMessage::Notification {
            data: data(payload),
            at: None,
        }
    }

    /// The `broadcast` carrying a published `payload`.
    pub fn broadcast(payload: &str) -> Self {
        ServerMessage::Broadcast {
            data: data(payload),
            at: None,
        }
    }

    /// This message placed in its stream (`chat.delivery`, `notification`
    /// and `broadcast`; others are returned as they are).
    pub fn placed(mut self, position: StreamPosition) -> Self {
        match &mut self {
            ServerMessage::Delivery { at, .. }
            | ServerMessage::Notification { at, .. }
            | ServerMessage::Broadcast { at, .. } => *at = Some(position),
            _ => {}
        }
        self
    }

    /// Where this message stands in its stream, if it carries a position.
    pub fn at(&self) -> Option<&StreamPosition> {
        match self {
            ServerMessage::Delivery { at, .. }
            | ServerMessage::Notification { at, .. }
            | ServerMessage::Broadcast { at, .. } => at.as_ref(),
            _ => None,
        }
    }

    /// The message's JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a server message (for clients and tests).
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The message as one encoded text frame.
    pub fn frame(&self) -> bytes::Bytes {
        super::text_frame(&self.encode())
    }
}

/// A published payload as `data`: parsed when it is JSON, else the text.
fn data(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|_| Value::from(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<ClientMessage, ErrorCode> {
        ClientMessage::decode(text, 10).map_err(|e| e.code)
    }

    #[test]
    fn the_seed_message_decodes() {
        assert_eq!(
            decode(r#"{"type":"chat.message","room":"test","text":"hi"}"#),
            Ok(ClientMessage::ChatMessage {
                room: "test".into(),
                text: "hi".into()
            })
        );
    }

    #[test]
    fn each_fault_has_its_code() {
        for (text, code) in [
            ("nope", ErrorCode::InvalidJson),
            ("[1]", ErrorCode::InvalidJson),
            (r#"{"room":"a"}"#, ErrorCode::MissingField),
            (r#"{"type":7}"#, ErrorCode::InvalidField),
            (r#"{"type":"chat.shout"}"#, ErrorCode::UnknownType),
            (
                r#"{"type":"chat.message","room":"a"}"#,
                ErrorCode::MissingField,
            ),
            (
                r#"{"type":"chat.message","room":"a","text":""}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"type":"chat.message","room":"a","text":"12345678901"}"#,
                ErrorCode::TextTooLong,
            ),
            (
                r#"{"type":"room.join","room":"a b"}"#,
                ErrorCode::InvalidRoom,
            ),
            (r#"{"type":"system.ping","ts":-1}"#, ErrorCode::InvalidField),
        ] {
            assert_eq!(decode(text), Err(code), "{text}");
        }
        // Ten characters is the limit, not ten bytes.
        assert!(decode(r#"{"type":"chat.message","room":"a","text":"éééééééééé"}"#).is_ok());
    }

    #[test]
    fn server_messages_carry_the_seed_keys() {
        let delivery = ServerMessage::delivery("test", "u1", "hi");
        let json: Value = serde_json::from_str(&delivery.encode()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["id", "room", "text", "ts", "type", "user"]);
        assert_eq!(json["type"], "chat.delivery");
        let error = ProtocolError::new(ErrorCode::NotInRoom, "x").to_message();
        assert_eq!(
            error.encode(),
            r#"{"type":"system.error","code":"not_in_room","message":"x"}"#
        );
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn notifications_keep_json_payloads_as_json() {
        assert_eq!(
            ServerMessage::notification(r#"{"order":1}"#),
            ServerMessage::Notification {
                data: serde_json::json!({"order": 1}),
                at: None,
            }
        );
        assert_eq!(
            ServerMessage::notification("plain"),
            ServerMessage::Notification {
                data: Value::from("plain"),
                at: None,
            }
        );
    }
}
