//! A minimal keep-alive HTTP/1.1 client: one request at a time on one
//! connection, bodies with `Content-Length` (every wsnotify reply but
//! `/sse` has one). Enough for publishers, pollers and `/metrics`, with no
//! per-request allocation beyond the body. A server that answers
//! `Connection: close` (sockudo does on every API reply) gets a new
//! connection for the next request.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scan;

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where a publish went: its stream's epoch and offset (history on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub epoch: String,
    pub offset: u64,
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The last reply said `Connection: close`: the next write reconnects.
    closing: bool,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// Where it is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and reads its reply.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<Reply> {
        self.send(method, path, body).await?;
        self.reply().await
    }

    /// Writes one request (the reply is read with [`Conn::reply`]).
    pub async fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<()> {
        let mut wire = Vec::new();
        self.encode(&mut wire, method, path, body);
        self.write(&wire).await
    }

    /// Appends one request to `wire`, for [`Conn::write`]: requests
    /// written together are pipelined, their replies read in order.
    pub fn encode(&self, wire: &mut Vec<u8>, method: &str, path: &str, body: Option<&str>) {
        let addr = self.addr;
        let request = match body {
            Some(body) => format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        };
        wire.extend_from_slice(request.as_bytes());
    }

    /// Writes requests [`Conn::encode`]d into `wire` (on a new connection
    /// if the server closed the last one).
    pub async fn write(&mut self, wire: &[u8]) -> Result<()> {
        if self.closing {
            self.stream = TcpStream::connect(self.addr).await?;
            self.stream.set_nodelay(true)?;
            self.buf.clear();
            self.closing = false;
        }
        self.stream.write_all(wire).await?;
        Ok(())
    }

    /// Reads one reply.
    pub async fn reply(&mut self) -> Result<Reply> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("a status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("a reply without content-length")?;
                self.closing |= head.lines().any(|l| {
                    l.strip_prefix("connection:")
                        .is_some_and(|v| v.trim() == "close")
                });
                let total = end + 4 + len;
                while self.buf.len() < total {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed mid-reply");
                    }
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok(Reply { status, body });
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed before a reply");
            }
        }
    }

    /// `POST /broadcast` with `message`; the position it got, if any.
    pub async fn broadcast(&mut self, message: &str) -> Result<Option<Placed>> {
        let body = format!("{{\"message\":\"{message}\"}}");
        let reply = self.request("POST", "/broadcast", Some(&body)).await?;
        placed(reply)
    }

    /// `POST /notify/{user}` with `message`; the position it got, if any.
    pub async fn notify(&mut self, user: &str, message: &str) -> Result<Option<Placed>> {
        let body = format!("{{\"message\":\"{message}\"}}");
        let reply = self
            .request("POST", &format!("/notify/{user}"), Some(&body))
            .await?;
        placed(reply)
    }

    /// `GET /metrics`: the value of each `wanted` metric (NaN if absent).
    pub async fn metrics(&mut self, wanted: &[&str]) -> Result<Vec<f64>> {
        let reply = self.request("GET", "/metrics", None).await?;
        let text = reply.text();
        Ok(wanted
            .iter()
            .map(|name| {
                text.lines()
                    .find_map(|line| {
                        let rest = line.strip_prefix(name)?;
                        rest.strip_prefix(' ')?.trim().parse().ok()
                    })
                    .unwrap_or(f64::NAN)
            })
            .collect())
    }
}

fn placed(reply: Reply) -> Result<Option<Placed>> {
    if reply.status != 200 {
        bail!("publish refused: {} {}", reply.status, reply.text());
    }
    let Some(offset) = scan::u64_field(&reply.body, b"offset") else {
        return Ok(None);
    };
    let epoch = scan::str_field(&reply.body, b"epoch").unwrap_or_default();
    Ok(Some(Placed {
        epoch: String::from_utf8_lossy(epoch).into_owned(),
        offset,
    }))
}
