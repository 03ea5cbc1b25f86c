//! The built-in OAuth 2.0 client-credentials issuer : `POST /oauth2/token`,
//! `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration`, on the data-plane
//! listener, Cognito-compatible.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, Block};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::jwks::{IssuerKeys, KeySet};
use crate::config::{BuiltinIssuerConfig, ClientConfig, ClientSecret, IssuerConfig, KeyCacheConfig, KeySource, Pos};
use crate::error::{json_response, no_store, Body, Reject, TokenError};
use crate::metrics::Metrics;

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Largest token-request body read.
const MAX_FORM: usize = 16 * 1024;

/// A private key the issuer signs with, and its public half as a JWK.
pub struct SigningKey {
    encoding: EncodingKey,
    pub alg: Algorithm,
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    pub jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, kid {})", self.alg, self.kid)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

impl SigningKey {
    /// Reads a PKCS#8 PEM RSA (RS256) or EC P-256/P-384 (ES256/ES384) private key.
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let text = crate::files::read(path).map_err(|e| e.to_string())?;
        SigningKey::from_pem(&text)
    }

    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
            return SigningKey::new(k, Algorithm::RS256);
        }
        if let Ok(k) = EncodingKey::from_ec_pem(pem) {
            let ec = |alg| SigningKey::new(k.clone(), alg);
            return ec(Algorithm::ES256).or_else(|_| ec(Algorithm::ES384));
        }
        Err("not a PKCS#8 PEM RSA or EC (P-256, P-384) private key".to_owned())
    }

    /// A fresh RSA-2048 key, kept in memory only.
    pub fn generate() -> Result<SigningKey, String> {
        Self::generate_pem().map(|(key, _)| key)
    }

    /// A fresh RSA-2048 key and its PKCS#8 PEM.
    fn generate_pem() -> Result<(SigningKey, String), String> {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| "RSA key generation failed".to_owned())?;
        let der = pair.as_der().map_err(|_| "RSA key encoding failed".to_owned())?;
        let text = pem("PRIVATE KEY", der.as_ref());
        Ok((SigningKey::from_pem(text.as_bytes())?, text))
    }

    /// The generated key of the built-in issuer `issuer`, kept in `cache.dir` (`[auth]
    /// key_cache_dir`): the key persisted there by an earlier start, or a fresh one, written
    /// there as PKCS#8 PEM (mode 0600) for the next start. A file that cannot be read or is not
    /// a key is replaced; a write that fails is logged and counted, and the key is used anyway.
    pub fn persisted(cache: &KeyCacheConfig, issuer: &str, metrics: &Metrics) -> Result<SigningKey, String> {
        let path = crate::auth::key_cache::signing_key_file(&cache.dir, issuer);
        match std::fs::read(&path) {
            Ok(text) => match SigningKey::from_pem(&text) {
                Ok(key) => {
                    tracing::info!(path = %path.display(), kid = %key.kid, "built-in issuer: signing key read from key_cache_dir");
                    return Ok(key);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "built-in issuer: the persisted signing key is not usable; generating a new one");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "built-in issuer: cannot read the persisted signing key; generating a new one");
            }
        }
        let (key, text) = Self::generate_pem()?;
        match crate::auth::key_cache::write_atomic(&cache.dir, &path, text.as_bytes()) {
            Ok(()) => {
                metrics.key_cache_writes.with_label_values(&["ok"]).inc();
                tracing::info!(path = %path.display(), kid = %key.kid, "built-in issuer: generated signing key persisted to key_cache_dir");
            }
            Err(e) => {
                metrics.key_cache_writes.with_label_values(&["error"]).inc();
                tracing::warn!(path = %path.display(), error = %e, "built-in issuer: could not persist the generated signing key; it lasts until the process ends");
            }
        }
        Ok(key)
    }

    fn new(encoding: EncodingKey, alg: Algorithm) -> Result<SigningKey, String> {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| e.to_string())?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        // Proves the key signs before it is trusted to.
        jsonwebtoken::crypto::sign(b"probe", &encoding, alg).map_err(|e| e.to_string())?;
        let jwk = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
        Ok(SigningKey { encoding, alg, kid, jwk })
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Hashes a client secret for `client_secret_hash` (argon2id, random salt, PHC string).
pub fn hash_secret(secret: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(&uuid::Uuid::new_v4().into_bytes()).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(secret, &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Most secret checks running at once, however many cores there are: each holds its hash's
/// working memory (19 MiB with the parameters of `scopegate hash-secret`) and a core, and what
/// is left of both belongs to the traffic the gateway is there for. Clients that authenticated
/// before skip the check, so two slots serve far more token requests than first-time clients
/// ever make.
const MAX_CHECK_SLOTS: usize = 2;
/// How many checks may wait for a free slot, per slot; the rest are refused at once.
const WAITING_PER_SLOT: usize = 4;
/// Longest a check waits for a free slot before its request is refused.
const CHECK_WAIT: Duration = Duration::from_secs(1);
/// The argon2id secret checks of the token endpoint, bounded so that anonymous clients cannot
/// take the process's memory or CPU: at most `slots` run at once, each on a blocking thread
/// with working memory kept for the next check (so a flood does not leave the allocator
/// holding a copy per blocking thread), at most [`WAITING_PER_SLOT`] per slot wait up to
/// [`CHECK_WAIT`] for a turn, and the rest are refused at once. The issuer of each new
/// snapshot takes over its predecessor's, so a reload does not reset the bound.
pub struct SecretChecks {
    slots: Arc<Semaphore>,
    max_waiting: usize,
    waiting: AtomicUsize,
    /// argon2 working memory, one buffer per running check at most.
    memory: Mutex<Vec<Vec<Block>>>,
    /// argon2 runs so far.
    runs: AtomicU64,
}

/// A check slot, held by the blocking task that runs the check.
struct CheckSlot {
    _permit: OwnedSemaphorePermit,
}

/// Leaves the wait queue when the waiting request is answered or dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SecretChecks {
    pub fn new(slots: usize) -> Arc<SecretChecks> {
        SecretChecks::with_queue(slots, slots.max(1) * WAITING_PER_SLOT)
    }

    fn with_queue(slots: usize, max_waiting: usize) -> Arc<SecretChecks> {
        let slots = slots.max(1);
        Arc::new(SecretChecks {
            slots: Arc::new(Semaphore::new(slots)),
            max_waiting,
            waiting: AtomicUsize::new(0),
            memory: Mutex::new(Vec::with_capacity(slots)),
            runs: AtomicU64::new(0),
        })
    }

    /// One slot per core the process may use, at most [`MAX_CHECK_SLOTS`].
    pub fn per_core() -> Arc<SecretChecks> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        SecretChecks::new(cores.min(MAX_CHECK_SLOTS))
    }

    /// argon2 runs so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// A free slot now, or after a short wait in a bounded queue; `None`: busy, refuse.
    async fn admit(&self) -> Option<CheckSlot> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(CheckSlot { _permit: p });
        }
        let queued = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            return None;
        }
        let permit = tokio::time::timeout(CHECK_WAIT, Arc::clone(&self.slots).acquire_owned()).await;
        drop(queued);
        Some(CheckSlot { _permit: permit.ok()?.ok()? })
    }

    /// Runs argon2 for `given` against the PHC string `phc` on a blocking thread that holds
    /// `slot` until it is done (even if the request is dropped meanwhile).
    async fn argon2(self: &Arc<Self>, slot: CheckSlot, phc: String, given: Vec<u8>) -> bool {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            this.runs.fetch_add(1, Ordering::Relaxed);
            let mut memory = this.memory.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
            let ok = argon2_matches(&phc, &given, &mut memory);
            this.memory.lock().unwrap_or_else(PoisonError::into_inner).push(memory);
            ok
        })
        .await
        .unwrap_or(false)
    }
}

