//! Random interleavings of appends (good and bad) to several conversations,
//! over several writer sessions and reopens, recover exactly the heads a
//! simple model predicts, with every timeline gap-free.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use tern_storage::{Durability, Storage, StorageError, StoredEntry};

/// Conversations the ops spread over.
const N_CONVS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Append conv's next seq + `skew` (0 is the right seq; others are
    /// gaps or repeats and must be rejected).
    Append { conv: usize, skew: i8 },
    /// Close the writer and the DB, reopen, start a new writer.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..N_CONVS, Just(0i8)).prop_map(|(conv, skew)| Op::Append { conv, skew }),
        2 => (0..N_CONVS, -2i8..=2).prop_map(|(conv, skew)| Op::Append { conv, skew }),
        1 => Just(Op::Reopen),
    ]
}

fn conv_name(i: usize) -> String {
    // Ids that are prefixes of each other, to catch range leaks.
    ["group:a", "group:ab", "dm:a:b", "dm:a:bb"][i].to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_appends_recover_the_right_heads(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let convs: Vec<_> = (0..N_CONVS).map(|i| conv(&conv_name(i))).collect();
        let mut model: BTreeMap<usize, u64> = BTreeMap::new();
        let mut s = Storage::open(options(dir.path(), Durability::Os)).unwrap();
        let (mut w, mut sink) = writer(&s);
        let mut token = 0u64;
        // token → (conv idx, seq, expected ok) of the current session
        let mut expect: Vec<(u64, usize, u64, bool)> = Vec::new();
        for op in ops {
            match op {
                Op::Append { conv, skew } => {
                    let head = model.get(&conv).copied().unwrap_or(0);
                    let seq = (head as i64 + 1 + i64::from(skew)).max(0) as u64;
                    if seq == 0 {
                        // Not an entry of any conversation: refused before
                        // it can reach the writer.
                        let e = entry(&convs[conv], 0, FRESH_TS);
                        prop_assert!(StoredEntry::new(&convs[conv], &e).is_err());
                        continue;
                    }
                    let ok = seq == head + 1;
                    if ok {
                        model.insert(conv, seq);
                    }
                    token += 1;
                    w.submit(req(0, token, append(&convs[conv], seq, FRESH_TS))).unwrap();
                    expect.push((token, conv, seq, ok));
                }
                Op::Reopen => {
                    w.shutdown();
                    check_results(&sink, &expect)?;
                    expect.clear();
                    drop(s);
                    s = Storage::open(options(dir.path(), Durability::Os)).unwrap();
                    (w, sink) = writer(&s);
                }
            }
        }
        w.shutdown();
        check_results(&sink, &expect)?;
        drop(s);

        let s = Storage::open(options(dir.path(), Durability::Os)).unwrap();
        let heads: BTreeMap<String, u64> =
            s.conv_heads().unwrap().into_iter().map(|(c, h)| (c.to_string(), h)).collect();
        let want: BTreeMap<String, u64> =
            model.iter().map(|(&i, &h)| (conv_name(i), h)).collect();
        prop_assert_eq!(heads, want);
        for (i, c) in convs.iter().enumerate() {
            let head = model.get(&i).copied().unwrap_or(0);
            let (entries, more) = s.read_entries(c, 0, 1000).unwrap();
            prop_assert!(!more);
            let seqs: Vec<u64> = entries.iter().map(|e| e.seq()).collect();
            prop_assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
        }
    }
}

fn check_results(
    sink: &CollectSink,
    expect: &[(u64, usize, u64, bool)],
) -> Result<(), TestCaseError> {
    let all = sink.all();
    prop_assert_eq!(all.len(), expect.len());
    for ((_, token, result), &(t, _, seq, ok)) in all.iter().zip(expect) {
        prop_assert_eq!(*token, t);
        if ok {
            prop_assert_eq!(result, &Ok(()));
        } else {
            let rejected = matches!(result, Err(StorageError::SeqGap { got, .. }) if *got == seq)
                || (seq == 0 && matches!(result, Err(StorageError::Invalid(_))));
            prop_assert!(rejected, "seq {} gave {:?}", seq, result);
        }
    }
    Ok(())
}
