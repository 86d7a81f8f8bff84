//! RFC 6455 frames: decode client frames in place, reassemble messages, and
//! encode server frames.
//!
//! Decisions:
//! - **Check before parse** (as in mini-redis): the shard reads into a
//!   shard-wide scratch buffer and keeps per connection only the bytes of a
//!   partial frame. [`check_client_frame`] looks at the header alone and says
//!   "incomplete" without touching the payload, so a frame that arrives in
//!   many reads costs one header decode per read, not a parse. An incomplete
//!   frame is an expected state (`Ok(None)`), not an error.
//! - **Errors as early as the bytes allow**: RSV bits, unknown opcodes,
//!   unmasked frames and bad control frames are refused from the first two
//!   bytes; an oversized payload is refused from the length field, before
//!   its bytes arrive, so a client cannot make us buffer what we would refuse.
//! - **No ownership of input**: decoding works over `&mut [u8]` the shard
//!   owns; the payload is unmasked in place and handed back as a range.
//! - **Reassembly holds bytes only while a fragmented message is in
//!   progress**: an unfragmented frame's payload is returned by reference, so
//!   the common case copies nothing. A fragmented message's buffer is freed
//!   (capacity too) on the next [`Assembler::push`] or [`Assembler::release`].
//! - **Text is validated once, when complete** (not per fragment): simpler,
//!   and a message is at most `max_message` bytes anyway.
//! - Server frames are never masked and never fragmented; clients' frames
//!   must be masked (RFC 6455 5.1).

use std::ops::Range;

/// Largest payload of a control frame (Close, Ping, Pong): RFC 6455 5.5.
pub const CONTROL_PAYLOAD_MAX: usize = 125;

/// Largest header of a server (unmasked) frame: 2 bytes + 8-byte length.
pub const SERVER_HEADER_LEN_MAX: usize = 10;

/// Largest header of a client (masked) frame: 2 + 8-byte length + 4-byte mask.
pub const CLIENT_HEADER_LEN_MAX: usize = 14;

/// Largest reason in a Close frame: the control payload minus the 2-byte code.
pub const CLOSE_REASON_MAX: usize = CONTROL_PAYLOAD_MAX - 2;

/// Payload lengths up to this fit the 7-bit length field (126 and 127 are
/// markers for the 16- and 64-bit forms).
const LEN7_MAX: usize = 125;
/// Payload lengths up to this fit the 16-bit extended length.
const LEN16_MAX: usize = 0xFFFF;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0F;
const MASK_BIT: u8 = 0x80;
const LEN7_BITS: u8 = 0x7F;
const LEN7_MARKER_16: u8 = 126;
const LEN7_MARKER_64: u8 = 127;

/// A frame's opcode (RFC 6455 5.2); the reserved values are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// A later fragment of a Text or Binary message.
    Continuation,
    /// UTF-8 text (the `tern.v1.json` subprotocol).
    Text,
    /// Binary data (the `tern.v1.rkyv` subprotocol).
    Binary,
    /// Close: optional 2-byte code and UTF-8 reason.
    Close,
    /// Ping: the peer answers with a Pong carrying the same payload.
    Ping,
    /// Pong: answer to a Ping, or an unsolicited heartbeat.
    Pong,
}

impl OpCode {
    /// Decode the 4-bit opcode; `None` for the reserved values.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong: never fragmented, payload at most
    /// [`CONTROL_PAYLOAD_MAX`], may arrive between fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A decoded and validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last fragment of its message.
    pub fin: bool,
    /// What the payload is.
    pub opcode: OpCode,
    /// The masking key; always `Some` for a checked client frame.
    pub mask: Option<[u8; 4]>,
    /// Payload bytes after the header.
    pub payload_len: usize,
    /// Header bytes, including extended length and mask.
    pub header_len: usize,
}

impl FrameHeader {
    /// Header plus payload: the bytes this frame occupies in the stream.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why a client's frames were refused; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Framing rules broken; close code 1002.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A Text message or a Close reason is not UTF-8; close code 1007.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A frame or a message exceeds the configured limit; close code 1009.
    #[error("frame or message too large")]
    TooLarge,
}

impl WsError {
    /// The close code to send before closing the connection (RFC 6455 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close_code::PROTOCOL_ERROR,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::TooLarge => close_code::MESSAGE_TOO_BIG,
        }
    }
}

/// Close codes of RFC 6455 7.4.1 that the codec itself produces or accepts.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (server shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data of a type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid payload (non-UTF-8 text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message too big.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: u16 = 1010;
    /// Internal server error.
    pub const INTERNAL_ERROR: u16 = 1011;

    /// Whether a peer may send `code` in a Close frame: the defined codes
    /// 1000–1003 and 1007–1011, and the registered/private range 3000–4999.
    /// 1005 and 1006 are reserved for "no code"/"abnormal" and must never be
    /// on the wire; everything else is unassigned.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

