//! Property tests that fuzz the WebSocket protocol handling.
//!
//! The first half drives the pure protocol layer (`wsnotify::protocol`) with
//! generated frames and checks it against a reference model written from
//! docs/PROTOCOL.md and RFC 6455. The second half fuzzes a live server: a raw
//! "fuzzer" client sends a generated sequence of good and bad frames, a
//! well-behaved "bystander" sits beside it, and after every step both must
//! have received exactly what the protocol promises.
//!
//! Failing cases are saved by proptest in
//! `tests/protocol_props.proptest-regressions` and replayed first; commit it.
//! `PROPTEST_CASES=N` raises the number of live cases for a longer local run.

mod support;

use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use hyper::{Method, StatusCode};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use support::*;
use wsnotify::Config;
use wsnotify::protocol::{
    Assembler, Close, Event, Inbound, encode, parse_client_close, text_frame,
};

// ---------------------------------------------------------------------------
// The reference: what the docs promise, written independently of src/.
// ---------------------------------------------------------------------------

/// Close code and reason a server-initiated close carries (docs/PROTOCOL.md).
fn documented(close: Close) -> (u16, &'static str) {
    match close {
        Close::Normal => (1000, "bye"),
        Close::GoingAway => (1001, "server shutting down"),
        Close::Protocol => (1002, "protocol error"),
        Close::Unsupported => (1003, "binary frames are not supported"),
        Close::InvalidPayload => (1007, "text is not valid UTF-8"),
        Close::RateLimited => (1008, "rate limit exceeded"),
        Close::Abuse => (1008, "too many invalid messages"),
        Close::TooBig => (1009, "message too big"),
        Close::IdleTimeout => (4000, "idle timeout: no frame from the client"),
        Close::SlowConsumer => (4008, "slow consumer: outbound queue full"),
        Close::InsufficientState => (4010, "insufficient state: reconnect and resume"),
    }
}

const ALL_CLOSES: [Close; 11] = [
    Close::Normal,
    Close::GoingAway,
    Close::Protocol,
    Close::Unsupported,
    Close::InvalidPayload,
    Close::RateLimited,
    Close::Abuse,
    Close::TooBig,
    Close::IdleTimeout,
    Close::SlowConsumer,
    Close::InsufficientState,
];

/// How RFC 6455 §7.4 classifies a close code a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeClass {
    /// Defined by RFC 6455 (1000-1003, 1007-1011) or free for
    /// applications and libraries (3000-4999): must be accepted.
    Valid,
    /// 1012-1014 were registered with IANA after RFC 6455; servers differ.
    Registered,
    /// 0-999, 1004-1006, 1015, 1016-2999 and 5000+: must be refused.
    Invalid,
}

fn code_class(code: u16) -> CodeClass {
    match code {
        1000..=1003 | 1007..=1011 | 3000..=4999 => CodeClass::Valid,
        1012..=1014 => CodeClass::Registered,
        _ => CodeClass::Invalid,
    }
}

/// Every acceptable answer to a client's close frame payload: `Ok(code)` to
/// echo `code`, `Err(close)` to refuse it with `close`.
fn close_oracle(payload: &[u8]) -> Vec<Result<u16, Close>> {
    match payload {
        [] => vec![Ok(1000)],
        [_] => vec![Err(Close::Protocol)],
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let reason_ok = std::str::from_utf8(reason).is_ok();
            match (code_class(code), reason_ok) {
                (CodeClass::Valid, true) => vec![Ok(code)],
                (CodeClass::Valid, false) => vec![Err(Close::InvalidPayload)],
                (CodeClass::Registered, true) => vec![Ok(code), Err(Close::Protocol)],
                (CodeClass::Invalid, true) => vec![Err(Close::Protocol)],
                // Two faults: either may be reported.
                (_, false) => vec![Err(Close::Protocol), Err(Close::InvalidPayload)],
            }
        }
    }
}

