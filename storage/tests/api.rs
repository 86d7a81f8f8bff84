//! The promises of `tern-storage`'s public API, one test each.

mod common;

use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tern_storage::{
    CommitSink, ConvState, Durability, Storage, StorageError, StoredEntry, UserRow, WriteOp,
    WRITE_QUEUE_MAX,
};

fn seqs(entries: &[tern_proto::Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq()).collect()
}

#[test]
fn append_then_read_ranges_with_limit_and_has_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let g = conv("group:g");
    // A conv whose id extends g's must not leak into g's range.
    let g2 = conv("group:g2");
    append_range(&w, &sink, &g, 1, 10, FRESH_TS);
    append_range(&w, &sink, &g2, 1, 3, FRESH_TS);

    let (e, more) = s.read_entries(&g, 0, 3).unwrap();
    assert_eq!((seqs(&e), more), (vec![1, 2, 3], true));
    let (e, more) = s.read_entries(&g, 7, 10).unwrap();
    assert_eq!((seqs(&e), more), (vec![8, 9, 10], false));
    let (e, more) = s.read_entries(&g, 7, 3).unwrap();
    assert_eq!(
        (seqs(&e), more),
        (vec![8, 9, 10], false),
        "exactly limit left: no more"
    );
    let (e, more) = s.read_entries(&g, 10, 5).unwrap();
    assert_eq!((e.len(), more), (0, false));
    let (e, more) = s.read_entries(&g, 0, 0).unwrap();
    assert_eq!((e.len(), more), (0, true));
    let (e, more) = s.read_entries(&g, u64::MAX, 5).unwrap();
    assert_eq!((e.len(), more), (0, false));
    let (e, more) = s.read_entries(&conv("group:none"), 0, 5).unwrap();
    assert_eq!((e.len(), more), (0, false));
    assert_eq!(e, vec![]);

    let (e, _) = s.read_entries(&g, 4, 1).unwrap();
    assert_eq!(e, vec![entry(&g, 5, FRESH_TS)], "entry round-trips exactly");
    let (raw, more) = s.read_entries_raw(&g2, 1, 100).unwrap();
    assert!(!more);
    let expected: Vec<Vec<u8>> = (2..=3)
        .map(|q| entry(&g2, q, FRESH_TS).to_storage_bytes())
        .collect();
    assert_eq!(raw, expected);
    w.shutdown();
}

#[test]
fn appends_out_of_seq_are_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let c = conv("dm:alice:bob");
    let other = conv("group:x");
    // A seq of 0 or an entry of another conversation is not an entry of
    // `c`: it cannot even be encoded for an append.
    for e in [entry(&c, 0, FRESH_TS), entry(&other, 3, FRESH_TS)] {
        assert!(
            matches!(StoredEntry::new(&c, &e), Err(StorageError::Invalid(_))),
            "{e:?}"
        );
    }
    w.submit_many(vec![
        req(1, 1, append(&c, 1, FRESH_TS)),
        req(1, 2, append(&c, 3, FRESH_TS)), // gap: expected 2
        req(1, 3, append(&c, 2, FRESH_TS)),
        req(1, 4, append(&c, 2, FRESH_TS)), // duplicate: expected 3
        req(1, 5, append(&c, 3, FRESH_TS)),
    ])
    .unwrap();
    w.shutdown();
    assert_eq!(sink.result_of(1), Ok(()));
    assert_eq!(
        sink.result_of(2),
        Err(StorageError::SeqGap {
            conv: "dm:alice:bob".into(),
            expected: 2,
            got: 3
        })
    );
    assert_eq!(sink.result_of(3), Ok(()));
    assert!(matches!(
        sink.result_of(4),
        Err(StorageError::SeqGap {
            expected: 3,
            got: 2,
            ..
        })
    ));
    assert_eq!(sink.result_of(5), Ok(()));
    let (e, _) = s.read_entries(&c, 0, 10).unwrap();
    assert_eq!(seqs(&e), vec![1, 2, 3]);
    assert_eq!(s.conv_heads().unwrap(), vec![(c, 3)]);
    assert_eq!(s.read_entries(&other, 0, 10).unwrap().0, vec![]);
    let st = s.stats();
    assert_eq!(st.entries_written, 3);
    assert_eq!(st.errors, 2);
    assert!(st.batches >= 1 && st.batch_size_sum == 5 && st.batch_size_max >= 1);
}

