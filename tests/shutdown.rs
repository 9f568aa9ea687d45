//! Graceful shutdown of the real `wsnotify` binary, driven by real signals,
//! with `SHUTDOWN_TIMEOUT` shortened to a couple of seconds. The windows
//! asserted are generous around the intended behaviour: these tests check
//! what happens and roughly when, not speed.

mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::process::Proc;
use support::*;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Connects a client and waits until it has the shutdown notice after `signal`.
async fn notice_after(proc: &Proc, signal: libc::c_int) -> (Ws, Instant) {
    let mut ws = connect(proc.addr, "/ws/stayer").await;
    wait_for_connections(proc.addr, 1).await;
    let sent = Instant::now();
    proc.signal(signal);
    let notice = next_text(&mut ws).await;
    assert!(notice.contains("shutting down"), "notice was {notice:?}");
    (ws, sent)
}

async fn leaving_client_ends_the_drain_early(signal: libc::c_int) {
    let mut proc =
        Proc::start(&[("SHUTDOWN_TIMEOUT", "2"), ("SHUTDOWN_LOG_INTERVAL", "0.2")]).await;
    let (mut ws, signalled) = notice_after(&proc, signal).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.close(None).await.unwrap();
    assert!(proc.exit(Duration::from_secs(5)).await, "exit status 0");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "exited before the client left: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "did not exit well before the 2 s timeout: {took:?}"
    );
    assert!(proc.logged("graceful shutdown completed in"));
    assert!(proc.logged("shutdown in progress: active connections: 1"));
    assert!(!proc.logged("force-closing"));
}

#[tokio::test]
async fn sigterm_a_leaving_client_ends_the_drain_early() {
    leaving_client_ends_the_drain_early(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_a_leaving_client_ends_the_drain_early() {
    leaving_client_ends_the_drain_early(libc::SIGINT).await;
}

async fn staying_client_is_closed_with_1001(signal: libc::c_int) {
    let mut proc =
        Proc::start(&[("SHUTDOWN_TIMEOUT", "2"), ("SHUTDOWN_LOG_INTERVAL", "0.5")]).await;
    let (mut ws, signalled) = notice_after(&proc, signal).await;
    let close = close_frame(&mut ws)
        .await
        .expect("a close frame with a code");
    let closed_at = signalled.elapsed();
    assert_eq!(close.code, CloseCode::Away);
    assert!(!close.reason.is_empty(), "the close carries a reason");
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(2800)).contains(&closed_at),
        "closed at {closed_at:?}, expected near 2 s"
    );
    let _ = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut ws)).await; // sends our close reply
    assert!(proc.exit(Duration::from_secs(3)).await, "exit status 0");
    let exited_at = signalled.elapsed();
    assert!(
        exited_at < Duration::from_millis(3500),
        "exited at {exited_at:?}, expected by ~3 s"
    );
    assert!(proc.logged("shutdown in progress: active connections: 1, elapsed: 0.5"));
    assert!(proc.logged("remaining before forced close: 1.5"));
    assert!(proc.logged("shutdown timeout reached: force-closing 1 connections with 1001"));
}

#[tokio::test]
async fn sigterm_a_staying_client_is_closed_with_1001() {
    staying_client_is_closed_with_1001(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_a_staying_client_is_closed_with_1001() {
    staying_client_is_closed_with_1001(libc::SIGINT).await;
}

async fn the_drain_is_visible_over_http(signal: libc::c_int) {
    let mut proc = Proc::start(&[("SHUTDOWN_TIMEOUT", "3")]).await;
    let (mut ws, _) = notice_after(&proc, signal).await;

    let health = http(proc.addr, Method::GET, "/health", "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["shutdown_in_progress"], true);
    assert_eq!(health.json()["active_connections"], 1);
    assert_eq!(
        http(proc.addr, Method::GET, "/ready", "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = http(proc.addr, Method::GET, "/metrics", "").await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "wsnotify_shutdown_in_progress 1"),
        "{metrics}"
    );

    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/late", proc.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(res.headers().contains_key("retry-after"));
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    ws.close(None).await.unwrap();
    assert!(proc.exit(PATIENCE).await);
}

#[tokio::test]
async fn sigterm_the_drain_is_visible_over_http() {
    the_drain_is_visible_over_http(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_the_drain_is_visible_over_http() {
    the_drain_is_visible_over_http(libc::SIGINT).await;
}

#[tokio::test]
async fn a_second_signal_skips_to_the_forced_close() {
    let mut proc = Proc::start(&[("SHUTDOWN_TIMEOUT", "60")]).await;
    let (mut ws, _) = notice_after(&proc, libc::SIGTERM).await;
    let second = Instant::now();
    proc.signal(libc::SIGINT);
    let close = close_frame(&mut ws).await.expect("close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "took {:?}",
        second.elapsed()
    );
    assert!(proc.exit(PATIENCE).await);
    assert!(proc.logged("second signal received: force-closing 1 connections with 1001"));
}

#[tokio::test]
async fn with_no_clients_a_signal_exits_at_once() {
    let mut proc = Proc::start(&[]).await; // the default 30 min timeout
    let signalled = Instant::now();
    proc.signal(libc::SIGTERM);
    assert!(proc.exit(PATIENCE).await);
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert!(proc.logged("graceful shutdown completed in"));
}

#[tokio::test]
async fn bad_configuration_stops_the_start_with_a_clear_message() {
    for (name, value, needle) in [
        ("SHUTDOWN_TIMEOUT", "soon", "not a number of seconds"),
        ("PORT", "99999", "99999"),
        ("MAX_MESSAGE_SIZE", "0", "between 1 and"),
        ("OUTBOUND_QUEUE", "-5", "whole number"),
        ("SHUTDOWN_LOG_INTERVAL", "0", "greater than 0"),
        ("HOST", "no.such.host.invalid", "cannot listen on"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wsnotify"))
            .env(name, value)
            .env("PORT", if name == "PORT" { value } else { "0" })
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value} was accepted");
        assert!(stderr.contains(needle), "{name}={value}: {stderr}");
    }
}

#[tokio::test]
async fn in_process_drain_reports_how_it_ended() {
    let server = TestServer::start(wsnotify::Config {
        shutdown_timeout: Duration::from_millis(300),
        ..wsnotify::Config::default()
    })
    .await;
    let mut ws = connect(server.addr, "/ws").await;
    server.signal();
    assert!(next_text(&mut ws).await.contains("shutting down"));
    let close = close_frame(&mut ws).await.unwrap();
    assert_eq!(u16::from(close.code), 1001);
    match server.finished().await {
        wsnotify::Outcome::Forced { remaining, .. } => assert_eq!(remaining, 1),
        other => panic!("expected a forced close, got {other:?}"),
    }
}
