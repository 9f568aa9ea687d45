//! The deploy test: `deploy/compose.yaml` as a user runs it, with images
//! built offline by the scripts `docs/DEPLOY.md` gives (this test's own
//! binary in the wsnotify image), Redis, three replicas and nginx on
//! `deploy/nginx.conf`. Through nginx: the greeting, a broadcast to clients
//! on every replica exactly once, a replica stopped as `docker stop` does
//! (its clients follow the drain notice to the others and lose nothing,
//! its `/ready` is 503 meanwhile), and a quiet WebSocket that outlives
//! nginx's read timeout thanks to the heartbeats.
//!
//! The timings are shortened so that this takes seconds: nginx's
//! `proxy_read_timeout` (3600 s shipped) is 4 s here, the heartbeat 1 s,
//! the drain spread 2 s. Run alone with `just deploy-test`; `just test`
//! runs it when Docker is there. Without Docker it says so and passes,
//! unless `WSNOTIFY_REQUIRE_DOCKER` is set (CI sets it where Docker runs).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::nginx::{TempDir, config};
use support::redis::free_port;
use support::resume::{positioned, ws_client};
use support::*;
use tokio::sync::watch;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One image script of `scripts/`: the image's name.
fn image(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(Command::new("bash")
        .arg(Path::new(ROOT).join("scripts").join(script))
        .args(args)
        .envs(env.iter().copied()));
    stdout(&out).lines().last().unwrap_or_default().to_owned()
}

/// A compose project; `down` on drop.
struct Project {
    name: String,
    env: Vec<(String, String)>,
    v1: bool,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.v1 {
            Command::new("docker-compose")
        } else {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        };
        cmd.args(["-p", &self.name, "-f"])
            .arg(Path::new(ROOT).join("deploy/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self
                .command(&["logs", "--no-color", "--tail", "40"])
                .output();
            if let Ok(logs) = logs {
                eprintln!("{}", String::from_utf8_lossy(&logs.stdout));
            }
        }
        let _ = self.command(&["down", "-v", "-t", "1"]).output();
    }
}

fn docker_ready() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The address of a replica's container on the compose network.
fn address(container: &str) -> SocketAddr {
    let out = run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container,
    ]));
    format!("{}:8050", stdout(&out)).parse().unwrap()
}

