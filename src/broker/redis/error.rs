//! The one error of the broker's link to Redis: what made a command, a
//! script or a subscription fail, for the supervisor to log and act on.

/// Why the link to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// No answer within `REDIS_TIMEOUT`; says to what.
    #[error("{0} got no answer in time")]
    Timeout(&'static str),
    #[error("the subscription connection closed")]
    Closed,
    /// Redis answered something wsnotify's scripts never return.
    #[error("unexpected reply: {0}")]
    Reply(&'static str),
}
