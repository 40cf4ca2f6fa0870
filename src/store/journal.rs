//! Changes on their way to disk, and the acknowledgements that wait for them.
//!
//! 1. The router (and the sessions it owns) record [`Op`]s and hold acknowledgements in the
//!    [`Journal`] while it handles a batch of messages; nothing touches the disk there.
//! 2. After the batch the router calls [`Journal::flush`]: ops and held acknowledgements go,
//!    together, to the commit thread.
//! 3. The commit thread takes every batch waiting (and, under `group`, waits the group window
//!    for more), writes them in one transaction, fsyncs once, and only then hands the held
//!    acknowledgements to their connections. Many sessions' writes share one fsync: that is
//!    the group commit.
//! 4. A batch without ops (traffic with no persistent subscriber) releases its
//!    acknowledgements without a commit, still in order behind earlier batches.
//!
//! Under `off` acknowledgements are not held; ops are written without fsync and forced to
//! disk every second.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{TableDefinition, WriteTransaction};
use tracing::{debug, error, warn};

use super::config::{DurabilityPolicy, OFF_FLUSH_INTERVAL};
use super::{Store, StoreError};
use crate::broker::codec::Packet;
use crate::broker::link::ClientLink;

/// One change to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put {
        /// Table name.
        table: Cow<'static, str>,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove (a missing key is fine).
    Delete {
        /// Table name.
        table: Cow<'static, str>,
        /// Key.
        key: Vec<u8>,
    },
}

impl Op {
    fn table(&self) -> &str {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } => table,
        }
    }
}

