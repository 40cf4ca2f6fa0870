//! Translation, pure: typed messages plus the mapping table in, typed messages out. No I/O.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;

use super::envelope::{
    ChatState, EnvelopeRef, Extras, ParsedPayload, PayloadError, bounce_json, envelope_json_at,
    parse_json, parse_state, parse_text, receipt_json, state_json,
};
use crate::broker::codec::{Properties, Property, QoS};
use crate::mapping::{
    MappingTable, MessageKind, PayloadFormat, Refusal, rsplit_once_byte, split_once_byte,
};
use crate::xmpp::message_xml::xml_text;

/// A chat message that arrived from XMPP, as the bridge needs it. Its texts borrow from the
/// stanza when they can: copying sender, recipient, id and body per message was a share of
/// the bridge's CPU of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundChat<'a> {
    /// Sender, full JID as routed by the server (trusted: the server authenticated it).
    pub from: Cow<'a, str>,
    /// Recipient in the bridge domain.
    pub to: Cow<'a, str>,
    /// Stanza id.
    pub id: Option<Cow<'a, str>>,
    /// Message type.
    pub kind: MessageKind,
    /// Text, if any.
    pub body: Option<Cow<'a, str>>,
    /// Subject.
    pub subject: Option<Cow<'a, str>>,
    /// Thread.
    pub thread: Option<Cow<'a, str>>,
    /// Ids, correction, delay, chat state, receipts.
    pub extras: Extras,
}

/// The sub-topic level under a rule's topic for chat states (QoS 0, never retained).
pub const STATE_LEVEL: &str = "chatstate";
/// The sub-topic level under a rule's topic for receipts published to MQTT.
pub const RECEIPT_LEVEL: &str = "receipt";
/// The sub-topic level under a rule's topic for bounces of messages sent from MQTT.
pub const ERROR_LEVEL: &str = "error";

/// What a publish to MQTT carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// A message with a body.
    Message,
    /// A chat state alone (ephemeral).
    State(ChatState),
    /// An XMPP client's receipt for the message with this id.
    Receipt(String),
    /// The XMPP server's bounce of the message with this id.
    Bounce(String),
}

/// A publish the bridge makes on the MQTT side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttOut {
    /// Rule that produced it.
    pub rule: String,
    /// Topic.
    pub topic: String,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Payload in the rule's format.
    pub payload: Bytes,
    /// MQTT 5 User Properties (ids, correction, delay); empty for a plain message.
    pub user_properties: Vec<(&'static str, String)>,
    /// What it is.
    pub carried: Carried,
}

/// What to do with a message from XMPP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromXmpp {
    /// Publish it.
    Publish(MqttOut),
    /// Nothing to carry (e.g. a chat state without body); not an error.
    Ignore(&'static str),
    /// No rule covers the recipient: answer `<item-not-found/>`.
    NoRoute,
}

/// A message the bridge sends on the XMPP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmppOut {
    /// Rule that produced it.
    pub rule: String,
    /// Sender (bare JID in the bridge domain, from the publisher's identity).
    pub from: String,
    /// Recipient (bare JID).
    pub to: String,
    /// Message type.
    pub kind: MessageKind,
    /// Text.
    pub body: String,
    /// Subject.
    pub subject: Option<String>,
    /// Thread.
    pub thread: Option<String>,
    /// Client-chosen id, if the payload had one.
    pub id: Option<String>,
    /// Origin id, correction, delay, chat state (body empty: a chat state alone).
    pub extras: Extras,
    /// The rule asks for a receipt request and an origin id on the stanza.
    pub receipts: bool,
}

/// Why an MQTT publish is not carried to XMPP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCarried {
    /// The mapping table refuses it.
    #[error(transparent)]
    Mapping(#[from] Refusal),
    /// The payload does not parse in the rule's format.
    #[error("rule `{rule}`: {error}")]
    Payload {
        /// The rule.
        rule: String,
        /// What is wrong.
        error: PayloadError,
    },
    /// The payload asks for a message type the rule does not carry.
    #[error("rule `{rule}` does not carry `{kind}` messages")]
    Kind {
        /// The rule.
        rule: String,
        /// The requested type.
        kind: MessageKind,
    },
}

