//! The read side of a connection, run when the shard's poller reports it
//! readable: read into the shard's scratch buffer, cut WebSocket frames
//! (keeping only a partial frame between reads), decode, then act on them
//! with no borrow held.

use std::rc::Rc;

use tern_proto::{decode_client, ClientFrame, DecodeError};

use super::conn::{Closing, Rx};
use super::sockio::{recv_nb, would_block};
use super::{close_code, Shard};
use crate::shared::now_ms;
use crate::ws::codec::{
    check_client_header, close_frame, encode_frame, parse_client_frame, Message, OpCode, WsError,
};

/// Reads per readiness report before the next connection's turn.
const READS_PER_WAKE_MAX: usize = 4;

/// What the bytes of one read asked for.
pub(super) enum Action {
    Frame(Result<ClientFrame, DecodeError>),
    Ping(Vec<u8>),
    Close(Option<u16>),
    Fatal(WsError),
}

/// Bytes that arrived with the handshake, before the connection was
/// registered: handle them as if just read.
pub(super) fn on_adopted(shard: &Rc<Shard>, slot: u32, gen: u32, mut leftover: Vec<u8>) {
    if leftover.is_empty() {
        return;
    }
    let mut actions = shard.take_actions();
    cut_frames(shard, slot, gen, &mut leftover, &mut actions);
    let alive = dispatch(shard, slot, gen, &mut actions);
    shard.put_actions(actions);
    if !alive {
        finish(shard, slot, gen);
    }
}

/// The socket is readable (or at end of stream, or failed): read it, at most
/// [`READS_PER_WAKE_MAX`] times. The poller is level-triggered, so bytes
/// left over are reported again on the next poll.
pub(super) fn on_readable(shard: &Rc<Shard>, slot: u32, gen: u32) {
    let Some(fd) = shard.conns.borrow_mut().get_mut(slot, gen).map(|c| c.fd()) else {
        return; // a stale event: the connection is gone
    };
    for _ in 0..READS_PER_WAKE_MAX {
        let mut actions = shard.take_actions();
        let got = {
            let mut scratch = shard.scratch.borrow_mut();
            match recv_nb(fd, &mut scratch) {
                Ok(0) => Err(()),
                Ok(n) => {
                    cut_frames(shard, slot, gen, &mut scratch[..n], &mut actions);
                    Ok(Some(n == scratch.len()))
                }
                Err(e) if would_block(&e) => Ok(None),
                Err(_) => Err(()),
            }
        };
        let alive = got.is_ok() && dispatch(shard, slot, gen, &mut actions);
        actions.clear();
        shard.put_actions(actions);
        if !alive {
            return finish(shard, slot, gen);
        }
        match got {
            Ok(Some(true)) => continue, // buffer was full: more may be waiting
            _ => break,
        }
    }
}

fn finish(shard: &Rc<Shard>, slot: u32, gen: u32) {
    shard.remove_conn(slot, gen);
}

/// Cut complete frames out of `data` (prefixed by the connection's partial
/// frame, if any), reassemble messages, decode them into `actions`. Keeps the
/// incomplete tail as the new partial frame.
fn cut_frames(shard: &Shard, slot: u32, gen: u32, data: &mut [u8], actions: &mut Vec<Action>) {
    let max = shard.shared.cfg.frame_bytes_max;
    let mut conns = shard.conns.borrow_mut();
    let Some(c) = conns.get_mut(slot, gen) else {
        return;
    };
    c.last_rx_ms = now_ms();
    c.pinged = false;
    let Rx {
        mut partial,
        mut asm,
    } = match c.rx.take() {
        Some(rx) => *rx,
        None => Rx::new(max),
    };
    let from_partial = !partial.is_empty();
    let buf: &mut [u8] = if from_partial {
        partial.extend_from_slice(data);
        &mut partial[..]
    } else {
        data
    };
    let mut off = 0;
    // The connection ends (close, protocol error): drop the unread rest.
    let mut end = false;
    // Bounded: every round consumes one whole frame or stops.
    while !end {
        match parse_client_frame(&mut buf[off..], max) {
            Ok(None) => break,
            Err(e) => {
                actions.push(Action::Fatal(e));
                end = true;
            }
            Ok(Some((h, range))) => {
                let payload = &buf[off + range.start..off + range.end];
                let next = off + h.header_len + h.payload_len;
                match asm.push(&h, payload) {
                    Ok(None) => {}
                    Ok(Some(Message::Text(p))) | Ok(Some(Message::Binary(p))) => {
                        if c.closing == Closing::Open {
                            actions.push(Action::Frame(decode_client(c.sp, p)));
                        }
                    }
                    Ok(Some(Message::Ping(p))) => actions.push(Action::Ping(p.to_vec())),
                    Ok(Some(Message::Pong(_))) => {}
                    Ok(Some(Message::Close(code, _))) => {
                        actions.push(Action::Close(code));
                        end = true;
                    }
                    Err(e) => {
                        actions.push(Action::Fatal(e));
                        end = true;
                    }
                }
                off = next;
            }
        }
    }
    // A fragmented message already handed out holds no memory past here.
    asm.release();
    // Keep only the incomplete tail, and no capacity when there is none.
    let tail = if end || off == buf.len() {
        Vec::new()
    } else if from_partial {
        partial.drain(..off);
        partial
    } else {
        // Reserve the whole frame once its header is known, so a large frame
        // arriving in pieces does not regrow the buffer on every read.
        let rest = &buf[off..];
        let need = match check_client_header(rest, max) {
            Ok(Some(h)) => h.frame_len(),
            _ => rest.len(),
        };
        let mut p = Vec::with_capacity(need.max(rest.len()));
        p.extend_from_slice(rest);
        p
    };
    c.rx = Rx { partial: tail, asm }.stash();
}

/// Act on what was read. Returns false when the connection is done.
fn dispatch(shard: &Rc<Shard>, slot: u32, gen: u32, actions: &mut Vec<Action>) -> bool {
    let mut alive = true;
    for a in actions.drain(..) {
        if !alive {
            continue;
        }
        match a {
            Action::Frame(f) => super::client::on_frame(shard, slot, gen, f),
            Action::Ping(p) => {
                let mut f = Vec::with_capacity(p.len() + 2);
                encode_frame(OpCode::Pong, &p, &mut f);
                shard.enqueue(slot, gen, f.into());
            }
            Action::Close(code) => {
                // Answer a client's close (or finish ours) and end.
                let closing = shard
                    .conns
                    .borrow_mut()
                    .get_mut(slot, gen)
                    .map(|c| c.closing);
                if closing == Some(Closing::Open) {
                    let echo = match code {
                        Some(c) => c,
                        None => close_code::NORMAL,
                    };
                    shard.enqueue(slot, gen, close_frame(echo, "").into());
                    if let Some(c) = shard.conns.borrow_mut().get_mut(slot, gen) {
                        c.closing = Closing::CloseSent;
                    }
                    shard.flush_now(slot, gen);
                }
                shard.abort(slot, gen);
                alive = false;
            }
            Action::Fatal(e) => {
                shard.close(slot, gen, e.close_code(), &e.to_string());
                // Keep reading until the client answers or the grace ends.
            }
        }
    }
    alive
}
