//! Reliable-delivery benchmarks: what per-stream history, resume and the
//! HTTP fallbacks cost, each figure against a baseline measured in the same
//! invocation, back to back (the machine is shared: absolute numbers drift
//! between runs, ratios much less).
//!
//! - `fanout`: broadcast fan-out to 10k clients with `HISTORY_SIZE=100`
//!   against `HISTORY_SIZE=0`, in memory and in Redis mode;
//! - `memory`: RSS per idle JSON connection with history on and off, then a
//!   long publish flood (many users, 1 KiB) sampling RSS and the history
//!   gauges against the same flood with history off;
//! - `resume`: 10k clients of a drained instance resuming on another one
//!   (Redis) with `since`, against the same drain without `since`;
//! - `poll`: long-poll wake-up latency of one broadcast against the same
//!   broadcast's WebSocket latency;
//! - `storm`: the reconnect storm a drained instance's 10k clients send to
//!   the surviving one, with the drain's spread hint against without;
//! - `cluster`: per-user notifications across 3 instances on one Redis
//!   against a 3-primary Redis Cluster, with each primary's Pub/Sub load.
//!
//! Every server (and Redis) is pinned to `--server-cpu`; the generator, one
//! single-threaded tokio runtime, to the next core. See docs/BENCHMARKS.md,
//! "Reliable delivery: history, resume, polling".

mod cluster;
mod drain;
mod fanout;
mod memory;
mod poll;
mod resume;
mod shared;
mod storm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Reliable-delivery benchmarks of wsnotify (history, resume, polling)")]
struct Cli {
    #[command(flatten)]
    common: shared::Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fan-out deliveries/s and single-broadcast latency, history on vs off.
    Fanout(fanout::Args),
    /// Idle RSS per JSON connection, and RSS/history under a publish flood.
    Memory(memory::Args),
    /// Resume of a drained instance's clients on another one, with vs without `since`.
    Resume(resume::Args),
    /// Long-poll wake-up latency against WebSocket delivery of the same broadcast.
    Poll(poll::Args),
    /// Reconnect storm on the surviving instance after a drain, spread hint vs none.
    Storm(storm::Args),
    /// Per-user notifications across 3 instances: one Redis vs a 3-primary Redis Cluster.
    Cluster(cluster::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    wsnotify_bench::clock::now_ns();
    let started = std::time::Instant::now();
    println!("{}", shared::provenance(&cli.common));
    let result = match &cli.scenario {
        Scenario::Fanout(args) => fanout::run(&cli.common, args),
        Scenario::Memory(args) => memory::run(&cli.common, args),
        Scenario::Resume(args) => resume::run(&cli.common, args),
        Scenario::Poll(args) => poll::run(&cli.common, args),
        Scenario::Storm(args) => storm::run(&cli.common, args),
        Scenario::Cluster(args) => cluster::run(&cli.common, args),
    };
    println!();
    println!(
        "Took {:.0} s; load average at the end: {}.",
        started.elapsed().as_secs_f64(),
        wsnotify_bench::procs::loadavg()
    );
    result
}
