//! The per-request pipeline, in the order SPEC §3 gives it:
//! normalize -> route -> authenticate -> authorize scopes -> forward (or mock).
//!
//! The path is normalized before anything looks at it and that one normalized path is both
//! matched and forwarded. Authentication runs before the scope check so that a request with a
//! bad token never learns whether its scopes would have sufficed. Headers are rewritten only
//! after every check passed: a refused request costs no header work.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::verify::{bounded, Principal, TokenInfo};
use crate::auth::{extract, scope};
use crate::config::{Action, MockResponse, RouteAuth};
use crate::error::{json_response, Body, Reject};
use crate::issuer::BuiltinIssuer;
use crate::metrics::{method_label, Metrics};
use crate::route::{self, Match};
use crate::snapshot::Snapshot;
use crate::upstream::{self, Upstream};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// State shared by every connection of the process.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(snapshot: Snapshot, config_path: PathBuf, metrics: Arc<Metrics>) -> Shared {
        Shared { snapshot: ArcSwap::from_pointee(snapshot), config_path, metrics, draining: AtomicBool::new(false) }
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

/// What the listener knows about a connection.
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The client address as an `x-forwarded-for` value, formatted once per connection.
    pub remote_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let remote_ip =
            HeaderValue::from_str(&remote.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { remote, tls, remote_ip }
    }
}

/// What one access-log line says, filled in as the pipeline goes.
#[derive(Default)]
pub struct Access<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    pub principal: Option<Arc<Principal>>,
    /// The normalized path, when it differs from the request's.
    pub normalized: Option<String>,
    pub reason: &'static str,
    /// The matched route's scope requirement: any one of the first list, every one of the second.
    pub required: (&'a [String], &'a [String]),
    /// What verification learnt about the token, also when it failed.
    pub token: TokenInfo,
}

/// Longest list of a token's scopes written to an access-log line, in bytes (the line also
/// carries their count).
const LOGGED_SCOPES_MAX: usize = 512;

