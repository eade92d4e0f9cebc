//! The bodies OpenIM posts, field for field: the message packet the three
//! message callbacks share, and the revoke's.
//!
//! The wire format is the Go structs described in `shared/openim-protocol.md`.
//! Field names here are Rust's; serde renames map them to the wire. Only the
//! keys a record cannot do without are required (each command checks its
//! own): packets seen in the field miss keys the server's source always writes.

mod scan;

use super::codes::{ContentType, MsgFrom, MsgStatus, Platform, SessionType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// The body of the message callbacks: after send (single chat with `recvID`,
/// group chat with `groupID`) and after saved to the database (one of the two).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePacket {
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
    /// 0 after send in released OpenIM (the callback fires before a seq is
    /// assigned); the real one after saved to the database.
    #[serde(default, deserialize_with = "null_as_default")]
    pub seq: u32,
    /// `null` from clients (a Go nil slice); read as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub at_user_list: Vec<String>,
    #[serde(rename = "faceURL", default, deserialize_with = "null_as_default")]
    pub face_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ex: String,
    /// Single chat and notifications; absent for a group.
    #[serde(rename = "recvID", default, deserialize_with = "null_as_default")]
    pub recv_id: String,
    /// Group chat; absent for a single chat.
    #[serde(rename = "groupID", default, deserialize_with = "null_as_default")]
    pub group_id: String,
}

/// The body of `callbackBeforeAfterMsgCommand`, OpenIM's after-revoke callback:
/// which message (by conversation and seq) who revoked. No operationID, no content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokePacket {
    #[serde(default, deserialize_with = "null_as_default")]
    pub callback_command: String,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub seq: i64,
    #[serde(rename = "userID", default, deserialize_with = "null_as_default")]
    pub user_id: String,
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
    /// A string the command cannot do without is empty, or absent where the
    /// shared packet has it optional (`recvID` of a single chat).
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

/// Parses a body as `T`; a body that fails is parsed again with path
/// tracking, to name the failing field.
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, PacketError> {
    // serde's derived structs also accept a JSON array of the fields in
    // order; a packet is an object, so an array is refused up front.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(PacketError::Json {
            path: String::new(),
            reason: "invalid type: array, expected a JSON object".to_owned(),
        });
    }
    // The whole body is checked as UTF-8 at once, so that serde_json need
    // not check each string again (from_slice does: a fifth of the parse);
    // simdutf8 checks a 500-byte packet in 158 instructions, std in 772.
    // A body that is not UTF-8 takes from_slice, which refuses it where a
    // string it reads is bad, and only there, as before.
    let parsed = match simdutf8::basic::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    parsed.map_err(|_| explain_json_error::<T>(body))
}

/// Why `body` does not parse as `T`, with the JSON path of the failing field.
fn explain_json_error<T: DeserializeOwned>(body: &[u8]) -> PacketError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
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

impl MessagePacket {
    /// Reads a message callback's body: the packets OpenIM writes by the
    /// fast path (`scan`), anything it leaves alone through serde_json,
    /// which also words every refusal.
    pub fn from_json(body: &[u8]) -> Result<MessagePacket, PacketError> {
        if let Ok(text) = simdutf8::basic::from_utf8(body)
            && let Some(packet) = scan::message(text)
        {
            return Ok(packet);
        }
        from_json(body)
    }

    /// The conversation in OpenIM's own form (`GetChatConversationIDByMsg`):
    /// `si_` and the two people sorted for a single chat, `sg_` and the group
    /// for a group (`g_` for the unused write group), `sn_` and the two sorted
    /// for a notification; empty for a session type OpenIM does not define.
    pub fn conversation_id(&self) -> String {
        let (first, second) = if self.send_id <= self.recv_id {
            (&self.send_id, &self.recv_id)
        } else {
            (&self.recv_id, &self.send_id)
        };
        match self.session_type {
            SessionType::SINGLE_CHAT => format!("si_{first}_{second}"),
            SessionType::WRITE_GROUP => format!("g_{}", self.group_id),
            SessionType::READ_GROUP => format!("sg_{}", self.group_id),
            SessionType::NOTIFICATION => format!("sn_{first}_{second}"),
            _ => String::new(),
        }
    }

