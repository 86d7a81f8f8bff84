//! PROTOCOL.md guarantees 3, 4 and 5 over WebSocket: exactly-once effect of a
//! repeated cmid, at-least-once delivery (redelivery after the ack timeout,
//! close 4408 after the retries), no gap across a reconnect (convs + sync),
//! read receipts and typing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Ack timeout asked for when `tern serve` has a flag for it; PROTOCOL does
/// not name one, so the tests also work with the default 10 s.
const SHORT_ACK_TIMEOUT_MS: u64 = 1_000;

/// Flags for a short ack timeout, if the server supports one. Setting
/// `TERN_E2E_DEFAULT_TIMEOUTS=1` runs with the default 10 s instead (slow).
fn short_ack_args() -> Vec<&'static str> {
    let defaults = std::env::var_os("TERN_E2E_DEFAULT_TIMEOUTS").is_some();
    if !defaults && Server::supports_flag("--ack-timeout-ms") {
        vec!["--ack-timeout-ms", "1000"]
    } else {
        Vec::new()
    }
}

/// Slack over a timer-driven deadline: the server's timer wheel is coarse and
/// the machine is busy with other tests.
const TIMER_SLACK: Duration = Duration::from_secs(4);

#[tokio::test]
async fn repeated_cmid_gets_the_original_ack_and_stores_once() {
    let s = Server::start(&[]).await;
    for sp in SPS {
        let (a, b) = (format!("alice_{}", tag(sp)), format!("bob_{}", tag(sp)));
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut alice = s.login(sp, &a, "phone").await;
        let mut bob = s.login(sp, &b, "phone").await;

        let first = alice.send_text("dup", &format!("user:{b}"), "once").await;
        tokio::time::sleep(Duration::from_millis(20)).await; // a later ts would show
                                                             // Same cmid again, even with another body and the conv form of `to`.
        let again = alice.send_msg("dup", &conv, "text", json!("twice?")).await;
        assert_eq!(
            again, first,
            "{sp:?}: repeated send must get the original send_ack"
        );
        // From another device of the same sender: same (sender, cmid).
        let mut alice2 = s.login(sp, &a, "tablet").await;
        let third = alice2
            .send_msg("dup", &format!("user:{b}"), "text", json!("thrice?"))
            .await;
        assert_eq!(third, first, "{sp:?}: (sender, cmid) dedups across devices");

        // Back-to-back duplicates, both in flight at once.
        for _ in 0..2 {
            alice.send(&json!({ "type": "send", "cmid": "dup2", "to": format!("user:{b}"), "kind": "text", "body": "x" })).await;
        }
        let x = alice.answer_to("dup2").await;
        let y = alice.answer_to("dup2").await;
        assert_eq!(x["type"], "send_ack", "{x}");
        assert_eq!(x, y, "{sp:?}: concurrent duplicates");
        assert_eq!(x["seq"], 2);

        // Interleaved duplicates in one burst (the owner reads their dedup
        // rows together, in one run): one seq per cmid, in first-seen order.
        let burst = ["dup3", "dup4", "dup3", "dup4", "dup3"];
        for cmid in burst {
            alice.send(&json!({ "type": "send", "cmid": cmid, "to": format!("user:{b}"), "kind": "text", "body": cmid })).await;
        }
        for (cmid, seq) in [("dup3", 3), ("dup4", 4)] {
            let n = burst.iter().filter(|c| **c == cmid).count();
            for _ in 0..n {
                let a = alice.answer_to(cmid).await;
                assert_eq!(a["type"], "send_ack", "{sp:?}: {a}");
                assert_eq!(a["seq"], seq, "{sp:?}: {cmid} in a burst: {a}");
            }
        }

        // bob got each message once.
        let m = bob.expect_msg(&conv, 1).await;
        assert_eq!(m["body"], "once");
        let m = bob.expect_msg(&conv, 2).await;
        assert_eq!(m["cmid"], "dup2");
        let m = bob.expect_msg(&conv, 3).await;
        assert_eq!(m["cmid"], "dup3");
        let m = bob.expect_msg(&conv, 4).await;
        assert_eq!(m["cmid"], "dup4");
        bob.ack(&conv, 4).await;
        bob.quiet(&["msg"], QUIET).await;

        // One stored entry per cmid, via sync and via HTTP history.
        let synced = bob.sync_all(&conv, 0).await;
        assert_eq!(synced.len(), 4, "{synced:?}");
        assert_eq!(synced[0]["body"], "once");
        let h = s.history_all(&conv).await;
        assert_eq!(h.len(), 4, "{h:?}");

        // The same cmid from another sender is another message.
        let other = bob
            .send_text("dup", &format!("user:{a}"), "bob's own")
            .await;
        assert_eq!(other["seq"], 5, "{other}");
    }
}

