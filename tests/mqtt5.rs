//! MQTT 5 features end to end, with rumqttc v5 clients and raw MQTT 5 sockets whose bytes are
//! written and read by the test itself (so the broker's codec is not checking itself). Each
//! test asserts what a subscriber actually receives, properties included.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;
use crate::mqtt5_support;

use std::time::Duration;

use bytes::Bytes;
use common::raw::Raw;
use common::start_broker;
use mqtt5_support::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, Filter, PublishProperties, RetainForwardRule, SubscribeProperties,
};

const QUIET: Duration = Duration::from_millis(300);

/// Payload Format Indicator, Content Type, Response Topic, Correlation Data and User
/// Properties reach a v5 subscriber unchanged and in order; a 3.1.1 subscriber gets the
/// message without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_forwarded_unchanged_and_in_order() {
    let broker = start_broker(|_| {}).await;
    let mut sub = raw5_ok(broker.addr, "props-sub", &[]).await;
    raw_subscribe(&mut sub, 1, &[], "props/#", 1, 1).await;
    let mut v3 = common::connect(broker.addr, "props-v3").await;
    v3.subscribe("props/#", rumqttc::QoS::AtLeastOnce).await;
    let publisher = client5(broker.addr, "props-pub").await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..PublishProperties::default()
    };
    publisher
        .client
        .publish_with_properties("props/x", QoS::AtLeastOnce, false, "{}", properties)
        .await
        .unwrap();
    let got = RawPublish::parse(&read_packet(&mut sub).await);
    assert_eq!(got.topic, "props/x");
    assert_eq!(got.payload, b"{}");
    let user: Vec<&str> = got
        .props
        .iter()
        .filter(|(id, _)| *id == 0x26)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(user, vec!["b=2", "a=1", "b=3"], "user properties in order");
    assert_eq!(got.prop(0x01), Some("1"));
    assert_eq!(got.prop(0x03), Some("application/json"));
    assert_eq!(got.prop(0x08), Some("props/reply"));
    assert_eq!(got.prop(0x09), Some("0001636f7272"));
    assert_eq!(
        got.prop(0x23),
        None,
        "no topic alias toward a client that allows none"
    );
    let old = v3.next_publish().await;
    assert_eq!(
        (old.topic.as_str(), &old.payload[..]),
        ("props/x", &b"{}"[..])
    );
    broker.stop().await;
}

/// Message Expiry: a queued message that expired is never delivered; one still valid
/// arrives with the remaining interval. A retained message expires too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_drops_expired_and_sends_the_remaining_interval() {
    let broker = start_broker(|_| {}).await;
    let persistent = props(&[prop_u32(0x11, 300)]);
    let (mut sub, code, _) = raw5(
        broker.addr,
        &connect5("expiry-sub", true, 60, &persistent, None),
    )
    .await;
    assert_eq!(code, 0);
    raw_subscribe(&mut sub, 1, &[], "exp/#", 1, 1).await;
    sub.send(&disconnect5(0, &[0])).await;
    let _ = sub.read_until_closed().await;
    let publisher = client5(broker.addr, "expiry-pub").await;
    for (topic, secs, retain) in [
        ("exp/short", 1, false),
        ("exp/long", 100, false),
        ("exp/retained", 1, true),
    ] {
        let properties = PublishProperties {
            message_expiry_interval: Some(secs),
            ..PublishProperties::default()
        };
        publisher
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, retain, "m", properties)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (mut sub, code, _) = raw5(
        broker.addr,
        &connect5("expiry-sub", false, 60, &persistent, None),
    )
    .await;
    assert_eq!(code, 0);
    let got = RawPublish::parse(&read_packet(&mut sub).await);
    assert_eq!(got.topic, "exp/long", "the expired messages are dropped");
    let left: u32 = got.prop(0x02).unwrap().parse().unwrap();
    assert!((97..=98).contains(&left), "remaining interval {left}");
    assert!(sub.stays_open(QUIET).await, "nothing else arrives");
    // The retained message expired as well: a new subscriber gets nothing.
    let mut late = raw5_ok(broker.addr, "expiry-late", &[]).await;
    raw_subscribe(&mut late, 1, &[], "exp/#", 1, 1).await;
    assert!(
        late.stays_open(QUIET).await,
        "expired retained message not sent"
    );
    broker.stop().await;
}

