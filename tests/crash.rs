//! PROTOCOL.md guarantees 1–3 across a crash: every acknowledged message
//! survives `kill -9`, seq continues at max_seq+1 (never reused, never
//! skipped), and dedup by (sender, cmid) survives the restart.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Messages sent before the crash in the main test.
const N_SENDS: usize = 200;

/// Sends in flight per client before reading acks: pipelining makes the
/// server group-commit, which is the path a crash must not break.
const WINDOW: usize = 25;

/// The pushed/synced object we expect for an acked send.
fn expected_msg(ack: &Value, from: &str, device: &str, kind: &str, body: &Value) -> Value {
    json!({
        "type": "msg", "conv": ack["conv"], "seq": ack["seq"], "from": from, "device": device,
        "cmid": ack["cmid"], "kind": kind, "body": body, "ts": ack["ts"],
    })
}

/// HTTP history entries compared without `type` (the history page may or may
/// not tag its entries; every other field must be identical).
fn untyped(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    v
}

struct Plan {
    cmid: String,
    to: String,
    kind: &'static str,
    body: Value,
}

/// A mixed workload for one sender: several convs, every kind.
fn plan(sender: &str, targets: &[&str], n: usize) -> Vec<Plan> {
    (0..n)
        .map(|i| {
            let (kind, body) = match i % 4 {
                0 => ("text", json!(format!("{sender} says {i} ✓"))),
                1 => ("image", json!({ "url": format!("https://cdn/{sender}/{i}.png"), "mime": "image/png", "size": i })),
                2 => ("custom", json!({ "i": i, "nested": { "list": [i, null, true] } })),
                _ => ("voice", json!({ "url": "https://cdn/v.ogg", "duration_ms": i * 10 })),
            };
            Plan { cmid: format!("{sender}-{i}"), to: targets[i % targets.len()].to_string(), kind, body }
        })
        .collect()
}

/// Sends `plan` pipelined `WINDOW` at a time; returns cmid → expected msg.
async fn run_plan(
    c: &mut Client,
    from: &str,
    device: &str,
    plan: &[Plan],
) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for chunk in plan.chunks(WINDOW) {
        for p in chunk {
            c.send(&json!({ "type": "send", "cmid": p.cmid, "to": p.to, "kind": p.kind, "body": p.body })).await;
        }
        for p in chunk {
            let ack = c.answer_to(&p.cmid).await;
            assert_eq!(ack["type"], "send_ack", "{ack}");
            out.insert(
                p.cmid.clone(),
                expected_msg(&ack, from, device, p.kind, &p.body),
            );
        }
    }
    out
}

