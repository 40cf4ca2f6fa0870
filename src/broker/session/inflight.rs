//! The in-flight window of one session, keyed by packet id: finding the entry an
//! acknowledgement names is O(1) however many are in flight (the bridge's in-process session
//! has the whole id space as its window), and removing it from the middle is O(1) too. The
//! entries stay in the order they were sent, which resending on reconnect needs (MQTT 3.1.1
//! section 4.4): a doubly linked list through the map, by packet id (0 is never a packet id,
//! so it marks the ends).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::Inflight;

/// Hashes packet ids (and nothing else) so that the table keeps some locality. The bridge's
/// session has thousands of messages in flight (all unconfirmed by the XMPP server), with ids
/// given out one after the other and acknowledged mostly in that order; hashing them all over
/// a table of megabytes made each look-up, and each neighbour update of the list, a cache
/// miss (`InflightMap::remove` alone was 3.4 % of the bridge's CPU on that path). So the low
/// 16 bits (the bucket) are the id's high byte as it is, and its low byte mixed with the high
/// one (a bijection, so no two ids share them): 256 consecutive ids fall into one block of
/// 256 buckets, and consecutive blocks follow each other. The mix makes ids that differ only
/// in their high byte (which some clients pick) fall into different buckets of a small table.
/// The top bits, where the map takes its tags from, are a Fibonacci product of the id.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PkidHasher(u64);

impl Hasher for PkidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let x = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
            self.0 = x ^ (x >> 32);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = spread(id);
    }
}

/// The hash of one packet id (see [`PkidHasher`]).
fn spread(id: u16) -> u64 {
    let (high, low) = (u64::from(id >> 8), u64::from(id & 0xFF));
    // An odd multiplier is a bijection modulo 256.
    let mixed = low ^ (high.wrapping_mul(0x9D) & 0xFF);
    let tag = u64::from(id).wrapping_mul(FIBONACCI) & !0xFFFF;
    tag | (high << 8) | mixed
}

/// 2^64 divided by the golden ratio (Fibonacci hashing).
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

/// Builds [`PkidHasher`]s.
pub(crate) type PkidHash = BuildHasherDefault<PkidHasher>;

/// A set of packet ids.
pub(crate) type PkidSet = HashSet<u16, PkidHash>;

/// No neighbour: the end of the list.
const NONE: u16 = 0;

#[derive(Debug)]
struct Slot {
    entry: Inflight,
    prev: u16,
    next: u16,
}

/// In-flight entries by packet id, in the order they were sent.
#[derive(Debug, Default)]
pub(super) struct InflightMap {
    slots: HashMap<u16, Slot, PkidHash>,
    head: u16,
    tail: u16,
}

impl InflightMap {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn contains(&self, pkid: u16) -> bool {
        self.slots.contains_key(&pkid)
    }

    pub(super) fn get(&self, pkid: u16) -> Option<&Inflight> {
        self.slots.get(&pkid).map(|s| &s.entry)
    }

    /// Replaces the entry of `pkid` in place (its position is kept); the old one back.
    pub(super) fn replace(&mut self, pkid: u16, entry: Inflight) -> Option<Inflight> {
        let slot = self.slots.get_mut(&pkid)?;
        Some(std::mem::replace(&mut slot.entry, entry))
    }

    /// Appends `entry` under `pkid`; false (and `entry` dropped) when `pkid` is 0 or already
    /// in flight.
    pub(super) fn push_back(&mut self, pkid: u16, entry: Inflight) -> bool {
        if pkid == NONE || self.slots.contains_key(&pkid) {
            return false;
        }
        let prev = self.tail;
        self.slots.insert(
            pkid,
            Slot {
                entry,
                prev,
                next: NONE,
            },
        );
        match (prev != NONE).then(|| self.slots.get_mut(&prev)).flatten() {
            Some(p) => p.next = pkid,
            None => self.head = pkid,
        }
        self.tail = pkid;
        true
    }

    /// Takes the entry of `pkid` out, wherever it is.
    pub(super) fn remove(&mut self, pkid: u16) -> Option<Inflight> {
        let slot = self.slots.remove(&pkid)?;
        // Acknowledgements mostly come in order: the head, whose neighbour lookup is skipped.
        match (slot.prev != NONE)
            .then(|| self.slots.get_mut(&slot.prev))
            .flatten()
        {
            Some(p) => p.next = slot.next,
            None => self.head = slot.next,
        }
        match (slot.next != NONE)
            .then(|| self.slots.get_mut(&slot.next))
            .flatten()
        {
            Some(n) => n.prev = slot.prev,
            None => self.tail = slot.prev,
        }
        Some(slot.entry)
    }

    /// The entries in the order they were sent.
    pub(super) fn iter(&self) -> Iter<'_> {
        Iter {
            map: self,
            at: self.head,
        }
    }

    /// Takes every entry out, in the order they were sent.
    pub(super) fn drain(&mut self) -> Vec<Inflight> {
        let mut out = Vec::with_capacity(self.slots.len());
        let mut at = self.head;
        while let Some(slot) = self.slots.remove(&at) {
            at = slot.next;
            out.push(slot.entry);
        }
        debug_assert!(self.slots.is_empty(), "the list covers every entry");
        self.slots.clear();
        self.head = NONE;
        self.tail = NONE;
        out
    }
}

