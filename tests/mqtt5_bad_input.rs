//! MQTT 5 bad input: every case ends only the offending connection, with the reason code the
//! specification names (DISCONNECT after CONNACK, or a refusing CONNACK for a bad CONNECT), and
//! a healthy MQTT 5 client on the same broker is unaffected.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;
use crate::mqtt5_support;

use common::raw::{self, Raw};
use common::{TestBroker, start_broker};
use mqtt5_support::*;

/// A v5 subscriber and publisher that must keep working around every bad connection.
async fn healthy_roundtrip(broker: &TestBroker, tag: &str) {
    let mut sub = raw5_ok(broker.addr, &format!("ok-sub-{tag}"), &[]).await;
    raw_subscribe(&mut sub, 1, &[], "healthy/t", 0, 0).await;
    let mut publisher = raw5_ok(broker.addr, &format!("ok-pub-{tag}"), &[]).await;
    let user = props(&[prop(0x26, &[0, 1, b'k', 0, 1, b'v'])]);
    publisher
        .send(&publish5("healthy/t", 0, false, 0, &user, b"ok"))
        .await;
    let got = RawPublish::parse(&read_packet(&mut sub).await);
    assert_eq!(
        (got.payload.as_slice(), got.prop(0x26)),
        (&b"ok"[..], Some("k=v")),
        "{tag}: healthy client unaffected"
    );
}

/// Connects a v5 client, sends `bytes`, and expects DISCONNECT with `reason`, then close.
async fn disconnects_with(
    broker: &TestBroker,
    tag: &str,
    connect_props: &[u8],
    bytes: &[u8],
    reason: u8,
) {
    let connect = connect5(&format!("bad-{tag}"), true, 60, connect_props, None);
    let (mut bad, code, _) = raw5(broker.addr, &connect).await;
    assert_eq!(code, 0, "{tag}: CONNACK");
    bad.send(bytes).await;
    let properties = expect_disconnect(&mut bad, reason, tag).await;
    assert!(
        properties
            .iter()
            .any(|(id, text)| *id == 0x1F && !text.is_empty()),
        "{tag}: DISCONNECT says why: {properties:?}"
    );
    healthy_roundtrip(broker, tag).await;
}