/// Byte sequences that are never valid UTF-8, whatever valid text follows.
const BAD_UTF8: &[&[u8]] = &[
    &[0xff],
    &[0xfe],
    &[0x80],                   // lone continuation byte
    &[0xc0, 0x80],             // overlong NUL
    &[0xc1, 0xbf],             // overlong
    &[0xe0, 0x80, 0x80],       // overlong
    &[0xed, 0xa0, 0x80],       // UTF-16 surrogate
    &[0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
    &[0xf5, 0x80, 0x80, 0x80],
    &[0xe2, 0x82], // truncated (a valid string never starts with a continuation)
];

// ---------------------------------------------------------------------------
// A decoder for unmasked server frames.
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Wire {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

/// Decodes exactly one frame filling `bytes`; the length must use the
/// shortest encoding (RFC 6455 §5.2) and nothing may follow the payload.
fn decode(bytes: &[u8]) -> Result<Wire, String> {
    let [b0, b1, rest @ ..] = bytes else {
        return Err(format!("{} bytes: no header", bytes.len()));
    };
    let (len, rest) = match b1 & 0x7f {
        126 => {
            let [a, b, rest @ ..] = rest else {
                return Err("truncated 16-bit length".into());
            };
            let len = u16::from_be_bytes([*a, *b]) as u64;
            if len < 126 {
                return Err(format!("16-bit length {len} should have been 7-bit"));
            }
            (len, rest)
        }
        127 => {
            if rest.len() < 8 {
                return Err("truncated 64-bit length".into());
            }
            let len = u64::from_be_bytes(rest[..8].try_into().unwrap());
            if len <= 0xffff {
                return Err(format!("64-bit length {len} should have been shorter"));
            }
            if len >> 63 != 0 {
                return Err("64-bit length with the most significant bit set".into());
            }
            (len, &rest[8..])
        }
        n => (u64::from(n), rest),
    };
    let masked = b1 & 0x80 != 0;
    let rest = if masked {
        rest.get(4..).ok_or("truncated mask")?
    } else {
        rest
    };
    if rest.len() as u64 != len {
        return Err(format!("length says {len}, {} bytes follow", rest.len()));
    }
    Ok(Wire {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0f,
        masked,
        payload: rest.to_vec(),
    })
}

// ---------------------------------------------------------------------------
// Generators shared by both halves.
// ---------------------------------------------------------------------------

/// A string of exactly `len` bytes starting with as many of `chars` as fit.
fn exact_len(chars: Vec<char>, len: usize) -> String {
    let mut s = String::with_capacity(len);
    for c in chars {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Any Unicode, mostly short.
fn short_text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// Valid text of at most `max` bytes, with the boundary well covered.
fn text_up_to(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => short_text(),
        1 => (vec(any::<char>(), 0..8), max.saturating_sub(8)..=max)
            .prop_map(|(chars, len)| exact_len(chars, len)),
    ]
}

/// Codes worth trying, and then any code at all.
fn close_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => select(vec![
            0u16, 1, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009,
            1010, 1011, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 3000, 3999,
            4000, 4008, 4999, 5000, 65535,
        ]),
        1 => any::<u16>(),
    ]
}

/// Valid text with an invalid sequence somewhere.
fn invalid_utf8() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(any::<char>(), 0..8),
        select(BAD_UTF8.to_vec()),
        vec(any::<char>(), 0..8),
    )
        .prop_map(|(pre, bad, post)| {
            let mut bytes = String::from_iter(pre).into_bytes();
            bytes.extend_from_slice(bad);
            bytes.extend_from_slice(String::from_iter(post).as_bytes());
            bytes
        })
}

/// A close frame payload (at most 125 bytes, as for every control frame):
/// empty, one byte, or a code with a valid or invalid reason.
fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let reason = prop_oneof![
        3 => vec(any::<char>(), 0..12).prop_map(|c| String::from_iter(c).into_bytes()),
        1 => invalid_utf8(),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        6 => (close_code(), reason).prop_map(|(code, reason)| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(&reason);
            payload
        }),
    ]
}

/// Splits `bytes` at the sorted positions `cuts`.
fn split_at_cuts<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        parts.push(&bytes[start..cut]);
        start = cut;
    }
    parts.push(&bytes[start..]);
    parts
}

