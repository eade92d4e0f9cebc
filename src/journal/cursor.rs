//! Where each sink is in the journal: one small file per sink under
//! `<journal.dir>/cursors/`, holding the sequence number of the next record
//! the sink has not finished.
//!
//! The file is rewritten in place, never replaced: a save must work on a disk
//! that is full to the last byte (a new temp file would fail with ENOSPC, and
//! then no segment would ever be deleted to free space). It has two fixed
//! slots written in turn, each with a generation and a checksum, so a crash
//! in the middle of a write leaves the other slot, the previous position:
//!
//! ```text
//! slot = "OCUR" version:u8=1 0 0 0 generation:u64le next:u64le crc32c:u32le 0 0 0 0   (32 bytes)
//! file = slot slot                                                                    (64 bytes)
//! ```
//! The release before this one wrote the position as decimal text ("42\n"),
//! replaced atomically; that is still read, and rewritten in this form at the
//! next save.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"OCUR";
const VERSION: u8 = 1;
const SLOT_LEN: usize = 32;
const FILE_LEN: usize = 2 * SLOT_LEN;

pub fn path(journal_dir: &Path, sink: &str) -> PathBuf {
    journal_dir.join("cursors").join(sink)
}

/// A sink's cursor file, open for saving.
#[derive(Debug)]
pub struct CursorFile {
    file: File,
    path: PathBuf,
    /// Generation of the last slot written; the next save writes the other slot.
    generation: u64,
}

