//! Authentication and authorization against the real server: bearer-token validation,
//! scopes, key sources and the "issuer has no keys" answer, and the
//! verified-token cache. Every test runs a real gateway, a real JWKS server and a real upstream;
//! tokens are minted here.

use crate::common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Config builders
// ---------------------------------------------------------------------------------------------

/// One `[[routes]]` table forwarding to the `books` upstream.
fn route(path: &str, methods: &[&str], extra: &str) -> String {
    route_toml(path, methods, &[&forward_to("books"), extra])
}

/// A complete gateway.toml: listener on 127.0.0.1:0, `[auth]` with `auth` lines, the issuers,
/// one upstream `books`, and the routes.
fn gateway_toml(auth: &str, issuers: &[String], upstream: &Upstream, routes: &[String]) -> String {
    server_toml("") + &auth_toml(auth) + &issuers.concat() + &upstream_toml("books", &upstream.url) + &routes.concat()
}

// ---------------------------------------------------------------------------------------------
// Token builders
// ---------------------------------------------------------------------------------------------

/// `claims` changed by `edit`.
fn edited(mut claims: Value, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    edit(claims.as_object_mut().expect("claims are an object"));
    claims
}

/// An unsigned JWT: `header.payload.` with an empty signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64url(header.to_string()), b64url(claims.to_string()))
}

/// An HS256 JWT whose HMAC secret is `secret`.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64url(header.to_string()), b64url(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// A JWT whose payload segment is `payload` verbatim, correctly signed by `key`.
fn signed_raw_payload(key: &TestKey, payload: &str) -> String {
    let header = json!({"alg": alg_name(key.alg), "kid": key.kid, "typ": "JWT"});
    let input = format!("{}.{payload}", b64url(header.to_string()));
    format!("{input}.{}", b64url(key.sign_bytes(input.as_bytes())))
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// The media type of the content-type header, without parameters.
fn media_type(resp: &Resp) -> Option<&str> {
    resp.header("content-type").map(|ct| ct.split(';').next().unwrap_or_default().trim())
}

/// A gateway-written error: status, JSON content-type, exact body.
fn check_error(resp: &Resp, status: u16, body: &str) -> Result<(), String> {
    if resp.status != status {
        return Err(format!("status: expected {status}, got {} (body {:?})", resp.status, resp.body));
    }
    if media_type(resp) != Some("application/json") {
        return Err(format!("content-type: expected application/json, got {:?}", resp.header("content-type")));
    }
    if resp.body != body {
        return Err(format!("body: expected {body:?}, got {:?}", resp.body));
    }
    Ok(())
}

/// 401 `{"message":"Unauthorized"}` with exactly this www-authenticate.
fn check_unauthorized(resp: &Resp, www: &str) -> Result<(), String> {
    check_error(resp, 401, UNAUTHORIZED)?;
    match resp.header("www-authenticate") {
        Some(got) if got == www => Ok(()),
        got => Err(format!("www-authenticate: expected {www:?}, got {got:?}")),
    }
}

/// The scope-failure answer: `status` 401 or 403 with its body and `insufficient_scope`.
fn check_insufficient_scope(resp: &Resp, status: u16) -> Result<(), String> {
    let body = if status == 403 { FORBIDDEN } else { UNAUTHORIZED };
    check_error(resp, status, body)?;
    match resp.header("www-authenticate") {
        Some(INSUFFICIENT_SCOPE) => Ok(()),
        got => Err(format!("www-authenticate: expected {INSUFFICIENT_SCOPE:?}, got {got:?}")),
    }
}

/// 200 from the upstream, which received exactly one more request, for `path`.
fn check_forwarded(resp: &Resp, up: &Upstream, before: usize, path: &str) -> Result<(), String> {
    if resp.status != 200 {
        return Err(format!(
            "status: expected 200, got {} (body {:?}, www-authenticate {:?})",
            resp.status,
            resp.body,
            resp.header("www-authenticate")
        ));
    }
    if up.count() != before + 1 {
        return Err(format!("upstream should have received 1 request, got {}", up.count() - before));
    }
    let target = up.last().map(|r| r.target).unwrap_or_default();
    if target != path {
        return Err(format!("upstream target: expected {path:?}, got {target:?}"));
    }
    Ok(())
}

#[track_caller]
fn ok(result: Result<(), String>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
}

/// Panics listing every failed row of a table.
#[track_caller]
fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{} row(s) failed:\n  {}", failures.len(), failures.join("\n  "));
}

async fn get_with_header(gw: &Gateway, path: &str, authorization: Option<&str>) -> Resp {
    match authorization {
        Some(value) => send(gw, "GET", path, &[("authorization", value)], "").await,
        None => send(gw, "GET", path, &[], "").await,
    }
}

