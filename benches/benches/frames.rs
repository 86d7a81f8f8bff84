//! tern-proto frame encoding and decoding, `tern.v1.json` against
//! `tern.v1.rkyv`: what the engine does per frame (decode a client `send`,
//! encode a `msg` once per subprotocol) and what a client does (encode a
//! `send`, decode a `msg`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_proto::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, Kind, Msg, RawJson,
    ServerFrame, Subprotocol,
};

/// Body sizes (bytes of text): a chat line, a paragraph, a large message.
const BODY_SIZES: [usize; 3] = [16, 256, 4096];
const SPS: [(Subprotocol, &str); 2] = [(Subprotocol::Json, "json"), (Subprotocol::Rkyv, "rkyv")];

fn body(n: usize) -> RawJson {
    let text: String = "hello world ".chars().cycle().take(n).collect();
    RawJson::from_text(format!("\"{text}\"")).expect("a JSON string")
}

fn send_frame(n: usize) -> ClientFrame {
    ClientFrame::Send {
        cmid: "0f3a9c21.17.12345".into(),
        to: "user:bob-the-receiver".into(),
        kind: Kind::Text,
        body: body(n),
    }
}

fn msg_frame(n: usize) -> ServerFrame {
    ServerFrame::Msg(Msg {
        conv: "dm:alice-the-sender:bob-the-receiver".into(),
        seq: 1_234_567,
        from: "alice-the-sender".into(),
        device: "phone".into(),
        cmid: "0f3a9c21.17.12345".into(),
        kind: Kind::Text,
        body: body(n),
        ts: 1_767_225_600_000,
    })
}

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto");
    for n in BODY_SIZES {
        g.throughput(Throughput::Elements(1));
        for (sp, name) in SPS {
            let send = send_frame(n);
            let send_bytes = encode_client(sp, &send);
            let msg = msg_frame(n);
            let msg_bytes = encode_server(sp, &msg);
            g.bench_with_input(
                BenchmarkId::new(format!("decode_client_send/{name}"), n),
                &send_bytes,
                |b, bytes| b.iter(|| decode_client(sp, black_box(bytes)).expect("decodes")),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("encode_server_msg/{name}"), n),
                &msg,
                |b, f| b.iter(|| encode_server(sp, black_box(f))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("encode_client_send/{name}"), n),
                &send,
                |b, f| b.iter(|| encode_client(sp, black_box(f))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("decode_server_msg/{name}"), n),
                &msg_bytes,
                |b, bytes| b.iter(|| decode_server(sp, black_box(bytes)).expect("decodes")),
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = tern_benches::config::criterion();
    targets = bench_frames
}
criterion_main!(benches);
