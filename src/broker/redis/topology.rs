//! Which primary serves each partition's slot, from `CLUSTER SLOTS`.

use std::time::Duration;

use tokio::time::timeout;

use super::channels::{PARTITIONS, slot, tag};
use super::conn::Conn;
use super::error::LinkError;

/// The primary serving each partition's slot, from `CLUSTER SLOTS`
/// (`[[start, end, [host, port, …], replicas…], …]`).
pub async fn read_owners(
    conn: &mut Conn,
    limit: Duration,
) -> Result<Vec<Option<String>>, LinkError> {
    let reply: redis::Value =
        match timeout(limit, redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await {
            Ok(reply) => reply?,
            Err(_) => return Err(LinkError::Timeout("CLUSTER SLOTS")),
        };
    let ranges = owners_of(&reply).ok_or(LinkError::Reply("CLUSTER SLOTS"))?;
    Ok((0..PARTITIONS)
        .map(|p| {
            let tag_slot = slot(tag(p).as_bytes());
            ranges
                .iter()
                .find(|(start, end, _)| (*start..=*end).contains(&tag_slot))
                .map(|(_, _, addr)| addr.clone())
        })
        .collect())
}

/// `(start, end, "host:port")` of each range of a `CLUSTER SLOTS` reply.
fn owners_of(reply: &redis::Value) -> Option<Vec<(u16, u16, String)>> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let Value::Array(primary) = fields.get(2)? else {
                return None;
            };
            let host = text(primary.first()?)?;
            let port = match primary.get(1)? {
                Value::Int(n) => *n,
                _ => return None,
            };
            Some((
                int(fields.first()?)?,
                int(fields.get(1)?)?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn cluster_slots_name_each_ranges_primary() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |port: i64| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        assert_eq!(
            owners_of(&reply).unwrap(),
            [
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "127.0.0.1:7001".to_owned())
            ]
        );
        assert_eq!(owners_of(&Value::Int(1)), None);
    }
}
