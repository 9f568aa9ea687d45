//! Redis Cluster mode against a real six-node cluster ([`support::cluster`]),
//! and the same cross-instance suite on one Redis: notifications, rooms,
//! broadcasts and presence across instances exactly once, history resumed
//! across instances, the inbox. Then what only a cluster does: a hot room's
//! slot migrated while it is published to, a replica's `CLUSTER FAILOVER`,
//! a primary killed with SIGKILL, and a primary frozen with SIGSTOP, which
//! only the probe can notice. Through all of them a client that resumes
//! gets every message once and in order, or is told with `recovered:
//! false` what it cannot have.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::cluster::{Cluster, Role};
use support::history::*;
use support::redis::{Redis, inbox_add, instance_with, wait_for_ready, wait_for_ready_within};
use support::resume::{Follow, Followed, follow, publish_until_taken};
use support::*;
use tokio::sync::watch;
use wsnotify::Config;
use wsnotify::broker::redis::{presence_key, stream_channel};
use wsnotify::protocol::json::ServerMessage;

/// What the instances share: one Redis, or a cluster.
enum Shared {
    One(Redis),
    Cluster(Box<Cluster>),
}

impl Shared {
    /// Instances on it with history on and short Redis timings.
    fn config(&self) -> Config {
        let base = Config {
            history_size: 1000,
            redis_timeout: Duration::from_millis(500),
            redis_refresh_interval: Duration::from_millis(300),
            ..quiet_config()
        };
        match self {
            Shared::One(redis) => Config {
                redis_url: Some(redis.url()),
                ..base
            },
            Shared::Cluster(cluster) => Config {
                redis_cluster_urls: Some(cluster.urls()),
                ..base
            },
        }
    }

    /// A connection to the node that holds `key`.
    async fn client_for(&self, key: &str) -> ::redis::aio::MultiplexedConnection {
        match self {
            Shared::One(redis) => redis.client().await,
            Shared::Cluster(cluster) => {
                let owner = cluster.owner_of_slot(cluster.slot_of(key).await).await;
                cluster.client(owner).await
            }
        }
    }
}

/// The cross-instance suite, once per mode.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod one_redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Shared::One(super::Redis::start().await)).await
            })*
        }
        mod cluster {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Shared::Cluster(Box::new(super::Cluster::start().await))).await
            })*
        }
    };
}

both_modes!(
    notifications_rooms_broadcasts_and_presence_cross_instances_once,
    history_resumes_on_another_instance,
    the_inbox_delivers_to_every_instance,
);

/// The next placed message's text, skipping presence and rosters.
async fn next_text_of(ws: &mut Ws) -> String {
    text_of(&next_placed(ws).await.1)
}

/// Nothing placed arrives for a while (presence and pings may).
async fn no_more(ws: &mut Ws, who: &str) {
    let quiet = async {
        loop {
            let message = next_json_or_position(ws).await;
            if message.at().is_some() {
                return message;
            }
        }
    };
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), quiet).await {
        panic!("{who} got one more: {extra:?}");
    }
}

