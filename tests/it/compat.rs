//! `[server] compat`: the answers of an AWS API Gateway REST API with a Cognito user pool
//! authorizer (`aws-rest`) and of an HTTP API with a JWT authorizer (`aws-http`), answer by
//! answer, against the real server, a real JWKS server and a real upstream; `none` (the
//! default) keeps the gateway's own answers.

use crate::common::*;

use jsonwebtoken::Algorithm;
use serde_json::Value;

const ISS: &str = "https://cognito-idp.test/pool";
const APP: &str = "app-client";
const REQUEST_ID: &str = "req-compat-1";

/// Everything one test needs, stopped when dropped (the gateway with `stop`).
struct Setup {
    gw: Gateway,
    up: Upstream,
    key: TestKey,
    _jwks: JwksServer,
}

/// A gateway with `server_lines` in `[server]`, `auth_lines` in `[auth]`, one issuer with
/// audience `app-client` (and `issuer_lines`), and routes: `GET /books/{id}` needing `api/read`,
/// `GET /profile` with no scopes, `GET /public` with no token at all.
async fn setup(server_lines: &str, auth_lines: &str, issuer_lines: &str) -> Setup {
    setup_with(server_lines, auth_lines, issuer_lines, "").await
}

/// [`setup`] with `route_line` added to `/books/{id}` and `/profile`.
async fn setup_with(server_lines: &str, auth_lines: &str, issuer_lines: &str, route_line: &str) -> Setup {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("books").await;
    let extra = format!("audiences = [\"{APP}\"]\n{issuer_lines}");
    let toml = server_toml(server_lines)
        + &auth_toml(auth_lines)
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], &extra)
        + &upstream_toml("books", &up.url)
        + &route_toml("/books/{id}", &["GET"], &[&forward_to("books"), &scopes(&["api/read"]), route_line])
        + &route_toml("/profile", &["GET"], &[&forward_to("books"), route_line])
        + &route_toml("/public", &["GET"], &[&forward_to("books"), PUBLIC]);
    let gw = Gateway::start(&toml).await;
    Setup { gw, up, key, _jwks: jwks }
}

/// A Cognito-shaped access token (no `aud`, `client_id` = app-client) with `scope`.
fn access(s: &Setup, scope: &str) -> String {
    s.key.sign(&claims(ISS, APP, scope))
}

/// A Cognito-shaped ID token: `token_use = id`, `aud` = `aud`, no scope, no client_id.
fn id_token(s: &Setup, aud: &str) -> String {
    let mut c = claims(ISS, APP, "");
    let m = c.as_object_mut().expect("object");
    m.insert("token_use".into(), "id".into());
    m.insert("aud".into(), aud.into());
    m.remove("client_id");
    m.remove("scope");
    s.key.sign(&c)
}

/// `claims(ISS, APP, scope)` changed by `edit`, signed.
fn token_with(s: &Setup, scope: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut c = claims(ISS, APP, scope);
    edit(c.as_object_mut().expect("object"));
    s.key.sign(&c)
}

/// `method path` with the fixed request id and, if given, the bearer token.
async fn call(s: &Setup, method: &str, path: &str, token: Option<&str>) -> Resp {
    call_with(s, method, path, token, &[]).await
}

/// [`call`] with `extra` headers.
async fn call_with(s: &Setup, method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("x-request-id", REQUEST_ID)];
    headers.extend_from_slice(extra);
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(&s.gw, method, path, &headers, "").await
}

/// The answer is `status` with `body`, as JSON.
fn assert_answer(r: &Resp, status: u16, body: &str, what: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, body), "{what}: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
}

const UNAUTHORIZED: &str = r#"{"message":"Unauthorized"}"#;
const MISSING_TOKEN: &str = r#"{"message":"Missing Authentication Token"}"#;

/// An `aws-rest` 401: the body, `x-amzn-ErrorType: UnauthorizedException`, the request id as
/// `x-amzn-RequestId`, and no `www-authenticate` (API Gateway sends none).
fn assert_rest_401(r: &Resp, what: &str) {
    assert_answer(r, 401, UNAUTHORIZED, what);
    assert_eq!(r.header("x-amzn-errortype"), Some("UnauthorizedException"), "{what}");
    assert_eq!(r.header("x-amzn-requestid"), Some(REQUEST_ID), "{what}");
    assert_eq!(r.header("www-authenticate"), None, "{what}");
}