#[test]
fn dedup_lookup_honours_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let c = conv("dm:alice:bob");
    let ct = c.to_text();
    let ts = 1_000_000;
    w.submit(req(
        0,
        1,
        WriteOp::Append {
            conv: c.clone(),
            entry: stored(&c, 1, ts),
            dedup: Some((tern_proto::UserId::parse("alice").unwrap(), "cm-1".into())),
            index_users: vec![],
        },
    ))
    .unwrap();
    wait_results(&sink, 1);
    assert_eq!(sink.result_of(1), Ok(()));

    assert_eq!(
        s.dedup_lookup(&ct, "alice", "cm-1", ts).unwrap(),
        Some((1, ts))
    );
    assert_eq!(
        s.dedup_lookup(&ct, "alice", "cm-1", ts + DEDUP_WINDOW_MS)
            .unwrap(),
        Some((1, ts)),
        "still inside the window at its last ms"
    );
    assert_eq!(
        s.dedup_lookup(&ct, "alice", "cm-1", ts + DEDUP_WINDOW_MS + 1)
            .unwrap(),
        None
    );
    assert_eq!(s.dedup_lookup(&ct, "alice", "cm-2", ts).unwrap(), None);
    assert_eq!(s.dedup_lookup(&ct, "bob", "cm-1", ts).unwrap(), None);
    assert_eq!(
        s.dedup_lookup("group:g", "alice", "cm-1", ts).unwrap(),
        None
    );
    assert_eq!(s.dedup_lookup(&ct, "al\0ice", "cm-1", ts).unwrap(), None);
    // Many at once: the same answers, in order (the unaskable key included).
    let asks = [
        (ct.as_str(), "alice", "cm-1"),
        (ct.as_str(), "al\0ice", "cm-1"),
        (ct.as_str(), "alice", "cm-2"),
        ("group:g", "alice", "cm-1"),
        (ct.as_str(), "alice", "cm-1"),
    ];
    for now in [ts, ts + DEDUP_WINDOW_MS + 1] {
        let many = s.dedup_lookup_many(&asks, now);
        let one: Vec<_> = asks
            .iter()
            .map(|(c, u, m)| s.dedup_lookup(c, u, m, now))
            .collect();
        assert_eq!(many, one, "at {now}");
    }
    assert_eq!(s.dedup_lookup_many(&asks, ts)[4], Ok(Some((1, ts))));
    assert!(s.dedup_lookup_many(&[], ts).is_empty());

    // The compaction filter removes the record for good (ts is far in the
    // past of the wall clock), even for a lookup that injects an old clock.
    s.compact_expiring().unwrap();
    assert_eq!(s.dedup_lookup(&ct, "alice", "cm-1", ts).unwrap(), None);
    w.shutdown();
}

