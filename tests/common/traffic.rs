//! Traffic and bookkeeping for the reliability tests (crash soak, graceful
//! shutdown, storage faults).
//!
//! - [`Sender`]: one WebSocket client that keeps sending dm and group
//!   messages with unique cmids, pipelined, and records every answer. Unlike
//!   the harness [`Client`] it never panics when the server goes away
//!   (kill -9, SIGTERM): the run just ends and reports what was answered.
//! - [`Ledger`]: every acknowledged (conv, seq, cmid), checked against what
//!   the server returns (HTTP history and client `sync`).
//!
//! Included with `#[path = "common/traffic.rs"] mod traffic;` next to
//! `mod common;`.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tern_proto::Subprotocol;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{decode, encode, Client, Server, JSON_PROTO, REPLY, RKYV_PROTO};

/// How long a sender waits for a frame before checking its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Pushed entries per conversation between two cumulative `ack`s (PROTOCOL:
/// clients ack at least every 64 entries).
const ACK_EVERY: u64 = 32;
/// Entries per HTTP history page read back (the API's largest page).
const HISTORY_PAGE: u32 = 500;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A send the client means to make (or retry with the same cmid).
#[derive(Debug, Clone)]
pub struct Planned {
    /// Client message id, unique per sender.
    pub cmid: String,
    /// `user:<id>` or `group:<id>`.
    pub to: String,
    /// The text body.
    pub body: Value,
}

/// A `send_ack`, with what was sent.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The conversation the server put it in.
    pub conv: String,
    /// Its seq there.
    pub seq: u64,
    /// Server time.
    pub ts: u64,
    /// The sender.
    pub from: String,
    /// The sender's device.
    pub device: String,
    /// The cmid.
    pub cmid: String,
    /// The body sent.
    pub body: Value,
}

/// What one run of a [`Sender`] saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every `send_ack`, in arrival order.
    pub acked: Vec<Acked>,
    /// `send_err` frames, with the send they answer.
    pub errors: Vec<(Value, Planned)>,
    /// Sends with no answer when the connection ended, plus those never sent.
    pub unanswered: Vec<Planned>,
    /// How the connection ended: `Some(Some(code))` a close frame,
    /// `Some(None)` a TCP close without one, `None` still open (stopped).
    pub close: Option<Option<u16>>,
    /// Pushed `msg`/`event` frames received.
    pub pushed: u64,
    /// Pushed entries that arrived after a higher seq of their conversation
    /// and had not been seen before (PROTOCOL guarantee 2 forbids these).
    pub out_of_order: Vec<String>,
}

/// One sending client (user, device), kept across restarts so its cmids
/// stay unique and its unanswered sends can be retried.
pub struct Sender {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// Subprotocol of its connections.
    pub sp: Subprotocol,
    /// A token for (user, device); survives restarts (the key is on disk).
    pub token: String,
    /// Where its new sends go, in turn.
    pub targets: Vec<String>,
    /// Body size of new sends, in bytes of text.
    pub body_bytes: usize,
    /// Sends in flight at once.
    pub window: usize,
    /// Set `stop` at the first `send_err` (to observe a storage fault).
    pub stop_on_error: bool,
    next_n: u64,
    rng: u64,
}

impl Sender {
    /// A sender for (user, device); mints its token.
    pub async fn new(
        s: &Server,
        user: &str,
        device: &str,
        sp: Subprotocol,
        targets: Vec<String>,
        seed: u64,
    ) -> Sender {
        Sender {
            user: user.to_string(),
            device: device.to_string(),
            sp,
            token: s.token(user, Some(device)).await,
            targets,
            body_bytes: 24,
            window: 8,
            stop_on_error: false,
            next_n: 0,
            rng: seed | 1,
        }
    }

    /// The next new send: a fresh cmid, a target picked at random.
    pub fn plan(&mut self) -> Planned {
        self.next_n += 1;
        let i = (next_rand(&mut self.rng) % self.targets.len() as u64) as usize;
        let cmid = format!("{}.{}-{}", self.user, self.device, self.next_n);
        let mut text = format!("{cmid} ");
        while text.len() < self.body_bytes {
            text.push('x');
        }
        Planned {
            cmid,
            to: self.targets[i].clone(),
            body: json!(text),
        }
    }

