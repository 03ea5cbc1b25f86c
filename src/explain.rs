//! `scopegate explain METHOD PATH [--token T | --claims JSON] [--json]`: what the gateway would
//! answer a request, and why, worked out offline.
//!
//! The answer comes from the request path's own decision code ([`proxy::decide_with`]) run on a
//! snapshot built from the config without any network ([`Snapshot::offline`]), so explain and
//! the running gateway cannot disagree on a rule. What explain cannot know offline is said
//! plainly: a token whose issuer's keys are fetched at run time (or whose key the built-in
//! issuer generates at start) is judged on its claims, with every check the verifier makes after
//! the signature, as if the signature were good.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use serde::Serialize;
use serde_json::Value;

use crate::auth::verify::Principal;
use crate::config::{Compat, Config, KeySource, Methods, RouteAuth};
use crate::error::Reject;
use crate::issuer::BuiltinIssuer;
use crate::metrics::Metrics;
use crate::proxy::{self, Access, ConnInfo, Decision, PrincipalFrom};
use crate::route::{self, Match, Target};
use crate::snapshot::Snapshot;

/// `scopegate explain [--config PATH] METHOD PATH [--token T | --claims JSON] [--json]`
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The request method (as sent: case matters)
    pub method: String,
    /// The request target: path and optional query, as sent (e.g. '/books/1?x=1')
    pub path: String,
    /// A bearer token, sent in the configured `[auth] header`
    #[arg(long, value_name = "T", conflicts_with = "claims")]
    pub token: Option<String>,
    /// A JSON claims object taken as verified (iss, exp, scope, client_id, token_use, ...)
    #[arg(long, value_name = "JSON")]
    pub claims: Option<String>,
    /// One JSON object instead of text, for scripts
    #[arg(long)]
    pub json: bool,
}

/// Exit status: the request would be allowed.
pub const ALLOWED: u8 = 0;
/// Exit status: the request would be refused.
pub const REFUSED: u8 = 1;
/// Exit status: a usage or config error.
pub const USAGE: u8 = 2;

/// The explanation, as `--json` prints it (and the text is written from).
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    /// `None` when the path cannot be normalized (the request is refused 400).
    pub normalized_path: Option<String>,
    /// The route the request matches; `None` for no route (404, 405, 400) or an issuer endpoint.
    pub route: Option<RouteInfo>,
    /// The built-in issuer's endpoint the path names (`token`, `jwks`, `discovery`).
    pub issuer_endpoint: Option<String>,
    /// What the token (or the claims) carries; `None` without either.
    pub token: Option<TokenReport>,
    pub allowed: bool,
    /// `allow`, `deny`, or `would_deny`: a route in audit mode (`enforce = false`) whose token
    /// or scope check refuses the request, which is forwarded anyway, without identity.
    pub decision: String,
    /// For `would_deny`: the refusal an enforcing route would answer with.
    pub would_answer: Option<ResponseShape>,
    /// The status the gateway answers with itself; `None` when it forwards (the upstream answers)
    /// or serves an issuer endpoint.
    pub status: Option<u16>,
    /// Why the request is refused, as the access log and metrics name it; `None` when allowed.
    pub reason: Option<String>,
    /// The answer in one line of words.
    pub answer: String,
    /// Where an allowed request is forwarded.
    pub forward: Option<Forward>,
    /// The response the gateway writes itself (a refusal in the configured `compat` mode, or a
    /// mock route's response).
    pub response: Option<ResponseShape>,
}

#[derive(Debug, Serialize)]
pub struct RouteInfo {
    pub template: String,
    /// The route's methods, or `["ANY"]`.
    pub methods: Vec<String>,
    /// `none` or `jwt`.
    pub auth: String,
    pub scopes_any_of: Vec<String>,
    pub scopes_all_of: Vec<String>,
    /// False for a route in audit mode (`enforce = false`).
    pub enforce: bool,
    /// `upstream NAME (URL)` or `mock STATUS`.
    pub target: String,
}

#[derive(Debug, Serialize)]
pub struct TokenReport {
    /// `token` or `claims`.
    pub source: String,
    /// False when the token is not a decodable JWT.
    pub decoded: bool,
    pub issuer: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub exp: Option<u64>,
    pub expired: Option<bool>,
    pub token_use: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub signature_checked: bool,
    /// How the signature was checked, or why it was not.
    pub signature: String,
}

#[derive(Debug, Serialize)]
pub struct Forward {
    pub upstream: String,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct ResponseShape {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Runs the command; returns the exit status.
pub fn main(config: &Path, args: &ExplainArgs) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return USAGE;
        }
    };
    match rt.block_on(explain(config, args)) {
        Ok(e) => {
            if args.json {
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
            } else {
                print!("{}", text(&e));
            }
            if e.allowed {
                ALLOWED
            } else {
                REFUSED
            }
        }
        Err(message) => {
            eprintln!("{message}");
            USAGE
        }
    }
}

