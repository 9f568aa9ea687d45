//! Write-through for idle plain-text connections: a few tasks that write
//! queued frames straight to the sockets, so a fan-out does not wake one
//! session task per recipient.
//!
//! A push into an idle outbox (empty, and its session not writing) puts the
//! outbox on a [`Backlog`] instead of waking the session. One flusher task
//! per core takes its backlog and, for each outbox, writes everything queued
//! with non-blocking `writev`s ([`Outbox::write_through`]). What the socket
//! does not take at once (a full send buffer, a client that stopped reading)
//! is handed to the session, which waits for the socket as before, so a
//! slow client never holds a flusher up. A task yields every
//! [`YIELD_EVERY`] outboxes: a publisher that runs meanwhile queues behind
//! the frames not yet written, and those go out together in one `writev`,
//! which keeps a burst's throughput.
//!
//! Why (docs/BENCHMARKS.md §1): on a single broadcast to 10k plain clients,
//! each session's wake-up, `select!` turn and locks cost more than the
//! kernel's own write, on memory no other recipient shares.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::metrics::Metrics;
use crate::outbox::{Backlog, Outbox};

/// Outboxes written between two yields of a flusher task.
pub const YIELD_EVERY: usize = 128;

/// The backlogs and their tasks.
#[derive(Debug)]
pub struct Flusher {
    backlogs: Box<[Arc<Backlog>]>,
    metrics: Arc<Metrics>,
    /// Set once the tasks run: they start with the first attached socket,
    /// inside the runtime.
    started: OnceLock<()>,
    /// Stops the tasks when the hub goes away.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl Flusher {
    /// One backlog and task per core this process may run on.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let tasks = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = CancellationToken::new();
        Flusher {
            backlogs: (0..tasks).map(|_| Arc::default()).collect(),
            metrics,
            started: OnceLock::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// The metrics the tasks count deliveries in.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The backlog of connection `id`: spread over the tasks.
    pub fn backlog(&self, id: u64) -> Arc<Backlog> {
        self.backlogs[(id % self.backlogs.len() as u64) as usize].clone()
    }

    /// Starts the tasks unless they run already. Must be called inside the
    /// runtime.
    pub fn start(&self) {
        self.started.get_or_init(|| {
            for backlog in self.backlogs.iter() {
                let task = run(backlog.clone(), self.metrics.clone());
                let stop = self.stop.clone();
                tokio::spawn(async move { stop.run_until_cancelled(task).await });
            }
        });
    }
}

/// One flusher task: writes the outboxes of `backlog` as they are enlisted.
/// However it ends (its runtime shutting down drops it), the backlog is
/// abandoned: what it lists goes back to the sessions, and later pushes wake
/// them directly.
pub fn run(backlog: Arc<Backlog>, metrics: Arc<Metrics>) -> impl Future<Output = ()> {
    // Built before the first poll, so a task dropped unpolled abandons too.
    let task = Abandon {
        backlog,
        batch: Vec::new(),
    };
    serve(task, metrics)
}

async fn serve(mut task: Abandon, metrics: Arc<Metrics>) {
    loop {
        task.backlog.take(&mut task.batch);
        if task.batch.is_empty() {
            task.backlog.enlisted().await;
            continue;
        }
        let mut written = 0;
        for i in 0..task.batch.len() {
            written += task.batch[i].write_through();
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                metrics.delivered(std::mem::take(&mut written));
                tokio::task::yield_now().await;
            }
        }
        metrics.delivered(written);
        task.batch.clear();
    }
}

/// A task's backlog and the batch it took from it; dropped (the task
/// ends), it abandons both.
struct Abandon {
    backlog: Arc<Backlog>,
    batch: Vec<Arc<Outbox>>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.backlog.abandon(std::mem::take(&mut self.batch));
    }
}
