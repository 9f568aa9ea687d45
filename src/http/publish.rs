//! The publishing routes: `POST /broadcast`, `POST /notify/{user_id}`,
//! `POST /rooms/{room}/publish`. Each reads a small JSON body, publishes
//! through the node, and answers with the seeds' keys plus, with history
//! on, the position the message got (`stream`, `epoch`, `offset`). An
//! `Idempotency-Key` makes a retry answer the first position instead of
//! publishing again.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::BoxError;
use super::reply::{ResponseBody, error, json_ok, unavailable};
use crate::limits::{MAX_USER_ID, invalid_room, user_id_fits, user_id_too_long, valid_room};
use crate::node::{Node, Published, Reach};
use crate::protocol::json::ServerMessage;
use crate::stream::Stream;

/// Longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// `POST /broadcast` with `{"message": "..."}`: to every client of every
/// instance.
pub async fn broadcast<B>(node: &Node, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(res) => return res,
    };
    let text = match message(node, req).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    let stream = Stream::Broadcast;
    match node.publish(&stream, &text, key.as_deref()).await {
        Ok(published) => {
            tracing::debug!(local_recipients = published.local, "broadcast over HTTP");
            json_ok(placed(
                json!({ "status": "Message broadcasted" }),
                &stream,
                &published,
            ))
        }
        Err(_) => refused(),
    }
}

/// `POST /notify/{user_id}` with `{"message": "..."}`: to every connection
/// of the user on every instance.
pub async fn notify<B>(node: &Node, user: &str, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !user_id_fits(user) {
        return error(StatusCode::BAD_REQUEST, &user_id_too_long("user_id"));
    }
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(res) => return res,
    };
    let text = match message(node, req).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    let stream = Stream::User(user.into());
    let published = match node.publish(&stream, &text, key.as_deref()).await {
        Ok(published) => published,
        Err(_) => return refused(),
    };
    let mut body = json!({ "status": "Notification sent", "instances": published.instances });
    if published.reach == Reach::ThisInstance {
        body["broker"] = json!("degraded: delivered to this instance's clients only");
    }
    json_ok(placed(body, &stream, &published))
}

/// `POST /rooms/{room}/publish` with `{"text": "...", "user": "..."}`: a
/// `chat.delivery` to every member of the room on every instance. `user`
/// names the sender and defaults to `server`; `message` is accepted for
/// `text`, as in `/broadcast`.
pub async fn publish_room<B>(node: &Node, room: &str, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !valid_room(room) {
        return error(StatusCode::BAD_REQUEST, &invalid_room());
    }
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(res) => return res,
    };
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
    let (delivery, published) = match node.say(room, &user, &text, key.as_deref()).await {
        Ok(said) => said,
        Err(_) => return refused(),
    };
    let ServerMessage::Delivery { id, ts, .. } = delivery else {
        unreachable!("delivery() builds a Delivery")
    };
    let body = json!({
        "status": "Message published",
        "room": room,
        "id": id,
        "ts": ts,
        "local_recipients": published.local,
    });
    json_ok(placed(body, &Stream::Room(room.into()), &published))
}

/// `body` with the position the message got, if history is on.
fn placed(mut body: Value, stream: &Stream, published: &Published) -> Value {
    if let Some(at) = &published.at {
        body["stream"] = json!(stream.to_string());
        body["epoch"] = json!(&*at.epoch);
        body["offset"] = json!(at.offset);
        if published.duplicate {
            body["duplicate"] = json!(true);
        }
    }
    body
}

/// 503: the message could not be kept, so it was not sent.
fn refused() -> Response<ResponseBody> {
    unavailable(
        "history unavailable: Redis unreachable; nothing was sent, retry later with the same Idempotency-Key",
    )
}

/// The request's `Idempotency-Key`, or a 400 for one over
/// [`MAX_IDEMPOTENCY_KEY`] bytes or not text.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response<ResponseBody>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    if value.len() > MAX_IDEMPOTENCY_KEY {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("Idempotency-Key longer than {MAX_IDEMPOTENCY_KEY} bytes"),
        ));
    }
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_owned())),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        )),
    }
}

/// The JSON object of a request body, or the answer explaining what is
/// wrong with the body.
pub(super) async fn object<B>(
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
