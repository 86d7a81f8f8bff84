//! Per-executor statistics (kept by one thread, no atomics) and their
//! merge into one set at the end of a run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records, in µs (one hour); anything slower
/// is recorded as this.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant figures of every histogram: 0.1% resolution.
const SIG_FIGS: u8 = 3;

/// A latency histogram in µs.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds within hdrhistogram's limits: this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIG_FIGS).expect("constant histogram bounds")
}

/// Records `us` (at least 1, at most [`LATENCY_US_MAX`]).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// Percentiles of one histogram, in µs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl LatencySummary {
    /// The summary of `h`.
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Width of one timeline slot, µs of the run clock.
pub const TIMELINE_SLOT_US: u64 = 250_000;
/// Slots a timeline keeps (an hour); later samples count in the last one.
const TIMELINE_SLOTS_MAX: usize = 14_400;
/// A latency the timeline counts as slow: the targets' p99 bound.
pub const SLOW_US: u64 = 10_000;

/// One slot of a [`Timeline`]: the samples whose send fell in it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Slot {
    /// Start of the slot, ms of the run clock.
    pub t_ms: u64,
    /// Samples.
    pub count: u64,
    /// Samples above [`SLOW_US`].
    pub slow: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

/// Latency over the run, by the send time, in [`TIMELINE_SLOT_US`] slots:
/// shows whether a tail is spread evenly or comes in episodes (a flush, a
/// stall of the sender) that the run's one histogram cannot tell apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    slots: Vec<Slot>,
}

impl Timeline {
    /// Counts a sample of `us` sent at `sent_us` on the run clock.
    pub fn record(&mut self, sent_us: u64, us: u64) {
        let i = usize::try_from(sent_us / TIMELINE_SLOT_US)
            .unwrap_or(usize::MAX)
            .min(TIMELINE_SLOTS_MAX - 1);
        self.grow_to(i);
        let slot = &mut self.slots[i];
        slot.count += 1;
        slot.slow += u64::from(us > SLOW_US);
        slot.max_us = slot.max_us.max(us);
    }

    fn grow_to(&mut self, i: usize) {
        debug_assert!(i < TIMELINE_SLOTS_MAX, "timeline slot out of bounds");
        while self.slots.len() <= i {
            let t_ms = self.slots.len() as u64 * TIMELINE_SLOT_US / 1000;
            self.slots.push(Slot {
                t_ms,
                ..Slot::default()
            });
        }
    }

    /// Adds `o` into `self`, slot by slot.
    pub fn merge(&mut self, o: &Timeline) {
        if let Some(last) = o.slots.len().checked_sub(1) {
            self.grow_to(last);
        }
        for (a, b) in self.slots.iter_mut().zip(&o.slots) {
            a.count += b.count;
            a.slow += b.slow;
            a.max_us = a.max_us.max(b.max_us);
        }
    }

    /// The slots that hold samples, in time order.
    pub fn slots(&self) -> Vec<Slot> {
        self.slots.iter().filter(|s| s.count > 0).cloned().collect()
    }
}

/// Everything one executor counted.
#[derive(Debug, Clone)]
pub struct ExecStats {
    /// connect + handshake + auth, per connection.
    pub connect_us: Histogram<u64>,
    /// send → send_ack.
    pub ack_us: Histogram<u64>,
    /// send → msg on the receiver (send time from the body).
    pub deliver_us: Histogram<u64>,
    /// `ack_us` over the run.
    pub ack_timeline: Timeline,
    /// `deliver_us` over the run.
    pub deliver_timeline: Timeline,
    /// HTTP request → response (`http` scenario).
    pub http_us: Histogram<u64>,
    /// Connections authenticated.
    pub authed: u64,
    /// Connections that failed before `auth_ok`, by reason.
    pub connect_failures: BTreeMap<String, u64>,
    /// Connections that ended early (after `auth_ok`), by reason.
    pub drops: BTreeMap<String, u64>,
    /// Close codes the server sent, by code.
    pub server_closes: BTreeMap<String, u64>,
    /// `send` frames (or HTTP sends) written.
    pub sent: u64,
    /// `send_ack`s (or HTTP 200s).
    pub acked: u64,
    /// `send_err` codes (or HTTP statuses), by code.
    pub send_errors: BTreeMap<String, u64>,
    /// `error` frames, by code.
    pub error_frames: BTreeMap<String, u64>,
    /// Tracked messages delivered (first copies).
    pub delivered: u64,
    /// Entries pushed again.
    pub dups: u64,
    /// Entries pushed out of seq order, or a sender's messages out of order.
    pub order_violations: u64,
    /// `notice` frames (large groups).
    pub notices: u64,
    /// `msg` frames not from this run.
    pub foreign: u64,
    /// Server frames that did not decode.
    pub decode_errors: u64,
    /// `ack` frames sent.
    pub acks_sent: u64,
    /// Largest lag of a fixed-rate sender behind its schedule, µs.
    pub send_lag_us_max: u64,
}

