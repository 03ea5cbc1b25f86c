//! Token verification: header and claims decoded once, the key chosen by `iss` and `kid`, the
//! algorithm checked against what that key allows (never taken from the token alone), the
//! signature verified, then the time, audience and `token_use` checks. A verified token becomes
//! a [`Principal`], cached until (never after) the token's `exp`, and only while the key that
//! verified it is still in its issuer's key set.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::auth::jwks::{IssuerKeys, KeyEntry, KeySet};
use crate::error::{AuthFailure, Reject};
use crate::metrics::Metrics;

pub const X_AUTH_SUB: HeaderName = HeaderName::from_static("x-auth-sub");
pub const X_AUTH_CLIENT_ID: HeaderName = HeaderName::from_static("x-auth-client-id");
pub const X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
pub const X_AUTH_ISSUER: HeaderName = HeaderName::from_static("x-auth-issuer");

/// The identity headers, in the order of [`Principal`]'s fields.
static IDENTITY: [HeaderName; 4] = [X_AUTH_SUB, X_AUTH_CLIENT_ID, X_AUTH_ISSUER, X_AUTH_SCOPE];

/// Who a verified token speaks for. One lives in the token cache per token, so it is kept
/// compact: the four strings share one buffer, and the identity header values, built once per
/// verified token rather than once per request, are slices of that same buffer.
#[derive(Debug)]
pub struct Principal {
    /// `sub`, `client_id`, `iss` and the scopes joined by spaces, back to back.
    text: Bytes,
    /// Where each of those four fields ends in `text`.
    ends: [u32; 4],
    /// One span of `text` per scope: the `scope` string split on spaces, or the `scp` array
    /// as given (an array element is one scope, whatever it contains).
    scopes: Box<[(u32, u32)]>,
    pub exp: u64,
    /// The identity header values; `None` for a claim that cannot be a header value.
    identity: [Option<HeaderValue>; 4],
    /// The key that verified the token (`None` for a principal made by hand).
    key: Option<KeyBinding>,
    /// The token's `token_use` claim, for the per-route check of `server.compat = "aws-rest"`.
    pub token_use: TokenUse,
    /// The token has an `aud` claim naming one of its issuer's audiences (any `aud` when the
    /// issuer lists none).
    pub aud_matched: bool,
    /// The token's decoded claims, kept only when a route sends them upstream (`claims_header`).
    claims: Option<Bytes>,
}

/// A token's `token_use` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenUse {
    Access,
    Id,
    /// Absent, or another value.
    #[default]
    Other,
}

/// Which key verified a principal's token, and the issuer key-set version at which that key was
/// last seen in the live set.
struct KeyBinding {
    issuer: Arc<IssuerKeys>,
    key: Arc<KeyEntry>,
    kid: Option<Box<str>>,
    seen: AtomicU64,
}

impl std::fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBinding").field("kid", &self.kid).field("seen", &self.seen).finish_non_exhaustive()
    }
}

