//! HTTP routes. A small router of our own rather than axum: the API is a
//! dozen fixed paths, and a `match` keeps the upgrade path (fastwebsockets on
//! plain hyper) free of extractor layers and compiles in a fraction of the
//! time. [`handle`] takes any request body, so tests can call it without a
//! socket. Every handler reaches the server through the [`Node`].

// Handlers return `Result<_, Response>`: the `Err` is the answer to a
// refused request, built once and sent; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod poll;
mod publish;
mod reader;
pub mod reply;
mod sse;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use self::reply::{ResponseBody, error, json, json_ok, unauthorized};
use crate::config::WsPath;
use crate::limits::{invalid_room, valid_room};
use crate::node::{BrokerHealth, Node, Reach, Readiness};
use crate::upgrade::{self, Target};

/// The error type request bodies may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The test page served at `/`.
const PAGE: &str = include_str!("../page.html");
/// The browser client, served at `/wsnotify.js`.
const CLIENT_JS: &str = include_str!("../../clients/wsnotify.js");
/// Its TypeScript types, at `/wsnotify.d.ts`.
const CLIENT_TYPES: &str = include_str!("../../clients/wsnotify.d.ts");
/// The protocol version the client speaks, sent with it.
pub const PROTOCOL_VERSION: &str = "1";

/// The routes, by path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Page,
    ClientJs,
    ClientTypes,
    Ws(Option<&'a str>),
    WsRoom(&'a str),
    WsNotifications,
    Poll,
    Sse,
    Broadcast,
    Notify(&'a str),
    RoomPublish(&'a str),
    RoomPresence(&'a str),
    Connections,
    Health,
    Ready,
    Metrics,
}

/// The one non-empty path segment after `prefix`.
fn segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        Some(match path {
            "/" => Route::Page,
            "/wsnotify.js" => Route::ClientJs,
            "/wsnotify.d.ts" => Route::ClientTypes,
            "/ws" => Route::Ws(None),
            "/ws/notifications" => Route::WsNotifications,
            "/poll" => Route::Poll,
            "/sse" => Route::Sse,
            "/broadcast" => Route::Broadcast,
            "/connections" => Route::Connections,
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/metrics" => Route::Metrics,
            _ => {
                if let Some(room) = segment(path, "/ws/rooms/") {
                    Route::WsRoom(room)
                } else if let Some(id) = segment(path, "/ws/") {
                    Route::Ws(Some(id))
                } else if let Some(user) = segment(path, "/notify/") {
                    Route::Notify(user)
                } else if let Some(rest) = path.strip_prefix("/rooms/") {
                    match rest.split_once('/') {
                        Some((room, "publish")) if !room.is_empty() => Route::RoomPublish(room),
                        Some((room, "presence")) if !room.is_empty() => Route::RoomPresence(room),
                        _ => return None,
                    }
                } else {
                    return None;
                }
            }
        })
    }

    /// Routes that send to clients: with `API_KEY` set they need it.
    fn publishes(&self) -> bool {
        matches!(
            self,
            Route::Broadcast | Route::Notify(_) | Route::RoomPublish(_)
        )
    }

    fn allow(&self) -> &'static str {
        if self.publishes() { "POST" } else { "GET" }
    }

    /// Routes that need history, missing with `HISTORY_SIZE=0`.
    fn reads_history(&self) -> bool {
        matches!(self, Route::Poll | Route::Sse)
    }
}

/// Answers one request.
pub async fn handle<B>(node: Arc<Node>, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(route) = Route::parse(req.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if route.reads_history() && !node.history_enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "not found: /poll and /sse need history (HISTORY_SIZE > 0)",
        );
    }
    if req.method() == Method::OPTIONS && route.reads_history() {
        return reader::preflight(&node, &req);
    }
    // HEAD is GET without the body (hyper leaves the body out).
    let head_of_get = req.method() == Method::HEAD && route.allow() == "GET";
    if req.method() != route.allow() && !head_of_get {
        let allow = match route.allow() {
            "GET" => "GET, HEAD",
            other => other,
        };
        let mut res = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return res;
    }
    if route.publishes() && !node.auth().publisher_allowed(req.headers()) {
        return unauthorized("missing or wrong API key");
    }
    match route {
        Route::Page => page(),
        Route::ClientJs => client_file("text/javascript; charset=utf-8", CLIENT_JS),
        Route::ClientTypes => client_file("text/plain; charset=utf-8", CLIENT_TYPES),
        Route::WsNotifications => upgrade::websocket(&node, req, Target::Json(None)),
        Route::Poll => poll::poll(&node, req).await,
        Route::Sse => sse::sse(&node, req),
        Route::Ws(Some(room)) if node.config().ws_path == WsPath::Room => {
            let room = room.to_owned();
            upgrade::websocket(&node, req, Target::Json(Some(room)))
        }
        Route::Ws(client_id) => {
            let client_id = client_id.map(str::to_owned);
            upgrade::websocket(&node, req, Target::Text(client_id))
        }
        Route::WsRoom(room) => {
            let room = room.to_owned();
            upgrade::websocket(&node, req, Target::Json(Some(room)))
        }
        Route::Broadcast => publish::broadcast(&node, req).await,
        Route::Notify(user) => {
            let user = user.to_owned();
            publish::notify(&node, &user, req).await
        }
        Route::RoomPublish(room) => {
            let room = room.to_owned();
            publish::publish_room(&node, &room, req).await
        }
        Route::RoomPresence(room) => {
            let room = room.to_owned();
            presence(&node, &room).await
        }
        Route::Connections => {
            let (active, _) = node.connections().await;
            json_ok(json!({ "active_connections": active }))
        }
        Route::Health => health(&node),
        Route::Ready => ready(&node),
        Route::Metrics => metrics(&node),
    }
}

