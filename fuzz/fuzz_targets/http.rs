//! The whole service: arbitrary bytes fed to one HTTP/1 server connection over an in-memory
//! stream, served by the gateway's own request handler (`proxy::handle`) with a real config
//! and three mock upstreams on 127.0.0.1.
//!
//! Input: the bytes a client sends; every `$TOKEN` in them is replaced by a valid ES256 token
//! (scope `books.read`, signed with a key generated when the process starts, so no input can
//! carry any other valid token). The connection is served by `scopegate::fuzzing::InMemory`
//! with the listener's own protocol builder, plus half-close so the answers to everything sent
//! before the client's EOF are written.
//!
//! Properties:
//! - no panic, no hang (each input is bounded by a 30 s wall-clock timeout);
//! - the output is a sequence of well-formed HTTP/1.x responses (status line, headers, and a
//!   body framed by content-length or chunked encoding), or empty (input that starts with the
//!   HTTP/2 preface gets HTTP/2 frames, as on the real listener, and is only checked for the
//!   other properties);
//! - nothing reaches an upstream it should not: `/admin/{p+}` needs scope `admin`, which no
//!   token has, so its upstream never gets a request; the `books` upstream only gets requests
//!   under its base path carrying the token's identity headers (sub `fuzz-client`, scope
//!   `books.read`); the public upstream only gets paths under `/public/` and never an
//!   identity header (a client's own `x-auth-*` headers are stripped).
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use scopegate::fuzzing::InMemory;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://issuer.fuzz/pool";

