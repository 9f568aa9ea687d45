//! The seed-compatible contract, line by line, against an in-process server
//! with real WebSocket clients over real sockets.

mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use support::*;
use wsnotify::Config;

#[tokio::test]
async fn both_ws_paths_greet_the_client() {
    let server = TestServer::quiet().await;
    let _anon = connect(server.addr, "/ws").await;
    let _named = connect(server.addr, "/ws/alice").await;
    wait_for_connections(server.addr, 2).await;
}

#[tokio::test]
async fn a_message_is_echoed_to_its_sender_and_relayed_to_everyone_else() {
    let server = TestServer::quiet().await;
    let mut alice = connect(server.addr, "/ws/alice").await;
    let mut bob = connect(server.addr, "/ws/bob").await;
    let mut anon = connect(server.addr, "/ws").await;
    send(&mut alice, "hello").await;
    assert_eq!(next_text(&mut alice).await, "You said: hello");
    assert_eq!(next_text(&mut bob).await, "New message: hello");
    assert_eq!(next_text(&mut anon).await, "New message: hello");
    assert_silent(&mut alice).await;
}

#[tokio::test]
async fn tabs_of_one_client_id_each_count_and_each_receive() {
    let server = TestServer::quiet().await;
    let mut tab1 = connect(server.addr, "/ws/same").await;
    let mut tab2 = connect(server.addr, "/ws/same").await;
    wait_for_connections(server.addr, 2).await;
    send(&mut tab1, "from tab 1").await;
    assert_eq!(next_text(&mut tab1).await, "You said: from tab 1");
    assert_eq!(next_text(&mut tab2).await, "New message: from tab 1");
}

#[tokio::test]
async fn utf8_messages_round_trip_unchanged() {
    let server = TestServer::quiet().await;
    let mut a = connect(server.addr, "/ws/a").await;
    let mut b = connect(server.addr, "/ws/b").await;
    send(&mut a, "Привіт, сервере! 🟢").await;
    assert_eq!(next_text(&mut a).await, "You said: Привіт, сервере! 🟢");
    assert_eq!(next_text(&mut b).await, "New message: Привіт, сервере! 🟢");
}

#[tokio::test]
async fn post_broadcast_reaches_every_client() {
    let server = TestServer::quiet().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(connect(server.addr, &format!("/ws/c{i}")).await);
    }
    let reply = broadcast(server.addr, "order shipped").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "Message broadcasted"})
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    for ws in &mut clients {
        assert_eq!(next_text(ws).await, "order shipped");
    }
}

