//! Errors found across fields and rules: options that do not fit the direction, captures
//! without a value, and ambiguous or duplicate rules.

use super::{Case, check};

#[test]
fn xml_and_retain_from_mqtt() {
    check(&Case {
        what: "xml from MQTT, retain on mqtt-to-xmpp",
        toml: r#"[[rule]]
name = "r"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
format = "xml"
retain = true
"#,
        expect: &[
            (
                Some(6),
                Some("r"),
                Some("format"),
                "format `xml` is not accepted for mqtt-to-xmpp rules: raw stanzas from MQTT \
             clients could forge any stanza; use `text` or `json`",
            ),
            (
                Some(7),
                Some("r"),
                Some("retain"),
                "retain applies only to rules that publish to MQTT (xmpp-to-mqtt, both)",
            ),
        ],
    });
}

#[test]
fn receipts_off_on_xmpp_to_mqtt_and_not_a_boolean() {
    check(&Case {
        what: "receipts = false on xmpp-to-mqtt, receipts = \"no\"",
        toml: r#"[[rule]]
name = "in"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"
receipts = false

[[rule]]
name = "out"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
receipts = "no"
"#,
        expect: &[
            (
                Some(6),
                Some("in"),
                Some("receipts"),
                "receipts applies only to rules from MQTT (mqtt-to-xmpp, both)",
            ),
            (
                Some(13),
                Some("out"),
                Some("receipts"),
                "expected true or false, found string",
            ),
        ],
    });
}

#[test]
fn anonymous_on_xmpp_to_mqtt() {
    check(&Case {
        what: "anonymous on xmpp-to-mqtt",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "news@{domain}"
topic = "news"
anonymous = true
"#,
        expect: &[(
            Some(6),
            Some("r"),
            Some("anonymous"),
            "anonymous applies only to rules from MQTT (mqtt-to-xmpp, both)",
        )],
    });
}

#[test]
fn anonymous_with_user() {
    check(&Case {
        what: "anonymous with {user}",
        toml: r#"[[rule]]
name = "r"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
anonymous = true
"#,
        expect: &[
            (
                Some(6),
                Some("r"),
                Some("anonymous"),
                "an anonymous publisher has no user name, so `jid` must not use {user}",
            ),
            (
                Some(6),
                Some("r"),
                Some("anonymous"),
                "an anonymous publisher has no user name, so `topic` must not use {user}",
            ),
        ],
    });
}

#[test]
fn topic_capture_not_bound() {
    check(&Case {
        what: "xmpp-to-mqtt topic capture not bound",
        toml: r#"[[rule]]
name = "chat-to-app"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
peer = "bob@example.org"
topic = "users/{user}/inbox/{peer}"
"#,
        expect: &[(
            Some(6),
            Some("chat-to-app"),
            Some("topic"),
            "capture {peer} is not bound by jid or peer",
        )],
    });
}

#[test]
fn peer_and_jid_captures_missing_from_topic() {
    check(&Case {
        what: "mqtt-to-xmpp peer and jid captures missing from the topic",
        toml: r#"[[rule]]
name = "r"
direction = "mqtt-to-xmpp"
jid = "{device}@{domain}"
peer = "{peer}"
topic = "devices/out"
"#,
        expect: &[
            (
                Some(4),
                Some("r"),
                Some("jid"),
                "capture {device} is not in topic, so the sender cannot be taken from a \
             publish (only {user}, the MQTT user name, may be missing from topic)",
            ),
            (
                Some(5),
                Some("r"),
                Some("peer"),
                "capture {peer} is not in topic, so the recipient cannot be taken from a \
             publish",
            ),
        ],
    });
}

#[test]
fn both_checked_in_both_directions() {
    check(&Case {
        what: "both: checked in both directions; default peer reported at the header",
        toml: r#"[[rule]]
name = "r"
direction = "both"
jid = "{user}@{domain}"
topic = "users/{user}/{room}"
"#,
        expect: &[
            (
                Some(1),
                Some("r"),
                Some("peer"),
                "capture {peer} is not in topic, so the recipient cannot be taken from a \
             publish",
            ),
            (
                Some(5),
                Some("r"),
                Some("topic"),
                "capture {room} is not bound by jid or peer",
            ),
        ],
    });
}

#[test]
fn ambiguous_xmpp_to_mqtt() {
    check(&Case {
        what: "xmpp-to-mqtt ambiguity",
        toml: r#"[[rule]]
name = "a"
direction = "xmpp-to-mqtt"
jid = "support@{domain}"
topic = "support/{peer}"

[[rule]]
name = "b"
direction = "both"
jid = "{user}@{domain}"
peer = "boss@example.org"
topic = "boss/{user}"
"#,
        expect: &[(
            Some(7),
            Some("b"),
            None,
            "ambiguous with rule `a` (m.toml:1) for xmpp-to-mqtt: both match messages from \
         `boss@example.org` to `support@{domain}` of kind chat, normal and neither is \
         more specific; make one of them more specific or give them different kinds",
        )],
    });
}

#[test]
fn duplicate_xmpp_to_mqtt() {
    check(&Case {
        what: "xmpp-to-mqtt duplicate (capture names do not matter)",
        toml: r#"[[rule]]
name = "a"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "a/{user}"
kinds = ["chat", "headline"]

[[rule]]
name = "b"
direction = "xmpp-to-mqtt"
jid = "{u}@{domain}"
peer = "{p}"
topic = "b/{u}/{p}"
kinds = ["headline"]
"#,
        expect: &[(
            Some(8),
            Some("b"),
            None,
            "duplicate of rule `a` (m.toml:1) for xmpp-to-mqtt: both have the same jid and \
         peer patterns and match messages from `{peer}` to `{user}@{domain}` of kind \
         headline",
        )],
    });
}

#[test]
fn ambiguous_mqtt_to_xmpp() {
    check(&Case {
        what: "mqtt-to-xmpp ambiguity",
        toml: r#"[[rule]]
name = "a"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "ops@example.org"
topic = "a/{x}/c"

[[rule]]
name = "b"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "ops@example.org"
topic = "a/b/{y}"
"#,
        expect: &[(
            Some(8),
            Some("b"),
            None,
            "ambiguous with rule `a` (m.toml:1) for mqtt-to-xmpp: both match topic `a/b/c` \
         and neither is more specific; make one of them more specific",
        )],
    });
}

#[test]
fn duplicate_mqtt_to_xmpp() {
    check(&Case {
        what: "mqtt-to-xmpp duplicate",
        toml: r#"[[rule]]
name = "a"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"

[[rule]]
name = "b"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "{to}"
topic = "users/{user}/outbox/{to}"
"#,
        expect: &[(
            Some(7),
            Some("b"),
            None,
            "duplicate of rule `a` (m.toml:1) for mqtt-to-xmpp: both have the topic \
         `users/{user}/outbox/{peer}`",
        )],
    });
}
