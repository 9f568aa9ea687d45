//! Field lookups in the server's JSON without parsing it. One generator
//! core reads every delivery of 10k clients, so the receive path looks up
//! the two or three fields it needs by substring instead of building a
//! `serde_json::Value` per frame. Only valid for the server's own compact
//! output and the generator's own payloads (no escaped quotes inside the
//! fields looked up).

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut at = 0;
    while at + needle.len() <= hay.len() {
        let rel = hay[at..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        at += rel;
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Where `needle` last occurs in `hay`.
pub fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&at| &hay[at..at + needle.len()] == needle)
}

/// `"key":` as bytes.
fn key_pattern(key: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(key.len() + 3);
    pattern.push(b'"');
    pattern.extend_from_slice(key);
    pattern.extend_from_slice(b"\":");
    pattern
}

/// The bytes right after `"key":`.
fn after_key<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let pattern = key_pattern(key);
    let at = find(json, &pattern)?;
    Some(&json[at + pattern.len()..])
}

/// The unsigned number of field `key`, searched from the end: cheap for a
/// field that comes after a long payload (`offset` of a delivery).
pub fn last_u64_field(json: &[u8], key: &[u8]) -> Option<u64> {
    let pattern = key_pattern(key);
    let at = rfind(json, &pattern)?;
    leading_u64(&json[at + pattern.len()..]).map(|(n, _)| n)
}

/// The unsigned number of field `key`.
pub fn u64_field(json: &[u8], key: &[u8]) -> Option<u64> {
    leading_u64(after_key(json, key)?).map(|(n, _)| n)
}

/// The string of field `key` (without its quotes, unescaped as is).
pub fn str_field<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let rest = after_key(json, key)?.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Whether the message's `type` is `kind`.
pub fn is_type(json: &[u8], kind: &[u8]) -> bool {
    str_field(json, b"type") == Some(kind)
}

/// The number at the start of `bytes`, and what follows it.
fn leading_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
    Some((n, &bytes[digits..]))
}

/// A generator payload's stamp (see [`crate::clock::stamped`]): its tag,
/// sequence number and send time. `frame` is the payload itself (plain
/// dialect) or a JSON delivery carrying it in `data`.
pub fn stamp(frame: &[u8]) -> Option<(u8, u64, u64)> {
    // The stamp opens the payload: no need to find where `data` ends.
    let payload = if frame.first() == Some(&b'{') {
        after_key(frame, b"data")?.strip_prefix(b"\"")?
    } else {
        frame
    };
    let (&tag, rest) = payload.split_first()?;
    let (seq, rest) = leading_u64(rest.strip_prefix(b":")?)?;
    let (sent, _) = leading_u64(rest.strip_prefix(b":")?)?;
    Some((tag, seq, sent))
}

/// `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`
/// percent-encoded.
pub fn uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A position of a stream, as a `since` value names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub stream: String,
    pub epoch: String,
    pub offset: u64,
}

/// The `since` query value of `positions` (design: `stream~epoch~offset`,
/// each stream percent-encoded, comma-joined), ready for a URL: encoded
/// once more as a whole.
pub fn since_query(positions: &[Position]) -> String {
    let since: Vec<String> = positions
        .iter()
        .map(|p| format!("{}~{}~{}", uri_component(&p.stream), p.epoch, p.offset))
        .collect();
    uri_component(&since.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_delivery() {
        let json = br#"{"type":"broadcast","data":"b:7:123456:xxxx","stream":"broadcast","epoch":"3f9a0c2e11b7","offset":42}"#;
        assert!(is_type(json, b"broadcast"));
        assert_eq!(u64_field(json, b"offset"), Some(42));
        assert_eq!(last_u64_field(json, b"offset"), Some(42));
        assert_eq!(str_field(json, b"epoch"), Some(&b"3f9a0c2e11b7"[..]));
        assert_eq!(str_field(json, b"stream"), Some(&b"broadcast"[..]));
        assert_eq!(stamp(json), Some((b'b', 7, 123456)));
        assert_eq!(stamp(b"n:1:2:x"), Some((b'n', 1, 2)));
        assert_eq!(stamp("🟢 Connected to server".as_bytes()), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
    }

    #[test]
    fn since_is_encoded_twice() {
        let positions = [
            Position {
                stream: "user:u1".into(),
                epoch: "abc".into(),
                offset: 0,
            },
            Position {
                stream: "broadcast".into(),
                epoch: "def".into(),
                offset: 9,
            },
        ];
        assert_eq!(
            since_query(&positions),
            "user%253Au1~abc~0%2Cbroadcast~def~9"
        );
    }
}