/// Retained message with a long expiry: sent on subscribe with the remaining interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_carries_its_remaining_expiry() {
    let broker = start_broker(|_| {}).await;
    let publisher = client5(broker.addr, "ret-exp-pub").await;
    let properties = PublishProperties {
        message_expiry_interval: Some(60),
        ..PublishProperties::default()
    };
    publisher
        .client
        .publish_with_properties("ret/exp", QoS::AtLeastOnce, true, "r", properties)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut sub = raw5_ok(broker.addr, "ret-exp-sub", &[]).await;
    raw_subscribe(&mut sub, 1, &[], "ret/exp", 1, 1).await;
    let got = RawPublish::parse(&read_packet(&mut sub).await);
    assert!(got.retain);
    let left: u32 = got.prop(0x02).unwrap().parse().unwrap();
    assert!((58..=59).contains(&left), "remaining {left}");
    broker.stop().await;
}

/// No Local, Retain As Published and Retain Handling 0, 1 and 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options() {
    let broker = start_broker(|_| {}).await;
    let mut me = client5(broker.addr, "opts-me").await;
    // No Local: my own message does not come back on this subscription.
    let mut filter = Filter::new("opts/local", QoS::AtLeastOnce);
    filter.nolocal = true;
    me.client.subscribe_many([filter]).await.unwrap();
    me.wait_suback().await;
    me.client
        .publish("opts/local", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    let other = client5(broker.addr, "opts-other").await;
    other
        .client
        .publish("opts/local", QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    let got = me.next_publish().await;
    assert_eq!(
        &got.payload[..],
        b"theirs",
        "No Local dropped my own message"
    );

    // Retain As Published: a live retained message keeps RETAIN=1; without it, 0.
    let mut rap = client5(broker.addr, "opts-rap").await;
    let mut keep = Filter::new("opts/rap/keep", QoS::AtMostOnce);
    keep.preserve_retain = true;
    rap.client
        .subscribe_many([keep, Filter::new("opts/rap/clear", QoS::AtMostOnce)])
        .await
        .unwrap();
    rap.wait_suback().await;
    for topic in ["opts/rap/keep", "opts/rap/clear"] {
        other
            .client
            .publish(topic, QoS::AtLeastOnce, true, "r")
            .await
            .unwrap();
        let got = rap.next_publish().await;
        assert_eq!(got.retain, topic.ends_with("keep"), "{topic}");
    }

    // Retain Handling: 0 always, 1 only for a new subscription, 2 never.
    let mut rh = client5(broker.addr, "opts-rh").await;
    let sub = |rule| {
        let mut f = Filter::new("opts/rap/keep", QoS::AtMostOnce);
        f.retain_forward_rule = rule;
        f
    };
    for (rule, expect) in [
        (RetainForwardRule::OnEverySubscribe, true),
        (RetainForwardRule::OnEverySubscribe, true),
        (RetainForwardRule::OnNewSubscribe, false),
        (RetainForwardRule::Never, false),
    ] {
        rh.client.subscribe_many([sub(rule.clone())]).await.unwrap();
        rh.wait_suback().await;
        if expect {
            assert!(rh.next_publish().await.retain, "{rule:?}");
        } else {
            rh.expect_no_publish(QUIET).await;
        }
    }
    let mut fresh = client5(broker.addr, "opts-rh-new").await;
    fresh
        .client
        .subscribe_many([sub(RetainForwardRule::OnNewSubscribe)])
        .await
        .unwrap();
    fresh.wait_suback().await;
    assert!(
        fresh.next_publish().await.retain,
        "SendIfNew on a new subscription"
    );
    broker.stop().await;
}

/// Subscription Identifiers: one PUBLISH carrying the ids of every matching subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_of_every_matching_subscription() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client5(broker.addr, "subid-sub").await;
    for (filter, id) in [("subid/+", 7), ("subid/#", 300_000)] {
        let properties = SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        sub.client
            .subscribe_with_properties(filter, QoS::AtLeastOnce, properties)
            .await
            .unwrap();
        sub.wait_suback().await;
    }
    sub.client
        .subscribe("subid/none", QoS::AtMostOnce)
        .await
        .unwrap();
    sub.wait_suback().await;
    let publisher = client5(broker.addr, "subid-pub").await;
    publisher
        .client
        .publish("subid/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let got = sub.next_publish().await;
    let mut ids = got.properties.unwrap().subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 300_000]);
    sub.expect_no_publish(QUIET).await;
    broker.stop().await;
}

