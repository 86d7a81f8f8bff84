//! Fan-out planning: partition a group's members by home shard into one
//! `Arc<[UserId]>` per shard, as the owner shard does before pushing.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_benches::fanout;

/// Group sizes.
const MEMBERS: [usize; 2] = [1_000, 10_000];
/// Shard counts: this machine, and a large box.
const SHARDS: [usize; 2] = [2, 32];

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_plan");
    for n in MEMBERS {
        let members = fanout::members(n);
        g.throughput(Throughput::Elements(n as u64));
        for shards in SHARDS {
            g.bench_with_input(
                BenchmarkId::new(format!("{shards}_shards"), n),
                &members,
                |b, m| b.iter(|| fanout::plan(black_box(m), shards)),
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = tern_benches::config::criterion();
    targets = bench_fanout
}
criterion_main!(benches);
