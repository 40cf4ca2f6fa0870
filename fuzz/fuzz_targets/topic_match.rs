//! Fuzz target for topic names and filters: `cargo +nightly fuzz run topic_match`.
//!
//! The input is split into lines. Each line is checked as a topic name and as a topic filter
//! against a simple reference validator, and the valid ones are cross-checked: `topic::matches`,
//! the subscription trie and the retained-message trie must agree with a naive recursive matcher
//! for every (filter, name) pair. Invalid filters go into a trie too: they must not panic.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use xmpp_mqtt_bridge::broker::topic::{
    MAX_TOPIC_LEN, TopicError, matches, parse_shared, validate_topic_filter, validate_topic_name,
};
use xmpp_mqtt_bridge::broker::trie::{RetainedTree, SubscriptionTree};

/// Lines considered per input: the cross-check is quadratic.
const MAX_LINES: usize = 48;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').take(MAX_LINES).collect();

    let mut filters: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for line in &lines {
        let name_ok = validate_topic_name(line).is_ok();
        assert_eq!(name_ok, reference_name_ok(line), "name {line:?}");
        let filter = validate_topic_filter(line);
        if let Some(shared) = parse_shared(line) {
            // Shared filters: valid exactly when group and inner filter are.
            if filter.is_ok() {
                assert!(!shared.group.is_empty() && !shared.group.contains(['+', '#']));
                assert!(reference_filter_ok(shared.filter), "shared {line:?}");
            }
        } else if line.starts_with("$share/") {
            assert!(filter.is_err(), "{line:?}");
        } else {
            assert_eq!(filter.is_ok(), reference_filter_ok(line), "filter {line:?}");
            if filter.is_ok() {
                filters.push(line);
            }
        }
        if let Err(e) = filter {
            assert!(!e.to_string().is_empty());
            assert_ne!(e, TopicError::TooLong, "fuzz lines are short");
        }
        if name_ok {
            names.push(line);
        }
    }

    let mut subs: SubscriptionTree<usize, ()> = SubscriptionTree::new();
    for (key, filter) in filters.iter().enumerate() {
        subs.insert(filter, key, ());
    }
    let mut retained: RetainedTree<usize> = RetainedTree::new();
    for (i, name) in names.iter().enumerate() {
        retained.insert(name, i);
    }

    for name in &names {
        let mut got = BTreeSet::new();
        subs.for_each_match(name, |filter, key, ()| {
            assert_eq!(filter, filters[key]);
            got.insert(key);
        });
        let want: BTreeSet<usize> = (0..filters.len())
            .filter(|&k| reference_matches(filters[k], name))
            .collect();
        assert_eq!(got, want, "subscriptions matching {name:?}");
        for (k, filter) in filters.iter().enumerate() {
            assert_eq!(
                matches(filter, name),
                want.contains(&k),
                "{filter:?} {name:?}"
            );
        }
    }
    for filter in &filters {
        let mut got = BTreeSet::new();
        retained.for_each_match(filter, |topic, _| {
            got.insert(topic.to_string());
        });
        let want: BTreeSet<String> = names
            .iter()
            .filter(|n| reference_matches(filter, n))
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, want, "retained matching {filter:?}");
    }

    // Removing everything leaves empty trees.
    for (key, filter) in filters.iter().enumerate() {
        assert_eq!(subs.remove(filter, key), Some(()), "{filter:?}");
    }
    assert!(subs.is_empty());
    for name in &names {
        retained.remove(name);
    }
    assert!(retained.is_empty());

    // Any string, valid or not, is stored and matched without panicking.
    let mut any: SubscriptionTree<usize, ()> = SubscriptionTree::new();
    for (key, line) in lines.iter().enumerate() {
        any.insert(line, key, ());
    }
    let mut any_retained: RetainedTree<()> = RetainedTree::new();
    for line in &lines {
        any.for_each_match(line, |_, _, ()| {});
        any_retained.insert(line, ());
        any_retained.for_each_match(line, |_, ()| {});
        let _ = matches(line, line);
    }
});

fn reference_string_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_LEN && !s.contains('\0')
}

fn reference_name_ok(s: &str) -> bool {
    reference_string_ok(s) && !s.contains('+') && !s.contains('#')
}

fn reference_filter_ok(s: &str) -> bool {
    if !reference_string_ok(s) {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        let wild = level.contains('+') || level.contains('#');
        !wild || *level == "+" || (*level == "#" && i == levels.len() - 1)
    })
}

/// Level-by-level recursion, written from the specification and nothing else.
fn reference_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = name.split('/').collect();
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (None, None) => true,
            (Some(&"#"), _) => true,
            (Some(fl), Some(tl)) if *fl == "+" || fl == tl => go(&f[1..], &t[1..]),
            _ => false,
        }
    }
    go(&f, &t)
}
