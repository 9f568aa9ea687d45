//! What a fan-out run measured, and the tables printed at the end: every
//! run, the medians over repetitions with their ratios to the floor and to
//! the baselines, the floor's latency split, and the generator's cost.

use std::collections::BTreeMap;

use wsnotify_bench::clock::from_monotonic;
use wsnotify_bench::procs::CpuUse;
use wsnotify_bench::scan;
use wsnotify_bench::stats::{median, percentiles_ms};

use crate::clients::Reader;
use crate::servers::Server;

/// One run of one server.
#[derive(Debug, Clone)]
pub struct Run {
    pub server: Server,
    pub reader: Reader,
    pub clients: usize,
    pub payload: usize,
    pub rep: usize,
    /// Runs it took to get one the rest of the machine did not disturb.
    pub attempts: usize,
    /// Load average when the run started.
    pub load: String,
    pub connect_s: f64,
    pub rss_per_conn_kib: f64,
    /// Single broadcasts: over all deliveries, and each round's p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub round_p99s: Vec<f64>,
    pub deliveries_per_s: f64,
    pub lost: u64,
    /// Clients that missed a delivery.
    pub short_clients: usize,
    pub bad: u64,
    /// `--verify`: deliveries out of sequence.
    pub gaps: u64,
    pub control: u64,
    pub closed: u64,
    pub first_error: Option<String>,
    pub rounds_delivered: u64,
    /// CPU of [server, generator] during the single broadcasts and the burst.
    pub rounds_cpu: CpuUse,
    pub burst_delivered: u64,
    pub burst_cpu: CpuUse,
    /// Server threads that used CPU during both.
    pub threads: String,
    pub split: Option<FloorSplit>,
    /// `--attach`'s exit status, if it ran.
    pub attached: Option<String>,
}

impl Run {
    /// The most cores the rest of the machine kept busy, rounds or burst
    /// (see [`others_cores`]).
    pub fn others_cores(&self) -> f64 {
        others_cores(&self.rounds_cpu).max(others_cores(&self.burst_cpu))
    }

    fn server_us(&self, burst: bool) -> f64 {
        self.per_delivery(burst, 0)
    }

    fn generator_us(&self, burst: bool) -> f64 {
        self.per_delivery(burst, 1)
    }

    fn per_delivery(&self, burst: bool, proc: usize) -> f64 {
        let (cpu, n) = if burst {
            (&self.burst_cpu, self.burst_delivered)
        } else {
            (&self.rounds_cpu, self.rounds_delivered)
        };
        cpu.procs[proc] * 1e6 / n.max(1) as f64
    }

    /// Cores the generator kept busy during the burst.
    fn generator_cores(&self) -> f64 {
        self.burst_cpu.procs[1] / self.burst_cpu.wall_s.max(1e-9)
    }

    /// Interrupt (softirq) time per delivery in the burst, µs.
    fn softirq_us(&self) -> f64 {
        self.burst_cpu.interrupts_s * 1e6 / self.burst_delivered.max(1) as f64
    }

    /// A one-line summary for the progress log.
    pub fn line(&self) -> String {
        format!(
            "connect {:.2} s, RSS/conn {:.1} KiB, p50/p99/max {:.1}/{:.1}/{:.1} ms, {:.0} deliveries/s, lost {} ({} clients short, {} bad, {} gaps, {} other frames, {} closed{}), server {:.2} / generator {:.2} µs per delivery (burst), others {:.2} cores; threads: {}",
            self.connect_s,
            self.rss_per_conn_kib,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.deliveries_per_s,
            self.lost,
            self.short_clients,
            self.bad,
            self.gaps,
            self.control,
            self.closed,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}")),
            self.server_us(true),
            self.generator_us(true),
            self.others_cores(),
            self.threads,
        )
    }
}

/// The floor's single broadcasts split into the server's part and the
/// generator's.
#[derive(Debug, Default, Clone)]
pub struct FloorSplit {
    /// Per round: post → first write, the write loop, last write → last
    /// frame read (ms).
    to_loop_ms: Vec<f64>,
    loop_ms: Vec<f64>,
    tail_ms: Vec<f64>,
    /// Per delivery: post → its write returned, and write returned →
    /// frame read (ns).
    server_ns: Vec<u64>,
    generator_ns: Vec<u64>,
}

