//! One glommio executor (a thread pinned to a core): it opens its share of
//! the connections at its share of the connect rate, runs one task per
//! connection, follows the run's phases and returns its statistics.
//!
//! Executor-local state lives in [`Local`] behind `Rc`; nothing in it is
//! shared with other threads except through [`Control`]'s atomics.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::plan::{phase, Control, Live, Plan};
use crate::stats::ExecStats;

/// How often an executor looks at the shared phase. Phase changes are rare;
/// 5 ms is invisible next to a run of seconds.
const PHASE_POLL: Duration = Duration::from_millis(5);
/// Bytes of the executor's read buffer: every connection reads into it and
/// keeps only a partial frame, so an idle connection holds no buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// A phase as one executor sees it, with the wakers of tasks waiting for
/// it to change (one slot per task, so a task polling again does not grow
/// the list).
pub struct LocalPhase {
    cur: Cell<u8>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

impl LocalPhase {
    fn new(n_slots: usize) -> LocalPhase {
        LocalPhase {
            cur: Cell::new(phase::CONNECT),
            wakers: RefCell::new(vec![None; n_slots]),
        }
    }

    /// The phase.
    pub fn get(&self) -> u8 {
        self.cur.get()
    }

    fn set(&self, p: u8) {
        self.cur.set(p);
        for w in self.wakers.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves with the phase once it is no longer `seen`.
    pub fn changed(&self, slot: usize, seen: u8) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| {
            let cur = self.cur.get();
            if cur != seen {
                return Poll::Ready(cur);
            }
            if let Some(s) = self.wakers.borrow_mut().get_mut(slot) {
                *s = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// What the tasks of one executor share.
pub struct Local {
    /// The run.
    pub plan: Arc<Plan>,
    /// Shared with the other executors.
    pub ctl: Arc<Control>,
    /// This executor's index.
    pub idx: usize,
    /// Phase, followed locally.
    pub phase: LocalPhase,
    /// Statistics of this executor.
    pub stats: RefCell<ExecStats>,
    /// Read buffer shared by every connection (borrowed only inside a poll,
    /// never across an await).
    pub scratch: RefCell<Vec<u8>>,
    /// Encoding buffer for protocol frames (same rule).
    pub enc: RefCell<Vec<u8>>,
    /// Read readiness of the authenticated connections.
    pub ready: crate::ready::Readiness,
    /// Set when every task ended, to stop the phase follower and the
    /// readiness poller.
    done: Cell<bool>,
}

impl Local {
    /// This executor's live counters.
    pub fn live(&self) -> &Live {
        &self.ctl.live[self.idx]
    }

    /// Every task of the executor ended.
    pub fn is_done(&self) -> bool {
        self.done.get()
    }
}

/// Sleeps until `at_us` on the run's clock (at once if it is past).
pub async fn sleep_until(ctl: &Control, at_us: u64) {
    let now = ctl.now_us();
    if at_us > now {
        glommio::timer::sleep(Duration::from_micros(at_us - now)).await;
    }
}

/// The body of executor `idx`: runs its connections and HTTP senders to
/// the end of the run and returns its statistics.
pub async fn executor_main(idx: usize, plan: Arc<Plan>, ctl: Arc<Control>) -> ExecStats {
    let n_exec = plan.n_executors.max(1);
    let my_conns: Vec<usize> = (idx..plan.conns.len()).step_by(n_exec).collect();
    let n_http = plan.http_senders.as_ref().map_or(0, |h| h.n_conns);
    let my_http: Vec<usize> = (idx..n_http).step_by(n_exec).collect();
    let local = Rc::new(Local {
        plan: plan.clone(),
        ctl: ctl.clone(),
        idx,
        phase: LocalPhase::new(my_conns.len() + my_http.len()),
        stats: RefCell::new(ExecStats::default()),
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES]),
        enc: RefCell::new(Vec::with_capacity(1024)),
        ready: crate::ready::Readiness::new(my_conns.len() + my_http.len())
            .expect("epoll_create1 for the executor's readiness set"),
        done: Cell::new(false),
    });
    let follower = glommio::spawn_local(follow_phase(local.clone()));
    let poller = glommio::spawn_local(crate::ready::poller(local.clone()));

    let mut tasks = Vec::with_capacity(my_conns.len() + my_http.len());
    for (k, &h) in my_http.iter().enumerate() {
        let slot = my_conns.len() + k;
        tasks.push(glommio::spawn_local(crate::httpload::http_sender(
            local.clone(),
            h,
            slot,
        )));
    }
    // This executor's share of the connect rate.
    let interval_us = if plan.connect_rate > 0.0 {
        (1e6 * n_exec as f64 / plan.connect_rate) as u64
    } else {
        0
    };
    let start_us = ctl.now_us();
    for (k, &c) in my_conns.iter().enumerate() {
        sleep_until(&ctl, start_us + k as u64 * interval_us).await;
        tasks.push(glommio::spawn_local(crate::conn::conn_task(
            local.clone(),
            c,
            k,
        )));
    }
    for t in tasks {
        t.await;
    }
    local.done.set(true);
    follower.await;
    poller.await;
    local.stats.replace(ExecStats::default())
}

/// Copies the shared phase into the executor and wakes its tasks on a
/// change; ends once every task ended.
async fn follow_phase(local: Rc<Local>) {
    while !local.done.get() {
        let p = local.ctl.phase();
        if p != local.phase.get() {
            local.phase.set(p);
        }
        glommio::timer::sleep(PHASE_POLL).await;
    }
}
