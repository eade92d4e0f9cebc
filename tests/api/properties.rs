//! Property tests of the packet decoder: no input makes it panic, and every
//! valid packet survives parse and the log record unchanged.

use crate::helpers::CapturedLog;
use openim_callback_receiver::callbacks::{
    AFTER_SEND_SINGLE_MSG, Callback, ContentType, MessagePacket, MsgFrom, MsgStatus, OperationId, Platform,
    ReceivedMessage, SessionType,
};
use openim_callback_receiver::settings::{LogFormat, Settings};
use openim_callback_receiver::sinks::{LogSink, Sink};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("sendID".to_owned()),
                    Just("recvID".to_owned()),
                    Just("contentType".to_owned()),
                    Just("atUserList".to_owned()),
                    Just("seq".to_owned()),
                    Just("createTime".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..8
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn valid_packet()(
        send_id in "[A-Za-z0-9_]{1,24}",
        recv_id in "[A-Za-z0-9_]{1,24}",
        server_msg_id in "[0-9a-f]{0,32}",
        client_msg_id in ".{0,32}",
        operation_id in ".{0,24}",
        sender_nickname in ".{0,24}",
        codes in (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>()),
        send_time in any::<i64>(),
        create_time in any::<i64>(),
        content in ".{0,200}",
        seq in any::<u32>(),
        at_user_list in prop::collection::vec(".{0,12}", 0..5),
        face_url in ".{0,40}",
        ex in ".{0,40}",
    ) -> MessagePacket {
        MessagePacket {
            send_id,
            callback_command: "callbackAfterSendSingleMsgCommand".to_owned(),
            server_msg_id,
            client_msg_id,
            operation_id,
            sender_platform_id: Platform(codes.0),
            sender_nickname,
            session_type: SessionType(codes.1),
            msg_from: MsgFrom(codes.2),
            content_type: ContentType(codes.3),
            status: MsgStatus(codes.4),
            send_time,
            create_time,
            content,
            seq,
            at_user_list,
            face_url,
            ex,
            recv_id,
            group_id: String::new(),
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = AFTER_SEND_SINGLE_MSG.parse(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_the_decoder(value in json_value()) {
        let _ = AFTER_SEND_SINGLE_MSG.parse(value.to_string().as_bytes());
    }

    #[test]
    fn a_valid_packet_survives_parse_and_the_log_record(packet in valid_packet()) {
        // The body is built with OpenIM's wire names written out by hand, not by
        // the same serde derive that parses it: a wrong rename cannot pass.
        let raw = serde_json::to_vec(&serde_json::json!({
            "sendID": packet.send_id, "callbackCommand": packet.callback_command,
            "serverMsgID": packet.server_msg_id, "clientMsgID": packet.client_msg_id,
            "operationID": packet.operation_id, "senderPlatformID": packet.sender_platform_id.0,
            "senderNickname": packet.sender_nickname, "sessionType": packet.session_type.0,
            "msgFrom": packet.msg_from.0, "contentType": packet.content_type.0, "status": packet.status.0,
            "sendTime": packet.send_time, "createTime": packet.create_time, "content": packet.content,
            "seq": packet.seq, "atUserList": packet.at_user_list, "faceURL": packet.face_url,
            "ex": packet.ex, "recvID": packet.recv_id,
        })).unwrap();
        let parsed = AFTER_SEND_SINGLE_MSG.parse(&raw).unwrap();
        prop_assert_eq!(&parsed, &Callback::Message(packet.clone()));

        let log = CapturedLog::default();
        let settings = Settings::defaults();
        let mut sink = LogSink::new(&settings.sinks.log, LogFormat::Json, log.record_writer());
        let message = ReceivedMessage {
            command: AFTER_SEND_SINGLE_MSG,
            callback: parsed,
            raw: raw.into(),
            operation_id: OperationId { value: "op".to_owned(), generated: false },
            received_at: std::time::SystemTime::now(),
        };
        let batch = [openim_callback_receiver::sinks::Entry { seq: 1, message: std::sync::Arc::new(message) }];
        futures_util::FutureExt::now_or_never(sink.deliver(&batch)).unwrap().unwrap();
        let records = log.records();
        prop_assert_eq!(records.len(), 1);
        let record = &records[0];
        prop_assert_eq!(record["sendID"].as_str(), Some(packet.send_id.as_str()));
        prop_assert_eq!(record["recvID"].as_str(), Some(packet.recv_id.as_str()));
        prop_assert_eq!(record["clientMsgID"].as_str(), Some(packet.client_msg_id.as_str()));
        prop_assert_eq!(record["content"].as_str(), Some(packet.content.as_str()));
        prop_assert_eq!(record["contentType"].as_i64(), Some(i64::from(packet.content_type.0)));
        prop_assert_eq!(record["senderPlatformID"].as_i64(), Some(i64::from(packet.sender_platform_id.0)));
        prop_assert_eq!(record["status"].as_i64(), Some(i64::from(packet.status.0)));
        prop_assert_eq!(record["createTime"].as_i64(), Some(packet.create_time));
        prop_assert_eq!(record["sendTime"].as_i64(), Some(packet.send_time));
        prop_assert_eq!(&record["atUserList"], &serde_json::json!(packet.at_user_list));
    }
}
