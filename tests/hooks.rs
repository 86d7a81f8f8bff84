//! Outgoing hooks of `tern serve` (configured with `--config FILE`): the
//! event webhook (`message.sent`, `user.online`, `user.offline`,
//! `group.changed` in signed batches, retried on failure) and the
//! before-send hook (a veto: `send_err rejected`, HTTP 409, nothing stored,
//! no seq used; fail-open or fail-closed when the hook cannot answer).
//!
//! The receivers are small axum servers inside the test, on 127.0.0.1:0.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tern_proto::Subprotocol;

/// HMAC key shared by the server and the receivers.
const SECRET: &str = "hook-secret-e2e";

/// Webhook batching wait: short, so events arrive quickly.
const FLUSH_MS: u64 = 20;

/// How long a receiver waits for events that must arrive. Covers a failed
/// POST plus its first retry (200 ms backoff) several times over.
const EVENTS_BOUND: Duration = Duration::from_secs(8);

/// How long the slow before-send answer takes: far beyond the
/// `timeout_ms` the server is given.
const SLOW_ANSWER: Duration = Duration::from_secs(2);

/// The before-send hook's veto reason.
const VETO_REASON: &str = "no forbidden words";

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, computed here from
/// the bytes received.
fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        panic!("HMAC takes keys of any length");
    };
    mac.update(body);
    let mut out = String::from("sha256=");
    for b in mac.finalize().into_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: &'static str,
    signature: Option<String>,
    timestamp: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// Status the receiver answered.
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "hook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the signature and the timestamp header.
    fn assert_signed(&self) {
        let want = sign(SECRET, &self.body);
        assert_eq!(
            self.signature.as_deref(),
            Some(want.as_str()),
            "{}: bad X-Tern-Signature for {}",
            self.path,
            String::from_utf8_lossy(&self.body)
        );
        assert_ne!(sign("other-secret", &self.body), want, "the key matters");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{}: Content-Type",
            self.path
        );
        let ts: u64 = self
            .timestamp
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{}: bad X-Tern-Timestamp {:?}", self.path, self.timestamp));
        assert_ts_recent(&json!(ts), "X-Tern-Timestamp");
    }
}

struct Inner {
    hits: Mutex<Vec<Hit>>,
    /// Webhook POSTs still to answer 500.
    fail_first: AtomicUsize,
}

/// Webhook and before-send receivers on one local port.
struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

fn record(st: &Inner, path: &'static str, headers: &HeaderMap, body: &Bytes, status: u16) {
    let h = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    };
    let hit = Hit {
        path,
        signature: h("x-tern-signature"),
        timestamp: h("x-tern-timestamp"),
        content_type: h("content-type"),
        body: body.to_vec(),
        status,
    };
    st.hits.lock().unwrap_or_else(|e| e.into_inner()).push(hit);
}

/// `POST /events`: 500 while `fail_first` lasts, then 200.
async fn on_events(State(st): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = st
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    record(&st, "/events", &headers, &body, status.as_u16());
    status
}

