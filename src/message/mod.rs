//! The message model: what OpenIM posts for `callbackAfterSendSingleMsgCommand`,
//! and the received message that the sinks are handed.
//!
//! The wire format is the Go struct described in `shared/openim-protocol.md`.
//! Field names here are Rust's; serde renames map them to the wire. Only the
//! keys a record cannot do without are required: packets seen in the field
//! miss keys the server's source always writes.

mod codes;

pub use codes::{ContentType, MsgFrom, MsgStatus, Platform, SessionType};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::time::SystemTime;

/// The only command this receiver handles.
pub const AFTER_SEND_SINGLE_MSG_COMMAND: &str = "callbackAfterSendSingleMsgCommand";

/// The body of `callbackAfterSendSingleMsgCommand`, field for field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AfterSendSingleMsg {
    #[serde(rename = "sendID")]
    pub send_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub callback_command: String,
    #[serde(rename = "serverMsgID", default, deserialize_with = "null_as_default")]
    pub server_msg_id: String,
    #[serde(rename = "clientMsgID", default, deserialize_with = "null_as_default")]
    pub client_msg_id: String,
    #[serde(rename = "operationID", default, deserialize_with = "null_as_default")]
    pub operation_id: String,
    #[serde(rename = "senderPlatformID", default, deserialize_with = "null_as_default")]
    pub sender_platform_id: Platform,
    #[serde(default, deserialize_with = "null_as_default")]
    pub sender_nickname: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub session_type: SessionType,
    #[serde(default, deserialize_with = "null_as_default")]
    pub msg_from: MsgFrom,
    pub content_type: ContentType,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: MsgStatus,
    /// Milliseconds since the epoch; only OpenIM v3.8.1+ sends it (0 when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub send_time: i64,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "null_as_default")]
    pub create_time: i64,
    /// The message's own JSON, as a string; kept as it came.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: String,
    /// Always 0 in released OpenIM: the callback fires before a seq is assigned.
    #[serde(default, deserialize_with = "null_as_default")]
    pub seq: u32,
    /// `null` from clients (a Go nil slice); read as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub at_user_list: Vec<String>,
    #[serde(rename = "faceURL", default, deserialize_with = "null_as_default")]
    pub face_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ex: String,
    #[serde(rename = "recvID")]
    pub recv_id: String,
}

/// Reads `null` as the type's default: Go writes nil slices as `null`, and
/// hand-made packets use it for "nothing" elsewhere too.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Why a body is not a usable packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    /// Not JSON, or JSON of the wrong shape. `path` is the failing field's
    /// JSON path (`seq`, `atUserList[1]`), empty for the document itself.
    Json { path: String, reason: String },
    /// A required string was present but empty.
    EmptyField(&'static str),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Json { path, reason } if path.is_empty() => f.write_str(reason),
            PacketError::Json { path, reason } => write!(f, "{path}: {reason}"),
            PacketError::EmptyField(field) => write!(f, "{field}: must not be empty"),
        }
    }
}

impl std::error::Error for PacketError {}

impl AfterSendSingleMsg {
    /// Parses and validates a callback body.
    pub fn from_json(body: &[u8]) -> Result<Self, PacketError> {
        // serde's derived structs also accept a JSON array of the fields in
        // order; a packet is an object, so an array is refused up front.
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
            return Err(PacketError::Json {
                path: String::new(),
                reason: "invalid type: array, expected a JSON object".to_owned(),
            });
        }
        // The fast path parses plainly; only a body that fails is parsed again
        // with path tracking, to name the failing field.
        let packet: Self = match serde_json::from_slice(body) {
            Ok(packet) => packet,
            Err(_) => return Err(Self::explain_json_error(body)),
        };
        if packet.send_id.is_empty() {
            return Err(PacketError::EmptyField("sendID"));
        }
        if packet.recv_id.is_empty() {
            return Err(PacketError::EmptyField("recvID"));
        }
        Ok(packet)
    }

    /// Why `body` does not parse, with the JSON path of the failing field.
    fn explain_json_error(body: &[u8]) -> PacketError {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(&mut deserializer);
        match parsed {
            Err(error) => {
                let path = error.path().to_string();
                json_error(if path == "." { String::new() } else { path }, error.inner())
            }
            Ok(_) => match deserializer.end() {
                Err(error) => json_error(String::new(), &error),
                Ok(()) => PacketError::Json { path: String::new(), reason: "invalid JSON".to_owned() },
            },
        }
    }

    /// The conversation's key: the two people, in a fixed order, so that
    /// A→B and B→A are one conversation.
    pub fn conversation(&self) -> (&str, &str) {
        if self.send_id <= self.recv_id {
            (&self.send_id, &self.recv_id)
        } else {
            (&self.recv_id, &self.send_id)
        }
    }
}

