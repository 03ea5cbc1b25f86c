//! Fault injection on the upstream side: a raw-TCP upstream scripted per test misbehaves in
//! one precise way (refuses, resets mid-head or mid-body, sends garbage, stalls, sends interim
//! answers, stray body bytes, enormous headers). Each test asserts what the client gets
//! (status and JSON body, or how its connection ends), what the real binary logs on its
//! access line, and what it counts in `scopegate_requests_total`.

use crate::common::*;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

const BAD_GATEWAY: &str = r#"{"message":"Bad Gateway"}"#;
const GATEWAY_TIMEOUT: &str = r#"{"message":"Gateway Timeout"}"#;

/// A raw-TCP upstream: every accepted connection is handed to the script. Stops (with its
/// connections) when dropped.
struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(script(stream));
                while conns.try_join_next().is_some() {}
            }
        });
        Scripted { url: format!("http://{addr}"), connections, task }
    }
}

/// Reads one request head (the tests send no bodies upstream); false if the peer closed first.
async fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf[..i]).into_owned());
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    #[allow(deprecated)] // blocks on drop only with a non-zero linger
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// The binary (JSON logs, admin listener) with `GET /x` (public) forwarded to `url`.
async fn gateway(url: &str, server_extra: &str) -> Binary {
    let toml = server_admin_toml(server_extra)
        + "[log]\nformat = \"json\"\n\n"
        + &upstream_toml("up", url)
        + &route_toml("/x", &["GET", "POST"], &[PUBLIC, &forward_to("up")]);
    Binary::start(&toml).await
}

/// `GET path` with `x-request-id: id`.
async fn request(bin: &Binary, path: &str, id: &str) -> Resp {
    send_to(bin.addr, "GET", path, &[("x-request-id", id)], "").await
}

/// The access line of request `id` (waits up to 10 s for it).
async fn access_line(bin: &Binary, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = bin.json_lines().into_iter().find(|v| v["target"] == "scopegate::access" && v["request_id"] == id);
        if let Some(line) = found {
            return line;
        }
        assert!(Instant::now() < deadline, "no access line for {id}:\n{}", bin.output());
        sleep(Duration::from_millis(50)).await;
    }
}

/// `scopegate_requests_total{route="/x",method,status}` from the admin listener.
async fn requests_total(bin: &Binary, method: &str, status: &str) -> f64 {
    let resp = send_to(bin.admin(), "GET", "/metrics", &[], "").await;
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    metric(&resp.body, "scopegate_requests_total", &[("route", "/x"), ("method", method), ("status", status)])
        .unwrap_or(0.0)
}

/// Asserts the answer is the gateway's own 502 or 504, logged with `reason` and counted once.
async fn assert_refused(bin: &Binary, resp: &Resp, id: &str, status: u16, body: &str, reason: &str) {
    assert_eq!((resp.status, resp.body.as_str()), (status, body), "{id}: {resp:?}\n{}", bin.output());
    assert_eq!(resp.header("content-type"), Some("application/json"), "{id}: {resp:?}");
    let line = access_line(bin, id).await;
    assert_eq!(line["status"], status, "{id}: {line}");
    assert_eq!(line["reason"], reason, "{id}: {line}");
    assert_eq!(line["upstream"], "up", "{id}: {line}");
    assert_eq!(requests_total(bin, "GET", &status.to_string()).await, 1.0, "{id}: counted once");
}

/// Reads from `s` until it closes (or `bound` passes): the bytes and whether it closed.
async fn read_to_close(s: &mut TcpStream, bound: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn upstream_refusing_connections_is_a_502() {
    let (_held, addr) = refused_addr();
    let bin = gateway(&format!("http://{addr}"), "").await;
    let resp = request(&bin, "/x", "refused-1").await;
    assert_refused(&bin, &resp, "refused-1", 502, BAD_GATEWAY, "upstream_unreachable").await;
    bin.stop().await;
}

#[tokio::test]
async fn upstream_reset_mid_head_is_a_502() {
    let up = Scripted::start(|mut s| async move {
        if read_request(&mut s).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/pl").await;
            let _ = s.flush().await;
            sleep(Duration::from_millis(50)).await;
            reset(s);
        }
    })
    .await;
    let bin = gateway(&up.url, "").await;
    let resp = request(&bin, "/x", "reset-head-1").await;
    assert_refused(&bin, &resp, "reset-head-1", 502, BAD_GATEWAY, "upstream_unreachable").await;
    // A GET is idempotent: the gateway may retry it once on a fresh connection, never more.
    let tries = up.connections.load(Ordering::SeqCst);
    assert!((1..=2).contains(&tries), "upstream connections for one GET: {tries}");
    bin.stop().await;
}

