//! Shared pieces of Tern's criterion benchmarks (`benches/*.rs`).
//!
//! # Layout
//! - [`fanout`]: fan-out planning as the engine does it (the engine's own
//!   function is private): partition a group's members by home shard into
//!   one `Arc<[UserId]>` per shard.
//! - [`config`]: the short criterion configuration every bench uses.
//!
//! The benches: `frames` (tern-proto encode/decode, JSON vs rkyv),
//! `ws_parse` (the engine's WebSocket frame codec), `fanout`,
//! `storage_commit` (group-commit appends through the storage writer).
#![warn(missing_docs)]

pub mod fanout;

/// Criterion settings shared by the benches: short, so a full
/// `cargo bench -p tern-benches` stays within minutes on 2 cores.
pub mod config {
    use std::time::Duration;

    /// Measurement time per case (override with `--measurement-time`).
    pub const MEASUREMENT: Duration = Duration::from_secs(2);
    /// Warm-up time per case.
    pub const WARM_UP: Duration = Duration::from_millis(500);

    /// The configuration.
    pub fn criterion() -> criterion::Criterion {
        criterion::Criterion::default()
            .measurement_time(MEASUREMENT)
            .warm_up_time(WARM_UP)
    }
}
