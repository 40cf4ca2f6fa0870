//! Serialising outgoing `<message/>` stanzas.
//!
//! xmpp-parsers' generated serialiser for `Message` walks a large state machine that is moved
//! on every step; on the MQTT → XMPP path it cost more CPU than the translation itself. This
//! one emits the same XML items from the same typed `Message` straight away: the attributes,
//! bodies, subjects, thread, then the payloads through their own serialiser. A test checks that
//! both produce the same element for every field.
//!
//! [`ChatXml`] is the MQTT → XMPP message itself in a lean form: a few strings instead of a
//! `Message` with `Element` payloads (building those, serialising and dropping them was about
//! a third of the bridge's CPU on that path). Tests check it against the `Message` that
//! xmpp-parsers builds and serialises from the same fields.

use std::borrow::Cow;
use std::sync::LazyLock;

use rxml::{Namespace, NcName, NcNameStr};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
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
    request: NcName,
    origin_id: NcName,
    replace: NcName,
    active: NcName,
    composing: NcName,
    paused: NcName,
    inactive: NcName,
    gone: NcName,
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
    request: name("request"),
    origin_id: name("origin-id"),
    replace: name("replace"),
    active: name("active"),
    composing: name("composing"),
    paused: name("paused"),
    inactive: name("inactive"),
    gone: name("gone"),
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

/// A chat state (XEP-0085) on a [`ChatXml`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `<active/>`
    Active,
    /// `<composing/>`
    Composing,
    /// `<paused/>`
    Paused,
    /// `<inactive/>`
    Inactive,
    /// `<gone/>`
    Gone,
}

/// An outgoing `<message/>` of the MQTT → XMPP path, written straight from these fields.
///
/// `from` and `to` must be valid JIDs (the mapping table validated and normalised them); the
/// text fields must be [`xml_text`]: [`ChatXml::check`] refuses the message otherwise, since
/// a character XML cannot carry would make the writer fail mid-stream and cost the link.
/// Children are written in the order the typed `Message` had them: body, subject, thread,
/// chat state, receipt request, origin id, correction.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatXml {
    /// Sender (bare JID in the component domain).
    pub from: String,
    /// Recipient (bare JID).
    pub to: String,
    /// Stanza id.
    pub id: String,
    /// `type`.
    pub kind: MessageType,
    /// Text; empty: no `<body/>`.
    pub body: String,
    /// `<subject/>`.
    pub subject: Option<String>,
    /// `<thread/>`.
    pub thread: Option<String>,
    /// Chat state.
    pub state: Option<State>,
    /// `<request xmlns='urn:xmpp:receipts'/>` (XEP-0184).
    pub request_receipt: bool,
    /// `<origin-id xmlns='urn:xmpp:sid:0' id=''/>` (XEP-0359).
    pub origin_id: Option<String>,
    /// `<replace xmlns='urn:xmpp:message-correct:0' id=''/>` (XEP-0308).
    pub replaces: Option<String>,
}

/// Why a [`ChatXml`] cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} has a character XML cannot carry (a control character, U+FFFE or U+FFFF)")]
pub struct NotXmlText(pub &'static str);

/// Whether `s` can be XML character data: no control characters but tab, line feed and
/// carriage return, and neither U+FFFE nor U+FFFF (XML 1.0 `Char`; a Rust string has no
/// surrogates). The serialiser refuses the rest.
pub fn xml_text(s: &str) -> bool {
    // Fast path: bytes below 0x20 and the UTF-8 lead byte of U+FFFE/U+FFFF (0xEF) are rare.
    if !s.bytes().any(|b| b < 0x20 || b == 0xEF) {
        return true;
    }
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    })
}

impl ChatXml {
    /// Checks every text field (see [`xml_text`]); names the first bad one.
    pub fn check(&self) -> Result<(), NotXmlText> {
        let fields = [
            ("body", Some(&self.body)),
            ("id", Some(&self.id)),
            ("subject", self.subject.as_ref()),
            ("thread", self.thread.as_ref()),
            ("origin id", self.origin_id.as_ref()),
            ("correction id", self.replaces.as_ref()),
            ("sender", Some(&self.from)),
            ("recipient", Some(&self.to)),
        ];
        match fields
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| !xml_text(v)))
        {
            Some((what, _)) => Err(NotXmlText(what)),
            None => Ok(()),
        }
    }

    /// The message as an `Element` (tests, logs; the link writes it straight from the fields).
    /// A message that fails [`ChatXml::check`] becomes an empty `<message/>`.
    pub fn to_element(&self) -> Element {
        xso::to_vec(self)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|xml| xml.parse().ok())
            .unwrap_or_else(|| Element::builder("message", ns::DEFAULT_NS).build())
    }
}

const RECEIPTS_NS: Namespace<'static> = Namespace::from_str(ns::RECEIPTS);
const SID_NS: Namespace<'static> = Namespace::from_str(ns::SID);
const CORRECT_NS: Namespace<'static> = Namespace::from_str(ns::MESSAGE_CORRECT);
const CHATSTATES_NS: Namespace<'static> = Namespace::from_str(ns::CHATSTATES);

impl AsXml for ChatXml {
    type ItemIter<'x>
        = Items<'x>
    where
        Self: 'x;

    fn as_xml_iter<'x>(&'x self) -> Result<Items<'x>, Error> {
        let n = &*NAMES;
        let mut items = Vec::with_capacity(24);
        let attr = |name: &'x NcName, value: &'x str| {
            Item::Attribute(Namespace::NONE, borrowed(name), Cow::Borrowed(value))
        };
        items.push(Item::ElementHeadStart(STANZA_NS, borrowed(&n.message)));
        items.push(attr(&n.from, &self.from));
        items.push(attr(&n.to, &self.to));
        items.push(attr(&n.id, &self.id));
        if let Some(kind) = type_text(&self.kind) {
            items.push(attr(&n.type_, kind));
        }
        items.push(Item::ElementHeadEnd);
        let texts = [
            (&n.body, Some(&self.body).filter(|b| !b.is_empty())),
            (&n.subject, self.subject.as_ref()),
            (&n.thread, self.thread.as_ref()),
        ];
        for (elem, text) in texts {
            if let Some(text) = text {
                items.push(Item::ElementHeadStart(STANZA_NS, borrowed(elem)));
                items.push(Item::ElementHeadEnd);
                items.push(Item::Text(Cow::Borrowed(text.as_str())));
                items.push(Item::ElementFoot);
            }
        }
        let mut empty = |ns: Namespace<'static>, elem: &'x NcName, id: Option<&'x str>| {
            items.push(Item::ElementHeadStart(ns, borrowed(elem)));
            if let Some(id) = id {
                items.push(attr(&n.id, id));
            }
            items.push(Item::ElementHeadEnd);
            items.push(Item::ElementFoot);
        };
        if let Some(state) = self.state {
            let elem = match state {
                State::Active => &n.active,
                State::Composing => &n.composing,
                State::Paused => &n.paused,
                State::Inactive => &n.inactive,
                State::Gone => &n.gone,
            };
            empty(CHATSTATES_NS, elem, None);
        }
        if self.request_receipt {
            empty(RECEIPTS_NS, &n.request, None);
        }
        if let Some(origin) = &self.origin_id {
            empty(SID_NS, &n.origin_id, Some(origin));
        }
        if let Some(replaces) = &self.replaces {
            empty(CORRECT_NS, &n.replace, Some(replaces));
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
pub(crate) fn type_text(kind: &MessageType) -> Option<&'static str> {
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
