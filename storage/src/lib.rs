//! Tern storage: RocksDB schema, the group-commit writer, reads, retention.
//!
//! This is the only crate that names RocksDB; no RocksDB type appears in its
//! public API. It knows nothing about sockets, shards or frames: it stores
//! timeline entries (`tern_proto::Entry`, as opaque storage bytes plus the
//! seq and ts it needs for keys), users, groups and their members, read
//! positions and dedup records.
//!
//! # Layout
//! - `lib.rs`: [`Storage`]: open (never silently over existing files),
//!   recovery reads, blocking reads, user rows, group reads, stats.
//! - `writer.rs`: [`WriterHandle`] and the `tern-writer` thread: bounded
//!   queue → one `WriteBatch` per drain → one WAL sync → [`CommitSink`].
//! - `keys.rs`: key and value layouts of every column family.
//! - `tuning.rs`: every RocksDB option, and the expiry compaction filters.
//! - `error.rs`: [`StorageError`].
//!
//! # Invariants
//! - Only the writer thread writes `msgs`, `convs`, `dedup`, `user_convs`,
//!   `read`, `groups`, `members` and `user_groups`. It holds the committed max seq of every conversation and
//!   writes an entry only if its seq is exactly that + 1, so the stored
//!   timeline of a conversation never has a gap and never reuses a seq.
//!   A group change and its event are one request, so membership and the
//!   timeline that records it are committed together or not at all.
//! - `members` (group, user) and `user_groups` (user, group) hold the same
//!   pairs: every writer request changes both keys of a pair.
//! - A request is reported committed only after its batch's write returned
//!   (with [`Durability::Fsync`]: after the WAL was synced).
//! - `convs` is never filtered or deleted from, so after retention drops old
//!   entries the next seq is still max + 1.

#![warn(missing_docs)]

mod entry;
mod error;
mod keys;
mod tuning;
mod writer;

use hashbrown::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, DBRawIterator, ReadOptions, WriteBatch, WriteOptions, DB};
use tern_proto::{ConvId, Entry, GroupId, UserId};

pub use entry::StoredEntry;
pub use error::StorageError;
pub use writer::{CommitSink, WriteOp, WriteRequest, WriterHandle, BATCH_MAX, WRITE_QUEUE_MAX};

use tuning::{
    CF_CONVS, CF_DEDUP, CF_GROUPS, CF_MEMBERS, CF_META, CF_MSGS, CF_READ, CF_TOKENS_REVOKED,
    CF_USERS, CF_USER_CONVS, CF_USER_GROUPS,
};

/// Schema version written at creation and checked at every open. Bump it
/// when a key or value layout changes incompatibly.
const SCHEMA_VERSION: u32 = 1;
/// `meta` key of the schema version (u32 BE).
const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Most entries one read returns, whatever the caller asks for: bounds the
/// memory of one read. Callers see `has_more` and continue.
pub const READ_LIMIT_MAX: usize = 10_000;
/// Capacity reserved up front for a read's result, so a large `limit` on a
/// short conversation does not allocate for nothing.
const READ_PREALLOC_MAX: usize = 256;
/// Most members [`Storage::group_members`] returns, and most ids in one
/// `GroupChange`'s `add` or `remove`: bounds the memory of loading one
/// group (~100 MB of ids at worst). Far above any group the engine allows.
pub const MEMBERS_MAX: usize = 1_000_000;
/// Most members one [`Storage::members_page`] returns, whatever the caller
/// asks for: bounds the memory of one page. Callers see `more` and continue.
pub const MEMBERS_PAGE_MAX: usize = 10_000;

/// Upper bounds (`le`) of the batch-size histogram, in requests. The last
/// one is [`BATCH_MAX`], so every batch falls in a bucket.
pub const BATCH_SIZE_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/// Upper bounds (`le`) of the commit-latency histogram, in µs; slower
/// commits count only in the implicit `+Inf` bucket (`batch_count`).
pub const COMMIT_LATENCY_US_BUCKETS: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
const _: () = assert!(BATCH_MAX as u64 == BATCH_SIZE_BUCKETS[BATCH_SIZE_BUCKETS.len() - 1]);

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is synced to disk once per batch before anything is reported
    /// committed: a crash loses nothing acknowledged.
    Fsync,
    /// The WAL is written but not synced: survives a process crash, not a
    /// machine crash.
    Os,
    /// No WAL: only flushed memtables survive a crash (clean shutdown
    /// flushes).
    None,
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The RocksDB directory. Created if missing; must be empty or hold a
    /// Tern database.
    pub path: PathBuf,
    /// When a write counts as done.
    pub durability: Durability,
    /// How long a (conv, sender, cmid) stays deduplicated.
    pub dedup_window_ms: u64,
    /// How long timeline entries are kept; 0 keeps them forever.
    pub retention_ms: u64,
    /// With [`Durability::Fsync`], the least time from the start of one
    /// batch's commit to the start of the next: under load the writer
    /// holds a new batch back until then, so more requests share one WAL
    /// sync. A request arriving after a quiet spell is never held. Zero
    /// commits as soon as the previous commit ended. At most
    /// [`SYNC_INTERVAL_MAX`].
    pub sync_interval: std::time::Duration,
}

