//! Receipt bookkeeping survives `kill -9` of the bridge (issue 7, "the ids needed for
//! receipts"; issue 5 for the receipts themselves). Real Prosody, slixmpp with its XEP-0184
//! plugin (`tests/clients/xmpp_chat_client.py`), paho-mqtt 2.x (`tests/clients/paho_chat.py`),
//! the built binary killed with SIGKILL and restarted on the same store.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::Duration;

use common::paho_chat::PahoChat as Paho;
use common::process::{BridgeProcess as Bridge, sync_bridge_config};
use common::prosody::{Prosody, XmppClient};
use serde_json::{Value, json};

const BOB: &str = "bob@mqtt.localhost";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(2000);

/// Counts the receipts for `id` reaching `client` until it has been quiet for [`QUIET`].
async fn receipts_for(client: &mut XmppClient, id: &str) -> usize {
    let mut n = 0;
    while let Ok(Some(v)) = tokio::time::timeout(QUIET, client.next_event_quiet()).await {
        if v["event"] == "message" && v["received"] == id {
            n += 1;
        }
    }
    n
}

/// (a) XMPP -> MQTT: alice asks for a receipt; bob's persistent session is offline, so the
/// message waits in the store. The bridge is killed and restarted; bob comes back and
/// acknowledges; alice gets `<received/>` exactly once. Without the tracked record (before
/// this change) the message came back but no receipt was ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_owed_to_xmpp_survives_kill9_and_is_sent_once_after_the_ack() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = sync_bridge_config(dir.path(), &prosody, port, &["alice", "bob"]);
    let mut bridge = Bridge::start(&config, "first");
    bridge.wait_log("XMPP component link connected.").await;
    let keep = ["--v311", "--client-id", "bob-tablet", "--keep-session"];
    let mut args = keep.to_vec();
    args.extend(["--sub", "users/bob/inbox/#"]);
    Paho::start(port, "bob", &args).await.finish().await;

    let mut alice =
        XmppClient::connect_script(&prosody, "alice", "clients/xmpp_chat_client.py", &[]).await;
    let send =
        json!({"cmd": "chat", "to": BOB, "id": "k-1", "body": "before the crash", "receipt": true});
    alice.command(send).await;
    // Bob is away: no receipt yet (and the message is in the store meanwhile).
    assert_eq!(receipts_for(&mut alice, "k-1").await, 0);
    bridge.kill9();

    let bridge = Bridge::start(&config, "second");
    bridge.wait_log("State recovered from the store.").await;
    assert!(
        bridge.log().contains("receipts_owed=1"),
        "the owed receipt was not read back:\n{}",
        bridge.log()
    );
    bridge.wait_log("XMPP component link connected.").await;
    let mut args = keep.to_vec();
    args.extend(["--count", "1"]);
    let mut bob = Paho::start(port, "bob", &args).await;
    let m = (bob.try_wait("message").await)
        .unwrap_or_else(|why| panic!("{why}; bridge log:\n{}", bridge.log()));
    let env: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
    assert_eq!(env["body"], "before the crash");
    assert_eq!(env["receipt"], true);
    bob.finish().await;
    let got = alice
        .wait_for(|e| e["event"] == "message" && e["received"] == "k-1")
        .await;
    assert_eq!(got["from"], BOB);
    assert_eq!(
        receipts_for(&mut alice, "k-1").await,
        0,
        "a second receipt for the same message"
    );
}

/// (b) MQTT -> XMPP: bob publishes with an MQTT 5 Response Topic and Correlation Data; the
/// stanza reaches alice, whose client does not answer receipts by itself. The bridge is
/// killed and restarted; alice then sends `<received/>`; bob's persistent session gets it on
/// its Response Topic with its Correlation Data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_route_survives_kill9_and_the_late_receipt_reaches_the_mqtt_publisher() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = sync_bridge_config(dir.path(), &prosody, port, &["alice", "bob"]);
    let mut bridge = Bridge::start(&config, "first");
    bridge.wait_log("XMPP component link connected.").await;
    let mut alice = XmppClient::connect_script(
        &prosody,
        "alice",
        "clients/xmpp_chat_client.py",
        &["--no-auto-ack"],
    )
    .await;
    let args = [
        "--client-id",
        "bob-app",
        "--keep-session",
        "--sub",
        "replies/bob",
        "--pub",
        "users/bob/outbox/alice@localhost",
        r#"{"body":"answer after the crash","id":"q-9"}"#,
        "--response-topic",
        "replies/bob",
        "--correlation",
        "corr-9",
    ];
    let paho = Paho::start(port, "bob", &args).await;
    let m = alice
        .wait_for(|e| e["event"] == "message" && e["body"] == "answer after the crash")
        .await;
    assert_eq!(
        (m["id"].as_str(), m["receipt_request"].as_bool()),
        (Some("q-9"), Some(true))
    );
    paho.finish().await;
    // The route is written with the batch that settles bob's message in the bridge's session;
    // give the server's confirmation a moment to come back before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bridge.kill9();

    let bridge = Bridge::start(&config, "second");
    bridge.wait_log("State recovered from the store.").await;
    assert!(
        bridge.log().contains("reply_routes=1"),
        "the reply route was not read back:\n{}",
        bridge.log()
    );
    bridge.wait_log("XMPP component link connected.").await;
    alice
        .send_raw(&format!(
            "<message to='{BOB}' id='rcpt-9'><received xmlns='urn:xmpp:receipts' id='q-9'/></message>"
        ))
        .await;
    let args = [
        "--client-id",
        "bob-app",
        "--keep-session",
        "--sub",
        "replies/bob",
        "--count",
        "1",
    ];
    let mut bob = Paho::start(port, "bob", &args).await;
    let r = (bob.try_wait("message").await)
        .unwrap_or_else(|why| panic!("{why}; bridge log:\n{}", bridge.log()));
    assert_eq!(r["topic"], "replies/bob");
    assert_eq!(r["correlation"], "corr-9");
    let v: Value = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("receipt"), Some("q-9"))
    );
    bob.finish().await;
    assert!(
        !alice_saw_twice(&mut alice).await,
        "the message was sent to alice again after the restart: the route was not what made this pass"
    );
}

/// Whether the message reached alice a second time (a redelivery after the restart would
/// recreate the route and hide a lost one).
async fn alice_saw_twice(alice: &mut XmppClient) -> bool {
    let mut again = false;
    while let Ok(Some(v)) =
        tokio::time::timeout(Duration::from_millis(500), alice.next_event_quiet()).await
    {
        again |= v["event"] == "message" && v["body"] == "answer after the crash";
    }
    again
}
