//! One immutable unit of everything a request needs: the config, its compiled route table,
//! upstream clients and issuer key stores. It sits behind one `ArcSwap` and is loaded once per
//! request, so routes, scopes, issuers and upstreams always agree with each other.
//!
//! Building one has two steps. [`compile`] reads every file the config names (TLS certificate
//! and key, CA bundles, the signing key, JWKS files) and compiles the route table, each once,
//! reporting problems at the position of the setting; `scopegate check` stops there.
//! [`Snapshot::build`] then puts the result to work: upstream clients, key stores and their
//! refresh tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use crate::auth::jwks::{FetchClient, IssuerKeys, KeySet};
use crate::auth::verify::Verifier;
use crate::config::{Action, Config, ConfigError, Diag, KeySource, LogFormat};
use crate::issuer::{BuiltinIssuer, SigningKey};
use crate::metrics::Metrics;
use crate::route::{CompiledRoute, Table, Target};
use crate::upstream::Upstream;

/// What a config needs from the files it names and from the compilers.
pub(crate) struct Compiled {
    table: Table,
    /// TLS for the data-plane listener, built from `[server.tls]`.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificates of each upstream's `ca_file`, by upstream name.
    ca: HashMap<String, Vec<CertificateDer<'static>>>,
    /// The key `[issuer] signing_key` names.
    signing_key: Option<SigningKey>,
}

/// Reads and compiles what `config` names, each once, and reports every problem found, each at
/// the position of its setting. Starts nothing: no socket, no task, no fetch.
pub(crate) fn compile(config: &Config) -> Result<Compiled, ConfigError> {
    let file = config.path.as_path();
    let mut diags = Vec::new();
    let table = Table::build(&config.routes)
        .map_err(|errs| diags.extend(errs.into_iter().map(|(at, message)| Diag::at(file, at, message))))
        .ok();
    let mut tls = None;
    if let Some(t) = &config.server.tls {
        match crate::tls::tls_config(t) {
            Ok(c) => tls = Some(c),
            Err(e) => diags.push(Diag::at(file, t.at, e)),
        }
    }
    let mut ca = HashMap::new();
    for u in &config.upstreams {
        if let Some(path) = &u.ca_file {
            match crate::tls::read_ca_file(path) {
                Ok(certs) => {
                    ca.insert(u.name.clone(), certs);
                }
                Err(e) => diags.push(Diag::at(file, u.ca_file_at, format!("ca_file {}: {e}", path.display()))),
            }
        }
    }
    // The file's keys are parsed with the issuer's own algorithms: a set with no key usable
    // for them could never verify a token.
    for i in &config.auth.issuers {
        if let KeySource::File(path) = &i.source {
            let parsed = crate::files::read_limited(path, crate::auth::jwks::MAX_DOCUMENT as u64)
                .map_err(|e| e.to_string())
                .and_then(|bytes| KeySet::parse(&bytes, &i.algorithms).map_err(|e| e.to_string()));
            if let Err(e) = parsed {
                diags.push(Diag::at(file, i.at, format!("jwks_file {}: {e}", path.display())));
            }
        }
    }
    let mut signing_key = None;
    if let Some(b) = &config.issuer {
        if let Some(path) = &b.signing_key {
            match SigningKey::load(path) {
                Ok(k) => signing_key = Some(k),
                Err(e) => diags.push(Diag::at(file, b.signing_key_at, format!("signing_key {}: {e}", path.display()))),
            }
        }
    }
    match table {
        Some(table) if diags.is_empty() => Ok(Compiled { table, tls, ca, signing_key }),
        _ => Err(ConfigError(diags)),
    }
}

pub struct Snapshot {
    pub config: Config,
    pub table: Table<CompiledRoute>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    pub issuer: Option<Arc<BuiltinIssuer>>,
    /// TLS for the data-plane listener, built from `[server.tls]`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The settings a reload cannot apply, as the process started with them.
    pub start_only: StartOnly,
    /// Every route's `claims_header`: removed from every forwarded request, in any spelling,
    /// before a route sets its own.
    pub claims_headers: Box<[http::HeaderName]>,
}

/// A problem of the config as a whole, found while putting it to work.
fn unpositioned(config: &Config, message: String) -> ConfigError {
    ConfigError(vec![Diag { file: config.path.clone(), pos: None, message }])
}

