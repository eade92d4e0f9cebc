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
use crate::settings::RedisStreamSinkSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
