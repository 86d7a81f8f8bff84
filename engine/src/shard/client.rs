//! What an authenticated client's frames do (PROTOCOL.md "Client → server").
//! Validation and authorisation happen here, at the edge; the owner shard
//! receives only well-formed, authorised sends.

use std::rc::Rc;
use std::sync::Arc;

use tern_proto::{
    ClientFrame, ConvId, ConvSummary, DecodeError, ErrorCode, ServerFrame, Target, UserId,
};

use super::budget::Budget;
use super::Shard;
use crate::encoded::Encoded;
use crate::limits::{SERVER_FRAME_BYTES_MAX, SYNC_LIMIT_DEFAULT, SYNC_LIMIT_MAX};
use crate::mesh::{owner_shard, ConnRef, GroupAccess, ReplyTo, SendJob, ShardMsg};
use crate::owner::{store_read, PendingRead, ReadRecipients};
use crate::shared::now_ms;

fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.into(),
    }
}

/// One frame refused by a rate limit, for `/admin/stats` and metrics.
fn count_rate_limited(shard: &Shard) {
    shard
        .shared
        .stats
        .rate_limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn send_err(cmid: &str, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::SendErr {
        cmid: cmid.to_owned(),
        code,
        message: message.into(),
    }
}

/// Parse a conv id from a client and check that `user` may use it.
pub(crate) fn authorize_conv(user: &UserId, conv: &str) -> Result<ConvId, (ErrorCode, String)> {
    let conv = ConvId::parse(conv).map_err(|e| (ErrorCode::BadRequest, format!("conv: {e}")))?;
    authorize(user, &conv)?;
    Ok(conv)
}

/// May `user` post in `conv`? Everything [`authorize`] allows, except a
/// user's conversation with `system`, which only business systems write.
pub(crate) fn authorize_send(user: &UserId, conv: &ConvId) -> Result<(), (ErrorCode, String)> {
    authorize(user, conv)?;
    if user.as_str() != crate::shared::SYSTEM_USER
        && conv
            .dm_peer(user)
            .is_some_and(|p| p.as_str() == crate::shared::SYSTEM_USER)
    {
        return Err((
            ErrorCode::NotMember,
            "the system conversation is read-only".into(),
        ));
    }
    Ok(())
}

/// May `user` read and write `conv`? (PROTOCOL.md guarantee 6.) Decided
/// here for dms; for groups only the owner shard knows the members, so the
/// check happens there (`owner::on_send`, `owner::on_group_access`).
pub(crate) fn authorize(user: &UserId, conv: &ConvId) -> Result<(), (ErrorCode, String)> {
    match conv {
        ConvId::Dm { .. } if conv.is_dm_member(user) => Ok(()),
        ConvId::Dm { .. } => Err((ErrorCode::NotMember, format!("{user} is not in {conv}"))),
        ConvId::Group(_) => Ok(()),
    }
}

pub(super) fn on_frame(
    shard: &Rc<Shard>,
    slot: u32,
    gen: u32,
    frame: Result<ClientFrame, DecodeError>,
) {
    let (user, device) = match shard.conns.borrow_mut().get_mut(slot, gen) {
        Some(c) => (c.user.clone(), c.device.clone()),
        None => return,
    };
    let me = shard.conn_ref(slot, gen);
    let answer = |f: ServerFrame| shard.send_frame(slot, gen, &f);
    let frame = match frame {
        Ok(f) => f,
        Err(e) => {
            let code = if e.is_too_large() {
                ErrorCode::TooLarge
            } else {
                ErrorCode::BadRequest
            };
            match e.cmid() {
                Some(cmid) => answer(send_err(cmid, code, e.to_string())),
                None => answer(error(code, e.to_string())),
            }
            return;
        }
    };
    // Frames a client could multiply into fan-out or storage work draw on a
    // budget of their connection (`budget.rs`); refused, they do nothing.
    let budget = match &frame {
        ClientFrame::Typing { .. } => Some(Budget::Typing),
        ClientFrame::Read { .. } | ClientFrame::Sync { .. } | ClientFrame::Convs => {
            Some(Budget::Storage)
        }
        _ => None,
    };
    if let Some(b) = budget {
        let allowed = match shard.conns.borrow_mut().get_mut(slot, gen) {
            Some(c) => c.budgets.take(b, now_ms()),
            None => return,
        };
        if !allowed {
            count_rate_limited(shard);
            return answer(error(ErrorCode::RateLimited, b.refusal()));
        }
    }
    match frame {
        ClientFrame::Auth { .. } => answer(error(ErrorCode::BadRequest, "already authenticated")),
        ClientFrame::Ping => answer(ServerFrame::Pong { ts: now_ms() }),
        ClientFrame::Ack { conv, seq } => {
            if let Some(c) = shard.conns.borrow_mut().get_mut(slot, gen) {
                c.ack(&conv, seq);
                c.touch_group(&conv, now_ms());
            }
        }
        ClientFrame::Send {
            cmid,
            to,
            kind,
            body,
        } => {
            if cmid.is_empty() || cmid.len() > tern_proto::ID_BYTES_MAX {
                let shown: String = cmid.chars().take(64).collect();
                return answer(send_err(
                    &shown,
                    ErrorCode::BadRequest,
                    "cmid must be 1-64 bytes",
                ));
            }
            let conv = match Target::parse(&to) {
                Ok(t) => t.conv_for(&user),
                Err(e) => {
                    return answer(send_err(&cmid, ErrorCode::BadRequest, format!("to: {e}")))
                }
            };
            if let Err((code, msg)) = authorize_send(&user, &conv) {
                return answer(send_err(&cmid, code, msg));
            }
            let cfg = &shard.shared.cfg;
            let allowed = match shard.conns.borrow_mut().get_mut(slot, gen) {
                Some(c) => {
                    let now = now_ms();
                    if !conv.is_dm() {
                        c.touch_group(&conv.to_text(), now);
                    }
                    c.take_send_token(now, cfg.send_rate_per_s, cfg.send_burst)
                }
                None => return,
            };
            if !allowed {
                count_rate_limited(shard);
                return answer(send_err(
                    &cmid,
                    ErrorCode::RateLimited,
                    "too many sends; slow down",
                ));
            }
            shard
                .shared
                .stats
                .messages_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let job = SendJob {
                conv,
                from: user,
                device: device.as_str().to_owned(),
                cmid,
                dedup: true,
                kind,
                body,
                reply: ReplyTo::Conn(me),
            };
            crate::owner::submit(&shard.shared, Some(shard), job);
        }
        ClientFrame::Read { conv, seq } => {
            let conv = match authorize_conv(&user, &conv) {
                Ok(c) => c,
                Err((code, msg)) => return answer(error(code, msg)),
            };
            if !conv.is_dm() {
                touch(shard, slot, gen, &conv);
                return to_group_owner(shard, conv, user, me, GroupAccess::Read { seq });
            }
            let receipt = ServerFrame::Receipt {
                conv: conv.to_text(),
                user: user.as_str().to_owned(),
                read_seq: seq,
            };
            let to: Arc<[UserId]> = match conv.dm_peer(&user) {
                Some(peer) if peer != &user => Arc::new([user.clone(), peer.clone()]),
                _ => Arc::new([user.clone()]),
            };
            let pending = PendingRead {
                recipients: ReadRecipients::Users(to),
                except: me,
                frame: Arc::new(Encoded::new(receipt)),
            };
            if let Err(e) = store_read(shard, user, conv, seq, pending) {
                answer(error(e.code, e.message));
            }
        }
        ClientFrame::Typing { to } => {
            let conv = match Target::parse(&to) {
                Ok(t) => t.conv_for(&user),
                Err(e) => return answer(error(ErrorCode::BadRequest, format!("to: {e}"))),
            };
            if let Err((code, msg)) = authorize(&user, &conv) {
                return answer(error(code, msg));
            }
            if !conv.is_dm() {
                return to_group_owner(shard, conv, user, me, GroupAccess::Typing);
            }
            if let Some(peer) = conv.dm_peer(&user) {
                if peer != &user {
                    let f = ServerFrame::Typing {
                        conv: conv.to_text(),
                        user: user.as_str().to_owned(),
                    };
                    shard.push_users(
                        Arc::new([peer.clone()]),
                        None,
                        Arc::new(Encoded::new(f)),
                        None,
                    );
                }
            }
        }
        ClientFrame::Sync { conv, after, limit } => {
            let conv = match authorize_conv(&user, &conv) {
                Ok(c) => c,
                Err((code, msg)) => return answer(error(code, msg)),
            };
            let limit = limit.unwrap_or(SYNC_LIMIT_DEFAULT).clamp(1, SYNC_LIMIT_MAX) as usize;
            if !conv.is_dm() {
                touch(shard, slot, gen, &conv);
                return to_group_owner(shard, conv, user, me, GroupAccess::Sync { after, limit });
            }
            sync_job(shard, me, conv, after, limit);
        }
        ClientFrame::Convs => {
            let storage = shard.shared.storage.clone();
            read_job(shard, me, move || match storage.user_convs_all(&user) {
                Ok(list) => ServerFrame::ConvsResult {
                    convs: list
                        .into_iter()
                        .map(|s| ConvSummary {
                            conv: s.conv.to_text(),
                            max_seq: s.max_seq,
                            read_seq: s.read_seq.min(s.max_seq),
                            unread: s.max_seq.saturating_sub(s.read_seq),
                        })
                        .collect(),
                },
                Err(e) => error(ErrorCode::Unavailable, format!("storage: {e}")),
            });
        }
    }
}

/// Send a group `sync`/`read`/`typing` to the group's owner shard, which
/// holds the member list.
fn to_group_owner(shard: &Shard, conv: ConvId, user: UserId, conn: ConnRef, what: GroupAccess) {
    let owner = owner_shard(&conv, shard.n_shards());
    shard.mesh_send(
        owner,
        ShardMsg::GroupAccess {
            conv,
            user,
            conn,
            what,
        },
    );
}

/// Note this device's activity in a group (for large-group `notice`s).
fn touch(shard: &Shard, slot: u32, gen: u32, conv: &ConvId) {
    if let Some(c) = shard.conns.borrow_mut().get_mut(slot, gen) {
        c.touch_group(&conv.to_text(), now_ms());
    }
}

/// Answer a `sync` from storage, off the shard (authorisation already done).
pub(crate) fn sync_job(shard: &Shard, conn: ConnRef, conv: ConvId, after: u64, limit: usize) {
    let storage = shard.shared.storage.clone();
    read_job(shard, conn, move || {
        match storage.read_entries(&conv, after, limit) {
            Ok((mut messages, mut has_more)) => {
                // Stay under the server frame limit (PROTOCOL.md).
                let mut size = 256;
                let mut keep = 0;
                for m in &messages {
                    size += entry_size_estimate(m);
                    if size > SERVER_FRAME_BYTES_MAX {
                        break;
                    }
                    keep += 1;
                }
                if keep < messages.len() {
                    messages.truncate(keep.max(1));
                    has_more = true;
                }
                ServerFrame::SyncResult {
                    conv: conv.to_text(),
                    messages,
                    has_more,
                }
            }
            Err(e) => error(ErrorCode::Unavailable, format!("storage: {e}")),
        }
    });
}

/// An upper bound of an entry's encoded size (JSON is the larger encoding).
fn entry_size_estimate(e: &tern_proto::Entry) -> usize {
    match e {
        tern_proto::Entry::Msg(m) => {
            160 + m.conv.len()
                + m.from.len()
                + m.device.len()
                + m.cmid.len()
                + m.body.as_str().len()
        }
        tern_proto::Entry::Event(ev) => 120 + ev.conv.len() + ev.data.as_str().len(),
    }
}

/// Run a storage read off the shard; its answer comes back as a `Reply`.
pub(crate) fn read_job(
    shard: &Shard,
    conn: ConnRef,
    job: impl FnOnce() -> ServerFrame + Send + 'static,
) {
    let mesh = shard.shared.mesh.clone();
    let ok = shard.shared.readers.spawn(Box::new(move || {
        let frame = job();
        mesh.send_from_outside(conn.shard, ShardMsg::Reply { conn, frame });
    }));
    if !ok {
        shard.send_frame(
            conn.slot,
            conn.gen,
            &error(ErrorCode::Unavailable, "too many reads in flight"),
        );
    }
}
