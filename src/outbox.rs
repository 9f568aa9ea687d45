//! One connection's bounded outbound queue.
//!
//! Publishers push pre-encoded frames without ever awaiting; the session
//! drains everything queued in one go and writes it with a single `writev`,
//! so a burst costs one wake-up and one syscall per connection, not one per
//! frame. A push that finds the queue full (in frames, or in bytes: a
//! client can make the server build large frames for it alone, such as
//! rosters) marks the connection a slow consumer and fires its kill switch:
//! the publisher moves on, and the session closes with 4008.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::history::Record;
use crate::protocol::Close;

/// One thing queued for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An encoded frame, written as it is.
    Frame(Bytes),
    /// A message of a stream, shared by every reader; its position is
    /// checked by the reader before its frame is written.
    Record(Arc<Record>),
}

impl Item {
    /// The bytes this item puts on the wire.
    pub fn len(&self) -> usize {
        match self {
            Item::Frame(frame) => frame.len(),
            Item::Record(record) => record.frame.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Item {
    fn from(frame: Bytes) -> Self {
        Item::Frame(frame)
    }
}

/// The result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the session will write it.
    Queued,
    /// The queue was full: the connection is now marked slow and killed.
    Overflowed,
    /// The connection was already killed or closed; the frame was dropped.
    Closed,
}

/// The queue of a single connection.
#[derive(Debug)]
pub struct Outbox {
    /// Frames waiting to be written. Held only for a push or a swap, never
    /// across an await, so publishers and the session contend for
    /// nanoseconds. Starts empty: an idle connection allocates no slots.
    state: Mutex<State>,
    /// Wakes the session when the queue goes from empty to non-empty. A
    /// `Notify` keeps one permit, so a push before the session waits is not lost.
    ready: Notify,
    /// Fired on overflow or idleness; the session's every await watches it,
    /// including a write blocked on a client that stopped reading.
    kill: CancellationToken,
    capacity: usize,
    /// Most bytes queued at once; one frame alone may exceed it.
    max_bytes: usize,
    /// When the client last sent a frame, in ms on the hub's clock; read by
    /// the idle sweep, written by the session without a lock.
    last_seen_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Item>,
    /// The bytes of the items in `queue`.
    bytes: usize,
    /// Why the connection was killed, once it has been.
    killed: Option<Close>,
    closed: bool,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames and `max_bytes`
    /// bytes (a single frame may be larger, if the queue is empty).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            kill: CancellationToken::new(),
            capacity,
            max_bytes,
            last_seen_ms: AtomicU64::new(0),
        }
    }

    /// Records that the client sent a frame at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the client last sent a frame (or connected), in ms.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Kills the connection for `reason` unless it is already closed or
    /// killed; returns whether this call killed it.
    pub fn kill(&self, reason: Close) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return false;
        }
        state.closed = true;
        state.killed = Some(reason);
        state.queue.clear();
        state.bytes = 0;
        drop(state);
        self.kill.cancel();
        true
    }

    /// Queues `item` (a frame, or a record) without waiting.
    pub fn push(&self, item: impl Into<Item>) -> Push {
        let item = item.into();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return Push::Closed;
        }
        let too_many_bytes =
            !state.queue.is_empty() && state.bytes.saturating_add(item.len()) > self.max_bytes;
        if state.queue.len() >= self.capacity || too_many_bytes {
            drop(state);
            self.kill(Close::SlowConsumer);
            return Push::Overflowed;
        }
        let was_empty = state.queue.is_empty();
        state.bytes += item.len();
        state.queue.push_back(item);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Waits until something may be queued. Cancel-safe.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves every queued item to the back of `out`, keeping order.
    pub fn drain_into(&self, out: &mut VecDeque<Item>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_empty() {
            std::mem::swap(&mut state.queue, out);
        } else {
            out.append(&mut state.queue);
        }
        state.bytes = 0;
    }

    /// Refuses further pushes (the session is ending).
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        state.queue.clear();
        state.bytes = 0;
    }

    /// Why this connection was killed, if it was.
    pub fn killed_for(&self) -> Option<Close> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).killed
    }

    /// Resolves once the connection has been killed.
    pub async fn killed(&self) {
        self.kill.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &'static [u8]) -> Item {
        Item::Frame(Bytes::from_static(bytes))
    }

    #[test]
    fn overflow_kills_and_drops_later_pushes() {
        let outbox = Outbox::new(2, usize::MAX);
        assert_eq!(outbox.push(Bytes::from_static(b"a")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Push::Overflowed);
        assert_eq!(outbox.push(Bytes::from_static(b"d")), Push::Closed);
        assert_eq!(outbox.killed_for(), Some(Close::SlowConsumer));
        assert!(outbox.kill.is_cancelled());
    }

    #[test]
    fn the_byte_bound_overflows_but_one_large_frame_may_pass() {
        let outbox = Outbox::new(100, 10);
        assert_eq!(
            outbox.push(Bytes::from_static(b"a large frame")),
            Push::Queued
        );
        let mut out = VecDeque::new();
        outbox.drain_into(&mut out);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"12345")), Push::Overflowed);
        assert_eq!(outbox.killed_for(), Some(Close::SlowConsumer));
    }

    #[tokio::test]
    async fn drain_keeps_order_and_wakes_once() {
        let outbox = Outbox::new(8, usize::MAX);
        outbox.push(Bytes::from_static(b"1"));
        outbox.push(Bytes::from_static(b"2"));
        outbox.ready().await; // the permit stored by the first push
        let mut out = VecDeque::new();
        outbox.drain_into(&mut out);
        assert_eq!(out, [frame(b"1"), frame(b"2")]);
        outbox.push(Bytes::from_static(b"3"));
        outbox.drain_into(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], frame(b"3"));
    }
}