#[tokio::test]
async fn upstream_reset_mid_body_aborts_the_client_connection() {
    let up = Scripted::start(|mut s| async move {
        if read_request(&mut s).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
            let _ = s.flush().await;
            sleep(Duration::from_millis(100)).await;
            reset(s);
        }
    })
    .await;
    let bin = gateway(&up.url, "").await;
    let mut client = TcpStream::connect(bin.addr).await.expect("connect");
    client
        .write_all(b"GET /x HTTP/1.1\r\nhost: gw\r\nx-request-id: reset-body-1\r\n\r\n")
        .await
        .expect("write request");
    let (head, mut body) = bounded(10, "response head", read_head(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "head: {head}");
    assert!(head.to_ascii_lowercase().contains("content-length: 100"), "head: {head}");
    let (rest, closed) = read_to_close(&mut client, Duration::from_secs(5)).await;
    body.extend_from_slice(&rest);
    // The head was already sent: the only honest signal left is closing the connection
    // before the promised 100 bytes, so the client cannot take the body for complete.
    assert!(closed, "the client connection stays open after the upstream reset");
    assert_eq!(body, b"0123456789", "body bytes before the abort");
    // The status was decided (and is logged and counted) when the head went out.
    let line = access_line(&bin, "reset-body-1").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(requests_total(&bin, "GET", "200").await, 1.0);
    bin.stop().await;
}

