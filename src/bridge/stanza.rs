//! XMPP `<message/>` stanzas ⇄ the bridge's typed messages: the one place that knows the
//! extension elements the bridge carries.
//!
//! - XEP-0184 receipts: `<request xmlns='urn:xmpp:receipts'/>`, `<received id='..'/>`
//! - XEP-0085 chat states: `<active/>`, `<composing/>`, ... in `http://jabber.org/protocol/chatstates`
//! - XEP-0359 ids: `<origin-id id='..'/>`, `<stanza-id id='..' by='..'/>` in `urn:xmpp:sid:0`
//! - XEP-0308 corrections: `<replace xmlns='urn:xmpp:message-correct:0' id='..'/>`
//! - XEP-0203 delay: `<delay xmlns='urn:xmpp:delay' stamp='..'/>`
//!
//! Inbound, the payloads are looked at by namespace only (no typed parse per extension), so a
//! plain message costs one string comparison per payload element.

use std::borrow::Cow;
use std::collections::BTreeMap;

use xmpp_parsers::chatstates::ChatState as XepChatState;
use xmpp_parsers::delay::Delay;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType, Thread};
use xmpp_parsers::message_correct::Replace;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::receipts::Received;

use super::envelope::{Bounce, ChatState, Extras};
use crate::xmpp::Stanza;
use crate::xmpp::message_xml::{ChatXml, State};

/// The `id` attribute name, validated once.
static ID: std::sync::LazyLock<rxml::NcName> = std::sync::LazyLock::new(|| {
    rxml::NcName::try_from("id").unwrap_or_else(|_| unreachable!("`id` is a valid XML name"))
});
use super::translate::{InboundChat, XmppOut};
use crate::mapping::MessageKind;

fn kind_of(t: &MessageType) -> Option<MessageKind> {
    match t {
        MessageType::Chat => Some(MessageKind::Chat),
        MessageType::Normal => Some(MessageKind::Normal),
        MessageType::Headline => Some(MessageKind::Headline),
        MessageType::Groupchat => Some(MessageKind::Groupchat),
        MessageType::Error => None,
    }
}

fn message_type(kind: MessageKind) -> MessageType {
    match kind {
        MessageKind::Chat => MessageType::Chat,
        MessageKind::Normal => MessageType::Normal,
        MessageKind::Headline => MessageType::Headline,
        MessageKind::Groupchat => MessageType::Groupchat,
    }
}

fn state_of(name: &str) -> Option<ChatState> {
    name.parse().ok()
}

fn attr(e: &Element, name: &str) -> Option<String> {
    e.attr(name).filter(|v| !v.is_empty()).map(str::to_string)
}

/// The extensions the bridge carries, read from a message's payload elements.
pub fn extras_of(m: &Message) -> Extras {
    let mut x = Extras::default();
    for e in &m.payloads {
        if e.has_ns(ns::CHATSTATES) {
            x.state = state_of(e.name());
        } else if e.has_ns(ns::RECEIPTS) {
            match e.name() {
                "request" => x.receipt_request = true,
                "received" => x.received = attr(e, "id"),
                _ => {}
            }
        } else if e.has_ns(ns::SID) {
            match e.name() {
                "origin-id" => x.origin_id = attr(e, "id"),
                "stanza-id" => x.stanza_id = attr(e, "id"),
                _ => {}
            }
        } else if e.is("replace", ns::MESSAGE_CORRECT) {
            x.replaces = attr(e, "id");
        } else if e.is("delay", ns::DELAY) {
            x.delay = attr(e, "stamp");
        }
    }
    x
}

