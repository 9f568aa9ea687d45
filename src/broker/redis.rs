//! The Redis broker: several instances share Redis Pub/Sub.
//!
//! Each instance holds two Redis connections, whatever its client count: one
//! subscriber (`websocket:broadcast` plus `notifications:{user}` for each user
//! it holds) and one multiplexed command connection (PUBLISH, the connection
//! count). A supervisor task owns both: it connects, subscribes, watches the
//! link with a ping every refresh period, and after a failure reconnects with
//! capped exponential backoff and resubscribes from the hub's current users.
//!
//! Broadcasts are delivered to local clients first and published with this
//! instance's id as `origin`; the echo from Redis is skipped, so each client
//! receives a broadcast once, and local delivery never depends on Redis.
//! Per-user notifications are published raw, exactly what any external
//! publisher (`redis-cli PUBLISH notifications:42 …`) sends, and delivered
//! from the subscription; while Redis is down they reach local clients only.
//!
//! Rooms work like broadcasts on `rooms:{room}`, subscribed while this
//! instance holds a member. Presence lives in Redis with a TTL (seed 003,
//! [`super::presence`]). The hub's changes reach the supervisor as
//! [`Membership`] events; it takes them in batches, keeps only each
//! channel's and each room/user pair's final state, and turns a batch into a
//! few pipelined commands, so a client joining and leaving rooms in a loop
//! costs Redis round trips per batch, not per event. Presence announcements
//! are published by the supervisor itself, right after the script that
//! decided them, never through the droppable publish queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Msg};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Notified;
use crate::broker::presence::PresenceStore;
use crate::config::Config;
use crate::hub::{ConnId, Fanout, Hub, Membership};
use crate::message::ServerMessage;
use crate::metrics::Metrics;
use crate::protocol;

/// The channel every instance subscribes to for broadcasts (seed 000).
pub const BROADCAST_CHANNEL: &str = "websocket:broadcast";
/// Prefix of the per-user channels (seed 004): `notifications:{user_id}`.
pub const NOTIFY_PREFIX: &str = "notifications:";
/// Prefix of the per-instance connection-count keys.
pub const COUNT_PREFIX: &str = "wsnotify:connections:";
/// Prefix of the room channels: `rooms:{room}`.
pub const ROOM_PREFIX: &str = "rooms:";
/// First reconnect delay after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay, so a restarted Redis is found within seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Broadcasts waiting for the publisher task; beyond this, cross-instance
/// copies are dropped (local clients already have theirs) and counted.
const PUBLISH_QUEUE: usize = 8192;
/// Broadcasts sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 64;
/// Channels per SUBSCRIBE command when resubscribing.
const SUBSCRIBE_CHUNK: usize = 512;
/// Membership events the supervisor takes in one batch.
const MEMBERSHIP_BATCH: usize = 4096;

/// Errors the Redis broker reports at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid REDIS_URL: {0}")]
    Url(#[source] redis::RedisError),
}

/// The Redis broker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    /// This instance's id: the `origin` of its broadcasts and its count key.
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
}

impl Settings {
    /// Settings for `url` from the server's configuration, with a fresh id.
    pub fn from_config(config: &Config, url: &str) -> Self {
        Settings {
            url: url.to_owned(),
            instance: uuid::Uuid::new_v4().to_string(),
            timeout: config.redis_timeout,
            refresh: config.redis_refresh_interval,
            presence_ttl: config.presence_ttl,
            presence_refresh: config.presence_refresh(),
        }
    }

    fn count_key(&self) -> String {
        format!("{COUNT_PREFIX}{}", self.instance)
    }
}

/// The JSON published on `websocket:broadcast`. `sender_id` and `message`
/// are the seed's keys; `origin` lets an instance skip its own broadcasts.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(default)]
    sender_id: Option<String>,
    message: String,
    #[serde(default)]
    origin: Option<String>,
}

/// The broker's view of its link to Redis.
#[derive(Debug, Default)]
struct Health {
    /// Outages since start (not counting an unreachable Redis at start-up).
    outages: u64,
    last_error: Option<String>,
    /// When the current outage began, if Redis is down.
    down_since: Option<Instant>,
    /// Whether the current outage has been logged (each transition once).
    announced: bool,
}

