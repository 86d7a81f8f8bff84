//! Harness for the end-to-end tests: the real `tern serve` binary over real
//! sockets, written only from PROTOCOL.md.
//!
//! # Layout
//! - [`Server`]: one `tern serve` process with its own temp data dir and free
//!   loopback ports; HTTP helpers for the business API; kill -9, restart,
//!   SIGTERM.
//! - [`Client`]: a WebSocket client (tokio-tungstenite) for either
//!   subprotocol. Every server frame is handed to the test as a
//!   `serde_json::Value` in the JSON wire shape (rkyv frames are decoded with
//!   tern-proto and mapped), so one test body runs over both subprotocols.
//!   Frames a test is not waiting for stay in an inbox, in arrival order.
//! - [`RawWs`]: blocking raw TCP for handcrafted handshakes and frames
//!   (oversize, invalid UTF-8, unknown subprotocols) and reading close codes.
//!
//! Every wait is bounded: a test fails, it never hangs.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tern_proto::{
    ClientFrame, ConvSummary, Entry, ErrorCode, Event, Kind, Msg, RawJson, ServerFrame, Subprotocol,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// API key every test server runs with (the server wants 8-256 printable
/// ASCII characters).
pub const API_KEY: &str = "testkey-e2e";

/// Both subprotocols, for tests that run once per subprotocol.
pub const SPS: [Subprotocol; 2] = [Subprotocol::Json, Subprotocol::Rkyv];

/// Subprotocol names (PROTOCOL.md "WebSocket endpoint").
pub const JSON_PROTO: &str = "tern.v1.json";
/// See [`JSON_PROTO`].
pub const RKYV_PROTO: &str = "tern.v1.rkyv";

/// Bound for an answer the server should give promptly. Generous because
/// test binaries run their tests in parallel on 2 cores, each send fsyncs.
pub const REPLY: Duration = Duration::from_secs(5);

/// How long a test watches for a frame that must NOT arrive. Long enough
/// that a wrongly fanned-out frame (one mesh hop) would have shown up.
pub const QUIET: Duration = Duration::from_millis(500);

/// Bound for `tern serve` to answer `GET /healthz` 200 after spawn
/// (RocksDB open and WAL replay included).
const STARTUP: Duration = Duration::from_secs(20);

/// Bound for a SIGTERM'd server to exit (PROTOCOL: it drains in-flight writes
/// and closes connections, then exits 0).
pub const SHUTDOWN: Duration = Duration::from_secs(10);

/// Attempts to start a server when its ports were taken between our probe
/// and its bind (another test grabbed them).
const START_ATTEMPTS: u32 = 3;

/// Bytes of each log file printed when a test fails.
const LOG_TAIL_BYTES: usize = 48 * 1024;
/// The largest `sync` page (PROTOCOL.md), used to read whole timelines.
const SYNC_PAGE_MAX: u32 = 500;
/// Pages `Client::sync_all` reads before it gives up on a timeline.
const SYNC_ALL_PAGES_MAX: usize = 20_000;

/// Largest handshake response head [`RawWs`] accepts.
const RAW_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Largest server frame [`RawWs`] reads (PROTOCOL: server frames ≤ 16 MiB).
const RAW_FRAME_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Server time now, in ms since the Unix epoch (same clock as `ts`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asserts that `v` is a server timestamp close to now (the server runs on
/// this machine, so the clocks agree).
pub fn assert_ts_recent(v: &Value, what: &str) {
    let ts = v
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: ts is not a u64: {v}"));
    let now = now_ms();
    assert!(
        ts + 120_000 > now && ts < now + 5_000,
        "{what}: ts {ts} far from now {now}"
    );
}

/// `dm:<a>:<b>` with a < b in byte order.
pub fn dm(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// A short tag per subprotocol, to make user ids distinct per loop iteration.
pub fn tag(sp: Subprotocol) -> &'static str {
    match sp {
        Subprotocol::Json => "j",
        Subprotocol::Rkyv => "r",
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// One `tern serve` process. Drop kills it (and prints its log if the test
/// is failing).
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// WebSocket listen address.
    pub ws_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    extra: Vec<String>,
    /// Environment variables of the next spawns ([`Server::set_env`]).
    env: Vec<(String, String)>,
    http: reqwest::Client,
    n_starts: u32,
}

/// Two distinct free loopback ports (bound together so they differ, then
/// released for the server to take).
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind probe");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind probe");
    (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
}

/// `tern serve --help`, once per test binary.
fn serve_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--help"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => String::new(),
        }
    })
}

