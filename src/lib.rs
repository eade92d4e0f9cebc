//! openim-callback-receiver: receives OpenIM's `callbackAfterSendSingleMsgCommand`
//! webhook, appends each message to the journal before answering OpenIM's JSON
//! envelope within a deadline, and feeds the enabled sinks (log, stats) from
//! the journal: http → journal → sinks.
//!
//! `main.rs` only parses arguments and calls into this crate; tests build the
//! same [`Receiver`] and run it on a listener of their own.

pub mod callbacks;
pub mod epoch;
pub mod healthcheck;
pub mod http;
pub mod journal;
pub mod journal_cli;
pub mod json_text;
pub mod server;
pub mod settings;
pub mod sinks;
pub mod telemetry;

/// The journal this receiver keeps: of the callbacks it accepted.
pub type MessageJournal = journal::Journal<callbacks::ReceivedMessage>;

use settings::Settings;
use sinks::{SinkSet, StatsHandle};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A receiver ready to serve: settings, running sinks, and the router's state.
pub struct Receiver {
    state: http::AppState,
    sinks: SinkSet,
}

/// How a shutdown went.
#[derive(Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// False when in-flight requests were still running at the shutdown deadline.
    pub requests_finished: bool,
    /// Sinks that had not caught up by the deadline, with the records each had
    /// left (kept in the journal for the next start).
    pub undrained: Vec<(&'static str, u64)>,
}

impl ShutdownReport {
    /// True when every request was answered and every accepted message delivered.
    pub fn is_clean(&self) -> bool {
        self.requests_finished && self.undrained.is_empty()
    }
}

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] journal::OpenError),
    #[error("cannot start the sinks: {0}")]
    Sinks(#[from] std::io::Error),
}

impl Receiver {
    /// The receiver the settings describe: the journal in `journal.dir`, log
    /// records to stdout, stats restored from (and saved to) `stats.snapshot_path`.
    pub fn from_settings(settings: Settings) -> Result<Self, StartError> {
        let journal = MessageJournal::open(&settings.journal)?;
        let (sinks, stats) = SinkSet::from_settings(&settings, journal, telemetry::RecordWriter::stdout())?;
        Ok(Self::with_sinks(settings, sinks, stats))
    }

    /// A receiver with sinks of the caller's choosing (tests add their own).
    pub fn with_sinks(settings: Settings, sinks: SinkSet, stats: Option<StatsHandle>) -> Self {
        let journal = std::sync::Arc::clone(sinks.journal());
        let state = http::AppState::new(settings, journal, sinks.statuses(), stats, sinks.archive().cloned());
        Receiver { state, sinks }
    }

    pub fn state(&self) -> &http::AppState {
        &self.state
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting,
    /// finishes in-flight requests, lets every sink catch up with the journal,
    /// saves their positions and returns; all of that within
    /// `server.shutdown_timeout` of the signal.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ShutdownReport> {
        let Receiver { state, sinks } = self;
        let shutdown_timeout = state.settings.server.shutdown_timeout;
        let tls = server::tls_acceptor(&state.settings.server)?;
        let journal = std::sync::Arc::clone(&state.journal);
        let limits = server::Limits {
            refusals: Some(std::sync::Arc::clone(&state.refusals)),
            ..server::Limits::from_settings(&state.settings)
        };
        // A fleet replica says it is alive while it serves, and leaves the list when it stops.
        let fleet = state.stats.as_ref().and_then(|stats| stats.fleet()).cloned();
        let heartbeat = fleet.clone().map(|view| tokio::spawn(view.heartbeat()));
        let router = http::app(state);
        let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel();
        let serving = server::serve(listener, router, limits, tls, async move {
            shutdown.await;
            tracing::info!(
                "shutting down: no new connections, finishing requests, letting the sinks catch up"
            );
            let _ = signalled_tx.send(Instant::now());
        });
        let mut server = tokio::spawn(serving);
        let deadline = tokio::select! {
            // Biased: a server that ends because it was signalled has sent the signal first.
            biased;
            Ok(signalled_at) = &mut signalled_rx => signalled_at + shutdown_timeout,
            ended = &mut server => {
                ended.map_err(std::io::Error::other)??;
                Instant::now() + shutdown_timeout
            }
        };
        let requests_finished = match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(ended) => matches!(ended, Ok(Ok(()))),
            Err(_) => {
                server.abort();
                false
            }
        };
        if !requests_finished {
            tracing::error!("requests still in flight at the shutdown deadline");
        }
        // The server has ended: nothing more is appended, so each sink drains
        // to the journal's end (or stops at the deadline) and saves its position.
        let undrained = sinks.drain(deadline).await;
        for (sink, left) in &undrained {
            tracing::error!(
                sink,
                records = left,
                "sink did not catch up by the shutdown deadline; its records stay in the journal for the next start"
            );
        }
        journal.close();
        if let (Some(view), Some(heartbeat)) = (fleet, heartbeat) {
            heartbeat.abort();
            view.leave().await;
        }
        Ok(ShutdownReport { requests_finished, undrained })
    }
}

/// Completes on SIGINT (Ctrl-C), SIGTERM (what `docker stop` sends) or
/// SIGHUP (a closed terminal): each is a graceful shutdown.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a SIGTERM that arrives between the start line and the
/// server's first poll is a graceful stop, not the default action's kill.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut handlers: Vec<_> = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
    async move {
        if handlers.is_empty() {
            return std::future::pending().await;
        }
        let received = handlers.iter_mut().map(|handler| Box::pin(handler.recv()));
        futures_util::future::select_all(received).await;
    }
}
