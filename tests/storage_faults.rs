//! Storage faults, through the real binary:
//! - a full disk (the data dir on a small tmpfs, filled by a filler file):
//!   senders get `send_err` `unavailable` / HTTP 503, nothing is half-stored
//!   (no seq consumed without its message), the server stays up, and it
//!   recovers by itself once space returns; a kill -9 after that loses
//!   nothing;
//! - a corrupt or missing database at start: a clear error and a non-zero
//!   exit, never a silent new database;
//! - a data dir on a read-only file system: the same, with the database
//!   untouched and whole once the file system is writable again;
//! - a failed WAL sync (an `LD_PRELOAD` shim fails `fdatasync`): the server
//!   answers nothing of that batch and exits (code 74); a restart keeps
//!   every acknowledged message, and a resend with the same cmid stores the
//!   unanswered one exactly once.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;
use traffic::{Acked, Ledger, Sender};

/// Size of the tmpfs. RocksDB resumes writes after a no-space error only
/// once the free space reaches its largest write buffer (64 MiB for `msgs`,
/// storage/src/tuning.rs), so the file system must be well above that.
const TMPFS_BYTES: u64 = 256 << 20;
/// Free space left by the filler when the server starts on the full disk:
/// enough to open the database, little enough that messages fill it fast.
const FREE_AT_START: u64 = 3 << 20;
/// Body of the messages that fill the disk (just under the 32 KiB limit).
const BIG_BODY: usize = 30_000;
/// Bound for the disk to fill up under the big messages.
const FILL_BOUND: Duration = Duration::from_secs(60);
/// Bound for writes to work again once space returns (RocksDB's space
/// manager checks every 5 s, then flushes the memtables).
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// Bound for a start on a damaged database to give up.
const FAILED_START_BOUND: Duration = Duration::from_secs(20);

/// A tmpfs mounted for the test; unmounted (lazily) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path`, or says why it cannot.
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail as u64 * st.f_frsize as u64
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Copies the directory tree `from` into `to` (which exists).
fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            std::fs::create_dir(&dst).expect("mkdir");
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Fills the file system of `path` until `leave` bytes are free.
fn fill(tmpfs: &Tmpfs, file: &Path, leave: u64) {
    let len = tmpfs.free().saturating_sub(leave);
    let f = std::fs::File::create(file).expect("filler");
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fallocate(3) on an open file we own.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    assert_eq!(rc, 0, "fallocate filler of {len} bytes");
}

fn record_http(ledger: &mut Ledger, body: &Value, ack: &Value) {
    ledger.record(Acked {
        conv: ack["conv"].as_str().expect("conv").to_string(),
        seq: ack["seq"].as_u64().expect("seq"),
        ts: ack["ts"].as_u64().expect("ts"),
        from: body["from"].as_str().expect("from").to_string(),
        device: String::new(),
        cmid: body["cmid"].as_str().expect("cmid").to_string(),
        body: body["body"].clone(),
    });
}