impl Server {
    /// Whether `tern serve` knows `flag` (PROTOCOL names only some flags;
    /// tests use others, such as a short ack timeout, when they exist).
    pub fn supports_flag(flag: &str) -> bool {
        serve_help()
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '=' | '[' | ']' | '<'))
            .any(|w| w == flag)
    }

    /// Spawns `tern serve` with a fresh data dir and free ports, plus `args`,
    /// and waits until `GET /healthz` answers 200.
    pub async fn start(args: &[&str]) -> Server {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("reqwest client");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::Builder::new()
                .prefix("tern-it-")
                .tempdir()
                .expect("temp dir");
            let (ws_addr, http_addr) = free_addrs();
            let mut s = Server {
                child: None,
                dir,
                ws_addr,
                http_addr,
                extra: args.iter().map(|a| a.to_string()).collect(),
                env: Vec::new(),
                http: http.clone(),
                n_starts: 0,
            };
            s.spawn();
            match s.wait_healthy().await {
                Ok(()) => return s,
                Err(why) => {
                    let logs = s.logs();
                    let lower = logs.to_lowercase();
                    let port_taken =
                        lower.contains("address already in use") || lower.contains("addrinuse");
                    if attempt < START_ATTEMPTS && port_taken {
                        continue;
                    }
                    s.dump_on_drop_anyway();
                    panic!("tern serve did not start: {why}\n{logs}");
                }
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's `--data-dir` (for tests that damage it, or move it onto
    /// a small file system, between a stop and a restart).
    pub fn data_path(&self) -> PathBuf {
        self.data_dir()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self) {
        self.n_starts += 1;
        let open = |p: PathBuf| -> File {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("log file");
            let _ = writeln!(f, "===== tern serve start #{} =====", self.n_starts);
            f
        };
        let out = open(self.log_path("stdout.log"));
        let err = open(self.log_path("stderr.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--ws-addr")
            .arg(self.ws_addr.to_string())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .arg("--api-key")
            .arg(API_KEY)
            .arg("--shards")
            .arg("2")
            .args(&self.extra)
            .env_remove("TERN_API_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn tern serve");
        self.child = Some(child);
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        let url = format!("http://{}/healthz", self.http_addr);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status} before it was healthy"));
                }
            }
            let probe = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(resp) = probe {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("GET /healthz not 200 within {STARTUP:?}"))
    }

    fn dump_on_drop_anyway(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The tail of the server's stdout and stderr.
    pub fn logs(&self) -> String {
        let tail = |name: &str| -> String {
            let mut s = String::new();
            if let Ok(mut f) = File::open(self.log_path(name)) {
                let mut b = Vec::new();
                let _ = f.read_to_end(&mut b);
                let from = b.len().saturating_sub(LOG_TAIL_BYTES);
                s = String::from_utf8_lossy(&b[from..]).into_owned();
            }
            s
        };
        format!(
            "----- tern stdout (tail) -----\n{}\n----- tern stderr (tail) -----\n{}\n-----",
            tail("stdout.log"),
            tail("stderr.log")
        )
    }

    /// The child's pid (panics if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// SIGKILL and reap: a crash, nothing flushed by the process itself.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data dir and ports (after
    /// [`Server::kill9`] or [`Server::sigterm`]; kills it first if running).
    pub async fn restart(&mut self) {
        self.kill9();
        // The old process's listeners are gone once it is reaped; the new one
        // binds the same ports (SO_REUSEADDR ignores TIME_WAIT).
        self.spawn();
        if let Err(why) = self.wait_healthy().await {
            panic!("restart failed: {why}\n{}", self.logs());
        }
    }

    /// Environment variables for every later start (a restart); replaces
    /// the earlier ones.
    pub fn set_env(&mut self, vars: &[(&str, &str)]) {
        self.env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Waits up to `bound` for the server to exit by itself (reaping it);
    /// `None` if it is still running then.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server not running");
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Sends SIGTERM and waits up to `bound` for the exit; `None` if it is
    /// still running then.
    pub async fn sigterm(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server not running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        self.wait_exit(bound).await
    }

    /// `http://<http_addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    /// `ws://<ws_addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// A request with the right API key and an optional JSON body.
    /// Returns the status and the body as JSON (`Null` when empty,
    /// `String` when not JSON).
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.request_raw(method, path, Some(API_KEY), bytes).await
    }

    /// A request with full control: `key` `None` sends no Authorization
    /// header; `body` is sent as is with `Content-Type: application/json`.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(m, self.url(path));
        if let Some(k) = key {
            rb = rb.header("Authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json").body(b);
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// `PUT /v1/users/{id}` with `{}`; asserts 200.
    pub async fn put_user(&self, id: &str) -> Value {
        let (st, v) = self
            .request("PUT", &format!("/v1/users/{id}"), Some(json!({})))
            .await;
        assert_eq!(st, 200, "PUT user {id}: {v}");
        v
    }

    /// Creates every user in `ids`.
    pub async fn put_users(&self, ids: &[&str]) {
        for id in ids {
            self.put_user(id).await;
        }
    }

    /// Mints a token (`POST /v1/users/{user}/tokens`); asserts 200.
    pub async fn token(&self, user: &str, device: Option<&str>) -> String {
        let body = match device {
            Some(d) => json!({ "device": d }),
            None => json!({}),
        };
        let (st, v) = self
            .request("POST", &format!("/v1/users/{user}/tokens"), Some(body))
            .await;
        assert_eq!(st, 200, "mint token for {user}: {v}");
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_string()
    }

    /// `POST /v1/messages`.
    pub async fn post_message(&self, body: Value) -> (u16, Value) {
        self.request("POST", "/v1/messages", Some(body)).await
    }

    /// `GET /v1/conversations/{conv}/messages?after=&limit=`; asserts 200.
    pub async fn history(&self, conv: &str, after: u64, limit: Option<u32>) -> Value {
        let mut path = format!("/v1/conversations/{conv}/messages?after={after}");
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        let (st, v) = self.request("GET", &path, None).await;
        assert_eq!(st, 200, "history {conv}: {v}");
        v
    }

    /// Every message of `conv` via HTTP history, following `has_more`.
    pub async fn history_all(&self, conv: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = 0;
        // Bound: no test stores more than this many entries in a conv.
        for _ in 0..1000 {
            let page = self.history(conv, after, Some(100)).await;
            let msgs = page["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("no messages in {page}"))
                .clone();
            if let Some(last) = msgs.last() {
                after = last["seq"].as_u64().expect("seq");
            }
            let more = page["has_more"]
                .as_bool()
                .unwrap_or_else(|| panic!("no has_more in {page}"));
            let empty = msgs.is_empty();
            out.extend(msgs);
            if !more || empty {
                return out;
            }
        }
        panic!("history of {conv} never ended");
    }

    /// Connects `sp`, mints a token for (user, device) and authenticates;
    /// asserts `auth_ok`.
    pub async fn login(&self, sp: Subprotocol, user: &str, device: &str) -> Client {
        let tok = self.token(user, Some(device)).await;
        let mut c = Client::connect(self, sp).await;
        let ok = c.auth(&tok, device).await;
        assert_eq!(ok["type"], "auth_ok", "{sp:?} auth {user}/{device}: {ok}");
        c.label = format!("{user}/{device}/{}", tag(sp));
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why no frame came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Nothing within the bound.
    Timeout,
    /// The connection ended: the close code if a close frame came, `None`
    /// for a TCP close/reset without one.
    Closed(Option<u16>),
}

/// A WebSocket client speaking either subprotocol; frames are JSON values.
pub struct Client {
    ws: Ws,
    /// The subprotocol in use (what the server answered).
    pub sp: Subprotocol,
    /// Frames received but not yet taken by the test, in arrival order.
    inbox: VecDeque<Value>,
    closed: Option<Option<u16>>,
    /// For failure messages.
    pub label: String,
}

/// Converts a JSON client frame to the tern-proto type (for rkyv).
fn client_frame_from_json(v: &Value) -> ClientFrame {
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("client frame field {k} missing: {v}"))
            .to_string()
    };
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("client frame field {k} missing: {v}"))
    };
    match v["type"].as_str().unwrap_or_default() {
        "auth" => ClientFrame::Auth {
            token: s("token"),
            device: s("device"),
        },
        "send" => ClientFrame::Send {
            cmid: s("cmid"),
            to: s("to"),
            kind: kind_from_str(&s("kind")),
            body: RawJson::from_text(serde_json::to_string(&v["body"]).expect("json"))
                .expect("valid json"),
        },
        "ack" => ClientFrame::Ack {
            conv: s("conv"),
            seq: n("seq"),
        },
        "read" => ClientFrame::Read {
            conv: s("conv"),
            seq: n("seq"),
        },
        "sync" => ClientFrame::Sync {
            conv: s("conv"),
            after: n("after"),
            limit: v["limit"].as_u64().map(|l| l as u32),
        },
        "convs" => ClientFrame::Convs,
        "typing" => ClientFrame::Typing { to: s("to") },
        "ping" => ClientFrame::Ping,
        other => panic!("no rkyv client frame for type {other:?}: {v}"),
    }
}

