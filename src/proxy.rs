//! The per-request pipeline, in the order docs/behaviour.md gives it:
//! normalize -> route -> authenticate -> authorize scopes -> forward (or mock).
//!
//! The path is normalized before anything looks at it and that one normalized path is both
//! matched and forwarded. Authentication runs before the scope check so that a request with a
//! bad token never learns whether its scopes would have sufficed. Headers are rewritten only
//! after every check passed: a refused request costs no header work.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::verify::{bounded, Principal, TokenInfo, TokenUse};
use crate::auth::{extract, scope};
use crate::config::{Compat, MockResponse, RouteAuth};
use crate::error::{json_response, AuthFailure, Body, Reject, APIGW_REQUEST_ID, X_AMZN_REQUEST_ID};
use crate::issuer::{BuiltinIssuer, Endpoint};
use crate::metrics::{method_label, Metrics};
use crate::route::{self, Match, Target};
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::tunnel;
use crate::upstream::{self, Upstream};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the listener knows about a connection.
///
/// A request that may upgrade carries its connection's `Arc<ConnInfo>` in its extensions, so
/// that the tunnel it turns into holds the connection's slot (see [`ConnInfo::with_slot`]).
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The client address as an `x-forwarded-for` value, formatted once per connection.
    pub remote_ip: HeaderValue,
    /// The port the client connected to, as an `x-forwarded-port` value; `None` when unknown.
    pub local_port: Option<HeaderValue>,
    /// The connection's place under `max_connections`, given back when the last holder of this
    /// `ConnInfo` ends: the connection, or the tunnel an upgrade turned it into.
    slot: Option<OwnedSemaphorePermit>,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let remote_ip =
            HeaderValue::from_str(&remote.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { remote, tls, remote_ip, local_port: None, slot: None }
    }

    /// The listener's own address, for `x-forwarded-port`.
    pub fn with_local(mut self, local: Option<SocketAddr>) -> ConnInfo {
        self.local_port = local.map(|a| HeaderValue::from(a.port()));
        self
    }

    /// Ties the connection's `max_connections` permit to this `ConnInfo`.
    #[must_use]
    pub fn with_slot(mut self, slot: OwnedSemaphorePermit) -> ConnInfo {
        self.slot = Some(slot);
        self
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
    /// The route is in audit mode and its token or scope check refused the request, which was
    /// forwarded anyway: the refusal it would have had (`reason` names it too).
    pub would_deny: Option<Reject>,
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
    /// The endpoint is chosen by the normalized path, as the decision was.
    Issuer(Arc<BuiltinIssuer>, Endpoint),
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
    let mut denied = false;
    let result = match decide(&snap, &conn, &mut parts, &request_id, &mut access).await {
        Ok(decision) => act(decision, Request::from_parts(parts, body), &snap, &shared.metrics).await,
        Err(reject) => {
            denied = true;
            Err(reject)
        }
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(reject) => {
            // A forwarded audit-mode request that then fails upstream keeps the reason its
            // check would have refused it for; the status tells the upstream failure.
            if access.would_deny.is_none() {
                access.reason = reject.reason();
            }
            if matches!(reject, Reject::Unauthorized(_) | Reject::InsufficientScope(_)) {
                shared.metrics.auth_failures.with_label_values(&[access.reason]).inc();
            }
            reject.into_compat_response(snap.config.server.compat)
        }
    };
    let h = resp.headers_mut();
    h.insert(X_REQUEST_ID, request_id.clone());
    match snap.config.server.compat {
        Compat::None => {}
        Compat::AwsRest => {
            h.insert(X_AMZN_REQUEST_ID, request_id.clone());
        }
        Compat::AwsHttp => {
            h.insert(APIGW_REQUEST_ID, request_id.clone());
        }
    }
    let elapsed = start.elapsed();
    let route_label = if access.route.is_empty() { "none" } else { access.route };
    let m = &shared.metrics;
    m.requests.with_label_values(&[route_label, method_label(&method), resp.status().as_str()]).inc();
    m.request_duration.with_label_values(&[route_label]).observe(elapsed.as_secs_f64());
    if access.would_deny.is_some() {
        m.audit_would_deny.with_label_values(&[route_label, access.reason]).inc();
    }
    let decision = match (access.would_deny.is_some(), denied) {
        (true, _) => "would_deny",
        (false, true) => "deny",
        (false, false) => "allow",
    };
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
        decision,
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

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` unless its target is in
/// absolute form (which carries the host itself); no request may carry two. HTTP/1.0 may omit it,
/// and HTTP/2's `:authority` arrives in the URI.
fn host_is_sound(parts: &Parts) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    first.is_some() || parts.version != http::Version::HTTP_11 || parts.uri.authority().is_some()
}

/// Method names are case-sensitive (RFC 9110 §9.1) and every standard one is upper case, but
/// upstream frameworks upper-case what they receive: `get` would be routed as GET upstream while
/// the table saw an unknown method. A method with a lower-case letter is refused.
fn method_is_upper_case(method: &http::Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

/// Where [`decide_with`] takes a JWT route's principal from.
pub enum PrincipalFrom<'a> {
    /// The request's token, through the snapshot's verifier: the gateway's way.
    Verifier,
    /// Given by the caller, instead of the token (`scopegate explain` with claims taken as
    /// verified, or a token whose keys it does not have): the principal, or why it was refused.
    Given(&'a Result<Arc<Principal>, Reject>),
}

/// Every check of the request path in order; for a request to forward, also the URI rewrite and the
/// header hygiene. Touches nothing but `parts`, so it can be measured without a network.
pub async fn decide<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    request_id: &HeaderValue,
    access: &mut Access<'s>,
) -> Result<Decision<'s>, Reject> {
    decide_with(snap, conn, parts, request_id, access, PrincipalFrom::Verifier).await
}

/// [`decide`], with a JWT route's principal taken from `from`.
pub async fn decide_with<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    request_id: &HeaderValue,
    access: &mut Access<'s>,
    from: PrincipalFrom<'_>,
) -> Result<Decision<'s>, Reject> {
    let cfg = &snap.config;
    if head_size(parts) > cfg.server.max_header_bytes {
        return Err(Reject::HeaderTooLarge);
    }
    if !host_is_sound(parts) || !method_is_upper_case(&parts.method) {
        return Err(Reject::BadRequest);
    }
    let path = route::normalize(parts.uri.path()).map_err(|_| Reject::BadRequest)?;
    if let Cow::Owned(p) = &path {
        access.normalized = Some(p.clone());
    }
    // The built-in issuer's endpoints come before the route table.
    if let Some(issuer) = &snap.issuer {
        if let Some(endpoint) = BuiltinIssuer::endpoint(&path) {
            access.route = "issuer";
            return Ok(Decision::Issuer(Arc::clone(issuer), endpoint));
        }
    }
    let route = match snap.table.lookup(&path, &parts.method) {
        Match::Found(route) => route,
        Match::MethodNotAllowed(allow) => return Err(Reject::MethodNotAllowed { allow }),
        Match::NotFound => return Err(Reject::NotFound),
    };
    access.route = &route.template;

    let principal = match &route.auth {
        RouteAuth::None => None,
        RouteAuth::Jwt { any_of, all_of } => {
            access.required = (any_of, all_of);
            let checked = async {
                let who = match from {
                    PrincipalFrom::Verifier => {
                        let token = extract::bearer(&parts.headers, &cfg.auth.header).map_err(Reject::Unauthorized)?;
                        snap.verifier.verify_with(token, &mut access.token).await?
                    }
                    PrincipalFrom::Given(given) => given.clone()?,
                };
                access.principal = Some(Arc::clone(&who));
                if cfg.server.compat == Compat::AwsRest {
                    rest_token_type(any_of.is_empty() && all_of.is_empty(), &who)?;
                }
                if !scope::allows(any_of, all_of, &who) {
                    return Err(Reject::InsufficientScope(cfg.auth.scope_failure_status));
                }
                Ok(who)
            };
            match checked.await {
                Ok(who) => Some(who),
                // Audit mode: a refused token or scope is recorded, not answered, and the
                // request goes on with no identity (a verified principal stays in the log
                // line only). Keys not loaded yet is no verdict on the token: still answered.
                Err(reject @ (Reject::Unauthorized(_) | Reject::InsufficientScope(_))) if !route.enforce => {
                    access.reason = reject.reason();
                    access.would_deny = Some(reject);
                    None
                }
                Err(reject) => return Err(reject),
            }
        }
    };

    let upstream = match &route.target {
        Target::Mock(m) => return Ok(Decision::Mock(m)),
        Target::Upstream(u) => &**u,
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
    if access.would_deny.is_some() && upstream::may_strip(&cfg.auth.header) {
        // A token header in a family the gateway sets (`x-auth-token`) passes as verified: a
        // token that was refused does not.
        parts.headers.remove(&cfg.auth.header);
    }
    if !snap.claims_headers.is_empty() {
        upstream::strip_named(&mut parts.headers, &snap.claims_headers);
    }
    if let Some(name) = &route.claims_header {
        // Always set or removed, never the client's: validation ties the header to a JWT route.
        match principal.as_deref().and_then(|p| crate::compat::authorizer_header(cfg.server.compat, p)) {
            Some(v) => parts.headers.insert(name, v),
            None => parts.headers.remove(name),
        };
    }
    Ok(Decision::Forward(upstream))
}

/// `server.compat = "aws-rest"`: as the REST API's Cognito authorizer, a route without scopes
/// takes an ID token (`token_use = id`, with an `aud` naming one of the issuer's audiences), a
/// route with scopes an access token (`token_use = access`).
fn rest_token_type(no_scopes: bool, who: &Principal) -> Result<(), Reject> {
    if no_scopes {
        if who.token_use != TokenUse::Id {
            return Err(Reject::Unauthorized(AuthFailure::WrongTokenUse));
        }
        if !who.aud_matched {
            return Err(Reject::Unauthorized(AuthFailure::WrongAudience));
        }
    } else if who.token_use != TokenUse::Access {
        return Err(Reject::Unauthorized(AuthFailure::WrongTokenUse));
    }
    Ok(())
}

async fn act(
    decision: Decision<'_>,
    req: Request<Incoming>,
    snap: &Snapshot,
    metrics: &Metrics,
) -> Result<Response<Body>, Reject> {
    match decision {
        // Boxed: the issuer's future is large and its requests are few.
        Decision::Issuer(issuer, endpoint) => Box::pin(issuer.handle(endpoint, req, metrics)).await,
        Decision::Mock(m) => Ok(json_response(m.status, &m.content_type, m.body.clone())),
        Decision::Forward(upstream) => {
            let sent = Instant::now();
            let resp = forward(snap, upstream, req).await;
            metrics.upstream_duration.with_label_values(&[&upstream.config.name]).observe(sent.elapsed().as_secs_f64());
            resp
        }
    }
}

/// Header hygiene for the upstream request. Client forwarding headers are
/// either removed by `strip_request` or overwritten here: `x-forwarded-proto`,
/// `x-forwarded-host`, `x-forwarded-port` and `x-real-ip` get the gateway's values, and
/// `x-forwarded-for` gets the client address appended to every line the client sent (NGINX's
/// `$proxy_add_x_forwarded_for`).
fn rewrite_headers(
    snap: &Snapshot,
    conn: &ConnInfo,
    h: &mut HeaderMap,
    request_id: &HeaderValue,
    forwarded_host: Option<HeaderValue>,
    principal: Option<&Principal>,
) {
    let auth = &snap.config.auth;
    // A token header named like a stripped family (`x-auth-token`, say) still follows
    // `forward_token`: the gateway has verified it (or the route is public, where the token
    // header goes on like any other).
    let token = (auth.forward_token && upstream::may_strip(&auth.header)).then(|| h.remove(&auth.header)).flatten();
    upstream::strip_request(h);
    // The client's Host names the gateway; the upstream gets its own (set from the URI).
    h.remove(header::HOST);
    if !auth.forward_token {
        h.remove(&auth.header);
    }
    if let Some(token) = token {
        h.insert(&auth.header, token);
    }
    // Room for what is added below, so the map grows at most once.
    h.reserve(7 + principal.map_or(0, |p| p.identity().count()));
    let xff = forwarded_for(h, conn);
    h.insert(X_FORWARDED_FOR, xff);
    h.insert(upstream::X_REAL_IP, conn.remote_ip.clone());
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
    match forwarded_host {
        Some(v) => h.insert(X_FORWARDED_HOST, v),
        None => h.remove(X_FORWARDED_HOST),
    };
    match &conn.local_port {
        Some(port) => h.insert(upstream::X_FORWARDED_PORT, port.clone()),
        None => h.remove(upstream::X_FORWARDED_PORT),
    };
    h.insert(X_REQUEST_ID, request_id.clone());
    if let (Some(p), true) = (principal, auth.identity_headers) {
        for (name, value) in p.identity() {
            h.insert(name, value.clone());
        }
    }
}

/// The incoming `x-forwarded-for` lines, joined, with the client address appended; a line
/// that is blank or not text is left out.
fn forwarded_for(h: &HeaderMap, conn: &ConnInfo) -> HeaderValue {
    let mut prev = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .peekable();
    if prev.peek().is_none() {
        return conn.remote_ip.clone();
    }
    let mut xff = String::new();
    for v in prev {
        xff.push_str(v);
        xff.push_str(", ");
    }
    xff.push_str(conn.remote_ip.to_str().unwrap_or("unknown"));
    HeaderValue::from_str(&xff).unwrap_or_else(|_| conn.remote_ip.clone())
}

async fn forward(snap: &Snapshot, upstream: &Upstream, mut req: Request<Incoming>) -> Result<Response<Body>, Reject> {
    // Present only on a request that may upgrade (the listener puts it there).
    let conn = req.extensions_mut().remove::<Arc<ConnInfo>>();
    // Only WebSocket is relayed: the hygiene has already dropped any other `Upgrade`, and the
    // one protocol forwarded is websocket, whatever else the client offered next to it.
    let upgrade = upstream::is_upgrade(req.headers());
    if upgrade {
        req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(upstream::WEBSOCKET));
    }
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = upstream.send(req, snap.config.server.request_timeout).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 the client never asked for, or to another protocol, cannot be relayed; the
        // upstream connection that sent it is dropped with the response.
        let Some(client_side) = client_side else {
            return Err(Reject::BadGateway);
        };
        if !upstream::switches_to_websocket(resp.headers()) {
            tracing::debug!(upstream = %upstream.config.name, "a 101 to another protocol than websocket");
            return Err(Reject::BadGateway);
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        let idle = snap.config.server.idle_timeout;
        tokio::spawn(async move {
            // The tunnel keeps its client connection's slot under max_connections until it ends.
            let _slot = conn;
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => tunnel::relay(c, u, idle).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        return Ok(resp.map(|_| Body::Right(http_body_util::Full::default())));
    }
    upstream::strip_response(resp.headers_mut());
    Ok(resp.map(Body::Left))
}

#[cfg(test)]
mod tests {
    //! `decide` against a snapshot built from a config string, without a network: the built-in
    //! issuer mints the tokens and its keys are handed to the verifier directly; the upstream's
    //! address is never dialled (`decide` stops at the rewritten request).

    use std::path::Path;

    use http::Request;

    use super::*;
    use crate::config::{Config, ScopeFailureStatus};
    use crate::error::AuthFailure;

    const CONFIG: &str = r#"
[auth]
scope_failure_status = 403

[issuer]
issuer = "https://issuer.test"

[[issuer.resource_servers]]
identifier = "api"
scopes = ["read", "write"]

[[issuer.clients]]
client_id = "app"
client_secret = "app-secret"
allowed_scopes = ["api/read", "api/write"]

[upstreams.books]
url = "http://127.0.0.1:9/base"

[[routes]]
path = "/books/{id}"
methods = ["GET"]
scopes = ["api/read"]
upstream = "books"

[[routes]]
path = "/books/{id}"
methods = ["DELETE"]
scopes_all = ["api/read", "api/write"]
upstream = "books"

[[routes]]
path = "/health"
auth = "none"
response = { status = 200, body = "ok" }

[[routes]]
path = "/audit/{id}"
methods = ["GET"]
scopes = ["api/write"]
upstream = "books"
enforce = false
"#;

    fn snapshot() -> Snapshot {
        let config = Config::parse(Path::new("/decide-test/gateway.toml"), CONFIG).expect("config");
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
        Snapshot::build(config, None, &crate::auth::jwks::fetch_client(), &metrics).expect("snapshot")
    }

    fn token(snap: &Snapshot, scopes: &[&str]) -> String {
        snap.issuer.as_ref().expect("built-in issuer").mint("app", scopes).expect("mint")
    }

    /// What `decide` chose, in words, or why it refused.
    async fn decided(snap: &Snapshot, req: http::request::Builder) -> Result<String, Reject> {
        let (mut parts, ()) = req.header("host", "gw.test").body(()).expect("request").into_parts();
        let conn = ConnInfo::new("127.0.0.1:40000".parse().expect("addr"), false);
        let mut access = Access::default();
        let request_id = HeaderValue::from_static("decide-test");
        let decision = decide(snap, &conn, &mut parts, &request_id, &mut access).await?;
        Ok(match decision {
            Decision::Issuer(_, endpoint) => format!("issuer {endpoint:?}"),
            Decision::Mock(m) => format!("mock {}", m.status.as_u16()),
            Decision::Forward(u) => format!("forward {} {}", u.config.name, parts.uri),
        })
    }

    fn get(target: &str, token: Option<&str>) -> http::request::Builder {
        let req = Request::get(target);
        match token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    #[tokio::test]
    async fn every_check_refuses_with_its_reject() {
        let snap = snapshot();
        let read = token(&snap, &["api/read"]);
        let write = token(&snap, &["api/write"]);
        let other_key = token(&snapshot(), &["api/read"]);
        let cases: Vec<(&str, http::request::Builder, Reject)> = vec![
            ("lower-case method", Request::builder().method("get").uri("/health"), Reject::BadRequest),
            ("path parameter", get("/books;v=1/1", None), Reject::BadRequest),
            ("path above the root", get("/../books/1", None), Reject::BadRequest),
            ("head too large", get("/health", None).header("x-big", "a".repeat(20_000)), Reject::HeaderTooLarge),
            ("no route", get("/nope", None), Reject::NotFound),
            (
                "method without a route",
                Request::put("/books/1"),
                Reject::MethodNotAllowed { allow: HeaderValue::from_static("DELETE, GET, HEAD") },
            ),
            ("no token", get("/books/1", None), Reject::Unauthorized(AuthFailure::Missing)),
            ("not a JWT", get("/books/1", Some("not-a-jwt")), Reject::Unauthorized(AuthFailure::Malformed)),
            ("another issuer's key", get("/books/1", Some(&other_key)), Reject::Unauthorized(AuthFailure::UnknownKid)),
            ("scope missing", get("/books/1", Some(&write)), Reject::InsufficientScope(ScopeFailureStatus::Forbidden)),
            (
                "one of all scopes missing",
                Request::delete("/books/1").header("authorization", format!("Bearer {read}")),
                Reject::InsufficientScope(ScopeFailureStatus::Forbidden),
            ),
        ];
        for (what, req, want) in cases {
            assert_eq!(decided(&snap, req).await, Err(want), "{what}");
        }
    }

    #[tokio::test]
    async fn accepted_requests_get_their_target() {
        let snap = snapshot();
        let read = token(&snap, &["api/read"]);
        let both = token(&snap, &["api/read", "api/write"]);
        let forward = |path: &str| Ok(format!("forward books /base{path}"));
        assert_eq!(decided(&snap, get("/books/1?x=1", Some(&read))).await, forward("/books/1?x=1"));
        // HEAD is checked as GET; the normalized path is the one forwarded.
        assert_eq!(
            decided(&snap, Request::head("/BOOKS/./1").header("authorization", format!("Bearer {read}"))).await,
            forward("/BOOKS/1")
        );
        assert_eq!(
            decided(&snap, Request::delete("/books/1").header("authorization", format!("Bearer {both}"))).await,
            forward("/books/1")
        );
        assert_eq!(decided(&snap, get("/health", None)).await, Ok("mock 200".to_owned()));
        assert_eq!(decided(&snap, Request::post("/oauth2/token")).await, Ok("issuer Token".to_owned()));
    }

    #[tokio::test]
    async fn an_audit_route_forwards_refusals_without_identity() {
        let snap = snapshot();
        let read = token(&snap, &["api/read"]);
        let write = token(&snap, &["api/write"]);
        let cases: [(Option<&str>, Option<&str>); 4] = [
            (None, Some("missing_token")),
            (Some("not-a-jwt"), Some("malformed_token")),
            (Some(&read), Some("insufficient_scope")),
            (Some(&write), None),
        ];
        for (token, would_deny) in cases {
            let req = get("/audit/1", token).header("host", "gw.test").header("x-auth-sub", "forged");
            let (mut parts, ()) = req.body(()).expect("request").into_parts();
            let conn = ConnInfo::new("127.0.0.1:40000".parse().expect("addr"), false);
            let mut access = Access::default();
            let request_id = HeaderValue::from_static("audit-test");
            let decision = decide(&snap, &conn, &mut parts, &request_id, &mut access).await;
            assert!(matches!(decision, Ok(Decision::Forward(_))), "{would_deny:?}: forwarded");
            assert_eq!(parts.uri, "/base/audit/1", "{would_deny:?}");
            assert_eq!((access.would_deny.is_some(), access.reason), (would_deny.is_some(), would_deny.unwrap_or("")));
            let sub = parts.headers.get("x-auth-sub").map(|v| v.to_str().expect("text").to_owned());
            assert_eq!(sub, would_deny.is_none().then(|| "app".to_owned()), "{would_deny:?}: identity");
            // The log line still tells what the refused token was.
            assert_eq!(access.principal.is_some(), token.is_some_and(|t| t != "not-a-jwt"), "{would_deny:?}");
        }
    }
}
