//! The journal's faults, in process: a failed fdatasync, bytes of a failed
//! append that a lagging reader must not see, deleted segments a reader keeps
//! open, and positions saved ahead of what is on the disk.

use crate::helpers::{RecordingSink, TestReceiver, packet, settings, wait_until};
use openim_callback_receiver::MessageJournal as Journal;
use openim_callback_receiver::callbacks::OperationId;
use openim_callback_receiver::journal::{NewRecord, cursor};
use std::io::Write;
use std::time::Duration;

#[tokio::test]
async fn a_failed_fdatasync_fails_its_request_and_stops_appends_instead_of_being_retried() {
    let receiver = TestReceiver::start_with(settings(&[("JOURNAL__SYNC", "always")]), |_| {}).await;
    receiver.post_packet("op-before", &packet("a", "b", 101)).await.assert_accepted();
    // Linux reports a writeback error once: a retried fdatasync would "succeed" over lost data.
    receiver.journal.fail_next_fdatasync();
    let failed = receiver.post_packet("op-lost", &packet("a", "c", 101)).await;
    failed.assert_rejected(503, 5034);
    assert!(failed.body["errDlt"].as_str().unwrap().contains("fdatasync failed"), "{:?}", failed.body);
    // No more records on this journal until a restart, and readiness says why.
    receiver.post_packet("op-after", &packet("a", "d", 101)).await.assert_rejected(503, 5034);
    let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["errDlt"].as_str().unwrap().contains("until the receiver restarts"), "{body}");
    assert_eq!(receiver.get_json("/stats").await["requests"]["accepted"], 1);
}

/// Writes one record's frame as the journal does (for bytes a failed append left).
fn frame_bytes(seq: u64, body: &[u8]) -> Vec<u8> {
    let id = OperationId { value: "op".into(), generated: false };
    let record = NewRecord { kind: 0, received_at: std::time::SystemTime::now(), operation_id: &id, body };
    let mut bytes = record.encode_head(seq, crc32c::crc32c(body));
    bytes.extend_from_slice(body);
    bytes
}

/// A journal of its own in `dir`, opened directly (no receiver, no sinks).
fn journal_in(dir: &tempfile::TempDir) -> std::sync::Arc<Journal> {
    Journal::open(&settings(&[("JOURNAL__DIR", dir.path().to_str().unwrap())]).journal).unwrap()
}

/// Appends `body` as a record, as the request path does; its sequence number.
async fn append(journal: &Journal, body: &str) -> u64 {
    let id = OperationId { value: "op".into(), generated: false };
    let record = NewRecord {
        kind: 0,
        received_at: std::time::SystemTime::now(),
        operation_id: &id,
        body: body.as_bytes(),
    };
    journal.append_record(&record, None).await.unwrap()
}

#[tokio::test]
async fn a_lagging_reader_never_reads_the_bytes_of_an_append_being_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(&dir);
    let body = packet("a", "b", 101).to_string();
    append(&journal, &body).await;
    // Half of a next record in the file, past what the journal published: the state while a
    // failed append (a full disk) is being taken back.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .unwrap();
    let partial = frame_bytes(2, b"{\"stale\":true}");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&partial[..partial.len() / 2])
        .unwrap();
    // A reader behind the in-memory tail reads the file.
    let mut reader = journal.reader(1);
    let batch = reader.read(100).unwrap();
    assert_eq!((batch.entries.len(), batch.damaged), (1, 0));
    assert_eq!(reader.read(100).unwrap().damaged, 0, "nothing read past the published end");
    let length = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(length - (partial.len() / 2) as u64)
        .unwrap();
    append(&journal, &body).await;
    let batch = reader.read(100).unwrap();
    assert_eq!(
        (batch.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), batch.damaged),
        (vec![2], 0)
    );
    journal.close();
}

/// Files this process holds open that were deleted, under `dir`.
fn deleted_files_held_open(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.starts_with(&dir) && target.ends_with("(deleted)"))
        .collect()
}

