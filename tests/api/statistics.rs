//! Statistics an operator runs on: /metrics parsed as Prometheus text, daily
//! windows cut in a non-UTC offset, out-of-window dates, the per-minute rate.

use crate::helpers::{TestReceiver, packet, settings};
use std::time::{SystemTime, UNIX_EPOCH};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Samples of one metric, by their labels.
fn samples(
    scrape: &prometheus_parse::Scrape,
    name: &str,
) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .map(|sample| {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (sample.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), value)
        })
        .collect()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    samples(scrape, name)
        .into_iter()
        .find(|(labels, _)| {
            label.is_none_or(|(key, wanted)| labels.get(key).map(String::as_str) == Some(wanted))
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .1
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_match_what_was_sent() {
    let receiver = TestReceiver::start().await;
    let mut web_picture = packet("dave", "alice", 102);
    web_picture["senderPlatformID"] = 5.into();
    let mut unknown_type = packet("alice", "carol", 4321);
    unknown_type["senderPlatformID"] = 99.into();
    for (index, message) in
        [packet("alice", "bob", 101), packet("bob", "alice", 101), web_picture, unknown_type]
            .iter()
            .enumerate()
    {
        receiver.post_packet(&format!("op-{index}"), message).await.assert_accepted();
    }
    receiver.post_packet("op-bad", &serde_json::json!({"sendID": "x"})).await.assert_rejected(400, 4006);
    receiver.stats_after(4).await;
    receiver.sink_report("log", |log| log["handled"] == 4).await;

    let response = receiver.client.get(receiver.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();

    assert_eq!(value(&scrape, "openim_callback_messages_total", None), 4.0);
    assert_eq!(
        value(&scrape, "openim_callback_messages_by_content_type_total", Some(("content_type", "text"))),
        2.0
    );
    assert_eq!(
        value(&scrape, "openim_callback_messages_by_content_type_total", Some(("content_type", "picture"))),
        1.0
    );
    // An unknown code is spelled by its number, in /metrics as in /stats.
    assert_eq!(
        value(&scrape, "openim_callback_messages_by_content_type_total", Some(("content_type", "4321"))),
        1.0
    );
    assert_eq!(value(&scrape, "openim_callback_messages_by_platform_total", Some(("platform", "web"))), 1.0);
    assert_eq!(value(&scrape, "openim_callback_messages_by_platform_total", Some(("platform", "0"))), 2.0);
    assert_eq!(value(&scrape, "openim_callback_messages_by_platform_total", Some(("platform", "99"))), 1.0);
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["messages"]["by_content_type"]["4321"], 1);
    assert_eq!(stats["messages"]["by_platform"]["0"], 2);
    assert_eq!(
        value(&scrape, "openim_callback_messages_by_session_type_total", Some(("session_type", "0"))),
        4.0
    );
    assert_eq!(
        value(&scrape, "openim_callback_build_info", Some(("version", env!("CARGO_PKG_VERSION")))),
        1.0
    );
    assert_eq!(value(&scrape, "openim_callback_requests_in_flight", None), 0.0);
    assert_eq!(value(&scrape, "openim_callback_ready", None), 1.0);
    let last_accepted = value(&scrape, "openim_callback_last_accepted_timestamp_seconds", None);
    assert!((last_accepted - now_ms() as f64 / 1000.0).abs() < 60.0, "{last_accepted}");
    // Process metrics under the names every Prometheus client uses.
    assert!(value(&scrape, "process_resident_memory_bytes", None) > 1_000_000.0);
    assert!(value(&scrape, "process_open_fds", None) >= 3.0);
    assert!(value(&scrape, "process_cpu_seconds_total", None) > 0.0);
    let started = value(&scrape, "process_start_time_seconds", None);
    assert!((started - now_ms() as f64 / 1000.0).abs() < 3600.0, "{started}");
    assert_eq!(value(&scrape, "openim_callback_people", Some(("role", "sender"))), 3.0);
    assert_eq!(value(&scrape, "openim_callback_people", Some(("role", "any"))), 4.0);
    assert_eq!(value(&scrape, "openim_callback_conversations", None), 3.0);
    assert_eq!(value(&scrape, "openim_callback_requests_total", Some(("outcome", "accepted"))), 4.0);
    assert_eq!(value(&scrape, "openim_callback_requests_total", Some(("outcome", "invalid_json"))), 1.0);
    let log_handled = samples(&scrape, "openim_callback_sink_messages_total")
        .into_iter()
        .find(|(labels, _)| {
            labels.get("sink").map(String::as_str) == Some("log")
                && labels.get("result").map(String::as_str) == Some("handled")
        })
        .unwrap();
    assert_eq!(log_handled.1, 4.0);
    // Histograms: every accepted callback was timed, every message sized.
    assert!(
        text.contains("openim_callback_request_duration_seconds_count 5"),
        "both accepted and refused bodies are timed"
    );
    assert!(text.contains("openim_callback_content_bytes_count 4"));
    assert!(text.contains("openim_callback_delivery_lag_seconds_count 4"));
    // No user id is ever a label value.
    for id in ["alice", "bob", "carol", "dave"] {
        assert!(!text.contains(id), "{id} leaked into /metrics");
    }
}

#[tokio::test]
async fn daily_windows_cut_days_at_midnight_of_the_configured_offset() {
    let receiver = TestReceiver::start_with(settings(&[("STATS__TIMEZONE", "+08:00")]), |_| {}).await;
    // Midnight that began today in +08:00, in UTC milliseconds.
    let offset_ms = 8 * 3_600_000;
    let today_start = (now_ms() + offset_ms).div_euclid(DAY_MS) * DAY_MS - offset_ms;
    let at = |send: &str, recv: &str, content_type: i32, create_time: i64| {
        let mut message = packet(send, recv, content_type);
        message["createTime"] = create_time.into();
        message["sendTime"] = create_time.into();
        message
    };
    let batch = [
        at("alice", "bob", 101, today_start - 1), // last millisecond of yesterday, +08:00
        at("carol", "bob", 102, today_start),     // first millisecond of today
        at("alice", "bob", 101, today_start + 60_000),
        at("old", "bob", 101, today_start - 40 * DAY_MS), // outside 31 kept days
    ];
    for (index, message) in batch.iter().enumerate() {
        receiver.post_packet(&format!("op-{index}"), message).await.assert_accepted();
    }
    let stats = receiver.stats_after(4).await;
    assert_eq!(stats["out_of_window"], 1);
    assert_eq!(stats["messages"]["total"], 4, "out-of-window messages still count in the totals");

    let daily = receiver.get_json("/stats/daily").await;
    assert_eq!(daily["timezone"], "+08:00");
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{daily}");
    let (today, yesterday) = (&days[0], &days[1]);
    assert!(today["date"].as_str().unwrap() > yesterday["date"].as_str().unwrap(), "newest first");
    assert_eq!(today["messages"], 2);
    assert_eq!(today["by_content_type"], serde_json::json!({"text": 1, "picture": 1}));
    assert_eq!(today["people"], serde_json::json!({"senders": 2, "receivers": 1, "total": 3}));
    assert_eq!(today["conversations"], 2);
    assert_eq!(yesterday["messages"], 1);

    let today_date = today["date"].as_str().unwrap();
    let only_today = receiver.get_json(&format!("/stats/daily?from={today_date}")).await;
    assert_eq!(only_today["days"].as_array().unwrap().len(), 1);
    let before = receiver.get_json(&format!("/stats/daily?to={}", yesterday["date"].as_str().unwrap())).await;
    assert_eq!(before["days"][0]["messages"], 1);
    let refused = receiver.client.get(receiver.url("/stats/daily?from=2026-02-30")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["errCode"], 4009);
}

#[tokio::test]
async fn the_last_hour_is_counted_per_minute() {
    let receiver = TestReceiver::start().await;
    for index in 0..3 {
        receiver.post_packet(&format!("op-{index}"), &packet("a", "b", 101)).await.assert_accepted();
    }
    let stats = receiver.stats_after(3).await;
    let minutes = stats["messages_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let counted: u64 = minutes.iter().map(|minute| minute["messages"].as_u64().unwrap()).sum();
    assert_eq!(counted, 3);
    assert!(
        minutes.windows(2).all(|pair| pair[0]["minute"].as_str() < pair[1]["minute"].as_str()),
        "oldest first"
    );
}

/// `/metrics` of a receiver that counted one message.
async fn metrics_after_one_message(receiver: TestReceiver) -> String {
    receiver.post_packet("op", &packet("a", "b", 101)).await.assert_accepted();
    receiver.stats_after(1).await;
    let exposed = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(receiver.stop().await.is_clean());
    exposed
}

/// The shipped Grafana dashboard only queries metrics the receiver exposes:
/// the fleet's (`openim_callback_fleet_*`) with the Redis backend, the rest
/// with the memory backend.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exposed_metrics() {
    let replica = metrics_after_one_message(TestReceiver::start().await).await;
    let redis_url =
        crate::helpers::service_url("Redis", "OPENIM_CALLBACK_TEST_REDIS_URL", "redis://127.0.0.1:6379")
            .await;
    let fleet = match &redis_url {
        Some(url) => {
            // Its keys are deleted when the test is done with it.
            let keys = crate::fleet::Fleet::new(url);
            let overrides = [
                ("STATS__BACKEND", "redis"),
                ("STATS__REDIS_URL", url.as_str()),
                ("STATS__KEY_PREFIX", keys.prefix.as_str()),
                ("STATS__FLEET_REFRESH", "10ms"),
            ];
            let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
            Some(metrics_after_one_message(receiver).await)
        }
        None => None,
    };
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|variable| Some(("variables".to_owned(), variable["definition"].as_str()?.to_owned())))
        .collect();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((panel["title"].to_string(), target["expr"].as_str().unwrap().to_owned()));
        }
    }
    let mut queried = 0;
    for (title, expr) in &queries {
        assert!(!expr.contains("[5m]"), "{title}: a fixed range; use $__rate_interval");
        for (start, _) in expr.match_indices("openim_callback_") {
            let name: String =
                expr[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let exposed = if name.starts_with("openim_callback_fleet_") {
                fleet.as_deref()
            } else {
                Some(replica.as_str())
            };
            if let Some(exposed) = exposed {
                assert!(exposed.contains(&format!("\n{name}")), "{name} (panel {title}) is not in /metrics");
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "{queried}");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "import asks for the data source");
}