/// `dedup_lookup_many` sorts the keys it asks RocksDB for: its answers
/// must still come back in the order asked, for rows in SST files and in
/// the memtable, misses and repeated keys among them.
#[test]
fn many_dedup_lookups_answer_in_the_order_asked() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let ts = now_ms();
    let convs = [conv("dm:alice:bob"), conv("dm:bob:carol"), conv("group:g")];
    let senders = ["alice", "bob", "carol"];
    let mut token = 0u64;
    // 3 convs x 3 senders x 8 cmids, seqs in order per conv; the first half
    // flushed to an SST (compact_expiring flushes), the rest in the memtable.
    let mut seq = [0u64; 3];
    for round in 0..2 {
        for m in 0..4 {
            for (ci, c) in convs.iter().enumerate() {
                for sender in senders {
                    seq[ci] += 1;
                    token += 1;
                    let cmid = format!("cm-{}", round * 4 + m);
                    w.submit(req(
                        0,
                        token,
                        WriteOp::Append {
                            conv: c.clone(),
                            entry: stored(c, seq[ci], ts),
                            dedup: Some((user(sender), cmid)),
                            index_users: vec![],
                        },
                    ))
                    .unwrap();
                }
            }
        }
        wait_results(&sink, token as usize);
        if round == 0 {
            s.compact_expiring().unwrap();
        }
    }
    assert!(sink.all().iter().all(|(_, _, r)| r.is_ok()));
    let texts: Vec<String> = convs.iter().map(|c| c.to_text()).collect();
    // Every stored key, every key of a cmid never sent, and repeats, in a
    // scrambled order (a fixed permutation: stride 7 over a prime length).
    let mut all: Vec<(&str, &str, String)> = Vec::new();
    for t in &texts {
        for sender in senders {
            for m in 0..10 {
                all.push((t.as_str(), sender, format!("cm-{m}")));
            }
        }
    }
    all.push((texts[0].as_str(), "al\0ice", "cm-1".into()));
    all.push((texts[2].as_str(), "carol", "cm-7".into()));
    let n = all.len();
    assert_eq!(n, 92);
    let p = 97; // prime > n: i -> 7i mod 97, skipping values >= n
    let order: Vec<usize> = (0..p).map(|i| (i * 7) % p).filter(|&i| i < n).collect();
    assert_eq!(order.len(), n);
    let asks: Vec<(&str, &str, &str)> = order
        .iter()
        .map(|&i| (all[i].0, all[i].1, all[i].2.as_str()))
        .collect();
    let many = s.dedup_lookup_many(&asks, ts);
    let one: Vec<_> = asks
        .iter()
        .map(|(c, u, m)| s.dedup_lookup(c, u, m, ts))
        .collect();
    assert_eq!(many, one);
    let hits = many.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    assert_eq!(
        hits,
        3 * 3 * 8 + 1,
        "every stored key found, the repeat too"
    );
    w.shutdown();
}

#[test]
fn recent_dedup_records_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let c = conv("group:g");
    let ts = now_ms();
    w.submit(req(
        0,
        1,
        WriteOp::Append {
            conv: c.clone(),
            entry: stored(&c, 1, ts),
            dedup: Some((tern_proto::UserId::parse("system").unwrap(), "x".into())),
            index_users: vec![],
        },
    ))
    .unwrap();
    wait_results(&sink, 1);
    s.compact_expiring().unwrap();
    assert_eq!(
        s.dedup_lookup(&c.to_text(), "system", "x", ts).unwrap(),
        Some((1, ts))
    );
    w.shutdown();
}

#[test]
fn retention_drops_old_entries_but_never_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let c = conv("group:g");
    let old = now_ms() - RETENTION_MS - 60_000;
    append_range(&w, &sink, &c, 1, 5, old);
    append_range(&w, &sink, &c, 6, 7, now_ms());
    s.compact_expiring().unwrap();
    let (e, more) = s.read_entries(&c, 0, 100).unwrap();
    assert_eq!((seqs(&e), more), (vec![6, 7], false));
    assert_eq!(s.conv_heads().unwrap(), vec![(c.clone(), 7)]);
    // A conversation whose every entry expired still continues at max + 1.
    let d = conv("group:d");
    append_range(&w, &sink, &d, 1, 3, old);
    s.compact_expiring().unwrap();
    assert_eq!(s.read_entries(&d, 0, 100).unwrap().0, vec![]);
    append_range(&w, &sink, &d, 4, 4, now_ms());
    assert_eq!(seqs(&s.read_entries(&d, 0, 100).unwrap().0), vec![4]);
    w.shutdown();
}

