//! The hub's fan-outs: one message queued for many connections, each in
//! its dialect, without ever waiting (a full queue cuts its connection).

use std::sync::Arc;

use bytes::Bytes;

use super::{Audience, ConnId, Hub, read};
use crate::history::Record;
use crate::outbox::{Item, Outbox, Push};
use crate::protocol::{Close, Dialect};
use crate::stream::Stream;

/// One message rendered for each dialect; `None` leaves that dialect's
/// connections out.
#[derive(Debug, Clone, Copy)]
pub struct Rendered<'a> {
    pub text: Option<&'a Item>,
    pub json: Option<&'a Item>,
}

impl<'a> Rendered<'a> {
    fn for_dialect(&self, dialect: Dialect) -> Option<&'a Item> {
        match dialect {
            Dialect::Text => self.text,
            Dialect::Json => self.json,
        }
    }
}

/// What a fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Connections the frame was queued for.
    pub queued: usize,
    /// Connections disconnected by this fan-out because their queue was full.
    pub overflowed: usize,
}

impl Hub {
    /// Runs one fan-out and records its time and overflows in the metrics.
    pub(super) fn timed(&self, fan_out: impl FnOnce(&mut Fanout)) -> Fanout {
        let started = std::time::Instant::now();
        let mut fanout = Fanout::default();
        fan_out(&mut fanout);
        self.metrics.fanout(started.elapsed(), fanout.overflowed);
        fanout
    }

    /// Queues `frame` for every connection in `audience` but `except`.
    pub fn send_to_audience(
        &self,
        audience: Audience,
        frame: &Bytes,
        except: Option<ConnId>,
    ) -> Fanout {
        let item = Item::Frame(frame.clone());
        let rendered = Rendered {
            text: audience.includes(Dialect::Text).then_some(&item),
            json: audience.includes(Dialect::Json).then_some(&item),
        };
        self.send_to_all(rendered, except)
    }

    /// Queues `rendered` for every connection but `except`, each in its
    /// dialect.
    pub fn send_to_all(&self, rendered: Rendered<'_>, except: Option<ConnId>) -> Fanout {
        self.timed(|fanout| {
            for shard in self.shards.iter() {
                let conns = read(shard);
                for (&id, conn) in conns.iter().filter(|(id, _)| Some(**id) != except) {
                    if let Some(item) = rendered.for_dialect(conn.dialect) {
                        fanout.record(conn.outbox.push(item.clone()), id, &conn.user);
                    }
                }
            }
        })
    }

    /// Queues a notification for every connection of `user`, each in its
    /// dialect.
    pub fn send_to_user(&self, user: &str, rendered: Rendered<'_>) -> Fanout {
        self.timed(|fanout| {
            let users = read(self.user_shard(user));
            let Some(conns) = users.get(user) else {
                return;
            };
            for (id, outbox, dialect) in conns {
                if let Some(item) = rendered.for_dialect(*dialect) {
                    fanout.record(outbox.push(item.clone()), *id, user);
                }
            }
        })
    }

    /// Queues `record` for every local reader of its stream: JSON
    /// connections get the record, plain-text ones its text frame (users'
    /// notifications and broadcasts).
    pub fn send_record(&self, record: &Arc<Record>) -> Fanout {
        let json = Item::Record(record.clone());
        let text = record.text_frame.clone().map(Item::Frame);
        let rendered = Rendered {
            text: text.as_ref(),
            json: Some(&json),
        };
        match &record.stream {
            Stream::User(user) => self.send_to_user(user, rendered),
            Stream::Room(room) => self.send_to_room(room, &json, None),
            Stream::Broadcast => self.send_to_all(rendered, None),
        }
    }

    /// Closes with `close` every local JSON connection and waiter that
    /// follows `stream`: they missed messages of it and must resume.
    pub fn kill_followers(&self, stream: &Stream, close: Close) -> usize {
        let outboxes: Vec<Arc<Outbox>> = match stream {
            Stream::User(user) => read(self.user_shard(user))
                .get(user)
                .map(|conns| {
                    conns
                        .iter()
                        .filter(|(_, _, d)| *d == Dialect::Json)
                        .map(|(_, outbox, _)| outbox.clone())
                        .collect()
                })
                .unwrap_or_default(),
            Stream::Room(room) => self.room_outboxes(room),
            Stream::Broadcast => self
                .shards
                .iter()
                .flat_map(|shard| {
                    read(shard)
                        .values()
                        .filter(|c| c.dialect == Dialect::Json)
                        .map(|c| c.outbox.clone())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        outboxes.iter().filter(|outbox| outbox.kill(close)).count()
    }
}

impl Fanout {
    /// Counts one push; `to` names the fan-out's target (a user, a room)
    /// for the log.
    pub(super) fn record(&mut self, push: Push, id: ConnId, to: &str) {
        match push {
            Push::Queued => self.queued += 1,
            Push::Overflowed => {
                self.overflowed += 1;
                tracing::warn!(
                    conn = id,
                    to,
                    "slow consumer: outbound queue full, disconnecting"
                );
            }
            Push::Closed => {}
        }
    }
}
