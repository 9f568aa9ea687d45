//! Property tests of the typed JSON protocol of room connections
//! (`wsnotify::protocol::json`, `/ws/rooms/{room}`).
//!
//! 1. Round trips: every client and server message survives encode → decode,
//!    under the wire `type` the protocol documents; the strategies provably
//!    cover every variant.
//! 2. The client decoder against a reference written from the protocol
//!    description (not from src/): arbitrary bytes and "JSON-ish" text from a
//!    grammar (valid objects with random keys and values, known and unknown
//!    types, wrong field types, truncated JSON, huge numbers, deep nesting)
//!    never panic, and every answer is one the reference allows.
//! 3. A live server: a raw "fuzzer" room client sends a generated sequence
//!    of good and bad messages (whole or fragmented, with pings between),
//!    beside a well-behaved "bystander" in the same room. The fuzzer gets the
//!    documented answer to each message in order, the bystander exactly the
//!    room's traffic, and afterwards the server still serves everybody.
//!
//! Failing cases are saved by proptest in
//! `tests/message_props.proptest-regressions` and replayed first; commit it.
//! `PROPTEST_CASES=N` raises the number of cases for a longer local run.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::ValueTree;
use proptest::string::string_regex;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use support::*;
use wsnotify::Config;
use wsnotify::protocol::json::{ClientMessage, ErrorCode, Reason, ServerMessage, StreamPosition};

// ---------------------------------------------------------------------------
// The reference: what the protocol description promises, independent of src/.
// ---------------------------------------------------------------------------

/// The `type` of every client message.
const CLIENT_TYPES: [&str; 5] = [
    "chat.message",
    "room.join",
    "room.leave",
    "system.ping",
    "system.pong",
];

/// The `type` of every server message.
const SERVER_TYPES: [&str; 12] = [
    "chat.delivery",
    "broadcast",
    "stream.position",
    "room.joined",
    "room.left",
    "presence.join",
    "presence.leave",
    "notification",
    "system.ping",
    "system.pong",
    "system.error",
    "system.shutdown",
];

/// The documented wire type of a client message. Exhaustive on purpose: a new
/// variant does not compile until it is named here (and then the coverage
/// test fails until the strategy generates it).
fn client_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::ChatMessage { .. } => "chat.message",
        ClientMessage::RoomJoin { .. } => "room.join",
        ClientMessage::RoomLeave { .. } => "room.leave",
        ClientMessage::Ping { .. } => "system.ping",
        ClientMessage::Pong { .. } => "system.pong",
    }
}

/// The documented wire type of a server message (exhaustive, as above).
fn server_type(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Delivery { .. } => "chat.delivery",
        ServerMessage::Joined { .. } => "room.joined",
        ServerMessage::Left { .. } => "room.left",
        ServerMessage::PresenceJoin { .. } => "presence.join",
        ServerMessage::PresenceLeave { .. } => "presence.leave",
        ServerMessage::Notification { .. } => "notification",
        ServerMessage::Broadcast { .. } => "broadcast",
        ServerMessage::Position { .. } => "stream.position",
        ServerMessage::Ping { .. } => "system.ping",
        ServerMessage::Pong { .. } => "system.pong",
        ServerMessage::Error { .. } => "system.error",
        ServerMessage::Shutdown { .. } => "system.shutdown",
    }
}

/// The documented keys of a server message, `type` included, sorted: a
/// delivery of a stream carries `stream`, `epoch` and `offset` as well.
fn server_keys(message: &ServerMessage) -> Vec<&'static str> {
    let (keys, placed): (&[&str], bool) = match message {
        ServerMessage::Delivery { at, .. } => {
            (&["id", "room", "text", "ts", "type", "user"], at.is_some())
        }
        ServerMessage::Joined { .. } => (&["room", "type", "users"], false),
        ServerMessage::Left { .. } => (&["room", "type"], false),
        ServerMessage::PresenceJoin { .. } | ServerMessage::PresenceLeave { .. } => {
            (&["room", "ts", "type", "user"], false)
        }
        ServerMessage::Notification { at, .. } | ServerMessage::Broadcast { at, .. } => {
            (&["data", "type"], at.is_some())
        }
        ServerMessage::Position {
            recovered, reason, ..
        } => {
            let mut keys = vec!["epoch", "offset", "stream", "type"];
            keys.extend(recovered.map(|_| "recovered"));
            keys.extend(reason.map(|_| "reason"));
            keys.sort_unstable();
            return keys;
        }
        ServerMessage::Ping { .. } | ServerMessage::Pong { .. } => (&["ts", "type"], false),
        ServerMessage::Error { .. } => (&["code", "message", "type"], false),
        ServerMessage::Shutdown {
            reconnect_after_ms, ..
        } => {
            let mut keys = vec!["message", "type"];
            keys.extend(reconnect_after_ms.map(|_| "reconnect_after_ms"));
            keys.sort_unstable();
            return keys;
        }
    };
    let mut keys = keys.to_vec();
    if placed {
        keys.extend(["epoch", "offset", "stream"]);
    }
    keys.sort_unstable();
    keys
}

/// The wire name of each error code, as documented.
fn documented_code(code: ErrorCode) -> &'static str {
    match code {
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

/// The codes the decoder alone can give: `not_in_room` and
/// `too_many_rooms` depend on the connection, not on the message.
const DECODER_CODES: [ErrorCode; 6] = [
    ErrorCode::InvalidJson,
    ErrorCode::UnknownType,
    ErrorCode::MissingField,
    ErrorCode::InvalidField,
    ErrorCode::TextTooLong,
    ErrorCode::InvalidRoom,
];

/// The room name rule: 1 to 128 bytes of ASCII letters, digits, `_ - . : @`.
fn spec_room(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:@".contains(c))
}

/// Characters allowed in room names.
const ROOM_CHARS: &str = "[A-Za-z0-9_.:@-]";

/// JSON's whitespace (RFC 8259): what may surround a JSON text.
fn json_trim(text: &str) -> &str {
    text.trim_matches([' ', '\t', '\n', '\r'])
}

/// A JSON value as the grammar generates it: what the text means, kept
/// beside how it is spelled, so the reference never has to parse JSON.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// An integer literal, possibly beyond 64 bits.
    Int(i128),
    /// A number literal whose value is not an integer.
    Frac(String),
    /// A number literal with a fraction or exponent whose value is this integer.
    IntegralFloat(i128, String),
    /// A number literal beyond f64's range (RFC 8259 §6 lets a parser refuse it).
    Huge(String),
    Str(String),
    Arr(Vec<J>),
    /// An object; the generators keep the keys unique.
    Obj(Vec<(String, J)>),
    /// `n` nested empty arrays.
    Deep(usize),
}

impl J {
    fn str(s: &str) -> J {
        J::Str(s.to_owned())
    }

    /// Nesting depth of arrays and objects.
    fn depth(&self) -> usize {
        match self {
            J::Arr(items) => 1 + items.iter().map(J::depth).max().unwrap_or(0),
            J::Obj(fields) => 1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            J::Deep(n) => *n,
            _ => 0,
        }
    }

    fn has_huge(&self) -> bool {
        match self {
            J::Huge(_) => true,
            J::Arr(items) => items.iter().any(J::has_huge),
            J::Obj(fields) => fields.iter().any(|(_, v)| v.has_huge()),
            _ => false,
        }
    }

    /// Whether a conforming parser may refuse this valid JSON for exceeding
    /// its limits (RFC 8259 §9: nesting depth, range of numbers).
    fn beyond_limits(&self) -> bool {
        self.has_huge() || self.depth() > 100
    }
}

/// A tiny deterministic generator (splitmix64) for spelling choices:
/// optional escapes and whitespace. `None` spells everything compactly.
struct Spelling(Option<u64>);

impl Spelling {
    fn one_in(&mut self, n: u64) -> bool {
        let Some(state) = self.0.as_mut() else {
            return false;
        };
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n == 0
    }

    fn space(&mut self, out: &mut String) {
        if self.one_in(4) {
            let pick = [" ", "\n", "\t", "\r\n", "  "];
            let i = (0..pick.len()).find(|_| self.one_in(2)).unwrap_or(0);
            out.push_str(pick[i]);
        }
    }
}

