//! One connection's bounded outbound queue.
//!
//! Publishers push pre-encoded frames without ever awaiting; the session
//! drains everything queued in one go and writes it with a single `writev`,
//! so a burst costs one wake-up and one syscall per connection, not one per
//! frame. A push that finds the queue full (in frames, or in bytes: a
//! client can make the server build large frames for it alone, such as
//! rosters) marks the connection a slow consumer and fires its kill switch:
//! the publisher moves on, and the session closes with 4008.
//!
//! A plain-text connection's outbox may also hold its socket: then a push
//! into an idle outbox (empty, and nobody writing) goes to the
//! [`Flusher`], which writes it without waking the session, and the session
//! takes over what the socket does not accept at once. Exactly one side
//! writes at a time: the session while it holds the claim (`busy`, from
//! [`Outbox::drain_into`] or [`Outbox::claim`] to [`Outbox::release`]), the
//! flusher only under the lock and only when nobody holds it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::history::Record;
use crate::protocol::Close;

/// At most this many frames go into one `writev` call (Linux allows 1024).
pub const MAX_IOVECS: usize = 64;

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
    /// Frames waiting to be written. Held only for a push, a swap or one
    /// non-blocking write by the flusher, never across an await, so
    /// publishers and the session contend for nanoseconds to microseconds.
    /// Starts empty: an idle connection allocates no slots.
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

#[derive(Debug)]
struct State {
    queue: VecDeque<Item>,
    /// The bytes of the items in `queue`.
    bytes: usize,
    /// Why the connection was killed, once it has been.
    killed: Option<Close>,
    closed: bool,
    /// The session holds the socket: it writes, nobody else does. Set from
    /// the start, so the opening goes out before anything written through.
    busy: bool,
    /// The front frame is partly on the wire (the flusher wrote its
    /// beginning): it must go out before anything else, even a close frame.
    front_started: bool,
    /// On the flusher's list, not written yet.
    listed: bool,
    /// The socket, for the flusher; `None` for every other kind of outbox.
    direct: Option<Direct>,
}

/// What the flusher needs to write to a connection directly.
#[derive(Debug)]
struct Direct {
    socket: Arc<TcpStream>,
    backlog: Arc<Backlog>,
}

/// Outboxes waiting for a [`Flusher`](crate::flusher::Flusher) task to
/// write them through: one per task.
#[derive(Debug)]
pub struct Backlog {
    outboxes: Mutex<Vec<Arc<Outbox>>>,
    wake: Notify,
    /// Cleared if its task ends (its runtime shut down under a hub that
    /// lives on): then pushes wake their sessions instead, as without a
    /// flusher, rather than queue on a list nobody reads.
    served: AtomicBool,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            outboxes: Mutex::default(),
            wake: Notify::new(),
            served: AtomicBool::new(true),
        }
    }
}

impl Backlog {
    /// Adds `outbox`; called under its lock, once per idle period. `false`
    /// if no task serves this backlog any more.
    fn enlist(&self, outbox: Arc<Outbox>) -> bool {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.served.load(Ordering::Acquire) {
            return false;
        }
        let first = outboxes.is_empty();
        outboxes.push(outbox);
        drop(outboxes);
        if first {
            // Stored as a permit if the task is busy: it looks again.
            self.wake.notify_one();
        }
        true
    }

    /// Marks the backlog unserved (its task is ending) and hands what it
    /// still lists, and `taken` (what the task took but may not have
    /// written), back to the sessions.
    pub fn abandon(&self, taken: Vec<Arc<Outbox>>) {
        let mut listed = {
            let mut outboxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
            self.served.store(false, Ordering::Release);
            std::mem::take(&mut *outboxes)
        };
        listed.extend(taken);
        for outbox in listed {
            outbox
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .listed = false;
            outbox.ready.notify_one();
        }
    }

    /// Moves everything enlisted into the empty `batch`.
    pub fn take(&self, batch: &mut Vec<Arc<Outbox>>) {
        std::mem::swap(
            &mut *self.outboxes.lock().unwrap_or_else(|e| e.into_inner()),
            batch,
        );
    }

    /// Waits until something may have been enlisted. Cancel-safe.
    pub async fn enlisted(&self) {
        self.wake.notified().await
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            bytes: 0,
            killed: None,
            closed: false,
            busy: true,
            front_started: false,
            listed: false,
            direct: None,
        }
    }
}

