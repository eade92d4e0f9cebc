//! Command line: parse arguments, load settings, start telemetry, run.

use clap::{Parser, Subcommand};
use openim_callback_receiver::settings::{EnvSource, Settings};
use openim_callback_receiver::{Receiver, healthcheck, shutdown_signal, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Receives OpenIM's callbackAfterSendSingleMsgCommand webhook, logs and counts every message.
///
/// Settings: built-in defaults, then --config FILE, then OPENIM_CALLBACK__SECTION__KEY
/// environment variables (e.g. OPENIM_CALLBACK__SERVER__LISTEN=0.0.0.0:10006).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML file with settings to override (only the keys you change).
    #[arg(long, value_name = "PATH", global = true)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), EnvSource::Process) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("openim-callback-receiver: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
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
    let _telemetry = telemetry::init(&settings.telemetry);
    // Every connection is a file descriptor: lift the soft limit (often 1024)
    // to the hard limit, so server.max_connections is what bounds them.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let exit = runtime.block_on(serve(settings));
    // A sink stuck in a blocking write must not keep the process alive past
    // its shutdown deadline: its thread ends with the process.
    runtime.shutdown_background();
    exit
}

async fn serve(settings: Settings) -> ExitCode {
    let listen = settings.server.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    // The bound address, not the configured one: port 0 picks a free port.
    let listen = listener.local_addr().unwrap_or(listen);
    let base = settings.callback_base().to_owned();
    let receiver = match Receiver::from_settings(settings) {
        Ok(receiver) => receiver,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, callback_url = %format!("http://{listen}{base}/callbackAfterSendSingleMsgCommand"),
        version = env!("CARGO_PKG_VERSION"), "receiving OpenIM callbacks");
    match receiver.run(listener, shutdown_signal()).await {
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