impl Principal {
    pub fn new<'a>(
        sub: &str,
        client_id: &str,
        issuer: &str,
        scopes: impl IntoIterator<Item = &'a str>,
        exp: u64,
    ) -> Principal {
        let mut text = String::with_capacity(sub.len() + client_id.len() + issuer.len() + 64);
        let mut ends = [0u32; 4];
        for (i, field) in [sub, client_id, issuer].into_iter().enumerate() {
            text.push_str(field);
            ends[i] = offset(&text);
        }
        let mut spans = Vec::new();
        for scope in scopes {
            if !spans.is_empty() {
                text.push(' ');
            }
            let start = offset(&text);
            text.push_str(scope);
            spans.push((start, offset(&text)));
        }
        ends[3] = offset(&text);
        let text = Bytes::from(text);
        let mut identity = [None, None, None, None];
        let mut start = 0;
        for (slot, end) in identity.iter_mut().zip(ends) {
            // A claim that cannot be a header value (control characters) is not forwarded.
            *slot = HeaderValue::from_maybe_shared(text.slice(start as usize..end as usize)).ok();
            start = end;
        }
        Principal {
            text,
            ends,
            scopes: spans.into_boxed_slice(),
            exp,
            identity,
            key: None,
            token_use: TokenUse::Other,
            aud_matched: false,
            claims: None,
        }
    }

    /// Records the key that verified the token, as of key-set `version`.
    fn verified_by(mut self, issuer: &Arc<IssuerKeys>, key: Arc<KeyEntry>, kid: Option<&str>, version: u64) -> Self {
        self.key = Some(KeyBinding {
            issuer: Arc::clone(issuer),
            key,
            kid: kid.map(Box::from),
            seen: AtomicU64::new(version),
        });
        self
    }

    /// True while the key that verified the token is in its issuer's live key set. The usual
    /// answer costs two atomic loads: the set has not changed since the key was last seen in
    /// it. After a change, the key is looked for in the new set once.
    fn key_is_live(&self) -> bool {
        let Some(b) = &self.key else { return false };
        let version = b.issuer.key_version();
        if version == b.seen.load(Ordering::Relaxed) {
            return true;
        }
        // Loaded after `version`: a set changed again meanwhile has a newer version still.
        let live = b.issuer.still_holds(&b.key);
        if live {
            b.seen.store(version, Ordering::Relaxed);
        }
        live
    }

    /// The token's claims as JSON, when the verifier keeps them ([`Verifier::with_claims`]).
    pub fn claims(&self) -> Option<&[u8]> {
        self.claims.as_deref()
    }

    /// The `kid` of the verified token's header, if it had one.
    pub fn kid(&self) -> Option<&str> {
        self.key.as_ref().and_then(|b| b.kid.as_deref())
    }

    /// The scopes, joined by single spaces.
    pub fn scope_text(&self) -> &str {
        self.span(self.ends[2], self.ends[3])
    }

    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    fn span(&self, start: u32, end: u32) -> &str {
        // Always on char boundaries: every span starts and ends where a `&str` was pushed.
        std::str::from_utf8(&self.text[start as usize..end as usize]).unwrap_or("")
    }

    fn field(&self, i: usize) -> &str {
        self.span(if i == 0 { 0 } else { self.ends[i - 1] }, self.ends[i])
    }

    pub fn sub(&self) -> &str {
        self.field(0)
    }

    pub fn client_id(&self) -> &str {
        self.field(1)
    }

    pub fn issuer(&self) -> &str {
        self.field(2)
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|&(start, end)| self.span(start, end))
    }

    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scopes.iter().any(|&(start, end)| &self.text[start as usize..end as usize] == wanted.as_bytes())
    }

    /// The `x-auth-*` headers to send upstream.
    pub fn identity(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        IDENTITY.iter().zip(&self.identity).filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }
}

/// Field offsets are `u32`: a token is far smaller than 4 GiB (header size limits see to it).
fn offset(text: &str) -> u32 {
    u32::try_from(text.len()).unwrap_or(u32::MAX)
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    /// Critical extensions: this verifier understands none (RFC 7515 §4.1.11), so the member's
    /// mere presence refuses the token, whatever its value (`null` included).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// True for a member that is present, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            OneOrMany::One(s) => wanted.contains(s),
            OneOrMany::Many(v) => v.iter().any(|s| wanted.contains(s)),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<OneOrMany>,
    client_id: Option<String>,
    token_use: Option<String>,
    scope: Option<String>,
    scp: Option<OneOrMany>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

pub type TokenCache = quick_cache::sync::Cache<String, Arc<Principal>>;

/// How the token cache took part in a verification, for the access log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// No token was verified.
    #[default]
    None,
    Hit,
    Miss,
    /// `auth.cache_entries = 0`.
    Off,
}

impl CacheUse {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::None => "none",
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Off => "off",
        }
    }
}

/// What a verification learnt about a token, for the access log, also when it failed. For a
/// verified token the [`Principal`] says more; `iss` and `kid` here are what the token claimed,
/// unverified, made printable and bounded by [`loggable`].
#[derive(Debug, Default)]
pub struct TokenInfo {
    pub cache: CacheUse,
    pub iss: Option<String>,
    pub kid: Option<String>,
}

/// Longest unverified token field written to a log line, in bytes.
const LOGGABLE_MAX: usize = 96;

/// `text` as a log field value from an untrusted source: printable ASCII only (anything else
/// becomes `?`), at most [`LOGGABLE_MAX`] bytes (a cut value ends in `...`).
pub fn loggable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(LOGGABLE_MAX));
    for (n, c) in text.chars().enumerate() {
        if n == LOGGABLE_MAX {
            out.truncate(LOGGABLE_MAX - 3);
            out.push_str("...");
            break;
        }
        out.push(if (' '..='~').contains(&c) { c } else { '?' });
    }
    out
}

/// `text`, cut to at most `max` bytes on a character boundary (a cut value ends in `...`).
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &text[..end]))
}