impl CursorFile {
    /// Opens the cursor at `path`, creating it (with both slots allocated, so
    /// later saves need no free space) if missing; returns it with the saved
    /// position, None when there is none yet.
    pub fn open(path: &Path) -> io::Result<(Self, Option<u64>)> {
        if let Some(directory) = path.parent() {
            fs::create_dir_all(directory)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (generation, next) = match decode(&bytes) {
            Decoded::Slots(Some((generation, next))) => (generation, Some(next)),
            Decoded::Slots(None) => (0, None),
            Decoded::Text(next) => (0, Some(next)),
            Decoded::Unreadable => {
                tracing::error!(path = %path.display(), "unreadable sink cursor: the sink starts at the oldest record");
                (0, None)
            }
        };
        if bytes.len() < FILE_LEN {
            // Whole slots, written now while there is room: later writes overwrite them in place.
            let mut padded = bytes.clone();
            padded.resize(FILE_LEN, 0);
            if matches!(decode(&bytes), Decoded::Text(_)) {
                // Keep the text readable until the first save replaces it.
                file.write_all_at(&padded[bytes.len()..], bytes.len() as u64)?;
            } else {
                file.write_all_at(&padded, 0)?;
            }
            file.sync_data()?;
            if bytes.is_empty() {
                sync_directory(path)?;
            }
        }
        let cursor = CursorFile { file, path: path.to_owned(), generation };
        Ok((cursor, next))
    }

    /// Saves `next` in place and fdatasyncs it.
    pub fn save(&mut self, next: u64) -> io::Result<()> {
        let generation = self.generation + 1;
        let mut slot = [0u8; SLOT_LEN];
        slot[..4].copy_from_slice(MAGIC);
        slot[4] = VERSION;
        slot[8..16].copy_from_slice(&generation.to_le_bytes());
        slot[16..24].copy_from_slice(&next.to_le_bytes());
        let crc = crc32c::crc32c(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        let offset = (generation % 2) as usize * SLOT_LEN;
        self.file.write_all_at(&slot, offset as u64)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

enum Decoded {
    /// The newest valid slot's (generation, next), None when no slot is valid yet.
    Slots(Option<(u64, u64)>),
    /// The previous release's decimal text.
    Text(u64),
    Unreadable,
}

fn decode(bytes: &[u8]) -> Decoded {
    if bytes.is_empty() || bytes.iter().all(|byte| *byte == 0) {
        return Decoded::Slots(None);
    }
    if !bytes.starts_with(MAGIC) && !bytes.get(SLOT_LEN..).is_some_and(|rest| rest.starts_with(MAGIC)) {
        let text = String::from_utf8_lossy(bytes);
        return match text.trim_matches(|c: char| c.is_whitespace() || c == '\0').parse() {
            Ok(next) => Decoded::Text(next),
            Err(_) => Decoded::Unreadable,
        };
    }
    let newest =
        bytes.chunks_exact(SLOT_LEN).filter_map(decode_slot).max_by_key(|(generation, _)| *generation);
    match newest {
        Some(found) => Decoded::Slots(Some(found)),
        None => Decoded::Unreadable,
    }
}

fn decode_slot(slot: &[u8]) -> Option<(u64, u64)> {
    if &slot[..4] != MAGIC || slot[4] != VERSION {
        return None;
    }
    let crc = u32::from_le_bytes(slot[24..28].try_into().ok()?);
    if crc32c::crc32c(&slot[..24]) != crc {
        return None;
    }
    let generation = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let next = u64::from_le_bytes(slot[16..24].try_into().ok()?);
    Some((generation, next))
}

/// The saved position at `path`, read only (None when there is none or it
/// cannot be read: the sink then starts at the oldest record, at-least-once).
pub fn load(path: &Path) -> io::Result<Option<u64>> {
    match fs::read(path) {
        Ok(bytes) => Ok(match decode(&bytes) {
            Decoded::Slots(found) => found.map(|(_, next)| next),
            Decoded::Text(next) => Some(next),
            Decoded::Unreadable => None,
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces `path` with `bytes`: a crash leaves the old file or the new one,
/// and once this returns the new one is durable, its name included.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(directory)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    fs::rename(&temporary, path)?;
    sync_directory(path)
}

/// A new or renamed file's name is durable only once its directory is.
fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_through_both_slots_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let cursor_path = path(dir.path(), "log");
        let (mut cursor, saved) = CursorFile::open(&cursor_path).unwrap();
        assert_eq!(saved, None);
        for next in [42, 43, 1_000_000] {
            cursor.save(next).unwrap();
            assert_eq!(load(&cursor_path).unwrap(), Some(next));
            assert_eq!(CursorFile::open(&cursor_path).unwrap().1, Some(next));
        }
        assert_eq!(fs::metadata(&cursor_path).unwrap().len(), FILE_LEN as u64, "a fixed size, in place");
        fs::write(&cursor_path, "forty-two").unwrap();
        assert_eq!(load(&cursor_path).unwrap(), None);
    }

    #[test]
    fn a_torn_write_of_one_slot_leaves_the_previous_position() {
        let dir = tempfile::tempdir().unwrap();
        let cursor_path = path(dir.path(), "log");
        let (mut cursor, _) = CursorFile::open(&cursor_path).unwrap();
        cursor.save(10).unwrap();
        cursor.save(20).unwrap();
        // Generation 2 went to slot 0: tear it.
        let mut bytes = fs::read(&cursor_path).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&cursor_path, &bytes).unwrap();
        assert_eq!(load(&cursor_path).unwrap(), Some(10));
    }

    #[test]
    fn the_previous_releases_text_cursor_is_read_and_then_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cursor_path = path(dir.path(), "log");
        fs::create_dir_all(cursor_path.parent().unwrap()).unwrap();
        fs::write(&cursor_path, "12345\n").unwrap();
        assert_eq!(load(&cursor_path).unwrap(), Some(12345));
        let (mut cursor, saved) = CursorFile::open(&cursor_path).unwrap();
        assert_eq!(saved, Some(12345));
        assert_eq!(load(&cursor_path).unwrap(), Some(12345), "still readable before the first save");
        cursor.save(12346).unwrap();
        assert_eq!(load(&cursor_path).unwrap(), Some(12346));
    }
}
