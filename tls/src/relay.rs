//! [`WsRelay`]: WSS in front of the engine's plain WebSocket listener.
//!
//! Each accepted TLS connection gets a loopback TCP connection to the engine
//! and two pipes (client → engine, engine → client), each with one fixed
//! buffer: a pipe reads only after its last bytes were written, so a slow
//! reader on either side stops the other side's reads (TCP backpressure,
//! end to end). When one side ends, the other side's writer is shut down
//! (FIN, or TLS close_notify + FIN) and the other pipe gets
//! [`CLOSE_LINGER`] to finish; then both sockets are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::listener::LiveCounter;
use crate::{TlsError, TlsListener};

/// Bytes each pipe reads at once: one full TLS record (16 KiB plaintext), so
/// a record is decrypted into and written from the buffer in one go.
pub(crate) const RELAY_BUF_BYTES: usize = 16 * 1024;

/// After one direction ended, how long the other may still run. The engine
/// sends its close frame before closing, and a client answers a close frame
/// at once; this only bounds a peer that never closes its side.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Bound for the loopback connect to the engine (it is local: anything
/// slower means the engine is stopping or overloaded).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Worker threads of the relay's runtime. The shards own the cores; TLS
/// record crypto is cheap next to the handshakes, and those are bounded.
const WORKER_THREADS: usize = 2;

/// How long [`WsRelay::shutdown`] waits for live relays to finish (the
/// engine's 1001 close frames to reach the clients) before dropping them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// How often the drain checks whether every relay has finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A running WSS relay. Dropping it stops it like [`WsRelay::shutdown`].
pub struct WsRelay {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl WsRelay {
    /// Bind `addr` (synchronously: a taken port is reported here) and relay
    /// each TLS connection to `upstream`, the engine's plain WebSocket
    /// listener. An unspecified upstream IP (0.0.0.0, ::) means loopback.
    pub fn start(
        addr: SocketAddr,
        upstream: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        connections_max: usize,
        admit: Option<crate::listener::Admit>,
    ) -> Result<WsRelay, TlsError> {
        let upstream = loopback_if_unspecified(upstream);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("tern-tls")
            .enable_io()
            .enable_time()
            .build()
            .map_err(TlsError::Runtime)?;
        let listener = {
            let _guard = rt.enter();
            TlsListener::bind(addr, config, connections_max, admit)?
        };
        let local_addr = listener.local_addr();
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("tern-tls-relay".into())
            .spawn(move || run(rt, listener, upstream, stop_rx))
            .map_err(TlsError::Runtime)?;
        tracing::info!(%local_addr, %upstream, "WSS relay listening");
        Ok(WsRelay {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let live relays finish for at most
    /// [`SHUTDOWN_DRAIN`], then close the rest and join the thread. Call it
    /// after the engine's shutdown, so its 1001 close frames are relayed.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the TLS relay thread panicked");
            }
        }
    }
}

impl Drop for WsRelay {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Where the relay connects for `upstream`: an unspecified IP (0.0.0.0, ::)
/// means loopback. Its IP is also the source address of the relay's
/// connections, as the engine sees them.
pub fn loopback_if_unspecified(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

/// Body of the relay thread.
fn run(
    rt: tokio::runtime::Runtime,
    mut listener: TlsListener,
    upstream: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let live: LiveCounter = listener.live_counter();
    rt.block_on(async move {
        loop {
            tokio::select! {
                (conn, peer) = listener.accept() => {
                    tokio::spawn(relay(conn, peer, upstream));
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Closes the listening socket; live connections keep their permits.
        drop(listener);
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while live.live() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if live.live() > 0 {
            tracing::warn!(
                live = live.live(),
                "TLS relays still open {}s after shutdown began; dropping them",
                SHUTDOWN_DRAIN.as_secs()
            );
        }
    });
    // Drops every remaining task, closing its sockets.
    rt.shutdown_background();
    tracing::info!("WSS relay stopped");
}

/// Pipe one TLS client to a fresh loopback connection to the engine.
async fn relay(client: crate::TlsConn, peer: SocketAddr, upstream: SocketAddr) {
    let engine =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, %upstream, "TLS relay cannot reach the engine: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, %upstream, "TLS relay: engine connect timed out");
                return;
            }
        };
    if let Err(e) = engine.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let (client_r, client_w) = tokio::io::split(client);
    let (engine_r, engine_w) = engine.into_split();
    let up = pipe(client_r, engine_w);
    let down = pipe(engine_r, client_w);
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut up => { let _ = tokio::time::timeout(CLOSE_LINGER, down).await; }
        () = &mut down => { let _ = tokio::time::timeout(CLOSE_LINGER, up).await; }
    }
}

/// Copy until EOF or an error, flushing after each chunk (a TLS writer
/// holds records until flushed), then shut the writer down so the far side
/// sees the close.
async fn pipe<R, W>(mut r: R, mut w: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUF_BYTES];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
