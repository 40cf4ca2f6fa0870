//! Remembered results of JID validation for the MQTT → XMPP direction.
//!
//! Every publish toward XMPP validates the sender's localpart (nodeprep, exact) and the
//! recipient (nodeprep and IDNA, normalised); both are pure functions of a short string, and
//! the same users and peers recur, so their results are kept in two bounded maps. In a
//! profile of the bridge these validations were about 7 % of the CPU per message.
//!
//! The maps are per thread (the broker's guard and the bridge translate on different
//! threads): no lock, and no cache line moving between cores per message.
//!
//! Bounds: at most [`MAX_ENTRIES`] per map and thread (emptied when full: a simple bound that never
//! grows, where a burst of distinct names only costs the validations they cost before), and
//! only strings up to [`MAX_KEY`] bytes are kept, so topic levels chosen by clients cannot
//! make the maps large.

use std::cell::RefCell;
use std::collections::HashMap;

use xmpp_parsers::jid::BareJid;

use super::pattern::exact_node;

/// Entries per map at most.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// Longest string kept (a JID's parts are at most 1023 bytes each; real ones are short).
pub(crate) const MAX_KEY: usize = 256;

struct Bounded<V> {
    map: RefCell<HashMap<Box<str>, V>>,
}

impl<V: Clone> Bounded<V> {
    fn new() -> Self {
        Bounded {
            map: RefCell::new(HashMap::new()),
        }
    }

    fn get_or(&self, key: &str, compute: impl FnOnce(&str) -> V) -> V {
        if key.len() > MAX_KEY {
            return compute(key);
        }
        if let Some(v) = self.map.borrow().get(key) {
            return v.clone();
        }
        // Computed without a borrow held, so `compute` may use other caches.
        let v = compute(key);
        let mut map = self.map.borrow_mut();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key.into(), v.clone());
        v
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.borrow().len()
    }
}

thread_local! {
    static NODES: Bounded<bool> = Bounded::new();
    static BARE: Bounded<Option<Box<str>>> = Bounded::new();
}

/// [`exact_node`], remembered.
pub(crate) fn exact_node_cached(node: &str) -> bool {
    NODES.with(|c| c.get_or(node, exact_node))
}

/// The normalised form of bare JID `raw` (`BareJid::new`), or `None` if it is not one;
/// remembered.
pub(crate) fn bare_jid_cached(raw: &str) -> Option<Box<str>> {
    BARE.with(|c| c.get_or(raw, |raw| BareJid::new(raw).ok().map(|j| j.as_str().into())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn remembered_results_equal_the_validation() {
        let nodes = [
            "alice", "Alice", "al ice", "al@ice", "ünï", "ÜNÏ", "", "a/b", "a\u{0}",
        ];
        for _ in 0..2 {
            for n in nodes {
                assert_eq!(exact_node_cached(n), exact_node(n), "{n:?}");
            }
        }
        let jids = [
            "alice@example.org",
            "Alice@Example.ORG",
            "example.org",
            "a@b@c",
            "@example.org",
            "alice@",
            "a lice@example.org",
            "ünï@bücher.example",
            "alice@example.org/res",
            "",
        ];
        for _ in 0..2 {
            for j in jids {
                let direct = BareJid::new(j).ok().map(|b| b.as_str().to_string());
                assert_eq!(bare_jid_cached(j).map(String::from), direct, "{j:?}");
            }
        }
        assert_eq!(
            bare_jid_cached("Alice@Example.ORG").as_deref(),
            Some("alice@example.org")
        );
    }

    #[test]
    fn the_maps_stay_bounded() {
        let cache = Bounded::<bool>::new();
        for i in 0..MAX_ENTRIES + 5 {
            assert!(cache.get_or(&format!("u{i}"), |_| true));
            assert!(cache.len() <= MAX_ENTRIES);
        }
        let long = "x".repeat(MAX_KEY + 1);
        let before = cache.len();
        assert!(!cache.get_or(&long, |_| false));
        assert_eq!(cache.len(), before, "long strings are not kept");
        // A kept result is returned without computing again.
        assert!(cache.get_or("u-once", |_| true));
        assert!(cache.get_or("u-once", |_| false));
    }
}
