//! scopegate: a reverse-proxy gateway that checks OAuth 2.0 bearer JWTs against JWKS key sets
//! and a per-route scope table.
//!
//! Request path: [`listener`] -> [`proxy`] -> [`route`] -> [`auth::extract`] ->
//! [`auth::verify`] -> [`auth::scope`] -> [`upstream`]; every refusal is an
//! [`error::Reject`], turned into its answer in one place.

pub(crate) mod admin;
pub mod auth;
pub mod check;
pub mod compat;
pub mod config;
pub mod error;
pub mod explain;
pub(crate) mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod issuer;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod path;
pub(crate) mod pool;
pub mod proxy;
pub(crate) mod reload;
pub mod route;
pub mod snapshot;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// How long start-up waits for every issuer's first key fetch before serving anyway (tokens
/// of an issuer without keys get 503 until its keys arrive).
const FIRST_KEYS_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Error {
    /// The config, or a file it names, is not valid; or it could not be put to work.
    Config(ConfigError),
    /// The metrics could not be registered (a name taken in the registry given).
    Metrics(prometheus::Error),
    Bind(SocketAddr, std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Metrics(e) => write!(f, "cannot register the metrics: {e}"),
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
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener, after the data plane drained: `/readyz` says 503 meanwhile.
    admin_stop: watch::Sender<bool>,
    data: JoinHandle<()>,
    side_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads the config at `path`, binds its listeners, waits (bounded) for every issuer's
    /// first key fetch, and serves in the background until [`Server::shutdown`].
    pub async fn start(path: &Path) -> Result<Server, Error> {
        Server::start_with_registry(path, prometheus::Registry::new()).await
    }

    /// As [`Server::start`], registering the metrics in `registry`.
    pub async fn start_with_registry(path: &Path, registry: prometheus::Registry) -> Result<Server, Error> {
        let config = Config::load(path)?;
        let metrics = Arc::new(Metrics::new(registry).map_err(Error::Metrics)?);
        let fetch = auth::jwks::fetch_client();
        let (listen, admin_listen) = (config.server.listen, config.server.admin_listen);
        let snapshot = Snapshot::build(config, None, &fetch, &metrics)?;
        reload::flag_not_enforcing(&snapshot, None, &metrics);
        let first_keys: Vec<_> = snapshot.verifier.issuers().cloned().collect();
        let shared = Arc::new(Shared::new(snapshot, path.to_owned(), metrics, fetch));
        let listener = TcpListener::bind(listen).await.map_err(|e| Error::Bind(listen, e))?;
        let addr = listener.local_addr().map_err(|e| Error::Bind(listen, e))?;
        let admin = match admin_listen {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|e| Error::Bind(a, e))?),
            None => None,
        };
        let admin_addr = match &admin {
            Some(l) => Some(l.local_addr().map_err(|e| Error::Bind(addr, e))?),
            None => None,
        };
        let (shutdown, rx) = watch::channel(false);
        let (admin_stop, admin_rx) = watch::channel(false);
        let mut side_tasks = Vec::new();
        // The admin listener answers while keys load: /readyz says 503 until they are there.
        if let Some(l) = admin {
            side_tasks.push(tokio::spawn(admin::serve(l, Arc::clone(&shared), admin_rx)));
        }
        futures_util::future::join_all(first_keys.iter().map(|i| i.first_attempt(FIRST_KEYS_WAIT))).await;
        drop(first_keys);
        side_tasks.push(tokio::spawn(reload::watch(Arc::clone(&shared), rx.clone())));
        let data = tokio::spawn(listener::serve(listener, Arc::clone(&shared), rx));
        tracing::info!(%addr, admin = ?admin_addr, config = %path.display(), "scopegate listening");
        Ok(Server { addr, admin_addr, shared, shutdown, admin_stop, data, side_tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// True when config is loaded, every issuer has keys, and the server is not draining.
    pub fn ready(&self) -> bool {
        self.shared.ready()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Re-reads the config now, as SIGHUP does. Returns the problems of a rejected file.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        reload::reload(&self.shared).await
    }

    /// Stops accepting, reports not-ready, lets in-flight requests finish within
    /// `shutdown_grace`, then stops the admin listener and the watchers.
    pub async fn shutdown(self) {
        self.shared.start_draining();
        let _ = self.shutdown.send(true);
        let _ = self.data.await;
        let _ = self.admin_stop.send(true);
        for t in self.side_tasks {
            let _ = t.await;
        }
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
