//! Per-day counts by the message's `createTime`, in a fixed UTC offset, kept
//! for `stats.retention_days`; and messages per minute of arrival for the last
//! hour, for a rate chart.

use super::CodeCounts;
use super::contribution::Sent;
use super::distinct::Distinct;
use crate::callbacks::ContentType;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

pub const MS_PER_DAY: i64 = 86_400_000;
pub const MS_PER_MINUTE: i64 = 60_000;
/// Minutes of arrival counted for the rate chart.
pub const RATE_MINUTES: i64 = 60;

/// How days are cut: a fixed offset from UTC, and how many are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    pub offset_minutes: i32,
    pub retention_days: u32,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar { offset_minutes: 0, retention_days: 31 }
    }
}

impl Calendar {
    /// The day (days since 1970-01-01 in this offset) of a time in ms since the epoch.
    pub fn day_of(&self, epoch_ms: i64) -> i64 {
        epoch_ms.saturating_add(i64::from(self.offset_minutes) * MS_PER_MINUTE).div_euclid(MS_PER_DAY)
    }

    /// The oldest day kept when `today` is today.
    pub fn oldest_kept(&self, today: i64) -> i64 {
        today - i64::from(self.retention_days) + 1
    }

    /// True when a message dated on `day` is counted in a day of its own: from
    /// the oldest kept day to tomorrow (clocks differ; a later date is a wrong one).
    pub fn window_holds(&self, day: i64, today: i64) -> bool {
        (self.oldest_kept(today)..=today + 1).contains(&day)
    }

    /// Parses `+08:00`, `-05:30`, `+00:00` (also `+0800`, `Z`) into minutes east of UTC.
    pub fn parse_offset(text: &str) -> Result<i32, String> {
        crate::epoch::parse_utc_offset(text)
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn date_text(day: i64) -> String {
    let (year, month, day_of_month) = crate::epoch::civil(day);
    format!("{year:04}-{month:02}-{day_of_month:02}")
}

/// The day number of `YYYY-MM-DD` (days-from-civil), if it is a real date.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || text.len() != 10 {
        return None;
    }
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year.rem_euclid(400);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let number = era * 146_097 + day_of_era - 719_468;
    // Round-trip to refuse dates like 2026-02-30.
    (date_text(number) == text).then_some(number)
}

/// One day's counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DayCounts {
    messages: u64,
    pub(super) by_content_type: CodeCounts<ContentType>,
    senders: Distinct,
    receivers: Distinct,
    people: Distinct,
    conversations: Distinct,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyWindows {
    pub(super) days: BTreeMap<i64, DayCounts>,
    out_of_window: u64,
}

impl DailyWindows {
    /// Counts a message into its day. Days that fell out of the window are
    /// dropped; a message dated outside it is only counted as out-of-window.
    pub fn record(&mut self, sent: &Sent<'_>, calendar: &Calendar) {
        let oldest = calendar.oldest_kept(sent.today);
        while let Some(entry) = self.days.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            entry.remove();
        }
        let Some(day) = sent.day else {
            self.out_of_window += 1;
            return;
        };
        let counts = self.days.entry(day).or_default();
        counts.messages += 1;
        super::count_code(&mut counts.by_content_type, sent.packet.content_type, ContentType::OTHER);
        let who = &sent.who;
        counts.senders.insert(who.sender);
        counts.people.insert(who.sender);
        if let Some(receiver) = who.receiver {
            counts.receivers.insert(receiver);
            counts.people.insert(receiver);
        }
        counts.conversations.insert(who.conversation);
    }

    /// True while `day` is one of the kept days.
    pub fn keeps(&self, day: i64) -> bool {
        self.days.contains_key(&day)
    }

    pub fn out_of_window(&self) -> u64 {
        self.out_of_window
    }

    /// Days from `from` to `to` (inclusive, either open), newest first;
    /// `groups` gives each day's distinct groups.
    pub fn report(&self, from: Option<i64>, to: Option<i64>, groups: impl Fn(i64) -> u64) -> Vec<DayReport> {
        let Some(range) = day_range(from, to) else { return Vec::new() };
        self.days
            .range(range)
            .rev()
            .map(|(day, counts)| DayReport {
                date: date_text(*day),
                messages: counts.messages,
                by_content_type: counts
                    .by_content_type
                    .iter()
                    .map(|(code, n)| (code.label().into_owned(), *n))
                    .collect(),
                people: super::PeopleCounts {
                    senders: counts.senders.count(),
                    receivers: counts.receivers.count(),
                    total: counts.people.count(),
                },
                conversations: counts.conversations.count(),
                groups: groups(*day),
            })
            .collect()
    }
}