/// Largest [`StorageOptions::sync_interval`]: it adds up to this much to
/// every acknowledgement under load.
pub const SYNC_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// A user's view of one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvState {
    /// The conversation.
    pub conv: ConvId,
    /// Its committed max seq (0: nothing stored yet).
    pub max_seq: u64,
    /// The user's read position in it (0: nothing read).
    pub read_seq: u64,
}

/// A row of the `users` column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The user.
    pub user: UserId,
    /// Display name.
    pub name: Option<String>,
    /// Opaque JSON metadata, stored as given.
    pub meta_json: Option<String>,
    /// ms since the epoch when the row was first created; kept by upserts.
    pub created_ts: u64,
}

/// The stored form of a [`UserRow`] (the id is the key).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct UserValue {
    name: Option<String>,
    meta_json: Option<String>,
    created_ts: u64,
}

/// A row of the `groups` column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The group.
    pub group: GroupId,
    /// Display name.
    pub name: Option<String>,
    /// Number of members, as maintained by the engine (stored as given).
    pub members_count: u64,
    /// ms since the epoch when the group was created.
    pub created_ts: u64,
}

/// The stored form of a [`GroupRow`] (the id is the key).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct GroupValue {
    name: Option<String>,
    members_count: u64,
    created_ts: u64,
}

/// The `groups` value of a row.
pub(crate) fn encode_group(row: &GroupRow) -> Result<Vec<u8>, StorageError> {
    let value = GroupValue {
        name: row.name.clone(),
        members_count: row.members_count,
        created_ts: row.created_ts,
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value)
        .map_err(|e| StorageError::Invalid(format!("encode group {}: {e}", row.group)))?;
    Ok(bytes.to_vec())
}

/// The row stored as `bytes` under `group`.
fn decode_group(group: &GroupId, bytes: &[u8]) -> Result<GroupRow, StorageError> {
    let value = rkyv::from_bytes::<GroupValue, rkyv::rancor::Error>(bytes)
        .map_err(|e| StorageError::Corrupt(format!("group {group}: {e}")))?;
    Ok(GroupRow {
        group: group.clone(),
        name: value.name,
        members_count: value.members_count,
        created_ts: value.created_ts,
    })
}

/// A snapshot of the storage counters.
///
/// Histograms are Prometheus-style: `(le, cumulative count)` per bound, with
/// `batch_count` as the `+Inf` bucket and `_count`. A snapshot taken while a
/// batch is being counted may miss that batch in some fields; the
/// histograms are clamped to `batch_count`, so they stay monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Batches the writer committed (or tried to).
    pub batches: u64,
    /// Same as `batches`: the `_count` (and `+Inf` bucket) of both
    /// histograms.
    pub batch_count: u64,
    /// Requests per batch: `(le, batches with at most le requests)` for
    /// each bound of [`BATCH_SIZE_BUCKETS`].
    pub batch_size_buckets: Vec<(u64, u64)>,
    /// Time of each batch's commit step (its RocksDB write, WAL sync
    /// included), µs: `(le, batches that took at most le µs)` for each
    /// bound of [`COMMIT_LATENCY_US_BUCKETS`].
    pub commit_latency_us_buckets: Vec<(u64, u64)>,
    /// Timeline entries written.
    pub entries_written: u64,
    /// Sum and max of requests per batch.
    pub batch_size_sum: u64,
    /// Largest batch so far.
    pub batch_size_max: u64,
    /// Sum of the time spent in commit steps (RocksDB writes), µs.
    pub commit_latency_us_sum: u64,
    /// Longest RocksDB write, µs.
    pub commit_latency_us_max: u64,
    /// Requests answered with an error (rejected or failed).
    pub errors: u64,
    /// Requests queued for the writer right now.
    pub queue_depth: u64,
}

