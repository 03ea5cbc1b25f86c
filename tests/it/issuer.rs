//! The built-in OAuth 2.0 client-credentials issuer (and the `token` / `hash-secret` commands)
//! against the real server: the token endpoint's answers and RFC 6749 §5.2 error table, the
//! minted tokens' claims and header, the published JWKS and discovery document, tokens used on
//! the gateway's own routes, clients and keys changed by a config reload, signing keys read
//! from files (RSA and EC) and rotated, the `token` and `hash-secret` commands of the real
//! binary, an independent JOSE implementation (PyJWT) verifying a minted token, the token
//! endpoint under a flood of wrong secrets (the real binary's memory), a retired signing key
//! refused once it leaves the JWKS, and the endpoints reached by other spellings of their paths.

use crate::common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

/// The `iss` of minted tokens; only a name, nothing is fetched from it.
const ISSUER: &str = "https://issuer.scopegate.test";
/// `token_ttl` of the test configs, in seconds.
const TTL: u64 = 600;
/// `alpha` has a `client_secret_hash` of this secret.
const ALPHA_SECRET: &str = "alpha-secret";
/// `beta` has this plain `client_secret`.
const BETA_SECRET: &str = "beta-secret";
const ALPHA_SCOPES: [&str; 2] = ["API/book.get", "API/book.post"];
const BETA_SCOPES: [&str; 1] = ["API/user.get"];

const BOOK_GET: &str = r#"{"Result":"Success","Description":"your GET for /book is completed"}"#;
const BOOK_POST: &str = r#"{"Result":"Success","Description":"your POST for /book is completed"}"#;
const USER_GET: &str = r#"{"Result":"Success","Description":"your GET for /user is completed"}"#;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// argon2id hash of [`ALPHA_SECRET`], computed once per test binary.
fn alpha_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| scopegate::issuer::hash_secret(ALPHA_SECRET.as_bytes()).expect("hash_secret"))
}

fn alpha() -> String {
    client_toml("alpha", &format!("client_secret_hash = {}", toml_str(alpha_hash())), &ALPHA_SCOPES)
}

fn beta() -> String {
    client_toml("beta", &format!("client_secret = {}", toml_str(BETA_SECRET)), &BETA_SCOPES)
}

/// A mock `[[routes]]` table answering `body`.
fn mock_route(path: &str, method: &str, scope: &str, body: &str) -> String {
    route_toml(path, &[method], &[&scopes(&[scope]), &mock_response("application/json", body)])
}

/// A complete gateway.toml: listener on 127.0.0.1:0, the built-in issuer ([`ISSUER`], [`TTL`],
/// resource server `API` with `book.get book.post user.get user.post`, `issuer_extra` lines such
/// as `signing_key = ...`), the `clients` tables, and the mock routes `GET /book`, `POST /book`
/// and `GET /user`, each needing its scope.
fn builtin_toml(issuer_extra: &str, clients: &[String]) -> String {
    server_toml("")
        + &builtin_issuer_toml(ISSUER, &format!("token_ttl = \"{TTL}s\"\n{issuer_extra}"))
        + &resource_server_toml("API", &["book.get", "book.post", "user.get", "user.post"])
        + &clients.concat()
        + &mock_route("/book", "GET", "API/book.get", BOOK_GET)
        + &mock_route("/book", "POST", "API/book.post", BOOK_POST)
        + &mock_route("/user", "GET", "API/user.get", USER_GET)
}

/// The usual config: generated key, clients `alpha` (hashed secret) and `beta` (plain secret).
fn default_toml() -> String {
    builtin_toml("", &[alpha(), beta()])
}

// ---------------------------------------------------------------------------------------------
// Token requests
// ---------------------------------------------------------------------------------------------

/// `authorization: Basic base64(id:secret)` (RFC 7617; id and secret need no form-encoding here).
fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `POST /oauth2/token[?query]`: optional Basic credentials, and `body` pairs as a form.
async fn token_request(addr: SocketAddr, query: &str, auth: Option<(&str, &str)>, body: &[(&str, &str)]) -> Resp {
    let path = if query.is_empty() { "/oauth2/token".to_string() } else { format!("/oauth2/token?{query}") };
    let auth = auth.map(|(id, secret)| basic(id, secret));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if !body.is_empty() {
        headers.push(("content-type", "application/x-www-form-urlencoded"));
    }
    send_to(addr, "POST", &path, &headers, &form(body)).await
}

/// A token for `id` by `client_secret_basic`, with the requested `scope` if any.
async fn fetch_token(addr: SocketAddr, id: &str, secret: &str, scope: Option<&str>) -> String {
    let mut body = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        body.push(("scope", s));
    }
    let r = token_request(addr, "", Some((id, secret)), &body).await;
    token_success(&r, &format!("token for {id}"))
}

