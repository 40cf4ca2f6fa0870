//! Presence in upstream mode (the bridge as a client of Mosquitto, with the shipped ACL): an
//! MQTT user is online while its retained status topic says so, and its will sets
//! `unavailable`; legacy users' presence becomes retained messages on the upstream broker.
//! Real Prosody, slixmpp, rumqttc, the built binary.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::{Duration, Instant};

use common::process::BridgeProcess as Bridge;
use common::prosody::{COMPONENT, Prosody, SECRET, XmppClient};
use common::upstream::{BRIDGE_PASSWORD, BRIDGE_USER, mosquitto, repo, wait_broker_log};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const BOB: &str = "bob@mqtt.localhost";

async fn presence_from_bob(alice: &mut XmppClient) -> Value {
    alice
        .wait_for(|e| {
            e["event"] == "presence" && e["from"].as_str().is_some_and(|f| f.starts_with(BOB))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_presence_follows_the_status_topic_and_the_will() {
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        dir.path(),
        "bridge",
        &format!(
            "[log]\nlevel = \"info\"\n\n[mqtt]\nmode = \"upstream\"\n\n\
             [mqtt.upstream]\nserver = \"127.0.0.1:{}\"\nclient_id = \"bridge-p\"\n\
             username = \"{BRIDGE_USER}\"\npassword = \"{BRIDGE_PASSWORD}\"\n\
             session_expiry = \"0s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n\n\
             [xmpp]\nserver = \"{}\"\ndomain = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\n\
             ping_interval = \"500ms\"\nread_timeout = \"3s\"\n\n\
             [mapping]\ndir = \"{}\"\n\n[presence]\nfile = \"presence.json\"\n\n\
             [admin]\nenabled = false\n",
            m.port(),
            prosody.component_addr(),
            repo("mappings").display()
        ),
    );
    wait_broker_log(&m, "users/+/status", 1).await;

    // Alice subscribes to bob: approved, and bob is offline (nothing on his status topic).
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    alice
        .command(json!({"cmd": "presence", "to": BOB, "type": "subscribe"}))
        .await;
    let first = presence_from_bob(&mut alice).await;
    assert_eq!(first["type"], "unavailable", "{first}\n{}", bridge.log());

    // Bob's app connects with a will and publishes its status, retained.
    let mut opts = MqttOptions::new("bob-phone", "127.0.0.1", m.port());
    opts.set_credentials("bob", "bobpw");
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_last_will(LastWill::new(
        "users/bob/status",
        r#"{"show":"unavailable"}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client
        .publish(
            "users/bob/status",
            QoS::AtLeastOnce,
            true,
            r#"{"show":"dnd","status":"In a meeting"}"#,
        )
        .await
        .unwrap();
    // Keeps the connection open until the task is aborted.
    let poll = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // Before the status arrives, bob's "unavailable" may come more than once (the answer to
    // the subscription and to the probe Prosody sends after it, in either order under load).
    let p = loop {
        let p = presence_from_bob(&mut alice).await;
        if p["type"] != "subscribe" && p["type"] != "unavailable" {
            break p;
        }
    };
    assert_eq!(
        (p["type"].as_str(), p["status"].as_str()),
        (Some("dnd"), Some("In a meeting")),
        "{p}\n{}",
        bridge.log()
    );

    // The app dies without DISCONNECT: Mosquitto publishes its will, bob goes offline.
    let killed = Instant::now();
    poll.abort();
    drop(client);
    let p = alice
        .wait_for(|e| {
            e["event"] == "presence"
                && e["from"].as_str().is_some_and(|f| f.starts_with(BOB))
                && e["type"] == "unavailable"
        })
        .await;
    assert_eq!(p["type"], "unavailable", "{p}");
    eprintln!("unavailable {:?} after the socket closed", killed.elapsed());

    // Legacy presence goes the other way: alice's status, retained on the upstream broker.
    alice
        .command(json!({"cmd": "presence", "show": "away", "status": "Out"}))
        .await;
    // Read twice: the second reader subscribes after the bridge published for sure, so what
    // it gets can only be the retained copy.
    let mut got = None;
    for reader_id in ["bob-reader-1", "bob-reader-2"] {
        let mut opts = MqttOptions::new(reader_id, "127.0.0.1", m.port());
        opts.set_credentials("bob", "bobpw");
        let (reader, mut events) = AsyncClient::new(opts, 10);
        reader
            .subscribe("presence/alice@localhost", QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + common::WAIT;
        got = Some(loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap();
                    if v["state"] == "away" {
                        break (p.retain, v);
                    }
                }
                Ok(Ok(_)) => {}
                other => panic!("no legacy presence: {other:?}\n{}", bridge.log()),
            }
        });
    }
    let got = got.unwrap();
    assert!(got.0, "a late subscriber gets it retained: {got:?}");
    assert_eq!(got.1["status"], "Out", "{got:?}");
}
