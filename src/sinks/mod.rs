//! Sinks: where accepted messages go. Each sink reads the journal from its own
//! position, on its own thread, through the runner (`runner`): a slow, stuck
//! or failing sink never slows the request path or another sink.
//!
//! Adding a sink is a new file here with a type that implements [`Sink`], a
//! section under `[sinks]` in the settings, and one line in
//! [`SinkSet::from_settings`]. Neither the HTTP handler nor the journal changes.

/// A sink's settings struct: its own fields, then those every sink's section
/// has, which say how the runner feeds it (`only`, `start`, `max_attempts`;
/// see [`Feed`]). Written once here, so every sink takes them alike.
macro_rules! sink_settings {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        $vis struct $name {
            $($fields)*
            /// The records this sink takes (all when empty).
            #[serde(default)]
            pub only: crate::sinks::filter::RecordFilter,
            /// Where the sink starts when it has no saved position (see [`crate::sinks::Start`]).
            #[serde(default)]
            pub start: crate::sinks::Start,
            /// Deliveries of one record that may fail before it becomes a dead letter
            /// (0: retried until it passes, the default; a refusal for good is one already).
            #[serde(default)]
            pub max_attempts: u32,
        }
    };
}
pub(crate) use sink_settings;

pub mod filter;
pub mod forward;
pub mod log;
pub mod redis_stream;
mod runner;
pub(crate) use runner::panic_reason;
pub mod dead_letters;
pub mod sql;
pub mod stats;

use crate::MessageJournal;
use crate::journal::{Consumer, cursor};
use crate::settings::{Settings, StatsBackend};
use crate::telemetry::RecordWriter;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub use self::log::LogSink;
pub use self::stats::{StatsHandle, StatsSink};

/// One journaled callback, as a sink gets it.
pub type Entry = crate::journal::Entry<crate::callbacks::ReceivedMessage>;

/// A destination for accepted messages.
///
/// A sink runs on a thread of its own, inside a single-threaded async
/// runtime: it may do async I/O, and it may block without stalling anyone
/// else. The runner hands it batches in journal order, and calls it again
/// with the same batch after a failure that asks for a retry.
pub trait Sink: Send + 'static {
    /// Stable short name, used in settings, logs, cursor files, `/stats` and `/metrics`.
    fn name(&self) -> &'static str;

    /// What the sink writes to, as the start-up line says it (never a secret).
    fn describe(&self) -> String {
        self.name().to_owned()
    }

    /// Tries the target once, when the sink starts and before any message
    /// arrives, so that a wrong URL or password shows at once (in the log,
    /// `/stats` and the status page), not at the first message. A permanent
    /// error names what to check.
    fn check(&mut self) -> impl Future<Output = Result<(), SinkError>> {
        async { Ok(()) }
    }

    /// Takes a batch. `Ok`: every entry is done. `Err`: none counts as done;
    /// [`SinkError::retry`] says whether the runner tries the batch again.
    fn deliver(&mut self, batch: &[Entry]) -> impl Future<Output = Result<(), SinkError>>;

    /// Where the sink's position in the journal is kept.
    fn progress(&self) -> Progress {
        Progress::Cursor
    }

    /// For [`Progress::WithState`]: saves the sink's state, which includes
    /// every record before `next`, together with `next`.
    fn save(&mut self, next: u64) -> impl Future<Output = Result<(), SinkError>> {
        let _ = next;
        async { Ok(()) }
    }

    /// Whether `/readyz` fails while this sink's deliveries fail. True for the
    /// local sinks (their failure is this host's); a sink whose remote target
    /// is down shows as degraded in `/stats` instead.
    fn failures_affect_readiness(&self) -> bool {
        true
    }

    /// False for a sink that does no network I/O (it writes a file, or
    /// counts in memory): its thread's runtime then has no I/O driver, so
    /// waking it after an append is a futex, not an eventfd write and an
    /// epoll round. A sink that says false and opens a socket panics there.
    fn uses_network(&self) -> bool {
        true
    }

    /// After a batch that emptied the journal, how long the runner waits
    /// before it reads again: longer gathers bigger batches (fewer round
    /// trips to a remote target, fewer wake-ups of this thread) at the cost
    /// of that much lag while records keep coming. A record after a quiet
    /// spell is not held: a runner with nothing to read is woken by the append.
    /// 10 ms: with 1 ms every sink woke for every second message when
    /// callbacks came one after another, and those wake-ups were 4,400 of the
    /// 58,000 instructions a callback cost (scripts/bench-instructions.sh);
    /// no one reads a log or a count within 10 ms of the message.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }

    /// True for a sink that saves its position as part of each delivery (the
    /// fleet stats, in the same Redis script as the counts): it is handed only
    /// records that are fdatasynced, so a power loss never leaves its position
    /// ahead of the journal. (Other sinks save theirs through the runner, which
    /// waits for the fdatasync itself.)
    fn delivers_durable_only(&self) -> bool {
        false
    }

    /// The longest one delivery may take before the runner gives up on it
    /// and retries the batch (a target that stopped answering mid-request
    /// must show as failing, not hang as `running`). None: the sink bounds
    /// its own calls (the relay's and Redis's timeouts).
    fn attempt_timeout(&self) -> Option<(Duration, &'static str)> {
        None
    }
}