impl FloorSplit {
    /// Adds one round: posted at `sent`, the floor's reply and `GET
    /// /writes` body, and the (client, arrival) of every delivery.
    pub fn add_round(&mut self, sent: u64, reply: &[u8], writes: &[u8], arrivals: &[(u32, u64)]) {
        let field = |key: &[u8]| scan::u64_field(reply, key).map(from_monotonic);
        let (Some(start), Some(end)) = (field(b"loop_start_ns"), field(b"loop_end_ns")) else {
            return;
        };
        let ms = |ns: u64| ns as f64 / 1e6;
        self.to_loop_ms.push(ms(start.saturating_sub(sent)));
        self.loop_ms.push(ms(end.saturating_sub(start)));
        let mut written: Vec<u64> = Vec::new();
        for line in String::from_utf8_lossy(writes).lines() {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
            if let (Some(Some(id)), Some(Some(at))) = (fields.next(), fields.next()) {
                let id = id as usize;
                if written.len() <= id {
                    written.resize(id + 1, 0);
                }
                written[id] = from_monotonic(at);
            }
        }
        let mut last = 0;
        for &(client, at) in arrivals {
            last = last.max(at);
            if let Some(&w) = written.get(client as usize).filter(|&&w| w > 0) {
                self.server_ns.push(w.saturating_sub(sent));
                self.generator_ns.push(at.saturating_sub(w));
            }
        }
        self.tail_ms.push(ms(last.saturating_sub(end)));
    }
}

type Cell3 = (usize, usize, Reader);