impl NotCarried {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            NotCarried::Mapping(Refusal::NoRule) => "no_rule",
            NotCarried::Mapping(Refusal::NotYourTopic { .. }) => "not_your_topic",
            NotCarried::Mapping(Refusal::Anonymous { .. }) => "anonymous",
            NotCarried::Mapping(_) => "bad_topic",
            NotCarried::Payload { .. } => "bad_payload",
            NotCarried::Kind { .. } => "kind_not_allowed",
        }
    }
}

/// The bare part of a JID string (drops `/resource`).
pub fn bare(jid: &str) -> &str {
    split_once_byte(jid, b'/').map_or(jid, |(b, _)| b)
}

fn domain_of(jid: &str) -> &str {
    let b = bare(jid);
    rsplit_once_byte(b, b'@').map_or(b, |(_, d)| d)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// XMPP → MQTT for one message. `render_xml` gives the stanza as XML text; it is called only
/// for rules with the `xml` payload format (serializing costs more than the rest together).
pub fn xmpp_to_mqtt(
    table: &MappingTable,
    msg: &InboundChat<'_>,
    render_xml: impl FnOnce() -> String,
) -> FromXmpp {
    xmpp_to_mqtt_at(table, msg, SystemTime::now(), render_xml)
}

/// [`xmpp_to_mqtt`] for a message taken at `now` (the JSON envelope's `timestamp`).
pub fn xmpp_to_mqtt_at(
    table: &MappingTable,
    msg: &InboundChat<'_>,
    now: SystemTime,
    render_xml: impl FnOnce() -> String,
) -> FromXmpp {
    // Loop guard: what comes from our own domain was sent by this bridge.
    if domain_of(&msg.from).eq_ignore_ascii_case(table.domain()) {
        return FromXmpp::Ignore("sent by the bridge itself");
    }
    // A receipt or a chat state alone may come as type normal; it follows the chat rule.
    let route = table
        .to_mqtt(bare(&msg.from), bare(&msg.to), msg.kind)
        .or_else(|| {
            let bodiless = msg.body.as_ref().is_none_or(|b| b.is_empty());
            (bodiless && msg.kind == MessageKind::Normal)
                .then(|| table.to_mqtt(bare(&msg.from), bare(&msg.to), MessageKind::Chat))
                .flatten()
        });
    let Some(route) = route else {
        return if table.covers_jid(bare(&msg.to)) {
            FromXmpp::Ignore("no rule for this sender or message type")
        } else {
            FromXmpp::NoRoute
        };
    };
    let rule = route.rule;
    let Some(body) = msg.body.as_ref().filter(|b| !b.is_empty()) else {
        // No body: a receipt or a chat state travels on its sub-topic; anything else is not
        // carried.
        let (level, carried, qos, payload) = if let Some(id) = &msg.extras.received {
            let payload = match rule.format {
                PayloadFormat::Json => Bytes::from(receipt_json(&msg.from, &msg.to, id)),
                PayloadFormat::Text => Bytes::copy_from_slice(id.as_bytes()),
                PayloadFormat::Xml => Bytes::from(render_xml()),
            };
            let qos = qos(rule.qos);
            (RECEIPT_LEVEL, Carried::Receipt(id.clone()), qos, payload)
        } else if let (Some(bounce), Some(id)) = (&msg.extras.bounced, &msg.id) {
            let payload = match rule.format {
                PayloadFormat::Json => Bytes::from(bounce_json(&msg.from, &msg.to, id, bounce)),
                PayloadFormat::Text => Bytes::copy_from_slice(id.as_bytes()),
                PayloadFormat::Xml => Bytes::from(render_xml()),
            };
            (
                ERROR_LEVEL,
                Carried::Bounce(id.to_string()),
                qos(rule.qos),
                payload,
            )
        } else if let Some(state) = msg.extras.state {
            let thread = msg.thread.as_deref();
            let payload = match rule.format {
                PayloadFormat::Json => Bytes::from(state_json(&msg.from, &msg.to, state, thread)),
                PayloadFormat::Text => Bytes::from_static(state.as_str().as_bytes()),
                PayloadFormat::Xml => Bytes::from(render_xml()),
            };
            (STATE_LEVEL, Carried::State(state), QoS::AtMostOnce, payload)
        } else {
            return FromXmpp::Ignore("message without body");
        };
        return FromXmpp::Publish(MqttOut {
            rule: rule.name.clone(),
            topic: format!("{}/{level}", route.topic),
            qos,
            retain: false,
            payload,
            user_properties: Vec::new(),
            carried,
        });
    };
    let payload = match rule.format {
        PayloadFormat::Text => Bytes::copy_from_slice(body.as_bytes()),
        PayloadFormat::Xml => Bytes::from(render_xml()),
        PayloadFormat::Json => Bytes::from(envelope_json_at(
            &EnvelopeRef {
                from: &msg.from,
                to: &msg.to,
                id: msg.id.as_deref(),
                kind: msg.kind,
                body,
                subject: msg.subject.as_deref(),
                thread: msg.thread.as_deref(),
                extras: &msg.extras,
            },
            now,
        )),
    };
    FromXmpp::Publish(MqttOut {
        rule: rule.name.clone(),
        topic: route.topic,
        qos: qos(rule.qos),
        retain: rule.retain,
        payload,
        user_properties: user_properties(&msg.extras),
        carried: Carried::Message,
    })
}

/// The MQTT 5 User Properties of a message from XMPP.
fn user_properties(extras: &Extras) -> Vec<(&'static str, String)> {
    let mut props = Vec::new();
    let pairs = [
        ("origin-id", &extras.origin_id),
        ("stanza-id", &extras.stanza_id),
        ("replaces", &extras.replaces),
        ("delay", &extras.delay),
    ];
    for (name, value) in pairs {
        if let Some(v) = value {
            props.push((name, v.clone()));
        }
    }
    props
}

/// Takes `origin-id`, `replaces` and `delay` from an MQTT 5 publisher's User Properties
/// where the payload did not set them. Values that are empty or too long are ignored.
pub fn apply_user_properties(out: &mut XmppOut, properties: &Properties) {
    for p in &properties.0 {
        let Property::UserProperty(name, value) = p else {
            continue;
        };
        if value.is_empty() || value.len() > 256 {
            continue;
        }
        let slot = match &**name {
            "origin-id" => &mut out.extras.origin_id,
            "replaces" => &mut out.extras.replaces,
            "delay" if super::envelope::check_delay(value).is_ok() => &mut out.extras.delay,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.to_string());
        }
    }
}

