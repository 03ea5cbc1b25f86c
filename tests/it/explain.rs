//! `scopegate explain`: the real binary's command against the real binary serving the same
//! config. The agreement tests send one table of requests both ways, row by row: to the running
//! gateway (raw TCP, so odd spellings arrive as written; the access log's JSON line gives the
//! reason) and through `scopegate explain --json` (keys in a `jwks_file`, so explain checks the
//! signature offline); statuses, reasons, bodies, the headers of the answer, and where an allowed
//! request is forwarded must agree. The other tests pin the exit codes, config errors, `--claims`,
//! and the offline promise (a `jwks_uri` issuer is never fetched; what cannot be checked is said).

use crate::common::*;

use std::path::Path;

use serde_json::{json, Value};

/// Another issuer, not configured anywhere.
const STRANGER: &str = "https://stranger.test/pool";
/// The built-in issuer's name (only a name; nothing is fetched from it).
const BUILTIN: &str = "https://builtin.scopegate.test";

/// One request of an agreement table.
struct Row {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
}

fn row(what: &'static str, method: &'static str, path: &'static str, token: Option<&str>) -> Row {
    Row { what, method, path, token: token.map(str::to_owned) }
}

/// `scopegate --config CONFIG explain ARGS...`, run to its end in `dir`.
async fn explain(dir: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = binary_command();
    cmd.current_dir(dir).arg("--config").arg(config).arg("explain").args(args);
    run_command(cmd, None).await
}

