//! The stats sink: counts of messages, people and conversations, served by
//! `GET /stats`. Distinct counts are exact while small and bounded in memory
//! past that (`distinct`); the state is snapshotted to disk and restored at
//! start (`snapshot`), so counts continue across restarts.

pub mod distinct;
pub mod snapshot;

use super::{Sink, SinkError};
use crate::message::{AfterSendSingleMsg, ReceivedMessage};
use distinct::{Distinct, hash_of, hash_of_pair};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything counted so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    total: u64,
    by_content_type: HashMap<crate::message::ContentType, u64>,
    by_platform: HashMap<crate::message::Platform, u64>,
    by_msg_from: HashMap<crate::message::MsgFrom, u64>,
    by_session_type: HashMap<crate::message::SessionType, u64>,
    by_status: HashMap<crate::message::MsgStatus, u64>,
    senders: Distinct,
    receivers: Distinct,
    /// Either role.
    people: Distinct,
    /// Unordered sendID/recvID pairs.
    conversations: Distinct,
    create_time: Option<(i64, i64)>,
}

impl MessageStats {
    pub fn record(&mut self, packet: &AfterSendSingleMsg) {
        self.total += 1;
        *self.by_content_type.entry(packet.content_type).or_default() += 1;
        *self.by_platform.entry(packet.sender_platform_id).or_default() += 1;
        *self.by_msg_from.entry(packet.msg_from).or_default() += 1;
        *self.by_session_type.entry(packet.session_type).or_default() += 1;
        *self.by_status.entry(packet.status).or_default() += 1;
        let (sender, receiver) = (hash_of(&packet.send_id), hash_of(&packet.recv_id));
        self.senders.insert(sender);
        self.receivers.insert(receiver);
        self.people.insert(sender);
        self.people.insert(receiver);
        self.conversations.insert(hash_of_pair(&packet.send_id, &packet.recv_id));
        let at = packet.create_time;
        self.create_time = Some(match self.create_time {
            None => (at, at),
            Some((earliest, latest)) => (earliest.min(at), latest.max(at)),
        });
    }

    pub fn report(&self) -> MessageReport {
        MessageReport {
            messages: MessageCounts {
                total: self.total,
                by_content_type: labelled(&self.by_content_type, |c| c.label().into_owned()),
                by_platform: labelled(&self.by_platform, |c| c.label().into_owned()),
                by_msg_from: labelled(&self.by_msg_from, |c| c.label().into_owned()),
                by_session_type: labelled(&self.by_session_type, |c| c.label().into_owned()),
                by_status: labelled(&self.by_status, |c| c.label().into_owned()),
            },
            people: PeopleCounts {
                senders: self.senders.count(),
                receivers: self.receivers.count(),
                total: self.people.count(),
            },
            conversations: self.conversations.count(),
            distinct_counts_exact: [&self.senders, &self.receivers, &self.people, &self.conversations]
                .iter()
                .all(|distinct| distinct.is_exact()),
            earliest_create_time: self.create_time.map(|(earliest, _)| earliest),
            latest_create_time: self.create_time.map(|(_, latest)| latest),
        }
    }
}

impl MessageStats {
    /// Heap bytes held by the distinct counters (the part that grows with traffic).
    pub fn heap_bytes(&self) -> usize {
        [&self.senders, &self.receivers, &self.people, &self.conversations]
            .iter()
            .map(|d| d.heap_bytes())
            .sum()
    }
}

fn labelled<K: Eq + Hash>(counts: &HashMap<K, u64>, label: impl Fn(&K) -> String) -> BTreeMap<String, u64> {
    counts.iter().map(|(code, count)| (label(code), *count)).collect()
}

