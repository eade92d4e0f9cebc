//! How fast the log sink alone writes records: 200,000 messages appended to
//! a journal first, then read from the file, parsed and written into a file
//! by the real runner (the path of a sink that is behind), timed until it has caught up. `scripts/bench-load.sh` compares
//! this with the end-to-end request rate.
//!
//! cargo run --release --example log_sink_rate -- /tmp/records.log

use openim_callback_receiver::callbacks::OperationId;
use openim_callback_receiver::journal::{Journal, NewRecord};
use openim_callback_receiver::settings::{LogFormat, Settings};
use openim_callback_receiver::sinks::{LogSink, SinkSet};
use openim_callback_receiver::telemetry::RecordWriter;
use std::time::{Duration, Instant, SystemTime};

const MESSAGES: u32 = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "log-sink-rate.log".to_owned());
    let raw = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/text.json"))?;
    let journal_dir = tempfile::tempdir()?;
    let mut settings = Settings::defaults();
    settings.journal.dir = journal_dir.path().to_owned();
    let journal = Journal::open(&settings.journal).map_err(std::io::Error::other)?;
    let operation_id = OperationId { value: "bench".to_owned(), generated: false };
    for _ in 0..MESSAGES {
        let record =
            NewRecord { kind: 0, received_at: SystemTime::now(), operation_id: &operation_id, body: &raw };
        // No parsed message kept: the sink reads the file and parses, its slow path.
        journal.append_record(&record, None).await.map_err(std::io::Error::other)?;
    }
    let writer = RecordWriter::new(std::fs::File::create(&path)?);
    let mut sinks = SinkSet::new(journal.clone(), settings.journal.cursor_interval);
    let started = Instant::now();
    sinks.spawn(LogSink::new(&settings.sinks.log, LogFormat::Json, writer), settings.sinks.log.batch_size)?;
    let undrained = sinks.drain(tokio::time::Instant::now() + Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert!(undrained.is_empty(), "the log sink caught up");
    journal.close();
    println!("{:.0}", f64::from(MESSAGES) / elapsed.as_secs_f64());
    Ok(())
}
