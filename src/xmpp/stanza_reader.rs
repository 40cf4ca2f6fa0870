//! What the link reads from the stream: typed stanzas built straight from the XML parser's
//! events, without an untyped `Element` in between.
//!
//! [`Incoming`] implements `xso::FromXml` by hand, so tokio-xmpp's `XmlStream` reads it like
//! any other XSO. For `<message/>`, `<presence/>` and `<iq/>` in the component namespace it
//! keeps the head (from, to, id, type: raw attribute text) and hands the events to
//! xmpp-parsers' own builder of the typed stanza. When that builder gives up part way, the
//! rest of the stanza's events are consumed (the stream stays at the right depth) and the
//! stanza becomes [`Incoming::Bad`] with its head, so the sender can get `<bad-request/>`.
//! Everything else (stream errors, `<handshake/>`, unknown elements) is built as an
//! `Element`, as before.
//!
//! Reading a chat message this way costs about half of parsing it into an `Element` and
//! converting that with `TryFrom` (which replays the element as XML events into the same
//! typed builder); `benches/xmpp_stanza.rs` has both.

use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::Presence;
use xso::error::{Error, FromEventsError};
use xso::{Context, FromEventsBuilder, FromXml};

use super::Inbound;

/// The kind of a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Presence => "presence",
            Kind::Iq => "iq",
        }
    }
}

/// The addressing attributes of a stanza as written (not validated): enough to answer a
/// stanza that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawHead {
    pub(crate) kind: Kind,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) type_: Option<String>,
}

impl RawHead {
    /// One pass over the attributes (four map look-ups cost more, measured with `perf`).
    fn of(kind: Kind, attrs: &rxml::AttrMap) -> Self {
        let mut head = Self {
            kind,
            from: None,
            to: None,
            id: None,
            type_: None,
        };
        for ((ns, name), value) in attrs {
            if !ns.is_empty() {
                continue;
            }
            let slot = match name.as_str() {
                "from" => &mut head.from,
                "to" => &mut head.to,
                "id" => &mut head.id,
                "type" => &mut head.type_,
                _ => continue,
            };
            *slot = Some(value.clone());
        }
        head
    }
}

/// One top-level element of the component stream.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A stanza that parsed (never [`Inbound::ForeignPong`]).
    Stanza(Inbound),
    /// A stanza that did not parse: its head and why.
    Bad {
        /// Addressing, to answer it.
        head: RawHead,
        /// The parser's complaint.
        error: Error,
    },
    /// Anything else, untyped.
    Other(Element),
}

impl Incoming {
    /// The element's local name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Incoming::Stanza(Inbound::Message(_)) => "message",
            Incoming::Stanza(Inbound::Presence(_)) => "presence",
            Incoming::Stanza(Inbound::Iq(_) | Inbound::ForeignPong(_)) => "iq",
            Incoming::Bad { head, .. } => head.kind.name(),
            Incoming::Other(el) => el.name(),
        }
    }
}

/// The typed builder a stanza is fed to.
#[expect(
    clippy::large_enum_variant,
    reason = "one value per stanza, moved a few times; boxing would allocate per stanza"
)]
enum Typed {
    Message(<Message as FromXml>::Builder),
    Presence(<Presence as FromXml>::Builder),
    Iq(<Iq as FromXml>::Builder),
}

impl Typed {
    fn feed(&mut self, ev: rxml::Event, ctx: &Context<'_>) -> Result<Option<Inbound>, Error> {
        Ok(match self {
            Typed::Message(b) => (b.feed(ev, ctx)?).map(|m| Inbound::Message(Box::new(m))),
            Typed::Presence(b) => (b.feed(ev, ctx)?).map(|p| Inbound::Presence(Box::new(p))),
            Typed::Iq(b) => (b.feed(ev, ctx)?).map(|iq| Inbound::Iq(Box::new(iq))),
        })
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per stanza, moved a few times; boxing would allocate per stanza"
)]
enum State {
    /// Feeding a typed builder; `depth` counts elements opened inside the stanza.
    Stanza {
        head: RawHead,
        depth: usize,
        typed: Typed,
    },
    /// The typed builder failed: skipping to the stanza's end.
    Failed {
        head: RawHead,
        depth: usize,
        error: Option<Error>,
    },
    /// Not a stanza.
    Other(Box<<Element as FromXml>::Builder>),
    /// A value was returned.
    Done,
}

