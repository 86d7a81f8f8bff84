//! Server frames encoded once per subprotocol, as complete WebSocket frames.
//! The same bytes (`Arc<[u8]>`) go to every connection that speaks that
//! subprotocol: no per-recipient copy or encode. Each encoding is made on
//! first use, by whichever home shard needs it first, so a fan-out whose
//! recipients all speak rkyv never pays for JSON (and the other way round).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use tern_proto::{encode_server_into, ServerFrame, Subprotocol};

use crate::ws::codec::{frame_header, OpCode, SERVER_HEADER_LEN_MAX};

/// One frame, encoded lazily for each subprotocol.
pub struct Encoded {
    frame: ServerFrame,
    json: OnceLock<Arc<[u8]>>,
    rkyv: OnceLock<Arc<[u8]>>,
}

impl Encoded {
    /// Wrap `frame`; nothing is encoded yet.
    pub fn new(frame: ServerFrame) -> Encoded {
        Encoded {
            frame,
            json: OnceLock::new(),
            rkyv: OnceLock::new(),
        }
    }

    /// The bytes for a connection speaking `sp` (encoded on first use).
    pub fn for_sp(&self, sp: Subprotocol) -> &Arc<[u8]> {
        match sp {
            Subprotocol::Json => self.json.get_or_init(|| ws_frame(sp, &self.frame)),
            Subprotocol::Rkyv => self.rkyv.get_or_init(|| ws_frame(sp, &self.frame)),
        }
    }
}

/// The encode buffer a thread keeps between frames, so a frame costs one
/// allocation (its `Arc`). One larger than this is dropped after use.
const SCRATCH_KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `frame` as one complete WebSocket frame (text for JSON, binary for rkyv).
/// The payload is encoded into the thread's scratch buffer after room for
/// the largest header, the header is written just in front of it, and the
/// frame is copied once into its `Arc`.
pub fn ws_frame(sp: Subprotocol, frame: &ServerFrame) -> Arc<[u8]> {
    let scratch = SCRATCH.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        let out = ws_frame_in(&mut buf, sp, frame);
        if buf.capacity() > SCRATCH_KEEP_BYTES {
            *buf = Vec::new();
        }
        Some(out)
    });
    // Without the scratch buffer (a thread being torn down, or an encode
    // inside an encode, which nothing does): a buffer of its own.
    match scratch {
        Ok(Some(out)) => out,
        _ => ws_frame_in(&mut Vec::new(), sp, frame),
    }
}

fn ws_frame_in(buf: &mut Vec<u8>, sp: Subprotocol, frame: &ServerFrame) -> Arc<[u8]> {
    let opcode = match sp {
        Subprotocol::Json => OpCode::Text,
        Subprotocol::Rkyv => OpCode::Binary,
    };
    buf.clear();
    buf.resize(SERVER_HEADER_LEN_MAX, 0);
    encode_server_into(sp, frame, buf);
    let (hdr, hdr_len) = frame_header(opcode, buf.len() - SERVER_HEADER_LEN_MAX);
    let start = SERVER_HEADER_LEN_MAX - hdr_len;
    buf[start..SERVER_HEADER_LEN_MAX].copy_from_slice(&hdr[..hdr_len]);
    Arc::from(&buf[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::codec::{encode_frame, OpCode};

    #[test]
    fn scratch_buffer_is_kept_bounded_and_not_required() {
        let small = ServerFrame::Pong { ts: 7 };
        let big = ServerFrame::Error {
            code: tern_proto::ErrorCode::BadRequest,
            message: "x".repeat(2 * SCRATCH_KEEP_BYTES),
        };
        for sp in [Subprotocol::Json, Subprotocol::Rkyv] {
            let want = ws_frame_in(&mut Vec::new(), sp, &small);
            assert_eq!(ws_frame(sp, &small), want);
            // Kept for the next frame.
            assert!(SCRATCH.with(|c| c.borrow().capacity()) > 0);
            let big_bytes = ws_frame(sp, &big);
            assert!(big_bytes.len() > 2 * SCRATCH_KEEP_BYTES);
            // Not kept: a large frame does not pin its buffer.
            assert_eq!(SCRATCH.with(|c| c.borrow().capacity()), 0);
            // Scratch busy: the same bytes from a buffer of its own.
            SCRATCH.with(|c| {
                let _held = c.borrow_mut();
                assert_eq!(ws_frame(sp, &small), want);
            });
        }
    }

    #[test]
    fn lazy_frames_equal_a_plain_encode_for_both_subprotocols() {
        for body_len in [0usize, 10, 200, 70_000] {
            let f = ServerFrame::Pong {
                ts: body_len as u64,
            };
            let big = ServerFrame::Error {
                code: tern_proto::ErrorCode::BadRequest,
                message: "x".repeat(body_len),
            };
            for frame in [f, big] {
                let e = Encoded::new(frame.clone());
                for (sp, op) in [
                    (Subprotocol::Json, OpCode::Text),
                    (Subprotocol::Rkyv, OpCode::Binary),
                ] {
                    let mut want = Vec::new();
                    encode_frame(op, &tern_proto::encode_server(sp, &frame), &mut want);
                    assert_eq!(&e.for_sp(sp)[..], &want[..]);
                    // Encoded once: the same allocation every time.
                    assert!(Arc::ptr_eq(e.for_sp(sp), e.for_sp(sp)));
                }
            }
        }
    }
}
