//! Shared harness for the scopegate integration tests.
//!
//! Every test module starts with `use crate::common::*;` and uses a subset of this module:
//!
//! - [`TestKey`], [`claims`], [`now`]: signing keys and Cognito-like access tokens minted in the test;
//! - [`JwksServer`]: a real HTTP server publishing a JWKS that tests can change or break;
//! - [`Upstream`]: a real HTTP upstream that records every request it gets;
//! - [`Gateway`]: writes a `gateway.toml` into a temp dir and runs `scopegate::Server` on it
//!   (addresses, config file, reload, metrics);
//! - [`Binary`]: the same with the real `scopegate` binary (bound addresses read from its
//!   "scopegate listening" line, output captured, signals, killed and reaped on drop), and
//!   [`binary_command`] / [`run_bounded`] for its short-lived commands;
//! - [`server_toml`], [`issuer_toml`], [`upstream_toml`], [`route_toml`] and their lines: the
//!   config builder; the gateway's answers as constants ([`UNAUTHORIZED`], ...);
//! - [`send`], [`get`], [`raw`]: HTTP/1.1 clients (hyper, or raw bytes over TCP).
//!
//! All servers bind `127.0.0.1:0` and stop when their handle is dropped; every network wait is
//! bounded by a timeout.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

pub use jsonwebtoken::Algorithm;

/// The issuer used by most tests.
pub const ISS: &str = "https://issuer.test/pool";

// The gateway's answers, as the tests expect them byte for byte.
pub const UNAUTHORIZED: &str = r#"{"message":"Unauthorized"}"#;
pub const FORBIDDEN: &str = r#"{"message":"Forbidden"}"#;
pub const BAD_REQUEST: &str = r#"{"message":"Bad Request"}"#;
pub const NOT_FOUND: &str = r#"{"message":"Not Found"}"#;
pub const METHOD_NOT_ALLOWED: &str = r#"{"message":"Method Not Allowed"}"#;
pub const UNAVAILABLE: &str = r#"{"message":"Service Unavailable"}"#;
/// `www-authenticate` of a request without a token.
pub const BEARER: &str = "Bearer";
/// `www-authenticate` of a refused token.
pub const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
/// `www-authenticate` of a token without the route's scopes.
pub const INSUFFICIENT_SCOPE: &str = r#"Bearer error="insufficient_scope""#;

/// Bound on one request/response exchange made with [`send`] / [`get`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one exchange made with [`raw`].
const RAW_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on `scopegate::Server::start` (it waits up to ~10 s for the first JWKS loads).
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on `scopegate::Server::shutdown`.
const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type of the test servers.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------------------------
// Time, base64
// ---------------------------------------------------------------------------------------------

/// `fut`'s output; panics naming `what` if it takes more than `secs` seconds.
pub async fn bounded<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs}s"),
    }
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970").as_secs()
}

/// base64url without padding, as used in JWTs and JWKs.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A freshly generated signing key with its `kid` and JWS algorithm.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    signer: Signer,
}

impl TestKey {
    /// RS256/RS384/RS512/PS256/PS384/PS512 (RSA-2048), ES256 (P-256), ES384 (P-384), EdDSA (Ed25519).
    pub fn generate(alg: Algorithm, kid: &str) -> TestKey {
        let signer = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA key")),
            Algorithm::ES256 => {
                Signer::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate P-256 key"))
            }
            Algorithm::ES384 => {
                Signer::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).expect("generate P-384 key"))
            }
            Algorithm::EdDSA => Signer::Ed(Ed25519KeyPair::generate().expect("generate Ed25519 key")),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                panic!("TestKey is for asymmetric keys; HMAC tokens are built by hand")
            }
        };
        TestKey { kid: kid.to_string(), alg, signer }
    }

    /// The public JWK: kty and key material, plus `kid`, `alg` and `use = "sig"`.
    pub fn jwk(&self) -> Value {
        let mut jwk = match &self.signer {
            Signer::Rsa(kp) => {
                let public = kp.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::Ec(kp) => {
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = kp.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64url(&point[1..1 + half]),
                    "y": b64url(&point[1 + half..]),
                })
            }
            Signer::Ed(kp) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url(kp.public_key().as_ref()),
            }),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(alg_name(self.alg));
        jwk["use"] = json!("sig");
        jwk
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) document.
    pub fn public_key_pem(&self) -> String {
        let b64 = STANDARD.encode(self.public_key_spki_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(kp) => kp.public_key().as_der().expect("RSA SPKI").as_ref().to_vec(),
            Signer::Ec(kp) => kp.public_key().as_der().expect("EC SPKI").as_ref().to_vec(),
            Signer::Ed(kp) => kp.public_key().as_der().expect("Ed SPKI").as_ref().to_vec(),
        }
    }

    /// A signed JWT with header `{"alg": <alg>, "kid": <kid>, "typ": "JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"});
        self.sign_with_header(&header, claims)
    }

    /// A JWT with `header` used verbatim, signed with this key's algorithm (whatever the
    /// header's `alg` says).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!("{}.{}", b64url(header.to_string()), b64url(claims.to_string()));
        let signature = self.sign_bytes(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(signature))
    }

    /// Raw JWS signature of `msg` with this key and algorithm.
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(kp) => {
                let encoding: &'static dyn sig::RsaEncoding = match self.alg {
                    Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                    Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                    Algorithm::PS512 => &sig::RSA_PSS_SHA512,
                    other => unreachable!("RSA key with {other:?}"),
                };
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(encoding, &rng, msg, &mut out).expect("RSA sign");
                out
            }
            Signer::Ec(kp) => kp.sign(&rng, msg).expect("ECDSA sign").as_ref().to_vec(),
            Signer::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }
}

