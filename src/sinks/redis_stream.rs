//! The Redis Streams sink: every message one entry of `sinks.redis_stream.stream`,
//! with fields `serverMsgID`, `operationID` and `packet` (the JSON as OpenIM
//! sent it), trimmed to about `max_len` entries (`MAXLEN ~`). Other services
//! subscribe with consumer groups (`XREADGROUP`).
//!
//! Entry ids are Redis's own (`*`): ids of the journal's would collide between
//! replicas writing one stream, and break when a journal starts anew. A
//! batch is one `MULTI`/`EXEC`, so it is added whole or not at all; a replay
//! after a crash may add the records since the last saved cursor again
//! (at-least-once: consumers deduplicate by `serverMsgID`).

use super::{Entry, Sink, SinkError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

/// A Redis connection that connects on first use (so the receiver starts,
/// and accepts messages, while Redis is down) and reconnects after a failure.
/// Connecting, and each answer, may take up to `timeout`. Errors name `key`.
pub(crate) fn connect_lazily(
    url: &crate::settings::Secret,
    timeout: std::time::Duration,
    key: &str,
) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url.expose()).map_err(|error| format!("{key}: {error}"))?;
    // Callers retry on their own schedule (the runner's backoff); the manager only reconnects.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|error| format!("{key}: {error}"))
}

/// One round trip; a refused password or an unknown database is an error no retry mends.
pub(crate) async fn ping(connection: &mut impl redis::aio::ConnectionLike) -> Result<(), SinkError> {
    let answer: Result<String, redis::RedisError> = redis::cmd("PING").query_async(connection).await;
    match answer {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.kind(), redis::ErrorKind::AuthenticationFailed) => {
            Err(SinkError::permanent(format!("redis: {error}: check the password in the URL")))
        }
        Err(error) => Err(SinkError::transient(format!("redis: {error}"))),
    }
}

crate::sinks::sink_settings! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RedisStreamSinkSettings {
        pub enabled: bool,
        /// `redis://host:6379/0` (`rediss://` for TLS); may hold a password, so never shown.
        pub url: crate::settings::Secret,
        /// The stream every message is added to.
        pub stream: String,
        /// Trim the stream to about this many entries (`MAXLEN ~`); 0 keeps every entry.
        pub max_len: u64,
        /// Most messages added per round trip.
        pub batch_size: usize,
        /// Connecting, or an answer, taking longer than this fails the batch (retried).
        #[serde(with = "humantime_serde")]
        pub timeout: std::time::Duration,
    }
}

impl RedisStreamSinkSettings {
    pub(crate) fn validate(&self) -> Result<(), crate::settings::Invalid> {
        use crate::settings::{Invalid, LONGEST, check_count, check_duration, check_not_placeholder};
        check_duration("sinks.redis_stream.timeout", self.timeout, LONGEST)?;
        check_count("sinks.redis_stream.batch_size", self.batch_size as u64, 1, 100_000)?;
        check_not_placeholder("sinks.redis_stream.url", &self.url)?;
        let url = self.url.expose();
        if self.enabled && !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Invalid::new("sinks.redis_stream.url", "must start with redis:// or rediss://"));
        }
        if self.stream.is_empty() {
            return Err(Invalid::new("sinks.redis_stream.stream", "must name a stream"));
        }
        Ok(())
    }
}

pub struct RedisStreamSink {
    connection: ConnectionManager,
    /// `sinks.redis_stream.url` as it may be shown.
    shown_url: String,
    stream: String,
    max_len: u64,
}

impl RedisStreamSink {
    /// Connects lazily: the receiver starts (and accepts messages) while Redis is down.
    pub fn new(settings: &RedisStreamSinkSettings) -> Result<Self, SinkError> {
        let connection = connect_lazily(&settings.url, settings.timeout, "sinks.redis_stream.url")
            .map_err(SinkError::permanent)?;
        Ok(RedisStreamSink {
            connection,
            shown_url: settings.url.shown().into_owned(),
            stream: settings.stream.clone(),
            max_len: settings.max_len,
        })
    }
}

impl Sink for RedisStreamSink {
    fn name(&self) -> &'static str {
        "redis_stream"
    }

    fn describe(&self) -> String {
        format!("stream {} at {}", self.stream, self.shown_url)
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        ping(&mut self.connection).await
    }

    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for entry in batch {
            let message = &entry.message;
            let command = pipeline.cmd("XADD").arg(&self.stream);
            if self.max_len > 0 {
                command.arg("MAXLEN").arg("~").arg(self.max_len);
            }
            command
                .arg("*")
                .arg("callbackCommand")
                .arg(message.command.name)
                .arg("serverMsgID")
                .arg(message.server_msg_id())
                .arg("operationID")
                .arg(&message.operation_id.value)
                .arg("packet")
                .arg(message.raw.as_ref())
                .ignore();
        }
        pipeline
            .exec_async(&mut self.connection)
            .await
            .map_err(|error| SinkError::transient(format!("redis: {error}")))
    }

    /// Redis being down is its own outage: degraded in `/stats`, `/readyz` 200.
    fn failures_affect_readiness(&self) -> bool {
        false
    }
}
