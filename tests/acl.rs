//! `[broker] acl_file` with raw MQTT 3.1.1 and 5.0 clients whose bytes the test writes and
//! reads, so the exact acknowledgement codes are checked: a denied PUBLISH is acknowledged and
//! dropped in 3.1.1 (as Mosquitto does) and answered with 0x87 in 5.0; a denied SUBSCRIBE
//! gets 0x80 in 3.1.1 and 0x87 in 5.0. The bridge's in-process session is not subject to it.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;
use crate::mqtt5_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{self, Raw};
use common::{TestBroker, start_broker};
use mqtt5_support::{parse_props, publish5, read_packet, subscribe5};
use xmpp_mqtt_bridge::broker::codec::QoS;

const QUIET: Duration = Duration::from_millis(400);

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic read shared/+

user bob
topic readwrite bob/#

pattern write devices/%c/state
";

async fn broker() -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let broker = start_broker(|b| b.acl_file = Some(acl)).await;
    (broker, dir)
}

/// MQTT 3.1.1 CONNECT with a user name (no password file: any password is accepted).
async fn login311(addr: SocketAddr, client_id: &str, user: &str) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&raw::connect_with_login(client_id, user, "pw"))
        .await;
    assert_eq!(raw.read_exact(4).await, [0x20, 0x02, 0x00, 0x00], "CONNACK");
    raw
}

/// MQTT 5 CONNECT with a user name.
async fn login5(addr: SocketAddr, client_id: &str, user: &str) -> Raw {
    let mut body = Vec::new();
    raw::string(b"MQTT", &mut body);
    body.push(5);
    body.push(0x02 | 0x80);
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0); // no properties
    raw::string(client_id.as_bytes(), &mut body);
    raw::string(user.as_bytes(), &mut body);
    let mut raw = Raw::connect(addr).await;
    raw.send(&raw::packet(0x10, &body)).await;
    let ack = read_packet(&mut raw).await;
    assert_eq!(
        (ack.kind(), ack.body[1]),
        (2, 0),
        "CONNACK success: {ack:02x?}"
    );
    raw
}

/// 3.1.1 SUBSCRIBE; returns the SUBACK's return code.
async fn subscribe311(raw: &mut Raw, pkid: u16, filter: &str) -> u8 {
    raw.send(&raw::subscribe_packet(pkid, filter, 1)).await;
    let ack = raw.read_exact(5).await;
    assert_eq!(&ack[..4], &[0x90, 0x03, (pkid >> 8) as u8, pkid as u8]);
    ack[4]
}

/// 5.0 SUBSCRIBE; returns the SUBACK's reason code.
async fn subscribe5_code(raw: &mut Raw, pkid: u16, filter: &str) -> u8 {
    raw.send(&subscribe5(pkid, &[0], filter, 1)).await;
    let ack = read_packet(raw).await;
    assert_eq!(ack.kind(), 9, "SUBACK: {ack:02x?}");
    assert_eq!(&ack.body[..2], &pkid.to_be_bytes());
    *ack.body.last().unwrap()
}

