//! What the adapter does with each element read from the server (pure, no I/O): answer
//! XEP-0199 pings and XEP-0030 disco for the component domain, recognise answers to its own
//! pings, bounce stanzas that do not parse with `<bad-request/>`, and hand the rest to the
//! bridge as typed [`Inbound`] values.

use std::collections::BTreeSet;

use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::connection::stream_error;
use super::error::LinkError;
use super::stanza_reader::{Incoming, Kind, RawHead};
use super::{Inbound, Stanza};

/// Disco identity: category and type (XEP-0030 registry: `gateway`; `mqtt` is ours).
const IDENTITY: (&str, &str) = ("gateway", "mqtt");
/// Disco identity name.
const IDENTITY_NAME: &str = "XMPP-MQTT bridge";
/// Features announced in disco#info.
const FEATURES: [&str; 4] = [ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING, ns::RECEIPTS];

/// The outcome of one element.
#[derive(Debug)]
pub(crate) enum Action {
    /// A stanza for the bridge ([`Head::of_inbound`] tells how to bounce it).
    Deliver(Inbound),
    /// Answered here: write this reply.
    Reply(Element),
    /// The answer to one of our pings (result or error), by id.
    Pong(String),
    /// The answer to a ping of another bridge instance holding the same component domain
    /// (ejabberd balances routes to a domain between its connections, iq results included).
    ForeignPong(String),
    /// A stanza that does not parse: count it, log `error`, write `reply` if there is one.
    Bad {
        /// The parser's complaint.
        error: String,
        /// The element name, for the log.
        name: String,
        /// `<bad-request/>` back to the sender, when the stanza can be answered.
        reply: Option<Element>,
    },
    /// The server ended the stream with an error.
    Fatal(LinkError),
    /// Not a stanza; logged and skipped.
    Ignore(String),
}

/// Addressing of a stanza, kept to answer it with an error.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    kind: Kind,
    from: Option<Jid>,
    to: Option<Jid>,
    id: Option<String>,
    /// False for errors, iq results and anything else that must never be answered.
    answerable: bool,
}

/// Per-link constants the classification needs.
#[derive(Debug)]
pub(crate) struct Service {
    /// Our component domain.
    domain: Jid,
    /// Ids of our own pings start with this.
    ping_prefix: String,
}

impl Service {
    pub(crate) fn new(domain: &str, ping_prefix: String) -> Result<Self, String> {
        let domain = Jid::new(domain).map_err(|e| format!("invalid domain {domain}: {e}"))?;
        Ok(Self {
            domain,
            ping_prefix,
        })
    }

    /// Decides what to do with one element read from the stream.
    pub(crate) fn classify(&self, incoming: Incoming) -> Action {
        match incoming {
            Incoming::Stanza(Inbound::Iq(iq)) => self.iq(*iq),
            Incoming::Stanza(inbound) => Action::Deliver(inbound),
            Incoming::Bad { head, error } => {
                let name = head.kind.name().to_owned();
                let head = Head::of_raw(&head);
                Action::Bad {
                    error: error.to_string(),
                    name,
                    reply: self.error_reply(
                        &head,
                        ErrorType::Modify,
                        DefinedCondition::BadRequest,
                        "The bridge could not parse this stanza.",
                    ),
                }
            }
            Incoming::Other(el) => {
                if el.is("error", ns::STREAM) {
                    return Action::Fatal(stream_error(el, self.domain.as_str()));
                }
                if el.ns() == ns::COMPONENT {
                    return Action::Ignore(el.name().to_owned());
                }
                Action::Ignore(format!("{{{}}}{}", el.ns(), el.name()))
            }
        }
    }

