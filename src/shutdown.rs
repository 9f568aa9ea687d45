//! The drain: stop taking WebSocket clients, tell the connected ones, wait
//! for them to leave with a deadline, then force-close the rest with 1001.
//!
//! Hyper forgets a connection once it is upgraded, so sessions are tracked
//! here by a [`TaskTracker`]: the drain waits on the tracker closing empty,
//! not on a counter polled in a loop.

use std::future::Future;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How long a close handshake may take: the server's close frame being
/// written and the client's answer arriving. After it the socket is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The handles every part of the server watches to follow a shutdown.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the drain starts: upgrades are refused, `/ready` is
    /// 503, and each session sends the shutdown notice once.
    draining: CancellationToken,
    /// Cancelled when the remaining sessions must close with 1001.
    force: CancellationToken,
    /// Every WebSocket session task, from upgrade to socket drop.
    sessions: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Every client left by itself after this long.
    Drained(Duration),
    /// This many clients were still connected when the close was forced.
    Forced { remaining: usize, after: Duration },
}

/// The drain's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long clients may take to leave.
    pub timeout: Duration,
    /// How often progress is logged.
    pub log_interval: Duration,
}

impl Shutdown {
    /// Handles for a server that is not shutting down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when the drain starts.
    pub async fn draining(&self) {
        self.draining.cancelled().await
    }

    /// Resolves when remaining sessions must close with 1001.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// Runs a WebSocket session as a tracked task.
    pub fn spawn_session<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.sessions.spawn(session);
    }

    /// Drains the server. `signals` yields once more per further SIGINT or
    /// SIGTERM; the first of those skips straight to the forced close.
    /// `connections` counts the sessions still open, for the log.
    pub async fn drain<S>(
        &self,
        connections: impl Fn() -> usize,
        metrics: &Metrics,
        timing: Timing,
        signals: S,
    ) -> Outcome
    where
        S: Stream<Item = ()> + Unpin,
    {
        let started = Instant::now();
        self.draining.cancel();
        self.sessions.close();
        metrics.shutdown_started();
        tracing::info!(
            active_connections = connections(),
            timeout_s = timing.timeout.as_secs_f64(),
            "graceful shutdown started: refusing new WebSocket clients, sending the shutdown notice to {} clients",
            connections()
        );
        let why = match self
            .wait_for_clients(&connections, timing, started, signals)
            .await
        {
            Ok(outcome) => return outcome,
            Err(why) => why,
        };
        let remaining = connections();
        tracing::warn!(
            remaining,
            "{why}: force-closing {remaining} connections with 1001"
        );
        self.force.cancel();
        // Every session bounds its close handshake by CLOSE_GRACE; the margin
        // covers scheduling. Anything still alive after it is dropped at exit.
        if tokio::time::timeout(CLOSE_GRACE * 2, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections(),
                "some connections did not close in time; dropping them"
            );
        }
        Outcome::Forced {
            remaining,
            after: started.elapsed(),
        }
    }

    /// Waits until every session has ended, logging progress. `Err` says why
    /// the wait was cut short.
    async fn wait_for_clients<S>(
        &self,
        connections: &impl Fn() -> usize,
        timing: Timing,
        started: Instant,
        mut signals: S,
    ) -> Result<Outcome, &'static str>
    where
        S: Stream<Item = ()> + Unpin,
    {
        let deadline = started + timing.timeout;
        let first_tick = started + timing.log_interval;
        let mut progress = interval_at(first_tick, timing.log_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.sessions.wait() => {
                    let took = started.elapsed();
                    tracing::info!(
                        "all clients disconnected: graceful shutdown completed in {:.2}s",
                        took.as_secs_f64()
                    );
                    return Ok(Outcome::Drained(took));
                }
                _ = sleep_until(deadline) => return Err("shutdown timeout reached"),
                Some(()) = signals.next() => return Err("second signal received"),
                _ = progress.tick() => {
                    let elapsed = started.elapsed();
                    let left = timing.timeout.saturating_sub(elapsed);
                    tracing::info!(
                        "shutdown in progress: active connections: {}, elapsed: {:.2}s, remaining before forced close: {:.2}s",
                        connections(),
                        elapsed.as_secs_f64(),
                        left.as_secs_f64()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(secs: u64) -> Timing {
        Timing {
            timeout: Duration::from_secs(secs),
            log_interval: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_session_the_drain_ends_at_once() {
        let shutdown = Shutdown::new();
        let outcome = shutdown
            .drain(
                || 0,
                &Metrics::new(),
                timing(60),
                futures_util::stream::pending(),
            )
            .await;
        assert_eq!(outcome, Outcome::Drained(Duration::ZERO));
        assert!(shutdown.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_stays_is_forced_at_the_deadline_or_by_a_second_signal() {
        for (second_signal, after) in [(false, 60), (true, 0)] {
            let shutdown = Shutdown::new();
            let forced = shutdown.clone();
            // A session that ends only when forced.
            shutdown.spawn_session(async move { forced.forced().await });
            let signals: std::pin::Pin<Box<dyn Stream<Item = ()>>> = if second_signal {
                Box::pin(futures_util::stream::iter([()]))
            } else {
                Box::pin(futures_util::stream::pending())
            };
            let started = Instant::now();
            let outcome = shutdown
                .drain(|| 1, &Metrics::new(), timing(60), signals)
                .await;
            assert_eq!(
                outcome,
                Outcome::Forced {
                    remaining: 1,
                    after: Duration::from_secs(after)
                }
            );
            assert_eq!(started.elapsed(), Duration::from_secs(after));
        }
    }
}
