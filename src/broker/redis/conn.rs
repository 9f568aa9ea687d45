//! What the broker connects to: one Redis (`REDIS_URL`) or a Redis Cluster
//! (`REDIS_CLUSTER_URLS`), and the command connection of either, behind one
//! type. Every command and script goes through [`Conn`]; in a cluster it is
//! routed by its first key's slot (every script's keys share one tag, see
//! [`super::channels`]), and pipelines must stay on one slot too.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use super::super::StartError;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One Redis (`REDIS_URL`).
    Single(String),
    /// Seed nodes of a Redis Cluster (`REDIS_CLUSTER_URLS`).
    Cluster(Vec<String>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Single(url) => f.write_str(url),
            Endpoint::Cluster(seeds) => write!(f, "cluster {}", seeds.join(",")),
        }
    }
}

/// A command connection: cheap to clone, shared by every task.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Makes the broker's connections. (One per broker: the size of its
/// variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Connector {
    Single(Client),
    Cluster {
        client: ClusterClient,
        /// One client per seed node: the plain subscriber connects to the
        /// first that answers.
        seeds: Vec<Client>,
        /// The seeds' password, for the shard subscribers of every node.
        password: Option<String>,
        username: Option<String>,
    },
}

impl Connector {
    /// Parses `endpoint`'s URLs; a malformed one is a start-up error.
    pub fn new(endpoint: &Endpoint, timeout: Duration) -> Result<Self, StartError> {
        match endpoint {
            Endpoint::Single(url) => Ok(Connector::Single(
                Client::open(url.as_str()).map_err(StartError::RedisUrl)?,
            )),
            Endpoint::Cluster(urls) => {
                let mut seeds = Vec::with_capacity(urls.len());
                let mut infos = Vec::with_capacity(urls.len());
                for url in urls {
                    let info = url
                        .as_str()
                        .into_connection_info()
                        .map_err(|e| StartError::ClusterUrl(url.clone(), e))?;
                    seeds.push(
                        Client::open(info.clone())
                            .map_err(|e| StartError::ClusterUrl(url.clone(), e))?,
                    );
                    infos.push(info);
                }
                let redis = infos[0].redis_settings();
                let (username, password) = (
                    redis.username().map(str::to_owned),
                    redis.password().map(str::to_owned),
                );
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // The broker's own timeouts bound every call; a retry
                    // inside one (a MOVED, a failover) must fit in it.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(|e| StartError::ClusterUrl(urls.join(","), e))?;
                Ok(Connector::Cluster {
                    client,
                    seeds,
                    password,
                    username,
                })
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Connector::Cluster { .. })
    }

    /// A command connection whose calls time out after `timeout`.
    pub async fn command(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Connector::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                Ok(Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Connector::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A connection of its own for blocking reads (the inbox), whose calls
    /// may take `timeout`.
    pub async fn blocking(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Connector::Single(_) => self.command(timeout).await,
            Connector::Cluster { seeds, .. } => {
                let infos: Vec<_> = seeds
                    .iter()
                    .map(|c| c.get_connection_info().clone())
                    .collect();
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// The subscriber of plain channels (the seeds' `notifications:…`,
    /// `rooms:…`, `websocket:broadcast`). In a cluster a plain PUBLISH
    /// reaches every node, so any one node serves: the first that answers.
    pub async fn plain_subscriber(&self) -> redis::RedisResult<PubSub> {
        match self {
            Connector::Single(client) => client.get_async_pubsub().await,
            Connector::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(err) => last = Some(err),
                    }
                }
                Err(last.expect("REDIS_CLUSTER_URLS is never empty"))
            }
        }
    }

    /// The credentials every cluster node takes (the seeds').
    pub fn credentials(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Connector::Single(_) => (None, None),
            Connector::Cluster {
                username, password, ..
            } => (username.as_deref(), password.as_deref()),
        }
    }
}
