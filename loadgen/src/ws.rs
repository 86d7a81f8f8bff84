//! A small RFC 6455 client side, written for the load tool and sharing no
//! code with the server: the opening handshake (request, response check),
//! masked client frames, and the decoding of unmasked server frames.
//!
//! Pure functions over byte slices; the connection task does the I/O.
//! Nothing here panics on server bytes.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3, appended to the key for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest handshake response head we read. The server's 101 is ~200 bytes;
/// anything near this is not a WebSocket server.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Largest server frame payload we accept (PROTOCOL: server frames are at
/// most 16 MiB). Bounds the memory one connection can be made to hold.
pub const SERVER_PAYLOAD_MAX: usize = 16 * 1024 * 1024;

/// Largest control frame payload (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_MAX: usize = 125;

/// Longest client frame header: 2 bytes, 8 of extended length, 4 of mask.
const CLIENT_HEADER_LEN_MAX: usize = 14;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0f;
const MASK_BIT: u8 = 0x80;
const LEN7_BITS: u8 = 0x7f;
const LEN7_MARKER_16: u8 = 126;
const LEN7_MARKER_64: u8 = 127;

/// Close code for a normal close (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;

/// Why a handshake or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The handshake response is not a valid `101 Switching Protocols`.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The server broke the framing rules.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or message beyond [`SERVER_PAYLOAD_MAX`].
    #[error("server frame too large")]
    TooLarge,
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key(random: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(random)
}

