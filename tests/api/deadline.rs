//! Every request is answered by `server.response_timeout`, whatever a sink or
//! a client is doing: the answer waits for the journal, never for a sink.

use crate::helpers::{COMMAND_PATH, StuckSink, StuckSinkControl, TestReceiver, packet, settings};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_stuck_sink_delays_neither_the_answers_nor_the_other_sinks() {
    let (stuck, control) = StuckSink::new();
    let receiver = TestReceiver::start_with(settings(&[("SERVER__RESPONSE_TIMEOUT", "300ms")]), |sinks| {
        sinks.spawn(stuck, 1).unwrap();
    })
    .await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    let StuckSinkControl { entered, release } = control;
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the stuck sink took the first message");
    for (index, recv) in ["c", "d", "e"].iter().enumerate() {
        receiver.post_packet(&format!("op-{}", index + 2), &packet("a", recv, 101)).await.assert_accepted();
    }

    // The log and stats sinks went on with every message meanwhile.
    assert_eq!(receiver.log.wait_for(4).await.len(), 4);
    let stats = receiver.stats_after(4).await;
    assert_eq!(stats["messages"]["total"], 4);
    let stuck = &stats["sinks"]["stuck"];
    assert_eq!((stuck["handled"].as_u64(), stuck["lag_records"].as_u64()), (Some(0), Some(4)), "{stuck}");
    assert_eq!(stats["sinks"]["log"]["lag_records"], 0);
    assert_eq!(stats["journal"]["last_seq"], 4);
    drop(release);
}

#[tokio::test]
async fn with_sync_always_the_200_comes_after_the_fdatasync_that_covers_it() {
    let receiver = TestReceiver::start_with(settings(&[("JOURNAL__SYNC", "always")]), |_| {}).await;
    for index in 0..5 {
        receiver.post_packet(&format!("op-{index}"), &packet("a", "b", 101)).await.assert_accepted();
        let journal = &receiver.get_json("/stats").await["journal"];
        assert_eq!(journal["sync"], "always");
        assert_eq!(journal["synced_seq"], index + 1, "synced before the answer: {journal}");
    }
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let fsyncs = metrics
        .lines()
        .find_map(|line| line.strip_prefix("openim_callback_journal_fsync_seconds_count "))
        .expect("the fsync histogram is exposed");
    assert!(fsyncs.parse::<u64>().unwrap() >= 5, "{fsyncs}");
    // One request at a time: none could share another's fdatasync.
    let fdatasyncs = receiver.get_json("/stats").await["journal"]["fdatasyncs"].as_u64().unwrap();
    assert!(fdatasyncs >= 5, "{fdatasyncs} fdatasyncs for 5 records");
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_is_answered_503_at_the_deadline() {
    let receiver = TestReceiver::start_with(settings(&[("SERVER__RESPONSE_TIMEOUT", "200ms")]), |_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(receiver.address).await.unwrap();
    let head = format!(
        "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\noperationID: op\r\n\
         Content-Length: 100\r\n\r\n{{\"sendID\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let mut buffer = [0; 4096];
    while !answer.contains("nextCode") {
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(read > 0, "connection closed after {answer:?}");
        answer.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""errCode":5030"#), "{answer}");
}