/// Builds an [`Incoming`] from the events of one element.
pub(crate) struct IncomingBuilder(State);

impl FromXml for Incoming {
    type Builder = IncomingBuilder;

    fn from_events(
        name: rxml::QName,
        attrs: rxml::AttrMap,
        ctx: &Context<'_>,
    ) -> Result<Self::Builder, FromEventsError> {
        let kind = if name.0 == ns::COMPONENT {
            match name.1.as_str() {
                "message" => Some(Kind::Message),
                "presence" => Some(Kind::Presence),
                "iq" => Some(Kind::Iq),
                _ => None,
            }
        } else {
            None
        };
        let Some(kind) = kind else {
            return other(name, attrs, ctx);
        };
        let head = RawHead::of(kind, &attrs);
        let typed = match kind {
            Kind::Message => Message::from_events(name, attrs, ctx).map(Typed::Message),
            Kind::Presence => Presence::from_events(name, attrs, ctx).map(Typed::Presence),
            Kind::Iq => Iq::from_events(name, attrs, ctx).map(Typed::Iq),
        };
        let state = match typed {
            Ok(typed) => State::Stanza {
                head,
                depth: 0,
                typed,
            },
            // An attribute the typed builder rejects (e.g. `type='bogus'`).
            Err(FromEventsError::Invalid(error)) => State::Failed {
                head,
                depth: 0,
                error: Some(error),
            },
            // Not expected for these names; keep the element untyped then.
            Err(FromEventsError::Mismatch { name, attrs }) => return other(name, attrs, ctx),
        };
        Ok(IncomingBuilder(state))
    }
}

fn other(
    name: rxml::QName,
    attrs: rxml::AttrMap,
    ctx: &Context<'_>,
) -> Result<IncomingBuilder, FromEventsError> {
    let builder = Element::from_events(name, attrs, ctx)?;
    Ok(IncomingBuilder(State::Other(Box::new(builder))))
}

/// The depth after `ev`, `None` when `ev` closes the stanza.
fn next_depth(depth: usize, ev: &rxml::Event) -> Result<Option<usize>, Error> {
    Ok(match ev {
        rxml::Event::StartElement(..) => Some(
            depth
                .checked_add(1)
                .ok_or(Error::Other("maximum XML nesting depth exceeded"))?,
        ),
        rxml::Event::EndElement(..) => depth.checked_sub(1),
        rxml::Event::XmlDeclaration(..) | rxml::Event::Text(..) => Some(depth),
    })
}

impl FromEventsBuilder for IncomingBuilder {
    type Output = Incoming;

    fn feed(&mut self, ev: rxml::Event, ctx: &Context<'_>) -> Result<Option<Incoming>, Error> {
        match &mut self.0 {
            State::Stanza { depth, typed, .. } => {
                let after = next_depth(*depth, &ev)?;
                match typed.feed(ev, ctx) {
                    Ok(Some(inbound)) => {
                        self.0 = State::Done;
                        Ok(Some(Incoming::Stanza(inbound)))
                    }
                    Ok(None) => match after {
                        Some(d) => {
                            *depth = d;
                            Ok(None)
                        }
                        // The builder let the stanza's end pass without a value.
                        None => Err(Error::Other("stanza ended without a value")),
                    },
                    Err(error) => {
                        let State::Stanza { head, .. } =
                            std::mem::replace(&mut self.0, State::Done)
                        else {
                            unreachable!("matched above")
                        };
                        match after {
                            // Failed on the closing event: nothing left to skip.
                            None => Ok(Some(Incoming::Bad { head, error })),
                            Some(depth) => {
                                self.0 = State::Failed {
                                    head,
                                    depth,
                                    error: Some(error),
                                };
                                Ok(None)
                            }
                        }
                    }
                }
            }
            State::Failed { depth, error, .. } => match next_depth(*depth, &ev)? {
                Some(d) => {
                    *depth = d;
                    Ok(None)
                }
                None => {
                    let error = error
                        .take()
                        .unwrap_or(Error::Other("stanza failed to parse"));
                    let State::Failed { head, .. } = std::mem::replace(&mut self.0, State::Done)
                    else {
                        unreachable!("matched above")
                    };
                    Ok(Some(Incoming::Bad { head, error }))
                }
            },
            State::Other(builder) => {
                let done = builder.feed(ev, ctx)?;
                if done.is_some() {
                    self.0 = State::Done;
                }
                Ok(done.map(Incoming::Other))
            }
            State::Done => Err(Error::Other("element builder fed after it finished")),
        }
    }
}