struct Fixture {
    rt: tokio::runtime::Runtime,
    service: Arc<InMemory>,
    token: String,
    /// What the mock upstreams saw that they must not have.
    violations: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum Role {
    Public,
    Books,
    Admin,
}

/// The path as route matching may see it: ASCII case and `;params` folded (whether or not the
/// gateway folds them, the checks below then hold).
fn folded(path: &str) -> String {
    path.split('/').map(|s| s.split(';').next().unwrap_or("").to_ascii_lowercase()).collect::<Vec<_>>().join("/")
}

fn check_upstream_request(role: Role, req: &Request<hyper::body::Incoming>) -> Option<String> {
    let path = req.uri().path();
    let path_folded = folded(path);
    let h = req.headers();
    let ids: Vec<&str> = ["x-auth-sub", "x-auth-client-id", "x-auth-issuer", "x-auth-scope"]
        .into_iter()
        .filter(|n| h.contains_key(*n))
        .collect();
    match role {
        Role::Admin => Some(format!("admin upstream reached: {} {path}", req.method())),
        Role::Public if !path_folded.starts_with("/public/") => Some(format!("public upstream got {path:?}")),
        Role::Public if !ids.is_empty() => Some(format!("public upstream got identity headers {ids:?}")),
        Role::Public => None,
        Role::Books => {
            let sub: Vec<_> = h.get_all("x-auth-sub").iter().collect();
            let scope: Vec<_> = h.get_all("x-auth-scope").iter().collect();
            if !path_folded.starts_with("/api/books/") {
                Some(format!("books upstream got {path:?}"))
            } else if sub.len() != 1 || sub[0] != "fuzz-client" {
                Some(format!("books upstream got x-auth-sub {sub:?}"))
            } else if scope.len() != 1 || !scope[0].to_str().is_ok_and(|s| s.split(' ').any(|x| x == "books.read")) {
                Some(format!("books upstream got x-auth-scope {scope:?}"))
            } else {
                None
            }
        }
    }
}

async fn mock_upstream(role: Role, violations: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let violations = Arc::clone(&violations);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    if let Some(v) = check_upstream_request(role, &req) {
                        violations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(v);
                    }
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (public, books, admin) = rt.block_on(async {
            (
                mock_upstream(Role::Public, Arc::clone(&violations)).await,
                mock_upstream(Role::Books, Arc::clone(&violations)).await,
                mock_upstream(Role::Admin, Arc::clone(&violations)).await,
            )
        });
        // A key made now: no input can hold a valid token other than the one substituted.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("generate P-256");
        let key = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("P-256");
        let point = key.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]});
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(
            json!({"iss": ISS, "sub": "fuzz-client", "client_id": "fuzz-client", "token_use": "access",
                   "scope": "books.read", "iat": now, "exp": now + 86_400})
            .to_string(),
        );
        let input = format!("{header}.{claims}");
        let signature = key.sign(&SystemRandom::new(), input.as_bytes()).expect("sign");
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));

        let dir = std::env::temp_dir().join(format!("scopegate-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write jwks");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
request_timeout = "5s"

[[auth.issuers]]
issuer = "{ISS}"
jwks_file = "jwks.json"
algorithms = ["ES256"]
token_use = "access"

[upstreams.public]
url = "http://{public}"

[upstreams.books]
url = "http://{books}/api"

[upstreams.admin]
url = "http://{admin}"

[[routes]]
path = "/public/{{p+}}"
auth = "none"
upstream = "public"

[[routes]]
path = "/books/{{id}}"
methods = ["GET", "POST"]
scopes = ["books.read"]
upstream = "books"

[[routes]]
path = "/admin/{{p+}}"
scopes = ["admin"]
upstream = "admin"

[[routes]]
path = "/mock"
auth = "none"
response = {{ status = 200, body = '{{"mock":true}}' }}
"#
        );
        let path = dir.join("gateway.toml");
        std::fs::write(&path, toml).expect("write config");
        let service = rt.block_on(InMemory::load(&path, Duration::from_secs(10))).expect("fuzz config loads");
        assert!(service.ready(), "keys loaded");
        let service = Arc::new(service);
        // Keys are loaded and nothing here reloads the config: the files can go (a key
        // refresh that finds no file keeps the last good keys).
        let _ = std::fs::remove_dir_all(&dir);
        Fixture { rt, service, token, violations }
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks that `out` is a sequence of well-formed responses. Stops at the first response
/// whose body length cannot be known from the bytes alone (a HEAD answer, or a body that
/// runs to the close).
fn check_responses(out: &[u8], input: &[u8]) {
    let head_only = find(input, b"HEAD").is_some();
    let mut rest = out;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => panic!("truncated response head: {:?}", String::from_utf8_lossy(rest)),
            Err(e) => panic!("malformed response head ({e}): {:?}", String::from_utf8_lossy(rest)),
        };
        // HTTP/1.0 answers an HTTP/1.0 request.
        assert!(matches!(r.version, Some(0 | 1)), "not HTTP/1.x: {:?}", String::from_utf8_lossy(rest));
        let code = r.code.expect("status code");
        assert!((100..=599).contains(&code), "status {code}");
        let header = |name: &str| r.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).collect::<Vec<_>>();
        let lengths = header("content-length");
        let chunked = header("transfer-encoding").iter().any(|h| h.value.eq_ignore_ascii_case(b"chunked"));
        assert!(lengths.len() <= 1, "{} content-length headers", lengths.len());
        assert!(!chunked || lengths.is_empty(), "both content-length and chunked");
        rest = &rest[n..];
        if code == 101 || head_only {
            return;
        }
        if (100..200).contains(&code) || code == 204 || code == 304 {
            continue;
        }
        if let Some(cl) = lengths.first() {
            let len: usize = std::str::from_utf8(cl.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("content-length {:?}", cl.value));
            assert!(rest.len() >= len, "body of {len} bytes truncated to {}", rest.len());
            rest = &rest[len..];
        } else if chunked {
            loop {
                let eol = find(rest, b"\r\n").expect("chunk size line");
                let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size is ASCII");
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
                rest = &rest[eol + 2..];
                if size == 0 {
                    // Trailers, then an empty line.
                    loop {
                        let eol = find(rest, b"\r\n").expect("trailer line");
                        rest = &rest[eol + 2..];
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                assert!(rest.len() >= size + 2 && &rest[size..size + 2] == b"\r\n", "chunk of {size} bytes malformed");
                rest = &rest[size + 2..];
            }
        } else {
            // Delimited by the close: whatever follows is body.
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Vec::with_capacity(data.len() + 512);
    let mut rest = data;
    while let Some(i) = find(rest, b"$TOKEN") {
        input.extend_from_slice(&rest[..i]);
        input.extend_from_slice(f.token.as_bytes());
        rest = &rest[i + 6..];
    }
    input.extend_from_slice(rest);

    let out = f.rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let service = Arc::clone(&f.service);
        let remote: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let server_task = tokio::spawn(async move { service.serve(server, remote).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            wr
        };
        let reader = async {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let (wr, out) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(writer, reader) })
            .await
            .unwrap_or_else(|_| panic!("connection still open after 30 s: {:?}", String::from_utf8_lossy(&input)));
        drop(wr);
        server_task.abort();
        out
    });
    let violations = std::mem::take(&mut *f.violations.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    assert!(violations.is_empty(), "{violations:?} for input {:?}", String::from_utf8_lossy(&input));
    if std::env::var_os("SCOPEGATE_FUZZ_TRACE").is_some() {
        let text = String::from_utf8_lossy(&out);
        let heads: Vec<&str> = text.match_indices("HTTP/1.").filter_map(|(i, _)| text[i..].lines().next()).collect();
        eprintln!("{:?}\n  -> {heads:?}", String::from_utf8_lossy(data));
    }
    // The HTTP/2 preface switches the connection to HTTP/2 (prior knowledge), as on the real
    // listener: its frames are not HTTP/1 responses.
    if !input.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        check_responses(&out, &input);
    }
});
