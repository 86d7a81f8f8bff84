//! Non-blocking socket calls on a raw fd, used after monoio reports
//! readiness. Reading this way needs no per-connection buffer while idle: the
//! bytes land in the shard's scratch buffer (DESIGN.md, per-connection memory).
//! `MSG_DONTWAIT` makes each call non-blocking without changing the fd's
//! flags, so monoio's own operations on the fd are unaffected.

use std::io::{self, IoSlice};
use std::os::fd::{OwnedFd, RawFd};

/// `recv` without blocking. `Ok(0)` is end of stream.
pub fn recv_nb(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the whole call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send` of one buffer without blocking and without SIGPIPE: `send(2)`
/// takes the buffer as is, where `sendmsg(2)` first copies a `msghdr` and
/// its iovec in from user memory.
pub fn send_nb(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes for the whole call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Gathered `send` without blocking and without SIGPIPE.
pub fn sendv_nb(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec; msg lives for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `shutdown(2)`; errors (e.g. already disconnected) are irrelevant here.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: plain syscall on an fd we own.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Disable Nagle: frames are already batched per loop pass.
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives for the call; errors only cost latency.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Take the socket out of monoio after the handshake, as a plain fd that the
/// home shard's poller watches. A dup is used because it is safe whatever
/// monoio still holds; it costs a second fd for a moment, so near the
/// open-files limit it can fail (EMFILE). Then the stream's own fd is taken:
/// the handshake completed every operation on it, so monoio holds no other
/// reference to it.
pub fn detach(stream: monoio::net::TcpStream) -> OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    // SAFETY: plain syscall on an fd we own.
    let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    let fd = if dup >= 0 {
        drop(stream);
        dup
    } else {
        stream.into_raw_fd()
    };
    // SAFETY: `fd` is open and owned by nobody else now.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Is this error "try again later"?
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

/// Write all of `bytes`, waiting for writability as needed (handshake phase
/// only: a few hundred bytes).
pub async fn write_all(
    stream: &monoio::net::TcpStream,
    fd: RawFd,
    mut bytes: &[u8],
) -> io::Result<()> {
    // Bounded: each pass either writes >= 1 byte or waits for writability.
    while !bytes.is_empty() {
        match send_nb(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if would_block(&e) => stream.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