#[tokio::test]
async fn readers_that_keep_up_let_go_of_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&[
        ("JOURNAL__DIR", dir.path().to_str().unwrap()),
        ("JOURNAL__SEGMENT_BYTES", "1MiB"),
        ("JOURNAL__CURSOR_INTERVAL", "10ms"),
    ]);
    let first = TestReceiver::start_with(settings.clone(), |_| {}).await;
    first.post_packet("op-first", &packet("a", "b", 101)).await.assert_accepted();
    first.stop().await;
    // A sink added now starts at the oldest record: it reads the first segment's file,
    // then keeps up from memory while the segments behind it are deleted.
    let (late, _) = RecordingSink::new("late");
    let receiver = TestReceiver::start_with(settings, |sinks| sinks.spawn(late, 64).unwrap()).await;
    receiver.sink_report("late", |report| report["handled"] == 1).await;
    for index in 0..800 {
        let mut message = packet("a", "b", 101);
        message["serverMsgID"] = format!("srv-{index}").into();
        message["content"] = "x".repeat(4096).into();
        receiver.post_packet("op", &message).await.assert_accepted();
    }
    receiver.caught_up("late", 801).await;
    wait_until(Duration::from_secs(60), async || {
        let stats = receiver.get_json("/stats").await;
        if stats["journal"]["oldest_seq"].as_u64() > Some(300) {
            Ok(())
        } else {
            Err(format!("segments not deleted yet: oldest {}", stats["journal"]["oldest_seq"]))
        }
    })
    .await;
    // The next read by each sink lets go of what its last read from a file had open. (The sync
    // thread lets go of a closed segment's file at its next round, within journal.sync_interval.)
    receiver.post_packet("op-last", &packet("a", "b", 101)).await.assert_accepted();
    receiver.caught_up("late", 802).await;
    wait_until(Duration::from_secs(30), async || {
        let held = deleted_files_held_open(dir.path());
        if held.is_empty() { Ok(()) } else { Err(format!("deleted segments still open: {held:?}")) }
    })
    .await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_position_is_never_saved_ahead_of_what_is_fdatasynced() {
    let dir = tempfile::tempdir().unwrap();
    // With sync = "os" and an hour between fdatasyncs, only the saves themselves make records durable.
    let (sink, _) = RecordingSink::new("recorder");
    let receiver = TestReceiver::start_with(
        settings(&[
            ("JOURNAL__DIR", dir.path().to_str().unwrap()),
            ("JOURNAL__SYNC_INTERVAL", "1h"),
            ("JOURNAL__CURSOR_INTERVAL", "20ms"),
        ]),
        |sinks| sinks.spawn(sink, 64).unwrap(),
    )
    .await;
    for index in 0..20 {
        receiver
            .post_packet(&format!("op-{index}"), &packet("a", &format!("b{index}"), 101))
            .await
            .assert_accepted();
        let saved = cursor::load(&cursor::path(dir.path(), "recorder")).unwrap().unwrap_or(1);
        let synced = receiver.journal.synced();
        assert!(saved <= synced + 1, "position {saved} saved with only {synced} fdatasynced");
    }
    receiver.sink_report("recorder", |report| report["handled"] == 20).await;
    // While running, the position waits for the fdatasync (an hour away); the final save makes
    // what it covers durable first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let saved = cursor::load(&cursor::path(dir.path(), "recorder")).unwrap().unwrap_or(1);
    assert!(saved <= receiver.journal.synced() + 1, "position {saved} saved ahead of the disk");
    let journal = std::sync::Arc::clone(&receiver.journal);
    assert!(receiver.stop().await.is_clean());
    assert_eq!(cursor::load(&cursor::path(dir.path(), "recorder")).unwrap(), Some(21));
    assert!(journal.synced() >= 20);
}