/// Session Expiry: a session outlives its connection for the interval and no longer; Clean
/// Start discards it; DISCONNECT may shorten it to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_and_clean_start() {
    let broker = start_broker(|_| {}).await;
    let connect = |clean: bool, expiry: u32| {
        connect5("sess", clean, 60, &props(&[prop_u32(0x11, expiry)]), None)
    };
    let session_present = |raw: &[u8]| raw[0];
    // 1. Expiry 2 s: back within it, the session and its queued message are there.
    let (mut c, _, _) = raw5(broker.addr, &connect(true, 2)).await;
    raw_subscribe(&mut c, 1, &[], "sess/t", 1, 1).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publisher = client5(broker.addr, "sess-pub").await;
    publisher
        .client
        .publish("sess/t", QoS::AtLeastOnce, false, "queued")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&connect(false, 2)).await;
    let ack = read_packet(&mut c).await;
    assert_eq!(session_present(&ack.body), 1, "session present");
    let got = RawPublish::parse(&read_packet(&mut c).await);
    assert_eq!(got.payload, b"queued");
    // 2. DISCONNECT sets the expiry to 0: the session ends with the connection.
    c.send(&disconnect5(0, &props(&[prop_u32(0x11, 0)]))).await;
    let _ = c.read_until_closed().await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&connect(false, 2)).await;
    assert_eq!(
        session_present(&read_packet(&mut c).await.body),
        0,
        "ended by DISCONNECT"
    );
    // 3. Gone after the interval.
    drop(c);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&connect(false, 2)).await;
    assert_eq!(
        session_present(&read_packet(&mut c).await.body),
        0,
        "expired"
    );
    // 4. Clean Start discards a live session; 0xFFFFFFFF keeps it.
    drop(c);
    let (c, _, _) = raw5(broker.addr, &connect(true, u32::MAX)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&connect(false, u32::MAX)).await;
    assert_eq!(
        session_present(&read_packet(&mut c).await.body),
        1,
        "never expires"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&connect(true, u32::MAX)).await;
    assert_eq!(
        session_present(&read_packet(&mut c).await.body),
        0,
        "clean start"
    );
    broker.stop().await;
}

/// Will Delay Interval: the will waits; a reconnect in time cancels it; will properties
/// travel with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_and_cancel_on_reconnect() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = raw5_ok(broker.addr, "will-watch", &[]).await;
    raw_subscribe(&mut watcher, 1, &[], "will/#", 1, 1).await;
    let connect = |id: &str| {
        let will = Will {
            props: props(&[
                prop_u32(0x18, 2),
                prop_str(0x03, "text/plain"),
                prop(0x26, &[0, 1, b'k', 0, 1, b'v']),
            ]),
            topic: "will/gone",
            payload: id.as_bytes(),
            qos: 1,
            retain: false,
        };
        connect5(id, true, 60, &props(&[prop_u32(0x11, 60)]), Some(will))
    };
    // Reconnect within the delay: no will.
    let (c, _, _) = raw5(broker.addr, &connect("will-back")).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_back, _, _) = raw5(broker.addr, &connect("will-back")).await;
    // Gone for good: the will after about 2 s, not before.
    let (c, _, _) = raw5(broker.addr, &connect("will-gone")).await;
    let t0 = std::time::Instant::now();
    drop(c);
    let got = RawPublish::parse(&read_packet(&mut watcher).await);
    let waited = t0.elapsed();
    assert_eq!(
        got.payload, b"will-gone",
        "only the client that stayed away"
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "will came after {waited:?}"
    );
    assert_eq!(got.prop(0x03), Some("text/plain"));
    assert_eq!(got.prop(0x26), Some("k=v"));
    assert_eq!(got.prop(0x18), None, "Will Delay Interval is not forwarded");
    assert!(
        watcher.stays_open(Duration::from_millis(2500)).await,
        "no will for will-back"
    );
    broker.stop().await;
}

