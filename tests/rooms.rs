//! Rooms and the typed JSON protocol on one instance (embedded broker), with
//! real WebSocket clients over real sockets: deliveries, joins and leaves,
//! every error code a client can provoke (each keeping the connection), the
//! abuse limit, pings and heartbeats, presence, the HTTP side (publish,
//! presence, API key), tokens, the separation from the plain-text stream,
//! the drain, bad frames, the protocol fixtures in `fixtures/messages/`, and
//! concurrent joins and leaves on a multi-threaded server.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use wsnotify::Config;
use wsnotify::limits::MAX_ROOM_NAME;
use wsnotify::limits::MAX_ROOMS_PER_CONNECTION;
use wsnotify::protocol::json::{ClientMessage, ErrorCode, ServerMessage, now_ms};
use wsnotify::protocol::text::SHUTDOWN_NOTICE;

// ---------------------------------------------------------------- helpers

/// Reads `room.joined` for `room` with exactly `users`.
async fn expect_joined(ws: &mut Ws, room: &str, users: &[&str]) {
    assert_eq!(
        next_json(ws).await,
        ServerMessage::Joined {
            room: room.into(),
            users: users.iter().map(|u| u.to_string()).collect(),
        }
    );
}

async fn expect_left(ws: &mut Ws, room: &str) {
    assert_eq!(
        next_json(ws).await,
        ServerMessage::Left { room: room.into() }
    );
}

async fn expect_presence_join(ws: &mut Ws, room: &str, user: &str) {
    match next_json(ws).await {
        ServerMessage::PresenceJoin {
            room: r,
            user: u,
            ts,
        } => {
            assert_eq!((r.as_str(), u.as_str()), (room, user));
            assert_recent(ts);
        }
        other => panic!("expected presence.join of {user} in {room}, got {other:?}"),
    }
}

async fn expect_presence_leave(ws: &mut Ws, room: &str, user: &str) {
    match next_json(ws).await {
        ServerMessage::PresenceLeave {
            room: r,
            user: u,
            ts,
        } => {
            assert_eq!((r.as_str(), u.as_str()), (room, user));
            assert_recent(ts);
        }
        other => panic!("expected presence.leave of {user} in {room}, got {other:?}"),
    }
}

/// The next server message, raw and decoded, skipping `system.ping` heartbeats.
async fn next_raw(ws: &mut Ws) -> (Value, ServerMessage) {
    loop {
        let text = next_text(ws).await;
        let message = ServerMessage::decode(&text)
            .unwrap_or_else(|err| panic!("not a server message ({err}): {text}"));
        if !matches!(message, ServerMessage::Ping { .. }) {
            return (serde_json::from_str(&text).unwrap(), message);
        }
    }
}

/// Reads a `system.error` with `code` and a non-empty message; returns the message.
async fn expect_error(ws: &mut Ws, code: ErrorCode) -> String {
    let (value, message) = next_raw(ws).await;
    assert_eq!(keys(&value), ["code", "message", "type"], "{value}");
    match message {
        ServerMessage::Error { code: got, message } => {
            assert_eq!(got, code, "message: {message}");
            assert!(!message.is_empty(), "{code:?} without a message");
            message
        }
        other => panic!("expected system.error {code:?}, got {other:?}"),
    }
}

/// Sends `text` as is and expects `system.error` with `code`; returns its message.
async fn refused(ws: &mut Ws, text: &str, code: ErrorCode) -> String {
    send(ws, text).await;
    expect_error(ws, code).await
}

/// Proves the connection is open and in `room`: a chat line comes back.
async fn still_works(ws: &mut Ws, room: &str, user: &str) {
    send_json(ws, &chat(room, "still here")).await;
    expect_delivery(ws, room, user, "still here").await;
}

/// Closes `ws` cleanly and waits for the server's answer.
async fn hang_up(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, ws.next()).await {}
}

/// `POST /rooms/{room}/publish` with `body`.
async fn publish(addr: std::net::SocketAddr, room: &str, body: &str) -> Reply {
    http(addr, Method::POST, &format!("/rooms/{room}/publish"), body).await
}

/// Upgrades (101 expected) and reads the `room.joined` roster.
async fn open_room(req: Request) -> (Ws, String, Vec<String>) {
    let (mut ws, res) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
        .unwrap_or_else(|err| panic!("upgrade failed: {err}"));
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    match next_json(&mut ws).await {
        ServerMessage::Joined { room, users } => (ws, room, users),
        other => panic!("expected room.joined, got {other:?}"),
    }
}

/// The sorted keys of a JSON object.
fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

const INVALID_ROOM: &str = "invalid room name: 1 to 128 letters, digits or _ - . : @";

// ---------------------------------------------------------------- chat and rooms

#[tokio::test]
async fn a_chat_message_reaches_every_member_of_the_room_and_no_one_else() {
    let server = TestServer::quiet().await;
    let (mut u1, roster) = join_room(server.addr, "test", "u1").await;
    assert_eq!(roster, ["u1"]);
    let (mut u2, roster) = join_room(server.addr, "test", "u2").await;
    assert_eq!(roster, ["u1", "u2"]);
    let (mut other, roster) = join_room(server.addr, "elsewhere", "u3").await;
    assert_eq!(roster, ["u3"]);
    expect_presence_join(&mut u1, "test", "u2").await;
    send_json(&mut u1, &chat("test", "hi")).await;
    // Everyone gets the same message: one id, one ts, the sender included.
    let first = expect_delivery(&mut u1, "test", "u1", "hi").await;
    let second = expect_delivery(&mut u2, "test", "u1", "hi").await;
    assert_eq!(first, second);
    assert_silent(&mut other).await;
    assert_silent(&mut u1).await;
    assert_silent(&mut u2).await;
}

#[tokio::test]
async fn without_a_user_name_a_room_connection_gets_a_uuid() {
    let server = TestServer::quiet().await;
    for path in ["/ws/rooms/test", "/ws/rooms/test?user="] {
        let mut ws = connect_raw(server.addr, path).await;
        let user = match next_json(&mut ws).await {
            ServerMessage::Joined { room, users } => {
                assert_eq!(room, "test");
                assert_eq!(users.len(), 1, "{users:?}");
                users[0].clone()
            }
            other => panic!("expected room.joined, got {other:?}"),
        };
        assert!(uuid::Uuid::parse_str(&user).is_ok(), "{user:?}");
        still_works(&mut ws, "test", &user).await;
        hang_up(ws).await;
    }
}

