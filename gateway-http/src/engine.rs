//! The engine calls the handlers make, as a trait so the routes can be tested
//! against a fake without starting shards. Production uses
//! [`tern_engine::EngineHandle`], whose methods these forward to one to one.

use std::future::Future;

use tern_engine::{EngineError, EngineHandle, MintedToken, SendOk, SendRequest, UserRecord};
use tern_proto::{ConvId, DeviceId, Entry, RawJson, UserId};

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
}
