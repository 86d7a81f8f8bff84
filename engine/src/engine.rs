//! Starting and stopping the engine: storage recovery, the mesh, the storage
//! writer, reader threads, the listeners and the shard threads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use hashbrown::HashMap;
use tern_storage::{CommitSink, Storage, StorageError};

use crate::config::EngineConfig;
use crate::handle::EngineHandle;
use crate::limits::{LISTEN_BACKLOG, READER_THREADS};
use crate::mesh::{owner_shard, Mesh, ShardMsg};
use crate::owner::Owner;
use crate::readers::ReaderPool;
use crate::shared::{Shared, Stats, NO_REPLY};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a shard thread: {0}")]
    Thread(std::io::Error),
    #[error("{var}={value:?}: expected \"auto\" or \"epoll\"")]
    IoDriver { var: &'static str, value: String },
}

/// The exit code of a server whose storage failed in a way only a restart
/// recovers from (`EX_IOERR` of sysexits.h): see [`CommitSink::unrecoverable`].
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Storage completions go back to the owner shard that asked.
struct MeshSink {
    mesh: Arc<Mesh>,
}

impl CommitSink for MeshSink {
    fn committed(&self, reply_to: u32, results: Vec<(u64, Result<(), StorageError>)>) {
        if reply_to == NO_REPLY {
            for (_, r) in results {
                if let Err(e) = r {
                    tracing::warn!("background write failed: {e}");
                }
            }
            return;
        }
        if !self
            .mesh
            .send_from_outside(reply_to as usize, ShardMsg::Committed(results))
        {
            tracing::error!(
                shard = reply_to,
                "commit results could not reach their shard"
            );
        }
    }

    /// Ends the process at once, answering none of the batch's requests: a
    /// client that sees its connection drop resends with the same cmid, and
    /// the restarted server either has the message (replayed from the WAL:
    /// the resend is answered with its seq) or stores it then. `_exit`, not
    /// `exit`: no destructor runs against a database in an unknown state,
    /// and no shutdown path answers anything.
    fn unrecoverable(&self, error: &StorageError) -> ! {
        eprintln!(
            "tern: storage failed and only a restart recovers: {error}; \
             exiting with code {EXIT_STORAGE_FAILED} (nothing acknowledged is lost: \
             the restart recovers from the write-ahead log)"
        );
        // SAFETY: _exit(2) takes no pointers and never returns.
        unsafe { libc::_exit(EXIT_STORAGE_FAILED) }
    }
}

/// A running engine.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    ws_addr: SocketAddr,
    driver: &'static str,
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

impl Engine {
    /// Recover state from `storage`, bind the WebSocket listeners and start
    /// the shards. Returns once every listener is bound.
    pub fn start(cfg: EngineConfig, storage: Storage) -> Result<Engine, StartError> {
        // Decided once for every shard and for the startup log line.
        let try_uring = crate::shard::IoDriver::from_env()? == crate::shard::IoDriver::Auto
            && monoio::utils::detect_uring();
        let n = cfg.shards.max(1);
        let mut owners: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for (conv, max) in storage.conv_heads()? {
            owners[owner_shard(&conv, n)].push((conv, max));
        }
        let revoked: HashMap<_, _> = storage.revoked_users()?.into_iter().collect();
        // One listener per shard on the same port (SO_REUSEPORT); with port 0
        // the first one picks the port and the others follow it.
        let mut listeners = Vec::with_capacity(n);
        let mut addr = cfg.ws_addr;
        for _ in 0..n {
            let l = bind_reuseport(addr).map_err(|source| StartError::Listen { addr, source })?;
            addr = l
                .local_addr()
                .map_err(|source| StartError::Listen { addr, source })?;
            listeners.push(l);
        }
        let (mesh, inboxes) = Mesh::new(n);
        let writer = storage.start_writer(Arc::new(MeshSink { mesh: mesh.clone() }));
        let readers = ReaderPool::start(READER_THREADS);
        let stats = Stats::new(n);
        let pin = cfg.pin_cores;
        let conn_limit = crate::conn_limit::ConnLimiter::new(
            cfg.max_conns,
            cfg.max_conns_per_ip,
            cfg.per_ip_exempt,
        );
        let shared = Arc::new(Shared {
            cfg,
            mesh,
            storage,
            writer,
            readers,
            revoked: RwLock::new(revoked),
            stats,
            conn_limit,
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(n);
        for (idx, ((inbox, listener), heads)) in
            inboxes.into_iter().zip(listeners).zip(owners).enumerate()
        {
            let shared = shared.clone();
            let core = if pin && !cores.is_empty() {
                Some(cores[idx % cores.len()])
            } else {
                None
            };
            let t = std::thread::Builder::new()
                .name(format!("tern-shard-{idx}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    crate::shard::run(idx, shared, inbox, listener, Owner::new(heads), try_uring);
                })
                .map_err(StartError::Thread)?;
            threads.push(t);
        }
        let driver = if try_uring { "io_uring" } else { "epoll" };
        Ok(Engine {
            shared,
            threads,
            ws_addr: addr,
            driver,
        })
    }

    /// The door for other threads.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            inner: Arc::new(crate::handle_impl::Inner {
                shared: self.shared.clone(),
            }),
        }
    }

    /// The bound WebSocket address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// `io_uring`, or `epoll` where io_uring is refused.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Number of shards.
    pub fn n_shards(&self) -> usize {
        self.threads.len()
    }

    /// Open connections, summed over shards.
    pub fn connections(&self) -> i64 {
        self.shared
            .stats
            .connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Graceful stop (PROTOCOL.md): stop accepting, finish in-flight writes,
    /// close connections with 1001, stop the writer after it drained.
    pub fn shutdown(self) {
        for i in 0..self.threads.len() {
            self.shared.mesh.send_from_outside(i, ShardMsg::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.writer.shutdown();
    }
}