/// Everything needed to turn a token into a principal, for one config snapshot.
pub struct Verifier {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    leeway: u64,
    cache: Option<TokenCache>,
    metrics: Arc<Metrics>,
    /// `server.compat = "aws-rest"`: the route, not the issuer's `token_use`, says which kind
    /// of token it takes (checked by the request path against [`Principal::token_use`]).
    route_token_use: bool,
    /// Some route sends the claims upstream: each principal keeps them.
    keep_claims: bool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn b64_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthFailure> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthFailure::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthFailure::Malformed)
}

fn parse_alg(name: &str) -> Option<Algorithm> {
    // "none" and unknown names fail to parse: they can never be allowed.
    name.parse().ok()
}

impl Verifier {
    pub fn new(
        issuers: HashMap<String, Arc<IssuerKeys>>,
        leeway: Duration,
        cache_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Verifier {
        Verifier {
            issuers,
            leeway: leeway.as_secs(),
            cache: (cache_entries > 0).then(|| TokenCache::new(cache_entries)),
            metrics,
            route_token_use: false,
            keep_claims: false,
        }
    }

    /// Keeps each verified token's claims in its principal (a route has `claims_header`).
    #[must_use]
    pub fn with_claims(mut self, on: bool) -> Verifier {
        self.keep_claims = on;
        self
    }

    /// Leaves the `token_use` check to each route (`server.compat = "aws-rest"`).
    #[must_use]
    pub fn with_route_token_use(mut self, on: bool) -> Verifier {
        self.route_token_use = on;
        self
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.values()
    }

    /// Verifies `token`, from the cache when it was verified before and has not expired.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, Reject> {
        self.verify_with(token, &mut TokenInfo::default()).await
    }

    /// [`Verifier::verify`], also saying in `info` what it learnt, whatever the outcome.
    ///
    /// A cached principal is used only while the key that verified it is still in its
    /// issuer's key set: a key dropped from the set takes its cached tokens with it.
    pub async fn verify_with(&self, token: &str, info: &mut TokenInfo) -> Result<Arc<Principal>, Reject> {
        let now = now_secs();
        info.cache = CacheUse::Off;
        if let Some(cache) = &self.cache {
            if let Some(p) = cache.get(token) {
                if now < p.exp && p.key_is_live() {
                    self.metrics.cache_hits.inc();
                    info.cache = CacheUse::Hit;
                    return Ok(p);
                }
                cache.remove(token);
            }
            self.metrics.cache_misses.inc();
            info.cache = CacheUse::Miss;
        }
        let principal = Arc::new(self.verify_uncached(token, now, info).await?);
        if let Some(cache) = &self.cache {
            if now < principal.exp {
                cache.insert(token.to_owned(), Arc::clone(&principal));
            }
        }
        Ok(principal)
    }

    async fn verify_uncached(&self, token: &str, now: u64, info: &mut TokenInfo) -> Result<Principal, Reject> {
        let unauthorized = Reject::Unauthorized;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(unauthorized(AuthFailure::Malformed));
        };
        let header: JoseHeader = b64_json(h).map_err(unauthorized)?;
        info.kid = header.kid.as_deref().map(loggable);
        let claims: Claims = b64_json(c).map_err(unauthorized)?;
        info.iss = claims.iss.as_deref().map(loggable);
        if header.crit {
            return Err(unauthorized(AuthFailure::Malformed));
        }
        let iss = claims.iss.as_deref().ok_or(unauthorized(AuthFailure::WrongIssuer))?;
        let issuer = self.issuers.get(iss).ok_or(unauthorized(AuthFailure::WrongIssuer))?;
        let alg = parse_alg(&header.alg)
            .filter(|a| issuer.config.algorithms.contains(a))
            .ok_or(unauthorized(AuthFailure::DisallowedAlg))?;
        // The version before the set: if the set changes in between, the principal's key is
        // looked up again on its first cache hit.
        let version = issuer.key_version();
        // An issuer that has never had keys cannot judge any token: that is our outage, not
        // the client's fault, so it is a 503 rather than a 401.
        let keys = issuer.keys().ok_or(Reject::KeysUnavailable)?;
        let message = &token.as_bytes()[..h.len() + 1 + c.len()];
        let entry = match find_key(&keys, header.kid.as_deref(), alg, message, sig) {
            Lookup::Verified(entry) => entry,
            Lookup::Failed(f) => return Err(unauthorized(f)),
            Lookup::UnknownKid => {
                // Boxed: a rare path that would otherwise size every request's future.
                let fresh = Box::pin(issuer.refetch_for_unknown_kid()).await;
                match fresh.map(|k| find_key(&k, header.kid.as_deref(), alg, message, sig)) {
                    Some(Lookup::Verified(entry)) => entry,
                    Some(Lookup::Failed(f)) => return Err(unauthorized(f)),
                    Some(Lookup::UnknownKid) | None => return Err(unauthorized(AuthFailure::UnknownKid)),
                }
            }
        };