/// argon2 verification of `given` against a PHC string, in `memory` (grown as the hash's
/// parameters need). The comparison of the outputs is constant-time.
fn argon2_matches(phc: &str, given: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else { return false };
    let Ok(version) = hash.version.map_or(Ok(argon2::Version::default()), argon2::Version::try_from) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        given,
        salt,
        &mut out,
        &mut memory[..blocks],
    );
    hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A PHC string no secret is known to match, with the parameters of the clients' own hashes
/// (the first one's; without one, those of `scopegate hash-secret`), so that checking a secret
/// against it costs what checking a real client's does.
fn dummy_phc(clients: &[ClientConfig]) -> String {
    let default = format!(
        "$argon2id$v=19$m={},t={},p={}$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        argon2::Params::DEFAULT_M_COST,
        argon2::Params::DEFAULT_T_COST,
        argon2::Params::DEFAULT_P_COST
    );
    let template = clients
        .iter()
        .find_map(|c| match &c.secret {
            ClientSecret::Hash(h) => PasswordHash::new(h).ok().filter(|h| h.salt.is_some() && h.hash.is_some()),
            ClientSecret::Plain(_) => None,
        })
        .or_else(|| PasswordHash::new(&default).ok());
    let Some(mut dummy) = template else { return default };
    let mut random = [0u8; 16 + 64];
    if aws_lc_rs::rand::fill(&mut random).is_err() {
        return default;
    }
    let out_len = dummy.hash.map_or(32, |o| o.len()).min(64);
    let Ok(salt) = SaltString::encode_b64(&random[..16]) else { return default };
    dummy.salt = Some(salt.as_salt());
    dummy.hash = argon2::password_hash::Output::new(&random[16..16 + out_len]).ok();
    dummy.to_string()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// The issuer's endpoints, by normalized path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /oauth2/token`
    Token,
    /// `GET /.well-known/jwks.json`
    Jwks,
    /// `GET /.well-known/openid-configuration`
    Discovery,
}