/// Stops `s` cleanly and moves its data dir onto a fresh tmpfs of
/// [`TMPFS_BYTES`] (same path, same contents), for a test of `what`; `None`
/// (the test is skipped) where mounting is not permitted (it is here and
/// in CI). The server is left stopped.
async fn onto_tmpfs(s: &mut Server, what: &str) -> Option<Tmpfs> {
    let status = s.sigterm(SHUTDOWN).await.expect("clean stop");
    assert!(status.success(), "{status:?}");
    let data = s.data_path();
    let orig = data.with_extension("orig");
    std::fs::rename(&data, &orig).expect("move data dir aside");
    std::fs::create_dir(&data).expect("mkdir data");
    match Tmpfs::mount(&data, TMPFS_BYTES) {
        Ok(t) => {
            copy_tree(&orig, &data);
            Some(t)
        }
        Err(why) => {
            println!("SKIPPED: {what} needs a tmpfs: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_answers_unavailable_stores_nothing_and_recovers_by_itself() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    s.put_group("full", None, &["alice", "bob"]).await;
    let mut ledger = Ledger {
        extra_convs: vec![group_conv("full")],
        ..Ledger::default()
    };
    for i in 0..5 {
        let body = json!({ "from": "bob", "to": "user:alice", "kind": "text", "body": format!("before {i}"), "cmid": format!("before-{i}") });
        let (st, v) = s.post_message(body.clone()).await;
        assert_eq!(st, 200, "{v}");
        record_http(&mut ledger, &body, &v);
    }

    // Move the data dir onto a small tmpfs, filled but for a few MiB.
    let Some(tmpfs) = onto_tmpfs(&mut s, "a full disk").await else {
        return;
    };
    let data = s.data_path();
    let filler = data.join("filler");
    fill(&tmpfs, &filler, FREE_AT_START);
    s.restart().await;

    // Big messages over WebSocket until the disk is full.
    let mut alice = Sender::new(
        &s,
        "alice",
        "phone",
        Subprotocol::Rkyv,
        vec!["user:bob".into(), group_conv("full")],
        7,
    )
    .await;
    alice.body_bytes = BIG_BODY;
    alice.window = 4;
    alice.stop_on_error = true;
    let stop = Arc::new(AtomicBool::new(false));
    let url = s.ws_url();
    let out = tokio::time::timeout(FILL_BOUND, alice.run(&url, Vec::new(), stop))
        .await
        .expect("the disk never filled up");
    assert!(!out.errors.is_empty(), "no send failed");
    for (e, _) in &out.errors {
        assert_eq!(e["code"], "unavailable", "{e}");
    }
    let n_acked_full = out.acked.len();
    for a in out.acked {
        ledger.record(a);
    }
    let failed: Vec<_> = out
        .errors
        .into_iter()
        .map(|(_, p)| p)
        .chain(out.unanswered)
        .collect();

    // While full: HTTP sends are 503 unavailable, the server stays up, reads
    // work, and nothing failed was stored (no seq consumed).
    let big = "y".repeat(BIG_BODY);
    for i in 0..3 {
        let (st, v) = s
            .post_message(json!({ "from": "bob", "to": "user:alice", "kind": "text", "body": big, "cmid": format!("full-{i}") }))
            .await;
        assert_eq!(st, 503, "{v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    // The 503 tells the caller when to try again.
    let res = reqwest::Client::new()
        .post(s.url("/v1/messages"))
        .bearer_auth(API_KEY)
        .json(&json!({ "from": "bob", "to": "user:alice", "kind": "text", "body": big, "cmid": "full-h" }))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{:?}",
        res.headers()
    );
    let mut c = s.login(Subprotocol::Json, "bob", "tablet").await;
    let e = c
        .send_msg("ws-full", "user:alice", "text", json!("x"))
        .await;
    assert_eq!(e["type"], "send_err", "{e}");
    assert_eq!(e["code"], "unavailable", "{e}");
    let (st, _) = s.request("GET", "/healthz", None).await;
    assert_eq!(st, 200);
    let stored = ledger.check_http(&s, "disk full").await;
    assert_eq!(
        stored.by_cmid.len(),
        ledger.len(),
        "a failed send was stored"
    );

    // Space returns: sends work again by themselves, at the next seq.
    std::fs::remove_file(&filler).expect("remove filler");
    let freed = Instant::now();
    let retry = json!({ "from": "bob", "to": "user:alice", "kind": "text", "body": "space is back", "cmid": "full-0" });
    let ack = loop {
        let (st, v) = s.post_message(retry.clone()).await;
        if st == 200 {
            break v;
        }
        assert_eq!(st, 503, "{v}");
        assert!(
            freed.elapsed() < RECOVERY_BOUND,
            "no recovery {RECOVERY_BOUND:?} after space returned\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let recovery = freed.elapsed();
    let dm_head = ledger
        .acked
        .get("dm:alice:bob")
        .map_or(0, |m| m.len() as u64);
    assert_eq!(ack["seq"], dm_head + 1, "seq after recovery: {ack}");
    record_http(&mut ledger, &retry, &ack);
    // The WebSocket sends that failed, retried with their cmids: all stored now.
    let stop = Arc::new(AtomicBool::new(true));
    alice.stop_on_error = false;
    let n_failed = failed.len();
    let out = alice.run(&url, failed, stop).await;
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.unanswered.is_empty());
    for a in out.acked {
        ledger.record(a);
    }
    let e = c
        .send_msg("ws-full", "user:alice", "text", json!("x"))
        .await;
    assert_eq!(e["type"], "send_ack", "{e}");
    ledger.record(Acked {
        conv: e["conv"].as_str().expect("conv").to_string(),
        seq: e["seq"].as_u64().expect("seq"),
        ts: e["ts"].as_u64().expect("ts"),
        from: "bob".into(),
        device: "tablet".into(),
        cmid: "ws-full".into(),
        body: json!("x"),
    });
    let stored = ledger.check_http(&s, "after recovery").await;
    assert_eq!(stored.by_cmid.len(), ledger.len());

    // What was written after the recovery is durable too.
    drop(c);
    s.kill9();
    s.restart().await;
    let stored = ledger.check_http(&s, "kill -9 after recovery").await;
    assert_eq!(stored.by_cmid.len(), ledger.len());
    println!(
        "STORAGE FAULT FIGURES: {n_acked_full} big messages acked before the disk was full, \
         {n_failed} WebSocket sends refused, recovery {recovery:?} after space returned, \
         {} entries checked",
        stored.n_entries
    );
    s.kill9();
    drop(tmpfs);
}

/// Runs `tern serve` on `data` until it exits (bounded); returns its exit
/// code and stderr.
fn start_fails(data: &Path, extra: &[&str]) -> (Option<i32>, String) {
    start_fails_with_env(data, extra, &[])
}

/// [`start_fails`] with these environment variables set.
fn start_fails_with_env(
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .envs(env.iter().copied())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--api-key", API_KEY, "--shards", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern serve");
    let deadline = Instant::now() + FAILED_START_BOUND;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern serve on a damaged database still running after {FAILED_START_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_corrupt_or_missing_database_is_a_clear_error_never_a_new_one() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for i in 0..20 {
        let (st, v) = s
            .post_message(json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": format!("m{i}"), "cmid": format!("c{i}") }))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    // A restart replays the WAL into an SST file; stop cleanly after it.
    s.restart().await;
    let status = s.sigterm(SHUTDOWN).await.expect("clean stop");
    assert!(status.success(), "{status:?}");
    let good = s.data_path();
    let db = |d: &Path| d.join("db");
    let files = |d: &Path, ext: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(db(d))
            .expect("db dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        v.sort();
        v
    };
    assert!(!files(&good, ".sst").is_empty(), "no SST file to damage");

    type Damage = fn(&Path);
    let cases: [(&str, Damage, &[&str]); 6] = [
        (
            "CURRENT deleted",
            |d| std::fs::remove_file(d.join("db/CURRENT")).expect("rm"),
            &["not a tern database", "CURRENT"],
        ),
        (
            "CURRENT garbled",
            |d| std::fs::write(d.join("db/CURRENT"), "garbage\n").expect("write"),
            &["corrupt"],
        ),
        (
            "MANIFEST deleted",
            |d| {
                for e in std::fs::read_dir(d.join("db")).expect("db") {
                    let p = e.expect("entry").path();
                    if p.to_string_lossy().contains("MANIFEST-") {
                        std::fs::remove_file(p).expect("rm");
                    }
                }
            },
            &["MANIFEST"],
        ),
        (
            "an SST file deleted",
            |d| {
                for e in std::fs::read_dir(d.join("db")).expect("db") {
                    let p = e.expect("entry").path();
                    if p.to_string_lossy().ends_with(".sst") {
                        std::fs::remove_file(p).expect("rm");
                        return;
                    }
                }
            },
            &[".sst"],
        ),
        (
            "SST files garbled",
            |d| {
                for e in std::fs::read_dir(d.join("db")).expect("db") {
                    let p = e.expect("entry").path();
                    if p.to_string_lossy().ends_with(".sst") {
                        let mut b = std::fs::read(&p).expect("read");
                        // The footer and the blocks before it: whichever
                        // RocksDB reads first at open fails its checksum.
                        let n = b.len();
                        for x in &mut b[n.saturating_sub(200)..n - 8] {
                            *x ^= 0x5a;
                        }
                        std::fs::write(&p, b).expect("write");
                    }
                }
            },
            &["corrupt"],
        ),
        (
            "database deleted",
            |d| std::fs::remove_dir_all(d.join("db")).expect("rm -r"),
            &["database is missing"],
        ),
    ];
    for (what, damage, words) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("data");
        std::fs::create_dir(&d).expect("mkdir");
        copy_tree(&good, &d);
        damage(&d);
        let before: Vec<PathBuf> = if db(&d).exists() {
            files(&d, "")
        } else {
            Vec::new()
        };
        let (code, err) = start_fails(&d, &[]);
        assert!(code.is_some_and(|c| c != 0), "{what}: exit {code:?}\n{err}");
        let lower = err.to_lowercase();
        for w in words {
            assert!(
                lower.contains(&w.to_lowercase()),
                "{what}: error does not say {w:?}:\n{err}"
            );
        }
        // Nothing was created in place of the damaged database.
        let after: Vec<PathBuf> = if db(&d).exists() {
            files(&d, "")
        } else {
            Vec::new()
        };
        let new: Vec<&PathBuf> = after
            .iter()
            .filter(|p| !before.contains(p) && !p.to_string_lossy().contains("LOG"))
            .collect();
        assert!(new.is_empty(), "{what}: files created: {new:?}");
        println!("{what}: exit {code:?}: {}", err.trim());
    }

    // The undamaged copy still starts and holds every message.
    s.restart().await;
    let h = s.history_all("dm:alice:bob").await;
    assert_eq!(h.len(), 20);
}

/// An `LD_PRELOAD` shim: `fsync(2)` and `fdatasync(2)` fail with `EIO`
/// while the file named by `TERN_FAULT_FILE` exists (RocksDB, linked into
/// the binary, calls them through libc). A disk that fails a sync, without
/// a special device.
const SYNC_FAULT_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *f = getenv("TERN_FAULT_FILE");
    return f && access(f, F_OK) == 0;
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (failing()) { errno = EIO; return -1; }
    return real(fd);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (failing()) { errno = EIO; return -1; }
    return real(fd);
}
"#;

/// Builds [`SYNC_FAULT_C`] into `dir` with the C compiler the build of
/// RocksDB needs anyway; returns the shared object's path.
fn build_sync_fault(dir: &Path) -> PathBuf {
    let src = dir.join("sync_fault.c");
    let so = dir.join("sync_fault.so");
    std::fs::write(&src, SYNC_FAULT_C).expect("write shim source");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

#[tokio::test]
async fn a_failed_wal_sync_ends_the_server_unanswered_and_a_restart_loses_nothing() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let tools = tempfile::tempdir().expect("tempdir");
    let shim = build_sync_fault(tools.path());
    let flag = tools.path().join("fail-syncs");
    let (shim_s, flag_s) = (shim.display().to_string(), flag.display().to_string());
    s.set_env(&[("LD_PRELOAD", &shim_s), ("TERN_FAULT_FILE", &flag_s)]);
    s.restart().await;

    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut bob = s.login(Subprotocol::Rkyv, "bob", "phone").await;
    for i in 1..=10u64 {
        let a = alice
            .send_text(&format!("ok-{i}"), "user:bob", &format!("ok {i}"))
            .await;
        assert_eq!(a["seq"], i, "{a}");
        let m = bob.expect("msg", REPLY).await;
        assert_eq!(m["seq"], i, "{m}");
    }

    // From now on every sync fails: the next send's batch reaches the WAL
    // but not the disk for sure.
    std::fs::write(&flag, b"").expect("raise the fault");
    alice
        .send(&json!({ "type": "send", "cmid": "during", "to": "user:bob", "kind": "text", "body": "sent during the fault" }))
        .await;
    // Neither a send_ack (it is not durable) nor a send_err `unavailable`
    // (that says nothing was stored, and a restart may replay it): the
    // server ends, and with it the connection.
    match alice.next(Duration::from_secs(15)).await {
        Err(End::Closed(_)) => {}
        Err(End::Timeout) => panic!("the server neither answered nor closed"),
        Ok(v) => panic!("answered a send whose sync failed: {v}"),
    }
    let status = s
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the server still runs after a failed sync");
    assert_eq!(status.code(), Some(74), "{status:?}\n{}", s.logs());
    let logs = s.logs();
    // `fdatasync` of the WAL here; `fsync` had a background flush failed
    // first (never in 10 small messages, but either names the cause).
    for w in [
        "sync",
        "Input/output error",
        "only a restart recovers",
        "write-ahead log",
    ] {
        assert!(logs.contains(w), "the logs do not say {w:?}:\n{logs}");
    }

    // A restart on a healthy disk: every acknowledged message is there, in
    // order, and the one sent during the fault at most once.
    std::fs::remove_file(&flag).expect("clear the fault");
    s.set_env(&[]);
    s.restart().await;
    let h = s.history_all("dm:alice:bob").await;
    assert!(h.len() == 10 || h.len() == 11, "{h:?}");
    for (i, m) in h.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "{m}");
    }
    for (i, m) in h.iter().take(10).enumerate() {
        assert_eq!(m["body"], format!("ok {}", i + 1), "{m}");
    }
    println!("replayed from the WAL: {}", h.len() == 11);

    // The client resends what went unanswered, with the same cmid: stored
    // once, at the next seq, whether or not the WAL had it.
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let a = alice
        .send_text("during", "user:bob", "sent during the fault")
        .await;
    assert_eq!(a["seq"], 11, "{a}");
    let h = s.history_all("dm:alice:bob").await;
    assert_eq!(h.len(), 11, "{h:?}");
    assert_eq!(h[10]["cmid"], "during");
    assert_eq!(h[10]["body"], "sent during the fault");
    let a = alice
        .send_text("after", "user:bob", "after the fault")
        .await;
    assert_eq!(a["seq"], 12, "{a}");
    s.kill9();
}

/// `mount -o remount,<how>` of the test's tmpfs.
fn remount(path: &Path, how: &str) {
    let st = Command::new("mount")
        .args(["-o", &format!("remount,{how}")])
        .arg(path)
        .status()
        .expect("run mount");
    assert!(st.success(), "remount {how} {path:?}: {st:?}");
}

#[tokio::test]
async fn a_read_only_data_dir_is_a_clear_error_at_start_and_loses_nothing() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    // Move the data dir onto a tmpfs that can be made read-only.
    let Some(tmpfs) = onto_tmpfs(&mut s, "a read-only file system").await else {
        return;
    };
    let data = s.data_path();
    s.restart().await;
    for i in 0..10 {
        let (st, v) = s
            .post_message(json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": format!("m{i}"), "cmid": format!("c{i}") }))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let status = s.sigterm(SHUTDOWN).await.expect("clean stop");
    assert!(status.success(), "{status:?}");
    let listing = |d: &Path| -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(d.join("db"))
            .expect("db dir")
            .map(|e| {
                let e = e.expect("entry");
                (e.path(), e.metadata().expect("stat").len())
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(&data);

    remount(&tmpfs.path, "ro");
    // An existing database on a read-only file system.
    let (code, err) = start_fails(&data, &[]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}\n{err}");
    let lower = err.to_lowercase();
    for w in ["cannot open the database", "read-only file system"] {
        assert!(lower.contains(w), "the error does not say {w:?}:\n{err}");
    }
    println!("existing database: exit {code:?}: {}", err.trim());
    // A data dir still to be created there.
    let (code, err) = start_fails(&data.join("new"), &[]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}\n{err}");
    let lower = err.to_lowercase();
    for w in ["cannot create data dir", "read-only file system"] {
        assert!(lower.contains(w), "the error does not say {w:?}:\n{err}");
    }
    println!("new data dir: exit {code:?}: {}", err.trim());

    // The failed starts changed nothing, and once writable again the
    // server starts on the same database with every message.
    remount(&tmpfs.path, "rw");
    assert_eq!(
        listing(&data),
        before,
        "a failed start changed the database"
    );
    s.restart().await;
    let h = s.history_all("dm:alice:bob").await;
    assert_eq!(h.len(), 10, "{h:?}");
    s.kill9();
    drop(tmpfs);
}

#[test]
fn a_read_coalesce_window_above_its_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (code, err) = start_fails(&data, &["--read-coalesce-us", "10001"]);
    assert_ne!(
        code,
        Some(0),
        "started with a bad read coalesce window: {err}"
    );
    assert!(err.contains("read_coalesce_us must be 0..=10000"), "{err}");
    assert!(!data.join("db").exists(), "a database was created: {err}");
}

#[test]
fn an_unknown_io_driver_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (code, err) = start_fails_with_env(&data, &[], &[("TERN_IO_DRIVER", "uring")]);
    assert_ne!(code, Some(0), "started with an unknown driver: {err}");
    assert!(
        err.contains(r#"TERN_IO_DRIVER="uring": expected "auto" or "epoll""#),
        "{err}"
    );
}

#[test]
fn a_sync_interval_above_its_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (code, err) = start_fails(&data, &["--sync-interval-us", "100001"]);
    assert_ne!(code, Some(0), "started with a bad sync interval: {err}");
    assert!(err.contains("sync_interval_us must be 0..=100000"), "{err}");
    assert!(!data.join("db").exists(), "a database was created: {err}");
}
