//! Configuration: a TOML file plus `BRIDGE_<SECTION>__<KEY>` environment overrides, checked
//! completely before anything binds a port.
//!
//! Every problem is collected and reported at once, each with its file and line (or the
//! environment variable) and its dotted key. Unknown keys are errors.

mod sections;
mod source;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use serde::Serialize;

use crate::broker::BrokerConfig;
pub use source::{ConfigError, ConfigErrors};
use source::{Context, Section};

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "config/bridge.toml";
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
    let broker = match root.section(cx, "broker") {
        Some(section) => sections::broker(cx, section, base),
        None => BrokerConfig::default(),
    };
    root.finish(cx, &["log", "broker"]);
    Config { log, broker }
}

impl Config {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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
