//! Audit (dry-run) mode: a route with `enforce = false` checks tokens and scopes as usual, logs
//! and counts what it would refuse (`decision = "would_deny"`), and forwards the request anyway,
//! without the identity of a principal that failed. Real gateways (the binary where the log is
//! read), a real JWKS server, a real upstream that counts what reaches it, and tokens minted
//! here: none verified, expired, signed by the wrong key, naming an unknown key, or short of the
//! route's scope, each sent next to forged identity headers.

use crate::common::*;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Deadline for a reload (file watcher, or its 5 s fallback poll) to show in answers.
const EVENTUALLY: Duration = Duration::from_secs(15);

/// Identity headers a client forges; the upstream must never see them from the client.
const FORGED: [(&str, &str); 4] = [
    ("x-auth-sub", "forged-sub"),
    ("x-auth-client-id", "forged-client"),
    ("x-auth-scope", "API/read API/admin"),
    ("x-auth-issuer", "https://forged.example"),
];

/// The `x-auth-*` headers a forwarded request carried.
fn x_auth(r: &Received) -> Vec<(String, String)> {
    r.headers.iter().filter(|(k, _)| k.starts_with("x-auth-")).cloned().collect()
}

/// A route `GET path` to the upstream `up`, needing `API/read`, with `extra` lines.
fn read_route(path: &str, extra: &str) -> String {
    route_toml(path, &["GET"], &[&scopes(&["API/read"]), &forward_to("up"), extra])
}

const AUDIT: &str = "enforce = false";

/// The tokens of the table: each would be refused by an enforcing route, for its reason.
struct Refused {
    what: &'static str,
    token: Option<String>,
    reason: &'static str,
    status: u16,
}

fn refused_table(key: &TestKey) -> Vec<Refused> {
    let stranger = TestKey::generate(Algorithm::RS256, key.kid.as_str());
    let unknown = TestKey::generate(Algorithm::RS256, "audit-unknown-kid");
    let mut expired = claims(ISS, "client-exp", "API/read");
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let refused = |what, token: Option<String>, reason, status| Refused { what, token, reason, status };
    vec![
        refused("no token", None, "missing_token", 401),
        refused("bad signature", Some(stranger.sign(&claims(ISS, "client-sig", "API/read"))), "bad_signature", 401),
        refused("expired", Some(key.sign(&expired)), "expired", 401),
        refused("unknown kid", Some(unknown.sign(&claims(ISS, "client-kid", "API/read"))), "unknown_kid", 401),
        refused("wrong scope", Some(key.sign(&claims(ISS, "client-scope", "API/write"))), "insufficient_scope", 403),
    ]
}

/// `GET path` with `x-request-id: id`, the token as a bearer, and the forged identity headers.
async fn request(addr: std::net::SocketAddr, path: &str, id: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("x-request-id", id)];
    headers.extend(FORGED);
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    send_to(addr, "GET", path, &headers, "").await
}

