//! A shard: one thread, one monoio runtime, one SO_REUSEPORT listener, the
//! connections of the users whose home it is, and the conversations it owns.
//!
//! Architecture invariants:
//! - a connection is owned by exactly one shard (its user's home shard) after
//!   `auth`; only that shard touches its socket after the handshake;
//! - only a conversation's owner shard assigns its seqs (see `owner/`);
//! - nothing here blocks on RocksDB except the two point reads in `owner/`
//!   (dedup, user exists), which hit memtable/block cache/bloom filters.
//!
//! Tasks on the shard's runtime: the acceptor (`accept.rs`), the socket
//! loop (readiness of every connection from one epoll set, `poller.rs`, read
//! by `reader.rs`), the inbox, the flusher and the ticker below. All
//! state is in [`Shard`] behind `RefCell`s; no borrow is ever held across an
//! `.await`.

mod accept;
mod activity;
mod budget;
mod client;
pub mod conn;
mod pacer;
mod prefetch;
pub(crate) use client::{authorize_send, sync_job};
mod poller;
mod reader;
mod slab;
pub mod sockio;
pub mod timer;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::IoSlice;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use hashbrown::HashMap;
use tern_proto::{DeviceId, ServerFrame, Subprotocol, UserId};

use crate::encoded::{ws_frame, Encoded};
use crate::limits::*;
use crate::mesh::{ConnRef, Inbox, Push, ShardIdx, ShardMsg, Tracked};
use crate::owner::Owner;
use crate::shared::{now_ms, Shared};
use crate::ws::codec::{close_frame, encode_frame, OpCode};
use conn::{Closing, Conn, Unacked};
use timer::{TimerEntry, TimerKind, TimerWheel};

/// Close codes the server uses (PROTOCOL.md): the RFC 6455 ones from the
/// codec, and Tern's application codes.
pub mod close_code {
    pub use crate::ws::codec::close_code::{GOING_AWAY, NORMAL};
    pub const UNAUTHORIZED: u16 = 4401;
    /// Ack timeout, slow consumer, or heartbeat silence.
    pub const TIMEOUT: u16 = 4408;
    pub const KICKED: u16 = 4409;
}

