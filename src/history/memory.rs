//! The history of memory mode: every stream's last `HISTORY_SIZE` messages
//! of at most `HISTORY_TTL` age, all together under `HISTORY_MAX_BYTES`.
//!
//! Streams live in [`SHARDS`] independently locked maps. Appending takes
//! the stream's shard lock, gives the message the next offset, keeps it, and
//! delivers it under the same lock: within a stream, the order of offsets
//! is the order every reader's queue gets them in, whichever thread
//! published. A read takes the same lock, so it sees either all of an
//! append (record and delivery) or none of it.
//!
//! The byte cap is kept with a least-recently-used order of streams: past
//! the cap, the streams used longest ago lose their oldest messages first
//! (a position among them then reads as `too_old`); only if no message is
//! left to drop do streams lose their epoch as well (`epoch_changed`). A
//! stream's epoch and offset outlive its messages by `meta_ttl`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::{Budget, Outcome, Position, Read, Record, Settings, judge, new_epoch};
use crate::protocol::json::Reason;
use crate::stream::Stream;

/// Number of shards of the stream map.
pub const SHARDS: usize = 64;

/// The bytes a stream costs before any message: its name, epoch, maps.
const STREAM_OVERHEAD: usize = 192;
/// The bytes one remembered idempotency key costs beside the key.
const KEY_OVERHEAD: usize = 64;

/// One stream's kept messages.
#[derive(Debug)]
struct Log {
    epoch: Arc<str>,
    head: u64,
    /// Oldest first, each with the instant it was appended.
    records: VecDeque<(Instant, Arc<Record>)>,
    /// What this log counts towards the cap, overhead included.
    bytes: usize,
    /// The last append or read, for `meta_ttl`.
    used: Instant,
    /// Idempotency keys of recent appends: key → (when, offset).
    keys: HashMap<Arc<str>, (Instant, u64)>,
}

/// The use order of streams, for the byte cap: `order` holds the streams
/// that may still have messages, `idle` those found empty (their epoch
/// and head are kept until `meta_ttl`), each oldest first. Each stream
/// moves from one to the other at most once per use, so the cap costs a
/// few map operations per message it drops, however many streams there are.
#[derive(Debug, Default)]
struct Lru {
    order: BTreeMap<u64, Stream>,
    idle: BTreeMap<u64, Stream>,
    /// Each stream's tick, and whether it is in `idle`.
    ticks: HashMap<Stream, (u64, bool)>,
    next: u64,
}

impl Lru {
    fn touch(&mut self, stream: &Stream) {
        self.place(stream, false);
    }

    /// `stream` has no messages left: last in line for whole-stream drops.
    fn idle(&mut self, stream: &Stream) {
        self.place(stream, true);
    }

    fn place(&mut self, stream: &Stream, idle: bool) {
        let tick = self.next;
        self.next += 1;
        self.remove(stream);
        self.ticks.insert(stream.clone(), (tick, idle));
        let map = if idle {
            &mut self.idle
        } else {
            &mut self.order
        };
        map.insert(tick, stream.clone());
    }

    fn remove(&mut self, stream: &Stream) {
        if let Some((old, idle)) = self.ticks.remove(stream) {
            let map = if idle {
                &mut self.idle
            } else {
                &mut self.order
            };
            map.remove(&old);
        }
    }

    /// The stream used longest ago that may have messages.
    fn oldest(&self) -> Option<Stream> {
        self.order.values().next().cloned()
    }

    fn oldest_idle(&self) -> Option<Stream> {
        self.idle.values().next().cloned()
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// A new message, delivered.
    New(Arc<Record>),
    /// Its idempotency key was seen within [`IDEMPOTENCY_TTL`]: nothing was
    /// appended; this is where the first one went.
    Duplicate(Position),
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Counts of what is kept, for metrics and `/health`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub streams: usize,
    pub entries: usize,
    pub bytes: usize,
}

/// The store.
#[derive(Debug)]
pub struct MemoryHistory {
    settings: Settings,
    shards: Box<[Mutex<HashMap<Stream, Log>>]>,
    hasher: RandomState,
    /// Locked after a shard lock is released, never while one is held.
    lru: Mutex<Lru>,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    streams: AtomicUsize,
}

impl MemoryHistory {
    pub fn new(settings: Settings) -> Self {
        MemoryHistory {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            lru: Mutex::new(Lru::default()),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        }
    }

