//! One builder per configuration section: raw values in, validated settings out, every
//! problem recorded in the [`Context`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::source::{Context, Section};
use super::{LogConfig, LogFormat, resolve};
use crate::broker::BrokerConfig;
use crate::broker::auth::PasswordFile;

/// Largest packet MQTT can express (remaining length 268,435,455 plus a 5-byte header).
const MQTT_MAX_PACKET: usize = 268_435_460;

/// A value given as one item or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A duration as a number of seconds or a human string (`"10s"`, `"1m 30s"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

fn duration(raw: RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Seconds(s) => Ok(Duration::from_secs(s)),
        RawDuration::Text(t) => humantime::parse_duration(&t)
            .map_err(|e| format!("`{t}` is not a duration ({e}); write e.g. \"10s\" or 10")),
    }
}

fn positive_duration(raw: RawDuration) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d.is_zero() {
        Err("must be greater than zero".to_string())
    } else {
        Ok(d)
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    lo: T,
    hi: T,
) -> impl FnOnce(T) -> Result<T, String> {
    move |v| {
        if v < lo || v > hi {
            Err(format!("{v} is out of range {lo}..={hi}"))
        } else {
            Ok(v)
        }
    }
}

/// `[log]`.
pub(super) fn log(cx: &mut Context, mut s: Section) -> LogConfig {
    let default = LogConfig::default();
    let format = s.take_with(cx, "format", default.format, |f: String| match f.as_str() {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "`{other}` is not a log format; use \"pretty\" or \"json\""
        )),
    });
    let level = s.take_with(cx, "level", default.level, |l: String| {
        tracing_subscriber::EnvFilter::try_new(&l)
            .map(|_| l.clone())
            .map_err(|e| format!("`{l}` is not a log filter: {e}"))
    });
    s.finish(cx, &["format", "level"]);
    LogConfig { format, level }
}

/// `[broker]`.
pub(super) fn broker(cx: &mut Context, mut s: Section, base: &Path) -> BrokerConfig {
    let d = BrokerConfig::default();
    let listen = s.take_with(cx, "listen", d.listen.clone(), listen_addrs);
    let max_connections = s.take_with(
        cx,
        "max_connections",
        d.max_connections,
        in_range(1, 1_000_000),
    );
    let max_packet_size = s.take_with(
        cx,
        "max_packet_size",
        d.max_packet_size,
        in_range(64, MQTT_MAX_PACKET),
    );
    let max_inflight = s.take_with(cx, "max_inflight", d.max_inflight, in_range(1, u16::MAX));
    let max_queued = s.take_with(cx, "max_queued", d.max_queued, in_range(1, 10_000_000));
    let connect_timeout = s.take_with(cx, "connect_timeout", d.connect_timeout, positive_duration);
    let allow_anonymous = s
        .take::<bool>(cx, "allow_anonymous")
        .unwrap_or(d.allow_anonymous);
    let password_file = s
        .take::<PathBuf>(cx, "password_file")
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| resolve(base, p));
    if let Some(path) = &password_file {
        if let Err(e) = PasswordFile::load(path) {
            cx.error("broker.password_file", e.to_string());
        }
    }
    if !allow_anonymous && password_file.is_none() {
        cx.error(
            "broker.allow_anonymous",
            "false without a password_file: no client could ever connect",
        );
    }
    let sys_interval = s.take_with(cx, "sys_interval", d.sys_interval, |raw: RawDuration| {
        duration(raw).map(|d| (!d.is_zero()).then_some(d))
    });
    s.finish(
        cx,
        &[
            "listen",
            "max_connections",
            "max_packet_size",
            "max_inflight",
            "max_queued",
            "connect_timeout",
            "allow_anonymous",
            "password_file",
            "sys_interval",
        ],
    );
    BrokerConfig {
        listen,
        max_connections,
        max_packet_size,
        max_inflight,
        max_queued,
        connect_timeout,
        allow_anonymous,
        password_file,
        sys_interval,
    }
}

fn listen_addrs(raw: OneOrMany) -> Result<Vec<SocketAddr>, String> {
    let items = match raw {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
    if items.is_empty() {
        return Err("at least one address is needed, e.g. \"127.0.0.1:1883\"".to_string());
    }
    let mut seen = HashSet::new();
    let mut addrs = Vec::with_capacity(items.len());
    for item in items {
        let addr: SocketAddr = item
            .trim()
            .parse()
            .map_err(|_| format!("`{item}` is not an IP:port address (e.g. \"127.0.0.1:1883\")"))?;
        if addr.port() != 0 && !seen.insert(addr) {
            return Err(format!("`{addr}` is listed twice"));
        }
        addrs.push(addr);
    }
    Ok(addrs)
}
