//! Audit and metrics end to end: a real Prosody, real XMPP clients (slixmpp), real MQTT
//! clients (rumqttc), the shipped mapping rules; then assertions on the audit files (one
//! record per message, outcomes, hash chain) and on `/metrics`, `/healthz`, `/readyz` scraped
//! over HTTP from the admin listener.
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
use common::{TestBroker, options};
use rumqttc::QoS;

use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::audit::record::Line;
use xmpp_mqtt_bridge::audit::{AuditConfig, PayloadPolicy, query, verify};
use xmpp_mqtt_bridge::bridge::events::WhenFull;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::telemetry::admin::AdminConfig;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

fn shipped_mappings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

/// The bridge attached to `prosody` with the shipped rules, audit as `audit`, the admin
/// listener on a free port, users alice/bob/carol with password `<name>pw`.
async fn start_bridge(prosody: &Prosody, users: &Path, audit: AuditConfig) -> TestBroker {
    for user in ["alice", "bob", "carol"] {
        xmpp_mqtt_bridge::broker::auth::set_user(users, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let mut xmpp = XmppConfig::new(
        prosody.component_addr(),
        prosody.component(),
        prosody.secret(),
    );
    xmpp.ping_interval = Duration::from_millis(300);
    xmpp.read_timeout = Duration::from_secs(3);
    xmpp.reconnect_min = Duration::from_millis(100);
    xmpp.reconnect_max = Duration::from_millis(500);
    let table = MappingTable::load_dir(&shipped_mappings(), prosody.component()).unwrap();
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        broker: BrokerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            sys_interval: None,
            password_file: Some(users.to_path_buf()),
            ..BrokerConfig::default()
        },
        mqtt: xmpp_mqtt_bridge::config::MqttMode::Embedded,
        bridge: Some(BridgeSettings {
            xmpp,
            mapping_dir: shipped_mappings(),
            mapping: Arc::new(table),
        }),
        audit: Some(audit),
        admin: Some(AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
        presence: None,
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    TestBroker {
        addr: app.mqtt_addrs[0],
        app,
    }
}

/// An MQTT client logged in as `user`. Says why when there is no CONNACK; a connection
/// error (rumqttc gives up after 5 s, which a loaded machine running Prosody and three
/// bridges has hit) is retried once.
async fn mqtt_user(broker: &TestBroker, user: &str, id: &str) -> common::Client {
    let mut last = String::new();
    for _ in 0..2 {
        let mut opts = options(broker.addr, id);
        opts.set_credentials(user, format!("{user}pw"));
        let (client, eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let mut c = common::spawn_loop(client, eventloop);
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, c.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))) => return c,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => last = e,
                Ok(None) => last = "event loop ended".into(),
                Err(_) => last = "timed out".into(),
            }
            break;
        }
    }
    panic!("{user} got no CONNACK: {last}");
}

/// Polls until `cond` holds, or fails the test.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_linked(broker: &TestBroker) {
    let xmpp = broker.app.xmpp.clone().unwrap();
    until("the component link is up", || {
        matches!(xmpp.state(), xmpp_mqtt_bridge::xmpp::LinkState::Connected)
    })
    .await;
}

fn records(dir: &Path) -> Vec<Line> {
    query::read_all(dir)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.kind == "record")
        .collect()
}

