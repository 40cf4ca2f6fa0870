//! Topic tries: subscriptions by topic filter and retained messages by topic name.
//!
//! Both trees have one node per topic level (MQTT 3.1.1 and 5.0 section 4.7), so a lookup costs
//! the number of levels and wildcard branches, not the number of entries.
//!
//! - [`SubscriptionTree`] maps a plain topic filter (a `$share/group/` prefix already removed) and
//!   a subscriber key to a value, and finds every subscription matching a published topic name.
//! - [`RetainedTree`] maps a topic name to a retained message and finds every message matching a
//!   filter, walking only the branches the filter can match.
//!
//! Both apply the `$` rule [MQTT-4.7.2-1]: a filter starting with `+` or `#` does not match a
//! topic name starting with `$`.
//!
//! Inputs are expected to be valid (see [`crate::broker::topic`]); an invalid filter is stored and
//! matched without panicking, with a `#` that is not last treated as an ordinary level. No
//! operation recurses on the depth of a topic, so a 32,768-level filter cannot overflow the stack.
//!
//! Memory: the full filter or topic string is stored once per node that holds entries, never per
//! key. Children are boxed so that hash-map buckets stay at 24 bytes: most nodes below the first
//! levels have a single child, and a one-entry map still allocates four buckets. 100,000 distinct
//! 3-4 level filters take about 550 bytes per subscription.

use std::collections::HashMap;
use std::hash::Hash;

/// Subscribers of one filter: a short list while small (the common case, kept at 24 bytes plus
/// the entries), a map when large.
enum Subscribers<K, V> {
    Few(Vec<(K, V)>),
    #[allow(clippy::box_collection)] // boxed so that the common `Few` case stays small
    Many(Box<HashMap<K, V>>),
}

/// Above this many subscribers of one filter, switch from a list to a map.
const FEW_MAX: usize = 16;

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        let list = match self {
            Subscribers::Few(list) => list,
            Subscribers::Many(map) => return map.insert(key, value),
        };
        if let Some(slot) = list.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        list.push((key, value));
        if list.len() > FEW_MAX {
            *self = Subscribers::Many(Box::new(list.drain(..).collect()));
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        match self {
            Subscribers::Few(list) => {
                let i = list.iter().position(|(k, _)| *k == key)?;
                Some(list.swap_remove(i).1)
            }
            Subscribers::Many(map) => map.remove(&key),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Subscribers::Few(list) => list.is_empty(),
            Subscribers::Many(map) => map.is_empty(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(K, &V)) {
        match self {
            Subscribers::Few(list) => list.iter().for_each(|(k, v)| f(*k, v)),
            Subscribers::Many(map) => map.iter().for_each(|(k, v)| f(*k, v)),
        }
    }
}

/// The subscriptions of one filter, with the filter spelled out once.
struct Leaf<K, V> {
    filter: Box<str>,
    subs: Subscribers<K, V>,
}

impl<K: Copy + Eq + Hash, V> Leaf<K, V> {
    fn emit(&self, f: &mut impl FnMut(&str, K, &V)) {
        self.subs.for_each(|k, v| f(&self.filter, k, v));
    }
}

/// One level of the subscription trie.
struct SubNode<K, V> {
    /// Children by literal level (boxed: see the module documentation on memory).
    children: HashMap<Box<str>, Box<SubNode<K, V>>>,
    /// Child for a `+` level.
    plus: Option<Box<SubNode<K, V>>>,
    /// Subscriptions whose filter ends with `#` right after this level.
    hash: Option<Box<Leaf<K, V>>>,
    /// Subscriptions whose filter ends at this level.
    leaf: Option<Box<Leaf<K, V>>>,
}

impl<K, V> SubNode<K, V> {
    fn new() -> Self {
        let children = HashMap::new();
        SubNode {
            children,
            plus: None,
            hash: None,
            leaf: None,
        }
    }
}

/// One step along a path: a literal level, `+`, or a final `#`.
#[derive(Clone, Copy)]
enum Step<'a> {
    Exact(&'a str),
    Plus,
    Hash,
}

/// The steps of a filter, with `#` recognised only as the last level.
fn filter_steps(filter: &str) -> impl Iterator<Item = Step<'_>> + Clone {
    let mut levels = filter.split('/').peekable();
    std::iter::from_fn(move || {
        let level = levels.next()?;
        Some(match level {
            "+" => Step::Plus,
            "#" if levels.peek().is_none() => Step::Hash,
            _ => Step::Exact(level),
        })
    })
}

