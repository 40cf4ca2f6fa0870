//! The binary as an operator uses it: `check-config`, `run` with signals, `passwd`.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, run_with_timeout};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg("--config").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_config_is_valid() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bridge.toml");
    let (code, stdout, stderr) = check_config(&shipped, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("listen = [\"127.0.0.1:1883\"]"), "{stdout}");
    assert!(
        stdout.contains("[persistence]\nenabled = true\n")
            && stdout.contains("durability = \"sync\""),
        "{stdout}"
    );
}

#[test]
fn every_config_error_is_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        "[log]\nformat = \"xml\"\n\n[broker]\nlisten = \"localhost\"\nmax_conections = 5\n\
         max_inflight = 0\nconnect_timeout = \"soon\"\nallow_anonymous = \"yes\"\n\n[xmpp2]\n",
    );
    let (code, stdout, stderr) = check_config(&path, &[]);
    assert_eq!(code, 64, "EX_USAGE; stdout: {stdout}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:2: log.format: `xml` is not a log format"),
        format!("{file}:5: broker.listen: `localhost` is not an IP:port address"),
        format!("{file}:6: broker.max_conections: unknown key (did you mean `max_connections`?)"),
        format!("{file}:7: broker.max_inflight: 0 is out of range 1..=65535"),
        format!("{file}:8: broker.connect_timeout: `soon` is not a duration"),
        format!("{file}:9: broker.allow_anonymous: invalid type"),
        format!("{file}:11: xmpp2: unknown key"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(stderr.starts_with("7 configuration errors:"), "{stderr}");
}

