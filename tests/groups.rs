//! Groups over WebSocket (PROTOCOL.md "Group event codes", `notice`,
//! guarantees 2 and 6): fan-out to many devices on both shards and both
//! subprotocols, events in the timeline between messages, a removal racing
//! with sends, authorisation, large-group notices, receipts, typing, `convs`,
//! crash recovery and the per-connection send rate limit.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn seqs(vs: &[Value]) -> Vec<u64> {
    vs.iter().map(seq_of).collect()
}

/// Asserts every field of a group `event` (ts only for recency).
fn assert_event(v: &Value, conv: &str, seq: u64, code: u64, data: Value) {
    let mut got = v.clone();
    let ts = got
        .as_object_mut()
        .and_then(|o| o.remove("ts"))
        .unwrap_or(Value::Null);
    assert_ts_recent(&ts, "event.ts");
    assert_eq!(
        got,
        json!({ "type": "event", "conv": conv, "seq": seq, "code": code, "data": data }),
        "event"
    );
}

/// The `msg` a send produced, as every receiving device must see it.
fn want_msg(conv: &str, ack: &Value, from: &str, device: &str, cmid: &str, body: &str) -> Value {
    json!({
        "type": "msg", "conv": conv, "seq": ack["seq"], "from": from, "device": device,
        "cmid": cmid, "kind": "text", "body": body, "ts": ack["ts"],
    })
}

/// The next timeline entry of `conv` at `c`, acknowledged at once.
async fn next_entry(c: &mut Client, conv: &str) -> Value {
    let e = c.entries(conv, 1, REPLY).await.remove(0);
    c.ack(conv, seq_of(&e)).await;
    e
}

/// The error frame answering the last request.
async fn expect_error(c: &mut Client, code: &str, what: &str) {
    let e = c.expect("error", REPLY).await;
    assert_eq!(e["code"], code, "{}: {what}: {e}", c.label);
}

// ---------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------

/// Members of the fan-out group; each has two devices, so 60 connections,
/// which the user-id hash spreads over both shards.
const FAN_USERS: usize = 30;
/// Members that send in the fan-out test, each from one device.
const FAN_SENDERS: usize = 4;
/// Messages each sender pipelines.
const FAN_PER_SENDER: usize = 8;

#[tokio::test]
async fn group_send_reaches_every_member_device_once_in_seq_order() {
    let s = Server::start(&[]).await;
    let users: Vec<String> = (0..FAN_USERS).map(|i| format!("fan{i:02}")).collect();
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    s.put_users(&ids).await;
    // devs[2i] is user i's phone, devs[2i+1] its tablet; the two devices of
    // a user speak different subprotocols.
    let mut devs: Vec<Client> = Vec::with_capacity(2 * FAN_USERS);
    for (i, u) in users.iter().enumerate() {
        devs.push(s.login(SPS[i % 2], u, "phone").await);
        devs.push(s.login(SPS[(i + 1) % 2], u, "tablet").await);
    }
    let device_of = |k: usize| ["phone", "tablet"][k % 2];

    // Both shards hold connections, so the fan-out crosses the mesh.
    let deadline = Instant::now() + REPLY;
    loop {
        let m = s.metrics_text().await;
        let s0 = metric(&m, "tern_connections{shard=\"0\"}").unwrap_or(0.0);
        let s1 = metric(&m, "tern_connections{shard=\"1\"}").unwrap_or(0.0);
        if s0 >= 1.0 && s1 >= 1.0 && s0 + s1 >= (2 * FAN_USERS) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections not on both shards: shard 0 {s0}, shard 1 {s1}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let conv = group_conv("fan");
    let g = s.put_group("fan", Some("fan"), &ids).await;
    assert_eq!(g["group"], "fan", "{g}");
    assert_eq!(g["name"], "fan", "{g}");
    assert_eq!(g["members_count"], FAN_USERS as u64, "{g}");
    assert_ts_recent(&g["created_ts"], "created_ts");

    // Every device of every member gets the creation event, seq 1.
    let created = json!({ "name": "fan", "users": ids });
    join_all(devs.iter_mut().map(|c| {
        let (conv, created) = (conv.as_str(), created.clone());
        async move {
            let e = next_entry(c, conv).await;
            assert_event(&e, conv, 1, 1501, created);
        }
    }))
    .await;

    // Several members send at once, each pipelining its messages.
    let senders: Vec<usize> = (0..FAN_SENDERS).map(|k| 2 * k + k % 2).collect();
    for &d in &senders {
        for j in 0..FAN_PER_SENDER {
            let f = json!({ "type": "send", "cmid": format!("c{d}-{j}"), "to": conv, "kind": "text", "body": format!("d{d} #{j}") });
            devs[d].send(&f).await;
        }
    }
    let mut want: HashMap<u64, Value> = HashMap::new();
    for &d in &senders {
        let mut last = 0;
        for j in 0..FAN_PER_SENDER {
            let cmid = format!("c{d}-{j}");
            let ack = devs[d].answer_to(&cmid).await;
            assert_eq!(ack["type"], "send_ack", "{ack}");
            assert_eq!(ack["conv"], conv.as_str(), "{ack}");
            // One connection's sends to one conv keep their order.
            assert!(seq_of(&ack) > last, "seq went backwards: {ack}");
            last = seq_of(&ack);
            let m = want_msg(
                &conv,
                &ack,
                &users[d / 2],
                device_of(d),
                &cmid,
                &format!("d{d} #{j}"),
            );
            assert!(
                want.insert(last, m).is_none(),
                "seq {last} handed out twice"
            );
        }
    }
    // A business system posts into the group too.
    let (st, v) = s
        .post_message(json!({ "to": conv, "kind": "text", "body": "sys", "cmid": "sys-1" }))
        .await;
    assert_eq!(st, 200, "system send: {v}");
    assert_eq!(v["conv"], conv.as_str(), "{v}");
    want.insert(
        seq_of(&v),
        want_msg(&conv, &v, "system", "", "sys-1", "sys"),
    );
    let last = (FAN_SENDERS * FAN_PER_SENDER) as u64 + 2;
    let mut all: Vec<u64> = want.keys().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (2..=last).collect::<Vec<_>>(), "seqs without gaps");

    // Each device gets every message once, in seq order, except those its
    // own `send`s produced; the sender's other device gets those too.
    let (want, users) = (&want, &users);
    join_all(devs.iter_mut().enumerate().map(|(k, c)| {
        let conv = conv.as_str();
        async move {
            let me = (users[k / 2].as_str(), device_of(k));
            let exp: Vec<u64> = (2..=last)
                .filter(|q| !(want[q]["from"] == me.0 && want[q]["device"] == me.1))
                .collect();
            let got = c.entries(conv, exp.len(), REPLY).await;
            assert_eq!(seqs(&got), exp, "{}: seqs received", c.label);
            for m in &got {
                assert_eq!(m, &want[&seq_of(m)], "{}: pushed msg", c.label);
            }
            c.ack(conv, last).await;
            c.quiet(&["msg", "event"], QUIET).await;
        }
    }))
    .await;
}