/// MQTT → XMPP for one publish by `user` (the authenticated user name, if any).
pub fn mqtt_to_xmpp(
    table: &MappingTable,
    topic: &str,
    payload: &[u8],
    user: Option<&str>,
) -> Result<XmppOut, NotCarried> {
    let route = match table.to_xmpp(topic, user) {
        Err(Refusal::NoRule) => match topic.strip_suffix(STATE_LEVEL) {
            Some(base) if base.ends_with('/') => {
                return state_to_xmpp(table, &base[..base.len() - 1], payload, user);
            }
            _ => return Err(Refusal::NoRule.into()),
        },
        other => other?,
    };
    let rule = route.rule;
    let parsed = match rule.format {
        PayloadFormat::Json => parse_json(payload),
        // Xml is refused for this direction at load time; treat it as text if it ever comes.
        PayloadFormat::Text | PayloadFormat::Xml => parse_text(payload),
    }
    .map_err(|error| NotCarried::Payload {
        rule: rule.name.clone(),
        error,
    })?;
    if let Some(field) = not_xml_text(&parsed) {
        return Err(NotCarried::Payload {
            rule: rule.name.clone(),
            error: PayloadError::NotXmlText(field),
        });
    }
    let default_kind = rule.kinds.first().copied().unwrap_or(MessageKind::Chat);
    let kind = match parsed.kind {
        Some(kind) if rule.kinds.contains(&kind) => kind,
        Some(kind) => {
            return Err(NotCarried::Kind {
                rule: rule.name.clone(),
                kind,
            });
        }
        None => default_kind,
    };
    Ok(XmppOut {
        rule: rule.name.clone(),
        from: route.from,
        to: route.to,
        kind,
        body: parsed.body,
        subject: parsed.subject,
        thread: parsed.thread,
        id: parsed.id,
        extras: parsed.extras,
        receipts: rule.receipts,
    })
}

