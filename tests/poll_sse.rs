//! The HTTP fallbacks in memory mode, over real sockets: `GET /poll`
//! (positions, messages after `since`, long-polls and their races) and
//! `GET /sse` (event ids, `Last-Event-ID`, resets), both behind the drain.

mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::history::*;
use support::*;
use wsnotify::Config;

async fn server() -> TestServer {
    TestServer::start(history_config()).await
}

/// The `next` of a poll answer, URL-encoded for the following poll.
fn next(answer: &Value) -> String {
    encode(answer["next"].as_str().expect("next"))
}

/// The texts of a poll answer's messages.
fn texts(answer: &Value) -> Vec<String> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match (&m["text"], &m["data"]) {
            (Value::String(t), _) => t.clone(),
            (_, Value::String(d)) => d.clone(),
            (_, other) => other.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn without_since_a_poll_answers_the_positions_only() {
    let server = server().await;
    notify(server.addr, "p", "earlier").await;
    let reply = poll(server.addr, "user=p&rooms=r1,r2").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["cache-control"], "no-store");
    let answer = reply.json();
    assert_eq!(answer["messages"], serde_json::json!([]));
    assert_eq!(answer["recovered"], true);
    let next = answer["next"].as_str().unwrap();
    let streams: Vec<&str> = next
        .split(',')
        .map(|p| p.split('~').next().unwrap())
        .collect();
    assert_eq!(streams, ["user:p", "broadcast", "room:r1", "room:r2"]);
    assert!(
        next.starts_with("user:p~") && next.contains("~1,"),
        "{next}"
    );
}

