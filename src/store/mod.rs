//! The embedded store: what must survive a crash (persistent sessions with their delayed
//! wills, their queued and in-flight messages, incoming QoS 2 ids, retained messages, the
//! receipts the bridge owes in both directions), in one [redb](https://docs.rs/redb) file,
//! `{dir}/state.redb`. The bridge's outbound queue toward XMPP is its own persistent broker
//! session, so it lives in the sessions and messages tables.
//!
//! - `record`: the versioned records.
//! - `journal`: changes gathered by the router and the commit thread that writes them, one
//!   transaction (one fsync) per batch, acknowledgements released after the commit.
//! - `recover`: reading everything back on start.
//!
//! Every table maps bytes to bytes; the generic API ([`Store::put`], [`Store::get`],
//! [`Store::delete`], [`Store::iter`]) works on any table name not in [`RESERVED`].

mod backend;
pub mod config;
pub mod journal;
pub mod record;
pub mod recover;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};

pub use self::config::{DurabilityPolicy, PersistenceConfig};
pub use self::journal::{Journal, Op};

/// Persistent sessions, by client id.
pub const SESSIONS: &str = "sessions";
/// Messages for persistent sessions, by global sequence number (big-endian u64).
pub const MESSAGES: &str = "messages";
/// Incoming QoS 2 packet ids received and not released: `client id, 0, pkid (BE u16)`.
pub const QOS2_IN: &str = "qos2_in";
/// Retained messages, by topic.
pub const RETAINED: &str = "retained";
/// Tracked publishes of in-process clients with a copy in the store (the XEP-0184 receipts
/// the bridge owes toward XMPP), by token (big-endian u64).
pub const TRACKED: &str = "tracked";
/// Where XMPP receipts go back to MQTT publishers (Response Topic, Correlation Data), by
/// sequence number (big-endian u64, from the same counter as [`MESSAGES`]).
pub const REPLIES: &str = "replies";
/// Tables the broker and the bridge own; the generic API refuses them. (Stores written
/// before this version may hold an empty `xmpp_out` table; nothing reads it.)
pub const RESERVED: &[&str] = &[SESSIONS, MESSAGES, QOS2_IN, RETAINED, TRACKED, REPLIES];

/// Key-value pairs of a table, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The file inside the persistence directory.
pub const FILE_NAME: &str = "state.redb";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot be created.
    #[error("cannot create the persistence directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file cannot be opened: damaged, truncated, not a store, or locked by another process.
    #[error(
        "cannot open the store {path}: {source}. The bridge refuses to start rather than \
         lose acknowledged messages; move the file aside to start empty"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// Reading or writing failed after opening.
    #[error("store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// A record in the store does not decode.
    #[error("store {path}: table `{table}`: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// What is wrong with it.
        source: record::RecordError,
    },
    /// The generic API was asked for a table the broker owns.
    #[error("table `{0}` is reserved for the broker and the bridge")]
    Reserved(String),
}

impl StoreError {
    /// True when the file itself is damaged (as opposed to unreadable for the moment).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Io { source, .. } => {
                use std::io::ErrorKind::{InvalidData, UnexpectedEof};
                matches!(**source, redb::Error::Corrupted(_))
                    || matches!(&**source, redb::Error::Io(e) if matches!(e.kind(), InvalidData | UnexpectedEof))
            }
            StoreError::Record { .. } => true,
            _ => false,
        }
    }
}

