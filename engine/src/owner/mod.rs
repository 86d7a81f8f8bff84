//! The owner side of a conversation: it alone assigns seqs, deduplicates
//! cmids, asks for the durable write, and starts the fan-out once the write is
//! committed (PROTOCOL.md guarantees 1–3).
//!
//! Invariants:
//! - per conversation, `committed <= next`, and every seq in
//!   `committed+1..=next` has exactly one write in flight;
//! - a send is acknowledged only from [`on_committed`], i.e. after the storage
//!   writer reported the batch durable;
//! - when a write fails, the seqs after it fail too (the writer refuses a gap),
//!   new sends are refused `unavailable` until the in-flight ones have drained,
//!   and then numbering resumes at `committed + 1`: no seq is ever skipped.

use std::rc::Rc;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use tern_proto::{ConvId, Entry, ErrorCode, Event, GroupId, Msg, RawJson, ServerFrame, UserId};
use tern_storage::{GroupRow, StorageError, StoredEntry, WriteOp, WriteRequest};

use crate::encoded::Encoded;
use crate::handle::{EngineError, GroupRecord, SendOk};
use crate::hooks::{BeforeSendRequest, EngineEvent, Verdict};
use crate::mesh::{
    by_home_shard, owner_shard, ConnRef, GroupAccess, GroupOp, GroupOpReply, ReplyTo, SendJob,
    ShardMsg, Tracked,
};
use crate::shard::Shard;
use crate::shared::{now_ms, Shared, SYSTEM_USER};
use inflight::{InFlight, Ticket};
use pending::TokenRing;

mod inflight;
mod pending;

/// Sequencing state of one conversation.
#[derive(Debug, Default, Clone, Copy)]
struct ConvSeq {
    /// Last seq handed out.
    next: u64,
    /// Last seq known durable.
    committed: u64,
    in_flight: u32,
    /// A write failed; refuse sends until `in_flight` drains.
    poisoned: bool,
}

/// Users remembered as existing per shard before the cache starts over.
const KNOWN_USERS_MAX: usize = 1 << 20;

/// Who gets an entry once it is durable.
enum Recipients {
    /// A dm's participants (one push shares the slice).
    Users(Arc<[UserId]>),
    /// A group's members, partitioned by home shard (shared slices).
    Parts {
        parts: Arc<Vec<Arc<[UserId]>>>,
        n: usize,
        large: bool,
    },
}

/// What to do when an entry commits.
enum Then {
    /// A message: answer the sender (and duplicates waiting on it), tell the
    /// webhooks.
    Msg {
        cmid: String,
        reply: ReplyTo,
        dedup: Option<Ticket>,
        event: Option<Box<EngineEvent>>,
    },
    /// A group event: answer the HTTP caller after the last event of its op.
    Event {
        code: u16,
        data: RawJson,
        reply: Option<(GroupOpReply, GroupRecord)>,
    },
}

struct PendingAppend {
    conv: ConvId,
    /// `conv`'s text, built once per entry (frame, ack, unacked record).
    text: Arc<str>,
    seq: u64,
    ts: u64,
    except: Option<ConnRef>,
    recipients: Recipients,
    frame: Arc<Encoded>,
    then: Then,
}

/// A group as its owner shard knows it (loaded from storage on first use).
struct GroupState {
    name: Option<String>,
    created_ts: u64,
    members: HashSet<UserId>,
    /// `members` partitioned by home shard; rebuilt after a change.
    parts: Option<Arc<Vec<Arc<[UserId]>>>>,
    /// The conversation's text, built once and shared by every push: a
    /// device's activity record adopts it, so later pushes compare pointers.
    text: Option<Arc<str>>,
}

impl GroupState {
    fn parts(&mut self, n_shards: usize) -> Arc<Vec<Arc<[UserId]>>> {
        if let Some(p) = &self.parts {
            return p.clone();
        }
        let by_home = by_home_shard(&self.members, n_shards);
        let p: Arc<Vec<Arc<[UserId]>>> = Arc::new(by_home.into_iter().map(Into::into).collect());
        self.parts = Some(p.clone());
        p
    }

    fn text(&mut self, group: &GroupId) -> Arc<str> {
        self.text
            .get_or_insert_with(|| ConvId::Group(group.clone()).to_text().into())
            .clone()
    }

    fn record(&self, group: &GroupId) -> GroupRecord {
        GroupRecord {
            group: group.clone(),
            name: self.name.clone(),
            members_count: self.members.len() as u64,
            created_ts: self.created_ts,
        }
    }
}

