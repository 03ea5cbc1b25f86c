//! Upstream keep-alive races: an upstream closes an idle pooled connection just as the gateway
//! writes the next request on it. A request that can be sent again safely (an idempotent method
//! and no body) is retried once on a fresh connection, as NGINX's `proxy_next_upstream` does;
//! a request with a body, or a POST, is never sent twice.
//!
//! The upstream is raw TCP so that the test sees exactly what reached it: it answers with
//! keep-alive, and closes a connection that stays idle for [`IDLE`] after its last answer.
//! On a real network the race window is the request's flight time; on loopback that is
//! microseconds, so this upstream widens it the way a busy server does: once it has decided to
//! close, it reads nothing more and closes [`LINGER`] later, and records what arrived in
//! between (requests the application never saw).

use crate::common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

/// An upstream connection idle this long after its last answer is closed.
const IDLE: Duration = Duration::from_millis(300);
/// Between deciding to close and closing: nothing more is read.
const LINGER: Duration = Duration::from_millis(30);

#[derive(Default)]
struct Seen {
    /// `METHOD seq` of every request the upstream read and answered.
    answered: Vec<String>,
    /// `x-seq` values found in bytes that arrived while a connection was closing.
    caught: Vec<String>,
    connections: usize,
}

/// The raw-TCP upstream; stops (with its connections) when dropped.
struct ClosingUpstream {
    url: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClosingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ClosingUpstream {
    async fn start() -> ClosingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            // Dropped with the accept task: aborts every connection task.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                shared.lock().unwrap().connections += 1;
                conns.spawn(serve(stream, Arc::clone(&shared)));
                while conns.try_join_next().is_some() {}
            }
        });
        ClosingUpstream { url: format!("http://{addr}"), seen, task }
    }

    fn answered(&self) -> Vec<String> {
        self.seen.lock().unwrap().answered.clone()
    }

    fn caught(&self) -> Vec<String> {
        self.seen.lock().unwrap().caught.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

/// The value of header `name` (lower-case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Every `x-seq` value in raw request bytes.
fn seqs(raw: &str) -> Vec<String> {
    raw.split("\r\n").filter_map(|line| header(&format!("\r\n{line}"), "x-seq").map(str::to_owned)).collect()
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle_since = Instant::now();
    loop {
        // A head, then its body (content-length only; the gateway sends no chunked bodies here).
        let (head, body_len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                buf.drain(..end + 4);
                break (head, len);
            }
            // Idle (nothing of a next request yet): close after IDLE; mid-request: 5 s.
            let deadline = if buf.is_empty() { idle_since + IDLE } else { Instant::now() + Duration::from_secs(5) };
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return,
                Err(_) if buf.is_empty() => return close(stream, &seen).await,
                Err(_) => return,
            }
        };
        while buf.len() < body_len {
            match timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        buf.drain(..body_len);
        let method = head.split(' ').next().unwrap_or("").to_owned();
        let seq = header(&head, "x-seq").unwrap_or("-").to_owned();
        let answer = format!("{method} {seq}");
        seen.lock().unwrap().answered.push(answer.clone());
        let resp =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{answer}", answer.len());
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        idle_since = Instant::now();
    }
}

/// Closes an idle connection the way a busy server does: it has stopped reading, and closes a
/// moment later. Whatever arrived meanwhile is recorded, never answered.
async fn close(stream: TcpStream, seen: &Mutex<Seen>) {
    sleep(LINGER).await;
    let mut late = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.try_read(&mut chunk) {
        if n == 0 {
            break;
        }
        late.extend_from_slice(&chunk[..n]);
    }
    if !late.is_empty() {
        seen.lock().unwrap().caught.extend(seqs(&String::from_utf8_lossy(&late)));
    }
}

fn config(upstream: &ClosingUpstream) -> String {
    server_toml("")
        + &upstream_toml("app", &upstream.url)
        + &route_toml("/{proxy+}", &[], &[PUBLIC, &forward_to("app")])
}

