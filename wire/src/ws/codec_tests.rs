use proptest::prelude::*;

use super::*;

/// The limit the tests run with (PROTOCOL.md's default client frame limit).
const MAX: usize = 64 * 1024;

/// The masking key of RFC 6455 5.7's examples.
const RFC_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An owned [`Message`], for comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

impl From<Message<'_>> for Owned {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Text(b) => Self::Text(b.to_vec()),
            Message::Binary(b) => Self::Binary(b.to_vec()),
            Message::Ping(b) => Self::Ping(b.to_vec()),
            Message::Pong(b) => Self::Pong(b.to_vec()),
            Message::Close(c, b) => Self::Close(c, b.to_vec()),
        }
    }
}

fn client(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(fin, op, payload, RFC_MASK, &mut out);
    out
}

/// Decode every frame of `bytes` (which must hold whole frames) through
/// check, parse and an assembler; the first error ends it.
fn decode_all(bytes: &[u8], max_payload: usize, max_message: usize) -> Result<Vec<Owned>, WsError> {
    let mut buf = bytes.to_vec();
    let mut asm = Assembler::new(max_message);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let Some((h, range)) = parse_client_frame(&mut buf[pos..], max_payload)? else {
            panic!("incomplete frame at {pos}");
        };
        let payload = &buf[pos + range.start..pos + range.end];
        if let Some(m) = asm.push(&h, payload)? {
            out.push(m.into());
        }
        pos += range.end;
    }
    Ok(out)
}

fn decode_err(bytes: &[u8]) -> WsError {
    match decode_all(bytes, MAX, MAX) {
        Err(e) => e,
        Ok(m) => panic!("expected an error, decoded {m:?}"),
    }
}

fn assert_err(bytes: &[u8], close_code: u16) {
    let err = decode_err(bytes);
    assert_eq!(err.close_code(), close_code, "{err:?}");
}

// ---- RFC 6455 5.7 examples ----

#[test]
fn rfc_single_frame_masked_text() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(client(true, OpCode::Text, b"Hello"), bytes);
    let mut buf = bytes;
    let (h, range) = parse_client_frame(&mut buf, MAX).unwrap().unwrap();
    assert!(h.fin);
    assert_eq!(h.opcode, OpCode::Text);
    assert_eq!(h.mask, Some(RFC_MASK));
    assert_eq!((h.payload_len, h.header_len), (5, 6));
    assert_eq!(&buf[range], b"Hello");
}

#[test]
fn rfc_single_frame_unmasked_text_is_the_server_encoding() {
    let mut out = Vec::new();
    encode_frame(OpCode::Text, b"Hello", &mut out);
    assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
}

#[test]
fn rfc_fragmented_text() {
    let mut bytes = client(false, OpCode::Text, b"Hel");
    bytes.extend(client(true, OpCode::Continuation, b"lo"));
    assert_eq!(bytes[0], 0x01);
    assert_eq!(bytes[3 + 6], 0x80);
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![Owned::Text(b"Hello".to_vec())])
    );
}

#[test]
fn rfc_ping_and_pong() {
    let mut out = Vec::new();
    encode_frame(OpCode::Ping, b"Hello", &mut out);
    assert_eq!(out, [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    let mut out = Vec::new();
    encode_frame(OpCode::Pong, b"Hello", &mut out);
    assert_eq!(out, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    let mut bytes = client(true, OpCode::Ping, b"Hello");
    bytes.extend(client(true, OpCode::Pong, b"Hello"));
    assert_eq!(bytes[..2], [0x89, 0x85]);
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![
            Owned::Ping(b"Hello".to_vec()),
            Owned::Pong(b"Hello".to_vec())
        ])
    );
}

#[test]
fn rfc_256_bytes_uses_16_bit_length() {
    let payload = vec![0xAB; 256];
    let (h, n) = frame_header(OpCode::Binary, 256);
    assert_eq!(h[..n], [0x82, 0x7E, 0x01, 0x00]);
    let bytes = client(true, OpCode::Binary, &payload);
    assert_eq!(bytes[..4], [0x82, 0xFE, 0x01, 0x00]);
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![Owned::Binary(payload)])
    );
}

