//! The audit writer: a task that drains the bridge's bounded event queue into the trail.
//!
//! 1. At start it finds the last file of the trail. A file left without checkpoint (a crash)
//!    gets one now, marked `recovered`, so the chain goes on from it.
//! 2. Each batch of events becomes lines, chained and hashed, written with one `write` call
//!    (fsync'd when `sync` is set). The writer has its own thread (with a small
//!    single-threaded runtime for the queue and the timer), so file I/O never blocks the
//!    bridge's workers and costs no hand-off per batch.
//! 3. A file that reaches `max_file_bytes` or `rotate_interval` is closed with a checkpoint;
//!    the next one opens with the next record.
//! 4. A failed write is logged, counted and retried every second with the same events; the
//!    writer takes nothing new meanwhile, so the queue fills and the bridge's `when_full`
//!    policy applies. Nothing is dropped. The file that failed is left as it is (without
//!    checkpoint: `audit verify` will show where the disk failed) and a new one is opened.
//! 5. The writer ends when the bridge drops its sender (after the bridge stopped), closing
//!    the file with a checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::record::{GENESIS, Line, check_hash, write_record};
use super::{AuditConfig, AuditStats, LEGAL_HOLD_FILE, file_name, list_files};
use crate::bridge::events::Translation;

/// Events written per batch at most.
const BATCH: usize = 512;
/// Housekeeping period (rotation by time, probes, retries of the start-up scan).
const TICK: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Wait before retrying a failed write.
const RETRY: Duration = Duration::from_secs(1);

/// The file being written.
#[derive(Debug)]
struct OpenFile {
    number: u64,
    file: File,
    bytes: u64,
    opened: Instant,
    records: u64,
}

/// The writer's state; moved to the blocking pool for each piece of I/O.
#[derive(Debug)]
struct Writer {
    cfg: AuditConfig,
    stats: Arc<AuditStats>,
    /// False until the start-up scan succeeded (it is retried while the disk fails).
    ready: bool,
    file: Option<OpenFile>,
    next_file: u64,
    next_seq: u64,
    /// Hash of the last line written.
    prev: String,
    last_retention: Option<Instant>,
}

/// Starts the writer on `tracker`, reading `events` until every sender is dropped.
pub fn spawn(
    cfg: AuditConfig,
    events: mpsc::Receiver<Translation>,
    tracker: &TaskTracker,
) -> Arc<AuditStats> {
    let stats = Arc::new(AuditStats::default());
    let mut writer = Writer {
        cfg,
        stats: stats.clone(),
        ready: false,
        file: None,
        next_file: 1,
        next_seq: 1,
        prev: GENESIS.to_string(),
        last_retention: None,
    };
    // The first scan happens before anything is written, so `/readyz` is right at once.
    writer.housekeeping();
    // A plain thread, not the blocking pool: a runtime waits for its blocking tasks when it
    // shuts down, and a writer retrying a dead disk must not keep the process from exiting.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(run(writer, events)),
                Err(e) => error!(error = %e, "Cannot start the audit writer's runtime."),
            }
            drop(done_tx);
        });
    match started {
        // The tracker waits for the writer (shutdown flushes the trail).
        Ok(_) => {
            tracker.spawn(async move {
                // Err only means the thread ended, which is what is awaited.
                if done_rx.await.is_ok() {
                    debug!("Audit writer ended.");
                }
            });
        }
        Err(e) => {
            stats.writable.store(false, Ordering::Relaxed);
            error!(error = %e, "Cannot start the audit writer thread.");
        }
    }
    stats
}

async fn run(mut w: Writer, mut events: mpsc::Receiver<Translation>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Translation> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = events.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                while let Err(e) = w.write_batch(&batch) {
                    w.failed(&e);
                    tokio::time::sleep(RETRY).await;
                }
                batch.clear();
            }
            _ = tick.tick() => w.housekeeping(),
        }
    }
    match w.close() {
        Ok(()) => info!(
            records = AuditStats::get(&w.stats.records_written),
            "Audit trail closed."
        ),
        Err(e) => error!(error = %e, "Cannot close the audit file with a checkpoint."),
    }
}

impl Writer {
    fn failed(&mut self, e: &io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if self.stats.writable.swap(false, Ordering::Relaxed) {
            error!(dir = %self.cfg.dir.display(), error = %e,
                "Cannot write the audit trail; the bridge waits (or refuses) until it can.");
        } else {
            debug!(error = %e, "Audit write retry failed.");
        }
        // The open file, if any, stays open: a failed write was cut back to its last
        // complete line (see `append`), so the retry continues it.
    }

