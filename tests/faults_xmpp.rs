//! Fault tests of the XMPP side (issue 7): Prosody killed with SIGKILL under load, and the TCP
//! path between the bridge and Prosody cut and blackholed (through `common::proxy`), while MQTT
//! clients publish at QoS 1 toward an XMPP user. Every message the broker acknowledged must
//! reach the real slixmpp receiver, each sender's messages in order; a message may arrive twice
//! only as the same stanza (same id), and such duplicates are counted and printed.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::prosody::{Prosody, XmppClient};
use common::proxy::Proxy;
use common::{TestBroker, options};
use rumqttc::{Event, Packet, QoS};
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::xmpp::{LinkError, LinkState, XmppConfig};

/// MQTT publishers, each a user of the bridge; they write to bob.
const PUBLISHERS: [&str; 3] = ["pub0", "pub1", "pub2"];
/// The XMPP receiver.
const RECEIVER: &str = "bob";

/// The bridge in front of the component port `server` (Prosody or a proxy to it), with the
/// shipped rules, fast keepalive (ping 300 ms, read timeout 1.5 s, connect timeout 1 s) and
/// fast reconnects.
async fn start_bridge(prosody: &Prosody, server: String, users: &Path) -> TestBroker {
    for user in PUBLISHERS {
        xmpp_mqtt_bridge::broker::auth::set_user(users, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let mut xmpp = XmppConfig::new(server, prosody.component(), prosody.secret());
    xmpp.ping_interval = Duration::from_millis(300);
    xmpp.read_timeout = Duration::from_millis(1500);
    xmpp.connect_timeout = Duration::from_secs(1);
    xmpp.reconnect_min = Duration::from_millis(100);
    xmpp.reconnect_max = Duration::from_millis(500);
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let table = MappingTable::load_dir(&mappings, prosody.component()).unwrap();
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
            mapping_dir: mappings,
            mapping: Arc::new(table),
        }),
        audit: None,
        admin: None,
        presence: None,
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    TestBroker {
        addr: app.mqtt_addrs[0],
        app,
    }
}

/// Waits (up to `limit`) until `cond` holds; panics with `what` otherwise.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn link_stat(broker: &TestBroker, pick: fn(&xmpp_mqtt_bridge::xmpp::XmppStats) -> u64) -> u64 {
    pick(&broker.app.xmpp.as_ref().unwrap().stats())
}

fn connected(broker: &TestBroker) -> bool {
    matches!(
        broker.app.xmpp.as_ref().unwrap().state(),
        LinkState::Connected
    )
}