#[test]
fn user_upsert_keeps_created_ts_and_delete_records_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let alice = user("alice");
    assert_eq!(s.get_user(&alice).unwrap(), None);
    assert!(!s.user_exists(&alice).unwrap());
    let row = UserRow {
        user: alice.clone(),
        name: Some("Alice".into()),
        meta_json: Some(r#"{"a":1}"#.into()),
        created_ts: 100,
    };
    assert_eq!(s.put_user(&row).unwrap(), row);
    let update = UserRow {
        name: None,
        meta_json: Some("[]".into()),
        created_ts: 200,
        ..row.clone()
    };
    let stored = s.put_user(&update).unwrap();
    assert_eq!(stored.created_ts, 100, "created_ts kept");
    assert_eq!(stored.name, None);
    assert_eq!(s.get_user(&alice).unwrap(), Some(stored));
    assert!(s.user_exists(&alice).unwrap());
    assert_eq!(s.revoked_users().unwrap(), vec![]);

    assert!(s.delete_user(&alice, 5000).unwrap());
    assert_eq!(s.get_user(&alice).unwrap(), None);
    assert_eq!(s.revoked_users().unwrap(), vec![(alice.clone(), 5000)]);
    assert!(!s.delete_user(&alice, 6000).unwrap(), "absent");
    assert!(!s.delete_user(&user("bob"), 6000).unwrap());
    assert_eq!(
        s.revoked_users().unwrap(),
        vec![(alice.clone(), 5000)],
        "absent records nothing"
    );

    // Re-created after a delete: a new created_ts, the revocation stays.
    assert_eq!(s.put_user(&update).unwrap().created_ts, 200);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.get_user(&alice).unwrap().map(|r| r.created_ts), Some(200));
    assert_eq!(s.revoked_users().unwrap(), vec![(alice, 5000)]);
}

#[test]
fn read_positions_only_move_forward_and_dm_index_lists_convs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let ab = conv("dm:alice:bob");
    let ac = conv("dm:alice:carol");
    let dm = |c: &tern_proto::ConvId, seq, users: Vec<tern_proto::UserId>| WriteOp::Append {
        conv: c.clone(),
        entry: stored(c, seq, FRESH_TS),
        dedup: None,
        index_users: users,
    };
    let read = |u: &tern_proto::UserId, c: &tern_proto::ConvId, seq| WriteOp::SetRead {
        user: u.clone(),
        conv: c.clone(),
        seq,
    };
    w.submit_many(vec![
        req(0, 1, dm(&ab, 1, vec![alice.clone(), bob.clone()])),
        req(0, 2, dm(&ab, 2, vec![alice.clone(), bob.clone()])),
        req(0, 3, dm(&ac, 1, vec![alice.clone(), carol.clone()])),
        req(0, 4, read(&alice, &ab, 2)),
        req(0, 5, read(&alice, &ab, 1)), // backwards: ignored
    ])
    .unwrap();
    wait_results(&sink, 5);
    w.submit(req(0, 6, read(&bob, &ab, 1))).unwrap();
    w.submit(req(0, 7, read(&bob, &ab, 0))).unwrap();
    // Past the head: clamped to it.
    w.submit(req(0, 8, read(&carol, &ac, 99))).unwrap();
    w.submit(req(0, 9, read(&carol, &none_conv(), 5))).unwrap();
    wait_results(&sink, 9);
    assert!(sink.all().iter().all(|(_, _, r)| r.is_ok()));

    let st = |c: &tern_proto::ConvId, max_seq, read_seq| ConvState {
        conv: c.clone(),
        max_seq,
        read_seq,
    };
    assert_eq!(s.conv_state(&alice, &ab).unwrap(), st(&ab, 2, 2));
    assert_eq!(s.conv_state(&bob, &ab).unwrap(), st(&ab, 2, 1));
    assert_eq!(s.conv_state(&carol, &ab).unwrap(), st(&ab, 2, 0));
    let none = none_conv();
    assert_eq!(s.conv_state(&alice, &none).unwrap(), st(&none, 0, 0));

    let mut a = s.user_dm_convs(&alice).unwrap();
    a.sort_by_key(|c| c.conv.to_string());
    assert_eq!(a, vec![st(&ab, 2, 2), st(&ac, 1, 0)]);
    assert_eq!(s.user_dm_convs(&bob).unwrap(), vec![st(&ab, 2, 1)]);
    assert_eq!(s.user_dm_convs(&carol).unwrap(), vec![st(&ac, 1, 1)]);
    assert_eq!(s.conv_state(&carol, &none).unwrap(), st(&none, 0, 0));
    assert_eq!(
        s.user_dm_convs(&user("al")).unwrap(),
        vec![],
        "a prefix of alice"
    );
    w.shutdown();
}

