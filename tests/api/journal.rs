//! The journal through the real HTTP path, in process: sinks resume from their
//! cursors, a full journal refuses or skips as configured, a stuck sink is
//! named at shutdown and resumes after a restart.

use crate::helpers::{RecordingSink, TestReceiver, packet, settings, wait_until};
use serde_json::Value;
use std::time::Duration;

/// A message with about `bytes` of content, so a few fill a small journal.
fn big_packet(index: usize, bytes: usize) -> Value {
    let mut message = packet(&format!("user-{index}"), "bob", 101);
    message["serverMsgID"] = format!("big-{index}").into();
    message["content"] = "x".repeat(bytes).into();
    message
}

/// A journal of 1 MiB segments and 2 MiB in all, in `dir`.
fn small_journal(
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> openim_callback_receiver::settings::Settings {
    let dir = dir.to_str().unwrap().to_owned();
    let mut overrides = vec![
        ("JOURNAL__DIR", dir.as_str()),
        ("JOURNAL__SEGMENT_BYTES", "1048576"),
        ("JOURNAL__MAX_BYTES", "2097152"),
        ("SERVER__SHUTDOWN_TIMEOUT", "1s"),
    ];
    overrides.extend_from_slice(extra);
    settings(&overrides)
}

#[tokio::test]
async fn a_sink_resumes_from_its_cursor_after_a_restart_and_gets_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let settings = small_journal(dir.path(), &[]);
    let (sink, first_seen) = RecordingSink::new("recorder");
    let receiver = TestReceiver::start_with(settings.clone(), |sinks| sinks.spawn(sink, 64).unwrap()).await;
    for index in 0..5 {
        receiver.post_packet(&format!("op-{index}"), &big_packet(index, 10)).await.assert_accepted();
    }
    assert!(receiver.stop().await.is_clean());
    assert_eq!(first_seen.lock().unwrap().len(), 5);

    let (sink, second_seen) = RecordingSink::new("recorder");
    let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(sink, 64).unwrap()).await;
    for index in 5..7 {
        receiver.post_packet(&format!("op-{index}"), &big_packet(index, 10)).await.assert_accepted();
    }
    receiver.sink_report("recorder", |sink| sink["handled"] == 2).await;
    assert!(receiver.stop().await.is_clean());
    assert_eq!(*second_seen.lock().unwrap(), vec!["big-5".to_owned(), "big-6".to_owned()]);
}

#[tokio::test]
async fn a_full_journal_refuses_with_503_when_told_to_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = small_journal(dir.path(), &[("JOURNAL__WHEN_FULL", "refuse")]);
    let (mut sink, _) = RecordingSink::new("hanging");
    sink.hang = true;
    let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(sink, 64).unwrap()).await;
    let mut accepted = 0;
    let refused = loop {
        let answer = receiver.post_packet(&format!("op-{accepted}"), &big_packet(accepted, 100_000)).await;
        if answer.status != 200 {
            break answer;
        }
        accepted += 1;
        assert!(accepted < 100, "the journal never filled");
    };
    refused.assert_rejected(503, 5031);
    assert!(refused.body["errMsg"].as_str().unwrap().contains("journal is full"), "{:?}", refused.body);
    assert!(accepted >= 10, "only {accepted} accepted before the journal was full");
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["requests"]["rejected"]["journal_full"], 1);
    assert!(stats["journal"]["bytes"].as_u64().unwrap() <= 2 * 1024 * 1024 + 100_000 * 2, "{stats}");
    // The hanging sink is behind by everything: nothing was dropped from under it.
    assert_eq!(stats["sinks"]["hanging"]["lag_records"], accepted as u64);
    assert_eq!(stats["sinks"]["hanging"]["skipped"], 0);
}

