//! The node: one running server's core, and the one door request handlers
//! and sessions go through. It owns the hub (who is connected here), the
//! broker (how messages reach other instances), the delivery the broker
//! hands inbound messages to, the metrics and the shutdown handles, and
//! offers every operation a handler or session may ask for: connect, join,
//! publish, notify, presence, counts, health. Nothing outside reaches the
//! hub or the broker directly.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream as Signals;

use crate::auth::{Auth, AuthError};
use crate::broker::redis::{Endpoint, RedisBroker, Settings};
use crate::broker::{Broker, MemoryBroker, StartError, Unavailable};
use crate::config::Config;
use crate::delivery::{Delivery, Inbound};
use crate::history::memory::{MemoryHistory, Usage};
use crate::history::{Budget, Position, Read};
use crate::hub::{Audience, ConnId, Fanout, Hub, QueueBounds};
use crate::metrics::Metrics;
use crate::protocol::json::{ServerMessage, now_ms};
use crate::protocol::{self, Dialect, text};
use crate::shutdown::{Outcome, Shutdown, Timing};
use crate::stream::Stream;

/// What the node's operations answer with, for handlers to render.
pub use crate::broker::{BrokerHealth, Notified, Reach};
/// A session's ticket: it keeps the connection registered (and in its
/// rooms) until dropped.
pub use crate::hub::Registration;

/// Why a node could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The authentication settings (key file, origins, …) are unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The broker could not start (a bad Redis URL).
    #[error(transparent)]
    Broker(#[from] StartError),
}

/// The users present in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// Sorted, each once.
    pub users: Vec<String>,
    pub reach: Reach,
}

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// WebSocket connections on this instance.
    pub connections: usize,
    pub draining: bool,
    pub broker: BrokerHealth,
    pub history: HistoryHealth,
}

/// The history part of `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryHealth {
    pub settings: crate::history::Settings,
    /// What this process holds (memory mode; Redis keeps its own).
    pub usage: Option<Usage>,
    /// Whether history can be written and read right now.
    pub available: bool,
}

/// Where a publish went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its position in its stream, with history on.
    pub at: Option<Position>,
    /// An idempotency key seen within five minutes: nothing was sent again,
    /// `at` is the first publish's position.
    pub duplicate: bool,
    /// Local connections it was queued for, where known at once.
    pub local: usize,
    /// Instances that received it.
    pub instances: usize,
    pub reach: Reach,
}

/// Whether a load balancer should send clients here (`/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The drain has started.
    Draining,
    /// Redis is unreachable: only local clients would be served.
    BrokerDown,
}

/// One running server's core.
#[derive(Debug)]
pub struct Node {
    config: Config,
    /// Origin, token and API key checks, loaded once.
    auth: Auth,
    hub: Arc<Hub>,
    broker: Broker,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// `🟢 Connected to server`, encoded once for every client.
    connected_frame: Bytes,
    /// The drain notice, encoded once per dialect for every client.
    shutdown_text: Bytes,
    shutdown_json: Bytes,
}