#[test]
fn toml_syntax_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "broken.toml",
        "[broker]\nlisten = [\"127.0.0.1:1883\"\n",
    );
    let (code, _, stderr) = check_config(&path, &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("line 2") || stderr.contains(":2"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let (code, _, stderr) = check_config(std::path::Path::new("/nonexistent/bridge.toml"), &[]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("/nonexistent/bridge.toml: configuration file not found"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_and_its_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ok.toml",
        "[broker]\nlisten = \"127.0.0.1:1883\"\n",
    );
    let (code, stdout, stderr) = check_config(
        &path,
        &[
            ("BRIDGE_BROKER__LISTEN", "127.0.0.1:18830"),
            ("BRIDGE_BROKER__MAX_QUEUED", "7"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("listen = [\"127.0.0.1:18830\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("max_queued = 7"), "{stdout}");
    let (code, _, stderr) = check_config(&path, &[("BRIDGE_BROKER__MAX_INFLIGHT", "lots")]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("environment variable BRIDGE_BROKER__MAX_INFLIGHT: broker.max_inflight"),
        "{stderr}"
    );
}

#[test]
fn bad_password_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "users.passwd",
        "alice:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\nbob\n",
    );
    let path = write(
        dir.path(),
        "auth.toml",
        "[broker]\nallow_anonymous = false\npassword_file = \"users.passwd\"\n",
    );
    let (code, _, stderr) = check_config(&path, &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("broker.password_file"), "{stderr}");
    assert!(
        stderr.contains("users.passwd:2"),
        "the bad line is named: {stderr}"
    );
}

/// The bridge process and the folder its audit trail goes to.
struct Running(
    Child,
    #[allow(dead_code, reason = "kept until the process ends")] tempfile::TempDir,
);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bridge(port: u16, extra_env: &[(&str, &str)]) -> Running {
    let audit = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .arg("--config")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bridge.toml"))
        .env("BRIDGE_BROKER__LISTEN", format!("127.0.0.1:{port}"))
        // Tests run in parallel: no fixed admin port, no audit files in the source tree.
        .env("BRIDGE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("BRIDGE_AUDIT__DIR", audit.path())
        .env("BRIDGE_PERSISTENCE__DIR", audit.path().join("store"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Running(cmd.spawn().expect("start the bridge"), audit)
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "bridge never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
    assert!(ok.map(|s| s.success()).unwrap_or(false));
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_serves_mqtt_and_exits_cleanly_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let port = free_port();
        let mut bridge = start_bridge(port, &[]);
        wait_for_port(port);
        let out = run_with_timeout(
            Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "x",
                "-m",
                "y",
                "-q",
                "1",
            ]),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "publish works: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        signal(&bridge.0, sig);
        assert_eq!(
            wait_exit(&mut bridge.0, Duration::from_secs(15)),
            0,
            "exit 0 on SIG{sig}"
        );
        let mut log = String::new();
        if let Some(stderr) = bridge.0.stderr.take() {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.push_str(&line);
                log.push('\n');
            }
        }
        assert!(log.contains(&format!("SIG{sig} received")), "{log}");
        assert!(log.contains("Shutdown complete."), "{log}");
    }
}

#[test]
fn json_logs_carry_the_connection_span() {
    let port = free_port();
    let mut bridge = start_bridge(port, &[("BRIDGE_LOG__FORMAT", "json")]);
    wait_for_port(port);
    let out = run_with_timeout(
        Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            "json-client",
            "-t",
            "x",
            "-m",
            "y",
        ]),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    // A client that breaks the protocol after CONNECT: PINGREQ with flags set.
    let mut bad = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.write_all(&common::raw::connect_packet(4, "json-bad", true, 30))
        .unwrap();
    bad.write_all(&[0xc1, 0x00]).unwrap();
    let mut rest = Vec::new();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = std::io::Read::read_to_end(&mut bad, &mut rest);
    signal(&bridge.0, "TERM");
    wait_exit(&mut bridge.0, Duration::from_secs(15));
    let stderr = bridge.0.stderr.take().unwrap();
    let lines: Vec<serde_json::Value> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    // Events from the router carry the client id and peer as fields.
    let connected = lines
        .iter()
        .find(|v| v["message"] == "Client connected." && v["client_id"] == "json-client")
        .expect("a connect log line");
    assert_eq!(connected["client_id"], "json-client", "{connected}");
    assert!(
        connected["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // Events inside a connection carry its span: peer and client id.
    let violation = lines
        .iter()
        .find(|v| v["message"] == "Protocol violation; connection closed.")
        .expect("a protocol violation line");
    assert_eq!(violation["span"]["client_id"], "json-bad", "{violation}");
    assert!(
        violation["span"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(violation["level"], "WARN");
}

#[test]
fn a_port_in_use_fails_before_serving_with_exit_69() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut bridge = start_bridge(port, &[]);
    assert_eq!(wait_exit(&mut bridge.0, Duration::from_secs(15)), 69);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bridge.0.stderr.take().unwrap(), &mut stderr).unwrap();
    let reason = format!("cannot listen on 127.0.0.1:{port}");
    assert_eq!(stderr.matches(&reason).count(), 1, "said once: {stderr}");
}

#[test]
fn passwd_adds_and_deletes_users() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.passwd");
    let mut child = Command::new(bin())
        .args(["passwd", "add"])
        .arg(&file)
        .arg("alice")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(!text.contains("s3cret"));
    let deleted = run_with_timeout(
        Command::new(bin())
            .args(["passwd", "delete"])
            .arg(&file)
            .arg("alice"),
        Duration::from_secs(10),
    );
    assert!(deleted.status.success());
    let again = run_with_timeout(
        Command::new(bin())
            .args(["passwd", "delete"])
            .arg(&file)
            .arg("alice"),
        Duration::from_secs(10),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no user `alice`"));
}

#[test]
fn xmpp_and_mapping_errors_name_file_line_key_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    write(
        &maps,
        "chat.toml",
        "[[rule]]\nname = \"inbox\"\ndirection = \"xmpp-to-mqtt\"\njid = \"{user}@{domain}\"\n\
         topic = \"users/{user}/inbox/{nobody}\"\n",
    );
    let path = write(
        dir.path(),
        "bridge.toml",
        "[xmpp]\nserver = \"nowhere\"\ndomain = \"mqtt.localhost\"\nping_intervall = \"5s\"\n\n\
         [mapping]\ndir = \"maps\"\n",
    );
    let (code, _, stderr) = check_config(&path, &[]);
    assert_eq!(code, 64, "{stderr}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:4: xmpp.ping_intervall: unknown key (did you mean `ping_interval`?)"),
        format!("{file}:1: xmpp.secret: the component secret is required"),
        "xmpp.server: `nowhere` is not host:port".to_string(),
        format!("{}:5: rule `inbox`", maps.join("chat.toml").display()),
        "{nobody}".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn the_secret_is_never_printed_and_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", "s3cr3t-value\n");
    let path = write(
        dir.path(),
        "bridge.toml",
        &format!(
            "[xmpp]\nsecret_file = \"secret\"\n\n[mapping]\ndir = \"{}\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("mappings")
                .display()
        ),
    );
    let (code, stdout, stderr) = check_config(&path, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("secret = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("s3cr3t-value") && !stderr.contains("s3cr3t-value"));
    assert!(
        stdout.contains("# chat-outbox"),
        "the compiled table is shown: {stdout}"
    );
    let (code, _, stderr) = check_config(&path, &[("BRIDGE_XMPP__SECRET", "from-env")]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("give `secret` or `secret_file`, not both"),
        "{stderr}"
    );
}

#[test]
fn map_shows_the_rule_and_the_other_side() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bridge.toml");
    let run = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new(bin())
                .arg("map")
                .args(args)
                .arg("--config")
                .arg(&shipped),
            Duration::from_secs(20),
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["xmpp:bob@mqtt.localhost", "--from", "alice@localhost/pc"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rule `chat-inbox`"), "{out}");
    assert!(
        out.contains("publish on `users/bob/inbox/alice@localhost` qos 1 format json"),
        "{out}"
    );
    let (code, out) = run(&["mqtt:users/bob/outbox/alice@localhost", "--user", "bob"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("message from bob@mqtt.localhost to alice@localhost"),
        "{out}"
    );
    let (code, out) = run(&["mqtt:users/bob/outbox/alice@localhost", "--user", "eve"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("may not publish on the topic of user `bob`"),
        "{out}"
    );
}