/// The steps of a topic name: literal levels only.
fn topic_steps(topic: &str) -> impl Iterator<Item = Step<'_>> + Clone {
    topic.split('/').map(Step::Exact)
}

/// Splits the first level off a topic: `"a/b/c"` gives `("a", Some("b/c"))`.
/// Searched byte by byte: levels are short, and a plain loop beats `split_once`'s searcher
/// (its set-up was a visible share of routing in the bridge's profile).
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|b| b == b'/') {
        // `/` is ASCII, so both sides of it are on character boundaries.
        Some(i) => (rest.get(..i).unwrap_or(rest), rest.get(i + 1..)),
        None => (rest, None),
    }
}

/// What both trees' nodes offer for navigation, pruning and dropping.
trait TrieNode: Sized {
    fn child(&self, step: Step<'_>) -> Option<&Self>;
    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Self>;
    /// Detaches the child at `step`.
    fn take_child(&mut self, step: Step<'_>) -> Option<Self>;
    /// Number of children and entries held.
    fn weight(&self) -> usize;
    /// Detaches every child into `out`.
    fn take_children(&mut self, out: &mut Vec<Self>);
}

impl<K, V> TrieNode for SubNode<K, V> {
    fn child(&self, step: Step<'_>) -> Option<&Self> {
        match step {
            Step::Exact(level) => self.children.get(level).map(Box::as_ref),
            Step::Plus => self.plus.as_deref(),
            Step::Hash => None,
        }
    }
    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Self> {
        match step {
            Step::Exact(level) => self.children.get_mut(level).map(Box::as_mut),
            Step::Plus => self.plus.as_deref_mut(),
            Step::Hash => None,
        }
    }
    fn take_child(&mut self, step: Step<'_>) -> Option<Self> {
        match step {
            Step::Exact(level) => self.children.remove(level).map(|n| *n),
            Step::Plus => self.plus.take().map(|n| *n),
            Step::Hash => None,
        }
    }
    fn weight(&self) -> usize {
        let slots = [
            self.plus.is_some(),
            self.hash.is_some(),
            self.leaf.is_some(),
        ];
        self.children.len() + slots.iter().filter(|s| **s).count()
    }
    fn take_children(&mut self, out: &mut Vec<Self>) {
        out.extend(self.children.drain().map(|(_, n)| *n));
        out.extend(self.plus.take().map(|n| *n));
    }
}

/// Drops a subtree without recursion, so a very deep chain cannot overflow the stack.
fn drop_iteratively<N: TrieNode>(node: &mut N) {
    let mut stack = Vec::new();
    node.take_children(&mut stack);
    while let Some(mut next) = stack.pop() {
        next.take_children(&mut stack);
    }
}

/// After an entry was removed at the end of `path`, removes the nodes of the path left empty:
/// everything below the deepest node that is the root or holds more than the next path node.
fn prune<'a, N: TrieNode>(root: &mut N, path: impl Iterator<Item = Step<'a>> + Clone) {
    let mut keep = 0;
    let mut node: &N = root;
    for (depth, step) in path.clone().enumerate() {
        if node.weight() > 1 {
            keep = depth;
        }
        match node.child(step) {
            Some(next) => node = next,
            None => break, // a final `#`: its slot is in `node`
        }
    }
    if node.weight() > 0 {
        return;
    }
    let mut node = root;
    for (depth, step) in path.enumerate() {
        if depth == keep {
            drop(node.take_child(step));
            return;
        }
        match node.child_mut(step) {
            Some(next) => node = next,
            None => return,
        }
    }
}

impl<K, V> Drop for SubNode<K, V> {
    fn drop(&mut self) {
        drop_iteratively(self);
    }
}

/// Subscriptions by filter: who (key `K`, e.g. a session id) subscribed with what (`V`, e.g. the
/// subscription options).
pub struct SubscriptionTree<K, V> {
    root: SubNode<K, V>,
    len: usize,
}

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        let root = SubNode::new();
        SubscriptionTree { root, len: 0 }
    }

    /// Subscribes `key` to `filter` with `value`; replaces and returns the previous value of the
    /// same (filter, key).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut slot = None;
        for step in filter_steps(filter) {
            match step {
                Step::Exact(level) => {
                    node = node
                        .children
                        .entry(level.into())
                        .or_insert_with(|| Box::new(SubNode::new()));
                }
                Step::Plus => node = node.plus.get_or_insert_with(|| Box::new(SubNode::new())),
                Step::Hash => slot = Some(&mut node.hash),
            }
        }
        let slot = slot.unwrap_or(&mut node.leaf);
        let leaf = slot.get_or_insert_with(|| {
            // Most filters have one subscriber: allocate room for exactly one.
            let (filter, subs) = (filter.into(), Subscribers::Few(Vec::with_capacity(1)));
            Box::new(Leaf { filter, subs })
        });
        let previous = leaf.subs.insert(key, value);
        self.len += usize::from(previous.is_none());
        previous
    }

    /// Unsubscribes `key` from `filter`, returning its value; nodes left empty are removed.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let mut node = &mut self.root;
        let mut hash = false;
        for step in filter_steps(filter) {
            match step {
                Step::Hash => hash = true,
                step => node = node.child_mut(step)?,
            }
        }
        let slot = if hash { &mut node.hash } else { &mut node.leaf };
        let leaf = slot.as_mut()?;
        let value = leaf.subs.remove(key)?;
        self.len -= 1;
        if leaf.subs.is_empty() {
            *slot = None;
            prune(&mut self.root, filter_steps(filter));
        }
        Some(value)
    }

    /// Calls `f(filter, key, value)` once per subscription whose filter matches the topic name
    /// `topic`, applying the `$` rule [MQTT-4.7.2-1]. The order is unspecified.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, K, &V)) {
        let dollar = topic.starts_with('$');
        // Nodes still to visit with the rest of the topic; filled only where the walk branches.
        let mut pending: Vec<(&SubNode<K, V>, Option<&str>)> = Vec::new();
        let mut current = Some((&self.root, Some(topic)));
        let mut first = true;
        while let Some((node, rest)) = current.take().or_else(|| pending.pop()) {
            let wildcards = !(first && dollar);
            first = false;
            if let Some(leaf) = node.hash.as_deref().filter(|_| wildcards) {
                leaf.emit(&mut f);
            }
            let Some(rest) = rest else {
                if let Some(leaf) = &node.leaf {
                    leaf.emit(&mut f);
                }
                continue;
            };
            let (level, next) = split_level(rest);
            current = node.children.get(level).map(|child| (&**child, next));
            if let Some(plus) = node.plus.as_deref().filter(|_| wildcards) {
                match current {
                    None => current = Some((plus, next)),
                    Some(_) => pending.push((plus, next)),
                }
            }
        }
    }

    /// Number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A retained message with its topic name spelled out once.