    fn succeeded(&mut self) {
        if !self.stats.writable.swap(true, Ordering::Relaxed) && self.ready {
            info!(dir = %self.cfg.dir.display(), "Audit trail writable.");
        }
    }

    fn write_batch(&mut self, batch: &[Translation]) -> io::Result<()> {
        if !self.ready {
            self.scan()?;
        }
        if let Some(open) = &self.file {
            if open.bytes >= self.cfg.max_file_bytes
                || open.opened.elapsed() >= self.cfg.rotate_interval
            {
                self.close()?;
            }
        }
        if self.file.is_none() {
            self.open_next()?;
        }
        let (mut text, mut seq, mut prev) = self.seal(batch);
        if let Err(e) = self.append(&text) {
            if e.kind() != io::ErrorKind::FileTooLarge {
                return Err(e);
            }
            // This file may grow no more (the process's file-size limit): close it with a
            // checkpoint and go on in the next. When even the checkpoint does not fit, the
            // file stays open and the next retry tries again. The checkpoint and the next
            // file's open line join the chain, so the batch is sealed again after them.
            self.close()?;
            self.open_next()?;
            (text, seq, prev) = self.seal(batch);
            self.append(&text)?;
        }
        let Some(open) = self.file.as_mut() else {
            return Err(io::Error::other("no audit file open"));
        };
        open.records += batch.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        self.stats
            .records_written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Some(last) = batch.last() {
            let lag = SystemTime::now()
                .duration_since(last.time)
                .unwrap_or_default();
            let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
            self.stats.lag_micros.store(micros, Ordering::Relaxed);
        }
        self.succeeded();
        Ok(())
    }

    /// The batch's lines, chained on from the last line written: the text, the next sequence
    /// number and the last line's hash.
    fn seal(&self, batch: &[Translation]) -> (String, u64, String) {
        let mut seq = self.next_seq;
        let mut prev = self.prev.clone();
        let mut text = String::with_capacity(batch.len() * 512);
        for event in batch {
            let policy = self.cfg.policy(event.rule.as_deref());
            prev = write_record(&mut text, event, policy, seq, &prev);
            seq += 1;
        }
        (text, seq, prev)
    }

