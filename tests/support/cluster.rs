//! A real six-node Redis Cluster (three primaries, one replica each) of
//! Debian's `redis-server`: child processes on free loopback ports (with free
//! bus ports, port + 10000), each in its own process group, `node-PORT.conf`
//! and `.log` in a temporary directory, joined by `redis-cli --cluster
//! create`, killed on drop. Each change made through the fixture returns once
//! the cluster has settled ([`Cluster::settle`]), which `create`, and the
//! gossip after any change, return well before.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use super::nginx::TempDir;
use super::redis::free_port;
use super::{PATIENCE, kill_group};

/// Flags of every node but its port and files: a 2 s node timeout, so that
/// failovers take seconds, and no 5 s delay before a replica syncs.
const SERVER_ARGS: &str = "--bind 127.0.0.1 --protected-mode no --appendonly no \
    --cluster-enabled yes --cluster-announce-ip 127.0.0.1 --cluster-node-timeout 2000 \
    --repl-diskless-sync-delay 0";
/// Longest wait for the cluster to settle after a change.
const SETTLE: Duration = Duration::from_secs(40);

/// What a node is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Primary,
    Replica,
}

/// One node as a line of `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    pub port: u16,
    pub id: String,
    pub role: Role,
    /// The id of the primary a replica follows; `None` for a primary.
    pub primary: Option<String>,
    /// Flagged `fail` or `fail?` by the node asked (a killed node, say).
    pub failing: bool,
    /// The slot ranges it serves, first and last slot.
    pub slots: Vec<(u16, u16)>,
}

/// What one node says about the cluster: `cluster_state:ok`, its `CLUSTER
/// NODES` by port, and whether it is a primary or its link to one is up.
#[derive(Debug, PartialEq)]
struct View {
    state_ok: bool,
    nodes: Vec<Node>,
    link_up: bool,
}

impl View {
    /// The node on `port` in this view.
    fn node(&self, port: u16) -> &Node {
        let node = self.nodes.iter().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("no node on {port} in {:?}", self.nodes))
    }

    /// The port of the primary serving `slot` in this view.
    fn owner(&self, slot: u16) -> Option<u16> {
        let serves = |n: &&Node| n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot));
        self.nodes.iter().find(serves).map(|n| n.port)
    }
}

/// One `redis-server`: its port and, while it runs, its process.
struct Proc {
    port: u16,
    child: Mutex<Option<Child>>,
}

/// Six clustered `redis-server` processes, killed on drop (their logs and
/// configs then kept if the test failed).
pub struct Cluster {
    procs: [Proc; 6],
    /// Ports of the nodes stopped with SIGSTOP.
    paused: Mutex<BTreeSet<u16>>,
    dir: TempDir,
}

/// A slot on its way from the primary on port `from` to the one on `to`,
/// between [`Cluster::begin_migration`] and [`Migration::finish`].
pub struct Migration<'a> {
    cluster: &'a Cluster,
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    /// Node ids of `from` and `to`.
    ids: [String; 2],
}

/// A port free now whose cluster-bus port, port + 10000, is free too.
fn node_port() -> u16 {
    // Ports (and bus ports) handed out already: concurrent tests share none.
    static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let (port, mut taken) = (free_port(), lock(&TAKEN));
        let bus = port.saturating_add(10000);
        let free = |p| !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if bus < u16::MAX && !taken.contains(&port) && free(bus) {
            taken.extend([port, bus]);
            return port;
        }
    }
}

/// The guard, even if a panicking test poisoned the lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The command of `args` on a fresh connection to `port`.
async fn query<T: FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(PATIENCE));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let conn = client.get_multiplexed_async_connection_with_config(&config);
    let mut conn = conn.await.map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    let result = redis::Cmd::new().arg(args).query_async(&mut conn).await;
    result.map_err(|e| format!("127.0.0.1:{port} `{}`: {e}", args.join(" ")))
}

/// The command of `args` on `port`, which must succeed.
async fn must<T: FromRedisValue>(port: u16, args: &[&str]) -> T {
    query(port, args).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The value of `name` in `INFO`-style `name:value` lines.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = info.lines();
    lines.find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

/// `id 127.0.0.1:7000@17000[,host] flags primary ping pong epoch link slot…`
/// of `CLUSTER NODES`; slots `0-5460` or `5461`, not `[5462->-id]` (moving).
fn parse_node(line: &str) -> Option<Node> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = words.get(1)?.split(['@', ',']).next()?;
    let flags: Vec<&str> = words.get(2)?.split(',').collect();
    let replica = flags.contains(&"slave");
    let range = |w: &&str| {
        let (first, last) = w.split_once('-').unwrap_or((w, w));
        Some((first.parse().ok()?, last.parse().ok()?))
    };
    Some(Node {
        port: addr.rsplit(':').next()?.parse().ok()?,
        id: words[0].to_owned(),
        role: [Role::Primary, Role::Replica][replica as usize],
        primary: replica.then(|| words[3].to_owned()),
        failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
        slots: words.get(8..)?.iter().filter_map(range).collect(),
    })
}

