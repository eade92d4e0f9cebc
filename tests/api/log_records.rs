//! The log sink's JSON records, parsed and checked field by field.

use crate::helpers::{COMMAND_PATH, TestReceiver, sample, settings};

#[tokio::test]
async fn a_record_carries_every_field_an_operator_needs() {
    let receiver = TestReceiver::start().await;
    receiver.post(COMMAND_PATH, "op-text", sample("text.json")).await.assert_accepted();
    let record = &receiver.log.wait_for(1).await[0];
    let expected = serde_json::json!({
        "level": "INFO",
        "target": "message",
        "message": "single chat message",
        "operationID": "op-text",
        "serverMsgID": "bdb2d2a5c18d4b6a0d4e1e4f2c6d8a11",
        "clientMsgID": "7c2b91e6a3f04a5c9d0e8f1a2b3c4d5e",
        "sendID": "3861937549",
        "recvID": "5247014726",
        "senderPlatformID": 2,
        "senderPlatform": "android",
        "contentType": 101,
        "contentTypeName": "text",
        "sessionType": 1,
        "msgFrom": 100,
        "status": 1,
        "createTime": 1732675200123_i64,
        "sendTime": 1732675200456_i64,
        "atUserList": [],
        "content": "{\"content\":\"hello \\u003cBob\\u003e \\u0026 welcome\"}",
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&record[key], value, "field {key} in {record}");
    }
    assert!(record["timestamp"].is_string());
    assert!(record.get("contentTruncated").is_none());
}

#[tokio::test]
async fn content_can_be_left_out_or_cut_for_operators_who_must_not_keep_it() {
    let without =
        TestReceiver::start_with(settings(&[("SINKS__LOG__INCLUDE_CONTENT", "false")]), |_| {}).await;
    without.post(COMMAND_PATH, "op", sample("text.json")).await.assert_accepted();
    let record = &without.log.wait_for(1).await[0];
    assert!(record.get("content").is_none(), "{record}");
    assert_eq!(record["sendID"], "3861937549");

    let cut = TestReceiver::start_with(settings(&[("SINKS__LOG__MAX_CONTENT_CHARS", "12")]), |_| {}).await;
    cut.post(COMMAND_PATH, "op", sample("text.json")).await.assert_accepted();
    let record = &cut.log.wait_for(1).await[0];
    assert_eq!(record["content"], "{\"content\":\"");
    assert_eq!(record["contentTruncated"], true);
}
