//! scopegate: a reverse-proxy gateway that checks OAuth 2.0 bearer JWTs against JWKS key sets
//! and a per-route scope table.
//!
//! Request path: [`listener`] -> [`proxy`] -> [`route`] -> [`auth::extract`] ->
//! [`auth::verify`] -> [`auth::scope`] -> [`upstream`]; every refusal is an
//! [`error::Reject`], turned into its answer in one place.

pub mod auth;
pub mod config;
pub mod error;
pub mod listener;
pub mod proxy;
pub mod route;
pub mod snapshot;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::proxy::Shared;
use crate::snapshot::Snapshot;

/// How long start-up waits for every issuer's first key fetch before serving anyway (tokens
/// of an issuer without keys get 503 until its keys arrive).
const FIRST_KEYS_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Error {
    Config(ConfigError),
    /// A config that validated but could not be put to work (TLS set-up and the like).
    Start(String),
    Bind(SocketAddr, std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Start(e) => write!(f, "{e}"),
            Error::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

/// A running gateway.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Loads the config at `path`, binds its listener, waits (bounded) for every issuer's
    /// first key fetch, and serves in the background.
    pub async fn start(path: &Path) -> Result<Server, Error> {
        let config = Config::load(path)?;
        let fetch = auth::jwks::fetch_client();
        let listen = config.server.listen;
        let snapshot = Snapshot::build(config, None, &fetch).map_err(Error::Start)?;
        let first_keys: Vec<_> = snapshot.verifier.issuers().cloned().collect();
        let shared = Arc::new(Shared::new(snapshot));
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Bind(listen, e))?;
        let addr = listener.local_addr().map_err(|e| Error::Bind(listen, e))?;
        futures_util::future::join_all(first_keys.iter().map(|i| i.first_attempt(FIRST_KEYS_WAIT)))
            .await;
        drop(first_keys);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(listener::serve(listener, Arc::clone(&shared), rx));
        tracing::info!(%addr, "scopegate listening");
        Ok(Server {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when config is loaded, every issuer has keys, and the server is not draining.
    pub fn ready(&self) -> bool {
        self.shared.ready()
    }

    /// Stops accepting, lets in-flight requests finish within `shutdown_grace`, then returns.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> Result<(), Error> {
    let server = Server::start(path).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
