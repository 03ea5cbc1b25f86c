//! Forwarding to real upstreams.

use crate::common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway.toml with the given extra `[server]` and `[auth]` keys, one issuer and `rest`.
fn config(jwks_url: &str, server_extra: &str, auth_extra: &str, rest: &str) -> String {
    server_toml(server_extra) + &auth_toml(auth_extra) + &issuer_toml(ISS, &jwks_uri(jwks_url), &["RS256"], "") + rest
}

/// A route to `upstream` needing `API/book.get`.
fn route(path: &str, methods: &[&str], upstream: &str) -> String {
    route_toml(path, methods, &[&scopes(&["API/book.get"]), &forward_to(upstream)])
}

fn public_route(path: &str, upstream: &str) -> String {
    route_toml(path, &["GET"], &[PUBLIC, &forward_to(upstream)])
}

/// Raw GET with `Connection: close` and the given extra header lines.
fn raw_get(path: &str, host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.into_bytes()
}

struct Env {
    key: TestKey,
    jwks: JwksServer,
    books: Upstream,
}

impl Env {
    async fn new(kid: &str) -> Env {
        let key = TestKey::generate(Algorithm::RS256, kid);
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let books = Upstream::start("books").await;
        Env { key, jwks, books }
    }
    fn token(&self) -> String {
        self.key.sign(&claims(ISS, "client-1", "API/book.get API/book.post"))
    }
    fn jwks_url(&self) -> &str {
        &self.jwks.url
    }
}

