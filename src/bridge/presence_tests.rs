use std::path::Path;

use super::*;
use crate::broker::codec::ProtocolVersion;

const RULES: &str = r#"
[[rule]]
name = "inbox"
direction = "both"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"
"#;

fn table() -> MappingTable {
    MappingTable::parse(RULES, Path::new("t.toml"), "mqtt.example.org").unwrap()
}

fn book() -> PresenceBook {
    let topic = LevelPattern::parse("presence/{jid}", "jid").unwrap();
    PresenceBook::new("mqtt.example.org", topic, Subscribers::default())
}

fn jid(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

fn connected(id: &str) -> SessionEvent {
    SessionEvent::Connected {
        client_id: id.into(),
        username: Some("bob".into()),
        protocol: ProtocolVersion::V311,
    }
}

fn gone(id: &str, why: Departure, will_delayed: bool) -> SessionEvent {
    SessionEvent::Disconnected {
        client_id: id.into(),
        username: Some("bob".into()),
        why,
        will_delayed,
    }
}

fn sent(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(String::from(&xmpp_parsers::minidom::Element::from(
                (**p).clone(),
            ))),
            _ => None,
        })
        .collect()
}

fn from_alice(type_: Type) -> Presence {
    Presence::new(type_)
        .with_from(jid("alice@example.org/phone"))
        .with_to(jid("bob@mqtt.example.org"))
}

#[test]
fn level_patterns() {
    let p = LevelPattern::parse("users/{user}/status", "user").unwrap();
    assert_eq!(p.render("bob"), "users/bob/status");
    assert_eq!(p.render("a/b"), "users/a%2Fb/status");
    assert_eq!(p.filter(), "users/+/status");
    assert_eq!(p.capture("users/a%2Fb/status").as_deref(), Some("a/b"));
    assert_eq!(p.capture("users/bob/status/x"), None);
    assert_eq!(p.capture("users/bob/state"), None);
    for bad in [
        "users/status",
        "users/{user}/{user}",
        "a/+/{user}",
        "x/{user}{user}",
        "{u}/{user}",
    ] {
        assert!(LevelPattern::parse(bad, "user").is_err(), "{bad}");
    }
}

