//! `GET /messages` (a page of archived messages, as JSON) and
//! `GET /messages/export` (every match, streamed as JSON lines or CSV), over
//! whichever database the SQL archive is in.
//!
//! Message content is private: without `auth.token` these answer only a
//! client on loopback (the address behind a trusted proxy, not the proxy's);
//! with it, only a caller that has the token (the caller check before
//! routing asks for it, as for `/stats`).

use super::AppState;
use super::auth::loopback_or_token;
use super::error::ApiError;
use crate::sinks::sql::search::{ArchivedMessage, Cursor, Query};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;

/// Where the archive is read (and the start of every path that is private to loopback).
pub const MESSAGES_PATH: &str = "/messages";

/// Why `/messages` is refused to a caller elsewhere.
const PRIVATE: &str = "message content is private";

/// Rows a page holds unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Rows an export reads from the database at a time.
const EXPORT_PAGE: usize = 500;

/// `GET /messages.html`: the page to search and browse the archive (it reads `/messages`).
pub async fn page(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    loopback_or_token(&state, &request, PRIVATE)?;
    Ok(super::status_page::self_contained_page(PAGE))
}

const PAGE: &str = include_str!("messages.html");

/// `GET /messages?…`: `{"messages": [...], "next": "<cursor>"}`.
pub async fn find(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    loopback_or_token(&state, &request, PRIVATE)?;
    let uri = request.uri();
    let query = parse_query(uri.query().unwrap_or_default(), Endpoint::Page)?;
    let archive = state.archive.as_ref().ok_or_else(archive_off)?;
    let page = archive.find(&query).await.map_err(archive_failed)?;
    Ok(Json(page).into_response())
}

/// `GET /messages/export?format=jsonl|csv&…`: every message the filters
/// match, read a page at a time and streamed, so memory stays flat however
/// many there are. Logged at INFO: who asked, with which filters, how many rows.
pub async fn export(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let caller = loopback_or_token(&state, &request, PRIVATE)?;
    let query_text = request.uri().query().unwrap_or_default().to_owned();
    let mut format = Format::JsonLines;
    for (key, value) in form_urlencoded::parse(query_text.as_bytes()) {
        if key == "format" {
            format = match &*value {
                "jsonl" => Format::JsonLines,
                "csv" => Format::Csv,
                _ => return Err(invalid(&key, &value, "jsonl or csv")),
            };
        }
    }
    let mut query = parse_query(&query_text, Endpoint::Export)?;
    query.limit = EXPORT_PAGE;
    let archive = state.archive.clone().ok_or_else(archive_off)?;
    // The first page before the answer: a database that is down is a 503, not a cut-off download.
    let first = archive.find(&query).await.map_err(archive_failed)?;
    let mut rows = first.messages.len();
    let mut body = format.header().to_vec();
    format.write(&first.messages, &mut body);
    let mut next = first.next;
    // Two chunks in flight at most: the reader waits while the client reads slowly.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        if sender.send(Ok(Bytes::from(body))).await.is_err() {
            return; // the client went away
        }
        while let Some(cursor) = next.take() {
            query.after = Cursor::decode(&cursor);
            let chunk = match archive.find(&query).await {
                Ok(page) => {
                    rows += page.messages.len();
                    next = page.next;
                    let mut chunk = Vec::new();
                    format.write(&page.messages, &mut chunk);
                    Ok(Bytes::from(chunk))
                }
                Err(error) => {
                    tracing::error!(%error, %caller, rows, "export cut off: the archive stopped answering");
                    Err(std::io::Error::other(error.to_string()))
                }
            };
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                return;
            }
        }
        tracing::info!(%caller, filters = %query_text, rows, "messages exported");
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let filename = format!(
        "messages-{}.{}",
        crate::epoch::rfc3339_micros(std::time::SystemTime::now()).as_str().get(..10).unwrap_or("all"),
        format.extension()
    );
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(format.media_type())),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Clone, Copy)]
enum Format {
    JsonLines,
    Csv,
}

/// The header line of a CSV export: its columns, in order.
const CSV_HEADER: &str = "serverMsgID,conversationID,sendID,recvID,groupID,sessionType,contentType,createTime,\
sendTime,seq,callbackCommand,receivedAt,revoked,revokedAt,revokedBy,text,content\r\n";