/// What the request would get. `Err` is a usage or config error, as printed.
pub async fn explain(path: &Path, args: &ExplainArgs) -> Result<Explanation, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let builtin_key_local = config.issuer.as_ref().is_some_and(|b| b.signing_key.is_some())
        || crate::snapshot::persisted_signing_key(&config).is_some();
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).map_err(|e| e.to_string())?);
    let snap = Snapshot::offline(config, &metrics).map_err(|e| e.to_string())?;
    let cfg = &snap.config;

    let method =
        Method::from_bytes(args.method.as_bytes()).map_err(|_| format!("{:?} is not a method", args.method))?;
    let uri: Uri = match args.path.parse() {
        Ok(u) if args.path.starts_with('/') => u,
        _ => {
            return Err(format!(
                "{:?} is not a request target (a path starting with '/', and an optional query)",
                args.path
            ))
        }
    };
    let mut req = Request::builder().method(method.clone()).uri(uri.clone()).header(header::HOST, "localhost");
    let token = args.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = token {
        let value =
            HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| "--token is not a header value".to_owned())?;
        req = req.header(&cfg.auth.header, value);
    }
    let (mut parts, ()) = req.body(()).map_err(|e| e.to_string())?.into_parts();

    // Where the principal comes from, and what to say about the signature.
    let mut report = None;
    let mut given: Option<Result<Arc<Principal>, Reject>> = None;
    if let Some(json) = &args.claims {
        let claims: Value = serde_json::from_str(json).map_err(|e| format!("--claims is not JSON: {e}"))?;
        if !claims.is_object() {
            return Err("--claims is not a JSON object".to_owned());
        }
        let mut r = describe(None, &claims, "claims");
        r.signature = "not applicable: the claims are taken as verified".to_owned();
        report = Some(r);
        given = Some(snap.verifier.principal_from_claims(json.as_bytes()).map(Arc::new));
    } else if let Some(t) = token {
        let (header, claims) = decode(t);
        let mut r = describe(header.as_ref(), claims.as_ref().unwrap_or(&Value::Null), "token");
        r.decoded = header.is_some() && claims.is_some();
        let issuer = r.issuer.as_deref().and_then(|iss| snap.verifier.issuer(iss));
        match issuer {
            _ if !r.decoded => r.signature = "not checked: the token is not a JWT".to_owned(),
            None => {
                r.signature = match &r.issuer {
                    Some(iss) => format!("not checked: issuer {iss} is not configured"),
                    None => "not checked: the token names no issuer".to_owned(),
                }
            }
            Some(keys) => {
                let c = &keys.config;
                let local = match &c.source {
                    KeySource::Builtin => builtin_key_local,
                    _ => keys.has_keys(),
                };
                if local {
                    r.signature_checked = true;
                    r.signature = match &c.source {
                        KeySource::File(p) => format!("checked against jwks_file {}", p.display()),
                        KeySource::Builtin => "checked against the built-in issuer's key".to_owned(),
                        KeySource::Uri(_) | KeySource::Discovery => {
                            "checked against the key set persisted in key_cache_dir".to_owned()
                        }
                    };
                } else {
                    let why = match &c.source {
                        KeySource::Builtin => "the built-in issuer's key is generated at start".to_owned(),
                        KeySource::Uri(u) => format!("keys for {} are fetched from {u} at run time", c.issuer),
                        KeySource::Discovery => format!(
                            "keys for {} are fetched from {}/.well-known/openid-configuration at run time",
                            c.issuer,
                            c.issuer.trim_end_matches('/')
                        ),
                        KeySource::File(p) => format!("jwks_file {} cannot be read", p.display()),
                    };
                    r.signature = format!("not checked: {why}; decided on the claims as if the signature were good");
                    given = Some(snap.verifier.unverified_principal(t).map(Arc::new));
                }
            }
        }
        report = Some(r);
    }

    // The route, for the words; the decision below finds it again, as the gateway does.
    let normalized = route::normalize(uri.path()).ok().map(|p| p.into_owned());
    let mut issuer_endpoint = None;
    let mut route_info = None;
    if let Some(p) = &normalized {
        match BuiltinIssuer::endpoint(p).filter(|_| snap.issuer.is_some()) {
            Some(ep) => issuer_endpoint = Some(format!("{ep:?}").to_lowercase()),
            None => {
                if let Match::Found(r) = snap.table.lookup(p, &method) {
                    route_info = Some(route_report(r));
                }
            }
        }
    }

    let conn = ConnInfo::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), false);
    let request_id = HeaderValue::from_static("explain");
    let mut access = Access::default();
    let from = match &given {
        Some(g) => PrincipalFrom::Given(g),
        None => PrincipalFrom::Verifier,
    };
    let decided = proxy::decide_with(&snap, &conn, &mut parts, &request_id, &mut access, from).await;
    let mut e = Explanation {
        method: args.method.clone(),
        path: args.path.clone(),
        normalized_path: normalized,
        route: route_info,
        issuer_endpoint,
        token: report,
        allowed: decided.is_ok(),
        decision: if decided.is_err() { "deny" } else { "allow" }.to_owned(),
        would_answer: None,
        status: None,
        reason: None,
        answer: String::new(),
        forward: None,
        response: None,
    };
    match decided {
        Ok(Decision::Forward(u)) => {
            let url = match parts.uri.scheme() {
                Some(_) => parts.uri.to_string(),
                None => format!("{}{}", u.config.scheme_authority, parts.uri),
            };
            e.answer = format!("forward to upstream {} as {url}", u.config.name);
            e.forward = Some(Forward { upstream: u.config.name.clone(), url });
        }
        Ok(Decision::Mock(m)) => {
            e.status = Some(m.status.as_u16());
            e.answer = format!("mock {}", m.status.as_u16());
            e.response = Some(ResponseShape {
                status: m.status.as_u16(),
                headers: BTreeMap::from([(
                    header::CONTENT_TYPE.as_str().to_owned(),
                    String::from_utf8_lossy(m.content_type.as_bytes()).into_owned(),
                )]),
                body: String::from_utf8_lossy(&m.body).into_owned(),
            });
        }
        Ok(Decision::Issuer(_, ep)) => {
            e.answer = format!("issuer endpoint ({})", format!("{ep:?}").to_lowercase());
        }
        Err(reject) => {
            let reason = reject.reason();
            let shape = answer_of(reject, cfg.server.compat).await;
            e.status = Some(shape.status);
            e.reason = Some(reason.to_owned());
            e.answer = format!("{} ({reason})", StatusCode::from_u16(shape.status).unwrap_or(StatusCode::UNAUTHORIZED));
            e.response = Some(shape);
        }
    }
    if let Some(reject) = access.would_deny.take() {
        let reason = reject.reason();
        let shape = answer_of(reject, cfg.server.compat).await;
        e.decision = "would_deny".to_owned();
        e.reason = Some(reason.to_owned());
        let status = StatusCode::from_u16(shape.status).unwrap_or(StatusCode::UNAUTHORIZED);
        e.answer = format!("{}, without identity (audit mode; enforced: {status} ({reason}))", e.answer);
        e.would_answer = Some(shape);
    }
    Ok(e)
}

