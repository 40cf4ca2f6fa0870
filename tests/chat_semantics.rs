//! Chat semantics end to end (issue 5): XEP-0184 receipts both ways, XEP-0359 ids, XEP-0085
//! chat states, XEP-0308 corrections, thread/subject and XEP-0203 delay. Real Prosody, slixmpp
//! with its xep_0184/0085/0308/0359/0203 plugins (`tests/clients/xmpp_chat_client.py`),
//! paho-mqtt 2.x as MQTT 5 and 3.1.1 clients (`tests/clients/paho_chat.py`), and a raw socket
//! subscriber that reads PUBLISH and acknowledges only when told.
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
use common::paho_chat::PahoChat as Paho;
use common::prosody::{Prosody, XmppClient};
use common::raw::{self, Raw};
use serde_json::{Value, json};
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::audit::record::Line;
use xmpp_mqtt_bridge::audit::{AuditConfig, query};
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@mqtt.localhost";
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(1500);

struct Setup {
    prosody: Prosody,
    dir: tempfile::TempDir,
    broker: TestBroker,
}

impl Setup {
    /// Prosody, and the bridge with the shipped rules and a full audit trail.
    async fn start() -> Setup {
        let prosody = Prosody::start();
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
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
        xmpp.reconnect_min = Duration::from_millis(100);
        xmpp.reconnect_max = Duration::from_millis(500);
        let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let table = MappingTable::load_dir(&mappings, prosody.component()).unwrap();
        let mut audit = AuditConfig::new(dir.path().join("audit"));
        audit.payload = xmpp_mqtt_bridge::audit::PayloadPolicy::Full;
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
            audit: Some(audit),
            admin: None,
            presence: None,
        };
        xmpp_mqtt_bridge::telemetry::init(&config.log);
        let app = App::start(config).await.unwrap();
        let broker = TestBroker {
            addr: app.mqtt_addrs[0],
            app,
        };
        let xmpp = broker.app.xmpp.clone().unwrap();
        until("the component link is up", || {
            matches!(xmpp.state(), xmpp_mqtt_bridge::xmpp::LinkState::Connected)
        })
        .await;
        Setup {
            prosody,
            dir,
            broker,
        }
    }

    async fn xmpp(&self, user: &str, extra: &[&str]) -> XmppClient {
        XmppClient::connect_script(&self.prosody, user, "clients/xmpp_chat_client.py", extra).await
    }

    fn records(&self) -> Vec<Line> {
        let dir = self.dir.path().join("audit");
        query::read_all(&dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| l.kind == "record")
            .collect()
    }

    /// Waits for an audit record with this outcome (and reason, when given).
    async fn audited(&self, outcome: &str, reason: Option<&str>) -> Line {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            let found = self.records().into_iter().find(|l| {
                l.outcome.as_deref() == Some(outcome)
                    && (reason.is_none() || l.reason.as_deref() == reason)
            });
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{outcome}` ({reason:?}) record in {:#?}",
                self.records()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn envelope(m: &Value) -> Value {
    serde_json::from_str(m["payload"].as_str().unwrap()).unwrap()
}

fn user_property<'a>(m: &'a Value, name: &str) -> Option<&'a str> {
    m["user_properties"]
        .as_array()?
        .iter()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_str())
}

/// A raw MQTT 3.1.1 client logged in as bob, subscribed to his inbox at QoS 1.
async fn raw_bob(broker: &TestBroker) -> Raw {
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(&raw::connect_with_login("bob-raw", "bob", "bobpw"))
        .await;
    assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0], "CONNACK");
    raw.send(&raw::subscribe_packet(1, "users/bob/inbox/#", 1))
        .await;
    assert_eq!(raw.read_exact(5).await, [0x90, 3, 0, 1, 1], "SUBACK");
    raw
}

/// Reads one PUBLISH from a raw socket: (first byte, topic, packet id, payload).
async fn read_publish(raw: &mut Raw) -> (u8, String, u16, Vec<u8>) {
    let first = raw.read_exact(1).await[0];
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = raw.read_exact(1).await[0];
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = raw.read_exact(len).await;
    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
    let pkid = u16::from_be_bytes([body[2 + tlen], body[3 + tlen]]);
    (first, topic, pkid, body[4 + tlen..].to_vec())
}

/// A receipt (an XMPP message with `<received/>`) for `id` seen by `client`.
async fn receipt_for(client: &mut XmppClient, id: &str) -> Value {
    client
        .wait_for(|e| e["event"] == "message" && e["received"] == id)
        .await
}

/// No receipt reaches `client` within [`QUIET`].
async fn no_receipt(client: &mut XmppClient) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(v)) = tokio::time::timeout_at(deadline, client.next_event_quiet()).await {
        assert!(v["received"].is_null(), "unexpected receipt: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_only_after_the_mqtt_subscriber_acknowledged() {
    let s = Setup::start().await;
    let mut bob = raw_bob(&s.broker).await;
    let mut alice = s.xmpp("alice", &[]).await;
    let send =
        json!({"cmd": "chat", "to": BOB, "id": "r-1", "body": "did you get it?", "receipt": true});
    alice.command(send).await;
    let (first, topic, pkid, payload) = read_publish(&mut bob).await;
    assert_eq!(first & 0x06, 0x02, "QoS 1");
    assert_eq!(topic, "users/bob/inbox/alice@localhost");
    let env: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (env["id"].as_str(), env["receipt"].as_bool()),
        (Some("r-1"), Some(true))
    );
    // The broker has the message and so does bob's socket, but bob has not acknowledged.
    no_receipt(&mut alice).await;
    bob.send(&raw::packet(0x40, &pkid.to_be_bytes())).await;
    let receipt = receipt_for(&mut alice, "r-1").await;
    assert_eq!(receipt["from"], BOB);
    let line = s.audited("receipt_sent", None).await;
    let mqtt = line.mqtt.unwrap();
    assert_eq!(
        (mqtt.client_id.as_deref(), mqtt.qos),
        (Some("bob-raw"), Some(1))
    );
    assert_eq!(
        mqtt.topic.as_deref(),
        Some("users/bob/inbox/alice@localhost")
    );
    let xmpp = line.xmpp.unwrap();
    assert_eq!(
        (xmpp.id.as_deref(), xmpp.kind.as_deref()),
        (Some("r-1"), Some("chat"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_acknowledges_produces_no_receipt() {
    let s = Setup::start().await;
    let mut bob = raw_bob(&s.broker).await;
    let mut alice = s.xmpp("alice", &[]).await;
    let send = json!({"cmd": "chat", "to": BOB, "id": "r-2", "body": "hello?", "receipt": true});
    alice.command(send).await;
    let (_, topic, _, _) = read_publish(&mut bob).await;
    assert_eq!(topic, "users/bob/inbox/alice@localhost");
    no_receipt(&mut alice).await;
    // The subscriber goes away without acknowledging (clean session): dropped, no receipt.
    drop(bob);
    s.audited("dropped", Some("session_ended")).await;
    no_receipt(&mut alice).await;
    assert!(
        s.records()
            .iter()
            .all(|l| l.outcome.as_deref() != Some("receipt_sent")),
        "{:#?}",
        s.records()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscriber_no_receipt() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let send = json!({"cmd": "chat", "to": BOB, "id": "r-3", "body": "anyone?", "receipt": true});
    alice.command(send).await;
    s.audited("dropped", Some("no_subscriber")).await;
    no_receipt(&mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_persistent_mqtt_user_gets_the_message_and_the_sender_the_receipt_after_reconnect()
{
    let s = Setup::start().await;
    let keep = ["--v311", "--client-id", "bob-tablet", "--keep-session"];
    let mut args = keep.to_vec();
    args.extend(["--sub", "users/bob/inbox/#"]);
    Paho::start(s.broker.port(), "bob", &args)
        .await
        .finish()
        .await;
    let mut alice = s.xmpp("alice", &[]).await;
    let send = json!({"cmd": "chat", "to": BOB, "id": "r-4", "body": "while you were away", "receipt": true});
    alice.command(send).await;
    no_receipt(&mut alice).await;
    let mut args = keep.to_vec();
    args.extend(["--count", "1"]);
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let m = bob.message().await;
    assert_eq!(envelope(&m)["body"], "while you were away");
    receipt_for(&mut alice, "r-4").await;
    bob.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publisher_gets_the_xmpp_receipt_on_its_response_topic() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = [
        "--sub",
        "replies/bob",
        "--pub",
        "users/bob/outbox/alice@localhost",
        r#"{"body":"ping me back","id":"q-1"}"#,
        "--response-topic",
        "replies/bob",
        "--correlation",
        "corr-7",
        "--count",
        "1",
    ];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "ping me back")
        .await;
    assert_eq!(
        (m["id"].as_str(), m["receipt_request"].as_bool()),
        (Some("q-1"), Some(true))
    );
    // slixmpp's xep_0184 answers by itself; the receipt comes back on the Response Topic.
    let r = bob.message().await;
    assert_eq!(r["topic"], "replies/bob");
    assert_eq!(r["correlation"], "corr-7");
    let v = envelope(&r);
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("receipt"), Some("q-1"))
    );
    bob.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_publisher_gets_the_xmpp_receipt_on_the_receipt_topic() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = [
        "--v311",
        "--sub",
        "users/bob/inbox/#",
        "--pub",
        "users/bob/outbox/alice@localhost",
        r#"{"body":"old client","id":"q-2"}"#,
        "--count",
        "1",
    ];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "old client")
        .await;
    let r = bob.message().await;
    assert_eq!(r["topic"], "users/bob/inbox/alice@localhost/receipt");
    let v = envelope(&r);
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("receipt"), Some("q-2"))
    );
    assert!(v["from"].as_str().unwrap().starts_with(ALICE));
    bob.finish().await;
}

/// A message from MQTT that the XMPP server bounces (no such user): the error comes back to
/// the publisher on the `error` sub-topic of its inbox, and the audit trail says `bounced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_publisher_learns_of_a_bounce_on_the_error_topic() {
    let s = Setup::start().await;
    let args = [
        "--v311",
        "--sub",
        "users/bob/inbox/#",
        "--pub",
        "users/bob/outbox/nobody@localhost",
        r#"{"body":"anyone there?","id":"b-1"}"#,
        "--count",
        "1",
    ];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let r = bob.message().await;
    assert_eq!(r["topic"], "users/bob/inbox/nobody@localhost/error");
    let v = envelope(&r);
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str(), v["to"].as_str()),
        (Some("error"), Some("b-1"), Some(BOB)),
        "{v}"
    );
    assert_eq!(v["from"], "nobody@localhost");
    assert_eq!(v["condition"], "service-unavailable", "{v}");
    let line = s.audited("bounced", None).await;
    assert!(
        line.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("service-unavailable")),
        "{line:?}"
    );
    assert_eq!(line.xmpp.as_ref().unwrap().kind.as_deref(), Some("error"));
    bob.finish().await;
}

