//! `sinks.sql.partition = "month"` on PostgreSQL: the archive table is
//! partitioned by range of `create_time`, one partition per calendar month
//! (UTC) named `<table>_pYYYYMM`, made when the first row of that month comes.
//! Retention then drops a month that has passed whole, instead of deleting
//! its rows one by one.
//!
//! A partitioned table's keys must hold the partition column: the primary key
//! is `(server_msg_id, create_time)`. A message keeps its `createTime` in
//! every callback OpenIM sends about it, so a repeat still meets its row.

use super::search::Archive;
use super::{Database, PgPool};

/// How the table is laid out on PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// One table.
    #[default]
    None,
    /// A partition per month of `create_time`.
    Month,
}

/// Months since 1970-01 (UTC) of a time in ms since the epoch.
pub fn month_of(epoch_ms: i64) -> i64 {
    let (year, month, _) = crate::epoch::civil(epoch_ms.div_euclid(86_400_000));
    year * 12 + i64::from(month) - 1 - 1970 * 12
}

/// The first millisecond of month `month` (months since 1970-01).
fn month_start_ms(month: i64) -> i64 {
    let (year, month0) = ((1970 * 12 + month).div_euclid(12), (1970 * 12 + month).rem_euclid(12));
    // Days from 1970-01-01 to the first of that month (days-from-civil).
    let (y, m) = if month0 < 2 { (year - 1, month0 + 13) } else { (year, month0 + 1) };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let day_of_year = (153 * (m - 3) + 2) / 5;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era - 719_468) * 86_400_000
}

/// `<table>_pYYYYMM`, the partition of `month`.
fn partition_name(table: &str, month: i64) -> String {
    let months = 1970 * 12 + month;
    format!("{table}_p{:04}{:02}", months.div_euclid(12), months.rem_euclid(12) + 1)
}

/// The month a partition's name says, if it is one of `table`'s.
fn month_of_name(table: &str, name: &str) -> Option<i64> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 6 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let (year, month): (i64, i64) = (digits[..4].parse().ok()?, digits[4..].parse().ok()?);
    (1..=12).contains(&month).then(|| year * 12 + month - 1 - 1970 * 12)
}

/// Makes the partition of `month` if it is missing.
pub async fn make(pool: &PgPool, table: &str, month: i64) -> Result<(), sqlx::Error> {
    let statement = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ({}) TO ({})",
        partition_name(table, month),
        month_start_ms(month),
        month_start_ms(month + 1)
    );
    sqlx::query(&statement).execute(pool).await?;
    Ok(())
}

/// True when `table` is a partitioned table.
pub async fn is_partitioned(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    let kind: Option<i8> =
        sqlx::query_scalar("SELECT relkind::\"char\" FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table)
            .fetch_optional(pool)
            .await?;
    Ok(kind == Some(b'p' as i8))
}

impl Archive {
    /// On a partitioned PostgreSQL table, drops the months that end before
    /// `cutoff_ms`; how many rows they held. (Rows of the month the cutoff
    /// falls in are deleted one by one, as on any table.)
    pub(super) async fn drop_months_before(&self, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
        let Database::Postgres(pool) = &self.database else { return Ok(0) };
        if !is_partitioned(pool, &self.table).await? {
            return Ok(0);
        }
        let children: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1)",
        )
        .bind(&self.table)
        .fetch_all(pool)
        .await?;
        let mut dropped = 0;
        for name in children {
            let Some(month) = month_of_name(&self.table, &name) else { continue };
            if month_start_ms(month + 1) <= cutoff_ms {
                let rows: i64 =
                    sqlx::query_scalar(&format!("SELECT count(*) FROM {name}")).fetch_one(pool).await?;
                sqlx::query(&format!("DROP TABLE {name}")).execute(pool).await?;
                tracing::info!(
                    partition = name,
                    rows,
                    "archive partition dropped: its month is past sinks.sql.retention_days"
                );
                dropped += rows as u64;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_their_bounds_and_names() {
        // 2024-11-27T02:40:00Z
        let month = month_of(1_732_675_200_000);
        assert_eq!(partition_name("m", month), "m_p202411");
        assert_eq!(month_start_ms(month), 1_730_419_200_000, "2024-11-01T00:00:00Z");
        assert_eq!(month_start_ms(month + 1), 1_733_011_200_000, "2024-12-01T00:00:00Z");
        assert_eq!(month_start_ms(month + 2), 1_735_689_600_000, "2025-01-01T00:00:00Z");
        assert_eq!(month_of(1_730_419_200_000 - 1), month - 1, "the last ms of October");
        assert_eq!(month_of_name("m", "m_p202411"), Some(month));
        assert_eq!(month_of_name("m", "m_p202413"), None);
        assert_eq!(month_of_name("m", "other_p202411"), None);
        assert_eq!(month_start_ms(0), 0);
    }
}
