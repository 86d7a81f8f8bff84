//! One authenticated WebSocket connection, owned by its home shard.
//!
//! Memory per idle connection is this struct plus the ids (no task, no
//! monoio stream: readiness comes from the shard's poller), no read buffer
//! (`partial` is empty with no capacity unless a frame arrived in pieces), an
//! empty outbound queue and an empty unacked list.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tern_proto::{DeviceId, Subprotocol, UserId};

use super::activity::GroupActivity;
use crate::mesh::Tracked;
use crate::ws::codec::Assembler;

/// What a connection keeps between reads while a message arrives in pieces.
pub struct Rx {
    /// Bytes of an incomplete frame.
    pub partial: Vec<u8>,
    /// A fragmented message in progress.
    pub asm: Assembler,
}

impl Rx {
    pub fn new(frame_bytes_max: usize) -> Rx {
        Rx {
            partial: Vec::new(),
            asm: Assembler::new(frame_bytes_max),
        }
    }

    /// Boxed to keep while something is in progress; nothing otherwise.
    pub fn stash(self) -> Option<Box<Rx>> {
        if self.partial.is_empty() && !self.asm.in_progress() {
            None
        } else {
            Some(Box::new(self))
        }
    }
}

/// A pushed timeline entry not yet covered by an `ack`.
pub struct Unacked {
    /// The entry, shared with every other connection it was pushed to.
    pub entry: Arc<Tracked>,
    pub sent_ms: u64,
    /// Pushes after the first.
    pub tries: u8,
}

/// Close state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Open,
    /// Our close frame is queued; after it leaves we shut down writes and
    /// wait (bounded) for the client's close.
    CloseSent,
}

pub struct Conn {
    pub gen: u32,
    /// The socket; closed when the `Conn` drops (after the poller let go).
    pub sock: OwnedFd,
    pub user: UserId,
    pub device: DeviceId,
    pub sp: Subprotocol,
    /// Connected since (ms), for presence.
    pub since_ms: u64,
    /// Send rate limit: tokens left and when they were last refilled.
    pub send_tokens: u32,
    pub send_refill_ms: u64,
    /// Budgets of `typing` and of the frames that cost storage.
    pub budgets: super::budget::Budgets,
    /// Large groups, for `notice` decisions (bounded).
    pub groups: GroupActivity,
    /// Read state between reads, only while a frame or a fragmented message
    /// is arriving in pieces (an idle connection holds no read memory).
    pub rx: Option<Box<Rx>>,
    /// Complete WebSocket frames waiting for the socket; `out_head_off` bytes
    /// of the first one already left.
    pub outq: VecDeque<Arc<[u8]>>,
    pub out_head_off: usize,
    pub out_bytes: usize,
    /// In the shard's dirty list (has output to flush).
    pub dirty: bool,
    /// A task waits for writability; don't write until it fires.
    pub write_waiting: bool,
    pub unacked: VecDeque<Unacked>,
    pub ack_timer_armed: bool,
    pub last_rx_ms: u64,
    /// A WebSocket ping went out since the last received byte.
    pub pinged: bool,
    pub closing: Closing,
    /// Counted in the connection limits until this `Conn` drops.
    pub _permit: crate::conn_limit::ConnPermit,
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Note activity of this device in a group conversation.
    pub fn touch_group(&mut self, conv: &str, now: u64) {
        self.groups.touch(conv, now);
    }

    /// Queue a complete frame for the socket, unless the connection is
    /// closing. `Some(newly_dirty)` when queued: true if the connection was
    /// not yet waiting for a flush.
    pub fn queue(&mut self, bytes: Arc<[u8]>) -> Option<bool> {
        if self.closing != Closing::Open {
            return None;
        }
        self.out_bytes += bytes.len();
        self.outq.push_back(bytes);
        Some(!std::mem::replace(&mut self.dirty, true))
    }

    /// Take one send token (refilled at `rate_per_s` up to `burst`).
    pub fn take_send_token(&mut self, now: u64, rate_per_s: u32, burst: u32) -> bool {
        let elapsed = now.saturating_sub(self.send_refill_ms);
        let add = (elapsed * rate_per_s as u64 / 1000) as u32;
        if add > 0 {
            self.send_tokens = self.send_tokens.saturating_add(add).min(burst);
            self.send_refill_ms = now;
        }
        if self.send_tokens == 0 {
            return false;
        }
        self.send_tokens -= 1;
        true
    }

    /// Free the capacity of empty queues. Not on every drain: a busy
    /// connection would reallocate on each loop pass.
    pub fn release_idle_capacity(&mut self) {
        if self.outq.is_empty() {
            self.outq = VecDeque::new();
        }
        if self.unacked.is_empty() {
            self.unacked = VecDeque::new();
        }
    }

    /// Remove every unacked entry of `conv` with seq <= `seq` (cumulative ack).
    pub fn ack(&mut self, conv: &str, seq: u64) {
        self.unacked
            .retain(|u| !(u.entry.seq <= seq && &*u.entry.conv == conv));
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection budget (DESIGN.md): this struct is most of what an
    /// idle connection costs, so growing it must be a decision.
    #[test]
    fn conn_stays_within_its_memory_budget() {
        assert!(
            std::mem::size_of::<super::Conn>() <= 224,
            "Conn is {} bytes",
            std::mem::size_of::<super::Conn>()
        );
        assert!(std::mem::size_of::<crate::ws::codec::Assembler>() <= 48);
    }
}