/// `(status, decision, reason, route, token_verified)` of an access line.
fn decision(line: &Value) -> (u64, &str, &str, &str, bool) {
    (
        line["status"].as_u64().unwrap_or_default(),
        line["decision"].as_str().unwrap_or("(no decision field)"),
        line["reason"].as_str().unwrap_or("(no reason field)"),
        line["route"].as_str().unwrap_or("(no route field)"),
        line["token_verified"].as_bool().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_route_forwards_what_it_would_refuse_without_identity_and_counts_it() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let toml = server_admin_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &auth_toml("scope_failure_status = 403")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("up", &up.url)
        + &read_route("/audit", AUDIT)
        + &read_route("/enforced", "");
    let p = Binary::start(&toml).await;

    for (i, case) in refused_table(&key).iter().enumerate() {
        let what = case.what;
        // The audit route: forwarded, with no identity at all (the forged one stripped too).
        let before = up.count();
        let id = format!("audit-{i}");
        let r = request(p.addr, "/audit", &id, case.token.as_deref()).await;
        assert_eq!(r.status, 200, "{what} on the audit route: {r:?}");
        assert_eq!(up.count(), before + 1, "{what}: the audit route forwards");
        let got = up.last().expect("forwarded");
        assert_eq!(got.target, "/audit", "{what}");
        assert_eq!(x_auth(&got), vec![], "{what}: no identity headers upstream");
        let line = p.access_line(&id).await;
        let verified = case.reason == "insufficient_scope";
        assert_eq!(decision(&line), (200, "would_deny", case.reason, "/audit", verified), "{what}: {line}");
        assert_eq!(line["required_any_of"], "API/read", "{what}: {line}");

        // The enforcing route next to it: refused, nothing reaches the upstream.
        let id = format!("enforced-{i}");
        let r = request(p.addr, "/enforced", &id, case.token.as_deref()).await;
        assert_eq!(r.status, case.status, "{what} on the enforcing route: {r:?}");
        assert_eq!(up.count(), before + 1, "{what}: the enforcing route does not forward");
        let line = p.access_line(&id).await;
        assert_eq!(decision(&line), (u64::from(case.status), "deny", case.reason, "/enforced", verified), "{line}");
    }
    // The insufficient-scope line keeps what the token carried, as a refusal's line does.
    let line = p.access_line("audit-4").await;
    assert_eq!((line["client_id"].as_str(), line["token_scopes"].as_str()), (Some("client-scope"), Some("API/write")));

    // A good token passes both routes as usual, with its identity.
    let good = key.sign(&claims(ISS, "client-good", "API/read"));
    for path in ["/audit", "/enforced"] {
        let before = up.count();
        let id = format!("good{}", path.replace('/', "-"));
        let r = request(p.addr, path, &id, Some(&good)).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(up.count(), before + 1);
        let got = up.last().expect("forwarded");
        assert_eq!(got.header_all("x-auth-sub"), vec!["client-good"], "{path}: {:?}", got.headers);
        assert_eq!(got.header_all("x-auth-client-id"), vec!["client-good"], "{path}");
        assert_eq!(got.header_all("x-auth-scope"), vec!["API/read"], "{path}");
        assert_eq!(got.header_all("x-auth-issuer"), vec![ISS], "{path}");
        assert_eq!(decision(&p.access_line(&id).await), (200, "allow", "", path, true), "{path}");
    }

    // What is not a token decision stays enforced on the audit route.
    let before = up.count();
    let checks: [(&str, &str, u16, &str); 3] = [
        ("POST", "/audit", 405, "method_not_allowed"),
        ("GET", "/audit;jsessionid=1", 400, "bad_request"),
        ("GET", "/audit/more", 404, "not_found"),
    ];
    for (i, (method, path, status, reason)) in checks.into_iter().enumerate() {
        let id = format!("other-{i}");
        let r = send_to(p.addr, method, path, &[("x-request-id", &id)], "").await;
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        let line = p.access_line(&id).await;
        assert_eq!(
            (line["decision"].as_str(), line["reason"].as_str()),
            (Some("deny"), Some(reason)),
            "{method} {path}: {line}"
        );
    }
    assert_eq!(up.count(), before, "no refused request reached the upstream");

    // Counted per route and reason; what the audit route forwarded is no refusal.
    let metrics = send_to(p.admin(), "GET", "/metrics", &[], "").await.body;
    for case in refused_table(&key) {
        assert_metric(
            &metrics,
            "scopegate_audit_would_deny_total",
            &[("route", "/audit"), ("reason", case.reason)],
            1.0,
        );
        assert_metric(&metrics, "scopegate_auth_failures_total", &[("reason", case.reason)], 1.0);
    }
    assert_eq!(metric_sum(&metrics, "scopegate_audit_would_deny_total", &[]), 5.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "scopegate_audit_would_deny_total", &[("route", "/enforced")]), 0.0);
    assert_metric(&metrics, "scopegate_routes_not_enforcing", &[], 1.0);

    // The start said which route is not enforcing, and only that one.
    let warnings: Vec<String> = p
        .json_lines()
        .into_iter()
        .filter(|v| v["level"] == "WARN")
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .filter(|m| m.contains("audit mode"))
        .collect();
    assert_eq!(warnings.len(), 1, "one startup warning about audit mode:\n{}", p.output());
    assert!(warnings[0].contains("GET /audit"), "{warnings:?}");
    assert!(!warnings[0].contains("/enforced"), "{warnings:?}");
    p.stop().await;
}

