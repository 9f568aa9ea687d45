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

    /// PUBLISHes `batch` in one pipeline (on a cluster, where a pipeline
    /// must stay on one slot, as concurrent commands); whether Redis took it.
    async fn send(&self, batch: &[(String, String)]) -> bool {
        let Some(mut conn) = self.command_connection() else {
            return false;
        };
        if conn.is_cluster() {
            let sends = batch.iter().map(|(channel, envelope)| {
                let mut conn = conn.clone();
                async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(envelope)
                        .query_async::<()>(&mut conn)
                        .await
                }
            });
            let all = futures_util::future::join_all(sends);
            return matches!(
                timeout(self.settings.timeout, all).await,
                Ok(results) if results.iter().all(Result::is_ok)
            );
        }
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
