//! The journal: every accepted message, on disk before its 200 goes out.
//!
//! The request path appends a record (`append`) and, with `journal.sync =
//! "always"`, waits until it is fsynced (`durable`). Each sink reads the
//! journal at its own pace from its own position (`reader`), so a slow or
//! broken sink never holds up the request path or another sink, and a crash
//! loses nothing that was answered 200: on restart every sink resumes from
//! its saved position.
//!
//! Readers that keep up are served from an in-memory tail of the latest
//! records (`recent`), as the request path parsed them: no read and no second
//! parse per sink. Readers that are behind, or that start after a restart,
//! read the files.
//!
//! On disk, under `journal.dir`: segment files named after their first
//! sequence number (`segment`), one cursor file per sink (`cursor`), and a
//! `LOCK` file held while a receiver uses the directory. A segment is deleted
//! once every sink has saved a position past it.

mod append;
pub mod cursor;
pub mod inspect;
mod reader;
pub mod record;
pub mod segment;

pub use append::WriterTurn;
pub use reader::{JournalReader, MAX_BATCH_BYTES, ReadBatch};
pub use record::{NewRecord, OperationId, Record};

use crate::settings::{JournalSettings, SyncMode, WhenFull};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "journal directory {dir} is in use by another receiver (its LOCK file is held); \
             give each receiver its own journal.dir"
    )]
    Locked { dir: PathBuf },
    #[error("journal directory {dir}: {error}")]
    Io { dir: PathBuf, error: io::Error },
}

/// Why a record was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `journal.when_full = "refuse"` and the sinks have not freed space.
    #[error("journal full ({max_bytes} bytes): a sink is behind")]
    Full { max_bytes: u64 },
    #[error("journal write failed: {0}")]
    Io(#[from] io::Error),
    /// An fdatasync failed: the kernel may have dropped written pages, so
    /// nothing more is appended to this journal until the receiver restarts.
    #[error("{0}")]
    SyncFailed(String),
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// When it stopped being the live segment (its file's last change, for
    /// one found at start); None while it is live. `journal.retain` counts from it.
    closed_at: Option<std::time::SystemTime>,
}

/// What the writer's lock guards.
struct Writer {
    /// Oldest first; the last one is the live segment, appended to.
    segments: VecDeque<Segment>,
    live: Arc<File>,
    /// Segments closed since the last fdatasync, and so is their directory
    /// entry's: the sync thread syncs them next, off the request path.
    closed_unsynced: Vec<Arc<File>>,
    /// Segments dropped by a roll ("skip"), for the sync thread to delete:
    /// no unlink on the request path.
    to_delete: Vec<PathBuf>,
    next_seq: u64,
    total_bytes: u64,
    /// The next segment's file, made ahead by the sync thread (its name
    /// already durable), so that a roll on the request path swaps files
    /// instead of creating one: no metadata work waits on a slow disk there.
    spare: Option<Spare>,
    /// A spare was asked of the sync thread and has not come yet.
    spare_asked: bool,
}

/// Whether `journal.retain` holds a segment every sink has read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retained {
    Kept,
    /// The room is needed: retention gives way.
    Given,
}

/// A segment made ahead, empty, to become the live one at record `segment.first_seq`.
struct Spare {
    segment: Segment,
    file: Arc<File>,
}

/// What a journal keeps: its user's type, written as a record and made again
/// from one. The journal stores a kind and bytes and never asks what they
/// mean; its user says (the callbacks' `ReceivedMessage`). A record appended
/// a moment ago reaches readers as the value appended, not parsed again.
pub trait Stored: std::fmt::Debug + Send + Sync + 'static {
    /// The record that stands for it on disk.
    fn as_record(&self) -> NewRecord<'_>;

    /// The value a record read back from disk stands for; `Err` says why it
    /// stands for none (a kind or a body this release does not read).
    fn from_record(record: Record) -> Result<Self, String>
    where
        Self: Sized;
}

/// One record as its readers see it.
#[derive(Debug)]
pub struct Entry<M> {
    /// The record's sequence number in the journal.
    pub seq: u64,
    pub message: Arc<M>,
}

impl<M> Clone for Entry<M> {
    fn clone(&self) -> Self {
        Entry { seq: self.seq, message: Arc::clone(&self.message) }
    }
}

/// The latest records, as appended: `messages[i]` is record `first_seq + i`.
struct Recent<M> {
    first_seq: u64,
    messages: VecDeque<Arc<M>>,
    body_bytes: usize,
}

/// The in-memory tail holds at most this many records, and at most
/// [`RECENT_MAX_BYTES`] of their bodies: enough for every sink that keeps up
/// (a batch a millisecond at 100,000 messages a second is 100 records).
const RECENT_MAX_RECORDS: usize = 2048;
const RECENT_MAX_BYTES: usize = 2 * 1024 * 1024;

