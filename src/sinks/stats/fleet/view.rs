//! Reading the fleet's figures back for `/stats`, `/stats/daily` and
//! `/metrics`: one pipelined round trip, at most once per
//! `stats.fleet_refresh`; while Redis is down, the last figures read, marked
//! degraded with the error.

use super::{DISTINCT, FleetKeys, connect};
use crate::sinks::stats::daily::{Calendar, DayReport, MS_PER_MINUTE, MinuteReport, RATE_MINUTES, date_text};
use crate::sinks::stats::{MessageCounts, MessageReport, PeopleCounts};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How often a replica says it is alive, and how long it counts as seen after.
const HEARTBEAT: Duration = Duration::from_secs(10);
const SEEN_FOR: Duration = Duration::from_secs(60);
/// Replicas not seen for this long are dropped from the list.
const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// The fleet's figures as last read.
#[derive(Clone, Debug)]
pub struct FleetFigures {
    pub report: MessageReport,
    /// Every kept day that has counts, by day number.
    pub days: BTreeMap<i64, DayReport>,
    /// Replicas seen in the last minute.
    pub replicas: Vec<String>,
}

/// What `/stats` says about the fleet's figures.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    /// This replica's name in the fleet.
    pub replica_id: String,
    /// Replicas seen in the last minute (this one included while Redis answers).
    pub replicas: Vec<String>,
    /// ok: the figures were just read; degraded: Redis did not answer, the
    /// figures are the last ones read (or absent).
    pub state: &'static str,
    pub last_error: Option<String>,
    /// Age of the figures shown, in seconds; absent before the first read.
    pub figures_age_seconds: Option<f64>,
}

#[derive(Default)]
struct Cache {
    figures: Option<Arc<FleetFigures>>,
    read_at: Option<Instant>,
    attempted_at: Option<Instant>,
    last_error: Option<String>,
}

pub struct FleetView {
    connection: super::FleetConnection,
    keys: FleetKeys,
    replica: String,
    calendar: Calendar,
    refresh: Duration,
    timeout: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for FleetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetView")
            .field("prefix", &self.keys.prefix)
            .field("replica", &self.replica)
            .finish()
    }
}

impl FleetView {
    pub fn new(settings: &crate::settings::StatsSettings) -> Result<Self, String> {
        Ok(FleetView {
            connection: connect(settings)?,
            keys: FleetKeys::of(settings),
            replica: settings.replica_name(),
            calendar: settings.calendar(),
            refresh: settings.fleet_refresh,
            timeout: settings.redis_timeout,
            cache: tokio::sync::Mutex::new(Cache::default()),
        })
    }

    /// The fleet's figures (read now if the last read is older than
    /// `fleet_refresh`), and how current they are. Concurrent callers share one read.
    pub async fn read(&self) -> (Option<Arc<FleetFigures>>, FleetStatus) {
        let mut cache = self.cache.lock().await;
        let due = cache.attempted_at.is_none_or(|at| at.elapsed() >= self.refresh);
        if due {
            cache.attempted_at = Some(Instant::now());
            match tokio::time::timeout(self.timeout, self.fetch()).await {
                Ok(Ok(figures)) => {
                    cache.figures = Some(Arc::new(figures));
                    cache.read_at = cache.attempted_at;
                    cache.last_error = None;
                }
                Ok(Err(error)) => cache.last_error = Some(format!("redis: {error}")),
                Err(_) => cache.last_error = Some(format!("redis: no answer within {:?}", self.timeout)),
            }
        }
        let status = FleetStatus {
            replica_id: self.replica.clone(),
            replicas: cache.figures.as_ref().map(|figures| figures.replicas.clone()).unwrap_or_default(),
            state: if cache.last_error.is_none() { "ok" } else { "degraded" },
            last_error: cache.last_error.clone(),
            figures_age_seconds: cache.read_at.map(|at| at.elapsed().as_secs_f64()),
        };
        (cache.figures.clone(), status)
    }

