//! The Redis Streams sink against the real Redis on this machine: entries
//! hold every message whole, and an outage loses none.

use crate::helpers::{TcpProxy, TestReceiver, packet, sample, service_url, settings, unique_table};
use std::collections::HashMap;
use std::time::Duration;

async fn redis() -> Option<String> {
    service_url("Redis", "OPENIM_CALLBACK_TEST_REDIS_URL", "redis://127.0.0.1:6379").await
}

/// Every entry of `stream`, as its fields.
async fn entries(url: &str, stream: &str) -> Vec<HashMap<String, String>> {
    let client = redis::Client::open(url).unwrap();
    // redis-rs answers time out after 500 ms by default: too short on a loaded test machine.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut connection).await.unwrap();
    let _: () = redis::cmd("DEL").arg(stream).query_async(&mut connection).await.unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            entry
                .map
                .iter()
                .map(|(field, value)| (field.clone(), redis::from_redis_value_ref::<String>(value).unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn every_message_is_one_entry_with_its_packet_whole() {
    let Some(url) = redis().await else { return };
    let stream = unique_table("stream");
    let overrides = [
        ("SINKS__REDIS_STREAM__ENABLED", "true"),
        ("SINKS__REDIS_STREAM__URL", url.as_str()),
        ("SINKS__REDIS_STREAM__STREAM", stream.as_str()),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let single = "callbackAfterSendSingleMsgCommand";
    let posted = [
        ("text.json", single),
        ("picture.json", single),
        ("rest-api-v3.0.json", single),
        ("group.json", "callbackAfterSendGroupMsgCommand"),
        ("revoke.json", "callbackBeforeAfterMsgCommand"),
    ];
    let bodies: Vec<Vec<u8>> = posted.iter().map(|(file, _)| sample(file)).collect();
    for (index, (body, (_, command))) in bodies.iter().zip(posted).enumerate() {
        let path = format!("/callbackExample/{command}");
        receiver.post(&path, &format!("op-{index}"), body.clone()).await.assert_accepted();
    }
    receiver.caught_up("redis_stream", 5).await;
    assert!(receiver.stop().await.is_clean());
    let entries = entries(&url, &stream).await;
    assert_eq!(entries.len(), 5);
    for (index, (entry, body)) in entries.iter().zip(&bodies).enumerate() {
        let packet: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(entry["callbackCommand"], posted[index].1);
        // A revoke names no message by serverMsgID: the field is empty.
        assert_eq!(entry["serverMsgID"], packet["serverMsgID"].as_str().unwrap_or(""));
        assert_eq!(entry["operationID"], format!("op-{index}"));
        assert_eq!(
            entry["packet"].as_bytes(),
            body.as_slice(),
            "the packet as OpenIM sent it, in journal order"
        );
    }
}

#[tokio::test]
async fn a_redis_outage_loses_no_message() {
    let Some(url) = redis().await else { return };
    let proxy = TcpProxy::start("127.0.0.1:6379").await;
    let proxied = format!("redis://{}", proxy.address);
    let stream = unique_table("outage");
    let overrides = [
        ("SINKS__REDIS_STREAM__ENABLED", "true"),
        ("SINKS__REDIS_STREAM__URL", proxied.as_str()),
        ("SINKS__REDIS_STREAM__STREAM", stream.as_str()),
        ("SINKS__REDIS_STREAM__TIMEOUT", "5s"),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    receiver.post_packet("op-first", &packet("first", "bob", 101)).await.assert_accepted();
    receiver.caught_up("redis_stream", 1).await;
    proxy.cut();
    for index in 0..1000 {
        let mut message = packet(&format!("user-{index}"), "bob", 101);
        message["serverMsgID"] = format!("outage-{index}").into();
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
    }
    let report = receiver.sink_report("redis_stream", |sink| sink["state"] == "degraded").await;
    assert_eq!(report["state"], "degraded", "{report}");
    proxy.restore();
    let report = receiver.caught_up("redis_stream", 1001).await;
    assert!(report["retries"].as_u64().unwrap() >= 1, "{report}");
    assert!(receiver.stop().await.is_clean());
    let entries = entries(&url, &stream).await;
    let ids: std::collections::HashSet<&str> =
        entries.iter().map(|entry| entry["serverMsgID"].as_str()).collect();
    assert_eq!(ids.len(), 1001, "every message");
    assert_eq!(entries.len(), 1001, "none twice: a batch is added whole or not at all");
}
