//! Every request is answered by `server.response_timeout`, whatever a sink or
//! a client is doing.

use crate::helpers::{COMMAND_PATH, StuckSink, StuckSinkControl, TestReceiver, packet, settings};
use axum::body::Body;
use axum::http::Request;
use openim_callback_receiver::Receiver;
use openim_callback_receiver::sinks::SinkSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn callback_request(operation_id: &str) -> Request<Body> {
    Request::post(COMMAND_PATH)
        .header("content-type", "application/json")
        .header("operationID", operation_id)
        .body(Body::from(packet("a", "b", 101).to_string()))
        .unwrap()
}

/// A stuck sink with a queue of one: the first message blocks it, the second
/// fills the queue, the third can only wait for the deadline.
#[tokio::test(start_paused = true)]
async fn a_full_queue_is_waited_on_until_exactly_the_deadline_then_503_names_the_sink() {
    let (stuck, control) = StuckSink::new();
    let mut sinks = SinkSet::new();
    sinks.spawn(stuck, 1).unwrap();
    let settings = settings(&[("SINKS__LOG__ENABLED", "false"), ("SINKS__STATS__ENABLED", "false")]);
    let receiver = Receiver::with_sinks(settings, sinks, None);
    let app = openim_callback_receiver::http::app(receiver.state().clone());

    assert_eq!(app.clone().oneshot(callback_request("op-1")).await.unwrap().status(), 200);
    control.entered.recv_timeout(Duration::from_secs(10)).expect("the stuck sink took the first message");
    assert_eq!(app.clone().oneshot(callback_request("op-2")).await.unwrap().status(), 200);

    let started = tokio::time::Instant::now();
    let response = app.clone().oneshot(callback_request("op-3")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(3), "answered at the default deadline");
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["errCode"], 5031);
    assert!(envelope["errMsg"].as_str().unwrap().contains("stuck"), "{envelope}");
    assert_eq!(receiver.state().sinks[0].counters().missed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stuck_sink_does_not_hold_up_the_others_and_is_named_over_real_http() {
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
    receiver.post_packet("op-2", &packet("a", "c", 101)).await.assert_accepted();
    let refused = receiver.post_packet("op-3", &packet("a", "d", 101)).await;
    refused.assert_rejected(503, 5031);
    assert!(refused.body["errMsg"].as_str().unwrap().contains("stuck"));

    // The log and stats sinks went on with both accepted messages meanwhile.
    assert_eq!(receiver.log.wait_for(2).await.len(), 2);
    let stats = receiver.stats_after(2).await;
    assert_eq!(stats["messages"]["total"], 2, "the refused message reached no sink");
    assert_eq!(stats["sinks"]["stuck"]["missed"], 1);
    assert_eq!(stats["requests"]["rejected"]["sink_queue_full"], 1);
    drop(release);
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
