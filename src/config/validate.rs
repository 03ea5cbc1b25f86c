//! Raw structs -> the model: types, ranges, and references between sections, every problem
//! reported in one pass. A step that reports a problem returns no value; whether it did is told
//! by the diagnostics it added, not by a flag kept beside them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::diag::{Diags, Span};
use super::model::{
    Action, AuthConfig, BuiltinIssuerConfig, ClientConfig, ClientSecret, Compat, Config, IssuerConfig, KeyCacheConfig,
    KeySource, LogFormat, Methods, MockResponse, RouteAuth, RouteConfig, ScopeFailureStatus, ServerConfig, TlsConfig,
    UpstreamConfig, DEFAULT_LISTEN,
};
use super::raw::{RawAuth, RawBuiltin, RawConfig, RawIssuer, RawMock, RawRoute, RawServer, RawUpstream, Str};

pub(super) fn validate(raw: RawConfig, path: &Path, base: &Path, d: &mut Diags<'_>) -> Option<Config> {
    let server = validate_server(raw.server, base, d);
    let log = match raw.log.format {
        None => LogFormat::Json,
        Some(f) => match f.get_ref().0.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                d.at(&f.span(), format!("log.format must be \"json\" or \"text\", not {other:?}"));
                LogFormat::Json
            }
        },
    };
    // Read before `raw.auth` is taken: every route's `enforce` defaults to it.
    let enforce_default = raw.auth.enforce.unwrap_or(true);
    let auth = validate_auth(raw.auth, base, d);
    let mut upstreams = Vec::new();
    for (name, u) in raw.upstreams {
        if let Some(u) = validate_upstream(name, u, base, d) {
            upstreams.push(u);
        }
    }
    let mut routes = Vec::new();
    for r in raw.routes {
        if let Some(r) = validate_route(r, &upstreams, server.as_ref().map(|s| s.compat), enforce_default, d) {
            routes.push(r);
        }
    }
    let issuer = match raw.issuer {
        None => Some(None),
        Some(b) => validate_builtin(b, base, &auth, d).map(Some),
    };
    let (server, auth, issuer) = (server?, auth?, issuer?);
    Some(Config { path: path.to_owned(), server, log, auth, upstreams, routes, issuer })
}

fn validate_builtin(
    b: Spanned<RawBuiltin>,
    base: &Path,
    auth: &Option<AuthConfig>,
    d: &mut Diags<'_>,
) -> Option<BuiltinIssuerConfig> {
    let b = b.into_inner();
    let before = d.count();
    let issuer_span = b.issuer.span();
    let issuer = b.issuer.into_inner().0;
    if !(issuer.starts_with("http://") || issuer.starts_with("https://")) || issuer.ends_with('/') {
        d.at(&issuer_span, "issuer.issuer must be an http:// or https:// URL without a trailing '/'");
    }
    if let Some(a) = auth {
        if a.issuers.iter().any(|i| i.issuer == issuer) {
            d.at(&issuer_span, "the built-in issuer is trusted already; remove its [[auth.issuers]] entry");
        }
    }
    let signing_key_at = b.signing_key.as_ref().map_or_else(|| d.pos(&issuer_span), |k| d.pos(&k.span()));
    let signing_key = b.signing_key.map(|k| base.join(&k.get_ref().0));
    let token_ttl = match b.token_ttl {
        None => Duration::from_secs(3600),
        Some(t) if t.get_ref().0 >= Duration::from_secs(1) => t.get_ref().0,
        Some(t) => {
            d.at(&t.span(), "issuer.token_ttl must be at least 1s");
            Duration::from_secs(3600)
        }
    };
    let mut scopes: Vec<String> = Vec::new();
    for rs in b.resource_servers {
        let rs = rs.into_inner();
        let id = &rs.identifier.get_ref().0;
        if id.is_empty() || id.contains([' ', '/']) {
            d.at(&rs.identifier.span(), "a resource server identifier must be non-empty, without spaces or '/'");
        }
        for s in rs.scopes {
            let name = &s.get_ref().0;
            if name.is_empty() || name.contains(' ') {
                d.at(&s.span(), "a scope must be non-empty and contain no spaces");
            }
            scopes.push(format!("{id}/{name}"));
        }
    }
    let mut clients: Vec<ClientConfig> = Vec::new();
    for c in b.clients {
        let span = c.span();
        let c = c.into_inner();
        let client_id = c.client_id.get_ref().0.clone();
        if client_id.is_empty() || client_id.contains(':') {
            d.at(&c.client_id.span(), "client_id must be non-empty and contain no ':'");
        }
        if clients.iter().any(|x| x.client_id == client_id) {
            d.at(&c.client_id.span(), format!("client {client_id:?} is defined twice"));
        }
        let secret = match (c.client_secret_hash, c.client_secret) {
            (Some(h), None) => {
                if let Err(e) = argon2::PasswordHash::new(&h.get_ref().0) {
                    d.at(&h.span(), format!("client_secret_hash is not a hash from `scopegate hash-secret`: {e}"));
                }
                ClientSecret::Hash(h.into_inner().0)
            }
            (None, Some(p)) => ClientSecret::Plain(p.into_inner().0),
            _ => {
                d.at(&span, "a client needs exactly one of client_secret_hash or client_secret");
                ClientSecret::Plain(String::new())
            }
        };
        let mut allowed_scopes = Vec::new();
        for s in c.allowed_scopes {
            if !scopes.contains(&s.get_ref().0) {
                d.at(&s.span(), format!("scope {:?} is not defined by any [[issuer.resource_servers]]", s.get_ref().0));
            }
            allowed_scopes.push(s.into_inner().0);
        }
        clients.push(ClientConfig { client_id, secret, allowed_scopes });
    }
    d.clean_since(before).then_some(BuiltinIssuerConfig {
        issuer,
        signing_key,
        signing_key_at,
        token_ttl,
        scopes,
        clients,
    })
}