/// The JWS name of an algorithm ("RS256", "EdDSA", ...).
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Valid access-token claims shaped like Cognito's: iss, sub = client_id, client_id,
/// token_use = "access", scope (space-separated), iat = now, exp = now + 3600, jti, version = 2.
pub fn claims(iss: &str, client_id: &str, scope: &str) -> Value {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let t = now();
    json!({
        "iss": iss,
        "sub": client_id,
        "client_id": client_id,
        "token_use": "access",
        "scope": scope,
        "iat": t,
        "exp": t + 3600,
        "jti": format!("jti-{t}-{}", JTI.fetch_add(1, Ordering::Relaxed)),
        "version": 2,
    })
}

// ---------------------------------------------------------------------------------------------
// Small HTTP servers
// ---------------------------------------------------------------------------------------------

/// Aborts a server's accept loop, and with it every connection task, when dropped.
pub struct ServerTask(AbortHandle);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A 127.0.0.1 address that refuses connections for as long as the returned socket lives: it
/// is bound (so nothing else can take the port meanwhile) and never listens.
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local_addr");
    (socket, addr)
}

/// Binds 127.0.0.1:0.
pub async fn bind_local() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Serves HTTP/1.1 (and h2c) with upgrades on `listener`, calling `handler` for each request.
/// Connection tasks live in a JoinSet owned by the accept loop, so aborting the loop stops all.
pub fn spawn_http_server<F, Fut>(listener: TcpListener, handler: F) -> ServerTask
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handler = Arc::clone(&handler);
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let response = handler(req);
                            async move { Ok::<_, Infallible>(response.await) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    ServerTask(task.abort_handle())
}

fn full_body(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed_unsync()
}

fn empty_body() -> RespBody {
    full_body(Bytes::new())
}

pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = StatusCode::from_u16(status).expect("valid status code");
    if let Ok(value) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, value);
    }
    resp
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// JWKS server
// ---------------------------------------------------------------------------------------------

enum JwksAnswer {
    Keys(Vec<Value>),
    Raw(u16, String),
}

