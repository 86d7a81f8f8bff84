//! Direct messages over WebSocket: send_ack, multi-device fan-out, seq order,
//! the forms of `to`, self-dm, and the send errors of PROTOCOL.md.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Every (alice, bob) subprotocol pairing, so a conv whose members speak
/// different encodings is covered too.
const PAIRS: [(Subprotocol, Subprotocol); 4] = [
    (Subprotocol::Json, Subprotocol::Json),
    (Subprotocol::Rkyv, Subprotocol::Rkyv),
    (Subprotocol::Json, Subprotocol::Rkyv),
    (Subprotocol::Rkyv, Subprotocol::Json),
];

fn names(i: usize) -> (String, String) {
    (format!("alice{i}"), format!("bob{i}"))
}

/// The fields a pushed `msg` must have; `ts` is checked separately.
struct Want<'a> {
    conv: &'a str,
    seq: u64,
    from: &'a str,
    device: &'a str,
    cmid: &'a str,
    kind: &'a str,
    body: &'a Value,
}

/// Asserts every field of a pushed `msg` (and nothing missing).
fn assert_msg(m: &Value, w: Want<'_>) {
    let mut got = m.clone();
    let ts = got
        .as_object_mut()
        .and_then(|o| o.remove("ts"))
        .unwrap_or(Value::Null);
    assert_ts_recent(&ts, "msg.ts");
    let want = json!({
        "type": "msg", "conv": w.conv, "seq": w.seq, "from": w.from, "device": w.device,
        "cmid": w.cmid, "kind": w.kind, "body": w.body,
    });
    assert_eq!(got, want, "pushed msg");
}

#[tokio::test]
async fn send_is_acked_and_reaches_every_device_but_the_sending_one() {
    let s = Server::start(&[]).await;
    for (i, (sa, sb)) in PAIRS.into_iter().enumerate() {
        let (a, b) = names(i);
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut a_phone = s.login(sa, &a, "phone").await;
        let mut a_tablet = s.login(sb, &a, "tablet").await;
        let mut b_phone = s.login(sb, &b, "phone").await;
        let mut b_tablet = s.login(sa, &b, "tablet").await;

        let ack = a_phone
            .send_text("m1", &format!("user:{b}"), "hello bob")
            .await;
        assert_eq!(ack["cmid"], "m1", "{ack}");
        assert_eq!(ack["conv"], conv.as_str(), "{ack}");
        assert_eq!(ack["seq"], 1, "{ack}");
        assert_ts_recent(&ack["ts"], "send_ack.ts");

        let body = json!("hello bob");
        for c in [&mut b_phone, &mut b_tablet, &mut a_tablet] {
            let m = c.expect("msg", REPLY).await;
            assert_msg(
                &m,
                Want {
                    conv: &conv,
                    seq: 1,
                    from: &a,
                    device: "phone",
                    cmid: "m1",
                    kind: "text",
                    body: &body,
                },
            );
            // The pushed message carries the acknowledged ts.
            assert_eq!(m["ts"], ack["ts"], "{m} vs {ack}");
            c.ack(&conv, 1).await;
        }
        // Everyone else got it: the sending device must not, now or late.
        a_phone.quiet(&["msg"], QUIET).await;
        a_phone.ping().await;
        a_phone
            .quiet(&["msg"], std::time::Duration::from_millis(50))
            .await;

        // And back: bob replies, alice's devices both get it, bob's tablet too.
        let ack = b_tablet
            .send_text("r1", &format!("user:{a}"), "hi alice")
            .await;
        assert_eq!(ack["conv"], conv.as_str());
        assert_eq!(ack["seq"], 2);
        for c in [&mut a_phone, &mut a_tablet, &mut b_phone] {
            let m = c.expect("msg", REPLY).await;
            assert_msg(
                &m,
                Want {
                    conv: &conv,
                    seq: 2,
                    from: &b,
                    device: "tablet",
                    cmid: "r1",
                    kind: "text",
                    body: &json!("hi alice"),
                },
            );
        }
        b_tablet.quiet(&["msg"], QUIET).await;
    }
}