impl Default for ExecStats {
    fn default() -> Self {
        ExecStats {
            connect_us: new_histogram(),
            ack_us: new_histogram(),
            deliver_us: new_histogram(),
            ack_timeline: Timeline::default(),
            deliver_timeline: Timeline::default(),
            http_us: new_histogram(),
            authed: 0,
            connect_failures: BTreeMap::new(),
            drops: BTreeMap::new(),
            server_closes: BTreeMap::new(),
            sent: 0,
            acked: 0,
            send_errors: BTreeMap::new(),
            error_frames: BTreeMap::new(),
            delivered: 0,
            dups: 0,
            order_violations: 0,
            notices: 0,
            foreign: 0,
            decode_errors: 0,
            acks_sent: 0,
            send_lag_us_max: 0,
        }
    }
}

/// Adds one to `map[key]`.
pub fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    if let Some(v) = map.get_mut(key) {
        *v += 1;
    } else {
        map.insert(key.to_owned(), 1);
    }
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

impl ExecStats {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &ExecStats) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.connect_us.add(&o.connect_us);
        let _ = self.ack_us.add(&o.ack_us);
        let _ = self.deliver_us.add(&o.deliver_us);
        let _ = self.http_us.add(&o.http_us);
        self.ack_timeline.merge(&o.ack_timeline);
        self.deliver_timeline.merge(&o.deliver_timeline);
        self.authed += o.authed;
        merge_map(&mut self.connect_failures, &o.connect_failures);
        merge_map(&mut self.drops, &o.drops);
        merge_map(&mut self.server_closes, &o.server_closes);
        self.sent += o.sent;
        self.acked += o.acked;
        merge_map(&mut self.send_errors, &o.send_errors);
        merge_map(&mut self.error_frames, &o.error_frames);
        self.delivered += o.delivered;
        self.dups += o.dups;
        self.order_violations += o.order_violations;
        self.notices += o.notices;
        self.foreign += o.foreign;
        self.decode_errors += o.decode_errors;
        self.acks_sent += o.acks_sent;
        self.send_lag_us_max = self.send_lag_us_max.max(o.send_lag_us_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_up() {
        let mut a = ExecStats::default();
        let mut b = ExecStats::default();
        record(&mut a.ack_us, 100);
        record(&mut b.ack_us, 300);
        record(&mut b.ack_us, 0);
        bump(&mut a.send_errors, "rate_limited");
        bump(&mut b.send_errors, "rate_limited");
        b.sent = 3;
        b.send_lag_us_max = 9;
        a.merge(&b);
        assert_eq!(a.ack_us.len(), 3);
        assert_eq!(a.send_errors["rate_limited"], 2);
        assert_eq!((a.sent, a.send_lag_us_max), (3, 9));
        let s = LatencySummary::of(&a.ack_us);
        assert_eq!(s.count, 3);
        assert!(s.max >= 300 && s.p50 >= 99 && s.p50 <= 101, "{s:?}");
        assert_eq!(LatencySummary::of(&new_histogram()).count, 0);
    }

    #[test]
    fn a_timeline_counts_each_sample_in_the_slot_of_its_send() {
        let mut a = Timeline::default();
        a.record(10, 500);
        a.record(TIMELINE_SLOT_US - 1, SLOW_US + 1);
        a.record(3 * TIMELINE_SLOT_US, 7);
        let mut b = Timeline::default();
        b.record(TIMELINE_SLOT_US / 2, 40_000);
        b.record(u64::MAX, 1); // beyond an hour: the last slot
        a.merge(&b);
        let slots = a.slots();
        assert_eq!(slots.len(), 3, "{slots:?}");
        assert_eq!(
            slots[0],
            Slot {
                t_ms: 0,
                count: 3,
                slow: 2,
                max_us: 40_000
            }
        );
        assert_eq!(
            (slots[1].t_ms, slots[1].count, slots[1].max_us),
            (750, 1, 7)
        );
        let last = TIMELINE_SLOTS_MAX as u64 - 1;
        assert_eq!(slots[2].t_ms, last * TIMELINE_SLOT_US / 1000);
        assert_eq!(slots[2].count, 1);
    }
}