#[test]
fn status_payloads() {
    assert_eq!(Status::parse(b"").unwrap(), Status::default());
    let s = Status::parse(br#"{"show":"dnd","status":"On a call"}"#).unwrap();
    assert_eq!(
        (s.state, s.text.as_deref()),
        (Some(State::Dnd), Some("On a call"))
    );
    assert_eq!(
        Status::parse(br#"{"show":"available"}"#).unwrap().state,
        None
    );
    for bad in [&br#"{"show":"busy"}"#[..], b"not json", br#"{"from":"x"}"#] {
        assert!(
            Status::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn subscribe_is_approved_saved_answered_and_reciprocated() {
    let (t, mut b) = (table(), book());
    let actions = b.on_xmpp(&t, &from_alice(Type::Subscribe));
    assert_eq!(actions[0], Action::Save);
    let xml = sent(&actions);
    assert_eq!(xml.len(), 3, "{xml:?}");
    assert!(xml[0].contains("type=\"subscribed\"") || xml[0].contains("type='subscribed'"));
    assert!(xml[1].contains("unavailable"), "bob is offline: {}", xml[1]);
    assert!(xml[2].contains("subscribe"), "{}", xml[2]);
    assert!(
        b.subscribers
            .contains("bob@mqtt.example.org", "alice@example.org")
    );
    // Again: nothing new to save.
    let again = b.on_xmpp(&t, &from_alice(Type::Subscribe));
    assert!(!again.contains(&Action::Save));
    assert_eq!(
        sent(&again).len(),
        2,
        "no subscribe back for a known subscriber"
    );
    // Probe from a subscriber: current presence; from a stranger: unsubscribed.
    let probe = sent(&b.on_xmpp(&t, &from_alice(Type::Probe)));
    assert!(probe[0].contains("unavailable"), "{probe:?}");
    let stranger = Presence::probe()
        .with_from(jid("mallory@example.org"))
        .with_to(jid("bob@mqtt.example.org"));
    let answer = sent(&b.on_xmpp(&t, &stranger));
    assert!(answer[0].contains("unsubscribed"), "{answer:?}");
    // Unsubscribe: removed, saved, confirmed.
    let actions = b.on_xmpp(&t, &from_alice(Type::Unsubscribe));
    assert_eq!(actions[0], Action::Save);
    assert!(
        !b.subscribers
            .contains("bob@mqtt.example.org", "alice@example.org")
    );
}

#[test]
fn subscribing_to_an_address_no_rule_covers_is_denied() {
    let (t, mut b) = (table(), book());
    let p = Presence::subscribe()
        .with_from(jid("alice@example.org"))
        .with_to(jid("mqtt.example.org"));
    let xml = sent(&b.on_xmpp(&t, &p));
    assert_eq!(xml.len(), 1);
    assert!(xml[0].contains("unsubscribed"), "{xml:?}");
    assert!(b.subscribers.0.is_empty());
}

#[test]
fn connection_state_becomes_presence_for_subscribers_only_on_change() {
    let (t, mut b) = (table(), book());
    b.on_xmpp(&t, &from_alice(Type::Subscribe));
    let on = sent(&b.on_session(&t, &connected("phone")));
    assert_eq!(on.len(), 1);
    assert!(!on[0].contains("type="), "available: {}", on[0]);
    assert!(on[0].contains("to=\"alice@example.org\"") || on[0].contains("to='alice@example.org'"));
    // A second client: no change. Taken over: no change.
    assert!(b.on_session(&t, &connected("laptop")).is_empty());
    assert!(
        b.on_session(&t, &gone("laptop", Departure::TakenOver, false))
            .is_empty()
    );
    assert!(
        b.on_session(&t, &gone("laptop", Departure::Normal, false))
            .is_empty()
    );
    // Status while online: sent at once, with show and text.
    let st = Status::parse(br#"{"show":"away","status":"Lunch"}"#).unwrap();
    let xml = sent(&b.on_status(&t, "bob", st.clone(), true));
    assert!(
        xml[0].contains("<show>away</show>") && xml[0].contains("Lunch"),
        "{xml:?}"
    );
    assert!(
        b.on_status(&t, "bob", st, true).is_empty(),
        "same status: nothing"
    );
    // Keep-alive timeout of the last client: unavailable.
    let off = sent(&b.on_session(&t, &gone("phone", Departure::KeepAliveTimeout, false)));
    assert!(off[0].contains("unavailable"), "{off:?}");
}

#[test]
fn upstream_the_status_topic_decides_who_is_online() {
    let (t, mut b) = (table(), book());
    b.online_from_status = true;
    b.on_xmpp(&t, &from_alice(Type::Subscribe));
    let status = |json: &[u8]| Status::parse(json).unwrap();
    // A retained status on connect: available, with its show.
    let on = sent(&b.on_status(&t, "bob", status(br#"{"show":"dnd"}"#), true));
    assert_eq!(on.len(), 1, "{on:?}");
    assert!(
        !on[0].contains("unavailable") && on[0].contains("<show>dnd</show>"),
        "{on:?}"
    );
    // The will: unavailable.
    let off = sent(&b.on_status(&t, "bob", status(br#"{"show":"unavailable"}"#), true));
    assert!(off[0].contains("unavailable"), "{off:?}");
    // Plain available, then the retained status cleared: available, then unavailable.
    let on = sent(&b.on_status(&t, "bob", status(b"{}"), true));
    assert!(!on[0].contains("unavailable"), "{on:?}");
    let off = sent(&b.on_status(&t, "bob", status(b""), false));
    assert!(off[0].contains("unavailable"), "{off:?}");
    assert!(
        b.on_status(&t, "bob", status(b""), false).is_empty(),
        "still offline: nothing"
    );
}

#[test]
fn declared_unavailable_while_connected_is_offline() {
    let (t, mut b) = (table(), book());
    b.on_xmpp(&t, &from_alice(Type::Subscribe));
    assert_eq!(b.on_session(&t, &connected("phone")).len(), 1);
    let st = Status::parse(br#"{"show":"unavailable"}"#).unwrap();
    let off = sent(&b.on_status(&t, "bob", st, true));
    assert!(off[0].contains("unavailable"), "{off:?}");
}

#[test]
fn a_delayed_will_keeps_the_user_available_until_it_fires() {
    let (t, mut b) = (table(), book());
    b.on_xmpp(&t, &from_alice(Type::Subscribe));
    b.on_session(&t, &connected("phone"));
    assert!(
        b.on_session(&t, &gone("phone", Departure::ConnectionLost, true))
            .is_empty()
    );
    let will = SessionEvent::WillPublished {
        client_id: "phone".into(),
        username: Some("bob".into()),
        topic: "users/bob/will".into(),
    };
    let off = sent(&b.on_session(&t, &will));
    assert!(off[0].contains("unavailable"), "{off:?}");
}

#[test]
fn anonymous_and_unmapped_users_have_no_presence() {
    let (t, mut b) = (table(), book());
    let anon = SessionEvent::Connected {
        client_id: "x".into(),
        username: None,
        protocol: ProtocolVersion::V5,
    };
    assert!(b.on_session(&t, &anon).is_empty());
    assert!(b.jid_of(&t, "Bob").is_none(), "not a normalized localpart");
    assert!(b.jid_of(&t, "a b").is_none(), "not a valid localpart");
    assert!(b.jid_of(&t, "bob").is_some());
}

#[test]
fn legacy_presence_is_aggregated_per_bare_jid_and_published_on_change() {
    let (t, mut b) = (table(), book());
    let payload = |a: &[Action]| match &a[0] {
        Action::Publish { topic, payload } => {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            (
                topic.clone(),
                v["state"].as_str().unwrap().to_owned(),
                v["status"].clone(),
            )
        }
        other => panic!("{other:?}"),
    };
    // The first unavailable is published (a stale retained message may be there).
    let a = b.on_xmpp(&t, &from_alice(Type::Unavailable));
    assert_eq!(payload(&a).1, "unavailable");
    let mut away = from_alice(Type::None).with_show(Show::Away);
    away.set_status("", "brb");
    let a = b.on_xmpp(&t, &away);
    let (topic, state, status) = payload(&a);
    assert_eq!(
        (topic.as_str(), state.as_str()),
        ("presence/alice@example.org", "away")
    );
    assert_eq!(status, "brb");
    assert!(b.on_xmpp(&t, &away).is_empty(), "no change, no publish");
    // A second resource with higher priority wins.
    let desk = Presence::available()
        .with_from(jid("alice@example.org/desk"))
        .with_to(jid("bob@mqtt.example.org"))
        .with_priority(5);
    assert_eq!(payload(&b.on_xmpp(&t, &desk)).1, "available");
    let desk_gone = Presence::unavailable()
        .with_from(jid("alice@example.org/desk"))
        .with_to(jid("bob@mqtt.example.org"));
    assert_eq!(payload(&b.on_xmpp(&t, &desk_gone)).1, "away");
    assert_eq!(
        payload(&b.on_xmpp(&t, &from_alice(Type::Unavailable))).1,
        "unavailable"
    );
}

#[test]
fn startup_says_offline_and_probes_every_subscriber() {
    let (t, mut b) = (table(), book());
    b.on_xmpp(&t, &from_alice(Type::Subscribe));
    let xml = sent(&b.startup());
    assert_eq!(xml.len(), 2);
    assert!(
        xml[0].contains("unavailable") && xml[0].contains("alice@example.org"),
        "{xml:?}"
    );
    assert!(
        xml[1].contains("probe") && xml[1].contains("alice@example.org"),
        "{xml:?}"
    );
}