/// Decode and validate the header at the start of `buf`, without needing the
/// payload. `Ok(None)`: the header itself is not complete yet.
///
/// Use this when more bytes are needed to learn how many:
/// [`FrameHeader::frame_len`] is the total to reserve. Errors are the same as
/// [`check_client_frame`]'s.
pub fn check_client_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameHeader>, WsError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    if b0 & RSV_BITS != 0 {
        // No extension is negotiated, so RSV1–3 must be 0 (RFC 6455 5.2).
        return Err(WsError::Protocol("reserved bits set"));
    }
    let Some(opcode) = OpCode::from_bits(b0 & OPCODE_BITS) else {
        return Err(WsError::Protocol("reserved opcode"));
    };
    let fin = b0 & FIN_BIT != 0;
    if opcode.is_control() && !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    if b1 & MASK_BIT == 0 {
        return Err(WsError::Protocol("unmasked client frame"));
    }
    let len7 = b1 & LEN7_BITS;
    if opcode.is_control() && usize::from(len7) > CONTROL_PAYLOAD_MAX {
        return Err(WsError::Protocol("control frame payload over 125 bytes"));
    }
    let (payload_len, len_field_len) = match len7 {
        LEN7_MARKER_16 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            if len <= LEN7_MAX {
                return Err(WsError::Protocol("non-minimal 16-bit length"));
            }
            (len, 2)
        }
        LEN7_MARKER_64 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("64-bit length with the top bit set"));
            }
            if len <= LEN16_MAX as u64 {
                return Err(WsError::Protocol("non-minimal 64-bit length"));
            }
            // Too big for this platform's usize is certainly over the limit.
            let len = usize::try_from(len).map_err(|_| WsError::TooLarge)?;
            (len, 8)
        }
        n => (usize::from(n), 0),
    };
    if payload_len > max_payload {
        return Err(WsError::TooLarge);
    }
    let mask_at = 2 + len_field_len;
    let Some(mask_bytes) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(mask_bytes);
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask: Some(mask),
        payload_len,
        header_len: mask_at + 4,
    }))
}