/// A live pair of connections to Redis.
struct Link {
    conn: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
    channels: usize,
}

/// The Redis broker of one instance.
pub struct RedisBroker {
    settings: Settings,
    client: Client,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Whether the link is up; read on every broadcast, so an atomic.
    up: AtomicBool,
    /// The command connection while up. Cloning a multiplexed connection is
    /// cheap and shares one socket; the lock is held only to clone or swap.
    conn: Mutex<Option<MultiplexedConnection>>,
    health: Mutex<Health>,
    /// (channel, envelope) pairs for the publisher task.
    outgoing: mpsc::Sender<(String, String)>,
    presence: PresenceStore,
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
    pub fn start(
        settings: Settings,
        hub: Arc<Hub>,
        memberships: mpsc::UnboundedReceiver<Membership>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RedisError> {
        let client = Client::open(settings.url.as_str()).map_err(RedisError::Url)?;
        let (outgoing, publish_queue) = mpsc::channel(PUBLISH_QUEUE);
        metrics.broker_up(false);
        // Not connected yet: local members hear of each other directly.
        hub.set_local_presence(true);
        let presence =
            PresenceStore::new(&settings.instance, settings.presence_ttl, settings.timeout);
        let broker = Arc::new(RedisBroker {
            settings,
            client,
            hub,
            metrics,
            up: AtomicBool::new(false),
            conn: Mutex::new(None),
            health: Mutex::new(Health {
                down_since: Some(Instant::now()),
                ..Health::default()
            }),
            outgoing,
            presence,
            needs_resync: AtomicBool::new(false),
            recorded: Mutex::new(HashSet::new()),
            suspect: Notify::new(),
            stop: CancellationToken::new(),
            supervised: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        broker.tasks.spawn(broker.clone().supervise(memberships));
        broker.tasks.spawn(broker.clone().publish(publish_queue));
        Ok(broker)
    }

    /// Whether Redis is reachable right now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Delivers locally, then queues the cross-instance publish.
    pub fn broadcast(&self, text: &str, except: Option<ConnId>) -> Fanout {
        let fanout = self.hub.broadcast(&protocol::text_frame(text), except);
        self.enqueue(BROADCAST_CHANNEL.to_owned(), text, except);
        fanout
    }

    /// Delivers a room message locally, then queues its publish on
    /// `rooms:{room}`.
    pub fn publish_room(&self, room: &str, text: &str, except: Option<ConnId>) -> Fanout {
        let fanout = self
            .hub
            .send_to_room(room, &protocol::text_frame(text), except);
        self.enqueue(format!("{ROOM_PREFIX}{room}"), text, except);
        fanout
    }

    /// Queues `text` in an envelope for `channel`, if Redis is up.
    fn enqueue(&self, channel: String, text: &str, except: Option<ConnId>) {
        if !self.is_up() {
            return;
        }
        let json = self.envelope(text, except);
        if self.outgoing.try_send((channel, json)).is_err() {
            self.metrics.broker_dropped(1);
        }
    }

    /// The JSON envelope of `text` published by this instance.
    fn envelope(&self, text: &str, except: Option<ConnId>) -> String {
        let envelope = Envelope {
            sender_id: except.map(|id| format!("{}:{id}", self.settings.instance)),
            message: text.to_owned(),
            origin: Some(self.settings.instance.clone()),
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// The users present in `room` on every instance, and whether Redis was
    /// unreachable (then only this instance's are known).
    pub async fn presence(&self, room: &str) -> (Vec<String>, bool) {
        let mut users = self.hub.room_users(room);
        let listed = self.listed(room).await;
        let degraded = listed.is_none();
        users.extend(listed.unwrap_or_default());
        users.sort();
        users.dedup();
        (users, degraded)
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

    /// Publishes to `notifications:{user}`; while Redis is unreachable the
    /// local connections of `user` are served directly.
    pub async fn notify(&self, user: &str, text: &str) -> Notified {
        if let Some(mut conn) = self.command_connection() {
            let channel = format!("{NOTIFY_PREFIX}{user}");
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&channel).arg(text);
            match timeout(
                self.settings.timeout,
                publish.query_async::<usize>(&mut conn),
            )
            .await
            {
                Ok(Ok(instances)) => {
                    return Notified {
                        instances,
                        degraded: false,
                    };
                }
                Ok(Err(err)) => tracing::debug!(%err, "PUBLISH failed; delivering locally"),
                Err(_) => tracing::debug!("PUBLISH timed out; delivering locally"),
            }
            self.suspect.notify_one();
        }
        let fanout = self.hub.send_to_user(user, text);
        Notified {
            instances: usize::from(fanout.queued > 0),
            degraded: true,
        }
    }

    /// The cluster-wide connection count: every live instance's key, with
    /// this instance's own figure taken live. Local only while Redis is down.
    pub async fn connections(&self) -> usize {
        let local = self.hub.len();
        let Some(mut conn) = self.command_connection() else {
            return local;
        };
        match timeout(self.settings.timeout, self.others(&mut conn)).await {
            Ok(Ok(others)) => local + others,
            _ => {
                self.suspect.notify_one();
                local
            }
        }
    }

    /// Sums the count keys of the other instances.
    async fn others(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<usize> {
        let own = self.settings.count_key();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{COUNT_PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.extend(batch.into_iter().filter(|k| *k != own));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let counts: Vec<Option<usize>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// The `broker` object of `/health`.
    pub fn status(&self) -> Value {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "kind": "redis",
            "status": if self.is_up() { "ok" } else { "degraded" },
            "instance": self.settings.instance,
            "outages": health.outages,
            "last_error": health.last_error,
            "down_for_s": health.down_since.map(|t| t.elapsed().as_secs_f64()),
        })
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

    fn command_connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connect, serve, and after each failure back off and reconnect.
    /// Runs the link until the broker stops, then lets the publisher flush.
    async fn supervise(self: Arc<Self>, memberships: mpsc::UnboundedReceiver<Membership>) {
        self.run_link(memberships).await;
        self.supervised.cancel();
    }

    async fn run_link(&self, mut memberships: mpsc::UnboundedReceiver<Membership>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => return,
                attempt = timeout(self.settings.timeout, self.connect()) => attempt,
            };
            let failure = match attempt {
                Ok(Ok(link)) => {
                    backoff = BACKOFF_MIN;
                    self.went_up(&link);
                    match self.serve(link, &mut memberships).await {
                        Some(failure) => failure,
                        None => return,
                    }
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {:?}", self.settings.timeout),
            };
            self.went_down(failure);
            if !self.wait(backoff, &mut memberships).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sleeps `backoff`, dropping membership changes: the next connect
    /// subscribes from the hub's users as they are then. `false` on stop.
    async fn wait(
        &self,
        backoff: Duration,
        memberships: &mut mpsc::UnboundedReceiver<Membership>,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = &mut sleep => return true,
                Some(_) = memberships.recv() => {}
            }
        }
    }

    async fn connect(&self) -> redis::RedisResult<Link> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
        let mut channels = vec![BROADCAST_CHANNEL.to_owned()];
        channels.extend(
            self.hub
                .users()
                .iter()
                .map(|user| format!("{NOTIFY_PREFIX}{user}")),
        );
        channels.extend(
            self.hub
                .rooms()
                .iter()
                .map(|room| format!("{ROOM_PREFIX}{room}")),
        );
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            sink.subscribe(chunk).await?;
        }
        self.refresh_count(&mut conn).await?;
        Ok(Link {
            conn,
            sink,
            stream,
            channels: channels.len(),
        })
    }

    /// Serves a live link until it fails (`Some(why)`) or the broker stops.
    async fn serve(
        &self,
        link: Link,
        memberships: &mut mpsc::UnboundedReceiver<Membership>,
    ) -> Option<String> {
        let Link {
            mut conn,
            mut sink,
            mut stream,
            ..
        } = link;
        let mut check = tokio::time::interval(self.settings.refresh);
        check.tick().await; // the first tick is immediate; connect just checked
        // The first tick is immediate: after a reconnect, entries that
        // expired during the outage come back (and are announced) at once,
        // now that the link is up and announcements can be published.
        let mut presence = tokio::time::interval(self.settings.presence_refresh);
        let mut resync = true;
        loop {
            let result = tokio::select! {
                _ = self.stop.cancelled() => {
                    // Sessions have ended: withdraw their presence (and
                    // announce it), then the count.
                    let mut last = Vec::new();
                    while let Ok(change) = memberships.try_recv() {
                        last.push(change);
                    }
                    let withdrawn = async {
                        self.follow(&mut sink, &mut conn, last).await?;
                        // Going away: whatever is still recorded goes too.
                        let all: Vec<_> = {
                            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
                            recorded.iter().cloned().collect()
                        };
                        self.presence.leave(&mut conn, &all).await.map(|_| ())
                    };
                    if let Err(err) = withdrawn.await {
                        tracing::debug!(%err, "could not withdraw the last presence entries");
                    }
                    let mut del = redis::cmd("DEL");
                    del.arg(self.settings.count_key());
                    let _ = timeout(self.settings.timeout, del.query_async::<()>(&mut conn)).await;
                    return None;
                }
                message = stream.next() => match message {
                    Some(message) => {
                        self.deliver(&message);
                        Ok(())
                    }
                    None => return Some("the subscription connection closed".to_owned()),
                },
                Some(first) = memberships.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < MEMBERSHIP_BATCH {
                        match memberships.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    self.follow(&mut sink, &mut conn, batch).await
                }
                _ = check.tick() => self.check(&mut sink, &mut conn).await,
                _ = presence.tick() => {
                    let first = std::mem::take(&mut resync);
                    let refreshed = self.refresh_presence(&mut conn).await;
                    if refreshed.is_ok() && (first || self.needs_resync.swap(false, Ordering::Relaxed)) {
                        self.resync_rosters(&mut conn).await
                    } else {
                        refreshed
                    }
                }
                _ = self.suspect.notified() => self.check(&mut sink, &mut conn).await,
            };
            if let Err(why) = result {
                return Some(why);
            }
        }
    }

    /// Follows a batch of the hub's changes. Only each channel's and each
    /// room/user pair's final state counts: a user who arrived and left
    /// within the batch was never announced, so nothing is sent for them.
    /// Subscriptions come first, so a room's channel is followed before the
    /// scripts announce its arrivals on it.
    async fn follow(
        &self,
        sink: &mut PubSubSink,
        conn: &mut MultiplexedConnection,
        batch: Vec<Membership>,
    ) -> Result<(), String> {
        let mut channels: HashMap<String, bool> = HashMap::new();
        let mut pairs: HashMap<(Arc<str>, Arc<str>), bool> = HashMap::new();
        for change in batch {
            match change {
                Membership::Joined(user) => channels.insert(format!("{NOTIFY_PREFIX}{user}"), true),
                Membership::Left(user) => channels.insert(format!("{NOTIFY_PREFIX}{user}"), false),
                Membership::Opened(room) => channels.insert(format!("{ROOM_PREFIX}{room}"), true),
                Membership::Closed(room) => channels.insert(format!("{ROOM_PREFIX}{room}"), false),
                Membership::Arrived { room, user } => pairs.insert((room, user), true),
                Membership::Departed { room, user } => pairs.insert((room, user), false),
            };
        }
        let (subscribe, unsubscribe): (Vec<_>, Vec<_>) =
            channels.into_iter().partition(|(_, on)| *on);
        let names =
            |list: Vec<(String, bool)>| list.into_iter().map(|(c, _)| c).collect::<Vec<_>>();
        let subscriptions = async {
            for chunk in names(subscribe).chunks(SUBSCRIBE_CHUNK) {
                sink.subscribe(chunk).await?;
            }
            for chunk in names(unsubscribe).chunks(SUBSCRIBE_CHUNK) {
                sink.unsubscribe(chunk).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        match timeout(self.settings.timeout, subscriptions).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err("SUBSCRIBE timed out".to_owned()),
        }
        let (arrived, departed): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(_, on)| *on);
        let arrived: Vec<_> = arrived.into_iter().map(|(pair, _)| pair).collect();
        let departed: Vec<_> = departed.into_iter().map(|(pair, _)| pair).collect();
        // Recorded before the script runs (it may change Redis and still
        // fail to answer); forgotten only once withdrawn. An extra entry
        // costs one LEAVE that changes nothing.
        self.record(arrived.iter().map(|(r, u)| (r.to_string(), u.to_string())));
        self.presence.refresh(conn, &arrived).await?;
        self.presence.leave(conn, &departed).await?;
        self.forget(departed.iter().map(|(r, u)| (r.to_string(), u.to_string())));
        Ok(())
    }

    fn record(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pairs);
    }

    fn forget(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        for pair in pairs {
            recorded.remove(&pair);
        }
    }

    /// Withdraws the entries of departures this instance missed, refreshes
    /// every entry it holds, then sweeps the rooms it holds for entries that
    /// expired (an instance that died). The scripts announce what changed:
    /// missed and swept users leave, users whose entries had expired here
    /// (a Redis outage) rejoin.
    async fn refresh_presence(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let held: HashSet<(String, String)> = self
            .hub
            .presences()
            .into_iter()
            .map(|(room, user)| (room.to_string(), user.to_string()))
            .collect();
        // Departures this instance missed (Redis was down when they came,
        // or a batch failed).
        let missed: Vec<(String, String)> = {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            recorded.difference(&held).cloned().collect()
        };
        let held: Vec<(String, String)> = held.into_iter().collect();
        self.record(held.iter().cloned());
        self.presence.leave(conn, &missed).await?;
        self.forget(missed);
        self.presence.refresh(conn, &held).await?;
        for (room, user) in self.presence.sweep(conn, &self.hub.rooms()).await? {
            tracing::debug!(room, user, "presence expired");
        }
        Ok(())
    }

    /// Sends every local room a fresh `room.joined` from Redis' list: events
    /// published while this instance was cut off are lost (Pub/Sub keeps
    /// nothing), and entries that expired meanwhile were swept by nobody.
    /// Runs after the first refresh of each link, and after a failed list.
    async fn resync_rosters(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let rooms = self.hub.rooms();
        let lists = self.presence.list(conn, &rooms).await?;
        for (room, listed) in rooms.iter().zip(lists) {
            self.hub.resync_room(room, &listed);
        }
        Ok(())
    }

    /// Pings the subscriber (a paused Redis answers nothing) and refreshes
    /// this instance's count key.
    async fn check(
        &self,
        sink: &mut PubSubSink,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), String> {
        let both = async {
            sink.ping::<redis::Value>().await?;
            self.refresh_count(conn).await
        };
        match timeout(self.settings.timeout, both).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
        }
    }

    async fn refresh_count(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let ttl_ms = (self.settings.refresh * 2).as_millis().max(1) as u64;
        redis::cmd("SET")
            .arg(self.settings.count_key())
            .arg(self.hub.len())
            .arg("PX")
            .arg(ttl_ms)
            .query_async(conn)
            .await
    }

    /// Delivers one Pub/Sub message to the local clients it is for.
    fn deliver(&self, message: &Msg) {
        let payload = message.get_payload_bytes();
        let channel = message.get_channel_name();
        if channel == BROADCAST_CHANNEL {
            // The seed's envelope has no `origin`; raw text is accepted too.
            if let Some(text) = self.opened(payload) {
                self.hub.broadcast(&protocol::text_frame(&text), None);
            }
        } else if let Some(user) = channel.strip_prefix(NOTIFY_PREFIX) {
            let text = String::from_utf8_lossy(payload);
            self.hub.send_to_user(user, &text);
        } else if let Some(room) = channel.strip_prefix(ROOM_PREFIX) {
            // Room messages are JSON themselves: only an envelope with an
            // `origin` is one of ours; anything else goes out as it is.
            // Presence events, this instance's included, are delivered from
            // the subscription: the scripts publish them, so every member
            // everywhere gets them in Redis' one order.
            let (text, own) = match serde_json::from_slice::<Envelope>(payload) {
                Ok(envelope) if envelope.origin.is_some() => {
                    let own = envelope.origin.as_deref() == Some(&self.settings.instance);
                    (envelope.message, own)
                }
                _ => (String::from_utf8_lossy(payload).into_owned(), false),
            };
            let frame = protocol::text_frame(&text);
            match presence_subject(&text) {
                Some(user) => {
                    self.hub.send_presence(room, &frame, &user);
                }
                // Our own room messages went to local members already.
                None if own => {}
                None => {
                    self.hub.send_to_room(room, &frame, None);
                }
            }
        }
    }

    /// The text a broadcast payload carries: an envelope's `message` (the
    /// seed's envelope has no `origin`), or the raw payload. `None` for this
    /// instance's own echo.
    fn opened(&self, payload: &[u8]) -> Option<String> {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(envelope) if envelope.origin.as_deref() == Some(&self.settings.instance) => None,
            Ok(envelope) => Some(envelope.message),
            Err(_) => Some(String::from_utf8_lossy(payload).into_owned()),
        }
    }

    /// Sends queued envelopes, pipelined in batches. Runs until the
    /// supervisor has returned, then sends what is left and stops.
    async fn publish(self: Arc<Self>, mut queue: mpsc::Receiver<(String, String)>) {
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
            let sent = match self.command_connection() {
                Some(mut conn) => {
                    let mut pipe = redis::pipe();
                    for (channel, envelope) in &batch {
                        pipe.cmd("PUBLISH").arg(channel).arg(envelope).ignore();
                    }
                    matches!(
                        timeout(self.settings.timeout, pipe.query_async::<()>(&mut conn)).await,
                        Ok(Ok(()))
                    )
                }
                None => false,
            };
            if !sent {
                self.metrics.broker_dropped(batch.len());
                self.suspect.notify_one();
            }
            batch.clear();
            if last {
                return;
            }
        }
    }

