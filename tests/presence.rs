//! Presence end to end: a real Prosody, slixmpp contacts, paho-mqtt clients (MQTT 5 and
//! 3.1.1) killed, frozen and disconnected, the shipped mapping rules, `[presence]` on.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestBroker;
use common::paho::{Paho, PahoOptions};
use common::prosody::{Prosody, XmppClient};
use rumqttc::QoS;
use serde_json::{Value, json};
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::bridge::presence::{LevelPattern, PresenceConfig};
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

const BOB: &str = "bob@mqtt.localhost";

fn shipped_mappings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

/// The bridge with presence on, its subscriber file in `state`.
async fn start_bridge(prosody: &Prosody, state: &Path) -> TestBroker {
    let users = state.join("users");
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
    let table = MappingTable::load_dir(&shipped_mappings(), prosody.component()).unwrap();
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
            mapping_dir: shipped_mappings(),
            mapping: Arc::new(table),
        }),
        audit: None,
        admin: None,
        presence: Some(PresenceConfig {
            status_topic: LevelPattern::parse("users/{user}/status", "user").unwrap(),
            legacy_topic: LevelPattern::parse("presence/{jid}", "jid").unwrap(),
            file: state.join("presence/subscribers.json"),
        }),
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

fn paho<'a>(broker: &TestBroker, id: &'a str, version: &'a str, keepalive: u16) -> PahoOptions<'a> {
    PahoOptions {
        port: broker.port(),
        client_id: id,
        user: Some("bob"),
        version,
        keepalive,
        will: None,
        session_expiry: 0,
    }
}

/// Lets what is in flight arrive and passes over it (no chat message may be among it).
async fn settle(alice: &mut XmppClient) {
    alice.expect_no_message(Duration::from_millis(400)).await;
}

/// The next presence of `type_` alice gets from bob's bridged JID (others passed over).
async fn bob_is(alice: &mut XmppClient, type_: &str) -> Value {
    alice
        .wait_for(|e| {
            e["event"] == "presence"
                && e["type"] == type_
                && e["from"].as_str().is_some_and(|f| f.starts_with(BOB))
        })
        .await
}

/// The next presence alice gets from bob's bridged JID.
async fn presence_from_bob(alice: &mut XmppClient) -> Value {
    alice
        .wait_for(|e| {
            e["event"] == "presence" && e["from"].as_str().is_some_and(|f| f.starts_with(BOB))
        })
        .await
}