        let mut principal =
            self.accept(issuer, &claims, now)?.verified_by(issuer, entry, header.kid.as_deref(), version);
        if self.keep_claims {
            // Decoded once more, on this rare path only: `c` decoded above.
            principal.claims = URL_SAFE_NO_PAD.decode(c).ok().map(Bytes::from);
        }
        Ok(principal)
    }

    /// The checks after the signature, the same for every way a principal is made: time
    /// claims, audience, `token_use`; then the principal the claims describe.
    fn accept(&self, issuer: &IssuerKeys, claims: &Claims, now: u64) -> Result<Principal, Reject> {
        let unauthorized = Reject::Unauthorized;
        // Time claims, with leeway for clock skew. `exp` is required: a token that never
        // expires would also live in the cache forever.
        let leeway = self.leeway as f64;
        let now_f = now as f64;
        let exp = claims.exp.ok_or(unauthorized(AuthFailure::Malformed))?;
        // RFC 7519 §4.1.4: not accepted on or after `exp`.
        if !exp.is_finite() || now_f >= exp + leeway {
            return Err(unauthorized(AuthFailure::Expired));
        }
        for t in [claims.nbf, claims.iat].into_iter().flatten() {
            if !t.is_finite() || now_f + leeway < t {
                return Err(unauthorized(AuthFailure::NotYetValid));
            }
        }
        let cfg = &issuer.config;
        if !cfg.audiences.is_empty() {
            let ok = match &claims.aud {
                Some(aud) => aud.contains_any(&cfg.audiences),
                // Cognito access tokens carry no `aud`; their `client_id` plays that part.
                None => claims.client_id.as_ref().is_some_and(|c| cfg.audiences.contains(c)),
            };
            if !ok {
                return Err(unauthorized(AuthFailure::WrongAudience));
            }
        }
        if let (Some(want), false) = (&cfg.token_use, self.route_token_use) {
            if claims.token_use.as_ref() != Some(want) {
                return Err(unauthorized(AuthFailure::WrongTokenUse));
            }
        }
        let client_id = claims.client_id.as_deref().or(claims.sub.as_deref()).unwrap_or_default();
        let sub = claims.sub.as_deref().unwrap_or(client_id);
        // Truncation floors the expiry: a cache entry may die early, never late.
        let exp = exp.max(0.0) as u64;
        let mut principal = match (&claims.scope, &claims.scp) {
            (Some(s), _) | (None, Some(OneOrMany::One(s))) => {
                Principal::new(sub, client_id, &cfg.issuer, s.split_whitespace(), exp)
            }
            (None, Some(OneOrMany::Many(v))) => {
                Principal::new(sub, client_id, &cfg.issuer, v.iter().map(String::as_str), exp)
            }
            (None, None) => Principal::new(sub, client_id, &cfg.issuer, [], exp),
        };
        principal.token_use = match claims.token_use.as_deref() {
            Some("access") => TokenUse::Access,
            Some("id") => TokenUse::Id,
            _ => TokenUse::Other,
        };
        // Checked above against the audiences when there are any.
        principal.aud_matched = claims.aud.is_some();
        Ok(principal)
    }

    /// The principal of a token whose signature cannot be checked here (`scopegate explain`
    /// without the issuer's keys): every check of [`Verifier::verify`] but the key lookup and
    /// the signature, in the same order and with the same failures. Never for the request path.
    pub fn unverified_principal(&self, token: &str) -> Result<Principal, Reject> {
        let unauthorized = Reject::Unauthorized;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(unauthorized(AuthFailure::Malformed));
        };
        let header: JoseHeader = b64_json(h).map_err(unauthorized)?;
        let claims: Claims = b64_json(c).map_err(unauthorized)?;
        if header.crit {
            return Err(unauthorized(AuthFailure::Malformed));
        }
        let issuer = self.issuer_of(&claims)?;
        parse_alg(&header.alg)
            .filter(|a| issuer.config.algorithms.contains(a))
            .ok_or(unauthorized(AuthFailure::DisallowedAlg))?;
        let mut principal = self.accept(issuer, &claims, now_secs())?;
        if self.keep_claims {
            principal.claims = URL_SAFE_NO_PAD.decode(c).ok().map(Bytes::from);
        }
        Ok(principal)
    }

    /// The principal of a claims object taken as verified (`scopegate explain --claims`): the
    /// issuer must be configured, and every check after the signature applies as in
    /// [`Verifier::verify`] (`exp` required, `nbf`/`iat`, audience, `token_use`).
    pub fn principal_from_claims(&self, json: &[u8]) -> Result<Principal, Reject> {
        let claims: Claims = serde_json::from_slice(json).map_err(|_| Reject::Unauthorized(AuthFailure::Malformed))?;
        let issuer = self.issuer_of(&claims)?;
        let mut principal = self.accept(issuer, &claims, now_secs())?;
        if self.keep_claims {
            principal.claims = Some(Bytes::copy_from_slice(json));
        }
        Ok(principal)
    }

    fn issuer_of(&self, claims: &Claims) -> Result<&Arc<IssuerKeys>, Reject> {
        let iss = claims.iss.as_deref().ok_or(Reject::Unauthorized(AuthFailure::WrongIssuer))?;
        self.issuers.get(iss).ok_or(Reject::Unauthorized(AuthFailure::WrongIssuer))
    }

    /// The configured issuer named `iss`, with its keys.
    pub fn issuer(&self, iss: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(iss)
    }
}