/// Waits for the redelivery of `first` on `c` and returns when it came
/// (after `pushed_at`).
async fn expect_redelivery(c: &mut Client, first: &Value, bound: Duration) -> Duration {
    let (conv, seq) = (
        first["conv"].as_str().expect("conv").to_string(),
        first["seq"].as_u64().expect("seq"),
    );
    let started = Instant::now();
    let again = c
        .expect_where(bound, &format!("redelivery of {conv}#{seq}"), |v| {
            v["type"] == "msg" && v["conv"] == conv.as_str() && v["seq"] == seq
        })
        .await;
    assert_eq!(&again, first, "a redelivery is the same object");
    started.elapsed()
}

#[tokio::test]
async fn unacked_msg_is_pushed_again_then_4408_and_ack_stops_it() {
    let args = short_ack_args();
    let s = Server::start(&args).await;
    s.put_users(&["alice", "bob"]).await;
    let conv = "dm:alice:bob";
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut lazy = s.login(Subprotocol::Json, "bob", "lazy").await; // never acks
    let mut tidy = s.login(Subprotocol::Rkyv, "bob", "tidy").await; // acks after one redelivery
    let t_ms = {
        let tok = s.token("bob", Some("probe")).await;
        let mut c = Client::connect(&s, Subprotocol::Json).await;
        let ok = c.auth(&tok, "probe").await;
        ok["ack_timeout_ms"].as_u64().expect("ack_timeout_ms")
    };
    if !args.is_empty() {
        assert_eq!(
            t_ms, SHORT_ACK_TIMEOUT_MS,
            "the flag is announced in auth_ok"
        );
    }
    let t = Duration::from_millis(t_ms);

    alice.send_text("r1", "user:bob", "please ack").await;
    let first_lazy = lazy.expect_msg(conv, 1).await;
    let first_tidy = tidy.expect_msg(conv, 1).await;
    assert_eq!(first_lazy, first_tidy);

    let tidy_flow = async {
        // Not before the timeout (half of it, for a coarse wheel), but soon after.
        let waited = expect_redelivery(&mut tidy, &first_tidy, t + TIMER_SLACK).await;
        assert!(
            waited >= t / 2,
            "redelivered after {waited:?}, ack timeout is {t:?}"
        );
        tidy.ack(conv, 1).await;
        // After the ack: nothing more, for longer than another timeout.
        tidy.quiet(&["msg"], t + t / 2 + Duration::from_secs(1))
            .await;
        tidy.ping().await;
    };
    let lazy_flow = async {
        // Pushed again up to 3 more times, then closed with 4408.
        for n in 1..=3 {
            let waited = expect_redelivery(&mut lazy, &first_lazy, t + TIMER_SLACK).await;
            assert!(waited >= t / 2, "redelivery {n} after {waited:?}");
        }
        let code = lazy.expect_close(t + TIMER_SLACK).await;
        assert_eq!(code, Some(4408), "after 3 redeliveries");
        let extra: Vec<&Value> = lazy.inbox().iter().filter(|v| v["type"] == "msg").collect();
        assert!(extra.is_empty(), "a 5th push: {extra:?}");
    };
    tokio::join!(tidy_flow, lazy_flow);

    // The message stays retrievable for a reconnecting device (promise 5).
    let mut back = s.login(Subprotocol::Json, "bob", "lazy").await;
    let synced = back.sync_all(conv, 0).await;
    assert_eq!(synced, vec![first_lazy]);
}

#[tokio::test]
async fn unacked_entries_are_not_pushed_again_on_a_new_connection() {
    let args = short_ack_args();
    let s = Server::start(&args).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let conv = "dm:alice:bob";
        let mut alice = s.login(sp, "alice", tag(sp)).await;
        let mut bob = s.login(sp, "bob", "phone").await;
        let t = Duration::from_millis(bob_ack_timeout(&s).await);
        let ack = alice
            .send_text(&format!("u_{}", tag(sp)), "user:bob", "unacked")
            .await;
        let seq = ack["seq"].as_u64().expect("seq");
        bob.expect_msg(conv, seq).await;
        bob.close().await;
        let mut bob = s.login(sp, "bob", "phone").await;
        // Past one ack timeout: no push of the old entry on the new connection.
        bob.quiet(&["msg"], t + Duration::from_secs(1)).await;
        // It is recovered with convs + sync instead.
        let sum = bob.conv_summary(conv).await.expect("conv listed");
        assert_eq!(sum["max_seq"], seq, "{sum}");
        let r = bob.sync(conv, seq - 1, None).await;
        assert_eq!(r["messages"][0]["cmid"], ack["cmid"], "{r}");
    }
}

async fn bob_ack_timeout(s: &Server) -> u64 {
    let tok = s.token("bob", Some("probe")).await;
    let mut c = Client::connect(s, Subprotocol::Json).await;
    let ok = c.auth(&tok, "probe").await;
    ok["ack_timeout_ms"].as_u64().expect("ack_timeout_ms")
}

