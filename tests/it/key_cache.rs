//! `[auth] key_cache_dir`: the last good key set of a fetched issuer persisted on disk and
//! served by a gateway that starts (or gains the issuer by a reload) while the IdP is down, up
//! to `key_cache_max_age`, with a metric and a WARN line saying so; a good fetch replacing it; a
//! stale, corrupt or foreign file ignored; failed writes counted; the built-in issuer's
//! generated signing key kept across a restart.

use crate::common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

/// `[auth]` with `key_cache_dir` (and `extra` lines), one issuer fetched from `jwks_url`, and
/// `GET /r` needing a valid token.
fn cached_toml(cache: &Path, jwks_url: &str, extra: &str) -> String {
    server_admin_toml("")
        + &auth_toml(&format!("key_cache_dir = {}\n{extra}", toml_str(&cache.display().to_string())))
        + &issuer_toml(ISS, &jwks_uri(jwks_url), &["RS256"], "")
        + &route_toml("/r", &["GET"], &[&mock_response("application/json", r#"{"ok":true}"#)])
}

/// The files in `dir`, except temp files.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| !p.to_string_lossy().ends_with(".tmp")).collect();
    files.sort();
    files
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Runs a gateway against a live JWKS server until the key set is persisted in `cache`, stops
/// both, and returns the config (whose `jwks_uri` is now a closed port), the key and the file.
async fn populate(cache: &Path, extra: &str) -> (String, TestKey, PathBuf) {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let toml = cached_toml(cache, &jwks.url, extra);
    let gw = Gateway::start(&toml).await;
    let token = key.sign(&claims(ISS, "client", ""));
    assert_eq!(gw.get("/r", Some(&token)).await.status, 200, "with the IdP up");
    let file = bounded(10, "the key set is persisted", async {
        loop {
            if let [file] = cache_files(cache).as_slice() {
                if std::fs::read(file).is_ok_and(|b| serde_json::from_slice::<Value>(&b).is_ok()) {
                    return file.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(gw.server().metrics().key_cache_writes.with_label_values(&["ok"]).get(), 1);
    gw.stop().await;
    drop(jwks);
    (toml, key, file)
}

async fn from_cache_gauge(gw: &Gateway) -> Option<f64> {
    metric(&gw.admin_metrics().await, "scopegate_jwks_from_cache", &[("issuer", ISS)])
}

#[tokio::test]
async fn a_persisted_key_set_is_served_when_the_idp_is_down_at_start() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, file) = populate(&cache, "").await;

    // The file: 0600 in a 0700 directory, this issuer's, holding the published document.
    assert_eq!(mode(&cache), 0o700, "key_cache_dir mode");
    assert_eq!(mode(&file), 0o600, "{} mode", file.display());
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(doc["issuer"], ISS, "{doc}");
    assert_eq!(doc["jwks"]["keys"][0]["kid"], "k1", "{doc}");
    assert_eq!(doc["jwks"]["keys"][0]["n"], key.jwk()["n"], "{doc}");
    let fetched_at = doc["fetched_at"].as_u64().expect("fetched_at");
    assert!(fetched_at.abs_diff(now()) < 60, "fetched_at {fetched_at}");

    // A cold start with the IdP gone: the persisted keys verify, readiness counts them.
    let gw = Gateway::start(&toml).await;
    let token = key.sign(&claims(ISS, "client", ""));
    let r = gw.get("/r", Some(&token)).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"ok":true}"#), "IdP down, key set from the cache: {r:?}");
    assert!(gw.jwks_refreshes("error") >= 1, "the fetch did fail");
    assert_eq!(from_cache_gauge(&gw).await, Some(1.0), "scopegate_jwks_from_cache");
    let ready = send_to(gw.admin_addr(), "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "/readyz with keys from the cache: {ready:?}");
    // A wrong signature is still refused.
    let other = TestKey::generate(Algorithm::RS256, "k1");
    assert_eq!(gw.get("/r", Some(&other.sign(&claims(ISS, "client", "")))).await.status, 401);
    gw.stop().await;
}

#[tokio::test]
async fn a_successful_fetch_replaces_the_persisted_keys() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (_, old_key, file) = populate(&cache, "").await;

    // The IdP is back with a rotated key: its keys win; the file follows.
    let new_key = TestKey::generate(Algorithm::RS256, "k2");
    let jwks = JwksServer::start(vec![new_key.jwk()]).await;
    let gw = Gateway::start(&cached_toml(&cache, &jwks.url, "")).await;
    assert_eq!(gw.get("/r", Some(&new_key.sign(&claims(ISS, "client", "")))).await.status, 200);
    assert_eq!(gw.get("/r", Some(&old_key.sign(&claims(ISS, "client", "")))).await.status, 401);
    assert_eq!(from_cache_gauge(&gw).await, Some(0.0), "scopegate_jwks_from_cache after a good fetch");
    bounded(10, "the file holds the new key set", async {
        loop {
            let doc: Option<Value> = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if doc.is_some_and(|d| d["jwks"]["keys"][0]["kid"] == "k2") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_persisted_key_set_older_than_the_maximum_age_is_not_served() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, file) = populate(&cache, "key_cache_max_age = \"10m\"").await;

    // Fetched 11 minutes ago: too old for a 10-minute maximum age.
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    doc["fetched_at"] = (now() - 660).into();
    std::fs::write(&file, doc.to_string()).expect("write");
    let gw = Gateway::start(&toml).await;
    let r = gw.get("/r", Some(&key.sign(&claims(ISS, "client", "")))).await;
    assert_eq!((r.status, r.body.as_str()), (503, UNAVAILABLE), "stale cache: {r:?}");
    assert_ne!(from_cache_gauge(&gw).await, Some(1.0), "scopegate_jwks_from_cache");
    assert_eq!(send_to(gw.admin_addr(), "GET", "/readyz", &[], "").await.status, 503);
    gw.stop().await;

    // The same file 5 minutes old is served.
    doc["fetched_at"] = (now() - 300).into();
    std::fs::write(&file, doc.to_string()).expect("write");
    let gw = Gateway::start(&toml).await;
    assert_eq!(gw.get("/r", Some(&key.sign(&claims(ISS, "client", "")))).await.status, 200, "5 minutes old");
    gw.stop().await;
}

#[tokio::test]
async fn a_corrupt_or_foreign_cache_file_is_ignored() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, file) = populate(&cache, "").await;
    let good = std::fs::read(&file).expect("read");
    let mut foreign: Value = serde_json::from_slice(&good).expect("json");
    foreign["issuer"] = "https://someone-else.test".into();

    for (what, contents) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("not JSON", b"\x00\xffgarbage".to_vec()),
        (
            "no usable key",
            serde_json::json!({"issuer": ISS, "fetched_at": now(), "jwks": {"keys": []}}).to_string().into_bytes(),
        ),
        ("another issuer's", foreign.to_string().into_bytes()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&file, &contents).expect("write");
        let gw = Gateway::start(&toml).await;
        let r = gw.get("/r", Some(&key.sign(&claims(ISS, "client", "")))).await;
        assert_eq!((r.status, r.body.as_str()), (503, UNAVAILABLE), "{what} cache file: {r:?}");
        assert_ne!(from_cache_gauge(&gw).await, Some(1.0), "{what}: scopegate_jwks_from_cache");
        // Still serving.
        assert_eq!(send_to(gw.admin_addr(), "GET", "/healthz", &[], "").await.status, 200, "{what}");
        gw.stop().await;
    }
    // The cache directory replaced by a file: writes fail, logged and counted, never fatal.
    std::fs::remove_dir_all(&cache).expect("rm");
    std::fs::write(&cache, b"not a directory").expect("write");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    let gw = Gateway::start(&cached_toml(&cache, &jwks.url, "")).await;
    assert_eq!(gw.get("/r", Some(&key.sign(&claims(ISS, "client", "")))).await.status, 200);
    bounded(10, "the failed write is counted", async {
        while gw.server().metrics().key_cache_writes.with_label_values(&["error"]).get() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    gw.stop().await;
}

/// The built-in issuer with a generated key (no `signing_key`), `key_cache_dir` set, client
/// `c` and `GET /book` needing `API/read`.
fn builtin_cached_toml(cache: &Path) -> String {
    server_toml("")
        + &auth_toml(&format!("key_cache_dir = {}", toml_str(&cache.display().to_string())))
        + &builtin_issuer_toml("https://builtin.scopegate.test", "token_ttl = \"600s\"")
        + &resource_server_toml("API", &["read"])
        + &client_toml("c", "client_secret = \"c-secret\"", &["API/read"])
        + &route_toml("/book", &["GET"], &[&scopes(&["API/read"]), &mock_response("application/json", "{}")])
}

async fn mint(gw: &Gateway) -> String {
    let auth = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "c:c-secret"));
    let r = send(
        gw,
        "POST",
        "/oauth2/token",
        &[("authorization", &auth), ("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status, 200, "token: {r:?}");
    let v: Value = serde_json::from_str(&r.body).expect("json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test]
async fn the_builtin_issuers_generated_key_survives_a_restart() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let toml = builtin_cached_toml(&cache);

    let gw = Gateway::start(&toml).await;
    let token = mint(&gw).await;
    assert_eq!(gw.get("/book", Some(&token)).await.status, 200);
    gw.stop().await;
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with(".pem"), "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    let pem = std::fs::read_to_string(&files[0]).expect("read");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");

    // A restart on the same config: the token minted before it still verifies.
    let gw = Gateway::start(&toml).await;
    let r = gw.get("/book", Some(&token)).await;
    assert_eq!(r.status, 200, "token minted before the restart: {r:?}");
    gw.stop().await;
    assert_eq!(std::fs::read_to_string(&files[0]).expect("read"), pem, "the key file is reused, not rewritten");

    // A corrupt key file is replaced by a new key (old tokens are refused), never fatal.
    std::fs::write(&files[0], "garbage").expect("write");
    let gw = Gateway::start(&toml).await;
    assert_eq!(gw.get("/book", Some(&token)).await.status, 401, "signed by the lost key");
    let fresh = mint(&gw).await;
    assert_eq!(gw.get("/book", Some(&fresh)).await.status, 200);
    gw.stop().await;
    assert!(std::fs::read_to_string(&files[0]).expect("read").starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[tokio::test]
async fn an_issuer_added_by_a_reload_while_the_idp_is_down_gets_the_persisted_keys() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, _) = populate(&cache, "").await;

    // Start without the issuer, then add it (IdP down) by a reload.
    let without_issuer = server_admin_toml("")
        + &auth_toml(&format!("key_cache_dir = {}", toml_str(&cache.display().to_string())))
        + &route_toml("/ping", &["GET"], &[PUBLIC, &mock_response("application/json", "{}")]);
    let gw = Gateway::start(&without_issuer).await;
    gw.rewrite(&toml);
    gw.reload().await.expect("reload");
    let r = gw.get("/r", Some(&key.sign(&claims(ISS, "client", "")))).await;
    assert_eq!(r.status, 200, "issuer added by a reload, IdP down: {r:?}");
    assert_eq!(from_cache_gauge(&gw).await, Some(1.0), "scopegate_jwks_from_cache");
    gw.stop().await;
}

#[tokio::test]
async fn the_binary_logs_that_it_serves_persisted_keys() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, _) = populate(&cache, "").await;

    let mut bin = Binary::start(&toml).await;
    let r = send_to(
        bin.addr,
        "GET",
        "/r",
        &[("authorization", &format!("Bearer {}", key.sign(&claims(ISS, "c", ""))))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", bin.output());
    let warned = bin.json_lines().into_iter().any(|line| {
        line.to_string().contains("serving the key set persisted in key_cache_dir")
            && line.to_string().contains("WARN")
            && line.to_string().contains(ISS)
    });
    assert!(warned, "no WARN line about the persisted key set:\n{}", bin.output());
    bin.signal("TERM");
    assert!(bin.wait_exit(Duration::from_secs(30)).await.is_some(), "scopegate did not exit");
}

#[tokio::test]
async fn persisted_keys_in_use_are_dropped_when_they_reach_the_maximum_age() {
    let cache_root = tempfile::tempdir().expect("tempdir");
    let cache = cache_root.path().join("keys");
    let (toml, key, _) = populate(&cache, "key_cache_max_age = \"5s\"").await;

    let gw = Gateway::start(&toml).await;
    let token = key.sign(&claims(ISS, "client", ""));
    assert_eq!(gw.get("/r", Some(&token)).await.status, 200, "young enough at start");
    // The IdP stays down: once the persisted set is 5 s old (checked at each retry), it goes.
    let last = bounded(30, "the persisted keys are dropped", async {
        loop {
            let r = gw.get("/r", Some(&token)).await;
            if r.status != 200 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!((last.status, last.body.as_str()), (503, UNAVAILABLE), "{last:?}");
    assert_eq!(from_cache_gauge(&gw).await, Some(0.0), "scopegate_jwks_from_cache");
    assert_eq!(send_to(gw.admin_addr(), "GET", "/readyz", &[], "").await.status, 503);
    gw.stop().await;
}
