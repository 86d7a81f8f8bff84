//! Every bound of the engine in one place, each with the reason it exists.
//! Values a deployment may tune live in [`crate::EngineConfig`]; these are the
//! fixed ones.

/// Server frames may be larger than client frames (PROTOCOL.md); a
/// `sync_result` is cut short to stay under this.
pub const SERVER_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A connection holding more unacknowledged entries than this is a slow
/// consumer and is closed with 4408 (PROTOCOL.md guarantee 4).
pub const UNACKED_MAX: usize = 4096;

/// Pushes of one entry after the first, before the connection is closed 4408.
pub const REDELIVERY_TRIES_MAX: u8 = 3;

/// Bytes queued for one socket before it counts as a slow consumer. Sized for
/// a burst of full sync pages, small enough that 1 M of them could never be
/// full at once without the slow-consumer rule firing first.
pub const OUTBOUND_BYTES_MAX: usize = 8 * 1024 * 1024;

/// iovecs per `writev`; Linux allows 1024, 64 frames is already one large write.
pub const WRITEV_IOVECS_MAX: usize = 64;

/// Batches waiting in one shard's inbox. A batch holds everything one sender
/// produced for that shard in one loop pass, so this is a generous bound.
pub const MESH_INBOX_BATCHES_MAX: usize = 16 * 1024;

/// Longest a thread outside the shards waits for room in a full shard inbox
/// before giving up on a message (logged); long enough to ride out any
/// burst, short enough that shutdown never hangs on a dead shard.
pub const OUTSIDE_SEND_WAIT_MS: u64 = 10_000;

/// Mesh messages handled per inbox wakeup before yielding to sockets, so a
/// flood from other shards cannot starve this shard's own connections.
pub const INBOX_BATCHES_PER_PASS_MAX: usize = 64;

/// Time for the handshake plus `auth` (PROTOCOL.md: auth within 5 s).
pub const AUTH_TIMEOUT_MS: u64 = 5_000;

/// Handshakes (upgrade + `auth`) in progress per shard. Beyond it the
/// acceptor stops accepting until one ends, so a reconnect storm waits in
/// the kernel's backlog ([`LISTEN_BACKLOG`]) instead of spawning unbounded
/// work; each pending one is itself bounded in bytes and time.
pub const HANDSHAKES_PENDING_MAX: usize = 4096;

/// Accepts in a row before the acceptor yields to the shard's other tasks,
/// so a storm of connects cannot starve the connections already served.
pub const ACCEPTS_PER_PASS_MAX: usize = 64;

/// `Retry-After` (seconds) of the 503 that a connection over the limits
/// gets; short, because connections end all the time.
pub const REFUSED_RETRY_AFTER_S: u32 = 1;

/// Bytes of a pending handshake plus the auth frame.
pub const AUTH_PHASE_BYTES_MAX: usize = 8 * 1024 + 4 * 1024;

/// `sync` page size: default and maximum (PROTOCOL.md), defined with the
/// frame that carries them.
pub use tern_proto::{SYNC_LIMIT_DEFAULT, SYNC_LIMIT_MAX};

/// After the server sends a close frame it waits this long for the client's
/// close before dropping the socket.
pub const CLOSE_GRACE_MS: u64 = 2_000;

/// Granularity of the shard's timer wheel; heartbeats and ack timeouts are
/// checked this coarsely (ack timeout 10 s, heartbeat 30 s by default).
pub const TIMER_TICK_MS: u64 = 100;

/// Slots of the timer wheel: one revolution covers 2^12 ticks (~6.8 min);
/// longer deadlines are re-armed when their slot comes round.
pub const TIMER_SLOTS: usize = 4096;

/// Threads doing blocking storage reads (`sync`, `convs`, history, users).
pub const READER_THREADS: usize = 2;

/// Read jobs waiting for a reader thread; beyond this, reads fail `unavailable`.
pub const READ_JOBS_MAX: usize = 16 * 1024;

/// How long graceful shutdown waits for in-flight writes and closes.
pub const SHUTDOWN_DRAIN_MS: u64 = 3_000;

/// Listen backlog per shard listener (absorbs reconnect storms).
pub const LISTEN_BACKLOG: i32 = 4096;

const _: () = assert!(UNACKED_MAX >= 64, "clients ack every 64 entries");
const _: () = assert!(TIMER_SLOTS.is_power_of_two());

/// `typing` frames a connection may send per second, on average. Typing is
/// not stored but fans out to every member of a group: without a bound, one
/// client could make the server push its group size times its frame rate.
pub const TYPING_PER_S: u64 = 5;

/// `typing` frames a connection may send at once before the rate applies.
/// Clients send one every few seconds while the user types (the web app:
/// one per 2 s), far below both bounds.
pub const TYPING_BURST: u64 = 10;

/// `read`, `sync` and `convs` frames a connection may send per second, on
/// average. Each costs a storage write or read on the shared writer queue
/// or reader pool.
pub const STORAGE_FRAMES_PER_S: u64 = 100;

/// `read`, `sync` and `convs` frames a connection may send at once: room
/// for a reconnecting client to sync hundreds of conversations.
pub const STORAGE_FRAMES_BURST: u64 = 500;