    /// Appends `text` (whole lines) to the open file. A failed write is cut back to the
    /// file's last complete line, so a line is never left half written (which would end the
    /// file's chain) and the same text can be retried; only if that cut fails too is the file
    /// given up, and the next write starts a new one.
    fn append(&mut self, text: &str) -> io::Result<()> {
        let Some(open) = self.file.as_mut() else {
            return Err(io::Error::other("no audit file open"));
        };
        let written = open.file.write_all(text.as_bytes()).and_then(|()| {
            if self.cfg.sync {
                open.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Nothing written (e.g. the file turned read-only) needs no cut.
            let untouched = open.file.metadata().is_ok_and(|m| m.len() == open.bytes);
            if let Err(cut) = if untouched {
                Ok(())
            } else {
                open.file.set_len(open.bytes)
            } {
                error!(file = open.number, error = %cut,
                    "Cannot cut a failed audit write back; the file ends incomplete and a new one starts.");
                self.file = None;
            }
            return Err(e);
        }
        open.bytes += text.len() as u64;
        Ok(())
    }

    fn open_next(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        let number = self.next_file;
        let path = self.cfg.dir.join(file_name(number));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let (text, hash) = Line::marker("open", number, self.next_seq, None).seal(&self.prev);
        if let Err(e) = file.write_all(text.as_bytes()) {
            // Without its open line the file is not part of the trail: remove it, so that
            // the retry can create it again under the same number.
            drop(file);
            let _removed = std::fs::remove_file(&path);
            return Err(e);
        }
        self.next_file += 1;
        self.prev = hash;
        debug!(file = %path.display(), "Audit file opened.");
        self.file = Some(OpenFile {
            number,
            file,
            bytes: text.len() as u64,
            opened: Instant::now(),
            records: 0,
        });
        Ok(())
    }

    /// Closes the open file, if any, with a checkpoint.
    fn close(&mut self) -> io::Result<()> {
        let Some(mut open) = self.file.take() else {
            return Ok(());
        };
        let checkpoint = Line::marker(
            "checkpoint",
            open.number,
            self.next_seq - 1,
            Some(open.records),
        );
        let (text, hash) = checkpoint.seal(&self.prev);
        let written = open
            .file
            .write_all(text.as_bytes())
            .and_then(|()| open.file.sync_all());
        if let Err(e) = written {
            // Cut back to the last record and leave it open, so that the checkpoint is tried
            // again.
            let untouched = open.file.metadata().is_ok_and(|m| m.len() == open.bytes);
            if untouched || open.file.set_len(open.bytes).is_ok() {
                self.file = Some(open);
            }
            return Err(e);
        }
        self.prev = hash;
        self.stats.files_closed.fetch_add(1, Ordering::Relaxed);
        debug!(
            file = open.number,
            records = open.records,
            "Audit file closed."
        );
        Ok(())
    }

    /// Finds where the trail ends; closes a file a crash left open.
    fn scan(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        let files = list_files(&self.cfg.dir)?;
        let Some((number, path)) = files.last() else {
            self.ready = true;
            return Ok(());
        };
        let mut text = String::new();
        File::open(path)?.read_to_string(&mut text)?;
        let mut last_hash = None;
        let mut last_kind = String::new();
        let mut last_seq = 0;
        let mut first_seq = None;
        let mut records = 0;
        for raw in text.lines() {
            let Ok((hash, _)) = check_hash(raw) else {
                continue;
            };
            let Ok(line) = serde_json::from_str::<Line>(raw) else {
                continue;
            };
            match line.kind.as_str() {
                "record" => {
                    records += 1;
                    last_seq = line.seq;
                }
                "open" => first_seq = Some(line.seq),
                _ => last_seq = line.seq.max(last_seq),
            }
            last_kind = line.kind;
            last_hash = Some(hash);
        }
        if last_seq == 0 {
            last_seq = first_seq.map_or(0, |s| s.saturating_sub(1));
        }
        let Some(mut prev) = last_hash else {
            return Err(io::Error::other(format!(
                "{} holds no audit line; move it away to start a new trail",
                path.display()
            )));
        };
        if last_kind != "checkpoint" {
            let mut checkpoint = Line::marker("checkpoint", *number, last_seq, Some(records));
            checkpoint.recovered = true;
            let (line, hash) = checkpoint.seal(&prev);
            let mut file = OpenOptions::new().append(true).open(path)?;
            if !text.ends_with('\n') {
                file.write_all(b"\n")?;
            }
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
            warn!(file = %path.display(), "Audit file left open by a crash; checkpoint added.");
            prev = hash;
        }
        self.next_file = number + 1;
        self.next_seq = last_seq + 1;
        self.prev = prev;
        self.ready = true;
        info!(dir = %self.cfg.dir.display(), next_file = self.next_file,
            next_seq = self.next_seq, "Audit trail continues.");
        Ok(())
    }

    /// Once a second: start-up scan (until it works), rotation by time, writability probe,
    /// retention.
    fn housekeeping(&mut self) {
        if !self.ready {
            match self.scan() {
                Ok(()) => self.succeeded(),
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
        }
        let due = self
            .file
            .as_ref()
            .is_some_and(|f| f.opened.elapsed() >= self.cfg.rotate_interval);
        if due {
            if let Err(e) = self.close() {
                self.failed(&e);
            }
        }
        if self.file.is_none() {
            match probe(&self.cfg.dir) {
                Ok(()) => self.succeeded(),
                Err(e) => self.failed(&e),
            }
        }
        if self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            self.last_retention = Some(Instant::now());
            self.retention();
        }
    }

    fn retention(&mut self) {
        let days = self.cfg.retention_days;
        if days == 0 {
            return;
        }
        if self.cfg.legal_hold || self.cfg.dir.join(LEGAL_HOLD_FILE).exists() {
            debug!("Legal hold: audit retention suspended.");
            return;
        }
        let max_age = Duration::from_secs(u64::from(days) * 86_400);
        let open = self.file.as_ref().map(|f| f.number);
        let Ok(files) = list_files(&self.cfg.dir) else {
            return;
        };
        for (number, path) in files {
            if Some(number) == open || number >= self.next_file {
                continue;
            }
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if !old {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.files_deleted.fetch_add(1, Ordering::Relaxed);
                    info!(file = %path.display(), days, "Audit file past retention deleted.");
                }
                Err(e) => warn!(file = %path.display(), error = %e,
                    "Cannot delete an audit file past retention."),
            }
        }
    }
}

/// Whether a file can be created in `dir`.
fn probe(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".writable");
    File::create(&path)?.write_all(b"probe")?;
    std::fs::remove_file(&path)
}
