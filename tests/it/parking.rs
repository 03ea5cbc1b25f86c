//! Idle HTTP/1.1 keep-alive connections are parked: while nothing is in flight, hyper's
//! connection state (its 8 KiB read and write buffers) is released and the socket alone is
//! kept; the next request builds it again. Nothing the client sent is lost, and
//! `idle_timeout` / `header_read_timeout` still close a parked connection.

use crate::common::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
const PARKED: &str = "scopegate_connections_parked";

fn config(server: &str) -> String {
    server_toml(server) + &route_toml("/ping", &[], &[PUBLIC, &response_line(200, "", "pong")])
}

/// Reads until `n` whole responses (each ends with the body `pong`) have arrived.
async fn responses(stream: &mut TcpStream, n: usize) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while String::from_utf8_lossy(&buf).matches("pong").count() < n {
            let got = stream.read(&mut chunk).await.expect("read");
            assert!(got > 0, "connection closed before {n} responses: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..got]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("responses within 5 s");
    String::from_utf8_lossy(&buf).into_owned()
}

fn parked(gw: &Gateway) -> f64 {
    metric(&gw.metrics_text(), PARKED, &[]).unwrap_or(-1.0)
}

/// Waits (at most 5 s) until the parked-connection gauge shows `want`.
async fn until_parked(gw: &Gateway, want: f64) {
    for _ in 0..50 {
        if parked(gw) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{PARKED} is {} after 5 s, want {want}\n{}", parked(gw), gw.metrics_text());
}

/// Waits (at most `within`) for the gateway to close `stream`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut chunk)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_request() {
    let gw = Gateway::start(&config("")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    conn.write_all(REQUEST).await.expect("write");
    assert!(responses(&mut conn, 1).await.starts_with("HTTP/1.1 200"));
    until_parked(&gw, 1.0).await;

    // The next request unparks it, on the same connection.
    conn.write_all(REQUEST).await.expect("write");
    assert!(responses(&mut conn, 1).await.starts_with("HTTP/1.1 200"));
    assert_eq!(parked(&gw), 0.0, "a connection serving a request is not counted as parked");

    // Parked again, then closed by the client: no longer counted.
    until_parked(&gw, 1.0).await;
    drop(conn);
    until_parked(&gw, 0.0).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_split_across_parking_and_pipelined_requests_are_all_answered() {
    let gw = Gateway::start(&config("")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    conn.write_all(REQUEST).await.expect("write");
    responses(&mut conn, 1).await;
    until_parked(&gw, 1.0).await;

    // Half a head, then a pause long enough for the connection to be parked with those bytes
    // read, then the rest of it and a second, pipelined request in the same write.
    let (head, rest) = REQUEST.split_at(12);
    conn.write_all(head).await.expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(&[rest, REQUEST].concat()).await.expect("write");
    let both = responses(&mut conn, 2).await;
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_still_closed_by_idle_timeout() {
    let gw = Gateway::start(&config("header_read_timeout = \"30s\"\nidle_timeout = \"2s\"")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    conn.write_all(REQUEST).await.expect("write");
    responses(&mut conn, 1).await;
    until_parked(&gw, 1.0).await;
    assert!(closed_within(&mut conn, Duration::from_secs(6)).await, "a parked connection outlived idle_timeout");
    until_parked(&gw, 0.0).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_waits_for_its_next_head_no_longer_than_header_read_timeout() {
    // As before parking existed: hyper's head timer bounded the wait for each next head.
    let gw = Gateway::start(&config("header_read_timeout = \"1500ms\"\nidle_timeout = \"60s\"")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    conn.write_all(REQUEST).await.expect("write");
    responses(&mut conn, 1).await;
    until_parked(&gw, 1.0).await;
    assert!(
        closed_within(&mut conn, Duration::from_secs(6)).await,
        "a parked connection waited for its next head past header_read_timeout"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_of_a_next_head_read_before_parking_is_kept() {
    let gw = Gateway::start(&config("")).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    // A whole request and the start of the next in one write: the gateway has read those
    // bytes when the connection idles long enough to be parked.
    let (head, rest) = REQUEST.split_at(12);
    conn.write_all(&[REQUEST, head].concat()).await.expect("write");
    assert!(responses(&mut conn, 1).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(rest).await.expect("write");
    assert!(responses(&mut conn, 1).await.starts_with("HTTP/1.1 200"));
    gw.stop().await;
}