impl<M: Stored> Recent<M> {
    fn push(&mut self, seq: u64, message: &Arc<M>) {
        if self.first_seq + self.messages.len() as u64 != seq {
            // Not contiguous (a failed append in between): start over from here.
            self.messages.clear();
            self.body_bytes = 0;
            self.first_seq = seq;
        }
        self.body_bytes += message.as_record().body.len();
        self.messages.push_back(Arc::clone(message));
        while self.messages.len() > RECENT_MAX_RECORDS || self.body_bytes > RECENT_MAX_BYTES {
            let Some(oldest) = self.messages.pop_front() else { break };
            self.body_bytes -= oldest.as_record().body.len();
            self.first_seq += 1;
        }
    }
}

/// A sink's saved position, as the journal sees it when deciding what to delete.
#[derive(Clone, Debug)]
pub struct Consumer(Arc<AtomicU64>);

impl Consumer {
    /// The sink has saved its position: records before `next` are no longer needed for it.
    pub fn saved(&self, next: u64) {
        self.0.store(next, Ordering::Release);
    }
}

pub struct Journal<M: Stored> {
    dir: PathBuf,
    settings: JournalSettings,
    writer: Mutex<Writer>,
    /// Records waiting for the writer (see `append`); never locked while taking `writer`.
    queue: Mutex<append::Queue<M>>,
    recent: Mutex<Recent<M>>,
    /// Highest sequence number written to the OS (0: none yet).
    written: AtomicU64,
    /// Highest sequence number fdatasynced.
    synced: AtomicU64,
    /// Set once an fdatasync failed (see [`AppendError::SyncFailed`]).
    sync_failure: Mutex<Option<String>>,
    sync_failed: AtomicBool,
    /// Why the last append failed, until one succeeds (`/readyz` reports it).
    append_blocked: Mutex<Option<String>>,
    blocked: AtomicBool,
    /// The disk filled up and the reserve was given back: appends wait until
    /// there is room to take it again.
    reserve_released: AtomicBool,
    /// See [`Journal::fail_next_fdatasync`].
    injected_sync_failure: AtomicBool,
    /// First sequence number still in the journal.
    oldest: AtomicU64,
    appended: Notify,
    synced_notify: Notify,
    /// Wakes the sync thread: set when there is something to sync, or to stop.
    sync_wanted: (Mutex<bool>, Condvar),
    closing: AtomicBool,
    sync_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    consumers: Mutex<Vec<Consumer>>,
    /// Damage found at start-up, (segment, offset): already reported, so readers skip it quietly.
    known_damage: Mutex<DamageSet>,
    /// Mirrors of the writer's figures, for reports that must not take its lock.
    total_bytes: AtomicU64,
    segment_count: AtomicU64,
    append_failures: AtomicU64,
    /// `pwritev` calls that wrote records: fewer than the records when requests shared them.
    writes: AtomicU64,
    /// fdatasyncs that covered new records.
    fdatasyncs: AtomicU64,
    /// Rolls that had to create their segment on the request path (no spare ready).
    rolls_without_spare: AtomicU64,
    /// Seconds each fdatasync took.
    pub fsync_seconds: Histogram,
    /// Names this journal (not its directory): a fresh one is made with the
    /// directory, so a position saved elsewhere can tell a replaced journal.
    id: String,
    _lock: File,
}

impl<M: Stored> std::fmt::Debug for Journal<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What `/stats` shows of the journal.
#[derive(Debug, Serialize)]
pub struct JournalReport {
    pub dir: String,
    pub sync: SyncMode,
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: u64,
    /// Sequence numbers: the oldest record kept, the last written, the last fsynced.
    pub oldest_seq: u64,
    pub last_seq: u64,
    pub synced_seq: u64,
    pub append_failures: u64,
    /// `pwritev` calls that wrote records (requests arriving together share one).
    pub writes: u64,
    /// fdatasyncs of the live segment that covered new records (with `sync =
    /// "always"`, requests waiting together share one).
    pub fdatasyncs: u64,
}

