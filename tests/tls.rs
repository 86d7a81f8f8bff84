//! TLS: the real `tern serve` with a self-signed certificate generated at
//! test time (rcgen), reached by real TLS clients: tokio-rustls +
//! tokio-tungstenite for WSS, reqwest (rustls) for HTTPS. Bad PEM files stop
//! the start with a message and a non-zero exit.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, API_KEY, JSON_PROTO, REPLY};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound for `tern serve` to exit after a configuration error.
const FAIL_FAST: Duration = Duration::from_secs(10);

/// Round trips timed by the latency report (bounded, it is a test).
const LATENCY_ROUND_TRIPS: usize = 200;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM
/// files into a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("rcgen");
        let dir = tempfile::Builder::new()
            .prefix("tern-tls-")
            .tempdir()
            .expect("temp dir");
        let cert_pem = ck.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem())
            .expect("write key");
        Pki { dir, cert_pem }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes())
            .expect("cert der");
        roots.add(der).expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("cert"),
            )
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("https client")
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("addr")
}

/// A server with both TLS listeners; returns it with (wss, https) addresses.
async fn tls_server(pki: &Pki, extra: &[&str]) -> (Server, SocketAddr, SocketAddr) {
    let (wss, https) = (free_addr(), free_addr());
    let (cert, key) = (pki.cert(), pki.key());
    let (wss_s, https_s) = (wss.to_string(), https.to_string());
    let mut args = vec![
        "--tls-cert",
        cert.to_str().expect("utf8 path"),
        "--tls-key",
        key.to_str().expect("utf8 path"),
        "--tls-ws-addr",
        &wss_s,
        "--tls-http-addr",
        &https_s,
    ];
    args.extend_from_slice(extra);
    let s = Server::start(&args).await;
    (s, wss, https)
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// TLS handshake (verifying the test certificate for 127.0.0.1), then the
/// WebSocket upgrade offering `tern.v1.json`.
async fn wss_connect(pki: &Pki, addr: SocketAddr) -> Wss {
    wss_connect_from(pki, addr, None)
        .await
        .expect("TLS handshake")
}

/// [`wss_connect`] from a chosen local address; a failed TLS handshake
/// (the server closed the socket) is returned, anything else panics.
async fn wss_connect_from(
    pki: &Pki,
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
) -> std::io::Result<Wss> {
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]));
    let tcp = match from {
        None => TcpStream::connect(addr).await.expect("tcp connect"),
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
            sock.connect(addr).await.expect("tcp connect")
        }
    };
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio::time::timeout(REPLY, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")?;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "the WSS listener offers http/1.1 only"
    );
    let mut req = format!("wss://127.0.0.1:{}/ws", addr.port())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(JSON_PROTO),
    );
    let (ws, resp) = tokio::time::timeout(REPLY, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|h| h.to_str().ok()),
        Some(JSON_PROTO)
    );
    Ok(ws)
}

