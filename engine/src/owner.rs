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

use hashbrown::HashMap;
use tern_proto::{ConvId, Entry, ErrorCode, Msg, ServerFrame, UserId};
use tern_storage::{StorageError, WriteOp, WriteRequest};

use crate::encoded::Encoded;
use crate::handle::{EngineError, SendOk};
use crate::mesh::{owner_shard, ConnRef, ReplyTo, SendJob, ShardMsg};
use crate::shard::Shard;
use crate::shared::{now_ms, SYSTEM_USER};

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

type DedupKey = (ConvId, UserId, String);

struct PendingAppend {
    conv: ConvId,
    seq: u64,
    ts: u64,
    cmid: String,
    reply: ReplyTo,
    dedup: Option<DedupKey>,
    except: Option<ConnRef>,
    recipients: Vec<UserId>,
    frame: Arc<Encoded>,
}

/// Per-shard owner state.
#[derive(Default)]
pub(crate) struct Owner {
    convs: HashMap<ConvId, ConvSeq>,
    pending: HashMap<u64, PendingAppend>,
    /// Sends waiting for an identical (conv, sender, cmid) already in flight.
    dedup_waiters: HashMap<DedupKey, Vec<(ReplyTo, String)>>,
    next_token: u64,
}

impl Owner {
    /// Owner state for the conversations this shard owns, from their stored
    /// heads (a restart continues at max_seq + 1).
    pub fn new(heads: impl IntoIterator<Item = (ConvId, u64)>) -> Owner {
        let mut o = Owner::default();
        for (conv, max) in heads {
            o.convs.insert(conv, ConvSeq { next: max, committed: max, in_flight: 0, poisoned: false });
        }
        o
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// Send the answer of a send to whoever asked.
fn reply(shard: &Shard, to: ReplyTo, cmid: &str, res: Result<SendOk, EngineError>) {
    match to {
        ReplyTo::Conn(c) => {
            let frame = match res {
                Ok(ok) => ServerFrame::SendAck { cmid: cmid.to_owned(), conv: ok.conv.to_string(), seq: ok.seq, ts: ok.ts },
                Err(e) => ServerFrame::SendErr { cmid: cmid.to_owned(), code: e.code, message: e.message },
            };
            shard.mesh_send(c.shard, ShardMsg::Reply { conn: c, frame });
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(res);
        }
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> EngineError {
    EngineError { code, message: message.into() }
}

/// Who receives a conversation's entries.
fn recipients(conv: &ConvId) -> Vec<UserId> {
    match conv {
        ConvId::Dm { a, b } => {
            let mut v = Vec::with_capacity(2);
            for u in [a, b] {
                if u.as_str() != SYSTEM_USER && !v.contains(u) {
                    v.push(u.clone());
                }
            }
            v
        }
        ConvId::Group(_) => Vec::new(),
    }
}

pub(crate) fn on_send(shard: &Rc<Shard>, job: SendJob) {
    debug_assert_eq!(owner_shard(&job.conv, shard.n_shards()), shard.idx, "send routed to the wrong owner");
    let storage = &shard.shared.storage;
    let to = recipients(&job.conv);
    // Every participant other than the sender must exist (no_such_user).
    for u in &to {
        if u == &job.from {
            continue;
        }
        match storage.user_exists(u) {
            Ok(true) => {}
            Ok(false) => return reply(shard, job.reply, &job.cmid, Err(err(ErrorCode::NoSuchUser, format!("no user {u}")))),
            Err(e) => return reply(shard, job.reply, &job.cmid, Err(err(ErrorCode::Unavailable, format!("storage: {e}")))),
        }
    }
    let now = now_ms();
    let dedup_key: Option<DedupKey> = job.dedup.then(|| (job.conv.clone(), job.from.clone(), job.cmid.clone()));
    if let Some(key) = &dedup_key {
        let mut owner = shard.owner.borrow_mut();
        if let Some(w) = owner.dedup_waiters.get_mut(key) {
            w.push((job.reply, job.cmid));
            return;
        }
        drop(owner);
        match storage.dedup_lookup(&job.conv, job.from.as_str(), &job.cmid, now) {
            Ok(Some((seq, ts))) => {
                return reply(shard, job.reply, &job.cmid, Ok(SendOk { conv: job.conv, seq, ts }));
            }
            Ok(None) => {}
            Err(e) => return reply(shard, job.reply, &job.cmid, Err(err(ErrorCode::Unavailable, format!("storage: {e}")))),
        }
    }
    let mut owner = shard.owner.borrow_mut();
    let st = owner.convs.entry(job.conv.clone()).or_default();
    if st.poisoned {
        drop(owner);
        return reply(shard, job.reply, &job.cmid, Err(err(ErrorCode::Unavailable, "storage failed; retry")));
    }
    debug_assert!(st.committed <= st.next);
    let seq = st.next + 1;
    let msg = Msg {
        conv: job.conv.to_string(),
        seq,
        from: job.from.as_str().to_owned(),
        device: job.device,
        cmid: job.cmid.clone(),
        kind: job.kind,
        body: job.body,
        ts: now,
    };
    let frame = Arc::new(Encoded::both(&ServerFrame::Msg(msg.clone())));
    owner.next_token += 1;
    let token = owner.next_token;
    // The per-user conversation index needs writing once, with the first entry.
    let index_users = if seq == 1 { to.clone() } else { Vec::new() };
    let req = WriteRequest {
        reply_to: shard.idx as u32,
        token,
        op: WriteOp::Append {
            conv: job.conv.clone(),
            entry: Entry::Msg(msg),
            dedup: dedup_key.as_ref().map(|(_, u, c)| (u.as_str().to_owned(), c.clone())),
            index_users,
        },
    };
    if let Err(e) = shard.shared.writer.submit(req) {
        drop(owner);
        return reply(shard, job.reply, &job.cmid, Err(err(ErrorCode::Unavailable, format!("storage: {e}"))));
    }
    let st = owner.convs.get_mut(&job.conv).expect("inserted above");
    st.next = seq;
    st.in_flight += 1;
    let except = match &job.reply {
        ReplyTo::Conn(c) => Some(*c),
        ReplyTo::Http(_) => None,
    };
    if let Some(key) = &dedup_key {
        owner.dedup_waiters.insert(key.clone(), Vec::new());
    }
    owner.pending.insert(
        token,
        PendingAppend { conv: job.conv, seq, ts: now, cmid: job.cmid, reply: job.reply, dedup: dedup_key, except, recipients: to, frame },
    );
}

pub(crate) fn on_committed(shard: &Rc<Shard>, results: Vec<(u64, Result<(), StorageError>)>) {
    for (token, res) in results {
        let (p, waiters) = {
            let mut owner = shard.owner.borrow_mut();
            let Some(p) = owner.pending.remove(&token) else {
                debug_assert!(false, "commit for unknown token {token}");
                continue;
            };
            let waiters = p.dedup.as_ref().and_then(|k| owner.dedup_waiters.remove(k)).unwrap_or_default();
            let st = owner.convs.get_mut(&p.conv).expect("pending conv has state");
            st.in_flight -= 1;
            match &res {
                Ok(()) => {
                    assert_eq!(p.seq, st.committed + 1, "seq must be committed +1, in order");
                    st.committed = p.seq;
                }
                Err(_) => st.poisoned = true,
            }
            if st.poisoned && st.in_flight == 0 {
                st.next = st.committed;
                st.poisoned = false;
            }
            (p, waiters)
        };
        match res {
            Ok(()) => {
                let ok = SendOk { conv: p.conv.clone(), seq: p.seq, ts: p.ts };
                let conv_str: Arc<str> = p.conv.to_string().into();
                shard.push_users(p.recipients, p.except, p.frame, Some((conv_str, p.seq)));
                for (w, cmid) in waiters {
                    reply(shard, w, &cmid, Ok(ok.clone()));
                }
                reply(shard, p.reply, &p.cmid, Ok(ok));
            }
            Err(e) => {
                tracing::warn!(conv = %p.conv, seq = p.seq, "write failed: {e}");
                let e = err(ErrorCode::Unavailable, format!("storage: {e}"));
                for (w, cmid) in waiters {
                    reply(shard, w, &cmid, Err(e.clone()));
                }
                reply(shard, p.reply, &p.cmid, Err(e));
            }
        }
    }
}
