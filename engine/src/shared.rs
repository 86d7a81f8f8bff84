//! What every shard and the handle share: config, mesh, storage, the reader
//! pool, revocations and counters. Immutable or atomic/locked; nothing in
//! here is per-connection.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

/// Upper bounds of the fan-out size histogram buckets (recipients per entry).
pub const FANOUT_BUCKETS: [u64; 10] = [1, 2, 5, 10, 50, 100, 500, 1_000, 10_000, 100_000];

/// Engine counters, aggregated by whoever reads them (metrics).
#[derive(Default)]
pub struct Stats {
    pub connections: Vec<AtomicI64>,
    pub messages_in: AtomicU64,
    pub messages_stored: AtomicU64,
    pub deliveries: AtomicU64,
    pub redeliveries: AtomicU64,
    pub notices: AtomicU64,
    pub rate_limited: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Per bucket of [`FANOUT_BUCKETS`] (not cumulative), plus the overflow.
    pub fanout: [AtomicU64; FANOUT_BUCKETS.len() + 1],
    pub fanout_sum: AtomicU64,
}

impl Stats {
    pub fn new(n_shards: usize) -> Stats {
        Stats {
            connections: (0..n_shards).map(|_| AtomicI64::new(0)).collect(),
            ..Default::default()
        }
    }

    /// Record one fan-out of `n` recipients.
    pub fn fanout(&self, n: u64) {
        let i = FANOUT_BUCKETS
            .iter()
            .position(|&b| n <= b)
            .unwrap_or(FANOUT_BUCKETS.len());
        self.fanout[i].fetch_add(1, Ordering::Relaxed);
        self.fanout_sum.fetch_add(n, Ordering::Relaxed);
    }
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
    /// Connection limits (per source IP and total).
    pub conn_limit: Arc<crate::conn_limit::ConnLimiter>,
}

impl Shared {
    /// Hand an event to the webhook queue; never waits (drops are counted).
    pub fn emit(&self, e: crate::hooks::EngineEvent) {
        if let Some(tx) = &self.cfg.events {
            if tx.try_send(e).is_err() {
                self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn is_revoked(&self, user: &UserId, iat_ms: u64) -> bool {
        match self.revoked.read() {
            Ok(m) => m.get(user).is_some_and(|&at| iat_ms <= at),
            // A poisoned lock means a panic elsewhere: refuse rather than guess.
            Err(_) => true,
        }
    }
}
