//! The server: a function of a listener, a configuration and a stream of
//! shutdown signals. It accepts HTTP/1 connections (with upgrades), runs the
//! periodic notifier, and on the first signal drains.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, AppError};
use crate::config::{self, Config};
use crate::http;
use crate::hub::{Audience, Kind};
use crate::message::{ServerMessage, now_ms};
use crate::protocol;
use crate::shutdown::{Outcome, Timing};

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
    Setup(#[from] AppError),
}

/// Serves `listener` with a server configured by `config` until shut down:
/// [`App::new`], then [`serve`].
pub async fn run<S>(
    listener: TcpListener,
    config: Config,
    signals: S,
) -> Result<Outcome, ServerError>
where
    S: Stream<Item = ()> + Send + Unpin,
{
    let app = App::new(config)?;
    Ok(serve(listener, app, signals).await)
}

/// Serves `listener` until shut down. The first item of `signals` starts the
/// graceful drain; a second one forces the close; a stream that ends without
/// an item also starts the drain.
pub async fn serve<S>(listener: TcpListener, app: Arc<App>, signals: S) -> Outcome
where
    S: Stream<Item = ()> + Send + Unpin,
{
    let timing = Timing {
        timeout: app.config.shutdown_timeout,
        log_interval: app.config.shutdown_log_interval,
    };
    let stop = CancellationToken::new();
    let http_conns = TaskTracker::new();
    let acceptor = tokio::spawn(accept(
        listener,
        app.clone(),
        stop.clone(),
        http_conns.clone(),
    ));
    if let Some(every) = app.config.notifications() {
        tokio::spawn(notify_periodically(app.clone(), every));
    }
    if let Some(every) = config::enabled(app.config.heartbeat_interval) {
        tokio::spawn(heartbeat(app.clone(), every, stop.clone()));
    }
    if let Some(idle) = config::enabled(app.config.idle_timeout) {
        tokio::spawn(sweep_idle(app.clone(), idle, stop.clone()));
    }

    // Fused: the drain polls it again after a first `None`.
    let mut signals = signals.fuse();
    signals.next().await;
    let outcome = app
        .shutdown
        .drain(&app.hub, &app.metrics, timing, signals)
        .await;

    stop.cancel();
    let _ = acceptor.await;
    http_conns.close();
    if tokio::time::timeout(HTTP_GRACE, http_conns.wait())
        .await
        .is_err()
    {
        tracing::debug!("dropping HTTP connections still open at exit");
    }
    app.broker.close().await;
    outcome
}

/// Accepts connections until `stop`; each is served by hyper in its own task.
async fn accept(listener: TcpListener, app: Arc<App>, stop: CancellationToken, conns: TaskTracker) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
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
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle(app, req).await) }
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

/// Sends the periodic notification until the drain starts.
async fn notify_periodically(app: Arc<App>, period: Duration) {
    let frame = protocol::text_frame(&protocol::periodic(period));
    every(period, app.shutdown.draining(), || {
        app.hub.broadcast(&frame, None);
    })
    .await
}

/// Pings every client each `period`, through the hub: one shared frame and
/// one timer for the whole server rather than a timer per connection. JSON
/// clients also get `{"type":"system.ping","ts":…}` (seed 003), encoded once
/// per tick. Goes on during a drain, so proxies keep waiting clients'
/// connections open.
async fn heartbeat(app: Arc<App>, period: Duration, stop: CancellationToken) {
    let ping = protocol::ping_frame();
    every(period, stop.cancelled(), || {
        app.hub.broadcast_to(Audience::All, &ping);
        let system_ping = ServerMessage::Ping { ts: now_ms() }.frame();
        app.hub
            .broadcast_to(Audience::Only(Kind::Json), &system_ping);
    })
    .await
}

/// Closes clients silent for `idle` with 4000. Sweeping four times per
/// period bounds the overshoot to a quarter of `idle`.
async fn sweep_idle(app: Arc<App>, idle: Duration, stop: CancellationToken) {
    every(idle / 4, stop.cancelled(), || {
        let closed = app.hub.sweep_idle(idle);
        if closed > 0 {
            tracing::debug!(closed, "closed idle connections");
        }
    })
    .await
}

/// Runs `tick` every `period`, the first time one period from now, until
/// `until` resolves. A late tick is not made up for.
async fn every(period: Duration, until: impl Future<Output = ()>, mut tick: impl FnMut()) {
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