/// `Kind` from its wire name.
pub fn kind_from_str(s: &str) -> Kind {
    match s {
        "text" => Kind::Text,
        "image" => Kind::Image,
        "file" => Kind::File,
        "voice" => Kind::Voice,
        "custom" => Kind::Custom,
        other => panic!("unknown kind {other:?}"),
    }
}

/// Wire name of a `Kind` (PROTOCOL: text, image, file, voice, custom).
fn kind_str(k: &Kind) -> &'static str {
    match k {
        Kind::Text => "text",
        Kind::Image => "image",
        Kind::File => "file",
        Kind::Voice => "voice",
        Kind::Custom => "custom",
    }
}

/// Wire name of an `ErrorCode` (PROTOCOL: send_err codes plus
/// `unauthorized`).
fn code_str(c: &ErrorCode) -> &'static str {
    match c {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::NotMember => "not_member",
        ErrorCode::NoSuchUser => "no_such_user",
        ErrorCode::NoSuchGroup => "no_such_group",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::Rejected => "rejected",
        ErrorCode::Unavailable => "unavailable",
    }
}

fn body_json(b: &RawJson) -> Value {
    serde_json::from_str(b.as_str())
        .unwrap_or_else(|e| panic!("rkyv body is not JSON ({e}): {}", b.as_str()))
}