/// Receive Maximum toward the client: no more unacknowledged QoS 1 messages in flight
/// than the client allows; more follow as it acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_limits_messages_in_flight_to_the_client() {
    let broker = start_broker(|_| {}).await;
    let mut sub = raw5_ok(broker.addr, "rm-sub", &[prop_u16(0x21, 2)]).await;
    raw_subscribe(&mut sub, 1, &[], "rm/t", 1, 1).await;
    let publisher = client5(broker.addr, "rm-pub").await;
    for i in 0..5 {
        publisher
            .client
            .publish("rm/t", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let a = RawPublish::parse(&read_packet(&mut sub).await);
    let b = RawPublish::parse(&read_packet(&mut sub).await);
    assert_eq!(
        (a.payload.clone(), b.payload.clone()),
        (b"0".to_vec(), b"1".to_vec())
    );
    assert!(sub.stays_open(QUIET).await, "window of 2 is full");
    sub.send(&common::raw::packet(0x40, &a.pkid.to_be_bytes()))
        .await;
    let c = RawPublish::parse(&read_packet(&mut sub).await);
    assert_eq!(c.payload, b"2");
    assert!(sub.stays_open(QUIET).await, "window full again");
    broker.stop().await;
}

/// Maximum Packet Size toward the client: a message too large for one subscriber is
/// dropped for that subscriber only, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_for_one_subscriber_is_dropped_for_it_only() {
    let broker = start_broker(|_| {}).await;
    let mut small = raw5_ok(broker.addr, "mps-small", &[prop_u32(0x27, 64)]).await;
    raw_subscribe(&mut small, 1, &[], "mps/t", 0, 0).await;
    let mut big = client5(broker.addr, "mps-big").await;
    big.subscribe("mps/t", QoS::AtMostOnce).await;
    let publisher = client5(broker.addr, "mps-pub").await;
    let large = vec![b'x'; 200];
    publisher
        .client
        .publish("mps/t", QoS::AtMostOnce, false, large.clone())
        .await
        .unwrap();
    publisher
        .client
        .publish("mps/t", QoS::AtMostOnce, false, "small")
        .await
        .unwrap();
    assert_eq!(&big.next_publish().await.payload[..], &large[..]);
    assert_eq!(&big.next_publish().await.payload[..], b"small");
    let got = RawPublish::parse(&read_packet(&mut small).await);
    assert_eq!(got.payload, b"small", "the large one was skipped");
    let dropped = broker
        .app
        .broker_stats
        .dropped_too_large
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1);
    broker.stop().await;
}