#[test]
fn reopen_recovers_conv_heads_and_the_writer_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (conv("group:a"), conv("dm:x:y"));
    {
        let s = open(dir.path());
        let (w, sink) = writer(&s);
        append_range(&w, &sink, &a, 1, 17, FRESH_TS);
        append_range(&w, &sink, &b, 1, 2, FRESH_TS);
        w.shutdown();
    }
    let s = open(dir.path());
    let mut heads = s.conv_heads().unwrap();
    heads.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(heads, vec![(b.clone(), 2), (a.clone(), 17)]);
    let (w, sink) = writer(&s);
    w.submit(req(0, 1, append(&a, 17, FRESH_TS))).unwrap();
    w.submit(req(0, 2, append(&a, 18, FRESH_TS))).unwrap();
    w.submit(req(0, 3, append(&b, 1, FRESH_TS))).unwrap();
    w.shutdown();
    assert!(matches!(
        sink.result_of(1),
        Err(StorageError::SeqGap { expected: 18, .. })
    ));
    assert_eq!(sink.result_of(2), Ok(()));
    assert!(matches!(
        sink.result_of(3),
        Err(StorageError::SeqGap { expected: 3, .. })
    ));
}

#[test]
fn open_creates_only_in_a_missing_or_empty_dir() {
    let dir = tempfile::tempdir().unwrap();
    // Missing (nested) directory: created.
    drop(open(&dir.path().join("a/b")));
    // Empty directory: created.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    drop(open(&empty));
    assert!(empty.join("CURRENT").is_file());

    // Files that are not a database: refused, and left alone.
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("notes.txt"), b"my precious data").unwrap();
    let err = Storage::open(options(&garbage, Durability::Fsync)).unwrap_err();
    assert!(matches!(err, StorageError::NotADatabase(_)), "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(
        std::fs::read_dir(&garbage).unwrap().count(),
        1,
        "nothing created"
    );

    // A plain file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Storage::open(options(&file, Durability::Fsync)),
        Err(StorageError::NotADatabase(_))
    ));
}

#[test]
fn open_refuses_a_second_instance_on_the_same_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path());
    assert!(Storage::open(options(dir.path(), Durability::Fsync)).is_err());
}

/// A DB with one conversation, closed; returns its directory.
fn db_with_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, sink) = writer(&s);
    append_range(&w, &sink, &conv("group:g"), 1, 3, FRESH_TS);
    w.shutdown();
    drop(s);
    dir
}

#[test]
fn open_refuses_a_corrupt_current_file() {
    let dir = db_with_data();
    std::fs::write(dir.path().join("CURRENT"), b"MANIFEST-999999\n").unwrap();
    let err = Storage::open(options(dir.path(), Durability::Fsync)).unwrap_err();
    assert!(!matches!(err, StorageError::NotADatabase(_)), "{err}");

    std::fs::write(dir.path().join("CURRENT"), b"\x00\xff garbage").unwrap();
    assert!(Storage::open(options(dir.path(), Durability::Fsync)).is_err());
}

#[test]
fn open_refuses_a_corrupt_manifest() {
    let dir = db_with_data();
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let manifest = dir.path().join(current.trim());
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    assert!(len > 0);
    // Overwrite the whole manifest with noise of the same length.
    let noise: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    std::fs::write(&manifest, noise).unwrap();
    let err = Storage::open(options(dir.path(), Durability::Fsync)).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Corrupt(_) | StorageError::Io(_) | StorageError::Db(_)
        ),
        "{err}"
    );
}