/// The issuer of one config snapshot.
pub struct BuiltinIssuer {
    pub config: BuiltinIssuerConfig,
    key: Arc<SigningKey>,
    /// Public keys of earlier signing keys, published until the time given.
    retired: Vec<(serde_json::Value, SystemTime)>,
    clients: HashMap<String, ClientConfig>,
    discovery: Bytes,
    /// What unknown clients and plain secrets are checked against with argon2.
    dummy: String,
    /// The bound on secret checks, shared with the issuers of earlier and later snapshots.
    checks: Arc<SecretChecks>,
    /// SHA-256 of the secret each client last authenticated with: a client that already
    /// passed the argon2 check is recognized without it (so it is served while checks are
    /// busy). Only a secret that passed enters, so there is at most one entry per configured
    /// client; the issuer, and with it this map, is rebuilt on every reload.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    token_use: &'static str,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
    version: u8,
}

impl BuiltinIssuer {
    /// Builds the issuer for a new snapshot. The key is taken over from `previous` when the
    /// key source did not change (so a generated key survives reloads); when it did change, the
    /// previous public key stays published for `token_ttl`.
    ///
    /// `key` is the key `config.signing_key` names, read when the snapshot was compiled; `None`
    /// when no signing_key is configured.
    pub fn build(
        config: BuiltinIssuerConfig,
        key: Option<SigningKey>,
        previous: Option<&BuiltinIssuer>,
    ) -> Result<BuiltinIssuer, String> {
        let key = match (key, previous) {
            (None, Some(p)) if p.config.signing_key.is_none() => Arc::clone(&p.key),
            (None, _) => Arc::new(SigningKey::generate()?),
            (Some(k), Some(p)) if p.key.kid == k.kid => Arc::clone(&p.key),
            (Some(k), _) => Arc::new(k),
        };
        let mut retired = Vec::new();
        if let Some(p) = previous {
            let t = now();
            retired.extend(p.retired.iter().filter(|(_, until)| *until > t).cloned());
            if p.key.kid != key.kid {
                retired.push((p.key.jwk.clone(), t + p.config.token_ttl.max(config.token_ttl)));
            }
            retired.retain(|(jwk, _)| jwk.get("kid").and_then(|k| k.as_str()) != Some(key.kid.as_str()));
        }
        let discovery = Bytes::from(
            json!({
                "issuer": config.issuer,
                "token_endpoint": format!("{}{TOKEN_PATH}", config.issuer),
                "jwks_uri": format!("{}{JWKS_PATH}", config.issuer),
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "response_types_supported": ["token"],
                "scopes_supported": config.scopes,
                "id_token_signing_alg_values_supported": [key.alg],
                "token_endpoint_auth_signing_alg_values_supported": [key.alg],
            })
            .to_string(),
        );
        let clients = config.clients.iter().map(|c| (c.client_id.clone(), c.clone())).collect();
        for c in &config.clients {
            if matches!(c.secret, ClientSecret::Plain(_)) {
                tracing::warn!(client_id = %c.client_id, "client uses a plain client_secret; use client_secret_hash from `scopegate hash-secret`");
            }
        }
        let dummy = dummy_phc(&config.clients);
        let checks = previous.map_or_else(SecretChecks::per_core, |p| Arc::clone(&p.checks));
        Ok(BuiltinIssuer { config, key, retired, clients, discovery, dummy, checks, verified: Mutex::default() })
    }