/// MQTT publishers sending `per_publisher` QoS 1 messages each to bob, one every `pace`;
/// `acked` counts the broker's PUBACKs over all of them.
struct Load {
    acked: Arc<AtomicU64>,
    /// The first MQTT connection error of a publisher (the broker never goes away here).
    failed: Arc<std::sync::Mutex<Option<String>>>,
    total: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(broker: &TestBroker, per_publisher: u64, pace: Duration) -> Load {
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let mut tasks = Vec::new();
        for user in PUBLISHERS {
            let mut opts = options(broker.addr, &format!("{user}-phone"));
            opts.set_credentials(user, format!("{user}pw"));
            let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let acks = acked.clone();
            let failed = failed.clone();
            tasks.push(tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let mut first = failed.lock().unwrap();
                            first.get_or_insert(format!("{user}: {e}"));
                            return;
                        }
                    }
                }
            }));
            tokio::time::timeout(common::WAIT, ready)
                .await
                .expect("CONNACK in time")
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let topic = format!("users/{user}/outbox/{RECEIVER}@localhost");
                for n in 0..per_publisher {
                    let payload = serde_json::json!({ "body": format!("{user}-{n}") });
                    client
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_string())
                        .await
                        .unwrap();
                    tokio::time::sleep(pace).await;
                }
            }));
        }
        Load {
            acked,
            failed,
            total: per_publisher * PUBLISHERS.len() as u64,
            tasks,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until the broker acknowledged every message, then until the XMPP server confirmed
    /// as many to the bridge.
    async fn finish(&self, broker: &TestBroker, limit: Duration) {
        until("every PUBACK", limit, || {
            if let Some(e) = &*self.failed.lock().unwrap() {
                panic!("MQTT connection failed: {e}");
            }
            self.acked() == self.total
        })
        .await;
        let stats = broker.app.bridge_stats.clone().unwrap();
        until("every message confirmed by the XMPP server", limit, || {
            stats.to_xmpp_confirmed.load(Ordering::Relaxed) >= self.total
        })
        .await;
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the receiver got: every acknowledged message at least once, each publisher's in order
/// of first arrival, and a repeat only as the same stanza. Returns the number of duplicates.
async fn check_receiver(bob: &mut XmppClient, per_publisher: u64) -> u64 {
    let total = per_publisher * PUBLISHERS.len() as u64;
    // body -> (stanza id, copies)
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut next: BTreeMap<&str, u64> = PUBLISHERS.iter().map(|p| (*p, 0)).collect();
    let mut duplicates = 0;
    let mut take = |m: serde_json::Value, seen: &mut BTreeMap<String, (String, u64)>| {
        let body = m["body"].as_str().unwrap().to_string();
        let id = m["id"].as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty(), "message without an id: {m}");
        if let Some((first_id, copies)) = seen.get_mut(&body) {
            assert_eq!(*first_id, id, "{body} came twice as different stanzas");
            *copies += 1;
            duplicates += 1;
            return;
        }
        let (user, n) = body.rsplit_once('-').unwrap();
        let n: u64 = n.parse().unwrap();
        let want = next.get_mut(user).unwrap();
        assert_eq!(
            n, *want,
            "{user}'s messages out of order: {body} before {user}-{want}"
        );
        *want += 1;
        seen.insert(body, (id, 1));
    };
    while (seen.len() as u64) < total {
        let m = bob.wait_for(|e| e["event"] == "message").await;
        take(m, &mut seen);
    }
    // Late copies, if any, come within a second.
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(m) =
        tokio::time::timeout_at(quiet, bob.wait_for(|e| e["event"] == "message")).await
    {
        take(m, &mut seen);
    }
    assert_eq!(seen.len() as u64, total);
    duplicates
}

/// Prosody is killed with SIGKILL while three MQTT clients publish toward bob, and started
/// again on the same ports: the bridge reconnects, resends what Prosody had not confirmed, and
/// every acknowledged message reaches bob in order. Bob logs in afterwards and gets them from
/// Prosody's offline store: a receiver online during the kill would lose what Prosody had taken
/// but not yet written to it, which no bridge can prevent (XMPP has no end-to-end
/// acknowledgement; stream resumption does not survive a server restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_killed_under_load_loses_nothing_acknowledged() {
    const PER_PUBLISHER: u64 = 150;
    let mut prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_bridge(
        &prosody,
        prosody.component_addr(),
        &tmp.path().join("users"),
    )
    .await;
    until("the link", common::WAIT, || connected(&broker)).await;

    let load = Load::start(&broker, PER_PUBLISHER, Duration::from_millis(4)).await;
    until("a third acknowledged", common::WAIT, || {
        load.acked() >= load.total / 3
    })
    .await;
    let confirmed_before = broker
        .app
        .bridge_stats
        .as_ref()
        .unwrap()
        .to_xmpp_confirmed
        .load(Ordering::Relaxed);
    prosody.kill9();
    let killed = Instant::now();
    until("the bridge to see the link go", common::WAIT, || {
        !connected(&broker)
    })
    .await;
    let noticed = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    prosody.start_again();
    until("the link back", common::WAIT, || connected(&broker)).await;
    let back = killed.elapsed();
    load.finish(&broker, Duration::from_secs(30)).await;
    assert!(link_stat(&broker, |s| s.connects.load(Ordering::Relaxed)) >= 2);
    assert_eq!(
        link_stat(&broker, |s| s.given_up.load(Ordering::Relaxed)),
        0
    );

    let mut bob = XmppClient::connect(&prosody, RECEIVER).await;
    let duplicates = check_receiver(&mut bob, PER_PUBLISHER).await;
    eprintln!(
        "kill -9 of Prosody after {confirmed_before} of {} confirmed: link down noticed in \
         {noticed:?}, back after {back:?}; {} stanzas resent; bob got all {}, {duplicates} \
         duplicate(s) (same stanza id)",
        load.total,
        link_stat(&broker, |s| s.resent.load(Ordering::Relaxed)),
        load.total,
    );
    bob.quit().await;
    assert!(broker.stop().await, "clean shutdown");
}