#[test]
fn sink_sees_every_token_once_in_submission_order() {
    const THREADS: u32 = 3;
    const PER_THREAD: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(options(dir.path(), Durability::Os)).unwrap();
    let (w, sink) = writer(&s);
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (w, start) = (w.clone(), start.clone());
            std::thread::spawn(move || {
                let c = conv(&format!("group:t{t}"));
                start.wait();
                let mut seq = 0;
                while seq < PER_THREAD {
                    // Mix single submits and small all-or-nothing groups.
                    if seq % 7 == 0 && seq + 3 <= PER_THREAD {
                        let reqs = (seq + 1..=seq + 3)
                            .map(|q| req(t, q, append(&c, q, FRESH_TS)))
                            .collect();
                        w.submit_many(reqs).unwrap();
                        seq += 3;
                    } else {
                        seq += 1;
                        w.submit(req(t, seq, append(&c, seq, FRESH_TS))).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    w.shutdown();
    let calls = sink.calls.lock().unwrap();
    for t in 0..THREADS {
        let tokens: Vec<u64> = calls
            .iter()
            .filter(|(r, _)| *r == t)
            .flat_map(|(_, res)| {
                res.iter().map(|(tok, r)| {
                    assert_eq!(r, &Ok(()));
                    *tok
                })
            })
            .collect();
        assert_eq!(tokens, (1..=PER_THREAD).collect::<Vec<_>>(), "reply_to {t}");
    }
    // Once per (batch, reply_to): never more calls than batches × reply_tos.
    let st = s.stats();
    assert!(calls.len() as u64 <= st.batches * u64::from(THREADS));
    assert_eq!(st.entries_written, PER_THREAD * u64::from(THREADS));
    assert_eq!(st.errors, 0);
    assert_eq!(st.queue_depth, 0);
}

/// Blocks the writer thread inside the sink until released.
struct GateSink {
    open: Mutex<bool>,
    cv: Condvar,
    calls: Mutex<u64>,
}

impl CommitSink for GateSink {
    fn committed(&self, _reply_to: u32, results: Results) {
        *self.calls.lock().unwrap() += results.len() as u64;
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }

    fn unrecoverable(&self, error: &StorageError) -> ! {
        panic!("storage batch with an unknown outcome: {error}");
    }
}

#[test]
fn a_full_queue_refuses_at_once_and_shutdown_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(options(dir.path(), Durability::None)).unwrap();
    let sink = Arc::new(GateSink {
        open: Mutex::new(false),
        cv: Condvar::new(),
        calls: Mutex::new(0),
    });
    let w = s.start_writer(sink.clone());
    let c = conv("group:q");
    // The first request occupies the writer (blocked in the sink).
    w.submit(req(0, 1, append(&c, 1, FRESH_TS))).unwrap();
    while *sink.calls.lock().unwrap() == 0 {
        std::thread::yield_now();
    }
    let reqs = |from: u64, n: u64| {
        (from..from + n)
            .map(|q| req(0, q, append(&c, q, FRESH_TS)))
            .collect()
    };
    let n = WRITE_QUEUE_MAX as u64;
    assert_eq!(
        w.submit_many(reqs(2, n + 1)),
        Err(StorageError::QueueFull),
        "too many at once"
    );
    w.submit_many(reqs(2, n - 1)).unwrap();
    w.submit(req(0, n + 1, append(&c, n + 1, FRESH_TS)))
        .unwrap();
    assert_eq!(s.stats().queue_depth, n);
    let t0 = std::time::Instant::now();
    assert_eq!(
        w.submit(req(0, 0, append(&c, n + 2, FRESH_TS))),
        Err(StorageError::QueueFull)
    );
    assert_eq!(w.submit_many(reqs(n + 2, 1)), Err(StorageError::QueueFull));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(1),
        "never blocks"
    );

    // Shutdown: stop accepting, drain all, commit all.
    let shutter = {
        let w = w.clone();
        std::thread::spawn(move || w.shutdown())
    };
    while w.submit(req(0, 0, append(&c, n + 2, FRESH_TS))) != Err(StorageError::Closed) {
        std::thread::yield_now();
    }
    *sink.open.lock().unwrap() = true;
    sink.cv.notify_all();
    shutter.join().unwrap();
    assert_eq!(*sink.calls.lock().unwrap(), n + 1);
    assert_eq!(s.conv_heads().unwrap(), vec![(c, n + 1)]);
    assert_eq!(s.stats().queue_depth, 0);
    w.shutdown(); // idempotent
}

#[test]
fn every_durability_survives_a_clean_shutdown() {
    for durability in [Durability::Fsync, Durability::Os, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let c = conv("group:g");
        {
            let s = Storage::open(options(dir.path(), durability)).unwrap();
            let (w, sink) = writer(&s);
            append_range(&w, &sink, &c, 1, 50, FRESH_TS);
            s.put_user(&UserRow {
                user: user("u"),
                name: None,
                meta_json: None,
                created_ts: 1,
            })
            .unwrap();
            w.shutdown();
        }
        let s = Storage::open(options(dir.path(), durability)).unwrap();
        assert_eq!(
            s.conv_heads().unwrap(),
            vec![(c.clone(), 50)],
            "{durability:?}"
        );
        assert_eq!(
            s.read_entries(&c, 0, 100).unwrap().0.len(),
            50,
            "{durability:?}"
        );
        assert!(s.user_exists(&user("u")).unwrap(), "{durability:?}");
    }
}

#[test]
fn a_closed_writer_refuses_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (w, _sink) = writer(&s);
    w.shutdown();
    let c = conv("group:g");
    assert_eq!(
        w.submit(req(0, 1, append(&c, 1, FRESH_TS))),
        Err(StorageError::Closed)
    );
    assert_eq!(
        w.submit_many(vec![req(0, 1, append(&c, 1, FRESH_TS))]),
        Err(StorageError::Closed)
    );
    assert_eq!(w.submit_many(vec![]), Ok(()));
}

#[test]
#[should_panic(expected = "start_writer called twice")]
fn a_second_writer_is_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (_w1, _) = writer(&s);
    let _w2 = writer(&s);
}

