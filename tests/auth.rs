//! Authentication before the upgrade: JWTs (HS256, RS256, ES256) by each
//! transport, the origin allow-list, the API key of the publishing routes,
//! open mode, and the start-up refusal of a bad key file. Real servers (in
//! process, and the binary), real clients; tokens are signed at run time
//! from the keys in `fixtures/`, so expiry is relative to now.

mod support;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use wsnotify::Config;
use wsnotify::auth::LEEWAY_SECS;

const SECRET: &str = "test-only-secret-0123456789abcdef0123";
const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../fixtures/ec_private.pem");

fn hs256() -> Config {
    Config {
        jwt_secret: Some(SECRET.to_owned()),
        ..quiet_config()
    }
}

fn with_key_file(alg: &str, file: &str) -> Config {
    Config {
        jwt_alg: alg.to_owned(),
        jwt_public_key_file: Some(fixture(file)),
        ..quiet_config()
    }
}

/// `sub` and an `exp` `exp_in` seconds from now (negative: in the past).
fn claims(sub: &str, exp_in: i64) -> Value {
    json!({ "sub": sub, "exp": get_current_timestamp() as i64 + exp_in })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn secret_key(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
}

/// A valid HS256 token for `sub`, signed with [`SECRET`].
fn hs(sub: &str) -> String {
    sign(Algorithm::HS256, &secret_key(SECRET), &claims(sub, 300))
}

/// `token` with its payload swapped for `claims`, signature kept.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// Upgrades (101 expected) and reads the greeting.
async fn open(req: Request) -> (Ws, Response) {
    let (mut ws, res) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
        .unwrap_or_else(|err| panic!("upgrade failed: {}", describe(err)));
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(next_text(&mut ws).await, "🟢 Connected to server");
    (ws, res)
}

fn describe(err: tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(res) => format!(
            "{} {}",
            res.status(),
            String::from_utf8_lossy(res.body().as_deref().unwrap_or_default())
        ),
        other => other.to_string(),
    }
}

/// Asserts the upgrade is refused with `status` and `{"error": reason}`;
/// a 401 also carries `WWW-Authenticate: Bearer`.
async fn assert_refused(req: Request, status: StatusCode, reason: &str) {
    let (got, headers, body) = refusal(req).await;
    assert_eq!((got, body["error"].as_str()), (status, Some(reason)));
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
}

/// Proves `ws` belongs to `user`: `POST /notify/{user}` reaches it.
async fn assert_is_user(server: &TestServer, ws: &mut Ws, user: &str) {
    let text = format!("for {user} only");
    let reply = http(
        server.addr,
        Method::POST,
        &format!("/notify/{user}"),
        &json!({ "message": text }).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["instances"], 1);
    assert_eq!(next_text(ws).await, text);
}

// ---------------------------------------------------------------- HS256

#[tokio::test]
async fn hs256_token_in_the_query_connects_as_its_sub() {
    let server = TestServer::start(hs256()).await;
    let (mut ws, res) = open(upgrade_request(
        &server,
        &format!("/ws?token={}", hs("alice")),
        &[],
    ))
    .await;
    assert!(res.headers().get("sec-websocket-protocol").is_none());
    assert_is_user(&server, &mut ws, "alice").await;
}

#[tokio::test]
async fn hs256_token_in_the_authorization_header() {
    let server = TestServer::start(hs256()).await;
    let bearer = format!("Bearer {}", hs("bob"));
    let (mut ws, _) = open(upgrade_request(
        &server,
        "/ws",
        &[("authorization", &bearer)],
    ))
    .await;
    assert_is_user(&server, &mut ws, "bob").await;
}

#[tokio::test]
async fn hs256_token_in_sec_websocket_protocol_and_the_101_selects_bearer() {
    let server = TestServer::start(hs256()).await;
    let offered = format!("bearer, {}", hs("carol"));
    let (mut ws, res) = open(upgrade_request(
        &server,
        "/ws",
        &[("sec-websocket-protocol", &offered)],
    ))
    .await;
    assert_eq!(res.headers()["sec-websocket-protocol"], "bearer");
    assert_is_user(&server, &mut ws, "carol").await;

    // Other offered protocols around the pair do not matter.
    let offered = format!("chat.v1, bearer, {}, other", hs("dave"));
    let (mut ws, res) = open(upgrade_request(
        &server,
        "/ws",
        &[("sec-websocket-protocol", &offered)],
    ))
    .await;
    assert_eq!(res.headers()["sec-websocket-protocol"], "bearer");
    assert_is_user(&server, &mut ws, "dave").await;
}

