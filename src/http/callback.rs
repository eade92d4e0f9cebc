//! The callback handler: read, parse, check, append to the journal, answer;
//! all within `server.response_timeout`. The sinks take it from the journal.

use super::AppState;
use super::deadline::within;
use super::error::{self, ApiError, Outcome};
use super::extract::{CallbackCommand, CallbackHeaders, DeclaredBody};
use crate::callbacks::{Callback, Command, MAX_LOGGED_ID_CHARS, OperationId, ReceivedMessage, clip};
use crate::journal::AppendError;
use crate::settings::SyncMode;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// `POST {base}/<command>` and `{base}?command=<command>`, for each recorded
/// command. Every callback that gets this far is timed for `/metrics`.
pub async fn receive(
    State(state): State<AppState>,
    CallbackCommand(command): CallbackCommand,
    CallbackHeaders { operation_id: header_id, declared }: CallbackHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let answer = accept(&state, started, command, header_id, declared, body).await;
    state.requests.request_duration.observe(started.elapsed().as_secs_f64());
    answer
}

/// A callback the fast lane hands over: the handler's extractors run here, on
/// the state this future keeps (through axum's `Handler::call` the state is
/// cloned once more, for the `State` extractor).
pub async fn receive_request(state: AppState, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let command = match CallbackCommand::from_request_parts(&mut parts, &state).await {
        Ok(command) => command,
        Err(rejection) => return rejection.into_response(),
    };
    let headers = match CallbackHeaders::from_request_parts(&mut parts, &state).await {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    receive(State(state), command, headers, body).await.into_response()
}

async fn accept(
    state: &AppState,
    started: Instant,
    command: &'static Command,
    header_id: Option<String>,
    declared: DeclaredBody,
    body: Body,
) -> Result<Response, ApiError> {
    let server = &state.settings.server;
    // Shed load past the limit at once, rather than queue without bound.
    let Ok(_in_flight) = state.in_flight.try_acquire() else {
        return Err(ApiError::Overloaded { limit: server.max_in_flight });
    };
    let deadline = started + server.response_timeout;
    let raw =
        within(deadline, read_body(body, declared, server.max_body_bytes)).await.map_err(|_elapsed| {
            ApiError::DeadlineExceeded { deadline_ms: server.response_timeout.as_millis() }
        })??;
    let callback = command.parse(&raw).map_err(|error| {
        // Another command's packet says so better than by the field it lacks.
        match named_command(&raw) {
            Some(named) if named != command.name => state.unknown_command(&named, "body's callbackCommand"),
            _ => ApiError::InvalidPacket(error),
        }
    })?;
    let named = callback.callback_command();
    if !named.is_empty() && named != command.name {
        return Err(state.unknown_command(named, "body's callbackCommand"));
    }
    let operation_id = choose_operation_id(header_id, &callback, server.require_operation_id)?;
    let received_at = SystemTime::now();
    let message = Arc::new(ReceivedMessage { command, callback, raw, operation_id, received_at });
    append_by(state, &message, deadline).await?;
    state.requests.count(Outcome::Accepted);
    state.requests.accepted_at(message.received_at);
    Ok(error::success())
}

/// Appends the message to the journal, durably as `journal.sync` says, by `deadline`.
/// What is logged here names the message's `operationID` as a field of its own
/// (a request span would carry it too, for 2-3% of the CPU at 64 connections).
async fn append_by(
    state: &AppState,
    message: &Arc<ReceivedMessage>,
    deadline: Instant,
) -> Result<(), ApiError> {
    let refused = |error: AppendError| match error {
        AppendError::Full { max_bytes } => {
            tracing::warn!(
                operationID = clip(&message.operation_id.value, MAX_LOGGED_ID_CHARS),
                max_bytes,
                "message refused: the journal is full (journal.when_full = \"refuse\")"
            );
            ApiError::JournalFull { max_bytes }
        }
        AppendError::Io(_) | AppendError::SyncFailed(_) => {
            tracing::error!(operationID = clip(&message.operation_id.value, MAX_LOGGED_ID_CHARS), %error, "message refused: cannot write the journal");
            ApiError::JournalWriteFailed { detail: error.to_string() }
        }
    };
    // Past the deadline the record is still written (the sinks get it), but
    // the answer must not promise what the disk has not confirmed. A timer is
    // set only when the write or the fdatasync makes this request wait.
    let not_confirmed = |waited_for: &str| {
        tracing::warn!(
            operationID = clip(&message.operation_id.value, MAX_LOGGED_ID_CHARS),
            "message not confirmed: {waited_for} did not finish by the deadline (it stays in the journal)"
        );
        ApiError::DeadlineExceeded { deadline_ms: state.settings.server.response_timeout.as_millis() }
    };
    let seq = within(deadline, state.journal.append(message))
        .await
        .map_err(|_elapsed| not_confirmed("its journal write"))?
        .map_err(refused)?;
    // With sync = "always", the fdatasync that covers it; otherwise at once.
    if state.settings.journal.sync == SyncMode::Os {
        return Ok(());
    }
    let durable = within(deadline, state.journal.durable(seq))
        .await
        .map_err(|_elapsed| not_confirmed("its fdatasync"))?;
    // Its fdatasync failed: the record may not be on the disk, so no 200.
    durable.map_err(refused)
}

/// The whole body, in a buffer of its own exact size (the chunks hyper hands
/// over can be slices of a larger read buffer, which a queued message would
/// otherwise pin). Refused early when Content-Length already says too big.
async fn read_body(mut body: Body, declared: DeclaredBody, limit: usize) -> Result<Bytes, ApiError> {
    if declared.length.is_some_and(|length| length > limit as u64) {
        // A client that asked "Expect: 100-continue" has not sent the body yet:
        // reading it would invite it (hyper answers 100 Continue on the first
        // read), so the 413 goes out unread and the client never sends it.
        if !declared.waits_to_send {
            discard_rest(&mut body, limit).await;
        }
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut buffer = BytesMut::with_capacity(declared.length.map_or(0, |length| length as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ApiError::UnreadableBody { detail: error.to_string() })?;
        let Ok(data) = frame.into_data() else { continue };
        if buffer.len() + data.len() > limit {
            discard_rest(&mut body, limit).await;
            return Err(ApiError::BodyTooLarge { limit });
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

/// Reads and drops what is left of an oversized body, up to four times the
/// limit, so that the client is reading when the 413 goes out instead of
/// meeting a reset connection mid-upload. Past that, the connection is cut.
async fn discard_rest(body: &mut Body, limit: usize) {
    let mut allowance = limit.saturating_mul(4);
    while let Some(Ok(frame)) = body.frame().await {
        let size = frame.data_ref().map_or(0, Bytes::len);
        if size >= allowance {
            return;
        }
        allowance -= size;
    }
}

/// The body's `callbackCommand`, read on its own (for a body its command refused).
fn named_command(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "callbackCommand")]
        callback_command: String,
    }
    let named: Named = serde_json::from_slice(raw).ok()?;
    Some(named.callback_command).filter(|name| !name.is_empty())
}

/// Header first, then the body's `operationID`, then a generated one if allowed.
fn choose_operation_id(
    header_id: Option<String>,
    callback: &Callback,
    required: bool,
) -> Result<OperationId, ApiError> {
    // Blank is no id, in the body as in the header.
    let from_body = || {
        let id = callback.operation_id().trim();
        (!id.is_empty()).then(|| id.to_owned())
    };
    match header_id.or_else(from_body) {
        Some(value) => Ok(OperationId { value, generated: false }),
        None if required => Err(ApiError::MissingOperationId),
        None => Ok(OperationId::generate()),
    }
}