/// Topic Alias both ways: the broker resolves the client's aliases, and uses its own toward
/// a client within the client's Topic Alias Maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_in_both_directions() {
    let broker = start_broker(|c| c.topic_alias_maximum = 4).await;
    let mut sub = raw5_ok(broker.addr, "alias-sub", &[prop_u16(0x22, 1)]).await;
    raw_subscribe(&mut sub, 1, &[], "alias/#", 0, 0).await;
    let (mut publisher, code, connack) = raw5(
        broker.addr,
        &connect5("alias-pub", true, 60, &props(&[]), None),
    )
    .await;
    assert_eq!(code, 0);
    assert!(connack.contains(&(0x22, "4".into())), "{connack:?}");
    let alias = props(&[prop_u16(0x23, 3)]);
    publisher
        .send(&publish5("alias/one", 0, false, 0, &alias, b"1"))
        .await;
    publisher
        .send(&publish5("", 0, false, 0, &alias, b"2"))
        .await;
    publisher
        .send(&publish5("alias/two", 0, false, 0, &props(&[]), b"3"))
        .await;
    publisher
        .send(&publish5("", 0, false, 0, &alias, b"4"))
        .await;
    let got: Vec<RawPublish> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(RawPublish::parse(&read_packet(&mut sub).await));
        }
        v
    };
    let seen: Vec<(&str, Option<&str>, &[u8])> = got
        .iter()
        .map(|p| (p.topic.as_str(), p.prop(0x23), &p.payload[..]))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("alias/one", Some("1"), &b"1"[..]),
            ("", Some("1"), &b"2"[..]),
            ("alias/two", None, &b"3"[..]),
            ("", Some("1"), &b"4"[..]),
        ],
        "inbound alias resolved; outbound alias 1 set once, used after, none for a 2nd topic"
    );
    // rumqttc resolves the broker's aliases back to topics.
    let mut opts = options5(broker.addr, "alias-rumqttc");
    opts.set_topic_alias_max(Some(5));
    let (mut r, _) = connect5_client(opts).await;
    r.subscribe("alias/#", QoS::AtMostOnce).await;
    for _ in 0..2 {
        publisher
            .send(&publish5("alias/three", 0, false, 0, &props(&[]), b"5"))
            .await;
        assert_eq!(&r.next_publish().await.topic[..], b"alias/three");
    }
    broker.stop().await;
}

/// A failing SUBACK says why in a Reason String, unless the client asked for no problem
/// information.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_suback_carries_a_reason_string() {
    let broker = start_broker(|_| {}).await;
    for (id, request, expect_string) in [("rs-default", None, true), ("rs-off", Some(0), false)] {
        let properties: Vec<Vec<u8>> = request.map(|v| prop(0x17, &[v])).into_iter().collect();
        let mut c = raw5_ok(broker.addr, id, &properties).await;
        c.send(&subscribe5(1, &props(&[]), "a/#/b", 0)).await;
        let ack = read_packet(&mut c).await;
        assert_eq!(ack.kind(), 9);
        let (p, used) = parse_props(&ack.body, 2);
        assert_eq!(ack.body[2 + used..], [0x8F], "{id}: Topic Filter invalid");
        let text = p.iter().find(|(i, _)| *i == 0x1F).map(|(_, t)| t.clone());
        assert_eq!(text.is_some(), expect_string, "{id}: {p:?}");
        if let Some(text) = text {
            assert!(text.starts_with("a/#/b: "), "{text}");
        }
    }
    broker.stop().await;
}

/// CONNACK reflects the configuration; Response Information only when requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_properties_reflect_the_config() {
    let broker = start_broker(|c| {
        c.maximum_qos = 1;
        c.retain_available = false;
        c.wildcard_subscriptions = false;
        c.shared_subscriptions = false;
        c.subscription_identifiers = false;
        c.receive_maximum = 7;
        c.max_packet_size = 4096;
        c.topic_alias_maximum = 3;
        c.server_keep_alive = Some(20);
    })
    .await;
    let mut opts = options5(broker.addr, "");
    opts.set_request_response_info(Some(1));
    opts.set_clean_start(true);
    let (c, ack) = connect5_client(opts).await;
    let p = ack.properties.unwrap();
    assert_eq!(p.max_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.wildcard_subscription_available, Some(0));
    assert_eq!(p.shared_subscription_available, Some(0));
    assert_eq!(p.subscription_identifiers_available, Some(0));
    assert_eq!(p.receive_max, Some(7));
    assert_eq!(p.max_packet_size, Some(4096));
    assert_eq!(p.topic_alias_max, Some(3));
    assert_eq!(p.server_keep_alive, Some(20));
    let id = p.assigned_client_identifier.unwrap();
    assert_eq!(p.response_information, Some(format!("reply/{id}")));
    // What CONNACK said is what SUBACK does (rumqttc ends on a failing SUBACK: raw).
    drop(c);
    let mut raw = raw5_ok(broker.addr, "cfg-raw", &[]).await;
    raw_subscribe(&mut raw, 1, &[], "cfg/+", 0, 0xA2).await;
    raw_subscribe(&mut raw, 2, &[], "$share/g/cfg", 0, 0x9E).await;
    raw_subscribe(&mut raw, 3, &[], "cfg/plain", 2, 1).await;
    // Not requested: no Response Information.
    let (_c, ack) = connect5_client(options5(broker.addr, "no-info")).await;
    assert_eq!(ack.properties.unwrap().response_information, None);
    broker.stop().await;
}

