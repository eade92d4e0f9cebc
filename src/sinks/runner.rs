//! The runner: feeds one sink from the journal. Reads a batch from the sink's
//! position, hands it over, retries it with capped exponential backoff and
//! jitter while the sink fails (panics included), saves the position, and
//! waits for more. The same loop serves every sink.

use super::{Command, Entry, Sink, SinkError, SinkState, SinkStatus};
use crate::MessageJournal;
use crate::callbacks::ReceivedMessage;
use crate::journal::{Consumer, JournalReader, cursor::CursorFile};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a runner works with besides its sink.
pub(super) struct Work {
    pub reader: JournalReader<ReceivedMessage>,
    pub journal: Arc<MessageJournal>,
    pub consumer: Consumer,
    pub status: Arc<SinkStatus>,
    pub commands: watch::Receiver<Command>,
    pub batch_size: usize,
    /// The sink takes only the records this admits.
    pub only: Option<super::filter::RecordFilter>,
    /// What the admin endpoints ask: dead letters retried, a rewind.
    pub requests: tokio::sync::mpsc::UnboundedReceiver<super::Asked>,
    /// Failed deliveries of one record before it is a dead letter (0: no limit).
    pub max_attempts: u32,
}

pub(super) async fn run<S: Sink>(mut sink: S, mut work: Work, mut keeper: PositionKeeper) {
    let name = sink.name();
    // While the start-up check fails and no message has come to show otherwise, the
    // check is tried again (with backoff), so that a target that comes back shows so.
    let mut recheck_in = (!announce(&mut sink, &work.status).await).then_some(FIRST_BACKOFF);
    // One timer for the next save of a position, moved when that time moves
    // (once per save), not made anew at every wait: a wait per record would
    // otherwise cost a timer each.
    let save_timer = tokio::time::sleep_until(keeper.due_at(work.status.position()));
    tokio::pin!(save_timer);
    loop {
        let command = *work.commands.borrow_and_update();
        let stop_at = match command {
            Command::Run => None,
            Command::Drain { stop_at } => Some(stop_at),
        };
        if stop_at.is_some_and(|stop_at| Instant::now() >= stop_at) {
            break;
        }
        while let Ok(asked) = work.requests.try_recv() {
            answer(&mut sink, &mut work, &mut keeper, asked).await;
        }
        // A sink that keeps its position with its deliveries is handed durable
        // records only: its position must never be ahead of the disk.
        let written = work.journal.written();
        let through = if sink.delivers_durable_only() { work.journal.synced() } else { written };
        let batch = match work.reader.read_through(work.batch_size, through) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(sink = name, %error, "cannot read the journal; retrying");
                work.status.set_last_error(format!("reading the journal: {error}"));
                if !pause(Duration::from_secs(1), &mut work.commands).await {
                    break;
                }
                continue;
            }
        };
        if let Some((first, last)) = batch.skipped {
            let count = last + 1 - first;
            work.status.skipped.fetch_add(count, Ordering::Relaxed);
            tracing::error!(
                sink = name,
                records = count,
                from_seq = first,
                to_seq = last,
                "sink skipped records the full journal dropped before it read them"
            );
        }
        work.status.damaged.fetch_add(batch.damaged, Ordering::Relaxed);
        work.status.failed.fetch_add(batch.unreadable, Ordering::Relaxed);
        if batch.entries.is_empty() {
            // Whatever was read is done with: skipped, damaged or unreadable records included.
            work.status.position.store(work.reader.next_seq(), Ordering::Release);
            work.status.oldest_pending_us.store(0, Ordering::Release);
            keeper.save_if_due(&mut sink, &work).await;
            let next = work.reader.next_seq();
            if stop_at.is_some() {
                if through < written && work.journal.sync_through(written).await.is_ok() {
                    continue; // the rest is durable now: deliver it
                }
                // The server has stopped, so nothing more will be written: drained.
                break;
            }
            let durable_only = sink.delivers_durable_only();
            let save_due = keeper.due_at(work.status.position());
            if save_timer.deadline() != save_due {
                save_timer.as_mut().reset(save_due);
            }
            let more = async {
                if through < written || durable_only {
                    work.journal.synced_through(next).await
                } else {
                    work.journal.written_through(next).await
                }
            };
            tokio::select! {
                // In this order, which costs nothing to pick (select's random start does).
                biased;
                () = more => {}
                changed = work.commands.changed() => {
                    if changed.is_err() {
                        break; // the sink set is gone: see `stop_requested`
                    }
                }
                // An idle sink still saves a position that moved, once it is due.
                () = &mut save_timer => {}
                () = tokio::time::sleep(recheck_in.unwrap_or_default()), if recheck_in.is_some() => {
                    recheck_in = recheck(&mut sink, &work.status, recheck_in.unwrap_or_default()).await;
                }
                Some(asked) = work.requests.recv() => answer(&mut sink, &mut work, &mut keeper, asked).await,
            }
            continue;
        }
        let caught_up = batch.entries.len() < work.batch_size;
        let oldest = batch.entries[0].message.received_at;
        work.status.oldest_pending_us.store(crate::epoch::micros(oldest), Ordering::Release);
        let next = work.reader.next_seq();
        let mut entries = batch.entries;
        if let Some(only) = &work.only {
            let read = entries.len();
            entries.retain(|entry| only.admits(&entry.message));
            work.status.filtered.fetch_add((read - entries.len()) as u64, Ordering::Relaxed);
        }
        if !entries.is_empty()
            && !deliver_until_done(&mut sink, &entries, &work.status, &mut work.commands, work.max_attempts)
                .await
        {
            break;
        }
        recheck_in = None; // a delivery says more than a check
        work.status.position.store(next, Ordering::Release);
        keeper.save_if_due(&mut sink, &work).await;
        // Appends wake a waiting runner (a thread wake-up each); lingering
        // lets the records of the next moment pile up without waking anyone,
        // so under load a sink wakes about once per linger, not per message.
        // (Lingering only while records come faster than once per linger was
        // tried: it saves a timer per lone record but wakes a sink twice as
        // often at a few hundred records a second, and cost more.)
        if caught_up && !pause(sink.linger(), &mut work.commands).await {
            break;
        }
    }
    keeper.save(&mut sink, &work, Finality::Final).await;
    work.status.set_state(SinkState::Stopped);
}

