//! The bridge against a real ejabberd (Debian package) instead of Prosody: the component link
//! and chat both ways with the built-in broker, and, in upstream mode, two bridge instances
//! holding the same component domain at once (ejabberd spreads a domain's stanzas between its
//! connections), each message carried exactly once in both directions, keepalive answers
//! relayed between the instances, and one instance killed without loss of service.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ejabberd::{Ejabberd, MORE_USERS};
use common::process::BridgeProcess as Bridge;
use common::prosody::{COMPONENT, SECRET, XmppClient, XmppServer};
use common::upstream::{
    BRIDGE_PASSWORD, BRIDGE_USER, Mqtt, expected, mosquitto, repo, wait_broker_log, xmpp_bodies,
};
use rumqttc::QoS;

/// Messages an instance published to MQTT (sum over rules), from its /metrics.
async fn published_to_mqtt(bridge: &Bridge) -> u64 {
    let addr = bridge.admin_addr().await;
    let (_, text) = common::http_get(addr, "/metrics").await;
    text.lines()
        .filter(|l| {
            l.starts_with("bridge_messages_total{")
                && l.contains("direction=\"xmpp_to_mqtt\"")
                && l.contains("outcome=\"published\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until ejabberd has processed the client's initial presence: a message to the bare
/// JID before that finds no available resource (and, without mod_offline, is bounced to the
/// sender). A ping answered by the component comes back after everything sent before it.
async fn online(client: &mut XmppClient) {
    client
        .command(serde_json::json!({"cmd": "ping", "to": COMPONENT, "tag": "online"}))
        .await;
    let p = client
        .wait_for(|e| e["event"] == "pong" || e["event"] == "iq_error")
        .await;
    assert_eq!(p["event"], "pong", "{p}");
}

fn xmpp_section(server: &impl XmppServer) -> String {
    format!(
        "[xmpp]\nserver = \"{}\"\ndomain = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\n\
         ping_interval = \"500ms\"\nread_timeout = \"3s\"\nreconnect_min = \"100ms\"\n\
         reconnect_max = \"1s\"\n\n\
         [mapping]\ndir = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        server.component_addr(),
        repo("mappings").display()
    )
}

/// The built-in broker and the component link on ejabberd: chat both ways, disco, ping, and
/// a message of an unknown type read as "normal".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_bridge_chats_both_ways_through_ejabberd() {
    let ejabberd = Ejabberd::start();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    for user in ["alice", "bob"] {
        xmpp_mqtt_bridge::broker::auth::set_user(&users, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let mqtt_port = common::free_port();
    let config = format!(
        "[log]\nlevel = \"info\"\n\n\
         [broker]\nlisten = [\"127.0.0.1:{mqtt_port}\"]\npassword_file = \"{}\"\n\n{}",
        users.display(),
        xmpp_section(&ejabberd)
    );
    let bridge = Bridge::spawn(dir.path(), "embedded", &config);
    bridge.wait_log("XMPP component link connected.").await;

    let mut opts = common::options(([127, 0, 0, 1], mqtt_port).into(), "bob-1");
    opts.set_credentials("bob", "bobpw");
    let mut bob = common::connect_with(opts).await;
    bob.subscribe("users/bob/inbox/#", QoS::AtLeastOnce).await;
    let mut alice = XmppClient::connect(&ejabberd, "alice").await;
    online(&mut alice).await;

    // XMPP -> MQTT.
    alice
        .send_chat("bob@mqtt.localhost", "ej-1", "hello from ejabberd")
        .await;
    let p = bob.next_publish().await;
    assert_eq!(p.topic, "users/bob/inbox/alice@localhost");
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["body"], "hello from ejabberd", "{v}");
    assert!(
        v["from"].as_str().unwrap().starts_with("alice@localhost/"),
        "{v}"
    );

    // MQTT -> XMPP.
    bob.publish(
        "users/bob/outbox/alice@localhost",
        QoS::AtLeastOnce,
        false,
        br#"{"body": "hello back"}"#,
    )
    .await;
    let m = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(m["body"], "hello back", "{m}");
    assert_eq!(m["from"], "bob@mqtt.localhost", "{m}");

    // The component answers disco and ping through ejabberd.
    alice
        .command(serde_json::json!({"cmd": "disco_info", "to": COMPONENT, "tag": "d"}))
        .await;
    let d = alice
        .wait_for(|e| e["event"] == "disco_info" || e["event"] == "iq_error")
        .await;
    assert_eq!(d["event"], "disco_info", "{d}");
    assert!(
        d["identities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i[0] == "gateway" && i[1] == "mqtt"),
        "{d}"
    );
    alice
        .command(serde_json::json!({"cmd": "ping", "to": COMPONENT, "tag": "p"}))
        .await;
    let p = alice
        .wait_for(|e| e["event"] == "pong" || e["event"] == "iq_error")
        .await;
    assert_eq!(p["event"], "pong", "{p}");

    // A message type xmpp-parsers rejects: Prosody passes it on as is and the bridge answers
    // <bad-request/> (tests/xmpp_link.rs); ejabberd reads an unknown type as "normal", as
    // RFC 6121 5.2.2 says a receiver must, so the message crosses.
    alice
        .send_raw(
            "<message to='bob@mqtt.localhost' id='bogus-1' type='bogus'><body>x</body></message>",
        )
        .await;
    let p = bob.next_publish().await;
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["body"], "x", "{v}");
    assert_eq!(v["type"], "normal", "{v}");
    alice
        .send_chat("bob@mqtt.localhost", "ej-2", "still here")
        .await;
    let p = bob.next_publish().await;
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["body"], "still here", "{v}\n{}", bridge.log());

    assert_eq!(
        bridge
            .log()
            .matches("XMPP component link connected.")
            .count(),
        1,
        "the link went down:\n{}",
        bridge.log()
    );
}

/// Two bridge instances in upstream mode (shared subscriptions on one Mosquitto) both hold
/// the component domain on ejabberd, which spreads the domain's stanzas between them, the
/// answers to their keepalive pings included: each relays the other's pongs through the
/// broker, so neither link flaps. Each message crosses exactly once in each direction, both
/// instances carry XMPP -> MQTT traffic, and after one is killed the other carries everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hold_one_component_on_ejabberd_and_relay_keepalives() {
    const PER_SENDER: usize = 5;
    const N: usize = 30;
    let ejabberd = Ejabberd::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let upstream = |client_id: &str| {
        format!(
            "[log]\nlevel = \"info\"\n\n\
             [mqtt]\nmode = \"upstream\"\n\n\
             [mqtt.upstream]\nserver = \"127.0.0.1:{}\"\nclient_id = \"{client_id}\"\n\
             username = \"{BRIDGE_USER}\"\npassword = \"{BRIDGE_PASSWORD}\"\n\
             session_expiry = \"0s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n\
             share_group = \"bridges\"\n\n{}",
            m.port(),
            xmpp_section(&ejabberd)
        )
    };
    let mut a = Bridge::spawn(dir.path(), "a", &upstream("bridge-a"));
    let b = Bridge::spawn(dir.path(), "b", &upstream("bridge-b"));
    // Unlike Prosody, ejabberd lets both hold the component at once.
    a.wait_log("XMPP component link connected.").await;
    b.wait_log("XMPP component link connected.").await;
    wait_broker_log(&m, "$share/bridges/users/+/outbox/+", 2).await;

    let mut bob = Mqtt::connect(&m, "bob", "bob-ej", Some("users/bob/inbox/#")).await;
    let mut senders = Vec::new();
    for user in MORE_USERS {
        senders.push(XmppClient::connect(&ejabberd, user).await);
    }

    // XMPP -> MQTT: several senders, so that balancing by bare JID uses both instances.
    for (s, client) in senders.iter_mut().enumerate() {
        for i in 0..PER_SENDER {
            client
                .send_chat(
                    "bob@mqtt.localhost",
                    &format!("x{s}-{i}"),
                    &format!("x{s}-{i}"),
                )
                .await;
        }
    }
    let total = MORE_USERS.len() * PER_SENDER;
    let (got, dups) = bob.bodies(total, Duration::from_secs(20)).await;
    let want: BTreeSet<String> = (0..MORE_USERS.len())
        .flat_map(|s| (0..PER_SENDER).map(move |i| format!("x{s}-{i}")))
        .collect();
    assert_eq!(got, want, "a: {}\nb: {}", a.log(), b.log());
    assert_eq!(dups, 0, "a message reached MQTT twice");
    let (by_a, by_b) = (published_to_mqtt(&a).await, published_to_mqtt(&b).await);
    assert_eq!(by_a + by_b, total as u64);
    assert!(
        by_a > 0 && by_b > 0,
        "ejabberd did not spread the load: a {by_a}, b {by_b}"
    );
    eprintln!("XMPP -> MQTT spread by ejabberd: a {by_a}, b {by_b}");

    // MQTT -> XMPP: shared subscription, each message once.
    let mut alice = XmppClient::connect(&ejabberd, "alice").await;
    online(&mut alice).await;
    let outbox = "users/bob/outbox/alice@localhost";
    for i in 0..N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(20)).await;
    alice.expect_no_message(Duration::from_secs(1)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        bodies,
        expected("m", 0..N),
        "a: {}\nb: {}",
        a.log(),
        b.log()
    );
    assert_eq!(dups, 0, "a message reached XMPP twice");
    // Half the pongs reach the other instance; relayed, they keep both links up.
    for (name, bridge) in [("a", &a), ("b", &b)] {
        assert!(
            !bridge.log().contains("XMPP component link lost"),
            "instance {name}'s link flapped:\n{}",
            bridge.log()
        );
    }

    // One instance dies: ejabberd drops its route, the broker its shared-subscription member.
    a.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (s, client) in senders.iter_mut().enumerate() {
        client
            .send_chat("bob@mqtt.localhost", &format!("y{s}"), &format!("y{s}"))
            .await;
    }
    let (got, dups) = bob.bodies(MORE_USERS.len(), Duration::from_secs(20)).await;
    let want: BTreeSet<String> = (0..MORE_USERS.len()).map(|s| format!("y{s}")).collect();
    assert_eq!(got, want, "b: {}", b.log());
    assert_eq!(dups, 0);
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(20)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(bodies, expected("m", N..2 * N), "b: {}", b.log());
    assert_eq!(dups, 0);
    drop(ejabberd);
}
