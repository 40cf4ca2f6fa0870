//! The bridge binary as a child process with a config file of the test's making: its log in a
//! file beside the config, SIGKILL on [`BridgeProcess::kill9`] and on drop.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "test harness: a failed unwrap is a failed test; cleanup is best effort"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::prosody::{COMPONENT, Prosody, SECRET};
use super::upstream::repo;

/// `{dir}/bridge.toml`: the embedded broker on `port` with `sync` persistence in `{dir}/data`,
/// `users` (password `{user}pw`) in `{dir}/users`, the component link to `prosody` with short
/// keepalive and reconnect times, the shipped rules.
pub fn sync_bridge_config(dir: &Path, prosody: &Prosody, port: u16, users: &[&str]) -> PathBuf {
    let file = dir.join("users");
    for user in users {
        xmpp_mqtt_bridge::broker::auth::set_user(&file, user, format!("{user}pw").as_bytes())
            .unwrap();
    }
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nlevel = \"info\"\n\n\
             [broker]\nlisten = [\"127.0.0.1:{port}\"]\npassword_file = \"{}\"\n\n\
             [persistence]\ndir = \"data\"\ndurability = \"sync\"\n\n\
             [xmpp]\nserver = \"{}\"\ndomain = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\n\
             ping_interval = \"300ms\"\nread_timeout = \"1s\"\nreconnect_min = \"100ms\"\n\
             reconnect_max = \"500ms\"\n\n\
             [mapping]\ndir = \"{}\"\n\n[admin]\nenabled = false\n",
            file.display(),
            prosody.component_addr(),
            repo("mappings").display()
        ),
    )
    .unwrap();
    path
}

/// A running `xmpp-mqtt-bridge run --config FILE`.
pub struct BridgeProcess {
    child: Child,
    log: PathBuf,
}

impl BridgeProcess {
    /// Writes `config` to `{dir}/{name}.toml` and starts the bridge on it.
    pub fn spawn(dir: &Path, name: &str, config: &str) -> BridgeProcess {
        Self::spawn_with_env(dir, name, config, &[])
    }

    /// As [`BridgeProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        dir: &Path,
        name: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> BridgeProcess {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        Self::start_with_env(&path, name, env)
    }

    /// Starts the bridge on an existing config file; the log is `{name}.log` beside it.
    pub fn start(config: &Path, name: &str) -> BridgeProcess {
        Self::start_with_env(config, name, &[])
    }

    fn start_with_env(config: &Path, name: &str, env: &[(&str, &str)]) -> BridgeProcess {
        let log = config.with_file_name(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(super::bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        BridgeProcess { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; panics with the log after [`super::WAIT`].
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + super::WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "bridge log never showed {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin listener's address, from the log line that announces it.
    pub async fn admin_addr(&self) -> String {
        const READY: &str = "Admin listener ready";
        self.wait_log(READY).await;
        let log = self.log();
        let line = log.lines().find(|l| l.contains(READY)).unwrap();
        let at = line.find("addr=").unwrap() + "addr=".len();
        line[at..]
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    }

    /// SIGTERM, then waits for the exit (at most [`super::WAIT`]): the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGTERM to `child`, then waits (blocking, at most [`super::WAIT`]) for its exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + super::WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