/// Checks a 200 token answer and returns the access token.
fn token_success(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}: {r:?}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{what}: {r:?}");
    let body: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {r:?}"));
    let obj = body.as_object().unwrap_or_else(|| panic!("{what}: body is not an object: {r:?}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "token_type"], "{what}: {r:?}");
    assert_eq!(body["expires_in"], json!(TTL), "{what}: {r:?}");
    assert_eq!(body["token_type"], json!("Bearer"), "{what}: {r:?}");
    let token = body["access_token"].as_str().unwrap_or_else(|| panic!("{what}: access_token not a string: {r:?}"));
    assert_eq!(token.split('.').count(), 3, "{what}: not a JWS compact token: {token}");
    token.to_string()
}

/// Checks an RFC 6749 §5.2 error answer: status, exact body, JSON, `cache-control: no-store`.
fn token_error(r: &Resp, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(r.body, format!(r#"{{"error":"{error}"}}"#), "{what}: {r:?}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{what}: {r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// JOSE helpers
// ---------------------------------------------------------------------------------------------

fn b64_json(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_else(|e| panic!("not base64url ({e}): {part}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The (header, claims) of a compact JWS, unverified.
fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token: {token}");
    (b64_json(parts[0]), b64_json(parts[1]))
}

/// The token's scopes, sorted.
fn scopes_of(token: &str) -> Vec<String> {
    let (_, claims) = decode(token);
    let scope = claims["scope"].as_str().unwrap_or_else(|| panic!("scope is not a string: {claims}"));
    let mut v: Vec<String> = scope.split(' ').map(str::to_string).collect();
    v.sort();
    v
}

fn sorted(scopes: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK (RSA or EC), computed here from the
/// required members in lexicographic order, without whitespace.
fn thumbprint(jwk: &Value) -> String {
    let member = |name: &str| -> String {
        let v = jwk[name].as_str().unwrap_or_else(|| panic!("JWK member {name} missing: {jwk}"));
        serde_json::to_string(v).expect("string")
    };
    let canonical = match jwk["kty"].as_str() {
        Some("RSA") => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, member("e"), member("n")),
        Some("EC") => {
            format!(r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#, member("crv"), member("x"), member("y"))
        }
        other => panic!("unexpected kty {other:?}: {jwk}"),
    };
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// A private key generated here, as PKCS#8 PEM, with its public JWK's thumbprint.
struct PemKey {
    pem: String,
    kid: String,
}

/// RSA-2048 (RS256).
fn rsa_key() -> PemKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate RSA key");
    let der = kp.as_der().expect("PKCS#8 DER");
    let public = kp.public_key();
    let jwk = json!({
        "kty": "RSA",
        "n": b64url(public.modulus().big_endian_without_leading_zero()),
        "e": b64url(public.exponent().big_endian_without_leading_zero()),
    });
    PemKey { pem: pem("PRIVATE KEY", der.as_ref()), kid: thumbprint(&jwk) }
}

/// EC P-256 (ES256).
fn ec_p256_key() -> PemKey {
    ec_key(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
}

/// EC P-384 (ES384).
fn ec_p384_key() -> PemKey {
    ec_key(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
}

fn ec_key(alg: &'static EcdsaSigningAlgorithm, crv: &str) -> PemKey {
    let kp = EcdsaKeyPair::generate(alg).expect("generate EC key");
    let der = kp.to_pkcs8v1().expect("PKCS#8 DER");
    let point = kp.public_key().as_ref(); // 0x04 || x || y
    let half = (point.len() - 1) / 2;
    let jwk = json!({ "kty": "EC", "crv": crv, "x": b64url(&point[1..1 + half]), "y": b64url(&point[1 + half..]) });
    PemKey { pem: pem("PRIVATE KEY", der.as_ref()), kid: thumbprint(&jwk) }
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = send_to(addr, "GET", path, &[], "").await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "GET {path}: {r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {r:?}"))
}

/// The kids of the published JWKS, sorted.
async fn published_kids(addr: SocketAddr) -> Vec<String> {
    let jwks = get_json(addr, "/.well-known/jwks.json").await;
    let keys = jwks["keys"].as_array().unwrap_or_else(|| panic!("no keys array: {jwks}"));
    let mut kids: Vec<String> =
        keys.iter().map(|k| k["kid"].as_str().unwrap_or_else(|| panic!("JWK without kid: {k}")).to_string()).collect();
    kids.sort();
    kids
}

/// `method path` with `authorization: Bearer <token>`.
async fn call(addr: SocketAddr, method: &str, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send_to(addr, method, path, &[("authorization", &auth)], "").await
}

async fn assert_allowed(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str, what: &str) {
    let r = call(addr, method, path, token).await;
    assert_eq!((r.status, r.body.as_str()), (200, body), "{what}: {method} {path}: {r:?}");
}

async fn assert_insufficient_scope(addr: SocketAddr, method: &str, path: &str, token: &str, what: &str) {
    let r = call(addr, method, path, token).await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "{what}: {method} {path}: {r:?}");
    assert_eq!(r.header("www-authenticate"), Some(INSUFFICIENT_SCOPE), "{what}: {method} {path}: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// Runs the scopegate binary with `args` (and `stdin`), bounded by [`CLI_TIMEOUT`].
async fn scopegate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = binary_command();
    cmd.args(args).env_remove("RUST_LOG");
    run_command(cmd, stdin).await
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `scopegate token --client-id ID [--scope S] --config PATH`: checks the success contract (exit
/// 0, stdout = a bare token and one newline) and returns the token.
async fn cli_token(config: &Path, client_id: &str, scope: Option<&str>) -> String {
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec!["token", "--client-id", client_id, "--config", config];
    if let Some(s) = scope {
        args.extend(["--scope", s]);
    }
    let out = scopegate(&args, None).await;
    assert!(out.status.success(), "scopegate {args:?}: {}", show(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let token = stdout.strip_suffix('\n').unwrap_or_else(|| panic!("no trailing newline: {}", show(&out)));
    assert!(
        !token.is_empty() && token.split('.').count() == 3 && !token.contains(char::is_whitespace),
        "stdout is not a bare token and a newline: {}",
        show(&out)
    );
    token.to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. The error table
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_error_table() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    let cc = ("grant_type", "client_credentials");

    // No client authentication at all.
    let r = token_request(a, "", None, &[cc]).await;
    token_error(&r, 401, "invalid_client", "no client authentication");
    let r = token_request(a, "", None, &[cc, ("client_id", "alpha")]).await;
    token_error(&r, 401, "invalid_client", "client_id without a secret");

    // Wrong secret, client_secret_basic: 401 with a Basic challenge (RFC 6749 §5.2).
    for (id, secret, what) in [
        ("alpha", "wrong", "wrong secret (hashed), Basic"),
        ("beta", "wrong", "wrong secret (plain), Basic"),
        ("alpha", "", "empty secret, Basic"),
        ("nobody", ALPHA_SECRET, "unknown client, Basic"),
    ] {
        let r = token_request(a, "", Some((id, secret)), &[cc]).await;
        token_error(&r, 401, "invalid_client", what);
        let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no www-authenticate: {r:?}"));
        assert!(challenge.starts_with("Basic"), "{what}: {r:?}");
    }

    // Wrong secret / unknown client, client_secret_post.
    for (id, secret, what) in [
        ("alpha", "wrong", "wrong secret (hashed), post"),
        ("beta", "wrong", "wrong secret (plain), post"),
        ("nobody", ALPHA_SECRET, "unknown client, post"),
        ("alpha", BETA_SECRET, "another client's secret, post"),
    ] {
        let r = token_request(a, "", None, &[cc, ("client_id", id), ("client_secret", secret)]).await;
        token_error(&r, 401, "invalid_client", what);
    }

    // Two client authentication methods at once (RFC 6749 §2.3).
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc, ("client_secret", ALPHA_SECRET)]).await;
    token_error(&r, 400, "invalid_request", "Basic and client_secret in the body");
    let both = [cc, ("client_id", "alpha"), ("client_secret", ALPHA_SECRET)];
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &both).await;
    token_error(&r, 400, "invalid_request", "Basic and client_id + client_secret in the body");
    let r = token_request(a, "client_secret=alpha-secret", Some(("alpha", ALPHA_SECRET)), &[cc]).await;
    token_error(&r, 400, "invalid_request", "Basic and client_secret in the query");

    // Grant type.
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[]).await;
    token_error(&r, 400, "invalid_request", "missing grant_type (no body)");
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[("scope", "API/book.get")]).await;
    token_error(&r, 400, "invalid_request", "missing grant_type");
    let r = token_request(a, "", None, &[("client_id", "alpha"), ("client_secret", ALPHA_SECRET)]).await;
    token_error(&r, 400, "invalid_request", "missing grant_type, post");
    for grant in ["password", "authorization_code", "refresh_token", "CLIENT_CREDENTIALS"] {
        let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[("grant_type", grant)]).await;
        token_error(&r, 400, "unsupported_grant_type", &format!("grant_type={grant}"));
    }
    let r = token_request(a, "grant_type=password", Some(("alpha", ALPHA_SECRET)), &[]).await;
    token_error(&r, 400, "unsupported_grant_type", "grant_type=password in the query");

    // Scopes the client is not allowed, or that do not exist.
    for scope in ["API/user.get", "API/book.get API/user.get", "API/nope", "book.get"] {
        let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc, ("scope", scope)]).await;
        token_error(&r, 400, "invalid_scope", &format!("scope={scope:?}"));
        let r = token_request(
            a,
            "",
            None,
            &[cc, ("client_id", "alpha"), ("client_secret", ALPHA_SECRET), ("scope", scope)],
        )
        .await;
        token_error(&r, 400, "invalid_scope", &format!("scope={scope:?}, post"));
    }

    // A parameter given twice: query + body, or twice in the body (RFC 6749 §3.1).
    let r = token_request(a, "grant_type=client_credentials", Some(("alpha", ALPHA_SECRET)), &[cc]).await;
    token_error(&r, 400, "invalid_request", "grant_type in the query and the body");
    let r =
        token_request(a, "scope=API/book.get", Some(("alpha", ALPHA_SECRET)), &[cc, ("scope", "API/book.get")]).await;
    token_error(&r, 400, "invalid_request", "scope in the query and the body");
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc, cc]).await;
    token_error(&r, 400, "invalid_request", "grant_type twice in the body");
    let twice = [cc, ("client_id", "alpha"), ("client_id", "alpha"), ("client_secret", ALPHA_SECRET)];
    let r = token_request(a, "", None, &twice).await;
    token_error(&r, 400, "invalid_request", "client_id twice in the body");

    // A body that is not a form.
    let auth = basic("alpha", ALPHA_SECRET);
    let json_body = r#"{"grant_type":"client_credentials"}"#;
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let r = send(&gw, "POST", "/oauth2/token", &headers, json_body).await;
    token_error(&r, 400, "invalid_request", "JSON body");

    // The endpoint takes POST only.
    let r = send(&gw, "GET", "/oauth2/token?grant_type=client_credentials", &[("authorization", &auth)], "").await;
    assert_eq!((r.status, r.body.as_str()), (405, r#"{"message":"Method Not Allowed"}"#), "GET /oauth2/token: {r:?}");
    assert_eq!(r.header("allow"), Some("POST"), "GET /oauth2/token: {r:?}");

    // After all that, the right credentials still work.
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc]).await;
    token_success(&r, "Basic after the errors");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Success: Basic, post, query string; scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_success_basic_post_and_query() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    let cc = ("grant_type", "client_credentials");
    let all = sorted(&ALPHA_SCOPES);

    // client_secret_basic, form body.
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc]).await;
    assert_eq!(scopes_of(&token_success(&r, "Basic")), all, "Basic without scope: every allowed scope");

    // client_secret_post.
    let r = token_request(a, "", None, &[cc, ("client_id", "alpha"), ("client_secret", ALPHA_SECRET)]).await;
    assert_eq!(scopes_of(&token_success(&r, "post")), all, "post without scope: every allowed scope");

    // The usual Cognito client-credentials curl: `curl -X POST --user id:secret '.../oauth2/token?grant_type=client_credentials'`
    // (no body, no content-type).
    let r = token_request(a, "grant_type=client_credentials", Some(("alpha", ALPHA_SECRET)), &[]).await;
    assert_eq!(scopes_of(&token_success(&r, "query + Basic")), all, "query string without scope");
    let cognito_curl = format!(
        "POST /oauth2/token?grant_type=client_credentials HTTP/1.1\r\nhost: {a}\r\nauthorization: {}\r\n\
         user-agent: curl/8.5.0\r\naccept: */*\r\nconnection: close\r\n\r\n",
        basic("alpha", ALPHA_SECRET)
    );
    let r = raw(a, cognito_curl.as_bytes()).await;
    token_success(&r, "the usual Cognito curl request, byte for byte");
    let r = token_request(a, "grant_type=client_credentials&scope=API%2Fbook.post", Some(("alpha", ALPHA_SECRET)), &[])
        .await;
    assert_eq!(scopes_of(&token_success(&r, "query with scope")), sorted(&["API/book.post"]));
    // Split between query and body.
    let r = token_request(
        a,
        "grant_type=client_credentials",
        None,
        &[("client_id", "alpha"), ("client_secret", ALPHA_SECRET)],
    )
    .await;
    assert_eq!(scopes_of(&token_success(&r, "grant_type in query, post credentials in body")), all);

    // A plain client_secret works the same way, both methods.
    let r = token_request(a, "", Some(("beta", BETA_SECRET)), &[cc]).await;
    assert_eq!(scopes_of(&token_success(&r, "beta Basic")), sorted(&BETA_SCOPES));
    let r = token_request(a, "", None, &[cc, ("client_id", "beta"), ("client_secret", BETA_SECRET)]).await;
    assert_eq!(scopes_of(&token_success(&r, "beta post")), sorted(&BETA_SCOPES));

    // Basic with client_id repeated in the body (same id) is one authentication method.
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[cc, ("client_id", "alpha")]).await;
    token_success(&r, "Basic + matching client_id in the body");

    // Requested scopes: exactly that subset.
    for (requested, expect) in [
        ("API/book.get", vec!["API/book.get"]),
        ("API/book.post", vec!["API/book.post"]),
        ("API/book.post API/book.get", vec!["API/book.get", "API/book.post"]),
        ("API/book.get API/book.post", vec!["API/book.get", "API/book.post"]),
    ] {
        let t = fetch_token(a, "alpha", ALPHA_SECRET, Some(requested)).await;
        assert_eq!(scopes_of(&t), sorted(&expect), "scope={requested:?}");
        let r = token_request(
            a,
            "",
            None,
            &[cc, ("client_id", "alpha"), ("client_secret", ALPHA_SECRET), ("scope", requested)],
        )
        .await;
        assert_eq!(scopes_of(&token_success(&r, "post with scope")), sorted(&expect), "post scope={requested:?}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Claims and header
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_token_claims_and_header() {
    let gw = Gateway::start(&default_toml()).await;
    let before = now();
    let t1 = fetch_token(gw.addr, "alpha", ALPHA_SECRET, None).await;
    let t2 = fetch_token(gw.addr, "alpha", ALPHA_SECRET, Some("API/book.get")).await;
    let after = now();

    let jwks = get_json(gw.addr, "/.well-known/jwks.json").await;
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "one key published: {jwks}");
    let kid = thumbprint(&keys[0]);

    let (h1, c1) = decode(&t1);
    assert_eq!(h1["alg"], json!("RS256"), "header: {h1}");
    assert_eq!(h1["kid"], json!(kid), "kid is the RFC 7638 thumbprint of the published key: {h1} / {jwks}");
    assert!(h1.get("typ").is_none_or(|t| t == "JWT"), "header: {h1}");
    let obj = c1.as_object().expect("claims object");
    for claim in ["iss", "sub", "client_id", "token_use", "scope", "iat", "exp", "jti", "version"] {
        assert!(obj.contains_key(claim), "claim {claim} missing: {c1}");
    }
    assert_eq!(c1["iss"], json!(ISSUER), "{c1}");
    assert_eq!(c1["sub"], json!("alpha"), "{c1}");
    assert_eq!(c1["client_id"], json!("alpha"), "{c1}");
    assert_eq!(c1["token_use"], json!("access"), "{c1}");
    assert_eq!(c1["scope"], json!("API/book.get API/book.post"), "{c1}");
    assert_eq!(c1["version"], json!(2), "{c1}");
    let iat = c1["iat"].as_u64().unwrap_or_else(|| panic!("iat is not an integer: {c1}"));
    let exp = c1["exp"].as_u64().unwrap_or_else(|| panic!("exp is not an integer: {c1}"));
    assert!((before..=after).contains(&iat), "iat {iat} not within [{before}, {after}]");
    assert_eq!(exp, iat + TTL, "exp = iat + token_ttl: {c1}");
    assert!(obj.get("aud").is_none(), "no aud, like Cognito access tokens: {c1}");
    let jti1 = c1["jti"].as_str().unwrap_or_else(|| panic!("jti is not a string: {c1}"));
    assert!(!jti1.is_empty(), "{c1}");

    let (h2, c2) = decode(&t2);
    assert_eq!(h2["kid"], json!(kid), "{h2}");
    assert_eq!(c2["scope"], json!("API/book.get"), "{c2}");
    assert_ne!(c2["jti"], c1["jti"], "jti is unique per token");

    // beta (plain secret) too.
    let t3 = fetch_token(gw.addr, "beta", BETA_SECRET, None).await;
    let (_, c3) = decode(&t3);
    assert_eq!((&c3["sub"], &c3["client_id"], &c3["scope"]), (&json!("beta"), &json!("beta"), &json!("API/user.get")));
    assert_ne!(c3["jti"], c1["jti"]);
    assert_ne!(c3["jti"], c2["jti"]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. JWKS and discovery
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_and_openid_configuration() {
    let gw = Gateway::start(&default_toml()).await;
    let token = fetch_token(gw.addr, "alpha", ALPHA_SECRET, None).await;
    let (header, _) = decode(&token);

    let jwks = get_json(gw.addr, "/.well-known/jwks.json").await;
    let keys = jwks["keys"].as_array().unwrap_or_else(|| panic!("no keys array: {jwks}"));
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!(key["kty"], json!("RSA"), "{key}");
    assert_eq!(key["kid"], header["kid"], "the token's kid is published: {key}");
    assert_eq!(key["kid"], json!(thumbprint(key)), "{key}");
    assert!(key.get("use").is_none_or(|u| u == "sig"), "{key}");
    assert!(key.get("alg").is_none_or(|a| a == "RS256"), "{key}");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key.get(private).is_none(), "private member {private} published: {key}");
    }

    let disc = get_json(gw.addr, "/.well-known/openid-configuration").await;
    assert_eq!(disc["issuer"], json!(ISSUER), "{disc}");
    assert_eq!(disc["token_endpoint"], json!(format!("{ISSUER}/oauth2/token")), "{disc}");
    assert_eq!(disc["jwks_uri"], json!(format!("{ISSUER}/.well-known/jwks.json")), "{disc}");
    let list = |name: &str| -> Vec<String> {
        disc[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not a list: {disc}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("{name}: not strings: {disc}")).to_string())
            .collect()
    };
    assert!(list("grant_types_supported").contains(&"client_credentials".to_string()), "{disc}");
    let methods = list("token_endpoint_auth_methods_supported");
    for m in ["client_secret_basic", "client_secret_post"] {
        assert!(methods.contains(&m.to_string()), "{m} missing: {disc}");
    }
    let alg_lists: Vec<&str> =
        ["id_token_signing_alg_values_supported", "token_endpoint_auth_signing_alg_values_supported"]
            .into_iter()
            .filter(|k| disc.get(*k).is_some())
            .collect();
    assert!(!alg_lists.is_empty(), "no algorithms list: {disc}");
    for k in alg_lists {
        assert!(list(k).contains(&"RS256".to_string()), "{k}: {disc}");
    }

    // Both documents are served on the data-plane listener whatever the route table says, and
    // take no token.
    let r = send(&gw, "HEAD", "/.well-known/jwks.json", &[], "").await;
    assert_eq!(r.status, 200, "HEAD jwks: {r:?}");
    let r = send(&gw, "POST", "/.well-known/jwks.json", &[], "").await;
    assert_eq!(r.status, 405, "POST jwks: {r:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Minted tokens on the gateway's routes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_token_passes_routes_needing_its_scope_only() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    let all = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    assert_allowed(a, "GET", "/book", &all, BOOK_GET, "alpha, all scopes").await;
    assert_allowed(a, "POST", "/book", &all, BOOK_POST, "alpha, all scopes").await;
    assert_insufficient_scope(a, "GET", "/user", &all, "alpha, all scopes").await;

    let get_only = fetch_token(a, "alpha", ALPHA_SECRET, Some("API/book.get")).await;
    assert_allowed(a, "GET", "/book", &get_only, BOOK_GET, "alpha, API/book.get").await;
    assert_insufficient_scope(a, "POST", "/book", &get_only, "alpha, API/book.get").await;

    let user = fetch_token(a, "beta", BETA_SECRET, None).await;
    assert_allowed(a, "GET", "/user", &user, USER_GET, "beta").await;
    assert_insufficient_scope(a, "GET", "/book", &user, "beta").await;

    // A bare token (no "Bearer ") works too, as with Cognito; a tampered one does not.
    let r = send(&gw, "GET", "/book", &[("authorization", &all)], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, BOOK_GET), "bare token: {r:?}");
    let mut tampered = all.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let r = get(&gw, "/book", Some(&tampered)).await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "tampered signature: {r:?}");
    let r = get(&gw, "/book", None).await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "no token: {r:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Clients change with the config
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_client_gets_invalid_client_after_reload() {
    let live = Gateway::start(&default_toml()).await;
    let a = live.addr;
    let cc = ("grant_type", "client_credentials");
    let old_alpha = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    fetch_token(a, "beta", BETA_SECRET, None).await;
    let kids_before = published_kids(a).await;

    // beta goes; alpha is granted user.get as well.
    let scopes = ["API/book.get", "API/book.post", "API/user.get"];
    let alpha_more = client_toml("alpha", &format!("client_secret_hash = {}", toml_str(alpha_hash())), &scopes);
    live.write("gateway.toml", &builtin_toml("", &[alpha_more]));
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));

    for (what, r) in [
        ("beta, Basic", token_request(a, "", Some(("beta", BETA_SECRET)), &[cc]).await),
        ("beta, post", token_request(a, "", None, &[cc, ("client_id", "beta"), ("client_secret", BETA_SECRET)]).await),
    ] {
        token_error(&r, 401, "invalid_client", &format!("{what} after its removal"));
    }
    let new_alpha = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    assert_eq!(scopes_of(&new_alpha), sorted(&scopes), "alpha's new grant applies to new tokens");
    assert_allowed(a, "GET", "/user", &new_alpha, USER_GET, "new alpha token").await;
    // A token's scopes are fixed when it is issued.
    assert_insufficient_scope(a, "GET", "/user", &old_alpha, "alpha token from before the reload").await;
    // The generated key survives the reload: same kid, old tokens still verify.
    assert_eq!(published_kids(a).await, kids_before, "a generated key survives config reloads");
    assert_eq!(decode(&new_alpha).0["kid"], json!(kids_before[0]));
    assert_allowed(a, "GET", "/book", &old_alpha, BOOK_GET, "alpha token from before the reload").await;

    // And back: beta returns.
    live.write("gateway.toml", &default_toml());
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));
    fetch_token(a, "beta", BETA_SECRET, None).await;
    live.stop().await;
}

