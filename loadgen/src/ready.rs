//! Read readiness of an executor's authenticated connections, from one
//! edge-triggered epoll set that the executor polls without blocking once
//! per turn of its loop.
//!
//! Why not glommio's own reads: a glommio read that returns less than a
//! full buffer arms an io_uring poll on the socket, and data arriving on it
//! adds task work to this thread with a kick (an IPI) from whichever core
//! sent the data. On loopback that core is the server's: every delivery
//! would pay for waking loadgen (measured on this VM: a loopback `send` to
//! an io_uring-polled socket costs 12.5 µs, to an epoll-polled one 6.3 µs).
//! A client on another machine, or one using epoll, costs the server
//! nothing of the kind, so loadgen must not either. An epoll set that is
//! not being waited on costs the sender only a list insert.
//!
//! Connect, handshake and `auth` still use glommio's streams; only the
//! reads after `auth_ok` come through here. Writes stay glommio's (they are
//! tried at once and rarely wait).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::exec::Local;

/// Events taken per `epoll_wait`.
const EVENTS_MAX: usize = 256;
/// How long the poller sleeps between polls once nothing arrived for the
/// busy window: idle connections then cost ~5,000 polls/s, and the first
/// read after a silence this long waits at most this much.
const IDLE_POLL: Duration = Duration::from_micros(200);
/// The busy window when `--spin-us` is not given (µs without any event
/// before the poller slows down to [`IDLE_POLL`]).
const BUSY_WINDOW_US_DEFAULT: u64 = 20_000;

/// One slot per executor task.
#[derive(Default)]
struct Slot {
    /// An edge was seen (or the socket was just registered) and not yet
    /// read to `EAGAIN` or to a short read.
    ready: bool,
    waker: Option<Waker>,
}

/// The epoll set and the per-slot state.
pub struct Readiness {
    ep: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    /// `epoll_wait`'s output and the wakers it finds, kept between polls:
    /// the poller runs every executor turn.
    events: RefCell<Vec<libc::epoll_event>>,
    woken: RefCell<Vec<Waker>>,
    /// Run-clock µs of the last poll that found an event.
    last_event_us: Cell<u64>,
}

impl Readiness {
    /// A new set with `n_slots` slots.
    pub fn new(n_slots: usize) -> io::Result<Readiness> {
        // SAFETY: plain syscall; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut slots = Vec::with_capacity(n_slots);
        slots.resize_with(n_slots, Slot::default);
        Ok(Readiness {
            // SAFETY: `ep` is a fresh fd owned by nobody else.
            ep: unsafe { OwnedFd::from_raw_fd(ep) },
            slots: RefCell::new(slots),
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX]),
            woken: RefCell::new(Vec::new()),
            last_event_us: Cell::new(0),
        })
    }

    /// Watches `fd` for slot `slot` from now on. The socket leaves the set
    /// by itself when it is closed (loadgen never duplicates its fds).
    pub fn register(&self, fd: RawFd, slot: usize) -> io::Result<()> {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot) else {
            return Err(io::Error::other("readiness slot out of range"));
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: slot as u64,
        };
        // SAFETY: both fds are open; `ev` lives for the call.
        let rc = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Bytes may have arrived before the registration: read once.
        *s = Slot {
            ready: true,
            waker: None,
        };
        Ok(())
    }

    /// Reads from `fd` (registered under `slot`) into the executor's
    /// scratch buffer, waiting for readiness as needed. `Ok(0)` is end of
    /// stream.
    pub async fn read(
        &self,
        fd: RawFd,
        slot: usize,
        scratch: &RefCell<Vec<u8>>,
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let Some(s) = slots.get_mut(slot) else {
                return Poll::Ready(Err(io::Error::other("readiness slot out of range")));
            };
            if s.ready {
                let Ok(mut buf) = scratch.try_borrow_mut() else {
                    return Poll::Ready(Err(io::Error::other("scratch buffer busy")));
                };
                // SAFETY: `buf` is valid for writes of its length for the call.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n >= 0 {
                    let n = n as usize;
                    // A short read drained the socket; a later arrival is a
                    // new edge. A full buffer may have left bytes behind.
                    s.ready = n == buf.len() && n > 0;
                    return Poll::Ready(Ok(n));
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    return Poll::Ready(Err(e));
                }
                s.ready = false;
            }
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Takes the events that are ready now, without blocking, and wakes
    /// their readers. Returns how many there were.
    fn poll_once(&self) -> usize {
        let mut evs = self.events.borrow_mut();
        // SAFETY: `evs` is valid for its length of entries.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                evs.as_mut_ptr(),
                evs.len() as libc::c_int,
                0,
            )
        };
        if n <= 0 {
            return 0;
        }
        let mut woken = self.woken.borrow_mut();
        {
            let mut slots = self.slots.borrow_mut();
            for ev in &evs[..n as usize] {
                if let Some(s) = slots.get_mut(ev.u64 as usize) {
                    s.ready = true;
                    woken.extend(s.waker.take());
                }
            }
        }
        // Woken tasks run later; the slots are no longer borrowed anyway.
        woken.drain(..).for_each(Waker::wake);
        n as usize
    }
}

