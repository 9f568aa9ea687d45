//! The embedded broker: one process, nothing else to run. Every message is
//! handed straight to this process's delivery, and history is kept in
//! memory ([`MemoryHistory`]).

use std::sync::Arc;

use super::{Appended, Notified, Reach, Unavailable};
use crate::delivery::{Delivery, Inbound};
use crate::history::memory::{self, MemoryHistory, Usage};
use crate::history::{Budget, Position, Read};
use crate::hub::Fanout;
use crate::protocol::json::now_ms;
use crate::stream::Stream;

/// Delivers to the local hub only.
#[derive(Debug)]
pub struct MemoryBroker {
    delivery: Delivery,
    /// `None` with history off. Boxed: the store is large, and the broker
    /// enum holds this variant inline.
    history: Option<Box<MemoryHistory>>,
}

impl MemoryBroker {
    /// A broker handing everything to `delivery`, keeping `history`.
    pub fn new(delivery: Delivery, history: Option<MemoryHistory>) -> Self {
        MemoryBroker {
            delivery,
            history: history.map(Box::new),
        }
    }

    /// Delivers `message` at once: this process is the whole world.
    pub fn publish(&self, message: Inbound<'_>) -> Fanout {
        self.delivery.deliver(message)
    }

    /// Sends `text` to every local connection of `user`.
    pub fn notify(&self, user: &str, text: &str) -> Notified {
        let fanout = self.delivery.deliver(Inbound::User { user, text });
        Notified {
            instances: usize::from(fanout.queued > 0),
            reach: Reach::Everywhere,
        }
    }

    /// Appends `body` to `stream` and delivers it, in one step per stream.
    pub fn append(
        &self,
        stream: &Stream,
        body: Arc<str>,
        key: Option<&str>,
    ) -> Result<Appended, Unavailable> {
        let history = self.history.as_ref().ok_or(Unavailable)?;
        let mut local = 0;
        let appended = history.append(stream, body, now_ms(), key, |record| {
            local = self.delivery.deliver(Inbound::Record(record)).queued;
        });
        match appended {
            Some(memory::Appended::New(record)) => Ok(Appended {
                position: record.position.clone(),
                duplicate: false,
                local,
                instances: usize::from(local > 0),
            }),
            Some(memory::Appended::Duplicate(position)) => Ok(Appended {
                position,
                duplicate: true,
                local: 0,
                instances: 0,
            }),
            None => {
                tracing::warn!(%stream, "a message that is no record of its stream; not appended");
                Err(Unavailable)
            }
        }
    }

    /// Reads `stream`'s history after `since`.
    pub fn read(
        &self,
        stream: &Stream,
        since: Option<&Position>,
        budget: &mut Budget,
    ) -> Result<Read, Unavailable> {
        let history = self.history.as_ref().ok_or(Unavailable)?;
        Ok(history.read(stream, since, budget))
    }

    /// Drops expired history.
    pub fn sweep(&self) {
        if let Some(history) = &self.history {
            history.sweep();
        }
    }

    /// What history holds.
    pub fn usage(&self) -> Option<Usage> {
        self.history.as_deref().map(MemoryHistory::usage)
    }
}
