//! The HTTP relay: every message POSTed to each `[sinks.forward.<name>]`
//! target as OpenIM would have sent it, because OpenIM calls one URL only and
//! never retries.
//!
//! A target gets the original body, `Content-Type: application/json;
//! charset=utf-8` (what OpenIM always sends), the `operationID` header and an
//! `Idempotency-Key` (the serverMsgID), so it can drop a repeat, and the
//! callback's command in `X-OpenIM-Callback-Command` (with `append_command`,
//! in the path too, as OpenIM sends it: a stock business server can sit behind). With a
//! `secret`, each request is signed the Standard Webhooks way: `webhook-id`,
//! `webhook-timestamp`, and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`. A 2xx answer is delivered; anything else, or no
//! answer within `timeout`, fails the batch, which the runner retries with
//! backoff for as long as the journal keeps it.

use super::{Entry, Sink, SinkError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashSet;
use std::time::SystemTime;

crate::sinks::sink_settings! {
    /// One HTTP relay target. Every key but `url` has a default, so a target can
    /// be set from the environment alone: `OPENIM_CALLBACK__SINKS__FORWARD__<NAME>__URL`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct ForwardTarget {
        /// Where every message is POSTed; credentials in it are never shown.
        pub url: crate::settings::Secret,
        /// Signs each request the Standard Webhooks way when set (`whsec_<base64>` or plain text).
        pub secret: crate::settings::Secret,
        /// No answer within this is a failed attempt.
        #[serde(with = "humantime_serde")]
        pub timeout: std::time::Duration,
        /// Requests in flight at once (1 keeps the journal's order).
        pub concurrency: usize,
        /// Most messages taken from the journal at once.
        pub batch_size: usize,
        /// POST to `<url>/<command>` (OpenIM v3.4.2+'s form) instead of `<url>`.
        pub append_command: bool,
    }
}

impl Default for ForwardTarget {
    fn default() -> Self {
        ForwardTarget {
            url: crate::settings::Secret::default(),
            secret: crate::settings::Secret::default(),
            timeout: std::time::Duration::from_secs(10),
            concurrency: 2,
            batch_size: 100,
            append_command: false,
            only: Default::default(),
            start: Default::default(),
            max_attempts: 0,
        }
    }
}

impl ForwardTarget {
    /// The checks of target `name` (`[sinks.forward.<name>]`).
    pub(crate) fn validate(&self, name: &str) -> Result<(), crate::settings::Invalid> {
        use crate::settings::{Invalid, LONGEST, check_count, check_duration};
        let key = |field: &str| format!("sinks.forward.{name}.{field}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(Invalid::new(
                format!("sinks.forward.{name}"),
                "a target's name is letters, digits, _ and -",
            ));
        }
        let url = self.url.expose();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(key("url"), "must start with http:// or https://"));
        }
        if let Some(encoded) = self.secret.expose().strip_prefix("whsec_")
            && BASE64.decode(encoded).is_err()
        {
            let why = "a whsec_ secret is base64 after the prefix, and this one does not decode";
            return Err(Invalid::new(key("secret"), why));
        }
        check_duration(&key("timeout"), self.timeout, LONGEST)?;
        check_count(&key("concurrency"), self.concurrency as u64, 1, 64)?;
        check_count(&key("batch_size"), self.batch_size as u64, 1, 10_000)
    }
}

/// Names the callback's command on every relayed request.
pub const COMMAND_HEADER: &str = "X-OpenIM-Callback-Command";

pub struct ForwardSink {
    name: &'static str,
    url: String,
    /// The URL as logs and `/stats` may show it (no credentials).
    shown_url: String,
    /// The HMAC key, when requests are signed.
    signing_key: Option<Vec<u8>>,
    concurrency: usize,
    /// POST to `<url>/<command>`, as OpenIM v3.4.2+ does.
    append_command: bool,
    client: reqwest::Client,
    /// Records of the batch being retried that the target already took: a
    /// retry sends only the others.
    taken: HashSet<u64>,
}

impl ForwardSink {
    /// The relay to target `name`. Its sink name is `forward.<name>`.
    pub fn new(name: &str, target: &ForwardTarget) -> Result<Self, SinkError> {
        // One TLS implementation in the process: ring, as the server's.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(target.timeout)
            .build()
            .map_err(|error| SinkError::permanent(format!("sinks.forward.{name}: {error}")))?;
        let secret = target.secret.expose();
        let signing_key = (!secret.is_empty()).then(|| signing_key(secret));
        Ok(ForwardSink {
            // Sink names live as long as the process; there is one per configured target.
            name: Box::leak(format!("forward.{name}").into_boxed_str()),
            url: target.url.expose().to_owned(),
            shown_url: target.url.shown().into_owned(),
            signing_key,
            concurrency: target.concurrency,
            append_command: target.append_command,
            client,
            taken: HashSet::new(),
        })
    }