#[tokio::test]
async fn a_stuck_sink_lets_the_journal_skip_for_it_is_named_at_shutdown_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = small_journal(dir.path(), &[]);
    let (mut sink, _) = RecordingSink::new("archive");
    sink.hang = true;
    let receiver = TestReceiver::start_with(settings.clone(), |sinks| sinks.spawn(sink, 64).unwrap()).await;
    const MESSAGES: usize = 40;
    for index in 0..MESSAGES {
        receiver.post_packet(&format!("op-{index}"), &big_packet(index, 100_000)).await.assert_accepted();
    }
    // The others kept going.
    assert_eq!(receiver.log.wait_for(MESSAGES).await.len(), MESSAGES);
    let stats = receiver.stats_after(MESSAGES as u64).await;
    assert!(stats["journal"]["bytes"].as_u64().unwrap() <= 3 * 1024 * 1024, "bounded: {}", stats["journal"]);
    assert!(
        stats["journal"]["oldest_seq"].as_u64().unwrap() > 1,
        "segments were dropped: {}",
        stats["journal"]
    );
    let started = std::time::Instant::now();
    let report = receiver.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown is bounded by its timeout");
    assert_eq!(report.undrained.len(), 1, "{report:?}");
    assert_eq!(report.undrained[0].0, "archive");

    // Back with a sink that works: it skips what the journal dropped, gets the rest, once each.
    let (sink, seen) = RecordingSink::new("archive");
    let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(sink, 64).unwrap()).await;
    let archive = receiver.sink_report("archive", |sink| sink["lag_records"] == 0).await;
    let seen = seen.lock().unwrap().clone();
    let skipped = archive["skipped"].as_u64().unwrap() as usize;
    assert!(skipped > 0, "{archive}");
    assert_eq!(seen.len() + skipped, MESSAGES, "every record either delivered or counted as skipped");
    let expected: Vec<String> = (skipped..MESSAGES).map(|index| format!("big-{index}")).collect();
    assert_eq!(seen, expected, "the newest records, in order, none twice");
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            r#"openim_callback_sink_messages_total{{sink="archive",result="skipped"}} {skipped}"#
        )),
        "{metrics}"
    );
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_saved_makes_the_receiver_not_ready_and_its_stop_unclean() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("stats.snapshot");
    let path = snapshot.to_str().unwrap().to_owned();
    let overrides = [
        ("STATS__SNAPSHOT_PATH", path.as_str()),
        ("STATS__SNAPSHOT_INTERVAL", "50ms"),
        ("SERVER__SHUTDOWN_TIMEOUT", "1s"),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    // The snapshot's path becomes a directory (a first snapshot may be written
    // meanwhile: replace it; once the directory is there, no save replaces it).
    while std::fs::create_dir(&snapshot).is_err() {
        let _ = std::fs::remove_file(&snapshot);
    }
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    let not_ready = wait_until(Duration::from_secs(60), async || {
        let answer = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
        match answer.status().as_u16() {
            503 => Ok(answer.json::<Value>().await.unwrap()),
            status => Err(format!("/readyz still answers {status}")),
        }
    })
    .await;
    let said = not_ready["errMsg"].as_str().unwrap();
    assert!(said.contains("sink stats is failing") && said.contains("stats snapshot"), "{said}");
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["sinks"]["stats"]["save_failing"], true, "{}", stats["sinks"]);
    let report = receiver.stop().await;
    assert!(!report.is_clean(), "the final save failed too");
    assert_eq!(report.undrained, vec![("stats", 0)]);
}

