//! Shared pieces of the fuzz targets: input layouts (so `examples/gen_corpus`
//! writes seeds the targets read the same way), a shard-like WebSocket
//! reader, and the fixed token key.
//!
//! Every check here is an `assert!`: libFuzzer reports a failed assertion as
//! a crash, with the input saved under `fuzz/artifacts/<target>/`.

use tern_wire::token::TokenKey;
use tern_wire::ws::codec::{
    check_client_header, close_code, parse_client_frame, Assembler, FrameHeader, Message, OpCode,
    WsError, CLIENT_HEADER_LEN_MAX, CLOSE_REASON_MAX, CONTROL_PAYLOAD_MAX,
};

/// Payload and message limits the `ws_frame` target picks from (by the low
/// and high nibble of its first byte): both sides of every length-encoding
/// boundary, the engine's defaults' order of magnitude, and no limit at all.
pub const WS_LIMITS: [usize; 16] = [
    0,
    1,
    2,
    124,
    125,
    126,
    127,
    1000,
    65_535,
    65_536,
    65_537,
    1 << 20,
    16 << 20,
    u32::MAX as usize,
    (1 << 63) - 1,
    usize::MAX,
];

/// Most read boundaries one `ws_frame` input can ask for: enough to cut a
/// frame inside its header, mask and payload at once.
pub const WS_SPLITS_MAX: usize = 7;

/// A `ws_frame` input: limits, read boundaries, then the byte stream.
#[derive(Debug)]
pub struct WsInput<'a> {
    /// Largest payload a frame may declare.
    pub max_payload: usize,
    /// Largest reassembled message.
    pub max_message: usize,
    /// Read boundaries, sorted, each within `0..=stream.len()`.
    pub splits: Vec<usize>,
    /// What the client sent.
    pub stream: &'a [u8],
}

impl<'a> WsInput<'a> {
    /// Layout: `limits` (low nibble max_payload, high nibble max_message as
    /// indices into [`WS_LIMITS`]), `n` (mod [`WS_SPLITS_MAX`]+1), `n`
    /// little-endian u16 split positions, the stream.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&limits, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n) % (WS_SPLITS_MAX + 1);
        if rest.len() < 2 * n {
            return None;
        }
        let (split_bytes, stream) = rest.split_at(2 * n);
        let mut splits: Vec<usize> = split_bytes
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
            .collect();
        splits.sort_unstable();
        Some(Self {
            max_payload: WS_LIMITS[usize::from(limits & 0x0F)],
            max_message: WS_LIMITS[usize::from(limits >> 4)],
            splits,
            stream,
        })
    }

    /// The bytes of an input with the given limit indices and splits.
    pub fn encode(payload_idx: u8, message_idx: u8, splits: &[u16], stream: &[u8]) -> Vec<u8> {
        assert!(payload_idx < 16 && message_idx < 16 && splits.len() <= WS_SPLITS_MAX);
        let mut out = vec![payload_idx | (message_idx << 4), splits.len() as u8];
        for s in splits {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(stream);
        out
    }
}

/// A message copied out of the assembler, to compare runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// Text message.
    Text(Vec<u8>),
    /// Binary message.
    Binary(Vec<u8>),
    /// Ping.
    Ping(Vec<u8>),
    /// Pong.
    Pong(Vec<u8>),
    /// Close with optional code and reason.
    Close(Option<u16>, Vec<u8>),
}

