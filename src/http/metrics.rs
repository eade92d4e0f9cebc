//! Prometheus metrics for `GET /metrics`, through `prometheus-client`.
//!
//! Counts that the receiver already keeps (messages, people, requests, sink
//! counters) are read at scrape time by a collector, so they continue from a
//! restored snapshot and cost the request path nothing. Only the histograms
//! are updated as things happen. Every label value comes from a bounded set:
//! known code names, `other`, sink names, rejection names; never a user id.

use super::AppState;
use super::error::Rejection;
use crate::sinks::stats::Counted;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::atomic::Ordering;

/// Prefix of every metric name.
pub const PREFIX: &str = "openim_callback";

/// The text exposition of every metric.
pub async fn render(state: &AppState) -> String {
    let counted = match &state.stats {
        Some(stats) => Some(stats.counted().await),
        None => None,
    };
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "request_duration_seconds",
        "Time from a callback's arrival to its answer",
        state.requests.request_duration.clone(),
    );
    if let Some(stats) = &state.stats {
        registry.register(
            "delivery_lag_seconds",
            "Arrival time minus the message's sendTime (createTime when absent): how far OpenIM's webhook queue is behind",
            stats.delivery_lag.clone(),
        );
        registry.register(
            "content_bytes",
            "Size of the message content in bytes",
            stats.content_bytes.clone(),
        );
    }
    registry.register(
        "journal_fsync_seconds",
        "Time each fdatasync of the journal took",
        state.journal.fsync_seconds.clone(),
    );
    registry.register_collector(Box::new(StateCollector(state.clone(), counted)));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    // The process metrics go by the names every Prometheus client uses
    // (process_cpu_seconds_total, …), without the prefix: one exposition, one EOF.
    let mut process = Registry::default();
    process.register_collector(Box::new(ProcessCollector));
    if let Some(without_eof) = text.strip_suffix("# EOF\n") {
        text.truncate(without_eof.len());
    }
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &process);
    text
}