/// Writes `j` as JSON text, spelled as `spelling` decides.
fn render(j: &J, spelling: &mut Spelling, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Int(n) => out.push_str(&n.to_string()),
        J::Frac(s) | J::IntegralFloat(_, s) | J::Huge(s) => out.push_str(s),
        J::Str(s) => render_str(s, spelling, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                spelling.space(out);
                render(item, spelling, out);
                spelling.space(out);
            }
            out.push(']');
        }
        J::Obj(fields) => {
            out.push('{');
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                spelling.space(out);
                render_str(key, spelling, out);
                spelling.space(out);
                out.push(':');
                spelling.space(out);
                render(value, spelling, out);
                spelling.space(out);
            }
            out.push('}');
        }
        J::Deep(n) => {
            out.push_str(&"[".repeat(*n));
            out.push_str(&"]".repeat(*n));
        }
    }
}

/// A JSON string literal for `s`, with escapes where required and, when the
/// spelling says so, where optional (`\uXXXX`, surrogate pairs, `\/`).
fn render_str(s: &str, spelling: &mut Spelling, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\r' => Some("\\r"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' if spelling.one_in(2) => Some("\\/"),
            _ => None,
        };
        let required = (c as u32) < 0x20;
        match short {
            Some(esc) if !spelling.one_in(3) => out.push_str(esc),
            _ if required || short.is_some() || spelling.one_in(6) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if spelling.one_in(2) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out.push('"');
}

fn to_text(j: &J, spelling: Option<u64>) -> String {
    let mut out = String::new();
    render(j, &mut Spelling(spelling), &mut out);
    out
}

/// What the decoder may answer.
type Outcome = Result<ClientMessage, ErrorCode>;

/// Every answer the protocol allows for the JSON text of `j`.
///
/// Where the description leaves a choice open, each reading is allowed:
/// a `null` field may count as missing or as having the wrong type (and a
/// `null` `ts` as absent); `5.0` may or may not be the integer 5; a message
/// with several faults may report any of them; JSON beyond a parser's limits
/// may be refused as `invalid_json`.
fn reference(j: &J, max: usize) -> Vec<Outcome> {
    let mut allowed = match j {
        J::Obj(fields) => object_outcomes(fields, max),
        // Valid JSON, but not an object.
        _ => vec![Err(ErrorCode::InvalidJson)],
    };
    if j.beyond_limits() {
        allowed.push(Err(ErrorCode::InvalidJson));
    }
    allowed
}

fn object_outcomes(fields: &[(String, J)], max: usize) -> Vec<Outcome> {
    use ErrorCode::*;
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let kind = match get("type") {
        None => return vec![Err(MissingField)],
        Some(J::Null) => return vec![Err(MissingField), Err(InvalidField)],
        Some(J::Str(kind)) => kind.as_str(),
        Some(_) => return vec![Err(InvalidField)],
    };
    // A required string field: its value, or the codes it may be refused with.
    let required = |key: &str| -> Result<&str, Vec<ErrorCode>> {
        match get(key) {
            None => Err(vec![MissingField]),
            Some(J::Null) => Err(vec![MissingField, InvalidField]),
            Some(J::Str(s)) => Ok(s),
            Some(_) => Err(vec![InvalidField]),
        }
    };
    let room = || -> Result<String, Vec<ErrorCode>> {
        let room = required("room")?;
        if spec_room(room) {
            Ok(room.to_owned())
        } else {
            Err(vec![InvalidRoom])
        }
    };
    let ts = || -> Vec<Result<Option<u64>, ErrorCode>> {
        match get("ts") {
            None => vec![Ok(None)],
            Some(J::Null) => vec![Ok(None), Err(InvalidField)],
            Some(J::Int(n)) => match u64::try_from(*n) {
                Ok(n) => vec![Ok(Some(n))],
                // Negative, or beyond any millisecond timestamp.
                Err(_) => vec![Err(InvalidField)],
            },
            Some(J::IntegralFloat(n, _)) => match u64::try_from(*n) {
                Ok(n) => vec![Ok(Some(n)), Err(InvalidField)],
                Err(_) => vec![Err(InvalidField)],
            },
            Some(_) => vec![Err(InvalidField)],
        }
    };
    match kind {
        "chat.message" => {
            let room = room();
            let text = match required("text") {
                Ok("") => Err(vec![InvalidField]),
                Ok(text) if text.chars().count() > max => Err(vec![TextTooLong]),
                other => other,
            };
            match (room, text) {
                (Ok(room), Ok(text)) => vec![Ok(ClientMessage::ChatMessage {
                    room,
                    text: text.to_owned(),
                })],
                (room, text) => room
                    .err()
                    .into_iter()
                    .chain(text.err())
                    .flatten()
                    .map(Err)
                    .collect(),
            }
        }
        "room.join" => {
            // `since` is an optional string; its grammar is checked when the
            // join is carried out, not by the decoder.
            let since: Vec<Result<Option<String>, ErrorCode>> = match get("since") {
                None => vec![Ok(None)],
                Some(J::Null) => vec![Ok(None), Err(InvalidField)],
                Some(J::Str(s)) => vec![Ok(Some(s.clone()))],
                Some(_) => vec![Err(InvalidField)],
            };
            match room() {
                Ok(room) => since
                    .into_iter()
                    .map(|since| {
                        since.map(|since| ClientMessage::RoomJoin {
                            room: room.clone(),
                            since,
                        })
                    })
                    .collect(),
                Err(codes) => codes
                    .into_iter()
                    .map(Err)
                    .chain(since.into_iter().filter_map(Result::err).map(Err))
                    .collect(),
            }
        }
        "room.leave" => match room() {
            Ok(room) => vec![Ok(ClientMessage::RoomLeave { room })],
            Err(codes) => codes.into_iter().map(Err).collect(),
        },
        "system.ping" => ts()
            .into_iter()
            .map(|ts| ts.map(|ts| ClientMessage::Ping { ts }))
            .collect(),
        "system.pong" => ts()
            .into_iter()
            .map(|ts| ts.map(|ts| ClientMessage::Pong { ts }))
            .collect(),
        _ => vec![Err(UnknownType)],
    }
}

/// Decodes `text` and checks what holds for every input: no panic, a typed
/// error with a decoder code and a non-empty, bounded message that encodes
/// as a valid `system.error`, or a message that satisfies the protocol's
/// rules and decodes again from its own encoding. Returns the outcome.
fn decode_checked(text: &str, max: usize) -> Result<Outcome, TestCaseError> {
    match ClientMessage::decode(text, max) {
        Err(err) => {
            prop_assert!(
                ErrorCode::ALL.contains(&err.code) && DECODER_CODES.contains(&err.code),
                "{:?} is not a code the decoder may give",
                err.code
            );
            prop_assert!(
                !err.message.is_empty(),
                "{:?} with an empty message",
                err.code
            );
            // Clients' strings are clipped in error messages: an error never
            // echoes an unbounded amount of the input.
            prop_assert!(
                err.message.len() <= 1024,
                "{}-byte error message",
                err.message.len()
            );
            let wire = err.to_message().encode();
            prop_assert_eq!(
                ServerMessage::decode(&wire).map_err(|e| e.to_string()),
                Ok(ServerMessage::Error {
                    code: err.code,
                    message: err.message.clone()
                })
            );
            Ok(Err(err.code))
        }
        Ok(message) => {
            match &message {
                ClientMessage::ChatMessage { room, text } => {
                    prop_assert!(spec_room(room), "accepted room {:?}", room);
                    prop_assert!(!text.is_empty(), "accepted an empty text");
                    prop_assert!(text.chars().count() <= max, "accepted a text over {}", max);
                }
                ClientMessage::RoomJoin { room, .. } | ClientMessage::RoomLeave { room } => {
                    prop_assert!(spec_room(room), "accepted room {:?}", room);
                }
                ClientMessage::Ping { .. } | ClientMessage::Pong { .. } => {}
            }
            prop_assert_eq!(
                ClientMessage::decode(&message.encode(), max),
                Ok(message.clone())
            );
            Ok(Ok(message))
        }
    }
}

/// Checks a decoder answer that needs no grammar: a text that is not
/// `{ ... }` (JSON whitespace aside) is never a JSON object.
fn check_shape(text: &str, got: &Outcome) -> Result<(), TestCaseError> {
    let trimmed = json_trim(text);
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        prop_assert_eq!(got, &Err(ErrorCode::InvalidJson), "{:?}", text);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------

/// Valid room names, the 128-byte boundary included.
fn room_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => string_regex(&format!("{ROOM_CHARS}{{1,16}}")).unwrap(),
        1 => string_regex(&format!("{ROOM_CHARS}{{120,128}}")).unwrap(),
        1 => select(vec!["test", "fuzz", "a", "@", "-", "..", "room:1@eu-west_2"])
            .prop_map(str::to_owned),
    ]
}

