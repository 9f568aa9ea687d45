//! The Redis broker's side of history: appending and reading through the
//! scripts of [`super::history`], waiting until a reader's channels are
//! subscribed, and what it does when a stream's history went back or the
//! link was lost meanwhile: the local readers of that stream are closed
//! with 4010, so that they resume and are told what they cannot recover,
//! instead of living on with a gap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::conn::Conn;
use tokio::time::timeout;

use super::RedisBroker;
use super::channels::{partition, stream_keys};
use super::error::LinkError;
use super::history::Appended;
use super::inbound::{Found, UNKNOWN_TS};
use crate::broker::Unavailable;
use crate::history::{Budget, Position, Read};
use crate::protocol::Close;
use crate::stream::Stream;

impl RedisBroker {
    /// Appends `body` to `stream` (with history on); refused while Redis is
    /// unreachable.
    pub async fn append(
        &self,
        stream: &Stream,
        body: &str,
        key: Option<&str>,
    ) -> Result<Appended, Unavailable> {
        let (Some(history), Some(mut conn)) = (&self.history, self.command_connection()) else {
            return Err(Unavailable);
        };
        let fence = self.router.seen.get(stream).map(|last| last.position);
        match history
            .append(&mut conn, stream, body, key, fence.as_ref())
            .await
        {
            Ok(appended) => Ok(appended),
            Err(err) => {
                tracing::debug!(%err, %stream, "could not append; refusing the publish");
                self.suspect.notify_one();
                Err(Unavailable)
            }
        }
    }

    /// Reads `stream`'s history after `since`, once this instance is
    /// subscribed to its channel, so that nothing published after the read
    /// can miss the reader.
    pub async fn read(
        &self,
        stream: &Stream,
        since: Option<&Position>,
        budget: &mut Budget,
    ) -> Result<Read, Unavailable> {
        let Some(history) = &self.history else {
            return Err(Unavailable);
        };
        self.ready_for(stream).await?;
        let mut conn = self.command_connection().ok_or(Unavailable)?;
        match history.read(&mut conn, stream, since, budget).await {
            Ok(read) => {
                self.router.seen.note(stream, &read.head, UNKNOWN_TS);
                Ok(read)
            }
            Err(err) => {
                tracing::debug!(%err, %stream, "could not read history");
                self.suspect.notify_one();
                Err(Unavailable)
            }
        }
    }

    /// Waits (at most `REDIS_TIMEOUT`) until the subscriber is on
    /// `stream`'s channel.
    pub async fn ready_for(&self, stream: &Stream) -> Result<(), Unavailable> {
        let wait = async {
            loop {
                let changed = self.live_changed.notified();
                if !self.is_up() {
                    return Err(Unavailable);
                }
                if self.lock_live().contains(stream) {
                    return Ok(());
                }
                changed.await;
            }
        };
        timeout(self.settings.timeout, wait)
            .await
            .unwrap_or(Err(Unavailable))
    }

    /// Marks the streams now subscribed (`true`) or not.
    pub(super) fn mark_live(&self, streams: impl IntoIterator<Item = (Stream, bool)>) {
        {
            let mut live = self.lock_live();
            for (stream, on) in streams {
                if on {
                    live.insert(stream);
                } else {
                    self.router.seen.forget(&stream);
                    live.remove(&stream);
                }
            }
        }
        self.live_changed.notify_waiters();
    }

    /// Marks `streams` not subscribed, keeping their last positions: their
    /// partition is down, and coming back it compares with them.
    pub(super) fn unlive(&self, streams: impl IntoIterator<Item = Stream>) {
        {
            let mut live = self.lock_live();
            for stream in streams {
                live.remove(&stream);
            }
        }
        self.live_changed.notify_waiters();
    }

    /// Forgets every subscription (the link is down).
    pub(super) fn clear_live(&self) {
        self.lock_live().clear();
        self.live_changed.notify_waiters();
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashSet<Stream>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acts on what routing a message found.
    pub(super) async fn act_on(&self, found: Found, conn: &mut Conn) {
        let Found::Rollback(stream, fence) = found else {
            return;
        };
        // A read from the fence position rotates the epoch if the head is
        // still behind it; the readers resume and learn `epoch_changed`.
        if let Some(history) = &self.history {
            let mut budget = Budget {
                frames: 0,
                bytes: 0,
            };
            match history.read(conn, &stream, Some(&fence), &mut budget).await {
                Ok(read) => {
                    self.router.seen.forget(&stream);
                    self.router.seen.note(&stream, &read.head, UNKNOWN_TS);
                }
                Err(err) => tracing::debug!(%err, %stream, "could not fence a rolled-back stream"),
            }
        }
        let closed = self.hub.kill_followers(&stream, Close::InsufficientState);
        tracing::warn!(%stream, closed, "closed the readers of a rolled-back stream; they resume");
    }

    /// After a reconnect (of the whole link, or of `only` these streams'
    /// partition): every stream whose head moved while this instance was
    /// not subscribed has readers with a gap; they are closed with 4010 and
    /// resume. The heads are read one partition (one slot) per pipeline.
    pub(super) async fn catch_up(
        &self,
        conn: &mut Conn,
        only: Option<&[Stream]>,
    ) -> Result<(), LinkError> {
        if self.history.is_none() {
            return Ok(());
        }
        let mut seen = self.router.seen.all();
        if let Some(only) = only {
            let only: HashSet<&Stream> = only.iter().collect();
            seen.retain(|(stream, _)| only.contains(stream));
        }
        let mut by_partition: HashMap<usize, Vec<(Stream, Position)>> = HashMap::new();
        for (stream, last) in seen {
            by_partition
                .entry(partition(&stream))
                .or_default()
                .push((stream, last.position));
        }
        let mut moved: HashMap<Stream, Position> = HashMap::new();
        for streams in by_partition.into_values() {
            let mut pipe = redis::pipe();
            for (stream, _) in &streams {
                pipe.cmd("HMGET")
                    .arg(stream_keys(stream, None).0)
                    .arg("e")
                    .arg("o");
            }
            let heads: Vec<(Option<String>, Option<u64>)> =
                match timeout(self.settings.timeout, pipe.query_async(conn)).await {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(LinkError::Timeout("reading the heads after a reconnect"));
                    }
                };
            for ((stream, last), (epoch, head)) in streams.into_iter().zip(heads) {
                let now = Position::new(
                    Arc::<str>::from(epoch.unwrap_or_default()),
                    head.unwrap_or(0),
                );
                if now != last {
                    moved.insert(stream, now);
                }
            }
        }
        for (stream, head) in moved {
            self.router.seen.forget(&stream);
            self.router.seen.note(&stream, &head, UNKNOWN_TS);
            let closed = self.hub.kill_followers(&stream, Close::InsufficientState);
            tracing::info!(%stream, closed, "a stream moved while it was not subscribed; its readers resume");
        }
        Ok(())
    }
}
