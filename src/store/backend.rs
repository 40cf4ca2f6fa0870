//! The store file under redb: redb's own file backend (which also locks the file against a
//! second process), except that growing the file writes its zeros instead of leaving a hole.
//!
//! Why: redb grows its file with `set_len`, which on ext4 (and most file systems) leaves
//! unallocated blocks. The first write into such a block allocates it, and the next
//! `fdatasync` must then commit the file system's journal as well as the data: measured here,
//! a 4-64 KiB `dd oflag=dsync` costs several times more appending than overwriting. With the
//! store growing all the time (messages queued for an offline session), nearly every commit
//! paid that. Writing the zeros once when the file grows makes every later commit an
//! overwrite of blocks that already exist, so its `fdatasync` writes only data. The zeros are
//! exactly what `set_len` promises (the trait asks for zero-initialized growth), so nothing
//! redb reads changes.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Zeros written per call while growing.
const CHUNK: usize = 1 << 20;

/// Time spent in `fdatasync`, for the commit thread's breakdown of a commit.
#[derive(Debug, Default)]
pub(crate) struct SyncTime {
    nanos: AtomicU64,
}

impl SyncTime {
    /// Total time in `fdatasync` so far.
    pub(crate) fn total(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// [`FileBackend`] with growth written out (see the module notes).
#[derive(Debug)]
pub(crate) struct FilledBackend {
    inner: FileBackend,
    synced: Arc<SyncTime>,
}

impl FilledBackend {
    /// Locks and wraps `file`; the time of every `fdatasync` adds to `synced`.
    pub(crate) fn new(
        file: File,
        synced: Arc<SyncTime>,
    ) -> Result<FilledBackend, redb::DatabaseError> {
        Ok(FilledBackend {
            inner: FileBackend::new(file)?,
            synced,
        })
    }
}

impl StorageBackend for FilledBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut at = self.inner.len()?;
        if len <= at {
            return self.inner.set_len(len);
        }
        let zeros = vec![0u8; CHUNK];
        while at < len {
            let n = usize::try_from(len - at).map_or(CHUNK, |left| left.min(CHUNK));
            self.inner.write(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        let start = Instant::now();
        let result = self.inner.sync_data(eventual);
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.synced.nanos.fetch_add(took, Ordering::Relaxed);
        result
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_zeros_written_and_shrinking_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let synced = Arc::new(SyncTime::default());
        let b = FilledBackend::new(file, synced.clone()).unwrap();
        b.write(0, b"abc").unwrap();
        b.sync_data(false).unwrap();
        assert!(synced.total() > std::time::Duration::ZERO);
        let grown = 3 * CHUNK as u64 + 17;
        b.set_len(grown).unwrap();
        assert_eq!(b.len().unwrap(), grown);
        assert_eq!(b.read(0, 3).unwrap(), b"abc");
        assert!(b.read(3, CHUNK * 3 + 14).unwrap().iter().all(|&x| x == 0));
        // The blocks exist: not a sparse file.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 >= grown, "{} blocks", meta.blocks());
        b.set_len(2).unwrap();
        assert_eq!(b.len().unwrap(), 2);
        assert_eq!(b.read(0, 2).unwrap(), b"ab");
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let synced = Arc::new(SyncTime::default());
        let _first = FilledBackend::new(open(), synced.clone()).unwrap();
        assert!(matches!(
            FilledBackend::new(open(), synced),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
    }
}
