//! wsnotify: a real-time notification server. It holds WebSocket
//! connections and fans each message out to the right clients, with the
//! HTTP API and texts of the FastAPI servers it replaces, and drains
//! gracefully on SIGINT/SIGTERM.
//!
//! # Layout
//! - [`config`]: flags and environment → one [`Config`], defaults documented.
//! - [`server`]: `run(listener, config, signals)` (or `serve` with an
//!   [`app::App`] already built): accept loop, periodic notifier, drain on
//!   the first signal.
//! - [`http`]: the routes; [`upgrade`]: `GET /ws[/{client_id}]` and
//!   `GET /ws/rooms/{room}` → session.
//! - [`auth`]: origin allow-list, JWT check before the upgrade, API key of
//!   the publishing routes.
//! - [`session`]: one WebSocket's life in a single `select!`.
//! - [`broker`]: in-memory (default) or Redis Pub/Sub fan-out across
//!   instances, behind one enum.
//! - [`hub`]: the sharded registry of local connections (by id, user and
//!   room) and their fan-out;
//!   [`outbox`]: one connection's bounded queue.
//! - [`protocol`]: texts, pre-encoded frames, close codes, fragment reassembly.
//! - [`message`]: the typed JSON protocol of rooms (seed 003) and its errors.
//! - [`shutdown`]: the drain: notice, wait with deadline, forced 1001.
//! - [`metrics`]: Prometheus counters, gauges and histograms.
//! - [`app`]: the shared state handed to handlers and sessions.

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod hub;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod upgrade;

pub use config::Config;
pub use server::ServerError;
pub use shutdown::Outcome;
