//! A sink's way through the journal: records in sequence order from a
//! position, across segments, over damage, and past records the journal had
//! to drop while the sink was behind.

use super::segment::{SegmentReader, Step};
use super::{Entry, Journal, Stored};
use std::io;
use std::sync::Arc;

/// A batch holds at most this many bytes of bodies (and at least one record):
/// a batch of `batch_size` records of 4 MiB each would hold gigabytes in
/// memory for every lagging sink.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

pub struct JournalReader<M: Stored> {
    journal: Arc<Journal<M>>,
    /// The next record to hand out.
    next: u64,
    /// The open segment, by its first sequence number.
    segment: Option<(u64, SegmentReader)>,
}

/// What one read found.
#[derive(Debug)]
pub struct ReadBatch<M> {
    pub entries: Vec<Entry<M>>,
    /// Records this reader never saw because the journal dropped them while
    /// it was full (`journal.when_full = "skip"`), as (first, last) sequence numbers.
    pub skipped: Option<(u64, u64)>,
    /// Records lost to damage in the segments.
    pub damaged: u64,
    /// Records that stand for no value this release reads (a newer
    /// receiver's journal read by an older one): skipped and reported.
    pub unreadable: u64,
}

impl<M> Default for ReadBatch<M> {
    fn default() -> Self {
        ReadBatch { entries: Vec::new(), skipped: None, damaged: 0, unreadable: 0 }
    }
}

impl<M: Stored> JournalReader<M> {
    pub(super) fn new(journal: Arc<Journal<M>>, next: u64) -> Self {
        JournalReader { journal, next, segment: None }
    }

    /// The next record this reader will hand out.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` records that are written. Blocking file reads: call it
    /// from the sink's own thread.
    pub fn read(&mut self, max: usize) -> io::Result<ReadBatch<M>> {
        self.read_through(max, self.journal.written())
    }

    /// Reads up to `max` records, none past `through`.
    pub fn read_through(&mut self, max: usize, through: u64) -> io::Result<ReadBatch<M>> {
        let mut batch = ReadBatch::default();
        let oldest = self.journal.oldest();
        if self.next < oldest {
            batch.skipped = Some((self.next, oldest - 1));
            self.next = oldest;
            self.segment = None;
        }
        // A reader served from memory keeps the file it last read; once that
        // segment is deleted, holding it open would keep its space from the disk.
        if self.segment.as_ref().is_some_and(|(first, _)| *first < oldest) {
            self.segment = None;
        }
        let written = through.min(self.journal.written());
        if let Some(entries) = self.journal.recent_from(self.next, written, max) {
            self.next += entries.len() as u64;
            batch.entries = entries;
            return Ok(batch);
        }
        // Behind the in-memory tail: read the files, and make each value again.
        let mut bytes = 0;
        while batch.entries.len() < max && self.next <= written && bytes < MAX_BATCH_BYTES {
            let (first, reader) = match &mut self.segment {
                Some((first, reader)) => (*first, reader),
                None => {
                    let Some((first, path)) = self.journal.segment_holding(self.next) else { break };
                    self.segment = Some((first, self.open_segment(first, &path)?));
                    continue;
                }
            };
            match reader.step()? {
                Step::Record(record) if record.seq < self.next => {}
                Step::Record(record) => {
                    batch.damaged += record.seq - self.next;
                    self.next = record.seq + 1;
                    let (seq, kind, len) = (record.seq, record.kind, record.body.len());
                    match M::from_record(record) {
                        Ok(message) => {
                            bytes += len;
                            batch.entries.push(Entry { seq, message: Arc::new(message) });
                        }
                        Err(error) => {
                            batch.unreadable += 1;
                            tracing::error!(seq, kind, %error, "journal record stands for nothing this receiver reads: skipped");
                        }
                    }
                }
                Step::Damaged { offset, resumed_at } => {
                    if self.journal.first_report_of_damage(first, offset) {
                        tracing::error!(
                            segment = first,
                            offset,
                            bytes = resumed_at - offset,
                            "journal record damaged (checksum or frame): skipped"
                        );
                    }
                }
                Step::End => {
                    // The end this reader knew of; the segment may have grown since.
                    let end = self.journal.readable_end(first);
                    if end > reader.limit() {
                        reader.set_limit(end);
                        continue;
                    }
                    match self.journal.segment_after(first) {
                        Some((after, path)) => {
                            // Records missing at the end of a segment were lost to damage.
                            batch.damaged += after.saturating_sub(self.next);
                            self.next = self.next.max(after);
                            self.segment = Some((after, self.open_segment(after, &path)?));
                        }
                        // The live segment, with the last record being written: read it next time.
                        None => break,
                    }
                }
            }
        }
        Ok(batch)
    }

    /// A segment's file, to be read no further than what is published of it.
    fn open_segment(&self, first: u64, path: &std::path::Path) -> io::Result<SegmentReader> {
        let mut reader = SegmentReader::open(path, 0)?;
        reader.set_limit(self.journal.readable_end(first));
        Ok(reader)
    }
}