#[test]
fn rfc_64_kib_uses_64_bit_length() {
    let payload: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let (h, n) = frame_header(OpCode::Binary, 65536);
    assert_eq!(h[..n], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    let bytes = client(true, OpCode::Binary, &payload);
    assert_eq!(bytes[..10], [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![Owned::Binary(payload)])
    );
}

#[test]
fn length_encoding_boundaries_are_minimal() {
    for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        assert_eq!(frame_header(OpCode::Binary, len).1, header_len, "len {len}");
        let bytes = client(true, OpCode::Binary, &vec![7; len]);
        let h = check_client_frame(&bytes, usize::MAX).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (len, header_len + 4));
        assert_eq!(h.frame_len(), bytes.len());
    }
}

// ---- incompleteness ----

#[test]
fn every_strict_prefix_is_incomplete() {
    for len in [0, 5, 200, 70_000] {
        let bytes = client(true, OpCode::Binary, &vec![1; len]);
        let cuts: Vec<usize> = if len < 300 {
            (0..bytes.len()).collect()
        } else {
            (0..20).chain(bytes.len() - 3..bytes.len()).collect()
        };
        for n in cuts {
            assert_eq!(
                check_client_frame(&bytes[..n], usize::MAX),
                Ok(None),
                "len {len} cut {n}"
            );
            let mut copy = bytes[..n].to_vec();
            assert_eq!(parse_client_frame(&mut copy, usize::MAX), Ok(None));
            assert_eq!(copy, bytes[..n], "incomplete parse must not unmask");
        }
    }
}

#[test]
fn header_tells_the_needed_length_before_the_payload() {
    let bytes = client(true, OpCode::Binary, &[9; 300]);
    assert_eq!(check_client_header(&bytes[..7], MAX), Ok(None));
    let h = check_client_header(&bytes[..8], MAX).unwrap().unwrap();
    assert_eq!(h.frame_len(), bytes.len());
    assert_eq!(check_client_frame(&bytes[..8], MAX), Ok(None));
}

// ---- protocol errors, each with its close code ----

#[test]
fn rsv_bits_are_protocol_errors() {
    for rsv in [0x40, 0x20, 0x10] {
        let mut bytes = client(true, OpCode::Text, b"x");
        bytes[0] |= rsv;
        assert_err(&bytes, 1002);
        // Decided from the first byte alone.
        assert!(check_client_frame(&bytes[..1], MAX).is_err());
    }
}

#[test]
fn reserved_opcodes_are_protocol_errors() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut bytes = client(true, OpCode::Binary, b"x");
        bytes[0] = 0x80 | op;
        assert_err(&bytes, 1002);
        assert!(check_client_frame(&bytes[..1], MAX).is_err(), "opcode {op}");
    }
}

#[test]
fn unmasked_client_frame_is_a_protocol_error() {
    let mut out = Vec::new();
    encode_frame(OpCode::Text, b"Hello", &mut out);
    assert_err(&out, 1002);
    assert!(check_client_frame(&out[..2], MAX).is_err());
}

#[test]
fn fragmented_control_frames_are_protocol_errors() {
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let bytes = client(false, op, b"");
        assert_err(&bytes, 1002);
        assert!(check_client_frame(&bytes[..1], MAX).is_err());
    }
}

#[test]
fn control_payload_over_125_is_a_protocol_error() {
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let ok = client(true, op, &[b'a'; CONTROL_PAYLOAD_MAX]);
        assert!(
            check_client_frame(&ok, MAX).unwrap().is_some(),
            "{op:?} of 125 bytes"
        );
        let bytes = client(true, op, &[b'a'; CONTROL_PAYLOAD_MAX + 1]);
        assert_err(&bytes, 1002);
        assert!(check_client_frame(&bytes[..2], MAX).is_err());
    }
}

