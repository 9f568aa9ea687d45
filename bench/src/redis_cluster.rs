//! A private six-node Redis Cluster (three primaries, one replica each) of
//! `redis-server` processes for the benchmarks, and the Redis statistics
//! they read: a RESP request on one node ([`query`]) and `INFO` fields
//! ([`info`], [`calls`]).
//!
//! The nodes are started as tests/support/cluster.rs does it, but pinned
//! like every other process under test ([`Proc::spawn`]): each on a free
//! loopback port whose cluster-bus port (port + 10000) is free too, with
//! `--cluster-enabled yes`, its `nodes.conf` in a private directory, no
//! persistence; joined by `redis-cli --cluster create … --cluster-replicas 1
//! --cluster-yes` (retried on fresh ports), then polled until every node
//! reports `cluster_state:ok`, three primaries serve all 16384 slots and
//! every replica's link is up (`create` returns before that).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::{Proc, free_port};

/// Flags of every node but its port and files (those of the tests' fixture).
const NODE_ARGS: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--cluster-enabled",
    "yes",
    "--cluster-announce-ip",
    "127.0.0.1",
    "--cluster-node-timeout",
    "2000",
    "--repl-diskless-sync-delay",
    "0",
    "--maxclients",
    "1000",
    "--loglevel",
    "warning",
];

/// One node: its process and what `CLUSTER NODES` says it is.
pub struct Node {
    pub proc: Proc,
    pub primary: bool,
}

impl Node {
    pub fn port(&self) -> u16 {
        self.proc.addr.port()
    }
}

/// Six clustered `redis-server` processes, killed (and their directory
/// removed) when dropped.
pub struct RedisCluster {
    /// Primaries first (by port), then replicas.
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes of `bin` pinned to `cpu`, joins them with `cli`
    /// (`redis-cli`) and waits until the cluster has settled; starts over
    /// on fresh ports if that fails (three attempts).
    pub async fn start(bin: &str, cli: &str, cpu: usize) -> Result<RedisCluster> {
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let dir = std::env::temp_dir().join(format!(
                "wsnotify-bench-cluster-{}-{attempt}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            match Self::try_start(bin, cli, cpu, dir.clone()).await {
                Ok(cluster) => return Ok(cluster),
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(format!("{err:#}"));
                }
            }
        }
        bail!("no Redis Cluster in 3 attempts: {}", failures.join("; "))
    }

    async fn try_start(bin: &str, cli: &str, cpu: usize, dir: PathBuf) -> Result<RedisCluster> {
        let mut procs = Vec::new();
        let mut taken = Vec::new();
        while procs.len() < 6 {
            let port = free_port()?;
            let bus = port.checked_add(10000);
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            let Some(bus) = bus.filter(|&b| free(b) && !taken.contains(&b)) else {
                continue;
            };
            if taken.contains(&port) {
                continue;
            }
            taken.extend([port, bus]);
            let mut args: Vec<String> = ["--port", &port.to_string(), "--dir"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.push(dir.display().to_string());
            args.push("--cluster-config-file".into());
            args.push(dir.join(format!("node-{port}.conf")).display().to_string());
            args.extend(NODE_ARGS.iter().map(|s| s.to_string()));
            procs.push(Proc::spawn("redis-node", bin, cpu, port, &args, &[])?);
        }
        for proc in &procs {
            proc.wait_listening().await?;
            wait_until(Duration::from_secs(10), || async {
                query(proc.addr, &["PING"]).await.is_ok()
            })
            .await
            .with_context(|| format!("node {} never answered PING", proc.addr))?;
        }
        let out = tokio::process::Command::new(cli)
            .args(["--cluster", "create"])
            .args(procs.iter().map(|p| p.addr.to_string()))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .context("redis-cli --cluster create hangs")?
            .with_context(|| format!("run {cli}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
        wait_until(Duration::from_secs(40), || settled(&addrs))
            .await
            .context("the cluster did not settle in 40 s")?;
        // Roles as the first node sees them, now that all agree.
        let roles = parse_nodes(&query(addrs[0], &["CLUSTER", "NODES"]).await?);
        let mut nodes: Vec<Node> = procs
            .into_iter()
            .map(|proc| {
                let primary = roles.get(&proc.addr.port()).is_some_and(|r| r.0);
                Node { proc, primary }
            })
            .collect();
        nodes.sort_by_key(|n| (!n.primary, n.port()));
        if nodes.iter().filter(|n| n.primary).count() != 3 {
            bail!("not three primaries: {roles:?}");
        }
        Ok(RedisCluster { nodes, dir })
    }

    /// The primaries, by port.
    pub fn primaries(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.primary)
    }

    /// The replicas, by port.
    pub fn replicas(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.primary)
    }

    /// Every node as `REDIS_CLUSTER_URLS` takes them.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("redis://{}", n.proc.addr))
            .collect();
        urls.join(",")
    }

    /// Empties every primary (replicas follow), between runs.
    pub async fn flush(&self) -> Result<()> {
        for node in self.primaries() {
            query(node.proc.addr, &["FLUSHALL"]).await?;
        }
        Ok(())
    }

    /// The slot ranges each primary serves (`first-last` words), by port.
    pub async fn slots(&self) -> Result<BTreeMap<u16, String>> {
        let nodes = parse_nodes(&query(self.nodes[0].proc.addr, &["CLUSTER", "NODES"]).await?);
        Ok(nodes
            .into_iter()
            .filter(|(_, (primary, _))| *primary)
            .map(|(port, (_, slots))| (port, slots))
            .collect())
    }
}

