//! The link to Redis and its supervisor.
//!
//! The supervisor task owns both connections of an instance: the subscriber
//! and the multiplexed command connection. It connects, subscribes to the
//! channels of what the hub holds, watches the link with a ping every
//! refresh period, follows the hub's changes, refreshes presence, and after a
//! failure reconnects with capped exponential backoff and resubscribes from
//! the hub as it is then.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubStream;

use super::conn::Conn;
use super::error::LinkError;
use super::partitions::Timers;
use super::shards::{Event, Shards};
use super::subscriptions::{SUBSCRIBE_CHUNK, Subscriptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::RedisBroker;
use super::channels::COUNTS_KEY;
use crate::hub::Change;
use crate::stream::Stream;

/// First reconnect delay after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay, so a restarted Redis is found within seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Hub changes the supervisor takes in one batch.
const CHANGE_BATCH: usize = 4096;

/// The broker's view of its link to Redis.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Outages since start (not counting an unreachable Redis at start-up).
    pub outages: u64,
    pub last_error: Option<String>,
    /// When the current outage began, if Redis is down.
    pub down_since: Option<Instant>,
    /// Whether the current outage has been logged (each transition once).
    pub announced: bool,
}

/// A live link to Redis: the command connection and the subscriptions.
pub(super) struct Link {
    conn: Conn,
    subscriptions: Subscriptions,
    messages: PubSubStream,
    /// The shard subscriptions' events (cluster mode with history).
    shard_events: Option<mpsc::UnboundedReceiver<Event>>,
    channels: usize,
}

impl RedisBroker {
    /// Connect, serve, and after each failure back off and reconnect. Runs
    /// the link until the broker stops, then lets the publisher flush.
    pub(super) async fn supervise(&self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => break,
                attempt = timeout(self.settings.timeout, self.connect()) => attempt,
            };
            let failure = match attempt {
                Ok(Ok(link)) => {
                    backoff = BACKOFF_MIN;
                    self.went_up(&link);
                    match self.run_link(link, &mut changes).await {
                        Some(failure) => failure,
                        None => break,
                    }
                }
                Ok(Err(err)) => err,
                Err(_) => LinkError::Timeout("connecting"),
            };
            self.went_down(failure.to_string());
            if !self.wait(backoff, &mut changes).await {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.supervised.cancel();
    }