/// Prints every table.
pub fn print(runs: &[Run]) {
    println!("\n### Every run\n");
    println!(
        "| clients | payload | reader | server | rep | tries | load (1/5/15 min) | connect (s) | RSS/conn (KiB) | p50 (ms) | p99 (ms) | max (ms) | round p99 min–max (ms) | deliveries/s | lost | server µs/delivery (burst) | generator µs/delivery (rounds / burst) | generator cores (burst) | softirq µs/delivery (burst) | rest of machine (cores) | server threads that ran |"
    );
    println!("|{}", "---|".repeat(21));
    for r in runs {
        let (lo, hi) = r
            .round_p99s
            .iter()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "| {} | {} B | {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}–{:.1} | {:.0} | {}{} | {:.2} | {:.3} / {:.3} | {:.2} | {:.2} | {:.2} | {} |",
            r.clients,
            r.payload,
            r.reader.name(),
            r.server.name(),
            r.rep,
            r.attempts,
            r.load,
            r.connect_s,
            r.rss_per_conn_kib,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            lo,
            hi,
            r.deliveries_per_s,
            r.lost,
            if r.gaps > 0 || r.bad > 0 {
                format!(" ({} gaps, {} bad)", r.gaps, r.bad)
            } else {
                String::new()
            },
            r.server_us(true),
            r.generator_us(false),
            r.generator_us(true),
            r.generator_cores(),
            r.softirq_us(),
            r.others_cores(),
            r.threads,
        );
    }

    let mut cells: BTreeMap<Cell3, BTreeMap<Server, Vec<&Run>>> = BTreeMap::new();
    for r in runs {
        cells
            .entry((r.clients, r.payload, r.reader))
            .or_default()
            .entry(r.server)
            .or_default()
            .push(r);
    }
    let med =
        |runs: &[&Run], f: fn(&Run) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());

    println!("\n### Medians over repetitions, and ratios (same invocation)\n");
    println!(
        "| clients | payload | reader | server | runs | p50 (ms) | p99 (ms) | p99 ÷ floor | p99 ÷ axum | p50 ÷ floor | deliveries/s | ÷ best baseline | ÷ floor | RSS/conn (KiB) | server µs/delivery (burst) |"
    );
    println!("|{}", "---|".repeat(15));
    for ((clients, payload, reader), by_server) in &cells {
        let of =
            |s: Server, f: fn(&Run) -> f64| by_server.get(&s).map_or(f64::NAN, |rs| med(rs, f));
        let floor_p99 = of(Server::Floor, |r| r.p99_ms);
        let floor_p50 = of(Server::Floor, |r| r.p50_ms);
        let axum_p99 = of(Server::Axum, |r| r.p99_ms);
        let floor_rate = of(Server::Floor, |r| r.deliveries_per_s);
        let best_baseline = [Server::Axum, Server::Sockudo]
            .iter()
            .map(|&s| of(s, |r| r.deliveries_per_s))
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, f64::max);
        for (server, rs) in by_server {
            let p50 = med(rs, |r| r.p50_ms);
            let p99 = med(rs, |r| r.p99_ms);
            let rate = med(rs, |r| r.deliveries_per_s);
            println!(
                "| {clients} | {payload} B | {} | {} | {} | {p50:.1} | {p99:.1} | {} | {} | {} | {rate:.0} | {} | {} | {:.1} | {:.2} |",
                reader.name(),
                server.name(),
                rs.len(),
                ratio(p99, floor_p99),
                ratio(p99, axum_p99),
                ratio(p50, floor_p50),
                ratio(rate, best_baseline),
                ratio(rate, floor_rate),
                med(rs, |r| r.rss_per_conn_kib),
                med(rs, |r| r.server_us(true)),
            );
        }
    }

    println!("\n### The floor's single broadcasts: server part and generator part\n");
    println!(
        "| clients | payload | reader | rounds | post → first write (ms, p50) | write loop (ms, p50 / max) | post → write returned (ms, p50 / p99) | write returned → frame read (ms, p50 / p99) | last write → last frame read (ms, p50 / max) |"
    );
    println!("|{}", "---|".repeat(9));
    for ((clients, payload, reader), by_server) in &cells {
        let Some(floors) = by_server.get(&Server::Floor) else {
            continue;
        };
        let mut split = FloorSplit::default();
        for r in floors.iter().filter_map(|r| r.split.as_ref()) {
            split.to_loop_ms.extend(&r.to_loop_ms);
            split.loop_ms.extend(&r.loop_ms);
            split.tail_ms.extend(&r.tail_ms);
            split.server_ns.extend(&r.server_ns);
            split.generator_ns.extend(&r.generator_ns);
        }
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let (s50, s99, _) = percentiles_ms(&mut split.server_ns);
        let (g50, g99, _) = percentiles_ms(&mut split.generator_ns);
        println!(
            "| {clients} | {payload} B | {} | {} | {:.2} | {:.1} / {:.1} | {s50:.1} / {s99:.1} | {g50:.1} / {g99:.1} | {:.1} / {:.1} |",
            reader.name(),
            split.loop_ms.len(),
            median(&split.to_loop_ms),
            median(&split.loop_ms),
            max(&split.loop_ms),
            median(&split.tail_ms),
            max(&split.tail_ms),
        );
    }

    println!("\n### The generator's own cost (medians)\n");
    println!(
        "| clients | payload | reader | server | generator µs/delivery (single broadcasts) | generator µs/delivery (burst) | generator cores (burst) | server µs/delivery (burst) | generator ÷ server CPU (burst) |"
    );
    println!("|{}", "---|".repeat(9));
    for ((clients, payload, reader), by_server) in &cells {
        for (server, rs) in by_server {
            let generator = med(rs, |r| r.generator_us(true));
            let server_us = med(rs, |r| r.server_us(true));
            println!(
                "| {clients} | {payload} B | {} | {} | {:.3} | {generator:.3} | {:.2} | {server_us:.3} | {} |",
                reader.name(),
                server.name(),
                med(rs, |r| r.generator_us(false)),
                med(rs, |r| r.generator_cores()),
                ratio(generator, server_us),
            );
        }
    }
}

/// The cores the rest of the machine kept busy during `cpu`: the machine's
/// process and interrupt time less the measured processes' (their exact
/// run time includes the loopback receives that ran in their context,
/// which `/proc/stat` counts as softirq).
pub fn others_cores(cpu: &CpuUse) -> f64 {
    (cpu.others_s() + cpu.interrupts_s) / cpu.wall_s.max(1e-9)
}

/// Adds `more` to `total` (the same processes, in the same order; an empty
/// `total` takes them).
pub fn accumulate(total: &mut CpuUse, more: CpuUse) {
    if total.procs.is_empty() {
        *total = more;
        return;
    }
    for (t, m) in total.procs.iter_mut().zip(&more.procs) {
        *t += m;
    }
    total.wall_s += more.wall_s;
    total.machine_s += more.machine_s;
    total.interrupts_s += more.interrupts_s;
}

/// `a ÷ b` as `0.97×`, `-` when either is missing.
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}×", a / b)
    }
}
