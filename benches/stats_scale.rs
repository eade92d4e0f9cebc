//! The stats sink at scale: 1,000,000 distinct users and 1,000,000 distinct
//! conversations spread over 31 days, fed through the real stats sink.
//! Reports the heap held by all stats state (measured by dhat) and the error
//! of every distinct count, totals and per day, against exact counts kept
//! alongside. Targets: state within 64 MiB, every count within 1%.
//!
//! cargo bench --bench stats_scale

use futures_util::FutureExt;
use openim_callback_receiver::callbacks::{
    AFTER_SEND_SINGLE_MSG, Callback, ContentType, MessagePacket, OperationId, ReceivedMessage,
};
use openim_callback_receiver::sinks::stats::daily::Calendar;
use openim_callback_receiver::sinks::stats::{MessageStats, StatsHandle, StatsSink};
use openim_callback_receiver::sinks::{Entry, Sink};
use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

const USERS: u64 = 1_000_000;
const DAYS: u64 = 31;
const DAY_MS: u64 = 86_400_000;

/// One day's exact sets: senders, receivers, people, conversations.
type DayTruth = (HashSet<u64>, HashSet<u64>, HashSet<u64>, HashSet<(u64, u64)>);

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let today_start = now_ms / DAY_MS * DAY_MS;

    let handle = StatsHandle::new(MessageStats::default(), Calendar::default());
    let mut sink = StatsSink::new(handle.clone());

    // The truth, kept apart (its memory is not the sink's).
    let mut truth_days: HashMap<u64, DayTruth> = HashMap::new();
    let mut receivers = HashSet::new();
    let mut conversations = HashSet::new();
    let mut sink_bytes_during = 0;
    let mut packet = MessagePacket { content_type: ContentType(101), ..Default::default() };
    // Message i: user i writes to user (i * 7919 + 1) mod USERS, on day i mod 31:
    // every user sends once, and every (sender, receiver) pair is new.
    for i in 0..USERS {
        let receiver = (i * 7919 + 1) % USERS;
        let day = i % DAYS;
        packet.send_id = format!("user-{i}");
        packet.recv_id = format!("user-{receiver}");
        packet.create_time = (today_start - day * DAY_MS + 1_000) as i64;
        let message = ReceivedMessage {
            command: AFTER_SEND_SINGLE_MSG,
            callback: Callback::Message(packet.clone()),
            raw: bytes::Bytes::new(),
            operation_id: OperationId { value: String::new(), generated: false },
            received_at: now,
        };
        let batch = [Entry { seq: i + 1, message: std::sync::Arc::new(message) }];
        let heap_before_message = dhat::HeapStats::get().curr_bytes;
        sink.deliver(&batch).now_or_never().unwrap().unwrap();
        sink_bytes_during += dhat::HeapStats::get().curr_bytes as i64 - heap_before_message as i64;
        receivers.insert(receiver);
        conversations.insert((i.min(receiver), i.max(receiver)));
        let truth = truth_days.entry(day).or_default();
        truth.0.insert(i);
        truth.1.insert(receiver);
        truth.2.insert(i);
        truth.2.insert(receiver);
        truth.3.insert((i.min(receiver), i.max(receiver)));
    }
    // What the sink's deliveries left allocated: all of the stats state.
    let state_bytes = sink_bytes_during.max(0) as f64;
    let report = handle.report();
    let people: HashSet<u64> = (0..USERS).chain(receivers.iter().copied()).collect();

    println!("{USERS} messages, {USERS} distinct senders, {DAYS} days");
    println!("heap held by all stats state (dhat): {:.1} MiB (target <= 64 MiB)", state_bytes / 1048576.0);
    let mut worst: f64 = 0.0;
    let mut check = |what: String, estimate: u64, truth: usize| {
        let error = (estimate as f64 - truth as f64).abs() / truth.max(1) as f64;
        worst = worst.max(error);
        (what, estimate, truth, error)
    };
    let mut rows = vec![
        check("senders".into(), report.people.senders, USERS as usize),
        check("receivers".into(), report.people.receivers, receivers.len()),
        check("people".into(), report.people.total, people.len()),
        check("conversations".into(), report.conversations, conversations.len()),
    ];
    let days = handle.daily(None, None);
    assert_eq!(days.len() as u64, DAYS);
    let mut day_numbers: Vec<_> = truth_days.keys().copied().collect();
    day_numbers.sort();
    for (day_report, day) in days.iter().zip(day_numbers.iter()) {
        let truth = &truth_days[day];
        rows.push(check(format!("{} senders", day_report.date), day_report.people.senders, truth.0.len()));
        rows.push(check(
            format!("{} receivers", day_report.date),
            day_report.people.receivers,
            truth.1.len(),
        ));
        rows.push(check(format!("{} people", day_report.date), day_report.people.total, truth.2.len()));
        rows.push(check(
            format!("{} conversations", day_report.date),
            day_report.conversations,
            truth.3.len(),
        ));
    }
    for (what, estimate, truth, error) in rows.iter().take(8) {
        println!("{what:<28} estimate {estimate:>9}  truth {truth:>9}  error {:.3}%", error * 100.0);
    }
    println!("... {} counts in all; worst error {:.3}% (target < 1%)", rows.len(), worst * 100.0);
}