    fn shard(&self, stream: &Stream) -> MutexGuard<'_, HashMap<Stream, Log>> {
        let at = self.hasher.hash_one(stream) as usize % SHARDS;
        self.shards[at].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `body` to `stream` at the next offset and hands the record
    /// to `deliver` before any other append to the stream can happen. With
    /// an idempotency `key` seen for the stream within [`IDEMPOTENCY_TTL`],
    /// nothing is appended. `None` when `body` cannot be a record of
    /// `stream` (see [`Record::new`]).
    pub fn append(
        &self,
        stream: &Stream,
        body: Arc<str>,
        ts: u64,
        key: Option<&str>,
        deliver: impl FnOnce(&Arc<Record>),
    ) -> Option<Appended> {
        let appended = {
            let mut shard = self.shard(stream);
            let log = self.log(&mut shard, stream);
            let now = Instant::now();
            self.forget_keys(log, now);
            if let Some((_, offset)) = key.and_then(|key| log.keys.get(key)) {
                return Some(Appended::Duplicate(Position::new(
                    log.epoch.clone(),
                    *offset,
                )));
            }
            let position = Position::new(log.epoch.clone(), log.head + 1);
            let record = Arc::new(Record::new(stream.clone(), position, ts, body)?);
            log.head += 1;
            log.used = now;
            log.bytes += record.size();
            self.bytes.fetch_add(record.size(), Ordering::Relaxed);
            self.entries.fetch_add(1, Ordering::Relaxed);
            log.records.push_back((now, record.clone()));
            if let Some(key) = key {
                log.keys.insert(key.into(), (now, log.head));
                log.bytes += KEY_OVERHEAD + key.len();
                self.bytes
                    .fetch_add(KEY_OVERHEAD + key.len(), Ordering::Relaxed);
            }
            self.trim(log, now);
            deliver(&record);
            Appended::New(record)
        };
        self.lru().touch(stream);
        self.enforce_cap();
        Some(appended)
    }

