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

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use common::prosody::{Prosody, XmppClient};
use xmpp_mqtt_bridge::app::App;
use xmpp_mqtt_bridge::audit::{AuditConfig, PayloadPolicy, verify};
use xmpp_mqtt_bridge::bridge::events::WhenFull;
use xmpp_mqtt_bridge::broker::BrokerConfig;
use xmpp_mqtt_bridge::config::{BridgeSettings, Config, LogConfig};
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_mqtt_bridge::telemetry::admin::AdminConfig;
use xmpp_mqtt_bridge::xmpp::XmppConfig;

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
        common::process::terminate(&mut self.child)
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

/// Makes `dir` and the files in it read-only, or writable again, until dropped. As root,
/// permission bits stop nothing, so the immutable attribute (`chattr +i`, ext4 and most Linux
/// file systems) is used; otherwise the write permission bits are removed.
struct ReadOnly {
    dir: PathBuf,
    root: bool,
    on: bool,
}

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        ReadOnly {
            dir: dir.to_path_buf(),
            root,
            on: false,
        }
    }

    fn set(&mut self, on: bool) {
        let mut paths = vec![self.dir.clone()];
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            paths.push(entry.unwrap().path());
        }
        for path in &paths {
            if self.root {
                let out = Command::new("chattr")
                    .arg(if on { "+i" } else { "-i" })
                    .arg(path)
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run chattr (e2fsprogs): {e}"));
                assert!(
                    out.status.success(),
                    "chattr on {} failed (the file system must support the immutable \
                     attribute): {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                let mode = if path.is_dir() { 0o755 } else { 0o644 };
                let mode = if on { mode & 0o555 } else { mode };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        self.on = on;
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.on {
            self.set(false);
        }
    }
}

/// The bridge in this process with the shipped rules and `audit`, the admin listener on a
/// free port.
async fn start_in_process(prosody: &Prosody, audit: AuditConfig) -> App {
    let mut xmpp = XmppConfig::new(
        prosody.component_addr(),
        prosody.component(),
        prosody.secret(),
    );
    xmpp.ping_interval = Duration::from_millis(300);
    xmpp.read_timeout = Duration::from_secs(3);
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let table = MappingTable::load_dir(&mappings, prosody.component()).unwrap();
    let config = Config {
        log: LogConfig {
            level: std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()),
            ..LogConfig::default()
        },
        broker: BrokerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            sys_interval: None,
            ..BrokerConfig::default()
        },
        mqtt: xmpp_mqtt_bridge::config::MqttMode::Embedded,
        bridge: Some(BridgeSettings {
            xmpp,
            mapping_dir: mappings,
            mapping: Arc::new(table),
        }),
        audit: Some(audit),
        presence: None,
        admin: Some(AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
    };
    xmpp_mqtt_bridge::telemetry::init(&config.log);
    App::start(config).await.unwrap()
}

/// The trail's folder and files turn read-only while messages flow (`when_full = "refuse"`,
/// a queue of 4): `/readyz` fails on the audit check, messages that find the queue full are
/// refused with `<resource-constraint/>`, the process stays up; once writable again the
/// writer continues the same file, `/readyz` is 200, and the trail verifies with one record
/// for every message not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_folder_turning_read_only_mid_run_applies_the_policy_and_recovers() {
    const BEFORE: usize = 20;
    const DURING: usize = 40;
    let prosody = Prosody::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut audit = AuditConfig::new(dir.clone());
    audit.payload = PayloadPolicy::Full;
    audit.queue_depth = 4;
    audit.when_full = WhenFull::Refuse;
    let app = start_in_process(&prosody, audit).await;
    let admin = app.admin_addr.unwrap();
    let stats = app.audit.clone().unwrap();
    let deadline = Instant::now() + common::WAIT;
    while get(admin, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut alice = XmppClient::connect(&prosody, "alice").await;
    // While the trail is writable and keeps up, nothing is refused. Each message waits for
    // the record of the one before: with a queue of 4, a writer merely slowed by a busy
    // machine (the bridge runs on another thread) would otherwise refuse, as it should.
    let body = "x".repeat(1000);
    for i in 0..BEFORE {
        alice
            .send_chat("bob@mqtt.localhost", &format!("m{i}"), &body)
            .await;
        let deadline = Instant::now() + common::WAIT;
        while stats
            .records_written
            .load(std::sync::atomic::Ordering::Relaxed)
            < i as u64 + 1
        {
            assert!(Instant::now() < deadline, "record {i} not written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let errors = send_and_count_refusals(&mut alice, 0, Duration::ZERO, || {}).await;
    assert!(errors.is_empty(), "{errors:?}");

    let mut read_only = ReadOnly::new(&dir);
    read_only.set(true);
    let mut failed_readyz = None;
    let errors = send_and_count_refusals(&mut alice, DURING, Duration::from_millis(20), || {
        if failed_readyz.is_none() {
            if let Some((503, body)) = get(admin, "/readyz") {
                failed_readyz = Some(body);
            }
        }
    })
    .await;
    let body = failed_readyz.expect("/readyz never failed while the trail was read-only");
    assert!(body.contains("audit: FAIL"), "{body}");
    assert!(body.contains("xmpp: ok"), "{body}");
    assert!(!stats.is_writable());
    assert!(
        errors.iter().all(|c| c == "resource-constraint"),
        "{errors:?}"
    );
    let refused = errors.len();
    assert!(
        refused >= 1,
        "nothing refused while the trail was read-only"
    );

    read_only.set(false);
    let deadline = Instant::now() + common::WAIT;
    while get(admin, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 after the trail is writable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let carried = (BEFORE + DURING - refused) as u64;
    let deadline = Instant::now() + common::WAIT;
    while stats
        .records_written
        .load(std::sync::atomic::Ordering::Relaxed)
        < carried
    {
        assert!(Instant::now() < deadline, "records not all written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alice.quit().await;
    assert!(app.stop(Duration::from_secs(5)).await, "clean shutdown");
    let report = verify::verify(&dir).unwrap();
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.records, carried);
    let files = std::fs::read_dir(&dir).unwrap().count();
    eprintln!(
        "read-only trail: {DURING} sent meanwhile, {refused} refused; {carried} records in \
         {files} file(s); the trail verifies"
    );
    assert_eq!(files, 1, "the writer continued its file");
}
