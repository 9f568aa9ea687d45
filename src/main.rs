//! The `wsnotify` binary: configuration, logging, bind, signals, run; and
//! two small commands for deployments: `wsnotify healthcheck` (the probe a
//! container's HEALTHCHECK runs) and `wsnotify check-config` (settings
//! checked without starting, for systemd's ExecStartPre).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures_util::Stream;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use wsnotify::node::Node;
use wsnotify::probe::{self, DEFAULT_PROBE_TIMEOUT};
use wsnotify::{Config, server};

#[derive(Parser)]
#[command(
    name = "wsnotify",
    version,
    about,
    args_conflicts_with_subcommands = false
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the server at HOST:PORT answers 200 on /ready, 1 if not
    /// (draining, Redis away, not running). Reads the server's settings.
    Healthcheck,
    /// Check every setting (and the JWT key file, the origins) as a start
    /// would, and exit 0 without starting, or 1 naming what is wrong.
    CheckConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { command, config } = Cli::parse();
    match command {
        Some(Command::Healthcheck) => {
            return match probe::ready(&config.host, config.port, DEFAULT_PROBE_TIMEOUT).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("wsnotify healthcheck: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::CheckConfig) => {
            return match Node::new(config) {
                Ok(_) => {
                    println!("wsnotify check-config: ok");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("wsnotify check-config: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match start(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: Config) -> anyhow::Result<()> {
    // Settings that need more than parsing (the JWT key file, the origin
    // list) are checked before the port is taken: a bad one exits at once.
    let node = Node::new(config)?;
    let config = node.config();
    let listener = bind(&config.host, config.port)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    let signals = signals()?;
    let broker = match (&config.redis_url, &config.redis_cluster_urls) {
        (Some(url), _) => format!("Redis broker at {url}"),
        (None, Some(seeds)) => format!("Redis Cluster broker, seeds {}", seeds.join(",")),
        (None, None) => "in-memory broker".to_owned(),
    };
    tracing::info!(
        shutdown_timeout_s = config.shutdown_timeout.as_secs_f64(),
        "wsnotify listening on http://{addr} (WebSocket: ws://{addr}/ws), {broker}"
    );
    let outcome = server::run_node(listener, node.clone(), signals).await;
    tracing::info!(?outcome, "wsnotify stopped");
    Ok(())
}

/// Connections the kernel queues before they are accepted. The default of
/// std's `bind` (128) drops SYNs when a drained instance's clients arrive
/// together, and each dropped client waits a second to retry; the kernel
/// caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on the first address `host:port` resolves to.
async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host resolves to no address")))
}

/// One item per SIGINT or SIGTERM, logged as it arrives.
fn signals() -> std::io::Result<impl Stream<Item = ()> + Send + Unpin> {
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    Ok(Box::pin(futures_util::stream::unfold(
        (term, int),
        |(mut term, mut int)| async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!("received {name}");
            Some(((), (term, int)))
        },
    )))
}
