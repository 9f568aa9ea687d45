//! `GET /ws`, `GET /ws/{client_id}` and `GET /ws/rooms/{room}`: checks, the
//! 101 answer (built by fastwebsockets), and the hand-over of the upgraded
//! socket to a tracked session task.
//!
//! The checks run in this order, each answering before anything is upgraded:
//! draining (503), not an upgrade (426), `Origin` not allowed (403), token
//! missing or invalid (401), `client_id` (or a room's `?user=`) other than
//! the token's `sub` (403), `client_id` too long, a bad room name or a bad
//! handshake (400/426).

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::reply::{self, ResponseBody, error, unavailable};
use crate::limits::{invalid_room, user_id_fits, user_id_too_long, valid_room};
use crate::node::Node;
use crate::query::query_param;
use crate::session::{self, Opening};
use crate::socket::Socket;

/// What a WebSocket request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/ws` or `/ws/{client_id}`: the plain-text dialect.
    Text(Option<String>),
    /// `/ws/rooms/{room}` (starting in the room) or `/ws/notifications`
    /// (no room): the JSON dialect.
    Json(Option<String>),
}

/// Answers an upgrade request and, on success, starts its session.
pub fn websocket<B>(
    node: &Arc<Node>,
    mut req: Request<B>,
    target: Target,
) -> Response<ResponseBody> {
    if node.shutdown().is_draining() {
        return unavailable(
            "server is shutting down; reconnect later, possibly to another instance",
        );
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut res = error(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only: send an upgrade request (Connection: Upgrade, Upgrade: websocket)",
        );
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return res;
    }
    // A room connection may name its user with `?user=` when tokens are off;
    // with tokens on, the name must be the token's `sub`.
    let (client_id, opening) = match target {
        Target::Text(client_id) => (client_id, Opening::Text),
        Target::Json(room) => {
            let since = query_param(req.uri(), "since");
            (
                query_param(req.uri(), "user"),
                Opening::Json { room, since },
            )
        }
    };
    let admission = match node
        .auth()
        .admit(req.uri(), req.headers(), client_id.as_deref())
    {
        Ok(admission) => admission,
        Err(refusal) => return reply::refusal(&refusal),
    };
    if client_id.as_ref().is_some_and(|id| !user_id_fits(id)) {
        return error(StatusCode::BAD_REQUEST, &user_id_too_long("client_id"));
    }
    if let Opening::Json {
        room: Some(room), ..
    } = &opening
        && !valid_room(room)
    {
        return error(StatusCode::BAD_REQUEST, &invalid_room());
    }
    let (mut res, upgrading) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(ok) => ok,
        Err(err) => return refused_handshake(err),
    };
    if let Some(protocol) = admission.protocol {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    // With tokens on, the user is the token's `sub` (a `client_id` in the
    // path, if any, was checked to be the same).
    let user: Arc<str> = admission
        .user
        .or(client_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        .into();
    let session_node = node.clone();
    node.shutdown().spawn_session(async move {
        match upgrading.await {
            Ok(ws) => hand_over(session_node, ws.into_inner().into_inner(), user, opening).await,
            Err(err) => tracing::debug!(%err, "upgrade did not complete"),
        }
    });
    res.map(|_| reply::empty())
}

/// Runs the session on the raw TCP stream when hyper gives it back, so reads
/// and writes go straight to the socket halves without a shared lock.
async fn hand_over(node: Arc<Node>, upgraded: Upgraded, user: Arc<str>, opening: Opening) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let socket = Socket::new(parts.io.into_inner());
            // Bytes the client sent right behind its handshake come first.
            // `read_buf` is a view into hyper's connection buffer (8 KiB or
            // more); keeping it would pin that buffer for the connection's
            // life, so the few bytes in it, if any, are copied out.
            let early = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            let read = Cursor::new(early).chain(socket.clone());
            let stream = socket.stream().clone();
            session::run(node, (read, socket), Some(stream), user, opening).await
        }
        Err(upgraded) => {
            let halves = tokio::io::split(TokioIo::new(upgraded));
            session::run(node, halves, None, user, opening).await
        }
    }
}

fn refused_handshake(err: fastwebsockets::WebSocketError) -> Response<ResponseBody> {
    let mut res = error(
        StatusCode::BAD_REQUEST,
        &format!("bad WebSocket handshake: {err}"),
    );
    if matches!(
        err,
        fastwebsockets::WebSocketError::InvalidSecWebsocketVersion
    ) {
        *res.status_mut() = StatusCode::UPGRADE_REQUIRED;
        res.headers_mut()
            .insert("Sec-WebSocket-Version", HeaderValue::from_static("13"));
    }
    res
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;
    use crate::config::Config;

    fn request(path: &str, upgrade: bool) -> Request<Empty<Bytes>> {
        let mut req = Request::get(path);
        if upgrade {
            req = req
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        }
        req.body(Empty::new()).unwrap()
    }

    #[tokio::test]
    async fn each_check_answers_before_anything_is_upgraded() {
        let node = Node::new(Config::default()).unwrap();
        let status = |req, target| websocket(&node, req, target).status();
        assert_eq!(
            status(request("/ws", false), Target::Text(None)),
            StatusCode::UPGRADE_REQUIRED
        );
        let long = "u".repeat(crate::limits::MAX_USER_ID + 1);
        assert_eq!(
            status(request("/ws/x", true), Target::Text(Some(long))),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                request("/ws/rooms/a%20b", true),
                Target::Json(Some("a b".into()))
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(request("/ws/rooms/r", true), Target::Json(Some("r".into()))),
            StatusCode::SWITCHING_PROTOCOLS
        );
        // Draining comes first, whatever else is wrong.
        let _drain = tokio::spawn({
            let node = node.clone();
            async move { node.drain(futures_util::stream::pending()).await }
        });
        while !node.shutdown().is_draining() {
            tokio::task::yield_now().await;
        }
        let res = websocket(&node, request("/ws", false), Target::Text(None));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
    }
}