#[tokio::test]
async fn a_second_room_is_joined_with_its_roster_and_both_rooms_deliver() {
    let server = TestServer::quiet().await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let (mut u2, roster) = join_room(server.addr, "side", "u2").await;
    assert_eq!(roster, ["u2"]);

    send_json(&mut u1, &join("side")).await;
    expect_joined(&mut u1, "side", &["u1", "u2"]).await;
    expect_presence_join(&mut u2, "side", "u1").await;

    send_json(&mut u2, &chat("side", "from side")).await;
    expect_delivery(&mut u2, "side", "u2", "from side").await;
    expect_delivery(&mut u1, "side", "u2", "from side").await;

    send_json(&mut u1, &chat("test", "from test")).await;
    send_json(&mut u1, &chat("side", "u1 in side")).await;
    expect_delivery(&mut u1, "test", "u1", "from test").await;
    expect_delivery(&mut u1, "side", "u1", "u1 in side").await;
    // u2 is not in test: only the side message reaches it.
    expect_delivery(&mut u2, "side", "u1", "u1 in side").await;
    assert_silent(&mut u2).await;

    // Joining a room again only re-sends its roster: no duplicate deliveries.
    send_json(&mut u1, &join("side")).await;
    expect_joined(&mut u1, "side", &["u1", "u2"]).await;
    send_json(&mut u2, &chat("side", "once")).await;
    expect_delivery(&mut u2, "side", "u2", "once").await;
    expect_delivery(&mut u1, "side", "u2", "once").await;
    assert_silent(&mut u1).await;
    assert_silent(&mut u2).await;
}

#[tokio::test]
async fn after_room_leave_that_room_delivers_nothing_more() {
    let server = TestServer::quiet().await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let (mut u2, _) = join_room(server.addr, "side", "u2").await;
    send_json(&mut u1, &join("side")).await;
    expect_joined(&mut u1, "side", &["u1", "u2"]).await;
    expect_presence_join(&mut u2, "side", "u1").await;

    send_json(&mut u1, &leave("side")).await;
    expect_left(&mut u1, "side").await;
    expect_presence_leave(&mut u2, "side", "u1").await;
    send_json(&mut u2, &chat("side", "after the leave")).await;
    expect_delivery(&mut u2, "side", "u2", "after the leave").await;
    assert_silent(&mut u1).await;
    // The first room is untouched.
    still_works(&mut u1, "test", "u1").await;

    // Leaving the last room keeps the connection open; it can join again.
    send_json(&mut u1, &leave("test")).await;
    expect_left(&mut u1, "test").await;
    send_json(&mut u1, &ClientMessage::Ping { ts: Some(7) }).await;
    assert_eq!(next_json(&mut u1).await, ServerMessage::Pong { ts: 7 });
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": [], "count": 0})
    );
    send_json(&mut u1, &join("test")).await;
    expect_joined(&mut u1, "test", &["u1"]).await;
    still_works(&mut u1, "test", "u1").await;
}

#[tokio::test]
async fn leaving_or_talking_to_a_room_not_joined_is_not_in_room() {
    let server = TestServer::quiet().await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let (mut u2, _) = join_room(server.addr, "side", "u2").await;

    send_json(&mut u1, &leave("side")).await;
    let message = expect_error(&mut u1, ErrorCode::NotInRoom).await;
    assert_eq!(message, "not in room \"side\": send room.join first");
    send_json(&mut u1, &chat("side", "sneaky")).await;
    let message = expect_error(&mut u1, ErrorCode::NotInRoom).await;
    assert!(message.contains("side"), "{message}");
    // Nothing reached the room.
    assert_silent(&mut u2).await;

    still_works(&mut u1, "test", "u1").await;
    // Once left, the first room is refused the same way.
    send_json(&mut u1, &leave("test")).await;
    expect_left(&mut u1, "test").await;
    send_json(&mut u1, &leave("test")).await;
    expect_error(&mut u1, ErrorCode::NotInRoom).await;
    send_json(&mut u1, &chat("test", "gone")).await;
    expect_error(&mut u1, ErrorCode::NotInRoom).await;
    send_json(&mut u1, &join("test")).await;
    expect_joined(&mut u1, "test", &["u1"]).await;
    still_works(&mut u1, "test", "u1").await;
}

// ---------------------------------------------------------------- error codes

