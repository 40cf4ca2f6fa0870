//! Group chat end to end: a real Prosody with its MUC component, slixmpp occupants,
//! paho-mqtt (MQTT 5 and 3.1.1) occupants through the bridge, a room rule.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::TestBroker;
use common::paho::{Paho, PahoOptions};
use common::prosody::{Prosody, XmppClient};
use serde_json::{Value, json};
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::audit::{AuditConfig, query};
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

const ROOM: &str = "lobby@conference.localhost";
const ROOM_TOPIC: &str = "rooms/lobby";

const ROOM_RULE: &str = r#"
[[rule]]
name = "rooms"
direction = "both"
jid = "{user}@{domain}"
peer = "{room}@conference.localhost"
topic = "rooms/{room}"
kinds = ["groupchat"]
qos = 1
format = "json"
"#;

/// The bridge with the shipped rules plus a room rule; its audit trail in `dir/audit`.
async fn start_bridge(prosody: &Prosody, dir: &Path) -> TestBroker {
    let mappings = dir.join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    for f in ["chat.toml", "broadcast.toml"] {
        std::fs::copy(shipped.join(f), mappings.join(f)).unwrap();
    }
    std::fs::write(mappings.join("rooms.toml"), ROOM_RULE).unwrap();
    let users = dir.join("users");
    for user in ["alice", "bob", "carol"] {
        xmpp_mqtt_bridge::broker::auth::set_user(&users, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let mut xmpp = XmppConfig::new(
        prosody.component_addr(),
        prosody.component(),
        prosody.secret(),
    );
    xmpp.ping_interval = Duration::from_millis(500);
    xmpp.read_timeout = Duration::from_secs(3);
    xmpp.reconnect_min = Duration::from_millis(100);
    xmpp.reconnect_max = Duration::from_millis(500);
    let table = MappingTable::load_dir(&mappings, prosody.component()).unwrap();
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        mqtt: xmpp_mqtt_bridge::config::MqttMode::Embedded,
        broker: BrokerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            sys_interval: None,
            password_file: Some(users),
            ..BrokerConfig::default()
        },
        bridge: Some(BridgeSettings {
            xmpp,
            mapping_dir: mappings,
            mapping: Arc::new(table),
        }),
        audit: Some(AuditConfig::new(dir.join("audit"))),
        admin: None,
        presence: None,
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    let broker = TestBroker {
        addr: app.mqtt_addrs[0],
        app,
    };
    let mut link = broker.app.xmpp.as_ref().unwrap().subscribe_state();
    let linked = tokio::time::timeout(common::WAIT, async {
        while !matches!(
            *link.borrow_and_update(),
            xmpp_mqtt_bridge::xmpp::LinkState::Connected
        ) {
            if link.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(linked.is_ok(), "the component link never came up");
    broker
}

async fn mqtt_user(broker: &TestBroker, user: &str, version: &str) -> Paho {
    Paho::connect(PahoOptions {
        port: broker.port(),
        client_id: &format!("{user}-app"),
        user: Some(user),
        version,
        keepalive: 60,
        will: None,
        session_expiry: 0,
    })
    .await
}

/// Joins the room from XMPP and waits for the self-presence.
async fn xmpp_join(client: &mut XmppClient, nick: &str) {
    client
        .send_raw(&format!(
            "<presence to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>\
             <history maxstanzas='0'/></x></presence>"
        ))
        .await;
    let me = format!("{ROOM}/{nick}");
    let p = client
        .wait_for(|e| e["event"] == "presence" && e["from"] == me.as_str())
        .await;
    if p["type"] != "available" {
        let e = client.wait_for(|e| e["event"] == "error").await;
        panic!("{nick} could not join: {p} {e}");
    }
}

/// Waits until `client` sees `nick` in the room.
async fn sees_occupant(client: &mut XmppClient, nick: &str) {
    let who = format!("{ROOM}/{nick}");
    client
        .wait_for(|e| {
            e["event"] == "presence" && e["from"] == who.as_str() && e["type"] == "available"
        })
        .await;
}

/// Groupchat bodies an XMPP occupant got within `quiet` of silence.
async fn xmpp_bodies(client: &mut XmppClient, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, client.next_event_quiet()).await {
        if e["event"] == "message" && e["type"] == "groupchat" {
            out.push(e["body"].as_str().unwrap().to_owned());
        }
    }
    out.sort();
    out
}

/// Room-topic bodies an MQTT occupant got within `quiet` of silence.
async fn mqtt_bodies(client: &mut Paho, quiet: Duration) -> Vec<String> {
    let mut out: Vec<String> = client
        .messages_for(quiet)
        .await
        .into_iter()
        .filter(|m| m["topic"] == ROOM_TOPIC)
        .map(|m| {
            let v: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
            v["body"].as_str().unwrap().to_owned()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_xmpp_and_two_mqtt_occupants_each_see_every_message_once() {
    let prosody = Prosody::start();
    prosody.register("dave", "davepw");
    let dir = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, dir.path()).await;

    // bob (MQTT 5) joins first: the join creates the room, the bridge unlocks it.
    let mut bob = mqtt_user(&broker, "bob", "5").await;
    bob.subscribe("users/bob/errors").await;
    assert_eq!(bob.subscribe(ROOM_TOPIC).await, vec![1]);
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    xmpp_join(&mut alice, "alice").await;
    let mut carol = mqtt_user(&broker, "carol", "311").await;
    carol.subscribe(ROOM_TOPIC).await;
    let mut dave = XmppClient::connect(&prosody, "dave").await;
    xmpp_join(&mut dave, "dave").await;
    // (dave got the occupants' presence before his own; alice saw carol come in.)
    sees_occupant(&mut alice, "carol").await;

    alice
        .command(json!({"cmd": "message", "to": ROOM, "type": "groupchat", "body": "from alice", "id": "a1"}))
        .await;
    dave.command(
        json!({"cmd": "message", "to": ROOM, "type": "groupchat", "body": "from dave", "id": "d1"}),
    )
    .await;
    bob.publish(ROOM_TOPIC, r#"{"body":"from bob"}"#, false)
        .await;
    carol
        .publish(ROOM_TOPIC, r#"{"body":"from carol"}"#, false)
        .await;

    let all = vec!["from alice", "from bob", "from carol", "from dave"];
    let quiet = Duration::from_millis(1500);
    assert_eq!(xmpp_bodies(&mut alice, quiet).await, all, "alice");
    assert_eq!(xmpp_bodies(&mut dave, quiet).await, all, "dave");
    assert_eq!(mqtt_bodies(&mut bob, quiet).await, all, "bob");
    assert_eq!(mqtt_bodies(&mut carol, quiet).await, all, "carol");

    // bob leaves and joins again: the room's history is not published as new messages.
    bob.unsubscribe(ROOM_TOPIC).await;
    let gone = format!("{ROOM}/bob");
    alice
        .wait_for(|e| {
            e["event"] == "presence" && e["from"] == gone.as_str() && e["type"] == "unavailable"
        })
        .await;
    bob.subscribe(ROOM_TOPIC).await;
    sees_occupant(&mut alice, "bob").await;
    assert_eq!(
        mqtt_bodies(&mut carol, quiet).await,
        Vec::<String>::new(),
        "no history"
    );
    assert_eq!(
        mqtt_bodies(&mut bob, Duration::from_millis(100)).await,
        Vec::<String>::new()
    );

    // carol disconnects: she leaves the room.
    carol.disconnect().await;
    let gone = format!("{ROOM}/carol");
    alice
        .wait_for(|e| {
            e["event"] == "presence" && e["from"] == gone.as_str() && e["type"] == "unavailable"
        })
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nick_conflict_is_reported_on_the_error_topic() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, dir.path()).await;
    // An XMPP user holds the nick "bob" already; alice unlocks the room she created.
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    xmpp_join(&mut alice, "bob").await;
    alice
        .send_raw(&format!(
            "<iq type='set' id='cfg1' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
        .await;

    let mut bob = mqtt_user(&broker, "bob", "5").await;
    bob.subscribe("users/bob/errors").await;
    bob.subscribe(ROOM_TOPIC).await;
    let err = bob
        .wait_for(|e| e["event"] == "message" && e["topic"] == "users/bob/errors")
        .await;
    let v: Value = serde_json::from_str(err["payload"].as_str().unwrap()).unwrap();
    assert_eq!(v["condition"], "conflict", "{v}");
    assert_eq!(v["room"], ROOM);
    assert_eq!(v["nick"], "bob");
    assert_eq!(err["retain"], false);

    // A message to the room while not an occupant: the room's refusal arrives there too.
    bob.publish(ROOM_TOPIC, r#"{"body":"let me in"}"#, false)
        .await;
    let err = bob
        .wait_for(|e| e["event"] == "message" && e["topic"] == "users/bob/errors")
        .await;
    let v: Value = serde_json::from_str(err["payload"].as_str().unwrap()).unwrap();
    assert!(
        v["condition"].as_str().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    eprintln!("message while not an occupant: {v}");

    // Nobody but the bridge may publish on an error topic.
    assert_eq!(bob.publish("users/bob/errors", "{}", false).await, 0x87);
    broker.stop().await;

    // Both room errors are in the audit trail, denied with their condition.
    let denied: Vec<_> = query::read_all(&dir.path().join("audit"))
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.kind == "record" && l.reason.as_deref() == Some("room_error"))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0].outcome.as_deref(), Some("denied"));
    assert!(
        denied[0].detail.as_deref().unwrap().starts_with("conflict"),
        "{denied:?}"
    );
    assert!(
        denied[1]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("not-acceptable")
    );
}