impl<M: Stored> Journal<M> {
    /// Opens (or creates) the journal in `settings.dir`: takes its lock,
    /// reads every segment, cuts a torn tail off the live one, and reports
    /// damage. Never refuses to start over what it finds in the segments.
    pub fn open(settings: &JournalSettings) -> Result<Arc<Self>, OpenError> {
        let dir = settings.dir.clone();
        let io_error = |error| OpenError::Io { dir: dir.clone(), error };
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let Some(lock) = lock_file(&dir.join("LOCK")).map_err(io_error)? else {
            return Err(OpenError::Locked { dir });
        };
        let id = journal_id(&dir).map_err(io_error)?;
        let (segments, known_damage) = recover(&dir).map_err(io_error)?;
        let next_seq = match segments.last() {
            Some(live) => live.next_seq,
            None => 1,
        };
        let mut kept: VecDeque<Segment> = segments
            .into_iter()
            .map(|found| Segment {
                first_seq: found.first_seq,
                closed_at: std::fs::metadata(&found.path).and_then(|metadata| metadata.modified()).ok(),
                path: found.path,
                bytes: found.bytes,
            })
            .collect();
        if let Some(live) = kept.back_mut() {
            live.closed_at = None;
        }
        if kept.is_empty() {
            kept.push_back(create_segment(&dir, next_seq).map_err(io_error)?);
            sync_dir_entry(&dir).map_err(io_error)?;
        }
        let live_path = &kept.back().expect("a live segment").path;
        let live = open_for_writing(live_path).map_err(io_error)?;
        let live_bytes = kept.back().expect("a live segment").bytes;
        preallocate(&live, &dir, live_bytes, settings.segment_bytes);
        let live = Arc::new(live);
        let total_bytes = kept.iter().map(|segment| segment.bytes).sum();
        let oldest = kept.front().expect("a live segment").first_seq;
        let segment_count = kept.len() as u64;
        let written = next_seq - 1;
        let journal = Arc::new(Journal {
            dir,
            settings: settings.clone(),
            writer: Mutex::new(Writer {
                segments: kept,
                live,
                closed_unsynced: Vec::new(),
                to_delete: Vec::new(),
                next_seq,
                total_bytes,
                spare: None,
                spare_asked: false,
            }),
            queue: Mutex::new(append::Queue::new(next_seq)),
            recent: Mutex::new(Recent { first_seq: next_seq, messages: VecDeque::new(), body_bytes: 0 }),
            written: AtomicU64::new(written),
            // What start-up read back is on disk as far as this process can tell.
            synced: AtomicU64::new(written),
            sync_failure: Mutex::new(None),
            sync_failed: AtomicBool::new(false),
            append_blocked: Mutex::new(None),
            blocked: AtomicBool::new(false),
            reserve_released: AtomicBool::new(false),
            injected_sync_failure: AtomicBool::new(false),
            oldest: AtomicU64::new(oldest),
            appended: Notify::new(),
            synced_notify: Notify::new(),
            sync_wanted: (Mutex::new(false), Condvar::new()),
            closing: AtomicBool::new(false),
            sync_thread: Mutex::new(None),
            consumers: Mutex::new(Vec::new()),
            known_damage: Mutex::new(known_damage),
            total_bytes: AtomicU64::new(total_bytes),
            segment_count: AtomicU64::new(segment_count),
            append_failures: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            fdatasyncs: AtomicU64::new(0),
            rolls_without_spare: AtomicU64::new(0),
            fsync_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            id,
            _lock: lock,
        });
        if let Err(error) = make_reserve(&journal.dir, settings.reserve_bytes) {
            tracing::warn!(dir = %journal.dir.display(), %error, bytes = settings.reserve_bytes,
                "cannot set disk space aside (journal.reserve_bytes): a full disk may need a hand to recover");
        }
        let syncing = Arc::clone(&journal);
        let thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || syncing.sync_loop())
            .map_err(|error| OpenError::Io { dir: journal.dir.clone(), error })?;
        *journal.sync_thread.lock().expect("not poisoned") = Some(thread);
        tracing::info!(dir = %journal.dir.display(), next_seq, oldest, bytes = total_bytes, segments = segment_count,
            sync = settings.sync.name(), "journal open");
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This journal's id: its sequence numbers mean something only with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn append_failed(&self, error: &AppendError) {
        if !matches!(error, AppendError::Full { .. }) {
            self.append_failures.fetch_add(1, Ordering::Relaxed);
        }
        if let AppendError::Io(io_error) = error
            && io_error.kind() == io::ErrorKind::StorageFull
        {
            self.give_back_reserve();
        }
        self.set_blocked(Some(error.to_string()));
    }

    /// The disk is full: the reserve is deleted so that positions and the
    /// stats snapshot can still be saved (and segments then deleted), and no
    /// record is appended until it can be taken again.
    fn give_back_reserve(&self) {
        if self.settings.reserve_bytes == 0 || self.reserve_released.swap(true, Ordering::AcqRel) {
            return;
        }
        match std::fs::remove_file(self.dir.join(RESERVE_FILE)) {
            Ok(()) => tracing::warn!(dir = %self.dir.display(), bytes = self.settings.reserve_bytes,
                "the journal's disk is full: gave back its reserve so positions can be saved; callbacks get 503 until there is room again"),
            Err(error) => tracing::warn!(dir = %self.dir.display(), %error,
                "the journal's disk is full, and its reserve could not be given back"),
        }
    }

    /// Takes the reserve again once the disk has room for it and some more; true when taken.
    fn take_back_reserve(&self) -> bool {
        let needed = self.settings.reserve_bytes + FREE_TO_RESUME;
        if !free_bytes(&self.dir).is_ok_and(|free| free >= needed) {
            return false;
        }
        match make_reserve(&self.dir, self.settings.reserve_bytes) {
            Ok(()) => {
                self.reserve_released.store(false, Ordering::Release);
                tracing::info!(dir = %self.dir.display(), "the journal's disk has room again: taking callbacks");
                true
            }
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot take the disk reserve back yet");
                false
            }
        }
    }

    fn set_blocked(&self, why: Option<String>) {
        let mut blocked = self.append_blocked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.blocked.store(why.is_some(), Ordering::Release);
        *blocked = why;
    }

    /// Why the journal cannot take a record now, for `/readyz`; None when it can.
    /// After a failed append it looks again itself (free space on the disk,
    /// room within `max_bytes`), rather than wait for the next callback: an
    /// orchestrator sends none to a replica that is not ready.
    pub fn write_blocked(&self) -> Option<String> {
        if let Some(failure) = self.sync_failure() {
            return Some(failure);
        }
        if !self.blocked.load(Ordering::Acquire) {
            return None;
        }
        let why = self.append_blocked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()?;
        if self.reserve_released.load(Ordering::Acquire) {
            return Some(why);
        }
        self.release();
        let room = {
            let writer = self.lock_writer();
            let needed = self.settings.segment_bytes;
            writer.total_bytes + needed <= self.settings.max_bytes || writer.segments.len() == 1
        };
        let disk_free = free_bytes(&self.dir).is_ok_and(|free| free >= FREE_TO_RESUME);
        if room && disk_free {
            self.set_blocked(None);
            return None;
        }
        Some(why)
    }

    fn sync_failure(&self) -> Option<String> {
        if !self.sync_failed.load(Ordering::Acquire) {
            return None;
        }
        self.sync_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Completes once record `seq` is as durable as `journal.sync` promises
    /// before a 200: at once for "os" (it is written), after an fdatasync
    /// that covers it for "always". Fails when that fdatasync failed.
    pub async fn durable(&self, seq: u64) -> Result<(), AppendError> {
        if self.settings.sync == SyncMode::Os {
            return Ok(());
        }
        // The append woke the sync thread already.
        self.wait_synced(seq, false).await
    }

    /// Completes once record `seq` is fdatasynced, asking for an fdatasync
    /// now if need be: a sink's position is saved only past durable records,
    /// so a power loss never leaves a position ahead of the journal.
    pub async fn sync_through(&self, seq: u64) -> Result<(), AppendError> {
        self.wait_synced(seq, true).await
    }

    /// Highest sequence number fdatasynced.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    async fn wait_synced(&self, seq: u64, wake: bool) -> Result<(), AppendError> {
        loop {
            let notified = self.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.synced() >= seq {
                return Ok(());
            }
            if let Some(failure) = self.sync_failure() {
                return Err(AppendError::SyncFailed(failure));
            }
            if wake && self.sync_thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none() {
                // Closed, with no sync thread left to ask: a sink still saving its position
                // after the shutdown deadline would otherwise wait forever, holding the journal.
                self.sync_now();
                if self.synced() >= seq {
                    return Ok(());
                }
                let failure = self
                    .sync_failure()
                    .unwrap_or_else(|| format!("the journal is closed and record {seq} was never written"));
                return Err(AppendError::SyncFailed(failure));
            }
            if wake {
                self.wake_sync_thread();
            }
            notified.await;
        }
    }

    /// Completes once a record with sequence number `seq` or later is fdatasynced.
    pub async fn synced_through(&self, seq: u64) {
        loop {
            let notified = self.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.synced() >= seq || self.sync_failed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Makes `next` the sequence number of the next record, when a saved
    /// position is past the journal's end: records were lost (a power loss
    /// with `sync = "os"`, a directory replaced), and a sequence number a
    /// sink has passed must never be given to a new record, which that sink
    /// would then skip or count twice. Call before anything is appended.
    pub fn advance_to(&self, next: u64) -> io::Result<()> {
        let mut writer = self.lock_writer();
        if next <= writer.next_seq {
            return Ok(());
        }
        // Named for a record now skipped (or for `next` itself, made again below).
        if let Some(spare) = writer.spare.take() {
            std::fs::remove_file(&spare.segment.path)?;
        }
        let segment = create_segment(&self.dir, next)?;
        sync_dir_entry(&self.dir)?;
        let old = std::mem::replace(&mut writer.live, Arc::new(open_for_writing(&segment.path)?));
        trim_to_records(&old, writer.segments.back().map_or(0, |closed| closed.bytes));
        writer.closed_unsynced.push(old);
        writer.segments.push_back(segment);
        writer.next_seq = next;
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).advance_to(next);
        self.segment_count.store(writer.segments.len() as u64, Ordering::Relaxed);
        self.written.store(next - 1, Ordering::Release);
        self.synced.fetch_max(next - 1, Ordering::AcqRel);
        Ok(())
    }

    /// Highest sequence number written (0 when the journal has never held a record).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// First sequence number still kept.
    pub fn oldest(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }

    /// Completes once a record with sequence number `seq` or later is written.
    pub async fn written_through(&self, seq: u64) {
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.written() >= seq {
                return;
            }
            notified.await;
        }
    }

    /// Registers a sink starting at `next`; the journal keeps every record
    /// from the lowest saved position of all sinks.
    pub fn register(&self, next: u64) -> Consumer {
        let consumer = Consumer(Arc::new(AtomicU64::new(next)));
        self.consumers.lock().expect("not poisoned").push(consumer.clone());
        consumer
    }

    /// A reader from record `next` on.
    pub fn reader(self: &Arc<Self>, next: u64) -> JournalReader<M> {
        JournalReader::new(Arc::clone(self), next)
    }

    /// Deletes the segments every sink has saved a position past (the files
    /// outside the writer's lock: an unlink on a slow disk holds up no append).
    pub fn release(&self) {
        let to_delete = {
            let mut writer = self.lock_writer();
            self.forget_passed(&mut writer, Retained::Kept);
            std::mem::take(&mut writer.to_delete)
        };
        delete_files(to_delete);
    }

    /// Records from `next` on, at most `max` and through `through`, when the
    /// in-memory tail holds `next`.
    pub(crate) fn recent_from(&self, next: u64, through: u64, max: usize) -> Option<Vec<Entry<M>>> {
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let skip = next.checked_sub(recent.first_seq)? as usize;
        if skip >= recent.messages.len() {
            return None;
        }
        let count = max.min((through + 1).saturating_sub(next) as usize);
        let mut bytes = 0;
        let entries = recent.messages.iter().skip(skip).take(count).zip(next..).take_while(|(message, _)| {
            // At least one record, however large; then no more than the byte budget.
            let len = message.as_record().body.len();
            let within = bytes == 0 || bytes + len <= reader::MAX_BATCH_BYTES;
            bytes += len;
            within
        });
        Some(entries.map(|(message, seq)| Entry { seq, message: Arc::clone(message) }).collect())
    }

    /// The segment holding record `seq`, as (first sequence number, path).
    pub(crate) fn segment_holding(&self, seq: u64) -> Option<(u64, PathBuf)> {
        let writer = self.lock_writer();
        let segment = writer.segments.iter().rev().find(|segment| segment.first_seq <= seq)?;
        Some((segment.first_seq, segment.path.clone()))
    }

    /// How far the segment starting at `first_seq` holds whole, published
    /// records: readers never read past it (a failed append's bytes beyond it
    /// are being taken back).
    pub(crate) fn readable_end(&self, first_seq: u64) -> u64 {
        let writer = self.lock_writer();
        writer
            .segments
            .iter()
            .find(|segment| segment.first_seq == first_seq)
            .map_or(0, |segment| segment.bytes)
    }

    /// The segment after the one starting at `first_seq`.
    pub(crate) fn segment_after(&self, first_seq: u64) -> Option<(u64, PathBuf)> {
        let writer = self.lock_writer();
        let segment = writer.segments.iter().find(|segment| segment.first_seq > first_seq)?;
        Some((segment.first_seq, segment.path.clone()))
    }

    /// True the first time damage at this place is reported.
    pub(crate) fn first_report_of_damage(&self, segment: u64, offset: u64) -> bool {
        self.known_damage.lock().expect("not poisoned").insert((segment, offset))
    }

    pub fn report(&self) -> JournalReport {
        JournalReport {
            dir: self.dir.display().to_string(),
            sync: self.settings.sync,
            bytes: self.total_bytes.load(Ordering::Relaxed),
            max_bytes: self.settings.max_bytes,
            segments: self.segment_count.load(Ordering::Relaxed),
            oldest_seq: self.oldest(),
            last_seq: self.written(),
            synced_seq: self.synced.load(Ordering::Acquire),
            append_failures: self.append_failures.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            fdatasyncs: self.fdatasyncs.load(Ordering::Relaxed),
        }
    }

    /// Makes the next fdatasync fail as a disk's writeback error would. For
    /// tests: no disk on a test machine can be told to fail one on demand.
    #[doc(hidden)]
    pub fn fail_next_fdatasync(&self) {
        self.injected_sync_failure.store(true, Ordering::Release);
    }

    /// Stops the sync thread after a last fdatasync. Appends after this are not synced.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake_sync_thread();
        if let Some(thread) = self.sync_thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
        // After a clean stop a segment file holds its records and nothing else
        // (a spare made ahead stays, empty: the next start may write to it).
        let writer = self.lock_writer();
        trim_to_records(&writer.live, writer.segments.back().map_or(0, |live| live.bytes));
        if let Some(spare) = &writer.spare {
            trim_to_records(&spare.file, 0);
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding it is a bug in a few lines of arithmetic; the
        // file itself is consistent (a failed write is truncated away).
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a new live segment, first making room within `journal.max_bytes`.
    /// On the request path: it only creates the new file; deleting, fdatasync
    /// of the old segment and the directory are the sync thread's.
    fn roll(&self, writer: &mut Writer) -> Result<(), AppendError> {
        self.forget_passed(writer, Retained::Kept);
        let max_bytes = self.settings.max_bytes;
        if writer.total_bytes + self.settings.segment_bytes > max_bytes {
            // Segments kept only for `journal.retain` go before any sink loses a record.
            self.forget_passed(writer, Retained::Given);
        }
        while writer.total_bytes + self.settings.segment_bytes > max_bytes && writer.segments.len() > 1 {
            if self.settings.when_full == WhenFull::Refuse {
                return Err(AppendError::Full { max_bytes });
            }
            // "skip": the sinks still reading the oldest segment lose its unread records.
            let dropped = writer.segments.pop_front().expect("more than one segment");
            tracing::error!(segment = %dropped.path.display(), records_from = dropped.first_seq,
                records_to = writer.segments[0].first_seq - 1, max_bytes,
                "journal full: dropping its oldest segment; sinks that had not read it skip it (journal.when_full = \"skip\")");
            self.forget(writer, dropped);
        }
        // The sync thread syncs the old segment (and a new name made here) before it
        // counts anything in them as synced (with "always", before their requests' 200s).
        let (segment, file) = match writer.spare.take_if(|spare| spare.segment.first_seq == writer.next_seq) {
            Some(spare) => (spare.segment, spare.file),
            None => {
                // Only when the sync thread could not make the spare in time (records
                // grew, or came faster than it could): correct, just not as quick.
                self.rolls_without_spare.fetch_add(1, Ordering::Relaxed);
                let segment = create_segment(&self.dir, writer.next_seq)?;
                let file = Arc::new(open_for_writing(&segment.path)?);
                (segment, file)
            }
        };
        writer.spare_asked = false;
        let old = std::mem::replace(&mut writer.live, file);
        trim_to_records(&old, writer.segments.back().map_or(0, |closed| closed.bytes));
        writer.closed_unsynced.push(old);
        if let Some(closed) = writer.segments.back_mut() {
            closed.closed_at = Some(std::time::SystemTime::now());
        }
        writer.segments.push_back(segment);
        self.segment_count.store(writer.segments.len() as u64, Ordering::Relaxed);
        self.wake_sync_thread();
        Ok(())
    }

    /// Whether a roll is due before record `seq`, of `frame_len` bytes, with
    /// `live_bytes` in the live segment before it: at the spare's first
    /// record, or when the record would take the live segment past
    /// `journal.segment_bytes` while no spare is coming (past twice that with
    /// one coming: a spare is worth waiting a little for). Never before the
    /// first record of a segment, however large.
    fn roll_due(&self, writer: &Writer, seq: u64, live_bytes: u64, frame_len: u64) -> bool {
        let limit = match &writer.spare {
            Some(spare) if spare.segment.first_seq == seq => return true,
            Some(_) => 2 * self.settings.segment_bytes,
            None => self.settings.segment_bytes,
        };
        live_bytes > 0 && live_bytes + frame_len > limit
    }

    /// The sync thread's part of a roll: once the live segment is half full,
    /// make the next segment's file and sync its name, named for the record
    /// at which the live segment will be about full (from its average record).
    fn prepare_spare(&self) {
        let first_seq = {
            let writer = self.lock_writer();
            let live = writer.segments.back().expect("a live segment");
            let records = writer.next_seq - live.first_seq;
            if writer.spare.is_some() || records == 0 || 2 * live.bytes < self.settings.segment_bytes {
                return;
            }
            let average = live.bytes.div_ceil(records).max(1);
            let room = self.settings.segment_bytes.saturating_sub(live.bytes);
            writer.next_seq + (room / average).max(1)
        };
        let path = self.dir.join(segment::file_name(first_seq));
        let made = OpenOptions::new().create_new(true).write(true).open(&path).and_then(|file| {
            // Here, off the request path: allocating takes a moment.
            preallocate(&file, &self.dir, 0, self.settings.segment_bytes);
            sync_dir_entry(&self.dir).map(|()| file)
        });
        let file = match made {
            Ok(file) => Arc::new(file),
            // A roll on the request path made this very segment meanwhile: it is the live one.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return,
            Err(error) => {
                tracing::warn!(segment = %path.display(), %error, "cannot make the next journal segment ahead: the roll will make it");
                let _ = std::fs::remove_file(&path);
                return;
            }
        };
        let mut writer = self.lock_writer();
        // A roll on the request path opens what exists: it may have taken this file meanwhile.
        let in_use = writer.segments.iter().any(|segment| segment.first_seq == first_seq);
        if first_seq >= writer.next_seq && !in_use {
            writer.spare =
                Some(Spare { segment: Segment { first_seq, path, bytes: 0, closed_at: None }, file });
            return;
        }
        drop(writer);
        // Below the next record, no roll will ever want this name again.
        if !in_use {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Rolls that had to create their segment on the request path because the
    /// sync thread had no spare ready (for tests and reports).
    #[doc(hidden)]
    pub fn rolls_without_spare(&self) -> u64 {
        self.rolls_without_spare.load(Ordering::Relaxed)
    }

    /// Takes the segments below every sink's saved position (never the live
    /// one) out of the journal; their files go in `to_delete`.
    /// Deletes the oldest segments every sink has read, once they have been
    /// closed for `journal.retain` (kept that long for a rewind); with
    /// `Retained::Given`, whatever their age (the journal needs the room).
    fn forget_passed(&self, writer: &mut Writer, retained: Retained) {
        let lowest =
            self.consumers.lock().expect("not poisoned").iter().map(|c| c.0.load(Ordering::Acquire)).min();
        let lowest = lowest.unwrap_or(writer.next_seq);
        let now = std::time::SystemTime::now();
        let kept_long_enough = |segment: &Segment| {
            retained == Retained::Given
                || self.settings.retain.is_zero()
                || segment.closed_at.is_some_and(|closed| {
                    now.duration_since(closed).unwrap_or_default() >= self.settings.retain
                })
        };
        while writer.segments.len() > 1
            && writer.segments[1].first_seq <= lowest
            && kept_long_enough(&writer.segments[0])
        {
            let passed = writer.segments.pop_front().expect("more than one segment");
            self.forget(writer, passed);
        }
    }

    fn forget(&self, writer: &mut Writer, segment: Segment) {
        writer.to_delete.push(segment.path);
        writer.total_bytes -= segment.bytes;
        self.total_bytes.store(writer.total_bytes, Ordering::Relaxed);
        self.segment_count.store(writer.segments.len() as u64, Ordering::Relaxed);
        self.oldest.store(writer.segments[0].first_seq, Ordering::Release);
    }

    fn wake_sync_thread(&self) {
        let (wanted, condvar) = &self.sync_wanted;
        *wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        condvar.notify_one();
    }

    /// The sync thread: fdatasync the live segment when asked ("always", group
    /// commit: every record written by then shares one fdatasync) or every
    /// `journal.sync_interval` ("os"); and, after the disk filled up, take the
    /// reserve back once there is room again.
    fn sync_loop(&self) {
        let (wanted, condvar) = &self.sync_wanted;
        loop {
            let closing = {
                let mut asked = wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if !*asked && !self.closing.load(Ordering::Acquire) {
                    let mut wait = match self.settings.sync {
                        SyncMode::Always => Duration::from_secs(1),
                        SyncMode::Os => self.settings.sync_interval,
                    };
                    if self.reserve_released.load(Ordering::Acquire) {
                        // Looking for room again after a full disk: every second.
                        wait = wait.min(Duration::from_secs(1));
                    }
                    asked = condvar.wait_timeout(asked, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
                *asked = false;
                self.closing.load(Ordering::Acquire)
            };
            if !closing {
                // First, so a caller of `sync_through` finds a spare made if one was due.
                self.prepare_spare();
            }
            self.sync_now();
            if closing {
                return;
            }
            if self.reserve_released.load(Ordering::Acquire) && self.take_back_reserve() {
                self.set_blocked(None);
            }
        }
    }

    fn sync_now(&self) {
        if self.sync_failed.load(Ordering::Acquire) {
            return;
        }
        let (live, closed, through, to_delete) = {
            let mut writer = self.lock_writer();
            let to_delete = std::mem::take(&mut writer.to_delete);
            (
                Arc::clone(&writer.live),
                std::mem::take(&mut writer.closed_unsynced),
                writer.next_seq - 1,
                to_delete,
            )
        };
        delete_files(to_delete);
        if through <= self.synced.load(Ordering::Acquire) && closed.is_empty() {
            return;
        }
        let started = Instant::now();
        let closed_synced = if self.injected_sync_failure.swap(false, Ordering::AcqRel) {
            Err(io::Error::other("Input/output error (injected)"))
        } else {
            closed.iter().try_for_each(|file| file.sync_data())
        };
        let synced = closed_synced
            .and_then(|()| if closed.is_empty() { Ok(()) } else { sync_dir_entry(&self.dir) })
            .and_then(|()| live.sync_data());
        match synced {
            Ok(()) => {
                self.fsync_seconds.observe(started.elapsed().as_secs_f64());
                self.fdatasyncs.fetch_add(1, Ordering::Relaxed);
                // Older segments were synced just above, or by an earlier round.
                self.synced.store(through, Ordering::Release);
            }
            Err(error) => {
                // Not retried: Linux reports a writeback error once, then marks the
                // pages clean, so a second fdatasync "succeeds" over lost data
                // ("fsyncgate"). Every request waiting on it fails, and nothing
                // more is appended; a restart reads back what the disk really holds.
                let failure = format!(
                    "journal fdatasync failed ({error}): written records may not be on the disk; \
                     no more are taken until the receiver restarts (check the disk under {})",
                    self.dir.display()
                );
                tracing::error!(dir = %self.dir.display(), %error, "{failure}");
                *self.sync_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(failure);
                self.sync_failed.store(true, Ordering::Release);
            }
        }
        self.synced_notify.notify_waiters();
    }
}

/// Free space the journal's disk needs before `/readyz` says ready again
/// after a failed append: room for the next records, not just the next byte.
const FREE_TO_RESUME: u64 = 1024 * 1024;

/// Places of damage, as (segment's first sequence number, offset).
type DamageSet = HashSet<(u64, u64)>;

/// Takes an exclusive lock on the file at `path` (created if missing) for as
/// long as the returned file lives; None when another process holds it. The
/// kernel drops the lock when the process ends, however it ends.
pub fn lock_file(path: &Path) -> io::Result<Option<File>> {
    let file = File::options().create(true).truncate(false).write(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// A segment as start-up found it.
struct FoundSegment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// The sequence number after its last record.
    next_seq: u64,
}

/// Reads every segment: counts records, reports damage, cuts off a torn tail
/// of the live (last) segment so new records follow whole ones.
fn recover(dir: &Path) -> io::Result<(Vec<FoundSegment>, DamageSet)> {
    let listed = segment::list(dir)?;
    let count = listed.len();
    let mut found = Vec::with_capacity(count);
    let mut damage = HashSet::new();
    for (index, (first_seq, path)) in listed.into_iter().enumerate() {
        let inventory = segment::take_inventory(&path)?;
        for (offset, resumed_at) in &inventory.damage {
            tracing::error!(segment = %path.display(), offset, bytes = resumed_at - offset,
                "journal record damaged (checksum or frame): skipped; the records around it are kept");
            damage.insert((first_seq, *offset));
        }
        let mut bytes = std::fs::metadata(&path)?.len();
        let live = index + 1 == count;
        if inventory.valid_end < bytes && inventory.zero_tail {
            // Room allocated ahead, not a torn record: the live segment's new records go
            // there; a closed one was not cut when the next took over (a crash in between).
            if !live {
                open_for_writing(&path)?.set_len(inventory.valid_end)?;
            }
            bytes = inventory.valid_end;
        } else if live && inventory.valid_end < bytes {
            tracing::warn!(segment = %path.display(), offset = inventory.valid_end, bytes = bytes - inventory.valid_end,
                "journal ends in a torn record (a write cut off by a crash): cut off");
            open_for_writing(&path)?.set_len(inventory.valid_end)?;
            bytes = inventory.valid_end;
        }
        let next_seq = inventory.last_seq.map_or(first_seq, |last| last + 1).max(first_seq);
        found.push(FoundSegment { first_seq, path, bytes, next_seq });
    }
    // A spare the sync thread made ahead and no record reached: new records
    // follow the last one written, not a gap readers would count as damage.
    if let [.., before, last] = found.as_slice()
        && last.bytes == 0
        && last.first_seq > before.next_seq
    {
        std::fs::remove_file(&last.path)?;
        found.pop();
    }
    Ok((found, damage))
}

/// Creates an empty segment; its name is made durable by the sync thread's
/// next round (or by the caller).
fn create_segment(dir: &Path, first_seq: u64) -> io::Result<Segment> {
    let path = dir.join(segment::file_name(first_seq));
    OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    Ok(Segment { first_seq, path, bytes: 0, closed_at: None })
}

/// A segment's file, for the writer: records go at the offset where the last
/// one ends (`pwritev`), not at the file's end, which `preallocate` moved.
fn open_for_writing(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

/// Allocates the disk blocks of a segment's first `segment_bytes` ahead
/// (`fallocate`), so that appending to it changes neither the file's size
/// nor its block map, only its data (and the extents' written state).
/// Measured on this project's ext4 disk (`cargo bench --bench append_latency`),
/// an fdatasync after a one-record write then takes 127 µs at the median instead of 175 µs: the one
/// cost of each callback with `journal.sync = "always"` (see README,
/// Performance). The file reads as zeros past its records until they are
/// written; readers stop at the records' end (`Segment::bytes`), a segment
/// is cut to its records when the next one takes over, and at start-up a
/// zero tail is the end of a segment, not damage (`segment::take_inventory`).
/// Where the filesystem cannot, the segment grows as it is written, as
/// before; and so it does where the room would take more than half of what
/// the disk has free: room allocated ahead must never be what fills a disk,
/// since the journal would go on taking records into it while the stats
/// snapshot and the other files beside it found no byte free (the disk-full
/// handling, `journal.reserve_bytes`, starts from an append that fails).
fn preallocate(file: &File, dir: &Path, records_bytes: u64, segment_bytes: u64) {
    let room = segment_bytes.saturating_sub(records_bytes);
    if room == 0 || free_bytes(dir).map_or(true, |free| free < 2 * room) {
        return;
    }
    if let Err(error) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, segment_bytes) {
        tracing::debug!(%error, "journal segment not allocated ahead: it grows as it is written");
        // A failed fallocate may have allocated part of the range.
        trim_to_records(file, records_bytes);
    }
}

/// Cuts a segment's file to its records' end (`bytes`), dropping what
/// `preallocate` allocated past them. A failure leaves a zero tail, which
/// start-up reads as the segment's end.
fn trim_to_records(file: &File, bytes: u64) {
    if file.metadata().is_ok_and(|metadata| metadata.len() > bytes)
        && let Err(error) = file.set_len(bytes)
    {
        tracing::warn!(%error, "cannot cut a journal segment to its records: its zero tail stays until start-up");
    }
}

fn delete_files(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::error!(segment = %path.display(), %error, "cannot delete a journal segment");
        }
    }
}

/// The disk-space reserve's file name, in the journal's directory.
const RESERVE_FILE: &str = "RESERVE";

/// Writes the reserve (real bytes, not a sparse file, so the space is taken)
/// unless it is there already at its size; removes it when `bytes` is 0.
fn make_reserve(dir: &Path, bytes: u64) -> io::Result<()> {
    let path = dir.join(RESERVE_FILE);
    if bytes == 0 {
        return match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    if std::fs::metadata(&path).is_ok_and(|found| found.len() == bytes) {
        return Ok(());
    }
    let mut file = File::create(&path)?;
    let zeros = vec![0u8; 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        let chunk = left.min(zeros.len() as u64) as usize;
        if let Err(error) = file.write_all(&zeros[..chunk]) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        left -= chunk as u64;
    }
    file.sync_data()
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A new file's name is durable only once its directory is.
fn sync_dir_entry(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The id in `<dir>/ID`, made (a random UUID) when the journal has none:
/// with a new directory, or one from before ids.
fn journal_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("ID");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let id = uuid::Uuid::new_v4().to_string();
    cursor::write_atomically(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}
