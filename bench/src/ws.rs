//! A minimal WebSocket client for load generation: the upgrade request is
//! written by hand (no client library allocates per connection), frames
//! are read with fastwebsockets ([`connect`]), or the raw socket is handed
//! over after the 101 ([`handshake`]) for the lean reader of
//! [`crate::frames`]. The write half is kept only to hold the socket open:
//! the generator's clients never send (but for a subscription).

use std::io::Cursor;
use std::net::SocketAddr;

use anyhow::{Result, bail};
use fastwebsockets::{Frame, Role, WebSocketError, WebSocketRead, after_handshake_split};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Chain};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The read side of a client: what the server sent after its 101 comes
/// first, then the socket.
pub type Reader = WebSocketRead<Chain<Cursor<Vec<u8>>, OwnedReadHalf>>;

/// One connected client.
pub struct Client {
    pub reader: Reader,
    /// Dropping it (with the reader) closes the connection.
    pub writer: OwnedWriteHalf,
}

/// Opens a WebSocket to `path` (with its query) on `addr` and returns once
/// the server answered 101.
pub async fn connect(addr: SocketAddr, path: &str) -> Result<Client> {
    let (stream, rest) = handshake(addr, path, &[]).await?;
    let (read, writer) = stream.into_split();
    let (mut reader, _) = after_handshake_split(
        Cursor::new(rest).chain(read),
        tokio::io::sink(),
        Role::Client,
    );
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    Ok(Client { reader, writer })
}

/// Sends the upgrade request for `path` with `headers` (`Name: value`
/// lines) and reads the answer; returns the socket and the bytes the
/// server sent after its 101 (the start of its first frames).
pub async fn handshake(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the handshake");
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buf[..head_end]);
        bail!(
            "upgrade of {path} refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    let rest = buf.split_off(head_end);
    Ok((stream, rest))
}

/// Reads the next frame (auto-pong and auto-close are off, so nothing is
/// ever written back).
pub async fn read_frame(reader: &mut Reader) -> Result<Frame<'_>, WebSocketError> {
    reader
        .read_frame(&mut |_| async { Ok::<(), std::io::Error>(()) })
        .await
}
