//! The full mesh of bounded queues between shards, and the routing functions.
//!
//! Every shard has one inbox (a bounded crossbeam channel of *batches*) and an
//! [`AtomicWaker`]. A sender collects everything it has for a shard during one
//! loop pass and sends it as one batch with one wakeup, never one per message.
//! Other threads (the storage writer, the HTTP gateway, reader threads) use the
//! same inboxes.

use std::hash::{Hash, Hasher};
use std::os::fd::RawFd;
use std::sync::Arc;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tern_proto::{ConvId, DeviceId, Kind, RawJson, ServerFrame, Subprotocol, UserId};
use tern_storage::StorageError;

use crate::encoded::Encoded;
use crate::handle::{EngineError, SendOk};
use crate::limits::{MESH_INBOX_BATCHES_MAX, OUTSIDE_SEND_WAIT_MS};

/// Index of a shard, `0..n_shards`.
pub type ShardIdx = usize;

/// A stable hash for routing (SipHash with fixed keys: same answer on every
/// thread of the process).
fn route_hash<T: Hash + ?Sized>(x: &T) -> u64 {
    // `DefaultHasher::new()` uses fixed keys: every instance agrees.
    let mut h = std::hash::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// The home shard of a user: all its connections live there.
pub fn home_shard(user: &UserId, n_shards: usize) -> ShardIdx {
    (route_hash(user.as_str()) % n_shards as u64) as ShardIdx
}

/// `users` partitioned by home shard: entry `h` holds those living on shard
/// `h`, in the order given.
pub fn by_home_shard<'a>(
    users: impl IntoIterator<Item = &'a UserId>,
    n_shards: usize,
) -> Vec<Vec<UserId>> {
    let mut by_home: Vec<Vec<UserId>> = (0..n_shards).map(|_| Vec::new()).collect();
    for u in users {
        by_home[home_shard(u, n_shards)].push(u.clone());
    }
    by_home
}

/// The owner shard of a conversation: it alone assigns seqs.
pub fn owner_shard(conv: &ConvId, n_shards: usize) -> ShardIdx {
    debug_assert!(n_shards > 0, "no shards");
    if n_shards == 1 {
        return 0;
    }
    // The id's own hash (structural, no text built): a process-local
    // route, never stored, so it need not match any other build's.
    (route_hash(conv) % n_shards as u64) as ShardIdx
}

/// A connection, named from anywhere: shard, slot, and the slot's generation
/// (so a reused slot is never mistaken for the old connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub shard: ShardIdx,
    pub slot: u32,
    pub gen: u32,
}

/// Where the answer to a send goes.
pub enum ReplyTo {
    /// A WebSocket connection: `send_ack` / `send_err` with this cmid.
    Conn(ConnRef),
    /// An HTTP request waiting in the gateway.
    Http(tokio::sync::oneshot::Sender<Result<SendOk, EngineError>>),
}

/// A send on its way to the conversation's owner shard (already authorised
/// and validated by the shard or handle that accepted it).
pub struct SendJob {
    pub conv: ConvId,
    pub from: UserId,
    /// `""` for system messages.
    pub device: String,
    pub cmid: String,
    /// Deduplicate on (conv, from, cmid)? False when the server made the cmid up.
    pub dedup: bool,
    pub kind: Kind,
    pub body: RawJson,
    pub reply: ReplyTo,
}

/// Frames for users of one home shard: encoded once, the same bytes for all.
pub struct Push {
    /// Shared, not copied: a large group's per-home-shard member slice is
    /// cached by the owner and reused for every message.
    pub users: Arc<[UserId]>,
    /// The sending connection, which gets a `send_ack` instead.
    pub except: Option<ConnRef>,
    /// A user none of whose devices get it (the typer, for `typing`).
    pub skip_user: Option<UserId>,
    pub frame: Arc<Encoded>,
    /// Set when the frame is a timeline entry that must be acked.
    pub track: Option<Arc<Tracked>>,
    /// Set for groups above the large-group threshold: devices not active in
    /// the group get a coalesced `notice` with this max seq instead.
    pub large: bool,
}

/// A timeline entry pushed for acking: one per message, shared by the
/// unacked record of every connection it reaches (one pointer each).
pub struct Tracked {
    pub conv: Arc<str>,
    pub seq: u64,
    pub frame: Arc<Encoded>,
}

/// A group read/write that needs the owner's member list.
pub enum GroupAccess {
    Sync { after: u64, limit: usize },
    Read { seq: u64 },
    Typing,
}

/// An administrative group operation (from the HTTP API).
pub enum GroupOp {
    Put {
        name: Option<String>,
        members: Option<Vec<UserId>>,
    },
    Delete,
    Members {
        add: Vec<UserId>,
        remove: Vec<UserId>,
    },
}

/// What a group operation answers.
pub type GroupOpReply =
    tokio::sync::oneshot::Sender<Result<crate::handle::GroupRecord, EngineError>>;

/// A socket that finished `auth` on another shard and now moves home.
pub struct Adopt {
    pub fd: RawFd,
    pub user: UserId,
    pub device: DeviceId,
    pub sp: Subprotocol,
    /// Bytes received after the auth frame (pipelined frames).
    pub leftover: Vec<u8>,
    /// The connection's slot in the limits; dropped with the socket.
    pub permit: crate::conn_limit::ConnPermit,
}

