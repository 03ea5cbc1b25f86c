//! One immutable unit of everything a request needs: the config, its compiled route table,
//! upstream clients and issuer key stores. It sits behind one `ArcSwap` and is loaded once per
//! request, so routes, scopes, issuers and upstreams always agree with each other.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::jwks::{FetchClient, IssuerKeys};
use crate::auth::verify::Verifier;
use crate::config::Config;
use crate::route::Table;
use crate::upstream::Upstream;

pub struct Snapshot {
    pub config: Config,
    pub table: Table,
    pub upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
}

impl Snapshot {
    /// Compiles a validated config. Upstreams and issuers whose settings did not change are
    /// taken over from `previous`, so they keep their pooled connections and their keys.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        fetch: &FetchClient,
    ) -> Result<Snapshot, String> {
        let table = Table::build(&config.routes).map_err(|errs| {
            errs.into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let reused = previous.and_then(|p| p.upstreams.iter().find(|old| old.config == *u));
            upstreams.push(match reused {
                Some(old) => Arc::clone(old),
                None => Arc::new(
                    Upstream::new(u.clone()).map_err(|e| format!("upstream {}: {e}", u.name))?,
                ),
            });
        }
        let mut issuers = HashMap::with_capacity(config.auth.issuers.len());
        for i in &config.auth.issuers {
            let reused = previous.and_then(|p| p.verifier.issuers().find(|old| old.config == *i));
            let keys = match reused {
                Some(old) => Arc::clone(old),
                None => IssuerKeys::start(i.clone(), fetch.clone()),
            };
            issuers.insert(i.issuer.clone(), keys);
        }
        let verifier = Verifier::new(issuers, config.auth.leeway, config.auth.cache_entries);
        Ok(Snapshot {
            config,
            table,
            upstreams,
            verifier,
        })
    }

    /// True when every issuer has keys.
    pub fn ready(&self) -> bool {
        self.verifier.issuers().all(|i| i.has_keys())
    }
}
