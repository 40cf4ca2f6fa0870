//! Test harness: the broker in-process on a free loopback port, real MQTT clients (rumqttc,
//! raw sockets with hand-written bytes, mosquitto_pub/sub, Python paho-mqtt).
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the harness

pub mod certs;
pub mod ejabberd;
pub mod mosquitto;
pub mod paho;
pub mod paho_chat;
pub mod process;
pub mod prosody;
pub mod proxy;
pub mod raw;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{Config, LogConfig};

/// Time any single expectation may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker running in this process.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub app: App,
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn stop(self) -> bool {
        self.app.stop(Duration::from_secs(5)).await
    }
}

/// Logs go to the test output when RUST_LOG is set.
fn init_logs() {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
    xmpp_mqtt_bridge::telemetry::init(&LogConfig {
        level,
        ..LogConfig::default()
    });
}

/// Starts a broker on 127.0.0.1 with a free port; `tune` adjusts the settings.
pub async fn start_broker(tune: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    init_logs();
    let mut broker = BrokerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        sys_interval: None,
        ..BrokerConfig::default()
    };
    tune(&mut broker);
    let config = Config {
        log: LogConfig::default(),
        broker,
        mqtt: xmpp_mqtt_bridge::config::MqttMode::Embedded,
        bridge: None,
        audit: None,
        admin: None,
        presence: None,
    };
    let app = App::start(config).await.expect("broker starts");
    TestBroker {
        addr: app.mqtt_addrs[0],
        app,
    }
}

/// A rumqttc client whose event loop runs in a task; incoming PUBLISHes and every event
/// arrive on channels.
pub struct Client {
    pub client: AsyncClient,
    pub publishes: mpsc::UnboundedReceiver<Publish>,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

/// Connects and waits for CONNACK; panics when the broker refuses.
pub async fn connect(addr: SocketAddr, id: &str) -> Client {
    connect_with(options(addr, id)).await
}

pub async fn connect_with(opts: MqttOptions) -> Client {
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let mut c = spawn_loop(client, eventloop);
    let ack = c
        .wait_event(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
        .await;
    assert!(ack.is_some(), "no CONNACK");
    c
}

pub fn spawn_loop(client: AsyncClient, mut eventloop: EventLoop) -> Client {
    let (ptx, publishes) = mpsc::unbounded_channel();
    let (etx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if let Event::Incoming(Packet::Publish(p)) = &event {
                        let _ = ptx.send(p.clone());
                    }
                    if etx.send(Ok(event)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = etx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Client {
        client,
        publishes,
        events,
    }
}

impl Client {
    /// Waits for an event matching `pred`; `None` when the loop ended or time ran out.
    pub async fn wait_event(&mut self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(e))) if pred(&e) => return Some(e),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Waits for the connection to fail; returns the error text.
    pub async fn wait_error(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Err(e))) => return Some(e),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        let ack = self
            .wait_event(|e| matches!(e, Event::Incoming(Packet::SubAck(_))))
            .await;
        assert!(ack.is_some(), "no SUBACK for {filter}");
    }

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
    }

    /// The next PUBLISH, or panics after [`WAIT`].
    pub async fn next_publish(&mut self) -> Publish {
        tokio::time::timeout(WAIT, self.publishes.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("event loop alive")
    }

    /// Asserts that no PUBLISH arrives within `quiet`.
    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        if let Ok(Some(p)) = tokio::time::timeout(quiet, self.publishes.recv()).await {
            panic!("unexpected PUBLISH on {}: {:?}", p.topic, p.payload);
        }
    }

    pub async fn disconnect(&mut self) {
        self.client.disconnect().await.unwrap();
        let _ = self.wait_error().await;
    }
}

/// The built binary (cargo builds it for integration tests).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xmpp-mqtt-bridge"))
}

/// Runs a command with a time limit, returning its output; panics when it cannot start.
/// A child still running at the limit is killed (its output so far is returned). Output is
/// drained while it runs, so a chatty child cannot block on a full pipe.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            // Not reaped yet (its waiter is still blocked), so the pid is still this child's.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            rx.recv().expect("waiter thread").expect("wait for child")
        }
    }
}

/// The Python interpreter with paho-mqtt (set by scripts/test.sh), else `python3`.
pub fn python() -> String {
    std::env::var("TEST_PYTHON_FOR_BRIDGE").unwrap_or_else(|_| "python3".into())
}

/// Path of a file under tests/.
pub fn test_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// A free TCP port on 127.0.0.1 for a child process that needs its port before it starts.
///
/// Handed out from below the kernel's ephemeral range, once per process: a port the kernel
/// picks for `bind(0)` can be given again, or taken by an outgoing connection (the storm test
/// makes thousands), in the moment between this check and the child's own bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = port_pool();
    let span = hi - lo;
    // Start where this process's id points, so that two test processes rarely meet.
    let _first = NEXT.compare_exchange(
        0,
        1 + std::process::id() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = lo + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// Ports outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn port_pool() -> (u32, u32) {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok());
    let (lo, hi) = (parts.next().unwrap_or(32768), parts.next().unwrap_or(60999));
    if lo >= 12_000 {
        (10_000, lo)
    } else {
        (hi + 1, 65_535)
    }
}

/// `GET path` over HTTP/1.1 (the admin listener): the status code and the body.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The value of the Prometheus sample `series` (name with labels, exactly as exposed) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}
