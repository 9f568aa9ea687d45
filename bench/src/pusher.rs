//! The Pusher protocol, as far as the benchmarks use it against sockudo:
//! the client's subscription (to a public channel, or to a private one with
//! the `auth` of `key:hex(HMAC-SHA256(secret, "socket_id:channel"))`, the
//! socket id taken from `pusher:connection_established`), and signed HTTP
//! API requests (`POST /apps/{id}/events` with `auth_key`,
//! `auth_timestamp`, `auth_version`, `body_md5` and the HMAC-SHA256
//! `auth_signature` of `METHOD\npath\nsorted query`).

use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

/// An app's credentials.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl App {
    /// The WebSocket path a client of this app connects to.
    pub fn ws_path(&self) -> String {
        format!(
            "/app/{}?protocol=7&client=wsnotify-bench&version=1.0",
            self.key
        )
    }

    /// The path and signed query of `POST /apps/{id}/events` with `body`.
    pub fn events_path(&self, body: &str) -> String {
        self.signed("POST", &format!("/apps/{}/events", self.id), body)
    }

    /// `path` with the signed query of a `method` request with `body`.
    pub fn signed(&self, method: &str, path: &str, body: &str) -> String {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Already in key order, as the signature wants them.
        let mut query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0",
            self.key
        );
        if !body.is_empty() {
            query.push_str(&format!("&body_md5={:x}", md5::compute(body)));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_bytes());
        let signature = hmac::sign(&key, format!("{method}\n{path}\n{query}").as_bytes());
        format!("{path}?{query}&auth_signature={}", hex(signature.as_ref()))
    }

    /// The `auth` a client of socket `socket_id` subscribes to private
    /// `channel` with, as an app's auth endpoint would sign it.
    pub fn channel_auth(&self, socket_id: &str, channel: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_bytes());
        let signature = hmac::sign(&key, format!("{socket_id}:{channel}").as_bytes());
        format!("{}:{}", self.key, hex(signature.as_ref()))
    }
}

/// An event's body for `POST /apps/{id}/events`: `data` (a string without
/// quotes or backslashes, as the generator's payloads are) as event `name`
/// on `channel`.
pub fn event_body(name: &str, channel: &str, data: &str) -> String {
    format!(r#"{{"name":"{name}","channels":["{channel}"],"data":"{data}"}}"#)
}

/// The client's `pusher:subscribe` to a public `channel`.
pub fn subscribe(channel: &str) -> String {
    format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#)
}

/// An event's body for `POST /apps/{id}/events` to several `channels` at
/// once (sockudo takes up to 100), `data` as in [`event_body`].
pub fn event_body_to_many(name: &str, channels: &[String], data: &str) -> String {
    let channels: Vec<String> = channels.iter().map(|c| format!(r#""{c}""#)).collect();
    format!(
        r#"{{"name":"{name}","channels":[{}],"data":"{data}"}}"#,
        channels.join(",")
    )
}

/// The client's `pusher:subscribe` to a private `channel` with its `auth`
/// ([`App::channel_auth`]).
pub fn subscribe_private(channel: &str, auth: &str) -> String {
    format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","auth":"{auth}"}}}}"#)
}

/// The socket id a `pusher:connection_established` frame carries (in its
/// `data`, a JSON string whose quotes are escaped).
pub fn socket_id(frame: &[u8]) -> Option<&str> {
    let at = crate::scan::find(frame, b"socket_id")? + b"socket_id".len();
    let rest = &frame[at..];
    let start = rest.iter().position(|b| b.is_ascii_digit())?;
    if !rest[..start].iter().all(|b| b"\\\": ".contains(b)) {
        return None;
    }
    let len = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    std::str::from_utf8(&rest[start..start + len]).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_of_the_pusher_documentation_example() {
        // pusher.com/docs/channels/library_auth_reference/rest-api: the
        // example's string to sign and signature.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"7ad3773142a6692b25b8");
        let to_sign = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        assert_eq!(
            hex(hmac::sign(&key, to_sign.as_bytes()).as_ref()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            format!("{:x}", md5::compute(body)),
            "ec365a775a4cd0599faeb73354201b6f"
        );
    }

    #[test]
    fn the_private_channel_auth_of_the_pusher_documentation_example() {
        // pusher.com/docs/channels/library_auth_reference/auth-signatures
        let app = App {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        assert_eq!(
            app.channel_auth("1234.1234", "private-foobar"),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn the_socket_id_of_a_connection_established() {
        let frame = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.4567\",\"activity_timeout\":120}"}"#;
        assert_eq!(socket_id(frame), Some("123.4567"));
        assert_eq!(socket_id(br#"{"socket_id": "9.8"}"#), Some("9.8"));
        assert_eq!(socket_id(br#"{"event":"pusher:error"}"#), None);
    }
}