    fn went_up(&self, link: &Link) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(link.conn.clone());
        self.hub.set_local_presence(false);
        self.up.store(true, Ordering::Relaxed);
        self.metrics.broker_up(true);
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.down_since.take() {
            Some(since) if health.outages > 0 => tracing::info!(
                channels = link.channels,
                "redis connection restored after {:.1}s; resubscribed, cross-instance delivery resumed",
                since.elapsed().as_secs_f64()
            ),
            _ => tracing::info!(
                url = %self.settings.url,
                instance = %self.settings.instance,
                "connected to redis; cross-instance delivery on"
            ),
        }
        health.announced = false;
    }

    fn went_down(&self, why: String) {
        let was_up = self.up.swap(false, Ordering::Relaxed);
        // Until the link is back, local members hear of each other directly.
        self.hub.set_local_presence(true);
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.broker_up(false);
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if was_up {
            health.outages += 1;
            health.down_since = Some(Instant::now());
            self.metrics.broker_outage();
            tracing::warn!(
                "redis connection lost ({why}): serving local clients only, /ready is 503, reconnecting with backoff"
            );
            health.announced = true;
        } else if !health.announced {
            tracing::warn!(
                url = %self.settings.url,
                "redis unreachable at start-up ({why}): starting in degraded mode, serving local clients only, retrying in the background"
            );
            health.announced = true;
        } else {
            tracing::debug!("redis still unreachable: {why}");
        }
        health.last_error = Some(why);
    }
}

/// The user a `presence.join`/`presence.leave` is about, or `None` for any
/// other message. Only texts that start like our own encoding of one are
/// decoded, so chat traffic costs a prefix check.
fn presence_subject(text: &str) -> Option<String> {
    if !text.starts_with(r#"{"type":"presence."#) {
        return None;
    }
    match ServerMessage::decode(text) {
        Ok(
            ServerMessage::PresenceJoin { user, .. } | ServerMessage::PresenceLeave { user, .. },
        ) => Some(user),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_keep_the_seed_keys() {
        let envelope = Envelope {
            sender_id: Some("a".into()),
            message: "hi".into(),
            origin: Some("o".into()),
        };
        let json: Value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            json,
            json!({"sender_id": "a", "message": "hi", "origin": "o"})
        );
        let seed: Envelope = serde_json::from_str(r#"{"sender_id":"x","message":"m"}"#).unwrap();
        assert_eq!((seed.message.as_str(), seed.origin), ("m", None));
    }
}
