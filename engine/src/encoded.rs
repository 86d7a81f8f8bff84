//! Server frames encoded once, as complete WebSocket frames, per subprotocol.
//! The same bytes (`Arc<[u8]>`) go to every connection that speaks that
//! subprotocol: no per-recipient copy or encode.

use std::sync::Arc;

use tern_proto::{encode_server_into, ServerFrame, Subprotocol};

use crate::ws::codec::{frame_header, OpCode};

/// One frame in both subprotocols.
pub struct Encoded {
    pub json: Arc<[u8]>,
    pub rkyv: Arc<[u8]>,
}

impl Encoded {
    /// Encode `frame` for both subprotocols.
    pub fn both(frame: &ServerFrame) -> Encoded {
        Encoded {
            json: ws_frame(Subprotocol::Json, frame),
            rkyv: ws_frame(Subprotocol::Rkyv, frame),
        }
    }

    /// The bytes for a connection speaking `sp`.
    pub fn for_sp(&self, sp: Subprotocol) -> &Arc<[u8]> {
        match sp {
            Subprotocol::Json => &self.json,
            Subprotocol::Rkyv => &self.rkyv,
        }
    }
}

/// `frame` as one complete WebSocket frame (text for JSON, binary for rkyv).
pub fn ws_frame(sp: Subprotocol, frame: &ServerFrame) -> Arc<[u8]> {
    let mut payload = Vec::with_capacity(128);
    encode_server_into(sp, frame, &mut payload);
    ws_frame_from_payload(sp, &payload)
}

/// Wrap an already encoded payload in a WebSocket frame header.
pub fn ws_frame_from_payload(sp: Subprotocol, payload: &[u8]) -> Arc<[u8]> {
    let opcode = match sp {
        Subprotocol::Json => OpCode::Text,
        Subprotocol::Rkyv => OpCode::Binary,
    };
    let (hdr, hdr_len) = frame_header(opcode, payload.len());
    let mut out = Vec::with_capacity(hdr_len + payload.len());
    out.extend_from_slice(&hdr[..hdr_len]);
    out.extend_from_slice(payload);
    out.into()
}
