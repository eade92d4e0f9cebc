//! The stats sink with the Redis backend: each batch's counts and this
//! replica's journal position go to Redis in one script, exactly once.

use super::tally::{SCRIPT, Tally};
use super::{FleetKeys, connect};
use crate::sinks::stats::StatsHandle;
use crate::sinks::stats::daily::Calendar;
use crate::sinks::{Entry, Progress, Sink, SinkError};
use std::time::SystemTime;

/// This replica's position as Redis holds it.
#[derive(Clone, Debug, PartialEq)]
enum Position {
    /// Redis has none for this replica: nothing of it counted yet.
    Nothing,
    /// `<journal id>:<next>`, as stored.
    Stored(String),
}

impl Position {
    fn text(&self) -> &str {
        match self {
            Position::Nothing => "",
            Position::Stored(text) => text,
        }
    }

    /// The next record to count, when the position is this journal's.
    fn next_in(&self, journal_id: &str) -> Option<u64> {
        let Position::Stored(text) = self else { return None };
        let (id, next) = text.rsplit_once(':')?;
        (id == journal_id).then(|| next.parse().ok()).flatten()
    }
}

pub struct FleetSink {
    connection: super::FleetConnection,
    script: redis::Script,
    keys: FleetKeys,
    replica: String,
    journal_id: String,
    calendar: Calendar,
    /// For the per-replica histograms.
    handle: StatsHandle,
    /// What this sink last read or wrote; None after a failed call, whose
    /// outcome is unknown, until it is read again.
    position: Option<Position>,
    /// Whether this run has read its position yet: only the first read may
    /// take over a position left by another journal.
    adopted: bool,
}

impl FleetSink {
    pub fn new(
        settings: &crate::settings::StatsSettings,
        journal_id: &str,
        handle: StatsHandle,
    ) -> Result<Self, SinkError> {
        Ok(FleetSink {
            connection: connect(settings).map_err(SinkError::permanent)?,
            script: redis::Script::new(SCRIPT),
            keys: FleetKeys::of(settings),
            replica: settings.replica_name(),
            journal_id: journal_id.to_owned(),
            calendar: settings.calendar(),
            handle,
            position: None,
            adopted: false,
        })
    }

    /// Reads this replica's position from Redis.
    async fn read_position(&mut self) -> Result<Position, SinkError> {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(self.keys.cursors())
            .arg(&self.replica)
            .query_async(&mut self.connection)
            .await
            .map_err(redis_error)?;
        let position = stored.map_or(Position::Nothing, Position::Stored);
        if position != Position::Nothing && position.next_in(&self.journal_id).is_none() {
            if self.adopted {
                return Err(SinkError::transient(format!(
                    "stats.replica_id {:?} is in use by another receiver: its position in Redis ({}) is not this journal's ({}); give each replica its own replica_id",
                    self.replica,
                    position.text(),
                    self.journal_id
                )));
            }
            tracing::warn!(replica = %self.replica, stored = position.text(), journal_id = %self.journal_id,
                "the fleet position of this replica_id belongs to another journal (a replaced journal directory, or another receiver with this replica_id): counting this journal from its start");
        }
        self.adopted = true;
        Ok(position)
    }
}

fn redis_error(error: redis::RedisError) -> SinkError {
    SinkError::transient(format!("redis: {error}"))
}

impl Sink for FleetSink {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn describe(&self) -> String {
        format!("fleet counts in Redis under {} as replica {}", self.keys.prefix, self.replica)
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        crate::sinks::redis_stream::ping(&mut self.connection).await
    }

    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let position = match self.position.clone() {
            Some(position) => position,
            None => self.read_position().await?,
        };
        // What Redis holds already (a replay after a crash, or an answer lost
        // on the way back) is skipped: each record is counted once.
        let counted_before = position.next_in(&self.journal_id).unwrap_or(0);
        let fresh: Vec<&Entry> = batch.iter().filter(|entry| entry.seq >= counted_before).collect();
        let Some(last) = fresh.last() else {
            self.position = Some(position);
            return Ok(());
        };
        let now = SystemTime::now();
        let mut tally = Tally::default();
        for entry in &fresh {
            tally.record_callback(&entry.message, &self.calendar);
        }
        let call = tally.into_call(&self.keys, &self.calendar);
        let next = Position::Stored(format!("{}:{}", self.journal_id, last.seq + 1));
        let mut invocation = self.script.prepare_invoke();
        invocation.key(self.keys.cursors()).key(self.keys.replicas());
        for key in &call.keys {
            invocation.key(key);
        }
        invocation.arg(&self.replica).arg(position.text()).arg(next.text()).arg(crate::epoch::millis(now));
        for arg in &call.args {
            invocation.arg(arg.as_slice());
        }
        let answer: Result<(i64, String), _> = invocation.invoke_async(&mut self.connection).await;
        match answer {
            Ok((1, _)) => {
                self.position = Some(next);
                self.handle.observe(fresh.iter().copied());
                Ok(())
            }
            Ok((_, found)) => {
                self.position = None;
                Err(SinkError::transient(format!(
                    "stats.replica_id {:?} is in use by another receiver: its position in Redis moved from {:?} to {found:?} under this one; give each replica its own replica_id",
                    self.replica,
                    position.text()
                )))
            }
            Err(error) => {
                // The script may or may not have run: read the position before the retry.
                self.position = None;
                Err(redis_error(error))
            }
        }
    }

    /// The position lives in Redis with the counts, and is read from there.
    /// The position moves in Redis with each batch's counts.
    fn delivers_durable_only(&self) -> bool {
        true
    }

    fn progress(&self) -> Progress {
        Progress::WithState { restored: None, save_interval: std::time::Duration::from_secs(1) }
    }

    /// Redis being down is its own outage: degraded in `/stats`, `/readyz`
    /// stays 200 and the journal holds the counts to come.
    fn failures_affect_readiness(&self) -> bool {
        false
    }

    /// A batch is one script call whatever its size: gathering 20 ms of
    /// messages makes Redis's work per message small at any rate, and the
    /// fleet's figures are read at most once per `fleet_refresh` anyway.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_counts_only_for_its_own_journal() {
        let stored = Position::Stored("journal-a:42".into());
        assert_eq!(stored.next_in("journal-a"), Some(42));
        assert_eq!(stored.next_in("journal-b"), None);
        assert_eq!(Position::Nothing.next_in("journal-a"), None);
        assert_eq!(Position::Stored("garbage".into()).next_in("journal-a"), None);
    }
}
