//! The headline: a graceful drain loses nothing. Two instances share Redis;
//! one (the real binary) is stopped with SIGTERM under steady publishing
//! while its WebSocket, long-poll and SSE clients move to the other and
//! resume. Every client ends with every message of its streams exactly
//! once, in order.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;
use support::history::*;
use support::process::Proc;
use support::redis::{Redis, instance_with, wait_for_ready};
use support::resume::{Got, Published, complete, positioned, ws_client};
use support::*;
use tokio::sync::watch;
use wsnotify::Config;

/// A long-polling client of `user`: a 503 (the drain) sends it to `fallback`.
async fn poll_client(
    first: SocketAddr,
    fallback: SocketAddr,
    user: String,
    published: Published,
    positioned: Arc<AtomicUsize>,
) -> Got {
    let streams = vec![format!("user:{user}"), "broadcast".to_owned()];
    let mut got = Got::new();
    let mut addr = first;
    let start = poll(addr, &format!("user={user}")).await.json();
    let mut next = start["next"].as_str().unwrap().to_owned();
    positioned.fetch_add(1, Ordering::SeqCst);
    while !complete(&got, &published, &streams) {
        let reply = poll(addr, &format!("user={user}&wait=1&since={}", encode(&next))).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            addr = fallback;
            continue;
        }
        let answer = reply.json();
        assert_eq!(answer["recovered"], true, "{user}: {answer}");
        for message in answer["messages"].as_array().unwrap() {
            let stream = message["stream"].as_str().unwrap().to_owned();
            got.entry(stream).or_default().push(data_text(message));
        }
        next = answer["next"].as_str().unwrap().to_owned();
    }
    got
}

/// An SSE client of `user`: when the stream ends it reconnects to
/// `fallback` with the last event id it saw.
async fn sse_client(
    first: SocketAddr,
    fallback: SocketAddr,
    user: String,
    published: Published,
    positioned: Arc<AtomicUsize>,
) -> Got {
    let streams = vec![format!("user:{user}"), "broadcast".to_owned()];
    let mut got = Got::new();
    let mut addr = first;
    let mut last_id: Option<String> = None;
    let mut counted = false;
    loop {
        let headers: Vec<(&str, &str)> = last_id
            .iter()
            .map(|id| ("last-event-id", id.as_str()))
            .collect();
        let mut sse = Sse::connect(addr, &format!("/sse?user={user}"), &headers).await;
        loop {
            let event = match sse.next_event_within(Duration::from_millis(500)).await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) if complete(&got, &published, &streams) => return got,
                Err(_) => continue,
            };
            assert_ne!(event.event.as_deref(), Some("reset"), "{user}: {event:?}");
            // The stream's first event gives its positions (see PROTOCOL.md).
            if !counted && event.event.as_deref() == Some("position") {
                counted = true;
                positioned.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(id) = event.id.clone() {
                last_id = Some(id);
            }
            if event.event.is_none() && !event.data.is_empty() {
                let message: Value = serde_json::from_str(&event.data).unwrap();
                let stream = message["stream"].as_str().unwrap().to_owned();
                got.entry(stream).or_default().push(data_text(&message));
            }
            if complete(&got, &published, &streams) {
                return got;
            }
        }
        if complete(&got, &published, &streams) {
            return got;
        }
        addr = fallback;
    }
}

fn data_text(message: &Value) -> String {
    match &message["data"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn a_drained_instances_clients_resume_elsewhere_and_lose_nothing() {
    let redis = Redis::start().await;
    let b = instance_with(Config {
        history_size: 1000,
        ..support::redis::config(&redis)
    })
    .await;
    let env = [
        ("REDIS_URL", redis.url()),
        ("REDIS_TIMEOUT", "0.5".to_owned()),
        ("HISTORY_SIZE", "1000".to_owned()),
        ("SHUTDOWN_TIMEOUT", "20".to_owned()),
        ("DRAIN_RECONNECT_SPREAD", "1".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = Proc::start(&env).await;
    wait_for_ready(a.addr, StatusCode::OK).await;

    let (tx, published) = watch::channel(None);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..12 {
        let user = format!("w{i}");
        clients.push((
            "ws",
            tokio::spawn(ws_client(
                a.addr,
                b.addr,
                user,
                published.clone(),
                Some(ready.clone()),
            )),
        ));
    }
    for i in 0..3 {
        let user = format!("p{i}");
        clients.push((
            "poll",
            tokio::spawn(poll_client(
                a.addr,
                b.addr,
                user,
                published.clone(),
                ready.clone(),
            )),
        ));
        let user = format!("s{i}");
        clients.push((
            "sse",
            tokio::spawn(sse_client(
                a.addr,
                b.addr,
                user,
                published.clone(),
                ready.clone(),
            )),
        ));
    }
    wait_for_connections(a.addr, 12).await;
    // Clients without `since` start at the head: publishing begins once all
    // 18 have their positions, or an early message would not be theirs.
    positioned(&ready, 18).await;

    // Steady publishing through the other instance: notifications to every
    // user and broadcasts, 40 a second, for three seconds; the drain starts
    // after one.
    let users: Vec<String> = (0..12)
        .map(|i| format!("w{i}"))
        .chain((0..3).map(|i| format!("p{i}")))
        .chain((0..3).map(|i| format!("s{i}")))
        .collect();
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(25));
    for n in 0..120 {
        ticks.tick().await;
        if n == 40 {
            a.signal(libc::SIGTERM);
        }
        let text = format!("m{n}");
        if n % 4 == 0 {
            broadcast_at(b.addr, &text).await;
            sent.entry("broadcast".into()).or_default().push(text);
        } else {
            let user = &users[n % users.len()];
            notify(b.addr, user, &text).await;
            sent.entry(format!("user:{user}")).or_default().push(text);
        }
    }
    tx.send(Some(sent.clone())).unwrap();
    for (kind, client) in clients {
        let got = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .unwrap_or_else(|_| panic!("a {kind} client never got everything"))
            .unwrap();
        for (stream, texts) in &got {
            assert_eq!(
                texts, &sent[stream],
                "{kind} client, {stream}: exactly once, in order"
            );
        }
    }
    assert!(
        a.exit(Duration::from_secs(25)).await,
        "the drained instance exits 0"
    );
    assert!(
        a.logged("graceful shutdown completed"),
        "every client left by itself"
    );
}
