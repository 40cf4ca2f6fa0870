//! The audit trail: one tamper-evident JSON line per message the bridge carries or refuses.
//!
//! - [`record`]: the line format and its hash chain (schema in the README).
//! - [`writer`]: the task behind a bounded queue; rotation by size and time, checkpoints,
//!   retention and legal hold.
//! - [`verify`]: `audit verify`, which finds changed, inserted, deleted and reordered lines
//!   and missing or truncated files.
//! - [`query`]: `audit query` and `audit tail`.

pub mod query;
pub mod record;
pub mod verify;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

pub use self::record::PayloadPolicy;
pub use self::writer::spawn;
use crate::bridge::events::WhenFull;

/// Default queue depth between the bridge and the writer.
pub const DEFAULT_QUEUE_DEPTH: usize = 10_000;
/// Default size at which a file is closed and the next one opened.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Default age at which a file is closed and the next one opened.
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// A file in the audit folder whose presence suspends retention (like `legal_hold = true`).
pub const LEGAL_HOLD_FILE: &str = "LEGAL_HOLD";

/// `[audit]`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// Folder of the trail.
    pub dir: PathBuf,
    /// Payload policy for rules not in `rules`.
    pub payload: PayloadPolicy,
    /// Payload policy per mapping rule name.
    pub rules: BTreeMap<String, PayloadPolicy>,
    /// Events waiting for the writer at most.
    pub queue_depth: usize,
    /// What the bridge does when the queue is full.
    pub when_full: WhenFull,
    /// A file reaching this size is closed with a checkpoint.
    pub max_file_bytes: u64,
    /// A file this old is closed with a checkpoint.
    #[serde(with = "humantime_serde")]
    pub rotate_interval: Duration,
    /// Closed files older than this many days are deleted; 0 keeps everything.
    pub retention_days: u32,
    /// Suspends retention.
    pub legal_hold: bool,
    /// fsync after each batch (slower; survives power loss, not only a crash).
    pub sync: bool,
}

impl AuditConfig {
    /// Defaults with the trail in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        AuditConfig {
            dir,
            payload: PayloadPolicy::HashOnly,
            rules: BTreeMap::new(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            when_full: WhenFull::Block,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            rotate_interval: DEFAULT_ROTATE_INTERVAL,
            retention_days: 0,
            legal_hold: false,
            sync: false,
        }
    }

    /// The policy for records of `rule`.
    pub fn policy(&self, rule: Option<&str>) -> PayloadPolicy {
        rule.and_then(|r| self.rules.get(r).copied())
            .unwrap_or(self.payload)
    }
}

/// Counters and state of the writer, for metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records written.
    pub records_written: AtomicU64,
    /// Failed writes (each retried).
    pub write_errors: AtomicU64,
    /// Files deleted by retention.
    pub files_deleted: AtomicU64,
    /// Files closed with a checkpoint.
    pub files_closed: AtomicU64,
    /// Microseconds between the bridge taking the last written message and its record being
    /// written.
    pub lag_micros: AtomicU64,
    /// False while the trail cannot be written.
    pub writable: AtomicBool,
}

impl AuditStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Whether the last write (or probe) succeeded.
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }
}

/// The file name of file number `n`.
pub fn file_name(n: u64) -> String {
    format!("audit-{n:08}.jsonl")
}

/// The number in a trail file's name.
pub fn file_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The trail's files in `dir`, by number.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(n) = file_number(&path) {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(12), "audit-00000012.jsonl");
        assert_eq!(file_number(Path::new("/x/audit-00000012.jsonl")), Some(12));
        assert_eq!(file_number(Path::new("/x/audit-x.jsonl")), None);
        assert_eq!(file_number(Path::new("/x/other.jsonl")), None);
    }

    #[test]
    fn rule_policy_overrides_the_global_one() {
        let mut cfg = AuditConfig::new(PathBuf::from("a"));
        cfg.rules.insert("chat".into(), PayloadPolicy::Full);
        assert_eq!(cfg.policy(Some("chat")), PayloadPolicy::Full);
        assert_eq!(cfg.policy(Some("news")), PayloadPolicy::HashOnly);
        assert_eq!(cfg.policy(None), PayloadPolicy::HashOnly);
    }
}
