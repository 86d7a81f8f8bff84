//! [`TlsListener`]: TCP accept + TLS handshake, bounded, off the accept path.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::TlsError;

/// A client must finish the TLS handshake within this, or it is dropped: a
/// connection that never completes it would otherwise hold a permit forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. Each costs CPU (key exchange, signature);
/// beyond this the listener stops accepting and new connections wait in the
/// kernel backlog, so a handshake flood cannot starve established
/// connections of the relay's threads.
const HANDSHAKES_MAX: usize = 512;

/// Handshaken connections waiting for the consumer (`accept`). Small: the
/// consumer only spawns a task per connection.
const ACCEPTED_QUEUE: usize = 64;

/// Pending connections the kernel queues before `accept`; absorbs a burst of
/// clients (re)connecting at once.
const LISTEN_BACKLOG: u32 = 1024;

/// Pause after an `accept` error (EMFILE and the like) before trying again,
/// so a full fd table does not turn the loop into a busy spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Admission by source address, asked after `accept` and before the TLS
/// handshake: `None` refuses (the socket is closed at once); `Some(guard)`
/// admits, and the guard lives as long as the connection (a per-IP count
/// is given back when it drops).
pub type Admit = Arc<dyn Fn(std::net::IpAddr) -> Option<Box<dyn Send + Sync>> + Send + Sync>;

/// A TCP listener whose connections come out TLS-handshaken.
///
/// Binding starts a task (on the current tokio runtime) that accepts, takes
/// a live-connection permit and a handshake permit, and handshakes each
/// connection in its own task with [`HANDSHAKE_TIMEOUT`]; finished
/// connections queue for [`TlsListener::accept`]. Dropping the listener
/// stops the task and closes the socket; live connections are unaffected.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local_addr: SocketAddr,
    connections: Arc<Semaphore>,
    connections_max: usize,
}

impl TlsListener {
    /// Bind `addr` and start accepting. Must be called inside a tokio
    /// runtime. `connections_max` bounds live connections (at least 1).
    pub fn bind(
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        connections_max: usize,
        admit: Option<Admit>,
    ) -> Result<TlsListener, TlsError> {
        let bind_err = |source| TlsError::Bind { addr, source };
        let listener = bind_tcp(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let connections_max = connections_max.max(1);
        let connections = Arc::new(Semaphore::new(connections_max));
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            connections.clone(),
            admit,
            tx,
        ));
        Ok(TlsListener {
            rx,
            local_addr,
            connections,
            connections_max,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counts live connections (handshaking or handshaken, not yet
    /// dropped), also after the listener itself is gone.
    pub fn live_counter(&self) -> LiveCounter {
        LiveCounter {
            connections: self.connections.clone(),
            connections_max: self.connections_max,
        }
    }

    /// The next handshaken connection. Never fails: accept and handshake
    /// errors are logged and skipped. Pends forever if the accept task died.
    pub async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

/// Counts the live connections of a [`TlsListener`], also after it was dropped.
#[derive(Clone)]
pub struct LiveCounter {
    connections: Arc<Semaphore>,
    connections_max: usize,
}

impl LiveCounter {
    /// Live connections now.
    pub fn live(&self) -> usize {
        self.connections_max - self.connections.available_permits()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        TlsListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// A tokio TCP listener on `addr` with [`LISTEN_BACKLOG`] and
/// `SO_REUSEADDR`; the plain HTTP listener uses it too.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restarts must not fail on connections in TIME_WAIT. (Without
    // SO_REUSEPORT a second live listener on the port is still refused.)
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<Semaphore>,
    admit: Option<Admit>,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        // Permits first: at capacity we stop accepting and the kernel
        // backlog holds (then refuses) new connections.
        let permits = async {
            let conn = connections.clone().acquire_owned().await.ok()?;
            let hs = handshakes.clone().acquire_owned().await.ok()?;
            Some((conn, hs))
        };
        let (conn_permit, hs_permit) = tokio::select! {
            p = permits => match p { Some(p) => p, None => return },
            () = tx.closed() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("TLS listener accept: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let admission = match admit.as_ref().map(|f| f(peer.ip())) {
            Some(None) => {
                tracing::debug!(%peer, "TLS connection refused: too many from this address");
                continue; // dropping `tcp` closes it
            }
            granted => granted.flatten(),
        };
        // WebSocket frames and small JSON answers must not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(hs_permit);
            match res {
                Ok(Ok(tls)) => {
                    let conn = TlsConn {
                        inner: tls,
                        _permit: conn_permit,
                        _admission: admission,
                    };
                    // A closed receiver means the listener is gone: the
                    // connection is dropped (closed) here.
                    let _ = tx.send((conn, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A handshaken TLS connection. Holds its live-connection permit until
/// dropped.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    /// The [`Admit`] guard, if the listener has a hook.
    _admission: Option<Box<dyn Send + Sync>>,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
