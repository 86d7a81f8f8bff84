//! Tern's optional TLS termination, in-process, with rustls (ring provider).
//!
//! The engine's shards do raw fd I/O on plain TCP sockets and hand fds
//! between shards after auth, and kernel TLS is not something we can rely
//! on; so TLS is terminated *in front of* the engine instead of inside it:
//!
//! ```text
//!  wss client ──TLS──▶ WsRelay (tokio, "tern-tls" threads) ──TCP loopback──▶ engine ws listener
//! https client ──TLS──▶ TlsListener inside the HTTP gateway's axum serve loop
//! ```
//!
//! # Layout
//! - `pem.rs`: [`server_config`]: certificate chain + private key PEM files
//!   → a rustls `ServerConfig`, with an error that names the file and what
//!   is wrong with it.
//! - `listener.rs`: [`TlsListener`]: a TCP listener whose accepted
//!   connections come out TLS-handshaken; bounded concurrent handshakes
//!   (each with a timeout) and bounded live connections. Implements
//!   [`axum::serve::Listener`] so the gateway serves its router over it.
//! - `relay.rs`: [`WsRelay`]: a [`TlsListener`] on its own small runtime whose
//!   connections are piped, byte for byte, to the engine's plain WebSocket
//!   listener over loopback.
//!
//! # Architecture invariants
//! - The engine never sees TLS: a relayed connection is an ordinary
//!   loopback TCP connection to it, so every WebSocket rule (handshake,
//!   frame limits, close codes, heartbeats) is the engine's, unchanged.
//! - Every buffer, queue and wait here has a bound: relay buffers per
//!   direction, live connections, concurrent handshakes, handshake time,
//!   linger after one side closed.

mod listener;
mod pem;
mod relay;

pub use listener::{bind_tcp, Admit, TlsConn, TlsListener};
pub use pem::{server_config, Alpn};
pub use relay::{loopback_if_unspecified, WsRelay};
/// The rustls version the configs are built with, for callers that name
/// its types.
pub use rustls;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default bound on live TLS connections per listener. A relayed
/// connection costs roughly 2 × [`relay::RELAY_BUF_BYTES`] of copy buffers
/// plus rustls' record buffers (~40 KiB together); 10,000 of them stay well
/// under 1 GiB. Operators raise it with `[tls] connections_max`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// Upper bound for `connections_max`, so a typo cannot ask for unbounded
/// memory; above this, terminate TLS at a load balancer (docs/DEPLOY.md).
pub const CONNECTIONS_MAX_LIMIT: usize = 1_000_000;

/// Why TLS could not be set up.
#[derive(thiserror::Error, Debug)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        /// "certificate" or "private key".
        what: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could be read but holds nothing usable.
    #[error("bad TLS {what} file {path}: {why}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What is wrong with its content.
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate {cert} and key {key} cannot be used together: {source}")]
    Config {
        /// Certificate path.
        cert: PathBuf,
        /// Key path.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The listen address is taken, not local, or not permitted.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The relay's runtime or thread could not be started.
    #[error("cannot start the TLS relay: {0}")]
    Runtime(#[source] std::io::Error),
}
