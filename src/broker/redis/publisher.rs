//! The publisher: this instance's broadcasts and room messages on their way
//! to Redis. Publishing never waits for Redis: messages are queued (bounded)
//! and one task sends them, pipelined in batches. Local clients got theirs
//! before the message was queued, so a drop costs only other instances'
//! copies, and is counted.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::RedisBroker;

/// Messages sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 64;

impl RedisBroker {
    /// Sends queued envelopes. Runs until the supervisor has returned, then
    /// sends what is left and stops.
    pub(super) async fn run_publisher(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<(String, String)>,
    ) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let mut last = false;
        loop {
            let received = tokio::select! {
                n = queue.recv_many(&mut batch, PUBLISH_BATCH) => n,
                _ = self.supervised.cancelled() => {
                    last = true;
                    while let Ok(item) = queue.try_recv() {
                        batch.push(item);
                    }
                    batch.len()
                }
            };
            if received == 0 {
                return;
            }
            if !self.send(&batch).await {
                self.metrics.broker_dropped(batch.len());
                self.suspect.notify_one();
            }
            batch.clear();
            if last {
                return;
            }
        }
    }

    /// PUBLISHes `batch` in one pipeline; whether Redis took it.
    async fn send(&self, batch: &[(String, String)]) -> bool {
        let Some(mut conn) = self.command_connection() else {
            return false;
        };
        let mut pipe = redis::pipe();
        for (channel, envelope) in batch {
            pipe.cmd("PUBLISH").arg(channel).arg(envelope).ignore();
        }
        matches!(
            timeout(self.settings.timeout, pipe.query_async::<()>(&mut conn)).await,
            Ok(Ok(()))
        )
    }
}
