//! The lean reader's frame scanner: a server's WebSocket byte stream, read
//! raw from the socket, cut into frames by their headers alone.
//!
//! One generator core reads every delivery of 10k clients, so what it does
//! per frame bounds what it can measure. This scanner keeps a few bytes of
//! state per connection (no buffer of its own: the caller reads into one
//! shared buffer), parses the 2–10 header bytes of each frame, and skips
//! the payload without looking at it. Optionally it keeps the first bytes
//! of each payload (`capture`), for the checks that read the generator's
//! stamp (see [`crate::clock::stamped`]).
//!
//! Server frames are unmasked; a masked frame, a reserved bit (no extension
//! is ever negotiated) or an unknown opcode is a [`BadFrame`]: the stream
//! is out of step, which is how a miscount would show.

/// The most payload bytes [`Scanner`] keeps per frame.
pub const MAX_CAPTURE: usize = 96;

/// A frame's opcode.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One complete frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub opcode: u8,
    pub fin: bool,
    /// Payload length.
    pub len: u64,
    /// The first `min(len, capture)` payload bytes (empty without capture).
    pub prefix: &'a [u8],
}

/// The stream is not a valid sequence of server frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame {
    /// The first header byte of the offending frame.
    pub first: u8,
    pub second: u8,
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not a server frame header: {:#04x} {:#04x}",
            self.first, self.second
        )
    }
}

impl std::error::Error for BadFrame {}

/// Where a connection's stream is between two reads.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Header bytes collected so far, when a header spans two reads.
    head: [u8; 10],
    have: usize,
    /// Inside a payload: the frame's header fields and what is still to come.
    in_payload: bool,
    opcode: u8,
    fin: bool,
    len: u64,
    left: u64,
    /// Payload bytes to keep per frame, and those kept of the current one.
    capture: usize,
    prefix: [u8; MAX_CAPTURE],
    kept: usize,
}

impl Scanner {
    /// A scanner at a frame boundary, keeping the first `capture` bytes of
    /// each payload (at most [`MAX_CAPTURE`]).
    pub fn new(capture: usize) -> Scanner {
        Scanner {
            head: [0; 10],
            have: 0,
            in_payload: false,
            opcode: 0,
            fin: false,
            len: 0,
            left: 0,
            capture: capture.min(MAX_CAPTURE),
            prefix: [0; MAX_CAPTURE],
            kept: 0,
        }
    }

    /// Changes how many payload bytes are kept, from the next frame on.
    pub fn set_capture(&mut self, capture: usize) {
        self.capture = capture.min(MAX_CAPTURE);
    }

    /// Whether the scanner sits between two frames.
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.have == 0
    }

    /// Consumes `bytes`, calling `on_frame` for every frame that completes
    /// in them.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), BadFrame> {
        while !bytes.is_empty() {
            if self.in_payload {
                let take = (self.left.min(bytes.len() as u64)) as usize;
                if self.kept < self.capture {
                    let keep = take.min(self.capture - self.kept);
                    self.prefix[self.kept..self.kept + keep].copy_from_slice(&bytes[..keep]);
                    self.kept += keep;
                }
                self.left -= take as u64;
                bytes = &bytes[take..];
                if self.left == 0 {
                    self.in_payload = false;
                    on_frame(self.frame());
                }
                continue;
            }
            // A header: parsed in place when it is whole in `bytes`, else
            // collected across reads.
            let used = if self.have == 0 {
                match header(bytes)? {
                    Some((used, fields)) => {
                        self.start(fields);
                        used
                    }
                    None => {
                        self.head[..bytes.len()].copy_from_slice(bytes);
                        self.have = bytes.len();
                        bytes.len()
                    }
                }
            } else {
                let take = bytes.len().min(self.head.len() - self.have);
                self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                let collected = self.have + take;
                match header(&self.head[..collected])? {
                    Some((used, fields)) => {
                        self.start(fields);
                        let from_bytes = used - self.have;
                        self.have = 0;
                        from_bytes
                    }
                    None => {
                        self.have = collected;
                        take
                    }
                }
            };
            bytes = &bytes[used..];
            if self.in_payload && self.left == 0 {
                self.in_payload = false;
                on_frame(self.frame());
            }
        }
        Ok(())
    }

    fn start(&mut self, Header { opcode, fin, len }: Header) {
        self.in_payload = true;
        self.opcode = opcode;
        self.fin = fin;
        self.len = len;
        self.left = len;
        self.kept = 0;
    }

    fn frame(&self) -> Frame<'_> {
        Frame {
            opcode: self.opcode,
            fin: self.fin,
            len: self.len,
            prefix: &self.prefix[..self.kept],
        }
    }
}

