//! Fleet statistics: several replicas, one set of numbers, kept in Redis
//! (`stats.backend = "redis"`).
//!
//! Each replica's stats sink reads its own journal and adds every batch's
//! counts to Redis (`sink`): totals and per-day counts with `HINCRBY`,
//! distinct people and conversations with HyperLogLog (`PFADD`), messages per
//! minute with `INCRBY`. The batch's increments and the replica's journal
//! position move together in one Lua script, which first checks that the
//! position in Redis is the one the replica expects: a replica that crashes
//! and replays its journal skips what Redis already holds, so no message is
//! counted twice or missed.
//!
//! `/stats`, `/stats/daily` and `/metrics` read the fleet's figures back
//! (`view`), at most once per `stats.fleet_refresh`.
//!
//! Keys, all under `stats.key_prefix` (P):
//! - `Pcursors`: hash, replica id → `<journal id>:<next sequence number>`;
//! - `Preplicas`: sorted set, replica id → when it was last seen (ms);
//! - `Ptotals`: hash, `messages`, `content_type:<name>`, `platform:<name>`,
//!   `msg_from:<name>`, `session_type:<name>`, `status:<name>`,
//!   `out_of_window`, `earliest_create_time`, `latest_create_time`;
//! - `Psenders`, `Preceivers`, `Ppeople`, `Pconversations`: HyperLogLogs;
//! - `Pday:<YYYY-MM-DD>`: hash, `messages`, `content_type:<name>`, and
//!   `Pday:<YYYY-MM-DD>:senders` (…`receivers`, `people`, `conversations`)
//!   HyperLogLogs; each expires when the day leaves `stats.retention_days`;
//! - `Pminute:<minutes since the epoch>`: messages that arrived in that
//!   minute, kept for two hours.

mod connection;
mod sink;
mod tally;
mod view;

pub use sink::FleetSink;
pub use view::{FleetStatus, FleetView};

use crate::settings::StatsSettings;
use connection::FleetConnection;

/// The distinct counts kept, in total and per day: (key suffix, what it holds).
const DISTINCT: [&str; 5] = ["senders", "receivers", "people", "conversations", "groups"];

/// Names of the fleet's keys.
#[derive(Clone, Debug)]
struct FleetKeys {
    prefix: String,
}

impl FleetKeys {
    /// Under `stats.key_prefix`; in a Redis Cluster the prefix is a hash tag
    /// (`{openim:stats:}totals`), so that every key is in one slot (unless the
    /// prefix holds a hash tag of its own).
    fn of(settings: &StatsSettings) -> Self {
        let prefix = &settings.key_prefix;
        let tagged = connection::is_cluster(settings.redis_url.expose()) && !prefix.contains('{');
        FleetKeys { prefix: if tagged { format!("{{{prefix}}}") } else { prefix.clone() } }
    }

    fn cursors(&self) -> String {
        format!("{}cursors", self.prefix)
    }

    fn replicas(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    fn totals(&self) -> String {
        format!("{}totals", self.prefix)
    }

    /// A total distinct count (`senders`, …).
    fn distinct(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn day(&self, day: i64) -> String {
        format!("{}day:{}", self.prefix, super::daily::date_text(day))
    }

    fn day_distinct(&self, day: i64, what: &str) -> String {
        format!("{}day:{}:{what}", self.prefix, super::daily::date_text(day))
    }

    fn minute(&self, minute: i64) -> String {
        format!("{}minute:{minute}", self.prefix)
    }
}

/// The fleet's Redis, connected on first use.
fn connect(settings: &StatsSettings) -> Result<FleetConnection, String> {
    FleetConnection::lazily(settings)
}
