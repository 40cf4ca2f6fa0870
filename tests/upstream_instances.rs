//! Upstream mode with bridge processes (the built binary), which these tests kill: several
//! instances sharing the load, active/standby against Prosody, a restart after SIGKILL.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::prosody::{COMPONENT, COMPONENT2, Prosody, XmppClient};
use common::upstream::*;

/// Two instances on one Mosquitto, each holding its own component link, sharing the
/// MQTT -> XMPP subscriptions (`$share/bridges/...`): every message reaches XMPP exactly once,
/// both carry a part; one is killed and the other carries everything after. The session
/// expiry is 0 here, so the broker drops the dead instance's session at once (see the README
/// on what a persistent session changes for shared subscriptions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_exactly_once_and_survive_one_kill() {
    const N: usize = 40;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Instance::spawn(
        dir.path(),
        "a",
        &prosody,
        &m,
        COMPONENT,
        "bridge-a",
        Some("bridges"),
        "0s",
    );
    let b = Instance::spawn(
        dir.path(),
        "b",
        &prosody,
        &m,
        COMPONENT2,
        "bridge-b",
        Some("bridges"),
        "0s",
    );
    wait_broker_log(&m, "$share/bridges/users/+/outbox/+", 2).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";

    for i in 0..N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(20)).await;
    alice.expect_no_message(Duration::from_secs(1)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        bodies,
        expected("m", 0..N),
        "a: {}\nb: {}",
        a.log(),
        b.log()
    );
    assert_eq!(dups, 0, "a message reached XMPP twice");
    let by_a = got
        .values()
        .filter(|f| f.as_str() == "bob@mqtt.localhost")
        .count();
    let by_b = got
        .values()
        .filter(|f| f.as_str() == "bob@mqtt2.localhost")
        .count();
    assert_eq!(by_a + by_b, N);
    assert!(
        by_a > 0 && by_b > 0,
        "the load was not shared: a {by_a}, b {by_b}"
    );
    eprintln!("shared: instance a carried {by_a}, instance b {by_b}");

    a.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", N, Duration::from_secs(20)).await;
    alice.expect_no_message(Duration::from_secs(1)).await;
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(bodies, expected("m", N..2 * N), "b: {}", b.log());
    assert_eq!(dups, 0);
    assert!(
        got.values().all(|f| f == "bob@mqtt2.localhost"),
        "after the kill only b carries: {got:?}"
    );
}

/// Active/standby against Prosody, which accepts one connection per component: the standby
/// gets `<conflict/>`, keeps retrying and does not connect to MQTT; when the active one is
/// killed, the standby takes the component and resumes the MQTT session (same client id), so
/// what was published meanwhile is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_within_seconds_when_the_active_bridge_dies() {
    const N: usize = 10;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let mut active = Instance::spawn(
        dir.path(),
        "active",
        &prosody,
        &m,
        COMPONENT,
        "bridge-ha",
        None,
        "1h",
    );
    wait_broker_log(&m, "bridge-ha 1 users/+/outbox/+", 1).await;
    let standby = Instance::spawn(
        dir.path(),
        "standby",
        &prosody,
        &m,
        COMPONENT,
        "bridge-ha",
        None,
        "1h",
    );
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";
    // Let the standby meet the conflict a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        standby.log().contains("conflict"),
        "standby log:\n{}",
        standby.log()
    );
    let broker_log = std::fs::read_to_string(m.log_path()).unwrap();
    assert_eq!(
        broker_log.matches(" as bridge-ha ").count(),
        1,
        "the standby must not connect to MQTT:\n{broker_log}"
    );
    bob.publish(outbox, "before").await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "before");

    active.kill9();
    let killed = Instant::now();
    for i in 0..N {
        bob.publish(outbox, &format!("t{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "t", N, Duration::from_secs(15)).await;
    let takeover = killed.elapsed();
    let bodies: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        bodies,
        expected("t", 0..N),
        "standby log:\n{}",
        standby.log()
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    eprintln!("standby takeover: all {N} messages after {takeover:?}, {dups} duplicates");
}

/// Active/standby through an XMPP server restart: both instances race for the component when
/// it comes back; whichever wins connects to MQTT, the other stays off the broker (each is
/// connected to MQTT only while it holds the component), so they do not take the shared
/// session from each other in a loop, and messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_standby_pair_does_not_flap_over_an_xmpp_server_restart() {
    let mut prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &str, prosody: &Prosody| {
        Instance::spawn(
            dir.path(),
            name,
            prosody,
            &m,
            COMPONENT,
            "bridge-pair",
            None,
            "1h",
        )
    };
    let one = spawn("one", &prosody);
    wait_broker_log(&m, "bridge-pair 1 users/+/outbox/+", 1).await;
    let two = spawn("two", &prosody);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let connections = || {
        std::fs::read_to_string(m.log_path())
            .unwrap()
            .matches(" as bridge-pair ")
            .count()
    };
    assert_eq!(
        connections(),
        1,
        "only the active instance is on the broker"
    );

    prosody.restart();
    // Both race for the component; give the loser several of its retries (reconnect_max 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = connections();
    assert!(
        after <= 3,
        "{after} MQTT connections as bridge-pair: the pair is taking the session back and \
         forth\none:\n{}\ntwo:\n{}",
        one.log(),
        two.log()
    );
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    bob.publish("users/bob/outbox/alice@localhost", "after restart")
        .await;
    let got = alice.wait_for(|e| e["event"] == "message").await;
    assert_eq!(got["body"], "after restart");
    eprintln!("MQTT connections as the pair's client id: {after} (1 before the restart)");
}

/// The bridge process killed with SIGKILL while an MQTT client keeps publishing, then started
/// again with the same client id: the persistent session hands it everything, including what
/// the killed process had received but not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_and_restarted_loses_nothing() {
    const N: usize = 20;
    let prosody = Prosody::start();
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Instance::spawn(
            dir.path(),
            "solo",
            &prosody,
            &m,
            COMPONENT,
            "bridge-solo",
            None,
            "1h",
        )
    };
    let mut first = spawn();
    wait_broker_log(&m, "bridge-solo 1 users/+/outbox/+", 1).await;
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let bob = Mqtt::connect(&m, "bob", "bob-out", None).await;
    let outbox = "users/bob/outbox/alice@localhost";
    for i in 0..N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    first.kill9();
    for i in N..2 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let second = spawn();
    for i in 2 * N..3 * N {
        bob.publish(outbox, &format!("m{i}")).await;
    }
    let (got, dups) = xmpp_bodies(&mut alice, "m", 3 * N, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        got,
        expected("m", 0..3 * N),
        "lost over kill -9:\n{}",
        second.log()
    );
    eprintln!("bridge kill -9: duplicates to XMPP {dups}");
}
