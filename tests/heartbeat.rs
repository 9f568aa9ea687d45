//! Heartbeats and the idle timeout, with shortened intervals: pings reach
//! clients, clients that answer stay, silent ones are closed with 4000.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsnotify::Config;

fn config(heartbeat_ms: u64, idle_ms: u64) -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        notification_interval: Duration::ZERO,
        ..Config::default()
    }
}

#[tokio::test]
async fn clients_receive_ping_frames() {
    let server = TestServer::start(config(100, 0)).await;
    let mut ws = connect(server.addr, "/ws").await;
    for _ in 0..2 {
        assert!(matches!(next_message(&mut ws).await, Message::Ping(_)));
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4000() {
    let server = TestServer::start(config(0, 400)).await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let started = Instant::now();
    assert_eq!(raw.close_code().await, Some(4000));
    let took = started.elapsed();
    // 400 ms idle, swept every 100 ms.
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "closed too late: {took:?}"
    );
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn a_client_answering_pings_stays_connected() {
    let server = TestServer::start(config(100, 400)).await;
    let mut ws = connect(server.addr, "/ws").await;
    // tungstenite answers each ping with a pong as it reads.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(matches!(next_message(&mut ws).await, Message::Ping(_)));
    }
    broadcast(server.addr, "still here").await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test]
async fn a_client_that_only_talks_stays_connected() {
    let server = TestServer::start(config(0, 400)).await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        raw.send_frame(true, op::TEXT, format!("m{i}").as_bytes())
            .await;
        let (opcode, payload) = raw.read_frame().await.expect("echo");
        assert_eq!(
            (opcode, payload),
            (op::TEXT, format!("You said: m{i}").into_bytes())
        );
    }
}
