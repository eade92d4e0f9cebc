//! Shutdown drains: a message answered 200 reaches every sink before the receiver stops.

use crate::helpers::{FailsFirst, RecordingSink, StuckSink, TestReceiver, packet, settings, wait_until};
use std::time::Duration;

#[tokio::test]
async fn journaled_messages_are_all_delivered_before_shutdown_completes() {
    let (mut gated, seen) = RecordingSink::new("gated");
    let (open, gate) = tokio::sync::watch::channel(false);
    gated.gate = Some(gate);
    let receiver = TestReceiver::start_with(settings(&[]), |sinks| sinks.spawn(gated, 4).unwrap()).await;
    let mut expected = Vec::new();
    for index in 0..20 {
        let message = packet(&format!("user-{index}"), "bob", 101);
        expected.push(message["serverMsgID"].as_str().unwrap().to_owned());
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
    }
    assert!(seen.lock().unwrap().is_empty(), "the gated sink has delivered nothing when shutdown starts");
    let log = receiver.log.clone();

    let stopping = tokio::spawn(receiver.stop());
    open.send(true).unwrap();
    let report = stopping.await.unwrap();

    assert!(report.is_clean(), "{report:?}");
    assert_eq!(*seen.lock().unwrap(), expected, "every message, in order");
    assert_eq!(log.records().len(), 20);
}

#[tokio::test]
async fn a_sink_that_cannot_drain_is_reported_when_the_shutdown_deadline_passes() {
    // Held to the end: dropping it would free the sink and let it drain.
    let (stuck, _control) = StuckSink::new();
    let receiver = TestReceiver::start_with(settings(&[("SERVER__SHUTDOWN_TIMEOUT", "300ms")]), |sinks| {
        sinks.spawn(stuck, 10).unwrap();
    })
    .await;
    for index in 0..3 {
        receiver.post_packet(&format!("op-{index}"), &packet("a", "b", 101)).await.assert_accepted();
    }
    let started = std::time::Instant::now();
    let report = receiver.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown is bounded by its timeout");
    assert!(report.requests_finished);
    assert_eq!(report.undrained, vec![("stuck", 3)], "only the stuck sink, with its 3 records");
}

#[tokio::test]
async fn a_sink_that_finished_is_not_named_when_another_is_stuck() {
    let (stuck, _control) = StuckSink::new();
    let (mut hanging, _) = RecordingSink::new("hanging");
    hanging.hang = true;
    let overrides = [("SERVER__SHUTDOWN_TIMEOUT", "300ms")];
    let receiver = TestReceiver::start_with(settings(&overrides), |sinks| {
        sinks.spawn(stuck, 10).unwrap();
        sinks.spawn(hanging, 10).unwrap();
    })
    .await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    receiver.log.wait_for(1).await;
    receiver.stats_after(1).await;
    let report = receiver.stop().await;
    // The log and stats sinks caught up; the blocked one and the cancellable one did not.
    assert_eq!(report.undrained, vec![("stuck", 1), ("hanging", 1)]);
}

/// A receiver dropped without a shutdown (a test that ends, a program that
/// embeds it and moves on) ends its sinks' threads: the idle ones, and one
/// retrying a target that keeps failing. None spins or retries for nobody;
/// the journal keeps what they had left.
#[tokio::test]
async fn a_receiver_dropped_without_a_shutdown_ends_its_sinks() {
    let failing = FailsFirst { failures_left: u32::MAX, seen: Default::default() };
    let receiver = TestReceiver::start_with(settings(&[]), |sinks| sinks.spawn(failing, 16).unwrap()).await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    receiver.sink_report("flaky", |sink| sink["state"] == "retrying").await;
    receiver.sink_report("log", |sink| sink["handled"] == 1).await;

    let sinks = receiver.abandon();
    wait_until(Duration::from_secs(60), async || {
        let running: Vec<_> = sinks
            .iter()
            .filter(|sink| sink.state_name() != "stopped")
            .map(|sink| (sink.name(), sink.state_name()))
            .collect();
        if running.is_empty() { Ok(()) } else { Err(format!("still running: {running:?}")) }
    })
    .await;
    assert_eq!(sinks.len(), 3, "log, stats and the failing one");
}
