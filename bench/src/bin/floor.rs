//! The floor: about the least a server can do to deliver a broadcast to N
//! WebSocket clients, so that the fan-out benchmark can measure the real
//! servers against it in the same run.
//!
//! One thread, blocking sockets, no runtime, no queue. It accepts
//! connections and answers each WebSocket upgrade with its 101 and the
//! greeting wsnotify's plain `/ws` sends, then keeps the socket and never
//! reads it again. `POST /broadcast` with `{"message": "..."}` builds one
//! frame of the message and writes it to every client, one `write()` each,
//! in the order they connected; then it answers with when that loop started
//! and ended (`CLOCK_MONOTONIC` ns, the clock the generator reads too).
//! `GET /writes` lists, for the last broadcast, when each client's write
//! returned, by the number its upgrade request gave in `X-Client`: the
//! generator tells the server's part of each delivery's latency from its
//! own with it. A client whose write fails is dropped.
//!
//! HTTP connections (publishers) are watched with `poll(2)` beside the
//! listening socket; reads and writes themselves block.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use clap::Parser;
use ring::digest;
use serde::Deserialize;
use wsnotify_bench::clock::monotonic_ns;
use wsnotify_bench::frames::{opcode, server_frame};
use wsnotify_bench::scan;

/// What wsnotify's plain `/ws` greets with.
const GREETING: &str = "🟢 Connected to server";
/// RFC 6455's key suffix for `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Pending connections the listening socket holds.
const BACKLOG: i32 = 1024;
/// Longest wait for a request head or body that has started.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(about = "The fan-out floor: one thread, blocking sockets, one write() per client")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8070)]
    port: u16,
}

#[derive(Deserialize)]
struct Body {
    message: String,
}

/// One WebSocket client.
struct Client {
    /// Its `X-Client` number (0 without one).
    id: u64,
    stream: TcpStream,
    /// When its write of the last broadcast returned.
    written_ns: u64,
}

/// A connection that sent a plain HTTP request: a publisher.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A parsed request.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a [u8],
}

struct Floor {
    clients: Vec<Client>,
    greeting: Vec<u8>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("listen on {}:{}", args.host, args.port))?;
    // SAFETY: listen(2) on our own listening socket; it only resizes the backlog.
    unsafe {
        libc::listen(listener.as_raw_fd(), BACKLOG);
    }
    eprintln!("floor listening on http://{}", listener.local_addr()?);
    let mut floor = Floor {
        clients: Vec::new(),
        greeting: server_frame(opcode::TEXT, GREETING.as_bytes()),
    };
    let mut http: Vec<HttpConn> = Vec::new();
    loop {
        let mut fds = Vec::with_capacity(http.len() + 1);
        fds.push(readable(listener.as_raw_fd()));
        fds.extend(http.iter().map(|c| readable(c.stream.as_raw_fd())));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("poll");
        }
        // Publishers first: `fds[1..]` are the connections as they were.
        for i in (0..http.len()).rev() {
            if fds[i + 1].revents != 0 && !floor.serve(&mut http[i]) {
                http.swap_remove(i);
            }
        }
        if fds[0].revents != 0 {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(conn) = floor.accept(stream) {
                        http.push(conn);
                    }
                }
                Err(err) => eprintln!("floor: accept failed: {err}"),
            }
        }
    }
}

impl Floor {
    /// Reads a new connection's first request: an upgrade makes it a
    /// client; anything else makes it an HTTP connection, served at once.
    fn accept(&mut self, mut stream: TcpStream) -> Option<HttpConn> {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            if let Some(end) = scan::find(&buf, b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !upgrade {
            let mut conn = HttpConn { stream, buf };
            return self.answer_buffered(&mut conn).then_some(conn);
        }
        let key = header(&head, "sec-websocket-key").unwrap_or("");
        let id = header(&head, "x-client")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let accept = base64::engine::general_purpose::STANDARD.encode(digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}{WS_GUID}").as_bytes(),
        ));
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        answer.extend_from_slice(&self.greeting);
        if stream.write_all(&answer).is_ok() {
            self.clients.push(Client {
                id,
                stream,
                written_ns: 0,
            });
        }
        None
    }

    /// Reads what a publisher sent and answers every whole request;
    /// `false` once the connection is closed.
    fn serve(&mut self, conn: &mut HttpConn) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match conn.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                self.answer_buffered(conn)
            }
        }
    }

    /// Answers the whole requests in `conn.buf`; `false` if the connection
    /// failed.
    fn answer_buffered(&mut self, conn: &mut HttpConn) -> bool {
        loop {
            let Some(head_end) = scan::find(&conn.buf, b"\r\n\r\n") else {
                return true;
            };
            let head = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let total = head_end + 4 + len;
            if conn.buf.len() < total {
                return true;
            }
            let mut line = head.lines().next().unwrap_or("").split_whitespace();
            let request = Request {
                method: line.next().unwrap_or(""),
                path: line.next().unwrap_or(""),
                body: &conn.buf[head_end + 4..total],
            };
            let (status, body) = self.route(&request);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.stream.write_all(reply.as_bytes()).is_err() {
                return false;
            }
            conn.buf.drain(..total);
        }
    }

    fn route(&mut self, request: &Request<'_>) -> (&'static str, String) {
        match (request.method, request.path) {
            ("POST", "/broadcast") => match serde_json::from_slice::<Body>(request.body) {
                Ok(body) => {
                    let frame = server_frame(opcode::TEXT, body.message.as_bytes());
                    let (start, end) = self.broadcast(&frame);
                    let reply = format!(
                        r#"{{"status":"Message broadcasted","clients":{},"loop_start_ns":{start},"loop_end_ns":{end}}}"#,
                        self.clients.len()
                    );
                    ("200 OK", reply)
                }
                Err(err) => ("400 Bad Request", format!(r#"{{"error":"{err}"}}"#)),
            },
            ("GET", "/writes") => {
                let lines: Vec<String> = self
                    .clients
                    .iter()
                    .map(|c| format!("{} {}", c.id, c.written_ns))
                    .collect();
                ("200 OK", lines.join("\n"))
            }
            _ => ("404 Not Found", r#"{"error":"not found"}"#.to_owned()),
        }
    }

    /// Writes `frame` to every client, one blocking `write()` each (more
    /// only if the socket takes part of it); returns when the loop started
    /// and ended.
    fn broadcast(&mut self, frame: &[u8]) -> (u64, u64) {
        let start = monotonic_ns();
        self.clients
            .retain_mut(|client| match client.stream.write_all(frame) {
                Ok(()) => {
                    client.written_ns = monotonic_ns();
                    true
                }
                Err(_) => false,
            });
        (start, monotonic_ns())
    }
}

/// A `poll(2)` entry waiting for `fd` to be readable.
fn readable(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