/// Room names that break the rule: empty, too long, or with a character
/// outside the set (Unicode letters and digits included).
fn bad_room_name() -> impl Strategy<Value = String> {
    let outsider = prop_oneof![
        select(vec![
            ' ', '/', '#', '%', '?', '+', '*', '\0', '\n', '"', 'é', '٣', 'Ω', '😀'
        ]),
        any::<char>(),
    ]
    .prop_filter("outside the room alphabet", |c| {
        !(c.is_ascii_alphanumeric() || "_-.:@".contains(*c))
    });
    prop_oneof![
        1 => Just(String::new()),
        1 => string_regex(&format!("{ROOM_CHARS}{{129,300}}")).unwrap(),
        4 => (
            string_regex(&format!("{ROOM_CHARS}{{0,8}}")).unwrap(),
            outsider,
            string_regex(&format!("{ROOM_CHARS}{{0,8}}")).unwrap(),
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        1 => (1000usize..3000).prop_map(|n| format!("{}/", "r".repeat(n))),
    ]
}

/// Non-empty Unicode text of at most `max` characters, the limit included.
fn text_within(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(any::<char>(), 1..=max.min(24)),
        1 => vec(any::<char>(), max..=max),
        1 => vec(select(vec!['é', '😀', 'a', '\u{0}', '"', '\\']), 1..=max),
    ]
    .prop_map(String::from_iter)
}

/// Any `ts`, the extremes included.
fn timestamp() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0),
        Just(u64::MAX),
        1_600_000_000_000u64..1_900_000_000_000
    ]
}

/// Every client message, valid for a decoder limit of `max` characters.
fn client_message(max: usize) -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        3 => (room_name(), text_within(max))
            .prop_map(|(room, text)| ClientMessage::ChatMessage { room, text }),
        1 => (room_name(), option::of(any::<String>()))
            .prop_map(|(room, since)| ClientMessage::RoomJoin { room, since }),
        1 => room_name().prop_map(|room| ClientMessage::RoomLeave { room }),
        1 => option::of(timestamp()).prop_map(|ts| ClientMessage::Ping { ts }),
        1 => option::of(timestamp()).prop_map(|ts| ClientMessage::Pong { ts }),
    ]
}

/// Any JSON value serde_json represents exactly: no floats but quarters.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i32..1_000_000).prop_map(|q| Value::from(f64::from(q) / 4.0)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((any::<String>(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL.to_vec())
}

fn error_message() -> impl Strategy<Value = ServerMessage> {
    (error_code(), any::<String>())
        .prop_map(|(code, message)| ServerMessage::Error { code, message })
}

/// A stream position, or none (history off).
fn placed() -> impl Strategy<Value = Option<StreamPosition>> {
    option::of(
        (
            prop_oneof![
                Just("broadcast".to_owned()),
                room_name().prop_map(|r| format!("room:{r}")),
                any::<String>().prop_map(|u| format!("user:{u}")),
            ],
            string_regex("[0-9a-z]{0,32}").unwrap(),
            any::<u64>(),
        )
            .prop_map(|(stream, epoch, offset)| StreamPosition {
                stream,
                epoch,
                offset,
            }),
    )
}

fn reason() -> impl Strategy<Value = Reason> {
    select(Reason::ALL.to_vec())
}

/// Every server message.
fn server_message() -> impl Strategy<Value = ServerMessage> {
    let user = || prop_oneof![3 => string_regex("[a-z0-9-]{1,12}").unwrap(), 1 => any::<String>()];
    prop_oneof![
        3 => (room_name(), user(), any::<String>(), any::<String>(), timestamp(), placed()).prop_map(
            |(room, user, text, id, ts, at)| ServerMessage::Delivery { room, user, text, id, ts, at }
        ),
        1 => (json_value(), placed()).prop_map(|(data, at)| ServerMessage::Broadcast { data, at }),
        1 => (any::<String>(), string_regex("[0-9a-z]{0,32}").unwrap(), any::<u64>(), option::of(any::<bool>()), option::of(reason()))
            .prop_map(|(stream, epoch, offset, recovered, reason)| ServerMessage::Position {
                stream, epoch, offset, recovered, reason,
            }),
        1 => (room_name(), vec(user(), 0..6))
            .prop_map(|(room, users)| ServerMessage::Joined { room, users }),
        1 => room_name().prop_map(|room| ServerMessage::Left { room }),
        1 => (room_name(), user(), timestamp())
            .prop_map(|(room, user, ts)| ServerMessage::PresenceJoin { room, user, ts }),
        1 => (room_name(), user(), timestamp())
            .prop_map(|(room, user, ts)| ServerMessage::PresenceLeave { room, user, ts }),
        2 => (json_value(), placed()).prop_map(|(data, at)| ServerMessage::Notification { data, at }),
        1 => timestamp().prop_map(|ts| ServerMessage::Ping { ts }),
        1 => timestamp().prop_map(|ts| ServerMessage::Pong { ts }),
        2 => error_message(),
        1 => (any::<String>(), option::of(any::<u64>())).prop_map(|(message, reconnect_after_ms)| {
            ServerMessage::Shutdown { message, reconnect_after_ms }
        }),
    ]
}

/// Number literals: integers of every size, fractions, integral floats and
/// literals beyond f64.
fn number() -> BoxedStrategy<J> {
    prop_oneof![
        3 => any::<i64>().prop_map(|n| J::Int(n.into())),
        2 => any::<u64>().prop_map(|n| J::Int(n.into())),
        1 => any::<i128>().prop_map(J::Int),
        1 => select(vec![u64::MAX as i128 + 1, -1, i64::MIN as i128 - 1]).prop_map(J::Int),
        2 => (any::<i32>(), 1u32..=999, any::<bool>()).prop_map(|(i, f, e)| {
            let (sign, i) = if i < 0 { ("-", -(i as i64)) } else { ("", i as i64) };
            // d.ddd with a non-zero fraction stays a fraction at any
            // negative power of ten.
            J::Frac(if e { format!("{sign}{i}.{f:03}e-2") } else { format!("{sign}{i}.{f:03}") })
        }),
        1 => select(vec!["0.5", "-0.25", "1e-1", "2.5E-3", "1e-400"]).prop_map(|s| J::Frac(s.into())),
        2 => (any::<u32>(), 0..5usize).prop_map(|(n, form)| {
            let text = match form {
                0 => format!("{n}.0"),
                1 => format!("{n}e0"),
                2 => format!("{n}0e-1"),
                3 => format!("{n}.000E+0"),
                _ => format!("-{n}.0"),
            };
            let value = if form == 4 { -i128::from(n) } else { i128::from(n) };
            J::IntegralFloat(value, text)
        }),
        1 => select(vec![
            "1e400".to_owned(),
            "-1e400".to_owned(),
            "1E309".to_owned(),
            "123.456e99999999999999999999".to_owned(),
            format!("1{}", "0".repeat(400)),
            format!("-{}", "9".repeat(400)),
        ])
        .prop_map(J::Huge),
    ]
    .boxed()
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => string_regex("[a-z. ]{0,12}").unwrap(),
        1 => select(vec!["", "\"", "\\", "\0", "/", "é", "😀", "\u{2028}", "}"]).prop_map(str::to_owned),
    ]
}

/// Object keys: the message keys and their near misses too.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_regex("[a-z]{1,6}").unwrap(),
        1 => any::<String>(),
        2 => select(vec![
            "type", "room", "text", "ts", "Type", "TYPE", "room ", "user", "data", "",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Keeps the first of each key: JSON objects should have unique names
/// (RFC 8259 §4), and the reference does not guess which duplicate wins.
fn unique(fields: Vec<(String, J)>) -> Vec<(String, J)> {
    let mut seen = HashSet::new();
    fields
        .into_iter()
        .filter(|(key, _)| seen.insert(key.clone()))
        .collect()
}

/// Any JSON value.
fn any_json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        2 => Just(J::Null),
        2 => any::<bool>().prop_map(J::Bool),
        6 => number(),
        6 => json_string().prop_map(J::Str),
        1 => prop_oneof![1usize..=8, 100usize..=140, Just(5000)].prop_map(J::Deep),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(J::Arr),
            vec((json_key(), inner), 0..5).prop_map(|fields| J::Obj(unique(fields))),
        ]
    })
    .boxed()
}

