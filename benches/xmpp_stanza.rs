//! Criterion benchmarks of the XMPP stanza steps the bridge pays for on every message, with
//! the crates the design card prescribes (rxml, minidom, xmpp-parsers): parse the bytes of a
//! chat stanza into an `Element`, convert it to a typed `Message`, and the way back.
//!
//! `cargo bench --bench xmpp_stanza` (add `-- --quick` for a short run). The `stream of 100`
//! cases read a component stream of 100 chat stanzas per iteration (time per stanza = time /
//! 100): the link's own reader (`src/xmpp/{splitter,fast_stanza,wire_reader}.rs`: stanzas
//! found in the buffer, a chat message read by hand), the way tokio-xmpp's `XmlStream` read
//! them before it (one rxml parser for the stream, events fed to xmpp-parsers' builder,
//! "FromXml events"), and the way before that (`Element`, then `TryFrom`). `CHAT` is a
//! message with a body and a chat state; `CHAT_FULL` also carries a receipt request and an
//! origin id, as modern clients send every chat message (371 bytes in the stream).

use std::hint::black_box;
use std::str::FromStr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use xmpp_mqtt_bridge::xmpp::read_stream_as_link;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;

/// What a legacy client's chat message looks like when Prosody routes it to the component.
const CHAT: &str = "<message xmlns='jabber:component:accept' from='alice@localhost/laptop' \
    to='bob@mqtt.localhost' type='chat' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'>\
    <body>Hello Bob, this is a chat message of a typical length ~t123456;</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

/// [`CHAT`] with what XEP-0184 and XEP-0359 add to each message of a modern client.
const CHAT_FULL: &str = "<message xmlns='jabber:component:accept' from='alice@localhost/laptop' \
    to='bob@mqtt.localhost' type='chat' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'>\
    <body>Hello Bob, this is a chat message of a typical length ~t123456;</body>\
    <request xmlns='urn:xmpp:receipts'/>\
    <origin-id xmlns='urn:xmpp:sid:0' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'/>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

/// Stanzas per stream in the stream cases.
const STREAM_STANZAS: usize = 100;

/// The header of the stream cases.
const HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='mqtt.localhost'>";

/// A component stream (header, `n` copies of `chat` without its `xmlns`, no footer).
fn stream_of(chat: &str, n: usize) -> Vec<u8> {
    let mut s = String::from(HEADER);
    let chat = chat.replacen(" xmlns='jabber:component:accept'", "", 1);
    for _ in 0..n {
        s.push_str(&chat);
    }
    s.into_bytes()
}

/// Reads every child of the stream's root as a `T` with one parser (what tokio-xmpp's
/// `XmlStream` does, minus the socket).
fn read_stream<T: xso::FromXml>(mut buf: &[u8]) -> Vec<T> {
    use rxml::Parse;
    use xso::FromEventsBuilder;
    let mut parser = rxml::Parser::new();
    let ctx = xso::Context::empty();
    let mut out = Vec::new();
    let mut builder: Option<T::Builder> = None;
    let mut depth = 0usize;
    while let Ok(Some(ev)) = parser.parse(&mut buf, true) {
        if let Some(b) = builder.as_mut() {
            if let Ok(Some(v)) = b.feed(ev, &ctx) {
                out.push(v);
                builder = None;
            }
            continue;
        }
        match ev {
            rxml::Event::StartElement(_, name, attrs) if depth == 1 => {
                builder = T::from_events(name, attrs, &ctx).ok();
            }
            rxml::Event::StartElement(..) => depth += 1,
            _ => {}
        }
    }
    out
}

fn stanza(c: &mut Criterion) {
    let mut g = c.benchmark_group("xmpp_stanza");
    g.bench_function("parse bytes -> Element", |b| {
        b.iter(|| Element::from_str(black_box(CHAT)))
    });
    g.bench_function("parse bytes -> Message (FromXml events, no Element)", |b| {
        b.iter(|| xso::from_bytes::<Message>(black_box(CHAT.as_bytes())))
    });
    // In the stream: one parser for many stanzas, as on the link (the stanzas inherit the
    // stream's default namespace). Per stanza = time / STREAM_STANZAS.
    for (label, chat) in [("", CHAT), (" (full chat)", CHAT_FULL)] {
        let stream = stream_of(chat, STREAM_STANZAS);
        let content = &stream[HEADER.len()..];
        assert_eq!(read_stream::<Message>(&stream).len(), STREAM_STANZAS);
        assert_eq!(read_stream::<Element>(&stream).len(), STREAM_STANZAS);
        assert_eq!(read_stream_as_link(content), STREAM_STANZAS);
        g.bench_function(
            format!("stream of 100{label}: bytes -> Element -> Message (TryFrom)"),
            |b| {
                b.iter(|| {
                    read_stream::<Element>(black_box(&stream))
                        .into_iter()
                        .map(Message::try_from)
                        .filter(Result::is_ok)
                        .count()
                })
            },
        );
        g.bench_function(
            format!("stream of 100{label}: bytes -> Message (FromXml events, XmlStream's way)"),
            |b| b.iter(|| read_stream::<Message>(black_box(&stream)).len()),
        );
        g.bench_function(
            format!("stream of 100{label}: bytes -> Incoming (the link's reader)"),
            |b| b.iter(|| read_stream_as_link(black_box(content))),
        );
        g.bench_function(
            format!("stream of 100{label}: bytes -> Element only"),
            |b| b.iter(|| read_stream::<Element>(black_box(&stream)).len()),
        );
    }
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
