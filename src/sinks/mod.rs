//! Sinks: where accepted messages go. Each sink runs on its own thread behind
//! its own bounded queue, so a slow or stuck sink never slows another one and
//! never blocks the request path; the request path only hands over an `Arc`.
//!
//! Adding a sink is a new file here with a type that implements [`Sink`], a
//! section under `[sinks]` in the settings, and one line in
//! [`SinkSet::from_settings`]. The HTTP handler does not change.

pub mod log;
pub mod stats;

use crate::message::ReceivedMessage;
use crate::settings::Settings;
use crate::telemetry::RecordWriter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::log::LogSink;
pub use self::stats::{StatsHandle, StatsSink};

/// A destination for accepted messages.
///
/// `deliver` runs on the sink's own thread and may block: a sink that writes
/// to a file or a socket does so directly. It is called once per message, in
/// the order the messages were accepted.
pub trait Sink: Send + 'static {
    /// Stable short name, used in settings, logs, `/stats` and error answers.
    fn name(&self) -> &'static str;

    /// Takes one message. An error is logged with the message's operation id
    /// and counted; the sink goes on with the next message.
    fn deliver(&mut self, message: &ReceivedMessage) -> Result<(), SinkError>;

    /// Called after each batch of messages, when the queue is momentarily
    /// empty: a sink that buffers writes them out here. The last call comes
    /// after the queue is closed and drained, before the worker ends.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Why a sink could not take a message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Counters a sink's worker and the request path keep about one sink.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Messages the sink took without error.
    pub handled: AtomicU64,
    /// Messages the sink returned an error for.
    pub failed: AtomicU64,
    /// Messages refused because this sink's queue stayed full until the deadline.
    pub missed: AtomicU64,
    /// Messages put in the queue.
    pub queued: AtomicU64,
    /// Panics caught in the sink (each also counts as failed).
    pub panics: AtomicU64,
}

impl SinkCounters {
    /// Messages queued and not yet taken (waiting, or being delivered now).
    pub fn pending(&self) -> u64 {
        let done = self.handled.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        self.queued.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// The request path's side of a sink: cheap to clone, shared by every request.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    name: &'static str,
    queue: mpsc::Sender<Arc<ReceivedMessage>>,
    counters: Arc<SinkCounters>,
    running: Arc<AtomicBool>,
}

impl SinkHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn counters(&self) -> &SinkCounters {
        &self.counters
    }

    /// Whether the sink's worker thread is still taking messages.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue.max_capacity()
    }

    pub fn is_full(&self) -> bool {
        self.queue.capacity() == 0
    }
}

/// Why a message could not be queued for every sink.
#[derive(Debug, PartialEq, Eq)]
pub enum HandOverError {
    /// The sink's worker is gone (it stopped, or the receiver is shutting down).
    SinkStopped(&'static str),
}

/// Queues `message` for every sink, or for none: a place in every queue is
/// reserved first, so a message is never half delivered. Waits while a queue
/// is full; the caller bounds the wait with its deadline.
pub async fn hand_over(sinks: &[SinkHandle], message: Arc<ReceivedMessage>) -> Result<(), HandOverError> {
    let mut permits = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let permit = sink.queue.reserve().await.map_err(|_| HandOverError::SinkStopped(sink.name))?;
        permits.push(permit);
    }
    for (sink, permit) in sinks.iter().zip(permits) {
        sink.counters.queued.fetch_add(1, Ordering::Release);
        permit.send(Arc::clone(&message));
    }
    Ok(())
}

/// The running sinks: handles for the request path, threads for shutdown.
#[derive(Default)]
pub struct SinkSet {
    handles: Vec<SinkHandle>,
    workers: Vec<(&'static str, std::thread::JoinHandle<()>)>,
}

impl SinkSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sinks the settings enable; the log sink writes its records to `records`.
    pub fn from_settings(
        settings: &Settings,
        records: RecordWriter,
    ) -> std::io::Result<(Self, Option<StatsHandle>)> {
        let mut set = SinkSet::new();
        let log = &settings.sinks.log;
        if log.enabled {
            set.spawn(LogSink::new(log, settings.telemetry.format, records), log.queue_capacity)?;
        }
        let mut stats_handle = None;
        if settings.sinks.stats.enabled {
            let sink = StatsSink::new(stats::restore_counts(&settings.stats)?);
            stats_handle = Some(sink.handle());
            set.spawn(sink, settings.sinks.stats.queue_capacity)?;
        }
        Ok((set, stats_handle))
    }

