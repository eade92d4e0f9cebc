//! Logging: diagnostics of the receiver itself, and the subscriber that
//! formats the log sink's message records.
//!
//! The two are kept apart on purpose. Diagnostics are written from the request
//! path, so they go through a non-blocking writer: a stalled stdout must never
//! stall a request. Message records must never be dropped, so the log sink
//! formats them on its own thread with a writer that blocks; a stalled stdout
//! then only fills that sink's queue, which the request path sees and reports.

use crate::settings::{LogFormat, TelemetrySettings};
use std::io::{BufWriter, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::Dispatch;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, fmt};

/// The tracing target of the log sink's message records.
pub const MESSAGE_TARGET: &str = "message";

/// Keeps the diagnostics writer alive; dropping it flushes what is buffered.
pub struct TelemetryGuard {
    _diagnostics: WorkerGuard,
}

/// `auto` decided: pretty on a terminal, JSON for everything else.
pub fn resolve_format(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    }
}

/// Installs the process-wide subscriber for diagnostics on stdout.
pub fn init(settings: &TelemetrySettings) -> TelemetryGuard {
    let format = resolve_format(settings.format);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // Diagnostics are rare; the default (128,000 lines) preallocates ~4 MiB.
        .buffered_lines_limit(4096)
        .thread_name("log-diagnostics")
        .finish(std::io::stdout());
    // Validated at start-up, so the filter parses.
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Records are the log sink's business; a stray one here would be a duplicate.
    let not_records = filter_fn(|metadata| metadata.target() != MESSAGE_TARGET);
    let ansi = std::io::stdout().is_terminal();
    let layer = formatting_layer(format, writer, ansi).with_filter(not_records).with_filter(filter);
    Registry::default().with(layer).init();
    TelemetryGuard { _diagnostics: guard }
}

/// A dispatcher that formats message records into `writer`, whatever the
/// diagnostics filter says: records are output, not diagnostics.
pub fn message_records(format: LogFormat, writer: RecordWriter) -> Dispatch {
    let only_records = filter_fn(|metadata| metadata.target() == MESSAGE_TARGET);
    let ansi = writer.is_terminal();
    let layer = formatting_layer(resolve_format(format), writer, ansi).with_filter(only_records);
    Dispatch::new(Registry::default().with(layer))
}

/// Where the log sink's records go: a buffer in front of `out`, written out
/// when the sink flushes after each batch, so a burst of records costs one
/// write call instead of one per record.
#[derive(Clone)]
pub struct RecordWriter {
    out: Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>,
    /// Colours are for people at a terminal, never for files or pipes.
    ansi: bool,
}

impl RecordWriter {
    pub fn new(out: impl Write + Send + 'static) -> Self {
        RecordWriter {
            out: Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, Box::new(out)))),
            ansi: false,
        }
    }

    /// Records to the process's stdout, coloured when it is a terminal.
    pub fn stdout() -> Self {
        RecordWriter { ansi: std::io::stdout().is_terminal(), ..Self::new(std::io::stdout()) }
    }

    pub fn is_terminal(&self) -> bool {
        self.ansi
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.lock().flush()
    }

    /// The buffer, for writing one record directly.
    pub fn lock_for_record(&self) -> LockedRecordWriter<'_> {
        LockedRecordWriter(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Box<dyn Write + Send>>> {
        // Only the log sink's thread writes; a panic there leaves bytes, not broken state.
        self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The buffer, locked for one record.
pub struct LockedRecordWriter<'a>(MutexGuard<'a, BufWriter<Box<dyn Write + Send>>>);

impl Write for LockedRecordWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for RecordWriter {
    type Writer = LockedRecordWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedRecordWriter(self.lock())
    }
}

fn formatting_layer<W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty | LogFormat::Auto => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
    }
}