/// What the node on `port` says about the cluster.
async fn view(port: u16) -> Result<View, String> {
    let info: String = query(port, &["CLUSTER", "INFO"]).await?;
    let nodes: String = query(port, &["CLUSTER", "NODES"]).await?;
    let replication: String = query(port, &["INFO", "replication"]).await?;
    let mut nodes: Vec<Node> = nodes.lines().filter_map(parse_node).collect();
    nodes.sort();
    let replication = |name, value| field(&replication, name) == Some(value);
    Ok(View {
        state_ok: field(&info, "cluster_state") == Some("ok"),
        nodes,
        link_up: replication("role", "master") || replication("master_link_status", "up"),
    })
}

/// Starts a node on `port`, with its config file and log in `dir`.
fn spawn(dir: &TempDir, port: u16) -> Child {
    let file = |ext: &str| dir.0.join(format!("node-{port}.{ext}"));
    let mut log = std::fs::File::options();
    let log = log.create(true).append(true).open(file("log")).unwrap();
    let mut server = Command::new("redis-server");
    server.args(["--port", &port.to_string(), "--save", ""]);
    server.args(SERVER_ARGS.split_whitespace());
    server.arg("--cluster-config-file").arg(file("conf"));
    server.arg("--dir").arg(&dir.0).stdin(Stdio::null());
    server.stdout(log.try_clone().unwrap()).stderr(log);
    server.process_group(0).kill_on_drop(true);
    server.spawn().expect("spawn redis-server (apt install it)")
}

