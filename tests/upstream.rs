//! Upstream mode end to end: a real Mosquitto 2.0 (Debian) as the upstream broker with the
//! shipped ACL (`docker/mosquitto/acl`), a real Prosody, slixmpp and rumqttc clients, the
//! shipped mapping rules. The bridge runs in-process, or as the built binary where a test
//! kills it.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::prosody::{COMPONENT, COMPONENT2, Prosody, SECRET, XmppClient};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig, MqttMode};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::upstream::UpstreamConfig;
use xmpp_mqtt_bridge::xmpp::{LinkState, XmppConfig};

const BRIDGE_USER: &str = "xmpp-bridge";
const BRIDGE_PASSWORD: &str = "bridgepw";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Mosquitto with the shipped ACL; MQTT users bob and carol (password `<name>pw`) and the
/// bridge's account.
fn mosquitto() -> Mosquitto {
    let acl = std::fs::read_to_string(repo("docker/mosquitto/acl")).unwrap();
    Mosquitto::start(
        &[
            (BRIDGE_USER, BRIDGE_PASSWORD),
            ("bob", "bobpw"),
            ("carol", "carolpw"),
        ],
        &acl,
    )
}

fn upstream_config(m: &Mosquitto, client_id: &str) -> UpstreamConfig {
    let mut u = UpstreamConfig::new("127.0.0.1", m.port());
    u.client_id = client_id.to_string();
    u.credentials = Some((BRIDGE_USER.into(), BRIDGE_PASSWORD.into()));
    u.reconnect_min = Duration::from_millis(100);
    u.reconnect_max = Duration::from_millis(500);
    u
}

fn xmpp_config(prosody: &Prosody, domain: &str) -> XmppConfig {
    let mut xmpp = XmppConfig::new(prosody.component_addr(), domain, prosody.secret());
    xmpp.ping_interval = Duration::from_millis(500);
    xmpp.read_timeout = Duration::from_secs(3);
    xmpp.reconnect_min = Duration::from_millis(100);
    xmpp.reconnect_max = Duration::from_millis(500);
    xmpp
}