/// Where a snapshot's issuers get their keys.
#[derive(Clone, Copy)]
enum KeySupply<'a> {
    /// Fetched, and kept fresh by one task per issuer (the gateway).
    Fetch(&'a FetchClient),
    /// Only what is on disk, read once: no task, no network, no file written.
    Local,
}

/// The built-in issuer's generated key as an earlier start persisted it in `key_cache_dir`,
/// read without writing anything; `None` when there is none (or it is not a key).
pub fn persisted_signing_key(config: &Config) -> Option<SigningKey> {
    let (b, cache) = (config.issuer.as_ref()?, config.auth.key_cache.as_ref()?);
    let text = std::fs::read(crate::auth::key_cache::signing_key_file(&cache.dir, &b.issuer)).ok()?;
    SigningKey::from_pem(&text).ok()
}

/// An issuer's keys as they are on disk: its `jwks_file`, or the set persisted in
/// `key_cache_dir` for a fetched one (if young enough to be served). Never fetched.
fn local_keys(i: &crate::config::IssuerConfig, config: &Config) -> Option<KeySet> {
    let bytes = match &i.source {
        KeySource::File(path) => std::fs::read(path).ok()?,
        KeySource::Uri(_) | KeySource::Discovery => {
            let cache = IssuerKeys::cache_for(i, config.auth.key_cache.as_ref())?;
            crate::auth::key_cache::load_jwks(&cache, &i.issuer).ok()?.jwks
        }
        KeySource::Builtin => return None,
    };
    KeySet::parse(&bytes, &i.algorithms).ok()
}