/// The `Sec-WebSocket-Accept` a server must answer for `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The opening handshake request for `GET path` on `host`, offering
/// `subprotocol` when given.
pub fn handshake_request(host: &str, path: &str, key: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(sp) = subprotocol {
        req.push_str("Sec-WebSocket-Protocol: ");
        req.push_str(sp);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A checked `101` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeOk {
    /// Bytes of `buf` the response head took; what follows is frames.
    pub consumed: usize,
    /// The subprotocol the server selected, if any.
    pub subprotocol: Option<String>,
}

/// Checks the server's answer to a handshake sent with `key`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_handshake_response(buf: &[u8], key: &str) -> Result<Option<HandshakeOk>, WsError> {
    let Some(end) = find_head_end(buf) else {
        if buf.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err(WsError::Handshake("response head too long".into()));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| WsError::Handshake("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(WsError::Handshake(format!(
            "status line `{}`",
            clip(status)
        )));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept = None;
    let mut subprotocol = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(WsError::Handshake(format!("header line `{}`", clip(line))));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-accept" => accept = Some(value.to_owned()),
            "sec-websocket-protocol" => subprotocol = Some(value.to_owned()),
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err(WsError::Handshake(
            "missing Upgrade/Connection headers".into(),
        ));
    }
    if accept.as_deref() != Some(accept_for(key).as_str()) {
        return Err(WsError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(Some(HandshakeOk {
        consumed: end + 4,
        subprotocol,
    }))
}

/// Index of the `\r\n\r\n` ending an HTTP head.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// At most 64 bytes of `s`, for error messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode with this wire value; `None` for reserved values.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// Payload bytes.
    pub payload_len: usize,
    /// Header bytes (2, 4 or 10: server frames are unmasked).
    pub header_len: usize,
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Decodes the server frame at the start of `buf`. `Ok(None)`: not all of
/// the frame is in `buf` yet. Server frames must be unmasked, with no RSV
/// bits, a known opcode, and control frames unfragmented and ≤ 125 bytes.
pub fn decode_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & RSV_BITS != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_bits(b0 & OPCODE_BITS).ok_or(WsError::Protocol("reserved opcode"))?;
    let fin = b0 & FIN_BIT != 0;
    if b1 & MASK_BIT != 0 {
        return Err(WsError::Protocol("masked server frame"));
    }
    let len7 = b1 & LEN7_BITS;
    if opcode.is_control() && (!fin || usize::from(len7) > CONTROL_PAYLOAD_MAX) {
        return Err(WsError::Protocol("bad control frame"));
    }
    let (payload_len, header_len) = match len7 {
        LEN7_MARKER_16 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (usize::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        LEN7_MARKER_64 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(b);
            let len = u64::from_be_bytes(be);
            let len = usize::try_from(len).map_err(|_| WsError::TooLarge)?;
            (len, 10)
        }
        n => (usize::from(n), 2),
    };
    if payload_len > SERVER_PAYLOAD_MAX {
        return Err(WsError::TooLarge);
    }
    let h = Header {
        fin,
        opcode,
        payload_len,
        header_len,
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    Ok(Some(h))
}

/// XORs `data` with the repeating `mask` (RFC 6455 §5.3).
pub fn apply_mask(mask: [u8; 4], data: &mut [u8]) {
    let mask8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ mask8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let start = begin_frame(opcode, payload.len(), mask, out);
    out.extend_from_slice(payload);
    apply_mask(mask, &mut out[start..]);
}

/// Appends the header of a masked client frame (FIN set) whose payload of
/// `payload_len` bytes the caller appends next and then masks with
/// [`finish_frame`]. Returns where the payload starts. Lets a caller encode
/// a protocol frame straight into the output buffer.
pub fn begin_frame(opcode: OpCode, payload_len: usize, mask: [u8; 4], out: &mut Vec<u8>) -> usize {
    let mut h = [0u8; CLIENT_HEADER_LEN_MAX];
    h[0] = FIN_BIT | opcode.bits();
    let n = if payload_len < usize::from(LEN7_MARKER_16) {
        // Below 126 by the condition.
        h[1] = MASK_BIT | payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        h[1] = MASK_BIT | LEN7_MARKER_16;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        h[1] = MASK_BIT | LEN7_MARKER_64;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    h[n..n + 4].copy_from_slice(&mask);
    out.extend_from_slice(&h[..n + 4]);
    out.len()
}

/// Masks the payload appended after [`begin_frame`] returned `start`.
pub fn finish_frame(mask: [u8; 4], start: usize, out: &mut [u8]) {
    apply_mask(mask, &mut out[start..]);
}

/// Appends a masked Close frame with `code` and no reason.
pub fn encode_close(code: u16, mask: [u8; 4], out: &mut Vec<u8>) {
    encode_frame(OpCode::Close, &code.to_be_bytes(), mask, out);
}

/// The code of a Close payload (`None` when empty or 1 byte).
pub fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// A cheap pseudo-random source for masks and keys (xorshift64*). Masks
/// only need to be unpredictable to intermediaries, not cryptographic.
#[derive(Debug, Clone)]
pub struct MaskRng(u64);

impl MaskRng {
    /// Seeded from `seed` (0 is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> MaskRng {
        MaskRng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh frame mask.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// 16 random bytes (a handshake key).
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes a masked client frame (the test plays the server) and
    /// returns (opcode, payload).
    fn decode_client_frame(buf: &[u8]) -> (OpCode, Vec<u8>, usize) {
        let opcode = OpCode::from_bits(buf[0] & 0x0f).unwrap();
        assert_ne!(buf[0] & FIN_BIT, 0);
        assert_ne!(buf[1] & MASK_BIT, 0, "client frames are masked");
        let (len, at) = match buf[1] & 0x7f {
            126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask: [u8; 4] = buf[at..at + 4].try_into().unwrap();
        let mut payload = buf[at + 4..at + 4 + len].to_vec();
        apply_mask(mask, &mut payload);
        (opcode, payload, at + 4 + len)
    }

    /// An unmasked server frame.
    fn server_frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { FIN_BIT } else { 0 } | op.bits()];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_response_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: tern.v1.rkyv\r\n\r\n\x81\x00";
        let r = parse_handshake_response(ok, key).unwrap().unwrap();
        assert_eq!(r.subprotocol.as_deref(), Some("tern.v1.rkyv"));
        assert_eq!(&ok[r.consumed..], b"\x81\x00");
        // Incomplete.
        assert_eq!(parse_handshake_response(&ok[..40], key).unwrap(), None);
        // Wrong accept.
        let bad = String::from_utf8_lossy(ok).replace("s3pP", "AAAA");
        assert!(parse_handshake_response(bad.as_bytes(), key).is_err());
        // Not 101.
        let r = parse_handshake_response(b"HTTP/1.1 404 Not Found\r\n\r\n", key);
        assert!(matches!(r, Err(WsError::Handshake(_))));
        // Too long without an end.
        let long = vec![b'a'; RESPONSE_HEAD_BYTES_MAX + 1];
        assert!(parse_handshake_response(&long, key).is_err());
    }

    #[test]
    fn request_offers_the_subprotocol() {
        let r = handshake_request("h:1", "/ws", "k", Some("tern.v1.json"));
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: tern.v1.json\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(handshake_request("h", "/ws", "k", None)).unwrap();
        assert!(!r.contains("Protocol"));
    }

    #[test]
    fn bad_server_frames_refused() {
        assert_eq!(decode_header(&[]), Ok(None));
        assert_eq!(decode_header(&[0x81]), Ok(None));
        assert!(decode_header(&[0x81 | 0x40, 0]).is_err(), "rsv");
        assert!(decode_header(&[0x83, 0]).is_err(), "opcode");
        assert!(decode_header(&[0x81, 0x80, 0, 0, 0, 0]).is_err(), "masked");
        assert!(decode_header(&[0x09, 0]).is_err(), "fragmented ping");
        assert!(decode_header(&[0x89, 126, 0, 200]).is_err(), "long ping");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&((SERVER_PAYLOAD_MAX as u64) + 1).to_be_bytes());
        assert_eq!(decode_header(&huge), Err(WsError::TooLarge));
        assert_eq!(close_code(&[0x03, 0xe8, b'x']), Some(1000));
        assert_eq!(close_code(&[0x03]), None);
    }

    proptest! {
        #[test]
        fn client_frames_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                                   seed in any::<u64>(), binary in any::<bool>()) {
            let op = if binary { OpCode::Binary } else { OpCode::Text };
            let mut rng = MaskRng::new(seed);
            let mut out = vec![1, 2, 3];
            encode_frame(op, &payload, rng.mask(), &mut out);
            let (op2, back, used) = decode_client_frame(&out[3..]);
            prop_assert_eq!(op2, op);
            prop_assert_eq!(back, payload);
            prop_assert_eq!(used, out.len() - 3);
        }

        #[test]
        fn server_frames_decode(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                                fin in any::<bool>(), cut in any::<prop::sample::Index>()) {
            let op = if fin { OpCode::Binary } else { OpCode::Continuation };
            let f = server_frame(fin, op, &payload);
            let h = decode_header(&f).unwrap().unwrap();
            prop_assert_eq!(h.fin, fin);
            prop_assert_eq!(h.opcode, op);
            prop_assert_eq!(&f[h.header_len..h.frame_len()], &payload[..]);
            // Any strict prefix is incomplete, never an error.
            let n = cut.index(f.len());
            prop_assert_eq!(decode_header(&f[..n]), Ok(None));
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_header(&bytes);
            let _ = parse_handshake_response(&bytes, "k");
        }
    }
}
