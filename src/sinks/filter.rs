//! Which records a sink takes: `[sinks.<name>.only]` (for a relay target
//! `[sinks.forward.<name>.only]`). OpenIM's own `attentionIds` is matched
//! against `recvID` only (a group never matches) and ignored after saving to
//! the database; this one works for every callback.
//!
//! Each list that is set must match (a value in it); an empty list matches
//! everything. A record left out advances the sink's position like a
//! delivered one and is counted as `filtered`.

use crate::callbacks::{Command, ReceivedMessage};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordFilter {
    /// `webhooks.yml` keys: `afterSendSingleMsg`, `afterSendGroupMsg`, …
    #[serde(deserialize_with = "words")]
    pub callbacks: Vec<String>,
    /// `sessionType`: 1 single chat, 3 group chat, 4 notification.
    #[serde(deserialize_with = "numbers")]
    pub session_types: Vec<i32>,
    /// `contentType`: 101 text, 102 picture, …
    #[serde(deserialize_with = "numbers")]
    pub content_types: Vec<i32>,
    /// The sender.
    #[serde(deserialize_with = "words")]
    pub send_ids: Vec<String>,
    /// The receiver of a single chat.
    #[serde(deserialize_with = "words")]
    pub recv_ids: Vec<String>,
    /// The group of a group chat.
    #[serde(deserialize_with = "words")]
    pub group_ids: Vec<String>,
}

impl RecordFilter {
    /// True when it leaves nothing out.
    pub fn is_empty(&self) -> bool {
        *self == RecordFilter::default()
    }

    /// Whether the sink takes `message`. A revoke names no sender, receiver,
    /// group or type: only a filter on `callbacks` alone lets one through.
    pub fn admits(&self, message: &ReceivedMessage) -> bool {
        if !self.callbacks.is_empty() && !self.callbacks.iter().any(|key| key == message.command.key) {
            return false;
        }
        let lists_set = !(self.session_types.is_empty()
            && self.content_types.is_empty()
            && self.send_ids.is_empty()
            && self.recv_ids.is_empty()
            && self.group_ids.is_empty());
        let Some(packet) = message.message() else { return !lists_set };
        let matches = |list: &[String], value: &str| list.is_empty() || list.iter().any(|id| id == value);
        let matches_code = |list: &[i32], value: i32| list.is_empty() || list.contains(&value);
        matches_code(&self.session_types, packet.session_type.0)
            && matches_code(&self.content_types, packet.content_type.0)
            && matches(&self.send_ids, &packet.send_id)
            && matches(&self.recv_ids, &packet.recv_id)
            && matches(&self.group_ids, &packet.group_id)
    }

    /// Names the first callback key that is no command's.
    pub fn unknown_callback(&self) -> Option<&str> {
        self.callbacks.iter().find(|key| Command::by_key(key).is_none()).map(String::as_str)
    }
}

/// A list, or (from the environment) one comma-separated text.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrText<T> {
    List(Vec<T>),
    One(T),
}

/// A number, or a text holding one (the environment gives texts).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(i64),
    Text(String),
}

fn split(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned)
}

fn words<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match ListOrText::<String>::deserialize(deserializer)? {
        ListOrText::List(items) => items.iter().flat_map(|item| split(item)).collect(),
        ListOrText::One(text) => split(&text).collect(),
    })
}

fn numbers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i32>, D::Error> {
    let items = match ListOrText::<NumberOrText>::deserialize(deserializer)? {
        ListOrText::List(items) => items,
        ListOrText::One(item) => vec![item],
    };
    let mut numbers = Vec::new();
    for item in items {
        match item {
            NumberOrText::Number(number) => numbers.push(number),
            NumberOrText::Text(text) => {
                for part in split(&text) {
                    numbers.push(
                        part.parse()
                            .map_err(|_| serde::de::Error::custom(format!("{part:?} is not a number")))?,
                    );
                }
            }
        }
    }
    numbers
        .into_iter()
        .map(|number| {
            i32::try_from(number).map_err(|_| serde::de::Error::custom(format!("{number} is out of range")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::{
        AFTER_REVOKE_MSG, AFTER_SEND_GROUP_MSG, AFTER_SEND_SINGLE_MSG, Command, OperationId,
    };

    fn message(command: &'static Command, body: &str) -> ReceivedMessage {
        let id = OperationId { value: "op".into(), generated: false };
        ReceivedMessage::parse(command, body.as_bytes().to_vec().into(), id, std::time::SystemTime::now())
            .unwrap()
    }

    #[test]
    fn every_list_set_must_match_and_a_revoke_passes_a_callbacks_filter_only() {
        let to_bot = message(AFTER_SEND_SINGLE_MSG, r#"{"sendID":"a","recvID":"bot","contentType":101}"#);
        let to_bob = message(AFTER_SEND_SINGLE_MSG, r#"{"sendID":"a","recvID":"bob","contentType":101}"#);
        let group = message(
            AFTER_SEND_GROUP_MSG,
            r#"{"sendID":"a","groupID":"g","sessionType":3,"contentType":102}"#,
        );
        let revoke = message(AFTER_REVOKE_MSG, r#"{"conversationID":"si_a_bot","seq":1,"userID":"a"}"#);
        let bot = RecordFilter { recv_ids: vec!["bot".into()], ..Default::default() };
        assert_eq!([&to_bot, &to_bob, &group, &revoke].map(|m| bot.admits(m)), [true, false, false, false]);
        let pictures_in_g =
            RecordFilter { group_ids: vec!["g".into()], content_types: vec![102], ..Default::default() };
        assert_eq!([&to_bot, &group].map(|m| pictures_in_g.admits(m)), [false, true]);
        let revokes = RecordFilter { callbacks: vec!["afterRevokeMsg".into()], ..Default::default() };
        assert_eq!([&to_bot, &revoke].map(|m| revokes.admits(m)), [false, true]);
        assert!(RecordFilter::default().admits(&revoke) && RecordFilter::default().is_empty());
    }

    #[test]
    fn lists_come_as_lists_or_as_comma_separated_text() {
        let filter: RecordFilter =
            toml::from_str("content_types = [101, \"102\"]\nrecv_ids = \"a, b\"\nsession_types = 3").unwrap();
        assert_eq!(filter.content_types, [101, 102]);
        assert_eq!(filter.recv_ids, ["a", "b"]);
        assert_eq!(filter.session_types, [3]);
        let error = toml::from_str::<RecordFilter>("content_types = \"text\"").unwrap_err().to_string();
        assert!(error.contains("\"text\" is not a number"), "{error}");
    }
}
