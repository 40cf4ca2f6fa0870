//! Shared by the upstream-mode tests: Mosquitto with the shipped ACL, the bridge in upstream
//! mode in-process or as the built binary, MQTT clients that survive broker restarts.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "test harness: a failed unwrap is a failed test; cleanup is best effort"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig, MqttMode};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::upstream::UpstreamConfig;
use xmpp_mqtt_bridge::xmpp::{LinkState, XmppConfig};

use super::mosquitto::Mosquitto;
use super::prosody::{COMPONENT, Prosody, SECRET, XmppClient, XmppServer};

pub const BRIDGE_USER: &str = "xmpp-bridge";
pub const BRIDGE_PASSWORD: &str = "bridgepw";

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Mosquitto with the shipped ACL; MQTT users bob and carol (password `<name>pw`) and the
/// bridge's account.
pub fn mosquitto() -> Mosquitto {
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

pub fn upstream_config(m: &Mosquitto, client_id: &str) -> UpstreamConfig {
    let mut u = UpstreamConfig::new("127.0.0.1", m.port());
    u.client_id = client_id.to_string();
    u.credentials = Some((BRIDGE_USER.into(), BRIDGE_PASSWORD.into()));
    u.reconnect_min = Duration::from_millis(100);
    u.reconnect_max = Duration::from_millis(500);
    u
}

pub fn xmpp_config(prosody: &Prosody, domain: &str) -> XmppConfig {
    let mut xmpp = XmppConfig::new(prosody.component_addr(), domain, prosody.secret());
    xmpp.ping_interval = Duration::from_millis(500);
    xmpp.read_timeout = Duration::from_secs(3);
    xmpp.reconnect_min = Duration::from_millis(100);
    xmpp.reconnect_max = Duration::from_millis(500);
    xmpp
}

/// The bridge in upstream mode, in this process, once its XMPP link is up.
pub async fn start_bridge(prosody: &Prosody, upstream: UpstreamConfig) -> App {
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
        audit: None,
        admin: None,
        presence: None,
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    let app = App::start(config).await.unwrap();
    assert!(app.broker.is_none() && app.mqtt_addrs.is_empty());
    let mut state = app.xmpp.as_ref().unwrap().subscribe_state();
    let linked = tokio::time::timeout(super::WAIT, async {
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
pub async fn wait_upstream_connects(app: &App, n: u64) {
    let stats = app.upstream_stats.clone().unwrap();
    let deadline = Instant::now() + super::WAIT;
    while stats.connects.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "upstream client never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The SUBSCRIBE goes out right after CONNACK; give the broker a moment to apply it.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// An MQTT 3.1.1 client that survives broker restarts (persistent session, reconnects),
/// forwarding every PUBLISH it receives.
pub struct Mqtt {
    pub client: AsyncClient,
    pub publishes: mpsc::UnboundedReceiver<rumqttc::Publish>,
    pub connacks: mpsc::UnboundedReceiver<()>,
}

impl Mqtt {
    pub async fn connect(m: &Mosquitto, user: &str, id: &str, subscribe: Option<&str>) -> Mqtt {
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
        tokio::time::timeout(super::WAIT, connacks.recv())
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

    pub async fn publish(&self, topic: &str, body: &str) {
        let payload = serde_json::json!({ "body": body }).to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Bodies of the envelopes received until `n` distinct ones arrived (duplicates counted).
    pub async fn bodies(&mut self, n: usize, limit: Duration) -> (BTreeSet<String>, usize) {
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
pub async fn xmpp_bodies(
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

pub fn expected(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// A bridge process in upstream mode (the built binary), killed with SIGKILL on drop.
pub struct Instance {
    child: std::process::Child,
    log: PathBuf,
}

impl Instance {
    #[expect(clippy::too_many_arguments, reason = "test topology knobs")]
    pub fn spawn(
        dir: &Path,
        name: &str,
        prosody: &impl XmppServer,
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
             [mapping]\ndir = \"{maps}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            port = m.port(),
            xmpp = prosody.component_addr(),
            maps = repo("mappings").display(),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(super::bin())
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

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until Mosquitto's log holds `n` lines containing `needle`.
pub async fn wait_broker_log(m: &Mosquitto, needle: &str, n: usize) {
    let deadline = Instant::now() + super::WAIT;
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

/// Writes a CA and a server certificate for 127.0.0.1 signed by it (openssl); returns the
/// paths of the CA, the certificate and the key.
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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