    /// Starts `sink` on its own thread behind a queue of `queue_capacity` messages.
    pub fn spawn<S: Sink>(&mut self, mut sink: S, queue_capacity: usize) -> std::io::Result<()> {
        let name = sink.name();
        let (queue, mut receiver) = mpsc::channel::<Arc<ReceivedMessage>>(queue_capacity.max(1));
        let counters = Arc::new(SinkCounters::default());
        let running = Arc::new(AtomicBool::new(true));
        let handle =
            SinkHandle { name, queue, counters: Arc::clone(&counters), running: Arc::clone(&running) };
        let thread = std::thread::Builder::new().name(format!("sink-{name}")).spawn(move || {
            // Cleared however the loop ends, a panic included, so /readyz tells.
            let running = RunningFlag(running);
            run_worker(&mut sink, &mut receiver, &counters, &running.0);
        })?;
        self.handles.push(handle);
        self.workers.push((name, thread));
        Ok(())
    }

    pub fn handles(&self) -> Vec<SinkHandle> {
        self.handles.clone()
    }

    /// Closes the queues and waits until `deadline` for every worker to drain
    /// its queue and flush. Every other handle must be gone by then (the
    /// server stopped), or the queues stay open. Returns the sinks that did
    /// not finish, with the number of messages each had not taken.
    pub async fn drain(self, deadline: Instant) -> Vec<(&'static str, u64)> {
        let SinkSet { handles, workers } = self;
        let counters: Vec<Arc<SinkCounters>> = handles.iter().map(|h| Arc::clone(&h.counters)).collect();
        // Dropping our senders is what lets each worker's loop end once its queue is empty.
        drop(handles);
        let mut unfinished = Vec::new();
        for ((name, thread), counters) in workers.into_iter().zip(counters) {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout_at(deadline, joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => {
                    tracing::error!(
                        sink = name,
                        "sink worker panicked; its queued messages were not delivered"
                    );
                    unfinished.push((name, counters.pending()));
                }
                Err(_) => unfinished.push((name, counters.pending())),
            }
        }
        unfinished
    }
}

/// After a batch, how long a worker waits for more before it parks.
///
/// A parked worker costs every sender a thread wake-up (a futex call and a
/// context switch) on the request path. Lingering for a moment after a batch
/// lets the messages that arrive meanwhile queue up without waking anyone, so
/// under load a worker wakes about once per linger instead of once per
/// message; when idle it parks and costs nothing. Records reach the sink at
/// most this much later.
const BATCH_LINGER: Duration = Duration::from_millis(1);

/// How long a sink whose `deliver` panicked rests before its worker goes on.
/// Meanwhile `/readyz` names it and its queue holds the messages that arrive.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// A worker's loop: deliver messages in batches, flush after each batch,
/// and end once the queue is closed and empty.
fn run_worker<S: Sink>(
    sink: &mut S,
    queue: &mut mpsc::Receiver<Arc<ReceivedMessage>>,
    counters: &SinkCounters,
    running: &AtomicBool,
) {
    let name = sink.name();
    while let Some(first) = queue.blocking_recv() {
        deliver_guarded(sink, &first, counters, running);
        loop {
            while let Ok(message) = queue.try_recv() {
                deliver_guarded(sink, &message, counters, running);
            }
            if let Err(error) = sink.flush() {
                tracing::error!(sink = name, %error, "sink could not flush");
            }
            std::thread::sleep(BATCH_LINGER);
            if queue.is_empty() {
                break;
            }
        }
    }
}

/// Delivers one message, counting the outcome. A panic in the sink is caught
/// here: reported, counted as a failure, and the worker restarts after
/// [`RESTART_BACKOFF`], so one bad message never stops a sink for good.
fn deliver_guarded<S: Sink>(
    sink: &mut S,
    message: &ReceivedMessage,
    counters: &SinkCounters,
    running: &AtomicBool,
) {
    let name = sink.name();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.deliver(message))) {
        Ok(Ok(())) => {
            counters.handled.fetch_add(1, Ordering::Release);
        }
        Ok(Err(error)) => {
            tracing::error!(sink = name, operationID = %message.operation_id, %error,
                "sink could not take a message");
            counters.failed.fetch_add(1, Ordering::Release);
        }
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(sink = name, operationID = %message.operation_id, reason,
                backoff_ms = RESTART_BACKOFF.as_millis() as u64,
                "sink panicked on a message; restarting it after the backoff");
            counters.failed.fetch_add(1, Ordering::Release);
            counters.panics.fetch_add(1, Ordering::Release);
            running.store(false, Ordering::Release);
            std::thread::sleep(RESTART_BACKOFF);
            running.store(true, Ordering::Release);
        }
    }
}

struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