/// The first text field of a payload that XML cannot carry: refused here (MQTT 5 reason code
/// 0x99 from the broker's guard) rather than failing in the link's writer.
fn not_xml_text(p: &ParsedPayload) -> Option<&'static str> {
    let fields = [
        ("body", Some(&p.body)),
        ("subject", p.subject.as_ref()),
        ("thread", p.thread.as_ref()),
        ("id", p.id.as_ref()),
        ("origin_id", p.extras.origin_id.as_ref()),
        ("replaces", p.extras.replaces.as_ref()),
    ];
    fields
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| !xml_text(v)))
        .map(|(name, _)| name)
}

/// A chat state published on `{topic}/chatstate`: a message without body.
fn state_to_xmpp(
    table: &MappingTable,
    topic: &str,
    payload: &[u8],
    user: Option<&str>,
) -> Result<XmppOut, NotCarried> {
    let route = table.to_xmpp(topic, user)?;
    let rule = route.rule;
    let json = rule.format == PayloadFormat::Json;
    let (state, thread) = parse_state(payload, json).map_err(|error| NotCarried::Payload {
        rule: rule.name.clone(),
        error,
    })?;
    let kind = if rule.kinds.contains(&MessageKind::Chat) {
        MessageKind::Chat
    } else {
        rule.kinds.first().copied().unwrap_or(MessageKind::Chat)
    };
    Ok(XmppOut {
        rule: rule.name.clone(),
        from: route.from,
        to: route.to,
        kind,
        body: String::new(),
        subject: None,
        thread,
        id: None,
        extras: Extras {
            state: Some(state),
            ..Extras::default()
        },
        receipts: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::envelope::Bounce;
    use std::path::Path;

    const RULES: &str = r#"
[[rule]]
name = "inbox"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
peer = "{peer}"
topic = "users/{user}/inbox/{peer}"
format = "json"

[[rule]]
name = "outbox"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "{peer}"
topic = "users/{user}/outbox/{peer}"
kinds = ["chat", "normal"]
format = "json"

[[rule]]
name = "news"
direction = "xmpp-to-mqtt"
jid = "news@{domain}"
topic = "broadcast/news"
kinds = ["headline"]
qos = 0
format = "text"
"#;

    fn table() -> MappingTable {
        MappingTable::parse(RULES, Path::new("test.toml"), "mqtt.example.org").unwrap()
    }

    fn xml() -> String {
        "<message/>".into()
    }

    fn chat(from: &str, to: &str, kind: MessageKind, body: Option<&str>) -> InboundChat<'static> {
        InboundChat {
            from: from.to_owned().into(),
            to: to.to_owned().into(),
            id: Some("id1".into()),
            kind,
            body: body.map(|b| b.to_owned().into()),
            subject: None,
            thread: None,
            extras: Extras::default(),
        }
    }

    #[test]
    fn xmpp_to_mqtt_cases() {
        let t = table();
        let m = chat(
            "alice@example.org/pc",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            Some("hi"),
        );
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &m, xml) else {
            panic!()
        };
        assert_eq!(out.topic, "users/bob/inbox/alice@example.org");
        assert_eq!(out.qos, QoS::AtLeastOnce);
        let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(
            (v["from"].as_str(), v["body"].as_str()),
            (Some("alice@example.org/pc"), Some("hi"))
        );

        let news = chat(
            "ops@example.org",
            "news@mqtt.example.org",
            MessageKind::Headline,
            Some("up"),
        );
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &news, xml) else {
            panic!()
        };
        assert_eq!(
            (out.topic.as_str(), &out.payload[..], out.qos),
            ("broadcast/news", &b"up"[..], QoS::AtMostOnce)
        );

        let no_body = chat(
            "alice@example.org",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            None,
        );
        assert!(matches!(
            xmpp_to_mqtt(&t, &no_body, xml),
            FromXmpp::Ignore(_)
        ));
        let looped = chat(
            "x@mqtt.example.org/r",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            Some("a"),
        );
        assert!(matches!(
            xmpp_to_mqtt(&t, &looped, xml),
            FromXmpp::Ignore(_)
        ));
        // bob@ is covered, but not for headlines: ignored, not item-not-found.
        let wrong_kind = chat(
            "a@example.org",
            "bob@mqtt.example.org",
            MessageKind::Headline,
            Some("a"),
        );
        assert!(matches!(
            xmpp_to_mqtt(&t, &wrong_kind, xml),
            FromXmpp::Ignore(_)
        ));
    }

    #[test]
    fn mqtt_to_xmpp_cases() {
        let t = table();
        let out = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/alice@example.org",
            br#"{"body":"yo"}"#,
            Some("bob"),
        )
        .unwrap();
        assert_eq!(
            (out.from.as_str(), out.to.as_str()),
            ("bob@mqtt.example.org", "alice@example.org")
        );
        assert_eq!((out.kind, out.body.as_str()), (MessageKind::Chat, "yo"));
        let err = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/alice@example.org",
            br#"{"body":"yo"}"#,
            Some("eve"),
        )
        .unwrap_err();
        assert_eq!(err.label(), "not_your_topic");
        let err = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/alice@example.org",
            b"not json",
            Some("bob"),
        )
        .unwrap_err();
        assert_eq!(err.label(), "bad_payload");
        for (payload, field) in [
            (&br#"{"body":"a\u0001b"}"#[..], "body"),
            (br#"{"body":"ok","subject":"\u001f"}"#, "subject"),
            (br#"{"body":"ok","thread":"\uffff"}"#, "thread"),
            (br#"{"body":"ok","id":"x\u0000"}"#, "id"),
            (br#"{"body":"ok","origin_id":"\u000b"}"#, "origin_id"),
            (br#"{"body":"ok","replaces":"\ufffe"}"#, "replaces"),
        ] {
            let err = mqtt_to_xmpp(
                &t,
                "users/bob/outbox/alice@example.org",
                payload,
                Some("bob"),
            )
            .unwrap_err();
            assert_eq!(err.label(), "bad_payload");
            assert!(
                matches!(&err, NotCarried::Payload { error: PayloadError::NotXmlText(f), .. } if *f == field),
                "{err}"
            );
        }
        let tabs = br#"{"body":"a\tb\nc\r"}"#;
        let ok = mqtt_to_xmpp(&t, "users/bob/outbox/alice@example.org", tabs, Some("bob"));
        assert_eq!(ok.unwrap().body, "a\tb\nc\r");
        let err = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/alice@example.org",
            br#"{"body":"yo","type":"headline"}"#,
            Some("bob"),
        )
        .unwrap_err();
        assert_eq!(err.label(), "kind_not_allowed");
        let err = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/alice@example.org",
            br#"{"body":"yo"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(err.label(), "anonymous");
        assert_eq!(
            mqtt_to_xmpp(&t, "elsewhere", b"x", Some("bob"))
                .unwrap_err()
                .label(),
            "no_rule"
        );
    }

    #[test]
    fn receipts_and_chat_states_go_to_sub_topics() {
        let t = table();
        let mut state = chat(
            "alice@example.org/pc",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            None,
        );
        state.extras.state = Some(ChatState::Composing);
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &state, xml) else {
            panic!()
        };
        assert_eq!(out.topic, "users/bob/inbox/alice@example.org/chatstate");
        assert_eq!(
            (out.qos, out.retain, out.carried),
            (QoS::AtMostOnce, false, Carried::State(ChatState::Composing))
        );
        let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(v["state"], "composing");

        // A receipt comes as type normal from most clients; the chat rule carries it.
        let mut receipt = chat(
            "alice@example.org/pc",
            "bob@mqtt.example.org",
            MessageKind::Normal,
            None,
        );
        receipt.extras.received = Some("m7".into());
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &receipt, xml) else {
            panic!()
        };
        assert_eq!(out.topic, "users/bob/inbox/alice@example.org/receipt");
        assert_eq!(out.carried, Carried::Receipt("m7".into()));

        let mut m = chat(
            "alice@example.org/pc",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            Some("x"),
        );
        m.extras.origin_id = Some("o1".into());
        m.extras.replaces = Some("m0".into());
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &m, xml) else {
            panic!()
        };
        assert_eq!(
            out.user_properties,
            vec![
                ("origin-id", "o1".to_string()),
                ("replaces", "m0".to_string())
            ]
        );
        let plain = chat(
            "alice@example.org/pc",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            Some("x"),
        );
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &plain, xml) else {
            panic!()
        };
        assert!(out.user_properties.is_empty());
    }

    #[test]
    fn a_bounce_goes_to_the_error_sub_topic_with_its_condition() {
        let t = table();
        let mut bounce = chat(
            "nobody@example.org",
            "bob@mqtt.example.org",
            MessageKind::Chat,
            None,
        );
        bounce.id = Some("q-9".into());
        bounce.extras.bounced = Some(Bounce {
            condition: "service-unavailable".into(),
            text: Some("No such user".into()),
        });
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &bounce, xml) else {
            panic!()
        };
        assert_eq!(out.topic, "users/bob/inbox/nobody@example.org/error");
        assert_eq!(
            (out.carried, out.qos, out.retain),
            (Carried::Bounce("q-9".into()), QoS::AtLeastOnce, false)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v": 1, "type": "error", "from": "nobody@example.org",
                "to": "bob@mqtt.example.org", "id": "q-9",
                "condition": "service-unavailable", "text": "No such user"})
        );
        // A receipt keeps its five members; a bounce without text says so with `null`.
        let receipt: serde_json::Value =
            serde_json::from_str(&receipt_json("a@x", "b@y", "m1")).unwrap();
        assert_eq!(
            receipt,
            serde_json::json!({"v": 1, "type": "receipt", "from": "a@x", "to": "b@y", "id": "m1"})
        );
        bounce.extras.bounced = Some(Bounce {
            condition: "item-not-found".into(),
            text: None,
        });
        let FromXmpp::Publish(out) = xmpp_to_mqtt(&t, &bounce, xml) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(
            (&v["condition"], &v["text"]),
            (&"item-not-found".into(), &serde_json::Value::Null)
        );
        assert!(v.as_object().unwrap().contains_key("text"));
        // Without an id there is nothing to name: not carried.
        bounce.id = None;
        assert!(matches!(
            xmpp_to_mqtt(&t, &bounce, xml),
            FromXmpp::Ignore(_)
        ));
    }

    #[test]
    fn chat_states_from_mqtt_are_checked_like_messages() {
        let t = table();
        let topic = "users/bob/outbox/alice@example.org/chatstate";
        let out = mqtt_to_xmpp(&t, topic, br#"{"state":"paused"}"#, Some("bob")).unwrap();
        assert_eq!(
            (out.body.as_str(), out.extras.state),
            ("", Some(ChatState::Paused))
        );
        assert_eq!(out.to, "alice@example.org");
        let err = mqtt_to_xmpp(&t, topic, br#"{"state":"paused"}"#, Some("eve")).unwrap_err();
        assert_eq!(err.label(), "not_your_topic");
        let err = mqtt_to_xmpp(&t, topic, br#"{"state":"typing"}"#, Some("bob")).unwrap_err();
        assert_eq!(err.label(), "bad_payload");
        let err = mqtt_to_xmpp(&t, "users/bob/chatstate", b"x", Some("bob")).unwrap_err();
        assert_eq!(err.label(), "no_rule");
    }

    #[test]
    fn user_properties_fill_what_the_payload_left_out() {
        let t = table();
        let mut out = mqtt_to_xmpp(
            &t,
            "users/bob/outbox/a@example.org",
            br#"{"body":"x","replaces":"p"}"#,
            Some("bob"),
        )
        .unwrap();
        let mut props = Properties::new();
        props.push(Property::UserProperty("origin-id".into(), "o9".into()));
        props.push(Property::UserProperty("replaces".into(), "ignored".into()));
        props.push(Property::UserProperty("delay".into(), "not a date".into()));
        apply_user_properties(&mut out, &props);
        assert_eq!(out.extras.origin_id.as_deref(), Some("o9"));
        assert_eq!(
            out.extras.replaces.as_deref(),
            Some("p"),
            "the payload wins"
        );
        assert_eq!(out.extras.delay, None, "an invalid date is ignored");
    }
}
