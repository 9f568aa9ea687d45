//! Who may connect and who may publish, decided before a WebSocket is
//! upgraded or a request body is read:
//!
//! - the browser's `Origin` against `ALLOWED_ORIGINS` (403);
//! - the client's JWT (`JWT_SECRET` or `JWT_PUBLIC_KEY_FILE`): its `sub`
//!   becomes the connection's user id (401 when missing or invalid);
//! - the backend's `API_KEY` on the publishing routes (401).
//!
//! [`Auth`] is built once from the [`Config`] at start-up, so an unreadable
//! key file, a bad PEM or a malformed origin stops the process before it
//! listens.
//!
//! A client hands its token over in one of three ways; when several are
//! present the first in this order is used:
//! 1. `Authorization: Bearer <jwt>`;
//! 2. `Sec-WebSocket-Protocol: bearer, <jwt>`, for browsers, which cannot set
//!    headers: `new WebSocket(url, ["bearer", jwt])`. The 101 answer then
//!    carries `Sec-WebSocket-Protocol: bearer` (browsers fail a handshake
//!    whose answer selects none of the offered protocols);
//! 3. the query parameter `?token=<jwt>` (it ends up in access logs; prefer
//!    the other two).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::http::MAX_CLIENT_ID;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: a token is refused
/// as expired once `exp` is more than this far in the past.
pub const LEEWAY_SECS: u64 = 30;

/// The `Sec-WebSocket-Protocol` entry that announces a token: the entry right
/// after it is the token, and the server selects this one in its answer.
pub const BEARER_PROTOCOL: &str = "bearer";

/// HS* secrets shorter than this many bytes get a start-up warning.
const SHORT_SECRET: usize = 32;

/// Why the authentication settings cannot be used. Each one stops the
/// start-up with a message naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read JWT_PUBLIC_KEY_FILE `{}`", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT_PUBLIC_KEY_FILE `{}` is not a PEM {alg} public key: {reason}", path.display())]
    BadPem {
        path: PathBuf,
        alg: &'static str,
        reason: String,
    },
    #[error(
        "JWT_ALG={alg} needs JWT_SECRET (JWT_PUBLIC_KEY_FILE is set: did you mean JWT_ALG=RS256 or ES256?)"
    )]
    MissingSecret { alg: &'static str },
    #[error("JWT_ALG={alg} needs JWT_PUBLIC_KEY_FILE, a PEM public key")]
    MissingKeyFile { alg: &'static str },
    #[error(
        "set either JWT_SECRET (HS256, HS384, HS512) or JWT_PUBLIC_KEY_FILE (RS256, ES256), not both"
    )]
    SecretAndKeyFile,
    #[error("JWT_ALG `{0}` is not one of HS256, HS384, HS512, RS256, ES256")]
    UnsupportedAlgorithm(String),
    #[error("{0} is set but empty")]
    Empty(&'static str),
    #[error(
        "ALLOWED_ORIGINS: `{origin}` is not an origin like https://example.com[:port]: {reason}"
    )]
    BadOrigin {
        origin: String,
        reason: &'static str,
    },
    #[error("ALLOWED_ORIGINS is set but lists no origin; unset it to allow any origin")]
    NoOrigins,
}

/// Why a token was refused; the text is the `error` of the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong algorithm")]
    WrongAlgorithm,
    #[error("missing claim: {0}")]
    MissingClaim(String),
    #[error("invalid claim: {0}")]
    InvalidClaim(&'static str),
}

/// Why an upgrade was refused before the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("origin not allowed")]
    Origin,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("client_id does not match the token's sub")]
    ClientIdMismatch,
}

impl Refusal {
    /// 403 for who you are (origin, client id), 401 for a missing or bad token.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
            Refusal::Origin | Refusal::ClientIdMismatch => StatusCode::FORBIDDEN,
        }
    }
}