/// The metric names in the expressions of docker/grafana-dashboard.json.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if ["bridge_", "mqtt_", "xmpp_", "audit_"]
                    .iter()
                    .any(|p| word.starts_with(p))
                {
                    names.insert(word.to_string());
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_audited_and_counted() {
    let prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut audit = AuditConfig::new(dir.clone());
    audit.payload = PayloadPolicy::HashOnly;
    audit
        .rules
        .insert("chat-outbox".into(), PayloadPolicy::Full);
    let broker = start_bridge(&prosody, &tmp.path().join("users"), audit).await;
    wait_linked(&broker).await;
    let admin = broker.app.admin_addr.unwrap();
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob = mqtt_user(&broker, "bob", "bob-phone").await;
    bob.subscribe("users/bob/inbox/#", QoS::AtLeastOnce).await;

    // 5 chats XMPP -> MQTT, each received.
    for i in 0..5 {
        alice
            .send_chat(
                "bob@mqtt.localhost",
                &format!("x{i}"),
                &format!("hello {i}"),
            )
            .await;
    }
    for _ in 0..5 {
        bob.next_publish().await;
    }
    // 3 answers MQTT -> XMPP, each received.
    for i in 0..3 {
        let body = serde_json::json!({ "body": format!("answer {i}") }).to_string();
        bob.publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            body.as_bytes(),
        )
        .await;
    }
    alice.messages(3).await;
    // Refused: carol speaking on bob's outbox (broker-side guard), a message to the bare
    // bridge domain (no rule: <item-not-found/>), a headline to bob (no rule for the type).
    let carol = mqtt_user(&broker, "carol", "carol-x").await;
    carol
        .publish(
            "users/bob/outbox/alice@localhost",
            QoS::AtLeastOnce,
            false,
            br#"{"body":"I am bob"}"#,
        )
        .await;
    alice
        .send_raw("<message to='mqtt.localhost' type='chat' id='nr'><body>x</body></message>")
        .await;
    let err = alice.wait_for(|e| e["event"] == "error").await;
    assert_eq!(err["condition"], "item-not-found");
    alice
        .send_raw(
            "<message to='bob@mqtt.localhost' type='headline' id='hl'><body>x</body></message>",
        )
        .await;

    // 5 published + 3 delivered (after the server confirmed them) + 3 refusals.
    let stats = broker.app.audit.clone().unwrap();
    until("11 audit records written", || {
        stats.records_written.load(Ordering::Relaxed) == 11
    })
    .await;

    // The broker's gauges are sampled once a second: wait for a sample with every session.
    let gauges = broker.app.broker_stats.clone();
    until("the gauges sampled", || {
        gauges.gauges.sessions.load(Ordering::Relaxed) == 3
    })
    .await;

    // /metrics after the known load.
    let (status, m) = common::http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let s = |series: &str| common::metric(&m, series).unwrap_or_else(|| panic!("{series} in\n{m}"));
    assert_eq!(
        s(
            r#"bridge_messages_total{direction="xmpp_to_mqtt",outcome="published",rule="chat-inbox"}"#
        ),
        5.0
    );
    assert_eq!(
        s(
            r#"bridge_messages_total{direction="mqtt_to_xmpp",outcome="delivered",rule="chat-outbox"}"#
        ),
        3.0
    );
    assert_eq!(
        s(
            r#"bridge_messages_not_carried_total{direction="mqtt_to_xmpp",outcome="denied",reason="not_your_topic"}"#
        ),
        1.0
    );
    assert_eq!(
        s(
            r#"bridge_messages_not_carried_total{direction="xmpp_to_mqtt",outcome="denied",reason="no_rule"}"#
        ),
        1.0
    );
    assert_eq!(
        s(
            r#"bridge_messages_not_carried_total{direction="xmpp_to_mqtt",outcome="dropped",reason="not_carried"}"#
        ),
        1.0
    );
    assert_eq!(
        s(r#"bridge_translation_duration_seconds_count{direction="xmpp_to_mqtt"}"#),
        5.0
    );
    assert_eq!(
        s(r#"bridge_translation_duration_seconds_count{direction="mqtt_to_xmpp"}"#),
        3.0
    );
    assert_eq!(s("audit_records_written_total"), 11.0);
    assert_eq!(s("audit_writable"), 1.0);
    assert_eq!(s("audit_queue_depth"), 0.0);
    assert_eq!(s("xmpp_link_up"), 1.0);
    assert_eq!(s("xmpp_link_connects_total"), 1.0);
    // bob, carol and the bridge's own in-process session.
    assert_eq!(s("mqtt_connections"), 3.0);
    assert_eq!(s("mqtt_sessions"), 3.0);
    // At least the bridge's own filter (the shipped outbox rule).
    assert!(s("mqtt_subscriptions") >= 1.0);
    assert_eq!(s("mqtt_retained_messages"), 0.0);
    assert_eq!(s("mqtt_inflight_messages") + s("mqtt_queued_messages"), 0.0);
    // Everything toward XMPP was confirmed (the delivered records above).
    assert_eq!(s("xmpp_outbound_queue_stanzas"), 0.0);
    assert_eq!(s("mqtt_publishes_refused_total"), 1.0);
    assert!(s("mqtt_messages_received_total") >= 4.0);
    assert!(s("mqtt_received_bytes_total") > 0.0);
    assert!(
        !m.contains("bob-phone") && !m.contains("alice@"),
        "no per-client labels"
    );
    // Every metric the shipped Grafana dashboard queries is exposed.
    let used = dashboard_metrics();
    assert!(used.len() >= 20, "{used:?}");
    for name in used {
        assert!(
            m.lines().any(|l| l.starts_with(&name)),
            "the dashboard uses `{name}`, which /metrics does not expose"
        );
    }
    assert_eq!(
        common::http_get(admin, "/healthz").await,
        (200, "alive\n".into())
    );
    let (status, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("xmpp: ok") && body.contains("audit: ok"),
        "{body}"
    );
    assert_eq!(common::http_get(admin, "/nope").await.0, 404);

    // The trail: one record per message, right outcomes, chain intact after shutdown.
    drop(alice);
    assert!(broker.stop().await);
    let report = verify::verify(&dir).unwrap();
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.records, 11);
    let rs = records(&dir);
    let seqs: Vec<u64> = rs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    let published: Vec<&Line> = rs
        .iter()
        .filter(|r| r.outcome.as_deref() == Some("published"))
        .collect();
    assert_eq!(published.len(), 5);
    for (i, r) in published.iter().enumerate() {
        let x = r.xmpp.as_ref().unwrap();
        assert_eq!(x.id.as_deref(), Some(&*format!("x{i}")), "in order");
        assert!(x.from.as_deref().unwrap().starts_with("alice@localhost"));
        assert_eq!(x.to.as_deref(), Some("bob@mqtt.localhost"));
        assert_eq!(x.kind.as_deref(), Some("chat"));
        let mq = r.mqtt.as_ref().unwrap();
        assert_eq!(mq.topic.as_deref(), Some("users/bob/inbox/alice@localhost"));
        assert_eq!(mq.qos, Some(1));
        assert_eq!(r.rule.as_deref(), Some("chat-inbox"));
        assert_eq!(r.dir.as_deref(), Some("xmpp_to_mqtt"));
        // hash-only: the SHA-256 of the JSON envelope, not the envelope.
        assert!(r.payload.is_none() && r.sha256.as_ref().unwrap().len() == 64);
    }
    let delivered: Vec<&Line> = rs
        .iter()
        .filter(|r| r.outcome.as_deref() == Some("delivered"))
        .collect();
    assert_eq!(delivered.len(), 3);
    for (i, r) in delivered.iter().enumerate() {
        let want = serde_json::json!({ "body": format!("answer {i}") }).to_string();
        assert_eq!(
            r.payload.as_deref(),
            Some(&*want),
            "full policy for chat-outbox"
        );
        let mq = r.mqtt.as_ref().unwrap();
        assert_eq!(mq.client_id.as_deref(), Some("bob-phone"));
        assert_eq!(
            r.xmpp.as_ref().unwrap().from.as_deref(),
            Some("bob@mqtt.localhost")
        );
        assert_eq!(
            r.xmpp.as_ref().unwrap().to.as_deref(),
            Some("alice@localhost")
        );
    }
    let denied: Vec<(&str, Option<&str>)> = rs
        .iter()
        .filter(|r| matches!(r.outcome.as_deref(), Some("denied" | "dropped")))
        .map(|r| (r.reason.as_deref().unwrap(), r.dir.as_deref()))
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    for want in [
        ("not_your_topic", Some("mqtt_to_xmpp")),
        ("no_rule", Some("xmpp_to_mqtt")),
        ("not_carried", Some("xmpp_to_mqtt")),
    ] {
        assert!(denied.contains(&want), "{want:?} in {denied:?}");
    }
    let carol_record = rs
        .iter()
        .find(|r| r.reason.as_deref() == Some("not_your_topic"))
        .unwrap();
    assert!(carol_record.detail.as_deref().unwrap().contains("carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_trail_fails_readiness_refuses_traffic_and_recovers() {
    let prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    // The trail folder's parent is a regular file: nothing can be created there (this works
    // as root too, where permission bits would not stop the writer).
    let blocker = tmp.path().join("disk");
    std::fs::write(&blocker, "not a folder").unwrap();
    let dir = blocker.join("audit");
    let mut audit = AuditConfig::new(dir.clone());
    audit.queue_depth = 2;
    audit.when_full = WhenFull::Refuse;
    let broker = start_bridge(&prosody, &tmp.path().join("users"), audit).await;
    wait_linked(&broker).await;
    let admin = broker.app.admin_addr.unwrap();
    let (status, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit: FAIL"), "{body}");
    assert!(
        body.contains("xmpp: ok") && body.contains("broker: ok"),
        "{body}"
    );
    assert_eq!(common::http_get(admin, "/healthz").await.0, 200);

    // Traffic: the writer holds one batch and retries, the queue (2) fills, then the bridge
    // refuses new XMPP messages with <resource-constraint/>. Nothing is lost silently.
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob = mqtt_user(&broker, "bob", "bob-phone").await;
    bob.subscribe("users/bob/inbox/#", QoS::AtLeastOnce).await;
    let mut refused: u32 = 0;
    let mut carried: u32 = 0;
    for i in 0..8 {
        alice
            .send_chat(
                "bob@mqtt.localhost",
                &format!("r{i}"),
                "while the disk is gone",
            )
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while refused + carried < 8 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            e = alice.next_event() => if e["event"] == "error" {
                assert_eq!(e["condition"], "resource-constraint", "{e}");
                refused += 1;
            },
            _ = bob.next_publish() => carried += 1,
        }
    }
    assert_eq!(
        refused + carried,
        8,
        "each message either crossed or was refused"
    );
    assert!(
        refused >= 1 && carried >= 1,
        "refused {refused}, carried {carried}"
    );
    let (_, m) = common::http_get(admin, "/metrics").await;
    assert_eq!(common::metric(&m, "audit_writable"), Some(0.0));
    assert!(common::metric(&m, "audit_write_errors_total").unwrap() >= 1.0);
    assert_eq!(
        common::metric(
            &m,
            r#"bridge_messages_not_carried_total{direction="xmpp_to_mqtt",outcome="denied",reason="audit_queue_full"}"#
        ),
        Some(f64::from(refused))
    );

    // The disk comes back: readiness returns and every carried message gets its record.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    until("/readyz is 200 again", || {
        broker.app.audit.as_ref().unwrap().is_writable()
    })
    .await;
    let stats = broker.app.audit.clone().unwrap();
    until("every carried message audited", || {
        stats.records_written.load(Ordering::Relaxed) == u64::from(carried)
    })
    .await;
    assert_eq!(common::http_get(admin, "/readyz").await.0, 200);
    // The link going down fails readiness too.
    drop(alice);
    let mut prosody = prosody;
    prosody.stop();
    let xmpp = broker.app.xmpp.clone().unwrap();
    until("the link is down", || {
        !matches!(xmpp.state(), xmpp_mqtt_bridge::xmpp::LinkState::Connected)
    })
    .await;
    let (status, body) = common::http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("xmpp: FAIL"), "{body}");
    assert!(broker.stop().await);
    let report = verify::verify(&dir).unwrap();
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.records, u64::from(carried));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_back_pressure_a_failing_trail_holds_traffic_until_it_recovers() {
    let prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("disk");
    std::fs::write(&blocker, "not a folder").unwrap();
    let dir = blocker.join("audit");
    let mut audit = AuditConfig::new(dir.clone());
    audit.queue_depth = 2;
    audit.when_full = WhenFull::Block;
    let broker = start_bridge(&prosody, &tmp.path().join("users"), audit).await;
    wait_linked(&broker).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let mut bob = mqtt_user(&broker, "bob", "bob-phone").await;
    bob.subscribe("users/bob/inbox/#", QoS::AtLeastOnce).await;
    for i in 0..8 {
        alice
            .send_chat("bob@mqtt.localhost", &format!("b{i}"), "held")
            .await;
    }
    // The writer holds the batch it took (at most the queue's 2), the queue 2 more, and the
    // bridge waits on the next one's record, taking nothing else meanwhile: at most 5 cross.
    let mut early = 0;
    let quiet = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(p) = tokio::time::timeout_at(quiet, bob.next_publish()).await {
        let _ = p;
        early += 1;
    }
    assert!(
        early <= 5,
        "{early} messages crossed while the trail could not be written"
    );
    alice.expect_no_message(Duration::from_millis(100)).await;
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    for _ in early..8 {
        bob.next_publish().await;
    }
    let stats = broker.app.audit.clone().unwrap();
    until("all 8 audited", || {
        stats.records_written.load(Ordering::Relaxed) == 8
    })
    .await;
    drop(alice);
    assert!(broker.stop().await);
    let ids: Vec<String> = records(&dir)
        .iter()
        .map(|r| r.xmpp.as_ref().unwrap().id.clone().unwrap())
        .collect();
    assert_eq!(ids, (0..8).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert!(verify::verify(&dir).unwrap().ok());
}