impl Node {
    /// The node `config` describes: the authentication settings are checked
    /// (key file read) first, then, in Redis mode, the broker's background
    /// connection starts. Must run inside a runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, NodeError> {
        let auth = Auth::from_config(&config)?;
        let metrics = Arc::new(Metrics::new());
        let bounds = QueueBounds {
            frames: config.outbound_queue,
            bytes: config.outbound_queue_bytes,
        };
        let hub = Hub::new(bounds, metrics.clone());
        let endpoint = match (&config.redis_url, &config.redis_cluster_urls) {
            (Some(url), _) => Some(Endpoint::Single(url.clone())),
            (None, Some(seeds)) => Some(Endpoint::Cluster(seeds.clone())),
            (None, None) => None,
        };
        let (hub, broker) = match endpoint {
            None => {
                let hub = Arc::new(hub);
                let history = config
                    .history()
                    .enabled()
                    .then(|| MemoryHistory::new(config.history()));
                let broker = Broker::Memory(MemoryBroker::new(Delivery::new(hub.clone()), history));
                (hub, broker)
            }
            Some(endpoint) => {
                let (watcher, changes) = tokio::sync::mpsc::unbounded_channel();
                let hub = Arc::new(hub.with_watcher(watcher));
                let settings = Settings::from_config(&config, endpoint);
                let delivery = Delivery::new(hub.clone());
                let broker =
                    RedisBroker::start(settings, hub.clone(), changes, delivery, metrics.clone())?;
                (hub, Broker::Redis(broker))
            }
        };
        Ok(Arc::new(Node {
            config,
            auth,
            hub,
            broker,
            metrics,
            shutdown: Shutdown::new(),
            connected_frame: protocol::text_frame(text::CONNECTED),
            shutdown_text: protocol::text_frame(text::SHUTDOWN_NOTICE),
            shutdown_json: ServerMessage::Shutdown {
                message: text::SHUTDOWN_NOTICE.to_owned(),
                reconnect_after_ms: None,
            }
            .frame(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Registers a plain-text connection of `user`; its first frame is the
    /// greeting.
    pub fn connect_text(&self, user: Arc<str>) -> Registration {
        self.hub
            .register(Dialect::Text, user, Some(self.connected_frame.clone()))
    }

    /// Registers a JSON connection of `user`, in `room` if given: then its
    /// first frame is the room's `room.joined`.
    pub async fn connect_json(&self, user: Arc<str>, room: Option<&str>) -> Registration {
        match room {
            Some(room) => {
                let remote = self.broker.listed(room).await.unwrap_or_default();
                self.hub.register_in_room(user, room, &remote)
            }
            None => self.hub.register(Dialect::Json, user, None),
        }
    }

    /// Puts `reg` in `room` and queues `room.joined` with the members,
    /// before any message of that room. Joining a room again only re-sends
    /// the roster.
    pub async fn join(&self, reg: &mut Registration, room: &str) {
        let remote = self.broker.listed(room).await.unwrap_or_default();
        reg.join(room, &remote);
    }

    /// Registers a [`Role::Waiter`](crate::hub::Role) of `user` in
    /// `rooms`, for a long-poll or an SSE stream.
    pub fn connect_waiter(&self, user: Arc<str>, rooms: &[String]) -> Registration {
        let mut reg = self.hub.register_waiter(user);
        for room in rooms {
            reg.join(room, &[]);
        }
        reg
    }

    /// Whether streams keep history (`HISTORY_SIZE` > 0).
    pub fn history_enabled(&self) -> bool {
        self.config.history().enabled()
    }

    /// What one reader may be sent on a resume: its outbound queue.
    pub fn resume_budget(&self) -> Budget {
        Budget {
            frames: self.config.outbound_queue,
            bytes: self.config.outbound_queue_bytes,
        }
    }

    /// Reads `stream`'s history after `since` (see
    /// [`Broker::read`](crate::broker::Broker::read)).
    pub async fn read(
        &self,
        stream: &Stream,
        since: Option<&Position>,
        budget: &mut Budget,
    ) -> Result<Read, Unavailable> {
        self.broker.read(stream, since, budget).await
    }

    /// Between a resume's history read and its going live: nothing, but
    /// for the test hook that widens that window.
    pub async fn after_history_read(&self) {
        let delay = self.config.test_resume_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// What history holds in this process (memory mode).
    pub fn history_usage(&self) -> Option<Usage> {
        self.broker.history_usage()
    }

    /// Drops expired history (memory mode).
    pub fn sweep_history(&self) {
        self.broker.sweep_history();
    }

    /// The drain notice for a connection speaking `dialect`; JSON clients
    /// each get their own reconnect delay across `DRAIN_RECONNECT_SPREAD`.
    pub fn shutdown_notice(&self, dialect: Dialect) -> Bytes {
        match dialect {
            Dialect::Text => self.shutdown_text.clone(),
            Dialect::Json if self.config.drain_reconnect_spread.is_zero() => {
                self.shutdown_json.clone()
            }
            Dialect::Json => ServerMessage::Shutdown {
                message: text::SHUTDOWN_NOTICE.to_owned(),
                reconnect_after_ms: Some(self.reconnect_delay_ms()),
            }
            .frame(),
        }
    }

    /// A delay drawn uniformly from [0, `DRAIN_RECONNECT_SPREAD`], in ms.
    pub fn reconnect_delay_ms(&self) -> u64 {
        let spread = self.config.drain_reconnect_spread.as_millis() as u64;
        // uuid's generator is a fast thread-local one (the `fast-rng` feature).
        (uuid::Uuid::new_v4().as_u128() % u128::from(spread + 1)) as u64
    }

    /// Publishes `body` on `stream`: with history on, appended to the
    /// stream's history (refused while it cannot be kept) and delivered with
    /// its position; with history off, delivered live as before. `key` is
    /// the publisher's `Idempotency-Key`.
    pub async fn publish(
        &self,
        stream: &Stream,
        body: &str,
        key: Option<&str>,
    ) -> Result<Published, Unavailable> {
        if self.history_enabled() {
            let appended = match self.broker.append(stream, body.into(), key).await {
                Ok(appended) => appended,
                Err(unavailable) => {
                    self.metrics.publish_refused();
                    return Err(unavailable);
                }
            };
            return Ok(Published {
                at: Some(appended.position),
                duplicate: appended.duplicate,
                local: appended.local,
                instances: appended.instances,
                reach: Reach::Everywhere,
            });
        }
        let live = |fanout: Fanout| Published {
            at: None,
            duplicate: false,
            local: fanout.queued,
            instances: usize::from(fanout.queued > 0),
            reach: Reach::Everywhere,
        };
        Ok(match stream {
            Stream::User(user) => {
                let notified = self.broker.notify(user, body).await;
                Published {
                    instances: notified.instances,
                    reach: notified.reach,
                    ..live(Fanout::default())
                }
            }
            Stream::Broadcast => live(self.broker.publish(Inbound::Broadcast {
                text: body,
                except: None,
            })),
            Stream::Room(room) => live(self.broker.publish(Inbound::Room {
                room,
                text: body,
                except: None,
            })),
        })
    }

    /// `New message: T` from plain-text connection `from` to every other
    /// plain-text client of every instance.
    pub fn relay(&self, text: &str, from: ConnId) -> Fanout {
        self.broker.publish(Inbound::Broadcast {
            text: &text::new_message(text),
            except: Some(from),
        })
    }

    /// A `chat.delivery` of `text` by `user` to every member of `room` on
    /// every instance, the sender included; returns the delivery and where
    /// it went.
    pub async fn say(
        &self,
        room: &str,
        user: &str,
        text: &str,
        key: Option<&str>,
    ) -> Result<(ServerMessage, Published), Unavailable> {
        let delivery = ServerMessage::delivery(room, user, text);
        let stream = Stream::Room(room.into());
        let published = self.publish(&stream, &delivery.encode(), key).await?;
        Ok((delivery, published))
    }

    /// The users present in `room` on every instance (this one's only while
    /// Redis is unreachable).
    pub async fn presence(&self, room: &str) -> Presence {
        let mut users = self.hub.room_users(room);
        let listed = self.broker.listed(room).await;
        let reach = match listed {
            Some(_) => Reach::Everywhere,
            None => Reach::ThisInstance,
        };
        users.extend(listed.unwrap_or_default());
        users.sort();
        users.dedup();
        Presence { users, reach }
    }

    /// WebSocket connections on every instance.
    pub async fn connections(&self) -> (usize, Reach) {
        self.broker.connections(self.hub.len()).await
    }

    pub fn health(&self) -> Health {
        Health {
            connections: self.hub.len(),
            draining: self.shutdown.is_draining(),
            broker: self.broker.health(),
            history: HistoryHealth {
                settings: self.config.history(),
                usage: self.broker.history_usage(),
                available: self.history_enabled() && self.broker.is_up(),
            },
        }
    }

    /// The Prometheus exposition, with the gauges read at scrape time.
    pub fn render_metrics(&self) -> String {
        if let Some(usage) = self.broker.history_usage() {
            self.metrics
                .history(usage.streams, usage.entries, usage.bytes);
        }
        self.metrics.render()
    }

    pub fn readiness(&self) -> Readiness {
        if self.shutdown.is_draining() {
            Readiness::Draining
        } else if !self.broker.is_ready() {
            Readiness::BrokerDown
        } else {
            Readiness::Ready
        }
    }

    /// One heartbeat: a ping frame to every client, and `system.ping` to
    /// JSON clients (seed 003), each encoded once.
    pub fn heartbeat(&self) {
        self.hub
            .send_to_audience(Audience::All, &protocol::ping_frame(), None);
        let system_ping = ServerMessage::Ping { ts: now_ms() }.frame();
        self.hub
            .send_to_audience(Audience::Only(Dialect::Json), &system_ping, None);
    }

    /// The seeds' periodic notification `frame` to this instance's
    /// plain-text clients.
    pub fn periodic(&self, frame: &Bytes) {
        self.hub
            .send_to_audience(Audience::Only(Dialect::Text), frame, None);
    }

    /// Closes every connection silent for `idle` with 4000; returns how many.
    pub fn sweep_idle(&self, idle: Duration) -> usize {
        self.hub.sweep_idle(idle)
    }

    /// Milliseconds on the clock of the idle sweep, for
    /// [`Outbox::touch`](crate::outbox::Outbox::touch).
    pub fn now_ms(&self) -> u64 {
        self.hub.now_ms()
    }

    /// Connections on this instance.
    pub fn local_connections(&self) -> usize {
        self.hub.len()
    }

    /// Drains the node (see [`Shutdown::drain`]).
    pub async fn drain<S>(&self, signals: S) -> Outcome
    where
        S: Signals<Item = ()> + Unpin,
    {
        let timing = Timing {
            timeout: self.config.shutdown_timeout,
            log_interval: self.config.shutdown_log_interval,
        };
        self.shutdown
            .drain(|| self.hub.len(), &self.metrics, timing, signals)
            .await
    }

    /// Stops the broker and withdraws this instance from the cluster count.
    pub async fn close(&self) {
        self.broker.close().await;
    }
}
