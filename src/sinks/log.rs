//! The log sink: one structured record per message, target `message`.
//!
//! Records are formatted by their own tracing dispatcher (see `telemetry`),
//! on this sink's thread, into a buffer written out after each batch with
//! blocking writes: a slow stdout slows this sink's queue and nothing else,
//! and no record is ever dropped.

use super::{Sink, SinkError};
use crate::message::ReceivedMessage;
use crate::settings::{LogFormat, LogSinkSettings};
use crate::telemetry::{self, MESSAGE_TARGET, RecordWriter};
use tracing::Dispatch;

pub struct LogSink {
    /// Formats the records into `writer`.
    records: Dispatch,
    writer: RecordWriter,
    include_content: bool,
    max_content_chars: usize,
}

impl LogSink {
    pub fn new(settings: &LogSinkSettings, format: LogFormat, writer: RecordWriter) -> Self {
        LogSink {
            records: telemetry::message_records(format, writer.clone()),
            writer,
            include_content: settings.include_content,
            max_content_chars: settings.max_content_chars,
        }
    }
}

impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn deliver(&mut self, message: &ReceivedMessage) -> Result<(), SinkError> {
        let packet = &message.packet;
        let (content, content_truncated) = if self.include_content {
            let (content, truncated) = truncate_chars(&packet.content, self.max_content_chars);
            (Some(content), truncated)
        } else {
            (None, false)
        };
        // A list is written as its JSON text: tracing's fields are scalars.
        let at_user_list = serde_json::to_string(&packet.at_user_list)
            .map_err(|error| SinkError(format!("atUserList: {error}")))?;
        tracing::dispatcher::with_default(&self.records, || {
            tracing::info!(
                target: MESSAGE_TARGET,
                // An identifier first: a string literal here would be read as the message.
                seq = packet.seq,
                "operationID" = %message.operation_id,
                "operationIDGenerated" = message.operation_id.generated.then_some(true),
                "serverMsgID" = %packet.server_msg_id,
                "clientMsgID" = %packet.client_msg_id,
                "sendID" = %packet.send_id,
                "recvID" = %packet.recv_id,
                "senderPlatformID" = packet.sender_platform_id.0,
                "senderPlatform" = %packet.sender_platform_id.label(),
                "contentType" = packet.content_type.0,
                "contentTypeName" = %packet.content_type.label(),
                "sessionType" = packet.session_type.0,
                "msgFrom" = packet.msg_from.0,
                "status" = packet.status.0,
                "createTime" = packet.create_time,
                "sendTime" = packet.send_time,
                "atUserList" = %at_user_list,
                "content" = content,
                "contentTruncated" = content_truncated.then_some(true),
                "single chat message"
            );
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.flush().map_err(|error| SinkError(format!("writing log records: {error}")))
    }
}

/// The first `max_chars` characters of `text` (all of it when `max_chars` is
/// 0), and whether anything was cut. Cuts on a character boundary.
fn truncate_chars(text: &str, max_chars: usize) -> (&str, bool) {
    if max_chars == 0 {
        return (text, false);
    }
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => (&text[..cut], true),
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_chars;

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("héllo", 2), ("hé", true));
        assert_eq!(truncate_chars("héllo", 5), ("héllo", false));
        assert_eq!(truncate_chars("héllo", 0), ("héllo", false));
    }
}
