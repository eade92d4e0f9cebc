//! Prometheus metrics for `GET /metrics`, through `prometheus-client`.
//!
//! Counts that the receiver already keeps (messages, people, requests, sink
//! counters) are read at scrape time by a collector, so they continue from a
//! restored snapshot and cost the request path nothing. Only the histograms
//! are updated as things happen. Every label value comes from a bounded set:
//! known code names, `other`, sink names, rejection names; never a user id.

use crate::http::AppState;
use crate::http::error::Rejection;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Prefix of every metric name.
pub const PREFIX: &str = "openim_callback";

/// The text exposition of every metric.
pub fn render(state: &AppState) -> String {
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
    registry.register_collector(Box::new(StateCollector(state.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// Reads the receiver's own counts at scrape time.
#[derive(Debug)]
struct StateCollector(AppState);

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

/// Counts by label, with unknown codes folded into `other`.
fn folded(counts: &BTreeMap<String, u64>, known: impl Fn(&str) -> bool) -> BTreeMap<Cow<'static, str>, u64> {
    let mut folded = BTreeMap::new();
    for (label, count) in counts {
        let key = if known(label) { Cow::Owned(label.clone()) } else { Cow::Borrowed("other") };
        *folded.entry(key).or_default() += count;
    }
    folded
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        if let Some(stats) = &state.stats {
            let report = stats.report();
            let messages = &report.messages;
            let total = ConstCounter::new(messages.total);
            total.encode(encoder.encode_descriptor(
                "messages",
                "Messages received",
                None,
                total.metric_type(),
            )?)?;
            // A label is a name when it is not a number: numbers are unknown codes.
            let known = |label: &str| label.parse::<i64>().is_err();
            for (name, label, counts) in [
                ("messages_by_content_type", "content_type", &messages.by_content_type),
                ("messages_by_platform", "platform", &messages.by_platform),
                ("messages_by_msg_from", "msg_from", &messages.by_msg_from),
                ("messages_by_status", "status", &messages.by_status),
            ] {
                let help =
                    format!("Messages received, by {label} (other: codes this receiver does not know)");
                let series = folded(counts, known)
                    .into_iter()
                    .map(|(value, count)| (vec![(label, value)], ConstCounter::new(count)));
                family(&mut encoder, name, &help, MetricType::Counter, series)?;
            }
            let out_of_window = ConstCounter::new(report.out_of_window);
            out_of_window.encode(encoder.encode_descriptor(
                "messages_out_of_window",
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
                "people",
                "Distinct people since counting began, by role (exact below 10,000, then within 1%)",
                MetricType::Gauge,
                people.map(|(role, count)| {
                    (vec![("role", Cow::Borrowed(role))], ConstGauge::new(count as i64))
                }),
            )?;
            let conversations = ConstGauge::new(report.conversations as i64);
            conversations.encode(encoder.encode_descriptor(
                "conversations",
                "Distinct conversations (unordered sendID/recvID pairs) since counting began",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let requests = &state.requests;
        let outcomes = std::iter::once(("accepted", requests.accepted())).chain(
            Rejection::ALL.iter().map(|rejection| (rejection.as_str(), requests.rejected(*rejection))),
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
            "sink_queue_depth",
            "Messages waiting in each sink's queue",
            MetricType::Gauge,
            state.sinks.iter().map(|sink| {
                (
                    vec![("sink", Cow::Borrowed(sink.name()))],
                    ConstGauge::new(sink.counters().pending() as i64),
                )
            }),
        )?;
        let results = state.sinks.iter().flat_map(|sink| {
            let counters = sink.counters();
            [
                ("handled", counters.handled.load(Ordering::Relaxed)),
                ("failed", counters.failed.load(Ordering::Relaxed)),
                ("missed", counters.missed.load(Ordering::Relaxed)),
            ]
            .map(|(result, count)| {
                (
                    vec![("sink", Cow::Borrowed(sink.name())), ("result", Cow::Borrowed(result))],
                    ConstCounter::new(count),
                )
            })
        });
        family(
            &mut encoder,
            "sink_messages",
            "Messages per sink: handled, failed (error or panic), missed (queue full until the deadline)",
            MetricType::Counter,
            results,
        )?;
        Ok(())
    }
}
