//! Several wsnotify instances on one real Redis (testcontainers), with real
//! WebSocket clients: cross-instance delivery, per-user channels fed by a
//! plain Redis client, the cluster-wide count, and Redis going away, coming
//! back and freezing.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::process::Proc;
use support::redis::{Redis, free_port, instance, wait_for_ready, wait_for_subscribers};
use support::*;
use wsnotify::Config;

async fn broadcast_ok(addr: SocketAddr, message: &str) -> Reply {
    let reply = broadcast(addr, message).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply
}

#[tokio::test]
async fn a_broadcast_on_one_instance_reaches_every_instance_exactly_once() {
    let redis = Redis::start().await;
    let (a, b, c) = (
        instance(&redis).await,
        instance(&redis).await,
        instance(&redis).await,
    );
    wait_for_subscribers(&redis, "websocket:broadcast", 3).await;
    let mut on_a = connect(a.addr, "/ws/a").await;
    let mut on_b = connect(b.addr, "/ws/b").await;
    let mut on_c = connect(c.addr, "/ws/c").await;

    broadcast_ok(a.addr, "order shipped").await;
    for ws in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(next_text(ws).await, "order shipped");
    }
    for ws in [&mut on_a, &mut on_b, &mut on_c] {
        assert_silent(ws).await;
    }

    send(&mut on_b, "hi all").await;
    assert_eq!(next_text(&mut on_b).await, "You said: hi all");
    assert_eq!(next_text(&mut on_a).await, "New message: hi all");
    assert_eq!(next_text(&mut on_c).await, "New message: hi all");
    assert_silent(&mut on_b).await;
    assert_silent(&mut on_a).await;
}

#[tokio::test]
async fn a_raw_or_seed_style_publish_on_the_broadcast_channel_reaches_everyone() {
    let redis = Redis::start().await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    wait_for_subscribers(&redis, "websocket:broadcast", 2).await;
    let mut on_a = connect(a.addr, "/ws").await;
    let mut on_b = connect(b.addr, "/ws").await;
    let mut conn = redis.client().await;
    let _: usize = ::redis::cmd("PUBLISH")
        .arg("websocket:broadcast")
        .arg("plain text")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seed = r#"{"sender_id":"backend","message":"from the seed"}"#;
    let _: usize = ::redis::cmd("PUBLISH")
        .arg("websocket:broadcast")
        .arg(seed)
        .query_async(&mut conn)
        .await
        .unwrap();
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(next_text(ws).await, "plain text");
        assert_eq!(next_text(ws).await, "from the seed");
    }
}

#[tokio::test]
async fn a_user_channel_reaches_that_user_on_every_instance_and_no_one_else() {
    let redis = Redis::start().await;
    let (a, b, c) = (
        instance(&redis).await,
        instance(&redis).await,
        instance(&redis).await,
    );
    let mut u42_a = connect(a.addr, "/ws/42").await;
    let mut u42_b = connect(b.addr, "/ws/42").await;
    let mut u42_b2 = connect(b.addr, "/ws/42").await;
    let mut u7_c = connect(c.addr, "/ws/7").await;
    let mut anon_a = connect(a.addr, "/ws").await;
    wait_for_subscribers(&redis, "notifications:42", 2).await;

    let mut conn = redis.client().await;
    let receivers: usize = ::redis::cmd("PUBLISH")
        .arg("notifications:42")
        .arg(r#"{"type":"order","id":1}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        receivers, 2,
        "one subscription per instance, not per client"
    );
    for ws in [&mut u42_a, &mut u42_b, &mut u42_b2] {
        assert_eq!(next_text(ws).await, r#"{"type":"order","id":1}"#);
    }

    let reply = http(
        c.addr,
        Method::POST,
        "/notify/42",
        r#"{"message":"via HTTP"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "Notification sent", "instances": 2})
    );
    for ws in [&mut u42_a, &mut u42_b, &mut u42_b2] {
        assert_eq!(next_text(ws).await, "via HTTP");
    }
    assert_silent(&mut u7_c).await;
    assert_silent(&mut anon_a).await;

    // The last connection of 42 on A leaves: A unsubscribes.
    drop(u42_a);
    wait_for_subscribers(&redis, "notifications:42", 1).await;
}

#[tokio::test]
async fn connections_sums_the_instances_and_forgets_a_killed_one() {
    let redis = Redis::start().await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let _a1 = connect(a.addr, "/ws").await;
    let _a2 = connect(a.addr, "/ws").await;
    let _b1 = connect(b.addr, "/ws").await;
    wait_for_connections(a.addr, 3).await;
    wait_for_connections(b.addr, 3).await;

    // A real process killed with SIGKILL cannot clean up: its key must expire.
    let mut killed = Proc::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_REFRESH_INTERVAL", "0.3"),
        ("REDIS_TIMEOUT", "0.5"),
    ])
    .await;
    let _k1 = connect(killed.addr, "/ws").await;
    let _k2 = connect(killed.addr, "/ws").await;
    wait_for_connections(a.addr, 5).await;
    let killed_at = Instant::now();
    killed.signal(libc::SIGKILL);
    killed.exit(PATIENCE).await;
    wait_for_connections(a.addr, 3).await;
    assert!(
        killed_at.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        killed_at.elapsed()
    );

    // A graceful stop deletes its key at once instead of letting it expire.
    let mut conn = redis.client().await;
    let count_keys = async |conn: &mut ::redis::aio::MultiplexedConnection| {
        let counts: usize = ::redis::cmd("HLEN")
            .arg(wsnotify::broker::redis::COUNTS_KEY)
            .query_async(conn)
            .await
            .unwrap();
        counts
    };
    assert_eq!(count_keys(&mut conn).await, 2);
    drop(_b1);
    b.signal();
    b.finished().await;
    assert_eq!(count_keys(&mut conn).await, 1);
    wait_for_connections(a.addr, 2).await;
}

