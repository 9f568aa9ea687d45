//! The supervisor's side of a cluster's partitions (see [`super::shards`]):
//! what it does when a partition's subscription is confirmed, lost, or
//! silent, and the timers of its repairs and probes.
//!
//! A partition that comes up again catches up first, like a whole link
//! after an outage: each of its streams whose head moved meanwhile has its
//! local readers closed with 4010, so that they resume and are told what
//! they cannot recover. Then its streams are live again. While any
//! partition is down, `/ready` is 503 and `wsnotify_redis_partitions_down`
//! says how many; the log and `/health` name them.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::RedisBroker;
use super::conn::Conn;
use super::error::LinkError;
use super::shards::{Event, Outcome, Shards};
use super::subscriptions::Subscriptions;

/// First wait before a down partition is subscribed again; doubles up to
/// [`REPAIR_MAX`].
const REPAIR_MIN: Duration = Duration::from_millis(50);
const REPAIR_MAX: Duration = Duration::from_secs(1);

/// When the supervisor next repairs partitions and looks for silent ones.
#[derive(Debug)]
pub struct Timers {
    repair_at: Option<Instant>,
    backoff: Duration,
    probes_at: Option<Instant>,
}

impl Timers {
    /// A repair is due at once if any partition is down.
    pub fn new(shards: Option<&Shards>) -> Self {
        let down = shards.is_some_and(|s| !s.down().is_empty());
        Timers {
            repair_at: down.then(|| Instant::now() + REPAIR_MIN),
            backoff: REPAIR_MIN,
            probes_at: None,
        }
    }

    /// The next shard event, or never without shards.
    pub async fn event(events: &mut Option<mpsc::UnboundedReceiver<Event>>) -> Option<Event> {
        match events {
            Some(events) => events.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Resolves when a repair is due.
    pub fn repair(&self) -> impl Future<Output = ()> + use<> {
        until(self.repair_at)
    }

    /// Resolves when the probes sent should have come back.
    pub fn probes(&self) -> impl Future<Output = ()> + use<> {
        until(self.probes_at)
    }

    fn schedule_repair(&mut self) {
        if self.repair_at.is_none() {
            self.repair_at = Some(Instant::now() + self.backoff);
        }
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl RedisBroker {
    /// Sets the partitions down at a (re)connect, before any is confirmed:
    /// not news worth a log line.
    pub(super) fn partitions_start(&self, shards: &Shards) {
        let down = shards.down();
        self.metrics.partitions_down(&down);
        *self.lock_down() = down;
    }

    /// Publishes the partitions now down (metrics, `/ready`); logs the
    /// first partition lost and the last one back, not each.
    pub(super) fn partitions_changed(&self, shards: &Shards) {
        let down = shards.down();
        self.metrics.partitions_down(&down);
        let mut was = self.lock_down();
        match (was.is_empty(), down.is_empty()) {
            (true, false) => tracing::warn!(
                partitions = ?down,
                "cluster partitions unsubscribed (their readers wait, /ready is 503); resubscribing on the slots' owners"
            ),
            (false, true) => tracing::info!("every cluster partition is subscribed"),
            _ => {}
        }
        *was = down;
    }

    /// Acts on one event of a shard connection.
    pub(super) async fn on_shard_event(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &mut Conn,
        event: Event,
        timers: &mut Timers,
    ) -> Result<(), LinkError> {
        let Some(shards) = subscriptions.shards.as_mut() else {
            return Ok(());
        };
        match shards.on_event(event) {
            Outcome::Nothing => {}
            Outcome::Message { channel, payload } => {
                let found = self.router.route(&channel, &payload);
                self.act_on(found, conn).await;
            }
            Outcome::Live(streams) => self.mark_live(streams.into_iter().map(|s| (s, true))),
            Outcome::Up(p, streams) => {
                self.catch_up(conn, Some(&streams)).await?;
                self.mark_live(streams.into_iter().map(|s| (s, true)));
                self.partitions_changed(shards);
                if shards.down().is_empty() {
                    timers.backoff = REPAIR_MIN;
                }
                tracing::debug!(partition = p, "partition subscribed");
            }
            Outcome::Down(partitions) => self.lost(shards, &partitions, timers),
        }
        Ok(())
    }

    /// `partitions` lost their subscription: their streams are not live
    /// (readers wait, then are told `unavailable`), and a repair is due.
    fn lost(&self, shards: &Shards, partitions: &[usize], timers: &mut Timers) {
        if partitions.is_empty() {
            return;
        }
        let streams = partitions.iter().flat_map(|&p| shards.streams(p));
        self.unlive(streams);
        self.partitions_changed(shards);
        tracing::warn!(
            ?partitions,
            "cluster partitions unsubscribed: /ready is 503 until they are back"
        );
        timers.schedule_repair();
    }

    /// Subscribes the down partitions again on their current owners.
    pub(super) async fn repair_partitions(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &mut Conn,
        timers: &mut Timers,
    ) -> Result<(), LinkError> {
        timers.repair_at = None;
        let Some(shards) = subscriptions.shards.as_mut() else {
            return Ok(());
        };
        match shards.repair(conn).await {
            Ok(stuck) => self.lost(shards, &stuck, timers),
            Err(err) => tracing::debug!(%err, "could not read the cluster's slots; retrying"),
        }
        self.partitions_changed(shards);
        if !shards.down().is_empty() {
            timers.backoff = (timers.backoff * 2).min(REPAIR_MAX);
            timers.schedule_repair();
        }
        Ok(())
    }

    /// Sends a probe into every partition (each check period).
    pub(super) async fn probe_partitions(
        &self,
        subscriptions: &mut Subscriptions,
        conn: &Conn,
        timers: &mut Timers,
    ) {
        let Some(shards) = subscriptions.shards.as_mut() else {
            return;
        };
        self.silent_partitions_of(shards, timers);
        shards.probe(conn).await;
        // Look for the echoes a little after they are due.
        timers.probes_at = Some(Instant::now() + self.settings.timeout + REPAIR_MIN);
    }

    /// Takes down the partitions whose probe did not come back.
    pub(super) fn silent_partitions(&self, subscriptions: &mut Subscriptions, timers: &mut Timers) {
        timers.probes_at = None;
        if let Some(shards) = subscriptions.shards.as_mut() {
            self.silent_partitions_of(shards, timers);
        }
    }

    fn silent_partitions_of(&self, shards: &mut Shards, timers: &mut Timers) {
        let silent = shards.silent();
        self.lost(shards, &silent, timers);
    }
}