/// An error stanza bouncing a message the bridge sent, seen as a bodiless chat message from
/// the original recipient with [`Extras::bounced`] set; `None` unless the message is an
/// addressed error with an id (the id is what names the bounced message).
pub fn bounced_chat(m: &Message) -> Option<InboundChat<'_>> {
    if m.type_ != MessageType::Error {
        return None;
    }
    let error = m.payloads.iter().find(|e| e.name() == "error")?;
    let mut bounce = Bounce {
        condition: "undefined-condition".to_owned(),
        text: None,
    };
    for child in error.children().filter(|c| c.has_ns(ns::XMPP_STANZAS)) {
        if child.name() == "text" {
            bounce.text = Some(child.text()).filter(|t| !t.is_empty());
        } else {
            child.name().clone_into(&mut bounce.condition);
        }
    }
    Some(InboundChat {
        from: m.from.as_ref()?.as_str().into(),
        to: m.to.as_ref()?.as_str().into(),
        id: Some(m.id.as_ref()?.0.as_str().into()),
        kind: MessageKind::Chat,
        body: None,
        subject: None,
        thread: None,
        extras: Extras {
            bounced: Some(bounce),
            ..Extras::default()
        },
    })
}

/// The text xmpp-parsers' `get_best_body(vec!["en"])` picks (English, else the one without
/// a language, else the first), without its allocations (a `Vec` and a `Lang` per call).
/// A single text (the usual case) is the pick whatever its language: no look-up by key.
fn best_in_english(texts: &BTreeMap<Lang, String>) -> Option<&String> {
    if texts.len() <= 1 {
        return texts.values().next();
    }
    (texts.get("en"))
        .or_else(|| texts.get(""))
        .or_else(|| texts.values().next())
}

/// The bridge's view of an XMPP message; `None` for errors and unaddressed messages.
pub fn inbound_chat(m: &Message) -> Option<InboundChat<'_>> {
    fn borrowed(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }
    let kind = kind_of(&m.type_)?;
    Some(InboundChat {
        from: Cow::Borrowed(m.from.as_ref()?.as_str()),
        to: Cow::Borrowed(m.to.as_ref()?.as_str()),
        id: m.id.as_ref().map(|id| borrowed(&id.0)),
        kind,
        body: best_in_english(&m.bodies).map(|b| borrowed(b)),
        subject: best_in_english(&m.subjects).map(|s| borrowed(s)),
        thread: m.thread.as_ref().map(|t| borrowed(&t.id)),
        extras: if m.payloads.is_empty() {
            Extras::default()
        } else {
            extras_of(m)
        },
    })
}

fn xep_state(state: ChatState) -> XepChatState {
    match state {
        ChatState::Active => XepChatState::Active,
        ChatState::Composing => XepChatState::Composing,
        ChatState::Paused => XepChatState::Paused,
        ChatState::Inactive => XepChatState::Inactive,
        ChatState::Gone => XepChatState::Gone,
    }
}

/// The stanza for an MQTT message; `None` if an address does not parse as a JID. A chat or
/// normal message with a body asks for a receipt (XEP-0184) and carries its origin id.
pub fn xmpp_message(out: &XmppOut, id: String) -> Option<Message> {
    let to = Jid::new(&out.to).ok()?;
    let from = Jid::new(&out.from).ok()?;
    let mut m = Message::new_with_type(message_type(out.kind), Some(to));
    let has_body = !out.body.is_empty();
    if has_body {
        m.bodies.insert(Lang::new(), out.body.clone());
    }
    if let Some(subject) = &out.subject {
        m.subjects.insert(Lang::new(), subject.clone());
    }
    if let Some(thread) = &out.thread {
        m.thread = Some(Thread {
            parent: None,
            id: thread.clone(),
        });
    }
    let x = &out.extras;
    if let Some(state) = x.state {
        m.payloads.push(xep_state(state).into());
    }
    let chat = has_body && matches!(out.kind, MessageKind::Chat | MessageKind::Normal);
    if chat && out.receipts {
        // Built as plain elements: the typed `Request`/`OriginId` conversions go through
        // xso's serialiser and cost more than the rest of the message (measured: part 3 of
        // benches/bridge_compare.rs). Tests compare both forms.
        m.payloads
            .push(Element::builder("request", ns::RECEIPTS).build());
        let origin = x.origin_id.as_deref().unwrap_or(&id);
        m.payloads.push(
            Element::builder("origin-id", ns::SID)
                .attr(ID.clone(), origin)
                .build(),
        );
    } else if let (true, Some(origin)) = (chat, &x.origin_id) {
        // Without receipts, an origin id only when the MQTT client gave one.
        m.payloads.push(
            Element::builder("origin-id", ns::SID)
                .attr(ID.clone(), origin.as_str())
                .build(),
        );
    }
    if let Some(replaces) = &x.replaces {
        m.payloads.push(
            Replace {
                id: Id(replaces.clone()),
            }
            .into(),
        );
    }
    if let Some(stamp) = x.delay.as_deref().and_then(|d| d.parse().ok()) {
        let delay = Delay {
            from: Jid::new(from.domain().as_str()).ok(),
            stamp,
            data: None,
        };
        m.payloads.push(delay.into());
    }
    m.from = Some(from);
    m.id = Some(Id(id));
    Some(m)
}