/// How a row of a token table must be answered.
enum Expect {
    /// Forwarded to the upstream with 200.
    Pass,
    /// 401 with this www-authenticate.
    Reject(&'static str),
}

// ---------------------------------------------------------------------------------------------
// 1. Every bad-token kind
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_kind_is_401_and_valid_variants_pass() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let impostor = TestKey::generate(Algorithm::RS256, "k1"); // same kid, other key
    let ec = TestKey::generate(Algorithm::ES256, "ec1"); // published, but ES256 is not allowed
    let stranger = TestKey::generate(Algorithm::RS256, "kid-nobody-publishes");
    // An HMAC secret published as a JWK: it must never verify anything.
    let oct = json!({"kty": "oct", "kid": "sym", "alg": "HS256", "k": b64url("shared-secret")});
    let jwks = JwksServer::start(vec![key.jwk(), ec.jwk(), oct]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        r#"leeway = "60s""#,
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "audiences = [\"app-client\"]\ntoken_use = \"access\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;

    // aud absent, client_id "app-client" is in `audiences`: valid.
    let good = || claims(ISS, "app-client", "API/book.get");
    let valid = key.sign(&good());
    let parts: Vec<&str> = valid.split('.').collect();
    let t = now() as i64;
    let rs_header = json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
    let hs_header = json!({"alg": "HS256", "kid": "k1", "typ": "JWT"});
    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let signed = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| bearer(&key.sign(&edited(good(), edit)));

    use Expect::{Pass, Reject};
    let rows: Vec<(&str, Option<String>, Expect)> = vec![
        // Baselines: the same gateway lets valid tokens through.
        ("valid token", bearer(&valid), Pass),
        ("prefix lower-case 'bearer '", Some(format!("bearer {valid}")), Pass),
        ("prefix upper-case 'BEARER '", Some(format!("BEARER {valid}")), Pass),
        ("no prefix, bare token", Some(valid.clone()), Pass),
        // No token at all.
        ("missing header", None, Reject(BEARER)),
        ("empty header", Some(String::new()), Reject(BEARER)),
        // Malformed.
        ("garbage 'Bearer abc'", bearer("abc"), Reject(INVALID_TOKEN)),
        ("two-part token", bearer(&format!("{}.{}", parts[0], parts[1])), Reject(INVALID_TOKEN)),
        ("four-part token", bearer(&format!("{valid}.{}", parts[2])), Reject(INVALID_TOKEN)),
        ("bad base64 in every part", bearer("e@y!J.e*y#J.s$i%g"), Reject(INVALID_TOKEN)),
        (
            "bad base64 payload, correctly signed",
            bearer(&signed_raw_payload(&key, "eyJ!!!not*base64")),
            Reject(INVALID_TOKEN),
        ),
        (
            "payload is not JSON, correctly signed",
            bearer(&signed_raw_payload(&key, &b64url("not json"))),
            Reject(INVALID_TOKEN),
        ),
        // Signature.
        ("signed by another key with the same kid", bearer(&impostor.sign(&good())), Reject(INVALID_TOKEN)),
        (
            "payload swapped after signing",
            bearer(&format!(
                "{}.{}.{}",
                parts[0],
                b64url(
                    edited(good(), |c| {
                        c.insert("scope".into(), json!("API/admin"));
                    })
                    .to_string()
                ),
                parts[2]
            )),
            Reject(INVALID_TOKEN),
        ),
        ("signature stripped", bearer(&format!("{}.{}.", parts[0], parts[1])), Reject(INVALID_TOKEN)),
        // Time claims, leeway 60 s.
        (
            "expired beyond leeway",
            signed(&|c| {
                c.insert("iat".into(), json!(t - 3600));
                c.insert("exp".into(), json!(t - 120));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "expired within leeway",
            signed(&|c| {
                c.insert("iat".into(), json!(t - 3600));
                c.insert("exp".into(), json!(t - 20));
            }),
            Pass,
        ),
        (
            "missing exp",
            signed(&|c| {
                c.remove("exp");
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "nbf in the future beyond leeway",
            signed(&|c| {
                c.insert("nbf".into(), json!(t + 120));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "nbf in the future within leeway",
            signed(&|c| {
                c.insert("nbf".into(), json!(t + 20));
            }),
            Pass,
        ),
        (
            "iat in the future beyond leeway",
            signed(&|c| {
                c.insert("iat".into(), json!(t + 120));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "iat in the future within leeway",
            signed(&|c| {
                c.insert("iat".into(), json!(t + 20));
            }),
            Pass,
        ),
        // Issuer (exact match), audience, token_use.
        (
            "wrong issuer (trailing slash)",
            signed(&|c| {
                c.insert("iss".into(), json!(format!("{ISS}/")));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "wrong issuer (other case)",
            signed(&|c| {
                c.insert("iss".into(), json!(ISS.to_uppercase()));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "missing iss",
            signed(&|c| {
                c.remove("iss");
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "wrong audience (string), even with a matching client_id",
            signed(&|c| {
                c.insert("aud".into(), json!("other-client"));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "wrong audience (array)",
            signed(&|c| {
                c.insert("aud".into(), json!(["other-client", "app-client-2"]));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "right audience (string)",
            signed(&|c| {
                c.insert("aud".into(), json!("app-client"));
                c.insert("client_id".into(), json!("someone-else"));
            }),
            Pass,
        ),
        (
            "right audience (array)",
            signed(&|c| {
                c.insert("aud".into(), json!(["other-client", "app-client"]));
                c.insert("client_id".into(), json!("someone-else"));
            }),
            Pass,
        ),
        (
            "aud absent, client_id not in audiences",
            signed(&|c| {
                c.insert("client_id".into(), json!("other-client"));
                c.insert("sub".into(), json!("other-client"));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "aud absent, client_id absent",
            signed(&|c| {
                c.remove("client_id");
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "wrong token_use \"id\"",
            signed(&|c| {
                c.insert("token_use".into(), json!("id"));
            }),
            Reject(INVALID_TOKEN),
        ),
        (
            "missing token_use",
            signed(&|c| {
                c.remove("token_use");
            }),
            Reject(INVALID_TOKEN),
        ),
        // Algorithms.
        (
            "alg none, empty signature",
            bearer(&unsigned(&json!({"alg": "none", "typ": "JWT"}), &good())),
            Reject(INVALID_TOKEN),
        ),
        (
            "alg none with a known kid",
            bearer(&unsigned(&json!({"alg": "none", "kid": "k1", "typ": "JWT"}), &good())),
            Reject(INVALID_TOKEN),
        ),
        (
            "alg none carrying a valid RS256 signature",
            bearer(&format!("{}.{}.{}", b64url(json!({"alg": "none", "kid": "k1"}).to_string()), parts[1], parts[2])),
            Reject(INVALID_TOKEN),
        ),
        (
            "HS256 keyed with the RSA public key PEM",
            bearer(&hs256(&hs_header, &good(), key.public_key_pem().as_bytes())),
            Reject(INVALID_TOKEN),
        ),
        (
            "HS256 keyed with the RSA public key DER",
            bearer(&hs256(&hs_header, &good(), &key.public_key_spki_der())),
            Reject(INVALID_TOKEN),
        ),
        (
            "HS256 signed with the secret of a published oct JWK",
            bearer(&hs256(&json!({"alg": "HS256", "kid": "sym", "typ": "JWT"}), &good(), b"shared-secret")),
            Reject(INVALID_TOKEN),
        ),
        ("ES256 key and token, algorithms = [\"RS256\"]", bearer(&ec.sign(&good())), Reject(INVALID_TOKEN)),
        (
            "RS256 signature under header alg RS512",
            bearer(&key.sign_with_header(&json!({"alg": "RS512", "kid": "k1", "typ": "JWT"}), &good())),
            Reject(INVALID_TOKEN),
        ),
        // Critical header extensions: none is understood, so any `crit` refuses the token,
        // even an empty or null one (RFC 7515 §4.1.11).
        (
            "crit naming an extension",
            bearer(
                &key.sign_with_header(&json!({"alg": "RS256", "kid": "k1", "crit": ["b64"], "b64": false}), &good()),
            ),
            Reject(INVALID_TOKEN),
        ),
        (
            "crit: null",
            bearer(&key.sign_with_header(&json!({"alg": "RS256", "kid": "k1", "crit": null}), &good())),
            Reject(INVALID_TOKEN),
        ),
        // Keys.
        ("unknown kid", bearer(&stranger.sign(&good())), Reject(INVALID_TOKEN)),
        ("valid token again (after all the bad ones)", bearer(&key.sign_with_header(&rs_header, &good())), Pass),
    ];

    let mut failures = Vec::new();
    for (name, authorization, expect) in &rows {
        let before = up.count();
        let resp = get_with_header(&gw, "/book", authorization.as_deref()).await;
        let result = match expect {
            Pass => check_forwarded(&resp, &up, before, "/book"),
            Reject(www) => check_unauthorized(&resp, www).and_then(|()| {
                if up.count() == before {
                    Ok(())
                } else {
                    Err("rejected request still reached the upstream".to_string())
                }
            }),
        };
        if let Err(e) = result {
            failures.push(format!("{name}: {e}"));
        }
    }
    gw.stop().await;
    assert_no_failures(&failures);
}

// ---------------------------------------------------------------------------------------------
// 2. RS256, PS256, ES256, EdDSA
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_ps256_es256_and_eddsa_keys_are_accepted_when_allowed() {
    let keys = [
        TestKey::generate(Algorithm::RS256, "rsa-1"),
        TestKey::generate(Algorithm::PS256, "pss-1"),
        TestKey::generate(Algorithm::ES256, "ec-1"),
        TestKey::generate(Algorithm::EdDSA, "ed-1"),
    ];
    let jwks = JwksServer::start(keys.iter().map(TestKey::jwk).collect()).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256", "PS256", "ES256", "EdDSA"], "")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;

    let mut failures = Vec::new();
    for key in &keys {
        let before = up.count();
        let token = key.sign(&claims(ISS, "client-a", "API/book.get"));
        let resp = get(&gw, "/book", Some(&token)).await;
        if let Err(e) = check_forwarded(&resp, &up, before, "/book") {
            failures.push(format!("{}: {e}", alg_name(key.alg)));
        }
    }

    // The key and the algorithm must belong together: each key's signature under another
    // published kid fails, and a same-kid impostor of every type fails.
    let c = claims(ISS, "client-a", "API/book.get");
    let cross = [
        ("ES256 signature under the RSA kid", &keys[2], "rsa-1"),
        ("EdDSA signature under the ES256 kid", &keys[3], "ec-1"),
        ("RS256 signature under the EdDSA kid", &keys[0], "ed-1"),
    ];
    for (name, key, kid) in cross {
        let header = json!({"alg": alg_name(key.alg), "kid": kid, "typ": "JWT"});
        let resp = get(&gw, "/book", Some(&key.sign_with_header(&header, &c))).await;
        if let Err(e) = check_unauthorized(&resp, INVALID_TOKEN) {
            failures.push(format!("{name}: {e}"));
        }
    }
    for key in &keys {
        let impostor = TestKey::generate(key.alg, &key.kid);
        let resp = get(&gw, "/book", Some(&impostor.sign(&c))).await;
        if let Err(e) = check_unauthorized(&resp, INVALID_TOKEN) {
            failures.push(format!("{} impostor: {e}", alg_name(key.alg)));
        }
    }
    gw.stop().await;
    assert_no_failures(&failures);
}

// ---------------------------------------------------------------------------------------------
// 3. Scopes
// ---------------------------------------------------------------------------------------------

/// Runs the scope table against a gateway whose `scope_failure_status` is `failure_status`.
async fn scope_table(failure_status: u16) {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        &format!("scope_failure_status = {failure_status}"),
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[
            route("/any", &["GET"], r#"scopes = ["API/a", "API/b"]"#),
            route("/all", &["GET"], r#"scopes_all = ["API/a", "API/b"]"#),
            route("/book", &["GET"], r#"scopes = ["API/book.get"]"#),
            route("/noscope", &["GET"], ""),
        ],
    );
    let gw = Gateway::start(&toml).await;

    let scope = |s: &str| key.sign(&claims(ISS, "client-a", s));
    let scp = |v: Value| {
        key.sign(&edited(claims(ISS, "client-a", ""), |c| {
            c.remove("scope");
            c.insert("scp".into(), v);
        }))
    };
    let no_scope = key.sign(&edited(claims(ISS, "client-a", ""), |c| {
        c.remove("scope");
    }));

    let rows: Vec<(&str, &str, String, bool)> = vec![
        // any-of
        ("any-of, first", "/any", scope("API/a"), true),
        ("any-of, second", "/any", scope("API/b"), true),
        ("any-of, among others", "/any", scope("API/c API/b API/d"), true),
        ("any-of, none", "/any", scope("API/c API/d"), false),
        ("any-of, scp array", "/any", scp(json!(["API/c", "API/b"])), true),
        ("any-of, scp string", "/any", scp(json!("API/a")), true),
        ("any-of, scp array without", "/any", scp(json!(["API/c"])), false),
        // all-of
        ("all-of, only one", "/all", scope("API/a"), false),
        ("all-of, only the other", "/all", scope("API/b"), false),
        ("all-of, both", "/all", scope("API/a API/b"), true),
        ("all-of, both among others", "/all", scope("API/x API/b API/a"), true),
        ("all-of, scp array both", "/all", scp(json!(["API/a", "API/b"])), true),
        ("all-of, scp array one", "/all", scp(json!(["API/a"])), false),
        // exact scope names only
        ("exact", "/book", scope("API/user.get API/book.get"), true),
        ("superstring", "/book", scope("API/book.get.all"), false),
        ("prefix", "/book", scope("API/book"), false),
        ("truncated", "/book", scope("API/book.ge"), false),
        ("leading junk", "/book", scope("xAPI/book.get"), false),
        ("other case", "/book", scope("API/BOOK.GET"), false),
        ("comma-joined", "/book", scope("API/book.get,API/user.get"), false),
        ("empty scope claim", "/book", scope(""), false),
        ("no scope claim", "/book", no_scope.clone(), false),
        ("scp superstring", "/book", scp(json!(["API/book.getter"])), false),
        // One array element is one scope, even if it contains a space.
        ("scp element with a space", "/book", scp(json!(["API/x API/book.get"])), false),
        // a jwt route without scopes needs only a valid token
        ("route without scopes", "/noscope", no_scope.clone(), true),
    ];

    let mut failures = Vec::new();
    for (name, path, token, pass) in &rows {
        let before = up.count();
        let resp = get(&gw, path, Some(token)).await;
        let result = if *pass {
            check_forwarded(&resp, &up, before, path)
        } else {
            check_insufficient_scope(&resp, failure_status).and_then(|()| {
                if up.count() == before {
                    Ok(())
                } else {
                    Err("refused request still reached the upstream".to_string())
                }
            })
        };
        if let Err(e) = result {
            failures.push(format!("{name} ({path}): {e}"));
        }
    }

    // An invalid token is still 401 invalid_token, whatever scope_failure_status says.
    let resp = get(&gw, "/book", Some("abc")).await;
    if let Err(e) = check_unauthorized(&resp, INVALID_TOKEN) {
        failures.push(format!("invalid token: {e}"));
    }
    gw.stop().await;
    assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_any_of_all_of_exact_with_failure_status_401() {
    scope_table(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_any_of_all_of_exact_with_failure_status_403() {
    scope_table(403).await;
}

// ---------------------------------------------------------------------------------------------
// 4. auth = "none"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_route_passes_without_a_token() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[route("/public", &["GET"], r#"auth = "none""#), route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;

    let resp = get(&gw, "/public", None).await;
    ok(check_forwarded(&resp, &up, 0, "/public"), "public route, no token");

    // The jwt route next to it is still guarded.
    let resp = get(&gw, "/book", None).await;
    ok(check_unauthorized(&resp, BEARER), "jwt route, no token");
    assert_eq!(up.count(), 1, "the refused request must not reach the upstream");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. An issuer whose keys never loaded: 503, not 401
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_whose_jwks_never_loaded_gets_503_not_401() {
    const ISS_BROKEN: &str = "https://broken.issuer.test/pool";
    const ISS_CLOSED: &str = "https://closed.issuer.test/pool";
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let good_key = TestKey::generate(Algorithm::RS256, "good-1");

    let broken = JwksServer::start(vec![key.jwk()]).await;
    broken.set_raw(500, r#"{"error":"internal"}"#);
    let good = JwksServer::start(vec![good_key.jwk()]).await;
    // A port that nothing listens on.
    let (_closed, closed_addr) = refused_addr();
    let closed_url = format!("http://{closed_addr}/.well-known/jwks.json");

    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[
            issuer_toml(ISS_BROKEN, &jwks_uri(&broken.url), &["RS256"], r#"refresh = "1s""#),
            issuer_toml(ISS_CLOSED, &jwks_uri(&closed_url), &["RS256"], ""),
            issuer_toml(ISS, &jwks_uri(&good.url), &["RS256"], ""),
        ],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    assert!(broken.hits() >= 1, "the gateway never asked the JWKS server");

    for iss in [ISS_BROKEN, ISS_CLOSED] {
        let token = key.sign(&claims(iss, "client-a", "API/book.get"));
        let resp = get(&gw, "/book", Some(&token)).await;
        ok(check_error(&resp, 503, r#"{"message":"Service Unavailable"}"#), &format!("token of {iss}"));
        let retry_after = resp.header("retry-after").unwrap_or_default();
        assert!(!retry_after.trim().is_empty(), "token of {iss}: 503 without a retry-after header: {:?}", resp.headers);
    }
    assert_eq!(up.count(), 0, "nothing may reach the upstream");

    // The other issuers are not affected; no token is still plain 401.
    let token = good_key.sign(&claims(ISS, "client-a", "API/book.get"));
    let resp = get(&gw, "/book", Some(&token)).await;
    ok(check_forwarded(&resp, &up, 0, "/book"), "token of the healthy issuer");
    let resp = get(&gw, "/book", None).await;
    ok(check_unauthorized(&resp, BEARER), "no token");

    // Once the JWKS answers (refresh = 1s), the broken issuer's tokens are judged normally.
    broken.set_keys(vec![key.jwk()]);
    let token = key.sign(&claims(ISS_BROKEN, "client-a", "API/book.get"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = get(&gw, "/book", Some(&token)).await;
    while last.status == 503 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = get(&gw, "/book", Some(&token)).await;
    }
    assert_eq!(last.status, 200, "after the JWKS recovered, the token should pass: {last:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. A token from an issuer that is not configured
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_of_an_unconfigured_issuer_is_401_invalid_token() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    // Another issuer's key, published elsewhere, which the gateway does not know about.
    let foreign_key = TestKey::generate(Algorithm::RS256, "foreign-1");
    let foreign_jwks = JwksServer::start(vec![foreign_key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    let foreign_iss = format!("http://{}", foreign_jwks.addr);

    let token = key.sign(&claims(ISS, "client-a", "API/book.get"));
    ok(check_forwarded(&get(&gw, "/book", Some(&token)).await, &up, 0, "/book"), "configured issuer");

    // Signed by a key the gateway trusts, but for an issuer it does not.
    let token = key.sign(&claims("https://issuer.test/not-configured", "client-a", "API/book.get"));
    ok(check_unauthorized(&get(&gw, "/book", Some(&token)).await, INVALID_TOKEN), "unconfigured issuer, trusted key");
    // Signed by the foreign issuer's own key.
    let token = foreign_key.sign(&claims(&foreign_iss, "client-a", "API/book.get"));
    ok(check_unauthorized(&get(&gw, "/book", Some(&token)).await, INVALID_TOKEN), "unconfigured issuer, its own key");
    assert_eq!(up.count(), 1, "refused requests must not reach the upstream");
    assert_eq!(foreign_jwks.hits(), 0, "the gateway must not fetch keys of an issuer it was not configured with");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. jwks_file and discovery key sources
// ---------------------------------------------------------------------------------------------

/// Serves `/.well-known/openid-configuration` (everything else: 404), with `jwks_uri` pointing
/// at a JWKS server. Its `issuer` is its own base URL. Stops on drop.
struct DiscoveryServer {
    issuer: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DiscoveryServer {
    async fn start(jwks_url: &str) -> DiscoveryServer {
        use http_body_util::Full;
        use hyper::body::Bytes;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let document = json!({
            "issuer": issuer,
            "jwks_uri": jwks_url,
            "token_endpoint": format!("{issuer}/oauth2/token"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (document, counter) = (document.clone(), Arc::clone(&counter));
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let found = req.uri().path() == "/.well-known/openid-configuration";
                        if found {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let (status, body) =
                            if found { (200, document.clone()) } else { (404, r#"{"error":"not found"}"#.to_string()) };
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)));
                        async move { resp }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        DiscoveryServer { issuer, hits, task }
    }
}

impl Drop for DiscoveryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_and_discovery_issuers_work() {
    const FILE_ISS: &str = "https://file.issuer.test";
    let file_key = TestKey::generate(Algorithm::RS256, "file-1");
    let disc_key = TestKey::generate(Algorithm::ES256, "disc-1");
    let jwks_file = json!({ "keys": [file_key.jwk()] }).to_string();
    let disc_jwks = JwksServer::start(vec![disc_key.jwk()]).await;
    let discovery = DiscoveryServer::start(&disc_jwks.url).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[
            issuer_toml(FILE_ISS, r#"jwks_file = "keys/jwks.json""#, &["RS256"], ""),
            issuer_toml(&discovery.issuer, "discovery = true", &["ES256"], ""),
        ],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start_with_files(&toml, &[("keys/jwks.json", &jwks_file)]).await;
    assert!(discovery.hits.load(Ordering::SeqCst) >= 1, "discovery document never fetched");
    assert!(disc_jwks.hits() >= 1, "discovered jwks_uri never fetched");

    let token = file_key.sign(&claims(FILE_ISS, "client-a", "API/book.get"));
    ok(check_forwarded(&get(&gw, "/book", Some(&token)).await, &up, 0, "/book"), "jwks_file issuer");
    let token = disc_key.sign(&claims(&discovery.issuer, "client-a", "API/book.get"));
    ok(check_forwarded(&get(&gw, "/book", Some(&token)).await, &up, 1, "/book"), "discovery issuer");

    // Each issuer trusts only its own keys.
    let token = file_key.sign(&claims(&discovery.issuer, "client-a", "API/book.get"));
    ok(
        check_unauthorized(&get(&gw, "/book", Some(&token)).await, INVALID_TOKEN),
        "file key presented for the discovery issuer",
    );
    let token = disc_key.sign(&claims(FILE_ISS, "client-a", "API/book.get"));
    ok(
        check_unauthorized(&get(&gw, "/book", Some(&token)).await, INVALID_TOKEN),
        "discovered key presented for the file issuer",
    );
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. The verified-token cache never outlives exp
// ---------------------------------------------------------------------------------------------

async fn token_stops_working_at_exp(cache_entries: u32) {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        &format!("leeway = \"0s\"\ncache_entries = {cache_entries}"),
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;

    let exp = now() + 3;
    let token = key.sign(&edited(claims(ISS, "client-a", "API/book.get"), |c| {
        c.insert("exp".into(), json!(exp));
    }));
    for i in 0..2 {
        let resp = get(&gw, "/book", Some(&token)).await;
        ok(check_forwarded(&resp, &up, i, "/book"), &format!("request {} before exp", i + 1));
    }

    // Wait (bounded) until exp has certainly passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while now() < exp + 1 {
        assert!(tokio::time::Instant::now() < deadline, "clock did not advance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = get(&gw, "/book", Some(&token)).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), &format!("after exp (cache_entries = {cache_entries})"));
    assert_eq!(up.count(), 2, "the expired token must not reach the upstream");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_after_exp() {
    token_stops_working_at_exp(65536).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_disabled_with_zero_entries_still_verifies() {
    token_stops_working_at_exp(0).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Route choice, 404 and 405 with auth
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_scopes_404_and_405_with_auth() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[
            route("/book", &["GET"], r#"scopes = ["API/book.get"]"#),
            route("/book", &["POST"], r#"scopes = ["API/book.post"]"#),
            route("/user", &["GET"], r#"scopes = ["API/user.get"]"#),
            route("/items/{id}", &["GET"], r#"scopes = ["API/items.read"]"#),
            route("/items/special", &["GET"], r#"auth = "none""#),
            concat!(
                "[[routes]]\npath = \"/mock\"\nmethods = [\"GET\"]\nscopes = [\"API/book.get\"]\n",
                "response = { status = 200, content_type = \"application/json\", body = '{\"ok\":true}' }\n\n"
            )
            .to_string(),
        ],
    );
    let gw = Gateway::start(&toml).await;
    let book_only = key.sign(&claims(ISS, "client-a", "API/book.get"));
    let items = key.sign(&claims(ISS, "client-a", "API/items.read"));
    let bearer = format!("Bearer {book_only}");

    ok(check_forwarded(&get(&gw, "/book", Some(&book_only)).await, &up, 0, "/book"), "GET /book with book.get");
    ok(check_insufficient_scope(&get(&gw, "/user", Some(&book_only)).await, 401), "GET /user with book.get only");
    let resp = send(&gw, "POST", "/book", &[("authorization", &bearer)], "{}").await;
    ok(check_insufficient_scope(&resp, 401), "POST /book with book.get only");
    assert_eq!(up.count(), 1);

    // Unknown path: 404 with or without a token (routing comes before auth).
    for token in [None, Some(book_only.as_str())] {
        let resp = get(&gw, "/nope", token).await;
        ok(check_error(&resp, 404, r#"{"message":"Not Found"}"#), &format!("GET /nope, token {}", token.is_some()));
        let resp = get(&gw, "/book/x", token).await;
        ok(
            check_error(&resp, 404, r#"{"message":"Not Found"}"#),
            &format!("GET /book/x (below a literal route), token {}", token.is_some()),
        );
    }
    // One trailing slash is ignored by the table: /book/ meets the policy of /book.
    ok(check_unauthorized(&get(&gw, "/book/", None).await, BEARER), "GET /book/ without token");

    // Known path, other method: 405 with allow, with or without a token.
    for headers in [vec![], vec![("authorization", bearer.as_str())]] {
        let resp = send(&gw, "DELETE", "/book", &headers, "").await;
        ok(
            check_error(&resp, 405, r#"{"message":"Method Not Allowed"}"#),
            &format!("DELETE /book, token {}", !headers.is_empty()),
        );
        let allow = resp.header("allow").unwrap_or_default().to_ascii_uppercase();
        let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
        allowed.sort_unstable();
        assert!(
            allowed.contains(&"GET") && allowed.contains(&"POST") && !allowed.contains(&"DELETE"),
            "allow header should list GET and POST: {:?}",
            resp.header("allow")
        );
    }

    // Literal segment beats {param}: /items/special is public, /items/42 needs items.read.
    ok(
        check_forwarded(&get(&gw, "/items/special", None).await, &up, 1, "/items/special"),
        "GET /items/special (public literal route)",
    );
    ok(check_unauthorized(&get(&gw, "/items/42", None).await, BEARER), "GET /items/42 without token");
    ok(
        check_insufficient_scope(&get(&gw, "/items/42", Some(&book_only)).await, 401),
        "GET /items/42 with book.get only",
    );
    ok(
        check_forwarded(&get(&gw, "/items/42", Some(&items)).await, &up, 2, "/items/42"),
        "GET /items/42 with items.read",
    );

    // A mock response behind a jwt route.
    ok(check_unauthorized(&get(&gw, "/mock", None).await, BEARER), "GET /mock without token");
    let resp = get(&gw, "/mock", Some(&book_only)).await;
    assert_eq!((resp.status, resp.body.as_str()), (200, r#"{"ok":true}"#), "GET /mock with token");
    assert_eq!(up.count(), 3, "a mock route must not reach the upstream");
    gw.stop().await;
}

/// RFC 7519 §4.1.4: the token MUST NOT be accepted on or after `exp`; with leeway 0 a token
/// whose `exp` is the current second is already expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_refused_from_its_exp_second_on_with_zero_leeway() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        r#"leeway = "0s""#,
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    let with_exp = |exp: u64| {
        key.sign(&edited(claims(ISS, "client-a", "API/book.get"), |c| {
            c.insert("iat".into(), json!(exp - 60));
            c.insert("exp".into(), json!(exp));
        }))
    };

    let resp = get(&gw, "/book", Some(&with_exp(now() + 30))).await;
    ok(check_forwarded(&resp, &up, 0, "/book"), "exp in 30 s");
    let resp = get(&gw, "/book", Some(&with_exp(now() - 1))).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), "exp one second ago");
    let resp = get(&gw, "/book", Some(&with_exp(now()))).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), "exp = now");
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Unknown kid: key rotation is picked up, junk kids do not flood the provider
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_picks_up_a_rotated_key_and_refetches_once_per_cooldown() {
    let old_key = TestKey::generate(Algorithm::RS256, "old");
    let new_key = TestKey::generate(Algorithm::RS256, "new");
    let jwks = JwksServer::start(vec![old_key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "refresh = \"1h\"\nkid_miss_cooldown = \"1h\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    let c = claims(ISS, "client-a", "API/book.get");
    let resp = get(&gw, "/book", Some(&old_key.sign(&c))).await;
    ok(check_forwarded(&resp, &up, 0, "/book"), "old key");
    let hits_after_start = jwks.hits();

    // The identity provider rotates: the first token with the new kid triggers a re-fetch.
    jwks.set_keys(vec![old_key.jwk(), new_key.jwk()]);
    let resp = get(&gw, "/book", Some(&new_key.sign(&c))).await;
    ok(check_forwarded(&resp, &up, 1, "/book"), "new key after rotation");
    let hits_after_rotation = jwks.hits();
    assert!(hits_after_rotation > hits_after_start, "the unknown kid did not trigger a re-fetch");

    // A flood of junk kids within the cooldown: no further fetches.
    for i in 0..20 {
        let header = json!({"alg": "RS256", "kid": format!("junk-{i}"), "typ": "JWT"});
        let resp = get(&gw, "/book", Some(&old_key.sign_with_header(&header, &c))).await;
        ok(check_unauthorized(&resp, INVALID_TOKEN), &format!("junk kid {i}"));
    }
    assert_eq!(jwks.hits(), hits_after_rotation, "unknown kids within kid_miss_cooldown must not re-fetch the JWKS");
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Unknown kid on a key set that cannot change, and during a slow or failing re-fetch
// ---------------------------------------------------------------------------------------------

/// The built-in issuer's name in the tests below; only a name, nothing is fetched from it.
const BUILTIN_ISS: &str = "https://issuer.scopegate.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_on_the_builtin_issuer_is_refused_at_once() {
    let up = Upstream::start("books").await;
    let toml = server_toml("")
        + &builtin_issuer_toml(BUILTIN_ISS, "")
        + &upstream_toml("books", &up.url)
        + &route("/book", &["GET"], r#"scopes = ["API/book.get"]"#);
    let gw = Gateway::start(&toml).await;
    // Signed by a key the issuer never had, under kids it never published: the built-in
    // issuer's key set is fixed, so there is nothing to wait for.
    let stranger = TestKey::generate(Algorithm::RS256, "stranger");
    for i in 0..3 {
        let header = json!({"alg": "RS256", "kid": format!("not-published-{i}"), "typ": "JWT"});
        let token = stranger.sign_with_header(&header, &claims(BUILTIN_ISS, "client-a", "API/book.get"));
        let started = std::time::Instant::now();
        let resp = get(&gw, "/book", Some(&token)).await;
        let took = started.elapsed();
        ok(check_unauthorized(&resp, INVALID_TOKEN), &format!("unknown kid {i} on the built-in issuer"));
        // Behavioural bound only: the old code parked every such request for 5 s.
        assert!(took < Duration::from_secs(2), "unknown kid {i} on the built-in issuer took {took:?}");
    }
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

/// A JWKS endpoint whose answers can be delayed or turned into 500s, counting requests as
/// they arrive. Stops with its connections when dropped.
struct FlakyJwks {
    url: String,
    hits: Arc<AtomicUsize>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    _task: ServerTask,
}

impl FlakyJwks {
    async fn start(keys: Vec<Value>) -> FlakyJwks {
        let (listener, addr) = bind_local().await;
        let hits = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let document = json!({ "keys": keys }).to_string();
        let (h, d, f) = (Arc::clone(&hits), Arc::clone(&delay_ms), Arc::clone(&failing));
        let task = spawn_http_server(listener, move |_req| {
            h.fetch_add(1, Ordering::SeqCst);
            let delay = Duration::from_millis(d.load(Ordering::SeqCst));
            let resp = if f.load(Ordering::SeqCst) {
                response(500, "application/json", r#"{"error":"down"}"#)
            } else {
                response(200, "application/json", document.clone())
            };
            async move {
                tokio::time::sleep(delay).await;
                resp
            }
        });
        FlakyJwks { url: format!("http://{addr}/.well-known/jwks.json"), hits, delay_ms, failing, _task: task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Sends one GET /book per token, all at once; returns (answer, time it took) in token order.
async fn concurrently(gw: &Gateway, tokens: &[String]) -> Vec<(Resp, Duration)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (addr, auth) = (gw.addr, format!("Bearer {token}"));
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let resp = send_to(addr, "GET", "/book", &[("authorization", &auth)], "").await;
            (i, resp, started.elapsed())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.expect("a request task panicked (no answer within 10 s?)"));
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, r, t)| (r, t)).collect()
}

/// Polls (bounded) until the JWKS server has seen more than `hits` requests.
async fn wait_for_fetch(jwks: &FlakyJwks, hits: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jwks.hits() <= hits {
        assert!(tokio::time::Instant::now() < deadline, "the unknown kid's re-fetch never reached the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_during_a_slow_or_failing_refetch_wait_for_that_one_refetch_only() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = FlakyJwks::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "refresh = \"1h\"\nkid_miss_cooldown = \"2s\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    let c = claims(ISS, "client-a", "API/book.get");
    ok(check_forwarded(&get(&gw, "/book", Some(&key.sign(&c))).await, &up, 0, "/book"), "known key");
    let junk = |tag: &str| -> String {
        let header = json!({"alg": "RS256", "kid": format!("junk-{tag}"), "typ": "JWT"});
        key.sign_with_header(&header, &c)
    };

    // Slow provider: the first unknown kid starts a re-fetch that takes 1.5 s; unknown kids
    // arriving meanwhile join it. All are answered when it returns: one fetch for all of them.
    jwks.delay_ms.store(1500, Ordering::SeqCst);
    let before = jwks.hits();
    let first = {
        let (addr, auth) = (gw.addr, format!("Bearer {}", junk("slow-0")));
        tokio::spawn(async move { send_to(addr, "GET", "/book", &[("authorization", &auth)], "").await })
    };
    wait_for_fetch(&jwks, before).await;
    let joined = concurrently(&gw, &[junk("slow-1"), junk("slow-2"), junk("slow-3")]).await;
    let first = tokio::time::timeout(Duration::from_secs(10), first).await.expect("first: no answer").expect("task");
    ok(check_unauthorized(&first, INVALID_TOKEN), "unknown kid that started the re-fetch");
    for (i, (resp, took)) in joined.iter().enumerate() {
        ok(check_unauthorized(resp, INVALID_TOKEN), &format!("unknown kid {i} that joined the re-fetch"));
        // At most the rest of the 1.5 s re-fetch (the old fixed wait was 5 s), with margin.
        assert!(*took < Duration::from_millis(4000), "unknown kid {i} waited {took:?} for a 1.5 s re-fetch");
    }
    assert_eq!(jwks.hits(), before + 1, "one re-fetch for every unknown kid that arrived during it");

    // Provider down: the re-fetch fails fast; the waiters are answered when it fails, and
    // inside the cooldown no further fetch is made.
    tokio::time::sleep(Duration::from_millis(2100)).await; // the 2 s cooldown ends
    jwks.delay_ms.store(300, Ordering::SeqCst);
    jwks.failing.store(true, Ordering::SeqCst);
    let before = jwks.hits();
    let answers = concurrently(&gw, &[junk("down-0"), junk("down-1"), junk("down-2")]).await;
    for (i, (resp, took)) in answers.iter().enumerate() {
        ok(check_unauthorized(resp, INVALID_TOKEN), &format!("unknown kid {i} while the provider is down"));
        assert!(*took < Duration::from_millis(3000), "unknown kid {i} waited {took:?} for a failing re-fetch");
    }
    assert_eq!(jwks.hits(), before + 1, "one failed re-fetch for the unknown kids while the provider is down");
    let answers = concurrently(&gw, &[junk("cool-0"), junk("cool-1")]).await;
    for (i, (resp, _)) in answers.iter().enumerate() {
        ok(check_unauthorized(resp, INVALID_TOKEN), &format!("unknown kid {i} inside the cooldown"));
    }
    assert_eq!(jwks.hits(), before + 1, "unknown kids inside the cooldown fetched again");

    // The last good keys still verify.
    let resp = get(&gw, "/book", Some(&key.sign(&c))).await;
    ok(check_forwarded(&resp, &up, 1, "/book"), "known key after the outage");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A cached token stops working when its key leaves the key set
// ---------------------------------------------------------------------------------------------

/// Polls (bounded) until `token` is answered with `status`.
async fn until_status(gw: &Gateway, token: &str, status: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let resp = get(gw, "/book", Some(token)).await;
        if resp.status == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: still {} {} after 15 s", resp.status, resp.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_once_its_key_leaves_a_jwks_file() {
    let (k1, k2) = (TestKey::generate(Algorithm::RS256, "file-k1"), TestKey::generate(Algorithm::RS256, "file-k2"));
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, r#"jwks_file = "keys/jwks.json""#, &["RS256"], "kid_miss_cooldown = \"1h\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let jwks_k1 = json!({ "keys": [k1.jwk()] }).to_string();
    let gw = Gateway::start_with_files(&toml, &[("keys/jwks.json", &jwks_k1)]).await;
    let t1 = k1.sign(&claims(ISS, "client-a", "API/book.get"));
    for i in 0..2 {
        ok(check_forwarded(&get(&gw, "/book", Some(&t1)).await, &up, i, "/book"), &format!("K1 token, request {i}"));
    }

    // K2 replaces K1 in the file (rename over it); the file watcher re-reads it.
    let file = gw.dir.path().join("keys/jwks.json");
    let tmp = gw.dir.path().join("keys/.jwks.json.tmp");
    std::fs::write(&tmp, json!({ "keys": [k2.jwk()] }).to_string()).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    // K2 passes once the new file is loaded (by the watcher or by K2's unknown kid).
    let t2 = k2.sign(&claims(ISS, "client-b", "API/book.get"));
    until_status(&gw, &t2, 200, "K2 token after the file now holds K2").await;

    let resp = get(&gw, "/book", Some(&t1)).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), "cached K1 token after K1 left the file");
    let resp = get(&gw, "/book", Some(&k1.sign(&claims(ISS, "client-a", "API/book.get")))).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), "fresh K1 token after K1 left the file");
    let before = up.count();
    ok(check_forwarded(&get(&gw, "/book", Some(&t2)).await, &up, before, "/book"), "K2 token (cached)");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_once_its_key_leaves_a_jwks_uri() {
    let (k1, k2) = (TestKey::generate(Algorithm::RS256, "uri-k1"), TestKey::generate(Algorithm::RS256, "uri-k2"));
    let jwks = JwksServer::start(vec![k1.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "refresh = \"1h\"\nkid_miss_cooldown = \"1s\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let gw = Gateway::start(&toml).await;
    let t1 = k1.sign(&claims(ISS, "client-a", "API/book.get"));
    for i in 0..2 {
        ok(check_forwarded(&get(&gw, "/book", Some(&t1)).await, &up, i, "/book"), &format!("K1 token, request {i}"));
    }

    // The provider rotates to K2 only; the first K2 token's unknown kid re-fetches the set.
    jwks.set_keys(vec![k2.jwk()]);
    let t2 = k2.sign(&claims(ISS, "client-b", "API/book.get"));
    until_status(&gw, &t2, 200, "K2 token after the provider rotated").await;

    let resp = get(&gw, "/book", Some(&t1)).await;
    ok(check_unauthorized(&resp, INVALID_TOKEN), "cached K1 token after K1 left the JWKS");
    let before = up.count();
    ok(check_forwarded(&get(&gw, "/book", Some(&t2)).await, &up, before, "/book"), "K2 token (cached)");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_that_keep_a_key_keep_its_cached_tokens() {
    let (k1, k2) = (TestKey::generate(Algorithm::RS256, "keep-k1"), TestKey::generate(Algorithm::RS256, "keep-k2"));
    let jwks = JwksServer::start(vec![k1.jwk()]).await;
    let up = Upstream::start("books").await;
    let toml = gateway_toml(
        "",
        &[issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "refresh = \"1s\"")],
        &up,
        &[route("/book", &["GET"], r#"scopes = ["API/book.get"]"#)],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, toml).expect("write gateway.toml");
    let server = tokio::time::timeout(Duration::from_secs(30), scopegate::Server::start(&config))
        .await
        .expect("Server::start within 30 s")
        .expect("gateway starts");
    let addr = server.local_addr();
    let m = server.metrics();
    let fetches = || m.jwks_refreshes.with_label_values(&[ISS, "ok"]).get();
    let t1 = k1.sign(&claims(ISS, "client-a", "API/book.get"));
    let bearer = format!("Bearer {t1}");
    let auth = [("authorization", bearer.as_str())];
    let get_t1 = || send_to(addr, "GET", "/book", &auth, "");
    for i in 0..2 {
        ok(check_forwarded(&get_t1().await, &up, i, "/book"), &format!("K1 token, request {i}"));
    }

    // Refreshes that return the same document, then one that adds K2: K1 stays, and so do the
    // tokens cached with it.
    for change in [None, Some(vec![k1.jwk(), k2.jwk()])] {
        let set_changed = change.is_some();
        if let Some(keys) = change {
            jwks.set_keys(keys);
        }
        let (hits, misses, seen) = (m.cache_hits.get(), m.cache_misses.get(), fetches());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while fetches() < seen + 2 {
            assert!(tokio::time::Instant::now() < deadline, "no two JWKS refreshes within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = up.count();
        ok(check_forwarded(&get_t1().await, &up, before, "/book"), "K1 token after refreshes");
        let what = if set_changed { "a refresh that added a key" } else { "refreshes of the same keys" };
        assert_eq!((m.cache_hits.get(), m.cache_misses.get()), (hits + 1, misses), "cached K1 token after {what}");
    }
    let t2 = k2.sign(&claims(ISS, "client-b", "API/book.get"));
    let before = up.count();
    let resp = send_to(addr, "GET", "/book", &[("authorization", &format!("Bearer {t2}"))], "").await;
    ok(check_forwarded(&resp, &up, before, "/book"), "K2 token");
    tokio::time::timeout(Duration::from_secs(30), server.shutdown()).await.expect("shutdown within 30 s");
}
