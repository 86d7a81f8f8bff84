//! An in-memory [`Engine`] for router tests: users in a map, sends recorded,
//! history served from the recorded sends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tern_engine::{EngineError, MintedToken, SendOk, SendRequest, UserRecord};
use tern_proto::{ConvId, DeviceId, Entry, ErrorCode, Msg, RawJson, Target, UserId};

use crate::engine::Engine;

/// Server time the fake reports for everything.
pub(crate) const FAKE_TS: u64 = 1_700_000_000_000;

#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) users: BTreeMap<UserId, UserRecord>,
    pub(crate) sends: Vec<SendRequest>,
    pub(crate) mints: Vec<(UserId, Option<DeviceId>, u64)>,
    pub(crate) history_calls: Vec<(ConvId, u64, u32)>,
    /// When set, every call fails with this code.
    pub(crate) fail: Option<ErrorCode>,
    /// How long each send takes (to have requests in flight).
    pub(crate) send_delay: std::time::Duration,
}

#[derive(Clone, Default)]
pub(crate) struct FakeEngine(pub(crate) Arc<Mutex<FakeState>>);

impl FakeEngine {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, EngineError> {
        let st = self.0.lock().unwrap();
        match st.fail {
            Some(code) => Err(EngineError {
                code,
                message: format!("fake {code}"),
            }),
            None => Ok(st),
        }
    }
}

impl Engine for FakeEngine {
    async fn send(&self, req: SendRequest) -> Result<SendOk, EngineError> {
        let delay = self.0.lock().unwrap().send_delay;
        tokio::time::sleep(delay).await;
        let mut st = self.lock()?;
        let sender = req
            .from
            .clone()
            .unwrap_or_else(|| UserId::parse("system").unwrap());
        let conv = Target::parse(&req.to).unwrap().conv_for(&sender);
        if let ConvId::Group(g) = &conv {
            if g.as_str() == "nope" {
                return Err(EngineError {
                    code: ErrorCode::NoSuchGroup,
                    message: "no such group: nope".into(),
                });
            }
        }
        st.sends.push(req);
        let seq = st.sends.len() as u64;
        Ok(SendOk {
            conv,
            seq,
            ts: FAKE_TS + seq,
        })
    }

    async fn history(
        &self,
        conv: &ConvId,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, bool), EngineError> {
        let mut st = self.lock()?;
        st.history_calls.push((conv.clone(), after, limit));
        let all: Vec<Entry> = st
            .sends
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Entry::Msg(Msg {
                    conv: conv.to_string(),
                    seq: i as u64 + 1,
                    from: s.from.as_ref().map_or("system".into(), |u| u.to_string()),
                    device: String::new(),
                    cmid: s.cmid.clone().unwrap_or_default(),
                    kind: s.kind,
                    body: s.body.clone(),
                    ts: FAKE_TS + i as u64 + 1,
                })
            })
            .filter(|e| e.seq() > after)
            .collect();
        let limit = limit as usize;
        let has_more = all.len() > limit;
        Ok((all.into_iter().take(limit).collect(), has_more))
    }

    async fn put_user(
        &self,
        user: UserId,
        name: Option<String>,
        meta: Option<RawJson>,
    ) -> Result<UserRecord, EngineError> {
        let mut st = self.lock()?;
        let created_ts = st.users.get(&user).map_or(FAKE_TS, |u| u.created_ts);
        let rec = UserRecord {
            user: user.clone(),
            name,
            meta,
            created_ts,
        };
        st.users.insert(user, rec.clone());
        Ok(rec)
    }

    async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>, EngineError> {
        Ok(self.lock()?.users.get(user).cloned())
    }

    async fn delete_user(&self, user: &UserId) -> Result<bool, EngineError> {
        Ok(self.lock()?.users.remove(user).is_some())
    }

    async fn mint_token(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        ttl_s: u64,
    ) -> Result<MintedToken, EngineError> {
        let mut st = self.lock()?;
        if !st.users.contains_key(user) {
            return Err(EngineError {
                code: ErrorCode::NoSuchUser,
                message: format!("no such user: {user}"),
            });
        }
        st.mints.push((user.clone(), device, ttl_s));
        Ok(MintedToken {
            token: format!("tok.{user}"),
            expires_ts: FAKE_TS + ttl_s * 1000,
        })
    }
}