/// The answer the gateway writes for `reject` in the `compat` mode: status, headers and body.
async fn answer_of(reject: Reject, compat: Compat) -> ResponseShape {
    let resp = reject.into_compat_response(compat);
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match resp.into_body() {
        http_body_util::Either::Right(full) => {
            full.collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default()
        }
        http_body_util::Either::Left(_) => String::new(),
    };
    ResponseShape { status, headers, body }
}

fn route_report(r: &route::CompiledRoute) -> RouteInfo {
    let methods = match &r.methods {
        Methods::Any => vec!["ANY".to_owned()],
        Methods::Only(m) => m.iter().map(|m| m.as_str().to_owned()).collect(),
    };
    let (auth, any, all) = match &r.auth {
        RouteAuth::None => ("none", Vec::new(), Vec::new()),
        RouteAuth::Jwt { any_of, all_of } => ("jwt", any_of.clone(), all_of.clone()),
    };
    let target = match &r.target {
        Target::Upstream(u) => {
            format!("upstream {} ({}{})", u.config.name, u.config.scheme_authority, u.config.path_prefix)
        }
        Target::Mock(m) => format!("mock {}", m.status.as_u16()),
    };
    RouteInfo {
        template: r.template.clone(),
        methods,
        auth: auth.to_owned(),
        scopes_any_of: any,
        scopes_all_of: all,
        enforce: r.enforce,
        target,
    }
}

/// The header and claims of a JWT, decoded without any check (each `None` when not decodable).
fn decode(token: &str) -> (Option<Value>, Option<Value>) {
    let mut parts = token.split('.');
    let part = |p: Option<&str>| -> Option<Value> {
        let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p?).ok()?).ok()?;
        v.is_object().then_some(v)
    };
    let (h, c) = (part(parts.next()), part(parts.next()));
    if parts.next().is_none() || parts.next().is_some() {
        return (None, None);
    }
    (h, c)
}