/// The same through the file watcher alone (no explicit reload): polled with a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_client_is_refused_once_the_watcher_reloads() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    fetch_token(a, "beta", BETA_SECRET, None).await;
    let path = gw.config_path();
    let tmp = gw.dir.path().join(".gateway.toml.tmp");
    std::fs::write(&tmp, builtin_toml("", &[alpha()])).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last;
    loop {
        last = token_request(a, "", Some(("beta", BETA_SECRET)), &[("grant_type", "client_credentials")]).await;
        if last.status != 200 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token_error(&last, 401, "invalid_client", "beta after the watcher saw it removed");
    fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. signing_key files and the `token` command
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_signing_key_file_and_token_command() {
    let key = rsa_key();
    let toml = builtin_toml("signing_key = \"keys/issuer.pem\"", &[alpha(), beta()]);
    let gw = Gateway::start_with_files(&toml, &[("keys/issuer.pem", &key.pem)]).await;
    let a = gw.addr;

    // The endpoint signs with the file's key.
    let t = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let (h, _) = decode(&t);
    assert_eq!((&h["alg"], &h["kid"]), (&json!("RS256"), &json!(key.kid)), "header: {h}");
    assert_eq!(published_kids(a).await, vec![key.kid.clone()]);

    // `scopegate token` mints with the same key, offline; the running gateway accepts it.
    let config = gw.config_path();
    let cli = cli_token(&config, "alpha", None).await;
    let (h, c) = decode(&cli);
    assert_eq!((&h["alg"], &h["kid"]), (&json!("RS256"), &json!(key.kid)), "header: {h}");
    assert_eq!(c["iss"], json!(ISSUER), "{c}");
    assert_eq!((&c["sub"], &c["client_id"], &c["token_use"]), (&json!("alpha"), &json!("alpha"), &json!("access")));
    assert_eq!(c["version"], json!(2), "{c}");
    assert_eq!(c["exp"].as_u64(), c["iat"].as_u64().map(|i| i + TTL), "{c}");
    assert_eq!(scopes_of(&cli), sorted(&ALPHA_SCOPES), "without --scope: every allowed scope");
    assert_allowed(a, "GET", "/book", &cli, BOOK_GET, "scopegate token").await;
    assert_allowed(a, "POST", "/book", &cli, BOOK_POST, "scopegate token").await;
    assert_insufficient_scope(a, "GET", "/user", &cli, "scopegate token").await;

    let cli = cli_token(&config, "alpha", Some("API/book.post")).await;
    assert_eq!(scopes_of(&cli), sorted(&["API/book.post"]));
    assert_allowed(a, "POST", "/book", &cli, BOOK_POST, "scopegate token --scope API/book.post").await;
    assert_insufficient_scope(a, "GET", "/book", &cli, "scopegate token --scope API/book.post").await;

    let cli = cli_token(&config, "beta", Some("API/user.get")).await;
    assert_allowed(a, "GET", "/user", &cli, USER_GET, "scopegate token for beta").await;

    // Refusals: exit non-zero, nothing on stdout.
    let cfg = config.to_str().expect("utf-8 path");
    for (args, what) in [
        (
            vec!["token", "--client-id", "alpha", "--scope", "API/user.get", "--config", cfg],
            "a scope alpha is not allowed",
        ),
        (vec!["token", "--client-id", "alpha", "--scope", "API/nope", "--config", cfg], "an undefined scope"),
        (vec!["token", "--client-id", "nobody", "--config", cfg], "an unknown client"),
    ] {
        let out = scopegate(&args, None).await;
        assert!(!out.status.success(), "token with {what} must fail: {}", show(&out));
        assert!(out.stdout.is_empty(), "token with {what}: nothing on stdout: {}", show(&out));
        assert!(!out.stderr.is_empty(), "token with {what}: says why on stderr: {}", show(&out));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_needs_an_issuer_with_a_signing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_issuer = dir.path().join("no-issuer.toml");
    std::fs::write(&no_issuer, server_toml("") + &route_toml("/", &[], &[PUBLIC, &mock_response("text/plain", "ok")]))
        .expect("write config");
    let p = no_issuer.to_str().expect("utf-8 path");
    // The config itself is fine...
    let out = scopegate(&["check", "--config", p], None).await;
    assert!(out.status.success(), "check on the config without [issuer]: {}", show(&out));
    // ... but there is no issuer to mint with.
    let out = scopegate(&["token", "--client-id", "alpha", "--config", p], None).await;
    assert!(!out.status.success(), "token against a config without [issuer] must fail: {}", show(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("issuer"), "stderr says why: {}", show(&out));

    // With [issuer] but a generated (in-memory) key, an offline token could not verify: refused
    // (README: "needs [issuer] signing_key").
    let generated = dir.path().join("generated.toml");
    std::fs::write(&generated, default_toml()).expect("write config");
    let p = generated.to_str().expect("utf-8 path");
    let out = scopegate(&["token", "--client-id", "alpha", "--config", p], None).await;
    assert!(!out.status.success(), "token without signing_key must fail: {}", show(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", show(&out));

    // A config that does not exist.
    let missing = dir.path().join("missing.toml");
    let out = scopegate(&["token", "--client-id", "alpha", "--config", missing.to_str().expect("utf-8")], None).await;
    assert!(!out.status.success(), "token with a missing config must fail: {}", show(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_p256_signing_key_gives_es256_tokens() {
    let key = ec_p256_key();
    let toml = builtin_toml("signing_key = \"keys/ec.pem\"", &[alpha(), beta()]);
    let gw = Gateway::start_with_files(&toml, &[("keys/ec.pem", &key.pem)]).await;
    let a = gw.addr;

    let t = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let (h, c) = decode(&t);
    assert_eq!((&h["alg"], &h["kid"]), (&json!("ES256"), &json!(key.kid)), "header: {h}");
    assert_eq!(c["iss"], json!(ISSUER), "{c}");
    let signature = URL_SAFE_NO_PAD.decode(t.rsplit('.').next().expect("signature")).expect("base64url signature");
    assert_eq!(signature.len(), 64, "ES256 signatures are R || S, 64 bytes (RFC 7518 §3.4)");

    let jwks = get_json(a, "/.well-known/jwks.json").await;
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!((&keys[0]["kty"], &keys[0]["crv"]), (&json!("EC"), &json!("P-256")), "{jwks}");
    assert_eq!(keys[0]["kid"], json!(key.kid), "{jwks}");
    assert_eq!(thumbprint(&keys[0]), key.kid, "{jwks}");
    let disc = get_json(a, "/.well-known/openid-configuration").await;
    assert!(disc.to_string().contains("ES256"), "the algorithms list names ES256: {disc}");

    assert_allowed(a, "GET", "/book", &t, BOOK_GET, "ES256 token").await;
    assert_insufficient_scope(a, "GET", "/user", &t, "ES256 token").await;

    let cli = cli_token(&gw.config_path(), "alpha", Some("API/book.get")).await;
    assert_eq!(decode(&cli).0["alg"], json!("ES256"));
    assert_allowed(a, "GET", "/book", &cli, BOOK_GET, "ES256 token from scopegate token").await;
    gw.stop().await;
}

/// README: "Tokens are RS256 (RSA key) or ES256/ES384 (EC key)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_p384_signing_key_gives_es384_tokens() {
    let key = ec_p384_key();
    let toml = builtin_toml("signing_key = \"keys/ec384.pem\"", &[alpha()]);
    let gw = Gateway::start_with_files(&toml, &[("keys/ec384.pem", &key.pem)]).await;
    let a = gw.addr;
    let t = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let (h, _) = decode(&t);
    assert_eq!((&h["alg"], &h["kid"]), (&json!("ES384"), &json!(key.kid)), "header: {h}");
    let signature = URL_SAFE_NO_PAD.decode(t.rsplit('.').next().expect("signature")).expect("base64url signature");
    assert_eq!(signature.len(), 96, "ES384 signatures are R || S, 96 bytes (RFC 7518 §3.4)");
    let jwks = get_json(a, "/.well-known/jwks.json").await;
    assert_eq!((&jwks["keys"][0]["kty"], &jwks["keys"][0]["crv"]), (&json!("EC"), &json!("P-384")), "{jwks}");
    assert_eq!(thumbprint(&jwks["keys"][0]), key.kid, "{jwks}");
    assert_allowed(a, "GET", "/book", &t, BOOK_GET, "ES384 token").await;
    assert_insufficient_scope(a, "GET", "/user", &t, "ES384 token").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Key rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_signing_key_keeps_the_old_key_published() {
    let (old, new) = (rsa_key(), rsa_key());
    let toml = builtin_toml("signing_key = \"keys/issuer.pem\"", &[alpha()]);
    let live = Gateway::start_with_files(&toml, &[("keys/issuer.pem", &old.pem)]).await;
    let a = live.addr;
    let before = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    assert_eq!(decode(&before).0["kid"], json!(old.kid));
    let cli_before = cli_token(&live.config_path(), "alpha", None).await;

    // The file's contents change (same path).
    live.write("keys/issuer.pem", &new.pem);
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));

    let after = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    assert_eq!(decode(&after).0["kid"], json!(new.kid), "new tokens are signed with the new key");
    let mut both = vec![old.kid.clone(), new.kid.clone()];
    both.sort();
    assert_eq!(published_kids(a).await, both, "the previous key stays published for token_ttl");
    for (token, what) in
        [(&before, "token minted before the rotation"), (&cli_before, "CLI token from before"), (&after, "new token")]
    {
        assert_allowed(a, "GET", "/book", token, BOOK_GET, what).await;
    }
    let cli_after = cli_token(&live.config_path(), "alpha", None).await;
    assert_eq!(decode(&cli_after).0["kid"], json!(new.kid));
    assert_allowed(a, "GET", "/book", &cli_after, BOOK_GET, "CLI token after the rotation").await;

    // A reload that changes nothing else keeps both keys.
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));
    assert_eq!(published_kids(a).await, both, "an unrelated reload keeps the retired key");
    assert_allowed(a, "GET", "/book", &before, BOOK_GET, "old token after a second reload").await;
    live.stop().await;
}

/// Rotation by pointing `signing_key` at another file, of another key type (RSA -> EC): tokens
/// minted before still pass while the old key is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_to_another_key_type_keeps_old_tokens_valid() {
    let (rsa, ec) = (rsa_key(), ec_p256_key());
    let live = Gateway::start_with_files(
        &builtin_toml("signing_key = \"keys/rsa.pem\"", &[alpha()]),
        &[("keys/rsa.pem", &rsa.pem), ("keys/ec.pem", &ec.pem)],
    )
    .await;
    let a = live.addr;
    let before = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    assert_eq!(decode(&before).0["alg"], json!("RS256"));

    live.write("gateway.toml", &builtin_toml("signing_key = \"keys/ec.pem\"", &[alpha()]));
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));

    let after = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let (h, _) = decode(&after);
    assert_eq!((&h["alg"], &h["kid"]), (&json!("ES256"), &json!(ec.kid)), "{h}");
    let mut both = vec![rsa.kid.clone(), ec.kid.clone()];
    both.sort();
    assert_eq!(published_kids(a).await, both, "the previous key stays published for token_ttl");
    assert_allowed(a, "GET", "/book", &after, BOOK_GET, "ES256 token after the rotation").await;
    assert_allowed(a, "GET", "/book", &before, BOOK_GET, "RS256 token minted before the rotation to EC").await;
    live.stop().await;
}

/// "The previous public key stays published for token_ttl": and then no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_leaves_the_jwks_after_token_ttl() {
    let (old, new) = (rsa_key(), rsa_key());
    let ttl = format!("token_ttl = \"{TTL}s\"");
    let toml = builtin_toml("signing_key = \"keys/issuer.pem\"", &[alpha()]).replace(&ttl, "token_ttl = \"3s\"");
    assert!(toml.contains("token_ttl = \"3s\""), "{toml}");
    let live = Gateway::start_with_files(&toml, &[("keys/issuer.pem", &old.pem)]).await;
    let a = live.addr;
    assert_eq!(published_kids(a).await, vec![old.kid.clone()]);

    live.write("keys/issuer.pem", &new.pem);
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));
    let mut both = vec![old.kid.clone(), new.kid.clone()];
    both.sort();
    assert_eq!(published_kids(a).await, both, "right after the rotation both keys are published");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut kids = published_kids(a).await;
    while kids != [new.kid.clone()] && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kids = published_kids(a).await;
    }
    assert_eq!(kids, vec![new.kid.clone()], "the retired key is withdrawn once token_ttl has passed");
    live.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. hash-secret
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_secret_command() {
    // `printf 's3cret\n' | scopegate hash-secret`: the trailing newline is not part of the secret.
    let out = scopegate(&["hash-secret"], Some(b"s3cret\n")).await;
    assert!(out.status.success(), "hash-secret: {}", show(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let hash = stdout.strip_suffix('\n').unwrap_or_else(|| panic!("no trailing newline: {}", show(&out)));
    assert!(hash.starts_with("$argon2id$"), "an argon2id PHC string: {}", show(&out));
    assert!(!hash.contains(char::is_whitespace), "one line: {}", show(&out));

    // Without the newline: a different salt, the same secret.
    let out2 = scopegate(&["hash-secret"], Some(b"s3cret")).await;
    assert!(out2.status.success(), "hash-secret: {}", show(&out2));
    let hash2 = String::from_utf8(out2.stdout.clone()).expect("utf-8").trim_end().to_string();
    assert_ne!(hash, hash2, "salted");

    // Empty input is an error.
    let out3 = scopegate(&["hash-secret"], Some(b"")).await;
    assert!(!out3.status.success(), "hash-secret of nothing must fail: {}", show(&out3));
    assert!(out3.stdout.is_empty(), "{}", show(&out3));

    let clients = [
        client_toml("svc", &format!("client_secret_hash = {}", toml_str(hash)), &["API/book.get"]),
        client_toml("svc2", &format!("client_secret_hash = {}", toml_str(&hash2)), &["API/book.get"]),
    ];
    let toml = builtin_toml("", &clients);
    // The config validates with the binary too.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, &toml).expect("write");
    let out = scopegate(&["check", "--config", cfg.to_str().expect("utf-8")], None).await;
    assert!(out.status.success(), "check: {}", show(&out));

    let gw = Gateway::start(&toml).await;
    let a = gw.addr;
    let cc = ("grant_type", "client_credentials");
    for id in ["svc", "svc2"] {
        let t = fetch_token(a, id, "s3cret", None).await;
        assert_allowed(a, "GET", "/book", &t, BOOK_GET, id).await;
        let r = token_request(a, "", None, &[cc, ("client_id", id), ("client_secret", "s3cret")]).await;
        token_success(&r, &format!("{id}: s3cret, post"));
        let r = token_request(a, "", None, &[cc, ("client_id", id), ("client_secret", "s3cret\n")]).await;
        token_error(&r, 401, "invalid_client", &format!("{id}: s3cret + newline, post"));
        let r = token_request(a, "", Some((id, "s3cret\n")), &[cc]).await;
        token_error(&r, 401, "invalid_client", &format!("{id}: s3cret + newline, Basic"));
        let r = token_request(a, "", Some((id, "s3cre")), &[cc]).await;
        token_error(&r, 401, "invalid_client", &format!("{id}: a prefix of the secret"));
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. Unknown clients are refused like wrong secrets
// ---------------------------------------------------------------------------------------------

/// An unknown client_id costs an argon2 verification too (against a dummy hash), so a wrong
/// secret and an unknown client take about as long as a right secret. Timings are not asserted
/// (too noisy for CI); this checks the behaviour along that path: concurrent right, wrong and
/// unknown requests are accepted / refused as they should be. There are more of them than the
/// secret checks take at once, so some are told to retry (503 + retry-after), as a client
/// library would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_and_unknown_clients_are_refused() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    let cc = ("grant_type", "client_credentials");
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..3 {
        for (id, secret, ok) in [
            ("alpha", ALPHA_SECRET, true),
            ("alpha", "alpha-secreT", false),
            ("alpha", "alpha-secret ", false),
            ("unknown-client", ALPHA_SECRET, false),
            ("Alpha", ALPHA_SECRET, false),
            ("beta", BETA_SECRET, true),
            ("beta", "beta-secre", false),
            ("unknown-plain", BETA_SECRET, false),
        ] {
            tasks.spawn(async move {
                let basic = retrying(a, Some((id, secret)), &[cc]).await;
                let post = retrying(a, None, &[cc, ("client_id", id), ("client_secret", secret)]).await;
                (round, id, secret, ok, basic, post)
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (round, id, secret, ok, basic, post) = done.expect("request task");
        let what = format!("round {round}: {id}:{secret:?}");
        if ok {
            token_success(&basic, &format!("{what}, Basic"));
            token_success(&post, &format!("{what}, post"));
        } else {
            token_error(&basic, 401, "invalid_client", &format!("{what}, Basic"));
            token_error(&post, 401, "invalid_client", &format!("{what}, post"));
        }
    }
    gw.stop().await;
}

/// Sends a token request again while it is refused as busy (503 + retry-after, which is
/// honoured), at most 20 times.
async fn retrying(addr: SocketAddr, auth: Option<(&str, &str)>, body: &[(&str, &str)]) -> Resp {
    let mut r = token_request(addr, "", auth, body).await;
    for _ in 0..20 {
        if r.status != BUSY.0 {
            break;
        }
        token_error(&r, BUSY.0, "temporarily_unavailable", "busy");
        let secs: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after in seconds");
        tokio::time::sleep(Duration::from_secs(secs)).await;
        r = token_request(addr, "", auth, body).await;
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Interoperability: PyJWT verifies a minted token
// ---------------------------------------------------------------------------------------------

/// Runs tests/interop/verify_token.py; `None` when PyJWT is not installed (exit 77).
async fn pyjwt_verify(jwks_file: &Path, token: &str, issuer: &str, alg: &str) -> Option<Output> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify_token.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script)
        .arg(jwks_file)
        .arg(token)
        .arg(issuer)
        .arg(alg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            // python3 itself is missing: the same as PyJWT missing.
            eprintln!("cannot run python3: {e}");
            return None;
        }
        Err(_) => panic!("verify_token.py did not finish within 60s"),
    };
    (out.status.code() != Some(77)).then_some(out)
}

fn pyjwt_missing() {
    assert!(
        std::env::var_os("CI").is_none(),
        "PyJWT is not installed, and CI is set: the interoperability test must run in CI (pip install 'PyJWT[crypto]')"
    );
    println!("SKIPPED: PyJWT not installed (pip install 'PyJWT[crypto]')");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_a_minted_token() {
    let gw = Gateway::start(&default_toml()).await;
    let token = fetch_token(gw.addr, "alpha", ALPHA_SECRET, None).await;
    let jwks = send(&gw, "GET", "/.well-known/jwks.json", &[], "").await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    let jwks_file = gw.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks.body).expect("write jwks");

    let Some(out) = pyjwt_verify(&jwks_file, &token, ISSUER, "RS256").await else {
        gw.stop().await;
        pyjwt_missing();
        return;
    };
    assert!(out.status.success(), "PyJWT refused a minted token: {}", show(&out));
    let verified: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)));
    let (header, claims) = decode(&token);
    assert_eq!(verified["claims"], claims, "PyJWT's claims are the token's");
    assert_eq!(verified["header"]["alg"], json!("RS256"));
    assert_eq!(verified["header"]["kid"], header["kid"]);
    assert_eq!(verified["claims"]["iss"], json!(ISSUER));
    assert_eq!(verified["claims"]["client_id"], json!("alpha"));
    assert_eq!(verified["claims"]["token_use"], json!("access"));
    assert_eq!(verified["claims"]["scope"], json!("API/book.get API/book.post"));

    // The check is live: a changed payload or another issuer is refused.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims.clone();
    forged["scope"] = json!("API/book.get API/book.post API/user.get");
    let forged = format!("{}.{}.{}", parts[0], b64url(forged.to_string()), parts[2]);
    let out = pyjwt_verify(&jwks_file, &forged, ISSUER, "RS256").await.expect("PyJWT was there a moment ago");
    assert_eq!(out.status.code(), Some(1), "PyJWT must refuse a changed payload: {}", show(&out));
    let out = pyjwt_verify(&jwks_file, &token, "https://other.test", "RS256").await.expect("PyJWT");
    assert_eq!(out.status.code(), Some(1), "PyJWT must refuse another issuer: {}", show(&out));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_an_es256_token() {
    let key = ec_p256_key();
    let toml = builtin_toml("signing_key = \"keys/ec.pem\"", &[alpha()]);
    let gw = Gateway::start_with_files(&toml, &[("keys/ec.pem", &key.pem)]).await;
    let token = fetch_token(gw.addr, "alpha", ALPHA_SECRET, Some("API/book.get")).await;
    let jwks = send(&gw, "GET", "/.well-known/jwks.json", &[], "").await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    let jwks_file = gw.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks.body).expect("write jwks");

    let Some(out) = pyjwt_verify(&jwks_file, &token, ISSUER, "ES256").await else {
        gw.stop().await;
        pyjwt_missing();
        return;
    };
    assert!(out.status.success(), "PyJWT refused an ES256 token: {}", show(&out));
    let verified: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)));
    assert_eq!(verified["claims"], decode(&token).1);
    assert_eq!(verified["header"]["kid"], json!(key.kid));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 11. The token endpoint under a flood (the real binary)
