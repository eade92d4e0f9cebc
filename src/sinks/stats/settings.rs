//! The stats sink's settings: `[sinks.stats]` (on or off, batches, filter)
//! and `[stats]` (where the counts live, how days are cut, the snapshot).

use super::daily::Calendar;
use crate::settings::{Invalid, LONGEST, Secret, check_count, check_duration, check_not_placeholder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSettings {
    /// Where the stats state is saved; empty for nowhere.
    pub snapshot_path: PathBuf,
    /// How often it is saved while running.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// The UTC offset days are cut in, like "+08:00".
    pub timezone: String,
    /// Days of daily counts kept.
    pub retention_days: u32,
    /// Where the counts live: this replica's memory, or Redis for the whole fleet.
    pub backend: StatsBackend,
    /// With `backend = "redis"`: `redis://host:6379/0`; may hold a password, so never shown.
    pub redis_url: Secret,
    /// Every key this fleet writes starts with it, so several fleets can share one Redis.
    pub key_prefix: String,
    /// This replica's name in the fleet; empty for the host name. Unique per replica.
    pub replica_id: String,
    /// `/stats` and `/metrics` read the fleet figures from Redis at most this often.
    #[serde(with = "humantime_serde")]
    pub fleet_refresh: Duration,
    /// Connecting to Redis, or an answer, taking longer than this fails the attempt.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsBackend {
    /// Each replica counts what it received (today's single-replica behaviour).
    Memory,
    /// Every replica writes its counts to Redis and answers for the whole fleet.
    Redis,
}

impl StatsSettings {
    /// How days are cut and kept (validated at load).
    pub fn calendar(&self) -> Calendar {
        Calendar {
            offset_minutes: Calendar::parse_offset(&self.timezone).unwrap_or(0),
            retention_days: self.retention_days,
        }
    }

    /// The snapshot file, with the memory backend (Redis keeps the fleet's state).
    pub fn snapshot_path(&self) -> Option<&Path> {
        let used = self.backend == StatsBackend::Memory && !self.snapshot_path.as_os_str().is_empty();
        used.then_some(self.snapshot_path.as_path())
    }

    /// `replica_id`, or the host name when it is empty.
    pub fn replica_name(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        gethostname::gethostname().to_string_lossy().into_owned()
    }
}

crate::sinks::sink_settings! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StatsSinkSettings {
        pub enabled: bool,
        /// Most records the sink takes from the journal at once.
        pub batch_size: usize,
    }
}

crate::settings::named_choices!(StatsBackend { Memory => "memory", Redis => "redis" });

impl StatsSettings {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        check_duration("stats.snapshot_interval", self.snapshot_interval, LONGEST)?;
        check_duration("stats.fleet_refresh", self.fleet_refresh, LONGEST)?;
        check_duration("stats.redis_timeout", self.redis_timeout, LONGEST)?;
        Calendar::parse_offset(&self.timezone).map_err(|error| Invalid::new("stats.timezone", error))?;
        check_count("stats.retention_days", self.retention_days.into(), 1, 3660)?;
        check_not_placeholder("stats.redis_url", &self.redis_url)?;
        let redis_node =
            |node: &str| node.trim().starts_with("redis://") || node.trim().starts_with("rediss://");
        if self.backend == StatsBackend::Redis && !self.redis_url.expose().split(',').all(redis_node) {
            return Err(Invalid::new(
                "stats.redis_url",
                "with stats.backend = \"redis\", must be redis://host:port (or rediss://), or a Redis Cluster's \
                 nodes separated by commas: redis://10.0.0.1:6379,redis://10.0.0.2:6379",
            ));
        }
        let printable = |text: &str| text.chars().all(|c| c.is_ascii_graphic());
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 || !printable(&self.key_prefix) {
            return Err(Invalid::new(
                "stats.key_prefix",
                "must be 1 to 64 printable ASCII characters (no spaces)",
            ));
        }
        if self.replica_id.len() > 64 || !printable(&self.replica_id) {
            return Err(Invalid::new(
                "stats.replica_id",
                "must be at most 64 printable ASCII characters (no spaces)",
            ));
        }
        Ok(())
    }
}
