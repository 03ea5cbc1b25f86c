//! Route table and path normalization (docs/behaviour.md, "Paths and route choice").

use crate::common::*;

use std::time::Duration;

/// Raw HTTP/1.1 request with `target` written verbatim in the request line.
fn raw_request(target: &str, token: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// A mock route answering `body` as text/plain, public.
fn mock_route(path: &str, methods: &[&str], body: &str) -> String {
    route_toml(path, methods, &[PUBLIC, &mock_response("text/plain", body)])
}

/// Finds `NAME:LINE:COL` in an error text and returns (LINE, COL).
fn position_after(text: &str, name: &str) -> Option<(usize, usize)> {
    let mut rest = text;
    while let Some(i) = rest.find(name) {
        let after = &rest[i + name.len()..];
        if let Some(after) = after.strip_prefix(':') {
            let line: String = after.chars().take_while(char::is_ascii_digit).collect();
            let after_line = &after[line.len()..];
            if !line.is_empty() {
                if let Some(after_colon) = after_line.strip_prefix(':') {
                    let col: String = after_colon.chars().take_while(char::is_ascii_digit).collect();
                    if !col.is_empty() {
                        return Some((line.parse().ok()?, col.parse().ok()?));
                    }
                }
            }
        }
        rest = &rest[i + name.len()..];
    }
    None
}

/// 1-based line numbers of every `[[routes]]` header in `toml`, plus the line count.
fn route_blocks(toml: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = toml.lines().collect();
    let starts: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| l.trim() == "[[routes]]").map(|(i, _)| i + 1).collect();
    let mut blocks = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(lines.len(), |next| next - 1);
        blocks.push((s, end));
    }
    blocks
}

struct BookUser {
    key: TestKey,
    _jwks: JwksServer,
    books: Upstream,
    users: Upstream,
    gw: Gateway,
}

