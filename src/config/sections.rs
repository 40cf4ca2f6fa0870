//! One builder per configuration section: raw values in, validated settings out, every
//! problem recorded in the [`Context`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::source::{Context, Section};
use super::{DEFAULT_XMPP_DOMAIN, DEFAULT_XMPP_SERVER, LogConfig, LogFormat, resolve};
use crate::audit::{AuditConfig, PayloadPolicy};
use crate::bridge::events::WhenFull;
use crate::bridge::presence::PresenceConfig;
use crate::broker::BrokerConfig;
use crate::broker::auth::PasswordFile;
use crate::telemetry::admin::AdminConfig;
use crate::xmpp::XmppConfig;

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
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

pub(super) fn duration(raw: RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Seconds(s) => Ok(Duration::from_secs(s)),
        RawDuration::Text(t) => humantime::parse_duration(&t)
            .map_err(|e| format!("`{t}` is not a duration ({e}); write e.g. \"10s\" or 10")),
    }
}

pub(super) fn positive_duration(raw: RawDuration) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d.is_zero() {
        Err("must be greater than zero".to_string())
    } else {
        Ok(d)
    }
}

pub(super) fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
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
    let listeners = super::listeners::listeners(cx, &mut s, base, &listen);
    let acl_file = super::listeners::acl_file(cx, &mut s, base);
    if listen.is_empty() && listeners.is_empty() {
        cx.error(
            "broker.listen",
            "at least one address is needed, e.g. \"127.0.0.1:1883\" (or a [[broker.listeners]])",
        );
    }
    let max_connections = s.take_with(
        cx,
        "max_connections",
        d.max_connections,
        in_range(1, 1_000_000),
    );
    let worker_threads = s.take_with(cx, "worker_threads", d.worker_threads, in_range(1, 1024));
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
    let receive_maximum = s.take_with(
        cx,
        "receive_maximum",
        d.receive_maximum,
        in_range(1, u16::MAX),
    );
    let topic_alias_maximum = s.take_with(
        cx,
        "topic_alias_maximum",
        d.topic_alias_maximum,
        in_range(0, u16::MAX),
    );
    let maximum_qos = s.take_with(cx, "maximum_qos", d.maximum_qos, in_range(0, 2));
    let flag = |s: &mut Section, cx: &mut Context, key: &str, default: bool| {
        s.take::<bool>(cx, key).unwrap_or(default)
    };
    let retain_available = flag(&mut s, cx, "retain_available", d.retain_available);
    let wildcard_subscriptions = flag(
        &mut s,
        cx,
        "wildcard_subscriptions",
        d.wildcard_subscriptions,
    );
    let shared_subscriptions = flag(&mut s, cx, "shared_subscriptions", d.shared_subscriptions);
    let subscription_identifiers = flag(
        &mut s,
        cx,
        "subscription_identifiers",
        d.subscription_identifiers,
    );
    let server_keep_alive = s.take_with(cx, "server_keep_alive", None, |v: u16| Ok(Some(v)));
    let response_information = s
        .take_with(
            cx,
            "response_information",
            d.response_information.clone(),
            |v: String| Ok(Some(v)),
        )
        .filter(|v| !v.is_empty());
    s.finish(
        cx,
        &[
            "receive_maximum",
            "topic_alias_maximum",
            "maximum_qos",
            "retain_available",
            "wildcard_subscriptions",
            "shared_subscriptions",
            "subscription_identifiers",
            "server_keep_alive",
            "response_information",
            "listen",
            "listeners",
            "acl_file",
            "worker_threads",
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
        listeners,
        acl_file,
        worker_threads,
        max_connections,
        max_packet_size,
        max_inflight,
        max_queued,
        connect_timeout,
        allow_anonymous,
        password_file,
        sys_interval,
        receive_maximum,
        topic_alias_maximum,
        maximum_qos,
        retain_available,
        wildcard_subscriptions,
        shared_subscriptions,
        subscription_identifiers,
        server_keep_alive,
        response_information,
        persistence: None,
    }
}

