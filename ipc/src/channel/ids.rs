//! A cheap hash for tables keyed by ids this side hands out itself.
//!
//! Call ids (sequential, from [`super::Channel::next_call_id`]), our arena slots and
//! arena ids are the channel's own, so those tables' contents cannot be chosen by
//! the peer; an id it sends only looks one up. (Tables keyed by the peer's ids keep
//! std's SipHash.) SipHash (the std default, built against chosen keys) costs ~200
//! instructions per insert, lookup or remove, on the round trip's critical path. One
//! multiplication by an odd constant (Fibonacci hashing) spreads sequential ids over
//! both the low bits (bucket) and the top bits (hashbrown's tag) of the hash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` with a multiplication.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in byte by byte.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// The set of call ids awaiting an answer.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// A map keyed by ids this side hands out (its arena slots, arena ids).
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Sequential ids get distinct hashes whose top 7 bits (hashbrown's tag) and
    /// low bits (the bucket) both vary, and the set behaves as a set.
    #[test]
    fn sequential_ids_spread_over_tag_and_bucket_bits() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let hs: Vec<u64> = (1..=1024u64).map(|i| b.hash_one(i)).collect();
        let tags: HashSet<u64> = hs.iter().map(|h| h >> 57).collect();
        let buckets: HashSet<u64> = hs.iter().map(|h| h & 1023).collect();
        assert!(tags.len() >= 100, "{} distinct tags", tags.len());
        assert_eq!(buckets.len(), 1024);
        let mut s = IdSet::default();
        for i in 1..=1000u64 {
            assert!(s.insert(i));
        }
        assert!(!s.insert(7));
        assert!(s.remove(&7) && !s.contains(&7) && s.contains(&8));
        assert_eq!(s.len(), 999);
    }
}