impl Cluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create` and
    /// waits until they settle; starts over on fresh ports if that fails.
    pub async fn start() -> Cluster {
        let began = Instant::now();
        let mut failures = Vec::new();
        while failures.len() < 3 {
            let dir = TempDir::new("cluster");
            let procs = [(); 6].map(|()| {
                let port = node_port();
                let child = Mutex::new(Some(spawn(&dir, port)));
                Proc { port, child }
            });
            let paused = Mutex::default();
            let cluster = Cluster { procs, paused, dir };
            if let Err(why) = cluster.create().await {
                failures.push(why);
                continue;
            }
            cluster.settle().await;
            let (seeds, took) = (cluster.seeds(), began.elapsed());
            eprintln!("cluster fixture: {seeds} settled in {took:?}");
            return cluster;
        }
        panic!("no Redis Cluster in 3 attempts:\n{}", failures.join("\n"));
    }

    /// Waits for every node, then runs `redis-cli --cluster create`.
    async fn create(&self) -> Result<(), String> {
        for port in self.ports() {
            self.wait_for_ping(port).await?;
        }
        let mut create = Command::new("redis-cli");
        create.args("--cluster create --cluster-yes --cluster-replicas 1".split(' '));
        create.args(self.ports().into_iter().map(|p| format!("127.0.0.1:{p}")));
        create.stdin(Stdio::null()).kill_on_drop(true);
        let out = timeout(Duration::from_secs(60), create.output()).await;
        let out = out.map_err(|_| "redis-cli --cluster create hangs".to_owned())?;
        let out = out.map_err(|e| format!("run redis-cli: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains("All 16384 slots covered") {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("create failed ({}):\n{stdout}{stderr}", out.status))
    }

    /// Polls until the node on `port` answers PING; fails if it exits.
    async fn wait_for_ping(&self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE * 2;
        while query::<String>(port, &["PING"]).await.is_err() {
            let exited = lock(&self.proc(port).child).as_mut().map(Child::try_wait);
            if matches!(exited, Some(Ok(Some(_)))) || Instant::now() >= deadline {
                let log = self.dir.0.join(format!("node-{port}.log"));
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("{port} never answered ({exited:?}):\n{log}"));
            }
            sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn proc(&self, port: u16) -> &Proc {
        let proc = self.procs.iter().find(|m| m.port == port);
        proc.unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// Ports of the nodes running and not paused.
    fn live(&self) -> Vec<u16> {
        let paused = lock(&self.paused);
        let live = |m: &&Proc| lock(&m.child).is_some() && !paused.contains(&m.port);
        self.procs.iter().filter(live).map(|m| m.port).collect()
    }

    /// The view (of live nodes) all live nodes share, or why there is none.
    async fn agreement(&self) -> Result<View, String> {
        let live = self.live();
        let mut agreed: Option<View> = None;
        for &port in &live {
            let mut view = view(port).await?;
            view.nodes.retain(|n| live.contains(&n.port));
            let ranges = view.nodes.iter().flat_map(|n| &n.slots);
            let served: u16 = ranges.map(|(first, last)| last - first + 1).sum();
            let failing = view.nodes.iter().find(|n| n.failing);
            let why = if !view.state_ok {
                "cluster_state is not ok".to_owned()
            } else if !view.link_up {
                "its link to its primary is down".to_owned()
            } else if let Some(node) = failing {
                format!("it flags running {} as failing", node.port)
            } else if view.nodes.len() != live.len() {
                format!("it knows {:?} of {live:?}", view.nodes)
            } else if served != 16384 {
                format!("{served} of the 16384 slots are on running primaries")
            } else if agreed.as_ref().is_some_and(|first| *first != view) {
                format!("it disagrees with {}: {agreed:?} vs {view:?}", live[0])
            } else {
                agreed = Some(view);
                continue;
            };
            return Err(format!("127.0.0.1:{port}: {why}"));
        }
        agreed.ok_or_else(|| "no node is running".to_owned())
    }

    /// Polls until the cluster has settled and `done` holds for its view.
    async fn settle_until(&self, what: &str, done: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let why = match self.agreement().await {
                Ok(view) if done(&view) => return,
                Ok(_) => format!("settled, but not yet {what}"),
                Err(why) => why,
            };
            let logs = self.dir.0.display();
            let late = Instant::now() >= deadline;
            assert!(!late, "unsettled after {SETTLE:?}: {why} (logs: {logs})");
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running, unpaused node says `cluster_state:ok` and
    /// shows the same roles and slots (all on running primaries) in `CLUSTER
    /// NODES`, none flags a running node failing and replicas' links are up.
    pub async fn settle(&self) {
        self.settle_until("", |_| true).await;
    }

    /// What the first live node says.
    async fn any_view(&self) -> View {
        let port = *self.live().first().expect("a running node");
        view(port).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Ports of all six nodes, in start order (killed ones too).
    pub fn ports(&self) -> Vec<u16> {
        self.procs.iter().map(|m| m.port).collect()
    }

    /// `redis://127.0.0.1:{port}` of every node.
    pub fn urls(&self) -> Vec<String> {
        let url = |port| format!("redis://127.0.0.1:{port}");
        self.ports().into_iter().map(url).collect()
    }

    /// The urls joined by commas, as a `REDIS_CLUSTER_URLS` setting takes them.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// Every node (killed ones flagged failing) as a running node sees them.
    pub async fn nodes(&self) -> Vec<Node> {
        self.any_view().await.nodes
    }

    /// The port of the replica following the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> u16 {
        let view = self.any_view().await;
        let id = Some(&view.node(primary).id);
        let replica = view.nodes.iter().find(|n| n.primary.as_ref() == id);
        replica.map(|n| n.port).expect("a replica of the primary")
    }

    /// The port of the primary serving `slot` now.
    pub async fn owner_of_slot(&self, slot: u16) -> u16 {
        let owner = self.any_view().await.owner(slot);
        owner.unwrap_or_else(|| panic!("slot {slot} is not served"))
    }

    /// The hash slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let port = *self.live().first().expect("a running node");
        must(port, &["CLUSTER", "KEYSLOT", key]).await
    }

    /// A plain connection to the node on `port` alone (no redirections).
    pub async fn client(&self, port: u16) -> MultiplexedConnection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let conn = client.get_multiplexed_async_connection().await;
        conn.unwrap_or_else(|e| panic!("connect to {port}: {e}"))
    }

    /// Field `field` of `INFO everything` on `port`, e.g. `pubsubshard_channels`
    /// or `cmdstat_spublish` (`calls=…,usec=…`); `None` if absent.
    pub async fn info_stat(&self, port: u16, field: &str) -> Option<String> {
        let info: String = must(port, &["INFO", "everything"]).await;
        self::field(&info, field).map(str::to_owned)
    }

    /// SIGKILLs the node on `port` (its whole process group), then waits
    /// until the cluster has settled without it: for a primary, until its
    /// replica has been promoted and serves its slots.
    pub async fn kill(&self, port: u16) {
        let child = lock(&self.proc(port).child).take();
        let mut child = child.unwrap_or_else(|| panic!("node {port} is not running"));
        kill_group(&child);
        let _ = child.wait().await;
        lock(&self.paused).remove(&port);
        self.settle().await;
    }

    /// Starts a killed node again on its port with its config file, so it
    /// rejoins (a killed primary as a replica of the one promoted in its
    /// place), and waits until the cluster has settled with it.
    pub async fn restart(&self, port: u16) {
        let new = spawn(&self.dir, port);
        let running = lock(&self.proc(port).child).replace(new);
        assert!(running.is_none(), "node {port} was still running");
        let back = self.wait_for_ping(port).await;
        back.unwrap_or_else(|why| panic!("node {port} did not come back: {why}"));
        self.settle().await;
    }

    fn signal(&self, port: u16, signal: libc::c_int) {
        let pid = lock(&self.proc(port).child).as_ref().and_then(Child::id);
        let pid = pid.unwrap_or_else(|| panic!("node {port} is not running"));
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    /// Freezes the node on `port` (SIGSTOP): connections stay open, nothing
    /// is answered. Frozen past `--cluster-node-timeout` (2 s), a primary is
    /// failed over; [`Cluster::settle`] then waits for that.
    pub fn pause(&self, port: u16) {
        self.signal(port, libc::SIGSTOP);
        lock(&self.paused).insert(port);
    }

    /// Thaws a paused node (SIGCONT) and waits until it answers and the
    /// cluster has settled with it.
    pub async fn unpause(&self, port: u16) {
        self.signal(port, libc::SIGCONT);
        lock(&self.paused).remove(&port);
        let back = self.wait_for_ping(port).await;
        back.unwrap_or_else(|why| panic!("node {port} did not thaw: {why}"));
        self.settle().await;
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`; waits until every
    /// node agrees it is a primary (its old primary now its replica).
    pub async fn failover(&self, replica: u16) {
        must::<()>(replica, &["CLUSTER", "FAILOVER"]).await;
        let promoted = |view: &View| view.node(replica).role == Role::Primary;
        self.settle_until(&format!("{replica} a primary"), promoted)
            .await;
    }

    /// Moves `slot` and its keys from its primary to the primary on `to`
    /// and waits until every node agrees on the new owner.
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let migration = self.begin_migration(slot, to).await;
        migration.move_keys().await;
        migration.finish().await;
    }

    /// Marks `slot` IMPORTING on `to` and MIGRATING on its owner; the keys
    /// stay where they are until [`Migration::move_keys`].
    pub async fn begin_migration(&self, slot: u16, to: u16) -> Migration<'_> {
        let view = self.any_view().await;
        let from = view.owner(slot).expect("the slot is served");
        let ids = [view.node(from).id.clone(), view.node(to).id.clone()];
        let s = &slot.to_string();
        must::<()>(to, &["CLUSTER", "SETSLOT", s, "IMPORTING", &ids[0]]).await;
        must::<()>(from, &["CLUSTER", "SETSLOT", s, "MIGRATING", &ids[1]]).await;
        let cluster = self;
        Migration {
            cluster,
            slot,
            from,
            to,
            ids,
        }
    }
}

impl Migration<'_> {
    /// MIGRATEs the slot's keys to the target, 100 at a time, until none
    /// is left on the source; returns how many moved.
    pub async fn move_keys(&self) -> usize {
        let (slot, to) = (&self.slot.to_string(), &self.to.to_string());
        let mut moved = 0;
        loop {
            let list = ["CLUSTER", "GETKEYSINSLOT", slot, "100"];
            let keys: Vec<String> = must(self.from, &list).await;
            if keys.is_empty() {
                return moved;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", to, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            must::<()>(self.from, &migrate).await;
            moved += keys.len();
        }
    }

    /// `CLUSTER SETSLOT slot NODE target` on the target, the source and the
    /// other primaries, then waits until every node agrees on the new owner.
    pub async fn finish(self) {
        let (live, nodes) = (self.cluster.live(), self.cluster.nodes().await);
        let other = |n: &&Node| n.role == Role::Primary && !self.ids.contains(&n.id);
        let others = nodes.iter().filter(other).map(|n| n.port);
        let slot = &self.slot.to_string();
        for port in [self.to, self.from].into_iter().chain(others) {
            if live.contains(&port) {
                must::<()>(port, &["CLUSTER", "SETSLOT", slot, "NODE", &self.ids[1]]).await;
            }
        }
        let moved = |view: &View| view.owner(self.slot) == Some(self.to);
        let what = format!("slot {slot} on {}", self.to);
        self.cluster.settle_until(&what, moved).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in &self.procs {
            if let Some(child) = lock(&proc.child).as_ref() {
                kill_group(child);
            }
        }
        if std::thread::panicking() {
            eprintln!("cluster fixture: logs kept in {}", self.dir.0.display());
            self.dir.0 = Default::default();
        }
    }
}
