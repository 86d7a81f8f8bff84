//! Webhooks and the before-send hook against a local axum receiver over
//! real sockets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tern_engine::{BeforeSendRequest, EngineEvent, Verdict};
use tern_proto::{ConvId, DeviceId, GroupId, Kind, RawJson, UserId};

use super::dispatcher::{backoff, batch_body, encode};
use super::*;
use crate::metrics::WebhookCounters;
use crate::{GatewayError, Runtime};

const SECRET: &str = "s3cret";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The signature is HMAC-SHA256 of exactly these bytes; the timestamp is
    /// now-ish.
    fn assert_signed(&self) {
        let sig = self.headers[SIGNATURE_HEADER].to_str().unwrap();
        assert_eq!(sig, signature(SECRET.as_bytes(), &self.body));
        assert_ne!(sig, signature(b"other", &self.body));
        let ts: u64 = self.headers[TIMESTAMP_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(tern_engine::now_ms().abs_diff(ts) < 60_000, "{ts}");
        assert_eq!(self.headers["content-type"], "application/json");
    }
}

/// What the receiver answers to request number `idx` (from 0).
type Script = dyn Fn(usize) -> (u16, &'static str) + Send + Sync;

struct ReceiverState {
    got: Mutex<Vec<Got>>,
    script: Box<Script>,
    /// Requests wait for a permit (when set): lets a test hold the sender.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    delay: Duration,
}

/// A local HTTP server that records requests and answers per a script.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(
        script: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
        gate: Option<Arc<tokio::sync::Semaphore>>,
        delay: Duration,
    ) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(ReceiverState {
            got: Mutex::default(),
            script: Box::new(script),
            gate,
            delay,
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            state,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// Wait until `n` requests arrived.
    fn wait_for(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

async fn receive(
    State(st): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let idx = {
        let mut got = st.got.lock().unwrap();
        got.push(Got { headers, body });
        got.len() - 1
    };
    if let Some(gate) = &st.gate {
        gate.acquire().await.unwrap().forget();
    }
    tokio::time::sleep(st.delay).await;
    let (status, body) = (st.script)(idx);
    (StatusCode::from_u16(status).unwrap(), body)
}

fn ok_receiver() -> Receiver {
    Receiver::start(|_| (200, ""), None, Duration::ZERO)
}

fn msg_event(seq: u64) -> EngineEvent {
    EngineEvent::MessageSent {
        conv: ConvId::parse("dm:alice:bob").unwrap(),
        seq,
        from: UserId::parse("alice").unwrap(),
        device: "phone".into(),
        cmid: format!("c{seq}"),
        kind: Kind::Text,
        body: RawJson::from_text(format!("\"m{seq}\"")).unwrap(),
        ts: 1_700_000_000_000 + seq,
    }
}

fn online_event() -> EngineEvent {
    EngineEvent::UserOnline {
        user: UserId::parse("bob").unwrap(),
        device: DeviceId::parse("web").unwrap(),
        ts: 5,
    }
}

/// A running dispatcher with its runtime and engine-side sender.
struct Harness {
    rt: Runtime,
    events: crossbeam_channel::Sender<EngineEvent>,
    counters: Arc<WebhookCounters>,
    dispatcher: Option<Dispatcher>,
}

impl Harness {
    fn start(cfg: WebhookConfig) -> Harness {
        cfg.validate().unwrap();
        let rt = Runtime::new().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(tern_engine::hooks::EVENT_QUEUE_MAX);
        let counters = Arc::new(WebhookCounters::default());
        let dispatcher =
            Dispatcher::spawn(cfg, rx, rt.rt.handle(), rt.client.clone(), counters.clone())
                .unwrap();
        Harness {
            rt,
            events: tx,
            counters,
            dispatcher: Some(dispatcher),
        }
    }

    fn count(&self, f: impl Fn(&WebhookCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.counters).load(Ordering::Relaxed)
    }

    /// Wait until `f` of the counters reaches `n`.
    fn wait_count(&self, n: u64, f: impl Fn(&WebhookCounters) -> &std::sync::atomic::AtomicU64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(&f) < n {
            assert!(
                Instant::now() < deadline,
                "counter stuck at {}",
                self.count(&f)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(mut self) {
        if let Some(d) = self.dispatcher.take() {
            d.stop(&self.rt.rt);
        }
    }
}

fn webhook(url: String) -> WebhookConfig {
    let mut cfg = WebhookConfig::new(url, SECRET);
    cfg.flush_ms = 50;
    cfg
}

#[test]
fn signature_matches_a_known_vector() {
    // RFC 4231-style check against a widely published HMAC-SHA256 value.
    assert_eq!(
        signature(b"key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(0), Duration::from_millis(200));
    assert_eq!(backoff(1), Duration::from_millis(400));
    assert_eq!(backoff(4), Duration::from_millis(3200));
    assert_eq!(backoff(10), Duration::from_secs(30));
    assert_eq!(backoff(40), Duration::from_secs(30));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
}

#[test]
fn events_encode_to_the_documented_shapes() {
    let v =
        |ev: &EngineEvent| -> Value { serde_json::from_str(encode(ev).unwrap().get()).unwrap() };
    assert_eq!(
        v(&msg_event(3)),
        json!({"type":"message.sent","conv":"dm:alice:bob","seq":3,"from":"alice",
               "device":"phone","cmid":"c3","kind":"text","body":"m3","ts":1_700_000_000_003u64})
    );
    assert_eq!(
        v(&online_event()),
        json!({"type":"user.online","user":"bob","device":"web","ts":5})
    );
    assert_eq!(
        v(&EngineEvent::UserOffline {
            user: UserId::parse("bob").unwrap(),
            device: DeviceId::parse("web").unwrap(),
            ts: 6,
        }),
        json!({"type":"user.offline","user":"bob","device":"web","ts":6})
    );
    assert_eq!(
        v(&EngineEvent::GroupChanged {
            group: GroupId::parse("g1").unwrap(),
            seq: 1,
            code: 1501,
            data: RawJson::from_text(r#"{"users":["a","b"]}"#).unwrap(),
            ts: 7,
        }),
        json!({"type":"group.changed","group":"g1","seq":1,"code":1501,
               "data":{"users":["a","b"]},"ts":7})
    );
    let body = batch_body(&[
        encode(&online_event()).unwrap(),
        encode(&msg_event(1)).unwrap(),
    ]);
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["events"].as_array().unwrap().len(), 2);
    assert_eq!(batch_body(&[]), br#"{"events":[]}"#);
}

#[test]
fn config_validation() {
    assert!(WebhookConfig::new("http://127.0.0.1:1/x", "k")
        .validate()
        .is_ok());
    assert!(WebhookConfig::new("https://example.com/x", "k")
        .validate()
        .is_ok());
    let bad = |f: &dyn Fn(&mut WebhookConfig)| {
        let mut c = WebhookConfig::new("http://h/x", "k");
        f(&mut c);
        match c.validate() {
            Err(GatewayError::Config(msg)) => msg,
            other => panic!("accepted: {other:?}"),
        }
    };
    assert!(bad(&|c| c.url = "ftp://h/x".into()).contains("webhook.url"));
    assert!(bad(&|c| c.url = "not a url".into()).contains("webhook.url"));
    assert!(bad(&|c| c.url = String::new()).contains("webhook.url"));
    assert!(bad(&|c| c.secret.clear()).contains("secret"));
    assert!(
        bad(&|c| c.events = vec!["message.sent".into(), "message.read".into()])
            .contains("message.read")
    );
    assert!(bad(&|c| c.batch_max = 0).contains("batch_max"));
    assert!(bad(&|c| c.queue_max = 0).contains("queue_max"));
    assert!(bad(&|c| c.timeout_ms = 0).contains("timeout_ms"));
    assert!(bad(&|c| c.flush_ms = 0).contains("flush_ms"));
    assert!(bad(&|c| c.retries = 1000).contains("retries"));

    let mut b = BeforeSendConfig::new("http://h/x", "k");
    assert!(b.validate().is_ok());
    assert!(!b.fail_open);
    b.timeout_ms = 0;
    assert!(matches!(b.validate(), Err(GatewayError::Config(_))));
    let rt = Runtime::new().unwrap();
    assert!(matches!(
        rt.before_send_hook(BeforeSendConfig::new("nope", "k")),
        Err(GatewayError::Config(_))
    ));
    // Secrets stay out of logs.
    let dbg = format!(
        "{:?} {:?}",
        WebhookConfig::new("http://h", "TOPSECRET"),
        BeforeSendConfig::new("http://h", "TOPSECRET")
    );
    assert!(!dbg.contains("TOPSECRET"), "{dbg}");
}

#[test]
fn events_are_posted_in_signed_batches_in_order() {
    let recv = ok_receiver();
    let mut cfg = webhook(recv.url());
    cfg.batch_max = 3;
    cfg.events = vec![EVENT_MESSAGE_SENT.into()];
    let h = Harness::start(cfg);
    for seq in 1..=7 {
        h.events.send(msg_event(seq)).unwrap();
        // Filtered out: not subscribed.
        h.events.send(online_event()).unwrap();
    }
    h.wait_count(7, |c| &c.delivered);
    let got = recv.got();
    let mut seqs = Vec::new();
    for g in &got {
        g.assert_signed();
        let v = g.json();
        let events = v["events"].as_array().unwrap();
        assert!(!events.is_empty() && events.len() <= 3, "{v}");
        for e in events {
            assert_eq!(e["type"], "message.sent", "{e}");
            seqs.push(e["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert!(got.len() >= 3, "7 events in batches of at most 3");
    assert_eq!(h.count(|c| &c.failed), 0);
    assert_eq!(h.count(|c| &c.dropped), 0);
    assert_eq!(h.count(|c| &c.queue_depth), 0);
    h.stop();
}

#[test]
fn a_lone_event_goes_out_after_flush_ms() {
    let recv = ok_receiver();
    let mut cfg = webhook(recv.url());
    cfg.flush_ms = 300;
    let h = Harness::start(cfg);
    let began = Instant::now();
    h.events.send(online_event()).unwrap();
    let got = recv.wait_for(1);
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "{waited:?}: did not wait for more"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(
        got[0].json(),
        json!({"events":[{"type":"user.online","user":"bob","device":"web","ts":5}]})
    );
    h.stop();
}

#[test]
fn a_failed_post_is_retried_with_the_same_body() {
    // 500 first, then 200.
    let recv = Receiver::start(
        |idx| if idx == 0 { (500, "boom") } else { (200, "ok") },
        None,
        Duration::ZERO,
    );
    let h = Harness::start(webhook(recv.url()));
    h.events.send(msg_event(1)).unwrap();
    h.wait_count(1, |c| &c.delivered);
    let got = recv.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body);
    got[1].assert_signed();
    assert_eq!(h.count(|c| &c.failed), 0);
    h.stop();
}

#[test]
fn events_are_dropped_and_counted_after_the_last_retry() {
    let recv = Receiver::start(|_| (503, ""), None, Duration::ZERO);
    let mut cfg = webhook(recv.url());
    cfg.retries = 2;
    let h = Harness::start(cfg);
    let began = Instant::now();
    h.events.send(msg_event(1)).unwrap();
    h.events.send(msg_event(2)).unwrap();
    h.wait_count(2, |c| &c.failed);
    // 1 + 2 attempts, 200 ms + 400 ms apart.
    assert_eq!(recv.got().len(), 3);
    assert!(began.elapsed() >= Duration::from_millis(600));
    assert_eq!(h.count(|c| &c.delivered), 0);
    h.stop();
}

#[test]
fn a_timeout_counts_as_a_failure() {
    let recv = Receiver::start(|_| (200, ""), None, Duration::from_secs(5));
    let mut cfg = webhook(recv.url());
    cfg.retries = 1;
    cfg.timeout_ms = 100;
    let h = Harness::start(cfg);
    h.events.send(msg_event(1)).unwrap();
    h.wait_count(1, |c| &c.failed);
    assert_eq!(recv.got().len(), 2);
    h.stop();
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking_the_engine() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let recv = Receiver::start(|_| (200, ""), Some(gate.clone()), Duration::ZERO);
    let mut cfg = webhook(recv.url());
    cfg.batch_max = 1;
    cfg.queue_max = 5;
    let h = Harness::start(cfg);
    // The first event is in flight, held by the receiver.
    h.events.send(msg_event(1)).unwrap();
    recv.wait_for(1);
    let began = Instant::now();
    for seq in 2..=20 {
        h.events.send(msg_event(seq)).unwrap();
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the engine side blocked"
    );
    // 5 fit in the queue, 14 are dropped.
    h.wait_count(14, |c| &c.dropped);
    assert_eq!(h.count(|c| &c.queue_depth), 5);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.count(|c| &c.dropped), 14);
    // Released, the held one and the queued ones go out, in order.
    gate.add_permits(100);
    h.wait_count(6, |c| &c.delivered);
    let seqs: Vec<u64> = recv
        .got()
        .iter()
        .map(|g| g.json()["events"][0]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(h.count(|c| &c.queue_depth), 0);
    h.stop();
}

#[test]
fn stopping_delivers_what_is_queued() {
    let recv = ok_receiver();
    let mut cfg = webhook(recv.url());
    cfg.flush_ms = 10_000; // only the stop flushes
    let h = Harness::start(cfg);
    for seq in 1..=3 {
        h.events.send(msg_event(seq)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(recv.got().is_empty());
    let began = Instant::now();
    let counters = h.counters.clone();
    h.stop();
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(counters.delivered.load(Ordering::Relaxed), 3);
    assert_eq!(recv.got().len(), 1);
}

#[test]
fn the_dispatcher_ends_when_the_engine_goes() {
    let recv = ok_receiver();
    let h = Harness::start(webhook(recv.url()));
    h.events.send(msg_event(1)).unwrap();
    let Harness {
        rt,
        events,
        counters,
        dispatcher,
    } = h;
    drop(events);
    let began = Instant::now();
    if let Some(d) = dispatcher {
        d.stop(&rt.rt);
    }
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(counters.delivered.load(Ordering::Relaxed), 1);
}

// ---- before-send ----

fn hook_request() -> BeforeSendRequest {
    BeforeSendRequest {
        conv: ConvId::parse("group:g1").unwrap(),
        from: UserId::parse("alice").unwrap(),
        device: "phone".into(),
        cmid: "c1".into(),
        kind: Kind::Custom,
        body: RawJson::from_text(r#"{"x":[1,2]}"#).unwrap(),
    }
}

/// Ask `hook` once; the verdict and how long it took.
fn ask(hook: &dyn tern_engine::BeforeSend) -> (Verdict, Duration) {
    let (tx, rx) = mpsc::channel();
    let began = Instant::now();
    hook.check(
        hook_request(),
        Box::new(move |v| {
            let _ = tx.send(v);
        }),
    );
    // `check` returns at once; the verdict comes later.
    let v = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Exactly once.
    assert!(rx.recv_timeout(Duration::from_millis(20)).is_err());
    (v, began.elapsed())
}

fn before(url: String, timeout_ms: u64, fail_open: bool) -> BeforeSendConfig {
    let mut cfg = BeforeSendConfig::new(url, SECRET);
    cfg.timeout_ms = timeout_ms;
    cfg.fail_open = fail_open;
    cfg
}

#[test]
fn before_send_allow_posts_the_signed_send() {
    let recv = Receiver::start(|_| (200, r#"{"allow":true}"#), None, Duration::ZERO);
    let rt = Runtime::new().unwrap();
    let hook = rt
        .before_send_hook(before(recv.url(), 2000, false))
        .unwrap();
    assert_eq!(ask(&*hook).0, Verdict::Allow);
    let got = recv.got();
    assert_eq!(got.len(), 1);
    got[0].assert_signed();
    assert_eq!(
        got[0].json(),
        json!({"conv":"group:g1","from":"alice","device":"phone","cmid":"c1","kind":"custom","body":{"x":[1,2]}})
    );
}

#[test]
fn before_send_reject_passes_the_reason() {
    let recv = Receiver::start(
        |idx| match idx {
            0 => (200, r#"{"allow":false,"reason":"spam","extra":1}"#),
            _ => (200, r#"{"allow":false}"#),
        },
        None,
        Duration::ZERO,
    );
    let rt = Runtime::new().unwrap();
    // fail_open does not matter for a real answer.
    let hook = rt.before_send_hook(before(recv.url(), 2000, true)).unwrap();
    assert_eq!(ask(&*hook).0, Verdict::Reject("spam".into()));
    assert_eq!(
        ask(&*hook).0,
        Verdict::Reject(super::before_send::DEFAULT_REJECT_REASON.into())
    );
}

#[test]
fn before_send_timeout_applies_the_policy() {
    let recv = Receiver::start(
        |_| (200, r#"{"allow":false}"#),
        None,
        Duration::from_secs(3),
    );
    let rt = Runtime::new().unwrap();
    for (fail_open, want) in [
        (true, Verdict::Allow),
        (
            false,
            Verdict::Reject("before-send hook unavailable".into()),
        ),
    ] {
        let hook = rt
            .before_send_hook(before(recv.url(), 150, fail_open))
            .unwrap();
        let (v, took) = ask(&*hook);
        assert_eq!(v, want, "fail_open {fail_open}");
        assert!(took >= Duration::from_millis(140), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}

#[test]
fn before_send_errors_apply_the_policy() {
    let recv = Receiver::start(
        |idx| match idx % 3 {
            0 => (500, r#"{"allow":true}"#),
            1 => (200, "not json"),
            _ => (200, r#"{"reason":"no allow field"}"#),
        },
        None,
        Duration::ZERO,
    );
    // Nothing listens on a port just freed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let rt = Runtime::new().unwrap();
    for fail_open in [false, true] {
        let want = if fail_open {
            Verdict::Allow
        } else {
            Verdict::Reject("before-send hook unavailable".into())
        };
        let hook = rt
            .before_send_hook(before(recv.url(), 2000, fail_open))
            .unwrap();
        for _ in 0..3 {
            assert_eq!(ask(&*hook).0, want, "fail_open {fail_open}");
        }
        let hook = rt
            .before_send_hook(before(dead.clone(), 2000, fail_open))
            .unwrap();
        assert_eq!(ask(&*hook).0, want, "dead receiver, fail_open {fail_open}");
    }
    assert_eq!(recv.got().len(), 6);
}

#[test]
fn before_send_answers_even_without_a_runtime() {
    let rt = Runtime::new().unwrap();
    let hook = rt
        .before_send_hook(before("http://127.0.0.1:9/x".into(), 100, false))
        .unwrap();
    drop(rt);
    // The task cannot run: the drop guard answers with the policy.
    let (v, took) = ask(&*hook);
    assert_eq!(v, Verdict::Reject("before-send hook unavailable".into()));
    assert!(took < Duration::from_secs(1));
}