    fn iq(&self, iq: Iq) -> Action {
        let (from, to, id, payload) = match iq {
            Iq::Result { ref id, .. } | Iq::Error { ref id, .. }
                if id.starts_with(&self.ping_prefix) =>
            {
                return Action::Pong(id.clone());
            }
            Iq::Result { ref id, .. } | Iq::Error { ref id, .. }
                if id.starts_with(super::PING_ID_PREFIX) =>
            {
                return Action::ForeignPong(id.clone());
            }
            Iq::Get {
                from,
                to,
                id,
                payload,
            } if to.as_ref() == Some(&self.domain) => (from, to, id, payload),
            other => return Action::Deliver(Inbound::Iq(Box::new(other))),
        };
        let reply = |payload: Option<Element>| {
            Action::Reply(
                Iq::Result {
                    from: to.clone(),
                    to: from.clone(),
                    id: id.clone(),
                    payload,
                }
                .into(),
            )
        };
        let disco = payload.is("query", ns::DISCO_INFO) || payload.is("query", ns::DISCO_ITEMS);
        if payload.is("ping", ns::PING) {
            reply(None)
        } else if disco && payload.attr("node").is_some() {
            // We publish no nodes.
            let cond = DefinedCondition::ItemNotFound;
            let head = Head {
                kind: Kind::Iq,
                from,
                to,
                id: Some(id),
                answerable: true,
            };
            match self.error_reply(&head, ErrorType::Cancel, cond, "No such node.") {
                Some(el) => Action::Reply(el),
                None => Action::Ignore("disco query without sender".into()),
            }
        } else if payload.is("query", ns::DISCO_INFO) {
            reply(Some(disco_info().into()))
        } else if payload.is("query", ns::DISCO_ITEMS) {
            reply(Some(
                DiscoItemsResult {
                    node: None,
                    items: vec![],
                    rsm: None,
                }
                .into(),
            ))
        } else {
            // Another request to the domain itself: the bridge decides.
            Action::Deliver(Inbound::Iq(Box::new(Iq::Get {
                from,
                to,
                id,
                payload,
            })))
        }
    }

    /// An error reply to a stanza, from the address it was sent to (or the domain), or `None`
    /// when it must not or cannot be answered.
    pub(crate) fn error_reply(
        &self,
        head: &Head,
        type_: ErrorType,
        condition: DefinedCondition,
        text: &str,
    ) -> Option<Element> {
        let from = match &head.to {
            Some(jid) if jid.domain() == self.domain.domain() => jid.clone(),
            _ => self.domain.clone(),
        };
        error_stanza(head, from, type_, condition, text).map(Element::from)
    }
}

/// The error reply to the stanza `head` describes, sent from `from`; `None` when the stanza
/// must not (errors, iq results) or cannot (no sender, iq without id) be answered.
pub(crate) fn error_stanza(
    head: &Head,
    from: Jid,
    type_: ErrorType,
    condition: DefinedCondition,
    text: &str,
) -> Option<Stanza> {
    if !head.answerable {
        return None;
    }
    let to = head.from.clone()?;
    let error = StanzaError::new(type_, condition, "en", text);
    Some(match head.kind {
        Kind::Message => {
            let mut m = Message::new_with_type(MessageType::Error, Some(to));
            m.from = Some(from);
            m.id = head.id.clone().map(Id);
            m.payloads.push(error.into());
            Stanza::Message(m)
        }
        Kind::Presence => {
            let mut p = Presence::new(PresenceType::Error)
                .with_from(from)
                .with_to(to);
            p.id = head.id.clone();
            Stanza::Presence(p.with_payload(error))
        }
        Kind::Iq => Stanza::Iq(Iq::Error {
            from: Some(from),
            to: Some(to),
            id: head.id.clone()?,
            error,
            payload: None,
        }),
    })
}

fn disco_info() -> DiscoInfoResult {
    let (category, type_) = IDENTITY;
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new(category, type_, "en", IDENTITY_NAME)],
        features: FEATURES
            .iter()
            .map(|f| (*f).to_owned())
            .collect::<BTreeSet<_>>(),
        extensions: vec![],
    }
}

impl Head {
    /// Addressing of a parsed inbound stanza.
    pub(crate) fn of_inbound(inbound: &Inbound) -> Self {
        match inbound {
            Inbound::Message(m) => Self {
                kind: Kind::Message,
                from: m.from.clone(),
                to: m.to.clone(),
                id: m.id.as_ref().map(|id| id.0.clone()),
                answerable: m.type_ != MessageType::Error,
            },
            Inbound::Presence(p) => Self {
                kind: Kind::Presence,
                from: p.from.clone(),
                to: p.to.clone(),
                id: p.id.clone(),
                answerable: p.type_ != PresenceType::Error,
            },
            Inbound::Iq(iq) => Self {
                kind: Kind::Iq,
                from: iq.from().cloned(),
                to: iq.to().cloned(),
                id: Some(iq.id().to_owned()),
                answerable: matches!(**iq, Iq::Get { .. } | Iq::Set { .. }),
            },
            Inbound::ForeignPong(id) => Self {
                kind: Kind::Iq,
                from: None,
                to: None,
                id: Some(id.clone()),
                answerable: false,
            },
        }
    }

