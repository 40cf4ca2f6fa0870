//! Configuration: a TOML file plus `BRIDGE_<SECTION>__<KEY>` environment overrides, checked
//! completely before anything binds a port.
//!
//! Every problem is collected and reported at once, each with its file and line (or the
//! environment variable) and its dotted key. Unknown keys are errors.

mod listeners;
mod mqtt;
mod persistence;
mod sections;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use serde::Serialize;

use crate::audit::AuditConfig;
use crate::broker::BrokerConfig;
use crate::mapping::MappingTable;
use crate::telemetry::admin::AdminConfig;
use crate::xmpp::XmppConfig;
pub use mqtt::MqttMode;
pub use source::{ConfigError, ConfigErrors};
use source::{Context, Section};

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "config/bridge.toml";
/// Default folder of mapping files, relative to the configuration file.
pub const DEFAULT_MAPPING_DIR: &str = "../mappings";
/// Default XMPP server component address.
pub const DEFAULT_XMPP_SERVER: &str = "127.0.0.1:5347";
/// Default component domain.
pub const DEFAULT_XMPP_DOMAIN: &str = "mqtt.localhost";
/// Default audit trail folder, relative to the configuration file.
pub const DEFAULT_AUDIT_DIR: &str = "../audit";
/// Prefix of environment overrides; `__` separates section and key.
pub const ENV_PREFIX: &str = "BRIDGE_";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`: how the process logs.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,xmpp_mqtt_bridge::broker=debug`. `RUST_LOG`,
    /// when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".to_string(),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `[log]`.
    pub log: LogConfig,
    /// `[broker]`: the embedded MQTT broker.
    pub broker: BrokerConfig,
    /// `[mqtt]`: the embedded broker or an upstream one (then `broker` is not used).
    #[serde(skip)]
    pub mqtt: MqttMode,
    /// `[xmpp]` and `[mapping]`: the bridge; `None` runs the broker alone.
    #[serde(skip)]
    pub bridge: Option<BridgeSettings>,
    /// `[audit]`: the trail of translated traffic; `None` when off (or no `[audit]` section).
    pub audit: Option<AuditConfig>,
    /// `[admin]`: `/metrics`, `/healthz`, `/readyz`; `None` when off. On by default.
    pub admin: Option<AdminConfig>,
    /// `[presence]`: presence both ways; `None` when off (or no `[presence]` section).
    pub presence: Option<crate::bridge::presence::PresenceConfig>,
}

/// The bridge's settings: the component link and the compiled mapping table.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// `[xmpp]`.
    pub xmpp: XmppConfig,
    /// `[mapping] dir`, resolved.
    pub mapping_dir: PathBuf,
    /// The rules, compiled against `xmpp.domain`.
    pub mapping: Arc<MappingTable>,
}

/// `[xmpp]` as printed by `check-config` (secret redacted).
#[derive(Serialize)]
struct XmppView<'a> {
    server: &'a str,
    domain: &'a str,
    server_domain: &'a str,
    secret: &'static str,
    ping_interval: String,
    read_timeout: String,
    connect_timeout: String,
    reconnect_min: String,
    reconnect_max: String,
    queue_depth: usize,
}

/// `[mapping]` as printed by `check-config`.
#[derive(Serialize)]
struct MappingView<'a> {
    dir: &'a Path,
}

/// The bridge's sections as printed by `check-config`.
#[derive(Serialize)]
struct BridgeView<'a> {
    xmpp: XmppView<'a>,
    mapping: MappingView<'a>,
}

impl BridgeSettings {
    fn view(&self) -> BridgeView<'_> {
        let x = &self.xmpp;
        let d = |v| humantime::format_duration(v).to_string();
        BridgeView {
            xmpp: XmppView {
                server: &x.server,
                domain: &x.domain,
                server_domain: &x.server_domain,
                secret: "<redacted>",
                ping_interval: d(x.ping_interval),
                read_timeout: d(x.read_timeout),
                connect_timeout: d(x.connect_timeout),
                reconnect_min: d(x.reconnect_min),
                reconnect_max: d(x.reconnect_max),
                queue_depth: x.queue_depth,
            },
            mapping: MappingView {
                dir: &self.mapping_dir,
            },
        }
    }
}

/// Loads `file` (which must exist) merged with the process environment.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
}

