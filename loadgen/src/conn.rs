//! One WebSocket connection: connect from a source address, handshake,
//! `auth`, then send and receive as its role says, following the run's
//! phases, and close.
//!
//! Memory per connection is kept small: reads go into the executor's
//! scratch buffer and only a partial frame is copied out; the send and
//! receive state exist only for connections that send or receive.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use tern_proto::{ClientFrame, ErrorCode, Kind, RawJson, ServerFrame, Subprotocol};

use crate::exec::{sleep_until, Local};
use crate::plan::{phase, Control, Live, Plan};
use crate::stats::{bump, record, ExecStats};
use crate::track::{self, ConvTrack, SenderOrder, SeqVerdict};
use crate::ws::{self, MaskRng, OpCode};

/// How long a connection waits for the server's Close after sending its
/// own before dropping the socket.
const CLOSE_WAIT_US: u64 = 1_000_000;
/// Output buffer capacity kept between writes; a larger one (after a burst)
/// is freed.
const OUT_KEEP_BYTES: usize = 16 * 1024;

/// Why a connection ended early (a report key).
type Why = &'static str;

/// What happened while waiting.
enum Wake {
    Read(std::io::Result<usize>),
    Timer,
    Phase,
}

/// Reads into the executor's scratch buffer. The buffer is borrowed only
/// inside the poll; the caller processes `scratch[..n]` before its next
/// await, so no other connection can overwrite it in between.
async fn read_scratch(
    stream: &mut TcpStream,
    scratch: &RefCell<Vec<u8>>,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let Ok(mut s) = scratch.try_borrow_mut() else {
            return std::task::Poll::Ready(Err(std::io::Error::other("scratch buffer busy")));
        };
        Pin::new(&mut *stream).poll_read(cx, &mut s[..])
    })
    .await
}

/// Waits for bytes (on the executor's readiness set), the deadline (µs on
/// the run clock) or a phase change.
async fn wait(
    fd: RawFd,
    local: &Local,
    slot: usize,
    seen_phase: u8,
    deadline_us: Option<u64>,
) -> Wake {
    let read = async { Wake::Read(local.ready.read(fd, slot, &local.scratch).await) };
    let timer = async {
        match deadline_us {
            Some(t) => sleep_until(&local.ctl, t).await,
            None => std::future::pending::<()>().await,
        }
        Wake::Timer
    };
    let phase = async {
        local.phase.changed(slot, seen_phase).await;
        Wake::Phase
    };
    futures_lite::future::or(read, futures_lite::future::or(timer, phase)).await
}

/// Send side of a connection.
struct Sender {
    /// Index in the acked counters, and in every marker it sends.
    idx: u32,
    to: String,
    next_counter: u64,
    /// (counter, send time µs), in send order.
    in_flight: VecDeque<(u64, u64)>,
    /// µs between sends; 0: closed loop.
    interval_us: u64,
    /// Next scheduled send (fixed rate); 0 until the run starts.
    next_at_us: u64,
    /// The run's budget is spent: send nothing more.
    out_of_budget: bool,
    reported_done: bool,
}

/// Receive side of a connection.
#[derive(Default)]
struct Receiver {
    convs: Vec<ConvTrack>,
    order: SenderOrder,
    received: u64,
    reported_done: bool,
}

impl Receiver {
    fn conv(&mut self, conv: &str) -> &mut ConvTrack {
        let i = match self.convs.iter().position(|c| &*c.conv == conv) {
            Some(i) => i,
            None => {
                self.convs.push(ConvTrack::new(conv));
                self.convs.len() - 1
            }
        };
        &mut self.convs[i]
    }
}

/// What frame handling needs from the executor (all borrowed for one
/// synchronous stretch).
struct Cx<'a> {
    plan: &'a Plan,
    ctl: &'a Control,
    live: &'a Live,
    stats: &'a mut ExecStats,
    enc: &'a mut Vec<u8>,
    now_us: u64,
    idx: usize,
}