enum Lookup {
    Verified(Arc<KeyEntry>),
    Failed(AuthFailure),
    UnknownKid,
}

fn check(entry: &Arc<KeyEntry>, alg: Algorithm, message: &[u8], sig: &str) -> Lookup {
    if !entry.allows(alg) {
        return Lookup::Failed(AuthFailure::DisallowedAlg);
    }
    if entry.verify(alg, message, sig) {
        Lookup::Verified(Arc::clone(entry))
    } else {
        Lookup::Failed(AuthFailure::BadSignature)
    }
}

fn find_key(keys: &KeySet, kid: Option<&str>, alg: Algorithm, message: &[u8], sig: &str) -> Lookup {
    match kid {
        Some(kid) => match keys.get(kid) {
            Some(entry) => check(entry, alg, message, sig),
            None => Lookup::UnknownKid,
        },
        // No kid: try the keys that allow this algorithm (sets are small).
        None => {
            let mut tried = false;
            for entry in keys.all().filter(|e| e.allows(alg)) {
                tried = true;
                if let Lookup::Verified(e) = check(entry, alg, message, sig) {
                    return Lookup::Verified(e);
                }
            }
            if tried {
                Lookup::Failed(AuthFailure::BadSignature)
            } else {
                Lookup::UnknownKid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_fields_and_scopes_share_one_buffer() {
        let p = Principal::new("user-1", "client-é", "https://iss", ["a/b.read", "has space", "c"], 42);
        assert_eq!((p.sub(), p.client_id(), p.issuer(), p.exp), ("user-1", "client-é", "https://iss", 42));
        assert_eq!(p.scopes().collect::<Vec<_>>(), ["a/b.read", "has space", "c"]);
        // An array element is one scope: neither half of "has space" is granted.
        assert!(p.has_scope("has space") && p.has_scope("c") && !p.has_scope("has") && !p.has_scope("space"));
        assert!(!p.has_scope("a/b.rea") && !p.has_scope(""));
        let headers: Vec<_> = p.identity().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            headers,
            [
                ("x-auth-sub", &b"user-1"[..]),
                ("x-auth-client-id", "client-é".as_bytes()),
                ("x-auth-issuer", b"https://iss"),
                ("x-auth-scope", b"a/b.read has space c"),
            ]
        );
    }

    #[test]
    fn untrusted_log_values_are_printable_and_bounded() {
        assert_eq!(loggable("kid-1"), "kid-1");
        assert_eq!(loggable("a\nb\"c\u{1b}é"), "a?b\"c??");
        let long = loggable(&"x".repeat(1000));
        assert_eq!((long.len(), long.ends_with("...")), (LOGGABLE_MAX, true));
        assert_eq!(loggable(&"x".repeat(LOGGABLE_MAX)), "x".repeat(LOGGABLE_MAX));
        assert_eq!(bounded("a b", 10), "a b");
        assert_eq!(bounded("ééééé", 8), "éé...");
    }

    #[test]
    fn a_claim_that_cannot_be_a_header_is_not_forwarded() {
        let p = Principal::new("line\nbreak", "c", "i", [], 1);
        assert_eq!(p.sub(), "line\nbreak");
        let names: Vec<_> = p.identity().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-auth-client-id", "x-auth-issuer", "x-auth-scope"]);
        assert!(p.scopes().next().is_none());
    }
}
