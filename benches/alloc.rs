//! Heap allocations per request, counted by a counting global allocator (`cargo bench --bench
//! alloc`). Not a timing benchmark: it prints, for each case, the allocations and bytes one
//! request costs once everything is warm (connections open, token cached, maps grown).
//!
//! Cases:
//! - `decide, cache hit`: the in-process pipeline of benches/hot.rs (checks, token from the
//!   cache, URI and header rewrite), no network;
//! - `refused 401 (no token)`: a real round trip through the real server, on 127.0.0.1;
//! - `forwarded, cache hit`: a real round trip through the real server to a real local upstream.
//!
//! The client and the upstream are raw TCP with buffers reused from one request to the next,
//! so they allocate nothing per request themselves: what is counted is the gateway's (and the
//! runtime's) work. Everything runs on one current-thread runtime, like the benchmark's proxy
//! on its one core. Access logging is at `warn`, as in benches/load.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderValue, Request};
use scopegate::metrics::Metrics;
use scopegate::proxy::{decide, Access, ConnInfo, Decision};
use scopegate::snapshot::Snapshot;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../tests/it/common/mod.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod common;

use common::{claims, Algorithm, TestKey};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ISS: &str = "https://issuer.bench/alloc";
const WARMUP: usize = 2_000;
const MEASURED: usize = 20_000;
const UPSTREAM_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// Per-request figures of one case.
fn report(case: &str, n: usize, s: stats_alloc::Stats) {
    let per = |x: usize| x as f64 / n as f64;
    println!(
        "{case:<28} {:>8.2} allocs/req {:>8.2} reallocs/req {:>9.1} bytes/req (allocated {} B, freed {} B over {n})",
        per(s.allocations),
        per(s.reallocations),
        per(s.bytes_allocated + s.bytes_reallocated.max(0) as usize),
        s.bytes_allocated,
        s.bytes_deallocated,
    );
}

/// The size of the future `f` returns, without calling it.
fn fut_size<A, F: Future>(_f: impl FnOnce(A) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// Polls a future that never waits to completion without an executor.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("future unexpectedly waited"),
    }
}

/// Where a head ends and how long its body is (`content-length`), once the head is complete.
fn framing(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let len = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&line[colon + 1..]).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0))
        })
        .unwrap_or(0);
    Some((end, len))
}

/// Reads one response into `buf` (cleared first); returns its status code.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((end, len)) = framing(buf) {
            if buf.len() >= end + len {
                return std::str::from_utf8(&buf[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A keep-alive upstream answering every request head with [`UPSTREAM_ANSWER`].
async fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[filled..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    filled += n;
                    while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                        if s.write_all(UPSTREAM_ANSWER).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends `request` `WARMUP` times, then counts `MEASURED` more.
async fn round_trips(case: &str, addr: std::net::SocketAddr, request: &[u8], status: u16) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..WARMUP {
        s.write_all(request).await.expect("write");
        assert_eq!(read_response(&mut s, &mut buf).await, status, "{case}: {}", String::from_utf8_lossy(&buf));
    }
    let region = Region::new(GLOBAL);
    for _ in 0..MEASURED {
        s.write_all(request).await.expect("write");
        read_response(&mut s, &mut buf).await;
    }
    report(case, MEASURED, region.change());
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::sink)
        .finish();
    let _log = tracing::subscriber::set_global_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::generate(Algorithm::RS256, "k1");
    std::fs::write(dir.path().join("jwks.json"), serde_json::json!({ "keys": [key.jwk()] }).to_string())
        .expect("write jwks");
    let token = key.sign(&claims(ISS, "client", "API/book.get"));

    rt.block_on(async {
        let up = upstream().await;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[auth.issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n\
             [upstreams.books]\nurl = \"http://{up}/api\"\n\
             [[routes]]\npath = \"/book/{{id}}\"\nmethods = [\"GET\"]\nscopes = [\"API/book.get\"]\nupstream = \"books\"\n"
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &toml).expect("write config");

        // The in-process pipeline, as benches/hot.rs measures it.
        let config = scopegate::config::Config::load(&path).expect("config");
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
        let snap = Snapshot::build(config, None, &scopegate::auth::jwks::fetch_client(), &metrics).expect("snapshot");
        for i in snap.verifier.issuers() {
            i.first_attempt(Duration::from_secs(5)).await;
        }
        assert!(snap.ready(), "jwks_file keys loaded");
        let conn = ConnInfo::new("127.0.0.1:50000".parse().expect("addr"), false);
        let request_id = HeaderValue::from_static("bench-request-id");
        let template = Request::get("/book/42?fields=title")
            .header("host", "api.example.com")
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "bench/1.0")
            .header("accept", "application/json")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let decided = |n: usize| {
            for _ in 0..n {
                let mut parts = template.clone();
                let mut access = Access::default();
                let d = ready(decide(&snap, &conn, &mut parts, &request_id, &mut access));
                assert!(matches!(d, Ok(Decision::Forward(_))));
            }
        };
        // What each request's future carries (hyper boxes the whole service future per
        // request): the big parts, measured without polling.
        {
            let mut parts = template.clone();
            let mut access = Access::default();
            let mut info = scopegate::auth::verify::TokenInfo::default();
            let upstream = &snap.upstreams[0];
            println!(
                "future sizes: decide {} B, verify_with {} B, Upstream::send {} B",
                std::mem::size_of_val(&decide(&snap, &conn, &mut parts, &request_id, &mut access)),
                std::mem::size_of_val(&snap.verifier.verify_with(&token, &mut info)),
                fut_size(|req: Request<hyper::body::Incoming>| upstream.send(req, Duration::from_secs(1))),
            );
        }
        decided(WARMUP);
        // The clone of the request parts is the caller's, not the pipeline's: counted apart.
        let region = Region::new(GLOBAL);
        for _ in 0..MEASURED {
            drop(std::hint::black_box(template.clone()));
        }
        let cloning = region.change();
        let region = Region::new(GLOBAL);
        decided(MEASURED);
        let mut s = region.change();
        s.allocations -= cloning.allocations;
        s.bytes_allocated -= cloning.bytes_allocated;
        s.bytes_deallocated -= cloning.bytes_deallocated;
        report("decide, cache hit", MEASURED, s);

        let server = scopegate::Server::start(&path).await.expect("server");
        let addr = server.local_addr();
        let refused = b"GET /book/42 HTTP/1.1\r\nhost: api.example.com\r\nuser-agent: bench/1.0\r\naccept: */*\r\n\r\n";
        round_trips("refused 401 (no token)", addr, refused, 401).await;
        let allowed = format!(
            "GET /book/42 HTTP/1.1\r\nhost: api.example.com\r\nuser-agent: bench/1.0\r\naccept: */*\r\nauthorization: Bearer {token}\r\n\r\n"
        );
        round_trips("forwarded, cache hit", addr, allowed.as_bytes(), 200).await;
        server.shutdown().await;
    });
}
