//! HTTP routes. A small router of our own rather than axum: the API is a
//! dozen fixed paths, and a `match` keeps the upgrade path (fastwebsockets on
//! plain hyper) free of extractor layers and compiles in a fraction of the
//! time. [`handle`] takes any request body, so tests can call it without a
//! socket. Every handler reaches the server through the [`Node`].

pub mod reply;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use self::reply::{ResponseBody, error, json, json_ok, unauthorized};
use crate::limits::{MAX_USER_ID, invalid_room, user_id_fits, user_id_too_long, valid_room};
use crate::node::{BrokerHealth, Node, Reach, Readiness};
use crate::protocol::json::ServerMessage;
use crate::upgrade::{self, Target};

/// The error type request bodies may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The test page served at `/`.
const PAGE: &str = include_str!("../page.html");

/// The routes, by path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Page,
    Ws(Option<&'a str>),
    WsRoom(&'a str),
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
            "/ws" => Route::Ws(None),
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
        Route::Ws(client_id) => {
            let client_id = client_id.map(str::to_owned);
            upgrade::websocket(&node, req, Target::Text(client_id))
        }
        Route::WsRoom(room) => {
            let room = room.to_owned();
            upgrade::websocket(&node, req, Target::Json(room))
        }
        Route::Broadcast => broadcast(&node, req).await,
        Route::Notify(user) => {
            let user = user.to_owned();
            notify(&node, &user, req).await
        }
        Route::RoomPublish(room) => {
            let room = room.to_owned();
            publish_room(&node, &room, req).await
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

async fn broadcast<B>(node: &Node, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match message(node, req).await {
        Ok(text) => {
            let fanout = node.broadcast(&text);
            tracing::debug!(local_recipients = fanout.queued, "broadcast over HTTP");
            json_ok(json!({ "status": "Message broadcasted" }))
        }
        Err(res) => res,
    }
}

async fn notify<B>(node: &Node, user: &str, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !user_id_fits(user) {
        return error(StatusCode::BAD_REQUEST, &user_id_too_long("user_id"));
    }
    match message(node, req).await {
        Ok(text) => {
            let notified = node.notify(user, &text).await;
            let mut body =
                json!({ "status": "Notification sent", "instances": notified.instances });
            if notified.reach == Reach::ThisInstance {
                body["broker"] = json!("degraded: delivered to this instance's clients only");
            }
            json_ok(body)
        }
        Err(res) => res,
    }
}

/// `POST /rooms/{room}/publish` with `{"text": "...", "user": "..."}`: a
/// `chat.delivery` to every member of the room on every instance. `user`
/// names the sender and defaults to `server`; `message` is accepted for
/// `text`, as in `/broadcast`.
async fn publish_room<B>(node: &Node, room: &str, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(res) = bad_room(room) {
        return res;
    }
    let mut fields = match object(node, req).await {
        Ok(fields) => fields,
        Err(res) => return res,
    };
    let text = match fields.remove("text").or_else(|| fields.remove("message")) {
        Some(Value::String(text)) if !text.is_empty() => text,
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return error(StatusCode::BAD_REQUEST, "No text provided");
        }
        Some(_) => return error(StatusCode::BAD_REQUEST, "\"text\" must be a string"),
    };
    let chars = text.chars().count();
    let limit = node.config().max_text_length;
    if chars > limit {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("\"text\" has {chars} characters; the limit is {limit}"),
        );
    }
    let user = match fields.remove("user") {
        None | Some(Value::Null) => "server".to_owned(),
        Some(Value::String(user)) if !user.is_empty() && user_id_fits(&user) => user,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("\"user\" must be a string of 1 to {MAX_USER_ID} bytes"),
            );
        }
    };
    let (delivery, fanout) = node.say(room, &user, &text);
    let ServerMessage::Delivery { id, ts, .. } = delivery else {
        unreachable!("delivery() builds a Delivery")
    };
    json_ok(json!({
        "status": "Message published",
        "room": room,
        "id": id,
        "ts": ts,
        "local_recipients": fanout.queued,
    }))
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

/// The JSON object of a request body, or the answer explaining what is
/// wrong with the body.
async fn object<B>(
    node: &Node,
    req: Request<B>,
) -> Result<Map<String, Value>, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let body = read_body(req, node.config().max_message_size).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object like {\"message\": \"...\"}",
        )),
        Err(err) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid JSON: {err}"),
        )),
    }
}

/// The non-empty `message` string of a `{"message": ...}` body, or the
/// answer explaining what is wrong with the body.
async fn message<B>(node: &Node, req: Request<B>) -> Result<String, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let message = object(node, req).await?.remove("message");
    match message {
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(error(StatusCode::BAD_REQUEST, "No message provided"))
        }
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "\"message\" must be a string",
        )),
    }
}

/// Reads a body of at most `limit` bytes, or answers 413/400.
async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the body: {err}"),
        )),
    }
}

fn health(node: &Node) -> Response<ResponseBody> {
    let timestamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let health = node.health();
    let broker = match health.broker {
        BrokerHealth::Memory => json!({ "kind": "memory", "status": "ok" }),
        BrokerHealth::Redis {
            up,
            instance,
            outages,
            last_error,
            down_for,
        } => json!({
            "kind": "redis",
            "status": if up { "ok" } else { "degraded" },
            "instance": instance,
            "outages": outages,
            "last_error": last_error,
            "down_for_s": down_for.map(|d| d.as_secs_f64()),
        }),
    };
    json_ok(json!({
        "status": "healthy",
        "active_connections": health.connections,
        "shutdown_in_progress": health.draining,
        "timestamp": timestamp,
        "broker": broker,
    }))
}

fn ready(node: &Node) -> Response<ResponseBody> {
    let reason = match node.readiness() {
        Readiness::Ready => return json_ok(json!({ "ready": true })),
        Readiness::Draining => "shutting down",
        Readiness::BrokerDown => "broker degraded: Redis unreachable",
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "ready": false, "reason": reason }),
    )
}

fn metrics(node: &Node) -> Response<ResponseBody> {
    reply::body(
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(node.metrics().render()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http_body_util::Full;

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