/// Shared subscriptions: messages spread round-robin across the group; a non-shared
/// subscriber gets all; a member leaving with unacknowledged messages has them go to
/// another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_spreads_and_redelivers() {
    let broker = start_broker(|_| {}).await;
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = client5(broker.addr, &format!("share-{i}")).await;
        m.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let mut all = client5(broker.addr, "share-all").await;
    all.subscribe("jobs/#", QoS::AtLeastOnce).await;
    let publisher = client5(broker.addr, "share-pub").await;
    for i in 0..9 {
        publisher
            .client
            .publish("jobs/a", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for _ in 0..9 {
        all.next_publish().await;
    }
    for m in &mut members {
        for _ in 0..3 {
            m.next_publish().await;
        }
        m.expect_no_publish(Duration::from_millis(100)).await;
    }
    // Redelivery: a raw member that never acknowledges, then leaves.
    for m in members.drain(..) {
        m.client.disconnect().await.unwrap();
    }
    let mut other = client5(broker.addr, "share-stays").await;
    other.subscribe("$share/g2/work", QoS::AtLeastOnce).await;
    let mut lazy = raw5_ok(broker.addr, "share-lazy", &[]).await;
    raw_subscribe(&mut lazy, 1, &[], "$share/g2/work", 1, 1).await;
    for i in 0..4 {
        publisher
            .client
            .publish("work", QoS::AtLeastOnce, false, format!("w{i}"))
            .await
            .unwrap();
    }
    let mut got_lazy = Vec::new();
    for _ in 0..2 {
        got_lazy.push(RawPublish::parse(&read_packet(&mut lazy).await).payload);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(other.next_publish().await.payload.to_vec());
    }
    drop(lazy);
    for _ in 0..2 {
        got.push(other.next_publish().await.payload.to_vec());
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            b"w0".to_vec(),
            b"w1".to_vec(),
            b"w2".to_vec(),
            b"w3".to_vec()
        ]
    );
    broker.stop().await;
}

/// Enhanced authentication is not supported: CONNACK 0x8C, and other clients are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_method_gets_bad_authentication_method() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, code, _) = raw5(
        broker.addr,
        &connect5(
            "auth",
            true,
            60,
            &props(&[prop_str(0x15, "SCRAM-SHA-1")]),
            None,
        ),
    )
    .await;
    assert_eq!(code, 0x8C);
    assert!(raw.read_until_closed().await.is_empty());
    let mut opts = options5(broker.addr, "auth-rumqttc");
    opts.set_connect_properties(ConnectProperties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..ConnectProperties::new()
    });
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let err = tokio::time::timeout(common::WAIT, eventloop.poll())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("BadAuthenticationMethod"),
        "{err:?}"
    );
    drop(client);
    let mut ok = client5(broker.addr, "no-auth").await;
    ok.subscribe("auth/t", QoS::AtMostOnce).await;
    broker.stop().await;
}

/// Server-sent DISCONNECT reason codes: session taken over, keep alive timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disconnect_reasons() {
    let broker = start_broker(|_| {}).await;
    let mut first = raw5_ok(broker.addr, "twice", &[]).await;
    let _second = raw5_ok(broker.addr, "twice", &[]).await;
    expect_disconnect(&mut first, 0x8E, "taken over").await;
    let (mut idle, _, _) = raw5(broker.addr, &connect5("idle", true, 1, &props(&[]), None)).await;
    expect_disconnect(&mut idle, 0x8D, "keep alive").await;
    broker.stop().await;
}

