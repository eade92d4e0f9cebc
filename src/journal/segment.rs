//! Segment files: their names, and reading records out of one, stepping over
//! damage instead of stopping at it.

use super::record::{self, Decoded, FRAME_HEADER_LEN, Record};
use bytes::Bytes;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const EXTENSION: &str = "seg";
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;

/// A segment is named after the sequence number of its first record, so the
/// names sort in journal order and an empty segment still tells where the
/// sequence goes on.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{EXTENSION}")
}

/// The first sequence number of a segment file, from its name.
pub fn first_seq_of(path: &Path) -> Option<u64> {
    if path.extension()? != EXTENSION {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(first) = first_seq_of(&path) {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// What the next read of a segment found.
#[derive(Debug)]
pub enum Step {
    Record(Record),
    /// No whole record at the offset (yet): the end of what is written.
    End,
    /// Bytes from `offset` to `resumed_at` are not records; reading goes on from `resumed_at`.
    Damaged {
        offset: u64,
        resumed_at: u64,
    },
}

/// Reads one segment's records in order, from any record's offset.
pub struct SegmentReader {
    file: File,
    /// Where `buffered` starts in the file.
    offset: u64,
    buffered: Bytes,
    /// Where the file's own cursor is (reads are sequential; a seek only when it is elsewhere).
    file_position: u64,
    /// The last read met the end of the file; cleared by each [`Self::next`],
    /// since a live segment grows.
    exhausted: bool,
    /// Nothing at or past this offset is read: the end of what the writer
    /// has published (bytes past it may be a failed append being taken back).
    limit: u64,
}

impl SegmentReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        Ok(SegmentReader {
            file: File::open(path)?,
            offset,
            buffered: Bytes::new(),
            file_position: 0,
            exhausted: false,
            limit: u64::MAX,
        })
    }

    /// Reads nothing at or past `limit` from now on.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Offset of the next record to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn step(&mut self) -> io::Result<Step> {
        self.exhausted = false;
        match self.decode_at(0)? {
            Some(Decoded::Record { record, len }) => {
                self.consume(len);
                Ok(Step::Record(record))
            }
            // Damage, or the end of what is written: only a whole record further on tells them apart.
            Some(Decoded::Corrupt | Decoded::Incomplete { .. }) | None => self.step_over_damage(),
        }
    }

    /// The frame `skip` bytes into the buffer, reading as much as it claims;
    /// None when the file ends before it does.
    fn decode_at(&mut self, skip: usize) -> io::Result<Option<Decoded>> {
        loop {
            let view = self.buffered.slice(skip.min(self.buffered.len())..);
            match record::decode(&view) {
                Decoded::Incomplete { needed } => {
                    if !self.fill(skip + needed)? {
                        return Ok(None);
                    }
                }
                decoded => return Ok(Some(decoded)),
            }
        }
    }

    /// Reads until `needed` bytes are buffered; false at the end of the file.
    fn fill(&mut self, needed: usize) -> io::Result<bool> {
        while self.buffered.len() < needed {
            if self.exhausted {
                return Ok(false);
            }
            // Records are handed out as slices of what is read, so a read goes
            // into a new buffer, after the (small) unread rest of the last one.
            // read_to_end fills the buffer's spare capacity without zeroing it first.
            let have = self.buffered.len();
            let at = self.offset + have as u64;
            let readable = self.limit.saturating_sub(at);
            if readable == 0 {
                return Ok(false);
            }
            let want = ((needed - have).max(READ_CHUNK) as u64).min(readable) as usize;
            if self.file_position != at {
                self.file.seek(SeekFrom::Start(at))?;
                self.file_position = at;
            }
            let mut grown = Vec::with_capacity(have + want);
            grown.extend_from_slice(&self.buffered);
            let read = (&self.file).take(want as u64).read_to_end(&mut grown)?;
            self.file_position += read as u64;
            self.buffered = Bytes::from(grown);
            if read == 0 {
                self.exhausted = true;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// At the offset there is no whole record. If one starts further on, the
    /// bytes up to it are damage and reading resumes there; if none does, this
    /// is the end of what is written (a record may be being written now).
    fn step_over_damage(&mut self) -> io::Result<Step> {
        let damaged_at = self.offset;
        let mut skip = 1;
        while skip + FRAME_HEADER_LEN <= self.buffered.len() || self.fill(skip + FRAME_HEADER_LEN)? {
            let zeros = self.buffered[skip..].iter().take_while(|byte| **byte == 0).count();
            if zeros >= 4 {
                // No record starts with four zero bytes (its length is at least
                // META_LEN): a run of zeros (a segment's room allocated ahead, or
                // blocks a crash left unwritten) is passed without a try at each
                // byte, and dropped from the buffer, which would otherwise grow to
                // hold the whole run.
                self.consume(skip + zeros - 3);
                skip = 0;
                continue;
            }
            if let Some(Decoded::Record { .. }) = self.decode_at(skip)? {
                self.consume(skip);
                return Ok(Step::Damaged { offset: damaged_at, resumed_at: self.offset });
            }
            skip += 1;
        }
        Ok(Step::End)
    }

    fn consume(&mut self, len: usize) {
        self.buffered = self.buffered.slice(len..);
        self.offset += len as u64;
    }
}

/// What a whole segment holds, read once at start-up.
#[derive(Debug, Default)]
pub struct Inventory {
    pub records: u64,
    pub last_seq: Option<u64>,
    /// Offset just past the last whole record.
    pub valid_end: u64,
    /// Damaged stretches, as (offset, resumed_at).
    pub damage: Vec<(u64, u64)>,
    /// The file goes on past `valid_end` with zeros only: room allocated
    /// ahead of the records (see `preallocate` in the journal), not a torn record.
    pub zero_tail: bool,
}

/// Reads every record of the segment at `path`.
pub fn take_inventory(path: &Path) -> io::Result<Inventory> {
    let mut reader = SegmentReader::open(path, 0)?;
    let mut inventory = Inventory::default();
    loop {
        match reader.step()? {
            Step::Record(record) => {
                inventory.records += 1;
                inventory.last_seq = Some(record.seq);
                inventory.valid_end = reader.offset();
            }
            Step::Damaged { offset, resumed_at } => {
                inventory.damage.push((offset, resumed_at));
            }
            Step::End => {
                inventory.zero_tail = only_zeros_from(path, inventory.valid_end)?;
                return Ok(inventory);
            }
        }
    }
}

/// True when the file at `path` has bytes from `offset` on, and all of them are zero.
pub fn only_zeros_from(path: &Path, offset: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    if file.metadata()?.len() <= offset {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        match file.read(&mut chunk)? {
            0 => return Ok(true),
            read if chunk[..read].iter().all(|byte| *byte == 0) => {}
            _ => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::OperationId;
    use crate::journal::record::NewRecord;
    use std::io::Write;

    fn write_records(path: &Path, seqs: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        let mut file = File::create(path).unwrap();
        let mut offsets = Vec::new();
        let mut offset = 0;
        for seq in seqs {
            let id = OperationId { value: format!("op-{seq}"), generated: false };
            let body = format!(r#"{{"n":{seq}}}"#);
            let new = NewRecord {
                kind: 0,
                received_at: std::time::SystemTime::now(),
                operation_id: &id,
                body: body.as_bytes(),
            };
            let head = new.encode_head(seq, crc32c::crc32c(body.as_bytes()));
            file.write_all(&head).unwrap();
            file.write_all(body.as_bytes()).unwrap();
            offsets.push(offset);
            offset += (head.len() + body.len()) as u64;
        }
        offsets
    }

    fn seqs(path: &Path) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut reader = SegmentReader::open(path, 0).unwrap();
        let (mut seqs, mut damage) = (Vec::new(), Vec::new());
        loop {
            match reader.step().unwrap() {
                Step::Record(record) => seqs.push(record.seq),
                Step::Damaged { offset, resumed_at } => damage.push((offset, resumed_at)),
                Step::End => return (seqs, damage),
            }
        }
    }

    #[test]
    fn names_sort_in_sequence_order_and_parse_back() {
        assert!(file_name(9) < file_name(10));
        assert_eq!(first_seq_of(Path::new(&file_name(1234))), Some(1234));
        assert_eq!(first_seq_of(Path::new("LOCK")), None);
    }

    #[test]
    fn damage_anywhere_in_a_record_costs_that_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let offsets = write_records(&path, 1..=5);
        let clean = std::fs::read(&path).unwrap();
        let third = offsets[2] as usize..offsets[3] as usize;
        for position in third.clone() {
            let mut bytes = clean.clone();
            bytes[position] ^= 0x55;
            std::fs::write(&path, &bytes).unwrap();
            let (seqs, damage) = seqs(&path);
            assert_eq!(seqs, vec![1, 2, 4, 5], "byte {position}");
            assert_eq!(damage, vec![(third.start as u64, third.end as u64)], "byte {position}");
        }
    }

    #[test]
    fn zeros_are_passed_without_a_try_at_each_byte_and_a_zero_tail_is_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let offsets = write_records(&path, 1..=2);
        let mut bytes = std::fs::read(&path).unwrap();
        // The second record's frame torn, then blocks a crash left unwritten, then a whole record.
        bytes.truncate(offsets[1] as usize + 5);
        bytes.resize(bytes.len() + 3 * READ_CHUNK + 7, 0);
        let third_at = bytes.len() as u64;
        std::fs::write(&path, &bytes).unwrap();
        write_records(&dir.path().join("third"), 3..=3);
        let third = std::fs::read(dir.path().join("third")).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&third).unwrap();
        // And room allocated ahead: 8 MiB of zeros.
        file.set_len(third_at + third.len() as u64 + (8 << 20)).unwrap();
        assert_eq!(seqs(&path), (vec![1, 3], vec![(offsets[1], third_at)]));
        let inventory = take_inventory(&path).unwrap();
        assert_eq!((inventory.records, inventory.valid_end), (2, third_at + third.len() as u64));
        assert!(inventory.zero_tail);
    }

    #[test]
    fn a_record_whose_first_bytes_are_zero_is_still_found_after_zeros() {
        // A length of 256 is written 00 01 00 00: three zeros before a record are not a run.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let id = OperationId { value: "op".to_owned(), generated: false };
        let body = vec![b'x'; 256 - crate::journal::record::META_LEN - 2];
        let new =
            NewRecord { kind: 0, received_at: std::time::SystemTime::now(), operation_id: &id, body: &body };
        let mut frame = new.encode_head(1, crc32c::crc32c(&body));
        frame.extend_from_slice(&body);
        assert_eq!(frame[..4], [0, 1, 0, 0]);
        let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&frame);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(seqs(&path), (vec![1], vec![(0, 9)]));
        assert!(!take_inventory(&path).unwrap().zero_tail);
    }

    #[test]
    fn a_torn_tail_ends_the_segment_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let offsets = write_records(&path, 1..=3);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(offsets[2] + 10).unwrap();
        let inventory = take_inventory(&path).unwrap();
        assert_eq!((inventory.records, inventory.last_seq, inventory.valid_end), (2, Some(2), offsets[2]));
        assert!(inventory.damage.is_empty());
    }
}