fn not_a_string() -> BoxedStrategy<J> {
    any_json()
        .prop_filter("not a string or null", |j| {
            !matches!(j, J::Str(_) | J::Null)
        })
        .boxed()
}

/// Values for `type`: the known names, near misses, long names, other types.
fn type_value() -> BoxedStrategy<J> {
    prop_oneof![
        6 => select(CLIENT_TYPES.to_vec()).prop_map(J::str),
        2 => select(vec![
            "chat.delivery", "Chat.message", "chat.message ", " chat.message", "chat_message",
            "chat", "ping", "system.error", "room.joined", "", "chat.message\0", "сhat.message",
        ])
        .prop_map(J::str),
        1 => json_string().prop_map(J::Str),
        1 => (1000usize..3000).prop_map(|n| J::Str("t".repeat(n))),
        1 => Just(J::Null),
        1 => not_a_string(),
    ]
    .boxed()
}

fn room_value() -> BoxedStrategy<J> {
    prop_oneof![
        5 => room_name().prop_map(J::Str),
        3 => bad_room_name().prop_map(J::Str),
        1 => Just(J::Null),
        1 => not_a_string(),
    ]
    .boxed()
}

/// Values for `text` around the limit of `max` characters.
fn text_value(max: usize) -> impl Strategy<Value = J> {
    let chars = prop_oneof![Just('a'), Just('é'), Just('😀'), any::<char>()];
    prop_oneof![
        4 => vec(chars.clone(), 0..=max + 3).prop_map(|c| J::Str(String::from_iter(c))),
        2 => (vec(chars, 1..=2), max..=max + 1)
            .prop_map(|(c, n)| J::Str(c.into_iter().cycle().take(n).collect())),
        1 => Just(J::str("")),
        1 => Just(J::Null),
        1 => not_a_string(),
    ]
}

fn ts_value() -> BoxedStrategy<J> {
    prop_oneof![
        6 => number(),
        1 => Just(J::Null),
        1 => json_string().prop_map(J::Str),
        1 => any::<bool>().prop_map(J::Bool),
        1 => vec(number(), 0..3).prop_map(J::Arr),
    ]
    .boxed()
}

/// An object shaped like a client message: each of `type`, `room`, `text`,
/// `ts` present or not, with a right or wrong value, plus random other keys,
/// in any order.
fn message_object(max: usize) -> BoxedStrategy<J> {
    (
        option::weighted(0.9, type_value()),
        option::weighted(0.8, room_value()),
        option::weighted(0.7, text_value(max)),
        option::weighted(0.4, ts_value()),
        vec((json_key(), any_json()), 0..3),
    )
        .prop_flat_map(|(kind, room, text, ts, extras)| {
            let known = [("type", kind), ("room", room), ("text", text), ("ts", ts)]
                .into_iter()
                .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v)));
            let fields = unique(known.chain(extras).collect());
            Just(fields).prop_shuffle().prop_map(J::Obj)
        })
        .boxed()
}

/// A valid client message as an object, possibly with other keys beside
/// its own, in any order.
fn valid_object(max: usize) -> BoxedStrategy<J> {
    (client_message(max), vec((json_key(), any_json()), 0..3))
        .prop_flat_map(|(message, extras)| {
            let kind = ("type".to_owned(), J::str(client_type(&message)));
            let own = match message {
                ClientMessage::ChatMessage { room, text } => vec![
                    kind,
                    ("room".into(), J::Str(room)),
                    ("text".into(), J::Str(text)),
                ],
                ClientMessage::RoomJoin { room, since } => [kind, ("room".into(), J::Str(room))]
                    .into_iter()
                    .chain(since.map(|since| ("since".to_owned(), J::Str(since))))
                    .collect(),
                ClientMessage::RoomLeave { room } => vec![kind, ("room".into(), J::Str(room))],
                ClientMessage::Ping { ts } | ClientMessage::Pong { ts } => [kind]
                    .into_iter()
                    .chain(ts.map(|ts| ("ts".to_owned(), J::Int(ts.into()))))
                    .collect(),
            };
            let fields = unique(own.into_iter().chain(extras).collect());
            Just(fields).prop_shuffle().prop_map(J::Obj)
        })
        .boxed()
}

/// Inputs for the decoder.
#[derive(Debug, Clone)]
enum Input {
    /// Valid JSON, spelled compactly (`None`) or with random escapes and
    /// whitespace.
    Json(J, Option<u64>),
    /// A valid object or array cut short: never JSON.
    Truncated(J, Option<u64>, Index),
    /// Valid JSON with one character inserted, deleted or replaced.
    Mutated(J, Option<u64>, Index, Option<char>),
    /// Any text.
    Raw(String),
}

impl Input {
    fn text(&self) -> String {
        match self {
            Input::Json(j, spelling) => to_text(j, *spelling),
            Input::Truncated(j, spelling, at) => {
                let text = to_text(j, *spelling);
                let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                text[..ends[at.index(ends.len())]].to_owned()
            }
            Input::Mutated(j, spelling, at, c) => {
                let mut chars: Vec<char> = to_text(j, *spelling).chars().collect();
                let i = at.index(chars.len() + 1);
                match c {
                    Some(c) if i < chars.len() && c.is_ascii_punctuation() => chars[i] = *c,
                    Some(c) => chars.insert(i, *c),
                    None if i < chars.len() => {
                        chars.remove(i);
                    }
                    None => {}
                }
                chars.into_iter().collect()
            }
            Input::Raw(text) => text.clone(),
        }
    }

    /// The answers allowed, when the reference knows them.
    fn allowed(&self, max: usize) -> Option<Vec<Outcome>> {
        match self {
            Input::Json(j, _) => Some(reference(j, max)),
            Input::Truncated(..) => Some(vec![Err(ErrorCode::InvalidJson)]),
            Input::Mutated(..) | Input::Raw(_) => None,
        }
    }
}

fn spelling() -> impl Strategy<Value = Option<u64>> {
    option::weighted(0.6, any::<u64>())
}

fn decoder_input(max: usize) -> BoxedStrategy<Input> {
    let container = prop_oneof![
        3 => message_object(max),
        1 => any_json().prop_filter("object or array", |j| matches!(j, J::Obj(_) | J::Arr(_))),
    ];
    let punctuation = select(vec![
        '{', '}', '[', ']', '"', ':', ',', '\\', '-', '.', 'e', '0',
    ]);
    prop_oneof![
        8 => (message_object(max), spelling()).prop_map(|(j, s)| Input::Json(j, s)),
        3 => (valid_object(max), spelling()).prop_map(|(j, s)| Input::Json(j, s)),
        2 => (any_json(), spelling()).prop_map(|(j, s)| Input::Json(j, s)),
        2 => (container, spelling(), any::<Index>()).prop_map(|(j, s, at)| Input::Truncated(j, s, at)),
        2 => (message_object(max), spelling(), any::<Index>(), option::of(prop_oneof![punctuation, any::<char>()]))
            .prop_map(|(j, s, at, c)| Input::Mutated(j, s, at, c)),
        1 => any::<String>().prop_map(Input::Raw),
        1 => vec(any::<u8>(), 0..64).prop_map(|b| Input::Raw(String::from_utf8_lossy(&b).into_owned())),
    ]
    .boxed()
}

/// The decoder's limit, and a strategy depending on it.
fn with_max<S: Strategy>(make: impl Fn(usize) -> S) -> impl Strategy<Value = (usize, S::Value)> {
    (1usize..=40).prop_flat_map(move |max| (Just(max), make(max)))
}

// ---------------------------------------------------------------------------
// 1. Round trips.
// ---------------------------------------------------------------------------

/// The payload of `frame` if it is exactly one unmasked final text frame.
fn text_frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let [0x81, b1, rest @ ..] = frame else {
        return None;
    };
    let (len, rest) = match *b1 {
        126 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            &rest[8..],
        ),
        n if n < 126 => (usize::from(n), rest),
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

