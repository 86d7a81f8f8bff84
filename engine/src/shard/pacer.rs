//! Read coalescing: how often a shard polls its socket set under load.
//!
//! Paced load (many clients, each sending now and then) wakes the shard for
//! nearly every frame: one wake-up, one `epoll_wait` and one `recv` per
//! message, where a closed loop gets many frames per wake. On a VM each
//! wake-up and park of the core is costly (docs/BENCHMARKS.md). So, like a
//! NIC's interrupt moderation, the shard polls the set no more often than
//! once per window while it is being woken faster than that: readiness that
//! arrives sooner waits for the window's end, and one pass then serves every
//! socket that became ready meanwhile. A wake after a quiet spell longer
//! than the window polls at once, so light load sees no added latency; under
//! load a message waits at most one window before it is read.

use std::time::{Duration, Instant};

/// Paces the polls of one shard's socket set.
pub struct PollPacer {
    window: Duration,
    /// When the previous poll began; `None` before the first.
    last: Option<Instant>,
    /// The previous pass stopped at its bound with sockets still ready:
    /// the batch is already full, so waiting would only add latency.
    backlog: bool,
}

impl PollPacer {
    /// A pacer with this window; a zero window never delays a poll.
    pub fn new(window: Duration) -> PollPacer {
        PollPacer {
            window,
            last: None,
            backlog: false,
        }
    }

    /// How long to wait, at `now`, before the next poll: the rest of the
    /// window begun by the previous poll, or zero if it has passed or if
    /// the previous pass left ready sockets behind.
    pub fn delay(&self, now: Instant) -> Duration {
        match self.last {
            Some(_) if self.backlog => Duration::ZERO,
            Some(last) => self
                .window
                .saturating_sub(now.saturating_duration_since(last)),
            None => Duration::ZERO,
        }
    }

    /// A poll begins at `at`.
    pub fn polled(&mut self, at: Instant) {
        debug_assert!(self.last.is_none_or(|l| at >= l), "time went back");
        self.last = Some(at);
    }

    /// The pass that began at the last [`PollPacer::polled`] ended;
    /// `left_ready`: it stopped at its bound with sockets still ready.
    pub fn passed(&mut self, left_ready: bool) {
        self.backlog = left_ready;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_poll_and_a_poll_after_a_quiet_spell_do_not_wait() {
        let t0 = Instant::now();
        let mut p = PollPacer::new(MS);
        assert_eq!(p.delay(t0), Duration::ZERO);
        p.polled(t0);
        assert_eq!(p.delay(t0 + MS), Duration::ZERO);
        assert_eq!(p.delay(t0 + 5 * MS), Duration::ZERO);
    }

    #[test]
    fn a_wake_within_the_window_waits_for_its_rest() {
        let t0 = Instant::now();
        let mut p = PollPacer::new(MS);
        p.polled(t0);
        assert_eq!(p.delay(t0), MS);
        assert_eq!(p.delay(t0 + MS / 4), MS * 3 / 4);
        // The next window starts at the next poll, not at the wake.
        p.polled(t0 + MS);
        assert_eq!(p.delay(t0 + MS + MS / 2), MS / 2);
    }

    #[test]
    fn a_pass_that_left_sockets_ready_does_not_wait() {
        let t0 = Instant::now();
        let mut p = PollPacer::new(MS);
        p.polled(t0);
        p.passed(true);
        assert_eq!(p.delay(t0 + MS / 4), Duration::ZERO);
        // Once a pass drains the set, pacing resumes.
        p.polled(t0 + MS / 4);
        p.passed(false);
        assert_eq!(p.delay(t0 + MS / 2), MS * 3 / 4);
    }

    #[test]
    fn a_zero_window_never_waits() {
        let t0 = Instant::now();
        let mut p = PollPacer::new(Duration::ZERO);
        p.polled(t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
    }
}
