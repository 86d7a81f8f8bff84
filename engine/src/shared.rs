//! What every shard and the handle share: config, mesh, storage, the reader
//! pool, revocations and counters. Immutable or atomic/locked; nothing in
//! here is per-connection.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};

use hashbrown::HashMap;
use tern_proto::UserId;
use tern_storage::{Storage, WriterHandle};

use crate::config::EngineConfig;
use crate::mesh::Mesh;
use crate::readers::ReaderPool;

/// `reply_to` of storage writes whose completion nobody waits for.
pub const NO_REPLY: u32 = u32::MAX;

/// The sender name of messages from business systems without `from`.
pub const SYSTEM_USER: &str = "system";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Engine counters, aggregated by whoever reads them (metrics).
pub struct Stats {
    pub connections: Vec<AtomicI64>,
    pub messages_in: AtomicU64,
    pub deliveries: AtomicU64,
    pub redeliveries: AtomicU64,
}

pub(crate) struct Shared {
    pub cfg: EngineConfig,
    pub mesh: Arc<Mesh>,
    pub storage: Storage,
    pub writer: WriterHandle,
    pub readers: ReaderPool,
    /// user → revoked_at (ms): tokens issued at or before it are refused.
    pub revoked: RwLock<HashMap<UserId, u64>>,
    pub stats: Stats,
}

impl Shared {
    pub fn is_revoked(&self, user: &UserId, iat_ms: u64) -> bool {
        match self.revoked.read() {
            Ok(m) => m.get(user).is_some_and(|&at| iat_ms <= at),
            // A poisoned lock means a panic elsewhere: refuse rather than guess.
            Err(_) => true,
        }
    }
}
