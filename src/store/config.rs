//! `[persistence]` settings, valid by construction (built by `crate::config`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Default group commit interval for [`DurabilityPolicy::Group`].
pub const DEFAULT_GROUP_COMMIT: Duration = Duration::from_millis(5);
/// How often [`DurabilityPolicy::Off`] forces what it wrote to disk.
pub const OFF_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// When an acknowledgement may leave: the promise made to publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "durability")]
pub enum DurabilityPolicy {
    /// PUBACK / PUBREC / PUBCOMP only once what they acknowledge is on disk. The commit
    /// thread commits as soon as it has anything: what arrives during one fsync shares the
    /// next.
    Sync,
    /// As `Sync`, but the commit thread waits this long after a batch starts to gather more
    /// into one fsync (fewer fsyncs, more latency per acknowledgement).
    Group {
        /// The gathering window.
        #[serde(with = "humantime_serde")]
        group_commit: Duration,
    },
    /// Acknowledgements leave at once; state is written without fsync and forced to disk
    /// every second. A crash loses up to about a second of acknowledged messages.
    Off,
}

impl DurabilityPolicy {
    /// Whether acknowledgements wait for the commit.
    pub fn waits(self) -> bool {
        !matches!(self, DurabilityPolicy::Off)
    }
}

/// `[persistence]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersistenceConfig {
    /// Folder of the store file.
    pub dir: PathBuf,
    /// The acknowledgement promise.
    #[serde(flatten)]
    pub durability: DurabilityPolicy,
}
