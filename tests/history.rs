//! History and resume in memory mode, with real clients over real sockets:
//! positions on every delivery, resume over WebSocket (URL `since` and
//! `room.join` with `since`), every reason a stream cannot be recovered,
//! the race between the history read and going live, idempotent
//! publishing, and the bad input of all of it.

mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::history::*;
use support::*;
use wsnotify::Config;
use wsnotify::protocol::json::{ClientMessage, ErrorCode, Reason, ServerMessage};

async fn server() -> TestServer {
    TestServer::start(history_config()).await
}

/// The position a JSON client of `user` starts at, as its first
/// `stream.position` of the user stream says.
async fn head_of(server: &TestServer, user: &str) -> At {
    let (_, resumed) =
        connect_following(server.addr, &format!("/ws/notifications?user={user}"), 2).await;
    resumed[0].at.clone()
}

#[tokio::test]
async fn every_delivery_carries_its_position_and_offsets_are_dense() {
    let server = server().await;
    let (mut ws, resumed) = connect_following(server.addr, "/ws/rooms/lobby?user=alice", 3).await;
    let streams: Vec<&str> = resumed.iter().map(|r| r.at.stream.as_str()).collect();
    assert_eq!(streams, ["user:alice", "broadcast", "room:lobby"]);
    assert!(
        resumed
            .iter()
            .all(|r| r.at.offset == 0 && r.recovered.is_none())
    );
    for i in 1..=3u64 {
        let sent = notify(server.addr, "alice", &format!("n{i}")).await;
        let (at, message) = next_placed(&mut ws).await;
        assert_eq!(at, sent);
        assert_eq!((at.stream.as_str(), at.offset), ("user:alice", i));
        assert_eq!(at.epoch, resumed[0].at.epoch);
        assert_eq!(text_of(&message), format!("n{i}"));
    }
    let sent = broadcast_at(server.addr, "to all").await;
    let (at, message) = next_placed(&mut ws).await;
    assert_eq!((at, text_of(&message)), (sent, "to all".to_owned()));
    send_json(&mut ws, &chat("lobby", "hi")).await;
    let (at, message) = next_placed(&mut ws).await;
    assert_eq!((at.stream.as_str(), at.offset), ("room:lobby", 1));
    assert_eq!(text_of(&message), "hi");
}

#[tokio::test]
async fn a_client_that_comes_back_gets_what_it_missed_in_order_then_live() {
    let server = server().await;
    let head = head_of(&server, "bob").await;
    let room = publish_room(server.addr, "r", "first").await;
    for i in 1..=5 {
        notify(server.addr, "bob", &format!("missed {i}")).await;
    }
    let given = since(&[head, At::new("room:r", &room.epoch, 0)]);
    let mut ws = connect_raw(server.addr, &format!("/ws/rooms/r?user=bob&since={given}")).await;
    // Each stream's position, then exactly what it missed, then the next.
    let mut order = Vec::new();
    let mut replay = Vec::new();
    while order.len() < 3 + 5 + 1 {
        match next_json_or_position(&mut ws).await {
            ServerMessage::Position {
                stream, recovered, ..
            } => order.push(format!("position {stream} {recovered:?}")),
            message if message.at().is_some() => {
                let at = message.at().unwrap();
                order.push(format!("{} {}", at.stream, at.offset));
                replay.push(text_of(&message));
            }
            _ => {}
        }
    }
    assert_eq!(
        order,
        [
            "position user:bob Some(true)",
            "user:bob 1",
            "user:bob 2",
            "user:bob 3",
            "user:bob 4",
            "user:bob 5",
            "position broadcast None",
            "position room:r Some(true)",
            "room:r 1",
        ]
    );
    assert_eq!(
        replay[..5],
        ["missed 1", "missed 2", "missed 3", "missed 4", "missed 5"]
    );
    // Then live, contiguous.
    notify(server.addr, "bob", "live").await;
    let (at, message) = next_placed(&mut ws).await;
    assert_eq!((at.offset, text_of(&message)), (6, "live".to_owned()));
}

#[tokio::test]
async fn a_quiet_client_at_the_head_is_recovered_with_nothing_to_replay() {
    let server = server().await;
    let at = notify(server.addr, "q", "one").await;
    let given = since(std::slice::from_ref(&at));
    let (mut ws, resumed) = connect_following(
        server.addr,
        &format!("/ws/notifications?user=q&since={given}"),
        2,
    )
    .await;
    assert_eq!(resumed[0].at, at);
    assert_eq!(resumed[0].recovered, Some(true));
    assert_eq!(resumed[0].reason, None);
    assert_silent(&mut ws).await;
}