    /// Reads everything in one pipelined round trip.
    async fn fetch(&self) -> redis::RedisResult<FleetFigures> {
        let now_ms = crate::epoch::millis(SystemTime::now());
        let keys = &self.keys;
        let mut pipe = redis::pipe();
        pipe.hgetall(keys.totals());
        for what in DISTINCT {
            pipe.pfcount(keys.distinct(what));
        }
        let current_minute = now_ms.div_euclid(MS_PER_MINUTE);
        let minutes: Vec<i64> = (current_minute - RATE_MINUTES + 1..=current_minute).collect();
        pipe.mget(minutes.iter().map(|minute| keys.minute(*minute)).collect::<Vec<_>>());
        let today = self.calendar.day_of(now_ms);
        // Newest first, tomorrow included (messages dated up to a day ahead are kept).
        let days: Vec<i64> =
            (today - i64::from(self.calendar.retention_days) + 1..=today + 1).rev().collect();
        for day in &days {
            pipe.hgetall(keys.day(*day));
            for what in DISTINCT {
                pipe.pfcount(keys.day_distinct(*day, what));
            }
        }
        let seen_since = now_ms - SEEN_FOR.as_millis() as i64;
        pipe.zrangebyscore(keys.replicas(), seen_since, "+inf");
        let mut answers: std::collections::VecDeque<redis::Value> =
            pipe.query_async::<Vec<redis::Value>>(&mut self.connection.clone()).await?.into();
        let mut next = || answers.pop_front().unwrap_or(redis::Value::Nil);
        let totals: HashMap<String, String> = redis::from_redis_value(next())?;
        let mut distinct = [0u64; DISTINCT.len()];
        for count in &mut distinct {
            *count = redis::from_redis_value(next())?;
        }
        let per_minute: Vec<Option<u64>> = redis::from_redis_value(next())?;
        let mut day_reports = BTreeMap::new();
        for day in &days {
            let fields: HashMap<String, String> = redis::from_redis_value(next())?;
            let mut counts = [0u64; DISTINCT.len()];
            for count in &mut counts {
                *count = redis::from_redis_value(next())?;
            }
            if fields.is_empty() {
                continue;
            }
            let numbers = Fields(fields);
            let report = DayReport {
                date: date_text(*day),
                messages: numbers.count("messages"),
                by_content_type: numbers.group("content_type"),
                people: PeopleCounts { senders: counts[0], receivers: counts[1], total: counts[2] },
                conversations: counts[3],
                groups: counts[4],
            };
            day_reports.insert(*day, report);
        }
        let replicas: Vec<String> = redis::from_redis_value(next())?;
        let totals = Fields(totals);
        let report = MessageReport {
            messages: MessageCounts {
                total: totals.count("messages"),
                by_content_type: totals.group("content_type"),
                by_platform: totals.group("platform"),
                by_msg_from: totals.group("msg_from"),
                by_session_type: totals.group("session_type"),
                by_status: totals.group("status"),
            },
            people: PeopleCounts { senders: distinct[0], receivers: distinct[1], total: distinct[2] },
            conversations: distinct[3],
            groups: distinct[4],
            saved_to_database: totals.count("saved_to_database"),
            revoked: totals.count("revoked"),
            // HyperLogLog: within about 1% at any size.
            distinct_counts_exact: false,
            earliest_create_time: totals.number("earliest_create_time"),
            latest_create_time: totals.number("latest_create_time"),
            out_of_window: totals.count("out_of_window"),
            messages_per_minute: minutes
                .iter()
                .zip(per_minute)
                .map(|(minute, count)| MinuteReport::new(*minute, count.unwrap_or(0)))
                .collect(),
        };
        Ok(FleetFigures { report, days: day_reports, replicas })
    }

    /// Says "alive" every few seconds, so a replica with no traffic is listed
    /// too; forgets replicas gone for a day. Runs until dropped.
    pub async fn heartbeat(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now_ms = crate::epoch::millis(SystemTime::now());
            let mut pipe = redis::pipe();
            pipe.zadd(self.keys.replicas(), &self.replica, now_ms).ignore();
            pipe.zrembyscore(self.keys.replicas(), "-inf", now_ms - FORGET_AFTER.as_millis() as i64).ignore();
            let sent =
                tokio::time::timeout(self.timeout, pipe.exec_async(&mut self.connection.clone())).await;
            if let Ok(Err(error)) = sent {
                tracing::debug!(%error, "fleet heartbeat failed");
            }
        }
    }

    /// Takes this replica off the list at a clean shutdown.
    pub async fn leave(&self) {
        let mut connection = self.connection.clone();
        let mut removed = redis::cmd("ZREM");
        removed.arg(self.keys.replicas()).arg(&self.replica);
        let _ = tokio::time::timeout(self.timeout, removed.exec_async(&mut connection)).await;
    }
}

/// A hash's fields, read as numbers.
struct Fields(HashMap<String, String>);

impl Fields {
    fn number(&self, field: &str) -> Option<i64> {
        self.0.get(field).and_then(|value| value.parse().ok())
    }

    fn count(&self, field: &str) -> u64 {
        self.number(field).unwrap_or(0).max(0) as u64
    }

    /// `<group>:<name>` fields as name → count.
    fn group(&self, group: &str) -> BTreeMap<String, u64> {
        let counts = self
            .0
            .iter()
            .filter_map(|(field, value)| {
                let name = field.strip_prefix(group)?.strip_prefix(':')?;
                Some((name.to_owned(), value.parse::<i64>().ok()?.max(0) as u64))
            })
            .collect();
        crate::sinks::stats::fold_unknown_codes(counts)
    }
}