/// Per-bucket (not cumulative) counts of a histogram with fixed bounds.
/// Only the writer thread observes; `stats()` accumulates.
struct Histogram {
    bounds: &'static [u64],
    /// `counts[i]`: values in `(bounds[i - 1], bounds[i]]`. Values above the
    /// last bound are counted nowhere here (only in the total).
    counts: Box<[AtomicU64]>,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn observe(&self, v: u64) {
        if let Some(idx) = self.bounds.iter().position(|&le| v <= le) {
            self.counts[idx].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(le, cumulative count)` per bound, each at most `total`.
    fn cumulative(&self, total: u64) -> Vec<(u64, u64)> {
        let mut running = 0u64;
        self.bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(&le, n)| {
                running = running.saturating_add(n.load(Ordering::Relaxed));
                (le, running.min(total))
            })
            .collect()
    }
}

/// The counters behind [`StorageStats`]; only the writer thread adds to
/// them, anyone reads.
struct StatsCounters {
    /// Added to last for each batch (Release), read first (Acquire).
    batches: AtomicU64,
    batch_size_buckets: Histogram,
    commit_latency_us_buckets: Histogram,
    entries_written: AtomicU64,
    batch_size_sum: AtomicU64,
    batch_size_max: AtomicU64,
    commit_latency_us_sum: AtomicU64,
    commit_latency_us_max: AtomicU64,
    errors: AtomicU64,
    /// Shared with the writer: its queue-state word (see `writer.rs`).
    queue_state: Arc<AtomicU64>,
}

impl Default for StatsCounters {
    fn default() -> StatsCounters {
        StatsCounters {
            batches: AtomicU64::new(0),
            batch_size_buckets: Histogram::new(&BATCH_SIZE_BUCKETS),
            commit_latency_us_buckets: Histogram::new(&COMMIT_LATENCY_US_BUCKETS),
            entries_written: AtomicU64::new(0),
            batch_size_sum: AtomicU64::new(0),
            batch_size_max: AtomicU64::new(0),
            commit_latency_us_sum: AtomicU64::new(0),
            commit_latency_us_max: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            queue_state: Arc::new(AtomicU64::new(0)),
        }
    }
}

struct Inner {
    db: DB,
    durability: Durability,
    /// [`StorageOptions::sync_interval`]; zero unless syncing.
    sync_interval: std::time::Duration,
    dedup_window_ms: u64,
    stats: StatsCounters,
    /// Set by the first `start_writer`: two writers would each believe they
    /// own the seq of every conversation.
    writer_started: AtomicBool,
    /// Serializes user upserts and deletes (read-modify-write of a row).
    users_lock: Mutex<()>,
    /// conv key → max seq, loaded from `convs` at open (so a corrupt
    /// `convs` fails the open), handed to the writer by `start_writer`.
    heads: Mutex<HashMap<Vec<u8>, u64>>,
}

/// One answer of [`Storage::dedup_lookup_many`]: the (seq, ts) of the
/// stored send, `None` if there is none in the window.
pub type DedupAnswer = Result<Option<(u64, u64)>, StorageError>;

/// The database. Cheap to clone; all clones share one RocksDB instance.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.inner.db.path())
            .field("durability", &self.inner.durability)
            .finish()
    }
}

/// What is at the data path before opening.
enum DirState {
    /// Missing or empty: create a new database.
    Fresh,
    /// Holds a RocksDB `CURRENT` file: open the existing database.
    Existing,
}

fn inspect_dir(path: &Path) -> Result<DirState, StorageError> {
    let io = |e: std::io::Error| StorageError::Io(format!("{}: {e}", path.display()));
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Fresh),
        Err(e) => return Err(io(e)),
        Ok(m) if !m.is_dir() => {
            return Err(StorageError::NotADatabase(format!(
                "{} exists and is not a directory",
                path.display()
            )))
        }
        Ok(_) => {}
    }
    if std::fs::read_dir(path).map_err(io)?.next().is_none() {
        return Ok(DirState::Fresh);
    }
    if path.join("CURRENT").is_file() {
        Ok(DirState::Existing)
    } else {
        Err(StorageError::NotADatabase(format!(
            "{} is not empty but has no RocksDB CURRENT file; refusing to create a database over \
             existing files (point the data path at an empty or missing directory)",
            path.display()
        )))
    }
}

/// Adds context (the operation, the path) to a RocksDB error.
fn ctx(what: &str, e: rocksdb::Error) -> StorageError {
    match StorageError::from(e) {
        StorageError::Corrupt(m) => StorageError::Corrupt(format!("{what}: {m}")),
        StorageError::Io(m) => StorageError::Io(format!("{what}: {m}")),
        StorageError::Db(m) => StorageError::Db(format!("{what}: {m}")),
        other => other,
    }
}

impl Storage {
    /// Whether `path` is missing or an empty directory: where
    /// [`Storage::open`] would create a new database. Lets a caller that
    /// knows a database must be there (its data dir served before) refuse
    /// to start instead. (Anything else there is opened or refused by
    /// `open` itself.)
    pub fn is_absent(path: &Path) -> bool {
        matches!(inspect_dir(path), Ok(DirState::Fresh))
    }

    /// Opens the database at `opts.path`.
    ///
    /// Creates the DB only when the directory is missing or empty. A
    /// directory with files but no valid DB, or a corrupt DB, is an error
    /// with a clear message (never a silent new DB).
    pub fn open(opts: StorageOptions) -> Result<Storage, StorageError> {
        if opts.sync_interval > SYNC_INTERVAL_MAX {
            return Err(StorageError::Invalid(format!(
                "sync interval {:?} is above {SYNC_INTERVAL_MAX:?}",
                opts.sync_interval
            )));
        }
        let path = &opts.path;
        let state = inspect_dir(path)?;
        let create = matches!(state, DirState::Fresh);
        if create {
            std::fs::create_dir_all(path)
                .map_err(|e| StorageError::Io(format!("create {}: {e}", path.display())))?;
        }
        let (db_opts, cfs) = tuning::db_options(
            opts.durability,
            create,
            opts.retention_ms,
            opts.dedup_window_ms,
        );
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| ctx(&format!("open {}", path.display()), e))?;
        let storage = Storage {
            inner: Arc::new(Inner {
                db,
                durability: opts.durability,
                sync_interval: match opts.durability {
                    Durability::Fsync => opts.sync_interval,
                    Durability::Os | Durability::None => std::time::Duration::ZERO,
                },
                dedup_window_ms: opts.dedup_window_ms,
                stats: StatsCounters::default(),
                writer_started: AtomicBool::new(false),
                users_lock: Mutex::new(()),
                heads: Mutex::new(HashMap::new()),
            }),
        };
        storage.check_schema(create)?;
        let mut heads = HashMap::new();
        storage.scan_raw_heads(|conv, seq| {
            heads.insert(conv.to_vec(), seq);
            Ok(())
        })?;
        *storage.heads_guard() = heads;
        tracing::info!(
            path = %path.display(),
            created = create,
            durability = ?opts.durability,
            "storage open"
        );
        Ok(storage)
    }

    /// Writes the schema version into a new DB, checks it in an old one.
    fn check_schema(&self, created: bool) -> Result<(), StorageError> {
        let meta = self.cf(CF_META)?;
        let db = &self.inner.db;
        let stored = db
            .get_pinned_cf(meta, META_SCHEMA_VERSION)
            .map_err(|e| ctx("read schema version", e))?;
        match stored {
            Some(v) => {
                let v: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("schema version has {} bytes", v.len()))
                })?;
                let v = u32::from_be_bytes(v);
                if v != SCHEMA_VERSION {
                    return Err(StorageError::NotADatabase(format!(
                        "schema version {v}, this build reads {SCHEMA_VERSION}"
                    )));
                }
                Ok(())
            }
            // A DB created by an earlier start that died before this write
            // holds nothing else; anything else without a version is not ours.
            None if created || self.is_blank()? => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, META_SCHEMA_VERSION, SCHEMA_VERSION.to_be_bytes(), &wo)
                    .map_err(|e| ctx("write schema version", e))
            }
            None => Err(StorageError::NotADatabase(
                "a RocksDB database without a Tern schema version".into(),
            )),
        }
    }

    /// True when no column family holds a key.
    fn is_blank(&self) -> Result<bool, StorageError> {
        for name in tuning::ALL_CFS {
            let it = self.scan_from_first(name)?;
            if it.valid() {
                return Ok(false);
            }
            it.status().map_err(|e| ctx("scan", e))?;
        }
        Ok(true)
    }

    /// An iterator at the first key of column family `name`, in total key
    /// order: the hot CFs have prefix extractors (tuning.rs), under which a
    /// default iterator only knows one prefix's keys.
    fn scan_from_first(&self, name: &str) -> Result<DBRawIterator<'_>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(name)?, ro);
        it.seek_to_first();
        Ok(it)
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.inner
            .db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt(format!("column family {name} missing")))
    }

    /// Starts the group-commit writer thread ("tern-writer").
    ///
    /// # Panics
    /// If called twice on the same database: the writer owns the seq of
    /// every conversation, and there can be only one owner.
    pub fn start_writer(&self, sink: Arc<dyn CommitSink>) -> WriterHandle {
        let already = self.inner.writer_started.swap(true, Ordering::SeqCst);
        assert!(!already, "start_writer called twice");
        writer::start(self.clone(), sink)
    }

    // ---- recovery ----

    /// Every conversation and its committed max seq, in key order.
    pub fn conv_heads(&self) -> Result<Vec<(ConvId, u64)>, StorageError> {
        let mut heads = Vec::new();
        self.scan_raw_heads(|key, seq| {
            let conv = parse_conv(key)?;
            heads.push((conv, seq));
            Ok(())
        })?;
        Ok(heads)
    }

    /// Every (conv key bytes, max seq) of `convs`, for the writer's map.
    fn scan_raw_heads(
        &self,
        mut f: impl FnMut(&[u8], u64) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut it = self.scan_from_first(CF_CONVS)?;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let seq = keys::decode_u64(v).ok_or_else(|| {
                StorageError::Corrupt(format!("convs value of {} bytes", v.len()))
            })?;
            f(k, seq)?;
            it.next();
        }
        it.status().map_err(|e| ctx("scan convs", e))
    }

    /// Every user whose tokens were revoked, with the revocation time (ms).
    pub fn revoked_users(&self) -> Result<Vec<(UserId, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut it = self.scan_from_first(CF_TOKENS_REVOKED)?;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let at = keys::decode_u64(v).ok_or_else(|| {
                StorageError::Corrupt(format!("tokens_revoked value of {} bytes", v.len()))
            })?;
            out.push((parse_user(k)?, at));
            it.next();
        }
        it.status().map_err(|e| ctx("scan tokens_revoked", e))?;
        Ok(out)
    }

    // ---- reads ----

    /// The entries of `conv` with seq > `after`, in seq order, at most
    /// `limit` (and at most [`READ_LIMIT_MAX`]); `has_more` when more follow.
    pub fn read_entries(
        &self,
        conv: &ConvId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let mut out = Vec::with_capacity(limit.min(READ_PREALLOC_MAX));
        let has_more = self.scan_entries(conv, after, limit, |seq, bytes| {
            let entry = Entry::from_storage_bytes(bytes)
                .map_err(|e| StorageError::Corrupt(format!("entry {conv} seq {seq}: {e}")))?;
            debug_assert_eq!(entry.seq(), seq, "entry seq differs from its key");
            out.push(entry);
            Ok(())
        })?;
        Ok((out, has_more))
    }

    /// Like [`Storage::read_entries`], but returns each entry's storage
    /// bytes (`Entry::to_storage_bytes`) without decoding them.
    pub fn read_entries_raw(
        &self,
        conv: &ConvId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StorageError> {
        let mut out = Vec::with_capacity(limit.min(READ_PREALLOC_MAX));
        let has_more = self.scan_entries(conv, after, limit, |_, bytes| {
            out.push(bytes.to_vec());
            Ok(())
        })?;
        Ok((out, has_more))
    }

    /// Calls `f(seq, entry bytes)` for up to `limit` entries after `after`;
    /// returns whether more entries follow.
    fn scan_entries(
        &self,
        conv: &ConvId,
        after: u64,
        limit: usize,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<bool, StorageError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(false);
        };
        let limit = limit.min(READ_LIMIT_MAX);
        let conv_key = conv.to_text();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(conv_key.as_bytes()));
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(CF_MSGS)?, ro);
        it.seek(keys::msg_key(conv_key.as_bytes(), first));
        let mut n_read = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if n_read == limit {
                return Ok(true);
            }
            let seq = keys::msg_key_seq(k)
                .ok_or_else(|| StorageError::Corrupt(format!("msgs key of {conv}")))?;
            let (_ts, bytes) = keys::split_msg_value(v)
                .ok_or_else(|| StorageError::Corrupt(format!("msgs value {conv} seq {seq}")))?;
            f(seq, bytes)?;
            n_read += 1;
            it.next();
        }
        it.status().map_err(|e| ctx("scan msgs", e))?;
        Ok(false)
    }

    /// The (seq, ts) first assigned to (conv, sender, cmid), unless that was
    /// longer than the dedup window before `now_ms` (expired → `None`).
    /// `conv` is the conversation's text ([`ConvId::to_text`]), which the
    /// send path already holds.
    pub fn dedup_lookup(
        &self,
        conv: &str,
        sender: &str,
        cmid: &str,
        now_ms: u64,
    ) -> Result<Option<(u64, u64)>, StorageError> {
        let Some(key) = keys::dedup_key(conv.as_bytes(), sender.as_bytes(), cmid.as_bytes()) else {
            // Such a sender can never have been recorded.
            return Ok(None);
        };
        let found = self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_DEDUP)?, key)
            .map_err(|e| ctx("dedup lookup", e))?;
        self.dedup_found(found.as_deref(), now_ms)
    }

    /// [`Storage::dedup_lookup`] of many (conv, sender, cmid) keys, in their
    /// order, in one RocksDB `MultiGet`: the memtables' and files' filters
    /// are probed for all keys together, their cache misses overlapped.
    pub fn dedup_lookup_many(
        &self,
        lookups: &[(&str, &str, &str)],
        now_ms: u64,
    ) -> Vec<DedupAnswer> {
        let cf = match self.cf(CF_DEDUP) {
            Ok(cf) => cf,
            Err(e) => return lookups.iter().map(|_| Err(e.clone())).collect(),
        };
        let keys: Vec<Option<Vec<u8>>> = lookups
            .iter()
            .map(|(c, s, m)| keys::dedup_key(c.as_bytes(), s.as_bytes(), m.as_bytes()))
            .collect();
        // Such a sender can never have been recorded: not asked. The asked
        // keys go in sorted (bytewise, the CF's comparator), so RocksDB
        // does not sort them again through its virtual comparator, which
        // cost more than the lookups' own filter probes (callgrind).
        let mut asked: Vec<(&[u8], usize)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((k.as_deref()?, i)))
            .collect();
        asked.sort_unstable_by(|x, y| x.0.cmp(y.0));
        let answers = self
            .inner
            .db
            .batched_multi_get_cf(cf, asked.iter().map(|&(k, _)| k), true);
        let mut by_key: Vec<Option<DedupAnswer>> = keys
            .iter()
            .map(|k| k.is_none().then_some(Ok(None)))
            .collect();
        for (&(_, i), answer) in asked.iter().zip(answers) {
            by_key[i] = Some(match answer {
                Ok(v) => self.dedup_found(v.as_deref(), now_ms),
                Err(e) => Err(ctx("dedup lookup", e)),
            });
        }
        by_key
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(StorageError::Corrupt(
                        "MultiGet answered too few keys".into(),
                    ))
                })
            })
            .collect()
    }

    /// A dedup row as read: its (seq, ts) unless expired at `now_ms`.
    fn dedup_found(
        &self,
        v: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Option<(u64, u64)>, StorageError> {
        let Some(v) = v else {
            return Ok(None);
        };
        let (seq, ts) = keys::decode_dedup_value(v)
            .ok_or_else(|| StorageError::Corrupt(format!("dedup value of {} bytes", v.len())))?;
        if now_ms.saturating_sub(ts) > self.inner.dedup_window_ms {
            return Ok(None);
        }
        Ok(Some((seq, ts)))
    }

    /// The dm conversations indexed for `user` (by `WriteOp::Append`'s
    /// `index_users`), each with its max seq and this user's read seq.
    pub fn user_dm_convs(&self, user: &UserId) -> Result<Vec<ConvState>, StorageError> {
        let user_key = user.as_str().as_bytes();
        self.pair_seconds(CF_USER_CONVS, user_key)?
            .iter()
            .map(|conv| self.state_of(user_key, conv))
            .collect()
    }

    /// The second halves of every `first 0x00 second` key of `cf_name`
    /// (an index scan such as `user_convs` or `user_groups`), in key order.
    fn pair_seconds(&self, cf_name: &str, first: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(first));
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(cf_name)?, ro);
        it.seek(keys::prefix_start(first));
        let mut seconds = Vec::new();
        while let Some(k) = it.key() {
            let (_, second) = keys::split_pair(k)
                .ok_or_else(|| StorageError::Corrupt(format!("{cf_name} key without separator")))?;
            seconds.push(second.to_vec());
            it.next();
        }
        it.status()
            .map_err(|e| ctx(&format!("scan {cf_name}"), e))?;
        Ok(seconds)
    }

    /// `user`'s view of `conv`; zeros for a conversation never written.
    pub fn conv_state(&self, user: &UserId, conv: &ConvId) -> Result<ConvState, StorageError> {
        self.state_of(user.as_str().as_bytes(), conv.to_text().as_bytes())
    }

    fn state_of(&self, user: &[u8], conv: &[u8]) -> Result<ConvState, StorageError> {
        let db = &self.inner.db;
        let max_seq = match db
            .get_pinned_cf(self.cf(CF_CONVS)?, conv)
            .map_err(|e| ctx("read convs", e))?
        {
            Some(v) => {
                keys::decode_u64(&v).ok_or_else(|| StorageError::Corrupt("convs value".into()))?
            }
            None => 0,
        };
        let read_seq = self.read_seq(user, conv)?;
        Ok(ConvState {
            conv: parse_conv(conv)?,
            max_seq,
            read_seq,
        })
    }

    /// The stored read seq of (user, conv); 0 when none.
    fn read_seq(&self, user: &[u8], conv: &[u8]) -> Result<u64, StorageError> {
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_READ)?, keys::pair_key(user, conv))
            .map_err(|e| ctx("read read-seq", e))?
        {
            Some(v) => {
                keys::decode_u64(&v).ok_or_else(|| StorageError::Corrupt("read value".into()))
            }
            None => Ok(0),
        }
    }

    // ---- groups ----

    /// The group's row, if it exists.
    pub fn get_group(&self, group: &GroupId) -> Result<Option<GroupRow>, StorageError> {
        let Some(v) = self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_GROUPS)?, group.as_str())
            .map_err(|e| ctx("read group", e))?
        else {
            return Ok(None);
        };
        decode_group(group, &v).map(Some)
    }

    /// Every member of the group, in user-id byte order; at most
    /// [`MEMBERS_MAX`] (the rest is left out, with a warning in the log).
    pub fn group_members(&self, group: &GroupId) -> Result<Vec<UserId>, StorageError> {
        let (members, more) = self.scan_members(group, None, MEMBERS_MAX, READ_PREALLOC_MAX)?;
        if more {
            tracing::warn!(%group, "group has more than {MEMBERS_MAX} members; listing cut short");
        }
        Ok(members)
    }

    /// The members after `after` (exclusive; from the first when `None`), in
    /// user-id byte order, at most `limit` (and at most
    /// [`MEMBERS_PAGE_MAX`]); `more` when more members follow.
    pub fn members_page(
        &self,
        group: &GroupId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<UserId>, bool), StorageError> {
        let limit = limit.min(MEMBERS_PAGE_MAX);
        self.scan_members(group, after, limit, limit.min(READ_PREALLOC_MAX))
    }

    /// Up to `limit` members after `after`, and whether more follow.
    fn scan_members(
        &self,
        group: &GroupId,
        after: Option<&UserId>,
        limit: usize,
        prealloc: usize,
    ) -> Result<(Vec<UserId>, bool), StorageError> {
        let g = group.as_str().as_bytes();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(g));
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(CF_MEMBERS)?, ro);
        match after {
            // `g 0x00 u 0x00` is the first key after `g 0x00 u`: ids have no
            // 0x00, so nothing sorts between them.
            Some(u) => it.seek(keys::pair_key(
                &keys::pair_key(g, u.as_str().as_bytes()),
                &[],
            )),
            None => it.seek(keys::prefix_start(g)),
        }
        let mut out = Vec::with_capacity(prealloc);
        while let Some(k) = it.key() {
            if out.len() == limit {
                return Ok((out, true));
            }
            let (_, user) = keys::split_pair(k)
                .ok_or_else(|| StorageError::Corrupt("members key without separator".into()))?;
            out.push(parse_user(user)?);
            it.next();
        }
        it.status().map_err(|e| ctx("scan members", e))?;
        Ok((out, false))
    }

    /// Whether `user` is a member of `group`.
    pub fn is_member(&self, group: &GroupId, user: &UserId) -> Result<bool, StorageError> {
        let key = keys::pair_key(group.as_str().as_bytes(), user.as_str().as_bytes());
        Ok(self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_MEMBERS)?, key)
            .map_err(|e| ctx("read members", e))?
            .is_some())
    }

    /// One state per group `user` is a member of (conv `group:<id>`, its
    /// max seq, the user's read seq), in group-id byte order.
    pub fn user_groups(&self, user: &UserId) -> Result<Vec<ConvState>, StorageError> {
        let user_key = user.as_str().as_bytes();
        self.pair_seconds(CF_USER_GROUPS, user_key)?
            .iter()
            .map(|group| {
                let conv = ConvId::Group(parse_group(group)?).to_string();
                self.state_of(user_key, conv.as_bytes())
            })
            .collect()
    }

    /// Every conversation of `user`: [`Storage::user_dm_convs`] and
    /// [`Storage::user_groups`], sorted by conversation id text.
    pub fn user_convs_all(&self, user: &UserId) -> Result<Vec<ConvState>, StorageError> {
        let mut all = self.user_dm_convs(user)?;
        all.extend(self.user_groups(user)?);
        all.sort_by_cached_key(|c| c.conv.to_text());
        Ok(all)
    }

    // ---- users ----

    /// The user's row, if it exists.
    pub fn get_user(&self, user: &UserId) -> Result<Option<UserRow>, StorageError> {
        let Some(v) = self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_USERS)?, user.as_str())
            .map_err(|e| ctx("read user", e))?
        else {
            return Ok(None);
        };
        let value = rkyv::from_bytes::<UserValue, rkyv::rancor::Error>(&v)
            .map_err(|e| StorageError::Corrupt(format!("user {}: {e}", user.as_str())))?;
        Ok(Some(UserRow {
            user: user.clone(),
            name: value.name,
            meta_json: value.meta_json,
            created_ts: value.created_ts,
        }))
    }

    /// Whether the user's row exists.
    pub fn user_exists(&self, user: &UserId) -> Result<bool, StorageError> {
        Ok(self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_USERS)?, user.as_str())
            .map_err(|e| ctx("read user", e))?
            .is_some())
    }

    /// Upsert (created_ts kept from an existing row). Synchronous write,
    /// synced per durability. Returns the row as stored.
    pub fn put_user(&self, row: &UserRow) -> Result<UserRow, StorageError> {
        let _guard = self.users_guard();
        let created_ts = match self.get_user(&row.user)? {
            Some(old) => old.created_ts,
            None => row.created_ts,
        };
        let value = UserValue {
            name: row.name.clone(),
            meta_json: row.meta_json.clone(),
            created_ts,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value)
            .map_err(|e| StorageError::Invalid(format!("encode user: {e}")))?;
        self.inner
            .db
            .put_cf_opt(
                self.cf(CF_USERS)?,
                row.user.as_str(),
                &bytes,
                &self.write_options(),
            )
            .map_err(|e| ctx("write user", e))?;
        Ok(UserRow {
            created_ts,
            ..row.clone()
        })
    }

    /// Deletes the row and records `revoked_at_ms` in `tokens_revoked` (one
    /// atomic batch). `Ok(false)` if the user does not exist (nothing is
    /// recorded then).
    pub fn delete_user(&self, user: &UserId, revoked_at_ms: u64) -> Result<bool, StorageError> {
        let _guard = self.users_guard();
        if !self.user_exists(user)? {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_USERS)?, user.as_str());
        batch.put_cf(
            self.cf(CF_TOKENS_REVOKED)?,
            user.as_str(),
            revoked_at_ms.to_be_bytes(),
        );
        self.inner
            .db
            .write_opt(batch, &self.write_options())
            .map_err(|e| ctx("delete user", e))?;
        Ok(true)
    }

    fn heads_guard(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, u64>> {
        // Poison-tolerant for the same reason as `users_guard`: the map is
        // only ever replaced whole.
        self.inner
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The heads loaded at open, for the one writer.
    fn take_heads(&self) -> HashMap<Vec<u8>, u64> {
        std::mem::take(&mut *self.heads_guard())
    }

    /// Flushes every memtable to SST files (all CFs together).
    fn flush_all(&self) -> Result<(), StorageError> {
        let cfs = tuning::ALL_CFS
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(|e| ctx("flush", e))
    }

    fn users_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data, so a panic while holding it left nothing
        // half-done: a poisoned lock is as good as a healthy one.
        self.inner
            .users_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write options for the configured durability.
    fn write_options(&self) -> WriteOptions {
        write_options(self.inner.durability)
    }

    /// A snapshot of the counters (a few dozen atomic loads).
    pub fn stats(&self) -> StorageStats {
        let s = &self.inner.stats;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // First, so the histograms loaded after it hold every batch it counts.
        let batches = s.batches.load(Ordering::Acquire);
        StorageStats {
            batches,
            batch_count: batches,
            batch_size_buckets: s.batch_size_buckets.cumulative(batches),
            commit_latency_us_buckets: s.commit_latency_us_buckets.cumulative(batches),
            entries_written: ld(&s.entries_written),
            batch_size_sum: ld(&s.batch_size_sum),
            batch_size_max: ld(&s.batch_size_max),
            commit_latency_us_sum: ld(&s.commit_latency_us_sum),
            commit_latency_us_max: ld(&s.commit_latency_us_max),
            errors: ld(&s.errors),
            queue_depth: writer::queued(ld(&s.queue_state)),
        }
    }

    /// Runs a full compaction of the expiring column families (`msgs`,
    /// `dedup`) now, so retention and the dedup window apply at once rather
    /// than at the next background compaction. For tests and operators.
    pub fn compact_expiring(&self) -> Result<(), StorageError> {
        for name in [CF_MSGS, CF_DEDUP] {
            let cf = self.cf(name)?;
            // Flush first: compaction filters see only SST data.
            self.inner.db.flush_cf(cf).map_err(|e| ctx("flush", e))?;
            self.inner
                .db
                .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

/// Write options for a durability mode.
fn write_options(durability: Durability) -> WriteOptions {
    let mut wo = WriteOptions::default();
    match durability {
        Durability::Fsync => wo.set_sync(true),
        Durability::Os => wo.set_sync(false),
        Durability::None => wo.disable_wal(true),
    }
    wo
}

fn parse_conv(key: &[u8]) -> Result<ConvId, StorageError> {
    let s = std::str::from_utf8(key)
        .map_err(|_| StorageError::Corrupt("conv key is not UTF-8".into()))?;
    ConvId::parse(s).map_err(|e| StorageError::Corrupt(format!("conv key {s:?}: {e}")))
}

fn parse_group(key: &[u8]) -> Result<GroupId, StorageError> {
    let s = std::str::from_utf8(key)
        .map_err(|_| StorageError::Corrupt("group key is not UTF-8".into()))?;
    GroupId::parse(s).map_err(|e| StorageError::Corrupt(format!("group key {s:?}: {e}")))
}

fn parse_user(key: &[u8]) -> Result<UserId, StorageError> {
    let s = std::str::from_utf8(key)
        .map_err(|_| StorageError::Corrupt("user key is not UTF-8".into()))?;
    UserId::parse(s).map_err(|e| StorageError::Corrupt(format!("user key {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let h = Histogram::new(&[1, 4, 10]);
        for v in [0, 1, 2, 4, 5, 10, 11, u64::MAX] {
            h.observe(v);
        }
        // le=1: 0, 1; le=4: + 2, 4; le=10: + 5, 10; 11 and MAX only in +Inf.
        assert_eq!(h.cumulative(8), vec![(1, 2), (4, 4), (10, 6)]);
        // A total that lags behind a concurrent observe clamps the buckets.
        assert_eq!(h.cumulative(3), vec![(1, 2), (4, 3), (10, 3)]);
    }

    proptest! {
        #[test]
        fn group_rows_round_trip(
            name in proptest::option::of(".{0,40}"),
            members_count: u64,
            created_ts: u64,
        ) {
            let row = GroupRow {
                group: GroupId::parse("g-1.x@y").unwrap(),
                name,
                members_count,
                created_ts,
            };
            let bytes = encode_group(&row).unwrap();
            prop_assert_eq!(decode_group(&row.group, &bytes).unwrap(), row);
        }
    }

    #[test]
    fn a_garbled_group_row_is_corrupt_not_a_panic() {
        let g = GroupId::parse("g").unwrap();
        assert!(matches!(
            decode_group(&g, &[0xFF; 3]),
            Err(StorageError::Corrupt(_))
        ));
    }
}
