//! JSON Web Tokens: the key loaded once from `JWT_SECRET` or
//! `JWT_PUBLIC_KEY_FILE`, and the check of a client's token whose `sub`
//! becomes the connection's user.

use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;
use crate::config::Config;
use crate::limits::user_id_fits;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: a token is refused
/// as expired once `exp` is more than this far in the past.
pub const LEEWAY_SECS: u64 = 30;

/// HS* secrets shorter than this many bytes get a start-up warning.
const SHORT_SECRET: usize = 32;

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

/// The token settings, checked and loaded once.
pub(super) struct Jwt {
    pub(super) alg_name: &'static str,
    key: DecodingKey,
    validation: Validation,
}

impl Jwt {
    pub(super) fn from_config(config: &Config) -> Result<Option<Jwt>, AuthError> {
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
    pub(super) fn verify(&self, token: &str) -> Result<String, TokenError> {
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
            Some(Value::String(sub)) if !sub.is_empty() && user_id_fits(&sub) => Ok(sub),
            // RFC 7519 wants a string, but backends that put a numeric user
            // id there are common (PyJWT before 2.10 signed one as it was;
            // seed 004 publishes on `notifications:{user_id}`): an integer
            // is that user's id in decimal. A fraction is no id.
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_USER_ID;

    #[test]
    fn hs256_verification_reasons() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let jwt = Jwt::from_config(&Config {
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Config::default()
        })
        .unwrap()
        .unwrap();
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
                    serde_json::json!({"sub":4.2,"exp":now+60}),
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
                    serde_json::json!({"sub":"x".repeat(MAX_USER_ID + 1),"exp":now+60}),
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
        let jwt = Jwt::from_config(&Config {
            jwt_secret: Some(secret.into()),
            jwt_require_exp: true,
            jwt_audience: Some("wsnotify".into()),
            jwt_issuer: Some("https://auth.example".into()),
            ..Config::default()
        })
        .unwrap()
        .unwrap();
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