/// A wakeup flag for one local task (the flusher).
#[derive(Default)]
pub(crate) struct LocalNotify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn notify(&self) {
        if !self.set.replace(true) {
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

pub(crate) struct Shard {
    pub idx: ShardIdx,
    pub shared: Arc<Shared>,
    pub conns: RefCell<slab::Slab>,
    /// user → connection slots on this (its home) shard.
    pub users: RefCell<HashMap<UserId, slab::UserConns>>,
    pub owner: RefCell<Owner>,
    /// Mesh messages collected this pass, per destination shard.
    outbox: RefCell<Vec<Vec<ShardMsg>>>,
    outbox_pending: Cell<bool>,
    /// Emptied inbox batches, kept for the next outbox batch: a `ShardMsg`
    /// is 152 bytes, and growing a fresh outbox copied them over and over
    /// (callgrind: 3% of a busy shard). At most [`SPARE_BATCHES_MAX`], each
    /// of at most [`SPARE_BATCH_CAPACITY_MAX`] messages.
    spare_batches: RefCell<Vec<Vec<ShardMsg>>>,
    /// Connections with output to write this pass.
    dirty: RefCell<Vec<(u32, u32)>>,
    flush: LocalNotify,
    timers: RefCell<TimerWheel>,
    /// Where every read lands (DESIGN.md: no per-connection read buffer).
    pub scratch: RefCell<Vec<u8>>,
    /// What one read asked for; lent to one reader at a time.
    actions: RefCell<Vec<reader::Action>>,
    pub shutting_down: Cell<bool>,
    stop: LocalNotify,
    /// Readiness of every connection socket.
    poller: poller::Poller,
    /// Bumped whenever `users` changes, so a cached push plan knows when
    /// it is stale.
    users_epoch: Cell<u64>,
    /// Resolved connections of recent large pushes (`push_plan`).
    push_plans: RefCell<HashMap<usize, PushPlan>>,
}

/// Pushes to at least this many users go through a cached plan: the owner
/// reuses one member slice per group and home shard for every message, so
/// the per-member user-map lookups (hash, string compare, cache misses:
/// ~35% of the core at M = 10,000) are done once per membership or
/// connection change instead of once per message.
const PUSH_PLAN_USERS_MIN: usize = 64;
/// Most cached push plans; all are dropped when a new one would pass it.
const PUSH_PLANS_MAX: usize = 64;
/// How many connections ahead a planned push prefetches: far enough for a
/// memory load (~100 ns) to land while the pushes in between (~50–100 ns
/// each when cached) run.
const PREFETCH_AHEAD: usize = 8;
/// Emptied inbox batches a shard keeps for reuse as outbox batches.
const SPARE_BATCHES_MAX: usize = 8;
/// Capacities (in messages) of a kept batch: a bigger one is freed, and a
/// smaller one (the storage writer's reports come one or two at a time)
/// would only grow again.
const SPARE_BATCH_CAPACITY_MIN: usize = 16;
const SPARE_BATCH_CAPACITY_MAX: usize = 4096;

/// The connections a push to `users` reaches, in push order, as of
/// `epoch`. Holding `users` keeps its allocation (the cache key) alive.
struct PushPlan {
    users: Arc<[UserId]>,
    epoch: u64,
    targets: Rc<[(u32, u32)]>,
}

impl Shard {
    fn new(idx: ShardIdx, shared: Arc<Shared>, owner: Owner, poller: poller::Poller) -> Shard {
        let n = shared.mesh.n_shards();
        let scratch = vec![0u8; shared.cfg.frame_bytes_max + 16 * 1024];
        Shard {
            idx,
            shared,
            conns: RefCell::new(slab::Slab::default()),
            users: RefCell::new(HashMap::new()),
            owner: RefCell::new(owner),
            outbox: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            outbox_pending: Cell::new(false),
            spare_batches: RefCell::new(Vec::new()),
            dirty: RefCell::new(Vec::new()),
            flush: LocalNotify::default(),
            timers: RefCell::new(TimerWheel::new(now_ms())),
            scratch: RefCell::new(scratch),
            actions: RefCell::new(Vec::new()),
            shutting_down: Cell::new(false),
            stop: LocalNotify::default(),
            poller,
            users_epoch: Cell::new(0),
            push_plans: RefCell::new(HashMap::new()),
        }
    }

    pub fn n_shards(&self) -> usize {
        self.shared.mesh.n_shards()
    }

    fn take_actions(&self) -> Vec<reader::Action> {
        std::mem::take(&mut *self.actions.borrow_mut())
    }

    fn put_actions(&self, mut a: Vec<reader::Action>) {
        debug_assert!(a.is_empty());
        a.clear();
        *self.actions.borrow_mut() = a;
    }

    /// Queue a mesh message; it leaves with this pass's batch for `dest`
    /// (to this shard itself too: handled on the next pass, in order).
    pub fn mesh_send(&self, dest: ShardIdx, msg: ShardMsg) {
        self.outbox.borrow_mut()[dest].push(msg);
        self.outbox_pending.set(true);
        self.flush.notify();
    }

    // ----- connections -------------------------------------------------

    /// Register an authenticated socket on its home shard; replaces an
    /// existing connection of the same (user, device) (PROTOCOL.md session 4).
    pub fn adopt(
        self: &Rc<Self>,
        sock: OwnedFd,
        user: UserId,
        device: DeviceId,
        sp: Subprotocol,
        leftover: Vec<u8>,
        permit: crate::conn_limit::ConnPermit,
    ) {
        debug_assert_eq!(crate::mesh::home_shard(&user, self.n_shards()), self.idx);
        sockio::set_nodelay(sock.as_raw_fd());
        if self.shutting_down.get() {
            return; // dropping the socket closes it
        }
        // Replace the same device.
        let old = self.user_conns(&user);
        for (slot, gen) in old {
            let same = self
                .conns
                .borrow_mut()
                .get_mut(slot, gen)
                .map(|c| c.device == device)
                .unwrap_or(false);
            if same {
                self.kick(slot, gen, "replaced");
            }
        }
        let now = now_ms();
        let (slot, gen) = {
            let mut conns = self.conns.borrow_mut();
            let (slot, gen) = conns.vacant();
            if let Err(e) = self.poller.add(sock.as_raw_fd(), poller::key(slot, gen)) {
                // Only on resource exhaustion (ENOMEM, max_user_watches):
                // refuse this connection rather than hold it unread.
                tracing::warn!(shard = self.idx, "cannot watch a socket: {e}");
                return;
            }
            conns.insert(
                slot,
                Conn {
                    gen,
                    sock,
                    user: user.clone(),
                    device: device.clone(),
                    sp,
                    since_ms: now,
                    send_tokens: self.shared.cfg.send_burst,
                    send_refill_ms: now,
                    budgets: Default::default(),
                    groups: Default::default(),
                    rx: None,
                    outq: Default::default(),
                    out_head_off: 0,
                    out_bytes: 0,
                    dirty: false,
                    write_waiting: false,
                    unacked: Default::default(),
                    ack_timer_armed: false,
                    last_rx_ms: now,
                    pinged: false,
                    closing: Closing::Open,
                    _permit: permit,
                },
            );
            (slot, gen)
        };
        self.users_epoch.set(self.users_epoch.get() + 1);
        self.users
            .borrow_mut()
            .entry(user.clone())
            .and_modify(|u| u.push((slot, gen)))
            .or_insert(slab::UserConns::One((slot, gen)));
        self.shared.stats.connections[self.idx].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.emit(crate::hooks::EngineEvent::UserOnline {
            user: user.clone(),
            device: device.clone(),
            ts: now,
        });
        let ok = ServerFrame::AuthOk {
            user: user.as_str().to_owned(),
            device: device.as_str().to_owned(),
            heartbeat_ms: self.shared.cfg.heartbeat_ms,
            ack_timeout_ms: self.shared.cfg.ack_timeout_ms,
            ts: now,
        };
        self.send_frame(slot, gen, &ok);
        // `auth_ok` leaves now, so the new connection keeps no queue
        // capacity (a connect storm would otherwise leave 64 B on each).
        self.flush_now(slot, gen);
        if let Some(c) = self.conns.borrow_mut().get_mut(slot, gen) {
            c.release_idle_capacity();
        }
        self.timers.borrow_mut().arm(
            now + self.shared.cfg.heartbeat_ms,
            TimerEntry {
                slot,
                gen,
                kind: TimerKind::Idle,
            },
        );
        reader::on_adopted(self, slot, gen, leftover);
    }

    /// (slot, gen) of every connection of `user` on this shard.
    pub fn user_conns(&self, user: &UserId) -> Vec<(u32, u32)> {
        self.users
            .borrow()
            .get(user)
            .map(|u| u.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Called by the reader when a connection ends (end of stream, error,
    /// or done closing).
    pub fn remove_conn(&self, slot: u32, gen: u32) {
        let Some(c) = self.conns.borrow_mut().remove(slot, gen) else {
            return;
        };
        self.poller.remove(c.fd());
        self.users_epoch.set(self.users_epoch.get() + 1);
        let mut users = self.users.borrow_mut();
        if users
            .get_mut(&c.user)
            .is_some_and(|v| v.remove((slot, gen)))
        {
            users.remove(&c.user);
        }
        self.shared.stats.connections[self.idx].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.emit(crate::hooks::EngineEvent::UserOffline {
            user: c.user.clone(),
            device: c.device.clone(),
            ts: now_ms(),
        });
        // `c.sock` drops here: the fd closes.
    }

    pub fn conn_ref(&self, slot: u32, gen: u32) -> ConnRef {
        ConnRef {
            shard: self.idx,
            slot,
            gen,
        }
    }

    /// Encode `frame` for the connection's subprotocol and queue it.
    pub fn send_frame(&self, slot: u32, gen: u32, frame: &ServerFrame) {
        let sp = match self.conns.borrow_mut().get_mut(slot, gen) {
            Some(c) => c.sp,
            None => return,
        };
        self.enqueue(slot, gen, ws_frame(sp, frame));
    }

    /// Queue complete WebSocket frame bytes for a connection. A connection
    /// whose queue passes [`OUTBOUND_BYTES_MAX`] is a slow consumer: closed.
    pub fn enqueue(&self, slot: u32, gen: u32, bytes: Arc<[u8]>) {
        let over = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(slot, gen) else {
                return;
            };
            match c.queue(bytes) {
                None => return,
                Some(newly_dirty) => self.mark_dirty(slot, gen, newly_dirty),
            }
            c.out_bytes > OUTBOUND_BYTES_MAX
        };
        if over {
            self.slow_consumer(slot, gen);
        }
        self.flush.notify();
    }

    fn mark_dirty(&self, slot: u32, gen: u32, newly_dirty: bool) {
        if newly_dirty {
            self.dirty.borrow_mut().push((slot, gen));
        }
    }

    fn slow_consumer(&self, slot: u32, gen: u32) {
        tracing::debug!(slot, "slow consumer: outbound queue full");
        self.abort(slot, gen);
    }

    /// Server-initiated close: close frame, then bounded wait for the client.
    pub fn close(&self, slot: u32, gen: u32, code: u16, reason: &str) {
        {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(slot, gen) else {
                return;
            };
            if c.closing != Closing::Open {
                return;
            }
            let f: Arc<[u8]> = close_frame(code, reason).into();
            let Some(newly_dirty) = c.queue(f) else {
                return;
            };
            c.closing = Closing::CloseSent;
            self.mark_dirty(slot, gen, newly_dirty);
        }
        self.timers.borrow_mut().arm(
            now_ms() + CLOSE_GRACE_MS,
            TimerEntry {
                slot,
                gen,
                kind: TimerKind::CloseGrace,
            },
        );
        self.flush.notify();
    }

    /// Drop the connection now (no close handshake): its reader ends.
    pub fn abort(&self, slot: u32, gen: u32) {
        if let Some(c) = self.conns.borrow_mut().get_mut(slot, gen) {
            sockio::shutdown(c.fd(), libc::SHUT_RDWR);
        }
    }

    /// `kicked` then close 4409.
    pub fn kick(&self, slot: u32, gen: u32, reason: &str) {
        self.send_frame(
            slot,
            gen,
            &ServerFrame::Kicked {
                reason: reason.to_owned(),
            },
        );
        self.close(slot, gen, close_code::KICKED, reason);
    }

    /// Write this connection's queue now instead of at the end of the pass.
    pub fn flush_now(self: &Rc<Self>, slot: u32, gen: u32) {
        self.write_conn(slot, gen);
    }

    /// Write what is queued for one connection, as one `sendmsg` of up to
    /// [`WRITEV_IOVECS_MAX`] frames, repeated while the socket takes it.
    fn write_conn(self: &Rc<Self>, slot: u32, gen: u32) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(slot, gen) else {
            return;
        };
        c.dirty = false;
        if c.write_waiting {
            return;
        }
        // Bounded: each round removes >= 1 byte or stops.
        while !c.outq.is_empty() {
            let head = &c.outq[0][c.out_head_off..];
            let sent = if c.outq.len() == 1 {
                // The common case (one frame, e.g. a fan-out delivery):
                // no 64-slot vector to fill, no iovec to copy in.
                sockio::send_nb(c.fd(), head)
            } else {
                let mut iov = [IoSlice::new(&[]); WRITEV_IOVECS_MAX];
                iov[0] = IoSlice::new(head);
                let mut n_iov = 1;
                for f in c.outq.iter().skip(1).take(WRITEV_IOVECS_MAX - 1) {
                    iov[n_iov] = IoSlice::new(f);
                    n_iov += 1;
                }
                sockio::sendv_nb(c.fd(), &iov[..n_iov])
            };
            match sent {
                Ok(mut n) => {
                    c.out_bytes -= n;
                    while n > 0 {
                        let head_left = c.outq[0].len() - c.out_head_off;
                        if n >= head_left {
                            n -= head_left;
                            c.outq.pop_front();
                            c.out_head_off = 0;
                        } else {
                            c.out_head_off += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if sockio::would_block(&e) => {
                    // The send buffer is full: wait for the poller's EPOLLOUT
                    // (on_writable) before writing again.
                    if self
                        .poller
                        .want_write(c.fd(), poller::key(slot, gen), true)
                        .is_err()
                    {
                        sockio::shutdown(c.fd(), libc::SHUT_RDWR);
                    } else {
                        c.write_waiting = true;
                    }
                    return;
                }
                Err(_) => {
                    sockio::shutdown(c.fd(), libc::SHUT_RDWR);
                    c.outq.clear();
                    c.out_bytes = 0;
                    return;
                }
            }
        }
        if c.closing == Closing::CloseSent {
            // Our close frame is out: no more writes from us (RFC 6455 7.1.1
            // lets the server close the TCP connection first).
            sockio::shutdown(c.fd(), libc::SHUT_WR);
        }
    }

    /// The poller saw room in a full send buffer: write again.
    fn on_writable(&self, slot: u32, gen: u32) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(slot, gen) else {
            return;
        };
        if !c.write_waiting {
            return;
        }
        c.write_waiting = false;
        if self
            .poller
            .want_write(c.fd(), poller::key(slot, gen), false)
            .is_err()
        {
            sockio::shutdown(c.fd(), libc::SHUT_RDWR);
        } else if !c.dirty {
            c.dirty = true;
            self.dirty.borrow_mut().push((slot, gen));
        }
        drop(conns);
        self.flush.notify();
    }

    /// End of a loop pass: send the mesh batches, write the dirty sockets.
    fn flush_pass(self: &Rc<Self>) {
        if self.outbox_pending.replace(false) {
            let n = self.n_shards();
            for dest in 0..n {
                let batch = {
                    let mut ob = self.outbox.borrow_mut();
                    if ob[dest].is_empty() {
                        continue;
                    }
                    // The batch moves to its shard; the next one reuses an
                    // emptied inbox batch, already grown.
                    let next = self.take_spare_batch();
                    debug_assert!(next.is_empty(), "a spare batch holds messages");
                    std::mem::replace(&mut ob[dest], next)
                };
                if let Err(back) = self.shared.mesh.send_batch(dest, batch) {
                    // Full inbox: keep it (in order, ahead of newer messages)
                    // and retry on the next tick.
                    let mut ob = self.outbox.borrow_mut();
                    let newer = std::mem::replace(&mut ob[dest], back);
                    ob[dest].extend(newer);
                    self.outbox_pending.set(true);
                }
            }
        }
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for (slot, gen) in dirty {
            self.write_conn(slot, gen);
        }
    }

    // ----- pushes --------------------------------------------------------

    /// Deliver a push to the named users' connections on this shard.
    fn on_push(&self, p: Push) {
        let now = now_ms();
        let mut queued = 0u64;
        if p.skip_user.is_none() && p.users.len() >= PUSH_PLAN_USERS_MIN {
            let targets = self.push_plan(&p.users);
            for (i, &(slot, gen)) in targets.iter().enumerate() {
                self.prefetch_ahead(&targets, i, p.large);
                queued += u64::from(self.push_one(&p, slot, gen, now));
            }
        } else {
            let users = self.users.borrow();
            // The skipped user's entry, found once: members are then skipped
            // by entry identity instead of a string comparison each.
            let skip = p.skip_user.as_ref().and_then(|u| users.get(u));
            for user in p.users.iter() {
                let Some(slots) = users.get(user) else {
                    continue;
                };
                if skip.is_some_and(|s| std::ptr::eq(s, slots)) {
                    continue;
                }
                for &(slot, gen) in slots.as_slice() {
                    queued += u64::from(self.push_one(&p, slot, gen, now));
                }
            }
        }
        if queued > 0 {
            self.shared
                .stats
                .deliveries
                .fetch_add(queued, std::sync::atomic::Ordering::Relaxed);
            self.flush.notify();
        }
    }

    /// While the push reaches `targets[i]`, start loading the connection
    /// [`PREFETCH_AHEAD`] further on and, in a large group, the activity
    /// records of the one half as far (its connection is cached by then).
    fn prefetch_ahead(&self, targets: &[(u32, u32)], i: usize, large: bool) {
        let conns = self.conns.borrow();
        if let Some(&(slot, _)) = targets.get(i + PREFETCH_AHEAD) {
            conns.prefetch(slot);
        }
        if large {
            if let Some(c) = targets
                .get(i + PREFETCH_AHEAD / 2)
                .and_then(|&(slot, gen)| conns.get(slot, gen))
            {
                c.groups.prefetch();
            }
        }
    }

    /// One connection of a push: skipped if it sent the message; in a large
    /// group, a `notice` instead when it is not active there. The decision,
    /// the unacked record and the queueing take one look-up of the
    /// connection. True if the frame was queued (the caller counts and
    /// wakes the flusher once per push).
    fn push_one(&self, p: &Push, slot: u32, gen: u32, now: u64) -> bool {
        if p.except == Some(self.conn_ref(slot, gen)) {
            return false;
        }
        let (arm, over, too_many) = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(slot, gen) else {
                return false;
            };
            if c.closing != Closing::Open {
                return false;
            }
            if let Some(t) = p.track.as_ref().filter(|_| p.large) {
                if !c.groups.is_active(&t.conv, now) {
                    drop(conns);
                    self.notice(slot, gen, &t.conv, t.seq, now);
                    return false;
                }
            }
            let bytes = p.frame.for_sp(c.sp).clone();
            let mut arm = false;
            if let Some(t) = &p.track {
                debug_assert!(Arc::ptr_eq(&t.frame, &p.frame));
                c.unacked.push_back(Unacked {
                    entry: t.clone(),
                    sent_ms: now,
                    tries: 0,
                });
                arm = !std::mem::replace(&mut c.ack_timer_armed, true);
            }
            let newly_dirty = c.queue(bytes).unwrap_or(false);
            self.mark_dirty(slot, gen, newly_dirty);
            (
                arm,
                c.out_bytes > OUTBOUND_BYTES_MAX,
                c.unacked.len() > UNACKED_MAX,
            )
        };
        if arm {
            self.timers.borrow_mut().arm(
                now + self.shared.cfg.ack_timeout_ms,
                TimerEntry {
                    slot,
                    gen,
                    kind: TimerKind::Ack,
                },
            );
        }
        if over {
            self.slow_consumer(slot, gen);
        } else if too_many {
            self.close(slot, gen, close_code::TIMEOUT, "slow consumer");
        }
        true
    }

    /// The connections of `users` on this shard, in push order: cached per
    /// member slice (by allocation) until `users` changes.
    fn push_plan(&self, users: &Arc<[UserId]>) -> Rc<[(u32, u32)]> {
        let key = Arc::as_ptr(users).cast::<UserId>() as usize;
        let epoch = self.users_epoch.get();
        let mut plans = self.push_plans.borrow_mut();
        if let Some(plan) = plans.get(&key) {
            if plan.epoch == epoch && Arc::ptr_eq(&plan.users, users) {
                return plan.targets.clone();
            }
        }
        let map = self.users.borrow();
        let targets: Rc<[(u32, u32)]> = users
            .iter()
            .filter_map(|u| map.get(u))
            .flat_map(|slots| slots.as_slice().iter().copied())
            .collect();
        if plans.len() >= PUSH_PLANS_MAX && !plans.contains_key(&key) {
            plans.clear();
        }
        plans.insert(
            key,
            PushPlan {
                users: users.clone(),
                epoch,
                targets: targets.clone(),
            },
        );
        targets
    }

    /// A large group's `notice`: at once, then at most one per group per
    /// second per connection, carrying the latest max seq.
    fn notice(&self, slot: u32, gen: u32, conv: &Arc<str>, max_seq: u64, now: u64) {
        let send_now = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(slot, gen) else {
                return;
            };
            let t = c.groups.track(conv);
            if now.saturating_sub(t.notice_ms) >= activity::NOTICE_INTERVAL_MS {
                t.notice_ms = now;
                t.notice_pending = None;
                true
            } else {
                let was_pending = t.notice_pending.is_some();
                t.notice_pending = Some(t.notice_pending.map_or(max_seq, |m| m.max(max_seq)));
                if !was_pending {
                    let at = t.notice_ms + activity::NOTICE_INTERVAL_MS;
                    self.timers.borrow_mut().arm(
                        at,
                        TimerEntry {
                            slot,
                            gen,
                            kind: TimerKind::Notice,
                        },
                    );
                }
                false
            }
        };
        if send_now {
            self.send_notice(slot, gen, conv, max_seq);
        }
    }

    fn send_notice(&self, slot: u32, gen: u32, conv: &str, max_seq: u64) {
        self.shared
            .stats
            .notices
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send_frame(
            slot,
            gen,
            &ServerFrame::Notice {
                conv: conv.to_owned(),
                max_seq,
            },
        );
    }

    /// Push `frame` to `users` wherever their home shards are: one mesh item
    /// per home shard.
    pub fn push_users(
        &self,
        users: Arc<[UserId]>,
        except: Option<ConnRef>,
        frame: Arc<Encoded>,
        track: Option<Arc<Tracked>>,
    ) {
        let push = |h: usize, users: Arc<[UserId]>| {
            self.mesh_send(
                h,
                ShardMsg::Push(Push {
                    users,
                    except,
                    skip_user: None,
                    frame: frame.clone(),
                    track: track.clone(),
                    large: false,
                }),
            )
        };
        let n = self.n_shards();
        // One home for all (always so with one shard; a dm's two users
        // often): one push, without partitioning.
        let one_home = match users.first() {
            None => return,
            Some(_) if n == 1 => Some(0),
            Some(u0) => {
                let h = crate::mesh::home_shard(u0, n);
                users[1..]
                    .iter()
                    .all(|u| crate::mesh::home_shard(u, n) == h)
                    .then_some(h)
            }
        };
        if let Some(h) = one_home {
            return push(h, users);
        }
        let by_home = crate::mesh::by_home_shard(users.iter(), n);
        for (h, us) in by_home.into_iter().enumerate() {
            if !us.is_empty() {
                push(h, us.into());
            }
        }
    }

    /// Push to users already partitioned by home shard (`parts[h]` lives on
    /// shard h): the slices are shared, not copied.
    #[allow(clippy::too_many_arguments)]
    pub fn push_parts(
        &self,
        parts: &[Arc<[UserId]>],
        except: Option<ConnRef>,
        skip_user: Option<UserId>,
        frame: Arc<Encoded>,
        track: Option<Arc<Tracked>>,
        large: bool,
    ) {
        debug_assert_eq!(parts.len(), self.n_shards());
        for (h, us) in parts.iter().enumerate() {
            if !us.is_empty() {
                self.mesh_send(
                    h,
                    ShardMsg::Push(Push {
                        users: us.clone(),
                        except,
                        skip_user: skip_user.clone(),
                        frame: frame.clone(),
                        track: track.clone(),
                        large,
                    }),
                );
            }
        }
    }

    // ----- timers --------------------------------------------------------

    fn on_timer(&self, e: TimerEntry, now: u64) {
        let hb = self.shared.cfg.heartbeat_ms;
        let ack_timeout = self.shared.cfg.ack_timeout_ms;
        match e.kind {
            TimerKind::Idle => {
                let mut ping = false;
                let mut dead = false;
                let next;
                {
                    let mut conns = self.conns.borrow_mut();
                    let Some(c) = conns.get_mut(e.slot, e.gen) else {
                        return;
                    };
                    // Once per heartbeat: a connection gone quiet gives back
                    // the queue capacity its busy period grew.
                    c.release_idle_capacity();
                    let silent = now.saturating_sub(c.last_rx_ms);
                    if silent >= 2 * hb {
                        dead = true;
                        next = now + CLOSE_GRACE_MS;
                    } else if silent >= hb && !c.pinged {
                        c.pinged = true;
                        ping = true;
                        next = c.last_rx_ms + 2 * hb;
                    } else if silent >= hb {
                        next = c.last_rx_ms + 2 * hb;
                    } else {
                        next = c.last_rx_ms + hb;
                    }
                }
                if dead {
                    self.close(e.slot, e.gen, close_code::TIMEOUT, "heartbeat timeout");
                    return;
                }
                if ping {
                    let mut f = Vec::with_capacity(2);
                    encode_frame(OpCode::Ping, &[], &mut f);
                    self.enqueue(e.slot, e.gen, f.into());
                }
                self.timers.borrow_mut().arm(next, e);
            }
            TimerKind::Ack => {
                let mut resend: Vec<Arc<[u8]>> = Vec::new();
                let mut give_up = false;
                let mut next = None;
                {
                    let mut conns = self.conns.borrow_mut();
                    let Some(c) = conns.get_mut(e.slot, e.gen) else {
                        return;
                    };
                    // Bounded by UNACKED_MAX.
                    for u in c.unacked.iter_mut() {
                        if u.sent_ms + ack_timeout <= now {
                            if u.tries >= REDELIVERY_TRIES_MAX {
                                give_up = true;
                                break;
                            }
                            u.tries += 1;
                            u.sent_ms = now;
                            resend.push(u.entry.frame.for_sp(c.sp).clone());
                        }
                        let due = u.sent_ms + ack_timeout;
                        next = Some(next.map_or(due, |n: u64| n.min(due)));
                    }
                    c.ack_timer_armed = next.is_some() && !give_up;
                }
                if give_up {
                    self.close(e.slot, e.gen, close_code::TIMEOUT, "ack timeout");
                    return;
                }
                for f in resend {
                    self.shared
                        .stats
                        .redeliveries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.enqueue(e.slot, e.gen, f);
                }
                if let Some(at) = next {
                    self.timers.borrow_mut().arm(at, e);
                }
            }
            TimerKind::CloseGrace => self.abort(e.slot, e.gen),
            TimerKind::Notice => {
                let mut due: Vec<(Arc<str>, u64)> = Vec::new();
                let mut next: Option<u64> = None;
                {
                    let mut conns = self.conns.borrow_mut();
                    let Some(c) = conns.get_mut(e.slot, e.gen) else {
                        return;
                    };
                    for t in c.groups.iter_mut() {
                        if let Some(max_seq) = t.notice_pending {
                            let at = t.notice_ms + activity::NOTICE_INTERVAL_MS;
                            if at <= now {
                                t.notice_ms = now;
                                t.notice_pending = None;
                                due.push((t.conv.clone(), max_seq));
                            } else {
                                next = Some(next.map_or(at, |n: u64| n.min(at)));
                            }
                        }
                    }
                }
                for (conv, max_seq) in due {
                    self.send_notice(e.slot, e.gen, &conv, max_seq);
                }
                if let Some(at) = next {
                    self.timers.borrow_mut().arm(at, e);
                }
            }
        }
    }

    // ----- inbox ---------------------------------------------------------

    /// One inbox batch, in order; a run of consecutive sends goes to the
    /// owner together (one dedup `MultiGet`, `owner::on_sends`).
    fn on_batch(self: &Rc<Self>, mut batch: Vec<ShardMsg>) {
        self.on_msgs(batch.drain(..));
        let mut spare = self.spare_batches.borrow_mut();
        let cap = batch.capacity();
        if spare.len() < SPARE_BATCHES_MAX
            && (SPARE_BATCH_CAPACITY_MIN..=SPARE_BATCH_CAPACITY_MAX).contains(&cap)
        {
            spare.push(batch);
        }
    }

    /// The largest kept batch (empty), or a new one.
    fn take_spare_batch(&self) -> Vec<ShardMsg> {
        let mut spare = self.spare_batches.borrow_mut();
        let largest = (0..spare.len()).max_by_key(|&i| spare[i].capacity());
        largest.map(|i| spare.swap_remove(i)).unwrap_or_default()
    }

    fn on_msgs(self: &Rc<Self>, msgs: impl ExactSizeIterator<Item = ShardMsg>) {
        let mut msgs = msgs.peekable();
        while let Some(msg) = msgs.next() {
            match msg {
                ShardMsg::Send(job) if matches!(msgs.peek(), Some(ShardMsg::Send(_))) => {
                    let mut run =
                        Vec::with_capacity((msgs.len() + 1).min(crate::owner::SEND_RUN_MAX));
                    run.push(job);
                    while run.len() < crate::owner::SEND_RUN_MAX {
                        match msgs.next_if(|m| matches!(m, ShardMsg::Send(_))) {
                            Some(ShardMsg::Send(j)) => run.push(j),
                            _ => break,
                        }
                    }
                    crate::owner::on_sends(self, run);
                }
                msg => self.on_msg(msg),
            }
        }
    }

    fn on_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Adopt(a) => {
                // SAFETY: the fd was dup'ed for us by the accepting shard and
                // is owned by nobody else.
                let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(a.fd) };
                self.adopt(sock, a.user, a.device, a.sp, a.leftover, a.permit);
            }
            ShardMsg::Send(job) => crate::owner::on_send(self, job),
            ShardMsg::Committed(results) => crate::owner::on_committed(self, results),
            ShardMsg::Push(p) => self.on_push(p),
            ShardMsg::GroupAccess {
                conv,
                user,
                conn,
                what,
            } => crate::owner::on_group_access(self, conv, user, conn, what),
            ShardMsg::GroupOp { group, op, reply } => {
                crate::owner::on_group_op(self, group, op, reply)
            }
            ShardMsg::Presence { user, reply } => {
                let slots = self.user_conns(&user);
                let mut conns = self.conns.borrow_mut();
                let devices = slots
                    .into_iter()
                    .filter_map(|(slot, gen)| {
                        let c = conns.get_mut(slot, gen)?;
                        // A connection being closed (kicked, replaced) is gone already.
                        (c.closing == Closing::Open).then(|| (c.device.clone(), c.since_ms))
                    })
                    .collect();
                let _ = reply.send(devices);
            }
            ShardMsg::Reply { conn, frame } => {
                debug_assert_eq!(conn.shard, self.idx);
                self.send_frame(conn.slot, conn.gen, &frame);
            }
            ShardMsg::Kick {
                user,
                device,
                reason,
                reply,
            } => {
                let slots = self.user_conns(&user);
                let mut n = 0;
                for (slot, gen) in slots {
                    let hit = self.conns.borrow_mut().get_mut(slot, gen).is_some_and(|c| {
                        c.closing == Closing::Open && device.as_ref().is_none_or(|d| &c.device == d)
                    });
                    if hit {
                        self.kick(slot, gen, &reason);
                        n += 1;
                    }
                }
                if let Some(r) = reply {
                    let _ = r.send(n);
                }
            }
            ShardMsg::UserGone(u) => self.owner.borrow_mut().forget_user(&u),
            ShardMsg::Shutdown => {
                self.shutting_down.set(true);
                let me = self.clone();
                monoio::spawn(async move { me.drain_and_stop().await });
            }
        }
    }

