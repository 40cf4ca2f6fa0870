//! A real Prosody (Debian package `prosody`) for tests: its own config and data in a temporary
//! directory, c2s and component ports picked free on 127.0.0.1, users registered with
//! `prosodyctl`. Killed on drop. Panics with a clear message when Prosody is not installed
//! (scripts/test.sh installs it): XMPP tests never skip.

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The virtual host of test users.
pub const DOMAIN: &str = "localhost";
/// The bridge's component domain.
pub const COMPONENT: &str = "mqtt.localhost";
/// A second component domain (same secret), for tests with two bridge instances that must
/// both hold a component link at once.
pub const COMPONENT2: &str = "mqtt2.localhost";
/// The component secret.
pub const SECRET: &str = "bridge-secret";
/// Users registered at start, with password `<name>pw`.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// How long Prosody may take to open its ports.
const START_LIMIT: Duration = Duration::from_secs(15);

/// What the test XMPP clients and bridges need from a server (Prosody or ejabberd).
pub trait XmppServer {
    /// Port for XMPP clients (no TLS required, PLAIN allowed).
    fn c2s_port(&self) -> u16;
    /// `127.0.0.1:<component port>` for the bridge (XEP-0114).
    fn component_addr(&self) -> String;
}

impl XmppServer for Prosody {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_addr(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }
}

/// A running Prosody.
pub struct Prosody {
    dir: tempfile::TempDir,
    config: PathBuf,
    c2s_port: u16,
    component_port: u16,
    child: Option<Child>,
}

