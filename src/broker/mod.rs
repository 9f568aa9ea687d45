//! Brokers: how a message published on one instance reaches clients on all
//! of them. [`Broker`] is an enum over the two implementations rather than a
//! trait object: there are exactly two, the hot path stays free of dynamic
//! dispatch and boxed futures, and `match` shows every difference in one place.
//!
//! - [`memory`]: the default; this process's hub is the whole world.
//! - [`redis`]: several instances share Redis Pub/Sub (`REDIS_URL`), with
//!   presence kept in Redis by [`presence`].

pub mod memory;
pub mod presence;
pub mod redis;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::Config;
use crate::hub::{ConnId, Fanout, Hub};
use crate::metrics::Metrics;

pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisError};

/// The broker of one running server.
#[derive(Debug)]
pub enum Broker {
    Memory(MemoryBroker),
    Redis(Arc<RedisBroker>),
}

/// What a per-user notification reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    /// Instances that received it: Redis' PUBLISH count, or in memory mode
    /// 1 when this process holds a connection of the user, else 0.
    pub instances: usize,
    /// Whether Redis was unreachable, so only local clients were reached.
    pub degraded: bool,
}

impl Broker {
    /// Builds the broker `config` asks for, with the hub it delivers to. In
    /// Redis mode the connection is made in the background: an unreachable
    /// Redis leaves the server up in degraded mode.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<(Broker, Arc<Hub>), RedisError> {
        let hub = Hub::new(config.outbound_queue, metrics.clone())
            .with_queue_bytes(config.outbound_queue_bytes);
        match &config.redis_url {
            None => {
                let hub = Arc::new(hub);
                Ok((Broker::Memory(MemoryBroker::new(hub.clone())), hub))
            }
            Some(url) => {
                let (watcher, memberships) = tokio::sync::mpsc::unbounded_channel();
                let hub = Arc::new(hub.with_watcher(watcher));
                let settings = redis::Settings::from_config(config, url);
                let broker = RedisBroker::start(settings, hub.clone(), memberships, metrics)?;
                Ok((Broker::Redis(broker), hub))
            }
        }
    }

    /// Sends `text` to every client of every instance but the local
    /// connection `except`. Never waits: local clients get it at once, and
    /// the Redis publish is queued.
    pub fn broadcast(&self, text: &str, except: Option<ConnId>) -> Fanout {
        match self {
            Broker::Memory(memory) => memory.broadcast(text, except),
            Broker::Redis(redis) => redis.broadcast(text, except),
        }
    }

    /// Sends `text` (a JSON message) to every member of `room` on every
    /// instance but the local connection `except`. Never waits.
    pub fn publish_room(&self, room: &str, text: &str, except: Option<ConnId>) -> Fanout {
        match self {
            Broker::Memory(memory) => memory.publish_room(room, text, except),
            Broker::Redis(redis) => redis.publish_room(room, text, except),
        }
    }

    /// The users present in `room`, sorted, and whether only this
    /// instance's are known (Redis unreachable).
    pub async fn presence(&self, room: &str) -> (Vec<String>, bool) {
        match self {
            Broker::Memory(memory) => (memory.presence(room), false),
            Broker::Redis(redis) => redis.presence(room).await,
        }
    }

    /// The users present in `room` as far as other instances know (Redis
    /// mode; may include local ones), for a joiner's roster. Empty in memory
    /// mode or while Redis is unreachable.
    pub async fn remote_presence(&self, room: &str) -> Vec<String> {
        match self {
            Broker::Memory(_) => Vec::new(),
            Broker::Redis(redis) => redis.listed(room).await.unwrap_or_default(),
        }
    }

    /// Sends `text` to every connection of `user` on every instance.
    pub async fn notify(&self, user: &str, text: &str) -> Notified {
        match self {
            Broker::Memory(memory) => Notified {
                instances: usize::from(memory.notify(user, text).queued > 0),
                degraded: false,
            },
            Broker::Redis(redis) => redis.notify(user, text).await,
        }
    }

    /// Connections on every instance (Redis mode), or on this one.
    pub async fn connections(&self, hub: &Hub) -> usize {
        match self {
            Broker::Memory(_) => hub.len(),
            Broker::Redis(redis) => redis.connections().await,
        }
    }

    /// Whether the broker can deliver beyond this process as configured.
    pub fn is_up(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(redis) => redis.is_up(),
        }
    }

    /// The `broker` object of `/health`.
    pub fn status(&self) -> Value {
        match self {
            Broker::Memory(_) => json!({ "kind": "memory", "status": "ok" }),
            Broker::Redis(redis) => redis.status(),
        }
    }

    /// Stops the broker and withdraws this instance from the cluster count.
    pub async fn close(&self) {
        if let Broker::Redis(redis) = self {
            redis.close().await;
        }
    }
}
