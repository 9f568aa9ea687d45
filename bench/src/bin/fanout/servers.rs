//! The servers a fan-out run measures, and what differs between them: how
//! each is started, what its clients connect to (and subscribe to), and how
//! a broadcast is published to it.

use anyhow::{Result, bail};
use wsnotify_bench::frames::client_text_frame;
use wsnotify_bench::http::{Conn, Reply};
use wsnotify_bench::procs::{Proc, QUIET, free_port};
use wsnotify_bench::pusher;

use crate::Args;
use crate::clients::{Opening, Step};

/// The sockudo app every client and publisher uses.
const SOCKUDO_APP: (&str, &str, &str) = ("bench", "bench-key", "bench-secret");
/// The one public channel sockudo's clients subscribe to.
const SOCKUDO_CHANNEL: &str = "bench";

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Server {
    /// `floor` (bench/src/bin/floor.rs): one thread, blocking writes.
    Floor,
    /// wsnotify, plain `/ws` clients.
    Wsnotify,
    /// The axum + `tokio::sync::broadcast` baseline (baseline_axum.rs).
    Axum,
    /// sockudo (Pusher protocol, local adapter), installed by `just bench-peers`.
    Sockudo,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Floor => "floor",
            Server::Wsnotify => "wsnotify",
            Server::Axum => "axum",
            Server::Sockudo => "sockudo",
        }
    }

    /// Starts it pinned to the server core on a free port; returns once it
    /// listens.
    pub async fn start(self, args: &Args) -> Result<Proc> {
        self.start_with(args, &[]).await
    }

    /// As [`Server::start`], with `extra` environment (wsnotify and
    /// sockudo) after the benchmark's own and `--wsnotify-env` or
    /// `--sockudo-env`.
    pub async fn start_with(self, args: &Args, extra: &[(String, String)]) -> Result<Proc> {
        let cpu = args.server_cpu;
        let port = free_port()?;
        let port_args = vec!["--port".to_owned(), port.to_string()];
        let proc = match self {
            Server::Floor => Proc::spawn("floor", &args.floor_bin, cpu, port, &port_args, &[])?,
            Server::Axum => Proc::spawn("axum", &args.axum_bin, cpu, port, &port_args, &[])?,
            Server::Wsnotify => {
                let mut envs = owned(QUIET);
                envs.push(("PORT".into(), port.to_string()));
                envs.extend(args.wsnotify_env.iter().cloned());
                envs.extend(extra.iter().cloned());
                Proc::spawn("wsnotify", &args.wsnotify_bin, cpu, port, &[], &envs)?
            }
            Server::Sockudo => {
                let mut envs = sockudo_env(port);
                envs.extend(args.sockudo_env.iter().cloned());
                envs.extend(extra.iter().cloned());
                Proc::spawn("sockudo", &args.sockudo_bin, cpu, port, &[], &envs)?
            }
        };
        proc.wait_listening().await?;
        Ok(proc)
    }

    /// Whether its HTTP API keeps connections open. sockudo answers every
    /// API request with `Connection: close` (its router's "prevent idle
    /// HTTP connection buildup" layer), so each of its publishes opens a
    /// connection, and requests cannot be pipelined.
    pub fn keeps_connections(self) -> bool {
        self != Server::Sockudo
    }

    /// Publishes `message` to every client; the server's answer.
    pub async fn publish(self, conn: &mut Conn, message: &str) -> Result<Reply> {
        let reply = match self {
            Server::Sockudo => {
                let body = pusher::event_body("bench-event", SOCKUDO_CHANNEL, message);
                let path = sockudo_app().events_path(&body);
                conn.request("POST", &path, Some(&body)).await?
            }
            _ => {
                let body = format!(r#"{{"message":"{message}"}}"#);
                conn.request("POST", "/broadcast", Some(&body)).await?
            }
        };
        if reply.status != 200 {
            bail!(
                "{} refused a broadcast: {} {}",
                self.name(),
                reply.status,
                reply.text()
            );
        }
        Ok(reply)
    }
}

/// Every client on the one broadcast channel: wsnotify's plain `/ws` (ready
/// at its greeting), the floor's and axum's `/ws`, or sockudo's public
/// channel (`connection_established`, then the subscription, ready when
/// it is confirmed).
impl Opening for Server {
    fn path(&self, _: usize) -> String {
        match self {
            Server::Sockudo => sockudo_app().ws_path(),
            _ => "/ws".to_owned(),
        }
    }

    fn on_text(&self, i: usize, payload: &[u8]) -> Step {
        match self {
            Server::Sockudo => pusher_step(i, payload, || pusher::subscribe(SOCKUDO_CHANNEL)),
            _ => Step::Ready,
        }
    }
}

/// A Pusher client's opening: at `connection_established` it sends
/// `subscription()`, and it is ready once sockudo confirms it (an error
/// fails it).
pub fn pusher_step(i: usize, payload: &[u8], subscription: impl FnOnce() -> String) -> Step {
    let has = |what: &[u8]| wsnotify_bench::scan::find(payload, what).is_some();
    if has(b"subscription_succeeded") {
        Step::Ready
    } else if has(b"pusher:error") || has(b"subscription_error") {
        Step::Fail(format!(
            "sockudo refused: {}",
            String::from_utf8_lossy(payload)
        ))
    } else if has(b"connection_established") {
        Step::Send(client_text_frame(subscription().as_bytes(), mask(i)))
    } else {
        Step::Wait
    }
}

/// A client frame's mask, different per client.
pub fn mask(i: usize) -> [u8; 4] {
    (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()
}

/// The app of every sockudo client and publisher.
pub fn sockudo_app() -> pusher::App {
    let (id, key, secret) = SOCKUDO_APP;
    pusher::App {
        id: id.into(),
        key: key.into(),
        secret: secret.into(),
    }
}

/// sockudo as the benchmark runs it: the local adapter, no queue, no rate
/// limiter, no metrics server, one app whose limits (100 connections and
/// 100 API events per second by default) do not bind, and no heartbeat the
/// generator's clients would have to answer (as wsnotify's `QUIET`).
pub fn sockudo_env(port: u16) -> Vec<(String, String)> {
    let (id, key, secret) = SOCKUDO_APP;
    let pairs: &[(&str, &str)] = &[
        ("HOST", "127.0.0.1"),
        ("ADAPTER_DRIVER", "local"),
        ("QUEUE_DRIVER", "none"),
        ("CACHE_DRIVER", "memory"),
        ("APP_MANAGER_DRIVER", "memory"),
        ("RATE_LIMITER_ENABLED", "false"),
        ("METRICS_ENABLED", "false"),
        ("SOCKUDO_DEFAULT_APP_ID", id),
        ("SOCKUDO_DEFAULT_APP_KEY", key),
        ("SOCKUDO_DEFAULT_APP_SECRET", secret),
        ("SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS", "1000000"),
        (
            "SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND",
            "10000000",
        ),
        ("SOCKUDO_DEFAULT_APP_MAX_EVENT_PAYLOAD_IN_KB", "1024"),
        ("ACTIVITY_TIMEOUT", "3600"),
        ("WEBSOCKET_AUTO_PING", "false"),
        ("WEBSOCKET_IDLE_TIMEOUT", "3600"),
        ("RUST_LOG", "warn"),
    ];
    let mut envs = owned(pairs);
    envs.push(("PORT".into(), port.to_string()));
    envs
}

pub fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
