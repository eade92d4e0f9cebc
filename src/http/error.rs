//! OpenIM's answer envelope, and every reason a request is refused.
//!
//! OpenIM never looks at the HTTP status, only at the JSON body, and for
//! BEFORE callbacks sharing our base URL a body that is not JSON blocks the
//! user's message. So every answer, errors included, is the envelope.

use crate::callbacks::{AFTER_SEND_SINGLE_MSG, PacketError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}`
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub action_code: i32,
    pub err_code: i32,
    pub err_msg: String,
    pub err_dlt: String,
    pub next_code: i32,
}

/// The success envelope, serialized once.
pub const SUCCESS_BODY: &str = r#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

/// What became of a request. Refusals leave it in the response's extensions
/// for the request counters (see `http::settle_outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected(Rejection),
}

/// Declares [`Rejection`] from one table: each reason's `errCode` (the HTTP
/// status times ten, plus a digit) and its stable snake_case name, for
/// `/stats`, `/metrics` and logs.
macro_rules! rejections {
    ($($variant:ident => $code:literal, $name:literal;)*) => {
        /// Every reason a request is refused. The discriminant indexes the counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Rejection {
            $($variant,)*
        }

        impl Rejection {
            pub const ALL: [Rejection; [$($code),*].len()] = [$(Rejection::$variant),*];

            /// The envelope's `errCode`.
            pub fn err_code(self) -> i32 {
                match self {
                    $(Rejection::$variant => $code,)*
                }
            }

            /// Stable snake_case name, for `/stats` and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Rejection::$variant => $name,)*
                }
            }
        }
    };
}

