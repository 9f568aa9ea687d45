//! The Redis broker: several instances share Redis Pub/Sub.
//!
//! Each instance holds two Redis connections, whatever its client count: one
//! subscriber (`websocket:broadcast` plus the channel of each user and room
//! it holds) and one multiplexed command connection. The parts:
//!
//! - [`link`]: the supervisor that owns both connections, its backoff and
//!   health;
//! - [`publisher`]: the queue that pipelines this instance's broadcasts and
//!   room messages to Redis;
//! - [`channels`]: every channel and key name, and the envelopes;
//! - [`inbound`]: the router that hands each received message to the
//!   node's delivery, and the last position seen of each stream;
//! - [`presence`]: presence in Redis with a TTL, and the follower that keeps
//!   it in step with the hub;
//! - [`history`]: the streams' history scripts; [`streams`]: appending,
//!   reading, and what the broker does when a stream's history went back or
//!   the link was lost; [`inbox`]: the durable publishing path of workers.
//!
//! With history off, broadcasts and room messages are delivered to local
//! clients first and published with this instance's id as `origin`; the
//! echo from Redis is skipped, so each client receives a message once, and
//! local delivery never depends on Redis. Per-user notifications are
//! published raw, exactly what any external publisher (`redis-cli PUBLISH
//! notifications:42 …`) sends, and delivered from the subscription; while
//! Redis is down they reach local clients only.
//!
//! With history on, a message of a stream is appended by a script that also
//! publishes it, and every instance, the publishing one included, delivers
//! it from its subscription, so all readers get one order. While Redis is
//! down such publishes are refused: a message that could not be kept is not
//! sent, and the publisher retries with its idempotency key.

mod channels;
mod conn;
mod error;
mod history;
mod inbound;
mod inbox;
mod link;
mod partitions;
mod presence;
mod publisher;
mod resp;
mod shards;
mod streams;
mod subscriptions;
mod topology;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::conn::{Conn, Connector};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::channels::{BROADCAST_CHANNEL, room_channel};
use self::history::RedisHistory;
use self::inbound::Router;
use self::link::Health;
use self::presence::PresenceStore;
use super::{BrokerHealth, Notified, Reach, StartError};
use crate::config::Config;
use crate::delivery::{Delivery, Inbound};
use crate::hub::{Change, Fanout, Hub};
use crate::metrics::Metrics;
use crate::stream::Stream;

/// Channel and key names, for operators (and tests) that look into Redis.
pub use self::channels::{
    COUNTS_KEY, NOTIFY_PREFIX, ROOM_PREFIX, holders_key, presence_key, stream_channel,
};
pub use self::conn::Endpoint;

/// Broadcasts waiting for the publisher task; beyond this, cross-instance
/// copies are dropped (local clients already have theirs) and counted.
const PUBLISH_QUEUE: usize = 8192;

/// The Redis broker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One Redis or a cluster's seed nodes.
    pub endpoint: Endpoint,
    /// This instance's id: the `origin` of its messages and its count key.
    pub instance: String,
    /// Longest wait for any Redis command or connection.
    pub timeout: Duration,
    /// Period of the link check and the count refresh; the count key lives
    /// twice as long, so a killed instance leaves the total within two periods.
    pub refresh: Duration,
    /// Life of a presence entry that is not refreshed.
    pub presence_ttl: Duration,
    /// Period of the presence refresh.
    pub presence_refresh: Duration,
    /// How much history is kept; [`history::Settings::enabled`] or not.
    pub history: crate::history::Settings,
    /// When another instance claims an inbox entry left unacknowledged.
    pub inbox_claim_after: Duration,
}

impl Settings {
    /// Settings for `endpoint` from the server's configuration, with a
    /// fresh id.
    pub fn from_config(config: &Config, endpoint: Endpoint) -> Self {
        Settings {
            endpoint,
            instance: uuid::Uuid::new_v4().to_string(),
            timeout: config.redis_timeout,
            refresh: config.redis_refresh_interval,
            presence_ttl: config.presence_ttl,
            presence_refresh: config.presence_refresh(),
            history: config.history(),
            inbox_claim_after: config.inbox_claim_after,
        }
    }
}

