//! A paho-mqtt client process (`tests/clients/paho_client.py`), driven by JSON lines, that a
//! test can kill (`kill -9`: the socket closes without DISCONNECT) or freeze (`SIGSTOP`: the
//! socket stays open and silent, so the broker's keep-alive timeout ends it).

use std::process::Stdio;
use std::time::Duration;

/// A running paho client.
pub struct Paho {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Events passed over while waiting for another one, kept for later reads.
    backlog: std::collections::VecDeque<serde_json::Value>,
}

/// How to start one.
pub struct PahoOptions<'a> {
    pub port: u16,
    pub client_id: &'a str,
    pub user: Option<&'a str>,
    /// "5" or "311".
    pub version: &'a str,
    pub keepalive: u16,
    pub will: Option<(&'a str, &'a str, u32)>,
    /// MQTT 5 Session Expiry Interval, seconds.
    pub session_expiry: u32,
}

impl Paho {
    /// Starts the client and waits for a successful CONNACK.
    pub async fn connect(o: PahoOptions<'_>) -> Paho {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(super::python());
        cmd.arg(super::test_file("clients/paho_client.py"))
            .args(["--port", &o.port.to_string(), "--client-id", o.client_id])
            .args([
                "--version",
                o.version,
                "--keepalive",
                &o.keepalive.to_string(),
            ])
            .args(["--timeout", "55"]);
        if let Some(user) = o.user {
            cmd.args(["--user", user, "--password", &format!("{user}pw")]);
        }
        if o.session_expiry > 0 {
            cmd.args(["--session-expiry", &o.session_expiry.to_string()]);
        }
        if let Some((topic, payload, delay)) = o.will {
            cmd.args(["--will-topic", topic, "--will-payload", payload])
                .args(["--will-delay", &delay.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the paho client: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut paho = Paho {
            child,
            stdin,
            events,
            backlog: std::collections::VecDeque::new(),
        };
        let ev = paho.wait_for(|e| e["event"] == "connected").await;
        assert_eq!(ev["reason"], 0, "{} not accepted: {ev}", o.client_id);
        paho
    }

    /// Sends one command (see the script's docstring).
    pub async fn command(&mut self, cmd: serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("client stdin open");
        let mut line = cmd.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to paho");
        stdin.flush().await.expect("flush to paho");
    }

    /// Publishes at QoS 1 and waits for PUBACK; returns its reason code (0 for 3.1.1).
    pub async fn publish(&mut self, topic: &str, payload: &str, retain: bool) -> u64 {
        self.command(serde_json::json!({"cmd": "publish", "topic": topic,
            "payload": payload, "qos": 1, "retain": retain}))
            .await;
        let ev = self.wait_for(|e| e["event"] == "published").await;
        ev["reason"].as_u64().unwrap_or(0)
    }

    /// Subscribes and waits for SUBACK; returns the reason codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<u64> {
        self.command(serde_json::json!({"cmd": "subscribe", "topic": filter, "qos": 1}))
            .await;
        let ev = self.wait_for(|e| e["event"] == "subscribed").await;
        ev["codes"]
            .as_array()
            .expect("codes")
            .iter()
            .map(|c| c.as_u64().expect("code"))
            .collect()
    }

    /// Unsubscribes and waits for UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.command(serde_json::json!({"cmd": "unsubscribe", "topic": filter}))
            .await;
        self.wait_for(|e| e["event"] == "unsubscribed").await;
    }

    /// The next event matching `pred` (backlog first); the others stay in the backlog.
    /// Panics after [`super::WAIT`].
    pub async fn wait_for(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            if let Some(v) = self.backlog.remove(i) {
                return v;
            }
        }
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(v)) => self.backlog.push_back(v),
                Ok(None) => panic!("the paho client ended"),
                Err(_) => panic!("no matching paho event in {:?}", super::WAIT),
            }
        }
    }

    /// Messages arriving within `quiet` (after which nothing more came).
    pub async fn messages_for(&mut self, quiet: Duration) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .backlog
            .drain(..)
            .filter(|v| v["event"] == "message")
            .collect();
        while let Ok(Some(v)) = tokio::time::timeout(quiet, self.events.recv()).await {
            if v["event"] == "message" {
                out.push(v);
            }
        }
        out
    }

    /// Clean DISCONNECT, then waits for the process to end.
    pub async fn disconnect(mut self) {
        self.command(serde_json::json!({"cmd": "disconnect"})).await;
        let ended = tokio::time::timeout(super::WAIT, self.child.wait()).await;
        assert!(ended.is_ok(), "the paho client did not end");
    }

    /// `kill -9`: the kernel closes the socket, no DISCONNECT.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill paho");
    }

    /// `SIGSTOP`: the socket stays open and nothing is sent (no PINGREQ).
    pub fn freeze(&self) {
        let pid = self.child.id().expect("paho running");
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -STOP {pid}");
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        // A frozen process must be resumed for SIGKILL to reap it promptly.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}