/// An MQTT 5 publisher that set a Response Topic gets the bounce there, with its Correlation
/// Data, as it would the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publisher_gets_a_bounce_on_its_response_topic() {
    let s = Setup::start().await;
    let args = [
        "--sub",
        "replies/bob",
        "--pub",
        "users/bob/outbox/nobody@localhost",
        r#"{"body":"anyone there?","id":"b-2"}"#,
        "--response-topic",
        "replies/bob",
        "--correlation",
        "corr-9",
        "--count",
        "1",
    ];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let r = bob.message().await;
    assert_eq!(
        (r["topic"].as_str(), r["correlation"].as_str()),
        (Some("replies/bob"), Some("corr-9"))
    );
    let v = envelope(&r);
    assert_eq!(
        (
            v["type"].as_str(),
            v["id"].as_str(),
            v["condition"].as_str()
        ),
        (Some("error"), Some("b-2"), Some("service-unavailable")),
        "{v}"
    );
    s.audited("bounced", None).await;
    bob.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_ids_both_ways_as_user_property_and_envelope_field() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = ["--sub", "users/bob/inbox/#", "--count", "1"];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let send =
        json!({"cmd": "chat", "to": BOB, "id": "i-1", "origin_id": "origin-1", "body": "with ids"});
    alice.command(send).await;
    let m = bob.message().await;
    assert_eq!(user_property(&m, "origin-id"), Some("origin-1"));
    assert_eq!(envelope(&m)["origin_id"], "origin-1");
    bob.finish().await;
    let line = s.audited("published", None).await;
    assert_eq!(line.mqtt.unwrap().message_id.as_deref(), Some("origin-1"));

    let args = [
        "--pub",
        "users/bob/outbox/alice@localhost",
        r#"{"body":"mine"}"#,
        "--prop",
        "origin-id=from-mqtt-1",
    ];
    Paho::start(s.broker.port(), "bob", &args)
        .await
        .finish()
        .await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "mine")
        .await;
    assert_eq!(m["origin_id"], "from-mqtt-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_states_both_ways_on_an_ephemeral_topic() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = ["--sub", "users/bob/inbox/#", "--count", "1"];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    alice
        .command(json!({"cmd": "chat", "to": BOB, "state": "composing"}))
        .await;
    let m = bob.message().await;
    assert_eq!(m["topic"], "users/bob/inbox/alice@localhost/chatstate");
    assert_eq!(
        (m["qos"].as_u64(), m["retain"].as_bool()),
        (Some(0), Some(false))
    );
    let v = envelope(&m);
    assert_eq!(v["state"], "composing");
    assert!(v.get("body").is_none());
    bob.finish().await;

    let args = [
        "--pub",
        "users/bob/outbox/alice@localhost/chatstate",
        r#"{"state":"paused"}"#,
    ];
    Paho::start(s.broker.port(), "bob", &args)
        .await
        .finish()
        .await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && !e["state"].is_null())
        .await;
    assert_eq!(
        (m["state"].as_str(), m["from"].as_str()),
        (Some("paused"), Some(BOB))
    );
    assert_eq!(m["body"], "");
    assert_eq!(m["receipt_request"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_by_the_original_sender_are_carried() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = ["--sub", "users/bob/inbox/#", "--count", "2"];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    alice
        .command(json!({"cmd": "chat", "to": BOB, "id": "c-1", "body": "helo"}))
        .await;
    alice
        .command(json!({"cmd": "chat", "to": BOB, "id": "c-2", "body": "hello", "replaces": "c-1"}))
        .await;
    bob.message().await;
    let fixed = bob.message().await;
    assert_eq!(envelope(&fixed)["replaces"], "c-1");
    assert_eq!(user_property(&fixed, "replaces"), Some("c-1"));
    bob.finish().await;

    // MQTT -> XMPP: bob corrects his own message.
    let out = "users/bob/outbox/alice@localhost";
    Paho::start(
        s.broker.port(),
        "bob",
        &["--pub", out, r#"{"body":"tpyo","id":"b-1"}"#],
    )
    .await
    .finish()
    .await;
    let fixed = r#"{"body":"typo","id":"b-2","replaces":"b-1"}"#;
    Paho::start(s.broker.port(), "bob", &["--pub", out, fixed])
        .await
        .finish()
        .await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "typo")
        .await;
    assert_eq!(m["replaces"], "b-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_from_anyone_but_the_sender_is_refused_and_audited() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let mut carol = s.xmpp("carol", &[]).await;
    let args = [
        "--sub",
        "users/bob/inbox/#",
        "--count",
        "2",
        "--timeout",
        "3",
    ];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    alice
        .command(json!({"cmd": "chat", "to": BOB, "id": "x-1", "body": "I owe you 10"}))
        .await;
    bob.message().await;
    // XMPP -> MQTT: carol tries to rewrite alice's message.
    carol
        .command(json!({"cmd": "chat", "to": BOB, "id": "x-2", "body": "I owe you 0", "replaces": "x-1"}))
        .await;
    let err = carol.wait_for(|e| e["event"] == "error").await;
    assert_eq!(err["condition"], "not-allowed");
    let rest = bob.finish().await;
    assert!(
        rest.iter().all(|e| e["event"] != "message"),
        "carried: {rest:?}"
    );
    let line = s.audited("denied", Some("not_original_sender")).await;
    assert_eq!(
        line.xmpp
            .unwrap()
            .from
            .as_deref()
            .map(|f| f.starts_with("carol@")),
        Some(true)
    );

    // MQTT -> XMPP: bob tries to correct alice's message.
    let out = "users/bob/outbox/alice@localhost";
    let forged = r#"{"body":"you owe me 10","replaces":"x-1"}"#;
    Paho::start(s.broker.port(), "bob", &["--pub", out, forged])
        .await
        .finish()
        .await;
    let records = || s.records();
    until("two refused corrections audited", || {
        records()
            .iter()
            .filter(|l| l.reason.as_deref() == Some("not_original_sender"))
            .count()
            == 2
    })
    .await;
    alice.expect_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_subject_and_delay_both_ways() {
    let s = Setup::start().await;
    let mut alice = s.xmpp("alice", &[]).await;
    let args = ["--sub", "users/bob/inbox/#", "--count", "1"];
    let mut bob = Paho::start(s.broker.port(), "bob", &args).await;
    let send = json!({"cmd": "chat", "to": BOB, "id": "t-1", "body": "late", "thread": "th-1",
        "subject": "plans", "delay": "2026-01-02T03:04:05Z"});
    alice.command(send).await;
    let m = bob.message().await;
    let v = envelope(&m);
    assert_eq!(
        (v["thread"].as_str(), v["subject"].as_str()),
        (Some("th-1"), Some("plans"))
    );
    assert!(
        v["delay"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-02T03:04:05"),
        "{v}"
    );
    assert!(
        user_property(&m, "delay")
            .unwrap()
            .starts_with("2026-01-02T03:04:05")
    );
    bob.finish().await;

    let out = "users/bob/outbox/alice@localhost";
    let payload = r#"{"body":"written offline","thread":"th-2","subject":"re: plans","delay":"2026-01-02T05:00:00Z"}"#;
    Paho::start(s.broker.port(), "bob", &["--pub", out, payload])
        .await
        .finish()
        .await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "written offline")
        .await;
    assert_eq!(
        (m["thread"].as_str(), m["subject"].as_str()),
        (Some("th-2"), Some("re: plans"))
    );
    assert!(
        m["delay"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-02T05:00:00"),
        "{m}"
    );

    // Without a delay the message is written as bytes of the link's own (not through an XML
    // encoder): every character XML escapes, line feed, tab, and unicode in several planes
    // arrive intact in body, thread and subject. (Not a carriage return: the bridge writes
    // it as `&#xd;`, byte for byte as before, but Prosody 0.12 passes it on to the client
    // unescaped (its `util/stanza.lua` escapes only `' " < > &`) and the client's parser
    // reads it as a line feed; the unit tests of `xmpp::raw_xml` check its round trip.)
    let tricky = "a&b<c>d\"e'f\tg\nh\ni]]>k &amp; &#39; 😀 ünï 中文 \u{7f}\u{2028}\u{10FFFD}";
    for (body, thread, subject) in [
        (
            tricky.to_string(),
            format!("th {tricky}"),
            format!("re: {tricky}"),
        ),
        ("<&>\"'".to_string(), "<".to_string(), "&".to_string()),
    ] {
        let payload = json!({"body": body, "thread": thread, "subject": subject}).to_string();
        Paho::start(s.broker.port(), "bob", &["--pub", out, &payload])
            .await
            .finish()
            .await;
        let m = alice
            .wait_for(|e| e["event"] == "message" && e["body"] != "written offline")
            .await;
        assert_eq!(
            (
                m["body"].as_str(),
                m["thread"].as_str(),
                m["subject"].as_str()
            ),
            (
                Some(body.as_str()),
                Some(thread.as_str()),
                Some(subject.as_str())
            ),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mode_mqtt5_publisher_gets_the_xmpp_receipt_and_its_origin_id_crosses() {
    use common::upstream::{mosquitto, start_bridge, upstream_config, wait_upstream_connects};
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-receipts")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice =
        XmppClient::connect_script(&prosody, "alice", "clients/xmpp_chat_client.py", &[]).await;
    // The Response Topic must be one bob may read under the shipped ACL: his inbox.
    let args = [
        "--sub",
        "users/bob/inbox/#",
        "--pub",
        "users/bob/outbox/alice@localhost",
        r#"{"body":"via the cluster","id":"u-1"}"#,
        "--response-topic",
        "users/bob/inbox/replies",
        "--correlation",
        "corr-u",
        "--prop",
        "origin-id=o-u-1",
        "--count",
        "1",
    ];
    let mut bob = Paho::start(m.port(), "bob", &args).await;
    let got = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "via the cluster")
        .await;
    assert_eq!(
        (got["origin_id"].as_str(), got["receipt_request"].as_bool()),
        (Some("o-u-1"), Some(true))
    );
    let r = bob.message().await;
    assert_eq!(
        (r["topic"].as_str(), r["correlation"].as_str()),
        (Some("users/bob/inbox/replies"), Some("corr-u"))
    );
    assert_eq!(envelope(&r)["id"], "u-1");
    bob.finish().await;
    assert!(app.stop(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mode_sends_no_receipt_to_xmpp_it_cannot_know_the_subscriber_acknowledged() {
    use common::upstream::{mosquitto, start_bridge, upstream_config, wait_upstream_connects};
    let prosody = Prosody::start();
    let m = mosquitto();
    let app = start_bridge(&prosody, upstream_config(&m, "bridge-no-receipt")).await;
    wait_upstream_connects(&app, 1).await;
    let mut alice =
        XmppClient::connect_script(&prosody, "alice", "clients/xmpp_chat_client.py", &[]).await;
    let mut bob = Paho::start(
        m.port(),
        "bob",
        &["--sub", "users/bob/inbox/#", "--count", "1"],
    )
    .await;
    let send = json!({"cmd": "chat", "to": BOB, "id": "u-2", "body": "through mosquitto", "receipt": true});
    alice.command(send).await;
    let got = bob.message().await;
    assert_eq!(
        envelope(&got)["receipt"],
        true,
        "the request is carried to MQTT"
    );
    assert_eq!(
        user_property(&got, "xmpp-bridge-origin"),
        Some("mqtt.localhost")
    );
    bob.finish().await;
    // bob acknowledged to Mosquitto, but the bridge cannot see that: no receipt.
    no_receipt(&mut alice).await;
    assert!(app.stop(Duration::from_secs(5)).await);
}
