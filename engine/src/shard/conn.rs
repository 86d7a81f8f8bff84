//! One authenticated WebSocket connection, owned by its home shard.
//!
//! Memory per idle connection is this struct plus the ids: no read buffer
//! (`partial` is empty with no capacity unless a frame arrived in pieces), an
//! empty outbound queue and an empty unacked list.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;
use tern_proto::{DeviceId, Subprotocol, UserId};

use crate::ws::codec::Assembler;

/// A pushed timeline entry not yet covered by an `ack`.
pub struct Unacked {
    pub conv: Arc<str>,
    pub seq: u64,
    pub frame: Arc<[u8]>,
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
    pub stream: Rc<TcpStream>,
    pub fd: RawFd,
    pub user: UserId,
    pub device: DeviceId,
    pub sp: Subprotocol,
    /// Bytes of an incomplete frame (only while one is arriving).
    pub partial: Vec<u8>,
    pub asm: Assembler,
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
}

impl Conn {
    /// Remove every unacked entry of `conv` with seq <= `seq` (cumulative ack).
    pub fn ack(&mut self, conv: &str, seq: u64) {
        self.unacked.retain(|u| !(u.seq <= seq && &*u.conv == conv));
    }
}