/// Alice subscribes to bob's bridged JID; the bridge approves (Prosody turns the approval
/// into a roster push, not a presence to the client), tells her bob's state, and asks for
/// her presence back. Returns bob's state.
async fn alice_subscribes(alice: &mut XmppClient) -> Value {
    alice
        .command(json!({"cmd": "presence", "to": BOB, "type": "subscribe"}))
        .await;
    let state = presence_from_bob(alice).await;
    let back = presence_from_bob(alice).await;
    assert_eq!(
        back["type"], "subscribe",
        "the bridge asks for hers: {back}"
    );
    settle(alice).await;
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_connections_are_presence_for_xmpp_contacts() {
    let prosody = Prosody::start();
    let state = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, state.path()).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let first = alice_subscribes(&mut alice).await;
    assert_eq!(first["type"], "unavailable", "bob is offline: {first}");

    // MQTT 5 client connects: available.
    let mut phone = Paho::connect(paho(&broker, "bob-phone", "5", 60)).await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "available", "{p}");
    // Nobody may set another user's status: PUBACK 0x87 Not authorized.
    let code = phone
        .publish("users/carol/status", r#"{"show":"away"}"#, true)
        .await;
    assert_eq!(code, 0x87);
    // A status that is not one is logged and ignored; presence stays as it was.
    phone
        .publish("users/bob/status", r#"{"show":"busy"}"#, false)
        .await;

    // A second client (3.1.1) of the same user: no new presence; its status topic sets show.
    let mut laptop = Paho::connect(paho(&broker, "bob-laptop", "311", 60)).await;
    laptop
        .publish(
            "users/bob/status",
            r#"{"show":"dnd","status":"In a meeting"}"#,
            true,
        )
        .await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(
        (p["type"].as_str(), p["show"].as_str(), p["status"].as_str()),
        (Some("dnd"), Some("dnd"), Some("In a meeting")),
        "{p}"
    );

    // The phone is killed (socket closed, no DISCONNECT): the laptop still holds bob online.
    phone.kill9().await;
    // Clean DISCONNECT of the last client: unavailable.
    laptop.disconnect().await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "unavailable", "{p}");
    alice.expect_no_message(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_frozen_mqtt_clients_become_unavailable() {
    let prosody = Prosody::start();
    let state = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, state.path()).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    alice_subscribes(&mut alice).await;

    // kill -9: the broker sees the socket close; unavailable at once.
    let phone = Paho::connect(paho(&broker, "bob-phone", "311", 60)).await;
    assert_eq!(presence_from_bob(&mut alice).await["type"], "available");
    let killed = Instant::now();
    phone.kill9().await;
    assert_eq!(presence_from_bob(&mut alice).await["type"], "unavailable");
    eprintln!("kill -9 -> unavailable: {:?}", killed.elapsed());

    // Frozen (SIGSTOP): the socket stays open; the keep-alive (2 s, so 3 s) ends it.
    let tablet = Paho::connect(paho(&broker, "bob-tablet", "5", 2)).await;
    assert_eq!(presence_from_bob(&mut alice).await["type"], "available");
    let frozen = Instant::now();
    tablet.freeze();
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "unavailable", "{p}");
    let took = frozen.elapsed();
    eprintln!("frozen -> unavailable: {took:?}");
    assert!(
        took >= Duration::from_millis(2500),
        "before the keep-alive ran out: {took:?}"
    );

    // MQTT 5 will with a 2 s Will Delay: killed, still available until the will fires.
    let mut opts = paho(&broker, "bob-watch", "5", 60);
    opts.will = Some(("users/bob/will", "gone", 2));
    // The session outlives the connection, or the will would go with it at once.
    opts.session_expiry = 60;
    let watch = Paho::connect(opts).await;
    assert_eq!(presence_from_bob(&mut alice).await["type"], "available");
    let killed = Instant::now();
    watch.kill9().await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "unavailable", "{p}");
    let took = killed.elapsed();
    eprintln!("kill -9 with Will Delay 2 s -> unavailable: {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "before the will fired: {took:?}"
    );
    drop(tablet);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_restart_and_probes_are_answered() {
    let prosody = Prosody::start();
    let state = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, state.path()).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    alice_subscribes(&mut alice).await;
    broker.stop().await;
    let saved = std::fs::read_to_string(state.path().join("presence/subscribers.json")).unwrap();
    assert!(saved.contains("alice@localhost"), "{saved}");

    // A new bridge reads the subscriber file: at start it tells alice bob is offline (nobody
    // is connected yet), then bob's client connects.
    let broker = start_bridge(&prosody, state.path()).await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "unavailable", "{p}");
    settle(&mut alice).await;
    let phone = Paho::connect(paho(&broker, "bob-phone", "311", 60)).await;
    let p = presence_from_bob(&mut alice).await;
    assert_eq!(p["type"], "available", "{p}");

    // Alice logs in again: Prosody probes her contacts; the bridge answers with bob's state.
    alice.quit().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let p = bob_is(&mut alice, "available").await;
    assert_eq!(p["type"], "available", "probe answered: {p}");
    settle(&mut alice).await;

    // Unsubscribe: no more presence from bob.
    alice
        .command(json!({"cmd": "presence", "to": BOB, "type": "unsubscribe"}))
        .await;
    // Prosody turns the bridge's `unsubscribed` into a roster push; what shows is that bob's
    // going offline no longer reaches her.
    settle(&mut alice).await;
    phone.kill9().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, alice.next_event_quiet()).await {
        let from_bob = e["from"].as_str().is_some_and(|f| f.starts_with(BOB));
        assert!(
            !(e["event"] == "presence" && from_bob),
            "after unsubscribe: {e}"
        );
    }
    broker.stop().await;
    let saved = std::fs::read_to_string(state.path().join("presence/subscribers.json")).unwrap();
    assert!(!saved.contains("alice@localhost"), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_presence_is_a_retained_mqtt_message() {
    let prosody = Prosody::start();
    let state = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, state.path()).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    // Subscribing makes the bridge ask for alice's presence back; slixmpp approves.
    alice_subscribes(&mut alice).await;
    alice
        .command(json!({"cmd": "presence", "show": "away", "status": "Back at 3"}))
        .await;

    settle(&mut alice).await;

    // A late MQTT subscriber gets the retained state.
    let topic = "presence/alice@localhost";
    let mut watcher = common::connect(broker.addr, "watcher").await;
    watcher.subscribe(topic, QoS::AtLeastOnce).await;
    let p = watcher.next_publish().await;
    assert!(p.retain, "retained");
    let last: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(last["state"], "away", "{last}");
    assert_eq!(last["status"], "Back at 3");
    assert_eq!(last["jid"], "alice@localhost");

    // Alice goes offline: the retained message says so.
    alice.quit().await;
    loop {
        let p = watcher.next_publish().await;
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        if v["state"] == "unavailable" {
            break;
        }
    }
    // Nobody but the bridge may write a legacy presence topic.
    let mut forger = Paho::connect(paho(&broker, "bob-forger", "5", 60)).await;
    let code = forger
        .publish(topic, r#"{"state":"available"}"#, true)
        .await;
    assert_eq!(code, 0x87, "Not authorized");
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    broker.stop().await;
}
