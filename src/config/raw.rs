//! The file as written: serde structs that mirror gateway.toml key for key (unknown keys are
//! errors), the string and duration types its values are read with, and the JSON Schema
//! generated from them.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A string after `${NAME}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Str(pub(super) String);

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
pub(super) fn expand_with(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
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
pub(super) struct Dur(pub(super) Duration);

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

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Listeners, timeouts and limits.
    #[serde(default)]
    pub(super) server: RawServer,
    /// Log format.
    #[serde(default)]
    pub(super) log: RawLog,
    /// How tokens are read and checked, and the trusted issuers.
    #[serde(default)]
    pub(super) auth: RawAuth,
    /// Upstreams by name; routes refer to them.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawUpstream>")]
    pub(super) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// The route table.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub(super) routes: Vec<Spanned<RawRoute>>,
    /// The built-in OAuth 2.0 client-credentials issuer.
    #[schemars(with = "Option<RawBuiltin>")]
    pub(super) issuer: Option<Spanned<RawBuiltin>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Builtin")]
pub(super) struct RawBuiltin {
    /// The `iss` of minted tokens: an http:// or https:// URL without a trailing "/".
    #[schemars(with = "Str")]
    pub(super) issuer: Spanned<Str>,
    /// PKCS#8 PEM RSA or EC (P-256, P-384) private key; omitted: generated at start, in memory only.
    #[schemars(with = "Option<Str>")]
    pub(super) signing_key: Option<Spanned<Str>>,
    /// Lifetime of minted tokens, at least 1s. Default "1h".
    #[schemars(with = "Option<Dur>")]
    pub(super) token_ttl: Option<Spanned<Dur>>,
    /// Resource servers and the scopes they define.
    #[serde(default)]
    #[schemars(with = "Vec<RawResourceServer>")]
    pub(super) resource_servers: Vec<Spanned<RawResourceServer>>,
    /// Client-credentials app clients.
    #[serde(default)]
    #[schemars(with = "Vec<RawClient>")]
    pub(super) clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ResourceServer")]
pub(super) struct RawResourceServer {
    /// Resource server name (no spaces or "/"); scopes are named "identifier/scope".
    #[schemars(with = "Str")]
    pub(super) identifier: Spanned<Str>,
    /// Scope names this resource server defines.
    #[serde(default)]
    #[schemars(with = "Vec<Str>")]
    pub(super) scopes: Vec<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Client")]
pub(super) struct RawClient {
    /// Client id: non-empty, no ":".
    #[schemars(with = "Str")]
    pub(super) client_id: Spanned<Str>,
    /// Argon2id hash from `scopegate hash-secret`.
    #[schemars(with = "Option<Str>")]
    pub(super) client_secret_hash: Option<Spanned<Str>>,
    /// Plain secret (discouraged; prefer client_secret_hash).
    #[schemars(with = "Option<Str>")]
    pub(super) client_secret: Option<Spanned<Str>>,
    /// Full scope names ("identifier/scope") this client may get.
    #[serde(default)]
    #[schemars(with = "Vec<Str>")]
    pub(super) allowed_scopes: Vec<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Server")]
pub(super) struct RawServer {
    /// Data-plane address, IP:PORT. Default "0.0.0.0:8080". Restart to change.
    #[schemars(with = "Option<Str>")]
    pub(super) listen: Option<Spanned<Str>>,
    /// Admin listener address (/metrics, /healthz, /readyz), IP:PORT; omitted: disabled. Restart to change.
    #[schemars(with = "Option<Str>")]
    pub(super) admin_listen: Option<Spanned<Str>>,
    /// Longest wait for the upstream response head (504 after). Default "30s".
    pub(super) request_timeout: Option<Dur>,
    /// Time a connection has to deliver a complete request head. Default "10s".
    pub(super) header_read_timeout: Option<Dur>,
    /// A connection with no request in flight for this long is closed (HTTP/1.1, HTTP/2, WebSocket tunnels). Default "60s".
    #[schemars(with = "Option<Dur>")]
    pub(super) idle_timeout: Option<Spanned<Dur>>,
    /// Largest request head in bytes (431 beyond). Default 16384.
    #[schemars(with = "Option<i64>")]
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    /// Connections served at once; more wait. Default 10000. Restart to change.
    #[schemars(with = "Option<i64>")]
    pub(super) max_connections: Option<Spanned<i64>>,
    /// Drain time after SIGTERM/SIGINT. Default "20s".
    pub(super) shutdown_grace: Option<Dur>,
    /// Terminate TLS on the data-plane listener.
    #[schemars(with = "Option<RawTls>")]
    pub(super) tls: Option<Spanned<RawTls>>,
    /// Answer like AWS API Gateway: "aws-rest" (REST API + Cognito authorizer), "aws-http" (HTTP API + JWT authorizer) or "none". Default "none".
    #[schemars(with = "Option<Str>")]
    pub(super) compat: Option<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
pub(super) struct RawTls {
    /// PEM certificate chain.
    #[schemars(with = "Str")]
    pub(super) cert: Spanned<Str>,
    /// PEM private key.
    #[schemars(with = "Str")]
    pub(super) key: Spanned<Str>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Log")]
pub(super) struct RawLog {
    /// "json" (default) or "text". Restart to change.
    #[schemars(with = "Option<Str>")]
    pub(super) format: Option<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
pub(super) struct RawAuth {
    /// Header the token is read from. Default "authorization".
    #[schemars(with = "Option<Str>")]
    pub(super) header: Option<Spanned<Str>>,
    /// Clock skew allowed on exp, nbf, iat. Default "60s".
    pub(super) leeway: Option<Dur>,
    /// 401 (default, REST API behaviour) or 403 (HTTP API behaviour) for a token without the scopes.
    #[schemars(with = "Option<i64>")]
    pub(super) scope_failure_status: Option<Spanned<i64>>,
    /// Verified-token cache size; 0 disables it. Default 65536.
    #[schemars(with = "Option<i64>")]
    pub(super) cache_entries: Option<Spanned<i64>>,
    /// Pass the token header to the upstream. Default true.
    pub(super) forward_token: Option<bool>,
    /// Set x-auth-sub, x-auth-client-id, x-auth-scope, x-auth-issuer. Default true.
    pub(super) identity_headers: Option<bool>,
    /// The default of every route's `enforce`: true (default) refuses what the checks refuse; false puts routes in audit mode (see the route key).
    pub(super) enforce: Option<bool>,
    /// Directory where the last good key set of each fetched issuer (jwks_uri, discovery) is kept, and the built-in issuer's generated signing key; served at start when the IdP cannot be reached. Relative to the config's directory; created 0700 if missing. Omitted: nothing is persisted.
    #[schemars(with = "Option<Str>")]
    pub(super) key_cache_dir: Option<Spanned<Str>>,
    /// Oldest persisted key set served from key_cache_dir when the IdP cannot be reached. Default "24h".
    pub(super) key_cache_max_age: Option<Dur>,
    /// Trusted token issuers.
    #[serde(default)]
    #[schemars(with = "Vec<RawIssuer>")]
    pub(super) issuers: Vec<Spanned<RawIssuer>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Issuer")]
pub(super) struct RawIssuer {
    /// Exact match on the token's iss.
    #[schemars(with = "Str")]
    pub(super) issuer: Spanned<Str>,
    /// URL of the key set.
    #[schemars(with = "Option<Str>")]
    pub(super) jwks_uri: Option<Spanned<Str>>,
    /// Local JWKS file (watched).
    #[schemars(with = "Option<Str>")]
    pub(super) jwks_file: Option<Spanned<Str>>,
    /// Read jwks_uri from {issuer}/.well-known/openid-configuration.
    #[schemars(with = "Option<bool>")]
    pub(super) discovery: Option<Spanned<bool>>,
    /// aud must contain one of these (or client_id equal one when aud is absent).
    pub(super) audiences: Option<Vec<Str>>,
    /// Required token_use claim ("access" or "id").
    pub(super) token_use: Option<Str>,
    /// Allowed algorithms. Default ["RS256"].
    #[schemars(with = "Option<Vec<Str>>")]
    pub(super) algorithms: Option<Spanned<Vec<Spanned<Str>>>>,
    /// Keys are re-fetched at least this often. Default "5m".
    pub(super) refresh: Option<Dur>,
    /// At most one re-fetch per cooldown for unknown kids. Default "30s".
    pub(super) kid_miss_cooldown: Option<Dur>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Upstream")]
pub(super) struct RawUpstream {
    /// http:// or https:// base URL; a path in it is prepended.
    #[schemars(with = "Str")]
    pub(super) url: Spanned<Str>,
    /// Connect timeout. Default "2s".
    pub(super) connect_timeout: Option<Dur>,
    /// Extra PEM CA bundle for https upstreams.
    #[schemars(with = "Option<Str>")]
    pub(super) ca_file: Option<Spanned<Str>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub(super) struct RawRoute {
    /// Template: literal segments, {name} = one segment, {name+} = the rest (last only).
    #[schemars(with = "Str")]
    pub(super) path: Spanned<Str>,
    /// Upper-case methods, or ["ANY"] (default).
    #[schemars(with = "Option<Vec<Str>>")]
    pub(super) methods: Option<Spanned<Vec<Spanned<Str>>>>,
    /// The token needs at least one of these.
    pub(super) scopes: Option<Vec<Str>>,
    /// The token needs all of these.
    pub(super) scopes_all: Option<Vec<Str>>,
    /// "jwt" (default) or "none" (public).
    #[schemars(with = "Option<Str>")]
    pub(super) auth: Option<Spanned<Str>>,
    /// Name of the upstream to forward to.
    #[schemars(with = "Option<Str>")]
    pub(super) upstream: Option<Spanned<Str>>,
    /// A mock answer instead of an upstream.
    #[schemars(with = "Option<RawMock>")]
    pub(super) response: Option<Spanned<RawMock>>,
    /// Send the verified token's claims upstream in this header, as the JSON of API Gateway's requestContext.authorizer (needs server.compat "aws-rest" or "aws-http").
    #[schemars(with = "Option<Str>")]
    pub(super) claims_header: Option<Spanned<Str>>,
    /// false: audit mode. The token and scopes are checked and the outcome logged and counted as usual, but a request they would refuse (401/403) is forwarded anyway, without identity headers. Default: auth.enforce (true). Needs auth = "jwt".
    #[schemars(with = "Option<bool>")]
    pub(super) enforce: Option<Spanned<bool>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Mock")]
pub(super) struct RawMock {
    /// HTTP status, 200-999. Default 200.
    #[schemars(with = "Option<i64>")]
    pub(super) status: Option<Spanned<i64>>,
    /// Default "application/json".
    #[schemars(with = "Option<Str>")]
    pub(super) content_type: Option<Spanned<Str>>,
    /// Body of the answer.
    pub(super) body: Option<Str>,
}

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
