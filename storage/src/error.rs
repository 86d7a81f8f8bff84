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
