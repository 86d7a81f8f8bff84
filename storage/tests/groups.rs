//! Groups and membership (`WriteOp::GroupChange` and the group reads), and
//! the writer's histograms.

mod common;

use common::*;
use tern_proto::{ConvId, Entry, Event, GroupId, RawJson, UserId};
use tern_storage::{
    ConvState, GroupRow, StorageError, WriteOp, BATCH_SIZE_BUCKETS, COMMIT_LATENCY_US_BUCKETS,
};

fn group(s: &str) -> GroupId {
    GroupId::parse(s).expect("group id")
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|n| user(n)).collect()
}

/// A group event of `conv` with the given seq.
fn event(conv: &ConvId, seq: u64, code: u16) -> Entry {
    Entry::Event(Event {
        conv: conv.to_string(),
        seq,
        code,
        data: RawJson::from_text(r#"{"users":["alice"]}"#.to_string()).expect("json"),
        ts: FRESH_TS,
    })
}

fn row(g: &GroupId, name: &str, members_count: u64) -> GroupRow {
    GroupRow {
        group: g.clone(),
        name: Some(name.to_string()),
        members_count,
        created_ts: 1234,
    }
}

/// A change of `g` that only adds and removes members.
fn members_change(g: &GroupId, add: &[&str], remove: &[&str]) -> WriteOp {
    WriteOp::GroupChange {
        conv: ConvId::group(g),
        event: None,
        row: None,
        add: users(add),
        remove: users(remove),
        delete_group: false,
    }
}

/// A change of `g` with an event at `seq` that adds `add`.
fn event_change(g: &GroupId, seq: u64, add: &[&str]) -> WriteOp {
    WriteOp::GroupChange {
        conv: ConvId::group(g),
        event: Some(event(&ConvId::group(g), seq, 1509)),
        row: None,
        add: users(add),
        remove: vec![],
        delete_group: false,
    }
}

fn state(conv: &ConvId, max_seq: u64, read_seq: u64) -> ConvState {
    ConvState {
        conv: conv.clone(),
        max_seq,
        read_seq,
    }
}

fn names(members: &[UserId]) -> Vec<&str> {
    members.iter().map(|u| u.as_str()).collect()
}

#[test]
fn group_events_follow_the_append_seq_rule_in_a_mixed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let g = group("g");
    let gc = ConvId::group(&g);
    let create = WriteOp::GroupChange {
        conv: gc.clone(),
        event: Some(event(&gc, 2, 1501)),
        row: Some(row(&g, "team", 2)),
        add: users(&["alice", "bob"]),
        remove: vec![],
        delete_group: false,
    };
    let mut with_msg = event_change(&g, 4, &["mallory"]);
    if let WriteOp::GroupChange { event, .. } = &mut with_msg {
        *event = Some(entry(&gc, 4, FRESH_TS));
    }
    let mut other_row = members_change(&g, &["mallory"], &[]);
    if let WriteOp::GroupChange { row: r, .. } = &mut other_row {
        *r = Some(row(&group("h"), "other", 1));
    }
    let dm = conv("dm:alice:bob");
    let not_a_group = WriteOp::GroupChange {
        conv: dm.clone(),
        event: None,
        row: None,
        add: users(&["mallory"]),
        remove: vec![],
        delete_group: false,
    };
    let remove_bob = WriteOp::GroupChange {
        conv: gc.clone(),
        event: Some(event(&gc, 4, 1508)),
        row: Some(row(&g, "team", 1)),
        add: vec![],
        remove: users(&["bob"]),
        delete_group: false,
    };
    w.submit_many(vec![
        req(1, 1, append(&gc, 1, FRESH_TS)),
        req(1, 2, create),
        req(1, 3, append(&gc, 3, FRESH_TS)),
        // Gap (expected 4): rejected whole, so carol is not added.
        req(1, 4, event_change(&g, 5, &["carol"])),
        // Repeat of seq 3: rejected the same way.
        req(1, 5, event_change(&g, 3, &["carol"])),
        req(1, 6, with_msg),
        req(1, 7, other_row),
        req(1, 8, not_a_group),
        req(1, 9, event_change(&g, 0, &["mallory"])),
        req(1, 10, remove_bob),
        req(1, 11, append(&gc, 5, FRESH_TS)),
    ])
    .unwrap();
    w.shutdown();

    for ok in [1, 2, 3, 10, 11] {
        assert_eq!(sink.result_of(ok), Ok(()), "token {ok}");
    }
    assert_eq!(
        sink.result_of(4),
        Err(StorageError::SeqGap {
            conv: "group:g".into(),
            expected: 4,
            got: 5
        })
    );
    assert!(matches!(
        sink.result_of(5),
        Err(StorageError::SeqGap {
            expected: 4,
            got: 3,
            ..
        })
    ));
    for invalid in [6, 7, 8, 9] {
        assert!(
            matches!(sink.result_of(invalid), Err(StorageError::Invalid(_))),
            "token {invalid}: {:?}",
            sink.result_of(invalid)
        );
    }

    let (e, more) = s.read_entries(&gc, 0, 100).unwrap();
    assert!(!more);
    let kinds: Vec<(u64, bool)> = e
        .iter()
        .map(|x| (x.seq(), matches!(x, Entry::Event(_))))
        .collect();
    assert_eq!(
        kinds,
        vec![(1, false), (2, true), (3, false), (4, true), (5, false)]
    );
    assert_eq!(e[1], event(&gc, 2, 1501), "event round-trips exactly");
    assert_eq!(s.conv_heads().unwrap(), vec![(gc.clone(), 5)]);
    assert_eq!(s.get_group(&g).unwrap(), Some(row(&g, "team", 1)));
    assert_eq!(s.get_group(&group("h")).unwrap(), None);
    assert_eq!(names(&s.group_members(&g).unwrap()), vec!["alice"]);
    for u in ["bob", "carol", "mallory"] {
        assert!(!s.is_member(&g, &user(u)).unwrap(), "{u}");
        assert_eq!(s.user_groups(&user(u)).unwrap(), vec![], "{u}");
    }
    assert!(s.is_member(&g, &user("alice")).unwrap());
    assert!(
        s.user_dm_convs(&user("mallory")).unwrap().is_empty(),
        "a rejected dm change indexes nothing"
    );
    let st = s.stats();
    assert_eq!(st.entries_written, 5);
    assert_eq!(st.errors, 6);
}

