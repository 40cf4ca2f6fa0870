//! The XEP-0114 component link against a real Prosody, with a real XMPP client (slixmpp).
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::time::Duration;

use common::prosody::{COMPONENT, Prosody, SECRET, XmppClient};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xmpp_mqtt_bridge::config::LogConfig;
use xmpp_mqtt_bridge::xmpp::{
    self, Inbound, LinkError, LinkState, Outgoing, SendError, XmppConfig, XmppHandle, XmppStats,
};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message};

/// Limit for any one expected change of link state.
const STATE_WAIT: Duration = Duration::from_secs(15);

/// A link under test and what stops it.
struct Link {
    handle: XmppHandle,
    inbound: mpsc::Receiver<Inbound>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Link {
    fn start(cfg: XmppConfig) -> Link {
        xmpp_mqtt_bridge::telemetry::init(&LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (handle, inbound) = xmpp::spawn(cfg, shutdown.clone(), &tracker);
        tracker.close();
        Link {
            handle,
            inbound,
            shutdown,
            tracker,
        }
    }

    /// Waits until the state matches; panics with the last state after [`STATE_WAIT`].
    async fn wait_state(&self, what: &str, pred: impl Fn(&LinkState) -> bool) -> LinkState {
        let mut rx = self.handle.subscribe_state();
        match timeout(STATE_WAIT, rx.wait_for(|s| pred(s))).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!(
                "link not {what} within {STATE_WAIT:?}: {:?}",
                self.handle.state()
            ),
        }
    }

    async fn connected(&self) {
        self.wait_state("connected", |s| matches!(s, LinkState::Connected))
            .await;
    }

    async fn disconnected(&self) -> std::sync::Arc<LinkError> {
        match self
            .wait_state("disconnected", |s| {
                matches!(s, LinkState::Disconnected { .. })
            })
            .await
        {
            LinkState::Disconnected { cause, .. } => cause,
            _ => unreachable!(),
        }
    }

    /// The next inbound message, passing over presences and iqs.
    async fn next_message(&mut self) -> Message {
        loop {
            match timeout(common::WAIT, self.inbound.recv()).await {
                Ok(Some(Inbound::Message(m))) => return *m,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("inbound channel closed"),
                Err(_) => panic!("no inbound message within {:?}", common::WAIT),
            }
        }
    }

    fn stat(&self, pick: impl Fn(&XmppStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        XmppStats::get(pick(&self.handle.stats()))
    }

    /// Waits until a counter reaches `n`.
    async fn wait_stat(
        &self,
        name: &str,
        n: u64,
        pick: impl Fn(&XmppStats) -> &std::sync::atomic::AtomicU64,
    ) {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        while self.stat(&pick) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed below {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels and waits for the worker to end.
    async fn stop(self) {
        self.shutdown.cancel();
        assert!(
            timeout(Duration::from_secs(10), self.tracker.wait())
                .await
                .is_ok(),
            "no stop"
        );
        assert!(matches!(
            self.handle.state(),
            LinkState::Stopped { cause: None }
        ));
    }
}

/// Test settings: quick reconnects, so restarts are observed within seconds.
fn config(server: String) -> XmppConfig {
    let mut cfg = XmppConfig::new(server, COMPONENT, SECRET);
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_millis(500);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

fn chat(from: &str, to: &str, id: &str, body: &str) -> Message {
    let mut m = Message::chat(Some(Jid::new(to).expect("valid JID")))
        .with_body(Lang(String::new()), body.to_owned());
    m.from = Some(Jid::new(from).expect("valid JID"));
    m.id = Some(Id(id.to_owned()));
    m
}

fn body(m: &Message) -> &str {
    m.bodies
        .values()
        .next()
        .map(String::as_str)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_disco_and_ping_are_answered_by_the_adapter() {
    let prosody = Prosody::start();
    let mut link = Link::start(config(prosody.component_addr()));
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;

    alice
        .command(json!({"cmd": "disco_info", "to": COMPONENT, "tag": "i"}))
        .await;
    let info = alice.wait_for(|e| e["tag"] == "i").await;
    assert_eq!(info["event"], "disco_info", "{info}");
    assert_eq!(info["identities"][0][0], "gateway");
    assert_eq!(info["identities"][0][1], "mqtt");
    assert!(
        info["identities"][0][2]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let features = info["features"].as_array().unwrap();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "urn:xmpp:receipts",
    ] {
        assert!(features.contains(&json!(f)), "{f} missing: {info}");
    }

    alice
        .command(json!({"cmd": "disco_items", "to": COMPONENT, "tag": "t"}))
        .await;
    let items = alice.wait_for(|e| e["tag"] == "t").await;
    assert_eq!(
        items,
        json!({"event": "disco_items", "tag": "t", "items": []})
    );

    alice
        .command(json!({"cmd": "ping", "to": COMPONENT, "tag": "p"}))
        .await;
    assert_eq!(alice.wait_for(|e| e["tag"] == "p").await["event"], "pong");

    assert_eq!(link.stat(|s| &s.connects), 1);
    assert!(link.stat(|s| &s.answered) >= 3);
    // Nothing of that reached the bridge (alice's presence is not directed at the component).
    assert!(link.inbound.try_recv().is_err());
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_reported_as_such_and_retried() {
    let prosody = Prosody::start();
    let mut cfg = config(prosody.component_addr());
    cfg.secret = "not-the-secret".into();
    let link = Link::start(cfg);
    let cause = link.disconnected().await;
    assert!(matches!(*cause, LinkError::NotAuthorized { .. }), "{cause}");
    // It keeps trying, and each attempt fails the same way.
    link.wait_stat("connect_failures", 3, |s| &s.connect_failures)
        .await;
    let cause = link.disconnected().await;
    assert!(matches!(*cause, LinkError::NotAuthorized { .. }), "{cause}");
    assert_eq!(link.stat(|s| &s.connects), 0);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_link_for_the_same_domain_gets_conflict() {
    let prosody = Prosody::start();
    let first = Link::start(config(prosody.component_addr()));
    first.connected().await;
    let second = Link::start(config(prosody.component_addr()));
    let cause = second.disconnected().await;
    assert!(matches!(*cause, LinkError::Conflict { .. }), "{cause}");
    assert!(!matches!(*cause, LinkError::NotAuthorized { .. }));
    second
        .wait_stat("connect_failures", 2, |s| &s.connect_failures)
        .await;
    // The first one is not disturbed.
    assert!(matches!(first.handle.state(), LinkState::Connected));
    assert_eq!(first.stat(|s| &s.disconnects), 0);
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stanzas_get_bad_request_and_the_link_stays_up() {
    let prosody = Prosody::start();
    let mut link = Link::start(config(prosody.component_addr()));
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bot = format!("bot@{COMPONENT}");

    alice.send_chat(&bot, "good-1", "before").await;
    alice
        .send_raw(&format!(
            "<message to='{bot}' type='bogus' id='bad-1'><body>x</body></message>"
        ))
        .await;
    alice
        .send_raw(&format!(
            "<presence to='{bot}' id='bad-2'><show>busy</show></presence>"
        ))
        .await;
    alice
        .send_raw(&format!(
            "<presence to='{bot}' id='bad-3'><priority>high</priority></presence>"
        ))
        .await;
    alice.send_chat(&bot, "good-2", "after").await;

    let first = link.next_message().await;
    assert_eq!(
        (first.id.as_ref().map(|i| i.0.as_str()), body(&first)),
        (Some("good-1"), "before")
    );
    let second = link.next_message().await;
    assert_eq!(
        (second.id.as_ref().map(|i| i.0.as_str()), body(&second)),
        (Some("good-2"), "after")
    );

    let mut errors = Vec::new();
    while errors.len() < 3 {
        let e = alice.wait_for(|e| e["event"] == "error").await;
        assert_eq!(e["condition"], "bad-request", "{e}");
        assert_eq!(e["from"], bot, "{e}");
        errors.push(e["id"].as_str().unwrap().to_owned());
    }
    errors.sort();
    assert_eq!(errors, ["bad-1", "bad-2", "bad-3"]);

    // Still the same connection, and it still works both ways.
    alice.send_chat(&bot, "good-3", "later").await;
    assert_eq!(link.next_message().await.id, Some(Id("good-3".into())));
    assert_eq!(link.stat(|s| &s.connects), 1);
    assert_eq!(link.stat(|s| &s.disconnects), 0);
    assert_eq!(link.stat(|s| &s.bad_stanzas), 3);
    assert!(matches!(link.handle.state(), LinkState::Connected));
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_message_reaches_the_client_and_is_confirmed() {
    let prosody = Prosody::start();
    let link = Link::start(config(prosody.component_addr()));
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;

    let msg = chat(
        &format!("bot@{COMPONENT}"),
        "alice@localhost",
        "out-1",
        "hello ✓",
    );
    let (out, confirmed) = Outgoing::confirmed(msg);
    link.handle.send(out).unwrap();
    let got = alice.messages(1).await.remove(0);
    assert_eq!(got["id"], "out-1");
    assert_eq!(got["body"], "hello ✓");
    assert_eq!(got["from"], format!("bot@{COMPONENT}"));
    timeout(common::WAIT, confirmed)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    assert_eq!(link.stat(|s| &s.confirmed), 1);
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_outbound_stanzas_are_refused_up_front() {
    // No server needed: validation happens in `send`.
    let link = Link::start(config(format!("127.0.0.1:{}", common::free_port())));
    let foreign = chat("bot@elsewhere.example", "alice@localhost", "x-1", "no");
    match link.handle.send(Outgoing::new(foreign)) {
        Err(SendError::Invalid { outgoing, .. }) => {
            assert_eq!(outgoing.stanza.id(), Some("x-1"));
        }
        other => panic!("{other:?}"),
    }
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_queued_while_the_server_is_down_arrive_in_order_after_restart() {
    let mut prosody = Prosody::start();
    let link = Link::start(config(prosody.component_addr()));
    link.connected().await;

    prosody.stop();
    link.disconnected().await;
    let bot = format!("bot@{COMPONENT}");
    let mut confirmations = Vec::new();
    for i in 0..20 {
        let (out, rx) = Outgoing::confirmed(chat(
            &bot,
            "alice@localhost",
            &format!("q-{i}"),
            &i.to_string(),
        ));
        link.handle.send(out).unwrap();
        confirmations.push(rx);
    }
    prosody.start_again();
    link.connected().await;
    for rx in confirmations {
        timeout(common::WAIT, rx)
            .await
            .expect("confirmed in time")
            .expect("confirmed");
    }
    assert_eq!(link.stat(|s| &s.connects), 2);

    // Alice was offline: Prosody stored them; they come at login, in order, each once.
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let got: Vec<_> = alice
        .messages(20)
        .await
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    let want: Vec<_> = (0..20).map(|i| json!(format!("q-{i}"))).collect();
    assert_eq!(got, want);
    alice.expect_no_message(Duration::from_millis(500)).await;
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_written_just_before_kill_9_is_resent_after_reconnect() {
    let mut prosody = Prosody::start();
    let link = Link::start(config(prosody.component_addr()));
    link.connected().await;

    // Frozen, Prosody cannot read or answer: the stanza sits in its socket buffer, unconfirmed.
    prosody.pause();
    let msg = chat(
        &format!("bot@{COMPONENT}"),
        "alice@localhost",
        "k-1",
        "survives",
    );
    let (out, mut confirmed) = Outgoing::confirmed(msg);
    link.handle.send(out).unwrap();
    link.wait_stat("stanzas_out", 1, |s| &s.stanzas_out).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        confirmed.try_recv().is_err(),
        "confirmed although the server never read it"
    );

    prosody.kill9();
    link.disconnected().await;
    prosody.start_again();
    link.connected().await;
    timeout(common::WAIT, confirmed)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    assert_eq!(link.stat(|s| &s.resent), 1);

    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let got = alice.messages(1).await.remove(0);
    assert_eq!(
        (got["id"].as_str(), got["body"].as_str()),
        (Some("k-1"), Some("survives"))
    );
    alice.expect_no_message(Duration::from_millis(500)).await;
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_is_refused_and_counted_while_no_server_answers() {
    let mut cfg = config(format!("127.0.0.1:{}", common::free_port()));
    cfg.queue_depth = 5;
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(100);
    let link = Link::start(cfg);
    let cause = link.disconnected().await;
    assert!(matches!(*cause, LinkError::Refused { .. }), "{cause}");

    let bot = format!("bot@{COMPONENT}");
    for i in 0..5 {
        link.handle
            .send(Outgoing::new(chat(
                &bot,
                "alice@localhost",
                &format!("o-{i}"),
                "x",
            )))
            .unwrap();
    }
    match link
        .handle
        .send(Outgoing::new(chat(&bot, "alice@localhost", "o-5", "x")))
    {
        Err(SendError::Full(out)) => assert_eq!(out.stanza.id(), Some("o-5")),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(link.stat(|s| &s.queue_overflow), 1);

    // Retries continue, backing off (20 ms doubling to 100 ms: about 10-20 attempts in 1.5 s).
    let before = link.stat(|s| &s.connect_failures);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = link.stat(|s| &s.connect_failures) - before;
    assert!((8..=40).contains(&attempts), "{attempts} attempts in 1.5 s");
    link.stop().await;
}

/// A server that reads nothing for a while (stopped): the link sends early pings as the
/// unconfirmed stanzas pile up (every quarter of the queue, up to four pings in flight). Its
/// answers then come in order once it reads again: everything is confirmed once, delivered
/// once and in order, and nothing before the server answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slow_to_read_gets_early_pings_and_confirms_everything_once_in_order() {
    let prosody = Prosody::start();
    let mut cfg = config(prosody.component_addr());
    cfg.queue_depth = 8;
    let link = Link::start(cfg);
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bot = format!("bot@{COMPONENT}");
    prosody.pause();
    let mut confirmations = Vec::new();
    for i in 0..8u64 {
        let msg = chat(&bot, "alice@localhost", &format!("e-{i}"), &format!("n{i}"));
        let (out, rx) = Outgoing::confirmed(msg);
        link.handle.send(out).unwrap();
        confirmations.push(rx);
        // One at a time, so that pings go out between them.
        link.wait_stat("stanzas_out", i + 1, |s| &s.stanzas_out)
            .await;
    }
    match link
        .handle
        .send(Outgoing::new(chat(&bot, "alice@localhost", "e-8", "n8")))
    {
        Err(SendError::Full(out)) => assert_eq!(out.stanza.id(), Some("e-8")),
        other => panic!("expected Full, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(link.stat(|s| &s.confirmed), 0, "nothing confirmed unread");
    prosody.resume();
    for rx in confirmations {
        timeout(common::WAIT, rx)
            .await
            .expect("confirmed in time")
            .expect("confirmed");
    }
    assert_eq!(link.stat(|s| &s.confirmed), 8);
    let ids: Vec<String> = (alice.messages(8).await.iter())
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..8).map(|i| format!("e-{i}")).collect();
    assert_eq!(ids, want);
    // Room again once confirmed.
    link.handle
        .send(Outgoing::new(chat(&bot, "alice@localhost", "e-8", "n8")))
        .unwrap();
    assert_eq!(alice.messages(1).await[0]["id"], "e-8");
    alice.expect_no_message(Duration::from_millis(500)).await;
    assert_eq!(link.stat(|s| &s.resent), 0);
    assert_eq!(link.stat(|s| &s.connects), 1);
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_detected_by_keepalive_and_the_link_recovers() {
    let prosody = Prosody::start();
    let mut cfg = config(prosody.component_addr());
    cfg.ping_interval = Duration::from_millis(200);
    cfg.read_timeout = Duration::from_millis(1000);
    let link = Link::start(cfg);
    link.connected().await;
    prosody.pause();
    let cause = link.disconnected().await;
    assert!(
        matches!(
            *cause,
            LinkError::PongTimeout(_) | LinkError::ReadTimeout(_)
        ),
        "{cause}"
    );
    prosody.resume();
    link.connected().await;
    assert_eq!(link.stat(|s| &s.connects), 2);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bridge_holds_back_reading_but_not_writing_nor_the_connection() {
    let prosody = Prosody::start();
    let mut cfg = config(prosody.component_addr());
    cfg.inbound_depth = 1;
    // Short keepalive limits: the stall below lasts longer than the read timeout.
    cfg.ping_interval = Duration::from_millis(200);
    cfg.read_timeout = Duration::from_millis(1000);
    let mut link = Link::start(cfg);
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bot = format!("bot@{COMPONENT}");
    // The bridge reads nothing yet: the first fills the channel, the reader waits on the second.
    for i in 0..5 {
        alice.send_chat(&bot, &format!("in-{i}"), "x").await;
    }
    link.wait_stat("stanzas_in", 2, |s| &s.stanzas_in).await;
    let (out, mut confirmed) =
        Outgoing::confirmed(chat(&bot, "alice@localhost", "out-1", "still here"));
    link.handle.send(out).unwrap();
    // The writer is not held up by the full inbound channel.
    assert_eq!(alice.messages(1).await[0]["id"], "out-1");
    // The pong sits behind the unread stanzas, so no confirmation yet; and no reconnect either,
    // although pongs are overdue.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(confirmed.try_recv().is_err());
    assert!(matches!(link.handle.state(), LinkState::Connected));
    // Now the bridge catches up: every inbound message, in order, then the confirmation.
    for i in 0..5 {
        assert_eq!(link.next_message().await.id, Some(Id(format!("in-{i}"))));
    }
    timeout(common::WAIT, confirmed)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    assert_eq!(link.stat(|s| &s.connects), 1);
    assert_eq!(link.stat(|s| &s.disconnects), 0);
    alice.quit().await;
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_confirms_what_was_written_and_closes_the_stream() {
    let prosody = Prosody::start();
    let link = Link::start(config(prosody.component_addr()));
    link.connected().await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let (out, confirmed) = Outgoing::confirmed(chat(
        &format!("bot@{COMPONENT}"),
        "alice@localhost",
        "last",
        "bye",
    ));
    link.handle.send(out).unwrap();
    link.shutdown.cancel();
    timeout(common::WAIT, confirmed)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    assert_eq!(alice.messages(1).await[0]["id"], "last");
    let Link {
        handle, tracker, ..
    } = link;
    assert!(
        timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_ok()
    );
    assert!(matches!(handle.state(), LinkState::Stopped { cause: None }));
    let late = Outgoing::new(chat(
        &format!("bot@{COMPONENT}"),
        "alice@localhost",
        "late",
        "x",
    ));
    assert!(matches!(handle.send(late), Err(SendError::Closed(_))));
    alice.quit().await;
}
