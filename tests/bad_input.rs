//! Bad input gets its documented close code, and never hurts anyone else:
//! after each case a well-behaved client beside the offender still gets a
//! broadcast and the server still answers.

mod support;

use std::time::Duration;

use hyper::Method;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsnotify::Config;

const MAX: usize = 1024;

async fn server() -> TestServer {
    TestServer::start(Config {
        max_message_size: MAX,
        notification_interval: Duration::ZERO,
        ..Config::default()
    })
    .await
}

/// Sends what `offend` sends on a raw connection, checks the close code, then
/// checks that a bystander is unharmed.
async fn expect_close(expected: u16, offend: impl AsyncFnOnce(&mut RawWs)) {
    let server = server().await;
    let mut bystander = connect(server.addr, "/ws/bystander").await;
    let mut raw = RawWs::connect(server.addr, "/ws/offender").await;
    offend(&mut raw).await;
    assert_eq!(raw.close_code().await, Some(expected));
    assert_eq!(
        raw.read_frame().await,
        None,
        "the server must close the TCP connection after the close frame"
    );
    wait_for_connections(server.addr, 1).await;
    broadcast(server.addr, "still here").await;
    assert_eq!(next_text(&mut bystander).await, "still here");
}

#[tokio::test]
async fn oversized_text_is_closed_with_1009() {
    expect_close(1009, async |ws| {
        ws.send_frame(true, op::TEXT, &vec![b'a'; MAX + 1]).await
    })
    .await;
}

#[tokio::test]
async fn a_message_of_exactly_the_limit_is_accepted() {
    let server = server().await;
    let mut ws = connect(server.addr, "/ws").await;
    let text = "a".repeat(MAX);
    send(&mut ws, &text).await;
    assert_eq!(next_text(&mut ws).await, format!("You said: {text}"));
}

