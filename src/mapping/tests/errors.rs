//! One case per kind of load error: file, line, rule, field and the exact message.

use super::{Case, Expect, check, errors, render};

const NO_RULES: Expect = (None, None, None, "no mapping rules in m.toml");

#[test]
fn toml_syntax_error_has_its_line() {
    let got = errors("[[rule]]\nname = \"r\nkinds = []\n");
    assert_eq!(got.len(), 1, "{}", render(&got));
    assert_eq!(got[0].line, Some(2));
    assert_eq!(
        (got[0].rule.as_deref(), got[0].field.as_deref()),
        (None, None)
    );
    assert!(
        got[0].message.starts_with("TOML syntax error: "),
        "{}",
        got[0]
    );
}

#[test]
fn typo_in_rule_header() {
    check(&Case {
        what: "typo in [[rule]]",
        toml: "[[rules]]\nname = \"r\"\n",
        expect: &[
            (
                Some(1),
                None,
                None,
                "unknown top-level key `rules` (did you mean `[[rule]]`?)",
            ),
            NO_RULES,
        ],
    });
}

#[test]
fn unknown_top_level_key() {
    check(&Case {
        what: "unrelated top-level key",
        toml: "title = \"x\"\n",
        expect: &[
            (
                Some(1),
                None,
                None,
                "unknown top-level key `title` (a mapping file holds only `[[rule]]` tables)",
            ),
            NO_RULES,
        ],
    });
}

#[test]
fn rule_as_single_table() {
    check(&Case {
        what: "single table",
        toml: "[rule]\nname = \"r\"\n",
        expect: &[
            (
                Some(1),
                None,
                None,
                "`[rule]` is a single table; write `[[rule]]` before each rule",
            ),
            NO_RULES,
        ],
    });
}

#[test]
fn rule_as_string() {
    check(&Case {
        what: "rule as a string",
        toml: "rule = \"x\"\n",
        expect: &[
            (
                Some(1),
                None,
                None,
                "`rule` must be `[[rule]]` tables, found string",
            ),
            NO_RULES,
        ],
    });
}

#[test]
fn file_without_rules() {
    check(&Case {
        what: "empty file",
        toml: "# nothing yet\n",
        expect: &[NO_RULES],
    });
}

#[test]
fn unknown_field_with_hint() {
    check(&Case {
        what: "unknown field with a hint",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
topc = "x"
"#,
        expect: &[(
            Some(6),
            Some("r"),
            Some("topc"),
            "unknown field `topc` (did you mean `topic`?)",
        )],
    });
}

#[test]
fn unknown_field_lists_known_fields() {
    check(&Case {
        what: "unknown field without a close name",
        toml: r#"[[rule]]
name = "r"
colour = "red"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
"#,
        expect: &[(
            Some(3),
            Some("r"),
            Some("colour"),
            "unknown field `colour` (known fields: name, direction, jid, peer, topic, kinds, \
         qos, format, retain, anonymous, receipts)",
        )],
    });
}

#[test]
fn missing_fields_at_rule_header() {
    check(&Case {
        what: "missing fields are reported at the rule header",
        toml: "# chat\n\n[[rule]]\nname = \"r\"\n",
        expect: &[
            (
                Some(3),
                Some("r"),
                Some("direction"),
                "missing required field `direction`",
            ),
            (
                Some(3),
                Some("r"),
                Some("jid"),
                "missing required field `jid`",
            ),
            (
                Some(3),
                Some("r"),
                Some("topic"),
                "missing required field `topic`",
            ),
        ],
    });
}

#[test]
fn missing_name() {
    check(&Case {
        what: "missing name",
        toml: r#"[[rule]]
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
"#,
        expect: &[(Some(1), None, Some("name"), "missing required field `name`")],
    });
}

#[test]
fn wrong_value_types() {
    check(&Case {
        what: "wrong types",
        toml: r#"[[rule]]
name = 7
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
retain = "yes"
"#,
        expect: &[
            (
                Some(2),
                None,
                Some("name"),
                "expected a string, found integer",
            ),
            (
                Some(6),
                None,
                Some("retain"),
                "expected true or false, found string",
            ),
        ],
    });
}

#[test]
fn invalid_rule_name() {
    check(&Case {
        what: "invalid rule name",
        toml: r#"[[rule]]
name = "Chat In"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
"#,
        expect: &[(
            Some(2),
            Some("Chat In"),
            Some("name"),
            "`Chat In` is not a valid rule name: names match [a-z0-9][a-z0-9_-]*",
        )],
    });
}

#[test]
fn duplicate_rule_name() {
    check(&Case {
        what: "duplicate rule name",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "a@{domain}"
topic = "a"

[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "b@{domain}"
topic = "b"
"#,
        expect: &[(
            Some(8),
            Some("r"),
            Some("name"),
            "rule name `r` is already used at m.toml:1",
        )],
    });
}

#[test]
fn unknown_direction() {
    check(&Case {
        what: "unknown direction",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp_to_mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
"#,
        expect: &[(
            Some(3),
            Some("r"),
            Some("direction"),
            "unknown direction `xmpp_to_mqtt` (did you mean `xmpp-to-mqtt`?)",
        )],
    });
}

#[test]
fn bad_kinds_qos_format_values() {
    check(&Case {
        what: "kinds, qos and format values",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
kinds = ["chat", "sms", "chat", "headlin"]
qos = 3
format = "yaml"
"#,
        expect: &[
            (
                Some(6),
                Some("r"),
                Some("kinds"),
                "unknown message kind `sms` (expected one of chat, normal, headline, groupchat)",
            ),
            (
                Some(6),
                Some("r"),
                Some("kinds"),
                "kind `chat` is listed twice",
            ),
            (
                Some(6),
                Some("r"),
                Some("kinds"),
                "unknown message kind `headlin` (did you mean `headline`?)",
            ),
            (
                Some(7),
                Some("r"),
                Some("qos"),
                "qos must be 0, 1 or 2, found 3",
            ),
            (
                Some(8),
                Some("r"),
                Some("format"),
                "unknown format `yaml` (expected one of text, json, xml)",
            ),
        ],
    });
}

#[test]
fn kinds_empty_or_not_array() {
    check(&Case {
        what: "kinds empty or not an array, qos not an integer",
        toml: r#"[[rule]]
name = "r"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
kinds = []
qos = "1"

[[rule]]
name = "s"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}"
kinds = "chat"
"#,
        expect: &[
            (
                Some(6),
                Some("r"),
                Some("kinds"),
                "list at least one kind (chat, normal, headline, groupchat)",
            ),
            (
                Some(7),
                Some("r"),
                Some("qos"),
                "expected 0, 1 or 2, found string",
            ),
            (
                Some(14),
                Some("s"),
                Some("kinds"),
                "expected an array of kinds, found string",
            ),
        ],
    });
}