/// The pause before request `i`: 270 to 330 ms, spread evenly, so requests reach the upstream
/// connection just before, during and after its closing.
fn pause(i: usize) -> Duration {
    Duration::from_millis(270 + (i as u64 * 37) % 61)
}

/// One client keep-alive connection to the gateway.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, conn, addr }
    }

    /// (status, body); panics on a transport error or after 10 s.
    async fn send(&mut self, method: &str, seq: &str, body: &str) -> (u16, String) {
        let exchange = async {
            self.sender.ready().await.expect("client connection to the gateway closed");
            let req = hyper::Request::builder()
                .method(method)
                .uri("/r")
                .header(HOST, self.addr.to_string())
                .header("x-seq", seq)
                .body(Full::new(Bytes::from(body.to_owned())))
                .expect("request");
            let resp = self.sender.send_request(req).await.expect("send to the gateway");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("response body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        timeout(Duration::from_secs(10), exchange).await.unwrap_or_else(|_| panic!("{method} {seq}: no answer in 10 s"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_on_connections_the_upstream_closes_are_retried_once() {
    const REQUESTS: usize = 40;
    let upstream = ClosingUpstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let mut client = Client::connect(gw.addr).await;

    let mut failures = Vec::new();
    for i in 0..REQUESTS {
        sleep(pause(i)).await;
        let seq = format!("g{i}");
        let (status, body) = client.send("GET", &seq, "").await;
        if (status, body.as_str()) != (200, format!("GET {seq}").as_str()) {
            failures.push(format!("{seq}: {status} {body}"));
        }
    }
    let (answered, caught) = (upstream.answered(), upstream.caught());
    let summary = format!(
        "{} upstream connections; {} requests caught by a closing connection: {caught:?}",
        upstream.connections(),
        caught.len()
    );
    assert!(failures.is_empty(), "{} of {REQUESTS} GETs failed ({summary}): {failures:#?}", failures.len());
    // Each GET reached the upstream's application exactly once: the copy written on a closing
    // connection was never read there.
    let mut expected: Vec<String> = (0..REQUESTS).map(|i| format!("GET g{i}")).collect();
    let mut got = answered.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "requests the upstream answered ({summary})");
    // Without a caught request the race never happened and the test proved nothing.
    assert!(!caught.is_empty(), "no request met a closing connection ({summary})");
    for seq in &caught {
        assert!(answered.contains(&format!("GET {seq}")), "{seq} was caught and never retried ({summary})");
    }
    drop(client);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_body_are_never_sent_twice() {
    const REQUESTS: usize = 24;
    let upstream = ClosingUpstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let mut client = Client::connect(gw.addr).await;

    let mut outcomes = Vec::new();
    for i in 0..REQUESTS {
        sleep(pause(i)).await;
        // POST is not idempotent; a PUT with a body cannot be replayed from a stream.
        let method = if i % 2 == 0 { "POST" } else { "PUT" };
        let seq = format!("b{i}");
        let (status, body) = client.send(method, &seq, &format!("payload {i}")).await;
        outcomes.push((method, seq, status, body));
    }
    let (answered, caught) = (upstream.answered(), upstream.caught());
    let summary = format!("answered {answered:?}; caught {caught:?}; outcomes {outcomes:?}");
    for (method, seq, status, body) in &outcomes {
        let times_answered = answered.iter().filter(|a| **a == format!("{method} {seq}")).count();
        let times_caught = caught.iter().filter(|c| *c == seq).count();
        assert!(times_answered + times_caught <= 1, "{method} {seq} reached the upstream twice ({summary})");
        match status {
            200 => assert_eq!((times_answered, body.clone()), (1, format!("{method} {seq}")), "{summary}"),
            // Lost with the closing connection: the client hears of it, nothing is resent.
            502 => assert_eq!(times_answered, 0, "{method} {seq}: 502 though answered ({summary})"),
            other => panic!("{method} {seq}: unexpected status {other} ({summary})"),
        }
    }
    assert!(!caught.is_empty(), "no request met a closing connection ({summary})");
    drop(client);
    gw.stop().await;
}
