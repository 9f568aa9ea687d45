//! The connection storm (`--scenarios storm`): N clients connect to a
//! fresh wsnotify at once, `--storm-concurrency` handshakes in flight, with
//! an HS256 token each and, the baseline in the same invocation, without.
//!
//! Client `i` is user `u{i}` on `/ws/u{i}` either way. With tokens the
//! server has `JWT_SECRET` and each client offers its token as the
//! `bearer` subprotocol (`Sec-WebSocket-Protocol: bearer, <jwt>`,
//! docs/PROTOCOL.md, Authentication), claims `{"sub":"u{i}","iat":…,
//! "exp":…}`. The tokens are signed (ring's HMAC-SHA256) before the storm,
//! so signing is not in the figures. Without: no token, an open server.
//!
//! A client's **connect time** runs from the start of its handshake (its
//! TCP connect, once its turn among the concurrent ones came) to its
//! greeting, the first frame after the 101 (the time to the 101 is
//! reported too). **accepts/s** = N ÷ the time from the first handshake's
//! start to the last greeting. The server's CPU over the storm ÷ N is its
//! cost per accept. The kernel's SYN retransmissions and listen-queue
//! overflows during the storm (machine-wide counters) show dropped
//! handshakes, each of which costs its client a 1 s retransmission. After
//! the storm `GET /connections` must count N.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use wsnotify_bench::http::Conn;
use wsnotify_bench::procs::{self, CpuMark, CpuUse};
use wsnotify_bench::scan;
use wsnotify_bench::stats::{median, percentiles_ms};

use crate::clients::{self, Opening, Reader, Step, Tally};
use crate::report::{others_cores, ratio};
use crate::servers::Server;
use crate::{Args, Measured, undisturbed};

/// The HMAC secret of the storm's tokens (a benchmark's, not a secret).
const SECRET: &str = "wsnotify-bench-storm-secret-0123456789abcdef";
/// The kernel counters read around the storm.
const TCP_COUNTERS: &[&str] = &["TCPSynRetrans", "ListenOverflows"];

/// With or without tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tokens {
    None,
    Jwt,
}

impl Tokens {
    fn name(self) -> &'static str {
        match self {
            Tokens::None => "no token (open server)",
            Tokens::Jwt => "HS256 JWT, `bearer` subprotocol",
        }
    }
}

/// Client `i`: user `u{i}`, with its token when there are tokens.
struct StormClients {
    tokens: Option<Vec<String>>,
}

impl Opening for StormClients {
    fn path(&self, i: usize) -> String {
        format!("/ws/u{i}")
    }

    fn headers(&self, i: usize) -> Vec<String> {
        let mut headers = vec![format!("X-Client: {i}")];
        if let Some(tokens) = &self.tokens {
            headers.push(format!("Sec-WebSocket-Protocol: bearer, {}", tokens[i]));
        }
        headers
    }

    fn on_text(&self, _: usize, _: &[u8]) -> Step {
        Step::Ready
    }
}

