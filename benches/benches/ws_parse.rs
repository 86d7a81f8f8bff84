//! The engine's WebSocket codec on the read path: check and parse masked
//! client frames (unmasking in place) and hand them to the assembler, one
//! frame at a time and as a buffer of many small frames (what one read of
//! a busy connection holds).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_engine::ws::codec::{encode_client_frame, parse_client_frame, Assembler, OpCode};

/// Payload sizes: a small frame, a typical send, a large one.
const PAYLOAD_SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// The engine's default client frame limit.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Frames in the "batch" case.
const BATCH_FRAMES: usize = 100;
/// Payload of each frame in the batch case.
const BATCH_PAYLOAD: usize = 200;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frame(n: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    encode_client_frame(true, OpCode::Binary, &payload, MASK, &mut out);
    out
}

/// Parses every frame in `buf` (unmasking each payload in place, which
/// toggles it: the cost is the same either way) and feeds the assembler.
fn parse_all(buf: &mut [u8], asm: &mut Assembler) -> usize {
    let mut at = 0;
    let mut bytes = 0;
    while let Ok(Some((h, range))) = parse_client_frame(&mut buf[at..], MAX_PAYLOAD) {
        let payload = &buf[at + range.start..at + range.end];
        if let Ok(Some(_)) = asm.push(&h, payload) {
            bytes += payload.len();
        }
        at += range.end;
    }
    bytes
}

fn bench_ws(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_parse");
    for n in PAYLOAD_SIZES {
        let mut buf = frame(n);
        let mut asm = Assembler::new(MAX_PAYLOAD);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(BenchmarkId::new("one_frame", n), |b| {
            b.iter(|| parse_all(black_box(&mut buf), &mut asm))
        });
    }
    let mut batch = Vec::new();
    for _ in 0..BATCH_FRAMES {
        batch.extend_from_slice(&frame(BATCH_PAYLOAD));
    }
    let mut asm = Assembler::new(MAX_PAYLOAD);
    g.throughput(Throughput::Elements(BATCH_FRAMES as u64));
    g.bench_function(
        BenchmarkId::new("batch_of_frames", format!("{BATCH_FRAMES}x{BATCH_PAYLOAD}")),
        |b| b.iter(|| parse_all(black_box(&mut batch), &mut asm)),
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = tern_benches::config::criterion();
    targets = bench_ws
}
criterion_main!(benches);