/// Per-shard owner state.
#[derive(Default)]
pub(crate) struct Owner {
    convs: HashMap<ConvId, ConvSeq>,
    pending: TokenRing<PendingAppend>,
    /// Deduplicated sends being stored, and duplicates waiting on them.
    in_flight: InFlight,
    next_token: u64,
    /// Groups this shard owns that were used since start; `None`: no such group.
    groups: HashMap<GroupId, Option<GroupState>>,
    /// Users seen to exist (a cache in front of a storage point read per dm
    /// send); a deleted user is forgotten by every shard (`UserGone`).
    known_users: HashSet<UserId>,
    /// Receipts to push once their read position is stored (so a device that
    /// sees a receipt and asks `convs` finds it).
    pending_reads: HashMap<u64, PendingRead>,
}

/// A `receipt` waiting for its `SetRead` to commit.
pub(crate) struct PendingRead {
    pub recipients: ReadRecipients,
    pub except: ConnRef,
    pub frame: Arc<Encoded>,
}

/// Who gets a receipt.
pub(crate) enum ReadRecipients {
    Users(Arc<[UserId]>),
    Parts(Arc<Vec<Arc<[UserId]>>>),
}

/// Store a read position, then push its receipt (see [`PendingRead`]).
pub(crate) fn store_read(
    shard: &Shard,
    user: UserId,
    conv: ConvId,
    seq: u64,
    receipt: PendingRead,
) -> Result<(), EngineError> {
    let token = shard.owner.borrow_mut().token();
    let req = WriteRequest {
        reply_to: shard.idx as u32,
        token,
        op: WriteOp::SetRead { user, conv, seq },
    };
    shard.shared.writer.submit(req).map_err(storage_err)?;
    shard
        .owner
        .borrow_mut()
        .pending_reads
        .insert(token, receipt);
    Ok(())
}

impl Owner {
    /// Owner state for the conversations this shard owns, from their stored
    /// heads (a restart continues at max_seq + 1).
    pub fn new(heads: impl IntoIterator<Item = (ConvId, u64)>) -> Owner {
        let mut o = Owner::default();
        for (conv, max) in heads {
            o.convs.insert(
                conv,
                ConvSeq {
                    next: max,
                    committed: max,
                    in_flight: 0,
                    poisoned: false,
                },
            );
        }
        o
    }

    /// Remember that `u` exists, within [`KNOWN_USERS_MAX`].
    fn remember_user(&mut self, u: &UserId) {
        if self.known_users.len() >= KNOWN_USERS_MAX {
            self.known_users.clear();
        }
        self.known_users.insert(u.clone());
    }

    /// Forget `u` (deleted).
    pub fn forget_user(&mut self, u: &UserId) {
        self.known_users.remove(u);
    }

    /// A fresh token naming one storage request of this shard.
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    pub fn in_flight(&self) -> usize {
        // Every deduplicated send in flight has its pending write.
        debug_assert!(self.in_flight.len() <= self.pending.len());
        self.pending.len()
    }
}

/// Send a send's refusal to whoever asked.
fn reply_err(shard: &Shard, to: ReplyTo, cmid: &str, e: EngineError) {
    match to {
        ReplyTo::Conn(c) => {
            let frame = ServerFrame::SendErr {
                cmid: cmid.to_owned(),
                code: e.code,
                message: e.message,
            };
            shard.mesh_send(c.shard, ShardMsg::Reply { conn: c, frame });
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(Err(e));
        }
    }
}

/// Send a send's success to whoever asked.
fn reply_ok(shard: &Shard, to: ReplyTo, cmid: String, ok: &Stored<'_>) {
    match to {
        ReplyTo::Conn(c) => {
            let frame = ServerFrame::SendAck {
                cmid,
                conv: ok.text.to_owned(),
                seq: ok.seq,
                ts: ok.ts,
            };
            shard.mesh_send(c.shard, ShardMsg::Reply { conn: c, frame });
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(Ok(SendOk {
                conv: ok.conv.clone(),
                seq: ok.seq,
                ts: ok.ts,
            }));
        }
    }
}

/// Where a message is stored, as a send's answer needs it: the id only
/// for an HTTP caller, the text only for a connection.
struct Stored<'a> {
    conv: &'a ConvId,
    text: &'a str,
    seq: u64,
    ts: u64,
}

fn err(code: ErrorCode, message: impl Into<String>) -> EngineError {
    EngineError {
        code,
        message: message.into(),
    }
}

