//! The built-in OAuth 2.0 client-credentials issuer (SPEC §5): `POST /oauth2/token`,
//! `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration`, on the data-plane
//! listener, Cognito-compatible.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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

use crate::config::{BuiltinIssuerConfig, ClientConfig, ClientSecret, IssuerConfig, KeySource};
use crate::error::{json_response, Body, Reject};
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
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
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
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| "RSA key generation failed".to_owned())?;
        let der = pair.as_der().map_err(|_| "RSA key encoding failed".to_owned())?;
        SigningKey::from_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
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

/// A hash of a secret nobody has, so an unknown client costs the same as a known one.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_secret(b"scopegate-dummy-secret").unwrap_or_default())
}

/// Hashes a client secret for `client_secret_hash` (argon2id, random salt, PHC string).
pub fn hash_secret(secret: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(&uuid::Uuid::new_v4().into_bytes()).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(secret, &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Checks a secret against a client's stored one; the work is the same whatever the outcome.
fn secret_matches(stored: &ClientSecret, given: &[u8]) -> bool {
    match stored {
        ClientSecret::Hash(h) => {
            PasswordHash::new(h).map(|h| Argon2::default().verify_password(given, &h).is_ok()).unwrap_or(false)
        }
        ClientSecret::Plain(p) => {
            // Compare digests so the comparison does not leak the length either.
            let a = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, p.as_bytes());
            let b = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, given);
            a.as_ref().ct_eq(b.as_ref()).into()
        }
    }
}

/// The issuer of one config snapshot.
pub struct BuiltinIssuer {
    pub config: BuiltinIssuerConfig,
    key: Arc<SigningKey>,
    /// Public keys of earlier signing keys, published until the time given.
    retired: Vec<(serde_json::Value, SystemTime)>,
    clients: HashMap<String, ClientConfig>,
    discovery: Bytes,
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

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    InvalidRequest,
    InvalidClient { basic: bool },
    UnsupportedGrantType,
    InvalidScope,
}

impl TokenError {
    fn into_response(self) -> Response<Body> {
        let (status, code) = match self {
            TokenError::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            TokenError::InvalidClient { .. } => (StatusCode::UNAUTHORIZED, "invalid_client"),
            TokenError::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            TokenError::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
        };
        let body = Bytes::from(format!(r#"{{"error":"{code}"}}"#));
        let mut resp = json_response(status, &HeaderValue::from_static("application/json"), body);
        no_store(resp.headers_mut());
        if let TokenError::InvalidClient { basic: true } = self {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="scopegate""#));
        }
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl BuiltinIssuer {
    /// Builds the issuer for a new snapshot. The key is taken over from `previous` when the
    /// key source did not change (so a generated key survives reloads); when it did change, the
    /// previous public key stays published for `token_ttl`.
    pub fn build(config: BuiltinIssuerConfig, previous: Option<&BuiltinIssuer>) -> Result<BuiltinIssuer, String> {
        let key = match (&config.signing_key, previous) {
            (None, Some(p)) if p.config.signing_key.is_none() => Arc::clone(&p.key),
            (None, _) => Arc::new(SigningKey::generate()?),
            (Some(path), _) => {
                let k = SigningKey::load(path).map_err(|e| format!("signing_key {}: {e}", path.display()))?;
                match previous {
                    Some(p) if p.key.kid == k.kid => Arc::clone(&p.key),
                    _ => Arc::new(k),
                }
            }
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
        Ok(BuiltinIssuer { config, key, retired, clients, discovery })
    }

    /// The published key set: the current key and the retired ones still in their window.
    pub fn jwks(&self) -> serde_json::Value {
        let t = now();
        let mut keys = vec![self.key.jwk.clone()];
        keys.extend(self.retired.iter().filter(|(_, until)| *until > t).map(|(j, _)| j.clone()));
        json!({ "keys": keys })
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

    pub fn kid(&self) -> &str {
        &self.key.kid
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

    /// True for the paths this issuer answers.
    pub fn owns(path: &str) -> bool {
        matches!(path, TOKEN_PATH | JWKS_PATH | DISCOVERY_PATH)
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, metrics: &Metrics) -> Result<Response<Body>, Reject> {
        let json_ct = HeaderValue::from_static("application/json");
        match (req.uri().path(), req.method()) {
            (JWKS_PATH, &Method::GET | &Method::HEAD) => {
                let mut r = json_response(StatusCode::OK, &json_ct, Bytes::from(self.jwks().to_string()));
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
                Ok(r)
            }
            (DISCOVERY_PATH, &Method::GET | &Method::HEAD) => {
                Ok(json_response(StatusCode::OK, &json_ct, self.discovery.clone()))
            }
            (TOKEN_PATH, &Method::POST) => Ok(match self.token(req, metrics).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }),
            (TOKEN_PATH, _) => Err(Reject::MethodNotAllowed { allow: HeaderValue::from_static("POST") }),
            _ => Err(Reject::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") }),
        }
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
        // Parameters may come in the query string (as in the seed's curl) or the form body;
        // each at most once across both (RFC 6749 §3.1).
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
        let issuer = Arc::clone(&self);
        let id = client_id.clone();
        // argon2 is deliberately slow: keep it off the async workers.
        let known = tokio::task::spawn_blocking(move || match issuer.client(&id) {
            Some(c) => secret_matches(&c.secret, secret.as_bytes()),
            None => {
                let _ = secret_matches(&ClientSecret::Hash(dummy_hash().to_owned()), secret.as_bytes());
                false
            }
        })
        .await
        .unwrap_or(false);
        let client = match (known, self.client(&client_id)) {
            (true, Some(c)) => c,
            _ => return Err(TokenError::InvalidClient { basic: is_basic }),
        };
        match params.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {}
            Some(_) => return Err(TokenError::UnsupportedGrantType),
            None => return Err(TokenError::InvalidRequest),
        }
        let scopes = BuiltinIssuer::grant(client, params.get("scope").map(String::as_str))?;
        let token = self.mint(&client.client_id, &scopes).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            TokenError::InvalidRequest
        })?;
        metrics.tokens_issued.with_label_values(&[&client.client_id]).inc();
        tracing::info!(client_id = %client.client_id, scope = %scopes.join(" "), "token issued");
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
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    Ok(Some((decode(id), decode(secret))))
}
