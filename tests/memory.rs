//! How the server process holds its memory. The per-connection figure
//! itself is a benchmark (`make bench`, docs/BENCHMARKS.md "idle"); here,
//! the process-level choice behind it: no transparent huge pages, which
//! nearly doubled the idle RSS per connection (src/main.rs,
//! `opt_out_of_huge_pages`).

mod common;

use common::*;

/// The `THP_enabled` line of /proc/PID/status (Linux 5.0+): 1 unless the
/// process opted out with prctl(PR_SET_THP_DISABLE).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no THP_enabled line in /proc/{pid}/status:\n{status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_opts_out_of_transparent_huge_pages() {
    // The flag is inherited: only where this test process has THP allowed
    // (everywhere we run) does the server's 0 show its own choice.
    if thp_enabled(std::process::id()) != "1" {
        eprintln!("note: this test runs with THP already disabled; the server inherits that");
    }
    let mut s = Server::start(&[]).await;
    assert_eq!(thp_enabled(s.pid()), "0", "tern serve runs without THP");
    // And it still serves: one user connects and is answered.
    s.put_users(&["alice"]).await;
    let mut alice = s
        .login(tern_proto::Subprotocol::Json, "alice", "phone")
        .await;
    alice.send(&serde_json::json!({"type": "ping"})).await;
    alice.expect("pong", REPLY).await;
    assert!(s
        .sigterm(std::time::Duration::from_secs(10))
        .await
        .is_some());
}