proptest! {
    /// Every client message decodes from its own encoding, under the
    /// documented `type`.
    #[test]
    fn client_messages_round_trip((max, message) in with_max(client_message)) {
        let text = message.encode();
        prop_assert_eq!(ClientMessage::decode(&text, max), Ok(message.clone()));
        let json: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&json["type"], client_type(&message));
        // And the decoder's reference agrees.
        prop_assert_eq!(decode_checked(&text, max)?, Ok(message));
    }

    /// Every server message decodes from its own encoding, with the
    /// documented `type` and keys, and `frame()` is one text frame of it.
    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let text = message.encode();
        prop_assert_eq!(
            ServerMessage::decode(&text).map_err(|e| e.to_string()),
            Ok(message.clone())
        );
        let json: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&json["type"], server_type(&message));
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        prop_assert_eq!(keys, server_keys(&message));
        if let ServerMessage::Error { code, .. } = &message {
            prop_assert_eq!(&json["code"], documented_code(*code));
        }
        let frame = message.frame();
        prop_assert_eq!(text_frame_payload(&frame), Some(text.as_bytes()));
    }

    /// A published JSON payload reaches clients as that JSON value.
    #[test]
    fn notifications_carry_json_payloads_as_json(data in json_value()) {
        prop_assert_eq!(
            ServerMessage::notification(&data.to_string()),
            ServerMessage::Notification { data, at: None }
        );
    }

    /// A payload that is not JSON reaches clients as a string.
    #[test]
    fn notifications_carry_other_payloads_as_strings(text in any::<String>()) {
        // A letter JSON never starts with: not JSON, whatever follows.
        let payload = format!("x{text}");
        prop_assert_eq!(
            ServerMessage::notification(&payload),
            ServerMessage::Notification { data: Value::String(payload.clone()), at: None }
        );
    }
}

/// Samples `strategy` and returns the distinct names `name` gives.
fn names_sampled<S: Strategy>(
    strategy: S,
    name: fn(&S::Value) -> &'static str,
) -> BTreeSet<&'static str> {
    let mut runner = TestRunner::deterministic();
    (0..400)
        .map(|_| name(&strategy.new_tree(&mut runner).unwrap().current()))
        .collect()
}

/// The strategies generate every variant (their names are matched
/// exhaustively in `client_type` and `server_type`).
#[test]
fn strategies_cover_every_variant() {
    assert_eq!(
        names_sampled(client_message(16), client_type),
        BTreeSet::from(CLIENT_TYPES)
    );
    assert_eq!(
        names_sampled(server_message(), server_type),
        BTreeSet::from(SERVER_TYPES)
    );
    let codes: BTreeSet<&str> = names_sampled(error_message(), |m| match m {
        ServerMessage::Error { code, .. } => documented_code(*code),
        _ => unreachable!(),
    });
    assert_eq!(codes, ErrorCode::ALL.map(documented_code).into());
}

/// Error codes carry their documented wire names.
#[test]
fn error_codes_have_their_documented_names() {
    for code in ErrorCode::ALL {
        assert_eq!(code.as_str(), documented_code(code));
        assert_eq!(serde_json::to_value(code).unwrap(), documented_code(code));
    }
    let distinct: HashSet<_> = ErrorCode::ALL.iter().collect();
    assert_eq!(distinct.len(), ErrorCode::ALL.len());
}

// ---------------------------------------------------------------------------
// 2. The decoder against the reference.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: decoder_cases(),
        ..ProptestConfig::default()
    })]

    /// Any input from the grammar, or any text at all: no panic, and an
    /// answer the reference allows.
    #[test]
    fn the_decoder_answers_as_documented((max, input) in with_max(decoder_input)) {
        let text = input.text();
        let got = decode_checked(&text, max)?;
        check_shape(&text, &got)?;
        if let Some(allowed) = input.allowed(max) {
            prop_assert!(
                allowed.contains(&got),
                "{:?} (max {}): got {:?}, allowed {:?}",
                text, max, got, allowed
            );
        }
    }

    /// Any bytes (invalid UTF-8 replaced) never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), max in 1usize..=4096) {
        let text = String::from_utf8_lossy(&bytes);
        let got = decode_checked(&text, max)?;
        check_shape(&text, &got)?;
    }

    /// Text that is not valid JSON is `invalid_json`: a valid message cut
    /// short, or text that does not start like an object.
    #[test]
    fn what_is_not_json_is_invalid_json(
        (max, message) in with_max(client_message),
        at in any::<Index>(),
        junk in any::<String>(),
    ) {
        let text = message.encode();
        let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let cut = &text[..ends[at.index(ends.len())]];
        prop_assert_eq!(decode_checked(cut, max)?, Err(ErrorCode::InvalidJson), "{:?}", cut);
        let junk = format!("x{junk}");
        prop_assert_eq!(decode_checked(&junk, max)?, Err(ErrorCode::InvalidJson), "{:?}", junk);
    }

    /// A message of a type that needs a room, without one: `missing_field`.
    #[test]
    fn a_missing_room_is_missing_field(
        (max, (kind, text, extras)) in with_max(|max| (
            select(vec!["chat.message", "room.join", "room.leave"]),
            text_within(max),
            vec((json_key(), any_json()), 0..3),
        )),
        spelling in spelling(),
    ) {
        let fields = [("type".to_owned(), J::str(kind)), ("text".to_owned(), J::Str(text))]
            .into_iter()
            .chain(extras.into_iter().filter(|(k, _)| k != "room"));
        let object = J::Obj(unique(fields.collect()));
        let text = to_text(&object, spelling);
        let mut allowed = vec![Err(ErrorCode::MissingField)];
        if object.beyond_limits() {
            allowed.push(Err(ErrorCode::InvalidJson));
        }
        let got = decode_checked(&text, max)?;
        prop_assert!(allowed.contains(&got), "{:?}: got {:?}", text, got);
    }

    /// A `type` no client message has: `unknown_type`.
    #[test]
    fn an_unknown_type_is_unknown_type(
        kind in prop_oneof![json_string(), string_regex("[a-z]{1,8}\\.[a-z]{1,8}").unwrap()]
            .prop_filter("unknown", |k| !CLIENT_TYPES.contains(&k.as_str())),
        room in room_name(),
        spelling in spelling(),
    ) {
        let object = J::Obj(vec![
            ("type".into(), J::Str(kind)),
            ("room".into(), J::Str(room)),
            ("text".into(), J::str("hi")),
        ]);
        let text = to_text(&object, spelling);
        prop_assert_eq!(decode_checked(&text, 64)?, Err(ErrorCode::UnknownType), "{:?}", text);
    }

    /// A `chat.message` whose text has more than `max` characters (not
    /// bytes): `text_too_long`; exactly `max` is fine.
    #[test]
    fn a_long_text_is_text_too_long(
        max in 1usize..=64,
        over in 1usize..=20,
        chars in vec(prop_oneof![Just('a'), Just('é'), Just('😀'), any::<char>()], 1..=3),
        room in room_name(),
        spelling in spelling(),
    ) {
        let text_of = |n: usize| -> String { chars.iter().cycle().take(n).collect() };
        let message = |text: String| J::Obj(vec![
            ("type".into(), J::str("chat.message")),
            ("room".into(), J::Str(room.clone())),
            ("text".into(), J::Str(text)),
        ]);
        let long = to_text(&message(text_of(max + over)), spelling);
        prop_assert_eq!(decode_checked(&long, max)?, Err(ErrorCode::TextTooLong), "{:?}", long);
        let fits = to_text(&message(text_of(max)), spelling);
        prop_assert_eq!(
            decode_checked(&fits, max)?,
            Ok(ClientMessage::ChatMessage { room: room.clone(), text: text_of(max) })
        );
    }

    /// A room name that breaks the rule: `invalid_room`, in every message
    /// that names a room.
    #[test]
    fn a_bad_room_is_invalid_room(
        kind in select(vec!["chat.message", "room.join", "room.leave"]),
        room in bad_room_name(),
        spelling in spelling(),
    ) {
        prop_assert!(!spec_room(&room), "generator bug: {:?}", room);
        let object = J::Obj(vec![
            ("type".into(), J::str(kind)),
            ("room".into(), J::Str(room)),
            ("text".into(), J::str("hi")),
        ]);
        let text = to_text(&object, spelling);
        prop_assert_eq!(decode_checked(&text, 64)?, Err(ErrorCode::InvalidRoom), "{:?}", text);
    }
}

fn decoder_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