/// The sink's start-up line: where it writes, and whether it could reach it
/// (the return value).
async fn announce<S: Sink>(sink: &mut S, status: &SinkStatus) -> bool {
    let (name, target) = (sink.name(), sink.describe());
    let limit = sink.attempt_timeout();
    let Err(SinkError { message, retry }) = within(limit, sink.check()).await else {
        tracing::info!(sink = name, target, "sink started");
        return true;
    };
    if retry {
        tracing::warn!(
            sink = name,
            target,
            error = message,
            "sink started, but cannot reach its target yet: messages wait in the journal until it can"
        );
    } else {
        tracing::error!(
            sink = name,
            target,
            error = message,
            "sink started, but its target refuses it: fix its settings (messages wait in the journal meanwhile)"
        );
    }
    status.retrying(message);
    false
}

/// The start-up check once more, after a failed one; the wait before the next
/// try, None once it passes.
async fn recheck<S: Sink>(sink: &mut S, status: &SinkStatus, waited: Duration) -> Option<Duration> {
    match within(sink.attempt_timeout(), sink.check()).await {
        Ok(()) => {
            tracing::info!(sink = sink.name(), target = sink.describe(), "sink reached its target");
            status.set_state(SinkState::Running);
            None
        }
        Err(error) => {
            status.set_last_error(error.message);
            Some((waited * 2).min(MAX_BACKOFF))
        }
    }
}