/// Applies `ops` in order inside `tx`.
#[expect(clippy::result_large_err, reason = "internal; boxed in StoreError")]
pub(crate) fn apply(tx: &WriteTransaction, ops: &[Op]) -> Result<(), redb::Error> {
    let mut tables = HashMap::new();
    for op in ops {
        let name = op.table();
        if !tables.contains_key(name) {
            let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(name);
            tables.insert(name, tx.open_table(def)?);
        }
        let Some(t) = tables.get_mut(name) else {
            continue;
        };
        match op {
            Op::Put { key, value, .. } => {
                t.insert(key.as_slice(), value.as_slice())?;
            }
            Op::Delete { key, .. } => {
                t.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
}

/// What one flush hands to the commit thread.
#[derive(Debug, Default)]
struct Batch {
    ops: Vec<Op>,
    acks: Vec<(ClientLink, Packet)>,
    /// Told once everything before it is committed (shutdown).
    barrier: Option<mpsc::SyncSender<()>>,
}

/// Changes being gathered, shared by the router and its persistent sessions.
#[derive(Debug)]
pub struct Journal {
    pending: Mutex<Batch>,
    next_seq: AtomicU64,
    policy: DurabilityPolicy,
    to_commit: Mutex<Option<Sender<Batch>>>,
    /// Batches handed to the commit thread and not finished: while 0, a batch without ops
    /// releases its acknowledgements at once, without the trip through the commit thread.
    in_commit: Arc<AtomicUsize>,
}

impl Journal {
    /// Starts the commit thread for `store`; message sequence numbers continue at `next_seq`.
    pub fn start(
        store: Arc<Store>,
        policy: DurabilityPolicy,
        next_seq: u64,
    ) -> Result<Arc<Journal>, StoreError> {
        let (tx, rx) = mpsc::channel();
        let path = store.path().to_path_buf();
        let in_commit = Arc::new(AtomicUsize::new(0));
        let done = in_commit.clone();
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || commit_loop(&store, policy, &rx, &done))
            .map_err(|source| StoreError::Dir { path, source })?;
        Ok(Arc::new(Journal {
            pending: Mutex::new(Batch::default()),
            next_seq: AtomicU64::new(next_seq.max(1)),
            policy,
            to_commit: Mutex::new(Some(tx)),
            in_commit,
        }))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Batch> {
        // Pushing to a Vec cannot leave it inconsistent if a holder panicked.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new message sequence number (keys of the messages table).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether acknowledgements wait for the commit.
    pub fn waits(&self) -> bool {
        self.policy.waits()
    }

    /// Records a put.
    pub fn put(&self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.pending().ops.push(Op::Put {
            table: Cow::Borrowed(table),
            key,
            value,
        });
    }

    /// Records a delete.
    pub fn delete(&self, table: &'static str, key: Vec<u8>) {
        self.pending().ops.push(Op::Delete {
            table: Cow::Borrowed(table),
            key,
        });
    }

    /// Sends `packet` (an acknowledgement) once what was recorded before it is on disk; at
    /// once under `off`.
    pub fn ack(&self, link: &ClientLink, packet: Packet) {
        if self.policy.waits() {
            self.pending().acks.push((link.clone(), packet));
        } else {
            link.send(packet);
        }
    }

    /// Hands what was gathered to the commit thread.
    pub fn flush(&self) {
        let batch = {
            let mut p = self.pending();
            if p.ops.is_empty() && p.acks.is_empty() {
                return;
            }
            std::mem::take(&mut *p)
        };
        if batch.ops.is_empty() && self.in_commit.load(Ordering::Acquire) == 0 {
            // Nothing to write and nothing ahead of these acknowledgements.
            for (link, packet) in batch.acks {
                link.send(packet);
            }
            return;
        }
        self.in_commit.fetch_add(1, Ordering::AcqRel);
        self.send(batch);
    }

    fn send(&self, batch: Batch) {
        let to = self
            .to_commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = to.as_ref() {
            if tx.send(batch).is_err() {
                error!("Store commit thread gone; changes not written.");
            }
        }
    }

    /// Flushes and waits (at most `limit`) until everything is on disk; then the commit thread
    /// ends. For shutdown.
    pub fn close(&self, limit: Duration) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let mut batch = std::mem::take(&mut *self.pending());
        batch.barrier = Some(done_tx);
        self.in_commit.fetch_add(1, Ordering::AcqRel);
        self.send(batch);
        if done_rx.recv_timeout(limit).is_err() {
            warn!(?limit, "Store did not finish writing before shutdown.");
        }
        self.to_commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

fn commit_loop(
    store: &Store,
    policy: DurabilityPolicy,
    rx: &Receiver<Batch>,
    in_commit: &AtomicUsize,
) {
    let durable = policy.waits();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut last_commit = Instant::now();
    let mut stats = CommitStats::default();
    loop {
        stats.report();
        let idle = Instant::now();
        let received = rx.recv_timeout(OFF_FLUSH_INTERVAL);
        stats.idle += idle.elapsed();
        let first = match received {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => {
                if unsynced {
                    sync(store);
                    unsynced = false;
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let DurabilityPolicy::Group { group_commit } = policy {
            // At most one commit per window: what arrives meanwhile joins this one.
            let due = last_commit + group_commit;
            let now = Instant::now();
            if !first.ops.is_empty() && due > now {
                std::thread::sleep(due - now);
            }
        }
        let mut ops = first.ops;
        let mut acks = first.acks;
        let mut barriers: Vec<_> = first.barrier.into_iter().collect();
        let mut batches = 1;
        while let Ok(more) = rx.try_recv() {
            ops.extend(more.ops);
            acks.extend(more.acks);
            barriers.extend(more.barrier);
            batches += 1;
        }
        if !ops.is_empty() {
            last_commit = Instant::now();
        }
        let written = ops.is_empty() || {
            match store.apply_timed(&ops, durable) {
                Ok((apply, commit)) => {
                    stats.add(ops.len(), acks.len(), apply, commit, store.sync_time());
                    true
                }
                Err(error) => {
                    // Not on disk: the acknowledgements stay unsent, so publishers send again
                    // after reconnecting instead of believing a lost message safe.
                    error!(%error, ops = ops.len(), held_acks = acks.len(),
                        "Store commit failed; acknowledgements withheld.");
                    false
                }
            }
        };
        unsynced |= !durable && !ops.is_empty();
        if written {
            for (link, packet) in acks {
                link.send(packet);
            }
        }
        if !durable && (!barriers.is_empty() || last_sync.elapsed() >= OFF_FLUSH_INTERVAL) {
            sync(store);
            unsynced = false;
            last_sync = Instant::now();
        }
        in_commit.fetch_sub(batches, Ordering::AcqRel);
        for b in barriers {
            let _waiter_gone = b.send(());
        }
    }
    if unsynced {
        sync(store);
    }
}

/// Where the commit thread's time goes, logged at debug level every [`STATS_EVERY`].
#[derive(Debug, Default)]
struct CommitStats {
    since: Option<Instant>,
    commits: u64,
    ops: u64,
    acks: u64,
    /// Changing the B-trees (`insert`, `remove`).
    apply: Duration,
    /// `commit()`: writing the pages and the fsync.
    commit: Duration,
    /// Of which in `fdatasync` (the store's running total when the period started, and now).
    synced_from: Option<Duration>,
    synced_to: Duration,
    /// Waiting for work.
    idle: Duration,
}

/// How often [`CommitStats`] are logged.
const STATS_EVERY: Duration = Duration::from_secs(2);

impl CommitStats {
    fn add(
        &mut self,
        ops: usize,
        acks: usize,
        apply: Duration,
        commit: Duration,
        synced: Duration,
    ) {
        self.synced_from.get_or_insert(self.synced_to);
        self.synced_to = synced;
        self.commits += 1;
        self.ops += ops as u64;
        self.acks += acks as u64;
        self.apply += apply;
        self.commit += commit;
    }

    fn report(&mut self) {
        let since = *self.since.get_or_insert_with(Instant::now);
        let elapsed = since.elapsed();
        if elapsed < STATS_EVERY {
            return;
        }
        if self.commits > 0 {
            let n = self.commits;
            let per = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX) / n;
            debug!(
                commits = n,
                ops_per_commit = self.ops / n,
                acks_per_commit = self.acks / n,
                apply_us = per(self.apply),
                commit_us = per(self.commit),
                fdatasync_us = per(self
                    .synced_to
                    .saturating_sub(self.synced_from.unwrap_or_default())),
                idle_ms = self.idle.as_millis(),
                elapsed_ms = elapsed.as_millis(),
                "Store commit times (means per commit)."
            );
        }
        *self = CommitStats {
            since: Some(Instant::now()),
            synced_to: self.synced_to,
            ..CommitStats::default()
        };
    }
}

/// Forces earlier non-durable commits to disk.
fn sync(store: &Store) {
    if let Err(error) = store.apply(&[], true) {
        error!(%error, "Store sync failed.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::PubResponse;
    use crate::broker::link::ToClient;

    #[test]
    fn acks_leave_only_after_their_ops_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let journal = Journal::start(store.clone(), DurabilityPolicy::Sync, 1).unwrap();
        let (link, mut rx) = ClientLink::new();
        journal.put("t", b"k".to_vec(), b"v".to_vec());
        journal.ack(&link, Packet::PubAck(PubResponse::new(5)));
        assert!(rx.is_empty(), "held until flushed and committed");
        journal.flush();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut got = Vec::new();
        rt.block_on(rx.recv_many(&mut got, 10));
        assert!(matches!(*got[0], ToClient::Packet(Packet::PubAck(ref a)) if a.pkid == 5));
        // The ack was sent after the commit: the value is readable now.
        assert_eq!(store.get("t", b"k").unwrap(), Some(b"v".to_vec()));
        journal.close(Duration::from_secs(5));
    }

    #[test]
    fn off_sends_acks_at_once_and_close_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let journal = Journal::start(store.clone(), DurabilityPolicy::Off, 1).unwrap();
        let (link, rx) = ClientLink::new();
        journal.put("t", b"a".to_vec(), b"1".to_vec());
        journal.ack(&link, Packet::PubAck(PubResponse::new(1)));
        assert!(!rx.is_empty(), "not held under off");
        journal.close(Duration::from_secs(5));
        assert_eq!(store.get("t", b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn group_commit_batches_many_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let policy = DurabilityPolicy::Group {
            group_commit: Duration::from_millis(20),
        };
        let journal = Journal::start(store.clone(), policy, 1).unwrap();
        for i in 0u32..100 {
            journal.put("t", i.to_be_bytes().to_vec(), vec![1]);
            journal.flush();
        }
        journal.delete("t", 0u32.to_be_bytes().to_vec());
        journal.close(Duration::from_secs(5));
        assert_eq!(store.iter("t").unwrap().len(), 99);
        assert_eq!(journal.next_seq(), 1);
        assert_eq!(journal.next_seq(), 2);
    }
}
