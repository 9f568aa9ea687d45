//! `wsnotify.js` in a real headless Chromium against the real binary: the
//! test page, a drain under publishing, a killed server, a proxy that kills
//! upgrades, an expiring token, a gap history cannot fill, and the browser
//! going offline and online. The page is loaded through a small proxy
//! ([`support::proxy`]) that stands for a load balancer.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use support::browser::{Browser, CLIENT_SCRIPT};
use support::history::*;
use support::process::Proc;
use support::proxy::{Proxy, Upgrades};
use support::redis::{Redis, instance_with, wait_for_ready};

const LONG: Duration = Duration::from_secs(30);

/// A binary instance with history on, as the browser tests want it.
async fn binary(extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![("HISTORY_SIZE", "100"), ("HEARTBEAT_INTERVAL", "1")];
    env.extend_from_slice(extra);
    let proc = Proc::start(&env).await;
    wait_for_ready(proc.addr, StatusCode::OK).await;
    proc
}

/// The page's client, made with `options` (see [`CLIENT_SCRIPT`]), fast to
/// probe and quick to notice a dead connection.
async fn client(browser: &Browser, proxy: &Proxy, options: Value) {
    browser.open(&proxy.url("/")).await;
    let mut all = json!({ "probeInterval": 1500, "pingTimeout": 4000, "minBackoff": 100, "maxBackoff": 1000 });
    all.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    assert_eq!(browser.eval_async(CLIENT_SCRIPT, json!([all])).await, true);
}

/// The texts the page's client was handed, per stream, in order.
async fn texts(browser: &Browser, stream: &str) -> Vec<String> {
    let got = browser
        .eval(
            "return window.log.filter(m => m.stream === arguments[0]).map(m => m.type === 'chat.delivery' ? m.text : (typeof m.data === 'string' ? m.data : JSON.stringify(m.data)))",
            json!([stream]),
        )
        .await;
    serde_json::from_value(got).unwrap()
}

async fn wait_for_texts(browser: &Browser, stream: &str, n: usize) {
    browser
        .wait_for(
            &format!("{n} messages of {stream}"),
            &format!("return window.log.filter(m => m.stream === {stream:?}).length >= {n}"),
            LONG,
        )
        .await;
}