/// `attempt`, failed as transient once the sink's deadline for one call (if it has one) passes.
async fn within(
    limit: Option<(Duration, &'static str)>,
    attempt: impl Future<Output = Result<(), SinkError>>,
) -> Result<(), SinkError> {
    let Some((limit, key)) = limit else { return attempt.await };
    tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
        let limit = humantime::format_duration(limit);
        Err(SinkError::transient(format!("no answer within {key} ({limit}): the target stalled")))
    })
}

/// Delivers `batch`, retrying while the sink asks for it. A batch the sink
/// refuses for good is taken apart: each record is delivered on its own, so
/// that only the records the target really refuses are given up, never the
/// ones behind them. False when the runner was told to stop before the batch was done.
async fn deliver_until_done<S: Sink>(
    sink: &mut S,
    batch: &[Entry],
    status: &SinkStatus,
    commands: &mut watch::Receiver<Command>,
    max_attempts: u32,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let records = match deliver_with_retries(sink, batch, status, commands, max_attempts).await {
        Delivery::Done => return true,
        Delivery::Stopped => return false,
        Delivery::Refused { reason, attempts } if batch.len() == 1 => {
            give_up(sink.name(), &batch[0], &reason, attempts, status);
            return true;
        }
        Delivery::Refused { .. } => batch,
    };
    for entry in records {
        match deliver_with_retries(sink, std::slice::from_ref(entry), status, commands, max_attempts).await {
            Delivery::Done => {}
            Delivery::Stopped => return false,
            Delivery::Refused { reason, attempts } => give_up(sink.name(), entry, &reason, attempts, status),
        }
    }
    true
}

/// How one delivery of a batch ended.
enum Delivery {
    Done,
    /// The sink refused it for good (a permanent error), or it failed
    /// `max_attempts` times: the reason, and the attempts it took.
    Refused {
        reason: String,
        attempts: u32,
    },
    /// The runner was told to stop first.
    Stopped,
}