/// Scopes joined by spaces, written straight into the log line.
struct Joined<'a>(&'a [String]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// What the pipeline decided to do with a request that passed every check.
pub enum Decision<'s> {
    Issuer(Arc<BuiltinIssuer>),
    Mock(&'s MockResponse),
    /// The request parts now carry the upstream URI and the rewritten headers.
    Forward(&'s Upstream),
}

/// Serves one request. Never fails: every outcome is an answer.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let snap = shared.snapshot.load_full();
    let (mut parts, body) = req.into_parts();
    let request_id = request_id(&parts.headers);
    let method = parts.method.clone();
    // Kept for the log line: `decide` points `parts.uri` at the upstream.
    let uri = parts.uri.clone();
    let mut access = Access::default();
    let result = match decide(&snap, &conn, &mut parts, &request_id, &mut access).await {
        Ok(decision) => act(decision, Request::from_parts(parts, body), &snap, &shared.metrics).await,
        Err(reject) => Err(reject),
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(reject) => {
            access.reason = reject.reason();
            if matches!(reject, Reject::Unauthorized(_) | Reject::InsufficientScope(_)) {
                shared.metrics.auth_failures.with_label_values(&[access.reason]).inc();
            }
            reject.into_response()
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    let elapsed = start.elapsed();
    let route_label = if access.route.is_empty() { "none" } else { access.route };
    let m = &shared.metrics;
    m.requests.with_label_values(&[route_label, method_label(&method), resp.status().as_str()]).inc();
    m.request_duration.with_label_values(&[route_label]).observe(elapsed.as_secs_f64());
    // The decision, so that one line answers "why this status": the route's requirement, what
    // the token is (verified: from the principal; refused: what it claimed, made printable and
    // bounded), whether the cache answered, and the reason. Never the token itself.
    let who = access.principal.as_deref();
    let (iss, kid) = match who {
        Some(p) => (p.issuer(), p.kid().unwrap_or("")),
        None => (access.token.iss.as_deref().unwrap_or(""), access.token.kid.as_deref().unwrap_or("")),
    };
    let token_scopes = bounded(who.map_or("", Principal::scope_text), LOGGED_SCOPES_MAX);
    tracing::info!(
        target: "scopegate::access",
        request_id = request_id.to_str().unwrap_or(""),
        method = method.as_str(),
        path = access.normalized.as_deref().unwrap_or(uri.path()),
        route = access.route,
        status = resp.status().as_u16(),
        upstream = access.upstream,
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        client_id = access.principal.as_ref().map_or("", |p| p.client_id()),
        reason = access.reason,
        required_any_of = %Joined(access.required.0),
        required_all_of = %Joined(access.required.1),
        iss,
        kid,
        token_verified = who.is_some(),
        cache = access.token.cache.as_str(),
        token_scopes = &*token_scopes,
        token_scope_count = who.map_or(0, Principal::scope_count),
    );
    Ok(resp)
}

/// A client's `x-request-id` is kept when it is a sane token; otherwise a new one is made.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Size of the request head as the client sent it (request line and header fields).
fn head_size(parts: &Parts) -> usize {
    let uri = &parts.uri;
    let target =
        uri.path_and_query().map_or(1, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = parts.method.as_str().len() + target + 12;
    parts.headers.iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Every check of SPEC §3 in order; for a request to forward, also the URI rewrite and the
/// header hygiene. Touches nothing but `parts`, so it can be measured without a network.
pub async fn decide<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    request_id: &HeaderValue,
    access: &mut Access<'s>,
) -> Result<Decision<'s>, Reject> {
    let cfg = &snap.config;
    if head_size(parts) > cfg.server.max_header_bytes {
        return Err(Reject::HeaderTooLarge);
    }
    let path = route::normalize(parts.uri.path()).map_err(|_| Reject::BadRequest)?;
    if let Cow::Owned(p) = &path {
        access.normalized = Some(p.clone());
    }
    // The built-in issuer's endpoints come before the route table.
    if let Some(issuer) = &snap.issuer {
        if BuiltinIssuer::owns(&path) {
            access.route = "issuer";
            return Ok(Decision::Issuer(Arc::clone(issuer)));
        }
    }
    let idx = match snap.table.lookup(&path, &parts.method) {
        Match::Found(i) => i,
        Match::MethodNotAllowed(allow) => return Err(Reject::MethodNotAllowed { allow }),
        Match::NotFound => return Err(Reject::NotFound),
    };
    let route = &cfg.routes[idx];
    access.route = &route.path;

    let principal = match &route.auth {
        RouteAuth::None => None,
        RouteAuth::Jwt { any_of, all_of } => {
            access.required = (any_of, all_of);
            let token = extract::bearer(&parts.headers, &cfg.auth.header).map_err(Reject::Unauthorized)?;
            let who = snap.verifier.verify_with(token, &mut access.token).await?;
            access.principal = Some(Arc::clone(&who));
            if !scope::allows(any_of, all_of, &who) {
                return Err(Reject::InsufficientScope(cfg.auth.scope_failure_status));
            }
            Some(who)
        }
    };

    let upstream = match &route.action {
        Action::Mock(m) => return Ok(Decision::Mock(m)),
        Action::Upstream(i) => &*snap.upstreams[*i],
    };
    access.upstream = &upstream.config.name;
    let uri = upstream.uri(&parts.uri, &path)?;
    let forwarded_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    drop(path);
    parts.uri = uri;
    rewrite_headers(snap, conn, &mut parts.headers, request_id, forwarded_host, principal.as_deref());
    Ok(Decision::Forward(upstream))
}

async fn act(
    decision: Decision<'_>,
    req: Request<Incoming>,
    snap: &Snapshot,
    metrics: &Metrics,
) -> Result<Response<Body>, Reject> {
    match decision {
        // Boxed: the issuer's future is large and its requests are few.
        Decision::Issuer(issuer) => Box::pin(issuer.handle(req, metrics)).await,
        Decision::Mock(m) => Ok(json_response(m.status, &m.content_type, m.body.clone())),
        Decision::Forward(upstream) => {
            let sent = Instant::now();
            let resp = forward(snap, upstream, req).await;
            metrics.upstream_duration.with_label_values(&[&upstream.config.name]).observe(sent.elapsed().as_secs_f64());
            resp
        }
    }
}

/// Header hygiene for the upstream request (SPEC §3.5).
fn rewrite_headers(
    snap: &Snapshot,
    conn: &ConnInfo,
    h: &mut HeaderMap,
    request_id: &HeaderValue,
    forwarded_host: Option<HeaderValue>,
    principal: Option<&Principal>,
) {
    let auth = &snap.config.auth;
    upstream::strip_request(h);
    // The client's Host names the gateway; the upstream gets its own (set from the URI).
    h.remove(header::HOST);
    if !auth.forward_token {
        h.remove(&auth.header);
    }
    // Room for what is added below, so the map grows at most once.
    h.reserve(5 + principal.map_or(0, |p| p.identity().count()));
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", conn.remote.ip())).unwrap_or_else(|_| conn.remote_ip.clone())
        }
        _ => conn.remote_ip.clone(),
    };
    h.insert(X_FORWARDED_FOR, xff);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
    match forwarded_host {
        Some(v) => h.insert(X_FORWARDED_HOST, v),
        None => h.remove(X_FORWARDED_HOST),
    };
    h.insert(X_REQUEST_ID, request_id.clone());
    if let (Some(p), true) = (principal, auth.identity_headers) {
        for (name, value) in p.identity() {
            h.insert(name, value.clone());
        }
    }
}

async fn forward(snap: &Snapshot, upstream: &Upstream, mut req: Request<Incoming>) -> Result<Response<Body>, Reject> {
    let upgrade = upstream::is_upgrade(req.headers());
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = upstream.send(req, snap.config.server.request_timeout).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_side else {
            // A 101 the client never asked for cannot be relayed.
            return Err(Reject::BadGateway);
        };
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        return Ok(resp.map(|_| Body::Right(http_body_util::Full::default())));
    }
    upstream::strip_response(resp.headers_mut());
    Ok(resp.map(Body::Left))
}
