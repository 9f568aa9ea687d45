//! The Pusher protocol, as far as the benchmarks use it against sockudo:
//! the client's subscription, and signed HTTP API requests
//! (`POST /apps/{id}/events` with `auth_key`, `auth_timestamp`,
//! `auth_version`, `body_md5` and the HMAC-SHA256 `auth_signature` of
//! `METHOD\npath\nsorted query`).

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
}