#[tokio::test]
async fn each_reason_a_stream_cannot_be_recovered_is_told_and_nothing_is_replayed() {
    let server = TestServer::start(Config {
        history_size: 3,
        outbound_queue: 16,
        ..history_config()
    })
    .await;
    let head = head_of(&server, "u").await;
    for i in 0..5 {
        notify(server.addr, "u", &format!("m{i}")).await;
    }
    let cases = [
        // Beyond HISTORY_SIZE (3 kept: 3, 4, 5).
        (At::new("user:u", &head.epoch, 1), Reason::TooOld),
        // Another epoch, no epoch, a position beyond the head.
        (At::new("user:u", "0000deadbeef", 5), Reason::EpochChanged),
        (At::new("user:u", "", 5), Reason::EpochChanged),
        (At::new("user:u", &head.epoch, 9), Reason::EpochChanged),
    ];
    for (current, (given, reason)) in (5..).zip(cases) {
        let path = format!(
            "/ws/notifications?user=u&since={}",
            since(std::slice::from_ref(&given))
        );
        let (mut ws, resumed) = connect_following(server.addr, &path, 2).await;
        assert_eq!(resumed[0].recovered, Some(false), "{given:?}");
        assert_eq!(resumed[0].reason, Some(reason), "{given:?}");
        let now = At::new("user:u", &head.epoch, current);
        assert_eq!(resumed[0].at, now, "the current position");
        // No partial replay: the next thing is live.
        notify(server.addr, "u", "after").await;
        let (at, _) = next_placed(&mut ws).await;
        assert_eq!(at.offset, resumed[0].at.offset + 1);
    }
}

#[tokio::test]
async fn a_replay_that_would_not_fit_the_outbound_queue_is_limit() {
    let server = TestServer::start(Config {
        outbound_queue: 8,
        ..history_config()
    })
    .await;
    let head = head_of(&server, "u").await;
    for i in 0..20 {
        notify(server.addr, "u", &format!("m{i}")).await;
    }
    let path = format!("/ws/notifications?user=u&since={}", since(&[head]));
    let (_ws, resumed) = connect_following(server.addr, &path, 2).await;
    assert_eq!(
        (resumed[0].recovered, resumed[0].reason),
        (Some(false), Some(Reason::Limit))
    );
}

#[tokio::test]
async fn a_memory_mode_restart_is_a_new_epoch() {
    let first = server().await;
    let at = notify(first.addr, "u", "before").await;
    first.signal();
    first.finished().await;
    let second = server().await;
    let path = format!(
        "/ws/notifications?user=u&since={}",
        since(std::slice::from_ref(&at))
    );
    let (_ws, resumed) = connect_following(second.addr, &path, 2).await;
    assert_eq!(resumed[0].reason, Some(Reason::EpochChanged));
    assert_ne!(resumed[0].at.epoch, at.epoch);
}