/// The Redis broker of one instance.
pub struct RedisBroker {
    settings: Settings,
    connector: Connector,
    /// Read for what to subscribe to and what presence to refresh.
    hub: Arc<Hub>,
    /// Where local clients' messages go (while Redis is down too).
    delivery: Delivery,
    router: Router,
    metrics: Arc<Metrics>,
    /// Whether the link is up; read on every publish, so an atomic.
    up: AtomicBool,
    /// The command connection while up. Cloning a multiplexed connection is
    /// cheap and shares one socket; the lock is held only to clone or swap.
    conn: Mutex<Option<Conn>>,
    health: Mutex<Health>,
    /// (channel, envelope) pairs for the publisher task.
    outgoing: mpsc::Sender<(String, String)>,
    presence: PresenceStore,
    /// The connection-count script ([`subscriptions::COUNTS`]).
    counts: redis::Script,
    /// The history scripts; `None` with history off.
    history: Option<RedisHistory>,
    /// The streams whose channels the subscriber is on right now; readers
    /// wait for theirs before they read history ([`RedisBroker::ready_for`]).
    live: Mutex<HashSet<Stream>>,
    /// Told whenever `live` changes.
    live_changed: Notify,
    /// Cluster partitions without a confirmed subscription (cluster mode);
    /// `/ready` is 503 while any is.
    partitions_down: Mutex<Vec<usize>>,
    /// A roster could not be read from Redis: resend every room's roster at
    /// the next presence refresh.
    needs_resync: AtomicBool,
    /// The room/user pairs this instance has entries for in Redis, as far as
    /// it knows; used by the supervisor only. Departures missed while Redis
    /// was down are the recorded pairs the hub no longer holds.
    recorded: Mutex<HashSet<(String, String)>>,
    /// A command that failed asks the supervisor to check the link now.
    suspect: Notify,
    stop: CancellationToken,
    /// Cancelled when the supervisor has returned after a stop.
    supervised: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("instance", &self.settings.instance)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Starts the supervisor and publisher tasks. Fails only on a bad URL:
    /// an unreachable Redis is a degraded start, retried in the background.
    /// `changes` are `hub`'s.
    pub fn start(
        settings: Settings,
        hub: Arc<Hub>,
        changes: mpsc::UnboundedReceiver<Change>,
        delivery: Delivery,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StartError> {
        let connector = Connector::new(&settings.endpoint, settings.timeout)?;
        let (outgoing, publish_queue) = mpsc::channel(PUBLISH_QUEUE);
        metrics.broker_up(false);
        let presence =
            PresenceStore::new(&settings.instance, settings.presence_ttl, settings.timeout);
        let history = settings
            .history
            .enabled()
            .then(|| RedisHistory::new(settings.history, settings.timeout, connector.is_cluster()));
        let broker = Arc::new(RedisBroker {
            router: Router::new(&settings.instance, delivery.clone()),
            settings,
            connector,
            hub,
            delivery,
            metrics,
            up: AtomicBool::new(false),
            conn: Mutex::new(None),
            health: Mutex::new(Health {
                down_since: Some(Instant::now()),
                ..Health::default()
            }),
            outgoing,
            presence,
            counts: redis::Script::new(subscriptions::COUNTS),
            history,
            live: Mutex::new(HashSet::new()),
            live_changed: Notify::new(),
            partitions_down: Mutex::new(Vec::new()),
            needs_resync: AtomicBool::new(false),
            recorded: Mutex::new(HashSet::new()),
            suspect: Notify::new(),
            stop: CancellationToken::new(),
            supervised: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let supervisor = broker.clone();
        broker
            .tasks
            .spawn(async move { supervisor.supervise(changes).await });
        broker
            .tasks
            .spawn(broker.clone().run_publisher(publish_queue));
        if broker.history.is_some() {
            let inbox = broker.clone();
            let claim_after = inbox.settings.inbox_claim_after;
            broker
                .tasks
                .spawn(async move { inbox.run_inbox(claim_after).await });
        }
        Ok(broker)
    }

    /// Whether Redis is reachable right now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether every message for this instance can reach it: Redis is
    /// reachable and, on a cluster, every partition is subscribed.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.lock_down().is_empty()
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.partitions_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers a broadcast or room message locally, then queues its
    /// publish, if Redis is up.
    pub fn publish(&self, message: Inbound<'_>) -> Fanout {
        let fanout = self.delivery.deliver(message);
        let (channel, text, except) = match message {
            Inbound::Broadcast { text, except } => (BROADCAST_CHANNEL.to_owned(), text, except),
            Inbound::Room { room, text, except } => (room_channel(room), text, except),
            // Notifications are published raw (see `notify`), presence and
            // records by the scripts.
            Inbound::User { .. } | Inbound::Presence { .. } | Inbound::Record(_) => {
                return fanout;
            }
        };
        if self.is_up() {
            let sender = except.map(|id| format!("{}:{id}", self.settings.instance));
            let envelope = self.router.envelope(text, sender);
            if self.outgoing.try_send((channel, envelope)).is_err() {
                self.metrics.broker_dropped(1);
            }
        }
        fanout
    }

    /// The users Redis lists as present in `room`, or `None` while Redis is
    /// unreachable (then every roster is re-sent at the next refresh).
    pub async fn listed(&self, room: &str) -> Option<Vec<String>> {
        let mut conn = self.command_connection()?;
        match self.presence.list(&mut conn, &[room]).await {
            Ok(mut lists) => lists.pop(),
            Err(err) => {
                tracing::debug!(%err, room, "could not list a room's presence");
                self.needs_resync.store(true, Ordering::Relaxed);
                self.suspect.notify_one();
                None
            }
        }
    }

    fn take_resync(&self) -> bool {
        self.needs_resync.swap(false, Ordering::Relaxed)
    }

    /// Publishes to `notifications:{user}`; while Redis is unreachable the
    /// local connections of `user` are served directly.
    pub async fn notify(&self, user: &str, text: &str) -> Notified {
        if let Some(mut conn) = self.command_connection() {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(format!("{NOTIFY_PREFIX}{user}")).arg(text);
            match timeout(
                self.settings.timeout,
                publish.query_async::<usize>(&mut conn),
            )
            .await
            {
                Ok(Ok(instances)) => {
                    return Notified {
                        instances,
                        reach: Reach::Everywhere,
                    };
                }
                Ok(Err(err)) => tracing::debug!(%err, "PUBLISH failed; delivering locally"),
                Err(_) => tracing::debug!("PUBLISH timed out; delivering locally"),
            }
            self.suspect.notify_one();
        }
        let fanout = self.delivery.deliver(Inbound::User { user, text });
        Notified {
            instances: usize::from(fanout.queued > 0),
            reach: Reach::ThisInstance,
        }
    }

    /// The cluster-wide connection count: every live instance's figure,
    /// with this instance's own (`local`) taken live. Local only while
    /// Redis is down.
    pub async fn connections(&self, local: usize) -> (usize, Reach) {
        let Some(mut conn) = self.command_connection() else {
            return (local, Reach::ThisInstance);
        };
        let mut sum = self.counts.prepare_invoke();
        sum.key(COUNTS_KEY).arg("sum").arg(&self.settings.instance);
        match timeout(self.settings.timeout, sum.invoke_async::<usize>(&mut conn)).await {
            Ok(Ok(others)) => (local + others, Reach::Everywhere),
            _ => {
                self.suspect.notify_one();
                (local, Reach::ThisInstance)
            }
        }
    }

    /// The link's state, for `/health`.
    pub fn health(&self) -> BrokerHealth {
        let partitions_down = self
            .connector
            .is_cluster()
            .then(|| self.lock_down().clone());
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        BrokerHealth::Redis {
            up: self.is_up(),
            partitions_down,
            instance: self.settings.instance.clone(),
            outages: health.outages,
            last_error: health.last_error.clone(),
            down_for: health.down_since.map(|t| t.elapsed()),
        }
    }

    /// Stops both tasks; the supervisor deletes this instance's count key.
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        // The supervisor's last step: subscriptions, two presence scripts,
        // the announcements and the count, each bounded by the timeout.
        if timeout(self.settings.timeout * 6, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("redis broker did not stop in time");
        }
    }

    fn command_connection(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs (`Some`) or drops the command connection and marks the link
    /// up or down; returns whether it was up.
    fn set_connection(&self, conn: Option<Conn>) -> bool {
        let up = conn.is_some();
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
        self.up.swap(up, Ordering::Relaxed)
    }
}