/// Where a sink's position in the journal is kept.
pub enum Progress {
    /// A cursor file under `<journal.dir>/cursors/`, saved by the runner every
    /// `journal.cursor_interval` and when the sink stops: after a crash the
    /// sink redoes what it did since (at-least-once).
    Cursor,
    /// In the sink's own saved state (the stats snapshot), through
    /// [`Sink::save`] every `save_interval`: state and position are saved
    /// together, so a restart neither misses nor repeats a record (exactly-once).
    WithState {
        /// The position the restored state includes; None to start at the oldest record.
        restored: Option<u64>,
        save_interval: Duration,
    },
}

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// True: try the same batch again after a backoff. False: give it up (counted as failed).
    pub retry: bool,
}

impl SinkError {
    /// A failure that may pass (a full disk, a closed pipe, a target that is down).
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError { message: message.into(), retry: true }
    }

    /// A batch that can never be taken.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError { message: message.into(), retry: false }
    }
}

/// What a sink's runner is doing (`/stats` shows it through [`SinkStatus::state_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkState {
    Running,
    /// Its last delivery failed; the batch is being retried.
    Retrying,
    /// Its runner has ended (at shutdown).
    Stopped,
}

/// Counters and state of one sink, shared by its runner and the HTTP face.
///
/// The runner writes them in one order, the cause before what it explains:
/// retries and the last error, then the state, then the record counts, then
/// the position. A report that reads them the other way round (as `/stats`
/// does) never shows a position without its counts, counts without the
/// state they left, or a state without its error.
#[derive(Debug)]
pub struct SinkStatus {
    name: &'static str,
    affects_readiness: bool,
    journal: Arc<MessageJournal>,
    /// Records delivered.
    pub handled: AtomicU64,
    /// Records given up: a permanent error, or a record that no longer parses.
    pub failed: AtomicU64,
    /// Records the sink's filter (`only`) left out.
    pub filtered: AtomicU64,
    /// Delivery attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Records dropped by a full journal before this sink read them.
    pub skipped: AtomicU64,
    /// Records lost to damage in the journal's files.
    pub damaged: AtomicU64,
    /// Panics caught in the sink (each also counts as a retry).
    pub panics: AtomicU64,
    state: AtomicU8,
    /// Its last attempt to save its position (cursor or snapshot) failed.
    save_failing: std::sync::atomic::AtomicBool,
    /// The next record to deliver: everything before it is done.
    position: AtomicU64,
    /// Arrival time (µs since the epoch) of the oldest record not yet delivered; 0 when caught up.
    oldest_pending_us: AtomicI64,
    last_error: Mutex<Option<String>>,
    /// The records this sink gave up on, until retried or dropped.
    pub dead_letters: dead_letters::DeadLetters,
    /// Requests for the runner from the admin endpoints.
    asked: tokio::sync::mpsc::UnboundedSender<Asked>,
    /// It keeps its position in a cursor file, so it can be moved back; a sink
    /// whose position is in its own state (the stats) cannot.
    pub rewindable: bool,
    /// Records delivered since `.0`, to measure the delivery rate (`.2`,
    /// records a second over the last full second of deliveries).
    rate_window: Mutex<(Instant, u64, f64)>,
}

