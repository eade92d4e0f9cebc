//! The callbacks this receiver records: one file per OpenIM command, and the
//! registry ([`COMMANDS`]) that the router, the journal and the sinks read.
//!
//! Adding a command is a file here (its name, its `webhooks.yml` key, its
//! journal code, its role and how its body is checked) and a line in
//! [`COMMANDS`]. Sinks act on a command's [`Role`], not on its name.

mod after_msg_save_db;
mod after_revoke_msg;
mod after_send_group_msg;
mod after_send_single_msg;
mod codes;
mod packet;

pub use codes::{ContentType, MsgFrom, MsgStatus, Platform, SessionType};
pub use packet::{MessagePacket, PacketError, RevokePacket};

pub use crate::journal::OperationId;
use crate::journal::{NewRecord, Record, Stored};
use bytes::Bytes;
use std::fmt;
use std::time::SystemTime;

/// Every command this receiver can record, in the order settings and reports list them.
pub static COMMANDS: [&Command; 4] = [
    &after_send_single_msg::COMMAND,
    &after_send_group_msg::COMMAND,
    &after_msg_save_db::COMMAND,
    &after_revoke_msg::COMMAND,
];

/// The command of a single chat's after-send callback, the one every OpenIM version sends.
pub const AFTER_SEND_SINGLE_MSG: &Command = &after_send_single_msg::COMMAND;
pub const AFTER_SEND_GROUP_MSG: &Command = &after_send_group_msg::COMMAND;
pub const AFTER_MSG_SAVE_DB: &Command = &after_msg_save_db::COMMAND;
pub const AFTER_REVOKE_MSG: &Command = &after_revoke_msg::COMMAND;

/// One OpenIM webhook command.
pub struct Command {
    /// As OpenIM names it: the last URL path segment, `?command=`, the body's `callbackCommand`.
    pub name: &'static str,
    /// Its key in OpenIM's `webhooks.yml`, and in `callbacks.record`.
    pub key: &'static str,
    /// Its number in a journal record. 0 is the single chat's: records from
    /// before commands were kept are all of it.
    pub code: u8,
    pub role: Role,
    /// Parses and checks a body.
    parse: fn(&[u8]) -> Result<Callback, PacketError>,
}

/// What a command tells about a message: the sinks act on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A message was sent (single or group chat): counted in `messages.total`.
    Sent,
    /// A message was saved to OpenIM's database, with its real `seq`; the
    /// same message as its after-send callback, so never counted again.
    Saved,
    /// A message was revoked.
    Revoked,
}

impl Command {
    pub fn parse(&self, body: &[u8]) -> Result<Callback, PacketError> {
        (self.parse)(body)
    }

    /// The command named `name`.
    pub fn by_name(name: &str) -> Option<&'static Command> {
        COMMANDS.iter().copied().find(|command| command.name == name)
    }

    /// The command with journal code `code`.
    pub fn by_code(code: u8) -> Option<&'static Command> {
        COMMANDS.iter().copied().find(|command| command.code == code)
    }

    /// The command with `webhooks.yml` key `key`.
    pub fn by_key(key: &str) -> Option<&'static Command> {
        COMMANDS.iter().copied().find(|command| command.key == key)
    }
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
    }
}

impl Eq for Command {}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A callback's parsed body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "it lives in the Arc of a ReceivedMessage: boxing the message would cost every message an allocation to save a revoke some bytes"
)]
pub enum Callback {
    Message(MessagePacket),
    Revoke(RevokePacket),
}

impl Callback {
    /// The body's `callbackCommand` (empty when absent).
    pub fn callback_command(&self) -> &str {
        match self {
            Callback::Message(packet) => &packet.callback_command,
            Callback::Revoke(revoke) => &revoke.callback_command,
        }
    }

    /// The body's `operationID` (a revoke has none).
    pub fn operation_id(&self) -> &str {
        match self {
            Callback::Message(packet) => &packet.operation_id,
            Callback::Revoke(_) => "",
        }
    }
}

