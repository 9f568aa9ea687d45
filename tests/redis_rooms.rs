//! Rooms and presence across several wsnotify instances on one real Redis
//! (testcontainers), with real WebSocket clients: room messages and
//! `POST /rooms/{room}/publish` crossing instances exactly once, presence
//! kept in Redis (joins, leaves, the same user on two instances, expiry after
//! an instance is killed), an external publisher on `rooms:{room}`, per-user
//! notifications to room connections, and Redis going away and coming back.
//!
//! Races are closed by waiting for events, not by sleeping: a [`RoomWatch`]
//! (a plain Redis client on the pattern `rooms:*`, which `PUBSUB NUMSUB`
//! does not count) sees when an instance has published an announcement, so
//! a client that connects afterwards cannot receive it late.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::process::Proc;
use support::redis::{
    Redis, config, instance, instance_with, wait_for_ready, wait_for_subscribers,
};
use support::*;
use wsnotify::Config;
use wsnotify::protocol::json::{ClientMessage, ServerMessage};

const ROOM: &str = "test";

/// Presence that expires after 2 s, refreshed every 0.5 s (the heartbeat).
fn short_presence(redis: &Redis) -> Config {
    Config {
        presence_ttl: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(500),
        ..config(redis)
    }
}

/// The same settings for the real binary, as environment variables.
fn short_presence_env(redis: &Redis) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.url()),
        ("PORT", "0".to_owned()),
        ("PRESENCE_TTL", "2".to_owned()),
        ("HEARTBEAT_INTERVAL", "0.5".to_owned()),
        ("REDIS_REFRESH_INTERVAL", "0.3".to_owned()),
        ("REDIS_TIMEOUT", "0.5".to_owned()),
        ("NOTIFICATION_INTERVAL", "0".to_owned()),
    ]
}

