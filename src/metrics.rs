//! Counters, gauges and histograms, served at `GET /metrics` in the
//! Prometheus text format (prometheus-client). Every metric is an atomic, so
//! recording one never takes a lock.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// All of wsnotify's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    opened: Counter,
    received: Counter,
    delivered: Counter,
    slow_consumers: Counter,
    fanout_seconds: Histogram,
    shutdown: Gauge,
    broker_up: Gauge,
    broker_outages: Counter,
    broker_dropped: Counter,
    protocol_errors: Counter,
    history_streams: Gauge,
    history_entries: Gauge,
    history_bytes: Gauge,
    resumes: Family<ResumeLabels, Counter>,
    insufficient_state: Counter,
    publish_refused: Counter,
    polls: Gauge,
    long_polls: Gauge,
    sse: Gauge,
    inbox_delivered: Counter,
    inbox_rejected: Counter,
    inbox_pending: Gauge,
    inbox_lag: Gauge,
    partitions_down: Gauge,
    partition_down: Family<PartitionLabels, Gauge>,
    /// The partitions that have a `partition_down` series.
    partitions_seen: std::sync::Mutex<Vec<usize>>,
}

/// The label of `wsnotify_redis_partition_down`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: String,
}

/// The labels of `wsnotify_resumes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabels {
    /// `recovered` or `lost`.
    pub outcome: &'static str,
    /// `none`, or the reason a stream was not recovered.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wsnotify");
        let metrics = Metrics {
            active: Gauge::default(),
            opened: Counter::default(),
            received: Counter::default(),
            delivered: Counter::default(),
            slow_consumers: Counter::default(),
            // 1 µs .. ~4 s: a fan-out to one client up to 10k+ slow ones.
            fanout_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            shutdown: Gauge::default(),
            broker_up: Gauge::default(),
            broker_outages: Counter::default(),
            broker_dropped: Counter::default(),
            protocol_errors: Counter::default(),
            history_streams: Gauge::default(),
            history_entries: Gauge::default(),
            history_bytes: Gauge::default(),
            resumes: Family::default(),
            insufficient_state: Counter::default(),
            publish_refused: Counter::default(),
            polls: Gauge::default(),
            long_polls: Gauge::default(),
            sse: Gauge::default(),
            inbox_delivered: Counter::default(),
            inbox_rejected: Counter::default(),
            inbox_pending: Gauge::default(),
            inbox_lag: Gauge::default(),
            partitions_down: Gauge::default(),
            partition_down: Family::default(),
            partitions_seen: std::sync::Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        // Every outcome exists from the start at 0, so that rate() and
        // increase() see the first resume of each kind (a series that
        // appears at 1 has no earlier sample to count from).
        metrics.resumed_zero(None);
        for reason in crate::protocol::json::Reason::ALL {
            metrics.resumed_zero(Some(reason.as_str()));
        }
        let m = &metrics;
        registry.register(
            "active_connections",
            "Open WebSocket connections",
            m.active.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            m.opened.clone(),
        );
        registry.register(
            "messages_received",
            "Text messages received from clients",
            m.received.clone(),
        );
        registry.register(
            "messages_delivered",
            "Frames written to client sockets",
            m.delivered.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Connections closed with 4008 because their outbound queue overflowed",
            m.slow_consumers.clone(),
        );
        registry.register(
            "broadcast_fanout_seconds",
            "Time to queue one message for every local recipient",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "shutdown_in_progress",
            "1 while draining after SIGINT/SIGTERM, else 0",
            m.shutdown.clone(),
        );
        registry.register(
            "broker_up",
            "1 while the broker reaches every instance (always 1 in memory mode)",
            m.broker_up.clone(),
        );
        registry.register(
            "broker_outages",
            "Times the Redis connection was lost",
            m.broker_outages.clone(),
        );
        registry.register(
            "broker_publish_dropped",
            "Broadcasts not published to Redis (down or queue full); local clients still got them",
            m.broker_dropped.clone(),
        );
        registry.register(
            "protocol_errors",
            "Room (JSON protocol) messages refused with system.error",
            m.protocol_errors.clone(),
        );
        registry.register(
            "history_streams",
            "Streams with history kept in this process (memory mode)",
            m.history_streams.clone(),
        );
        registry.register(
            "history_entries",
            "Messages kept in history in this process (memory mode)",
            m.history_entries.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of history kept in this process (memory mode), under HISTORY_MAX_BYTES",
            m.history_bytes.clone(),
        );
        registry.register(
            "resumes",
            "Streams resumed from a client's position, by outcome and reason",
            m.resumes.clone(),
        );
        registry.register(
            "insufficient_state_closes",
            "Readers closed with 4010 because they missed messages of a stream",
            m.insufficient_state.clone(),
        );
        registry.register(
            "publish_refused",
            "Publishes to a stream refused with 503 because history could not be kept (Redis unreachable)",
            m.publish_refused.clone(),
        );
        registry.register(
            "polls_in_flight",
            "GET /poll requests being answered",
            m.polls.clone(),
        );
        registry.register(
            "long_polls_in_flight",
            "GET /poll requests waiting for a message",
            m.long_polls.clone(),
        );
        registry.register("sse_connections", "Open GET /sse streams", m.sse.clone());
        registry.register(
            "inbox_delivered",
            "Entries of the Redis inbox appended and delivered by this instance",
            m.inbox_delivered.clone(),
        );
        registry.register(
            "inbox_rejected",
            "Entries of the Redis inbox refused (moved to wsnotify:inbox:rejected)",
            m.inbox_rejected.clone(),
        );
        registry.register(
            "inbox_pending",
            "Inbox entries read by some instance and not yet acknowledged",
            m.inbox_pending.clone(),
        );
        registry.register(
            "inbox_lag",
            "Inbox entries no instance has read yet",
            m.inbox_lag.clone(),
        );
        registry.register(
            "redis_partitions_down",
            "Redis Cluster mode: partitions whose shard subscription is not confirmed (/ready is 503 while > 0)",
            m.partitions_down.clone(),
        );
        registry.register(
            "redis_partition_down",
            "Redis Cluster mode: 1 while this partition's shard subscription is lost (series of partitions that were ever down)",
            m.partition_down.clone(),
        );
        m.broker_up.set(1);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A connection registered; `now` is the new count.
    pub fn connection_opened(&self, now: usize) {
        self.opened.inc();
        self.active.set(now as i64);
    }

    /// A connection unregistered; `now` is the new count.
    pub fn connection_closed(&self, now: usize) {
        self.active.set(now as i64);
    }

    /// A text message arrived from a client.
    pub fn message_received(&self) {
        self.received.inc();
    }

    /// `frames` frames were written to one client's socket.
    pub fn delivered(&self, frames: usize) {
        self.delivered.inc_by(frames as u64);
    }

    /// A fan-out finished.
    pub fn fanout(&self, took: Duration, overflowed: usize) {
        self.fanout_seconds.observe(took.as_secs_f64());
        if overflowed > 0 {
            self.slow_consumers.inc_by(overflowed as u64);
        }
    }

    /// The drain started.
    pub fn shutdown_started(&self) {
        self.shutdown.set(1);
    }

    /// The broker's link went up or down.
    pub fn broker_up(&self, up: bool) {
        self.broker_up.set(i64::from(up));
    }

    /// The Redis connection was lost.
    pub fn broker_outage(&self) {
        self.broker_outages.inc();
    }

    /// `n` broadcasts were not published to Redis.
    pub fn broker_dropped(&self, n: usize) {
        self.broker_dropped.inc_by(n as u64);
    }

    /// A room client's message was refused with `system.error`.
    pub fn protocol_error(&self) {
        self.protocol_errors.inc();
    }

    /// What history holds (memory mode).
    pub fn history(&self, streams: usize, entries: usize, bytes: usize) {
        self.history_streams.set(streams as i64);
        self.history_entries.set(entries as i64);
        self.history_bytes.set(bytes as i64);
    }

    /// One stream resumed; `reason` is `None` when it was recovered.
    pub fn resumed(&self, reason: Option<&'static str>) {
        self.resumes
            .get_or_create(&Self::resume_labels(reason))
            .inc();
    }

    fn resumed_zero(&self, reason: Option<&'static str>) {
        let _ = self.resumes.get_or_create(&Self::resume_labels(reason));
    }

    fn resume_labels(reason: Option<&'static str>) -> ResumeLabels {
        match reason {
            None => ResumeLabels {
                outcome: "recovered",
                reason: "none",
            },
            Some(reason) => ResumeLabels {
                outcome: "lost",
                reason,
            },
        }
    }

    /// A reader was closed with 4010.
    pub fn insufficient_state(&self) {
        self.insufficient_state.inc();
    }

    /// A publish was refused with 503.
    pub fn publish_refused(&self) {
        self.publish_refused.inc();
    }

    /// The gauge of polls in flight, or of those waiting (`long`).
    pub fn polls(&self, long: bool) -> &Gauge {
        if long { &self.long_polls } else { &self.polls }
    }

    /// The gauge of open SSE streams.
    pub fn sse(&self) -> &Gauge {
        &self.sse
    }

    /// Inbox entries delivered (`true`) or rejected.
    pub fn inbox(&self, delivered: bool) {
        if delivered {
            self.inbox_delivered.inc();
        } else {
            self.inbox_rejected.inc();
        }
    }

    /// The inbox's backlog: entries pending acknowledgement, and unread.
    pub fn inbox_backlog(&self, pending: u64, lag: u64) {
        self.inbox_pending.set(pending as i64);
        self.inbox_lag.set(lag as i64);
    }

    /// The cluster partitions down right now.
    pub fn partitions_down(&self, down: &[usize]) {
        self.partitions_down.set(down.len() as i64);
        let mut seen = self
            .partitions_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &p in seen.iter() {
            if !down.contains(&p) {
                self.partition_gauge(p).set(0);
            }
        }
        for &p in down {
            self.partition_gauge(p).set(1);
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
    }

    fn partition_gauge(&self, p: usize) -> Gauge {
        self.partition_down
            .get_or_create(&PartitionLabels {
                partition: p.to_string(),
            })
            .clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_metric() {
        let m = Metrics::new();
        m.connection_opened(1);
        m.fanout(Duration::from_micros(3), 1);
        let text = m.render();
        for name in [
            "wsnotify_active_connections 1",
            "wsnotify_connections_opened_total 1",
            "wsnotify_messages_received_total 0",
            "wsnotify_messages_delivered_total 0",
            "wsnotify_slow_consumer_disconnects_total 1",
            "wsnotify_broadcast_fanout_seconds_count 1",
            "wsnotify_shutdown_in_progress 0",
            "wsnotify_broker_up 1",
            "wsnotify_broker_outages_total 0",
            "wsnotify_broker_publish_dropped_total 0",
            "wsnotify_protocol_errors_total 0",
            "wsnotify_history_entries 0",
            "wsnotify_history_bytes 0",
            "wsnotify_insufficient_state_closes_total 0",
            "wsnotify_polls_in_flight 0",
            "wsnotify_long_polls_in_flight 0",
            "wsnotify_sse_connections 0",
            "wsnotify_inbox_pending 0",
            "wsnotify_inbox_lag 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