fn msg_json(m: &Msg) -> Value {
    json!({
        "type": "msg",
        "conv": m.conv, "seq": m.seq, "from": m.from, "device": m.device,
        "cmid": m.cmid, "kind": kind_str(&m.kind), "body": body_json(&m.body), "ts": m.ts,
    })
}

fn event_json(e: &Event) -> Value {
    json!({
        "type": "event",
        "conv": e.conv, "seq": e.seq, "code": e.code, "data": body_json(&e.data), "ts": e.ts,
    })
}

fn entry_json(e: &Entry) -> Value {
    match e {
        Entry::Msg(m) => msg_json(m),
        Entry::Event(e) => event_json(e),
    }
}

fn summary_json(c: &ConvSummary) -> Value {
    json!({ "conv": c.conv, "max_seq": c.max_seq, "read_seq": c.read_seq, "unread": c.unread })
}

/// Maps a decoded rkyv server frame to the JSON wire shape of PROTOCOL.md,
/// field by field, so tests compare both subprotocols with one assertion.
fn server_frame_json(f: &ServerFrame) -> Value {
    match f {
        ServerFrame::AuthOk {
            user,
            device,
            heartbeat_ms,
            ack_timeout_ms,
            ts,
        } => json!({
            "type": "auth_ok", "user": user, "device": device,
            "heartbeat_ms": heartbeat_ms, "ack_timeout_ms": ack_timeout_ms, "ts": ts,
        }),
        ServerFrame::SendAck {
            cmid,
            conv,
            seq,
            ts,
        } => {
            json!({ "type": "send_ack", "cmid": cmid, "conv": conv, "seq": seq, "ts": ts })
        }
        ServerFrame::SendErr {
            cmid,
            code,
            message,
        } => {
            json!({ "type": "send_err", "cmid": cmid, "code": code_str(code), "message": message })
        }
        ServerFrame::Msg(m) => msg_json(m),
        ServerFrame::Event(e) => event_json(e),
        ServerFrame::Receipt {
            conv,
            user,
            read_seq,
        } => {
            json!({ "type": "receipt", "conv": conv, "user": user, "read_seq": read_seq })
        }
        ServerFrame::Typing { conv, user } => {
            json!({ "type": "typing", "conv": conv, "user": user })
        }
        ServerFrame::Notice { conv, max_seq } => {
            json!({ "type": "notice", "conv": conv, "max_seq": max_seq })
        }
        ServerFrame::Kicked { reason } => json!({ "type": "kicked", "reason": reason }),
        ServerFrame::Pong { ts } => json!({ "type": "pong", "ts": ts }),
        ServerFrame::SyncResult {
            conv,
            messages,
            has_more,
        } => json!({
            "type": "sync_result", "conv": conv,
            "messages": messages.iter().map(entry_json).collect::<Vec<_>>(), "has_more": has_more,
        }),
        ServerFrame::ConvsResult { convs } => json!({
            "type": "convs_result", "convs": convs.iter().map(summary_json).collect::<Vec<_>>(),
        }),
        ServerFrame::Error { code, message } => {
            json!({ "type": "error", "code": code_str(code), "message": message })
        }
    }
}

/// The bytes of a client frame in `sp`.
pub fn encode(sp: Subprotocol, v: &Value) -> Vec<u8> {
    match sp {
        Subprotocol::Json => serde_json::to_vec(v).expect("json"),
        Subprotocol::Rkyv => {
            tern_proto::encode_client(Subprotocol::Rkyv, &client_frame_from_json(v))
        }
    }
}

/// Decodes one server frame of `sp` into the JSON wire shape.
pub fn decode(sp: Subprotocol, bytes: &[u8]) -> Value {
    match sp {
        Subprotocol::Json => serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "server sent invalid JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        }),
        Subprotocol::Rkyv => {
            let f = tern_proto::decode_server(Subprotocol::Rkyv, bytes).unwrap_or_else(|e| {
                panic!("server sent an rkyv frame that does not validate: {e:?}")
            });
            server_frame_json(&f)
        }
    }
}