/// Polls the executor's set once per turn of its loop while events keep
/// coming (a timer of 1 µs lets glommio run its reactor and every other
/// task in between), more slowly after `busy_window` without any; ends with
/// the executor.
pub async fn poller(local: Rc<Local>) {
    let busy_us = match local.plan.spin.as_micros() as u64 {
        0 => BUSY_WINDOW_US_DEFAULT,
        us => us,
    };
    let r = &local.ready;
    while !local.is_done() {
        let now = local.ctl.now_us();
        if r.poll_once() > 0 {
            r.last_event_us.set(now);
        }
        let pause = if now.saturating_sub(r.last_event_us.get()) < busy_us {
            Duration::from_micros(1)
        } else {
            IDLE_POLL
        };
        glommio::timer::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    #[test]
    fn reads_what_arrived_before_and_after_registration() {
        let r = Readiness::new(2).expect("epoll");
        let (mine, mut peer) = pair();
        peer.write_all(b"early").expect("write");
        r.register(mine.as_raw_fd(), 1).expect("register");
        let scratch = RefCell::new(vec![0u8; 64]);
        let n = block_on(r.read(mine.as_raw_fd(), 1, &scratch)).expect("read");
        assert_eq!(&scratch.borrow()[..n], b"early");
        // Drained by a short read: the next read waits for a new edge.
        let mut fut = Box::pin(r.read(mine.as_raw_fd(), 1, &scratch));
        assert!(block_on(poll_once(fut.as_mut())).is_none());
        assert_eq!(r.poll_once(), 0, "no event before bytes arrive");
        peer.write_all(b"late").expect("write");
        assert_eq!(r.poll_once(), 1);
        let n = block_on(fut).expect("read");
        assert_eq!(&scratch.borrow()[..n], b"late");
    }

    #[test]
    fn a_full_buffer_read_reads_again_without_a_new_edge() {
        let r = Readiness::new(1).expect("epoll");
        let (mine, mut peer) = pair();
        r.register(mine.as_raw_fd(), 0).expect("register");
        peer.write_all(b"0123456789").expect("write");
        let scratch = RefCell::new(vec![0u8; 4]);
        let mut got = Vec::new();
        // No poll_once in between: the edge-triggered set would not report
        // the bytes a full read left behind.
        for want in [4, 4, 2] {
            let n = block_on(r.read(mine.as_raw_fd(), 0, &scratch)).expect("read");
            assert_eq!(n, want);
            got.extend_from_slice(&scratch.borrow()[..n]);
        }
        assert_eq!(got, b"0123456789");
        let mut fut = Box::pin(r.read(mine.as_raw_fd(), 0, &scratch));
        assert!(block_on(poll_once(fut.as_mut())).is_none());
    }

    #[test]
    fn end_of_stream_and_bad_slots_are_reported() {
        let r = Readiness::new(1).expect("epoll");
        let (mine, peer) = pair();
        r.register(mine.as_raw_fd(), 0).expect("register");
        assert!(
            r.register(mine.as_raw_fd(), 5).is_err(),
            "slot out of range"
        );
        let scratch = RefCell::new(vec![0u8; 16]);
        let mut fut = Box::pin(r.read(mine.as_raw_fd(), 0, &scratch));
        assert!(block_on(poll_once(fut.as_mut())).is_none());
        drop(peer);
        assert_eq!(r.poll_once(), 1);
        assert_eq!(block_on(fut).expect("read"), 0, "end of stream");
        assert!(block_on(r.read(mine.as_raw_fd(), 9, &scratch)).is_err());
    }
}