/// Sorted cut positions in `0..=len` from proptest indexes.
fn cut_positions(indexes: &[Index], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = indexes.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fn inbound(fin: bool, opcode: OpCode, payload: &[u8]) -> Inbound {
    Inbound {
        fin,
        opcode,
        payload: Bytes::copy_from_slice(payload),
    }
}

// ---------------------------------------------------------------------------
// 1. The pure protocol layer.
// ---------------------------------------------------------------------------

/// Text of every length class: 7-bit, 16-bit and 64-bit frame lengths.
fn any_length_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => (vec(any::<char>(), 0..8), 120usize..=130).prop_map(|(c, n)| exact_len(c, n)),
        1 => (vec(any::<char>(), 0..8), 65_530usize..=65_540).prop_map(|(c, n)| exact_len(c, n)),
        1 => (vec(any::<char>(), 0..8), 70_000usize..=70_010).prop_map(|(c, n)| exact_len(c, n)),
    ]
}

const OPCODES: [OpCode; 6] = [
    OpCode::Continuation,
    OpCode::Text,
    OpCode::Binary,
    OpCode::Close,
    OpCode::Ping,
    OpCode::Pong,
];

/// A fragmented text message: the text, the cut positions (1 to 5 cuts, so
/// 2 to 6 fragments, possibly empty or splitting a character), an optional
/// ping after each fragment but the last, and the assembler's limit.
fn fragmented_case() -> impl Strategy<Value = (String, Vec<usize>, Vec<Option<Vec<u8>>>, usize)> {
    let text = prop_oneof![
        3 => short_text(),
        1 => (vec(any::<char>(), 0..8), 0usize..=300).prop_map(|(c, n)| exact_len(c, n)),
    ];
    (
        text,
        vec(any::<Index>(), 1..=5),
        vec(option::weighted(0.3, vec(any::<u8>(), 0..=125)), 5),
    )
        .prop_flat_map(|(text, indexes, pings)| {
            let len = text.len();
            let cuts = cut_positions(&indexes, len);
            let pings = pings[..cuts.len()].to_vec();
            let max = prop_oneof![
                Just(len),
                Just(len.saturating_sub(1)),
                Just(len + 1),
                0..=2 * len + 2,
            ];
            (Just(text), Just(cuts), Just(pings), max)
        })
}

