//! A coarse timer wheel: one per shard, instead of a timer per connection.
//!
//! Entries are bucketed by tick; when a slot comes round its entries are
//! handed back and the caller checks the real deadline (which may have moved
//! since: activity pushes the idle deadline forward without touching the
//! wheel), re-arming what is not yet due. So an entry costs one small record,
//! and moving a deadline costs nothing.

use crate::limits::{TIMER_SLOTS, TIMER_TICK_MS};

/// What a wheel entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Heartbeat / idle check.
    Idle,
    /// Oldest unacked push may be due for redelivery.
    Ack,
    /// A server-initiated close waits for the client's close frame.
    CloseGrace,
    /// A coalesced large-group `notice` may be due.
    Notice,
}

/// A connection slot + generation, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub slot: u32,
    pub gen: u32,
    pub kind: TimerKind,
}

pub struct TimerWheel {
    slots: Vec<Vec<TimerEntry>>,
    /// The tick whose slot was expired last.
    cur_tick: u64,
}

impl TimerWheel {
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            slots: (0..TIMER_SLOTS).map(|_| Vec::new()).collect(),
            cur_tick: now_ms / TIMER_TICK_MS,
        }
    }

    /// Arm `e` for `at_ms` (rounded up to the next tick; never in the past).
    /// Deadlines beyond one revolution land early and are re-armed by the caller.
    pub fn arm(&mut self, at_ms: u64, e: TimerEntry) {
        let tick = at_ms.div_ceil(TIMER_TICK_MS).max(self.cur_tick + 1);
        let tick = tick.min(self.cur_tick + TIMER_SLOTS as u64 - 1);
        self.slots[(tick as usize) & (TIMER_SLOTS - 1)].push(e);
    }

    /// Every entry whose slot passed by `now_ms`, appended to `out`.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<TimerEntry>) {
        let now_tick = now_ms / TIMER_TICK_MS;
        // Bounded: at most one revolution per call.
        let n_ticks = now_tick
            .saturating_sub(self.cur_tick)
            .min(TIMER_SLOTS as u64);
        for _ in 0..n_ticks {
            self.cur_tick += 1;
            out.append(&mut self.slots[(self.cur_tick as usize) & (TIMER_SLOTS - 1)]);
        }
        self.cur_tick = self.cur_tick.max(now_tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(slot: u32) -> TimerEntry {
        TimerEntry {
            slot,
            gen: 0,
            kind: TimerKind::Idle,
        }
    }

    #[test]
    fn entries_fire_at_or_after_their_deadline_never_before() {
        let mut w = TimerWheel::new(1_000);
        w.arm(1_250, e(1));
        w.arm(5_000, e(2));
        let mut out = Vec::new();
        w.expire(1_200, &mut out);
        assert!(out.is_empty());
        w.expire(1_300, &mut out);
        assert_eq!(out, vec![e(1)]);
        out.clear();
        w.expire(4_999, &mut out);
        assert!(out.is_empty());
        w.expire(5_000, &mut out);
        assert_eq!(out, vec![e(2)]);
    }

    #[test]
    fn far_deadlines_come_back_early_for_rearming() {
        let mut w = TimerWheel::new(0);
        let far = TIMER_TICK_MS * TIMER_SLOTS as u64 * 3;
        w.arm(far, e(7));
        let mut out = Vec::new();
        w.expire(TIMER_TICK_MS * TIMER_SLOTS as u64, &mut out);
        assert_eq!(out, vec![e(7)]);
    }

    #[test]
    fn past_deadlines_fire_on_next_tick() {
        let mut w = TimerWheel::new(10_000);
        w.arm(0, e(3));
        let mut out = Vec::new();
        w.expire(10_000 + TIMER_TICK_MS, &mut out);
        assert_eq!(out, vec![e(3)]);
    }
}
