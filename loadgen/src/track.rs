//! What a receiving connection checks: the marker loadgen puts in every
//! body it sends (run, sender, counter, send time), per-conversation seq
//! order and duplicates, per-sender order, and when to `ack`.

/// Entries after which a receiver acks (PROTOCOL promise 4: "at least every
/// 64 entries or every second").
pub const ACK_EVERY_ENTRIES: u32 = 64;
/// Longest an entry stays unacknowledged, in µs (same promise).
pub const ACK_EVERY_US: u64 = 1_000_000;
/// Seqs remembered per conversation to tell a duplicate from a reordering.
/// Redeliveries come at most an ack window behind, far less than this.
const SEQ_WINDOW: u64 = 1024;
const SEQ_WORDS: usize = (SEQ_WINDOW / 64) as usize;

/// Encoded size of every body loadgen sends, bytes: the benchmark targets
/// are stated for 100-byte bodies.
pub const BODY_BYTES: usize = 100;

/// The body text loadgen sends: a JSON string
/// `"lg <run:08x> <sender> <counter> <send_us> xxx…"`, padded with `x`s to
/// [`BODY_BYTES`] of JSON text.
pub fn marker_body(run: u32, sender: u32, counter: u64, send_us: u64) -> String {
    let mut b = format!("\"lg {run:08x} {sender} {counter} {send_us} ");
    while b.len() < BODY_BYTES - 1 {
        b.push('x');
    }
    b.push('"');
    b
}

/// The cmid of a send: unique per run, sender and counter, so a rerun is
/// never deduplicated against an earlier one.
pub fn cmid(run: u32, sender: u32, counter: u64) -> String {
    format!("{run:08x}.{sender}.{counter}")
}

/// The counter inside a cmid made by [`cmid`].
pub fn cmid_counter(cmid: &str) -> Option<u64> {
    cmid.rsplit('.').next()?.parse().ok()
}

/// A parsed marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Who sent it (connection index for WebSocket senders, HTTP task
    /// index for the `http` scenario).
    pub sender: u32,
    /// The sender's counter.
    pub counter: u64,
    /// Send time, µs on the run's clock.
    pub send_us: u64,
}

/// The marker of `body` (its JSON text) if it belongs to run `run`.
pub fn parse_marker(body: &str, run: u32) -> Option<Marker> {
    let inner = body.strip_prefix('"')?.strip_suffix('"')?;
    let mut it = inner.split(' ');
    if it.next()? != "lg" {
        return None;
    }
    let r = u32::from_str_radix(it.next()?, 16).ok()?;
    if r != run {
        return None;
    }
    let m = Marker {
        sender: it.next()?.parse().ok()?,
        counter: it.next()?.parse().ok()?,
        send_us: it.next()?.parse().ok()?,
    };
    // Then the padding, if any, and nothing else.
    match it.next() {
        None => Some(m),
        Some(pad) if pad.bytes().all(|c| c == b'x') && it.next().is_none() => Some(m),
        Some(_) => None,
    }
}

/// What one pushed entry was, as far as order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// A new entry, in order.
    New,
    /// An entry seen before (a redelivery).
    Dup,
    /// An entry older than the newest one, never seen: out of order.
    OutOfOrder,
}

/// One conversation as one connection sees it.
#[derive(Debug, Clone)]
pub struct ConvTrack {
    /// The conversation id.
    pub conv: Box<str>,
    /// Highest seq pushed.
    pub last_seq: u64,
    /// Seqs in `(last_seq - SEQ_WINDOW, last_seq]` that were pushed.
    seen: [u64; SEQ_WORDS],
    /// Entries pushed since the last ack.
    pub unacked: u32,
    /// When the oldest unacked entry arrived (µs), if any.
    pub unacked_since_us: Option<u64>,
}

