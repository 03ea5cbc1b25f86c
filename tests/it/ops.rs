//! The operations side against real servers: the admin listener's `/metrics`,
//! `/healthz` and `/readyz`; SIGTERM / SIGINT on the real binary; TLS with ALPN and certificate
//! rotation; and the JSON access log.
//!
//! Library-level tests run `scopegate::Server` through the shared `Gateway` harness (with its
//! admin listener); process-level tests run the built binary through the shared `Binary`
//! harness, which kills it on drop. Every wait is bounded.

use crate::common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SCOPE: &str = "API/book.get";
/// Bound on one exchange made by the helpers in this file.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

async fn admin_get(admin: SocketAddr, path: &str) -> Resp {
    try_send(admin, "GET", path, &[]).await.unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
}

/// One HTTP/1.1 exchange on a fresh connection; `Err` on connect or protocol failure.
async fn try_send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    try_send_to(addr, method, path, headers, "").await
}

// ---------------------------------------------------------------------------------------------
// Config pieces
// ---------------------------------------------------------------------------------------------

fn jwt_route(path: &str) -> String {
    route_toml(path, &["GET"], &[&scopes(&[SCOPE]), &forward_to("books")])
}

fn public_route(path: &str) -> String {
    route_toml(path, &["GET"], &[PUBLIC, &forward_to("books")])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// 1. Metrics after real traffic
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_traffic_by_template_and_reason() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let spare = TestKey::generate(Algorithm::RS256, "k2");
    let impostor = TestKey::generate(Algorithm::RS256, "k1"); // same kid, other key
    let jwks = JwksServer::start(vec![key.jwk(), spare.jwk()]).await;
    let upstream = Upstream::start("books").await;
    let toml = server_admin_toml("")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
        + &upstream_toml("books", &upstream.url)
        + &jwt_route("/book");
    let gw = Gateway::start(&toml).await;

    let good = key.sign(&claims(ISS, "client-1", SCOPE));
    let bad_sig = impostor.sign(&claims(ISS, "client-1", SCOPE));
    let narrow = key.sign(&claims(ISS, "client-1", "API/user.get"));
    let mut sent = 0;
    let mut go = |resp: Resp, want: u16, what: &str| {
        sent += 1;
        assert_eq!(resp.status, want, "{what}: {resp:?}");
    };
    for _ in 0..3 {
        go(try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&good))]).await.unwrap(), 200, "good");
    }
    for _ in 0..2 {
        go(try_send(gw.addr, "GET", "/book", &[]).await.unwrap(), 401, "missing token");
    }
    go(try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&bad_sig))]).await.unwrap(), 401, "bad sig");
    go(try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&narrow))]).await.unwrap(), 401, "scope");
    go(try_send(gw.addr, "GET", "/nope", &[]).await.unwrap(), 404, "unknown path");
    go(try_send(gw.addr, "GET", "/secret-raw-path-123", &[]).await.unwrap(), 404, "unknown path");
    assert_eq!(sent, 9);

    let text = gw.admin_metrics().await;
    let req = "scopegate_requests_total";
    assert_metric(&text, req, &[("route", "/book"), ("method", "GET"), ("status", "200")], 3.0);
    assert_metric(&text, req, &[("route", "/book"), ("method", "GET"), ("status", "401")], 4.0);
    assert_eq!(metric_sum(&text, req, &[("status", "404")]), 2.0, "404s\n{text}");
    assert_eq!(metric_sum(&text, req, &[]), 9.0, "all requests\n{text}");

    let fail = "scopegate_auth_failures_total";
    assert_metric(&text, fail, &[("reason", "missing_token")], 2.0);
    assert_metric(&text, fail, &[("reason", "bad_signature")], 1.0);
    assert_metric(&text, fail, &[("reason", "insufficient_scope")], 1.0);
    assert_eq!(metric_sum(&text, fail, &[]), 4.0, "no other auth failures\n{text}");

    // The good token: one miss then two hits. The bad-signature and narrow tokens: one miss
    // each. Requests without a token never reach the cache.
    assert_metric(&text, "scopegate_token_cache_hits_total", &[], 2.0);
    assert_metric(&text, "scopegate_token_cache_misses_total", &[], 3.0);

    let ok = metric(&text, "scopegate_jwks_refreshes_total", &[("issuer", ISS), ("result", "ok")]);
    assert!(ok.is_some_and(|v| v >= 1.0), "jwks refreshes ok: {ok:?}\n{text}");
    assert_metric(&text, "scopegate_jwks_keys", &[("issuer", ISS)], 2.0);

    assert_eq!(metric_sum(&text, "scopegate_request_duration_seconds_count", &[]), 9.0, "histogram count\n{text}");
    assert_metric(&text, "scopegate_request_duration_seconds_count", &[("route", "/book")], 7.0);
    assert_metric(&text, "scopegate_upstream_duration_seconds_count", &[("upstream", "books")], 3.0);
    let inf = metric(&text, "scopegate_request_duration_seconds_bucket", &[("route", "/book"), ("le", "+Inf")]);
    assert_eq!(inf, Some(7.0), "+Inf bucket\n{text}");

    // Label values are templates, never raw paths; and no token content leaks either.
    assert!(!text.contains("secret-raw-path-123"), "raw path in /metrics:\n{text}");
    assert!(!text.contains("/nope"), "raw path in /metrics:\n{text}");
    for t in [&good, &bad_sig, &narrow] {
        assert!(!text.contains(t.as_str()), "token in /metrics");
    }
    assert_eq!(upstream.count(), 3, "only the authorized requests were forwarded");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_issued_tokens_and_config_reloads() {
    let toml = server_admin_toml("")
        + &builtin_issuer_toml("http://scopegate.test", "token_ttl = \"1h\"")
        + &resource_server_toml("API", &["book.get", "book.post"])
        + &client_toml("demo", "client_secret = \"demo-secret\"", &["API/book.get", "API/book.post"])
        + &route_toml(
            "/book",
            &["GET"],
            &[&scopes(&["API/book.get"]), &mock_response("application/json", r#"{"ok":true}"#)],
        );
    let gw = Gateway::start(&toml).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let mut token = String::new();
    for _ in 0..2 {
        let resp = send_to(
            gw.addr,
            "POST",
            "/oauth2/token",
            &form,
            "grant_type=client_credentials&client_id=demo&client_secret=demo-secret",
        )
        .await;
        assert_eq!(resp.status, 200, "token endpoint: {resp:?}");
        let v: Value = serde_json::from_str(&resp.body).expect("token answer is JSON");
        token = v["access_token"].as_str().expect("access_token").to_string();
    }
    let wrong = send_to(
        gw.addr,
        "POST",
        "/oauth2/token",
        &form,
        "grant_type=client_credentials&client_id=demo&client_secret=x",
    )
    .await;
    assert_eq!(wrong.status, 401, "wrong secret: {wrong:?}");
    let resp = try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&token))]).await.unwrap();
    assert_eq!(resp.status, 200, "built-in token on /book: {resp:?}");

    let text = gw.admin_metrics().await;
    assert_metric(&text, "scopegate_tokens_issued_total", &[("client_id", "demo")], 2.0);
    assert_eq!(metric_sum(&text, "scopegate_tokens_issued_total", &[]), 2.0, "a refused client mints nothing");
    assert!(!text.contains(&token), "token in /metrics");

    // A reload of the unchanged (valid) file is counted as ok.
    bounded(30, "reload", gw.server().reload()).await.expect("reload of a valid config");
    let text = gw.admin_metrics().await;
    assert_metric(&text, "scopegate_config_reloads_total", &[("result", "ok")], 1.0);

    // An invalid file is rejected and counted as an error; the old config keeps serving.
    std::fs::write(gw.path("gateway.toml"), format!("{toml}\nunknown_key = 1\n")).expect("write");
    let rejected = bounded(30, "reload", gw.server().reload()).await;
    assert!(rejected.is_err(), "an unknown key must be rejected");
    let text = gw.admin_metrics().await;
    let errors = metric(&text, "scopegate_config_reloads_total", &[("result", "error")]);
    assert!(errors.is_some_and(|v| v >= 1.0), "reload errors: {errors:?}\n{text}");
    let resp = try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&token))]).await.unwrap();
    assert_eq!(resp.status, 200, "old config still serves: {resp:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. /healthz and /readyz
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_keys_and_draining() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    jwks.set_raw(500, r#"{"error":"down"}"#);
    let upstream = Upstream::start("books").await;
    let toml = server_admin_toml("shutdown_grace = \"5s\"")
        + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "refresh = \"1s\"")
        + &upstream_toml("books", &upstream.url)
        + &jwt_route("/book")
        + &public_route("/slow");
    let gw = Gateway::start(&toml).await;

    let health = admin_get(gw.admin_addr(), "/healthz").await;
    assert_eq!(health.status, 200, "/healthz: {health:?}");
    let ready = admin_get(gw.admin_addr(), "/readyz").await;
    assert_eq!(ready.status, 503, "/readyz with no keys: {ready:?}");
    assert!(!gw.server().ready());
    let token = key.sign(&claims(ISS, "client-1", SCOPE));
    let resp = try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&token))]).await.unwrap();
    assert_eq!(resp.status, 503, "a token whose issuer has no keys yet: {resp:?}");

    // Keys arrive with the next refresh (backoff capped by refresh = 1s).
    jwks.set_keys(vec![key.jwk()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = admin_get(gw.admin_addr(), "/readyz").await;
        if ready.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 200 after keys appeared: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.server().ready());
    let health = admin_get(gw.admin_addr(), "/healthz").await;
    assert_eq!(health.status, 200, "/healthz: {health:?}");
    let resp = try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&token))]).await.unwrap();
    assert_eq!(resp.status, 200, "keys present: {resp:?}");

    // Draining: a slow request (the upstream sleeps 3 s) keeps the server in its grace period.
    let addr = gw.addr;
    let slow = tokio::spawn(async move { try_send(addr, "GET", "/slow", &[]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upstream.requests().iter().any(|r| r.target == "/slow") {
        assert!(Instant::now() < deadline, "the slow request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = gw.admin_addr();
    let mut gw = gw;
    let server = gw.take_server();
    let stopping = tokio::spawn(server.shutdown());
    // Let the drain begin (it lasts until the slow request ends, ~3 s), then ask /readyz.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut during_drain: Result<Resp, String> = Err("not asked".to_string());
    let deadline = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < deadline && !slow.is_finished() {
        during_drain = try_send(admin, "GET", "/readyz", &[]).await;
        if matches!(&during_drain, Ok(r) if r.status == 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked_while_draining = !slow.is_finished();
    let slow = bounded(15, "slow request", slow).await.expect("slow task");
    bounded(15, "shutdown", stopping).await.expect("shutdown task");
    let slow = slow.expect("the in-flight request completes during the drain");
    assert_eq!(slow.status, 200, "in-flight request during drain: {slow:?}");
    assert!(asked_while_draining, "the slow request ended before /readyz could be asked during the drain");
    match during_drain {
        Ok(r) => {
            assert_eq!(r.status, 503, "/readyz while draining: {r:?}");
            assert!(r.body.contains("draining"), "/readyz while draining: {r:?}");
        }
        Err(e) => panic!("/readyz while draining must answer 503; the admin listener gave: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// A config for the binary: `[server]` with the admin listener and `extra_server` lines, then `rest`.
fn proc_toml(extra_server: &str, rest: &str) -> String {
    server_admin_toml(extra_server) + rest
}

// ---------------------------------------------------------------------------------------------
// 3. SIGTERM / SIGINT
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero() {
    let upstream = Upstream::start("books").await;
    let toml = proc_toml(
        "shutdown_grace = \"10s\"",
        &format!("{}{}{}", upstream_toml("books", &upstream.url), public_route("/slow"), public_route("/fast")),
    );
    let mut p = Binary::start(&toml).await;
    let addr = p.addr;
    let fast = try_send(addr, "GET", "/fast", &[]).await.expect("fast request");
    assert_eq!(fast.status, 200, "{fast:?}");

    let slow = tokio::spawn(async move { try_send(addr, "GET", "/slow", &[]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upstream.requests().iter().any(|r| r.target == "/slow") {
        assert!(Instant::now() < deadline, "the slow request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    p.signal("TERM");

    // New connections are refused shortly after the signal, while the slow request drains.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused = false;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Err(_)) => {
                refused = true;
                break;
            }
            Ok(Ok(s)) => drop(s),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let slow = bounded(15, "slow request", slow).await.expect("slow task");
    let exited = p.wait_exit(Duration::from_secs(10 + 5)).await;
    let output = p.output();
    assert!(refused, "new connections still accepted 2 s after SIGTERM\n{output}");
    let slow = slow.unwrap_or_else(|e| panic!("in-flight request after SIGTERM: {e}\n{output}"));
    assert_eq!(slow.status, 200, "in-flight request after SIGTERM: {slow:?}");
    let status = exited.unwrap_or_else(|| panic!("no exit within shutdown_grace + 5 s\n{output}"));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM\n{output}");
    assert!(signalled.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let upstream = Upstream::start("books").await;
    let toml = proc_toml(
        "shutdown_grace = \"5s\"",
        &format!("{}{}", upstream_toml("books", &upstream.url), public_route("/fast")),
    );
    let mut p = Binary::start(&toml).await;
    let fast = try_send(p.addr, "GET", "/fast", &[]).await.expect("fast request");
    assert_eq!(fast.status, 200, "{fast:?}");
    let ready = try_send(p.admin(), "GET", "/readyz", &[]).await.expect("/readyz");
    assert_eq!(ready.status, 200, "no issuers: ready at once: {ready:?}");
    p.signal("INT");
    let status = p.wait_exit(Duration::from_secs(10)).await;
    let output = p.output();
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s of SIGINT\n{output}"));
    assert_eq!(status.code(), Some(0), "exit status after SIGINT\n{output}");
    assert!(TcpStream::connect(p.addr).await.is_err(), "listener gone after exit");
    // Log lines go through a writer thread: the request's access line and the last line
    // before exit are both on stdout once the process is gone.
    let lines: Vec<serde_json::Value> =
        p.stdout().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{output}"))).collect();
    let access = lines.iter().filter(|l| l["target"] == "scopegate::access").collect::<Vec<_>>();
    assert_eq!(access.len(), 1, "one access-log line\n{output}");
    assert_eq!((access[0]["path"].as_str(), access[0]["status"].as_u64()), (Some("/fast"), Some(200)), "{output}");
    assert_eq!(lines.last().map(|l| l["message"].clone()), Some("stopped".into()), "last line\n{output}");
}

// ---------------------------------------------------------------------------------------------
// 4. / 5. TLS
// ---------------------------------------------------------------------------------------------

fn peer_cert(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).expect("peer certificate")
}

/// An HTTP/1.1 connection over TLS.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    host: String,
}

impl H1 {
    async fn over(tls: TlsStream<TcpStream>, addr: SocketAddr) -> H1 {
        let (sender, conn) = bounded(10, "h1 handshake", hyper::client::conn::http1::handshake(TokioIo::new(tls)))
            .await
            .expect("h1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { sender, conn, host: format!("localhost:{}", addr.port()) }
    }

    async fn get(&mut self, path: &str, token: Option<&str>) -> Result<Resp, String> {
        let go = async {
            self.sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
            let mut b = Request::builder().uri(path).header("host", &self.host);
            if let Some(t) = token {
                b = b.header("authorization", bearer(t));
            }
            let resp = self.sender.send_request(b.body(Full::new(Bytes::new())).expect("request")).await;
            read_resp(resp.map_err(|e| format!("GET {path}: {e}"))?).await
        };
        tokio::time::timeout(HTTP_TIMEOUT, go).await.map_err(|_| format!("GET {path}: timed out"))?
    }
}

impl Drop for H1 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn tls_toml(jwks_url: &str, upstream: &Upstream) -> String {
    server_admin_toml("header_read_timeout = \"60s\"")
        + "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n"
        + &issuer_toml(ISS, &jwks_uri(jwks_url), &["RS256"], "")
        + &upstream_toml("books", &upstream.url)
        + &jwt_route("/book")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_via_alpn() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start("books").await;
    let (cert_pem, key_pem, cert_der) = self_signed("scopegate test A", 1);
    let gw = Gateway::start_with_files(
        &tls_toml(&jwks.url, &upstream),
        &[("cert.pem", cert_pem.as_str()), ("key.pem", key_pem.as_str())],
    )
    .await;
    let token = key.sign(&claims(ISS, "client-1", SCOPE));

    // HTTP/1.1 over TLS (ALPN http/1.1).
    let tls = tls_connect(gw.addr, &tls_client(&[&cert_der], &[b"http/1.1"])).await.expect("TLS to the gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN for an http/1.1 client");
    assert_eq!(peer_cert(&tls), cert_der.to_vec());
    let mut h1 = H1::over(tls, gw.addr).await;
    let ok = h1.get("/book", Some(&token)).await.expect("h1 authorized");
    assert_eq!(ok.status, 200, "h1 over TLS: {ok:?}");
    let seen = upstream.last().expect("upstream saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "h1 over TLS: {seen:?}");
    let denied = h1.get("/book", None).await.expect("h1 unauthorized");
    assert_eq!((denied.status, denied.body.as_str()), (401, UNAUTHORIZED), "h1 without token: {denied:?}");
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    drop(h1);

    // h2 over TLS, negotiated by ALPN.
    let tls = tls_connect(gw.addr, &tls_client(&[&cert_der], &[b"h2", b"http/1.1"])).await.expect("TLS to the gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN must pick h2");
    let (mut sender, conn) =
        bounded(10, "h2 handshake", hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let uri = format!("https://localhost:{}/book", gw.addr.port());
    let before = upstream.count();
    let req = Request::builder()
        .uri(&uri)
        .header("authorization", bearer(&token))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = bounded(10, "h2 request", sender.send_request(req)).await.expect("h2 response");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let ok = read_resp(resp).await.expect("h2 body");
    assert_eq!(ok.status, 200, "h2 over TLS: {ok:?}");
    assert_eq!(upstream.count(), before + 1);
    let seen = upstream.last().expect("upstream saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "h2 over TLS: {seen:?}");
    let req = Request::builder().uri(&uri).body(Full::new(Bytes::new())).expect("request");
    let resp = bounded(10, "h2 request", sender.send_request(req)).await.expect("h2 response");
    let denied = read_resp(resp).await.expect("h2 body");
    assert_eq!((denied.status, denied.body.as_str()), (401, UNAUTHORIZED), "h2 without token: {denied:?}");
    assert_eq!(denied.header("content-type"), Some("application/json"));
    conn.abort();

    // Plain HTTP on the TLS port gets nothing useful.
    let plain = try_send(gw.addr, "GET", "/book", &[("authorization", &bearer(&token))]).await;
    assert!(!matches!(&plain, Ok(r) if r.status == 200), "plaintext accepted on a TLS listener: {plain:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_rotation_is_picked_up_and_a_bad_cert_is_ignored() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start("books").await;
    let (a_pem, a_key, a_der) = self_signed("scopegate test A", 1);
    let (b_pem, b_key, b_der) = self_signed("scopegate test B", 2);
    assert_ne!(a_der, b_der);
    let gw = Gateway::start_with_files(
        &tls_toml(&jwks.url, &upstream),
        &[("cert.pem", a_pem.as_str()), ("key.pem", a_key.as_str())],
    )
    .await;
    let token = key.sign(&claims(ISS, "client-1", SCOPE));
    let client = tls_client(&[&a_der, &b_der], &[b"http/1.1"]);

    // A keep-alive connection opened before the rotation.
    let tls = tls_connect(gw.addr, &client).await.expect("TLS to the gateway");
    assert_eq!(peer_cert(&tls), a_der.to_vec(), "initial certificate");
    let mut old_conn = H1::over(tls, gw.addr).await;
    let r = old_conn.get("/book", Some(&token)).await.expect("first request");
    assert_eq!(r.status, 200, "{r:?}");

    // Rotate: key first, then cert (a watcher may see the half-written pair in between).
    std::fs::write(gw.path("key.pem"), &b_key).expect("write key");
    std::fs::write(gw.path("cert.pem"), &b_pem).expect("write cert");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last: String;
    loop {
        match tls_connect(gw.addr, &client).await {
            Ok(tls) if peer_cert(&tls) == b_der.to_vec() => {
                let mut conn = H1::over(tls, gw.addr).await;
                let r = conn.get("/book", Some(&token)).await.expect("request with the new cert");
                assert_eq!(r.status, 200, "{r:?}");
                break;
            }
            Ok(_) => last = "still the old certificate".to_string(),
            Err(e) => last = e,
        }
        assert!(Instant::now() < deadline, "the rotated certificate was never served: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection from before the rotation still works.
    let r = old_conn.get("/book", Some(&token)).await.expect("keep-alive connection after rotation");
    assert_eq!(r.status, 200, "{r:?}");

    // A broken certificate file is rejected; the current certificate stays.
    let metrics = gw.server().metrics();
    let errors_before = metrics.config_reloads.with_label_values(&["error"]).get();
    std::fs::write(gw.path("cert.pem"), "-----BEGIN CERTIFICATE-----\ngarbage!!\n-----END CERTIFICATE-----\n")
        .expect("write garbage cert");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.config_reloads.with_label_values(&["error"]).get() == errors_before {
        assert!(Instant::now() < deadline, "the broken certificate was never noticed (no reload error counted)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let tls = tls_connect(gw.addr, &client).await.expect("TLS after a broken cert file");
        assert_eq!(peer_cert(&tls), b_der.to_vec(), "the last good certificate stays after a broken file");
        let mut conn = H1::over(tls, gw.addr).await;
        let r = conn.get("/book", Some(&token)).await.expect("request after a broken cert file");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = old_conn.get("/book", Some(&token)).await.expect("keep-alive connection after a broken cert");
    assert_eq!(r.status, 200, "{r:?}");
    drop(old_conn);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Access log
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request_without_the_token() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start("books").await;
    let toml = proc_toml(
        "",
        &format!(
            "[log]\nformat = \"json\"\n\n{}{}{}",
            issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], ""),
            upstream_toml("books", &upstream.url),
            jwt_route("/book")
        ),
    );
    let mut p = Binary::start(&toml).await;
    let token = key.sign(&claims(ISS, "client-1", SCOPE));
    let ok = try_send(p.addr, "GET", "/book", &[("authorization", &bearer(&token)), ("x-request-id", "ops-req-ok")])
        .await
        .expect("authorized request");
    assert_eq!(ok.status, 200, "{ok:?}");
    let denied = try_send(p.addr, "GET", "/book", &[("x-request-id", "ops-req-denied")]).await.expect("request");
    assert_eq!(denied.status, 401, "{denied:?}");
    let odd = try_send(
        p.addr,
        "GET",
        "/x/..//book",
        &[("authorization", &bearer(&token)), ("x-request-id", "ops-req-normalized")],
    )
    .await
    .expect("request");
    assert_eq!(odd.status, 200, "{odd:?}");

    // Wait for the three access lines.
    let find = |out: &str, id: &str| -> Option<Value> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get("request_id").and_then(Value::as_str) == Some(id))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = p.stdout();
        if ["ops-req-ok", "ops-req-denied", "ops-req-normalized"].iter().all(|id| find(&out, id).is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "access lines missing:\n{}", p.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(25)).await;
    assert!(status.is_some(), "no exit after SIGTERM");
    let out = p.stdout();
    let all = p.output();

    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "a stdout line is not JSON: {line}");
    }
    assert!(!all.contains(&token), "the token appears in the output:\n{all}");
    // Neither should its signature alone.
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!all.contains(signature), "the token's signature appears in the output");

    let line = find(&out, "ops-req-ok").expect("access line");
    for field in ["request_id", "method", "path", "route", "status", "upstream", "client_id", "reason"] {
        assert!(line.get(field).is_some(), "access line lacks {field}: {line}");
    }
    let duration = line.as_object().and_then(|o| o.iter().find(|(k, _)| k.starts_with("duration")).map(|(_, v)| v));
    assert!(duration.is_some_and(Value::is_number), "access line lacks a numeric duration: {line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/book", "{line}");
    assert_eq!(line["route"], "/book", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream"], "books", "{line}");
    assert_eq!(line["client_id"], "client-1", "{line}");

    let line = find(&out, "ops-req-denied").expect("access line");
    assert_eq!(line["status"], 401, "{line}");
    assert_eq!(line["route"], "/book", "{line}");
    assert_eq!(line["reason"], "missing_token", "{line}");

    // The access log carries the normalized path.
    let line = find(&out, "ops-req-normalized").expect("access line");
    assert_eq!(line["route"], "/book", "{line}");
    assert_eq!(line["path"], "/book", "access log path must be the normalized path: {line}");
}