/// CPU, memory, file descriptors and start time of this process, from /proc.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else { return Ok(()) };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        if let Ok(stat) = me.stat() {
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?)?;
            let rss = ConstGauge::new((stat.rss * procfs::page_size()) as i64);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                MetricType::Gauge,
            )?)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let started = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                started.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the epoch, in seconds",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Ok(open) = me.fd_count() {
            let fds = ConstGauge::new(open as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Reads the receiver's own counts at scrape time, and the message counts
/// read just before (this replica's, or the fleet's).
struct StateCollector(AppState, Option<Counted>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

type Labels = Vec<(&'static str, Cow<'static, str>)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric_encoder = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in series {
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let build = ConstGauge::new(1);
        build.encode(
            encoder
                .encode_descriptor(
                    "build_info",
                    "Always 1: the running version, as labels",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?,
        )?;
        if let Some(Counted { fleet: Some(fleet), .. }) = &self.1 {
            let up = ConstGauge::new(i64::from(fleet.state == "ok"));
            up.encode(encoder.encode_descriptor(
                "fleet_up",
                "1 while the fleet's figures (openim_callback_fleet_*) are read from Redis, 0 while Redis does not answer (the last figures are served)",
                None,
                MetricType::Gauge,
            )?)?;
            let replicas = ConstGauge::new(fleet.replicas.len() as i64);
            replicas.encode(encoder.encode_descriptor(
                "fleet_replicas",
                "Replicas of the fleet seen in the last minute",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(Counted { report: Some(report), today, fleet }) = &self.1 {
            // The fleet's figures are the same on every replica: they go by
            // their own names (aggregate them with max, never sum), and this
            // replica's own counts are not served (summing them is what
            // openim_callback_requests{outcome="accepted"} is for).
            let name = |base: &str| if fleet.is_some() { format!("fleet_{base}") } else { base.to_owned() };
            let whose = if fleet.is_some() {
                "by the whole fleet (the same on every replica: aggregate with max)"
            } else {
                "by this replica"
            };
            let messages = &report.messages;
            let total = ConstCounter::new(messages.total);
            total.encode(encoder.encode_descriptor(
                &name("messages"),
                &format!("Messages received {whose}"),
                None,
                total.metric_type(),
            )?)?;
            for (name_base, label, counts) in [
                ("messages_by_content_type", "content_type", &messages.by_content_type),
                ("messages_by_platform", "platform", &messages.by_platform),
                ("messages_by_msg_from", "msg_from", &messages.by_msg_from),
                ("messages_by_session_type", "session_type", &messages.by_session_type),
                ("messages_by_status", "status", &messages.by_status),
            ] {
                let help = format!(
                    "Messages received {whose}, by {label} (a code's name; an unknown code's number, the {} most frequent; other: the rest)",
                    crate::sinks::stats::MAX_UNKNOWN_CODES
                );
                // Spelled as in /stats, which folds unknown codes the same way.
                let series = counts.iter().map(|(value, count)| {
                    (vec![(label, Cow::Owned(value.clone()))], ConstCounter::new(*count))
                });
                family(&mut encoder, &name(name_base), &help, MetricType::Counter, series)?;
            }
            let out_of_window = ConstCounter::new(report.out_of_window);
            out_of_window.encode(encoder.encode_descriptor(
                &name("messages_out_of_window"),
                "Messages dated outside the kept daily windows (still in the totals)",
                None,
                MetricType::Counter,
            )?)?;
            let people = [
                ("sender", report.people.senders),
                ("receiver", report.people.receivers),
                ("any", report.people.total),
            ];
            family(
                &mut encoder,
                &name("people"),
                &format!(
                    "Distinct people since counting began, by role, {whose} (this replica: exact below 10,000, then within 1%; fleet: within about 1%)"
                ),
                MetricType::Gauge,
                people.map(|(role, count)| {
                    (vec![("role", Cow::Borrowed(role))], ConstGauge::new(count as i64))
                }),
            )?;
            let people_today = today.as_ref().map(|day| &day.people);
            family(
                &mut encoder,
                &name("people_today"),
                &format!("Distinct people in messages dated today (stats.timezone), by role, {whose}"),
                MetricType::Gauge,
                [
                    ("sender", people_today.map_or(0, |people| people.senders)),
                    ("receiver", people_today.map_or(0, |people| people.receivers)),
                    ("any", people_today.map_or(0, |people| people.total)),
                ]
                .map(|(role, count)| (vec![("role", Cow::Borrowed(role))], ConstGauge::new(count as i64))),
            )?;
            let day =
                |pick: fn(&crate::sinks::stats::daily::DayReport) -> u64| today.as_ref().map_or(0, pick);
            for (base, count, help) in [
                ("messages_today", day(|day| day.messages), "Messages dated today (stats.timezone)"),
                (
                    "conversations",
                    report.conversations,
                    "Distinct conversations (unordered sendID/recvID pairs, and groups) since counting began",
                ),
                ("groups", report.groups, "Distinct groups that sent a message since counting began"),
                (
                    "groups_today",
                    day(|day| day.groups),
                    "Distinct groups in messages dated today (stats.timezone)",
                ),
            ] {
                let gauge = ConstGauge::new(count as i64);
                gauge.encode(encoder.encode_descriptor(
                    &name(base),
                    &format!("{help}, {whose}"),
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            // Not messages: each is a message already counted when it was sent.
            for (base, count, help) in [
                (
                    "saved_to_database",
                    report.saved_to_database,
                    "afterMsgSaveDB callbacks (messages OpenIM wrote to its database; not in the messages total)",
                ),
                (
                    "revoked",
                    report.revoked,
                    "afterRevokeMsg callbacks (messages revoked; not in the messages total)",
                ),
            ] {
                let counter = ConstCounter::new(count);
                counter.encode(encoder.encode_descriptor(
                    &name(base),
                    &format!("{help}, {whose}"),
                    None,
                    MetricType::Counter,
                )?)?;
            }
        }
        let writable = state.journal.write_blocked().is_none();
        let journal_writable = ConstGauge::new(i64::from(writable));
        journal_writable.encode(encoder.encode_descriptor(
            "journal_writable",
            "1 while the journal takes records, 0 while every callback gets 503 (a full disk, a failed fdatasync, the journal full)",
            None,
            MetricType::Gauge,
        )?)?;
        let ready = ConstGauge::new(i64::from(writable && !state.sinks.iter().any(|sink| sink.is_failing())));
        ready.encode(encoder.encode_descriptor(
            "ready",
            "1 while /readyz answers 200 (the journal takes records, no local sink failing), else 0",
            None,
            MetricType::Gauge,
        )?)?;
        let requests = &state.requests;
        let in_flight = ConstGauge::new(state.in_flight() as i64);
        in_flight.encode(encoder.encode_descriptor(
            "requests_in_flight",
            "Callbacks being handled now (at most server.max_in_flight)",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(last_ms) = requests.last_accepted_ms() {
            let last = ConstGauge::new(last_ms as f64 / 1000.0);
            last.encode(encoder.encode_descriptor(
                "last_accepted_timestamp_seconds",
                "When the last accepted message arrived, in seconds since the epoch",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let not_logged = ConstCounter::new(state.refusals.not_logged());
        not_logged.encode(encoder.encode_descriptor(
            "refusals_not_logged",
            "Refused callbacks not logged at WARN because of the rate limit (each is still counted in openim_callback_requests_total)",
            None,
            MetricType::Counter,
        )?)?;
        let outcomes = std::iter::once(("accepted", requests.accepted())).chain(
            Rejection::ALL
                .iter()
                // /readyz's own answer, never a callback's.
                .filter(|rejection| **rejection != Rejection::SinkFailing)
                .map(|rejection| (rejection.as_str(), requests.rejected(*rejection))),
        );
        family(
            &mut encoder,
            "requests",
            "Callback requests since start, by outcome (accepted, or the rejection reason)",
            MetricType::Counter,
            outcomes.map(|(outcome, count)| {
                (vec![("outcome", Cow::Borrowed(outcome))], ConstCounter::new(count))
            }),
        )?;
        family(
            &mut encoder,
            "other_requests_refused",
            "Refused requests that could not be callbacks (not a POST: browsers, scanners, bad queries), by reason",
            MetricType::Counter,
            Rejection::ALL.iter().map(|rejection| {
                let count = ConstCounter::new(requests.other_refused(*rejection));
                (vec![("reason", Cow::Borrowed(rejection.as_str()))], count)
            }),
        )?;
        let sink_label = |sink: &crate::sinks::SinkStatus| vec![("sink", Cow::Borrowed(sink.name()))];
        family(
            &mut encoder,
            "sink_lag_records",
            "Records in the journal each sink has not delivered yet",
            MetricType::Gauge,
            state.sinks.iter().map(|sink| (sink_label(sink), ConstGauge::new(sink.lag_records() as i64))),
        )?;
        family(
            &mut encoder,
            "sink_lag_seconds",
            "Age of the oldest record each sink has not delivered yet (0 when caught up)",
            MetricType::Gauge,
            state.sinks.iter().map(|sink| (sink_label(sink), ConstGauge::new(sink.lag_seconds()))),
        )?;
        family(
            &mut encoder,
            "sink_retries",
            "Deliveries that failed and were retried, per sink",
            MetricType::Counter,
            state
                .sinks
                .iter()
                .map(|sink| (sink_label(sink), ConstCounter::new(sink.retries.load(Ordering::Relaxed)))),
        )?;
        family(
            &mut encoder,
            "sink_dead_letters",
            "Records a sink gave up on, kept until retried or dropped (/sinks/<name>/dead-letters)",
            MetricType::Gauge,
            state
                .sinks
                .iter()
                .map(|sink| (sink_label(sink), ConstGauge::new(sink.dead_letters.count() as i64))),
        )?;
        family(
            &mut encoder,
            "sink_up",
            "1 while a sink delivers, 0 while its deliveries fail (retrying) or after it stopped",
            MetricType::Gauge,
            state.sinks.iter().map(|sink| {
                let up = sink.state() == crate::sinks::SinkState::Running;
                (sink_label(sink), ConstGauge::new(up as i64))
            }),
        )?;
        let results = state.sinks.iter().flat_map(|sink| {
            sink.record_counts().map(|(result, count)| {
                (
                    vec![("sink", Cow::Borrowed(sink.name())), ("result", Cow::Borrowed(result))],
                    ConstCounter::new(count),
                )
            })
        });
        family(
            &mut encoder,
            "sink_messages",
            "Records per sink: handled, failed (given up), filtered (left out by the sink's only filter), skipped (dropped by a full journal before the sink read them), damaged (lost to damaged journal files)",
            MetricType::Counter,
            results,
        )?;
        let journal = state.journal.report();
        for (name, help, value) in [
            ("journal_bytes", "Bytes in the journal's segment files", journal.bytes),
            ("journal_segments", "Segment files in the journal", journal.segments),
            ("journal_max_bytes", "The journal's size limit (journal.max_bytes)", journal.max_bytes),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        for (name, help, value) in [
            (
                "journal_append_failures",
                "Appends to the journal that failed (disk full or failing; the callback got 503)",
                journal.append_failures,
            ),
            (
                "journal_writes",
                "pwritev calls that wrote journal records (requests arriving together share one)",
                journal.writes,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}
