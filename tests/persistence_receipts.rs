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

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::process::BridgeProcess as Bridge;
use common::prosody::{COMPONENT, Prosody, SECRET, XmppClient};
use common::upstream::repo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const BOB: &str = "bob@mqtt.localhost";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(2000);

/// The bridge's config: embedded broker with `sync` persistence, Prosody, the shipped rules.
fn config(dir: &Path, prosody: &Prosody, port: u16) -> std::path::PathBuf {
    let users = dir.join("users");
    for user in ["alice", "bob"] {
        xmpp_mqtt_bridge::broker::auth::set_user(&users, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nlevel = \"info\"\n\n\
             [broker]\nlisten = [\"127.0.0.1:{port}\"]\npassword_file = \"{}\"\n\n\
             [persistence]\ndir = \"data\"\ndurability = \"sync\"\n\n\
             [xmpp]\nserver = \"{}\"\ndomain = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\n\
             ping_interval = \"300ms\"\nread_timeout = \"1s\"\nreconnect_min = \"100ms\"\n\
             reconnect_max = \"500ms\"\n\n\
             [mapping]\ndir = \"{}\"\n\n[admin]\nenabled = false\n",
            users.display(),
            prosody.component_addr(),
            repo("mappings").display()
        ),
    )
    .unwrap();
    path
}

/// One run of `tests/clients/paho_chat.py`.
struct Paho {
    child: tokio::process::Child,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Paho {
    /// Starts paho with `args` (after `--port` and `--user`) and waits until it is subscribed.
    async fn start(port: u16, user: &str, args: &[&str]) -> Paho {
        let mut child = tokio::process::Command::new(common::python())
            .arg(common::test_file("clients/paho_chat.py"))
            .args(["--port", &port.to_string(), "--user", user])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut paho = Paho { child, events };
        paho.wait("ready").await;
        paho
    }

    async fn wait(&mut self, event: &str) -> Value {
        match self.try_wait(event).await {
            Ok(v) => v,
            Err(why) => panic!("{why}"),
        }
    }

    /// The next `event` line, or why there was none within [`common::WAIT`].
    async fn try_wait(&mut self, event: &str) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if v["event"] == event => return Ok(v),
                Ok(Some(v)) => assert_ne!(v["event"], "failed", "{v}"),
                Ok(None) => return Err(format!("paho ended before `{event}`")),
                Err(_) => return Err(format!("paho: no `{event}` in time")),
            }
        }
    }

    /// Waits until paho has disconnected and exited; returns its `done` line.
    async fn finish(mut self) -> Value {
        let done = self.wait("done").await;
        let _ = tokio::time::timeout(common::WAIT, self.child.wait()).await;
        done
    }
}

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
    let config = config(dir.path(), &prosody, port);
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
    let config = config(dir.path(), &prosody, port);
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