#[tokio::test]
async fn offline_messages_are_found_with_convs_and_sync() {
    let s = Server::start(&[]).await;
    for (i, (sa, sb)) in [
        (Subprotocol::Json, Subprotocol::Rkyv),
        (Subprotocol::Rkyv, Subprotocol::Json),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b, c) = (format!("alice{i}"), format!("bob{i}"), format!("carol{i}"));
        s.put_users(&[&a, &b, &c]).await;
        let conv = dm(&a, &b);
        let conv_c = dm(&b, &c);
        let mut alice = s.login(sa, &a, "phone").await;
        // alice's second device records the pushed objects.
        let mut witness = s.login(sb, &a, "tablet").await;
        let mut carol = s.login(sa, &c, "phone").await;

        // bob is offline.
        for k in 1..=5u64 {
            let ack = alice
                .send_msg(
                    &format!("o{k}"),
                    &format!("user:{b}"),
                    "custom",
                    json!({ "k": k }),
                )
                .await;
            assert_eq!(ack["seq"], k);
        }
        carol
            .send_text("c1", &format!("user:{b}"), "from carol")
            .await;
        let mut pushed = Vec::new();
        for k in 1..=5 {
            pushed.push(witness.expect_msg(&conv, k).await);
        }
        witness.ack(&conv, 5).await;

        let mut bob = s.login(sb, &b, "phone").await;
        // Nothing from before is pushed on connect.
        bob.quiet(&["msg"], QUIET).await;
        let convs = bob.convs().await;
        let list = convs["convs"].as_array().expect("convs");
        let find = |id: &str| list.iter().find(|x| x["conv"] == id).cloned();
        let ab = find(&conv).unwrap_or_else(|| panic!("{conv} missing from {convs}"));
        assert_eq!(
            ab,
            json!({ "conv": conv, "max_seq": 5, "read_seq": 0, "unread": 5 })
        );
        let bc = find(&conv_c).unwrap_or_else(|| panic!("{conv_c} missing from {convs}"));
        assert_eq!(
            bc,
            json!({ "conv": conv_c, "max_seq": 1, "read_seq": 0, "unread": 1 })
        );
        assert_eq!(list.len(), 2, "bob has exactly two convs: {convs}");

        // sync: in order, exactly the pushed objects.
        let r = bob.sync(&conv, 0, None).await;
        assert_eq!(r["type"], "sync_result", "{r}");
        assert_eq!(r["conv"], conv.as_str());
        assert_eq!(r["has_more"], false, "{r}");
        assert_eq!(r["messages"], json!(pushed), "{sa:?}->{sb:?}");

        // Paging with limit.
        let r = bob.sync(&conv, 0, Some(2)).await;
        assert_eq!(r["messages"], json!(pushed[0..2]));
        assert_eq!(r["has_more"], true);
        let r = bob.sync(&conv, 2, Some(2)).await;
        assert_eq!(r["messages"], json!(pushed[2..4]));
        assert_eq!(r["has_more"], true);
        let r = bob.sync(&conv, 4, Some(2)).await;
        assert_eq!(r["messages"], json!(pushed[4..5]));
        assert_eq!(r["has_more"], false, "{r}");
        // A page that ends exactly at the last entry says there is no more.
        let r = bob.sync(&conv, 3, Some(2)).await;
        assert_eq!(r["messages"], json!(pushed[3..5]));
        assert_eq!(r["has_more"], false, "{r}");
        // After the end: empty, no more.
        let r = bob.sync(&conv, 5, None).await;
        assert_eq!(r["messages"], json!([]));
        assert_eq!(r["has_more"], false);
        let r = bob.sync(&conv, 1000, None).await;
        assert_eq!(r["messages"], json!([]));
    }
}

#[tokio::test]
async fn sync_limit_above_500_is_refused_or_capped() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let mut alice = s.login(sp, "alice", tag(sp)).await;
        alice
            .send_text(&format!("l_{}", tag(sp)), "user:bob", "x")
            .await;
        let r = alice.sync("dm:alice:bob", 0, Some(501)).await;
        // Either answer is a careful one; an unbounded page is not.
        match r["type"].as_str() {
            Some("error") => assert_eq!(r["code"], "bad_request", "{r}"),
            Some("sync_result") => {
                assert!(r["messages"].as_array().expect("messages").len() <= 500)
            }
            _ => panic!("{r}"),
        }
        let r = alice.sync("dm:alice:bob", 0, Some(0)).await;
        if r["type"] == "error" {
            assert_eq!(r["code"], "bad_request", "{r}");
        }
        alice.ping().await;
    }
}

