//! OpenIM's numeric protocol codes, kept as numbers with names for display.
//!
//! OpenIM adds codes as it grows, so a code is never rejected: an unknown
//! number is carried through and shown as that number. Names come from
//! `openimsdk/protocol`'s constants, in snake_case so they work as JSON keys.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Declares a transparent `i32` newtype with a name table.
macro_rules! protocol_code {
    ($(#[$doc:meta])* $type:ident { $($value:literal => $name:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $type(pub i32);

        impl $type {
            /// Where counts keep the codes past the most they keep by number.
            pub const OTHER: $type = $type(i32::MIN);

            /// The protocol's name for this code, if it is one OpenIM defines.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($name),)*
                    i32::MIN => Some("other"),
                    _ => None,
                }
            }

            /// The name when known, otherwise the number itself: a stable key
            /// for counters and JSON maps.
            pub fn label(self) -> Cow<'static, str> {
                match self.name() {
                    Some(name) => Cow::Borrowed(name),
                    None => Cow::Owned(self.0.to_string()),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{name} ({})", self.0),
                    None => write!(f, "{}", self.0),
                }
            }
        }
    };
}

protocol_code! {
    /// What a message carries (`contentType`). Notification codes that OpenIM
    /// defines as ranges (friend 1201–1210, user 1301–1308, group 1501–1520)
    /// stay numbers so that distinct codes are never counted together.
    ContentType {
        101 => "text",
        102 => "picture",
        103 => "voice",
        104 => "video",
        105 => "file",
        106 => "at_text",
        107 => "merger",
        108 => "card",
        109 => "location",
        110 => "custom",
        111 => "revoke",
        113 => "typing",
        114 => "quote",
        115 => "face",
        117 => "advanced_text",
        118 => "markdown",
        119 => "custom_not_in_conversation",
        120 => "custom_online_only",
        121 => "reaction_modifier",
        122 => "reaction_deleter",
        200 => "common",
        201 => "group_msg",
        202 => "signal",
        203 => "custom_notification",
        1300 => "conversation_notification",
        1400 => "oa_notification",
        2101 => "revoke_notification",
        2102 => "delete_notification",
        2200 => "read_receipt_notification",
    }
}

protocol_code! {
    /// The sender's client platform (`senderPlatformID`).
    Platform {
        1 => "ios",
        2 => "android",
        3 => "windows",
        4 => "macos",
        5 => "web",
        6 => "mini_web",
        7 => "linux",
        8 => "android_pad",
        9 => "ipad",
        10 => "admin",
        11 => "harmony_os",
    }
}

protocol_code! {
    /// Who produced the message (`msgFrom`): a user's client or the system/REST API.
    MsgFrom {
        100 => "user",
        200 => "system",
    }
}

protocol_code! {
    /// The conversation kind (`sessionType`). Every v3 group is the "read
    /// group" type 3, shown as `group_chat`; type 2 is defined and unused.
    SessionType {
        1 => "single_chat",
        2 => "write_group",
        3 => "group_chat",
        4 => "notification",
    }
}

impl SessionType {
    pub const SINGLE_CHAT: SessionType = SessionType(1);
    pub const WRITE_GROUP: SessionType = SessionType(2);
    pub const READ_GROUP: SessionType = SessionType(3);
    pub const NOTIFICATION: SessionType = SessionType(4);
}

protocol_code! {
    /// The message's delivery status (`status`). The public callback document's
    /// "1 success, 2 failure" does not match the server's constants; these do.
    MsgStatus {
        1 => "sending",
        2 => "sent",
        3 => "failed",
        4 => "deleted",
        5 => "filtered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_have_names_and_unknown_ones_keep_their_number() {
        assert_eq!(ContentType(101).label(), "text");
        assert_eq!(ContentType(1201).label(), "1201");
        assert_eq!(Platform(11).name(), Some("harmony_os"));
        assert_eq!(MsgStatus(9).name(), None);
        assert_eq!(ContentType(102).to_string(), "picture (102)");
        assert_eq!(SessionType(77).to_string(), "77");
    }
}
