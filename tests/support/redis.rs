//! A real Redis for integration tests, started through testcontainers.
//!
//! The image is `WSNOTIFY_REDIS_IMAGE` (default `redis:7-alpine`) when it is
//! present or can be pulled; otherwise `scripts/redis-image.sh` builds a small
//! local one from this machine's `redis-server`. Where no Docker engine can be
//! reached at all, a `redis-server` process on a free port stands in, and the
//! fixture says so; `WSNOTIFY_REQUIRE_DOCKER=1` (set by CI when Docker is
//! present) turns that fallback into a failure.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::process::{Child, Command};

use std::net::SocketAddr;

use hyper::{Method, StatusCode};
use wsnotify::Config;

use super::{PATIENCE, TestServer, http};

const REDIS_PORT: u16 = 6379;
const SERVER_ARGS: [&str; 8] = [
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--loglevel",
    "notice",
];

/// A Redis server for one test.
pub struct Redis {
    pub port: u16,
    backend: Backend,
}

enum Backend {
    Container(Box<ContainerAsync<GenericImage>>),
    Process(Option<Child>),
}

/// The image to run, resolved (and built if need be) once per test binary.
fn image() -> &'static (String, String) {
    static IMAGE: OnceLock<(String, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-image.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .expect("run redis-image.sh");
        assert!(
            out.status.success(),
            "redis-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let (repo, tag) = name.rsplit_once(':').unwrap_or((&name, "latest"));
        (repo.to_owned(), tag.to_owned())
    })
}

fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A free TCP port on loopback (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts Redis on a fixed host port, so a restart keeps its address.
    pub async fn start() -> Redis {
        let port = free_port();
        if docker_available() {
            let (repo, tag) = image();
            let mut cmd = vec!["redis-server"];
            cmd.extend(SERVER_ARGS);
            let container = GenericImage::new(repo.as_str(), tag.as_str())
                .with_exposed_port(REDIS_PORT.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .with_cmd(cmd)
                .with_mapped_port(port, REDIS_PORT.tcp())
                .with_startup_timeout(Duration::from_secs(60))
                .start()
                .await
                .expect("start the Redis container");
            eprintln!("redis fixture: container {repo}:{tag} on 127.0.0.1:{port}");
            return Redis {
                port,
                backend: Backend::Container(Box::new(container)),
            };
        }
        assert!(
            std::env::var("WSNOTIFY_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "WSNOTIFY_REQUIRE_DOCKER=1 but no Docker engine answers: the container path did not run"
        );
        eprintln!(
            "redis fixture: NO DOCKER ENGINE reachable; starting a redis-server process on port {port} instead"
        );
        let mut redis = Redis {
            port,
            backend: Backend::Process(None),
        };
        redis.start_again().await;
        redis
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (`docker stop`, or kills the process).
    pub async fn stop(&mut self) {
        match &mut self.backend {
            Backend::Container(c) => c.stop_with_timeout(Some(0)).await.expect("stop Redis"),
            Backend::Process(child) => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Starts it again on the same port and waits until it answers.
    pub async fn start_again(&mut self) {
        match &mut self.backend {
            Backend::Container(c) => c.start().await.expect("restart Redis"),
            Backend::Process(child) => {
                let spawned = Command::new("redis-server")
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    .args(SERVER_ARGS)
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("spawn redis-server (apt-get install redis-server)");
                *child = Some(spawned);
            }
        }
        self.wait_until_answering().await;
    }

    /// Freezes the server: connections stay open, nothing is answered.
    pub async fn pause(&self) {
        match &self.backend {
            Backend::Container(c) => c.pause().await.expect("pause Redis"),
            Backend::Process(child) => signal(child, libc::SIGSTOP),
        }
    }

    /// Thaws a paused server.
    pub async fn unpause(&self) {
        match &self.backend {
            Backend::Container(c) => c.unpause().await.expect("unpause Redis"),
            Backend::Process(child) => signal(child, libc::SIGCONT),
        }
    }

    /// A plain client connection, as an external publisher would use.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }

    async fn wait_until_answering(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 4;
        loop {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis never answered on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn signal(child: &Option<Child>, signal: libc::c_int) {
    let pid = child
        .as_ref()
        .and_then(Child::id)
        .expect("redis-server running") as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Short Redis timings so failures are noticed within a second.
pub fn config(redis: &Redis) -> Config {
    Config {
        redis_url: Some(redis.url()),
        redis_timeout: Duration::from_millis(500),
        redis_refresh_interval: Duration::from_millis(300),
        ..super::quiet_config()
    }
}

/// An in-process instance on `redis` with [`config`], once `/ready`.
pub async fn instance(redis: &Redis) -> TestServer {
    instance_with(config(redis)).await
}

/// An in-process instance with `config`, once `/ready`.
pub async fn instance_with(config: Config) -> TestServer {
    let server = TestServer::start(config).await;
    wait_for_ready(server.addr, StatusCode::OK).await;
    server
}

/// Polls `/ready` until it answers `status`.
pub async fn wait_for_ready(addr: SocketAddr, status: StatusCode) {
    wait_for_ready_within(addr, status, PATIENCE * 2).await
}

/// Polls `/ready` until it answers `status`, for at most `limit`.
pub async fn wait_for_ready_within(addr: SocketAddr, status: StatusCode, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if http(addr, Method::GET, "/ready", "").await.status == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `n` subscribers (instances) listen on `channel`.
pub async fn wait_for_subscribers(redis: &Redis, channel: &str, n: usize) {
    let mut conn = redis.client().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let counts: Vec<(String, usize)> = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if counts[0].1 == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel} has {} subscribers, wanted {n}",
            counts[0].1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker's `XADD wsnotify:inbox * stream … message …`.
pub async fn inbox_add(
    conn: &mut ::redis::aio::MultiplexedConnection,
    stream: &str,
    message: &str,
) {
    ::redis::cmd("XADD")
        .arg("wsnotify:inbox")
        .arg("*")
        .arg("stream")
        .arg(stream)
        .arg("message")
        .arg(message)
        .query_async::<String>(conn)
        .await
        .unwrap();
}
