//! Helpers shared by the storage tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::sync::{Arc, Mutex};

use tern_proto::{ConvId, Entry, Kind, Msg, RawJson, UserId};
use tern_storage::{
    CommitSink, Durability, Storage, StorageError, StorageOptions, StoredEntry, WriteOp,
    WriteRequest, WriterHandle,
};

/// 24 h, the protocol's default dedup window.
pub const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// 30 days, the protocol's default retention.
pub const RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

/// A ts that neither retention nor the dedup window reaches while the tests
/// run (year 2096): compactions must not drop what a test wants to read.
pub const FRESH_TS: u64 = 4_000_000_000_000;

pub fn options(path: &Path, durability: Durability) -> StorageOptions {
    StorageOptions {
        path: path.to_path_buf(),
        durability,
        dedup_window_ms: DEDUP_WINDOW_MS,
        retention_ms: RETENTION_MS,
        sync_interval: std::time::Duration::ZERO,
    }
}

pub fn open(path: &Path) -> Storage {
    Storage::open(options(path, Durability::Fsync)).expect("open")
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).expect("user id")
}

pub fn conv(s: &str) -> ConvId {
    ConvId::parse(s).expect("conv id")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A text message of `conv` with the given seq and ts.
pub fn entry(conv: &ConvId, seq: u64, ts: u64) -> Entry {
    Entry::Msg(Msg {
        conv: conv.to_string(),
        seq,
        from: "alice".into(),
        device: "phone".into(),
        cmid: format!("c{seq}"),
        kind: Kind::Text,
        body: RawJson::from_text(format!("\"hello {seq}\"")).expect("json"),
        ts,
    })
}

/// [`entry`], encoded for an append.
pub fn stored(conv: &ConvId, seq: u64, ts: u64) -> StoredEntry {
    StoredEntry::new(conv, &entry(conv, seq, ts)).expect("a valid entry")
}

pub fn append(conv: &ConvId, seq: u64, ts: u64) -> WriteOp {
    WriteOp::Append {
        conv: conv.clone(),
        entry: stored(conv, seq, ts),
        dedup: None,
        index_users: Vec::new(),
    }
}

pub fn req(reply_to: u32, token: u64, op: WriteOp) -> WriteRequest {
    WriteRequest {
        reply_to,
        token,
        op,
    }
}

pub type Results = Vec<(u64, Result<(), StorageError>)>;

/// Records every sink call.
#[derive(Default)]
pub struct CollectSink {
    pub calls: Mutex<Vec<(u32, Results)>>,
}

impl CommitSink for CollectSink {
    fn committed(&self, reply_to: u32, results: Results) {
        self.calls.lock().expect("lock").push((reply_to, results));
    }

    fn unrecoverable(&self, error: &StorageError) -> ! {
        panic!("storage batch with an unknown outcome: {error}");
    }
}

impl CollectSink {
    /// All results, flattened in call order.
    pub fn all(&self) -> Vec<(u32, u64, Result<(), StorageError>)> {
        let calls = self.calls.lock().expect("lock");
        calls
            .iter()
            .flat_map(|(r, res)| res.iter().map(move |(t, x)| (*r, *t, x.clone())))
            .collect()
    }

    /// The result of `token`; panics unless it was reported exactly once.
    pub fn result_of(&self, token: u64) -> Result<(), StorageError> {
        let all = self.all();
        let mut hits = all.iter().filter(|(_, t, _)| *t == token);
        let (_, _, r) = hits.next().expect("token reported");
        assert!(hits.next().is_none(), "token {token} reported twice");
        r.clone()
    }
}

/// Starts a writer with a fresh collecting sink.
pub fn writer(storage: &Storage) -> (WriterHandle, Arc<CollectSink>) {
    let sink = Arc::new(CollectSink::default());
    let handle = storage.start_writer(sink.clone());
    (handle, sink)
}

/// Waits (up to 10 s) until the sink has seen `n` results.
pub fn wait_results(sink: &CollectSink, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.all().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} results"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Appends seqs `from..=to` to `conv` (tokens = seqs) and waits for them.
pub fn append_range(
    w: &WriterHandle,
    sink: &CollectSink,
    conv: &ConvId,
    from: u64,
    to: u64,
    ts: u64,
) {
    let before = sink.all().len();
    let reqs = (from..=to)
        .map(|s| req(0, s, append(conv, s, ts)))
        .collect();
    w.submit_many(reqs).expect("submit");
    wait_results(sink, before + (to + 1 - from) as usize);
    for (_, token, r) in sink.all().into_iter().skip(before) {
        assert_eq!(r, Ok(()), "append of seq {token}");
    }
}
