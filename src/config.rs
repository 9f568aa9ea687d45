//! Configuration: one [`Config`], filled from flags or the seeds' environment
//! variable names. Every field documents its default and unit; `--help` shows
//! the same defaults. Values that make no sense are refused by the parser, so
//! a bad setting stops the process at start-up with a message naming it.

use std::time::Duration;

use clap::Parser;

/// Default listen host, as the seeds' `uvicorn --host localhost`.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default listen port, the primary seed's `--port 8050`.
pub const DEFAULT_PORT: u16 = 8050;
/// Default drain window after SIGINT/SIGTERM: 30 minutes, as in the seeds.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default period of the drain progress log line.
pub const DEFAULT_SHUTDOWN_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Default period of the "Periodic notification" push (seed 002).
pub const DEFAULT_NOTIFICATION_INTERVAL: Duration = Duration::from_secs(10);
/// Default largest inbound message and HTTP body: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default per-connection outbound queue bound, in frames.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default per-connection outbound queue bound, in bytes: 16 MiB.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Default longest wait for a Redis command or connection.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Default period of the Redis link check and connection-count refresh.
pub const DEFAULT_REDIS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Default period of WebSocket pings to clients.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(25);
/// Default silence after which a client is closed with 4000.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(70);

/// Default messages per second (and burst) one client may send.
pub const DEFAULT_RATE_LIMIT: u32 = 100;
/// Default life of a presence entry not refreshed (seed 003): 60 s.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(60);
/// Default longest `text` of a `chat.message`, in characters.
pub const DEFAULT_MAX_TEXT_LENGTH: usize = 4096;

/// Default messages kept per stream; 0 turns history off.
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// Default longest a message is kept: 5 minutes.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// Default cap of all history together (memory mode): 64 MiB.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default life of a stream's epoch and offset after its last use: 1 day.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default window over which drained JSON clients are told to reconnect.
pub const DEFAULT_DRAIN_RECONNECT_SPREAD: Duration = Duration::from_secs(10);
/// Default idle time after which another instance claims a pending inbox
/// entry (Redis mode).
pub const DEFAULT_INBOX_CLAIM_AFTER: Duration = Duration::from_secs(10);

/// Largest accepted `HISTORY_SIZE`.
const HISTORY_SIZE_CAP: usize = 100_000;

/// Largest accepted `MAX_MESSAGE_SIZE`: 16 MiB. Beyond that one client could
/// make the server hold too much memory for a single frame.
const MAX_MESSAGE_SIZE_CAP: usize = 16 * 1024 * 1024;
/// Largest accepted `OUTBOUND_QUEUE`.
const OUTBOUND_QUEUE_CAP: usize = 1 << 20;
/// Longest accepted duration setting: one week.
const DURATION_CAP_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// wsnotify: a real-time WebSocket notification server.
///
/// Every option can also be set by the environment variable named in its
/// help line; flags win over the environment.
#[derive(Debug, Clone, Parser)]
#[command(name = "wsnotify", version, about)]
pub struct Config {
    /// Address to listen on (an IP address or a host name such as `localhost`).
    /// Default: 127.0.0.1.
    #[arg(long, env = "HOST", default_value = DEFAULT_HOST)]
    pub host: String,

    /// TCP port to listen on; 0 picks a free port (the chosen one is logged).
    /// Default: 8050.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Seconds to wait for clients to leave after SIGINT/SIGTERM before
    /// force-closing them with 1001. Fractions allowed. Default: 1800 (30 min).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "1800", value_parser = non_negative_secs)]
    pub shutdown_timeout: Duration,

    /// Seconds between drain progress log lines. Must be > 0. Default: 5.
    #[arg(long, env = "SHUTDOWN_LOG_INTERVAL", default_value = "5", value_parser = positive_secs)]
    pub shutdown_log_interval: Duration,

    /// Seconds between "Periodic notification" pushes to every client;
    /// 0 disables them. Default: 10.
    #[arg(long, env = "NOTIFICATION_INTERVAL", default_value = "10", value_parser = non_negative_secs)]
    pub notification_interval: Duration,

