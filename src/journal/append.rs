//! Appending: requests that arrive together share one `pwritev`.
//!
//! A request queues its frame (head encoded, body checksummed, both outside
//! any lock that disk work holds) and, when nobody is writing, writes the
//! queue itself: alone, that is one `pwritev` of its own frame, as before.
//! Requests that arrive while a write is in progress do not wait on a lock:
//! their frames queue up and their futures sleep until the writer's next
//! round, which writes them all in one `pwritev`. So no worker thread of the
//! runtime waits on another's disk write (a slow disk holds up one request
//! and the records queued behind it, never the thread that answers
//! `/healthz`), and under load the records of a moment cost one system call.
//!
//! Sequence numbers are given out at queueing, in order; the writer writes
//! frames in that order, so records are written, and published, in order. A
//! failed write fails its record and every record queued behind it (their
//! numbers are given out again): records on disk stay numbered without a gap.

use super::record::NewRecord;
use super::{AppendError, FREE_TO_RESUME, Journal, Stored, Writer};
use crate::settings::SyncMode;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// A writer writes at most this many rounds of the queue before handing the
/// turn to a request whose record is still queued: its own request waits no
/// longer than that, however fast others come.
const MAX_ROUNDS: usize = 4;

/// `pwritev` takes at most this many slices (Linux's IOV_MAX); a round of
/// more frames is written in several calls.
const MAX_SLICES: usize = 1024;

/// Records waiting for the writer.
pub(super) struct Queue<M> {
    /// The sequence number the next queued record gets.
    next_seq: u64,
    frames: Vec<Queued<M>>,
    /// The last round's emptied list, kept for the next (no allocation per round).
    recycled: Vec<Queued<M>>,
    /// What the queued records of requests waiting for another's write will
    /// learn; made by the first such request (a writer alone needs none).
    batch: Option<Arc<Batch>>,
    /// A request is writing: what is queued now, it (or the one it hands the turn to) writes.
    writing: bool,
}

impl<M> Queue<M> {
    pub(super) fn new(next_seq: u64) -> Self {
        Queue { next_seq, frames: Vec::new(), recycled: Vec::new(), batch: None, writing: false }
    }

    /// Numbers the next record `next` (see [`Journal::advance_to`]).
    pub(super) fn advance_to(&mut self, next: u64) {
        debug_assert!(self.frames.is_empty(), "advanced with records queued");
        self.next_seq = self.next_seq.max(next);
    }
}

/// One queued record: its frame's head, its body, and its parsed form.
struct Queued<M> {
    head: Vec<u8>,
    body: Body<M>,
}

enum Body<M> {
    /// The body of the message appended, kept for readers that keep up.
    Of(Arc<M>),
    /// A record appended without a parsed form: its body, copied.
    Copied(Vec<u8>),
}

impl<M: Stored> Queued<M> {
    fn body(&self) -> &[u8] {
        match &self.body {
            Body::Of(message) => message.as_record().body,
            Body::Copied(body) => body,
        }
    }

    fn frame_len(&self) -> u64 {
        (self.head.len() + self.body().len()) as u64
    }
}

/// How one round of queued records ended, shared by the requests that queued them.
#[derive(Default)]
struct Batch {
    /// Set once the round is over: the last sequence number it wrote, and
    /// why the records after it were not written.
    outcome: Mutex<Option<(u64, Option<AppendError>)>>,
    over: Notify,
}

/// Record `seq`'s outcome in a round that wrote through `last_written` and
/// stopped at `error`, if it did.
fn outcome(seq: u64, last_written: u64, error: Option<&AppendError>) -> Result<u64, AppendError> {
    match error {
        _ if seq <= last_written => Ok(seq),
        Some(error) => Err(error.duplicate()),
        None => Err(AppendError::Io(io::Error::other("record lost by the journal's writer"))),
    }
}

impl Batch {
    /// Record `seq`'s outcome, once its round is over.
    fn outcome_for(&self, seq: u64) -> Option<Result<u64, AppendError>> {
        let over = self.outcome.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last_written, error) = over.as_ref()?;
        Some(outcome(seq, *last_written, error.as_ref()))
    }

    fn finish(&self, last_written: u64, error: Option<AppendError>) {
        *self.outcome.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((last_written, error));
        self.over.notify_waiters();
    }
}