/// A replica's own count of connected clients.
async fn local_connections(replica: SocketAddr) -> u64 {
    let metrics = http(replica, Method::GET, "/metrics", "").await.body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsnotify_active_connections "))
        .and_then(|n| n.parse().ok())
        .expect("wsnotify_active_connections")
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn three_replicas_behind_nginx_fan_out_drain_and_keep_quiet_connections() {
    if !docker_ready() {
        assert!(
            std::env::var_os("WSNOTIFY_REQUIRE_DOCKER").is_none(),
            "WSNOTIFY_REQUIRE_DOCKER is set but docker does not answer"
        );
        eprintln!("deploy test skipped: no Docker engine (docker info failed)");
        return;
    }
    let started = Instant::now();
    let wsnotify = image(
        "wsnotify-image.sh",
        &[env!("CARGO_BIN_EXE_wsnotify")],
        &[("WSNOTIFY_IMAGE", "wsnotify:deploy-test")],
    );
    let redis = image("redis-image.sh", &[], &[]);
    let nginx = image("nginx-image.sh", &[], &[]);

    // deploy/nginx.conf, with the read timeout shortened to 4 s.
    let dir = TempDir::new("deploy");
    let conf = dir.0.join("nginx.conf");
    std::fs::write(&conf, config(&["wsnotify:8050".into()], "80", Some("4s"))).unwrap();
    let port = free_port();
    let env: Vec<(String, String)> = [
        ("WSNOTIFY_IMAGE", wsnotify.as_str()),
        ("REDIS_IMAGE", &redis),
        ("NGINX_IMAGE", &nginx),
        ("NGINX_PORT", &port.to_string()),
        ("NGINX_CONF", conf.to_str().unwrap()),
        ("HEARTBEAT_INTERVAL", "1"),
        ("HISTORY_SIZE", "1000"),
        ("DRAIN_RECONNECT_SPREAD", "2"),
        ("SHUTDOWN_TIMEOUT", "20"),
        ("STOP_GRACE_PERIOD", "30s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let v1 = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let project = Project {
        name: format!("wsnotify-deploy-{}", std::process::id()),
        env,
        v1,
    };
    project.run(&["up", "-d", "--scale", "wsnotify=3"]);
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("nginx answers /ready", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect(front).await.is_ok()
            && http(front, Method::GET, "/ready", "").await.status == StatusCode::OK
    })
    .await;
    let containers = stdout(&project.run(&["ps", "-q", "wsnotify"]));
    let replicas: Vec<(String, SocketAddr)> = containers
        .lines()
        .map(|id| (id.to_owned(), address(id)))
        .collect();
    assert_eq!(replicas.len(), 3, "three replicas: {containers}");
    let up = started.elapsed();

    // The seed greeting through nginx. This client then stays quiet.
    let mut quiet = connect(front, "/ws").await;
    let deadline = Instant::now() + PATIENCE;
    let quiet_on = 'found: loop {
        for (id, addr) in &replicas {
            if local_connections(*addr).await == 1 {
                break 'found id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the quiet client is not counted anywhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Resuming JSON clients through nginx, spread over the replicas.
    let users: Vec<String> = (0..9).map(|i| format!("u{i}")).collect();
    let (done, published) = watch::channel(None);
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            let ready = Some(ready.clone());
            tokio::spawn(ws_client(front, front, u.clone(), published.clone(), ready))
        })
        .collect();
    wait_until("every client is connected", PATIENCE * 2, || async {
        let mut total = 0;
        for (_, addr) in &replicas {
            total += local_connections(*addr).await;
        }
        total == 10
    })
    .await;
    // Publishing begins once every client has its positions (it starts at
    // the heads: an earlier message would not be its to get).
    positioned(&ready, users.len()).await;
    let mut counts = Vec::new();
    for (_, addr) in &replicas {
        counts.push(local_connections(*addr).await);
    }
    assert!(
        counts.iter().all(|&n| n >= 1),
        "clients on every replica: {counts:?}"
    );

    // The replica to stop: one without the quiet client, with clients.
    let (stopped, stopped_addr) = replicas
        .iter()
        .find(|(id, _)| *id != quiet_on)
        .cloned()
        .unwrap();
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut publish = async |n: usize| {
        let text = format!("m{n}");
        let (path, stream) = if n.is_multiple_of(3) {
            ("/broadcast".to_owned(), "broadcast".to_owned())
        } else {
            let user = &users[n % users.len()];
            (format!("/notify/{user}"), format!("user:{user}"))
        };
        let body = serde_json::json!({ "message": text }).to_string();
        let reply = http(front, Method::POST, &path, &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        sent.entry(stream).or_default().push(text);
    };
    for n in 0..20 {
        publish(n).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // docker stop (what `docker-compose stop` does to each container):
    // SIGTERM, then up to the container's stop timeout, which compose set
    // from stop_grace_period.
    let timeout = stdout(&run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.Config.StopSignal}} {{.Config.StopTimeout}}",
        &stopped,
    ])));
    assert_eq!(
        timeout, "SIGTERM 30",
        "STOPSIGNAL and stop_grace_period reach the container"
    );
    let stopping = tokio::task::spawn_blocking({
        let id = stopped.clone();
        move || run(Command::new("docker").args(["stop", &id]))
    });
    let mut saw_503 = false;
    for n in 20..80 {
        publish(n).await;
        if !saw_503
            && tokio::net::TcpStream::connect(stopped_addr).await.is_ok()
            && http(stopped_addr, Method::GET, "/ready", "").await.status
                == StatusCode::SERVICE_UNAVAILABLE
        {
            saw_503 = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.send(Some(sent.clone())).unwrap();
    for (user, client) in users.iter().zip(clients) {
        let got = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .unwrap_or_else(|_| panic!("{user} never got everything"))
            .unwrap();
        for stream in [format!("user:{user}"), "broadcast".to_owned()] {
            assert_eq!(
                got.get(&stream).cloned().unwrap_or_default(),
                sent.get(&stream).cloned().unwrap_or_default(),
                "{user}, {stream}: every message exactly once, in order, across the stop"
            );
        }
    }
    stopping.await.unwrap();
    assert!(
        saw_503,
        "the stopped replica's /ready was 503 during its drain"
    );
    let state = stdout(&run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.State.ExitCode}}",
        &stopped,
    ])));
    let logs = run(Command::new("docker").args(["logs", &stopped]));
    let logs =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert_eq!(state, "0", "the stopped replica exited 0:\n{logs}");
    assert!(
        logs.contains("graceful shutdown completed"),
        "its clients left by themselves, before the deadline:\n{logs}"
    );

    // Quiet for longer than nginx's (shortened) read timeout, yet open: the
    // server's pings keep data flowing. It still gets a broadcast.
    let since_connect = started.elapsed() - up;
    if since_connect < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_secs(9) - since_connect).await;
    }
    let reply = broadcast(front, "still there?").await;
    assert_eq!(reply.status, StatusCode::OK);
    loop {
        let text = next_text(&mut quiet).await;
        if text == "still there?" {
            break;
        }
        assert!(
            text.starts_with('m'),
            "the broadcasts so far, then ours: {text}"
        );
    }
    // And the timeout is real: a long-poll that hears nothing is cut by
    // nginx at 4 s (504), where the heartbeat-less request has no pings.
    let head = http(front, Method::GET, "/poll?user=nobody", "")
        .await
        .json();
    let next = support::history::encode(head["next"].as_str().expect("next"));
    let poll_started = Instant::now();
    let poll = http_slow(front, &format!("/poll?user=nobody&wait=20&since={next}")).await;
    let waited = poll_started.elapsed();
    assert_eq!(poll.status, StatusCode::GATEWAY_TIMEOUT, "{}", poll.body);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(15),
        "cut after {waited:?}"
    );
    eprintln!(
        "deploy test: images and compose up in {up:?}, all in {:?}",
        started.elapsed()
    );
}

/// `GET path`, allowed to take longer than [`PATIENCE`].
async fn http_slow(addr: SocketAddr, path: &str) -> Reply {
    use http_body_util::BodyExt;
    tokio::time::timeout(Duration::from_secs(40), async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer to {path}"))
}
