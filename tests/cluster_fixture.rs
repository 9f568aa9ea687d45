//! The six-node Redis Cluster fixture (`support::cluster`) checked with real
//! commands: three primaries with a replica each, keys routed by
//! `redis-cli -c`, MOVED and ASK from single nodes, shard channels
//! (SSUBSCRIBE/SPUBLISH) read byte for byte on a raw RESP2 connection while
//! their slot migrates or their primary is demoted, a killed primary
//! replaced by its replica and rejoining, a manual failover, and a frozen
//! node. One cluster per test; each prints how long its steps took.

mod support;

use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use support::PATIENCE;
use support::cluster::{Cluster, Node, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One RESP2 value, as a raw connection reads it.
#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

fn bulk(text: &str) -> Resp {
    Resp::Bulk(Some(text.to_owned()))
}

/// `[kind, channel, n]`, as in a subscription confirmation.
fn counted(kind: &str, channel: &str, n: i64) -> Resp {
    Resp::Array(vec![bulk(kind), bulk(channel), Resp::Int(n)])
}

/// `[smessage, channel, message]`.
fn smessage(channel: &str, message: &str) -> Resp {
    Resp::Array(vec![bulk("smessage"), bulk(channel), bulk(message)])
}

/// The first complete value in `buf` and its length, if there is one.
fn parse(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let rest = end + 2;
    let number = |line: &str| line.parse::<i64>().expect("a RESP2 length");
    let value = match buf[0] {
        b'+' => (Resp::Simple(line), rest),
        b'-' => (Resp::Error(line), rest),
        b':' => (Resp::Int(number(&line)), rest),
        b'$' if number(&line) < 0 => (Resp::Bulk(None), rest),
        b'$' => {
            let len = number(&line) as usize;
            let text = buf.get(rest..rest + len)?;
            buf.get(rest + len + 1)?;
            (bulk(&String::from_utf8_lossy(text)), rest + len + 2)
        }
        b'*' => {
            let (mut items, mut at) = (Vec::new(), rest);
            for _ in 0..number(&line) {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            (Resp::Array(items), at)
        }
        other => panic!("not RESP2: {:?}", other as char),
    };
    Some(value)
}

/// A bare RESP2 connection: what a subscriber receives, exactly.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        self.stream.write_all(out.as_bytes()).await.unwrap();
    }

    /// The next value, or `None` if none arrives `within`.
    async fn read_within(&mut self, within: Duration) -> Option<Resp> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((value, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(value);
            }
            let mut chunk = [0; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk));
            match read.await {
                Err(_) => return None,
                Ok(Ok(0)) => panic!("the server closed the connection"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(err)) => panic!("read: {err}"),
            }
        }
    }

    async fn read(&mut self) -> Resp {
        let value = self.read_within(PATIENCE).await;
        value.unwrap_or_else(|| panic!("nothing arrived within {PATIENCE:?}"))
    }
}

/// `redis-cli -c -p PORT args…`, which follows MOVED: its last output line.
async fn cli(port: u16, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("redis-cli");
    command.args(["-c", "-p", &port.to_string()]).args(args);
    let out = command.output().await.expect("run redis-cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-cli {args:?}: {stdout}");
    stdout.trim().lines().last().unwrap_or_default().to_owned()
}

/// `MOVED 1234 127.0.0.1:7000` (or `ASK …`) from a redirection error.
fn redirect<T: std::fmt::Debug>(result: RedisResult<T>) -> String {
    let err = result.expect_err("a redirection");
    format!(
        "{} {}",
        err.code().unwrap_or("?"),
        err.detail().unwrap_or("?")
    )
}

async fn get(conn: &mut MultiplexedConnection, key: &str) -> RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(conn).await
}

async fn set(conn: &mut MultiplexedConnection, key: &str, value: &str) {
    let reply: String = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(reply, "OK");
}

async fn spublish(conn: &mut MultiplexedConnection, channel: &str, text: &str) -> RedisResult<i64> {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(text)
        .query_async(conn)
        .await
}

/// Ports of the primaries that are up.
fn primaries(nodes: &[Node]) -> Vec<u16> {
    let primaries = nodes
        .iter()
        .filter(|n| n.role == Role::Primary && !n.failing);
    primaries.map(|n| n.port).collect()
}