fn validate_server(s: RawServer, base: &Path, d: &mut Diags<'_>) -> Option<ServerConfig> {
    let before = d.count();
    let addr = |v: Option<Spanned<Str>>, key: &str, d: &mut Diags<'_>| -> Option<SocketAddr> {
        let v = v?;
        match v.get_ref().0.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                d.at(
                    &v.span(),
                    format!("server.{key} must be IP:PORT, like \"0.0.0.0:8080\", not {:?}", v.get_ref().0),
                );
                None
            }
        }
    };
    let listen = addr(s.listen, "listen", d).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
    let admin_listen = addr(s.admin_listen, "admin_listen", d);
    let max_header_bytes = positive(s.max_header_bytes, "server.max_header_bytes", 16384, d);
    let max_connections = positive(s.max_connections, "server.max_connections", 10000, d);
    // Zero would close every connection as soon as it has no request; it does not mean "never".
    let idle_timeout = match s.idle_timeout {
        None => Duration::from_secs(60),
        Some(t) if !t.get_ref().0.is_zero() => t.get_ref().0,
        Some(t) => {
            d.at(&t.span(), "server.idle_timeout must be more than 0, like \"60s\"");
            Duration::ZERO
        }
    };
    let compat = match s.compat {
        None => Compat::None,
        Some(c) => match c.get_ref().0.as_str() {
            "none" => Compat::None,
            "aws-rest" => Compat::AwsRest,
            "aws-http" => Compat::AwsHttp,
            other => {
                d.at(&c.span(), format!("server.compat must be \"aws-rest\", \"aws-http\" or \"none\", not {other:?}"));
                Compat::None
            }
        },
    };
    let tls = match s.tls {
        None => None,
        Some(t) => {
            let t = t.into_inner();
            let at = d.pos(&t.cert.span());
            Some(TlsConfig { cert: base.join(&t.cert.get_ref().0), key: base.join(&t.key.get_ref().0), at })
        }
    };
    if !d.clean_since(before) {
        return None;
    }
    Some(ServerConfig {
        tls,
        listen,
        admin_listen,
        request_timeout: s.request_timeout.map_or(Duration::from_secs(30), |v| v.0),
        header_read_timeout: s.header_read_timeout.map_or(Duration::from_secs(10), |v| v.0),
        idle_timeout,
        max_header_bytes: max_header_bytes?,
        max_connections: max_connections?,
        shutdown_grace: s.shutdown_grace.map_or(Duration::from_secs(20), |v| v.0),
        compat,
    })
}