fn frame_type(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

impl Client {
    /// Connects offering exactly the subprotocol `sp`; asserts the server
    /// answered it.
    pub async fn connect(server: &Server, sp: Subprotocol) -> Client {
        let name = match sp {
            Subprotocol::Json => JSON_PROTO,
            Subprotocol::Rkyv => RKYV_PROTO,
        };
        let (c, answered) = Client::connect_offer(server, Some(name)).await;
        assert_eq!(
            answered.as_deref(),
            Some(name),
            "server did not select the offered subprotocol"
        );
        c
    }

    /// Connects offering `offer` (a `Sec-WebSocket-Protocol` value) or
    /// nothing. Returns the client (speaking what the server answered, JSON
    /// when it answered none) and the answered subprotocol.
    pub async fn connect_offer(server: &Server, offer: Option<&str>) -> (Client, Option<String>) {
        let mut req = server.ws_url().into_client_request().expect("request");
        if let Some(o) = offer {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(o).expect("header"),
            );
        }
        let fut = tokio_tungstenite::connect_async(req);
        let (ws, resp) = match tokio::time::timeout(REPLY, fut).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => panic!("websocket connect: {e}\n{}", server.logs()),
            Err(_) => panic!("websocket connect timed out\n{}", server.logs()),
        };
        let answered = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|h| h.to_str().unwrap_or("<non-ascii>").to_string());
        let sp = if answered.as_deref() == Some(RKYV_PROTO) {
            Subprotocol::Rkyv
        } else {
            Subprotocol::Json
        };
        (
            Client {
                ws,
                sp,
                inbox: VecDeque::new(),
                closed: None,
                label: format!("client/{}", tag(sp)),
            },
            answered,
        )
    }

    /// Sends `auth` and returns the first frame that answers it.
    pub async fn auth(&mut self, token: &str, device: &str) -> Value {
        self.send(&json!({ "type": "auth", "token": token, "device": device }))
            .await;
        match self.next(REPLY).await {
            Ok(v) => v,
            Err(e) => panic!("{}: no answer to auth: {e:?}", self.label),
        }
    }

    /// Sends one client frame (given in its JSON shape) in this client's
    /// subprotocol.
    pub async fn send(&mut self, v: &Value) {
        let bytes = encode(self.sp, v);
        match self.sp {
            Subprotocol::Json => {
                self.send_raw_text(String::from_utf8(bytes).expect("utf8"))
                    .await
            }
            Subprotocol::Rkyv => self.send_raw_binary(bytes).await,
        }
    }

    /// Sends a text frame as is.
    pub async fn send_raw_text(&mut self, s: String) {
        let r = tokio::time::timeout(REPLY, self.ws.send(Message::text(s))).await;
        assert!(
            matches!(r, Ok(Ok(()))),
            "{}: websocket send failed: {r:?}",
            self.label
        );
    }

    /// Sends a binary frame as is.
    pub async fn send_raw_binary(&mut self, b: Vec<u8>) {
        let r = tokio::time::timeout(REPLY, self.ws.send(Message::binary(b))).await;
        assert!(
            matches!(r, Ok(Ok(()))),
            "{}: websocket send failed: {r:?}",
            self.label
        );
    }

    /// Sends a WebSocket ping (keepalive without a frame).
    pub async fn ws_ping(&mut self) {
        let r = tokio::time::timeout(REPLY, self.ws.send(Message::Ping(Vec::new().into()))).await;
        assert!(
            matches!(r, Ok(Ok(()))),
            "{}: websocket ping failed: {r:?}",
            self.label
        );
    }

    /// Reads one frame from the socket (not the inbox) until `deadline`.
    async fn read_socket(&mut self, deadline: tokio::time::Instant) -> Result<Value, End> {
        if let Some(code) = self.closed {
            return Err(End::Closed(code));
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(End::Timeout),
                Ok(n) => n,
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(
                        self.sp,
                        Subprotocol::Json,
                        "{}: text frame on rkyv: {}",
                        self.label,
                        t.as_str()
                    );
                    return Ok(decode(Subprotocol::Json, t.as_bytes()));
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(
                        self.sp,
                        Subprotocol::Rkyv,
                        "{}: binary frame on json ({} bytes)",
                        self.label,
                        b.len()
                    );
                    return Ok(decode(Subprotocol::Rkyv, &b));
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return Err(End::Closed(code));
                }
                Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return Err(End::Closed(None));
                }
            }
        }
    }

    /// The next frame (inbox first), or why none came within `t`.
    pub async fn next(&mut self, t: Duration) -> Result<Value, End> {
        if let Some(v) = self.inbox.pop_front() {
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + t;
        self.read_socket(deadline).await
    }

    /// The first frame (inbox first) for which `pred` holds; the others stay
    /// in the inbox in order.
    pub async fn try_expect_where(
        &mut self,
        t: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, End> {
        if let Some(i) = self.inbox.iter().position(&pred) {
            return Ok(self.inbox.remove(i).expect("index"));
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let v = self.read_socket(deadline).await?;
            if pred(&v) {
                return Ok(v);
            }
            self.inbox.push_back(v);
        }
    }

    /// Like [`Client::try_expect_where`], panicking with context on failure.
    pub async fn expect_where(
        &mut self,
        t: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_expect_where(t, pred).await {
            Ok(v) => v,
            Err(e) => panic!(
                "{}: expected {what}, got {e:?}; inbox: {:?}",
                self.label, self.inbox
            ),
        }
    }

    /// The first frame of type `ty`.
    pub async fn expect(&mut self, ty: &str, t: Duration) -> Value {
        let want = ty.to_string();
        self.expect_where(t, &format!("a {ty} frame"), move |v| frame_type(v) == want)
            .await
    }

    /// Watches for `d`: no frame whose type is in `types` may arrive (the
    /// inbox is checked too). Other frames stay in the inbox.
    pub async fn quiet(&mut self, types: &[&str], d: Duration) {
        let hit = |v: &Value| types.contains(&frame_type(v));
        if let Some(v) = self.inbox.iter().find(|v| hit(v)) {
            panic!("{}: unexpected frame {v}", self.label);
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match self.read_socket(deadline).await {
                Ok(v) if hit(&v) => panic!("{}: unexpected frame {v}", self.label),
                Ok(v) => self.inbox.push_back(v),
                Err(_) => return,
            }
        }
    }

    /// Reads until the connection closes; returns the close code (`None`:
    /// closed without a close frame). Data frames on the way go to the inbox.
    pub async fn expect_close(&mut self, t: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match self.read_socket(deadline).await {
                Ok(v) => self.inbox.push_back(v),
                Err(End::Closed(code)) => return code,
                Err(End::Timeout) => panic!(
                    "{}: not closed within {t:?}; inbox: {:?}",
                    self.label, self.inbox
                ),
            }
        }
    }

    /// Frames received but not yet taken.
    pub fn inbox(&self) -> &VecDeque<Value> {
        &self.inbox
    }

    /// Takes every frame of type `ty` from the inbox.
    pub fn take_inbox(&mut self, ty: &str) -> Vec<Value> {
        let (hit, rest): (Vec<Value>, Vec<Value>) =
            self.inbox.drain(..).partition(|v| frame_type(v) == ty);
        self.inbox = rest.into();
        hit
    }

    /// Sends a `send` and returns its answer (`send_ack` or `send_err` with
    /// the same cmid).
    pub async fn send_msg(&mut self, cmid: &str, to: &str, kind: &str, body: Value) -> Value {
        self.send(&json!({ "type": "send", "cmid": cmid, "to": to, "kind": kind, "body": body }))
            .await;
        self.answer_to(cmid).await
    }

    /// The `send_ack`/`send_err` for `cmid`.
    pub async fn answer_to(&mut self, cmid: &str) -> Value {
        let want = cmid.to_string();
        self.expect_where(REPLY, &format!("send_ack/send_err for {cmid}"), move |v| {
            matches!(frame_type(v), "send_ack" | "send_err") && v["cmid"] == want.as_str()
        })
        .await
    }

    /// Sends a text message and asserts a `send_ack`.
    pub async fn send_text(&mut self, cmid: &str, to: &str, text: &str) -> Value {
        let a = self.send_msg(cmid, to, "text", json!(text)).await;
        assert_eq!(
            a["type"], "send_ack",
            "{}: send {cmid} to {to}: {a}",
            self.label
        );
        a
    }

    /// Cumulative `ack`.
    pub async fn ack(&mut self, conv: &str, seq: u64) {
        self.send(&json!({ "type": "ack", "conv": conv, "seq": seq }))
            .await;
    }

    /// `read`.
    pub async fn read(&mut self, conv: &str, seq: u64) {
        self.send(&json!({ "type": "read", "conv": conv, "seq": seq }))
            .await;
    }

    /// `typing`.
    pub async fn typing(&mut self, to: &str) {
        self.send(&json!({ "type": "typing", "to": to })).await;
    }

    /// `sync` and its answer: the `sync_result` for `conv` or an `error`.
    pub async fn sync(&mut self, conv: &str, after: u64, limit: Option<u32>) -> Value {
        let mut f = json!({ "type": "sync", "conv": conv, "after": after });
        if let Some(l) = limit {
            f["limit"] = json!(l);
        }
        self.send(&f).await;
        let want = conv.to_string();
        self.expect_where(REPLY, &format!("sync_result for {conv}"), move |v| {
            (frame_type(v) == "sync_result" && v["conv"] == want.as_str())
                || frame_type(v) == "error"
        })
        .await
    }

    /// Every entry of `conv` after `after` via `sync`, following `has_more`.
    pub async fn sync_all(&mut self, conv: &str, after: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = after;
        // Bound: 10 M entries, above what any test stores in a conv (a long
        // crash soak stores ~7 k per cycle in its group).
        for _ in 0..SYNC_ALL_PAGES_MAX {
            let r = self.sync(conv, after, Some(SYNC_PAGE_MAX)).await;
            assert_eq!(r["type"], "sync_result", "{}: sync {conv}: {r}", self.label);
            let msgs = r["messages"].as_array().expect("messages").clone();
            if let Some(last) = msgs.last() {
                after = last["seq"].as_u64().expect("seq");
            }
            let more = r["has_more"].as_bool().expect("has_more");
            let empty = msgs.is_empty();
            out.extend(msgs);
            if !more || empty {
                return out;
            }
        }
        panic!("sync of {conv} never ended");
    }

    /// `convs` and its `convs_result`.
    pub async fn convs(&mut self) -> Value {
        self.send(&json!({ "type": "convs" })).await;
        self.expect("convs_result", REPLY).await
    }

    /// The `convs_result` entry for `conv`, if any.
    pub async fn conv_summary(&mut self, conv: &str) -> Option<Value> {
        let r = self.convs().await;
        r["convs"]
            .as_array()
            .expect("convs")
            .iter()
            .find(|c| c["conv"] == conv)
            .cloned()
    }

    /// `ping` → `pong`; returns the pong.
    pub async fn ping(&mut self) -> Value {
        self.send(&json!({ "type": "ping" })).await;
        self.expect("pong", REPLY).await
    }

    /// Waits for the `msg` with (conv, seq).
    pub async fn expect_msg(&mut self, conv: &str, seq: u64) -> Value {
        let c = conv.to_string();
        self.expect_where(REPLY, &format!("msg {conv}#{seq}"), move |v| {
            frame_type(v) == "msg" && v["conv"] == c.as_str() && v["seq"] == seq
        })
        .await
    }

    /// Closes the connection politely (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

// ---------------------------------------------------------------------------
// Groups, timeline entries, metrics
// ---------------------------------------------------------------------------

/// `group:<gid>`.
pub fn group_conv(g: &str) -> String {
    format!("group:{g}")
}

impl Server {
    /// `PUT /v1/groups/{g}` with `name` (when given) and `members`; asserts
    /// 200 and returns the group.
    pub async fn put_group(&self, g: &str, name: Option<&str>, members: &[&str]) -> Value {
        let mut body = json!({ "members": members });
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        let (st, v) = self
            .request("PUT", &format!("/v1/groups/{g}"), Some(body))
            .await;
        assert_eq!(st, 200, "PUT group {g}: {v}");
        v
    }

    /// `POST /v1/groups/{g}/members` with `add` and `remove`.
    pub async fn change_members(&self, g: &str, add: &[&str], remove: &[&str]) -> (u16, Value) {
        self.request(
            "POST",
            &format!("/v1/groups/{g}/members"),
            Some(json!({ "add": add, "remove": remove })),
        )
        .await
    }

    /// `GET /metrics` (no key); asserts 200 and returns the text.
    pub async fn metrics_text(&self) -> String {
        let (st, v) = self.request_raw("GET", "/metrics", None, None).await;
        assert_eq!(st, 200, "GET /metrics: {v}");
        match v {
            Value::String(s) => s,
            other => panic!("GET /metrics is not Prometheus text: {other}"),
        }
    }
}

/// The value of the series `series` (name plus labels exactly as
/// exposed, e.g. `tern_connections{shard="0"}`) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k.trim() == series).then(|| v.trim().parse::<f64>().ok())?
    })
}