/// A compact HS256 JWT of `claims` (a JSON object) signed with `secret`.
fn hs256(secret: &[u8], claims: &str) -> String {
    let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signature = hmac::sign(&key, signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// User `u{i}`'s token, valid for an hour.
fn token(i: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = format!(r#"{{"sub":"u{i}","iat":{now},"exp":{}}}"#, now + 3600);
    hs256(SECRET.as_bytes(), &claims)
}

/// One storm.
#[derive(Debug, Clone)]
pub struct StormRun {
    pub tokens: Tokens,
    pub clients: usize,
    pub rep: usize,
    pub attempts: usize,
    pub load: String,
    pub accepts_per_s: f64,
    /// Handshake start → greeting, and → 101 (ms).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub upgrade_p50_ms: f64,
    pub upgrade_p99_ms: f64,
    /// `TCP_COUNTERS` during the storm.
    pub tcp: Vec<u64>,
    /// What `GET /connections` counted afterwards.
    pub counted: u64,
    /// CPU of [server, generator] during the storm.
    pub cpu: CpuUse,
}

impl StormRun {
    fn us_each(&self, proc: usize) -> f64 {
        self.cpu.procs[proc] * 1e6 / self.clients.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "{:.0} accepts/s, connect p50/p99/max {:.1}/{:.1}/{:.1} ms (101 p50/p99 {:.1}/{:.1}), SYN retransmissions {}, listen overflows {}, {} counted, server {:.1} / generator {:.1} µs per accept, others {:.2} cores",
            self.accepts_per_s,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.upgrade_p50_ms,
            self.upgrade_p99_ms,
            self.tcp[0],
            self.tcp[1],
            self.counted,
            self.us_each(0),
            self.us_each(1),
            others_cores(&self.cpu),
        )
    }
}

impl Measured for StormRun {
    fn others(&self) -> Option<f64> {
        Some(others_cores(&self.cpu))
    }
}

/// Every storm: without and with tokens, for every client count and
/// repetition.
pub async fn runs(args: &Args) -> Result<Vec<StormRun>> {
    let mut runs = Vec::new();
    for &clients in &args.clients {
        for rep in 1..=args.repeat {
            for tokens in [Tokens::None, Tokens::Jwt] {
                let label = format!("storm, wsnotify: {clients} connects, {}", tokens.name());
                let (run, attempts) =
                    undisturbed(args, &label, || measure(args, tokens, clients)).await?;
                eprintln!("   {}", run.line());
                runs.push(StormRun {
                    rep,
                    attempts,
                    ..run
                });
            }
        }
    }
    Ok(runs)
}

async fn measure(args: &Args, tokens: Tokens, n: usize) -> Result<StormRun> {
    let load = procs::loadavg();
    let extra = match tokens {
        Tokens::Jwt => vec![("JWT_SECRET".to_owned(), SECRET.to_owned())],
        Tokens::None => vec![],
    };
    let proc = Server::Wsnotify.start_with(args, &extra).await?;
    let opening = Rc::new(StormClients {
        tokens: (tokens == Tokens::Jwt).then(|| (0..n).map(token).collect()),
    });
    let tally = Rc::new(Tally::new(n, false));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pids = [Some(proc.pid()), Some(0)];
    let tcp_before = procs::tcp_counters(TCP_COUNTERS);
    let before = CpuMark::take_exact(&pids);
    clients::connect_all(
        opening,
        &[proc.addr],
        n,
        args.storm_concurrency,
        Reader::Lean,
        &tally,
    )
    .await?;
    let cpu = CpuMark::take_exact(&pids).since(&before);
    let tcp: Vec<u64> = procs::tcp_counters(TCP_COUNTERS)
        .iter()
        .zip(&tcp_before)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();

    let opened = tally.opened.borrow().clone();
    let first = opened.iter().map(|t| t.start).min().unwrap_or(0);
    let last = opened.iter().map(|t| t.ready).max().unwrap_or(first);
    let mut connect: Vec<u64> = opened.iter().map(|t| t.ready - t.start).collect();
    let mut upgrade: Vec<u64> = opened.iter().map(|t| t.upgraded - t.start).collect();
    let (p50_ms, p99_ms, max_ms) = percentiles_ms(&mut connect);
    let (upgrade_p50_ms, upgrade_p99_ms, _) = percentiles_ms(&mut upgrade);

    let reply = Conn::connect(proc.addr)
        .await?
        .request("GET", "/connections", None)
        .await?;
    let counted = scan::u64_field(&reply.body, b"active_connections").unwrap_or(0);
    if counted != n as u64 {
        bail!("after the storm the server counts {counted} connections, not {n}");
    }
    Ok(StormRun {
        tokens,
        clients: n,
        rep: 0,
        attempts: 1,
        load,
        accepts_per_s: n as f64 / (last.saturating_sub(first) as f64 / 1e9).max(1e-9),
        p50_ms,
        p99_ms,
        max_ms,
        upgrade_p50_ms,
        upgrade_p99_ms,
        tcp,
        counted,
        cpu,
    })
}

/// Prints every storm, then the medians with their ratios to the storm
/// without tokens.
pub fn print(runs: &[StormRun]) {
    println!("\n### Connection storm: every run\n");
    println!(
        "| connects | tokens | rep | tries | load (1/5/15 min) | accepts/s | connect p50 / p99 / max (ms) | to the 101 p50 / p99 (ms) | SYN retransmissions | listen overflows | counted | server µs/accept | generator µs/accept | generator cores | rest of machine (cores) |"
    );
    println!("|{}", "---|".repeat(15));
    for r in runs {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            r.clients,
            r.tokens.name(),
            r.rep,
            r.attempts,
            r.load,
            r.accepts_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.upgrade_p50_ms,
            r.upgrade_p99_ms,
            r.tcp[0],
            r.tcp[1],
            r.counted,
            r.us_each(0),
            r.us_each(1),
            r.cpu.procs[1] / r.cpu.wall_s.max(1e-9),
            others_cores(&r.cpu),
        );
    }

    let mut cells: BTreeMap<usize, BTreeMap<Tokens, Vec<&StormRun>>> = BTreeMap::new();
    for r in runs {
        cells
            .entry(r.clients)
            .or_default()
            .entry(r.tokens)
            .or_default()
            .push(r);
    }
    let med = |runs: &[&StormRun], f: &dyn Fn(&StormRun) -> f64| {
        median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    println!(
        "\n### Connection storm: medians over repetitions, and ratios to the storm without tokens (same invocation)\n"
    );
    println!(
        "| connects | tokens | runs | accepts/s | ÷ without | connect p50 (ms) | connect p99 (ms) | p99 ÷ without | to the 101 p99 (ms) | server µs/accept | ÷ without |"
    );
    println!("|{}", "---|".repeat(11));
    for (clients, by_tokens) in &cells {
        let of = |f: &dyn Fn(&StormRun) -> f64| {
            by_tokens
                .get(&Tokens::None)
                .map_or(f64::NAN, |rs| med(rs, f))
        };
        let (rate0, p99_0, cpu0) = (
            of(&|r| r.accepts_per_s),
            of(&|r| r.p99_ms),
            of(&|r| r.us_each(0)),
        );
        for (tokens, rs) in by_tokens {
            let rate = med(rs, &|r| r.accepts_per_s);
            let p99 = med(rs, &|r| r.p99_ms);
            let cpu = med(rs, &|r| r.us_each(0));
            println!(
                "| {clients} | {} | {} | {rate:.0} | {} | {:.1} | {p99:.1} | {} | {:.1} | {cpu:.1} | {} |",
                tokens.name(),
                rs.len(),
                ratio(rate, rate0),
                med(rs, &|r| r.p50_ms),
                ratio(p99, p99_0),
                med(rs, &|r| r.upgrade_p99_ms),
                ratio(cpu, cpu0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_io_example_token() {
        let claims = r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#;
        assert_eq!(
            hs256(b"your-256-bit-secret", claims),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }
}