proptest! {
    /// `text_frame(s)` is one unmasked final text frame carrying exactly `s`,
    /// with the shortest length encoding.
    #[test]
    fn text_frames_round_trip(text in any_length_text()) {
        let wire = decode(&text_frame(&text)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            (wire.fin, wire.rsv, wire.opcode, wire.masked),
            (true, 0, 0x1, false)
        );
        prop_assert!(wire.payload == text.as_bytes(), "payload differs from the text");
    }

    /// `encode` writes any frame as an unmasked frame with the same fin,
    /// opcode and payload.
    #[test]
    fn any_frame_encodes_faithfully(
        fin in any::<bool>(),
        opcode in select(OPCODES.to_vec()),
        payload in prop_oneof![
            4 => vec(any::<u8>(), 0..200),
            1 => vec(any::<u8>(), 65_530..65_540),
        ],
    ) {
        let bytes = encode(Frame::new(fin, opcode, None, Payload::Owned(payload.clone())));
        let wire = decode(&bytes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            (wire.fin, wire.rsv, wire.opcode, wire.masked),
            (fin, 0, opcode as u8, false)
        );
        prop_assert!(wire.payload == payload, "payload differs");
    }

    /// A text split into fragments (Text, Continuation..., final
    /// Continuation), with pings between them, is reassembled exactly when it
    /// fits `max`; otherwise it is refused with 1009 no later than the
    /// continuation that crosses the limit. Pings are answered in between and
    /// leave nothing behind.
    #[test]
    fn fragmented_text_is_reassembled_or_refused((text, cuts, pings, max) in fragmented_case()) {
        let parts = split_at_cuts(text.as_bytes(), &cuts);
        let last = parts.len() - 1;
        let mut assembler = Assembler::new(max);
        let mut total = 0;
        let mut refused = false;
        for (i, part) in parts.iter().enumerate() {
            total += part.len();
            let opcode = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            let event = assembler.push(inbound(i == last, opcode, part));
            if event == Event::Violation(Close::TooBig) {
                prop_assert!(total > max, "refused {total} bytes, limit {max}");
                refused = true;
                break;
            }
            if i > 0 && total > max {
                return Err(TestCaseError::fail(format!(
                    "fragment {i} brought the message to {total} > {max} bytes: got {event:?}"
                )));
            } else if i < last {
                prop_assert_eq!(event, Event::Nothing, "fragment {}", i);
            } else {
                prop_assert_eq!(event, Event::Text(text.clone()));
            }
            if let Some(Some(ping)) = pings.get(i) {
                let event = assembler.push(inbound(true, OpCode::Ping, ping));
                prop_assert_eq!(event, Event::Ping(Bytes::copy_from_slice(ping)));
            }
        }
        prop_assert_eq!(refused, text.len() > max);
        if !refused {
            // Nothing of the message is left over: the next one stands alone.
            let event = assembler.push(inbound(true, OpCode::Text, b""));
            prop_assert_eq!(event, Event::Text(String::new()));
        }
    }

    /// An unfragmented text message (one final Text frame) is accepted
    /// exactly when it fits `max`, and refused with 1009 otherwise, as
    /// `Assembler::new` documents ("refusing messages longer than max_size").
    #[test]
    fn unfragmented_text_is_accepted_or_refused(
        text in prop_oneof![short_text(), (vec(any::<char>(), 0..4), 0usize..=80).prop_map(|(c, n)| exact_len(c, n))],
        max in 0usize..=80,
    ) {
        let event = Assembler::new(max).push(inbound(true, OpCode::Text, text.as_bytes()));
        if text.len() <= max {
            prop_assert_eq!(event, Event::Text(text));
        } else {
            prop_assert_eq!(event, Event::Violation(Close::TooBig), "{} bytes, limit {}", text.len(), max);
        }
    }

    /// Any sequence of any frames never panics, and every event is the one
    /// the documented rules give (reference model below). Each frame is at
    /// most `max` bytes, as the server's reader guarantees before the
    /// assembler sees it. Feeding stops at the first violation or close,
    /// where the session ends.
    #[test]
    fn any_frames_get_the_documented_events(
        max in 16usize..=48,
        frames in vec(
            (
                select(OPCODES.to_vec()),
                any::<bool>(),
                prop_oneof![
                    vec(any::<u8>(), 0..=16),
                    vec(any::<char>(), 0..4).prop_map(|c| String::from_iter(c).into_bytes()),
                    invalid_utf8().prop_map(|mut b| { b.truncate(16); b }),
                    (close_code(), vec(any::<char>(), 0..3)).prop_map(|(code, c)| {
                        let mut p = code.to_be_bytes().to_vec();
                        p.extend_from_slice(String::from_iter(c).as_bytes());
                        p
                    }),
                ],
            ),
            0..40,
        ),
    ) {
        let mut assembler = Assembler::new(max);
        let mut model = Model { max, partial: None };
        for (n, (opcode, fin, payload)) in frames.into_iter().enumerate() {
            let allowed = model.expect(fin, opcode, &payload);
            let event = assembler.push(inbound(fin, opcode, &payload));
            prop_assert!(
                allowed.contains(&event),
                "frame {n} ({opcode:?}, fin {fin}, {payload:?}): got {event:?}, allowed {allowed:?}"
            );
            if matches!(event, Event::Violation(_) | Event::ClientClose(_)) {
                break;
            }
        }
    }

    /// `parse_client_close` never panics, echoes only what RFC 6455 allows
    /// (an empty payload as 1000; a permitted code with a UTF-8 reason), and
    /// refuses the rest with 1002 (bad code, one byte) or 1007 (bad reason).
    #[test]
    fn client_close_payloads_are_judged_like_the_rfc(
        payload in prop_oneof![vec(any::<u8>(), 0..=125), close_payload()],
    ) {
        let got = parse_client_close(&payload);
        let allowed = close_oracle(&payload);
        prop_assert!(allowed.contains(&got), "{payload:?}: got {got:?}, allowed {allowed:?}");
    }
}