/// The sum of every series of the family `name` (any labels).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let k = k.trim();
            let base = k.split('{').next().unwrap_or(k);
            (base == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Whether `v` is a timeline entry (`msg` or `event`) of `conv`.
pub fn is_entry_of(v: &Value, conv: &str) -> bool {
    matches!(frame_type(v), "msg" | "event") && v["conv"] == conv
}

impl Client {
    /// The next `n` timeline entries (`msg`/`event`) of `conv`, in arrival
    /// order; every other frame stays in the inbox. Each entry must come
    /// within `each`.
    pub async fn entries(&mut self, conv: &str, n: usize, each: Duration) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let c = conv.to_string();
            let v = self
                .expect_where(
                    each,
                    &format!("entry {} of {n} in {conv}", i + 1),
                    move |v| is_entry_of(v, &c),
                )
                .await;
            out.push(v);
        }
        out
    }

    /// The `event` with (conv, seq).
    pub async fn expect_event(&mut self, conv: &str, seq: u64) -> Value {
        let c = conv.to_string();
        self.expect_where(REPLY, &format!("event {conv}#{seq}"), move |v| {
            frame_type(v) == "event" && v["conv"] == c.as_str() && v["seq"] == seq
        })
        .await
    }

    /// The first frame of type `ty` about `conv`.
    pub async fn expect_in(&mut self, ty: &str, conv: &str, t: Duration) -> Value {
        let (want, c) = (ty.to_string(), conv.to_string());
        self.expect_where(t, &format!("a {ty} frame of {conv}"), move |v| {
            frame_type(v) == want && v["conv"] == c.as_str()
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// Raw WebSocket over blocking TCP
// ---------------------------------------------------------------------------

/// WebSocket opcodes (RFC 6455 §5.2).
pub const OP_TEXT: u8 = 0x1;
/// See [`OP_TEXT`].
pub const OP_BINARY: u8 = 0x2;
/// See [`OP_TEXT`].
pub const OP_CLOSE: u8 = 0x8;
/// See [`OP_TEXT`].
pub const OP_PING: u8 = 0x9;

/// The RFC 6455 §1.3 example key and its accept value.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// See [`SAMPLE_KEY`].
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A handcrafted handshake and frames over a plain blocking socket.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// HTTP status of the handshake answer.
    pub status: u16,
    /// Response headers (names lower-cased).
    pub headers: Vec<(String, String)>,
}

/// Why [`RawWs::read_frame`] returned no frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// Nothing within the bound.
    Timeout,
    /// EOF or reset.
    Eof,
}

impl RawWs {
    /// A well-formed upgrade request for `/ws`, offering `protocols` if given.
    pub fn upgrade_request(addr: SocketAddr, protocols: Option<&str>) -> String {
        let mut r = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = protocols {
            r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        r.push_str("\r\n");
        r
    }

    /// Connects, writes `request` as is and reads the response head (bounded).
    pub fn handshake(addr: SocketAddr, request: &str) -> RawWs {
        let stream = TcpStream::connect_timeout(&addr, REPLY).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
            status: 0,
            headers: Vec::new(),
        };
        raw.stream
            .write_all(request.as_bytes())
            .expect("write handshake");
        let deadline = Instant::now() + REPLY;
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                raw.buf.len() < RAW_HEAD_BYTES_MAX,
                "handshake response head too long"
            );
            match raw.fill(deadline) {
                Ok(()) => {}
                // A refused handshake may just close; status 0 says so.
                Err(_) if raw.buf.is_empty() => return raw,
                Err(e) => panic!(
                    "handshake response cut short ({e:?}): {:?}",
                    String::from_utf8_lossy(&raw.buf)
                ),
            }
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        raw.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        raw.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                raw.headers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        raw
    }

    /// A standard upgrade offering `protocols`; asserts 101.
    pub fn connect(addr: SocketAddr, protocols: Option<&str>) -> RawWs {
        let raw = RawWs::handshake(addr, &RawWs::upgrade_request(addr, protocols));
        assert_eq!(raw.status, 101, "upgrade refused: {:?}", raw.headers);
        raw
    }

    /// A response header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), RawEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RawEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(RawEnd::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(RawEnd::Timeout)
            }
            Err(_) => Err(RawEnd::Eof),
        }
    }

    /// Writes one masked client frame with FIN set. Write errors are
    /// returned (the server may already have closed).
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f)
    }

    /// Sends a JSON value as a text frame.
    pub fn send_json(&mut self, v: &Value) {
        self.send_frame(OP_TEXT, &serde_json::to_vec(v).expect("json"))
            .expect("write frame");
    }

    /// Reads one server frame: (opcode, payload). Server frames must not be
    /// masked and (here) not fragmented.
    pub fn read_frame(&mut self, t: Duration) -> Result<(u8, Vec<u8>), RawEnd> {
        let deadline = Instant::now() + t;
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok((op, payload));
            }
            self.fill(deadline)?;
        }
    }

    /// The next data frame as JSON (text) or decoded rkyv (binary); pings
    /// are skipped. Panics on close, EOF or timeout.
    pub fn read_value(&mut self, t: Duration) -> Value {
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok((OP_TEXT, p)) => return decode(Subprotocol::Json, &p),
                Ok((OP_BINARY, p)) => return decode(Subprotocol::Rkyv, &p),
                Ok((OP_CLOSE, p)) => {
                    panic!("closed ({:?}) while waiting for a frame", close_code(&p))
                }
                Ok(_) => continue,
                Err(e) => panic!("no frame: {e:?}"),
            }
        }
    }

    /// Reads until a close frame and returns its code (`None`: EOF/reset
    /// without one). Data frames on the way are returned too.
    pub fn read_close(&mut self, t: Duration) -> (Option<u16>, Vec<(u8, Vec<u8>)>) {
        let deadline = Instant::now() + t;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok((OP_CLOSE, p)) => return (close_code(&p), seen),
                Ok(f) => seen.push(f),
                Err(RawEnd::Eof) => return (None, seen),
                Err(RawEnd::Timeout) => {
                    panic!("not closed within {t:?}; frames seen: {}", seen.len())
                }
            }
        }
    }
}

/// The code of a close frame payload.
fn close_code(p: &[u8]) -> Option<u16> {
    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

/// One complete unmasked frame at the start of `b`: (opcode, payload, bytes used).
fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    assert_eq!(
        b[0] & 0x80,
        0x80,
        "fragmented server frame (the raw helper does not reassemble)"
    );
    assert_eq!(
        b[1] & 0x80,
        0,
        "server frame is masked (RFC 6455 §5.1 forbids it)"
    );
    let (len, mut at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(l), 10)
        }
        n => (n as u64, 2),
    };
    assert!(len <= RAW_FRAME_BYTES_MAX, "server frame of {len} bytes");
    let end = at + len as usize;
    if b.len() < end {
        return None;
    }
    let payload = b[at..end].to_vec();
    at = end;
    Some((op, payload, at))
}