/// Mixed versions on one topic: a 3.1.1 publisher reaches a 5.0 subscriber and the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_protocol_versions_on_one_topic() {
    let broker = start_broker(|_| {}).await;
    let mut v5 = client5(broker.addr, "mixed-v5").await;
    v5.subscribe("mixed/t", QoS::ExactlyOnce).await;
    let mut v3 = common::connect(broker.addr, "mixed-v3").await;
    v3.subscribe("mixed/t", rumqttc::QoS::ExactlyOnce).await;
    v3.publish("mixed/t", rumqttc::QoS::ExactlyOnce, false, b"from-3.1.1")
        .await;
    let properties = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        ..PublishProperties::default()
    };
    v5.client
        .publish_with_properties("mixed/t", QoS::AtLeastOnce, false, "from-5", properties)
        .await
        .unwrap();
    let mut at5 = Vec::new();
    for _ in 0..2 {
        let p = v5.next_publish().await;
        at5.push((p.payload.to_vec(), p.qos as u8));
    }
    at5.sort();
    assert_eq!(
        at5,
        vec![(b"from-3.1.1".to_vec(), 2), (b"from-5".to_vec(), 1)]
    );
    let mut at3 = Vec::new();
    for _ in 0..2 {
        at3.push(v3.next_publish().await.payload.to_vec());
    }
    at3.sort();
    assert_eq!(at3, vec![b"from-3.1.1".to_vec(), b"from-5".to_vec()]);
    broker.stop().await;
}

/// A will whose delay outlasts the session goes when the session ends; DISCONNECT 0x04
/// publishes the will at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_goes_when_the_session_ends_first_and_on_disconnect_with_will() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = raw5_ok(broker.addr, "end-watch", &[]).await;
    raw_subscribe(&mut watcher, 1, &[], "end/#", 0, 0).await;
    let connect = |id: &str, delay: u32, expiry: u32| {
        let will = Will {
            props: props(&[prop_u32(0x18, delay)]),
            topic: "end/will",
            payload: id.as_bytes(),
            qos: 0,
            retain: false,
        };
        connect5(id, true, 60, &props(&[prop_u32(0x11, expiry)]), Some(will))
    };
    let (c, _, _) = raw5(broker.addr, &connect("end-session", 60, 1)).await;
    let t0 = std::time::Instant::now();
    drop(c);
    let got = RawPublish::parse(&read_packet(&mut watcher).await);
    assert_eq!(got.payload, b"end-session");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "will after {waited:?}: at the session's end (1 s), not after the 60 s delay"
    );
    let (mut c, _, _) = raw5(broker.addr, &connect("end-0x04", 0, 0)).await;
    c.send(&disconnect5(0x04, &props(&[]))).await;
    let got = RawPublish::parse(&read_packet(&mut watcher).await);
    assert_eq!(got.payload, b"end-0x04", "Disconnect with Will Message");
    broker.stop().await;
}

/// Server Keep Alive replaces the client's value and is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_enforced() {
    let broker = start_broker(|c| c.server_keep_alive = Some(1)).await;
    let (mut c, code, connack) =
        raw5(broker.addr, &connect5("ska", true, 600, &props(&[]), None)).await;
    assert_eq!(code, 0);
    assert!(connack.contains(&(0x13, "1".into())), "{connack:?}");
    let t0 = std::time::Instant::now();
    expect_disconnect(&mut c, 0x8D, "server keep alive").await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t0.elapsed()
    );
    broker.stop().await;
}

/// With retain off, a 3.1.1 client's retained message is delivered but not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_off_keeps_nothing_for_3_1_1_clients() {
    let broker = start_broker(|c| c.retain_available = false).await;
    let mut live = common::connect(broker.addr, "ro-live").await;
    live.subscribe("ro/t", rumqttc::QoS::AtLeastOnce).await;
    let publisher = common::connect(broker.addr, "ro-pub").await;
    publisher
        .publish("ro/t", rumqttc::QoS::AtLeastOnce, true, b"r")
        .await;
    let got = live.next_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], false));
    let mut late = common::connect(broker.addr, "ro-late").await;
    late.subscribe("ro/t", rumqttc::QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
    broker.stop().await;
}