#[tokio::test]
async fn the_sub_is_the_user_and_a_different_path_client_id_is_403() {
    let server = TestServer::start(hs256()).await;
    let token = hs("erin");
    let (mut ws, _) = open(upgrade_request(
        &server,
        &format!("/ws/erin?token={token}"),
        &[],
    ))
    .await;
    assert_is_user(&server, &mut ws, "erin").await;
    assert_refused(
        upgrade_request(&server, &format!("/ws/mallory?token={token}"), &[]),
        StatusCode::FORBIDDEN,
        "client_id does not match the token's sub",
    )
    .await;
}

#[tokio::test]
async fn a_missing_token_is_401() {
    let server = TestServer::start(hs256()).await;
    for req in [
        upgrade_request(&server, "/ws", &[]),
        upgrade_request(&server, "/ws/alice", &[]),
        upgrade_request(&server, "/ws?token=", &[]),
        upgrade_request(&server, "/ws", &[("authorization", "Basic dXNlcjpwdw==")]),
    ] {
        assert_refused(req, StatusCode::UNAUTHORIZED, "missing token").await;
    }
    // `bearer` offered without a token after it.
    let (status, _, body) = refusal(upgrade_request(
        &server,
        "/ws",
        &[("sec-websocket-protocol", "bearer")],
    ))
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing token"))
    );
    wait_for_connections(server.addr, 0).await;
}

#[tokio::test]
async fn a_malformed_token_is_401() {
    let server = TestServer::start(hs256()).await;
    for bad in ["not-a-jwt", "a.b.c", "x.y.z.w"] {
        assert_refused(
            upgrade_request(&server, &format!("/ws?token={bad}"), &[]),
            StatusCode::UNAUTHORIZED,
            "malformed token",
        )
        .await;
    }
    assert_refused(
        upgrade_request(&server, "/ws", &[("authorization", "Bearer x.y")]),
        StatusCode::UNAUTHORIZED,
        "malformed token",
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let server = TestServer::start(hs256()).await;
    let forged = sign(
        Algorithm::HS256,
        &secret_key("some-other-secret-0123456789abcdef"),
        &claims("alice", 300),
    );
    assert_refused(
        upgrade_request(&server, &format!("/ws?token={forged}"), &[]),
        StatusCode::UNAUTHORIZED,
        "invalid signature",
    )
    .await;
    let swapped = tampered(&hs("alice"), &claims("mallory", 300));
    assert_refused(
        upgrade_request(&server, &format!("/ws?token={swapped}"), &[]),
        StatusCode::UNAUTHORIZED,
        "invalid signature",
    )
    .await;
}

#[tokio::test]
async fn an_expired_token_is_401_and_a_small_clock_skew_is_tolerated() {
    let server = TestServer::start(hs256()).await;
    let key = secret_key(SECRET);
    let expired = sign(
        Algorithm::HS256,
        &key,
        &claims("alice", -(LEEWAY_SECS as i64) - 60),
    );
    assert_refused(
        upgrade_request(&server, &format!("/ws?token={expired}"), &[]),
        StatusCode::UNAUTHORIZED,
        "token expired",
    )
    .await;
    // Expired 5 s ago: within the leeway.
    let just = sign(Algorithm::HS256, &key, &claims("alice", -5));
    let (mut ws, _) = open(upgrade_request(&server, &format!("/ws?token={just}"), &[])).await;
    assert_is_user(&server, &mut ws, "alice").await;
}

#[tokio::test]
async fn a_token_of_another_algorithm_is_401() {
    let server = TestServer::start(hs256()).await;
    let hs512 = sign(Algorithm::HS512, &secret_key(SECRET), &claims("alice", 300));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("alice", 300).to_string())
    );
    for token in [hs512, none] {
        assert_refused(
            upgrade_request(&server, &format!("/ws?token={token}"), &[]),
            StatusCode::UNAUTHORIZED,
            "wrong algorithm",
        )
        .await;
    }
}