#[test]
fn members_are_added_removed_and_paged_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let g = group("g");
    // A group whose id extends g's: its members must not leak into g.
    let g2 = group("g2");
    let all: Vec<String> = (0..25).rev().map(|i| format!("u{i:02}")).collect();
    let all_refs: Vec<&str> = all.iter().map(String::as_str).collect();
    w.submit_many(vec![
        req(0, 1, members_change(&g, &all_refs, &[])),
        req(0, 2, members_change(&g2, &["a", "u05x", "zz"], &[])),
        // Added and removed in one change: removed wins.
        req(0, 3, members_change(&g, &["u99"], &["u03", "u99", "never"])),
    ])
    .unwrap();
    wait_results(&sink, 3);
    w.submit(req(0, 4, members_change(&g, &["u03"], &["u04"])))
        .unwrap();
    wait_results(&sink, 4);
    assert!(sink.all().iter().all(|(_, _, r)| r.is_ok()));

    let expected: Vec<String> = (0..25)
        .filter(|&i| i != 4)
        .map(|i| format!("u{i:02}"))
        .collect();
    let members = s.group_members(&g).unwrap();
    assert_eq!(names(&members), expected);
    assert_eq!(
        names(&s.group_members(&g2).unwrap()),
        vec!["a", "u05x", "zz"]
    );

    let page = |after: Option<&str>, limit| {
        let after = after.map(user);
        let (m, more) = s.members_page(&g, after.as_ref(), limit).unwrap();
        (m.iter().map(|u| u.to_string()).collect::<Vec<_>>(), more)
    };
    let (p1, more) = page(None, 10);
    assert_eq!((&p1[..], more), (&expected[..10], true));
    let (p2, more) = page(Some(p1[9].as_str()), 10);
    assert_eq!((&p2[..], more), (&expected[10..20], true));
    let (p3, more) = page(Some(p2[9].as_str()), 10);
    assert_eq!((&p3[..], more), (&expected[20..], false));
    assert_eq!(p3.len(), 4);
    let (p, more) = page(Some(expected[19].as_str()), 4);
    assert_eq!(
        (&p[..], more),
        (&expected[20..], false),
        "exactly limit left: no more"
    );
    // `after` need not be a member: u04 was removed, u05 follows.
    let (p, more) = page(Some("u04"), 2);
    assert_eq!((p, more), (vec!["u05".into(), "u06".into()], true));
    // A prefix of a member id sorts before it.
    let (p, _) = page(Some("u1"), 1);
    assert_eq!(p, vec!["u10".to_string()]);
    let (p, more) = page(None, 0);
    assert_eq!((p.len(), more), (0, true));
    let (p, more) = page(Some("u24"), 10);
    assert_eq!((p.len(), more), (0, false));
    let (p, more) = s.members_page(&group("none"), None, 10).unwrap();
    assert_eq!((p.len(), more), (0, false));
    assert_eq!(s.group_members(&group("none")).unwrap(), vec![]);

    let u = |n: &str| user(n);
    assert!(s.is_member(&g, &u("u00")).unwrap());
    assert!(s.is_member(&g, &u("u03")).unwrap(), "re-added");
    assert!(!s.is_member(&g, &u("u04")).unwrap(), "removed");
    assert!(!s.is_member(&g, &u("u99")).unwrap(), "added and removed");
    assert!(!s.is_member(&g, &u("a")).unwrap(), "member of g2 only");
    assert!(!s.is_member(&g2, &u("u00")).unwrap());
    assert!(!s.is_member(&group("none"), &u("u00")).unwrap());
    assert_eq!(
        s.user_groups(&u("u05x")).unwrap(),
        vec![state(&ConvId::group(&g2), 0, 0)]
    );
    assert_eq!(s.user_groups(&u("u04")).unwrap(), vec![]);
    w.shutdown();
}