#[tokio::test]
async fn what_is_not_a_json_object_is_invalid_json_and_the_connection_stays() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for text in ["nope", "[1]", "{", "\"chat.message\"", "42", "null", ""] {
        refused(&mut ws, text, ErrorCode::InvalidJson).await;
    }
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn an_unknown_type_and_missing_fields_have_their_codes() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for text in [
        r#"{"type":"chat.shout","room":"test","text":"hi"}"#,
        r#"{"type":"CHAT.MESSAGE","room":"test","text":"hi"}"#,
        r#"{"type":"chat.delivery","room":"test","text":"hi"}"#,
    ] {
        let message = refused(&mut ws, text, ErrorCode::UnknownType).await;
        assert!(message.contains("chat.message"), "{message}");
    }
    for (text, field) in [
        (r#"{"room":"test","text":"hi"}"#, "type"),
        (r#"{"type":null,"room":"test","text":"hi"}"#, "type"),
        (r#"{"type":"chat.message","room":"test"}"#, "text"),
        (r#"{"type":"chat.message","text":"hi"}"#, "room"),
        (r#"{"type":"room.join"}"#, "room"),
        (r#"{"type":"room.leave","room":null}"#, "room"),
    ] {
        let message = refused(&mut ws, text, ErrorCode::MissingField).await;
        assert!(
            message.contains(&format!("\"{field}\"")),
            "{text}: {message}"
        );
    }
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn wrongly_typed_or_empty_fields_are_invalid_field() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for text in [
        r#"{"type":"chat.message","room":"test","text":""}"#,
        r#"{"type":7}"#,
        r#"{"type":["chat.message"],"room":"test","text":"hi"}"#,
        r#"{"type":"chat.message","room":"test","text":5}"#,
        r#"{"type":"chat.message","room":{"name":"test"},"text":"hi"}"#,
        r#"{"type":"system.ping","ts":-1}"#,
        r#"{"type":"system.ping","ts":"123"}"#,
        r#"{"type":"system.ping","ts":1.5}"#,
    ] {
        refused(&mut ws, text, ErrorCode::InvalidField).await;
    }
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn text_too_long_counts_characters_not_bytes() {
    let server = TestServer::start(Config {
        max_text_length: 10,
        ..quiet_config()
    })
    .await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for ok in ["0123456789", "éééééééééé", "🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂", "x"]
    {
        send_json(&mut ws, &chat("test", ok)).await;
        expect_delivery(&mut ws, "test", "u1", ok).await;
    }
    for (long, chars) in [
        ("01234567890".to_owned(), 11),
        ("é".repeat(11), 11),
        ("🙂".repeat(40), 40),
    ] {
        send_json(&mut ws, &chat("test", &long)).await;
        let message = expect_error(&mut ws, ErrorCode::TextTooLong).await;
        assert_eq!(
            message,
            format!("\"text\" has {chars} characters; the limit is 10")
        );
    }
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn a_bad_room_name_in_a_message_is_invalid_room() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    let too_long = "x".repeat(MAX_ROOM_NAME + 1);
    for message in [
        join("a b"),
        join(""),
        join(&too_long),
        join("café"),
        join("a/b"),
        leave("a b"),
        chat("a b", "hi"),
    ] {
        send_json(&mut ws, &message).await;
        let text = expect_error(&mut ws, ErrorCode::InvalidRoom).await;
        assert!(text.starts_with("invalid room name"), "{text}");
    }
    // The longest name and every allowed character are fine.
    let longest = "x".repeat(MAX_ROOM_NAME);
    for room in [longest.as_str(), "a_b-c.d:e@F9"] {
        send_json(&mut ws, &join(room)).await;
        expect_joined(&mut ws, room, &["u1"]).await;
        still_works(&mut ws, room, "u1").await;
    }
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn joining_more_than_the_room_limit_is_too_many_rooms() {
    let server = TestServer::quiet().await;
    // The first room is the one of the path.
    let (mut ws, _) = join_room(server.addr, "r0", "u1").await;
    for i in 1..MAX_ROOMS_PER_CONNECTION {
        let room = format!("r{i}");
        send_json(&mut ws, &join(&room)).await;
        expect_joined(&mut ws, &room, &["u1"]).await;
    }
    let extra = format!("r{MAX_ROOMS_PER_CONNECTION}");
    send_json(&mut ws, &join(&extra)).await;
    let message = expect_error(&mut ws, ErrorCode::TooManyRooms).await;
    assert!(message.contains("64"), "{message}");
    assert_eq!(
        presence(server.addr, &extra).await,
        json!({"room": extra, "users": [], "count": 0})
    );
    // At the limit, a room already joined may be joined again ...
    send_json(&mut ws, &join("r63")).await;
    expect_joined(&mut ws, "r63", &["u1"]).await;
    // ... and after leaving one, another can be joined.
    send_json(&mut ws, &leave("r0")).await;
    expect_left(&mut ws, "r0").await;
    send_json(&mut ws, &join(&extra)).await;
    expect_joined(&mut ws, &extra, &["u1"]).await;
    still_works(&mut ws, &extra, "u1").await;
    still_works(&mut ws, "r1", "u1").await;
}

// ---------------------------------------------------------------- abuse

#[tokio::test]
async fn a_burst_of_invalid_messages_is_closed_with_1008_and_the_room_goes_on() {
    let server = TestServer::quiet().await;
    let (mut calm, _) = join_room(server.addr, "test", "calm").await;
    let (mut noisy, _) = join_room(server.addr, "test", "noisy").await;
    expect_presence_join(&mut calm, "test", "noisy").await;
    for _ in 0..11 {
        send(&mut noisy, "nope").await;
    }
    // All eleven are answered; the eleventh spends the budget, and its
    // answer goes out right before the close.
    for _ in 0..11 {
        expect_error(&mut noisy, ErrorCode::InvalidJson).await;
    }
    match next_message(&mut noisy).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason, "too many invalid messages");
        }
        other => panic!("expected the 1008 close, got {other:?}"),
    }
    expect_presence_leave(&mut calm, "test", "noisy").await;
    wait_for_connections(server.addr, 1).await;
    wait_for_metric(server.addr, "wsnotify_protocol_errors_total 11").await;
    still_works(&mut calm, "test", "calm").await;
    let reply = publish(server.addr, "test", r#"{"text":"after"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    expect_delivery(&mut calm, "test", "server", "after").await;
}

#[tokio::test]
async fn invalid_messages_spread_out_do_not_close_the_connection() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for _ in 0..10 {
        refused(&mut ws, "nope", ErrorCode::InvalidJson).await;
    }
    // The budget earns one message back per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(&mut ws, "nope", ErrorCode::InvalidJson).await;
    still_works(&mut ws, "test", "u1").await;
}

// ---------------------------------------------------------------- pings

#[tokio::test]
async fn system_ping_is_answered_with_system_pong() {
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    send_json(&mut ws, &ClientMessage::Ping { ts: Some(123) }).await;
    assert_eq!(next_json(&mut ws).await, ServerMessage::Pong { ts: 123 });
    // The raw answer has exactly the documented keys.
    send(&mut ws, r#"{"type":"system.ping","ts":0}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"type":"system.pong","ts":0}"#);
    send(
        &mut ws,
        r#"{"type":"system.ping","ts":18446744073709551615}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        ServerMessage::Pong { ts: u64::MAX }
    );
    // Without ts, the server's time.
    let before = now_ms();
    send(&mut ws, r#"{"type":"system.ping"}"#).await;
    match next_json(&mut ws).await {
        ServerMessage::Pong { ts } => assert!(before <= ts && ts <= now_ms(), "{ts}"),
        other => panic!("expected system.pong, got {other:?}"),
    }
    // A client's system.pong is accepted and not answered.
    send_json(&mut ws, &ClientMessage::Pong { ts: Some(5) }).await;
    send(&mut ws, r#"{"type":"system.pong"}"#).await;
    assert_silent(&mut ws).await;
    still_works(&mut ws, "test", "u1").await;
}

#[tokio::test]
async fn the_heartbeat_sends_room_clients_system_ping_and_a_ping_frame() {
    let server = TestServer::start(Config {
        heartbeat_interval: Duration::from_millis(200),
        idle_timeout: Duration::ZERO,
        ..quiet_config()
    })
    .await;
    let (mut room, _) = join_room(server.addr, "test", "u1").await;
    let mut plain = connect(server.addr, "/ws").await;

    // The room client gets both, on every tick.
    for _ in 0..2 {
        let (mut frame, mut json) = (false, false);
        while !(frame && json) {
            match next_message(&mut room).await {
                Message::Ping(_) if !frame => frame = true,
                Message::Text(text) if !json => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(keys(&value), ["ts", "type"], "{text}");
                    assert_eq!(value["type"], "system.ping");
                    assert_recent(value["ts"].as_u64().unwrap());
                    json = true;
                }
                other => panic!("room client: unexpected {other:?}"),
            }
        }
    }
    // next_text does not skip system.ping (only next_json does).
    let text = next_text(&mut room).await;
    assert!(matches!(
        ServerMessage::decode(&text),
        Ok(ServerMessage::Ping { .. })
    ));

    // The plain client gets the ping frames and nothing else.
    for _ in 0..3 {
        match next_message(&mut plain).await {
            Message::Ping(_) => {}
            other => panic!("plain client: expected only ping frames, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_room_client_is_closed_with_4000() {
    let server = TestServer::start(Config {
        heartbeat_interval: Duration::ZERO,
        idle_timeout: Duration::from_millis(400),
        ..quiet_config()
    })
    .await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4000);
    assert_eq!(frame.reason, "idle timeout: no frame from the client");
    wait_for_connections(server.addr, 0).await;
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": [], "count": 0})
    );
}

#[tokio::test]
async fn a_room_client_sending_system_pong_stays_past_the_idle_timeout() {
    let server = TestServer::start(Config {
        heartbeat_interval: Duration::ZERO,
        idle_timeout: Duration::from_millis(400),
        ..quiet_config()
    })
    .await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send_json(&mut ws, &ClientMessage::Pong { ts: None }).await;
    }
    still_works(&mut ws, "test", "u1").await;
}

// ---------------------------------------------------------------- presence

#[tokio::test]
async fn presence_follows_users_not_connections() {
    let server = TestServer::quiet().await;
    let (mut zoe, roster) = join_room(server.addr, "test", "zoe").await;
    assert_eq!(roster, ["zoe"]);
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["zoe"], "count": 1})
    );

    // A new user: the others hear presence.join, the newcomer gets the roster.
    let (mut adam, roster) = join_room(server.addr, "test", "adam").await;
    assert_eq!(roster, ["adam", "zoe"]);
    expect_presence_join(&mut zoe, "test", "adam").await;
    assert_silent(&mut adam).await;

    // A second connection of the same user is no news.
    let (mut adam2, roster) = join_room(server.addr, "test", "adam").await;
    assert_eq!(roster, ["adam", "zoe"]);
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["adam", "zoe"], "count": 2})
    );
    // Both of adam's connections receive the room.
    send_json(&mut zoe, &chat("test", "hello adam")).await;
    for ws in [&mut zoe, &mut adam, &mut adam2] {
        expect_delivery(ws, "test", "zoe", "hello adam").await;
    }
    assert_silent(&mut zoe).await;
    assert_silent(&mut adam).await;

    // Joining by room.join from another room counts as arriving.
    let (mut mia, _) = join_room(server.addr, "side", "mia").await;
    send_json(&mut mia, &join("test")).await;
    expect_joined(&mut mia, "test", &["adam", "mia", "zoe"]).await;
    expect_presence_join(&mut zoe, "test", "mia").await;
    expect_presence_join(&mut adam, "test", "mia").await;
    expect_presence_join(&mut adam2, "test", "mia").await;
    send_json(&mut mia, &leave("test")).await;
    expect_left(&mut mia, "test").await;
    expect_presence_leave(&mut zoe, "test", "mia").await;
    expect_presence_leave(&mut adam, "test", "mia").await;
    expect_presence_leave(&mut adam2, "test", "mia").await;
    assert_silent(&mut mia).await;

    // adam's first connection goes: adam is still there.
    hang_up(adam2).await;
    wait_for_connections(server.addr, 3).await;
    assert_silent(&mut zoe).await;
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["adam", "zoe"], "count": 2})
    );

    // adam's last connection goes: presence.leave, and the roster shrinks.
    hang_up(adam).await;
    expect_presence_leave(&mut zoe, "test", "adam").await;
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["zoe"], "count": 1})
    );
    assert_eq!(
        presence(server.addr, "side").await,
        json!({"room": "side", "users": ["mia"], "count": 1})
    );
    assert_silent(&mut zoe).await;
}