#[test]
fn non_minimal_lengths_are_protocol_errors() {
    // 5 bytes in the 16-bit form.
    let mut bytes = vec![0x82, 0xFE, 0x00, 0x05];
    bytes.extend(RFC_MASK);
    bytes.extend([0; 5]);
    assert_err(&bytes, 1002);
    // 125 in the 16-bit form.
    let mut bytes = vec![0x82, 0xFE, 0x00, 125];
    bytes.extend(RFC_MASK);
    assert_eq!(
        check_client_frame(&bytes, MAX).map_err(|e| e.close_code()),
        Err(1002)
    );
    // 300 in the 64-bit form.
    let mut bytes = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0x01, 0x2C];
    bytes.extend(RFC_MASK);
    assert_eq!(
        check_client_frame(&bytes, MAX).map_err(|e| e.close_code()),
        Err(1002)
    );
    // 65535 in the 64-bit form.
    let bytes = [0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
    assert_eq!(
        check_client_frame(&bytes, usize::MAX).map_err(|e| e.close_code()),
        Err(1002)
    );
}

#[test]
fn top_bit_of_64_bit_length_is_a_protocol_error() {
    let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        check_client_frame(&bytes, usize::MAX),
        Err(WsError::Protocol("64-bit length with the top bit set"))
    );
    assert_eq!(WsError::Protocol("").close_code(), 1002);
}

#[test]
fn oversized_frame_is_too_large_from_the_header_alone() {
    let bytes = client(true, OpCode::Binary, &vec![0; MAX + 1]);
    // Only the 10-byte length header: no payload, no mask yet.
    assert_eq!(
        check_client_frame(&bytes[..10], MAX),
        Err(WsError::TooLarge)
    );
    assert_eq!(WsError::TooLarge.close_code(), 1009);
    let bytes = client(true, OpCode::Binary, &[0; 200]);
    assert_eq!(check_client_frame(&bytes[..4], 199), Err(WsError::TooLarge));
    assert!(check_client_frame(&bytes, 200).unwrap().is_some());
    // The largest 64-bit length (top bit clear) is too large, not a panic.
    let bytes = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(
        check_client_frame(&bytes, (usize::MAX >> 1) - 1),
        Err(WsError::TooLarge)
    );
}

#[test]
fn continuation_without_start_is_a_protocol_error() {
    assert_err(&client(true, OpCode::Continuation, b"lo"), 1002);
    assert_err(&client(false, OpCode::Continuation, b"lo"), 1002);
    // Also after a finished fragmented message.
    let mut bytes = client(false, OpCode::Text, b"Hel");
    bytes.extend(client(true, OpCode::Continuation, b"lo"));
    bytes.extend(client(true, OpCode::Continuation, b"!"));
    assert_err(&bytes, 1002);
}

#[test]
fn new_message_during_fragments_is_a_protocol_error() {
    for op in [OpCode::Text, OpCode::Binary] {
        let mut bytes = client(false, OpCode::Binary, b"ab");
        bytes.extend(client(true, op, b"cd"));
        assert_err(&bytes, 1002);
    }
}

#[test]
fn message_over_the_limit_is_too_large() {
    let mut bytes = client(false, OpCode::Binary, &[1; 60]);
    bytes.extend(client(false, OpCode::Continuation, &[2; 40]));
    bytes.extend(client(true, OpCode::Continuation, &[3; 1]));
    assert_eq!(decode_all(&bytes, MAX, 100), Err(WsError::TooLarge));
    assert!(decode_all(&bytes, MAX, 101).is_ok());
    // A single frame over max_message (but under max_payload).
    let bytes = client(true, OpCode::Text, &[b'a'; 101]);
    assert_eq!(
        decode_all(&bytes, MAX, 100).map_err(|e| e.close_code()),
        Err(1009)
    );
}

