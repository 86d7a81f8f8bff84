//! Fan-out planning, written as the engine's owner shard does it: members
//! grouped by home shard (`hash(user) % n_shards`, SipHash with fixed
//! keys), each group frozen into an `Arc<[UserId]>` so one item per home
//! shard can carry it without copying.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tern_proto::UserId;

/// The engine's routing hash: `DefaultHasher::new()` has fixed keys, so
/// every thread agrees.
pub fn route_hash<T: Hash + ?Sized>(x: &T) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// The home shard of a user.
pub fn home_shard(user: &UserId, n_shards: usize) -> usize {
    (route_hash(user.as_str()) % n_shards as u64) as usize
}

/// Members partitioned by home shard: entry `i` holds the members whose
/// home is shard `i`.
pub fn plan(members: &HashSet<UserId>, n_shards: usize) -> Arc<Vec<Arc<[UserId]>>> {
    let mut by_home: Vec<Vec<UserId>> = (0..n_shards).map(|_| Vec::new()).collect();
    for u in members {
        by_home[home_shard(u, n_shards)].push(u.clone());
    }
    Arc::new(by_home.into_iter().map(Into::into).collect())
}

/// `n` distinct user ids (`user0`, `user1`, ...).
pub fn members(n: usize) -> HashSet<UserId> {
    (0..n)
        .filter_map(|i| UserId::parse(&format!("user{i}")).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_once_on_its_home() {
        let m = members(1000);
        assert_eq!(m.len(), 1000);
        let p = plan(&m, 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().map(|s| s.len()).sum::<usize>(), 1000);
        for (i, part) in p.iter().enumerate() {
            assert!(
                !part.is_empty(),
                "shard {i} empty: the hash does not spread"
            );
            for u in part.iter() {
                assert_eq!(home_shard(u, 4), i);
                assert!(m.contains(u));
            }
        }
    }
}
