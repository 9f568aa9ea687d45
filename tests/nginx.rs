//! Debian's nginx with `deploy/nginx.conf` in front of two real `wsnotify`
//! processes on Redis, without Docker: WebSocket upgrades get through (the
//! seed 004 incident was nginx answering them itself), seed 004's
//! `/api/v1/ws/…` prefix reaches `/ws/…`, `/sse` events arrive as they are
//! sent, and a draining instance's 503 sends new clients to the other.

mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use support::history::*;
use support::nginx::Nginx;
use support::process::Proc;
use support::redis::{Redis, wait_for_ready};
use support::*;
use wsnotify::protocol::json::ServerMessage;

/// Two binaries on `redis` with history on.
async fn pair(redis: &Redis, extra: &[(&str, &str)]) -> (Proc, Proc) {
    let url = redis.url();
    let mut env = vec![("REDIS_URL", url.as_str()), ("HISTORY_SIZE", "100")];
    env.extend_from_slice(extra);
    let a = Proc::start(&env).await;
    let b = Proc::start(&env).await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    (a, b)
}

#[tokio::test]
async fn nginx_passes_upgrades_the_seed_004_prefix_and_unbuffered_sse() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, &[]).await;
    let nginx = Nginx::start(&[a.addr, b.addr]).await;

    // The seed contract through nginx: the greeting.
    let mut text = connect(nginx.addr, "/ws").await;
    send(&mut text, "ping").await;
    assert_eq!(
        next_text(&mut text).await,
        "You said: ping",
        "a WebSocket through nginx talks"
    );

    // Seed 004's client URL: /api/v1/ws/notifications, served by /ws/notifications.
    let mut seed004 = connect_raw(nginx.addr, "/api/v1/ws/notifications?user=zoe").await;
    let position = next_json_or_position(&mut seed004).await;
    assert!(
        matches!(&position, ServerMessage::Position { stream, .. } if stream == "user:zoe" || stream == "broadcast"),
        "the JSON protocol answers behind the prefix: {position:?}"
    );
    // Seed 004's probe (curl with Upgrade headers, no key): the answer is
    // wsnotify's, not nginx's, so the upgrade headers got through.
    let probe = http_with(
        nginx.addr,
        Method::GET,
        "/api/v1/ws/notifications",
        "",
        &[("connection", "Upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(probe.status, StatusCode::BAD_REQUEST, "{}", probe.body);
    assert!(
        probe.body.contains("Sec-WebSocket-Key"),
        "wsnotify's own answer to a keyless handshake: {}",
        probe.body
    );

    // SSE through nginx: each event as it is published.
    let mut sse = Sse::connect(nginx.addr, "/sse?user=zoe", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    // `retry:`, then the `position` event; messages follow it.
    loop {
        let event = sse.next_event().await.expect("the stream's position");
        if event.event.as_deref() == Some("position") {
            break;
        }
    }
    for n in 0..3 {
        let message = format!("through nginx {n}");
        // Published through nginx too, to whichever instance it picks.
        let body = serde_json::json!({ "message": message }).to_string();
        let reply = http(nginx.addr, Method::POST, "/notify/zoe", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        // One small event is far less than any proxy buffer: it arrives
        // only if nginx passes it on at once.
        let event = sse
            .next_event_within(Duration::from_secs(2))
            .await
            .unwrap_or_else(|_| panic!("event {n} held back by nginx"))
            .expect("the stream ended");
        assert!(event.data.contains(&message), "{}", event.data);
        // The WebSocket behind the prefix has it as well.
        let got = next_json(&mut seed004).await;
        assert_eq!(text_of(&got), message);
    }
}

#[tokio::test]
async fn new_clients_behind_nginx_skip_a_draining_instance() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis, &[("SHUTDOWN_TIMEOUT", "30")]).await;
    let nginx = Nginx::start(&[a.addr, b.addr]).await;
    // A client that stays keeps a draining.
    let mut stays = connect(a.addr, "/ws").await;
    a.signal(libc::SIGTERM);
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    // least_conn sends some of these to a: its 503 makes nginx try b.
    for i in 0..6 {
        let mut ws = connect(nginx.addr, "/ws").await;
        send(&mut ws, &format!("hello {i}")).await;
        assert_eq!(next_text(&mut ws).await, format!("You said: hello {i}"));
        let poll = http(nginx.addr, Method::GET, "/poll?user=x&wait=0", "").await;
        assert_eq!(
            poll.status,
            StatusCode::OK,
            "a poll skips a too: {}",
            poll.body
        );
    }
    // The one client it waited for leaves: a exits by itself.
    let mut a = a;
    stays.close(None).await.unwrap();
    assert!(a.exit(Duration::from_secs(10)).await);
}