/// A dm's recipients: its participants other than `system`.
fn dm_recipients(conv: &ConvId) -> Arc<[UserId]> {
    match conv {
        ConvId::Dm { a, b } => {
            let keep = |u: &UserId| u.as_str() != SYSTEM_USER;
            match (keep(a), keep(b) && b != a) {
                (true, true) => Arc::new([a.clone(), b.clone()]),
                (true, false) => Arc::new([a.clone()]),
                (false, true) => Arc::new([b.clone()]),
                (false, false) => Arc::new([]),
            }
        }
        ConvId::Group(_) => Arc::new([]),
    }
}

/// Route a validated send to its owner shard, through the before-send hook
/// when one is configured (the hook answers from any thread).
pub(crate) fn submit(shared: &Arc<Shared>, from_shard: Option<&Shard>, job: SendJob) {
    let owner = owner_shard(&job.conv, shared.mesh.n_shards());
    let Some(hook) = shared.cfg.before_send.clone() else {
        match from_shard {
            Some(shard) => shard.mesh_send(owner, ShardMsg::Send(job)),
            None => {
                if !shared.mesh.send_from_outside(owner, ShardMsg::Send(job)) {
                    tracing::error!("send could not reach its owner shard");
                }
            }
        }
        return;
    };
    let req = BeforeSendRequest {
        conv: job.conv.clone(),
        from: job.from.clone(),
        device: job.device.clone(),
        cmid: job.cmid.clone(),
        kind: job.kind,
        body: job.body.clone(),
    };
    let mesh = shared.mesh.clone();
    hook.check(
        req,
        Box::new(move |verdict| match verdict {
            Verdict::Allow => {
                if !mesh.send_from_outside(owner, ShardMsg::Send(job)) {
                    tracing::error!("send could not reach its owner shard");
                }
            }
            Verdict::Reject(reason) => {
                let e = err(ErrorCode::Rejected, reason);
                match job.reply {
                    ReplyTo::Conn(c) => {
                        let frame = ServerFrame::SendErr {
                            cmid: job.cmid,
                            code: e.code,
                            message: e.message,
                        };
                        mesh.send_from_outside(c.shard, ShardMsg::Reply { conn: c, frame });
                    }
                    ReplyTo::Http(tx) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        }),
    );
}

/// The group's state, loaded from storage on first use (a blocking point read
/// plus a members scan, once per group per process).
fn load_group<'a>(
    shard: &Shard,
    owner: &'a mut Owner,
    g: &GroupId,
) -> Result<Option<&'a mut GroupState>, EngineError> {
    if !owner.groups.contains_key(g) {
        let storage = &shard.shared.storage;
        let state = match storage.get_group(g).map_err(storage_err)? {
            None => None,
            Some(row) => {
                let members = storage.group_members(g).map_err(storage_err)?;
                Some(GroupState {
                    name: row.name,
                    created_ts: row.created_ts,
                    members: members.into_iter().collect(),
                    parts: None,
                    text: None,
                })
            }
        };
        owner.groups.insert(g.clone(), state);
    }
    Ok(owner.groups.get_mut(g).and_then(|s| s.as_mut()))
}

/// `unavailable` for a storage failure. The cause (which may name files of
/// the data dir) goes to the log, not to the client.
fn storage_err(e: StorageError) -> EngineError {
    tracing::warn!("storage failed: {e}");
    err(
        ErrorCode::Unavailable,
        "storage unavailable; nothing was stored, retry later",
    )
}

/// Most sends whose dedup rows are read in one `MultiGet` (a run of an
/// inbox batch, [`on_sends`]).
pub(crate) const SEND_RUN_MAX: usize = 256;

/// A send's conversation text and dedup row, read ahead with its run.
struct Prefetched {
    text: Arc<str>,
    found: Result<Option<(u64, u64)>, StorageError>,
}

/// Consecutive sends of one inbox batch (at most [`SEND_RUN_MAX`]): their
/// dedup rows are read in one `MultiGet`, then each goes on as in
/// [`on_send`], in order. Nothing else (no commit) is handled between the
/// read and the sends, so a row the read did not see was either never
/// stored or belongs to a send still in flight, which `in_flight` finds.
pub(crate) fn on_sends(shard: &Rc<Shard>, jobs: Vec<SendJob>) {
    debug_assert!(jobs.len() <= SEND_RUN_MAX);
    let now = now_ms();
    let texts: Vec<Option<Arc<str>>> = jobs
        .iter()
        .map(|j| j.dedup.then(|| j.conv.to_text().into()))
        .collect();
    let asks: Vec<(&str, &str, &str)> = jobs
        .iter()
        .zip(&texts)
        .filter_map(|(j, t)| Some((&**t.as_ref()?, j.from.as_str(), j.cmid.as_str())))
        .collect();
    let mut found = shard
        .shared
        .storage
        .dedup_lookup_many(&asks, now)
        .into_iter();
    drop(asks);
    for (job, text) in jobs.into_iter().zip(texts) {
        // (A missing answer cannot happen; the send would look up alone.)
        let pre = text.and_then(|text| {
            Some(Prefetched {
                text,
                found: found.next()?,
            })
        });
        on_send_with(shard, job, pre);
    }
}

