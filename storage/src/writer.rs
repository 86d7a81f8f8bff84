//! The group-commit writer: one thread, one `WriteBatch` per drain.
//!
//! Producers (shards, the gateway) call [`WriterHandle::submit`], which
//! never blocks: it reserves room in a bounded queue or fails at once. The
//! `tern-writer` thread blocks on the queue, drains up to [`BATCH_MAX`]
//! requests, stages them into one `WriteBatch`, writes it once (one WAL sync
//! with [`Durability::Fsync`]), and then reports every request to the
//! [`CommitSink`], grouped by `reply_to`, in submission order.
//!
//! The queue bound lives in one atomic word next to a "closed" bit: a
//! reservation is a CAS on that word, so `submit_many` is all-or-nothing
//! and `shutdown` knows how many reserved requests are still on their way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hashbrown::HashMap;
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions};
use tern_proto::{ConvId, Entry, UserId};

use crate::tuning::{
    CF_CONVS, CF_DEDUP, CF_GROUPS, CF_MEMBERS, CF_MSGS, CF_READ, CF_USER_CONVS, CF_USER_GROUPS,
};
use crate::{ctx, keys, Durability, GroupRow, Storage, StorageError, StoredEntry, MEMBERS_MAX};

/// Most requests queued for the writer. Beyond it `submit` fails with
/// `QueueFull` (the shard answers `unavailable`) instead of letting memory
/// grow while the disk is slower than the senders.
pub const WRITE_QUEUE_MAX: usize = 65_536;
/// Most requests in one `WriteBatch`: bounds the batch's memory and the
/// latency the first request of a batch waits for the last.
pub const BATCH_MAX: usize = 1024;

/// Bounds of the capacity a `WriteBatch` starts with: the last batch's
/// size plus a quarter, within these (a batch of [`BATCH_MAX`] dm messages
/// is ~300 KiB).
const WB_BYTES_HINT_MIN: usize = 4 << 10;
const WB_BYTES_HINT_MAX: usize = 1 << 20;

/// Set in the queue-state word once `shutdown` began.
const CLOSED_BIT: u64 = 1 << 63;

/// Requests reserved or queued, from the queue-state word.
pub(crate) fn queued(state: u64) -> u64 {
    state & !CLOSED_BIT
}

/// Receives the outcome of committed batches, on the writer thread.
///
/// Implementations must be quick and must not block on the writer (it is
/// the caller): typically they push the results onto the `reply_to` shard's
/// queue and wake it.
pub trait CommitSink: Send + Sync + 'static {
    /// Called once per (batch, reply_to) with the results of that batch's
    /// requests for that reply_to, in submission order.
    fn committed(&self, reply_to: u32, results: Vec<(u64, Result<(), StorageError>)>);

    /// Called instead of [`CommitSink::committed`] when a batch's write
    /// failed in a way that leaves its outcome unknown
    /// ([`StorageError::outcome_unknown`]: a failed WAL sync, an I/O error
    /// RocksDB does not recover from by itself). The batch may still be
    /// replayed from the WAL after a restart, so answering its requests
    /// "nothing stored" could be a lie, and RocksDB refuses every later
    /// write anyway. Nothing of the batch is reported; implementations end
    /// the process (a restart recovers from the WAL) or the test.
    fn unrecoverable(&self, error: &StorageError) -> !;
}

/// One request for the writer.
#[derive(Debug)]
pub struct WriteRequest {
    /// Who gets the result (a shard index, or another id the sink knows).
    pub reply_to: u32,
    /// Opaque to storage; comes back with the result.
    pub token: u64,
    /// What to write.
    pub op: WriteOp,
}