    async fn post(&self, entry: &Entry) -> Result<u64, SinkError> {
        let message = &entry.message;
        let key = header_text(&idempotency_key(entry)).into_owned();
        let command = message.command.name;
        let url = if self.append_command { format!("{}/{command}", self.url) } else { self.url.clone() };
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header("operationID", header_text(&message.operation_id.value).as_ref())
            .header(COMMAND_HEADER, command)
            .header("Idempotency-Key", key.as_str());
        if let Some(signing_key) = &self.signing_key {
            let timestamp = crate::epoch::seconds(SystemTime::now());
            let id = format!("msg_{key}");
            let signature = sign(signing_key, &id, timestamp, &message.raw);
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", format!("v1,{signature}"));
        }
        let answer = request.body(message.raw.clone()).send().await.map_err(|error| {
            // A request that cannot even be built fails the same way on every retry.
            let permanent = error.is_builder();
            // reqwest's text names the URL, credentials and all: ours names it without them.
            let text = format!("{}: {}", self.shown_url, with_causes(&error.without_url()));
            if permanent { SinkError::permanent(text) } else { SinkError::transient(text) }
        })?;
        let status = answer.status();
        if status.is_success() {
            return Ok(entry.seq);
        }
        let error = format!("{} answered {status}", self.shown_url);
        Err(if refuses_for_good(status) { SinkError::permanent(error) } else { SinkError::transient(error) })
    }
}

/// A 4xx says the request itself is wrong, and sending it again will not
/// change that, except for the ones that mean "later": 408 (timeout), 425
/// (too early) and 429 (too many requests). 5xx and anything else may pass.
fn refuses_for_good(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 408 | 425 | 429)
}

/// `text` as a header value: as it is when it is printable ASCII (what OpenIM
/// sends), else percent-encoded (UTF-8, RFC 3986: every byte outside `!`..`~`,
/// and `%` itself). A control character cannot be put in a header at all,
/// and must not stop the record: the body carries the value unchanged.
fn header_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().all(|byte| (b' '..=b'~').contains(&byte)) {
        return text.into();
    }
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded.into()
}

/// An error and its causes on one line: reqwest's own text alone ("error
/// sending request") does not say that the connection was refused.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The key a target deduplicates by (see [`ReceivedMessage::idempotency_key`]),
/// or for a packet without a serverMsgID (OpenIM always sends one) the
/// journal's own record number.
///
/// [`ReceivedMessage::idempotency_key`]: crate::callbacks::ReceivedMessage::idempotency_key
fn idempotency_key(entry: &Entry) -> String {
    let key = entry.message.idempotency_key();
    if key.is_empty() { format!("journal-{}", entry.seq) } else { key }
}

/// Standard Webhooks: a secret `whsec_<base64>` is the base64 of the key
/// (the settings refuse one that does not decode); any other secret is the
/// key's bytes as written.
fn signing_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_").map(|encoded| BASE64.decode(encoded)) {
        Some(Ok(key)) => key,
        _ => secret.as_bytes().to_vec(),
    }
}

/// base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

impl Sink for ForwardSink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn describe(&self) -> String {
        let path = if self.append_command { "/<command>" } else { "" };
        format!("every recorded callback POSTed to {}{path}", self.shown_url)
    }

    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let pending: Vec<&Entry> = batch.iter().filter(|entry| !self.taken.contains(&entry.seq)).collect();
        // `buffered` sends up to `concurrency` at once and yields in order. At the
        // first failure the rest of the batch waits for the retry: with a
        // concurrency of 1 the target sees the messages in journal order.
        let mut sending =
            futures_util::stream::iter(pending).map(|entry| self.post(entry)).buffered(self.concurrency);
        let mut first_error = None;
        let mut taken = Vec::new();
        while let Some(result) = sending.next().await {
            match result {
                Ok(seq) => taken.push(seq),
                Err(error) => {
                    first_error = Some(error);
                    break;
                }
            }
        }
        drop(sending);
        self.taken.extend(taken);
        match first_error {
            None => {
                // The runner may hand over part of a batch (one record at a time
                // after a refusal): forget only what this delivery covers.
                for entry in batch {
                    self.taken.remove(&entry.seq);
                }
                Ok(())
            }
            Some(error) => Err(error),
        }
    }

    /// A target that is down is its own outage: degraded in `/stats`, while
    /// `/readyz` stays 200 and the journal holds the messages.
    fn failures_affect_readiness(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_kept_when_printable_and_percent_encoded_otherwise() {
        assert_eq!(header_text("op-1 a/b"), "op-1 a/b");
        assert_eq!(header_text("bad\u{1}id"), "bad%01id");
        assert_eq!(header_text("100% 你"), "100%25%20%E4%BD%A0");
        for text in ["bad\u{1}id", "line\r\nbreak", "你好", "\u{7f}"] {
            assert!(reqwest::header::HeaderValue::from_str(&header_text(text)).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn only_a_4xx_that_does_not_mean_later_is_for_good() {
        use reqwest::StatusCode;
        for (status, for_good) in [(400, true), (404, true), (422, true), (408, false), (425, false)] {
            assert_eq!(refuses_for_good(StatusCode::from_u16(status).unwrap()), for_good, "{status}");
        }
        for status in [429, 500, 502, 503, 302] {
            assert!(!refuses_for_good(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    #[test]
    fn signatures_match_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