    /// True for a group's message (either group session type, or a group id given).
    pub fn is_group(&self) -> bool {
        !self.group_id.is_empty()
    }

    /// The readable text of a text-like message, pulled out of its `content`
    /// (a JSON object whose field depends on the type, as OpenIM's SDK writes
    /// it): `content` of a text (101) or markdown (118), `text` of an @-text
    /// (106), a quote (114) or an advanced text (117). Empty for every other
    /// type, and for content that is not such an object.
    pub fn readable_text(&self) -> String {
        let field = match self.content_type.0 {
            101 | 118 => "content",
            106 | 114 | 117 => "text",
            _ => return String::new(),
        };
        let Ok(serde_json::Value::Object(mut content)) = serde_json::from_str(&self.content) else {
            return String::new();
        };
        match content.remove(field) {
            Some(serde_json::Value::String(text)) => text,
            _ => String::new(),
        }
    }
}

/// Fails naming `field` when `value` is empty.
pub(super) fn require(value: &str, field: &'static str) -> Result<(), PacketError> {
    if value.is_empty() { Err(PacketError::EmptyField(field)) } else { Ok(()) }
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

#[cfg(test)]
mod tests {
    use super::super::{
        AFTER_MSG_SAVE_DB, AFTER_REVOKE_MSG, AFTER_SEND_GROUP_MSG, AFTER_SEND_SINGLE_MSG, Callback,
    };
    use super::*;

    const MINIMAL: &str = r#"{"sendID":"a","recvID":"b","contentType":101}"#;

    #[test]
    fn readable_text_is_taken_from_each_text_like_type_and_nothing_else() {
        let text_of = |content_type: i32, content: &str| {
            MessagePacket {
                content_type: ContentType(content_type),
                content: content.into(),
                ..Default::default()
            }
            .readable_text()
        };
        assert_eq!(text_of(101, r#"{"content":"你好世界"}"#), "你好世界");
        assert_eq!(text_of(118, r#"{"content":"**bold**"}"#), "**bold**");
        assert_eq!(text_of(106, r#"{"text":"@bob hi","atUserList":["bob"]}"#), "@bob hi");
        assert_eq!(text_of(114, r#"{"text":"quoted reply","quoteMessage":{}}"#), "quoted reply");
        assert_eq!(text_of(117, r#"{"text":"rich","messageEntityList":[]}"#), "rich");
        assert_eq!(text_of(102, r#"{"content":"not text"}"#), "", "a picture has none");
        assert_eq!(text_of(101, "plain, not JSON"), "");
        assert_eq!(text_of(101, r#"{"content":5}"#), "");
    }

    fn single(body: &[u8]) -> Result<MessagePacket, PacketError> {
        match AFTER_SEND_SINGLE_MSG.parse(body)? {
            Callback::Message(packet) => Ok(packet),
            Callback::Revoke(_) => unreachable!("a message command"),
        }
    }

    #[test]
    fn a_minimal_packet_fills_every_optional_field_with_its_default() {
        let packet = single(MINIMAL.as_bytes()).unwrap();
        assert_eq!(packet.send_id, "a");
        assert_eq!(packet.content_type, ContentType(101));
        assert!(packet.at_user_list.is_empty());
        assert_eq!((packet.ex.as_str(), packet.group_id.as_str()), ("", ""));
    }

    #[test]
    fn nulls_unknown_keys_and_a_trailing_newline_are_accepted() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":null,"ex":null,"newKey":[1,{"x":2}]}
"#;
        assert!(single(body).unwrap().at_user_list.is_empty());
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_expected_type() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"seq":"x"}"#;
        let error = single(body).unwrap_err();
        assert_eq!(error.to_string(), r#"seq: invalid type: string "x", expected u32"#);
    }

    #[test]
    fn a_bad_list_element_names_its_index() {
        let body = br#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":["u",7]}"#;
        let error = single(body).unwrap_err();
        assert!(error.to_string().starts_with("atUserList[1]: invalid type: integer `7`"), "{error}");
    }

    #[test]
    fn missing_and_empty_required_fields_are_refused() {
        let missing = single(br#"{"sendID":"a","recvID":"b"}"#).unwrap_err();
        assert_eq!(missing.to_string(), "missing field `contentType`");
        let empty = single(br#"{"sendID":"","recvID":"b","contentType":1}"#).unwrap_err();
        assert_eq!(empty, PacketError::EmptyField("sendID"));
        assert_eq!(single(br#"{"sendID":"a","contentType":1}"#), Err(PacketError::EmptyField("recvID")));
    }

    #[test]
    fn each_command_requires_its_own_fields() {
        let group = br#"{"sendID":"a","groupID":"g","sessionType":3,"contentType":101}"#;
        assert!(AFTER_SEND_GROUP_MSG.parse(group).is_ok());
        assert!(AFTER_SEND_SINGLE_MSG.parse(group).is_err(), "a group packet has no recvID");
        let no_group = br#"{"sendID":"a","recvID":"b","contentType":101}"#;
        assert_eq!(AFTER_SEND_GROUP_MSG.parse(no_group), Err(PacketError::EmptyField("groupID")));
        assert!(AFTER_MSG_SAVE_DB.parse(group).is_ok() && AFTER_MSG_SAVE_DB.parse(no_group).is_ok());
        let neither = br#"{"sendID":"a","recvID":"","groupID":"","contentType":101}"#;
        assert_eq!(AFTER_MSG_SAVE_DB.parse(neither), Err(PacketError::EmptyField("recvID or groupID")));
        let revoke = br#"{"callbackCommand":"callbackBeforeAfterMsgCommand","conversationID":"si_a_b","seq":12,"userID":"a"}"#;
        let Callback::Revoke(parsed) = AFTER_REVOKE_MSG.parse(revoke).unwrap() else { panic!("a revoke") };
        assert_eq!(
            (parsed.conversation_id.as_str(), parsed.seq, parsed.user_id.as_str()),
            ("si_a_b", 12, "a")
        );
        assert_eq!(
            AFTER_REVOKE_MSG.parse(br#"{"seq":1}"#).unwrap_err().to_string(),
            "missing field `conversationID`"
        );
    }

    #[test]
    fn syntax_errors_keep_their_position_and_trailing_json_is_refused() {
        let error = single(b"{\"sendID\":").unwrap_err();
        assert!(error.to_string().contains("line 1 column"), "{error}");
        let trailing = format!("{MINIMAL} {{}}");
        assert!(single(trailing.as_bytes()).is_err());
    }

    #[test]
    fn conversation_ids_are_openims_own_and_do_not_depend_on_direction() {
        let mut packet = single(br#"{"sendID":"b","recvID":"a","sessionType":1,"contentType":101}"#).unwrap();
        assert_eq!(packet.conversation_id(), "si_a_b");
        std::mem::swap(&mut packet.send_id, &mut packet.recv_id);
        assert_eq!(packet.conversation_id(), "si_a_b");
        packet.session_type = SessionType::NOTIFICATION;
        assert_eq!(packet.conversation_id(), "sn_a_b");
        packet.session_type = SessionType::READ_GROUP;
        packet.group_id = "g1".into();
        assert_eq!(packet.conversation_id(), "sg_g1");
        packet.session_type = SessionType::WRITE_GROUP;
        assert_eq!(packet.conversation_id(), "g_g1");
    }
}
