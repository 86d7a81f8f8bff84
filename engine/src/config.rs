//! Engine settings that a deployment tunes (`tern serve` flags / TOML keys).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::token::TokenKey;

/// What [`crate::Engine::start`] needs.
pub struct EngineConfig {
    /// WebSocket listen address; every shard binds it with SO_REUSEPORT.
    pub ws_addr: SocketAddr,
    /// Number of shards (threads), at least 1.
    pub shards: usize,
    /// Pin shard i to core i (mod the cores available).
    pub pin_cores: bool,
    /// Largest client frame / message, bytes (PROTOCOL.md default 64 KiB).
    pub frame_bytes_max: usize,
    /// Announced in `auth_ok`; silence for 2x this closes the connection.
    pub heartbeat_ms: u64,
    /// Unacked pushes are pushed again after this (PROTOCOL.md default 10 s).
    pub ack_timeout_ms: u64,
    /// Window in which a repeated (sender, cmid) is deduplicated.
    pub dedup_window_ms: u64,
    /// Key that signs and verifies access tokens.
    pub token_key: TokenKey,
    /// Groups above this many members get `notice` instead of full pushes
    /// for inactive devices (PROTOCOL.md default 500).
    pub large_group_threshold: usize,
    /// Per-connection sends per second (token bucket refill), and burst.
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    /// Where events for webhooks go (bounded: [`crate::hooks::EVENT_QUEUE_MAX`]).
    pub events: Option<crossbeam_channel::Sender<crate::hooks::EngineEvent>>,
    /// Run on every shard thread at each timer tick (100 ms). The binary
    /// uses it to have the allocator return pages freed on that thread (a
    /// connect storm's handshake buffers), which it would otherwise keep.
    pub housekeeping: Option<fn()>,
    /// The optional before-send veto.
    pub before_send: Option<std::sync::Arc<dyn crate::hooks::BeforeSend>>,
    /// WebSocket connections open at once, pending handshakes included;
    /// beyond it new ones get 503 and are closed.
    pub max_conns: usize,
    /// The same, per source IP address.
    pub max_conns_per_ip: usize,
    /// The source address of the in-process WSS relay's connections: they
    /// count towards `max_conns` but not per IP, since the relay limits each
    /// client by its real address. `None` without a relay.
    pub per_ip_exempt: Option<IpAddr>,
    /// Least time between two polls of a shard's socket set while it is
    /// woken faster than that (`shard::pacer`): readiness that arrives
    /// sooner waits, so one pass reads many sockets. Zero polls on every
    /// wake. At most [`READ_COALESCE_MAX`].
    pub read_coalesce: Duration,
}

/// Default of [`EngineConfig::read_coalesce`]. At 30 k paced dm sends/s on
/// the 2-core test VM it took 7-18% off the server's CPU
/// (docs/BENCHMARKS.md); a message after a quiet spell does not wait.
pub const READ_COALESCE_DEFAULT: Duration = Duration::from_millis(1);

/// Largest [`EngineConfig::read_coalesce`]: it adds up to this much to a
/// message's latency under load.
pub const READ_COALESCE_MAX: Duration = Duration::from_millis(10);

/// Default of [`EngineConfig::max_conns`]: the design target of one node
/// (DESIGN.md: a million connections on bare metal).
pub const MAX_CONNS_DEFAULT: usize = 1_000_000;

/// Default of [`EngineConfig::max_conns_per_ip`]: far above what a NAT of
/// people opens, below what one host's ephemeral ports allow towards one
/// server port (~28 k on Linux by default), so one misbehaving host cannot
/// take the whole node. Load tests spread over many 127.0.0.x addresses.
pub const MAX_CONNS_PER_IP_DEFAULT: usize = 20_000;

impl EngineConfig {
    /// Defaults of PROTOCOL.md, with the given token key.
    pub fn new(ws_addr: SocketAddr, token_key: TokenKey) -> Self {
        EngineConfig {
            ws_addr,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            frame_bytes_max: 64 * 1024,
            heartbeat_ms: 30_000,
            ack_timeout_ms: 10_000,
            dedup_window_ms: 24 * 3600 * 1000,
            token_key,
            large_group_threshold: 500,
            send_rate_per_s: 50,
            send_burst: 200,
            events: None,
            housekeeping: None,
            before_send: None,
            max_conns: MAX_CONNS_DEFAULT,
            max_conns_per_ip: MAX_CONNS_PER_IP_DEFAULT,
            per_ip_exempt: None,
            read_coalesce: READ_COALESCE_DEFAULT,
        }
    }
}