pub(crate) fn on_send(shard: &Rc<Shard>, job: SendJob) {
    on_send_with(shard, job, None)
}

fn on_send_with(shard: &Rc<Shard>, mut job: SendJob, pre: Option<Prefetched>) {
    debug_assert_eq!(
        owner_shard(&job.conv, shard.n_shards()),
        shard.idx,
        "send routed to the wrong owner"
    );
    let storage = &shard.shared.storage;
    let n = shard.n_shards();
    let (recipients, text) = match &job.conv {
        ConvId::Dm { .. } => {
            let to = dm_recipients(&job.conv);
            // Every participant other than the sender must exist (no_such_user).
            for u in to.iter() {
                if u == &job.from {
                    continue;
                }
                if shard.owner.borrow().known_users.contains(u) {
                    continue;
                }
                match storage.user_exists(u) {
                    Ok(true) => shard.owner.borrow_mut().remember_user(u),
                    Ok(false) => {
                        return reply_err(
                            shard,
                            job.reply,
                            &job.cmid,
                            err(ErrorCode::NoSuchUser, format!("no user {u}")),
                        )
                    }
                    Err(e) => return reply_err(shard, job.reply, &job.cmid, storage_err(e)),
                }
            }
            (Recipients::Users(to), None)
        }
        ConvId::Group(g) => {
            let mut owner = shard.owner.borrow_mut();
            match load_group(shard, &mut owner, g) {
                Err(e) => {
                    drop(owner);
                    return reply_err(shard, job.reply, &job.cmid, e);
                }
                Ok(None) => {
                    drop(owner);
                    return reply_err(
                        shard,
                        job.reply,
                        &job.cmid,
                        err(ErrorCode::NoSuchGroup, format!("no group {g}")),
                    );
                }
                Ok(Some(st)) => {
                    if job.from.as_str() != SYSTEM_USER && !st.members.contains(&job.from) {
                        drop(owner);
                        return reply_err(
                            shard,
                            job.reply,
                            &job.cmid,
                            err(ErrorCode::NotMember, format!("{} is not in {g}", job.from)),
                        );
                    }
                    let large = st.members.len() > shard.shared.cfg.large_group_threshold;
                    let parts = Recipients::Parts {
                        parts: st.parts(n),
                        n: st.members.len(),
                        large,
                    };
                    (parts, Some(st.text(g)))
                }
            }
        }
    };
    let now = now_ms();
    // The group's shared text, or a dm's built once for this message.
    let (pre_text, pre_found) = match pre {
        Some(p) => (Some(p.text), Some(p.found)),
        None => (None, None),
    };
    let text: Arc<str> = text
        .or(pre_text)
        .unwrap_or_else(|| job.conv.to_text().into());
    let mut reply_to = job.reply;
    let dedup_hash = if job.dedup {
        let mut owner = shard.owner.borrow_mut();
        let h = owner.in_flight.hash(&text, &job.from, &job.cmid);
        let w = owner
            .in_flight
            .wait(h, &text, &job.from, (reply_to, job.cmid));
        drop(owner);
        let (back, cmid) = match w {
            Ok(()) => return,
            Err(w) => w,
        };
        reply_to = back;
        job.cmid = cmid;
        let found = match pre_found {
            Some(f) => f,
            None => storage.dedup_lookup(&text, job.from.as_str(), &job.cmid, now),
        };
        match found {
            Ok(Some((seq, ts))) => {
                let stored = Stored {
                    conv: &job.conv,
                    text: &text,
                    seq,
                    ts,
                };
                return reply_ok(shard, reply_to, job.cmid, &stored);
            }
            Ok(None) => {}
            Err(e) => return reply_err(shard, reply_to, &job.cmid, storage_err(e)),
        }
        Some(h)
    } else {
        None
    };
    let seq = match next_seq(shard, &job.conv) {
        Ok(s) => s,
        Err(e) => return reply_err(shard, reply_to, &job.cmid, e),
    };
    let msg = Msg {
        conv: String::from(&*text),
        seq,
        from: job.from.as_str().to_owned(),
        device: job.device,
        cmid: job.cmid.clone(),
        kind: job.kind,
        body: job.body,
        ts: now,
    };
    let event = shard.shared.cfg.events.is_some().then(|| {
        Box::new(EngineEvent::MessageSent {
            conv: job.conv.clone(),
            seq,
            from: job.from.clone(),
            device: msg.device.clone(),
            cmid: msg.cmid.clone(),
            kind: msg.kind,
            body: msg.body.clone(),
            ts: now,
        })
    });
    // The per-user conversation index needs writing once, with the first entry.
    let index_users = match (&recipients, seq) {
        (Recipients::Users(to), 1) => to.to_vec(),
        _ => Vec::new(),
    };
    // Encoded for storage here, so the message moves on into its frame.
    let entry = Entry::Msg(msg);
    let op = StoredEntry::new(&job.conv, &entry).map(|entry| WriteOp::Append {
        conv: job.conv.clone(),
        entry,
        dedup: job.dedup.then(|| (job.from.clone(), job.cmid.clone())),
        index_users,
    });
    let frame = Arc::new(Encoded::new(entry.into_frame()));
    let except = match &reply_to {
        ReplyTo::Conn(c) => Some(*c),
        ReplyTo::Http(_) => None,
    };
    let token = shard.owner.borrow_mut().token();
    let ticket = dedup_hash.map(|h| {
        shard.owner.borrow_mut().in_flight.insert(
            h,
            token,
            text.clone(),
            job.from,
            job.cmid.clone(),
        )
    });
    let pending = PendingAppend {
        conv: job.conv,
        text,
        seq,
        ts: now,
        except,
        recipients,
        frame,
        then: Then::Msg {
            cmid: job.cmid,
            reply: reply_to,
            dedup: ticket,
            event,
        },
    };
    write(shard, token, op, pending);
}