    /// Forgets the idempotency keys older than [`IDEMPOTENCY_TTL`].
    fn forget_keys(&self, log: &mut Log, now: Instant) {
        let mut freed = 0;
        log.keys.retain(|key, (at, _)| {
            let keep = now.duration_since(*at) < IDEMPOTENCY_TTL;
            if !keep {
                freed += KEY_OVERHEAD + key.len();
            }
            keep
        });
        log.bytes -= freed;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Reads `stream` after `since` (see [`judge`]); replayed messages are
    /// taken from `budget`, and a replay that does not fit it is
    /// [`Reason::Limit`].
    pub fn read(&self, stream: &Stream, since: Option<&Position>, budget: &mut Budget) -> Read {
        let read = {
            let mut shard = self.shard(stream);
            let log = self.log(&mut shard, stream);
            let now = Instant::now();
            log.used = now;
            self.trim(log, now);
            let first = log
                .records
                .front()
                .map_or(log.head + 1, |(_, r)| r.position.offset);
            let head = Position::new(log.epoch.clone(), log.head);
            let mut outcome = judge(since, &log.epoch, log.head, first, budget.frames);
            let mut records = Vec::new();
            if let (Outcome::Recovered, Some(since)) = (outcome, since) {
                records = log
                    .records
                    .iter()
                    .filter(|(_, r)| r.position.offset > since.offset)
                    .map(|(_, r)| r.clone())
                    .collect();
                if !budget.take(&records) {
                    outcome = Outcome::Lost(Reason::Limit);
                    records.clear();
                }
            }
            Read {
                head,
                outcome,
                records,
            }
        };
        self.lru().touch(stream);
        self.enforce_cap();
        read
    }

    /// Drops expired messages everywhere, and the streams whose last use is
    /// older than `meta_ttl` with nothing left.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut forgotten = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|stream, log| {
                self.trim(log, now);
                self.forget_keys(log, now);
                let keep = !log.records.is_empty()
                    || now.duration_since(log.used) < self.settings.meta_ttl;
                if !keep {
                    self.bytes.fetch_sub(log.bytes, Ordering::Relaxed);
                    self.streams.fetch_sub(1, Ordering::Relaxed);
                    forgotten.push(stream.clone());
                }
                keep
            });
        }
        let mut lru = self.lru();
        for stream in &forgotten {
            lru.remove(stream);
        }
    }

    /// What is kept right now.
    pub fn usage(&self) -> Usage {
        Usage {
            streams: self.streams.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log of `stream`, created with a fresh epoch if there is none.
    fn log<'a>(&self, shard: &'a mut HashMap<Stream, Log>, stream: &Stream) -> &'a mut Log {
        shard.entry(stream.clone()).or_insert_with(|| {
            let bytes = STREAM_OVERHEAD + stream.to_string().len();
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.streams.fetch_add(1, Ordering::Relaxed);
            Log {
                epoch: new_epoch(),
                head: 0,
                records: VecDeque::new(),
                bytes,
                used: Instant::now(),
                keys: HashMap::new(),
            }
        })
    }

    /// Drops the messages beyond `HISTORY_SIZE` and those older than
    /// `HISTORY_TTL`.
    fn trim(&self, log: &mut Log, now: Instant) {
        while let Some((at, _)) = log.records.front() {
            let expired = now.duration_since(*at) >= self.settings.ttl;
            if !expired && log.records.len() <= self.settings.size {
                break;
            }
            self.drop_front(log);
        }
    }

    fn drop_front(&self, log: &mut Log) {
        if let Some((_, record)) = log.records.pop_front() {
            log.bytes -= record.size();
            self.bytes.fetch_sub(record.size(), Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Past the byte cap: the least recently used streams lose messages,
    /// oldest first; then, if that is not enough, whole empty streams go.
    /// (The LRU is locked only between shard locks, never inside one.)
    fn enforce_cap(&self) {
        let over = || self.bytes.load(Ordering::Relaxed) > self.settings.max_bytes;
        while over() {
            let Some(stream) = self.lru().oldest() else {
                break;
            };
            let mut shard = self.shard(&stream);
            let emptied = match shard.get_mut(&stream) {
                None => None,
                Some(log) => {
                    while !log.records.is_empty() && over() {
                        self.drop_front(log);
                    }
                    Some(log.records.is_empty())
                }
            };
            drop(shard);
            match emptied {
                None => self.lru().remove(&stream),
                Some(true) => self.lru().idle(&stream),
                Some(false) => {}
            }
        }
        while over() {
            let Some(stream) = self.lru().oldest_idle() else {
                break;
            };
            let mut shard = self.shard(&stream);
            let gone = shard.get(&stream).is_none_or(|log| log.records.is_empty());
            if gone && let Some(log) = shard.remove(&stream) {
                self.bytes.fetch_sub(log.bytes, Ordering::Relaxed);
                self.streams.fetch_sub(1, Ordering::Relaxed);
            }
            drop(shard);
            if gone {
                self.lru().remove(&stream);
            } else {
                self.lru().touch(&stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(size: usize, max_bytes: usize) -> Settings {
        Settings {
            size,
            ttl: Duration::from_secs(300),
            max_bytes,
            meta_ttl: Duration::from_secs(3600),
        }
    }

    fn budget() -> Budget {
        Budget {
            frames: 1000,
            bytes: usize::MAX,
        }
    }

    fn user(name: &str) -> Stream {
        Stream::User(name.into())
    }

    fn append(history: &MemoryHistory, stream: &Stream, n: usize) -> Vec<Arc<Record>> {
        (0..n)
            .map(
                |i| match history.append(stream, format!("m{i}").into(), 0, None, |_| {}) {
                    Some(Appended::New(record)) => record,
                    other => panic!("expected a new record, got {other:?}"),
                },
            )
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotency_key_gets_one_offset_for_five_minutes() {
        let history = MemoryHistory::new(settings(100, usize::MAX));
        let s = user("u");
        let mut delivered = 0;
        let mut publish = |key| history.append(&s, "x".into(), 0, Some(key), |_| delivered += 1);
        let Some(Appended::New(first)) = publish("k1") else {
            panic!("first publish");
        };
        assert_eq!(
            publish("k1"),
            Some(Appended::Duplicate(first.position.clone()))
        );
        assert!(matches!(publish("k2"), Some(Appended::New(_))));
        tokio::time::advance(IDEMPOTENCY_TTL).await;
        assert!(matches!(publish("k1"), Some(Appended::New(_))));
        assert_eq!(delivered, 3);
    }

    #[tokio::test]
    async fn offsets_are_dense_and_a_read_replays_what_follows_a_position() {
        let history = MemoryHistory::new(settings(3, usize::MAX));
        let s = user("u");
        let fresh = history.read(&s, None, &mut budget());
        assert_eq!((fresh.head.offset, fresh.outcome), (0, Outcome::Fresh));
        let records = append(&history, &s, 5);
        let offsets: Vec<u64> = records.iter().map(|r| r.position.offset).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        let epoch = fresh.head.epoch.clone();
        assert_eq!(records[4].position.epoch, epoch, "the read made the epoch");
        let read = history.read(&s, Some(&Position::new(epoch.clone(), 3)), &mut budget());
        assert_eq!(read.outcome, Outcome::Recovered);
        assert_eq!(read.records, records[3..]);
        // Beyond HISTORY_SIZE (3 kept: 3, 4, 5), offset 1 is too old.
        let old = history.read(&s, Some(&Position::new(epoch.clone(), 1)), &mut budget());
        assert_eq!(old.outcome, Outcome::Lost(Reason::TooOld));
        assert!(old.records.is_empty());
        // At the head: recovered, nothing to replay.
        let head = history.read(&s, Some(&Position::new(epoch, 5)), &mut budget());
        assert_eq!((head.outcome, head.records.len()), (Outcome::Recovered, 0));
        assert_eq!(history.usage().entries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_expire_after_the_ttl_but_the_position_stays() {
        let history = MemoryHistory::new(settings(100, usize::MAX));
        let s = user("u");
        let records = append(&history, &s, 2);
        let epoch = records[0].position.epoch.clone();
        tokio::time::advance(Duration::from_secs(301)).await;
        let read = history.read(&s, Some(&Position::new(epoch.clone(), 0)), &mut budget());
        assert_eq!(read.outcome, Outcome::Lost(Reason::TooOld));
        // A quiet reader at the head loses nothing.
        let quiet = history.read(&s, Some(&Position::new(epoch, 2)), &mut budget());
        assert_eq!(quiet.outcome, Outcome::Recovered);
        history.sweep();
        assert_eq!(history.usage().entries, 0);
        assert_eq!(
            history.usage().streams,
            1,
            "the epoch outlives the messages"
        );
    }

    #[tokio::test]
    async fn the_byte_cap_takes_from_the_least_recently_used_stream_first() {
        let s = (user("old"), user("new"));
        let one = Record::new(s.0.clone(), Position::new("e", 1), 0, "m0".into())
            .unwrap()
            .size();
        let cap = 2 * (STREAM_OVERHEAD + 8) + 6 * one;
        let history = MemoryHistory::new(settings(100, cap));
        let old = append(&history, &s.0, 3);
        append(&history, &s.1, 3);
        append(&history, &s.1, 1);
        assert!(history.usage().bytes <= cap);
        let read = history.read(
            &s.0,
            Some(&Position::new(old[0].position.epoch.clone(), 0)),
            &mut budget(),
        );
        assert_eq!(
            read.outcome,
            Outcome::Lost(Reason::TooOld),
            "old lost its first message"
        );
        let read = history.read(&s.1, Some(&Position::new("x", 0)), &mut budget());
        assert_eq!(read.head.offset, 4, "new kept its head");
    }

    #[tokio::test]
    async fn a_replay_that_does_not_fit_the_budget_is_limit() {
        let history = MemoryHistory::new(settings(100, usize::MAX));
        let s = user("u");
        let records = append(&history, &s, 10);
        let mut small = Budget {
            frames: 5,
            bytes: usize::MAX,
        };
        let since = Position::new(records[0].position.epoch.clone(), 0);
        let read = history.read(&s, Some(&since), &mut small);
        assert_eq!(read.outcome, Outcome::Lost(Reason::Limit));
        let since = Position::new(records[0].position.epoch.clone(), 6);
        assert_eq!(history.read(&s, Some(&since), &mut small).records.len(), 4);
        assert_eq!(small.frames, 1, "the replay was taken from the budget");
    }
}
