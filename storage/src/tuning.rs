//! RocksDB options, in one place, and the expiry compaction filters.

use std::ffi::CStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, MemtableFactory, Options,
    SliceTransform,
};

use crate::keys::{self, DEDUP_TS_OFFSET, MSG_TS_OFFSET};
use crate::Durability;

/// Timeline entries: `conv 0x00 seq_be` → `ts_be ++ entry`.
pub(crate) const CF_MSGS: &str = "msgs";
/// `conv` → max seq. Never filtered, so a seq is never reused.
pub(crate) const CF_CONVS: &str = "convs";
/// `user` → rkyv `UserValue`.
pub(crate) const CF_USERS: &str = "users";
/// `group` → rkyv `GroupValue`.
pub(crate) const CF_GROUPS: &str = "groups";
/// `group 0x00 user` → (): the members of a group.
pub(crate) const CF_MEMBERS: &str = "members";
/// `user 0x00 group` → (): the groups of a user (same pairs as `members`).
pub(crate) const CF_USER_GROUPS: &str = "user_groups";
/// `user 0x00 conv` → (): the dm conversations of a user.
pub(crate) const CF_USER_CONVS: &str = "user_convs";
/// `user 0x00 conv` → read seq.
pub(crate) const CF_READ: &str = "read";
/// `conv 0x00 sender 0x00 cmid` → `seq_be ++ ts_be`; expires.
pub(crate) const CF_DEDUP: &str = "dedup";
/// `user` → revoked_at ms.
pub(crate) const CF_TOKENS_REVOKED: &str = "tokens_revoked";
/// Schema version and other bookkeeping.
pub(crate) const CF_META: &str = "meta";

/// Every column family, in creation order.
pub(crate) const ALL_CFS: [&str; 11] = [
    CF_MSGS,
    CF_CONVS,
    CF_USERS,
    CF_GROUPS,
    CF_MEMBERS,
    CF_USER_GROUPS,
    CF_USER_CONVS,
    CF_READ,
    CF_DEDUP,
    CF_TOKENS_REVOKED,
    CF_META,
];

/// Column families read by point lookups: they get a bloom filter.
/// (`members` is also scanned by prefix; a whole-key filter does not slow
/// scans, which never consult it.)
const POINT_READ_CFS: [&str; 8] = [
    CF_CONVS,
    CF_USERS,
    CF_GROUPS,
    CF_MEMBERS,
    CF_READ,
    CF_DEDUP,
    CF_TOKENS_REVOKED,
    CF_META,
];

/// One LRU block cache shared by all column families, so a cold CF does not
/// hold memory a hot one needs. Small next to the connection budget.
const BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Memtable size of `msgs`, the only CF with real write volume: big enough
/// that flushes are few and L0 files are not tiny.
const MSGS_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable size of `dedup`: one row per message sent with a cmid, so it
/// fills about as fast as `msgs` counts entries (an 8 MiB one filled every
/// 2 s at 44 k sends/s).
const DEDUP_WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Memtable size of `convs`: one head row per conversation per commit, so
/// it holds many versions of few keys. An 8 MiB one filled with 128 k
/// versions in 8 s at 20 k paced dm sends/s, and each switch starts a new
/// WAL file in the commit path.
const CONVS_WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Memtable size of every other CF: they hold small rows.
const SMALL_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Memtables a write-heavy CF (`msgs`, `dedup`, `convs`) may hold, the active one
/// included, before writes stop for a flush. RocksDB's default of 2 left no
/// slack: with the shard's core busy, the low-priority flush of one full
/// memtable did not finish before the next one filled, and every write
/// stopped for 100-350 ms every 2 s (measured at 44 k paced dm sends/s, LOG
/// "Stopping writes because we have 2 immutable memtables").
const HOT_WRITE_BUFFERS_MAX: i32 = 4;
/// Hash buckets of a hot CF's memtable (8 bytes each, per memtable). With
/// one skiplist over the whole memtable, each insert walked it from the top
/// and missed the cache at every node: at 20 k paced dm sends/s the insert
/// (`InlineSkipList::FindSpliceForLevel`) was 22% of the core. Per bucket,
/// a conversation's entries arrive in order and the list is short.
const HOT_MEMTABLE_BUCKETS: usize = 1 << 16;
/// Height and branching of each bucket's skiplist (RocksDB's defaults).
const HOT_MEMTABLE_SKIPLIST_HEIGHT: i32 = 4;
const HOT_MEMTABLE_SKIPLIST_BRANCHING: i32 = 4;
/// Total WAL size that forces a flush of the CF holding the oldest WAL:
/// with many CFs a quiet one would otherwise pin old WAL files forever and
/// make recovery replay gigabytes.
const MAX_TOTAL_WAL_BYTES: u64 = 512 << 20;
/// Share of a memtable's size given to its whole-key bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// Bits per key of the bloom filters: ~1% false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Flush + compaction threads. The machine's cores belong to the shards;
/// background work should not take more than a fraction of them.
const BACKGROUND_JOBS: i32 = 4;
/// Files RocksDB keeps open. The process limit is shared with a very large
/// number of client sockets.
const MAX_OPEN_FILES: i32 = 1024;
/// Sync SST/WAL data in 1 MiB steps instead of one long stall at the end.
const BYTES_PER_SYNC: u64 = 1 << 20;
/// Rewrite every SST of `msgs`/`dedup` at least this often so the expiry
/// filters see data that no regular compaction touches (a quiet DB).
const EXPIRY_COMPACTION_SECS: u64 = 24 * 3600;
/// RocksDB info LOG files kept, and the size at which one is rotated.
const INFO_LOG_FILES_KEPT: usize = 5;
const INFO_LOG_FILE_BYTES: usize = 16 << 20;

