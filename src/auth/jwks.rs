//! Key sets: fetch, parse, `kid -> (key, algorithms)`, refresh, and the unknown-`kid` re-fetch.
//!
//! A key set is parsed and filtered once per load: keys that are not for signatures, `oct`
//! (HMAC) keys, and keys whose algorithm is outside the issuer's allow-list are dropped here, so
//! a request only ever checks a token's `alg` against what the key set allows. The live set sits
//! behind an `ArcSwapOption` and is replaced whole, with a version that changes exactly when its
//! content does: a cached token verified with a key checks that version, and the key's presence
//! when it moved, before it is trusted again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::config::{IssuerConfig, KeyCacheConfig, KeySource};
use crate::metrics::Metrics;

/// Largest JWKS or discovery document accepted.
pub(crate) const MAX_DOCUMENT: usize = 1 << 20;
/// Longest a request waits for an unknown-kid re-fetch before it is answered.
const KID_MISS_WAIT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    Json(String),
    NoUsableKey,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Json(e) => write!(f, "not a JWKS document: {e}"),
            JwksError::NoUsableKey => write!(f, "no usable signing key for the allowed algorithms"),
        }
    }
}

/// One verification key, parsed once per key-set load for each algorithm it may be used with
/// (a subset of the allow-list), so a cache miss pays for the signature check only.
pub struct KeyEntry {
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
    /// The public key bytes the verifiers were parsed from: what makes two entries the same key.
    material: Box<[u8]>,
}

impl KeyEntry {
    /// Same key material for the same algorithms.
    fn same_key(&self, other: &KeyEntry) -> bool {
        self.material == other.material && self.algorithms().eq(other.algorithms())
    }