impl AppendError {
    /// The same error, for another request that shares it.
    fn duplicate(&self) -> AppendError {
        match self {
            AppendError::Full { max_bytes } => AppendError::Full { max_bytes: *max_bytes },
            AppendError::Io(error) => AppendError::Io(io::Error::new(error.kind(), error.to_string())),
            AppendError::SyncFailed(why) => AppendError::SyncFailed(why.clone()),
        }
    }
}

/// The writer's turn, handed on when dropped (a panic included): the next
/// queued request finds nobody writing and takes it.
pub struct WriterTurn<'a, M: Stored> {
    journal: &'a Journal<M>,
    /// False once given back with nothing left to write.
    held: bool,
}

impl<M: Stored> Drop for WriterTurn<'_, M> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut queue = self.journal.lock_queue();
        queue.writing = false;
        if let Some(batch) = &queue.batch {
            batch.over.notify_waiters();
        }
    }
}

/// Where a queued record's request stands.
enum Place {
    /// It has the turn: it writes, and learns its outcome from its own write.
    Writer,
    /// Another is writing: it learns its outcome from this round's batch.
    Waiting(Arc<Batch>),
}

impl<M: Stored> Journal<M> {
    /// Appends an accepted message; returns its sequence number. The record
    /// is in the OS (write(2) returned) when this completes; see [`Journal::durable`].
    pub async fn append(&self, message: &Arc<M>) -> Result<u64, AppendError> {
        self.append_record(&message.as_record(), Some(message)).await
    }

    /// Appends a record; `message` is its parsed form, kept for readers that keep up.
    pub async fn append_record(
        &self,
        record: &NewRecord<'_>,
        message: Option<&Arc<M>>,
    ) -> Result<u64, AppendError> {
        let (seq, place) = self.enqueue(record, message)?;
        let batch = match place {
            // Its record is in the first round: nobody else could take it.
            Place::Writer => {
                let (last_written, error) = self.write_queued();
                return outcome(seq, last_written, error.as_ref());
            }
            Place::Waiting(batch) => batch,
        };
        loop {
            let over = batch.over.notified();
            tokio::pin!(over);
            over.as_mut().enable();
            if let Some(outcome) = batch.outcome_for(seq) {
                return outcome;
            }
            if self.take_turn() {
                self.write_queued();
                continue;
            }
            over.await;
        }
    }

