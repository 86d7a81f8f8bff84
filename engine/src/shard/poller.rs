//! Readiness of every connection of a shard from one epoll set.
//!
//! Why not a task per connection: a monoio task plus its `TcpStream` and its
//! pending io_uring poll cost ~600 bytes per idle connection, more than the
//! rest of the connection together (docs/BENCHMARKS.md, idle). Here an idle
//! connection costs one kernel epoll entry and no user-space memory beyond
//! its `Conn`. The shard waits for the epoll fd itself with ONE io_uring poll
//! (monoio sees it as a pollable fd), then collects up to
//! [`EVENTS_PER_POLL`] ready connections with `epoll_wait(0)`: one wakeup
//! serves a whole batch of sockets, in one loop pass.
//!
//! Level-triggered: a connection that still has bytes after its bounded
//! reads is reported again on the next poll, so fairness needs no ready list.
//! Write interest (`EPOLLOUT`) is only registered while a socket's send
//! buffer is full.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Ready connections taken per `epoll_wait`.
pub const EVENTS_PER_POLL: usize = 256;

/// Identifies a connection in the epoll set: its slot and generation, so a
/// stale event for a reused slot is recognised and ignored.
pub fn key(slot: u32, gen: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(gen)
}

/// (slot, gen) of a [`key`].
pub fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

const READ_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const WRITE_INTEREST: u32 = READ_INTEREST | libc::EPOLLOUT as u32;

/// One ready connection.
#[derive(Clone, Copy)]
pub struct Ready {
    pub slot: u32,
    pub gen: u32,
    /// Bytes (or end of stream, or an error) to read.
    pub readable: bool,
    /// Room in the send buffer again.
    pub writable: bool,
}

/// A shard's epoll set.
pub struct Poller {
    epfd: RawFd,
    /// The epoll fd as monoio sees it: waiting for it is one io_uring
    /// `PollAdd` (or one registration with the epoll fallback driver). Owns
    /// the fd: dropping it closes the set.
    waiter: monoio::net::UnixStream,
    events: std::cell::RefCell<Vec<libc::epoll_event>>,
}

impl Poller {
    /// A new, empty set. Must run inside the shard's monoio runtime.
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall; the result is checked.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epfd is a fresh fd owned by nobody else. monoio only polls
        // it for readability; it never reads or writes it as a socket.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(epfd) };
        let waiter = monoio::net::UnixStream::from_std(std)?;
        debug_assert_eq!(waiter.as_raw_fd(), epfd);
        let zero = libc::epoll_event { events: 0, u64: 0 };
        Ok(Poller {
            epfd,
            waiter,
            events: std::cell::RefCell::new(vec![zero; EVENTS_PER_POLL]),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: key };
        // SAFETY: ev lives for the call; fds are checked by the kernel.
        if unsafe { libc::epoll_ctl(self.epfd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watch `fd` for reads.
    pub fn add(&self, fd: RawFd, key: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, READ_INTEREST, key)
    }

    /// Also watch for writability (`on`), or stop (`!on`).
    pub fn want_write(&self, fd: RawFd, key: u64, on: bool) -> io::Result<()> {
        let interest = if on { WRITE_INTEREST } else { READ_INTEREST };
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, key)
    }

    /// Stop watching `fd`. Needed before closing it: the set holds the open
    /// file, not the fd number, and a dup of the socket may still be open.
    pub fn remove(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Wait until some watched fd is ready.
    pub async fn wait(&self) -> io::Result<()> {
        self.waiter.readable(false).await
    }

    /// The ready connections, without blocking, into `out` (cleared first).
    /// Returns whether the batch was full (more may be ready).
    pub fn poll(&self, out: &mut Vec<Ready>) -> io::Result<bool> {
        out.clear();
        let mut events = self.events.borrow_mut();
        // SAFETY: `events` holds EVENTS_PER_POLL initialised entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd,
                events.as_mut_ptr(),
                EVENTS_PER_POLL as libc::c_int,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        debug_assert!(n <= EVENTS_PER_POLL);
        const READ_MASK: u32 =
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        for ev in &events[..n] {
            let (slot, gen) = unkey(ev.u64);
            let bits = ev.events;
            out.push(Ready {
                slot,
                gen,
                readable: bits & READ_MASK != 0,
                writable: bits & (libc::EPOLLOUT as u32) != 0,
            });
        }
        Ok(n == EVENTS_PER_POLL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for (s, g) in [(0, 0), (1, 2), (u32::MAX, u32::MAX), (7, u32::MAX)] {
            assert_eq!(unkey(key(s, g)), (s, g));
        }
    }
}