async fn book_user_gateway() -> BookUser {
    let key = TestKey::generate(Algorithm::RS256, "paths-k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let books = Upstream::start("books").await;
    let users = Upstream::start("users").await;
    let toml = base_toml(ISS, &jwks.url, &["RS256"])
        + &upstream_toml("books", &books.url)
        + &upstream_toml("users", &users.url)
        + &route_toml("/book", &["GET"], &[&scopes(&["API/book.get"]), &forward_to("books")])
        + &route_toml("/user", &["GET"], &[&scopes(&["API/user.get"]), &forward_to("users")]);
    let gw = Gateway::start(&toml).await;
    BookUser { key, _jwks: jwks, books, users, gw }
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 200 from the route's upstream (books, files), which received exactly this request-target.
    Forwarded(&'static str),
    /// 400 {"message":"Bad Request"}
    BadRequest,
    /// 404 {"message":"Not Found"}
    NotFound,
    /// 401 because the path normalized to /user and the token lacks API/user.get.
    UserScope,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_confusion_table_never_reaches_unauthorized_route() {
    bounded(60, "test", async {
        let env = book_user_gateway().await;
        let token = env.key.sign(&claims(ISS, "book-client", "API/book.get"));

        use Expect::*;
        let rows: &[(&str, Expect)] = &[
            // baseline
            ("/book", Forwarded("/book")),
            // dot segments, plain and percent-encoded (unreserved '.' is decoded first)
            ("/book/../user", UserScope),
            ("/book/%2e%2e/user", UserScope),
            ("/book/%2E%2E/user", UserScope),
            ("/book/.%2e/user", UserScope),
            ("/book/%2e./user", UserScope),
            ("/user/../book", Forwarded("/book")),
            ("/user/%2e%2e/book", Forwarded("/book")),
            ("/./book", Forwarded("/book")),
            ("/%2e/book", Forwarded("/book")),
            // these normalize to "/book/", which the table matches as "/book" (one trailing slash
            // is ignored, as lenient upstreams do); the upstream gets the normalized path
            ("/book/.", Forwarded("/book/")),
            ("/book/./", Forwarded("/book/")),
            ("/book/x/..", Forwarded("/book/")),
            ("/book/%2e", Forwarded("/book/")),
            ("/book/..", NotFound),
            // decoded unreserved characters
            ("/%62ook", Forwarded("/book")),
            ("/bo%6Fk", Forwarded("/book")),
            ("/%62%6F%6f%6b", Forwarded("/book")),
            ("/%75ser", UserScope),
            // encoded slash / backslash, raw backslash
            ("/book%2F..%2Fuser", BadRequest),
            ("/book%2f..%2fuser", BadRequest),
            ("/book%2fx", BadRequest),
            ("/book%2F", BadRequest),
            ("/%2Fuser", BadRequest),
            ("/book%5C..%5Cuser", BadRequest),
            ("/book%5c..%5cuser", BadRequest),
            ("/book\\..\\user", BadRequest),
            ("/book\\", BadRequest),
            // repeated slashes are merged
            ("//book", Forwarded("/book")),
            ("///book", Forwarded("/book")),
            ("/book//", Forwarded("/book/")),
            ("//user", UserScope),
            // NUL
            ("/%00", BadRequest),
            ("/book%00", BadRequest),
            ("/book/%00/..", BadRequest),
            // climbing above the root
            ("/..", BadRequest),
            ("/../book", BadRequest),
            ("/../user", BadRequest),
            ("/%2e%2e/book", BadRequest),
            ("/%2E%2E/book", BadRequest),
            ("/book/../../user", BadRequest),
            ("/x/../../book", BadRequest),
            // absolute-form request targets
            ("http://x/book/../user", UserScope),
            ("http://x/user", UserScope),
            ("http://x/book", Forwarded("/book")),
            ("http://x/%62ook", Forwarded("/book")),
            // the query is not part of the path and is passed untouched
            ("/book?x=/../user", Forwarded("/book?x=/../user")),
            ("/book?x=%2e%2e", Forwarded("/book?x=%2e%2e")),
            ("/%62ook?q=%62", Forwarded("/book?q=%62")),
            // path parameters are refused; literals match whatever their ASCII case; one
            // trailing slash is ignored; reserved characters stay encoded
            ("/user;/book", BadRequest),
            ("/book;/user", BadRequest),
            ("/book;", BadRequest),
            ("/book%3B", BadRequest),
            ("/USER", UserScope),
            ("/User/", UserScope),
            ("/Book", Forwarded("/Book")),
            ("/BOOK/", Forwarded("/BOOK/")),
            ("/book/", Forwarded("/book/")),
            ("/book%20", NotFound),
            ("/book%3F", NotFound),
            ("/book%252e%252e/user", NotFound),
            ("/%2e%2e%2fuser", BadRequest),
            ("/book/..;/user", BadRequest),
            ("/book/x/..;/../user", BadRequest),
            ("/", NotFound),
        ];

        let mut failures = Vec::new();
        for &(target, expect) in rows {
            let before_books = env.books.count();
            let resp = raw(env.gw.addr, &raw_request(target, &token)).await;
            let after_books = env.books.count();
            let mut problems = Vec::new();
            match expect {
                Forwarded(upstream_target) => {
                    if resp.status != 200 {
                        problems.push(format!("status {} (body {:?}), want 200", resp.status, resp.body));
                    } else {
                        match serde_json::from_str::<serde_json::Value>(&resp.body) {
                            Ok(v) => {
                                if v["upstream"] != "books" || v["target"] != upstream_target {
                                    problems.push(format!("body {v}, want books with target {upstream_target:?}"));
                                }
                            }
                            Err(e) => problems.push(format!("body {:?} is not JSON: {e}", resp.body)),
                        }
                    }
                    if after_books != before_books + 1 {
                        problems.push(format!("books got {} requests, want 1", after_books - before_books));
                    } else {
                        let got = env.books.last().expect("books request recorded").target;
                        if got != upstream_target {
                            problems.push(format!("books received target {got:?}, want {upstream_target:?}"));
                        }
                    }
                }
                BadRequest | NotFound | UserScope => {
                    let (status, body) = match expect {
                        BadRequest => (400, BAD_REQUEST),
                        NotFound => (404, NOT_FOUND),
                        _ => (401, UNAUTHORIZED),
                    };
                    if resp.status != status || resp.body != body {
                        problems.push(format!("got {} {:?}, want {status} {body}", resp.status, resp.body));
                    }
                    if matches!(expect, UserScope)
                        && resp.header("www-authenticate") != Some(r#"Bearer error="insufficient_scope""#)
                    {
                        problems.push(format!(
                            "www-authenticate {:?}, want insufficient_scope (route /user must have matched)",
                            resp.header("www-authenticate")
                        ));
                    }
                    if resp.status != 200 && after_books != before_books {
                        problems.push("books upstream was called".to_string());
                    }
                }
            }
            if env.users.count() != 0 {
                problems.push(format!("users upstream reached ({} requests so far)", env.users.count()));
            }
            if !problems.is_empty() {
                failures.push(format!("{target:?} [{expect:?}]: {}", problems.join("; ")));
            }
        }

        assert_eq!(
            env.users.count(),
            0,
            "a book-only token reached the users upstream: {:?}",
            env.users.requests().iter().map(|r| r.target.clone()).collect::<Vec<_>>()
        );
        assert!(failures.is_empty(), "path table failures:\n{}", failures.join("\n"));

        // Sanity: the users route is reachable with the right scope, so the zero count above
        // is meaningful.
        let user_token = env.key.sign(&claims(ISS, "user-client", "API/user.get"));
        let resp = raw(env.gw.addr, &raw_request("/user", &user_token)).await;
        assert_eq!(resp.status, 200, "body {:?}", resp.body);
        assert_eq!(env.users.count(), 1);
        assert_eq!(env.users.last().unwrap().target, "/user");

        env.gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_and_known_path_wrong_method_is_405() {
    bounded(60, "test", async {
        let env = book_user_gateway().await;
        let token = env.key.sign(&claims(ISS, "c", "API/book.get API/user.get"));

        // Unknown path, with and without a token: 404, no auth needed to learn that.
        for tok in [None, Some(token.as_str())] {
            let resp = get(&env.gw, "/nope", tok).await;
            assert_eq!(resp.status, 404);
            assert_eq!(resp.body, NOT_FOUND);
            assert!(
                resp.header("content-type").unwrap_or("").starts_with("application/json"),
                "content-type {:?}",
                resp.header("content-type")
            );
        }
        let resp = get(&env.gw, "/books", Some(&token)).await;
        assert_eq!((resp.status, resp.body.as_str()), (404, NOT_FOUND));
        let resp = get(&env.gw, "/book/1", Some(&token)).await;
        assert_eq!((resp.status, resp.body.as_str()), (404, NOT_FOUND));

        // Known path, method not routed: 405 with allow, before authentication.
        for (method, tok) in [("POST", None), ("DELETE", Some(token.as_str())), ("PUT", None)] {
            let auth = tok.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
            let resp = send(&env.gw, method, "/book", &headers, "").await;
            assert_eq!(resp.status, 405, "{method} /book: body {:?}", resp.body);
            assert_eq!(resp.body, METHOD_NOT_ALLOWED);
            let allow = resp.header("allow").expect("405 without allow header");
            let methods: Vec<String> = allow.split(',').map(|m| m.trim().to_ascii_uppercase()).collect();
            assert!(methods.iter().any(|m| m == "GET"), "allow {allow:?}");
            assert!(!methods.iter().any(|m| m == method), "allow {allow:?} lists {method}");
        }
        assert_eq!(env.books.count(), 0);
        assert_eq!(env.users.count(), 0);
        env.gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_header_lists_all_methods_of_the_path() {
    bounded(60, "test", async {
        let key = TestKey::generate(Algorithm::RS256, "paths-k2");
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let mut toml = base_toml(ISS, &jwks.url, &["RS256"]);
        toml.push_str(&mock_route("/multi", &["GET", "POST"], "multi"));
        toml.push_str(&mock_route("/split", &["GET"], "split-get"));
        toml.push_str(&mock_route("/split", &["PUT"], "split-put"));
        let gw = Gateway::start(&toml).await;

        for (path, want) in [("/multi", vec!["GET", "POST"]), ("/split", vec!["GET", "PUT"])] {
            let resp = send(&gw, "DELETE", path, &[], "").await;
            assert_eq!(resp.status, 405, "DELETE {path}: {:?}", resp.body);
            assert_eq!(resp.body, METHOD_NOT_ALLOWED);
            let allow = resp.header("allow").expect("allow header");
            let got: Vec<String> = allow.split(',').map(|m| m.trim().to_ascii_uppercase()).collect();
            for m in &want {
                assert!(got.iter().any(|g| g == m), "{path}: allow {allow:?} lacks {m}");
            }
            assert!(!got.iter().any(|g| g == "DELETE"), "{path}: allow {allow:?}");
        }
        let resp = send(&gw, "POST", "/multi", &[], "").await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "multi"));
        let resp = send(&gw, "PUT", "/split", &[], "").await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "split-put"));
        let resp = send(&gw, "GET", "/split", &[], "").await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "split-get"));
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_beats_param_beats_proxy_and_explicit_method_beats_any() {
    bounded(60, "test", async {
        let key = TestKey::generate(Algorithm::RS256, "paths-k3");
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let mut toml = base_toml(ISS, &jwks.url, &["RS256"]);
        // Declared least specific first, so file order cannot be what decides.
        toml.push_str(&mock_route("/a/{rest+}", &["GET"], "proxy"));
        toml.push_str(&mock_route("/a/{x}", &["GET"], "param"));
        toml.push_str(&mock_route("/a/b", &["GET"], "literal"));
        toml.push_str(&mock_route("/a/d", &["POST"], "literal-post"));
        toml.push_str(&mock_route("/p/{rest+}", &["ANY"], "p-proxy"));
        toml.push_str(&mock_route("/m", &["ANY"], "m-any"));
        toml.push_str(&mock_route("/m", &["GET"], "m-get"));
        toml.push_str(&mock_route("/n/{id}", &["ANY"], "n-any"));
        toml.push_str(&mock_route("/n/{id}", &["POST"], "n-post"));
        toml.push_str(&mock_route("/", &["GET"], "root"));
        let gw = Gateway::start(&toml).await;

        let cases: &[(&str, &str, u16, &str)] = &[
            ("GET", "/a/b", 200, "literal"),
            ("GET", "/a/c", 200, "param"),
            ("GET", "/a/%62", 200, "literal"),
            ("GET", "/a/b/c", 200, "proxy"),
            ("GET", "/a/x/y/z", 200, "proxy"),
            // the path picks the template; a method it does not take is 405, never a broader one
            ("POST", "/a/d", 200, "literal-post"),
            ("GET", "/a/d", 405, METHOD_NOT_ALLOWED),
            ("PUT", "/a/b", 405, METHOD_NOT_ALLOWED),
            ("PUT", "/A/B/", 405, METHOD_NOT_ALLOWED),
            ("GET", "/A/B", 200, "literal"),
            ("GET", "/a", 404, NOT_FOUND),
            // {proxy+} matches one or more segments, never zero
            ("GET", "/p", 404, NOT_FOUND),
            ("GET", "/p/x", 200, "p-proxy"),
            ("DELETE", "/p/x/y/z", 200, "p-proxy"),
            // explicit method beats ANY
            ("GET", "/m", 200, "m-get"),
            ("POST", "/m", 200, "m-any"),
            ("DELETE", "/m", 200, "m-any"),
            ("POST", "/n/7", 200, "n-post"),
            ("GET", "/n/7", 200, "n-any"),
            ("PATCH", "/n/7", 200, "n-any"),
            // "/" matches only "/"
            ("GET", "/", 200, "root"),
            ("GET", "/zzz", 404, NOT_FOUND),
        ];
        let mut failures = Vec::new();
        for &(method, path, status, body) in cases {
            let resp = send(&gw, method, path, &[], "").await;
            if resp.status != status || resp.body != body {
                failures.push(format!("{method} {path}: got {} {:?}, want {status} {body:?}", resp.status, resp.body));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_routes_with_equal_specificity_are_rejected_at_load() {
    bounded(60, "test", async {
        let key = TestKey::generate(Algorithm::RS256, "paths-k4");
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let base = base_toml(ISS, &jwks.url, &["RS256"]);

        /// (path, methods) of one route.
        type Route<'a> = (&'a str, &'a [&'a str]);
        let conflicts: &[(&str, [Route; 2])] = &[
            ("same shape, same method", [("/a/{x}", &["GET"]), ("/a/{y}", &["GET"])]),
            ("two ANY", [("/z", &["ANY"]), ("/z", &["ANY"])]),
            ("same literal, same method", [("/lit", &["GET"]), ("/lit", &["GET", "POST"])]),
            ("overlapping method sets", [("/q/{x}", &["GET", "POST"]), ("/q/{y}", &["POST"])]),
            ("two proxies", [("/r/{a+}", &["ANY"]), ("/r/{b+}", &["ANY"])]),
        ];
        for (what, routes) in conflicts {
            let mut toml = base.clone();
            toml.push_str(&mock_route("/unrelated", &["GET"], "u"));
            for (path, methods) in routes {
                toml.push_str(&mock_route(path, methods, "c"));
            }
            let err = match Gateway::try_start(&toml).await {
                Ok(gw) => {
                    gw.stop().await;
                    panic!("{what}: overlapping routes were accepted:\n{toml}");
                }
                Err(e) => e,
            };
            let (line, col) = position_after(&err, "gateway.toml")
                .unwrap_or_else(|| panic!("{what}: error has no gateway.toml:LINE:COL: {err}"));
            assert!(col >= 1, "{what}: column {col} in {err}");
            // The position must point into one of the two conflicting route blocks
            // (the last two [[routes]] tables of the file).
            let blocks = route_blocks(&toml);
            let conflicting = &blocks[blocks.len() - 2..];
            assert!(
                conflicting.iter().any(|&(s, e)| (s..=e).contains(&line)),
                "{what}: line {line} is outside the conflicting routes {conflicting:?}: {err}\n{toml}"
            );
        }

        // Same shape with disjoint methods is fine, and each method reaches its route.
        let mut toml = base.clone();
        toml.push_str(&mock_route("/a/{x}", &["GET"], "get-x"));
        toml.push_str(&mock_route("/a/{y}", &["POST"], "post-y"));
        toml.push_str(&mock_route("/a/{z}", &["ANY"], "any-z"));
        let gw = match Gateway::try_start(&toml).await {
            Ok(gw) => gw,
            Err(e) => panic!("disjoint methods rejected: {e}\n{toml}"),
        };
        for (method, body) in [("GET", "get-x"), ("POST", "post-y"), ("PUT", "any-z")] {
            let resp = send(&gw, method, "/a/1", &[], "").await;
            assert_eq!((resp.status, resp.body.as_str()), (200, body), "{method} /a/1");
        }
        gw.stop().await;
    })
    .await;
}

/// Sends GET `path` over one HTTP/2 prior-knowledge connection; returns (status, body, www-authenticate).
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String, Option<String>) {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap_or_else(|e| panic!("cannot build h2 request for {path:?}: {e}"));
    let resp = sender.send_request(req).await.unwrap_or_else(|e| panic!("h2 GET {path}: {e}"));
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = resp.into_body().collect().await.expect("h2 body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), www)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalization_applies_to_http2_too() {
    bounded(60, "test", async {
        let env = book_user_gateway().await;
        let token = env.key.sign(&claims(ISS, "book-client", "API/book.get"));
        let tcp = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        let conn_task = tokio::spawn(conn);

        use Expect::*;
        let rows: &[(&str, Expect)] = &[
            ("/book", Forwarded("/book")),
            ("/book/../user", UserScope),
            ("/book/%2e%2e/user", UserScope),
            ("/%62ook", Forwarded("/book")),
            ("//book", Forwarded("/book")),
            ("/book%2Fx", BadRequest),
            ("/book%5C..%5Cuser", BadRequest),
            ("/book%00", BadRequest),
            ("/../book", BadRequest),
            ("/book/", Forwarded("/book/")),
            ("/BOOK", Forwarded("/BOOK")),
            ("/USER", UserScope),
            ("/book;/user", BadRequest),
            ("/book?x=/../user", Forwarded("/book?x=/../user")),
        ];
        let mut failures = Vec::new();
        for &(path, expect) in rows {
            let before = env.books.count();
            let (status, body, www) = h2_get(&mut sender, env.gw.addr, path, &token).await;
            let forwarded = env.books.count() - before;
            let ok = match expect {
                Forwarded(t) => status == 200 && forwarded == 1 && env.books.last().is_some_and(|r| r.target == t),
                BadRequest => status == 400 && body == BAD_REQUEST && forwarded == 0,
                NotFound => status == 404 && body == NOT_FOUND && forwarded == 0,
                UserScope => {
                    status == 401
                        && body == UNAUTHORIZED
                        && www.as_deref() == Some(r#"Bearer error="insufficient_scope""#)
                }
            };
            if !ok {
                failures.push(format!(
                    "h2 {path:?} [{expect:?}]: got {status} {body:?} (books last target {:?})",
                    env.books.last().map(|r| r.target)
                ));
            }
        }
        assert_eq!(env.users.count(), 0, "book-only token reached users over h2");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
        env.gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_route_forwards_exactly_the_normalized_path() {
    bounded(60, "test", async {
        let key = TestKey::generate(Algorithm::RS256, "paths-k5");
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let files = Upstream::start("files").await;
        let admin = Upstream::start("admin").await;
        let toml = base_toml(ISS, &jwks.url, &["RS256"])
            + &upstream_toml("files", &files.url)
            + &upstream_toml("admin", &admin.url)
            + &route_toml("/files/{path+}", &[], &[&scopes(&["API/files"]), &forward_to("files")])
            + &route_toml("/files/admin/{rest+}", &[], &[&scopes(&["API/admin"]), &forward_to("admin")]);
        let gw = Gateway::start(&toml).await;
        let token = key.sign(&claims(ISS, "files-client", "API/files"));

        use Expect::*;
        let rows: &[(&str, Expect)] = &[
            ("/files/a/b/c", Forwarded("/files/a/b/c")),
            ("/files/%7Euser/x", Forwarded("/files/~user/x")),
            ("/files/a%20b", Forwarded("/files/a%20b")),
            ("/files/a/./b/../c", Forwarded("/files/a/c")),
            ("/files//a///b", Forwarded("/files/a/b")),
            ("/files/x/../a?q=../admin", Forwarded("/files/a?q=../admin")),
            ("/files/a%2fb", BadRequest),
            ("/files/%2e%2e/%2e%2e/x", BadRequest),
            // reaching the more specific admin route needs its scope, however it is spelled
            ("/files/admin/x", UserScope),
            ("/files/x/../admin/x", UserScope),
            ("/files/%61dmin/x", UserScope),
            ("/files//admin/x", UserScope),
            ("/files/./admin/x", UserScope),
            ("/files/admin/../../files/admin/y", UserScope),
        ];
        let mut failures = Vec::new();
        for &(target, expect) in rows {
            let before = files.count();
            let resp = raw(gw.addr, &raw_request(target, &token)).await;
            let forwarded = files.count() - before;
            let ok = match expect {
                Forwarded(t) => resp.status == 200 && forwarded == 1 && files.last().is_some_and(|r| r.target == t),
                BadRequest => resp.status == 400 && resp.body == BAD_REQUEST && forwarded == 0,
                NotFound => resp.status == 404 && resp.body == NOT_FOUND && forwarded == 0,
                UserScope => {
                    resp.status == 401
                        && resp.body == UNAUTHORIZED
                        && resp.header("www-authenticate") == Some(r#"Bearer error="insufficient_scope""#)
                        && forwarded == 0
                }
            };
            if !ok {
                failures.push(format!(
                    "{target:?} [{expect:?}]: got {} {:?}; files got {forwarded} request(s), last target {:?}",
                    resp.status,
                    resp.body,
                    files.last().map(|r| r.target)
                ));
            }
        }
        assert_eq!(admin.count(), 0, "files-only token reached the admin upstream");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        gw.stop().await;
    })
    .await;
}

/// A protected `GET /admin` (scope `API/admin`) beside a public `ANY /{proxy+}`, both on one
/// real upstream.
struct AdminBehindProxy {
    key: TestKey,
    _jwks: JwksServer,
    app: Upstream,
    gw: Gateway,
}

async fn admin_behind_public_proxy() -> AdminBehindProxy {
    let key = TestKey::generate(Algorithm::RS256, "paths-admin");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let app = Upstream::start("app").await;
    let toml = base_toml(ISS, &jwks.url, &["RS256"])
        + &upstream_toml("app", &app.url)
        + &route_toml("/admin", &["GET"], &[&scopes(&["API/admin"]), &forward_to("app")])
        + &route_toml("/{proxy+}", &["ANY"], &[PUBLIC, &forward_to("app")]);
    let gw = Gateway::start(&toml).await;
    AdminBehindProxy { key, _jwks: jwks, app, gw }
}

/// Raw request with `method` and `target` written verbatim; `extra` are whole header lines.
fn raw_method(method: &str, target: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for line in extra {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Every spelling an upstream framework would route to `GET /admin` is held to that route's
/// policy (401 without a token), refused (400), or answered 405: never forwarded by the public
/// catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_a_protected_path_never_fall_to_the_public_catch_all() {
    bounded(60, "test", async {
        let env = admin_behind_public_proxy().await;

        // (method, target, status, body)
        let rows: &[(&str, &str, u16, &str)] = &[
            ("GET", "/admin", 401, UNAUTHORIZED),
            // the spellings the review reported
            ("GET", "/admin/", 401, UNAUTHORIZED),
            ("GET", "/admin;x=1", 400, BAD_REQUEST),
            ("GET", "/admin/;/", 400, BAD_REQUEST),
            ("GET", "/ADMIN", 401, UNAUTHORIZED),
            ("get", "/admin", 400, BAD_REQUEST),
            ("HEAD", "/admin", 401, ""),
            ("DELETE", "/admin", 405, METHOD_NOT_ALLOWED),
            // and their combinations
            ("GET", "/Admin/", 401, UNAUTHORIZED),
            ("GET", "/%41dmin", 401, UNAUTHORIZED),
            ("GET", "/x/../ADMIN/./", 401, UNAUTHORIZED),
            ("GET", "//admin//", 401, UNAUTHORIZED),
            ("HEAD", "/ADMIN/", 401, ""),
            ("POST", "/Admin", 405, METHOD_NOT_ALLOWED),
            ("Get", "/admin", 400, BAD_REQUEST),
            ("gEt", "/other", 400, BAD_REQUEST),
            ("GET", "/admin%3Bx=1", 400, BAD_REQUEST),
            ("GET", "/admin%3b", 400, BAD_REQUEST),
            ("GET", "/;/admin", 400, BAD_REQUEST),
            ("GET", "/public/..;/admin", 400, BAD_REQUEST),
            ("GET", "/admin;jsessionid=1", 400, BAD_REQUEST),
        ];
        let mut failures = Vec::new();
        for &(method, target, status, body) in rows {
            let resp = raw(env.gw.addr, &raw_method(method, target, &[])).await;
            let mut problems = Vec::new();
            if resp.status != status || resp.body != body {
                problems.push(format!("got {} {:?}, want {status} {body:?}", resp.status, resp.body));
            }
            if status == 401 && resp.header("www-authenticate") != Some("Bearer") {
                problems.push(format!("www-authenticate {:?}, want Bearer", resp.header("www-authenticate")));
            }
            if status == 405 {
                let allow = resp.header("allow").unwrap_or("");
                let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
                if !listed.contains(&"GET") || listed.contains(&method) {
                    problems.push(format!("allow {allow:?}, want GET and not {method}"));
                }
            }
            if env.app.count() != 0 {
                problems.push(format!("the upstream was reached: {:?}", env.app.last()));
            }
            if !problems.is_empty() {
                failures.push(format!("{method} {target}: {}", problems.join("; ")));
            }
        }
        assert!(failures.is_empty(), "spellings of GET /admin:\n{}", failures.join("\n"));
        assert_eq!(env.app.count(), 0);

        // The catch-all still serves what is really its own, so the zero above is meaningful.
        let resp = raw(env.gw.addr, &raw_method("DELETE", "/other/thing", &[])).await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        assert_eq!(env.app.count(), 1);

        // With the admin scope, the folded spellings reach the upstream with the normalized
        // path the client wrote (not the folded key).
        let token = env.key.sign(&claims(ISS, "admin-client", "API/admin"));
        let auth = format!("Authorization: Bearer {token}");
        for (method, target, forwarded) in
            [("GET", "/ADMIN", "/ADMIN"), ("GET", "/admin/", "/admin/"), ("HEAD", "/admin", "/admin")]
        {
            let before = env.app.count();
            let resp = raw(env.gw.addr, &raw_method(method, target, &[&auth])).await;
            assert_eq!(resp.status, 200, "{method} {target} with the admin scope: {:?}", resp.body);
            assert_eq!(env.app.count(), before + 1, "{method} {target}");
            let got = env.app.last().expect("recorded");
            assert_eq!((got.method.as_str(), got.target.as_str()), (method, forwarded));
        }
        // A token without the scope is refused on every spelling.
        let other = env.key.sign(&claims(ISS, "other-client", "API/other"));
        let auth = format!("Authorization: Bearer {other}");
        let before = env.app.count();
        for (method, target) in [("GET", "/ADMIN"), ("GET", "/admin/"), ("HEAD", "/admin")] {
            let resp = raw(env.gw.addr, &raw_method(method, target, &[&auth])).await;
            assert_eq!(resp.status, 401, "{method} {target} without the admin scope: {:?}", resp.body);
        }
        assert_eq!(env.app.count(), before);
        env.gw.stop().await;
    })
    .await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host (an absolute-form target carries
/// its own) is answered 400; HTTP/1.0 may omit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_request_needs_exactly_one_host() {
    bounded(60, "test", async {
        let env = admin_behind_public_proxy().await;
        let rows: &[(&str, u16)] = &[
            ("GET /pub HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
            ("GET /pub HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
            ("GET /pub HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
            ("GET /pub HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
            ("POST /oauth2/token HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 400),
            // allowed
            ("GET /pub HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
            ("GET /pub HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", 200),
            ("GET http://a/pub HTTP/1.1\r\nConnection: close\r\n\r\n", 200),
            ("GET /pub HTTP/1.0\r\n\r\n", 200),
        ];
        let mut failures = Vec::new();
        for &(request, status) in rows {
            let before = env.app.count();
            let resp = raw(env.gw.addr, request.as_bytes()).await;
            let reached = env.app.count() - before;
            let ok = if status == 400 {
                resp.status == 400 && resp.body == BAD_REQUEST && reached == 0
            } else {
                resp.status == status && reached == 1
            };
            if !ok {
                failures.push(format!("{request:?}: got {} {:?}, upstream reached {reached}x", resp.status, resp.body));
            }
        }
        assert!(failures.is_empty(), "Host rule:\n{}", failures.join("\n"));
        env.gw.stop().await;
    })
    .await;
}
