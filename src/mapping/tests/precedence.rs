//! Precedence between matching rules, filters, `covers_jid`, normalization and `describe`.

use super::lookup::CHAT;
use super::table;
use crate::mapping::{MappingTable, MessageKind};

use MessageKind::{Chat, Headline};

/// Rules listed widest first, so the order in the file cannot be what picks the winner.
const PRECEDENCE: &str = r#"
[[rule]]
name = "any"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"

[[rule]]
name = "support"
direction = "xmpp-to-mqtt"
jid = "support@{domain}"
topic = "support/{peer}"

[[rule]]
name = "support-staff"
direction = "xmpp-to-mqtt"
jid = "support@{domain}"
peer = "{nick}@example.org"
topic = "support/staff/{nick}"

[[rule]]
name = "device"
direction = "mqtt-to-xmpp"
jid = "{device}@{domain}"
peer = "ops@example.org"
topic = "devices/{device}/{channel}"

[[rule]]
name = "device-events"
direction = "mqtt-to-xmpp"
jid = "{device}@{domain}"
peer = "events@example.org"
topic = "devices/{device}/events"

[[rule]]
name = "gateway-events"
direction = "mqtt-to-xmpp"
jid = "gateway@{domain}"
peer = "gw@example.org"
topic = "devices/gateway/events"
"#;

#[test]
fn more_specific_rule_wins() {
    let t = table(PRECEDENCE);
    let support = "support@mqtt.example.org";
    let xmpp: &[(&str, &str, &str, &str)] = &[
        (
            "bob@example.org",
            support,
            "support-staff",
            "support/staff/bob",
        ),
        ("bob@other.org", support, "support", "support/bob@other.org"),
        ("example.org", support, "support", "support/example.org"),
        (
            "bob@example.org",
            "carol@mqtt.example.org",
            "any",
            "users/carol/inbox/bob@example.org",
        ),
    ];
    for (from, to, rule, topic) in xmpp {
        let got = t
            .to_mqtt(from, to, Chat)
            .map(|m| (m.rule.name.clone(), m.topic));
        assert_eq!(
            got,
            Some((rule.to_string(), topic.to_string())),
            "{from} -> {to}"
        );
    }
    let mqtt: &[(&str, &str, &str, &str)] = &[
        (
            "devices/gateway/events",
            "gateway-events",
            "gateway@mqtt.example.org",
            "gw@example.org",
        ),
        (
            "devices/lamp/events",
            "device-events",
            "lamp@mqtt.example.org",
            "events@example.org",
        ),
        (
            "devices/lamp/power",
            "device",
            "lamp@mqtt.example.org",
            "ops@example.org",
        ),
        (
            "devices/gateway/power",
            "device",
            "gateway@mqtt.example.org",
            "ops@example.org",
        ),
    ];
    for (topic, rule, from, to) in mqtt {
        let got = t
            .to_xmpp(topic, Some("u"))
            .map(|x| (x.rule.name.clone(), x.from, x.to));
        assert_eq!(
            got,
            Ok((rule.to_string(), from.to_string(), to.to_string())),
            "{topic}"
        );
    }
}

#[test]
fn same_patterns_with_disjoint_kinds_are_not_ambiguous() {
    let t = table(
        r#"
[[rule]]
name = "chat"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/chat"
kinds = ["chat"]

[[rule]]
name = "alerts"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/alerts"
kinds = ["headline"]
retain = true
"#,
    );
    let alice = "alice@mqtt.example.org";
    let got = t
        .to_mqtt("bob@example.org", alice, Headline)
        .map(|m| (m.rule.retain, m.topic));
    assert_eq!(got, Some((true, "users/alice/alerts".to_string())));
    let got = t.to_mqtt("bob@example.org", alice, Chat).map(|m| m.topic);
    assert_eq!(got.as_deref(), Some("users/alice/chat"));
}

#[test]
fn filters_cover_mqtt_rules_once() {
    let t = table(PRECEDENCE);
    assert_eq!(t.mqtt_filters(), ["devices/+/+"]);
    let t = table(CHAT);
    assert_eq!(
        t.mqtt_filters(),
        ["alerts/+", "rooms/+/+", "users/+/outbox/+"]
    );
    let t = table(
        r#"
[[rule]]
name = "a"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "x@example.org"
topic = "a/{x}/c"

[[rule]]
name = "b"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "x@example.org"
topic = "a/b/c"

[[rule]]
name = "c"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "x@example.org"
topic = "a/b/{y}/d"
"#,
    );
    assert_eq!(t.mqtt_filters(), ["a/+/c", "a/b/+/d"]);
}