/// Iterator over [`InflightMap`] in sending order.
pub(super) struct Iter<'a> {
    map: &'a InflightMap,
    at: u16,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Inflight;

    fn next(&mut self) -> Option<&'a Inflight> {
        let slot = self.map.slots.get(&self.at)?;
        self.at = slot.next;
        Some(&slot.entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(id: u16) -> Inflight {
        Inflight::Released(id, u64::from(id) * 10)
    }

    fn ids(m: &InflightMap) -> Vec<u16> {
        m.iter().map(Inflight::pkid).collect()
    }

    #[test]
    fn keeps_sending_order_through_removals_from_anywhere() {
        let mut m = InflightMap::default();
        for id in [5, 1, 9, 3, 7] {
            assert!(m.push_back(id, released(id)));
        }
        assert_eq!(ids(&m), [5, 1, 9, 3, 7]);
        assert!(matches!(m.remove(9), Some(Inflight::Released(9, 90))));
        assert_eq!(ids(&m), [5, 1, 3, 7], "middle");
        assert!(m.remove(5).is_some());
        assert_eq!(ids(&m), [1, 3, 7], "head");
        assert!(m.remove(7).is_some());
        assert_eq!(ids(&m), [1, 3], "tail");
        assert!(m.remove(7).is_none(), "gone");
        assert!(m.push_back(7, released(7)));
        assert_eq!(ids(&m), [1, 3, 7], "appended after the new tail");
        assert!(m.remove(1).is_some() && m.remove(3).is_some() && m.remove(7).is_some());
        assert_eq!(m.len(), 0);
        assert!(m.iter().next().is_none());
        assert!(m.push_back(2, released(2)));
        assert_eq!(ids(&m), [2], "an emptied list starts again");
    }

    #[test]
    fn ids_differing_in_any_bits_spread_over_buckets_and_tags() {
        use std::hash::BuildHasher;
        let hash = |id: u16| PkidHash::default().hash_one(id);
        for ids in [
            (0..256u16).map(|k| (k << 8) | 1).collect::<Vec<_>>(),
            (1..=256u16).collect(),
        ] {
            let buckets: PkidSet = ids.iter().map(|&id| (hash(id) & 0xff) as u16).collect();
            let tags: PkidSet = ids.iter().map(|&id| (hash(id) >> 57) as u16).collect();
            assert!(buckets.len() > 128, "{} low bytes of 256", buckets.len());
            assert!(tags.len() > 64, "{} top-7-bit tags of 128", tags.len());
        }
    }

    #[test]
    fn consecutive_ids_stay_together_and_no_two_ids_share_a_bucket_of_the_full_table() {
        use std::hash::BuildHasher;
        let hash = |id: u16| PkidHash::default().hash_one(id);
        let mut seen = vec![false; 1 << 16];
        for id in 0..=u16::MAX {
            let h = hash(id);
            assert_eq!((h >> 8) & 0xFF, u64::from(id >> 8), "{id}: its block");
            let bucket = (h & 0xFFFF) as usize;
            assert!(!seen[bucket], "{id} shares bucket {bucket}");
            seen[bucket] = true;
        }
        // A hashed set of the whole id space works as well as any.
        let all: PkidSet = (0..=u16::MAX).collect();
        assert_eq!(all.len(), 1 << 16);
        assert!((0..=u16::MAX).all(|id| all.contains(&id)));
    }

    #[test]
    fn refuses_id_zero_and_ids_in_flight() {
        let mut m = InflightMap::default();
        assert!(!m.push_back(0, released(0)));
        assert!(m.push_back(4, released(4)));
        assert!(!m.push_back(4, released(4)), "4 is in flight");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn replace_keeps_the_position() {
        let mut m = InflightMap::default();
        for id in 1..=3 {
            assert!(m.push_back(id, released(id)));
        }
        assert!(matches!(
            m.replace(2, Inflight::Released(2, 99)),
            Some(Inflight::Released(2, 20))
        ));
        assert!(m.replace(8, released(8)).is_none());
        assert_eq!(ids(&m), [1, 2, 3]);
        assert!(matches!(m.get(2), Some(Inflight::Released(2, 99))));
    }

    #[test]
    fn drain_takes_all_in_order_and_leaves_it_empty() {
        let mut m = InflightMap::default();
        for id in [3, 65_535, 1] {
            assert!(m.push_back(id, released(id)));
        }
        assert!(m.remove(65_535).is_some());
        let out: Vec<u16> = m.drain().iter().map(Inflight::pkid).collect();
        assert_eq!(out, [3, 1]);
        assert_eq!(m.len(), 0);
        assert!(m.push_back(65_535, released(65_535)));
        assert_eq!(ids(&m), [65_535]);
    }

    #[test]
    fn the_whole_id_space_in_flight_and_acknowledged_out_of_order() {
        let mut m = InflightMap::default();
        for id in 1..=u16::MAX {
            assert!(m.push_back(id, released(id)));
        }
        // Every other id first, then the rest backwards.
        for id in (1..=u16::MAX).step_by(2) {
            assert!(m.remove(id).is_some());
        }
        assert_eq!(ids(&m), (2..=u16::MAX).step_by(2).collect::<Vec<_>>());
        for id in (2..u16::MAX).rev().step_by(2) {
            assert!(m.remove(id).is_some());
        }
        assert_eq!(m.len(), 0);
        assert!(m.iter().next().is_none());
    }
}