    /// The published key set: the current key and the retired ones still in their window.
    pub fn jwks(&self) -> serde_json::Value {
        let t = now();
        let mut keys = vec![self.key.jwk.clone()];
        keys.extend(self.retired.iter().filter(|(_, until)| *until > t).map(|(j, _)| j.clone()));
        json!({ "keys": keys })
    }

    /// When the next retired key leaves the published set, if any is still in it.
    fn next_withdrawal(&self) -> Option<SystemTime> {
        let t = now();
        self.retired.iter().map(|(_, until)| *until).filter(|until| *until > t).min()
    }

    /// How the verifier sees this issuer: like a JWKS issuer whose keys are fixed.
    pub fn verifier_config(&self) -> IssuerConfig {
        IssuerConfig {
            issuer: self.config.issuer.clone(),
            source: KeySource::Builtin,
            audiences: Vec::new(),
            token_use: Some("access".to_owned()),
            algorithms: self.algorithms(),
            refresh: Duration::from_secs(3600),
            kid_miss_cooldown: Duration::from_secs(30),
            at: Pos::default(),
        }
    }

    /// The current key's algorithm and those of retired keys still published: a token signed
    /// before a rotation to another key type stays valid for its lifetime.
    fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs = vec![self.key.alg];
        let retired = self.retired.iter().filter_map(|(jwk, _)| jwk.get("alg")?.as_str()?.parse::<Algorithm>().ok());
        for alg in retired {
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        algs
    }