/// An `aws-rest` unmatched route: 403 Missing Authentication Token.
fn assert_rest_403_missing(r: &Resp, what: &str) {
    assert_answer(r, 403, MISSING_TOKEN, what);
    assert_eq!(r.header("x-amzn-errortype"), Some("MissingAuthenticationTokenException"), "{what}");
    assert_eq!(r.header("x-amzn-requestid"), Some(REQUEST_ID), "{what}");
    assert_eq!(r.header("allow"), None, "{what}");
}

#[tokio::test]
async fn aws_rest_refused_tokens_and_scopes_are_401_unauthorized_exception() {
    // scope_failure_status = 403 is overridden: the REST authorizer answers 401.
    let s = setup("compat = \"aws-rest\"", "scope_failure_status = 403", "").await;
    let expired = token_with(&s, "api/read", |m| {
        m.insert("exp".into(), (now() - 600).into());
        m.insert("iat".into(), (now() - 4000).into());
    });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".into())),
        ("expired", Some(expired)),
        ("wrong scope", Some(access(&s, "api/write"))),
        ("no scope at all", Some(access(&s, ""))),
    ];
    for (what, token) in cases {
        let r = call(&s, "GET", "/books/1", token.as_deref()).await;
        assert_rest_401(&r, what);
    }
    assert_eq!(s.up.count(), 0, "nothing refused reached the upstream");
    // Any one of the route's scopes is enough.
    let ok = call(&s, "GET", "/books/1", Some(&access(&s, "other api/read"))).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("x-amzn-requestid"), Some(REQUEST_ID), "forwarded answers carry the id too");
    assert_eq!(ok.header("x-amzn-errortype"), None);
    s.gw.stop().await;
}

#[tokio::test]
async fn aws_rest_unmatched_method_or_resource_is_403_missing_authentication_token() {
    let s = setup("compat = \"aws-rest\"", "", "").await;
    let good = access(&s, "api/read");
    let cases: Vec<(&str, &str, &str, Option<&str>)> = vec![
        ("unknown resource, no token", "GET", "/nope", None),
        // Before any authorizer: a bad token on an unknown resource is not a 401.
        ("unknown resource, bad token", "GET", "/nope", Some("not-a-jwt")),
        ("unknown resource, good token", "GET", "/books", Some(&good)),
        // What would be a 405 with `allow` is the same 403.
        ("unknown method, no token", "POST", "/books/1", None),
        ("unknown method, good token", "DELETE", "/books/1", Some(&good)),
    ];
    for (what, method, path, token) in cases {
        let r = call(&s, method, path, token).await;
        assert_rest_403_missing(&r, what);
    }
    assert_eq!(s.up.count(), 0);
    // A public route still answers without a token.
    assert_eq!(call(&s, "GET", "/public", None).await.status, 200);
    s.gw.stop().await;
}

