//! Sockets: bound to a chosen source address before connecting, so one
//! process can open more connections to one server port than one source
//! address has ephemeral ports.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{IntoRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Starts a non-blocking TCP connect from `source` (port chosen by the
/// kernel) to `target` and returns the socket's fd, owned by the caller.
/// The connect completes (or fails) asynchronously: the first write waits
/// for it.
pub fn start_connect(source: Option<IpAddr>, target: SocketAddr) -> io::Result<RawFd> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        // Let connect() pick the port per (source, target) pair instead of
        // bind() picking one unique for the source address alone: this is
        // what lifts the ~28k ports-per-source limit to ~28k per
        // (source, target). Best effort: older kernels lack the option.
        if ip.is_ipv4() {
            let one: libc::c_int = 1;
            // SAFETY: a valid fd, a pointer to a c_int and its size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    std::ptr::addr_of!(one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into_raw_fd())
}

/// Parses `a.b.c.d-a.b.c.e` (an inclusive range in the last octet or
/// across octets) or a comma-separated list of addresses and ranges.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    /// Most source addresses: far more than ports would ever need.
    const SOURCES_MAX: u32 = 65_536;
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("bad address {a:?} in {part:?}"))?;
            let b: std::net::Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("bad address {b:?} in {part:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= SOURCES_MAX {
                return Err(format!("bad range {part:?}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part:?}"))?);
        }
    }
    if out.is_empty() {
        return Err("no source address".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        let v = parse_sources("127.0.0.1-127.0.0.3").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        let v = parse_sources("127.0.0.9, 127.0.1.255-127.0.2.0").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], "127.0.2.0".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("x").is_err());
    }

    #[test]
    fn binds_to_the_source() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        let fd = start_connect(Some("127.0.0.7".parse().unwrap()), target).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), "127.0.0.7".parse::<IpAddr>().unwrap());
        // SAFETY: the fd came from start_connect and is owned here.
        drop(unsafe { <Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
}