/// Hand out the next seq of `conv` (not yet committed).
fn next_seq(shard: &Shard, conv: &ConvId) -> Result<u64, EngineError> {
    let mut owner = shard.owner.borrow_mut();
    // Look up before `entry`, which would clone the id on every send.
    if !owner.convs.contains_key(conv) {
        owner.convs.insert(conv.clone(), ConvSeq::default());
    }
    let st = owner
        .convs
        .get_mut(conv)
        .expect("conv state inserted above");
    if st.poisoned {
        return Err(err(ErrorCode::Unavailable, "storage failed; retry"));
    }
    debug_assert!(st.committed <= st.next);
    st.next += 1;
    st.in_flight += 1;
    Ok(st.next)
}

/// Submit the durable write of a sequenced entry; its answer comes in
/// [`on_committed`]. An entry that could not be encoded, or a refused
/// submit, fails at once (and is treated like a failed write for the
/// conversation's numbering).
fn write(shard: &Shard, token: u64, op: Result<WriteOp, StorageError>, p: PendingAppend) {
    let submitted = op.and_then(|op| {
        shard.shared.writer.submit(WriteRequest {
            reply_to: shard.idx as u32,
            token,
            op,
        })
    });
    shard.owner.borrow_mut().pending.insert(token, p);
    if let Err(e) = submitted {
        complete(shard, token, Err(e));
    }
}

pub(crate) fn on_committed(shard: &Rc<Shard>, results: Vec<(u64, Result<(), StorageError>)>) {
    for (token, res) in results {
        let read = shard.owner.borrow_mut().pending_reads.remove(&token);
        match read {
            Some(r) => {
                if let Err(e) = res {
                    tracing::warn!("storing a read position failed: {e}");
                    continue;
                }
                match r.recipients {
                    ReadRecipients::Users(users) => {
                        shard.push_users(users, Some(r.except), r.frame, None)
                    }
                    ReadRecipients::Parts(parts) => {
                        shard.push_parts(&parts, Some(r.except), None, r.frame, None, false)
                    }
                }
            }
            None => complete(shard, token, res),
        }
    }
}