#[test]
fn delete_group_removes_the_row_and_every_member_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let (g, h) = (group("g"), group("h"));
    let (gc, hc) = (ConvId::group(&g), ConvId::group(&h));
    let create = |grp: &GroupId, members: &[&str]| WriteOp::GroupChange {
        conv: ConvId::group(grp),
        event: Some(event(&ConvId::group(grp), 1, 1501)),
        row: Some(row(grp, "n", members.len() as u64)),
        add: users(members),
        remove: vec![],
        delete_group: false,
    };
    w.submit_many(vec![
        req(0, 1, create(&g, &["alice", "bob", "carol"])),
        req(0, 2, create(&h, &["alice"])),
    ])
    .unwrap();
    wait_results(&sink, 2);
    assert_eq!(s.user_groups(&user("alice")).unwrap().len(), 2);

    let dismiss = WriteOp::GroupChange {
        conv: gc.clone(),
        event: Some(event(&gc, 2, 1520)),
        // `delete_group` beats an upsert in the same change.
        row: Some(row(&g, "n", 3)),
        add: vec![],
        remove: users(&["alice", "bob", "carol"]),
        delete_group: true,
    };
    w.submit(req(0, 3, dismiss)).unwrap();
    wait_results(&sink, 3);
    assert_eq!(sink.result_of(3), Ok(()));
    assert_eq!(s.get_group(&g).unwrap(), None);
    assert_eq!(s.group_members(&g).unwrap(), vec![]);
    assert_eq!(s.members_page(&g, None, 10).unwrap(), (vec![], false));
    for u in ["alice", "bob", "carol"] {
        assert!(!s.is_member(&g, &user(u)).unwrap(), "{u}");
    }
    assert_eq!(
        s.user_groups(&user("alice")).unwrap(),
        vec![state(&hc, 1, 0)]
    );
    assert_eq!(s.user_groups(&user("bob")).unwrap(), vec![]);
    // The group's untouched neighbour keeps everything.
    assert_eq!(s.get_group(&h).unwrap(), Some(row(&h, "n", 1)));
    // The timeline stays, and its head: a new group g continues at seq 3.
    let mut heads = s.conv_heads().unwrap();
    heads.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(heads, vec![(gc.clone(), 2), (hc.clone(), 1)]);
    assert_eq!(s.read_entries(&gc, 0, 10).unwrap().0.len(), 2);

    // Dismissed with members missing from `remove`, then created again in
    // the same batch: the range delete covers the missing members, and the
    // later request's members win.
    let partial_dismiss = WriteOp::GroupChange {
        conv: hc.clone(),
        event: None,
        row: None,
        add: vec![],
        remove: vec![],
        delete_group: true,
    };
    w.submit_many(vec![
        req(0, 4, create(&g, &["dave"])), // seq 1 again: a gap
        req(0, 5, event_change(&g, 3, &["dave", "erin"])),
        req(0, 6, partial_dismiss),
        req(0, 7, members_change(&h, &["frank"], &[])),
    ])
    .unwrap();
    wait_results(&sink, 7);
    assert!(matches!(
        sink.result_of(4),
        Err(StorageError::SeqGap {
            expected: 3,
            got: 1,
            ..
        })
    ));
    for ok in [5, 6, 7] {
        assert_eq!(sink.result_of(ok), Ok(()), "token {ok}");
    }
    assert_eq!(names(&s.group_members(&g).unwrap()), vec!["dave", "erin"]);
    assert_eq!(s.get_group(&g).unwrap(), None, "no row was given");
    assert_eq!(names(&s.group_members(&h).unwrap()), vec!["frank"]);
    assert!(!s.is_member(&h, &user("alice")).unwrap());
    assert_eq!(s.get_group(&h).unwrap(), None);
    w.shutdown();
}

