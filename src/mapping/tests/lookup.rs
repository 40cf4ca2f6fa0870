//! Lookups both ways: matching, escaping, identity, anonymous publishers, precedence, filters.

use super::table;
use crate::mapping::{Direction, MessageKind, PayloadFormat, Refusal};

use MessageKind::{Chat, Groupchat, Headline, Normal};

pub(super) const CHAT: &str = r#"
[[rule]]
name = "inbox"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"

[[rule]]
name = "outbox"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
kinds = ["chat"]

[[rule]]
name = "rooms"
direction = "both"
jid = "{user}@{domain}"
peer = "{room}@conference.example.org"
topic = "rooms/{room}/{user}"
kinds = ["groupchat"]
qos = 2
format = "text"

[[rule]]
name = "alerts"
direction = "mqtt-to-xmpp"
jid = "alerts@{domain}"
peer = "ops@example.org"
topic = "alerts/{severity}"
kinds = ["headline"]
anonymous = true
"#;

#[test]
fn rules_keep_their_options() {
    let t = table(CHAT);
    let names: Vec<&str> = t.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["inbox", "outbox", "rooms", "alerts"]);
    let inbox = &t.rules()[0];
    assert_eq!(inbox.direction, Direction::XmppToMqtt);
    assert_eq!(
        (inbox.kinds.as_slice(), inbox.qos, inbox.format),
        (&[Chat, Normal][..], 1, PayloadFormat::Json)
    );
    assert_eq!(
        (inbox.retain, inbox.anonymous, inbox.line),
        (false, false, 2)
    );
    assert_eq!(inbox.peer_pattern(), "{peer}");
    let rooms = &t.rules()[2];
    assert_eq!(
        (rooms.direction, rooms.qos, rooms.format),
        (Direction::Both, 2, PayloadFormat::Text)
    );
    assert_eq!(rooms.topic_template(), "rooms/{room}/{user}");
    assert!(t.rules()[3].anonymous);
    assert_eq!(t.domain(), "mqtt.example.org");
}

#[test]
fn xmpp_to_mqtt() {
    let t = table(CHAT);
    let alice = "alice@mqtt.example.org";
    type Case<'a> = (&'a str, &'a str, MessageKind, Option<(&'a str, &'a str)>);
    let cases: &[Case<'_>] = &[
        (
            "bob@example.org",
            alice,
            Chat,
            Some(("inbox", "users/alice/inbox/bob@example.org")),
        ),
        (
            "bob@example.org",
            alice,
            Normal,
            Some(("inbox", "users/alice/inbox/bob@example.org")),
        ),
        ("bob@example.org", alice, Headline, None),
        (
            "lobby@conference.example.org",
            alice,
            Groupchat,
            Some(("rooms", "rooms/lobby/alice")),
        ),
        ("bob@example.org", alice, Groupchat, None),
        (
            "example.org",
            alice,
            Chat,
            Some(("inbox", "users/alice/inbox/example.org")),
        ),
        // Escaping of JID characters that cannot stand in a topic level.
        (
            "a+b#c@example.org",
            alice,
            Chat,
            Some(("inbox", "users/alice/inbox/a%2Bb%23c@example.org")),
        ),
        (
            "$x@example.org",
            alice,
            Chat,
            Some(("inbox", "users/alice/inbox/%24x@example.org")),
        ),
        (
            "100%@example.org",
            alice,
            Chat,
            Some(("inbox", "users/alice/inbox/100%25@example.org")),
        ),
        (
            "bob@example.org",
            "$svc@mqtt.example.org",
            Chat,
            Some(("inbox", "users/%24svc/inbox/bob@example.org")),
        ),
        // Unicode JIDs pass through unchanged.
        (
            "jürgen@münchen.example",
            "zoë@mqtt.example.org",
            Chat,
            Some(("inbox", "users/zoë/inbox/jürgen@münchen.example")),
        ),
        (
            "李@例え.jp",
            "李@mqtt.example.org",
            Normal,
            Some(("inbox", "users/李/inbox/李@例え.jp")),
        ),
        // Not for the bridge, or not bare JIDs.
        ("bob@example.org", "alice@example.org", Chat, None),
        ("bob@example.org", "mqtt.example.org", Chat, None),
        (
            "bob@example.org",
            "alice@mqtt.example.org/phone",
            Chat,
            None,
        ),
        ("bob@example.org/phone", alice, Chat, None),
        ("", alice, Chat, None),
        ("@example.org", alice, Chat, None),
        ("a@@example.org", alice, Chat, None),
        ("bob@example.org", "@mqtt.example.org", Chat, None),
    ];
    for (from, to, kind, expect) in cases {
        let got = t
            .to_mqtt(from, to, *kind)
            .map(|m| (m.rule.name.as_str(), m.topic));
        let expect = expect.map(|(rule, topic)| (rule, topic.to_string()));
        assert_eq!(got, expect, "{from} -> {to} ({kind})");
    }
}

