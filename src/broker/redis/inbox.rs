//! The inbox: the durable way for workers to publish in Redis mode.
//!
//! A worker adds an entry to one Redis Stream, [`INBOX`]:
//! `XADD wsnotify:inbox * stream user:42 message '{"type":"order.shipped"}'`
//! (fields: `stream`, `message`, and for a room optionally `user`, the
//! sender). Every instance reads it as one consumer of the group
//! [`GROUP`], so each entry goes to one instance, which appends it to the
//! stream's history with the entry's id as idempotency key, then
//! acknowledges and deletes it. An instance that dies between the two leaves
//! the entry pending; after `INBOX_CLAIM_AFTER` another claims it, and the
//! idempotency key makes its append answer the first position instead of
//! appending again: each entry is appended and delivered once. While every
//! instance is down, entries wait in Redis.
//!
//! An entry that cannot be a message (no such stream, no message) is moved
//! to [`REJECTED`] with the reason, and counted.

use std::collections::HashMap;
use std::time::Duration;

use super::conn::Conn;
use redis::Value;
use tokio::time::timeout;

use super::RedisBroker;
use crate::limits::user_id_fits;
use crate::protocol::json::ServerMessage;
use crate::stream::Stream;

/// The inbox stream.
pub const INBOX: &str = "wsnotify:inbox";
/// Where refused entries go, with their reason.
pub const REJECTED: &str = "wsnotify:inbox:rejected";
/// The consumer group of every instance.
pub const GROUP: &str = "wsnotify";
/// Entries taken per read.
const BATCH: usize = 100;
/// How long one read blocks waiting for entries.
const BLOCK: Duration = Duration::from_millis(1000);

/// One inbox entry: its id and fields (`None` for an entry deleted while
/// still pending).
type Entry = (String, Option<HashMap<String, String>>);

/// What one entry is asked to be.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Publish {
    stream: Stream,
    body: String,
}