/// What a [`WriteRequest`] writes.
#[derive(Debug)]
pub enum WriteOp {
    /// Store a timeline entry; bump convs max_seq; optionally record dedup
    /// (conv, sender, cmid) → (seq, ts); add conv to `user_convs` for each
    /// user in index_users (dm participants).
    ///
    /// Rejected on its own with `SeqGap` unless `entry.seq()` is exactly the
    /// conversation's committed max seq + 1 (counting earlier appends of the
    /// same batch). (A seq of 0 or an entry of another conversation cannot
    /// be a [`StoredEntry`] of `conv`.)
    Append {
        /// The conversation the entry was checked against.
        conv: ConvId,
        /// The entry, with its seq and ts assigned, encoded.
        entry: StoredEntry,
        /// (sender, cmid) to remember for the dedup window.
        dedup: Option<(UserId, String)>,
        /// Users whose `convs` listing must include this conversation.
        index_users: Vec<UserId>,
    },
    /// read seq := max(old, min(seq, max_seq)): a read position never
    /// moves back, and never past what the conversation holds (counting
    /// appends earlier in the same batch), so `max_seq - read_seq` is
    /// never negative.
    SetRead {
        /// The reader.
        user: UserId,
        /// The conversation read.
        conv: ConvId,
        /// The last seq read.
        seq: u64,
    },
    /// A group change, atomically with its timeline event (if any).
    ///
    /// The event must be an `Entry::Event` of `conv` and follows exactly
    /// the seq rule of [`WriteOp::Append`] (committed max seq + 1, counting
    /// earlier appends and changes of the same batch; `SeqGap` otherwise)
    /// and bumps the conversation's max seq like an append. In the same
    /// `WriteBatch`, in this order: upsert `row` (if `Some`); add the
    /// members `add` (`members` and `user_groups` keys); delete the members
    /// `remove` (both keys); if `delete_group`, delete the group row and
    /// every `members` key of the group. Later steps win, so a user in both
    /// `add` and `remove` ends up removed, and `delete_group` beats `row`.
    ///
    /// `user_groups` keys can only be found through the users, so with
    /// `delete_group` the caller passes the full member list in `remove`.
    /// The conversation's max seq, read positions and stored entries stay
    /// (entries until retention drops them): a group created again under
    /// the same id continues its timeline and never reuses a seq.
    ///
    /// Rejected as a whole, staging nothing, with `Invalid` if `conv` is
    /// not a group, `row` is of another group, the event is not an event of
    /// `conv` or has seq 0, or `add`/`remove` hold more than
    /// [`MEMBERS_MAX`] ids; with `SeqGap` as above.
    GroupChange {
        /// The group conversation (`group:<id>`).
        conv: ConvId,
        /// The timeline event recording the change, with seq and ts assigned.
        event: Option<Entry>,
        /// The group row to store (an upsert: the whole row is replaced).
        row: Option<GroupRow>,
        /// Users to add as members.
        add: Vec<UserId>,
        /// Users to remove (with `delete_group`: every member).
        remove: Vec<UserId>,
        /// Delete the group row and all its members.
        delete_group: bool,
    },
}

/// What travels on the queue.
// Inline on purpose: boxing the request would cost an allocation per submit
// to save bytes in the one rare `Shutdown` message.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Req(WriteRequest),
    /// Sent by `shutdown` after the closed bit is set: drain and stop.
    Shutdown,
}

/// Submits requests to the writer thread. Clone + Send + Sync.
#[derive(Clone)]
pub struct WriterHandle {
    shared: Arc<Shared>,
}

struct Shared {
    tx: Sender<Msg>,
    /// Closed bit | number of requests reserved and not yet dequeued.
    state: Arc<AtomicU64>,
    /// Taken by the first `shutdown`, which joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.load(Ordering::Relaxed);
        f.debug_struct("WriterHandle")
            .field("queued", &queued(state))
            .field("closed", &(state & CLOSED_BIT != 0))
            .finish()
    }
}

impl WriterHandle {
    /// Queues one request. Never blocks: `QueueFull` when
    /// [`WRITE_QUEUE_MAX`] requests are waiting, `Closed` after `shutdown`.
    /// On `Ok` the sink will see the request's token exactly once.
    pub fn submit(&self, req: WriteRequest) -> Result<(), StorageError> {
        self.reserve(1)?;
        self.send(Msg::Req(req), 1)
    }

