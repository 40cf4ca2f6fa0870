//! Persistence and crash recovery (issue 7), with real processes: the bridge binary with a
//! temporary config, `kill -9` while clients publish, a restart on the same store, and the
//! counts of what comes back. Loopback only, bounded in messages and time.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{self, Raw};
use rumqttc::{MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages each publisher tries to send (the bridge is killed long before the end).
const PER_PUBLISHER: usize = 4000;
/// Acknowledged messages (both publishers) after which the bridge is killed.
const KILL_AFTER_ACKS: usize = 600;
/// Unacknowledged messages each publisher keeps in flight.
const WINDOW: usize = 40;

/// The bridge binary running as a child process on a fixed store.
struct Bridge {
    child: Child,
    config: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
}

fn write_config(dir: &Path, port: u16, durability: &str) -> PathBuf {
    let group = if durability == "group" {
        "group_commit_ms = 10\n"
    } else {
        ""
    };
    let text = format!(
        "[log]\nlevel = \"info\"\n\n[broker]\nlisten = \"127.0.0.1:{port}\"\nsys_interval = \"0s\"\n\
         max_queued = 100000\n\n[persistence]\ndir = \"data\"\ndurability = \"{durability}\"\n{group}\n\
         [admin]\nenabled = false\n"
    );
    let path = dir.join("bridge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Bridge {
    async fn start(config: &Path, port: u16) -> Bridge {
        let log = config.with_file_name(format!(
            "bridge-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = unique(log);
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut bridge = Bridge {
            child,
            config: config.to_path_buf(),
            addr,
            log,
        };
        bridge.wait_ready().await;
        bridge
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // The log line first: another test's server may have taken this port while the
            // bridge was down, and answer the connect instead.
            if self.log_text().contains("MQTT listener ready.")
                && tokio::net::TcpStream::connect(self.addr).await.is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bridge exited with {status}: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("bridge not listening after 30 s: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn restart(&mut self) {
        let port = self.addr.port();
        let again = Bridge::start(&self.config.clone(), port).await;
        let old = std::mem::replace(self, again);
        drop(old);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    loop {
        let p = path.with_extension(format!("{n}.log"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// What one publisher saw acknowledged: PUBACK for QoS 1, PUBREC for QoS 2.
#[derive(Default)]
struct Acked {
    ids: BTreeSet<usize>,
}

/// Publishes `PER_PUBLISHER` numbered messages `q{qos}-{i}` on `load/q{qos}` from a raw
/// socket (packet id `i + 1`, so each acknowledgement names its message), `WINDOW` in flight,
/// answering PUBREC with PUBREL. Ends when all are acknowledged or the connection dies.
async fn publisher(addr: SocketAddr, qos: u8, acked: Arc<Mutex<Acked>>) {
    let mut raw = Raw::mqtt(addr, &format!("pub-q{qos}")).await;
    let (mut rd, mut wr) = raw.stream.split();
    let sem = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let (rel_tx, mut rel_rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let writer = async {
        let mut i = 0;
        loop {
            let bytes = tokio::select! {
                biased;
                Some(id) = rel_rx.recv() => {
                    let [a, b] = id.to_be_bytes();
                    vec![0x62, 0x02, a, b]
                }
                permit = sem.clone().acquire_owned(), if i < PER_PUBLISHER => {
                    permit.unwrap().forget();
                    let pkid = u16::try_from(i + 1).unwrap();
                    let payload = format!("q{qos}-{i}");
                    i += 1;
                    let topic = format!("load/q{qos}");
                    raw::publish_packet(topic.as_bytes(), qos, pkid, payload.as_bytes())
                }
                else => return,
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut done = 0;
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 4 {
                // Every packet the broker sends a publisher here is 4 bytes: PUBACK, PUBREC,
                // PUBCOMP (3.1.1).
                let (kind, id) = (buf[0] >> 4, u16::from_be_bytes([buf[2], buf[3]]));
                buf.drain(..4);
                match kind {
                    4 | 5 => {
                        acked.lock().unwrap().ids.insert(usize::from(id) - 1);
                        if kind == 5 {
                            let _ = rel_tx.send(id);
                        } else {
                            sem.add_permits(1);
                            done += 1;
                        }
                    }
                    7 => {
                        sem.add_permits(1);
                        done += 1;
                    }
                    other => panic!("unexpected packet type {other} to a publisher"),
                }
            }
            if done == PER_PUBLISHER {
                break;
            }
        }
        drop(rel_tx);
    };
    // The writer may wait for a window that never opens once the broker is gone.
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

/// Every delivery to the subscriber, by payload.
async fn drain_subscriber(addr: SocketAddr, expect_at_least: usize) -> HashMap<String, usize> {
    let mut opts = MqttOptions::new("durable-sub", addr.ip().to_string(), addr.port());
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(30));
    let mut sub = common::connect_with(opts).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = 0;
    loop {
        // Quiet for a while once everything expected is in: duplicates would arrive by then.
        let quiet = if total >= expect_at_least {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(quiet, sub.publishes.recv()).await {
            Ok(Some(p)) => {
                total += 1;
                *seen
                    .entry(String::from_utf8_lossy(&p.payload).into_owned())
                    .or_default() += 1;
            }
            _ => break,
        }
        assert!(
            Instant::now() < deadline,
            "subscriber still receiving after 60 s"
        );
    }
    sub.disconnect().await;
    seen
}

async fn kill9_mid_stream(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = write_config(dir.path(), port, durability);
    let mut bridge = Bridge::start(&config, port).await;
    let addr = bridge.addr;

    // A persistent subscriber (CleanSession 0) subscribes, then goes offline.
    let mut opts = MqttOptions::new("durable-sub", "127.0.0.1", port);
    opts.set_clean_session(false);
    let mut sub = common::connect_with(opts).await;
    sub.subscribe("load/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    // A retained message, acknowledged.
    let mut retain = Raw::mqtt(addr, "retainer").await;
    let mut p = raw::publish_packet(b"status/door", 1, 9, b"open");
    p[0] |= 0x01;
    retain.send(&p).await;
    assert_eq!(
        retain.read_exact(4).await,
        vec![0x40, 0x02, 0x00, 0x09],
        "PUBACK"
    );

    let q1 = Arc::new(Mutex::new(Acked::default()));
    let q2 = Arc::new(Mutex::new(Acked::default()));
    let p1 = tokio::spawn(publisher(addr, 1, q1.clone()));
    let p2 = tokio::spawn(publisher(addr, 2, q2.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = q1.lock().unwrap().ids.len() + q2.lock().unwrap().ids.len();
        if n >= KILL_AFTER_ACKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} acknowledgements in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bridge.kill9();
    tokio::time::timeout(Duration::from_secs(10), p1)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), p2)
        .await
        .unwrap()
        .unwrap();
    let acked1 = std::mem::take(&mut q1.lock().unwrap().ids);
    let acked2 = std::mem::take(&mut q2.lock().unwrap().ids);
    assert!(
        acked1.len() < PER_PUBLISHER && acked2.len() < PER_PUBLISHER,
        "killed mid-stream ({} and {} acknowledged)",
        acked1.len(),
        acked2.len()
    );

    bridge.restart().await;
    let log = bridge.log_text();
    assert!(log.contains("State recovered from the store."), "{log}");

    let seen = drain_subscriber(addr, acked1.len() + acked2.len()).await;
    let lost1: Vec<_> = acked1
        .iter()
        .filter(|i| !seen.contains_key(&format!("q1-{i}")))
        .collect();
    let lost2: Vec<_> = acked2
        .iter()
        .filter(|i| !seen.contains_key(&format!("q2-{i}")))
        .collect();
    let dup2: Vec<_> = seen
        .iter()
        .filter(|(k, n)| k.starts_with("q2-") && **n > 1)
        .collect();
    eprintln!(
        "{durability}: acknowledged QoS 1 {}, QoS 2 {}; delivered {} distinct; lost {} + {}; QoS 2 duplicates {}",
        acked1.len(),
        acked2.len(),
        seen.len(),
        lost1.len(),
        lost2.len(),
        dup2.len()
    );
    assert!(lost1.is_empty(), "acknowledged QoS 1 lost: {lost1:?}");
    assert!(lost2.is_empty(), "acknowledged QoS 2 lost: {lost2:?}");
    assert!(dup2.is_empty(), "QoS 2 delivered more than once: {dup2:?}");

    // The subscription itself came back: a message published now reaches the session.
    let mut late = Raw::mqtt(addr, "late").await;
    late.send(&raw::publish_packet(b"load/late", 1, 1, b"after-restart"))
        .await;
    assert_eq!(late.read_exact(4).await, vec![0x40, 0x02, 0x00, 0x01]);
    let after = drain_subscriber(addr, 1).await;
    assert_eq!(after.get("after-restart"), Some(&1), "{after:?}");

    // The retained message is back.
    let mut fresh = common::connect(addr, "fresh").await;
    fresh.subscribe("status/#", QoS::AtLeastOnce).await;
    let r = tokio::time::timeout(common::WAIT, fresh.next_publish())
        .await
        .unwrap();
    assert_eq!(
        (&r.topic[..], &r.payload[..], r.retain),
        ("status/door", &b"open"[..], true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_sync_durability_loses_no_acknowledged_message() {
    kill9_mid_stream("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_group_commit_loses_no_acknowledged_message() {
    kill9_mid_stream("group").await;
}

/// A damaged store: the bridge refuses to start with exit status 65 and names the file.
#[test]
fn damaged_store_refuses_to_start_with_65() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), common::free_port(), "sync");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("state.redb");
    std::fs::write(&file, vec![0x42; 16384]).unwrap();
    let out = common::run_with_timeout(
        Command::new(common::bin())
            .arg("run")
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("move the file aside"), "{stderr}");
}

/// `[persistence]` keys are checked like every other section.
#[test]
fn bad_persistence_config_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(
        &path,
        "[persistence]\ndurability = \"fast\"\ngroup_commit_ms = 5\n",
    )
    .unwrap();
    let out = common::run_with_timeout(
        Command::new(common::bin())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("persistence.durability"), "{stderr}");
    assert!(
        stderr.contains("\"sync\", \"group\" or \"off\""),
        "{stderr}"
    );
    assert!(stderr.contains("persistence.group_commit_ms"), "{stderr}");
}

/// Reads one packet from a raw socket: (first byte, body).
async fn read_packet(raw: &mut Raw) -> (u8, Vec<u8>) {
    let head = raw.read_exact(2).await;
    let mut len = usize::from(head[1] & 0x7f);
    let mut shift = 7;
    let mut more = head[1] & 0x80 != 0;
    while more {
        let b = raw.read_exact(1).await[0];
        len += usize::from(b & 0x7f) << shift;
        shift += 7;
        more = b & 0x80 != 0;
    }
    (head[0], raw.read_exact(len).await)
}

async fn raw_session(addr: SocketAddr, id: &str, present: bool) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&raw::connect_packet(4, id, false, 60)).await;
    let ack = raw.read_exact(4).await;
    assert_eq!(
        ack,
        vec![0x20, 0x02, u8::from(present), 0x00],
        "CONNACK for {id}"
    );
    raw
}

/// QoS 2 state in both directions survives kill -9: an incoming id received and not released
/// (the publisher's resend after the restart is not delivered again), and an outgoing message
/// the subscriber acknowledged with PUBREC (the broker resends PUBREL, not the PUBLISH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_state_in_both_directions_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = write_config(dir.path(), port, "sync");
    let mut bridge = Bridge::start(&config, port).await;
    let addr = bridge.addr;

    let mut sub = raw_session(addr, "q2-sub", false).await;
    sub.send(&raw::subscribe_packet(1, "q2/#", 2)).await;
    assert_eq!(read_packet(&mut sub).await, (0x90, vec![0, 1, 2]), "SUBACK");
    let mut publ = raw_session(addr, "q2-pub", false).await;
    // First message: delivered, PUBREC from the subscriber, then the crash before PUBCOMP.
    publ.send(&raw::publish_packet(b"q2/a", 2, 7, b"first"))
        .await;
    assert_eq!(read_packet(&mut publ).await, (0x50, vec![0, 7]), "PUBREC");
    publ.send(&[0x62, 0x02, 0, 7]).await;
    assert_eq!(read_packet(&mut publ).await, (0x70, vec![0, 7]), "PUBCOMP");
    let (first, body) = read_packet(&mut sub).await;
    assert_eq!(first & 0xf6, 0x34, "QoS 2 PUBLISH");
    let sub_pkid = [body[6], body[7]];
    assert_eq!(&body[8..], b"first");
    sub.send(&[0x50, 0x02, sub_pkid[0], sub_pkid[1]]).await;
    assert_eq!(
        read_packet(&mut sub).await,
        (0x62, sub_pkid.to_vec()),
        "PUBREL"
    );
    // Second message: PUBREC received by the publisher, PUBREL never sent.
    publ.send(&raw::publish_packet(b"q2/a", 2, 8, b"second"))
        .await;
    assert_eq!(read_packet(&mut publ).await, (0x50, vec![0, 8]), "PUBREC");
    let (_, body) = read_packet(&mut sub).await;
    assert_eq!(&body[8..], b"second");
    let second_pkid = [body[6], body[7]];

    bridge.kill9();
    bridge.restart().await;

    // The subscriber is owed PUBREL for the first and the PUBLISH (DUP) of the second.
    let mut sub = raw_session(addr, "q2-sub", true).await;
    assert_eq!(
        read_packet(&mut sub).await,
        (0x62, sub_pkid.to_vec()),
        "PUBREL resent"
    );
    let (first, body) = read_packet(&mut sub).await;
    assert_eq!(first, 0x3c, "QoS 2 PUBLISH with DUP");
    assert_eq!(
        (&body[6..8], &body[8..]),
        (&second_pkid[..], &b"second"[..])
    );
    sub.send(&[0x70, 0x02, sub_pkid[0], sub_pkid[1]]).await;
    sub.send(&[0x50, 0x02, second_pkid[0], second_pkid[1]])
        .await;
    assert_eq!(
        read_packet(&mut sub).await,
        (0x62, second_pkid.to_vec()),
        "PUBREL"
    );
    sub.send(&[0x70, 0x02, second_pkid[0], second_pkid[1]])
        .await;

    // The publisher resends its unreleased message: acknowledged, not delivered again.
    let mut publ = raw_session(addr, "q2-pub", true).await;
    let mut again = raw::publish_packet(b"q2/a", 2, 8, b"second");
    again[0] |= 0x08;
    publ.send(&again).await;
    assert_eq!(read_packet(&mut publ).await, (0x50, vec![0, 8]), "PUBREC");
    publ.send(&[0x62, 0x02, 0, 8]).await;
    assert_eq!(read_packet(&mut publ).await, (0x70, vec![0, 8]), "PUBCOMP");
    // A fresh message after it is delivered, and it is the next thing the subscriber gets.
    publ.send(&raw::publish_packet(b"q2/a", 1, 9, b"third"))
        .await;
    assert_eq!(read_packet(&mut publ).await, (0x40, vec![0, 9]), "PUBACK");
    let (first, body) = read_packet(&mut sub).await;
    assert_eq!(first & 0xf0, 0x30, "PUBLISH");
    assert_eq!(
        &body[8..],
        b"third",
        "the resent QoS 2 message was not delivered twice"
    );
}

/// An MQTT 5 CONNECT with a QoS 1 will on `will/{id}` delayed `delay` seconds and a Session
/// Expiry Interval of 60 s (the will waits only while the session lives).
fn connect_v5_with_delayed_will(id: &str, delay: u32) -> Vec<u8> {
    let mut body = Vec::new();
    raw::string(b"MQTT", &mut body);
    body.push(5);
    // Will flag, will QoS 1, clean start 0.
    body.push(0x04 | 0x08);
    body.extend_from_slice(&60u16.to_be_bytes());
    // Properties: Session Expiry Interval 60.
    body.extend_from_slice(&[5, 0x11]);
    body.extend_from_slice(&60u32.to_be_bytes());
    raw::string(id.as_bytes(), &mut body);
    // Will properties: Will Delay Interval.
    body.extend_from_slice(&[5, 0x18]);
    body.extend_from_slice(&delay.to_be_bytes());
    raw::string(format!("will/{id}").as_bytes(), &mut body);
    raw::string(format!("{id} is gone").as_bytes(), &mut body);
    raw::packet(0x10, &body)
}

/// Connects the will client and drops its socket without DISCONNECT; returns when.
async fn will_client_vanishes(addr: SocketAddr, id: &str, delay: u32) -> Instant {
    let mut c = Raw::connect(addr).await;
    c.send(&connect_v5_with_delayed_will(id, delay)).await;
    let (first, body) = read_packet(&mut c).await;
    assert_eq!((first, body[1]), (0x20, 0x00), "CONNACK accepted");
    drop(c);
    Instant::now()
}

/// The wills a subscriber gets on `will/#` within `quiet` of the last one (or of the start),
/// each acknowledged, with when it came.
async fn wills_seen(sub: &mut Raw, quiet: Duration) -> Vec<(String, Instant)> {
    let mut out = Vec::new();
    loop {
        let (first, body) = match tokio::time::timeout(quiet, read_packet(sub)).await {
            Ok(p) => p,
            Err(_) => return out,
        };
        assert_eq!(first & 0xf0, 0x30, "a PUBLISH, not {first:#x}");
        let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
        if first & 0x06 != 0 {
            let id = [body[2 + tlen], body[3 + tlen]];
            sub.send(&[0x40, 0x02, id[0], id[1]]).await;
        }
        out.push((topic, Instant::now()));
    }
}

/// A persistent subscriber on `will/#` (client id `will-watch`, offline afterwards), a client
/// `client_id` with a will delayed 3 s that vanishes, the broker killed 0.4 s later and
/// restarted: the restarted broker and when the client went.
async fn will_pending_across_kill9(dir: &Path, client_id: &str) -> (Bridge, Instant) {
    let port = common::free_port();
    let config = write_config(dir, port, "sync");
    let mut bridge = Bridge::start(&config, port).await;
    let mut sub = raw_session(bridge.addr, "will-watch", false).await;
    sub.send(&raw::subscribe_packet(1, "will/#", 1)).await;
    assert_eq!(read_packet(&mut sub).await, (0x90, vec![0, 1, 1]), "SUBACK");
    let gone = will_client_vanishes(bridge.addr, client_id, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    bridge.kill9();
    assert!(gone.elapsed() < Duration::from_secs(1), "killed within 1 s");
    drop(sub);
    bridge.restart().await;
    (bridge, gone)
}

/// A will delayed 3 s whose client vanished, then the broker killed within a second: after
/// the restart the will fires once, not before it is due. (Before delayed wills were stored,
/// it never fired.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_will_pending_at_kill9_fires_once_after_the_restart_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, gone) = will_pending_across_kill9(dir.path(), "w-late").await;
    let mut sub = raw_session(bridge.addr, "will-watch", true).await;
    let seen = wills_seen(&mut sub, Duration::from_secs(5)).await;
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, vec!["will/w-late"], "{}", bridge.log_text());
    let after = seen[0].1.duration_since(gone);
    assert!(
        after >= Duration::from_millis(2900),
        "the will fired {after:?} after the client went, before its 3 s delay"
    );
    eprintln!(
        "will fired {after:?} after the client went (delay 3 s, broker killed and restarted)"
    );
}

/// The same, but the client reconnects to its session before the delay runs out (after the
/// restart): the will never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_will_is_cancelled_by_a_reconnect_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, gone) = will_pending_across_kill9(dir.path(), "w-back").await;
    let addr = bridge.addr;
    let mut sub = raw_session(addr, "will-watch", true).await;
    // Back in time, to its session (clean start 0).
    let mut back = Raw::connect(addr).await;
    back.send(&connect_v5_with_delayed_will("w-back", 3)).await;
    let (first, body) = read_packet(&mut back).await;
    assert_eq!(
        (first, body[0] & 1, body[1]),
        (0x20, 1, 0x00),
        "session present"
    );
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "reconnected in time"
    );
    // Watch past the due time (and a margin): nothing.
    let watch = Duration::from_secs(3) + Duration::from_millis(1500) - gone.elapsed();
    let seen = wills_seen(&mut sub, watch).await;
    assert!(seen.is_empty(), "a cancelled will fired: {seen:?}");
    back.send(&[0xe0, 0x00]).await;
}

/// A graceful stop (SIGTERM) publishes the delayed wills still waiting; the stored sessions
/// must not bring them back: after the restart nobody gets the will a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_will_published_at_a_graceful_stop_is_not_published_again_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = write_config(dir.path(), port, "sync");
    let mut bridge = Bridge::start(&config, port).await;
    let addr = bridge.addr;
    let mut sub = Raw::mqtt(addr, "will-now").await;
    sub.send(&raw::subscribe_packet(1, "will/#", 1)).await;
    assert_eq!(read_packet(&mut sub).await, (0x90, vec![0, 1, 1]), "SUBACK");
    let gone = will_client_vanishes(addr, "w-stop", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = bridge.child.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    // The will, then the close of the connection by the stopping broker.
    let before_close = sub.read_until_closed().await;
    let topic = b"will/w-stop";
    assert!(
        before_close.windows(topic.len()).any(|w| w == topic),
        "the will was published at the stop: {before_close:02x?}"
    );
    let _ = bridge.child.wait();

    bridge.restart().await;
    let mut late = Raw::mqtt(addr, "will-later").await;
    late.send(&raw::subscribe_packet(1, "will/#", 1)).await;
    assert_eq!(
        read_packet(&mut late).await,
        (0x90, vec![0, 1, 1]),
        "SUBACK"
    );
    let watch =
        (Duration::from_secs(2) + Duration::from_millis(1500)).saturating_sub(gone.elapsed());
    let again = wills_seen(&mut late, watch.max(Duration::from_millis(1500))).await;
    assert!(
        again.is_empty(),
        "the will came back after the restart: {again:?}"
    );
}