impl Snapshot {
    /// Compiles a validated config and puts it to work. Upstreams and issuers whose settings
    /// did not change are taken over from `previous`, so they keep their pooled connections and
    /// their keys; new issuers start fetching keys with `fetch`.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        fetch: &FetchClient,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, ConfigError> {
        Snapshot::build_with(config, previous, KeySupply::Fetch(fetch), metrics)
    }

    /// A snapshot for `scopegate explain`: built as [`Snapshot::build`] builds one, but without
    /// any network and without writing a file. Each issuer holds the keys found on disk (its
    /// `jwks_file`, a set persisted in `key_cache_dir`) or none; nothing refreshes them. The
    /// built-in issuer uses its `signing_key`, else the key persisted in `key_cache_dir`, else a
    /// key generated here (which no running gateway shares).
    pub fn offline(config: Config, metrics: &Arc<Metrics>) -> Result<Snapshot, ConfigError> {
        Snapshot::build_with(config, None, KeySupply::Local, metrics)
    }

    fn build_with(
        config: Config,
        previous: Option<&Snapshot>,
        supply: KeySupply<'_>,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, ConfigError> {
        let Compiled { table, tls, ca, signing_key } = compile(&config)?;
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut by_name = HashMap::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let reused = previous.and_then(|p| p.upstreams.iter().find(|old| old.config == *u));
            let upstream = match reused {
                Some(old) => Arc::clone(old),
                None => {
                    let roots = ca.get(&u.name).map_or(&[][..], Vec::as_slice);
                    let built = Upstream::new(u.clone(), roots)
                        .map_err(|e| unpositioned(&config, format!("upstream {}: {e}", u.name)))?;
                    Arc::new(built)
                }
            };
            by_name.insert(u.name.as_str(), Arc::clone(&upstream));
            upstreams.push(upstream);
        }
        let table = table.try_map(|i| {
            let r = &config.routes[i];
            let target = match &r.action {
                Action::Mock(m) => Target::Mock(m.clone()),
                Action::Upstream(name) => match by_name.get(name.as_str()) {
                    Some(u) => Target::Upstream(Arc::clone(u)),
                    None => return Err(unpositioned(&config, format!("upstream {name:?} is not defined"))),
                },
            };
            Ok(CompiledRoute {
                template: r.path.clone(),
                methods: r.methods.clone(),
                auth: r.auth.clone(),
                target,
                claims_header: r.claims_header.clone(),
                enforce: r.enforce,
            })
        })?;
        let mut issuers = HashMap::with_capacity(config.auth.issuers.len());
        for i in &config.auth.issuers {
            let reused = previous.and_then(|p| {
                p.verifier.issuers().find(|old| {
                    old.config == *i
                        && old.config.source != KeySource::Builtin
                        && old.cache == IssuerKeys::cache_for(i, config.auth.key_cache.as_ref())
                })
            });
            let keys = match (reused, supply) {
                (Some(old), _) => Arc::clone(old),
                (None, KeySupply::Fetch(fetch)) => {
                    IssuerKeys::start(i.clone(), config.auth.key_cache.clone(), fetch.clone(), Arc::clone(metrics))
                }
                (None, KeySupply::Local) => IssuerKeys::offline(i.clone(), local_keys(i, &config)),
            };
            issuers.insert(i.issuer.clone(), keys);
        }
        let issuer = match &config.issuer {
            None => None,
            Some(b) => {
                let prev = previous.and_then(|p| p.issuer.as_deref());
                // Without a signing_key, the generated key lives in key_cache_dir when there is
                // one (unless the previous snapshot's generated key is taken over).
                let generated_before = prev.is_some_and(|p| p.config.signing_key.is_none());
                let signing_key = match (signing_key, &config.auth.key_cache) {
                    (None, Some(_)) if matches!(supply, KeySupply::Local) => persisted_signing_key(&config),
                    (None, Some(cache)) if b.signing_key.is_none() && !generated_before => Some(
                        SigningKey::persisted(cache, &b.issuer, metrics)
                            .map_err(|e| unpositioned(&config, format!("built-in issuer: {e}")))?,
                    ),
                    (key, _) => key,
                };
                let built = BuiltinIssuer::build(b.clone(), signing_key, prev)
                    .map_err(|e| unpositioned(&config, format!("built-in issuer: {e}")))?;
                let jwks = built.jwks().to_string();
                let vc = built.verifier_config();
                let keys = KeySet::parse(jwks.as_bytes(), &vc.algorithms)
                    .map_err(|e| unpositioned(&config, format!("built-in issuer keys: {e}")))?;
                let (built, keys) = (Arc::new(built), IssuerKeys::fixed(vc, keys));
                // Retired keys stop verifying when they leave the published JWKS.
                crate::issuer::withdraw_retired_keys(&built, &keys);
                issuers.insert(keys.config.issuer.clone(), keys);
                Some(built)
            }
        };
        let verifier = Verifier::new(issuers, config.auth.leeway, config.auth.cache_entries, Arc::clone(metrics))
            .with_route_token_use(config.server.compat == crate::config::Compat::AwsRest)
            .with_claims(config.routes.iter().any(|r| r.claims_header.is_some()));
        let start_only = previous.map_or_else(|| StartOnly::of(&config), |p| p.start_only.clone());
        let mut claims_headers: Vec<http::HeaderName> =
            config.routes.iter().filter_map(|r| r.claims_header.clone()).collect();
        claims_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        claims_headers.dedup();
        let claims_headers = claims_headers.into_boxed_slice();
        Ok(Snapshot { config, table, upstreams, verifier, issuer, tls, start_only, claims_headers })
    }

    /// True when every issuer has keys.
    pub fn ready(&self) -> bool {
        self.verifier.issuers().all(|i| i.has_keys())
    }
}

/// The settings a reload cannot apply, as the process started with them: the listeners are
/// bound, the connection limit sized, TLS switched on or off, and the log format chosen once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOnly {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    max_connections: usize,
    tls: bool,
    log_format: LogFormat,
}

impl StartOnly {
    pub fn of(config: &Config) -> StartOnly {
        StartOnly {
            listen: config.server.listen,
            admin_listen: config.server.admin_listen,
            max_connections: config.server.max_connections,
            tls: config.server.tls.is_some(),
            log_format: config.log,
        }
    }

    /// Each setting by its key in gateway.toml, with its value as text.
    pub(crate) fn settings(&self) -> [(&'static str, String); 5] {
        let on_off = |on: bool| if on { "on" } else { "off" }.to_owned();
        [
            ("server.listen", self.listen.to_string()),
            ("server.admin_listen", self.admin_listen.map_or_else(|| "(none)".to_owned(), |a| a.to_string())),
            ("server.max_connections", self.max_connections.to_string()),
            ("server.tls", on_off(self.tls)),
            ("log.format", if self.log_format == LogFormat::Json { "json" } else { "text" }.to_owned()),
        ]
    }
}
