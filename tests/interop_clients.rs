//! Interoperability with third-party MQTT clients against the built-in broker: Python
//! paho-mqtt 2.x (tests/clients/paho_suite.py) and Debian's mosquitto_pub / mosquitto_sub.
//!
//! A missing client (python with paho, mosquitto-clients) fails the test with a message
//! saying what to install; nothing is skipped. `scripts/test.sh` installs both.
//!
//! mosquitto_sub runs with `-d`: its debug lines on stdout show when the subscription is
//! acknowledged (`Subscribed (mid: 1): <granted QoS>`), so publishing starts only then, and
//! the QoS and retain flag of every PUBLISH it receives (`received PUBLISH (d0, q1, r0, ...`).
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{TestBroker, WAIT, python, run_with_timeout, start_broker, test_file};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Limit for the whole paho suite (it takes about 15 s).
const PAHO_LIMIT: Duration = Duration::from_secs(60);

/// The checks `paho_suite.py` runs by default; each must report `PASS <name>`.
const PAHO_CHECKS: &[&str] = &[
    "qos_round_trip",
    "qos_downgrade",
    "retained",
    "will_on_socket_close",
    "will_on_connection_reset",
    "will_retained",
    "no_will_after_clean_disconnect",
    "persistent_session",
    "session_takeover",
    "wildcards",
    "sys_dollar_topics",
    "unsubscribe",
];

// ---- paho-mqtt ----------------------------------------------------------------------------

/// Runs `paho_suite.py` (extra arguments select checks) against `broker`; returns stdout
/// after asserting exit 0, with the whole output in the panic message otherwise.
async fn run_paho(broker: &TestBroker, extra: &[&str]) -> String {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(test_file("clients/paho_suite.py"))
        .args(["--host", "127.0.0.1", "--port", &broker.port().to_string()])
        .args(extra);
    let shown = format!("{cmd:?}");
    // run_with_timeout blocks; keep it off the runtime's workers, which serve the broker.
    let out = tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, PAHO_LIMIT))
        .await
        .expect("paho suite runner");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho suite failed ({}): {shown}\n--- stdout\n{stdout}--- stderr\n{stderr}\n\
         (python is {}; set TEST_PYTHON_FOR_BRIDGE to a Python with paho-mqtt 2.x, e.g. \
         .venv/bin/python from scripts/test.sh)",
        out.status,
        python(),
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_suite_passes() {
    let broker = start_broker(|c| c.sys_interval = Some(Duration::from_millis(300))).await;
    let stdout = run_paho(&broker, &[]).await;
    for name in PAHO_CHECKS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS {name} "))),
            "check {name} did not pass:\n{stdout}"
        );
    }
    let summary = format!("paho: {} passed, 0 failed", PAHO_CHECKS.len());
    assert!(
        stdout.lines().any(|l| l == summary),
        "no line {summary:?} in:\n{stdout}"
    );
}

/// MQTT 5 smoke test with paho's v5 client: CONNACK reason 0 and a QoS 1 round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt5_connect_and_qos1_round_trip() {
    let broker = start_broker(|_| {}).await;
    let stdout = run_paho(&broker, &["--check", "mqtt5_connect_and_qos1"]).await;
    assert!(
        stdout.lines().any(|l| l == "paho: 1 passed, 0 failed"),
        "{stdout}"
    );
}

// ---- mosquitto_pub / mosquitto_sub --------------------------------------------------------

/// Connection arguments for `broker`.
fn at(broker: &TestBroker) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        broker.port().to_string(),
    ]
}

/// The full path of `program` on PATH; panics saying what to install when it is missing.
fn installed(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            let package = if program == "stdbuf" {
                "coreutils"
            } else {
                "mosquitto-clients"
            };
            panic!(
                "{program} not found on PATH: install the Debian package {package} \
                 (scripts/test.sh does)"
            )
        })
}

/// A running client process. Its stdout lines arrive on a channel (kept for failure
/// messages); it is killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct Proc {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

/// How a process ended.
struct Finished {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

impl Finished {
    /// Payload lines: stdout without mosquitto's `-d` debug lines.
    fn messages(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .map(String::as_str)
            .filter(|l| !is_debug(l))
            .collect()
    }

    /// The `received PUBLISH (...)` debug lines.
    fn received(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains(" received PUBLISH "))
            .collect()
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout\n", self.status)?;
        for l in &self.stdout {
            writeln!(f, "{}", clip(l))?;
        }
        write!(f, "--- stderr\n{}", self.stderr)
    }
}

fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed (mid:")
}

/// Long lines (hex payloads) shortened for messages.
fn clip(line: &str) -> String {
    if line.len() > 200 {
        format!("{}... ({} bytes)", &line[..200], line.len())
    } else {
        line.into()
    }
}

