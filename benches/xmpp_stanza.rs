//! Criterion benchmarks of the XMPP stanza steps the bridge pays for on every message, with
//! the crates the design card prescribes (rxml, minidom, xmpp-parsers): parse the bytes of a
//! chat stanza into an `Element`, convert it to a typed `Message`, and the way back.
//!
//! `cargo bench --bench xmpp_stanza` (add `-- --quick` for a short run). The sum of the
//! inbound steps is the floor of the XMPP → MQTT path's CPU per message as long as the link
//! reads untyped elements and converts them with `TryFrom` (issue 4's design).

use std::hint::black_box;
use std::str::FromStr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;

/// What a legacy client's chat message looks like when Prosody routes it to the component.
const CHAT: &str = "<message xmlns='jabber:component:accept' from='alice@localhost/laptop' \
    to='bob@mqtt.localhost' type='chat' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'>\
    <body>Hello Bob, this is a chat message of a typical length ~t123456;</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

fn stanza(c: &mut Criterion) {
    let mut g = c.benchmark_group("xmpp_stanza");
    g.bench_function("parse bytes -> Element", |b| {
        b.iter(|| Element::from_str(black_box(CHAT)))
    });
    g.bench_function("parse bytes -> Message (FromXml events, no Element)", |b| {
        b.iter(|| xso::from_bytes::<Message>(black_box(CHAT.as_bytes())))
    });
    let el = Element::from_str(CHAT).expect("valid stanza");
    g.bench_function("Element -> Message (TryFrom)", |b| {
        b.iter(|| Message::try_from(black_box(el.clone())))
    });
    g.bench_function("Element clone (subtract from TryFrom)", |b| {
        b.iter(|| black_box(&el).clone())
    });
    let msg = Message::try_from(el.clone()).expect("a message");
    g.bench_function("Message -> Element (From)", |b| {
        b.iter(|| Element::from(black_box(msg.clone())))
    });
    g.bench_function("Message -> bytes (AsXml, direct)", |b| {
        b.iter(|| xso::to_vec(black_box(&msg)))
    });
    g.bench_function("Element -> bytes", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            black_box(&el).write_to(&mut out).map(|()| out)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = stanza
}
criterion_main!(benches);
