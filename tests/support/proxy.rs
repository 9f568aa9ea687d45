//! A small TCP proxy in front of one or more servers, as a load balancer
//! would be: the test chooses the backend new connections go to, can cut
//! every connection (a network change), and can refuse WebSocket upgrades
//! (a proxy that lets them through and kills them a moment later, as some
//! corporate proxies do).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrades {
    Pass,
    /// Upgrades are proxied, then the connection is killed after the 101.
    KillAfterOpen,
}

struct Route {
    backend: SocketAddr,
    upgrades: Upgrades,
}

/// The proxy; dropping it stops it.
pub struct Proxy {
    pub addr: SocketAddr,
    route: Arc<Mutex<Route>>,
    /// Bumped to cut every open connection.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = Arc::new(Mutex::new(Route {
            backend,
            upgrades: Upgrades::Pass,
        }));
        let (generation, cuts) = watch::channel(0u64);
        let task_route = route.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (backend, upgrades) = {
                    let route = task_route.lock().unwrap();
                    (route.backend, route.upgrades)
                };
                tokio::spawn(pipe(client, backend, upgrades, cuts.clone()));
            }
        });
        Proxy {
            addr,
            route,
            generation,
            task,
        }
    }

    /// New connections go to `backend`.
    pub fn route_to(&self, backend: SocketAddr) {
        self.route.lock().unwrap().backend = backend;
    }

    pub fn upgrades(&self, upgrades: Upgrades) {
        self.route.lock().unwrap().upgrades = upgrades;
    }

    /// Drops every open connection (new ones still get through).
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn pipe(
    mut client: TcpStream,
    backend: SocketAddr,
    upgrades: Upgrades,
    mut cuts: watch::Receiver<u64>,
) {
    let Ok(mut server) = TcpStream::connect(backend).await else {
        return; // the client sees a reset, as from a dead backend
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The request head, to see whether it asks for an upgrade.
    let mut head = vec![0u8; 8192];
    let n = match client.read(&mut head).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let upgrade = String::from_utf8_lossy(&head[..n])
        .to_ascii_lowercase()
        .contains("upgrade: websocket");
    if server.write_all(&head[..n]).await.is_err() {
        return;
    }
    let kill_after =
        (upgrade && upgrades == Upgrades::KillAfterOpen).then(|| Duration::from_millis(300));
    cuts.borrow_and_update();
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::select! {
        _ = copy => {}
        _ = cuts.changed() => {}
        _ = async {
            match kill_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        } => {}
    }
}