impl ConvTrack {
    /// A conversation nothing was pushed for yet.
    pub fn new(conv: &str) -> ConvTrack {
        ConvTrack {
            conv: conv.into(),
            last_seq: 0,
            seen: [0; SEQ_WORDS],
            unacked: 0,
            unacked_since_us: None,
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Records a pushed entry with `seq` at time `now_us`.
    pub fn push(&mut self, seq: u64, now_us: u64) -> SeqVerdict {
        if seq <= self.last_seq {
            if self.last_seq - seq >= SEQ_WINDOW {
                // Too old to tell; a redelivery is what the protocol allows.
                return SeqVerdict::Dup;
            }
            let (w, b) = Self::bit(seq);
            return if self.seen[w] & b != 0 {
                SeqVerdict::Dup
            } else {
                self.seen[w] |= b;
                SeqVerdict::OutOfOrder
            };
        }
        if seq - self.last_seq >= SEQ_WINDOW {
            self.seen = [0; SEQ_WORDS];
        } else {
            for s in self.last_seq + 1..seq {
                let (w, b) = Self::bit(s);
                self.seen[w] &= !b;
            }
        }
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
        self.last_seq = seq;
        self.unacked += 1;
        self.unacked_since_us.get_or_insert(now_us);
        SeqVerdict::New
    }

    /// Whether an ack is due at `now_us`.
    pub fn ack_due(&self, now_us: u64) -> bool {
        self.unacked >= ACK_EVERY_ENTRIES
            || self
                .unacked_since_us
                .is_some_and(|t| now_us.saturating_sub(t) >= ACK_EVERY_US)
    }

    /// When the next ack falls due by time, if anything is unacked.
    pub fn ack_deadline_us(&self) -> Option<u64> {
        self.unacked_since_us.map(|t| t + ACK_EVERY_US)
    }

    /// Marks everything up to `last_seq` acked; returns the seq to ack.
    pub fn take_ack(&mut self) -> Option<u64> {
        if self.unacked == 0 {
            return None;
        }
        self.unacked = 0;
        self.unacked_since_us = None;
        Some(self.last_seq)
    }
}

/// Per-sender order: the last counter seen from each sender.
#[derive(Debug, Clone, Default)]
pub struct SenderOrder {
    last: Vec<u64>,
}

impl SenderOrder {
    /// Records `counter` from `sender`; false if it is not above the last
    /// one (counters start at 1).
    pub fn push(&mut self, sender: u32, counter: u64) -> bool {
        let i = sender as usize;
        if self.last.len() <= i {
            self.last.resize(i + 1, 0);
        }
        let ok = counter > self.last[i];
        if ok {
            self.last[i] = counter;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marker_roundtrip_and_foreign() {
        let b = marker_body(0xab, 3, 17, 123_456);
        assert_eq!(b.len(), BODY_BYTES);
        assert_eq!(
            parse_marker(&b, 0xab),
            Some(Marker {
                sender: 3,
                counter: 17,
                send_us: 123_456
            })
        );
        assert_eq!(parse_marker(&b, 0xac), None, "another run");
        assert_eq!(parse_marker("\"hello\"", 0xab), None);
        assert_eq!(parse_marker("{}", 0xab), None);
        assert_eq!(parse_marker("\"lg 000000ab 3 17 1 extra\"", 0xab), None);
        assert!(serde_json::from_str::<String>(&b).is_ok(), "valid JSON");
        assert_eq!(cmid_counter(&cmid(7, 2, 99)), Some(99));
    }

    #[test]
    fn seq_dups_and_reorder() {
        let mut t = ConvTrack::new("dm:a:b");
        assert_eq!(t.push(5, 0), SeqVerdict::New);
        assert_eq!(t.push(7, 0), SeqVerdict::New);
        assert_eq!(t.push(7, 0), SeqVerdict::Dup);
        assert_eq!(t.push(5, 0), SeqVerdict::Dup);
        assert_eq!(t.push(6, 0), SeqVerdict::OutOfOrder);
        assert_eq!(t.push(6, 0), SeqVerdict::Dup);
        assert_eq!(t.push(7 + 5000, 0), SeqVerdict::New);
        assert_eq!(t.push(7 + 4999, 0), SeqVerdict::OutOfOrder);
        assert_eq!(t.push(1, 0), SeqVerdict::Dup);
    }

    #[test]
    fn acks_every_64_or_second() {
        let mut t = ConvTrack::new("c");
        assert_eq!(t.take_ack(), None);
        for s in 1..64 {
            t.push(s, 10);
            assert!(!t.ack_due(10));
        }
        t.push(64, 10);
        assert!(t.ack_due(10));
        assert_eq!(t.take_ack(), Some(64));
        t.push(65, 100);
        assert!(!t.ack_due(100 + ACK_EVERY_US - 1));
        assert!(t.ack_due(100 + ACK_EVERY_US));
        assert_eq!(t.ack_deadline_us(), Some(100 + ACK_EVERY_US));
    }

    #[test]
    fn sender_order() {
        let mut o = SenderOrder::default();
        assert!(o.push(3, 1));
        assert!(o.push(3, 4));
        assert!(!o.push(3, 2));
        assert!(o.push(0, 1));
    }

    proptest! {
        #[test]
        fn in_order_stream_is_all_new(start in 1u64..1_000_000, gaps in proptest::collection::vec(1u64..3000, 1..200)) {
            let mut t = ConvTrack::new("c");
            let mut s = start;
            for g in gaps {
                prop_assert_eq!(t.push(s, 0), SeqVerdict::New);
                prop_assert_eq!(t.push(s, 0), SeqVerdict::Dup);
                s += g;
            }
        }
    }
}