#[test]
fn mqtt_to_xmpp() {
    let t = table(CHAT);
    let ok =
        |rule: &str, from: &str, to: &str| Ok((rule.to_string(), from.to_string(), to.to_string()));
    let alice = Some("alice");
    type Expect = Result<(String, String, String), Refusal>;
    let cases: Vec<(&str, Option<&str>, Expect)> = vec![
        (
            "users/alice/outbox/bob@example.org",
            alice,
            ok("outbox", "alice@mqtt.example.org", "bob@example.org"),
        ),
        // The recipient is normalized; the sender must already be.
        (
            "users/alice/outbox/Bob@Example.ORG",
            alice,
            ok("outbox", "alice@mqtt.example.org", "bob@example.org"),
        ),
        (
            "users/alice/outbox/a%2Bb%23c@example.org",
            alice,
            ok("outbox", "alice@mqtt.example.org", "a+b#c@example.org"),
        ),
        (
            "users/alice/outbox/%24x@example.org",
            alice,
            ok("outbox", "alice@mqtt.example.org", "$x@example.org"),
        ),
        (
            "users/alice/outbox/example.org",
            alice,
            ok("outbox", "alice@mqtt.example.org", "example.org"),
        ),
        (
            "users/zoë/outbox/JÜRGEN@münchen.example",
            Some("zoë"),
            ok("outbox", "zoë@mqtt.example.org", "jürgen@münchen.example"),
        ),
        (
            "rooms/lobby/alice",
            alice,
            ok(
                "rooms",
                "alice@mqtt.example.org",
                "lobby@conference.example.org",
            ),
        ),
        (
            "alerts/high",
            None,
            ok("alerts", "alerts@mqtt.example.org", "ops@example.org"),
        ),
        (
            "alerts/high",
            Some("anyone"),
            ok("alerts", "alerts@mqtt.example.org", "ops@example.org"),
        ),
        // Identity: the {user} level must be the publisher.
        (
            "users/bob/outbox/carol@example.org",
            alice,
            Err(Refusal::NotYourTopic {
                user: "alice".into(),
                topic_user: "bob".into(),
                rule: "outbox".into(),
            }),
        ),
        (
            "rooms/lobby/bob",
            alice,
            Err(Refusal::NotYourTopic {
                user: "alice".into(),
                topic_user: "bob".into(),
                rule: "rooms".into(),
            }),
        ),
        (
            "users/alice/outbox/bob@example.org",
            None,
            Err(Refusal::Anonymous {
                rule: "outbox".into(),
            }),
        ),
        (
            "rooms/lobby/alice",
            None,
            Err(Refusal::Anonymous {
                rule: "rooms".into(),
            }),
        ),
        // A user name that is no valid or no normalized localpart cannot speak.
        (
            "users/Alice/outbox/bob@example.org",
            Some("Alice"),
            Err(Refusal::InvalidJid {
                jid: "Alice@mqtt.example.org".into(),
                rule: "outbox".into(),
            }),
        ),
        (
            "users/a%2Fb/outbox/bob@example.org",
            Some("a/b"),
            Err(Refusal::InvalidJid {
                jid: "a/b@mqtt.example.org".into(),
                rule: "outbox".into(),
            }),
        ),
        // Invalid recipients.
        (
            "users/alice/outbox/bob@example.org%2Fphone",
            alice,
            Err(Refusal::InvalidJid {
                jid: "bob@example.org/phone".into(),
                rule: "outbox".into(),
            }),
        ),
        (
            "users/alice/outbox/a@b@example.org",
            alice,
            Err(Refusal::InvalidJid {
                jid: "a@b@example.org".into(),
                rule: "outbox".into(),
            }),
        ),
        (
            "users/alice/outbox/a:b@example.org",
            alice,
            Err(Refusal::InvalidJid {
                jid: "a:b@example.org".into(),
                rule: "outbox".into(),
            }),
        ),
        (
            "users/alice/outbox/bob%2fx",
            alice,
            Err(Refusal::BadEscape {
                level: "bob%2fx".into(),
            }),
        ),
        (
            "users/alice/outbox/%41",
            alice,
            Err(Refusal::BadEscape {
                level: "%41".into(),
            }),
        ),
        (
            "users/alice%/outbox/x@y",
            alice,
            Err(Refusal::BadEscape {
                level: "alice%".into(),
            }),
        ),
        // No rule.
        ("users/alice/outbox/", alice, Err(Refusal::NoRule)),
        ("users/alice/outbox", alice, Err(Refusal::NoRule)),
        (
            "users/alice/outbox/bob@example.org/x",
            alice,
            Err(Refusal::NoRule),
        ),
        (
            "users/alice/inbox/bob@example.org",
            alice,
            Err(Refusal::NoRule),
        ),
        ("", alice, Err(Refusal::NoRule)),
    ];
    for (topic, user, expect) in cases {
        let got = t
            .to_xmpp(topic, user)
            .map(|x| (x.rule.name.clone(), x.from, x.to));
        assert_eq!(got, expect, "{topic} by {user:?}");
    }
}