    /// Largest inbound WebSocket message and HTTP request body, in bytes
    /// (1 ..= 16777216). Larger messages are closed with 1009, larger
    /// bodies answered 413. Default: 65536 (64 KiB).
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_parser = message_size)]
    pub max_message_size: usize,

    /// Frames that may wait for one slow client before it is disconnected
    /// with close code 4008 (1 ..= 1048576). Default: 1024.
    #[arg(long, env = "OUTBOUND_QUEUE", default_value_t = DEFAULT_OUTBOUND_QUEUE, value_parser = queue_bound)]
    pub outbound_queue: usize,

    /// Bytes that may wait for one slow client before it is disconnected
    /// with 4008 (1024 ..= 1073741824); one frame alone may be larger.
    /// Default: 16777216 (16 MiB).
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = DEFAULT_OUTBOUND_QUEUE_BYTES, value_parser = queue_bytes)]
    pub outbound_queue_bytes: usize,

    /// Redis URL (`redis://[:password@]host[:port][/db]`). Unset: the
    /// embedded in-memory broker, one process, nothing else needed. Set:
    /// instances sharing this Redis deliver each other's messages.
    /// Default: unset.
    #[arg(long, env = "REDIS_URL", value_parser = redis_url)]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster (7+), comma-separated
    /// `redis://[:password@]host:port` URLs: streams are spread over the
    /// cluster's primaries with sharded Pub/Sub (docs/ARCHITECTURE.md).
    /// Exclusive with REDIS_URL. Default: unset.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',', value_parser = redis_url,
          conflicts_with = "redis_url")]
    pub redis_cluster_urls: Option<Vec<String>>,

    /// Seconds any Redis command or connection attempt may take before
    /// Redis counts as unreachable. Must be > 0. Default: 1.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "1", value_parser = positive_secs)]
    pub redis_timeout: Duration,

    /// Seconds between Redis link checks and refreshes of this instance's
    /// connection count; a killed instance leaves the cluster total within
    /// two periods. Must be > 0. Default: 5.
    #[arg(long, env = "REDIS_REFRESH_INTERVAL", default_value = "5", value_parser = positive_secs)]
    pub redis_refresh_interval: Duration,

    /// Seconds between WebSocket ping frames to every client; 0 disables.
    /// Default: 25.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "25", value_parser = non_negative_secs)]
    pub heartbeat_interval: Duration,

    /// Seconds a client may send no frame at all (pongs count) before it is
    /// closed with 4000; 0 disables. Default: 70.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "70", value_parser = non_negative_secs)]
    pub idle_timeout: Duration,

    /// Secret (HS*) that client JWTs must be signed with. Unset (and no
    /// JWT_PUBLIC_KEY_FILE): no authentication, the server runs open.
    /// Default: unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWT algorithm: HS256, HS384, HS512 (with JWT_SECRET), RS256 or ES256
    /// (with JWT_PUBLIC_KEY_FILE). Default: HS256.
    #[arg(long, env = "JWT_ALG", default_value = "HS256",
          value_parser = ["HS256", "HS384", "HS512", "RS256", "ES256"])]
    pub jwt_alg: String,

    /// PEM public key file for RS256/ES256 tokens. Default: unset.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Audience tokens must name in `aud`. Unset: tokens that carry an `aud`
    /// are refused (RFC 7519 §4.1.3: this server is not in it). Default: unset.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Issuer tokens must carry in `iss`. Unset: `iss` is not checked.
    /// Default: unset.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Whether tokens must carry `exp`. Off by default, like the seed's
    /// PyJWT check: a token without `exp` is valid until its key changes, and
    /// one with `exp` is refused once expired either way. Default: false.
    #[arg(long, env = "JWT_REQUIRE_EXP", default_value_t = false, action = clap::ArgAction::Set)]
    pub jwt_require_exp: bool,

    /// Comma list of origins (`scheme://host[:port]`) allowed to open
    /// WebSockets; others get 403. Unset: any origin (with a warning).
    /// Default: unset.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Key that `POST /broadcast`, `/notify/…` and `/rooms/…/publish` must
    /// carry as `Authorization: Bearer <API_KEY>`. Unset: publishing is open.
    /// Default: unset.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Messages (text and pings) per second one client may send, with bursts
    /// of as many; faster clients are closed with 1008. 0 disables.
    /// Default: 100.
    #[arg(long, env = "RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Seconds a user stays listed as present in a room after their
    /// instance last refreshed the entry (Redis mode; refreshed with the
    /// heartbeat, at least twice per TTL). An instance that dies without
    /// cleaning up drops out of presence within this time. At least 1.
    /// Default: 60.
    #[arg(long, env = "PRESENCE_TTL", default_value = "60", value_parser = presence_ttl)]
    pub presence_ttl: Duration,

    /// Longest `text` of a `chat.message`, in characters (1 ..= 16777216);
    /// longer ones get `system.error` `text_too_long`. Default: 4096.
    #[arg(long, env = "MAX_TEXT_LENGTH", default_value_t = DEFAULT_MAX_TEXT_LENGTH, value_parser = message_size)]
    pub max_text_length: usize,

    /// Messages kept per stream (a user's notifications, a room, the
    /// broadcasts) so that clients coming back get what they missed
    /// (0 ..= 100000); 0 turns history off: no positions, live only.
    /// Default: 100.
    #[arg(long, env = "HISTORY_SIZE", default_value_t = DEFAULT_HISTORY_SIZE, value_parser = history_size)]
    pub history_size: usize,

    /// Seconds a message is kept at most; older ones count as gone. Must be
    /// > 0. Default: 300.
    #[arg(long, env = "HISTORY_TTL", default_value = "300", value_parser = positive_secs)]
    pub history_ttl: Duration,

    /// Bytes all history may take together (memory mode); past it the
    /// streams used longest ago lose their oldest messages first
    /// (1024 ..= 1099511627776). Default: 67108864 (64 MiB).
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value_t = DEFAULT_HISTORY_MAX_BYTES, value_parser = history_bytes)]
    pub history_max_bytes: usize,

    /// Seconds a stream's epoch and offset are kept after its last use, so
    /// that a quiet client at the head still resumes; after that the stream
    /// starts over with a new epoch. Must be > 0. Default: 86400 (1 day).
    #[arg(long, env = "HISTORY_META_TTL", default_value = "86400", value_parser = positive_secs)]
    pub history_meta_ttl: Duration,

    /// Seconds over which drained JSON clients are told to reconnect: each
    /// gets its own delay in [0, this] with the shutdown notice, so clients
    /// leaving one instance do not arrive at the others at once; 0: at once.
    /// Default: 10.
    #[arg(long, env = "DRAIN_RECONNECT_SPREAD", default_value = "10", value_parser = non_negative_secs)]
    pub drain_reconnect_spread: Duration,

    /// Seconds an inbox entry may stay unacknowledged by the instance that
    /// read it before another instance claims it (Redis mode). Must be > 0.
    /// Default: 10.
    #[arg(long, env = "INBOX_CLAIM_AFTER", default_value = "10", value_parser = positive_secs)]
    pub inbox_claim_after: Duration,

    /// What `/ws/{name}` names: `client_id` (seed 000/001: the plain-text
    /// protocol with that client id) or `room` (seed 003: the JSON protocol
    /// in that room, as `/ws/rooms/{name}`). `/ws` and `/ws/rooms/…` are not
    /// affected. Default: client_id.
    #[arg(long, env = "WS_PATH", value_enum, default_value_t = WsPath::ClientId)]
    pub ws_path: WsPath,

    /// A test hook, not a setting: how long a resume waits between reading
    /// history and going live, to widen the window a publish may fall into.
    #[arg(long, env = "WSNOTIFY_TEST_RESUME_DELAY", default_value = "0", value_parser = non_negative_secs, hide = true)]
    pub test_resume_delay: Duration,
}