/// The bridge reaches Prosody through a proxy. Mid-traffic the proxy first resets the
/// connection, then blackholes it (no byte passes, nothing closes): the bridge notices the
/// reset at once and the blackhole by its keepalive (no pong within the read timeout),
/// reconnects each time, and every acknowledged message reaches bob (online throughout), in
/// order, duplicates only as the same stanza.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_blackholed_link_to_prosody_loses_nothing_acknowledged() {
    const PER_PUBLISHER: u64 = 300;
    let prosody = Prosody::start();
    let proxy = Proxy::start(prosody.component_addr().parse().unwrap()).await;
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_bridge(&prosody, proxy.addr.to_string(), &tmp.path().join("users")).await;
    until("the link", common::WAIT, || connected(&broker)).await;
    let mut bob = XmppClient::connect(&prosody, RECEIVER).await;

    let load = Load::start(&broker, PER_PUBLISHER, Duration::from_millis(10)).await;
    let disconnects = || link_stat(&broker, |s| s.disconnects.load(Ordering::Relaxed));

    // 1. A reset.
    until("a quarter acknowledged", common::WAIT, || {
        load.acked() >= load.total / 4
    })
    .await;
    proxy.cut();
    until("the reset noticed", common::WAIT, || disconnects() >= 1).await;
    until("the link back after the reset", common::WAIT, || {
        connected(&broker)
    })
    .await;

    // 2. A blackhole: only the keepalive can tell.
    until("half acknowledged", common::WAIT, || {
        load.acked() >= load.total / 2
    })
    .await;
    // Counted from here: under load a keepalive may already have ended the link once more
    // since the reset (it came back), and that one is not the blackhole's.
    let before_hole = disconnects();
    proxy.blackhole();
    let holed = Instant::now();
    until("the blackhole noticed", common::WAIT, || {
        disconnects() > before_hole
    })
    .await;
    let noticed = holed.elapsed();
    match broker.app.xmpp.as_ref().unwrap().state() {
        LinkState::Disconnected { cause, .. } => assert!(
            matches!(
                *cause,
                LinkError::PongTimeout(_) | LinkError::ReadTimeout(_)
            ),
            "the blackhole ended the link with {cause}"
        ),
        // Already trying again (held by the blackhole).
        LinkState::Connecting => {}
        other => panic!("link state {other:?} during the blackhole"),
    }
    // Attempts during the blackhole are held and time out; none gets through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!connected(&broker), "connected through a blackhole");
    proxy.forward();
    until("the link back after the blackhole", common::WAIT, || {
        connected(&broker)
    })
    .await;

    load.finish(&broker, Duration::from_secs(30)).await;
    assert_eq!(
        link_stat(&broker, |s| s.given_up.load(Ordering::Relaxed)),
        0
    );
    let duplicates = check_receiver(&mut bob, PER_PUBLISHER).await;
    eprintln!(
        "proxy cut and blackhole: blackhole noticed after {noticed:?} (read timeout 1.5 s); \
         {} connects, {} failed attempts, {} stanzas resent; bob got all {}, {duplicates} \
         duplicate(s) (same stanza id); proxy accepted {}, cut {}",
        link_stat(&broker, |s| s.connects.load(Ordering::Relaxed)),
        link_stat(&broker, |s| s.connect_failures.load(Ordering::Relaxed)),
        link_stat(&broker, |s| s.resent.load(Ordering::Relaxed)),
        load.total,
        proxy.accepted(),
        proxy.cut_connections(),
    );
    assert!(
        noticed < Duration::from_millis(1500 + 1000),
        "blackhole noticed only after {noticed:?}"
    );
    bob.quit().await;
    assert!(broker.stop().await, "clean shutdown");
}
