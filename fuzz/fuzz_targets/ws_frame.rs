//! The WebSocket frame decoder and reassembler, fed like the shard feeds it.
//!
//! Asserts: no panic; every header and message within its limits (see
//! `tern_fuzz::Conn`); cutting the stream into different reads changes
//! nothing (same messages, same error); every decoded message re-encodes as
//! masked (fragmented) client frames and as server frames that decode to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{run_reads, Owned, WsInput};
use tern_wire::ws::codec::{
    close_frame, encode_client_frame, encode_frame, parse_client_frame, OpCode,
};

fuzz_target!(|data: &[u8]| {
    let Some(input) = WsInput::parse(data) else {
        return;
    };
    let whole = run_reads(input.stream, &[], input.max_payload, input.max_message);
    let split = run_reads(
        input.stream,
        &input.splits,
        input.max_payload,
        input.max_message,
    );
    assert_eq!(whole.0, split.0, "messages depend on read boundaries");
    assert_eq!(whole.1, split.1, "error depends on read boundaries");
    assert_eq!(whole.2.in_progress(), split.2.in_progress());

    // Round trip: the messages, re-encoded as client frames (data messages
    // cut into fragments at the split points, control frames in between),
    // decode to the same messages.
    let mask = match input.stream {
        [a, b, c, d, ..] => [*a, *b, *c, *d],
        _ => [0x37, 0xFA, 0x21, 0x3D],
    };
    let mut stream = Vec::new();
    for m in &whole.0 {
        let (op, payload) = m.op_and_payload();
        if op.is_control() {
            encode_client_frame(true, op, &payload, mask, &mut stream);
            continue;
        }
        let mut bounds = vec![0];
        bounds.extend(cuts(&input.splits, payload.len()));
        bounds.push(payload.len());
        let n = bounds.len() - 1;
        for i in 0..n {
            let fin = i + 1 == n;
            let op = if i == 0 { op } else { OpCode::Continuation };
            encode_client_frame(
                fin,
                op,
                &payload[bounds[i]..bounds[i + 1]],
                mask,
                &mut stream,
            );
            if !fin && i == 0 {
                // A control frame may arrive between fragments.
                encode_client_frame(true, OpCode::Pong, &[i as u8], mask, &mut stream);
            }
        }
    }
    let again = run_reads(&stream, &input.splits, usize::MAX, usize::MAX);
    assert_eq!(again.1, None, "re-encoded messages refused");
    let expected: Vec<Owned> = whole
        .0
        .iter()
        .flat_map(|m| {
            let fragmented = match m {
                Owned::Text(p) | Owned::Binary(p) => !cuts(&input.splits, p.len()).is_empty(),
                _ => false,
            };
            let pong = fragmented.then(|| Owned::Pong(vec![0]));
            pong.into_iter().chain(std::iter::once(m.clone()))
        })
        .collect();
    assert_eq!(again.0, expected, "client frame round trip");

    // Server frames: unmasked, FIN, minimal length; read back as a client
    // frame with a zero mask, they carry the same opcode and payload.
    for m in &whole.0 {
        let (op, payload) = m.op_and_payload();
        let mut frame = Vec::new();
        match m {
            Owned::Close(Some(code), reason) => {
                let reason = std::str::from_utf8(reason).expect("checked by the decoder");
                frame = close_frame(*code, reason);
            }
            _ => encode_frame(op, &payload, &mut frame),
        }
        let header_len = match payload.len() {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(frame.len(), header_len + payload.len());
        assert_eq!(frame[0], 0x80 | op.bits());
        assert_eq!(frame[1] & 0x80, 0, "server frame masked");
        let mut as_client = frame[..header_len].to_vec();
        as_client[1] |= 0x80;
        as_client.extend_from_slice(&[0; 4]);
        as_client.extend_from_slice(&frame[header_len..]);
        let (h, range) = parse_client_frame(&mut as_client, usize::MAX)
            .expect("server frame is valid")
            .expect("server frame is whole");
        assert!(h.fin);
        assert_eq!(h.opcode, op);
        assert_eq!(&as_client[range], &payload[..]);
    }
});

/// Where to cut a payload of `len` bytes into fragments: the read splits
/// folded into `0..=len`, sorted, without repeats (empty fragments allowed).
fn cuts(splits: &[usize], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = splits.iter().map(|s| s % (len + 1)).collect();
    c.sort_unstable();
    c.dedup();
    c
}
