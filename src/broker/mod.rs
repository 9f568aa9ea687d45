//! Brokers: how a message published on one instance reaches clients on all
//! of them. [`Broker`] is an enum over the two implementations rather than a
//! trait object: there are exactly two, the hot path stays free of dynamic
//! dispatch and boxed futures, and `match` shows every difference in one place.
//!
//! A broker moves messages between instances and nothing else: whatever it
//! receives for this instance's clients it hands to the node's
//! [`Delivery`](crate::delivery::Delivery).
//!
//! - [`memory`]: the default; this process is the whole world.
//! - [`redis`]: several instances share Redis Pub/Sub (`REDIS_URL`), with
//!   presence kept in Redis.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::Inbound;
use crate::history::memory::Usage;
use crate::history::{Budget, Position, Read};
use crate::hub::Fanout;
use crate::stream::Stream;

pub use self::memory::MemoryBroker;
pub use self::redis::RedisBroker;

/// The broker of one running server.
#[derive(Debug)]
pub enum Broker {
    Memory(MemoryBroker),
    Redis(Arc<RedisBroker>),
}

/// Whom an operation could reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every instance (in memory mode this process is all of them).
    Everywhere,
    /// This instance only: Redis is unreachable.
    ThisInstance,
}

/// What a per-user notification reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    /// Instances that received it: Redis' PUBLISH count, or in memory mode
    /// 1 when this process holds a connection of the user, else 0.
    pub instances: usize,
    pub reach: Reach,
}

/// History cannot be written or read right now (Redis unreachable, or
/// history off): nothing was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("history unavailable: Redis unreachable")]
pub struct Unavailable;

/// Where an appended message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub position: Position,
    /// The idempotency key was seen: this is the first publish's position,
    /// and nothing was sent again.
    pub duplicate: bool,
    /// Local connections it was queued for (memory mode; in Redis mode it
    /// comes back through the subscription, so 0 here).
    pub local: usize,
    /// Instances that received it (Redis' PUBLISH count; in memory mode 1
    /// when a local connection got it).
    pub instances: usize,
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(#[source] ::redis::RedisError),
    #[error("invalid REDIS_CLUSTER_URLS entry {0:?}: {1}")]
    ClusterUrl(String, #[source] ::redis::RedisError),
}

/// The broker's part of `/health`.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerHealth {
    Memory,
    Redis {
        up: bool,
        /// On a cluster: the partitions without a subscription right now.
        partitions_down: Option<Vec<usize>>,
        /// This instance's id in Redis.
        instance: String,
        /// Connection losses since start.
        outages: u64,
        last_error: Option<String>,
        /// How long the current outage has lasted.
        down_for: Option<Duration>,
    },
}

impl Broker {
    /// Sends a broadcast or room message to its recipients on every
    /// instance. Never waits: local clients get it at once, and the Redis
    /// publish is queued.
    pub fn publish(&self, message: Inbound<'_>) -> Fanout {
        match self {
            Broker::Memory(memory) => memory.publish(message),
            Broker::Redis(redis) => redis.publish(message),
        }
    }

    /// Appends `body` to `stream`'s history and delivers it on every
    /// instance; with an idempotency `key` seen within five minutes, answers
    /// the first position instead.
    pub async fn append(
        &self,
        stream: &Stream,
        body: std::sync::Arc<str>,
        key: Option<&str>,
    ) -> Result<Appended, Unavailable> {
        match self {
            Broker::Memory(memory) => memory.append(stream, body, key),
            Broker::Redis(redis) => redis.append(stream, &body, key).await.map(|a| Appended {
                position: a.position,
                duplicate: a.duplicate,
                local: 0,
                instances: a.receivers,
            }),
        }
    }

    /// Reads `stream`'s history after `since` (once the instance receives
    /// the stream's live messages, so none can fall between the read and
    /// live delivery).
    pub async fn read(
        &self,
        stream: &Stream,
        since: Option<&Position>,
        budget: &mut Budget,
    ) -> Result<Read, Unavailable> {
        match self {
            Broker::Memory(memory) => memory.read(stream, since, budget),
            Broker::Redis(redis) => redis.read(stream, since, budget).await,
        }
    }

    /// Drops expired history (memory mode; Redis expires its own).
    pub fn sweep_history(&self) {
        if let Broker::Memory(memory) = self {
            memory.sweep();
        }
    }

    /// What history holds in this process (memory mode).
    pub fn history_usage(&self) -> Option<Usage> {
        match self {
            Broker::Memory(memory) => memory.usage(),
            Broker::Redis(_) => None,
        }
    }

    /// Sends `text` to every connection of `user` on every instance.
    pub async fn notify(&self, user: &str, text: &str) -> Notified {
        match self {
            Broker::Memory(memory) => memory.notify(user, text),
            Broker::Redis(redis) => redis.notify(user, text).await,
        }
    }

    /// The users present in `room` as far as other instances know (Redis
    /// mode; may include local ones). Empty in memory mode; `None` while
    /// Redis is unreachable.
    pub async fn listed(&self, room: &str) -> Option<Vec<String>> {
        match self {
            Broker::Memory(_) => Some(Vec::new()),
            Broker::Redis(redis) => redis.listed(room).await,
        }
    }

    /// Connections on every instance, given this one's `local` count.
    pub async fn connections(&self, local: usize) -> (usize, Reach) {
        match self {
            Broker::Memory(_) => (local, Reach::Everywhere),
            Broker::Redis(redis) => redis.connections(local).await,
        }
    }

    /// Whether the broker can deliver beyond this process as configured.
    pub fn is_up(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(redis) => redis.is_up(),
        }
    }

    /// Whether every message for this instance can reach it (`/ready`):
    /// the broker is up and, on a cluster, every partition subscribed.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(redis) => redis.is_ready(),
        }
    }

    /// The broker's state, for `/health`.
    pub fn health(&self) -> BrokerHealth {
        match self {
            Broker::Memory(_) => BrokerHealth::Memory,
            Broker::Redis(redis) => redis.health(),
        }
    }

    /// Stops the broker and withdraws this instance from the cluster count.
    pub async fn close(&self) {
        if let Broker::Redis(redis) = self {
            redis.close().await;
        }
    }
}