/// A JWKS endpoint. Answers every path (the advertised one is `/.well-known/jwks.json`) with
/// 200 `{"keys":[...]}`, or with the status and body set by [`JwksServer::set_raw`].
pub struct JwksServer {
    /// `http://127.0.0.1:PORT/.well-known/jwks.json`
    pub url: String,
    pub addr: SocketAddr,
    answer: Arc<Mutex<JwksAnswer>>,
    hits: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> JwksServer {
        let (listener, addr) = bind_local().await;
        let answer = Arc::new(Mutex::new(JwksAnswer::Keys(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = {
            let answer = Arc::clone(&answer);
            let hits = Arc::clone(&hits);
            spawn_http_server(listener, move |_req| {
                hits.fetch_add(1, Ordering::SeqCst);
                let resp = match &*lock(&answer) {
                    JwksAnswer::Keys(keys) => response(200, "application/json", json!({ "keys": keys }).to_string()),
                    JwksAnswer::Raw(status, body) => response(*status, "application/json", body.clone()),
                };
                async move { resp }
            })
        };
        JwksServer { url: format!("http://{addr}/.well-known/jwks.json"), addr, answer, hits, _task: task }
    }

    /// Publish these keys (also undoes [`JwksServer::set_raw`]).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *lock(&self.answer) = JwksAnswer::Keys(keys);
    }

    /// Answer `status` with `body` (content-type application/json) instead of the keys.
    pub fn set_raw(&self, status: u16, body: &str) {
        *lock(&self.answer) = JwksAnswer::Raw(status, body.to_string());
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request-target as received: path + query.
    pub target: String,
    /// Lower-case names. Order: names in order of first appearance, repeated names grouped.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (for "/echo..." this grows while the body streams).
    pub body_len: u64,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A real HTTP/1.1 (and h2c) upstream on 127.0.0.1:0 that records every request it gets.
///
/// Default answer: 200, content-type application/json, body `{"upstream":"<name>","target":"<target>"}`.
/// Special targets: "/slow..." sleeps 3 s before answering; "/big?bytes=N" streams N bytes of 'x'
/// in 64 KiB chunks; "/echo..." streams the request body back; "/status/NNN" answers status NNN;
/// "/ws..." with an `Upgrade` header answers 101 and then echoes raw bytes.
pub struct Upstream {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub addr: SocketAddr,
    pub name: String,
    log: Arc<Mutex<Vec<Received>>>,
    /// Dropping the sender ends the upgraded (WebSocket) echo tasks.
    _shutdown: watch::Sender<()>,
    _task: ServerTask,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let (listener, addr) = bind_local().await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, shutdown_rx) = watch::channel(());
        let task = {
            let log = Arc::clone(&log);
            let name = name.to_string();
            spawn_http_server(listener, move |req| {
                upstream_handle(name.clone(), Arc::clone(&log), shutdown_rx.clone(), req)
            })
        };
        Upstream { url: format!("http://{addr}"), addr, name: name.to_string(), log, _shutdown: shutdown, _task: task }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.log).clone()
    }

    /// The most recent request.
    pub fn last(&self) -> Option<Received> {
        lock(&self.log).last().cloned()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        lock(&self.log).len()
    }
}

/// Waits (bounded: 5 s) until the upstream has recorded `n` requests.
pub async fn wait_count(up: &Upstream, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.count() < n {
        assert!(tokio::time::Instant::now() < deadline, "upstream recorded {} requests, want {n}", up.count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

static XS: [u8; 65536] = [b'x'; 65536];

async fn upstream_handle(
    name: String,
    log: Arc<Mutex<Vec<Received>>>,
    mut shutdown: watch::Receiver<()>,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let target = req.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| req.uri().to_string());
    let path = target.split('?').next().unwrap_or_default().to_string();
    let query = target.split_once('?').map(|(_, q)| q.to_string());
    let mut record = Received {
        method: req.method().to_string(),
        target: target.clone(),
        headers: header_pairs(req.headers()),
        body_len: 0,
    };

    // "/ws...": 101 Switching Protocols, then echo raw bytes on the upgraded connection.
    if path.starts_with("/ws") && req.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = req.headers()[hyper::header::UPGRADE].clone();
        let accept = req.headers().get("sec-websocket-key").map(|key| websocket_accept(key.as_bytes()));
        lock(&log).push(record);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            tokio::select! {
                _ = async {
                    let Ok(upgraded) = on_upgrade.await else { return };
                    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                } => {}
                _ = shutdown.changed() => {}
            }
        });
        let mut resp = Response::new(empty_body());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(hyper::header::UPGRADE, upgrade);
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(accept) = accept {
            let accept = HeaderValue::from_str(&accept).expect("base64 is a valid header value");
            headers.insert("sec-websocket-accept", accept);
        }
        return resp;
    }

    // "/echo...": stream the request body back, counting bytes as they pass.
    if path.starts_with("/echo") {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        let index = {
            let mut log = lock(&log);
            log.push(record);
            log.len() - 1
        };
        let body = req
            .into_body()
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    lock(&log)[index].body_len += data.len() as u64;
                }
                frame
            })
            .map_err(BoxError::from)
            .boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(CONTENT_TYPE, content_type);
        return resp;
    }

    // Everything else: read the whole body first, then record, then answer.
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            record.body_len += data.len() as u64;
        }
    }
    lock(&log).push(record);

    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    if path.starts_with("/big") {
        let total: usize = query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let chunks = (0..total).step_by(XS.len()).map(move |offset| {
            let len = XS.len().min(total - offset);
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(&XS[..len])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        let mut resp = Response::new(body);
        let octets = HeaderValue::from_static("application/octet-stream");
        resp.headers_mut().insert(CONTENT_TYPE, octets);
        return resp;
    }

    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..1000).contains(s))
        .unwrap_or(200);
    if status == 204 || status == 304 {
        let mut resp = Response::new(empty_body());
        *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
        return resp;
    }
    let body = json!({ "upstream": name, "target": target }).to_string();
    response(status, "application/json", body)
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    STANDARD.encode(digest.as_ref())
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// A running `scopegate::Server` on a `gateway.toml` written to a fresh temp dir: its
/// addresses, its config file and directory (to edit and [`Gateway::reload`]), its metrics.
pub struct Gateway {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The admin listener, when the config has `admin_listen`.
    pub admin: Option<SocketAddr>,
    /// The path the server was started on (it may be a symlink).
    pub config: PathBuf,
    /// Holds `gateway.toml` and any extra files; deleted on drop.
    pub dir: tempfile::TempDir,
    server: Option<scopegate::Server>,
}

impl Gateway {
    /// Starts the gateway; panics with the error text (and the config) on failure.
    pub async fn start(toml: &str) -> Gateway {
        Self::start_with_files(toml, &[]).await
    }

    /// Starts the gateway; `Err` holds the error's Display text.
    pub async fn try_start(toml: &str) -> Result<Gateway, String> {
        Self::try_start_with_files(toml, &[]).await
    }

    /// Like [`Gateway::start`], also writing `files` (paths relative to the config's directory,
    /// parent directories created) before the gateway starts.
    pub async fn start_with_files(toml: &str, files: &[(&str, &str)]) -> Gateway {
        match Self::try_start_with_files(toml, files).await {
            Ok(gateway) => gateway,
            Err(e) => panic!("gateway failed to start: {e}\n--- gateway.toml ---\n{toml}"),
        }
    }

