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

mod jwt;
mod origin;
mod token;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, StatusCode, Uri};
use subtle::ConstantTimeEq;

use crate::config::Config;

use self::jwt::Jwt;
pub use self::jwt::{LEEWAY_SECS, TokenError};
use self::origin::allowed_origins;
pub use self::origin::normalize_origin;
pub use self::token::BEARER_PROTOCOL;
use self::token::{bearer, find_token, offers_bearer};

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

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::token::tests::headers;
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
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
}
