//! The harness itself: what the other modules rely on it for (bound addresses read from the
//! binary's log in both formats, reload and metrics of the in-process server, a config builder
//! whose output the parser accepts, an address that refuses connections).

use crate::common::*;

use std::path::Path;
use std::time::Duration;

#[test]
fn the_listening_line_is_read_in_both_log_formats() {
    let json = r#"{"timestamp":"t","level":"INFO","message":"scopegate listening","addr":"127.0.0.1:4100","admin":"Some(127.0.0.1:4101)","config":"/x/gateway.toml","target":"scopegate"}"#;
    let text = "2026-01-01T00:00:00.000000Z  INFO scopegate: scopegate listening addr=127.0.0.1:4100 \
                admin=Some(127.0.0.1:4101) config=/x/gateway.toml";
    let want = Some(("127.0.0.1:4100".parse().expect("addr"), Some("127.0.0.1:4101".parse().expect("addr"))));
    assert_eq!(listening_line(json), want, "JSON");
    assert_eq!(listening_line(text), want, "text");
    let no_admin = text.replace("admin=Some(127.0.0.1:4101)", "admin=None");
    assert_eq!(listening_line(&no_admin), Some(("127.0.0.1:4100".parse().expect("addr"), None)));
    assert_eq!(listening_line(r#"{"message":"config reloaded","addr":"127.0.0.1:1"}"#), None);
    assert_eq!(listening_line("INFO scopegate: config reloaded"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_its_bound_addresses_in_both_log_formats() {
    let routes = route_toml("/ping", &["GET"], &[PUBLIC, &mock_response("text/plain", "pong")]);
    for format in ["json", "text"] {
        let toml = server_admin_toml("") + &format!("[log]\nformat = \"{format}\"\n\n") + &routes;
        let mut bin = Binary::start(&toml).await;
        assert_ne!(bin.addr.port(), 0, "{format}");
        let ping = send_to(bin.addr, "GET", "/ping", &[], "").await;
        assert_eq!((ping.status, ping.body.as_str()), (200, "pong"), "{format}: {ping:?}");
        let health = send_to(bin.admin(), "GET", "/healthz", &[], "").await;
        assert_eq!(health.status, 200, "{format}: {health:?}");
        bin.signal("TERM");
        let status = bin.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{format}:\n{}", bin.output());
        assert!(bin.stdout().contains("scopegate listening"), "{format}: output captured:\n{}", bin.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reloads_and_shows_its_metrics() {
    let routes = route_toml("/a", &["GET"], &[PUBLIC, &mock_response("text/plain", "A")]);
    let gw = Gateway::start(&(server_admin_toml("") + &routes)).await;
    assert_eq!(gw.reloads("ok"), 0);
    let more = route_toml("/b", &["GET"], &[PUBLIC, &mock_response("text/plain", "B")]);
    gw.rewrite(&(server_admin_toml("") + &routes + &more));
    gw.reload().await.expect("reload");
    assert_eq!(gw.reloads("ok"), 1);
    assert_eq!(gw.get("/b", None).await.body, "B");
    let series = "scopegate_config_reloads_total{result=\"ok\"}";
    assert_eq!(series_value(&gw.metrics_text(), series), 1.0);
    assert_eq!(series_value(&gw.admin_metrics().await, series), 1.0);
    gw.write("keys/extra.json", "{}");
    assert_eq!(std::fs::read_to_string(gw.path("keys/extra.json")).expect("written"), "{}");
    gw.stop().await;
}

#[test]
fn the_config_builder_writes_what_the_parser_accepts() {
    let ok = mock_response("application/json", r#"{"ok":true}"#);
    let toml = server_admin_toml("max_connections = 10")
        + &auth_toml("scope_failure_status = 403")
        + &issuer_toml(ISS, &jwks_uri("https://issuer.test/jwks.json"), &["RS256", "ES256"], "refresh = \"1m\"")
        + &issuer_toml("https://other.test", &jwks_uri("https://other.test/jwks.json"), &[], "")
        + &builtin_issuer_toml("https://builtin.test", "token_ttl = \"5m\"")
        + &resource_server_toml("API", &["book.get"])
        + &client_toml("demo", "client_secret = \"s\"", &["API/book.get"])
        + &upstream_toml("books", "http://127.0.0.1:9")
        + &route_toml("/book", &["GET"], &[&scopes(&["API/book.get"]), &forward_to("books")])
        + &route_toml("/mock", &[], &[PUBLIC, &ok])
        + &route_toml("/teapot", &["POST"], &[PUBLIC, &response_line(418, "", "tea \"quoted\"\n")]);
    if let Err(e) = scopegate::config::Config::parse(Path::new("gateway.toml"), &toml) {
        panic!("{e}\n--- gateway.toml ---\n{toml}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_addr_refuses_connections_while_held() {
    let (socket, addr) = refused_addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "{addr} accepted a connection");
    drop(socket);
}