/// What `GET /stats` shows of the messages.
#[derive(Debug, Serialize)]
pub struct MessageReport {
    pub messages: MessageCounts,
    pub people: PeopleCounts,
    /// Distinct unordered sendID/recvID pairs.
    pub conversations: u64,
    /// False once any distinct count is an estimate (past 10,000 items; within 1%).
    pub distinct_counts_exact: bool,
    /// Smallest and largest `createTime` seen, in ms since the epoch.
    pub earliest_create_time: Option<i64>,
    pub latest_create_time: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct MessageCounts {
    pub total: u64,
    pub by_content_type: BTreeMap<String, u64>,
    pub by_platform: BTreeMap<String, u64>,
    pub by_msg_from: BTreeMap<String, u64>,
    pub by_session_type: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct PeopleCounts {
    pub senders: u64,
    pub receivers: u64,
    /// Distinct people in either role.
    pub total: u64,
}

/// The counts to start from: the snapshot's, when there is a readable one.
pub fn restore_counts(settings: &crate::settings::StatsSettings) -> std::io::Result<StatsHandle> {
    let Some(path) = settings.snapshot_path() else {
        return Ok(StatsHandle::default());
    };
    let stats = match snapshot::restore(path)? {
        snapshot::Restored::Nothing => MessageStats::default(),
        snapshot::Restored::Counts(stats) => {
            let stats = *stats;
            tracing::info!(path = %path.display(), messages = stats.total, "stats restored from the snapshot");
            stats
        }
        snapshot::Restored::MovedAside { moved_to, reason } => {
            tracing::error!(path = %path.display(), moved_to = %moved_to.display(), reason,
                "stats snapshot unreadable: moved aside, counting starts empty");
            MessageStats::default()
        }
    };
    Ok(StatsHandle::new(stats))
}

/// Saves the counts to `path`, off the async runtime; errors are logged.
pub async fn save_snapshot(stats: &StatsHandle, path: &std::path::Path) {
    let (copy, path) = (stats.copy(), path.to_owned());
    let written =
        tokio::task::spawn_blocking(move || snapshot::write(&path, &copy).map_err(|e| (path, e))).await;
    if let Ok(Err((path, error))) = written {
        tracing::error!(path = %path.display(), %error, "cannot save the stats snapshot");
    }
}

/// Read access to the counts, for `GET /stats`.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Mutex<MessageStats>>);

impl StatsHandle {
    pub fn new(stats: MessageStats) -> Self {
        StatsHandle(Arc::new(Mutex::new(stats)))
    }

    pub fn report(&self) -> MessageReport {
        self.lock().report()
    }

    /// A copy of the counts, for a snapshot.
    pub fn copy(&self) -> MessageStats {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, MessageStats> {
        // Counting cannot leave the counts half-updated in a way worth refusing to read.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct StatsSink {
    stats: StatsHandle,
}

impl StatsSink {
    pub fn new() -> Self {
        StatsSink { stats: StatsHandle::default() }
    }

    /// A sink that continues from `handle`'s counts (restored from a snapshot).
    pub fn continuing(handle: StatsHandle) -> Self {
        StatsSink { stats: handle }
    }

    pub fn handle(&self) -> StatsHandle {
        self.stats.clone()
    }
}

impl Default for StatsSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StatsSink {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn deliver(&mut self, message: &ReceivedMessage) -> Result<(), SinkError> {
        self.stats.lock().record(&message.packet);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(send: &str, recv: &str, content_type: i32, create_time: i64) -> AfterSendSingleMsg {
        AfterSendSingleMsg {
            send_id: send.into(),
            recv_id: recv.into(),
            content_type: crate::message::ContentType(content_type),
            create_time,
            ..Default::default()
        }
    }

    #[test]
    fn counts_people_in_either_role_and_conversations_in_either_direction() {
        let mut stats = MessageStats::default();
        stats.record(&packet("alice", "bob", 101, 20));
        stats.record(&packet("bob", "alice", 101, 10));
        stats.record(&packet("alice", "carol", 9999, 30));
        let report = stats.report();
        assert_eq!(report.messages.total, 3);
        assert_eq!(report.messages.by_content_type["text"], 2);
        assert_eq!(report.messages.by_content_type["9999"], 1);
        assert_eq!((report.people.senders, report.people.receivers, report.people.total), (2, 3, 3));
        assert_eq!(report.conversations, 2);
        assert_eq!((report.earliest_create_time, report.latest_create_time), (Some(10), Some(30)));
    }
}
