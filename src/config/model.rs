//! The validated config: plain data, every default applied, every reference between sections
//! resolved. Nothing here reads a file or builds a runtime value; positions ([`Pos`]) are kept
//! for the settings whose problems show only when they are put to work.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use jsonwebtoken::Algorithm;

use super::diag::Pos;
use crate::path::Segment;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths inside it were resolved against its directory.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub log: LogFormat,
    pub auth: AuthConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub issuer: Option<BuiltinIssuerConfig>,
}

/// The built-in client-credentials issuer (`[issuer]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinIssuerConfig {
    pub issuer: String,
    /// PKCS#8 PEM; `None`: a key is generated at start, in memory only.
    pub signing_key: Option<PathBuf>,
    /// Where `signing_key` was written.
    pub signing_key_at: Pos,
    pub token_ttl: Duration,
    /// Every full scope name (`identifier/scope`) the resource servers define.
    pub scopes: Vec<String>,
    pub clients: Vec<ClientConfig>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// A PHC string from `scopegate hash-secret` (argon2id).
    Hash(String),
    /// Accepted with a warning at load.
    Plain(String),
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret, even in debug output.
        match self {
            ClientSecret::Hash(_) => f.write_str("Hash(..)"),
            ClientSecret::Plain(_) => f.write_str("Plain(..)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub client_id: String,
    pub secret: ClientSecret,
    pub allowed_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2, or a tunnel with
    /// no bytes either way) for this long is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsConfig>,
    /// Whose answers the gateway imitates (`server.compat`).
    pub compat: Compat,
}

/// `server.compat`: answer like scopegate (`none`), like an API Gateway REST API with a Cognito
/// user pool authorizer (`aws-rest`), or like an HTTP API with a JWT authorizer (`aws-http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    #[default]
    None,
    AwsRest,
    AwsHttp,
}

/// `[server.tls]`: PEM files, reloaded when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where `cert` was written.
    pub at: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// How a refused scope check is answered (`auth.scope_failure_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeFailureStatus {
    /// REST API Cognito authorizer behaviour.
    Unauthorized,
    /// HTTP API JWT authorizer behaviour.
    Forbidden,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub header: HeaderName,
    pub leeway: Duration,
    pub scope_failure_status: ScopeFailureStatus,
    pub cache_entries: usize,
    pub forward_token: bool,
    pub identity_headers: bool,
    /// `auth.enforce`: the default of every route's `enforce`.
    pub enforce: bool,
    pub issuers: Vec<IssuerConfig>,
    /// `key_cache_dir`: where fetched key sets and a generated signing key are persisted.
    pub key_cache: Option<KeyCacheConfig>,
}

/// `[auth] key_cache_dir` and `key_cache_max_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCacheConfig {
    pub dir: PathBuf,
    /// A persisted key set older than this is not served.
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    Uri(String),
    File(PathBuf),
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery,
    /// The built-in issuer's own keys, handed over directly.
    Builtin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub source: KeySource,
    pub audiences: Vec<String>,
    pub token_use: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub refresh: Duration,
    pub kid_miss_cooldown: Duration,
    /// Where the key source was written.
    pub at: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    /// scheme://authority with the path prefix (no trailing slash) split off.
    pub scheme_authority: String,
    pub path_prefix: String,
    pub https: bool,
    pub connect_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Where `ca_file` was written.
    pub ca_file_at: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    /// Sorted, no duplicates.
    Only(Vec<Method>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    None,
    Jwt {
        /// The token needs at least one of these (empty: no requirement).
        any_of: Vec<String>,
        /// ... and all of these.
        all_of: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockResponse {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The name of one of `Config::upstreams`.
    Upstream(String),
    Mock(MockResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The template as written.
    pub path: String,
    /// The template parsed, once, by validation; the route table is built from it.
    pub(crate) segments: Vec<Segment>,
    pub methods: Methods,
    pub auth: RouteAuth,
    pub action: Action,
    /// `claims_header`: the header that carries the verified claims upstream, in the shape of
    /// `server.compat`.
    pub claims_header: Option<HeaderName>,
    /// `enforce` (default `auth.enforce`): false is audit mode, where a request the token or
    /// scope check would refuse is forwarded anyway, without identity headers. Always true on
    /// a route with `auth = "none"` (nothing there could be refused).
    pub enforce: bool,
    /// Where the route was written, for overlap errors and warnings.
    pub at: Pos,
}

impl RouteConfig {
    /// `METHODS TEMPLATE`, as warnings name a route: `GET,POST /books/{id}`, `ANY /x`.
    pub fn name(&self) -> String {
        let methods = match &self.methods {
            Methods::Any => "ANY".to_owned(),
            Methods::Only(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
        };
        format!("{methods} {}", self.path)
    }
}

impl Config {
    /// The routes in audit mode (`enforce = false`), by [`RouteConfig::name`], in config order.
    pub fn not_enforcing(&self) -> Vec<String> {
        self.routes.iter().filter(|r| !r.enforce).map(RouteConfig::name).collect()
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
