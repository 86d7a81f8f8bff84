//! The engine side of [`crate::EngineHandle`]: sends go to the owner shard
//! through the mesh (same path and guarantees as a WebSocket send); storage
//! reads and user writes run on the reader pool. Answers come back on oneshots.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use tern_proto::{
    ConvId, DeviceId, Entry, ErrorCode, GroupId, Kind, RawJson, Target, UserId, BODY_BYTES_MAX,
    ID_BYTES_MAX,
};
use tern_storage::{Storage, UserRow};

use crate::handle::*;
use crate::mesh::{home_shard, owner_shard, GroupOp, ReplyTo, SendJob, ShardMsg};
use crate::shard::authorize_send;
use crate::shared::{now_ms, Shared, FANOUT_BUCKETS, SYSTEM_USER};

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> EngineError {
    EngineError {
        code,
        message: message.into(),
    }
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
        rx.await
            .map_err(|_| err(ErrorCode::Unavailable, "reader stopped"))
    }

    pub(crate) async fn send(&self, req: SendRequest) -> Result<SendOk, EngineError> {
        let system =
            UserId::parse(SYSTEM_USER).map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
        let sender = req.from.clone().unwrap_or(system);
        let target =
            Target::parse(&req.to).map_err(|e| err(ErrorCode::BadRequest, format!("to: {e}")))?;
        let conv = target.conv_for(&sender);
        if let Some(from) = &req.from {
            authorize_send(&sender, &conv).map_err(|(code, m)| err(code, m))?;
            self.check_users_exist(std::slice::from_ref(from)).await?;
        }
        if req.body.as_str().len() > BODY_BYTES_MAX {
            return Err(err(
                ErrorCode::TooLarge,
                format!("body over {BODY_BYTES_MAX} bytes"),
            ));
        }
        if req.kind == Kind::Text && !req.body.is_string() {
            return Err(err(
                ErrorCode::BadRequest,
                "a text body must be a JSON string",
            ));
        }
        let (cmid, dedup) = match req.cmid {
            Some(c) if c.is_empty() || c.len() > ID_BYTES_MAX => {
                return Err(err(ErrorCode::BadRequest, "cmid must be 1-64 bytes"));
            }
            Some(c) => (c, true),
            None => (server_cmid(), false),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
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
        self.shared
            .stats
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        crate::owner::submit(&self.shared, None, job);
        rx.await
            .map_err(|_| err(ErrorCode::Unavailable, "engine stopped"))?
    }

    pub(crate) async fn history(
        &self,
        conv: &ConvId,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, bool), EngineError> {
        let conv = conv.clone();
        let limit = limit.clamp(1, crate::limits::SYNC_LIMIT_MAX) as usize;
        self.blocking(move |s| s.read_entries(&conv, after, limit))
            .await?
            .map_err(storage_err)
    }

    pub(crate) async fn put_user(
        &self,
        user: UserId,
        name: Option<String>,
        meta: Option<RawJson>,
    ) -> Result<UserRecord, EngineError> {
        if user.as_str() == SYSTEM_USER {
            return Err(err(
                ErrorCode::BadRequest,
                "`system` is reserved for messages from business systems",
            ));
        }
        let row = UserRow {
            user,
            name,
            meta_json: meta.map(|m| m.as_str().to_owned()),
            created_ts: now_ms(),
        };
        let row = self
            .blocking(move |s| s.put_user(&row))
            .await?
            .map_err(storage_err)?;
        record(row)
    }

    pub(crate) async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>, EngineError> {
        let u = user.clone();
        match self
            .blocking(move |s| s.get_user(&u))
            .await?
            .map_err(storage_err)?
        {
            Some(row) => record(row).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn delete_user(&self, user: &UserId) -> Result<bool, EngineError> {
        let u = user.clone();
        let at = now_ms();
        let existed = self
            .blocking(move |s| s.delete_user(&u, at))
            .await?
            .map_err(storage_err)?;
        if existed {
            if let Ok(mut m) = self.shared.revoked.write() {
                m.insert(user.clone(), at);
            }
            for shard in 0..self.shared.mesh.n_shards() {
                self.shared
                    .mesh
                    .send_from_outside(shard, ShardMsg::UserGone(user.clone()));
            }
            let home = home_shard(user, self.shared.mesh.n_shards());
            self.shared.mesh.send_from_outside(
                home,
                ShardMsg::Kick {
                    user: user.clone(),
                    device: None,
                    reason: "user_deleted".into(),
                    reply: None,
                },
            );
        }
        Ok(existed)
    }

    pub(crate) async fn mint_token(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        ttl_s: u64,
    ) -> Result<MintedToken, EngineError> {
        let u = user.clone();
        if !self
            .blocking(move |s| s.user_exists(&u))
            .await?
            .map_err(storage_err)?
        {
            return Err(err(ErrorCode::NoSuchUser, format!("no user {user}")));
        }
        // Issued strictly after any revocation of this user, so a user
        // re-created right after a delete gets tokens that work.
        let revoked_at = self
            .shared
            .revoked
            .read()
            .ok()
            .and_then(|m| m.get(user).copied())
            .unwrap_or(0);
        let iat = now_ms().max(revoked_at + 1);
        let ttl_ms = ttl_s.saturating_mul(1000);
        let token = crate::token::mint(
            &self.shared.cfg.token_key,
            user,
            device.as_ref(),
            iat,
            ttl_ms,
        );
        Ok(MintedToken {
            token,
            expires_ts: iat + ttl_ms,
        })
    }
}

impl Inner {
    /// `no_such_user` for the first id in `users` that is not a user.
    async fn check_users_exist(&self, users: &[UserId]) -> Result<(), EngineError> {
        let list = users.to_vec();
        let missing = self
            .blocking(move |s| {
                for u in &list {
                    match s.user_exists(u) {
                        Ok(true) => {}
                        Ok(false) => return Ok(Some(u.clone())),
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            })
            .await?
            .map_err(storage_err)?;
        match missing {
            Some(u) => Err(err(ErrorCode::NoSuchUser, format!("no user {u}"))),
            None => Ok(()),
        }
    }

    /// Run a group operation on the group's owner shard.
    async fn group_op(&self, group: &GroupId, op: GroupOp) -> Result<GroupRecord, EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = owner_shard(&ConvId::group(group), self.shared.mesh.n_shards());
        if !self.shared.mesh.send_from_outside(
            owner,
            ShardMsg::GroupOp {
                group: group.clone(),
                op,
                reply: tx,
            },
        ) {
            return Err(err(ErrorCode::Unavailable, "engine busy"));
        }
        rx.await
            .map_err(|_| err(ErrorCode::Unavailable, "engine stopped"))?
    }

    pub(crate) async fn put_group(
        &self,
        group: GroupId,
        name: Option<String>,
        members: Option<Vec<UserId>>,
    ) -> Result<GroupRecord, EngineError> {
        if let Some(m) = &members {
            self.check_users_exist(m).await?;
        }
        self.group_op(&group, GroupOp::Put { name, members }).await
    }

    pub(crate) async fn get_group(
        &self,
        group: &GroupId,
    ) -> Result<Option<GroupRecord>, EngineError> {
        let g = group.clone();
        let row = self
            .blocking(move |s| s.get_group(&g))
            .await?
            .map_err(storage_err)?;
        Ok(row.map(|r| GroupRecord {
            group: r.group,
            name: r.name,
            members_count: r.members_count,
            created_ts: r.created_ts,
        }))
    }

    pub(crate) async fn delete_group(&self, group: &GroupId) -> Result<bool, EngineError> {
        match self.group_op(group, GroupOp::Delete).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::NoSuchGroup => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn change_members(
        &self,
        group: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<u64, EngineError> {
        self.check_users_exist(&add).await?;
        Ok(self
            .group_op(group, GroupOp::Members { add, remove })
            .await?
            .members_count)
    }

    pub(crate) async fn members(
        &self,
        group: &GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<MembersPage, EngineError> {
        let g = group.clone();
        let limit = limit.max(1) as usize;
        let page = self
            .blocking(
                move |s| -> Result<Option<(Vec<UserId>, bool)>, tern_storage::StorageError> {
                    if s.get_group(&g)?.is_none() {
                        return Ok(None);
                    }
                    s.members_page(&g, after.as_ref(), limit).map(Some)
                },
            )
            .await?
            .map_err(storage_err)?;
        let Some((members, more)) = page else {
            return Err(err(ErrorCode::NoSuchGroup, format!("no group {group}")));
        };
        let next = if more { members.last().cloned() } else { None };
        Ok(MembersPage { members, next })
    }

    pub(crate) async fn presence(&self, user: &UserId) -> Result<Presence, EngineError> {
        self.check_users_exist(std::slice::from_ref(user)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let home = home_shard(user, self.shared.mesh.n_shards());
        if !self.shared.mesh.send_from_outside(
            home,
            ShardMsg::Presence {
                user: user.clone(),
                reply: tx,
            },
        ) {
            return Err(err(ErrorCode::Unavailable, "engine busy"));
        }
        let devices = rx
            .await
            .map_err(|_| err(ErrorCode::Unavailable, "engine stopped"))?;
        Ok(Presence {
            user: user.clone(),
            online: !devices.is_empty(),
            devices,
        })
    }

    pub(crate) async fn kick(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        self.check_users_exist(std::slice::from_ref(user)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let home = home_shard(user, self.shared.mesh.n_shards());
        let reason = reason.unwrap_or_else(|| "kicked".to_owned());
        if !self.shared.mesh.send_from_outside(
            home,
            ShardMsg::Kick {
                user: user.clone(),
                device,
                reason,
                reply: Some(tx),
            },
        ) {
            return Err(err(ErrorCode::Unavailable, "engine busy"));
        }
        rx.await
            .map_err(|_| err(ErrorCode::Unavailable, "engine stopped"))
    }

    pub(crate) fn metrics(&self) -> EngineMetrics {
        let st = &self.shared.stats;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let mut fanout_buckets = Vec::with_capacity(FANOUT_BUCKETS.len());
        for (i, le) in FANOUT_BUCKETS.iter().enumerate() {
            cumulative += ld(&st.fanout[i]);
            fanout_buckets.push((*le, cumulative));
        }
        let fanout_count = cumulative + ld(&st.fanout[FANOUT_BUCKETS.len()]);
        let n = self.shared.mesh.n_shards();
        EngineMetrics {
            connections_per_shard: st
                .connections
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            messages_in: ld(&st.messages_in),
            messages_stored: ld(&st.messages_stored),
            deliveries: ld(&st.deliveries),
            redeliveries: ld(&st.redeliveries),
            notices: ld(&st.notices),
            rate_limited: ld(&st.rate_limited),
            queue_depth_per_shard: (0..n).map(|i| self.shared.mesh.depth(i) as u64).collect(),
            fanout_buckets,
            fanout_count,
            fanout_sum: ld(&st.fanout_sum),
            events_dropped: ld(&st.events_dropped),
            storage: self.shared.storage.stats(),
        }
    }
}

fn record(row: UserRow) -> Result<UserRecord, EngineError> {
    let meta = match row.meta_json {
        Some(m) => Some(
            RawJson::from_text(m)
                .map_err(|e| err(ErrorCode::Unavailable, format!("stored meta: {e}")))?,
        ),
        None => None,
    };
    Ok(UserRecord {
        user: row.user,
        name: row.name,
        meta,
        created_ts: row.created_ts,
    })
}