/// What the admin endpoints ask of a sink's runner.
#[derive(Debug)]
pub enum Asked {
    /// Deliver dead letters again: all of them, or the one of `seq`.
    Retry { seq: Option<u64>, answer: oneshot::Sender<RetryOutcome> },
    /// Go back to record `to` (or the oldest the journal still holds) and
    /// deliver from there; answers the record it goes on from.
    Rewind { to: u64, answer: oneshot::Sender<u64> },
}

/// What a retry did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RetryOutcome {
    pub retried: usize,
    pub delivered: usize,
    /// Refused again, or failed: dead letters still, with their new error.
    pub still_dead: usize,
    /// Their records were no longer in the journal (a full journal dropped them): gone from the list.
    pub gone: usize,
}

impl SinkStatus {
    fn new(
        name: &'static str,
        affects_readiness: bool,
        journal: Arc<MessageJournal>,
        position: u64,
        dead_letters: dead_letters::DeadLetters,
        asked: tokio::sync::mpsc::UnboundedSender<Asked>,
        rewindable: bool,
    ) -> Self {
        SinkStatus {
            name,
            affects_readiness,
            journal,
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            state: AtomicU8::new(SinkState::Running as u8),
            save_failing: std::sync::atomic::AtomicBool::new(false),
            position: AtomicU64::new(position),
            oldest_pending_us: AtomicI64::new(0),
            last_error: Mutex::new(None),
            dead_letters,
            asked,
            rewindable,
            rate_window: Mutex::new((Instant::now(), 0, 0.0)),
        }
    }

    /// Counts `records` delivered, and the delivery rate over each second of deliveries.
    fn delivered(&self, records: u64) {
        self.handled.fetch_add(records, Ordering::Release);
        let mut window = self.rate_window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        window.1 += records;
        let elapsed = window.0.elapsed();
        if elapsed >= std::time::Duration::from_secs(1) {
            *window = (Instant::now(), 0, window.1 as f64 / elapsed.as_secs_f64());
        }
    }

    /// How long it will take to deliver what it is behind by, at its recent
    /// rate: 0 when caught up, None before it has a rate to go by.
    pub fn catch_up_seconds(&self) -> Option<f64> {
        let lag = self.lag_records();
        if lag == 0 {
            return Some(0.0);
        }
        let rate = self.rate_window.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).2;
        (rate > 0.0).then(|| lag as f64 / rate)
    }

    /// Asks the runner to deliver this sink's dead letters again (all, or
    /// the one of `seq`); what it did, once it has. None when the sink has stopped.
    pub async fn retry_dead_letters(&self, seq: Option<u64>) -> Option<RetryOutcome> {
        let (answer, outcome) = oneshot::channel();
        self.asked.send(Asked::Retry { seq, answer }).ok()?;
        outcome.await.ok()
    }

    /// Moves the sink back to record `to` (the oldest still in the journal
    /// when that is gone); the record it goes on from. None when it has stopped.
    pub async fn rewind(&self, to: u64) -> Option<u64> {
        let (answer, from) = oneshot::channel();
        self.asked.send(Asked::Rewind { to, answer }).ok()?;
        from.await.ok()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What became of the records this sink read, by result: what `/stats`
    /// and `/metrics` both report.
    pub fn record_counts(&self) -> [(&'static str, u64); 5] {
        [
            ("handled", &self.handled),
            ("failed", &self.failed),
            ("filtered", &self.filtered),
            ("skipped", &self.skipped),
            ("damaged", &self.damaged),
        ]
        .map(|(result, count)| (result, count.load(Ordering::Acquire)))
    }

    pub fn state(&self) -> SinkState {
        match self.state.load(Ordering::Acquire) {
            0 => SinkState::Running,
            1 => SinkState::Retrying,
            _ => SinkState::Stopped,
        }
    }

    fn set_state(&self, state: SinkState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// `state` as `/stats` reports it: a sink whose remote target is down is
    /// `degraded` (the journal holds its records), a failing local one `retrying`.
    pub fn state_name(&self) -> &'static str {
        match self.state() {
            SinkState::Running => "running",
            SinkState::Retrying if self.affects_readiness => "retrying",
            SinkState::Retrying => "degraded",
            SinkState::Stopped => "stopped",
        }
    }

    /// Failing in a way that makes the receiver not ready: its deliveries, or
    /// saving its position (a restart would redo or, for the stats, lose work).
    pub fn is_failing(&self) -> bool {
        self.affects_readiness && (self.state() == SinkState::Retrying || self.save_failing())
    }

    /// Its last attempt to save its position failed.
    pub fn save_failing(&self) -> bool {
        self.save_failing.load(Ordering::Acquire)
    }

    /// The next record this sink will deliver.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Records in the journal this sink has not delivered yet.
    pub fn lag_records(&self) -> u64 {
        (self.journal.written() + 1).saturating_sub(self.position())
    }

    /// Age of the oldest record this sink has not delivered; 0 when caught up.
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self.oldest_pending_us.load(Ordering::Acquire);
        if oldest == 0 || self.lag_records() == 0 {
            return 0.0;
        }
        let now = crate::epoch::micros(SystemTime::now());
        (now - oldest).max(0) as f64 / 1e6
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
    }

    // The runner's changes of state, each written in the order above.

    /// A delivery or a check failed and will be tried again.
    fn retrying(&self, error: String) {
        self.set_last_error(error);
        self.set_state(SinkState::Retrying);
    }

    /// A batch was delivered.
    fn batch_delivered(&self, records: u64) {
        self.set_state(SinkState::Running);
        self.delivered(records);
    }

    /// A record was given up for good; the sink goes on.
    fn refused(&self, error: String) {
        self.set_last_error(error);
        self.set_state(SinkState::Running);
        self.failed.fetch_add(1, Ordering::Release);
    }

    /// Saving its position failed.
    fn save_failed(&self, error: String) {
        self.set_last_error(error);
        self.save_failing.store(true, Ordering::Release);
    }
}

