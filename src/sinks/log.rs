//! The log sink: one structured record per callback, target `message`: a
//! message's fields (with `groupID` for a group, `seq` once OpenIM knows it),
//! or a revoke's (`conversationID`, `seq`, `userID`), each naming its command.
//!
//! Records are written on this sink's thread into a buffer that goes out
//! after each batch (its records stamped with the time it was written, as
//! one write), with blocking writes: a slow stdout slows this sink
//! and nothing else (the journal holds what it has not written yet). After a
//! crash the records since its last saved cursor are written again
//! (at-least-once).
//!
//! JSON records, the format of every deployment that ships logs, are written
//! straight from the message: the same line tracing's JSON formatter would
//! write, at a fraction of its cost (it re-validates every piece it writes as
//! UTF-8). A message's record is written by hand (`Record::write_json`): its
//! field names and punctuation are literals, copied without the escaping
//! check serde gives every key, and only values go through serde_json's
//! escaping. Human-readable records go through tracing's own formatter, as a
//! tracing event.

use super::{Entry, Sink, SinkError};
use crate::callbacks::{Callback, MessagePacket, ReceivedMessage, RevokePacket, Role};
use crate::json_text::write_string;
use crate::settings::LogFormat;
use crate::telemetry::{self, MESSAGE_TARGET, RecordWriter};
use serde::Deserialize;
use serde::Serialize;
use std::io::Write;
use tracing::Dispatch;

/// The event's message, in both formats: what the callback says happened.
fn record_message(message: &ReceivedMessage, packet: &MessagePacket) -> &'static str {
    match (message.command.role, packet.is_group()) {
        (Role::Sent, false) => "single chat message",
        (Role::Sent, true) => "group chat message",
        _ => "message saved to database",
    }
}

const REVOKE_MESSAGE: &str = "message revoked";

crate::sinks::sink_settings! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LogSinkSettings {
        pub enabled: bool,
        /// Most records the sink takes from the journal at once.
        pub batch_size: usize,
        /// Write the message text into records.
        pub include_content: bool,
        /// Cut content longer than this many characters (0: no limit).
        pub max_content_chars: usize,
    }
}

impl LogSinkSettings {
    pub(crate) fn validate(&self) -> Result<(), crate::settings::Invalid> {
        crate::settings::check_count("sinks.log.batch_size", self.batch_size as u64, 1, 100_000)
    }
}

pub struct LogSink {
    format: RecordFormat,
    writer: RecordWriter,
    /// One JSON record is serialized here, then written to `writer` in one
    /// piece: serde writes a record in ~100 small pieces, which are cheap
    /// into a Vec and costly through the writer's lock and buffer.
    line: Vec<u8>,
    include_content: bool,
    max_content_chars: usize,
}

enum RecordFormat {
    Json,
    /// A tracing dispatcher that formats events into the writer.
    Pretty(Dispatch),
}

impl LogSink {
    pub fn new(settings: &LogSinkSettings, format: LogFormat, writer: RecordWriter) -> Self {
        let format = match telemetry::resolve_format(format) {
            LogFormat::Json => RecordFormat::Json,
            other => RecordFormat::Pretty(telemetry::message_records(other, writer.clone())),
        };
        LogSink {
            format,
            writer,
            line: Vec::with_capacity(4096),
            include_content: settings.include_content,
            max_content_chars: settings.max_content_chars,
        }
    }
}

/// One message's record, field for field, in the order it is written.
struct Record<'a> {
    timestamp: &'a str,
    message: &'static str,
    callback_command: &'static str,
    operation_id: &'a str,
    operation_id_generated: bool,
    server_msg_id: &'a str,
    client_msg_id: &'a str,
    send_id: &'a str,
    /// Left out when empty (a group's message), as `group_id` is for a single chat.
    recv_id: &'a str,
    group_id: &'a str,
    /// Left out while 0: OpenIM sends the real seq only once the message is saved.
    seq: u32,
    sender_platform_id: i32,
    sender_platform: &'a str,
    content_type: i32,
    content_type_name: &'a str,
    session_type: i32,
    msg_from: i32,
    status: i32,
    create_time: i64,
    send_time: i64,
    at_user_list: &'a [String],
    content: Option<&'a str>,
    content_truncated: bool,
}

