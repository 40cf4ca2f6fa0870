//! Errors in the `jid`, `peer` and `topic` patterns: line, rule, field and exact message.

use std::path::Path;

use super::{DOMAIN, FILE, errors, render};
use crate::mapping::MappingTable;

/// A rule whose `jid` is the only thing under test (a `const` so cases stay `'static`).
macro_rules! with_jid {
    ($jid:literal) => {
        concat!(
            "[[rule]]\nname = \"r\"\ndirection = \"xmpp-to-mqtt\"\njid = \"",
            $jid,
            "\"\ntopic = \"t\"\n"
        )
    };
}

macro_rules! with_peer {
    ($peer:literal) => {
        concat!(
            "[[rule]]\nname = \"r\"\ndirection = \"xmpp-to-mqtt\"\njid = \"{user}@{domain}\"\n",
            "peer = \"",
            $peer,
            "\"\ntopic = \"t\"\n"
        )
    };
}

macro_rules! with_topic {
    ($topic:literal) => {
        concat!(
            "[[rule]]\nname = \"r\"\ndirection = \"xmpp-to-mqtt\"\njid = \"{user}@{domain}\"\n",
            "topic = \"",
            $topic,
            "\"\n"
        )
    };
}

#[test]
fn jid_errors() {
    let cases: &[(&str, &str)] = &[
        (
            with_jid!("alice"),
            "`alice` must be `localpart@{domain}`, e.g. `{user}@{domain}`",
        ),
        (
            with_jid!("{user}@{domain}/phone"),
            "`{user}@{domain}/phone` has a resource; a bridged JID is a bare JID",
        ),
        (
            with_jid!("{user}@mqtt.example.org"),
            "the domain must be `{domain}` (the bridge domain `mqtt.example.org`), found \
             `mqtt.example.org`",
        ),
        (
            with_jid!("a:b@{domain}"),
            "`a:b` is not a valid JID localpart: localpart doesn’t pass nodeprep validation",
        ),
        (
            with_jid!("user-{id}@{domain}"),
            "a capture must be a whole localpart, found `user-{id}` (write e.g. `{name}` alone)",
        ),
        (
            with_jid!("{domain}@{domain}"),
            "{domain} is the bridge domain; it may only stand as the domain of `jid`, not in \
             `jid`'s localpart",
        ),
        (
            with_jid!("{User}@{domain}"),
            "invalid capture name `User`: names match [a-z_][a-z0-9_]*",
        ),
        (with_jid!("{}@{domain}"), "empty capture `{}`"),
        (with_jid!("{user@{domain}"), "unclosed `{` in `{user`"),
        (with_jid!("us}er@{domain}"), "unmatched `}` in `us}er`"),
        (with_jid!("{{user}}@{domain}"), "nested `{` in `{{user}}`"),
        (with_jid!("@{domain}"), "`@{domain}` has an empty localpart"),
        (
            with_jid!("a@b@{domain}"),
            "`a@b@{domain}` has more than one `@`",
        ),
    ];
    for (toml, message) in cases {
        let got = errors(toml);
        assert_eq!(got.len(), 1, "{toml}: {}", render(&got));
        let e = &got[0];
        assert_eq!(
            (e.line, e.rule.as_deref(), e.field.as_deref()),
            (Some(4), Some("r"), Some("jid"))
        );
        assert_eq!(e.message, *message);
    }
}

#[test]
fn peer_errors() {
    let cases: &[(&str, &str)] = &[
        (
            with_peer!("{peer}/res"),
            "`{peer}/res` has a resource; the peer is a bare JID",
        ),
        (
            with_peer!("bob@exa mple.org"),
            "`exa mple.org` is not a valid JID domain: domain doesn’t pass idna validation",
        ),
        (
            with_peer!("{domain}"),
            "{domain} is the bridge domain; it may only stand as the domain of `jid`, not in `peer`",
        ),
        (
            with_peer!("{nick}@{domain}"),
            "{domain} is the bridge domain; it may only stand as the domain of `jid`, not in `peer`",
        ),
        (
            with_peer!("{a}@{a}"),
            "capture {a} is already used in jid or peer; a capture appears once in jid and peer \
             together",
        ),
        (
            with_peer!("{user}@example.org"),
            "capture {user} is already used in jid or peer; a capture appears once in jid and \
             peer together",
        ),
        (
            with_peer!("a@b@example.org"),
            "`a@b@example.org` has more than one `@`",
        ),
        (
            with_peer!("@example.org"),
            "`@example.org` has an empty localpart",
        ),
        (
            with_peer!("x-{n}@example.org"),
            "a capture must be a whole localpart, found `x-{n}` (write e.g. `{name}` alone)",
        ),
    ];
    for (toml, message) in cases {
        let got = errors(toml);
        assert_eq!(got.len(), 1, "{toml}: {}", render(&got));
        let e = &got[0];
        assert_eq!(
            (e.line, e.rule.as_deref(), e.field.as_deref()),
            (Some(5), Some("r"), Some("peer"))
        );
        assert_eq!(e.message, *message);
    }
}

#[test]
fn topic_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            with_topic!(""),
            &["the topic must not be empty [MQTT-4.7.3-1]"],
        ),
        (
            with_topic!("users/+/inbox"),
            &[
                "level `+`: wildcards `+` and `#` are not allowed in a topic template [MQTT-3.3.2-2]; \
               use a capture such as `{id}` for a whole level",
            ],
        ),
        (
            with_topic!("$SYS/{user}"),
            &["`$SYS`: topics starting with `$` are reserved for the broker"],
        ),
        (
            with_topic!("users/u-{user}"),
            &[
                "a capture must be a whole topic level, found `u-{user}` (write e.g. `{name}` alone)",
            ],
        ),
        (
            with_topic!("{domain}/{user}"),
            &[
                "{domain} is the bridge domain; it may only stand as the domain of `jid`, not in `topic`",
            ],
        ),
        (
            with_topic!("a/{user}/{user}"),
            &["capture {user} appears twice"],
        ),
        (
            with_topic!("a\\u0000b/{user}"),
            &["the topic contains U+0000 [MQTT-4.7.3-2]"],
        ),
        (
            with_topic!("#/{user"),
            &[
                "level `#`: wildcards `+` and `#` are not allowed in a topic template \
                 [MQTT-3.3.2-2]; use a capture such as `{id}` for a whole level",
                "unclosed `{` in `{user`",
            ],
        ),
    ];
    for (toml, messages) in cases {
        let got = errors(toml);
        let got_messages: Vec<&str> = got.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got_messages, *messages, "{toml}");
        for e in &got {
            assert_eq!(
                (e.line, e.rule.as_deref(), e.field.as_deref()),
                (Some(5), Some("r"), Some("topic"))
            );
        }
    }
}

#[test]
fn invalid_bridge_domain() {
    let text = "[[rule]]\nname = \"r\"\ndirection = \"xmpp-to-mqtt\"\njid = \"a@{domain}\"\ntopic = \"t\"\n";
    for domain in ["not a domain", "a@b", "x/y", ""] {
        let got = MappingTable::parse(text, Path::new(FILE), domain)
            .err()
            .unwrap_or_default();
        assert_eq!(got.len(), 1, "{domain:?}: {}", render(&got));
        assert_eq!(got[0].field.as_deref(), Some("domain"));
        assert_eq!(
            got[0].message,
            format!("the bridge domain `{domain}` is not a valid JID domain")
        );
    }
    assert!(MappingTable::parse(text, Path::new(FILE), DOMAIN).is_ok());
}
