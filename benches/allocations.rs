//! Heap allocations per callback, counted by dhat's global allocator:
//! for decoding alone, and for the whole request through the router (the
//! journal append and the sinks' work included, counted once they caught up).
//!
//! cargo bench --bench allocations

use axum::body::Body;
use axum::http::Request;
use futures_util::FutureExt;
use openim_callback_receiver::MessageJournal as Journal;
use openim_callback_receiver::callbacks::{AFTER_SEND_SINGLE_MSG, OperationId, ReceivedMessage};
use openim_callback_receiver::settings::{LogFormat, Settings};
use openim_callback_receiver::sinks::stats::MessageStats;
use openim_callback_receiver::sinks::stats::daily::Calendar;
use openim_callback_receiver::sinks::{Entry, LogSink, Sink, SinkSet};
use openim_callback_receiver::telemetry::RecordWriter;
use openim_callback_receiver::{Receiver, http};
use std::sync::atomic::Ordering;
use tower::ServiceExt;

// dhat counts every heap block; the crate forbids unsafe code, so no hand-made allocator.
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

fn count<T>(runs: u64, mut work: impl FnMut() -> T) -> f64 {
    let before = allocations();
    for _ in 0..runs {
        std::hint::black_box(work());
    }
    (allocations() - before) as f64 / runs as f64
}

fn main() {
    const RUNS: u64 = 10_000;
    let _profiler = dhat::Profiler::builder().testing().build();
    for name in ["text.json", "picture.json", "rest-api-v3.0.json"] {
        let raw = std::fs::read(format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let per_decode = count(RUNS, || AFTER_SEND_SINGLE_MSG.parse(&raw).unwrap());
        println!("decode {name:<20} {per_decode:6.1} allocations");
    }

    let raw = std::fs::read(format!("{}/samples/text.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let operation_id = OperationId { value: "bench".to_owned(), generated: false };
    let now = std::time::SystemTime::now();
    let message = ReceivedMessage::parse(AFTER_SEND_SINGLE_MSG, raw.into(), operation_id, now).unwrap();
    let settings = Settings::defaults();
    let mut log = LogSink::new(&settings.sinks.log, LogFormat::Json, RecordWriter::new(std::io::sink()));
    let batch = [Entry { seq: 1, message: std::sync::Arc::new(message.clone()) }];
    let per_record = count(RUNS, || log.deliver(&batch).now_or_never().unwrap().unwrap());
    println!("log record, text.json            {per_record:6.1} allocations");
    let calendar = Calendar::default();
    let mut stats = MessageStats::default();
    let per_update = count(RUNS, || stats.record(message.message().unwrap(), message.received_at, &calendar));
    println!("stats update, known people       {per_update:6.1} allocations");
    let request = || {
        Request::post("/callbackExample/callbackAfterSendSingleMsgCommand")
            .header("content-type", "application/json; charset=utf-8")
            .header("operationid", "bench")
            .body(Body::from(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    let per_request_built = count(RUNS, request);
    println!("building the bench's own request {per_request_built:6.1} allocations (included below)");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let journal_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::defaults();
    settings.journal.dir = journal_dir.path().to_owned();
    settings.stats.snapshot_path = Default::default();
    // Log and stats, as scripts/bench-instructions.sh measures: the archive, on by default, off.
    settings.sinks.sql.enabled = false;
    let journal = Journal::open(&settings.journal).unwrap();
    let (sinks, stats) =
        SinkSet::from_settings(&settings, journal, RecordWriter::new(std::io::sink())).unwrap();
    let receiver = Receiver::with_sinks(settings, sinks, stats);
    let app = http::app(receiver.state().clone());
    let body = bytes::Bytes::from(
        std::fs::read(format!("{}/samples/text.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    );
    let handled = || receiver.state().sinks.iter().map(|s| s.handled.load(Ordering::Acquire)).sum::<u64>();
    let post = || {
        let request = Request::post("/callbackExample/callbackAfterSendSingleMsgCommand")
            .header("content-type", "application/json; charset=utf-8")
            .header("operationid", "bench")
            .body(Body::from(body.clone()))
            .unwrap();
        let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
        assert_eq!(response.status(), 200);
    };
    post(); // warm up: first-use allocations (span slab, buffers) are not per request
    while handled() < 2 {
        std::thread::yield_now();
    }
    let before = allocations();
    let start_handled = handled();
    for _ in 0..RUNS {
        post();
    }
    while handled() < start_handled + 2 * RUNS {
        std::thread::yield_now();
    }
    let per_request = (allocations() - before) as f64 / RUNS as f64;
    println!("request through the router, text.json, journal, log+stats sinks: {per_request:.1} allocations");
}
