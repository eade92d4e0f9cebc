//! `sinks.sql.retention_days`: rows whose `create_time` is older are deleted,
//! at start and every hour, a thousand at a time, so no delete holds the
//! table (or SQLite's one writer) for long and the sink's inserts go on in
//! between. 0, the default, keeps everything.

use super::search::Archive;
use super::{Database, Engine};
use std::time::Duration;

/// Rows one delete statement removes at most.
const ROWS_PER_DELETE: i64 = 1000;
/// How often the archive is trimmed after the first time, at start.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes rows older than `days` every [`INTERVAL`], for the life of the
/// task. (The sink trims once at start, as soon as its table is there.)
pub async fn keep_for(archive: Archive, days: u32) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    loop {
        every.tick().await;
        // The database being down is the sink's to report; the next hour tries again.
        if let Err(error) = archive.trim(days).await {
            tracing::warn!(%error, "archive not trimmed this time");
        }
    }
}

impl Archive {
    /// Deletes the rows created more than `days` ago, and says so when there were any.
    pub async fn trim(&self, days: u32) -> Result<u64, sqlx::Error> {
        let cutoff = crate::epoch::millis(std::time::SystemTime::now()) - i64::from(days) * 86_400_000;
        let rows = self.delete_created_before(cutoff).await?;
        if rows > 0 {
            tracing::info!(rows, days, "archive trimmed: rows older than sinks.sql.retention_days deleted");
        }
        Ok(rows)
    }

    /// Deletes every row created before `cutoff_ms`, in small statements; how many it deleted.
    pub async fn delete_created_before(&self, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
        let table = &self.table;
        let statement = match self.database.engine() {
            // By key, not ctid: a row's ctid is unique only within its partition.
            Engine::Postgres => format!(
                "DELETE FROM {table} WHERE (server_msg_id, create_time) IN
                    (SELECT server_msg_id, create_time FROM {table} WHERE create_time < $1 LIMIT $2)"
            ),
            Engine::MySql => format!("DELETE FROM {table} WHERE create_time < ? LIMIT ?"),
            Engine::Sqlite => format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE create_time < ?1 LIMIT ?2)"
            ),
        };
        // Whole months first, where the table is partitioned by month.
        let mut deleted = self.drop_months_before(cutoff_ms).await?;
        loop {
            // sqlx types each query by its database: the same statement, once per pool type.
            macro_rules! delete_with {
                ($pool:expr) => {
                    sqlx::query(&statement)
                        .bind(cutoff_ms)
                        .bind(ROWS_PER_DELETE)
                        .execute($pool)
                        .await?
                        .rows_affected()
                };
            }
            let rows = match &self.database {
                Database::Postgres(pool) => delete_with!(pool),
                Database::MySql(pool) => delete_with!(pool),
                Database::Sqlite(pool) => delete_with!(pool),
            };
            deleted += rows;
            if rows < ROWS_PER_DELETE as u64 {
                return Ok(deleted);
            }
        }
    }
}
