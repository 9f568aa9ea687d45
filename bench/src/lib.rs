//! Shared parts of the wsnotify load generators.
//!
//! The `fanout` binary predates this library and keeps its own copies; the
//! reliable-delivery benchmarks (`reliable`, see `src/bin/reliable/`) are
//! built on these modules:
//!
//! - [`clock`]: one monotonic clock for send and receive times;
//! - [`procs`]: the processes under test (wsnotify, redis-server), pinned
//!   to a core, with their RSS and CPU time read from `/proc`;
//! - [`ws`]: a minimal WebSocket client (hand-written handshake,
//!   fastwebsockets frames);
//! - [`http`]: a minimal keep-alive HTTP/1.1 client (publishers, polls,
//!   `/metrics`);
//! - [`scan`]: allocation-free field lookups in the server's JSON, for the
//!   hot receive paths, and the `since` encoding;
//! - [`stats`]: percentiles and ratios.

pub mod clock;
pub mod http;
pub mod procs;
pub mod scan;
pub mod stats;
pub mod ws;