async fn notifications_rooms_broadcasts_and_presence_cross_instances_once(shared: Shared) {
    let a = instance_with(shared.config()).await;
    let b = instance_with(shared.config()).await;
    let (mut alice, _) = connect_following(a.addr, "/ws/notifications?user=alice", 2).await;
    let (mut dave, _) = connect_following(b.addr, "/ws/notifications?user=dave", 2).await;
    let (mut bob, _) = connect_following(b.addr, "/ws/rooms/lobby?user=bob", 3).await;
    let (mut carol, _) = connect_following(a.addr, "/ws/rooms/lobby?user=carol", 3).await;
    // Bob, on the other instance, hears Carol arrive.
    loop {
        match next_json(&mut bob).await {
            ServerMessage::PresenceJoin { user, .. } if user == "carol" => break,
            ServerMessage::PresenceJoin { .. } | ServerMessage::Joined { .. } => continue,
            other => panic!("bob expected carol's presence.join, got {other:?}"),
        }
    }
    notify(b.addr, "alice", "n1").await;
    assert_eq!(next_text_of(&mut alice).await, "n1");
    broadcast_at(a.addr, "b1").await;
    for (who, ws) in [
        ("alice", &mut alice),
        ("dave", &mut dave),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        assert_eq!(next_text_of(ws).await, "b1", "{who}");
    }
    publish_room(b.addr, "lobby", "r1").await;
    assert_eq!(next_text_of(&mut bob).await, "r1");
    assert_eq!(next_text_of(&mut carol).await, "r1");
    for (who, ws) in [
        ("alice", &mut alice),
        ("dave", &mut dave),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        no_more(ws, who).await;
    }
    let mut listed = presence(a.addr, "lobby").await["users"].clone();
    listed
        .as_array_mut()
        .unwrap()
        .sort_by_key(|u| u.to_string());
    assert_eq!(
        listed,
        json!(["bob", "carol"]),
        "presence spans the instances"
    );
    let total = http(b.addr, Method::GET, "/connections", "").await.json();
    assert_eq!(
        total["active_connections"], 4,
        "the count spans the instances"
    );
}

async fn history_resumes_on_another_instance(shared: Shared) {
    let a = instance_with(shared.config()).await;
    let b = instance_with(shared.config()).await;
    let (ws, first) = connect_following(a.addr, "/ws/notifications?user=erin", 2).await;
    let mut ws = ws;
    notify(b.addr, "erin", "m0").await;
    let (at, message) = next_placed(&mut ws).await;
    assert_eq!(text_of(&message), "m0");
    drop(ws);
    for n in 1..=3 {
        notify(a.addr, "erin", &format!("m{n}")).await;
    }
    let positions = [at, first[1].at.clone()];
    let path = format!("/ws/notifications?user=erin&since={}", since(&positions));
    let mut ws = connect_raw(b.addr, &path).await;
    // Each stream's position, then that stream's replay.
    let erin = expect_position(&mut ws).await;
    assert_eq!(
        (erin.at.stream.as_str(), erin.recovered),
        ("user:erin", Some(true))
    );
    for n in 1..=3 {
        let (at, message) = next_placed(&mut ws).await;
        assert_eq!((text_of(&message), at.offset), (format!("m{n}"), n + 1));
    }
    let broadcast = expect_position(&mut ws).await;
    assert_eq!(broadcast.recovered, Some(true), "{broadcast:?}");
    no_more(&mut ws, "erin").await;
}

async fn the_inbox_delivers_to_every_instance(shared: Shared) {
    let a = instance_with(shared.config()).await;
    let b = instance_with(shared.config()).await;
    let (mut on_a, _) = connect_following(a.addr, "/ws/notifications?user=fay", 2).await;
    let (mut on_b, _) = connect_following(b.addr, "/ws/notifications?user=fay", 2).await;
    let mut conn = shared.client_for("wsnotify:inbox").await;
    for n in 0..3 {
        inbox_add(&mut conn, "user:fay", &format!("from a worker {n}")).await;
    }
    // Each entry once, at offsets 1, 2, 3. Two instances read the inbox
    // side by side, so entries added together may be appended in either
    // order (docs/PROTOCOL.md, The inbox); both clients see the one order.
    let mut orders = Vec::new();
    for ws in [&mut on_a, &mut on_b] {
        let mut texts = Vec::new();
        for n in 1..=3 {
            let (at, message) = next_placed(ws).await;
            assert_eq!(at.offset, n);
            texts.push(text_of(&message));
        }
        no_more(ws, "fay").await;
        orders.push(texts.clone());
        texts.sort();
        assert_eq!(
            texts,
            ["from a worker 0", "from a worker 1", "from a worker 2"]
        );
    }
    assert_eq!(orders[0], orders[1], "one order for every reader");
}

// ---- Cluster only ----

