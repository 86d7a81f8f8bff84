//! A small pool of threads for blocking storage reads (`sync`, `convs`,
//! history, users), so shards never wait on RocksDB for them.

use crossbeam_channel::{Sender, TrySendError};

use crate::limits::READ_JOBS_MAX;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub(crate) struct ReaderPool {
    tx: Sender<Job>,
}

impl ReaderPool {
    /// Start `n` reader threads. They end when the pool is dropped.
    pub fn start(n: usize) -> ReaderPool {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(READ_JOBS_MAX);
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tern-reader-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start reader thread: {e}");
            }
        }
        ReaderPool { tx }
    }

    /// Queue a job; false when the queue is full (the caller answers
    /// `unavailable`).
    pub fn spawn(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
