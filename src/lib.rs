//! openim-callback-receiver: receives OpenIM's `callbackAfterSendSingleMsgCommand`
//! webhook, hands each message to the enabled sinks (log, stats), and answers
//! OpenIM's JSON envelope within a deadline.
//!
//! `main.rs` only parses arguments and calls into this crate; tests build the
//! same [`Receiver`] and run it on a listener of their own.

pub mod healthcheck;
pub mod http;
pub mod message;
pub mod metrics;
pub mod server;
pub mod settings;
pub mod sinks;
pub mod telemetry;

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
    /// Sinks that had not drained by the deadline, with the messages each had not taken.
    pub undrained: Vec<(&'static str, u64)>,
}

impl ShutdownReport {
    /// True when every request was answered and every accepted message delivered.
    pub fn is_clean(&self) -> bool {
        self.requests_finished && self.undrained.is_empty()
    }
}

impl Receiver {
    /// The receiver the settings describe: log records to stdout, stats restored
    /// from (and saved to) `stats.snapshot_path`.
    pub fn from_settings(settings: Settings) -> std::io::Result<Self> {
        let (sinks, stats) = SinkSet::from_settings(&settings, telemetry::RecordWriter::stdout())?;
        Ok(Self::with_sinks(settings, sinks, stats))
    }

    /// A receiver with sinks of the caller's choosing (tests add their own).
    pub fn with_sinks(settings: Settings, sinks: SinkSet, stats: Option<StatsHandle>) -> Self {
        let state = http::AppState::new(settings, sinks.handles(), stats);
        Receiver { state, sinks }
    }

    pub fn state(&self) -> &http::AppState {
        &self.state
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting,
    /// finishes in-flight requests, drains every sink queue and returns; all
    /// of that within `server.shutdown_timeout` of the signal.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ShutdownReport> {
        let Receiver { state, sinks } = self;
        let shutdown_timeout = state.settings.server.shutdown_timeout;
        let tls = server::tls_acceptor(&state.settings.server)?;
        let snapshots = state.stats.clone().zip(state.settings.stats.snapshot_path().map(ToOwned::to_owned));
        let snapshot_interval = state.settings.stats.snapshot_interval;
        let periodic_snapshots = snapshots.clone().map(|(stats, path)| {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(snapshot_interval);
                every.tick().await;
                loop {
                    every.tick().await;
                    sinks::stats::save_snapshot(&stats, &path).await;
                }
            })
        });
        let limits = server::Limits::from_settings(&state.settings);
        let router = http::app(state);
        let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel();
        let serving = server::serve(listener, router, limits, tls, async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing requests, draining sinks");
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
        // The ended server has dropped the router and its sink handles: the queues
        // close once the last message is taken.
        let undrained = sinks.drain(deadline).await;
        for (sink, left) in &undrained {
            tracing::error!(sink, messages = left, "sink did not drain by the shutdown deadline");
        }
        // Last, once the stats sink has counted every accepted message.
        if let Some(task) = periodic_snapshots {
            task.abort();
        }
        if let Some((stats, path)) = snapshots {
            sinks::stats::save_snapshot(&stats, &path).await;
        }
        Ok(ShutdownReport { requests_finished, undrained })
    }
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
