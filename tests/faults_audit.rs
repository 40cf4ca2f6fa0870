//! Fault tests of the audit trail's disk (issue 7), beyond `audit_bridge.rs` (which covers a
//! trail folder that cannot be created at all): the trail's files reaching the process's
//! file-size limit (`RLIMIT_FSIZE`, as when a quota or a full disk stops a file growing; set on
//! a bridge child process, so the test process is not limited), and the folder and its files
//! turning read-only mid-run. The configured policy applies, `/readyz` fails, the process
//! stays up, and the trail recovers and verifies once the disk takes writes again.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::prosody::{Prosody, XmppClient};
use xmpp_mqtt_bridge::audit::verify;

/// One HTTP GET on the admin listener: status and body (blocking; `None` when it cannot
/// connect).
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The bridge binary with its own config, killed on drop.
struct Bridge {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Bridge {
    /// Starts the bridge toward `prosody` with the shipped rules and an audit trail in `audit`
    /// (`payload = "full"`, `when_full = "refuse"`, a queue of 4), and waits until it is ready.
    fn start(prosody: &Prosody, dir: &Path, audit: &Path) -> Bridge {
        let (mqtt, admin) = (common::free_port(), common::free_port());
        let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let config = dir.join("bridge.toml");
        std::fs::write(
            &config,
            format!(
                r#"[log]
level = "info"
[broker]
listen = ["127.0.0.1:{mqtt}"]
sys_interval = "0s"
[xmpp]
server = "{server}"
domain = "{domain}"
secret = "{secret}"
ping_interval = "300ms"
read_timeout = "3s"
reconnect_min = "100ms"
reconnect_max = "500ms"
[mapping]
dir = "{mappings}"
[audit]
dir = "{audit}"
payload = "full"
queue_depth = 4
when_full = "refuse"
[admin]
listen = "127.0.0.1:{admin}"
"#,
                server = prosody.component_addr(),
                domain = prosody.component(),
                secret = prosody.secret(),
                mappings = mappings.display(),
                audit = audit.display(),
            ),
        )
        .unwrap();
        let log = dir.join("bridge.log");
        let child = Command::new(common::bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("bridge.err")).unwrap())
            .spawn()
            .expect("start the bridge");
        let bridge = Bridge {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            log,
        };
        bridge.until("the bridge ready", || {
            get(bridge.admin, "/readyz").is_some_and(|(s, _)| s == 200)
        });
        bridge
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Panics (with the bridge's log) unless the process is still running.
    fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the bridge died {when}: {status}\n{}", self.log_text());
        }
    }

    fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        text = tail;
        text
    }

    fn until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + common::WAIT;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + common::WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the bridge did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alice sends `n` chat messages of about 1 KiB to bob@ the bridge, one every `pace`, while
/// `watch` runs between them; returns the error conditions that came back.
async fn send_and_count_refusals(
    alice: &mut XmppClient,
    n: usize,
    pace: Duration,
    mut watch: impl FnMut(),
) -> Vec<String> {
    let body = "x".repeat(1000);
    for i in 0..n {
        alice
            .send_chat("bob@mqtt.localhost", &format!("m{i}"), &body)
            .await;
        tokio::time::sleep(pace).await;
        watch();
    }
    // Errors come back within a moment of the last message.
    let mut errors = Vec::new();
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(e)) = tokio::time::timeout_at(quiet, alice.next_event_quiet()).await {
        if e["event"] == "error" {
            errors.push(e["condition"].as_str().unwrap_or_default().to_string());
        }
    }
    errors
}

/// The trail's files reach `RLIMIT_FSIZE` (64 KiB, about 40 records each) mid-traffic. The
/// bridge must not die of SIGXFSZ, must fail `/readyz` while it cannot write, refuse what does
/// not fit its queue (`when_full = "refuse"`), and leave a trail that verifies, with one
/// record for every message not refused, once the limit is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_files_at_the_size_limit_fail_readiness_and_the_trail_stays_whole() {
    const MESSAGES: usize = 120;
    const LIMIT: u64 = 64 * 1024;
    let prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    let mut bridge = Bridge::start(&prosody, tmp.path(), &audit);
    // Only the soft limit: raising a hard limit again needs CAP_SYS_RESOURCE.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::FSIZE).unwrap();
    assert!(
        hard > LIMIT,
        "the file-size hard limit {hard} is already below {LIMIT}"
    );
    rlimit::prlimit(
        bridge.pid(),
        rlimit::Resource::FSIZE,
        Some((LIMIT, hard)),
        None,
    )
    .unwrap();

    let mut alice = XmppClient::connect(&prosody, "alice").await;
    let admin = bridge.admin;
    let mut saw_failure = None;
    let errors = send_and_count_refusals(&mut alice, MESSAGES, Duration::from_millis(20), || {
        if saw_failure.is_none() {
            if let Some((503, body)) = get(admin, "/readyz") {
                saw_failure = Some(body);
            }
        }
    })
    .await;
    bridge.assert_alive("at the file-size limit");
    let refused = errors.len();
    assert!(
        errors.iter().all(|c| c == "resource-constraint"),
        "{errors:?}"
    );
    let body = saw_failure.expect("/readyz never failed while the trail hit the file-size limit");
    assert!(body.contains("audit: FAIL"), "{body}");
    assert!(body.contains("xmpp: ok"), "{body}");

    // The limit goes away (more space): the trail is writable again.
    rlimit::prlimit(
        bridge.pid(),
        rlimit::Resource::FSIZE,
        Some((hard, hard)),
        None,
    )
    .unwrap();
    bridge.until("/readyz 200 again", || {
        get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    alice.quit().await;
    let status = bridge.stop();
    assert!(status.success(), "bridge exit: {status}");

    let report = verify::verify(&audit).unwrap();
    assert!(report.ok(), "{:#?}", report.problems);
    let files = std::fs::read_dir(&audit).unwrap().count();
    eprintln!(
        "file-size limit {LIMIT} B: {MESSAGES} sent, {refused} refused, {} records in {files} \
         file(s); the trail verifies",
        report.records
    );
    assert!(refused < MESSAGES, "everything refused");
    assert_eq!(report.records, (MESSAGES - refused) as u64);
}