impl Prosody {
    /// Writes a config with free ports into a new temporary directory, registers [`USERS`],
    /// starts Prosody in the foreground and waits until both ports accept.
    pub fn start() -> Prosody {
        assert_installed();
        let dir = tempfile::Builder::new()
            .prefix("prosody-")
            .tempdir()
            .expect("temp dir");
        for sub in ["data", "certs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create prosody dirs");
        }
        let (c2s_port, component_port) = (free_port(), free_port());
        let config = dir.path().join("prosody.cfg.lua");
        std::fs::write(&config, config_text(dir.path(), c2s_port, component_port))
            .expect("write prosody config");
        let mut p = Prosody {
            dir,
            config,
            c2s_port,
            component_port,
            child: None,
        };
        for user in USERS {
            p.register(user, &format!("{user}pw"));
        }
        p.spawn();
        p
    }

    /// Port for XMPP clients (no TLS required, PLAIN allowed).
    pub fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    /// Port for external components (XEP-0114).
    pub fn component_port(&self) -> u16 {
        self.component_port
    }

    /// `127.0.0.1:<component port>`.
    pub fn component_addr(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }

    /// The users' domain.
    pub fn domain(&self) -> &'static str {
        DOMAIN
    }

    /// The component domain.
    pub fn component(&self) -> &'static str {
        COMPONENT
    }

    /// The component secret.
    pub fn secret(&self) -> &'static str {
        SECRET
    }

    /// The temporary directory (config, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a user (works whether Prosody runs or not).
    pub fn register(&self, user: &str, password: &str) {
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.config)
            .args(["register", user, DOMAIN, password])
            .env("XMPP_LAB_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run prosodyctl: {e}"));
        assert!(
            out.status.success(),
            "prosodyctl register {user} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops Prosody (SIGTERM, then SIGKILL after 5 s) and starts it again on the same ports
    /// with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops Prosody cleanly (SIGTERM; SIGKILL after 5 s). Connections get a stream close.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_and_reap(&mut child);
    }

    /// Kills Prosody with SIGKILL: no stream close, connections just break. A paused Prosody
    /// dies without running again, so what it had not read is lost with it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Freezes Prosody (SIGSTOP): it reads and answers nothing until [`Self::resume`].
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "-STOP");
        }
    }

    /// Lets a paused Prosody continue (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "-CONT");
        }
    }

    /// Starts Prosody again after [`Self::stop`] or [`Self::kill9`].
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// The tail of Prosody's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&mut self) {
        let out = std::fs::File::create(self.dir.path().join("console.log")).expect("console log");
        let err = out.try_clone().expect("console log");
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&self.config)
            .arg("-F")
            .env("XMPP_LAB_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prosody: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        for port in [self.c2s_port, self.component_port] {
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("prosody exited at start ({status}):\n{}", self.console());
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "prosody did not open port {port} within {START_LIMIT:?}:\n{}",
                    self.console()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn console(&self) -> String {
        let console = std::fs::read_to_string(self.dir.path().join("console.log"));
        format!("{}\n{}", console.unwrap_or_default(), self.log_tail())
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

fn assert_installed() {
    assert!(
        which("prosody") && which("prosodyctl"),
        "Prosody is not installed: the XMPP tests need `prosody` and `prosodyctl` on PATH \
         (Debian package `prosody`; scripts/test.sh installs it)"
    );
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid} failed");
}

fn kill_and_reap(child: &mut Child) {
    // Resume first in case it was paused, so the kill is not delayed.
    Command::new("kill")
        .arg("-CONT")
        .arg(child.id().to_string())
        .status()
        .ok();
    child.kill().ok();
    child.wait().ok();
}

/// Whether this process runs as root (Prosody refuses to unless told it is fine).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The reference lab config (`shared/reference/prosody-test.cfg.lua`) with our ports; the
/// directory comes from `$XMPP_LAB_DIR`. No s2s, no HTTP, no rate limits.
fn config_text(dir: &Path, c2s: u16, component: u16) -> String {
    format!(
        r#"-- Written by tests/common/prosody.rs for one test run.
local lab = ENV_XMPP_LAB_DIR or "{dir}"
run_as_root = {root}
pidfile     = lab .. "/prosody.pid"
data_path   = lab .. "/data"
certificates = lab .. "/certs"
log = {{
	{{ levels = {{ min = "debug" }}, to = "file", filename = lab .. "/prosody-debug.log" }};
	{{ levels = {{ min = "info" }},  to = "file", filename = lab .. "/prosody.log" }};
}}
interfaces           = {{ "127.0.0.1" }}
local_interfaces     = {{ "127.0.0.1" }}
c2s_ports            = {{ {c2s} }}
c2s_interfaces       = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
component_ports      = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports            = {{ }}
http_ports           = {{ }}
https_ports          = {{ }}
modules_enabled = {{
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "version"; "uptime";
	"register"; "carbons"; "smacks"; "private"; "vcard_legacy"; "blocklist";
}}
modules_disabled = {{ "s2s" }}
c2s_require_encryption       = false
allow_unencrypted_plain_auth = true
allow_registration           = true
min_seconds_between_registrations = 0
authentication = "internal_hashed"
storage        = "internal"
limits = {{ c2s = {{ rate = "100mb/s" }}; }}

VirtualHost "{DOMAIN}"

Component "{COMPONENT}"
	component_secret = "{SECRET}"

Component "{COMPONENT2}"
	component_secret = "{SECRET}"

Component "conference.{DOMAIN}" "muc"
	restrict_room_creation = false
	muc_room_default_public = true
	muc_room_default_persistent = false
"#,
        dir = dir.display(),
        root = running_as_root(),
    )
}

/// A slixmpp client (`tests/clients/xmpp_client.py`) logged in as one of [`USERS`]. Commands
/// go to its stdin as JSON lines; its events come back as JSON values.
pub struct XmppClient {
    /// The client's bare JID.
    pub jid: String,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl XmppClient {
    /// Starts the client and waits until it is logged in and has sent its presence.
    pub async fn connect(server: &impl XmppServer, user: &str) -> XmppClient {
        Self::connect_script(server, user, "clients/xmpp_client.py", &[]).await
    }

    /// As [`XmppClient::connect`], with another client script under `tests/` (same JSON-line
    /// protocol) and extra arguments.
    pub async fn connect_script(
        server: &impl XmppServer,
        user: &str,
        script: &str,
        extra: &[&str],
    ) -> XmppClient {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let jid = format!("{user}@{DOMAIN}");
        let mut child = tokio::process::Command::new(super::python())
            .arg(super::test_file(script))
            .args(extra)
            .args(["--port", &server.c2s_port().to_string(), "--jid", &jid])
            .args(["--password", &format!("{user}pw"), "--timeout", "55"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the slixmpp client: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut err_pipe = child.stderr.take().expect("stderr");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            err_pipe.read_to_string(&mut buf).await.ok();
            sink.lock().expect("stderr buffer").push_str(&buf);
        });
        let mut client = XmppClient {
            jid,
            child,
            stdin,
            events,
            stderr,
        };
        let ready = client
            .wait_for(|e| e["event"] == "ready" || e["event"] == "failed")
            .await;
        assert_eq!(ready["event"], "ready", "{user} could not log in: {ready}");
        client
    }

    /// Sends one command (see the script's docstring).
    pub async fn command(&mut self, cmd: serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the slixmpp client");
        self.stdin
            .flush()
            .await
            .expect("flush to the slixmpp client");
    }

    /// Sends a chat message with the given id.
    pub async fn send_chat(&mut self, to: &str, id: &str, body: &str) {
        self.command(serde_json::json!({"cmd": "message", "to": to, "id": id, "body": body}))
            .await;
    }

    /// Sends raw XML on the client's stream.
    pub async fn send_raw(&mut self, xml: &str) {
        self.command(serde_json::json!({"cmd": "raw", "xml": xml}))
            .await;
    }

    /// The next event; panics after [`super::WAIT`].
    pub async fn next_event(&mut self) -> serde_json::Value {
        match tokio::time::timeout(super::WAIT, self.events.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("the slixmpp client ended:\n{}", self.stderr_text()),
            Err(_) => panic!("no event from the slixmpp client in {:?}", super::WAIT),
        }
    }

    /// The next event, without a time limit; `None` when the client ended.
    pub async fn next_event_quiet(&mut self) -> Option<serde_json::Value> {
        self.events.recv().await
    }

    /// The next event matching `pred`, passing over the others; panics after [`super::WAIT`].
    pub async fn wait_for(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the slixmpp client ended:\n{}", self.stderr_text()),
                Err(_) => panic!(
                    "no matching event in {:?}:\n{}",
                    super::WAIT,
                    self.stderr_text()
                ),
            }
        }
    }

    /// The next `n` received messages (type other than error), in arrival order.
    pub async fn messages(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.wait_for(|e| e["event"] == "message").await);
        }
        out
    }

    /// Asserts that no message arrives within `quiet`.
    pub async fn expect_no_message(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(v)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            assert_ne!(v["event"], "message", "unexpected message: {v}");
        }
    }

    /// Logs out and waits for the process to end.
    pub async fn quit(mut self) {
        self.command(serde_json::json!({"cmd": "quit"})).await;
        let ended = tokio::time::timeout(super::WAIT, self.child.wait()).await;
        assert!(ended.is_ok(), "the slixmpp client did not end");
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
