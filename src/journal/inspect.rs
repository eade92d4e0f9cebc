//! The journal read from outside the receiver: for `openim-callback-receiver
//! journal ls|cat|verify`. Read only, and without the journal's lock, so it
//! works on a stopped receiver's directory and beside a running one (a
//! segment the receiver deletes meanwhile is passed over; a record being
//! written is not read until it is whole).

use super::record::Record;
use super::segment::{self, SegmentReader, Step};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One segment file, as read through.
#[derive(Debug)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub bytes: u64,
    /// The first and last record's sequence numbers and arrival times; None for an empty segment.
    pub records: Option<(u64, u64)>,
    pub received: Option<(SystemTime, SystemTime)>,
    pub damaged: Vec<Damage>,
}

/// Bytes of a segment that are not records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// The journal's segments, oldest first.
pub fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    segment::list(dir)
}

/// Reads one segment through, calling `each` for every record; its summary.
/// A segment deleted under the reader (a running receiver releasing it) reads as empty.
pub fn read_segment(path: &Path, mut each: impl FnMut(Record) -> bool) -> io::Result<SegmentSummary> {
    let mut summary = SegmentSummary {
        path: path.to_owned(),
        bytes: 0,
        records: None,
        received: None,
        damaged: Vec::new(),
    };
    let mut reader = match SegmentReader::open(path, 0) {
        Ok(reader) => reader,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(summary),
        Err(error) => return Err(error),
    };
    summary.bytes = std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0);
    loop {
        let read_to = reader.offset();
        match reader.step()? {
            Step::Record(record) => {
                let (seq, at) = (record.seq, record.received_at);
                summary.records = Some(summary.records.map_or((seq, seq), |(first, _)| (first, seq)));
                summary.received = Some(summary.received.map_or((at, at), |(first, _)| (first, at)));
                if !each(record) {
                    return Ok(summary);
                }
            }
            Step::Damaged { offset, resumed_at } => {
                summary.damaged.push(Damage { segment: path.to_owned(), offset, bytes: resumed_at - offset });
            }
            Step::End => {
                // A live segment's room allocated ahead (or left by a crash) is not its size.
                if read_to < summary.bytes && segment::only_zeros_from(path, read_to)? {
                    summary.bytes = read_to;
                }
                return Ok(summary);
            }
        }
    }
}

/// The paths in directory `dir`; none when it is not there (nothing was saved in it yet).
pub fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|entry| entry.map(|entry| entry.path())).collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// The first record that arrived at or after `at`, if any did.
pub fn first_received_at_or_after(dir: &Path, at: SystemTime) -> io::Result<Option<u64>> {
    for (_, path) in segment_files(dir)? {
        let mut found = None;
        read_segment(&path, |record| {
            if record.received_at >= at {
                found = Some(record.seq);
                return false;
            }
            true
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The positions sinks saved in `dir/cursors`, by sink name.
pub fn saved_positions(dir: &Path) -> io::Result<Vec<(String, Option<u64>)>> {
    let mut positions = Vec::new();
    for path in files_in(&dir.join("cursors"))? {
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        positions.push((name.to_owned(), super::cursor::load(&path)?));
    }
    positions.sort();
    Ok(positions)
}