#[tokio::test]
async fn malformed_upstream_heads_are_502s() {
    let heads: &[&[u8]] = &[
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ];
    for (i, head) in heads.iter().enumerate() {
        let head = head.to_vec();
        let up = Scripted::start(move |mut s| {
            let head = head.clone();
            async move {
                if read_request(&mut s).await.is_some() {
                    let _ = s.write_all(&head).await;
                    let _ = s.flush().await;
                    sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .await;
        let bin = gateway(&up.url, "").await;
        let id = format!("malformed-{i}");
        let resp = request(&bin, "/x", &id).await;
        assert_refused(&bin, &resp, &id, 502, BAD_GATEWAY, "upstream_unreachable").await;
        bin.stop().await;
    }
}

#[tokio::test]
async fn upstream_stalling_before_the_head_is_a_504_after_request_timeout() {
    let up = Scripted::start(|mut s| async move {
        if read_request(&mut s).await.is_some() {
            sleep(Duration::from_secs(60)).await;
        }
    })
    .await;
    let bin = gateway(&up.url, "request_timeout = \"1s\"").await;
    let started = Instant::now();
    let resp = request(&bin, "/x", "stall-head-1").await;
    let took = started.elapsed();
    assert_refused(&bin, &resp, "stall-head-1", 504, GATEWAY_TIMEOUT, "upstream_timeout").await;
    assert!(took >= Duration::from_millis(950), "504 before request_timeout: {took:?}");
    assert!(took < Duration::from_secs(8), "504 long after request_timeout (1 s): {took:?}");
    bin.stop().await;
}

#[tokio::test]
async fn upstream_stalling_mid_body_is_cut_off_by_idle_timeout() {
    let up = Scripted::start(|mut s| async move {
        if read_request(&mut s).await.is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
            let _ = s.flush().await;
            sleep(Duration::from_secs(60)).await;
        }
    })
    .await;
    let bin = gateway(&up.url, "request_timeout = \"1s\"\nidle_timeout = \"1s\"").await;
    let mut client = TcpStream::connect(bin.addr).await.expect("connect");
    client.write_all(b"GET /x HTTP/1.1\r\nhost: gw\r\nx-request-id: stall-body-1\r\n\r\n").await.expect("write");
    let (head, mut body) = bounded(10, "response head", read_head(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "head: {head}");
    let (rest, closed) = read_to_close(&mut client, Duration::from_secs(8)).await;
    body.extend_from_slice(&rest);
    assert!(closed, "a body stalled upstream holds the client connection open for 8 s (idle_timeout = 1s)");
    assert_eq!(body, b"0123456789", "body bytes before the cut");
    // Logged: the access line (200, decided with the head) and the abort.
    assert_eq!(access_line(&bin, "stall-body-1").await["status"], 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bin.log().contains("response body stalled upstream") {
        assert!(Instant::now() < deadline, "no log line for the aborted body:\n{}", bin.output());
        sleep(Duration::from_millis(50)).await;
    }
    // The gateway keeps serving.
    let resp = raw(bin.addr, b"GET /nope HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 404, "{resp:?}");
    bin.stop().await;
}

#[tokio::test]
async fn interim_1xx_answers_are_skipped_and_the_final_answer_relayed() {
    let up = Scripted::start(|mut s| async move {
        while read_request(&mut s).await.is_some() {
            let answer = b"HTTP/1.1 100 Continue\r\n\r\n\
                HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                HTTP/1.1 102 Processing\r\n\r\n\
                HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nfinal";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let bin = gateway(&up.url, "").await;
    for i in 0..3 {
        let id = format!("interim-{i}");
        let resp = request(&bin, "/x", &id).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "final"), "{id}: {resp:?}");
        assert_eq!(access_line(&bin, &id).await["status"], 200);
    }
    // Over raw TCP too: whatever interim answers reach the client, the final one is whole.
    let resp = raw(bin.addr, b"GET /x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "final"), "{resp:?}");
    assert_eq!(requests_total(&bin, "GET", "200").await, 4.0);
    bin.stop().await;
}

/// Sends `n` GETs of `paths` on ONE client connection; each response parsed in turn.
async fn keep_alive_exchange(bin: &Binary, paths: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut client = TcpStream::connect(bin.addr).await.expect("connect");
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for path in paths {
        let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n");
        client.write_all(req.as_bytes()).await.expect("write request on the kept-alive connection");
        let mut buf = std::mem::take(&mut pending);
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        let (head, body, rest) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .map_or(0, |v| v.parse().expect("content-length"));
                let no_body = head.starts_with("HTTP/1.1 204") || head.starts_with("HTTP/1.1 304");
                let len = if no_body { 0 } else { len };
                if buf.len() >= i + 4 + len {
                    break (head, buf[i + 4..i + 4 + len].to_vec(), buf[i + 4 + len..].to_vec());
                }
            }
            let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!("{path}: no complete response within 10 s: {:?}", String::from_utf8_lossy(&buf))
                })
                .expect("read");
            assert!(n > 0, "{path}: the gateway closed the kept-alive connection: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        pending = rest;
        out.push((head, body));
    }
    assert!(pending.is_empty(), "stray bytes after the last response: {:?}", String::from_utf8_lossy(&pending));
    out
}

#[tokio::test]
async fn stray_bytes_after_204_and_304_do_not_leak_to_the_client() {
    let up = Scripted::start(|mut s| async move {
        while let Some(head) = read_request(&mut s).await {
            let answer: &[u8] = if head.starts_with("GET /x/204") {
                b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nstray"
            } else if head.starts_with("GET /x/304") {
                b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\nstray bytes"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let toml = server_admin_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &upstream_toml("up", &up.url)
        + &route_toml("/x/{rest+}", &["GET"], &[PUBLIC, &forward_to("up")]);
    let bin = Binary::start(&toml).await;
    let got = keep_alive_exchange(&bin, &["/x/204", "/x/ok", "/x/304", "/x/ok", "/x/204", "/x/ok"]).await;
    let summary: Vec<(String, String)> = got
        .iter()
        .map(|(h, b)| (h.lines().next().unwrap_or("").to_string(), String::from_utf8_lossy(b).into_owned()))
        .collect();
    let want = |s: &str, b: &str| (s.to_string(), b.to_string());
    assert_eq!(
        summary,
        vec![
            want("HTTP/1.1 204 No Content", ""),
            want("HTTP/1.1 200 OK", "ok"),
            want("HTTP/1.1 304 Not Modified", ""),
            want("HTTP/1.1 200 OK", "ok"),
            want("HTTP/1.1 204 No Content", ""),
            want("HTTP/1.1 200 OK", "ok"),
        ],
        "{}",
        bin.output()
    );
    bin.stop().await;
}

#[tokio::test]
async fn oversized_upstream_headers_are_a_502_and_the_gateway_carries_on() {
    let up = Scripted::start(|mut s| async move {
        while let Some(head) = read_request(&mut s).await {
            let answer: Vec<u8> = if head.starts_with("GET /x?huge") {
                // One 1 MiB header value: far beyond hyper's default read buffer (~400 KiB).
                let mut a = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
                a.extend(std::iter::repeat_n(b'a', 1 << 20));
                a.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
                a
            } else if head.starts_with("GET /x?many") {
                // 500 small header fields: beyond hyper's default count (100).
                let mut a = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..500 {
                    a.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
                }
                a.extend_from_slice(b"content-length: 2\r\n\r\nok");
                a
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
            };
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut bin = gateway(&up.url, "").await;
    let resp = request(&bin, "/x?huge", "huge-1").await;
    assert_refused(&bin, &resp, "huge-1", 502, BAD_GATEWAY, "upstream_unreachable").await;
    let resp = request(&bin, "/x?many", "many-1").await;
    assert_eq!((resp.status, resp.body.as_str()), (502, BAD_GATEWAY), "{resp:?}");
    assert_eq!(access_line(&bin, "many-1").await["reason"], "upstream_unreachable");
    let resp = request(&bin, "/x", "after-1").await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{resp:?}");
    assert!(bin.running(), "the gateway died:\n{}", bin.output());
    assert_eq!(requests_total(&bin, "GET", "502").await, 2.0);
    bin.stop().await;
}