fn none_conv() -> tern_proto::ConvId {
    conv("group:none")
}

#[test]
fn sync_interval_groups_a_burst_but_never_holds_a_lone_request() {
    const INTERVAL: Duration = tern_storage::SYNC_INTERVAL_MAX;
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = options(&dir.path().join("db"), Durability::Fsync);
    opts.sync_interval = INTERVAL;
    let s = Storage::open(opts).expect("open");
    let (w, sink) = writer(&s);
    let c = conv("group:g");
    let ts = FRESH_TS;

    // After a quiet spell (here: the first request ever) nothing waits.
    let t0 = Instant::now();
    w.submit(req(0, 1, append(&c, 1, ts))).expect("submit");
    wait_results(&sink, 1);
    assert!(t0.elapsed() < INTERVAL, "a lone request was held back");

    // Requests sent one by one right after a commit wait for the interval
    // and then share one commit.
    let t1 = Instant::now();
    for seq in 2..=11 {
        w.submit(req(0, seq, append(&c, seq, ts))).expect("submit");
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_results(&sink, 11);
    let st = s.stats();
    assert_eq!(st.batches, 2, "the burst was not one batch: {st:?}");
    assert!(t1.elapsed() >= INTERVAL / 2, "no hold-back");
    for seq in 1..=11 {
        assert_eq!(sink.result_of(seq), Ok(()));
    }
    w.shutdown();
}

#[test]
fn a_sync_interval_above_the_limit_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = options(&dir.path().join("db"), Durability::Fsync);
    opts.sync_interval = tern_storage::SYNC_INTERVAL_MAX + Duration::from_micros(1);
    match Storage::open(opts) {
        Err(StorageError::Invalid(m)) => assert!(m.contains("sync interval"), "{m}"),
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
}