/// Publishes `n` messages on `path` through `addr`, each retried with its
/// idempotency key until it is taken (a 503 while its partition moves);
/// `progress` counts those taken.
async fn publish_through(
    addr: SocketAddr,
    path: &str,
    n: usize,
    progress: &watch::Sender<usize>,
) -> Vec<String> {
    let mut sent = Vec::new();
    // Keys of this run only: a second run on the same stream is new messages.
    let run = uuid::Uuid::new_v4();
    for i in 0..n {
        let text = format!("m{i}");
        let body = if path.starts_with("/rooms/") {
            json!({ "text": text })
        } else {
            json!({ "message": text })
        };
        let key = format!("{run}-{i}");
        publish_until_taken(addr, path, &body.to_string(), &key, Duration::from_secs(30)).await;
        sent.push(text);
        progress.send_replace(i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

/// Every client has each message of `stream` once, in order: all of them,
/// or a part with a `recovered: false` of that stream.
fn assert_once_in_order_or_told(got: &Followed, stream: &str, sent: &[String]) {
    let texts = got.texts.get(stream).cloned().unwrap_or_default();
    let mut rest = sent.iter();
    for text in &texts {
        assert!(
            rest.any(|s| s == text),
            "{text} out of order or twice in {texts:?}"
        );
    }
    if texts != sent {
        assert!(
            got.told.iter().any(|(s, _)| s == stream),
            "{stream}: {} of {} messages, and never told: {:?}",
            texts.len(),
            sent.len(),
            got
        );
    }
}

/// Two instances on `cluster` with four resuming followers of `stream` (a
/// room or a user's notifications) spread over them, while `n` messages
/// are published through the second and `disturb` runs beside the
/// publisher once 15 are taken. Returns what each follower got.
async fn through_a_disturbance<D, Fut>(
    cluster: &Cluster,
    stream: &str,
    n: usize,
    disturb: D,
) -> (Vec<Followed>, Vec<String>)
where
    D: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let config = Shared::config_of(cluster);
    let a = instance_with(config.clone()).await;
    let b = instance_with(config).await;
    let (path, publish) = match stream.split_once(':') {
        Some(("room", room)) => (
            format!("/ws/rooms/{room}?user=watcher"),
            format!("/rooms/{room}/publish"),
        ),
        Some(("user", user)) => (
            format!("/ws/notifications?user={user}"),
            format!("/notify/{user}"),
        ),
        _ => panic!("{stream}"),
    };
    let (done, published) = watch::channel(None);
    let followers: Vec<_> = (0..4)
        .map(|i| {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            let me = Follow {
                first: addr,
                fallback: addr,
                path: path.clone(),
                streams: vec![stream.to_owned()],
                told_ok: true,
                positioned: None,
            };
            tokio::spawn(follow(me, published.clone()))
        })
        .collect();
    wait_for_connections(a.addr, 4).await;
    let (progress, mut taken) = watch::channel(0);
    let disturbance = async {
        let _ = taken.wait_for(|n| *n >= 15).await;
        disturb().await;
    };
    let (sent, ()) = tokio::join!(publish_through(b.addr, &publish, n, &progress), disturbance);
    done.send(Some(HashMap::from([(stream.to_owned(), sent.clone())])))
        .unwrap();
    let mut all = Vec::new();
    for follower in followers {
        let Ok(got) = tokio::time::timeout(Duration::from_secs(40), follower).await else {
            let health = |addr| async move { http(addr, Method::GET, "/health", "").await.body };
            let channel = stream_channel(&wsnotify::stream::Stream::User(
                stream.trim_start_matches("user:").into(),
            ));
            let mut subs = Vec::new();
            for port in cluster.ports() {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    continue;
                }
                let mut c = cluster.client(port).await;
                let n: Result<Vec<::redis::Value>, _> = ::redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(&channel)
                    .query_async(&mut c)
                    .await;
                subs.push((port, format!("{n:?}")));
            }
            let owner = cluster.owner_of_slot(cluster.slot_of(&channel).await).await;
            panic!(
                "a follower never got the last message; a: {}\nb: {}\nowner {owner}, subs {subs:?}",
                health(a.addr).await,
                health(b.addr).await
            );
        };
        let got = got.unwrap();
        assert_once_in_order_or_told(&got, stream, &sent);
        all.push(got);
    }
    wait_for_ready(a.addr, StatusCode::OK).await;
    wait_for_ready(b.addr, StatusCode::OK).await;
    (all, sent)
}

impl Shared {
    fn config_of(cluster: &Cluster) -> Config {
        Config {
            history_size: 1000,
            redis_timeout: Duration::from_millis(500),
            redis_refresh_interval: Duration::from_millis(300),
            redis_cluster_urls: Some(cluster.urls()),
            ..quiet_config()
        }
    }
}

#[tokio::test]
async fn a_hot_rooms_slot_migrates_while_it_is_published_to() {
    let cluster = Cluster::start().await;
    let slot = cluster.slot_of(&presence_key("hot")).await;
    let from = cluster.owner_of_slot(slot).await;
    let to = cluster
        .nodes()
        .await
        .into_iter()
        .find(|n| n.role == Role::Primary && n.port != from)
        .unwrap()
        .port;
    let (gots, sent) = through_a_disturbance(&cluster, "room:hot", 60, || async {
        let migration = cluster.begin_migration(slot, to).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(migration.move_keys().await > 0, "the room's keys moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
        migration.finish().await;
    })
    .await;
    assert_eq!(cluster.owner_of_slot(slot).await, to, "the slot moved");
    let complete = gots.iter().filter(|g| g.texts["room:hot"] == sent).count();
    eprintln!(
        "migration: {complete} of {} followers complete, told: {:?}",
        gots.len(),
        gots.iter().map(|g| &g.told).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_replicas_failover_and_a_killed_primary_lose_nothing_untold() {
    let cluster = Cluster::start().await;
    let gus = stream_channel(&wsnotify::stream::Stream::User("gus".into()));
    let user_slot = cluster.slot_of(&gus).await;
    let primary = cluster.owner_of_slot(user_slot).await;
    let replica = cluster.replica_of(primary).await;
    let (gots, sent) =
        through_a_disturbance(&cluster, "user:gus", 40, || cluster.failover(replica)).await;
    assert_eq!(
        cluster.owner_of_slot(user_slot).await,
        replica,
        "the replica serves the slot"
    );
    let complete = gots.iter().filter(|g| g.texts["user:gus"] == sent).count();
    assert_eq!(
        complete,
        gots.len(),
        "a manual failover loses nothing: {gots:?}"
    );

    // Now the primary (the former replica) dies.
    let (gots, _) = through_a_disturbance(&cluster, "user:gus", 40, || cluster.kill(replica)).await;
    assert_ne!(cluster.owner_of_slot(user_slot).await, replica);
    eprintln!(
        "kill: told {:?}",
        gots.iter().map(|g| &g.told).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_frozen_primary_is_caught_by_the_probe() {
    let cluster = Cluster::start().await;
    let a = instance_with(Shared::config_of(&cluster)).await;
    // Freeze a primary that holds neither the plain subscriber (the first
    // seed) nor the connection counts: only a partition's probe can tell.
    let seed = cluster.ports()[0];
    let counts = cluster
        .owner_of_slot(cluster.slot_of(wsnotify::broker::redis::COUNTS_KEY).await)
        .await;
    let frozen = cluster
        .nodes()
        .await
        .into_iter()
        .find(|n| n.role == Role::Primary && n.port != seed && n.port != counts)
        .unwrap();
    cluster.pause(frozen.port);
    let started = tokio::time::Instant::now();
    wait_for_ready_within(
        a.addr,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    let noticed = started.elapsed();
    let health = http(a.addr, Method::GET, "/health", "").await.json();
    let down = health["broker"]["partitions_down"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!down.is_empty(), "/health names the partitions: {health}");
    let p = down[0].as_u64().unwrap();
    let metrics = http(a.addr, Method::GET, "/metrics", "").await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("wsnotify_redis_partition_down{{partition=\"{p}\"}} 1")),
        "the metric names partition {p}"
    );
    cluster.unpause(frozen.port).await;
    wait_for_ready_within(a.addr, StatusCode::OK, Duration::from_secs(20)).await;
    eprintln!("a frozen primary noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(5),
        "the probe caught it in {noticed:?}"
    );
}
