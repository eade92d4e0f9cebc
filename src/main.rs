//! Command line: parse arguments, load settings, start telemetry, run.

use clap::{Parser, Subcommand};
use openim_callback_receiver::settings::{self, EnvSource, Settings};
use openim_callback_receiver::{Receiver, healthcheck, shutdown_signal, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Receives OpenIM's callbackAfterSendSingleMsgCommand webhook, logs and counts every message.
///
/// Settings: built-in defaults, then --config FILE (or OPENIM_CALLBACK_CONFIG), then
/// OPENIM_CALLBACK__SECTION__KEY environment variables (e.g. OPENIM_CALLBACK__SERVER__LISTEN=0.0.0.0:10006).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML file with settings to override (only the keys you change). The
    /// healthcheck reads it too, so it probes the address the file sets.
    #[arg(long, value_name = "PATH", global = true, env = "OPENIM_CALLBACK_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Probe the running receiver's /healthz (at server.listen); exit 0 if healthy, 1 if not.
    Healthcheck,
    /// Look inside the journal: read only, for a stopped receiver or beside a running one.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
        /// The journal's directory (default: journal.dir of the settings).
        #[arg(long, value_name = "DIR", global = true)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Segments (sequence numbers, size, times) and each sink's saved position and lag.
    Ls,
    /// Records as JSON lines (packet, operationID, arrival time, command), for jq.
    Cat {
        /// The first record: a sequence number or a UTC time of arrival (2026-12-01T08:00:00Z).
        #[arg(long)]
        from: Option<openim_callback_receiver::journal_cli::Bound>,
        /// The last record, the same way.
        #[arg(long)]
        to: Option<openim_callback_receiver::journal_cli::Bound>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check every record's checksum; exit 0 when clean, 1 when any is damaged.
    Verify,
}

/// `journal …`: its output on stdout; exit 0, or 1 (damage found), or 2 (cannot read).
fn journal(command: JournalCommand, dir: &std::path::Path) -> ExitCode {
    use openim_callback_receiver::journal_cli;
    let mut out = std::io::stdout().lock();
    let done = match command {
        JournalCommand::Ls => journal_cli::ls(dir, &mut out).map(|()| true),
        JournalCommand::Cat { from, to, limit } => {
            journal_cli::cat(dir, from, to, limit, &mut out).map(|()| true)
        }
        JournalCommand::Verify => journal_cli::verify(dir, &mut out),
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => refuse_to_start(format!("cannot read the journal in {}: {error}", dir.display())),
    }
}

/// Every reason the receiver does not start (bad settings, the port taken,
/// the journal in use, …) is one plain line on stderr and exit code 2;
/// failures once it serves are logged and end with exit code 1.
fn refuse_to_start(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("openim-callback-receiver: {why}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), EnvSource::Process) {
        Ok(settings) => settings,
        Err(error) => return refuse_to_start(error),
    };
    if cli.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Journal { command, dir }) = cli.command {
        return journal(command, &dir.unwrap_or(settings.journal.dir));
    }
    if let Some(Command::Healthcheck) = cli.command {
        return match healthcheck::probe(&settings.server, Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("unhealthy: {error}");
                ExitCode::FAILURE
            }
        };
    }
    // The sinks, the accept loop and the timers run here; connections are
    // served on threads of their own (server.worker_threads, see server/threads.rs).
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return refuse_to_start(format!("cannot start the async runtime: {error}")),
    };
    // Bound before logging starts, so that a port in use is a start-up error like any other.
    let listen = settings.server.listen;
    let listener = match runtime.block_on(tokio::net::TcpListener::bind(listen)) {
        Ok(listener) => listener,
        Err(error) => return refuse_to_start(format!("cannot listen on {listen}: {error}")),
    };
    let _telemetry = telemetry::init(&settings.telemetry);
    for variable in
        settings::ignored_variables(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))
    {
        tracing::warn!(
            variable,
            "this environment variable sets nothing: settings are OPENIM_CALLBACK__<SECTION>__<KEY> \
             (two underscores after OPENIM_CALLBACK and between the parts), like OPENIM_CALLBACK__SERVER__LISTEN"
        );
    }
    // Every connection is a file descriptor: lift the soft limit (often 1024)
    // to the hard limit, so server.max_connections is what bounds them.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    let exit = runtime.block_on(serve(settings, listener));
    // A sink stuck in a blocking write must not keep the process alive past
    // its shutdown deadline: its thread ends with the process.
    runtime.shutdown_background();
    exit
}

async fn serve(settings: Settings, listener: tokio::net::TcpListener) -> ExitCode {
    // Before anything is announced: a signal from then on is a graceful stop.
    let shutdown = shutdown_signal();
    let listen = settings.server.listen;
    // The bound address, not the configured one: port 0 picks a free port.
    let listen = listener.local_addr().unwrap_or(listen);
    let base = settings.callback_base().to_owned();
    let receiver = match Receiver::from_settings(settings) {
        Ok(receiver) => receiver,
        Err(error) => return refuse_to_start(format!("cannot start: {error}")),
    };
    tracing::info!(%listen, callback_url = %format!("http://{listen}{base}/callbackAfterSendSingleMsgCommand"),
        version = env!("CARGO_PKG_VERSION"), "receiving OpenIM callbacks");
    match receiver.run(listener, shutdown).await {
        Ok(report) if report.is_clean() => {
            tracing::info!("stopped cleanly: every accepted message delivered");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let behind: Vec<&str> = report.undrained.iter().map(|(sink, _)| *sink).collect();
            tracing::error!(sinks = ?behind, requests_finished = report.requests_finished,
                "stopped with work left: the journal keeps it for the next start");
            ExitCode::FAILURE
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