// ---------------------------------------------------------------------------------------------

/// The body and status of a token request refused because the secret checks are busy.
const BUSY: (u16, &str) = (503, r#"{"error":"temporarily_unavailable"}"#);

/// Checks a refusal from the flood: 401 `invalid_client`, or 503 `temporarily_unavailable` with
/// a `retry-after`; both JSON and `no-store`. Returns true for a 503.
fn flood_answer(r: &Resp, what: &str) -> bool {
    if r.status == BUSY.0 {
        token_error(r, BUSY.0, "temporarily_unavailable", what);
        let retry = r.header("retry-after").and_then(|v| v.parse::<u64>().ok());
        assert!(retry.is_some_and(|s| s >= 1), "{what}: 503 without a retry-after in seconds: {r:?}");
        true
    } else {
        token_error(r, 401, "invalid_client", what);
        false
    }
}

/// 64 connections that each keep sending wrong secrets for 4 s: with every check running
/// argon2id (19 MiB each) at once, the process grew by ~1.4 GB. The checks in flight are
/// bounded: every request is answered (401, or 503 + retry-after when the checks are busy), the
/// peak RSS stays under 100 MiB, and a client that authenticated before gets tokens during the
/// flood (its verified secret is remembered) and right after it, as does a first-time client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flood_keeps_memory_flat_and_known_clients_served() {
    const WORKERS: usize = 64;
    const FLOOD_FOR: Duration = Duration::from_secs(4);
    let toml = server_toml("")
        + &builtin_issuer_toml(ISSUER, &format!("token_ttl = \"{TTL}s\""))
        + &resource_server_toml("API", &["book.get", "book.post", "user.get"])
        + &alpha()
        + &beta();
    // Only warnings, as before the harness read the address: plus the "listening" line.
    let p = Binary::options(&toml)
        .rust_log("warn,scopegate=info,scopegate::access=warn,scopegate::issuer=warn")
        .start()
        .await;
    let a = p.addr;
    // alpha authenticates once before the flood.
    fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let before_kib = p.vm_kib("VmRSS");

    let flood_end = tokio::time::Instant::now() + FLOOD_FOR;
    let mut flood = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        flood.spawn(async move {
            let (mut refused, mut busy) = (0usize, 0usize);
            let mut i = 0usize;
            while tokio::time::Instant::now() < flood_end {
                // Unknown clients, and known ones (hashed and plain secrets) with wrong secrets.
                let id = ["nobody", "alpha", "beta"][(w + i) % 3];
                let secret = format!("wrong-{w}-{i}");
                let r = token_request(a, "", Some((id, &secret)), &[("grant_type", "client_credentials")]).await;
                if flood_answer(&r, &format!("worker {w}, request {i} ({id})")) {
                    busy += 1;
                } else {
                    refused += 1;
                }
                i += 1;
            }
            (refused, busy)
        });
    }

    // During the flood: alpha still gets its tokens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..5 {
        let t = fetch_token(a, "alpha", ALPHA_SECRET, None).await;
        assert_eq!(scopes_of(&t), sorted(&ALPHA_SCOPES));
        assert!(tokio::time::Instant::now() < flood_end, "token {n} came after the flood ended: the test is too slow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut refused, mut busy) = (0, 0);
    while let Some(done) = flood.join_next().await {
        let (r, b) = done.expect("flood worker");
        refused += r;
        busy += b;
    }
    // Right after: alpha again, and beta, which never authenticated before (a secret check).
    fetch_token(a, "alpha", ALPHA_SECRET, None).await;
    let t = fetch_token(a, "beta", BETA_SECRET, None).await;
    assert_eq!(scopes_of(&t), sorted(&BETA_SCOPES));

    let peak_kib = p.vm_kib("VmHWM");
    eprintln!("flood: {refused} x 401, {busy} x 503; RSS before {before_kib} KiB, peak {peak_kib} KiB");
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB (before the flood: {before_kib} KiB)");
    assert!(busy > 0, "{WORKERS} concurrent checks were never refused as busy ({refused} refused as 401)");
}