#[test]
fn invalid_utf8_text_is_1007() {
    assert_err(&client(true, OpCode::Text, &[0xFF, 0xFE]), 1007);
    // Split in the middle of a character: valid once complete.
    let snow = "☃".as_bytes();
    let mut bytes = client(false, OpCode::Text, &snow[..1]);
    bytes.extend(client(true, OpCode::Continuation, &snow[1..]));
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![Owned::Text(snow.to_vec())])
    );
    // Invalid across fragments.
    let mut bytes = client(false, OpCode::Text, b"ok");
    bytes.extend(client(true, OpCode::Continuation, &snow[..2]));
    assert_err(&bytes, 1007);
    // Binary is never validated.
    assert!(decode_all(&client(true, OpCode::Binary, &[0xFF]), MAX, MAX).is_ok());
}

#[test]
fn control_frames_interleave_with_fragments() {
    let mut bytes = client(false, OpCode::Binary, b"a");
    bytes.extend(client(true, OpCode::Ping, b"p"));
    bytes.extend(client(false, OpCode::Continuation, b"b"));
    bytes.extend(client(true, OpCode::Pong, b""));
    bytes.extend(client(true, OpCode::Continuation, b"c"));
    assert_eq!(
        decode_all(&bytes, MAX, MAX),
        Ok(vec![
            Owned::Ping(b"p".to_vec()),
            Owned::Pong(vec![]),
            Owned::Binary(b"abc".to_vec())
        ])
    );
}

#[test]
fn close_payloads() {
    let close = |payload: &[u8]| decode_all(&client(true, OpCode::Close, payload), MAX, MAX);
    assert_eq!(close(b""), Ok(vec![Owned::Close(None, vec![])]));
    assert_eq!(
        close(&[0x03, 0xE8]),
        Ok(vec![Owned::Close(Some(1000), vec![])])
    );
    assert_eq!(
        close(b"\x0f\xa0bye"),
        Ok(vec![Owned::Close(Some(4000), b"bye".to_vec())])
    );
    assert_eq!(close(&[0x03]).map_err(|e| e.close_code()), Err(1002));
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend([0xC3, 0x28]);
    assert_eq!(close(&bad_reason).map_err(|e| e.close_code()), Err(1007));
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        assert!(close(&u16::to_be_bytes(code)).is_ok(), "code {code}");
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            close(&u16::to_be_bytes(code)).map_err(|e| e.close_code()),
            Err(1002),
            "code {code}"
        );
    }
}

#[test]
fn assembler_holds_memory_only_while_fragmented() {
    let mut asm = Assembler::new(MAX);
    let start = FrameHeader {
        fin: false,
        opcode: OpCode::Text,
        mask: None,
        payload_len: 3,
        header_len: 2,
    };
    let end = FrameHeader {
        fin: true,
        opcode: OpCode::Continuation,
        payload_len: 2,
        ..start
    };
    let whole = FrameHeader {
        fin: true,
        opcode: OpCode::Binary,
        payload_len: 2,
        ..start
    };
    assert_eq!(
        asm.push(&whole, b"hi").map(|m| m.map(Owned::from)),
        Ok(Some(Owned::Binary(b"hi".to_vec())))
    );
    assert_eq!(
        asm.buf.capacity(),
        0,
        "unfragmented messages are not copied"
    );
    assert_eq!(asm.push(&start, b"Hel"), Ok(None));
    assert!(asm.in_progress());
    assert_eq!(
        asm.push(&end, b"lo").map(|m| m.map(Owned::from)),
        Ok(Some(Owned::Text(b"Hello".to_vec())))
    );
    assert!(!asm.in_progress());
    asm.release();
    assert_eq!(asm.buf.capacity(), 0);
    assert_eq!(asm.state, State::Idle);
}

#[test]
fn close_frame_encodes_code_and_cut_reason() {
    let f = close_frame(1000, "bye");
    assert_eq!(f, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
    // A reason of 200 two-byte characters is cut at a character boundary.
    let long = "é".repeat(200);
    let f = close_frame(4409, &long);
    assert_eq!(f[1] as usize, 2 + 122);
    assert!(std::str::from_utf8(&f[4..]).is_ok());
    assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4409);
}