/// The reassembly rules of docs/PROTOCOL.md, as a state machine.
struct Model {
    max: usize,
    /// The fragments of the message in progress.
    partial: Option<Vec<u8>>,
}

impl Model {
    /// The events allowed for one frame; updates the state.
    fn expect(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<Event> {
        let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(s) => Event::Text(s.to_owned()),
            Err(_) => Event::Violation(Close::InvalidPayload),
        };
        let one = match opcode {
            // "new message inside a fragmented one"
            OpCode::Text if self.partial.is_some() => Event::Violation(Close::Protocol),
            OpCode::Text if fin => text(payload),
            OpCode::Text => {
                self.partial = Some(payload.to_vec());
                Event::Nothing
            }
            // "continuation without a start"
            OpCode::Continuation => match self.partial.as_mut() {
                None => Event::Violation(Close::Protocol),
                Some(p) if p.len() + payload.len() > self.max => Event::Violation(Close::TooBig),
                Some(p) => {
                    p.extend_from_slice(payload);
                    if fin {
                        text(&self.partial.take().unwrap())
                    } else {
                        Event::Nothing
                    }
                }
            },
            OpCode::Binary => Event::Violation(Close::Unsupported),
            OpCode::Ping => Event::Ping(Bytes::copy_from_slice(payload)),
            OpCode::Pong => Event::Nothing,
            OpCode::Close => {
                return close_oracle(payload)
                    .into_iter()
                    .map(|r| match r {
                        Ok(code) => Event::ClientClose(code),
                        Err(close) => Event::Violation(close),
                    })
                    .collect();
            }
        };
        vec![one]
    }
}