    /// Graceful shutdown: stop accepting (the acceptor checks the flag), let
    /// in-flight sends complete, close every connection with 1001, wait
    /// (bounded) for them to go.
    async fn drain_and_stop(self: Rc<Self>) {
        let deadline = now_ms() + SHUTDOWN_DRAIN_MS;
        while self.owner.borrow().in_flight() > 0 && now_ms() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let all = self.conns.borrow().keys();
        for (slot, gen) in all {
            self.close(slot, gen, close_code::GOING_AWAY, "server shutting down");
        }
        while self.conns.borrow().len() > 0 && now_ms() < deadline + CLOSE_GRACE_MS {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.notify();
    }
}

/// Which monoio driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoDriver {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// epoll even where io_uring works: for tools that cannot follow
    /// io_uring (valgrind), or to compare the two.
    Epoll,
}

impl IoDriver {
    /// The environment variable that chooses the driver.
    pub(crate) const ENV: &str = "TERN_IO_DRIVER";

    /// The driver [`IoDriver::ENV`] asks for: unset, empty or `auto` is
    /// [`IoDriver::Auto`], `epoll` is [`IoDriver::Epoll`], anything else is
    /// refused.
    pub(crate) fn from_env() -> Result<IoDriver, crate::engine::StartError> {
        let value = std::env::var_os(Self::ENV).unwrap_or_default();
        match value.to_str() {
            Some("" | "auto") => Ok(IoDriver::Auto),
            Some("epoll") => Ok(IoDriver::Epoll),
            _ => Err(crate::engine::StartError::IoDriver {
                var: Self::ENV,
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// The shard thread's body: runtime, tasks, until shutdown completes.
/// `try_uring`: io_uring first (epoll if its ring cannot be built), else
/// epoll at once.
pub(crate) fn run(
    idx: ShardIdx,
    shared: Arc<Shared>,
    inbox: Inbox,
    listener: std::net::TcpListener,
    owner: Owner,
    try_uring: bool,
) {
    // epoll (monoio's legacy driver) accepts by readiness: a blocking
    // listener would block the whole shard in `accept` once the backlog is
    // empty. io_uring accepts asynchronously either way, and monoio keeps
    // its own listeners blocking there.
    let body = |epoll: bool| async move {
        if epoll {
            if let Err(e) = listener.set_nonblocking(true) {
                tracing::error!(shard = idx, "listener: {e}");
                return;
            }
        }
        let poller = match poller::Poller::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(shard = idx, "cannot create the socket poller: {e}");
                return;
            }
        };
        let shard = Rc::new(Shard::new(idx, shared, owner, poller));
        match monoio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                monoio::spawn(accept::run(shard.clone(), l));
            }
            Err(e) => {
                tracing::error!(shard = idx, "listener: {e}");
                return;
            }
        }
        monoio::spawn(socket_loop(shard.clone()));
        monoio::spawn(inbox_loop(shard.clone(), inbox));
        monoio::spawn(flush_loop(shard.clone()));
        monoio::spawn(tick_loop(shard.clone()));
        shard.stop.wait().await;
        // Last writes of close frames.
        shard.flush_pass();
    };
    let entries = 4096;
    if try_uring {
        // Cooperative task running (Linux 5.19+): a completion caused by
        // another core (a client's bytes arriving) is picked up at the
        // shard's next syscall instead of interrupting it with an IPI. The
        // shard makes syscalls all the time while busy, and a parked shard
        // is woken as usual. Older kernels refuse the flag: then without it.
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun();
        for (urb, what) in [
            (coop, "cooperative"),
            (io_uring::IoUring::builder(), "plain"),
        ] {
            match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(entries)
                .uring_builder(urb)
                .enable_timer()
                .build()
            {
                Ok(mut rt) => return rt.block_on(body(false)),
                Err(e) => tracing::warn!(shard = idx, "{what} io_uring runtime failed ({e})"),
            }
        }
        tracing::warn!(shard = idx, "using epoll");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(body(true)),
        Err(e) => tracing::error!(shard = idx, "cannot build a runtime: {e}"),
    }
}

async fn inbox_loop(shard: Rc<Shard>, inbox: Inbox) {
    loop {
        std::future::poll_fn(|cx: &mut Context<'_>| {
            shard.shared.mesh.register(shard.idx, cx.waker());
            if inbox.rx.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        for _ in 0..INBOX_BATCHES_PER_PASS_MAX {
            let Ok(batch) = inbox.rx.try_recv() else {
                break;
            };
            shard.on_batch(batch);
        }
        // Let sockets and the flusher run before the next batch.
        yield_now().await;
    }
}

/// Give every other ready task a turn before continuing.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Poll batches of ready connections per wakeup before letting the other
/// tasks (inbox, flusher) run.
const POLLS_PER_WAKE_MAX: usize = 4;

/// Every connection's reads (and write wakeups): one wait for the epoll set,
/// then batches of ready sockets handled in place. Under load the polls are
/// paced (`pacer`): at most one per `read_coalesce` window.
async fn socket_loop(shard: Rc<Shard>) {
    let mut ready = Vec::with_capacity(poller::EVENTS_PER_POLL);
    let mut pacer = pacer::PollPacer::new(shard.shared.cfg.read_coalesce);
    loop {
        if let Err(e) = shard.poller.wait().await {
            // Not expected for an epoll fd; don't spin on it.
            tracing::error!(shard = shard.idx, "socket poller: {e}");
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut now = Instant::now();
        let delay = pacer.delay(now);
        if !delay.is_zero() {
            monoio::time::sleep(delay).await;
            now = Instant::now();
        }
        pacer.polled(now);
        let mut left_ready = false;
        for _ in 0..POLLS_PER_WAKE_MAX {
            let more = match shard.poller.poll(&mut ready) {
                Ok(more) => more,
                Err(e) => {
                    tracing::error!(shard = shard.idx, "epoll_wait: {e}");
                    false
                }
            };
            for r in ready.drain(..) {
                if r.writable {
                    shard.on_writable(r.slot, r.gen);
                }
                if r.readable {
                    reader::on_readable(&shard, r.slot, r.gen);
                }
            }
            left_ready = more;
            if !more {
                break;
            }
        }
        pacer.passed(left_ready);
        // Let the inbox and the flusher run before the next batch.
        yield_now().await;
    }
}

async fn flush_loop(shard: Rc<Shard>) {
    loop {
        shard.flush.wait().await;
        shard.flush_pass();
    }
}

async fn tick_loop(shard: Rc<Shard>) {
    let mut due = Vec::new();
    loop {
        monoio::time::sleep(Duration::from_millis(TIMER_TICK_MS)).await;
        let now = now_ms();
        shard.timers.borrow_mut().expire(now, &mut due);
        for e in due.drain(..) {
            shard.on_timer(e, now);
        }
        if let Some(f) = shard.shared.cfg.housekeeping {
            f();
        }
        if shard.outbox_pending.get() {
            shard.flush.notify();
        }
    }
}