/// `,"name":`, the literal that starts a field after the first.
macro_rules! field {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

impl Record<'_> {
    /// The record as one line of JSON, appended to `line`.
    fn write_json(&self, line: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        let mut number = |line: &mut Vec<u8>, name: &[u8], value: i64| {
            line.extend_from_slice(name);
            line.extend_from_slice(numbers.format(value).as_bytes());
        };
        let text = |line: &mut Vec<u8>, name: &[u8], value: &str| {
            line.extend_from_slice(name);
            write_string(line, value);
        };
        line.extend_from_slice(b"{\"timestamp\":\"");
        line.extend_from_slice(self.timestamp.as_bytes());
        line.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":");
        write_string(line, MESSAGE_TARGET);
        text(line, field!("message"), self.message);
        text(line, field!("callbackCommand"), self.callback_command);
        text(line, field!("operationID"), self.operation_id);
        if self.operation_id_generated {
            line.extend_from_slice(field!("operationIDGenerated"));
            line.extend_from_slice(b"true");
        }
        text(line, field!("serverMsgID"), self.server_msg_id);
        text(line, field!("clientMsgID"), self.client_msg_id);
        text(line, field!("sendID"), self.send_id);
        if !self.recv_id.is_empty() {
            text(line, field!("recvID"), self.recv_id);
        }
        if !self.group_id.is_empty() {
            text(line, field!("groupID"), self.group_id);
        }
        if self.seq != 0 {
            number(line, field!("seq"), self.seq.into());
        }
        number(line, field!("senderPlatformID"), self.sender_platform_id.into());
        text(line, field!("senderPlatform"), self.sender_platform);
        number(line, field!("contentType"), self.content_type.into());
        text(line, field!("contentTypeName"), self.content_type_name);
        number(line, field!("sessionType"), self.session_type.into());
        number(line, field!("msgFrom"), self.msg_from.into());
        number(line, field!("status"), self.status.into());
        number(line, field!("createTime"), self.create_time);
        number(line, field!("sendTime"), self.send_time);
        line.extend_from_slice(field!("atUserList"));
        line.push(b'[');
        for (index, user) in self.at_user_list.iter().enumerate() {
            if index > 0 {
                line.push(b',');
            }
            write_string(line, user);
        }
        line.push(b']');
        if let Some(content) = self.content {
            text(line, field!("content"), content);
        }
        if self.content_truncated {
            line.extend_from_slice(field!("contentTruncated"));
            line.extend_from_slice(b"true");
        }
        line.push(b'}');
    }
}

/// A revoke's record.
#[derive(Serialize)]
struct RevokeRecord<'a> {
    timestamp: &'a str,
    level: &'static str,
    target: &'static str,
    message: &'static str,
    #[serde(rename = "callbackCommand")]
    callback_command: &'static str,
    #[serde(rename = "operationID")]
    operation_id: &'a str,
    #[serde(rename = "operationIDGenerated", skip_serializing_if = "is_false")]
    operation_id_generated: bool,
    #[serde(rename = "conversationID")]
    conversation_id: &'a str,
    seq: i64,
    #[serde(rename = "userID")]
    user_id: &'a str,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn describe(&self) -> String {
        "one record per message, to stdout".to_owned()
    }

    fn uses_network(&self) -> bool {
        false
    }

    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        // A batch goes out in one write, so its records carry one time:
        // when it was written, as RFC 3339 in UTC with microseconds, like
        // tracing's timestamps (made once, not once per record).
        let written_at = crate::epoch::rfc3339_micros(std::time::SystemTime::now());
        for entry in batch {
            self.write_record(&entry.message, written_at.as_str())
                .map_err(|error| SinkError::transient(format!("writing a log record: {error}")))?;
        }
        // A closed or broken stdout shows here: the batch is retried, and
        // /readyz says so, rather than records being counted and lost.
        self.writer.flush().map_err(|error| SinkError::transient(format!("writing log records: {error}")))
    }
}

impl LogSink {
    fn write_record(&mut self, message: &ReceivedMessage, timestamp: &str) -> std::io::Result<()> {
        let packet = match &message.callback {
            Callback::Message(packet) => packet,
            Callback::Revoke(revoke) => return self.write_revoke(message, revoke, timestamp),
        };
        let (content, content_truncated) = if self.include_content {
            let (content, truncated) = truncate_chars(&packet.content, self.max_content_chars);
            (Some(content), truncated)
        } else {
            (None, false)
        };
        let record = Record {
            timestamp,
            message: record_message(message, packet),
            callback_command: message.command.name,
            operation_id: &message.operation_id.value,
            operation_id_generated: message.operation_id.generated,
            server_msg_id: &packet.server_msg_id,
            client_msg_id: &packet.client_msg_id,
            send_id: &packet.send_id,
            recv_id: &packet.recv_id,
            group_id: &packet.group_id,
            seq: packet.seq,
            sender_platform_id: packet.sender_platform_id.0,
            sender_platform: &packet.sender_platform_id.label(),
            content_type: packet.content_type.0,
            content_type_name: &packet.content_type.label(),
            session_type: packet.session_type.0,
            msg_from: packet.msg_from.0,
            status: packet.status.0,
            create_time: packet.create_time,
            send_time: packet.send_time,
            at_user_list: &packet.at_user_list,
            content,
            content_truncated,
        };
        match &self.format {
            RecordFormat::Json => {
                self.line.clear();
                record.write_json(&mut self.line);
                self.line.push(b'\n');
                self.writer.lock_for_record().write_all(&self.line)
            }
            RecordFormat::Pretty(dispatch) => {
                tracing::dispatcher::with_default(dispatch, || emit_event(&record));
                Ok(())
            }
        }
    }