#[tokio::test]
async fn post_broadcast_refuses_bad_bodies() {
    let server = TestServer::start(Config {
        max_message_size: 1024,
        ..Config::default()
    })
    .await;
    let mut ws = connect(server.addr, "/ws").await;
    for body in ["{}", r#"{"message":""}"#, r#"{"message":null}"#] {
        let reply = http(server.addr, Method::POST, "/broadcast", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            reply.json(),
            serde_json::json!({"error": "No message provided"}),
            "{body}"
        );
    }
    for body in ["not json", r#"{"message": "#, "[1,2]", r#"{"message": 5}"#] {
        let reply = http(server.addr, Method::POST, "/broadcast", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply.json()["error"].is_string(), "{body}");
    }
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
    let reply = http(server.addr, Method::POST, "/broadcast", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"].as_str().unwrap().contains("1024"));
    assert_silent(&mut ws).await;
}

#[tokio::test]
async fn connections_counts_and_forgets_clients() {
    let server = TestServer::quiet().await;
    let reply = http(server.addr, Method::GET, "/connections", "").await;
    assert_eq!(reply.json(), serde_json::json!({"active_connections": 0}));
    let a = connect(server.addr, "/ws").await;
    let mut b = connect(server.addr, "/ws").await;
    wait_for_connections(server.addr, 2).await;
    drop(a);
    wait_for_connections(server.addr, 1).await;
    b.close(None).await.unwrap();
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn health_has_the_seed_keys() {
    let server = TestServer::quiet().await;
    let _ws = connect(server.addr, "/ws").await;
    wait_for_connections(server.addr, 1).await;
    let reply = http(server.addr, Method::GET, "/health", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["active_connections"], 1);
    assert_eq!(body["shutdown_in_progress"], false);
    let ts = body["timestamp"].as_str().unwrap();
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("timestamp {ts} is not RFC 3339: {e}"));
}

#[tokio::test]
async fn ready_is_200_while_serving() {
    let server = TestServer::quiet().await;
    let reply = http(server.addr, Method::GET, "/ready", "").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = TestServer::quiet().await;
    let mut a = connect(server.addr, "/ws").await;
    let mut b = connect(server.addr, "/ws").await;
    send(&mut a, "x").await;
    next_text(&mut a).await;
    next_text(&mut b).await;
    let text = wait_for_metric(server.addr, "wsnotify_messages_received_total 1").await;
    for line in [
        "wsnotify_active_connections 2",
        "wsnotify_connections_opened_total 2",
        "wsnotify_slow_consumer_disconnects_total 0",
        "wsnotify_shutdown_in_progress 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    // greetings (2) + echo + relay
    assert!(
        text.contains("wsnotify_messages_delivered_total 4"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE wsnotify_broadcast_fanout_seconds histogram"),
        "{text}"
    );
    let reply = http(server.addr, Method::GET, "/metrics", "").await;
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn the_test_page_connects_to_its_own_origin() {
    let server = TestServer::quiet().await;
    let reply = http(server.addr, Method::GET, "/", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = reply.body;
    assert!(
        page.contains("location.host"),
        "page must use its own origin"
    );
    assert!(
        !page.contains("8050") && !page.contains("localhost"),
        "no hard-coded host or port"
    );
    assert!(
        page.contains(r#"["bearer", token]"#),
        "the page can send a token"
    );
    for control in [
        "connect",
        "disconnect",
        "send",
        "check",
        "messages",
        "token",
    ] {
        assert!(
            page.contains(&format!("id=\"{control}\"")),
            "missing #{control}"
        );
    }
}

#[tokio::test]
async fn periodic_notifications_reach_every_client() {
    let config = Config {
        notification_interval: Duration::from_millis(200),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut a = connect(server.addr, "/ws").await;
    let mut b = connect(server.addr, "/ws").await;
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next_text(ws).await,
            "Periodic notification: every 0.2 seconds"
        );
        assert_eq!(
            next_text(ws).await,
            "Periodic notification: every 0.2 seconds"
        );
    }
}

#[tokio::test]
async fn periodic_notifications_at_the_default_interval_say_10_seconds() {
    // The default interval is too slow for a test; the text is what matters.
    assert_eq!(
        wsnotify::protocol::text::periodic(Config::default().notification_interval),
        "Periodic notification: every 10 seconds"
    );
}

#[tokio::test]
async fn plain_get_on_ws_explains_the_upgrade() {
    let server = TestServer::quiet().await;
    for path in ["/ws", "/ws/alice"] {
        let reply = http(server.addr, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED, "{path}");
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .contains("WebSocket"),
            "{path}"
        );
    }
    let reply = http_with(
        server.addr,
        Method::GET,
        "/ws",
        "",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key")
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let server = TestServer::quiet().await;
    for path in ["/nope", "/ws/", "/ws/a/b", "/broadcast/x"] {
        let reply = http(server.addr, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert!(reply.json()["error"].is_string());
    }
    for (method, path, allow) in [
        (Method::GET, "/broadcast", "POST"),
        (Method::HEAD, "/broadcast", "POST"),
        (Method::POST, "/health", "GET, HEAD"),
        (Method::DELETE, "/connections", "GET, HEAD"),
        (Method::POST, "/ws", "GET, HEAD"),
    ] {
        let reply = http(server.addr, method.clone(), path, "").await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.headers["allow"], allow);
    }
}

#[tokio::test]
async fn a_long_client_id_is_refused() {
    let server = TestServer::quiet().await;
    let long = "x".repeat(300);
    let reply = http_with(
        server.addr,
        Method::GET,
        &format!("/ws/{long}"),
        "",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn head_is_get_without_the_body() {
    let server = TestServer::quiet().await;
    for path in ["/health", "/ready", "/connections", "/metrics", "/"] {
        let get = http(server.addr, Method::GET, path, "").await;
        let head = http(server.addr, Method::HEAD, path, "").await;
        assert_eq!(head.status, get.status, "{path}");
        assert_eq!(
            head.headers["content-type"], get.headers["content-type"],
            "{path}"
        );
        assert!(!get.body.is_empty());
        assert_eq!(head.body, "", "{path}: HEAD carries no body");
    }
    // A HEAD to the WebSocket endpoint is no upgrade.
    let reply = http(server.addr, Method::HEAD, "/ws", "").await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
}