/// What the name in `/ws/{name}` is (`WS_PATH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WsPath {
    /// A client id of the plain-text protocol (seeds 000 and 001).
    #[value(name = "client_id")]
    ClientId,
    /// A room of the JSON protocol (seed 003).
    Room,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            shutdown_log_interval: DEFAULT_SHUTDOWN_LOG_INTERVAL,
            notification_interval: DEFAULT_NOTIFICATION_INTERVAL,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            redis_url: None,
            redis_cluster_urls: None,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_refresh_interval: DEFAULT_REDIS_REFRESH_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            jwt_secret: None,
            jwt_alg: "HS256".to_owned(),
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_require_exp: false,
            allowed_origins: None,
            api_key: None,
            rate_limit: DEFAULT_RATE_LIMIT,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            max_text_length: DEFAULT_MAX_TEXT_LENGTH,
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            history_meta_ttl: DEFAULT_HISTORY_META_TTL,
            drain_reconnect_spread: DEFAULT_DRAIN_RECONNECT_SPREAD,
            inbox_claim_after: DEFAULT_INBOX_CLAIM_AFTER,
            ws_path: WsPath::ClientId,
            test_resume_delay: Duration::ZERO,
        }
    }
}

impl Config {
    /// How much history to keep.
    pub fn history(&self) -> crate::history::Settings {
        crate::history::Settings {
            size: self.history_size,
            ttl: self.history_ttl,
            max_bytes: self.history_max_bytes,
            meta_ttl: self.history_meta_ttl,
        }
    }

