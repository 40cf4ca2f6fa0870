//! Upstream mode end to end, the bridge in this process: a real Mosquitto 2.0 (Debian) as
//! the upstream broker with the shipped ACL (`docker/mosquitto/acl`), a real Prosody, slixmpp
//! and rumqttc clients, the shipped mapping rules.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::prosody::{COMPONENT, Prosody, XmppClient};
use common::upstream::*;
use rumqttc::{MqttOptions, QoS};
use tokio::sync::mpsc;
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig, MqttMode};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::upstream::UpstreamConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_both_ways_through_upstream_mosquitto() {
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-both")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob = Mqtt::connect(&m, "bob", "bob-phone", Some("users/bob/inbox/#")).await;

    // XMPP -> MQTT: the JSON envelope on bob's inbox, through Mosquitto.
    alice
        .send_chat("bob@mqtt.localhost", "m1", "Hello Bob")
        .await;
    let p = tokio::time::timeout(common::WAIT, bob.publishes.recv())
        .await
        .expect("bob got nothing")
        .unwrap();
    assert_eq!(p.topic, "users/bob/inbox/alice@localhost");
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["body"], "Hello Bob");
    assert_eq!(
        v["from"].as_str().unwrap().split('/').next(),
        Some("alice@localhost")
    );

    // MQTT -> XMPP: the sender is the topic's {user}, which the ACL lets only bob use.
    bob.publish("users/bob/outbox/alice@localhost", "Hi Alice")
        .await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "Hi Alice");
    assert_eq!(got["from"], "bob@mqtt.localhost");

    // The bridge's own publishes are not carried back (No Local; the inbox is not bridged
    // to XMPP anyway), and nothing else arrives.
    alice.expect_no_message(Duration::from_millis(500)).await;
    let stats = app.bridge_stats.clone().unwrap();
    assert_eq!(stats.to_mqtt.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats
            .to_xmpp_confirmed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(app.stop(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_marked_by_a_bridge_instance_are_not_carried_again() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-loop")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;

    // An MQTT 5 client (bob) publishes on his outbox once with the origin property of this
    // deployment (as another bridge instance would) and once without.
    let mut opts = rumqttc::v5::MqttOptions::new("bob-v5", "127.0.0.1", m.port());
    opts.set_credentials("bob", "bobpw");
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let body = |b: &str| serde_json::json!({ "body": b }).to_string();
    let marked = PublishProperties {
        user_properties: vec![(
            xmpp_mqtt_bridge::upstream::ORIGIN_PROPERTY.into(),
            COMPONENT.into(),
        )],
        ..PublishProperties::default()
    };
    let topic = "users/bob/outbox/alice@localhost";
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    client
        .publish_with_properties(topic, qos, false, body("looped"), marked)
        .await
        .unwrap();
    client
        .publish(topic, qos, false, body("fresh"))
        .await
        .unwrap();
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "fresh", "the marked message must be dropped");
    alice.expect_no_message(Duration::from_millis(500)).await;
    let stats = app.upstream_stats.clone().unwrap();
    assert_eq!(
        stats
            .loops_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// QoS 1 both ways while the upstream broker goes down and comes back (Mosquitto saves its
/// sessions on SIGTERM): every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_broker_restart_loses_nothing_at_qos1() {
    const N: usize = 15;
    let prosody = Prosody::start();
    let mut m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-restart")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob_in = Mqtt::connect(&m, "bob", "bob-in", Some("users/bob/inbox/#")).await;
    let bob_out = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";

    // Before, during and after the outage, each side keeps sending.
    for i in 0..N {
        alice
            .send_chat("bob@mqtt.localhost", &format!("a{i}"), &format!("x{i}"))
            .await;
        bob_out.publish(outbox, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    m.stop();
    for i in N..2 * N {
        alice
            .send_chat("bob@mqtt.localhost", &format!("a{i}"), &format!("x{i}"))
            .await;
        bob_out.publish(outbox, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.start_again();
    for i in 2 * N..3 * N {
        alice
            .send_chat("bob@mqtt.localhost", &format!("a{i}"), &format!("x{i}"))
            .await;
        bob_out.publish(outbox, &format!("m{i}")).await;
    }

    let (to_xmpp, xdups) = xmpp_bodies(&mut alice, "m", 3 * N, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = to_xmpp.keys().cloned().collect();
    assert_eq!(got, expected("m", 0..3 * N), "MQTT -> XMPP lost messages");
    let (to_mqtt, mdups) = bob_in.bodies(3 * N, Duration::from_secs(20)).await;
    assert_eq!(
        to_mqtt,
        expected("x", 0..3 * N),
        "XMPP -> MQTT lost messages"
    );
    assert!(
        bob_in.connacks.try_recv().is_ok(),
        "bob's client never reconnected"
    );
    let stats = app.upstream_stats.clone().unwrap();
    assert!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the bridge never reconnected"
    );
    eprintln!("broker restart: duplicates to XMPP {xdups}, to MQTT {mdups}");
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// The bridge stops while an MQTT client keeps publishing; a new bridge process with the same
/// client id resumes the persistent session and carries everything published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_restart_loses_nothing_thanks_to_the_persistent_session() {
    const N: usize = 20;
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-persist")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";
    for i in 0..N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.stop(Duration::from_secs(5)).await);
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-persist")).await;
    for i in 2 * N..3 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", 3 * N, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        got,
        expected("m", 0..3 * N),
        "messages lost over the bridge restart"
    );
    eprintln!("bridge restart: duplicates to XMPP {dups}");
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// Identity comes from the topic, so the broker's ACL is what stops carol from speaking as
/// bob: her publish on bob's outbox is refused by Mosquitto and nothing reaches XMPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refuses_publishing_under_another_users_prefix() {
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-acl")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;

    // MQTT 5: Mosquitto answers the forged publish with PUBACK 0x87 Not authorized.
    let mut opts = rumqttc::v5::MqttOptions::new("carol-v5", "127.0.0.1", m.port());
    opts.set_credentials("carol", "carolpw");
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let (tx, mut pubacks) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a))) => {
                    let _ = tx.send(format!("{:?}", a.reason));
                }
                Ok(_) => {}
                // rumqttc reports a failed PUBACK as an error of its event loop.
                Err(e) => {
                    let _ = tx.send(e.to_string());
                    return;
                }
            }
        }
    });
    let forged = serde_json::json!({ "body": "I am bob" }).to_string();
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    client
        .publish("users/bob/outbox/alice@localhost", qos, false, forged)
        .await
        .unwrap();
    let reason = tokio::time::timeout(common::WAIT, pubacks.recv())
        .await
        .expect("no PUBACK")
        .unwrap();
    assert!(reason.contains("NotAuthorized"), "{reason}");
    // MQTT 3.1.1: no negative acknowledgement; the broker drops it silently.
    let carol = Mqtt::connect(&m, "carol", "carol-311", None).await;
    carol
        .publish("users/bob/outbox/alice@localhost", "I am bob too")
        .await;
    // Carol's own outbox works, and arrives first: nothing forged was carried before it.
    carol
        .publish("users/carol/outbox/alice@localhost", "Really carol")
        .await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "Really carol");
    assert_eq!(got["from"], "carol@mqtt.localhost");
    alice.expect_no_message(Duration::from_millis(800)).await;
    let stats = app.bridge_stats.clone().unwrap();
    assert_eq!(stats.to_xmpp.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// MQTT 3.1.1 toward the upstream broker (`protocol = "3.1.1"`): both ways through Mosquitto,
/// and, without No Local, the bridge recognises its own publishes coming back on a topic it
/// both publishes and subscribes to (a `both` rule) and does not carry them to XMPP again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_carries_both_ways_and_drops_its_own_echoes() {
    let prosody = Prosody::start();
    let acl =
        format!("user {BRIDGE_USER}\ntopic readwrite chat/#\n\npattern readwrite chat/%u/#\n");
    let m = Mosquitto::start(&[(BRIDGE_USER, BRIDGE_PASSWORD), ("bob", "bobpw")], &acl);
    let maps = tempfile::tempdir().unwrap();
    std::fs::write(
        maps.path().join("room.toml"),
        "[[rule]]\nname = \"chat\"\ndirection = \"both\"\njid = \"{user}@{domain}\"\n\
         topic = \"chat/{user}/{peer}\"\nkinds = [\"chat\"]\n",
    )
    .unwrap();
    let table = MappingTable::load_dir(maps.path(), COMPONENT).unwrap();
    let mut upstream = upstream_config(&m, "bridge-311");
    upstream.protocol = xmpp_mqtt_bridge::upstream::Protocol::V311;
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        broker: BrokerConfig::default(),
        mqtt: MqttMode::Upstream(Box::new(upstream)),
        bridge: Some(BridgeSettings {
            xmpp: xmpp_config(&prosody, COMPONENT),
            mapping_dir: maps.path().to_path_buf(),
            mapping: Arc::new(table),
        }),
        audit: None,
        admin: None,
        presence: None,
    };
    let app = App::start(config).await.unwrap();
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob = Mqtt::connect(&m, "bob", "bob-311", Some("chat/bob/#")).await;

    // XMPP -> MQTT: published on chat/bob/alice@localhost, which the bridge also subscribes
    // to; the echo must not come back to alice.
    alice.send_chat("bob@mqtt.localhost", "e1", "ping").await;
    let p = tokio::time::timeout(common::WAIT, bob.publishes.recv())
        .await
        .expect("bob got nothing")
        .unwrap();
    assert_eq!(p.topic, "chat/bob/alice@localhost");
    // MQTT -> XMPP on the same topic works.
    bob.publish("chat/bob/alice@localhost", "pong").await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "pong");
    assert_eq!(got["from"], "bob@mqtt.localhost");
    alice.expect_no_message(Duration::from_millis(800)).await;
    let stats = app.upstream_stats.clone().unwrap();
    assert_eq!(
        stats
            .loops_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the bridge's own publish was not recognised"
    );
    assert_eq!(stats.v311.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// `protocol = "auto"` against a broker that answers MQTT 5 CONNECTs as a 3.1.1-only broker
/// does (CONNACK 0x01, unacceptable protocol version, then close): after two such answers the
/// client connects with protocol level 4. No 3.1.1-only broker is installed here, so the
/// broker side is a minimal TCP peer that speaks exactly these two packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_protocol_falls_back_to_311_when_the_broker_refuses_5() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (levels_tx, mut levels) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 512];
            let Ok(n) = sock.read(&mut buf).await else {
                continue;
            };
            // CONNECT: fixed header (2 bytes for short packets), "\0\x04MQTT", level.
            if n < 9 || buf[0] != 0x10 {
                continue;
            }
            let level = buf[8];
            let _ = levels_tx.send(level);
            if level == 5 {
                let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            } else {
                let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                open.push(sock);
            }
        }
    });
    let prosody = Prosody::start();
    let mut upstream = UpstreamConfig::new("127.0.0.1", port);
    upstream.reconnect_min = Duration::from_millis(50);
    upstream.reconnect_max = Duration::from_millis(100);
    let app = start_bridge(&prosody, upstream).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&4) {
        let level = tokio::time::timeout(common::WAIT, levels.recv())
            .await
            .expect("no further CONNECT")
            .unwrap();
        seen.push(level);
    }
    assert_eq!(seen, [5, 5, 4]);
    wait_upstream_connects(&app, 1).await;
    let stats = app.upstream_stats.clone().unwrap();
    assert_eq!(stats.v311.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// TLS toward the upstream broker with the CA from config; a bridge that does not trust the
/// broker's certificate never connects (and says why), the other carries the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_broker_checks_the_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    let acl = std::fs::read_to_string(repo("docker/mosquitto/acl")).unwrap();
    let m = Mosquitto::start_tls(
        &[(BRIDGE_USER, BRIDGE_PASSWORD), ("bob", "bobpw")],
        &acl,
        Some((&ca, &cert, &key)),
    );
    let prosody = Prosody::start();

    // Trusting another CA: the handshake fails, counted, and nothing connects.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_certificates(other.path());
    let mut wrong = upstream_config(&m, "bridge-tls-wrong");
    wrong.tls = Some(xmpp_mqtt_bridge::upstream::config::TlsConfig {
        ca_file: other_ca,
        client_auth: None,
    });
    let app = start_bridge(&prosody, wrong).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = app.upstream_stats.clone().unwrap();
    assert_eq!(stats.connects.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(
        stats
            .connection_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(app.stop(Duration::from_secs(5)).await);

    let mut right = upstream_config(&m, "bridge-tls");
    right.tls = Some(xmpp_mqtt_bridge::upstream::config::TlsConfig {
        ca_file: ca.clone(),
        client_auth: None,
    });
    let app = start_bridge(&prosody, right).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    // bob over TLS too (rumqttc with the same CA).
    let mut opts = MqttOptions::new("bob-tls", "127.0.0.1", m.port());
    opts.set_credentials("bob", "bobpw");
    opts.set_transport(rumqttc::Transport::tls(
        std::fs::read(&ca).unwrap(),
        None,
        None,
    ));
    let bob = common::connect_with(opts).await;
    bob.publish(
        "users/bob/outbox/alice@localhost",
        QoS::AtLeastOnce,
        false,
        serde_json::json!({ "body": "over TLS" })
            .to_string()
            .as_bytes(),
    )
    .await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "over TLS");
    assert!(app.stop(Duration::from_secs(5)).await);
}

/// Both directions at once with an in-flight window of 4: the bridge's flow control toward
/// the broker (its publishes) and from it (Receive Maximum, acknowledgements only after XMPP
/// confirmed) hold up and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_under_load_with_a_small_window() {
    const N: usize = 200;
    let prosody = Prosody::start();
    let m = mosquitto();
    let mut upstream = upstream_config(&m, "bridge-load");
    upstream.max_inflight = 4;
    let app = start_bridge(&prosody, upstream).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob_in = Mqtt::connect(&m, "bob", "bob-in", Some("users/bob/inbox/#")).await;
    let bob_out = Mqtt::connect(&m, "bob", "bob-out", None).await;
    for i in 0..N {
        alice
            .send_chat("bob@mqtt.localhost", &format!("a{i}"), &format!("x{i}"))
            .await;
        bob_out
            .publish("users/bob/outbox/alice@localhost", &format!("m{i}"))
            .await;
    }
    let (to_xmpp, _) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(30)).await;
    let got: BTreeSet<String> = to_xmpp.keys().cloned().collect();
    assert_eq!(got, expected("m", 0..N));
    let (to_mqtt, _) = bob_in.bodies(N, Duration::from_secs(30)).await;
    assert_eq!(to_mqtt, expected("x", 0..N));
    assert!(app.stop(Duration::from_secs(5)).await);
}