fn listen_addrs(raw: OneOrMany) -> Result<Vec<SocketAddr>, String> {
    let items = match raw {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
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

/// `[xmpp]`: the component link. The secret comes from `secret`, `secret_file` or the
/// environment (`BRIDGE_XMPP__SECRET`), never from logs.
pub(super) fn xmpp(cx: &mut Context, mut s: Section, base: &Path) -> XmppConfig {
    let server = s
        .take::<String>(cx, "server")
        .unwrap_or_else(|| DEFAULT_XMPP_SERVER.into());
    let domain = s
        .take::<String>(cx, "domain")
        .unwrap_or_else(|| DEFAULT_XMPP_DOMAIN.into());
    let inline = s.take::<String>(cx, "secret");
    let from_file = s
        .take::<PathBuf>(cx, "secret_file")
        .map(|p| resolve(base, p));
    let secret = match (inline, from_file) {
        (Some(_), Some(_)) => {
            cx.error(
                "xmpp.secret_file",
                "give `secret` or `secret_file`, not both",
            );
            String::new()
        }
        (Some(secret), None) => secret,
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => text.trim_end_matches(['\r', '\n']).to_string(),
            Err(e) => {
                cx.error(
                    "xmpp.secret_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                String::new()
            }
        },
        (None, None) => {
            cx.error(
                "xmpp.secret",
                "the component secret is required (or `secret_file`)",
            );
            String::new()
        }
    };
    let mut cfg = XmppConfig::new(server, domain, secret.clone());
    if let Some(d) = s.take::<String>(cx, "server_domain") {
        cfg.server_domain = d;
    }
    cfg.ping_interval = s.take_with(cx, "ping_interval", cfg.ping_interval, positive_duration);
    cfg.read_timeout = s.take_with(cx, "read_timeout", cfg.read_timeout, positive_duration);
    cfg.connect_timeout = s.take_with(
        cx,
        "connect_timeout",
        cfg.connect_timeout,
        positive_duration,
    );
    cfg.reconnect_min = s.take_with(cx, "reconnect_min", cfg.reconnect_min, positive_duration);
    cfg.reconnect_max = s.take_with(cx, "reconnect_max", cfg.reconnect_max, positive_duration);
    cfg.queue_depth = s.take_with(cx, "queue_depth", cfg.queue_depth, in_range(1, 10_000_000));
    s.finish(
        cx,
        &[
            "server",
            "domain",
            "server_domain",
            "secret",
            "secret_file",
            "ping_interval",
            "read_timeout",
            "connect_timeout",
            "reconnect_min",
            "reconnect_max",
            "queue_depth",
        ],
    );
    for (field, problem) in cfg.problems() {
        // An empty secret was reported above already.
        if field == "secret" && secret.is_empty() {
            continue;
        }
        cx.error(&format!("xmpp.{field}"), problem);
    }
    cfg
}

/// `[mapping]`: where the rule files are. Compiled against the XMPP domain by the caller.
pub(super) fn mapping_dir(cx: &mut Context, mut s: Section, base: &Path) -> PathBuf {
    let dir = s.take::<PathBuf>(cx, "dir").map(|p| resolve(base, p));
    s.finish(cx, &["dir"]);
    dir.unwrap_or_else(|| resolve(base, PathBuf::from(super::DEFAULT_MAPPING_DIR)))
}

/// `[audit]`: the trail of translated traffic; `None` when `enabled = false`.
pub(super) fn audit(cx: &mut Context, mut s: Section, base: &Path) -> Option<AuditConfig> {
    let enabled = s.take::<bool>(cx, "enabled").unwrap_or(true);
    let dir = s
        .take::<PathBuf>(cx, "dir")
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_AUDIT_DIR));
    let mut cfg = AuditConfig::new(resolve(base, dir));
    cfg.payload = s.take_with(cx, "payload", cfg.payload, |p: String| p.parse());
    if let Some(rules) = s.take::<std::collections::BTreeMap<String, String>>(cx, "rules") {
        for (rule, policy) in rules {
            match policy.parse::<PayloadPolicy>() {
                Ok(p) => {
                    cfg.rules.insert(rule, p);
                }
                Err(e) => cx.error(&format!("audit.rules.{rule}"), e),
            }
        }
    }
    cfg.queue_depth = s.take_with(cx, "queue_depth", cfg.queue_depth, in_range(1, 10_000_000));
    cfg.when_full = s.take_with(cx, "when_full", cfg.when_full, |w: String| {
        match w.as_str() {
            "block" => Ok(WhenFull::Block),
            "refuse" => Ok(WhenFull::Refuse),
            other => Err(format!(
                "`{other}` is not a policy; use \"block\" (back-pressure) or \"refuse\""
            )),
        }
    });
    cfg.max_file_bytes = s.take_with(
        cx,
        "max_file_size",
        cfg.max_file_bytes,
        in_range(4096, u64::MAX),
    );
    cfg.rotate_interval = s.take_with(
        cx,
        "rotate_interval",
        cfg.rotate_interval,
        positive_duration,
    );
    cfg.retention_days = s.take_with(cx, "retention_days", cfg.retention_days, |d: u32| Ok(d));
    cfg.legal_hold = s.take::<bool>(cx, "legal_hold").unwrap_or(cfg.legal_hold);
    cfg.sync = s.take::<bool>(cx, "sync").unwrap_or(cfg.sync);
    s.finish(
        cx,
        &[
            "enabled",
            "dir",
            "payload",
            "rules",
            "queue_depth",
            "when_full",
            "max_file_size",
            "rotate_interval",
            "retention_days",
            "legal_hold",
            "sync",
        ],
    );
    enabled.then_some(cfg)
}