    /// Sleeps `backoff`. Changes that come meanwhile are announced to local
    /// members only; the next connect subscribes from the hub's state as it
    /// is then. `false` on stop.
    async fn wait(&self, backoff: Duration, changes: &mut mpsc::UnboundedReceiver<Change>) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = &mut sleep => return true,
                Some(change) = changes.recv() => self.announce_locally(&[change]),
            }
        }
    }

    async fn connect(&self) -> Result<Link, LinkError> {
        let mut conn = self.connector.command(self.settings.timeout).await?;
        let (sink, messages) = self.connector.plain_subscriber().await?.split();
        let (shards, shard_events) = if self.connector.is_cluster() && self.history.is_some() {
            let (shards, events) = Shards::new(
                &self.settings.instance,
                self.connector.credentials(),
                self.settings.timeout,
            );
            (Some(shards), Some(events))
        } else {
            (None, None)
        };
        let mut subscriptions = Subscriptions {
            sink,
            history: self.history.is_some(),
            shards,
        };
        let streams: Vec<Stream> = std::iter::once(Stream::Broadcast)
            .chain(self.hub.users().into_iter().map(Stream::User))
            .chain(self.hub.rooms().into_iter().map(Stream::Room))
            .collect();
        let names: Vec<String> = streams
            .iter()
            .flat_map(|stream| subscriptions.channels(stream))
            .collect();
        for chunk in names.chunks(SUBSCRIBE_CHUNK) {
            subscriptions.sink.subscribe(chunk).await?;
        }
        self.refresh_count(&mut conn).await?;
        match &mut subscriptions.shards {
            // Each partition catches up and goes live as it is confirmed.
            Some(shards) => {
                let all = streams.into_iter().map(|s| (s, true)).collect();
                shards.apply(&all).await;
                shards.repair(&mut conn).await?;
                self.partitions_start(shards);
            }
            None => {
                self.catch_up(&mut conn, None).await?;
                self.mark_live(streams.into_iter().map(|stream| (stream, true)));
            }
        }
        Ok(Link {
            conn,
            subscriptions,
            messages,
            shard_events,
            channels: names.len(),
        })
    }

    /// Serves a live link until it fails (`Some(why)`) or the broker stops.
    async fn run_link(
        &self,
        link: Link,
        changes: &mut mpsc::UnboundedReceiver<Change>,
    ) -> Option<LinkError> {
        let Link {
            mut conn,
            mut subscriptions,
            mut messages,
            mut shard_events,
            ..
        } = link;
        let mut timers = Timers::new(subscriptions.shards.as_ref());
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
                    self.leave_redis(&mut subscriptions, &mut conn, changes).await;
                    return None;
                }
                message = messages.next() => match message {
                    Some(message) => {
                        let found = self
                            .router
                            .route(message.get_channel_name(), message.get_payload_bytes());
                        self.act_on(found, &mut conn).await;
                        Ok(())
                    }
                    None => Err(LinkError::Closed),
                },
                Some(first) = changes.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < CHANGE_BATCH {
                        match changes.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    self.follow(&mut subscriptions, &mut conn, batch).await
                }
                _ = check.tick() => {
                    let checked = self.check(&mut subscriptions, &mut conn).await;
                    if checked.is_ok() {
                        self.probe_partitions(&mut subscriptions, &conn, &mut timers).await;
                    }
                    checked
                }
                Some(event) = Timers::event(&mut shard_events) => {
                    self.on_shard_event(&mut subscriptions, &mut conn, event, &mut timers).await
                }
                _ = timers.repair() => self.repair_partitions(&mut subscriptions, &mut conn, &mut timers).await,
                _ = timers.probes() => {
                    self.silent_partitions(&mut subscriptions, &mut timers);
                    Ok(())
                }
                _ = presence.tick() => {
                    let first = std::mem::take(&mut resync);
                    let refreshed = self.refresh_presence(&mut conn).await;
                    if refreshed.is_ok() && (first || self.take_resync()) {
                        self.resync_rosters(&mut conn).await
                    } else {
                        refreshed
                    }
                }
                _ = self.suspect.notified() => self.check(&mut subscriptions, &mut conn).await,
            };
            if let Err(why) = result {
                return Some(why);
            }
        }
    }

    /// The last step of a graceful stop: sessions have ended, so their
    /// presence is withdrawn (and announced), then the count key goes.
    async fn leave_redis(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &mut Conn,
        changes: &mut mpsc::UnboundedReceiver<Change>,
    ) {
        let mut last = Vec::new();
        while let Ok(change) = changes.try_recv() {
            last.push(change);
        }
        let withdrawn = async {
            self.follow(subscriptions, conn, last).await?;
            self.withdraw_all(conn).await
        };
        if let Err(err) = withdrawn.await {
            tracing::debug!(%err, "could not withdraw the last presence entries");
        }
        let mut del = self.counts.prepare_invoke();
        del.key(COUNTS_KEY).arg("del").arg(&self.settings.instance);
        let _ = timeout(self.settings.timeout, del.invoke_async::<()>(conn)).await;
    }

    /// Pings the subscriber (a paused Redis answers nothing) and refreshes
    /// this instance's count key.
    async fn check(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &mut Conn,
    ) -> Result<(), LinkError> {
        let both = async {
            subscriptions.sink.ping::<redis::Value>().await?;
            self.refresh_count(conn).await
        };
        match timeout(self.settings.timeout, both).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LinkError::Timeout("the link check")),
        }
    }

    async fn refresh_count(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let ttl_ms = (self.settings.refresh * 2).as_millis().max(1) as u64;
        self.counts
            .prepare_invoke()
            .key(COUNTS_KEY)
            .arg("set")
            .arg(&self.settings.instance)
            .arg(self.hub.len())
            .arg(ttl_ms)
            .invoke_async(conn)
            .await
    }

    fn went_up(&self, link: &Link) {
        self.set_connection(Some(link.conn.clone()));
        self.metrics.broker_up(true);
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.down_since.take() {
            Some(since) if health.outages > 0 => tracing::info!(
                channels = link.channels,
                "redis connection restored after {:.1}s; resubscribed, cross-instance delivery resumed",
                since.elapsed().as_secs_f64()
            ),
            _ => tracing::info!(
                redis = %self.settings.endpoint,
                instance = %self.settings.instance,
                "connected to redis; cross-instance delivery on"
            ),
        }
        health.announced = false;
    }

    fn went_down(&self, why: String) {
        let was_up = self.set_connection(None);
        self.clear_live();
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
                redis = %self.settings.endpoint,
                "redis unreachable at start-up ({why}): starting in degraded mode, serving local clients only, retrying in the background"
            );
            health.announced = true;
        } else {
            tracing::debug!("redis still unreachable: {why}");
        }
        health.last_error = Some(why);
    }
}