    /// Queues all requests, in order, or none of them (same errors as
    /// [`WriterHandle::submit`]).
    pub fn submit_many(&self, reqs: Vec<WriteRequest>) -> Result<(), StorageError> {
        if reqs.is_empty() {
            return Ok(());
        }
        if reqs.len() > WRITE_QUEUE_MAX {
            return Err(StorageError::QueueFull);
        }
        let mut unsent = reqs.len() as u64;
        self.reserve(unsent)?;
        for req in reqs {
            self.send(Msg::Req(req), unsent)?;
            unsent -= 1;
        }
        Ok(())
    }

    /// Stops accepting requests, drains and commits what is queued, and
    /// joins the writer thread. Idempotent; concurrent callers all return
    /// after the thread has ended. Called from inside the sink (on the
    /// writer thread itself) it only stops accepting.
    pub fn shutdown(&self) {
        let before = self.shared.state.fetch_or(CLOSED_BIT, Ordering::AcqRel);
        if before & CLOSED_BIT == 0 {
            // Fails only if the thread is already gone; nothing to wake then.
            let _ = self.shared.tx.send(Msg::Shutdown);
        }
        let mut thread = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(handle) = thread.take() else {
            return;
        };
        if handle.thread().id() == std::thread::current().id() {
            // Joining ourselves would deadlock; the loop ends after this batch.
            *thread = Some(handle);
            return;
        }
        if handle.join().is_err() {
            tracing::error!("tern-writer thread panicked");
        }
    }

    /// Reserves room for `n` requests, or fails without reserving anything.
    fn reserve(&self, n: u64) -> Result<(), StorageError> {
        let state = &self.shared.state;
        let mut cur = state.load(Ordering::Acquire);
        loop {
            if cur & CLOSED_BIT != 0 {
                return Err(StorageError::Closed);
            }
            if queued(cur) + n > WRITE_QUEUE_MAX as u64 {
                return Err(StorageError::QueueFull);
            }
            match state.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Sends one reserved message; `unsent` is how many reserved messages
    /// (this one included) have not been sent yet.
    fn send(&self, msg: Msg, unsent: u64) -> Result<(), StorageError> {
        self.shared.tx.send(msg).map_err(|_| {
            // The writer thread is gone (it panicked): give the room back
            // and refuse everything from now on.
            self.shared.state.fetch_sub(unsent, Ordering::AcqRel);
            self.shared.state.fetch_or(CLOSED_BIT, Ordering::AcqRel);
            StorageError::Closed
        })
    }
}

/// Spawns the writer thread. `storage.start_writer` checked it is the only one.
pub(crate) fn start(storage: Storage, sink: Arc<dyn CommitSink>) -> WriterHandle {
    // Unbounded channel: the bound is the reservation in `state`, which lets
    // `submit_many` be all-or-nothing and keeps `send` from ever blocking.
    let (tx, rx) = crossbeam_channel::unbounded();
    let state = storage.inner.stats.queue_state.clone();
    let heads = storage.take_heads();
    let writer = Writer {
        wo: crate::write_options(storage.inner.durability),
        storage,
        sink,
        rx,
        state: state.clone(),
        heads,
        spare: (HashMap::new(), HashMap::new()),
        wb_bytes_hint: WB_BYTES_HINT_MIN,
    };
    let thread = std::thread::Builder::new()
        .name("tern-writer".into())
        .spawn(move || writer.run());
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            // Without a writer nothing can be stored: refuse every request.
            tracing::error!("cannot spawn tern-writer: {e}");
            state.fetch_or(CLOSED_BIT, Ordering::AcqRel);
            None
        }
    };
    WriterHandle {
        shared: Arc::new(Shared {
            tx,
            state,
            thread: Mutex::new(thread),
        }),
    }
}

/// A conversation touched by the batch being built.
struct PendingHead {
    /// Max seq once the batch is committed.
    seq: u64,
    /// Appends of this conversation in the batch.
    n_appends: u64,
}