#[tokio::test]
async fn hundred_sends_get_consecutive_seqs_and_arrive_in_order() {
    hundred_sends_in_order(&[]).await;
}

/// The same with the largest read coalescing window: every read of a
/// socket set waits up to 10 ms under load, and nothing is lost or reordered.
#[tokio::test]
async fn hundred_sends_arrive_in_order_with_the_largest_read_coalescing() {
    hundred_sends_in_order(&["--read-coalesce-us", "10000"]).await;
}

/// Read coalescing is in force: a send made right after the previous one
/// was answered is read no sooner than one window after the read of the
/// previous one. (A lower bound, so a slow machine cannot fail it; without
/// coalescing the pair takes well under the window here.)
#[tokio::test]
async fn a_read_soon_after_another_waits_for_the_coalescing_window() {
    const WINDOW: Duration = Duration::from_millis(10);
    let s = Server::start(&["--read-coalesce-us", "10000", "--durability", "none"]).await;
    let (a, b) = names(0);
    s.put_users(&[&a, &b]).await;
    let mut alice = s.login(Subprotocol::Json, &a, "phone").await;
    for round in 0..3 {
        // A quiet spell longer than the window, so the first read is at once.
        tokio::time::sleep(2 * WINDOW).await;
        let t0 = Instant::now();
        for k in 0..2 {
            let cmid = format!("r{round}k{k}");
            alice
                .send(&json!({ "type": "send", "cmid": cmid, "to": format!("user:{b}"), "kind": "text", "body": "x" }))
                .await;
            let ack = alice.answer_to(&cmid).await;
            assert_eq!(ack["type"], "send_ack", "{ack}");
        }
        let took = t0.elapsed();
        assert!(
            took >= WINDOW,
            "round {round}: two sends answered in {took:?}"
        );
    }
}