/// Why an MQTT message's stanza cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable {
    /// Outcome reason label (`bad_jid`, `bad_text`).
    pub reason: &'static str,
    /// What is wrong.
    pub detail: String,
}

fn lean_state(state: ChatState) -> State {
    match state {
        ChatState::Active => State::Active,
        ChatState::Composing => State::Composing,
        ChatState::Paused => State::Paused,
        ChatState::Inactive => State::Inactive,
        ChatState::Gone => State::Gone,
    }
}

/// The stanza for an MQTT message: the lean [`ChatXml`], the same element as
/// [`xmpp_message`] builds (tests compare them) without a `Message` and `Element` payloads.
/// A message with a `delay` goes through [`xmpp_message`] (the stamp is re-formatted by its
/// typed form; rare). `out.from` and `out.to` are the mapping table's validated JIDs.
pub fn outgoing(out: XmppOut, id: String) -> Result<Stanza, Unwritable> {
    if out.extras.delay.is_some() {
        return xmpp_message(&out, id)
            .map(Stanza::Message)
            .ok_or_else(|| Unwritable {
                reason: "bad_jid",
                detail: "mapped addresses are not valid JIDs".into(),
            });
    }
    let chat = !out.body.is_empty() && matches!(out.kind, MessageKind::Chat | MessageKind::Normal);
    let x = out.extras;
    let (request_receipt, origin_id) = match (chat, out.receipts) {
        (true, true) => (true, Some(x.origin_id.unwrap_or_else(|| id.clone()))),
        // Without receipts, an origin id only when the MQTT client gave one.
        (true, false) => (false, x.origin_id),
        (false, _) => (false, None),
    };
    let c = ChatXml {
        from: out.from,
        to: out.to,
        id,
        kind: message_type(out.kind),
        body: out.body,
        subject: out.subject,
        thread: out.thread,
        state: x.state.map(lean_state),
        request_receipt,
        origin_id,
        replaces: x.replaces,
    };
    match c.check() {
        Ok(()) => Ok(Stanza::Chat(c)),
        Err(e) => Err(Unwritable {
            reason: "bad_text",
            detail: e.to_string(),
        }),
    }
}

