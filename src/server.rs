//! The server: a function of a listener, a configuration and a stream of
//! shutdown signals. It accepts HTTP/1 connections (with upgrades), runs the
//! node's tickers (periodic notification, heartbeat, idle sweep), and on the
//! first signal drains.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::http;
use crate::node::{Node, NodeError};
use crate::protocol::{self, text};
use crate::shutdown::Outcome;

/// A client must finish sending its request head within this time, so idle
/// half-open sockets cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight HTTP requests may take to finish once the server exits.
const HTTP_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot be put to use: authentication settings
    /// (key file, origins, …) or the broker.
    #[error(transparent)]
    Setup(#[from] NodeError),
}

/// Serves `listener` with a server configured by `config` until shut down:
/// [`Node::new`], then [`run_node`].
pub async fn run<S>(
    listener: TcpListener,
    config: Config,
    signals: S,
) -> Result<Outcome, ServerError>
where
    S: Stream<Item = ()> + Send + Unpin,
{
    let node = Node::new(config)?;
    Ok(run_node(listener, node, signals).await)
}

/// Serves `listener` until shut down. The first item of `signals` starts the
/// graceful drain; a second one forces the close; a stream that ends without
/// an item also starts the drain.
pub async fn run_node<S>(listener: TcpListener, node: Arc<Node>, signals: S) -> Outcome
where
    S: Stream<Item = ()> + Send + Unpin,
{
    let stop = CancellationToken::new();
    let http_conns = TaskTracker::new();
    let acceptor = tokio::spawn(accept(
        listener,
        node.clone(),
        stop.clone(),
        http_conns.clone(),
    ));
    let tickers = start_tickers(&node, &stop);

    // Fused: the drain polls it again after a first `None`.
    let mut signals = signals.fuse();
    signals.next().await;
    let outcome = node.drain(signals).await;

    stop.cancel();
    let _ = acceptor.await;
    for ticker in tickers {
        let _ = ticker.await;
    }
    http_conns.close();
    if tokio::time::timeout(HTTP_GRACE, http_conns.wait())
        .await
        .is_err()
    {
        tracing::debug!("dropping HTTP connections still open at exit");
    }
    node.close().await;
    outcome
}

/// The node's periodic work, each a task that ends with `stop` (the
/// periodic notification already when the drain starts).
fn start_tickers(node: &Arc<Node>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    let config = node.config();
    let mut tickers = Vec::new();
    if let Some(every) = config.notifications() {
        let frame = protocol::text_frame(&text::periodic(every));
        let node = node.clone();
        tickers.push(tokio::spawn(async move {
            let draining = node.shutdown().draining();
            every_period(every, draining, || node.periodic(&frame)).await
        }));
    }
    // Heartbeats go on during a drain, so proxies keep waiting clients'
    // connections open.
    if let Some(every) = config::enabled(config.heartbeat_interval) {
        let (node, stop) = (node.clone(), stop.clone());
        tickers.push(tokio::spawn(async move {
            every_period(every, stop.cancelled(), || node.heartbeat()).await
        }));
    }
    // Expired history goes at least every few seconds (memory mode).
    if config.history().enabled() {
        let every =
            (config.history_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let (node, stop) = (node.clone(), stop.clone());
        tickers.push(tokio::spawn(async move {
            every_period(every, stop.cancelled(), || node.sweep_history()).await
        }));
    }
    // Sweeping four times per period bounds the overshoot to a quarter of
    // `IDLE_TIMEOUT`.
    if let Some(idle) = config::enabled(config.idle_timeout) {
        let (node, stop) = (node.clone(), stop.clone());
        tickers.push(tokio::spawn(async move {
            every_period(idle / 4, stop.cancelled(), || {
                let closed = node.sweep_idle(idle);
                if closed > 0 {
                    tracing::debug!(closed, "closed idle connections");
                }
            })
            .await
        }));
    }
    tickers
}

/// Accepts connections until `stop`; each is served by hyper in its own task.
async fn accept(
    listener: TcpListener,
    node: Arc<Node>,
    stop: CancellationToken,
    conns: TaskTracker,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // Not `pipeline_flush(true)`, though it answers pipelined requests in
        // one write (+25-35 % per-user notifications/s, docs/BENCHMARKS.md
        // §1): hyper 1.12 then skips the flush while unread bytes remain, so
        // the 400 for a garbled request (or an answer sent before a body was
        // read) never leaves before the close.
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Notifications are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let service = service_fn(move |req| {
            let node = node.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle(node, req).await) }
        });
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        conns.spawn(async move {
            let mut conn = pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
        });
    }
}

/// Runs `tick` every `period`, the first time one period from now, until
/// `until` resolves. A late tick is not made up for.
async fn every_period(period: Duration, until: impl Future<Output = ()>, mut tick: impl FnMut()) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return,
            _ = ticks.tick() => tick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signal_drains_and_everything_the_server_started_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            heartbeat_interval: Duration::from_millis(10),
            idle_timeout: Duration::from_millis(40),
            notification_interval: Duration::from_millis(10),
            ..Config::default()
        };
        let signals = futures_util::stream::iter([()]);
        let outcome = tokio::time::timeout(Duration::from_secs(5), run(listener, config, signals))
            .await
            .expect("the server did not stop")
            .unwrap();
        assert!(matches!(outcome, Outcome::Drained(_)), "{outcome:?}");
        // The accept loop is gone with it.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_bad_configuration_is_an_error_not_a_panic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config {
            jwt_secret: Some(String::new()),
            ..Config::default()
        };
        let result = run(listener, config, futures_util::stream::pending()).await;
        assert!(matches!(
            result,
            Err(ServerError::Setup(NodeError::Auth(_)))
        ));
    }
}