/// Delivers `batch`, retrying it with backoff while the sink fails in a way that may pass.
async fn deliver_with_retries<S: Sink>(
    sink: &mut S,
    batch: &[Entry],
    status: &SinkStatus,
    commands: &mut watch::Receiver<Command>,
    max_attempts: u32,
) -> Delivery {
    let name = sink.name();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let limit = sink.attempt_timeout();
        let attempt = AssertUnwindSafe(within(limit, sink.deliver(batch))).catch_unwind();
        let outcome = tokio::select! {
            // The attempt first: one done at its first poll (the log, the stats)
            // leaves the stop's watch unpolled.
            biased;
            outcome = attempt => outcome,
            () = stop_requested(commands) => return Delivery::Stopped,
        };
        let message = match outcome {
            Ok(Ok(())) => {
                status.batch_delivered(batch.len() as u64);
                return Delivery::Done;
            }
            Ok(Err(SinkError { message, retry: false })) => {
                return Delivery::Refused { reason: message, attempts };
            }
            Ok(Err(SinkError { message, retry: true })) => message,
            Err(panic) => {
                status.panics.fetch_add(1, Ordering::Relaxed);
                format!("sink panicked: {}", panic_reason(&*panic))
            }
        };
        if max_attempts > 0 && attempts >= max_attempts {
            let reason = format!("failed {attempts} times (sinks.{name}.max_attempts): {message}");
            return Delivery::Refused { reason, attempts };
        }
        status.retries.fetch_add(1, Ordering::Relaxed);
        // Jitter spreads the retries of several receivers hitting one target.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::error!(
            sink = name,
            records = batch.len(),
            from_seq = batch[0].seq,
            error = message,
            retry_in_ms = wait.as_millis() as u64,
            "sink could not take a batch; retrying it"
        );
        status.retrying(message);
        if !pause(wait, commands).await {
            return Delivery::Stopped;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Does what the admin endpoints asked.
async fn answer<S: Sink>(sink: &mut S, work: &mut Work, keeper: &mut PositionKeeper, asked: super::Asked) {
    match asked {
        super::Asked::Retry { seq, answer } => {
            let outcome = retry_dead_letters(sink, work, seq).await;
            let _ = answer.send(outcome);
        }
        super::Asked::Rewind { to, answer } => {
            // The oldest record still there when `to` is gone; never past the end.
            let from = to.max(work.journal.oldest()).min(work.journal.written() + 1);
            work.consumer.saved(from);
            work.reader = work.journal.reader(from);
            work.status.position.store(from, Ordering::Release);
            keeper.save(sink, work, Finality::WhileRunning).await;
            tracing::info!(sink = sink.name(), to, from, "sink rewound: delivering again from this record");
            let _ = answer.send(from);
        }
    }
}

/// Delivers dead letters again, each once (its record read back from the
/// journal): a delivered one leaves the list; one that fails again stays,
/// with one more attempt and its new error.
async fn retry_dead_letters<S: Sink>(sink: &mut S, work: &Work, seq: Option<u64>) -> super::RetryOutcome {
    let mut outcome = super::RetryOutcome::default();
    let letters = match work.status.dead_letters.take(seq) {
        Ok(letters) => letters,
        Err(error) => {
            tracing::error!(sink = sink.name(), %error, "cannot rewrite the dead letters' file: no retry");
            return outcome;
        }
    };
    for mut letter in letters {
        outcome.retried += 1;
        let read = work.journal.reader(letter.seq).read_through(1, letter.seq);
        let Some(entry) =
            read.ok().and_then(|batch| batch.entries.into_iter().find(|entry| entry.seq == letter.seq))
        else {
            outcome.gone += 1;
            tracing::error!(
                sink = sink.name(),
                seq = letter.seq,
                "dead letter's record no longer in the journal: dropped"
            );
            continue;
        };
        let attempt =
            AssertUnwindSafe(within(sink.attempt_timeout(), sink.deliver(std::slice::from_ref(&entry))));
        let error = match attempt.catch_unwind().await {
            Ok(Ok(())) => {
                outcome.delivered += 1;
                work.status.delivered(1);
                tracing::info!(sink = sink.name(), seq = letter.seq, "dead letter delivered on retry");
                continue;
            }
            Ok(Err(error)) => error.message,
            Err(panic) => format!("sink panicked: {}", panic_reason(&*panic)),
        };
        outcome.still_dead += 1;
        letter.attempts += 1;
        letter.error = error;
        letter.failed_at = crate::epoch::rfc3339_micros(std::time::SystemTime::now()).as_str().to_owned();
        if let Err(error) = work.status.dead_letters.add(letter) {
            tracing::error!(sink = sink.name(), %error, "cannot save a dead letter");
        }
    }
    outcome
}

/// A record the sink refused for good: counted as failed, logged and kept as
/// a dead letter, and the sink goes on with the records behind it.
fn give_up(sink: &'static str, entry: &Entry, reason: &str, attempts: u32, status: &SinkStatus) {
    use crate::callbacks::{MAX_LOGGED_ID_CHARS, clip};
    let message = &entry.message;
    tracing::error!(
        sink,
        seq = entry.seq,
        callbackCommand = message.command.name,
        serverMsgID = clip(message.server_msg_id(), MAX_LOGGED_ID_CHARS),
        operationID = clip(&message.operation_id.value, MAX_LOGGED_ID_CHARS),
        error = reason,
        "sink refused this record for good: it is not delivered to this sink; the records behind it go on"
    );
    status.refused(format!("record {} refused: {reason}", entry.seq));
    let letter = super::dead_letters::DeadLetter {
        seq: entry.seq,
        failed_at: crate::epoch::rfc3339_micros(std::time::SystemTime::now()).as_str().to_owned(),
        attempts,
        error: reason.to_owned(),
        server_msg_id: message.server_msg_id().to_owned(),
        operation_id: message.operation_id.value.clone(),
        callback_command: message.command.name.to_owned(),
    };
    if let Err(error) = status.dead_letters.add(letter) {
        tracing::error!(sink, seq = entry.seq, %error, "cannot save the dead letter: the record is counted as failed only");
    }
}

/// Waits `duration`; false when the runner's stop time comes first.
async fn pause(duration: Duration, commands: &mut watch::Receiver<Command>) -> bool {
    tokio::select! {
        biased;
        () = tokio::time::sleep(duration) => true,
        () = stop_requested(commands) => false,
    }
}

/// Completes at the stop time, once the receiver has set one; at once when
/// the sink set was dropped without a drain (its owner is gone, so nobody
/// will set one): the runner saves its position and ends instead of retrying,
/// or spinning, for nobody. The journal keeps the rest for the next start.
async fn stop_requested(commands: &mut watch::Receiver<Command>) {
    loop {
        let command = *commands.borrow_and_update();
        if let Command::Drain { stop_at } = command {
            tokio::time::sleep_until(stop_at).await;
            return;
        }
        if commands.changed().await.is_err() {
            return;
        }
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_reason(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Whether a save is the runner's last.
#[derive(Clone, Copy)]
enum Finality {
    WhileRunning,
    Final,
}

/// Saves a sink's position: in its cursor file, or with its state.
pub(super) struct PositionKeeper {
    cursor_file: Option<CursorFile>,
    interval: Duration,
    saved: Option<u64>,
    saved_at: Instant,
}

impl PositionKeeper {
    pub fn cursor(file: CursorFile, interval: Duration) -> Self {
        PositionKeeper { cursor_file: Some(file), interval, saved: None, saved_at: Instant::now() }
    }

    pub fn with_state(interval: Duration) -> Self {
        PositionKeeper { cursor_file: None, interval, saved: None, saved_at: Instant::now() }
    }

    /// When a save of position `next` is due; an hour on when it is saved
    /// already (the same instant until the next save, so a timer set for it stays set).
    fn due_at(&self, next: u64) -> Instant {
        if self.saved == Some(next) {
            return self.saved_at + Duration::from_secs(3600);
        }
        self.saved_at + self.interval
    }

    async fn save_if_due<S: Sink>(&mut self, sink: &mut S, work: &Work) {
        if self.saved_at.elapsed() >= self.interval {
            self.save(sink, work, Finality::WhileRunning).await;
        }
    }

    /// Saves the delivered position now (if it moved); the journal may then
    /// delete what every sink has passed. Never past what is fdatasynced:
    /// after a power loss no saved position is ahead of what the journal
    /// holds, so no sequence number it passed is given out again. A cursor
    /// saved while running stops at the last fdatasync (the sync thread's
    /// next round moves it on; no extra fdatasync per save); a final one, and
    /// a sink's own state, which includes every record it took, wait for one.
    async fn save<S: Sink>(&mut self, sink: &mut S, work: &Work, finality: Finality) {
        let delivered = work.status.position();
        let next = match (&self.cursor_file, finality) {
            (Some(_), Finality::WhileRunning) => delivered.min(work.journal.synced() + 1),
            _ => delivered,
        };
        self.saved_at = Instant::now();
        if self.saved == Some(next) {
            return;
        }
        let durable =
            work.journal.sync_through(next.saturating_sub(1)).await.map_err(|error| error.to_string());
        let saved = match (durable, &mut self.cursor_file) {
            (Err(error), _) => Err(error),
            (Ok(()), Some(file)) => {
                file.save(next).map_err(|error| format!("{}: {error}", file.path().display()))
            }
            // A panic in the sink's own save is caught like one in `deliver`.
            (Ok(()), None) => match AssertUnwindSafe(sink.save(next)).catch_unwind().await {
                Ok(saved) => saved.map_err(|error| error.message),
                Err(panic) => Err(format!("sink panicked while saving: {}", panic_reason(&*panic))),
            },
        };
        match saved {
            Ok(()) => {
                self.saved = Some(next);
                work.status.save_failing.store(false, Ordering::Release);
                work.consumer.saved(next);
                work.journal.release();
            }
            Err(error) => {
                tracing::error!(sink = sink.name(), %error, "cannot save the sink's position");
                work.status.save_failed(format!("saving its position: {error}"));
            }
        }
    }
}