/// A frame header's fields.
struct Header {
    opcode: u8,
    fin: bool,
    len: u64,
}

/// A whole header at the start of `bytes`: its length and fields; `None`
/// if more bytes are needed.
fn header(bytes: &[u8]) -> Result<Option<(usize, Header)>, BadFrame> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    let bad = BadFrame { first, second };
    let opcode = first & 0x0f;
    let known = matches!(
        opcode,
        opcode::CONTINUATION
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG
    );
    if first & 0x70 != 0 || second & 0x80 != 0 || !known {
        return Err(bad);
    }
    let fin = first & 0x80 != 0;
    let (used, len) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(n) => (4, u64::from(u16::from_be_bytes([n[0], n[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(n) => (10, u64::from_be_bytes(n.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    Ok(Some((used, Header { opcode, fin, len })))
}

/// A whole frame at the start of `bytes`, its payload in `prefix`, and
/// the bytes it takes; `None` while more bytes are needed. For the few
/// small frames of a client's opening (a greeting, a Pusher
/// `connection_established` whose socket id is needed), read whole before
/// the [`Scanner`] takes over.
pub fn whole_frame(bytes: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BadFrame> {
    let Some((used, Header { opcode, fin, len })) = header(bytes)? else {
        return Ok(None);
    };
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| used.checked_add(len));
    Ok(end.and_then(|end| {
        let prefix = bytes.get(used..end)?;
        Some((
            Frame {
                opcode,
                fin,
                len,
                prefix,
            },
            end,
        ))
    }))
}

/// A server (unmasked) frame: header and payload.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    push_len(&mut frame, payload.len(), 0);
    frame.extend_from_slice(payload);
    frame
}

/// A client text frame, masked with `mask` as RFC 6455 requires.
pub fn client_text_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode::TEXT);
    push_len(&mut frame, payload.len(), 0x80);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn push_len(frame: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        frame.push(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        frame.push(mask_bit | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(mask_bit | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; the frames seen.
    fn scan(stream: &[u8], step: usize, capture: usize) -> Vec<(u8, u64, Vec<u8>)> {
        let mut scanner = Scanner::new(capture);
        let mut seen = Vec::new();
        for piece in stream.chunks(step) {
            scanner
                .feed(piece, |f| seen.push((f.opcode, f.len, f.prefix.to_vec())))
                .unwrap();
        }
        assert!(scanner.at_boundary());
        seen
    }

    #[test]
    fn frames_of_every_length_class_in_pieces_of_every_size() {
        let payloads = [
            vec![b'a'; 0],
            vec![b'b'; 5],
            vec![b'c'; 125],
            vec![b'd'; 126],
            vec![b'e'; 70_000],
        ];
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend(server_frame(opcode::TEXT, p));
        }
        stream.extend(server_frame(opcode::PING, b"hi"));
        for step in [1, 2, 3, 7, 64, 4096, stream.len()] {
            let seen = scan(&stream, step, 4);
            assert_eq!(seen.len(), payloads.len() + 1, "step {step}");
            for (p, (op, len, prefix)) in payloads.iter().zip(&seen) {
                assert_eq!((*op, *len), (opcode::TEXT, p.len() as u64));
                assert_eq!(prefix[..], p[..p.len().min(4)]);
            }
            assert_eq!(seen[5], (opcode::PING, 2, b"hi".to_vec()));
        }
    }

    #[test]
    fn a_whole_frame_once_all_of_it_is_there() {
        let mut stream = server_frame(opcode::TEXT, &[b'p'; 300]);
        stream.extend(server_frame(opcode::TEXT, b"next"));
        for cut in [0, 1, 3, 200, 303] {
            assert_eq!(whole_frame(&stream[..cut]).unwrap(), None, "cut {cut}");
        }
        let (frame, used) = whole_frame(&stream).unwrap().unwrap();
        assert_eq!((frame.opcode, frame.len, used), (opcode::TEXT, 300, 304));
        assert_eq!(frame.prefix, &[b'p'; 300][..]);
        let (next, _) = whole_frame(&stream[used..]).unwrap().unwrap();
        assert_eq!(next.prefix, b"next");
    }

    #[test]
    fn a_masked_or_extended_frame_is_out_of_step() {
        let masked = client_text_frame(b"x", [1, 2, 3, 4]);
        assert!(Scanner::new(0).feed(&masked, |_| {}).is_err());
        assert!(Scanner::new(0).feed(&[0xC1, 0x01, b'x'], |_| {}).is_err());
        assert!(Scanner::new(0).feed(&[0x83, 0x00], |_| {}).is_err());
    }
}