impl Proc {
    /// Starts `program` with stdout line-buffered (`stdbuf -oL`): mosquitto_sub flushes its
    /// `-d` lines only together with a message otherwise.
    fn spawn(program: &str, args: &[String]) -> Proc {
        let mut child = Command::new(installed("stdbuf"))
            .arg("-oL")
            .arg(installed(program))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            // What was read before an error is still worth showing.
            let _partial = err.read_to_string(&mut text).await;
            text
        });
        Proc {
            what: format!("{program} {}", args.join(" ")),
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// mosquitto_sub with `-d` and `args`, after its SUBACK arrived; asserts the granted QoS.
    async fn subscriber(broker: &TestBroker, qos: u8, args: &[&str]) -> Proc {
        let mut all = at(broker);
        all.extend(["-d", "-q", &qos.to_string()].map(String::from));
        all.extend(args.iter().map(|s| s.to_string()));
        let mut sub = Proc::spawn("mosquitto_sub", &all);
        let line = sub
            .wait_line("SUBACK", |l| l.starts_with("Subscribed (mid:"))
            .await;
        assert!(
            line.ends_with(&format!("): {qos}")),
            "granted QoS: {line:?}, asked {qos}"
        );
        sub
    }

    /// Waits for a stdout line matching `pred`; panics with the transcript after [`WAIT`].
    async fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => {
                    let status = tokio::time::timeout(WAIT, self.child.wait()).await;
                    let stderr = self.take_stderr().await;
                    panic!(
                        "{}: exited ({status:?}) before {what}; stdout:\n{}\nstderr:\n{stderr}",
                        self.what,
                        self.stdout.join("\n"),
                    );
                }
                Err(_) => {
                    panic!(
                        "{}: no {what} within {WAIT:?}; stdout:\n{}",
                        self.what,
                        self.stdout.join("\n")
                    )
                }
            }
        }
    }

    async fn take_stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(task) => tokio::time::timeout(WAIT, task)
                .await
                .map(|r| r.unwrap_or_default())
                .unwrap_or_else(|_| "<stderr still open>".into()),
            None => String::new(),
        }
    }

    /// Waits for the process to exit on its own (panics after `limit`, killing it).
    async fn finish(mut self, limit: Duration) -> Finished {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!(
                "{}: still running after {limit:?}; stdout so far:\n{}",
                self.what,
                self.stdout
                    .iter()
                    .map(|l| clip(l))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            self.stdout.push(line);
        }
        let stderr = self.take_stderr().await;
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr,
        }
    }

    /// SIGKILL, then reaps the process.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("killed child exits");
    }
}

/// Runs mosquitto_pub with `args` (after the connection arguments) to completion.
async fn mosquitto_pub(broker: &TestBroker, args: &[&str]) -> Finished {
    let mut all = at(broker);
    all.push("-d".into());
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn("mosquitto_pub", &all).finish(WAIT).await
}

