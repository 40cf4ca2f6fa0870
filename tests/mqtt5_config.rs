//! The MQTT 5 keys of `[broker]`: read from the file, shown by `check-config`, and refused with
//! file, line and key when out of range.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{bin, run_with_timeout};

fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg("--config").arg(&path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mqtt5_keys_are_read() {
    let (code, stdout, stderr) = check_config(
        "[broker]\nreceive_maximum = 50\ntopic_alias_maximum = 0\nmaximum_qos = 1\n\
         retain_available = false\nwildcard_subscriptions = false\n\
         shared_subscriptions = false\nsubscription_identifiers = false\n\
         server_keep_alive = 30\nresponse_information = \"resp/{client_id}\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "receive_maximum = 50",
        "topic_alias_maximum = 0",
        "maximum_qos = 1",
        "retain_available = false",
        "wildcard_subscriptions = false",
        "shared_subscriptions = false",
        "subscription_identifiers = false",
        "server_keep_alive = 30",
        "response_information = \"resp/{client_id}\"",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in:\n{stdout}"
        );
    }
}

#[test]
fn mqtt5_keys_out_of_range_are_errors() {
    let (code, _, stderr) =
        check_config("[broker]\nreceive_maximum = 0\nmaximum_qos = 3\nserver_keep_alive = 70000\n");
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        ":2: broker.receive_maximum: 0 is out of range 1..=65535",
        ":3: broker.maximum_qos: 3 is out of range 0..=2",
        ":4: broker.server_keep_alive:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}
