//! The one error type of this crate.

/// Everything that can go wrong in storage.
///
/// `Clone` because one failed batch answers many requests with the same
/// error; that is also why every payload is a `String` (a `rocksdb::Error`
/// is not something other crates should have to name).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// Data on disk does not decode, or the database reports corruption.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// The data directory holds files but no Tern database. Never replaced
    /// by a fresh database: that would silently hide the operator's data.
    #[error("not a tern database: {0}")]
    NotADatabase(String),
    /// An I/O error reported by RocksDB or the file system.
    #[error("storage i/o error: {0}")]
    Io(String),
    /// Any other RocksDB error.
    #[error("storage error: {0}")]
    Db(String),
    /// The writer queue holds `WRITE_QUEUE_MAX` requests; nothing was queued.
    #[error("storage write queue is full")]
    QueueFull,
    /// The writer was shut down (or its thread is gone); nothing was queued.
    #[error("storage writer is closed")]
    Closed,
    /// An append whose seq is not the conversation's committed max seq + 1.
    /// Rejected on its own and not written, so no gap can ever be stored.
    #[error("seq gap in {conv}: expected {expected}, got {got}")]
    SeqGap {
        /// The conversation, as its display string (`dm:a:b`, `group:g`).
        conv: String,
        /// committed max seq + 1 (counting earlier appends of the same batch)
        expected: u64,
        /// the seq of the rejected entry
        got: u64,
    },
    /// A request that can never succeed as written (a caller bug), for
    /// example an entry whose conv differs from the request's conv.
    #[error("invalid storage request: {0}")]
    Invalid(String),
}

impl StorageError {
    /// Whether a failed batch write may still have reached the disk, or
    /// left the database refusing writes until it is reopened: a failed
    /// WAL sync (the whole record was written, so a restart replays it), a
    /// corruption, any other I/O error. Only running out of space is known
    /// to store nothing (the append itself failed, leaving at most a torn
    /// tail that recovery drops) and to heal by itself once space returns;
    /// so are the refusals that never reach RocksDB (a full queue, a
    /// closed writer, a seq gap, an invalid request).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StorageError::Io(msg) => {
                let m = msg.to_ascii_lowercase();
                !m.contains("no space left on device") || m.contains("sync")
            }
            StorageError::Corrupt(_) | StorageError::Db(_) => true,
            StorageError::NotADatabase(_)
            | StorageError::QueueFull
            | StorageError::Closed
            | StorageError::SeqGap { .. }
            | StorageError::Invalid(_) => false,
        }
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        use rocksdb::ErrorKind;
        match e.kind() {
            ErrorKind::Corruption => StorageError::Corrupt(e.into_string()),
            ErrorKind::IOError => StorageError::Io(e.into_string()),
            _ => StorageError::Db(e.into_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StorageError;

    #[test]
    fn only_refusals_and_a_failed_append_for_space_are_known_to_store_nothing() {
        let io = |m: &str| StorageError::Io(m.to_owned());
        // RocksDB's own texts (env/io_posix.cc).
        assert!(io(
            "commit batch: IO error: While fdatasync: /d/db/000004.log: Input/output error"
        )
        .outcome_unknown());
        assert!(io(
            "commit batch: IO error: No space left on device: While fdatasync: /d/db/000004.log"
        )
        .outcome_unknown());
        assert!(io(
            "commit batch: IO error: While appending to file: /d/db/000004.log: Input/output error"
        )
        .outcome_unknown());
        assert!(io("commit batch: IO error: While open a file for appending: /d/db/LOG: Read-only file system").outcome_unknown());
        assert!(StorageError::Corrupt("bad block".into()).outcome_unknown());
        assert!(StorageError::Db("Operation aborted".into()).outcome_unknown());
        assert!(!io("commit batch: IO error: No space left on device: While appending to file: /d/db/000004.log: No space left on device").outcome_unknown());
        assert!(!StorageError::QueueFull.outcome_unknown());
        assert!(!StorageError::Closed.outcome_unknown());
        assert!(!StorageError::Invalid("x".into()).outcome_unknown());
        let gap = StorageError::SeqGap {
            conv: "dm:a:b".into(),
            expected: 2,
            got: 3,
        };
        assert!(!gap.outcome_unknown());
    }
}