    /// Like [`Gateway::try_start`], with extra files as in [`Gateway::start_with_files`].
    pub async fn try_start_with_files(toml: &str, files: &[(&str, &str)]) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, toml).map_err(|e| format!("{}: {e}", config.display()))?;
        Self::try_start_at(dir, config).await
    }

    /// Starts the server on `config`, which the caller laid out inside `dir` (e.g. a
    /// ConfigMap-like tree of symlinks); panics with the error and the file on failure.
    pub async fn start_at(dir: tempfile::TempDir, config: PathBuf) -> Gateway {
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        match Self::try_start_at(dir, config).await {
            Ok(gateway) => gateway,
            Err(e) => panic!("gateway failed to start: {e}\n--- gateway.toml ---\n{text}"),
        }
    }

    async fn try_start_at(dir: tempfile::TempDir, config: PathBuf) -> Result<Gateway, String> {
        let started = tokio::time::timeout(GATEWAY_START_TIMEOUT, scopegate::Server::start(&config))
            .await
            .map_err(|_| format!("Server::start did not return within {GATEWAY_START_TIMEOUT:?}"))?;
        let server = started.map_err(|e| e.to_string())?;
        let addr = server.local_addr();
        let admin = server.admin_addr();
        Ok(Gateway { addr, url: format!("http://{addr}"), admin, config, dir, server: Some(server) })
    }

    /// Path of the gateway.toml in use.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// `name` relative to the config's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces `name` (relative to the config's directory; parents created) atomically: a
    /// temp file renamed over it.
    pub fn write(&self, name: &str, contents: &str) {
        replace_by_rename(&self.path(name), contents);
    }

    /// Replaces gateway.toml the way editors do: write a temp file, rename it over.
    pub fn rewrite(&self, toml: &str) {
        replace_by_rename(&self.config, toml);
    }

    /// The server, for a test that shuts it down itself (then [`Gateway::stop`] does nothing).
    pub fn take_server(&mut self) -> scopegate::Server {
        self.server.take().expect("server is running")
    }

    /// The running server.
    pub fn server(&self) -> &scopegate::Server {
        self.server.as_ref().expect("server is running")
    }

    /// The admin listener's address; panics when the config has no `admin_listen`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin_listen is set, so admin_addr is Some")
    }

    /// Re-reads the config now (what SIGHUP does), bounded; `Err` holds the rejection.
    pub async fn reload(&self) -> Result<(), String> {
        tokio::time::timeout(GATEWAY_START_TIMEOUT, self.server().reload())
            .await
            .unwrap_or_else(|_| panic!("reload did not finish within {GATEWAY_START_TIMEOUT:?}"))
            .map_err(|e| e.to_string())
    }

    /// The server's metrics in the Prometheus text format (as `/metrics` shows them).
    pub fn metrics_text(&self) -> String {
        self.server().metrics().render()
    }

    /// `GET /metrics` on the admin listener; asserts a 200 text/plain answer.
    pub async fn admin_metrics(&self) -> String {
        let resp = send_to(self.admin_addr(), "GET", "/metrics", &[], "").await;
        assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
        let ct = resp.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "GET /metrics content-type: {ct}");
        resp.body
    }

    /// `scopegate_config_reloads_total{result}`.
    pub fn reloads(&self, result: &str) -> u64 {
        self.server().metrics().config_reloads.with_label_values(&[result]).get()
    }

    /// `scopegate_jwks_refreshes_total{issuer=ISS, result}`.
    pub fn jwks_refreshes(&self, result: &str) -> u64 {
        self.server().metrics().jwks_refreshes.with_label_values(&[ISS, result]).get()
    }

    /// GET `path` on a fresh connection; `token` is sent as `authorization: Bearer <token>`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        get(self, path, token).await
    }

    /// Shuts the server down (bounded; panics if it does not stop in time), then removes the
    /// temp dir.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let stopped = tokio::time::timeout(GATEWAY_STOP_TIMEOUT, server.shutdown()).await;
            assert!(stopped.is_ok(), "Server::shutdown did not finish within {GATEWAY_STOP_TIMEOUT:?}");
        }
    }
}

/// A gateway.toml prefix: `[server] listen = "127.0.0.1:0"` and one `[[auth.issuers]]` with
/// `issuer`, `jwks_uri` and `algorithms`. The issuer table is left open, so lines appended right
/// after it (e.g. `audiences = [...]`) extend it; then tests append `[upstreams.*]` and `[[routes]]`.
pub fn base_toml(iss: &str, jwks_url: &str, algs: &[&str]) -> String {
    server_toml("") + &issuer_toml(iss, &jwks_uri(jwks_url), algs, "")
}

/// A TOML basic string literal.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn toml_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// `[server]` on 127.0.0.1:0 with `extra` lines.
pub fn server_toml(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n")
}