fn positive(v: Option<Spanned<i64>>, key: &str, default: usize, d: &mut Diags<'_>) -> Option<usize> {
    match v {
        None => Some(default),
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                d.at(&v.span(), format!("{key} must be a positive integer"));
                None
            }
        },
    }
}

fn validate_auth(a: RawAuth, base: &Path, d: &mut Diags<'_>) -> Option<AuthConfig> {
    let before = d.count();
    let header = match a.header {
        None => HeaderName::from_static("authorization"),
        Some(h) => match HeaderName::from_bytes(h.get_ref().0.to_ascii_lowercase().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                d.at(&h.span(), format!("auth.header {:?} is not a valid header name", h.get_ref().0));
                HeaderName::from_static("authorization")
            }
        },
    };
    let scope_failure_status = match a.scope_failure_status {
        None => ScopeFailureStatus::Unauthorized,
        Some(s) => match *s.get_ref() {
            401 => ScopeFailureStatus::Unauthorized,
            403 => ScopeFailureStatus::Forbidden,
            other => {
                d.at(&s.span(), format!("auth.scope_failure_status must be 401 or 403, not {other}"));
                ScopeFailureStatus::Unauthorized
            }
        },
    };
    let cache_entries = match a.cache_entries {
        None => 65536,
        Some(c) => match usize::try_from(*c.get_ref()) {
            Ok(n) => n,
            Err(_) => {
                d.at(&c.span(), "auth.cache_entries must be 0 or a positive integer");
                0
            }
        },
    };
    let mut issuers = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for i in a.issuers {
        let span = i.span();
        if let Some(iss) = validate_issuer(i.into_inner(), &span, base, d) {
            if !seen.insert(iss.issuer.clone()) {
                d.at(&span, format!("issuer {:?} is configured twice", iss.issuer));
            }
            issuers.push(iss);
        }
    }
    if let Some(dir) = a.key_cache_dir.as_ref().filter(|d| d.get_ref().0.is_empty()) {
        d.at(&dir.span(), "auth.key_cache_dir must not be empty");
    }
    let key_cache = a.key_cache_dir.map(|dir| KeyCacheConfig {
        dir: base.join(&dir.get_ref().0),
        max_age: a.key_cache_max_age.map_or(Duration::from_secs(24 * 3600), |v| v.0),
    });
    d.clean_since(before).then(|| AuthConfig {
        header,
        leeway: a.leeway.map_or(Duration::from_secs(60), |v| v.0),
        scope_failure_status,
        cache_entries,
        forward_token: a.forward_token.unwrap_or(true),
        identity_headers: a.identity_headers.unwrap_or(true),
        enforce: a.enforce.unwrap_or(true),
        issuers,
        key_cache,
    })
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn validate_issuer(i: RawIssuer, span: &Span, base: &Path, d: &mut Diags<'_>) -> Option<IssuerConfig> {
    let before = d.count();
    let issuer = i.issuer.get_ref().0.clone();
    if issuer.is_empty() {
        d.at(&i.issuer.span(), "issuer must not be empty");
    }
    let discovery = i.discovery.as_ref().is_some_and(|v| *v.get_ref());
    let sources = usize::from(i.jwks_uri.is_some()) + usize::from(i.jwks_file.is_some()) + usize::from(discovery);
    let source = if sources != 1 {
        d.at(span, "an issuer needs exactly one key source: jwks_uri, jwks_file or discovery = true");
        None
    } else if let Some(u) = &i.jwks_uri {
        let url = &u.get_ref().0;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
            d.at(&u.span(), format!("jwks_uri must be an http:// or https:// URL, not {url:?}"));
        }
        Some(KeySource::Uri(url.clone()))
    } else if let Some(f) = &i.jwks_file {
        Some(KeySource::File(base.join(&f.get_ref().0)))
    } else {
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            d.at(&i.issuer.span(), "discovery = true needs an http:// or https:// issuer");
        }
        Some(KeySource::Discovery)
    };
    let algorithms = match &i.algorithms {
        None => vec![Algorithm::RS256],
        Some(list) => {
            if list.get_ref().is_empty() {
                d.at(&list.span(), "algorithms must not be empty");
            }
            let mut algs = Vec::new();
            for a in list.get_ref() {
                match parse_algorithm(&a.get_ref().0) {
                    Some(alg) if !algs.contains(&alg) => algs.push(alg),
                    Some(_) => {}
                    None => {
                        d.at(&a.span(), format!(
                            "algorithm {:?} is not allowed for a JWKS issuer (one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA; never none or HS*)",
                            a.get_ref().0
                        ));
                    }
                }
            }
            algs
        }
    };
    let refresh = i.refresh.map_or(Duration::from_secs(300), |v| v.0);
    let kid_miss_cooldown = i.kid_miss_cooldown.map_or(Duration::from_secs(30), |v| v.0);
    let source = source?;
    let at = match (&i.jwks_uri, &i.jwks_file) {
        (Some(v), _) | (None, Some(v)) => d.pos(&v.span()),
        (None, None) => d.pos(span),
    };
    d.clean_since(before).then(|| IssuerConfig {
        issuer,
        source,
        audiences: i.audiences.unwrap_or_default().into_iter().map(|s| s.0).collect(),
        token_use: i.token_use.map(|s| s.0),
        algorithms,
        refresh,
        kid_miss_cooldown,
        at,
    })
}

