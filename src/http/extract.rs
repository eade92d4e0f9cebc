//! Checks of the URL and headers, as extractors: the handler only runs once
//! they pass, and each failure is already the right `ApiError`.

use super::AppState;
use super::error::ApiError;
use crate::callbacks::Command;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};

/// The command the URL asks for, one `callbacks.record` lists: in the path
/// (`{base}/<command>`, OpenIM v3.4.2+), in the query (`{base}?command=…`, up
/// to v3.4.0), or in both, agreeing. Checked on the raw URL: the callback
/// routes are static, so axum extracts no path parameters on the hot path.
/// Other query parameters are ignored (`key=` from OpenIM's main branch),
/// except a `contenttype` other than json (the public document's `&contenttype=json`).
#[derive(Debug)]
pub struct CallbackCommand(pub &'static Command);

impl FromRequestParts<AppState> for CallbackCommand {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut from_query = None;
        // form_urlencoded never fails: junk percent-encoding decodes leniently.
        for (key, value) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            match &*key {
                "command" => match state.recorded_command(&value) {
                    Some(command) => from_query = Some(command),
                    None => return Err(state.unknown_command(&value, "query")),
                },
                "contenttype" if !value.eq_ignore_ascii_case("json") => {
                    return Err(ApiError::UnsupportedContentTypeParam { value: value.into_owned() });
                }
                _ => {}
            }
        }
        // The router sends only {base}, {base}/ and {base}/<recorded command> here;
        // other commands in the path have a route of their own.
        let path = parts.uri.path();
        // By bytes: `rfind('/')` goes through the general character searcher.
        let last =
            path.as_bytes().iter().rposition(|&byte| byte == b'/').map_or(path, |slash| &path[slash + 1..]);
        let from_path = state.recorded_command(last);
        match (from_path, from_query) {
            (Some(path), Some(query)) if path != query => Err(state.unknown_command(query.name, "query")),
            (Some(command), _) | (None, Some(command)) => Ok(CallbackCommand(command)),
            (None, None) => Err(ApiError::MissingCommand),
        }
    }
}

/// The `operationID` header's name, as a constant: a lookup by a `&str`
/// parses and hashes the name again on every request.
pub const OPERATION_ID: header::HeaderName = header::HeaderName::from_static("operationid");

/// What a callback's headers say, checked:
/// - a Content-Type, when there is one, says JSON: `application/json` with
///   any parameters, or a `+json` type (a request without one is read as JSON);
/// - a Content-Encoding other than identity (gzip, …) is refused: OpenIM
///   never compresses, and a decompressor would be a way to blow up memory;
/// - the `operationID` header, matched case-insensitively (Go's client
///   writes `Operationid`): `None` when absent or empty (OpenIM v3.7+ always
///   sends it, possibly empty; the body's id is the fallback then);
/// - what they say of the body before it is read ([`DeclaredBody`]).
///
/// Found in one pass over the headers, the first value of each name, as a
/// lookup would give it: five lookups by name cost a callback about 550
/// instructions (callgrind), a hash and a probe each.
#[derive(Debug)]
pub struct CallbackHeaders {
    pub operation_id: Option<String>,
    pub declared: DeclaredBody,
}

/// What the headers say of the body before it is read: its Content-Length,
/// and whether the client waits for "100 Continue" before sending it. Kept
/// apart from the body so that the handler holds the body alone, not the
/// whole request, while it waits for it.
#[derive(Debug, Clone, Copy)]
pub struct DeclaredBody {
    pub length: Option<u64>,
    pub waits_to_send: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for CallbackHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let (mut encoding, mut content_type, mut operation_id, mut length, mut expect) =
            (None, None, None, None, None);
        // Names are stored lowercase: comparing them is case-insensitive.
        for (name, value) in &parts.headers {
            let slot = if name == header::CONTENT_TYPE {
                &mut content_type
            } else if name == header::CONTENT_LENGTH {
                &mut length
            } else if name == OPERATION_ID {
                &mut operation_id
            } else if name == header::CONTENT_ENCODING {
                &mut encoding
            } else if name == header::EXPECT {
                &mut expect
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        check_encoding(encoding)?;
        check_content_type(content_type)?;
        let operation_id = match operation_id {
            None => None,
            Some(value) => {
                let value =
                    std::str::from_utf8(value.as_bytes()).map_err(|_| ApiError::InvalidOperationIdHeader)?;
                let value = value.trim();
                (!value.is_empty()).then(|| value.to_owned())
            }
        };
        let declared = DeclaredBody {
            length: length.and_then(|value| value.to_str().ok()).and_then(|value| value.parse::<u64>().ok()),
            waits_to_send: expect.is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        };
        Ok(CallbackHeaders { operation_id, declared })
    }
}

fn check_encoding(encoding: Option<&HeaderValue>) -> Result<(), ApiError> {
    match encoding {
        Some(encoding) if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") => {
            let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
            Err(ApiError::UnsupportedContentEncoding { encoding })
        }
        _ => Ok(()),
    }
}

fn check_content_type(content_type: Option<&HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = content_type else {
        return Ok(());
    };
    let unsupported = || ApiError::UnsupportedMediaType {
        content_type: String::from_utf8_lossy(value.as_bytes()).into_owned(),
    };
    let text = value.to_str().map_err(|_| unsupported())?;
    // OpenIM's own, `application/json` alone or with parameters, at once.
    const JSON: &[u8] = b"application/json";
    let bytes = text.as_bytes();
    if bytes.get(..JSON.len()).is_some_and(|start| start.eq_ignore_ascii_case(JSON))
        && matches!(bytes.get(JSON.len()), None | Some(b';'))
    {
        return Ok(());
    }
    let essence = text.split(';').next().unwrap_or_default().trim();
    let (kind, subtype) = essence.split_once('/').ok_or_else(unsupported)?;
    let is_json = kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"));
    if is_json { Ok(()) } else { Err(unsupported()) }
}