/// An XEP-0184 receipt from `from` (the bridged JID) to `to` for message `id`.
pub fn receipt(from: &str, to: &str, id: &str) -> Option<Message> {
    let mut m = Message::new_with_type(MessageType::Chat, Some(Jid::new(to).ok()?));
    m.from = Some(Jid::new(from).ok()?);
    m.payloads.push(Received { id: id.to_string() }.into());
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_text_is_the_one_xmpp_parsers_picks() {
        let langs = ["", "en", "de", "fr", "en-GB"];
        // Every subset of those languages (each text names its language).
        for set in 0..(1u32 << langs.len()) {
            let mut m = Message::new(None);
            for (i, lang) in langs.iter().enumerate() {
                if set & (1 << i) != 0 {
                    m.bodies
                        .insert(Lang(lang.to_string()), format!("body {lang}"));
                    m.subjects
                        .insert(Lang(lang.to_string()), format!("subject {lang}"));
                }
            }
            assert_eq!(
                best_in_english(&m.bodies).cloned(),
                m.get_best_body_cloned(vec!["en"]).map(|(_, b)| b),
                "{set:b}"
            );
            assert_eq!(
                best_in_english(&m.subjects),
                m.get_best_subject(vec!["en"]).map(|(_, s)| s),
                "{set:b}"
            );
        }
    }

    fn out(body: &str, extras: Extras) -> XmppOut {
        XmppOut {
            rule: "r".into(),
            from: "bob@mqtt.example.org".into(),
            to: "alice@example.org".into(),
            kind: MessageKind::Chat,
            body: body.into(),
            subject: Some("s".into()),
            thread: Some("t".into()),
            id: None,
            extras,
            receipts: true,
        }
    }

    #[test]
    fn a_rule_without_receipts_sends_no_request_and_only_a_given_origin_id() {
        let payloads = |origin: Option<&str>| {
            let mut o = out(
                "hi",
                Extras {
                    origin_id: origin.map(String::from),
                    ..Extras::default()
                },
            );
            o.receipts = false;
            let m = xmpp_message(&o, "id-1".into()).unwrap();
            m.payloads
                .iter()
                .map(|p| (p.name().to_string(), p.attr("id").map(String::from)))
                .collect::<Vec<_>>()
        };
        assert_eq!(payloads(None), vec![]);
        assert_eq!(
            payloads(Some("o-9")),
            vec![("origin-id".to_string(), Some("o-9".to_string()))]
        );
        let m = xmpp_message(&out("hi", Extras::default()), "id-1".into()).unwrap();
        let names: Vec<&str> = m.payloads.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["request", "origin-id"], "receipts on by default");
    }

    /// The lean stanza and the typed `Message` for the same message, as elements.
    fn both(o: &XmppOut, id: &str) -> (Element, Element) {
        let typed = Element::from(xmpp_message(o, id.into()).unwrap());
        let Stanza::Chat(lean) = outgoing(o.clone(), id.into()).unwrap() else {
            panic!("no lean stanza for {o:?}")
        };
        let bytes = xso::to_vec(&lean).unwrap();
        let lean: Element = String::from_utf8(bytes).unwrap().parse().unwrap();
        (lean, typed)
    }

    #[test]
    fn the_lean_stanza_is_the_typed_message() {
        let texts = [
            "hi",
            "a <b> & c > d ]]> 'single' \"double\" &amp; &#x41;",
            "ünïcödé 😀 中文 \u{10FFFD}",
            "tab\tnew\nline\r\nend",
        ];
        let states = [None, Some(ChatState::Active), Some(ChatState::Gone)];
        let kinds = [
            MessageKind::Chat,
            MessageKind::Normal,
            MessageKind::Headline,
            MessageKind::Groupchat,
        ];
        for text in texts {
            for kind in kinds {
                for receipts in [true, false] {
                    for (i, state) in states.into_iter().enumerate() {
                        let extras = Extras {
                            origin_id: (i == 1).then(|| format!("o<&'\"{text}")),
                            replaces: (i == 2).then(|| text.to_string()),
                            state,
                            ..Extras::default()
                        };
                        let mut o = out(text, extras);
                        o.kind = kind;
                        o.receipts = receipts;
                        o.subject = (i != 1).then(|| text.to_string());
                        o.thread = (i != 2).then(|| format!("t-{text}"));
                        let (lean, typed) = both(&o, &format!("id-{i}-'\"<&"));
                        assert_eq!(lean, typed, "{o:?}");
                        // A chat state alone: no body.
                        let mut alone = o.clone();
                        alone.body = String::new();
                        let (lean, typed) = both(&alone, "s-1");
                        assert_eq!(lean, typed, "{alone:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_lean_stanza_escapes_what_xml_needs() {
        let o = out("<b>&'\"</b>", Extras::default());
        let Stanza::Chat(lean) = outgoing(o, "a'b\"c<&".into()).unwrap() else {
            panic!()
        };
        let xml = String::from_utf8(xso::to_vec(&lean).unwrap()).unwrap();
        assert!(
            xml.contains("<body>&lt;b&gt;&amp;'\"&lt;/b&gt;</body>"),
            "{xml}"
        );
        assert!(!xml.contains("<b>") && !xml.contains("a'b\"c<&"), "{xml}");
        let parsed = Message::try_from(xml.parse::<Element>().unwrap()).unwrap();
        assert_eq!(parsed.bodies[""], "<b>&'\"</b>");
        assert_eq!(parsed.id.unwrap().0, "a'b\"c<&");
    }

    #[test]
    fn characters_xml_cannot_carry_are_refused_before_writing() {
        for bad in [
            "a\u{0}b",
            "\u{1}",
            "x\u{8}",
            "\u{b}",
            "\u{c}",
            "\u{1f}",
            "\u{FFFE}",
            "z\u{FFFF}",
        ] {
            let refused = |o: XmppOut, what: &str| {
                let e = outgoing(o, "id".into()).unwrap_err();
                assert_eq!(e.reason, "bad_text");
                assert!(e.detail.contains(what), "{what}: {}", e.detail);
            };
            refused(out(bad, Extras::default()), "body");
            let mut o = out("fine", Extras::default());
            o.subject = Some(bad.into());
            refused(o, "subject");
            let mut o = out("fine", Extras::default());
            o.thread = Some(bad.into());
            refused(o, "thread");
            let extras = Extras {
                origin_id: Some(bad.into()),
                ..Extras::default()
            };
            refused(out("fine", extras), "origin id");
            let extras = Extras {
                replaces: Some(bad.into()),
                ..Extras::default()
            };
            refused(out("fine", extras), "correction id");
            let e = outgoing(out("fine", Extras::default()), bad.into()).unwrap_err();
            assert!(e.detail.contains("id"), "{}", e.detail);
            // The serialiser itself would refuse it too (mid-stream: it would cost the link).
            let lean = ChatXml {
                body: bad.into(),
                ..lean_of(out("x", Extras::default()))
            };
            assert!(xso::to_vec(&lean).is_err(), "{bad:?}");
        }
        for good in ["\t\n\r", "\u{FFFD}", "\u{EFFFF}", "\u{FEFF}", "ﬀ"] {
            assert!(crate::xmpp::message_xml::xml_text(good), "{good:?}");
        }
    }

    fn lean_of(o: XmppOut) -> ChatXml {
        match outgoing(o, "id".into()).unwrap() {
            Stanza::Chat(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delayed_message_goes_the_typed_way() {
        let extras = Extras {
            delay: Some("2026-01-01T10:00:00Z".into()),
            ..Extras::default()
        };
        let o = out("hi", extras);
        let Ok(Stanza::Message(m)) = outgoing(o.clone(), "d1".into()) else {
            panic!()
        };
        assert_eq!(m, xmpp_message(&o, "d1".into()).unwrap());
    }

    #[test]
    fn receipt_request_and_origin_id_equal_the_typed_ones() {
        assert_eq!(
            Element::builder("request", ns::RECEIPTS).build(),
            Element::from(xmpp_parsers::receipts::Request)
        );
        assert_eq!(
            Element::builder("origin-id", ns::SID)
                .attr(ID.clone(), "o-1")
                .build(),
            Element::from(xmpp_parsers::stanza_id::OriginId { id: "o-1".into() })
        );
    }

    #[test]
    fn stanza_for_an_mqtt_message_round_trips() {
        let extras = Extras {
            replaces: Some("m0".into()),
            delay: Some("2026-01-01T10:00:00Z".into()),
            state: Some(ChatState::Active),
            ..Extras::default()
        };
        let m = xmpp_message(&out("hi", extras), "id7".into()).unwrap();
        let xml = String::from(&Element::from(m.clone()));
        for part in [
            "type='chat'",
            "<body>hi</body>",
            "id='id7'",
            "<request xmlns='urn:xmpp:receipts'",
            "<origin-id xmlns='urn:xmpp:sid:0' id='id7'",
            "<replace xmlns='urn:xmpp:message-correct:0' id='m0'",
            "<active xmlns='http://jabber.org/protocol/chatstates'",
            "stamp='2026-01-01T10:00:00",
        ] {
            assert!(xml.contains(part), "{part} missing in {xml}");
        }
        let chat = inbound_chat(&m).unwrap();
        assert_eq!(
            (
                chat.body.as_deref(),
                chat.thread.as_deref(),
                chat.subject.as_deref()
            ),
            (Some("hi"), Some("t"), Some("s"))
        );
        let x = chat.extras;
        assert!(x.receipt_request);
        assert_eq!(x.origin_id.as_deref(), Some("id7"));
        assert_eq!(x.replaces.as_deref(), Some("m0"));
        assert_eq!(x.state, Some(ChatState::Active));
        assert!(x.delay.unwrap().starts_with("2026-01-01T10:00:00"));
    }

    #[test]
    fn chat_state_alone_asks_for_no_receipt() {
        let extras = Extras {
            state: Some(ChatState::Composing),
            ..Extras::default()
        };
        let m = xmpp_message(&out("", extras), "s1".into()).unwrap();
        let xml = String::from(&Element::from(m));
        assert!(xml.contains("<composing"), "{xml}");
        assert!(!xml.contains("<body") && !xml.contains("request"), "{xml}");
    }

    #[test]
    fn receipts_and_stanza_ids_are_read() {
        let xml = "<message xmlns='jabber:component:accept' from='a@x/r' to='b@y' type='chat'>\
            <received xmlns='urn:xmpp:receipts' id='m9'/>\
            <stanza-id xmlns='urn:xmpp:sid:0' id='s9' by='x'/></message>";
        let m = Message::try_from(xml.parse::<Element>().unwrap()).unwrap();
        let chat = inbound_chat(&m).unwrap();
        assert_eq!(chat.extras.received.as_deref(), Some("m9"));
        assert_eq!(chat.extras.stanza_id.as_deref(), Some("s9"));
        assert!(chat.body.is_none());
        let r = receipt("b@y", "a@x/r", "m9").unwrap();
        let xml = String::from(&Element::from(r));
        assert!(
            xml.contains("<received xmlns='urn:xmpp:receipts' id='m9'"),
            "{xml}"
        );
    }

    fn message(xml: &str) -> Message {
        let e: Element = xml.parse().unwrap();
        Message::try_from(e).unwrap()
    }

    #[test]
    fn an_addressed_error_with_an_id_is_a_bounce_with_its_condition() {
        let m = message(
            "<message xmlns='jabber:component:accept' type='error' id='q-1' \
             from='nobody@localhost' to='bob@mqtt.localhost'><body>hi</body>\
             <error type='cancel'><service-unavailable \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>No such user</text></error></message>",
        );
        let chat = bounced_chat(&m).unwrap();
        assert_eq!(
            (&*chat.from, &*chat.to, chat.id.as_deref()),
            ("nobody@localhost", "bob@mqtt.localhost", Some("q-1"))
        );
        // The echoed body is the original message's, not something to carry again.
        assert_eq!((chat.kind, chat.body), (MessageKind::Chat, None));
        let bounce = chat.extras.bounced.unwrap();
        assert_eq!(bounce.detail(), "service-unavailable: No such user");

        let bare = message(
            "<message xmlns='jabber:component:accept' type='error' id='q-2' \
             from='localhost' to='bob@mqtt.localhost'><error type='wait'/></message>",
        );
        let bounce = bounced_chat(&bare).unwrap().extras.bounced.unwrap();
        assert_eq!(
            (bounce.condition.as_str(), bounce.text),
            ("undefined-condition", None)
        );
    }

    #[test]
    fn only_addressed_errors_with_an_id_are_bounces() {
        let no_id = "<message xmlns='jabber:component:accept' type='error' \
             from='a@localhost' to='bob@mqtt.localhost'><error type='cancel'/></message>";
        let chat = "<message xmlns='jabber:component:accept' type='chat' id='c' \
             from='a@localhost' to='bob@mqtt.localhost'><body>x</body></message>";
        let no_error = "<message xmlns='jabber:component:accept' type='error' id='c' \
             from='a@localhost' to='bob@mqtt.localhost'/>";
        for xml in [no_id, chat, no_error] {
            assert_eq!(bounced_chat(&message(xml)), None, "{xml}");
        }
    }
}