/// `[server]` on 127.0.0.1:0 with the admin listener on 127.0.0.1:0 too, and `extra` lines.
pub fn server_admin_toml(extra: &str) -> String {
    server_toml(&format!("admin_listen = \"127.0.0.1:0\"\n{extra}"))
}

/// One `[[auth.issuers]]` table. `source` is its key-source line ([`jwks_uri`], `jwks_file = ...`,
/// ...); `algs` empty leaves `algorithms` at its default.
pub fn issuer_toml(iss: &str, source: &str, algs: &[&str], extra: &str) -> String {
    let algorithms = if algs.is_empty() { String::new() } else { format!("algorithms = {}\n", toml_list(algs)) };
    format!("[[auth.issuers]]\nissuer = {}\n{source}\n{algorithms}{extra}\n\n", toml_str(iss))
}

/// The key-source line `jwks_uri = "<url>"`.
pub fn jwks_uri(url: &str) -> String {
    format!("jwks_uri = {}", toml_str(url))
}

/// One `[upstreams.<name>]` table.
pub fn upstream_toml(name: &str, url: &str) -> String {
    format!("[upstreams.{name}]\nurl = {}\n\n", toml_str(url))
}

/// `[auth]` with `lines`.
pub fn auth_toml(lines: &str) -> String {
    format!("[auth]\n{lines}\n\n")
}

/// The built-in issuer: `[issuer]` named `issuer`, with `lines` (`token_ttl`, `signing_key`, ...).
pub fn builtin_issuer_toml(issuer: &str, lines: &str) -> String {
    format!("[issuer]\nissuer = {}\n{lines}\n\n", toml_str(issuer))
}

/// One `[[issuer.resource_servers]]` of the built-in issuer.
pub fn resource_server_toml(identifier: &str, scopes: &[&str]) -> String {
    format!("[[issuer.resource_servers]]\nidentifier = {}\nscopes = {}\n\n", toml_str(identifier), toml_list(scopes))
}

/// One `[[issuer.clients]]` of the built-in issuer; `secret_line` is `client_secret_hash = ...`
/// or `client_secret = ...`.
pub fn client_toml(id: &str, secret_line: &str, allowed_scopes: &[&str]) -> String {
    format!(
        "[[issuer.clients]]\nclient_id = {}\n{secret_line}\nallowed_scopes = {}\n\n",
        toml_str(id),
        toml_list(allowed_scopes)
    )
}

/// One `[[routes]]` table: `path`, `methods` (none: the line is left out), then `lines` (e.g.
/// [`forward_to`], [`scopes`], [`PUBLIC`], [`mock_response`]).
pub fn route_toml(path: &str, methods: &[&str], lines: &[&str]) -> String {
    let mut out = format!("[[routes]]\npath = {}\n", toml_str(path));
    if !methods.is_empty() {
        out.push_str(&format!("methods = {}\n", toml_list(methods)));
    }
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A route line: no token needed.
pub const PUBLIC: &str = "auth = \"none\"";

/// A route line: forward to `[upstreams.<name>]`.
pub fn forward_to(upstream: &str) -> String {
    format!("upstream = {}", toml_str(upstream))
}

/// A route line: the token needs one of these scopes.
pub fn scopes(any_of: &[&str]) -> String {
    format!("scopes = {}", toml_list(any_of))
}

/// A route line: answer 200 with `body` as `content_type` (a mock integration).
pub fn mock_response(content_type: &str, body: &str) -> String {
    response_line(200, content_type, body)
}

/// A route line: answer `status` with `body` (a mock integration); an empty `content_type`
/// leaves it at its default.
pub fn response_line(status: u16, content_type: &str, body: &str) -> String {
    let content_type =
        if content_type.is_empty() { String::new() } else { format!(", content_type = {}", toml_str(content_type)) };
    format!("response = {{ status = {status}{content_type}, body = {} }}", toml_str(body))
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A response: status, headers (lower-case names) and body (lossy UTF-8).
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One HTTP/1.1 request to the gateway over a fresh connection (hyper client). A `host` header
/// is added unless `headers` has one. Panics if there is no complete response within 10 s.
pub async fn send(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    send_to(gw.addr, method, path, headers, body).await
}

/// [`send`] to any address.
pub async fn send_to(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_send_to(addr, method, path, headers, body).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`send_to`] that returns connect, protocol and timeout failures as `Err` instead of
/// panicking (for probes that expect them, e.g. while a server stops).
pub async fn try_send_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let method_value = hyper::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut builder = Request::builder().method(method_value).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            builder = builder.header(hyper::header::HOST, addr.to_string());
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|e| panic!("cannot build request {method} {path}: {e}"));
        let resp = sender.send_request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let resp = read_resp(resp).await.map_err(|e| format!("{method} {path}: {e}"));
        conn.abort();
        resp
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path}: no complete response within {HTTP_TIMEOUT:?}")))
}