/// Cheap check: `Ok(Some(header))` if `buf` starts with a whole client frame,
/// `Ok(None)` if more bytes are needed (call [`check_client_header`] to learn
/// how many once the header is in).
///
/// Errors (decided from the header alone, before the payload arrives):
/// RSV bits set, reserved opcode, unmasked frame, control frame with FIN=0 or
/// payload over [`CONTROL_PAYLOAD_MAX`], non-minimal length, 64-bit length
/// with the top bit set → [`WsError::Protocol`]; payload over `max_payload`
/// → [`WsError::TooLarge`].
pub fn check_client_frame(buf: &[u8], max_payload: usize) -> Result<Option<FrameHeader>, WsError> {
    match check_client_header(buf, max_payload)? {
        Some(h) if buf.len() >= h.frame_len() => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// Parse one whole client frame at the start of `buf` and unmask its payload
/// in place. Returns the header and the payload's range in `buf`; the frame
/// occupies `..range.end`. `Ok(None)`: incomplete, `buf` is untouched.
pub fn parse_client_frame(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<(FrameHeader, Range<usize>)>, WsError> {
    let Some(h) = check_client_frame(buf, max_payload)? else {
        return Ok(None);
    };
    let range = h.header_len..h.frame_len();
    if let Some(mask) = h.mask {
        apply_mask(mask, &mut buf[range.clone()]);
    }
    Ok(Some((h, range)))
}

/// XOR `data` with the repeating 4-byte `mask` (RFC 6455 5.3), 8 bytes at a
/// time. Applying it twice restores the input.
pub fn apply_mask(mask: [u8; 4], data: &mut [u8]) {
    let mask8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word) ^ mask8;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    // Chunks are multiples of 4 long, so the remainder starts at mask[0].
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A complete message or control frame, borrowed from the frame payload or
/// from the [`Assembler`]'s buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole Text message, valid UTF-8 (kept as bytes: the JSON decoder
    /// takes bytes).
    Text(&'a [u8]),
    /// A whole Binary message.
    Binary(&'a [u8]),
    /// A Ping; answer with a Pong carrying the same payload.
    Ping(&'a [u8]),
    /// A Pong.
    Pong(&'a [u8]),
    /// A Close with its code (`None`: empty payload) and UTF-8 reason.
    Close(Option<u16>, &'a [u8]),
}

/// Kind of the data message being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No message in progress; `buf` is empty with no capacity.
    Idle,
    /// Fragments of a message are in `buf`.
    Fragmented(DataKind),
    /// `buf` holds a message just returned; free it on the next call.
    Delivered,
}

/// Reassembles fragmented messages and validates what a message must be.
///
/// Holds bytes only while a fragmented message is in progress (and the one
/// just returned, until the next [`push`](Self::push) or
/// [`release`](Self::release)). Enforces: a continuation without a start, or
/// a new Text/Binary while one is in progress → Protocol; a message over
/// `max_message` → TooLarge; non-UTF-8 text → InvalidUtf8; control frames may
/// arrive between fragments; Close payloads per RFC 6455 5.5.1 and 7.4.
#[derive(Debug)]
pub struct Assembler {
    buf: Vec<u8>,
    max_message: usize,
    state: State,
}

impl Assembler {
    /// An idle assembler refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_message,
            state: State::Idle,
        }
    }

    /// Whether a fragmented message has started and not finished.
    pub fn in_progress(&self) -> bool {
        matches!(self.state, State::Fragmented(_))
    }

    /// Free the buffer of a fragmented message already returned by
    /// [`push`](Self::push). Call when done with a batch of frames so an idle
    /// connection holds no memory; a no-op otherwise.
    pub fn release(&mut self) {
        if self.state == State::Delivered {
            self.buf = Vec::new();
            self.state = State::Idle;
        }
    }

    /// Feed one checked frame (its header and unmasked payload). Returns the
    /// message it completes, if any: `Ok(None)` for a non-final fragment.
    pub fn push<'a>(
        &'a mut self,
        h: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Option<Message<'a>>, WsError> {
        self.release();
        match h.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
            OpCode::Close => {
                parse_close(payload).map(|(code, reason)| Some(Message::Close(code, reason)))
            }
            OpCode::Text | OpCode::Binary => {
                if self.in_progress() {
                    return Err(WsError::Protocol(
                        "new message before the previous one finished",
                    ));
                }
                if payload.len() > self.max_message {
                    return Err(WsError::TooLarge);
                }
                let kind = if h.opcode == OpCode::Text {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                if h.fin {
                    return finish(kind, payload).map(Some);
                }
                self.buf.extend_from_slice(payload);
                self.state = State::Fragmented(kind);
                Ok(None)
            }
            OpCode::Continuation => {
                let State::Fragmented(kind) = self.state else {
                    return Err(WsError::Protocol(
                        "continuation without a message in progress",
                    ));
                };
                if payload.len() > self.max_message.saturating_sub(self.buf.len()) {
                    return Err(WsError::TooLarge);
                }
                self.buf.extend_from_slice(payload);
                if !h.fin {
                    return Ok(None);
                }
                self.state = State::Delivered;
                finish(kind, &self.buf).map(Some)
            }
        }
    }
}

/// A whole data message: validate text.
fn finish(kind: DataKind, bytes: &[u8]) -> Result<Message<'_>, WsError> {
    match kind {
        DataKind::Text => match std::str::from_utf8(bytes) {
            Ok(_) => Ok(Message::Text(bytes)),
            Err(_) => Err(WsError::InvalidUtf8),
        },
        DataKind::Binary => Ok(Message::Binary(bytes)),
    }
}

/// A Close payload: empty, or a 2-byte code valid on the wire plus a UTF-8
/// reason (RFC 6455 5.5.1, 7.4).
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &[u8]), WsError> {
    match payload {
        [] => Ok((None, payload)),
        [_] => Err(WsError::Protocol("close payload of 1 byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_valid_on_wire(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            Ok((Some(code), reason))
        }
    }
}

/// Header of an unmasked server frame with FIN=1 and minimal length encoding:
/// the bytes and how many of them are used. Lets the shard `writev` a shared
/// encoded payload without copying it.
pub fn frame_header(opcode: OpCode, payload_len: usize) -> ([u8; SERVER_HEADER_LEN_MAX], usize) {
    let mut h = [0u8; SERVER_HEADER_LEN_MAX];
    h[0] = FIN_BIT | opcode.bits();
    let n = write_len(&mut h, payload_len, 0);
    (h, n)
}

/// Write the length field into `h[1..]` with `mask_bit` in byte 1; returns
/// the header length so far (2, 4 or 10).
fn write_len(h: &mut [u8], payload_len: usize, mask_bit: u8) -> usize {
    if payload_len <= LEN7_MAX {
        // Fits in 7 bits by the condition above.
        h[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        h[1] = mask_bit | LEN7_MARKER_16;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        h[1] = mask_bit | LEN7_MARKER_64;
        // usize is at most 64 bits on every supported target.
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Append an unmasked server frame (FIN=1, minimal length) to `out`.
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let (h, n) = frame_header(opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// A whole server Close frame. The reason is cut, at a character boundary,
/// to [`CLOSE_REASON_MAX`] bytes so the frame stays a valid control frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(CLOSE_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; CONTROL_PAYLOAD_MAX];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    let mut out = Vec::with_capacity(2 + 2 + end);
    encode_frame(OpCode::Close, &payload[..2 + end], &mut out);
    out
}

/// Append a masked client frame to `out` (tests, fuzzing, load tools).
/// Does not enforce control-frame rules, so tests can build bad frames.
pub fn encode_client_frame(
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut Vec<u8>,
) {
    let mut h = [0u8; CLIENT_HEADER_LEN_MAX];
    h[0] = if fin { FIN_BIT } else { 0 } | opcode.bits();
    let n = write_len(&mut h, payload.len(), MASK_BIT);
    h[n..n + 4].copy_from_slice(&mask);
    out.reserve(n + 4 + payload.len());
    out.extend_from_slice(&h[..n + 4]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(mask, &mut out[start..]);
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