async fn hundred_sends_in_order(args: &[&str]) {
    const N: u64 = 100;
    let s = Server::start(args).await;
    for (i, (sa, sb)) in PAIRS.into_iter().enumerate() {
        let (a, b) = names(i);
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut alice = s.login(sa, &a, "phone").await;
        let mut b_phone = s.login(sb, &b, "phone").await;
        let mut b_tablet = s.login(sa, &b, "tablet").await;

        // Pipelined: every send goes out before any ack is read.
        for k in 1..=N {
            alice
                .send(&json!({ "type": "send", "cmid": format!("c{k}"), "to": format!("user:{b}"), "kind": "text", "body": format!("n{k}") }))
                .await;
        }
        let mut last_ts = 0;
        for k in 1..=N {
            let ack = alice.answer_to(&format!("c{k}")).await;
            assert_eq!(ack["type"], "send_ack", "{ack}");
            assert_eq!(ack["conv"], conv.as_str());
            // One connection, one conv: sends are sequenced in the order sent.
            assert_eq!(ack["seq"], k, "{ack}");
            let ts = ack["ts"].as_u64().expect("ts");
            assert!(ts >= last_ts, "ts went backwards: {ts} < {last_ts}");
            last_ts = ts;
        }
        for c in [&mut b_phone, &mut b_tablet] {
            for k in 1..=N {
                let m = c.expect("msg", REPLY).await;
                // In seq order, no gap, no duplicate.
                assert_msg(
                    &m,
                    Want {
                        conv: &conv,
                        seq: k,
                        from: &a,
                        device: "phone",
                        cmid: &format!("c{k}"),
                        kind: "text",
                        body: &json!(format!("n{k}")),
                    },
                );
                if k % 64 == 0 || k == N {
                    c.ack(&conv, k).await;
                }
            }
            c.quiet(&["msg"], QUIET).await;
        }
        // The timeline holds exactly 1..=N.
        let all = b_phone.sync_all(&conv, 0).await;
        let seqs: Vec<u64> = all
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn user_target_and_conv_target_land_in_the_same_conv() {
    let s = Server::start(&[]).await;
    for sp in SPS {
        let (a, b) = (format!("alice_{}", tag(sp)), format!("bob_{}", tag(sp)));
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut alice = s.login(sp, &a, "phone").await;
        let mut bob = s.login(sp, &b, "phone").await;
        let targets = [
            format!("user:{b}"),
            conv.clone(),
            format!("user:{b}"),
            conv.clone(),
        ];
        for (k, to) in targets.iter().enumerate() {
            let ack = alice.send_text(&format!("a{k}"), to, "x").await;
            assert_eq!(ack["conv"], conv.as_str(), "to {to}: {ack}");
            assert_eq!(ack["seq"], k as u64 + 1, "to {to}: {ack}");
        }
        // From the other side, `user:alice` is the same conv too.
        let ack = bob.send_text("b0", &format!("user:{a}"), "y").await;
        assert_eq!(ack["conv"], conv.as_str());
        assert_eq!(ack["seq"], 5);
        for k in 1..=4u64 {
            let m = bob.expect_msg(&conv, k).await;
            assert_eq!(m["from"], a.as_str());
        }
        let m = alice.expect_msg(&conv, 5).await;
        assert_eq!(m["from"], b.as_str());
    }
}

#[tokio::test]
async fn self_dm_is_its_own_conv() {
    let s = Server::start(&[]).await;
    for sp in SPS {
        let a = format!("alice_{}", tag(sp));
        s.put_user(&a).await;
        let conv = format!("dm:{a}:{a}");
        let mut phone = s.login(sp, &a, "phone").await;
        let mut tablet = s.login(sp, &a, "tablet").await;
        let ack = phone
            .send_text("s1", &format!("user:{a}"), "note to self")
            .await;
        assert_eq!(ack["conv"], conv.as_str(), "{ack}");
        assert_eq!(ack["seq"], 1);
        let ack = tablet.send_text("s2", &conv, "another").await;
        assert_eq!(ack["conv"], conv.as_str());
        assert_eq!(ack["seq"], 2);
        let m = tablet.expect_msg(&conv, 1).await;
        assert_msg(
            &m,
            Want {
                conv: &conv,
                seq: 1,
                from: &a,
                device: "phone",
                cmid: "s1",
                kind: "text",
                body: &json!("note to self"),
            },
        );
        let m = phone.expect_msg(&conv, 2).await;
        assert_msg(
            &m,
            Want {
                conv: &conv,
                seq: 2,
                from: &a,
                device: "tablet",
                cmid: "s2",
                kind: "text",
                body: &json!("another"),
            },
        );
        phone.quiet(&["msg"], QUIET).await;
        tablet
            .quiet(&["msg"], std::time::Duration::from_millis(50))
            .await;
        let summary = phone.conv_summary(&conv).await.expect("self dm in convs");
        assert_eq!(summary["max_seq"], 2, "{summary}");
    }
}

#[tokio::test]
async fn send_to_unknown_user_or_group_is_refused() {
    let s = Server::start(&[]).await;
    for sp in SPS {
        let a = format!("alice_{}", tag(sp));
        s.put_user(&a).await;
        let mut alice = s.login(sp, &a, "phone").await;
        let e = alice
            .send_msg("x1", "user:nobody", "text", json!("hi"))
            .await;
        assert_eq!(e["type"], "send_err", "{e}");
        assert_eq!(e["cmid"], "x1");
        assert_eq!(e["code"], "no_such_user", "{e}");
        assert!(e["message"].is_string(), "{e}");
        let e = alice
            .send_msg("x2", "group:nogroup", "text", json!("hi"))
            .await;
        assert_eq!(e["type"], "send_err", "{e}");
        assert_eq!(e["code"], "no_such_group", "{e}");
        // Nothing was stored anywhere.
        let (st, h) = s
            .request(
                "GET",
                &format!("/v1/conversations/{}/messages", dm(&a, "nobody")),
                None,
            )
            .await;
        if st == 200 {
            assert_eq!(h["messages"], json!([]), "{h}");
        }
    }
}

#[tokio::test]
async fn dm_of_other_users_is_not_member_for_send_and_sync() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob", "carol"]).await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;
    let mut carol = s.login(Subprotocol::Rkyv, "carol", "phone").await;
    bob.send_text("private", "user:carol", "secret").await;
    carol.expect_msg("dm:bob:carol", 1).await;
    for sp in SPS {
        let mut alice = s.login(sp, "alice", tag(sp)).await;
        let e = alice
            .send_msg("snoop", "dm:bob:carol", "text", json!("hi"))
            .await;
        assert_eq!(e["type"], "send_err", "{sp:?}: {e}");
        assert_eq!(e["code"], "not_member", "{sp:?}: {e}");
        let r = alice.sync("dm:bob:carol", 0, None).await;
        assert_eq!(
            r["type"], "error",
            "{sp:?}: sync of another's dm answered {r}"
        );
        assert_eq!(r["code"], "not_member", "{sp:?}: {r}");
        // Nothing leaks through convs either.
        let convs = alice.convs().await;
        assert!(
            convs["convs"]
                .as_array()
                .expect("convs")
                .iter()
                .all(|c| c["conv"] != "dm:bob:carol"),
            "{convs}"
        );
        // Nobody received the refused send.
        carol.quiet(&["msg"], QUIET).await;
    }
    let h = s.history("dm:bob:carol", 0, None).await;
    assert_eq!(h["messages"].as_array().expect("messages").len(), 1, "{h}");
}

#[tokio::test]
async fn malformed_targets_are_bad_request() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let mut alice = s.login(sp, "alice", "phone").await;
        for (k, to) in [
            "dm:bob:alice",
            "bob",
            "user:",
            "user:bad id!",
            "dm:alice",
            "chan:x",
            &format!("user:{}", "a".repeat(65)),
        ]
        .into_iter()
        .enumerate()
        {
            let cmid = format!("bad{k}");
            let e = alice.send_msg(&cmid, to, "text", json!("x")).await;
            assert_eq!(e["type"], "send_err", "{sp:?} to {to:?}: {e}");
            assert_eq!(e["code"], "bad_request", "{sp:?} to {to:?}: {e}");
        }
        // A 64-byte id is fine (the bound is inclusive).
        let long = "b".repeat(64);
        s.put_user(&long).await;
        let ack = alice
            .send_text(&format!("ok64_{}", tag(sp)), &format!("user:{long}"), "x")
            .await;
        assert_eq!(ack["conv"], dm("alice", &long).as_str());
    }
    // An invalid kind or cmid in JSON is refused too.
    let mut alice = s.login(Subprotocol::Json, "alice", "laptop").await;
    alice.send(&json!({ "type": "send", "cmid": "k1", "to": "user:bob", "kind": "video", "body": "x" })).await;
    let e = alice
        .expect_where(REPLY, "error/send_err for kind video", |v| {
            v["type"] == "send_err" || v["type"] == "error"
        })
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    for cmid in [String::new(), "c".repeat(65)] {
        let f =
            json!({ "type": "send", "cmid": cmid, "to": "user:bob", "kind": "text", "body": "x" });
        alice.send(&f).await;
        let e = alice
            .expect_where(REPLY, "error/send_err for a bad cmid", |v| {
                v["type"] == "send_err" || v["type"] == "error"
            })
            .await;
        assert_eq!(
            e["code"],
            "bad_request",
            "cmid of {} bytes: {e}",
            cmid.len()
        );
    }
    let h = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(
        h["messages"],
        json!([]),
        "refused sends stored something: {h}"
    );
    // Any UTF-8 of 1-64 bytes is a cmid (only ids have a charset).
    let odd = "ünï cödé/:😀";
    let ack = alice.send_text(odd, "user:bob", "x").await;
    assert_eq!(ack["cmid"], odd);
    let h = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(h["messages"][0]["cmid"], odd, "{h}");
}