    /// Takes the writer's turn as a write that does not finish would: appends
    /// queue behind it until the returned turn is dropped, then one of them
    /// writes them all. For tests: no disk here can be made slow on demand.
    #[doc(hidden)]
    pub fn hold_writer_turn(&self) -> Option<WriterTurn<'_, M>> {
        let mut queue = self.lock_queue();
        if std::mem::replace(&mut queue.writing, true) {
            return None;
        }
        Some(WriterTurn { journal: self, held: true })
    }

    /// Records queued for the writer, not written yet (for tests).
    #[doc(hidden)]
    pub fn queued(&self) -> usize {
        self.lock_queue().frames.len()
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue<M>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues the record's frame: its sequence number, and whether this
    /// request is to write (nobody else is) or to wait for the writer.
    fn enqueue(&self, record: &NewRecord<'_>, message: Option<&Arc<M>>) -> Result<(u64, Place), AppendError> {
        // The sync thread takes the reserve back once there is room (no 8 MiB write here).
        if self.reserve_released.load(Ordering::Acquire) {
            let error = AppendError::Io(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the journal's disk is full: callbacks are refused until {} bytes are free there",
                    self.settings.reserve_bytes + FREE_TO_RESUME
                ),
            ));
            self.append_failed(&error);
            return Err(error);
        }
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(AppendError::SyncFailed(self.sync_failure().unwrap_or_default()));
        }
        // The body's checksum, the costly part, is taken outside every lock.
        let body_crc = crc32c::crc32c(record.body);
        let body = match message {
            Some(message) => Body::Of(Arc::clone(message)),
            None => Body::Copied(record.body.to_vec()),
        };
        let mut queue = self.lock_queue();
        let seq = queue.next_seq;
        queue.next_seq += 1;
        let head = record.encode_head(seq, body_crc);
        queue.frames.push(Queued { head, body });
        if !std::mem::replace(&mut queue.writing, true) {
            return Ok((seq, Place::Writer));
        }
        let batch = Arc::clone(queue.batch.get_or_insert_with(Arc::default));
        Ok((seq, Place::Waiting(batch)))
    }

    /// The turn to write, when nobody has it and records are queued.
    fn take_turn(&self) -> bool {
        let mut queue = self.lock_queue();
        if queue.writing || queue.frames.is_empty() {
            return false;
        }
        queue.writing = true;
        true
    }

    /// Writes what is queued, round after round while more comes (up to
    /// [`MAX_ROUNDS`]), then hands the turn on. Called by the request that
    /// has the turn; returns how its first round ended (the last record it
    /// wrote, and the error that stopped it).
    fn write_queued(&self) -> (u64, Option<AppendError>) {
        let mut turn = WriterTurn { journal: self, held: true };
        let mut first_round = None;
        let mut emptied = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let (mut frames, batch) = {
                let mut queue = self.lock_queue();
                if emptied.capacity() > queue.recycled.capacity() {
                    queue.recycled = std::mem::take(&mut emptied);
                }
                if queue.frames.is_empty() {
                    queue.writing = false;
                    turn.held = false;
                    break;
                }
                let recycled = std::mem::take(&mut queue.recycled);
                (std::mem::replace(&mut queue.frames, recycled), queue.batch.take())
            };
            let mut writer = self.lock_writer();
            let error = self.write_frames(&mut writer, &frames).err();
            let last_written = writer.next_seq - 1;
            // Readers waiting for records: also those a failed round wrote before its error.
            self.appended.notify_waiters();
            if let Some(error) = &error {
                if !matches!(error, AppendError::SyncFailed(_)) {
                    self.append_failed(error);
                }
                // What queued behind the failed record would follow a gap: it fails
                // too, and its numbers are given out again.
                let mut queue = self.lock_queue();
                queue.frames.clear();
                if let Some(behind) = queue.batch.take() {
                    behind.finish(last_written, Some(error.duplicate()));
                }
                queue.next_seq = writer.next_seq;
            }
            drop(writer);
            frames.clear();
            emptied = frames;
            if let Some(batch) = batch {
                batch.finish(last_written, error.as_ref().map(AppendError::duplicate));
            }
            first_round.get_or_insert((last_written, error));
        }
        first_round.unwrap_or_else(|| (self.written(), None))
    }

    /// Writes `frames` (numbered from the writer's next sequence number on)
    /// to the live segment, rolling to a new one where one is due; one
    /// `pwritev` for each run of frames between rolls. Publishes each run as
    /// it is written: on an error, the records before it stay written.
    fn write_frames(&self, writer: &mut Writer, frames: &[Queued<M>]) -> Result<(), AppendError> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(AppendError::SyncFailed(self.sync_failure().unwrap_or_default()));
        }
        let mut start = 0;
        while start < frames.len() {
            let mut live_bytes = writer.segments.back().map_or(0, |live| live.bytes);
            if self.roll_due(writer, writer.next_seq, live_bytes, frames[start].frame_len()) {
                self.roll(writer)?;
                live_bytes = 0;
            }
            // The run goes on up to the next frame that a roll must come before.
            let mut run_bytes = frames[start].frame_len();
            let mut end = start + 1;
            while end < frames.len() {
                let seq = writer.next_seq + (end - start) as u64;
                let frame_len = frames[end].frame_len();
                if self.roll_due(writer, seq, live_bytes + run_bytes, frame_len) {
                    break;
                }
                run_bytes += frame_len;
                end += 1;
            }
            let run = &frames[start..end];
            self.writes.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = write_run(&writer.live, live_bytes, run) {
                // Take back whatever part of the run made it, so the next record follows a
                // whole one. Readers never read past the published end (`readable_end`), so
                // they cannot see these bytes even while they are there.
                let _ = writer.live.set_len(live_bytes);
                return Err(error.into());
            }
            self.publish(writer, run, run_bytes);
            start = end;
        }
        if self.blocked.load(Ordering::Acquire) {
            self.set_blocked(None);
        }
        let live_bytes = writer.segments.back().map_or(0, |live| live.bytes);
        let ask_for_spare =
            writer.spare.is_none() && !writer.spare_asked && 2 * live_bytes >= self.settings.segment_bytes;
        writer.spare_asked |= ask_for_spare;
        if self.settings.sync == SyncMode::Always || ask_for_spare {
            self.wake_sync_thread();
        }
        Ok(())
    }

    /// A run of frames is written: readers may have them.
    fn publish(&self, writer: &mut Writer, run: &[Queued<M>], run_bytes: u64) {
        let first = writer.next_seq;
        writer.next_seq += run.len() as u64;
        writer.total_bytes += run_bytes;
        writer.segments.back_mut().expect("a live segment").bytes += run_bytes;
        self.total_bytes.store(writer.total_bytes, Ordering::Relaxed);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (seq, queued) in (first..).zip(run) {
                if let Body::Of(message) = &queued.body {
                    recent.push(seq, message);
                }
            }
        }
        // Published under the writer's lock: records are written, and so published, in order.
        self.written.store(writer.next_seq - 1, Ordering::Release);
    }
}

