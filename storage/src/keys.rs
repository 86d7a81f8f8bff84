//! Key and value layouts of every column family.
//!
//! Ids (user, group, conv) never contain 0x00 (they are validated against
//! `[A-Za-z0-9_.@:-]` at the edge), so composite keys are `a 0x00 b`, and
//! everything with the same first part sorts together. Seqs are big-endian
//! u64 so that byte order is numeric order and a range scan is a seq scan.
//!
//! Fixed layouts, so a compaction filter reads a timestamp without decoding:
//! - `msgs`:  key `conv 0x00 seq_be`, value `ts_be ++ entry storage bytes`
//! - `dedup`: key `conv 0x00 sender 0x00 cmid`, value `seq_be ++ ts_be`
//!   (cmid is last, so a 0x00 inside it cannot make two keys collide)
//! - `convs`: key `conv`, value `max_seq_be`
//! - `read`, `user_convs`, `members`, `user_groups`: key `a 0x00 b`
//! - `tokens_revoked`: key `user`, value `revoked_at_ms_be`

/// Separates the parts of a composite key; ids never contain it.
pub(crate) const SEP: u8 = 0x00;
/// One past `SEP`: `prefix ++ SEP_END` is the exclusive upper bound of every
/// key that starts with `prefix ++ SEP`.
const SEP_END: u8 = SEP + 1;

/// Byte offset of the ts (u64 BE) in a `msgs` value.
pub(crate) const MSG_TS_OFFSET: usize = 0;
/// Length of the fixed header of a `msgs` value (the ts).
pub(crate) const MSG_HEADER_LEN: usize = 8;
/// Byte offset of the ts (u64 BE) in a `dedup` value.
pub(crate) const DEDUP_TS_OFFSET: usize = 8;
/// Length of a `dedup` value: seq then ts.
const DEDUP_VALUE_LEN: usize = 16;

/// `a 0x00 b`.
pub(crate) fn pair_key(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a);
    k.push(SEP);
    k.extend_from_slice(b);
    k
}

/// Splits `a 0x00 b` at the first separator.
pub(crate) fn split_pair(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = key.iter().position(|&b| b == SEP)?;
    Some((&key[..i], &key[i + 1..]))
}

/// `a 0x00`: the first key of every pair key starting with `a`.
pub(crate) fn prefix_start(a: &[u8]) -> Vec<u8> {
    pair_key(a, &[])
}

/// `a 0x01`: the exclusive upper bound of every pair key starting with `a`.
pub(crate) fn prefix_end(a: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1);
    k.extend_from_slice(a);
    k.push(SEP_END);
    k
}

/// `conv 0x00 seq_be`.
pub(crate) fn msg_key(conv: &[u8], seq: u64) -> Vec<u8> {
    pair_key(conv, &seq.to_be_bytes())
}

/// The seq of a `msgs` key.
pub(crate) fn msg_key_seq(key: &[u8]) -> Option<u64> {
    let (_, seq) = split_pair(key)?;
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

/// Starts a `msgs` value (`ts_be ++ entry`): appends the header to `out`,
/// after which the entry's storage bytes follow.
pub(crate) fn put_msg_header(out: &mut Vec<u8>, ts: u64) {
    out.extend_from_slice(&ts.to_be_bytes());
}

/// `ts_be ++ entry`.
#[cfg(test)]
pub(crate) fn msg_value(ts: u64, entry: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(MSG_HEADER_LEN + entry.len());
    put_msg_header(&mut v, ts);
    v.extend_from_slice(entry);
    v
}

/// The ts and the entry storage bytes of a `msgs` value.
pub(crate) fn split_msg_value(v: &[u8]) -> Option<(u64, &[u8])> {
    let ts = read_u64_at(v, MSG_TS_OFFSET)?;
    Some((ts, &v[MSG_HEADER_LEN..]))
}

/// The start of `key` up to and including its `n`th separator (the whole
/// key if it has fewer): the memtable bucket of a key.
fn key_prefix(key: &[u8], n: usize) -> &[u8] {
    match key
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == SEP)
        .nth(n - 1)
    {
        Some((i, _)) => &key[..=i],
        None => key,
    }
}

/// `conv 0x00` of a `msgs` key: one conversation's entries.
pub(crate) fn msg_key_prefix(key: &[u8]) -> &[u8] {
    key_prefix(key, 1)
}

/// `conv 0x00 sender 0x00` of a `dedup` key: the rows of one sender in one
/// conversation.
pub(crate) fn dedup_key_prefix(key: &[u8]) -> &[u8] {
    key_prefix(key, 2)
}

/// `conv 0x00 sender 0x00 cmid`. `None` when the sender contains the
/// separator, which would make the key ambiguous.
pub(crate) fn dedup_key(conv: &[u8], sender: &[u8], cmid: &[u8]) -> Option<Vec<u8>> {
    if sender.contains(&SEP) {
        return None;
    }
    let mut k = Vec::with_capacity(conv.len() + sender.len() + cmid.len() + 2);
    k.extend_from_slice(conv);
    k.push(SEP);
    k.extend_from_slice(sender);
    k.push(SEP);
    k.extend_from_slice(cmid);
    Some(k)
}