#[tokio::test]
async fn a_poll_answers_what_came_after_its_position_oldest_first() {
    let server = server().await;
    let first = poll(server.addr, "user=p&rooms=r").await.json();
    notify(server.addr, "p", "n1").await;
    publish_room(server.addr, "r", "r1").await;
    broadcast_at(server.addr, "b1").await;
    notify(server.addr, "p", "n2").await;
    let answer = poll(
        server.addr,
        &format!("user=p&rooms=r&since={}", next(&first)),
    )
    .await
    .json();
    // Oldest first by time; within one millisecond streams may interleave
    // either way, but each stream's messages keep their order.
    let got = texts(&answer);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["b1", "n1", "n2", "r1"]);
    let at = |t: &str| got.iter().position(|g| g == t).unwrap();
    assert!(at("n1") < at("n2"), "{got:?}");
    assert_eq!(answer["recovered"], true);
    for message in answer["messages"].as_array().unwrap() {
        assert!(
            message["stream"].is_string() && message["offset"].is_u64(),
            "{message}"
        );
    }
    // The next poll from `next` has nothing new.
    let again = poll(
        server.addr,
        &format!("user=p&rooms=r&since={}", next(&answer)),
    )
    .await
    .json();
    assert_eq!(again["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn a_long_poll_is_woken_by_the_first_message() {
    let server = server().await;
    let first = poll(server.addr, "user=lp").await.json();
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        notify(addr, "lp", "wake").await;
    });
    let started = Instant::now();
    let answer = poll(
        server.addr,
        &format!("user=lp&wait=10&since={}", next(&first)),
    )
    .await
    .json();
    let took = started.elapsed();
    publisher.await.unwrap();
    assert_eq!(texts(&answer), ["wake"]);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // With nothing to wake it, a short wait ends empty.
    let started = Instant::now();
    let empty = poll(
        server.addr,
        &format!("user=lp&wait=0.3&since={}", next(&answer)),
    )
    .await
    .json();
    assert_eq!(empty["messages"], serde_json::json!([]));
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn publishes_racing_the_long_polls_are_all_seen_once_in_order() {
    let server = server().await;
    let mut position = next(&poll(server.addr, "user=race").await.json());
    let addr = server.addr;
    let total = 60;
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            notify(addr, "race", &format!("m{i}")).await;
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < total {
        let answer = poll(addr, &format!("user=race&wait=5&since={position}"))
            .await
            .json();
        assert_eq!(answer["recovered"], true, "{answer}");
        seen.extend(texts(&answer));
        position = next(&answer);
    }
    publisher.await.unwrap();
    let want: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn bad_polls_get_their_answers() {
    let server = server().await;
    let reply = poll(server.addr, "user=b&since=nonsense").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["code"], "invalid_cursor");
    let foreign = since(&[At::new("user:someone-else", "e", 0)]);
    let reply = poll(server.addr, &format!("user=b&since={foreign}")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let rooms: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
    let reply = poll(server.addr, &format!("user=b&rooms={}", rooms.join(","))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = poll(server.addr, "user=b&rooms=a%20b").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = poll(server.addr, "user=b&wait=soon").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Out of range is clamped, not refused: a negative wait answers at once.
    let reply = poll(server.addr, "user=b&wait=-5").await;
    assert_eq!(reply.status, StatusCode::OK);
    // Too old, through a poll.
    let small = TestServer::start(Config {
        history_size: 2,
        ..history_config()
    })
    .await;
    let first = poll(small.addr, "user=o").await.json();
    for i in 0..4 {
        notify(small.addr, "o", &format!("m{i}")).await;
    }
    let answer = poll(small.addr, &format!("user=o&since={}", next(&first)))
        .await
        .json();
    assert_eq!(
        (answer["recovered"].clone(), answer["reason"].clone()),
        (false.into(), "too_old".into())
    );
    assert_eq!(
        answer["messages"],
        serde_json::json!([]),
        "no partial replay"
    );
}

#[tokio::test]
async fn without_history_there_is_no_poll_and_no_sse() {
    let server = TestServer::quiet().await;
    assert_eq!(
        poll(server.addr, "user=u").await.status,
        StatusCode::NOT_FOUND
    );
    let sse = Sse::connect(server.addr, "/sse?user=u", &[]).await;
    assert_eq!(sse.status, 404);
}

#[tokio::test]
async fn a_browser_on_another_origin_may_poll() {
    let server = TestServer::start(Config {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..history_config()
    })
    .await;
    let origin = [("origin", "https://app.example")];
    let reply = http_with(server.addr, Method::OPTIONS, "/poll", "", &origin).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        reply.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization")
    );
    let reply = http_with(server.addr, Method::GET, "/poll?user=c", "", &origin).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let evil = [("origin", "https://evil.example")];
    let reply = http_with(server.addr, Method::GET, "/poll?user=c", "", &evil).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn sse_events_carry_their_position_and_last_event_id_resumes() {
    let server = server().await;
    let mut sse = Sse::connect(server.addr, "/sse?user=s&rooms=r", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-store"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let opening = sse.next_event().await.unwrap();
    assert_eq!(opening.retry, Some(3000));
    let position = sse.next_event().await.unwrap();
    assert_eq!(position.event.as_deref(), Some("position"));
    notify(server.addr, "s", "one").await;
    publish_room(server.addr, "r", "two").await;
    let one = sse.next_event().await.unwrap();
    let two = sse.next_event().await.unwrap();
    assert!(one.data.contains(r#""data":"one""#), "{one:?}");
    assert!(two.data.contains(r#""text":"two""#), "{two:?}");
    let after_one = one.id.clone().unwrap();
    assert!(
        after_one.starts_with("user:s~") && after_one.contains("~1,"),
        "{after_one}"
    );
    drop(sse);
    // Missed while away; the browser comes back with the last id it saw.
    notify(server.addr, "s", "three").await;
    let mut back = Sse::connect(
        server.addr,
        "/sse?user=s&rooms=r",
        &[("last-event-id", &after_one)],
    )
    .await;
    back.next_event().await.unwrap(); // retry
    back.next_event().await.unwrap(); // position
    let mut replay: Vec<String> = vec![
        back.next_event().await.unwrap().data,
        back.next_event().await.unwrap().data,
    ];
    replay.sort();
    assert!(replay[0].contains(r#""text":"two""#), "{replay:?}");
    assert!(replay[1].contains(r#""data":"three""#), "{replay:?}");
}

#[tokio::test]
async fn last_event_id_wins_over_since_and_a_garbage_one_resets_every_stream() {
    let server = server().await;
    let first = poll(server.addr, "user=h").await.json();
    let start = first["next"].as_str().unwrap().to_owned();
    notify(server.addr, "h", "a").await;
    let middle = poll(server.addr, &format!("user=h&since={}", encode(&start)))
        .await
        .json()["next"]
        .as_str()
        .unwrap()
        .to_owned();
    notify(server.addr, "h", "b").await;
    // ?since says "from the start", Last-Event-ID "after a": only b comes.
    let path = format!("/sse?user=h&since={}", encode(&start));
    let mut sse = Sse::connect(server.addr, &path, &[("last-event-id", &middle)]).await;
    sse.next_event().await.unwrap();
    sse.next_event().await.unwrap();
    let event = sse.next_event().await.unwrap();
    assert!(event.data.contains(r#""data":"b""#), "{event:?}");
    // Garbage: no position, never "from the start".
    let mut sse = Sse::connect(server.addr, "/sse?user=h", &[("last-event-id", "garbage")]).await;
    sse.next_event().await.unwrap();
    sse.next_event().await.unwrap();
    for stream in ["user:h", "broadcast"] {
        let reset = sse.next_event().await.unwrap();
        assert_eq!(reset.event.as_deref(), Some("reset"));
        let data: Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(
            (data["stream"].as_str(), data["reason"].as_str()),
            (Some(stream), Some("invalid_cursor"))
        );
    }
    notify(server.addr, "h", "c").await;
    let live = sse.next_event().await.unwrap();
    assert!(
        live.data.contains(r#""data":"c""#),
        "live follows, no replay: {live:?}"
    );
}

#[tokio::test]
async fn a_stream_that_cannot_be_recovered_gets_a_reset_with_its_position() {
    let server = TestServer::start(Config {
        history_size: 1,
        ..history_config()
    })
    .await;
    let first = poll(server.addr, "user=t").await.json();
    notify(server.addr, "t", "x").await;
    notify(server.addr, "t", "y").await;
    let path = format!("/sse?user=t&since={}", next(&first));
    let mut sse = Sse::connect(server.addr, &path, &[]).await;
    sse.next_event().await.unwrap();
    sse.next_event().await.unwrap();
    let reset = sse.next_event().await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    let data: Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(
        (data["reason"].as_str(), data["offset"].as_u64()),
        (Some("too_old"), Some(2))
    );
}

#[tokio::test]
async fn the_drain_ends_sse_streams_and_long_polls_and_refuses_new_ones() {
    let server = TestServer::start(Config {
        drain_reconnect_spread: Duration::from_secs(2),
        ..history_config()
    })
    .await;
    let first = poll(server.addr, "user=d").await.json();
    // A WebSocket client that stays keeps the server draining meanwhile.
    let mut stays = connect(server.addr, "/ws").await;
    let mut sse = Sse::connect(server.addr, "/sse?user=d", &[]).await;
    sse.next_event().await.unwrap();
    sse.next_event().await.unwrap();
    let addr = server.addr;
    let since = next(&first);
    let long_poll = tokio::spawn(async move {
        let started = Instant::now();
        let answer = poll(addr, &format!("user=d&wait=20&since={since}")).await;
        (answer, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal();
    let shutdown = sse.next_event().await.unwrap();
    assert_eq!(shutdown.event.as_deref(), Some("shutdown"));
    assert!(shutdown.retry.is_some_and(|ms| ms <= 2000), "{shutdown:?}");
    assert!(shutdown.data.contains("shutting down"));
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the notice"
    );
    let (answer, took) = long_poll.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        took < Duration::from_secs(5),
        "answered at the drain, not at 20 s: {took:?}"
    );
    assert_eq!(
        poll(server.addr, "user=d").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = Sse::connect(server.addr, "/sse?user=d", &[]).await;
    assert_eq!(refused.status, 503);
    assert!(next_text(&mut stays).await.contains("shutting down"));
    drop(stays);
    assert!(matches!(
        server.finished().await,
        wsnotify::Outcome::Drained(_)
    ));
}
