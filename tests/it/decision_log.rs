//! Every refusal explainable from one access-log line: the real binary with `[log] format =
//! "json"` on `127.0.0.1:0`, a real JWKS server, the built-in issuer's token endpoint, and one
//! request per outcome (no token, expired, unknown issuer, hostile `kid`, insufficient scope,
//! allowed with a cache miss then a hit). Each JSON access line must carry the decision; no
//! token and no client secret may appear anywhere in the process output.

use crate::common::*;

use std::time::Duration;

use serde_json::{json, Value};

/// The built-in issuer's name (only a name; nothing is fetched from it).
const BUILTIN: &str = "https://builtin.scopegate.test";
/// The plain client secret of the built-in issuer's client `demo`: it must never be logged.
const SECRET: &str = "s3cret-that-must-never-be-logged-7f3a";

async fn request(p: &Binary, path: &str, id: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("x-request-id", id)];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    send_to(p.addr, "GET", path, &headers, "").await
}

/// The string field `name` of an access line.
#[track_caller]
fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("access line lacks string {name}: {line}"))
}

/// Asserts the decision fields of one access line.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn assert_decision(
    line: &Value,
    (status, reason): (u64, &str),
    (route, any_of, all_of): (&str, &str, &str),
    (iss, kid, verified, cache): (&str, &str, bool, &str),
    (scopes, count): (&str, u64),
) {
    let got = (
        line["status"].as_u64(),
        field(line, "reason"),
        field(line, "route"),
        field(line, "required_any_of"),
        field(line, "required_all_of"),
        field(line, "iss"),
        field(line, "kid"),
        line["token_verified"].as_bool(),
        field(line, "cache"),
        field(line, "token_scopes"),
        line["token_scope_count"].as_u64(),
    );
    let want = (Some(status), reason, route, any_of, all_of, iss, kid, Some(verified), cache, scopes, Some(count));
    assert_eq!(got, want, "access line: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_line_explains_every_decision_without_tokens_or_secrets() {
    let key = TestKey::generate(Algorithm::RS256, "log-k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let ok = mock_response("application/json", r#"{"ok":true}"#);
    let toml = server_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &auth_toml("scope_failure_status = 403")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &builtin_issuer_toml(BUILTIN, "")
        + &resource_server_toml("API", &["book.get", "book.list", "admin", "audit"])
        + &client_toml("demo", &format!("client_secret = {}", toml_str(SECRET)), &["API/book.get"])
        + &route_toml("/book", &["GET"], &[&scopes(&["API/book.get", "API/book.list"]), &ok])
        + &route_toml("/admin", &["GET"], &[r#"scopes_all = ["API/admin", "API/audit"]"#, &ok])
        + &route_toml("/public", &["GET"], &[PUBLIC, &ok]);
    let mut p = Binary::start(&toml).await;
    let mut tokens = Vec::new();

    // No token.
    let resp = request(&p, "/book", "no-token", None).await;
    assert_eq!((resp.status, resp.body.as_str()), (401, r#"{"message":"Unauthorized"}"#));

    // Expired: the signature is good but the time check fails.
    let mut c = claims(ISS, "client-exp", "API/book.get");
    c["exp"] = json!(now() - 600);
    c["iat"] = json!(now() - 1200);
    let expired = key.sign(&c);
    let resp = request(&p, "/book", "expired", Some(&expired)).await;
    assert_eq!((resp.status, resp.body.as_str()), (401, r#"{"message":"Unauthorized"}"#));
    tokens.push(expired);

    // An issuer that is not configured: what it claims is logged, marked unverified.
    let stranger = key.sign(&claims("https://stranger.test/pool", "client-x", "API/book.get"));
    let resp = request(&p, "/book", "stranger", Some(&stranger)).await;
    assert_eq!(resp.status, 401);
    tokens.push(stranger);

    // A hostile kid: long, with control characters and quotes. Logged bounded and printable.
    let hostile_kid = format!("evil\n\"kid\"\u{1b}[31m{}", "A".repeat(600));
    let header = json!({"alg": "RS256", "kid": hostile_kid, "typ": "JWT"});
    let hostile = key.sign_with_header(&header, &claims(ISS, "client-h", "API/book.get"));
    let resp = request(&p, "/book", "hostile-kid", Some(&hostile)).await;
    assert_eq!(resp.status, 401);
    tokens.push(hostile);

    // Valid token, scopes not enough for the all-of route: 403.
    let reader = key.sign(&claims(ISS, "client-r", "API/book.get API/admin"));
    let resp = request(&p, "/admin", "scope", Some(&reader)).await;
    assert_eq!((resp.status, resp.body.as_str()), (403, r#"{"message":"Forbidden"}"#));

    // Allowed: the same token on the any-of route (a cache hit now) and a fresh one (a miss).
    let resp = request(&p, "/book", "allowed-hit", Some(&reader)).await;
    assert_eq!(resp.status, 200);
    let fresh = key.sign(&claims(ISS, "client-f", "API/book.list"));
    let resp = request(&p, "/book", "allowed-miss", Some(&fresh)).await;
    assert_eq!(resp.status, 200);
    tokens.push(reader);
    tokens.push(fresh);

    // A token of the built-in issuer, obtained with the client secret.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = format!("grant_type=client_credentials&client_id=demo&client_secret={SECRET}");
    let resp = send_to(p.addr, "POST", "/oauth2/token", &form, &body).await;
    assert_eq!(resp.status, 200, "token endpoint: {resp:?}");
    let minted: Value = serde_json::from_str(&resp.body).expect("token answer is JSON");
    let minted = minted["access_token"].as_str().expect("access_token").to_owned();
    let minted_kid = {
        let header = minted.split('.').next().expect("header");
        let header: Value = serde_json::from_slice(&base64_url_decode(header)).expect("header JSON");
        header["kid"].as_str().expect("kid").to_owned()
    };
    let resp = request(&p, "/book", "builtin", Some(&minted)).await;
    assert_eq!(resp.status, 200);
    tokens.push(minted);

    // A public route: no token needed, none looked at.
    let resp = request(&p, "/public", "public", None).await;
    assert_eq!(resp.status, 200);

    let book = ("/book", "API/book.get API/book.list", "");
    assert_decision(&p.access_line("no-token").await, (401, "missing_token"), book, ("", "", false, "none"), ("", 0));
    assert_decision(&p.access_line("expired").await, (401, "expired"), book, (ISS, "log-k1", false, "miss"), ("", 0));
    assert_decision(
        &p.access_line("stranger").await,
        (401, "wrong_issuer"),
        book,
        ("https://stranger.test/pool", "log-k1", false, "miss"),
        ("", 0),
    );
    let line = p.access_line("hostile-kid").await;
    assert_eq!(field(&line, "reason"), "unknown_kid", "{line}");
    assert_eq!(field(&line, "iss"), ISS, "{line}");
    let kid = field(&line, "kid");
    assert!(kid.len() <= 128, "unverified kid logged unbounded ({} bytes): {line}", kid.len());
    assert!(kid.starts_with("evil"), "{line}");
    assert!(kid.chars().all(|c| (' '..='~').contains(&c)), "unverified kid logged with unprintable characters: {line}");
    assert_decision(
        &p.access_line("scope").await,
        (403, "insufficient_scope"),
        ("/admin", "", "API/admin API/audit"),
        (ISS, "log-k1", true, "miss"),
        ("API/book.get API/admin", 2),
    );
    assert_decision(
        &p.access_line("allowed-hit").await,
        (200, ""),
        book,
        (ISS, "log-k1", true, "hit"),
        ("API/book.get API/admin", 2),
    );
    assert_decision(
        &p.access_line("allowed-miss").await,
        (200, ""),
        book,
        (ISS, "log-k1", true, "miss"),
        ("API/book.list", 1),
    );
    assert_decision(
        &p.access_line("builtin").await,
        (200, ""),
        book,
        (BUILTIN, &minted_kid, true, "miss"),
        ("API/book.get", 1),
    );
    assert_decision(&p.access_line("public").await, (200, ""), ("/public", "", ""), ("", "", false, "none"), ("", 0));

    p.terminate(Duration::from_secs(25)).await;
    let all = p.output();
    for token in &tokens {
        assert!(!all.contains(token.as_str()), "a token appears in the output:\n{all}");
        let signature = token.rsplit('.').next().expect("signature");
        assert!(!all.contains(signature), "a token's signature appears in the output");
    }
    assert!(!all.contains(SECRET), "the client secret appears in the output:\n{all}");
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).expect("base64url")
}