/// The DB-wide options and one descriptor per column family.
///
/// `create` allows creating the DB and its column families; it is false for
/// an existing DB except that missing column families (a newer schema adding
/// one) are always created.
pub(crate) fn db_options(
    durability: Durability,
    create: bool,
    retention_ms: u64,
    dedup_window_ms: u64,
) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut db = Options::default();
    db.create_if_missing(create);
    db.create_missing_column_families(true);
    // Refuse to open on checksum mismatches rather than serve wrong data.
    db.set_paranoid_checks(true);
    db.set_max_background_jobs(BACKGROUND_JOBS);
    // Hash memtables (below) do not take concurrent inserts; there is one
    // writer thread anyway.
    db.set_allow_concurrent_memtable_write(false);
    // Flushes and compactions run at lower CPU priority than the shards:
    // when they share a core (a pinned single-core deployment, or any busy
    // box) the message path keeps the CPU and compaction uses the idle time
    // (measured: LZ4 flush work on the shard's core was a source of p99
    // spikes). Without this Env they would compete as equals.
    if let Ok(mut env) = rocksdb::Env::new() {
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        db.set_env(&env);
    }
    db.set_max_open_files(MAX_OPEN_FILES);
    db.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    db.set_bytes_per_sync(BYTES_PER_SYNC);
    db.set_keep_log_file_num(INFO_LOG_FILES_KEPT);
    db.set_max_log_file_size(INFO_LOG_FILE_BYTES);
    // Without a WAL, only flushed memtables survive a crash. Flushing all
    // CFs together keeps `msgs` and `convs` consistent with each other, so a
    // recovered max seq is never below a stored entry (no seq reuse).
    // With a WAL, recovery replays whole batches and this is not needed.
    db.set_atomic_flush(durability == Durability::None);
    // The default recovery mode (point in time) is what we want: after a
    // crash a torn WAL tail holds only writes that were never acknowledged
    // as fsynced; everything before it is recovered.

    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = ALL_CFS
        .iter()
        .map(|&name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            let point_read = POINT_READ_CFS.contains(&name);
            if point_read {
                table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
                table.set_cache_index_and_filter_blocks(true);
                table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            }
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            if point_read {
                // Point reads on the send path (dedup, user exists) mostly
                // miss, and recent keys live in the memtable: a memtable
                // bloom filter answers those misses without a skiplist walk
                // (measured: the walk was ~2% of a shard's time at 80 k
                // sends/s).
                cf.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
                cf.set_memtable_whole_key_filtering(true);
            }
            // lz4 is the only codec compiled in; the default (snappy) is not.
            cf.set_compression_type(DBCompressionType::Lz4);
            cf.set_level_compaction_dynamic_level_bytes(true);
            // The write-hot CFs: more memtables, and memtables hashed by key
            // prefix (a conversation in `msgs`, a sender in a conversation
            // in `dedup`, the whole key in `convs`, rewritten per batch),
            // each bucket its own short skiplist.
            let (buffer_bytes, hot_prefix) = match name {
                CF_MSGS => (
                    MSGS_WRITE_BUFFER_BYTES,
                    Some(SliceTransform::create(
                        "tern-msgs-conv",
                        keys::msg_key_prefix,
                        None,
                    )),
                ),
                CF_DEDUP => (
                    DEDUP_WRITE_BUFFER_BYTES,
                    Some(SliceTransform::create(
                        "tern-dedup-sender",
                        keys::dedup_key_prefix,
                        None,
                    )),
                ),
                CF_CONVS => (
                    CONVS_WRITE_BUFFER_BYTES,
                    Some(SliceTransform::create_noop()),
                ),
                _ => (SMALL_WRITE_BUFFER_BYTES, None),
            };
            cf.set_write_buffer_size(buffer_bytes);
            if let Some(prefix) = hot_prefix {
                cf.set_max_write_buffer_number(HOT_WRITE_BUFFERS_MAX);
                cf.set_prefix_extractor(prefix);
                cf.set_memtable_factory(MemtableFactory::HashSkipList {
                    bucket_count: HOT_MEMTABLE_BUCKETS,
                    height: HOT_MEMTABLE_SKIPLIST_HEIGHT,
                    branching_factor: HOT_MEMTABLE_SKIPLIST_BRANCHING,
                });
            }
            match name {
                CF_MSGS if retention_ms > 0 => {
                    cf.set_compaction_filter_factory(ExpiryFilterFactory {
                        name: c"tern-msgs-retention",
                        ts_offset: MSG_TS_OFFSET,
                        keep_ms: retention_ms,
                    });
                    cf.set_periodic_compaction_seconds(EXPIRY_COMPACTION_SECS);
                }
                CF_DEDUP => {
                    cf.set_compaction_filter_factory(ExpiryFilterFactory {
                        name: c"tern-dedup-window",
                        ts_offset: DEDUP_TS_OFFSET,
                        keep_ms: dedup_window_ms,
                    });
                    cf.set_periodic_compaction_seconds(EXPIRY_COMPACTION_SECS);
                }
                _ => {}
            }
            ColumnFamilyDescriptor::new(name, cf)
        })
        .collect();
    (db, cfs)
}