impl RedisBroker {
    /// Reads the inbox until the broker stops, on a connection of its own
    /// (a blocking read must not hold up the command connection).
    pub(super) async fn run_inbox(&self, claim_after: Duration) {
        loop {
            let attempt = async {
                let mut conn = self
                    .connector
                    .blocking(self.settings.timeout + BLOCK)
                    .await?;
                self.ensure_group(&mut conn).await?;
                loop {
                    self.consume(&mut conn, claim_after).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                result = attempt => if let Err(err) = result {
                    tracing::debug!(%err, "inbox consumer: Redis unreachable; retrying");
                },
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.refresh.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Creates the group if it is missing, from the start of the stream: an
    /// entry added before any instance ever ran is read too.
    async fn ensure_group(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(INBOX)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// One round: this instance's own pending entries (appends that failed),
    /// then others' stale ones, then new ones (blocking a while).
    async fn consume(&self, conn: &mut Conn, claim_after: Duration) -> redis::RedisResult<()> {
        let own = self.read_group(conn, "0", None).await?;
        self.handle(conn, own).await?;
        let claimed: (Value, Vec<Entry>, Value) = redis::cmd("XAUTOCLAIM")
            .arg(INBOX)
            .arg(GROUP)
            .arg(&self.settings.instance)
            .arg(claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        self.handle(conn, claimed.1).await?;
        let fresh = self.read_group(conn, ">", Some(BLOCK)).await?;
        self.handle(conn, fresh).await?;
        self.report_backlog(conn).await;
        Ok(())
    }

    /// `XREADGROUP … STREAMS wsnotify:inbox {from}`.
    async fn read_group(
        &self,
        conn: &mut Conn,
        from: &str,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<Entry>> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.settings.instance)
            .arg("COUNT")
            .arg(BATCH);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(INBOX).arg(from);
        let reply: Option<Vec<(String, Vec<Entry>)>> = read.query_async(conn).await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Appends each entry (idempotently), then acknowledges and deletes it;
    /// an entry whose append failed stays pending, to be retried.
    async fn handle(&self, conn: &mut Conn, entries: Vec<Entry>) -> redis::RedisResult<()> {
        for (id, fields) in entries {
            let fields = fields.unwrap_or_default();
            match entry(&fields) {
                Ok(publish) => {
                    let key = format!("inbox:{id}");
                    if self
                        .append(&publish.stream, &publish.body, Some(&key))
                        .await
                        .is_err()
                    {
                        // Redis trouble: this entry and the rest wait.
                        return Ok(());
                    }
                    self.metrics.inbox(true);
                }
                Err(reason) => {
                    tracing::warn!(id, reason, "inbox entry refused; moved to {REJECTED}");
                    let mut reject = redis::cmd("XADD");
                    reject
                        .arg(REJECTED)
                        .arg("*")
                        .arg("id")
                        .arg(&id)
                        .arg("reason")
                        .arg(reason);
                    for (name, value) in &fields {
                        reject.arg(name).arg(value);
                    }
                    reject.query_async::<()>(conn).await?;
                    self.metrics.inbox(false);
                }
            }
            redis::pipe()
                .cmd("XACK")
                .arg(INBOX)
                .arg(GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(INBOX)
                .arg(&id)
                .ignore()
                .query_async::<()>(conn)
                .await?;
        }
        Ok(())
    }

    /// The group's pending entries and unread lag, into the metrics.
    async fn report_backlog(&self, conn: &mut Conn) {
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg(INBOX);
        let groups = info.query_async::<Vec<HashMap<String, Value>>>(conn);
        let Ok(Ok(groups)) = timeout(self.settings.timeout, groups).await else {
            return;
        };
        let Some(group) = groups.into_iter().find(|g| {
            g.get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .as_deref()
                == Some(GROUP)
        }) else {
            return;
        };
        let number = |name: &str| {
            group
                .get(name)
                .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                .unwrap_or(0)
        };
        self.metrics.inbox_backlog(number("pending"), number("lag"));
    }
}

/// What an entry asks for, or why it cannot be.
fn entry(fields: &HashMap<String, String>) -> Result<Publish, &'static str> {
    let stream = fields.get("stream").ok_or("no `stream` field")?;
    let stream = Stream::parse(stream).ok_or("`stream` is not user:ID, room:NAME or broadcast")?;
    let message = fields
        .get("message")
        .filter(|m| !m.is_empty())
        .ok_or("no `message` field")?;
    let body = match &stream {
        Stream::Room(room) => {
            let user = fields.get("user").map_or("server", String::as_str);
            if user.is_empty() || !user_id_fits(user) {
                return Err("`user` is not 1 to 256 bytes");
            }
            ServerMessage::delivery(room, user, message).encode()
        }
        Stream::User(_) | Stream::Broadcast => message.clone(),
    };
    Ok(Publish { stream, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn entries_become_publishes_or_say_why_not() {
        let user = entry(&fields(&[("stream", "user:42"), ("message", "hi")])).unwrap();
        assert_eq!(
            (user.stream, user.body.as_str()),
            (Stream::User("42".into()), "hi")
        );
        let room = entry(&fields(&[
            ("stream", "room:lobby"),
            ("message", "hi"),
            ("user", "bot"),
        ]))
        .unwrap();
        assert!(room.body.contains(r#""user":"bot""#) && room.body.contains(r#""text":"hi""#));
        for (bad, why) in [
            (fields(&[("message", "hi")]), "no `stream`"),
            (
                fields(&[("stream", "nope"), ("message", "hi")]),
                "is not user:ID",
            ),
            (fields(&[("stream", "broadcast")]), "no `message`"),
            (
                fields(&[("stream", "room:r"), ("message", "m"), ("user", "")]),
                "`user`",
            ),
        ] {
            assert!(entry(&bad).unwrap_err().contains(why), "{bad:?}");
        }
    }
}