fn x_auth_headers(r: &Received) -> Vec<(String, String)> {
    r.headers.iter().filter(|(k, _)| k.starts_with("x-auth-")).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_and_override_headers_are_replaced() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k1").await;
        let rest = format!(
            "{}{}{}",
            upstream_toml("books", &env.books.url),
            route("/book", &["GET"], "books"),
            public_route("/public", "books"),
        );
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let auth = format!("Bearer {}", env.token());
        let spoofed: &[(&str, &str)] = &[
            ("x-auth-sub", "evil-sub"),
            ("X-Auth-Client-Id", "evil-client"),
            ("x-auth-scope", "API/admin"),
            ("x-auth-issuer", "https://evil.example"),
            ("x-auth-anything", "evil-anything"),
            ("X-AUTH-SUB", "evil-sub-2"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
        ];

        // JWT route: the gateway's identity headers, none of the client's values.
        let mut headers = spoofed.to_vec();
        headers.push(("authorization", &auth));
        let resp = send(&gw, "GET", "/book", &headers, "").await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().expect("upstream reached");
        assert_eq!(r.method, "GET");
        for name in ["x-http-method-override", "x-method-override", "x-http-method"] {
            assert!(r.header(name).is_none(), "{name} forwarded: {:?}", r.headers);
        }
        for (_, v) in &r.headers {
            assert!(
                !v.contains("evil") && v != "API/admin" && v != "DELETE",
                "client value {v:?} reached the upstream: {:?}",
                r.headers
            );
        }
        assert_eq!(r.header_all("x-auth-sub"), vec!["client-1"]);
        assert_eq!(r.header_all("x-auth-client-id"), vec!["client-1"]);
        assert_eq!(r.header_all("x-auth-scope"), vec!["API/book.get API/book.post"]);
        assert_eq!(r.header_all("x-auth-issuer"), vec![ISS]);
        let mut names: Vec<String> = x_auth_headers(&r).into_iter().map(|(k, _)| k).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["x-auth-client-id", "x-auth-issuer", "x-auth-scope", "x-auth-sub"],
            "unexpected x-auth-* set: {:?}",
            r.headers
        );
        // The default keeps the token for the upstream.
        assert_eq!(r.header("authorization"), Some(auth.as_str()));

        // Public route: no x-auth-* at all.
        let resp = send(&gw, "GET", "/public", spoofed, "").await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().unwrap();
        assert_eq!(r.target, "/public");
        assert!(x_auth_headers(&r).is_empty(), "x-auth-* on public route: {:?}", r.headers);
        for name in ["x-http-method-override", "x-method-override", "x-http-method"] {
            assert!(r.header(name).is_none(), "{name} forwarded: {:?}", r.headers);
        }
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_and_forwarded_headers_are_set() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k2").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let auth = format!("Bearer {}", env.token());
        let req = format!(
            "GET /book HTTP/1.1\r\n\
             Host: client.example:8443\r\n\
             Authorization: {auth}\r\n\
             Connection: keep-alive, foo\r\n\
             Foo: secret-foo\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Trailer: x-t\r\n\
             Upgrade: h2c\r\n\
             Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\n\
             X-Keep-Me: yes\r\n\
             X-Request-Id: client-req-42\r\n\
             \r\n"
        );
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().expect("upstream reached");
        for name in ["foo", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"] {
            assert!(r.header(name).is_none(), "hop-by-hop {name} forwarded: {:?}", r.headers);
        }
        for v in r.header_all("connection") {
            let v = v.to_ascii_lowercase();
            assert!(!v.contains("foo") && !v.contains("upgrade"), "connection {v:?} forwarded");
        }
        assert_eq!(r.header("x-keep-me"), Some("yes"), "end-to-end header lost: {:?}", r.headers);
        assert_eq!(r.header_all("x-request-id"), vec!["client-req-42"]);

        let xff = r.header_all("x-forwarded-for").join(",");
        assert!(xff.contains("127.0.0.1"), "x-forwarded-for {xff:?}");
        assert_eq!(r.header_all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(r.header_all("x-forwarded-host"), vec!["client.example:8443"]);
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_when_absent() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k3").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let auth = format!("Bearer {}", env.token());
        let mut ids = Vec::new();
        for _ in 0..2 {
            let resp = raw(gw.addr, &raw_get("/book", "x", &[("Authorization", &auth)])).await;
            assert_eq!(resp.status, 200, "body {:?}", resp.body);
            let r = env.books.last().unwrap();
            let all = r.header_all("x-request-id");
            assert_eq!(all.len(), 1, "x-request-id values {all:?}");
            assert!(!all[0].trim().is_empty(), "empty generated x-request-id");
            ids.push(all[0].to_string());
        }
        assert_ne!(ids[0], ids[1], "generated request ids repeat");

        // A client id is passed through unchanged (also via hyper's client).
        let resp = send(&gw, "GET", "/book", &[("authorization", &auth), ("x-request-id", "Abc-123_xyz")], "").await;
        assert_eq!(resp.status, 200);
        assert_eq!(env.books.last().unwrap().header_all("x-request-id"), vec!["Abc-123_xyz"]);
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_token_false_strips_authorization() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k4").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "forward_token = false", &rest)).await;
        let resp = get(&gw, "/book", Some(&env.token())).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().unwrap();
        assert!(r.header("authorization").is_none(), "token forwarded: {:?}", r.headers);
        // identity headers still default to on
        assert_eq!(r.header("x-auth-client-id"), Some("client-1"));
        // and a request without a token is still refused
        let resp = get(&gw, "/book", None).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_false_sets_none() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k5").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "identity_headers = false", &rest)).await;
        let auth = format!("Bearer {}", env.token());
        let resp = send(
            &gw,
            "GET",
            "/book",
            &[("authorization", &auth), ("x-auth-sub", "evil"), ("x-auth-scope", "evil")],
            "",
        )
        .await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().unwrap();
        assert!(x_auth_headers(&r).is_empty(), "x-auth-* forwarded: {:?}", r.headers);
        assert_eq!(r.header("authorization"), Some(auth.as_str()));
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_url_path_prefix_is_prepended() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k6").await;
        let rest = format!(
            "{}{}",
            upstream_toml("books", &format!("http://127.0.0.1:{}/api", env.books.addr.port())),
            route("/book", &["GET"], "books"),
        );
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let token = env.token();
        let resp = get(&gw, "/book", Some(&token)).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        assert_eq!(env.books.last().unwrap().target, "/api/book");
        let v: serde_json::Value = serde_json::from_str(&resp.body).expect("upstream JSON body");
        assert_eq!(v["target"], "/api/book");
        let resp = get(&gw, "/book?q=1&r=%20", Some(&token)).await;
        assert_eq!(resp.status, 200);
        assert_eq!(env.books.last().unwrap().target, "/api/book?q=1&r=%20");
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k7").await;
        let (_dead, dead_addr) = refused_addr();
        let rest = format!(
            "{}{}{}{}",
            upstream_toml("books", &env.books.url),
            upstream_toml("dead", &format!("http://{dead_addr}")),
            route("/book", &["GET"], "dead"),
            route("/slow", &["GET"], "books"),
        );
        let gw = Gateway::start(&config(env.jwks_url(), r#"request_timeout = "500ms""#, "", &rest)).await;
        let token = env.token();

        let resp = get(&gw, "/book", Some(&token)).await;
        assert_eq!(resp.status, 502, "body {:?}", resp.body);
        assert_eq!(resp.body, r#"{"message":"Bad Gateway"}"#);
        assert!(resp.header("content-type").unwrap_or("").starts_with("application/json"));

        let started = Instant::now();
        let resp = get(&gw, "/slow", Some(&token)).await;
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "body {:?}", resp.body);
        assert_eq!(resp.body, r#"{"message":"Gateway Timeout"}"#);
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
            "504 after {took:?} with request_timeout 500ms"
        );
        assert_eq!(env.books.requests().iter().filter(|r| r.target == "/slow").count(), 1);
        // unauthenticated requests never reach the (dead) upstream: still 401
        let resp = get(&gw, "/book", None).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_end_to_end() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k9").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;

        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake with the plain-TCP listener");
        let conn_task = tokio::spawn(conn);

        let req = hyper::Request::get(format!("http://{}/book?h2=1", gw.addr))
            .header("authorization", format!("Bearer {}", env.token()))
            .header("x-auth-sub", "evil-h2")
            .header("x-http-method-override", "DELETE")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("upstream JSON");
        assert_eq!(v["upstream"], "books");
        assert_eq!(v["target"], "/book?h2=1");
        let r = env.books.last().expect("upstream reached");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/book?h2=1"));
        assert_eq!(r.header_all("x-auth-sub"), vec!["client-1"]);
        assert!(r.header("x-http-method-override").is_none(), "{:?}", r.headers);

        // Same connection, no token: 401 with the exact body.
        let req = hyper::Request::get(format!("http://{}/book", gw.addr)).body(Empty::<Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], UNAUTHORIZED.as_bytes());
        assert_eq!(env.books.count(), 1);

        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_route_answers_after_auth() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k10").await;
        let rest =
            route_toml("/mock", &["GET"], &[&scopes(&["API/book.get"]), &response_line(201, "text/plain", "hi")]);
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;

        let resp = get(&gw, "/mock", Some(&env.token())).await;
        assert_eq!(resp.status, 201);
        assert_eq!(resp.body, "hi");
        assert!(
            resp.header("content-type").unwrap_or("").starts_with("text/plain"),
            "content-type {:?}",
            resp.header("content-type")
        );

        let resp = get(&gw, "/mock", None).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));

        let wrong = env.key.sign(&claims(ISS, "client-2", "API/user.get"));
        let resp = get(&gw, "/mock", Some(&wrong)).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));
        assert_eq!(resp.header("www-authenticate"), Some(r#"Bearer error="insufficient_scope""#));
        assert_eq!(env.books.count(), 0);
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through_on_authorized_route() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k11").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/ws", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let upgrade = |auth: Option<&str>| {
            let mut s = String::from(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            );
            if let Some(a) = auth {
                s.push_str(&format!("Authorization: Bearer {a}\r\n"));
            }
            s.push_str("\r\n");
            s.into_bytes()
        };

        // No token: 401, upstream untouched.
        let resp = raw(gw.addr, &upgrade(None)).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));
        assert_eq!(env.books.count(), 0);

        // A token without the route's scope: refused too, nothing tunnelled.
        let wrong = env.key.sign(&claims(ISS, "client-2", "API/user.get"));
        let resp = raw(gw.addr, &upgrade(Some(&wrong))).await;
        assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED));
        assert_eq!(env.books.count(), 0);

        // With a token: 101, then bytes flow both ways through the gateway.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&upgrade(Some(&env.token()))).await.unwrap();
        let (head, mut pending) = read_head(&mut s).await;
        let status_line = head.lines().next().unwrap_or("");
        assert!(status_line.starts_with("HTTP/1.1 101"), "head: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("upgrade: websocket"), "head: {head}");
        for msg in [&b"hello through the gateway"[..], &[0x81, 0x02, 0xff, 0x00][..]] {
            s.write_all(msg).await.unwrap();
            while pending.len() < msg.len() {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.expect("read echo");
                assert!(n > 0, "tunnel closed early");
                pending.extend_from_slice(&chunk[..n]);
            }
            let echoed: Vec<u8> = pending.drain(..msg.len()).collect();
            assert_eq!(echoed, msg);
        }
        drop(s);
        let r = env.books.last().expect("upstream saw the upgrade");
        assert_eq!(r.target, "/ws");
        assert_eq!(r.header("x-auth-client-id"), Some("client-1"));
        gw.stop().await;
    })
    .await;
}

