//! The embedded broker: one process, nothing else to run. Every message is
//! handed straight to this process's delivery.

use super::{Notified, Reach};
use crate::delivery::{Delivery, Inbound};
use crate::hub::Fanout;

/// Delivers to the local hub only.
#[derive(Debug)]
pub struct MemoryBroker {
    delivery: Delivery,
}

impl MemoryBroker {
    /// A broker handing everything to `delivery`.
    pub fn new(delivery: Delivery) -> Self {
        MemoryBroker { delivery }
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
}
