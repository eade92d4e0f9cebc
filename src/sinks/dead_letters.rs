//! A sink's dead letters: the records it gave up on (a permanent refusal by
//! its target, or `max_attempts` failures), each with its sequence number,
//! when, how many attempts and the last error, in
//! `<journal.dir>/dead-letters/<sink>.json`. The sink goes on with the records
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
    journal_dir.join("dead-letters").join(format!("{sink}.json"))
}

impl DeadLetters {
    /// The dead letters saved at `path` (none when there is no file), holding
    /// the journal through `hold` (registered at the journal's oldest record).
    pub fn open(path: PathBuf, hold: Consumer) -> io::Result<Self> {
        let letters: Vec<DeadLetter> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {error}", path.display()))
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
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

    /// Rewrites the file (atomically: a crash leaves the old list or the new one).
    fn save(&self, letters: &[DeadLetter]) -> io::Result<()> {
        if let Some(directory) = self.path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        let bytes = serde_json::to_vec_pretty(letters).map_err(io::Error::other)?;
        cursor::write_atomically(&self.path, &bytes)
    }

    /// Adds `letter` (replacing an earlier one of the same record).
    pub fn add(&self, letter: DeadLetter) -> io::Result<()> {
        let mut letters = self.lock();
        letters.retain(|kept| kept.seq != letter.seq);
        letters.push(letter);
        letters.sort_by_key(|letter| letter.seq);
        self.hold_journal(&letters);
        self.save(&letters)
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