// ---------------------------------------------------------------------------------------------
// 12. A retired signing key stops verifying when it leaves the JWKS
// ---------------------------------------------------------------------------------------------

/// An access token for `alpha` (scope `API/book.get`, valid for 10 minutes) signed here with
/// `key`: what someone holding a retired private key could still make.
fn mint_with(key: &PemKey, jti: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let iat = now();
    let claims = json!({
        "iss": ISSUER, "sub": "alpha", "client_id": "alpha", "token_use": "access",
        "scope": "API/book.get", "iat": iat, "exp": iat + 600, "jti": jti, "version": 2,
    });
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(key.pem.as_bytes()).expect("RSA PEM");
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign")
}

/// After the signing key file is swapped, the old key stays published (and verifying) for
/// token_ttl; once it leaves the JWKS, a token signed with it (minted here, never seen before)
/// is refused, while the new key's tokens still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_signing_key_stops_verifying_when_it_leaves_the_jwks() {
    let (old, new) = (rsa_key(), rsa_key());
    let ttl = format!("token_ttl = \"{TTL}s\"");
    let toml = builtin_toml("signing_key = \"keys/issuer.pem\"", &[alpha()]).replace(&ttl, "token_ttl = \"3s\"");
    assert!(toml.contains("token_ttl = \"3s\""), "{toml}");
    let live = Gateway::start_with_files(&toml, &[("keys/issuer.pem", &old.pem)]).await;
    let a = live.addr;
    assert_allowed(a, "GET", "/book", &mint_with(&old, "before"), BOOK_GET, "old key, before the rotation").await;

    live.write("keys/issuer.pem", &new.pem);
    live.reload().await.unwrap_or_else(|e| panic!("reload rejected the new config: {e}"));
    assert!(published_kids(a).await.contains(&old.kid), "the old key is published right after the rotation");
    assert_allowed(a, "GET", "/book", &mint_with(&old, "window"), BOOK_GET, "old key, inside its window").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while published_kids(a).await != [new.kid.clone()] {
        assert!(tokio::time::Instant::now() < deadline, "the old key was never withdrawn from the JWKS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Verification follows the JWKS within moments (the key set is swapped by a timer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    for n in 0.. {
        let r = call(a, "GET", "/book", &mint_with(&old, &format!("after-{n}"))).await;
        if r.status == 401 {
            assert_eq!(r.body, UNAUTHORIZED, "{r:?}");
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(tokio::time::Instant::now() < deadline, "a token signed with the withdrawn key still passes: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(a, "GET", "/book", &mint_with(&old, "later")).await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "withdrawn key, a later token: {r:?}");
    // The new key's tokens pass (this one expires in 3 s: checked at once).
    let r = token_request(a, "", Some(("alpha", ALPHA_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let body: Value = serde_json::from_str(&r.body).expect("JSON");
    let t = body["access_token"].as_str().expect("access_token");
    assert_eq!(decode(t).0["kid"], json!(new.kid));
    assert_allowed(a, "GET", "/book", t, BOOK_GET, "a token from the new key").await;
    live.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 13. Issuer endpoints by their normalized path (raw TCP: a client library would normalize)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_endpoints_answer_other_spellings_of_their_paths() {
    let gw = Gateway::start(&default_toml()).await;
    let a = gw.addr;
    let body = "grant_type=client_credentials";
    let auth = basic("alpha", ALPHA_SECRET);
    for path in ["/oauth2/./token", "//oauth2/token", "/oauth2//token", "/x/../oauth2/token", "/oauth2/%74oken"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: {a}\r\nauthorization: {auth}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = raw(a, req.as_bytes()).await;
        token_success(&r, &format!("POST {path}"));
    }
    for path in ["/.well-known//jwks.json", "/.well-known/./jwks.json", "//.well-known/jwks.json"] {
        let r = raw(a, format!("GET {path} HTTP/1.1\r\nhost: {a}\r\nconnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        let jwks: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {r:?}"));
        assert!(jwks["keys"].as_array().is_some_and(|k| !k.is_empty()), "GET {path}: {r:?}");
    }
    let path = "/.well-known//openid-configuration";
    let r = raw(a, format!("GET {path} HTTP/1.1\r\nhost: {a}\r\nconnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    let doc: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {r:?}"));
    assert_eq!(doc["issuer"], json!(ISSUER), "GET {path}: {r:?}");
    // A wrong method is still judged by the endpoint the normalized path names.
    let r = raw(a, format!("GET //oauth2/token HTTP/1.1\r\nhost: {a}\r\nconnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "GET //oauth2/token: {r:?}");
    gw.stop().await;
}
