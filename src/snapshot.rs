//! One immutable unit of everything a request needs: the config, its compiled route table,
//! upstream clients and issuer key stores. It sits behind one `ArcSwap` and is loaded once per
//! request, so routes, scopes, issuers and upstreams always agree with each other.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::jwks::KeySet;
use crate::auth::jwks::{FetchClient, IssuerKeys};
use crate::auth::verify::Verifier;
use crate::config::Config;
use crate::issuer::BuiltinIssuer;
use crate::metrics::Metrics;
use crate::route::Table;
use crate::upstream::Upstream;

/// What outlives snapshots and is shared by all of them.
pub struct Runtime {
    pub fetch: FetchClient,
    pub metrics: Arc<Metrics>,
}

pub struct Snapshot {
    pub config: Config,
    pub table: Table,
    pub upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    pub issuer: Option<Arc<BuiltinIssuer>>,
    /// TLS for the data-plane listener, built from `[server.tls]`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The settings a reload cannot apply, as the process started with them.
    pub start_only: crate::reload::StartOnly,
}

impl Snapshot {
    /// Compiles a validated config. Upstreams and issuers whose settings did not change are
    /// taken over from `previous`, so they keep their pooled connections and their keys.
    pub fn build(config: Config, previous: Option<&Snapshot>, rt: &Runtime) -> Result<Snapshot, String> {
        let table = Table::build(&config.routes)
            .map_err(|errs| errs.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; "))?;
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let reused = previous.and_then(|p| p.upstreams.iter().find(|old| old.config == *u));
            upstreams.push(match reused {
                Some(old) => Arc::clone(old),
                None => Arc::new(Upstream::new(u.clone()).map_err(|e| format!("upstream {}: {e}", u.name))?),
            });
        }
        let mut issuers = HashMap::with_capacity(config.auth.issuers.len());
        for i in &config.auth.issuers {
            let reused = previous.and_then(|p| {
                p.verifier
                    .issuers()
                    .find(|old| old.config == *i && old.config.source != crate::config::KeySource::Builtin)
            });
            let keys = match reused {
                Some(old) => Arc::clone(old),
                None => IssuerKeys::start(i.clone(), rt.fetch.clone(), Arc::clone(&rt.metrics)),
            };
            issuers.insert(i.issuer.clone(), keys);
        }
        let issuer = match &config.issuer {
            None => None,
            Some(b) => {
                let prev = previous.and_then(|p| p.issuer.as_deref());
                let built = BuiltinIssuer::build(b.clone(), prev)?;
                let jwks = built.jwks().to_string();
                let vc = built.verifier_config();
                let keys =
                    KeySet::parse(jwks.as_bytes(), &vc.algorithms).map_err(|e| format!("built-in issuer keys: {e}"))?;
                let (built, keys) = (Arc::new(built), IssuerKeys::fixed(vc, keys));
                // Retired keys stop verifying when they leave the published JWKS.
                crate::issuer::withdraw_retired_keys(&built, &keys);
                issuers.insert(keys.config.issuer.clone(), keys);
                Some(built)
            }
        };
        let verifier = Verifier::new(issuers, config.auth.leeway, config.auth.cache_entries, Arc::clone(&rt.metrics));
        let tls = match &config.server.tls {
            None => None,
            Some(t) => Some(crate::listener::tls_config(t)?),
        };
        let start_only = previous.map_or_else(|| crate::reload::StartOnly::of(&config), |p| p.start_only.clone());
        Ok(Snapshot { config, table, upstreams, verifier, issuer, tls, start_only })
    }

    /// True when every issuer has keys.
    pub fn ready(&self) -> bool {
        self.verifier.issuers().all(|i| i.has_keys())
    }
}
