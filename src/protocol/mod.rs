//! What travels on the wire, at the WebSocket frame level: pre-encoded
//! outbound frames, the close codes a client can observe, and the
//! reassembly and classification of inbound frames. What the frames say is
//! in [`text`] (the seeds' plain texts) and [`json`] (the typed JSON
//! protocol).
//!
//! Outbound frames are encoded once by fastwebsockets' [`Frame::write`] into a
//! [`Bytes`] (header + payload), so one broadcast to 10k clients shares one
//! allocation and each session only hands slices of it to `writev`.

use bytes::{Bytes, BytesMut};
use fastwebsockets::{CloseCode as WsCloseCode, Frame, OpCode, Payload, WebSocketError};

pub mod json;
pub mod text;

/// The two dialects a WebSocket connection may speak. They decide which
/// messages it gets and in what form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/ws`, `/ws/{client_id}`: the seeds' plain texts ([`text`]).
    Text,
    /// `/ws/rooms/{room}`: the typed JSON protocol ([`json`]).
    Json,
}

/// Close codes wsnotify sends. Each is documented in `docs/PROTOCOL.md` with
/// whether the client should reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// 1000: the client closed and the server echoes it. Reconnect: if wanted.
    Normal,
    /// 1001: the server is shutting down. Reconnect: yes, after a delay,
    /// possibly to another instance.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol. Reconnect: fix the client.
    Protocol,
    /// 1003: a binary frame on a text endpoint. Reconnect: send text.
    Unsupported,
    /// 1007: a text message that is not valid UTF-8. Reconnect: fix the client.
    InvalidPayload,
    /// 1008: the client sent more than `RATE_LIMIT` messages per second.
    /// Reconnect: yes, after a pause, and send less often.
    RateLimited,
    /// 1008: a room client sent more invalid messages than the error budget
    /// allows (bursts of 10, then one per second). Reconnect: fix the client.
    Abuse,
    /// 1009: a message larger than `MAX_MESSAGE_SIZE`. Reconnect: send less.
    TooBig,
    /// 4000: the client sent no frame (not even a pong) for `IDLE_TIMEOUT`.
    /// Reconnect: yes; answer pings to stay connected.
    IdleTimeout,
    /// 4008: the client read too slowly and its outbound queue overflowed
    /// (or too many messages waited for it during a resume). Reconnect: yes;
    /// messages queued for it were dropped, so resume with `since`.
    SlowConsumer,
    /// 4010: a message of a stream this connection follows was not the
    /// next one (it missed something: the instance lost its link to Redis,
    /// or the stream's history went back). Reconnect: at once, resuming
    /// with `since`.
    InsufficientState,
}

impl Close {
    /// The numeric close code.
    pub fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::GoingAway => 1001,
            Close::Protocol => 1002,
            Close::Unsupported => 1003,
            Close::InvalidPayload => 1007,
            Close::RateLimited | Close::Abuse => 1008,
            Close::TooBig => 1009,
            Close::IdleTimeout => 4000,
            Close::SlowConsumer => 4008,
            Close::InsufficientState => 4010,
        }
    }

    /// The reason text sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Close::Normal => "bye",
            Close::GoingAway => "server shutting down",
            Close::Protocol => "protocol error",
            Close::Unsupported => "binary frames are not supported",
            Close::InvalidPayload => "text is not valid UTF-8",
            Close::RateLimited => "rate limit exceeded",
            Close::Abuse => "too many invalid messages",
            Close::TooBig => "message too big",
            Close::IdleTimeout => "idle timeout: no frame from the client",
            Close::SlowConsumer => "slow consumer: outbound queue full",
            Close::InsufficientState => "insufficient state: reconnect and resume",
        }
    }

    /// The close this server answers a read error with, or `None` when the
    /// peer is simply gone (EOF, reset) and no frame can be sent.
    pub fn for_read_error(err: &WebSocketError) -> Option<Close> {
        match err {
            WebSocketError::UnexpectedEOF
            | WebSocketError::IoError(_)
            | WebSocketError::ConnectionClosed => None,
            WebSocketError::FrameTooLarge => Some(Close::TooBig),
            WebSocketError::InvalidUTF8 => Some(Close::InvalidPayload),
            _ => Some(Close::Protocol),
        }
    }

    /// The encoded close frame.
    pub fn frame(self) -> Bytes {
        encode(Frame::close(self.code(), self.reason().as_bytes()))
    }
}