/// Reads `bytes` (one complete element) as the link does and as an `Element` converted with
/// `TryFrom` (the way before the typed reader), and panics where the two disagree: a stanza
/// must give the same typed value both ways, a stanza `TryFrom` refuses must be `Bad` with the
/// head as written, anything else must be the same `Element`, and XML one way refuses the
/// other must refuse too. For the fuzz target `stanza_reader` (differential fuzzing).
pub(crate) fn check_against_try_from(bytes: &[u8]) {
    let typed = xso::from_bytes::<Incoming>(bytes);
    let element = xso::from_bytes::<Element>(bytes);
    let (typed, el) = match (typed, element) {
        (Err(_), Err(_)) => return,
        (Ok(t), Err(e)) => panic!("the element parser refused ({e}) what the reader took: {t:?}"),
        (Err(e), Ok(el)) => panic!("the reader refused ({e}) a well-formed element: {el:?}"),
        (Ok(t), Ok(el)) => (t, el),
    };
    let kind = match el.name() {
        "message" if el.ns() == ns::COMPONENT => Some(Kind::Message),
        "presence" if el.ns() == ns::COMPONENT => Some(Kind::Presence),
        "iq" if el.ns() == ns::COMPONENT => Some(Kind::Iq),
        _ => None,
    };
    let Some(kind) = kind else {
        match typed {
            Incoming::Other(got) => assert_eq!(got, el, "an untyped element differs"),
            other => panic!("{} read as a stanza: {other:?}", el.name()),
        }
        return;
    };
    let attr = |name: &str| el.attr(name).map(str::to_owned);
    let head = RawHead {
        kind,
        from: attr("from"),
        to: attr("to"),
        id: attr("id"),
        type_: attr("type"),
    };
    let via_try_from = match kind {
        Kind::Message => Message::try_from(el).map(|m| Inbound::Message(Box::new(m))),
        Kind::Presence => Presence::try_from(el).map(|p| Inbound::Presence(Box::new(p))),
        Kind::Iq => Iq::try_from(el).map(|iq| Inbound::Iq(Box::new(iq))),
    };
    match (typed, via_try_from) {
        (Incoming::Stanza(got), Ok(want)) => assert_eq!(got, want, "typed values differ"),
        (Incoming::Bad { head: got, .. }, Err(_)) => assert_eq!(got, head, "heads differ"),
        (typed, via_try_from) => {
            panic!("the reader gave {typed:?}, TryFrom gave {via_try_from:?}")
        }
    }
}