/// What the receiver tells the runners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Run,
    /// The server has stopped: deliver what is in the journal, then save and
    /// end; at `stop_at`, save what is done and end whatever is left.
    Drain {
        stop_at: Instant,
    },
}

struct Runner {
    status: Arc<SinkStatus>,
    finished: oneshot::Receiver<()>,
}

/// Where a sink with no saved position starts (`sinks.<name>.start`):
/// `oldest`, the default, takes every record still in the journal, so a sink
/// added later misses nothing the journal kept (the at-least-once sinks make
/// a repeat harmless); `now` takes only what arrives from its first start on,
/// as for a relay target that should not get the past.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Oldest,
    Now,
}

/// How a sink is fed from the journal.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    /// Most records handed over at once.
    pub batch_size: usize,
    /// The records it takes (all when empty).
    pub only: filter::RecordFilter,
    /// Where it starts with no saved position.
    pub start: Start,
    /// Failed deliveries of a record before it is a dead letter; 0 for no limit.
    pub max_attempts: u32,
}

/// The [`Feed`] a sink's settings section describes (each has these four keys).
macro_rules! feed_of {
    ($section:expr) => {
        Feed {
            batch_size: $section.batch_size,
            only: $section.only.clone(),
            start: $section.start,
            max_attempts: $section.max_attempts,
        }
    };
}

/// The running sinks.
pub struct SinkSet {
    journal: Arc<MessageJournal>,
    cursor_interval: Duration,
    commands: watch::Sender<Command>,
    runners: Vec<Runner>,
    /// The SQL archive's database, for reading it back, when the archive is on.
    archive: Option<sql::search::Archive>,
}

/// `[sinks]`: every sink's section.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksSettings {
    pub log: log::LogSinkSettings,
    pub stats: stats::settings::StatsSinkSettings,
    pub sql: sql::SqlSinkSettings,
    pub redis_stream: redis_stream::RedisStreamSinkSettings,
    /// HTTP relay targets, by name (`[sinks.forward.<name>]`).
    #[serde(default)]
    pub forward: std::collections::BTreeMap<String, forward::ForwardTarget>,
}