#[tokio::test]
async fn aws_rest_a_route_without_scopes_takes_an_id_token_one_with_scopes_an_access_token() {
    // The issuer's token_use = "access" is overridden per route in this mode.
    let s = setup("compat = \"aws-rest\"", "", "token_use = \"access\"").await;
    let id = id_token(&s, APP);
    let accepted = call(&s, "GET", "/profile", Some(&id)).await;
    assert_eq!(accepted.status, 200, "an ID token for the app client opens a route without scopes: {accepted:?}");
    let refused: Vec<(&str, String)> = vec![
        ("an access token on a route without scopes", access(&s, "api/read")),
        ("an ID token for another audience", id_token(&s, "someone-else")),
        (
            "an ID token without aud (client_id alone is not enough)",
            token_with(&s, "", |m| {
                m.insert("token_use".into(), "id".into());
            }),
        ),
        (
            "a token without token_use",
            token_with(&s, "", |m| {
                m.remove("token_use");
                m.insert("aud".into(), APP.into());
            }),
        ),
    ];
    for (what, token) in &refused {
        let r = call(&s, "GET", "/profile", Some(token)).await;
        assert_rest_401(&r, what);
    }
    // On a route with scopes, an ID token is refused even when it carries the scope.
    let id_with_scope = token_with(&s, "api/read", |m| {
        m.insert("token_use".into(), "id".into());
        m.insert("aud".into(), APP.into());
    });
    assert_rest_401(&call(&s, "GET", "/books/1", Some(&id_with_scope)).await, "ID token on a scoped route");
    assert_eq!(call(&s, "GET", "/books/1", Some(&access(&s, "api/read"))).await.status, 200);
    // The same token twice: the verdict does not depend on the token cache.
    assert_rest_401(&call(&s, "GET", "/profile", Some(&refused[0].1)).await, "access token, cached");
    assert_eq!(call(&s, "GET", "/profile", Some(&id)).await.status, 200, "ID token, cached");
    assert_eq!(s.up.count(), 3);
    s.gw.stop().await;
}

/// An `aws-http` 401 with `error_description` = `description` and the id as `apigw-requestid`.
fn assert_http_401(r: &Resp, description: &str, what: &str) {
    assert_answer(r, 401, UNAUTHORIZED, what);
    let www = format!(r#"Bearer scope="" error="invalid_token" error_description="{description}""#);
    assert_eq!(r.header("www-authenticate"), Some(www.as_str()), "{what}");
    assert_eq!(r.header("apigw-requestid"), Some(REQUEST_ID), "{what}");
    assert_eq!(r.header("x-amzn-errortype"), None, "{what}");
}

#[tokio::test]
async fn aws_http_refused_tokens_are_401_with_a_generic_reason() {
    let s = setup("compat = \"aws-http\"", "", "").await;
    let other = TestKey::generate(Algorithm::RS256, "k1");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "the token is missing"),
        ("not a JWT", Some("not-a-jwt".into()), "the token is malformed"),
        ("another key", Some(other.sign(&claims(ISS, APP, "api/read"))), "the token signature is invalid"),
        (
            "expired",
            Some(token_with(&s, "api/read", |m| {
                m.insert("exp".into(), (now() - 600).into());
                m.insert("iat".into(), (now() - 4000).into());
            })),
            "the token has expired",
        ),
        (
            "another issuer",
            Some(token_with(&s, "api/read", |m| {
                m.insert("iss".into(), "https://elsewhere.test".into());
            })),
            "the token does not have a valid issuer",
        ),
        (
            "another audience",
            Some(token_with(&s, "api/read", |m| {
                m.insert("client_id".into(), "other-client".into());
            })),
            "the token does not have a valid audience",
        ),
    ];
    for (what, token, description) in cases {
        let r = call(&s, "GET", "/books/1", token.as_deref()).await;
        assert_http_401(&r, description, what);
    }
    assert_eq!(s.up.count(), 0);
    s.gw.stop().await;
}