fn validate_upstream(name: String, u: Spanned<RawUpstream>, base: &Path, d: &mut Diags<'_>) -> Option<UpstreamConfig> {
    let u = u.into_inner();
    let url_span = u.url.span();
    let url = u.url.into_inner().0;
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            d.at(&url_span, format!("upstreams.{name}.url {url:?} is not a valid URL"));
            return None;
        }
    };
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            d.at(&url_span, format!("upstreams.{name}.url must start with http:// or https://"));
            return None;
        }
    };
    let Some(authority) = uri.authority() else {
        d.at(&url_span, format!("upstreams.{name}.url has no host"));
        return None;
    };
    if uri.query().is_some() {
        d.at(&url_span, format!("upstreams.{name}.url must not have a query string"));
        return None;
    }
    let ca_file_at = d.pos(&u.ca_file.as_ref().map_or(url_span, Spanned::span));
    let ca_file = u.ca_file.map(|f| base.join(&f.get_ref().0));
    Some(UpstreamConfig {
        scheme_authority: format!("{}://{}", if https { "https" } else { "http" }, authority),
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
        https,
        connect_timeout: u.connect_timeout.map_or(Duration::from_secs(2), |v| v.0),
        ca_file,
        ca_file_at,
        name,
    })
}

/// Headers a `claims_header` may not be, besides those the hygiene manages.
const RESERVED_FOR_CLAIMS: [&str; 6] =
    ["host", "content-length", "content-type", "authorization", "cookie", "x-request-id"];

