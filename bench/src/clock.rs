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

/// `CLOCK_MONOTONIC` in nanoseconds: the clock every process on the
/// machine shares, for times another process reports (the floor server's
/// write times).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A [`monotonic_ns`] reading on the [`now_ns`] clock.
pub fn from_monotonic(monotonic: u64) -> u64 {
    let offset = monotonic_ns().saturating_sub(now_ns());
    monotonic.saturating_sub(offset)
}