#[tokio::test]
async fn aws_http_missing_scope_is_403_forbidden_and_unmatched_routes_404() {
    // scope_failure_status = 401 is overridden: the HTTP API answers 403.
    let s = setup("compat = \"aws-http\"", "scope_failure_status = 401", "").await;
    let r = call(&s, "GET", "/books/1", Some(&access(&s, "api/write"))).await;
    assert_answer(&r, 403, r#"{"message":"Forbidden"}"#, "missing scope");
    assert_eq!(r.header("apigw-requestid"), Some(REQUEST_ID));
    assert_eq!(r.header("www-authenticate"), None);
    for (what, method, path) in [("unknown route", "GET", "/nope"), ("unknown method", "POST", "/books/1")] {
        let r = call(&s, method, path, Some("not-a-jwt")).await;
        assert_answer(&r, 404, r#"{"message":"Not Found"}"#, what);
        assert_eq!(r.header("allow"), None, "{what}");
        assert_eq!(r.header("apigw-requestid"), Some(REQUEST_ID), "{what}");
    }
    assert_eq!(s.up.count(), 0);
    let ok = call(&s, "GET", "/books/1", Some(&access(&s, "api/read"))).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("apigw-requestid"), Some(REQUEST_ID));
    assert_eq!(ok.header("x-amzn-requestid"), None);
    s.gw.stop().await;
}

#[tokio::test]
async fn aws_http_checks_aud_first_and_client_id_only_without_aud() {
    let s = setup("compat = \"aws-http\"", "", "").await;
    // aud present and wrong: refused although client_id names the audience.
    let wrong_aud = token_with(&s, "api/read", |m| {
        m.insert("aud".into(), "other-client".into());
    });
    assert_http_401(
        &call(&s, "GET", "/books/1", Some(&wrong_aud)).await,
        "the token does not have a valid audience",
        "aud wins over client_id",
    );
    // aud present and right: accepted although client_id names another client.
    let right_aud = token_with(&s, "api/read", |m| {
        m.insert("aud".into(), serde_json::json!(["x", APP]));
        m.insert("client_id".into(), "other-client".into());
    });
    assert_eq!(call(&s, "GET", "/books/1", Some(&right_aud)).await.status, 200);
    // No aud: client_id decides.
    assert_eq!(call(&s, "GET", "/books/1", Some(&access(&s, "api/read"))).await.status, 200);
    // Neither: refused.
    let neither = token_with(&s, "api/read", |m| {
        m.remove("client_id");
    });
    assert_http_401(
        &call(&s, "GET", "/books/1", Some(&neither)).await,
        "the token does not have a valid audience",
        "no aud, no client_id",
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn compat_none_keeps_the_gateways_own_answers() {
    for server_lines in ["", "compat = \"none\""] {
        let s = setup(server_lines, "", "").await;
        let r = call(&s, "GET", "/books/1", None).await;
        assert_answer(&r, 401, UNAUTHORIZED, "no token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = call(&s, "GET", "/books/1", Some(&access(&s, "api/write"))).await;
        assert_answer(&r, 401, UNAUTHORIZED, "missing scope");
        assert_eq!(r.header("www-authenticate"), Some(r#"Bearer error="insufficient_scope""#));
        assert_answer(&call(&s, "GET", "/nope", None).await, 404, r#"{"message":"Not Found"}"#, "unknown route");
        let r = call(&s, "POST", "/books/1", None).await;
        assert_answer(&r, 405, r#"{"message":"Method Not Allowed"}"#, "unknown method");
        assert!(r.header("allow").is_some());
        // token_use is not tied to the route: an access token opens a route without scopes.
        assert_eq!(call(&s, "GET", "/profile", Some(&access(&s, ""))).await.status, 200);
        for name in ["x-amzn-requestid", "x-amzn-errortype", "apigw-requestid"] {
            assert_eq!(r.header(name), None, "{name}");
        }
        assert_eq!(r.header("x-request-id"), Some(REQUEST_ID));
        s.gw.stop().await;
    }
}

#[tokio::test]
async fn an_unknown_compat_mode_is_refused() {
    let err = Gateway::try_start(&server_toml("compat = \"aws-soap\"")).await.err().expect("refused");
    assert!(err.contains("server.compat must be \"aws-rest\", \"aws-http\" or \"none\""), "{err}");
}

const CLAIMS_HEADER: &str = "claims_header = \"x-apigateway-authorizer\"";

/// Forged copies of the claims header, in the gateway's spelling and CGI's.
const FORGED: [(&str, &str); 2] =
    [("x-apigateway-authorizer", r#"{"claims":{"sub":"admin"}}"#), ("x_apigateway_authorizer", "forged")];

/// The one claims header the upstream got on its last request, parsed.
fn received_claims(s: &Setup) -> Value {
    let last = s.up.last().expect("a forwarded request");
    let values = last.header_all("x-apigateway-authorizer");
    assert_eq!(values.len(), 1, "{:?}", last.headers);
    assert_eq!(last.header("x_apigateway_authorizer"), None, "the CGI spelling is removed");
    serde_json::from_str(values[0]).expect("JSON")
}

#[tokio::test]
async fn aws_rest_claims_header_carries_the_claims_as_strings_with_java_dates() {
    let s = setup_with("compat = \"aws-rest\"", "", "", CLAIMS_HEADER).await;
    let t = now();
    let id = token_with(&s, "", |m| {
        m.insert("token_use".into(), "id".into());
        m.insert("aud".into(), APP.into());
        m.insert("iat".into(), 1_683_168_606u64.into());
        m.insert("exp".into(), (t + 3600).into());
        m.insert("auth_time".into(), 1_683_168_606u64.into());
        m.insert("cognito:groups".into(), serde_json::json!(["admins", "users"]));
        m.insert("email_verified".into(), true.into());
        m.remove("scope");
    });
    let r = call_with(&s, "GET", "/profile", Some(&id), &FORGED).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = received_claims(&s);
    let claims = got["claims"].as_object().expect("claims object");
    assert_eq!(got.as_object().map(|o| o.len()), Some(1), "{got}");
    assert_eq!(claims["sub"], APP);
    assert_eq!(claims["token_use"], "id");
    assert_eq!(claims["iat"], "Thu May 04 02:50:06 UTC 2023");
    assert_eq!(claims["exp"], scopegate::compat::java_date(i64::try_from(t + 3600).expect("time")));
    assert_eq!(claims["auth_time"], "1683168606", "only exp and iat are dates");
    assert_eq!(claims["version"], "2");
    assert_eq!(claims["email_verified"], "true");
    assert_eq!(claims["cognito:groups"], r#"["admins","users"]"#);
    assert!(claims.values().all(Value::is_string), "{got}");
    // A route without claims_header forwards no claims header, forged or not.
    let r = call_with(&s, "GET", "/public", None, &FORGED).await;
    assert_eq!(r.status, 200);
    let last = s.up.last().expect("forwarded");
    assert_eq!(last.header("x-apigateway-authorizer"), None);
    assert_eq!(last.header("x_apigateway_authorizer"), None);
    s.gw.stop().await;
}

#[tokio::test]
async fn aws_http_claims_header_carries_jwt_claims_and_scopes() {
    let s = setup_with("compat = \"aws-http\"", "", "", CLAIMS_HEADER).await;
    let token = access(&s, "api/read other/x");
    let r = call_with(&s, "GET", "/books/1", Some(&token), &FORGED).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = received_claims(&s);
    let jwt = got["jwt"].as_object().expect("jwt object");
    assert_eq!(got.as_object().map(|o| o.len()), Some(1), "{got}");
    assert_eq!(jwt["scopes"], serde_json::json!(["api/read", "other/x"]));
    let claims = jwt["claims"].as_object().expect("claims");
    assert_eq!(claims["client_id"], APP);
    assert_eq!(claims["scope"], "api/read other/x");
    assert!(claims["exp"].as_str().expect("a string").parse::<u64>().is_ok(), "HTTP API dates stay numbers: {got}");
    assert!(claims.values().all(Value::is_string), "{got}");
    s.gw.stop().await;
}

#[tokio::test]
async fn a_claims_header_needs_an_aws_mode_a_token_and_a_free_name() {
    let route = |lines: &[&str]| route_toml("/x", &["GET"], lines);
    let mock = mock_response("application/json", "{}");
    let cases = [
        ("", route(&[&mock, CLAIMS_HEADER]), "claims_header needs server.compat"),
        (
            "compat = \"aws-http\"",
            route(&[&mock, PUBLIC, CLAIMS_HEADER]),
            "claims_header needs a route with auth = \"jwt\"",
        ),
        (
            "compat = \"aws-http\"",
            route(&[&mock, "claims_header = \"x-forwarded-for\""]),
            "is not a header name the gateway may set",
        ),
        ("compat = \"aws-rest\"", route(&[&mock, "claims_header = \"x-auth-sub\""]), "is not a header name"),
        ("compat = \"aws-rest\"", route(&[&mock, "claims_header = \"host\""]), "is not a header name"),
    ];
    for (server, routes, want) in cases {
        let err = Gateway::try_start(&(server_toml(server) + &routes)).await.err().expect("refused");
        assert!(err.contains(want), "{server} {routes}: {err}");
    }
}
