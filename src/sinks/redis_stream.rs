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

pub struct RedisStreamSink {
    connection: ConnectionManager,
    stream: String,
    max_len: u64,
}

impl RedisStreamSink {
    /// Connects lazily: the receiver starts (and accepts messages) while Redis is down.
    pub fn new(settings: &RedisStreamSinkSettings) -> Result<Self, SinkError> {
        let client = redis::Client::open(settings.url.expose())
            .map_err(|error| SinkError::permanent(format!("sinks.redis_stream.url: {error}")))?;
        // The runner retries with its own backoff; the manager only reconnects.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| SinkError::permanent(format!("sinks.redis_stream.url: {error}")))?;
        Ok(RedisStreamSink { connection, stream: settings.stream.clone(), max_len: settings.max_len })
    }
}

impl Sink for RedisStreamSink {
    fn name(&self) -> &'static str {
        "redis_stream"
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
                .arg("serverMsgID")
                .arg(&message.packet.server_msg_id)
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