    /// Connects, authenticates and sends (first `retry`, then new sends)
    /// until the connection ends, or `stop` is set and every retry was
    /// answered (new sends stop at once).
    /// Pushed entries are acked and checked for order.
    pub async fn run(&mut self, url: &str, retry: Vec<Planned>, stop: Arc<AtomicBool>) -> Outcome {
        let mut out = Outcome::default();
        let mut queue: VecDeque<Planned> = retry.into();
        let Some(mut ws) = self.connect(url).await else {
            out.close = Some(None);
            out.unanswered = queue.into();
            return out;
        };
        let mut in_flight: HashMap<String, Planned> = HashMap::new();
        let mut last_pushed: HashMap<String, u64> = HashMap::new();
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        let mut unacked_pushes: HashMap<String, u64> = HashMap::new();
        'run: loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && in_flight.is_empty() && queue.is_empty() {
                break;
            }
            while in_flight.len() < self.window {
                let p = match queue.pop_front() {
                    Some(p) => p,
                    None if !stopping => self.plan(),
                    None => break,
                };
                let frame = json!({ "type": "send", "cmid": p.cmid, "to": p.to, "kind": "text", "body": p.body });
                let sent = send(&mut ws, self.sp, &frame).await;
                in_flight.insert(p.cmid.clone(), p);
                if !sent {
                    out.close = Some(None);
                    break 'run;
                }
            }
            let v = match next(&mut ws, self.sp, POLL).await {
                Ok(v) => v,
                Err(Some(end)) => {
                    out.close = Some(end);
                    break;
                }
                Err(None) => continue,
            };
            match v["type"].as_str().unwrap_or("") {
                "send_ack" => {
                    let cmid = v["cmid"].as_str().unwrap_or("").to_string();
                    let p = in_flight
                        .remove(&cmid)
                        .unwrap_or_else(|| panic!("{}: ack for unknown cmid: {v}", self.user));
                    out.acked.push(Acked {
                        conv: v["conv"].as_str().expect("conv").to_string(),
                        seq: v["seq"].as_u64().expect("seq"),
                        ts: v["ts"].as_u64().expect("ts"),
                        from: self.user.clone(),
                        device: self.device.clone(),
                        cmid,
                        body: p.body,
                    });
                }
                "send_err" => {
                    let cmid = v["cmid"].as_str().unwrap_or("").to_string();
                    let p = in_flight
                        .remove(&cmid)
                        .unwrap_or_else(|| panic!("{}: error for unknown cmid: {v}", self.user));
                    out.errors.push((v, p));
                    if self.stop_on_error {
                        stop.store(true, Ordering::Release);
                    }
                }
                "msg" | "event" => {
                    out.pushed += 1;
                    let conv = v["conv"].as_str().unwrap_or("").to_string();
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let last = last_pushed.entry(conv.clone()).or_insert(0);
                    let fresh = seen.insert((conv.clone(), seq));
                    if seq < *last && fresh {
                        out.out_of_order.push(format!("{conv} {seq} after {last}"));
                    }
                    *last = (*last).max(seq);
                    let n = unacked_pushes.entry(conv.clone()).or_insert(0);
                    *n += 1;
                    if *n >= ACK_EVERY {
                        *n = 0;
                        let ack = json!({ "type": "ack", "conv": conv, "seq": *last });
                        if !send(&mut ws, self.sp, &ack).await {
                            out.close = Some(None);
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        out.unanswered = in_flight.into_values().chain(queue).collect();
        out
    }

    async fn connect(&self, url: &str) -> Option<Ws> {
        let mut req = url.into_client_request().ok()?;
        let proto = match self.sp {
            Subprotocol::Json => JSON_PROTO,
            Subprotocol::Rkyv => RKYV_PROTO,
        };
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(proto));
        let (mut ws, _) = tokio::time::timeout(REPLY, tokio_tungstenite::connect_async(req))
            .await
            .ok()?
            .ok()?;
        let auth = json!({ "type": "auth", "token": self.token, "device": self.device });
        if !send(&mut ws, self.sp, &auth).await {
            return None;
        }
        match next(&mut ws, self.sp, REPLY).await {
            Ok(v) if v["type"] == "auth_ok" => Some(ws),
            Ok(v) => panic!("{}: auth answered {v}", self.user),
            Err(_) => None,
        }
    }
}

/// splitmix64: a seeded, reproducible random stream without a dependency.
pub fn next_rand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from `var` if set (to replay a failure), else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

async fn send(ws: &mut Ws, sp: Subprotocol, v: &Value) -> bool {
    let bytes = encode(sp, v);
    let msg = match sp {
        Subprotocol::Json => Message::text(String::from_utf8(bytes).expect("utf8")),
        Subprotocol::Rkyv => Message::binary(bytes),
    };
    matches!(tokio::time::timeout(REPLY, ws.send(msg)).await, Ok(Ok(())))
}

/// The next data frame; `Err(None)` nothing within `t`, `Err(Some(end))`
/// the connection ended (with a close code or without).
async fn next(ws: &mut Ws, sp: Subprotocol, t: Duration) -> Result<Value, Option<Option<u16>>> {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(None),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(decode(sp, t.as_bytes())),
            Ok(Some(Ok(Message::Binary(b)))) => return Ok(decode(sp, &b)),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Err(Some(f.map(|f| u16::from(f.code))));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return Err(Some(None)),
        }
    }
}