/// What a token's header and claims say, for the report (the signature fields are filled in by
/// the caller).
fn describe(header: Option<&Value>, claims: &Value, source: &str) -> TokenReport {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let exp = claims.get("exp").and_then(Value::as_f64).filter(|e| e.is_finite()).map(|e| e.max(0.0) as u64);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split_whitespace().map(str::to_owned).collect()
        }
        (None, Some(Value::Array(a))) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    TokenReport {
        source: source.to_owned(),
        decoded: true,
        issuer: text(claims, "iss"),
        kid: header.and_then(|h| text(h, "kid")),
        alg: header.and_then(|h| text(h, "alg")),
        exp,
        expired: exp.map(|e| now >= e),
        token_use: text(claims, "token_use"),
        client_id: text(claims, "client_id"),
        scopes,
        signature_checked: false,
        signature: String::new(),
    }
}

/// The explanation as text; its last line is always the answer.
pub fn text(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "request:   {} {}", e.method, e.path);
    match &e.normalized_path {
        Some(p) => {
            let _ = writeln!(s, "path:      {p}");
        }
        None => {
            let _ = writeln!(s, "path:      cannot be normalized");
        }
    }
    if let Some(ep) = &e.issuer_endpoint {
        let _ = writeln!(s, "route:     the built-in issuer's {ep} endpoint");
    }
    match &e.route {
        Some(r) => {
            let _ = writeln!(s, "route:     {} [{}] -> {}", r.template, r.methods.join(","), r.target);
            let mut policy = r.auth.clone();
            if r.auth == "none" {
                policy = "auth none (public)".to_owned();
            } else {
                policy = format!("auth {policy}");
                if !r.scopes_any_of.is_empty() {
                    let _ = write!(policy, ", any of [{}]", r.scopes_any_of.join(" "));
                }
                if !r.scopes_all_of.is_empty() {
                    let _ = write!(policy, ", all of [{}]", r.scopes_all_of.join(" "));
                }
            }
            if !r.enforce {
                policy.push_str("; audit mode (enforce = false): refusals are logged, not answered");
            }
            let _ = writeln!(s, "policy:    {policy}");
        }
        None if e.issuer_endpoint.is_none() => {
            let why = match e.reason.as_deref() {
                Some("method_not_allowed") => {
                    let allow = e.response.as_ref().and_then(|r| r.headers.get("allow"));
                    format!("none for this method (allow: {})", allow.map_or("", String::as_str))
                }
                Some("bad_request") => "none: the request is malformed".to_owned(),
                Some("header_too_large") => "none: the request head is too large".to_owned(),
                _ => "none for this path".to_owned(),
            };
            let _ = writeln!(s, "route:     {why}");
        }
        None => {}
    }
    if let Some(t) = &e.token {
        let label = if t.source == "claims" { "claims:" } else { "token:" };
        if t.decoded {
            let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
            if t.source == "claims" {
                let _ = writeln!(s, "{label:<10} issuer {}", or(&t.issuer));
            } else {
                let _ = writeln!(s, "{label:<10} issuer {}, kid {}, alg {}", or(&t.issuer), or(&t.kid), or(&t.alg));
            }
            let exp = match (t.exp, t.expired) {
                (Some(exp), Some(expired)) => {
                    let at = UNIX_EPOCH + Duration::from_secs(exp);
                    let when = humantime::format_rfc3339_seconds(at);
                    if expired {
                        format!("expires {when} (expired)")
                    } else {
                        format!("expires {when} (not expired)")
                    }
                }
                _ => "no exp (the gateway refuses a token without one)".to_owned(),
            };
            let _ = writeln!(s, "           {exp}");
            let _ = writeln!(s, "           token_use {}, client_id {}", or(&t.token_use), or(&t.client_id));
            let _ = writeln!(s, "           scopes [{}]", t.scopes.join(" "));
        } else {
            let _ = writeln!(s, "{label:<10} not a JWT");
        }
        let _ = writeln!(s, "signature: {}", t.signature);
    } else if e.route.as_ref().is_some_and(|r| r.auth == "jwt") {
        let _ = writeln!(s, "token:     (none)");
    }
    if let Some(r) = &e.response {
        let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "response:  {} {}", r.status, headers.join("; "));
        let _ = writeln!(s, "           {}", r.body);
    }
    if let Some(r) = &e.would_answer {
        let _ = writeln!(s, "enforced:  {} {}", r.status, r.body);
    }
    let verdict = if e.allowed { "allowed" } else { "refused" };
    let _ = writeln!(s, "answer:    {verdict}: {}", e.answer);
    s
}