/// The node on `port`.
fn node(nodes: &[Node], port: u16) -> &Node {
    let node = nodes.iter().find(|n| n.port == port);
    node.unwrap_or_else(|| panic!("no node on {port}: {nodes:#?}"))
}

#[tokio::test]
async fn six_nodes_start_as_three_primaries_with_a_replica_each_and_route_keys() {
    let began = Instant::now();
    let cluster = Cluster::start().await;
    eprintln!("cluster_fixture: Cluster::start took {:?}", began.elapsed());

    let nodes = cluster.nodes().await;
    assert_eq!(nodes.len(), 6, "{nodes:#?}");
    let (primaries, replicas): (Vec<&Node>, Vec<&Node>) =
        nodes.iter().partition(|n| n.role == Role::Primary);
    assert_eq!((primaries.len(), replicas.len()), (3, 3), "{nodes:#?}");
    let mut followed: Vec<&str> = replicas
        .iter()
        .filter_map(|r| r.primary.as_deref())
        .collect();
    let mut ids: Vec<&str> = primaries.iter().map(|p| p.id.as_str()).collect();
    followed.sort();
    ids.sort();
    assert_eq!(followed, ids, "each primary has exactly one replica");
    assert!(nodes.iter().all(|n| !n.failing), "{nodes:#?}");
    let ranges = primaries.iter().flat_map(|p| &p.slots);
    let served: u32 = ranges
        .map(|&(first, last)| u32::from(last - first) + 1)
        .sum();
    assert_eq!(served, 16384);

    let urls = cluster.urls();
    assert_eq!(urls.len(), 6);
    assert!(
        urls.iter().all(|u| u.starts_with("redis://127.0.0.1:")),
        "{urls:?}"
    );
    assert_eq!(cluster.seeds(), urls.join(","));
    for port in cluster.ports() {
        let mut conn = cluster.client(port).await;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG", "node {port}");
    }

    // The CRC16 slot of the cluster spec, and hash tags.
    assert_eq!(cluster.slot_of("foo").await, 12182);
    assert_eq!(
        cluster.slot_of("{user:7}.inbox").await,
        cluster.slot_of("user:7").await
    );

    let key = "fixture:greeting";
    let slot = cluster.slot_of(key).await;
    let owner = cluster.owner_of_slot(slot).await;
    let others: Vec<u16> = primaries
        .iter()
        .map(|p| p.port)
        .filter(|&p| p != owner)
        .collect();
    assert_eq!(cli(others[0], &["SET", key, "hello"]).await, "OK");
    assert_eq!(cli(others[1], &["GET", key]).await, "hello");
    let mut on_owner = cluster.client(owner).await;
    assert_eq!(
        get(&mut on_owner, key).await.unwrap().as_deref(),
        Some("hello")
    );
    let mut elsewhere = cluster.client(others[0]).await;
    let moved = format!("MOVED {slot} 127.0.0.1:{owner}");
    assert_eq!(redirect(get(&mut elsewhere, key).await), moved);
    let replica = cluster.replica_of(owner).await;
    let mut on_replica = cluster.client(replica).await;
    assert_eq!(
        redirect(get(&mut on_replica, key).await),
        moved,
        "replicas redirect too"
    );

    let count = async |cluster: &Cluster| -> u64 {
        let stat = cluster.info_stat(owner, "total_commands_processed").await;
        stat.expect("a stat").parse().unwrap()
    };
    let before = count(&cluster).await;
    for _ in 0..5 {
        get(&mut on_owner, key).await.unwrap();
    }
    assert!(count(&cluster).await >= before + 5);
    assert!(cluster.info_stat(owner, "no_such_field").await.is_none());

    // A frozen primary answers nothing; thawed well within the node
    // timeout, it is still the primary.
    let frozen = others[0];
    let mut conn = cluster.client(frozen).await;
    let froze = Instant::now();
    cluster.pause(frozen);
    let ping = redis::cmd("PING");
    let ping = ping.query_async::<String>(&mut conn);
    let ping = tokio::time::timeout(Duration::from_millis(300), ping).await;
    assert!(
        !matches!(ping, Ok(Ok(_))),
        "a paused node answered PING: {ping:?}"
    );
    cluster.unpause(frozen).await;
    eprintln!(
        "cluster_fixture: paused and thawed in {:?}",
        froze.elapsed()
    );
    let mut conn = cluster.client(frozen).await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let roles = |nodes: &[Node]| nodes.iter().map(|n| (n.port, n.role)).collect::<Vec<_>>();
    assert_eq!(roles(&cluster.nodes().await), roles(&nodes), "no failover");
    eprintln!("cluster_fixture: start-up test took {:?}", began.elapsed());
}

