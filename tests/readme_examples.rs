//! The two Paho examples in README.md run verbatim against the built-in broker.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{python, run_with_timeout, start_broker};

/// The body of the ```python block whose first line is `# example: NAME`.
fn readme_example(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = format!("```python\n# example: {name}\n");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no example {name}"));
    let body = &readme[start + "```python\n".len()..];
    let end = body.find("\n```").expect("example block is closed");
    body[..end].to_string()
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_examples_from_the_readme_work_verbatim() {
    let broker = start_broker(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let sub_path = dir.path().join("subscriber.py");
    let pub_path = dir.path().join("publisher.py");
    std::fs::write(&sub_path, readme_example("paho-subscriber")).unwrap();
    std::fs::write(&pub_path, readme_example("paho-publisher")).unwrap();
    let port = broker.port().to_string();

    let mut sub = Kill(
        Command::new(python())
            .arg("-u")
            .arg(&sub_path)
            .env("MQTT_PORT", &port)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with paho-mqtt (scripts/test.sh installs it)"),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = sub.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("subscriber output");
    assert_eq!(first, "Subscribed to sports/cricket/india");

    let publisher = run_with_timeout(
        Command::new(python())
            .arg(&pub_path)
            .env("MQTT_PORT", &port),
        Duration::from_secs(20),
    );
    assert!(
        publisher.status.success(),
        "{}",
        String::from_utf8_lossy(&publisher.stderr)
    );
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the message");
    assert_eq!(line, "India wins Asia Cup 2016!");
    drop(sub);
}
