//! Serialising outgoing `<message/>` stanzas.
//!
//! xmpp-parsers' generated serialiser for `Message` walks a large state machine that is moved
//! on every step; on the MQTT → XMPP path it cost more CPU than the translation itself. This
//! one emits the same XML items from the same typed `Message` straight away: the attributes,
//! bodies, subjects, thread, then the payloads through their own serialiser. A test checks that
//! both produce the same element for every field.

use std::borrow::Cow;
use std::sync::LazyLock;

use rxml::{Namespace, NcName, NcNameStr};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::ns;
use xso::error::Error;
use xso::{AsXml, Item};

/// The element and attribute names used here, validated once.
struct Names {
    message: NcName,
    body: NcName,
    subject: NcName,
    thread: NcName,
    from: NcName,
    to: NcName,
    id: NcName,
    type_: NcName,
    lang: NcName,
    parent: NcName,
}

fn name(s: &str) -> NcName {
    // Literal names below are valid; an invalid one would be a bug caught by the tests.
    NcName::try_from(s).unwrap_or_else(|_| unreachable!("`{s}` is a valid XML name"))
}

static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    message: name("message"),
    body: name("body"),
    subject: name("subject"),
    thread: name("thread"),
    from: name("from"),
    to: name("to"),
    id: name("id"),
    type_: name("type"),
    lang: name("lang"),
    parent: name("parent"),
});

/// The stanza namespace of a component stream.
const STANZA_NS: Namespace<'static> = Namespace::from_str(ns::DEFAULT_NS);

/// A `Message` to write with the hand-written serialiser.
pub(crate) struct MessageXml<'a>(pub(crate) &'a Message);

type Items<'x> = std::iter::Map<std::vec::IntoIter<Item<'x>>, fn(Item<'x>) -> ItemResult<'x>>;
type ItemResult<'x> = Result<Item<'x>, Error>;

impl AsXml for MessageXml<'_> {
    type ItemIter<'x>
        = Items<'x>
    where
        Self: 'x;

    fn as_xml_iter<'x>(&'x self) -> Result<Items<'x>, Error> {
        let m = self.0;
        let n = &*NAMES;
        let mut items = Vec::with_capacity(16);
        items.push(Item::ElementHeadStart(STANZA_NS, borrowed(&n.message)));
        let attr = |name: &'static NcName, value| {
            Item::Attribute(Namespace::NONE, borrowed(name), Cow::Borrowed(value))
        };
        if let Some(from) = &m.from {
            items.push(attr(&n.from, from.as_str()));
        }
        if let Some(to) = &m.to {
            items.push(attr(&n.to, to.as_str()));
        }
        if let Some(id) = &m.id {
            items.push(attr(&n.id, &id.0));
        }
        if let Some(kind) = type_text(&m.type_) {
            items.push(Item::Attribute(
                Namespace::NONE,
                borrowed(&n.type_),
                Cow::Borrowed(kind),
            ));
        }
        items.push(Item::ElementHeadEnd);
        for (list, elem) in [(&m.bodies, &n.body), (&m.subjects, &n.subject)] {
            for (lang, text) in list {
                items.push(Item::ElementHeadStart(STANZA_NS, borrowed(elem)));
                if !lang.is_empty() {
                    items.push(Item::Attribute(
                        Namespace::XML,
                        borrowed(&n.lang),
                        Cow::Borrowed(lang.as_str()),
                    ));
                }
                items.push(Item::ElementHeadEnd);
                items.push(Item::Text(Cow::Borrowed(text.as_str())));
                items.push(Item::ElementFoot);
            }
        }
        if let Some(thread) = &m.thread {
            items.push(Item::ElementHeadStart(STANZA_NS, borrowed(&n.thread)));
            if let Some(parent) = &thread.parent {
                items.push(Item::Attribute(
                    Namespace::NONE,
                    borrowed(&n.parent),
                    Cow::Borrowed(parent.as_str()),
                ));
            }
            items.push(Item::ElementHeadEnd);
            items.push(Item::Text(Cow::Borrowed(thread.id.as_str())));
            items.push(Item::ElementFoot);
        }
        for payload in &m.payloads {
            for item in payload.as_xml_iter()? {
                items.push(item?);
            }
        }
        items.push(Item::ElementFoot);
        let ok: fn(Item<'x>) -> ItemResult<'x> = Ok;
        Ok(items.into_iter().map(ok))
    }
}

fn borrowed(name: &NcName) -> Cow<'_, NcNameStr> {
    Cow::Borrowed(name.as_ref())
}

/// The `type` attribute; absent for `normal`, its default.
fn type_text(kind: &MessageType) -> Option<&'static str> {
    match kind {
        MessageType::Chat => Some("chat"),
        MessageType::Error => Some("error"),
        MessageType::Groupchat => Some("groupchat"),
        MessageType::Headline => Some("headline"),
        MessageType::Normal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::message::{Lang, Thread};
    use xmpp_parsers::minidom::Element;

    fn via_crate(m: &Message) -> Element {
        String::from_utf8(xso::to_vec(m).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn via_ours(m: &Message) -> Element {
        String::from_utf8(xso::to_vec(&MessageXml(m)).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn message(kind: MessageType) -> Message {
        let mut m = Message::new(Some("alice@example.org/pc".parse().unwrap()));
        m.from = Some("bob@mqtt.example.org".parse().unwrap());
        m.id = Some(xmpp_parsers::message::Id("m-1".into()));
        m.type_ = kind;
        m
    }

    #[test]
    fn same_element_as_the_generated_serialiser() {
        let kinds = [
            MessageType::Chat,
            MessageType::Error,
            MessageType::Groupchat,
            MessageType::Headline,
            MessageType::Normal,
        ];
        for kind in kinds {
            let mut m = message(kind.clone());
            m.bodies
                .insert(Lang::new(), "hi <you> & 'all' \"ok\" ünïcode 😀".into());
            m.bodies.insert(Lang("de".into()), "hallo".into());
            m.subjects.insert(Lang::new(), "topic".into());
            m.thread = Some(Thread {
                parent: Some("p1".into()),
                id: "t1".into(),
            });
            m.payloads.push(
                "<active xmlns='http://jabber.org/protocol/chatstates'/>"
                    .parse()
                    .unwrap(),
            );
            m.payloads
                .push("<x xmlns='urn:example'><y a='1'>z</y></x>".parse().unwrap());
            assert_eq!(via_ours(&m), via_crate(&m), "{kind:?}");
        }
    }

    #[test]
    fn minimal_message() {
        let mut m = Message::new(None);
        m.type_ = MessageType::Chat;
        assert_eq!(via_ours(&m), via_crate(&m));
        let m = Message::new(None);
        assert_eq!(via_ours(&m), via_crate(&m));
        let mut m = message(MessageType::Chat);
        m.thread = Some(Thread {
            parent: None,
            id: "t".into(),
        });
        assert_eq!(via_ours(&m), via_crate(&m));
    }
}
