//! Loading directories: file order, errors across files, empty and missing directories, and
//! the shipped `mappings/` examples.

use std::path::{Path, PathBuf};

use super::{DOMAIN, render};
use crate::mapping::{MappingError, MappingTable, MessageKind, PayloadFormat, Refusal};

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<MappingTable, Vec<MappingError>> {
    MappingTable::load_dir(dir, DOMAIN)
}

const A: &str = r#"[[rule]]
name = "a"
direction = "xmpp-to-mqtt"
jid = "support@{domain}"
topic = "support/{peer}"
"#;

const B: &str = r#"# second file

[[rule]]
name = "b"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
peer = "boss@example.org"
topic = "boss/{user}"
"#;

#[test]
fn reads_toml_files_in_name_order() {
    let c = A.replace("\"a\"", "\"c\"").replace("support", "help");
    let dir = dir_with(&[
        ("20-c.toml", &c),
        ("10-a.toml", A),
        ("notes.txt", "ignored"),
        ("x.toml.bak", "ignored"),
    ]);
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    let t = load(dir.path()).unwrap_or_else(|e| panic!("{}", render(&e)));
    let got: Vec<(&str, PathBuf, usize)> = t
        .rules()
        .iter()
        .map(|r| (r.name.as_str(), r.file.clone(), r.line))
        .collect();
    assert_eq!(
        got,
        [
            ("a", dir.path().join("10-a.toml"), 1),
            ("c", dir.path().join("20-c.toml"), 1)
        ]
    );
}

#[test]
fn ambiguity_across_files_names_both_files_and_lines() {
    let dir = dir_with(&[("a.toml", A), ("b.toml", B)]);
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    let e = &errors[0];
    assert_eq!(
        (e.file.clone(), e.line, e.rule.as_deref()),
        (dir.path().join("b.toml"), Some(3), Some("b"))
    );
    let expected = format!(
        "ambiguous with rule `a` ({}:1) for xmpp-to-mqtt: both match messages from \
         `boss@example.org` to `support@{{domain}}` of kind chat, normal and neither is more \
         specific; make one of them more specific or give them different kinds",
        dir.path().join("a.toml").display()
    );
    assert_eq!(e.message, expected);
}

#[test]
fn duplicate_names_across_files() {
    let b = B
        .replace("\"b\"", "\"a\"")
        .replace("boss@example.org", "boss@other.example");
    let dir = dir_with(&[("a.toml", A), ("b.toml", &b)]);
    let errors = load(dir.path()).unwrap_err();
    let got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let first = dir.path().join("a.toml");
    let second = dir.path().join("b.toml");
    assert_eq!(
        got,
        [format!(
            "{}:4: rule `a`: name: rule name `a` is already used at {}:1",
            second.display(),
            first.display()
        )]
    );
}

#[test]
fn every_problem_of_every_file_is_reported() {
    let dir = dir_with(&[
        ("1.toml", "[[rule]\n"),
        ("2.toml", &A.replace("topic = ", "topc = \"x\"\ntopic = ")),
        ("3.toml", &B.replace("boss/{user}", "boss/+")),
    ]);
    let errors = load(dir.path()).unwrap_err();
    let got: Vec<(String, Option<usize>, Option<&str>)> = errors
        .iter()
        .map(|e| {
            let file = e
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            (file, e.line, e.field.as_deref())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("1.toml".to_string(), Some(1), None),
            ("2.toml".to_string(), Some(5), Some("topc")),
            ("3.toml".to_string(), Some(8), Some("topic")),
        ],
        "{}",
        render(&errors)
    );
}

#[test]
fn no_rules_is_an_error() {
    let empty = dir_with(&[]);
    let only_comments = dir_with(&[("a.toml", "# nothing\n"), ("readme.md", "x")]);
    let missing = empty.path().join("missing");
    for dir in [empty.path(), only_comments.path()] {
        let errors = load(dir).unwrap_err();
        assert_eq!(errors.len(), 1, "{}", render(&errors));
        assert_eq!((errors[0].file.as_path(), errors[0].line), (dir, None));
        assert_eq!(
            errors[0].message,
            format!("no mapping rules in {}", dir.display())
        );
    }
    let errors = load(&missing).unwrap_err();
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(errors[0].file, missing);
    let prefix = format!(
        "no mapping rules in {} (cannot read it: ",
        missing.display()
    );
    assert!(errors[0].message.starts_with(&prefix), "{}", errors[0]);
}

/// The shipped examples load and do what their comments say.
#[test]
fn shipped_mappings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let t = load(&dir).unwrap_or_else(|e| panic!("{}", render(&e)));
    let names: Vec<&str> = t.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["news", "chat-inbox", "chat-outbox"]);

    let m = t.to_mqtt(
        "bob@example.org",
        "alice@mqtt.example.org",
        MessageKind::Chat,
    );
    let m = m.map(|m| (m.rule.name.as_str(), m.rule.qos, m.rule.format, m.topic));
    let inbox = "users/alice/inbox/bob@example.org".to_string();
    assert_eq!(m, Some(("chat-inbox", 1, PayloadFormat::Json, inbox)));

    let m = t.to_mqtt(
        "announce@example.org",
        "news@mqtt.example.org",
        MessageKind::Headline,
    );
    let m = m.map(|m| (m.rule.name.as_str(), m.rule.qos, m.rule.format, m.topic));
    assert_eq!(
        m,
        Some(("news", 0, PayloadFormat::Text, "broadcast/news".to_string()))
    );

    // A chat message to news@ is not a headline: chat-inbox carries it.
    let m = t.to_mqtt(
        "bob@example.org",
        "news@mqtt.example.org",
        MessageKind::Chat,
    );
    assert_eq!(
        m.map(|m| m.topic).as_deref(),
        Some("users/news/inbox/bob@example.org")
    );

    let x = t.to_xmpp("users/alice/outbox/bob@example.org", Some("alice"));
    let x = x.map(|x| (x.rule.name.as_str(), x.rule.kinds.clone(), x.from, x.to));
    let expected = (
        "chat-outbox",
        vec![MessageKind::Chat],
        "alice@mqtt.example.org".into(),
        "bob@example.org".into(),
    );
    assert_eq!(x, Ok(expected));
    let refused = t
        .to_xmpp("users/alice/outbox/bob@example.org", Some("mallory"))
        .map(|x| x.from);
    assert!(
        matches!(refused, Err(Refusal::NotYourTopic { .. })),
        "{refused:?}"
    );
    assert_eq!(
        t.to_xmpp("broadcast/news", Some("alice")).map(|x| x.from),
        Err(Refusal::NoRule)
    );

    assert_eq!(t.mqtt_filters(), ["users/+/outbox/+"]);
    assert!(t.covers_jid("alice@mqtt.example.org"));
    assert!(!t.covers_jid("alice@example.org"));
}