#[test]
fn apply_mask_round_trips_at_every_length_and_offset() {
    let mask = [1, 2, 3, 4];
    for len in 0..40 {
        let data: Vec<u8> = (0..len as u8).collect();
        let mut masked = data.clone();
        apply_mask(mask, &mut masked);
        let expected: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(masked, expected, "len {len}");
        apply_mask(mask, &mut masked);
        assert_eq!(masked, data);
    }
}

// ---- property tests: the shard's read loop ----

/// What a test client sends: a whole message, fragmented or not, with pings
/// between fragments.
#[derive(Debug, Clone)]
struct Sent {
    text: bool,
    payload: Vec<u8>,
    /// Cut points inside the payload (sorted, deduplicated).
    cuts: Vec<usize>,
    /// For each fragment after the first, whether a ping precedes it.
    pings: Vec<bool>,
    mask: [u8; 4],
}

/// Text must be UTF-8: map random bytes to 1- to 4-byte characters, then cut
/// at a character boundary so the length stays `bytes.len()` at most.
fn to_text(bytes: &[u8]) -> Vec<u8> {
    let mut s = String::with_capacity(bytes.len() + 4);
    for &b in bytes {
        match b {
            0..=0xBF => s.push(char::from(b & 0x7F)),
            0xC0..=0xDF => s.push('é'),
            0xE0..=0xEF => s.push('☃'),
            _ => s.push('🦀'),
        }
    }
    let mut end = bytes.len().min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn sent_message(len_max: usize) -> impl Strategy<Value = Sent> {
    let small = proptest::collection::vec(any::<u8>(), 0..300.min(len_max));
    let payload = if len_max > 60_000 {
        // Mostly small (around the 7/16-bit boundary), some over 64 KiB.
        prop_oneof![3 => small, 1 => proptest::collection::vec(any::<u8>(), 60_000..len_max)]
            .boxed()
    } else {
        small.boxed()
    };
    (
        any::<bool>(),
        payload,
        proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        any::<[u8; 4]>(),
    )
        .prop_flat_map(|(text, payload, cut_idx, mask)| {
            let payload = if text { to_text(&payload) } else { payload };
            let mut cuts: Vec<usize> = cut_idx.iter().map(|i| i.index(payload.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let n_pings = cuts.len();
            (
                Just((text, payload, cuts, mask)),
                proptest::collection::vec(any::<bool>(), n_pings),
            )
        })
        .prop_map(|((text, payload, cuts, mask), pings)| Sent {
            text,
            payload,
            cuts,
            pings,
            mask,
        })
}

impl Sent {
    /// The client's frames, and the messages the server should see.
    fn encode(&self, out: &mut Vec<u8>, expected: &mut Vec<Owned>) {
        let mut bounds = vec![0];
        bounds.extend(&self.cuts);
        bounds.push(self.payload.len());
        let n_fragments = bounds.len() - 1;
        for i in 0..n_fragments {
            let part = &self.payload[bounds[i]..bounds[i + 1]];
            if i > 0 && self.pings[i - 1] {
                let ping = [i as u8; 3];
                encode_client_frame(true, OpCode::Ping, &ping, self.mask, out);
                expected.push(Owned::Ping(ping.to_vec()));
            }
            let op = match (i, self.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            encode_client_frame(i + 1 == n_fragments, op, part, self.mask, out);
        }
        expected.push(if self.text {
            Owned::Text(self.payload.clone())
        } else {
            Owned::Binary(self.payload.clone())
        });
    }
}

/// The per-connection state the shard keeps.
struct Conn {
    partial: Vec<u8>,
    asm: Assembler,
}

/// Biggest message in the property tests (above 64 KiB to exercise the
/// 64-bit length form).
const PROP_MAX: usize = 80_000;

impl Conn {
    fn new() -> Self {
        Self {
            partial: Vec::new(),
            asm: Assembler::new(PROP_MAX),
        }
    }

    /// One read: like the shard, the bytes land in a scratch buffer (here
    /// after the partial frame), every whole frame is parsed, the rest kept.
    fn on_read(&mut self, read: &[u8], out: &mut Vec<Owned>) -> Result<(), WsError> {
        let mut scratch = std::mem::take(&mut self.partial);
        scratch.extend_from_slice(read);
        let mut pos = 0;
        while let Some((h, range)) = parse_client_frame(&mut scratch[pos..], PROP_MAX)? {
            let payload = &scratch[pos + range.start..pos + range.end];
            if let Some(m) = self.asm.push(&h, payload)? {
                out.push(m.into());
            }
            pos += range.end;
        }
        self.asm.release();
        let rest = &scratch[pos..];
        if !rest.is_empty() {
            // Reserve the whole frame once its header tells the length.
            let need = check_client_header(rest, PROP_MAX)?.map_or(rest.len(), |h| h.frame_len());
            assert!(need >= rest.len());
            self.partial = Vec::with_capacity(need);
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }
}

fn run_split(stream: &[u8], splits: &[usize]) -> Result<(Vec<Owned>, Conn), WsError> {
    let mut conn = Conn::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&stream.len())) {
        conn.on_read(&stream[at..s], &mut out)?;
        at = s;
    }
    Ok((out, conn))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn messages_survive_any_split(
        sent in proptest::collection::vec(sent_message(70_000), 1..5),
        split_idx in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for s in &sent {
            s.encode(&mut stream, &mut expected);
        }
        let mut splits: Vec<usize> = split_idx.iter().map(|i| i.index(stream.len() + 1)).collect();
        splits.sort_unstable();
        let (got, conn) = run_split(&stream, &splits).unwrap();
        prop_assert_eq!(&got, &expected);
        prop_assert!(conn.partial.is_empty() && conn.partial.capacity() == 0);
        prop_assert!(!conn.asm.in_progress());

        // Small streams: also one byte per read, the worst case.
        if stream.len() <= 2_000 {
            let every: Vec<usize> = (1..stream.len()).collect();
            let (got, _) = run_split(&stream, &every).unwrap();
            prop_assert_eq!(&got, &expected);
        }
    }

    #[test]
    fn small_streams_survive_every_single_split(sent in proptest::collection::vec(sent_message(120), 1..3)) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for s in &sent {
            s.encode(&mut stream, &mut expected);
        }
        for cut in 0..=stream.len() {
            let (got, _) = run_split(&stream, &[cut]).unwrap();
            prop_assert_eq!(&got, &expected, "cut at {}", cut);
        }
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        split in any::<prop::sample::Index>(),
    ) {
        let cut = split.index(bytes.len() + 1);
        // Errors are fine; panics and unbounded buffering are not.
        if let Ok((_, conn)) = run_split(&bytes, &[cut]) {
            prop_assert!(conn.partial.len() <= CLIENT_HEADER_LEN_MAX + PROP_MAX);
        }
        let _ = check_client_header(&bytes, 0);
        let _ = check_client_frame(&bytes, usize::MAX);
    }

    #[test]
    fn random_frames_never_panic(
        frames in proptest::collection::vec(
            (any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..200), any::<[u8; 4]>(), any::<u8>()),
            0..8,
        ),
    ) {
        // Well-framed but semantically random: any opcode, fin, payload,
        // sometimes a flipped RSV or length byte.
        let mut stream = Vec::new();
        for (fin, op, payload, mask, noise) in &frames {
            let start = stream.len();
            encode_client_frame(*fin, OpCode::Binary, payload, *mask, &mut stream);
            stream[start] = (stream[start] & 0xF0) | op;
            if noise % 7 == 0 {
                stream[start] ^= noise & 0x70;
            }
        }
        let _ = run_split(&stream, &[stream.len() / 2]);
    }

    #[test]
    fn server_frames_have_minimal_headers(len in 0usize..200_000, op in 0usize..5) {
        let op = [OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong][op];
        let (h, n) = frame_header(op, len);
        prop_assert_eq!(h[0], 0x80 | op.bits());
        prop_assert_eq!(h[1] & 0x80, 0);
        let expected_n = if len <= 125 { 2 } else if len <= 65535 { 4 } else { 10 };
        prop_assert_eq!(n, expected_n);
        // Decodes as the same length when masked (as a client would send it).
        let mut masked = h[..n].to_vec();
        masked[1] |= 0x80;
        masked.extend([0; 4]);
        if !op.is_control() || len <= CONTROL_PAYLOAD_MAX {
            let d = check_client_header(&masked, usize::MAX).unwrap().unwrap();
            prop_assert_eq!(d.payload_len, len);
        }
    }
}

/// A server frame as a client would send it: mask bit set and a zero mask
/// (which leaves the payload as is), so the client-frame parser reads it.
fn server_as_client(frame: &[u8]) -> Vec<u8> {
    let header_len = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = frame[..header_len].to_vec();
    out[1] |= MASK_BIT;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame[header_len..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// encode_frame / decode: every server frame is one whole FIN frame that
    /// decodes to the same opcode and payload, and nothing after it.
    #[test]
    fn server_frames_round_trip(
        op in 0usize..5,
        payload in prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), 65_000..70_000),
        ],
        prefix in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let op = [OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong][op];
        let payload = if op.is_control() { &payload[..payload.len().min(CONTROL_PAYLOAD_MAX)] } else { &payload[..] };
        let mut out = prefix.clone();
        encode_frame(op, payload, &mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        let mut frame = server_as_client(&out[prefix.len()..]);
        let (h, range) = parse_client_frame(&mut frame, usize::MAX).unwrap().unwrap();
        prop_assert!(h.fin);
        prop_assert_eq!(h.opcode, op);
        prop_assert_eq!(range.end, frame.len());
        prop_assert_eq!(&frame[range], payload);
    }

    /// close_frame / Assembler: code and (cut) reason come back, and the
    /// frame is always a valid control frame.
    #[test]
    fn close_frames_round_trip(code in 1000u16..5000, reason in "\\PC{0,80}") {
        prop_assume!(close_code::is_valid_on_wire(code));
        let mut frame = server_as_client(&close_frame(code, &reason));
        let (h, range) = parse_client_frame(&mut frame, CONTROL_PAYLOAD_MAX).unwrap().unwrap();
        let mut asm = Assembler::new(0);
        let Some(Message::Close(got_code, got_reason)) = asm.push(&h, &frame[range]).unwrap() else {
            panic!("not a close");
        };
        prop_assert_eq!(got_code, Some(code));
        let got_reason = std::str::from_utf8(got_reason).unwrap();
        prop_assert!(got_reason.len() <= CLOSE_REASON_MAX);
        prop_assert!(reason.starts_with(got_reason));
        // Cut only when needed, and then at the last char boundary that fits.
        if reason.len() <= CLOSE_REASON_MAX {
            prop_assert_eq!(got_reason, reason.as_str());
        } else {
            let next = reason[got_reason.len()..].chars().next().unwrap();
            prop_assert!(got_reason.len() + next.len_utf8() > CLOSE_REASON_MAX);
        }
    }

    /// encode_client_frame / parse_client_frame: header fields, masking and
    /// payload survive for every length form and mask.
    #[test]
    fn client_frames_round_trip(
        fin in any::<bool>(),
        op in 0usize..3,
        payload in prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), 65_530..65_540),
        ],
        mask in any::<[u8; 4]>(),
    ) {
        let op = [OpCode::Continuation, OpCode::Text, OpCode::Binary][op];
        let mut frame = Vec::new();
        encode_client_frame(fin, op, &payload, mask, &mut frame);
        if payload.len() >= 4 && mask != [0; 4] {
            // Masked on the wire.
            prop_assert_ne!(&frame[frame.len() - payload.len()..], &payload[..]);
        }
        let (h, range) = parse_client_frame(&mut frame, payload.len()).unwrap().unwrap();
        prop_assert_eq!((h.fin, h.opcode, h.mask, h.payload_len), (fin, op, Some(mask), payload.len()));
        prop_assert_eq!(&frame[range], &payload[..]);
    }
}
