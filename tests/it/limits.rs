//! Listener limits (`[server]`): `max_connections` makes new connections wait instead
//! of failing, and `header_read_timeout` cuts off a client that never finishes its head.

use crate::common::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";

fn config(server: &str) -> String {
    server_toml(server) + &route_toml("/ping", &[], &[PUBLIC, &response_line(200, "", "pong")])
}

/// Sends one keep-alive request and reads its whole (small, content-length) response.
async fn exchange(stream: &mut TcpStream) -> String {
    stream.write_all(REQUEST).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"pong") {
            return String::from_utf8_lossy(&buf).into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let gw = Gateway::start(&config("max_connections = 2")).await;
    let mut a = TcpStream::connect(gw.addr).await.expect("connect a");
    let mut b = TcpStream::connect(gw.addr).await.expect("connect b");
    assert!(exchange(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut b).await.starts_with("HTTP/1.1 200"));

    // The third connection is accepted by the kernel but not served while two are open.
    let mut c = TcpStream::connect(gw.addr).await.expect("connect c");
    c.write_all(REQUEST).await.expect("write c");
    let mut first = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(800), c.read(&mut first)).await;
    assert!(waited.is_err(), "a third connection was served beyond max_connections = 2");

    // Closing one frees its slot: the waiting request is answered, nothing was lost.
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut first))
        .await
        .expect("the waiting connection is served once a slot frees")
        .expect("read c");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"), "{:?}", &first[..n]);
    // The open connection still works.
    assert!(exchange(&mut b).await.starts_with("HTTP/1.1 200"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let gw = Gateway::start(&config("header_read_timeout = \"300ms\"")).await;
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the gateway kept a half-sent head open past header_read_timeout");
    assert!(!String::from_utf8_lossy(&rest).contains("pong"), "{rest:?}");

    // A client that sends its head in time is served on the same listener.
    let mut quick = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(exchange(&mut quick).await.starts_with("HTTP/1.1 200"));
    gw.stop().await;
}

/// A changed `listen` takes a restart. A reload applies everything else and keeps
/// serving on the socket bound at start; it never re-binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_not_rebound_on_reload() {
    let with = |listen: &str, body: &str| {
        format!("[server]\nlisten = {}\n\n", toml_str(listen))
            + &route_toml("/ping", &[], &[PUBLIC, &response_line(200, "", body)])
    };
    let gw = Gateway::start(&with("127.0.0.1:0", "pong")).await;
    let addr = gw.addr;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert!(exchange(&mut conn).await.ends_with("\r\n\r\npong"));

    // Another port, and a route change: the route applies, the old socket keeps serving. The
    // port is released before the reload on purpose: a server that wrongly re-bound could take
    // it, and the last assertion would see that.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = spare.local_addr().expect("addr");
    drop(spare);
    std::fs::write(&gw.config, with(&other.to_string(), "ping-pong")).expect("rewrite");
    gw.reload().await.expect("a listen change is not a rejected config");
    assert_eq!(gw.server().local_addr(), addr);
    assert!(exchange(&mut conn).await.ends_with("ping-pong"), "the open connection sees the new route");
    let mut fresh = TcpStream::connect(addr).await.expect("the old address still accepts");
    assert!(exchange(&mut fresh).await.ends_with("ping-pong"));
    assert!(TcpStream::connect(other).await.is_err(), "the new address was bound without a restart");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Stalled and idle connections give their slot back
// ---------------------------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `max_connections = 3` held by three stalled sockets: each is closed within a generous bound
/// of `header_read_timeout`, and a fourth client, queued behind them, is then served.
async fn stalled_connections_give_their_slots_back(stall: [&[u8]; 3]) {
    let gw = Gateway::start(&config("max_connections = 3\nheader_read_timeout = \"500ms\"")).await;
    let mut stalled = Vec::new();
    for first_bytes in stall {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        if !first_bytes.is_empty() {
            s.write_all(first_bytes).await.expect("write");
        }
        stalled.push(s);
    }
    // The fourth client sends its request at once and waits in the backlog for a slot.
    let mut fourth = TcpStream::connect(gw.addr).await.expect("connect the fourth");
    fourth.write_all(REQUEST).await.expect("write the fourth");
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "stalled connection {i} ({:?}) still open 5 s after header_read_timeout = 500ms",
            String::from_utf8_lossy(stall[i])
        );
    }
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut answer))
        .await
        .expect("the fourth client is served once the slots are free")
        .expect("read the fourth");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"), "{:?}", &answer[..n]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_header_read_timeout() {
    stalled_connections_give_their_slots_back([b"", b"", b""]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_only_the_h2_preface_are_closed() {
    stalled_connections_give_their_slots_back([H2_PREFACE, H2_PREFACE, H2_PREFACE]).await;
}

/// Every stage a client can stall in before its first request head: the protocol not yet
/// known (part of the HTTP/2 preface), HTTP/2 known but no request, HTTP/1.1 mid-head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stalled_at_any_stage_before_a_head_are_closed() {
    stalled_connections_give_their_slots_back([
        b"PRI * HTTP/2.0\r\n",
        H2_PREFACE,
        b"GET /ping HTTP/1.1\r\nHost: x\r\n",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_after_idle_timeout() {
    // header_read_timeout is long: the close below is idle_timeout's doing.
    let gw = Gateway::start(&config("header_read_timeout = \"30s\"\nidle_timeout = \"1s\"")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"), "keep-alive works within idle_timeout");
    assert!(closed_within(&mut conn, Duration::from_secs(6)).await, "an idle keep-alive connection stayed open");
    gw.stop().await;
}

/// An HTTP/2 (prior knowledge) client over TCP that pings every 200 ms, idle or not.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: std::net::SocketAddr,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(format!("http://{addr}{path}")).body(http_body_util::Empty::new()).expect("request");
    let go = async {
        let resp = sender.send_request(req).await.expect("h2 request");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("h2 body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), go).await.expect("h2 answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_idle_timeout_despite_pings() {
    let gw = Gateway::start(&config("header_read_timeout = \"30s\"\nidle_timeout = \"1s\"")).await;
    let (mut sender, conn) = h2_client(gw.addr).await;
    assert_eq!(h2_get(&mut sender, gw.addr, "/ping").await, (200, "pong".to_owned()));
    // The client keeps pinging; only a request counts as activity.
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "an idle h2 connection kept alive by pings stayed open past idle_timeout");
    gw.stop().await;
}

fn slow_config(upstream: &Upstream) -> String {
    server_toml("header_read_timeout = \"500ms\"\nidle_timeout = \"1s\"")
        + &upstream_toml("slow", &upstream.url)
        + &route_toml("/slow", &[], &[PUBLIC, &forward_to("slow")])
}

/// The upstream takes 3 s to answer: longer than idle_timeout and header_read_timeout, but the
/// connection is not idle while a request is in flight, on either protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_is_not_cut_by_idle_timeout() {
    let upstream = Upstream::start("slow").await;
    let gw = Gateway::start(&slow_config(&upstream)).await;

    let resp = raw(gw.addr, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(resp.status, 200, "HTTP/1.1: {resp:?}");

    let (mut sender, _conn) = h2_client(gw.addr).await;
    let (status, body) = h2_get(&mut sender, gw.addr, "/slow").await;
    assert_eq!(status, 200, "h2: {body}");
    assert_eq!(upstream.count(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_idle_timeout_is_refused() {
    let err = match Gateway::try_start(&config("idle_timeout = \"0s\"")).await {
        Ok(gw) => {
            gw.stop().await;
            panic!("idle_timeout = 0s was accepted");
        }
        Err(e) => e,
    };
    assert!(err.contains("gateway.toml:3:") && err.contains("server.idle_timeout must be more than 0"), "{err}");
}

/// Over TLS the deadline counts from accept too: a client that completes the handshake and
/// then says nothing (here with ALPN h2, so no HTTP/1.1 timer of hyper's applies) is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_connection_is_closed_after_header_read_timeout() {
    let (cert_pem, key_pem, cert_der) = self_signed("localhost", 1);
    let gw = Gateway::start_with_files(
        &config("max_connections = 1\nheader_read_timeout = \"500ms\"\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\""),
        &[("cert.pem", &cert_pem), ("key.pem", &key_pem)],
    )
    .await;
    let mut tls = tls_connect(gw.addr, &tls_client(&[&cert_der], &[b"h2"])).await.expect("TLS handshake");
    let closed = closed_within(&mut tls, Duration::from_secs(5)).await;
    assert!(closed, "a silent TLS connection held max_connections = 1 past header_read_timeout");
    gw.stop().await;
}