/// Stages the `msgs` row of an entry that passed [`Writer::check_entry`]
/// and advances the batch's head of its conversation. Cannot fail, so a
/// caller that checked everything first stages all or nothing.
fn stage_entry(batch: &mut Batch, msgs: &ColumnFamily, next: NextEntry, entry: &StoredEntry) {
    let seq = entry.seq();
    debug_assert_eq!(seq, next.committed + 1, "entry not checked");
    let conv_key = entry.conv_key();
    batch
        .wb
        .put_cf(msgs, keys::msg_key(conv_key, seq), entry.value());
    // The key is copied only for the batch's first append of a conversation.
    let head = batch.heads.entry_ref(conv_key).or_insert(PendingHead {
        seq: next.committed,
        n_appends: 0,
    });
    head.seq = seq;
    head.n_appends += 1;
    batch.n_appends += 1;
}

/// An entry that passed [`Writer::check_entry`]: where it goes (the
/// conversation key is the entry's own, [`StoredEntry::conv_key`]).
struct NextEntry {
    /// The conversation's head before the entry (counting this batch).
    committed: u64,
}

/// The batch being built: staged writes plus what to report.
struct Batch {
    wb: WriteBatch,
    /// conv key → head after this batch.
    heads: HashMap<Vec<u8>, PendingHead>,
    /// read key (user 0x00 conv) → read seq after this batch.
    reads: HashMap<Vec<u8>, u64>,
    /// (reply_to, token, result) in submission order.
    results: Vec<(u32, u64, Result<(), StorageError>)>,
    n_appends: u64,
}

struct Writer {
    storage: Storage,
    sink: Arc<dyn CommitSink>,
    rx: Receiver<Msg>,
    state: Arc<AtomicU64>,
    /// conv key → committed max seq. Only this thread changes `convs`, so
    /// this map is the truth about what is stored.
    heads: HashMap<Vec<u8>, u64>,
    /// The capacity a new `WriteBatch` starts with (the last one's size).
    wb_bytes_hint: usize,
    /// The last batch's maps, emptied, so a commit does not grow new ones.
    spare: (HashMap<Vec<u8>, PendingHead>, HashMap<Vec<u8>, u64>),
    wo: WriteOptions,
}

