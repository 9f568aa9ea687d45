//! Shared parts of the wsnotify load generators.
//!
//! The fan-out benchmark (`fanout`, see `src/bin/fanout/`), the floor
//! server (`floor`) and the reliable-delivery benchmarks (`reliable`, see
//! `src/bin/reliable/`) are built on these modules:
//!
//! - [`clock`]: one monotonic clock for send and receive times;
//! - [`frames`]: the lean reader's scanner, which cuts a raw socket stream
//!   into WebSocket frames by their headers alone;
//! - [`procs`]: the processes under test (wsnotify, redis-server), pinned
//!   to a core, with their RSS and CPU time read from `/proc`;
//! - [`provenance`]: the work tree's commit and the binaries' build times
//!   that head every report;
//! - [`ws`]: a minimal WebSocket client (hand-written handshake,
//!   fastwebsockets frames);
//! - [`http`]: a minimal keep-alive HTTP/1.1 client (publishers, polls,
//!   `/metrics`);
//! - [`pusher`]: the Pusher protocol's subscription and signed API
//!   requests, for sockudo;
//! - [`redis_cluster`]: a private six-node Redis Cluster, a RESP request
//!   on one node and its `INFO` fields (`reliable cluster`);
//! - [`scan`]: allocation-free field lookups in the server's JSON, for the
//!   hot receive paths, and the `since` encoding;
//! - [`stats`]: percentiles and ratios.

pub mod clock;
pub mod frames;
pub mod http;
pub mod procs;
pub mod provenance;
pub mod pusher;
pub mod redis_cluster;
pub mod scan;
pub mod stats;
pub mod ws;