#[tokio::test]
async fn a_publish_between_the_history_read_and_going_live_arrives_once_in_order() {
    // The hook holds every resume for 300 ms between its read and going
    // live; publishes land in that window.
    let server = TestServer::start(Config {
        test_resume_delay: Duration::from_millis(300),
        ..history_config()
    })
    .await;
    let head = head_of(&server, "w").await;
    notify(server.addr, "w", "m1").await;
    let path = format!("/ws/notifications?user=w&since={}", since(&[head]));
    let mut ws = connect_raw(server.addr, &path).await;
    // While that connection reads its history and waits:
    tokio::time::sleep(Duration::from_millis(100)).await;
    notify(server.addr, "w", "m2").await;
    notify(server.addr, "w", "m3").await;
    let resumed = expect_position(&mut ws).await;
    assert_eq!(resumed.recovered, Some(true));
    let mut got = Vec::new();
    while got.len() < 3 {
        let (at, message) = next_placed(&mut ws).await;
        got.push((at.offset, text_of(&message)));
    }
    assert_eq!(got, [(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]);
    let _ = expect_position(&mut ws).await; // broadcast
    assert_silent(&mut ws).await;
}

#[tokio::test]
async fn room_join_with_since_resumes_that_room_and_positions_in_the_url_wait_for_their_join() {
    let server = server().await;
    let a0 = publish_room(server.addr, "a", "a0").await;
    let b0 = publish_room(server.addr, "b", "b0").await;
    publish_room(server.addr, "a", "a1").await;
    publish_room(server.addr, "b", "b1").await;
    // `b`'s position rides in the URL, `a`'s comes with room.join.
    let url_since = since(std::slice::from_ref(&b0));
    let (mut ws, _) = connect_following(
        server.addr,
        &format!("/ws/notifications?user=j&since={url_since}"),
        2,
    )
    .await;
    let join_a = ClientMessage::RoomJoin {
        room: "a".into(),
        since: Some(format!("room:a~{}~{}", a0.epoch, a0.offset)),
    };
    send_json(&mut ws, &join_a).await;
    let resumed = expect_position(&mut ws).await;
    assert_eq!(
        (resumed.at.stream.as_str(), resumed.recovered),
        ("room:a", Some(true))
    );
    let (at, message) = next_placed(&mut ws).await;
    assert_eq!(
        (at.stream.as_str(), at.offset, text_of(&message)),
        ("room:a", 2, "a1".into())
    );
    send_json(&mut ws, &join("b")).await;
    let resumed = expect_position(&mut ws).await;
    assert_eq!(
        (resumed.at.stream.as_str(), resumed.recovered),
        ("room:b", Some(true))
    );
    let (at, _) = next_placed(&mut ws).await;
    assert_eq!((at.stream.as_str(), at.offset), ("room:b", 2));
}

#[tokio::test]
async fn bad_and_foreign_positions_are_refused_and_the_connection_stays() {
    let server = server().await;
    // A malformed since: system.error invalid_cursor, then a fresh start.
    let mut ws = connect_raw(server.addr, "/ws/notifications?user=x&since=garbage").await;
    match next_json_or_position(&mut ws).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidCursor),
        other => panic!("expected invalid_cursor, got {other:?}"),
    }
    let resumed = expect_position(&mut ws).await;
    assert_eq!(
        (resumed.at.stream.as_str(), resumed.recovered),
        ("user:x", None)
    );
    // Another user's stream: refused, and nothing of it is sent.
    notify(server.addr, "victim", "secret").await;
    let foreign = since(&[At::new("user:victim", "e", 0)]);
    let mut ws = connect_raw(
        server.addr,
        &format!("/ws/notifications?user=x&since={foreign}"),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        match next_json_or_position(&mut ws).await {
            ServerMessage::Error { code, message } => {
                assert!(!message.contains("secret"));
                codes.push(code);
            }
            ServerMessage::Position { stream, .. } => assert_ne!(stream, "user:victim"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(codes, [ErrorCode::ForbiddenStream]);
    // room.join with a bad since: refused, not joined; the connection stays.
    send(
        &mut ws,
        &json!({"type":"room.join","room":"r","since":"nope"}).to_string(),
    )
    .await;
    match next_json(&mut ws).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidCursor),
        other => panic!("expected invalid_cursor, got {other:?}"),
    }
    send_json(&mut ws, &chat("r", "hi")).await;
    match next_json(&mut ws).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::NotInRoom),
        other => panic!("expected not_in_room, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retried_publish_with_the_same_idempotency_key_gets_one_offset() {
    let server = server().await;
    let (mut ws, _) = connect_following(server.addr, "/ws/notifications?user=i", 2).await;
    let body = json!({ "message": "once" }).to_string();
    let first = post_with_key(server.addr, "/notify/i", &body, "order-7-shipped").await;
    let again = post_with_key(server.addr, "/notify/i", &body, "order-7-shipped").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(position_of(&first), position_of(&again));
    assert_eq!(again.json()["duplicate"], true);
    assert!(first.json().get("duplicate").is_none());
    let (at, _) = next_placed(&mut ws).await;
    assert_eq!(at, position_of(&first));
    assert_silent(&mut ws).await;
    // Another key, another offset; the rooms and broadcasts take keys too.
    let other = post_with_key(server.addr, "/notify/i", &body, "order-8").await;
    assert_eq!(position_of(&other).offset, at.offset + 1);
    let room_body = json!({ "text": "t" }).to_string();
    let r1 = post_with_key(server.addr, "/rooms/r/publish", &room_body, "k").await;
    let r2 = post_with_key(server.addr, "/rooms/r/publish", &room_body, "k").await;
    assert_eq!(position_of(&r1), position_of(&r2));
    let b1 = post_with_key(server.addr, "/broadcast", &body, "k").await;
    let b2 = post_with_key(server.addr, "/broadcast", &body, "k").await;
    assert_eq!(position_of(&b1), position_of(&b2));
    // Over 128 bytes: 400.
    let long = "k".repeat(129);
    let refused = post_with_key(server.addr, "/notify/i", &body, &long).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["error"].as_str().unwrap().contains("128"));
}

#[tokio::test]
async fn health_and_metrics_show_history() {
    let server = server().await;
    notify(server.addr, "h", "x").await;
    let health = http(server.addr, Method::GET, "/health", "").await.json();
    assert_eq!(health["history"]["enabled"], true);
    assert_eq!(health["history"]["size"], 100);
    assert_eq!(health["history"]["entries"], 1);
    let head = head_of(&server, "h").await;
    let path = format!(
        "/ws/notifications?user=h&since={}",
        since(&[At::new("user:h", &head.epoch, 0)])
    );
    let mut ws = connect_raw(server.addr, &path).await;
    assert_eq!(expect_position(&mut ws).await.recovered, Some(true));
    assert_eq!(next_placed(&mut ws).await.0.offset, 1);
    let metrics = wait_for_metric(
        server.addr,
        r#"wsnotify_resumes_total{outcome="recovered",reason="none"} 1"#,
    )
    .await;
    assert!(metrics.contains("wsnotify_history_entries 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wsnotify_history_bytes ") && l != "wsnotify_history_bytes 0")
    );
}
