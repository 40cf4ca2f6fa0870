//! MQTT 3.1.1 broker behaviour with real clients: rumqttc and raw sockets.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::{self, Raw};
use common::{connect, connect_with, options, start_broker};
use rumqttc::{Event, LastWill, Packet, QoS};
use xmpp_mqtt_bridge::broker::guard::{GuardNote, PublishGuard, Refused};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_at_every_qos_with_downgrade() {
    let broker = start_broker(|_| {}).await;
    let mut sub = connect(broker.addr, "sub").await;
    sub.subscribe("q/0", QoS::AtMostOnce).await;
    sub.subscribe("q/1", QoS::AtLeastOnce).await;
    sub.subscribe("q/2", QoS::ExactlyOnce).await;
    let publisher = connect(broker.addr, "pub").await;
    for (topic, qos) in [
        ("q/0", QoS::AtMostOnce),
        ("q/1", QoS::AtLeastOnce),
        ("q/2", QoS::ExactlyOnce),
    ] {
        publisher.publish(topic, qos, false, topic.as_bytes()).await;
        let got = sub.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), got.qos, &got.payload[..]),
            (topic, qos, topic.as_bytes())
        );
        assert!(!got.retain);
    }
    // Delivered at the lower of publish and subscription QoS.
    publisher
        .publish("q/0", QoS::ExactlyOnce, false, b"down")
        .await;
    assert_eq!(sub.next_publish().await.qos, QoS::AtMostOnce);
    publisher
        .publish("q/1", QoS::ExactlyOnce, false, b"down")
        .await;
    assert_eq!(sub.next_publish().await.qos, QoS::AtLeastOnce);
    publisher
        .publish("q/2", QoS::AtLeastOnce, false, b"down")
        .await;
    assert_eq!(sub.next_publish().await.qos, QoS::AtLeastOnce);
    assert!(
        broker
            .app
            .broker_stats
            .messages_received
            .load(Ordering::Relaxed)
            >= 6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_and_dollar_topics() {
    let broker = start_broker(|c| c.sys_interval = Some(Duration::from_millis(200))).await;
    let mut all = connect(broker.addr, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = connect(broker.addr, "plus").await;
    plus.subscribe("sport/+/player1", QoS::AtMostOnce).await;
    let mut sys = connect(broker.addr, "sys").await;
    sys.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    let p = connect(broker.addr, "p").await;
    p.publish("sport/tennis/player1", QoS::AtMostOnce, false, b"1")
        .await;
    assert_eq!(plus.next_publish().await.topic, "sport/tennis/player1");
    assert_eq!(all.next_publish().await.topic, "sport/tennis/player1");
    p.publish("sport/tennis/player2", QoS::AtMostOnce, false, b"2")
        .await;
    assert_eq!(all.next_publish().await.topic, "sport/tennis/player2");
    plus.expect_no_publish(Duration::from_millis(200)).await;
    // $SYS statistics arrive, but "#" does not match topics starting with '$' [MQTT-4.7.2-1].
    // The first value may predate the last connections; the next ones count all four.
    let mut connected = 0;
    for _ in 0..10 {
        let stat = sys.next_publish().await;
        connected = std::str::from_utf8(&stat.payload).unwrap().parse().unwrap();
        if connected == 4 {
            break;
        }
    }
    assert_eq!(connected, 4);
    all.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_set_replace_delete() {
    let broker = start_broker(|_| {}).await;
    let p = connect(broker.addr, "p").await;
    p.publish("r/a", QoS::AtLeastOnce, true, b"one").await;
    p.publish("r/a", QoS::AtLeastOnce, true, b"two").await;
    p.publish("r/b", QoS::AtMostOnce, true, b"bee").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s1 = connect(broker.addr, "s1").await;
    s1.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got = [s1.next_publish().await, s1.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..], got[0].retain),
        ("r/a", &b"two"[..], true)
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..], got[1].retain),
        ("r/b", &b"bee"[..], true)
    );
    assert_eq!(
        got[1].qos,
        QoS::AtMostOnce,
        "retained QoS is min(publish, subscription)"
    );
    // A live message on an established subscription has RETAIN=0 [MQTT-3.3.1-9].
    p.publish("r/a", QoS::AtLeastOnce, true, b"three").await;
    let live = s1.next_publish().await;
    assert!(!live.retain);
    // An empty retained payload deletes [MQTT-3.3.1-10].
    p.publish("r/a", QoS::AtLeastOnce, true, b"").await;
    assert_eq!(s1.next_publish().await.payload.len(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s2 = connect(broker.addr, "s2").await;
    s2.subscribe("r/a", QoS::AtLeastOnce).await;
    s2.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_abnormal_close_not_on_disconnect() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut opts = options(broker.addr, "polite");
    opts.set_last_will(LastWill::new(
        "wills/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut polite = connect_with(opts).await;
    polite.disconnect().await;
    watcher.expect_no_publish(Duration::from_millis(300)).await;

    // A raw client with a will that drops its socket.
    let mut rude = Raw::connect(broker.addr).await;
    rude.send(&raw::connect_with_will(
        "rude",
        true,
        60,
        "wills/rude",
        "rude is gone",
        1,
    ))
    .await;
    assert_eq!(rude.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    drop(rude);
    let will = watcher.next_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/rude", &b"rude is gone"[..])
    );
    assert_eq!(will.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_closes_silent_clients_and_pings_keep_them() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = connect(broker.addr, "watcher").await;
    watcher.subscribe("ka/#", QoS::AtMostOnce).await;
    // Keep Alive 1 s: closed after 1.5 s of silence, and its will fires.
    let mut silent = Raw::connect(broker.addr).await;
    silent
        .send(&raw::connect_with_will(
            "silent",
            true,
            1,
            "ka/silent",
            "timeout",
            0,
        ))
        .await;
    assert_eq!(silent.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    let started = std::time::Instant::now();
    assert!(silent.read_until_closed().await.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(&watcher.next_publish().await.payload[..], b"timeout");

    // Pinging every 500 ms keeps a Keep Alive 1 s client connected past 3 s.
    let mut pinger = Raw::connect(broker.addr).await;
    pinger
        .send(&raw::connect_packet(4, "pinger", true, 1))
        .await;
    assert_eq!(pinger.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pinger.send(&[0xc0, 0x00]).await;
        assert_eq!(pinger.read_exact(2).await, vec![0xd0, 0x00], "PINGRESP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_same_id_takes_over() {
    let broker = start_broker(|_| {}).await;
    let mut first = Raw::mqtt(broker.addr, "same").await;
    let mut second = Raw::mqtt(broker.addr, "same").await;
    assert!(
        first.read_until_closed().await.is_empty(),
        "first connection closed"
    );
    second.send(&[0xc0, 0x00]).await;
    assert_eq!(second.read_exact(2).await, vec![0xd0, 0x00]);
    assert_eq!(
        broker
            .app
            .broker_stats
            .clients_connected
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_subscriptions_and_queues() {
    let broker = start_broker(|_| {}).await;
    let mut opts = options(broker.addr, "durable");
    opts.set_clean_session(false);
    let mut durable = connect_with(opts.clone()).await;
    durable.subscribe("inbox/durable", QoS::AtLeastOnce).await;
    durable.disconnect().await;

    let p = connect(broker.addr, "p").await;
    for i in 0..5u8 {
        p.publish("inbox/durable", QoS::AtLeastOnce, false, &[b'0' + i])
            .await;
    }
    p.publish(
        "inbox/durable",
        QoS::AtMostOnce,
        false,
        b"qos0 is not queued",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (client, eventloop) = rumqttc::AsyncClient::new(opts, 100);
    let mut again = common::spawn_loop(client, eventloop);
    let ack = again
        .wait_event(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
        .await;
    let Some(Event::Incoming(Packet::ConnAck(ack))) = ack else {
        panic!("no CONNACK")
    };
    assert!(ack.session_present, "session present [MQTT-3.2.2-2]");
    for i in 0..5u8 {
        let m = again.next_publish().await;
        assert_eq!(&m.payload[..], &[b'0' + i], "queued messages in order");
    }
    again.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_previous_state() {
    let broker = start_broker(|_| {}).await;
    let mut opts = options(broker.addr, "flip");
    opts.set_clean_session(false);
    let mut c = connect_with(opts).await;
    c.subscribe("flip/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut fresh = connect(broker.addr, "flip").await; // rumqttc default: clean session
    let p = connect(broker.addr, "p").await;
    p.publish("flip/t", QoS::AtLeastOnce, false, b"x").await;
    fresh.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    let broker = start_broker(|_| {}).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::connect_packet(4, "forgetful", false, 60))
        .await;
    assert_eq!(c.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    c.send(&raw::subscribe_packet(1, "dup/t", 1)).await;
    assert_eq!(c.read_exact(5).await, vec![0x90, 0x03, 0x00, 0x01, 0x01]);
    let mut p = Raw::mqtt(broker.addr, "p").await;
    p.send(&raw::publish_packet(b"dup/t", 1, 9, b"hello")).await;
    assert_eq!(
        p.read_exact(4).await,
        vec![0x40, 0x02, 0x00, 0x09],
        "PUBACK to publisher"
    );
    let first = c.read_exact(2 + 2 + 5 + 2 + 5).await;
    assert_eq!(first[0], 0x32, "QoS 1, no DUP");
    let pkid = [first[9], first[10]];
    drop(c); // never acknowledged

    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::connect_packet(4, "forgetful", false, 60))
        .await;
    assert_eq!(
        c.read_exact(4).await,
        vec![0x20, 0x02, 0x01, 0x00],
        "session present"
    );
    let again = c.read_exact(first.len()).await;
    assert_eq!(again[0], 0x3a, "DUP set on redelivery [MQTT-3.3.1-1]");
    assert_eq!(
        &again[1..],
        &first[1..],
        "same packet id, topic and payload"
    );
    c.send(&[0x40, 0x02, pkid[0], pkid[1]]).await;
    assert!(
        c.stays_open(Duration::from_millis(300)).await,
        "nothing more to send"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_duplicates_are_delivered_once() {
    let broker = start_broker(|_| {}).await;
    let mut sub = connect(broker.addr, "sub").await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut p = Raw::mqtt(broker.addr, "p").await;
    let mut publish = raw::publish_packet(b"q2", 2, 5, b"once");
    p.send(&publish).await;
    assert_eq!(
        p.read_exact(4).await,
        vec![0x50, 0x02, 0x00, 0x05],
        "PUBREC"
    );
    publish[0] |= 0x08; // DUP retransmission before PUBREL
    p.send(&publish).await;
    assert_eq!(
        p.read_exact(4).await,
        vec![0x50, 0x02, 0x00, 0x05],
        "PUBREC again"
    );
    p.send(&[0x62, 0x02, 0x00, 0x05]).await;
    assert_eq!(
        p.read_exact(4).await,
        vec![0x70, 0x02, 0x00, 0x05],
        "PUBCOMP"
    );
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    sub.expect_no_publish(Duration::from_millis(300)).await;
    // After PUBREL the id is free again: a new message with id 5 is delivered.
    p.send(&raw::publish_packet(b"q2", 2, 5, b"twice")).await;
    assert_eq!(p.read_exact(4).await, vec![0x50, 0x02, 0x00, 0x05]);
    assert_eq!(&sub.next_publish().await.payload[..], b"twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_and_overflow_counted() {
    let broker = start_broker(|c| c.max_queued = 3).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send(&raw::connect_packet(4, "slow", false, 60)).await;
    c.read_exact(4).await;
    c.send(&raw::subscribe_packet(1, "flood", 1)).await;
    c.read_exact(5).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = Raw::mqtt(broker.addr, "p").await;
    for i in 1..=10u16 {
        p.send(&raw::publish_packet(b"flood", 1, i, &[i as u8]))
            .await;
        p.read_exact(4).await;
    }
    // The PUBACK is queued before the fan-out, so the last drop may be counted just after it.
    let dropped = || {
        broker
            .app
            .broker_stats
            .dropped_queue_full
            .load(Ordering::Relaxed)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while dropped() < 7 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dropped(), 7);
    let mut opts = options(broker.addr, "slow");
    opts.set_clean_session(false);
    let mut again = connect_with(opts).await;
    for i in 1..=3u8 {
        assert_eq!(
            &again.next_publish().await.payload[..],
            &[i],
            "oldest kept, newest dropped"
        );
    }
    again.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_client_id_gets_an_id() {
    let broker = start_broker(|_| {}).await;
    let mut a = Raw::connect(broker.addr).await;
    a.send(&raw::connect_packet(4, "", true, 30)).await;
    assert_eq!(a.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    let mut b = Raw::connect(broker.addr).await;
    b.send(&raw::connect_packet(4, "", true, 30)).await;
    assert_eq!(b.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    // Distinct ids: neither took the other over.
    a.send(&[0xc0, 0x00]).await;
    assert_eq!(a.read_exact(2).await, vec![0xd0, 0x00]);
    assert_eq!(
        broker
            .app
            .broker_stats
            .clients_connected
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_invalid_filters_fail() {
    let broker = start_broker(|_| {}).await;
    let mut s = Raw::mqtt(broker.addr, "s").await;
    s.send(&raw::subscribe_packet(1, "u/t", 1)).await;
    assert_eq!(s.read_exact(5).await, vec![0x90, 0x03, 0x00, 0x01, 0x01]);
    // Invalid filter: failure code 0x80, connection stays.
    s.send(&raw::subscribe_packet(2, "u/#/x", 1)).await;
    assert_eq!(s.read_exact(5).await, vec![0x90, 0x03, 0x00, 0x02, 0x80]);
    let mut body = 3u16.to_be_bytes().to_vec();
    raw::string(b"u/t", &mut body);
    s.send(&raw::packet(0xa2, &body)).await;
    assert_eq!(
        s.read_exact(4).await,
        vec![0xb0, 0x02, 0x00, 0x03],
        "UNSUBACK"
    );
    let mut p = Raw::mqtt(broker.addr, "p").await;
    p.send(&raw::publish_packet(b"u/t", 0, 0, b"x")).await;
    assert!(
        s.stays_open(Duration::from_millis(300)).await,
        "nothing delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_wills_then_closes() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = Raw::mqtt(broker.addr, "watcher").await;
    watcher.send(&raw::subscribe_packet(1, "bye/#", 0)).await;
    watcher.read_exact(5).await;
    let mut mortal = Raw::connect(broker.addr).await;
    mortal
        .send(&raw::connect_with_will(
            "mortal",
            true,
            60,
            "bye/mortal",
            "server went away",
            0,
        ))
        .await;
    mortal.read_exact(4).await;
    assert!(broker.stop().await, "drained within the grace period");
    let before_close = watcher.read_until_closed().await;
    assert_eq!(
        before_close,
        raw::publish_packet(b"bye/mortal", 0, 0, b"server went away")
    );
    assert!(mortal.read_until_closed().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_client_sees_publisher_identity_and_no_local() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.passwd");
    xmpp_mqtt_bridge::broker::auth::set_user(&users, "alice", b"pw").unwrap();
    let broker = start_broker(|c| c.password_file = Some(users.clone())).await;
    let mut bridge = broker
        .app
        .broker
        .as_ref()
        .unwrap()
        .internal_client("bridge")
        .await
        .unwrap();
    let codes = bridge
        .subscribe(
            &["out/#".to_string()],
            xmpp_mqtt_bridge::broker::codec::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert_eq!(codes, vec![1]);
    let mut alice = Raw::connect(broker.addr).await;
    alice
        .send(&raw::connect_with_login("alice-phone", "alice", "pw"))
        .await;
    assert_eq!(alice.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    alice
        .send(&raw::publish_packet(b"out/x", 1, 3, b"hi"))
        .await;
    let got = tokio::time::timeout(common::WAIT, bridge.recv())
        .await
        .unwrap()
        .unwrap();
    let origin = got.origin.expect("origin of a client publish");
    assert_eq!(origin.username.as_deref(), Some("alice"));
    assert_eq!(&*origin.client_id, "alice-phone");
    assert_eq!(&got.publish.payload[..], b"hi");
    bridge.ack(&got.publish).await.unwrap();
    // What the bridge publishes reaches MQTT clients but never comes back to it (No Local).
    alice.send(&raw::subscribe_packet(1, "out/#", 0)).await;
    let mut rest = alice.read_exact(4).await; // PUBACK for id 3
    assert_eq!(rest, vec![0x40, 0x02, 0x00, 0x03]);
    rest = alice.read_exact(5).await;
    assert_eq!(rest, vec![0x90, 0x03, 0x00, 0x01, 0x00]);
    let publish = xmpp_mqtt_bridge::broker::codec::Publish {
        dup: false,
        qos: xmpp_mqtt_bridge::broker::codec::QoS::AtMostOnce,
        retain: false,
        topic: "out/from-bridge".into(),
        pkid: 0,
        payload: bytes::Bytes::from_static(b"b"),
        properties: Default::default(),
    };
    bridge.publish(publish).await.unwrap();
    let expected = raw::publish_packet(b"out/from-bridge", 0, 0, b"b");
    assert_eq!(alice.read_exact(expected.len()).await, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bridge.recv())
            .await
            .is_err()
    );
}

/// A publish guard for the test: refuses `out/refuse`, notes the payload of `out/note/...`.
struct NotingGuard;

impl PublishGuard for NotingGuard {
    fn check(
        &self,
        topic: &str,
        payload: &[u8],
        _user: Option<&str>,
    ) -> Result<Option<GuardNote>, Refused> {
        if topic == "out/refuse" {
            return Err(Refused {
                reason: 0x87,
                why: "test".into(),
            });
        }
        let note = String::from_utf8_lossy(payload).into_owned();
        Ok(topic
            .starts_with("out/note/")
            .then(|| Arc::new(note) as GuardNote))
    }
}

fn note(d: &xmpp_mqtt_bridge::broker::Delivery) -> Option<String> {
    d.carried
        .as_ref()
        .map(|c| c.downcast_ref::<String>().unwrap().clone())
}

/// What the publish guard worked out reaches the in-process client with the client publish's
/// copy only: not a publish the guard had nothing to say about, not a publish of another
/// in-process client; network subscribers get the same bytes as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_note_reaches_only_the_in_process_copy_of_that_publish() {
    let broker = start_broker(|_| {}).await;
    let handle = broker.app.broker.as_ref().unwrap();
    handle
        .set_publish_guard(Arc::new(NotingGuard))
        .await
        .unwrap();
    let mut bridge = handle.internal_client("bridge").await.unwrap();
    let qos1 = xmpp_mqtt_bridge::broker::codec::QoS::AtLeastOnce;
    bridge
        .subscribe(&["out/#".to_string()], qos1)
        .await
        .unwrap();
    let mut watcher = Raw::mqtt(broker.addr, "watcher").await;
    watcher.send(&raw::subscribe_packet(1, "out/#", 1)).await;
    assert_eq!(
        watcher.read_exact(5).await,
        vec![0x90, 0x03, 0x00, 0x01, 0x01]
    );
    let mut publisher = Raw::mqtt(broker.addr, "publisher").await;
    publisher
        .send(&raw::publish_packet(b"out/note/1", 1, 7, b"a"))
        .await;
    assert_eq!(publisher.read_exact(4).await, vec![0x40, 0x02, 0x00, 0x07]);
    publisher
        .send(&raw::publish_packet(b"out/plain", 0, 0, b"b"))
        .await;
    publisher
        .send(&raw::publish_packet(b"out/refuse", 0, 0, b"c"))
        .await;
    let mut retained = raw::publish_packet(b"out/note/r", 0, 0, b"d");
    retained[0] |= 0x01;
    publisher.send(&retained).await;

    let mut got = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(common::WAIT, bridge.recv())
            .await
            .unwrap()
            .unwrap();
        bridge.ack(&d.publish).await.unwrap();
        got.push((d.publish.topic.to_string(), note(&d)));
    }
    let want = [
        ("out/note/1", Some("a")),
        ("out/plain", None),
        ("out/note/r", Some("d")),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(t, n)| (t.to_string(), n.map(String::from)))
        .collect();
    assert_eq!(got, want);
    // The network subscriber: the same packets as ever, and not the refused one.
    for expected in [
        raw::publish_packet(b"out/note/1", 1, 1, b"a"),
        raw::publish_packet(b"out/plain", 0, 0, b"b"),
        raw::publish_packet(b"out/note/r", 0, 0, b"d"),
    ] {
        assert_eq!(watcher.read_exact(expected.len()).await, expected);
    }
    // A publish of an in-process client does not pass the guard: its copies carry nothing.
    let mut other = handle.internal_client("other").await.unwrap();
    other.subscribe(&["out/#".to_string()], qos1).await.unwrap();
    let publish = xmpp_mqtt_bridge::broker::codec::Publish {
        dup: false,
        qos: xmpp_mqtt_bridge::broker::codec::QoS::AtMostOnce,
        retain: false,
        topic: "out/note/internal".into(),
        pkid: 0,
        payload: bytes::Bytes::from_static(b"e"),
        properties: Default::default(),
    };
    bridge.publish(publish).await.unwrap();
    let d = tokio::time::timeout(common::WAIT, other.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&*d.publish.topic, note(&d)), ("out/note/internal", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_never_resumes_a_clean_session() {
    // Regression: a CleanSession=1 session ends with its connection, even when a second
    // connection with CleanSession=0 takes it over while it is open [MQTT-3.1.2-6].
    let broker = start_broker(|_| {}).await;
    let mut first = Raw::connect(broker.addr).await;
    first.send(&raw::connect_packet(4, "X", true, 60)).await;
    assert_eq!(first.read_exact(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    first.send(&raw::subscribe_packet(1, "old/sub", 1)).await;
    first.read_exact(5).await;
    let mut second = Raw::connect(broker.addr).await;
    second.send(&raw::connect_packet(4, "X", false, 60)).await;
    assert_eq!(
        second.read_exact(4).await,
        vec![0x20, 0x02, 0x00, 0x00],
        "no session present"
    );
    let mut p = Raw::mqtt(broker.addr, "p").await;
    p.send(&raw::publish_packet(b"old/sub", 0, 0, b"x")).await;
    assert!(
        second.stays_open(Duration::from_millis(300)).await,
        "old subscription is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_then_immediate_reconnect_publishes_no_will() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = connect(broker.addr, "watcher").await;
    watcher.subscribe("w/#", QoS::AtMostOnce).await;
    for round in 0..20 {
        let mut c = Raw::connect(broker.addr).await;
        c.send(&raw::connect_with_will(
            "bouncer",
            false,
            60,
            "w/bouncer",
            "will",
            0,
        ))
        .await;
        c.read_exact(4).await;
        // DISCONNECT and, without waiting, the next connection (round {round}).
        c.send(&[0xe0, 0x00]).await;
        drop(c);
        let _ = round;
    }
    watcher.expect_no_publish(Duration::from_millis(500)).await;
}