#[tokio::test]
async fn a_shard_channel_and_its_keys_follow_their_slot_through_a_migration() {
    let began = Instant::now();
    let cluster = Cluster::start().await;
    let (channel, key) = ("fixture:news", "{fixture:news}:last");
    let slot = cluster.slot_of(channel).await;
    assert_eq!(cluster.slot_of(key).await, slot);
    let from = cluster.owner_of_slot(slot).await;
    let to = primaries(&cluster.nodes().await)
        .into_iter()
        .find(|&p| p != from)
        .unwrap();
    let (mut source, mut target) = (cluster.client(from).await, cluster.client(to).await);
    set(&mut source, key, "v1").await;

    let mut sub = Raw::connect(from).await;
    sub.send(&["SSUBSCRIBE", channel]).await;
    assert_eq!(sub.read().await, counted("ssubscribe", channel, 1));
    let channels = cluster.info_stat(from, "pubsubshard_channels").await;
    assert_eq!(channels.as_deref(), Some("1"));
    assert_eq!(spublish(&mut source, channel, "before").await.unwrap(), 1);
    assert_eq!(sub.read().await, smessage(channel, "before"));
    let moved_to_source = format!("MOVED {slot} 127.0.0.1:{from}");
    assert_eq!(
        redirect(spublish(&mut target, channel, "x").await),
        moved_to_source
    );

    // Mid-migration the source still serves the channel, even once the
    // keys have gone; the importing target redirects (no ASKING) back.
    let migration = cluster.begin_migration(slot, to).await;
    assert_eq!(
        (migration.slot, migration.from, migration.to),
        (slot, from, to)
    );
    assert_eq!(
        spublish(&mut source, channel, "migrating").await.unwrap(),
        1
    );
    assert_eq!(sub.read().await, smessage(channel, "migrating"));
    assert_eq!(migration.move_keys().await, 1);
    let ask = format!("ASK {slot} 127.0.0.1:{to}");
    assert_eq!(redirect(get(&mut source, key).await), ask);
    assert_eq!(
        spublish(&mut source, channel, "keys moved").await.unwrap(),
        1
    );
    assert_eq!(sub.read().await, smessage(channel, "keys moved"));
    assert_eq!(
        redirect(spublish(&mut target, channel, "x").await),
        moved_to_source
    );
    migration.finish().await;

    // The subscriber is told, unasked, that its channel is gone, and its
    // connection, now without subscriptions, takes plain commands again.
    let push = sub.read().await;
    eprintln!("cluster_fixture: the SSUBSCRIBEd RESP2 client read {push:?}");
    assert_eq!(push, counted("sunsubscribe", channel, 0));
    assert_eq!(sub.read_within(Duration::from_millis(200)).await, None);
    sub.send(&["PING"]).await;
    assert_eq!(sub.read().await, Resp::Simple("PONG".into()));
    let channels = cluster.info_stat(from, "pubsubshard_channels").await;
    assert_eq!(channels.as_deref(), Some("0"));

    let moved_to_target = format!("MOVED {slot} 127.0.0.1:{to}");
    assert_eq!(cluster.owner_of_slot(slot).await, to);
    assert_eq!(get(&mut target, key).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(redirect(get(&mut source, key).await), moved_to_target);
    assert_eq!(
        redirect(spublish(&mut source, channel, "x").await),
        moved_to_target
    );
    assert_eq!(cli(from, &["GET", key]).await, "v1");
    let mut sub = Raw::connect(to).await;
    sub.send(&["SSUBSCRIBE", channel]).await;
    assert_eq!(sub.read().await, counted("ssubscribe", channel, 1));
    assert_eq!(spublish(&mut target, channel, "after").await.unwrap(), 1);
    assert_eq!(sub.read().await, smessage(channel, "after"));

    // Back in one go, with more keys than one MIGRATE batch.
    let keys: Vec<String> = (0..250).map(|i| format!("{{fixture:news}}:{i}")).collect();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.set(key, key).ignore();
    }
    pipe.query_async::<()>(&mut target).await.unwrap();
    let moved = Instant::now();
    cluster.migrate_slot(slot, from).await;
    eprintln!(
        "cluster_fixture: 251 keys migrated in {:?}",
        moved.elapsed()
    );
    assert_eq!(sub.read().await, counted("sunsubscribe", channel, 0));
    assert_eq!(cluster.owner_of_slot(slot).await, from);
    for key in [&keys[0], &keys[249]] {
        assert_eq!(get(&mut source, key).await.unwrap().as_ref(), Some(key));
    }
    let count: usize = redis::cmd("DBSIZE").query_async(&mut source).await.unwrap();
    assert_eq!(count, 251, "the slot's keys, all on the source again");
    eprintln!("cluster_fixture: migration test took {:?}", began.elapsed());
}