/// One connection's state.
struct Conn {
    stream: TcpStream,
    sp: Subprotocol,
    /// Bytes of an incomplete frame (empty, without capacity, when idle).
    partial: Vec<u8>,
    /// A fragmented message being reassembled.
    frag: Option<Vec<u8>>,
    out: Vec<u8>,
    rng: MaskRng,
    authed: bool,
    /// The server's Close arrived (with its code).
    server_close: Option<Option<u16>>,
    close_sent: bool,
    /// Why the connection must end, once known.
    failed: Option<Why>,
    sender: Option<Box<Sender>>,
    recv: Option<Box<Receiver>>,
}

impl Conn {
    /// Appends a protocol frame as one masked WebSocket frame.
    fn queue(&mut self, f: &ClientFrame, enc: &mut Vec<u8>) {
        enc.clear();
        tern_proto::encode_client_into(self.sp, f, enc);
        let op = if self.sp.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let mask = self.rng.mask();
        ws::encode_frame(op, enc, mask, &mut self.out);
    }

    /// Handles bytes just read.
    fn on_bytes(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        if self.partial.is_empty() {
            let used = self.on_frames(data, cx);
            if used < data.len() && self.failed.is_none() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            self.partial.extend_from_slice(data);
            let buf = std::mem::take(&mut self.partial);
            let used = self.on_frames(&buf, cx);
            if used < buf.len() && self.failed.is_none() {
                self.partial = buf;
                self.partial.drain(..used);
            }
        }
    }

    /// Handles the whole frames at the start of `buf`; returns the bytes
    /// they took.
    fn on_frames(&mut self, buf: &[u8], cx: &mut Cx<'_>) -> usize {
        let mut at = 0;
        while self.failed.is_none() && self.server_close.is_none() {
            match ws::decode_header(&buf[at..]) {
                Ok(Some(h)) => {
                    let payload = &buf[at + h.header_len..at + h.frame_len()];
                    self.on_frame(h, payload, cx);
                    at += h.frame_len();
                }
                Ok(None) => break,
                Err(_) => self.failed = Some("ws_protocol"),
            }
        }
        at
    }

