//! The real `wsnotify` binary as a child process, with its log captured.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use super::PATIENCE;

/// A `wsnotify` process and everything it has logged so far.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts the binary on a free port with `env` on top of quiet defaults.
    pub async fn start(env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsnotify"));
        cmd.args(["--port", "0"])
            .env("RUST_LOG", "info")
            .env("NOTIFICATION_INTERVAL", "0")
            // As `quiet_config`: the live contract unless a test turns it on.
            .env("HISTORY_SIZE", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn wsnotify");
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Notify::new());
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (log_w, logged_w) = (log.clone(), logged.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[wsnotify] {line}");
                log_w.lock().unwrap().push(line);
                logged_w.notify_waiters();
            }
        });
        let addr = tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = logged.notified();
                if let Some(addr) = log.lock().unwrap().iter().find_map(|l| listening_addr(l)) {
                    return addr;
                }
                notified.await;
            }
        })
        .await
        .expect("wsnotify never said where it listens");
        Proc { child, addr, log }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the exit; returns whether it was successful.
    pub async fn exit(&mut self, within: Duration) -> bool {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("wsnotify still running after {within:?}"))
            .unwrap();
        status.success()
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