/// The server's close frames carry the documented codes and reasons.
#[test]
fn server_close_frames_match_the_docs() {
    for close in ALL_CLOSES {
        let (code, reason) = documented(close);
        assert_eq!((close.code(), close.reason()), (code, reason));
        let wire = decode(&close.frame()).unwrap();
        assert_eq!(
            (wire.fin, wire.rsv, wire.opcode, wire.masked),
            (true, 0, 0x8, false)
        );
        assert_eq!(wire.payload[..2], code.to_be_bytes());
        assert_eq!(&wire.payload[2..], reason.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// 2. A live server, a fuzzing client and a bystander.
// ---------------------------------------------------------------------------

const MAX: usize = 1024;
const PONG: u8 = 0xA;

/// One step of the fuzzing client.
#[derive(Debug, Clone)]
enum Action {
    /// A valid text message in one frame.
    Text(String),
    /// A ping of at most 125 bytes.
    Ping(Vec<u8>),
    /// A valid text in 2-4 fragments cut at `cuts` (bytes, may split a
    /// character), with a ping after fragment `ping.0` if any.
    Fragmented {
        text: String,
        cuts: Vec<usize>,
        ping: Option<(usize, Vec<u8>)>,
    },
    /// A message over the limit: one frame of this size, or two fragments
    /// each within the limit that add up to more.
    TooBig(Oversize),
    /// Invalid UTF-8, in one frame or cut into two fragments at `cut`.
    InvalidUtf8 {
        payload: Vec<u8>,
        cut: Option<usize>,
    },
    Binary(Vec<u8>),
    /// A continuation with no message started.
    BadContinuation {
        fin: bool,
        payload: Vec<u8>,
    },
    /// A frame with RSV bits `rsv` (1-7) set.
    ReservedBits {
        rsv: u8,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    },
    /// Other documented protocol errors.
    Broken(Broken),
    /// A close frame with this payload.
    Close(Vec<u8>),
    /// Bytes that are no frame in particular; the client then half-closes.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Oversize {
    Single(usize),
    Fragmented(usize, usize),
}

#[derive(Debug, Clone)]
enum Broken {
    UnknownOpcode(u8),
    FragmentedPing(Vec<u8>),
    PingOver125(usize),
    /// A new text message (final or not) while one is in progress.
    NestedText(bool),
}

fn action() -> impl Strategy<Value = Action> {
    let fragmented = (
        text_up_to(MAX),
        vec(any::<Index>(), 1..=3),
        option::of((any::<Index>(), vec(any::<u8>(), 0..=125))),
    )
        .prop_map(|(text, indexes, ping)| {
            let cuts = cut_positions(&indexes, text.len());
            let ping = ping.map(|(i, p)| (i.index(cuts.len()), p));
            Action::Fragmented { text, cuts, ping }
        });
    let too_big = prop_oneof![
        ((MAX + 1)..=3 * MAX).prop_map(Oversize::Single),
        (1..=MAX)
            .prop_flat_map(|a| (Just(a), (MAX + 1 - a)..=MAX))
            .prop_map(|(a, b)| Oversize::Fragmented(a, b)),
    ];
    let invalid = (invalid_utf8(), option::of(any::<Index>())).prop_map(|(payload, cut)| {
        let cut = cut.map(|i| i.index(payload.len() + 1));
        Action::InvalidUtf8 { payload, cut }
    });
    let reserved = (
        1u8..=7,
        any::<bool>(),
        select(vec![
            op::TEXT,
            op::BINARY,
            op::CONTINUATION,
            op::PING,
            op::CLOSE,
        ]),
        vec(any::<u8>(), 0..16),
    )
        .prop_map(|(rsv, fin, opcode, payload)| Action::ReservedBits {
            rsv,
            fin,
            opcode,
            payload,
        });
    let broken = prop_oneof![
        select(vec![3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf]).prop_map(Broken::UnknownOpcode),
        vec(any::<u8>(), 0..=125).prop_map(Broken::FragmentedPing),
        (126usize..=300).prop_map(Broken::PingOver125),
        any::<bool>().prop_map(Broken::NestedText),
    ];
    prop_oneof![
        10 => text_up_to(MAX).prop_map(Action::Text),
        4 => vec(any::<u8>(), 0..=125).prop_map(Action::Ping),
        8 => fragmented,
        1 => too_big.prop_map(Action::TooBig),
        1 => invalid,
        1 => vec(any::<u8>(), 0..32).prop_map(Action::Binary),
        1 => (any::<bool>(), vec(any::<u8>(), 0..32))
            .prop_map(|(fin, payload)| Action::BadContinuation { fin, payload }),
        1 => reserved,
        1 => broken.prop_map(Action::Broken),
        2 => close_payload().prop_map(Action::Close),
        1 => vec(any::<u8>(), 1..64).prop_map(Action::Garbage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: live_cases(24),
        // Each shrink step runs a server; a hung step costs a 5 s timeout.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]

    /// After every step the fuzzer got what docs/PROTOCOL.md says (echo,
    /// pong, or the documented close, then the end of the connection), the
    /// bystander got `New message: T` for each valid text and nothing else,
    /// and at the end the server is healthy and still broadcasts.
    #[test]
    fn a_fuzzing_client_gets_documented_answers_and_harms_nobody(
        actions in vec(action(), 1..20),
    ) {
        block_on(live_case(actions))?;
    }
}

async fn live_case(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let server = TestServer::start(Config {
        notification_interval: Duration::ZERO,
        max_message_size: MAX,
        ..Config::default()
    })
    .await;
    let mut bystander = connect(server.addr, "/ws/bystander").await;
    let mut fuzzer = RawWs::connect(server.addr, "/ws/fuzzer").await;
    let mut open = true;
    for (step, action) in actions.iter().enumerate() {
        let still_open =
            perform(&mut fuzzer, &mut bystander, action)
                .await
                .map_err(|e| match e {
                    TestCaseError::Fail(why) => {
                        TestCaseError::fail(format!("step {step}: {}", why.message()))
                    }
                    other => other,
                })?;
        if !still_open {
            open = false;
            break;
        }
    }

    wait_for_connections(server.addr, if open { 2 } else { 1 }).await;
    let health = http(server.addr, Method::GET, "/health", "").await;
    prop_assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    prop_assert_eq!(&health.json()["status"], "healthy");

    let marker = "still broadcasting after the fuzzer";
    let body = serde_json::json!({ "message": marker }).to_string();
    let reply = http(server.addr, Method::POST, "/broadcast", &body).await;
    prop_assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // In order, so nothing unexpected reached the bystander before it.
    prop_assert_eq!(next_text(&mut bystander).await, marker);
    if open {
        expect_frame(&mut fuzzer, op::TEXT, marker.as_bytes()).await?;
    }
    Ok(())
}

/// Performs one action and checks its answers; `false` when the fuzzer's
/// connection is over.
async fn perform(
    fuzzer: &mut RawWs,
    bystander: &mut Ws,
    action: &Action,
) -> Result<bool, TestCaseError> {
    match action {
        Action::Text(text) => {
            fuzzer.send_frame(true, op::TEXT, text.as_bytes()).await;
            said(fuzzer, bystander, text).await?;
        }
        Action::Ping(payload) => {
            fuzzer.send_frame(true, op::PING, payload).await;
            expect_frame(fuzzer, PONG, payload).await?;
        }
        Action::Fragmented { text, cuts, ping } => {
            fuzzer
                .send_fragmented(text.as_bytes(), cuts, ping.as_ref())
                .await;
            if let Some((_, payload)) = ping {
                expect_frame(fuzzer, PONG, payload).await?;
            }
            said(fuzzer, bystander, text).await?;
        }
        Action::TooBig(Oversize::Single(len)) => {
            fuzzer.send_frame(true, op::TEXT, &vec![b'a'; *len]).await;
            return refused(fuzzer, &[Err(Close::TooBig)]).await;
        }
        Action::TooBig(Oversize::Fragmented(a, b)) => {
            fuzzer.send_frame(false, op::TEXT, &vec![b'a'; *a]).await;
            fuzzer
                .send_frame(true, op::CONTINUATION, &vec![b'b'; *b])
                .await;
            return refused(fuzzer, &[Err(Close::TooBig)]).await;
        }
        Action::InvalidUtf8 { payload, cut } => {
            prop_assert!(std::str::from_utf8(payload).is_err(), "generator bug");
            match cut {
                None => fuzzer.send_frame(true, op::TEXT, payload).await,
                Some(cut) => {
                    fuzzer.send_frame(false, op::TEXT, &payload[..*cut]).await;
                    let rest = &payload[*cut..];
                    fuzzer.send_frame(true, op::CONTINUATION, rest).await;
                }
            }
            return refused(fuzzer, &[Err(Close::InvalidPayload)]).await;
        }
        Action::Binary(payload) => {
            fuzzer.send_frame(true, op::BINARY, payload).await;
            return refused(fuzzer, &[Err(Close::Unsupported)]).await;
        }
        Action::BadContinuation { fin, payload } => {
            fuzzer.send_frame(*fin, op::CONTINUATION, payload).await;
            return refused(fuzzer, &[Err(Close::Protocol)]).await;
        }
        Action::ReservedBits {
            rsv,
            fin,
            opcode,
            payload,
        } => {
            let first = ((*fin as u8) << 7) | (rsv << 4) | opcode;
            fuzzer.send_raw(first, payload).await;
            return refused(fuzzer, &[Err(Close::Protocol)]).await;
        }
        Action::Broken(broken) => {
            match broken {
                Broken::UnknownOpcode(opcode) => fuzzer.send_frame(true, *opcode, b"hi").await,
                Broken::FragmentedPing(payload) => {
                    fuzzer.send_frame(false, op::PING, payload).await
                }
                Broken::PingOver125(len) => {
                    fuzzer.send_frame(true, op::PING, &vec![b'p'; *len]).await
                }
                Broken::NestedText(fin) => {
                    fuzzer.send_frame(false, op::TEXT, b"first ").await;
                    fuzzer.send_frame(*fin, op::TEXT, b"second").await;
                }
            }
            return refused(fuzzer, &[Err(Close::Protocol)]).await;
        }
        Action::Close(payload) => {
            fuzzer.send_frame(true, op::CLOSE, payload).await;
            return refused(fuzzer, &close_oracle(payload)).await;
        }
        Action::Garbage(bytes) => {
            garbage(fuzzer, bystander, bytes).await?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// The fuzzer's next frame is exactly `(opcode, payload)`.
/// `text` was accepted: the fuzzer is echoed and the bystander told.
async fn said(fuzzer: &mut RawWs, bystander: &mut Ws, text: &str) -> Result<(), TestCaseError> {
    expect_frame(fuzzer, op::TEXT, format!("You said: {text}").as_bytes()).await?;
    let told = next_text(bystander).await;
    prop_assert_eq!(told, format!("New message: {text}"), "bystander");
    Ok(())
}

/// Whether a close frame payload is one of `allowed`: the echo of a client's
/// code, or a documented server close with its reason.
fn close_matches(payload: &[u8], allowed: &[Result<u16, Close>]) -> Option<Result<u16, Close>> {
    let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    allowed.iter().copied().find(|a| match a {
        Ok(echo) => code == *echo,
        Err(close) => {
            let (c, reason) = documented(*close);
            code == c && &payload[2..] == reason.as_bytes()
        }
    })
}

/// The fuzzer's next frame is a close matching one of `allowed`, and the
/// server then ends the connection (after the fuzzer answers a close the
/// server started). Always `Ok(false)`: the connection is over.
async fn refused(
    fuzzer: &mut RawWs,
    allowed: &[Result<u16, Close>],
) -> Result<bool, TestCaseError> {
    let got = fuzzer.read_frame().await;
    let matched = match &got {
        Some((op::CLOSE, payload)) => close_matches(payload, allowed),
        _ => None,
    };
    let Some(matched) = matched else {
        return Err(TestCaseError::fail(format!(
            "fuzzer expected a close frame like {allowed:?}, got {}",
            show(got.as_ref())
        )));
    };
    if let Err(close) = matched {
        // Answer the server's close as a client should.
        let code = documented(close).0;
        fuzzer
            .send_frame(true, op::CLOSE, &code.to_be_bytes())
            .await;
    }
    let after = fuzzer.read_frame().await;
    if after.is_some() {
        return Err(TestCaseError::fail(format!(
            "after the close the server sent {} instead of closing the connection",
            show(after.as_ref())
        )));
    }
    Ok(false)
}

/// Sends `bytes` and half-closes. The server may read frames from them, or
/// wait for the rest of one and then see the end: whatever it makes of
/// them, it answers only with pongs, `You said:` echoes and at most one
/// close (last), then closes; the bystander gets `New message:` for exactly
/// the texts echoed.
async fn garbage(
    fuzzer: &mut RawWs,
    bystander: &mut Ws,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    fuzzer.send_raw_bytes(bytes).await;
    shutdown_write(fuzzer).await;
    let mut echoed = Vec::new();
    while let Some(frame) = fuzzer.read_frame().await {
        match &frame {
            (PONG, _) => {}
            (op::TEXT, payload) => {
                let text = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|t| t.strip_prefix("You said: "));
                let Some(text) = text else {
                    return Err(TestCaseError::fail(format!(
                        "unexpected {}",
                        show(Some(&frame))
                    )));
                };
                echoed.push(text.to_owned());
            }
            (op::CLOSE, payload) => {
                let echo = payload.len() == 2
                    && code_class(u16::from_be_bytes([payload[0], payload[1]]))
                        != CodeClass::Invalid;
                let server_close = ALL_CLOSES.map(Err::<u16, Close>);
                prop_assert!(
                    echo || close_matches(payload, &server_close).is_some(),
                    "undocumented close {:?}",
                    payload
                );
                let after = fuzzer.read_frame().await;
                prop_assert!(after.is_none(), "{} after the close", show(after.as_ref()));
                break;
            }
            _ => {
                return Err(TestCaseError::fail(format!(
                    "unexpected {}",
                    show(Some(&frame))
                )));
            }
        }
    }
    for text in echoed {
        let told = next_text(bystander).await;
        prop_assert_eq!(told, format!("New message: {text}"), "bystander");
    }
    Ok(())
}