    fn on_frame(&mut self, h: ws::Header, payload: &[u8], cx: &mut Cx<'_>) {
        match h.opcode {
            OpCode::Ping => {
                let mask = self.rng.mask();
                ws::encode_frame(OpCode::Pong, payload, mask, &mut self.out);
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let code = ws::close_code(payload);
                self.server_close = Some(code);
                let key = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                bump(&mut cx.stats.server_closes, &key);
                if !self.close_sent {
                    // Echo the code, as RFC 6455 §5.5.1 asks.
                    let mask = self.rng.mask();
                    ws::encode_close(code.unwrap_or(ws::CLOSE_NORMAL), mask, &mut self.out);
                    self.close_sent = true;
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.frag.is_some() {
                    self.failed = Some("ws_protocol");
                } else if h.fin {
                    self.on_message(payload, cx);
                } else {
                    self.frag = Some(payload.to_vec());
                }
            }
            OpCode::Continuation => {
                let Some(buf) = self.frag.as_mut() else {
                    self.failed = Some("ws_protocol");
                    return;
                };
                if buf.len() + payload.len() > ws::SERVER_PAYLOAD_MAX {
                    self.failed = Some("ws_too_large");
                    return;
                }
                buf.extend_from_slice(payload);
                if h.fin {
                    let whole = self.frag.take().unwrap_or_default();
                    self.on_message(&whole, cx);
                }
            }
        }
    }

    fn on_message(&mut self, payload: &[u8], cx: &mut Cx<'_>) {
        let frame = match tern_proto::decode_server(self.sp, payload) {
            Ok(f) => f,
            Err(_) => {
                cx.stats.decode_errors += 1;
                cx.live
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        match frame {
            ServerFrame::AuthOk { .. } => self.authed = true,
            ServerFrame::SendAck { cmid, .. } => self.on_send_answer(&cmid, None, cx),
            ServerFrame::SendErr { cmid, code, .. } => self.on_send_answer(&cmid, Some(code), cx),
            ServerFrame::Msg(m) => {
                if let Some(r) = self.recv.as_deref_mut() {
                    on_pushed(r, &m.conv, m.seq, Some(m.body.as_str()), cx);
                }
            }
            ServerFrame::Event(e) => {
                if let Some(r) = self.recv.as_deref_mut() {
                    on_pushed(r, &e.conv, e.seq, None, cx);
                }
            }
            ServerFrame::Notice { .. } => cx.stats.notices += 1,
            ServerFrame::Kicked { .. } => self.failed = Some("kicked"),
            ServerFrame::Error { code, .. } => {
                if !self.authed && code == ErrorCode::Unauthorized {
                    self.failed = Some("unauthorized");
                }
                bump(&mut cx.stats.error_frames, code.as_str());
                cx.live
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ServerFrame::Receipt { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::SyncResult { .. }
            | ServerFrame::ConvsResult { .. } => {}
        }
    }

    /// A `send_ack` (`err: None`) or `send_err` for `cmid`.
    fn on_send_answer(&mut self, cmid: &str, err: Option<ErrorCode>, cx: &mut Cx<'_>) {
        let Some(s) = self.sender.as_deref_mut() else {
            return;
        };
        let Some(counter) = track::cmid_counter(cmid) else {
            return;
        };
        // Answers come in send order, so this is nearly always the front.
        let Some(pos) = s.in_flight.iter().position(|&(c, _)| c == counter) else {
            return;
        };
        let Some((_, sent_us)) = s.in_flight.remove(pos) else {
            return;
        };
        use std::sync::atomic::Ordering::Relaxed;
        match err {
            None => {
                let us = cx.now_us.saturating_sub(sent_us);
                record(&mut cx.stats.ack_us, us);
                cx.stats.ack_timeline.record(sent_us, us);
                cx.stats.acked += 1;
                cx.live.acked.fetch_add(1, Relaxed);
                if let Some(a) = cx.ctl.acked.get(s.idx as usize) {
                    a.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            }
            Some(code) => {
                bump(&mut cx.stats.send_errors, code.as_str());
                cx.live.errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sends what the schedule allows now (phase `RUN` only).
    fn send_due(&mut self, cx: &mut Cx<'_>) {
        let Some(mut s) = self.sender.take() else {
            return;
        };
        if s.interval_us > 0 && s.next_at_us == 0 {
            // Spread the senders' first sends over one interval.
            let start = cx
                .ctl
                .run_start_us
                .load(std::sync::atomic::Ordering::Acquire);
            s.next_at_us = start + (u64::from(s.idx) * 7919) % s.interval_us;
        }
        while !s.out_of_budget && s.in_flight.len() < cx.plan.window {
            if s.interval_us > 0 {
                if cx.now_us < s.next_at_us {
                    break;
                }
                let lag = cx.now_us - s.next_at_us;
                cx.stats.send_lag_us_max = cx.stats.send_lag_us_max.max(lag);
            }
            if !cx.ctl.take_budget() {
                s.out_of_budget = true;
                break;
            }
            let counter = s.next_counter;
            s.next_counter += 1;
            let body = track::marker_body(cx.plan.run_id, s.idx, counter, cx.now_us);
            // The marker is a JSON string by construction.
            let Ok(body) = RawJson::from_text(body) else {
                s.out_of_budget = true;
                break;
            };
            let f = ClientFrame::Send {
                cmid: track::cmid(cx.plan.run_id, s.idx, counter),
                to: s.to.clone(),
                kind: Kind::Text,
                body,
            };
            self.queue(&f, cx.enc);
            s.in_flight.push_back((counter, cx.now_us));
            cx.stats.sent += 1;
            cx.live
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if s.interval_us > 0 {
                s.next_at_us += s.interval_us;
            }
        }
        self.sender = Some(s);
    }

    /// Queues the acks that are due (all of them with `force`).
    fn ack_due(&mut self, cx: &mut Cx<'_>, force: bool) {
        let Some(mut r) = self.recv.take() else {
            return;
        };
        for c in &mut r.convs {
            if force || c.ack_due(cx.now_us) {
                if let Some(seq) = c.take_ack() {
                    let f = ClientFrame::Ack {
                        conv: c.conv.to_string(),
                        seq,
                    };
                    self.queue(&f, cx.enc);
                    cx.stats.acks_sent += 1;
                }
            }
        }
        self.recv = Some(r);
    }

    /// The earliest time something is due: a scheduled send or an ack.
    fn deadline_us(&self, phase_now: u8, window: usize) -> Option<u64> {
        let send = self.sender.as_deref().and_then(|s| {
            (phase_now == phase::RUN
                && s.interval_us > 0
                && !s.out_of_budget
                && s.in_flight.len() < window)
                .then_some(s.next_at_us)
        });
        let ack = self
            .recv
            .as_deref()
            .and_then(|r| r.convs.iter().filter_map(ConvTrack::ack_deadline_us).min());
        match (send, ack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes what is queued.
    async fn flush(&mut self) -> Result<(), Why> {
        if self.out.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > OUT_KEEP_BYTES || (self.sender.is_none() && self.recv.is_none()) {
            self.out = Vec::new();
        }
        res.map_err(|_| "io")
    }
}

/// A pushed `msg` (with its body) or `event` for a receiver.
fn on_pushed(r: &mut Receiver, conv: &str, seq: u64, body: Option<&str>, cx: &mut Cx<'_>) {
    use std::sync::atomic::Ordering::Relaxed;
    let verdict = r.conv(conv).push(seq, cx.now_us);
    match verdict {
        SeqVerdict::New => {}
        SeqVerdict::Dup => {
            cx.stats.dups += 1;
            return;
        }
        SeqVerdict::OutOfOrder => {
            cx.stats.order_violations += 1;
            cx.live.errors.fetch_add(1, Relaxed);
        }
    }
    let Some(body) = body else {
        return;
    };
    let Some(m) = track::parse_marker(body, cx.plan.run_id) else {
        cx.stats.foreign += 1;
        return;
    };
    if !r.order.push(m.sender, m.counter) {
        cx.stats.order_violations += 1;
        cx.live.errors.fetch_add(1, Relaxed);
    }
    r.received += 1;
    if let Some(a) = cx.ctl.received.get(cx.idx) {
        a.store(r.received, Relaxed);
    }
    cx.stats.delivered += 1;
    cx.live.delivered.fetch_add(1, Relaxed);
    let us = cx.now_us.saturating_sub(m.send_us);
    record(&mut cx.stats.deliver_us, us);
    cx.stats.deliver_timeline.record(m.send_us, us);
}

/// Runs `f` with the frame-handling context of `local`.
fn with_cx<R>(local: &Local, idx: usize, f: impl FnOnce(&mut Cx<'_>) -> R) -> R {
    let mut stats = local.stats.borrow_mut();
    let mut enc = local.enc.borrow_mut();
    let mut cx = Cx {
        plan: &local.plan,
        ctl: &local.ctl,
        live: local.live(),
        stats: &mut stats,
        enc: &mut enc,
        now_us: local.ctl.now_us(),
        idx,
    };
    f(&mut cx)
}

/// Processes `n` bytes just read into the scratch buffer.
fn process_read(local: &Local, conn: &mut Conn, idx: usize, n: usize) {
    let scratch = local.scratch.borrow();
    let data = &scratch[..n.min(scratch.len())];
    with_cx(local, idx, |cx| conn.on_bytes(data, cx));
}

/// Connect, handshake, `auth`; `Ok` once `auth_ok` arrived.
async fn connect_and_auth(local: &Local, idx: usize) -> Result<Conn, Why> {
    let plan = &local.plan;
    let source = match plan.sources.len() {
        0 => None,
        n => Some(plan.sources[idx % n]),
    };
    let fd = crate::net::start_connect(source, plan.ws).map_err(|e| match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => "too_many_open_files",
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => "no_source_port",
        _ => "connect",
    })?;
    // SAFETY: `start_connect` returned a fresh socket fd that nothing else
    // owns; the stream takes ownership and closes it on drop.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let seed = (u64::from(plan.run_id) << 32) ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = MaskRng::new(seed ^ local.ctl.now_us());
    let key = ws::new_key(rng.bytes16());
    let host = plan.ws.to_string();
    let req = ws::handshake_request(&host, "/ws", &key, Some(plan.sp.name()));
    // The first write waits for the connect to finish.
    stream
        .write_all(&req)
        .await
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => "connect_refused",
            _ => "connect",
        })?;
    let mut head: Vec<u8> = Vec::new();
    let ok = loop {
        let n = read_scratch(&mut stream, &local.scratch)
            .await
            .map_err(|_| "handshake_io")?;
        if n == 0 {
            return Err("handshake_eof");
        }
        head.extend_from_slice(&local.scratch.borrow()[..n]);
        match ws::parse_handshake_response(&head, &key) {
            Ok(Some(ok)) => break ok,
            Ok(None) => {}
            Err(_) => return Err("handshake"),
        }
    };
    let sp_ok = match (plan.sp, ok.subprotocol.as_deref()) {
        (Subprotocol::Rkyv, Some(n)) => n == tern_proto::RKYV_NAME,
        (Subprotocol::Rkyv, None) => false,
        (Subprotocol::Json, n) => n.is_none() || n == Some(tern_proto::JSON_NAME),
    };
    if !sp_ok {
        return Err("subprotocol");
    }
    let cp = &plan.conns[idx];
    let sender = cp.send_to.as_ref().map(|to| {
        let rate = plan.rate_per_sender;
        Box::new(Sender {
            idx: idx as u32,
            to: to.clone(),
            next_counter: 1,
            in_flight: VecDeque::new(),
            interval_us: if rate > 0.0 {
                (1e6 / rate).max(1.0) as u64
            } else {
                0
            },
            next_at_us: 0,
            out_of_budget: false,
            reported_done: false,
        })
    });
    let mut conn = Conn {
        stream,
        sp: plan.sp,
        partial: head.split_off(ok.consumed),
        frag: None,
        out: Vec::new(),
        rng,
        authed: false,
        server_close: None,
        close_sent: false,
        failed: None,
        sender,
        recv: cp.receiver.then(Box::<Receiver>::default),
    };
    drop(head);
    with_cx(local, idx, |cx| {
        let auth = ClientFrame::Auth {
            token: cp.token.clone(),
            device: plan.device.clone(),
        };
        conn.queue(&auth, cx.enc);
        if conn.recv.is_some() {
            if let Some(conv) = &plan.activate_conv {
                // Pipelined after `auth` (kept by the server until auth_ok).
                let sync = ClientFrame::Sync {
                    conv: conv.clone(),
                    after: 0,
                    limit: Some(1),
                };
                conn.queue(&sync, cx.enc);
            }
        }
    });
    conn.flush().await.map_err(|_| "auth_io")?;
    if !conn.partial.is_empty() {
        let bytes = std::mem::take(&mut conn.partial);
        with_cx(local, idx, |cx| conn.on_bytes(&bytes, cx));
    }
    while !conn.authed {
        if let Some(why) = conn.failed {
            return Err(why);
        }
        if conn.server_close.is_some() {
            return Err("closed_before_auth");
        }
        let n = read_scratch(&mut conn.stream, &local.scratch)
            .await
            .map_err(|_| "auth_io")?;
        if n == 0 {
            return Err("closed_before_auth");
        }
        process_read(local, &mut conn, idx, n);
        conn.flush().await.map_err(|_| "auth_io")?;
    }
    Ok(conn)
}

/// The task of connection `idx` (`slot` is its index among this
/// executor's tasks).
pub async fn conn_task(local: Rc<Local>, idx: usize, slot: usize) {
    use std::sync::atomic::Ordering::{AcqRel, Relaxed};
    let ctl = local.ctl.clone();
    let t0 = ctl.now_us();
    let timeout_us = local.plan.connect_timeout.as_micros() as u64;
    let attempt = futures_lite::future::or(connect_and_auth(&local, idx), async {
        sleep_until(&ctl, t0 + timeout_us).await;
        Err("timeout")
    })
    .await;
    let cp = &local.plan.conns[idx];
    let mut conn = match attempt {
        Ok(c) => c,
        Err(why) => {
            bump(&mut local.stats.borrow_mut().connect_failures, why);
            local.live().errors.fetch_add(1, Relaxed);
            ctl.settled.fetch_add(1, AcqRel);
            if cp.send_to.is_some() {
                ctl.senders_done.fetch_add(1, AcqRel);
            }
            if cp.receiver {
                ctl.receivers_done.fetch_add(1, AcqRel);
            }
            return;
        }
    };
    {
        let mut st = local.stats.borrow_mut();
        record(&mut st.connect_us, ctl.now_us() - t0);
        st.authed += 1;
    }
    local.live().open.fetch_add(1, Relaxed);
    ctl.authed.fetch_add(1, AcqRel);
    ctl.settled.fetch_add(1, AcqRel);

    let end = run_conn(&local, &mut conn, idx, slot).await;
    if let Err(why) = end {
        bump(&mut local.stats.borrow_mut().drops, why);
        local.live().errors.fetch_add(1, Relaxed);
    }
    if let Some(s) = conn.sender.as_deref() {
        if !s.reported_done {
            ctl.senders_done.fetch_add(1, AcqRel);
        }
    }
    if let Some(r) = conn.recv.as_deref() {
        if !r.reported_done {
            ctl.receivers_done.fetch_add(1, AcqRel);
        }
    }
    local.live().open.fetch_sub(1, Relaxed);
}

/// The connection's life after `auth_ok`, until the `CLOSE` phase or an
/// error.
async fn run_conn(local: &Local, conn: &mut Conn, idx: usize, slot: usize) -> Result<(), Why> {
    use std::sync::atomic::Ordering::AcqRel;
    let ctl = &local.ctl;
    let window = local.plan.window;
    local
        .ready
        .register(conn.stream.as_raw_fd(), slot)
        .map_err(|_| "epoll")?;
    loop {
        let p = local.phase.get();
        with_cx(local, idx, |cx| {
            if p == phase::RUN {
                conn.send_due(cx);
            }
            conn.ack_due(cx, p >= phase::CLOSE);
            if p >= phase::STOP {
                if let Some(s) = conn.sender.as_deref_mut() {
                    if !s.reported_done && (s.in_flight.is_empty() || p >= phase::CLOSE) {
                        s.reported_done = true;
                        ctl.senders_done.fetch_add(1, AcqRel);
                    }
                }
            }
            if p >= phase::DRAIN {
                if let Some(r) = conn.recv.as_deref_mut() {
                    let expected = ctl.expected(cx.plan.expect, idx);
                    if !r.reported_done && (r.received >= expected || p >= phase::CLOSE) {
                        r.reported_done = true;
                        ctl.receivers_done.fetch_add(1, AcqRel);
                    }
                }
            }
        });
        if p >= phase::CLOSE {
            return close(local, conn, idx, slot).await;
        }
        conn.flush().await?;
        if let Some(why) = conn.failed {
            return Err(why);
        }
        if conn.server_close.is_some() {
            return Err("server_close");
        }
        let deadline = conn.deadline_us(p, window);
        match wait(conn.stream.as_raw_fd(), local, slot, p, deadline).await {
            Wake::Read(Ok(0)) => return Err("eof"),
            Wake::Read(Ok(n)) => process_read(local, conn, idx, n),
            Wake::Read(Err(_)) => return Err("io"),
            Wake::Timer | Wake::Phase => {}
        }
    }
}

/// Acks what is pending, sends Close and waits a little for the server's.
async fn close(local: &Local, conn: &mut Conn, idx: usize, slot: usize) -> Result<(), Why> {
    if !conn.close_sent {
        let mask = conn.rng.mask();
        ws::encode_close(ws::CLOSE_NORMAL, mask, &mut conn.out);
        conn.close_sent = true;
    }
    // The peer may already be gone; nothing more to learn then.
    if conn.flush().await.is_err() {
        return Ok(());
    }
    let until = local.ctl.now_us() + CLOSE_WAIT_US;
    while conn.server_close.is_none() && conn.failed.is_none() && local.ctl.now_us() < until {
        let fd = conn.stream.as_raw_fd();
        let read = async { Some(local.ready.read(fd, slot, &local.scratch).await) };
        let timer = async {
            sleep_until(&local.ctl, until).await;
            None
        };
        match futures_lite::future::or(read, timer).await {
            Some(Ok(n)) if n > 0 => process_read(local, conn, idx, n),
            _ => break,
        }
    }
    Ok(())
}