/// mosquitto_pub that must succeed.
async fn publish_ok(broker: &TestBroker, args: &[&str]) -> Finished {
    let done = mosquitto_pub(broker, args).await;
    assert!(
        done.status.success(),
        "mosquitto_pub {args:?} failed: {done}"
    );
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_round_trip_at_each_qos() {
    let broker = start_broker(|_| {}).await;
    for qos in 0u8..=2 {
        let q = qos.to_string();
        let sub = Proc::subscriber(&broker, qos, &["-C", "3", "-t", "t/#", "-v"]).await;
        for i in 1..=3 {
            let (topic, payload) = (format!("t/{i}"), format!("message {i} at QoS {qos}"));
            let done = publish_ok(&broker, &["-q", &q, "-t", &topic, "-m", &payload]).await;
            // The publisher completed the QoS exchange with the broker.
            let ack = ["", "received PUBACK", "received PUBCOMP"][usize::from(qos)];
            assert!(
                done.stdout.iter().any(|l| l.contains(ack)),
                "no {ack:?}: {done}"
            );
        }
        let done = sub.finish(WAIT).await;
        assert!(done.status.success(), "mosquitto_sub at QoS {qos}: {done}");
        let want: Vec<String> = (1..=3)
            .map(|i| format!("t/{i} message {i} at QoS {qos}"))
            .collect();
        assert_eq!(done.messages(), want, "{done}");
        let received = done.received();
        assert_eq!(received.len(), 3, "{done}");
        for line in received {
            assert!(
                line.contains(&format!("(d0, q{qos}, r0,")),
                "QoS {qos} expected: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_retained_set_replace_delete() {
    let broker = start_broker(|_| {}).await;
    publish_ok(&broker, &["-r", "-q", "1", "-t", "r/x", "-m", "first"]).await;
    publish_ok(&broker, &["-r", "-q", "1", "-t", "r/x", "-m", "kept"]).await;
    let mut args = at(&broker);
    args.extend(["-d", "-C", "1", "-W", "5", "-q", "1", "-t", "r/#", "-v"].map(String::from));
    let done = Proc::spawn("mosquitto_sub", &args).finish(WAIT).await;
    assert!(
        done.status.success(),
        "retained message not delivered: {done}"
    );
    assert_eq!(done.messages(), ["r/x kept"], "{done}");
    assert!(
        done.received()[0].contains("(d0, q1, r1,"),
        "retain flag set: {done}"
    );

    // -n: a null (zero-length) retained message deletes the retained one.
    publish_ok(&broker, &["-r", "-n", "-q", "1", "-t", "r/x"]).await;
    let mut args = at(&broker);
    args.extend(["-d", "-C", "1", "-W", "2", "-t", "r/#", "-v"].map(String::from));
    let done = Proc::spawn("mosquitto_sub", &args).finish(WAIT).await;
    assert!(
        !done.status.success(),
        "a message still arrived after deletion: {done}"
    );
    assert!(done.stderr.contains("Timed out"), "{done}");
    // Not vacuous: it was subscribed (retained messages follow SUBACK at once).
    assert!(
        done.stdout
            .iter()
            .any(|l| l.starts_with("Subscribed (mid:")),
        "{done}"
    );
    assert!(done.received().is_empty(), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_will_after_sigkill_not_after_clean_exit() {
    let broker = start_broker(|_| {}).await;
    let watcher = Proc::subscriber(&broker, 1, &["-C", "2", "-t", "w", "-v"]).await;

    // -E: exits with DISCONNECT once subscribed; its will must not be published.
    let mut args = at(&broker);
    args.extend(
        [
            "-d",
            "-E",
            "-i",
            "polite",
            "-t",
            "other",
            "--will-topic",
            "w",
            "--will-payload",
            "clean",
        ]
        .map(String::from),
    );
    let done = Proc::spawn("mosquitto_sub", &args).finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    assert!(
        done.stdout.iter().any(|l| l.contains("sending DISCONNECT")),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_ok(&broker, &["-q", "1", "-t", "w", "-m", "marker"]).await;

    let mut args = at(&broker);
    args.extend(
        [
            "-d",
            "-i",
            "doomed",
            "-t",
            "other",
            "--will-topic",
            "w",
            "--will-payload",
            "bye",
        ]
        .map(String::from),
    );
    let mut doomed = Proc::spawn("mosquitto_sub", &args);
    doomed
        .wait_line("SUBACK", |l| l.starts_with("Subscribed (mid:"))
        .await;
    doomed.kill().await;

    let done = watcher.finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    assert_eq!(done.messages(), ["w marker", "w bye"], "{done}");
}

/// A password file with alice:right, and a broker that requires it.
async fn broker_with_users(dir: &Path) -> TestBroker {
    let file = dir.join("passwd");
    xmpp_mqtt_bridge::broker::auth::set_user(&file, "alice", b"right").expect("write passwd");
    start_broker(move |c| {
        c.password_file = Some(file);
        c.allow_anonymous = false;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_users(dir.path()).await;
    let sub = Proc::subscriber(
        &broker,
        1,
        &["-u", "alice", "-P", "right", "-C", "1", "-t", "a/#", "-v"],
    )
    .await;

    let refusals: [(&[&str], &str); 4] = [
        (
            &["-u", "alice", "-P", "wrong"],
            "Connection Refused: bad user name or password",
        ),
        (
            &["-u", "alice"],
            "Connection Refused: bad user name or password",
        ),
        (
            &["-u", "mallory", "-P", "right"],
            "Connection Refused: bad user name or password",
        ),
        (&[], "Connection Refused: not authorised"),
    ];
    for (login, why) in refusals {
        let mut args = login.to_vec();
        args.extend(["-q", "1", "-t", "a/refused", "-m", "must not arrive"]);
        let done = mosquitto_pub(&broker, &args).await;
        assert!(!done.status.success(), "login {login:?} accepted: {done}");
        assert!(
            done.stderr.contains(why),
            "login {login:?}: expected {why:?}: {done}"
        );
        assert!(
            !done.stdout.iter().any(|l| l.contains("sending PUBLISH")),
            "{done}"
        );
    }

    publish_ok(
        &broker,
        &[
            "-u", "alice", "-P", "right", "-q", "1", "-t", "a/ok", "-m", "welcome",
        ],
    )
    .await;
    let done = sub.finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    assert_eq!(done.messages(), ["a/ok welcome"], "{done}");
}

/// Deterministic pseudo-random bytes (every byte value occurs).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_large_payload_arrives_intact() {
    let broker = start_broker(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let payload = noise(512 * 1024);
    let file = dir.path().join("big");
    std::fs::write(&file, &payload).unwrap();
    let file = file.to_str().unwrap();
    // Live delivery, printed as hex (-F %x) so every byte is checked.
    let sub = Proc::subscriber(&broker, 1, &["-C", "1", "-t", "big", "-F", "%t %x"]).await;
    publish_ok(&broker, &["-q", "1", "-t", "big", "-f", file]).await;
    let done = sub.finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    let got = done.messages();
    assert_eq!(got.len(), 1, "{done}");
    assert!(
        got[0] == format!("big {}", hex(&payload)),
        "payload changed in transit: {done}"
    );
    // And as a retained message to a later subscriber.
    publish_ok(&broker, &["-r", "-q", "1", "-t", "big", "-f", file]).await;
    let mut args = at(&broker);
    args.extend(["-d", "-C", "1", "-W", "5", "-t", "big", "-F", "%t %x"].map(String::from));
    let done = Proc::spawn("mosquitto_sub", &args).finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    assert!(
        done.messages() == [format!("big {}", hex(&payload))],
        "retained copy changed: {done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_oversized_publish_closes_only_that_connection() {
    const LIMIT: usize = 64 * 1024;
    let broker = start_broker(|c| c.max_packet_size = LIMIT).await;
    let dir = tempfile::tempdir().unwrap();
    // PUBLISH QoS 1 on "big/edge": 1 (type) + 3 (remaining length) + 2 + 8 (topic) + 2 (packet
    // id) = 16 bytes besides the payload; the limit counts the whole packet.
    let at_limit = dir.path().join("at-limit");
    std::fs::write(&at_limit, noise(LIMIT - 16)).unwrap();
    let over = dir.path().join("over");
    std::fs::write(&over, noise(LIMIT - 15)).unwrap();

    let sub = Proc::subscriber(&broker, 1, &["-C", "2", "-t", "big/#", "-F", "%t %l"]).await;
    publish_ok(
        &broker,
        &[
            "-q",
            "1",
            "-t",
            "big/edge",
            "-f",
            at_limit.to_str().unwrap(),
        ],
    )
    .await;

    let done = mosquitto_pub(
        &broker,
        &["-q", "1", "-t", "big/edge", "-f", over.to_str().unwrap()],
    )
    .await;
    assert!(
        !done.status.success(),
        "a packet over max_packet_size was accepted: {done}"
    );
    assert!(done.stderr.contains("connection was lost"), "{done}");
    assert!(
        !done.stdout.iter().any(|l| l.contains("received PUBACK")),
        "{done}"
    );

    // The subscriber is still connected and others can still publish.
    publish_ok(&broker, &["-q", "1", "-t", "big/after", "-m", "still here"]).await;
    let done = sub.finish(WAIT).await;
    assert!(done.status.success(), "{done}");
    let at_limit_line = format!("big/edge {}", LIMIT - 16);
    assert_eq!(
        done.messages(),
        [at_limit_line.as_str(), "big/after 10"],
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_protocol_versions() {
    let broker = start_broker(|_| {}).await;
    // Default version (3.1.1 for mosquitto 2.0) and -V mqttv311, on both ends.
    let versions: [&[&str]; 2] = [&[], &["-V", "mqttv311"]];
    for (n, sub_version) in versions.iter().enumerate() {
        let topic = format!("v{n}/#");
        let mut args = vec!["-C", "2", "-t", topic.as_str(), "-v"];
        args.extend_from_slice(sub_version);
        let sub = Proc::subscriber(&broker, 2, &args).await;
        for (m, pub_version) in versions.iter().enumerate() {
            let topic = format!("v{n}/{m}");
            let mut args = vec!["-q", "2", "-t", topic.as_str(), "-m", "hi"];
            args.extend_from_slice(pub_version);
            publish_ok(&broker, &args).await;
        }
        let done = sub.finish(WAIT).await;
        assert!(done.status.success(), "{done}");
        assert_eq!(
            done.messages(),
            [format!("v{n}/0 hi"), format!("v{n}/1 hi")],
            "{done}"
        );
    }
    // MQTT 3.1 (protocol "MQIsdp", level 3) is not supported: refused with CONNACK 0x01
    // [MQTT-3.1.2-2], or the connection closed (allowed for a wrong protocol name,
    // [MQTT-3.1.2-1]); never accepted.
    let done = mosquitto_pub(&broker, &["-V", "mqttv31", "-t", "v/old", "-m", "x"]).await;
    assert!(!done.status.success(), "MQTT 3.1 client accepted: {done}");
    assert!(
        !done
            .stdout
            .iter()
            .any(|l| l.contains("received CONNACK (0)")),
        "{done}"
    );
    // The broker still serves others.
    publish_ok(&broker, &["-q", "1", "-t", "v/new", "-m", "x"]).await;
}