    /// Signs an access token for `client_id` with exactly `scopes`.
    pub fn mint(&self, client_id: &str, scopes: &[&str]) -> Result<String, String> {
        let iat = unix(now());
        let claims = AccessClaims {
            iss: &self.config.issuer,
            sub: client_id,
            client_id,
            token_use: "access",
            scope: scopes.join(" "),
            iat,
            exp: iat + self.config.token_ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            version: 2,
        };
        let mut header = Header::new(self.key.alg);
        header.kid = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key.encoding).map_err(|e| e.to_string())
    }

    /// The scopes a token for `client` gets: all it is allowed without `requested`, else the
    /// requested ones, each of which must be allowed.
    pub fn grant<'c>(client: &'c ClientConfig, requested: Option<&str>) -> Result<Vec<&'c str>, TokenError> {
        let requested: Vec<&str> =
            requested.map(|s| s.split(' ').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
        if requested.is_empty() {
            return Ok(client.allowed_scopes.iter().map(String::as_str).collect());
        }
        let mut granted: Vec<&str> = Vec::with_capacity(requested.len());
        for r in requested {
            let allowed = client.allowed_scopes.iter().find(|a| *a == r).ok_or(TokenError::InvalidScope)?;
            if !granted.contains(&allowed.as_str()) {
                granted.push(allowed);
            }
        }
        Ok(granted)
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientConfig> {
        self.clients.get(client_id)
    }

    /// The endpoint a normalized request path names, if any.
    pub fn endpoint(path: &str) -> Option<Endpoint> {
        match path {
            TOKEN_PATH => Some(Endpoint::Token),
            JWKS_PATH => Some(Endpoint::Jwks),
            DISCOVERY_PATH => Some(Endpoint::Discovery),
            _ => None,
        }
    }

    /// Answers a request for `endpoint`, which the caller chose from the normalized path: the
    /// raw one (`//oauth2/token`, `/oauth2/./token`) is not looked at again.
    pub async fn handle(
        self: Arc<Self>,
        endpoint: Endpoint,
        req: Request<Incoming>,
        metrics: &Metrics,
    ) -> Result<Response<Body>, Reject> {
        let json_ct = HeaderValue::from_static("application/json");
        match (endpoint, req.method()) {
            (Endpoint::Jwks, &Method::GET | &Method::HEAD) => {
                let mut r = json_response(StatusCode::OK, &json_ct, Bytes::from(self.jwks().to_string()));
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
                Ok(r)
            }
            (Endpoint::Discovery, &Method::GET | &Method::HEAD) => {
                Ok(json_response(StatusCode::OK, &json_ct, self.discovery.clone()))
            }
            (Endpoint::Token, &Method::POST) => Ok(match self.token(req, metrics).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }),
            (Endpoint::Token, _) => Err(Reject::MethodNotAllowed { allow: HeaderValue::from_static("POST") }),
            (Endpoint::Jwks | Endpoint::Discovery, _) => {
                Err(Reject::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") })
            }
        }
    }

    /// Checks a client's secret; `Ok(None)`: wrong secret or unknown client. A secret this
    /// issuer already accepted for the client is recognized by its SHA-256. Every other check
    /// takes a slot of `checks` and runs argon2 exactly once, whether the client has a hashed
    /// secret, a plain one, or does not exist, so neither the time taken nor a busy refusal
    /// tells which client ids exist.
    async fn authenticate(
        self: &Arc<Self>,
        checks: &Arc<SecretChecks>,
        client_id: &str,
        secret: &str,
    ) -> Result<Option<&ClientConfig>, TokenError> {
        let client = self.client(client_id);
        let digest = sha256(secret.as_bytes());
        if client.is_some() && self.remembered(client_id, &digest) {
            return Ok(client);
        }
        let slot = checks.admit().await.ok_or(TokenError::TemporarilyUnavailable)?;
        // A plain secret is compared by digest after an argon2 run against the dummy hash,
        // like an unknown client's: all three paths cost one argon2 check.
        let (phc, plain) = match client.map(|c| &c.secret) {
            Some(ClientSecret::Hash(h)) => (h.clone(), None),
            Some(ClientSecret::Plain(p)) => (self.dummy.clone(), Some(sha256(p.as_bytes()))),
            None => (self.dummy.clone(), None),
        };
        let argon2_ok = checks.argon2(slot, phc, secret.as_bytes().to_vec()).await;
        let ok = match (client, plain) {
            (Some(_), Some(plain)) => bool::from(plain.ct_eq(&digest)),
            (Some(_), None) => argon2_ok,
            (None, _) => false,
        };
        match client {
            Some(c) if ok => {
                self.verified.lock().unwrap_or_else(PoisonError::into_inner).insert(c.client_id.clone(), digest);
                Ok(Some(c))
            }
            _ => Ok(None),
        }
    }

    /// True when `digest` is that of the secret `client_id` last passed the check with.
    fn remembered(&self, client_id: &str, digest: &[u8; 32]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.get(client_id).is_some_and(|d| bool::from(d.ct_eq(digest)))
    }

    async fn token(self: Arc<Self>, req: Request<Incoming>, metrics: &Metrics) -> Result<Response<Body>, TokenError> {
        let (parts, body) = req.into_parts();
        let basic = basic_credentials(&parts.headers)?;
        let form_ok = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        let body = tokio::time::timeout(Duration::from_secs(10), Limited::new(body, MAX_FORM).collect())
            .await
            .map_err(|_| TokenError::InvalidRequest)?
            .map_err(|_| TokenError::InvalidRequest)?
            .to_bytes();
        if !body.is_empty() && !form_ok {
            return Err(TokenError::InvalidRequest);
        }
        // Parameters may come in the query string (the usual Cognito curl sends
        // `/oauth2/token?grant_type=client_credentials`) or the form body; each at most once
        // across both (RFC 6749 §3.1).
        let mut params: HashMap<String, String> = HashMap::new();
        let query = parts.uri.query().unwrap_or("").as_bytes();
        for (k, v) in form_urlencoded::parse(query).chain(form_urlencoded::parse(&body)) {
            if params.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err(TokenError::InvalidRequest);
            }
        }
        let post_id = params.get("client_id");
        let post_secret = params.get("client_secret");
        let (client_id, secret, is_basic) = match (basic, post_secret) {
            // Two client authentication methods at once (RFC 6749 §2.3).
            (Some(_), Some(_)) => return Err(TokenError::InvalidRequest),
            (Some((id, secret)), None) => {
                if post_id.is_some_and(|p| *p != id) {
                    return Err(TokenError::InvalidRequest);
                }
                (id, secret, true)
            }
            (None, Some(secret)) => match post_id {
                Some(id) => (id.clone(), secret.clone(), false),
                None => return Err(TokenError::InvalidRequest),
            },
            (None, None) => return Err(TokenError::InvalidClient { basic: false }),
        };
        let client = match self.authenticate(&self.checks, &client_id, &secret).await? {
            Some(c) => c,
            None => return Err(TokenError::InvalidClient { basic: is_basic }),
        };
        match params.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {}
            Some(_) => return Err(TokenError::UnsupportedGrantType),
            None => return Err(TokenError::InvalidRequest),
        }
        let scopes = BuiltinIssuer::grant(client, params.get("scope").map(String::as_str))?;
        let resp = self.issue(&client.client_id, &scopes)?;
        metrics.tokens_issued.with_label_values(&[&client.client_id]).inc();
        tracing::info!(client_id = %client.client_id, scope = %scopes.join(" "), "token issued");
        Ok(resp)
    }

    /// The token endpoint's answer for a client that passed every check. A token that cannot be
    /// signed is the gateway's fault, not the request's: 500 `server_error`.
    fn issue(&self, client_id: &str, scopes: &[&str]) -> Result<Response<Body>, TokenError> {
        let token = self.mint(client_id, scopes).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            TokenError::ServerError
        })?;
        let body = json!({
            "access_token": token,
            "expires_in": self.config.token_ttl.as_secs(),
            "token_type": "Bearer",
        });
        let mut resp =
            json_response(StatusCode::OK, &HeaderValue::from_static("application/json"), Bytes::from(body.to_string()));
        no_store(resp.headers_mut());
        Ok(resp)
    }
}