rejections! {
    UnknownCommand => 4001, "unknown_command";
    MissingCommand => 4002, "missing_command";
    UnsupportedContentTypeParam => 4003, "unsupported_contenttype_param";
    MissingOperationId => 4004, "missing_operation_id";
    InvalidOperationIdHeader => 4005, "invalid_operation_id_header";
    InvalidJson => 4006, "invalid_json";
    EmptyRequiredField => 4007, "empty_required_field";
    UnreadableBody => 4008, "unreadable_body";
    BodyTooLarge => 4130, "body_too_large";
    UnsupportedMediaType => 4150, "unsupported_media_type";
    NotFound => 4040, "not_found";
    MethodNotAllowed => 4050, "method_not_allowed";
    DeadlineExceeded => 5030, "deadline_exceeded";
    JournalFull => 5031, "journal_full";
    SinkFailing => 5032, "sink_failing";
    UnsupportedContentEncoding => 4151, "unsupported_content_encoding";
    Unauthorized => 4010, "unauthorized";
    Forbidden => 4030, "forbidden";
    Overloaded => 5033, "overloaded";
    InvalidQuery => 4009, "invalid_query";
    JournalWriteFailed => 5034, "journal_write_failed";
    Internal => 5000, "internal_error";
    LoopbackOnly => 4031, "loopback_only";
    ArchiveUnavailable => 5035, "archive_unavailable";
    UnknownSink => 4041, "unknown_sink";
    NotRewindable => 4090, "not_rewindable";
}

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self.err_code() / 10 {
            401 => StatusCode::UNAUTHORIZED,
            403 => StatusCode::FORBIDDEN,
            404 => StatusCode::NOT_FOUND,
            405 => StatusCode::METHOD_NOT_ALLOWED,
            409 => StatusCode::CONFLICT,
            413 => StatusCode::PAYLOAD_TOO_LARGE,
            500 => StatusCode::INTERNAL_SERVER_ERROR,
            415 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            503 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A refused request, with what the caller needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the URL, query or body names another webhook command.
    #[error("unknown command {command:?}: this receiver records only the commands callbacks.record lists")]
    UnknownCommand { command: String, source_of: &'static str },
    /// 400: neither the path nor `?command=` names a command.
    #[error(
        "missing command: post to {{base}}/<command> or {{base}}?command=<command>, e.g. {{base}}/{}", AFTER_SEND_SINGLE_MSG.name
    )]
    MissingCommand,
    /// 400: `?contenttype=` other than json.
    #[error("unsupported contenttype {value:?}: only json is accepted")]
    UnsupportedContentTypeParam { value: String },
    /// 400: no operation id in the header or the body.
    #[error("missing operationID: send it in the operationID header or the body")]
    MissingOperationId,
    /// 400: the operationID header is not UTF-8.
    #[error("invalid operationID header: not UTF-8 text")]
    InvalidOperationIdHeader,
    /// 400: the body is not a valid packet.
    #[error("{}", invalid_packet_message(.0))]
    InvalidPacket(PacketError),
    /// 400: the body could not be read (the client broke off).
    #[error("could not read the request body")]
    UnreadableBody { detail: String },
    /// 413: body over `server.max_body_bytes`.
    #[error("request body over the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// 415: a Content-Type that is not JSON.
    #[error("unsupported Content-Type {content_type:?}: send application/json")]
    UnsupportedMediaType { content_type: String },
    /// 404: nothing is served at this path.
    #[error("no route for {path}: callbacks go to {base}/<command>, e.g. {base}/{}", AFTER_SEND_SINGLE_MSG.name)]
    NotFound { path: String, base: String },
    /// 405: the path exists for another method.
    #[error("method {method} not allowed here")]
    MethodNotAllowed { method: String },
    /// 503: the deadline passed before the body had arrived.
    #[error("request not complete within the response deadline of {deadline_ms} ms")]
    DeadlineExceeded { deadline_ms: u128 },
    /// 503: the journal reached `journal.max_bytes` with `journal.when_full = "refuse"`.
    #[error("message not accepted: the journal is full ({max_bytes} bytes) because a sink is behind")]
    JournalFull { max_bytes: u64 },
    /// 503: the journal could not be written (a full or failing disk).
    #[error("message not accepted: the journal cannot be written")]
    JournalWriteFailed { detail: String },
    /// 503 from `/readyz`: a sink's deliveries are failing and being retried.
    #[error("not ready: sink {sink} is failing: {error}")]
    SinkFailing { sink: &'static str, error: String },
    /// 415: a compressed body (OpenIM never compresses what it sends).
    #[error("unsupported Content-Encoding {encoding:?}: send the body uncompressed")]
    UnsupportedContentEncoding { encoding: String },
    /// 401: `auth.token` is set and the request has neither the token segment
    /// nor the bearer token. No detail, on purpose.
    #[error("unauthorized")]
    Unauthorized,
    /// 403: the caller's address is not in `auth.allow_ips`.
    #[error("forbidden: caller {} is not in auth.allow_ips", .caller.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".to_owned()))]
    Forbidden { caller: Option<std::net::IpAddr> },
    /// 503: `server.max_in_flight` requests are being handled already.
    #[error("overloaded: {limit} requests in flight already, try again")]
    Overloaded { limit: usize },
    /// 500: a handler panicked (a bug); the panic is logged at ERROR.
    #[error("internal error: the receiver failed while handling this request (logged)")]
    Internal,
    /// 400: a query parameter of a stats endpoint is not what it takes.
    #[error("invalid query parameter {parameter}: {expected}")]
    InvalidQuery { parameter: String, expected: &'static str },
    /// 403: `/messages` or an admin endpoint from a client not on loopback while `auth.token` is unset.
    #[error("forbidden: {what}; without auth.token set, it answers only loopback (caller {caller})")]
    LoopbackOnly { caller: std::net::IpAddr, what: &'static str },
    /// 409: a rewind of a sink that keeps its position in its own state.
    #[error(
        "sink {sink} cannot be rewound: it counts each record once in its own state (a rewind would count twice); \
         rebuild its counts from zero instead (stop, delete stats.snapshot_path, start)"
    )]
    NotRewindable { sink: &'static str },
    /// 404: no sink of that name runs.
    #[error("no sink {name}: the running ones are {running}")]
    UnknownSink { name: String, running: String },
    /// 503: `/messages` with the archive off, or not answering.
    #[error("archive unavailable: {why}")]
    ArchiveUnavailable { why: String },
}

fn invalid_packet_message(error: &PacketError) -> String {
    match error {
        PacketError::Json { path, .. } if !path.is_empty() => {
            format!("invalid body: field {path} is invalid")
        }
        PacketError::Json { .. } => "invalid body: not a valid callback packet".to_owned(),
        PacketError::EmptyField(field) => format!("invalid body: field {field} must not be empty"),
    }
}

impl ApiError {
    pub fn rejection(&self) -> Rejection {
        match self {
            ApiError::UnknownCommand { .. } => Rejection::UnknownCommand,
            ApiError::MissingCommand => Rejection::MissingCommand,
            ApiError::UnsupportedContentTypeParam { .. } => Rejection::UnsupportedContentTypeParam,
            ApiError::MissingOperationId => Rejection::MissingOperationId,
            ApiError::InvalidOperationIdHeader => Rejection::InvalidOperationIdHeader,
            ApiError::InvalidPacket(PacketError::Json { .. }) => Rejection::InvalidJson,
            ApiError::InvalidPacket(PacketError::EmptyField(_)) => Rejection::EmptyRequiredField,
            ApiError::UnreadableBody { .. } => Rejection::UnreadableBody,
            ApiError::BodyTooLarge { .. } => Rejection::BodyTooLarge,
            ApiError::UnsupportedMediaType { .. } => Rejection::UnsupportedMediaType,
            ApiError::NotFound { .. } => Rejection::NotFound,
            ApiError::MethodNotAllowed { .. } => Rejection::MethodNotAllowed,
            ApiError::DeadlineExceeded { .. } => Rejection::DeadlineExceeded,
            ApiError::JournalFull { .. } => Rejection::JournalFull,
            ApiError::JournalWriteFailed { .. } => Rejection::JournalWriteFailed,
            ApiError::SinkFailing { .. } => Rejection::SinkFailing,
            ApiError::UnsupportedContentEncoding { .. } => Rejection::UnsupportedContentEncoding,
            ApiError::Unauthorized => Rejection::Unauthorized,
            ApiError::Forbidden { .. } => Rejection::Forbidden,
            ApiError::Overloaded { .. } => Rejection::Overloaded,
            ApiError::InvalidQuery { .. } => Rejection::InvalidQuery,
            ApiError::Internal => Rejection::Internal,
            ApiError::LoopbackOnly { .. } => Rejection::LoopbackOnly,
            ApiError::UnknownSink { .. } => Rejection::UnknownSink,
            ApiError::NotRewindable { .. } => Rejection::NotRewindable,
            ApiError::ArchiveUnavailable { .. } => Rejection::ArchiveUnavailable,
        }
    }

    /// The envelope's `errDlt`: the detail behind the one-line message.
    fn detail(&self) -> String {
        match self {
            ApiError::UnknownCommand { source_of, .. } => {
                format!("command taken from the {source_of}")
            }
            ApiError::InvalidPacket(error) => error.to_string(),
            ApiError::UnreadableBody { detail } | ApiError::JournalWriteFailed { detail } => detail.clone(),
            _ => String::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rejection = self.rejection();
        let envelope = Envelope {
            action_code: 1,
            err_code: rejection.err_code(),
            err_msg: self.to_string(),
            err_dlt: self.detail(),
            next_code: 0,
        };
        let body = serde_json::to_string(&envelope).expect("the envelope serializes");
        let mut response = (rejection.status(), json_headers(), body).into_response();
        response.extensions_mut().insert(Outcome::Rejected(rejection));
        response
    }
}

/// The success envelope, HTTP 200. Not marked with an [`Outcome`]: the
/// handler counts its successes itself, sparing every request the allocation
/// of a response extension.
pub fn success() -> Response {
    // Made directly: through IntoResponse a `&str` sets a text/plain type
    // that the JSON header then replaces, two header inserts for one.
    let mut response =
        Response::new(axum::body::Body::from(bytes::Bytes::from_static(SUCCESS_BODY.as_bytes())));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_its_own_code_and_name() {
        let codes: std::collections::HashSet<_> = Rejection::ALL.iter().map(|r| r.err_code()).collect();
        let names: std::collections::HashSet<_> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Rejection::ALL.len());
        assert_eq!(names.len(), Rejection::ALL.len());
        for (index, rejection) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*rejection as usize, index, "ALL is in declaration order");
        }
    }

    #[test]
    fn the_success_body_is_the_envelope_with_zeros() {
        let envelope: serde_json::Value = serde_json::from_str(SUCCESS_BODY).unwrap();
        let zeros = Envelope {
            action_code: 0,
            err_code: 0,
            err_msg: String::new(),
            err_dlt: String::new(),
            next_code: 0,
        };
        assert_eq!(envelope, serde_json::to_value(zeros).unwrap());
    }
}