/// What an accepted upgrade request established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The token's `sub`, when tokens are checked; `None` in open mode.
    pub user: Option<String>,
    /// The subprotocol to select in the 101 answer (`bearer` when offered).
    pub protocol: Option<HeaderValue>,
}

/// The authentication settings, checked and loaded once.
pub struct Auth {
    jwt: Option<Jwt>,
    /// Normalized allowed origins; `None` = any origin.
    origins: Option<HashSet<String>>,
    /// SHA-256 of the API key, so comparing takes the same time whatever
    /// the length of the key presented.
    api_key: Option<[u8; 32]>,
}

struct Jwt {
    alg_name: &'static str,
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("jwt", &self.jwt.as_ref().map(|j| j.alg_name))
            .field("origins", &self.origins)
            .field("api_key", &self.api_key.map(|_| "<set>"))
            .finish()
    }
}

impl Auth {
    /// Reads and checks the authentication settings of `config`, and logs a
    /// warning for each check that is off.
    pub fn from_config(config: &Config) -> Result<Auth, AuthError> {
        let jwt = Jwt::from_config(config)?;
        let origins = match &config.allowed_origins {
            None => None,
            Some(list) => Some(allowed_origins(list)?),
        };
        let api_key = match config.api_key.as_deref() {
            None => None,
            Some("") => return Err(AuthError::Empty("API_KEY")),
            Some(key) => Some(sha256(key.as_bytes())),
        };

        match &jwt {
            Some(jwt) => tracing::info!(alg = jwt.alg_name, "WebSocket clients need a JWT"),
            None => tracing::warn!(
                "running open: no JWT_SECRET or JWT_PUBLIC_KEY_FILE, so any client may connect as any client_id"
            ),
        }
        if origins.is_none() {
            tracing::warn!(
                "ALLOWED_ORIGINS unset: WebSockets are accepted from pages of any origin"
            );
        }
        if api_key.is_none() {
            tracing::warn!(
                "API_KEY unset: anyone who reaches the server may POST /broadcast and /notify"
            );
        }
        Ok(Auth {
            jwt,
            origins,
            api_key,
        })
    }

    /// The checks before an upgrade, in order: origin (403), token (401),
    /// `client_id` against the token's `sub` (403).
    pub fn admit(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        client_id: Option<&str>,
    ) -> Result<Admission, Refusal> {
        if !self.origin_allowed(headers) {
            return Err(Refusal::Origin);
        }
        let user = match &self.jwt {
            None => None,
            Some(jwt) => {
                let token = find_token(uri, headers).ok_or(TokenError::Missing)?;
                let sub = jwt.verify(&token)?;
                if client_id.is_some_and(|id| id != sub) {
                    return Err(Refusal::ClientIdMismatch);
                }
                Some(sub)
            }
        };
        let protocol = offers_bearer(headers).then(|| HeaderValue::from_static(BEARER_PROTOCOL));
        Ok(Admission { user, protocol })
    }

    /// Whether the request's `Origin` may open a WebSocket. Requests without
    /// one (non-browser clients) may; so may every origin when no list is set.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(allowed) = &self.origins else {
            return true;
        };
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = values.next() else {
            return true;
        };
        if values.next().is_some() {
            return false;
        }
        origin
            .to_str()
            .ok()
            .and_then(|o| normalize_origin(o).ok())
            .is_some_and(|o| allowed.contains(&o))
    }

    /// Whether a publishing request carries the API key (always, when none
    /// is configured). The comparison is constant-time.
    pub fn publisher_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.api_key else {
            return true;
        };
        bearer(headers).is_some_and(|given| bool::from(sha256(given.as_bytes()).ct_eq(expected)))
    }
}

