//! Upstreams: one pooled client each, the URI rewrite, header hygiene and timeouts.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;
use crate::error::Reject;
use crate::pool::{self, H1Pool, UpstreamBody};

/// Hop-by-hop headers, RFC 9110 §7.6.1 (plus the legacy `keep-alive` and `proxy-connection`):
/// they describe one connection and are never forwarded. Headers named in `Connection` are
/// removed as well.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Method-override headers let a client make a framework see another method than the one the
/// route table authorized; they are never forwarded.
static METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

fn native_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipping an unreadable system root certificate");
        }
        store.add_parsable_certificates(found.certs);
        store
    })
}

/// Reads a PEM bundle of CA certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_owned());
    }
    Ok(certs)
}

/// An http+https connector: system roots plus the optional CA bundle, ALPN h2 and http/1.1.
pub fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut roots = native_roots().clone();
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// How requests reach an upstream.
enum Transport {
    /// Plain HTTP: our own lean HTTP/1.1 keep-alive pool, the hot path.
    Plain(Arc<H1Pool>),
    /// HTTPS: hyper-util's pooled client (TLS, ALPN, HTTP/2).
    Tls(Box<UpstreamClient>),
}

pub struct Upstream {
    pub config: UpstreamConfig,
    scheme: Scheme,
    authority: Authority,
    transport: Transport,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        let base: Uri = config.scheme_authority.parse().map_err(|e| format!("{}: {e}", config.scheme_authority))?;
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned()) else {
            return Err(format!("{}: not scheme://authority", config.scheme_authority));
        };
        let transport = if config.https {
            let connector = https_connector(config.ca_file.as_deref(), config.connect_timeout)?;
            Transport::Tls(Box::new(
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(pool::IDLE_TIMEOUT)
                    // Like NGINX's `keepalive N`: a burst may open many upstream connections,
                    // only this many stay open idle afterwards.
                    .pool_max_idle_per_host(pool::MAX_IDLE)
                    .build(connector),
            ))
        } else {
            Transport::Plain(Arc::new(H1Pool::new(&authority, config.connect_timeout)?))
        };
        Ok(Upstream { config, scheme, authority, transport })
    }

    /// The upstream URI: its path prefix, the normalized path, and the request's raw query;
    /// origin-form for the plain-HTTP pool, with the upstream's scheme and authority for the
    /// HTTPS client (which connects by the URI).
    pub fn uri(&self, request: &Uri, normalized: &str) -> Result<Uri, Reject> {
        let path_and_query = match request.path_and_query() {
            // Already normal and nothing to prepend: reuse the request's bytes as they are.
            Some(pq) if self.config.path_prefix.is_empty() && pq.path() == normalized => pq.clone(),
            _ => {
                let prefix = &self.config.path_prefix;
                let query = request.query();
                let mut s = String::with_capacity(prefix.len() + normalized.len() + query.map_or(0, |q| q.len() + 1));
                s.push_str(prefix);
                s.push_str(normalized);
                if let Some(q) = query {
                    s.push('?');
                    s.push_str(q);
                }
                PathAndQuery::try_from(s).map_err(|_| Reject::BadRequest)?
            }
        };
        let mut parts = http::uri::Parts::default();
        if matches!(self.transport, Transport::Tls(_)) {
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
        }
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|_| Reject::BadRequest)
    }

    /// Sends the prepared request; waits at most `timeout` for the response head.
    pub async fn send(&self, mut req: Request<Incoming>, timeout: Duration) -> Result<Response<UpstreamBody>, Reject> {
        // The client picks the protocol to the upstream (h2 only when ALPN says so).
        *req.version_mut() = Version::HTTP_11;
        match &self.transport {
            Transport::Plain(pool) => self.outcome(tokio::time::timeout(timeout, pool.send(req)).await),
            Transport::Tls(client) => self.outcome(
                tokio::time::timeout(timeout, client.request(req))
                    .await
                    .map(|r| r.map(|resp| resp.map(UpstreamBody::unpooled))),
            ),
        }
    }

    fn outcome<E: std::fmt::Display>(
        &self,
        r: Result<Result<Response<UpstreamBody>, E>, tokio::time::error::Elapsed>,
    ) -> Result<Response<UpstreamBody>, Reject> {
        match r {
            Err(_) => Err(Reject::GatewayTimeout),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.config.name, error = %e, "upstream request failed");
                Err(Reject::BadGateway)
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// True when the request asks to switch to WebSocket (RFC 6455 §4.1: `Connection: upgrade`
/// and `websocket` among the `Upgrade` protocols), the one protocol the gateway relays. Any
/// other `Upgrade` (`h2c`, `TLS/1.0`, ...) is a hop-by-hop header that the hygiene drops: the
/// request goes on as an ordinary one, which RFC 9110 §7.8 allows ("a server MAY ignore a
/// received Upgrade header field").
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    upgrade_protocols(headers).any(|p| p.eq_ignore_ascii_case(WEBSOCKET))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The protocol the gateway relays after a 101, and the one `Upgrade` value it forwards.
pub const WEBSOCKET: &str = "websocket";

/// True when a 101 answer switches to WebSocket and nothing else: its `Upgrade` names exactly
/// that one protocol. Any other 101 is not relayed.
pub fn switches_to_websocket(headers: &HeaderMap) -> bool {
    let mut protocols = upgrade_protocols(headers);
    protocols.next().is_some_and(|p| p.eq_ignore_ascii_case(WEBSOCKET)) && protocols.next().is_none()
}

/// The protocol names of every `Upgrade` line, without versions (`websocket/13` is `websocket`).
fn upgrade_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.split('/').next().unwrap_or_default().trim())
        .filter(|p| !p.is_empty())
}

