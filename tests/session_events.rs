//! The broker's session-events hook with real clients: what a listener hears when clients
//! connect, subscribe, unsubscribe, leave in each way, and when wills fire.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::{Duration, Instant};

use common::raw::{self, Raw};
use rumqttc::QoS;
use tokio::sync::mpsc::Receiver;
use xmpp_mqtt_bridge::broker::codec::ProtocolVersion;
use xmpp_mqtt_bridge::broker::session_events::{Departure, SessionEvent};

async fn next(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("a session event in time")
        .expect("listener open")
}

fn departure(e: &SessionEvent) -> (Departure, bool) {
    match e {
        SessionEvent::Disconnected {
            why, will_delayed, ..
        } => (*why, *will_delayed),
        other => panic!("not a departure: {other:?}"),
    }
}

#[tokio::test]
async fn connect_subscribe_unsubscribe_and_normal_disconnect() {
    let broker = common::start_broker(|_| {}).await;
    let mut rx = broker
        .app
        .broker
        .as_ref()
        .unwrap()
        .session_events(64)
        .await
        .unwrap();
    let mut c = common::connect(broker.addr, "watch-1").await;
    match next(&mut rx).await {
        SessionEvent::Connected {
            client_id,
            username,
            protocol,
        } => {
            assert_eq!(&*client_id, "watch-1");
            assert_eq!(username, None);
            assert_eq!(protocol, ProtocolVersion::V311);
        }
        other => panic!("{other:?}"),
    }
    c.subscribe("rooms/+/x", QoS::AtLeastOnce).await;
    match next(&mut rx).await {
        SessionEvent::Subscribed { filters, .. } => assert_eq!(filters, vec!["rooms/+/x"]),
        other => panic!("{other:?}"),
    }
    // A refused filter is not reported.
    c.client
        .subscribe("bad/#/x", QoS::AtMostOnce)
        .await
        .unwrap();
    c.client.unsubscribe("rooms/+/x").await.unwrap();
    match next(&mut rx).await {
        SessionEvent::Unsubscribed { filters, .. } => assert_eq!(filters, vec!["rooms/+/x"]),
        other => panic!("{other:?}"),
    }
    // Unsubscribing from nothing is not reported either.
    c.client.unsubscribe("never").await.unwrap();
    c.disconnect().await;
    assert_eq!(departure(&next(&mut rx).await), (Departure::Normal, false));
    assert!(rx.try_recv().is_err(), "nothing else");
    broker.stop().await;
}

#[tokio::test]
async fn lost_connections_keep_alive_takeover_and_wills() {
    let broker = common::start_broker(|_| {}).await;
    let b = broker.app.broker.as_ref().unwrap();
    let mut rx = b.session_events(64).await.unwrap();

    // Socket dropped: connection lost, then the will.
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(&raw::connect_with_will("w", true, 60, "wills/w", "bye", 0))
        .await;
    raw.read_exact(4).await;
    assert!(matches!(
        next(&mut rx).await,
        SessionEvent::Connected { .. }
    ));
    drop(raw);
    assert_eq!(
        departure(&next(&mut rx).await),
        (Departure::ConnectionLost, false)
    );
    match next(&mut rx).await {
        SessionEvent::WillPublished {
            client_id, topic, ..
        } => assert_eq!((&*client_id, &*topic), ("w", "wills/w")),
        other => panic!("{other:?}"),
    }

    // Silent for 1.5 × 1 s: keep-alive timeout.
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(&raw::connect_packet(4, "k", true, 1)).await;
    raw.read_exact(4).await;
    assert!(matches!(
        next(&mut rx).await,
        SessionEvent::Connected { .. }
    ));
    let silent = Instant::now();
    assert_eq!(
        departure(&next(&mut rx).await),
        (Departure::KeepAliveTimeout, false)
    );
    assert!(silent.elapsed() >= Duration::from_millis(1400));

    // The same client id again: the first is taken over, the second connected.
    let _first = Raw::mqtt(broker.addr, "t").await;
    assert!(matches!(
        next(&mut rx).await,
        SessionEvent::Connected { .. }
    ));
    let _second = Raw::mqtt(broker.addr, "t").await;
    assert_eq!(
        departure(&next(&mut rx).await),
        (Departure::TakenOver, false)
    );
    assert!(matches!(
        next(&mut rx).await,
        SessionEvent::Connected { .. }
    ));

    // In-process clients (the bridge) are never reported.
    let _internal = b.internal_client("quiet").await.unwrap();
    // Shutdown: every connected client leaves with ServerShutdown.
    broker.stop().await;
    let mut shutdown = false;
    while let Ok(Some(e)) = tokio::time::timeout(common::WAIT, rx.recv()).await {
        assert_ne!(e.client_id(), "$internal/quiet", "{e:?}");
        if let SessionEvent::Disconnected { why, .. } = e {
            assert_eq!(why, Departure::ServerShutdown);
            shutdown = true;
        }
    }
    assert!(shutdown, "the connected client's departure at shutdown");
}
