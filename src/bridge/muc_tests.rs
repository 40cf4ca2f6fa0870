use std::path::Path;

use super::*;
use xmpp_parsers::message::{Lang, MessageType};

const RULES: &str = r#"
[[rule]]
name = "rooms"
direction = "both"
jid = "{user}@{domain}"
peer = "{room}@conference.example.org"
topic = "rooms/{room}"
kinds = ["groupchat"]

[[rule]]
name = "inbox"
direction = "both"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"
"#;

fn table() -> MappingTable {
    MappingTable::parse(RULES, Path::new("t.toml"), "mqtt.example.org").unwrap()
}

fn sub(user: &str, client: &str, filter: &str) -> SessionEvent {
    SessionEvent::Subscribed {
        client_id: client.into(),
        username: Some(user.into()),
        filters: vec![filter.into()],
    }
}

fn xml(a: &RoomAction) -> String {
    match a {
        RoomAction::Presence(p) => String::from(&Element::from((**p).clone())),
        RoomAction::Iq(iq) => String::from(&Element::from((**iq).clone())),
        RoomAction::Error(e) => format!("{e:?}"),
    }
}

fn jid(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

fn self_presence(user: &str, codes: &[u16]) -> Presence {
    let status: String = codes
        .iter()
        .map(|c| format!("<status code='{c}'/>"))
        .collect();
    let x: Element = format!(
        "<x xmlns='http://jabber.org/protocol/muc#user'>\
         <item affiliation='none' role='participant'/>{status}</x>"
    )
    .parse()
    .unwrap();
    Presence::available()
        .with_from(jid(&format!("lobby@conference.example.org/{user}")))
        .with_to(jid(&format!("{user}@mqtt.example.org")))
        .with_payloads(vec![x])
}

fn groupchat(nick: &str, to_user: &str) -> Message {
    let mut m = Message::new_with_type(
        MessageType::Groupchat,
        Some(jid(&format!("{to_user}@mqtt.example.org"))),
    );
    m.from = Some(jid(&format!("lobby@conference.example.org/{nick}")));
    m.bodies.insert(Lang::new(), "hi".into());
    m
}

#[test]
fn subscribing_to_a_room_topic_joins_once_per_user_without_history() {
    let (t, mut r) = (table(), Rooms::new("mqtt.example.org"));
    let a = r.on_session(&t, &sub("bob", "phone", "rooms/lobby"));
    assert_eq!(a.len(), 1);
    let join = xml(&a[0]);
    assert!(join.contains("lobby@conference.example.org/bob"), "{join}");
    assert!(
        join.contains("maxstanzas=\"0\"") || join.contains("maxstanzas='0'"),
        "{join}"
    );
    assert!(
        join.contains("from=\"bob@mqtt.example.org\"")
            || join.contains("from='bob@mqtt.example.org'")
    );
    // A second client of bob: no second join. Wildcards and chat topics join nothing.
    assert!(
        r.on_session(&t, &sub("bob", "laptop", "rooms/lobby"))
            .is_empty()
    );
    assert!(r.on_session(&t, &sub("bob", "phone", "rooms/+")).is_empty());
    assert!(
        r.on_session(&t, &sub("bob", "phone", "users/bob/inbox/x@y"))
            .is_empty()
    );
    // Leaving: only when the last client goes.
    let unsub = SessionEvent::Unsubscribed {
        client_id: "laptop".into(),
        username: Some("bob".into()),
        filters: vec!["rooms/lobby".into()],
    };
    assert!(r.on_session(&t, &unsub).is_empty());
    let gone = SessionEvent::Disconnected {
        client_id: "phone".into(),
        username: Some("bob".into()),
        why: Departure::ConnectionLost,
        will_delayed: false,
    };
    let a = r.on_session(&t, &gone);
    assert_eq!(a.len(), 1);
    assert!(xml(&a[0]).contains("unavailable"), "{}", xml(&a[0]));
    assert!(r.rooms.is_empty() && r.clients.is_empty());
}

#[test]
fn anonymous_clients_join_nothing() {
    let (t, mut r) = (table(), Rooms::new("mqtt.example.org"));
    let anon = SessionEvent::Subscribed {
        client_id: "x".into(),
        username: None,
        filters: vec!["rooms/lobby".into()],
    };
    assert!(r.on_session(&t, &anon).is_empty());
}

#[test]
fn one_copy_no_echo_no_history() {
    let (t, mut r) = (table(), Rooms::new("mqtt.example.org"));
    r.on_session(&t, &sub("bob", "b", "rooms/lobby"));
    r.on_session(&t, &sub("carol", "c", "rooms/lobby"));
    r.on_presence(&self_presence("bob", &[110])).unwrap();
    r.on_presence(&self_presence("carol", &[110])).unwrap();
    // alice (XMPP) speaks: one copy each to bob and carol; bob's is carried.
    assert_eq!(r.verdict(&groupchat("alice", "bob")), Verdict::Publish);
    assert!(matches!(
        r.verdict(&groupchat("alice", "carol")),
        Verdict::Skip(_)
    ));
    // bob's own message comes back from the room: never carried.
    assert!(matches!(
        r.verdict(&groupchat("bob", "bob")),
        Verdict::Skip(_)
    ));
    assert!(matches!(
        r.verdict(&groupchat("bob", "carol")),
        Verdict::Skip(_)
    ));
    // History (delayed) is not carried.
    let mut old = groupchat("alice", "bob");
    old.payloads.push(
        "<delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>"
            .parse()
            .unwrap(),
    );
    assert_eq!(r.verdict(&old), Verdict::Skip("room history"));
    // Another room: not ours to decide.
    let mut other = groupchat("alice", "bob");
    other.from = Some(jid("hall@conference.example.org/alice"));
    assert_eq!(r.verdict(&other), Verdict::NotARoom);
}

#[test]
fn a_created_room_is_configured_and_errors_are_reported() {
    let (t, mut r) = (table(), Rooms::new("mqtt.example.org"));
    r.on_session(&t, &sub("bob", "b", "rooms/lobby"));
    let a = r.on_presence(&self_presence("bob", &[110, 201])).unwrap();
    assert_eq!(a.len(), 1);
    let iq = xml(&a[0]);
    assert!(iq.contains("muc#owner") && iq.contains("submit"), "{iq}");
    // Someone else's presence: consumed, nothing to do.
    let mut alice = self_presence("alice", &[]);
    alice.to = Some(jid("bob@mqtt.example.org"));
    assert_eq!(r.on_presence(&alice), Some(vec![]));
    let err: Element = "<error xmlns='jabber:component:accept' type='cancel'>\
        <conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
        <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Nickname in use</text></error>"
        .parse()
        .unwrap();
    let p = Presence::new(Type::Error)
        .with_from(jid("lobby@conference.example.org/bob"))
        .with_to(jid("bob@mqtt.example.org"))
        .with_payloads(vec![err]);
    let a = r.on_presence(&p).unwrap();
    match &a[0] {
        RoomAction::Error(e) => {
            assert_eq!(
                (e.condition.as_str(), e.topic.as_str()),
                ("conflict", "users/bob/errors")
            );
            assert_eq!(e.text.as_deref(), Some("Nickname in use"));
            let v: serde_json::Value = serde_json::from_slice(&e.payload()).unwrap();
            assert_eq!(v["room"], "lobby@conference.example.org");
        }
        other => panic!("{other:?}"),
    }
    // A presence from a room nobody bridged is in: not ours.
    let mut stray = self_presence("bob", &[110]);
    stray.from = Some(jid("hall@conference.example.org/bob"));
    assert_eq!(r.on_presence(&stray), None);
}
