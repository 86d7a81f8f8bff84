//! Sends in flight, by dedup key (conversation, sender, cmid): a duplicate
//! that arrives while the first copy is being stored waits for its answer
//! instead of being stored twice.
//!
//! The key is hashed once per send. The hash and the send's storage token
//! form a [`Ticket`] that finds the entry again on commit by comparing two
//! integers, not the key's four strings.

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::Arc;

use tern_proto::UserId;

use crate::mesh::ReplyTo;

/// A duplicate waiting for the first copy's outcome: where to answer, and
/// its own cmid (the same text; kept so the answer needs no look-up).
pub(crate) type Waiter = (ReplyTo, String);

/// Finds a send's entry on commit.
#[derive(Debug)]
pub(crate) struct Ticket {
    hash: u64,
    token: u64,
}

struct Slot {
    hash: u64,
    token: u64,
    /// The conversation's text, shared with the send's other uses of it.
    conv: Arc<str>,
    from: UserId,
    cmid: String,
    waiters: Vec<Waiter>,
}

/// The sends of one owner shard that are being stored.
#[derive(Default)]
pub(crate) struct InFlight {
    table: HashTable<Slot>,
    hasher: DefaultHashBuilder,
}

impl InFlight {
    /// The hash of a key, for [`InFlight::wait`] and [`InFlight::insert`].
    pub fn hash(&self, conv: &str, from: &UserId, cmid: &str) -> u64 {
        self.hasher.hash_one((conv, from, cmid))
    }

    /// If the key (conv, from, the waiter's cmid) is in flight, queue `w`
    /// for its outcome (`Ok`); else hand `w` back.
    pub fn wait(&mut self, hash: u64, conv: &str, from: &UserId, w: Waiter) -> Result<(), Waiter> {
        let cmid = w.1.as_str();
        let found = self.table.find_mut(hash, |s| {
            s.hash == hash && *s.conv == *conv && s.from == *from && s.cmid == cmid
        });
        match found {
            Some(s) => {
                s.waiters.push(w);
                Ok(())
            }
            None => Err(w),
        }
    }

    /// Record a key as in flight under the storage `token` of its write.
    /// The key must not be in flight already ([`InFlight::wait`] first).
    pub fn insert(
        &mut self,
        hash: u64,
        token: u64,
        conv: Arc<str>,
        from: UserId,
        cmid: String,
    ) -> Ticket {
        debug_assert_eq!(hash, self.hash(&conv, &from, &cmid), "hash of another key");
        let slot = Slot {
            hash,
            token,
            conv,
            from,
            cmid,
            waiters: Vec::new(),
        };
        self.table.insert_unique(hash, slot, |s| s.hash);
        Ticket { hash, token }
    }

    /// The key is no longer in flight: its waiters, to be answered.
    pub fn remove(&mut self, t: &Ticket) -> Vec<Waiter> {
        match self.table.find_entry(t.hash, |s| s.token == t.token) {
            Ok(e) => e.remove().0.waiters,
            Err(_) => {
                debug_assert!(false, "ticket {t:?} not in flight");
                Vec::new()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ReplyTo;

    fn conv(s: &str) -> Arc<str> {
        s.into()
    }
    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user")
    }
    fn waiter(cmid: &str) -> Waiter {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        (ReplyTo::Http(tx), cmid.to_owned())
    }

    /// A duplicate of a key in flight waits, a different key (any of the
    /// three parts) does not, and removing the ticket returns the waiters
    /// and forgets the key.
    #[test]
    fn only_the_same_key_waits_and_removal_returns_its_waiters() {
        let mut f = InFlight::default();
        let (c, alice) = (conv("dm:alice:bob"), user("alice"));
        let h = f.hash(&c, &alice, "m1");
        assert!(f.wait(h, &c, &alice, waiter("m1")).is_err());
        let t = f.insert(h, 7, c.clone(), alice.clone(), "m1".into());
        assert!(f.wait(h, &c, &alice, waiter("m1")).is_ok());
        for (cv, u, m) in [
            (conv("dm:alice:carol"), user("alice"), "m1"),
            (c.clone(), user("bob"), "m1"),
            (c.clone(), alice.clone(), "m2"),
        ] {
            let h2 = f.hash(&cv, &u, m);
            assert!(f.wait(h2, &cv, &u, waiter(m)).is_err(), "{cv} {u} {m}");
        }
        assert_eq!(f.remove(&t).len(), 1);
        assert_eq!(f.len(), 0);
        assert!(f.wait(h, &c, &alice, waiter("m1")).is_err());
    }

    /// Two keys with one hash (forced) are told apart on removal by token.
    #[test]
    fn removal_finds_its_own_entry_among_equal_hashes() {
        let mut f = InFlight::default();
        let c = conv("dm:alice:bob");
        let (a, b) = (user("alice"), user("bob"));
        let h = f.hash(&c, &a, "m1");
        // Insert directly with a shared hash to force a collision.
        let t1 = f.insert(h, 1, c.clone(), a.clone(), "m1".into());
        f.table.insert_unique(
            h,
            Slot {
                hash: h,
                token: 2,
                conv: c.clone(),
                from: b.clone(),
                cmid: "m1".into(),
                waiters: vec![waiter("x")],
            },
            |s| s.hash,
        );
        assert!(f.remove(&t1).is_empty());
        assert_eq!(f.len(), 1);
        assert_eq!(f.remove(&Ticket { hash: h, token: 2 }).len(), 1);
        assert_eq!(f.len(), 0);
    }
}