#[test]
fn user_groups_and_all_convs_carry_max_and_read_seq() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let alice = user("alice");
    let (g1, g2, g3) = (group("zeta"), group("alpha"), group("mid"));
    let (c1, c2, c3) = (ConvId::group(&g1), ConvId::group(&g2), ConvId::group(&g3));
    let ab = conv("dm:alice:bob");
    let dm = WriteOp::Append {
        conv: ab.clone(),
        entry: stored(&ab, 1, FRESH_TS),
        dedup: None,
        index_users: users(&["alice", "bob"]),
    };
    let read = |c: &ConvId, seq| WriteOp::SetRead {
        user: alice.clone(),
        conv: c.clone(),
        seq,
    };
    w.submit_many(vec![
        req(0, 1, event_change(&g1, 1, &["alice"])),
        req(0, 2, append(&c1, 2, FRESH_TS)),
        req(0, 3, append(&c1, 3, FRESH_TS)),
        req(0, 4, event_change(&g2, 1, &["alice", "bob"])),
        // alice is a member of g3 but nothing was ever posted there.
        req(0, 5, members_change(&g3, &["alice"], &[])),
        req(0, 6, dm),
        req(0, 7, read(&c1, 2)),
        req(0, 8, read(&ab, 1)),
    ])
    .unwrap();
    wait_results(&sink, 8);
    assert!(sink.all().iter().all(|(_, _, r)| r.is_ok()));

    // Group-id byte order.
    assert_eq!(
        s.user_groups(&alice).unwrap(),
        vec![state(&c2, 1, 0), state(&c3, 0, 0), state(&c1, 3, 2)]
    );
    assert_eq!(s.user_groups(&user("bob")).unwrap(), vec![state(&c2, 1, 0)]);
    // Sorted by conv text: "dm:..." < "group:alpha" < "group:mid" < ...
    assert_eq!(
        s.user_convs_all(&alice).unwrap(),
        vec![
            state(&ab, 1, 1),
            state(&c2, 1, 0),
            state(&c3, 0, 0),
            state(&c1, 3, 2)
        ]
    );
    assert_eq!(
        s.user_convs_all(&user("bob")).unwrap(),
        vec![state(&ab, 1, 0), state(&c2, 1, 0)]
    );
    assert_eq!(s.user_convs_all(&user("al")).unwrap(), vec![], "a prefix");
    w.shutdown();
}

