//! The stats sink: counts of messages, people and conversations, served by
//! `GET /stats`. Distinct counts are exact while small and bounded in memory
//! past that (`distinct`); the state is snapshotted to disk and restored at
//! start (`snapshot`), so counts continue across restarts.

pub mod contribution;
pub mod daily;
pub mod distinct;
pub mod fleet;
pub mod settings;
pub mod snapshot;

use super::{Entry, Progress, Sink, SinkError};
use crate::callbacks::{MessagePacket, ReceivedMessage, Role};
use contribution::{Contribution, Sent};
use daily::{Calendar, DailyWindows, DayReport, MinuteRates, MinuteReport};
use distinct::Distinct;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// Counts per code. Hashed by foldhash, not std's SipHash: SipHash was a
/// sixth of the stats sink's work per message, and these maps are capped
/// (`count_code`), so a caller inventing keys cannot make them long.
pub(crate) type CodeCounts<K> = std::collections::HashMap<K, u64, foldhash::fast::RandomState>;
/// A set of 64-bit hashes (each already an xxh3 of an id), hashed by foldhash as well.
pub(crate) type HashesSet = std::collections::HashSet<u64, foldhash::fast::RandomState>;

/// Everything counted so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    total: u64,
    by_content_type: CodeCounts<crate::callbacks::ContentType>,
    by_platform: CodeCounts<crate::callbacks::Platform>,
    by_msg_from: CodeCounts<crate::callbacks::MsgFrom>,
    by_session_type: CodeCounts<crate::callbacks::SessionType>,
    by_status: CodeCounts<crate::callbacks::MsgStatus>,
    senders: Distinct,
    receivers: Distinct,
    /// Either role.
    people: Distinct,
    /// Unordered sendID/recvID pairs.
    conversations: Distinct,
    create_time: Option<(i64, i64)>,
    daily: DailyWindows,
    per_minute: MinuteRates,
    /// Saved apart in the snapshot (see `snapshot`), after what older releases wrote.
    #[serde(skip)]
    pub(crate) kinds: KindCounts,
}

/// What came with group chats and the callbacks that are not messages sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindCounts {
    groups: Distinct,
    /// Per kept day (the days of `MessageStats::daily`).
    groups_by_day: BTreeMap<i64, Distinct>,
    /// afterMsgSaveDB callbacks: messages OpenIM wrote to its database.
    saved_to_database: u64,
    /// afterRevokeMsg callbacks.
    revoked: u64,
}

impl MessageStats {
    /// Counts one callback as [`Contribution`] says.
    pub fn record_callback(&mut self, message: &ReceivedMessage, calendar: &Calendar) {
        match Contribution::of(message, calendar) {
            Some(Contribution::Sent(sent)) => self.record_sent(&sent, calendar),
            Some(Contribution::SavedToDatabase) => self.kinds.saved_to_database += 1,
            Some(Contribution::Revoked) => self.kinds.revoked += 1,
            None => {}
        }
    }

    /// Counts one message sent, received at `received_at`.
    pub fn record(&mut self, packet: &MessagePacket, received_at: SystemTime, calendar: &Calendar) {
        self.record_sent(&Sent::new(packet, crate::epoch::millis(received_at), calendar), calendar);
    }

    /// Counts a message sent into the totals, its day and its minute.
    fn record_sent(&mut self, sent: &Sent<'_>, calendar: &Calendar) {
        use crate::callbacks::{ContentType, MsgFrom, MsgStatus, Platform, SessionType};
        let (packet, who) = (sent.packet, &sent.who);
        self.total += 1;
        count_code(&mut self.by_content_type, packet.content_type, ContentType::OTHER);
        count_code(&mut self.by_platform, packet.sender_platform_id, Platform::OTHER);
        count_code(&mut self.by_msg_from, packet.msg_from, MsgFrom::OTHER);
        count_code(&mut self.by_session_type, packet.session_type, SessionType::OTHER);
        count_code(&mut self.by_status, packet.status, MsgStatus::OTHER);
        self.senders.insert(who.sender);
        self.people.insert(who.sender);
        if let Some(receiver) = who.receiver {
            self.receivers.insert(receiver);
            self.people.insert(receiver);
        }
        self.conversations.insert(who.conversation);
        self.daily.record(sent, calendar);
        if let Some(group) = who.group {
            self.kinds.groups.insert(group);
            if let Some(day) = sent.day {
                self.kinds.groups_by_day.entry(day).or_default().insert(group);
                let daily = &self.daily;
                self.kinds.groups_by_day.retain(|day, _| daily.keeps(*day));
            }
        }
        self.per_minute.record(sent.received_ms);
        contribution::widen(&mut self.create_time, packet.create_time);
    }

