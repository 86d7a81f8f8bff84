//! Non-blocking socket calls on a raw fd, used after monoio reports
//! readiness. Reading this way needs no per-connection buffer while idle: the
//! bytes land in the shard's scratch buffer (DESIGN.md, per-connection memory).
//! `MSG_DONTWAIT` makes each call non-blocking without changing the fd's
//! flags, so monoio's own operations on the fd are unaffected.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

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
        match sendv_nb(fd, &[IoSlice::new(bytes)]) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if would_block(&e) => stream.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
