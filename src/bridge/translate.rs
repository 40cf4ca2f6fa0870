//! Translation, pure: typed messages plus the mapping table in, typed messages out. No I/O.

use bytes::Bytes;

use super::envelope::{Envelope, PayloadError, parse_json, parse_text};
use crate::broker::codec::QoS;
use crate::mapping::{MappingTable, MessageKind, PayloadFormat, Refusal};

/// A chat message that arrived from XMPP, as the bridge needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundChat {
    /// Sender, full JID as routed by the server (trusted: the server authenticated it).
    pub from: String,
    /// Recipient in the bridge domain.
    pub to: String,
    /// Stanza id.
    pub id: Option<String>,
    /// Message type.
    pub kind: MessageKind,
    /// Text, if any.
    pub body: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Thread.
    pub thread: Option<String>,
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
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

fn domain_of(jid: &str) -> &str {
    let b = bare(jid);
    b.rsplit_once('@').map_or(b, |(_, d)| d)
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
    msg: &InboundChat,
    render_xml: impl FnOnce() -> String,
) -> FromXmpp {
    // Loop guard: what comes from our own domain was sent by this bridge.
    if domain_of(&msg.from).eq_ignore_ascii_case(table.domain()) {
        return FromXmpp::Ignore("sent by the bridge itself");
    }
    let Some(route) = table.to_mqtt(bare(&msg.from), bare(&msg.to), msg.kind) else {
        return if table.covers_jid(bare(&msg.to)) {
            FromXmpp::Ignore("no rule for this sender or message type")
        } else {
            FromXmpp::NoRoute
        };
    };
    let Some(body) = msg.body.as_ref().filter(|b| !b.is_empty()) else {
        return FromXmpp::Ignore("message without body");
    };
    let rule = route.rule;
    let payload = match rule.format {
        PayloadFormat::Text => Bytes::from(body.clone()),
        PayloadFormat::Xml => Bytes::from(render_xml()),
        PayloadFormat::Json => Bytes::from(
            Envelope {
                from: msg.from.clone(),
                to: msg.to.clone(),
                id: msg.id.clone(),
                kind: msg.kind,
                body: body.clone(),
                subject: msg.subject.clone(),
                thread: msg.thread.clone(),
            }
            .to_json(),
        ),
    };
    FromXmpp::Publish(MqttOut {
        rule: rule.name.clone(),
        topic: route.topic,
        qos: qos(rule.qos),
        retain: rule.retain,
        payload,
    })
}

/// MQTT → XMPP for one publish by `user` (the authenticated user name, if any).
pub fn mqtt_to_xmpp(
    table: &MappingTable,
    topic: &str,
    payload: &[u8],
    user: Option<&str>,
) -> Result<XmppOut, NotCarried> {
    let route = table.to_xmpp(topic, user)?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn chat(from: &str, to: &str, kind: MessageKind, body: Option<&str>) -> InboundChat {
        InboundChat {
            from: from.into(),
            to: to.into(),
            id: Some("id1".into()),
            kind,
            body: body.map(str::to_string),
            subject: None,
            thread: None,
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
}