async fn transport(browser: &Browser) -> String {
    browser
        .eval(
            "return window.c.transport + ' ' + window.c.state",
            json!([]),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_test_page_connects_receives_and_chats() {
    let server = binary(&[]).await;
    let proxy = Proxy::start(server.addr).await;
    let browser = Browser::start().await;
    browser
        .open(&proxy.url("/?room=lobby&user=alice&connect=1"))
        .await;
    browser
        .wait_for("connected over a WebSocket", "return document.getElementById('state').textContent === 'connected' && document.getElementById('transport').textContent === 'websocket'", LONG)
        .await;
    notify(server.addr, "alice", "order shipped").await;
    publish_room(server.addr, "lobby", "deploy done").await;
    browser
        .wait_for(
            "two lines in #log",
            "return document.querySelectorAll('#log li').length >= 2",
            LONG,
        )
        .await;
    // Chat from the page: type, send, and it comes back as a delivery.
    browser.eval("document.getElementById('chatText').value = 'hi from chromium'; document.getElementById('chatSend').click(); return true", json!([])).await;
    browser.wait_for("the chat line", "return [...document.querySelectorAll('#log li')].some(li => li.textContent.includes('alice: hi from chromium'))", LONG).await;
    let log = browser.eval("return [...document.querySelectorAll('#log li')].map(li => li.dataset.stream + '#' + li.dataset.offset)", json!([])).await;
    assert_eq!(log, json!(["user:alice#1", "room:lobby#1", "room:lobby#2"]));
    let positions = browser.eval("return [...document.querySelectorAll('#positions li')].map(li => li.dataset.stream + '#' + li.dataset.offset)", json!([])).await;
    assert!(
        positions
            .as_array()
            .unwrap()
            .contains(&json!("room:lobby#2")),
        "{positions}"
    );
}

/// Publishes 40 messages to `dora` (10/s) through `b` while `a`, which the
/// page is on, is drained with `spread` and `timeout` after the tenth; the
/// page must end with all 40, once each, in order. Returns the resumes the
/// page saw, the close codes of its disconnections, and `a`, exited.
async fn across_a_drain(spread: &str, timeout: &str) -> (Vec<Value>, Value, Proc) {
    let redis = Redis::start().await;
    let b = instance_with(wsnotify::Config {
        history_size: 100,
        ..support::redis::config(&redis)
    })
    .await;
    let url = redis.url();
    let mut a = binary(&[
        ("REDIS_URL", &url),
        ("DRAIN_RECONNECT_SPREAD", spread),
        ("SHUTDOWN_TIMEOUT", timeout),
    ])
    .await;
    let proxy = Proxy::start(a.addr).await;
    let browser = Browser::start().await;
    client(&browser, &proxy, json!({ "user": "dora" })).await;
    // Connected is not yet following: what is published before the
    // stream's first position is before the page's start (over Redis the
    // subscription takes a round trip).
    browser
        .wait_for(
            "following user:dora",
            "return window.c.positions()['user:dora'] !== undefined",
            LONG,
        )
        .await;
    let mut sent = Vec::new();
    for n in 0..40 {
        if n == 10 {
            // The load balancer sees /ready 503 and sends new clients to b.
            a.signal(libc::SIGTERM);
            proxy.route_to(b.addr);
        }
        let text = format!("m{n}");
        notify(b.addr, "dora", &text).await;
        sent.push(text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_texts(&browser, "user:dora", sent.len()).await;
    assert_eq!(
        texts(&browser, "user:dora").await,
        sent,
        "every message exactly once, in order"
    );
    let resumes = browser
        .eval(
            "return window.resumes.filter(r => r.stream === 'user:dora')",
            json!([]),
        )
        .await;
    let resumes = resumes.as_array().unwrap().clone();
    assert!(
        resumes.iter().all(|r| r["recovered"] == json!(true)),
        "{resumes:?}"
    );
    let closes = browser
        .eval(
            "return window.states.filter(s => s.state === 'disconnected').map(s => s.code)",
            json!([]),
        )
        .await;
    a.exit(LONG).await;
    (resumes, closes, a)
}

#[tokio::test]
async fn a_drain_moves_the_page_to_the_other_instance_without_losing_a_message() {
    // The notice comes with a reconnect hint within 2 s, long before the
    // deadline: the page opens its next connection (to b) beside the old
    // one, make-before-break, and a empties by itself.
    let (_, closes, a) = across_a_drain("2", "20").await;
    assert_eq!(closes, json!([]), "never disconnected");
    assert!(
        a.logged("graceful shutdown completed"),
        "a drained by itself: the page left within the hint window"
    );
}

#[tokio::test]
async fn a_drain_that_force_closes_first_is_bridged_by_resume() {
    // No reconnect hint (DRAIN_RECONNECT_SPREAD=0), so the page waits for
    // the deadline (1 s): a closes the
    // page with 1001, messages go on meanwhile, and the page's next
    // connection (to b) must resume to get them.
    let (resumes, closes, a) = across_a_drain("0", "1").await;
    assert!(a.logged("force-closing 1"), "a forced the close");
    assert_eq!(closes, json!([1001]), "the page was closed by the drain");
    assert!(
        !resumes.is_empty(),
        "the page resumed after the 1001 rather than started afresh"
    );
}

#[tokio::test]
async fn after_a_killed_and_restarted_server_the_page_recovers_and_is_told_what_was_lost() {
    let mut a = binary(&[]).await;
    let proxy = Proxy::start(a.addr).await;
    let browser = Browser::start().await;
    client(&browser, &proxy, json!({ "user": "kim" })).await;
    browser
        .wait_for("connected", "return window.c.state === 'connected'", LONG)
        .await;
    notify(a.addr, "kim", "before").await;
    wait_for_texts(&browser, "user:kim", 1).await;
    a.signal(libc::SIGKILL);
    a.exit(LONG).await;
    let again = binary(&[]).await;
    proxy.route_to(again.addr);
    // Memory mode: the restart lost history, and the page is told so.
    browser
        .wait_for(
            "the resume outcome",
            "return window.resumes.some(r => r.stream === 'user:kim' && r.recovered === false)",
            LONG,
        )
        .await;
    let reason = browser
        .eval(
            "return window.resumes.find(r => r.stream === 'user:kim' && !r.recovered).reason",
            json!([]),
        )
        .await;
    assert_eq!(reason, "epoch_changed");
    notify(again.addr, "kim", "after").await;
    wait_for_texts(&browser, "user:kim", 2).await;
    assert_eq!(texts(&browser, "user:kim").await, ["before", "after"]);
}

#[tokio::test]
async fn when_a_proxy_kills_upgrades_the_page_falls_back_and_returns_to_the_websocket() {
    let server = binary(&[]).await;
    let proxy = Proxy::start(server.addr).await;
    proxy.upgrades(Upgrades::KillAfterOpen);
    let browser = Browser::start().await;
    client(&browser, &proxy, json!({ "user": "fay" })).await;
    browser
        .wait_for(
            "connected over a fallback",
            "return window.c.state === 'connected' && window.c.transport !== 'websocket'",
            LONG,
        )
        .await;
    let fallback = transport(&browser).await;
    for i in 0..3 {
        notify(server.addr, "fay", &format!("via fallback {i}")).await;
    }
    wait_for_texts(&browser, "user:fay", 3).await;
    proxy.upgrades(Upgrades::Pass);
    // The probe's WebSocket lives 5 s beside the fallback before it takes
    // over, and both deliver meanwhile: messages keep coming all along,
    // and the page must hand each over once.
    let mut sent: Vec<String> = (0..3).map(|i| format!("via fallback {i}")).collect();
    let mut n = 0;
    while transport(&browser).await != "websocket connected" {
        assert!(n < 150, "never back on the WebSocket");
        let text = format!("during the move {n}");
        notify(server.addr, "fay", &text).await;
        sent.push(text);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let text = format!("via websocket {i}");
        notify(server.addr, "fay", &text).await;
        sent.push(text);
    }
    wait_for_texts(&browser, "user:fay", sent.len()).await;
    // A moment for duplicates, if any, to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        texts(&browser, "user:fay").await,
        sent,
        "on {fallback}, then back"
    );
    assert!(
        n >= 10,
        "the move overlapped {n} messages, not the probe's 5 s"
    );
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_and_the_connection_goes_on() {
    let secret = "0123456789abcdef0123456789abcdef";
    let server = binary(&[("JWT_SECRET", secret)]).await;
    let proxy = Proxy::start(server.addr).await;
    let token = |ttl: u64| {
        encode(
            &Header::default(),
            &json!({ "sub": "tom", "exp": get_current_timestamp() + ttl }),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let browser = Browser::start().await;
    // The first token lives 6 s: refreshed some 3 s before its exp.
    client(
        &browser,
        &proxy,
        json!({ "tokens": [token(6), token(3600), token(3600)] }),
    )
    .await;
    browser
        .wait_for("connected", "return window.c.state === 'connected'", LONG)
        .await;
    notify(server.addr, "tom", "first").await;
    wait_for_texts(&browser, "user:tom", 1).await;
    browser
        .wait_for(
            "getToken called again before exp",
            "return window.tokenCalls >= 2",
            LONG,
        )
        .await;
    notify(server.addr, "tom", "second").await;
    wait_for_texts(&browser, "user:tom", 2).await;
    assert_eq!(texts(&browser, "user:tom").await, ["first", "second"]);
    let errors = browser.eval("return window.errors", json!([])).await;
    assert_eq!(errors, json!([]), "no refusal on the way");
}

#[tokio::test]
async fn a_gap_history_cannot_fill_reaches_the_app_as_recovered_false() {
    let server = binary(&[("HISTORY_SIZE", "3")]).await;
    let proxy = Proxy::start(server.addr).await;
    let browser = Browser::start().await;
    client(
        &browser,
        &proxy,
        json!({ "user": "gus", "transports": ["websocket"] }),
    )
    .await;
    browser
        .wait_for("connected", "return window.c.state === 'connected'", LONG)
        .await;
    notify(server.addr, "gus", "seen").await;
    wait_for_texts(&browser, "user:gus", 1).await;
    // Away while more than HISTORY_SIZE messages are published.
    browser
        .eval("window.c.close(); return true", json!([]))
        .await;
    for i in 0..6 {
        notify(server.addr, "gus", &format!("missed {i}")).await;
    }
    browser
        .eval("window.c.connect(); return true", json!([]))
        .await;
    browser
        .wait_for(
            "told",
            "return window.resumes.some(r => r.stream === 'user:gus' && r.recovered === false)",
            LONG,
        )
        .await;
    let reason = browser
        .eval(
            "return window.resumes.find(r => r.stream === 'user:gus' && !r.recovered).reason",
            json!([]),
        )
        .await;
    assert_eq!(reason, "too_old");
    assert_eq!(
        texts(&browser, "user:gus").await,
        ["seen"],
        "no partial replay"
    );
}

#[tokio::test]
async fn offline_then_online_resumes_with_everything_missed() {
    let server = binary(&[]).await;
    let proxy = Proxy::start(server.addr).await;
    let browser = Browser::start().await;
    client(&browser, &proxy, json!({ "user": "olga" })).await;
    browser
        .wait_for("connected", "return window.c.state === 'connected'", LONG)
        .await;
    notify(server.addr, "olga", "online 0").await;
    wait_for_texts(&browser, "user:olga", 1).await;
    browser.offline(true).await;
    browser
        .wait_for(
            "disconnected",
            "return window.c.state !== 'connected'",
            LONG,
        )
        .await;
    for i in 1..4 {
        notify(server.addr, "olga", &format!("while offline {i}")).await;
    }
    browser.offline(false).await;
    wait_for_texts(&browser, "user:olga", 4).await;
    assert_eq!(
        texts(&browser, "user:olga").await,
        [
            "online 0",
            "while offline 1",
            "while offline 2",
            "while offline 3"
        ]
    );
    let resumed = browser
        .eval(
            "return window.resumes.filter(r => r.stream === 'user:olga').map(r => r.recovered)",
            json!([]),
        )
        .await;
    assert!(
        resumed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == &json!(true)),
        "{resumed}"
    );
}