/// The columns of a CSV export, in order.
const CSV_COLUMNS: [&str; 17] = [
    "serverMsgID",
    "conversationID",
    "sendID",
    "recvID",
    "groupID",
    "sessionType",
    "contentType",
    "createTime",
    "sendTime",
    "seq",
    "callbackCommand",
    "receivedAt",
    "revoked",
    "revokedAt",
    "revokedBy",
    "text",
    "content",
];

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Format::JsonLines => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::JsonLines => "jsonl",
            Format::Csv => "csv",
        }
    }

    fn header(self) -> &'static [u8] {
        match self {
            Format::JsonLines => b"",
            Format::Csv => CSV_HEADER.as_bytes(),
        }
    }

    fn write(self, messages: &[ArchivedMessage], out: &mut Vec<u8>) {
        for message in messages {
            match self {
                Format::JsonLines => {
                    if serde_json::to_writer(&mut *out, message).is_ok() {
                        out.push(b'\n');
                    }
                }
                Format::Csv => {
                    let numbers = [
                        message.session_type,
                        message.content_type,
                        message.create_time,
                        message.send_time,
                        message.seq,
                    ];
                    let fields: [std::borrow::Cow<'_, str>; 17] = [
                        (&message.server_msg_id).into(),
                        (&message.conversation_id).into(),
                        (&message.send_id).into(),
                        (&message.recv_id).into(),
                        (&message.group_id).into(),
                        numbers[0].to_string().into(),
                        numbers[1].to_string().into(),
                        numbers[2].to_string().into(),
                        numbers[3].to_string().into(),
                        numbers[4].to_string().into(),
                        message.callback_command.into(),
                        (&message.received_at).into(),
                        if message.revoked { "true" } else { "false" }.into(),
                        message.revoked_at.as_deref().unwrap_or_default().into(),
                        message.revoked_by.as_deref().unwrap_or_default().into(),
                        (&message.text).into(),
                        (&message.content).into(),
                    ];
                    debug_assert_eq!(fields.len(), CSV_COLUMNS.len());
                    for (index, field) in fields.iter().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        write_csv_field(field, out);
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line
/// break, its quotes doubled. A text that a spreadsheet would run as a
/// formula (starting with = + - @) is led by a `'`, so opening an export
/// never runs what a message said.
fn write_csv_field(field: &str, out: &mut Vec<u8>) {
    let formula = field.starts_with(['=', '+', '-', '@', '\t', '\r']) && field.parse::<f64>().is_err();
    let quoted = formula || field.contains([',', '"', '\n', '\r']);
    if quoted {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    for byte in field.bytes() {
        if byte == b'"' {
            out.push(b'"');
        }
        out.push(byte);
    }
    if quoted {
        out.push(b'"');
    }
}

fn archive_off() -> ApiError {
    ApiError::ArchiveUnavailable {
        why: "the archive is off (sinks.sql.enabled = false or sinks.sql.url is empty)".to_owned(),
    }
}

fn archive_failed(error: sqlx::Error) -> ApiError {
    ApiError::ArchiveUnavailable { why: format!("the archive did not answer: {error}") }
}

fn invalid(key: &str, value: &str, expected: &'static str) -> ApiError {
    ApiError::InvalidQuery { parameter: format!("{key}={value}"), expected }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Page,
    Export,
}

/// The query string as a [`Query`], or a 400 naming the parameter that is wrong.
fn parse_query(text: &str, endpoint: Endpoint) -> Result<Query, ApiError> {
    let mut query = Query { limit: DEFAULT_LIMIT, ..Query::default() };
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        let owned = || (!value.is_empty()).then(|| value.clone().into_owned());
        match &*key {
            "conversation_id" => query.conversation_id = owned(),
            "user" => query.user = owned(),
            "send_id" => query.send_id = owned(),
            "recv_id" => query.recv_id = owned(),
            "group_id" => query.group_id = owned(),
            "q" => query.text = owned(),
            "content_type" => {
                query.content_type =
                    Some(value.parse().map_err(|_| invalid(&key, &value, "a number, like 101"))?);
            }
            "from" | "to" => {
                let at = parse_time(&value).ok_or_else(|| {
                    invalid(
                        &key,
                        &value,
                        "RFC 3339 (2026-12-01T08:00:00Z, 2026-12-01T16:00:00+08:00) or epoch milliseconds",
                    )
                })?;
                if key == "from" { query.from = Some(at) } else { query.to = Some(at) }
            }
            "order" => {
                query.ascending = match &*value {
                    "asc" => true,
                    "desc" => false,
                    _ => return Err(invalid(&key, &value, "asc or desc")),
                };
            }
            "limit" if endpoint == Endpoint::Page => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| invalid(&key, &value, "a number from 1 to 1000"))?;
            }
            "cursor" if endpoint == Endpoint::Page => {
                query.after = Some(
                    Cursor::decode(&value)
                        .ok_or_else(|| invalid(&key, &value, "the next of an earlier answer"))?,
                );
            }
            "format" if endpoint == Endpoint::Export => {}
            _ => {
                let expected = match endpoint {
                    Endpoint::Page => {
                        "one of conversation_id, user, send_id, recv_id, group_id, content_type, from, to, q, order, limit, cursor"
                    }
                    Endpoint::Export => {
                        "one of conversation_id, user, send_id, recv_id, group_id, content_type, from, to, q, order, format (an export has every match: no limit or cursor)"
                    }
                };
                return Err(ApiError::InvalidQuery { parameter: key.into_owned(), expected });
            }
        }
    }
    Ok(query)
}

/// Epoch milliseconds, or RFC 3339 with `Z` or a `±HH:MM` offset.
fn parse_time(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text.parse().ok();
    }
    crate::epoch::parse_rfc3339(text).map(crate::epoch::millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_milliseconds_or_rfc_3339_in_any_offset() {
        assert_eq!(parse_time("1732675200123"), Some(1_732_675_200_123));
        assert_eq!(parse_time("2024-11-27T02:40:00Z"), Some(1_732_675_200_000));
        assert_eq!(parse_time("2024-11-27T10:40:00+08:00"), Some(1_732_675_200_000));
        assert_eq!(parse_time("2024-11-27T02:40:00.5Z"), Some(1_732_675_200_500));
        for junk in ["", "yesterday", "2024-11-27", "2024-11-27T02:40:00+8"] {
            assert_eq!(parse_time(junk), None, "{junk}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_when_they_must_be_and_formulas_defused() {
        let field = |text: &str| {
            let mut out = Vec::new();
            write_csv_field(text, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("-5"), "-5", "a number stays a number");
    }
}
