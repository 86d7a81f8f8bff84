//! Tern engine: thread-per-core shards that own WebSocket connections,
//! sequence conversations and fan messages out.
//!
//! # Layout
//! - [`engine`]: start (recovery, mesh, writer, listeners, shard threads) and
//!   graceful shutdown.
//! - `shard/`: one shard's runtime: `accept.rs` (handshake + auth + handoff
//!   to the home shard), `reader.rs` (read, cut frames), `client.rs` (what
//!   client frames do), `conn.rs`, `sockio.rs`, `timer.rs` (timer wheel).
//! - `owner/`: seq assignment, dedup, durable write, fan-out start.
//! - `mesh.rs`: bounded queues between shards; `home_shard`, `owner_shard`.
//! - `encoded.rs`: frames encoded once per subprotocol.
//! - `readers.rs`: threads for blocking storage reads.
//! - [`ws`]: RFC 6455 handshake and frame codec (pure, no I/O), and
//!   [`token`]: HMAC-SHA256 access tokens; both from the `tern-wire` crate.
//! - [`handle`]: [`EngineHandle`], the only door other threads (the HTTP
//!   gateway) use to reach the shards.
//! - [`limits`]: every fixed bound.
//! - [`conn_limit`]: connection limits per source IP and in total.

pub mod config;
pub mod conn_limit;
mod encoded;
pub mod engine;
pub mod handle;
mod handle_impl;
pub mod hooks;
pub mod limits;
mod mesh;
mod owner;
mod readers;
mod shard;
mod shared;

pub use config::EngineConfig;
pub use engine::{Engine, StartError, EXIT_STORAGE_FAILED};
pub use handle::{
    EngineError, EngineHandle, EngineMetrics, GroupRecord, MembersPage, MintedToken, Presence,
    SendOk, SendRequest, UserRecord,
};
pub use hooks::{BeforeSend, BeforeSendRequest, EngineEvent, Verdict};
pub use shared::now_ms;
/// The handshake, frame codec and tokens live in `tern-wire` (fuzzable
/// without storage); re-exported so `crate::ws` and `crate::token` paths hold.
pub use tern_wire::{token, ws};
