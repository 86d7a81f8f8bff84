//! The gateway over real sockets (with the fake engine): start, HTTP/1.1
//! keep-alive and pipelining, h2c, body limit, graceful shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::routes::testing::FakeEngine;
use crate::{start_with, Gateway, GatewayConfig, GatewayError, Runtime, BODY_BYTES_MAX_DEFAULT};

const KEY: &str = "sock-key";

fn cfg(addr: SocketAddr) -> GatewayConfig {
    let cfg = GatewayConfig::new(addr, KEY);
    assert_eq!(cfg.body_bytes_max, BODY_BYTES_MAX_DEFAULT);
    cfg
}

fn start_fake(fake: &FakeEngine) -> Gateway {
    start_with(
        cfg("127.0.0.1:0".parse().unwrap()),
        fake.clone(),
        Runtime::new().unwrap(),
    )
    .unwrap()
}

/// Read from `s` until `n` complete responses with `Content-Length` bodies
/// have arrived; returns the raw text.
fn read_responses(s: &mut TcpStream, n: usize) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if count_complete(&text) >= n {
            return text;
        }
        let got = s.read(&mut chunk).unwrap();
        assert!(got > 0, "connection closed after {text:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn count_complete(mut text: &str) -> usize {
    let mut n = 0;
    while let Some(head_end) = text.find("\r\n\r\n") {
        let head = text[..head_end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if text.len() < head_end + 4 + len {
            break;
        }
        text = &text[head_end + 4 + len..];
        n += 1;
    }
    n
}

#[test]
fn refuses_empty_key_and_taken_port() {
    let fake = FakeEngine::default();
    let mut c = cfg("127.0.0.1:0".parse().unwrap());
    c.api_key.clear();
    assert!(matches!(
        start_with(c, fake.clone(), Runtime::new().unwrap()),
        Err(GatewayError::EmptyApiKey)
    ));

    let gw = start_fake(&fake);
    assert_ne!(gw.local_addr().port(), 0);
    match start_with(cfg(gw.local_addr()), fake.clone(), Runtime::new().unwrap()) {
        Err(GatewayError::Bind { addr, .. }) => assert_eq!(addr, gw.local_addr()),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second gateway bound a taken port"),
    }
    gw.shutdown();
}

#[test]
fn http1_keep_alive_answers_pipelined_requests_in_order() {
    let fake = FakeEngine::default();
    let gw = start_fake(&fake);
    let mut s = TcpStream::connect(gw.local_addr()).unwrap();
    // Three requests in one write: healthz, a 401, a 404.
    let reqs = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
                GET /v1/users/a HTTP/1.1\r\nHost: x\r\n\r\n\
                GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(reqs.as_bytes()).unwrap();
    let text = read_responses(&mut s, 3);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 200", "HTTP/1.1 401", "HTTP/1.1 404"],
        "{text}"
    );
    // The connection is still usable.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_responses(&mut s, 1).ends_with(r#"{"status":"ok"}"#));
    drop(s);
    gw.shutdown();
}

