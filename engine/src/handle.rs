//! [`EngineHandle`]: the only door into the engine for other threads (the HTTP
//! gateway). Every call is a message to a shard or a job on the storage reader
//! pool, answered through a oneshot; nothing here touches a socket.

use tern_proto::{ConvId, DeviceId, Entry, ErrorCode, GroupId, Kind, RawJson, UserId};

/// A send from a business system (`POST /v1/messages`).
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// `None`: the sender is `system`.
    pub from: Option<UserId>,
    /// `user:<id>`, `group:<id>` or a conv id, unparsed (the engine validates).
    pub to: String,
    pub kind: Kind,
    pub body: RawJson,
    /// `None`: the engine makes one up and nothing is deduplicated.
    pub cmid: Option<String>,
}

/// The durable result of a send: same fields as `send_ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOk {
    pub conv: ConvId,
    pub seq: u64,
    pub ts: u64,
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: UserId,
    pub name: Option<String>,
    /// JSON text of `meta`, if any.
    pub meta: Option<RawJson>,
    pub created_ts: u64,
}

/// Why an engine call failed; `code` is the protocol error code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct EngineError {
    pub code: ErrorCode,
    pub message: String,
}

/// A minted access token.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub expires_ts: u64,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group: GroupId,
    pub name: Option<String>,
    pub members_count: u64,
    pub created_ts: u64,
}

/// One page of a group's members, in user-id byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersPage {
    pub members: Vec<UserId>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<UserId>,
}

/// Who is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    /// (device, connected since, ms).
    pub devices: Vec<(DeviceId, u64)>,
}

/// A snapshot of the engine's counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    pub connections_per_shard: Vec<i64>,
    pub messages_in: u64,
    pub messages_stored: u64,
    pub deliveries: u64,
    pub redeliveries: u64,
    pub notices: u64,
    pub rate_limited: u64,
    /// Mesh inbox depth (batches) per shard.
    pub queue_depth_per_shard: Vec<u64>,
    /// Fan-out sizes (recipients per stored entry): cumulative counts per
    /// upper bound in `FANOUT_BUCKETS`, then the total count and sum.
    pub fanout_buckets: Vec<(u64, u64)>,
    pub fanout_count: u64,
    pub fanout_sum: u64,
    pub events_dropped: u64,
    pub storage: tern_storage::StorageStats,
}

/// Cheap to clone; `Send + Sync`; usable from any thread or runtime.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) inner: std::sync::Arc<crate::handle_impl::Inner>,
}

impl EngineHandle {
    /// Send a message with the same path and guarantees as a WebSocket `send`.
    pub async fn send(&self, req: SendRequest) -> Result<SendOk, EngineError> {
        self.inner.send(req).await
    }

    /// Timeline entries of `conv` with seq > `after`, at most `limit`, and
    /// whether more follow.
    pub async fn history(
        &self,
        conv: &ConvId,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, bool), EngineError> {
        self.inner.history(conv, after, limit).await
    }

    /// Create or update a user (upsert); `created_ts` survives updates.
    pub async fn put_user(
        &self,
        user: UserId,
        name: Option<String>,
        meta: Option<RawJson>,
    ) -> Result<UserRecord, EngineError> {
        self.inner.put_user(user, name, meta).await
    }

    /// The stored user, if any.
    pub async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>, EngineError> {
        self.inner.get_user(user).await
    }

    /// Delete a user, revoke its tokens, close its connections.
    /// `Ok(false)`: there was no such user.
    pub async fn delete_user(&self, user: &UserId) -> Result<bool, EngineError> {
        self.inner.delete_user(user).await
    }

    /// Create or update a group (PROTOCOL.md `PUT /v1/groups/{group}`):
    /// creation emits 1501 (data lists the members), a new name 1502;
    /// `members`, when given, replaces the list (1509 added, 1508 removed).
    /// Unknown user ids → `no_such_user` and nothing changes.
    pub async fn put_group(
        &self,
        group: GroupId,
        name: Option<String>,
        members: Option<Vec<UserId>>,
    ) -> Result<GroupRecord, EngineError> {
        self.inner.put_group(group, name, members).await
    }

    /// The stored group, if any.
    pub async fn get_group(&self, group: &GroupId) -> Result<Option<GroupRecord>, EngineError> {
        self.inner.get_group(group).await
    }

    /// Dismiss a group (emits 1520). `Ok(false)`: no such group.
    pub async fn delete_group(&self, group: &GroupId) -> Result<bool, EngineError> {
        self.inner.delete_group(group).await
    }

    /// Add and remove members (1509 / 1508); returns the new member count.
    /// `no_such_group`, or `no_such_user` for an unknown id in `add` (then
    /// nothing changes). The caller bounds the list sizes.
    pub async fn change_members(
        &self,
        group: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<u64, EngineError> {
        self.inner.change_members(group, add, remove).await
    }

    /// A page of members after `after` (exclusive).
    pub async fn members(
        &self,
        group: &GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<MembersPage, EngineError> {
        self.inner.members(group, after, limit).await
    }

    /// Online devices of a user.
    pub async fn presence(&self, user: &UserId) -> Result<Presence, EngineError> {
        self.inner.presence(user).await
    }

    /// Close a user's connections (one device or all) with `kicked`;
    /// returns how many.
    pub async fn kick(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        self.inner.kick(user, device, reason).await
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> EngineMetrics {
        self.inner.metrics()
    }

    /// Mint an access token (`ErrorCode::NoSuchUser` for an unknown user).
    /// The caller checks `ttl_s` against its bounds.
    pub async fn mint_token(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        ttl_s: u64,
    ) -> Result<MintedToken, EngineError> {
        self.inner.mint_token(user, device, ttl_s).await
    }
}