/// Reads one PUBLISH and returns its topic and payload (3.1.1, QoS 0 or 1).
async fn next_publish311(raw: &mut Raw) -> (String, Vec<u8>) {
    let first = raw.read_exact(1).await[0];
    assert_eq!(first >> 4, 3, "PUBLISH expected, got {first:#x}");
    let len = raw.read_exact(1).await[0] as usize;
    let body = raw.read_exact(len).await;
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
    let skip = if first & 0x06 != 0 { 2 } else { 0 };
    (topic, body[2 + tlen + skip..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_denied_publish_is_acknowledged_and_dropped() {
    let (b, _dir) = broker().await;
    let mut alice = login311(b.addr, "alice-1", "alice").await;
    assert_eq!(subscribe311(&mut alice, 1, "alice/#").await, 0x01);
    let mut bob = login311(b.addr, "bob-1", "bob").await;
    // QoS 0: nothing comes back.
    bob.send(&raw::publish_packet(b"alice/lamp", 0, 0, b"q0"))
        .await;
    // QoS 1: a plain PUBACK, as if accepted.
    bob.send(&raw::publish_packet(b"alice/lamp", 1, 7, b"q1"))
        .await;
    assert_eq!(bob.read_exact(4).await, [0x40, 0x02, 0x00, 0x07], "PUBACK");
    // QoS 2: PUBREC, then PUBCOMP for the PUBREL.
    bob.send(&raw::publish_packet(b"alice/lamp", 2, 8, b"q2"))
        .await;
    assert_eq!(bob.read_exact(4).await, [0x50, 0x02, 0x00, 0x08], "PUBREC");
    bob.send(&[0x62, 0x02, 0x00, 0x08]).await;
    assert_eq!(bob.read_exact(4).await, [0x70, 0x02, 0x00, 0x08], "PUBCOMP");
    assert!(
        alice.stays_open(QUIET).await,
        "alice received a denied message"
    );
    // Allowed publishes still flow, on the same connection.
    bob.send(&raw::publish_packet(b"bob/x", 0, 0, b"own")).await;
    alice
        .send(&raw::publish_packet(b"alice/ok", 0, 0, b"allowed"))
        .await;
    assert_eq!(
        next_publish311(&mut alice).await,
        ("alice/ok".to_string(), b"allowed".to_vec())
    );
    assert!(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_denied_subscribe_gets_0x80() {
    let (b, _dir) = broker().await;
    let mut bob = login311(b.addr, "bob-2", "bob").await;
    assert_eq!(subscribe311(&mut bob, 1, "alice/#").await, 0x80);
    assert_eq!(subscribe311(&mut bob, 2, "#").await, 0x80);
    assert_eq!(subscribe311(&mut bob, 3, "bob/+/x").await, 0x01);
    let mut alice = login311(b.addr, "alice-2", "alice").await;
    // Read-only: subscribe yes, publish no.
    assert_eq!(subscribe311(&mut alice, 1, "shared/a").await, 0x01);
    assert_eq!(
        subscribe311(&mut alice, 2, "shared/#").await,
        0x80,
        "wider than shared/+"
    );
    assert!(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_publish_gets_0x87() {
    let (b, _dir) = broker().await;
    let mut alice = login5(b.addr, "alice-5", "alice").await;
    assert_eq!(subscribe5_code(&mut alice, 1, "alice/#").await, 0x01);
    let mut bob = login5(b.addr, "bob-5", "bob").await;
    bob.send(&publish5("alice/lamp", 1, false, 9, &[0], b"q1"))
        .await;
    let ack = read_packet(&mut bob).await;
    assert_eq!(ack.kind(), 4, "PUBACK: {ack:02x?}");
    assert_eq!(&ack.body[..3], &[0x00, 0x09, 0x87], "Not authorized");
    let (props, _) = parse_props(&ack.body, 3);
    assert!(!props.is_empty(), "a Reason String says why");
    bob.send(&publish5("alice/lamp", 2, false, 10, &[0], b"q2"))
        .await;
    let rec = read_packet(&mut bob).await;
    assert_eq!(rec.kind(), 5, "PUBREC: {rec:02x?}");
    assert_eq!(&rec.body[..3], &[0x00, 0x0A, 0x87]);
    assert!(
        alice.stays_open(QUIET).await,
        "alice received a denied message"
    );
    // Allowed: success and delivery.
    bob.send(&publish5("bob/x", 1, false, 11, &[0], b"own"))
        .await;
    let ack = read_packet(&mut bob).await;
    assert_eq!(ack.kind(), 4);
    assert!(
        ack.body.len() == 2 || ack.body[2] == 0,
        "success: {ack:02x?}"
    );
    assert!(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_subscribe_gets_0x87_per_filter() {
    let (b, _dir) = broker().await;
    let mut bob = login5(b.addr, "bob-6", "bob").await;
    // Two filters in one SUBSCRIBE: one allowed, one denied.
    let mut body = 5u16.to_be_bytes().to_vec();
    body.push(0);
    raw::string(b"bob/a", &mut body);
    body.push(1);
    raw::string(b"alice/a", &mut body);
    body.push(1);
    bob.send(&raw::packet(0x82, &body)).await;
    let ack = read_packet(&mut bob).await;
    assert_eq!(ack.kind(), 9, "SUBACK: {ack:02x?}");
    // Packet id, properties (a Reason String), then one code per filter.
    let (props, _) = parse_props(&ack.body, 2);
    assert!(!props.is_empty(), "a Reason String says why");
    assert_eq!(&ack.body[ack.body.len() - 2..], &[0x01, 0x87]);
    assert!(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_rules_and_patterns() {
    let (b, _dir) = broker().await;
    let mut anon = Raw::mqtt(b.addr, "dev1").await;
    assert_eq!(subscribe311(&mut anon, 1, "public/#").await, 0x01);
    assert_eq!(subscribe311(&mut anon, 2, "alice/#").await, 0x80);
    let mut alice = login311(b.addr, "alice-7", "alice").await;
    assert_eq!(
        subscribe311(&mut alice, 1, "public/#").await,
        0x80,
        "users do not get anonymous rules"
    );
    let mut watcher = Raw::mqtt(b.addr, "watcher").await;
    assert_eq!(subscribe311(&mut watcher, 1, "public/#").await, 0x01);
    // The pattern lets client dev1 write devices/dev1/state only; nobody may read it, so
    // watch the public topic for the denied writes.
    anon.send(&raw::publish_packet(
        b"public/news",
        0,
        0,
        b"anon may not write",
    ))
    .await;
    assert!(watcher.stays_open(QUIET).await, "denied publish delivered");
    anon.send(&raw::publish_packet(b"devices/dev1/state", 1, 3, b"on"))
        .await;
    assert_eq!(anon.read_exact(4).await, [0x40, 0x02, 0x00, 0x03]);
    assert!(b.stop().await);
}

/// The in-process session (the bridge) subscribes and publishes outside the ACL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_session_is_exempt() {
    let (b, _dir) = broker().await;
    let broker = b.app.broker.as_ref().unwrap();
    let mut bridge = broker.internal_client("acl-test").await.unwrap();
    let codes = bridge
        .subscribe(&["secret/#".to_string()], QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(codes, [0x01], "granted to the in-process session");
    let mut bob = login311(b.addr, "bob-8", "bob").await;
    assert_eq!(subscribe311(&mut bob, 1, "secret/#").await, 0x80);
    // bob's publish to secret/x is dropped: the bridge does not get it.
    bob.send(&raw::publish_packet(b"secret/x", 1, 4, b"denied"))
        .await;
    assert_eq!(bob.read_exact(4).await, [0x40, 0x02, 0x00, 0x04]);
    bob.send(&raw::publish_packet(b"bob/x", 0, 0, b"fence"))
        .await;
    let got = tokio::time::timeout(QUIET, bridge.recv()).await;
    assert!(
        got.is_err(),
        "the bridge received a denied publish: {got:?}"
    );
    assert!(b.stop().await);
}

/// The example in README.md parses and means what the README says.
#[test]
fn readme_acl_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("#### Access control").expect("ACL section");
    let block = &readme[start..];
    let body = &block[block.find("```text\n").unwrap() + "```text\n".len()..];
    let text = &body[..body.find("\n```").unwrap()];
    let acl = xmpp_mqtt_bridge::broker::acl::Acl::parse(text).unwrap();
    assert!(acl.may_subscribe(None, "c", "public/x"));
    assert!(acl.may_publish(Some("alice"), "c", "home/alice/lamp"));
    assert!(acl.may_publish(Some("alice"), "c", "alerts/fire"));
    assert!(!acl.may_subscribe(Some("alice"), "c", "alerts/fire"));
    assert!(acl.may_subscribe(Some("bob"), "dev9", "devices/dev9/cmd"));
    assert!(acl.may_publish(Some("bob"), "c", "devices/bob/1/state"));
}

/// A bad ACL file fails `check-config` with file and line.
#[test]
fn bad_acl_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acl"),
        "user a\ntopic read a/#\ntopic read a/#/b\n",
    )
    .unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, "[broker]\nacl_file = \"acl\"\n").unwrap();
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("check-config").arg("--config").arg(&config);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(20));
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    let expected = format!(
        "broker.acl_file: {}:3: topic:",
        dir.path().join("acl").display()
    );
    assert!(text.contains(&expected), "no `{expected}` in:\n{text}");
    std::fs::write(dir.path().join("acl"), "user a\ntopic read a/#\n").unwrap();
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::remove_file(dir.path().join("acl")).unwrap();
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("cannot read ACL file"), "{text}");
}

/// A will on a topic the client may not publish to refuses the connection (as Mosquitto):
/// CONNACK 0x05 in 3.1.1, 0x87 in 5.0; an allowed will connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_outside_the_acl_refuses_the_connection() {
    let (b, _dir) = broker().await;
    // Anonymous clients may not write public/#.
    let mut raw = Raw::connect(b.addr).await;
    raw.send(&raw::connect_with_will(
        "anon-will",
        true,
        60,
        "public/x",
        "bye",
        0,
    ))
    .await;
    assert_eq!(raw.read_until_closed().await, [0x20, 0x02, 0x00, 0x05]);
    // MQTT 5, anonymous, will on public/x.
    let mut body = Vec::new();
    raw::string(b"MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02 | 0x04, 0, 60, 0]);
    raw::string(b"anon-will-5", &mut body);
    body.push(0); // will properties
    raw::string(b"public/x", &mut body);
    raw::string(b"bye", &mut body);
    let mut raw = Raw::connect(b.addr).await;
    raw.send(&raw::packet(0x10, &body)).await;
    let ack = read_packet(&mut raw).await;
    assert_eq!((ack.kind(), ack.body[1]), (2, 0x87), "CONNACK: {ack:02x?}");
    // The pattern lets client dev3 write devices/dev3/state: that will is fine.
    let mut raw = Raw::connect(b.addr).await;
    raw.send(&raw::connect_with_will(
        "dev3",
        true,
        60,
        "devices/dev3/state",
        "off",
        0,
    ))
    .await;
    assert_eq!(raw.read_exact(4).await, [0x20, 0x02, 0x00, 0x00]);
    assert!(b.stop().await);
}