    pub fn allows(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    /// Checks a JWS signature (base64url, as in the token) over `message` with `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
        let Some((_, key)) = self.verifiers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match URL_SAFE_NO_PAD.decode(signature_b64) {
            Ok(sig) => key.verify_sig(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

fn verification_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use aws_lc_rs::signature as s;
    Some(match alg {
        Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &s::ED25519,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    })
}

fn b64_field(jwk: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()
}

/// DER length octets (X.690 §8.1.3).
fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A DER INTEGER holding the unsigned big-endian `value`.
fn der_uint(out: &mut Vec<u8>, value: &[u8]) {
    let value = &value[value.iter().take_while(|b| **b == 0).count()..];
    let pad = value.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    der_len(out, value.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(value);
}

/// The public key bytes aws-lc-rs parses: RFC 8017 `RSAPublicKey` DER for RSA, the
/// uncompressed SEC1 point for EC, the raw 32 bytes for Ed25519.
fn public_key_bytes(jwk: &serde_json::Value, family: &[Algorithm]) -> Option<Vec<u8>> {
    match family.first()? {
        Algorithm::ES256 | Algorithm::ES384 => {
            let size = if family.first() == Some(&Algorithm::ES256) { 32 } else { 48 };
            let (x, y) = (b64_field(jwk, "x")?, b64_field(jwk, "y")?);
            if x.len() != size || y.len() != size {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Some(point)
        }
        Algorithm::EdDSA => b64_field(jwk, "x").filter(|x| x.len() == 32),
        _ => {
            let (n, e) = (b64_field(jwk, "n")?, b64_field(jwk, "e")?);
            let mut body = Vec::with_capacity(n.len() + e.len() + 16);
            der_uint(&mut body, &n);
            der_uint(&mut body, &e);
            let mut der = vec![0x30];
            der_len(&mut der, body.len());
            der.extend_from_slice(&body);
            Some(der)
        }
    }
}

/// A parsed key set.
#[derive(Default, Clone)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<KeyEntry>>,
    without_kid: Vec<Arc<KeyEntry>>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

fn family_algorithms(jwk: &serde_json::Value) -> &'static [Algorithm] {
    use Algorithm::{EdDSA, ES256, ES384, PS256, PS384, PS512, RS256, RS384, RS512};
    let kty = jwk.get("kty").and_then(|v| v.as_str());
    let crv = jwk.get("crv").and_then(|v| v.as_str());
    match (kty, crv) {
        (Some("RSA"), _) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        (Some("EC"), Some("P-256")) => &[ES256],
        (Some("EC"), Some("P-384")) => &[ES384],
        (Some("OKP"), Some("Ed25519")) => &[EdDSA],
        // `oct` (HMAC secrets) and anything unknown can never verify a token here.
        _ => &[],
    }
}

impl KeySet {
    /// Parses a JWKS document, keeping only keys usable with `allowed`.
    pub fn parse(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
        let raw: RawSet = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
        let mut set = KeySet::default();
        for value in raw.keys {
            if let Some(entry) = Self::entry(&value, allowed) {
                match value.get("kid").and_then(|v| v.as_str()) {
                    Some(kid) => {
                        set.by_kid.entry(kid.to_owned()).or_insert(entry);
                    }
                    None => set.without_kid.push(entry),
                }
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    fn entry(value: &serde_json::Value, allowed: &[Algorithm]) -> Option<Arc<KeyEntry>> {
        if value.get("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let family = family_algorithms(value);
        let algorithms: Vec<Algorithm> = match value.get("alg") {
            // A key that names its algorithm is used with exactly that one.
            Some(alg) => {
                let alg = alg.as_str()?.parse::<Algorithm>().ok()?;
                if family.contains(&alg) && allowed.contains(&alg) {
                    vec![alg]
                } else {
                    return None;
                }
            }
            None => family.iter().copied().filter(|a| allowed.contains(a)).collect(),
        };
        let bytes = public_key_bytes(value, family)?;
        let verifiers: Vec<(Algorithm, ParsedPublicKey)> = algorithms
            .into_iter()
            .filter_map(|alg| Some((alg, ParsedPublicKey::new(verification_algorithm(alg)?, &bytes).ok()?)))
            .collect();
        if verifiers.is_empty() {
            return None;
        }
        Some(Arc::new(KeyEntry { verifiers, material: bytes.into_boxed_slice() }))
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<KeyEntry>> {
        self.by_kid.get(kid)
    }

    /// Every key, for tokens without a `kid`.
    pub fn all(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.by_kid.values().chain(self.without_kid.iter())
    }

    /// True when `key` itself (not merely an equal key) is in this set.
    pub fn holds(&self, key: &Arc<KeyEntry>) -> bool {
        self.all().any(|e| Arc::ptr_eq(e, key))
    }

    /// `self` with every key that `old` holds unchanged (same kid, same key) replaced by
    /// `old`'s entry, so entries survive a reload that did not change them; and whether any
    /// key was added, changed or dropped compared with `old`.
    fn carry_over(mut self, old: &KeySet) -> (KeySet, bool) {
        let mut changed = self.by_kid.len() != old.by_kid.len() || self.without_kid.len() != old.without_kid.len();
        for (kid, entry) in &mut self.by_kid {
            match old.by_kid.get(kid) {
                Some(prev) if prev.same_key(entry) => *entry = Arc::clone(prev),
                _ => changed = true,
            }
        }
        for entry in &mut self.without_kid {
            match old.without_kid.iter().find(|prev| prev.same_key(entry)) {
                Some(prev) => *entry = Arc::clone(prev),
                None => changed = true,
            }
        }
        (self, changed)
    }
}

mod live {
    //! The live key set of one issuer. Its own module so that nothing in `jwks` can replace the
    //! set without going through [`LiveKeys::store`], which keeps the version honest.

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use arc_swap::ArcSwapOption;

    use super::KeySet;

    pub struct LiveKeys {
        set: ArcSwapOption<KeySet>,
        /// Bumped after every store that changed the set's content, never otherwise.
        version: AtomicU64,
        /// Serializes stores, so each compares against the set it replaces.
        store: Mutex<()>,
    }

    impl LiveKeys {
        pub fn new(set: Option<KeySet>) -> LiveKeys {
            LiveKeys { set: ArcSwapOption::new(set.map(Arc::new)), version: AtomicU64::new(0), store: Mutex::new(()) }
        }

        pub fn load_full(&self) -> Option<Arc<KeySet>> {
            self.set.load_full()
        }

        pub fn is_some(&self) -> bool {
            self.set.load().is_some()
        }

        pub fn version(&self) -> u64 {
            self.version.load(Ordering::Acquire)
        }

        /// Replaces the set. Keys that did not change keep their entries; a set equal to the
        /// live one leaves everything as it is (the version too, so cached tokens stay valid).
        pub fn store(&self, new: Option<Arc<KeySet>>) {
            let _one_at_a_time = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let old = self.set.load_full();
            let new = match (new, &old) {
                (None, None) => return,
                (None, Some(_)) => None,
                (Some(new), None) => Some(new),
                (Some(new), Some(old)) => {
                    let (merged, changed) = Arc::unwrap_or_clone(new).carry_over(old);
                    if !changed {
                        return;
                    }
                    Some(Arc::new(merged))
                }
            };
            self.set.store(new);
            // After the store: whoever sees the new version also sees the new set.
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

/// The HTTP client used for JWKS and discovery documents.
pub type FetchClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

pub fn fetch_client() -> FetchClient {
    let https = crate::tls::https_connector(&[], Duration::from_secs(5))
        .expect("the system roots alone always make a TLS config");
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

#[derive(Default)]
struct KickState {
    last: Option<Instant>,
    /// The generation that was current when a kid-miss fetch was requested; while the
    /// generation still equals it, that fetch is in flight and newcomers wait for it.
    in_flight: Option<u64>,
}

/// The live keys of one issuer and the task that keeps them fresh.
pub struct IssuerKeys {
    pub config: IssuerConfig,
    /// Where the fetched key set is persisted (`[auth] key_cache_dir`); `None` for a key set
    /// that is not fetched (a file, the built-in issuer's) or when nothing is persisted.
    pub cache: Option<KeyCacheConfig>,
    keys: live::LiveKeys,
    /// Bumped after every fetch attempt, good or bad, and when the refresh task ends.
    generation: watch::Sender<u64>,
    kick: Arc<Notify>,
    kick_state: Mutex<KickState>,
    /// True while a refresh task can still change the keys: false for a fixed set, and once
    /// the task has ended. Nobody waits for a re-fetch that cannot happen.
    refreshing: AtomicBool,
}

impl IssuerKeys {
    /// Creates the issuer's key store and starts its refresh task, which ends when the store
    /// is dropped (the snapshot that held it was replaced by one without this issuer).
    /// The key cache an issuer uses: only a fetched key set (jwks_uri, discovery) is persisted.
    pub fn cache_for(config: &IssuerConfig, cache: Option<&KeyCacheConfig>) -> Option<KeyCacheConfig> {
        let fetched = matches!(config.source, KeySource::Uri(_) | KeySource::Discovery);
        cache.filter(|_| fetched).cloned()
    }

    /// `cache` is used only for a fetched key set (jwks_uri, discovery).
    pub fn start(
        config: IssuerConfig,
        cache: Option<KeyCacheConfig>,
        client: FetchClient,
        metrics: Arc<Metrics>,
    ) -> Arc<IssuerKeys> {
        let this = Arc::new(IssuerKeys {
            cache: Self::cache_for(&config, cache.as_ref()),
            config,
            keys: live::LiveKeys::new(None),
            generation: watch::channel(0).0,
            kick: Arc::new(Notify::new()),
            kick_state: Mutex::new(KickState::default()),
            refreshing: AtomicBool::new(true),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&this), Arc::clone(&this.kick), client, metrics));
        this
    }

    /// A key store whose keys are given, not fetched (the built-in issuer's).
    pub fn fixed(config: IssuerConfig, keys: KeySet) -> Arc<IssuerKeys> {
        Arc::new(IssuerKeys {
            config,
            cache: None,
            keys: live::LiveKeys::new(Some(keys)),
            generation: watch::channel(1).0,
            kick: Arc::new(Notify::new()),
            kick_state: Mutex::new(KickState::default()),
            refreshing: AtomicBool::new(false),
        })
    }

    /// A key store that nothing fetches or refreshes, holding the keys found on disk or none
    /// (`scopegate explain`, which never touches the network).
    pub fn offline(config: IssuerConfig, keys: Option<KeySet>) -> Arc<IssuerKeys> {
        Arc::new(IssuerKeys {
            config,
            cache: None,
            keys: live::LiveKeys::new(keys),
            generation: watch::channel(1).0,
            kick: Arc::new(Notify::new()),
            kick_state: Mutex::new(KickState::default()),
            refreshing: AtomicBool::new(false),
        })
    }

    /// Replaces the keys whole, as a good fetch does; also how the built-in issuer's set
    /// loses a retired key when its publication window ends.
    pub fn replace_keys(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// Changes exactly when the key set's content changes (a key added, replaced or dropped).
    pub fn key_version(&self) -> u64 {
        self.keys.version()
    }

    /// True when `key` is still in the live set.
    pub fn still_holds(&self, key: &Arc<KeyEntry>) -> bool {
        self.keys().is_some_and(|set| set.holds(key))
    }

    /// Re-reads the keys now (a watched `jwks_file` changed).
    pub fn refresh_now(&self) {
        self.kick.notify_one();
    }

    /// Waits until the first fetch attempt has finished, or `limit` passes.
    pub async fn first_attempt(&self, limit: Duration) {
        let mut rx = self.generation.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|g| *g > 0)).await;
    }

    /// Called for a token whose kid is not in the current set. Asks for at most one re-fetch
    /// per `kid_miss_cooldown`; every request that arrives while that fetch is in flight waits
    /// for its result. Returns the key set to look in again, or `None` when no fetch happened.
    ///
    /// A request waits at most for one fetch attempt: the one in progress when it arrives (or
    /// the one it asked for), which wakes it when it ends, good or bad; and never longer than
    /// `KID_MISS_WAIT`. A key set that nothing fetches (the built-in issuer's, or one whose
    /// refresh task has ended) answers at once: waiting cannot bring the kid.
    pub async fn refetch_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        if !self.refreshing.load(Ordering::Acquire) {
            return None;
        }
        let mut rx = self.generation.subscribe();
        let current = *rx.borrow_and_update();
        {
            let mut st = self.kick_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let in_flight = st.in_flight == Some(current);
            if !in_flight {
                let cooling = st.last.is_some_and(|t| t.elapsed() < self.config.kid_miss_cooldown);
                if cooling {
                    return None;
                }
                st.last = Some(Instant::now());
                st.in_flight = Some(current);
                self.kick.notify_one();
            }
        }
        // The refresh task may have ended between the check above and the kick; it bumps the
        // generation when it does, so this wait ends then too.
        let _ = tokio::time::timeout(KID_MISS_WAIT, rx.wait_for(|g| *g != current)).await;
        self.keys()
    }

    /// One fetch; a good answer replaces the keys. Returns the Cache-Control max-age and the
    /// document.
    async fn fetch_once(&self, client: &FetchClient) -> Result<(Option<Duration>, Bytes), String> {
        let (bytes, max_age) = match &self.config.source {
            KeySource::File(path) => {
                let owned = path.clone();
                let read = tokio::task::spawn_blocking(move || crate::files::read_limited(&owned, MAX_DOCUMENT as u64))
                    .await
                    .map_err(|e| e.to_string())?;
                (read.map(Bytes::from).map_err(|e| format!("{}: {e}", path.display()))?, None)
            }
            KeySource::Uri(uri) => get(client, uri).await?,
            KeySource::Builtin => return Err("built-in keys are not fetched".to_owned()),
            KeySource::Discovery => {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
                let (doc, _) = get(client, &url).await?;
                #[derive(Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let d: Discovery =
                    serde_json::from_slice(&doc).map_err(|e| format!("{url}: not an OpenID configuration: {e}"))?;
                get(client, &d.jwks_uri).await?
            }
        };
        let set = KeySet::parse(&bytes, &self.config.algorithms).map_err(|e| e.to_string())?;
        // A good answer replaces the keys whole; a bad one returned early above and the last
        // good keys stay.
        self.replace_keys(set);
        Ok((max_age, bytes))
    }

    /// Serves the persisted key set when there is one young enough; logs why not otherwise.
    /// Returns when the persisted set was fetched.
    async fn load_cached(&self, cache: &KeyCacheConfig) -> Option<SystemTime> {
        let issuer = self.config.issuer.clone();
        let c = cache.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::auth::key_cache::load_jwks(&c, &issuer))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let loaded = loaded.and_then(|l| {
            let set = KeySet::parse(&l.jwks, &self.config.algorithms).map_err(|e| format!("persisted key set: {e}"))?;
            Ok((set, l.age))
        });
        match loaded {
            Ok((set, age)) => {
                tracing::warn!(
                    issuer = %self.config.issuer,
                    keys = set.len(),
                    age = %humantime::format_duration(age),
                    "jwks fetch failed; serving the key set persisted in key_cache_dir until a fetch succeeds"
                );
                self.replace_keys(set);
                Some(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.config.issuer, %reason, "jwks fetch failed and the persisted key set is not used");
                None
            }
        }
    }
}

async fn get(client: &FetchClient, url: &str) -> Result<(Bytes, Option<Duration>), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url}: not a URL"))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(FETCH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let max_age =
        resp.headers().get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).find_map(max_age);
    let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(resp.into_body(), MAX_DOCUMENT).collect())
        .await
        .map_err(|_| format!("{url}: timed out reading the body"))?
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((body.to_bytes(), max_age))
}

/// `max-age=N` from a Cache-Control value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            v.trim().trim_matches('"').parse().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

/// Keeps one issuer's keys fresh: every `refresh` (sooner when Cache-Control max-age says so),
/// at once when kicked by an unknown kid, and with capped exponential backoff plus jitter
/// after a failure. Holds only a weak reference between rounds so a dropped issuer stops it.
async fn refresh_loop(weak: Weak<IssuerKeys>, kick: Arc<Notify>, client: FetchClient, metrics: Arc<Metrics>) {
    const MIN_WAIT: Duration = Duration::from_secs(1);
    /// However the task ends (issuer dropped, task cancelled, a panic), requests stop waiting
    /// for it: the store says nobody refreshes any more, and current waiters are woken.
    struct Ended(Weak<IssuerKeys>);
    impl Drop for Ended {
        fn drop(&mut self) {
            if let Some(this) = self.0.upgrade() {
                this.refreshing.store(false, Ordering::Release);
                this.generation.send_modify(|g| *g += 1);
            }
        }
    }
    let _ended = Ended(weak.clone());
    let mut backoff = MIN_WAIT;
    // The persisted key set is tried once, after the first failed fetch while no keys are held.
    let mut cache_tried = false;
    // When the keys in use came from the key cache: when that set was fetched.
    let mut from_cache: Option<SystemTime> = None;
    loop {
        let wait = {
            let Some(this) = weak.upgrade() else { return };
            let refresh = this.config.refresh.max(MIN_WAIT);
            let wait = match this.fetch_once(&client).await {
                Ok((max_age, document)) => {
                    if let Some(cache) = &this.cache {
                        if from_cache.take().is_some() {
                            tracing::info!(issuer = %this.config.issuer, "jwks fetched; the persisted key set is no longer used");
                        }
                        metrics.jwks_from_cache.with_label_values(&[&this.config.issuer]).set(0);
                        persist(cache, &this.config.issuer, document, &metrics).await;
                    }
                    metrics.jwks_refreshes.with_label_values(&[&this.config.issuer, "ok"]).inc();
                    metrics
                        .jwks_keys
                        .with_label_values(&[&this.config.issuer])
                        .set(this.keys().map_or(0, |k| i64::try_from(k.len()).unwrap_or(i64::MAX)));
                    tracing::debug!(issuer = %this.config.issuer, keys = this.keys().map_or(0, |k| k.len()), "jwks loaded");
                    backoff = MIN_WAIT;
                    max_age.map_or(refresh, |m| m.clamp(MIN_WAIT, refresh))
                }
                Err(error) => {
                    metrics.jwks_refreshes.with_label_values(&[&this.config.issuer, "error"]).inc();
                    // Also before any fetch succeeded: an issuer without keys shows 0, not nothing.
                    metrics
                        .jwks_keys
                        .with_label_values(&[&this.config.issuer])
                        .set(this.keys().map_or(0, |k| i64::try_from(k.len()).unwrap_or(i64::MAX)));
                    tracing::warn!(issuer = %this.config.issuer, %error, have_keys = this.has_keys(), "jwks fetch failed; keeping the last good keys");
                    if let Some(cache) = &this.cache {
                        if !cache_tried && !this.has_keys() {
                            cache_tried = true;
                            from_cache = this.load_cached(cache).await;
                        }
                        // Persisted keys are served up to the maximum age, never longer.
                        let expired = from_cache
                            .is_some_and(|at| SystemTime::now().duration_since(at).unwrap_or_default() > cache.max_age);
                        if expired {
                            tracing::warn!(issuer = %this.config.issuer, "the persisted key set is older than key_cache_max_age; it is no longer served");
                            this.keys.store(None);
                            from_cache = None;
                        }
                        metrics
                            .jwks_from_cache
                            .with_label_values(&[&this.config.issuer])
                            .set(i64::from(from_cache.is_some()));
                        metrics
                            .jwks_keys
                            .with_label_values(&[&this.config.issuer])
                            .set(this.keys().map_or(0, |k| i64::try_from(k.len()).unwrap_or(i64::MAX)));
                    }
                    let cap = refresh.min(Duration::from_secs(60));
                    let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                    let wait = (backoff + jitter).min(cap);
                    backoff = (backoff * 2).min(cap);
                    wait
                }
            };
            this.generation.send_modify(|g| *g += 1);
            wait
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = kick.notified() => {}
        }
    }
}

/// Writes a freshly fetched document to the key cache, off the request path; a failure is
/// logged and counted, never fatal.
async fn persist(cache: &KeyCacheConfig, issuer: &str, document: Bytes, metrics: &Metrics) {
    let (c, iss) = (cache.clone(), issuer.to_owned());
    let written = tokio::task::spawn_blocking(move || crate::auth::key_cache::store_jwks(&c, &iss, &document))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match written {
        Ok(true) => {
            metrics.key_cache_writes.with_label_values(&["ok"]).inc();
            tracing::debug!(%issuer, "jwks persisted to key_cache_dir");
        }
        Ok(false) => {}
        Err(error) => {
            metrics.key_cache_writes.with_label_values(&["error"]).inc();
            tracing::warn!(%issuer, %error, "could not persist the key set to key_cache_dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn drops_what_cannot_verify_here() {
        let doc = format!(
            r#"{{"keys":[{RSA_JWK},
            {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
            {{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}},
            {{"kty":"EC","kid":"e1","crv":"P-256","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
        );
        let rs_only = KeySet::parse(doc.as_bytes(), &[Algorithm::RS256]).unwrap();
        assert_eq!(rs_only.len(), 1);
        assert_eq!(rs_only.get("r1").unwrap().algorithms().collect::<Vec<_>>(), vec![Algorithm::RS256]);
        let both = KeySet::parse(doc.as_bytes(), &[Algorithm::RS256, Algorithm::PS256, Algorithm::ES256]).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both.get("r1").unwrap().algorithms().collect::<Vec<_>>(), vec![Algorithm::RS256, Algorithm::PS256]);
        assert!(both.get("h").is_none() && both.get("enc").is_none());
    }

    #[test]
    fn a_named_alg_outside_the_allow_list_drops_the_key() {
        let doc = RSA_JWK.replace(r#""use":"sig""#, r#""use":"sig","alg":"RS512""#);
        let doc = format!(r#"{{"keys":[{doc}]}}"#);
        assert_eq!(KeySet::parse(doc.as_bytes(), &[Algorithm::RS256]).err(), Some(JwksError::NoUsableKey));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(KeySet::parse(b"<html>", &[Algorithm::RS256]), Err(JwksError::Json(_))));
        assert_eq!(KeySet::parse(br#"{"keys":[]}"#, &[Algorithm::RS256]).err(), Some(JwksError::NoUsableKey));
    }

    #[test]
    fn a_key_set_version_moves_only_when_its_content_does() {
        const EC_JWK: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let algs = [Algorithm::RS256, Algorithm::ES256];
        let set = |keys: &str| KeySet::parse(format!(r#"{{"keys":[{keys}]}}"#).as_bytes(), &algs).unwrap();
        let live = live::LiveKeys::new(Some(set(RSA_JWK)));
        let v0 = live.version();
        let r1 = Arc::clone(live.load_full().unwrap().get("r1").unwrap());

        // The same document again (a refresh that found nothing new): nothing moves.
        live.store(Some(Arc::new(set(RSA_JWK))));
        assert_eq!(live.version(), v0);
        assert!(Arc::ptr_eq(live.load_full().unwrap().get("r1").unwrap(), &r1));

        // A key added: the version moves, the unchanged key keeps its entry.
        live.store(Some(Arc::new(set(&format!("{RSA_JWK},{EC_JWK}")))));
        let v1 = live.version();
        assert_ne!(v1, v0);
        let now = live.load_full().unwrap();
        assert!(now.holds(&r1) && now.get("e1").is_some());

        // Another key under the same kid: the old entry is gone.
        live.store(Some(Arc::new(set(&EC_JWK.replace(r#""e1""#, r#""r1""#)))));
        assert_ne!(live.version(), v1);
        assert!(!live.load_full().unwrap().holds(&r1));
    }

    #[tokio::test]
    async fn a_fixed_key_set_answers_an_unknown_kid_at_once() {
        let cfg = IssuerConfig {
            issuer: "https://fixed.test".to_owned(),
            source: KeySource::Builtin,
            audiences: Vec::new(),
            token_use: None,
            algorithms: vec![Algorithm::RS256],
            refresh: Duration::from_secs(3600),
            kid_miss_cooldown: Duration::from_secs(30),
            at: crate::config::Pos::default(),
        };
        let keys = KeySet::parse(format!(r#"{{"keys":[{RSA_JWK}]}}"#).as_bytes(), &cfg.algorithms).unwrap();
        let issuer = IssuerKeys::fixed(cfg, keys);
        for _ in 0..3 {
            // Ready on its first poll: no wait for a fetch that nothing would make.
            let waited = tokio::time::timeout(Duration::ZERO, issuer.refetch_for_unknown_kid()).await;
            assert!(matches!(waited, Ok(None)));
        }
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=120"), Some(Duration::from_secs(120)));
        assert_eq!(max_age("no-cache"), None);
    }
}