/// `POST /before`: vetoes a body that mentions "forbidden".
async fn on_before(State(st): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Json<Value> {
    record(&st, "/before", &headers, &body, 200);
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if req["body"].to_string().contains("forbidden") {
        Json(json!({ "allow": false, "reason": VETO_REASON }))
    } else {
        Json(json!({ "allow": true }))
    }
}

/// `POST /slow`: allows, but only after [`SLOW_ANSWER`].
async fn on_slow(State(st): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Json<Value> {
    record(&st, "/slow", &headers, &body, 200);
    tokio::time::sleep(SLOW_ANSWER).await;
    Json(json!({ "allow": true }))
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let inner = Arc::new(Inner {
            hits: Mutex::new(Vec::new()),
            fail_first: AtomicUsize::new(fail_first),
        });
        let app = Router::new()
            .route("/events", post(on_events))
            .route("/before", post(on_before))
            .route("/slow", post(on_slow))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, inner, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.inner
            .hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Every event of every accepted (200) webhook POST, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.hits("/events")
            .iter()
            .filter(|h| h.status == 200)
            .flat_map(|h| {
                h.json()["events"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no events array: {}", h.json()))
                    .clone()
            })
            .collect()
    }

    /// Waits until `ok` holds for the delivered events.
    async fn wait_events(&self, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + EVENTS_BOUND;
        loop {
            let ev = self.delivered();
            if ok(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "webhook: {what} not delivered within {EVENTS_BOUND:?}; got {ev:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config file in its own temp dir (kept alive by the returned guard).
fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("tern-hooks-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, toml).expect("write config");
    (dir, path)
}

/// `tern serve --config <toml>`.
async fn start_with(toml: &str) -> (Server, tempfile::TempDir) {
    let (dir, path) = config_file(toml);
    let p = path.to_str().expect("utf-8 temp path").to_string();
    (Server::start(&["--config", &p]).await, dir)
}

fn webhook_toml(rx: &Receiver, extra: &str) -> String {
    format!(
        "[webhook]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nflush_ms = {FLUSH_MS}\n{extra}\n",
        rx.url("/events")
    )
}

fn before_send_toml(url: &str, timeout_ms: u64, fail_open: bool) -> String {
    format!(
        "[before_send]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout_ms = {timeout_ms}\nfail_open = {fail_open}\n"
    )
}

/// Events of `ty` in `ev`.
fn of_type<'a>(ev: &'a [Value], ty: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["type"] == ty).collect()
}

/// `e` without its `ts` (asserted recent).
fn without_ts(e: &Value) -> Value {
    let mut e = e.clone();
    let ts = e
        .as_object_mut()
        .and_then(|o| o.remove("ts"))
        .unwrap_or(Value::Null);
    assert_ts_recent(&ts, "event ts");
    e
}

// ---------------------------------------------------------------------------
// Event webhook
// ---------------------------------------------------------------------------

#[tokio::test]
async fn webhook_gets_every_event_kind_signed() {
    let rx = Receiver::start(0).await;
    let (s, _cfg) = start_with(&webhook_toml(&rx, "")).await;
    let (a, b) = ("wha", "whb");
    s.put_users(&[a, b]).await;

    let mut ac = s.login(Subprotocol::Json, a, "phone").await;
    let mut bc = s.login(Subprotocol::Rkyv, b, "tablet").await;
    s.put_group("wh", Some("WH"), &[a, b]).await;
    let ack = ac.send_text("c1", "group:wh", "hi group").await;
    let dm_ack = bc
        .send_msg(
            "c2",
            &format!("user:{a}"),
            "image",
            json!({ "url": "u", "size": 3 }),
        )
        .await;
    assert_eq!(dm_ack["type"], "send_ack", "{dm_ack}");
    let (st, sys) = s
        .post_message(
            json!({ "to": "group:wh", "kind": "custom", "body": { "k": [1, 2] }, "cmid": "s1" }),
        )
        .await;
    assert_eq!(st, 200, "{sys}");
    ac.close().await;

    let ev = rx
        .wait_events("all kinds", |ev| {
            ev.iter()
                .any(|e| e["type"] == "user.offline" && e["user"] == a)
                && of_type(ev, "message.sent").len() >= 3
        })
        .await;
    for h in rx.hits("/events") {
        h.assert_signed();
    }

    let online: Vec<Value> = of_type(&ev, "user.online")
        .into_iter()
        .map(without_ts)
        .collect();
    assert!(
        online.contains(&json!({ "type": "user.online", "user": a, "device": "phone" })),
        "{online:?}"
    );
    assert!(
        online.contains(&json!({ "type": "user.online", "user": b, "device": "tablet" })),
        "{online:?}"
    );
    let offline: Vec<Value> = of_type(&ev, "user.offline")
        .into_iter()
        .map(without_ts)
        .collect();
    assert_eq!(
        offline,
        [json!({ "type": "user.offline", "user": a, "device": "phone" })]
    );

    let groups = of_type(&ev, "group.changed");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        without_ts(groups[0]),
        json!({ "type": "group.changed", "group": "wh", "seq": 1, "code": 1501, "data": { "name": "WH", "users": [a, b] } })
    );

    let sent = of_type(&ev, "message.sent");
    assert_eq!(sent.len(), 3, "each message once: {sent:?}");
    assert_eq!(
        *sent[0],
        json!({ "type": "message.sent", "conv": "group:wh", "seq": 2, "from": a, "device": "phone",
                "cmid": "c1", "kind": "text", "body": "hi group", "ts": ack["ts"] })
    );
    assert_eq!(
        *sent[1],
        json!({ "type": "message.sent", "conv": dm(a, b), "seq": 1, "from": b, "device": "tablet",
                "cmid": "c2", "kind": "image", "body": { "url": "u", "size": 3 }, "ts": dm_ack["ts"] })
    );
    assert_eq!(
        *sent[2],
        json!({ "type": "message.sent", "conv": "group:wh", "seq": 3, "from": "system", "device": "",
                "cmid": "s1", "kind": "custom", "body": { "k": [1, 2] }, "ts": sys["ts"] })
    );
    // Order: events come in the order the engine emitted them.
    let pos = |pred: &dyn Fn(&Value) -> bool| ev.iter().position(pred).expect("present");
    let online_a = pos(&|e| e["type"] == "user.online" && e["user"] == a);
    let created = pos(&|e| e["type"] == "group.changed");
    let first_msg = pos(&|e| e["type"] == "message.sent");
    let offline_a = pos(&|e| e["type"] == "user.offline");
    assert!(
        online_a < created && created < first_msg && first_msg < offline_a,
        "order: {ev:#?}"
    );

    // Group changes each have their event.
    s.change_members("wh", &[], &[b]).await;
    s.request("DELETE", "/v1/groups/wh", None).await;
    let ev = rx
        .wait_events("1508 and 1520", |ev| {
            of_type(ev, "group.changed").len() >= 3
        })
        .await;
    let g: Vec<Value> = of_type(&ev, "group.changed")
        .into_iter()
        .map(without_ts)
        .collect();
    assert_eq!(
        g[1..],
        [
            json!({ "type": "group.changed", "group": "wh", "seq": 4, "code": 1508, "data": { "users": [b] } }),
            json!({ "type": "group.changed", "group": "wh", "seq": 5, "code": 1520, "data": {} }),
        ]
    );
    // The counter moves once the server has read our answer: poll.
    let deadline = Instant::now() + REPLY;
    loop {
        let m = s.metrics_text().await;
        let n = metric(&m, "tern_webhook_delivered_total").unwrap_or(0.0);
        if n >= ev.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered counter {n} < {} events:\n{m}",
            ev.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhook_sends_only_the_subscribed_events() {
    let rx = Receiver::start(0).await;
    let (s, _cfg) = start_with(&webhook_toml(&rx, "events = [\"group.changed\"]")).await;
    s.put_users(&["wfa"]).await;
    let mut c = s.login(Subprotocol::Json, "wfa", "phone").await;
    s.put_group("wf", None, &["wfa"]).await;
    c.send_text("x", "group:wf", "x").await;
    s.put_group("wf", Some("renamed"), &["wfa"]).await;
    c.close().await;
    let ev = rx
        .wait_events("two group changes", |ev| ev.len() >= 2)
        .await;
    // Anything else would have been sent with (or before) the rename.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev2 = rx.delivered();
    assert_eq!(ev2.len(), ev.len(), "more events: {ev2:#?}");
    for h in rx.hits("/events") {
        h.assert_signed();
    }
    let codes: Vec<&Value> = ev2.iter().map(|e| &e["code"]).collect();
    assert!(
        ev2.iter().all(|e| e["type"] == "group.changed"),
        "unsubscribed events delivered: {ev2:#?}"
    );
    assert_eq!(codes, [&json!(1501), &json!(1502)]);
}

#[tokio::test]
async fn webhook_retries_a_failed_post_with_the_same_events() {
    let rx = Receiver::start(1).await;
    let (s, _cfg) = start_with(&webhook_toml(&rx, "retries = 5")).await;
    s.put_users(&["rta"]).await;
    s.put_group("rt", Some("rt"), &["rta"]).await;
    let (st, v) = s
        .post_message(json!({ "from": "rta", "to": "group:rt", "kind": "text", "body": "once" }))
        .await;
    assert_eq!(st, 200, "{v}");

    let ev = rx
        .wait_events("the retried batch", |ev| {
            ev.iter().any(|e| e["type"] == "message.sent")
        })
        .await;
    let hits = rx.hits("/events");
    for h in &hits {
        h.assert_signed();
    }
    assert_eq!(hits[0].status, 500, "the first POST was answered 500");
    assert_eq!(hits[1].status, 200, "{hits:?}");
    assert_eq!(
        String::from_utf8_lossy(&hits[1].body),
        String::from_utf8_lossy(&hits[0].body),
        "a retry carries the same body"
    );
    let failed = hits[0].json()["events"].as_array().expect("events").clone();
    assert!(!failed.is_empty(), "empty batch");
    // Everything of the refused batch came again, once accepted.
    for e in &failed {
        let n = ev.iter().filter(|d| *d == e).count();
        assert_eq!(n, 1, "event {e} delivered {n} times after the retry");
    }
    // And nothing is delivered twice once accepted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ev = rx.delivered();
    for (i, e) in ev.iter().enumerate() {
        assert!(!ev[i + 1..].contains(e), "{e} delivered twice");
    }
    assert!(
        of_type(&ev, "group.changed").len() == 1 && of_type(&ev, "message.sent").len() == 1,
        "{ev:#?}"
    );
}

// ---------------------------------------------------------------------------
// Before-send hook
// ---------------------------------------------------------------------------

#[tokio::test]
async fn before_send_veto_stores_nothing_and_uses_no_seq() {
    let rx = Receiver::start(0).await;
    let (s, _cfg) = start_with(&before_send_toml(&rx.url("/before"), 2_000, false)).await;
    let (a, b) = ("bsa", "bsb");
    s.put_users(&[a, b]).await;
    s.put_group("bs", None, &[a, b]).await;
    let conv = "group:bs";
    for sp in SPS {
        let t = tag(sp);
        let mut ac = s.login(sp, a, &format!("phone{t}")).await;
        let mut bc = s.login(sp, b, &format!("phone{t}")).await;
        let base = s
            .history_all(conv)
            .await
            .last()
            .and_then(|e| e["seq"].as_u64())
            .expect("seq");

        let ok = ac.send_text(&format!("ok1{t}"), conv, "hello").await;
        assert_eq!(ok["seq"], base + 1, "{ok}");
        bc.expect_msg(conv, base + 1).await;

        let r = ac
            .send_msg(&format!("bad{t}"), conv, "text", json!("this is forbidden"))
            .await;
        assert_eq!(r["type"], "send_err", "{r}");
        assert_eq!(r["code"], "rejected", "{r}");
        assert!(
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains(VETO_REASON)),
            "the hook's reason reaches the sender: {r}"
        );
        // Media bodies are checked too.
        let r = ac
            .send_msg(
                &format!("bad2{t}"),
                conv,
                "file",
                json!({ "name": "forbidden.txt" }),
            )
            .await;
        assert_eq!(r["code"], "rejected", "{r}");

        // The next allowed send takes the next seq: no gap.
        let ok = ac.send_text(&format!("ok2{t}"), conv, "fine").await;
        assert_eq!(ok["seq"], base + 2, "{ok}");
        let m = bc.expect_msg(conv, base + 2).await;
        assert_eq!(m["body"], "fine", "{m}");
        bc.quiet(&["msg"], QUIET).await;
        // A vetoed cmid was not recorded: reusing it with an allowed body
        // stores a new message.
        let ok = ac.send_text(&format!("bad{t}"), conv, "rephrased").await;
        assert_eq!(ok["seq"], base + 3, "{ok}");

        let all = bc.sync_all(conv, base).await;
        let bodies: Vec<&Value> = all.iter().map(|e| &e["body"]).collect();
        assert_eq!(
            bodies,
            [&json!("hello"), &json!("fine"), &json!("rephrased")]
        );
    }

    // Over HTTP the veto is 409 `rejected`, for users and the system alike.
    for body in [
        json!({ "from": a, "to": conv, "kind": "text", "body": "forbidden" }),
        json!({ "to": conv, "kind": "text", "body": "forbidden" }),
    ] {
        let (st, v) = s.post_message(body.clone()).await;
        assert_eq!(st, 409, "{body}: {v}");
        assert_eq!(v["error"]["code"], "rejected", "{v}");
    }
    let before = s.history_all(conv).await;
    let (st, v) = s
        .post_message(json!({ "to": conv, "kind": "text", "body": "allowed" }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["seq"].as_u64(),
        before.last().and_then(|e| e["seq"].as_u64()).map(|q| q + 1),
        "no seq used by the vetoed sends: {v}"
    );
    assert!(
        !s.history_all(conv)
            .await
            .iter()
            .any(|e| e["body"].to_string().contains("forbidden")),
        "a vetoed message was stored"
    );

    // What the hook was asked, signed.
    let hits = rx.hits("/before");
    for h in &hits {
        h.assert_signed();
    }
    let asked: Vec<Value> = hits.iter().map(Hit::json).collect();
    assert!(
        asked.contains(&json!({ "conv": conv, "from": a, "device": "phonej", "cmid": "ok1j", "kind": "text", "body": "hello" })),
        "{asked:#?}"
    );
    assert!(
        asked.contains(&json!({ "conv": conv, "from": a, "device": "phoner", "cmid": "bad2r", "kind": "file", "body": { "name": "forbidden.txt" } })),
        "{asked:#?}"
    );
    assert!(
        asked
            .iter()
            .any(|q| q["from"] == "system" && q["device"] == "" && q["body"] == "allowed"),
        "{asked:#?}"
    );
}

#[tokio::test]
async fn before_send_unreachable_or_slow_fails_closed() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let rx = Receiver::start(0).await;
    for url in [format!("http://127.0.0.1:{port}/hook"), rx.url("/slow")] {
        let (s, _cfg) = start_with(&before_send_toml(&url, 200, false)).await;
        s.put_users(&["fca", "fcb"]).await;
        s.put_group("fc", None, &["fca", "fcb"]).await;
        let mut ac = s.login(Subprotocol::Json, "fca", "phone").await;
        let mut bc = s.login(Subprotocol::Rkyv, "fcb", "phone").await;
        bc.sync("group:fc", 0, None).await;
        let t0 = Instant::now();
        let r = ac.send_msg("c1", "group:fc", "text", json!("hi")).await;
        assert_eq!(r["type"], "send_err", "{url}: {r}");
        assert_eq!(r["code"], "rejected", "{url}: {r}");
        assert!(
            t0.elapsed() < SLOW_ANSWER,
            "{url}: the send waited for the hook beyond its timeout ({:?})",
            t0.elapsed()
        );
        let (st, v) = s
            .post_message(json!({ "to": "user:fcb", "kind": "text", "body": "hi" }))
            .await;
        assert_eq!(st, 409, "{url}: {v}");
        bc.quiet(&["msg"], QUIET).await;
        let all = bc.sync_all("group:fc", 0).await;
        assert_eq!(all.len(), 1, "{url}: only the 1501: {all:?}");
    }
    // The slow hook was asked (and answered too late), signed.
    let slow = rx.hits("/slow");
    assert_eq!(slow.len(), 2, "the WebSocket and the HTTP send: {slow:?}");
    for h in &slow {
        h.assert_signed();
    }
}

#[tokio::test]
async fn before_send_unreachable_lets_sends_through_when_fail_open() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let rx = Receiver::start(0).await;
    for url in [format!("http://127.0.0.1:{port}/hook"), rx.url("/slow")] {
        let (s, _cfg) = start_with(&before_send_toml(&url, 200, true)).await;
        s.put_users(&["foa", "fob"]).await;
        s.put_group("fo", None, &["foa", "fob"]).await;
        let mut ac = s.login(Subprotocol::Rkyv, "foa", "phone").await;
        let mut bc = s.login(Subprotocol::Json, "fob", "phone").await;
        let t0 = Instant::now();
        let ack = ac.send_text("c1", "group:fo", "hi").await;
        assert_eq!(ack["seq"], 2, "{url}: {ack}");
        assert!(
            t0.elapsed() < SLOW_ANSWER,
            "{url}: the send waited for the hook beyond its timeout ({:?})",
            t0.elapsed()
        );
        let m = bc.expect_msg("group:fo", 2).await;
        assert_eq!(m["body"], "hi", "{m}");
        let (st, v) = s
            .post_message(json!({ "from": "fob", "to": "group:fo", "kind": "text", "body": "yo" }))
            .await;
        assert_eq!(st, 200, "{url}: {v}");
        assert_eq!(v["seq"], 3, "{v}");
    }
}
