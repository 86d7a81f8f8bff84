//! The shards on epoll (monoio's legacy driver), which a kernel without
//! io_uring gives them (or a seccomp profile that refuses it, such as
//! Docker's default), and which `TERN_IO_DRIVER=epoll` asks for: clients
//! connect, messages flow both ways in both subprotocols, and SIGTERM
//! stops the server cleanly.

mod common;

use common::*;
use tern_proto::Subprotocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoll_driver_accepts_delivers_and_stops() {
    let mut s = Server::start(&[]).await;
    s.set_env(&[("TERN_IO_DRIVER", "epoll")]);
    s.restart().await;
    assert!(
        s.logs().contains("driver=\"epoll\"") || s.logs().contains("driver=epoll"),
        "the startup line names the driver: {}",
        s.logs()
    );

    s.put_users(&["alice", "bob"]).await;
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut bob = s.login(Subprotocol::Rkyv, "bob", "phone").await;
    for i in 1..=20u64 {
        let a = alice
            .send_text(&format!("a{i}"), "user:bob", &format!("to bob {i}"))
            .await;
        assert_eq!(a["seq"], 2 * i - 1, "{a}");
        let m = bob.expect("msg", REPLY).await;
        assert_eq!(m["body"], format!("to bob {i}"), "{m}");
        let b = bob
            .send_text(&format!("b{i}"), "user:alice", &format!("to alice {i}"))
            .await;
        assert_eq!(b["seq"], 2 * i, "{b}");
        let m = alice.expect("msg", REPLY).await;
        assert_eq!(m["body"], format!("to alice {i}"), "{m}");
    }
    // Accepting goes on after the first connections: a later device of bob
    // syncs the whole conversation.
    let mut tablet = s.login(Subprotocol::Json, "bob", "tablet").await;
    let all = tablet.sync_all("dm:alice:bob", 0).await;
    assert_eq!(all.len(), 40);

    let status = s.sigterm(SHUTDOWN).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
