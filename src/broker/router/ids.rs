//! Hashing for the router's maps keyed by the broker's own ids ([`SessionId`], [`ConnId`]).
//!
//! Every packet a client sends looks its session up by connection and then by session id;
//! with the standard library's SipHash that was two keyed hashes per acknowledgement. These
//! ids are counters the broker hands out itself, never chosen by a client, so a hash that an
//! attacker could aim collisions at is no risk here, and a multiplication is enough.
//!
//! [`SessionId`]: crate::broker::session::SessionId
//! [`ConnId`]: crate::broker::link::ConnId

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing of one integer: an odd multiplier keeps consecutive ids in distinct low
/// bits (the table's bucket) and spreads them over the high bits (its tags).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// 2^64 divided by the golden ratio.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; kept correct for any other `Hash` impl.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(FIBONACCI);
    }
}

/// A map keyed by one of the broker's own ids.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_get_distinct_buckets_and_spread_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=1024u64).map(|id| build.hash_one(id)).collect();
        // The low 10 bits (a 1,024-bucket table) are a bijection of the low 10 bits of the id.
        let mut buckets: Vec<u64> = hashes.iter().map(|h| h & 1023).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 1024);
        // The top 7 bits (hashbrown's tags) take many values, not one.
        let mut tags: Vec<u64> = hashes.iter().map(|h| h >> 57).collect();
        tags.sort_unstable();
        tags.dedup();
        assert!(tags.len() > 100, "{} tags", tags.len());
    }

    #[test]
    fn a_map_keyed_by_ids_finds_what_it_holds() {
        let mut map: IdMap<u64, u64> = IdMap::default();
        for id in (0..10_000u64).map(|i| i * 7919) {
            map.insert(id, id + 1);
        }
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000u64).all(|i| map.get(&(i * 7919)) == Some(&(i * 7919 + 1))));
        assert_eq!(map.get(&1), None);
    }
}