async fn send_json(ws: &mut Wss, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame as JSON (pings/pongs skipped); panics on close or
/// timeout.
async fn next_json(ws: &mut Wss) -> Value {
    let deadline = tokio::time::Instant::now() + REPLY;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("ws error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_of_type(ws: &mut Wss, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

/// The close code the server sends (reading past data frames).
async fn close_code(ws: &mut Wss) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + REPLY;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("not closed in time"),
            Ok(None) => return None,
            Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn https_json(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Value,
) -> (u16, reqwest::Version, Value) {
    let r = c
        .request(method, url)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("https request");
    let (st, ver) = (r.status().as_u16(), r.version());
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (st, ver, v)
}

async fn https_token(c: &reqwest::Client, https: SocketAddr, user: &str) -> String {
    let base = format!("https://127.0.0.1:{}", https.port());
    let (st, _, v) = https_json(
        c,
        reqwest::Method::PUT,
        format!("{base}/v1/users/{user}"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "PUT user over HTTPS: {v}");
    let (st, _, v) = https_json(
        c,
        reqwest::Method::POST,
        format!("{base}/v1/users/{user}/tokens"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "mint token over HTTPS: {v}");
    v["token"].as_str().expect("token").to_string()
}

async fn wss_login(pki: &Pki, wss: SocketAddr, token: &str, device: &str) -> Wss {
    let mut ws = wss_connect(pki, wss).await;
    send_json(
        &mut ws,
        json!({"type": "auth", "token": token, "device": device}),
    )
    .await;
    let ok = next_json(&mut ws).await;
    assert_eq!(ok["type"], "auth_ok", "auth over WSS: {ok}");
    ws
}

#[tokio::test]
async fn https_api_over_tls_with_h2_and_http1() {
    let pki = Pki::new();
    let (_s, _wss, https) = tls_server(&pki, &[]).await;
    let c = pki.https_client();
    let r = c
        .get(format!("https://127.0.0.1:{}/healthz", https.port()))
        .send()
        .await
        .expect("GET /healthz over HTTPS");
    assert_eq!(r.status().as_u16(), 200);
    // ALPN offers h2 first: reqwest (with http2) takes it.
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // The API key rules are the same as on the plain listener.
    let r = c
        .get(format!(
            "https://127.0.0.1:{}/v1/users/nobody",
            https.port()
        ))
        .send()
        .await
        .expect("GET without key");
    assert_eq!(r.status().as_u16(), 401);
    // HTTP/1.1 only clients work too.
    let c1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.cert_pem.as_bytes()).expect("cert"),
        )
        .http1_only()
        .no_proxy()
        .build()
        .expect("client");
    let r = c1
        .get(format!("https://127.0.0.1:{}/healthz", https.port()))
        .send()
        .await
        .expect("GET /healthz over HTTPS/1.1");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn wss_auth_send_receive_ack_and_close() {
    let pki = Pki::new();
    let (s, wss, https) = tls_server(&pki, &[]).await;
    let c = pki.https_client();
    let ta = https_token(&c, https, "alice").await;
    let tb = https_token(&c, https, "bob").await;

    let mut a = wss_login(&pki, wss, &ta, "phone").await;
    let mut b = wss_login(&pki, wss, &tb, "laptop").await;

    // A text large enough to span two TLS records (16 KiB each) each way,
    // under the 32 KiB body limit.
    let big = "x".repeat(30 * 1024);
    for (i, text) in ["hello over tls", big.as_str()].iter().enumerate() {
        let cmid = format!("c{i}");
        send_json(
            &mut a,
            json!({"type": "send", "cmid": cmid, "to": "user:bob", "kind": "text", "body": text}),
        )
        .await;
        let ack = next_of_type(&mut a, "send_ack").await;
        assert_eq!(ack["cmid"], cmid.as_str());
        assert_eq!(ack["conv"], "dm:alice:bob");
        let seq = ack["seq"].as_u64().expect("seq");
        assert_eq!(seq, i as u64 + 1);
        let m = next_of_type(&mut b, "msg").await;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["from"], "alice");
        assert_eq!(m["body"].as_str(), Some(*text));
        send_json(
            &mut b,
            json!({"type": "ack", "conv": "dm:alice:bob", "seq": seq}),
        )
        .await;
    }

    // WebSocket ping through the relay is answered by the engine.
    a.send(Message::Ping(b"tls-ping".to_vec().into()))
        .await
        .expect("ping");
    let deadline = tokio::time::Instant::now() + REPLY;
    loop {
        let m = tokio::time::timeout_at(deadline, a.next())
            .await
            .expect("pong in time")
            .expect("open")
            .expect("ok");
        if let Message::Pong(p) = m {
            assert_eq!(&p[..], b"tls-ping");
            break;
        }
    }

    // The message is in the store, as seen on the plain listener.
    let hist = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(2), "{hist}");

    // A client close 1000 is echoed through the relay.
    a.close(None).await.expect("close");
    assert_eq!(close_code(&mut a).await, Some(1000));

    // A server-side close (kick) reaches the TLS client with its code.
    let (st, _, v) = https_json(
        &c,
        reqwest::Method::POST,
        format!("https://127.0.0.1:{}/v1/users/bob/kick", https.port()),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "kick: {v}");
    assert_eq!(close_code(&mut b).await, Some(4409));
}

/// The per-IP limit applies to each WSS client's own address, not to the
/// relay's: with 2 per IP, two clients from each of two addresses all get
/// through (the engine sees the four as one local address), a third from
/// one address is refused before the TLS handshake, and closing one of its
/// connections lets it in again.
#[tokio::test]
async fn wss_clients_are_limited_per_ip_by_their_own_address() {
    let pki = Pki::new();
    let (_s, wss, _https) = tls_server(&pki, &["--max-conns-per-ip", "2"]).await;
    let a: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let b: std::net::IpAddr = "127.0.0.3".parse().expect("ip");
    let mut live = Vec::new();
    for ip in [a, a, b, b] {
        let ws = wss_connect_from(&pki, wss, Some(ip)).await;
        live.push(ws.unwrap_or_else(|e| panic!("connection {} from {ip}: {e}", live.len() + 1)));
    }
    let refused = wss_connect_from(&pki, wss, Some(a)).await;
    assert!(refused.is_err(), "a third connection from {a} got through");
    // Each admitted one is a working session: an unknown token is refused
    // by the engine, which means the upgrade reached it.
    for ws in &mut live {
        send_json(
            ws,
            json!({"type": "auth", "token": "forged", "device": "d"}),
        )
        .await;
        assert_eq!(next_json(ws).await["code"], "unauthorized");
    }
    // The engine closes them (4401); once the relay sees the end of one of
    // a's, its count drops and a may connect again.
    let first = live.remove(0);
    drop(first);
    let deadline = Instant::now() + REPLY;
    loop {
        match wss_connect_from(&pki, wss, Some(a)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "{a} still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_token_over_wss_closes_4401() {
    let pki = Pki::new();
    let (_s, wss, _https) = tls_server(&pki, &[]).await;
    let mut ws = wss_connect(&pki, wss).await;
    send_json(
        &mut ws,
        json!({"type": "auth", "token": "forged", "device": "d"}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(close_code(&mut ws).await, Some(4401));
}

#[tokio::test]
async fn plaintext_on_tls_port_is_dropped_and_server_keeps_serving() {
    let pki = Pki::new();
    let (_s, wss, https) = tls_server(&pki, &[]).await;
    // A plain HTTP upgrade to the TLS port: not a ClientHello.
    let mut raw = std::net::TcpStream::connect(wss).expect("connect");
    raw.set_read_timeout(Some(REPLY)).expect("timeout");
    use std::io::{Read, Write};
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    // rustls may answer with an alert; then the connection closes.
    let mut total = 0;
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("the TLS port neither closed nor answered: {e}"),
        }
    }
    assert!(total < 64, "no HTTP answer on the TLS port ({total} bytes)");
    // The TLS listeners still work.
    let c = pki.https_client();
    let t = https_token(&c, https, "carol").await;
    let mut ws = wss_login(&pki, wss, &t, "d").await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    let _ = ws.close(None).await;
}

/// `tern serve` with `args` (plus a temp data dir and free ports) must exit
/// non-zero quickly; returns its stderr.
fn start_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ws-addr")
        .arg(free_addr().to_string())
        .arg("--http-addr")
        .arg(free_addr().to_string())
        .arg("--api-key")
        .arg(API_KEY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + FAIL_FAST;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!st.success(), "tern serve {args:?} exited 0: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tern serve {args:?} still running after {FAIL_FAST:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn bad_or_missing_pem_files_stop_the_start() {
    let pki = Pki::new();
    let wss = free_addr().to_string();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write");
    let missing = pki.dir.path().join("missing.pem");

    let err = start_fails(&[
        "--tls-cert",
        path_str(&missing),
        "--tls-key",
        path_str(&pki.key()),
        "--tls-ws-addr",
        &wss,
    ]);
    assert!(
        err.contains("cannot read the TLS certificate file") && err.contains("missing.pem"),
        "{err}"
    );

    let err = start_fails(&[
        "--tls-cert",
        path_str(&garbage),
        "--tls-key",
        path_str(&pki.key()),
        "--tls-http-addr",
        &wss,
    ]);
    assert!(
        err.contains("bad TLS certificate file") && err.contains("garbage.pem"),
        "{err}"
    );

    let err = start_fails(&[
        "--tls-cert",
        path_str(&pki.cert()),
        "--tls-key",
        path_str(&pki.cert()),
        "--tls-ws-addr",
        &wss,
    ]);
    assert!(err.contains("bad TLS private key file"), "{err}");

    // A key that does not belong to the certificate.
    let other = rcgen::KeyPair::generate().expect("key");
    let other_key = pki.dir.path().join("other-key.pem");
    std::fs::write(&other_key, other.serialize_pem()).expect("write");
    let err = start_fails(&[
        "--tls-cert",
        path_str(&pki.cert()),
        "--tls-key",
        path_str(&other_key),
        "--tls-ws-addr",
        &wss,
    ]);
    assert!(err.contains("cannot be used together"), "{err}");

    // Half a configuration is refused, not silently plain.
    let err = start_fails(&["--tls-ws-addr", &wss]);
    assert!(err.contains("TLS needs both"), "{err}");
    let err = start_fails(&[
        "--tls-cert",
        path_str(&pki.cert()),
        "--tls-key",
        path_str(&pki.key()),
    ]);
    assert!(err.contains("no TLS listener"), "{err}");
}

/// Median and p99 of `n` dm round trips (send → receiver's `msg`) on one
/// pair of connections.
async fn dm_round_trips(a: &mut Wss, b: &mut Wss, n: usize, tag: &str) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        send_json(
            a,
            json!({"type": "send", "cmid": format!("{tag}{i}"), "to": "user:bob", "kind": "text", "body": "x"}),
        )
        .await;
        let m = next_of_type(b, "msg").await;
        lat.push(t0.elapsed());
        let seq = m["seq"].as_u64().expect("seq");
        send_json(
            b,
            json!({"type": "ack", "conv": "dm:alice:bob", "seq": seq}),
        )
        .await;
        next_of_type(a, "send_ack").await;
    }
    lat.sort();
    (lat[n / 2], lat[n * 99 / 100])
}

/// The relay's cost: the same dm round trip over plain WebSocket and over
/// the WSS relay, on one server (`--durability none` so fsync does not
/// drown the difference). Prints the figures; asserts only that TLS works
/// and costs less than a generous bound per round trip.
#[tokio::test]
async fn relay_latency_report() {
    let pki = Pki::new();
    let (s, wss, https) = tls_server(&pki, &["--durability", "none"]).await;
    let c = pki.https_client();
    let ta = https_token(&c, https, "alice").await;
    let tb = https_token(&c, https, "bob").await;

    let plain_connect = |token: String, dev: &'static str| {
        let url = s.ws_url();
        async move {
            let mut req = url.into_client_request().expect("req");
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(JSON_PROTO),
            );
            let (ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .expect("connect");
            let mut ws = ws;
            ws.send(Message::text(
                json!({"type": "auth", "token": token, "device": dev}).to_string(),
            ))
            .await
            .expect("auth");
            ws
        }
    };
    let mut pa = plain_connect(ta.clone(), "p1").await;
    let mut pb = plain_connect(tb.clone(), "p2").await;
    // Plain and TLS clients are different types; time each with its own loop.
    let mut plain = Vec::with_capacity(LATENCY_ROUND_TRIPS);
    for ws in [&mut pa, &mut pb] {
        let m = ws.next().await.expect("open").expect("auth_ok");
        assert!(m.to_text().unwrap_or("").contains("auth_ok"), "{m:?}");
    }
    for i in 0..LATENCY_ROUND_TRIPS {
        let t0 = Instant::now();
        pa.send(Message::text(
            json!({"type": "send", "cmid": format!("p{i}"), "to": "user:bob", "kind": "text", "body": "x"})
                .to_string(),
        ))
        .await
        .expect("send");
        let seq = loop {
            let m = pb.next().await.expect("open").expect("frame");
            let v: Value = serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or(Value::Null);
            if v["type"] == "msg" {
                break v["seq"].as_u64().expect("seq");
            }
        };
        plain.push(t0.elapsed());
        pb.send(Message::text(
            json!({"type": "ack", "conv": "dm:alice:bob", "seq": seq}).to_string(),
        ))
        .await
        .expect("ack");
        loop {
            let m = pa.next().await.expect("open").expect("frame");
            if m.to_text().unwrap_or("").contains("send_ack") {
                break;
            }
        }
    }
    plain.sort();
    let (p50, p99) = (
        plain[LATENCY_ROUND_TRIPS / 2],
        plain[LATENCY_ROUND_TRIPS * 99 / 100],
    );

    // The plain devices would get copies of the TLS phase's messages.
    let _ = pa.close(None).await;
    let _ = pb.close(None).await;
    let mut a = wss_login(&pki, wss, &ta, "t1").await;
    let mut b = wss_login(&pki, wss, &tb, "t2").await;
    let (t50, t99) = dm_round_trips(&mut a, &mut b, LATENCY_ROUND_TRIPS, "t").await;
    println!(
        "dm round trip over {LATENCY_ROUND_TRIPS} sends: plain p50 {p50:?} p99 {p99:?}; \
         WSS relay p50 {t50:?} p99 {t99:?}"
    );
    assert!(
        t50 < Duration::from_millis(250),
        "TLS round trip p50 {t50:?}"
    );
}

#[tokio::test]
async fn sigterm_closes_wss_clients_with_1001_and_exits_0() {
    let pki = Pki::new();
    let (mut s, wss, https) = tls_server(&pki, &[]).await;
    let c = pki.https_client();
    let t = https_token(&c, https, "dora").await;
    let mut ws = wss_login(&pki, wss, &t, "d").await;
    // The engine's 1001 close frame must cross the relay before it stops.
    let closed = tokio::spawn(async move { close_code(&mut ws).await });
    let status = s.sigterm(common::SHUTDOWN).await;
    assert!(
        status.is_some_and(|st| st.success()),
        "exit after SIGTERM: {status:?}"
    );
    assert_eq!(closed.await.expect("join"), Some(1001));
    // And the TLS port is closed.
    assert!(
        TcpStream::connect(wss).await.is_err(),
        "WSS port still open"
    );
}

#[tokio::test]
async fn toml_tls_section_opens_the_listeners() {
    let pki = Pki::new();
    let (wss, https) = (free_addr(), free_addr());
    let toml = pki.dir.path().join("tern.toml");
    std::fs::write(
        &toml,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nws_addr = \"{wss}\"\nhttp_addr = \"{https}\"\nconnections_max = 100\n",
            path_str(&pki.cert()),
            path_str(&pki.key()),
        ),
    )
    .expect("write toml");
    let _s = Server::start(&["--config", path_str(&toml)]).await;
    let c = pki.https_client();
    let t = https_token(&c, https, "erin").await;
    let mut ws = wss_login(&pki, wss, &t, "d").await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");

    // Unknown keys in [tls] are refused like everywhere else in the file.
    let bad = pki.dir.path().join("bad.toml");
    std::fs::write(&bad, "[tls]\ncertificate = \"x\"\n").expect("write toml");
    let err = start_fails(&["--config", path_str(&bad)]);
    assert!(err.contains("certificate"), "{err}");
}