/// `explain --json` for one row: the exit code and the JSON object it printed.
async fn explain_json(dir: &Path, config: &Path, method: &str, path: &str, token: Option<&str>) -> (i32, Value) {
    let mut args = vec![method, path, "--json"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let out = explain(dir, config, &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "explain {method} {path}: not one JSON object ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), v)
}

/// Sends every row to the running binary and through `explain --json`, and asserts that the two
/// agree, row by row. Returns how many rows each side allowed (for the caller to check the table
/// covers both outcomes).
async fn assert_agreement(p: &Binary, up: &Upstream, header: &str, rows: &[Row]) -> usize {
    let mut allowed = 0;
    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let id = format!("explain-row-{i}");
        let mut request = format!("{} {} HTTP/1.1\r\nhost: gw.test\r\nx-request-id: {id}\r\n", r.method, r.path);
        if let Some(t) = &r.token {
            request.push_str(&format!("{header}: Bearer {t}\r\n"));
        }
        request.push_str("connection: close\r\n\r\n");
        let forwarded_before = up.count();
        let resp = raw(p.addr, request.as_bytes()).await;
        let line = p.access_line(&id).await;
        let (code, e) = explain_json(p.dir.path(), p.config_path(), r.method, r.path, r.token.as_deref()).await;

        let mut problems = Vec::new();
        let is_allowed = e["allowed"].as_bool().expect("allowed");
        if code != if is_allowed { 0 } else { 1 } {
            problems.push(format!("exit code {code} for allowed = {is_allowed}"));
        }
        let log_reason = line["reason"].as_str().unwrap_or("?");
        let explained_reason = e["reason"].as_str().unwrap_or("");
        if log_reason != explained_reason {
            problems.push(format!("reason: gateway {log_reason:?}, explain {explained_reason:?}"));
        }
        // allow, deny, or would_deny (an audit route forwards what it would refuse).
        if line["decision"] != e["decision"] {
            problems.push(format!("decision: gateway {}, explain {}", line["decision"], e["decision"]));
        }
        if let Some(url) = e["forward"]["url"].as_str() {
            allowed += 1;
            // Forwarded: the upstream answers, and got the target explain names.
            let target = url.strip_prefix(&up.url).unwrap_or(url);
            let got = (up.count() == forwarded_before + 1).then(|| up.last().map(|l| l.target)).flatten();
            if resp.status != 200 || got.as_deref() != Some(target) {
                problems.push(format!(
                    "explain forwards to {url}; the gateway answered {} and the upstream got {got:?}",
                    resp.status
                ));
            }
        } else {
            if is_allowed {
                allowed += 1;
            }
            if up.count() != forwarded_before {
                problems.push("the gateway forwarded a request explain does not".to_owned());
            }
            let shape = &e["response"];
            if shape["status"].as_u64() != Some(u64::from(resp.status)) || e["status"] != shape["status"] {
                problems
                    .push(format!("status: gateway {}, explain {} / {}", resp.status, e["status"], shape["status"]));
            }
            if shape["body"].as_str() != Some(resp.body.as_str()) {
                problems.push(format!("body: gateway {:?}, explain {}", resp.body, shape["body"]));
            }
            for (name, value) in shape["headers"].as_object().expect("response headers") {
                if resp.header(name) != value.as_str() {
                    problems.push(format!("header {name}: gateway {:?}, explain {value}", resp.header(name)));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "row {i} ({}: {} {}): {}\n  explain: {e}",
                r.what,
                r.method,
                r.path,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "explain and the gateway disagree:\n{}", failures.join("\n"));
    allowed
}

/// A token of `iss` signed by `key`, with `scope`, and the claims changed by `edit`.
fn token(key: &TestKey, iss: &str, scope: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims(iss, "client-1", scope);
    edit(&mut c);
    key.sign(&c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_running_gateway_row_by_row() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let stranger_key = TestKey::generate(Algorithm::ES256, "k2");
    // Same kid as the published key, another key: the signature does not verify.
    let impostor = TestKey::generate(Algorithm::ES256, "k1");
    let up = Upstream::start("books").await;
    let jwks = json!({ "keys": [key.jwk()] }).to_string();
    let toml = server_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &auth_toml("scope_failure_status = 403")
        + &issuer_toml(ISS, r#"jwks_file = "keys/jwks.json""#, &["ES256"], "")
        + &upstream_toml("books", &format!("{}/base", up.url))
        + &route_toml("/books/{id}", &["GET"], &[&scopes(&["books.read", "books.list"]), &forward_to("books")])
        + &route_toml(
            "/books/{id}",
            &["DELETE"],
            &[r#"scopes_all = ["books.read", "books.admin"]"#, &forward_to("books")],
        )
        + &route_toml("/health", &["GET"], &[PUBLIC, &response_line(200, "text/plain", "ok")])
        + &route_toml("/teapot", &["GET"], &[&scopes(&["books.read"]), &response_line(418, "", "{\"short\":true}")])
        + &route_toml("/audit/{id}", &["GET"], &[&scopes(&["books.read"]), "enforce = false", &forward_to("books")]);
    let p = Binary::options(&toml).file("keys/jwks.json", &jwks).start().await;

    let good = token(&key, ISS, "books.read", |_| {});
    let list = token(&key, ISS, "books.list other", |_| {});
    let wrong_scope = token(&key, ISS, "books.write", |_| {});
    let both = token(&key, ISS, "books.read books.admin", |_| {});
    let expired = token(&key, ISS, "books.read", |c| {
        c["exp"] = json!(now() - 600);
        c["iat"] = json!(now() - 1200);
    });
    let not_yet = token(&key, ISS, "books.read", |c| c["nbf"] = json!(now() + 3600));
    let unknown_kid = token(&stranger_key, ISS, "books.read", |_| {});
    let other_issuer = token(&key, STRANGER, "books.read", |_| {});
    let bad_signature = token(&impostor, ISS, "books.read", |_| {});
    let rows = vec![
        row("no token", "GET", "/books/1", None),
        row("good", "GET", "/books/1", Some(&good)),
        row("good, query kept", "GET", "/books/1?x=1&y=%20", Some(&good)),
        row("good, dot segment", "GET", "/books/./7", Some(&good)),
        row("good, doubled slashes", "GET", "//books//8", Some(&good)),
        row("good, dot-dot inside", "GET", "/books/1/../9", Some(&good)),
        row("good, encoded unreserved", "GET", "/books/%31%30", Some(&good)),
        row("any of: the second scope", "GET", "/books/2", Some(&list)),
        row("wrong scope", "GET", "/books/1", Some(&wrong_scope)),
        row("expired", "GET", "/books/1", Some(&expired)),
        row("not yet valid", "GET", "/books/1", Some(&not_yet)),
        row("unknown kid", "GET", "/books/1", Some(&unknown_kid)),
        row("other issuer", "GET", "/books/1", Some(&other_issuer)),
        row("bad signature", "GET", "/books/1", Some(&bad_signature)),
        row("not a JWT", "GET", "/books/1", Some("not-a-jwt")),
        row("all of: one missing", "DELETE", "/books/1", Some(&good)),
        row("all of: both", "DELETE", "/books/1", Some(&both)),
        row("public route", "GET", "/health", None),
        row("public route, junk token", "GET", "/health", Some("junk")),
        row("mock route", "GET", "/teapot", Some(&good)),
        row("mock route, no token", "GET", "/teapot", None),
        row("no route", "GET", "/nope", Some(&good)),
        row("templates match case-insensitively", "GET", "/BOOKS/1", Some(&good)),
        row("method without a route", "PUT", "/books/1", Some(&good)),
        row("path parameter", "GET", "/books;v=1/1", Some(&good)),
        row("above the root", "GET", "/../books/1", Some(&good)),
        row("lower-case method", "get", "/books/1", Some(&good)),
        row("audit route, good", "GET", "/audit/1", Some(&good)),
        row("audit route, wrong scope", "GET", "/audit/2", Some(&wrong_scope)),
        row("audit route, bad signature", "GET", "/audit/3", Some(&bad_signature)),
        row("audit route, no token", "GET", "/audit/4", None),
        row("audit route, wrong method", "POST", "/audit/5", Some(&good)),
    ];
    let allowed = assert_agreement(&p, &up, "authorization", &rows).await;
    assert_eq!(allowed, 16, "rows allowed by both");
    // On the audit route, what an enforcing route would answer is told too.
    let (code, e) = explain_json(p.dir.path(), p.config_path(), "GET", "/audit/2", Some(&wrong_scope)).await;
    assert_eq!((code, &e["decision"], &e["reason"]), (0, &json!("would_deny"), &json!("insufficient_scope")), "{e}");
    assert_eq!(e["would_answer"]["status"], 403, "{e}");
    assert_eq!(e["route"]["enforce"], false, "{e}");
    // The signature was checked offline, from the jwks_file.
    let (_, e) = explain_json(p.dir.path(), p.config_path(), "GET", "/books/1", Some(&bad_signature)).await;
    assert_eq!(e["token"]["signature_checked"], true, "{e}");
    assert_eq!(e["reason"], "bad_signature", "{e}");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_gateway_in_aws_rest_mode() {
    let key = TestKey::generate(Algorithm::ES256, "rest-k1");
    let up = Upstream::start("api").await;
    let jwks = json!({ "keys": [key.jwk()] }).to_string();
    let toml = server_toml("compat = \"aws-rest\"")
        + "[log]\nformat = \"json\"\n\n"
        + &auth_toml("header = \"x-api-token\"")
        + &issuer_toml(ISS, r#"jwks_file = "jwks.json""#, &["ES256"], "")
        + &upstream_toml("api", &up.url)
        + &route_toml("/orders/{id}", &["GET", "POST"], &[&scopes(&["orders.read"]), &forward_to("api")])
        + &route_toml("/profile", &["GET"], &[&response_line(200, "application/json", "{\"me\":1}")]);
    let p = Binary::options(&toml).file("jwks.json", &jwks).start().await;

    let access = token(&key, ISS, "orders.read", |_| {});
    let id_token = token(&key, ISS, "orders.read", |c| {
        c["token_use"] = json!("id");
        c["aud"] = json!("client-1");
    });
    let expired = token(&key, ISS, "orders.read", |c| c["exp"] = json!(now() - 600));
    let rows = vec![
        row("no token", "GET", "/orders/1", None),
        row("access token", "GET", "/orders/1", Some(&access)),
        row("access token, POST", "POST", "/orders/2?q=1", Some(&access)),
        row("id token on a scoped route", "GET", "/orders/1", Some(&id_token)),
        row("expired", "GET", "/orders/1", Some(&expired)),
        row("id token on a route without scopes", "GET", "/profile", Some(&id_token)),
        row("access token on a route without scopes", "GET", "/profile", Some(&access)),
        row("no route: Missing Authentication Token", "GET", "/nope", Some(&access)),
        row("method without a route", "DELETE", "/orders/1", Some(&access)),
        row("path parameter", "GET", "/orders;x/1", Some(&access)),
    ];
    let allowed = assert_agreement(&p, &up, "x-api-token", &rows).await;
    assert_eq!(allowed, 3, "rows allowed by both");
    // The aws-rest shape is what explain reports for a refusal.
    let (_, e) = explain_json(p.dir.path(), p.config_path(), "GET", "/nope", None).await;
    assert_eq!(
        (e["status"].as_u64(), e["response"]["body"].as_str()),
        (Some(403), Some(r#"{"message":"Missing Authentication Token"}"#)),
        "{e}"
    );
    drop(p);
}

/// A small config for the command-line tests: one issuer from a `jwks_file` next to the config.
fn cli_config(dir: &Path, key: &TestKey, extra_issuer_lines: &str) -> std::path::PathBuf {
    write_file(&dir.join("jwks.json"), &json!({ "keys": [key.jwk()] }).to_string());
    let toml = server_toml("")
        + &issuer_toml(ISS, r#"jwks_file = "jwks.json""#, &["ES256"], extra_issuer_lines)
        + &route_toml("/books", &["GET"], &[&scopes(&["books.read"]), &mock_response("application/json", "[]")]);
    let config = dir.join("gateway.toml");
    write_file(&config, &toml);
    config
}

#[tokio::test]
async fn exit_codes_say_allowed_refused_or_error_and_config_errors_are_positioned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::generate(Algorithm::ES256, "cli-k1");
    let config = cli_config(dir.path(), &key, "");
    let good = token(&key, ISS, "books.read", |_| {});

    let out = explain(dir.path(), &config, &["GET", "/books", "--token", &good]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().last(), Some("answer:    allowed: mock 200"), "{text}");
    assert!(text.contains("signature: checked against jwks_file"), "{text}");
    assert!(text.contains("policy:    auth jwt, any of [books.read]"), "{text}");

    let out = explain(dir.path(), &config, &["GET", "/books"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().last(), Some("answer:    refused: 401 Unauthorized (missing_token)"), "{text}");

    // Usage errors: clap's own, and a target or method that is not one.
    for args in [
        &["GET"][..],
        &["GET", "/books", "--token", "t", "--claims", "{}"],
        &["GET", "books"],
        &["G T", "/books"],
        &["GET", "/books", "--claims", "[1]"],
        &["GET", "/books", "--claims", "{not json"],
    ] {
        let out = explain(dir.path(), &config, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }

    // A config error is reported as `check` reports it: FILE:LINE:COL: message, exit 2.
    let broken = dir.path().join("broken.toml");
    write_file(&broken, "[server]\nlisten = \"127.0.0.1:0\"\nlistne = \"x\"\n");
    let out = explain(dir.path(), &broken, &["GET", "/books"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with(&format!("{}:3:1: ", broken.display())), "{stderr}");
    let mut check = binary_command();
    check.arg("--config").arg(&broken).arg("check");
    let checked = run_command(check, None).await;
    assert_eq!(String::from_utf8_lossy(&checked.stderr), stderr);
    // A file the config names that cannot be read: positioned too.
    let missing = dir.path().join("missing.toml");
    write_file(&missing, &(server_toml("") + &issuer_toml(ISS, r#"jwks_file = "nowhere.json""#, &["ES256"], "")));
    let out = explain(dir.path(), &missing, &["GET", "/books"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with(&format!("{}:", missing.display())) && stderr.contains("jwks_file"), "{stderr}");
}

#[tokio::test]
async fn claims_are_taken_as_verified_but_checked_like_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::generate(Algorithm::ES256, "claims-k1");
    let config = cli_config(dir.path(), &key, "audiences = [\"client-1\"]");
    let run = |claims: Value| {
        let (dir, config) = (dir.path().to_path_buf(), config.clone());
        async move {
            let out = explain(&dir, &config, &["GET", "/books", "--json", "--claims", &claims.to_string()]).await;
            let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
            (out.status.code(), v)
        }
    };
    let (code, e) = run(claims(ISS, "client-1", "books.read")).await;
    assert_eq!((code, &e["allowed"], &e["status"]), (Some(0), &json!(true), &json!(200)), "{e}");
    assert_eq!(e["token"]["source"], "claims");
    assert_eq!(e["token"]["scopes"], json!(["books.read"]));
    assert_eq!(e["token"]["signature_checked"], false);

    // Every check the verifier makes after the signature applies.
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    cases.push(("scope missing", claims(ISS, "client-1", "books.write"), "insufficient_scope"));
    cases.push(("issuer not configured", claims(STRANGER, "client-1", "books.read"), "wrong_issuer"));
    let mut c = claims(ISS, "client-1", "books.read");
    c["exp"] = json!(now() - 600);
    cases.push(("expired", c, "expired"));
    let mut c = claims(ISS, "client-1", "books.read");
    c.as_object_mut().expect("object").remove("exp");
    cases.push(("no exp", c, "malformed_token"));
    let mut c = claims(ISS, "client-1", "books.read");
    c["nbf"] = json!(now() + 3600);
    cases.push(("not yet valid", c, "not_yet_valid"));
    cases.push(("audience", claims(ISS, "client-2", "books.read"), "wrong_audience"));
    for (what, c, reason) in cases {
        let (code, e) = run(c).await;
        assert_eq!((code, e["reason"].as_str()), (Some(1), Some(reason)), "{what}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_uri_issuer_is_never_fetched_and_its_signature_is_said_unchecked() {
    let key = TestKey::generate(Algorithm::ES256, "net-k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let discovery_iss = format!("http://{}", jwks.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = server_toml("")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["ES256"], "")
        + &issuer_toml(&discovery_iss, "discovery = true", &["ES256"], "")
        + &route_toml("/books", &["GET"], &[&scopes(&["books.read"]), &mock_response("application/json", "[]")]);
    let config = dir.path().join("gateway.toml");
    write_file(&config, &toml);

    let good = token(&key, ISS, "books.read", |_| {});
    let out = explain(dir.path(), &config, &["GET", "/books", "--token", &good]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!(
            "signature: not checked: keys for {ISS} are fetched from {} at run time; decided on the claims as if the signature were good",
            jwks.url
        )),
        "{text}"
    );

    // Decided on the claims, with their checks: a wrong scope and an expired token are refused.
    let wrong = token(&key, ISS, "books.write", |_| {});
    let (code, e) = explain_json(dir.path(), &config, "GET", "/books", Some(&wrong)).await;
    assert_eq!(
        (code, e["reason"].as_str(), &e["token"]["signature_checked"]),
        (1, Some("insufficient_scope"), &json!(false))
    );
    let expired = token(&key, ISS, "books.read", |c| c["exp"] = json!(now() - 600));
    let (code, e) = explain_json(dir.path(), &config, "GET", "/books", Some(&expired)).await;
    assert_eq!((code, e["reason"].as_str()), (1, Some("expired")), "{e}");
    let discovered = token(&key, &discovery_iss, "books.read", |_| {});
    let (code, e) = explain_json(dir.path(), &config, "GET", "/books", Some(&discovered)).await;
    assert_eq!(code, 0, "{e}");
    let said = e["token"]["signature"].as_str().unwrap_or_default();
    assert!(said.contains("/.well-known/openid-configuration at run time"), "{e}");

    assert_eq!(jwks.hits(), 0, "explain fetched a key set or a discovery document");
}

#[tokio::test]
async fn the_built_in_issuer_s_generated_key_is_said_unchecked() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The built-in issuer signs RS256; a token shaped like its own, signed by another key.
    let key = TestKey::generate(Algorithm::RS256, "whatever");
    let toml = server_toml("")
        + &builtin_issuer_toml(BUILTIN, "")
        + &resource_server_toml("API", &["book.get"])
        + &route_toml("/book", &["GET"], &[&scopes(&["API/book.get"]), &mock_response("application/json", "[]")]);
    let config = dir.path().join("gateway.toml");
    write_file(&config, &toml);
    let t = token(&key, BUILTIN, "API/book.get", |_| {});
    let out = explain(dir.path(), &config, &["GET", "/book", "--token", &t]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("signature: not checked: the built-in issuer's key is generated at start; decided on the claims as if the signature were good"),
        "{text}"
    );
    // The built-in issuer's own rule (token_use = access) still applies.
    let id = token(&key, BUILTIN, "API/book.get", |c| c["token_use"] = json!("id"));
    let (code, e) = explain_json(dir.path(), &config, "GET", "/book", Some(&id)).await;
    assert_eq!((code, e["reason"].as_str()), (1, Some("wrong_token_use")), "{e}");
    // Its endpoints come before the route table.
    let (code, e) = explain_json(dir.path(), &config, "POST", "/oauth2/token", None).await;
    assert_eq!((code, e["issuer_endpoint"].as_str()), (0, Some("token")), "{e}");
    // Explain generated a key in memory only: nothing was written next to the config.
    let mut names: Vec<_> =
        std::fs::read_dir(dir.path()).expect("read dir").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["gateway.toml"]);
}

/// Writes `keys` as the key set persisted for `issuer` in `cache` (the format the gateway writes:
/// `jwks-<sha256 of the issuer>.json` holding the issuer, when it was fetched, and the document).
fn persist_key_set(cache: &Path, issuer: &str, keys: Vec<Value>) {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issuer.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let doc = json!({ "issuer": issuer, "fetched_at": now(), "jwks": { "keys": keys } });
    write_file(&cache.join(format!("jwks-{hex}.json")), &doc.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_persisted_in_key_cache_dir_checks_the_signature_offline() {
    let key = TestKey::generate(Algorithm::ES256, "cached-k1");
    let impostor = TestKey::generate(Algorithm::ES256, "cached-k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    persist_key_set(&dir.path().join("cache"), ISS, vec![key.jwk()]);
    let toml = server_toml("")
        + &auth_toml("key_cache_dir = \"cache\"")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["ES256"], "")
        + &route_toml("/books", &["GET"], &[&scopes(&["books.read"]), &mock_response("application/json", "[]")]);
    let config = dir.path().join("gateway.toml");
    write_file(&config, &toml);

    let good = token(&key, ISS, "books.read", |_| {});
    let (code, e) = explain_json(dir.path(), &config, "GET", "/books", Some(&good)).await;
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["token"]["signature_checked"], true, "{e}");
    assert_eq!(e["token"]["signature"], "checked against the key set persisted in key_cache_dir", "{e}");
    // Checked, not assumed: another key under the same kid does not verify.
    let forged = token(&impostor, ISS, "books.read", |_| {});
    let (code, e) = explain_json(dir.path(), &config, "GET", "/books", Some(&forged)).await;
    assert_eq!((code, e["reason"].as_str()), (1, Some("bad_signature")), "{e}");
    assert_eq!(jwks.hits(), 0, "explain fetched the key set");
}
