//! The `smtp-shaper` command line: parse arguments, load the configuration,
//! run the service. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smtp_shaper::Service;
use smtp_shaper::config::Config;

#[derive(Parser)]
#[command(
    name = "smtp-shaper",
    version,
    about = "SMTP proxy sidecar that relays application mail to your gateways, durably"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (without --config: an embedded default on 127.0.0.1:2525
    /// that relays to 127.0.0.1:25 and spools to ./smtp-shaper-spool)
    Run {
        /// TOML configuration file
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and explain every problem in it
    CheckConfig {
        /// TOML configuration file
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!(
                    "{}: {} problem(s):\n{error}",
                    config.display(),
                    error.problems.len()
                );
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match &config {
                Some(path) => Config::load(path),
                None => Ok(Config::embedded_default()),
            };
            let config = match config {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("invalid configuration:\n{error}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.server.worker_threads)
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let service = match Service::start(config).await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!(
        "stop signal received: no new connections; finishing sessions and deliveries in flight"
    );
    service.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// Logs to stderr; `RUST_LOG` (e.g. `info`, `smtp_shaper=debug`) sets the levels.
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}