/// Everything a shard can be told.
pub enum ShardMsg {
    Adopt(Adopt),
    Send(SendJob),
    Push(Push),
    /// A frame for one connection (send_ack, send_err, sync_result, ...),
    /// encoded by the home shard for the connection's subprotocol.
    Reply {
        conn: ConnRef,
        frame: ServerFrame,
    },
    /// Results of a storage batch for this shard's requests.
    Committed(Vec<(u64, Result<(), StorageError>)>),
    /// To a group's owner: check membership, then do it.
    GroupAccess {
        conv: ConvId,
        user: UserId,
        conn: ConnRef,
        what: GroupAccess,
    },
    /// To a group's owner: change it (events sequenced in its timeline).
    GroupOp {
        group: tern_proto::GroupId,
        op: GroupOp,
        reply: GroupOpReply,
    },
    /// To a user's home shard: its online devices.
    Presence {
        user: UserId,
        reply: tokio::sync::oneshot::Sender<Vec<(DeviceId, u64)>>,
    },
    /// Close connections of `user` (one device or all) with `kicked`.
    Kick {
        user: UserId,
        device: Option<DeviceId>,
        reason: String,
        reply: Option<tokio::sync::oneshot::Sender<usize>>,
    },
    /// A user was deleted: forget it in caches (every shard gets this).
    UserGone(UserId),
    /// Graceful shutdown.
    Shutdown,
}

/// The receiving end of a shard's inbox.
pub struct Inbox {
    pub rx: Receiver<Vec<ShardMsg>>,
}

struct Door {
    tx: Sender<Vec<ShardMsg>>,
    waker: AtomicWaker,
}

/// The sending side of every inbox; shared by all threads.
pub struct Mesh {
    doors: Vec<Door>,
}

impl Mesh {
    /// A mesh of `n` inboxes; the receivers go to the shards.
    pub fn new(n: usize) -> (Arc<Mesh>, Vec<Inbox>) {
        assert!(n >= 1);
        let mut doors = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(MESH_INBOX_BATCHES_MAX);
            doors.push(Door {
                tx,
                waker: AtomicWaker::new(),
            });
            inboxes.push(Inbox { rx });
        }
        (Arc::new(Mesh { doors }), inboxes)
    }

    pub fn n_shards(&self) -> usize {
        self.doors.len()
    }

    /// Batches waiting in `shard`'s inbox (for metrics).
    pub fn depth(&self, shard: ShardIdx) -> usize {
        self.doors[shard].tx.len()
    }

    /// Queue a batch for `shard` and wake it once. On a full inbox the batch
    /// comes back so the caller can keep it and retry (never dropped here).
    pub fn send_batch(&self, shard: ShardIdx, batch: Vec<ShardMsg>) -> Result<(), Vec<ShardMsg>> {
        debug_assert!(!batch.is_empty());
        let door = &self.doors[shard];
        match door.tx.try_send(batch) {
            Ok(()) => {
                door.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                door.waker.wake();
                Err(b)
            }
        }
    }

    /// For threads outside the shards (storage writer, gateway, readers):
    /// send one message, waiting while the inbox is full. Waiting is the
    /// backpressure (a full inbox means the shard is far behind); it is
    /// bounded by [`OUTSIDE_SEND_WAIT_MS`], after which the message is given
    /// up and false returned.
    pub fn send_from_outside(&self, shard: ShardIdx, msg: ShardMsg) -> bool {
        let mut batch = vec![msg];
        let start = std::time::Instant::now();
        let mut pause_us = 50u64;
        loop {
            match self.send_batch(shard, batch) {
                Ok(()) => return true,
                Err(b) => {
                    if start.elapsed() > std::time::Duration::from_millis(OUTSIDE_SEND_WAIT_MS) {
                        return false;
                    }
                    batch = b;
                    std::thread::sleep(std::time::Duration::from_micros(pause_us));
                    pause_us = (pause_us * 2).min(10_000);
                }
            }
        }
    }

    /// Register the shard's inbox task for wakeups.
    pub fn register(&self, shard: ShardIdx, waker: &std::task::Waker) {
        self.doors[shard].waker.register(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches move `ShardMsg`s by value (and a growing one copies them):
    /// a new variant should box what makes it big.
    #[test]
    fn a_shard_msg_stays_small() {
        assert!(std::mem::size_of::<ShardMsg>() <= 160);
    }

    #[test]
    fn by_home_shard_puts_each_user_on_its_home_in_order() {
        let users: Vec<UserId> = (0..200)
            .map(|i| UserId::parse(&format!("u{i}")).expect("user id"))
            .collect();
        for n in [1, 2, 7] {
            let parts = by_home_shard(&users, n);
            assert_eq!(parts.len(), n);
            for (h, part) in parts.iter().enumerate() {
                assert!(part.iter().all(|u| home_shard(u, n) == h));
            }
            let mut want: Vec<Vec<UserId>> = vec![Vec::new(); n];
            for u in &users {
                want[home_shard(u, n)].push(u.clone());
            }
            assert_eq!(parts, want, "every user once, in the order given");
        }
    }
}
