//! How fast the log sink alone writes records: 200,000 messages through the
//! real worker and queue into a file, timed until the queue is drained.
//! `scripts/bench-load.sh` compares this with the end-to-end request rate.
//!
//! cargo run --release --example log_sink_rate -- /tmp/records.log

use openim_callback_receiver::message::{AfterSendSingleMsg, OperationId, ReceivedMessage};
use openim_callback_receiver::settings::{LogFormat, Settings};
use openim_callback_receiver::sinks::{LogSink, SinkSet, hand_over};
use openim_callback_receiver::telemetry::RecordWriter;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const MESSAGES: u32 = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "log-sink-rate.log".to_owned());
    let raw = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/text.json"))?;
    let message = Arc::new(ReceivedMessage {
        packet: AfterSendSingleMsg::from_json(&raw).expect("the sample parses"),
        raw: raw.into(),
        operation_id: OperationId { value: "bench".to_owned(), generated: false },
        received_at: SystemTime::now(),
    });
    let settings = Settings::defaults();
    let writer = RecordWriter::new(std::fs::File::create(&path)?);
    let mut sinks = SinkSet::new();
    sinks.spawn(
        LogSink::new(&settings.sinks.log, LogFormat::Json, writer),
        settings.sinks.log.queue_capacity,
    )?;
    let handles = sinks.handles();

    let started = Instant::now();
    for _ in 0..MESSAGES {
        hand_over(&handles, Arc::clone(&message)).await.expect("the log sink runs");
    }
    drop(handles);
    let undrained = sinks.drain(tokio::time::Instant::now() + Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert!(undrained.is_empty(), "the log sink drained");
    println!("{:.0}", f64::from(MESSAGES) / elapsed.as_secs_f64());
    Ok(())
}
