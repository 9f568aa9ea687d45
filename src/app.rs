//! The shared state of one running server: configuration, the hub, metrics,
//! the shutdown handles and the frames every client gets. One `Arc<App>` is
//! handed to each HTTP connection and each WebSocket session.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::Config;
use crate::hub::{ConnId, Fanout, Hub};
use crate::metrics::Metrics;
use crate::protocol;
use crate::shutdown::Shutdown;

/// Everything a request handler or a session needs.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// `🟢 Connected to server`, encoded once for every client.
    pub connected_frame: Bytes,
    /// The drain notice, encoded once for every client.
    pub shutdown_frame: Bytes,
}

impl App {
    /// The state of a server configured by `config`.
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.outbound_queue, metrics.clone()));
        Arc::new(App {
            config,
            hub,
            metrics,
            shutdown: Shutdown::new(),
            connected_frame: protocol::text_frame(protocol::CONNECTED),
            shutdown_frame: protocol::text_frame(protocol::SHUTDOWN_NOTICE),
        })
    }

    /// Sends `text` to every client but `except`, encoding it once.
    pub fn broadcast(&self, text: &str, except: Option<ConnId>) -> Fanout {
        self.hub.broadcast(&protocol::text_frame(text), except)
    }
}
