//! A shard's connections, addressed by (slot, generation).
//!
//! Storage grows in fixed chunks that are never moved: a single growing
//! `Vec` would copy every connection on each doubling and leave the old
//! buffers to the allocator, which keeps them resident (measured: about half
//! of an idle connection's cost before this, docs/BENCHMARKS.md).

use super::conn::Conn;
use super::prefetch::prefetch;

/// Connections per chunk: ~280 KB each, allocated as one block whose pages
/// are only touched as slots fill.
const CHUNK: usize = 1024;

/// Connection slots with generations.
#[derive(Default)]
pub(crate) struct Slab {
    chunks: Vec<Vec<Option<Conn>>>,
    /// Generation of each slot handed out; bumped when its connection goes.
    gens: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// A free slot and the generation its next connection must carry.
    pub fn vacant(&mut self) -> (u32, u32) {
        if let Some(&s) = self.free.last() {
            return (s, self.gens[s as usize]);
        }
        let s = self.gens.len();
        if s.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = &mut self.chunks[s / CHUNK];
        debug_assert!(chunk.len() < CHUNK, "a chunk never reallocates");
        chunk.push(None);
        self.gens.push(0);
        self.free.push(s as u32);
        (s as u32, 0)
    }

    /// Put `c` into the slot [`Slab::vacant`] returned last.
    pub fn insert(&mut self, slot: u32, c: Conn) {
        debug_assert_eq!(self.free.last(), Some(&slot));
        debug_assert_eq!(self.gens[slot as usize], c.gen);
        self.free.pop();
        let s = slot as usize;
        let cell = &mut self.chunks[s / CHUNK][s % CHUNK];
        debug_assert!(cell.is_none());
        *cell = Some(c);
        self.len += 1;
    }

    pub fn get_mut(&mut self, slot: u32, gen: u32) -> Option<&mut Conn> {
        let s = slot as usize;
        match self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK) {
            Some(Some(c)) if c.gen == gen => Some(c),
            _ => None,
        }
    }

    /// Start loading `slot`'s connection into the cache without waiting for
    /// it: the address is computed, not read. A large fan-out touches one
    /// connection per member, each a cache miss when taken in turn.
    pub fn prefetch(&self, slot: u32) {
        let s = slot as usize;
        if let Some(chunk) = self.chunks.get(s / CHUNK) {
            if s % CHUNK < chunk.len() {
                let p = chunk.as_ptr().wrapping_add(s % CHUNK).cast::<u8>();
                for line in 0..std::mem::size_of::<Option<Conn>>().div_ceil(64) {
                    prefetch(p.wrapping_add(line * 64));
                }
            }
        }
    }

    pub fn get(&self, slot: u32, gen: u32) -> Option<&Conn> {
        let s = slot as usize;
        match self.chunks.get(s / CHUNK)?.get(s % CHUNK) {
            Some(Some(c)) if c.gen == gen => Some(c),
            _ => None,
        }
    }

    pub fn remove(&mut self, slot: u32, gen: u32) -> Option<Conn> {
        let s = slot as usize;
        let cell = self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)?;
        if cell.as_ref().map(|c| c.gen) != Some(gen) {
            return None;
        }
        let c = cell.take();
        self.gens[s] = gen.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        c
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// (slot, gen) of every connection.
    pub fn keys(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(self.len);
        for (ci, chunk) in self.chunks.iter().enumerate() {
            for (i, c) in chunk.iter().enumerate() {
                if let Some(c) = c {
                    out.push(((ci * CHUNK + i) as u32, c.gen));
                }
            }
        }
        out
    }
}

/// The connections of one user on its home shard. Most users have one
/// device online: that one is kept inline, with no allocation.
#[derive(Debug)]
pub(crate) enum UserConns {
    One((u32, u32)),
    Many(Vec<(u32, u32)>),
}

impl UserConns {
    pub fn as_slice(&self) -> &[(u32, u32)] {
        match self {
            UserConns::One(k) => std::slice::from_ref(k),
            UserConns::Many(v) => v,
        }
    }

    pub fn push(&mut self, k: (u32, u32)) {
        match self {
            UserConns::One(first) => *self = UserConns::Many(vec![*first, k]),
            UserConns::Many(v) => v.push(k),
        }
    }

    /// Remove `k`; returns true when none is left.
    pub fn remove(&mut self, k: (u32, u32)) -> bool {
        match self {
            UserConns::One(first) => *first == k,
            UserConns::Many(v) => {
                v.retain(|&x| x != k);
                match v[..] {
                    [] => true,
                    [only] => {
                        *self = UserConns::One(only);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UserConns;

    #[test]
    fn user_conns_keep_every_device_and_shrink_back_inline() {
        let mut u = UserConns::One((1, 0));
        u.push((2, 0));
        u.push((3, 5));
        assert_eq!(u.as_slice(), &[(1, 0), (2, 0), (3, 5)]);
        assert!(!u.remove((2, 0)));
        assert!(!u.remove((9, 9)));
        assert!(!u.remove((1, 0)));
        assert!(matches!(u, UserConns::One((3, 5))));
        assert!(
            !u.remove((3, 4)),
            "another generation is another connection"
        );
        assert!(u.remove((3, 5)));
        assert_eq!(std::mem::size_of::<UserConns>(), 24);
    }
}