impl Writer {
    fn run(mut self) {
        let mut reqs: Vec<WriteRequest> = Vec::with_capacity(BATCH_MAX);
        let mut shutting_down = false;
        // When the last commit began; `None` before the first.
        let mut last_commit: Option<Instant> = None;
        loop {
            if shutting_down && queued(self.state.load(Ordering::Acquire)) == 0 {
                break;
            }
            // Block for the first message, then take whatever else is there.
            match self.rx.recv() {
                Ok(Msg::Req(r)) => reqs.push(r),
                Ok(Msg::Shutdown) => shutting_down = true,
                // Every handle is gone and the queue is empty.
                Err(_) => break,
            }
            if !shutting_down {
                self.hold_back(last_commit);
            }
            while reqs.len() < BATCH_MAX {
                match self.rx.try_recv() {
                    Ok(Msg::Req(r)) => reqs.push(r),
                    Ok(Msg::Shutdown) => shutting_down = true,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if reqs.is_empty() {
                continue;
            }
            let before = self.state.fetch_sub(reqs.len() as u64, Ordering::AcqRel);
            debug_assert!(
                queued(before) >= reqs.len() as u64,
                "dequeued more than reserved"
            );
            last_commit = Some(Instant::now());
            self.commit(&mut reqs);
        }
        self.finish();
    }

    /// Group commit under load: sleeps until `sync_interval` has passed
    /// since the last commit began, so what arrives meanwhile shares its
    /// WAL sync. On a VM a sync costs the core far more than its wait
    /// (docs/BENCHMARKS.md: ~90 µs of CPU per fdatasync here), so at
    /// 20 k messages/s this saves a fifth of the core. After a quiet spell
    /// the interval has long passed and nothing waits.
    fn hold_back(&self, last_commit: Option<Instant>) {
        let interval = self.storage.inner.sync_interval;
        let Some(last) = last_commit else {
            return;
        };
        if let Some(left) = interval.checked_sub(last.elapsed()) {
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        }
    }

    /// Stages, writes and reports one batch; empties `reqs`.
    fn commit(&mut self, reqs: &mut Vec<WriteRequest>) {
        let n_reqs = reqs.len() as u64;
        let (heads, reads) = std::mem::take(&mut self.spare);
        debug_assert!(
            heads.is_empty() && reads.is_empty(),
            "spare maps not emptied"
        );
        let mut batch = Batch {
            wb: WriteBatch::with_capacity_bytes(self.wb_bytes_hint),
            heads,
            reads,
            results: Vec::with_capacity(reqs.len()),
            n_appends: 0,
        };
        for req in reqs.drain(..) {
            let result = match req.op {
                WriteOp::Append {
                    conv,
                    entry,
                    dedup,
                    index_users,
                } => self.stage_append(&mut batch, &conv, &entry, dedup, &index_users),
                WriteOp::SetRead { user, conv, seq } => {
                    self.stage_read(&mut batch, &user, &conv, seq)
                }
                WriteOp::GroupChange {
                    conv,
                    event,
                    row,
                    add,
                    remove,
                    delete_group,
                } => self.stage_group_change(
                    &mut batch,
                    &conv,
                    event.as_ref(),
                    row.as_ref(),
                    &add,
                    &remove,
                    delete_group,
                ),
            };
            batch.results.push((req.reply_to, req.token, result));
        }
        let started = Instant::now();
        // The next batch starts at about this one's size, so staging does
        // not regrow (and copy) the batch's buffer a dozen times.
        self.wb_bytes_hint =
            (batch.wb.size_in_bytes() / 4 * 5).clamp(WB_BYTES_HINT_MIN, WB_BYTES_HINT_MAX);
        let outcome = self.write(&mut batch);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.record_stats(&batch, n_reqs, latency_us, outcome.as_ref().err());
        if let Err(e) = &outcome {
            if e.outcome_unknown() {
                tracing::error!(error = %e, requests = n_reqs, "storage batch failed with an unknown outcome");
                self.sink.unrecoverable(e);
            }
        }
        match outcome {
            Ok(_) => {
                for (conv, head) in batch.heads.drain() {
                    let old = self.heads.insert(conv, head.seq).unwrap_or(0);
                    // Kept on in release: it guards the no-gap promise and
                    // costs one comparison per conversation per batch.
                    assert_eq!(head.seq, old + head.n_appends, "head advanced by a gap");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = n_reqs, "storage batch failed");
                // The map is not advanced: the next append of each conv is
                // expected at the same seq again, so nothing can leave a gap.
                for (_, _, r) in &mut batch.results {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        batch.heads.clear();
        batch.reads.clear();
        self.spare = (batch.heads, batch.reads);
        self.report(batch.results);
    }

    /// Validates an append and stages its writes; stages nothing on error.
    fn stage_append(
        &self,
        batch: &mut Batch,
        conv: &ConvId,
        entry: &StoredEntry,
        dedup: Option<(UserId, String)>,
        index_users: &[UserId],
    ) -> Result<(), StorageError> {
        let next = self.check_entry(batch, conv, entry)?;
        let dedup_key = match &dedup {
            Some((sender, cmid)) => Some(
                keys::dedup_key(
                    entry.conv_key(),
                    sender.as_str().as_bytes(),
                    cmid.as_bytes(),
                )
                .ok_or_else(|| StorageError::Invalid(format!("sender {sender:?} contains 0x00")))?,
            ),
            None => None,
        };
        let s = &self.storage;
        let (msgs, dedup_cf, user_convs) = (s.cf(CF_MSGS)?, s.cf(CF_DEDUP)?, s.cf(CF_USER_CONVS)?);
        if let Some(k) = dedup_key {
            batch
                .wb
                .put_cf(dedup_cf, k, keys::dedup_value(entry.seq(), entry.ts()));
        }
        for user in index_users {
            batch.wb.put_cf(
                user_convs,
                keys::pair_key(user.as_str().as_bytes(), entry.conv_key()),
                [],
            );
        }
        stage_entry(batch, msgs, next, entry);
        Ok(())
    }

    /// Validates a group change and stages its writes; stages nothing on
    /// error (every check runs before the first write is staged).
    #[allow(clippy::too_many_arguments)] // the fields of one `WriteOp`
    fn stage_group_change(
        &self,
        batch: &mut Batch,
        conv: &ConvId,
        event: Option<&Entry>,
        row: Option<&GroupRow>,
        add: &[UserId],
        remove: &[UserId],
        delete_group: bool,
    ) -> Result<(), StorageError> {
        let ConvId::Group(group) = conv else {
            return Err(StorageError::Invalid(format!("group change of {conv}")));
        };
        if add.len() > MEMBERS_MAX || remove.len() > MEMBERS_MAX {
            return Err(StorageError::Invalid(format!(
                "group change of {conv} with {} + {} users (max {MEMBERS_MAX} each)",
                add.len(),
                remove.len()
            )));
        }
        let row_value = match row {
            Some(r) if &r.group != group => {
                return Err(StorageError::Invalid(format!(
                    "row of group {} in a change of {conv}",
                    r.group
                )))
            }
            Some(r) => Some(crate::encode_group(r)?),
            None => None,
        };
        let event = match event {
            Some(e @ Entry::Event(_)) => Some(StoredEntry::new(conv, e)?),
            Some(Entry::Msg(_)) => {
                return Err(StorageError::Invalid(format!(
                    "group change of {conv} with a msg instead of an event"
                )))
            }
            None => None,
        };
        let next = match &event {
            Some(e) => Some(self.check_entry(batch, conv, e)?),
            None => None,
        };
        let s = &self.storage;
        let (msgs, groups, members, user_groups) = (
            s.cf(CF_MSGS)?,
            s.cf(CF_GROUPS)?,
            s.cf(CF_MEMBERS)?,
            s.cf(CF_USER_GROUPS)?,
        );
        if let (Some(next), Some(e)) = (next, &event) {
            stage_entry(batch, msgs, next, e);
        }
        let g = group.as_str().as_bytes();
        if let Some(v) = row_value {
            batch.wb.put_cf(groups, g, v);
        }
        for u in add {
            let u = u.as_str().as_bytes();
            batch.wb.put_cf(members, keys::pair_key(g, u), []);
            batch.wb.put_cf(user_groups, keys::pair_key(u, g), []);
        }
        for u in remove {
            let u = u.as_str().as_bytes();
            batch.wb.delete_cf(members, keys::pair_key(g, u));
            batch.wb.delete_cf(user_groups, keys::pair_key(u, g));
        }
        if delete_group {
            batch.wb.delete_cf(groups, g);
            // Covers members missing from `remove` too; one range tombstone
            // per dismissed group is cheap. Later requests of the batch that
            // add members again are applied after it and win.
            batch
                .wb
                .delete_range_cf(members, keys::prefix_start(g), keys::prefix_end(g));
        }
        Ok(())
    }

    /// Checks that an entry of `conv` (a [`StoredEntry`], so its seq is not
    /// 0) with `seq` may be appended now: the head (counting this batch) + 1.
    fn check_entry(
        &self,
        batch: &Batch,
        conv: &ConvId,
        entry: &StoredEntry,
    ) -> Result<NextEntry, StorageError> {
        let seq = entry.seq();
        debug_assert!(seq > 0, "a StoredEntry has a seq");
        let conv_key = entry.conv_key();
        debug_assert_eq!(conv_key, conv.to_text().as_bytes(), "entry of another conv");
        let committed = match batch.heads.get(conv_key) {
            Some(p) => p.seq,
            None => self.heads.get(conv_key).copied().unwrap_or(0),
        };
        // A seq of u64::MAX can never be followed; treat it as a gap.
        let expected = committed.saturating_add(1);
        if seq != expected || committed == u64::MAX {
            return Err(StorageError::SeqGap {
                conv: conv.to_text(),
                expected,
                got: seq,
            });
        }
        Ok(NextEntry { committed })
    }

    /// Stages read := max(old, min(seq, head)). The final value of each key
    /// is put once, in `write`.
    fn stage_read(
        &self,
        batch: &mut Batch,
        user: &UserId,
        conv: &ConvId,
        seq: u64,
    ) -> Result<(), StorageError> {
        let user_key = user.as_str().as_bytes();
        let conv_key = conv.to_text().into_bytes();
        let head = match batch.heads.get(&conv_key) {
            Some(p) => p.seq,
            None => self.heads.get(&conv_key).copied().unwrap_or(0),
        };
        let seq = seq.min(head);
        let key = keys::pair_key(user_key, &conv_key);
        let old = match batch.reads.get(&key) {
            Some(&v) => v,
            // Only this thread writes `read`, so the stored value is current.
            None => self.storage.read_seq(user_key, &conv_key)?,
        };
        if seq > old {
            batch.reads.insert(key, seq);
        }
        Ok(())
    }

    /// Puts the batch's heads and reads, then writes it (nothing to do when
    /// every request was rejected).
    fn write(&self, batch: &mut Batch) -> Result<(), StorageError> {
        let s = &self.storage;
        for (conv, head) in &batch.heads {
            batch
                .wb
                .put_cf(s.cf(CF_CONVS)?, conv, head.seq.to_be_bytes());
        }
        for (key, seq) in &batch.reads {
            batch.wb.put_cf(s.cf(CF_READ)?, key, seq.to_be_bytes());
        }
        if batch.wb.is_empty() {
            return Ok(());
        }
        let wb = std::mem::take(&mut batch.wb);
        s.inner
            .db
            .write_opt(wb, &self.wo)
            .map_err(|e| ctx("commit batch", e))
    }

    /// Counts one batch: its size, how long its write took (every batch,
    /// failed or empty ones too, so both histograms count every batch), its
    /// errors and entries.
    fn record_stats(
        &self,
        batch: &Batch,
        n_reqs: u64,
        latency_us: u64,
        failed: Option<&StorageError>,
    ) {
        let st = &self.storage.inner.stats;
        st.batch_size_sum.fetch_add(n_reqs, Ordering::Relaxed);
        st.batch_size_max.fetch_max(n_reqs, Ordering::Relaxed);
        st.batch_size_buckets.observe(n_reqs);
        st.commit_latency_us_sum
            .fetch_add(latency_us, Ordering::Relaxed);
        st.commit_latency_us_max
            .fetch_max(latency_us, Ordering::Relaxed);
        st.commit_latency_us_buckets.observe(latency_us);
        // Last, so a snapshot that sees this batch counted (Acquire) also
        // sees it in both histograms.
        st.batches.fetch_add(1, Ordering::Release);
        let n_rejected = batch.results.iter().filter(|r| r.2.is_err()).count() as u64;
        let n_errors = if failed.is_some() { n_reqs } else { n_rejected };
        st.errors.fetch_add(n_errors, Ordering::Relaxed);
        if failed.is_none() {
            st.entries_written
                .fetch_add(batch.n_appends, Ordering::Relaxed);
        }
    }

    /// Calls the sink once per reply_to, each with its results in order.
    fn report(&self, results: Vec<(u32, u64, Result<(), StorageError>)>) {
        type Results = Vec<(u64, Result<(), StorageError>)>;
        let mut groups: Vec<(u32, Results)> = Vec::new();
        let mut group_idx: HashMap<u32, usize> = HashMap::new();
        for (reply_to, token, result) in results {
            let idx = *group_idx.entry(reply_to).or_insert_with(|| {
                groups.push((reply_to, Vec::new()));
                groups.len() - 1
            });
            groups[idx].1.push((token, result));
        }
        for (reply_to, results) in groups {
            self.sink.committed(reply_to, results);
        }
    }

    /// After the last batch: make what was written as durable as a clean
    /// shutdown can.
    fn finish(&self) {
        let s = &self.storage;
        let result = match s.inner.durability {
            Durability::Fsync => Ok(()),
            Durability::Os => s.inner.db.flush_wal(true).map_err(|e| ctx("sync wal", e)),
            Durability::None => s.flush_all(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "storage writer: final flush failed");
        }
        tracing::info!("tern-writer stopped");
    }
}
