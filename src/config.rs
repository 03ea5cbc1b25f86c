//! gateway.toml: strict TOML -> raw structs -> `validate()` -> an immutable [`Config`].
//!
//! Unknown keys are errors (a typo must not silently disable security). Every string goes
//! through `${NAME}` expansion as it is deserialized, so an unset variable is reported at the
//! position of the string that names it. Parse errors stop at the first problem (that is how
//! TOML parsers work); validation then reports every problem it finds in one pass.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use jsonwebtoken::Algorithm;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// Diagnostics

/// One config problem, printed as `FILE:LINE:COL: message` (or `FILE: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub file: PathBuf,
    pub pos: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Diag>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A byte span in the config text, resolved to line and column when reported.
pub type Span = std::ops::Range<usize>;

/// Where a setting was written (1-based line and column), kept in the validated config for the
/// problems found only when the setting is put to work: a file it names that cannot be read, a
/// key that does not parse, two routes that overlap.
///
/// A position is not part of a setting's identity: two settings equal in everything but where
/// they were written compare equal, so moving a table within the file does not rebuild (and
/// reconnect) what it configures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl PartialEq for Pos {
    fn eq(&self, _: &Pos) -> bool {
        true
    }
}

impl Eq for Pos {}

impl std::hash::Hash for Pos {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Diag {
    /// A problem with the setting written at `pos` in `file`.
    pub fn at(file: &Path, pos: Pos, message: impl Into<String>) -> Diag {
        Diag { file: file.to_owned(), pos: Some((pos.line, pos.col)), message: message.into() }
    }
}

struct Diags<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<Diag>,
}