/// Longest operation id written to a diagnostic (the message record keeps it whole).
pub const MAX_LOGGED_ID_CHARS: usize = 128;

/// At most `max_chars` characters of a client-chosen `text`, cut on a
/// character boundary: what is kept as a key or written to a diagnostic, so
/// a caller cannot grow memory or fill a disk with one long string.
pub fn clip(text: &str, max_chars: usize) -> &str {
    // No more bytes than the limit is no more characters: nothing to count.
    if text.len() <= max_chars {
        return text;
    }
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// One accepted callback as the sinks see it: its command, the parsed body,
/// the exact bytes it came as (for a sink that forwards them verbatim), and
/// when and under which operation id it arrived.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub command: &'static Command,
    pub callback: Callback,
    pub raw: Bytes,
    pub operation_id: OperationId,
    pub received_at: SystemTime,
}

impl ReceivedMessage {
    /// Parses `raw` as `command`'s body.
    pub fn parse(
        command: &'static Command,
        raw: Bytes,
        operation_id: OperationId,
        received_at: SystemTime,
    ) -> Result<Self, PacketError> {
        let callback = command.parse(&raw)?;
        Ok(ReceivedMessage { command, callback, raw, operation_id, received_at })
    }

    /// The message packet, for the message callbacks (not a revoke).
    pub fn message(&self) -> Option<&MessagePacket> {
        match &self.callback {
            Callback::Message(packet) => Some(packet),
            Callback::Revoke(_) => None,
        }
    }

    /// The message's `serverMsgID` (empty for a revoke, which names none).
    pub fn server_msg_id(&self) -> &str {
        self.message().map_or("", |packet| &packet.server_msg_id)
    }

    /// A key naming what this callback is about, the same each time it is
    /// delivered: the message's `serverMsgID`, or for a revoke the revoked
    /// message's conversation and seq. A relay sends it as `Idempotency-Key`.
    pub fn idempotency_key(&self) -> String {
        match &self.callback {
            Callback::Message(packet) if self.command.role == Role::Sent => packet.server_msg_id.clone(),
            Callback::Message(packet) => format!("{}:{}", self.command.key, packet.server_msg_id),
            Callback::Revoke(revoke) => {
                format!("{}:{}:{}", self.command.key, revoke.conversation_id, revoke.seq)
            }
        }
    }
}

/// In the journal, a callback is its command's code (the record's kind) and
/// its body as it came; read back, the kind names the command that parses it.
impl Stored for ReceivedMessage {
    fn as_record(&self) -> NewRecord<'_> {
        NewRecord {
            kind: self.command.code,
            received_at: self.received_at,
            operation_id: &self.operation_id,
            body: &self.raw,
        }
    }

    fn from_record(record: Record) -> Result<Self, String> {
        // A newer release's command is unknown to this one.
        let command = Command::by_code(record.kind)
            .ok_or_else(|| format!("record kind {} is no command this receiver knows", record.kind))?;
        ReceivedMessage::parse(command, record.body, record.operation_id, record.received_at)
            .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_keys_are_each_unique_and_the_single_chat_is_code_0() {
        for (index, command) in COMMANDS.iter().enumerate() {
            for other in &COMMANDS[index + 1..] {
                assert_ne!(command.code, other.code);
                assert_ne!(command.name, other.name);
                assert_ne!(command.key, other.key);
            }
            assert!(command.code < 8, "three bits of a journal record's flags hold it");
        }
        assert_eq!(Command::by_code(0), Some(AFTER_SEND_SINGLE_MSG));
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hé", 5), "hé");
        assert_eq!(clip("héllo", 5), "héllo", "6 bytes, 5 characters: kept whole");
        assert_eq!(clip("", 0), "");
        assert_eq!(clip("a", 0), "");
        assert_eq!(clip(&"x".repeat(1000), 64).len(), 64);
    }
}
