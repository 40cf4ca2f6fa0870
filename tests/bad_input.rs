//! Malformed and hostile input: each case closes only the offending connection, as the
//! specification requires, and a healthy client on the same broker is unaffected.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::Duration;

use common::raw::{self, Raw};
use common::{TestBroker, start_broker};

/// A subscriber and a publisher that must keep working around every bad connection.
async fn healthy_roundtrip(broker: &TestBroker, tag: &str) {
    let mut sub = Raw::mqtt(broker.addr, &format!("healthy-sub-{tag}")).await;
    sub.send(&raw::subscribe_packet(1, "healthy/t", 0)).await;
    assert_eq!(
        sub.read_exact(5).await,
        vec![0x90, 0x03, 0x00, 0x01, 0x00],
        "SUBACK"
    );
    let mut publisher = Raw::mqtt(broker.addr, &format!("healthy-pub-{tag}")).await;
    publisher
        .send(&raw::publish_packet(b"healthy/t", 0, 0, b"ok"))
        .await;
    let expected = raw::publish_packet(b"healthy/t", 0, 0, b"ok");
    assert_eq!(
        sub.read_exact(expected.len()).await,
        expected,
        "{tag}: message delivered"
    );
}

/// Sends `bytes` after a good CONNECT and asserts the broker closes the connection, sending
/// nothing more than `expect_before_close`.
async fn closes_after_connect(broker: &TestBroker, tag: &str, bytes: &[u8]) {
    let mut bad = Raw::mqtt(broker.addr, &format!("bad-{tag}")).await;
    bad.send(bytes).await;
    let rest = bad.read_until_closed().await;
    assert!(
        rest.is_empty(),
        "{tag}: 3.1.1 has no server DISCONNECT, got {rest:02x?}"
    );
    healthy_roundtrip(broker, tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_that_connection() {
    let broker = start_broker(|c| c.max_packet_size = 1024).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Remaining length with a fifth continuation byte [MQTT-1.5.5].
        (
            "remaining-length-5-bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        // Packet type 0 is reserved.
        ("reserved-type-0", vec![0x00, 0x00]),
        // AUTH (type 15) does not exist in 3.1.1.
        ("auth-in-3.1.1", vec![0xf0, 0x00]),
        // SUBSCRIBE must have flags 0010 [MQTT-3.8.1-1].
        (
            "subscribe-bad-flags",
            raw::packet(0x80, &[0, 1, 0, 1, b'a', 0]),
        ),
        // PINGREQ flags must be 0.
        ("pingreq-bad-flags", vec![0xc1, 0x00]),
        // QoS 3 is malformed [MQTT-3.3.1-4].
        ("publish-qos-3", raw::packet(0x36, &[0, 1, b'a', 0, 1])),
        // Topic with invalid UTF-8 [MQTT-1.5.3-1].
        (
            "publish-invalid-utf8",
            raw::publish_packet(&[b'a', 0xc3, 0x28], 0, 0, b"x"),
        ),
        // Topic with U+0000 [MQTT-1.5.3-2].
        (
            "publish-nul-in-topic",
            raw::publish_packet(b"a\0b", 0, 0, b"x"),
        ),
        // Wildcards in a topic name [MQTT-3.3.2-2].
        (
            "publish-wildcard-plus",
            raw::publish_packet(b"a/+/b", 0, 0, b"x"),
        ),
        (
            "publish-wildcard-hash",
            raw::publish_packet(b"a/#", 0, 0, b"x"),
        ),
        // Packet id 0 for QoS 1 [MQTT-2.3.1-1].
        ("publish-qos1-pkid-0", raw::publish_packet(b"a", 1, 0, b"x")),
        // SUBSCRIBE without any filter [MQTT-3.8.3-3].
        ("subscribe-empty", raw::packet(0x82, &[0, 1])),
        // Second CONNECT [MQTT-3.1.0-2].
        ("second-connect", raw::connect_packet(4, "again", true, 30)),
        // Remaining length announces more than max_packet_size: closed without waiting.
        ("oversized-announced", vec![0x30, 0xff, 0xff, 0x03]),
        // Server-to-client packet sent by a client.
        ("client-sends-connack", vec![0x20, 0x02, 0x00, 0x00]),
        // Body shorter than its own fields: topic length 10, only 1 byte follows.
        ("truncated-topic", raw::packet(0x30, &[0, 10, b'a'])),
    ];
    for (tag, bytes) in cases {
        closes_after_connect(&broker, tag, &bytes).await;
    }
    // A real oversized packet, body and all.
    let big = raw::publish_packet(b"big", 0, 0, &[b'x'; 2000]);
    closes_after_connect(&broker, "oversized-sent", &big).await;
    assert!(
        broker
            .app
            .broker_stats
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 17
    );
    assert!(broker.stop().await, "broker drains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_before_connect_close_the_connection() {
    let broker = start_broker(|_| {}).await;
    for (tag, bytes) in [
        ("publish-first", raw::publish_packet(b"a", 0, 0, b"x")),
        ("pingreq-first", vec![0xc0, 0x00]),
        ("subscribe-first", raw::subscribe_packet(1, "a", 0)),
        ("garbage-first", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let mut bad = Raw::connect(broker.addr).await;
        bad.send(&bytes).await;
        let got = bad.read_until_closed().await;
        assert!(
            got.is_empty(),
            "{tag}: no CONNACK for a non-CONNECT first packet, got {got:02x?}"
        );
        healthy_roundtrip(&broker, tag).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connect_packets() {
    let broker = start_broker(|_| {}).await;
    // Protocol name other than "MQTT": close without CONNACK [MQTT-3.1.2-1].
    let mut body = Vec::new();
    raw::string(b"MQTX", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 30]);
    raw::string(b"id", &mut body);
    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::packet(0x10, &body)).await;
    assert!(c.read_until_closed().await.is_empty());

    // Unsupported level: CONNACK 0x01 then close [MQTT-3.1.2-2].
    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::connect_packet(3, "old", true, 30)).await;
    assert_eq!(c.read_until_closed().await, vec![0x20, 0x02, 0x00, 0x01]);

    // Reserved CONNECT flag set [MQTT-3.1.2-3].
    let mut packet = raw::connect_packet(4, "resv", true, 30);
    packet[9] |= 0x01;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&packet).await;
    assert!(c.read_until_closed().await.is_empty());

    // Password flag without user name flag in 3.1.1 [MQTT-3.1.2-22].
    let mut packet = raw::connect_packet(4, "pw", true, 30);
    packet[9] |= 0x40;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&packet).await;
    assert!(c.read_until_closed().await.is_empty());

    // Zero-length client id with CleanSession=0: CONNACK 0x02 [MQTT-3.1.3-8].
    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::connect_packet(4, "", false, 30)).await;
    assert_eq!(c.read_until_closed().await, vec![0x20, 0x02, 0x00, 0x02]);

    healthy_roundtrip(&broker, "after-bad-connects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_connect_timeout() {
    let broker = start_broker(|c| c.connect_timeout = Duration::from_millis(300)).await;
    let mut idle = Raw::connect(broker.addr).await;
    let started = std::time::Instant::now();
    assert!(idle.read_until_closed().await.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    // A half-sent CONNECT is no better than none.
    let mut partial = Raw::connect(broker.addr).await;
    partial
        .send(&raw::connect_packet(4, "slow", true, 30)[..5])
        .await;
    assert!(partial.read_until_closed().await.is_empty());
    healthy_roundtrip(&broker, "after-timeouts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extra_clients_only() {
    let broker = start_broker(|c| c.max_connections = 2).await;
    let _a = Raw::mqtt(broker.addr, "a").await;
    let mut b = Raw::mqtt(broker.addr, "b").await;
    let mut c = Raw::connect(broker.addr).await;
    assert!(
        c.read_until_closed().await.is_empty(),
        "third connection closed"
    );
    // The existing clients still work.
    b.send(&[0xc0, 0x00]).await;
    assert_eq!(b.read_exact(2).await, vec![0xd0, 0x00]);
    let refused = broker
        .app
        .broker_stats
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_client_ids_are_reserved() {
    let broker = start_broker(|_| {}).await;
    let _bridge = broker
        .app
        .broker
        .as_ref()
        .unwrap()
        .internal_client("bridge")
        .await
        .unwrap();
    let mut thief = Raw::connect(broker.addr).await;
    thief
        .send(&raw::connect_packet(4, "$internal/bridge", true, 30))
        .await;
    assert_eq!(
        thief.read_until_closed().await,
        vec![0x20, 0x02, 0x00, 0x02],
        "identifier rejected"
    );
}
