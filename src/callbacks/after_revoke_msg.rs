//! `callbackBeforeAfterMsgCommand` (OpenIM's own name for its after-revoke
//! callback, `afterRevokeMsg` in `webhooks.yml`): who revoked which message,
//! named by its conversation and seq. No operationID and no content.

use super::packet::{RevokePacket, from_json, require};
use super::{Callback, Command, PacketError, Role};

pub(super) static COMMAND: Command = Command {
    name: "callbackBeforeAfterMsgCommand",
    key: "afterRevokeMsg",
    code: 3,
    role: Role::Revoked,
    parse,
};

fn parse(body: &[u8]) -> Result<Callback, PacketError> {
    let revoke: RevokePacket = from_json(body)?;
    require(&revoke.conversation_id, "conversationID")?;
    Ok(Callback::Revoke(revoke))
}