#[tokio::test]
async fn redis_stopping_and_restarting_degrades_then_recovers_by_itself() {
    let mut redis = Redis::start().await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut on_a = connect(a.addr, "/ws/u1").await;
    let mut on_a2 = connect(a.addr, "/ws").await;
    let mut on_b = connect(b.addr, "/ws").await;

    redis.stop().await;
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    let health = http(a.addr, Method::GET, "/health", "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "healthy");
    assert_eq!(health.json()["broker"]["status"], "degraded");
    assert_eq!(health.json()["broker"]["outages"], 1);

    // Local delivery goes on.
    broadcast_ok(a.addr, "local only").await;
    assert_eq!(next_text(&mut on_a).await, "local only");
    assert_eq!(next_text(&mut on_a2).await, "local only");
    send(&mut on_a2, "still chatting").await;
    assert_eq!(next_text(&mut on_a2).await, "You said: still chatting");
    assert_eq!(next_text(&mut on_a).await, "New message: still chatting");
    let reply = http(
        a.addr,
        Method::POST,
        "/notify/u1",
        r#"{"message":"for u1"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.json()["broker"]
            .as_str()
            .unwrap()
            .starts_with("degraded")
    );
    assert_eq!(next_text(&mut on_a).await, "for u1");
    assert_silent(&mut on_b).await; // Pub/Sub keeps nothing for B
    let metrics = http(a.addr, Method::GET, "/metrics", "").await.body;
    assert!(
        metrics.lines().any(|l| l == "wsnotify_broker_up 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "wsnotify_broker_outages_total 1"),
        "{metrics}"
    );

    let restarted = Instant::now();
    redis.start_again().await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(8),
        "recovery took {:?}",
        restarted.elapsed()
    );
    wait_for_subscribers(&redis, "notifications:u1", 1).await;
    broadcast_ok(a.addr, "cross again").await;
    for ws in [&mut on_a, &mut on_a2, &mut on_b] {
        assert_eq!(next_text(ws).await, "cross again");
    }
    let mut conn = redis.client().await;
    let _: usize = ::redis::cmd("PUBLISH")
        .arg("notifications:u1")
        .arg("resubscribed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(next_text(&mut on_a).await, "resubscribed");
}

#[tokio::test]
async fn a_paused_redis_is_noticed_and_nothing_local_hangs() {
    let redis = Redis::start().await;
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut on_a = connect(a.addr, "/ws/u1").await;
    let mut on_b = connect(b.addr, "/ws").await;

    redis.pause().await;
    wait_for_ready(a.addr, StatusCode::SERVICE_UNAVAILABLE).await;
    let started = Instant::now();
    broadcast_ok(a.addr, "while frozen").await;
    assert_eq!(next_text(&mut on_a).await, "while frozen");
    let reply = http(
        a.addr,
        Method::POST,
        "/notify/u1",
        r#"{"message":"direct"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(next_text(&mut on_a).await, "direct");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "local work waited on Redis: {:?}",
        started.elapsed()
    );
    wait_for_connections(a.addr, 1).await; // local count while Redis cannot answer

    redis.unpause().await;
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    broadcast_ok(a.addr, "thawed").await;
    assert_eq!(next_text(&mut on_a).await, "thawed");
    assert_eq!(next_text(&mut on_b).await, "thawed");
}

#[tokio::test]
async fn starting_with_redis_unreachable_serves_locally_in_degraded_mode() {
    let nowhere = Config {
        redis_url: Some(format!("redis://127.0.0.1:{}", free_port())),
        redis_timeout: Duration::from_millis(300),
        notification_interval: Duration::ZERO,
        ..Config::default()
    };
    let server = TestServer::start(nowhere).await;
    let mut a = connect(server.addr, "/ws").await;
    let mut b = connect(server.addr, "/ws").await;
    assert_eq!(
        http(server.addr, Method::GET, "/ready", "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http(server.addr, Method::GET, "/health", "").await.json()["broker"]["status"],
        "degraded"
    );
    send(&mut a, "hello").await;
    assert_eq!(next_text(&mut a).await, "You said: hello");
    assert_eq!(next_text(&mut b).await, "New message: hello");
    wait_for_connections(server.addr, 2).await;
}

#[tokio::test]
async fn the_binary_drains_in_redis_mode_and_withdraws_its_count() {
    let redis = Redis::start().await;
    let mut proc = Proc::start(&[
        ("REDIS_URL", &redis.url()),
        ("SHUTDOWN_TIMEOUT", "2"),
        ("SHUTDOWN_LOG_INTERVAL", "0.5"),
        ("REDIS_REFRESH_INTERVAL", "0.3"),
    ])
    .await;
    wait_for_ready(proc.addr, StatusCode::OK).await;
    assert!(proc.logged("connected to redis"));
    let mut ws = connect(proc.addr, "/ws/stayer").await;
    let mut conn = redis.client().await;
    let signalled = Instant::now();
    proc.signal(libc::SIGTERM);
    assert!(next_text(&mut ws).await.contains("shutting down"));
    let close = close_frame(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    let closed_at = signalled.elapsed();
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(2800)).contains(&closed_at),
        "{closed_at:?}"
    );
    let _ = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut ws)).await;
    assert!(proc.exit(Duration::from_secs(3)).await);
    assert!(signalled.elapsed() < Duration::from_millis(3500));
    let counts: Vec<String> = ::redis::cmd("HKEYS")
        .arg(wsnotify::broker::redis::COUNTS_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(counts.is_empty(), "counts left behind: {counts:?}");
}
