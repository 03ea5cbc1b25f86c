//! Listener limits (SPEC §2 `[server]`): `max_connections` makes new connections wait instead
//! of failing, and `header_read_timeout` cuts off a client that never finishes its head.

mod common;
use common::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";

fn config(server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\
         [[routes]]\npath = \"/ping\"\nauth = \"none\"\nresponse = {{ status = 200, body = 'pong' }}\n"
    )
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

/// SPEC §4: a changed `listen` takes a restart. A reload applies everything else and keeps
/// serving on the socket bound at start; it never re-binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_not_rebound_on_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    let with = |listen: &str, body: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n\
             [[routes]]\npath = \"/ping\"\nauth = \"none\"\nresponse = {{ status = 200, body = '{body}' }}\n"
        )
    };
    std::fs::write(&path, with("127.0.0.1:0", "pong")).expect("write");
    let server = scopegate::Server::start(&path).await.expect("start");
    let addr = server.local_addr();
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert!(exchange(&mut conn).await.ends_with("\r\n\r\npong"));

    // Another port, and a route change: the route applies, the old socket keeps serving.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = spare.local_addr().expect("addr");
    drop(spare);
    std::fs::write(&path, with(&other.to_string(), "ping-pong")).expect("rewrite");
    server.reload().await.expect("a listen change is not a rejected config");
    assert_eq!(server.local_addr(), addr);
    assert!(exchange(&mut conn).await.ends_with("ping-pong"), "the open connection sees the new route");
    let mut fresh = TcpStream::connect(addr).await.expect("the old address still accepts");
    assert!(exchange(&mut fresh).await.ends_with("ping-pong"));
    assert!(TcpStream::connect(other).await.is_err(), "the new address was bound without a restart");
    server.shutdown().await;
}
