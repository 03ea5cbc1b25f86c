//! The `scopegate` command: argument parsing, logging and the runtime; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scopegate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "scopegate", version, about = "OAuth 2.0 bearer-JWT reverse-proxy gateway")]
struct Cli {
    /// Config file [default: $SCOPEGATE_CONFIG, else ./gateway.toml]
    #[arg(long, global = true, env = "SCOPEGATE_CONFIG", default_value = "gateway.toml", hide_default_value = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print a summary of listeners, issuers, upstreams and routes
    Check,
    /// Mint an access token with the built-in issuer's key (local development)
    Token {
        /// The client the token is for (must be in [[issuer.clients]])
        #[arg(long)]
        client_id: String,
        /// Space-separated scopes; default: every scope the client is allowed
        #[arg(long)]
        scope: Option<String>,
    },
    /// Read a client secret on stdin and print the hash for `client_secret_hash`
    HashSecret,
    /// Print the JSON Schema of gateway.toml (for editors: taplo, Even Better TOML)
    Schema,
    /// Write a gateway.toml from an API Gateway + Cognito stack (CloudFormation/SAM/CDK template or OpenAPI export)
    Import(scopegate::import::ImportArgs),
    /// What the gateway would answer a request, and why, worked out offline (exit 0 allowed, 1 refused, 2 error)
    Explain(scopegate::explain::ExplainArgs),
}

fn mint(config: &std::path::Path, client_id: &str, scope: Option<&str>) -> Result<String, String> {
    use scopegate::issuer::{BuiltinIssuer, SigningKey};
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let Some(b) = config.issuer else {
        return Err(format!("{}: no [issuer] is configured", config.path.display()));
    };
    let Some(path) = &b.signing_key else {
        return Err(format!(
            "{}: [issuer] has no signing_key; its key is generated in memory at start, so a token minted here would not verify against a running gateway",
            config.path.display()
        ));
    };
    let key = SigningKey::load(path).map_err(|e| format!("signing_key {}: {e}", path.display()))?;
    let issuer = BuiltinIssuer::build(b, Some(key), None)?;
    let client =
        issuer.client(client_id).ok_or_else(|| format!("client {client_id:?} is not in [[issuer.clients]]"))?;
    let scopes = BuiltinIssuer::grant(client, scope)
        .map_err(|_| format!("invalid_scope: client {client_id:?} is not allowed every requested scope"))?;
    issuer.mint(client_id, &scopes)
}

fn hash_stdin() -> Result<String, String> {
    use std::io::Read as _;
    let mut secret = Vec::new();
    std::io::stdin().read_to_end(&mut secret).map_err(|e| e.to_string())?;
    // One trailing newline is how `echo` and editors end input; it is not part of the secret.
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err("the secret on stdin is empty".to_owned());
    }
    scopegate::issuer::hash_secret(&secret)
}

/// Log lines (one access-log line per request) go to stdout through a writer thread: the
/// request path hands its formatted line over a channel instead of making a write(2) per line,
/// and the thread writes whatever has queued up in one go. When the queue is full the request
/// path waits rather than dropping lines. The returned guard writes what is left when dropped.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Bounds the memory a burst of lines can take (about 1 MiB of access-log lines).
        .buffered_lines_limit(4096)
        .thread_name("scopegate-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match scopegate::check::check(&cli.config) {
            Ok(report) => {
                print!("{}", report.summary);
                // Positioned like errors; a config with warnings is still valid (exit 0).
                for w in &report.warnings {
                    eprintln!("{w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Token { client_id, scope }) => match mint(&cli.config, &client_id, scope.as_deref()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::HashSecret) => match hash_stdin() {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Import(args)) => ExitCode::from(scopegate::import::main(&args)),
        Some(Command::Explain(args)) => ExitCode::from(scopegate::explain::main(&cli.config, &args)),
        Some(Command::Schema) => {
            print!("{}", scopegate::config::schema());
            ExitCode::SUCCESS
        }
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
            // Kept until `main` returns, so the last lines are written.
            let _log_guard = init_logging(format);
            // With one CPU to run on (a pinned sidecar, a 1-CPU container limit) a multi-thread
            // scheduler only adds cross-thread wake-ups; the current-thread one does the same
            // work with less.
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let built = if cpus == 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().enable_all().build()
            };
            let rt = match built {
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
