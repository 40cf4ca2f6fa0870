//! A real Mosquitto 2.0 (Debian's `/usr/sbin/mosquitto`) as the upstream broker: its own
//! temporary config, password file and ACL file, on a free loopback port, persistence on (so
//! a restart keeps sessions and queued messages, as a production broker would).
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "test harness: a failed unwrap is a failed test; cleanup is best effort"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of the broker binary (`TEST_MOSQUITTO` overrides).
fn binary() -> String {
    std::env::var("TEST_MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into())
}

pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts Mosquitto with `users` (name, password) and the ACL text `acl`; anonymous
    /// clients are refused.
    pub fn start(users: &[(&str, &str)], acl: &str) -> Mosquitto {
        Self::start_tls(users, acl, None)
    }

    /// Like [`Self::start`]; with `tls` = (CA, certificate, key) PEM files the listener speaks
    /// TLS only.
    pub fn start_tls(
        users: &[(&str, &str)],
        acl: &str,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for (user, password) in users {
            let status = Command::new("mosquitto_passwd")
                .args(["-b"])
                .arg(&passwd)
                .args([user, password])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed for {user}");
        }
        std::fs::write(dir.path().join("acl"), acl).unwrap();
        let port = super::free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {dir}/passwd\n\
             acl_file {dir}/acl\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             max_inflight_messages 100\n\
             user root\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_type subscribe\n{tls}",
            dir = dir.path().display(),
            tls = tls
                .map(|(ca, cert, key)| format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\n",
                    ca.display(),
                    cert.display(),
                    key.display()
                ))
                .unwrap_or_default(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            dir,
            port,
            child: None,
        };
        m.start_again();
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the broker (after [`Self::stop`]) and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary()));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // A TCP accept is enough: the log shows a TLS handshake failure from this probe.
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: Mosquitto saves its persistence file on the way out.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The log file (for assertions on ACL denials).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
