//! The response builders every route answers with: JSON bodies, the
//! `{"error": …}` shape, 401 with its challenge, `Retry-After`. A leaf, so
//! the upgrade path builds its refusals without the router.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

/// The response body type of every route.
pub type ResponseBody = Full<Bytes>;

/// `Retry-After` sent with a refused upgrade during a drain, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: Value) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(Bytes::from(value.to_string())));
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

/// A body of `bytes` with `content_type`.
pub fn body(content_type: &'static str, bytes: Bytes) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(bytes));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