async fn start_proc(env: &[(&'static str, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::start(&env).await
}

/// Waits until `n` instances hold `user` in `room` (the presence-of set).
async fn wait_for_holders(redis: &Redis, room: &str, user: &str, n: usize) {
    let key = wsnotify::broker::redis::holders_key(room, user);
    let mut conn = redis.client().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let holders: usize = ::redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if holders == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} has {holders} instances, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /rooms/{room}/presence`, which must answer 200.
/// The presence answer of a healthy instance listing `users`.
fn listing(room: &str, users: &[&str]) -> Value {
    json!({ "room": room, "users": users, "count": users.len() })
}

/// Polls the presence endpoint until it lists exactly `users` (sorted).
async fn wait_for_presence(addr: SocketAddr, room: &str, users: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = presence(addr, room).await;
        if now == listing(room, users) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence of {room} stayed {now}, wanted {users:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message is `user`'s chat line `text` in [`ROOM`]: its `(id, ts)`.
async fn expect_said(ws: &mut Ws, user: &str, text: &str) -> (String, u64) {
    expect_delivery(ws, ROOM, user, text).await
}

async fn expect_join_in(ws: &mut Ws, room: &str, user: &str) {
    match next_json(ws).await {
        ServerMessage::PresenceJoin {
            room: r, user: u, ..
        } => {
            assert_eq!((r.as_str(), u.as_str()), (room, user))
        }
        other => panic!("expected presence.join of {user} in {room}, got {other:?}"),
    }
}

async fn expect_join(ws: &mut Ws, user: &str) {
    expect_join_in(ws, ROOM, user).await
}

async fn expect_leave(ws: &mut Ws, user: &str) {
    match next_json(ws).await {
        ServerMessage::PresenceLeave { room, user: u, .. } => {
            assert_eq!((room.as_str(), u.as_str()), (ROOM, user))
        }
        other => panic!("expected presence.leave of {user}, got {other:?}"),
    }
}

/// Sees what the instances publish on the room channels: a plain Redis
/// client subscribed to the pattern `rooms:*`.
struct RoomWatch {
    messages: ::redis::aio::PubSubStream,
}

impl RoomWatch {
    async fn start(redis: &Redis) -> Self {
        let client = ::redis::Client::open(redis.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.expect("connect to Redis");
        pubsub.psubscribe("rooms:*").await.unwrap();
        RoomWatch {
            messages: pubsub.into_on_message(),
        }
    }

    /// Waits until some instance has published `presence.join` of `user` in
    /// `room`: from then on every subscriber of `rooms:{room}` has had it.
    async fn joined(&mut self, room: &str, user: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.messages.next())
                .await
                .unwrap_or_else(|_| panic!("presence.join of {user} in {room} never published"))
                .expect("the watch's subscription ended");
            if message.get_channel_name() != format!("rooms:{room}") {
                continue;
            }
            let envelope: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
            let text = envelope["message"]
                .as_str()
                .expect("an instance's envelope");
            if let Ok(ServerMessage::PresenceJoin { user: u, .. }) = ServerMessage::decode(text)
                && u == user
            {
                return;
            }
        }
    }
}

/// Asserts that `ws` receives nothing but heartbeats for a while.
async fn assert_quiet(ws: &mut Ws, window: Duration) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(message) = tokio::time::timeout_at(deadline, ws.next()).await {
        let message = message.expect("stream ended").expect("WebSocket error");
        match &message {
            tokio_tungstenite::tungstenite::Message::Ping(_)
            | tokio_tungstenite::tungstenite::Message::Pong(_) => {}
            tokio_tungstenite::tungstenite::Message::Text(text)
                if matches!(ServerMessage::decode(text), Ok(ServerMessage::Ping { .. })) => {}
            _ => panic!("expected silence, got {message:?}"),
        }
    }
}

/// 1. A chat message crosses instances: each member, on either instance,
///    gets it exactly once; members of another room get nothing.
#[tokio::test]
async fn a_chat_message_reaches_members_on_every_instance_exactly_once() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);

    // Bystanders in another room, one per instance.
    let (mut lobby_a, roster) = join_room(a.addr, "lobby", "l1").await;
    assert_eq!(roster, ["l1"]);
    watch.joined("lobby", "l1").await;
    let (mut lobby_b, roster) = join_room(b.addr, "lobby", "l2").await;
    assert_eq!(roster, ["l1", "l2"]);
    wait_for_subscribers(&redis, "rooms:lobby", 2).await;
    expect_join_in(&mut lobby_a, "lobby", "l2").await;

    let (mut u1, roster) = join_room(a.addr, ROOM, "u1").await;
    assert_eq!(roster, ["u1"]);
    watch.joined(ROOM, "u1").await;
    let (mut u2, roster) = join_room(b.addr, ROOM, "u2").await;
    assert_eq!(roster, ["u1", "u2"]);
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u2").await; // B's announcement, through Redis

    send_json(&mut u1, &chat(ROOM, "hello from A")).await;
    let on_a = expect_said(&mut u1, "u1", "hello from A").await;
    let on_b = expect_said(&mut u2, "u1", "hello from A").await;
    assert_eq!(on_a, on_b, "one message, the same id and ts everywhere");
    let first = on_a.0;

    send_json(&mut u2, &chat(ROOM, "hello from B")).await;
    let on_b = expect_said(&mut u2, "u2", "hello from B").await;
    let on_a = expect_said(&mut u1, "u2", "hello from B").await;
    assert_eq!(on_a, on_b);
    assert_ne!(on_a.0, first, "each message has its own id");

    for ws in [&mut u1, &mut u2, &mut lobby_a, &mut lobby_b] {
        assert_silent(ws).await;
    }
}

/// 2. `POST /rooms/{room}/publish` on one instance reaches the members on
///    every instance exactly once, with the id and ts of its answer.
#[tokio::test]
async fn publishing_over_http_reaches_members_on_every_instance_exactly_once() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let (mut u1, _) = join_room(a.addr, ROOM, "u1").await;
    watch.joined(ROOM, "u1").await;
    let (mut u2, roster) = join_room(b.addr, ROOM, "u2").await;
    assert_eq!(roster, ["u1", "u2"]);
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u2").await;
    let (mut elsewhere, _) = join_room(b.addr, "elsewhere", "u3").await;

    let reply = http(
        a.addr,
        Method::POST,
        "/rooms/test/publish",
        r#"{"text":"deploy done","user":"ops"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["status"], "Message published");
    assert_eq!(body["room"], ROOM);
    assert_eq!(body["local_recipients"], 1, "only u1 is on A");
    let sent = (
        body["id"].as_str().unwrap().to_owned(),
        body["ts"].as_u64().unwrap(),
    );
    assert_eq!(expect_said(&mut u1, "ops", "deploy done").await, sent);
    assert_eq!(expect_said(&mut u2, "ops", "deploy done").await, sent);

    // From B, with `message` for `text` and the default sender.
    let reply = http(
        b.addr,
        Method::POST,
        "/rooms/test/publish",
        r#"{"message":"rolled back"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["local_recipients"], 1);
    let sent = (
        reply.json()["id"].as_str().unwrap().to_owned(),
        reply.json()["ts"].as_u64().unwrap(),
    );
    assert_eq!(expect_said(&mut u2, "server", "rolled back").await, sent);
    assert_eq!(expect_said(&mut u1, "server", "rolled back").await, sent);

    for ws in [&mut u1, &mut u2, &mut elsewhere] {
        assert_silent(ws).await;
    }
}

/// 3a. Presence is the union of the instances: rosters, the endpoint on
///     either instance, presence.join and presence.leave through Redis.
#[tokio::test]
async fn presence_spans_instances_and_follows_joins_and_leaves() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);

    let (mut u1, roster) = join_room(a.addr, ROOM, "u1").await;
    assert_eq!(roster, ["u1"]);
    watch.joined(ROOM, "u1").await; // A has recorded u1 in Redis
    wait_for_presence(b.addr, ROOM, &["u1"]).await;
    let (mut u2, roster) = join_room(b.addr, ROOM, "u2").await;
    assert_eq!(roster, ["u1", "u2"], "B's roster includes A's user");
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u2").await; // from B, through Redis

    for addr in [a.addr, b.addr] {
        assert_eq!(presence(addr, ROOM).await, listing(ROOM, &["u1", "u2"]));
    }
    assert_eq!(presence(a.addr, "empty").await, listing("empty", &[]));

    u2.close(None).await.unwrap();
    expect_leave(&mut u1, "u2").await;
    for addr in [a.addr, b.addr] {
        assert_eq!(presence(addr, ROOM).await, listing(ROOM, &["u1"]));
    }
    assert_silent(&mut u1).await;
}

/// 3b. The same user on two instances is present while either connection
///     is: closing one announces nothing, closing the last one announces
///     presence.leave everywhere.
#[tokio::test]
async fn a_user_on_two_instances_leaves_when_the_last_connection_closes() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);

    // A watcher on each instance.
    let (mut wa, _) = join_room(a.addr, ROOM, "wa").await;
    watch.joined(ROOM, "wa").await;
    let (mut wb, roster) = join_room(b.addr, ROOM, "wb").await;
    assert_eq!(roster, ["wa", "wb"]);
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut wa, "wb").await;

    let (mut u1_a, roster) = join_room(a.addr, ROOM, "u1").await;
    assert_eq!(roster, ["u1", "wa", "wb"]);
    expect_join(&mut wa, "u1").await;
    expect_join(&mut wb, "u1").await;

    // u1 again, on B: already present, so no announcement.
    let (mut u1_b, roster) = join_room(b.addr, ROOM, "u1").await;
    assert_eq!(roster, ["u1", "wa", "wb"]);
    wait_for_holders(&redis, ROOM, "u1", 2).await;
    for ws in [&mut wa, &mut wb, &mut u1_a] {
        assert_silent(ws).await;
    }

    // B's connection closes: u1 is still on A.
    u1_b.close(None).await.unwrap();
    wait_for_holders(&redis, ROOM, "u1", 1).await;
    for ws in [&mut wa, &mut wb, &mut u1_a] {
        assert_silent(ws).await;
    }
    for addr in [a.addr, b.addr] {
        assert_eq!(
            presence(addr, ROOM).await,
            listing(ROOM, &["u1", "wa", "wb"])
        );
    }

    // A's closes too: now u1 is gone, and everyone hears it once.
    u1_a.close(None).await.unwrap();
    expect_leave(&mut wa, "u1").await;
    expect_leave(&mut wb, "u1").await;
    for addr in [a.addr, b.addr] {
        assert_eq!(presence(addr, ROOM).await, listing(ROOM, &["wa", "wb"]));
    }
    for ws in [&mut wa, &mut wb] {
        assert_silent(ws).await;
    }
}

/// 4. A killed instance cannot withdraw its users: they expire after
///    PRESENCE_TTL and the next refresh of a surviving instance announces
///    presence.leave.
#[tokio::test]
async fn a_killed_instances_users_expire_after_the_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let mut k = start_proc(&short_presence_env(&redis)).await;
    wait_for_ready(k.addr, StatusCode::OK).await;
    let a = instance_with(short_presence(&redis)).await;

    let (_dead, roster) = join_room(k.addr, ROOM, "u_dead").await;
    assert_eq!(roster, ["u_dead"]);
    watch.joined(ROOM, "u_dead").await;
    let (mut live, roster) = join_room(a.addr, ROOM, "u_live").await;
    assert_eq!(roster, ["u_dead", "u_live"]);
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    wait_for_presence(a.addr, ROOM, &["u_dead", "u_live"]).await;
    // Entries are refreshed, not left to expire, while K lives.
    assert_quiet(&mut live, TTL + Duration::from_millis(500)).await;
    assert_eq!(
        presence(a.addr, ROOM).await,
        listing(ROOM, &["u_dead", "u_live"])
    );

    let killed = Instant::now();
    k.signal(libc::SIGKILL);
    assert_eq!(
        presence(a.addr, ROOM).await,
        listing(ROOM, &["u_dead", "u_live"]),
        "K's last refresh is still valid right after the kill"
    );
    let announced = async {
        let leave = tokio::time::timeout(Duration::from_secs(8), next_json(&mut live))
            .await
            .expect("no presence.leave within 8 s of the kill");
        let at = killed.elapsed();
        match leave {
            ServerMessage::PresenceLeave { room, user, .. } => {
                assert_eq!((room.as_str(), user.as_str()), (ROOM, "u_dead"))
            }
            other => panic!("expected presence.leave of u_dead, got {other:?}"),
        }
        at
    };
    let unlisted = async {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if presence(a.addr, ROOM).await == listing(ROOM, &["u_live"]) {
                return killed.elapsed();
            }
            assert!(Instant::now() < deadline, "u_dead still listed after 8 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (announced, unlisted) = tokio::join!(announced, unlisted);
    let _ = k.exit(PATIENCE).await;
    eprintln!(
        "presence expiry (TTL {TTL:?}, refresh 0.5 s): unlisted {:.3} s and presence.leave {:.3} s after SIGKILL",
        unlisted.as_secs_f64(),
        announced.as_secs_f64()
    );
    // K refreshed at most 0.5 s before the kill: its entry lives 1.5..=2 s
    // more, and A sweeps it within one refresh period after that.
    let window = Duration::from_secs(1)..=Duration::from_secs(6);
    assert!(window.contains(&unlisted), "unlisted after {unlisted:?}");
    assert!(window.contains(&announced), "announced after {announced:?}");
    assert_eq!(presence(a.addr, ROOM).await, listing(ROOM, &["u_live"]));
    assert_quiet(&mut live, Duration::from_millis(700)).await;
}

/// 5. Anything an external publisher puts on `rooms:{room}` that is not an
///    instance's envelope reaches the members on every instance as it is.
#[tokio::test]
async fn an_external_publish_on_a_room_channel_reaches_every_instance_as_is() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let (mut u1, _) = join_room(a.addr, ROOM, "u1").await;
    watch.joined(ROOM, "u1").await;
    let (mut u2, _) = join_room(b.addr, ROOM, "u2").await;
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u2").await;
    let (mut elsewhere, _) = join_room(a.addr, "elsewhere", "u3").await;

    let mut conn = redis.client().await;
    for payload in [
        r#"{"type":"chat.delivery","room":"test","user":"backend","text":"from outside","id":"ext-1","ts":1700000000000}"#,
        // JSON with a `message` key but no `origin` is not an envelope.
        r#"{"type":"system.shutdown","message":"maintenance at noon"}"#,
        r#"{"sender_id":"backend","message":"seed-style"}"#,
    ] {
        let receivers: usize = ::redis::cmd("PUBLISH")
            .arg("rooms:test")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(receivers, 3, "two instances and the watch");
        for ws in [&mut u1, &mut u2] {
            assert_eq!(next_text(ws).await, payload);
        }
    }
    for ws in [&mut u1, &mut u2, &mut elsewhere] {
        assert_silent(ws).await;
    }
}

/// 6. A per-user notification reaches a room connection of that user on
///    another instance, as a `notification` message.
#[tokio::test]
async fn a_notification_reaches_a_room_connection_on_another_instance() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let (mut u1, _) = join_room(b.addr, ROOM, "u1").await;
    watch.joined(ROOM, "u1").await;
    let (mut u2, _) = join_room(a.addr, ROOM, "u2").await;
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u2").await;
    wait_for_subscribers(&redis, "notifications:u1", 1).await;

    for (message, data) in [
        (
            r#"{"order":42,"status":"shipped"}"#,
            json!({"order": 42, "status": "shipped"}),
        ),
        ("parcel at the door", json!("parcel at the door")),
    ] {
        let body = json!({ "message": message }).to_string();
        let reply = http(a.addr, Method::POST, "/notify/u1", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.json(),
            json!({"status": "Notification sent", "instances": 1})
        );
        assert_eq!(
            next_json(&mut u1).await,
            ServerMessage::Notification { data, at: None }
        );
    }
    for ws in [&mut u1, &mut u2] {
        assert_silent(ws).await;
    }
}

/// 7. Redis going away: rooms keep working on each instance, presence
///    answers with the local users and says so; once Redis is back, room
///    messages cross again and presence is recorded again.
#[tokio::test]
async fn rooms_survive_redis_going_away_and_recover_when_it_returns() {
    let mut redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let (mut u1, _) = join_room(a.addr, ROOM, "u1").await;
    watch.joined(ROOM, "u1").await;
    let (mut u2, roster) = join_room(a.addr, ROOM, "u2").await;
    assert_eq!(roster, ["u1", "u2"]);
    expect_join(&mut u1, "u2").await;
    watch.joined(ROOM, "u2").await;
    let (mut u3, roster) = join_room(b.addr, ROOM, "u3").await;
    assert_eq!(roster, ["u1", "u2", "u3"]);
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    expect_join(&mut u1, "u3").await;
    expect_join(&mut u2, "u3").await;
    drop(watch);

    redis.stop().await;
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    wait_for_ready(b.addr, StatusCode::SERVICE_UNAVAILABLE).await;

    // Local room traffic goes on.
    send_json(&mut u1, &chat(ROOM, "local only")).await;
    expect_said(&mut u1, "u1", "local only").await;
    expect_said(&mut u2, "u1", "local only").await;
    let reply = http(
        a.addr,
        Method::POST,
        "/rooms/test/publish",
        r#"{"text":"still here"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["local_recipients"], 2);
    expect_said(&mut u1, "server", "still here").await;
    expect_said(&mut u2, "server", "still here").await;
    assert_eq!(
        presence(a.addr, ROOM).await,
        json!({
            "room": ROOM,
            "users": ["u1", "u2"],
            "count": 2,
            "broker": "degraded: this instance's users only",
        })
    );
    assert_eq!(
        presence(b.addr, ROOM).await["users"],
        json!(["u3"]),
        "B knows its own users only"
    );
    assert_silent(&mut u3).await; // Pub/Sub keeps nothing for B

    redis.start_again().await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    // Redis restarted empty: both instances have recorded their users again.
    wait_for_presence(b.addr, ROOM, &["u1", "u2", "u3"]).await;
    assert_eq!(
        presence(a.addr, ROOM).await,
        listing(ROOM, &["u1", "u2", "u3"])
    );

    // An instance may re-announce the users whose entries it had to record
    // again (others may have swept them meanwhile), or resend the roster:
    // presence.join of a member (collected) and room.joined of members are
    // tolerated around the next messages.
    let members = ["u1", "u2", "u3"];
    let mut clients = [u1, u2, u3];
    let mut heard = [Vec::new(), Vec::new(), Vec::new()];
    for (from, text, order) in [(0, "across again", [0, 1, 2]), (2, "and back", [2, 0, 1])] {
        send_json(&mut clients[from], &chat(ROOM, text)).await;
        let mut sent = None;
        for i in order {
            let got = next_past_rejoins(&mut clients[i], &members, &mut heard[i]).await;
            let got = expect_delivery_of(got, members[from], text);
            assert_eq!(*sent.get_or_insert_with(|| got.clone()), got);
        }
    }
    for ws in &mut clients {
        assert_silent(ws).await;
    }
    eprintln!(
        "re-announcements after the restart: u1 {:?}, u2 {:?}, u3 {:?}",
        heard[0], heard[1], heard[2]
    );
    // Nobody left, so nobody should hear about themselves.
    for (me, heard) in members.iter().zip(&heard) {
        assert!(
            !heard.contains(&me.to_string()),
            "{me} was told that {me} joined: {heard:?}"
        );
    }
}

/// The next message, past any `presence.join` of a `member` (recorded in
/// `heard`) and any fresh roster of members.
async fn next_past_rejoins(
    ws: &mut Ws,
    members: &[&str],
    heard: &mut Vec<String>,
) -> ServerMessage {
    loop {
        match next_json(ws).await {
            ServerMessage::PresenceJoin { room, user, .. }
                if room == ROOM && members.contains(&user.as_str()) =>
            {
                heard.push(user)
            }
            ServerMessage::Joined { room, users }
                if room == ROOM && users.iter().all(|u| members.contains(&u.as_str())) => {}
            other => return other,
        }
    }
}

/// Asserts that `message` is `user`'s chat line `text`; returns `(id, ts)`.
fn expect_delivery_of(message: ServerMessage, user: &str, text: &str) -> (String, u64) {
    match message {
        ServerMessage::Delivery {
            room: r,
            user: u,
            text: t,
            id,
            ts,
            ..
        } => {
            assert_eq!((r.as_str(), u.as_str(), t.as_str()), (ROOM, user, text));
            (id, ts)
        }
        other => panic!("expected chat.delivery {text:?} from {user}, got {other:?}"),
    }
}

/// What a client makes of a room over `window`: starting from `view` (its
/// roster), the presence events it gets, and those events in order.
async fn follow_presence(
    ws: &mut Ws,
    mut view: BTreeSet<String>,
    window: Duration,
) -> (BTreeSet<String>, Vec<String>) {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(message) = tokio::time::timeout_at(deadline, next_json(ws)).await {
        match message {
            ServerMessage::PresenceJoin { user, .. } => {
                events.push(format!("join {user}"));
                view.insert(user);
            }
            ServerMessage::PresenceLeave { user, .. } => {
                events.push(format!("leave {user}"));
                view.remove(&user);
            }
            ServerMessage::Joined { users, .. } => {
                events.push(format!("roster {users:?}"));
                view = users.into_iter().collect();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (view, events)
}

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// 8. Redis frozen for longer than PRESENCE_TTL while an instance dies:
///    once Redis answers again, every member on every instance ends up with
///    the true roster (the dead instance's user gone, the live ones there),
///    and nobody hears about themselves.
#[tokio::test]
async fn presence_settles_everywhere_after_redis_freezes_longer_than_the_ttl() {
    let redis = Redis::start().await;
    let mut watch = RoomWatch::start(&redis).await;
    let mut k = start_proc(&short_presence_env(&redis)).await;
    wait_for_ready(k.addr, StatusCode::OK).await;
    let (a, b) = (
        instance_with(short_presence(&redis)).await,
        instance_with(short_presence(&redis)).await,
    );
    let (_uk, _) = join_room(k.addr, ROOM, "uk").await;
    watch.joined(ROOM, "uk").await;
    let (mut ua, roster) = join_room(a.addr, ROOM, "ua").await;
    assert_eq!(roster, ["ua", "uk"]);
    watch.joined(ROOM, "ua").await;
    let (mut ub, roster) = join_room(b.addr, ROOM, "ub").await;
    assert_eq!(roster, ["ua", "ub", "uk"]);
    wait_for_subscribers(&redis, "rooms:test", 3).await;
    expect_join(&mut ua, "ub").await;
    drop(watch);

    redis.pause().await;
    k.signal(libc::SIGKILL);
    let _ = k.exit(PATIENCE).await;
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    wait_for_ready(b.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    // Time has to pass here: every entry outlives its TTL while frozen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.unpause().await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;

    let settle = Duration::from_millis(2500);
    let ((view_a, events_a), (view_b, events_b)) = tokio::join!(
        follow_presence(&mut ua, set(&["ua", "ub", "uk"]), settle),
        follow_presence(&mut ub, set(&["ua", "ub", "uk"]), settle),
    );
    eprintln!("after the freeze ua heard {events_a:?}, ub heard {events_b:?}");
    for addr in [a.addr, b.addr] {
        assert_eq!(presence(addr, ROOM).await, listing(ROOM, &["ua", "ub"]));
    }
    let mut wrong = Vec::new();
    for (me, view, events) in [("ua", &view_a, &events_a), ("ub", &view_b, &events_b)] {
        // The spec sends presence events to the other members only.
        if events.iter().any(|e| e.ends_with(&format!(" {me}"))) {
            wrong.push(format!("{me} was told about itself: {events:?}"));
        }
        if *view != set(&["ua", "ub"]) {
            wrong.push(format!(
                "{me} believes the room holds {view:?} after hearing {events:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A client that joins and leaves rooms as fast as it can (rate limit off)
/// floods the supervisor with membership changes; they are taken in
/// coalesced batches, so the link stays up (no outage, `/ready` 200), every
/// churned room ends empty in Redis, and the instance still delivers.
#[tokio::test]
async fn a_client_churning_rooms_neither_stalls_the_link_nor_leaves_presence_behind() {
    let redis = Redis::start().await;
    let a = instance_with(Config {
        rate_limit: 0,
        ..config(&redis)
    })
    .await;
    let b = instance(&redis).await;
    let (mut stay, _) = join_room(b.addr, ROOM, "stay").await;
    let (mut churner, _) = join_room(a.addr, ROOM, "churner").await;
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    wait_for_presence(b.addr, ROOM, &["churner", "stay"]).await;
    expect_join(&mut stay, "churner").await;

    let rooms: Vec<String> = (0..60).map(|i| format!("churn-{i}")).collect();
    for _ in 0..10 {
        for room in &rooms {
            send_json(
                &mut churner,
                &ClientMessage::RoomJoin {
                    room: room.clone(),
                    since: None,
                },
            )
            .await;
        }
        for room in &rooms {
            send_json(
                &mut churner,
                &ClientMessage::RoomLeave { room: room.clone() },
            )
            .await;
        }
    }
    // 1200 answers (a roster and a room.left per cycle and room), in order;
    // presence events of the room `test` may come in between.
    for _ in 0..10 {
        for room in &rooms {
            match next_answer(&mut churner).await {
                ServerMessage::Joined { room: r, users } => {
                    assert_eq!((&r, users), (room, vec!["churner".to_owned()]))
                }
                other => panic!("expected room.joined {room}, got {other:?}"),
            }
        }
        for room in &rooms {
            let left = ServerMessage::Left { room: room.clone() };
            assert_eq!(next_answer(&mut churner).await, left);
        }
    }
    for room in &rooms {
        wait_for_presence(b.addr, room, &[]).await;
    }
    let health = http(a.addr, Method::GET, "/health", "").await.json();
    assert_eq!(health["broker"]["status"], "ok", "{health}");
    assert_eq!(health["broker"]["outages"], 0, "{health}");
    send_json(&mut churner, &chat(ROOM, "still here")).await;
    expect_said(&mut stay, "churner", "still here").await;
    expect_said(&mut churner, "churner", "still here").await;
}

/// The next message that is not a presence event.
async fn next_answer(ws: &mut Ws) -> ServerMessage {
    loop {
        match next_json(ws).await {
            ServerMessage::PresenceJoin { .. } | ServerMessage::PresenceLeave { .. } => {}
            other => return other,
        }
    }
}

/// While Redis is frozen, an instance's own members still hear of each
/// other's arrivals and departures; when it thaws, a departure made during
/// the outage is withdrawn from Redis and announced at once, instead of
/// lingering until `PRESENCE_TTL` (60 s here) expires it.
#[tokio::test]
async fn presence_changes_during_an_outage_are_heard_locally_and_settled_after() {
    let redis = Redis::start().await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let (mut u1, _) = join_room(a.addr, ROOM, "u1").await;
    let (u2, _) = join_room(a.addr, ROOM, "u2").await;
    expect_join(&mut u1, "u2").await;
    let (mut u3, _) = join_room(b.addr, ROOM, "u3").await;
    wait_for_subscribers(&redis, "rooms:test", 2).await;
    wait_for_presence(b.addr, ROOM, &["u1", "u2", "u3"]).await;
    expect_join(&mut u1, "u3").await;

    redis.pause().await;
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    let (_u4, roster) = join_room(a.addr, ROOM, "u4").await;
    assert_eq!(roster, ["u1", "u2", "u4"], "this instance's members");
    expect_join(&mut u1, "u4").await;
    drop(u2);
    expect_leave(&mut u1, "u2").await;

    redis.unpause().await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    let started = Instant::now();
    wait_for_presence(b.addr, ROOM, &["u1", "u3", "u4"]).await;
    eprintln!("presence settled {:?} after the thaw", started.elapsed());
    // u3 learns it too: from events, or from the roster B re-sends after its
    // own reconnect; either way its view ends as the cluster's.
    let mut view = set(&["u1", "u2", "u3"]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while view != set(&["u1", "u3", "u4"]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "u3 still sees {view:?}"
        );
        match next_json(&mut u3).await {
            ServerMessage::Joined { users, .. } => view = users.into_iter().collect(),
            ServerMessage::PresenceJoin { user, .. } => {
                view.insert(user);
            }
            ServerMessage::PresenceLeave { user, .. } => {
                view.remove(&user);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
