//! wsnotify: a real-time notification server. It holds WebSocket
//! connections and fans each message out to the right clients, with the
//! HTTP API and texts of the FastAPI servers it replaces, and drains
//! gracefully on SIGINT/SIGTERM.
//!
//! # Layout
//! From the entry down; each module imports only modules below it.
//! - [`config`]: flags and environment → one [`Config`], defaults documented.
//! - [`server`]: `run(listener, config, signals)` (or `run_node` with a
//!   [`node::Node`] already built): accept loop, the node's tickers, drain
//!   on the first signal.
//! - [`http`]: the routes, and [`http::reply`], the response builders.
//! - [`upgrade`]: `GET /ws[/{client_id}]` and `GET /ws/rooms/{room}`:
//!   checks, 101, hand-over to a session.
//! - [`session`]: one WebSocket's life in a single `select!`.
//! - [`node`]: the one door handlers and sessions use: connect, join,
//!   publish, notify, presence, counts, health.
//! - [`auth`]: origin allow-list, JWT check before the upgrade, API key of
//!   the publishing routes.
//! - [`broker`]: in-memory (default) or Redis Pub/Sub fan-out across
//!   instances, behind one enum; it hands what it receives to [`delivery`].
//! - [`delivery`]: local delivery of a message, rendered per dialect.
//! - [`hub`]: the sharded registry of local connections (by id, user and
//!   room) and their fan-out; [`outbox`]: one connection's bounded queue.
//! - [`shutdown`]: the drain: notice, wait with deadline, forced 1001.
//! - [`protocol`]: frames, close codes, fragment reassembly;
//!   [`protocol::text`], the seeds' texts; [`protocol::json`], the typed JSON
//!   dialect and its errors.
//! - Leaves: [`stream`] (what a message is addressed to), [`limits`] (ids,
//!   room names, their one error text), [`query`] (URI query parameters),
//!   [`metrics`] (Prometheus).

pub mod auth;
pub mod broker;
pub mod config;
pub mod delivery;
pub mod flusher;
pub mod history;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod probe;
pub mod protocol;
pub mod query;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod stream;
pub mod upgrade;

pub use config::Config;
pub use server::ServerError;
pub use shutdown::Outcome;
