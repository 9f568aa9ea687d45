//! Positions and the `since` value a client sends back.
//!
//! ```text
//! since    = position *( "," position )
//! position = stream "~" epoch "~" offset
//! stream   = "user:" id / "room:" name / "broadcast"   ; percent-encoded
//! epoch    = 0*32( DIGIT / %x61-7A )                  ; empty: never matches
//! offset   = 1*20DIGIT
//! ```
//!
//! A client builds it from the `stream`, `epoch` and `offset` of what it
//! received, so the grammar is part of the protocol (docs/PROTOCOL.md).

use std::fmt::{self, Write};
use std::sync::Arc;

use crate::stream::Stream;

/// Longest `since` value accepted, in bytes.
pub const MAX_SINCE_BYTES: usize = 16 * 1024;
/// Most positions one `since` may hold: a user stream, `broadcast`, and one
/// per room a connection may be in, with room to spare.
pub const MAX_POSITIONS: usize = 66;
/// Longest epoch, in characters.
pub const MAX_EPOCH: usize = 32;

/// Where a reader is in one stream: the epoch of the stream's history and
/// the offset of the last message seen (0: none yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Position {
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Self {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }
}

/// A parsed `since`: at most one position per stream, in the client's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Since {
    positions: Vec<(Stream, Position)>,
}

/// Why a `since` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("longer than {MAX_SINCE_BYTES} bytes")]
    TooLong,
    #[error("more than {MAX_POSITIONS} positions")]
    TooMany,
    #[error("position {0:?} is not stream~epoch~offset")]
    Shape(String),
    #[error("{0:?} is not a stream (user:ID, room:NAME or broadcast)")]
    Stream(String),
    #[error("epoch {0:?} is not 0 to 32 of [0-9a-z]")]
    Epoch(String),
    #[error("offset {0:?} is not a whole number")]
    Offset(String),
    #[error("{0} appears twice")]
    Repeated(String),
}

impl Since {
    /// Parses a `since` value (already taken out of its URL encoding).
    pub fn parse(value: &str) -> Result<Self, CursorError> {
        if value.len() > MAX_SINCE_BYTES {
            return Err(CursorError::TooLong);
        }
        let mut since = Since::default();
        for item in value.split(',').filter(|item| !item.is_empty()) {
            if since.positions.len() == MAX_POSITIONS {
                return Err(CursorError::TooMany);
            }
            let (stream, position) = position(item)?;
            if since.get(&stream).is_some() {
                return Err(CursorError::Repeated(stream.to_string()));
            }
            since.positions.push((stream, position));
        }
        Ok(since)
    }

    /// The position given for `stream`, if any.
    pub fn get(&self, stream: &Stream) -> Option<&Position> {
        self.positions
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, p)| p)
    }

    /// Sets (or replaces) the position of `stream`.
    pub fn set(&mut self, stream: Stream, position: Position) {
        match self.positions.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, p)) => *p = position,
            None => self.positions.push((stream, position)),
        }
    }

    /// Drops the position of `stream`.
    pub fn remove(&mut self, stream: &Stream) -> Option<Position> {
        let at = self.positions.iter().position(|(s, _)| s == stream)?;
        Some(self.positions.remove(at).1)
    }

    pub fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.positions.iter().map(|(s, _)| s)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Stream, &Position)> {
        self.positions.iter().map(|(s, p)| (s, p))
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (stream, position)) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            encode_stream(f, &stream.to_string())?;
            write!(f, "~{}~{}", position.epoch, position.offset)?;
        }
        Ok(())
    }
}

/// One `stream~epoch~offset`.
fn position(item: &str) -> Result<(Stream, Position), CursorError> {
    let mut parts = item.rsplitn(3, '~');
    let (Some(offset), Some(epoch), Some(stream)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(CursorError::Shape(clip(item)));
    };
    let name = percent_decode(stream).ok_or_else(|| CursorError::Stream(clip(stream)))?;
    let stream = Stream::parse(&name).ok_or_else(|| CursorError::Stream(clip(&name)))?;
    if epoch.len() > MAX_EPOCH
        || !epoch
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return Err(CursorError::Epoch(clip(epoch)));
    }
    if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CursorError::Offset(clip(offset)));
    }
    let offset = offset
        .parse()
        .map_err(|_| CursorError::Offset(clip(offset)))?;
    Ok((stream, Position::new(epoch, offset)))
}

/// `%XX` sequences decoded; `None` for a broken one or bytes that are not
/// UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes a stream name with `%`, `,`, `~` and anything outside printable
/// ASCII percent-encoded, so the value reads back whatever a user id holds.
fn encode_stream(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    for byte in name.bytes() {
        match byte {
            b'%' | b',' | b'~' => write!(f, "%{byte:02X}")?,
            0x21..=0x7e => f.write_char(byte as char)?,
            _ => write!(f, "%{byte:02X}")?,
        }
    }
    Ok(())
}

/// At most 64 characters of a client's value, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_since_reads_back_what_it_wrote() {
        let mut since = Since::default();
        since.set(
            Stream::User("al,ice~%é".into()),
            Position::new("3f9a0c2e11b7", 17),
        );
        since.set(Stream::Room("team:42@eu".into()), Position::new("", 0));
        since.set(Stream::Broadcast, Position::new("e2", 9));
        let text = since.to_string();
        assert_eq!(
            text,
            "user:al%2Cice%7E%25%C3%A9~3f9a0c2e11b7~17,room:team:42@eu~~0,broadcast~e2~9"
        );
        assert_eq!(Since::parse(&text), Ok(since));
    }

    #[test]
    fn what_a_browser_sends_parses() {
        // encodeURIComponent(stream) leaves `:` as %3A and `@` as %40.
        let since = Since::parse("room%3Ateam%3A42%40eu~ab~3").unwrap();
        assert_eq!(
            since.get(&Stream::Room("team:42@eu".into())),
            Some(&Position::new("ab", 3))
        );
        assert_eq!(Since::parse(""), Ok(Since::default()));
    }

    #[test]
    fn each_fault_is_named() {
        for (value, want) in [
            ("broadcast", "is not stream~epoch~offset"),
            ("broadcast~e", "is not stream~epoch~offset"),
            ("bogus~e~1", "is not a stream"),
            ("user:~e~1", "is not a stream"),
            ("room:a b~e~1", "is not a stream"),
            ("user:a%zz~e~1", "is not a stream"),
            ("broadcast~E~1", "epoch"),
            ("broadcast~e~-1", "offset"),
            ("broadcast~e~", "offset"),
            ("broadcast~e~99999999999999999999", "offset"),
            ("broadcast~e~1,broadcast~e~2", "appears twice"),
        ] {
            let err = Since::parse(value).unwrap_err().to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
        let long = "broadcast~e~1,".repeat(2000);
        assert_eq!(Since::parse(&long), Err(CursorError::TooLong));
        let many: Vec<String> = (0..=MAX_POSITIONS)
            .map(|i| format!("room:r{i}~e~1"))
            .collect();
        assert_eq!(Since::parse(&many.join(",")), Err(CursorError::TooMany));
    }
}