/// serde_json appends " at line L column C" to every message; for a wrong
/// value the JSON path already says where, so the position is dropped there
/// and kept for syntax errors, where it is the only clue.
fn json_error(path: String, error: &serde_json::Error) -> PacketError {
    let mut reason = error.to_string();
    if error.is_data()
        && let Some(position) = reason.rfind(" at line ")
    {
        reason.truncate(position);
    }
    PacketError::Json { path, reason }
}

/// Longest operation id written to a diagnostic (the message record keeps it whole).
pub const MAX_LOGGED_ID_CHARS: usize = 128;

/// At most `max_chars` characters of a client-chosen `text`, cut on a
/// character boundary: what is kept as a key or written to a diagnostic, so
/// a caller cannot grow memory or fill a disk with one long string.
pub fn clip(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// The operation id a request is traced by: from the `operationID` header,
/// else from the body, else generated (when the settings allow it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationId {
    pub value: String,
    /// True when neither the header nor the body had one and the receiver made it up.
    pub generated: bool,
}

impl OperationId {
    pub fn generate() -> Self {
        OperationId { value: format!("gen-{}", uuid::Uuid::new_v4().simple()), generated: true }
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// One accepted callback as the sinks see it: the parsed packet, the exact
/// bytes it came as (for a sink that forwards them verbatim), and when and
/// under which operation id it arrived.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub packet: AfterSendSingleMsg,
    pub raw: Bytes,
    pub operation_id: OperationId,
    pub received_at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"sendID":"a","recvID":"b","contentType":101}"#;

    #[test]
    fn a_minimal_packet_fills_every_optional_field_with_its_default() {
        let packet = AfterSendSingleMsg::from_json(MINIMAL.as_bytes()).unwrap();
        assert_eq!(packet.send_id, "a");
        assert_eq!(packet.content_type, ContentType(101));
        assert!(packet.at_user_list.is_empty());
        assert_eq!(packet.ex, "");
    }

    #[test]
    fn nulls_unknown_keys_and_a_trailing_newline_are_accepted() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":null,"ex":null,"newKey":[1,{"x":2}]}
"#;
        let packet = AfterSendSingleMsg::from_json(body).unwrap();
        assert!(packet.at_user_list.is_empty());
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_expected_type() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"seq":"x"}"#;
        let error = AfterSendSingleMsg::from_json(body).unwrap_err();
        assert_eq!(error.to_string(), r#"seq: invalid type: string "x", expected u32"#);
    }

    #[test]
    fn a_bad_list_element_names_its_index() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":["u",7]}"#;
        let error = AfterSendSingleMsg::from_json(body).unwrap_err();
        assert!(error.to_string().starts_with("atUserList[1]: invalid type: integer `7`"), "{error}");
    }

    #[test]
    fn missing_and_empty_required_fields_are_refused() {
        let missing = AfterSendSingleMsg::from_json(br#"{"sendID":"a","recvID":"b"}"#).unwrap_err();
        assert_eq!(missing.to_string(), "missing field `contentType`");
        let empty =
            AfterSendSingleMsg::from_json(br#"{"sendID":"","recvID":"b","contentType":1}"#).unwrap_err();
        assert_eq!(empty, PacketError::EmptyField("sendID"));
    }

    #[test]
    fn syntax_errors_keep_their_position_and_trailing_json_is_refused() {
        let error = AfterSendSingleMsg::from_json(b"{\"sendID\":").unwrap_err();
        assert!(error.to_string().contains("line 1 column"), "{error}");
        let trailing = format!("{MINIMAL} {{}}");
        assert!(AfterSendSingleMsg::from_json(trailing.as_bytes()).is_err());
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hé", 5), "hé");
        assert_eq!(clip(&"x".repeat(1000), 64).len(), 64);
    }

    #[test]
    fn the_conversation_key_does_not_depend_on_direction() {
        let mut packet = AfterSendSingleMsg::from_json(MINIMAL.as_bytes()).unwrap();
        let forward = packet.conversation().0.to_owned() + packet.conversation().1;
        std::mem::swap(&mut packet.send_id, &mut packet.recv_id);
        let backward = packet.conversation().0.to_owned() + packet.conversation().1;
        assert_eq!(forward, backward);
    }
}