#[tokio::test]
async fn a_killed_primary_is_replaced_by_its_replica_rejoins_and_fails_back() {
    let began = Instant::now();
    let cluster = Cluster::start().await;
    let key = "fixture:survivor";
    let slot = cluster.slot_of(key).await;
    let primary = cluster.owner_of_slot(slot).await;
    let replica = cluster.replica_of(primary).await;
    let mut conn = cluster.client(primary).await;
    set(&mut conn, key, "kept").await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica has the key");

    let killed = Instant::now();
    cluster.kill(primary).await;
    eprintln!(
        "cluster_fixture: primary killed, replica serving in {:?}",
        killed.elapsed()
    );
    assert_eq!(cluster.owner_of_slot(slot).await, replica);
    let mut promoted = cluster.client(replica).await;
    assert_eq!(
        get(&mut promoted, key).await.unwrap().as_deref(),
        Some("kept")
    );
    let nodes = cluster.nodes().await;
    let dead = node(&nodes, primary);
    assert!(dead.failing && dead.slots.is_empty(), "{dead:?}");
    assert_eq!(node(&nodes, replica).role, Role::Primary);
    let other = primaries(&nodes)
        .into_iter()
        .find(|&p| p != replica)
        .unwrap();
    assert_eq!(cli(other, &["GET", key]).await, "kept");

    let restarted = Instant::now();
    cluster.restart(primary).await;
    eprintln!(
        "cluster_fixture: restarted and rejoined in {:?}",
        restarted.elapsed()
    );
    let nodes = cluster.nodes().await;
    let back = node(&nodes, primary);
    assert_eq!(
        (back.role, back.failing),
        (Role::Replica, false),
        "{back:?}"
    );
    assert_eq!(back.primary.as_ref(), Some(&node(&nodes, replica).id));

    // A shard subscriber on the primary about to be demoted.
    let mut sub = Raw::connect(replica).await;
    sub.send(&["SSUBSCRIBE", key]).await;
    assert_eq!(sub.read().await, counted("ssubscribe", key, 1));
    let failed_over = Instant::now();
    cluster.failover(primary).await;
    eprintln!(
        "cluster_fixture: manual failover in {:?}",
        failed_over.elapsed()
    );
    let told = sub.read_within(Duration::from_secs(1)).await;
    assert_eq!(told, Some(counted("sunsubscribe", key, 0)), "demoted");
    // A replica takes shard subscriptions too (no READONLY needed) and
    // delivers what is published on its primary.
    sub.send(&["SSUBSCRIBE", key]).await;
    assert_eq!(sub.read().await, counted("ssubscribe", key, 1));
    let mut conn = cluster.client(primary).await;
    let receivers = spublish(&mut conn, key, "to the shard").await.unwrap();
    assert_eq!(sub.read().await, smessage(key, "to the shard"));
    assert_eq!(
        receivers, 0,
        "SPUBLISH counts only the primary's own subscribers"
    );
    let nodes = cluster.nodes().await;
    assert_eq!(node(&nodes, primary).role, Role::Primary);
    let demoted = node(&nodes, replica);
    assert_eq!(demoted.role, Role::Replica);
    assert_eq!(demoted.primary.as_ref(), Some(&node(&nodes, primary).id));
    assert_eq!(cluster.owner_of_slot(slot).await, primary);
    assert_eq!(get(&mut conn, key).await.unwrap().as_deref(), Some("kept"));
    eprintln!("cluster_fixture: failure test took {:?}", began.elapsed());
}
