//! Durable before acknowledged: a writer process is SIGKILLed mid-stream;
//! every append its sink reported committed (with `Durability::Fsync`) must
//! be there after reopening.
//!
//! The child is this test binary itself, run with `CHILD_ENV` set: the test
//! `crash_child` then appends forever and prints `ACK <seq>` per committed
//! append; without the variable it does nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tern_storage::{CommitSink, Durability, Storage, StorageError};

/// Names the data dir of the child; its presence makes `crash_child` run.
const CHILD_ENV: &str = "TERN_STORAGE_CRASH_CHILD_DIR";
/// Acks the parent waits for before killing: enough for many batches.
const ACKS_BEFORE_KILL: u64 = 300;
/// The child stops by itself after this long, should the parent die.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// Appends the child keeps in flight at once, so batches hold several.
const CHILD_IN_FLIGHT: u64 = 16;

/// Prints each committed token on stdout, unbuffered.
struct PrintSink {
    acked: std::sync::atomic::AtomicU64,
}

impl CommitSink for PrintSink {
    fn committed(&self, _reply_to: u32, results: Vec<(u64, Result<(), StorageError>)>) {
        let mut out = std::io::stdout().lock();
        for (token, r) in results {
            if r.is_ok() {
                // `writeln!` on the raw handle bypasses the test harness's
                // output capture; the parent parses these lines.
                let _ = writeln!(out, "ACK {token}");
                self.acked
                    .fetch_max(token, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _ = out.flush();
    }

    fn unrecoverable(&self, error: &StorageError) -> ! {
        panic!("storage batch with an unknown outcome: {error}");
    }
}

#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let s = Storage::open(options(&PathBuf::from(dir), Durability::Fsync)).unwrap();
    let sink = Arc::new(PrintSink {
        acked: Default::default(),
    });
    let w = s.start_writer(sink.clone());
    let c = conv("group:crash");
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < CHILD_LIFETIME {
        let acked = sink.acked.load(std::sync::atomic::Ordering::SeqCst);
        if seq < acked + CHILD_IN_FLIGHT {
            seq += 1;
            w.submit(req(0, seq, append(&c, seq, FRESH_TS))).unwrap();
        } else {
            std::thread::yield_now();
        }
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: Vec<u64> = Vec::new();
    while (acked.len() as u64) < ACKS_BEFORE_KILL {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some(t) = ack_of(&line) {
            acked.push(t);
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks already in the pipe count too.
    for line in lines {
        if let Some(t) = ack_of(&line.unwrap()) {
            acked.push(t);
        }
    }
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "acked in order"
    );

    let s = Storage::open(options(dir.path(), Durability::Fsync)).unwrap();
    let c = conv("group:crash");
    let heads = s.conv_heads().unwrap();
    let head = heads.iter().find(|(k, _)| *k == c).map_or(0, |(_, h)| *h);
    let last_acked = *acked.last().unwrap();
    assert!(head >= last_acked, "head {head} < last acked {last_acked}");
    let (entries, more) = s.read_entries(&c, 0, acked.len() + 1000).unwrap();
    assert!(!more);
    let stored: Vec<u64> = entries.iter().map(|e| e.seq()).collect();
    assert_eq!(
        stored,
        (1..=head).collect::<Vec<_>>(),
        "no gap, nothing lost"
    );
}

/// The token of an `ACK <token>` line. The harness may print its own text
/// (`test crash_child ... `) in front of the first one.
fn ack_of(line: &str) -> Option<u64> {
    let (_, t) = line.rsplit_once("ACK ")?;
    Some(t.trim().parse().expect("token"))
}
