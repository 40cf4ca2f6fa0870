#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use futures::SinkExt;
use tokio::io::{AsyncReadExt, DuplexStream};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::receipts::Received;

use super::super::raw_xml::tests::{
    OldStream, TRICKY, cases, chat, old_bytes, old_stream, parse_stanzas, ping,
};
use super::*;

fn stanza(s: Stanza) -> Wire {
    Wire::Stanza(Arc::new(s))
}

/// One of each kind of item the link writes, chat messages between them.
fn mixed() -> Vec<Wire> {
    let mut items: Vec<Wire> = cases()
        .into_iter()
        .map(|c| stanza(Stanza::Chat(c)))
        .collect();
    let disco: Element = "<iq xmlns='jabber:component:accept' type='result' id='d1' \
        from='mqtt.localhost' to='alice@localhost/pc'>\
        <query xmlns='http://jabber.org/protocol/disco#info'>\
        <identity category='gateway' type='mqtt' name='a &amp; b'/></query></iq>"
        .parse()
        .unwrap();
    items.insert(1, Wire::Element(Arc::new(disco)));
    let mut m = Message::new_with_type(MessageType::Chat, Some("bob@localhost".parse().unwrap()));
    m.from = Some("alice@mqtt.localhost".parse().unwrap());
    m.payloads.push(Received { id: "r1".into() }.into());
    m.bodies.insert(Default::default(), TRICKY.into());
    items.insert(3, stanza(Stanza::Message(m)));
    items.insert(4, stanza(Stanza::Iq(ping("xmb-ping-1-1"))));
    let mut p = Presence::new(PresenceType::Unavailable);
    p.from = Some("alice@mqtt.localhost".parse().unwrap());
    p.to = Some("bob@localhost".parse().unwrap());
    p.statuses.insert(Default::default(), TRICKY.into());
    items.insert(5, stanza(Stanza::Presence(p)));
    let result = Iq::Result {
        from: Some("mqtt.localhost".parse().unwrap()),
        to: Some("localhost".parse().unwrap()),
        id: "s-1".into(),
        payload: None,
    };
    items.push(stanza(Stanza::Iq(result)));
    items.push(stanza(Stanza::Chat(chat())));
    items
}

/// How the link wrote `item` before: through `XmlStream`.
async fn old_send(stream: &mut OldStream, item: &Wire) {
    match item {
        Wire::Element(el) => stream.send(&**el).await.unwrap(),
        Wire::Stanza(s) => match &**s {
            Stanza::Message(m) => stream.send(&MessageXml(m)).await.unwrap(),
            Stanza::Chat(c) => stream.send(c).await.unwrap(),
            Stanza::Presence(p) => stream.send(p).await.unwrap(),
            Stanza::Iq(iq) => stream.send(iq).await.unwrap(),
        },
    }
}

async fn written(mut server: DuplexStream) -> Vec<u8> {
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    all
}

/// A mixed sequence, then the stream closed: the same bytes as `XmlStream` wrote, in order.
#[tokio::test]
async fn the_same_bytes_as_xml_stream_for_every_kind_of_item() {
    let items = mixed();
    let (mut old, server) = old_stream().await;
    for item in &items {
        old_send(&mut old, item).await;
    }
    SinkExt::<&Element>::close(&mut old).await.unwrap();
    let old = old_bytes(old, server).await;

    let (ours, server) = tokio::io::duplex(1 << 22);
    let mut w = LinkWriter::new(ours);
    for item in &items {
        w.feed(item.clone()).await.unwrap();
    }
    w.close().await.unwrap();
    drop(w);
    let new = written(server).await;
    assert_eq!(
        String::from_utf8(new.clone()).unwrap(),
        String::from_utf8(old.clone()).unwrap()
    );
    let stanzas = new.strip_suffix(STREAM_FOOTER).unwrap();
    assert_eq!(parse_stanzas(stanzas).len(), items.len());
}

/// A stanza that cannot be written is refused with `InvalidInput`; nothing of it is written
/// and what comes after it is written as usual (also through the rxml fallback, whose state
/// starts over).
#[tokio::test]
async fn a_refused_stanza_leaves_nothing_behind() {
    let (ours, server) = tokio::io::duplex(1 << 20);
    let mut w = LinkWriter::new(ours);
    let good = chat();
    let mut bad = chat();
    bad.subject = Some("\u{1}".into());
    let mut bad_message = Message::new(Some("bob@localhost".parse().unwrap()));
    bad_message
        .bodies
        .insert(Default::default(), "a\u{2}".into());
    let mut good_message = bad_message.clone();
    good_message
        .bodies
        .insert(Default::default(), "fine".into());
    w.feed(stanza(Stanza::Chat(good.clone()))).await.unwrap();
    for refused in [Stanza::Chat(bad), Stanza::Message(bad_message)] {
        let e = w.feed(stanza(refused)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
    w.feed(stanza(Stanza::Message(good_message.clone())))
        .await
        .unwrap();
    w.feed(stanza(Stanza::Chat(good.clone()))).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    let got = parse_stanzas(&written(server).await);
    let want_message: Element = String::from_utf8(xso::to_vec(&good_message).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        got,
        vec![good.to_element(), want_message, good.to_element()]
    );
}

/// Feeding more than the high-water mark writes on the way; the buffer stays bounded and
/// every byte arrives once, in order. After `close`, nothing more is taken.
#[tokio::test]
async fn the_buffer_is_bounded_and_nothing_is_taken_after_close() {
    let (ours, server) = tokio::io::duplex(1 << 22);
    let reader = tokio::spawn(written(server));
    let mut w = LinkWriter::new(ours);
    let mut c = chat();
    let mut want = Vec::new();
    for i in 0..400 {
        c.id = format!("m-{i}");
        c.body = format!("{i} {}", "é".repeat(500));
        w.feed(stanza(Stanza::Chat(c.clone()))).await.unwrap();
        assert!(w.buffered().len() < HIGH_WATER + 2048, "{i}");
        want.push(c.to_element());
    }
    w.close().await.unwrap();
    let e = w.feed(stanza(Stanza::Chat(chat()))).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    drop(w);
    let all = reader.await.unwrap();
    let stanzas = all.strip_suffix(STREAM_FOOTER).unwrap();
    assert_eq!(parse_stanzas(stanzas), want);
}