fn complete(shard: &Shard, token: u64, res: Result<(), StorageError>) {
    let (p, waiters) = {
        let mut owner = shard.owner.borrow_mut();
        let Some(p) = owner.pending.remove(token) else {
            debug_assert!(false, "commit for unknown token {token}");
            return;
        };
        let waiters = match &p.then {
            Then::Msg { dedup: Some(t), .. } => owner.in_flight.remove(t),
            _ => Vec::new(),
        };
        let st = owner
            .convs
            .get_mut(&p.conv)
            .expect("pending conv has state");
        st.in_flight -= 1;
        match &res {
            Ok(()) => {
                assert_eq!(
                    p.seq,
                    st.committed + 1,
                    "seq must be committed +1, in order"
                );
                st.committed = p.seq;
            }
            Err(_) => st.poisoned = true,
        }
        if st.poisoned && st.in_flight == 0 {
            st.next = st.committed;
            st.poisoned = false;
        }
        if res.is_err() {
            // The in-memory member list may be ahead of storage now: reload.
            if let ConvId::Group(g) = &p.conv {
                owner.groups.remove(g);
            }
        }
        (p, waiters)
    };
    let stats = &shard.shared.stats;
    match res {
        Ok(()) => {
            // Answer first: the ack leaves in this pass, ahead of the
            // fan-out queued behind it (order across conversations and
            // between ack and pushes is not promised; per-conv order is).
            match p.then {
                Then::Msg {
                    cmid,
                    reply: to,
                    event,
                    ..
                } => {
                    if let Some(e) = event {
                        shard.shared.emit(*e);
                    }
                    let stored = Stored {
                        conv: &p.conv,
                        text: &p.text,
                        seq: p.seq,
                        ts: p.ts,
                    };
                    for (w, c) in waiters {
                        reply_ok(shard, w, c, &stored);
                    }
                    reply_ok(shard, to, cmid, &stored);
                }
                Then::Event {
                    code,
                    data,
                    reply: answer,
                } => {
                    if let ConvId::Group(g) = &p.conv {
                        shard.shared.emit(EngineEvent::GroupChanged {
                            group: g.clone(),
                            seq: p.seq,
                            code,
                            data,
                            ts: p.ts,
                        });
                    }
                    if let Some((tx, rec)) = answer {
                        let _ = tx.send(Ok(rec));
                    }
                }
            }
            let track = Arc::new(Tracked {
                conv: p.text.clone(),
                seq: p.seq,
                frame: p.frame.clone(),
            });
            let n_recipients = match p.recipients {
                Recipients::Users(users) => {
                    let n = users.len();
                    shard.push_users(users, p.except, p.frame, Some(track));
                    n
                }
                Recipients::Parts { parts, n, large } => {
                    shard.push_parts(&parts, p.except, None, p.frame, Some(track), large);
                    n
                }
            };
            stats.fanout(n_recipients as u64);
            stats
                .messages_stored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(conv = %p.conv, seq = p.seq, "write failed: {e}");
            let e = storage_err(e);
            match p.then {
                Then::Msg {
                    cmid, reply: to, ..
                } => {
                    for (w, c) in waiters {
                        reply_err(shard, w, &c, e.clone());
                    }
                    reply_err(shard, to, &cmid, e);
                }
                Then::Event { reply: answer, .. } => {
                    if let Some((tx, _)) = answer {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        }
    }
}

fn error_to(shard: &Shard, conn: ConnRef, e: EngineError) {
    shard.mesh_send(
        conn.shard,
        ShardMsg::Reply {
            conn,
            frame: ServerFrame::Error {
                code: e.code,
                message: e.message,
            },
        },
    );
}

/// A group `sync`, `read` or `typing`: membership is checked here, where the
/// member list lives, so a removed member loses reads and writes at once.
pub(crate) fn on_group_access(
    shard: &Rc<Shard>,
    conv: ConvId,
    user: UserId,
    conn: ConnRef,
    what: GroupAccess,
) {
    let ConvId::Group(g) = &conv else {
        debug_assert!(false, "group access for a dm");
        return;
    };
    let n = shard.n_shards();
    let threshold = shard.shared.cfg.large_group_threshold;
    let (parts, size) = {
        let mut owner = shard.owner.borrow_mut();
        match load_group(shard, &mut owner, g) {
            Err(e) => {
                drop(owner);
                return error_to(shard, conn, e);
            }
            Ok(None) => {
                drop(owner);
                return error_to(
                    shard,
                    conn,
                    err(ErrorCode::NoSuchGroup, format!("no group {g}")),
                );
            }
            Ok(Some(st)) if !st.members.contains(&user) => {
                drop(owner);
                return error_to(
                    shard,
                    conn,
                    err(ErrorCode::NotMember, format!("{user} is not in {g}")),
                );
            }
            Ok(Some(st)) => (st.parts(n), st.members.len()),
        }
    };
    match what {
        GroupAccess::Sync { after, limit } => {
            crate::shard::sync_job(shard, conn, conv, after, limit)
        }
        GroupAccess::Read { seq } => {
            let frame = Arc::new(Encoded::new(ServerFrame::Receipt {
                conv: conv.to_text(),
                user: user.as_str().to_owned(),
                read_seq: seq,
            }));
            let recipients = if size <= threshold {
                ReadRecipients::Parts(parts)
            } else {
                // Large group: only the reader's other devices.
                ReadRecipients::Users(Arc::new([user.clone()]))
            };
            if let Err(e) = store_read(
                shard,
                user,
                conv,
                seq,
                PendingRead {
                    recipients,
                    except: conn,
                    frame,
                },
            ) {
                error_to(shard, conn, e);
            }
        }
        GroupAccess::Typing => {
            let f = Arc::new(Encoded::new(ServerFrame::Typing {
                conv: conv.to_text(),
                user: user.as_str().to_owned(),
            }));
            shard.push_parts(&parts, Some(conn), Some(user), f, None, false);
        }
    }
}

fn users_json(users: &[UserId]) -> RawJson {
    let v: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    RawJson::from_value(&serde_json::json!({ "users": v }))
}

/// One group event to sequence and write: its code, data, member changes.
struct EventPlan {
    code: u16,
    data: RawJson,
    add: Vec<UserId>,
    remove: Vec<UserId>,
    delete_group: bool,
}

/// Create, change or dismiss a group. Events are sequenced in the group's
/// timeline; the member list changes at the event's seq, so every entry
/// after it goes to the new members only. Who gets each event: 1501/1502/
/// 1509 the members after it, 1508/1520 the members before it (the removed
/// learn they were removed).
pub(crate) fn on_group_op(shard: &Rc<Shard>, group: GroupId, op: GroupOp, reply: GroupOpReply) {
    let conv = ConvId::group(&group);
    debug_assert_eq!(owner_shard(&conv, shard.n_shards()), shard.idx);
    let now = now_ms();
    let mut plans: Vec<EventPlan> = Vec::new();
    {
        let mut owner = shard.owner.borrow_mut();
        let exists = match load_group(shard, &mut owner, &group) {
            Ok(st) => st.is_some(),
            Err(e) => {
                drop(owner);
                let _ = reply.send(Err(e));
                return;
            }
        };
        match (op, exists) {
            (GroupOp::Put { name, members }, false) => {
                let mut members = members.unwrap_or_default();
                members.sort();
                members.dedup();
                let v: Vec<&str> = members.iter().map(|u| u.as_str()).collect();
                let data = RawJson::from_value(&serde_json::json!({ "name": name, "users": v }));
                owner.groups.insert(
                    group.clone(),
                    Some(GroupState {
                        name,
                        created_ts: now,
                        members: HashSet::new(),
                        parts: None,
                        text: None,
                    }),
                );
                plans.push(EventPlan {
                    code: 1501,
                    data,
                    add: members,
                    remove: Vec::new(),
                    delete_group: false,
                });
            }
            (GroupOp::Put { name, members }, true) => {
                let st = owner
                    .groups
                    .get_mut(&group)
                    .and_then(|s| s.as_mut())
                    .expect("exists");
                if let Some(n) = name {
                    if st.name.as_deref() != Some(n.as_str()) {
                        st.name = Some(n.clone());
                        plans.push(EventPlan {
                            code: 1502,
                            data: RawJson::from_value(&serde_json::json!({ "name": n })),
                            add: vec![],
                            remove: vec![],
                            delete_group: false,
                        });
                    }
                }
                if let Some(list) = members {
                    let new: HashSet<UserId> = list.into_iter().collect();
                    let mut added: Vec<UserId> = new
                        .iter()
                        .filter(|u| !st.members.contains(*u))
                        .cloned()
                        .collect();
                    let mut removed: Vec<UserId> = st
                        .members
                        .iter()
                        .filter(|u| !new.contains(*u))
                        .cloned()
                        .collect();
                    added.sort();
                    removed.sort();
                    push_member_plans(&mut plans, added, removed);
                }
            }
            (GroupOp::Members { add, remove }, true) => {
                let st = owner
                    .groups
                    .get_mut(&group)
                    .and_then(|s| s.as_ref())
                    .expect("exists");
                let mut added: Vec<UserId> = add
                    .into_iter()
                    .filter(|u| !st.members.contains(u))
                    .collect();
                let mut removed: Vec<UserId> = remove
                    .into_iter()
                    .filter(|u| st.members.contains(u))
                    .collect();
                added.sort();
                added.dedup();
                removed.sort();
                removed.dedup();
                push_member_plans(&mut plans, added, removed);
            }
            (GroupOp::Delete, true) => {
                let st = owner
                    .groups
                    .get(&group)
                    .and_then(|s| s.as_ref())
                    .expect("exists");
                let mut all: Vec<UserId> = st.members.iter().cloned().collect();
                all.sort();
                plans.push(EventPlan {
                    code: 1520,
                    data: RawJson::from_value(&serde_json::json!({})),
                    add: vec![],
                    remove: all,
                    delete_group: true,
                });
            }
            (GroupOp::Members { .. } | GroupOp::Delete, false) => {
                drop(owner);
                let _ = reply.send(Err(err(
                    ErrorCode::NoSuchGroup,
                    format!("no group {group}"),
                )));
                return;
            }
        }
    }
    let n_plans = plans.len();
    if n_plans == 0 {
        let rec = shard
            .owner
            .borrow()
            .groups
            .get(&group)
            .and_then(|s| s.as_ref())
            .map(|st| st.record(&group));
        let _ =
            reply.send(rec.ok_or_else(|| err(ErrorCode::NoSuchGroup, format!("no group {group}"))));
        return;
    }
    let mut reply = Some(reply);
    for (i, plan) in plans.into_iter().enumerate() {
        let seq = match next_seq(shard, &conv) {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = reply.take() {
                    let _ = r.send(Err(e));
                }
                return;
            }
        };
        let n = shard.n_shards();
        let threshold = shard.shared.cfg.large_group_threshold;
        // Apply the change at this seq and pick the recipients.
        let (recipients, text, row, record) = {
            let mut owner = shard.owner.borrow_mut();
            let st = owner
                .groups
                .get_mut(&group)
                .and_then(|s| s.as_mut())
                .expect("group state present while its op runs");
            let before = (st.parts(n), st.members.len());
            for u in &plan.add {
                st.members.insert(u.clone());
            }
            for u in &plan.remove {
                st.members.remove(u);
            }
            if !plan.add.is_empty() || !plan.remove.is_empty() {
                st.parts = None;
            }
            let after = (st.parts(n), st.members.len());
            let (parts, count) = if plan.code == 1508 || plan.code == 1520 {
                before
            } else {
                after
            };
            let record = st.record(&group);
            let text = st.text(&group);
            let row = GroupRow {
                group: group.clone(),
                name: st.name.clone(),
                members_count: st.members.len() as u64,
                created_ts: st.created_ts,
            };
            if plan.delete_group {
                owner.groups.insert(group.clone(), None);
            }
            (
                Recipients::Parts {
                    parts,
                    n: count,
                    large: count > threshold,
                },
                text,
                row,
                record,
            )
        };
        let ev = Event {
            conv: conv.to_text(),
            seq,
            code: plan.code,
            data: plan.data.clone(),
            ts: now,
        };
        let frame = Arc::new(Encoded::new(ServerFrame::Event(ev.clone())));
        let op = WriteOp::GroupChange {
            conv: conv.clone(),
            event: Some(Entry::Event(ev)),
            row: (!plan.delete_group).then_some(row),
            add: plan.add,
            remove: plan.remove,
            delete_group: plan.delete_group,
        };
        let answer = if i + 1 == n_plans {
            reply.take().map(|r| (r, record))
        } else {
            None
        };
        let pending = PendingAppend {
            conv: conv.clone(),
            text,
            seq,
            ts: now,
            except: None,
            recipients,
            frame,
            then: Then::Event {
                code: plan.code,
                data: plan.data,
                reply: answer,
            },
        };
        let token = shard.owner.borrow_mut().token();
        write(shard, token, Ok(op), pending);
    }
}

fn push_member_plans(plans: &mut Vec<EventPlan>, added: Vec<UserId>, removed: Vec<UserId>) {
    if !added.is_empty() {
        plans.push(EventPlan {
            code: 1509,
            data: users_json(&added),
            add: added,
            remove: vec![],
            delete_group: false,
        });
    }
    if !removed.is_empty() {
        plans.push(EventPlan {
            code: 1508,
            data: users_json(&removed),
            add: vec![],
            remove: removed,
            delete_group: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user id")
    }

    #[test]
    fn dm_recipients_are_the_participants_once_without_system() {
        let (alice, bob, system) = (user("alice"), user("bob"), user(SYSTEM_USER));
        let names = |c: &ConvId| -> Vec<String> {
            dm_recipients(c).iter().map(|u| u.to_string()).collect()
        };
        assert_eq!(names(&ConvId::dm(&alice, &bob)), ["alice", "bob"]);
        assert_eq!(names(&ConvId::dm(&alice, &alice)), ["alice"]);
        assert_eq!(names(&ConvId::dm(&system, &bob)), ["bob"]);
        assert_eq!(names(&ConvId::dm(&alice, &system)), ["alice"]);
        assert!(names(&ConvId::dm(&system, &system)).is_empty());
        let g = ConvId::Group(tern_proto::GroupId::parse("g").expect("group id"));
        assert!(names(&g).is_empty());
    }
}