/// Reads one element from `xml` (a complete document), as the stream would.
#[cfg(test)]
pub(crate) fn parse(xml: &str) -> Incoming {
    match xso::from_bytes::<Incoming>(xml.as_bytes()) {
        Ok(incoming) => incoming,
        Err(e) => panic!("{xml}: {e}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::borrow::Cow;
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
    use tokio_xmpp::xmlstream::{self, ReadError, StreamHeader, Timeouts};
    use xmpp_parsers::jid::Jid;
    use xmpp_parsers::message::{Id, MessageType};
    use xmpp_parsers::presence::{Show, Type as PresenceType};

    use super::*;

    pub(crate) const C: &str = "xmlns='jabber:component:accept'";

    /// What `TryFrom<Element>` (the reader's way before) gives for `xml`.
    pub(crate) fn via_element(xml: &str) -> Result<Inbound, String> {
        let el: Element = xml.parse().unwrap();
        let e = |e: xso::error::FromElementError| e.to_string();
        match el.name() {
            "message" => (Message::try_from(el))
                .map(|m| Inbound::Message(Box::new(m)))
                .map_err(e),
            "presence" => (Presence::try_from(el))
                .map(|p| Inbound::Presence(Box::new(p)))
                .map_err(e),
            _ => Iq::try_from(el)
                .map(|iq| Inbound::Iq(Box::new(iq)))
                .map_err(e),
        }
    }

    pub(crate) fn good() -> Vec<String> {
        vec![
            format!(
                "<message {C} from='alice@localhost/laptop' to='bob@mqtt.localhost' \
                 type='chat' id='m1'><body>Hello ~ &amp; &lt;Bob&gt; \u{1F600}</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ),
            format!(
                "<message {C} from='a@localhost' to='b@mqtt.localhost' type='headline' \
                 xml:lang='de'><subject>S</subject><body>Hallo</body>\
                 <body xml:lang='en'>Hello</body><thread parent='p'>t1</thread>\
                 <request xmlns='urn:xmpp:receipts'/>\
                 <x xmlns='urn:x:deep'><y a='1'><z>text</z></y></x></message>"
            ),
            format!("<message {C} to='b@mqtt.localhost'/>"),
            format!(
                "<presence {C} from='a@localhost/r' to='b@mqtt.localhost' id='p1'>\
                 <show>dnd</show><status>busy here</status><priority>-5</priority></presence>"
            ),
            format!("<presence {C} from='a@localhost' to='b@mqtt.localhost' type='subscribe'/>"),
            format!(
                "<iq {C} type='get' id='i1' from='a@localhost/r' to='mqtt.localhost'>\
                 <ping xmlns='urn:xmpp:ping'/></iq>"
            ),
            format!("<iq {C} type='result' id='i2' from='localhost' to='mqtt.localhost'/>"),
            format!(
                "<iq {C} type='error' id='i3' from='localhost' to='mqtt.localhost'>\
                 <error type='cancel'><service-unavailable \
                 xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ),
        ]
    }

    #[test]
    fn good_stanzas_equal_what_try_from_gave() {
        for xml in good() {
            let Incoming::Stanza(got) = parse(&xml) else {
                panic!("not a stanza: {xml}")
            };
            assert_eq!(Ok(got), via_element(&xml), "{xml}");
        }
    }

    #[test]
    fn a_chat_message_reads_field_by_field() {
        let Incoming::Stanza(Inbound::Message(m)) = parse(&good()[0]) else {
            panic!("not a message")
        };
        assert_eq!(m.from, Some(Jid::new("alice@localhost/laptop").unwrap()));
        assert_eq!(m.to, Some(Jid::new("bob@mqtt.localhost").unwrap()));
        assert_eq!(m.id, Some(Id("m1".into())));
        assert_eq!(m.type_, MessageType::Chat);
        assert_eq!(
            m.get_best_body(vec![]).map(|(_, b)| b.as_str()),
            Some("Hello ~ & <Bob> \u{1F600}")
        );
        assert!(m.subjects.is_empty());
        assert_eq!(m.thread, None);
        assert_eq!(m.payloads.len(), 1);
        assert!(m.payloads[0].is("active", "http://jabber.org/protocol/chatstates"));
        let Incoming::Stanza(Inbound::Presence(p)) = parse(&good()[3]) else {
            panic!("not a presence")
        };
        assert_eq!(p.show, Some(Show::Dnd));
        assert_eq!(p.priority, xmpp_parsers::presence::Priority(-5));
        assert_eq!(p.type_, PresenceType::None);
    }

    pub(crate) fn bad() -> Vec<(String, RawHead)> {
        let head = |kind, from: &str, id: Option<&str>, type_: Option<&str>| RawHead {
            kind,
            from: Some(from.into()),
            to: Some("bot@mqtt.localhost".into()),
            id: id.map(Into::into),
            type_: type_.map(Into::into),
        };
        vec![
            // Rejected on the attributes, before any child.
            (
                format!(
                    "<message {C} from='a@localhost/r' to='bot@mqtt.localhost' type='bogus' \
                     id='b1'><body>x</body><x xmlns='urn:x'><y/></x></message>"
                ),
                head(Kind::Message, "a@localhost/r", Some("b1"), Some("bogus")),
            ),
            // Rejected on a child's text.
            (
                format!(
                    "<presence {C} from='a@localhost/r' to='bot@mqtt.localhost' id='b2'>\
                     <show>busy</show><status>s</status></presence>"
                ),
                head(Kind::Presence, "a@localhost/r", Some("b2"), None),
            ),
            (
                format!(
                    "<presence {C} from='a@localhost/r' to='bot@mqtt.localhost' id='b3'>\
                     <priority>high</priority></presence>"
                ),
                head(Kind::Presence, "a@localhost/r", Some("b3"), None),
            ),
            // Rejected on a second child, deeper elements after it skipped.
            (
                format!(
                    "<message {C} from='a@localhost' to='bot@mqtt.localhost' type='error'>\
                     <thread>a</thread><thread>b</thread><x xmlns='urn:x'><y><z/></y></x>\
                     </message>"
                ),
                head(Kind::Message, "a@localhost", None, Some("error")),
            ),
            // An iq without type.
            (
                format!("<iq {C} from='a@localhost' to='bot@mqtt.localhost' id='b5'/>"),
                head(Kind::Iq, "a@localhost", Some("b5"), None),
            ),
            // An iq get without its payload.
            (
                format!("<iq {C} from='a@localhost' to='bot@mqtt.localhost' id='b6' type='get'/>"),
                head(Kind::Iq, "a@localhost", Some("b6"), Some("get")),
            ),
        ]
    }

    #[test]
    fn each_bad_stanza_gives_bad_with_its_head() {
        for (xml, want) in bad() {
            assert!(via_element(&xml).is_err(), "TryFrom accepted {xml}");
            match parse(&xml) {
                Incoming::Bad { head, error } => {
                    assert_eq!(head, want, "{xml}");
                    assert!(!error.to_string().is_empty());
                }
                other => panic!("{xml}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_elements_stay_untyped() {
        for xml in [
            format!("<handshake {C}/>"),
            "<error xmlns='http://etherx.jabber.org/streams'>\
             <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>"
                .to_owned(),
            "<message xmlns='jabber:client' to='a@b'><body>x</body></message>".to_owned(),
            format!("<foo {C}><bar/></foo>"),
        ] {
            match parse(&xml) {
                Incoming::Other(el) => assert_eq!(el, xml.parse::<Element>().unwrap()),
                other => panic!("{xml}: {other:?}"),
            }
        }
    }

    /// Reads a component stream whose bytes arrive one at a time (each a read of its own),
    /// with bad stanzas and whitespace keepalives between good ones.
    #[tokio::test]
    async fn stanzas_split_across_many_reads_and_bad_ones_between() {
        let (client, server) = tokio::io::duplex(1);
        let (mut server_rx, mut server_tx) = tokio::io::split(server);
        // What the client sends (its stream header) is read and dropped.
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            server_rx.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        let mut script = String::from(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' from='mqtt.localhost' id='s1'>",
        );
        let (good, bad) = (good(), bad());
        // The stanzas inherit the stream's default namespace, as on a real link.
        let strip = |xml: &str| xml.replacen(&format!(" {C}"), "", 1);
        for (i, xml) in good.iter().enumerate() {
            script.push_str(&strip(xml));
            script.push_str(" \n");
            if let Some((bad, _)) = bad.get(i) {
                script.push_str(&strip(bad));
            }
        }
        let writer = tokio::spawn(async move {
            for byte in script.as_bytes() {
                server_tx.write_all(&[*byte]).await?;
            }
            server_tx.write_all(b"</stream:stream>").await?;
            server_tx.shutdown().await
        });
        let header = StreamHeader {
            to: Some(Cow::Borrowed("mqtt.localhost")),
            from: None,
            id: None,
        };
        let timeouts = Timeouts {
            read_timeout: Duration::from_secs(20),
            response_timeout: Duration::from_secs(20),
        };
        let pending =
            xmlstream::initiate_stream(BufStream::new(client), ns::COMPONENT, header, timeouts)
                .await
                .unwrap();
        let mut stream = pending.skip_features::<Incoming>();
        let mut got = Vec::new();
        loop {
            match stream.next().await {
                Some(Ok(incoming)) => got.push(incoming),
                Some(Err(ReadError::StreamFooterReceived)) | None => break,
                Some(Err(e)) => panic!("read error: {e}"),
            }
        }
        writer.await.unwrap().unwrap();
        drop(stream);
        assert!(drain.await.unwrap().unwrap() > 0);
        let mut want_bad = bad.iter();
        let mut got = got.into_iter();
        for (i, xml) in good.iter().enumerate() {
            match got.next() {
                Some(Incoming::Stanza(s)) => assert_eq!(Ok(s), via_element(xml), "{xml}"),
                other => panic!("stanza {i}: {other:?}"),
            }
            if let Some((_, want)) = want_bad.next() {
                match got.next() {
                    Some(Incoming::Bad { head, .. }) => assert_eq!(&head, want),
                    other => panic!("bad stanza {i}: {other:?}"),
                }
            }
        }
        assert!(got.next().is_none());
    }
}