#[tokio::test]
async fn a_token_without_sub_or_exp_is_401() {
    let server = TestServer::start(Config {
        jwt_require_exp: true,
        ..hs256()
    })
    .await;
    let key = secret_key(SECRET);
    for (claims, reason) in [
        (json!({ "sub": "alice" }), "missing claim: exp"),
        (
            json!({ "exp": get_current_timestamp() + 300 }),
            "missing claim: sub",
        ),
    ] {
        let token = sign(Algorithm::HS256, &key, &claims);
        assert_refused(
            upgrade_request(&server, &format!("/ws?token={token}"), &[]),
            StatusCode::UNAUTHORIZED,
            reason,
        )
        .await;
    }
}

// ---------------------------------------------------------------- RS256, ES256

#[tokio::test]
async fn rs256_with_the_fixture_keys() {
    let server = TestServer::start(with_key_file("RS256", "rsa_public.pem")).await;
    let good = sign(Algorithm::RS256, &rsa_key(), &claims("rita", 300));
    let bearer = format!("Bearer {good}");
    let (mut ws, _) = open(upgrade_request(
        &server,
        "/ws",
        &[("authorization", &bearer)],
    ))
    .await;
    assert_is_user(&server, &mut ws, "rita").await;

    let refused = [
        (
            tampered(&good, &claims("mallory", 300)),
            "invalid signature",
        ),
        (
            sign(Algorithm::RS256, &rsa_key(), &claims("rita", -3600)),
            "token expired",
        ),
        // The classic confusion: HMAC keyed with the public key's PEM.
        (
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(RSA_PUBLIC),
                &claims("rita", 300),
            ),
            "wrong algorithm",
        ),
        (
            sign(Algorithm::ES256, &ec_key(), &claims("rita", 300)),
            "wrong algorithm",
        ),
    ];
    for (token, reason) in refused {
        assert_refused(
            upgrade_request(&server, &format!("/ws?token={token}"), &[]),
            StatusCode::UNAUTHORIZED,
            reason,
        )
        .await;
    }
}

#[tokio::test]
async fn es256_with_the_fixture_keys() {
    let server = TestServer::start(with_key_file("ES256", "ec_public.pem")).await;
    let good = sign(Algorithm::ES256, &ec_key(), &claims("eve", 300));
    let offered = format!("bearer, {good}");
    let (mut ws, res) = open(upgrade_request(
        &server,
        "/ws/eve",
        &[("sec-websocket-protocol", &offered)],
    ))
    .await;
    assert_eq!(res.headers()["sec-websocket-protocol"], "bearer");
    assert_is_user(&server, &mut ws, "eve").await;

    let refused = [
        (
            tampered(&good, &claims("mallory", 300)),
            "invalid signature",
        ),
        (
            sign(Algorithm::ES256, &ec_key(), &claims("eve", -3600)),
            "token expired",
        ),
        (
            sign(Algorithm::RS256, &rsa_key(), &claims("eve", 300)),
            "wrong algorithm",
        ),
        (
            sign(Algorithm::HS256, &secret_key(SECRET), &claims("eve", 300)),
            "wrong algorithm",
        ),
    ];
    for (token, reason) in refused {
        assert_refused(
            upgrade_request(&server, &format!("/ws?token={token}"), &[]),
            StatusCode::UNAUTHORIZED,
            reason,
        )
        .await;
    }
}

// ---------------------------------------------------------------- origins

fn with_origins(config: Config) -> Config {
    Config {
        allowed_origins: Some(vec![
            "https://app.example.com".to_owned(),
            "HTTP://Example.com:80/".to_owned(),
        ]),
        ..config
    }
}

#[tokio::test]
async fn allowed_origins_pass_after_normalization_and_others_get_403() {
    let server = TestServer::start(with_origins(quiet_config())).await;
    for origin in [
        "https://app.example.com",
        "http://example.com",
        "HTTPS://App.Example.com:443/",
    ] {
        open(upgrade_request(&server, "/ws", &[("origin", origin)])).await;
    }
    for origin in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://example.com",
        "https://app.example.com:8443",
        "null",
    ] {
        assert_refused(
            upgrade_request(&server, "/ws", &[("origin", origin)]),
            StatusCode::FORBIDDEN,
            "origin not allowed",
        )
        .await;
    }
}