#[tokio::test]
async fn body_over_32_kib_is_too_large() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;
    for sp in SPS {
        let mut alice = s.login(sp, "alice", tag(sp)).await;
        let big = "x".repeat(40 * 1024);
        let e = alice
            .send_msg(&format!("big_{}", tag(sp)), "user:bob", "text", json!(big))
            .await;
        assert_eq!(e["type"], "send_err", "{sp:?}");
        assert_eq!(e["code"], "too_large", "{sp:?}: {e}");
        let big_obj = json!({ "url": "https://x/y", "blob": "y".repeat(33 * 1024) });
        let e = alice
            .send_msg(&format!("bigo_{}", tag(sp)), "user:bob", "custom", big_obj)
            .await;
        assert_eq!(e["code"], "too_large", "{sp:?}: {e}");
        // Just under the limit is fine: 30 KiB of text.
        let ok = "z".repeat(30 * 1024);
        let ack = alice
            .send_msg(&format!("ok_{}", tag(sp)), "user:bob", "text", json!(ok))
            .await;
        assert_eq!(ack["type"], "send_ack", "{sp:?}: {ack}");
        let m = bob
            .expect_msg("dm:alice:bob", ack["seq"].as_u64().expect("seq"))
            .await;
        assert_eq!(m["body"], json!(ok));
    }
    let h = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(
        h["messages"].as_array().expect("messages").len(),
        2,
        "only the two small ones are stored"
    );
}