/// Keeps the verification keys of `issuer` equal to its published JWKS: when a retired key's
/// window ends, `keys` is replaced by a set built from the JWKS of that moment, so a token
/// signed with the withdrawn key is refused from then on. The task holds both only weakly
/// and ends with the snapshot that owns them, or when no retired key is left.
pub fn withdraw_retired_keys(issuer: &Arc<BuiltinIssuer>, keys: &Arc<IssuerKeys>) {
    if issuer.next_withdrawal().is_none() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let (issuer, keys) = (Arc::downgrade(issuer), Arc::downgrade(keys));
    rt.spawn(async move {
        loop {
            let Some(at) = issuer.upgrade().and_then(|i| i.next_withdrawal()) else { return };
            // Just past the window's end, when `jwks()` no longer lists the key.
            let wait = at.duration_since(now()).unwrap_or_default() + Duration::from_millis(1);
            tokio::time::sleep(wait).await;
            let (Some(issuer), Some(keys)) = (issuer.upgrade(), keys.upgrade()) else { return };
            let jwks = issuer.jwks().to_string();
            match KeySet::parse(jwks.as_bytes(), &keys.config.algorithms) {
                Ok(set) => {
                    keys.replace_keys(set);
                    tracing::info!(issuer = %issuer.config.issuer, "a retired signing key left the JWKS; it no longer verifies");
                }
                Err(e) => tracing::error!(issuer = %issuer.config.issuer, error = %e, "built-in issuer keys"),
            }
        }
    });
}

