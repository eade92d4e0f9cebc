//! What one callback adds to the counts, worked out once for both backends:
//! the memory counts (`MessageStats`) and a fleet's batch (`fleet::Tally`)
//! apply the same [`Contribution`], so they cannot disagree on what goes
//! where: which callbacks are messages, who and which conversation a message
//! is counted by, and which day it belongs to.

use super::daily::Calendar;
use super::distinct::{hash_of, hash_of_group, hash_of_pair};
use crate::callbacks::{Callback, MessagePacket, ReceivedMessage, Role};

pub enum Contribution<'a> {
    /// A message sent: into every count.
    Sent(Sent<'a>),
    /// afterMsgSaveDB: counted under its own name only (the message itself
    /// was counted when it was sent).
    SavedToDatabase,
    /// afterRevokeMsg: counted under its own name only.
    Revoked,
}

impl<'a> Contribution<'a> {
    /// None for a body its command's role cannot count (parsing never gives a
    /// sending command a revoke's body).
    pub fn of(message: &'a ReceivedMessage, calendar: &Calendar) -> Option<Self> {
        match (message.command.role, &message.callback) {
            (Role::Sent, Callback::Message(packet)) => Some(Contribution::Sent(Sent::new(
                packet,
                crate::epoch::millis(message.received_at),
                calendar,
            ))),
            (Role::Saved, _) => Some(Contribution::SavedToDatabase),
            (Role::Revoked, _) => Some(Contribution::Revoked),
            (Role::Sent, Callback::Revoke(_)) => None,
        }
    }
}

/// A message sent, with what it is counted by.
pub struct Sent<'a> {
    pub packet: &'a MessagePacket,
    pub who: Identities,
    /// When it arrived, in ms since the epoch (the per-minute rate's clock).
    pub received_ms: i64,
    /// The day of its arrival in the calendar's offset: the window ends the day after.
    pub today: i64,
    /// The kept day its `createTime` falls in; None when that is outside the
    /// window (then it is counted as out of window, in every total).
    pub day: Option<i64>,
}

/// The hashes a message is counted by (ids themselves are never kept).
pub struct Identities {
    pub sender: u64,
    /// None for a group's message: it has no one receiver.
    pub receiver: Option<u64>,
    /// The unordered pair of people, or the group.
    pub conversation: u64,
    /// For a group's message, the group (the same hash as its conversation).
    pub group: Option<u64>,
}

impl<'a> Sent<'a> {
    pub fn new(packet: &'a MessagePacket, received_ms: i64, calendar: &Calendar) -> Self {
        let sender = hash_of(&packet.send_id);
        let who = if packet.is_group() {
            let group = hash_of_group(&packet.group_id);
            Identities { sender, receiver: None, conversation: group, group: Some(group) }
        } else {
            let conversation = hash_of_pair(&packet.send_id, &packet.recv_id);
            Identities { sender, receiver: Some(hash_of(&packet.recv_id)), conversation, group: None }
        };
        let today = calendar.day_of(received_ms);
        let day = Some(calendar.day_of(packet.create_time)).filter(|day| calendar.window_holds(*day, today));
        Sent { packet, who, received_ms, today, day }
    }
}

/// Widens the (earliest, latest) range of `createTime`s seen to take in `at`.
pub fn widen(range: &mut Option<(i64, i64)>, at: i64) {
    *range = Some(match *range {
        None => (at, at),
        Some((earliest, latest)) => (earliest.min(at), latest.max(at)),
    });
}