fn validate_route(
    r: Spanned<RawRoute>,
    upstreams: &[UpstreamConfig],
    compat: Option<Compat>,
    enforce_default: bool,
    d: &mut Diags<'_>,
) -> Option<RouteConfig> {
    let span = r.span();
    let r = r.into_inner();
    let before = d.count();
    let path_span = r.path.span();
    let path = r.path.into_inner().0;
    let segments = crate::path::parse_template(&path).unwrap_or_else(|e| {
        d.at(&path_span, format!("route path {path:?}: {e}"));
        Vec::new()
    });
    let methods = match r.methods {
        None => Methods::Any,
        Some(list) => {
            let mut any = false;
            let mut only = Vec::new();
            if list.get_ref().is_empty() {
                d.at(&list.span(), "methods must not be empty (use [\"ANY\"])");
            }
            for m in list.get_ref() {
                let name = &m.get_ref().0;
                if name == "ANY" {
                    any = true;
                } else if !name.is_empty() && !name.bytes().any(|b| b.is_ascii_lowercase()) {
                    // Requests with a lower-case letter in the method are refused, so a route
                    // method is an upper-case token (`Method::from_bytes` checks the token).
                    match Method::from_bytes(name.as_bytes()) {
                        Ok(method) if !only.contains(&method) => only.push(method),
                        Ok(_) => {}
                        Err(_) => {
                            d.at(&m.span(), format!("{name:?} is not an HTTP method"));
                        }
                    }
                } else {
                    d.at(&m.span(), format!("{name:?} is not an HTTP method (write methods in upper case, or ANY)"));
                }
            }
            if any && !only.is_empty() {
                d.at(&list.span(), "ANY cannot be combined with other methods");
            }
            if any {
                Methods::Any
            } else {
                only.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                Methods::Only(only)
            }
        }
    };
    let any_of: Vec<String> = r.scopes.unwrap_or_default().into_iter().map(|s| s.0).collect();
    let all_of: Vec<String> = r.scopes_all.unwrap_or_default().into_iter().map(|s| s.0).collect();
    if any_of.iter().chain(&all_of).any(|s| s.is_empty() || s.contains(' ')) {
        d.at(&span, "a scope must be non-empty and contain no spaces");
    }
    let auth = match r.auth {
        None => RouteAuth::Jwt { any_of, all_of },
        Some(a) => match a.get_ref().0.as_str() {
            "jwt" => RouteAuth::Jwt { any_of, all_of },
            "none" => {
                if !any_of.is_empty() || !all_of.is_empty() {
                    d.at(&a.span(), "a route with auth = \"none\" cannot require scopes");
                }
                RouteAuth::None
            }
            other => {
                d.at(&a.span(), format!("auth must be \"jwt\" or \"none\", not {other:?}"));
                RouteAuth::None
            }
        },
    };
    let action = match (r.upstream, r.response) {
        (Some(_), Some(_)) => {
            d.at(&span, "a route has either `upstream` or `response`, not both");
            None
        }
        (None, None) => {
            d.at(&span, "a route needs `upstream` or a mock `response`");
            None
        }
        (Some(u), None) if upstreams.iter().any(|x| x.name == u.get_ref().0) => {
            Some(Action::Upstream(u.into_inner().0))
        }
        (Some(u), None) => {
            d.at(&u.span(), format!("upstream {:?} is not defined in [upstreams]", u.get_ref().0));
            None
        }
        (None, Some(m)) => validate_mock(m, d).map(Action::Mock),
    };
    let claims_header = match r.claims_header {
        None => None,
        Some(h) => {
            let name = &h.get_ref().0;
            if compat == Some(Compat::None) {
                d.at(&h.span(), "claims_header needs server.compat = \"aws-rest\" or \"aws-http\" (it gives the claims their shape)");
            }
            if auth == RouteAuth::None {
                d.at(&h.span(), "claims_header needs a route with auth = \"jwt\" (there are no claims otherwise)");
            }
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(n) if !crate::upstream::is_managed(&n) && !RESERVED_FOR_CLAIMS.contains(&n.as_str()) => Some(n),
                _ => {
                    d.at(&h.span(), format!("claims_header {name:?} is not a header name the gateway may set"));
                    None
                }
            }
        }
    };
    // A public route refuses no token, so audit mode would change nothing there: written on
    // one, `enforce = false` is a misunderstanding (the author meant another route, or thinks
    // the route is checked), and is refused. Inherited from `[auth] enforce`, it is ignored.
    let public = auth == RouteAuth::None;
    if let Some(e) = r.enforce.as_ref().filter(|e| public && !*e.get_ref()) {
        d.at(&e.span(), "enforce = false needs a route with auth = \"jwt\" (a public route refuses no token)");
    }
    let enforce = public || r.enforce.map_or(enforce_default, |e| *e.get_ref());
    let action = action?;
    let at = d.pos(&span);
    d.clean_since(before).then_some(RouteConfig { path, segments, methods, auth, action, claims_header, enforce, at })
}

fn validate_mock(m: Spanned<RawMock>, d: &mut Diags<'_>) -> Option<MockResponse> {
    let m = m.into_inner();
    let status = match m.status {
        None => StatusCode::OK,
        Some(s) => match u16::try_from(*s.get_ref()).ok().and_then(|n| StatusCode::from_u16(n).ok()) {
            Some(st) if st.as_u16() >= 200 => st,
            _ => {
                d.at(&s.span(), "response.status must be an HTTP status from 200 to 999");
                return None;
            }
        },
    };
    let content_type = match m.content_type {
        None => HeaderValue::from_static("application/json"),
        Some(c) => match HeaderValue::from_str(&c.get_ref().0) {
            Ok(v) => v,
            Err(_) => {
                d.at(&c.span(), "response.content_type is not a valid header value");
                return None;
            }
        },
    };
    Some(MockResponse { status, content_type, body: Bytes::from(m.body.map(|b| b.0).unwrap_or_default()) })
}