    pub fn report(&self, now: SystemTime) -> MessageReport {
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
            groups: self.kinds.groups.count(),
            saved_to_database: self.kinds.saved_to_database,
            revoked: self.kinds.revoked,
            distinct_counts_exact: [
                &self.senders,
                &self.receivers,
                &self.people,
                &self.conversations,
                &self.kinds.groups,
            ]
            .iter()
            .all(|distinct| distinct.is_exact()),
            earliest_create_time: self.create_time.map(|(earliest, _)| earliest),
            latest_create_time: self.create_time.map(|(_, latest)| latest),
            out_of_window: self.daily.out_of_window(),
            messages_per_minute: self.per_minute.report(crate::epoch::millis(now)),
        }
    }

    pub fn daily(&self, from: Option<i64>, to: Option<i64>) -> Vec<DayReport> {
        let groups = &self.kinds.groups_by_day;
        self.daily.report(from, to, |day| groups.get(&day).map_or(0, Distinct::count))
    }
}

fn labelled<K: Eq + Hash>(counts: &CodeCounts<K>, label: impl Fn(&K) -> String) -> BTreeMap<String, u64> {
    fold_unknown_codes(counts.iter().map(|(code, count)| (label(code), *count)).collect())
}

/// Distinct codes counted by number, per field (OpenIM defines about 60
/// content types); a code past them is counted as `other`, so a caller
/// inventing codes cannot grow the counts, or the snapshot, without bound.
pub const MAX_KEPT_CODES: usize = 256;

/// Counts one `code`, or `other` once [`MAX_KEPT_CODES`] distinct codes are kept.
pub(crate) fn count_code<K: Copy + Eq + Hash>(counts: &mut CodeCounts<K>, code: K, other: K) {
    if let Some(count) = counts.get_mut(&code) {
        *count += 1;
        return;
    }
    let key = if counts.len() < MAX_KEPT_CODES { code } else { other };
    *counts.entry(key).or_default() += 1;
}

/// Unknown codes shown by their number, per field; the rest of them count as `other`.
pub const MAX_UNKNOWN_CODES: usize = 16;

/// Counts by label, where a label that is a number is a code this receiver
/// does not know: the [`MAX_UNKNOWN_CODES`] most frequent of those keep their
/// number, the rest are added up as `other`. So a caller sending made-up
/// codes cannot add labels to `/stats` and `/metrics` without bound; both
/// spell every label the same way.
pub fn fold_unknown_codes(mut counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut unknown: Vec<(String, u64)> = counts
        .iter()
        .filter(|(label, _)| label.parse::<i64>().is_ok())
        .map(|(label, count)| (label.clone(), *count))
        .collect();
    if unknown.len() <= MAX_UNKNOWN_CODES {
        return counts;
    }
    unknown.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (label, count) in unknown.into_iter().skip(MAX_UNKNOWN_CODES) {
        counts.remove(&label);
        *counts.entry("other".to_owned()).or_default() += count;
    }
    counts
}