impl Jwt {
    fn from_config(config: &Config) -> Result<Option<Jwt>, AuthError> {
        let (alg, alg_name) = algorithm(&config.jwt_alg)?;
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let key = match (
            config.jwt_secret.as_deref(),
            config.jwt_public_key_file.as_deref(),
        ) {
            (Some(_), Some(_)) => return Err(AuthError::SecretAndKeyFile),
            (Some(""), None) => return Err(AuthError::Empty("JWT_SECRET")),
            (Some(secret), None) if hmac => {
                if secret.len() < SHORT_SECRET {
                    tracing::warn!(
                        "JWT_SECRET is shorter than {SHORT_SECRET} bytes: easy to brute-force"
                    );
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            (None, Some(_)) if hmac => return Err(AuthError::MissingSecret { alg: alg_name }),
            (None, None) if hmac => return Ok(None),
            (_, None) => return Err(AuthError::MissingKeyFile { alg: alg_name }),
            (None, Some(path)) => public_key(path, alg, alg_name)?,
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without JWT_AUDIENCE, a token naming an audience is refused
        // (RFC 7519 §4.1.3); that is jsonwebtoken's default, kept on purpose.
        validation.validate_aud = true;
        let mut required = Vec::new();
        if config.jwt_require_exp {
            required.push("exp");
        }
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Jwt {
            alg_name,
            key,
            validation,
        }))
    }

    /// The `sub` of a valid token.
    fn verify(&self, token: &str) -> Result<String, TokenError> {
        // The header is read first so that `alg: none` and other names the
        // library does not know come out as a wrong algorithm, not as garbage.
        if header_alg(token)? != self.alg_name {
            return Err(TokenError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| token_error(err.into_kind()))?;
        // The library skips an `exp` or `nbf` it cannot read as seconds (a
        // string, a negative number, 1e30) unless the claim is required: a
        // token that carries one must carry a usable one.
        if !seconds_or_absent(data.claims.exp.as_ref()) {
            return Err(TokenError::InvalidClaim("exp"));
        }
        if !seconds_or_absent(data.claims.nbf.as_ref()) {
            return Err(TokenError::InvalidClaim("nbf"));
        }
        match data.claims.sub {
            None | Some(Value::Null) => Err(TokenError::MissingClaim("sub".to_owned())),
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_CLIENT_ID => Ok(sub),
            Some(_) => Err(TokenError::InvalidClaim("sub")),
        }
    }
}

/// The claims wsnotify reads itself; `exp` and `nbf` are checked by the
/// library, `exp` is read here only to refuse one that is not a number.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
}

/// Whether a time claim is absent or a number of seconds the library reads.
fn seconds_or_absent(claim: Option<&Value>) -> bool {
    match claim {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => {
            n.is_u64()
                || n.as_f64()
                    .is_some_and(|f| (0.0..u64::MAX as f64).contains(&f))
        }
        Some(_) => false,
    }
}

fn algorithm(name: &str) -> Result<(Algorithm, &'static str), AuthError> {
    let unsupported = || AuthError::UnsupportedAlgorithm(name.to_owned());
    let alg = Algorithm::from_str(name).map_err(|_| unsupported())?;
    let name = match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => return Err(unsupported()),
    };
    Ok((alg, name))
}

fn public_key(
    path: &Path,
    alg: Algorithm,
    alg_name: &'static str,
) -> Result<DecodingKey, AuthError> {
    let pem = std::fs::read(path).map_err(|source| AuthError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| AuthError::BadPem {
        path: path.to_owned(),
        alg: alg_name,
        reason,
    };
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(bad(
            "it holds a private key; give the public one (`openssl pkey -in key.pem -pubout`)"
                .to_owned(),
        ));
    }
    if !text.contains("-----BEGIN ") {
        return Err(bad("no `-----BEGIN …-----` line".to_owned()));
    }
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        _ => DecodingKey::from_ec_pem(&pem),
    };
    key.map_err(|err| bad(err.to_string()))
}

/// The `alg` named by a token's header, or `Malformed`.
fn header_alg(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<Value>(&json) {
        Ok(Value::Object(mut fields)) => match fields.remove("alg") {
            Some(Value::String(alg)) => Ok(alg),
            _ => Err(TokenError::WrongAlgorithm),
        },
        _ => Err(TokenError::Malformed),
    }
}

