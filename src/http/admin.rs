//! The admin endpoints: a sink's dead letters, listed, retried or dropped.
//! They change what sinks deliver, so they answer only loopback unless
//! `auth.token` is set (then only its holders); each call that changes
//! something is logged at INFO with what it did.

use super::AppState;
use super::auth::loopback_or_token;
use super::error::ApiError;
use crate::sinks::SinkStatus;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Json, Response};
use std::sync::Arc;

/// Why the admin endpoints are refused to a caller elsewhere.
const ADMIN: &str = "this endpoint changes what sinks deliver";

/// The running sink `name` (`forward.<target>` for a relay target).
fn sink(state: &AppState, name: &str) -> Result<Arc<SinkStatus>, ApiError> {
    state.sinks.iter().find(|sink| sink.name() == name).cloned().ok_or_else(|| ApiError::UnknownSink {
        name: crate::callbacks::clip(name, 64).to_owned(),
        running: state.sinks.iter().map(|sink| sink.name()).collect::<Vec<_>>().join(", "),
    })
}

/// What a call that changes a sink's dead letters names: the caller, the
/// sink, and `?seq=N` (one dead letter; none: all of them).
struct Change {
    caller: std::net::IpAddr,
    sink: Arc<SinkStatus>,
    seq: Option<u64>,
}

impl Change {
    fn of(state: &AppState, name: &str, request: &Request) -> Result<Self, ApiError> {
        let caller = loopback_or_token(state, request, ADMIN)?;
        let sink = sink(state, name)?;
        let mut seq = None;
        for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()) {
            if key != "seq" {
                return Err(ApiError::InvalidQuery {
                    parameter: key.into_owned(),
                    expected: "seq, or nothing (all)",
                });
            }
            seq = Some(value.parse().map_err(|_| ApiError::InvalidQuery {
                parameter: format!("seq={value}"),
                expected: "a record's sequence number",
            })?);
        }
        Ok(Change { caller, sink, seq })
    }
}

/// `GET /sinks/<name>/dead-letters`.
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    loopback_or_token(&state, &request, ADMIN)?;
    let sink = sink(&state, &name)?;
    Ok(Json(serde_json::json!({ "sink": sink.name(), "dead_letters": sink.dead_letters.list() }))
        .into_response())
}

/// `POST /sinks/<name>/dead-letters/retry[?seq=N]`: each delivered once more.
pub async fn retry(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let Change { caller, sink, seq } = Change::of(&state, &name, &request)?;
    let outcome = sink.retry_dead_letters(seq).await.ok_or_else(|| ApiError::SinkFailing {
        sink: sink.name(),
        error: "the sink has stopped: its dead letters wait for the next start".to_owned(),
    })?;
    tracing::info!(sink = sink.name(), %caller, seq, retried = outcome.retried, delivered = outcome.delivered,
        still_dead = outcome.still_dead, gone = outcome.gone, "dead letters retried");
    Ok(Json(outcome).into_response())
}

/// `DELETE /sinks/<name>/dead-letters[?seq=N]`: given up for good (the journal may delete their records).
pub async fn drop_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let Change { caller, sink, seq } = Change::of(&state, &name, &request)?;
    let dropped = sink.dead_letters.take(seq).map_err(|error| ApiError::JournalWriteFailed {
        detail: format!("rewriting the dead letters' file: {error}"),
    })?;
    let seqs: Vec<u64> = dropped.iter().map(|letter| letter.seq).collect();
    tracing::info!(sink = sink.name(), %caller, ?seqs, "dead letters dropped");
    Ok(Json(serde_json::json!({ "dropped": dropped.len() })).into_response())
}

/// `POST /sinks/<name>/rewind?to=<seq | RFC 3339 time>`: the sink goes back to
/// the first record at or after that point still in the journal and delivers
/// from there again.
pub async fn rewind(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = loopback_or_token(&state, &request, ADMIN)?;
    let sink = sink(&state, &name)?;
    if !sink.rewindable {
        return Err(ApiError::NotRewindable { sink: sink.name() });
    }
    let query = request.uri().query().unwrap_or_default();
    let mut to = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let invalid = || ApiError::InvalidQuery {
            parameter: format!("{key}={value}"),
            expected: "a sequence number, or a UTC time like 2026-12-01T08:00:00Z",
        };
        if key != "to" {
            return Err(ApiError::InvalidQuery { parameter: key.into_owned(), expected: "to" });
        }
        to = Some(match value.parse::<u64>() {
            Ok(seq) => seq,
            Err(_) => {
                let at = crate::epoch::parse_rfc3339(&value).ok_or_else(invalid)?;
                let dir = state.journal.dir().to_owned();
                let first = tokio::task::spawn_blocking(move || {
                    crate::journal::inspect::first_received_at_or_after(&dir, at)
                })
                .await
                .map_err(|_| ApiError::Internal)?
                .map_err(|error| ApiError::JournalWriteFailed {
                    detail: format!("reading the journal: {error}"),
                })?;
                first.unwrap_or(state.journal.written() + 1)
            }
        });
    }
    let to = to.ok_or(ApiError::InvalidQuery {
        parameter: "to".into(),
        expected: "to=<seq or RFC 3339 time>, required",
    })?;
    let from = sink.rewind(to).await.ok_or_else(|| ApiError::SinkFailing {
        sink: sink.name(),
        error: "the sink has stopped".to_owned(),
    })?;
    tracing::info!(sink = sink.name(), %caller, to, from, "sink rewound");
    Ok(Json(serde_json::json!({ "sink": sink.name(), "from": from })).into_response())
}