/// What `GET /stats` shows of the messages.
#[derive(Clone, Debug, Serialize)]
pub struct MessageReport {
    pub messages: MessageCounts,
    pub people: PeopleCounts,
    /// Distinct conversations: unordered sendID/recvID pairs, and groups.
    pub conversations: u64,
    /// Distinct groups that sent a message.
    pub groups: u64,
    /// afterMsgSaveDB callbacks (the same messages as their after-send
    /// callbacks: never added to `messages.total`).
    pub saved_to_database: u64,
    /// afterRevokeMsg callbacks.
    pub revoked: u64,
    /// False once any distinct count is an estimate (past 10,000 items; within 1%).
    pub distinct_counts_exact: bool,
    /// Smallest and largest `createTime` seen, in ms since the epoch.
    pub earliest_create_time: Option<i64>,
    pub latest_create_time: Option<i64>,
    /// Messages dated outside the kept daily windows (still in every total).
    pub out_of_window: u64,
    /// Messages per minute of arrival, the last 60 minutes, oldest first.
    pub messages_per_minute: Vec<MinuteReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MessageCounts {
    pub total: u64,
    pub by_content_type: BTreeMap<String, u64>,
    pub by_platform: BTreeMap<String, u64>,
    pub by_msg_from: BTreeMap<String, u64>,
    pub by_session_type: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeopleCounts {
    pub senders: u64,
    pub receivers: u64,
    /// Distinct people in either role.
    pub total: u64,
}

/// Locks `<snapshot>.lock`, or fails naming the snapshot another receiver uses.
fn lock_snapshot(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(directory) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(directory)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    crate::journal::lock_file(std::path::Path::new(&lock_path))?.ok_or_else(|| {
        std::io::Error::other(format!(
            "stats snapshot {} is in use by another receiver; give each receiver its own stats.snapshot_path",
            path.display()
        ))
    })
}

/// The counts to start from: the snapshot's, when there is a readable one,
/// with the journal position they include.
fn restore_counts(settings: &crate::settings::StatsSettings) -> std::io::Result<(MessageStats, Option<u64>)> {
    let Some(path) = settings.snapshot_path() else {
        return Ok((MessageStats::default(), None));
    };
    Ok(match snapshot::restore(path)? {
        snapshot::Restored::Nothing => (MessageStats::default(), None),
        snapshot::Restored::Counts { stats, next_seq } => {
            tracing::info!(path = %path.display(), messages = stats.total, next_seq,
                "stats restored from the snapshot; counting resumes from the journal there");
            (*stats, next_seq)
        }
        snapshot::Restored::MovedAside { moved_to, reason } => {
            tracing::error!(path = %path.display(), moved_to = %moved_to.display(), reason,
                "stats snapshot unreadable: moved aside, counting starts empty");
            (MessageStats::default(), None)
        }
    })
}

/// The counts, shared by the stats sink (which writes) and `/stats`,
/// `/metrics` and the snapshots (which read); and the histograms the sink
/// observes.
#[derive(Clone, Debug)]
pub struct StatsHandle {
    stats: Arc<Mutex<MessageStats>>,
    calendar: Calendar,
    /// Seconds from the message's sendTime (createTime when absent) to its arrival.
    pub delivery_lag: Histogram,
    /// Bytes of the message's content.
    pub content_bytes: Histogram,
    /// With the Redis backend: the fleet's figures, which `/stats` shows
    /// instead of this replica's (then unused) counts.
    fleet: Option<Arc<fleet::FleetView>>,
}

/// What `/stats` and `/metrics` show of the messages, and whose they are.
pub struct Counted {
    /// Absent with the Redis backend until the fleet's figures were read once.
    pub report: Option<MessageReport>,
    /// Today's counts (in `stats.timezone`), when anything is dated today.
    pub today: Option<DayReport>,
    /// With the Redis backend: which fleet, and how current its figures are.
    pub fleet: Option<fleet::FleetStatus>,
}

impl Default for StatsHandle {
    fn default() -> Self {
        Self::new(MessageStats::default(), Calendar::default())
    }
}

impl StatsHandle {
    pub fn new(stats: MessageStats, calendar: Calendar) -> Self {
        let lag_buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
        let size_buckets = [16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0];
        StatsHandle {
            stats: Arc::new(Mutex::new(stats)),
            calendar,
            delivery_lag: Histogram::new(lag_buckets),
            content_bytes: Histogram::new(size_buckets),
            fleet: None,
        }
    }

    /// A handle whose counts are the fleet's, read through `view`.
    pub fn for_fleet(view: fleet::FleetView, calendar: Calendar) -> Self {
        StatsHandle { fleet: Some(Arc::new(view)), ..Self::new(MessageStats::default(), calendar) }
    }

    pub fn fleet(&self) -> Option<&Arc<fleet::FleetView>> {
        self.fleet.as_ref()
    }

    /// This replica's counts, or the fleet's with the Redis backend.
    pub async fn counted(&self) -> Counted {
        let today = self.calendar.day_of(crate::epoch::millis(SystemTime::now()));
        match &self.fleet {
            None => {
                let today = self.daily(Some(today), Some(today)).into_iter().next();
                Counted { report: Some(self.report()), today, fleet: None }
            }
            Some(view) => {
                let (figures, status) = view.read().await;
                Counted {
                    report: figures.as_ref().map(|figures| figures.report.clone()),
                    today: figures.and_then(|figures| figures.days.get(&today).cloned()),
                    fleet: Some(status),
                }
            }
        }
    }

    /// Days from `from` to `to` (day numbers, inclusive), newest first: this
    /// replica's, or the fleet's (from its last read) with the Redis backend.
    pub async fn days(&self, from: Option<i64>, to: Option<i64>) -> Vec<DayReport> {
        let Some(view) = &self.fleet else { return self.daily(from, to) };
        let (figures, _) = view.read().await;
        let (Some(figures), Some(range)) = (figures, daily::day_range(from, to)) else { return Vec::new() };
        figures.days.range(range).rev().map(|(_, day)| day.clone()).collect()
    }

    /// Observes each message's delivery lag and size in the histograms.
    pub fn observe<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        for entry in entries {
            let received_at = entry.message.received_at;
            let Some(packet) = entry.message.message().filter(|_| entry.message.command.role == Role::Sent)
            else {
                continue;
            };
            let sent_ms = if packet.send_time > 0 { packet.send_time } else { packet.create_time };
            if sent_ms > 0 {
                let lag_ms = crate::epoch::millis(received_at) - sent_ms;
                self.delivery_lag.observe(lag_ms.max(0) as f64 / 1000.0);
            }
            self.content_bytes.observe(packet.content.len() as f64);
        }
    }

    pub fn report(&self) -> MessageReport {
        self.lock().report(SystemTime::now())
    }

    /// Days from `from` to `to` (day numbers, inclusive), newest first.
    pub fn daily(&self, from: Option<i64>, to: Option<i64>) -> Vec<DayReport> {
        self.lock().daily(from, to)
    }

    /// A copy of the counts, for a snapshot.
    pub fn copy(&self) -> MessageStats {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, MessageStats> {
        // Counting cannot leave the counts half-updated in a way worth refusing to read.
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct StatsSink {
    stats: StatsHandle,
    snapshot_path: Option<std::path::PathBuf>,
    snapshot_interval: std::time::Duration,
    /// The journal position the restored counts include.
    restored_next: Option<u64>,
    /// Held while this sink owns the snapshot: two receivers writing one
    /// snapshot would each overwrite the other's counts.
    _snapshot_lock: Option<std::fs::File>,
}

impl StatsSink {
    /// A sink that counts into `handle` and keeps no snapshot.
    pub fn new(handle: StatsHandle) -> Self {
        let snapshot_interval = std::time::Duration::from_secs(10);
        StatsSink {
            stats: handle,
            snapshot_path: None,
            snapshot_interval,
            restored_next: None,
            _snapshot_lock: None,
        }
    }

    /// The sink the settings describe, its counts restored from the snapshot.
    pub fn restore(settings: &crate::settings::StatsSettings) -> std::io::Result<Self> {
        let snapshot_lock = settings.snapshot_path().map(lock_snapshot).transpose()?;
        let (stats, restored_next) = restore_counts(settings)?;
        Ok(StatsSink {
            stats: StatsHandle::new(stats, settings.calendar()),
            snapshot_path: settings.snapshot_path().map(ToOwned::to_owned),
            snapshot_interval: settings.snapshot_interval,
            restored_next,
            _snapshot_lock: snapshot_lock,
        })
    }

    pub fn handle(&self) -> StatsHandle {
        self.stats.clone()
    }
}

impl Sink for StatsSink {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn uses_network(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        match &self.snapshot_path {
            Some(path) => format!("counts in memory, saved to {}", path.display()),
            None => "counts in memory, not saved (stats.snapshot_path is empty)".to_owned(),
        }
    }

    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let handle = &self.stats;
        // Histograms first: whoever sees a message counted sees it observed too.
        handle.observe(batch);
        let mut stats = handle.lock();
        for entry in batch {
            stats.record_callback(&entry.message, &handle.calendar);
        }
        Ok(())
    }

    /// Counts and position are saved together: a restart replays the journal
    /// from exactly the first record these counts do not include.
    fn progress(&self) -> Progress {
        Progress::WithState { restored: self.restored_next, save_interval: self.snapshot_interval }
    }

    async fn save(&mut self, next: u64) -> Result<(), SinkError> {
        let Some(path) = &self.snapshot_path else { return Ok(()) };
        snapshot::write(path, &self.stats.copy(), next).map_err(|error| {
            SinkError::transient(format!("saving the stats snapshot {}: {error}", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(send: &str, recv: &str, content_type: i32, create_time: i64) -> MessagePacket {
        MessagePacket {
            send_id: send.into(),
            recv_id: recv.into(),
            content_type: crate::callbacks::ContentType(content_type),
            create_time,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_codes_past_sixteen_are_counted_as_other() {
        let mut counts: BTreeMap<String, u64> =
            (1..=20).map(|code| (format!("{}", 9000 + code), code)).collect();
        counts.insert("text".into(), 5);
        let folded = fold_unknown_codes(counts);
        assert_eq!(folded.len(), 1 + MAX_UNKNOWN_CODES + 1, "{folded:?}");
        assert_eq!(folded["other"], 1 + 2 + 3 + 4, "the four least frequent");
        assert_eq!(folded["9020"], 20);
        assert_eq!(folded["text"], 5);
    }

    #[test]
    fn invented_codes_past_the_kept_ones_are_counted_as_other_not_kept() {
        let mut stats = MessageStats::default();
        let (now, calendar) = (SystemTime::now(), Calendar::default());
        let today_ms = crate::epoch::millis(now);
        for code in 0..60_000 {
            stats.record(&packet("a", "b", 10_000 + code, today_ms), now, &calendar);
        }
        assert_eq!(stats.by_content_type.len(), MAX_KEPT_CODES + 1, "kept: the first codes and other");
        assert_eq!(stats.by_content_type.values().sum::<u64>(), 60_000, "every message still counted");
        let day = stats.daily.days.values().next().unwrap();
        assert_eq!(day.by_content_type.len(), MAX_KEPT_CODES + 1, "per day too");
        let report = stats.report(now);
        assert_eq!(report.messages.by_content_type["other"], 60_000 - MAX_UNKNOWN_CODES as u64);
    }

    #[test]
    fn counts_people_in_either_role_and_conversations_in_either_direction() {
        let mut stats = MessageStats::default();
        let (now, calendar) = (SystemTime::now(), Calendar::default());
        stats.record(&packet("alice", "bob", 101, 20), now, &calendar);
        stats.record(&packet("bob", "alice", 101, 10), now, &calendar);
        stats.record(&packet("alice", "carol", 9999, 30), now, &calendar);
        let report = stats.report(now);
        assert_eq!(report.messages.total, 3);
        assert_eq!(report.messages.by_content_type["text"], 2);
        assert_eq!(report.messages.by_content_type["9999"], 1);
        assert_eq!((report.people.senders, report.people.receivers, report.people.total), (2, 3, 3));
        assert_eq!(report.conversations, 2);
        assert_eq!((report.earliest_create_time, report.latest_create_time), (Some(10), Some(30)));
    }
}
