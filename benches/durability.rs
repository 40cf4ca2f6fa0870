//! Durability under `kill -9`, ours next to Mosquitto, in one run (issue 7).
//!
//! For each broker setting and QoS 1 and 2:
//! 1. A persistent subscriber (CleanSession 0) subscribes to `bench/#` and goes offline.
//! 2. `BENCH_PUBLISHERS` publishers (hand-written MQTT 3.1.1 over blocking sockets,
//!    `BENCH_WINDOW` messages in flight each, 64-byte numbered payloads) publish for
//!    `BENCH_SECONDS`; each records the messages acknowledged to it (PUBACK, PUBREC).
//! 3. The broker is killed with SIGKILL while they publish; acknowledged throughput is the
//!    acknowledged count over the time until the kill.
//! 4. The broker is started again on the same files; the subscriber reconnects and takes
//!    everything; lost = acknowledged but never delivered; duplicates = QoS 2 delivered twice.
//!
//! Settings: ours with `durability` off, sync, group (5 ms); Mosquitto 2.0 (Debian,
//! `/usr/sbin/mosquitto`) with persistence off, with `autosave_interval 1`, and with
//! `autosave_on_changes true` + `autosave_interval 1` (a save on every change).
//!
//! Then the recovery time of ours for `BENCH_RECOVERY_MESSAGES` (1,000,000) queued messages:
//! they are published at QoS 1 to an offline persistent subscriber under `sync`, the broker is
//! killed, and the time from restart to an open listener is measured (with the time the
//! broker logs for reading the store).
//!
//! Run: `cargo bench --bench durability` (a release build). `BENCH_ONLY=throughput` or
//! `recovery` runs one part. For A/B runs of the throughput part: `BENCH_SETTINGS` (a comma
//! list of `mosquitto-none`, `mosquitto-autosave`, `mosquitto-change`, `off`, `sync`, `group`;
//! all by default), `BENCH_QOS` (`1`, `2`, or `1,2`), `BENCH_REPEAT` (rounds, default 1),
//! `BENCH_OURS_B` (the path of a second build of the bridge: every round runs ours with both
//! builds, alternating, labelled A and B) and `BENCH_LOG_LEVEL` (the bridge's log filter;
//! `info,xmpp_mqtt_bridge::store=debug` prints the commit thread's time per commit).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::let_underscore_must_use,
    reason = "a bench binary: a failed unwrap is a failed run; the report goes to stdout; \
              ignored results are best-effort cleanup"
)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The bridge binary the next run of ours uses (`BENCH_OURS_B` alternates it).
static OURS_BIN: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn ours_bin() -> PathBuf {
    OURS_BIN
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_xmpp-mqtt-bridge")))
}
const QUEUE: usize = 5_000_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    OursOff,
    OursSync,
    OursGroup,
    MosquittoNone,
    MosquittoAutosave1,
    MosquittoOnChange,
}

impl Setting {
    fn key(self) -> &'static str {
        match self {
            Setting::OursOff => "off",
            Setting::OursSync => "sync",
            Setting::OursGroup => "group",
            Setting::MosquittoNone => "mosquitto-none",
            Setting::MosquittoAutosave1 => "mosquitto-autosave",
            Setting::MosquittoOnChange => "mosquitto-change",
        }
    }

    fn is_ours(self) -> bool {
        matches!(
            self,
            Setting::OursOff | Setting::OursSync | Setting::OursGroup
        )
    }

    fn name(self) -> &'static str {
        match self {
            Setting::OursOff => "ours, durability off",
            Setting::OursSync => "ours, durability sync",
            Setting::OursGroup => "ours, durability group 5 ms",
            Setting::MosquittoNone => "mosquitto, persistence false",
            Setting::MosquittoAutosave1 => "mosquitto, autosave_interval 1",
            Setting::MosquittoOnChange => "mosquitto, autosave_on_changes (every change)",
        }
    }

    fn config(self, dir: &Path, port: u16) -> Command {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let ours = |durability: &str| {
            let path = dir.join("ours.toml");
            let level = std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into());
            let text = format!(
                "[log]\nlevel = \"{level}\"\nformat = \"json\"\n\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
                 max_connections = 20000\nmax_inflight = 100\nmax_queued = {QUEUE}\n\
                 sys_interval = \"0s\"\n\n[persistence]\ndir = \"{}\"\n{durability}\n\
                 [admin]\nenabled = false\n",
                data.display()
            );
            std::fs::write(&path, text).unwrap();
            let mut cmd = Command::new(ours_bin());
            cmd.arg("run")
                .arg("--config")
                .arg(path)
                .env_remove("RUST_LOG");
            cmd
        };
        let mosquitto = |persist: &str| {
            let path = dir.join("mosquitto.conf");
            let text = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
                 max_inflight_messages 100\nmax_queued_messages {QUEUE}\nmax_queued_bytes 0\n\
                 set_tcp_nodelay true\nsys_interval 0\n{persist}\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n"
            );
            std::fs::write(&path, text).unwrap();
            let mut cmd = Command::new(MOSQUITTO);
            cmd.arg("-c").arg(path);
            cmd
        };
        // Mosquitto started as root drops to the `mosquitto` user, which cannot write a
        // root-owned temporary folder; `user root` keeps it as it was started.
        let location = format!("persistence_location {}/\nuser root\n", data.display());
        match self {
            Setting::OursOff => ours("durability = \"off\""),
            Setting::OursSync => ours("durability = \"sync\""),
            Setting::OursGroup => ours("durability = \"group\"\ngroup_commit_ms = 5"),
            Setting::MosquittoNone => mosquitto("persistence false"),
            Setting::MosquittoAutosave1 => {
                mosquitto(&format!("persistence true\n{location}autosave_interval 1"))
            }
            Setting::MosquittoOnChange => mosquitto(&format!(
                "persistence true\n{location}autosave_on_changes true\nautosave_interval 1"
            )),
        }
    }
}

