//! Fault injection on the IdP side: the JWKS endpoint is down at start, flaps, hangs, answers
//! garbage, oversized documents or redirects, or rotates its keys every second. Each test
//! asserts what clients get (status and body), readiness, and
//! `scopegate_jwks_refreshes_total{result}`; where the reason matters, the warning the
//! gateway logs.

use crate::common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderValue, LOCATION};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

/// What the scripted IdP answers.
#[derive(Clone)]
enum Answer {
    Keys(Value),
    /// Status, content-type, body.
    Raw(u16, &'static str, String),
    /// Never answers (the connection stays open).
    Hang,
    /// A 302 to `location`.
    Redirect(String),
    /// The keys or a 503, changing (pseudo-randomly) every 100 ms.
    Flap(Value, Instant),
}

/// A JWKS endpoint whose answer the test scripts; stops when dropped.
struct Idp {
    url: String,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl Idp {
    async fn start(answer: Answer) -> Idp {
        let (listener, addr) = bind_local().await;
        Idp::serve(listener, addr, answer)
    }

    fn serve(listener: tokio::net::TcpListener, addr: std::net::SocketAddr, answer: Answer) -> Idp {
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = {
            let answer = Arc::clone(&answer);
            let hits = Arc::clone(&hits);
            spawn_http_server(listener, move |_req| {
                hits.fetch_add(1, Ordering::SeqCst);
                let answer = answer.lock().unwrap().clone();
                async move {
                    match answer {
                        Answer::Keys(doc) => response(200, "application/json", doc.to_string()),
                        Answer::Raw(status, ct, body) => response(status, ct, body),
                        Answer::Hang => {
                            sleep(Duration::from_secs(120)).await;
                            response(500, "text/plain", "late")
                        }
                        Answer::Redirect(to) => {
                            let mut r = response(302, "text/plain", "moved");
                            r.headers_mut().insert(LOCATION, HeaderValue::from_str(&to).expect("location"));
                            r
                        }
                        Answer::Flap(doc, since) => {
                            // Up or down for each 100 ms slot, pseudo-randomly: a strict
                            // alternation would alias with a refresh period that is a whole
                            // number of seconds and show the refresher one phase only.
                            let slot = u64::try_from(since.elapsed().as_millis() / 100).unwrap_or(0);
                            if (slot.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63) == 0 {
                                response(200, "application/json", doc.to_string())
                            } else {
                                response(503, "application/json", r#"{"error":"flap"}"#)
                            }
                        }
                    }
                }
            })
        };
        Idp { url: format!("http://{addr}/.well-known/jwks.json"), answer, hits, _task: task }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn keys_doc(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

fn es256(kid: &str) -> TestKey {
    TestKey::generate(Algorithm::ES256, kid)
}

fn token(key: &TestKey) -> String {
    key.sign(&claims(ISS, "client-1", "api/read"))
}

/// The config: one issuer on `jwks_url` with `issuer_extra`, admin listener, `GET /r` needing
/// a token (mock answer "ok") and `GET /open` public.
fn config(jwks_url: &str, issuer_extra: &str) -> String {
    server_admin_toml("")
        + &issuer_toml(ISS, &jwks_uri(jwks_url), &["ES256"], issuer_extra)
        + &route_toml("/r", &["GET"], &[&mock_response("text/plain", "ok")])
        + &route_toml("/open", &["GET"], &[PUBLIC, &mock_response("text/plain", "open")])
}

fn assert_ok(resp: &Resp, what: &str) {
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{what}: {resp:?}");
}

fn assert_invalid(resp: &Resp, what: &str) {
    assert_eq!((resp.status, resp.body.as_str()), (401, UNAUTHORIZED), "{what}: {resp:?}");
    assert_eq!(resp.header("www-authenticate"), Some(INVALID_TOKEN), "{what}: {resp:?}");
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start_answers_503_until_it_comes_up() {
    let a = es256("start-a");
    // Bound but not listening: connections are refused until the IdP "comes up" on it.
    let (socket, addr) = refused_addr();
    let url = format!("http://{addr}/.well-known/jwks.json");
    let gw = Gateway::start(&config(&url, "refresh = \"1s\"")).await;
    let admin = gw.admin_addr();

    let resp = gw.get("/r", Some(&token(&a))).await;
    assert_eq!((resp.status, resp.body.as_str()), (503, UNAVAILABLE), "token before any keys: {resp:?}");
    assert_eq!(resp.header("retry-after"), Some("5"), "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"), "{resp:?}");
    assert_eq!(send_to(admin, "GET", "/readyz", &[], "").await.status, 503, "/readyz without keys");
    assert_eq!(gw.get("/open", None).await.status, 200, "a public route does not need keys");
    assert!(gw.jwks_refreshes("error") >= 1, "the failed start fetch is not counted");
    assert_eq!(gw.jwks_refreshes("ok"), 0);
    let text = gw.admin_metrics().await;
    assert_eq!(metric(&text, "scopegate_jwks_keys", &[("issuer", ISS)]), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "scopegate_requests_total", &[("route", "/r"), ("method", "GET"), ("status", "503")]),
        Some(1.0)
    );

    // The IdP comes up on the same address: keys within the (capped) retry backoff.
    let listener = socket.listen(64).expect("listen");
    let idp = Idp::serve(listener, addr, Answer::Keys(keys_doc(&[&a])));
    wait_for("ready once the IdP is up", Duration::from_secs(10), || gw.server().ready()).await;
    assert!(idp.hits() >= 1);
    assert_ok(&gw.get("/r", Some(&token(&a))).await, "token once the keys arrived");
    assert_eq!(send_to(admin, "GET", "/readyz", &[], "").await.status, 200, "/readyz with keys");
    assert_eq!(gw.jwks_refreshes("ok"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_flapping_every_100ms_keeps_the_last_good_keys() {
    let a = es256("flap-a");
    let idp = Idp::start(Answer::Keys(keys_doc(&[&a]))).await;
    let gw = Gateway::start(&config(&idp.url, "refresh = \"1s\"")).await;
    assert_ok(&gw.get("/r", Some(&token(&a))).await, "before the flapping");
    let (ok0, err0) = (gw.jwks_refreshes("ok"), gw.jwks_refreshes("error"));
    idp.set(Answer::Flap(keys_doc(&[&a]), Instant::now()));

    // Fresh tokens (no cache hits) all along, until both outcomes were seen by the refresher.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    while gw.jwks_refreshes("ok") == ok0 || gw.jwks_refreshes("error") == err0 || sent < 20 {
        assert!(
            Instant::now() < deadline,
            "after 15 s of flapping: {} ok / {} failed refreshes",
            gw.jwks_refreshes("ok") - ok0,
            gw.jwks_refreshes("error") - err0
        );
        assert_ok(&gw.get("/r", Some(&token(&a))).await, &format!("token {sent} while the IdP flaps"));
        assert!(gw.server().ready(), "not ready while flapping, with keys held");
        sent += 1;
        sleep(Duration::from_millis(100)).await;
    }
    let text = gw.metrics_text();
    assert_eq!(metric(&text, "scopegate_jwks_keys", &[("issuer", ISS)]), Some(1.0), "{text}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_that_never_answers_keeps_requests_answered() {
    let a = es256("hang-a");
    let b = es256("hang-b");
    let idp = Idp::start(Answer::Keys(keys_doc(&[&a]))).await;
    let gw = Gateway::start(&config(&idp.url, "refresh = \"1s\"\nkid_miss_cooldown = \"1s\"")).await;
    assert_ok(&gw.get("/r", Some(&token(&a))).await, "before the hang");
    let errors = gw.jwks_refreshes("error");
    idp.set(Answer::Hang);
    let hits = idp.hits();
    wait_for("a refresh that hangs", Duration::from_secs(5), || idp.hits() > hits).await;

    // Known kid: answered at once from the last good keys, hang or not.
    for i in 0..5 {
        let started = Instant::now();
        assert_ok(&gw.get("/r", Some(&token(&a))).await, &format!("known kid {i} during the hang"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "known kid waited on the hung fetch: {:?}",
            started.elapsed()
        );
    }
    // Unknown kid: waits for the fetch in flight at most a bounded time, then 401.
    let started = Instant::now();
    assert_invalid(&gw.get("/r", Some(&token(&b))).await, "unknown kid during the hang");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "unknown kid held for {waited:?}");
    assert!(gw.server().ready(), "not ready during the hang, with keys held");

    // The hung fetch ends at the fetch timeout (10 s) and is counted as a failure.
    wait_for("the hung fetch counted as failed", Duration::from_secs(15), || gw.jwks_refreshes("error") > errors).await;
    assert_ok(&gw.get("/r", Some(&token(&a))).await, "after the failed refresh");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_garbage_huge_and_redirected_answers_are_refused_and_counted() {
    let a = es256("bad-a");
    let b = es256("bad-b");
    // The redirect target and the huge document both carry key b: accepting either would
    // make b's tokens pass.
    let elsewhere = Idp::start(Answer::Keys(keys_doc(&[&b]))).await;
    let mut huge = keys_doc(&[&b]);
    huge["padding"] = json!("x".repeat((1 << 20) + 1024));
    let idp = Idp::start(Answer::Keys(keys_doc(&[&a]))).await;
    let toml = server_admin_toml("")
        + "[log]\nformat = \"json\"\n\n"
        + &issuer_toml(ISS, &jwks_uri(&idp.url), &["ES256"], "refresh = \"1s\"\nkid_miss_cooldown = \"1h\"")
        + &route_toml("/r", &["GET"], &[&mock_response("text/plain", "ok")]);
    let bin = Binary::start(&toml).await;
    let refreshes = |result: &'static str| {
        let admin = bin.admin();
        async move {
            let resp = send_to(admin, "GET", "/metrics", &[], "").await;
            metric(&resp.body, "scopegate_jwks_refreshes_total", &[("issuer", ISS), ("result", result)]).unwrap_or(0.0)
        }
    };
    let get = |token: String| {
        let addr = bin.addr;
        async move { send_to(addr, "GET", "/r", &[("authorization", &format!("Bearer {token}"))], "").await }
    };
    assert_ok(&get(token(&a)).await, "before the faults");

    let cases: Vec<(&str, Answer, &str)> = vec![
        ("an HTML page", Answer::Raw(200, "text/html", "<html><body>Sign in</body></html>".into()), "expected value"),
        ("binary garbage", Answer::Raw(200, "application/json", "\u{0}\u{1}\u{fffd}garbage".into()), "expected value"),
        ("a document over 1 MiB", Answer::Keys(huge), "length limit exceeded"),
        ("a redirect", Answer::Redirect(elsewhere.url.clone()), "HTTP 302"),
    ];
    for (what, answer, logged) in cases {
        let (hits, errors) = (idp.hits(), refreshes("error").await);
        idp.set(answer);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Two fetches after the switch: at least one surely got the fault.
        while idp.hits() < hits + 2 || refreshes("error").await <= errors {
            assert!(Instant::now() < deadline, "{what}: no failed refresh within 10 s:\n{}", bin.output());
            sleep(Duration::from_millis(100)).await;
        }
        assert_ok(&get(token(&a)).await, &format!("last good key after {what}"));
        assert_invalid(&get(token(&b)).await, &format!("key b after {what}"));
        let warned = bin.json_lines().into_iter().any(|v| {
            v["level"] == "WARN"
                && v["message"].as_str().is_some_and(|m| m.contains("jwks fetch failed"))
                && v["error"].as_str().is_some_and(|e| e.contains(logged))
        });
        assert!(warned, "{what}: no warning naming {logged:?}:\n{}", bin.output());
    }
    assert_eq!(elsewhere.hits(), 0, "the redirect was followed");
    bin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotating_every_second_are_picked_up_by_kid_miss_refetches() {
    const ROTATIONS: usize = 5;
    const STEP: Duration = Duration::from_secs(1);
    // A client starts using a key this long after it was published.
    const ADOPT: Duration = Duration::from_millis(400);
    let keys: Arc<Vec<TestKey>> = Arc::new((0..=ROTATIONS).map(|i| es256(&format!("rot-{i}"))).collect());
    let jwks = JwksServer::start(vec![keys[0].jwk()]).await;
    let toml = config(&jwks.url, "refresh = \"1h\"\nkid_miss_cooldown = \"300ms\"");
    let gw = Gateway::start(&toml).await;
    let fetched_at_start = jwks.hits();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The IdP publishes key k at k seconds, with the two before it; `published[k]` is when
    // key k went out (key 0 at start).
    let published = Arc::new(Mutex::new(vec![Instant::now()]));
    let publisher = {
        let keys = Arc::clone(&keys);
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            for k in 1..=ROTATIONS {
                tokio::time::sleep_until(start + STEP * k as u32).await;
                jwks.set_keys(keys[k.saturating_sub(2)..=k].iter().map(TestKey::jwk).collect());
                published.lock().unwrap().push(Instant::now());
            }
            jwks
        })
    };
    // Clients use the last three keys published, each once it has been out for ADOPT.
    let mut clients = Vec::new();
    for c in 0..3 {
        let keys = Arc::clone(&keys);
        let stop = Arc::clone(&stop);
        let published = Arc::clone(&published);
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let times = published.lock().unwrap().clone();
                let newest = times.len() - 1;
                let in_use: Vec<usize> =
                    (newest.saturating_sub(2)..=newest).filter(|&k| k == 0 || times[k].elapsed() >= ADOPT).collect();
                for k in in_use {
                    let token = keys[k].sign(&claims(ISS, &format!("client-{c}"), "api/read"));
                    let resp = send_to(addr, "GET", "/r", &[("authorization", &format!("Bearer {token}"))], "").await;
                    sent += 1;
                    if resp.status != 200 {
                        failures.push(format!("key {k} at {:?}: {} {}", start.elapsed(), resp.status, resp.body));
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
            (sent, failures)
        }));
    }
    sleep(STEP * ROTATIONS as u32 + Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for client in clients {
        let (n, failures) = bounded(20, "rotation client", client).await.expect("client task");
        assert!(failures.is_empty(), "valid tokens refused during rotation: {failures:#?}");
        sent += n;
    }
    let jwks = bounded(5, "publisher", publisher).await.expect("publisher task");
    let refetches = jwks.hits() - fetched_at_start;
    let elapsed = start.elapsed();
    assert!(sent >= 60, "only {sent} requests");
    // A fetch for each new key (normally exactly one), and never more than one per cooldown.
    assert!(refetches >= ROTATIONS, "{refetches} JWKS fetches for {ROTATIONS} rotations");
    assert!(refetches as u128 <= elapsed.as_millis() / 300 + 1, "{refetches} fetches in {elapsed:?}");
    assert_eq!(gw.jwks_refreshes("ok") as usize, refetches + 1);
    assert_eq!(gw.jwks_refreshes("error"), 0);
    gw.stop().await;
}
