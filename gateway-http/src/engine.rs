//! The engine calls the handlers make, as a trait so the routes can be tested
//! against a fake without starting shards. Production uses
//! [`tern_engine::EngineHandle`], whose methods these forward to one to one.

use std::future::Future;

use tern_engine::{
    EngineError, EngineHandle, EngineMetrics, GroupRecord, MembersPage, MintedToken, Presence,
    SendOk, SendRequest, UserRecord,
};
use tern_proto::{ConvId, DeviceId, Entry, GroupId, RawJson, UserId};

/// Mirror of [`EngineHandle`]'s methods; see their docs for the semantics.
pub(crate) trait Engine: Clone + Send + Sync + 'static {
    fn send(&self, req: SendRequest) -> impl Future<Output = Result<SendOk, EngineError>> + Send;

    fn history(
        &self,
        conv: &ConvId,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<Entry>, bool), EngineError>> + Send;

    fn put_user(
        &self,
        user: UserId,
        name: Option<String>,
        meta: Option<RawJson>,
    ) -> impl Future<Output = Result<UserRecord, EngineError>> + Send;

    fn get_user(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<UserRecord>, EngineError>> + Send;

    fn delete_user(&self, user: &UserId) -> impl Future<Output = Result<bool, EngineError>> + Send;

    fn mint_token(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        ttl_s: u64,
    ) -> impl Future<Output = Result<MintedToken, EngineError>> + Send;

    fn put_group(
        &self,
        group: GroupId,
        name: Option<String>,
        members: Option<Vec<UserId>>,
    ) -> impl Future<Output = Result<GroupRecord, EngineError>> + Send;

    fn get_group(
        &self,
        group: &GroupId,
    ) -> impl Future<Output = Result<Option<GroupRecord>, EngineError>> + Send;

    fn delete_group(
        &self,
        group: &GroupId,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send;

    fn change_members(
        &self,
        group: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send;

    fn members(
        &self,
        group: &GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> impl Future<Output = Result<MembersPage, EngineError>> + Send;

    fn presence(&self, user: &UserId)
        -> impl Future<Output = Result<Presence, EngineError>> + Send;

    fn kick(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        reason: Option<String>,
    ) -> impl Future<Output = Result<usize, EngineError>> + Send;

    fn metrics(&self) -> EngineMetrics;
}

impl Engine for EngineHandle {
    fn send(&self, req: SendRequest) -> impl Future<Output = Result<SendOk, EngineError>> + Send {
        EngineHandle::send(self, req)
    }

    fn history(
        &self,
        conv: &ConvId,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<Entry>, bool), EngineError>> + Send {
        EngineHandle::history(self, conv, after, limit)
    }

    fn put_user(
        &self,
        user: UserId,
        name: Option<String>,
        meta: Option<RawJson>,
    ) -> impl Future<Output = Result<UserRecord, EngineError>> + Send {
        EngineHandle::put_user(self, user, name, meta)
    }

    fn get_user(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<UserRecord>, EngineError>> + Send {
        EngineHandle::get_user(self, user)
    }

    fn delete_user(&self, user: &UserId) -> impl Future<Output = Result<bool, EngineError>> + Send {
        EngineHandle::delete_user(self, user)
    }

    fn mint_token(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        ttl_s: u64,
    ) -> impl Future<Output = Result<MintedToken, EngineError>> + Send {
        EngineHandle::mint_token(self, user, device, ttl_s)
    }
    fn put_group(
        &self,
        group: GroupId,
        name: Option<String>,
        members: Option<Vec<UserId>>,
    ) -> impl Future<Output = Result<GroupRecord, EngineError>> + Send {
        EngineHandle::put_group(self, group, name, members)
    }

    fn get_group(
        &self,
        group: &GroupId,
    ) -> impl Future<Output = Result<Option<GroupRecord>, EngineError>> + Send {
        EngineHandle::get_group(self, group)
    }

    fn delete_group(
        &self,
        group: &GroupId,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send {
        EngineHandle::delete_group(self, group)
    }

    fn change_members(
        &self,
        group: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send {
        EngineHandle::change_members(self, group, add, remove)
    }

    fn members(
        &self,
        group: &GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> impl Future<Output = Result<MembersPage, EngineError>> + Send {
        EngineHandle::members(self, group, after, limit)
    }

    fn presence(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Presence, EngineError>> + Send {
        EngineHandle::presence(self, user)
    }

    fn kick(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        reason: Option<String>,
    ) -> impl Future<Output = Result<usize, EngineError>> + Send {
        EngineHandle::kick(self, user, device, reason)
    }

    fn metrics(&self) -> EngineMetrics {
        EngineHandle::metrics(self)
    }
}
