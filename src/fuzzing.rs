//! For the fuzz targets (fuzz/): the gateway's own request service over any byte stream, so
//! a target can feed a connection arbitrary bytes without a socket. Not part of the API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::Error;

/// A loaded config and its snapshot, served without a listener.
pub struct InMemory {
    shared: Arc<Shared>,
}

impl InMemory {
    /// Loads the config at `path` as start-up does and waits (at most `keys_wait`) for every
    /// issuer's first keys.
    pub async fn load(path: &Path, keys_wait: Duration) -> Result<InMemory, Error> {
        let config = Config::load(path)?;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).map_err(Error::Metrics)?);
        let fetch = crate::auth::jwks::fetch_client();
        let snapshot = Snapshot::build(config, None, &fetch, &metrics)?;
        futures_util::future::join_all(snapshot.verifier.issuers().map(|i| i.first_attempt(keys_wait))).await;
        Ok(InMemory { shared: Arc::new(Shared::new(snapshot, path.to_owned(), metrics, fetch)) })
    }

    /// True when every issuer has keys.
    pub fn ready(&self) -> bool {
        self.shared.ready()
    }

    /// Serves one connection over `io` with the listener's protocol settings (HTTP/1.1, or
    /// HTTP/2 after its preface), plus HTTP/1 half-close: a client that shuts its side down
    /// still gets the answers to what it sent. Returns when the connection ends.
    pub async fn serve<I>(&self, io: I, remote: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let mut builder = crate::listener::builder(&shared.snapshot.load().config.server);
        builder.http1().half_close(true);
        let info = Arc::new(ConnInfo::new(remote, false));
        let service = service_fn(move |req| Box::pin(proxy::handle(Arc::clone(&shared), Arc::clone(&info), req)));
        let _ = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await;
    }
}
