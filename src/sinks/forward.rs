//! The HTTP relay: every message POSTed to each `[sinks.forward.<name>]`
//! target as OpenIM would have sent it, because OpenIM calls one URL only and
//! never retries.
//!
//! A target gets the original body, `Content-Type: application/json;
//! charset=utf-8` (what OpenIM always sends), the `operationID` header and an
//! `Idempotency-Key` (the serverMsgID), so it can drop a repeat. With a
//! `secret`, each request is signed the Standard Webhooks way: `webhook-id`,
//! `webhook-timestamp`, and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`. A 2xx answer is delivered; anything else, or no
//! answer within `timeout`, fails the batch, which the runner retries with
//! backoff for as long as the journal keeps it.

use super::{Entry, Sink, SinkError};
use crate::settings::ForwardTarget;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::time::SystemTime;

pub struct ForwardSink {
    name: &'static str,
    url: String,
    /// The HMAC key, when requests are signed.
    signing_key: Option<Vec<u8>>,
    concurrency: usize,
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
            url: target.url.clone(),
            signing_key,
            concurrency: target.concurrency,
            client,
            taken: HashSet::new(),
        })
    }

    async fn post(&self, entry: &Entry) -> Result<u64, String> {
        let message = &entry.message;
        let key = idempotency_key(entry);
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header("operationID", message.operation_id.value.as_str())
            .header("Idempotency-Key", key.as_str());
        if let Some(signing_key) = &self.signing_key {
            let timestamp =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            let id = format!("msg_{key}");
            let signature = sign(signing_key, &id, timestamp, &message.raw);
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", format!("v1,{signature}"));
        }
        let answer = request.body(message.raw.clone()).send().await.map_err(|error| with_causes(&error))?;
        let status = answer.status();
        if status.is_success() { Ok(entry.seq) } else { Err(format!("{} answered {status}", self.url)) }
    }
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

/// The key a target deduplicates by: the serverMsgID, or for a packet
/// without one (OpenIM always sends it) the journal's own record number.
fn idempotency_key(entry: &Entry) -> String {
    let server_msg_id = &entry.message.packet.server_msg_id;
    if server_msg_id.is_empty() { format!("journal-{}", entry.seq) } else { server_msg_id.clone() }
}

/// Standard Webhooks: a secret `whsec_<base64>` is the base64 of the key;
/// any other secret is the key's bytes as written.
fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
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
                self.taken.clear();
                Ok(())
            }
            Some(error) => Err(SinkError::transient(error)),
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
    fn signatures_match_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