struct Retained<M> {
    topic: Box<str>,
    msg: M,
}

/// One level of the retained-message tree.
struct RetNode<M> {
    children: HashMap<Box<str>, Box<RetNode<M>>>,
    entry: Option<Box<Retained<M>>>,
}

impl<M> RetNode<M> {
    fn new() -> Self {
        RetNode {
            children: HashMap::new(),
            entry: None,
        }
    }
}

impl<M> TrieNode for RetNode<M> {
    fn child(&self, step: Step<'_>) -> Option<&Self> {
        match step {
            Step::Exact(level) => self.children.get(level).map(Box::as_ref),
            _ => None,
        }
    }
    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Self> {
        match step {
            Step::Exact(level) => self.children.get_mut(level).map(Box::as_mut),
            _ => None,
        }
    }
    fn take_child(&mut self, step: Step<'_>) -> Option<Self> {
        match step {
            Step::Exact(level) => self.children.remove(level).map(|n| *n),
            _ => None,
        }
    }
    fn weight(&self) -> usize {
        self.children.len() + usize::from(self.entry.is_some())
    }
    fn take_children(&mut self, out: &mut Vec<Self>) {
        out.extend(self.children.drain().map(|(_, n)| *n));
    }
}

impl<M> Drop for RetNode<M> {
    fn drop(&mut self) {
        drop_iteratively(self);
    }
}

