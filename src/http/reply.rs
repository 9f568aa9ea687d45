//! The response builders every route answers with: JSON bodies, the
//! `{"error": …}` shape, 401 with its challenge, 503 with `Retry-After`,
//! and the refusal of a request `Auth::admit` turned down. The upgrade path
//! builds its refusals with these, without the router.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::auth::Refusal;

/// The response body type of every route: a whole body, or a stream
/// (`/sse`).
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// `Retry-After` sent with a refused upgrade during a drain, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

/// No body.
pub fn empty() -> ResponseBody {
    Empty::new().boxed()
}

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: Value) -> Response<ResponseBody> {
    let mut res = Response::new(full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A 200 JSON response.
pub fn json_ok(value: Value) -> Response<ResponseBody> {
    json(StatusCode::OK, value)
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(status, json!({ "error": message }))
}

/// 401 `{"error": message}` with `WWW-Authenticate: Bearer` (RFC 6750).
pub fn unauthorized(message: &str) -> Response<ResponseBody> {
    let mut res = error(StatusCode::UNAUTHORIZED, message);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// 503 `{"error": message}` with `Retry-After`, for a server that is
/// draining (or cannot serve the request now).
pub fn unavailable(message: &str) -> Response<ResponseBody> {
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, message);
    res.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    res
}

/// The answer to a request refused by [`Auth::admit`](crate::auth::Auth::admit):
/// 401 for the token, 403 for who the client is.
pub fn refusal(refusal: &Refusal) -> Response<ResponseBody> {
    tracing::debug!(reason = %refusal, "request refused");
    match refusal.status() {
        StatusCode::UNAUTHORIZED => unauthorized(&refusal.to_string()),
        status => error(status, &refusal.to_string()),
    }
}

/// A body of `bytes` with `content_type`.
pub fn body(content_type: &'static str, bytes: Bytes) -> Response<ResponseBody> {
    let mut res = Response::new(full(bytes));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