/// One `pwritev` per [`MAX_SLICES`] slices (two a frame: head and body), at
/// `offset` on: a segment's file may be longer than what is written in it
/// (see `preallocate`), so writes go where the records end, not to the file's end.
fn write_run<M: Stored>(file: &std::fs::File, offset: u64, run: &[Queued<M>]) -> io::Result<()> {
    if let [alone] = run {
        // The common case at OpenIM's two workers: no slice list to allocate.
        return write_all_at(file, offset, &mut [IoSlice::new(&alone.head), IoSlice::new(alone.body())]);
    }
    let mut offset = offset;
    for chunk in run.chunks(MAX_SLICES / 2) {
        let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(2 * chunk.len());
        for queued in chunk {
            parts.push(IoSlice::new(&queued.head));
            parts.push(IoSlice::new(queued.body()));
        }
        let bytes: u64 = chunk.iter().map(Queued::frame_len).sum();
        write_all_at(file, offset, &mut parts)?;
        offset += bytes;
    }
    Ok(())
}

fn write_all_at(file: &std::fs::File, mut offset: u64, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = parts;
    while !slices.is_empty() {
        match rustix::io::pwritev(file, slices, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                IoSlice::advance_slices(&mut slices, written);
                offset += written as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::OperationId;
    use futures_util::FutureExt;
    use std::fs::OpenOptions;

    fn journal_in(dir: &std::path::Path) -> Arc<crate::MessageJournal> {
        let mut settings = crate::settings::Settings::defaults();
        settings.journal.dir = dir.to_owned();
        settings.journal.reserve_bytes = 0;
        crate::MessageJournal::open(&settings.journal).unwrap()
    }

    const PACKET: &[u8] = include_bytes!("../../samples/text.json");

    fn record<'a>(id: &'a OperationId, body: &'a [u8]) -> NewRecord<'a> {
        NewRecord { kind: 0, received_at: std::time::SystemTime::now(), operation_id: id, body }
    }

    #[test]
    fn a_failed_write_fails_the_records_queued_behind_it_and_their_numbers_are_given_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_in(dir.path());
        let id = OperationId { value: "op".into(), generated: false };
        assert_eq!(journal.append_record(&record(&id, PACKET), None).now_or_never().unwrap().unwrap(), 1);
        // The live segment stops taking writes, as a failing disk would.
        let live_path = journal.lock_writer().segments.back().unwrap().path.clone();
        let read_only = Arc::new(OpenOptions::new().read(true).open(&live_path).unwrap());
        let writable = std::mem::replace(&mut journal.lock_writer().live, read_only);

        let turn = journal.hold_writer_turn().unwrap();
        let (second_record, third_record) = (record(&id, PACKET), record(&id, PACKET));
        let mut second = Box::pin(journal.append_record(&second_record, None));
        let mut third = Box::pin(journal.append_record(&third_record, None));
        assert!((&mut second).now_or_never().is_none() && (&mut third).now_or_never().is_none());
        assert_eq!(journal.queued(), 2);
        drop(turn);
        // The first to look takes the turn and writes both; neither is written.
        assert!(matches!(second.now_or_never(), Some(Err(AppendError::Io(_)))));
        assert!(matches!(third.now_or_never(), Some(Err(AppendError::Io(_)))));
        assert_eq!(journal.written(), 1);

        journal.lock_writer().live = writable;
        let again = journal.append_record(&record(&id, PACKET), None).now_or_never().unwrap().unwrap();
        assert_eq!(again, 2, "the failed records' numbers are given out again: no gap");
        let read = journal.reader(1).read(10).unwrap();
        assert_eq!(read.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(read.damaged, 0);
        journal.close();
    }
}