#[test]
fn h2c_prior_knowledge_is_served() {
    let fake = FakeEngine::default();
    let gw = start_fake(&fake);
    let addr = gw.local_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let res = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), r#"{"status":"ok"}"#);
        let res = client
            .put(format!("http://{addr}/v1/users/alice"))
            .bearer_auth(KEY)
            .body(r#"{"name":"A"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    });
    // The client's connection task lives on `rt`: drop it so the client
    // side closes instead of freezing (the server would wait out its grace).
    drop(rt);
    let began = Instant::now();
    gw.shutdown();
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[test]
fn oversize_bodies_get_413_over_the_wire() {
    let fake = FakeEngine::default();
    let gw = start_fake(&fake);
    let addr = gw.local_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::new();
        // Just over the limit, and well over it: the client must read a 413,
        // not a reset, so the server drains what it refuses. Repeated, since
        // a reset would be a race.
        for len in [BODY_BYTES_MAX_DEFAULT, 4 * BODY_BYTES_MAX_DEFAULT] {
            for _ in 0..3 {
                let body = format!(r#"{{"name":"{}"}}"#, "n".repeat(len));
                let url = format!("http://{addr}/v1/users/alice");
                let res = client
                    .put(url)
                    .bearer_auth(KEY)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 413);
                let v: serde_json::Value = res.json().await.unwrap();
                assert_eq!(v["error"]["code"], "too_large");
            }
        }
        // Just under the limit passes the body check (and fails the name bound).
        let name = "n".repeat(BODY_BYTES_MAX_DEFAULT - 20);
        let body = format!(r#"{{"name":"{name}"}}"#);
        let res = client
            .put(format!("http://{addr}/v1/users/alice"))
            .bearer_auth(KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
    });
    gw.shutdown();
}

#[test]
fn shutdown_finishes_in_flight_requests_then_refuses_connections() {
    let fake = FakeEngine::default();
    fake.0.lock().unwrap().send_delay = Duration::from_millis(500);
    let gw = start_fake(&fake);
    let addr = gw.local_addr();

    let mut s = TcpStream::connect(addr).unwrap();
    let body = r#"{"to":"user:bob","kind":"text","body":"hi"}"#;
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Let the request reach the (slow) engine, then stop.
    std::thread::sleep(Duration::from_millis(100));
    let began = Instant::now();
    gw.shutdown();
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "shutdown did not wait for the request"
    );
    assert!(began.elapsed() < Duration::from_secs(5));
    let text = read_responses(&mut s, 1);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains(r#""seq":1"#), "{text}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn drop_stops_the_gateway() {
    let fake = FakeEngine::default();
    let gw = start_fake(&fake);
    let addr = gw.local_addr();
    // An idle keep-alive connection must not hold the stop up.
    let _idle = TcpStream::connect(addr).unwrap();
    let began = Instant::now();
    drop(gw);
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn metrics_and_openapi_over_the_wire_need_no_key() {
    let fake = FakeEngine::default();
    let gw = start_fake(&fake);
    let mut s = TcpStream::connect(gw.local_addr()).unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let text = read_responses(&mut s, 2);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    assert!(text.contains("# TYPE tern_http_requests_total counter"));
    assert!(text.contains(r#""openapi":"3."#));
    drop(s);
    gw.shutdown();
}

#[test]
fn bad_webhook_config_refuses_to_start() {
    let fake = FakeEngine::default();
    let mut c = cfg("127.0.0.1:0".parse().unwrap());
    c.webhook = Some(crate::WebhookConfig::new("http://127.0.0.1:1/hook", ""));
    match start_with(c, fake, Runtime::new().unwrap()) {
        Err(GatewayError::Config(msg)) => assert!(msg.contains("secret"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with an empty webhook secret"),
    }
}

/// The whole path: engine event queue → gateway → webhook receiver, and the
/// webhook counters on `/metrics`.
#[test]
fn gateway_posts_engine_events_to_the_webhook() {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let receiver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hook_addr = {
        let got = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    got.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    "ok"
                }
            }),
        );
        let listener = receiver_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        receiver_rt.spawn(async move { axum::serve(listener, app).await });
        addr
    };
    let (tx, rx) = crossbeam_channel::bounded(16);
    let mut c = cfg("127.0.0.1:0".parse().unwrap());
    let mut hook = crate::WebhookConfig::new(format!("http://{hook_addr}/hook"), "k");
    hook.flush_ms = 20;
    c.webhook = Some(hook);
    c.events = Some(rx);
    let fake = FakeEngine::default();
    let gw = start_with(c, fake, Runtime::new().unwrap()).unwrap();
    tx.send(tern_engine::EngineEvent::UserOffline {
        user: tern_proto::UserId::parse("alice").unwrap(),
        device: tern_proto::DeviceId::parse("phone").unwrap(),
        ts: 42,
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook call");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        got.lock().unwrap()[0],
        serde_json::json!({"events":[{"type":"user.offline","user":"alice","device":"phone","ts":42}]})
    );
    let mut s = TcpStream::connect(gw.local_addr()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let text = read_responses(&mut s, 1);
    assert!(
        text.contains("\ntern_webhook_delivered_total 1\n"),
        "{text}"
    );
    drop(s);
    gw.shutdown();
}