#[tokio::test]
async fn a_lagging_sinks_batch_is_bounded_in_bytes_as_well_as_in_records() {
    use openim_callback_receiver::journal::MAX_BATCH_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(&dir);
    let mut body = packet("a", "b", 101);
    body["content"] = "x".repeat(3 * 1024 * 1024).into();
    let body = body.to_string();
    for _ in 0..10 {
        append(&journal, &body).await;
    }
    let mut reader = journal.reader(1);
    let mut seqs = Vec::new();
    loop {
        let batch = reader.read(1024).unwrap();
        if batch.entries.is_empty() {
            break;
        }
        let bytes: usize = batch.entries.iter().map(|entry| entry.message.raw.len()).sum();
        assert!(bytes <= MAX_BATCH_BYTES + body.len(), "a batch of {bytes} bytes");
        seqs.extend(batch.entries.iter().map(|entry| entry.seq));
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    journal.close();
}

/// A journal of 1 MiB segments in `dir`, opened directly.
fn small_segments_in(dir: &tempfile::TempDir) -> std::sync::Arc<Journal> {
    small_segments_keeping(dir, "64MiB", "0s")
}

/// The same, within `max_bytes`, keeping read segments for `retain`.
fn small_segments_keeping(dir: &tempfile::TempDir, max_bytes: &str, retain: &str) -> std::sync::Arc<Journal> {
    let settings = settings(&[
        ("JOURNAL__DIR", dir.path().to_str().unwrap()),
        ("JOURNAL__SEGMENT_BYTES", "1MiB"),
        ("JOURNAL__MAX_BYTES", max_bytes),
        ("JOURNAL__RETAIN", retain),
    ]);
    Journal::open(&settings.journal).unwrap()
}

#[tokio::test]
async fn segments_every_sink_has_read_are_kept_for_journal_retain_and_give_way_when_the_room_is_needed() {
    for (retain, kept) in [("0s", false), ("1h", true)] {
        let dir = tempfile::tempdir().unwrap();
        let journal = small_segments_keeping(&dir, "8MiB", retain);
        let reader = journal.register(1);
        let mut last = 0;
        for index in 0..450 {
            last = append(&journal, &ten_kilobytes(index)).await;
        }
        // Every record read: only the live segment is needed now.
        reader.saved(last + 1);
        journal.release();
        let segments = journal.report().segments;
        if kept {
            assert!(segments >= 4, "retain = {retain}: read segments kept: {segments}");
            assert_eq!(journal.reader(1).read(1024).unwrap().entries.len(), 450, "and readable");
        } else {
            assert_eq!(segments, 1, "retain = {retain}: only the live segment");
        }
        // Past max_bytes (8 MiB), kept segments give way; no reader loses a record.
        for index in 450..1500 {
            last = append(&journal, &ten_kilobytes(index)).await;
            reader.saved(last + 1);
        }
        let report = journal.report();
        assert!(report.bytes <= 8 * 1024 * 1024, "within max_bytes: {report:?}");
        journal.close();
    }
}

/// A packet of about 10 KB: a hundred fill a 1 MiB segment.
fn ten_kilobytes(index: usize) -> String {
    let mut message = packet("a", "b", 101);
    message["serverMsgID"] = format!("srv-{index}").into();
    message["content"] = "x".repeat(10_000).into();
    message.to_string()
}

#[tokio::test]
async fn a_roll_swaps_in_the_segment_the_sync_thread_made_ahead_instead_of_creating_one() {
    let dir = tempfile::tempdir().unwrap();
    let journal = small_segments_in(&dir);
    // A reader at the start keeps every segment.
    let _reader_at_start = journal.register(1);
    for index in 0..450 {
        let seq = append(&journal, &ten_kilobytes(index)).await;
        // A sync round after each record: the sync thread has had its chance to make the spare.
        journal.sync_through(seq).await.unwrap();
    }
    assert!(journal.report().segments >= 4, "{:?}", journal.report());
    assert_eq!(journal.rolls_without_spare(), 0, "a roll created its segment on the request path");
    // Every record is read back in order across the rolls, none reported damaged.
    let mut reader = journal.reader(1);
    let mut seqs = Vec::new();
    loop {
        let batch = reader.read(1024).unwrap();
        assert_eq!((batch.damaged, batch.skipped), (0, None));
        if batch.entries.is_empty() {
            break;
        }
        seqs.extend(batch.entries.iter().map(|entry| entry.seq));
    }
    assert_eq!(seqs, (1..=450).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_spare_segment_left_by_a_stop_is_dropped_at_start_and_numbering_goes_on_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = small_segments_in(&dir);
    let mut last = 0;
    for index in 0..60 {
        last = append(&journal, &ten_kilobytes(index)).await;
        journal.sync_through(last).await.unwrap();
    }
    let segments = openim_callback_receiver::journal::segment::list(dir.path()).unwrap();
    assert_eq!(segments.len(), 2, "the live segment and the spare made ahead: {segments:?}");
    journal.close();
    drop(journal);

    let journal = small_segments_in(&dir);
    let segments = openim_callback_receiver::journal::segment::list(dir.path()).unwrap();
    assert_eq!(segments.len(), 1, "the spare no record reached is gone: {segments:?}");
    assert_eq!(append(&journal, &ten_kilobytes(60)).await, last + 1);
    let batch = journal.reader(1).read(1024).unwrap();
    assert_eq!((batch.entries.len(), batch.damaged), (61, 0));
}

#[tokio::test]
async fn a_position_saved_after_the_journal_closed_is_synced_by_the_saver_not_waited_for_forever() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(&dir);
    let seq = append(&journal, &packet("a", "b", 101).to_string()).await;
    // Shutdown closed the journal while a stuck sink was still winding down: its final
    // save asks for an fdatasync that no sync thread is left to do.
    journal.close();
    let synced = tokio::time::timeout(Duration::from_secs(30), journal.sync_through(seq)).await;
    assert!(matches!(synced, Ok(Ok(()))), "{synced:?}");
    assert!(journal.synced() >= seq);
    let beyond = tokio::time::timeout(Duration::from_secs(30), journal.sync_through(seq + 1)).await;
    assert!(matches!(beyond, Ok(Err(_))), "a record never written is never reported synced: {beyond:?}");
}