#[tokio::test]
async fn a_request_without_origin_is_allowed() {
    let server = TestServer::start(with_origins(quiet_config())).await;
    let (mut ws, _) = open(upgrade_request(&server, "/ws/cli", &[])).await;
    assert_is_user(&server, &mut ws, "cli").await;
}

#[tokio::test]
async fn the_origin_is_checked_before_the_token_and_the_upgrade_before_both() {
    let server = TestServer::start(with_origins(hs256())).await;
    let evil = [("origin", "https://evil.example.com")];
    assert_refused(
        upgrade_request(&server, "/ws", &evil),
        StatusCode::FORBIDDEN,
        "origin not allowed",
    )
    .await;
    let good_origin = [("origin", "https://app.example.com")];
    assert_refused(
        upgrade_request(&server, "/ws", &good_origin),
        StatusCode::UNAUTHORIZED,
        "missing token",
    )
    .await;
    let (mut ws, _) = open(upgrade_request(
        &server,
        &format!("/ws?token={}", hs("olga")),
        &good_origin,
    ))
    .await;
    assert_is_user(&server, &mut ws, "olga").await;
    // A plain GET is answered 426 whatever its origin and token.
    let reply = http_with(server.addr, Method::GET, "/ws", "", &evil).await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
}

// ---------------------------------------------------------------- API key

const API_KEY: &str = "test-only-api-key";