// ---------------------------------------------------------------------------
// Events in the timeline
// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_and_messages_share_one_timeline_and_reach_the_right_members() {
    let s = Server::start(&[]).await;
    let (a, b, c, x) = ("eva", "evb", "evc", "evx");
    s.put_users(&[a, b, c, x]).await;
    let conv = group_conv("ev");
    let conv = conv.as_str();
    let mut a_phone = s.login(Subprotocol::Json, a, "phone").await;
    let mut a_tab = s.login(Subprotocol::Rkyv, a, "tablet").await;
    let mut bc = s.login(Subprotocol::Rkyv, b, "phone").await;
    let mut cc = s.login(Subprotocol::Json, c, "phone").await;
    let mut xc = s.login(Subprotocol::Json, x, "phone").await;

    // Every step's entry goes to exactly the listed devices, as the next
    // entry each of them sees; a_tab (in the group throughout and never the
    // sending device) gets all of them and is the reference copy.
    let mut timeline: Vec<Value> = Vec::new();

    // 1: created with a and b → 1501 to the members after the change.
    let g = s.put_group("ev", Some("Team"), &[a, b]).await;
    assert_eq!(g["members_count"], 2, "{g}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_event(
        &e,
        conv,
        1,
        1501,
        json!({ "name": "Team", "users": [a, b] }),
    );
    for cl in [&mut a_phone, &mut bc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // 2: c added → 1509 to the members after it (c included).
    let (st, v) = s.change_members("ev", &[c], &[]).await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 3 })), "{v}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_event(&e, conv, 2, 1509, json!({ "users": [c] }));
    for cl in [&mut a_phone, &mut bc, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // 3: a message from a's phone → everyone but the sending device.
    let ack = a_phone.send_text("m3", conv, "three").await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_eq!(e, want_msg(conv, &ack, a, "phone", "m3", "three"));
    for cl in [&mut bc, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // 4: renamed → 1502; a PUT without members keeps them.
    let (st, v) = s
        .request("PUT", "/v1/groups/ev", Some(json!({ "name": "Team2" })))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "Team2", "{v}");
    assert_eq!(v["members_count"], 3, "{v}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_event(&e, conv, 4, 1502, json!({ "name": "Team2" }));
    for cl in [&mut a_phone, &mut bc, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // 5: b removed → 1508 to the members before it: b learns it.
    let (st, v) = s.change_members("ev", &[], &[b]).await;
    assert_eq!((st, v.clone()), (200, json!({ "members_count": 2 })), "{v}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_event(&e, conv, 5, 1508, json!({ "users": [b] }));
    for cl in [&mut a_phone, &mut bc, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // 6: the next message no longer reaches b.
    let ack = a_phone.send_text("m6", conv, "six").await;
    assert_eq!(ack["seq"], 6, "{ack}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_eq!(e, want_msg(conv, &ack, a, "phone", "m6", "six"));
    assert_eq!(next_entry(&mut cc, conv).await, e);
    timeline.push(e);

    // 7: a system message reaches every member device, a's phone included.
    let (st, v) = s
        .post_message(json!({ "to": conv, "kind": "text", "body": "sys", "cmid": "s7" }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 7, "{v}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_eq!(e, want_msg(conv, &v, "system", "", "s7", "sys"));
    for cl in [&mut a_phone, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }
    timeline.push(e);

    // The removed member: no reads, no writes, no longer listed.
    let r = bc.sync(conv, 0, None).await;
    assert_eq!(r["type"], "error", "removed member's sync: {r}");
    assert_eq!(r["code"], "not_member", "{r}");
    let r = bc.send_msg("b1", conv, "text", json!("let me in")).await;
    assert_eq!(r["type"], "send_err", "{r}");
    assert_eq!(r["code"], "not_member", "{r}");
    let listed = bc.conv_summary(conv).await;
    assert!(listed.is_none(), "removed member still lists {listed:?}");

    // sync and history hold exactly the pushed objects, c's view included
    // (a member reads the whole timeline, from before it joined too).
    let synced = cc.sync_all(conv, 0).await;
    assert_eq!(synced, timeline, "sync = what was pushed");
    let synced = a_phone.sync_all(conv, 3).await;
    assert_eq!(synced, timeline[3..], "sync after 3");
    let hist = s.history_all(conv).await;
    assert_eq!(hist, timeline, "HTTP history = what was pushed");
    let sum = cc.conv_summary(conv).await.expect("c lists the group");
    assert_eq!(sum["max_seq"], 7, "{sum}");

    // 8: dismissed → 1520 to the members before it.
    let (st, v) = s.request("DELETE", "/v1/groups/ev", None).await;
    assert_eq!(st, 204, "{v}");
    let e = next_entry(&mut a_tab, conv).await;
    assert_event(&e, conv, 8, 1520, json!({}));
    for cl in [&mut a_phone, &mut cc] {
        assert_eq!(next_entry(cl, conv).await, e, "{}", cl.label);
    }

    // Nobody got anything more; the outsider got nothing at all.
    let types = ["msg", "event"];
    tokio::join!(
        a_phone.quiet(&types, QUIET),
        a_tab.quiet(&types, QUIET),
        bc.quiet(&types, QUIET),
        cc.quiet(&types, QUIET),
        xc.quiet(&types, QUIET),
    );
    // A dismissed group is gone.
    let r = a_phone.send_msg("a9", conv, "text", json!("hello?")).await;
    assert_eq!(r["code"], "no_such_group", "{r}");
    let (st, v) = s.request("GET", "/v1/groups/ev", None).await;
    assert_eq!(st, 404, "{v}");
    assert!(
        a_phone.conv_summary(conv).await.is_none(),
        "dismissed group listed"
    );
}

// ---------------------------------------------------------------------------
// Removal racing with sends
// ---------------------------------------------------------------------------

/// Messages per pipelined chunk of the racing sender.
const RACE_CHUNK: usize = 10;
/// Chunks acknowledged before the removal is started.
const RACE_CHUNKS_BEFORE: usize = 3;
/// Chunks sent after the removal answered (surely sequenced after it).
const RACE_CHUNKS_AFTER: usize = 2;
/// Bound on chunks, in case the removal never answers.
const RACE_CHUNKS_MAX: usize = 40;

#[tokio::test]
async fn a_member_removed_during_a_send_stream_gets_nothing_after_its_1508() {
    // No rate limit in the way of the stream.
    let s = Server::start(&["--send-rate-per-s", "1000000", "--send-burst", "1000000"]).await;
    let (snd, rm, wit) = ("rsend", "rgone", "rwit");
    s.put_users(&[snd, rm, wit]).await;
    let conv = group_conv("race");
    let conv = conv.as_str();
    let mut sc = s.login(Subprotocol::Json, snd, "phone").await;
    let mut r_phone = s.login(Subprotocol::Rkyv, rm, "phone").await;
    let mut r_tab = s.login(Subprotocol::Json, rm, "tablet").await;
    let mut wc = s.login(Subprotocol::Rkyv, wit, "phone").await;
    s.put_group("race", None, &[snd, rm, wit]).await;
    for cl in [&mut sc, &mut r_phone, &mut r_tab, &mut wc] {
        let e = next_entry(cl, conv).await;
        assert_eq!(e["code"], 1501, "{e}");
    }

    let chunks_done = Cell::new(0usize);
    let removed = Cell::new(false);
    let mut acked: Vec<u64> = Vec::new();
    let sender = async {
        let mut after = 0;
        for k in 0..RACE_CHUNKS_MAX {
            for j in 0..RACE_CHUNK {
                let f = json!({ "type": "send", "cmid": format!("k{k}-{j}"), "to": conv, "kind": "text", "body": format!("{k}/{j}") });
                sc.send(&f).await;
            }
            for j in 0..RACE_CHUNK {
                let a = sc.answer_to(&format!("k{k}-{j}")).await;
                assert_eq!(a["type"], "send_ack", "{a}");
                acked.push(seq_of(&a));
            }
            chunks_done.set(k + 1);
            if removed.get() {
                after += 1;
                if after == RACE_CHUNKS_AFTER {
                    return;
                }
            }
        }
        panic!("the removal did not answer within {RACE_CHUNKS_MAX} chunks");
    };
    let remover = async {
        while chunks_done.get() < RACE_CHUNKS_BEFORE {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (st, v) = s.change_members("race", &[], &[rm]).await;
        assert_eq!(st, 200, "remove: {v}");
        removed.set(true);
    };
    tokio::join!(sender, remover);

    let n = acked.len() as u64;
    let max = n + 2; // 1501, the messages, 1508
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, acked, "one connection's sends keep their order");

    // The witness sees the whole timeline, the 1508 somewhere inside it.
    let got = wc.entries(conv, n as usize + 1, REPLY).await;
    assert_eq!(seqs(&got), (2..=max).collect::<Vec<_>>(), "witness seqs");
    let removal = got
        .iter()
        .find(|e| e["type"] == "event")
        .expect("witness got the 1508");
    assert_event(
        removal,
        conv,
        seq_of(removal),
        1508,
        json!({ "users": [rm] }),
    );
    let cut = seq_of(removal);
    let before = (RACE_CHUNKS_BEFORE * RACE_CHUNK) as u64 + 1;
    assert!(
        cut > before && cut < max,
        "1508 at {cut}: expected after {before} and before {max}"
    );
    wc.ack(conv, max).await;

    // Each of the removed member's devices gets everything up to the 1508
    // and nothing after it.
    for cl in [&mut r_phone, &mut r_tab] {
        let got = cl.entries(conv, cut as usize - 1, REPLY).await;
        assert_eq!(seqs(&got), (2..=cut).collect::<Vec<_>>(), "{}", cl.label);
        assert_eq!(got.last(), Some(removal), "{}", cl.label);
        cl.ack(conv, cut).await;
    }
    tokio::join!(
        r_phone.quiet(&["msg", "event"], QUIET),
        r_tab.quiet(&["msg", "event"], QUIET)
    );
    // And can neither read nor write any more.
    for cl in [&mut r_phone, &mut r_tab] {
        let r = cl.sync(conv, 0, None).await;
        assert_eq!(r["type"], "error", "{}: sync after removal: {r}", cl.label);
        assert_eq!(r["code"], "not_member", "{r}");
        let r = cl.send_msg("late", conv, "text", json!("x")).await;
        assert_eq!(r["type"], "send_err", "{r}");
        assert_eq!(r["code"], "not_member", "{r}");
    }

    // Added back: the 1509 reaches it, and reads and writes work again.
    let (st, v) = s.change_members("race", &[rm], &[]).await;
    assert_eq!(st, 200, "re-add: {v}");
    let back = next_entry(&mut wc, conv).await;
    assert_event(&back, conv, max + 1, 1509, json!({ "users": [rm] }));
    for cl in [&mut r_phone, &mut r_tab] {
        assert_eq!(next_entry(cl, conv).await, back, "{}", cl.label);
    }
    let all = r_tab.sync_all(conv, 0).await;
    assert_eq!(seqs(&all), (1..=max + 1).collect::<Vec<_>>());
    let ack = r_phone.send_text("back", conv, "back").await;
    assert_eq!(ack["seq"], max + 2, "{ack}");
    assert_eq!(next_entry(&mut r_tab, conv).await["cmid"], "back");
}

// ---------------------------------------------------------------------------
// Authorisation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn non_members_and_unknown_groups_are_refused() {
    let s = Server::start(&[]).await;
    let (m, x) = ("nmem", "nout");
    s.put_users(&[m, x]).await;
    s.put_group("priv", None, &[m]).await;
    let conv = "group:priv";
    let mut mc = s.login(Subprotocol::Json, m, "phone").await;
    // convs lists a group with nothing but its creation event.
    let sum = mc.conv_summary(conv).await;
    assert_eq!(
        sum,
        Some(json!({ "conv": conv, "max_seq": 1, "read_seq": 0, "unread": 1 })),
        "a new group in convs"
    );
    for sp in SPS {
        let mut xc = s.login(sp, x, &format!("d{}", tag(sp))).await;
        let r = xc.send_msg("x1", conv, "text", json!("hi")).await;
        assert_eq!(r["type"], "send_err", "{}: {r}", xc.label);
        assert_eq!(r["code"], "not_member", "{}: {r}", xc.label);
        let r = xc.sync(conv, 0, None).await;
        assert_eq!(r["type"], "error", "{}: {r}", xc.label);
        assert_eq!(r["code"], "not_member", "{}: {r}", xc.label);
        xc.read(conv, 1).await;
        expect_error(&mut xc, "not_member", "read").await;
        xc.typing(conv).await;
        expect_error(&mut xc, "not_member", "typing").await;

        let r = xc.send_msg("x2", "group:nosuch", "text", json!("hi")).await;
        assert_eq!(r["type"], "send_err", "{r}");
        assert_eq!(r["code"], "no_such_group", "{r}");
        let r = xc.sync("group:nosuch", 0, None).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], "no_such_group", "{r}");
        // The connection is fine after all that.
        xc.ping().await;
        assert!(
            xc.conv_summary(conv).await.is_none(),
            "outsider lists the group"
        );

        // A member's message does not leak to the outsider.
        mc.send_text(&format!("m{}", tag(sp)), conv, "secret").await;
        xc.quiet(&["msg", "event"], QUIET).await;
    }

    // The same rules over HTTP.
    let (st, v) = s
        .post_message(json!({ "from": x, "to": conv, "kind": "text", "body": "hi" }))
        .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "not_member", "{v}");
    for body in [
        json!({ "to": "group:nosuch", "kind": "text", "body": "hi" }),
        json!({ "from": m, "to": "group:nosuch", "kind": "text", "body": "hi" }),
    ] {
        let (st, v) = s.post_message(body.clone()).await;
        assert_eq!(st, 404, "{body}: {v}");
        assert_eq!(v["error"]["code"], "no_such_group", "{v}");
    }
    // Nothing of the refused sends was stored: 1501 and the two messages.
    let all = s.history_all(conv).await;
    assert_eq!(seqs(&all), [1, 2, 3]);
    assert!(all[1..].iter().all(|e| e["from"] == m), "{all:?}");
}

// ---------------------------------------------------------------------------
// Large groups
// ---------------------------------------------------------------------------

/// Members of the large group; the server runs with threshold 5.
const LARGE_MEMBERS: usize = 8;
/// Messages of the burst.
const BURST: u64 = 20;
/// Smallest gap accepted between two notices to one device: the server
/// sends at most one per second; client-side scheduling jitter may shorten
/// the observed gap a little, never to the few milliseconds between
/// messages that a notice per message would show.
const NOTICE_GAP_MIN: Duration = Duration::from_millis(700);

/// Notices of `conv` at `c` until one carries `max_seq` (within `bound`),
/// with their arrival times. No msg/event of `conv` may arrive meanwhile.
async fn notices_until(
    c: &mut Client,
    conv: &str,
    max_seq: u64,
    bound: Duration,
) -> Vec<(Instant, Value)> {
    let deadline = Instant::now() + bound;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = c.expect_in("notice", conv, left).await;
        out.push((Instant::now(), v.clone()));
        assert!(
            !c.inbox().iter().any(|f| is_entry_of(f, conv)),
            "{}: full entries while idle: {:?}",
            c.label,
            c.inbox()
        );
        assert_eq!(
            v,
            json!({ "type": "notice", "conv": conv, "max_seq": v["max_seq"] }),
            "notice shape"
        );
        let got = v["max_seq"].as_u64().expect("max_seq");
        assert!(got <= max_seq, "{}: notice beyond max: {v}", c.label);
        if got == max_seq {
            return out;
        }
    }
}

#[tokio::test]
async fn large_group_idle_devices_get_rate_limited_notices_active_ones_get_msgs() {
    let s = Server::start(&["--large-group-threshold", "5"]).await;
    let users: Vec<String> = (0..LARGE_MEMBERS).map(|i| format!("lg{i}")).collect();
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    s.put_users(&ids).await;
    // Created before anyone connects: nobody has a notice slot used yet.
    s.put_group("big", None, &ids).await;
    let conv = group_conv("big");
    let conv = conv.as_str();
    let mut sender = s.login(Subprotocol::Json, ids[0], "phone").await;
    let mut active = s.login(Subprotocol::Rkyv, ids[1], "phone").await;
    let mut idle_j = s.login(Subprotocol::Json, ids[2], "phone").await;
    let mut idle_r = s.login(Subprotocol::Rkyv, ids[3], "phone").await;

    // A sync makes a device active in the group.
    let r = active.sync(conv, 0, None).await;
    assert_eq!(
        seqs(r["messages"].as_array().expect("messages")),
        [1],
        "{r}"
    );

    // One message: the active device gets it in full, idle ones a notice at once.
    let ack = sender.send_text("one", conv, "one").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let m = next_entry(&mut active, conv).await;
    assert_eq!(m, want_msg(conv, &ack, ids[0], "phone", "one", "one"));
    let (fj, fr) = tokio::join!(
        notices_until(&mut idle_j, conv, 2, REPLY),
        notices_until(&mut idle_r, conv, 2, REPLY)
    );
    assert_eq!(
        (fj.len(), fr.len()),
        (1, 1),
        "one notice each: {fj:?} {fr:?}"
    );

    // A burst: the active device gets every msg; the idle ones at most one
    // notice per second, the last one carrying the final max seq.
    let start = Instant::now();
    for k in 0..BURST {
        let f = json!({ "type": "send", "cmid": format!("b{k}"), "to": conv, "kind": "text", "body": format!("b{k}") });
        sender.send(&f).await;
    }
    for k in 0..BURST {
        let a = sender.answer_to(&format!("b{k}")).await;
        assert_eq!(a["type"], "send_ack", "{a}");
    }
    let last = 2 + BURST;
    let got = active.entries(conv, BURST as usize, REPLY).await;
    assert_eq!(seqs(&got), (3..=last).collect::<Vec<_>>());
    active.ack(conv, last).await;
    let bound = Duration::from_secs(4);
    let (nj, nr) = tokio::join!(
        notices_until(&mut idle_j, conv, last, bound),
        notices_until(&mut idle_r, conv, last, bound)
    );
    let elapsed = start.elapsed();
    for (first, later, label) in [(&fj, &nj, &idle_j.label), (&fr, &nr, &idle_r.label)] {
        let all: Vec<&(Instant, Value)> = first.iter().chain(later.iter()).collect();
        for w in all.windows(2) {
            let gap = w[1].0.duration_since(w[0].0);
            assert!(
                gap >= NOTICE_GAP_MIN,
                "{label}: notices {} and {} only {gap:?} apart",
                w[0].1,
                w[1].1
            );
            assert!(
                w[1].1["max_seq"].as_u64() > w[0].1["max_seq"].as_u64(),
                "{label}: max_seq did not grow"
            );
        }
        let allowed = elapsed.as_secs() as usize + 2;
        assert!(
            later.len() <= allowed,
            "{label}: {} notices in {elapsed:?}",
            later.len()
        );
    }
    // Nothing new: no more notices, and never a msg.
    tokio::join!(
        idle_j.quiet(&["notice", "msg", "event"], Duration::from_millis(1300)),
        idle_r.quiet(&["notice", "msg", "event"], Duration::from_millis(1300))
    );
    assert!(
        !active.inbox().iter().any(|f| f["type"] == "notice"),
        "the active device got a notice: {:?}",
        active.inbox()
    );

    // The notice's promise holds: a sync finds everything...
    let all = idle_j.sync_all(conv, 0).await;
    assert_eq!(seqs(&all), (1..=last).collect::<Vec<_>>());
    assert_event(
        &all[0],
        conv,
        1,
        1501,
        json!({ "name": null, "users": ids }),
    );
    assert_eq!(all[1], m, "sync returns the pushed object");
    // ...and the sync made that device active: the next message comes in
    // full there, while the other idle device gets a notice.
    let ack = sender.send_text("after", conv, "after").await;
    let m = next_entry(&mut idle_j, conv).await;
    assert_eq!(m, want_msg(conv, &ack, ids[0], "phone", "after", "after"));
    let n = notices_until(&mut idle_r, conv, last + 1, REPLY).await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(next_entry(&mut active, conv).await, m);

    // Above the threshold a read goes to the reader's other devices only.
    active.read(conv, last + 1).await;
    tokio::join!(
        idle_j.quiet(&["receipt", "notice"], QUIET),
        idle_r.quiet(&["receipt"], QUIET),
        sender.quiet(&["receipt"], QUIET)
    );
    // A read makes a device active too.
    idle_r.read(conv, last + 1).await;
    idle_r.ping().await;
    let ack = sender.send_text("read", conv, "read").await;
    let m = next_entry(&mut idle_r, conv).await;
    assert_eq!(m, want_msg(conv, &ack, ids[0], "phone", "read", "read"));
    idle_r.quiet(&["notice"], QUIET).await;
}

// ---------------------------------------------------------------------------
// Receipts, typing, convs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn receipts_typing_and_convs_in_a_small_group() {
    let s = Server::start(&[]).await;
    let (a, b, c, d) = ("rca", "rcb", "rcc", "rcd");
    s.put_users(&[a, b, c, d]).await;
    s.put_group("rc", Some("rc"), &[a, b, c]).await;
    let conv = "group:rc";
    let mut a_phone = s.login(Subprotocol::Json, a, "phone").await;
    let mut a_tab = s.login(Subprotocol::Rkyv, a, "tablet").await;
    let mut b_phone = s.login(Subprotocol::Rkyv, b, "phone").await;
    let mut b_tab = s.login(Subprotocol::Json, b, "tablet").await;
    let mut cc = s.login(Subprotocol::Json, c, "phone").await;
    let mut dc = s.login(Subprotocol::Rkyv, d, "phone").await;
    for k in 0..3 {
        let ack = a_phone.send_text(&format!("r{k}"), conv, "x").await;
        assert_eq!(ack["seq"], k + 2, "{ack}");
    }
    for cl in [&mut a_tab, &mut b_phone, &mut b_tab, &mut cc] {
        let got = cl.entries(conv, 3, REPLY).await;
        assert_eq!(seqs(&got), [2, 3, 4], "{}", cl.label);
        cl.ack(conv, 4).await;
    }

    // b's phone reads up to 3: every other device of every member hears it.
    b_phone.read(conv, 3).await;
    let want = json!({ "type": "receipt", "conv": conv, "user": b, "read_seq": 3 });
    for cl in [&mut b_tab, &mut a_phone, &mut a_tab, &mut cc] {
        let r = cl.expect("receipt", REPLY).await;
        assert_eq!(r, want, "{}", cl.label);
    }
    tokio::join!(
        b_phone.quiet(&["receipt"], QUIET),
        dc.quiet(&["receipt"], QUIET)
    );

    // Typing reaches the other members, not the typer's other devices.
    a_phone.typing(conv).await;
    let want = json!({ "type": "typing", "conv": conv, "user": a });
    for cl in [&mut b_phone, &mut b_tab, &mut cc] {
        let t = cl.expect("typing", REPLY).await;
        assert_eq!(t, want, "{}", cl.label);
    }
    tokio::join!(
        a_phone.quiet(&["typing"], QUIET),
        a_tab.quiet(&["typing"], QUIET),
        dc.quiet(&["typing"], QUIET)
    );

    // convs: the group with its max seq and each member's own read position.
    let sb = b_tab.conv_summary(conv).await;
    assert_eq!(
        sb,
        Some(json!({ "conv": conv, "max_seq": 4, "read_seq": 3, "unread": 1 })),
        "b's convs"
    );
    let sc = cc.conv_summary(conv).await;
    assert_eq!(
        sc,
        Some(json!({ "conv": conv, "max_seq": 4, "read_seq": 0, "unread": 4 })),
        "c's convs"
    );
    assert!(dc.conv_summary(conv).await.is_none(), "non-member lists it");
    // A read never lowers the position.
    cc.read(conv, 4).await;
    let r = b_phone
        .expect_where(REPLY, "c's receipt", |v| {
            v["type"] == "receipt" && v["user"] == c && v["read_seq"] == 4
        })
        .await;
    assert_eq!(r["conv"], conv, "{r}");
    cc.read(conv, 2).await;
    // Whether a lower read is announced is open; wait for it if it is.
    let _ = b_phone
        .try_expect_where(REPLY, |v| {
            v["type"] == "receipt" && v["user"] == c && v["read_seq"] == 2
        })
        .await;
    let sc = cc.conv_summary(conv).await.expect("listed");
    assert_eq!(
        (sc["read_seq"].clone(), sc["unread"].clone()),
        (json!(4), json!(0)),
        "{sc}"
    );
}

// ---------------------------------------------------------------------------
// Crash recovery
// ---------------------------------------------------------------------------

#[tokio::test]
async fn group_timeline_and_members_survive_kill_9() {
    let mut s = Server::start(&[]).await;
    let (a, b, x) = ("dura", "durb", "durx");
    s.put_users(&[a, b, x]).await;
    s.put_group("dur", Some("dur"), &[a, b]).await;
    let conv = "group:dur";
    let mut ac = s.login(Subprotocol::Json, a, "phone").await;
    let mut pre = Vec::new();
    for k in 0..5 {
        pre.push(
            ac.send_text(&format!("p{k}"), conv, &format!("pre {k}"))
                .await,
        );
    }
    let (st, v) = s
        .post_message(json!({ "to": conv, "kind": "text", "body": "sys" }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 7, "{v}");
    let before = s.history_all(conv).await;
    assert_eq!(seqs(&before), (1..=7).collect::<Vec<_>>());
    drop(ac);

    s.kill9();
    s.restart().await;

    let mut ac = s.login(Subprotocol::Rkyv, a, "phone").await;
    let mut bc = s.login(Subprotocol::Json, b, "phone").await;
    let sum = bc
        .conv_summary(conv)
        .await
        .expect("b still lists the group");
    assert_eq!(sum["max_seq"], 7, "{sum}");
    // Numbering continues where it was.
    let ack = ac.send_text("post", conv, "post").await;
    assert_eq!(ack["seq"], 8, "{ack}");
    let m = next_entry(&mut bc, conv).await;
    assert_eq!(m, want_msg(conv, &ack, a, "phone", "post", "post"));
    let all = bc.sync_all(conv, 0).await;
    assert_eq!(all[..7], before[..], "entries before the crash unchanged");
    assert_eq!(all[7], m);
    // Deduplication survived: a pre-crash cmid gets its original answer.
    let again = ac.send_text("p1", conv, "pre 1").await;
    assert_eq!(
        (&again["seq"], &again["ts"]),
        (&pre[1]["seq"], &pre[1]["ts"]),
        "dedup after restart: {again}"
    );
    bc.quiet(&["msg"], QUIET).await;
    // Membership survived too.
    let mut xc = s.login(Subprotocol::Json, x, "phone").await;
    let r = xc.send_msg("x", conv, "text", json!("x")).await;
    assert_eq!(r["code"], "not_member", "{r}");
    let (st, v) = s.request("GET", "/v1/groups/dur", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["members_count"], 2, "{v}");
    assert_eq!(v["name"], "dur", "{v}");
}

// ---------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sends_over_the_burst_are_rate_limited_and_store_nothing() {
    let s = Server::start(&["--send-rate-per-s", "5", "--send-burst", "5"]).await;
    let (a, b) = ("rla", "rlb");
    s.put_users(&[a, b]).await;
    s.put_group("rl", None, &[a, b]).await;
    let conv = "group:rl";
    let mut bc = s.login(Subprotocol::Json, b, "phone").await;
    bc.sync(conv, 0, None).await;
    for sp in SPS {
        let mut ac = s.login(sp, a, &format!("d{}", tag(sp))).await;
        let base = seq_of(&s.history_all(conv).await.pop().expect("entries"));
        // Six sends at once: the burst of five passes, the sixth is refused.
        for k in 0..6 {
            let f = json!({ "type": "send", "cmid": format!("{}{k}", tag(sp)), "to": conv, "kind": "text", "body": "x" });
            ac.send(&f).await;
        }
        for k in 0..5u64 {
            let r = ac.answer_to(&format!("{}{k}", tag(sp))).await;
            assert_eq!(r["type"], "send_ack", "{}: send {k}: {r}", ac.label);
            assert_eq!(r["seq"], base + k + 1, "{r}");
        }
        let r = ac.answer_to(&format!("{}5", tag(sp))).await;
        assert_eq!(r["type"], "send_err", "{}: sixth send: {r}", ac.label);
        assert_eq!(r["code"], "rate_limited", "{r}");
        let got = bc.entries(conv, 5, REPLY).await;
        assert_eq!(seqs(&got), (base + 1..=base + 5).collect::<Vec<_>>());
        bc.ack(conv, base + 5).await;
        bc.quiet(&["msg"], QUIET).await;
        // After a second the bucket has refilled; numbering has no gap.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let ack = ac.send_text(&format!("{}late", tag(sp)), conv, "y").await;
        assert_eq!(ack["seq"], base + 6, "{ack}");
        next_entry(&mut bc, conv).await;
    }
    // HTTP sends are not rate limited (docs/PROTOCOL.md).
    for k in 0..8 {
        let (st, v) = s
            .post_message(json!({ "from": a, "to": conv, "kind": "text", "body": format!("h{k}") }))
            .await;
        assert_eq!(st, 200, "HTTP send {k}: {v}");
    }
    let m = s.metrics_text().await;
    assert!(
        metric(&m, "tern_rate_limited_total").unwrap_or(0.0) >= 2.0,
        "rate_limited counter: {m}"
    );
}

/// Counts frames of type `ty` arriving within `d`, keeping the others.
async fn count_frames(c: &mut Client, ty: &str, d: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match c.next(left).await {
            Ok(v) if v["type"] == ty => got.push(v),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

#[tokio::test]
async fn typing_over_its_burst_is_rate_limited_and_fans_out_no_further() {
    let s = Server::start(&[]).await;
    let (a, b, c) = ("tya", "tyb", "tyc");
    s.put_users(&[a, b, c]).await;
    s.put_group("ty", None, &[a, b, c]).await;
    let conv = "group:ty";
    let mut bc = s.login(Subprotocol::Rkyv, b, "phone").await;
    let mut cc = s.login(Subprotocol::Json, c, "phone").await;
    for sp in SPS {
        let mut ac = s.login(sp, a, &format!("d{}", tag(sp))).await;
        // A flood of 100 typing frames: the burst of 10 reaches the others
        // (one more if a refill interval of 200 ms passes meanwhile), every
        // other frame is answered `rate_limited` and goes no further.
        for _ in 0..100 {
            ac.typing(conv).await;
        }
        let errors = count_frames(&mut ac, "error", Duration::from_secs(2)).await;
        for e in &errors {
            assert_eq!(e["code"], "rate_limited", "{}: {e}", ac.label);
        }
        let (b_got, c_got) = (
            count_frames(&mut bc, "typing", QUIET).await.len(),
            count_frames(&mut cc, "typing", QUIET).await.len(),
        );
        for (who, n) in [("b", b_got), ("c", c_got)] {
            assert!(
                (10..=11).contains(&n),
                "{}: {who} got {n} typing frames",
                ac.label
            );
        }
        assert_eq!(
            errors.len() + b_got,
            100,
            "{}: every frame passed or was refused",
            ac.label
        );
        // Sends have their own budget: unaffected.
        ac.send_text(&format!("{}-after", tag(sp)), conv, "still here")
            .await;
        next_entry(&mut bc, conv).await;
        next_entry(&mut cc, conv).await;
        // After two seconds the budget has refilled: typing passes again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        ac.typing(conv).await;
        bc.expect("typing", REPLY).await;
        cc.expect("typing", REPLY).await;
        ac.quiet(&["error"], QUIET).await;
    }
}

#[tokio::test]
async fn storage_frames_over_their_burst_are_rate_limited_and_others_are_served() {
    let s = Server::start(&[]).await;
    let (a, b) = ("sfa", "sfb");
    s.put_users(&[a, b]).await;
    let conv = dm(a, b);
    let mut bc = s.login(Subprotocol::Json, b, "phone").await;
    for sp in SPS {
        let mut ac = s.login(sp, a, &format!("d{}", tag(sp))).await;
        ac.send_text(&format!("{}-m", tag(sp)), &format!("user:{b}"), "hi")
            .await;
        next_entry(&mut bc, &conv).await;
        // 700 syncs at once: the burst of 500 is answered (plus 100 a
        // second of refill while they are read), the rest refused.
        let t = std::time::Instant::now();
        for _ in 0..700 {
            ac.send(&json!({ "type": "sync", "conv": conv, "after": 0, "limit": 1 }))
                .await;
        }
        let mut ok = 0u64;
        let mut refused = 0u64;
        while ok + refused < 700 {
            let v = ac.next(REPLY).await.expect("an answer to every sync");
            match v["type"].as_str() {
                Some("sync_result") => ok += 1,
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{}: {v}", ac.label);
                    refused += 1;
                }
                _ => {}
            }
        }
        let refill = (t.elapsed().as_millis() as u64) / 10 + 1;
        assert!(
            (500..=500 + refill).contains(&ok),
            "{}: {ok} syncs answered, {refused} refused in {:?}",
            ac.label,
            t.elapsed()
        );
        assert!(refused > 0, "{}: nothing was refused", ac.label);
        // Another connection is served at once: the budget is per connection.
        let r = bc.sync(&conv, 0, Some(1)).await;
        assert_eq!(r["type"], "sync_result", "{r}");
        // `read` and `convs` draw on the same budget, nearly spent: of 40 at
        // once only the refill since then passes (one per 10 ms).
        let t = std::time::Instant::now();
        for k in 0..40 {
            let f = if k % 2 == 0 {
                json!({ "type": "convs" })
            } else {
                json!({ "type": "read", "conv": conv, "seq": 1 })
            };
            ac.send(&f).await;
        }
        let refused = count_frames(&mut ac, "error", QUIET).await;
        let refill = (t.elapsed().as_millis() as u64) / 10 + 1;
        assert!(
            refused.len() as u64 + refill >= 40,
            "{}: {} of 40 refused in {:?}",
            ac.label,
            refused.len(),
            t.elapsed()
        );
        for e in &refused {
            assert_eq!(e["code"], "rate_limited", "{e}");
        }
        // A second later the refill is enough for a few again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = ac.sync(&conv, 0, Some(1)).await;
        assert_eq!(r["type"], "sync_result", "{}: {r}", ac.label);
    }
}

/// Members of the group whose fan-out goes through a cached push plan
/// (engine/src/shard/mod.rs `push_plan`: pushes to 64 or more users; on two
/// shards each home shard holds about half of them).
const PLAN_USERS: usize = 160;

/// A cached push plan is only good until a member's connections change: a
/// device that connects, and one that reconnects, get the next message
/// live, and a device gone gets nothing.
#[tokio::test]
async fn fan_out_follows_members_connecting_and_leaving_between_messages() {
    let s = Server::start(&[]).await;
    let users: Vec<String> = (0..PLAN_USERS).map(|i| format!("pl{i:03}")).collect();
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    s.put_users(&ids).await;
    let conv = group_conv("plan");
    let mut sender = s.login(Subprotocol::Json, "pl000", "phone").await;
    let mut first = s.login(Subprotocol::Rkyv, "pl001", "phone").await;
    s.put_group("plan", None, &ids).await;
    assert_eq!(seq_of(&next_entry(&mut first, &conv).await), 1);

    let send = |n: u32| json!({ "type": "send", "cmid": format!("p{n}"), "to": conv, "kind": "text", "body": format!("m{n}") });
    sender.send(&send(1)).await;
    assert_eq!(seq_of(&next_entry(&mut first, &conv).await), 2);

    // A member comes online after the plan was made: the next message
    // reaches it live (it never asked for a sync).
    let mut late = s.login(Subprotocol::Json, "pl002", "tablet").await;
    sender.send(&send(2)).await;
    assert_eq!(seq_of(&next_entry(&mut late, &conv).await), 3);
    assert_eq!(seq_of(&next_entry(&mut first, &conv).await), 3);

    // A member's only device leaves and comes back as another device.
    drop(first);
    let mut back = s.login(Subprotocol::Json, "pl001", "laptop").await;
    sender.send(&send(3)).await;
    assert_eq!(seq_of(&next_entry(&mut back, &conv).await), 4);
    assert_eq!(seq_of(&next_entry(&mut late, &conv).await), 4);
    let ack = sender
        .expect_where(REPLY, "send_ack p3", |v| {
            v["type"] == "send_ack" && v["cmid"] == "p3"
        })
        .await;
    assert_eq!(ack["seq"], 4, "{ack}");
}
