//! Group commit: submit N appends to the storage writer, wait until all N
//! are reported committed. One case per durability (`Fsync`: one WAL sync
//! per batch; `None`: no WAL) and batch size N from 1 to 1024. The
//! throughput is appends per second; with `Fsync`, N = 1 is one fsync per
//! message, and larger N shows what batching buys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_proto::{ConvId, Entry, Kind, Msg, RawJson, UserId};
use tern_storage::{
    CommitSink, Durability, Storage, StorageError, StorageOptions, StoredEntry, WriteOp,
    WriteRequest,
};

/// Batch sizes (requests submitted before waiting).
const BATCHES: [usize; 6] = [1, 4, 16, 64, 256, 1024];
/// Bound for one batch to commit; a stuck writer fails the bench.
const COMMIT_WAIT: Duration = Duration::from_secs(60);
/// Samples per case: each fsync case is slow, and 10 is criterion's minimum.
const SAMPLES: usize = 10;

/// Counts committed requests and wakes the waiting bench thread.
#[derive(Default)]
struct CountingSink {
    done: Mutex<u64>,
    cv: Condvar,
    errors: AtomicU64,
}

impl CommitSink for CountingSink {
    fn committed(&self, _reply_to: u32, results: Vec<(u64, Result<(), StorageError>)>) {
        let errors = results.iter().filter(|(_, r)| r.is_err()).count() as u64;
        self.errors.fetch_add(errors, Ordering::Relaxed);
        let mut d = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *d += results.len() as u64;
        self.cv.notify_all();
    }

    fn unrecoverable(&self, error: &StorageError) -> ! {
        panic!("storage batch with an unknown outcome: {error}");
    }
}

impl CountingSink {
    fn wait_for(&self, target: u64) {
        let deadline = Instant::now() + COMMIT_WAIT;
        let mut d = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *d < target {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "writer did not commit within {COMMIT_WAIT:?}"
            );
            d = self
                .cv
                .wait_timeout(d, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        assert_eq!(self.errors.load(Ordering::Relaxed), 0, "appends failed");
    }
}

/// One open database with its writer and the next seq of the bench's
/// conversation.
struct Db {
    _dir: tempfile::TempDir,
    _storage: Storage,
    writer: tern_storage::WriterHandle,
    sink: Arc<CountingSink>,
    conv: ConvId,
    next_seq: u64,
    submitted: u64,
    body: RawJson,
}

impl Db {
    fn open(durability: Durability) -> Db {
        let dir = tempfile::Builder::new()
            .prefix("tern-bench-")
            .tempdir()
            .expect("temp dir");
        let storage = Storage::open(StorageOptions {
            path: dir.path().join("db"),
            durability,
            dedup_window_ms: 86_400_000,
            retention_ms: 0,
            sync_interval: std::time::Duration::ZERO,
        })
        .expect("open storage");
        let sink = Arc::new(CountingSink::default());
        let writer = storage.start_writer(sink.clone());
        Db {
            _dir: dir,
            _storage: storage,
            writer,
            sink,
            conv: ConvId::parse("dm:alice:bob").expect("conv id"),
            next_seq: 1,
            submitted: 0,
            body: RawJson::from_text("\"a typical short chat message, about sixty bytes long\"")
                .expect("json"),
        }
    }

    /// A request as the owner shard makes it for a dm send (with its dedup
    /// record).
    fn request(&mut self) -> WriteRequest {
        let seq = self.next_seq;
        self.next_seq += 1;
        let cmid = format!("c{seq}");
        let msg = Msg {
            conv: self.conv.to_string(),
            seq,
            from: "alice".into(),
            device: "phone".into(),
            cmid: cmid.clone(),
            kind: Kind::Text,
            body: self.body.clone(),
            ts: 1_767_225_600_000 + seq,
        };
        WriteRequest {
            reply_to: 0,
            token: seq,
            op: WriteOp::Append {
                conv: self.conv.clone(),
                entry: StoredEntry::new(&self.conv, &Entry::Msg(msg)).expect("a valid entry"),
                dedup: Some((UserId::parse("alice").expect("user id"), cmid)),
                index_users: Vec::new(),
            },
        }
    }

    /// Submits `n` appends and waits for all of them.
    fn batch(&mut self, n: usize) {
        let reqs: Vec<WriteRequest> = (0..n).map(|_| self.request()).collect();
        self.writer.submit_many(reqs).expect("submit");
        self.submitted += n as u64;
        self.sink.wait_for(self.submitted);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.writer.shutdown();
    }
}

fn bench_commit(c: &mut Criterion) {
    for (durability, name) in [(Durability::Fsync, "fsync"), (Durability::None, "none")] {
        let mut g = c.benchmark_group(format!("storage_commit/{name}"));
        g.sample_size(SAMPLES);
        let mut db = Db::open(durability);
        for n in BATCHES {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        db.batch(n);
                    }
                    t.elapsed()
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = tern_benches::config::criterion();
    targets = bench_commit
}
criterion_main!(benches);