/// True for a header name that the hygiene below may remove. Any header that `Connection`
/// names comes with a `Connection` header, which is itself on the list.
fn may_strip(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || METHOD_OVERRIDES.contains(name)
        || name == header::UPGRADE
        || name.as_str().starts_with("x-auth-")
}

/// Request hygiene: hop-by-hop headers, those `Connection` names and those a client could use
/// to claim an identity or another method go. Returns whether the request is an upgrade.
/// The common request has none of them, and then costs one pass over its header names.
pub fn strip_request(headers: &mut HeaderMap) -> bool {
    if !headers.keys().any(may_strip) {
        return false;
    }
    let upgrade = is_upgrade(headers);
    strip_hop_by_hop(headers, upgrade);
    strip_spoofable(headers);
    upgrade
}

/// Response hygiene: hop-by-hop headers and those `Connection` names go.
pub fn strip_response(headers: &mut HeaderMap) {
    if headers.keys().any(may_strip) {
        strip_hop_by_hop(headers, false);
    }
}

/// Removes hop-by-hop headers and those the `Connection` header names. For an upgrade the
/// `Upgrade` header and `Connection: upgrade` are what the next hop needs, so they are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        if conn.as_bytes() != b"keep-alive" && conn.as_bytes() != b"close" {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in named {
                if !(upgrade && name == header::UPGRADE) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes every header a client could use to claim an identity or another method.
pub fn strip_spoofable(headers: &mut HeaderMap) {
    for name in &METHOD_OVERRIDES {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("x-auth-")) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("x-auth-")).cloned().collect();
        for n in names {
            headers.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, foo"));
        h.insert("foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn the_one_pass_check_sees_every_header_the_hygiene_removes() {
        let names = HOP_BY_HOP.iter().chain(&METHOD_OVERRIDES).cloned().chain([
            header::UPGRADE,
            HeaderName::from_static("x-auth-sub"),
            HeaderName::from_static("x-auth-anything"),
        ]);
        for name in names {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("a"));
            h.insert(name.clone(), HeaderValue::from_static("v"));
            let _ = strip_request(&mut h);
            assert_eq!(h.len(), 1, "{name} kept in a request");
            h.insert(name.clone(), HeaderValue::from_static("v"));
            if name.as_str().starts_with("x-") {
                continue; // identity and method headers are not hop-by-hop in a response
            }
            strip_response(&mut h);
            assert_eq!(h.len(), 1, "{name} kept in a response");
        }
        let mut clean = HeaderMap::new();
        clean.insert(header::HOST, HeaderValue::from_static("a"));
        clean.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        clean.insert("x-authz", HeaderValue::from_static("kept"));
        assert!(!strip_request(&mut clean));
        assert_eq!(clean.len(), 3);
    }

    #[test]
    fn upgrade_keeps_what_the_next_hop_needs() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let with = |upgrade: &str, connection: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_str(upgrade).unwrap());
            h.insert(header::CONNECTION, HeaderValue::from_str(connection).unwrap());
            h
        };
        assert!(is_upgrade(&with("WebSocket", "keep-alive, Upgrade")));
        assert!(is_upgrade(&with("h2c, websocket/13", "upgrade")));
        assert!(!is_upgrade(&with("h2c", "Upgrade, HTTP2-Settings")));
        assert!(!is_upgrade(&with("websocket", "keep-alive")));
        let mut h = with("h2c", "Upgrade, HTTP2-Settings");
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAAP__"));
        assert!(!strip_request(&mut h));
        assert!(h.is_empty(), "{h:?}");

        assert!(switches_to_websocket(&with("websocket", "upgrade")));
        assert!(!switches_to_websocket(&with("something-else", "upgrade")));
        assert!(!switches_to_websocket(&with("websocket, h2c", "upgrade")));
        assert!(!switches_to_websocket(&HeaderMap::new()));
    }

    #[test]
    fn spoofable_headers_go() {
        let mut h = HeaderMap::new();
        for n in ["x-auth-sub", "x-auth-whatever", "x-http-method-override", "x-method-override", "x-http-method"] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("v"));
        }
        h.insert("x-authz", HeaderValue::from_static("kept"));
        strip_spoofable(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }
}
