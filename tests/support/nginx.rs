//! `deploy/nginx.conf` as the tests run it: the file itself, with only the
//! upstream's `server` lines, the `listen` port and (where a test says so)
//! the read timeout changed; and Debian's `nginx` binary started on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::PATIENCE;
use super::redis::free_port;

/// The shipped configuration.
pub fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))
        .expect("deploy/nginx.conf")
}

/// `deploy/nginx.conf` with its upstream's `server` line replaced by one
/// per `backends` entry (`host:port`), `listen` on `listen` (`80`,
/// `127.0.0.1:8080`), and with `proxy_read_timeout`/`proxy_send_timeout`
/// set to `timeout` if given.
pub fn config(backends: &[String], listen: &str, timeout: Option<&str>) -> String {
    let shipped = shipped();
    let mut out = String::new();
    let mut replaced = (0, 0, 0);
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("server wsnotify:8050") {
            for backend in backends {
                out.push_str(&format!(
                    "{indent}server {backend} max_fails=1 fail_timeout=10s;\n"
                ));
            }
            replaced.0 += 1;
        } else if trimmed == "listen 80;" {
            out.push_str(&format!("{indent}listen {listen};\n"));
            replaced.1 += 1;
        } else if let (Some(t), true) = (
            timeout,
            trimmed.starts_with("proxy_read_timeout ")
                || trimmed.starts_with("proxy_send_timeout "),
        ) {
            let name = trimmed.split_whitespace().next().unwrap();
            out.push_str(&format!("{indent}{name} {t};\n"));
            replaced.2 += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        (replaced.0, replaced.1),
        (1, 1),
        "deploy/nginx.conf no longer has the one upstream server line and the one listen line the tests change"
    );
    assert!(
        timeout.is_none() || replaced.2 == 2,
        "deploy/nginx.conf lost its timeouts"
    );
    out
}

/// Debian's nginx, in the foreground, on a configuration; killed on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "wsnotify-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nginx {
    /// Starts nginx in front of `backends` on a free port.
    pub async fn start(backends: &[SocketAddr]) -> Nginx {
        let port = free_port();
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        let dir = TempDir::new("nginx");
        // Everything nginx writes goes under the test's directory, so that
        // it needs neither root nor Debian's /var/lib/nginx (these are the
        // only lines added; `http {` is where they belong).
        let paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|p| format!("    {p}_temp_path {};\n", dir.0.join(p).display()))
            .collect::<String>();
        let conf = config(&backends, &format!("127.0.0.1:{port}"), None).replacen(
            "http {\n",
            &format!("http {{\n{paths}    access_log off;\n"),
            1,
        );
        let file = dir.0.join("nginx.conf");
        std::fs::write(&file, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("no nginx: apt-get install nginx (scripts/test-deps.sh does)");
        let global = format!(
            "daemon off; master_process on; pid {}; error_log stderr warn; worker_processes 1;",
            dir.0.join("nginx.pid").display()
        );
        // `worker_processes 1` from -g would duplicate the file's `auto`:
        // drop the file's line for this run.
        let conf = std::fs::read_to_string(&file)
            .unwrap()
            .replace("worker_processes auto;\n", "");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&file)
            .args(["-g", &global])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not start on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        super::kill_group(&self.child);
    }
}