impl Owned {
    /// Copy a message, checking what the assembler promises about it.
    fn checked(m: Message<'_>, max_message: usize) -> Self {
        match m {
            Message::Text(b) => {
                assert!(b.len() <= max_message, "text over max_message");
                assert!(std::str::from_utf8(b).is_ok(), "text is not UTF-8");
                Self::Text(b.to_vec())
            }
            Message::Binary(b) => {
                assert!(b.len() <= max_message, "binary over max_message");
                Self::Binary(b.to_vec())
            }
            Message::Ping(b) => {
                assert!(b.len() <= CONTROL_PAYLOAD_MAX);
                Self::Ping(b.to_vec())
            }
            Message::Pong(b) => {
                assert!(b.len() <= CONTROL_PAYLOAD_MAX);
                Self::Pong(b.to_vec())
            }
            Message::Close(code, reason) => {
                match code {
                    None => assert!(reason.is_empty(), "close reason without a code"),
                    Some(c) => assert!(close_code::is_valid_on_wire(c), "close code {c}"),
                }
                assert!(reason.len() <= CLOSE_REASON_MAX);
                assert!(
                    std::str::from_utf8(reason).is_ok(),
                    "close reason is not UTF-8"
                );
                Self::Close(code, reason.to_vec())
            }
        }
    }

    /// The opcode and payload of this message as one unfragmented frame.
    pub fn op_and_payload(&self) -> (OpCode, Vec<u8>) {
        match self {
            Self::Text(b) => (OpCode::Text, b.clone()),
            Self::Binary(b) => (OpCode::Binary, b.clone()),
            Self::Ping(b) => (OpCode::Ping, b.clone()),
            Self::Pong(b) => (OpCode::Pong, b.clone()),
            Self::Close(None, _) => (OpCode::Close, Vec::new()),
            Self::Close(Some(code), reason) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason);
                (OpCode::Close, p)
            }
        }
    }
}

/// What the shard keeps per connection between reads, and the reading loop
/// it runs (engine/src/shard/reader.rs): bytes land after the partial frame,
/// every whole frame is parsed in place, the rest is kept.
pub struct Conn {
    partial: Vec<u8>,
    asm: Assembler,
    max_payload: usize,
    max_message: usize,
}

impl Conn {
    /// A fresh connection with these limits.
    pub fn new(max_payload: usize, max_message: usize) -> Self {
        Self {
            partial: Vec::new(),
            asm: Assembler::new(max_message),
            max_payload,
            max_message,
        }
    }

    /// One read. Checks every header and message invariant on the way.
    pub fn on_read(&mut self, read: &[u8], out: &mut Vec<Owned>) -> Result<(), WsError> {
        let mut scratch = std::mem::take(&mut self.partial);
        scratch.extend_from_slice(read);
        let mut pos = 0;
        // An incomplete parse must leave the bytes alone (else the next read
        // would unmask them twice); the split-versus-whole comparison in
        // `ws_frame` catches it if not.
        while let Some((h, range)) = parse_client_frame(&mut scratch[pos..], self.max_payload)? {
            check_header(&h, self.max_payload);
            assert_eq!(range, h.header_len..h.frame_len());
            assert!(range.end <= scratch.len() - pos);
            let payload = &scratch[pos + range.start..pos + range.end];
            if let Some(m) = self.asm.push(&h, payload)? {
                out.push(Owned::checked(m, self.max_message));
            }
            pos += range.end;
        }
        self.asm.release();
        let rest = &scratch[pos..];
        if !rest.is_empty() {
            // What the shard would reserve for the partial frame: never more
            // than one whole frame within the limit.
            let need = match check_client_header(rest, self.max_payload)? {
                Some(h) => {
                    check_header(&h, self.max_payload);
                    assert!(h.frame_len() > rest.len(), "whole frame left unparsed");
                    h.frame_len()
                }
                None => {
                    assert!(
                        rest.len() < CLIENT_HEADER_LEN_MAX,
                        "header longer than 14 bytes"
                    );
                    rest.len()
                }
            };
            assert!(need <= CLIENT_HEADER_LEN_MAX.saturating_add(self.max_payload));
            self.partial = rest.to_vec();
        }
        Ok(())
    }

    /// Whether a fragmented message is still in progress.
    pub fn in_progress(&self) -> bool {
        self.asm.in_progress()
    }
}