/// A gateway.toml with one issuer, the upstream `up`, `[auth]` lines and routes.
fn gateway_toml(jwks: &JwksServer, up: &Upstream, auth: &str, routes: &str) -> String {
    server_admin_toml("")
        + &auth_toml(auth)
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("up", &up.url)
        + routes
}

#[tokio::test]
async fn auth_enforce_false_is_the_default_a_route_can_override() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k2");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let routes = read_route("/inherits", "")
        + &read_route("/enforces", "enforce = true")
        + &route_toml("/public", &["GET"], &[PUBLIC, &forward_to("up")]);
    let gw = Gateway::start(&gateway_toml(&jwks, &up, "enforce = false", &routes)).await;

    let r = request(gw.addr, "/inherits", "a", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);
    assert_eq!(x_auth(&up.last().expect("forwarded")), vec![]);
    let r = request(gw.addr, "/enforces", "b", None).await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED));
    assert_eq!(up.count(), 1, "the route that enforces does not forward");
    // A public route inherits nothing to audit, and is no error.
    let r = request(gw.addr, "/public", "c", None).await;
    assert_eq!(r.status, 200);
    let m = gw.metrics_text();
    assert_metric(&m, "scopegate_routes_not_enforcing", &[], 1.0);
    assert_metric(&m, "scopegate_audit_would_deny_total", &[("route", "/inherits"), ("reason", "missing_token")], 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_refused_token_in_an_x_auth_header_is_not_forwarded_from_an_audit_route() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k3");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&gateway_toml(&jwks, &up, "header = \"x-auth-token\"", &read_route("/audit", AUDIT))).await;
    let short = key.sign(&claims(ISS, "client-short", "API/write"));
    let r = send(&gw, "GET", "/audit", &[("x-auth-token", &short)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(x_auth(&up.last().expect("forwarded")), vec![], "a refused token passes on as no x-auth-* header");
    // A token that passes is forwarded as on an enforcing route.
    let good = key.sign(&claims(ISS, "client-good", "API/read"));
    let r = send(&gw, "GET", "/audit", &[("x-auth-token", &good)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.last().expect("forwarded");
    assert_eq!(got.header("x-auth-token"), Some(good.as_str()));
    assert_eq!(got.header("x-auth-sub"), Some("client-good"));
    gw.stop().await;
}

#[tokio::test]
async fn an_audit_route_forwards_no_claims_header_for_a_refused_token() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k4");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let toml = server_toml("compat = \"aws-http\"")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("up", &up.url)
        + &read_route("/audit", &format!("{AUDIT}\nclaims_header = \"x-apigateway-authorizer\""));
    let gw = Gateway::start(&toml).await;
    let forged = [("x-apigateway-authorizer", r#"{"jwt":{"claims":{"sub":"admin"}}}"#)];
    let short = format!("Bearer {}", key.sign(&claims(ISS, "client-short", "API/write")));
    for auth in [None, Some(short.as_str())] {
        let mut headers = forged.to_vec();
        headers.extend(auth.map(|a| ("authorization", a)));
        let r = send(&gw, "GET", "/audit", &headers, "").await;
        assert_eq!(r.status, 200, "{r:?}");
        let got = up.last().expect("forwarded");
        assert_eq!(got.header("x-apigateway-authorizer"), None, "token {auth:?}: {:?}", got.headers);
    }
    let good = format!("Bearer {}", key.sign(&claims(ISS, "client-good", "API/read")));
    let r = send(&gw, "GET", "/audit", &[forged[0], ("authorization", &good)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.last().expect("forwarded");
    let claims: Value =
        serde_json::from_str(got.header("x-apigateway-authorizer").expect("claims header")).expect("JSON");
    assert_eq!(claims["jwt"]["claims"]["sub"], "client-good");
    gw.stop().await;
}

/// Polls a tokenless `GET /r` until it answers `status` (bounded by [`EVENTUALLY`]).
async fn until_status(gw: &Gateway, status: u16) -> Resp {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let r = gw.get("/r", None).await;
        if r.status == status {
            return r;
        }
        assert!(Instant::now() < deadline, "GET /r still answers {} after {EVENTUALLY:?}, want {status}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn hot_reload_switches_a_route_between_audit_and_enforce() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k5");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let audit = gateway_toml(&jwks, &up, "", &read_route("/r", AUDIT));
    let enforce = gateway_toml(&jwks, &up, "", &read_route("/r", "enforce = true"));
    let default = gateway_toml(&jwks, &up, "", &read_route("/r", ""));
    let gw = Gateway::start(&audit).await;
    assert_eq!(gw.get("/r", None).await.status, 200);
    assert_eq!(up.count(), 1);
    assert_metric(&gw.metrics_text(), "scopegate_routes_not_enforcing", &[], 1.0);

    for (toml, what) in [(&enforce, "enforce = true"), (&default, "the key removed")] {
        gw.rewrite(&audit);
        until_status(&gw, 200).await;
        gw.rewrite(toml);
        until_status(&gw, 401).await;
        // Polled requests before the reload were forwarded; from now on none is.
        let hits = up.count();
        let r = gw.get("/r", None).await;
        assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "{what}");
        assert_eq!(up.count(), hits, "{what}: the 401 reached no upstream");
        assert_metric(&gw.metrics_text(), "scopegate_routes_not_enforcing", &[], 0.0);
    }
    // And back to audit mode.
    gw.rewrite(&audit);
    until_status(&gw, 200).await;
    assert_metric(&gw.metrics_text(), "scopegate_routes_not_enforcing", &[], 1.0);
    assert!(gw.reloads("ok") >= 4, "every switch was a reload");
    gw.stop().await;
}

#[tokio::test]
async fn enforce_false_on_a_public_route_is_an_error_at_its_position() {
    let toml =
        server_toml("") + &route_toml("/health", &["GET"], &[PUBLIC, AUDIT, &mock_response("application/json", "{}")]);
    let err = Gateway::try_start(&toml).await.err().expect("refused");
    let line = toml.lines().position(|l| l == AUDIT).expect("the enforce line") + 1;
    let want = format!("gateway.toml:{line}:11: enforce = false needs a route with auth = \"jwt\"");
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
}

#[tokio::test]
async fn check_warns_about_each_route_not_enforcing_and_still_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_response("application/json", "{}");
    let toml = server_toml("")
        + &auth_toml("enforce = false")
        + &issuer_toml(ISS, "jwks_uri = \"http://127.0.0.1:9/jwks.json\"", &[], "")
        + &route_toml("/a", &["GET", "POST"], &[&mock])
        + &route_toml("/b", &["GET"], &[&mock, "enforce = true"])
        + &route_toml("/c/{id}", &[], &[&mock, AUDIT])
        + &route_toml("/public", &["GET"], &[PUBLIC, &mock]);
    let path = dir.path().join("gateway.toml");
    write_file(&path, &toml);
    let mut cmd = binary_command();
    cmd.args(["check", "--config"]).arg(&path).env_remove("RUST_LOG");
    let out = run_command(cmd, None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("is not enforcing")).collect();
    assert_eq!(warnings.len(), 2, "one warning per route in audit mode:\n{stderr}");
    let prefix = format!("{}:", path.display());
    for (warning, name, path_line) in
        [(warnings[0], "GET,POST /a", "path = \"/a\""), (warnings[1], "ANY /c/{id}", "path = \"/c/{id}\"")]
    {
        // FILE:LINE:COL: warning: ..., the line within the route's [[routes]] table.
        let rest = warning.strip_prefix(&prefix).unwrap_or_else(|| panic!("{warning:?} is not positioned in {prefix}"));
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().and_then(|l| l.parse().ok()).expect("LINE");
        assert!(parts.next().and_then(|c| c.parse::<usize>().ok()).is_some(), "COL in {warning:?}");
        let text = parts.next().expect("message");
        assert!(text.starts_with(&format!(" warning: route {name} is not enforcing")), "{warning:?}");
        let path_at = toml.lines().position(|l| l == path_line).expect("route path line") + 1;
        assert!((path_at - 1..=path_at + 3).contains(&line), "{warning:?} is not at the route of line {path_at}");
    }
}

/// The messages of the binary's log lines at `level` that contain `needle`.
fn messages(p: &Binary, level: &str, needle: &str) -> Vec<String> {
    p.json_lines()
        .into_iter()
        .filter(|v| v["level"] == level)
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .filter(|m| m.contains(needle))
        .collect()
}

/// Waits (bounded by [`EVENTUALLY`]) until the binary logged `n` "config reloaded" lines.
async fn until_reloads(p: &Binary, n: usize) {
    let deadline = Instant::now() + EVENTUALLY;
    while messages(p, "INFO", "config reloaded").len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} reloads after {EVENTUALLY:?}:\n{}", p.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_routes_in_audit_mode_names_them() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k6");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let head = server_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("up", &up.url);
    let public = route_toml("/public", &["GET"], &[PUBLIC, &forward_to("up")]);
    let v1 = head.clone() + &read_route("/a", AUDIT) + &read_route("/b", "");
    let v2 = head.clone() + &read_route("/a", AUDIT) + &read_route("/b", AUDIT);
    let v3 = v2.clone() + &public;
    let v4 = head.clone() + &read_route("/a", "") + &read_route("/b", "") + &public;
    let p = Binary::start(&v1).await;
    let warned = |p: &Binary| messages(p, "WARN", "audit mode");
    assert_eq!(warned(&p).len(), 1, "{}", p.output());
    assert!(warned(&p)[0].contains("GET /a") && !warned(&p)[0].contains("GET /b"), "{:?}", warned(&p));

    // /b joins: a new warning names both.
    replace_by_rename(p.config_path(), &v2);
    until_reloads(&p, 1).await;
    let w = warned(&p);
    assert_eq!(w.len(), 2, "{}", p.output());
    assert!(w[1].contains("GET /a") && w[1].contains("GET /b"), "{w:?}");
    // A reload that leaves the list as it was says nothing more about it.
    replace_by_rename(p.config_path(), &v3);
    until_reloads(&p, 2).await;
    assert_eq!(warned(&p).len(), 2, "{}", p.output());
    // Every route enforces again: said once, at info.
    replace_by_rename(p.config_path(), &v4);
    until_reloads(&p, 3).await;
    assert_eq!(warned(&p).len(), 2, "{}", p.output());
    assert_eq!(messages(&p, "INFO", "every route enforces").len(), 1, "{}", p.output());
    let r = send_to(p.addr, "GET", "/a", &[], "").await;
    assert_eq!(r.status, 401, "{r:?}");
    p.stop().await;
}

#[tokio::test]
async fn an_aws_rest_token_type_refusal_is_audited_like_any_other() {
    let key = TestKey::generate(Algorithm::RS256, "audit-k7");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let up = Upstream::start("up").await;
    let toml = server_admin_toml("compat = \"aws-rest\"")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("up", &up.url)
        + &read_route("/audit", AUDIT)
        + &read_route("/enforced", "");
    let gw = Gateway::start(&toml).await;
    // An ID token on a route with scopes: REST API's authorizer wants an access token.
    let mut id = claims(ISS, "client-id-token", "API/read");
    id["token_use"] = json!("id");
    let id = key.sign(&id);
    let r = request(gw.addr, "/enforced", "e", Some(&id)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(up.count(), 0);
    let r = request(gw.addr, "/audit", "a", Some(&id)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);
    assert_eq!(x_auth(&up.last().expect("forwarded")), vec![]);
    let m = gw.metrics_text();
    assert_metric(&m, "scopegate_audit_would_deny_total", &[("route", "/audit"), ("reason", "wrong_token_use")], 1.0);
    gw.stop().await;
}
