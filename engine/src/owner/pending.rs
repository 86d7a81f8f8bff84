//! Writes waiting for their commit, by storage token.
//!
//! Tokens are handed out in increasing order and the storage writer answers
//! one shard's requests in the order they were submitted, so the entries
//! waiting form a window of consecutive tokens: a ring indexed by
//! `token - base` finds one without hashing. Tokens used for other requests
//! (read positions) leave empty slots, dropped as the window's front moves.

use std::collections::VecDeque;

/// Values keyed by increasing `u64` tokens.
pub(crate) struct TokenRing<T> {
    /// Token of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
    /// Occupied slots.
    len: usize,
}

impl<T> Default for TokenRing<T> {
    fn default() -> Self {
        TokenRing {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> TokenRing<T> {
    /// Store `v` under `token`, which must be above every token stored
    /// since the ring was last empty.
    pub fn insert(&mut self, token: u64, v: T) {
        if self.slots.is_empty() {
            self.base = token;
        }
        let end = self.base + self.slots.len() as u64;
        assert!(token >= end, "token {token} not above the window end {end}");
        for _ in end..token {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(v));
        self.len += 1;
    }

    /// Take the value of `token`, if stored.
    pub fn remove(&mut self, token: u64) -> Option<T> {
        let idx = usize::try_from(token.checked_sub(self.base)?).ok()?;
        let v = self.slots.get_mut(idx)?.take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        debug_assert!(self.len > 0 || self.slots.is_empty());
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_out_of_order_removal_with_gaps() {
        let mut r = TokenRing::default();
        r.insert(5, "a");
        r.insert(6, "b");
        r.insert(9, "c"); // 7 and 8 went elsewhere
        assert_eq!(r.len(), 3);
        assert_eq!(r.remove(7), None);
        assert_eq!(r.remove(6), Some("b"));
        assert_eq!(r.remove(6), None, "taken once");
        assert_eq!(r.remove(5), Some("a"));
        assert_eq!(r.slots.len(), 1, "the front advanced past the gaps");
        assert_eq!(r.remove(4), None);
        assert_eq!(r.remove(100), None);
        assert_eq!(r.remove(9), Some("c"));
        assert_eq!(r.len(), 0);
        assert!(r.slots.is_empty());
        // Empty again: the window restarts at the next token.
        r.insert(20, "d");
        assert_eq!(r.slots.len(), 1);
        assert_eq!(r.remove(20), Some("d"));
    }

    #[test]
    #[should_panic(expected = "not above the window end")]
    fn a_token_below_the_window_is_refused() {
        let mut r = TokenRing::default();
        r.insert(5, 1);
        r.insert(5, 2);
    }
}
