//! Criterion benchmarks of the hot pieces: token verification (cache miss per algorithm, cache
//! hit, and the raw signature check it is measured against), path normalization plus route
//! matching at 10 / 1,000 / 10,000 routes, and the whole in-process decision pipeline (auth,
//! routing, header rewrite) with the upstream cut off at the service boundary.
//!
//! Fixtures are built outside the timed closures; inputs go through `black_box`.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderValue, Method, Request};
use scopegate::auth::jwks::{IssuerKeys, KeySet};
use scopegate::auth::verify::Verifier;
use scopegate::config::{Config, IssuerConfig, KeySource, Pos};
use scopegate::metrics::Metrics;
use scopegate::proxy::{decide, Access, ConnInfo, Decision};
use scopegate::route::{normalize, Table};
use scopegate::snapshot::Snapshot;

#[path = "../tests/it/common/mod.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod common;

use common::{claims, Algorithm, TestKey};

const ISS: &str = "https://issuer.bench/pool";

fn aws_alg(alg: Algorithm) -> &'static dyn VerificationAlgorithm {
    use aws_lc_rs::signature as s;
    match alg {
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        Algorithm::EdDSA => &s::ED25519,
        _ => &s::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// Polls a future that never waits (every benchmarked path here is synchronous underneath:
/// keys are present and no refetch happens) to completion without an executor.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("benchmarked future unexpectedly waited"),
    }
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"))
}

fn verifier(key: &TestKey, cache_entries: usize) -> Verifier {
    let jwks = serde_json::json!({ "keys": [key.jwk()] }).to_string();
    let cfg = IssuerConfig {
        issuer: ISS.to_owned(),
        source: KeySource::Builtin,
        audiences: Vec::new(),
        token_use: Some("access".to_owned()),
        algorithms: vec![key.alg],
        refresh: Duration::from_secs(300),
        kid_miss_cooldown: Duration::from_secs(30),
        at: Pos::default(),
    };
    let keys = KeySet::parse(jwks.as_bytes(), &cfg.algorithms).expect("jwks");
    let issuers = HashMap::from([(ISS.to_owned(), IssuerKeys::fixed(cfg, keys))]);
    Verifier::new(issuers, Duration::from_secs(60), cache_entries, metrics())
}

fn verification(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for (alg, name) in [
        (Algorithm::RS256, "RS256"),
        (Algorithm::PS256, "PS256"),
        (Algorithm::ES256, "ES256"),
        (Algorithm::EdDSA, "EdDSA"),
    ] {
        let key = TestKey::generate(alg, "k1");
        let token = key.sign(&claims(ISS, "client", "API/book.get"));
        let uncached = verifier(&key, 0);
        assert!(ready(uncached.verify(&token)).is_ok());
        g.bench_with_input(BenchmarkId::new("cache_miss", name), &token, |b, t| {
            b.iter(|| ready(uncached.verify(black_box(t))).is_ok())
        });
        // The floor a miss is compared with: the signature check alone, on a key parsed once
        // and signature bytes decoded once.
        let dot = token.rfind('.').expect("three parts");
        let message = token.as_bytes()[..dot].to_vec();
        let sig = URL_SAFE_NO_PAD.decode(&token[dot + 1..]).expect("base64url");
        let parsed = ParsedPublicKey::new(aws_alg(alg), key.public_key_spki_der()).expect("public key");
        g.bench_with_input(BenchmarkId::new("raw_signature", name), &(message, sig), |b, (m, s)| {
            b.iter(|| parsed.verify_sig(black_box(m), black_box(s)).is_ok())
        });
    }
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let token = key.sign(&claims(ISS, "client", "API/book.get"));
    let cached = verifier(&key, 1024);
    assert!(ready(cached.verify(&token)).is_ok());
    g.bench_function("cache_hit/RS256", |b| b.iter(|| ready(cached.verify(black_box(&token))).is_ok()));
    g.finish();
}

/// A route table of `n` routes shaped like a real API: resources with ids and sub-resources.
fn routes_toml(n: usize) -> String {
    let mut s = String::from("[upstreams.up]\nurl = \"http://127.0.0.1:9\"\n");
    for i in 0..n {
        let path = match i % 4 {
            0 => format!("/svc{}/items", i / 4),
            1 => format!("/svc{}/items/{{id}}", i / 4),
            2 => format!("/svc{}/items/{{id}}/parts", i / 4),
            _ => format!("/svc{}/{{proxy+}}", i / 4),
        };
        s.push_str(&format!(
            "[[routes]]\npath = \"{path}\"\nmethods = [\"GET\"]\nauth = \"none\"\nupstream = \"up\"\n"
        ));
    }
    s
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10usize, 1_000, 10_000] {
        let config = Config::parse(Path::new("bench.toml"), &routes_toml(n)).expect("config");
        let table = Table::build(&config.routes).expect("table");
        // A path that matches near the end of the table, and one that needs normalizing.
        let last = (n / 4).saturating_sub(1);
        let plain = format!("/svc{last}/items/12345/parts");
        let dotted = format!("/svc{last}/items/./12345/x/../parts");
        g.bench_with_input(BenchmarkId::new("normalize_match", n), &plain, |b, p| {
            b.iter(|| {
                let path = normalize(black_box(p)).expect("normal");
                black_box(table.lookup(&path, &Method::GET))
            })
        });
        g.bench_with_input(BenchmarkId::new("normalize_match_dotted", n), &dotted, |b, p| {
            b.iter(|| {
                let path = normalize(black_box(p)).expect("normal");
                black_box(table.lookup(&path, &Method::GET))
            })
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::generate(Algorithm::RS256, "k1");
    std::fs::write(dir.path().join("jwks.json"), serde_json::json!({ "keys": [key.jwk()] }).to_string())
        .expect("write jwks");
    let toml = format!(
        "[[auth.issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n\
         [upstreams.books]\nurl = \"http://127.0.0.1:3000/api\"\n\
         [[routes]]\npath = \"/book/{{id}}\"\nmethods = [\"GET\"]\nscopes = [\"API/book.get\"]\nupstream = \"books\"\n"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = Config::load(&path).expect("config");
    let snap = Snapshot::build(config, None, &scopegate::auth::jwks::fetch_client(), &metrics()).expect("snapshot");
    rt.block_on(async {
        for i in snap.verifier.issuers() {
            i.first_attempt(Duration::from_secs(5)).await;
        }
    });
    assert!(snap.ready(), "jwks_file keys loaded");
    let token = key.sign(&claims(ISS, "client", "API/book.get"));
    let conn = ConnInfo::new("127.0.0.1:50000".parse().expect("addr"), false);
    let request_id = HeaderValue::from_static("bench-request-id");
    let template = Request::get("/book/42?fields=title")
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-auth-sub", "spoofed")
        .body(())
        .expect("request");
    let (template, ()) = template.into_parts();
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("decide_forward_cache_hit", |b| {
        b.iter_batched(
            || template.clone(),
            |mut parts| {
                let mut access = Access::default();
                let d = ready(decide(&snap, &conn, &mut parts, &request_id, &mut access));
                assert!(matches!(d, Ok(Decision::Forward(_))));
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, verification, routing, pipeline);
criterion_main!(benches);