#[test]
fn covers_jid() {
    let t = table(
        r#"
[[rule]]
name = "news"
direction = "xmpp-to-mqtt"
jid = "news@{domain}"
topic = "broadcast/news"
kinds = ["headline"]

[[rule]]
name = "alerts"
direction = "mqtt-to-xmpp"
jid = "Alerts@{domain}"
peer = "ops@example.org"
topic = "alerts"
"#,
    );
    let cases = [
        ("news@mqtt.example.org", true),
        ("alerts@mqtt.example.org", true),
        ("Alerts@mqtt.example.org", false),
        ("bob@mqtt.example.org", false),
        ("news@example.org", false),
        ("mqtt.example.org", false),
        ("news@mqtt.example.org/res", false),
        ("", false),
    ];
    for (jid, covered) in cases {
        assert_eq!(t.covers_jid(jid), covered, "{jid}");
    }
    assert!(table(CHAT).covers_jid("anyone@mqtt.example.org"));
}

#[test]
fn literal_parts_are_normalized() {
    let t = table(
        r#"
[[rule]]
name = "r"
direction = "both"
jid = "Desk@{domain}"
peer = "Boss@Example.ORG"
topic = "desk"
"#,
    );
    let got = t
        .to_mqtt("boss@example.org", "desk@mqtt.example.org", Chat)
        .map(|m| m.topic);
    assert_eq!(got.as_deref(), Some("desk"));
    let got = t.to_xmpp("desk", Some("anyone")).map(|x| (x.from, x.to));
    assert_eq!(
        got,
        Ok(("desk@mqtt.example.org".into(), "boss@example.org".into()))
    );
    // The operator's text is kept for display.
    assert_eq!(t.rules()[0].jid_pattern(), "Desk@{domain}");
}

#[test]
fn bridge_domain_is_normalized() {
    let text = "[[rule]]\nname = \"r\"\ndirection = \"xmpp-to-mqtt\"\njid = \"{user}@{domain}\"\n\
                topic = \"u/{user}\"\n";
    let t = MappingTable::parse(text, std::path::Path::new("m.toml"), "MQTT.Example.org.");
    let t = t.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(t.domain(), "mqtt.example.org");
    let got = t
        .to_mqtt("bob@example.org", "alice@mqtt.example.org", Chat)
        .map(|m| m.topic);
    assert_eq!(got.as_deref(), Some("u/alice"));
}

#[test]
fn describe_lists_every_rule() {
    let text = table(CHAT).describe();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("NAME    DIRECTION     JID"), "{text}");
    for (line, fields) in lines[1..].iter().zip([
        [
            "inbox",
            "xmpp-to-mqtt",
            "{user}@{domain}",
            "users/{user}/inbox/{peer}",
            "chat,normal",
            "m.toml:2",
        ],
        [
            "outbox",
            "mqtt-to-xmpp",
            "{peer}",
            "users/{user}/outbox/{peer}",
            "chat",
            "m.toml:8",
        ],
        [
            "rooms",
            "both",
            "{room}@conference.example.org",
            "rooms/{room}/{user}",
            "groupchat",
            "m.toml:15",
        ],
        [
            "alerts",
            "mqtt-to-xmpp",
            "ops@example.org",
            "alerts/{severity}",
            "anonymous",
            "m.toml:25",
        ],
    ]) {
        for field in fields {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
}

#[test]
fn table_is_shareable() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<MappingTable>();
    shareable::<std::sync::Arc<MappingTable>>();
}

#[test]
fn no_fallback_to_a_wider_rule_after_a_refusal() {
    let t = table(
        r#"
[[rule]]
name = "alerts"
direction = "mqtt-to-xmpp"
jid = "alerts@{domain}"
peer = "ops@example.org"
topic = "alerts/{severity}"
anonymous = true

[[rule]]
name = "critical"
direction = "mqtt-to-xmpp"
jid = "alerts@{domain}"
peer = "oncall@example.org"
topic = "alerts/critical"
"#,
    );
    let to = |topic, user| t.to_xmpp(topic, user).map(|x| (x.rule.name.clone(), x.to));
    assert_eq!(
        to("alerts/low", None),
        Ok(("alerts".into(), "ops@example.org".into()))
    );
    assert_eq!(
        to("alerts/critical", Some("bob")),
        Ok(("critical".into(), "oncall@example.org".into()))
    );
    assert_eq!(
        to("alerts/critical", None),
        Err(crate::mapping::Refusal::Anonymous {
            rule: "critical".into()
        })
    );
}