/// A hyper response (HTTP/1.1 or h2), body read in full, as a [`Resp`].
pub async fn read_resp(resp: Response<Incoming>) -> Result<Resp, String> {
    let status = resp.status().as_u16();
    let headers = header_pairs(resp.headers());
    let body = resp.into_body().collect().await.map_err(|e| format!("reading body: {e}"))?.to_bytes();
    Ok(Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// GET `path`; `token` is sent as `authorization: Bearer <token>`.
pub async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Resp {
    match token {
        Some(token) => {
            let auth = format!("Bearer {token}");
            send(gw, "GET", path, &[("authorization", &auth)], "").await
        }
        None => send(gw, "GET", path, &[], "").await,
    }
}

fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), value)
        })
        .collect()
}

/// Raw TCP: writes `raw` verbatim, then reads until the peer closes or one full response
/// (content-length / chunked; 101, 204 and 304 have no body; 1xx interim answers are skipped)
/// has arrived, at most 5 s. A response without a length is read until close, so such requests
/// should send `connection: close`. If no response head arrived at all (e.g. the peer just
/// closed), the result has `status == 0` and the bytes received as `body`.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> Resp {
    let deadline = tokio::time::Instant::now() + RAW_TIMEOUT;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The peer may answer and close before reading everything (e.g. 431): keep reading anyway.
    let _ = tokio::time::timeout_at(deadline, stream.write_all(raw)).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(resp) = parse_response(&buf, false) {
            return resp;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break, // closed, reset or timed out
        }
    }
    parse_response(&buf, true).unwrap_or_else(|| Resp {
        status: 0,
        headers: Vec::new(),
        body: String::from_utf8_lossy(&buf).into_owned(),
    })
}

/// Parses one complete HTTP/1.x response from `buf`; `None` while incomplete. With `eof`, a
/// response whose head arrived is returned with whatever body arrived.
fn parse_response(buf: &[u8], eof: bool) -> Option<Resp> {
    let mut start = 0;
    loop {
        let head_end = start + find(&buf[start..], b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[start..head_end]);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body_start = head_end + 4;
        if (100..200).contains(&status) && status != 101 {
            start = body_start; // interim response, e.g. 100 Continue
            continue;
        }
        let rest = &buf[body_start..];
        let chunked =
            find_header(&headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let body: Vec<u8> = if matches!(status, 101 | 204 | 304) {
            Vec::new()
        } else if chunked {
            match decode_chunked(rest) {
                Some(body) => body,
                None if eof => rest.to_vec(),
                None => return None,
            }
        } else if let Some(len) = find_header(&headers, "content-length") {
            let len: usize = len.parse().ok()?;
            if rest.len() >= len {
                rest[..len].to_vec()
            } else if eof {
                rest.to_vec()
            } else {
                return None;
            }
        } else if eof {
            rest.to_vec()
        } else {
            return None;
        };
        return Some(Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() });
    }
}

/// Decodes a complete chunked body; `None` while incomplete.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_line = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Optional trailers, then an empty line.
            let complete = data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some();
            return complete.then_some(body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Prometheus text parsing
// ---------------------------------------------------------------------------------------------

/// One sample line: `name{k="v",...} value`.
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, BTreeMap::new(), value));
    };
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    let mut labels = BTreeMap::new();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        chars.next(); // '='
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, labels, value))
}

pub fn samples(text: &str) -> Vec<(&str, BTreeMap<String, String>, f64)> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_sample).collect()
}

/// The value of the series `name` whose label set is exactly `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples(text).into_iter().find(|(n, l, _)| *n == name && *l == want).map(|(_, _, v)| v)
}