/// Days from `from` to `to` (inclusive, either open) as map bounds; None
/// when the range is empty (`from` after `to`).
pub fn day_range(from: Option<i64>, to: Option<i64>) -> Option<(Bound<i64>, Bound<i64>)> {
    if from.zip(to).is_some_and(|(from, to)| from > to) {
        return None;
    }
    Some((from.map_or(Bound::Unbounded, Bound::Included), to.map_or(Bound::Unbounded, Bound::Included)))
}

/// One day as `GET /stats/daily` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DayReport {
    pub date: String,
    pub messages: u64,
    pub by_content_type: BTreeMap<String, u64>,
    pub people: super::PeopleCounts,
    /// Single chats' pairs and groups.
    pub conversations: u64,
    /// Groups that sent a message.
    pub groups: u64,
}

/// Messages per minute of arrival, for the last [`RATE_MINUTES`] minutes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteRates {
    minutes: VecDeque<(i64, u64)>,
}

impl MinuteRates {
    pub fn record(&mut self, now_ms: i64) {
        let minute = now_ms.div_euclid(MS_PER_MINUTE);
        match self.minutes.back_mut() {
            Some((last, count)) if *last == minute => *count += 1,
            _ => self.minutes.push_back((minute, 1)),
        }
        while self.minutes.front().is_some_and(|(first, _)| *first <= minute - RATE_MINUTES) {
            self.minutes.pop_front();
        }
    }

    /// Every minute of the last hour up to `now_ms`, oldest first, zeros included.
    pub fn report(&self, now_ms: i64) -> Vec<MinuteReport> {
        let current = now_ms.div_euclid(MS_PER_MINUTE);
        (current - RATE_MINUTES + 1..=current)
            .map(|minute| {
                let messages = self.minutes.iter().find(|(m, _)| *m == minute).map_or(0, |(_, n)| *n);
                MinuteReport::new(minute, messages)
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MinuteReport {
    /// Start of the minute, UTC.
    pub minute: String,
    pub messages: u64,
}

impl MinuteReport {
    /// The count of `minute` (minutes since the epoch).
    pub fn new(minute: i64, messages: u64) -> Self {
        let at =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis((minute * MS_PER_MINUTE).max(0) as u64);
        MinuteReport { minute: humantime::format_rfc3339_seconds(at).to_string(), messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_impossible_ones_are_refused() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(parse_date("2026-11-27"), Some(20_784));
        assert_eq!(date_text(20_784), "2026-11-27");
        assert_eq!(parse_date("2024-02-29").map(date_text).as_deref(), Some("2024-02-29"));
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("26-1-1"), None);
    }

    #[test]
    fn days_are_cut_at_midnight_of_the_configured_offset() {
        let beijing =
            Calendar { offset_minutes: Calendar::parse_offset("+08:00").unwrap(), retention_days: 31 };
        // 2026-11-26T16:00:00Z is midnight of the 27th in +08:00.
        let midnight_utc_ms = 1_795_737_600_000 - 8 * 3_600_000;
        assert_eq!(date_text(beijing.day_of(midnight_utc_ms - 1)), "2026-11-26");
        assert_eq!(date_text(beijing.day_of(midnight_utc_ms)), "2026-11-27");
        assert_eq!(Calendar::parse_offset("-05:30"), Ok(-330));
        assert!(Calendar::parse_offset("08:00").is_err());
    }
}
