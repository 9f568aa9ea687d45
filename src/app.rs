//! The shared state of one running server: configuration, the hub, the
//! broker, metrics, the shutdown handles and the frames every client gets.
//! One `Arc<App>` is handed to each HTTP connection and each session.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Auth, AuthError};
use crate::broker::{Broker, RedisError};
use crate::config::Config;
use crate::hub::{ConnId, Fanout, Hub};
use crate::message::ServerMessage;
use crate::metrics::Metrics;
use crate::protocol;
use crate::shutdown::Shutdown;

/// Why a server could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The authentication settings (key file, origins, …) are unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The broker could not start (a bad Redis URL).
    #[error(transparent)]
    Broker(#[from] RedisError),
}

/// Everything a request handler or a session needs.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    /// Origin, token and API key checks, loaded once.
    pub auth: Auth,
    pub hub: Arc<Hub>,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// `🟢 Connected to server`, encoded once for every client.
    pub connected_frame: Bytes,
    /// The drain notice, encoded once for every client.
    pub shutdown_frame: Bytes,
    /// The drain notice as `system.shutdown`, for room (JSON) clients.
    pub shutdown_json_frame: Bytes,
}

impl App {
    /// The state of a server configured by `config`: the authentication
    /// settings are checked (key file read) first, then, in Redis mode, the
    /// broker's background connection starts. Must run inside a runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, AppError> {
        let auth = Auth::from_config(&config)?;
        let metrics = Arc::new(Metrics::new());
        let (broker, hub) = Broker::start(&config, metrics.clone())?;
        Ok(Arc::new(App {
            config,
            auth,
            hub,
            broker,
            metrics,
            shutdown: Shutdown::new(),
            connected_frame: protocol::text_frame(protocol::CONNECTED),
            shutdown_frame: protocol::text_frame(protocol::SHUTDOWN_NOTICE),
            shutdown_json_frame: ServerMessage::Shutdown {
                message: protocol::SHUTDOWN_NOTICE.to_owned(),
            }
            .frame(),
        }))
    }

    /// Sends `text` to every client of every instance but `except`.
    pub fn broadcast(&self, text: &str, except: Option<ConnId>) -> Fanout {
        self.broker.broadcast(text, except)
    }
}
