//! A real ejabberd (Debian package `ejabberd`) for tests: its own config, Mnesia spool and
//! logs in a temporary directory, c2s, component and HTTP API ports picked free on
//! 127.0.0.1, users registered through the HTTP API. Killed on drop. Panics with a clear
//! message when ejabberd is not installed (scripts/test.sh installs it): tests never skip.
//!
//! ejabberdctl is not used: run as root it switches to the `ejabberd` user and its fixed
//! node name; the harness starts the Erlang VM itself with a node name of its own, so several
//! test servers can run at once.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::prosody::{COMPONENT, DOMAIN, SECRET, USERS, XmppServer};

/// Where the Debian package puts ejabberd's Erlang applications.
const ERL_LIBS: &str = "/usr/lib/x86_64-linux-gnu";
/// ejabberd starts in about 2 s here; allow for a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(40);

/// Extra users for balancing tests (password `<name>pw`), beside [`USERS`].
pub const MORE_USERS: [&str; 6] = ["u1", "u2", "u3", "u4", "u5", "u6"];

/// A running ejabberd.
pub struct Ejabberd {
    dir: tempfile::TempDir,
    c2s_port: u16,
    component_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl Ejabberd {
    /// Writes a config with free ports, starts ejabberd, waits for its HTTP API and registers
    /// [`USERS`] and [`MORE_USERS`]. When several bridge instances hold [`COMPONENT`], ejabberd
    /// spreads stanzas between them at random (no `domain_balancing` option: with it, 23.01
    /// needs `component_number` and then silently drops what it routes to a dead instance's
    /// slot; see the README).
    pub fn start() -> Ejabberd {
        assert!(
            Path::new("/usr/sbin/ejabberdctl").exists() && Path::new("/usr/bin/erl").exists(),
            "ejabberd is not installed (scripts/test.sh installs the Debian package `ejabberd`)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ejabberd-")
            .tempdir()
            .expect("temp dir");
        for sub in ["spool", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create ejabberd dirs");
        }
        let (c2s_port, component_port, http_port) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("ejabberd.yml"),
            config_text(c2s_port, component_port, http_port),
        )
        .expect("write ejabberd config");
        // Resolve `localhost` from this file only, as the package's inetrc does.
        std::fs::write(
            dir.path().join("inetrc"),
            "{lookup,[\"file\",\"native\"]}.\n{host,{127,0,0,1}, [\"localhost\"]}.\n",
        )
        .expect("write inetrc");
        let mut server = Ejabberd {
            dir,
            c2s_port,
            component_port,
            http_port,
            child: None,
        };
        server.spawn();
        for user in USERS.iter().chain(MORE_USERS.iter()) {
            server.register(user, &format!("{user}pw"));
        }
        server
    }

    /// Registers a user through the HTTP API.
    pub fn register(&self, user: &str, password: &str) {
        let body = serde_json::json!({"user": user, "host": DOMAIN, "password": password});
        let (status, answer) = self.api("register", &body.to_string());
        assert!(
            status == 200 && answer.contains("successfully registered"),
            "ejabberd register {user} failed: {status} {answer}"
        );
    }

    /// Kills ejabberd with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// The tail of ejabberd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("logs/ejabberd.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&mut self) {
        let out = std::fs::File::create(self.dir.path().join("console.log")).expect("console log");
        let err = out.try_clone().expect("console log");
        let dir = self.dir.path();
        let child = Command::new("/usr/bin/erl")
            // A node name of its own (the c2s port is unique), a fixed cookie so nothing
            // is written to $HOME.
            .args([
                "-sname",
                &format!("bridge-test-{}@localhost", self.c2s_port),
            ])
            .args(["-setcookie", "bridge-test", "-noinput"])
            .args([
                "-mnesia",
                "dir",
                &format!("\"{}\"", dir.join("spool").display()),
            ])
            .args(["-s", "ejabberd"])
            .env("EJABBERD_CONFIG_PATH", dir.join("ejabberd.yml"))
            .env("EJABBERD_LOG_PATH", dir.join("logs/ejabberd.log"))
            .env("ERL_INETRC", dir.join("inetrc"))
            .env("ERL_LIBS", ERL_LIBS)
            .env("CONTRIB_MODULES_CONF_DIR", dir.join("modules.d"))
            .env("ERL_CRASH_DUMP_BYTES", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ejabberd (erl): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
                && self.api("status", "{}").0 == 200
            {
                break;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("ejabberd exited at start ({status}):\n{}", self.console());
                }
            }
            assert!(
                Instant::now() < deadline,
                "ejabberd did not start within {START_LIMIT:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for port in [self.c2s_port, self.component_port] {
            assert!(
                TcpStream::connect(("127.0.0.1", port)).is_ok(),
                "ejabberd does not listen on {port}:\n{}",
                self.console()
            );
        }
    }

    /// One POST to the HTTP API: (status, body). Status 0 when the request could not be made.
    fn api(&self, command: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.http_port)) else {
            return (0, String::new());
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let request = format!(
            "POST /api/{command} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut answer = String::new();
        if stream.read_to_string(&mut answer).is_err() {
            return (0, answer);
        }
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn console(&self) -> String {
        let console =
            std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        format!("{console}\n{}", self.log_tail())
    }
}

impl XmppServer for Ejabberd {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_addr(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// c2s without TLS, the bridge's component (several connections allowed), a MUC service, and an HTTP API for registration open to loopback.
fn config_text(c2s: u16, component: u16, http: u16) -> String {
    format!(
        r#"hosts:
  - {DOMAIN}
loglevel: info
log_rotate_count: 0
listen:
  - port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: false
  - port: {component}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      "{COMPONENT}":
        password: "{SECRET}"
  - port: {http}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
auth_method: internal
shaper: {{}}
shaper_rules: {{}}
api_permissions:
  "loopback admin":
    from:
      - ejabberd_ctl
      - mod_http_api
    who:
      ip: 127.0.0.1/8
    what: "*"
access_rules:
  local:
    allow: all
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_http_api: {{}}
  mod_muc:
    host: "conference.{DOMAIN}"
    access_create: all
    access: all
"#
    )
}