fn none() -> Vec<u8> {
    props(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_properties_after_connect() {
    let broker = start_broker(|c| c.max_packet_size = 1024).await;
    let ct = prop_str(0x03, "text/plain");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, u8)> = vec![
        // Session Expiry Interval is not a PUBLISH property: malformed (5.0 §2.2.2.2).
        (
            "property-not-allowed-in-publish",
            none(),
            publish5("a", 0, false, 0, &props(&[prop_u32(0x11, 5)]), b"x"),
            0x81,
        ),
        // Content Type twice: protocol error (§3.3.2.3.9).
        (
            "duplicate-content-type",
            none(),
            publish5("a", 0, false, 0, &props(&[ct.clone(), ct]), b"x"),
            0x82,
        ),
        // An identifier no version defines.
        (
            "unknown-property",
            none(),
            publish5("a", 0, false, 0, &props(&[prop(0x7F, &[0])]), b"x"),
            0x81,
        ),
        // Payload Format Indicator 2: protocol error.
        (
            "payload-format-indicator-2",
            none(),
            publish5("a", 0, false, 0, &props(&[prop(0x01, &[2])]), b"x"),
            0x82,
        ),
        // Topic Alias 0 [MQTT-3.3.2-8].
        (
            "topic-alias-0",
            none(),
            publish5("a", 0, false, 0, &props(&[prop_u16(0x23, 0)]), b"x"),
            0x94,
        ),
        // Topic Alias above the maximum of 10 announced in CONNACK [MQTT-3.3.2-9].
        (
            "topic-alias-above-maximum",
            none(),
            publish5("a", 0, false, 0, &props(&[prop_u16(0x23, 11)]), b"x"),
            0x94,
        ),
        // Empty topic with an alias that was never set.
        (
            "topic-alias-never-set",
            none(),
            publish5("", 0, false, 0, &props(&[prop_u16(0x23, 2)]), b"x"),
            0x82,
        ),
        // Empty topic and no alias.
        (
            "empty-topic-without-alias",
            none(),
            publish5("", 0, false, 0, &none(), b"x"),
            0x82,
        ),
        // Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6].
        (
            "subscription-id-in-publish",
            none(),
            publish5("a", 0, false, 0, &props(&[prop(0x0B, &[1])]), b"x"),
            0x82,
        ),
        // Property length as a five-byte variable byte integer [MQTT-1.5.5].
        (
            "property-length-varint-5-bytes",
            none(),
            raw::packet(0x30, &[0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x7f]),
            0x81,
        ),
        // Subscription Identifier as a five-byte variable byte integer.
        (
            "subscription-id-varint-5-bytes",
            none(),
            subscribe5(1, &[6, 0x0B, 0xff, 0xff, 0xff, 0xff, 0x7f], "a", 0),
            0x81,
        ),
        // Subscription Identifier 0 is a protocol error (§3.8.2.1.2).
        (
            "subscription-id-0",
            none(),
            subscribe5(1, &props(&[prop(0x0B, &[0])]), "a", 0),
            0x82,
        ),
        // Subscription Identifier twice in SUBSCRIBE.
        (
            "subscription-id-twice",
            none(),
            subscribe5(1, &props(&[prop(0x0B, &[1]), prop(0x0B, &[2])]), "a", 0),
            0x82,
        ),
        // Subscription options with Retain Handling 3.
        (
            "retain-handling-3",
            none(),
            subscribe5(1, &none(), "a", 0x30),
            0x82,
        ),
        // No Local on a shared subscription [MQTT-3.8.3-4].
        (
            "no-local-on-shared-subscription",
            none(),
            subscribe5(1, &none(), "$share/g/a", 0x04),
            0x82,
        ),
        // Reason String in SUBSCRIBE is not allowed.
        (
            "reason-string-in-subscribe",
            none(),
            subscribe5(1, &props(&[prop_str(0x1F, "why")]), "a", 0),
            0x81,
        ),
        // AUTH without enhanced authentication [MQTT-4.12.0-1].
        (
            "auth-after-connect",
            none(),
            raw::packet(0xF0, &[0x18, 6, 0x15, 0, 3, b'a', b'b', b'c']),
            0x82,
        ),
        // A second CONNECT [MQTT-3.1.0-2].
        (
            "second-connect",
            none(),
            connect5("again", true, 60, &none(), None),
            0x82,
        ),
        // DISCONNECT may not raise a Session Expiry Interval of 0 [MQTT-3.14.2-2].
        (
            "disconnect-raises-zero-session-expiry",
            none(),
            disconnect5(0, &props(&[prop_u32(0x11, 60)])),
            0x82,
        ),
        // Server-to-client packet from a client.
        (
            "connack-from-client",
            none(),
            raw::packet(0x20, &[0, 0, 0]),
            0x82,
        ),
        // Larger than the Maximum Packet Size of 1024 announced in CONNACK.
        (
            "packet-too-large",
            none(),
            publish5("a", 0, false, 0, &none(), &[b'x'; 1100]),
            0x95,
        ),
    ];
    for (tag, connect_props, bytes, reason) in cases {
        disconnects_with(&broker, tag, &connect_props, &bytes, reason).await;
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_announced_in_connack_are_enforced() {
    let broker = start_broker(|c| {
        c.maximum_qos = 1;
        c.retain_available = false;
        c.subscription_identifiers = false;
        c.receive_maximum = 2;
    })
    .await;
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        // QoS above the Maximum QoS of 1 [MQTT-3.2.2-11].
        (
            "qos-above-maximum",
            publish5("a", 2, false, 1, &none(), b"x"),
            0x9B,
        ),
        // RETAIN while Retain Available is 0 [MQTT-3.2.2-14].
        (
            "retain-not-available",
            publish5("a", 1, true, 1, &none(), b"x"),
            0x9A,
        ),
        // Subscription Identifier while they are not available.
        (
            "subscription-id-not-available",
            subscribe5(1, &props(&[prop(0x0B, &[1])]), "a", 0),
            0x82,
        ),
    ];
    for (tag, bytes, reason) in cases {
        disconnects_with(&broker, tag, &none(), &bytes, reason).await;
    }
    broker.stop().await;
    // Receive Maximum: a third unreleased QoS 2 message with a Receive Maximum of 2.
    let broker = start_broker(|c| c.receive_maximum = 2).await;
    let (mut bad, _, connack) =
        raw5(broker.addr, &connect5("bad-rm", true, 60, &none(), None)).await;
    assert!(connack.contains(&(0x21, "2".into())), "{connack:?}");
    for pkid in 1..=3 {
        bad.send(&publish5("rm", 2, false, pkid, &none(), b"x"))
            .await;
    }
    for pkid in 1..=2u16 {
        let rec = read_packet(&mut bad).await;
        assert_eq!((rec.first, &rec.body[..2]), (0x50, &pkid.to_be_bytes()[..]));
    }
    expect_disconnect(&mut bad, 0x93, "receive maximum").await;
    healthy_roundtrip(&broker, "receive-maximum").await;
    broker.stop().await;
}

/// A bad MQTT 5 CONNECT gets CONNACK with the reason code, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connect_properties_get_a_refusing_connack() {
    let broker = start_broker(|c| c.maximum_qos = 1).await;
    let will = |props: Vec<u8>, qos: u8| Will {
        props,
        topic: "w",
        payload: b"x",
        qos,
        retain: false,
    };
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "receive-maximum-0",
            connect5("c", true, 60, &props(&[prop_u16(0x21, 0)]), None),
            0x82,
        ),
        (
            "maximum-packet-size-0",
            connect5("c", true, 60, &props(&[prop_u32(0x27, 0)]), None),
            0x82,
        ),
        (
            "session-expiry-twice",
            connect5(
                "c",
                true,
                60,
                &props(&[prop_u32(0x11, 1), prop_u32(0x11, 2)]),
                None,
            ),
            0x82,
        ),
        (
            "topic-alias-in-connect",
            connect5("c", true, 60, &props(&[prop_u16(0x23, 1)]), None),
            0x81,
        ),
        (
            "request-problem-information-2",
            connect5("c", true, 60, &props(&[prop(0x17, &[2])]), None),
            0x82,
        ),
        (
            "authentication-data-without-method",
            connect5("c", true, 60, &props(&[prop(0x16, &[0, 1, 9])]), None),
            0x82,
        ),
        (
            "session-expiry-in-will-properties",
            connect5(
                "c",
                true,
                60,
                &none(),
                Some(will(props(&[prop_u32(0x11, 1)]), 0)),
            ),
            0x81,
        ),
        (
            "property-length-varint-5-bytes",
            connect5("c", true, 60, &[0xff, 0xff, 0xff, 0xff, 0x7f], None),
            0x81,
        ),
        (
            "will-qos-above-maximum",
            connect5("c", true, 60, &none(), Some(will(none(), 2))),
            0x9B,
        ),
        (
            "authentication-method",
            connect5("c", true, 60, &props(&[prop_str(0x15, "X")]), None),
            0x8C,
        ),
    ];
    for (tag, connect, reason) in cases {
        let mut bad = Raw::connect(broker.addr).await;
        bad.send(&connect).await;
        let rest = bad.read_until_closed().await;
        assert!(rest.len() >= 4, "{tag}: CONNACK expected, got {rest:02x?}");
        assert_eq!(
            (rest[0], rest[2], rest[3]),
            (0x20, 0, reason),
            "{tag}: {rest:02x?}"
        );
        healthy_roundtrip(&broker, tag).await;
    }
    broker.stop().await;
}
