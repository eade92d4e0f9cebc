//! Liveness, readiness and the counters: `/healthz`, `/readyz`, `/stats`.

use super::AppState;
use super::error::{self, ApiError, Outcome, Rejection};
use crate::sinks::stats::MessageReport;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Alive: the process answers HTTP.
pub async fn healthz() -> Response {
    error::success()
}

/// Ready: serving, the journal takes records, and no local sink (log, stats) is failing. A sink whose
/// remote target is down shows as degraded in `/stats` instead: the journal
/// holds its records until the target is back.
pub async fn readyz(State(state): State<AppState>) -> Response {
    // A journal that cannot take a record (a full disk, a failed fdatasync, the
    // journal full with when_full = "refuse") means every callback gets 503.
    if let Some(detail) = state.journal.write_blocked() {
        return probe_answer(ApiError::JournalWriteFailed { detail }.into_response());
    }
    match state.sinks.iter().find(|sink| sink.is_failing()) {
        None => error::success(),
        Some(failing) => {
            let error = failing.last_error().unwrap_or_default();
            probe_answer(ApiError::SinkFailing { sink: failing.name(), error }.into_response())
        }
    }
}

/// A probe's refusal is an envelope too, but not a refused callback: it is not counted.
fn probe_answer(mut response: Response) -> Response {
    response.extensions_mut().remove::<Outcome>();
    response
}

#[derive(Serialize)]
struct StatsReport {
    /// Whose messages the counts are: "replica" (this one's) or "fleet" (every
    /// replica's, read from Redis with `stats.backend = "redis"`).
    scope: &'static str,
    /// With the fleet scope: this replica's name, the replicas seen, and how current the figures are.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<crate::sinks::stats::fleet::FleetStatus>,
    /// This receiver's version.
    version: &'static str,
    uptime_seconds: u64,
    /// Absent when the stats sink is disabled.
    #[serde(flatten)]
    messages: Option<MessageReport>,
    requests: RequestReport,
    journal: crate::journal::JournalReport,
    sinks: BTreeMap<&'static str, SinkReport>,
}

#[derive(Serialize)]
struct RequestReport {
    /// Callbacks being handled now (at most server.max_in_flight).
    in_flight: usize,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    /// Refused requests that could not be callbacks (not a POST), by reason.
    other_refused: BTreeMap<&'static str, u64>,
    /// Requests for other webhook commands, by command.
    unknown_commands: BTreeMap<String, u64>,
    /// Refusals not logged at WARN because of the rate limit (20 lines a second).
    refusals_not_logged: u64,
    /// When the last accepted message arrived, in ms since the epoch.
    last_accepted_at: Option<i64>,
}

#[derive(Serialize)]
struct SinkReport {
    /// running; retrying (a local sink whose last delivery failed); degraded (a
    /// remote sink whose target is down: the journal holds its records); stopped.
    state: &'static str,
    /// The next journal record it will deliver.
    position: u64,
    /// Records written to the journal and not yet delivered by this sink.
    lag_records: u64,
    /// Age of the oldest of those, in seconds.
    lag_seconds: f64,
    /// At its recent delivery rate, seconds until it has caught up (a rewind
    /// or a catch-up after an outage); 0 when caught up, null with no rate yet.
    catch_up_seconds: Option<f64>,
    /// handled, failed, filtered, skipped, damaged: [`SinkStatus::record_counts`].
    ///
    /// [`SinkStatus::record_counts`]: crate::sinks::SinkStatus::record_counts
    #[serde(flatten)]
    records: std::collections::BTreeMap<&'static str, u64>,
    retries: u64,
    panics: u64,
    /// Its last attempt to save its position (cursor or snapshot) failed.
    save_failing: bool,
    /// Records it gave up on, kept until retried or dropped (`/sinks/<name>/dead-letters`).
    dead_letters: usize,
    last_error: Option<String>,
}

pub async fn stats(State(state): State<AppState>) -> Json<impl Serialize> {
    let requests = &state.requests;
    let rejected = Rejection::ALL
        .iter()
        .map(|rejection| (rejection.as_str(), requests.rejected(*rejection)))
        .filter(|(_, count)| *count > 0)
        .collect();
    let other_refused = Rejection::ALL
        .iter()
        .map(|rejection| (rejection.as_str(), requests.other_refused(*rejection)))
        .filter(|(_, count)| *count > 0)
        .collect();
    let sinks = state
        .sinks
        .iter()
        .map(|sink| {
            // Read in the reverse of the order the runner writes (see `SinkStatus`).
            let report = SinkReport {
                position: sink.position(),
                lag_records: sink.lag_records(),
                lag_seconds: sink.lag_seconds(),
                catch_up_seconds: sink.catch_up_seconds(),
                records: sink.record_counts().into_iter().collect(),
                state: sink.state_name(),
                save_failing: sink.save_failing(),
                retries: sink.retries.load(Ordering::Relaxed),
                panics: sink.panics.load(Ordering::Relaxed),
                dead_letters: sink.dead_letters.count(),
                last_error: sink.last_error(),
            };
            (sink.name(), report)
        })
        .collect();
    let counted = match &state.stats {
        Some(stats) => Some(stats.counted().await),
        None => None,
    };
    let (messages, fleet) = counted.map(|counted| (counted.report, counted.fleet)).unwrap_or_default();
    Json(StatsReport {
        scope: if fleet.is_some() { "fleet" } else { "replica" },
        fleet,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: requests.uptime().as_secs(),
        messages,
        requests: RequestReport {
            in_flight: state.in_flight(),
            accepted: requests.accepted(),
            rejected,
            other_refused,
            unknown_commands: requests.unknown_commands().into_iter().collect(),
            refusals_not_logged: state.refusals.not_logged(),
            last_accepted_at: requests.last_accepted_ms(),
        },
        journal: state.journal.report(),
        sinks,
    })
}

/// `GET /stats/daily?from=YYYY-MM-DD&to=YYYY-MM-DD`: per-day counts, newest first.
pub async fn daily(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    let mut bounds = [None, None];
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        let slot = match &*key {
            "from" => 0,
            "to" => 1,
            _ => continue,
        };
        match crate::sinks::stats::daily::parse_date(&value) {
            Some(day) => bounds[slot] = Some(day),
            None => {
                let error = ApiError::InvalidQuery {
                    parameter: format!("{key}={value}"),
                    expected: "a date like 2026-11-27",
                };
                // A refused request like any other: counted by its reason.
                return error.into_response();
            }
        }
    }
    let (days, scope) = match &state.stats {
        Some(stats) => {
            let scope = if stats.fleet().is_some() { "fleet" } else { "replica" };
            (stats.days(bounds[0], bounds[1]).await, scope)
        }
        None => (Vec::new(), "replica"),
    };
    Json(serde_json::json!({ "scope": scope, "timezone": state.settings.stats.timezone, "days": days }))
        .into_response()
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = super::metrics::render(&state).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