/// The bridge in upstream mode, in this process, once its XMPP link is up.
async fn start_bridge(prosody: &Prosody, upstream: UpstreamConfig) -> App {
    let mappings = repo("mappings");
    let table = MappingTable::load_dir(&mappings, COMPONENT).unwrap();
    assert!(table.unbound_senders().is_empty());
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        broker: BrokerConfig::default(),
        mqtt: MqttMode::Upstream(Box::new(upstream)),
        bridge: Some(BridgeSettings {
            xmpp: xmpp_config(prosody, COMPONENT),
            mapping_dir: mappings,
            mapping: Arc::new(table),
        }),
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    assert!(app.broker.is_none() && app.mqtt_addrs.is_empty());
    let mut state = app.xmpp.as_ref().unwrap().subscribe_state();
    let linked = tokio::time::timeout(common::WAIT, async {
        while !matches!(*state.borrow_and_update(), LinkState::Connected) {
            if state.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(linked.is_ok(), "the component link never came up");
    app
}

/// Waits until the upstream client has connected `n` times in total.
async fn wait_upstream_connects(app: &App, n: u64) {
    let stats = app.upstream_stats.clone().unwrap();
    let deadline = Instant::now() + common::WAIT;
    while stats.connects.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "upstream client never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The SUBSCRIBE goes out right after CONNACK; give the broker a moment to apply it.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// An MQTT 3.1.1 client that survives broker restarts (persistent session, reconnects),
/// forwarding every PUBLISH it receives.
struct Mqtt {
    client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<rumqttc::Publish>,
    connacks: mpsc::UnboundedReceiver<()>,
}

impl Mqtt {
    async fn connect(m: &Mosquitto, user: &str, id: &str, subscribe: Option<&str>) -> Mqtt {
        let mut opts = MqttOptions::new(id, "127.0.0.1", m.port());
        opts.set_credentials(user, format!("{user}pw"));
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (ctx, mut connacks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if ptx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if ctx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(common::WAIT, connacks.recv())
            .await
            .expect("no CONNACK")
            .unwrap();
        if let Some(filter) = subscribe {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Mqtt {
            client,
            publishes,
            connacks,
        }
    }

    async fn publish(&self, topic: &str, body: &str) {
        let payload = serde_json::json!({ "body": body }).to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Bodies of the envelopes received until `n` distinct ones arrived (duplicates counted).
    async fn bodies(&mut self, n: usize, limit: Duration) -> (BTreeSet<String>, usize) {
        let mut seen = BTreeSet::new();
        let mut dups = 0;
        let deadline = tokio::time::Instant::now() + limit;
        while seen.len() < n {
            match tokio::time::timeout_at(deadline, self.publishes.recv()).await {
                Ok(Some(p)) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    if !seen.insert(v["body"].as_str().unwrap().to_string()) {
                        dups += 1;
                    }
                }
                _ => break,
            }
        }
        (seen, dups)
    }
}

/// Bodies starting with `prefix` of chat messages `client` receives until `n` distinct ones
/// arrived or `limit` passed, with the sender of each and the number of duplicates. Other
/// messages (at-least-once redeliveries of earlier ones) are passed over.
async fn xmpp_bodies(
    client: &mut XmppClient,
    prefix: &str,
    n: usize,
    limit: Duration,
) -> (BTreeMap<String, String>, usize) {
    let mut seen = BTreeMap::new();
    let mut dups = 0;
    let deadline = Instant::now() + limit;
    while seen.len() < n && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(v) = tokio::time::timeout(left, client.next_event_quiet()).await else {
            break;
        };
        let Some(v) = v else { break };
        if v["event"] != "message" {
            continue;
        }
        let body = v["body"].as_str().unwrap_or_default().to_string();
        if !body.starts_with(prefix) {
            continue;
        }
        let from = v["from"].as_str().unwrap_or_default().to_string();
        if seen.insert(body, from).is_some() {
            dups += 1;
        }
    }
    (seen, dups)
}

fn expected(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

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

/// A bridge process in upstream mode (the built binary), killed with SIGKILL on drop.
struct Instance {
    child: std::process::Child,
    log: PathBuf,
}

impl Instance {
    #[expect(clippy::too_many_arguments, reason = "test topology knobs")]
    fn spawn(
        dir: &Path,
        name: &str,
        prosody: &Prosody,
        m: &Mosquitto,
        domain: &str,
        client_id: &str,
        share_group: Option<&str>,
        session_expiry: &str,
    ) -> Instance {
        let share = share_group
            .map(|g| format!("share_group = \"{g}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[log]\nlevel = \"info\"\n\n\
             [mqtt]\nmode = \"upstream\"\n\n\
             [mqtt.upstream]\nserver = \"127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\n\
             username = \"{BRIDGE_USER}\"\npassword = \"{BRIDGE_PASSWORD}\"\n\
             session_expiry = \"{session_expiry}\"\nreconnect_min = \"100ms\"\n\
             reconnect_max = \"500ms\"\n{share}\n\
             [xmpp]\nserver = \"{xmpp}\"\ndomain = \"{domain}\"\nsecret = \"{SECRET}\"\n\
             ping_interval = \"500ms\"\nread_timeout = \"3s\"\nreconnect_min = \"100ms\"\n\
             reconnect_max = \"1s\"\n\n\
             [mapping]\ndir = \"{maps}\"\n",
            port = m.port(),
            xmpp = prosody.component_addr(),
            maps = repo("mappings").display(),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(common::bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Instance { child, log }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until Mosquitto's log holds `n` lines containing `needle`.
async fn wait_broker_log(m: &Mosquitto, needle: &str, n: usize) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let log = std::fs::read_to_string(m.log_path()).unwrap_or_default();
        if log.lines().filter(|l| l.contains(needle)).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the broker log:\n{}",
            m.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances on one Mosquitto, each holding its own component link, sharing the
/// MQTT -> XMPP subscriptions (`$share/bridges/...`): every message reaches XMPP exactly once,
/// both carry a part; one is killed and the other carries everything after. The session
/// expiry is 0 here, so the broker drops the dead instance's session at once (see the README
/// on what a persistent session changes for shared subscriptions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_exactly_once_and_survive_one_kill() {
    const N: usize = 40;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Instance::spawn(
        dir.path(),
        "a",
        &prosody,
        &m,
        COMPONENT,
        "bridge-a",
        Some("bridges"),
        "0s",
    );
    let b = Instance::spawn(
        dir.path(),
        "b",
        &prosody,
        &m,
        COMPONENT2,
        "bridge-b",
        Some("bridges"),
        "0s",
    );
    wait_broker_log(&m, "$share/bridges/users/+/outbox/+", 2).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
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
    let by_a = got
        .values()
        .filter(|f| f.as_str() == "bob@mqtt.localhost")
        .count();
    let by_b = got
        .values()
        .filter(|f| f.as_str() == "bob@mqtt2.localhost")
        .count();
    assert_eq!(by_a + by_b, N);
    assert!(
        by_a > 0 && by_b > 0,
        "the load was not shared: a {by_a}, b {by_b}"
    );
    eprintln!("shared: instance a carried {by_a}, instance b {by_b}");

    a.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(20)).await;
    alice.expect_no_message(Duration::from_secs(1)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(bodies, expected("m", N..2 * N), "b: {}", b.log());
    assert_eq!(dups, 0);
    assert!(
        got.values().all(|f| f == "bob@mqtt2.localhost"),
        "after the kill only b carries: {got:?}"
    );
}

/// Active/standby against Prosody, which accepts one connection per component: the standby
/// gets `<conflict/>`, keeps retrying and does not connect to MQTT; when the active one is
/// killed, the standby takes the component and resumes the MQTT session (same client id), so
/// what was published meanwhile is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_within_seconds_when_the_active_bridge_dies() {
    const N: usize = 10;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let mut active = Instance::spawn(
        dir.path(),
        "active",
        &prosody,
        &m,
        COMPONENT,
        "bridge-ha",
        None,
        "1h",
    );
    wait_broker_log(&m, "bridge-ha 1 users/+/outbox/+", 1).await;
    let standby = Instance::spawn(
        dir.path(),
        "standby",
        &prosody,
        &m,
        COMPONENT,
        "bridge-ha",
        None,
        "1h",
    );
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";
    // Let the standby meet the conflict a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        standby.log().contains("conflict"),
        "standby log:\n{}",
        standby.log()
    );
    let broker_log = std::fs::read_to_string(m.log_path()).unwrap();
    assert_eq!(
        broker_log.matches(" as bridge-ha ").count(),
        1,
        "the standby must not connect to MQTT:\n{broker_log}"
    );
    bob.publish(outbox, "before").await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "before");

    active.kill9();
    let killed = Instant::now();
    for i in 0..N {
        bob.publish(outbox, &format!("t{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "t", N, Duration::from_secs(15)).await;
    let takeover = killed.elapsed();
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        bodies,
        expected("t", 0..N),
        "standby log:\n{}",
        standby.log()
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    eprintln!("standby takeover: all {N} messages after {takeover:?}, {dups} duplicates");
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

/// Writes a CA and a server certificate for 127.0.0.1 signed by it (openssl); returns the
/// paths of the CA, the certificate and the key.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
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

/// Active/standby through an XMPP server restart: both instances race for the component when
/// it comes back; whichever wins connects to MQTT, the other stays off the broker (each is
/// connected to MQTT only while it holds the component), so they do not take the shared
/// session from each other in a loop, and messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_standby_pair_does_not_flap_over_an_xmpp_server_restart() {
    let mut prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &str, prosody: &Prosody| {
        Instance::spawn(
            dir.path(),
            name,
            prosody,
            &m,
            COMPONENT,
            "bridge-pair",
            None,
            "1h",
        )
    };
    let one = spawn("one", &prosody);
    wait_broker_log(&m, "bridge-pair 1 users/+/outbox/+", 1).await;
    let two = spawn("two", &prosody);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let connections = || {
        std::fs::read_to_string(m.log_path())
            .unwrap()
            .matches(" as bridge-pair ")
            .count()
    };
    assert_eq!(
        connections(),
        1,
        "only the active instance is on the broker"
    );

    prosody.restart();
    // Both race for the component; give the loser several of its retries (reconnect_max 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = connections();
    assert!(
        after <= 3,
        "{after} MQTT connections as bridge-pair: the pair is taking the session back and \
         forth\none:\n{}\ntwo:\n{}",
        one.log(),
        two.log()
    );
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    bob.publish("users/bob/outbox/alice@localhost", "after restart")
        .await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "after restart");
    eprintln!("MQTT connections as the pair's client id: {after} (1 before the restart)");
}

/// The bridge process killed with SIGKILL while an MQTT client keeps publishing, then started
/// again with the same client id: the persistent session hands it everything, including what
/// the killed process had received but not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_and_restarted_loses_nothing() {
    const N: usize = 20;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Instance::spawn(
            dir.path(),
            "solo",
            &prosody,
            &m,
            COMPONENT,
            "bridge-solo",
            None,
            "1h",
        )
    };
    let mut first = spawn();
    wait_broker_log(&m, "bridge-solo 1 users/+/outbox/+", 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";
    for i in 0..N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    first.kill9();
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let second = spawn();
    for i in 2 * N..3 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", 3 * N, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        got,
        expected("m", 0..3 * N),
        "lost over kill -9:\n{}",
        second.log()
    );
    eprintln!("bridge kill -9: duplicates to XMPP {dups}");
}