/// Wall clock in ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Makes one [`ExpiryFilter`] per compaction run, with the cutoff taken at
/// the start of the run (one clock read per run, not per key).
struct ExpiryFilterFactory {
    name: &'static CStr,
    /// Where the u64 BE ts sits in the value.
    ts_offset: usize,
    /// Values with ts older than now - keep_ms are dropped.
    keep_ms: u64,
}

impl CompactionFilterFactory for ExpiryFilterFactory {
    type Filter = ExpiryFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> ExpiryFilter {
        ExpiryFilter {
            name: self.name,
            ts_offset: self.ts_offset,
            cutoff_ms: now_ms().saturating_sub(self.keep_ms),
        }
    }

    fn name(&self) -> &CStr {
        self.name
    }
}

/// Drops values whose ts is below a cutoff.
pub(crate) struct ExpiryFilter {
    name: &'static CStr,
    ts_offset: usize,
    cutoff_ms: u64,
}

impl ExpiryFilter {
    /// The decision for one value, without RocksDB around it.
    fn expired(&self, value: &[u8]) -> bool {
        // A value too short to hold a ts is kept: it is corrupt, and deleting
        // it silently would hide that.
        crate::keys::read_u64_at(value, self.ts_offset).is_some_and(|ts| ts < self.cutoff_ms)
    }
}

impl CompactionFilter for ExpiryFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
        if self.expired(value) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }

    fn name(&self) -> &CStr {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_filter_drops_only_old_values() {
        let f = ExpiryFilter {
            name: c"t",
            ts_offset: 8,
            cutoff_ms: 1000,
        };
        let value = |ts: u64| {
            let mut v = vec![0xAA; 8];
            v.extend_from_slice(&ts.to_be_bytes());
            v
        };
        assert!(f.expired(&value(999)));
        assert!(!f.expired(&value(1000)));
        assert!(!f.expired(&value(5000)));
        assert!(!f.expired(&[0; 10]), "short values are kept");
    }
}
