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

/// `[persistence]` as the operator writes it, for `check-config` (the store settings are not
/// part of the serialised broker section).
pub(super) fn describe(p: Option<&PersistenceConfig>) -> String {
    let Some(p) = p else {
        return "[persistence]\nenabled = false\n".to_string();
    };
    let mut out = format!(
        "[persistence]\nenabled = true\ndir = {:?}\n",
        p.dir.display().to_string()
    );
    match p.durability {
        DurabilityPolicy::Sync => out.push_str("durability = \"sync\"\n"),
        DurabilityPolicy::Group { group_commit } => out.push_str(&format!(
            "durability = \"group\"\ngroup_commit_ms = {}\n",
            group_commit.as_millis()
        )),
        DurabilityPolicy::Off => out.push_str("durability = \"off\"\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_keys_as_written() {
        assert_eq!(describe(None), "[persistence]\nenabled = false\n");
        let group = PersistenceConfig {
            dir: PathBuf::from("/var/lib/bridge"),
            durability: DurabilityPolicy::Group {
                group_commit: Duration::from_millis(7),
            },
        };
        assert_eq!(
            describe(Some(&group)),
            "[persistence]\nenabled = true\ndir = \"/var/lib/bridge\"\n\
             durability = \"group\"\ngroup_commit_ms = 7\n"
        );
    }
}