#[tokio::test]
async fn read_sends_receipts_to_own_other_devices_and_the_peer() {
    let s = Server::start(&[]).await;
    for (i, (sa, sb)) in [
        (Subprotocol::Json, Subprotocol::Rkyv),
        (Subprotocol::Rkyv, Subprotocol::Json),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b) = (format!("alice{i}"), format!("bob{i}"));
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut a_phone = s.login(sa, &a, "phone").await;
        let mut a_tablet = s.login(sb, &a, "tablet").await;
        let mut b_phone = s.login(sb, &b, "phone").await;
        let mut b_tablet = s.login(sa, &b, "tablet").await;
        for k in 1..=5u64 {
            a_phone
                .send_text(&format!("m{k}"), &format!("user:{b}"), "x")
                .await;
        }
        for c in [&mut b_phone, &mut b_tablet, &mut a_tablet] {
            c.expect_msg(&conv, 5).await;
            c.ack(&conv, 5).await;
        }

        b_phone.read(&conv, 3).await;
        let want = json!({ "type": "receipt", "conv": conv, "user": b, "read_seq": 3 });
        for c in [&mut b_tablet, &mut a_phone, &mut a_tablet] {
            let r = c.expect("receipt", REPLY).await;
            assert_eq!(r, want, "{}", c.label);
        }
        // None to the reader's own device.
        b_phone.quiet(&["receipt"], QUIET).await;

        let sum = b_phone.conv_summary(&conv).await.expect("listed");
        assert_eq!(
            sum,
            json!({ "conv": conv, "max_seq": 5, "read_seq": 3, "unread": 2 })
        );
        let sum = b_tablet.conv_summary(&conv).await.expect("listed");
        assert_eq!(sum["read_seq"], 3, "read position is per user: {sum}");

        b_tablet.read(&conv, 5).await;
        let r = b_phone.expect("receipt", REPLY).await;
        assert_eq!(r["read_seq"], 5);
        let r = a_phone.expect("receipt", REPLY).await;
        assert_eq!(r["read_seq"], 5);
        let sum = b_phone.conv_summary(&conv).await.expect("listed");
        assert_eq!(sum["unread"], 0, "{sum}");
        assert_eq!(sum["read_seq"], 5, "{sum}");

        // A read position never moves back.
        b_phone.read(&conv, 2).await;
        let sum = b_phone.conv_summary(&conv).await.expect("listed");
        assert_eq!(sum["read_seq"], 5, "read_seq moved back: {sum}");
    }
}

#[tokio::test]
async fn read_of_a_foreign_conv_is_not_member() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob", "carol"]).await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;
    let mut carol = s.login(Subprotocol::Json, "carol", "phone").await;
    bob.send_text("b1", "user:carol", "x").await;
    carol.expect_msg("dm:bob:carol", 1).await;
    for sp in SPS {
        let mut alice = s.login(sp, "alice", tag(sp)).await;
        alice.read("dm:bob:carol", 1).await;
        alice.typing("dm:bob:carol").await;
        // Neither reaches the members; the server may answer with an error.
        bob.quiet(&["receipt", "typing"], QUIET).await;
        carol
            .quiet(&["receipt", "typing"], Duration::from_millis(50))
            .await;
        for f in alice.inbox() {
            assert_eq!(f["type"], "error", "{f}");
            assert_eq!(f["code"], "not_member", "{f}");
        }
        alice.ping().await;
    }
}

#[tokio::test]
async fn typing_reaches_the_peer_only() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let mut a_phone = s.login(sp, "alice", "phone").await;
        let mut a_tablet = s.login(sp, "alice", "tablet").await;
        let mut b_phone = s.login(Subprotocol::Json, "bob", "phone").await;
        let mut b_tablet = s.login(Subprotocol::Rkyv, "bob", "tablet").await;

        a_phone.typing("user:bob").await;
        let want = json!({ "type": "typing", "conv": "dm:alice:bob", "user": "alice" });
        for c in [&mut b_phone, &mut b_tablet] {
            assert_eq!(c.expect("typing", REPLY).await, want);
        }
        a_tablet.quiet(&["typing"], QUIET).await;
        a_phone.quiet(&["typing"], Duration::from_millis(50)).await;

        // The conv form of `to` works the same; typing is not stored.
        b_tablet.typing("dm:alice:bob").await;
        for c in [&mut a_phone, &mut a_tablet] {
            let t = c.expect("typing", REPLY).await;
            assert_eq!(
                t,
                json!({ "type": "typing", "conv": "dm:alice:bob", "user": "bob" })
            );
        }
        b_phone.quiet(&["typing"], QUIET).await;
        let r = a_phone.sync("dm:alice:bob", 0, None).await;
        assert!(r["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| m["type"] != "typing"));
        for c in [a_phone, a_tablet, b_phone, b_tablet] {
            c.close().await;
        }
    }
    let h = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(h["messages"], json!([]), "typing stored something: {h}");
}