/// What a checked client header must be.
fn check_header(h: &FrameHeader, max_payload: usize) {
    assert!(h.payload_len <= max_payload, "payload over max_payload");
    assert!(h.mask.is_some(), "client frame without a mask");
    let len_field = match h.payload_len {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    assert_eq!(
        h.header_len,
        2 + len_field + 4,
        "non-minimal length accepted"
    );
    if h.opcode.is_control() {
        assert!(
            h.fin && h.payload_len <= CONTROL_PAYLOAD_MAX,
            "bad control frame"
        );
    }
}

/// Feed `stream` to a fresh connection, cut into reads at `splits`.
/// Returns the messages delivered and the error that stopped it, if any.
pub fn run_reads(
    stream: &[u8],
    splits: &[usize],
    max_payload: usize,
    max_message: usize,
) -> (Vec<Owned>, Option<WsError>, Conn) {
    let mut conn = Conn::new(max_payload, max_message);
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&stream.len())) {
        // Splits may come from a longer stream; keep them in order and in range.
        let s = s.clamp(at, stream.len());
        if let Err(e) = conn.on_read(&stream[at..s], &mut out) {
            return (out, Some(e), conn);
        }
        at = s;
    }
    (out, None, conn)
}

/// The key every token target and seed uses.
pub fn token_key() -> TokenKey {
    TokenKey::from_bytes(*b"tern-fuzz-token-key-32-bytes-...")
}

/// The device `token_verify` connects as.
pub const TOKEN_DEVICE: &str = "phone";

/// The time `token_verify` verifies at (ms since the epoch).
pub const TOKEN_NOW_MS: u64 = 1_700_000_000_000;

/// `token_verify` input modes, by the low bit of the first byte.
pub const TOKEN_MODE_RAW: u8 = 0;
/// Structured mode: mint from fuzzed claims, verify, then tamper.
pub const TOKEN_MODE_MINT: u8 = 1;

/// Longest error message a decoder may produce for any input: the fixed
/// texts are short and client input is echoed at most 32 bytes at a time,
/// so a long message means input is being echoed without a bound.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;

/// The limits both client decoders promise (tern_proto::codec docs).
pub fn check_client_frame_limits(f: &tern_proto::ClientFrame) {
    use tern_proto::{ClientFrame, Kind, RawJson, BODY_BYTES_MAX, SYNC_LIMIT_MAX};
    match f {
        ClientFrame::Send { kind, body, .. } => {
            assert!(body.len() <= BODY_BYTES_MAX, "body over the limit");
            assert!(
                *kind != Kind::Text || body.is_string(),
                "text body not a string"
            );
            assert!(
                RawJson::from_text(body.as_str()).is_ok(),
                "body is not JSON"
            );
        }
        ClientFrame::Sync {
            limit: Some(limit), ..
        } => assert!((1..=SYNC_LIMIT_MAX).contains(limit), "sync limit {limit}"),
        _ => {}
    }
}

/// What a client-frame decode must give, whatever the input: a frame within
/// the limits that round-trips through both encodings, or a refusal with a
/// short, non-empty message.
pub fn check_client_decode(
    decoded: &Result<tern_proto::ClientFrame, tern_proto::codec::DecodeError>,
) {
    use tern_proto::codec::{decode_client, encode_client};
    use tern_proto::Subprotocol::{Json, Rkyv};
    match decoded {
        Ok(f) => {
            check_client_frame_limits(f);
            for sp in [Json, Rkyv] {
                let bytes = encode_client(sp, f);
                assert_eq!(
                    decode_client(sp, &bytes).as_ref(),
                    Ok(f),
                    "{sp:?} round trip"
                );
            }
        }
        Err(e) => {
            assert!(!e.message().is_empty());
            assert!(
                e.message().len() <= ERROR_MESSAGE_BYTES_MAX,
                "{}",
                e.message()
            );
        }
    }
}

/// A decoded server frame round-trips through both encodings.
pub fn check_server_round_trip(f: &tern_proto::ServerFrame) {
    use tern_proto::codec::{decode_server, encode_server};
    use tern_proto::Subprotocol::{Json, Rkyv};
    for sp in [Json, Rkyv] {
        let bytes = encode_server(sp, f);
        assert_eq!(
            decode_server(sp, &bytes).as_ref(),
            Ok(f),
            "{sp:?} round trip"
        );
    }
}
