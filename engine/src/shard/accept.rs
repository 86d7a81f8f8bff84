//! Accept, WebSocket handshake and `auth`, then hand the socket to its home
//! shard. Work per pending connection is bounded in bytes
//! ([`AUTH_PHASE_BYTES_MAX`]) and time ([`AUTH_TIMEOUT_MS`]); pending
//! handshakes per shard by [`HANDSHAKES_PENDING_MAX`], accepts per pass by
//! [`ACCEPTS_PER_PASS_MAX`]. Every accepted socket first takes a permit of
//! the connection limits (`conn_limit`), or gets a 503 and is closed.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};
use tern_proto::{
    decode_client, ClientFrame, DeviceId, ErrorCode, ServerFrame, Subprotocol, UserId,
};

use super::sockio::{self, recv_nb, would_block, write_all};
use super::{close_code, LocalNotify, Shard};
use crate::conn_limit::{ConnPermit, Refused};
use crate::encoded::ws_frame;
use crate::limits::{
    ACCEPTS_PER_PASS_MAX, AUTH_PHASE_BYTES_MAX, AUTH_TIMEOUT_MS, HANDSHAKES_PENDING_MAX,
    REFUSED_RETRY_AFTER_S,
};
use crate::mesh::{home_shard, Adopt, ShardMsg};
use crate::shared::now_ms;
use crate::ws::codec::{close_frame, encode_frame, parse_client_frame, Assembler, Message, OpCode};
use crate::ws::handshake::{accept_response, error_response, parse_request};

