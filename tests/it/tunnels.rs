//! Upgraded connections (WebSocket): only `websocket` is relayed, the upstream's 101 must say
//! the same, and a tunnel keeps its connection slot and closes when idle.

use crate::common::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";

fn config(server: &str, upstream_url: &str) -> String {
    server_toml(server)
        + &upstream_toml("echo", upstream_url)
        + &route_toml("/ws", &[], &[PUBLIC, &forward_to("echo")])
        + &route_toml("/ping", &[], &[PUBLIC, &response_line(200, "", "pong")])
}

/// Opens a WebSocket tunnel through the gateway to the echoing upstream.
async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(UPGRADE.as_bytes()).await.expect("write upgrade");
    let (head, rest) = bounded(10, "101", read_head(&mut s)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head}");
    assert!(rest.is_empty());
    s
}

/// Sends `msg` through the tunnel and reads it back.
async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write through the tunnel");
    let mut got = vec![0u8; msg.len()];
    bounded(10, "echo", s.read_exact(&mut got)).await.expect("read the echo");
    assert_eq!(got, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_keeps_its_connection_slot() {
    let upstream = Upstream::start("echo").await;
    let gw = Gateway::start(&config("max_connections = 1", &upstream.url)).await;
    let mut tunnel = open_tunnel(gw.addr).await;
    echo(&mut tunnel, b"hello").await;

    // The only slot is the tunnel's: a second client waits in the backlog.
    let mut second = TcpStream::connect(gw.addr).await.expect("connect");
    second.write_all(PING).await.expect("write");
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(800), second.read(&mut buf)).await;
    assert!(early.is_err(), "a second client was served while a tunnel held max_connections = 1");
    echo(&mut tunnel, b"still open").await;

    // Closing the tunnel frees the slot.
    drop(tunnel);
    let n = bounded(10, "the second client once the tunnel closed", second.read(&mut buf)).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{:?}", &buf[..n]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_without_traffic_is_closed_after_idle_timeout() {
    let upstream = Upstream::start("echo").await;
    let gw = Gateway::start(&config("idle_timeout = \"1s\"", &upstream.url)).await;
    let mut tunnel = open_tunnel(gw.addr).await;
    // Traffic keeps it open past idle_timeout...
    for i in 0..8 {
        echo(&mut tunnel, format!("message {i}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...silence closes it.
    assert!(closed_within(&mut tunnel, Duration::from_secs(6)).await, "an idle tunnel stayed open");
    gw.stop().await;
}

/// RFC 9110 §7.8 lets a server ignore `Upgrade`: any protocol but WebSocket is dropped from
/// the request, which is forwarded as an ordinary one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_anything_but_websocket_is_not_relayed() {
    let upstream = Upstream::start("echo").await;
    let gw = Gateway::start(&config("", &upstream.url)).await;
    let resp = raw(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = upstream.last().expect("forwarded as an ordinary request");
    assert_eq!(seen.header("upgrade"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("http2-settings"), None, "{:?}", seen.headers);

    // Offered next to websocket, another protocol is dropped and websocket is relayed.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c, websocket").as_bytes()).await.expect("write");
    let (head, _) = bounded(10, "101", read_head(&mut s)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head}");
    assert_eq!(upstream.last().expect("upgrade forwarded").header_all("upgrade"), vec!["websocket"]);
    echo(&mut s, b"ws").await;
    gw.stop().await;
}

/// Aborts a test server's task when dropped.
struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An upstream that answers every request with `answer` and then holds the connection.
async fn raw_upstream(answer: &'static str) -> (String, Abort) {
    let (listener, addr): (TcpListener, SocketAddr) = bind_local().await;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let _ = s.write_all(answer.as_bytes()).await;
            held.push(s);
        }
    });
    (format!("http://{addr}"), Abort(task.abort_handle()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_for_another_protocol_than_websocket_is_a_bad_gateway() {
    for answer in [
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: something-else\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
    ] {
        let (url, _task) = raw_upstream(answer).await;
        let gw = Gateway::start(&config("", &url)).await;
        let resp = raw(gw.addr, UPGRADE.as_bytes()).await;
        assert_eq!(resp.status, 502, "upstream answered {answer:?}; client got {resp:?}");
        gw.stop().await;
    }
}