#[tokio::test]
async fn acked_messages_survive_kill9_and_seq_continues() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob", "carol", "dave"]).await;
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut bob = s.login(Subprotocol::Rkyv, "bob", "phone").await;

    let alice_plan = plan(
        "alice",
        &["user:bob", "user:carol", "user:alice", "dm:alice:dave"],
        N_SENDS / 2,
    );
    let bob_plan = plan(
        "bob",
        &["user:alice", "user:carol", "user:dave", "dm:alice:bob"],
        N_SENDS / 2,
    );
    // Both senders at once, so dm:alice:bob is written from two shards' clients.
    let (a_sent, b_sent) = tokio::join!(
        run_plan(&mut alice, "alice", "phone", &alice_plan),
        run_plan(&mut bob, "bob", "phone", &bob_plan)
    );
    let mut by_conv: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for m in a_sent.values().chain(b_sent.values()) {
        let conv = m["conv"].as_str().expect("conv").to_string();
        let seq = m["seq"].as_u64().expect("seq");
        let prev = by_conv.entry(conv).or_default().insert(seq, m.clone());
        assert!(prev.is_none(), "seq assigned twice: {m} and {prev:?}");
    }
    assert_eq!(by_conv.values().map(|c| c.len()).sum::<usize>(), N_SENDS);
    // Each conv's acked seqs are exactly 1..=n (all sends were acked).
    for (conv, msgs) in &by_conv {
        let seqs: Vec<u64> = msgs.keys().copied().collect();
        assert_eq!(seqs, (1..=msgs.len() as u64).collect::<Vec<_>>(), "{conv}");
    }

    s.kill9();
    drop((alice, bob));
    s.restart().await;

    // Every acked (conv, seq) is there with identical fields, via HTTP.
    for (conv, msgs) in &by_conv {
        let h = s.history_all(conv).await;
        let got: Vec<Value> = h.iter().map(untyped).collect();
        let want: Vec<Value> = msgs.values().map(untyped).collect();
        assert_eq!(got, want, "HTTP history of {conv} after kill -9");
    }
    // ... and via sync, in both encodings, exactly as pushed.
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut bob = s.login(Subprotocol::Rkyv, "bob", "phone").await;
    for (conv, msgs) in &by_conv {
        let want: Vec<Value> = msgs.values().cloned().collect();
        let members: Vec<&str> = conv.trim_start_matches("dm:").split(':').collect();
        for (user, c) in [("alice", &mut alice), ("bob", &mut bob)] {
            if members.contains(&user) {
                let got = c.sync_all(conv, 0).await;
                assert_eq!(got, want, "sync of {conv} by {user} after kill -9");
            }
        }
    }
    // convs knows every max_seq.
    let convs = bob.convs().await;
    for c in convs["convs"].as_array().expect("convs") {
        let id = c["conv"].as_str().expect("conv");
        let n = by_conv.get(id).map_or(0, |m| m.len() as u64);
        assert_eq!(c["max_seq"], n, "{c}");
    }

    // New sends continue at max_seq + 1 in every conv.
    for (conv, msgs) in &by_conv {
        let members: Vec<&str> = conv.trim_start_matches("dm:").split(':').collect();
        let c = if members.contains(&"alice") {
            &mut alice
        } else {
            &mut bob
        };
        let ack = c
            .send_text(&format!("after-{conv}"), conv, "after restart")
            .await;
        assert_eq!(ack["seq"], msgs.len() as u64 + 1, "{conv}: {ack}");
    }

    // The same cmid after the restart gets the original ack.
    for (c, sent, first, to) in [
        (&mut alice, &a_sent, &alice_plan[0], "user:bob"),
        (&mut bob, &b_sent, &bob_plan[1], "user:carol"),
    ] {
        let orig = &sent[&first.cmid];
        let again = c
            .send_msg(&first.cmid, to, "text", json!("retry after crash"))
            .await;
        assert_eq!(again["type"], "send_ack", "{again}");
        assert_eq!(again["conv"], orig["conv"], "{again}");
        assert_eq!(again["seq"], orig["seq"], "{again}");
        assert_eq!(again["ts"], orig["ts"], "{again}");
    }
}