    fn write_revoke(
        &mut self,
        message: &ReceivedMessage,
        revoke: &RevokePacket,
        timestamp: &str,
    ) -> std::io::Result<()> {
        let record = RevokeRecord {
            timestamp,
            level: "INFO",
            target: MESSAGE_TARGET,
            message: REVOKE_MESSAGE,
            callback_command: message.command.name,
            operation_id: &message.operation_id.value,
            operation_id_generated: message.operation_id.generated,
            conversation_id: &revoke.conversation_id,
            seq: revoke.seq,
            user_id: &revoke.user_id,
        };
        match &self.format {
            RecordFormat::Json => write_json(&self.writer, &mut self.line, &record),
            RecordFormat::Pretty(dispatch) => {
                tracing::dispatcher::with_default(dispatch, || {
                    tracing::info!(
                        target: MESSAGE_TARGET,
                        message = REVOKE_MESSAGE,
                        "callbackCommand" = record.callback_command,
                        "operationID" = record.operation_id,
                        "operationIDGenerated" = record.operation_id_generated.then_some(true),
                        "conversationID" = record.conversation_id,
                        "seq" = record.seq,
                        "userID" = record.user_id,
                    );
                });
                Ok(())
            }
        }
    }
}

fn write_json(writer: &RecordWriter, line: &mut Vec<u8>, record: &impl Serialize) -> std::io::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, record)?;
    line.push(b'\n');
    writer.lock_for_record().write_all(line)
}

/// The record as a tracing event, for tracing's human-readable formatter.
fn emit_event(record: &Record<'_>) {
    // A list is written as its JSON text: tracing's fields are scalars.
    let at_user_list = serde_json::to_string(record.at_user_list).unwrap_or_default();
    tracing::info!(
        target: MESSAGE_TARGET,
        message = record.message,
        "callbackCommand" = record.callback_command,
        "operationID" = record.operation_id,
        "operationIDGenerated" = record.operation_id_generated.then_some(true),
        "serverMsgID" = record.server_msg_id,
        "clientMsgID" = record.client_msg_id,
        "sendID" = record.send_id,
        "recvID" = (!record.recv_id.is_empty()).then_some(record.recv_id),
        "groupID" = (!record.group_id.is_empty()).then_some(record.group_id),
        "seq" = (record.seq != 0).then_some(record.seq),
        "senderPlatformID" = record.sender_platform_id,
        "senderPlatform" = record.sender_platform,
        "contentType" = record.content_type,
        "contentTypeName" = record.content_type_name,
        "sessionType" = record.session_type,
        "msgFrom" = record.msg_from,
        "status" = record.status,
        "createTime" = record.create_time,
        "sendTime" = record.send_time,
        "atUserList" = at_user_list.as_str(),
        "content" = record.content,
        "contentTruncated" = record.content_truncated.then_some(true),
    );
}

/// The first `max_chars` characters of `text` (all of it when `max_chars` is
/// 0), and whether anything was cut. Cuts on a character boundary.
fn truncate_chars(text: &str, max_chars: usize) -> (&str, bool) {
    if max_chars == 0 {
        return (text, false);
    }
    let kept = crate::callbacks::clip(text, max_chars);
    (kept, kept.len() < text.len())
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

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::callbacks::{AFTER_SEND_SINGLE_MSG, OperationId};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written(format: LogFormat) -> String {
        let out = Shared::default();
        let settings = crate::settings::Settings::defaults();
        let mut sink = LogSink::new(&settings.sinks.log, format, RecordWriter::new(out.clone()));
        let raw = br#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":["c"],"content":"hi"}"#;
        let message = ReceivedMessage {
            command: AFTER_SEND_SINGLE_MSG,
            callback: AFTER_SEND_SINGLE_MSG.parse(raw).unwrap(),
            raw: bytes::Bytes::from_static(raw),
            operation_id: OperationId { value: "op-7".into(), generated: false },
            received_at: std::time::SystemTime::now(),
        };
        let entry = crate::sinks::Entry { seq: 1, message: std::sync::Arc::new(message) };
        futures_util::FutureExt::now_or_never(sink.deliver(&[entry])).unwrap().unwrap();
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_records_are_one_object_per_line_with_a_real_list() {
        let line = written(LogFormat::Json);
        assert!(line.ends_with('\n') && line.lines().count() == 1, "{line:?}");
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["target"], "message");
        assert_eq!(record["atUserList"], serde_json::json!(["c"]));
        assert!(record["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn pretty_records_are_tracing_events_on_one_line() {
        let line = written(LogFormat::Pretty);
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(line.contains("INFO") && line.contains("message: single chat message"), "{line}");
        assert!(line.contains(r#"operationID="op-7""#) && line.contains(r#"atUserList="[\"c\"]""#), "{line}");
    }
}
