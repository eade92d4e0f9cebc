//! Where each sink is in the journal: one small file per sink under
//! `<journal.dir>/cursors/`, holding the sequence number of the next record
//! the sink has not finished. Replaced atomically (temp file, fsync, rename),
//! so a crash leaves the old cursor or the new one, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub fn path(journal_dir: &Path, sink: &str) -> PathBuf {
    journal_dir.join("cursors").join(sink)
}

/// The saved position, None when there is none yet. A file that does not
/// hold a number is reported and read as none: the sink then starts at the
/// oldest record (at-least-once), rather than the receiver refusing to start.
pub fn load(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => match text.trim().parse() {
            Ok(next) => Ok(Some(next)),
            Err(_) => {
                tracing::error!(path = %path.display(), "unreadable sink cursor: the sink starts at the oldest record");
                Ok(None)
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

pub fn save(path: &Path, next: u64) -> io::Result<()> {
    write_atomically(path, format!("{next}\n").as_bytes())
}

/// Replaces `path` with `bytes`: a crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(directory)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = path(dir.path(), "log");
        assert_eq!(load(&cursor).unwrap(), None);
        save(&cursor, 42).unwrap();
        assert_eq!(load(&cursor).unwrap(), Some(42));
        fs::write(&cursor, "forty-two").unwrap();
        assert_eq!(load(&cursor).unwrap(), None);
    }
}
