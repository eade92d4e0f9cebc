//! `/stats` counts what was sent.

use crate::helpers::{TestReceiver, packet};

#[tokio::test]
async fn stats_count_messages_people_and_conversations_of_a_batch() {
    let receiver = TestReceiver::start().await;
    // alice↔bob both ways (one conversation), alice→carol, dave→alice as a picture from the web.
    let mut from_web = packet("dave", "alice", 102);
    from_web["senderPlatformID"] = 5.into();
    from_web["createTime"] = 1_700_000_000_000_i64.into();
    let mut unknown = packet("alice", "carol", 9999);
    unknown["createTime"] = 1_800_000_000_000_i64.into();
    let batch = [packet("alice", "bob", 101), packet("bob", "alice", 101), unknown, from_web];
    for (index, message) in batch.iter().enumerate() {
        receiver.post_packet(&format!("op-{index}"), message).await.assert_accepted();
    }
    receiver.post_packet("op-bad", &serde_json::json!({"sendID": "x"})).await.assert_rejected(400, 4006);

    receiver.stats_after(4).await;
    // The log sink works on its own thread: it may be a moment behind the stats sink.
    receiver.sink_report("log", |log| log["handled"] == 4).await;
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["messages"]["total"], 4);
    assert_eq!(stats["messages"]["by_content_type"], serde_json::json!({"text": 2, "picture": 1, "9999": 1}));
    assert_eq!(stats["messages"]["by_platform"]["web"], 1);
    assert_eq!(stats["messages"]["by_platform"]["0"], 3, "missing platform counts as 0");
    assert_eq!(stats["people"], serde_json::json!({"senders": 3, "receivers": 3, "total": 4}));
    assert_eq!(stats["conversations"], 3);
    assert_eq!(stats["earliest_create_time"], 1_700_000_000_000_i64);
    assert_eq!(stats["latest_create_time"], 1_800_000_000_000_i64);
    assert_eq!(stats["requests"]["accepted"], 4);
    assert_eq!(stats["requests"]["rejected"], serde_json::json!({"invalid_json": 1}));
    assert_eq!(stats["sinks"]["log"]["handled"], 4);
    assert_eq!(stats["sinks"]["stats"]["state"], "running");
}
