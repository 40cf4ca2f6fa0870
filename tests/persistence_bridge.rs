//! Persistence of the bridge's own session (issue 7): MQTT messages the broker acknowledged to
//! their publishers but the XMPP server had not yet confirmed survive `kill -9` of the bridge
//! and reach the XMPP user after the restart. Real Prosody, slixmpp, rumqttc, the built binary.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::process::{BridgeProcess as Bridge, sync_bridge_config};
use common::prosody::{Prosody, XmppClient};
use common::upstream::{expected, xmpp_bodies};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const MESSAGES: usize = 50;

/// Prosody is down, so the bridge cannot hand anything over; bob's QoS 1 messages are
/// acknowledged by the broker (on disk, in the bridge's session) and wait there. The bridge
/// is killed, Prosody comes back, the bridge restarts on the same store: every message
/// reaches alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acknowledged_toward_xmpp_survive_kill9_of_the_bridge() {
    let mut prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = sync_bridge_config(dir.path(), &prosody, port, &["bob"]);
    let mut bridge = Bridge::start(&config, "first");
    bridge.wait_log("XMPP component link connected.").await;
    // The XMPP server goes away: the bridge cannot hand anything over.
    prosody.kill9();
    let mut opts = MqttOptions::new("bob-phone", "127.0.0.1", port);
    opts.set_credentials("bob", "bobpw");
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    for i in 0..MESSAGES {
        let body = serde_json::json!({ "body": format!("p{i}") }).to_string();
        client
            .publish(
                "users/bob/outbox/alice@localhost",
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while acked < MESSAGES {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!(
                "{acked} of {MESSAGES} acknowledged: {other:?}\n{}",
                bridge.log()
            ),
        }
    }
    drop(eventloop);

    // Nothing reached XMPP; the broker acknowledged everything.
    bridge.kill9();
    prosody.start_again();
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bridge = Bridge::start(&config, "second");
    bridge.wait_log("State recovered from the store.").await;
    let (got, dups) = xmpp_bodies(&mut alice, "p", MESSAGES, Duration::from_secs(30)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        bodies,
        expected("p", 0..MESSAGES),
        "acknowledged messages lost across kill -9; log:\n{}",
        bridge.log()
    );
    eprintln!("all {MESSAGES} delivered after the restart, {dups} duplicates");
}
