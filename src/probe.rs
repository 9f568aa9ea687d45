//! `wsnotify healthcheck`: asks a running server's `GET /ready` and turns
//! the answer into an exit status, so that a container's `HEALTHCHECK`
//! needs no curl in the image. It reads the same `HOST` and `PORT` as the
//! server; a wildcard host (`0.0.0.0`, `::`) is probed on loopback.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the probe may take in all. Default: 3 s (Docker's default
/// `--timeout` is 30 s; a healthy server answers in well under 1 ms).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the server is not ready.
#[derive(Debug)]
pub enum ProbeError {
    /// Nothing answered at the address.
    Connect(String, std::io::Error),
    /// The server took longer than the probe's timeout.
    Timeout(Duration),
    /// The answer was not HTTP.
    Garbled(String),
    /// `/ready` answered, but not 200 (503 while draining or Redis is away).
    NotReady(u16),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Connect(addr, err) => write!(f, "cannot connect to {addr}: {err}"),
            ProbeError::Timeout(after) => write!(f, "no answer within {after:?}"),
            ProbeError::Garbled(line) => write!(f, "not an HTTP answer: {line:?}"),
            ProbeError::NotReady(status) => write!(f, "/ready answered {status}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// The address to probe for a server listening on `host`.
fn target(host: &str, port: u16) -> String {
    match host {
        "0.0.0.0" | "" => format!("127.0.0.1:{port}"),
        "::" | "[::]" => format!("[::1]:{port}"),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// `GET /ready` on the server at `host:port`: `Ok` for 200.
pub async fn ready(host: &str, port: u16, within: Duration) -> Result<(), ProbeError> {
    let addr = target(host, port);
    tokio::time::timeout(within, ask(&addr))
        .await
        .map_err(|_| ProbeError::Timeout(within))?
}

async fn ask(addr: &str) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(addr.to_owned(), e))?;
    let request = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Connect(addr.to_owned(), e))?;
    // The status line is all we need; it comes first.
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Connect(addr.to_owned(), e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::Garbled(line.to_owned()))?;
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::NotReady(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn wildcard_hosts_are_probed_on_loopback() {
        assert_eq!(target("0.0.0.0", 8050), "127.0.0.1:8050");
        assert_eq!(target("::", 80), "[::1]:80");
        assert_eq!(target("::1", 80), "[::1]:80");
        assert_eq!(target("localhost", 1), "localhost:1");
    }

    /// A one-shot server that answers `reply` to whatever it is asked.
    async fn answering(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        });
        port
    }

    #[tokio::test]
    async fn status_lines_decide() {
        let ok = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert!(ready("127.0.0.1", ok, DEFAULT_PROBE_TIMEOUT).await.is_ok());
        let draining = answering(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(matches!(
            ready("127.0.0.1", draining, DEFAULT_PROBE_TIMEOUT).await,
            Err(ProbeError::NotReady(503))
        ));
        let garbled = answering(b"SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(
            ready("127.0.0.1", garbled, DEFAULT_PROBE_TIMEOUT).await,
            Err(ProbeError::Garbled(_))
        ));
    }

    #[tokio::test]
    async fn nothing_listening_and_silence_are_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepted by the kernel, never answered.
        let silent = ready("127.0.0.1", port, Duration::from_millis(200)).await;
        assert!(matches!(silent, Err(ProbeError::Timeout(_))), "{silent:?}");
        drop(listener);
        assert!(matches!(
            ready("127.0.0.1", port, DEFAULT_PROBE_TIMEOUT).await,
            Err(ProbeError::Connect(..))
        ));
    }
}
