//! An in-memory [`Engine`] for router tests: users and groups in maps,
//! sends recorded, history served from the recorded sends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tern_engine::{
    EngineError, EngineMetrics, GroupRecord, MembersPage, MintedToken, Presence, SendOk,
    SendRequest, UserRecord,
};
use tern_proto::{ConvId, DeviceId, Entry, ErrorCode, GroupId, Msg, RawJson, Target, UserId};

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
    pub(crate) groups: BTreeMap<GroupId, (GroupRecord, BTreeSet<UserId>)>,
    /// Every `change_members` call as (group, add, remove).
    pub(crate) changes: Vec<(GroupId, Vec<UserId>, Vec<UserId>)>,
    /// Every `members` call as (group, after, limit).
    pub(crate) member_calls: Vec<(GroupId, Option<UserId>, u32)>,
    /// Connected devices per user: (device, since_ts).
    pub(crate) online: BTreeMap<UserId, Vec<(DeviceId, u64)>>,
    /// Every `kick` call as (user, device, reason).
    pub(crate) kicks: Vec<(UserId, Option<DeviceId>, Option<String>)>,
    /// What `metrics` returns.
    pub(crate) metrics: EngineMetrics,
}

fn no_such_user(u: &UserId) -> EngineError {
    EngineError {
        code: ErrorCode::NoSuchUser,
        message: format!("no such user: {u}"),
    }
}

fn no_such_group(g: &GroupId) -> EngineError {
    EngineError {
        code: ErrorCode::NoSuchGroup,
        message: format!("no such group: {g}"),
    }
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

    async fn put_group(
        &self,
        group: GroupId,
        name: Option<String>,
        members: Option<Vec<UserId>>,
    ) -> Result<GroupRecord, EngineError> {
        let mut st = self.lock()?;
        if let Some(unknown) = members
            .iter()
            .flatten()
            .find(|u| !st.users.contains_key(*u))
        {
            return Err(no_such_user(unknown));
        }
        let (mut rec, mut set) = st.groups.remove(&group).unwrap_or_else(|| {
            let rec = GroupRecord {
                group: group.clone(),
                name: None,
                members_count: 0,
                created_ts: FAKE_TS,
            };
            (rec, BTreeSet::new())
        });
        if name.is_some() {
            rec.name = name;
        }
        if let Some(m) = members {
            set = m.into_iter().collect();
        }
        rec.members_count = set.len() as u64;
        st.groups.insert(group, (rec.clone(), set));
        Ok(rec)
    }

    async fn get_group(&self, group: &GroupId) -> Result<Option<GroupRecord>, EngineError> {
        Ok(self.lock()?.groups.get(group).map(|(r, _)| r.clone()))
    }

    async fn delete_group(&self, group: &GroupId) -> Result<bool, EngineError> {
        Ok(self.lock()?.groups.remove(group).is_some())
    }

    async fn change_members(
        &self,
        group: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<u64, EngineError> {
        let mut st = self.lock()?;
        if !st.groups.contains_key(group) {
            return Err(no_such_group(group));
        }
        if let Some(unknown) = add.iter().find(|u| !st.users.contains_key(*u)) {
            return Err(no_such_user(unknown));
        }
        st.changes
            .push((group.clone(), add.clone(), remove.clone()));
        let Some((rec, set)) = st.groups.get_mut(group) else {
            return Err(no_such_group(group));
        };
        set.extend(add);
        for u in &remove {
            set.remove(u);
        }
        rec.members_count = set.len() as u64;
        Ok(rec.members_count)
    }

    async fn members(
        &self,
        group: &GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<MembersPage, EngineError> {
        let mut st = self.lock()?;
        st.member_calls.push((group.clone(), after.clone(), limit));
        let Some((_, set)) = st.groups.get(group) else {
            return Err(no_such_group(group));
        };
        let rest: Vec<UserId> = set
            .iter()
            .filter(|u| after.as_ref().is_none_or(|a| *u > a))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        let more = rest.len() > limit as usize;
        let members: Vec<UserId> = rest.into_iter().take(limit as usize).collect();
        let next = if more { members.last().cloned() } else { None };
        Ok(MembersPage { members, next })
    }

    async fn presence(&self, user: &UserId) -> Result<Presence, EngineError> {
        let st = self.lock()?;
        let devices = st.online.get(user).cloned().unwrap_or_default();
        Ok(Presence {
            user: user.clone(),
            online: !devices.is_empty(),
            devices,
        })
    }

    async fn kick(
        &self,
        user: &UserId,
        device: Option<DeviceId>,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        let mut st = self.lock()?;
        st.kicks.push((user.clone(), device.clone(), reason));
        let Some(devices) = st.online.get_mut(user) else {
            return Ok(0);
        };
        let before = devices.len();
        devices.retain(|(d, _)| device.as_ref().is_some_and(|want| d != want));
        Ok(before - devices.len())
    }

    fn metrics(&self) -> EngineMetrics {
        self.0.lock().unwrap().metrics.clone()
    }
}