impl SinksSettings {
    /// Each sink's own checks, and its filter's.
    pub(crate) fn validate(&self) -> Result<(), crate::settings::Invalid> {
        self.log.validate()?;
        crate::settings::check_count("sinks.stats.batch_size", self.stats.batch_size as u64, 1, 100_000)?;
        self.sql.validate()?;
        self.redis_stream.validate()?;
        for (name, target) in &self.forward {
            target.validate(name)?;
        }
        let filters = [
            ("sinks.log.only".to_owned(), &self.log.only),
            ("sinks.stats.only".to_owned(), &self.stats.only),
            ("sinks.sql.only".to_owned(), &self.sql.only),
            ("sinks.redis_stream.only".to_owned(), &self.redis_stream.only),
        ]
        .into_iter()
        .chain(
            self.forward.iter().map(|(name, target)| (format!("sinks.forward.{name}.only"), &target.only)),
        );
        for (key, filter) in filters {
            if let Some(unknown) = filter.unknown_callback() {
                return Err(crate::settings::unknown_callback(&format!("{key}.callbacks"), unknown));
            }
        }
        Ok(())
    }
}

impl SinkSet {
    /// No sinks yet; cursors are saved every `cursor_interval`.
    pub fn new(journal: Arc<MessageJournal>, cursor_interval: Duration) -> Self {
        SinkSet {
            journal,
            cursor_interval,
            commands: watch::Sender::new(Command::Run),
            runners: Vec::new(),
            archive: None,
        }
    }

    pub fn journal(&self) -> &Arc<MessageJournal> {
        &self.journal
    }

    /// The SQL archive, when it is on: what `GET /messages` reads.
    pub fn archive(&self) -> Option<&sql::search::Archive> {
        self.archive.as_ref()
    }

    /// The sinks the settings enable; the log sink writes its records to `records`.
    pub fn from_settings(
        settings: &Settings,
        journal: Arc<MessageJournal>,
        records: RecordWriter,
    ) -> std::io::Result<(Self, Option<StatsHandle>)> {
        let mut set = SinkSet::new(journal, settings.journal.cursor_interval);
        let log = &settings.sinks.log;
        if log.enabled {
            set.spawn_fed(LogSink::new(log, settings.telemetry.format, records), feed_of!(log))?;
        }
        let sql = &settings.sinks.sql;
        if sql.is_on() {
            let sink = sql::SqlSink::new(sql).map_err(|error| std::io::Error::other(error.message))?;
            set.archive = Some(sink.archive());
            if sql.retention_days > 0 {
                // Beside the sink, on the server's runtime: trimming waits for no delivery.
                tokio::spawn(sql::retention::keep_for(sink.archive(), sql.retention_days));
            }
            set.spawn_fed(sink, feed_of!(sql))?;
        }
        let redis = &settings.sinks.redis_stream;
        if redis.enabled {
            let sink = redis_stream::RedisStreamSink::new(redis)
                .map_err(|error| std::io::Error::other(error.message))?;
            set.spawn_fed(sink, feed_of!(redis))?;
        }
        for (name, target) in &settings.sinks.forward {
            let sink = forward::ForwardSink::new(name, target)
                .map_err(|error| std::io::Error::other(error.message))?;
            set.spawn_fed(sink, feed_of!(target))?;
        }
        let stats_feed = feed_of!(settings.sinks.stats);
        let mut stats_handle = None;
        if settings.sinks.stats.enabled && settings.stats.backend == StatsBackend::Redis {
            let view = stats::fleet::FleetView::new(&settings.stats).map_err(std::io::Error::other)?;
            let handle = StatsHandle::for_fleet(view, settings.stats.calendar());
            let journal_id = set.journal.id().to_owned();
            let sink = stats::fleet::FleetSink::new(&settings.stats, &journal_id, handle.clone())
                .map_err(|error| std::io::Error::other(error.message))?;
            set.spawn_fed(sink, stats_feed.clone())?;
            stats_handle = Some(handle);
        } else if settings.sinks.stats.enabled {
            let sink = StatsSink::restore(&settings.stats)?;
            stats_handle = Some(sink.handle());
            set.spawn_fed(sink, stats_feed.clone())?;
        }
        Ok((set, stats_handle))
    }

    /// Starts `sink` on its own thread, reading the journal from its saved
    /// position (the oldest record when it has none) in batches of up to `batch_size`.
    pub fn spawn<S: Sink>(&mut self, sink: S, batch_size: usize) -> std::io::Result<()> {
        self.spawn_fed(sink, Feed { batch_size, ..Feed::default() })
    }