#[tokio::test]
async fn crash_with_sends_in_flight_loses_no_ack_and_leaves_no_gap() {
    /// Sends per sender; the crash comes after `ACKED_BEFORE_CRASH` acks in total.
    const PER_SENDER: usize = 150;
    const ACKED_BEFORE_CRASH: usize = 100;
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob", "carol"]).await;
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut carol = s.login(Subprotocol::Rkyv, "carol", "phone").await;
    let conv = "dm:alice:bob";
    let conv_c = "dm:bob:carol";
    let a_plan = plan("alice", &["user:bob"], PER_SENDER);
    let c_plan = plan("carol", &["user:bob"], PER_SENDER);
    // Everything goes out at once, nothing waits for an ack.
    for (a, c) in a_plan.iter().zip(&c_plan) {
        alice.send(&json!({ "type": "send", "cmid": a.cmid, "to": a.to, "kind": a.kind, "body": a.body })).await;
        carol.send(&json!({ "type": "send", "cmid": c.cmid, "to": c.to, "kind": c.kind, "body": c.body })).await;
    }
    let mut acked: HashMap<String, Value> = HashMap::new();
    let mut a_idx = 0;
    let mut c_idx = 0;
    while acked.len() < ACKED_BEFORE_CRASH {
        let (c, p, idx, from) = if a_idx <= c_idx {
            (&mut alice, &a_plan, &mut a_idx, "alice")
        } else {
            (&mut carol, &c_plan, &mut c_idx, "carol")
        };
        let ack = c.answer_to(&p[*idx].cmid).await;
        assert_eq!(ack["type"], "send_ack", "{ack}");
        acked.insert(
            p[*idx].cmid.clone(),
            expected_msg(&ack, from, "phone", p[*idx].kind, &p[*idx].body),
        );
        *idx += 1;
    }
    s.kill9();
    drop((alice, carol));
    s.restart().await;

    let all_plans: HashMap<&str, &Plan> = a_plan
        .iter()
        .chain(&c_plan)
        .map(|p| (p.cmid.as_str(), p))
        .collect();
    let mut stored_by_cmid: HashMap<String, Value> = HashMap::new();
    for cv in [conv, conv_c] {
        let h = s.history_all(cv).await;
        // Contiguous from 1: no gap, no reuse.
        for (i, m) in h.iter().enumerate() {
            assert_eq!(m["seq"], i as u64 + 1, "{cv}: gap or reuse at {m}");
            let cmid = m["cmid"].as_str().expect("cmid").to_string();
            let p = all_plans
                .get(cmid.as_str())
                .unwrap_or_else(|| panic!("unknown entry {m}"));
            assert_eq!(m["body"], p.body, "{m}");
            assert_eq!(m["kind"], p.kind, "{m}");
            let dup = stored_by_cmid.insert(cmid, m.clone());
            assert!(dup.is_none(), "stored twice: {m}");
        }
    }
    // Every acked message is there, unchanged.
    for (cmid, want) in &acked {
        let got = stored_by_cmid
            .get(cmid)
            .unwrap_or_else(|| panic!("acked {cmid} lost: {want}"));
        assert_eq!(untyped(got), untyped(want));
    }

    // Resend everything: stored ones dedup to their seq, the rest get the
    // next seqs, so each conv ends as exactly 1..=PER_SENDER, every cmid once.
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut carol = s.login(Subprotocol::Rkyv, "carol", "phone").await;
    let a_again = run_plan(&mut alice, "alice", "phone", &a_plan).await;
    let c_again = run_plan(&mut carol, "carol", "phone", &c_plan).await;
    for (cmid, m) in a_again.iter().chain(&c_again) {
        if let Some(stored) = stored_by_cmid.get(cmid) {
            assert_eq!(
                m["seq"], stored["seq"],
                "{cmid}: dedup lost across the crash"
            );
            assert_eq!(m["ts"], stored["ts"], "{cmid}");
        }
    }
    for (cv, from) in [(conv, "alice"), (conv_c, "carol")] {
        let h = s.history_all(cv).await;
        assert_eq!(h.len(), PER_SENDER, "{cv}");
        let mut cmids: Vec<String> = h
            .iter()
            .map(|m| m["cmid"].as_str().expect("cmid").to_string())
            .collect();
        cmids.sort();
        let mut want: Vec<String> = (0..PER_SENDER).map(|i| format!("{from}-{i}")).collect();
        want.sort();
        assert_eq!(cmids, want, "{cv}: every cmid exactly once");
        for (i, m) in h.iter().enumerate() {
            assert_eq!(m["seq"], i as u64 + 1, "{cv}");
        }
    }
    let ack = alice.send_text("last", "user:bob", "x").await;
    assert_eq!(ack["seq"], PER_SENDER as u64 + 1);
}

#[tokio::test]
async fn http_acked_messages_survive_kill9() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut acked = Vec::new();
    for i in 0..20u64 {
        let body = if i % 2 == 0 {
            json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": format!("h{i}"), "cmid": format!("h{i}") })
        } else {
            json!({ "to": "dm:alice:bob", "kind": "custom", "body": { "i": i }, "cmid": format!("h{i}") })
        };
        let (st, v) = s.post_message(body.clone()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["seq"], i + 1, "{v}");
        acked.push((body, v));
    }
    s.kill9();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.restart().await;
    let h = s.history_all("dm:alice:bob").await;
    assert_eq!(h.len(), acked.len());
    for ((sent, ack), got) in acked.iter().zip(&h) {
        assert_eq!(got["seq"], ack["seq"]);
        assert_eq!(got["ts"], ack["ts"]);
        assert_eq!(got["body"], sent["body"]);
        assert_eq!(got["cmid"], sent["cmid"]);
        let from = sent.get("from").and_then(Value::as_str).unwrap_or("system");
        assert_eq!(got["from"], from, "{got}");
    }
    // HTTP dedup survives too.
    let (st, v) = s.post_message(acked[3].0.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(v, acked[3].1);
}
