//! The bridge end to end: a real Prosody, real XMPP clients (slixmpp), real MQTT clients
//! (rumqttc, raw sockets), the shipped mapping rules.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::prosody::{Prosody, XmppClient};
use common::raw::{self, Raw};
use common::{TestBroker, connect_with, options};
use rumqttc::QoS;
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

fn shipped_mappings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

/// The bridge with its broker (password file: alice, bob, carol with password `<name>pw`)
/// attached to `prosody` with the rules in `mappings`.
async fn start_bridge(prosody: &Prosody, mappings: &Path, users: &Path) -> TestBroker {
    for user in ["alice", "bob", "carol"] {
        xmpp_mqtt_bridge::broker::auth::set_user(users, user, format!("{user}pw").as_bytes())
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
    let table = MappingTable::load_dir(mappings, prosody.component()).unwrap();
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        mqtt: xmpp_mqtt_bridge::config::MqttMode::Embedded,
        broker: BrokerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            sys_interval: None,
            password_file: Some(users.to_path_buf()),
            ..BrokerConfig::default()
        },
        bridge: Some(BridgeSettings {
            xmpp,
            mapping_dir: mappings.to_path_buf(),
            mapping: Arc::new(table),
        }),
        audit: None,
        admin: None,
        presence: None,
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    let broker = TestBroker {
        addr: app.mqtt_addrs[0],
        app,
    };
    wait_linked(&broker).await;
    broker
}

