//! Where a callback's time goes, piece by piece: decoding each sample packet,
//! the stats update, formatting a log record, appending to the journal, and
//! the whole handler path through the router (journal append included; the
//! sinks read the journal on their own threads).
//!
//! cargo bench --bench hot_path

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use openim_callback_receiver::MessageJournal as Journal;
use openim_callback_receiver::callbacks::{AFTER_SEND_SINGLE_MSG, OperationId, ReceivedMessage};
use openim_callback_receiver::settings::{LogFormat, Settings};
use openim_callback_receiver::sinks::stats::MessageStats;
use openim_callback_receiver::sinks::stats::daily::Calendar;
use openim_callback_receiver::sinks::{Entry, LogSink, Sink, SinkSet};
use openim_callback_receiver::telemetry::RecordWriter;
use openim_callback_receiver::{Receiver, http};
use std::hint::black_box;
use std::time::SystemTime;
use tower::ServiceExt;

const SAMPLES: [&str; 3] = ["text.json", "picture.json", "rest-api-v3.0.json"];

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))).expect("sample packet")
}

fn received(raw: Vec<u8>) -> ReceivedMessage {
    let operation_id = OperationId { value: "bench".to_owned(), generated: false };
    ReceivedMessage::parse(AFTER_SEND_SINGLE_MSG, raw.into(), operation_id, SystemTime::now())
        .expect("the sample parses")
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for name in SAMPLES {
        let raw = sample(name);
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(name, |b| b.iter(|| AFTER_SEND_SINGLE_MSG.parse(black_box(&raw)).unwrap()));
    }
    group.finish();
}

fn stats_update(c: &mut Criterion) {
    let message = received(sample("text.json"));
    let (now, calendar) = (message.received_at, Calendar::default());
    let mut stats = MessageStats::default();
    c.bench_function("stats/record known people", |b| {
        b.iter(|| stats.record(black_box(message.message().unwrap()), message.received_at, &calendar))
    });
    let mut packet = message.message().unwrap().clone();
    let mut stats = MessageStats::default();
    let mut next = 0u64;
    c.bench_function("stats/record new sender", |b| {
        b.iter(|| {
            next += 1;
            packet.send_id = next.to_string();
            stats.record(black_box(&packet), now, &calendar)
        })
    });
}

fn log_record(c: &mut Criterion) {
    let settings = Settings::defaults();
    let mut sink = LogSink::new(&settings.sinks.log, LogFormat::Json, RecordWriter::new(std::io::sink()));
    let batch = [Entry { seq: 1, message: std::sync::Arc::new(received(sample("text.json"))) }];
    c.bench_function("log/format one JSON record", |b| {
        b.iter(|| sink.deliver(black_box(&batch)).now_or_never().unwrap().unwrap())
    });
}

/// Settings whose journal lives in `dir`, with no stats snapshot.
fn settings_in(dir: &std::path::Path) -> Settings {
    let mut settings = Settings::defaults();
    settings.journal.dir = dir.to_owned();
    settings.stats.snapshot_path = Default::default();
    settings
}

fn journal_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&settings_in(dir.path()).journal).unwrap();
    // No sink reads this journal: nothing holds segments back, so it stays small.
    let message = std::sync::Arc::new(received(sample("text.json")));
    c.bench_function("journal/append text.json (sync = os)", |b| {
        // Alone, an append writes at its first poll.
        b.iter(|| journal.append(black_box(&message)).now_or_never().unwrap().unwrap())
    });
    journal.close();
}

fn handler_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path());
    let journal = Journal::open(&settings.journal).unwrap();
    let (sinks, stats) =
        SinkSet::from_settings(&settings, journal, RecordWriter::new(std::io::sink())).unwrap();
    let receiver = Receiver::with_sinks(settings, sinks, stats);
    let app = http::app(receiver.state().clone());
    let body = bytes::Bytes::from(sample("text.json"));
    c.bench_function("router/accepted callback, log and stats sinks", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::post("/callbackExample/callbackAfterSendSingleMsgCommand")
                .header("content-type", "application/json; charset=utf-8")
                .header("operationid", "bench")
                .body(Body::from(body.clone()))
                .unwrap();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    });
}

criterion_group!(benches, decode, stats_update, log_record, journal_append, handler_path);
criterion_main!(benches);