#[tokio::test]
async fn oversized_fragmented_text_is_closed_with_1009() {
    expect_close(1009, async |ws| {
        ws.send_frame(false, op::TEXT, &vec![b'a'; MAX / 2 + 1])
            .await;
        ws.send_frame(true, op::CONTINUATION, &vec![b'a'; MAX / 2 + 1])
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_huge_declared_length_is_refused_before_it_is_read() {
    expect_close(1009, async |ws| {
        // Header only: 8-byte length of 1 GiB, masked, no payload follows.
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        ws.send_raw_bytes(&frame).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    expect_close(1007, async |ws| {
        ws.send_frame(true, op::TEXT, &[0x66, 0xff, 0xfe]).await
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_across_fragments_is_closed_with_1007() {
    expect_close(1007, async |ws| {
        ws.send_frame(false, op::TEXT, b"ok").await;
        ws.send_frame(true, op::CONTINUATION, &[0xc3]).await;
    })
    .await;
}

#[tokio::test]
async fn binary_is_closed_with_1003() {
    expect_close(1003, async |ws| {
        ws.send_frame(true, op::BINARY, b"\x00\x01").await
    })
    .await;
}

#[tokio::test]
async fn reserved_bits_are_a_protocol_error() {
    expect_close(1002, async |ws| {
        ws.send_raw(0x80 | 0x40 | op::TEXT, b"hi").await
    })
    .await;
}

#[tokio::test]
async fn an_unknown_opcode_is_a_protocol_error() {
    expect_close(1002, async |ws| ws.send_raw(0x80 | 0x3, b"hi").await).await;
}

#[tokio::test]
async fn a_continuation_without_a_start_is_a_protocol_error() {
    expect_close(1002, async |ws| {
        ws.send_frame(true, op::CONTINUATION, b"hi").await
    })
    .await;
}

#[tokio::test]
async fn a_fragmented_ping_is_a_protocol_error() {
    expect_close(1002, async |ws| ws.send_frame(false, op::PING, b"hi").await).await;
}

#[tokio::test]
async fn a_bad_close_code_is_a_protocol_error() {
    expect_close(1002, async |ws| {
        ws.send_frame(true, op::CLOSE, &1005u16.to_be_bytes()).await
    })
    .await;
}

#[tokio::test]
async fn fragmented_text_with_an_interleaved_ping_is_reassembled() {
    let server = server().await;
    let mut other = connect(server.addr, "/ws/other").await;
    let mut raw = RawWs::connect(server.addr, "/ws/raw").await;
    raw.send_frame(false, op::TEXT, "Прив".as_bytes()).await;
    raw.send_frame(true, op::PING, b"p").await;
    raw.send_frame(true, op::CONTINUATION, "іт".as_bytes())
        .await;
    assert_eq!(
        raw.read_frame().await,
        Some((0xA, b"p".to_vec())),
        "pong first"
    );
    let (opcode, echo) = raw.read_frame().await.unwrap();
    assert_eq!(
        (opcode, String::from_utf8(echo).unwrap()),
        (op::TEXT, "You said: Привіт".to_owned())
    );
    assert_eq!(next_text(&mut other).await, "New message: Привіт");
}

#[tokio::test]
async fn a_client_close_is_echoed_with_its_code() {
    let server = server().await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    raw.send_frame(true, op::CLOSE, &payload).await;
    assert_eq!(raw.close_code().await, Some(1000));
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn pings_are_answered_with_pongs() {
    let server = server().await;
    let mut ws = connect(server.addr, "/ws").await;
    futures_util::SinkExt::send(&mut ws, Message::Ping(b"hello?".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"hello?".to_vec().into())
    );
}

#[tokio::test]
async fn a_vanished_client_is_forgotten() {
    let server = server().await;
    let raw = RawWs::connect(server.addr, "/ws").await;
    wait_for_connections(server.addr, 1).await;
    drop(raw); // TCP close without a close frame
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_gets_an_http_error() {
    let server = server().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"\x16\x03\x01garbage\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    // and the server still serves
    let reply = http(server.addr, Method::GET, "/health", "").await;
    assert_eq!(reply.status, hyper::StatusCode::OK);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_the_others_get_everything() {
    let server = TestServer::start(Config {
        outbound_queue: 8,
        notification_interval: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut fast = connect(server.addr, "/ws/fast").await;
    // Connected and greeted, then never reads again.
    let mut slow = RawWs::connect(server.addr, "/ws/slow").await;
    let payload = "x".repeat(32 * 1024);
    let body = serde_json::json!({ "message": payload }).to_string();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 400 {
            assert_eq!(next_text(&mut fast).await.len(), 32 * 1024);
            got += 1;
        }
        fast
    });
    // 400 × 32 KiB = 12.5 MiB: far more than the socket buffers hold.
    let mut sent = 0;
    while sent < 400 {
        http(server.addr, Method::POST, "/broadcast", &body).await;
        sent += 1;
    }
    wait_for_metric(server.addr, "wsnotify_slow_consumer_disconnects_total 1").await;
    let mut fast = reader.await.unwrap();
    wait_for_connections(server.addr, 1).await;
    // The slow client finds data, then either the 4008 close or a cut socket.
    if let Some(code) = slow.close_code().await {
        assert_eq!(code, 4008);
    }
    broadcast(server.addr, "after").await;
    assert_eq!(next_text(&mut fast).await, "after");
}

#[tokio::test]
async fn a_flooding_client_is_closed_with_1008_and_the_others_are_fine() {
    let server = TestServer::start(Config {
        rate_limit: 20,
        notification_interval: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut bystander = connect(server.addr, "/ws/bystander").await;
    let mut flood = RawWs::connect(server.addr, "/ws/flood").await;
    for i in 0..60 {
        flood
            .send_frame(true, op::TEXT, format!("spam {i}").as_bytes())
            .await;
    }
    assert_eq!(flood.close_code().await, Some(1008));
    // The burst allowance (20) went through; nothing beyond a second's worth.
    let mut relayed = 0;
    while let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(
        Duration::from_millis(300),
        futures_util::StreamExt::next(&mut bystander),
    )
    .await
    {
        assert!(text.starts_with("New message: spam"), "{text}");
        relayed += 1;
    }
    assert!((20..=25).contains(&relayed), "relayed {relayed}");
    broadcast(server.addr, "calm").await;
    assert_eq!(next_text(&mut bystander).await, "calm");
}

#[tokio::test]
async fn a_client_within_its_rate_is_never_limited() {
    let server = TestServer::start(Config {
        rate_limit: 20,
        notification_interval: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut ws = connect(server.addr, "/ws").await;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(60)).await; // ~16/s
        send(&mut ws, &format!("m{i}")).await;
        assert_eq!(next_text(&mut ws).await, format!("You said: m{i}"));
    }
}

/// The byte bound: with a frame bound too large to matter, a client that
/// stops reading large broadcasts is cut off once `OUTBOUND_QUEUE_BYTES` wait
/// for it (after the socket buffers are full), and the others get everything.
#[tokio::test]
async fn a_slow_consumer_is_disconnected_by_the_byte_bound() {
    let server = TestServer::start(Config {
        outbound_queue: 1 << 20,
        outbound_queue_bytes: 256 * 1024,
        notification_interval: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut fast = connect(server.addr, "/ws/fast").await;
    let _slow = RawWs::connect(server.addr, "/ws/slow").await;
    let payload = "x".repeat(32 * 1024);
    let body = serde_json::json!({ "message": payload }).to_string();
    let reader = tokio::spawn(async move {
        for _ in 0..600 {
            assert_eq!(next_text(&mut fast).await.len(), 32 * 1024);
        }
        fast
    });
    // 600 × 32 KiB = 18.75 MiB: more than the socket buffers plus 256 KiB.
    for _ in 0..600 {
        http(server.addr, Method::POST, "/broadcast", &body).await;
    }
    wait_for_metric(server.addr, "wsnotify_slow_consumer_disconnects_total 1").await;
    let mut fast = reader.await.unwrap();
    wait_for_connections(server.addr, 1).await;
    broadcast(server.addr, "after").await;
    assert_eq!(next_text(&mut fast).await, "after");
}
