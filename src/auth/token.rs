//! Where a client's token travels: the `Authorization` header, the
//! `bearer` subprotocol, or the `?token=` query parameter, tried in that
//! order.

use hyper::header;
use hyper::{HeaderMap, Uri};

use crate::query::query_param;

/// The `Sec-WebSocket-Protocol` entry that announces a token: the entry right
/// after it is the token, and the server selects this one in its answer.
pub const BEARER_PROTOCOL: &str = "bearer";

/// The token of a request, from the first transport that carries one.
pub(super) fn find_token(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = bearer(headers) {
        return Some(token.to_owned());
    }
    if let Some(token) = protocol_token(headers) {
        return Some(token.to_owned());
    }
    query_param(uri, "token")
}

/// The credentials of an `Authorization: Bearer <credentials>` header.
/// Other schemes (Basic, …) are not ours and are ignored.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The entries of every `Sec-WebSocket-Protocol` header, in order.
fn protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Whether the client offered the `bearer` subprotocol.
pub(super) fn offers_bearer(headers: &HeaderMap) -> bool {
    protocols(headers).any(|p| p == BEARER_PROTOCOL)
}

/// The entry right after `bearer` in `Sec-WebSocket-Protocol`.
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut entries = protocols(headers);
    entries.find(|p| *p == BEARER_PROTOCOL)?;
    entries.next()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// A header map of `pairs` (also for the other auth tests).
    pub(in crate::auth) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn tokens_are_found_in_each_transport_in_order() {
        let uri: Uri = "/ws?a=1&token=q%2Eq&token=second".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(find_token(&uri, &none).as_deref(), Some("q.q"));
        let swp = headers(&[("sec-websocket-protocol", "chat, bearer, p.p.p")]);
        assert_eq!(find_token(&uri, &swp).as_deref(), Some("p.p.p"));
        let split = headers(&[
            ("sec-websocket-protocol", "bearer"),
            ("sec-websocket-protocol", "p.p.p"),
        ]);
        assert_eq!(find_token(&uri, &split).as_deref(), Some("p.p.p"));
        let both = headers(&[
            ("sec-websocket-protocol", "bearer, p.p.p"),
            ("authorization", "bearer  h.h.h "),
        ]);
        assert_eq!(find_token(&uri, &both).as_deref(), Some("h.h.h"));
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(find_token(&"/ws".parse().unwrap(), &basic), None);
        let dangling = headers(&[("sec-websocket-protocol", "bearer")]);
        assert_eq!(find_token(&"/ws?token=".parse().unwrap(), &dangling), None);
        assert!(offers_bearer(&dangling));
    }
}