impl<'a> Diags<'a> {
    fn at(&mut self, span: &Span, message: impl Into<String>) {
        let pos = Some(line_col(self.text, span.start));
        self.list.push(Diag { file: self.file.to_owned(), pos, message: message.into() });
    }
    fn whole(&mut self, message: impl Into<String>) {
        self.list.push(Diag { file: self.file.to_owned(), pos: None, message: message.into() });
    }
    /// The line and column where `span` starts.
    fn pos(&self, span: &Span) -> Pos {
        let (line, col) = line_col(self.text, span.start);
        Pos { line, col }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------------
// Raw values: strings with ${ENV} expansion, durations

/// A string after `${NAME}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Str(String);

impl JsonSchema for Str {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "String".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(Str).map_err(serde::de::Error::custom)
    }
}

/// Replaces each `${NAME}` with the environment variable `NAME`; an unset one is an error.
pub fn expand_env(raw: &str) -> Result<String, String> {
    expand_with(raw, |name| std::env::var(name).ok())
}

/// [`expand_env`] with the variables looked up by `lookup`.
fn expand_with(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated ${{ in {raw:?}"));
        };
        let name = &after[..end];
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A duration written like `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A number and a unit, like \"250ms\", \"30s\", \"5m\" or \"1h\".",
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$"
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Str(s) = Str::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, like \"250ms\", \"30s\", \"5m\" or \"1h\"")
    })
}

// ---------------------------------------------------------------------------------------------
// The file as written

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Listeners, timeouts and limits.
    #[serde(default)]
    server: RawServer,
    /// Log format.
    #[serde(default)]
    log: RawLog,
    /// How tokens are read and checked, and the trusted issuers.
    #[serde(default)]
    auth: RawAuth,
    /// Upstreams by name; routes refer to them.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawUpstream>")]
    upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// The route table.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    routes: Vec<Spanned<RawRoute>>,
    /// The built-in OAuth 2.0 client-credentials issuer.
    #[schemars(with = "Option<RawBuiltin>")]
    issuer: Option<Spanned<RawBuiltin>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Builtin")]
struct RawBuiltin {
    /// The `iss` of minted tokens: an http:// or https:// URL without a trailing "/".
    #[schemars(with = "Str")]
    issuer: Spanned<Str>,
    /// PKCS#8 PEM RSA or EC (P-256, P-384) private key; omitted: generated at start, in memory only.
    #[schemars(with = "Option<Str>")]
    signing_key: Option<Spanned<Str>>,
    /// Lifetime of minted tokens, at least 1s. Default "1h".
    #[schemars(with = "Option<Dur>")]
    token_ttl: Option<Spanned<Dur>>,
    /// Resource servers and the scopes they define.
    #[serde(default)]
    #[schemars(with = "Vec<RawResourceServer>")]
    resource_servers: Vec<Spanned<RawResourceServer>>,
    /// Client-credentials app clients.
    #[serde(default)]
    #[schemars(with = "Vec<RawClient>")]
    clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ResourceServer")]
struct RawResourceServer {
    /// Resource server name (no spaces or "/"); scopes are named "identifier/scope".
    #[schemars(with = "Str")]
    identifier: Spanned<Str>,
    /// Scope names this resource server defines.
    #[serde(default)]
    #[schemars(with = "Vec<Str>")]
    scopes: Vec<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Client")]
struct RawClient {
    /// Client id: non-empty, no ":".
    #[schemars(with = "Str")]
    client_id: Spanned<Str>,
    /// Argon2id hash from `scopegate hash-secret`.
    #[schemars(with = "Option<Str>")]
    client_secret_hash: Option<Spanned<Str>>,
    /// Plain secret (discouraged; prefer client_secret_hash).
    #[schemars(with = "Option<Str>")]
    client_secret: Option<Spanned<Str>>,
    /// Full scope names ("identifier/scope") this client may get.
    #[serde(default)]
    #[schemars(with = "Vec<Str>")]
    allowed_scopes: Vec<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Server")]
struct RawServer {
    /// Data-plane address, IP:PORT. Default "0.0.0.0:8080". Restart to change.
    #[schemars(with = "Option<Str>")]
    listen: Option<Spanned<Str>>,
    /// Admin listener address (/metrics, /healthz, /readyz), IP:PORT; omitted: disabled. Restart to change.
    #[schemars(with = "Option<Str>")]
    admin_listen: Option<Spanned<Str>>,
    /// Longest wait for the upstream response head (504 after). Default "30s".
    request_timeout: Option<Dur>,
    /// Time a connection has to deliver a complete request head. Default "10s".
    header_read_timeout: Option<Dur>,
    /// A connection with no request in flight for this long is closed (HTTP/1.1, HTTP/2, WebSocket tunnels). Default "60s".
    #[schemars(with = "Option<Dur>")]
    idle_timeout: Option<Spanned<Dur>>,
    /// Largest request head in bytes (431 beyond). Default 16384.
    #[schemars(with = "Option<i64>")]
    max_header_bytes: Option<Spanned<i64>>,
    /// Connections served at once; more wait. Default 10000. Restart to change.
    #[schemars(with = "Option<i64>")]
    max_connections: Option<Spanned<i64>>,
    /// Drain time after SIGTERM/SIGINT. Default "20s".
    shutdown_grace: Option<Dur>,
    /// Terminate TLS on the data-plane listener.
    #[schemars(with = "Option<RawTls>")]
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
struct RawTls {
    /// PEM certificate chain.
    #[schemars(with = "Str")]
    cert: Spanned<Str>,
    /// PEM private key.
    #[schemars(with = "Str")]
    key: Spanned<Str>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Log")]
struct RawLog {
    /// "json" (default) or "text". Restart to change.
    #[schemars(with = "Option<Str>")]
    format: Option<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
struct RawAuth {
    /// Header the token is read from. Default "authorization".
    #[schemars(with = "Option<Str>")]
    header: Option<Spanned<Str>>,
    /// Clock skew allowed on exp, nbf, iat. Default "60s".
    leeway: Option<Dur>,
    /// 401 (default, REST API behaviour) or 403 (HTTP API behaviour) for a token without the scopes.
    #[schemars(with = "Option<i64>")]
    scope_failure_status: Option<Spanned<i64>>,
    /// Verified-token cache size; 0 disables it. Default 65536.
    #[schemars(with = "Option<i64>")]
    cache_entries: Option<Spanned<i64>>,
    /// Pass the token header to the upstream. Default true.
    forward_token: Option<bool>,
    /// Set x-auth-sub, x-auth-client-id, x-auth-scope, x-auth-issuer. Default true.
    identity_headers: Option<bool>,
    /// Trusted token issuers.
    #[serde(default)]
    #[schemars(with = "Vec<RawIssuer>")]
    issuers: Vec<Spanned<RawIssuer>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Issuer")]
struct RawIssuer {
    /// Exact match on the token's iss.
    #[schemars(with = "Str")]
    issuer: Spanned<Str>,
    /// URL of the key set.
    #[schemars(with = "Option<Str>")]
    jwks_uri: Option<Spanned<Str>>,
    /// Local JWKS file (watched).
    #[schemars(with = "Option<Str>")]
    jwks_file: Option<Spanned<Str>>,
    /// Read jwks_uri from {issuer}/.well-known/openid-configuration.
    #[schemars(with = "Option<bool>")]
    discovery: Option<Spanned<bool>>,
    /// aud must contain one of these (or client_id equal one when aud is absent).
    audiences: Option<Vec<Str>>,
    /// Required token_use claim ("access" or "id").
    token_use: Option<Str>,
    /// Allowed algorithms. Default ["RS256"].
    #[schemars(with = "Option<Vec<Str>>")]
    algorithms: Option<Spanned<Vec<Spanned<Str>>>>,
    /// Keys are re-fetched at least this often. Default "5m".
    refresh: Option<Dur>,
    /// At most one re-fetch per cooldown for unknown kids. Default "30s".
    kid_miss_cooldown: Option<Dur>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Upstream")]
struct RawUpstream {
    /// http:// or https:// base URL; a path in it is prepended.
    #[schemars(with = "Str")]
    url: Spanned<Str>,
    /// Connect timeout. Default "2s".
    connect_timeout: Option<Dur>,
    /// Extra PEM CA bundle for https upstreams.
    #[schemars(with = "Option<Str>")]
    ca_file: Option<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
struct RawRoute {
    /// Template: literal segments, {name} = one segment, {name+} = the rest (last only).
    #[schemars(with = "Str")]
    path: Spanned<Str>,
    /// Upper-case methods, or ["ANY"] (default).
    #[schemars(with = "Option<Vec<Str>>")]
    methods: Option<Spanned<Vec<Spanned<Str>>>>,
    /// The token needs at least one of these.
    scopes: Option<Vec<Str>>,
    /// The token needs all of these.
    scopes_all: Option<Vec<Str>>,
    /// "jwt" (default) or "none" (public).
    #[schemars(with = "Option<Str>")]
    auth: Option<Spanned<Str>>,
    /// Name of the upstream to forward to.
    #[schemars(with = "Option<Str>")]
    upstream: Option<Spanned<Str>>,
    /// A mock answer instead of an upstream.
    #[schemars(with = "Option<RawMock>")]
    response: Option<Spanned<RawMock>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Mock")]
struct RawMock {
    /// HTTP status, 200-999. Default 200.
    #[schemars(with = "Option<i64>")]
    status: Option<Spanned<i64>>,
    /// Default "application/json".
    #[schemars(with = "Option<Str>")]
    content_type: Option<Spanned<Str>>,
    /// Body of the answer.
    body: Option<Str>,
}

// ---------------------------------------------------------------------------------------------
// The validated config

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
    pub issuers: Vec<IssuerConfig>,
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
    /// Index into `Config::upstreams`.
    Upstream(usize),
    Mock(MockResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub path: String,
    pub methods: Methods,
    pub auth: RouteAuth,
    pub action: Action,
    /// Where the route was written, for overlap errors and warnings.
    pub at: Pos,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// The JSON Schema of gateway.toml, generated from the types the file is parsed into, so it
/// names exactly the keys the parser accepts (`scopegate schema`, docs/gateway.schema.json).
pub fn schema() -> String {
    let mut schema = schemars::schema_for!(RawConfig).to_value();
    drop_null(&mut schema);
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".to_owned(), "scopegate gateway.toml".into());
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// TOML has no null: an optional key is one that may be left out, never one that may be null.
/// Removes the `null` alternatives schemars gives `Option` fields.
fn drop_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = v else {
        if let Value::Array(items) = v {
            items.iter_mut().for_each(drop_null);
        }
        return;
    };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            map.insert("type".to_owned(), only);
        }
    }
    if let Some(Value::Array(alts)) = map.get_mut("anyOf") {
        alts.retain(|a| a.get("type").is_none_or(|t| t != "null"));
        if let [only] = alts.as_slice() {
            let only = only.clone();
            map.remove("anyOf");
            if let Value::Object(inner) = only {
                map.extend(inner);
            }
        }
    }
    map.values_mut().for_each(drop_null);
}

impl Config {
    /// Reads, parses and validates the file: its syntax, types, ranges and the references
    /// between its sections. The files it names are read when a snapshot is built from it
    /// ([`crate::snapshot::compile`]). Used at start-up, by `check`, and by reloads.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![Diag { file: path.to_owned(), pos: None, message: format!("cannot read: {e}") }])
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut diags = Diags { file: path, text, list: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let message = e.message().trim().to_owned();
                match e.span() {
                    Some(span) => diags.at(&span, message),
                    None => diags.whole(message),
                }
                return Err(ConfigError(diags.list));
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let config = validate(raw, path, &base, &mut diags);
        match config {
            Some(config) if diags.list.is_empty() => Ok(config),
            _ => Err(ConfigError(diags.list)),
        }
    }
}

fn validate(raw: RawConfig, path: &Path, base: &Path, d: &mut Diags<'_>) -> Option<Config> {
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
    let auth = validate_auth(raw.auth, base, d);
    let mut upstreams = Vec::new();
    for (name, u) in raw.upstreams {
        if let Some(u) = validate_upstream(name, u, base, d) {
            upstreams.push(u);
        }
    }
    let mut routes = Vec::new();
    for r in raw.routes {
        if let Some(r) = validate_route(r, &upstreams, d) {
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
    let mut ok = true;
    let issuer_span = b.issuer.span();
    let issuer = b.issuer.into_inner().0;
    if !(issuer.starts_with("http://") || issuer.starts_with("https://")) || issuer.ends_with('/') {
        d.at(&issuer_span, "issuer.issuer must be an http:// or https:// URL without a trailing '/'");
        ok = false;
    }
    if let Some(a) = auth {
        if a.issuers.iter().any(|i| i.issuer == issuer) {
            d.at(&issuer_span, "the built-in issuer is trusted already; remove its [[auth.issuers]] entry");
            ok = false;
        }
    }
    let signing_key_at = b.signing_key.as_ref().map_or_else(|| d.pos(&issuer_span), |k| d.pos(&k.span()));
    let signing_key = b.signing_key.map(|k| base.join(&k.get_ref().0));
    let token_ttl = match b.token_ttl {
        None => Duration::from_secs(3600),
        Some(t) if t.get_ref().0 >= Duration::from_secs(1) => t.get_ref().0,
        Some(t) => {
            d.at(&t.span(), "issuer.token_ttl must be at least 1s");
            ok = false;
            Duration::from_secs(3600)
        }
    };
    let mut scopes: Vec<String> = Vec::new();
    for rs in b.resource_servers {
        let rs = rs.into_inner();
        let id = &rs.identifier.get_ref().0;
        if id.is_empty() || id.contains([' ', '/']) {
            d.at(&rs.identifier.span(), "a resource server identifier must be non-empty, without spaces or '/'");
            ok = false;
        }
        for s in rs.scopes {
            let name = &s.get_ref().0;
            if name.is_empty() || name.contains(' ') {
                d.at(&s.span(), "a scope must be non-empty and contain no spaces");
                ok = false;
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
            ok = false;
        }
        if clients.iter().any(|x| x.client_id == client_id) {
            d.at(&c.client_id.span(), format!("client {client_id:?} is defined twice"));
            ok = false;
        }
        let secret = match (c.client_secret_hash, c.client_secret) {
            (Some(h), None) => {
                if let Err(e) = argon2::PasswordHash::new(&h.get_ref().0) {
                    d.at(&h.span(), format!("client_secret_hash is not a hash from `scopegate hash-secret`: {e}"));
                    ok = false;
                }
                ClientSecret::Hash(h.into_inner().0)
            }
            (None, Some(p)) => ClientSecret::Plain(p.into_inner().0),
            _ => {
                d.at(&span, "a client needs exactly one of client_secret_hash or client_secret");
                ok = false;
                ClientSecret::Plain(String::new())
            }
        };
        let mut allowed_scopes = Vec::new();
        for s in c.allowed_scopes {
            if !scopes.contains(&s.get_ref().0) {
                d.at(&s.span(), format!("scope {:?} is not defined by any [[issuer.resource_servers]]", s.get_ref().0));
                ok = false;
            }
            allowed_scopes.push(s.into_inner().0);
        }
        clients.push(ClientConfig { client_id, secret, allowed_scopes });
    }
    ok.then_some(BuiltinIssuerConfig { issuer, signing_key, signing_key_at, token_ttl, scopes, clients })
}

fn validate_server(s: RawServer, base: &Path, d: &mut Diags<'_>) -> Option<ServerConfig> {
    let mut ok = true;
    let mut addr = |v: Option<Spanned<Str>>, key: &str, d: &mut Diags<'_>| -> Option<SocketAddr> {
        let v = v?;
        match v.get_ref().0.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                d.at(
                    &v.span(),
                    format!("server.{key} must be IP:PORT, like \"0.0.0.0:8080\", not {:?}", v.get_ref().0),
                );
                ok = false;
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
            ok = false;
            Duration::ZERO
        }
    };
    let tls = match s.tls {
        None => None,
        Some(t) => {
            let t = t.into_inner();
            let at = d.pos(&t.cert.span());
            Some(TlsConfig { cert: base.join(&t.cert.get_ref().0), key: base.join(&t.key.get_ref().0), at })
        }
    };
    if !ok {
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
    let mut ok = true;
    let header = match a.header {
        None => HeaderName::from_static("authorization"),
        Some(h) => match HeaderName::from_bytes(h.get_ref().0.to_ascii_lowercase().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                d.at(&h.span(), format!("auth.header {:?} is not a valid header name", h.get_ref().0));
                ok = false;
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
                ok = false;
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
                ok = false;
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
                ok = false;
            }
            issuers.push(iss);
        } else {
            ok = false;
        }
    }
    ok.then(|| AuthConfig {
        header,
        leeway: a.leeway.map_or(Duration::from_secs(60), |v| v.0),
        scope_failure_status,
        cache_entries,
        forward_token: a.forward_token.unwrap_or(true),
        identity_headers: a.identity_headers.unwrap_or(true),
        issuers,
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
    let mut ok = true;
    let issuer = i.issuer.get_ref().0.clone();
    if issuer.is_empty() {
        d.at(&i.issuer.span(), "issuer must not be empty");
        ok = false;
    }
    let discovery = i.discovery.as_ref().is_some_and(|v| *v.get_ref());
    let sources = usize::from(i.jwks_uri.is_some()) + usize::from(i.jwks_file.is_some()) + usize::from(discovery);
    let source = if sources != 1 {
        d.at(span, "an issuer needs exactly one key source: jwks_uri, jwks_file or discovery = true");
        ok = false;
        None
    } else if let Some(u) = &i.jwks_uri {
        let url = &u.get_ref().0;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
            d.at(&u.span(), format!("jwks_uri must be an http:// or https:// URL, not {url:?}"));
            ok = false;
        }
        Some(KeySource::Uri(url.clone()))
    } else if let Some(f) = &i.jwks_file {
        Some(KeySource::File(base.join(&f.get_ref().0)))
    } else {
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            d.at(&i.issuer.span(), "discovery = true needs an http:// or https:// issuer");
            ok = false;
        }
        Some(KeySource::Discovery)
    };
    let algorithms = match &i.algorithms {
        None => vec![Algorithm::RS256],
        Some(list) => {
            if list.get_ref().is_empty() {
                d.at(&list.span(), "algorithms must not be empty");
                ok = false;
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
                        ok = false;
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
    ok.then(|| IssuerConfig {
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

fn validate_route(r: Spanned<RawRoute>, upstreams: &[UpstreamConfig], d: &mut Diags<'_>) -> Option<RouteConfig> {
    let span = r.span();
    let r = r.into_inner();
    let mut ok = true;
    let path_span = r.path.span();
    let path = r.path.into_inner().0;
    if let Err(e) = crate::path::check_template(&path) {
        d.at(&path_span, format!("route path {path:?}: {e}"));
        ok = false;
    }
    let methods = match r.methods {
        None => Methods::Any,
        Some(list) => {
            let mut any = false;
            let mut only = Vec::new();
            if list.get_ref().is_empty() {
                d.at(&list.span(), "methods must not be empty (use [\"ANY\"])");
                ok = false;
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
                            ok = false;
                        }
                    }
                } else {
                    d.at(&m.span(), format!("{name:?} is not an HTTP method (write methods in upper case, or ANY)"));
                    ok = false;
                }
            }
            if any && !only.is_empty() {
                d.at(&list.span(), "ANY cannot be combined with other methods");
                ok = false;
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
        ok = false;
    }
    let auth = match r.auth {
        None => RouteAuth::Jwt { any_of, all_of },
        Some(a) => match a.get_ref().0.as_str() {
            "jwt" => RouteAuth::Jwt { any_of, all_of },
            "none" => {
                if !any_of.is_empty() || !all_of.is_empty() {
                    d.at(&a.span(), "a route with auth = \"none\" cannot require scopes");
                    ok = false;
                }
                RouteAuth::None
            }
            other => {
                d.at(&a.span(), format!("auth must be \"jwt\" or \"none\", not {other:?}"));
                ok = false;
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
        (Some(u), None) => match upstreams.iter().position(|x| x.name == u.get_ref().0) {
            Some(i) => Some(Action::Upstream(i)),
            None => {
                d.at(&u.span(), format!("upstream {:?} is not defined in [upstreams]", u.get_ref().0));
                None
            }
        },
        (None, Some(m)) => validate_mock(m, d).map(Action::Mock),
    };
    let action = action?;
    let at = d.pos(&span);
    ok.then_some(RouteConfig { path, methods, auth, action, at })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        match Config::parse(Path::new("g.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn unknown_key_is_reported_at_its_position() {
        let e = errs("[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("g.toml:3:1: "), "{e:?}");
    }

    #[test]
    fn env_expansion_and_unset_variable() {
        let vars = |name: &str| (name == "SCOPEGATE_TEST_HOST").then(|| "127.0.0.1".to_owned());
        assert_eq!(expand_with("http://${SCOPEGATE_TEST_HOST}:1", vars).unwrap(), "http://127.0.0.1:1");
        assert!(expand_with("${SCOPEGATE_TEST_PORT}", vars).unwrap_err().contains("SCOPEGATE_TEST_PORT"));
        let e = errs("[upstreams.a]\nurl = \"http://${SCOPEGATE_SURELY_UNSET}\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("g.toml:2:7: ") && e[0].contains("SCOPEGATE_SURELY_UNSET"), "{e:?}");
    }

    #[test]
    fn bad_duration_is_positioned() {
        let e = errs("[server]\nrequest_timeout = \"soon\"\n");
        assert!(e[0].starts_with("g.toml:2:19: ") && e[0].contains("invalid duration"), "{e:?}");
    }

    #[test]
    fn every_validation_problem_is_reported() {
        let text = "[[routes]]\npath = \"/a\"\nupstream = \"nope\"\n\n[[routes]]\npath = \"b\"\nmethods = [\"get\"]\nresponse = {}\n";
        let e = errs(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("g.toml:3:12: "), "{e:?}");
        assert!(e[1].starts_with("g.toml:6:8: "), "{e:?}");
        assert!(e[2].starts_with("g.toml:7:12: "), "{e:?}");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(Path::new("g.toml"), "").unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.server.max_header_bytes, 16384);
        assert_eq!(c.auth.leeway, Duration::from_secs(60));
        assert_eq!(c.auth.cache_entries, 65536);
        assert!(c.auth.forward_token && c.auth.identity_headers);
    }

    #[test]
    fn hs_and_none_are_never_allowed() {
        for alg in ["HS256", "none"] {
            let text = format!("[[auth.issuers]]\nissuer = \"i\"\njwks_uri = \"http://k\"\nalgorithms = [\"{alg}\"]\n");
            let e = errs(&text);
            assert!(e.len() == 1 && e[0].starts_with("g.toml:4:15: "), "{e:?}");
        }
    }
}
