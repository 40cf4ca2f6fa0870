//! The `[presence]` section as an operator writes it: printed by `check-config`, every error
//! named with file, line and key.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{bin, run_with_timeout};

fn check_config(path: &std::path::Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg("--config").arg(path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const XMPP: &str = "[xmpp]\nsecret = \"s\"\n[mapping]\ndir = \"maps\"\n";

fn setup(presence: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/chat.toml");
    std::fs::copy(shipped, dir.path().join("maps/chat.toml")).unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, format!("{XMPP}{presence}")).unwrap();
    (dir, path)
}

#[test]
fn defaults_and_paths_relative_to_the_config_file() {
    let (dir, path) = setup("[presence]\n");
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("status_topic = \"users/{user}/status\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("legacy_topic = \"presence/{jid}\""),
        "{stdout}"
    );
    let file = dir.path().join("../state/presence-subscribers.json");
    assert!(stdout.contains(&file.display().to_string()), "{stdout}");
    // enabled = false: no presence.
    let (_dir, path) = setup("[presence]\nenabled = false\n");
    let (code, stdout, _) = check_config(&path);
    assert_eq!(code, 0);
    assert!(!stdout.contains("status_topic"), "{stdout}");
}

#[test]
fn every_presence_error_is_named() {
    let (_dir, path) = setup(
        "[presence]\nstatus_topic = \"users/+/status\"\nlegacy_topic = \"presence/{user}\"\n\
         fiel = \"x\"\n",
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64, "{stderr}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:6: presence.status_topic: `users/+/status` must have {{user}}"),
        format!("{file}:7: presence.legacy_topic: `presence/{{user}}` must have {{jid}}"),
        format!("{file}:8: presence.fiel: unknown key"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    // The same pattern twice.
    let (_dir, path) =
        setup("[presence]\nstatus_topic = \"p/{user}\"\nlegacy_topic = \"p/{jid}\"\n");
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("presence.legacy_topic: must differ"),
        "{stderr}"
    );
    // Without the bridge.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[presence]\n").unwrap();
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("presence: a [presence] section needs an [xmpp] section"),
        "{stderr}"
    );
}
