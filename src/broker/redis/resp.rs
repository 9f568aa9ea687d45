//! The replies of a connection in subscribed mode, RESP2: the flat arrays
//! (`smessage`, `ssubscribe`, `sunsubscribe`) and errors that a shard
//! subscription reads, and how such a connection is opened. A broken stream
//! is an error, never a panic or a huge allocation.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// One reply of a connection in subscribed mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    Subscribed(String),
    Unsubscribed(String),
    Error(String),
    Pong,
    /// The connection ended.
    Closed,
}

/// Connects to `addr` (`host:port`) and authenticates.
pub async fn open(
    addr: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> std::io::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    if let Some(password) = password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = username {
            auth.arg(user);
        }
        auth.arg(password);
        writer.write_all(&auth.get_packed_command()).await?;
        if let Reply::Error(err) = read_reply(&mut reader).await? {
            return Err(std::io::Error::other(err));
        }
    }
    // Nothing was read past the AUTH reply: the buffer is empty.
    Ok((reader.into_inner(), writer))
}

/// Reads one reply of a connection in subscribed mode (RESP2).
pub async fn read_reply<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Reply> {
    let line = read_line(reader).await?;
    let (kind, rest) = split_type(&line)?;
    match kind {
        "-" => Ok(Reply::Error(rest.to_owned())),
        "+" if rest.eq_ignore_ascii_case("PONG") => Ok(Reply::Pong),
        "+" | ":" => Ok(Reply::Pong),
        "*" => {
            let n: usize = rest.parse().map_err(|_| bad("array length"))?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_item(reader).await?);
            }
            Ok(classify(items))
        }
        _ => Err(bad("reply type")),
    }
}

/// An array element: a bulk string, or an integer as its digits.
async fn read_item<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Vec<u8>> {
    let line = read_line(reader).await?;
    let (kind, rest) = split_type(&line)?;
    match kind {
        ":" | "+" => Ok(rest.as_bytes().to_vec()),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
            if len < 0 {
                return Ok(Vec::new());
            }
            // Nothing wsnotify publishes is near this (messages are at most
            // 16 MiB); a larger length is a broken stream, not an allocation.
            if len > 64 << 20 {
                return Err(bad("bulk length"));
            }
            let mut bytes = vec![0u8; len as usize + 2];
            reader.read_exact(&mut bytes).await?;
            bytes.truncate(len as usize);
            Ok(bytes)
        }
        _ => Err(bad("array element")),
    }
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(bad("empty line"));
    }
    Ok(line)
}

/// A reply line's type byte and the rest.
fn split_type(line: &str) -> std::io::Result<(&str, &str)> {
    if !line.is_char_boundary(1) {
        return Err(bad("reply type"));
    }
    Ok(line.split_at(1))
}

fn classify(items: Vec<Vec<u8>>) -> Reply {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match items.as_slice() {
        [kind, channel, payload]
            if kind.eq_ignore_ascii_case(b"smessage") || kind.eq_ignore_ascii_case(b"message") =>
        {
            Reply::Message {
                channel: text(channel),
                payload: payload.clone(),
            }
        }
        [kind, channel, _] if kind.eq_ignore_ascii_case(b"ssubscribe") => {
            Reply::Subscribed(text(channel))
        }
        [kind, channel, _] if kind.eq_ignore_ascii_case(b"sunsubscribe") => {
            Reply::Unsubscribed(text(channel))
        }
        _ => Reply::Pong,
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad RESP {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replies(bytes: &[u8]) -> Vec<Reply> {
        let mut reader = BufReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match read_reply(&mut reader).await {
                Ok(reply) => out.push(reply),
                Err(err) => {
                    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn subscribed_mode_replies_are_read() {
        let wire = b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n\
            *3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$6\r\na\r\nb\xffc\r\n\
            *3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n\
            -MOVED 3999 127.0.0.1:7002\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(
            replies(wire).await,
            [
                Reply::Subscribed("ch".into()),
                Reply::Message {
                    channel: "ch".into(),
                    payload: b"a\r\nb\xffc".to_vec(),
                },
                Reply::Unsubscribed("ch".into()),
                Reply::Error("MOVED 3999 127.0.0.1:7002".into()),
                Reply::Pong,
            ]
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let wires: [&[u8]; 5] = [
            b"?\r\n",
            b"*x\r\n",
            b"*1\r\n$-x\r\n",
            b"\r\n",
            "\u{e9}t\r\n".as_bytes(),
        ];
        for wire in wires {
            let mut reader = BufReader::new(wire);
            assert!(read_reply(&mut reader).await.is_err(), "{wire:?}");
        }
    }
}
