//! One run of `tests/clients/paho_chat.py` (a paho-mqtt 2.x chat user that publishes and
//! subscribes as its arguments say) and its JSON-line events.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A running `paho_chat.py`.
pub struct PahoChat {
    child: tokio::process::Child,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl PahoChat {
    /// Starts paho on `port` as `user` with `args` (after `--port` and `--user`) and waits
    /// until it is subscribed.
    pub async fn start(port: u16, user: &str, args: &[&str]) -> PahoChat {
        let mut child = tokio::process::Command::new(super::python())
            .arg(super::test_file("clients/paho_chat.py"))
            .args(["--port", &port.to_string(), "--user", user])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut paho = PahoChat { child, events };
        paho.wait("ready").await;
        paho
    }

    /// The next `event` line; panics after [`super::WAIT`] or on a `failed` line.
    pub async fn wait(&mut self, event: &str) -> Value {
        match self.try_wait(event).await {
            Ok(v) => v,
            Err(why) => panic!("{why}"),
        }
    }

    /// The next `event` line, or why there was none within [`super::WAIT`].
    pub async fn try_wait(&mut self, event: &str) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if v["event"] == event => return Ok(v),
                Ok(Some(v)) => assert_ne!(v["event"], "failed", "{v}"),
                Ok(None) => return Err(format!("paho ended before `{event}`")),
                Err(_) => return Err(format!("paho: no `{event}` in time")),
            }
        }
    }

    /// The next message received.
    pub async fn message(&mut self) -> Value {
        self.wait("message").await
    }

    /// Waits until paho has disconnected and exited; the events before its `done` line.
    pub async fn finish(mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        loop {
            match tokio::time::timeout(super::WAIT, self.events.recv()).await {
                Ok(Some(v)) if v["event"] == "done" => break,
                Ok(Some(v)) => rest.push(v),
                _ => panic!("paho did not finish"),
            }
        }
        let _ = tokio::time::timeout(super::WAIT, self.child.wait()).await;
        rest
    }
}