/// `client_secret_basic`: id and secret are form-urlencoded, then base64 (RFC 6749 §2.3.1).
/// Public for the fuzz targets and property tests only.
#[doc(hidden)]
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, TokenError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| TokenError::InvalidClient { basic: true })?.trim();
    let Some(b64) = v.get(..6).filter(|p| p.eq_ignore_ascii_case("basic ")).map(|_| v[6..].trim()) else {
        return Err(TokenError::InvalidRequest);
    };
    let raw = STANDARD.decode(b64).map_err(|_| TokenError::InvalidClient { basic: true })?;
    let raw = String::from_utf8(raw).map_err(|_| TokenError::InvalidClient { basic: true })?;
    let (id, secret) = raw.split_once(':').ok_or(TokenError::InvalidClient { basic: true })?;
    // Each half is form-urlencoded (`+` is a space, `%XX` a byte) and nothing more: an `&` or
    // `=` a client did not encode is part of the value, not the end of a form field.
    let decode = |s: &str| -> String {
        let plus_as_space = s.replace('+', " ");
        percent_encoding::percent_decode_str(&plus_as_space).decode_utf8_lossy().into_owned()
    };
    Ok(Some((decode(id), decode(secret))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Arc<BuiltinIssuer> {
        let client = |id: &str, secret| ClientConfig { client_id: id.to_owned(), secret, allowed_scopes: Vec::new() };
        let config = BuiltinIssuerConfig {
            issuer: "https://issuer.test".to_owned(),
            signing_key: None,
            signing_key_at: Pos::default(),
            token_ttl: Duration::from_secs(60),
            scopes: Vec::new(),
            clients: vec![
                client("alpha", ClientSecret::Hash(hash_secret(b"alpha-secret").unwrap())),
                client("beta", ClientSecret::Plain("beta-secret".to_owned())),
            ],
        };
        Arc::new(BuiltinIssuer::build(config, None, None).unwrap())
    }

    /// A key that cannot sign (an RSA key told to sign ES256) makes the token endpoint answer
    /// 500 `server_error`: the gateway failed, not the request.
    #[test]
    fn a_signing_failure_is_a_server_error() {
        let mut issuer = Arc::try_unwrap(issuer()).ok().expect("only owner");
        assert!(issuer.issue("alpha", &["a/b"]).is_ok(), "a good key issues");
        let good = Arc::clone(&issuer.key);
        let broken = SigningKey {
            encoding: good.encoding.clone(),
            alg: Algorithm::ES256,
            kid: good.kid.clone(),
            jwk: good.jwk.clone(),
        };
        issuer.key = Arc::new(broken);
        assert_eq!(issuer.issue("alpha", &["a/b"]).err(), Some(TokenError::ServerError));
        assert_eq!(TokenError::ServerError.status_and_code(), (StatusCode::INTERNAL_SERVER_ERROR, "server_error"));
    }

    async fn check(issuer: &Arc<BuiltinIssuer>, checks: &Arc<SecretChecks>, id: &str, secret: &str) -> Option<String> {
        issuer.authenticate(checks, id, secret).await.unwrap().map(|c| c.client_id.clone())
    }

    /// A known client with a plain secret is checked like an unknown one and like a hashed one:
    /// one argon2 run each (so none answers faster); an accepted secret is remembered, a
    /// refused one never is.
    #[tokio::test]
    async fn every_first_check_runs_argon2_once_whatever_the_client() {
        let issuer = issuer();
        let checks = SecretChecks::new(1);
        let first = [
            ("beta", "beta-secret", true),
            ("beta", "wrong", false),
            ("nobody", "beta-secret", false),
            ("alpha", "alpha-secret", true),
            ("alpha", "wrong", false),
        ];
        for (id, secret, ok) in first {
            let before = checks.runs();
            assert_eq!(check(&issuer, &checks, id, secret).await, ok.then(|| id.to_owned()), "{id}:{secret}");
            assert_eq!(checks.runs(), before + 1, "{id}:{secret}: one argon2 run");
        }
        for (id, secret, ok, runs) in [
            ("beta", "beta-secret", true, 0),
            ("alpha", "alpha-secret", true, 0),
            ("alpha", "wrong", false, 1),
            ("beta", "wrong", false, 1),
            ("nobody", "beta-secret", false, 1),
        ] {
            let before = checks.runs();
            assert_eq!(check(&issuer, &checks, id, secret).await, ok.then(|| id.to_owned()), "{id}:{secret}");
            assert_eq!(checks.runs(), before + runs, "{id}:{secret}, again");
        }
    }

    /// With every slot taken and no room to wait, a first-time check is refused as busy for a
    /// plain-secret client, a hashed one and an unknown one alike; a remembered secret is not
    /// checked again, so it is served.
    #[tokio::test]
    async fn busy_checks_refuse_every_first_time_check_alike() {
        let issuer = issuer();
        let checks = SecretChecks::with_queue(1, 0);
        assert_eq!(check(&issuer, &checks, "alpha", "alpha-secret").await.as_deref(), Some("alpha"));
        let held = checks.admit().await.expect("the free slot");
        for (id, secret) in [("beta", "beta-secret"), ("beta", "wrong"), ("nobody", "x"), ("alpha", "wrong")] {
            let r = issuer.authenticate(&checks, id, secret).await.map(|c| c.map(|c| c.client_id.clone()));
            assert_eq!(r, Err(TokenError::TemporarilyUnavailable), "{id}:{secret}");
        }
        assert_eq!(check(&issuer, &checks, "alpha", "alpha-secret").await.as_deref(), Some("alpha"));
        drop(held);
        assert_eq!(check(&issuer, &checks, "beta", "beta-secret").await.as_deref(), Some("beta"));
    }

    /// A reload's issuer keeps the bound of the one before, and forgets the accepted secrets.
    #[tokio::test]
    async fn a_rebuilt_issuer_shares_the_checks_and_forgets_secrets() {
        let first = issuer();
        let checks = Arc::clone(&first.checks);
        assert_eq!(check(&first, &checks, "beta", "beta-secret").await.as_deref(), Some("beta"));
        let next = BuiltinIssuer::build(first.config.clone(), None, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&next.checks, &first.checks));
        assert!(next.verified.lock().unwrap().is_empty());
        assert!(!first.verified.lock().unwrap().is_empty());
    }

    /// A check waiting for a slot gets it when one frees up; the wait queue is bounded.
    #[tokio::test]
    async fn waiting_checks_are_bounded() {
        let checks = SecretChecks::with_queue(1, 1);
        let held = checks.admit().await.expect("the free slot");
        let waiter = {
            let checks = Arc::clone(&checks);
            tokio::spawn(async move { checks.admit().await.is_some() })
        };
        while checks.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(checks.admit().await.is_none(), "the queue is full: refused at once");
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter gets the slot");
        assert_eq!(checks.waiting.load(Ordering::Acquire), 0);
    }

    /// The reusable-memory verification agrees with argon2's own, for other parameters too.
    #[test]
    fn argon2_matches_what_argon2_hashed() {
        let mut memory = Vec::new();
        let default = hash_secret(b"s3cret").unwrap();
        let params = argon2::Params::new(8 * 1024, 1, 2, Some(24)).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let other = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        for phc in [&default, &other] {
            assert!(argon2_matches(phc, b"s3cret", &mut memory), "{phc}");
            assert!(!argon2_matches(phc, b"s3cret ", &mut memory), "{phc}");
            assert!(!argon2_matches(phc, b"", &mut memory), "{phc}");
        }
        assert!(!argon2_matches("not a hash", b"s3cret", &mut memory));
    }

    /// The dummy hash has the clients' hash parameters (argon2's defaults without a hashed
    /// client), and no secret in use matches it.
    #[test]
    fn dummy_hash_costs_what_a_client_hash_does() {
        let params = |phc: &str| {
            let h = PasswordHash::new(phc).unwrap();
            (h.algorithm.to_string(), h.version, h.params.to_string(), h.hash.map(|o| o.len()))
        };
        let custom = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(8 * 1024, 3, 1, None).unwrap(),
        )
        .hash_password(b"x", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string();
        let client = |secret| ClientConfig { client_id: "c".to_owned(), secret, allowed_scopes: Vec::new() };
        let dummy =
            dummy_phc(&[client(ClientSecret::Plain("p".to_owned())), client(ClientSecret::Hash(custom.clone()))]);
        assert_eq!(params(&dummy), params(&custom));
        let dummy = dummy_phc(&[client(ClientSecret::Plain("p".to_owned()))]);
        assert_eq!(params(&dummy), params(&hash_secret(b"x").unwrap()));
        assert!(!argon2_matches(&dummy, b"p", &mut Vec::new()));
    }
}