    /// The periodic notification interval, or `None` when disabled (0).
    pub fn notifications(&self) -> Option<Duration> {
        enabled(self.notification_interval)
    }

    /// How often an instance refreshes its presence entries in Redis: with
    /// the heartbeat, but at least twice per `PRESENCE_TTL`, and at most ten
    /// times a second.
    pub fn presence_refresh(&self) -> Duration {
        let half = self.presence_ttl / 2;
        let every = enabled(self.heartbeat_interval).map_or(half, |beat| beat.min(half));
        every.max(Duration::from_millis(100))
    }
}

fn non_negative_secs(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "`{value}` must be a non-negative number of seconds"
        ));
    }
    if secs > DURATION_CAP_SECS {
        return Err(format!(
            "`{value}` is longer than one week ({DURATION_CAP_SECS} s)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn positive_secs(value: &str) -> Result<Duration, String> {
    match non_negative_secs(value)? {
        d if d.is_zero() => Err(format!("`{value}` must be greater than 0")),
        d => Ok(d),
    }
}

/// A period setting where 0 disables: `None` for 0.
pub fn enabled(period: Duration) -> Option<Duration> {
    (!period.is_zero()).then_some(period)
}

/// `PRESENCE_TTL`: at least one second, so the refresh period (half of it
/// at most) stays a sensible timer.
fn presence_ttl(value: &str) -> Result<Duration, String> {
    match non_negative_secs(value)? {
        d if d < Duration::from_secs(1) => Err(format!("`{value}` must be at least 1 second")),
        d => Ok(d),
    }
}

fn bounded(value: &str, max: usize, unit: &str) -> Result<usize, String> {
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number of {unit}"))?;
    if n == 0 || n > max {
        return Err(format!("`{value}` must be between 1 and {max} {unit}"));
    }
    Ok(n)
}

fn redis_url(value: &str) -> Result<String, String> {
    redis::Client::open(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("`{value}` is not a Redis URL: {e}"))
}

fn message_size(value: &str) -> Result<usize, String> {
    bounded(value, MAX_MESSAGE_SIZE_CAP, "bytes")
}

fn queue_bound(value: &str) -> Result<usize, String> {
    bounded(value, OUTBOUND_QUEUE_CAP, "frames")
}

fn history_size(value: &str) -> Result<usize, String> {
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number of messages"))?;
    if n > HISTORY_SIZE_CAP {
        return Err(format!(
            "`{value}` must be between 0 and {HISTORY_SIZE_CAP} messages"
        ));
    }
    Ok(n)
}

fn history_bytes(value: &str) -> Result<usize, String> {
    match bounded(value, 1 << 40, "bytes")? {
        n if n < 1024 => Err(format!(
            "`{value}` must be between 1024 and {} bytes",
            1u64 << 40
        )),
        n => Ok(n),
    }
}

fn queue_bytes(value: &str) -> Result<usize, String> {
    match bounded(value, 1 << 30, "bytes")? {
        n if n < 1024 => Err(format!(
            "`{value}` must be between 1024 and {} bytes",
            1 << 30
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("wsnotify").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documented_constants() {
        let parsed = parse(&[]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.port, default.port);
        assert_eq!(parsed.host, default.host);
        assert_eq!(parsed.shutdown_timeout, Duration::from_secs(1800));
        assert_eq!(parsed.shutdown_log_interval, default.shutdown_log_interval);
        assert_eq!(parsed.notification_interval, default.notification_interval);
        assert_eq!(parsed.max_message_size, 65536);
        assert_eq!(parsed.outbound_queue, default.outbound_queue);
        assert_eq!(parsed.outbound_queue_bytes, 16 * 1024 * 1024);
        assert_eq!(parsed.redis_url, None);
        assert_eq!(parsed.redis_timeout, default.redis_timeout);
        assert_eq!(
            parsed.redis_refresh_interval,
            default.redis_refresh_interval
        );
        assert_eq!(parsed.heartbeat_interval, Duration::from_secs(25));
        assert_eq!(parsed.idle_timeout, Duration::from_secs(70));
        assert_eq!(parsed.jwt_alg, default.jwt_alg);
        assert_eq!(parsed.presence_ttl, Duration::from_secs(60));
        assert!(!parsed.jwt_require_exp);
        assert_eq!((&parsed.jwt_audience, &parsed.jwt_issuer), (&None, &None));
        assert!(
            parse(&["--jwt-require-exp", "true"])
                .unwrap()
                .jwt_require_exp
        );
        assert_eq!(parsed.max_text_length, default.max_text_length);
        assert_eq!(parsed.history(), default.history());
        assert_eq!(parsed.history_size, 100);
        assert_eq!(parsed.history_ttl, Duration::from_secs(300));
        assert_eq!(parsed.history_max_bytes, 64 << 20);
        assert_eq!(parsed.history_meta_ttl, Duration::from_secs(86400));
        assert_eq!(parsed.drain_reconnect_spread, Duration::from_secs(10));
        assert_eq!(parsed.inbox_claim_after, default.inbox_claim_after);
        assert_eq!(parsed.presence_refresh(), Duration::from_secs(25));
        assert_eq!(
            (parsed.jwt_secret, parsed.api_key, parsed.allowed_origins),
            (None, None, None)
        );
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let cfg = parse(&["--shutdown-timeout", "2.5", "--notification-interval", "0"]).unwrap();
        assert_eq!(cfg.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.notifications(), None);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (args, needle) in [
            (&["--port", "70000"][..], "70000"),
            (&["--shutdown-timeout=-1"], "non-negative"),
            (&["--shutdown-timeout", "soon"], "not a number"),
            (&["--shutdown-log-interval", "0"], "greater than 0"),
            (&["--notification-interval", "NaN"], "non-negative"),
            (&["--max-message-size", "0"], "between 1 and"),
            (&["--max-message-size", "99999999999"], "between 1 and"),
            (&["--outbound-queue", "many"], "whole number"),
            (&["--outbound-queue-bytes", "100"], "between 1024 and"),
            (&["--redis-url", "http://nope"], "not a Redis URL"),
            (&["--redis-timeout", "0"], "greater than 0"),
            (&["--presence-ttl", "0.5"], "at least 1 second"),
            (&["--max-text-length", "0"], "between 1 and"),
            (&["--history-size", "lots"], "whole number"),
            (&["--history-size", "100001"], "between 0 and"),
            (&["--history-ttl", "0"], "greater than 0"),
            (&["--history-max-bytes", "10"], "between 1024 and"),
            (&["--history-meta-ttl", "0"], "greater than 0"),
            (&["--drain-reconnect-spread=-1"], "non-negative"),
            (&["--inbox-claim-after", "0"], "greater than 0"),
            (
                &["--redis-cluster-urls", "redis://a:7000,http://b"],
                "not a Redis URL",
            ),
            (
                &[
                    "--redis-url",
                    "redis://a",
                    "--redis-cluster-urls",
                    "redis://b:7000",
                ],
                "cannot be used with",
            ),
            (&["--ws-path", "rooms"], "invalid value"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
