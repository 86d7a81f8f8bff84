//! What the engine tells the outside world (events for webhooks) and what it
//! asks it (the optional before-send veto). The engine only defines these
//! seams; `gateway-http` implements them over HTTP. Neither may block a shard:
//! events go through a bounded queue with counted drops, and the veto answers
//! through a callback from any thread.

use tern_proto::{ConvId, DeviceId, Kind, RawJson, UserId};

/// Bound of the engine → webhook event queue. Full → the event is dropped and
/// counted (`EngineMetrics::events_dropped`), never waited for.
pub const EVENT_QUEUE_MAX: usize = 64 * 1024;

/// Something that happened, for after-the-fact webhooks.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// A message was stored (after its durable write).
    MessageSent {
        conv: ConvId,
        seq: u64,
        from: UserId,
        device: String,
        cmid: String,
        kind: Kind,
        body: RawJson,
        ts: u64,
    },
    /// The first connection of a user came up (or another device did).
    UserOnline {
        user: UserId,
        device: DeviceId,
        ts: u64,
    },
    /// A connection of a user went away.
    UserOffline {
        user: UserId,
        device: DeviceId,
        ts: u64,
    },
    /// A group event (1501/1502/1504/1508/1509/1520) was stored.
    GroupChanged {
        group: tern_proto::GroupId,
        seq: u64,
        code: u16,
        data: RawJson,
        ts: u64,
    },
}

/// A send waiting for the before-send hook's verdict.
#[derive(Debug, Clone)]
pub struct BeforeSendRequest {
    pub conv: ConvId,
    pub from: UserId,
    pub device: String,
    pub cmid: String,
    pub kind: Kind,
    pub body: RawJson,
}

/// The hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `send_err` `rejected` with this message; nothing is stored.
    Reject(String),
}

/// The before-send veto. `check` must return at once; it calls `done` later,
/// from any thread, exactly once (timeouts and failures included: the
/// implementation applies its fail-open/fail-closed policy).
pub trait BeforeSend: Send + Sync + 'static {
    fn check(&self, req: BeforeSendRequest, done: Box<dyn FnOnce(Verdict) + Send>);
}