impl State {
    /// Empties the queue, except a frame already partly written.
    fn clear(&mut self) {
        let keep = usize::from(self.front_started);
        self.queue.truncate(keep);
        self.bytes = self.queue.iter().map(Item::len).sum();
    }
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
        state.clear();
        drop(state);
        self.kill.cancel();
        true
    }

    /// Lets the flusher write to `socket` whenever this outbox is idle (only
    /// for outboxes that hold frames alone: records pass the session's gate).
    pub fn attach(&self, socket: Arc<TcpStream>, backlog: Arc<Backlog>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.closed {
            state.direct = Some(Direct { socket, backlog });
        }
    }

    /// Queues `item` (a frame, or a record) without waiting.
    pub fn push(self: &Arc<Self>, item: impl Into<Item>) -> Push {
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
        if !was_empty {
            return Push::Queued;
        }
        if state.busy || state.direct.is_none() {
            drop(state);
            self.ready.notify_one();
        } else if !std::mem::replace(&mut state.listed, true)
            && let Some(direct) = &state.direct
            && !direct.backlog.enlist(self.clone())
        {
            state.listed = false;
            drop(state);
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// The flusher's turn: unless the session holds the socket, writes what
    /// is queued with one non-blocking write (so the lock is held for one
    /// syscall at most, and pushes to this connection wait no longer than
    /// that); what is left is the session's, and it is woken. Returns the
    /// frames written whole.
    pub fn write_through(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.listed = false;
        if state.closed || state.busy || state.queue.is_empty() {
            return 0;
        }
        let Some(direct) = &state.direct else {
            return 0;
        };
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut n = 0;
        for (item, slice) in state.queue.iter().zip(slices.iter_mut()) {
            let Item::Frame(frame) = item else { break };
            *slice = IoSlice::new(frame);
            n += 1;
        }
        // One frame, the common case of a quiet connection: `write(2)`,
        // which skips `writev`'s iovec import (5 % of a single broadcast's
        // samples).
        let written = match n {
            0 => Ok(0),
            1 => direct.socket.try_write(&slices[0]),
            _ => direct.socket.try_write_vectored(&slices[..n]),
        };
        // Full (WouldBlock) or failed: the session waits, or finds out.
        let frames = match written {
            Ok(written) if written > 0 => {
                state.bytes -= written;
                advance(&mut state, written)
            }
            _ => 0,
        };
        if !state.queue.is_empty() {
            drop(state);
            self.ready.notify_one();
        }
        frames
    }

    /// Waits until something may be queued. Cancel-safe.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves every queued item to the back of `out`, keeping order, and
    /// claims the socket for the session (see [`Outbox::release`]).
    pub fn drain_into(&self, out: &mut VecDeque<Item>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Only the flusher begins frames, and only while nobody holds the claim.
        debug_assert!(!(state.front_started && state.busy));
        state.busy = true;
        state.front_started = false;
        if out.is_empty() {
            std::mem::swap(&mut state.queue, out);
        } else {
            out.append(&mut state.queue);
        }
        state.bytes = 0;
    }

    /// Claims the socket for the session, which is about to write: the
    /// flusher keeps off it until [`Outbox::release`]. Returns the rest of
    /// a frame the flusher had begun, which must be written first.
    pub fn claim(&self) -> Option<Bytes> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(!(state.front_started && state.busy));
        state.busy = true;
        if !std::mem::take(&mut state.front_started) {
            return None;
        }
        let front = state.queue.pop_front()?;
        state.bytes -= front.len();
        match front {
            Item::Frame(frame) => Some(frame),
            Item::Record(record) => Some(record.frame.clone()),
        }
    }

    /// The session has written everything it held: the flusher may write
    /// again, unless something is queued (then the session keeps the claim
    /// and is woken to write it: the flusher skipped it while it was busy).
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.queue.is_empty() {
            state.busy = false;
            return;
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Refuses further pushes (the session is ending) and lets the socket go.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        state.busy = true;
        state.front_started = false;
        state.queue.clear();
        state.bytes = 0;
        state.direct = None;
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

/// Takes `written` bytes off the front of the queue; the frames finished.
fn advance(state: &mut State, mut written: usize) -> usize {
    let mut frames = 0;
    while written > 0 {
        let Some(Item::Frame(front)) = state.queue.front_mut() else {
            break;
        };
        if front.len() <= written {
            written -= front.len();
            state.queue.pop_front();
            state.front_started = false;
            frames += 1;
        } else {
            front.advance(written);
            state.front_started = true;
            written = 0;
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &'static [u8]) -> Item {
        Item::Frame(Bytes::from_static(bytes))
    }

    #[test]
    fn overflow_kills_and_drops_later_pushes() {
        let outbox = Arc::new(Outbox::new(2, usize::MAX));
        assert_eq!(outbox.push(Bytes::from_static(b"a")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Push::Overflowed);
        assert_eq!(outbox.push(Bytes::from_static(b"d")), Push::Closed);
        assert_eq!(outbox.killed_for(), Some(Close::SlowConsumer));
        assert!(outbox.kill.is_cancelled());
    }

    #[test]
    fn the_byte_bound_overflows_but_one_large_frame_may_pass() {
        let outbox = Arc::new(Outbox::new(100, 10));
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
        let outbox = Arc::new(Outbox::new(8, usize::MAX));
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

    /// A connected pair over loopback: the server's end shared, the client's.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let server = accepted.unwrap().0;
        // As a session's socket is by the time it idles: known writable.
        server.writable().await.unwrap();
        (Arc::new(server), client.unwrap())
    }

    fn attached(socket: Arc<TcpStream>) -> (Arc<Outbox>, Arc<Backlog>) {
        let backlog = Arc::new(Backlog::default());
        let outbox = Arc::new(Outbox::new(64, usize::MAX));
        outbox.attach(socket, backlog.clone());
        (outbox, backlog)
    }

    #[tokio::test]
    async fn an_idle_outbox_is_written_through_and_its_session_sleeps() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = socket_pair().await;
        let (outbox, backlog) = attached(server);
        let flusher = crate::flusher::Flusher::new(Arc::new(crate::metrics::Metrics::new()));
        let backlog_task = tokio::spawn(crate::flusher::run(backlog, flusher.metrics()));
        // The opening: the session holds the claim until it has written.
        outbox.push(Bytes::from_static(b"greeting;"));
        outbox.ready().await;
        let mut taken = VecDeque::new();
        outbox.drain_into(&mut taken);
        assert_eq!(taken, [frame(b"greeting;")]);
        outbox.release();
        // Idle now: pushes go to the flusher, in order, and wake nobody.
        outbox.push(Bytes::from_static(b"one;"));
        outbox.push(Bytes::from_static(b"two;"));
        let mut read = [0u8; 8];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"one;two;");
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.ready());
        assert!(
            woken.await.is_err(),
            "the session was woken for frames written through"
        );
        // While the session holds the claim, pushes wake it instead.
        assert_eq!(outbox.claim(), None);
        outbox.push(Bytes::from_static(b"three;"));
        outbox.ready().await;
        taken.clear();
        outbox.drain_into(&mut taken);
        assert_eq!(taken, [frame(b"three;")]);
        backlog_task.abort();
    }

    #[tokio::test]
    async fn a_frame_the_socket_took_part_of_survives_the_kill_and_goes_first() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = socket_pair().await;
        let (outbox, _flusher) = attached(server);
        outbox.release();
        // Far more than loopback's socket buffers hold while nobody reads.
        let big: Bytes = (0..64 * 1024 * 1024u32).map(|i| i as u8).collect();
        outbox.push(big.clone());
        outbox.push(Bytes::from_static(b"next"));
        assert_eq!(outbox.write_through(), 0, "the whole frame cannot fit");
        // The session is woken to finish it; a kill keeps the begun frame only.
        outbox.ready().await;
        assert!(outbox.kill(Close::SlowConsumer));
        let rest = outbox.claim().expect("the rest of the begun frame");
        assert!(rest.len() < big.len());
        assert_eq!(rest, big.slice(big.len() - rest.len()..));
        let mut taken = VecDeque::new();
        outbox.drain_into(&mut taken);
        assert!(taken.is_empty(), "the kill drops the frames not begun");
        // What reached the client is exactly the frame's beginning.
        let mut sent = vec![0u8; big.len() - rest.len()];
        client.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, big[..sent.len()]);
    }

    #[tokio::test]
    async fn a_flusher_that_ends_hands_its_outboxes_back_to_their_sessions() {
        let (server, _client) = socket_pair().await;
        let (outbox, backlog) = attached(server);
        outbox.release();
        // Listed, and the task that would serve the backlog ends unpolled
        // (as when its runtime shuts down).
        outbox.push(Bytes::from_static(b"one"));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        drop(crate::flusher::run(backlog.clone(), metrics));
        // What it listed is the session's now, and later pushes wake it.
        let woken = || tokio::time::timeout(std::time::Duration::from_secs(5), outbox.ready());
        woken()
            .await
            .expect("the listed frame handed back to the session");
        let mut taken = VecDeque::new();
        outbox.drain_into(&mut taken);
        outbox.release();
        outbox.push(Bytes::from_static(b"two"));
        woken().await.expect("a later push wakes the session");
        outbox.drain_into(&mut taken);
        assert_eq!(taken, [frame(b"one"), frame(b"two")]);
    }
}