/// The reference itself, on the examples the protocol description gives.
#[test]
fn the_reference_reads_the_documented_examples() {
    use ErrorCode::*;
    let obj = |fields: &[(&str, J)]| {
        J::Obj(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    };
    let cases = [
        (
            obj(&[
                ("type", J::str("chat.message")),
                ("room", J::str("test")),
                ("text", J::str("hi")),
            ]),
            vec![Ok(ClientMessage::ChatMessage {
                room: "test".into(),
                text: "hi".into(),
            })],
        ),
        (
            obj(&[("type", J::str("system.ping")), ("ts", J::Int(123))]),
            vec![Ok(ClientMessage::Ping { ts: Some(123) })],
        ),
        (
            obj(&[("type", J::str("system.ping")), ("ts", J::Int(-1))]),
            vec![Err(InvalidField)],
        ),
        (J::Arr(vec![J::Int(1)]), vec![Err(InvalidJson)]),
        (obj(&[("room", J::str("a"))]), vec![Err(MissingField)]),
        (obj(&[("type", J::Int(7))]), vec![Err(InvalidField)]),
        (
            obj(&[("type", J::str("chat.shout"))]),
            vec![Err(UnknownType)],
        ),
        (
            obj(&[
                ("type", J::str("chat.message")),
                ("room", J::str("a")),
                ("text", J::str("")),
            ]),
            vec![Err(InvalidField)],
        ),
        (
            obj(&[("type", J::str("room.join")), ("room", J::str("a b"))]),
            vec![Err(InvalidRoom)],
        ),
    ];
    for (j, want) in cases {
        assert_eq!(reference(&j, 10), want, "{}", to_text(&j, None));
        let got = ClientMessage::decode(&to_text(&j, None), 10).map_err(|e| e.code);
        assert!(want.contains(&got), "{}: {got:?}", to_text(&j, None));
    }
    // The renderer's escapes are JSON: check it against serde_json once.
    let tricky = "\"\\/\u{0}\u{1f}\n\t\u{8}\u{c}é😀\u{2028}";
    for seed in 0..64 {
        let text = to_text(&J::str(tricky), Some(seed));
        assert_eq!(
            serde_json::from_str::<String>(&text).unwrap(),
            tricky,
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. A live server: a fuzzing room client beside a bystander.
// ---------------------------------------------------------------------------

const LIVE_MAX_TEXT: usize = 64;
const FUZZ: &str = "fuzz";
/// The rooms the fuzzer moves between; `fuzz` is where it starts.
const ROOMS: [&str; 5] = [FUZZ, "a", "b.c", "x:y@z", "r-1_2"];
/// Invalid messages a room client may send in a burst (the error budget).
const ERROR_BURST: u32 = 10;
/// Rooms one connection may be in.
const MAX_ROOMS: usize = 64;
const PONG: u8 = 0xA;
/// `1008 too many invalid messages`.
const ABUSE_CLOSE: (u16, &str) = (1008, "too many invalid messages");

/// One message of the JSON protocol the fuzzer sends.
#[derive(Debug, Clone)]
enum Msg {
    Chat {
        room: usize,
        text: String,
    },
    Join(usize),
    Leave(usize),
    Ping(Option<u64>),
    Pong(Option<u64>),
    /// An invalid message and the code it must get.
    Bad {
        text: String,
        code: ErrorCode,
    },
}

impl Msg {
    fn text(&self) -> String {
        match self {
            Msg::Chat { room, text } => {
                json!({"type": "chat.message", "room": ROOMS[*room], "text": text}).to_string()
            }
            Msg::Join(room) => json!({"type": "room.join", "room": ROOMS[*room]}).to_string(),
            Msg::Leave(room) => json!({"type": "room.leave", "room": ROOMS[*room]}).to_string(),
            Msg::Ping(None) => json!({"type": "system.ping"}).to_string(),
            Msg::Ping(Some(ts)) => json!({"type": "system.ping", "ts": ts}).to_string(),
            Msg::Pong(None) => json!({"type": "system.pong"}).to_string(),
            Msg::Pong(Some(ts)) => json!({"type": "system.pong", "ts": ts}).to_string(),
            Msg::Bad { text, .. } => text.clone(),
        }
    }
}

/// One step of the fuzzing client.
#[derive(Debug, Clone)]
enum Step {
    /// A message in one frame, or cut in fragments at byte offsets `cuts`
    /// (possibly inside a character), with a ping after fragment `ping.0`.
    Send {
        msg: Msg,
        cuts: Option<Vec<usize>>,
        ping: Option<(usize, Vec<u8>)>,
    },
    /// A WebSocket ping frame.
    WsPing(Vec<u8>),
    /// An unsolicited WebSocket pong frame: no answer.
    WsPong(Vec<u8>),
    /// Joins new rooms up to the limit of 64, then one more.
    Crowd,
}

/// Invalid messages, each with the one fault its code names.
fn bad_message() -> impl Strategy<Value = Msg> {
    use ErrorCode::*;
    let fixed = |code: ErrorCode, texts: Vec<&'static str>| {
        select(texts).prop_map(move |t| Msg::Bad {
            text: t.to_owned(),
            code,
        })
    };
    let shout = |code: ErrorCode, texts: &'static [&'static str]| fixed(code, texts.to_vec());
    prop_oneof![
        2 => any::<String>().prop_map(|s| Msg::Bad { text: format!("not json {s}"), code: InvalidJson }),
        2 => (client_message(LIVE_MAX_TEXT), any::<Index>()).prop_map(|(m, at)| {
            let text = m.encode();
            let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            Msg::Bad { text: text[..ends[at.index(ends.len())]].to_owned(), code: InvalidJson }
        }),
        1 => shout(InvalidJson, &["", "[]", "1", "\"chat.message\"", "null", "true", "[{\"type\":\"system.ping\"}]"]),
        2 => json_string()
            .prop_filter("unknown", |k| !CLIENT_TYPES.contains(&k.as_str()))
            .prop_map(|kind| Msg::Bad {
                text: json!({"type": kind, "room": FUZZ, "text": "hi"}).to_string(),
                code: UnknownType,
            }),
        2 => shout(MissingField, &[
            r#"{"type":"chat.message","text":"hi"}"#,
            r#"{"type":"chat.message","room":"fuzz"}"#,
            r#"{"type":"room.join"}"#,
            r#"{"type":"room.leave","text":"x"}"#,
            r#"{"room":"fuzz","text":"hi"}"#,
            r#"{}"#,
        ]),
        2 => shout(InvalidField, &[
            r#"{"type":"chat.message","room":"fuzz","text":""}"#,
            r#"{"type":"chat.message","room":"fuzz","text":5}"#,
            r#"{"type":"chat.message","room":7,"text":"hi"}"#,
            r#"{"type":"room.join","room":["fuzz"]}"#,
            r#"{"type":"system.ping","ts":-1}"#,
            r#"{"type":"system.ping","ts":"now"}"#,
            r#"{"type":"system.pong","ts":1.5}"#,
            r#"{"type":7}"#,
        ]),
        2 => vec(any::<char>(), LIVE_MAX_TEXT + 1..=LIVE_MAX_TEXT + 20).prop_map(|c| Msg::Bad {
            text: json!({"type": "chat.message", "room": FUZZ, "text": String::from_iter(c)}).to_string(),
            code: TextTooLong,
        }),
        2 => (select(vec!["chat.message", "room.join", "room.leave"]), bad_room_name()).prop_map(
            |(kind, room)| Msg::Bad {
                text: json!({"type": kind, "room": room, "text": "hi"}).to_string(),
                code: InvalidRoom,
            }
        ),
    ]
}

fn live_msg() -> impl Strategy<Value = Msg> {
    let any_room = || 0..ROOMS.len();
    prop_oneof![
        6 => (prop_oneof![Just(0), any_room()], text_within(LIVE_MAX_TEXT))
            .prop_map(|(room, text)| Msg::Chat { room, text }),
        2 => any_room().prop_map(Msg::Join),
        2 => any_room().prop_map(Msg::Leave),
        1 => option::of(timestamp()).prop_map(Msg::Ping),
        1 => option::of(timestamp()).prop_map(Msg::Pong),
        3 => bad_message(),
    ]
}

fn live_step() -> impl Strategy<Value = Step> {
    let fragments = (
        vec(any::<Index>(), 1..=3),
        option::of((any::<Index>(), vec(any::<u8>(), 0..=125))),
    );
    let send = (live_msg(), option::weighted(0.3, fragments)).prop_map(|(msg, how)| match how {
        None => Step::Send {
            msg,
            cuts: None,
            ping: None,
        },
        Some((indexes, ping)) => {
            let len = msg.text().len();
            let mut cuts: Vec<usize> = indexes.iter().map(|i| i.index(len + 1)).collect();
            cuts.sort_unstable();
            let ping = ping.map(|(i, p)| (i.index(cuts.len()), p));
            Step::Send {
                msg,
                cuts: Some(cuts),
                ping,
            }
        }
    });
    prop_oneof![
        8 => send,
        1 => vec(any::<u8>(), 0..=125).prop_map(Step::WsPing),
        1 => vec(any::<u8>(), 0..=125).prop_map(Step::WsPong),
        1 => Just(Step::Crowd),
    ]
}

/// A case: steps, maybe a flood of invalid messages past the error budget,
/// maybe a close (code, reason) at the end.
type LiveCase = (Vec<Step>, Option<Vec<Msg>>, Option<(u16, String)>);

fn live_case() -> impl Strategy<Value = LiveCase> {
    let flood = vec(
        bad_message(),
        ERROR_BURST as usize + 1..=ERROR_BURST as usize + 3,
    );
    let close = (
        select(vec![1000u16, 1001, 3000, 4000, 4999]),
        string_regex("[a-z ]{0,12}").unwrap(),
    );
    (
        vec(live_step(), 1..24),
        option::weighted(0.2, flood),
        option::weighted(0.4, close),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: live_cases(32),
        // Each shrink step runs a server; a hung step costs a 5 s timeout.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]

    /// The fuzzer gets the documented answer to every message, in order
    /// (deliveries, rosters, `room.left`, pongs, exactly one `system.error`
    /// per bad message, the 1008 close past the error budget); the bystander
    /// gets exactly the room's traffic: each delivery the fuzzer caused, with
    /// the same id, the fuzzer's presence, and afterwards a control
    /// delivery; and the server still serves a fresh client.
    #[test]
    fn a_fuzzing_room_client_gets_documented_answers_and_harms_nobody(
        (steps, flood, close) in live_case(),
    ) {
        block_on(live(steps, flood, close))?;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the bystander must receive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Delivery {
        user: String,
        text: String,
        id: String,
    },
    PresenceJoin(String),
    PresenceLeave(String),
}

/// The model of the fuzzer's connection.
struct Model {
    open: bool,
    /// The rooms the fuzzer is in.
    rooms: BTreeSet<String>,
    /// Invalid messages so far (the error budget).
    errors: u32,
    /// Before the fuzzer connected: the budget cannot have refilled more
    /// than the time since.
    start: Instant,
    /// When the case began, for `ts` checks (Unix ms).
    start_ms: u64,
    bystander: Vec<Seen>,
    ids: HashSet<String>,
}

impl Model {
    fn in_fuzz(&self) -> bool {
        self.rooms.contains(FUZZ)
    }
}

async fn live(
    steps: Vec<Step>,
    flood: Option<Vec<Msg>>,
    close: Option<(u16, String)>,
) -> Result<(), TestCaseError> {
    // History off: this fuzzer checks the dialect's answers frame by frame
    // (history's own model is in tests/history_props.rs).
    let server = TestServer::start(Config {
        heartbeat_interval: Duration::ZERO,
        max_text_length: LIVE_MAX_TEXT,
        rate_limit: 0,
        ..quiet_config()
    })
    .await;
    let (mut bystander, roster) = join_room(server.addr, FUZZ, "bystander").await;
    prop_assert_eq!(roster, ["bystander"]);

    let mut model = Model {
        open: true,
        rooms: BTreeSet::from([FUZZ.to_owned()]),
        errors: 0,
        start: Instant::now(),
        start_ms: unix_ms(),
        bystander: vec![Seen::PresenceJoin("fuzzer".into())],
        ids: HashSet::new(),
    };
    let mut fuzzer = RawWs::handshake(server.addr, &format!("/ws/rooms/{FUZZ}?user=fuzzer")).await;
    expect_message(
        &mut fuzzer,
        ServerMessage::Joined {
            room: FUZZ.into(),
            users: vec!["bystander".into(), "fuzzer".into()],
        },
    )
    .await?;

    let flood = flood.into_iter().flatten().map(|msg| Step::Send {
        msg,
        cuts: None,
        ping: None,
    });
    for (n, step) in steps.iter().cloned().chain(flood).enumerate() {
        if !model.open {
            break;
        }
        perform(&mut fuzzer, &mut model, &step)
            .await
            .map_err(|e| at_step(e, n, &step))?;
    }
    if model.open
        && let Some((code, reason)) = &close
    {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        fuzzer.send_frame(true, op::CLOSE, &payload).await;
        let got = fuzzer.read_frame().await;
        prop_assert!(
            matches!(&got, Some((op::CLOSE, p)) if p.get(..2) == Some(&code.to_be_bytes()[..])),
            "expected the echo of close {}, got {}",
            code,
            show(got.as_ref())
        );
        ended(&mut fuzzer, &mut model).await?;
    }

    // The server still serves: a fresh client joins and sees the roster ...
    let (mut fresh, roster) = join_room(server.addr, FUZZ, "fresh").await;
    let fuzzer_here = model.open && model.in_fuzz();
    let mut want: Vec<&str> = vec!["bystander", "fresh"];
    if fuzzer_here {
        want.push("fuzzer");
    }
    prop_assert_eq!(roster, want);
    model.bystander.push(Seen::PresenceJoin("fresh".into()));
    // ... and a publication reaches every member.
    let marker = "control after the fuzzer";
    let body = json!({"text": marker, "user": "control"}).to_string();
    let reply = http(
        server.addr,
        Method::POST,
        &format!("/rooms/{FUZZ}/publish"),
        &body,
    )
    .await;
    prop_assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = reply.json();
    prop_assert_eq!(
        &reply["local_recipients"],
        &json!(if fuzzer_here { 3 } else { 2 })
    );
    let id = reply["id"].as_str().unwrap_or_default().to_owned();
    model.bystander.push(Seen::Delivery {
        user: "control".into(),
        text: marker.into(),
        id: id.clone(),
    });

    // The bystander got exactly the room's traffic, in order, and the
    // control delivery last.
    for (n, want) in model.bystander.iter().enumerate() {
        let got = seen(next_json(&mut bystander).await);
        prop_assert_eq!(got.as_ref(), Some(want), "bystander's message {}", n);
    }
    let got = seen(next_json(&mut fresh).await);
    prop_assert_eq!(
        got,
        Some(Seen::Delivery {
            user: "control".into(),
            text: marker.into(),
            id: id.clone()
        }),
        "fresh client"
    );
    if model.open {
        if fuzzer_here {
            let got = fuzzer_message(&mut fuzzer).await?;
            prop_assert_eq!(seen(got), Some(Seen::PresenceJoin("fresh".into())));
            let got = fuzzer_message(&mut fuzzer).await?;
            prop_assert_eq!(
                seen(got),
                Some(Seen::Delivery {
                    user: "control".into(),
                    text: marker.into(),
                    id
                })
            );
        }
        // Nothing else is queued for the fuzzer.
        probe(&mut fuzzer, b"last").await?;
    }
    Ok(())
}

fn at_step(e: TestCaseError, n: usize, step: &Step) -> TestCaseError {
    match e {
        TestCaseError::Fail(why) => {
            TestCaseError::fail(format!("step {n} ({step:?}): {}", why.message()))
        }
        other => other,
    }
}

/// A room message as the bystander's record of it.
fn seen(message: ServerMessage) -> Option<Seen> {
    match message {
        ServerMessage::Delivery {
            room,
            user,
            text,
            id,
            ..
        } if room == FUZZ => Some(Seen::Delivery { user, text, id }),
        ServerMessage::PresenceJoin { room, user, .. } if room == FUZZ => {
            Some(Seen::PresenceJoin(user))
        }
        ServerMessage::PresenceLeave { room, user, .. } if room == FUZZ => {
            Some(Seen::PresenceLeave(user))
        }
        _ => None,
    }
}

/// Performs one step and checks the fuzzer's answers.
async fn perform(fz: &mut RawWs, model: &mut Model, step: &Step) -> Result<(), TestCaseError> {
    match step {
        Step::WsPing(payload) => {
            fz.send_frame(true, op::PING, payload).await;
            expect_frame(fz, PONG, payload).await
        }
        Step::WsPong(payload) => {
            fz.send_frame(true, PONG, payload).await;
            Ok(())
        }
        Step::Crowd => {
            for room in (0..).map(|i| format!("crowd-{i}")) {
                if model.rooms.len() >= MAX_ROOMS {
                    break;
                }
                if model.rooms.contains(&room) {
                    continue;
                }
                let join = json!({"type": "room.join", "room": room}).to_string();
                fz.send_frame(true, op::TEXT, join.as_bytes()).await;
                let users = vec!["fuzzer".to_owned()];
                expect_message(
                    fz,
                    ServerMessage::Joined {
                        room: room.clone(),
                        users,
                    },
                )
                .await?;
                model.rooms.insert(room);
            }
            let join = json!({"type": "room.join", "room": "crowd-extra"}).to_string();
            fz.send_frame(true, op::TEXT, join.as_bytes()).await;
            refused(fz, model, ErrorCode::TooManyRooms).await
        }
        Step::Send { msg, cuts, ping } => {
            let text = msg.text();
            let sent_ms = unix_ms();
            match cuts {
                None => fz.send_frame(true, op::TEXT, text.as_bytes()).await,
                Some(cuts) => {
                    fz.send_fragmented(text.as_bytes(), cuts, ping.as_ref())
                        .await;
                    // A ping between fragments is answered at once.
                    if let Some((_, payload)) = ping {
                        expect_frame(fz, PONG, payload).await?;
                    }
                }
            }
            answered(fz, model, msg, sent_ms).await
        }
    }
}

/// Checks the answer to `msg` and updates the model.
async fn answered(
    fz: &mut RawWs,
    model: &mut Model,
    msg: &Msg,
    sent_ms: u64,
) -> Result<(), TestCaseError> {
    match msg {
        Msg::Chat { room, text } if model.rooms.contains(ROOMS[*room]) => {
            let got = fuzzer_message(fz).await?;
            let ServerMessage::Delivery {
                room: r,
                user,
                text: t,
                id,
                ts,
                ..
            } = got
            else {
                return Err(TestCaseError::fail(format!(
                    "expected chat.delivery, got {got:?}"
                )));
            };
            prop_assert_eq!(
                (r.as_str(), user.as_str(), &t),
                (ROOMS[*room], "fuzzer", text)
            );
            prop_assert!(
                !id.is_empty() && model.ids.insert(id.clone()),
                "id {:?} reused",
                id
            );
            prop_assert!(
                (model.start_ms..=unix_ms() + 1000).contains(&ts),
                "delivery ts {} outside the case",
                ts
            );
            if *room == 0 {
                model.bystander.push(Seen::Delivery {
                    user: "fuzzer".into(),
                    text: text.clone(),
                    id,
                });
            }
            Ok(())
        }
        Msg::Chat { .. } => refused(fz, model, ErrorCode::NotInRoom).await,
        Msg::Join(room)
            if !model.rooms.contains(ROOMS[*room]) && model.rooms.len() >= MAX_ROOMS =>
        {
            refused(fz, model, ErrorCode::TooManyRooms).await
        }
        Msg::Join(room) => {
            let mut users = vec!["fuzzer".to_owned()];
            if *room == 0 {
                users.insert(0, "bystander".into());
            }
            expect_message(
                fz,
                ServerMessage::Joined {
                    room: ROOMS[*room].into(),
                    users,
                },
            )
            .await?;
            if model.rooms.insert(ROOMS[*room].to_owned()) && *room == 0 {
                model.bystander.push(Seen::PresenceJoin("fuzzer".into()));
            }
            Ok(())
        }
        Msg::Leave(room) if model.rooms.contains(ROOMS[*room]) => {
            expect_message(
                fz,
                ServerMessage::Left {
                    room: ROOMS[*room].into(),
                },
            )
            .await?;
            model.rooms.remove(ROOMS[*room]);
            if *room == 0 {
                model.bystander.push(Seen::PresenceLeave("fuzzer".into()));
            }
            Ok(())
        }
        Msg::Leave(_) => refused(fz, model, ErrorCode::NotInRoom).await,
        Msg::Ping(Some(ts)) => expect_message(fz, ServerMessage::Pong { ts: *ts }).await,
        Msg::Ping(None) => match fuzzer_message(fz).await? {
            ServerMessage::Pong { ts } => {
                prop_assert!(
                    (sent_ms.saturating_sub(1000)..=unix_ms() + 1000).contains(&ts),
                    "pong ts {} is not the server's time",
                    ts
                );
                Ok(())
            }
            other => Err(TestCaseError::fail(format!(
                "expected system.pong, got {other:?}"
            ))),
        },
        // No answer; the next read would show one.
        Msg::Pong(_) => Ok(()),
        Msg::Bad { code, .. } => refused(fz, model, *code).await,
    }
}

/// An invalid message: one `system.error` with `code` while the error budget
/// lasts (10); past it, the server may close with 1008 instead, and must
/// when it cannot have earned a token back (one per second).
async fn refused(fz: &mut RawWs, model: &mut Model, code: ErrorCode) -> Result<(), TestCaseError> {
    model.errors += 1;
    let k = model.errors;
    let got = fz.read_frame().await;
    match &got {
        Some((op::TEXT, payload)) => {
            match ServerMessage::decode(&String::from_utf8_lossy(payload)) {
                Ok(ServerMessage::Error { code: c, message }) if c == code => {
                    prop_assert!(!message.is_empty(), "{:?} without a message", code);
                }
                other => {
                    return Err(TestCaseError::fail(format!(
                        "expected system.error {}, got {other:?}",
                        code.as_str()
                    )));
                }
            }
        }
        Some((op::CLOSE, payload)) if k > ERROR_BURST && is_abuse_close(payload) => {
            return closed_by_server(fz, model).await;
        }
        _ => {
            return Err(TestCaseError::fail(format!(
                "invalid message {k}: expected system.error {}, got {}",
                code.as_str(),
                show(got.as_ref())
            )));
        }
    }
    if k <= ERROR_BURST {
        return Ok(());
    }
    // Past the burst: did the server close after the error? A ping tells.
    let must_close = model.start.elapsed().as_secs_f64() < f64::from(k - ERROR_BURST);
    let marker = format!("after invalid message {k}");
    fz.send_frame(true, op::PING, marker.as_bytes()).await;
    let got = fz.read_frame().await;
    match &got {
        Some((PONG, payload)) if payload == marker.as_bytes() => {
            prop_assert!(
                !must_close,
                "invalid message {} within {:?} of connecting, and no 1008",
                k,
                model.start.elapsed()
            );
            Ok(())
        }
        Some((op::CLOSE, payload)) if is_abuse_close(payload) => closed_by_server(fz, model).await,
        _ => Err(TestCaseError::fail(format!(
            "after invalid message {k}: expected a pong or close 1008, got {}",
            show(got.as_ref())
        ))),
    }
}

fn is_abuse_close(payload: &[u8]) -> bool {
    let (code, reason) = ABUSE_CLOSE;
    payload.get(..2) == Some(&code.to_be_bytes()[..]) && &payload[2..] == reason.as_bytes()
}

/// The server closed: answer as a client should, then the connection ends.
async fn closed_by_server(fz: &mut RawWs, model: &mut Model) -> Result<(), TestCaseError> {
    fz.send_frame(true, op::CLOSE, &ABUSE_CLOSE.0.to_be_bytes())
        .await;
    ended(fz, model).await
}

/// The connection is over: nothing more arrives, and the fuzzer left its
/// rooms (the bystander hears of it).
async fn ended(fz: &mut RawWs, model: &mut Model) -> Result<(), TestCaseError> {
    let after = fz.read_frame().await;
    prop_assert!(after.is_none(), "{} after the close", show(after.as_ref()));
    if model.in_fuzz() {
        model.bystander.push(Seen::PresenceLeave("fuzzer".into()));
    }
    model.open = false;
    model.rooms.clear();
    Ok(())
}

/// The fuzzer's next frame is exactly `(opcode, payload)`.
/// The fuzzer's next frame is a JSON-protocol text message.
async fn fuzzer_message(fz: &mut RawWs) -> Result<ServerMessage, TestCaseError> {
    let got = fz.read_frame().await;
    if let Some((op::TEXT, payload)) = &got
        && let Ok(text) = std::str::from_utf8(payload)
        && let Ok(message) = ServerMessage::decode(text)
    {
        return Ok(message);
    }
    Err(TestCaseError::fail(format!(
        "fuzzer expected a server message, got {}",
        show(got.as_ref())
    )))
}

async fn expect_message(fz: &mut RawWs, want: ServerMessage) -> Result<(), TestCaseError> {
    let got = fuzzer_message(fz).await?;
    prop_assert_eq!(got, want);
    Ok(())
}

/// A ping is answered next: nothing else was queued before it.
async fn probe(fz: &mut RawWs, payload: &[u8]) -> Result<(), TestCaseError> {
    fz.send_frame(true, op::PING, payload).await;
    expect_frame(fz, PONG, payload).await
}