/// Retained messages by topic name.
pub struct RetainedTree<M> {
    root: RetNode<M>,
    len: usize,
}

impl<M> Default for RetainedTree<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> RetainedTree<M> {
    /// An empty tree.
    pub fn new() -> Self {
        let root = RetNode::new();
        RetainedTree { root, len: 0 }
    }

    /// Stores `msg` as the retained message of `topic`, returning the one it replaces.
    pub fn insert(&mut self, topic: &str, msg: M) -> Option<M> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node
                .children
                .entry(level.into())
                .or_insert_with(|| Box::new(RetNode::new()));
        }
        match &mut node.entry {
            Some(entry) => Some(std::mem::replace(&mut entry.msg, msg)),
            empty => {
                let topic = topic.into();
                *empty = Some(Box::new(Retained { topic, msg }));
                self.len += 1;
                None
            }
        }
    }

    /// Removes and returns the retained message of `topic`; nodes left empty are removed.
    pub fn remove(&mut self, topic: &str) -> Option<M> {
        let mut node = &mut self.root;
        for step in topic_steps(topic) {
            node = node.child_mut(step)?;
        }
        let entry = node.entry.take()?;
        self.len -= 1;
        prune(&mut self.root, topic_steps(topic));
        Some(entry.msg)
    }

    /// The retained message of `topic`.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for step in topic_steps(topic) {
            node = node.child(step)?;
        }
        Some(&node.entry.as_ref()?.msg)
    }

    /// Calls `f(topic, msg)` for each retained message whose topic matches `filter`, walking only
    /// the branches the filter can match and applying the `$` rule [MQTT-4.7.2-1]. The order is
    /// unspecified.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &M)) {
        let mut emit = |node: &RetNode<M>| {
            if let Some(entry) = &node.entry {
                f(&entry.topic, &entry.msg);
            }
        };
        // Nodes to visit with the rest of the filter (`None`: the filter is used up here).
        let mut pending = vec![(&self.root, Some(filter))];
        // Whole subtrees matched by a `#`.
        let mut subtrees: Vec<&RetNode<M>> = Vec::new();
        while let Some((node, rest)) = pending.pop() {
            let Some(rest) = rest else {
                emit(node);
                continue;
            };
            // Children a wildcard level may match: not those starting with '$' at the root.
            let is_root = std::ptr::eq(node, &self.root);
            let wild = node
                .children
                .iter()
                .filter(|(name, _)| !(is_root && name.starts_with('$')));
            match split_level(rest) {
                ("#", None) => {
                    emit(node); // `#` matches the parent level too: "sport/#" matches "sport".
                    subtrees.extend(wild.map(|(_, child)| &**child));
                }
                ("+", next) => pending.extend(wild.map(|(_, child)| (&**child, next))),
                (level, next) => pending.extend(node.children.get(level).map(|c| (&**c, next))),
            }
            while let Some(node) = subtrees.pop() {
                emit(node);
                subtrees.extend(node.children.values().map(Box::as_ref));
            }
        }
    }

    /// Keeps only the messages for which `keep(topic, msg)` returns true (for example to drop
    /// expired ones), pruning nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut M) -> bool) {
        let mut removed: Vec<Box<str>> = Vec::new();
        let mut stack: Vec<&mut RetNode<M>> = vec![&mut self.root];
        while let Some(node) = stack.pop() {
            if let Some(entry) = &mut node.entry {
                if !keep(&entry.topic, &mut entry.msg) {
                    removed.extend(node.entry.take().map(|e| e.topic));
                }
            }
            stack.extend(node.children.values_mut().map(Box::as_mut));
        }
        self.len -= removed.len();
        for topic in removed {
            prune(&mut self.root, topic_steps(&topic));
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no retained message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::topic::matches;
    use std::collections::BTreeMap;

    #[test]
    fn split_level_takes_the_first_level_off() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("abc"), ("abc", None));
        assert_eq!(split_level(""), ("", None));
        assert_eq!(split_level("/"), ("", Some("")));
        assert_eq!(split_level("a/"), ("a", Some("")));
        assert_eq!(split_level("/b"), ("", Some("b")));
        assert_eq!(split_level("é€/ü"), ("é€", Some("ü")));
    }

    /// splitmix64: a deterministic PRNG, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % n as u64) as usize
        }
        /// 1 to 4 levels from a small alphabet; "x/" adds an empty level, `+` and `#` optional.
        fn topic(&mut self, wildcards: bool) -> String {
            const LEVELS: &[&str] = &["a", "b", "c", "", "$SYS", "$x", "x/"];
            let n = 1 + self.below(4);
            let level = |i, rng: &mut Rng| match rng.below(if wildcards { 10 } else { 7 }) {
                7..=8 => "+",
                9 if i + 1 == n => "#",
                _ => LEVELS[rng.below(LEVELS.len())],
            };
            (0..n).map(|i| level(i, self)).collect::<Vec<_>>().join("/")
        }
    }

    type Subs = SubscriptionTree<u32, u64>;
    type Reference = BTreeMap<(String, u32), u64>;

    fn check_subs(tree: &Subs, reference: &Reference, rng: &mut Rng) {
        assert_eq!(tree.len(), reference.len());
        for _ in 0..1_000 {
            let topic = rng.topic(false);
            let mut got = Vec::new();
            tree.for_each_match(&topic, |f, k, v| got.push((f.to_owned(), k, *v)));
            got.sort();
            let hits = reference.iter().filter(|((f, _), _)| matches(f, &topic));
            let want: Vec<_> = hits.map(|((f, k), v)| (f.clone(), *k, *v)).collect();
            assert_eq!(got, want, "topic {topic:?}");
        }
    }

    /// Nodes below `node` (test trees are shallow, so recursion is fine here).
    fn sub_nodes<K, V>(node: &SubNode<K, V>) -> usize {
        node.children
            .values()
            .map(Box::as_ref)
            .chain(node.plus.as_deref())
            .map(|c| 1 + sub_nodes(c))
            .sum()
    }

    fn ret_nodes<M>(node: &RetNode<M>) -> usize {
        node.children.values().map(|c| 1 + ret_nodes(c)).sum()
    }

    #[test]
    fn subscriptions_match_brute_force() {
        let (mut rng, mut tree, mut reference) = (Rng(42), Subs::new(), Reference::new());
        for i in 0..10_000 {
            let (filter, key) = (rng.topic(true), rng.below(40) as u32);
            let previous = reference.insert((filter.clone(), key), i);
            assert_eq!(
                tree.insert(&filter, key, i),
                previous,
                "insert {filter:?} {key}"
            );
        }
        check_subs(&tree, &reference, &mut rng);
        // Remove about half, and some that were never there.
        for _ in 0..6_000 {
            let (filter, key) = (rng.topic(true), rng.below(40) as u32);
            let want = reference.remove(&(filter.clone(), key));
            assert_eq!(tree.remove(&filter, key), want, "remove {filter:?} {key}");
        }
        check_subs(&tree, &reference, &mut rng);
        for ((filter, key), value) in std::mem::take(&mut reference) {
            assert_eq!(tree.remove(&filter, key), Some(value));
        }
        assert!(tree.is_empty());
        assert_eq!(sub_nodes(&tree.root), 0, "every node pruned");
    }

    #[test]
    fn retained_match_brute_force() {
        let (mut rng, mut tree, mut reference) = (Rng(7), RetainedTree::new(), BTreeMap::new());
        for i in 0..10_000u64 {
            let topic = rng.topic(false);
            assert_eq!(tree.insert(&topic, i), reference.insert(topic.clone(), i));
        }
        let check = |tree: &RetainedTree<u64>, reference: &BTreeMap<String, u64>, rng: &mut Rng| {
            assert_eq!(tree.len(), reference.len());
            for _ in 0..1_000 {
                let filter = rng.topic(true);
                let mut got = Vec::new();
                tree.for_each_match(&filter, |t, m| got.push((t.to_owned(), *m)));
                got.sort();
                let hits = reference.iter().filter(|(t, _)| matches(&filter, t));
                let want: Vec<_> = hits.map(|(t, m)| (t.clone(), *m)).collect();
                assert_eq!(got, want, "filter {filter:?}");
            }
            reference
                .iter()
                .for_each(|(t, m)| assert_eq!(tree.get(t), Some(m)));
        };
        check(&tree, &reference, &mut rng);
        for _ in 0..200 {
            let topic = rng.topic(false);
            assert_eq!(
                tree.remove(&topic),
                reference.remove(&topic),
                "remove {topic:?}"
            );
            assert_eq!(tree.get(&topic), None);
        }
        check(&tree, &reference, &mut rng);
        let mut keep = |_: &str, m: &mut u64| {
            *m += 1;
            *m % 3 != 0
        };
        tree.retain(&mut keep);
        reference.retain(|t, m| keep(t, m));
        check(&tree, &reference, &mut rng);
        tree.retain(|_, _| false);
        assert!(tree.is_empty());
        assert_eq!(ret_nodes(&tree.root), 0, "every node pruned");
    }

    #[test]
    fn insert_replace_remove_and_prune() {
        let mut tree = SubscriptionTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b/c", 1u32, "one"), None);
        assert_eq!(tree.insert("a/b/c", 1, "uno"), Some("one"));
        for (filter, key, value) in [("a/b/c", 2, "two"), ("a/b", 1, "ab"), ("a/+/#", 1, "wild")] {
            assert_eq!(tree.insert(filter, key, value), None);
        }
        assert_eq!(tree.insert("a/#", 3, "hash"), None);
        assert_eq!((tree.len(), sub_nodes(&tree.root)), (5, 4)); // nodes a, a/b, a/b/c, a/+
        let mut seen = Vec::new();
        tree.for_each_match("a/b/c", |f, k, v| seen.push(format!("{f} {k} {v}")));
        seen.sort();
        assert_eq!(
            seen,
            ["a/# 3 hash", "a/+/# 1 wild", "a/b/c 1 uno", "a/b/c 2 two"]
        );

        assert_eq!(tree.remove("a/b/c", 9), None, "unknown key");
        assert_eq!(tree.remove("a/x", 1), None, "unknown filter");
        assert_eq!(tree.remove("a/+", 1), None, "a node, but no subscription");
        assert_eq!(tree.remove("a/b/c/#", 1), None, "no such subscription");
        assert_eq!(tree.len(), 5);
        // (filter, key, value, nodes left): a/b/c stays for key 2, then goes; a stays for a/#.
        for (filter, key, value, nodes) in [
            ("a/b/c", 1, "uno", 4),
            ("a/b/c", 2, "two", 3),
            ("a/+/#", 1, "wild", 2),
            ("a/b", 1, "ab", 1),
            ("a/#", 3, "hash", 0),
        ] {
            assert_eq!(tree.remove(filter, key), Some(value));
            assert_eq!(
                sub_nodes(&tree.root),
                nodes,
                "after removing {filter} {key}"
            );
        }
        assert!(tree.is_empty());
    }

    #[test]
    fn dollar_topics_and_wildcards() {
        let mut tree = SubscriptionTree::new();
        let filters = "# +/# + +/monitor/Clients $SYS/# $SYS/+/Clients sport/#";
        for (i, filter) in filters.split(' ').enumerate() {
            tree.insert(filter, i, ());
        }
        let hits = |topic: &str| {
            let mut hits = Vec::new();
            tree.for_each_match(topic, |f, _, _| hits.push(f.to_owned()));
            hits.sort();
            hits
        };
        assert_eq!(hits("$SYS/monitor/Clients"), ["$SYS/#", "$SYS/+/Clients"]);
        assert_eq!(hits("$SYS"), ["$SYS/#"]);
        assert_eq!(hits("sport"), ["#", "+", "+/#", "sport/#"]);
        assert_eq!(hits("/finance"), ["#", "+/#"]);
        assert_eq!(hits("x/monitor/Clients"), ["#", "+/#", "+/monitor/Clients"]);

        let mut retained = RetainedTree::new();
        for topic in [
            "$SYS/uptime",
            "$SYS",
            "sport",
            "sport/tennis",
            "/finance",
            "$",
        ] {
            retained.insert(topic, ());
        }
        let found = |filter: &str| {
            let mut found = Vec::new();
            retained.for_each_match(filter, |t, _| found.push(t.to_owned()));
            found.sort();
            found
        };
        assert_eq!(found("#"), ["/finance", "sport", "sport/tennis"]);
        assert_eq!(found("+"), ["sport"]);
        assert_eq!(found("+/+"), ["/finance", "sport/tennis"]);
        assert_eq!(found("$SYS/#"), ["$SYS", "$SYS/uptime"]);
        assert_eq!(found("sport/#"), ["sport", "sport/tennis"]);
        assert_eq!(found("sport/+"), ["sport/tennis"]);
        assert_eq!(found("$"), ["$"]);
    }

    #[test]
    fn many_subscribers_of_one_filter() {
        assert_eq!(std::mem::size_of::<Subscribers<u64, u64>>(), 24);
        let mut tree = SubscriptionTree::new();
        (0..100u32).for_each(|key| assert_eq!(tree.insert("news/#", key, key * 2), None));
        assert_eq!(tree.insert("news/#", 50, 0), Some(100));
        let mut count = 0;
        tree.for_each_match("news/today", |_, k, v| {
            assert_eq!(*v, if k == 50 { 0 } else { k * 2 });
            count += 1;
        });
        assert_eq!((count, tree.len()), (100, 100));
        (0..100).for_each(|key| assert!(tree.remove("news/#", key).is_some()));
        assert!(tree.is_empty());
        assert_eq!(sub_nodes(&tree.root), 0);
    }

    #[test]
    fn retained_replace_remove_and_prune() {
        let mut tree = RetainedTree::new();
        assert_eq!(tree.insert("a/b/c", 1), None);
        assert_eq!(tree.insert("a/b/c", 2), Some(1));
        assert_eq!(tree.insert("a", 3), None);
        assert_eq!((tree.len(), tree.get("a/b")), (2, None));
        assert_eq!(tree.remove("a/b"), None, "inner node without a message");
        assert_eq!(tree.remove("a/b/c/d"), None);
        assert_eq!(tree.remove("a/b/c"), Some(2));
        assert_eq!(ret_nodes(&tree.root), 1, "a/b and a/b/c pruned, a kept");
        assert_eq!(tree.remove("a"), Some(3));
        assert_eq!(ret_nodes(&tree.root), 0);
        assert!(tree.is_empty());
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        let deep = "/".repeat(40_000); // 40,001 empty levels
        let mut subs = SubscriptionTree::new();
        subs.insert(&deep, 1u8, ());
        subs.insert(&format!("{deep}/#"), 2, ());
        let mut hits = 0;
        subs.for_each_match(&deep, |_, _, _| hits += 1);
        assert_eq!(hits, 2);
        assert_eq!(subs.remove(&deep, 1), Some(()));
        drop(subs);

        let mut retained = RetainedTree::new();
        retained.insert(&deep, ());
        let mut found = 0;
        retained.for_each_match("#", |_, _| found += 1);
        assert_eq!(found, 1);
        retained.retain(|_, _| true);
        drop(retained);
    }
}
