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
use crate::hub::Fanout;

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

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(#[source] ::redis::RedisError),
}

/// The broker's part of `/health`.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerHealth {
    Memory,
    Redis {
        up: bool,
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
