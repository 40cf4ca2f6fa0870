//! `[mqtt]` / `[mqtt.upstream]` configuration through `check-config`: every error with its
//! file, line and key; rules whose sender the topic does not bind are refused in upstream mode.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, run_with_timeout};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg("--config").arg(path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const XMPP: &str = "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"mqtt.localhost\"\n\
                    secret = \"s\"\n\n[mapping]\ndir = \"maps\"\n";

#[test]
fn upstream_mode_refuses_rules_whose_sender_is_not_bound_to_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    let rules = write(
        &maps,
        "alerts.toml",
        "[[rule]]\nname = \"outbox\"\ndirection = \"mqtt-to-xmpp\"\njid = \"{user}@{domain}\"\n\
         topic = \"users/{user}/outbox/{peer}\"\n\n\
         [[rule]]\nname = \"alerts\"\ndirection = \"mqtt-to-xmpp\"\njid = \"alerts@{domain}\"\n\
         peer = \"ops@example.org\"\ntopic = \"alerts/now\"\n",
    );
    let upstream =
        "[mqtt]\nmode = \"upstream\"\n\n[mqtt.upstream]\nserver = \"127.0.0.1:1883\"\n\n";
    let path = write(dir.path(), "bridge.toml", &format!("{upstream}{XMPP}"));
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64, "{stderr}");
    let expected = format!(
        "{}:7: rule `alerts`: jid `alerts@{{domain}}`",
        rules.display()
    );
    assert!(
        stderr.contains(&expected),
        "missing `{expected}` in:\n{stderr}"
    );
    assert!(!stderr.contains("rule `outbox`"), "{stderr}");

    // The same rules are fine with the embedded broker (it knows who published).
    let path = write(dir.path(), "embedded.toml", XMPP);
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn upstream_keys_are_checked_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let path = write(
        dir.path(),
        "bridge.toml",
        &format!(
            "[mqtt]\nmode = \"upstream\"\n\n[mqtt.upstream]\nserver = \"broker\"\n\
             sesion_expiry = \"1h\"\nshare_group = \"a/b\"\nca_file = \"ca.pem\"\n\
             password = \"p\"\nkeep_alive = 0\npong_relay = \"bridge/+\"\n\n{XMPP}"
        ),
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64, "{stderr}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:5: mqtt.upstream.server: `broker` is not `host:port`"),
        format!(
            "{file}:6: mqtt.upstream.sesion_expiry: unknown key (did you mean `session_expiry`?)"
        ),
        format!("{file}:7: mqtt.upstream.share_group: `a/b` is not a share name"),
        format!("{file}:8: mqtt.upstream.ca_file:"),
        format!("{file}:9: mqtt.upstream.password: a password needs a `username`"),
        format!("{file}:10: mqtt.upstream.keep_alive:"),
        format!("{file}:11: mqtt.upstream.pong_relay: must not contain wildcards"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }

    let path = write(
        dir.path(),
        "mode.toml",
        &format!("[mqtt]\nmode = \"cluster\"\n\n{XMPP}"),
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: mqtt.mode: `cluster` is not a mode",
            path.display()
        )),
        "{stderr}"
    );

    let path = write(
        dir.path(),
        "missing.toml",
        &format!("[mqtt]\nmode = \"upstream\"\n\n{XMPP}"),
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("mqtt.upstream: mode = \"upstream\" needs"),
        "{stderr}"
    );
}

#[test]
fn a_valid_upstream_config_prints_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/chat.toml");
    std::fs::copy(shipped, dir.path().join("maps/chat.toml")).unwrap();
    let path = write(
        dir.path(),
        "bridge.toml",
        &format!(
            "[mqtt]\nmode = \"upstream\"\n\n[mqtt.upstream]\nserver = \"broker.example.org:8883\"\n\
             client_id = \"bridge-a\"\nusername = \"xmpp-bridge\"\npassword = \"hunter2\"\n\
             session_expiry = \"2h\"\nshare_group = \"bridges\"\n\n{XMPP}"
        ),
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "mode = \"upstream\"",
        "server = \"broker.example.org:8883\"",
        "client_id = \"bridge-a\"",
        "session_expiry = \"2h\"",
        "share_group = \"bridges\"",
        "pong_relay = \"bridge/keepalive\"",
        "password = \"<redacted>\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");
}