#[tokio::test]
async fn the_api_key_guards_broadcast_and_notify() {
    let server = TestServer::start(Config {
        api_key: Some(API_KEY.to_owned()),
        ..quiet_config()
    })
    .await;
    let mut ws = connect(server.addr, "/ws/u1").await;
    let body = r#"{"message":"guarded"}"#;
    let right = format!("Bearer {API_KEY}");
    for path in ["/broadcast", "/notify/u1"] {
        for headers in [
            &[][..],
            &[("authorization", "Bearer wrong-key")],
            &[("authorization", "Bearer test-only-api-ke")],
            &[("authorization", API_KEY)],
        ] {
            let reply = http_with(server.addr, Method::POST, path, body, headers).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path} {headers:?}");
            assert_eq!(reply.json(), json!({ "error": "missing or wrong API key" }));
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
        assert_silent(&mut ws).await;
        let reply = http_with(
            server.addr,
            Method::POST,
            path,
            body,
            &[("authorization", &right)],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_eq!(next_text(&mut ws).await, "guarded");
    }
}

#[tokio::test]
async fn the_api_key_leaves_reads_and_websockets_alone() {
    let server = TestServer::start(Config {
        api_key: Some(API_KEY.to_owned()),
        ..quiet_config()
    })
    .await;
    let mut a = connect(server.addr, "/ws/a").await;
    let mut b = connect(server.addr, "/ws/b").await;
    send(&mut a, "hi").await;
    assert_eq!(next_text(&mut a).await, "You said: hi");
    assert_eq!(next_text(&mut b).await, "New message: hi");
    for path in ["/connections", "/health", "/ready", "/metrics", "/"] {
        let reply = http(server.addr, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

// ---------------------------------------------------------------- open mode

#[tokio::test]
async fn open_mode_needs_no_token_and_ignores_one() {
    let server = TestServer::start(quiet_config()).await;
    let (mut ws, _) = open(upgrade_request(&server, "/ws/olaf", &[])).await;
    assert_is_user(&server, &mut ws, "olaf").await;
    // Nothing to check a token against: the path decides, garbage is ignored.
    let (mut ws, _) = open(upgrade_request(&server, "/ws/otto?token=garbage", &[])).await;
    assert_is_user(&server, &mut ws, "otto").await;
    // A browser client written for auth still gets its protocol selected.
    let (_ws, res) = open(upgrade_request(
        &server,
        "/ws",
        &[("sec-websocket-protocol", "bearer, whatever")],
    ))
    .await;
    assert_eq!(res.headers()["sec-websocket-protocol"], "bearer");
    // Publishing is open without API_KEY.
    let reply = broadcast(server.addr, "open").await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ---------------------------------------------------------------- start-up

/// Runs the real binary with `env` and returns (success, stderr); it must
/// exit by itself within a few seconds.
async fn run_binary(env: &[(&str, &str)]) -> (bool, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsnotify"))
        .args(["--port", "0"])
        .env("RUST_LOG", "info")
        .env("NOTIFICATION_INTERVAL", "0")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_ALG")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .env_remove("ALLOWED_ORIGINS")
        .env_remove("API_KEY")
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsnotify");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("wsnotify kept running with a bad configuration")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_key_file_stops_the_binary_before_it_listens() {
    let missing = fixture("no-such-key.pem");
    let (ok, log) = run_binary(&[
        ("JWT_ALG", "RS256"),
        ("JWT_PUBLIC_KEY_FILE", missing.to_str().unwrap()),
    ])
    .await;
    assert!(!ok, "exited 0:\n{log}");
    assert!(
        log.contains("cannot read JWT_PUBLIC_KEY_FILE")
            && log.contains("no-such-key.pem")
            && log.contains("No such file"),
        "unclear message:\n{log}"
    );
    assert!(!log.contains("listening on"), "{log}");

    let (ok, log) = run_binary(&[("JWT_ALG", "RS256")]).await;
    assert!(!ok, "exited 0:\n{log}");
    assert!(
        log.contains("JWT_ALG=RS256 needs JWT_PUBLIC_KEY_FILE"),
        "{log}"
    );

    let wrong = fixture("rsa_public.pem");
    let (ok, log) = run_binary(&[
        ("JWT_ALG", "ES256"),
        ("JWT_PUBLIC_KEY_FILE", wrong.to_str().unwrap()),
    ])
    .await;
    assert!(!ok, "exited 0:\n{log}");
    assert!(log.contains("is not a PEM ES256 public key"), "{log}");
}

#[tokio::test]
async fn the_seed_smoke_test_token_without_exp_connects_unless_exp_is_required() {
    // Seed 003: jwt.encode({"sub":"u1","iat":now}, secret, "HS256").
    let token = sign(
        Algorithm::HS256,
        &secret_key(SECRET),
        &json!({ "sub": "u1", "iat": get_current_timestamp() }),
    );
    let server = TestServer::start(hs256()).await;
    let (mut ws, _) = open(upgrade_request(
        &server,
        &format!("/ws/u1?token={token}"),
        &[],
    ))
    .await;
    ws.close(None).await.unwrap();

    let strict = TestServer::start(Config {
        jwt_require_exp: true,
        ..hs256()
    })
    .await;
    assert_refused(
        upgrade_request(&strict, &format!("/ws?token={token}"), &[]),
        StatusCode::UNAUTHORIZED,
        "missing claim: exp",
    )
    .await;
}

#[tokio::test]
async fn the_fixture_tokens_work_as_documented() {
    let token = |name: &str| {
        std::fs::read_to_string(fixture(&format!("tokens/{name}")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let hs = TestServer::start(Config {
        jwt_secret: Some("wsnotify-fixture-secret-0123456789abcdef".to_owned()),
        ..quiet_config()
    })
    .await;
    let path = format!("/ws?token={}", token("hs256-u1.jwt"));
    let (mut ws, _) = open(upgrade_request(&hs, &path, &[])).await;
    assert_is_user(&hs, &mut ws, "u1").await;
    let expired = format!("/ws?token={}", token("hs256-alice-expired.jwt"));
    assert_refused(
        upgrade_request(&hs, &expired, &[]),
        StatusCode::UNAUTHORIZED,
        "token expired",
    )
    .await;
    for (alg, key, file) in [
        ("RS256", "rsa_public.pem", "rs256-u1.jwt"),
        ("ES256", "ec_public.pem", "es256-u1.jwt"),
    ] {
        let server = TestServer::start(with_key_file(alg, key)).await;
        let path = format!("/ws?token={}", token(file));
        let (mut ws, _) = open(upgrade_request(&server, &path, &[])).await;
        assert_is_user(&server, &mut ws, "u1").await;
    }
}
