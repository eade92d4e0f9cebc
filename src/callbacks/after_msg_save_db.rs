//! `callbackAfterMsgSaveDBCommand` (OpenIM main): a message was written to
//! OpenIM's database, with its real `seq`. `recvID` for single chats and
//! notifications, `groupID` for groups. OpenIM sends it even when its insert
//! failed, and again when it retries the batch: the same message can arrive twice.

use super::packet::{MessagePacket, require};
use super::{Callback, Command, PacketError, Role};

pub(super) static COMMAND: Command = Command {
    name: "callbackAfterMsgSaveDBCommand",
    key: "afterMsgSaveDB",
    code: 2,
    role: Role::Saved,
    parse,
};

fn parse(body: &[u8]) -> Result<Callback, PacketError> {
    let packet = MessagePacket::from_json(body)?;
    require(&packet.send_id, "sendID")?;
    if packet.recv_id.is_empty() && packet.group_id.is_empty() {
        return Err(PacketError::EmptyField("recvID or groupID"));
    }
    Ok(Callback::Message(packet))
}
