//! A real headless Chromium, driven over WebDriver (Debian's `chromedriver`)
//! with a few lines of HTTP, plus the DevTools commands chromedriver passes
//! through (network emulation). One browser per test; the tests of a binary
//! take turns ([`Browser::start`] holds a lock), so two Chromiums never
//! share the machine's two cores.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

use super::redis::free_port;
use super::{PATIENCE, http_with};

static TURN: Mutex<()> = Mutex::const_new(());

/// A chromedriver and one browser session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let turn = TURN.lock().await;
        let binary = [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("no Chromium: install Debian's chromium and chromium-driver (.ci/run does)");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-background-networking", "--disable-extensions"],
            },
        }}});
        let reply = call(addr, Method::POST, "/session", &capabilities).await;
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_owned();
        let browser = Browser {
            driver,
            addr,
            session,
            _turn: turn,
        };
        browser
            .command(Method::POST, "timeouts", json!({ "script": 60_000 }))
            .await;
        browser
    }

    async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}/{path}", self.session);
        let reply = call(self.addr, method, &path, &body).await;
        if let Some(error) = reply["value"].get("error") {
            panic!("WebDriver {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub async fn open(&self, url: &str) {
        self.command(Method::POST, "url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(
            Method::POST,
            "execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Runs `script`, an async function body that resolves with its value.
    pub async fn eval_async(&self, script: &str, args: Value) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {script} }})().then(done, (e) => done({{ error: String(e) }}));"
        );
        self.command(
            Method::POST,
            "execute/async",
            json!({ "script": wrapped, "args": args }),
        )
        .await
    }

    /// Polls `script` until it returns true, or panics after `limit`.
    pub async fn wait_for(&self, what: &str, script: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.eval(script, json!([])).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never got to: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A DevTools command (`Network.emulateNetworkConditions`, …).
    pub async fn devtools(&self, cmd: &str, params: Value) -> Value {
        self.command(
            Method::POST,
            "goog/cdp/execute",
            json!({ "cmd": cmd, "params": params }),
        )
        .await
    }

    /// The browser's network goes away (`offline: true`) or comes back.
    pub async fn offline(&self, offline: bool) {
        self.devtools("Network.enable", json!({})).await;
        self.devtools(
            "Network.emulateNetworkConditions",
            json!({ "offline": offline, "latency": 0,
                    "downloadThroughput": -1, "uploadThroughput": -1 }),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started, in one group.
        super::kill_group(&self.driver);
    }
}

async fn call(addr: SocketAddr, method: Method, path: &str, body: &Value) -> Value {
    let body = if method == Method::GET {
        String::new()
    } else {
        body.to_string()
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(90),
        http_with(
            addr,
            method,
            path,
            &body,
            &[("content-type", "application/json")],
        ),
    )
    .await
    .expect("chromedriver did not answer");
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("chromedriver ({e}): {}", reply.body))
}

/// The JavaScript that builds a client in the page: `window.c`, with its
/// deliveries in `window.log`, its resumes in `window.resumes`, its states
/// in `window.states`, its errors in `window.errors`, and `getToken` calls
/// counted in `window.tokenCalls` (popping `window.tokens`).
pub const CLIENT_SCRIPT: &str = r#"
  const { Client } = await import("/wsnotify.js");
  const options = arguments[0];
  window.log = []; window.resumes = []; window.states = []; window.errors = [];
  window.tokenCalls = 0;
  if (options.tokens) {
    window.tokens = options.tokens;
    options.getToken = async () => { window.tokenCalls += 1; return window.tokens.shift(); };
    delete options.tokens;
  }
  // Always through `window.`: the page's own scripts have bindings of
  // these names (`log`, …) that would shadow the globals.
  window.c = new Client(options);
  window.c.on("message", (m) => window.log.push(m))
   .on("recovered", (r) => window.resumes.push(r))
   .on("state", (s) => window.states.push({ ...s, at: Date.now() }))
   .on("error", (e) => window.errors.push(e))
   .connect();
  return true;
"#;
