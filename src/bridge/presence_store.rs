//! Who is subscribed to the presence of which bridged JID, kept across restarts.
//!
//! Behind [`SubscriberStore`], a narrow trait (load everything, save everything), so the
//! broker's persistence store can take the data over later. [`FileStore`] writes one small
//! JSON file atomically: a temporary file in the same folder, `fsync`, `rename` over the old
//! one, so a crash leaves the old or the new file, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the file format.
const FORMAT: u32 = 1;

/// Presence subscriptions: bridged bare JID → legacy bare JIDs that receive its presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribers(pub BTreeMap<String, BTreeSet<String>>);

impl Subscribers {
    /// Adds `contact` to `bridged`'s subscribers; true when it was not there.
    pub fn add(&mut self, bridged: &str, contact: &str) -> bool {
        self.0
            .entry(bridged.to_owned())
            .or_default()
            .insert(contact.to_owned())
    }

    /// Removes `contact`; true when it was there.
    pub fn remove(&mut self, bridged: &str, contact: &str) -> bool {
        let Some(set) = self.0.get_mut(bridged) else {
            return false;
        };
        let removed = set.remove(contact);
        if set.is_empty() {
            self.0.remove(bridged);
        }
        removed
    }

    /// Whether `contact` receives `bridged`'s presence.
    pub fn contains(&self, bridged: &str, contact: &str) -> bool {
        self.0.get(bridged).is_some_and(|s| s.contains(contact))
    }

    /// The subscribers of `bridged`.
    pub fn of(&self, bridged: &str) -> impl Iterator<Item = &str> {
        self.0
            .get(bridged)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every (bridged, contact) pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|(b, set)| set.iter().map(move |c| (b.as_str(), c.as_str())))
    }
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a subscriber file this version understands.
    #[error("{path}: not a presence subscriber file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Where presence subscriptions live between runs.
pub trait SubscriberStore: Send {
    /// Everything stored; empty when nothing was stored yet.
    fn load(&mut self) -> Result<Subscribers, StoreError>;
    /// Replaces what is stored with `subscribers`.
    fn save(&mut self, subscribers: &Subscribers) -> Result<(), StoreError>;
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContent {
    v: u32,
    subscribers: Subscribers,
}

/// A JSON file, replaced atomically on every save.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store in `path` (its folder is created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl SubscriberStore for FileStore {
    fn load(&mut self) -> Result<Subscribers, StoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Subscribers::default());
            }
            Err(e) => return Err(self.io(e)),
        };
        let content: FileContent =
            serde_json::from_slice(&text).map_err(|e| StoreError::Format {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        if content.v != FORMAT {
            return Err(StoreError::Format {
                path: self.path.clone(),
                why: format!("format version {} (this build reads {FORMAT})", content.v),
            });
        }
        Ok(content.subscribers)
    }

    fn save(&mut self, subscribers: &Subscribers) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let content = FileContent {
            v: FORMAT,
            subscribers: subscribers.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&content).map_err(|e| StoreError::Format {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        bytes.push(b'\n');
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "presence".into());
        let tmp = dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself is durable once the folder is synced.
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_back_replacing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path().join("state/presence.json"));
        assert_eq!(store.load().unwrap(), Subscribers::default());
        let mut subs = Subscribers::default();
        assert!(subs.add("bob@mqtt.example.org", "alice@example.org"));
        assert!(!subs.add("bob@mqtt.example.org", "alice@example.org"));
        subs.add("bob@mqtt.example.org", "carol@example.org");
        store.save(&subs).unwrap();
        assert_eq!(FileStore::new(store.path()).load().unwrap(), subs);
        assert!(subs.remove("bob@mqtt.example.org", "alice@example.org"));
        assert!(subs.remove("bob@mqtt.example.org", "carol@example.org"));
        assert!(subs.0.is_empty(), "an empty set is removed");
        store.save(&subs).unwrap();
        assert_eq!(store.load().unwrap(), Subscribers::default());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_damaged_or_foreign_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, b"{\"v\":1,\"subscribers\":").unwrap();
        let err = FileStore::new(&path).load().unwrap_err().to_string();
        assert!(
            err.contains("p.json") && err.contains("not a presence"),
            "{err}"
        );
        std::fs::write(&path, br#"{"v":7,"subscribers":{}}"#).unwrap();
        let err = FileStore::new(&path).load().unwrap_err().to_string();
        assert!(err.contains("format version 7"), "{err}");
    }

    #[test]
    fn pairs_and_membership() {
        let mut subs = Subscribers::default();
        subs.add("b@m", "x@l");
        subs.add("a@m", "y@l");
        let pairs: Vec<_> = subs.pairs().collect();
        assert_eq!(pairs, vec![("a@m", "y@l"), ("b@m", "x@l")]);
        assert!(subs.contains("a@m", "y@l") && !subs.contains("a@m", "x@l"));
        assert_eq!(subs.of("b@m").collect::<Vec<_>>(), vec!["x@l"]);
    }
}
