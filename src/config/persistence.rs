//! `[persistence]`: the embedded store and the acknowledgement promise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::resolve;
use super::sections::in_range;
use super::source::{Context, Section};
use crate::store::config::DEFAULT_GROUP_COMMIT;
use crate::store::{DurabilityPolicy, PersistenceConfig};

/// Default store folder, relative to the config file.
pub(super) const DEFAULT_DIR: &str = "data";

/// `[persistence]`; `None` when `enabled = false`.
pub(super) fn persistence(
    cx: &mut Context,
    mut s: Section,
    base: &Path,
) -> Option<PersistenceConfig> {
    let enabled = s.take::<bool>(cx, "enabled").unwrap_or(true);
    let dir = s
        .take::<PathBuf>(cx, "dir")
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let kind = s.take_with(cx, "durability", "sync".to_string(), |d: String| {
        match d.as_str() {
            "sync" | "group" | "off" => Ok(d),
            other => Err(format!(
                "`{other}` is not a durability policy; use \"sync\", \"group\" or \"off\""
            )),
        }
    });
    let group_ms: Option<u64> = s.take_with(cx, "group_commit_ms", None, |ms: u64| {
        in_range(1, 1000)(ms).map(Some)
    });
    if group_ms.is_some() && kind != "group" {
        cx.error(
            "persistence.group_commit_ms",
            "only used with durability = \"group\"",
        );
    }
    s.finish(cx, &["enabled", "dir", "durability", "group_commit_ms"]);
    let durability = match kind.as_str() {
        "group" => DurabilityPolicy::Group {
            group_commit: group_ms.map_or(DEFAULT_GROUP_COMMIT, Duration::from_millis),
        },
        "off" => DurabilityPolicy::Off,
        _ => DurabilityPolicy::Sync,
    };
    enabled.then(|| PersistenceConfig {
        dir: resolve(base, dir),
        durability,
    })
}