fn page() -> Response<ResponseBody> {
    reply::body(
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    )
}

/// The client library or its types, versioned with the protocol.
fn client_file(content_type: &'static str, text: &'static str) -> Response<ResponseBody> {
    let mut res = reply::body(content_type, Bytes::from_static(text.as_bytes()));
    let headers = res.headers_mut();
    headers.insert(
        "x-wsnotify-protocol",
        HeaderValue::from_static(PROTOCOL_VERSION),
    );
    // Revalidated on every load, so an upgraded server serves its own client.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// `GET /rooms/{room}/presence`: the room's users on every instance.
async fn presence(node: &Node, room: &str) -> Response<ResponseBody> {
    if let Some(res) = bad_room(room) {
        return res;
    }
    let presence = node.presence(room).await;
    let users = presence.users;
    let mut body = json!({ "room": room, "users": users, "count": users.len() });
    if presence.reach == Reach::ThisInstance {
        body["broker"] = json!("degraded: this instance's users only");
    }
    json_ok(body)
}

/// 400 for a room name that breaks the naming rule.
fn bad_room(room: &str) -> Option<Response<ResponseBody>> {
    (!valid_room(room)).then(|| error(StatusCode::BAD_REQUEST, &invalid_room()))
}

fn health(node: &Node) -> Response<ResponseBody> {
    let timestamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let health = node.health();
    let broker = match health.broker {
        BrokerHealth::Memory => json!({ "kind": "memory", "status": "ok" }),
        BrokerHealth::Redis {
            up,
            partitions_down,
            instance,
            outages,
            last_error,
            down_for,
        } => {
            let whole = up && partitions_down.as_ref().is_none_or(Vec::is_empty);
            let mut broker = json!({
                "kind": if partitions_down.is_some() { "redis-cluster" } else { "redis" },
                "status": if whole { "ok" } else { "degraded" },
                "instance": instance,
                "outages": outages,
                "last_error": last_error,
                "down_for_s": down_for.map(|d| d.as_secs_f64()),
            });
            if let Some(down) = partitions_down {
                broker["partitions_down"] = json!(down);
            }
            broker
        }
    };
    let settings = health.history.settings;
    let mut history = json!({
        "enabled": settings.enabled(),
        "available": health.history.available,
        "size": settings.size,
        "ttl_s": settings.ttl.as_secs_f64(),
        "max_bytes": settings.max_bytes,
    });
    if let Some(usage) = health.history.usage {
        history["streams"] = json!(usage.streams);
        history["entries"] = json!(usage.entries);
        history["bytes"] = json!(usage.bytes);
    }
    json_ok(json!({
        "status": "healthy",
        "active_connections": health.connections,
        "shutdown_in_progress": health.draining,
        "timestamp": timestamp,
        "broker": broker,
        "history": history,
    }))
}

fn ready(node: &Node) -> Response<ResponseBody> {
    let reason = match node.readiness() {
        Readiness::Ready => return json_ok(json!({ "ready": true })),
        Readiness::Draining => "shutting down",
        Readiness::BrokerDown => {
            "broker degraded: Redis unreachable, or a cluster partition unsubscribed"
        }
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "ready": false, "reason": reason }),
    )
}

fn metrics(node: &Node) -> Response<ResponseBody> {
    reply::body(
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(node.render_metrics()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    async fn call(app: &Arc<Node>, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let res = handle(app.clone(), req).await;
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/ws/abc"), Some(Route::Ws(Some("abc"))));
        assert_eq!(Route::parse("/ws/"), None);
        assert_eq!(Route::parse("/ws/a/b"), None);
        assert_eq!(Route::parse("/nope"), None);
        assert_eq!(Route::parse("/notify/42"), Some(Route::Notify("42")));
        assert_eq!(Route::parse("/notify/"), None);
        assert_eq!(Route::parse("/ws/rooms/test"), Some(Route::WsRoom("test")));
        assert_eq!(Route::parse("/ws/rooms"), Some(Route::Ws(Some("rooms"))));
        assert_eq!(
            Route::parse("/rooms/test/publish"),
            Some(Route::RoomPublish("test"))
        );
        assert_eq!(
            Route::parse("/rooms/test/presence"),
            Some(Route::RoomPresence("test"))
        );
        assert_eq!(Route::parse("/rooms/test/other"), None);
        assert_eq!(Route::parse("/rooms//publish"), None);
    }

    #[tokio::test]
    async fn broadcast_validates_its_body() {
        let app = Node::new(Config {
            max_message_size: 64,
            ..Config::default()
        })
        .unwrap();
        let post = Method::POST;
        assert_eq!(
            call(&app, post.clone(), "/broadcast", r#"{"message":"hi"}"#)
                .await
                .0,
            StatusCode::OK
        );
        let (status, body) = call(&app, post.clone(), "/broadcast", r#"{"message":""}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("No message provided"))
        );
        let (status, body) = call(&app, post.clone(), "/broadcast", "{oops").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().starts_with("Invalid JSON"));
        let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            call(&app, post, "/broadcast", &big).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn wrong_method_and_unknown_path() {
        let app = Node::new(Config::default()).unwrap();
        assert_eq!(
            call(&app, Method::GET, "/broadcast", "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&app, Method::GET, "/missing", "").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
