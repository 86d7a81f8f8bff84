//! [`EngineHandle`]: the only door into the engine for other threads (the HTTP
//! gateway). Every call is a message to a shard or a job on the storage reader
//! pool, answered through a oneshot; nothing here touches a socket.

use tern_proto::{ConvId, DeviceId, Entry, ErrorCode, Kind, RawJson, UserId};

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
