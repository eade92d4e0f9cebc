//! OpenIM's message family through the real HTTP path: single and group chats,
//! saved-to-database and revokes, in every URL form OpenIM uses, each logged
//! and counted as what it is; and `callbacks.record` choosing among them.

use crate::helpers::{TestReceiver, sample, settings};
use serde_json::Value;

/// Each sample with its command, as `samples/` holds them.
const COMMANDS: [(&str, &str); 4] = [
    ("text.json", "callbackAfterSendSingleMsgCommand"),
    ("group.json", "callbackAfterSendGroupMsgCommand"),
    ("saved-to-database.json", "callbackAfterMsgSaveDBCommand"),
    ("revoke.json", "callbackBeforeAfterMsgCommand"),
];

/// The three URL forms: v3.4.2+ path, up to v3.4.0 query, and main's path with `?key=`.
fn urls(command: &str) -> [String; 3] {
    [
        format!("/callbackExample/{command}"),
        format!("/callbackExample?command={command}"),
        format!("/callbackExample/{command}?key=eyJzZW5kSUQiOiJhIn0%3D"),
    ]
}

#[tokio::test]
async fn every_command_is_taken_in_each_url_form_and_logged_as_what_it_is() {
    let receiver = TestReceiver::start().await;
    for (file, command) in COMMANDS {
        for url in urls(command) {
            receiver.post(&url, "op-family", sample(file)).await.assert_accepted();
        }
    }
    let records = receiver.log.wait_for(12).await;
    let of = |command: &str| -> Vec<&Value> {
        records.iter().filter(|record| record["callbackCommand"] == command).collect()
    };
    for (_, command) in COMMANDS {
        assert_eq!(of(command).len(), 3, "{command}: {records:?}");
    }
    let single = of("callbackAfterSendSingleMsgCommand")[0];
    assert_eq!(
        (single["message"].as_str(), single["recvID"].as_str()),
        (Some("single chat message"), Some("5247014726"))
    );
    assert!(single.get("groupID").is_none() && single.get("seq").is_none(), "{single}");
    let group = of("callbackAfterSendGroupMsgCommand")[0];
    assert_eq!(group["message"], "group chat message");
    assert_eq!(group["groupID"], "2847561930");
    assert!(group.get("recvID").is_none(), "{group}");
    let saved = of("callbackAfterMsgSaveDBCommand")[0];
    assert_eq!(
        (saved["message"].as_str(), saved["seq"].as_u64()),
        (Some("message saved to database"), Some(17))
    );
    let revoke = of("callbackBeforeAfterMsgCommand")[0];
    assert_eq!(revoke["message"], "message revoked");
    assert_eq!(revoke["conversationID"], "si_3861937549_5247014726");
    assert_eq!((revoke["seq"].as_i64(), revoke["userID"].as_str()), (Some(17), Some("3861937549")));
    assert_eq!(revoke["operationID"], "op-family");

    // Saves and revokes are counted under their own names, never as messages.
    // Every record counted (the revokes come last), not just the six messages.
    receiver.caught_up("stats", 12).await;
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["messages"]["total"], 6, "{stats}");
    assert_eq!(stats["messages"]["by_session_type"], serde_json::json!({"single_chat": 3, "group_chat": 3}));
    assert_eq!((stats["groups"].as_u64(), stats["conversations"].as_u64()), (Some(1), Some(2)), "{stats}");
    assert_eq!(
        (stats["saved_to_database"].as_u64(), stats["revoked"].as_u64()),
        (Some(3), Some(3)),
        "{stats}"
    );
    assert_eq!(stats["people"], serde_json::json!({"senders": 1, "receivers": 1, "total": 2}));
    // The samples are dated 2024, outside the kept days: one of today's, in another group.
    let mut today: Value = serde_json::from_slice(&sample("group.json")).unwrap();
    today["groupID"] = "today-group".into();
    today["createTime"] =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
            .into();
    receiver.post(&urls(COMMANDS[1].1)[0], "op-today", today.to_string()).await.assert_accepted();
    receiver.caught_up("stats", 13).await;
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["groups"], 2, "{stats}");
    let days = receiver.get_json("/stats/daily").await["days"].clone();
    assert_eq!((days[0]["groups"].as_u64(), days[0]["conversations"].as_u64()), (Some(1), Some(1)), "{days}");
    receiver.stop().await;
}

#[tokio::test]
async fn a_command_callbacks_record_leaves_out_is_refused_as_an_unknown_one() {
    let receiver = TestReceiver::start_with(
        settings(&[("CALLBACKS__RECORD", "afterSendSingleMsg,afterRevokeMsg")]),
        |_| {},
    )
    .await;
    receiver.post(&urls(COMMANDS[0].1)[0], "op", sample("text.json")).await.assert_accepted();
    receiver.post(&urls(COMMANDS[3].1)[1], "op", sample("revoke.json")).await.assert_accepted();
    for url in urls(COMMANDS[1].1) {
        let refused = receiver.post(&url, "op", sample("group.json")).await;
        refused.assert_rejected(400, 4001);
        assert!(
            refused.body["errMsg"].as_str().unwrap().contains("callbackAfterSendGroupMsgCommand"),
            "{:?}",
            refused.body
        );
    }
    // A packet of one command posted under another is refused naming its field.
    receiver.post(&urls(COMMANDS[0].1)[0], "op", sample("group.json")).await.assert_rejected(400, 4001);
    let no_recv = serde_json::json!({"sendID": "a", "groupID": "g", "contentType": 101}).to_string();
    let refused = receiver.post(&urls(COMMANDS[0].1)[0], "op", no_recv).await;
    refused.assert_rejected(400, 4007);
    assert!(refused.body["errMsg"].as_str().unwrap().contains("recvID"), "{:?}", refused.body);
    receiver.stop().await;
}

#[test]
fn callbacks_record_names_an_unknown_key_and_the_known_ones() {
    use openim_callback_receiver::settings::{EnvSource, Settings};
    let env = [(
        "OPENIM_CALLBACK__CALLBACKS__RECORD".to_owned(),
        "afterSendSingleMsg,afterSendGroupMessage".to_owned(),
    )];
    let error = Settings::load(None, EnvSource::Map(env.into_iter().collect())).unwrap_err().to_string();
    assert!(error.contains("callbacks.record") && error.contains("afterSendGroupMessage"), "{error}");
    assert!(error.contains("afterSendGroupMsg, afterMsgSaveDB, afterRevokeMsg"), "{error}");
}
