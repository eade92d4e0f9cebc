//! The stats sink: counts of messages, people and conversations since start,
//! served by `GET /stats`. Counts are exact and held in memory.

use super::{Sink, SinkError};
use crate::message::{AfterSendSingleMsg, ReceivedMessage};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything counted so far.
#[derive(Debug, Default)]
pub struct MessageStats {
    total: u64,
    by_content_type: HashMap<crate::message::ContentType, u64>,
    by_platform: HashMap<crate::message::Platform, u64>,
    by_msg_from: HashMap<crate::message::MsgFrom, u64>,
    by_session_type: HashMap<crate::message::SessionType, u64>,
    by_status: HashMap<crate::message::MsgStatus, u64>,
    senders: HashSet<String>,
    receivers: HashSet<String>,
    people: HashSet<String>,
    /// Conversations as first person → second people (ordered pair, smaller id first),
    /// so a known conversation is found without allocating.
    conversations: HashMap<String, HashSet<String>>,
    conversation_count: u64,
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
        insert_new(&mut self.senders, &packet.send_id);
        insert_new(&mut self.receivers, &packet.recv_id);
        insert_new(&mut self.people, &packet.send_id);
        insert_new(&mut self.people, &packet.recv_id);
        let (first, second) = packet.conversation();
        let partners = match self.conversations.get_mut(first) {
            Some(partners) => partners,
            None => self.conversations.entry(first.to_owned()).or_default(),
        };
        if !partners.contains(second) {
            partners.insert(second.to_owned());
            self.conversation_count += 1;
        }
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
                senders: self.senders.len() as u64,
                receivers: self.receivers.len() as u64,
                total: self.people.len() as u64,
            },
            conversations: self.conversation_count,
            earliest_create_time: self.create_time.map(|(earliest, _)| earliest),
            latest_create_time: self.create_time.map(|(_, latest)| latest),
        }
    }
}

/// Inserts without allocating when the id is already known (the common case).
fn insert_new(set: &mut HashSet<String>, id: &str) {
    if !set.contains(id) {
        set.insert(id.to_owned());
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

/// Read access to the counts, for `GET /stats`.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Mutex<MessageStats>>);

impl StatsHandle {
    pub fn report(&self) -> MessageReport {
        self.lock().report()
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