#[tokio::test]
async fn every_kind_and_media_body_round_trips() {
    let s = Server::start(&[]).await;
    let bodies: Vec<(&str, Value)> = vec![
        ("text", json!("plain")),
        (
            "text",
            json!("ünïcödé ✓ 🐦 \"quotes\" \\ back\nslash \u{0001} \u{2028}"),
        ),
        ("text", json!("")),
        (
            "image",
            json!({ "url": "https://cdn.example/i.png", "mime": "image/png", "size": 123456, "name": "i.png", "w": 640, "h": 480 }),
        ),
        (
            "file",
            json!({ "url": "https://cdn.example/f.pdf", "mime": "application/pdf", "size": 9, "name": "f.pdf" }),
        ),
        (
            "voice",
            json!({ "url": "https://cdn.example/v.ogg", "mime": "audio/ogg", "size": 4000, "duration_ms": 3500 }),
        ),
        (
            "custom",
            json!({ "a": [1, 2.5, -3, null, true, false], "b": { "c": "d" }, "big": 9007199254740993u64 }),
        ),
        ("custom", json!([1, "two", { "three": 3 }])),
        ("custom", json!(null)),
        ("custom", json!(42)),
    ];
    for (i, (sa, sb)) in PAIRS.into_iter().enumerate() {
        let (a, b) = names(i);
        s.put_users(&[&a, &b]).await;
        let conv = dm(&a, &b);
        let mut alice = s.login(sa, &a, "phone").await;
        let mut bob = s.login(sb, &b, "phone").await;
        let mut pushed = Vec::new();
        for (k, (kind, body)) in bodies.iter().enumerate() {
            let cmid = format!("k{k}");
            let ack = alice
                .send_msg(&cmid, &format!("user:{b}"), kind, body.clone())
                .await;
            assert_eq!(ack["type"], "send_ack", "{kind} {body}: {ack}");
            let m = bob.expect_msg(&conv, k as u64 + 1).await;
            assert_msg(
                &m,
                Want {
                    conv: &conv,
                    seq: k as u64 + 1,
                    from: &a,
                    device: "phone",
                    cmid: &cmid,
                    kind,
                    body,
                },
            );
            pushed.push(m);
        }
        bob.ack(&conv, bodies.len() as u64).await;
        // sync returns exactly the pushed objects, in both encodings.
        let synced = alice.sync_all(&conv, 0).await;
        assert_eq!(synced, pushed, "{sa:?}/{sb:?}: sync differs from push");
    }
}
