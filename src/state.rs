//! Process-wide state: what every connection, the admin listener and the reloader share, and
//! what outlives each config snapshot (the metrics, the key-fetch client, draining).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::jwks::FetchClient;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// State shared by every connection of the process.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub metrics: Arc<Metrics>,
    /// The client every issuer's key store fetches with.
    pub fetch: FetchClient,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(snapshot: Snapshot, config_path: PathBuf, metrics: Arc<Metrics>, fetch: FetchClient) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            config_path,
            metrics,
            fetch,
            draining: AtomicBool::new(false),
        }
    }

    /// Builds the snapshot of a newly loaded config, taking over what `previous` can lend it.
    pub fn build(&self, config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        Snapshot::build(config, previous, &self.fetch, &self.metrics)
    }

    /// Ready to take traffic: not draining and every issuer has keys.
    pub fn ready(&self) -> bool {
        !self.is_draining() && self.snapshot.load().ready()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