/// `[admin]`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`; `None` when
/// `enabled = false`.
pub(super) fn admin(cx: &mut Context, mut s: Section) -> Option<AdminConfig> {
    let enabled = s.take::<bool>(cx, "enabled").unwrap_or(true);
    let d = AdminConfig::default();
    let listen = s.take_with(cx, "listen", d.listen, |a: String| {
        a.trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{a}` is not an IP:port address (e.g. \"127.0.0.1:9464\")"))
    });
    s.finish(cx, &["enabled", "listen"]);
    enabled.then_some(AdminConfig { listen })
}

/// `[presence]`: presence both ways; `None` when `enabled = false`.
pub(super) fn presence(cx: &mut Context, mut s: Section, base: &Path) -> Option<PresenceConfig> {
    use crate::bridge::presence::{
        DEFAULT_FILE, DEFAULT_LEGACY_TOPIC, DEFAULT_STATUS_TOPIC, LevelPattern,
    };
    let enabled = s.take::<bool>(cx, "enabled").unwrap_or(true);
    let pattern = |name: &'static str| move |p: String| LevelPattern::parse(&p, name);
    let default = |p: &str, name: &str| LevelPattern::parse(p, name).ok();
    let status_topic = s.take_with(
        cx,
        "status_topic",
        default(DEFAULT_STATUS_TOPIC, "user"),
        |p: String| pattern("user")(p).map(Some),
    );
    let legacy_topic = s.take_with(
        cx,
        "legacy_topic",
        default(DEFAULT_LEGACY_TOPIC, "jid"),
        |p: String| pattern("jid")(p).map(Some),
    );
    let file = s
        .take::<PathBuf>(cx, "file")
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
    s.finish(cx, &["enabled", "status_topic", "legacy_topic", "file"]);
    let (status_topic, legacy_topic) = (status_topic?, legacy_topic?);
    if status_topic.filter() == legacy_topic.filter() {
        cx.error(
            "presence.legacy_topic",
            "must differ from presence.status_topic",
        );
    }
    enabled.then(|| PresenceConfig {
        status_topic,
        legacy_topic,
        file: resolve(base, file),
    })
}