/// A broker process on a fixed port and folder.
struct Broker {
    setting: Setting,
    dir: PathBuf,
    port: u16,
    child: Child,
    log: PathBuf,
    /// Time from spawn until it accepted a CONNECT.
    ready_after: Duration,
}

impl Broker {
    fn start(setting: Setting, dir: &Path, port: u16) -> Broker {
        let log = dir.join(format!(
            "broker-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = (0..)
            .map(|n| log.with_extension(format!("{n}.log")))
            .find(|p| !p.exists())
            .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        let child = setting
            .config(dir, port)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut b = Broker {
            setting,
            dir: dir.to_path_buf(),
            port,
            child,
            log,
            ready_after: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(600);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!(
                    "{} exited at start ({status}): {}",
                    setting.name(),
                    b.log_text()
                );
            }
            if let Ok(mut s) = open(port, "bench-ready", true) {
                let _ = s.write_all(&[0xe0, 0x00]);
                break;
            }
            assert!(Instant::now() < deadline, "{} not ready", setting.name());
            thread::sleep(Duration::from_millis(5));
        }
        b.ready_after = started.elapsed();
        b
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill9();
        *self = Broker::start(self.setting, &self.dir.clone(), self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    let mut n = body.len();
    loop {
        let mut b = u8::try_from(n % 128).unwrap();
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

/// Connects with MQTT 3.1.1 and reads CONNACK.
fn open(port: u16, client_id: &str, clean: bool) -> io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&60u16.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    let mut out = Vec::new();
    packet(0x10, &body, &mut out);
    s.write_all(&out)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(io::Error::other(format!("CONNACK {ack:02x?}")));
    }
    Ok(s)
}

/// Reads one packet: (first byte, body).
fn read_packet(s: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<(u8, Vec<u8>)> {
    let fill = |s: &mut dyn Read, buf: &mut Vec<u8>, need: usize| -> io::Result<()> {
        let mut chunk = [0u8; 65536];
        while buf.len() < need {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    fill(s, buf, 2)?;
    let mut len = 0usize;
    let mut i = 1;
    loop {
        fill(s, buf, i + 1)?;
        let b = buf[i];
        len += usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    fill(s, buf, i + len)?;
    let first = buf[0];
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Ok((first, body))
}

fn subscribe(port: u16, qos: u8) {
    let mut s = open(port, "bench-sub", false).unwrap();
    let mut body = 1u16.to_be_bytes().to_vec();
    string(b"bench/#", &mut body);
    body.push(qos);
    let mut out = Vec::new();
    packet(0x82, &body, &mut out);
    s.write_all(&out).unwrap();
    let (first, _) = read_packet(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(first, 0x90, "SUBACK");
    s.write_all(&[0xe0, 0x00]).unwrap();
}

/// Publishes until the connection dies; returns the ids acknowledged (PUBACK, PUBREC).
fn publisher(port: u16, n: usize, qos: u8, window: usize, limit: usize) -> Vec<u64> {
    let Ok(mut s) = open(port, &format!("bench-pub-{n}"), true) else {
        return Vec::new();
    };
    let mut r = s.try_clone().unwrap();
    let topic = format!("bench/{n}");
    let mut acked = Vec::new();
    let mut of_pkid = vec![0u64; 65536];
    let mut inflight = 0usize;
    let mut next = 0u64;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        out.clear();
        while inflight < window && (next as usize) < limit {
            let pkid = u16::try_from(next % 65535 + 1).unwrap();
            of_pkid[usize::from(pkid)] = next;
            let mut body = Vec::with_capacity(100);
            string(topic.as_bytes(), &mut body);
            body.extend_from_slice(&pkid.to_be_bytes());
            let payload = format!("{n:02}-{next:012}-");
            body.extend_from_slice(payload.as_bytes());
            body.resize(body.len() + 64 - payload.len(), b'x');
            packet(0x30 | (qos << 1), &body, &mut out);
            inflight += 1;
            next += 1;
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return acked;
        }
        let Ok((first, body)) = read_packet(&mut r, &mut buf) else {
            return acked;
        };
        let pkid = u16::from_be_bytes([body[0], body[1]]);
        match first >> 4 {
            4 => {
                acked.push(of_pkid[usize::from(pkid)]);
                inflight -= 1;
            }
            5 => {
                acked.push(of_pkid[usize::from(pkid)]);
                let [a, b] = pkid.to_be_bytes();
                if s.write_all(&[0x62, 0x02, a, b]).is_err() {
                    return acked;
                }
            }
            7 => inflight -= 1,
            _ => {}
        }
        if (next as usize) >= limit && inflight == 0 {
            return acked;
        }
    }
}

/// Takes every queued message; counts deliveries by payload id.
fn drain(port: u16, quiet: Duration) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    let Ok(mut s) = open(port, "bench-sub", false) else {
        return seen;
    };
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let Ok((first, body)) = read_packet(&mut s, &mut buf) else {
            break;
        };
        match first >> 4 {
            3 => {
                let qos = (first >> 1) & 3;
                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + tlen;
                let pkid = if qos > 0 {
                    at += 2;
                    Some([body[at - 2], body[at - 1]])
                } else {
                    None
                };
                let topic = String::from_utf8_lossy(&body[2..2 + tlen]);
                let id = String::from_utf8_lossy(&body[at..(at + 16).min(body.len())]);
                *seen.entry(format!("{topic}/{id}")).or_insert(0) += 1;
                if let Some([a, b]) = pkid {
                    let kind = if qos == 1 { 0x40 } else { 0x50 };
                    if s.write_all(&[kind, 0x02, a, b]).is_err() {
                        break;
                    }
                }
            }
            6 if s.write_all(&[0x70, 0x02, body[0], body[1]]).is_err() => break,
            _ => {}
        }
    }
    let _ = s.write_all(&[0xe0, 0x00]);
    seen
}

struct Row {
    setting: Setting,
    /// Which build of ours ("A", "B"), empty without `BENCH_OURS_B`.
    build: &'static str,
    qos: u8,
    rate: f64,
    acked: usize,
    lost: usize,
    dups: usize,
}

fn throughput_run(setting: Setting, qos: u8, secs: u64, publishers: usize, window: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(setting, dir.path(), port);
    subscribe(port, qos);
    let started = Instant::now();
    let handles: Vec<_> = (0..publishers)
        .map(|n| thread::spawn(move || publisher(port, n, qos, window, usize::MAX)))
        .collect();
    thread::sleep(Duration::from_secs(secs));
    broker.kill9();
    let elapsed = started.elapsed();
    if let Some(line) = broker
        .log_text()
        .lines()
        .rfind(|l| l.contains("Store commit times"))
    {
        println!("    last commit-thread report before the kill: {line}");
    }
    let acked: Vec<(usize, Vec<u64>)> = handles
        .into_iter()
        .enumerate()
        .map(|(n, h)| (n, h.join().unwrap()))
        .collect();
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    broker.restart();
    let seen = drain(port, Duration::from_secs(3));
    let mut lost = 0;
    for (n, ids) in &acked {
        for id in ids {
            if !seen.contains_key(&format!("bench/{n}/{n:02}-{id:012}-")) {
                lost += 1;
            }
        }
    }
    let dups = if qos == 2 {
        seen.values().filter(|&&c| c > 1).count()
    } else {
        0
    };
    Row {
        setting,
        build: "",
        qos,
        rate: total as f64 / elapsed.as_secs_f64(),
        acked: total,
        lost,
        dups,
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn recovery(messages: usize, publishers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(Setting::OursSync, dir.path(), port);
    subscribe(port, 1);
    let per = messages.div_ceil(publishers);
    let started = Instant::now();
    let handles: Vec<_> = (0..publishers)
        .map(|n| thread::spawn(move || publisher(port, n, 1, 200, per)))
        .collect();
    let acked: usize = handles.into_iter().map(|h| h.join().unwrap().len()).sum();
    let publish_time = started.elapsed();
    broker.kill9();
    let size = std::fs::metadata(dir.path().join("data/state.redb")).map_or(0, |m| m.len());
    broker.restart();
    let log = broker.log_text();
    let took = log
        .lines()
        .find(|l| l.contains("State recovered"))
        .and_then(|l| l.split("\"took_ms\":").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .map(|t| t.trim_matches(|c: char| !c.is_ascii_digit()).to_string())
        .unwrap_or_else(|| "?".into());
    let recovered = log
        .lines()
        .find(|l| l.contains("State recovered"))
        .and_then(|l| l.split("\"messages\":").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .map(|t| t.trim_matches(|c: char| !c.is_ascii_digit()).to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "recovery: {acked} QoS 1 messages acknowledged in {:.1} s ({:.0}/s, sync) to an offline \
         session; store file {:.0} MB; after kill -9: listener open {:.2} s after restart; \
         store read in {took} ms; messages recovered {recovered}",
        publish_time.as_secs_f64(),
        acked as f64 / publish_time.as_secs_f64(),
        size as f64 / 1e6,
        broker.ready_after.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (the test suite) does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("durability: skipped without --bench (run `cargo bench --bench durability`)");
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let secs = env_num("BENCH_SECONDS", 3);
    let publishers = usize::try_from(env_num("BENCH_PUBLISHERS", 4)).unwrap();
    let window = usize::try_from(env_num("BENCH_WINDOW", 50)).unwrap();
    println!(
        "durability: {publishers} publishers x {window} in flight, {secs} s then kill -9; \
         64-byte payloads; one offline persistent subscriber; load average {}",
        load_average()
    );
    if only.is_empty() || only == "throughput" {
        let chosen = std::env::var("BENCH_SETTINGS").unwrap_or_default();
        let settings: Vec<Setting> = [
            Setting::MosquittoNone,
            Setting::MosquittoAutosave1,
            Setting::MosquittoOnChange,
            Setting::OursOff,
            Setting::OursSync,
            Setting::OursGroup,
        ]
        .into_iter()
        .filter(|s| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == s.key()))
        .collect();
        let qoses: Vec<u8> = std::env::var("BENCH_QOS")
            .unwrap_or_else(|_| "1,2".into())
            .split(',')
            .map(|q| q.trim().parse().unwrap())
            .collect();
        let other = std::env::var("BENCH_OURS_B").ok().map(PathBuf::from);
        let builds: Vec<(&'static str, Option<PathBuf>)> = match other {
            Some(b) => vec![("A", None), ("B", Some(b))],
            None => vec![("", None)],
        };
        let repeat = env_num("BENCH_REPEAT", 1);
        let mut rows = Vec::new();
        for round in 0..repeat {
            for &qos in &qoses {
                for &setting in &settings {
                    let mut order = builds.clone();
                    if round % 2 == 1 {
                        order.reverse();
                    }
                    for (build, bin) in order {
                        if !setting.is_ours() && !build.is_empty() && build != "A" {
                            continue;
                        }
                        OURS_BIN.lock().unwrap().clone_from(&bin);
                        let mut row = throughput_run(setting, qos, secs, publishers, window);
                        if setting.is_ours() {
                            row.build = build;
                        }
                        println!(
                            "  {:48} {} QoS {}: {:>8.0} acknowledged/s, {:>7} acknowledged, {:>7} lost, {} QoS 2 duplicates (load {})",
                            row.setting.name(),
                            row.build,
                            row.qos,
                            row.rate,
                            row.acked,
                            row.lost,
                            row.dups,
                            load_average()
                        );
                        rows.push(row);
                    }
                }
            }
        }
        println!(
            "\n| setting | QoS | acknowledged/s | acknowledged | lost after kill -9 | QoS 2 duplicates |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for r in &rows {
            println!(
                "| {}{} | {} | {:.0} | {} | {} | {} |",
                r.setting.name(),
                if r.build.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.build)
                },
                r.qos,
                r.rate,
                r.acked,
                r.lost,
                r.dups
            );
        }
    }
    if only.is_empty() || only == "recovery" {
        let n = usize::try_from(env_num("BENCH_RECOVERY_MESSAGES", 1_000_000)).unwrap();
        recovery(n, publishers);
    }
}
