//! The stats state on disk, so counts continue across restarts.
//!
//! A snapshot is written atomically: to a temporary file beside it, fsynced,
//! renamed over the old one, and the directory fsynced. The file starts with
//! a magic and a format version, then the journal position the state
//! includes (the next record to count), then the state in postcard (a
//! compact, specified serde format), then (version 3 on) the counts of group
//! chats, saves and revokes in postcard too: postcard has no optional fields,
//! so what is new goes after what an older release wrote, and a version-2
//! file reads with those counts at zero. Version 1, from before the journal,
//! had no position. A snapshot that cannot be read is never
//! overwritten: it is moved aside with a timestamp suffix, and counting
//! starts empty.

use super::MessageStats;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"OIMSTATS";
/// Bumped whenever the file's shape changes; unknown versions are moved aside.
const FORMAT_VERSION: u32 = 3;
/// Counts without those of groups, saves and revokes.
const FORMAT_VERSION_WITHOUT_KINDS: u32 = 2;
/// Counts without a journal position, written before the journal existed.
const FORMAT_VERSION_WITHOUT_POSITION: u32 = 1;

/// What start-up found at the snapshot path.
#[derive(Debug)]
pub enum Restored {
    /// No snapshot yet: start empty.
    Nothing,
    Counts {
        stats: Box<MessageStats>,
        /// The journal record after the last one counted; None in a version-1 file.
        next_seq: Option<u64>,
    },
    /// The file could not be read as a snapshot; it now lives at `moved_to`.
    MovedAside { moved_to: PathBuf, reason: String },
}

pub fn write(path: &Path, stats: &MessageStats, next_seq: u64) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(64 * 1024);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&next_seq.to_le_bytes());
    let bytes = postcard::to_extend(stats, bytes).map_err(io::Error::other)?;
    let bytes = postcard::to_extend(&stats.kinds, bytes).map_err(io::Error::other)?;
    crate::journal::cursor::write_atomically(path, &bytes)
}

/// Reads the snapshot at `path`. Err only when a bad snapshot could not be
/// moved aside: then start-up must stop rather than overwrite it later.
pub fn restore(path: &Path) -> io::Result<Restored> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Restored::Nothing),
        Err(error) => return move_aside(path, format!("unreadable: {error}")),
    };
    match decode(&bytes) {
        Ok((stats, next_seq)) => Ok(Restored::Counts { stats: Box::new(stats), next_seq }),
        Err(reason) => move_aside(path, reason),
    }
}

fn decode(bytes: &[u8]) -> Result<(MessageStats, Option<u64>), String> {
    let rest = bytes.strip_prefix(MAGIC).ok_or("not a stats snapshot (no magic)")?;
    let (version, rest) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
    let version = u32::from_le_bytes(*version);
    let (next_seq, state) = match version {
        FORMAT_VERSION | FORMAT_VERSION_WITHOUT_KINDS => {
            let (next_seq, state) = rest.split_first_chunk::<8>().ok_or("truncated header")?;
            (Some(u64::from_le_bytes(*next_seq)), state)
        }
        FORMAT_VERSION_WITHOUT_POSITION => (None, rest),
        version => return Err(format!("format version {version}, this build reads {FORMAT_VERSION}")),
    };
    let corrupt = |error: postcard::Error| format!("corrupt: {error}");
    if version != FORMAT_VERSION {
        let stats = postcard::from_bytes(state).map_err(corrupt)?;
        return Ok((stats, next_seq));
    }
    let (mut stats, kinds): (MessageStats, _) = postcard::take_from_bytes(state).map_err(corrupt)?;
    stats.kinds = postcard::from_bytes(kinds).map_err(corrupt)?;
    Ok((stats, next_seq))
}

fn move_aside(path: &Path, reason: String) -> io::Result<Restored> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let mut moved_to = path.as_os_str().to_owned();
    moved_to.push(format!(".unreadable-{stamp}"));
    let moved_to = PathBuf::from(moved_to);
    fs::rename(path, &moved_to).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "snapshot {} is unreadable ({reason}) and cannot be moved aside: {error}",
                path.display()
            ),
        )
    })?;
    Ok(Restored::MovedAside { moved_to, reason })
}

#[cfg(test)]
mod tests {
    use super::super::KindCounts;
    use super::*;
    use crate::callbacks::MessagePacket;

    /// `messages` messages, every third of them a group's, and a revoke and a save.
    fn counted(messages: usize) -> MessageStats {
        let mut stats = MessageStats::default();
        for index in 0..messages {
            let mut packet = MessagePacket {
                send_id: format!("user-{index}"),
                recv_id: "bob".into(),
                content_type: crate::callbacks::ContentType(101),
                create_time: crate::epoch::millis(std::time::SystemTime::now()),
                ..Default::default()
            };
            if index % 3 == 0 {
                (packet.recv_id, packet.group_id) = (String::new(), format!("group-{}", index % 7));
            }
            stats.record(&packet, std::time::SystemTime::now(), &Default::default());
        }
        stats.kinds.revoked = 1;
        stats.kinds.saved_to_database = 2;
        stats
    }

    #[test]
    fn a_snapshot_round_trips_exact_and_estimated_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/stats.snapshot");
        for (stats, next_seq) in [(counted(3), 4), (counted(12_000), 12_001)] {
            write(&path, &stats, next_seq).unwrap();
            match restore(&path).unwrap() {
                Restored::Counts { stats: restored, next_seq: restored_seq } => {
                    assert_eq!(*restored, stats);
                    assert_eq!(restored_seq, Some(next_seq));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!path.with_extension("snapshot-tmp").exists(), "no temporary file left behind");
    }

    #[test]
    fn a_version_1_snapshot_from_before_the_journal_still_restores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.snapshot");
        let stats = counted(5);
        let mut bytes = b"OIMSTATS\x01\x00\x00\x00".to_vec();
        bytes.extend(postcard::to_allocvec(&stats).unwrap());
        fs::write(&path, bytes).unwrap();
        match restore(&path).unwrap() {
            Restored::Counts { stats: restored, next_seq } => {
                let without_kinds = MessageStats { kinds: Default::default(), ..stats };
                assert_eq!((*restored, next_seq), (without_kinds, None))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_version_2_snapshot_from_before_groups_restores_with_those_counts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.snapshot");
        let stats = counted(5);
        let mut bytes = b"OIMSTATS\x02\x00\x00\x00".to_vec();
        bytes.extend_from_slice(&6u64.to_le_bytes());
        bytes.extend(postcard::to_allocvec(&stats).unwrap());
        fs::write(&path, bytes).unwrap();
        let Restored::Counts { stats: restored, next_seq } = restore(&path).unwrap() else { panic!() };
        assert_eq!(next_seq, Some(6));
        assert_eq!(restored.report(std::time::SystemTime::now()).messages.total, 5);
        assert_eq!(restored.kinds, KindCounts::default());
        assert_ne!(stats.kinds, KindCounts::default(), "the counts a version-3 file keeps");
    }

    #[test]
    fn an_unreadable_snapshot_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.snapshot");
        fs::write(&path, b"OIMSTATS\x02\x00\x00\x00seq-8bytegarbage").unwrap();
        match restore(&path).unwrap() {
            Restored::MovedAside { moved_to, reason } => {
                assert!(reason.contains("corrupt"), "{reason}");
                assert_eq!(fs::read(&moved_to).unwrap(), b"OIMSTATS\x02\x00\x00\x00seq-8bytegarbage");
                assert!(!path.exists());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(restore(&path).unwrap(), Restored::Nothing));
    }
}
