//! Topic matching with 100,000 subscriptions: the subscription trie against a linear scan with
//! `topic::matches`, plus trie insert/remove and retained-message lookups.
//!
//! Run with `cargo bench --bench topic_match` (add `-- --quick` for a short run).

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xmpp_mqtt_bridge::broker::topic::matches;
use xmpp_mqtt_bridge::broker::trie::{RetainedTree, SubscriptionTree};

const SUBSCRIPTIONS: u32 = 100_000;
const IDS: u32 = 50_000;

/// A filter for subscription `i`: 80% exact 3-5 levels, 10% with `+`, 10% ending with `#`.
fn filter(rng: &mut StdRng) -> String {
    let id = rng.gen_range(0..IDS);
    match rng.gen_range(0..10) {
        0..=2 => format!("users/u{id}/inbox"),
        3..=4 => format!("devices/d{id}/sensors/temp"),
        5..=6 => format!("org/o{}/team/t{id}/events", id % 100),
        7 => format!("users/u{id}/presence"),
        8 => match rng.gen_range(0..2) {
            0 => format!("users/u{id}/+/status"),
            _ => format!("org/o{}/+/t{id}/events", id % 100),
        },
        _ => match rng.gen_range(0..2) {
            0 => format!("devices/d{id}/#"),
            _ => format!("users/u{id}/#"),
        },
    }
}

/// A topic name published somewhere in the same namespace.
fn topic(rng: &mut StdRng) -> String {
    let id = rng.gen_range(0..IDS);
    match rng.gen_range(0..5) {
        0 => format!("users/u{id}/inbox"),
        1 => format!("devices/d{id}/sensors/temp"),
        2 => format!("org/o{}/team/t{id}/events", id % 100),
        3 => format!("users/u{id}/chat/status"),
        _ => format!("devices/d{id}/sensors/humidity"),
    }
}

/// The trie, the same subscriptions as a list for the scan, and topics to publish to.
type Setup = (SubscriptionTree<u32, u8>, Vec<(String, u32)>, Vec<String>);

fn setup() -> Setup {
    let mut rng = StdRng::seed_from_u64(1);
    let mut tree = SubscriptionTree::new();
    let mut scan = Vec::with_capacity(SUBSCRIPTIONS as usize);
    for key in 0..SUBSCRIPTIONS {
        let f = filter(&mut rng);
        tree.insert(&f, key, 1);
        scan.push((f, key));
    }
    let topics = (0..1024).map(|_| topic(&mut rng)).collect();
    (tree, scan, topics)
}

fn bench(c: &mut Criterion) {
    let (mut tree, scan, topics) = setup();
    // The cross-check scans every subscription per topic: 100 million matches, about a minute
    // unoptimized. `cargo test --benches` (no `--bench` argument) checks the first 64 topics.
    let checked = if std::env::args().any(|a| a == "--bench") {
        topics.len()
    } else {
        64
    };
    let mut hits = (0usize, 0usize);
    for t in &topics[..checked] {
        tree.for_each_match(t, |_, _, _| hits.0 += 1);
        hits.1 += scan.iter().filter(|(f, _)| matches(f, t)).count();
    }
    assert_eq!(hits.0, hits.1, "trie and scan disagree");
    println!(
        "{} subscriptions, {} matches over {} topics (trie and scan agree)",
        tree.len(),
        hits.0,
        checked
    );

    let mut group = c.benchmark_group("match_100k");
    let mut i = 0;
    group.bench_function("trie", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            let mut n = 0u32;
            tree.for_each_match(black_box(&topics[i]), |_, k, _| n = n.wrapping_add(k));
            n
        })
    });
    group.bench_function("scan", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            let t = black_box(&topics[i]);
            scan.iter()
                .filter(|(f, _)| matches(f, t))
                .fold(0u32, |n, (_, k)| n.wrapping_add(*k))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("update_100k");
    let mut rng = StdRng::seed_from_u64(2);
    group.bench_function("insert_remove", |b| {
        b.iter_batched(
            || filter(&mut rng),
            |f| {
                tree.insert(&f, u32::MAX, 0);
                tree.remove(&f, u32::MAX)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("build_100k", |b| {
        b.iter_batched(
            || scan.clone(),
            |subs| {
                let mut t = SubscriptionTree::new();
                for (f, k) in &subs {
                    t.insert(f, *k, 0u8);
                }
                t.len()
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut retained = RetainedTree::new();
    for (i, t) in topics.iter().cycle().take(100_000).enumerate() {
        retained.insert(&format!("{t}/{i}"), i);
    }
    let mut group = c.benchmark_group("retained_100k");
    group.bench_function("exact_filter", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            let mut n = 0;
            retained.for_each_match(black_box(&format!("{}/{i}", topics[i])), |_, m| n += *m);
            n
        })
    });
    group.bench_function("plus_filter", |b| {
        b.iter(|| {
            let mut n = 0;
            retained.for_each_match(black_box("users/+/inbox/+"), |_, _| n += 1);
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
