//! The engine side of [`crate::EngineHandle`]: sends go to the owner shard
//! through the mesh (same path and guarantees as a WebSocket send); storage
//! reads and user writes run on the reader pool. Answers come back on oneshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tern_proto::{ConvId, DeviceId, Entry, ErrorCode, Kind, RawJson, Target, UserId, BODY_BYTES_MAX, ID_BYTES_MAX};
use tern_storage::{Storage, UserRow};

use crate::handle::*;
use crate::mesh::{home_shard, owner_shard, ReplyTo, SendJob, ShardMsg};
use crate::shard::authorize;
use crate::shared::{now_ms, Shared, SYSTEM_USER};

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> EngineError {
    EngineError { code, message: message.into() }
}

fn storage_err(e: tern_storage::StorageError) -> EngineError {
    err(ErrorCode::Unavailable, format!("storage: {e}"))
}

/// Server-made cmids for sends without one: unique within this process run
/// and never deduplicated.
fn server_cmid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("srv-{}-{}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Inner {
    /// Run `f` against storage on the reader pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let storage = self.shared.storage.clone();
        let queued = self.shared.readers.spawn(Box::new(move || {
            let _ = tx.send(f(&storage));
        }));
        if !queued {
            return Err(err(ErrorCode::Unavailable, "too many reads in flight"));
        }
        rx.await.map_err(|_| err(ErrorCode::Unavailable, "reader stopped"))
    }

    pub(crate) async fn send(&self, req: SendRequest) -> Result<SendOk, EngineError> {
        let system = UserId::parse(SYSTEM_USER).map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
        let sender = req.from.clone().unwrap_or(system);
        let target = Target::parse(&req.to).map_err(|e| err(ErrorCode::BadRequest, format!("to: {e}")))?;
        let conv = target.conv_for(&sender);
        if req.from.is_some() {
            authorize(&sender, &conv).map_err(|(code, m)| err(code, m))?;
        } else if let ConvId::Group(g) = &conv {
            return Err(err(ErrorCode::NoSuchGroup, format!("no group {g}")));
        }
        if req.body.as_str().len() > BODY_BYTES_MAX {
            return Err(err(ErrorCode::TooLarge, format!("body over {BODY_BYTES_MAX} bytes")));
        }
        if req.kind == Kind::Text && !req.body.is_string() {
            return Err(err(ErrorCode::BadRequest, "a text body must be a JSON string"));
        }
        let (cmid, dedup) = match req.cmid {
            Some(c) if c.is_empty() || c.len() > ID_BYTES_MAX => {
                return Err(err(ErrorCode::BadRequest, "cmid must be 1-64 bytes"));
            }
            Some(c) => (c, true),
            None => (server_cmid(), false),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let n = self.shared.mesh.n_shards();
        let owner = owner_shard(&conv, n);
        let job = SendJob {
            conv,
            from: sender,
            device: String::new(),
            cmid,
            dedup,
            kind: req.kind,
            body: req.body,
            reply: ReplyTo::Http(tx),
        };
        self.shared.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if !self.shared.mesh.send_from_outside(owner, ShardMsg::Send(job)) {
            return Err(err(ErrorCode::Unavailable, "engine busy"));
        }
        rx.await.map_err(|_| err(ErrorCode::Unavailable, "engine stopped"))?
    }

    pub(crate) async fn history(&self, conv: &ConvId, after: u64, limit: u32) -> Result<(Vec<Entry>, bool), EngineError> {
        let conv = conv.clone();
        let limit = limit.clamp(1, crate::limits::SYNC_LIMIT_MAX) as usize;
        self.blocking(move |s| s.read_entries(&conv, after, limit)).await?.map_err(storage_err)
    }

    pub(crate) async fn put_user(&self, user: UserId, name: Option<String>, meta: Option<RawJson>) -> Result<UserRecord, EngineError> {
        if user.as_str() == SYSTEM_USER {
            return Err(err(ErrorCode::BadRequest, "`system` is reserved for messages from business systems"));
        }
        let row = UserRow { user, name, meta_json: meta.map(|m| m.as_str().to_owned()), created_ts: now_ms() };
        let row = self.blocking(move |s| s.put_user(&row)).await?.map_err(storage_err)?;
        record(row)
    }

    pub(crate) async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>, EngineError> {
        let u = user.clone();
        match self.blocking(move |s| s.get_user(&u)).await?.map_err(storage_err)? {
            Some(row) => record(row).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn delete_user(&self, user: &UserId) -> Result<bool, EngineError> {
        let u = user.clone();
        let at = now_ms();
        let existed = self.blocking(move |s| s.delete_user(&u, at)).await?.map_err(storage_err)?;
        if existed {
            if let Ok(mut m) = self.shared.revoked.write() {
                m.insert(user.clone(), at);
            }
            let home = home_shard(user, self.shared.mesh.n_shards());
            self.shared.mesh.send_from_outside(
                home,
                ShardMsg::Kick { user: user.clone(), device: None, reason: "user_deleted".into(), reply: None },
            );
        }
        Ok(existed)
    }

    pub(crate) async fn mint_token(&self, user: &UserId, device: Option<DeviceId>, ttl_s: u64) -> Result<MintedToken, EngineError> {
        let u = user.clone();
        if !self.blocking(move |s| s.user_exists(&u)).await?.map_err(storage_err)? {
            return Err(err(ErrorCode::NoSuchUser, format!("no user {user}")));
        }
        // Issued strictly after any revocation of this user, so a user
        // re-created right after a delete gets tokens that work.
        let revoked_at = self.shared.revoked.read().ok().and_then(|m| m.get(user).copied()).unwrap_or(0);
        let iat = now_ms().max(revoked_at + 1);
        let ttl_ms = ttl_s.saturating_mul(1000);
        let token = crate::token::mint(&self.shared.cfg.token_key, user, device.as_ref(), iat, ttl_ms);
        Ok(MintedToken { token, expires_ts: iat + ttl_ms })
    }
}

fn record(row: UserRow) -> Result<UserRecord, EngineError> {
    let meta = match row.meta_json {
        Some(m) => Some(RawJson::from_text(m).map_err(|e| err(ErrorCode::Unavailable, format!("stored meta: {e}")))?),
        None => None,
    };
    Ok(UserRecord { user: row.user, name: row.name, meta, created_ts: row.created_ts })
}
