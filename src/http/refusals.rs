//! Every refused callback leaves a trace: OpenIM never retries, so a refusal
//! is a message lost unless someone looks. Each is logged at WARN with its
//! reason, status, errCode, operationID (when the header had one) and the
//! caller's address; at most [`LINES_PER_SECOND`] a second, so a flood of bad
//! requests cannot fill the disk. What is left out is counted, reported in
//! the next line that gets through, and in `/stats` and `/metrics`.
//!
//! The router marks a refusal on its response ([`Refused`]); the connection,
//! which knows the peer, logs it. So no request pays for carrying its peer
//! address through the router.

use super::error::Rejection;
use crate::callbacks::{MAX_LOGGED_ID_CHARS, clip};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Refusals logged per second at most.
pub const LINES_PER_SECOND: u32 = 20;

#[derive(Debug, Default)]
pub struct RefusalLog {
    window: Mutex<Option<Window>>,
    /// Refusals not logged because of the limit, since start.
    not_logged: AtomicU64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// A refusal, marked on its response for the connection to log.
#[derive(Clone, Debug)]
pub struct Refused {
    pub rejection: Rejection,
    /// The operationID header, when there was one.
    pub operation_id: Option<axum::http::HeaderValue>,
    /// The caller behind trusted proxies, when the router knew it; else the connection's peer.
    pub client: Option<IpAddr>,
}

impl RefusalLog {
    pub fn not_logged(&self) -> u64 {
        self.not_logged.load(Ordering::Relaxed)
    }

    /// Logs `refused` (its caller: the client the router knew, else `peer`)
    /// at WARN, unless this second's lines are used up.
    pub fn log(&self, refused: &Refused, peer: IpAddr) {
        let now = Instant::now();
        let suppressed_before = {
            let mut window = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let current = match window.as_mut() {
                Some(current) if now.duration_since(current.started) < Duration::from_secs(1) => current,
                _ => {
                    let previous = window.take().map_or(0, |previous| previous.suppressed);
                    window.insert(Window { started: now, logged: 0, suppressed: previous })
                }
            };
            if current.logged >= LINES_PER_SECOND {
                current.suppressed += 1;
                self.not_logged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            current.logged += 1;
            std::mem::take(&mut current.suppressed)
        };
        let rejection = refused.rejection;
        let operation_id =
            refused.operation_id.as_ref().map(|value| String::from_utf8_lossy(value.as_bytes()));
        let operation_id = operation_id.as_deref().map(|id| clip(id, MAX_LOGGED_ID_CHARS));
        let peer = refused.client.unwrap_or(peer).to_string();
        tracing::warn!(
            reason = rejection.as_str(),
            status = rejection.status().as_u16(),
            err_code = rejection.err_code(),
            operationID = operation_id,
            peer,
            not_logged_before = (suppressed_before > 0).then_some(suppressed_before),
            "callback refused: OpenIM does not send it again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_twenty_lines_a_second_and_the_rest_counted() {
        let log = RefusalLog::default();
        let refused = Refused {
            rejection: Rejection::InvalidJson,
            operation_id: Some(axum::http::HeaderValue::from_static("op")),
            client: None,
        };
        for _ in 0..100 {
            log.log(&refused, IpAddr::from([127, 0, 0, 1]));
        }
        assert_eq!(log.not_logged(), 100 - u64::from(LINES_PER_SECOND));
    }
}