pub(super) async fn run(shard: Rc<Shard>, listener: TcpListener) {
    let pending = Rc::new(Pending::default());
    let mut accepted_this_pass = 0usize;
    loop {
        if shard.shutting_down.get() {
            return;
        }
        // Bounded handshake work: past the cap, leave new connections in
        // the kernel's backlog until a pending handshake ends.
        while pending.count.get() >= HANDSHAKES_PENDING_MAX {
            pending.freed.wait().await;
            if shard.shutting_down.get() {
                return;
            }
        }
        // Bounded accepts per pass: a storm must not keep this task from
        // yielding to the connections already served.
        if accepted_this_pass >= ACCEPTS_PER_PASS_MAX {
            accepted_this_pass = 0;
            YieldNow(false).await;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                if shard.shutting_down.get() {
                    return;
                }
                accepted_this_pass += 1;
                let permit = match shard.shared.conn_limit.try_acquire(peer.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        refuse(&stream, why);
                        continue; // dropping the stream closes it
                    }
                };
                pending.count.set(pending.count.get() + 1);
                let guard = PendingGuard(pending.clone());
                let shard = shard.clone();
                monoio::spawn(async move {
                    let _guard = guard;
                    handshake(shard, stream, permit).await
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = shard.idx, "accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Handshakes in progress on this shard, and a wakeup for the acceptor
/// when one ends.
#[derive(Default)]
struct Pending {
    count: Cell<usize>,
    freed: LocalNotify,
}

/// Counts one pending handshake; dropping it (however the handshake task
/// ends) frees the slot.
struct PendingGuard(Rc<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get().saturating_sub(1));
        self.0.freed.notify();
    }
}

/// Yields once to the other tasks of the shard (monoio has no public
/// `yield_now`): wake ourselves, return pending once.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Answer a connection over the limits: a best-effort `503` with
/// `Retry-After` written without waiting (the socket is fresh, its send
/// buffer empty), then close. No bytes are read and no task is spawned, so a
/// flood past the limits costs one accept and one write each.
fn refuse(stream: &TcpStream, why: Refused) {
    tracing::debug!("connection refused: {why}");
    let body = why.to_string();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {REFUSED_RETRY_AFTER_S}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let fd = stream.as_raw_fd();
    let _ = sockio::send_nb(fd, resp.as_bytes());
    // Half-close so the answer is not lost to a reset when the request is
    // still unread at close.
    sockio::shutdown(fd, libc::SHUT_WR);
}

struct Authed {
    user: UserId,
    device: DeviceId,
    sp: Subprotocol,
    leftover: Vec<u8>,
}

async fn handshake(shard: Rc<Shard>, stream: TcpStream, permit: ConnPermit) {
    let fd = stream.as_raw_fd();
    let upgraded: Cell<Option<Subprotocol>> = Cell::new(None);
    let r = monoio::time::timeout(
        Duration::from_millis(AUTH_TIMEOUT_MS),
        auth_phase(&shard, &stream, fd, &upgraded),
    )
    .await;
    let authed = match r {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(_elapsed) => {
            if let Some(sp) = upgraded.get() {
                let mut out = ws_frame(sp, &unauthorized("no auth within 5 s")).to_vec();
                out.extend_from_slice(&close_frame(close_code::UNAUTHORIZED, "auth timeout"));
                let _ =
                    monoio::time::timeout(Duration::from_millis(200), write_all(&stream, fd, &out))
                        .await;
            }
            return;
        }
    };
    let home = home_shard(&authed.user, shard.n_shards());
    if home == shard.idx {
        shard.adopt(
            sockio::detach(stream),
            authed.user,
            authed.device,
            authed.sp,
            authed.leftover,
            permit,
        );
        return;
    }
    // Move the socket: an fd travels (see `sockio::detach`).
    let dup = std::os::fd::IntoRawFd::into_raw_fd(sockio::detach(stream));
    shard.mesh_send(
        home,
        ShardMsg::Adopt(Adopt {
            fd: dup,
            user: authed.user,
            device: authed.device,
            sp: authed.sp,
            leftover: authed.leftover,
            permit,
        }),
    );
}

fn unauthorized(msg: &str) -> ServerFrame {
    ServerFrame::Error {
        code: ErrorCode::Unauthorized,
        message: msg.to_owned(),
    }
}

/// Read more bytes into `buf`; None on end of stream, error or overflow.
/// The read lands in the shard's scratch buffer (no await while it is
/// borrowed), so a pending handshake holds no read buffer of its own.
async fn read_more(shard: &Shard, stream: &TcpStream, fd: i32, buf: &mut Vec<u8>) -> Option<()> {
    loop {
        stream.readable(false).await.ok()?;
        let mut scratch = shard.scratch.borrow_mut();
        let room = AUTH_PHASE_BYTES_MAX
            .saturating_sub(buf.len())
            .min(scratch.len());
        if room == 0 {
            return None;
        }
        match recv_nb(fd, &mut scratch[..room]) {
            Ok(0) => return None,
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                return Some(());
            }
            Err(e) if would_block(&e) => continue,
            Err(_) => return None,
        }
    }
}

enum Step {
    Need,
    Reply(Vec<u8>),
    Fail(Vec<u8>),
    Done(Authed),
}

async fn auth_phase(
    shard: &Shard,
    stream: &TcpStream,
    fd: i32,
    upgraded: &Cell<Option<Subprotocol>>,
) -> Option<Authed> {
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    // 1. The HTTP upgrade.
    let hs = loop {
        match parse_request(&buf) {
            Ok(Some((hs, used))) => {
                buf.drain(..used);
                break hs;
            }
            Ok(None) => {
                if read_more(shard, stream, fd, &mut buf).await.is_none() {
                    if buf.len() >= AUTH_PHASE_BYTES_MAX - 2048 {
                        let _ = write_all(
                            stream,
                            fd,
                            &error_response(&crate::ws::handshake::HandshakeError::TooLarge),
                        )
                        .await;
                    }
                    return None;
                }
            }
            Err(e) => {
                let _ = write_all(stream, fd, &error_response(&e)).await;
                return None;
            }
        }
    };
    write_all(stream, fd, &accept_response(&hs.key, &hs))
        .await
        .ok()?;
    let sp = hs.subprotocol;
    upgraded.set(Some(sp));
    // 2. Frames until `auth`.
    let max = shard.shared.cfg.frame_bytes_max.min(AUTH_PHASE_BYTES_MAX);
    let mut asm = Assembler::new(max);
    loop {
        let mut off = 0;
        let mut step = Step::Need;
        while let Step::Need = step {
            match parse_client_frame(&mut buf[off..], max) {
                Ok(None) => break,
                Err(e) => step = Step::Fail(close_frame(e.close_code(), &e.to_string())),
                Ok(Some((h, range))) => {
                    let payload = &buf[off + range.start..off + range.end];
                    let next = off + h.header_len + h.payload_len;
                    step = match asm.push(&h, payload) {
                        Ok(None) | Ok(Some(Message::Pong(_))) => Step::Need,
                        Ok(Some(Message::Ping(p))) => {
                            let mut out = Vec::new();
                            encode_frame(OpCode::Pong, p, &mut out);
                            Step::Reply(out)
                        }
                        Ok(Some(Message::Close(_, _))) => {
                            Step::Fail(close_frame(close_code::NORMAL, ""))
                        }
                        Ok(Some(Message::Text(p))) | Ok(Some(Message::Binary(p))) => {
                            let frame = decode_client(sp, p);
                            check_auth(shard, sp, frame, &buf[next..])
                        }
                        Err(e) => Step::Fail(close_frame(e.close_code(), &e.to_string())),
                    };
                    off = next;
                }
            }
        }
        buf.drain(..off);
        match step {
            Step::Done(a) => return Some(a),
            Step::Fail(bytes) => {
                let _ = write_all(stream, fd, &bytes).await;
                return None;
            }
            // More complete frames may follow in `buf`: parse before reading.
            Step::Reply(bytes) => write_all(stream, fd, &bytes).await.ok()?,
            Step::Need => read_more(shard, stream, fd, &mut buf).await?,
        }
    }
}

/// The first data frame must be a valid `auth`.
fn check_auth(
    shard: &Shard,
    sp: Subprotocol,
    frame: Result<ClientFrame, tern_proto::DecodeError>,
    rest: &[u8],
) -> Step {
    let fail = |msg: &str| {
        let mut out = ws_frame(sp, &unauthorized(msg)).to_vec();
        out.extend_from_slice(&close_frame(close_code::UNAUTHORIZED, "unauthorized"));
        Step::Fail(out)
    };
    let (token, device) = match frame {
        Ok(ClientFrame::Auth { token, device }) => (token, device),
        Ok(_) => return fail("the first frame must be auth"),
        Err(e) => {
            let f = ServerFrame::Error {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
            };
            return Step::Reply(ws_frame(sp, &f).to_vec());
        }
    };
    let Ok(device) = DeviceId::parse(&device) else {
        let f = ServerFrame::Error {
            code: ErrorCode::BadRequest,
            message: "invalid device id".into(),
        };
        return Step::Reply(ws_frame(sp, &f).to_vec());
    };
    let claims = match crate::token::verify(&shard.shared.cfg.token_key, &token, &device, now_ms())
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("bad token: {e}")),
    };
    if shard.shared.is_revoked(&claims.user, claims.iat_ms) {
        return fail("token revoked");
    }
    Step::Done(Authed {
        user: claims.user,
        device,
        sp,
        leftover: rest.to_vec(),
    })
}
