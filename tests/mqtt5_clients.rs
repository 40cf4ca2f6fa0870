//! MQTT 5 with third-party clients: paho-mqtt 2.x with protocol=MQTTv5
//! (tests/clients/paho_mqtt5_suite.py) and mosquitto_pub / mosquitto_sub -V 5, whose `-F`
//! format prints the properties a subscriber received.
//!
//! A missing client fails the test with a message saying what to install; nothing is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{TestBroker, python, run_with_timeout, start_broker, test_file};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs a command off the runtime's workers (which serve the broker); returns stdout after
/// asserting exit 0.
async fn run_ok(mut cmd: Command, what: &str) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, LIMIT))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}): {shown}\n--- stdout\n{stdout}--- stderr\n{}\n(install \
         mosquitto-clients and paho-mqtt 2.x, e.g. with scripts/test.sh)",
        out.status,
        String::from_utf8_lossy(&out.stderr),
    );
    stdout
}

fn mosquitto(program: &str, broker: &TestBroker) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "-V",
        "5",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port().to_string(),
    ]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt5_suite_passes() {
    let broker = start_broker(|_| {}).await;
    let mut cmd = Command::new(python());
    cmd.arg(test_file("clients/paho_mqtt5_suite.py")).args([
        "--host",
        "127.0.0.1",
        "--port",
        &broker.port().to_string(),
    ]);
    let stdout = run_ok(cmd, "paho MQTT 5 suite").await;
    for name in [
        "properties_forwarded",
        "request_response",
        "shared_subscription",
        "topic_alias",
        "subscription_options_and_ids",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS {name} "))),
            "{name} did not pass:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l == "paho5: 5 passed, 0 failed"),
        "{stdout}"
    );
    broker.stop().await;
}

/// mosquitto_pub -V 5 sets every PUBLISH property; mosquitto_sub -V 5 prints them as it got
/// them (from the retained copy), with its Subscription Identifier; a 3.1.1 mosquitto_sub
/// gets the same message without properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_properties_round_trip() {
    let broker = start_broker(|_| {}).await;
    let mut publish = mosquitto("mosquitto_pub", &broker);
    publish.args(["-t", "m5/t", "-r", "-q", "1", "-m", "hello"]);
    for (name, value) in [
        ("content-type", "text/plain"),
        ("response-topic", "m5/reply"),
        ("correlation-data", "abc"),
        ("payload-format-indicator", "1"),
        ("message-expiry-interval", "120"),
    ] {
        publish.args(["-D", "PUBLISH", name, value]);
    }
    publish.args(["-D", "PUBLISH", "user-property", "k2", "v2"]);
    publish.args(["-D", "PUBLISH", "user-property", "k1", "v1"]);
    run_ok(publish, "mosquitto_pub -V 5").await;

    let mut subscribe = mosquitto("mosquitto_sub", &broker);
    subscribe.args(["-t", "m5/#", "-C", "1", "-W", "10"]);
    subscribe.args(["-D", "SUBSCRIBE", "subscription-identifier", "9"]);
    subscribe.args(["-F", "%t|%r|%C|%R|%D|%E|%F|%S|%P|%p"]);
    let line = run_ok(subscribe, "mosquitto_sub -V 5").await;
    let (fields, expiry) = {
        let f: Vec<&str> = line.trim_end().split('|').collect();
        let expiry: u32 = f[5].parse().unwrap();
        (
            [f[0], f[1], f[2], f[3], f[4], f[6], f[7], f[8], f[9]].join("|"),
            expiry,
        )
    };
    assert_eq!(
        fields, "m5/t|1|text/plain|m5/reply|abc|1|9|k2:v2 k1:v1|hello",
        "raw line: {line}"
    );
    assert!((119..=120).contains(&expiry), "remaining expiry {expiry}");

    let mut old = Command::new("mosquitto_sub");
    old.args([
        "-V",
        "311",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port().to_string(),
    ]);
    old.args(["-t", "m5/t", "-C", "1", "-W", "10", "-F", "%t|%p"]);
    assert_eq!(
        run_ok(old, "mosquitto_sub -V 311").await.trim_end(),
        "m5/t|hello"
    );
    broker.stop().await;
}