/// The sum over every series `name` whose labels include `subset`.
pub fn metric_sum(text: &str, name: &str, subset: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| *n == name && subset.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[track_caller]
pub fn assert_metric(text: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = metric(text, name, labels);
    assert_eq!(got, Some(want), "{name}{labels:?}\n--- /metrics ---\n{text}");
}

/// The value of one series written out (`name{labels}` exactly as exposed); 0 when absent.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' ').and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// TLS and raw connections
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for localhost / 127.0.0.1 with this common name and serial:
/// (cert PEM, key PEM, cert DER).
pub fn self_signed(cn: &str, serial: u64) -> (String, String, rustls_pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.self_signed(&key).expect("self-signed cert");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// A TLS client trusting only `trusted`, offering `alpn`.
pub fn tls_client(
    trusted: &[&rustls_pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// TCP to `addr`, then a TLS handshake for `localhost`, bounded by 10 s.
pub async fn tls_connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let go = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(HTTP_TIMEOUT, go).await.map_err(|_| "TLS connect timed out".to_string())?
}

/// Reads a response head from `s`: (the head without its blank line, the bytes after it).
/// Panics if the peer closes first; callers bound it (see [`bounded`]).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            return (String::from_utf8_lossy(&buf[..i]).into_owned(), buf[i + 4..].to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read response head");
        assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads (and discards) until the peer closes the connection; true when it did within `bound`.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, bound: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let drained = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, drained).await.is_ok()
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// Bound on the binary's start-up (until it logs "scopegate listening").
const BINARY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the wait for the process to be gone once killed (on drop).
const BINARY_REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one short-lived command (`check`, `import`, `token`, ...).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a [`Binary`]'s stdout and stderr go.
enum Sink {
    /// Two pipes, each drained by a thread into its buffer (the threads end at EOF).
    Pipes { stdout: Arc<Mutex<Vec<u8>>>, stderr: Arc<Mutex<Vec<u8>>>, drains: Vec<std::thread::JoinHandle<()>> },
    /// One file (both streams), e.g. a log written next to the config.
    File(PathBuf),
}

/// How to run a [`Binary`]; `Binary::options(toml)...start()`.
pub struct BinaryOptions {
    toml: String,
    config: String,
    log_file: Option<String>,
    rust_log: String,
    files: Vec<(String, String)>,
    settle: Duration,
}

impl BinaryOptions {
    /// The config's path relative to the temp dir (default `gateway.toml`; parents created).
    pub fn config_at(mut self, relative: &str) -> Self {
        self.config = relative.to_string();
        self
    }

    /// stdout and stderr go to this file (relative to the temp dir) instead of pipes.
    pub fn log_file(mut self, relative: &str) -> Self {
        self.log_file = Some(relative.to_string());
        self
    }

    /// `RUST_LOG` (default `info`). The `scopegate` target must log at info: the harness reads
    /// the bound addresses from the "scopegate listening" line.
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// Extra files written before start (paths relative to the config's directory).
    pub fn file(mut self, relative: &str, contents: &str) -> Self {
        self.files.push((relative.to_string(), contents.to_string()));
        self
    }

    /// Time to wait after the "listening" line: the binary installs its SIGTERM / SIGHUP
    /// handlers right after it, and a signal that arrives before them ends the process.
    pub fn settle(mut self, wait: Duration) -> Self {
        self.settle = wait;
        self
    }

    pub async fn start(self) -> Binary {
        Binary::start_with(self).await
    }
}

/// The `scopegate` binary serving a config written into a fresh temp dir, with `listen` (and
/// `admin_listen`) on `127.0.0.1:0`: the bound addresses are read from the "scopegate listening"
/// line it logs (JSON or text). Its output is kept for the test to search. Killed and reaped
/// (bounded) on drop if still running.
pub struct Binary {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config has `admin_listen`.
    pub admin: Option<SocketAddr>,
    /// Holds the config and any extra files; deleted on drop.
    pub dir: tempfile::TempDir,
    config: PathBuf,
    sink: Sink,
    exit: Option<std::process::ExitStatus>,
}

impl Binary {
    /// Runs the binary on `toml` (`gateway.toml` in a fresh temp dir, `RUST_LOG=info`, output
    /// captured); panics with the output if it exits or does not listen within 30 s.
    pub async fn start(toml: &str) -> Binary {
        Binary::options(toml).start().await
    }

    /// Options for [`Binary::start`]; finish with [`BinaryOptions::start`].
    pub fn options(toml: &str) -> BinaryOptions {
        BinaryOptions {
            toml: toml.to_string(),
            config: "gateway.toml".to_string(),
            log_file: None,
            rust_log: "info".to_string(),
            files: Vec::new(),
            settle: Duration::from_millis(300),
        }
    }

    async fn start_with(o: BinaryOptions) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join(&o.config);
        write_file(&config, &o.toml);
        let config_dir = config.parent().expect("config dir").to_path_buf();
        for (name, contents) in &o.files {
            write_file(&config_dir.join(name), contents);
        }
        let mut cmd = binary_command();
        cmd.arg("--config").arg(&config).env("RUST_LOG", &o.rust_log).current_dir(dir.path());
        let sink = match &o.log_file {
            Some(name) => {
                let path = dir.path().join(name);
                let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                cmd.stdout(file.try_clone().expect("clone log handle")).stderr(file);
                Sink::File(path)
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                Sink::Pipes { stdout: Arc::default(), stderr: Arc::default(), drains: Vec::new() }
            }
        };
        let mut child = cmd.spawn().expect("spawn scopegate");
        let mut sink = sink;
        if let Sink::Pipes { stdout, stderr, drains } = &mut sink {
            drains.push(drain(child.stdout.take().expect("stdout pipe"), Arc::clone(stdout)));
            drains.push(drain(child.stderr.take().expect("stderr pipe"), Arc::clone(stderr)));
        }
        let unbound: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut bin = Binary { child, addr: unbound, admin: None, dir, config, sink, exit: None };
        let deadline = tokio::time::Instant::now() + BINARY_START_TIMEOUT;
        loop {
            if let Some(status) = bin.try_wait() {
                panic!("scopegate exited at start ({status}):\n{}\n--- config ---\n{}", bin.output(), o.toml);
            }
            if let Some((addr, admin)) = bin.stdout().lines().find_map(listening_line) {
                bin.addr = addr;
                bin.admin = admin;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "scopegate did not log its addresses within {BINARY_START_TIMEOUT:?}:\n{}",
                bin.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(o.settle).await;
        bin
    }

    /// The admin listener's address; panics when the config has no `admin_listen`.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("the config has admin_listen")
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// What the process wrote to stdout so far (with a log file: the whole file).
    pub fn stdout(&self) -> String {
        match &self.sink {
            Sink::Pipes { stdout, .. } => String::from_utf8_lossy(&lock(stdout)).into_owned(),
            Sink::File(path) => read_lossy(path),
        }
    }

    /// What the process wrote to stderr so far (empty with a log file: it is in [`Binary::stdout`]).
    pub fn stderr(&self) -> String {
        match &self.sink {
            Sink::Pipes { stderr, .. } => String::from_utf8_lossy(&lock(stderr)).into_owned(),
            Sink::File(_) => String::new(),
        }
    }

    /// stdout and stderr, labelled, for failure messages.
    pub fn output(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout(), self.stderr())
    }

    /// stdout then stderr, unlabelled, as one log.
    pub fn log(&self) -> String {
        self.stdout() + &self.stderr()
    }

    /// The stdout lines that are JSON objects.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
    }

    /// The JSON access-log line of the request with this `x-request-id`, waiting (bounded) for it.
    pub async fn access_line(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found =
                self.json_lines().into_iter().find(|v| v["target"] == "scopegate::access" && v["request_id"] == id);
            if let Some(line) = found {
                return line;
            }
            assert!(std::time::Instant::now() < deadline, "no access line for {id}:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `sig` ("TERM", "INT", "HUP", ...) with kill(1); panics if kill fails.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -{sig}: {e}"));
        assert!(status.success(), "kill -{sig} {}: {status}", self.pid());
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                // Let the drain threads read what the process wrote last (up to EOF).
                if let Sink::Pipes { drains, .. } = &self.sink {
                    let until = tokio::time::Instant::now() + BINARY_REAP_TIMEOUT;
                    while !drains.iter().all(|d| d.is_finished()) && tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that); the exit status,
    /// `None` if it had to be killed.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if self.running() {
            self.signal("TERM");
        }
        let status = self.wait_exit(limit).await;
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// SIGTERM; asserts the process drains and exits 0 within 20 s.
    pub async fn stop(mut self) {
        let status = self.terminate(Duration::from_secs(20)).await;
        let status = status.unwrap_or_else(|| panic!("no exit within 20 s of SIGTERM:\n{}", self.output()));
        assert!(status.success(), "exit status {status}:\n{}", self.output());
    }

    fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = self.child.kill();
        let deadline = std::time::Instant::now() + BINARY_REAP_TIMEOUT;
        while self.try_wait().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A `Vm*` line of the process's /proc status ("VmRSS", "VmHWM", ...), in KiB.
    pub fn vm_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `scopegate` binary as a command: no `SCOPEGATE_CONFIG` from the test's environment,
/// no colours, stdin from /dev/null.
pub fn binary_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"));
    cmd.env_remove("SCOPEGATE_CONFIG").env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end with stdout and stderr captured, bounded by [`CLI_TIMEOUT`] (killed
/// after that).
pub fn run_bounded(mut cmd: std::process::Command) -> std::process::Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn scopegate");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.expect("scopegate output"),
        Err(_) => {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("scopegate {cmd:?}: no exit within {CLI_TIMEOUT:?}")
        }
    }
}