/// Writes `req` and reads until close, tolerating a reset after the response.
async fn raw_tolerant(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_431() {
    bounded(30, "test", async {
        let env = Env::new("fwd-k12").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"),);
        let gw = Gateway::start(&config(env.jwks_url(), "max_header_bytes = 8192", "", &rest)).await;
        let auth = format!("Bearer {}", env.token());

        // A head well under the limit is served.
        let small = "a".repeat(3000);
        let resp = raw(gw.addr, &raw_get("/book", "x", &[("Authorization", &auth), ("X-Pad", &small)])).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);

        // A 10 KB header is refused with 431. The server may reset the connection after
        // answering, so retry a few times if the response itself got lost.
        let big = "a".repeat(10 * 1024);
        let req = raw_get("/book", "x", &[("Authorization", &auth), ("X-Big", &big)]);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let out = raw_tolerant(gw.addr, &req).await;
            let line = String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string();
            if !line.is_empty() {
                seen.push(line);
                break;
            }
        }
        assert_eq!(seen.len(), 1, "no response to an oversized head");
        assert!(seen[0].starts_with("HTTP/1.1 431"), "status line {:?}", seen[0]);
        assert_eq!(env.books.count(), 1, "oversized request was forwarded");
        gw.stop().await;
    })
    .await;
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum UpstreamConns {
    KeepAlive,
    /// Answers with `Connection: close`, then closes.
    CloseWithHeader,
    /// Answers as if keeping the connection, then closes it (an idle timeout, say).
    CloseSilently,
}