#[test]
fn refusals_read_well() {
    let r = Refusal::NotYourTopic {
        user: "alice".into(),
        topic_user: "bob".into(),
        rule: "outbox".into(),
    };
    assert_eq!(
        r.to_string(),
        "user `alice` may not publish on the topic of user `bob` (rule `outbox`)"
    );
    let r = Refusal::BadEscape {
        level: "a%zz".into(),
    };
    assert_eq!(r.to_string(), "malformed escape in topic level `a%zz`");
}

#[test]
fn escaping_round_trips_through_both_directions() {
    let t = table(CHAT);
    let peers = [
        "bob@example.org",
        "a+b#c@example.org",
        "$x@example.org",
        "100%@example.org",
        "%24@example.org",
        "jürgen@münchen.example",
        "example.org",
        "ünïcødé@例え.jp",
    ];
    for peer in peers {
        let out = t
            .to_mqtt(peer, "alice@mqtt.example.org", Chat)
            .map(|m| m.topic);
        let topic = out.unwrap_or_default().replacen("/inbox/", "/outbox/", 1);
        let back = t.to_xmpp(&topic, Some("alice")).map(|x| x.to);
        assert_eq!(back.as_deref(), Ok(peer), "{peer} via {topic}");
    }
}

/// A domain with a final dot (`example.org.`) names the same domain as `example.org`
/// (RFC 7622 §3.2): it gets the same topic, and a topic spelled with the dot reaches the same
/// JID, so one JID never has two topics and both directions agree.
#[test]
fn final_dot_of_a_domain_is_dropped() {
    let t = table(CHAT);
    for (from, to, topic) in [
        (
            "bob@example.org.",
            "alice@mqtt.example.org",
            "users/alice/inbox/bob@example.org",
        ),
        (
            "example.",
            "alice@mqtt.example.org",
            "users/alice/inbox/example",
        ),
        (
            "bob@example.org",
            "alice@mqtt.example.org.",
            "users/alice/inbox/bob@example.org",
        ),
        (
            "lobby@conference.example.org.",
            "alice@mqtt.example.org",
            "rooms/lobby/alice",
        ),
    ] {
        let kind = if topic.starts_with("rooms/") {
            Groupchat
        } else {
            Chat
        };
        let got = t.to_mqtt(from, to, kind);
        assert_eq!(
            got.map(|m| m.topic),
            Some(topic.to_string()),
            "{from} -> {to}"
        );
    }
    // Nothing but a dot, or more than one, is no domain.
    for from in [".", "bob@.", "bob@example.org..", "example.."] {
        assert_eq!(
            t.to_mqtt(from, "alice@mqtt.example.org", Chat)
                .map(|m| m.topic),
            None,
            "{from}"
        );
    }
    for (topic, to) in [
        ("users/alice/outbox/bob@example.org.", "bob@example.org"),
        ("users/alice/outbox/example.", "example"),
        ("users/alice/outbox/Bob@Example.ORG.", "bob@example.org"),
    ] {
        let got = t.to_xmpp(topic, Some("alice")).map(|m| m.to);
        assert_eq!(got, Ok(to.to_string()), "{topic}");
    }
    for topic in [
        "users/alice/outbox/bob@.",
        "users/alice/outbox/bob@example.org..",
    ] {
        assert!(
            matches!(
                t.to_xmpp(topic, Some("alice")),
                Err(Refusal::InvalidJid { .. })
            ),
            "{topic}: {:?}",
            t.to_xmpp(topic, Some("alice")).map(|m| m.to)
        );
    }
}

#[test]
fn byte_splits_match_the_char_splits() {
    use crate::mapping::{contains_byte, rsplit_once_byte, split_once_byte};
    for s in [
        "",
        "@",
        "a@b",
        "a@b@c",
        "ä@ö/r/ü",
        "/",
        "plain",
        "x@y.org/res@with/slash",
    ] {
        for b in [b'@', b'/', b'%'] {
            let c = char::from(b);
            assert_eq!(split_once_byte(s, b), s.split_once(c), "{s} {c}");
            assert_eq!(rsplit_once_byte(s, b), s.rsplit_once(c), "{s} {c}");
            assert_eq!(contains_byte(s, b), s.contains(c), "{s} {c}");
        }
    }
}

#[test]
fn topic_levels_match_split() {
    use crate::mapping::topic_levels;
    for t in [
        "",
        "/",
        "a",
        "a/b",
        "a//b",
        "/a/",
        "users/bob/outbox/ä@ö",
        "a/b/",
    ] {
        let ours: Vec<&str> = topic_levels(t).collect();
        let std: Vec<&str> = t.split('/').collect();
        assert_eq!(ours, std, "{t:?}");
    }
}
