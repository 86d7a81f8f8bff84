//! A timeline entry encoded for the `msgs` column family, once, by whoever
//! builds it: the sender's owner shard encodes it while it still holds the
//! entry, so the entry moves on into the push frame instead of being cloned
//! for storage, and the writer thread only copies bytes.

use tern_proto::{ConvId, Entry};

use crate::keys;
use crate::StorageError;

/// An entry checked against its conversation (seq not 0, same conversation)
/// and encoded as its `msgs` value (`ts_be ++ archive`).
#[derive(Debug, Clone)]
pub struct StoredEntry {
    seq: u64,
    ts: u64,
    /// The conversation's text (the `msgs` and `convs` key prefix), taken
    /// from the entry, so the writer thread does not format it again.
    conv_key: Box<[u8]>,
    value: Vec<u8>,
}

impl StoredEntry {
    /// `Invalid` if the entry's seq is 0 or it belongs to another
    /// conversation than `conv`.
    pub fn new(conv: &ConvId, entry: &Entry) -> Result<StoredEntry, StorageError> {
        let seq = entry.seq();
        if seq == 0 {
            return Err(StorageError::Invalid(format!("{conv}: entry seq 0")));
        }
        if !conv.is_text(entry.conv()) {
            return Err(StorageError::Invalid(format!(
                "entry of {} appended to {conv}",
                entry.conv()
            )));
        }
        let ts = entry.ts();
        let mut value = Vec::with_capacity(keys::MSG_HEADER_LEN + 256);
        keys::put_msg_header(&mut value, ts);
        if !entry.append_storage_bytes(&mut value) {
            return Err(StorageError::Invalid(format!(
                "entry {conv} seq {seq} cannot be encoded"
            )));
        }
        let conv_key = entry.conv().as_bytes().into();
        Ok(StoredEntry {
            seq,
            ts,
            conv_key,
            value,
        })
    }

    /// The entry's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The entry's server time.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// The conversation's text as a key (equal to `conv.to_text()` of the
    /// conversation it was checked against).
    pub(crate) fn conv_key(&self) -> &[u8] {
        &self.conv_key
    }

    /// The `msgs` value.
    pub(crate) fn value(&self) -> &[u8] {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{Kind, Msg, RawJson};

    fn msg(conv: &str, seq: u64) -> Entry {
        Entry::Msg(Msg {
            conv: conv.into(),
            seq,
            from: "alice".into(),
            device: "phone".into(),
            cmid: "c1".into(),
            kind: Kind::Text,
            body: RawJson::from_text("\"hi\"").expect("json"),
            ts: 1_767_225_600_123,
        })
    }

    /// The value is byte for byte what the writer stored before entries
    /// came encoded: data written by older builds reads the same.
    #[test]
    fn the_value_is_the_header_and_the_entrys_storage_bytes() {
        let c = ConvId::parse("dm:alice:bob").expect("conv");
        let e = msg("dm:alice:bob", 7);
        let s = StoredEntry::new(&c, &e).expect("valid");
        assert_eq!((s.seq(), s.ts()), (7, 1_767_225_600_123));
        assert_eq!(
            s.conv_key(),
            c.to_text().as_bytes(),
            "the key is the conv's text"
        );
        assert_eq!(s.value(), keys::msg_value(e.ts(), &e.to_storage_bytes()));
        let (ts, bytes) = keys::split_msg_value(s.value()).expect("split");
        assert_eq!(ts, e.ts());
        assert_eq!(Entry::from_storage_bytes(bytes).expect("decodes"), e);
    }

    #[test]
    fn seq_zero_and_another_conversation_are_invalid() {
        let c = ConvId::parse("dm:alice:bob").expect("conv");
        for e in [
            msg("dm:alice:bob", 0),
            msg("group:x", 1),
            msg("dm:alice:carol", 1),
        ] {
            assert!(
                matches!(StoredEntry::new(&c, &e), Err(StorageError::Invalid(_))),
                "{e:?}"
            );
        }
    }
}