async fn wait_linked(broker: &TestBroker) {
    let mut state = broker.app.xmpp.as_ref().unwrap().subscribe_state();
    let linked = tokio::time::timeout(common::WAIT, async {
        loop {
            if matches!(
                *state.borrow_and_update(),
                xmpp_mqtt_bridge::xmpp::LinkState::Connected
            ) {
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(linked.is_ok(), "the component link never came up");
}

async fn mqtt_user(broker: &TestBroker, user: &str, id: &str) -> common::Client {
    let mut opts = options(broker.addr, id);
    opts.set_credentials(user, format!("{user}pw"));
    // rumqttc's default limit is 10 KB; the tests send 60 KB bodies.
    opts.set_max_packet_size(1 << 20, 1 << 20);
    connect_with(opts).await
}

/// The shipped rules with legacy user alice on XMPP and MQTT user bob subscribed to his inbox.
struct Chat {
    prosody: Prosody,
    _dir: tempfile::TempDir,
    broker: TestBroker,
    alice: XmppClient,
    bob: common::Client,
}

impl Chat {
    async fn start() -> Chat {
        let prosody = Prosody::start();
        let dir = tempfile::tempdir().unwrap();
        let broker = start_bridge(&prosody, &shipped_mappings(), &dir.path().join("users")).await;
        let alice = XmppClient::connect(&prosody, "alice").await;
        let mut bob = mqtt_user(&broker, "bob", "bob-phone").await;
        bob.subscribe("users/bob/inbox/#", QoS::AtLeastOnce).await;
        Chat {
            prosody,
            _dir: dir,
            broker,
            alice,
            bob,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_both_ways_with_the_shipped_rules() {
    let Chat {
        prosody: _prosody,
        _dir,
        broker,
        mut alice,
        mut bob,
    } = Chat::start().await;

    // XMPP -> MQTT: JSON envelope on bob's inbox, per peer.
    alice
        .send_chat("bob@mqtt.localhost", "m1", "Grüße, Bob! 🚀")
        .await;
    let got = bob.next_publish().await;
    assert_eq!(got.topic, "users/bob/inbox/alice@localhost");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let v: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(v["body"], "Grüße, Bob! 🚀");
    assert_eq!(v["id"], "m1");
    assert_eq!(v["type"], "chat");
    assert!(v["from"].as_str().unwrap().starts_with("alice@localhost"));

    // MQTT -> XMPP: bob answers on his outbox; alice sees it from bob@mqtt.localhost.
    bob.publish(
        "users/bob/outbox/alice@localhost",
        QoS::AtLeastOnce,
        false,
        r#"{"body":"Hallo Alice ✓"}"#.as_bytes(),
    )
    .await;
    let m = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(
        m["from"].as_str().unwrap().split('/').next(),
        Some("bob@mqtt.localhost")
    );
    assert_eq!(m["body"], "Hallo Alice ✓");
    assert_eq!(m["type"], "chat");

    // A 60 KB body crosses both ways intact.
    let big: String = "0123456789abcdef".repeat(60 * 1024 / 16);
    alice.send_chat("bob@mqtt.localhost", "big", &big).await;
    let got = bob.next_publish().await;
    let v: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(v["body"].as_str().unwrap().len(), big.len());
    let payload = serde_json::json!({ "body": big }).to_string();
    bob.publish(
        "users/bob/outbox/alice@localhost",
        QoS::AtLeastOnce,
        false,
        payload.as_bytes(),
    )
    .await;
    let m = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(m["body"].as_str().unwrap(), big);

    // Broadcast headline as plain text at QoS 0.
    let mut carol = mqtt_user(&broker, "carol", "carol-tablet").await;
    carol.subscribe("broadcast/news", QoS::AtLeastOnce).await;
    alice
        .send_raw(
            "<message to='news@mqtt.localhost' type='headline' id='n1'><body>Servers up</body></message>",
        )
        .await;
    let news = carol.next_publish().await;
    assert_eq!(
        (&news.payload[..], news.qos),
        (&b"Servers up"[..], QoS::AtMostOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_login_not_the_topic() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, &shipped_mappings(), &dir.path().join("users")).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    // carol publishes on bob's outbox: refused, nothing reaches alice.
    let carol = mqtt_user(&broker, "carol", "carol-x").await;
    carol
        .publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            br#"{"body":"I am bob"}"#,
        )
        .await;
    // An anonymous client cannot publish into XMPP either.
    let mut anon = Raw::mqtt(broker.addr, "anon").await;
    anon.send(&raw::publish_packet(
        b"users/bob/outbox/alice@localhost",
        1,
        1,
        br#"{"body":"x"}"#,
    ))
    .await;
    alice.expect_no_message(Duration::from_millis(800)).await;
    // Refused at the broker: an MQTT subscriber of bob's outbox does not get them either.
    let stats = &broker.app.broker_stats;
    assert_eq!(
        stats
            .publishes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publishers_learn_why_a_bridged_publish_is_refused() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, &shipped_mappings(), &dir.path().join("users")).await;
    let mut spy = mqtt_user(&broker, "bob", "bob-spy").await;
    spy.subscribe("users/+/outbox/#", QoS::AtLeastOnce).await;
    // MQTT 5 CONNECT with user name and password (raw bytes, no properties).
    let login = |user: &str| {
        let mut body = Vec::new();
        raw::string(b"MQTT", &mut body);
        body.extend_from_slice(&[5, 0x02 | 0x80 | 0x40, 0, 30, 0]);
        raw::string(format!("{user}-v5").as_bytes(), &mut body);
        raw::string(user.as_bytes(), &mut body);
        raw::string(format!("{user}pw").as_bytes(), &mut body);
        raw::packet(0x10, &body)
    };
    let publish_v5 = |topic: &[u8], pkid: u16, payload: &[u8]| {
        let mut body = Vec::new();
        raw::string(topic, &mut body);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0); // no properties
        body.extend_from_slice(payload);
        raw::packet(0x32, &body)
    };
    let mut carol = Raw::connect(broker.addr).await;
    carol.send(&login("carol")).await;
    let connack = carol.read_exact(3).await;
    assert_eq!(&connack[..2], &[0x20, connack[1]]);
    carol.read_exact(usize::from(connack[1]) - 1).await;
    // Bob's outbox: 0x87 Not authorized.
    carol
        .send(&publish_v5(
            b"users/bob/outbox/alice@localhost",
            7,
            br#"{"body":"x"}"#,
        ))
        .await;
    let (pkid, code, why) = read_puback(&mut carol).await;
    assert_eq!((pkid, code), (7, 0x87));
    assert!(why.contains("bob"), "reason string: {why}");
    // Her own outbox with a payload that is not an envelope: 0x99 Payload format invalid.
    carol
        .send(&publish_v5(
            b"users/carol/outbox/alice@localhost",
            8,
            b"not json",
        ))
        .await;
    let (pkid, code, why) = read_puback(&mut carol).await;
    assert_eq!((pkid, code), (8, 0x99));
    assert!(!why.is_empty());
    // An envelope whose body has a character XML cannot carry (U+0001): 0x99 too, named.
    carol
        .send(&publish_v5(
            b"users/carol/outbox/alice@localhost",
            10,
            br#"{"body":"a\u0001b"}"#,
        ))
        .await;
    let (pkid, code, why) = read_puback(&mut carol).await;
    assert_eq!((pkid, code), (10, 0x99));
    assert!(
        why.contains("body") && why.contains("XML"),
        "reason string: {why}"
    );
    // A good one is acknowledged with success (shortest form).
    carol
        .send(&publish_v5(
            b"users/carol/outbox/alice@localhost",
            9,
            br#"{"body":"ok"}"#,
        ))
        .await;
    assert_eq!(carol.read_exact(4).await, vec![0x40, 0x02, 0x00, 0x09]);
    let seen = spy.next_publish().await;
    assert_eq!(
        seen.topic, "users/carol/outbox/alice@localhost",
        "only the good one is routed"
    );
    spy.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_addresses_get_item_not_found_and_bad_stanzas_keep_the_link() {
    let Chat {
        prosody: _prosody,
        _dir,
        broker,
        mut alice,
        mut bob,
    } = Chat::start().await;

    // `{user}@{domain}` covers every localpart of the component domain, so the one address no
    // rule covers is the bare domain itself.
    alice
        .send_raw("<message to='mqtt.localhost' type='chat' id='x1'><body>hi</body></message>")
        .await;
    let err = alice.wait_for(|e| e["event"] == "error").await;
    assert_eq!(err["condition"], "item-not-found", "{err}");

    // Bad stanzas between good ones: each good one arrives, in order, on one link.
    for i in 0..5 {
        alice
            .send_chat("bob@mqtt.localhost", &format!("g{i}"), &format!("good {i}"))
            .await;
        alice
            .send_raw(
                "<message to='bob@mqtt.localhost' type='bogus' id='b1'><body>bad</body></message>",
            )
            .await;
        alice
            .send_raw("<presence to='bob@mqtt.localhost'><show>busy</show></presence>")
            .await;
        alice
            .send_raw("<presence to='bob@mqtt.localhost'><priority>high</priority></presence>")
            .await;
    }
    for i in 0..5 {
        let got = bob.next_publish().await;
        let v: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
        assert_eq!(v["body"], format!("good {i}"));
    }
    let stats = broker.app.xmpp.as_ref().unwrap().stats();
    assert_eq!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "never reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_in_order_both_ways() {
    let Chat {
        prosody: _prosody,
        _dir,
        broker,
        mut alice,
        mut bob,
    } = Chat::start().await;
    for i in 0..1000 {
        let payload = format!(r#"{{"body":"m{i}"}}"#);
        bob.publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        )
        .await;
    }
    let got = alice.messages(1000).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["body"], format!("m{i}"));
    }
    // Each was translated once, by the broker's publish guard, and the bridge used that.
    let stats = broker.app.bridge_stats.clone().unwrap();
    assert_eq!(stats.pretranslated.load(Ordering::Relaxed), 1000);
    // Confirmed by the server, and every acknowledgement (handed over in batches) reached the
    // broker: nothing stays in flight or queued in the bridge's session.
    let gauges = &broker.app.broker_stats.gauges;
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let confirmed = stats.to_xmpp_confirmed.load(Ordering::Relaxed);
        let inflight = gauges.inflight.load(Ordering::Relaxed);
        let queued = gauges.queued.load(Ordering::Relaxed);
        if confirmed == 1000 && inflight == 0 && queued == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed {confirmed} of 1000; broker: {inflight} in flight, {queued} queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..1000 {
        alice
            .send_chat("bob@mqtt.localhost", &format!("x{i}"), &format!("x{i}"))
            .await;
    }
    for i in 0..1000 {
        let got = bob.next_publish().await;
        let v: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
        assert_eq!(v["body"], format!("x{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_restart_loses_nothing_published_at_qos1() {
    let mut prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, &shipped_mappings(), &dir.path().join("users")).await;
    let bob = mqtt_user(&broker, "bob", "bob-phone").await;
    for i in 0..50 {
        let payload = format!(r#"{{"body":"before {i}"}}"#);
        bob.publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        )
        .await;
    }
    // Everything sent so far is confirmed by the server before it stops.
    let stats = broker.app.bridge_stats.clone().unwrap();
    let confirmed = || {
        stats
            .to_xmpp_confirmed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = std::time::Instant::now() + common::WAIT;
    while confirmed() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} confirmed",
            confirmed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    prosody.stop();
    // While the server is down, bob keeps publishing: the bridge keeps these.
    for i in 0..50 {
        let payload = format!(r#"{{"body":"during {i}"}}"#);
        bob.publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    prosody.start_again();
    wait_linked(&broker).await;
    // Alice was never online: Prosody's offline storage keeps what the bridge delivered, and
    // gives it to her at login, oldest first.
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let got = alice.messages(100).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..50)
        .map(|i| format!("before {i}"))
        .chain((0..50).map(|i| format!("during {i}")))
        .collect();
    assert_eq!(bodies, expected, "every message once, in order");
    alice.expect_no_message(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_and_text_payload_formats_with_mosquitto_clients() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    std::fs::write(
        maps.join("formats.toml"),
        r#"
[[rule]]
name = "raw-in"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "raw/{user}"
format = "xml"
qos = 0

[[rule]]
name = "text-out"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "{peer}"
topic = "text/{user}/{peer}"
format = "text"
kinds = ["chat"]
"#,
    )
    .unwrap();
    let broker = start_bridge(&prosody, &maps, &dir.path().join("users")).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let port = broker.port().to_string();
    // mosquitto_sub waits for one message on bob's raw topic.
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "bob", "-P", "bobpw"])
        .args(["-t", "raw/bob", "-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (scripts/test.sh installs mosquitto-clients)");
    // Until the subscription is in place, messages are not kept: resend until one arrives.
    let mut waiter = tokio::spawn(async move { sub.wait_with_output().await });
    let mut n = 0;
    let out = loop {
        n += 1;
        alice
            .send_chat(
                "bob@mqtt.localhost",
                &format!("x{n}"),
                "<b>&amp; ünïcode</b>",
            )
            .await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(300), &mut waiter).await {
            break done.unwrap().unwrap();
        }
        assert!(n < 30, "mosquitto_sub never received the stanza");
    };
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.starts_with("<message"), "{xml}");
    assert!(
        xml.contains("&lt;b&gt;&amp;amp; ünïcode&lt;/b&gt;"),
        "{xml}"
    );

    // Text from mosquitto_pub becomes the body as is.
    let published = common::run_with_timeout(
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "bob",
                "-P",
                "bobpw",
                "-q",
                "1",
            ])
            .args(["-t", "text/bob/alice@localhost", "-m", "plain ✓ text"]),
        Duration::from_secs(10),
    );
    assert!(published.status.success());
    let m = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(m["body"], "plain ✓ text");
}

/// Reads an MQTT 5 PUBACK carrying a Reason String: (packet id, reason code, reason string).
async fn read_puback(c: &mut Raw) -> (u16, u8, String) {
    assert_eq!(c.read_exact(1).await, vec![0x40], "a PUBACK");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = c.read_exact(1).await[0];
        len |= usize::from(b & 0x7F) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = c.read_exact(len).await;
    let pkid = u16::from_be_bytes([body[0], body[1]]);
    // Properties: one-byte length here (short strings), then 0x1F and a string.
    assert_eq!(body[4], 0x1F, "Reason String property in {body:?}");
    let n = usize::from(u16::from_be_bytes([body[5], body[6]]));
    (
        pkid,
        body[2],
        String::from_utf8(body[7..7 + n].to_vec()).unwrap(),
    )
}