/// `CLUSTER NODES` by port: whether the node is a primary, and its slots
/// (`id 127.0.0.1:7000@17000 flags primary ping pong epoch link slot…`).
fn parse_nodes(text: &str) -> BTreeMap<u16, (bool, String)> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let addr = words.get(1)?.split(['@', ',']).next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let primary = words.get(2)?.split(',').any(|f| f == "master");
            Some((port, (primary, words.get(8..)?.join(" "))))
        })
        .collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether every node says `cluster_state:ok`, sees three primaries with
/// slots and three replicas, and (a replica) has its link to its primary up.
async fn settled(addrs: &[SocketAddr]) -> bool {
    for &addr in addrs {
        let (Ok(state), Ok(nodes), Ok(replication)) = (
            query(addr, &["CLUSTER", "INFO"]).await,
            query(addr, &["CLUSTER", "NODES"]).await,
            query(addr, &["INFO", "replication"]).await,
        ) else {
            return false;
        };
        let info = info(&state);
        let nodes = parse_nodes(&nodes);
        let primaries = nodes.values().filter(|(p, slots)| *p && !slots.is_empty());
        let replicas = nodes.values().filter(|(p, _)| !*p).count();
        let replication = self::info(&replication);
        let link_up = replication.get("role").map(String::as_str) == Some("master")
            || replication.get("master_link_status").map(String::as_str) == Some("up");
        if info.get("cluster_state").map(String::as_str) != Some("ok")
            || info.get("cluster_slots_assigned").map(String::as_str) != Some("16384")
            || primaries.count() != 3
            || replicas != 3
            || !link_up
        {
            return false;
        }
    }
    true
}

/// Polls `ok` every 50 ms until it holds, or fails after `limit`.
async fn wait_until<F, Fut>(limit: Duration, mut ok: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ok().await {
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends `args` as one RESP command to the node at `addr` (a fresh
/// connection) and answers its reply as text: a simple or bulk string, an
/// integer's digits; an error reply is an error. Enough for `PING`,
/// `INFO`, `CLUSTER INFO|NODES`, `FLUSHALL`, `CONFIG RESETSTAT`.
pub async fn query(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::with_capacity(4096);
    let line_end = loop {
        if let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        read_more(addr, &mut stream, &mut reply).await?;
    };
    let head = String::from_utf8_lossy(&reply[..line_end]).into_owned();
    match head.as_bytes().first() {
        Some(b'+') | Some(b':') => Ok(head[1..].to_owned()),
        Some(b'-') => bail!("redis {addr}: {head}"),
        Some(b'$') => {
            let len: usize = head[1..].parse().context("a bulk length")?;
            let total = line_end + 2 + len + 2;
            while reply.len() < total {
                read_more(addr, &mut stream, &mut reply).await?;
            }
            Ok(String::from_utf8_lossy(&reply[line_end + 2..line_end + 2 + len]).into_owned())
        }
        _ => bail!("redis {addr}: unexpected reply {head:?}"),
    }
}

/// Reads more of a reply (5 s at most).
async fn read_more(addr: SocketAddr, stream: &mut TcpStream, reply: &mut Vec<u8>) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), stream.read_buf(reply)).await {
        Ok(Ok(0)) => bail!("redis {addr} closed the connection"),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => bail!("no reply from {addr} in 5 s"),
    }
}

/// The `name:value` lines of an `INFO` (or `CLUSTER INFO`) reply.
pub fn info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The `calls=` of a `cmdstat_NAME` line of `INFO commandstats` (0 when
/// the command never ran).
pub fn calls(info: &BTreeMap<String, String>, command: &str) -> u64 {
    info.get(&format!("cmdstat_{command}"))
        .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("calls=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