/// Opens or creates the file. redb 2 asserts (panics) on some damaged files, a truncated one
/// for instance; that becomes an error here, so the caller can name the file and stop cleanly.
#[expect(clippy::result_large_err, reason = "internal; boxed in StoreError")]
fn create(path: &Path, synced: &Arc<backend::SyncTime>) -> Result<Database, redb::Error> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Database, redb::DatabaseError> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            Database::builder()
                .create_with_backend(backend::FilledBackend::new(file, synced.clone())?)
        },
    ));
    match attempt {
        Ok(opened) => Ok(opened?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(redb::Error::Corrupted(format!(
                "damaged or truncated file (redb: {what})"
            )))
        }
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// Time in `fdatasync` so far.
    synced: Arc<backend::SyncTime>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `{dir}/state.redb`. A file left by a crash is repaired by redb
    /// here (it re-checks the last transaction); a damaged one is an [`StoreError::Open`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let synced = Arc::new(backend::SyncTime::default());
        #[expect(clippy::result_large_err, reason = "internal; boxed in StoreError")]
        let open = |path: &Path| -> Result<Database, redb::Error> {
            let db = create(path, &synced)?;
            // Create the reserved tables once, so that readers never meet a missing one.
            let tx = db.begin_write()?;
            for name in RESERVED {
                tx.open_table(table(name))?;
            }
            tx.commit()?;
            Ok(db)
        };
        let db = open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        Ok(Store { db, synced, path })
    }

    /// Total time spent in `fdatasync` since the store was opened.
    pub(crate) fn sync_time(&self) -> Duration {
        self.synced.total()
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: Box::new(source.into()),
        }
    }

    /// Applies `ops` in one transaction; with `durable`, on disk when this returns.
    pub fn apply(&self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        self.apply_timed(ops, durable).map(|_| ())
    }

    /// As [`Store::apply`], and how long the two halves took: changing the B-trees in memory,
    /// then `commit()` (writing the pages and, with `durable`, the fsync).
    pub(crate) fn apply_timed(
        &self,
        ops: &[Op],
        durable: bool,
    ) -> Result<(Duration, Duration), StoreError> {
        #[expect(clippy::result_large_err, reason = "internal; boxed in StoreError")]
        let run = || -> Result<(Duration, Duration), redb::Error> {
            let start = Instant::now();
            let mut tx = self.db.begin_write()?;
            tx.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            });
            journal::apply(&tx, ops)?;
            let applied = Instant::now();
            tx.commit()?;
            Ok((applied - start, applied.elapsed()))
        };
        run().map_err(|e| self.io(e))
    }

    fn check_table(name: &str) -> Result<(), StoreError> {
        if RESERVED.contains(&name) {
            return Err(StoreError::Reserved(name.to_string()));
        }
        Ok(())
    }

    /// Generic API: stores `value` under `key` in table `name`, durably.
    pub fn put(&self, name: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        Self::check_table(name)?;
        let op = Op::Put {
            table: name.to_string().into(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.apply(&[op], true)
    }

    /// Generic API: removes `key` from table `name`, durably.
    pub fn delete(&self, name: &str, key: &[u8]) -> Result<(), StoreError> {
        Self::check_table(name)?;
        let op = Op::Delete {
            table: name.to_string().into(),
            key: key.to_vec(),
        };
        self.apply(&[op], true)
    }

    /// Generic API: the value under `key` in table `name`.
    pub fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Self::check_table(name)?;
        #[expect(clippy::result_large_err, reason = "internal; boxed in StoreError")]
        let run = || -> Result<Option<Vec<u8>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = match tx.open_table(table(name)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        };
        run().map_err(|e| self.io(e))
    }

    /// Generic API: every entry of table `name`, in key order.
    pub fn iter(&self, name: &str) -> Result<Entries, StoreError> {
        Self::check_table(name)?;
        self.entries(name)
    }

    /// Every entry of a table, in key order (reserved tables included).
    pub(crate) fn entries(&self, name: &str) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        self.for_each(name, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for each entry of a table, in key order, without copying them all first.
    pub(crate) fn for_each(
        &self,
        name: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let t = match tx.open_table(table(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(self.io(e)),
        };
        for entry in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = entry.map_err(|e| self.io(e))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}

/// Key of a message or stanza: big-endian, so key order is sequence order.
pub fn seq_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// Key of an incoming QoS 2 id.
pub fn qos2_key(client_id: &str, pkid: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 3);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// The parts of a [`qos2_key`].
pub fn split_qos2_key(key: &[u8]) -> Option<(&str, u16)> {
    let (client, id) = key.split_at_checked(key.len().checked_sub(3)?)?;
    if id[0] != 0 {
        return None;
    }
    let pkid = u16::from_be_bytes([id[1], id[2]]);
    Some((std::str::from_utf8(client).ok()?, pkid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_tables_put_get_delete_iterate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put("presence", b"b", b"2").unwrap();
            store.put("presence", b"a", b"1").unwrap();
            store.put("presence", b"c", b"3").unwrap();
            store.delete("presence", b"c").unwrap();
            assert_eq!(store.get("presence", b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(store.get("presence", b"c").unwrap(), None);
            assert_eq!(store.get("never-written", b"a").unwrap(), None);
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.iter("presence").unwrap();
        assert_eq!(
            all,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert!(store.iter("nothing").unwrap().is_empty());
    }

    /// The file grows through `backend::FilledBackend`: no holes for a commit's fdatasync
    /// to allocate.
    #[test]
    fn the_store_file_grows_without_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops: Vec<Op> = (0u64..20_000)
            .map(|i| Op::Put {
                table: "t".into(),
                key: seq_key(i),
                value: vec![7; 200],
            })
            .collect();
        store.apply(&ops, true).unwrap();
        let meta = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap();
        assert!(meta.len() > 4 << 20, "grown: {} bytes", meta.len());
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "{} bytes in {} blocks",
            meta.len(),
            meta.blocks()
        );
        assert_eq!(store.iter("t").unwrap().len(), 20_000);
    }

    #[test]
    fn reserved_tables_are_refused_by_the_generic_api() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.put(MESSAGES, b"k", b"v").unwrap_err();
        assert!(
            matches!(err, StoreError::Reserved(ref t) if t == "messages"),
            "{err}"
        );
    }

    #[test]
    fn qos2_keys_split_back() {
        let k = qos2_key("client\u{e9}", 513);
        assert_eq!(split_qos2_key(&k), Some(("client\u{e9}", 513)));
        assert_eq!(split_qos2_key(b"x"), None);
    }

    #[test]
    fn a_truncated_file_is_a_precise_open_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put("t", b"k", &[7; 5000]).unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);
        let err = Store::open(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("move the file aside"), "{text}");
    }

    #[test]
    fn garbage_is_a_precise_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }
}
