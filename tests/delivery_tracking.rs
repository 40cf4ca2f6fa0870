//! The broker's delivery tracking for in-process publishes (the basis of XEP-0184 receipts):
//! what the publisher is told for QoS 1 and QoS 2 subscribers, QoS 0 subscribers, a full
//! session queue and several subscribers. Raw MQTT sockets with hand-written bytes.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::Duration;

use common::raw::{self, Raw};
use common::start_broker;
use tokio::sync::mpsc::UnboundedReceiver;
use xmpp_mqtt_bridge::broker::InternalClient;
use xmpp_mqtt_bridge::broker::codec::{Properties, Publish, QoS};
use xmpp_mqtt_bridge::broker::tracking::{Settlement, Tracked};

fn publish(topic: &str, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid: 0,
        payload: bytes::Bytes::from_static(b"m"),
        properties: Properties::new(),
    }
}

async fn next(rx: &mut UnboundedReceiver<Tracked>) -> Tracked {
    tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("no tracking report in time")
        .unwrap()
}

async fn nothing(rx: &mut UnboundedReceiver<Tracked>) {
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(quiet.is_err(), "unexpected report: {quiet:?}");
}

/// A raw 3.1.1 client subscribed to `t/#` at `qos`; `clean` false keeps its session.
async fn subscriber(addr: std::net::SocketAddr, id: &str, qos: u8, clean: bool) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&raw::connect_packet(4, id, clean, 60)).await;
    let connack = raw.read_exact(4).await;
    assert_eq!((connack[0], connack[3]), (0x20, 0));
    raw.send(&raw::subscribe_packet(1, "t/#", qos)).await;
    assert_eq!(raw.read_exact(5).await, [0x90, 3, 0, 1, qos]);
    raw
}

/// Reads a PUBLISH with a packet id; returns the id.
async fn read_pkid(raw: &mut Raw) -> u16 {
    let head = raw.read_exact(2).await;
    assert_eq!(head[0] & 0xf0, 0x30, "PUBLISH");
    let body = raw.read_exact(usize::from(head[1])).await;
    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    u16::from_be_bytes([body[2 + tlen], body[3 + tlen]])
}

async fn bridge(broker: &common::TestBroker) -> (InternalClient, UnboundedReceiver<Tracked>) {
    let mut client = broker
        .app
        .broker
        .as_ref()
        .unwrap()
        .internal_client("tracker")
        .await
        .unwrap();
    let rx = client.take_tracked().unwrap();
    (client, rx)
}

#[tokio::test]
async fn qos2_subscriber_settles_on_pubrec_not_on_send() {
    let broker = start_broker(|_| {}).await;
    let (client, mut rx) = bridge(&broker).await;
    let mut sub = subscriber(broker.addr, "s2", 2, true).await;
    client
        .publish_tracked(publish("t/a", QoS::ExactlyOnce), 7)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Tracked::Routed {
            token: 7,
            copies: 1
        }
    );
    let pkid = read_pkid(&mut sub).await;
    nothing(&mut rx).await;
    sub.send(&raw::packet(0x50, &pkid.to_be_bytes())).await; // PUBREC
    let settled = next(&mut rx).await;
    assert!(
        matches!(settled, Tracked::Settled { token: 7, ref client_id, how: Settlement::Acknowledged } if client_id == "s2"),
        "{settled:?}"
    );
    assert_eq!(
        sub.read_exact(4).await,
        [0x62, 2, (pkid >> 8) as u8, pkid as u8],
        "PUBREL"
    );
}

#[tokio::test]
async fn qos0_subscribers_make_no_tracked_copies() {
    let broker = start_broker(|_| {}).await;
    let (client, mut rx) = bridge(&broker).await;
    let _sub = subscriber(broker.addr, "s0", 0, true).await;
    client
        .publish_tracked(publish("t/a", QoS::AtLeastOnce), 1)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Tracked::Routed {
            token: 1,
            copies: 0
        }
    );
    nothing(&mut rx).await;
}

#[tokio::test]
async fn each_subscriber_settles_its_own_copy() {
    let broker = start_broker(|_| {}).await;
    let (client, mut rx) = bridge(&broker).await;
    let mut quick = subscriber(broker.addr, "quick", 1, true).await;
    let mut silent = subscriber(broker.addr, "silent", 1, true).await;
    client
        .publish_tracked(publish("t/a", QoS::AtLeastOnce), 3)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Tracked::Routed {
            token: 3,
            copies: 2
        }
    );
    let pkid = read_pkid(&mut quick).await;
    read_pkid(&mut silent).await;
    quick.send(&raw::packet(0x40, &pkid.to_be_bytes())).await;
    let settled = next(&mut rx).await;
    assert!(
        matches!(settled, Tracked::Settled { ref client_id, how: Settlement::Acknowledged, .. } if client_id == "quick"),
        "{settled:?}"
    );
    nothing(&mut rx).await;
    drop(silent); // clean session: it ends with the connection, unacknowledged
    let settled = next(&mut rx).await;
    assert!(
        matches!(settled, Tracked::Settled { ref client_id, how: Settlement::Dropped("session_ended"), .. } if client_id == "silent"),
        "{settled:?}"
    );
}

#[tokio::test]
async fn a_full_queue_of_an_offline_session_drops_with_a_reason() {
    let broker = start_broker(|c| c.max_queued = 1).await;
    let (client, mut rx) = bridge(&broker).await;
    let mut away = subscriber(broker.addr, "away", 1, false).await;
    away.send(&raw::packet(0xe0, &[])).await; // DISCONNECT: the session stays
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .publish_tracked(publish("t/a", QoS::AtLeastOnce), 1)
        .await
        .unwrap();
    client
        .publish_tracked(publish("t/b", QoS::AtLeastOnce), 2)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Tracked::Routed {
            token: 1,
            copies: 1
        }
    );
    assert_eq!(
        next(&mut rx).await,
        Tracked::Routed {
            token: 2,
            copies: 1
        }
    );
    let settled = next(&mut rx).await;
    assert!(
        matches!(
            settled,
            Tracked::Settled {
                token: 2,
                how: Settlement::Dropped("queue_full"),
                ..
            }
        ),
        "{settled:?}"
    );
    // The kept message is acknowledged after the reconnect.
    let mut back = Raw::connect(broker.addr).await;
    back.send(&raw::connect_packet(4, "away", false, 60)).await;
    assert_eq!(back.read_exact(4).await, [0x20, 2, 1, 0], "session present");
    let pkid = read_pkid(&mut back).await;
    nothing(&mut rx).await;
    back.send(&raw::packet(0x40, &pkid.to_be_bytes())).await;
    let settled = next(&mut rx).await;
    assert!(
        matches!(
            settled,
            Tracked::Settled {
                token: 1,
                how: Settlement::Acknowledged,
                ..
            }
        ),
        "{settled:?}"
    );
}
