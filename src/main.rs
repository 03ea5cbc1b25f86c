//! The `scopegate` command: argument parsing, logging and the runtime; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scopegate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "scopegate",
    version,
    about = "OAuth 2.0 bearer-JWT reverse-proxy gateway"
)]
struct Cli {
    /// Config file [default: $SCOPEGATE_CONFIG, else ./gateway.toml]
    #[arg(
        long,
        global = true,
        env = "SCOPEGATE_CONFIG",
        default_value = "gateway.toml",
        hide_default_value = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print a summary of listeners, issuers, upstreams and routes
    Check,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match Config::load(&cli.config) {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        None => {
            // The config is read once here to choose the log format; the server reads it again
            // through the same load path it uses for reloads.
            let format = match Config::load(&cli.config) {
                Ok(c) => c.log,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(scopegate::run(&cli.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "scopegate failed");
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