/// Runs `cmd` (e.g. from [`binary_command`]) to its end with stdout and stderr captured and
/// `stdin` fed to it, bounded by [`CLI_TIMEOUT`] (killed after that).
pub async fn run_command(cmd: std::process::Command, stdin: Option<&[u8]>) -> std::process::Output {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std());
    let run = async {
        let mut child = cmd.spawn().expect("spawn scopegate");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(input).await.expect("write stdin");
            drop(pipe);
        }
        child.wait_with_output().await.expect("wait for scopegate")
    };
    tokio::time::timeout(CLI_TIMEOUT, run).await.unwrap_or_else(|_| panic!("{what}: no exit within {CLI_TIMEOUT:?}"))
}

/// An `application/x-www-form-urlencoded` body of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn drain(mut from: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&into).extend_from_slice(&buf[..n]);
        }
    })
}

/// The (data, admin) addresses of a "scopegate listening" line, JSON or text format.
pub fn listening_line(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let (addr, admin) = if let Ok(v) = serde_json::from_str::<Value>(line) {
        if v["message"] != "scopegate listening" {
            return None;
        }
        (v["addr"].as_str()?.to_string(), v["admin"].as_str().unwrap_or("None").to_string())
    } else {
        if !line.contains("scopegate listening") {
            return None;
        }
        let field = |name: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')).map(str::to_string)
        };
        (field("addr")?, field("admin").unwrap_or_else(|| "None".to_string()))
    };
    let admin = admin.strip_prefix("Some(").and_then(|a| a.strip_suffix(')')).and_then(|a| a.parse().ok());
    Some((addr.parse().ok()?, admin))
}

/// A file's text, lossy; empty if it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Creates `path` (and its parent directories) with `contents`.
pub fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Writes `contents` to a hidden temp file next to `path`, then renames it over `path` (what
/// editors do).
pub fn replace_by_rename(path: &Path, contents: &str) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file(&tmp, contents);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename onto {}: {e}", path.display()));
}