#[tokio::test]
async fn segments_roll_in_both_sync_modes_and_every_record_stays_readable() {
    for sync in ["os", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            small_journal(dir.path(), &[("JOURNAL__SYNC", sync), ("JOURNAL__MAX_BYTES", "8388608")]);
        let (sink, seen) = RecordingSink::new("recorder");
        let receiver =
            TestReceiver::start_with(settings.clone(), |sinks| sinks.spawn(sink, 64).unwrap()).await;
        for index in 0..30 {
            receiver.post_packet(&format!("op-{index}"), &big_packet(index, 100_000)).await.assert_accepted();
        }
        receiver.sink_report("recorder", |sink| sink["handled"] == 30).await;
        let journal = receiver.get_json("/stats").await["journal"].clone();
        assert!(journal["segments"].as_u64().unwrap() >= 1, "{journal}");
        assert!(receiver.stop().await.is_clean());
        assert_eq!(seen.lock().unwrap().len(), 30, "sync = {sync}");
        // Read back from the files alone: a new sink with no cursor starts at the oldest record kept.
        let (sink, reread) = RecordingSink::new("late");
        let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(sink, 64).unwrap()).await;
        let late = receiver.sink_report("late", |sink| sink["lag_records"] == 0).await;
        let oldest = receiver.get_json("/stats").await["journal"]["oldest_seq"].as_u64().unwrap();
        assert_eq!(
            late["handled"].as_u64().unwrap(),
            31 - oldest,
            "sync = {sync}: every kept record, from disk"
        );
        let reread = reread.lock().unwrap().clone();
        let expected: Vec<String> = (oldest as usize - 1..30).map(|index| format!("big-{index}")).collect();
        assert_eq!(reread, expected, "sync = {sync}");
        assert!(receiver.stop().await.is_clean());
    }
}

/// Segment files are allocated ahead of their records (an fdatasync is then a data
/// write only), cut to their records when the next segment takes over or the receiver
/// stops, and after a crash a zero tail is where a segment ends: not damage, and new
/// records go right after the last one.
#[tokio::test]
async fn segments_are_allocated_ahead_cut_when_closed_and_a_zero_tail_is_their_end() {
    use openim_callback_receiver::journal::segment;
    let dir = tempfile::tempdir().unwrap();
    // Kept for an hour after the sinks pass them, so closed segments stay to be looked at.
    let settings = small_journal(dir.path(), &[("JOURNAL__MAX_BYTES", "8388608"), ("JOURNAL__RETAIN", "1h")]);
    let receiver = TestReceiver::start_with(settings.clone(), |_| {}).await;
    let fresh = std::fs::metadata(&segment::list(dir.path()).unwrap()[0].1).unwrap().len();
    assert_eq!(fresh, 1 << 20, "the first segment is allocated to journal.segment_bytes ahead");
    for index in 0..30 {
        receiver.post_packet(&format!("op-{index}"), &big_packet(index, 100_000)).await.assert_accepted();
    }
    assert!(receiver.stop().await.is_clean());
    let segments = segment::list(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    for (_, path) in &segments {
        let inventory = segment::take_inventory(path).unwrap();
        assert!(inventory.damage.is_empty() && !inventory.zero_tail, "{}", path.display());
        assert_eq!(std::fs::metadata(path).unwrap().len(), inventory.valid_end, "{} is cut", path.display());
    }

    // A crash between a roll and the cut leaves a closed segment with its zero tail,
    // and a crash at any time the live one (and a spare made ahead) with its room.
    let records_ends: Vec<u64> =
        segments.iter().map(|(_, path)| std::fs::metadata(path).unwrap().len()).collect();
    for (_, path) in &segments {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(file.metadata().unwrap().len() + (1 << 20)).unwrap();
    }
    let (sink, reread) = RecordingSink::new("late");
    let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(sink, 64).unwrap()).await;
    for ((_, path), records_end) in segments.iter().zip(&records_ends).take(segments.len() - 1) {
        assert_eq!(
            std::fs::metadata(path).unwrap().len(),
            *records_end,
            "{} cut at start-up",
            path.display()
        );
    }
    receiver.post_packet("op-after", &big_packet(30, 100)).await.assert_accepted();
    let late = receiver.sink_report("late", |sink| sink["lag_records"] == 0).await;
    assert_eq!((late["damaged"].as_u64(), late["handled"].as_u64()), (Some(0), Some(31)), "{late}");
    let expected: Vec<String> = (0..=30).map(|index| format!("big-{index}")).collect();
    assert_eq!(*reread.lock().unwrap(), expected);
    assert_eq!(receiver.get_json("/stats").await["journal"]["last_seq"], 31);
    assert!(receiver.stop().await.is_clean());
}