    /// [`SinkSet::spawn`], fed as `feed` says: its batches, its filter, where
    /// it starts with no saved position, its attempts per record.
    pub fn spawn_fed<S: Sink>(&mut self, sink: S, feed: Feed) -> std::io::Result<()> {
        let Feed { batch_size, only, start, max_attempts } = feed;
        let name = sink.name();
        let journal = &self.journal;
        let now = journal.written() + 1;
        let (saved, keeper) = match sink.progress() {
            Progress::Cursor => {
                let (mut file, mut saved) = cursor::CursorFile::open(&cursor::path(journal.dir(), name))?;
                if saved.is_none() && start == Start::Now {
                    // Saved at once: a restart before the first delivery starts here too,
                    // not at a later "now" that would pass over what came in between.
                    file.save(now)?;
                    saved = Some(now);
                }
                (saved, runner::PositionKeeper::cursor(file, self.cursor_interval))
            }
            Progress::WithState { restored, save_interval } => {
                let restored = restored.or((start == Start::Now).then_some(now));
                (restored, runner::PositionKeeper::with_state(save_interval))
            }
        };
        let end = journal.written() + 1;
        let start = match saved {
            Some(next) if next > end => {
                // Records the sink had passed are gone (a power loss with sync = "os" before
                // positions waited for the fdatasync, or a replaced journal directory). New
                // records must not reuse their numbers: the sink would skip or recount them.
                tracing::warn!(
                    sink = name,
                    saved = next,
                    journal_end = end,
                    "sink position is past the journal's end (records lost, or the journal directory replaced): new records are numbered from the position on"
                );
                journal.advance_to(next)?;
                next
            }
            Some(next) => next,
            None => journal.oldest(),
        };
        let consumer: Consumer = journal.register(start);
        let held = journal.register(journal.oldest());
        let dead = dead_letters::DeadLetters::open(dead_letters::path(journal.dir(), name), held)?;
        let (asked, requests) = tokio::sync::mpsc::unbounded_channel();
        let affects_readiness = sink.failures_affect_readiness();
        let rewindable = matches!(sink.progress(), Progress::Cursor);
        let status = Arc::new(SinkStatus::new(
            name,
            affects_readiness,
            Arc::clone(journal),
            start,
            dead,
            asked,
            rewindable,
        ));
        let work = runner::Work {
            reader: journal.reader(start),
            journal: Arc::clone(journal),
            consumer,
            status: Arc::clone(&status),
            commands: self.commands.subscribe(),
            batch_size,
            only: (!only.is_empty()).then_some(only),
            requests,
            max_attempts,
        };
        let (finished_tx, finished) = oneshot::channel();
        let mut runtime = tokio::runtime::Builder::new_current_thread();
        runtime.enable_time();
        if sink.uses_network() {
            runtime.enable_io();
        }
        std::thread::Builder::new().name(format!("sink-{name}")).spawn(move || {
            match runtime.build() {
                Ok(runtime) => runtime.block_on(runner::run(sink, work, keeper)),
                Err(error) => tracing::error!(sink = name, %error, "cannot start the sink's runtime"),
            }
            let _ = finished_tx.send(());
        })?;
        self.runners.push(Runner { status, finished });
        Ok(())
    }

    pub fn statuses(&self) -> Vec<Arc<SinkStatus>> {
        self.runners.iter().map(|runner| Arc::clone(&runner.status)).collect()
    }

    /// Lets every sink deliver what the journal holds, then save its position
    /// and end; all by `deadline`. Call it once the server has stopped.
    /// Returns the sinks that did not finish, with the records each had left
    /// (they stay in the journal for the next start).
    pub async fn drain(self, deadline: Instant) -> Vec<(&'static str, u64)> {
        // Runners stop a moment before the deadline, to save their positions in time.
        let margin = Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()) / 10);
        self.commands.send_replace(Command::Drain { stop_at: deadline - margin });
        let mut unfinished = Vec::new();
        for runner in self.runners {
            let finished = tokio::time::timeout_at(deadline, runner.finished).await.is_ok();
            let left = runner.status.lag_records();
            // A sink whose last save failed did not finish either: a restart would redo its work.
            if !finished || left > 0 || runner.status.save_failing() {
                unfinished.push((runner.status.name(), left));
            }
        }
        unfinished
    }
}
