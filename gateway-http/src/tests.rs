//! The gateway over real sockets (with the fake engine): start, HTTP/1.1
//! keep-alive and pipelining, h2c, body limit, graceful shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::routes::testing::FakeEngine;
use crate::{start_with, Gateway, GatewayConfig, GatewayError, BODY_BYTES_MAX_DEFAULT};

const KEY: &str = "sock-key";

fn cfg(addr: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        addr,
        api_key: KEY.into(),
        body_bytes_max: BODY_BYTES_MAX_DEFAULT,
    }
}

fn start_fake(fake: &FakeEngine) -> Gateway {
    start_with(cfg("127.0.0.1:0".parse().unwrap()), fake.clone()).unwrap()
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
        start_with(c, fake.clone()),
        Err(GatewayError::EmptyApiKey)
    ));

    let gw = start_fake(&fake);
    assert_ne!(gw.local_addr().port(), 0);
    match start_with(cfg(gw.local_addr()), fake.clone()) {
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