/// Every entry of `conv` after `after`, via HTTP history pages.
async fn history_after(s: &Server, conv: &str, after: u64) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = after;
    loop {
        let page = s.history(conv, after, Some(HISTORY_PAGE)).await;
        let msgs = page["messages"].as_array().expect("messages").clone();
        if let Some(last) = msgs.last() {
            after = last["seq"].as_u64().expect("seq");
        }
        let more = page["has_more"].as_bool().expect("has_more");
        let empty = msgs.is_empty();
        out.extend(msgs);
        if !more || empty {
            return out;
        }
    }
}

/// A stored entry without `type` (HTTP history may omit it; every other
/// field must match what `sync` returns).
pub fn untyped(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    v
}

/// Everything the clients were told was stored.
#[derive(Default)]
pub struct Ledger {
    /// conv → seq → the acked send.
    pub acked: BTreeMap<String, BTreeMap<u64, Acked>>,
    /// (sender, cmid) → (conv, seq, ts) of its first ack.
    pub by_cmid: HashMap<(String, String), (String, u64, u64)>,
    /// Conversations to check besides those with acks (e.g. a group).
    pub extra_convs: Vec<String>,
}

/// What the server holds, as read back by [`Ledger::check_http`].
pub struct Stored {
    /// conv → (seq after which the entries start, the entries in seq order).
    pub history: BTreeMap<String, (u64, Vec<Value>)>,
    /// (sender, cmid) → (conv, seq, ts) of every stored message.
    pub by_cmid: HashMap<(String, String), (String, u64, u64)>,
    /// Entries read.
    pub n_entries: usize,
}

impl Ledger {
    /// Adds one ack. An ack for a (sender, cmid) acked before must repeat the
    /// first (exactly-once effect); a (conv, seq) is never acked for two sends.
    pub fn record(&mut self, a: Acked) {
        let key = (a.from.clone(), a.cmid.clone());
        let here = (a.conv.clone(), a.seq, a.ts);
        if let Some(first) = self.by_cmid.get(&key) {
            assert_eq!(first, &here, "{key:?} acked twice with different answers");
            return;
        }
        self.by_cmid.insert(key, here);
        let prev = self
            .acked
            .entry(a.conv.clone())
            .or_default()
            .insert(a.seq, a.clone());
        if let Some(p) = prev {
            panic!(
                "{} seq {} acked for two sends: {} and {}",
                a.conv, a.seq, p.cmid, a.cmid
            );
        }
    }

    /// Acks recorded.
    pub fn len(&self) -> usize {
        self.by_cmid.len()
    }