#[test]
fn reopen_recovers_group_heads_rows_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let g = group("g");
    let gc = ConvId::group(&g);
    let dm = conv("dm:x:y");
    {
        let s = open(dir.path());
        let (w, sink) = writer(&s);
        let create = WriteOp::GroupChange {
            conv: gc.clone(),
            event: Some(event(&gc, 1, 1501)),
            row: Some(row(&g, "team", 2)),
            add: users(&["x", "y"]),
            remove: vec![],
            delete_group: false,
        };
        w.submit(req(0, 1, create)).unwrap();
        wait_results(&sink, 1);
        append_range(&w, &sink, &dm, 1, 2, FRESH_TS);
        w.submit(req(0, 9, event_change(&g, 2, &["z"]))).unwrap();
        w.shutdown();
        assert!(sink.all().iter().all(|(_, _, r)| r.is_ok()));
    }
    let s = open(dir.path());
    let mut heads = s.conv_heads().unwrap();
    heads.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(heads, vec![(dm.clone(), 2), (gc.clone(), 2)]);
    assert_eq!(s.get_group(&g).unwrap(), Some(row(&g, "team", 2)));
    assert_eq!(names(&s.group_members(&g).unwrap()), vec!["x", "y", "z"]);
    assert_eq!(s.user_groups(&user("z")).unwrap(), vec![state(&gc, 2, 0)]);

    let (w, sink) = writer(&s);
    w.submit(req(0, 1, event_change(&g, 2, &["w"]))).unwrap();
    w.submit(req(0, 2, event_change(&g, 3, &["w"]))).unwrap();
    w.submit(req(0, 3, append(&gc, 4, FRESH_TS))).unwrap();
    w.shutdown();
    assert!(matches!(
        sink.result_of(1),
        Err(StorageError::SeqGap {
            expected: 3,
            got: 2,
            ..
        })
    ));
    assert_eq!(sink.result_of(2), Ok(()));
    assert_eq!(sink.result_of(3), Ok(()));
    assert!(s.is_member(&g, &user("w")).unwrap());
}

#[test]
fn histograms_count_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let empty = s.stats();
    assert_eq!(empty.batch_count, 0);
    let zeros = |bounds: &[u64]| bounds.iter().map(|&le| (le, 0)).collect::<Vec<_>>();
    assert_eq!(empty.batch_size_buckets, zeros(&BATCH_SIZE_BUCKETS));
    assert_eq!(
        empty.commit_latency_us_buckets,
        zeros(&COMMIT_LATENCY_US_BUCKETS)
    );

    let (w, sink) = writer(&s);
    let c = conv("group:g");
    // Three batches of exactly one request each.
    for seq in 1..=3 {
        w.submit(req(0, seq, append(&c, seq, FRESH_TS))).unwrap();
        wait_results(&sink, seq as usize);
    }
    let st = s.stats();
    assert_eq!((st.batches, st.batch_count), (3, 3));
    assert_eq!(st.batch_size_buckets[0], (1, 3), "all three in le=1");
    // Then batches of any size, a rejected-only one among them.
    w.submit(req(0, 4, append(&c, 99, FRESH_TS))).unwrap();
    wait_results(&sink, 4);
    let reqs = (4..=40).map(|q| req(0, 100 + q, append(&c, q, FRESH_TS)));
    w.submit_many(reqs.collect()).unwrap();
    w.shutdown();
    assert_eq!(sink.all().len(), 4 + 37);

    let st = s.stats();
    assert_eq!(st.batch_count, st.batches);
    assert!(st.batch_count >= 5);
    assert_eq!(st.batch_size_sum, 41);
    for (hist, bounds) in [
        (&st.batch_size_buckets, &BATCH_SIZE_BUCKETS[..]),
        (
            &st.commit_latency_us_buckets,
            &COMMIT_LATENCY_US_BUCKETS[..],
        ),
    ] {
        let les: Vec<u64> = hist.iter().map(|b| b.0).collect();
        assert_eq!(les, bounds);
        assert!(hist.windows(2).all(|p| p[0].1 <= p[1].1), "cumulative");
        assert!(hist.iter().all(|b| b.1 <= st.batch_count));
    }
    // Every batch has 1..=BATCH_MAX requests: the last bucket holds all.
    assert_eq!(st.batch_size_buckets.last().unwrap().1, st.batch_count);
    // A batch of n requests is in every bucket with le >= n and none below.
    let max_in = st.batch_size_max;
    for &(le, n) in &st.batch_size_buckets {
        if le >= max_in {
            assert_eq!(n, st.batch_count, "le={le}");
        }
    }
    assert!(st.commit_latency_us_max <= st.commit_latency_us_sum);
    assert!(st.commit_latency_us_sum > 0, "fsynced writes take time");
}