/// Encodes a server (unmasked) frame once into shareable bytes.
pub fn encode(mut frame: Frame<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(frame.payload.len() + 14);
    let len = frame.write(&mut buf).len();
    buf.truncate(len);
    Bytes::from(buf)
}

/// A text frame carrying `text`, encoded once.
pub fn text_frame(text: &str) -> Bytes {
    encode(Frame::text(Payload::Borrowed(text.as_bytes())))
}

/// A ping with an empty payload, for heartbeats.
pub fn ping_frame() -> Bytes {
    encode(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")))
}

/// The pong answering a ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode(Frame::pong(Payload::Borrowed(payload)))
}

/// The close frame echoing a client's close `code` (RFC 6455 §5.5.1).
pub fn close_echo(code: u16) -> Bytes {
    encode(Frame::close(code, b""))
}

/// What a client's close frame asks for, or the close we answer a bad one with.
pub fn parse_client_close(payload: &[u8]) -> Result<u16, Close> {
    match payload.len() {
        0 => Ok(Close::Normal.code()),
        1 => Err(Close::Protocol),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !WsCloseCode::from(code).is_allowed() {
                return Err(Close::Protocol);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Close::InvalidPayload);
            }
            Ok(code)
        }
    }
}

/// Largest payload of a control frame (ping, pong, close), RFC 6455 §5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One data frame as read from the client, detached from the reader's buffer.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Bytes,
}

impl Inbound {
    /// Takes ownership of a frame's payload without copying when possible.
    pub fn from_frame(frame: Frame<'_>) -> Self {
        let payload = match frame.payload {
            Payload::Bytes(b) => b.freeze(),
            other => Bytes::copy_from_slice(&other),
        };
        Inbound {
            fin: frame.fin,
            opcode: frame.opcode,
            payload,
        }
    }
}

/// What the session does with one inbound frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text message.
    Text(String),
    /// A ping to answer with this payload.
    Ping(Bytes),
    /// A frame that needs no answer (pong, a non-final fragment).
    Nothing,
    /// The client closed with this code; echo it and end.
    ClientClose(u16),
    /// The client broke the protocol; close with this code.
    Violation(Close),
}

/// Reassembles fragmented text messages and classifies frames. Pure, so the
/// protocol rules are tested without sockets.
#[derive(Debug)]
pub struct Assembler {
    max_size: usize,
    /// The fragments of a text message in progress; `None` between messages.
    partial: Option<BytesMut>,
}

impl Assembler {
    /// An assembler refusing messages longer than `max_size` bytes.
    pub fn new(max_size: usize) -> Self {
        Assembler {
            max_size,
            partial: None,
        }
    }

    /// Classifies one frame, appending fragments to the message in progress.
    pub fn push(&mut self, frame: Inbound) -> Event {
        let control = matches!(frame.opcode, OpCode::Ping | OpCode::Pong | OpCode::Close);
        if control && frame.payload.len() > MAX_CONTROL_PAYLOAD {
            // RFC 6455 §5.5; fastwebsockets checks only pings.
            return Event::Violation(Close::Protocol);
        }
        match frame.opcode {
            OpCode::Text if self.partial.is_some() => Event::Violation(Close::Protocol),
            OpCode::Text if frame.payload.len() > self.max_size => Event::Violation(Close::TooBig),
            OpCode::Text if frame.fin => text_event(&frame.payload),
            OpCode::Text => {
                self.partial = Some(BytesMut::from(&frame.payload[..]));
                Event::Nothing
            }
            OpCode::Continuation => self.continuation(frame),
            OpCode::Binary => Event::Violation(Close::Unsupported),
            OpCode::Ping => Event::Ping(frame.payload),
            OpCode::Pong => Event::Nothing,
            OpCode::Close => match parse_client_close(&frame.payload) {
                Ok(code) => Event::ClientClose(code),
                Err(close) => Event::Violation(close),
            },
        }
    }