/// A raw-TCP upstream answering every request head with a 2-byte 200; counts its connections.
async fn counting_upstream(mode: UpstreamConns) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (listener, addr) = bind_local().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let resp: &[u8] = match mode {
                            UpstreamConns::CloseWithHeader => {
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                            }
                            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        };
                        if s.write_all(resp).await.is_err() || mode != UpstreamConns::KeepAlive {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    bounded(60, "test", async {
        let env = Env::new("fwd-conns").await;
        let token = env.token();
        for (mode, connections) in
            [(UpstreamConns::KeepAlive, 1), (UpstreamConns::CloseWithHeader, 20), (UpstreamConns::CloseSilently, 20)]
        {
            let (addr, accepted, task) = counting_upstream(mode).await;
            let rest =
                format!("{}{}", upstream_toml("raw", &format!("http://{addr}")), route("/book", &["GET"], "raw"));
            let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
            for i in 0..20 {
                let r = get(&gw, "/book", Some(&token)).await;
                assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{mode:?}, request {i}");
                if mode == UpstreamConns::CloseSilently {
                    // The close reaches the gateway while the connection idles in its pool.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            // Sequential requests need one connection, unless the upstream closes each one.
            assert_eq!(accepted.load(Ordering::SeqCst), connections, "{mode:?}");
            gw.stop().await;
            task.abort();
        }
    })
    .await;
}

/// A header name as a CGI/WSGI server reads it: `_` and `-` alike.
fn folded(name: &str) -> String {
    name.replace('_', "-").to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_stripped_and_gateway_set_headers_do_not_reach_the_upstream() {
    bounded(30, "test", async {
        let env = Env::new("fwd-us").await;
        let rest = format!(
            "{}{}{}",
            upstream_toml("books", &env.books.url),
            route("/book", &["GET"], "books"),
            public_route("/public", "books"),
        );
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let auth = format!("Bearer {}", env.token());
        // Each would reach a CGI/WSGI application as the variable of the dashed name
        // (`x_auth_sub` -> HTTP_X_AUTH_SUB), beside or instead of the gateway's value.
        let spoofed: &[(&str, &str)] = &[
            ("x_auth_sub", "admin"),
            ("X_Auth_Scope", "API/admin"),
            ("x_auth_client_id", "evil-client"),
            ("x-auth_issuer", "https://evil.example"),
            ("x_auth-anything", "evil-anything"),
            ("x_http_method_override", "DELETE"),
            ("x_method_override", "DELETE"),
            ("X_HTTP_METHOD", "DELETE"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_forwarded_proto", "evil-proto"),
            ("x_forwarded_host", "evil.example"),
            ("x_forwarded_port", "6666"),
            ("x_forwarded_prefix", "/evil"),
            ("x_real_ip", "6.6.6.7"),
            ("x_original_url", "/evil"),
            ("true_client_ip", "6.6.6.8"),
            ("x_request_id", "evil-id"),
            ("keep_alive", "evil-timeout"),
            ("proxy_authorization", "Basic ZXZpbDpldmls"),
            ("transfer_encoding", "evil-chunked"),
            ("x_custom_flag", "kept"),
        ];
        let mut headers = spoofed.to_vec();
        headers.push(("Authorization", &auth));
        let resp = raw(gw.addr, &raw_get("/book", "client.example", &headers)).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().expect("upstream reached");
        let underscored: Vec<_> = r.headers.iter().filter(|(k, _)| k.contains('_')).collect();
        // An underscore name the gateway neither strips nor sets is the application's business.
        assert_eq!(underscored, [&("x_custom_flag".to_string(), "kept".to_string())], "{:?}", r.headers);
        for (k, v) in &r.headers {
            assert!(
                !v.contains("evil") && !v.contains("6.6.6.") && v != "admin" && v != "API/admin" && v != "DELETE",
                "client value {k}: {v:?} reached the upstream: {:?}",
                r.headers
            );
        }
        // On an authorized route the identity headers are the gateway's, once each.
        assert_eq!(r.header_all("x-auth-sub"), vec!["client-1"]);
        assert_eq!(r.header_all("x-auth-client-id"), vec!["client-1"]);
        assert_eq!(r.header_all("x-auth-scope"), vec!["API/book.get API/book.post"]);
        assert_eq!(r.header_all("x-auth-issuer"), vec![ISS]);
        let mut identity: Vec<String> =
            r.headers.iter().map(|(k, _)| folded(k)).filter(|k| k.starts_with("x-auth-")).collect();
        identity.sort();
        assert_eq!(identity, ["x-auth-client-id", "x-auth-issuer", "x-auth-scope", "x-auth-sub"]);
        assert_eq!(r.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(r.header_all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(r.header_all("x-forwarded-host"), vec!["client.example"]);
        assert_eq!(r.header_all("x-request-id").len(), 1, "{:?}", r.headers);

        // A public route sets no identity: no spelling of x-auth-* reaches the upstream.
        let resp = raw(gw.addr, &raw_get("/public", "client.example", spoofed)).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().unwrap();
        assert_eq!(r.target, "/public");
        let identity: Vec<_> = r.headers.iter().filter(|(k, _)| folded(k).starts_with("x-auth-")).collect();
        assert!(identity.is_empty(), "identity headers on a public route: {:?}", r.headers);
        assert!(r.headers.iter().all(|(_, v)| !v.contains("evil") && v != "DELETE"), "{:?}", r.headers);
        gw.stop().await;
    })
    .await;
}

/// Forwarding headers the gateway does not set: a client's value never reaches the upstream.
const STRIPPED_FORWARDING: [&str; 21] = [
    "Forwarded",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Scheme",
    "X-Forwarded-Ssl",
    "X-Forwarded-Uri",
    "X-Forwarded-By",
    "X-Host",
    "X-Url-Scheme",
    "Front-End-Https",
    "X-Original-Host",
    "X-Original-URI",
    "X-Original-Forwarded-For",
    "X-Client-IP",
    "Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Cluster-Client-IP",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_are_stripped_or_overwritten() {
    bounded(30, "test", async {
        let env = Env::new("fwd-fh").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), public_route("/public", "books"));
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let mut headers: Vec<(&str, &str)> = STRIPPED_FORWARDING.iter().map(|n| (*n, "evil-origin")).collect();
        headers.extend([
            ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Port", "6666"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            // Appended to, like NGINX's $proxy_add_x_forwarded_for; every line counts.
            ("X-Forwarded-For", "198.51.100.7"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Keep-Me", "yes"),
        ]);
        let resp = raw(gw.addr, &raw_get("/public", "client.example:8443", &headers)).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().expect("upstream reached");
        for name in STRIPPED_FORWARDING {
            assert!(r.header(name).is_none(), "{name} forwarded: {:?}", r.headers);
        }
        for (k, v) in &r.headers {
            assert!(!v.contains("evil") && !v.contains("6.6.6.6"), "client value {k}: {v:?} forwarded");
        }
        assert_eq!(r.header_all("x-real-ip"), vec!["127.0.0.1"]);
        let port = gw.addr.port().to_string();
        assert_eq!(r.header_all("x-forwarded-port"), vec![port.as_str()]);
        assert_eq!(r.header_all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(r.header_all("x-forwarded-host"), vec!["client.example:8443"]);
        assert_eq!(r.header_all("x-forwarded-for"), vec!["198.51.100.7, 203.0.113.9, 127.0.0.1"]);
        assert_eq!(r.header("x-keep-me"), Some("yes"));

        // Without any client forwarding header, the same values are set.
        let resp = raw(gw.addr, &raw_get("/public", "client.example", &[])).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().unwrap();
        assert_eq!(r.header_all("x-real-ip"), vec!["127.0.0.1"]);
        assert_eq!(r.header_all("x-forwarded-port"), vec![port.as_str()]);
        assert_eq!(r.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
        assert!(r.header("forwarded").is_none(), "{:?}", r.headers);
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_line_of_a_request_counts() {
    bounded(30, "test", async {
        let env = Env::new("fwd-cr").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), public_route("/public", "books"));
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        let mut req = b"GET /public HTTP/1.1\r\n\
            Host: client.example\r\n\
            Connection: keep-alive\r\n\
            Connection: x-hop\r\n\
            Connection: close, X-Hop-Two\r\n\
            Connection: x-hop-three, "
            .to_vec();
        // A line that is not valid UTF-8 still names what it can.
        req.extend_from_slice(b"\xe9t\xe9\r\n");
        req.extend_from_slice(
            b"X-Hop: secret-1\r\n\
              X-Hop-Two: secret-2\r\n\
              X-Hop-Three: secret-3\r\n\
              X-Keep-Me: yes\r\n\r\n",
        );
        let resp = raw(gw.addr, &req).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        let r = env.books.last().expect("upstream reached");
        for name in ["x-hop", "x-hop-two", "x-hop-three"] {
            assert!(r.header(name).is_none(), "{name}, named in a later Connection line, forwarded: {:?}", r.headers);
        }
        assert!(r.headers.iter().all(|(_, v)| !v.contains("secret")), "{:?}", r.headers);
        assert_eq!(r.header("x-keep-me"), Some("yes"), "{:?}", r.headers);
        gw.stop().await;
    })
    .await;
}

/// A raw-TCP upstream that answers every request head with `resp`, on a kept-alive connection.
async fn scripted_upstream(resp: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = bind_local().await;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_line_of_a_response_counts() {
    bounded(30, "test", async {
        let env = Env::new("fwd-cs").await;
        let (addr, task) = scripted_upstream(
            b"HTTP/1.1 200 OK\r\n\
              Connection: keep-alive\r\n\
              Connection: x-hop\r\n\
              Connection: x-hop-two\r\n\
              X-Hop: secret-1\r\n\
              X-Hop-Two: secret-2\r\n\
              X-Keep-Me: yes\r\n\
              Content-Length: 2\r\n\r\nok",
        )
        .await;
        let rest = format!("{}{}", upstream_toml("raw", &format!("http://{addr}")), public_route("/public", "raw"));
        let gw = Gateway::start(&config(env.jwks_url(), "", "", &rest)).await;
        for _ in 0..2 {
            let resp = raw(gw.addr, &raw_get("/public", "client.example", &[])).await;
            assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
            for name in ["x-hop", "x-hop-two"] {
                assert!(resp.header(name).is_none(), "{name} forwarded to the client: {:?}", resp.headers);
            }
            assert_eq!(resp.header("x-keep-me"), Some("yes"), "{:?}", resp.headers);
        }
        gw.stop().await;
        task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_header_named_like_a_stripped_family_follows_forward_token() {
    bounded(30, "test", async {
        let env = Env::new("fwd-th").await;
        let rest = format!("{}{}", upstream_toml("books", &env.books.url), route("/book", &["GET"], "books"));
        let auth = format!("Bearer {}", env.token());
        let headers = [("X-Auth-Token", auth.as_str()), ("x_auth_token", "evil-token")];
        for (forward, want) in [("true", Some(auth.as_str())), ("false", None)] {
            let auth_extra = format!("header = \"x-auth-token\"\nforward_token = {forward}");
            let gw = Gateway::start(&config(env.jwks_url(), "", &auth_extra, &rest)).await;
            let resp = raw(gw.addr, &raw_get("/book", "x", &headers)).await;
            assert_eq!(resp.status, 200, "body {:?}", resp.body);
            let r = env.books.last().expect("upstream reached");
            assert_eq!(r.header("x-auth-token"), want, "forward_token = {forward}: {:?}", r.headers);
            assert_eq!(r.header_all("x-auth-token").len(), usize::from(want.is_some()));
            assert!(r.header("x_auth_token").is_none(), "{:?}", r.headers);
            assert_eq!(r.header_all("x-auth-sub"), vec!["client-1"]);
            gw.stop().await;
        }
    })
    .await;
}