/// Loads `file` merged with the given environment provider (tests use their own).
pub fn load_from(file: &Path, env: Env) -> Result<Config, ConfigErrors> {
    let figment = Figment::new().merge(Toml::file_exact(file)).merge(env);
    let mut cx = Context::new(figment.clone(), file);
    if !file.is_file() {
        cx.file_error("configuration file not found");
        return Err(cx
            .finish()
            .err()
            .unwrap_or_else(|| ConfigErrors(Vec::new())));
    }
    let dict: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(errors) => {
            for e in errors {
                cx.file_error(e.kind.to_string());
            }
            return Err(cx
                .finish()
                .err()
                .unwrap_or_else(|| ConfigErrors(Vec::new())));
        }
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = build(&mut cx, dict, &base);
    cx.finish().map(|()| config)
}

fn build(cx: &mut Context, dict: Dict, base: &Path) -> Config {
    let mut root = Section::root(dict);
    let log = match root.section(cx, "log") {
        Some(section) => sections::log(cx, section),
        None => LogConfig::default(),
    };
    let mut broker = match root.section(cx, "broker") {
        Some(section) => sections::broker(cx, section, base),
        None => BrokerConfig::default(),
    };
    broker.persistence = root
        .section(cx, "persistence")
        .and_then(|s| persistence::persistence(cx, s, base));
    let mqtt = match root.section(cx, "mqtt") {
        Some(section) => mqtt::mqtt(cx, section, base),
        None => MqttMode::Embedded,
    };
    let xmpp = root
        .section(cx, "xmpp")
        .map(|s| sections::xmpp(cx, s, base));
    let mapping_dir = root
        .section(cx, "mapping")
        .map(|s| sections::mapping_dir(cx, s, base));
    let audit = root
        .section(cx, "audit")
        .and_then(|s| sections::audit(cx, s, base));
    let admin = match root.section(cx, "admin") {
        Some(section) => sections::admin(cx, section),
        None => Some(AdminConfig::default()),
    };
    let presence = root
        .section(cx, "presence")
        .and_then(|s| sections::presence(cx, s, base));
    root.finish(
        cx,
        &[
            "log",
            "broker",
            "persistence",
            "mqtt",
            "xmpp",
            "mapping",
            "audit",
            "admin",
            "presence",
        ],
    );
    if presence.is_some() && xmpp.is_none() {
        cx.error("presence", "a [presence] section needs an [xmpp] section");
    }
    let bridge = match (xmpp, mapping_dir) {
        (Some(xmpp), dir) => {
            let dir = dir.unwrap_or_else(|| resolve(base, PathBuf::from(DEFAULT_MAPPING_DIR)));
            match MappingTable::load_dir(&dir, &xmpp.domain) {
                Ok(table) if matches!(mqtt, MqttMode::Upstream(_)) => {
                    mqtt::check_rules(cx, &table);
                    Some(BridgeSettings {
                        xmpp,
                        mapping_dir: dir.canonicalize().unwrap_or(dir),
                        mapping: Arc::new(table),
                    })
                }
                Ok(table) => Some(BridgeSettings {
                    xmpp,
                    mapping_dir: dir.canonicalize().unwrap_or(dir),
                    mapping: Arc::new(table),
                }),
                Err(errors) => {
                    for e in errors {
                        cx.external_error(e.to_string());
                    }
                    None
                }
            }
        }
        (None, Some(_)) => {
            cx.error("mapping", "a [mapping] section needs an [xmpp] section");
            None
        }
        (None, None) => None,
    };
    if matches!(mqtt, MqttMode::Upstream(_)) && bridge.is_none() && !cx.has_errors() {
        cx.error(
            "mqtt.mode",
            "\"upstream\" needs an [xmpp] section: without the bridge there is nothing to run",
        );
    }
    if let (Some(audit), Some(bridge)) = (&audit, &bridge) {
        for rule in audit.rules.keys() {
            if !bridge.mapping.rules().iter().any(|r| r.name == *rule) {
                cx.error(
                    &format!("audit.rules.{rule}"),
                    format!("no mapping rule is named `{rule}`"),
                );
            }
        }
    }
    Config {
        log,
        broker,
        mqtt,
        bridge,
        audit,
        admin,
        presence,
    }
}

impl Config {
    /// The effective configuration as TOML, secrets redacted, with the compiled mapping
    /// table as a comment.
    pub fn to_toml(&self) -> String {
        let mut out =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        out.push('\n');
        out.push_str(&persistence::describe(self.broker.persistence.as_ref()));
        out.push('\n');
        out.push_str(&self.mqtt.describe());
        if let Some(bridge) = &self.bridge {
            out.push('\n');
            out.push_str(
                &toml::to_string_pretty(&bridge.view())
                    .unwrap_or_else(|e| format!("# cannot render: {e}\n")),
            );
            out.push_str("\n# Mapping rules (");
            out.push_str(&bridge.mapping_dir.display().to_string());
            out.push_str("):\n");
            for line in bridge.mapping.describe().lines() {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Resolves a path from the config file relative to the file's folder.
fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}
