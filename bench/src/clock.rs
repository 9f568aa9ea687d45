//! The generator's clock: nanoseconds since it started, monotonic. Payloads
//! carry their send time on this clock, so a latency is the difference of
//! two readings in one process (no clock skew).

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the first call.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of about `size` bytes that carries `tag`, `seq` and the send
/// time: `<tag>:<seq>:<sent_ns>:xxxx…` (see [`crate::scan::stamp`]).
pub fn stamped(tag: char, seq: u64, size: usize) -> String {
    let mut message = format!("{tag}:{seq}:{}:", now_ns());
    if message.len() < size {
        message.extend(std::iter::repeat_n('x', size - message.len()));
    }
    message
}
