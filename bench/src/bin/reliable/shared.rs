//! What the scenarios share: the command line's common options, the pinned
//! generator runtime, the broker modes, and connecting many clients.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinSet;
use wsnotify_bench::procs::{Proc, Redis, pin_thread};
use wsnotify_bench::provenance;

/// Options of every scenario.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Core the servers (and Redis) are pinned to; the generator takes the next one.
    #[arg(long, default_value_t = 0, global = true)]
    pub server_cpu: usize,
    #[arg(long, default_value = "target/release/wsnotify", global = true)]
    pub wsnotify_bin: String,
    #[arg(long, default_value = "redis-server", global = true)]
    pub redis_bin: String,
    /// WebSocket handshakes in flight at once while connecting clients.
    #[arg(long, default_value_t = 256, global = true)]
    pub connect_concurrency: usize,
}

impl Common {
    /// The generator's core.
    pub fn generator_cpu(&self) -> usize {
        self.server_cpu + 1
    }

    /// Runs `job` on a fresh single-threaded runtime pinned to the
    /// generator's core; everything it spawned is dropped (sockets closed)
    /// when it returns.
    pub fn on_generator<F: Future>(&self, job: F) -> Result<F::Output> {
        pin_thread(self.generator_cpu());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let out = runtime.block_on(job);
        drop(runtime);
        Ok(out)
    }

    /// Runs `job` on a thread of its own, on a fresh single-threaded
    /// runtime pinned to the generator's core: for work whose clock must
    /// not wait on the generator's runtime (a publisher, a sampler).
    pub fn generator_thread<T, F, Fut>(&self, job: F) -> std::thread::JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        let cpu = self.generator_cpu();
        std::thread::spawn(move || {
            pin_thread(cpu);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(job())
        })
    }

    /// A wsnotify named `name` with `envs` (pinned, quiet; see
    /// [`Proc::wsnotify`]).
    pub async fn server(&self, name: &str, envs: &[(&str, String)]) -> Result<Proc> {
        Proc::wsnotify(name, &self.wsnotify_bin, self.server_cpu, envs).await
    }

    /// A private redis-server pinned beside the servers.
    pub async fn redis(&self) -> Result<Redis> {
        Redis::start(&self.redis_bin, self.server_cpu)
            .await
            .context("start redis-server (Debian: apt-get install redis-server)")
    }
}

/// Where the servers keep history and meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    /// One process, the embedded broker.
    Memory,
    /// `REDIS_URL` set: history in Redis Streams, delivery through Pub/Sub.
    Redis,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Redis => "redis",
        }
    }
}

/// Runs `open(i)` for `i in 0..n`, `concurrency` at a time; fails on the
/// first error. The results come back in completion order.
pub async fn connect_many<T, F, Fut>(n: usize, concurrency: usize, open: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    for i in 0..n {
        if pending.len() >= concurrency {
            out.push(pending.join_next().await.context("join")???);
        }
        pending.spawn(open(i));
    }
    while let Some(done) = pending.join_next().await {
        out.push(done??);
    }
    Ok(out)
}

/// Polls `done` every millisecond until it holds or `limit` passes;
/// returns whether it held.
pub async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// A table cell: `v` with `digits` decimals, `-` for NaN.
pub fn cell(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// Where the figures come from: the command line, the work tree's commit
/// (the server binary's, if it was built there), the binary's build time,
/// the load average at the start.
pub fn provenance(common: &Common) -> String {
    let built = provenance::built_unix_s(&common.wsnotify_bin)
        .map_or("?".into(), |s| format!("{s} (Unix s)"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "`reliable {}` — work tree at commit {}, {} built at {built}, load average at the start {}",
        args.join(" "),
        provenance::commit(),
        common.wsnotify_bin,
        wsnotify_bench::procs::loadavg()
    )
}
