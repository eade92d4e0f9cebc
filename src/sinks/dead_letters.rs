//! A sink's dead letters: the records it gave up on (a permanent refusal by
//! its target, or `max_attempts` failures), each with its sequence number,
//! when, how many attempts and the last error, in
//! `<journal.dir>/dead-letters/<sink>.jsonl`, one JSON line each (a later line
//! of the same record replaces an earlier one, so a new dead letter is one
//! appended line, whatever the list's length). The sink goes on with the records
//! behind them; the journal keeps a dead letter's record (it holds the journal
//! at its oldest one, like a position) until it is retried or dropped.

use crate::journal::{Consumer, cursor};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The record's sequence number in the journal.
    pub seq: u64,
    /// When it was given up, RFC 3339 in UTC.
    pub failed_at: String,
    pub attempts: u32,
    pub error: String,
    #[serde(rename = "serverMsgID")]
    pub server_msg_id: String,
    #[serde(rename = "operationID")]
    pub operation_id: String,
    pub callback_command: String,
}

/// One sink's dead letters, kept in memory and on disk alike.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    letters: Mutex<Vec<DeadLetter>>,
    /// Holds the journal at the oldest dead letter's record.
    hold: Consumer,
}

/// The file of `sink`'s dead letters in `journal_dir`.
pub fn path(journal_dir: &Path, sink: &str) -> PathBuf {
    journal_dir.join("dead-letters").join(format!("{sink}.jsonl"))
}

impl DeadLetters {
    /// The dead letters saved at `path` (none when there is no file), holding
    /// the journal through `hold` (registered at the journal's oldest record).
    pub fn open(path: PathBuf, hold: Consumer) -> io::Result<Self> {
        let mut letters: Vec<DeadLetter> = Vec::new();
        for letter in read_lines(&path)? {
            letters.retain(|kept| kept.seq != letter.seq);
            letters.push(letter);
        }
        letters.sort_by_key(|letter| letter.seq);
        let dead = DeadLetters { path, letters: Mutex::new(letters), hold };
        dead.hold_journal(&dead.lock());
        Ok(dead)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DeadLetter>> {
        self.letters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The journal keeps records from the oldest dead letter on; all of them with none.
    fn hold_journal(&self, letters: &[DeadLetter]) {
        self.hold.saved(letters.iter().map(|letter| letter.seq).min().unwrap_or(u64::MAX));
    }

    /// Rewrites the file with `letters` (atomically: a crash leaves the old list or the new one).
    fn save(&self, letters: &[DeadLetter]) -> io::Result<()> {
        if let Some(directory) = self.path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        let mut bytes = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut bytes, letter).map_err(io::Error::other)?;
            bytes.push(b'\n');
        }
        cursor::write_atomically(&self.path, &bytes)
    }

    /// Adds `letter` (replacing an earlier one of the same record): one line
    /// appended and synced before the sink goes on past its record.
    pub fn add(&self, letter: DeadLetter) -> io::Result<()> {
        use std::io::Write;
        let mut line = serde_json::to_vec(&letter).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut letters = self.lock();
        if let Some(directory) = self.path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()?;
        letters.retain(|kept| kept.seq != letter.seq);
        letters.push(letter);
        letters.sort_by_key(|letter| letter.seq);
        self.hold_journal(&letters);
        Ok(())
    }

    pub fn list(&self) -> Vec<DeadLetter> {
        self.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Takes out the letters `seq` names (all of them for None); the ones taken.
    pub fn take(&self, seq: Option<u64>) -> io::Result<Vec<DeadLetter>> {
        let mut letters = self.lock();
        let (taken, kept): (Vec<DeadLetter>, Vec<DeadLetter>) =
            letters.iter().cloned().partition(|letter| seq.is_none_or(|seq| letter.seq == seq));
        // Saved first: a list that cannot be saved stays as it was, in memory too.
        self.save(&kept)?;
        *letters = kept;
        self.hold_journal(&letters);
        Ok(taken)
    }
}

/// The dead letters in the file at `path`, line by line, as written (none
/// when there is no file). A torn last line (a crash mid-append) is left out.
pub fn read_lines(path: &Path) -> io::Result<Vec<DeadLetter>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let mut letters = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(letter) => letters.push(letter),
            Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(error) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {error}", path.display(), index + 1),
                ));
            }
        }
    }
    Ok(letters)
}
