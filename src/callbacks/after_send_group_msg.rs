//! `callbackAfterSendGroupMsgCommand`: a group message was sent. The single
//! chat's fields, with `groupID` in place of `recvID`.

use super::packet::{MessagePacket, require};
use super::{Callback, Command, PacketError, Role};

pub(super) static COMMAND: Command = Command {
    name: "callbackAfterSendGroupMsgCommand",
    key: "afterSendGroupMsg",
    code: 1,
    role: Role::Sent,
    parse,
};

fn parse(body: &[u8]) -> Result<Callback, PacketError> {
    let packet = MessagePacket::from_json(body)?;
    require(&packet.send_id, "sendID")?;
    require(&packet.group_id, "groupID")?;
    Ok(Callback::Message(packet))
}
