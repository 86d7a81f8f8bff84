//! Per-connection budgets for the frames whose cost a client could multiply
//! (PROTOCOL.md "Rate limit"; `send` has its own token bucket in `Conn`):
//! - `typing` is not stored but pushed to every member of a group, so a
//!   flood would make the server push group size times its frame rate;
//! - `read`, `sync` and `convs` each cost a storage write or read, and the
//!   writer queue and the reader pool are shared: a flood from one client
//!   would turn everyone else's sends and syncs into `unavailable`.
//!
//! Each budget is the generic cell rate algorithm: one timestamp of state
//! (the theoretical arrival time of the next frame), a burst that passes at
//! once and a steady rate after it.

use crate::limits::{STORAGE_FRAMES_BURST, STORAGE_FRAMES_PER_S, TYPING_BURST, TYPING_PER_S};

/// Which budget a frame draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `typing`.
    Typing,
    /// `read`, `sync`, `convs`.
    Storage,
}

impl Budget {
    /// (frames per second, burst).
    const fn bounds(self) -> (u64, u64) {
        match self {
            Budget::Typing => (TYPING_PER_S, TYPING_BURST),
            Budget::Storage => (STORAGE_FRAMES_PER_S, STORAGE_FRAMES_BURST),
        }
    }

    /// The `error` message of a refused frame.
    pub fn refusal(self) -> String {
        let (per_s, burst) = self.bounds();
        let what = match self {
            Budget::Typing => "typing",
            Budget::Storage => "read, sync and convs",
        };
        format!("{what}: at most {per_s} per second, {burst} at once")
    }
}

/// One GCRA budget.
#[derive(Debug, Default)]
struct Gcra {
    /// When the next frame would be due at the steady rate (ms); 0 grants
    /// a full burst.
    tat_ms: u64,
}

impl Gcra {
    fn take(&mut self, now: u64, per_s: u64, burst: u64) -> bool {
        debug_assert!(per_s > 0 && per_s <= 1000 && burst > 0);
        let interval = 1000 / per_s;
        let tolerance = (burst - 1) * interval;
        let tat = self.tat_ms.max(now);
        if tat - now > tolerance {
            return false;
        }
        self.tat_ms = tat + interval;
        true
    }
}

/// The budgets of one connection (16 bytes).
#[derive(Debug, Default)]
pub struct Budgets {
    typing: Gcra,
    storage: Gcra,
}

impl Budgets {
    /// May a frame drawing on `which` pass at `now` (ms)? Counts it if so.
    pub fn take(&mut self, which: Budget, now: u64) -> bool {
        let (per_s, burst) = which.bounds();
        let g = match which {
            Budget::Typing => &mut self.typing,
            Budget::Storage => &mut self.storage,
        };
        g.take(now, per_s, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes_a_burst_then_the_rate(which: Budget) {
        let (per_s, burst) = which.bounds();
        let interval = 1000 / per_s;
        let mut b = Budgets::default();
        let t0 = 1_000_000;
        for i in 0..burst {
            assert!(b.take(which, t0), "{which:?}: frame {i} of the burst");
        }
        assert!(!b.take(which, t0), "{which:?}: one past the burst");
        assert!(
            !b.take(which, t0 + interval - 1),
            "{which:?}: before one interval"
        );
        assert!(
            b.take(which, t0 + interval),
            "{which:?}: one interval later, one more"
        );
        assert!(!b.take(which, t0 + interval));
        // A steady sender at the rate always passes.
        let t1 = t0 + 100_000;
        let mut b = Budgets::default();
        for k in 0..1000 {
            assert!(
                b.take(which, t1 + k * interval),
                "{which:?}: steady frame {k}"
            );
        }
        // Quiet for a while: a full burst again, not more.
        let t2 = t1 + 10_000_000;
        let n = (0..2 * burst).take_while(|_| b.take(which, t2)).count() as u64;
        assert_eq!(n, burst, "{which:?}");
    }

    #[test]
    fn each_budget_passes_a_burst_then_its_rate() {
        passes_a_burst_then_the_rate(Budget::Typing);
        passes_a_burst_then_the_rate(Budget::Storage);
    }

    #[test]
    fn the_budgets_are_independent() {
        let mut b = Budgets::default();
        while b.take(Budget::Typing, 5) {}
        assert!(
            b.take(Budget::Storage, 5),
            "typing spent the storage budget"
        );
    }
}