/// `seq_be ++ ts_be`.
pub(crate) fn dedup_value(seq: u64, ts: u64) -> [u8; DEDUP_VALUE_LEN] {
    let mut v = [0u8; DEDUP_VALUE_LEN];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[DEDUP_TS_OFFSET..].copy_from_slice(&ts.to_be_bytes());
    v
}

/// (seq, ts) of a `dedup` value.
pub(crate) fn decode_dedup_value(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != DEDUP_VALUE_LEN {
        return None;
    }
    Some((read_u64_at(v, 0)?, read_u64_at(v, DEDUP_TS_OFFSET)?))
}

/// A value that is exactly one u64 BE.
pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The u64 BE at `offset`, if the value is long enough.
pub(crate) fn read_u64_at(v: &[u8], offset: usize) -> Option<u64> {
    let bytes = v.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of an id: never the separator.
    fn id() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..40)
    }

    proptest! {
        #[test]
        fn msg_key_round_trips_and_sorts_by_seq(conv in id(), a: u64, b: u64) {
            let (ka, kb) = (msg_key(&conv, a), msg_key(&conv, b));
            prop_assert_eq!(msg_key_seq(&ka), Some(a));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert!(ka >= prefix_start(&conv) && ka < prefix_end(&conv));
        }

        #[test]
        fn keys_of_other_convs_are_outside_the_range(c1 in id(), c2 in id(), s: u64) {
            prop_assume!(c1 != c2);
            let k = msg_key(&c2, s);
            prop_assert!(!(k >= prefix_start(&c1) && k < prefix_end(&c1)));
        }

        #[test]
        fn pair_key_round_trips(a in id(), b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let k = pair_key(&a, &b);
            prop_assert_eq!(split_pair(&k), Some((&a[..], &b[..])));
        }

        #[test]
        fn msg_value_round_trips(ts: u64, entry in proptest::collection::vec(any::<u8>(), 0..100)) {
            let v = msg_value(ts, &entry);
            prop_assert_eq!(read_u64_at(&v, MSG_TS_OFFSET), Some(ts));
            prop_assert_eq!(split_msg_value(&v), Some((ts, &entry[..])));
        }

        #[test]
        fn dedup_value_round_trips(seq: u64, ts: u64) {
            let v = dedup_value(seq, ts);
            prop_assert_eq!(decode_dedup_value(&v), Some((seq, ts)));
            prop_assert_eq!(read_u64_at(&v, DEDUP_TS_OFFSET), Some(ts));
        }

        #[test]
        fn a_scan_range_is_one_memtable_bucket(conv in id(), a: u64, b: u64) {
            // A history scan seeks to one key of the conversation and stops
            // at `prefix_end`: every key it may see is in the seek key's
            // bucket, which prefix-mode iteration relies on.
            let (seek, other, start) = (msg_key(&conv, a), msg_key(&conv, b), prefix_start(&conv));
            prop_assert_eq!(msg_key_prefix(&seek), start.as_slice());
            prop_assert_eq!(msg_key_prefix(&other), msg_key_prefix(&seek));
        }

        #[test]
        fn a_senders_dedup_rows_share_a_bucket(
            conv in id(), sender in id(),
            c1 in proptest::collection::vec(any::<u8>(), 0..20),
            c2 in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let k1 = dedup_key(&conv, &sender, &c1).expect("no separator in sender");
            let k2 = dedup_key(&conv, &sender, &c2).expect("no separator in sender");
            let want = [&conv[..], &[SEP], &sender[..], &[SEP]].concat();
            prop_assert_eq!(dedup_key_prefix(&k1), want.as_slice());
            prop_assert_eq!(dedup_key_prefix(&k2), want.as_slice());
        }

        #[test]
        fn dedup_keys_are_unambiguous(
            conv in id(), s1 in id(), s2 in id(),
            c1 in proptest::collection::vec(any::<u8>(), 1..20),
            c2 in proptest::collection::vec(any::<u8>(), 1..20),
        ) {
            prop_assume!((&s1, &c1) != (&s2, &c2));
            prop_assert_ne!(dedup_key(&conv, &s1, &c1), dedup_key(&conv, &s2, &c2));
        }
    }

    #[test]
    fn short_values_do_not_decode() {
        assert_eq!(split_msg_value(&[1, 2, 3]), None);
        assert_eq!(decode_dedup_value(&[0; 15]), None);
        assert_eq!(decode_u64(&[0; 9]), None);
        assert_eq!(read_u64_at(&[0; 8], 1), None);
        assert_eq!(dedup_key(b"c", b"a\0b", b"x"), None);
    }
}
