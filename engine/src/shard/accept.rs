//! Accept, WebSocket handshake and `auth`, then hand the socket to its home
//! shard. Work per pending connection is bounded in bytes
//! ([`AUTH_PHASE_BYTES_MAX`]) and time ([`AUTH_TIMEOUT_MS`]).

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};
use tern_proto::{
    decode_client, ClientFrame, DeviceId, ErrorCode, ServerFrame, Subprotocol, UserId,
};

use super::sockio::{self, recv_nb, would_block, write_all};
use super::{close_code, Shard};
use crate::encoded::ws_frame;
use crate::limits::{AUTH_PHASE_BYTES_MAX, AUTH_TIMEOUT_MS};
use crate::mesh::{home_shard, Adopt, ShardMsg};
use crate::shared::now_ms;
use crate::ws::codec::{close_frame, encode_frame, parse_client_frame, Assembler, Message, OpCode};
use crate::ws::handshake::{accept_response, error_response, parse_request};

pub(super) async fn run(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        if shard.shutting_down.get() {
            return;
        }
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if shard.shutting_down.get() {
                    return;
                }
                monoio::spawn(handshake(shard.clone(), stream));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = shard.idx, "accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct Authed {
    user: UserId,
    device: DeviceId,
    sp: Subprotocol,
    leftover: Vec<u8>,
}

async fn handshake(shard: Rc<Shard>, stream: TcpStream) {
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
