//! `callbackAfterSendSingleMsgCommand`: a single-chat message was sent (every OpenIM v3).

use super::packet::{MessagePacket, require};
use super::{Callback, Command, PacketError, Role};

pub(super) static COMMAND: Command = Command {
    name: "callbackAfterSendSingleMsgCommand",
    key: "afterSendSingleMsg",
    code: 0,
    role: Role::Sent,
    parse,
};

fn parse(body: &[u8]) -> Result<Callback, PacketError> {
    let packet = MessagePacket::from_json(body)?;
    require(&packet.send_id, "sendID")?;
    require(&packet.recv_id, "recvID")?;
    Ok(Callback::Message(packet))
}