fn token_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => TokenError::InvalidSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
        ErrorKind::InvalidAudience => TokenError::InvalidClaim("aud"),
        ErrorKind::InvalidIssuer => TokenError::InvalidClaim("iss"),
        ErrorKind::InvalidSubject => TokenError::InvalidClaim("sub"),
        _ => TokenError::Malformed,
    }
}

/// The token of a request, from the first transport that carries one.
fn find_token(uri: &Uri, headers: &HeaderMap) -> Option<String> {
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
fn bearer(headers: &HeaderMap) -> Option<&str> {
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
fn offers_bearer(headers: &HeaderMap) -> bool {
    protocols(headers).any(|p| p == BEARER_PROTOCOL)
}

/// The entry right after `bearer` in `Sec-WebSocket-Protocol`.
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut entries = protocols(headers);
    entries.find(|p| *p == BEARER_PROTOCOL)?;
    entries.next()
}

/// The first non-empty query parameter `name`, percent-decoded.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .find(|v| !v.is_empty())
        .map(percent_decode)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn allowed_origins(list: &[String]) -> Result<HashSet<String>, AuthError> {
    let origins = list
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            normalize_origin(o).map_err(|reason| AuthError::BadOrigin {
                origin: o.to_owned(),
                reason,
            })
        })
        .collect::<Result<HashSet<_>, _>>()?;
    if origins.is_empty() {
        return Err(AuthError::NoOrigins);
    }
    Ok(origins)
}