    fn convs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.acked.keys().cloned().collect();
        for c in &self.extra_convs {
            if !v.contains(c) {
                v.push(c.clone());
            }
        }
        v
    }

    /// Reads every conversation back over HTTP and checks: seqs are 1..=n
    /// (no gap, no reuse), no (sender, cmid) is stored twice, and every acked
    /// message is there at its seq with the acked ts and the sent body.
    pub async fn check_http(&self, s: &Server, when: &str) -> Stored {
        self.check_http_after(s, when, &HashMap::new()).await
    }

    /// [`Ledger::check_http`] for the entries after `after[conv]` (0 when
    /// absent) only: a soak checks each cycle's new entries, and everything
    /// now and then.
    pub async fn check_http_after(
        &self,
        s: &Server,
        when: &str,
        after: &HashMap<String, u64>,
    ) -> Stored {
        let mut stored = Stored {
            history: BTreeMap::new(),
            by_cmid: HashMap::new(),
            n_entries: 0,
        };
        for conv in self.convs() {
            let from = after.get(&conv).copied().unwrap_or(0);
            let h = history_after(s, &conv, from).await;
            for (i, m) in h.iter().enumerate() {
                assert_eq!(
                    m["seq"].as_u64(),
                    Some(from + i as u64 + 1),
                    "{when}: {conv}: seq gap or reuse at entry {i}: {m}"
                );
                if m.get("cmid").is_some() {
                    let key = (
                        m["from"].as_str().expect("from").to_string(),
                        m["cmid"].as_str().expect("cmid").to_string(),
                    );
                    let here = (
                        conv.clone(),
                        m["seq"].as_u64().expect("seq"),
                        m["ts"].as_u64().expect("ts"),
                    );
                    if let Some(first) = stored.by_cmid.insert(key.clone(), here) {
                        panic!("{when}: {key:?} stored twice: {first:?} and {m}");
                    }
                }
            }
            if let Some(acked) = self.acked.get(&conv) {
                for (seq, a) in acked.range(from + 1..) {
                    let m = h.get((*seq - from) as usize - 1).unwrap_or_else(|| {
                        panic!(
                            "{when}: acked {conv} seq {seq} ({}) lost; stored {}",
                            a.cmid,
                            from + h.len() as u64
                        )
                    });
                    let want = json!({
                        "conv": conv, "seq": seq, "from": a.from, "device": a.device,
                        "cmid": a.cmid, "kind": "text", "body": a.body, "ts": a.ts,
                    });
                    assert_eq!(untyped(m), want, "{when}: acked entry changed");
                }
            }
            stored.n_entries += h.len();
            stored.history.insert(conv, (from, h));
        }
        stored
    }

    /// Checks, over `c` (logged in as `user`), that `convs` reports each
    /// conversation's head and `sync` returns exactly the stored history in
    /// order (the entries HTTP returned, which [`Ledger::check_http`]
    /// matched against the acks). Returns the entries synced.
    pub async fn check_sync(&self, c: &mut Client, user: &str, stored: &Stored) -> usize {
        let convs = c.convs().await;
        let heads: HashMap<String, u64> = convs["convs"]
            .as_array()
            .expect("convs")
            .iter()
            .map(|v| {
                (
                    v["conv"].as_str().expect("conv").to_string(),
                    v["max_seq"].as_u64().expect("max_seq"),
                )
            })
            .collect();
        let mut n = 0;
        for (conv, (from, h)) in &stored.history {
            let member = conv.starts_with("group:")
                || conv.trim_start_matches("dm:").split(':').any(|u| u == user);
            let head = from + h.len() as u64;
            if !member || head == 0 {
                continue;
            }
            assert_eq!(
                heads.get(conv).copied(),
                Some(head),
                "{user}: convs max_seq of {conv}"
            );
            let got = c.sync_all(conv, *from).await;
            let got: Vec<Value> = got.iter().map(untyped).collect();
            let want: Vec<Value> = h.iter().map(untyped).collect();
            assert_eq!(got.len(), want.len(), "{user}: sync of {conv} length");
            assert!(got == want, "{user}: sync of {conv} differs from history");
            n += got.len();
        }
        n
    }
}