    fn continuation(&mut self, frame: Inbound) -> Event {
        let Some(partial) = self.partial.as_mut() else {
            return Event::Violation(Close::Protocol);
        };
        if partial.len() + frame.payload.len() > self.max_size {
            return Event::Violation(Close::TooBig);
        }
        partial.extend_from_slice(&frame.payload);
        if !frame.fin {
            return Event::Nothing;
        }
        let message = self.partial.take().unwrap_or_default();
        text_event(&message)
    }
}

fn text_event(payload: &[u8]) -> Event {
    match std::str::from_utf8(payload) {
        Ok(text) => Event::Text(text.to_owned()),
        Err(_) => Event::Violation(Close::InvalidPayload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Inbound {
        Inbound {
            fin,
            opcode,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn text_frame_is_an_unmasked_final_text_frame() {
        let f = text_frame("hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
        let long = text_frame(&"x".repeat(300));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let f = Close::SlowConsumer.frame();
        assert_eq!(f[0], 0x88);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4008);
        assert_eq!(&f[4..], Close::SlowConsumer.reason().as_bytes());
    }

    #[test]
    fn fragments_are_reassembled() {
        let mut a = Assembler::new(16);
        assert_eq!(a.push(frame(false, OpCode::Text, b"he")), Event::Nothing);
        assert_eq!(
            a.push(frame(true, OpCode::Ping, b"p")),
            Event::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(
            a.push(frame(false, OpCode::Continuation, b"ll")),
            Event::Nothing
        );
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b"o")),
            Event::Text("hello".into())
        );
        assert_eq!(
            a.push(frame(true, OpCode::Text, b"again")),
            Event::Text("again".into())
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let bytes = "🟢".as_bytes();
        let mut a = Assembler::new(16);
        a.push(frame(false, OpCode::Text, &bytes[..1]));
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, &bytes[1..])),
            Event::Text("🟢".into())
        );
    }

    #[test]
    fn violations_get_their_close_codes() {
        let mut a = Assembler::new(4);
        assert_eq!(
            a.push(frame(true, OpCode::Binary, b"x")),
            Event::Violation(Close::Unsupported)
        );
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b"x")),
            Event::Violation(Close::Protocol)
        );
        assert_eq!(
            a.push(frame(true, OpCode::Text, &[0xff])),
            Event::Violation(Close::InvalidPayload)
        );
        a.push(frame(false, OpCode::Text, b"abc"));
        assert_eq!(
            a.push(frame(true, OpCode::Text, b"x")),
            Event::Violation(Close::Protocol)
        );
        let mut b = Assembler::new(4);
        b.push(frame(false, OpCode::Text, b"abc"));
        assert_eq!(
            b.push(frame(true, OpCode::Continuation, b"de")),
            Event::Violation(Close::TooBig)
        );
        let mut c = Assembler::new(4);
        assert_eq!(
            c.push(frame(true, OpCode::Text, b"12345")),
            Event::Violation(Close::TooBig)
        );
        assert_eq!(
            c.push(frame(false, OpCode::Text, b"12345")),
            Event::Violation(Close::TooBig)
        );
        let big = [b'p'; 126];
        assert_eq!(
            c.push(frame(true, OpCode::Pong, &big)),
            Event::Violation(Close::Protocol)
        );
        assert_eq!(
            c.push(frame(true, OpCode::Close, &big)),
            Event::Violation(Close::Protocol)
        );
    }

    #[test]
    fn client_close_frames_are_checked() {
        assert_eq!(parse_client_close(b""), Ok(1000));
        assert_eq!(parse_client_close(&[0x03, 0xe8, b'o', b'k']), Ok(1000));
        assert_eq!(parse_client_close(&[0x03]), Err(Close::Protocol));
        assert_eq!(
            parse_client_close(&1005u16.to_be_bytes()),
            Err(Close::Protocol)
        );
        assert_eq!(
            parse_client_close(&[0x03, 0xe8, 0xff]),
            Err(Close::InvalidPayload)
        );
    }
}