/// `scheme://host[:port]` with scheme and host in lower case, the scheme's
/// default port (80 for http/ws, 443 for https/wss) dropped, and one
/// trailing `/` dropped. Anything that is not an origin is an error.
pub fn normalize_origin(raw: &str) -> Result<String, &'static str> {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://").ok_or("no `scheme://`")?;
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err("bad scheme");
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err("no host");
    }
    if authority
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return Err("an origin has no path, query, fragment or user");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inside, after) = v6.split_once(']').ok_or("unclosed `[`")?;
            if inside.is_empty() {
                return Err("no host");
            }
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or("junk after `]`")?),
            };
            (format!("[{}]", inside.to_ascii_lowercase()), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (authority.to_ascii_lowercase(), None),
        },
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = match port {
        None => None,
        Some(port) => {
            let port: u16 = port
                .parse()
                .map_err(|_| "the port is not a number from 0 to 65535")?;
            let default = match scheme.as_str() {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            };
            (default != Some(port)).then_some(port)
        }
    };
    Ok(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    #[test]
    fn origins_are_normalized() {
        for (raw, want) in [
            ("HTTP://Example.com:80/", "http://example.com"),
            ("http://example.com", "http://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("wss://Example.com:443/", "wss://example.com"),
            ("ws://example.com:80", "ws://example.com"),
            ("https://example.com:80", "https://example.com:80"),
            ("http://localhost:8050", "http://localhost:8050"),
            ("http://[::1]:8050", "http://[::1]:8050"),
            ("http://[::1]:80/", "http://[::1]"),
            ("chrome-extension://ABCDEF", "chrome-extension://abcdef"),
            ("  https://a.example  ", "https://a.example"),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "example.com",
            "null",
            "http://",
            "http:///",
            "http://example.com/path",
            "http://example.com?q",
            "http://user@example.com",
            "http://example.com:http",
            "http://example.com:70000",
            "http://[::1",
            "1http://example.com",
            "http://:80",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad} accepted");
        }
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

    #[test]
    fn api_key_comparison() {
        let auth = Auth::from_config(&Config {
            api_key: Some("s3cret".to_owned()),
            ..Config::default()
        })
        .unwrap();
        assert!(auth.publisher_allowed(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(auth.publisher_allowed(&headers(&[("authorization", "bearer s3cret")])));
        assert!(!auth.publisher_allowed(&headers(&[("authorization", "Bearer s3cre")])));
        assert!(!auth.publisher_allowed(&headers(&[("authorization", "Bearer s3cret2")])));
        assert!(!auth.publisher_allowed(&headers(&[("authorization", "s3cret")])));
        assert!(!auth.publisher_allowed(&HeaderMap::new()));
        let open = Auth::from_config(&Config::default()).unwrap();
        assert!(open.publisher_allowed(&HeaderMap::new()));
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let with = |f: fn(&mut Config)| {
            let mut config = Config::default();
            f(&mut config);
            Auth::from_config(&config).unwrap_err()
        };
        assert!(matches!(
            with(|c| c.allowed_origins = Some(vec!["https://ok.example".into(), "nope".into()])),
            AuthError::BadOrigin { origin, .. } if origin == "nope"
        ));
        assert!(matches!(
            with(|c| c.allowed_origins = Some(vec![String::new()])),
            AuthError::NoOrigins
        ));
        assert!(matches!(
            with(|c| c.jwt_public_key_file = Some(fixture("rsa_public.pem"))),
            AuthError::MissingSecret { alg: "HS256" }
        ));
        assert!(matches!(
            with(|c| c.jwt_alg = "RS256".into()),
            AuthError::MissingKeyFile { alg: "RS256" }
        ));
        assert!(matches!(
            with(|c| {
                c.jwt_alg = "ES256".into();
                c.jwt_secret = Some("x".into());
            }),
            AuthError::MissingKeyFile { alg: "ES256" }
        ));
        assert!(matches!(
            with(|c| {
                c.jwt_secret = Some("x".into());
                c.jwt_public_key_file = Some(fixture("rsa_public.pem"));
            }),
            AuthError::SecretAndKeyFile
        ));
        assert!(matches!(
            with(|c| c.jwt_secret = Some(String::new())),
            AuthError::Empty("JWT_SECRET")
        ));
        assert!(matches!(
            with(|c| c.api_key = Some(String::new())),
            AuthError::Empty("API_KEY")
        ));
        assert!(matches!(
            with(|c| {
                c.jwt_alg = "RS256".into();
                c.jwt_public_key_file = Some(fixture("missing.pem"));
            }),
            AuthError::KeyFile { .. }
        ));
        assert!(matches!(
            with(|c| c.jwt_alg = "PS256".into()),
            AuthError::UnsupportedAlgorithm(_)
        ));
        for (alg, file) in [
            ("RS256", "ec_public.pem"),
            ("ES256", "rsa_public.pem"),
            ("RS256", "rsa_private.pem"),
            ("ES256", "ec_private.pem"),
            ("RS256", "README.md"),
        ] {
            let mut config = Config {
                jwt_alg: alg.into(),
                jwt_public_key_file: Some(fixture(file)),
                ..Config::default()
            };
            let err = Auth::from_config(&config).unwrap_err();
            assert!(
                matches!(err, AuthError::BadPem { .. }),
                "{alg} {file}: {err}"
            );
            config.jwt_public_key_file = Some(fixture(&file.replace("private", "public")));
            if file.contains("private") {
                Auth::from_config(&config).unwrap();
            }
        }
    }

    #[test]
    fn hs256_verification_reasons() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let auth = Auth::from_config(&Config {
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Config::default()
        })
        .unwrap();
        let jwt = auth.jwt.as_ref().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |alg, claims: Value, secret: &str| {
            encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let secret = "0123456789abcdef0123456789abcdef";
        let ok = sign(
            Algorithm::HS256,
            serde_json::json!({"sub":"u1","exp":now+60}),
            secret,
        );
        assert_eq!(jwt.verify(&ok), Ok("u1".to_owned()));
        // The seed's smoke-test token has no `exp`: accepted by default.
        let seed = sign(
            Algorithm::HS256,
            serde_json::json!({"sub":"u1","iat":now}),
            secret,
        );
        assert_eq!(jwt.verify(&seed), Ok("u1".to_owned()));
        let cases = [
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":"soon"}),
                    secret,
                ),
                TokenError::InvalidClaim("exp"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":-1}),
                    secret,
                ),
                TokenError::InvalidClaim("exp"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","nbf":"2026-01-01"}),
                    secret,
                ),
                TokenError::InvalidClaim("nbf"),
            ),
            (
                sign(Algorithm::HS256, serde_json::json!({"exp":now+60}), secret),
                TokenError::MissingClaim("sub".into()),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":42,"exp":now+60}),
                    secret,
                ),
                TokenError::InvalidClaim("sub"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"","exp":now+60}),
                    secret,
                ),
                TokenError::InvalidClaim("sub"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"x".repeat(MAX_CLIENT_ID + 1),"exp":now+60}),
                    secret,
                ),
                TokenError::InvalidClaim("sub"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":now+60,"nbf":now+3600}),
                    secret,
                ),
                TokenError::NotYetValid,
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":now+60,"aud":"other"}),
                    secret,
                ),
                TokenError::InvalidClaim("aud"),
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":now - LEEWAY_SECS - 60}),
                    secret,
                ),
                TokenError::Expired,
            ),
            (
                sign(
                    Algorithm::HS384,
                    serde_json::json!({"sub":"u1","exp":now+60}),
                    secret,
                ),
                TokenError::WrongAlgorithm,
            ),
            (
                sign(
                    Algorithm::HS256,
                    serde_json::json!({"sub":"u1","exp":now+60}),
                    "another secret",
                ),
                TokenError::InvalidSignature,
            ),
            ("abc".to_owned(), TokenError::Malformed),
            ("a.b.c".to_owned(), TokenError::Malformed),
            (
                format!("{}.e30.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)),
                TokenError::WrongAlgorithm,
            ),
            (
                format!("{}.e30.", URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#)),
                TokenError::WrongAlgorithm,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(jwt.verify(&token), Err(want.clone()), "{want}");
        }
        let within_leeway = sign(
            Algorithm::HS256,
            serde_json::json!({"sub":"u1","exp":now - 5}),
            secret,
        );
        assert_eq!(jwt.verify(&within_leeway), Ok("u1".to_owned()));
    }

    #[test]
    fn exp_audience_and_issuer_can_be_required() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let secret = "0123456789abcdef0123456789abcdef";
        let auth = Auth::from_config(&Config {
            jwt_secret: Some(secret.into()),
            jwt_require_exp: true,
            jwt_audience: Some("wsnotify".into()),
            jwt_issuer: Some("https://auth.example".into()),
            ..Config::default()
        })
        .unwrap();
        let jwt = auth.jwt.as_ref().unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let sign = |claims: Value| {
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let iss = "https://auth.example";
        assert_eq!(
            jwt.verify(&sign(
                serde_json::json!({"sub":"u1","exp":exp,"aud":"wsnotify","iss":iss})
            )),
            Ok("u1".to_owned())
        );
        for (claims, want) in [
            (
                serde_json::json!({"sub":"u1","aud":"wsnotify","iss":iss}),
                TokenError::MissingClaim("exp".into()),
            ),
            (
                serde_json::json!({"sub":"u1","exp":exp,"iss":iss}),
                TokenError::MissingClaim("aud".into()),
            ),
            (
                serde_json::json!({"sub":"u1","exp":exp,"aud":"other","iss":iss}),
                TokenError::InvalidClaim("aud"),
            ),
            (
                serde_json::json!({"sub":"u1","exp":exp,"aud":"wsnotify"}),
                TokenError::MissingClaim("iss".into()),
            ),
            (
                serde_json::json!({"sub":"u1","exp":exp,"aud":"wsnotify","iss":"evil"}),
                TokenError::InvalidClaim("iss"),
            ),
        ] {
            assert_eq!(jwt.verify(&sign(claims)), Err(want.clone()), "{want}");
        }
    }
}