    /// Addressing of a stanza that did not parse, from its attributes as written.
    pub(crate) fn of_raw(raw: &RawHead) -> Self {
        let jid = |s: &Option<String>| s.as_deref().and_then(|s| Jid::new(s).ok());
        let type_ = raw.type_.as_deref();
        let answerable = match raw.kind {
            Kind::Iq => matches!(type_, Some("get" | "set")),
            Kind::Message | Kind::Presence => type_ != Some("error"),
        };
        Self {
            kind: raw.kind,
            from: jid(&raw.from),
            to: jid(&raw.to),
            id: raw.id.clone(),
            answerable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "xmb-ping-t-";

    fn service() -> Service {
        Service::new("mqtt.localhost", PREFIX.into()).unwrap()
    }

    fn classify(xml: &str) -> Action {
        service().classify(super::super::stanza_reader::parse(xml))
    }

    fn reply(xml: &str) -> Element {
        match classify(xml) {
            Action::Reply(el) => el,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn bad_reply(xml: &str) -> Option<Element> {
        match classify(xml) {
            Action::Bad { reply, .. } => reply,
            other => panic!("expected a bad stanza, got {other:?}"),
        }
    }

    const C: &str = "xmlns='jabber:component:accept'";

    #[test]
    fn ping_to_the_domain_is_answered_with_an_empty_result() {
        let el = reply(&format!(
            "<iq {C} type='get' id='p1' from='a@localhost/r' to='mqtt.localhost'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        let iq = Iq::try_from(el).unwrap();
        assert_eq!(
            iq,
            Iq::Result {
                from: Some(Jid::new("mqtt.localhost").unwrap()),
                to: Some(Jid::new("a@localhost/r").unwrap()),
                id: "p1".into(),
                payload: None,
            }
        );
    }

    #[test]
    fn disco_info_names_the_gateway_and_its_features() {
        let el = reply(&format!(
            "<iq {C} type='get' id='d1' from='a@localhost/r' to='mqtt.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ));
        let Ok(Iq::Result {
            payload: Some(payload),
            ..
        }) = Iq::try_from(el)
        else {
            panic!("not a result")
        };
        let info = DiscoInfoResult::try_from(payload).unwrap();
        assert_eq!(info.identities.len(), 1);
        assert_eq!(
            (
                info.identities[0].category.as_str(),
                info.identities[0].type_.as_str()
            ),
            ("gateway", "mqtt")
        );
        let want: BTreeSet<String> = FEATURES.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(info.features, want);
    }

    #[test]
    fn disco_items_is_empty_and_nodes_do_not_exist() {
        let el = reply(&format!(
            "<iq {C} type='get' id='d2' from='a@localhost/r' to='mqtt.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        ));
        let Ok(Iq::Result {
            payload: Some(payload),
            ..
        }) = Iq::try_from(el)
        else {
            panic!("not a result")
        };
        assert!(
            DiscoItemsResult::try_from(payload)
                .unwrap()
                .items
                .is_empty()
        );
        let el = reply(&format!(
            "<iq {C} type='get' id='d3' from='a@localhost/r' to='mqtt.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>"
        ));
        let Ok(Iq::Error { error, .. }) = Iq::try_from(el) else {
            panic!("not an error")
        };
        assert_eq!(error.defined_condition, DefinedCondition::ItemNotFound);
    }

    #[test]
    fn pongs_of_other_instances_are_told_apart_from_ours_and_other_results() {
        for (id, foreign) in [("xmb-ping-other-3", true), ("xmb-ping-t-3", false)] {
            let action = classify(&format!(
                "<iq {C} type='result' id='{id}' from='localhost' to='mqtt.localhost'/>"
            ));
            match action {
                Action::ForeignPong(got) if foreign => assert_eq!(got, id),
                Action::Pong(got) if !foreign => assert_eq!(got, id),
                other => panic!("{id}: {other:?}"),
            }
        }
        let action = classify(&format!(
            "<iq {C} type='result' id='disco-1' from='localhost' to='mqtt.localhost'/>"
        ));
        assert!(
            matches!(action, Action::Deliver(Inbound::Iq(_))),
            "{action:?}"
        );
    }

    #[test]
    fn requests_to_users_of_the_domain_go_to_the_bridge() {
        let action = classify(&format!(
            "<iq {C} type='get' id='p2' from='a@localhost/r' to='bot@mqtt.localhost'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        assert!(
            matches!(action, Action::Deliver(Inbound::Iq(_))),
            "{action:?}"
        );
        let action = classify(&format!(
            "<message {C} from='a@localhost/r' to='bot@mqtt.localhost' type='chat' id='m1'>\
             <body>hi</body></message>"
        ));
        assert!(
            matches!(action, Action::Deliver(Inbound::Message(_))),
            "{action:?}"
        );
    }

    #[test]
    fn answers_to_our_pings_are_pongs_whatever_their_type() {
        for type_ in ["result", "error"] {
            let error = if type_ == "error" {
                "<error type='cancel'><service-unavailable \
                 xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            } else {
                ""
            };
            let action = classify(&format!(
                "<iq {C} type='{type_}' id='{PREFIX}7' from='localhost' to='mqtt.localhost'>\
                 {error}</iq>"
            ));
            assert!(
                matches!(&action, Action::Pong(id) if id == "xmb-ping-t-7"),
                "{action:?}"
            );
        }
    }

    #[test]
    fn a_message_of_unknown_type_gets_bad_request_from_where_it_was_sent() {
        let el = bad_reply(&format!(
            "<message {C} from='a@localhost/r' to='bot@mqtt.localhost' type='bogus' id='b1'>\
             <body>x</body></message>"
        ))
        .expect("a reply");
        let m = Message::try_from(el).unwrap();
        assert_eq!(m.type_, MessageType::Error);
        assert_eq!(m.id, Some(Id("b1".into())));
        assert_eq!(m.to, Some(Jid::new("a@localhost/r").unwrap()));
        assert_eq!(m.from, Some(Jid::new("bot@mqtt.localhost").unwrap()));
        let error = m
            .payloads
            .into_iter()
            .find_map(|p| StanzaError::try_from(p).ok())
            .unwrap();
        assert_eq!(error.defined_condition, DefinedCondition::BadRequest);
        assert_eq!(error.type_, ErrorType::Modify);
    }

    #[test]
    fn presences_with_invalid_show_or_priority_get_bad_request() {
        for child in ["<show>busy</show>", "<priority>high</priority>"] {
            let el = bad_reply(&format!(
                "<presence {C} from='a@localhost/r' to='bot@mqtt.localhost' id='b2'>{child}\
                 </presence>"
            ))
            .expect("a reply");
            let p = Presence::try_from(el).unwrap();
            assert_eq!(p.type_, PresenceType::Error);
            assert_eq!(p.id.as_deref(), Some("b2"));
        }
    }

    #[test]
    fn errors_results_and_senderless_stanzas_are_never_answered() {
        let cases = [
            // An error stanza that does not parse: answering could loop.
            format!(
                "<message {C} from='a@localhost' to='b@mqtt.localhost' type='error'>\
                 <thread>a</thread><thread>b</thread></message>"
            ),
            // An iq result without id.
            format!("<iq {C} from='a@localhost' to='b@mqtt.localhost' type='result'/>"),
            // No sender.
            format!("<message {C} to='b@mqtt.localhost' type='bogus'/>"),
            // An iq get without an id.
            format!("<iq {C} from='a@localhost' to='b@mqtt.localhost' type='get'/>"),
        ];
        for xml in cases {
            assert!(bad_reply(&xml).is_none(), "answered {xml}");
        }
    }

    #[test]
    fn the_bridge_can_answer_an_inbound_stanza_with_an_error() {
        let Action::Deliver(inbound) = classify(&format!(
            "<iq {C} type='set' id='s1' from='a@localhost/r' to='nobody@mqtt.localhost'>\
             <query xmlns='urn:x'/></iq>"
        )) else {
            panic!("not delivered")
        };
        let reply = inbound.error_reply(
            ErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
            "No rule covers this address.",
        );
        let Some(Stanza::Iq(Iq::Error {
            from,
            to,
            id,
            error,
            ..
        })) = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(from, Some(Jid::new("nobody@mqtt.localhost").unwrap()));
        assert_eq!(to, Some(Jid::new("a@localhost/r").unwrap()));
        assert_eq!(id, "s1");
        assert_eq!(
            error.defined_condition,
            DefinedCondition::ServiceUnavailable
        );
        let Action::Deliver(result) = classify(&format!(
            "<iq {C} type='result' id='r1' from='a@localhost/r' to='nobody@mqtt.localhost'/>"
        )) else {
            panic!("not delivered")
        };
        let cond = DefinedCondition::ServiceUnavailable;
        assert!(result.error_reply(ErrorType::Cancel, cond, "").is_none());
    }

    #[test]
    fn the_reply_comes_from_the_domain_when_the_target_was_foreign() {
        let el = bad_reply(&format!(
            "<message {C} from='a@localhost' to='x@other.example' type='bogus'/>"
        ))
        .expect("a reply");
        assert_eq!(el.attr("from"), Some("mqtt.localhost"));
    }

    #[test]
    fn stream_errors_end_the_link_and_other_elements_are_skipped() {
        let action = classify(
            "<error xmlns='http://etherx.jabber.org/streams'>\
             <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>",
        );
        assert!(
            matches!(action, Action::Fatal(LinkError::Conflict { .. })),
            "{action:?}"
        );
        assert!(matches!(
            classify(&format!("<handshake {C}/>")),
            Action::Ignore(_)
        ));
        assert!(matches!(
            classify("<foo xmlns='urn:x'/>"),
            Action::Ignore(_)
        ));
    }
}