#[tokio::test]
async fn presence_of_an_empty_room_and_of_a_bad_name() {
    let server = TestServer::quiet().await;
    assert_eq!(
        presence(server.addr, "nobody").await,
        json!({"room": "nobody", "users": [], "count": 0})
    );
    for path in [
        "/rooms/a%20b/presence",
        &format!("/rooms/{}/presence", "x".repeat(129)),
    ] {
        let reply = http(server.addr, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json(), json!({ "error": INVALID_ROOM }));
    }
}

// ---------------------------------------------------------------- HTTP publish

#[tokio::test]
async fn post_publish_reaches_every_member_as_server() {
    let server = TestServer::quiet().await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let (mut u2, _) = join_room(server.addr, "test", "u2").await;
    expect_presence_join(&mut u1, "test", "u2").await;
    let (mut other, _) = join_room(server.addr, "side", "u3").await;

    let reply = publish(server.addr, "test", r#"{"text":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    assert_eq!(
        keys(&body),
        ["id", "local_recipients", "room", "status", "ts"]
    );
    assert_eq!(body["status"], "Message published");
    assert_eq!(body["room"], "test");
    assert_eq!(body["local_recipients"], 2);
    for ws in [&mut u1, &mut u2] {
        let (id, ts) = expect_delivery(ws, "test", "server", "hi").await;
        assert_eq!(
            (json!(id), json!(ts)),
            (body["id"].clone(), body["ts"].clone())
        );
    }
    assert_silent(&mut other).await;

    // `user` names the sender.
    let reply = publish(server.addr, "test", r#"{"text":"x","user":"bot"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for ws in [&mut u1, &mut u2] {
        expect_delivery(ws, "test", "bot", "x").await;
    }
    // `message` stands for `text`, as in /broadcast.
    let reply = publish(server.addr, "test", r#"{"message":"via message"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for ws in [&mut u1, &mut u2] {
        expect_delivery(ws, "test", "server", "via message").await;
    }
    // A room without members: published to no one, still 200.
    let reply = publish(server.addr, "empty", r#"{"text":"anyone?"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["local_recipients"], 0);
    assert_eq!(reply.json()["room"], "empty");
    assert_silent(&mut u1).await;
    assert_silent(&mut other).await;
}

#[tokio::test]
async fn post_publish_refuses_bad_requests() {
    let server = TestServer::start(Config {
        max_text_length: 10,
        max_message_size: 1024,
        ..quiet_config()
    })
    .await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let long_room = format!("/rooms/{}/publish", "x".repeat(MAX_ROOM_NAME + 1));
    let huge = json!({ "text": "y".repeat(2000) }).to_string();
    let long_user = json!({ "text": "x", "user": "u".repeat(257) }).to_string();
    for (path, body, status, error) in [
        ("/rooms/test/publish", "{", 400, "Invalid JSON"),
        ("/rooms/test/publish", "", 400, "Invalid JSON"),
        ("/rooms/test/publish", "[1]", 400, "expected a JSON object"),
        ("/rooms/test/publish", "{}", 400, "No text provided"),
        (
            "/rooms/test/publish",
            r#"{"text":""}"#,
            400,
            "No text provided",
        ),
        (
            "/rooms/test/publish",
            r#"{"text":null}"#,
            400,
            "No text provided",
        ),
        (
            "/rooms/test/publish",
            r#"{"user":"bot"}"#,
            400,
            "No text provided",
        ),
        (
            "/rooms/test/publish",
            r#"{"text":5}"#,
            400,
            "\"text\" must be a string",
        ),
        (
            "/rooms/test/publish",
            r#"{"text":"01234567890"}"#,
            400,
            "\"text\" has 11 characters; the limit is 10",
        ),
        (
            "/rooms/test/publish",
            r#"{"text":"x","user":5}"#,
            400,
            "\"user\" must be",
        ),
        (
            "/rooms/test/publish",
            r#"{"text":"x","user":""}"#,
            400,
            "\"user\" must be",
        ),
        ("/rooms/test/publish", &long_user, 400, "\"user\" must be"),
        ("/rooms/a%20b/publish", r#"{"text":"x"}"#, 400, INVALID_ROOM),
        (&long_room, r#"{"text":"x"}"#, 400, INVALID_ROOM),
        (
            "/rooms/test/publish",
            &huge,
            413,
            "request body larger than 1024 bytes",
        ),
        ("/rooms/test/other", r#"{"text":"x"}"#, 404, "not found"),
        ("/rooms//publish", r#"{"text":"x"}"#, 404, "not found"),
        ("/rooms/test", r#"{"text":"x"}"#, 404, "not found"),
        ("/rooms/test/publish/x", r#"{"text":"x"}"#, 404, "not found"),
    ] {
        let reply = http(server.addr, Method::POST, path, body).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{path} {body}: {}",
            reply.body
        );
        let got = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(got.starts_with(error), "{path} {body}: {got}");
    }
    for (method, path, allow) in [
        (Method::GET, "/rooms/test/publish", "POST"),
        (Method::PUT, "/rooms/test/publish", "POST"),
        (Method::POST, "/rooms/test/presence", "GET, HEAD"),
    ] {
        let reply = http(server.addr, method.clone(), path, r#"{"text":"x"}"#).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.headers["allow"], allow);
    }
    assert_silent(&mut u1).await;
    // Ten characters is the limit, not ten bytes.
    let reply = publish(server.addr, "test", r#"{"text":"éééééééééé"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    expect_delivery(&mut u1, "test", "server", "éééééééééé").await;
}

const API_KEY: &str = "test-only-api-key";

#[tokio::test]
async fn the_api_key_guards_publish_but_not_presence() {
    let server = TestServer::start(Config {
        api_key: Some(API_KEY.to_owned()),
        ..quiet_config()
    })
    .await;
    let (mut u1, _) = join_room(server.addr, "test", "u1").await;
    let body = r#"{"text":"guarded"}"#;
    for headers in [
        &[][..],
        &[("authorization", "Bearer wrong-key")],
        &[("authorization", "Bearer test-only-api-ke")],
        &[("authorization", API_KEY)],
    ] {
        let reply = http_with(
            server.addr,
            Method::POST,
            "/rooms/test/publish",
            body,
            headers,
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.json(), json!({ "error": "missing or wrong API key" }));
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
    assert_silent(&mut u1).await;
    let right = format!("Bearer {API_KEY}");
    let reply = http_with(
        server.addr,
        Method::POST,
        "/rooms/test/publish",
        body,
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["local_recipients"], 1);
    expect_delivery(&mut u1, "test", "server", "guarded").await;
    // Reading presence and room WebSockets need no key.
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["u1"], "count": 1})
    );
    still_works(&mut u1, "test", "u1").await;
}

// ---------------------------------------------------------------- the upgrade

#[tokio::test]
async fn a_bad_room_name_in_the_path_is_400_before_the_upgrade() {
    let server = TestServer::quiet().await;
    let too_long = format!("/ws/rooms/{}", "x".repeat(MAX_ROOM_NAME + 1));
    for path in [
        "/ws/rooms/a%20b",
        too_long.as_str(),
        "/ws/rooms/caf%C3%A9",
        "/ws/rooms/a+b",
        "/ws/rooms/a%2Fb?user=u1",
    ] {
        let (status, headers, body) = refusal(upgrade_request(&server, path, &[])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body, json!({ "error": INVALID_ROOM }), "{path}");
        assert!(headers.get("upgrade").is_none(), "{path}");
    }
    // Not room routes at all.
    for path in ["/ws/rooms/", "/ws/rooms/a/b"] {
        let (status, _, _) = refusal(upgrade_request(&server, path, &[])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    wait_for_connections(server.addr, 0).await;
    // The longest name is fine.
    let longest = "x".repeat(MAX_ROOM_NAME);
    let (mut ws, roster) = join_room(server.addr, &longest, "u1").await;
    assert_eq!(roster, ["u1"]);
    still_works(&mut ws, &longest, "u1").await;
}

const SECRET: &str = "test-only-secret-0123456789abcdef0123";

/// A valid HS256 token for `sub`.
fn token(sub: &str) -> String {
    let claims = json!({ "sub": sub, "exp": get_current_timestamp() + 300 });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn with_tokens_the_room_user_is_the_token_sub() {
    let server = TestServer::start(Config {
        jwt_secret: Some(SECRET.to_owned()),
        ..quiet_config()
    })
    .await;
    let alice = token("alice");
    let (mut a, room, roster) = open_room(upgrade_request(
        &server,
        &format!("/ws/rooms/test?token={alice}"),
        &[],
    ))
    .await;
    assert_eq!(
        (room.as_str(), roster.as_slice()),
        ("test", &["alice".to_owned()][..])
    );

    // The Authorization header works too, and a ?user= equal to the sub is fine.
    let bearer = format!("Bearer {}", token("bob"));
    let (mut b, _, roster) = open_room(upgrade_request(
        &server,
        "/ws/rooms/test?user=bob",
        &[("authorization", &bearer)],
    ))
    .await;
    assert_eq!(roster, ["alice", "bob"]);
    expect_presence_join(&mut a, "test", "bob").await;

    send_json(&mut a, &chat("test", "signed")).await;
    expect_delivery(&mut a, "test", "alice", "signed").await;
    expect_delivery(&mut b, "test", "alice", "signed").await;

    // ?user= other than the sub: 403.
    let (status, _, body) = refusal(upgrade_request(
        &server,
        &format!("/ws/rooms/test?user=bob&token={alice}"),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not match the token's sub"), "{body}");
    // No token (a ?user= is no substitute): 401.
    for path in ["/ws/rooms/test", "/ws/rooms/test?user=alice"] {
        let (status, headers, body) = refusal(upgrade_request(&server, path, &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body, json!({ "error": "missing token" }), "{path}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    // A bad token: 401.
    let (status, _, _) = refusal(upgrade_request(&server, "/ws/rooms/test?token=a.b.c", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The refused ones never joined.
    assert_silent(&mut a).await;
    assert_eq!(
        presence(server.addr, "test").await,
        json!({"room": "test", "users": ["alice", "bob"], "count": 2})
    );
}

// ---------------------------------------------------------------- isolation

#[tokio::test]
async fn the_plain_stream_and_the_rooms_do_not_mix() {
    let server = TestServer::quiet().await;
    let (mut room, _) = join_room(server.addr, "test", "u1").await;
    let mut plain = connect(server.addr, "/ws/u1").await;
    let mut plain2 = connect(server.addr, "/ws/u2").await;

    // POST /broadcast goes to plain clients only.
    let reply = broadcast(server.addr, "news").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(next_text(&mut plain).await, "news");
    assert_eq!(next_text(&mut plain2).await, "news");
    // A plain client's message too.
    send(&mut plain, "hello").await;
    assert_eq!(next_text(&mut plain).await, "You said: hello");
    assert_eq!(next_text(&mut plain2).await, "New message: hello");
    // A room message stays in the room.
    send_json(&mut room, &chat("test", "in the room")).await;
    expect_delivery(&mut room, "test", "u1", "in the room").await;
    let reply = publish(server.addr, "test", r#"{"text":"published"}"#).await;
    assert_eq!(reply.json()["local_recipients"], 1);
    expect_delivery(&mut room, "test", "server", "published").await;
    assert_silent(&mut room).await;
    assert_silent(&mut plain).await;
    assert_silent(&mut plain2).await;
}

#[tokio::test]
async fn notify_reaches_room_connections_as_notification_messages() {
    let server = TestServer::quiet().await;
    let (mut room, _) = join_room(server.addr, "test", "u1").await;
    let mut plain = connect(server.addr, "/ws/u1").await;
    let (mut stranger, _) = join_room(server.addr, "test", "u2").await;
    expect_presence_join(&mut room, "test", "u2").await;

    let notify = async |message: &str| {
        let body = json!({ "message": message }).to_string();
        let reply = http(server.addr, Method::POST, "/notify/u1", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.json(),
            json!({"status": "Notification sent", "instances": 1})
        );
    };
    // A JSON payload arrives parsed in `data`; the plain connection gets it as is.
    notify("{\"order\":1}").await;
    assert_eq!(
        next_text(&mut room).await,
        r#"{"type":"notification","data":{"order":1}}"#
    );
    assert_eq!(next_text(&mut plain).await, "{\"order\":1}");
    // Any other text arrives as a string.
    notify("call me").await;
    assert_eq!(
        next_json(&mut room).await,
        ServerMessage::Notification {
            data: json!("call me"),
            at: None,
        }
    );
    assert_eq!(next_text(&mut plain).await, "call me");
    // Only u1's connections.
    assert_silent(&mut stranger).await;
    assert_silent(&mut room).await;
}

#[tokio::test]
async fn periodic_notifications_skip_room_clients() {
    let every = Duration::from_millis(200);
    let server = TestServer::start(Config {
        notification_interval: every,
        ..Config::default()
    })
    .await;
    let (mut room, _) = join_room(server.addr, "test", "u1").await;
    let mut plain = connect(server.addr, "/ws").await;
    let periodic = wsnotify::protocol::text::periodic(every);
    for _ in 0..2 {
        assert_eq!(next_text(&mut plain).await, periodic);
    }
    // Had a periodic notification been queued for the room client, it would
    // come before this delivery.
    still_works(&mut room, "test", "u1").await;
}

// ---------------------------------------------------------------- drain and bad frames

#[tokio::test]
async fn a_drain_sends_room_clients_system_shutdown() {
    let server = TestServer::quiet().await;
    let (mut room, _) = join_room(server.addr, "test", "u1").await;
    let mut plain = connect(server.addr, "/ws").await;
    server.signal();
    match next_json(&mut room).await {
        ServerMessage::Shutdown { message, .. } => {
            assert!(message.contains("shutting down"), "{message}");
            assert_eq!(message, SHUTDOWN_NOTICE);
        }
        other => panic!("expected system.shutdown, got {other:?}"),
    }
    assert_eq!(next_text(&mut plain).await, SHUTDOWN_NOTICE);
    // New room connections are refused during the drain; open ones go on.
    let (status, headers, _) =
        refusal(upgrade_request(&server, "/ws/rooms/test?user=late", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    still_works(&mut room, "test", "u1").await;
    hang_up(room).await;
    hang_up(plain).await;
    assert!(matches!(
        server.finished().await,
        wsnotify::Outcome::Drained(_)
    ));
}

#[tokio::test]
async fn a_binary_frame_on_a_room_connection_is_closed_with_1003() {
    let server = TestServer::quiet().await;
    let (mut calm, _) = join_room(server.addr, "test", "calm").await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    expect_presence_join(&mut calm, "test", "u1").await;
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1003);
    assert_eq!(frame.reason, "binary frames are not supported");
    expect_presence_leave(&mut calm, "test", "u1").await;
    still_works(&mut calm, "test", "calm").await;
}

#[tokio::test]
async fn bad_utf8_and_oversized_messages_on_a_room_connection_are_closed() {
    let server = TestServer::start(Config {
        max_message_size: 1024,
        ..quiet_config()
    })
    .await;
    for (payload, code) in [(vec![b'"', 0xff, b'"'], 1007), (vec![b'x'; 1025], 1009)] {
        let mut raw = RawWs::handshake(server.addr, "/ws/rooms/test?user=raw").await;
        let (opcode, roster) = raw.read_frame().await.expect("room.joined");
        assert_eq!(opcode, op::TEXT);
        assert_eq!(
            ServerMessage::decode(std::str::from_utf8(&roster).unwrap()).unwrap(),
            ServerMessage::Joined {
                room: "test".into(),
                users: vec!["raw".into()]
            }
        );
        raw.send_frame(true, op::TEXT, &payload).await;
        assert_eq!(raw.close_code().await, Some(code));
    }
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn a_fragmented_chat_message_is_reassembled_and_ping_frames_answered() {
    let server = TestServer::quiet().await;
    let mut raw = RawWs::handshake(server.addr, "/ws/rooms/test?user=raw").await;
    let (_, roster) = raw.read_frame().await.expect("room.joined");
    assert_eq!(
        roster,
        br#"{"type":"room.joined","room":"test","users":["raw"]}"#
    );
    raw.send_frame(true, op::PING, b"p").await;
    assert_eq!(raw.read_frame().await, Some((0xA, b"p".to_vec())));
    let message = chat("test", "in two parts").encode().into_bytes();
    let (first, second) = message.split_at(message.len() / 2);
    raw.send_frame(false, op::TEXT, first).await;
    raw.send_frame(true, op::CONTINUATION, second).await;
    let (opcode, payload) = raw.read_frame().await.expect("chat.delivery");
    assert_eq!(opcode, op::TEXT);
    match ServerMessage::decode(std::str::from_utf8(&payload).unwrap()).unwrap() {
        ServerMessage::Delivery {
            room, user, text, ..
        } => assert_eq!(
            (room.as_str(), user.as_str(), text.as_str()),
            ("test", "raw", "in two parts")
        ),
        other => panic!("expected chat.delivery, got {other:?}"),
    }
}

// ---------------------------------------------------------------- fixtures

fn fixture_dir(side: &str) -> PathBuf {
    fixture("messages").join(side)
}

/// Every `*.json` of `fixtures/messages/{side}`, by name, sorted.
fn fixtures(side: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(fixture_dir(side))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_message_fixtures_decode_and_work_on_a_live_connection() {
    // Server messages: each decodes, re-encodes to the same JSON, and is
    // named after its type.
    let mut shapes = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    for (name, text) in fixtures("server") {
        let message = ServerMessage::decode(&text)
            .unwrap_or_else(|err| panic!("server/{name} does not decode: {err}"));
        let value: Value = serde_json::from_str(&text).unwrap();
        let kind = value["type"].as_str().unwrap().to_owned();
        assert_eq!(name, format!("{kind}.json"));
        assert_eq!(
            serde_json::from_str::<Value>(&message.encode()).unwrap(),
            value,
            "server/{name} does not round-trip"
        );
        shapes.insert(kind.clone(), keys(&value));
        samples.insert(kind, message);
    }
    let mut kinds: Vec<&str> = shapes.keys().map(String::as_str).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "broadcast",
            "chat.delivery",
            "notification",
            "presence.join",
            "presence.leave",
            "room.joined",
            "room.left",
            "stream.position",
            "system.error",
            "system.ping",
            "system.pong",
            "system.shutdown",
        ]
    );
    // A live answer must have the fixture's keys.
    let same_shape = |value: &Value| {
        let kind = value["type"].as_str().unwrap();
        assert_eq!(keys(value), shapes[kind], "live {kind}: {value}");
    };

    // Client messages: each decodes, then is sent verbatim and does its job.
    let client = fixtures("client");
    let names: Vec<&str> = client.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "chat.message.json",
            "room.join.json",
            "room.leave.json",
            "system.ping.json",
            "system.pong.json",
        ]
    );
    let server = TestServer::quiet().await;
    let (mut ws, _) = join_room(server.addr, "test", "u1").await;
    let max = Config::default().max_text_length;
    for (name, text) in &client {
        let decoded = ClientMessage::decode(text, max)
            .unwrap_or_else(|err| panic!("client/{name} does not decode: {err}"));
        assert_eq!(
            serde_json::from_str::<Value>(&decoded.encode()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap(),
            "client/{name} does not round-trip"
        );
        send(&mut ws, text).await;
        match decoded {
            ClientMessage::ChatMessage { room, text } => {
                assert_eq!(
                    (room.as_str(), text.as_str()),
                    ("test", "hi"),
                    "the seed example"
                );
                let (value, message) = next_raw(&mut ws).await;
                same_shape(&value);
                assert!(matches!(
                    message,
                    ServerMessage::Delivery { room, user, text, .. }
                        if (room.as_str(), user.as_str(), text.as_str()) == ("test", "u1", "hi")
                ));
            }
            ClientMessage::RoomJoin { room, .. } => {
                let (value, message) = next_raw(&mut ws).await;
                same_shape(&value);
                assert_eq!(
                    message,
                    ServerMessage::Joined {
                        room,
                        users: vec!["u1".into()]
                    }
                );
            }
            ClientMessage::RoomLeave { room } => {
                let (value, message) = next_raw(&mut ws).await;
                same_shape(&value);
                assert_eq!(message, ServerMessage::Left { room: room.clone() });
                // Sent again, it is refused: the error fixture's exact text.
                send(&mut ws, text).await;
                let (value, message) = next_raw(&mut ws).await;
                same_shape(&value);
                assert_eq!(message, samples["system.error"]);
            }
            ClientMessage::Ping { ts } => {
                let (value, message) = next_raw(&mut ws).await;
                same_shape(&value);
                assert_eq!(message, ServerMessage::Pong { ts: ts.unwrap() });
            }
            ClientMessage::Pong { .. } => assert_silent(&mut ws).await,
        }
    }

    // The rest of the server messages, live.
    let (u2, _) = join_room(server.addr, "test", "u2").await;
    let (value, message) = next_raw(&mut ws).await;
    same_shape(&value);
    assert!(
        matches!(message, ServerMessage::PresenceJoin { .. }),
        "{message:?}"
    );
    hang_up(u2).await;
    let (value, message) = next_raw(&mut ws).await;
    same_shape(&value);
    assert!(
        matches!(message, ServerMessage::PresenceLeave { .. }),
        "{message:?}"
    );
    let body = json!({ "message": "{\"order\":1}" }).to_string();
    let reply = http(server.addr, Method::POST, "/notify/u1", &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (value, message) = next_raw(&mut ws).await;
    same_shape(&value);
    assert_eq!(message, samples["notification"]);
    server.signal();
    let (value, message) = next_raw(&mut ws).await;
    same_shape(&value);
    // The text is the fixture's; the reconnect hint is each client's own.
    match (message, &samples["system.shutdown"]) {
        (
            ServerMessage::Shutdown {
                message,
                reconnect_after_ms: Some(hint),
            },
            ServerMessage::Shutdown { message: want, .. },
        ) => {
            assert_eq!(&message, want);
            assert!(hint <= Config::default().drain_reconnect_spread.as_millis() as u64);
        }
        (other, _) => panic!("expected system.shutdown with a hint, got {other:?}"),
    }
}

// ---------------------------------------------------------------- concurrency

/// Reads `ws` until its view of the room (roster `known`, plus presence.join,
/// minus presence.leave) is `done`, or `deadline` passes; returns the view.
async fn settle(
    ws: &mut Ws,
    mut known: BTreeSet<String>,
    done: impl Fn(&BTreeSet<String>) -> bool,
    deadline: tokio::time::Instant,
) -> BTreeSet<String> {
    while !done(&known) {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout_at(deadline, ws.next()).await
        else {
            break;
        };
        match ServerMessage::decode(&text) {
            Ok(ServerMessage::PresenceJoin { user, .. }) => {
                known.insert(user);
            }
            Ok(ServerMessage::PresenceLeave { user, .. }) => {
                known.remove(&user);
            }
            _ => {}
        }
    }
    known
}

/// Joins `room` as each of `users` at once, on a multi-threaded server;
/// returns the connections with their rosters.
async fn join_all(
    addr: std::net::SocketAddr,
    room: &str,
    users: &[String],
) -> Vec<(String, Ws, Vec<String>)> {
    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            let (room, user) = (room.to_owned(), user.clone());
            tokio::spawn(async move {
                let (ws, roster) = join_room(addr, &room, &user).await;
                (user, ws, roster)
            })
        })
        .collect();
    let mut joined = Vec::new();
    for task in tasks {
        joined.push(task.await.unwrap());
    }
    joined
}

// Users joining a room at the same moment must each end up knowing all the
// others, from the roster or from a presence.join. A race can only be shown
// by trying: a correct server passes every round, so this never fails
// spuriously.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_joiners_each_learn_every_member_from_the_roster_or_presence_join() {
    let server = TestServer::quiet().await;
    for round in 0..10 {
        let room = format!("race{round}");
        let users: Vec<String> = (0..48).map(|i| format!("u{i}")).collect();
        let wanted: BTreeSet<String> = users.iter().cloned().collect();
        let mut blind = Vec::new();
        let mut conns = Vec::new();
        let joined = join_all(server.addr, &room, &users).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for (user, mut ws, roster) in joined {
            let view = settle(
                &mut ws,
                roster.into_iter().collect(),
                |view| *view == wanted,
                deadline,
            )
            .await;
            if view != wanted {
                blind.push((user, wanted.difference(&view).cloned().collect::<Vec<_>>()));
            }
            conns.push(ws);
        }
        assert!(
            blind.is_empty(),
            "round {round}: users that never learnt of some members (neither in their \
             room.joined nor by presence.join): {blind:?}"
        );
        for ws in conns {
            hang_up(ws).await;
        }
    }
    wait_for_connections(server.addr, 0).await;
    server.signal();
    assert!(matches!(
        server.finished().await,
        wsnotify::Outcome::Drained(_)
    ));
}

// Users leaving while others join: a joiner must not keep a leaver it saw in
// its roster but whose presence.leave it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_joiner_never_keeps_a_member_who_left_while_it_joined() {
    let server = TestServer::quiet().await;
    for round in 0..10 {
        let room = format!("churn{round}");
        let old: Vec<String> = (0..24).map(|i| format!("old{i}")).collect();
        let new: Vec<String> = (0..24).map(|i| format!("new{i}")).collect();
        let leaving = join_all(server.addr, &room, &old).await;
        let hang_ups = tokio::spawn(async move {
            for (_, ws, _) in leaving {
                drop(ws);
                tokio::task::yield_now().await;
            }
        });
        let joined = join_all(server.addr, &room, &new).await;
        hang_ups.await.unwrap();
        let wanted: BTreeSet<String> = new.iter().cloned().collect();
        let mut wrong = Vec::new();
        let mut conns = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for (user, mut ws, roster) in joined {
            // Only the leavers matter here (missing joiners are the test above).
            let view = settle(
                &mut ws,
                roster.into_iter().collect(),
                |view| view.is_subset(&wanted),
                deadline,
            )
            .await;
            let stale: Vec<String> = view.difference(&wanted).cloned().collect();
            if !stale.is_empty() {
                wrong.push((user, stale));
            }
            conns.push(ws);
        }
        assert!(
            wrong.is_empty(),
            "round {round}: joiners that still count users who left (listed in their \
             room.joined, presence.leave never received): {wrong:?}"
        );
        for ws in conns {
            hang_up(ws).await;
        }
    }
    wait_for_connections(server.addr, 0).await;
    server.signal();
    assert!(matches!(
        server.finished().await,
        wsnotify::Outcome::Drained(_)
    ));
}

/// A client that stops reading but keeps asking for a large roster cannot
/// make the server hoard frames for it: its session builds rosters only while
/// their writes go through, so once the socket is full it stops reading the
/// client's requests too. Memory stays bounded by the socket buffers, the
/// client is not cut off, and the room goes on.
#[tokio::test]
async fn a_client_hoarding_rosters_costs_no_more_than_its_socket_buffers() {
    let server = TestServer::start(Config {
        notification_interval: Duration::ZERO,
        rate_limit: 0,
        ..Config::default()
    })
    .await;
    // A roster of ~5 KiB: 40 members with 120-byte names.
    let mut members = Vec::new();
    for i in 0..40 {
        let (ws, _) = join_room(server.addr, "big", &format!("{i:0>120}")).await;
        members.push(ws);
    }
    let mut hoarder = RawWs::handshake(server.addr, "/ws/rooms/big?user=hoarder").await;
    let join = ClientMessage::RoomJoin {
        room: "big".into(),
        since: None,
    }
    .encode();
    // 4000 × ~5 KiB = ~20 MiB of rosters asked for, never read.
    let asking = tokio::spawn(async move {
        for _ in 0..4000 {
            hoarder.send_frame(true, op::TEXT, join.as_bytes()).await;
        }
        hoarder
    });
    // All 4000 requests fit in the socket buffers; give the server time to
    // do all it will with them (nothing to await: the point is that it stops).
    let hoarder = asking.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut calm = members.remove(0);
    let reply = publish(server.addr, "big", r#"{"text":"after"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    loop {
        // Presence events of the set-up come first.
        if let ServerMessage::Delivery { text, .. } = next_json(&mut calm).await {
            assert_eq!(text, "after");
            break;
        }
    }
    // Had the ~20 MiB of rosters been queued, the 16 MiB byte bound would
    // have cut the hoarder off; it is still connected.
    let metrics = http(server.addr, Method::GET, "/metrics", "").await.body;
    assert!(metrics.contains("wsnotify_slow_consumer_disconnects_total 0"));
    assert!(
        metrics.contains("wsnotify_active_connections 41"),
        "{metrics}"
    );
    drop(hoarder);
}
